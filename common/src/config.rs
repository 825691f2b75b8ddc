//! Command-line options shared by `imapd` and `ipop3d`.
//!
//! Owns option names, defaults and their documentation; never acts on them.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Which mail store a user's INBOX lives in.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreChoice {
    /// `~/Maildir` when it exists, otherwise the mbox spool (as Dovecot decides).
    Auto,
    /// Always the mbox spool `DIR/USER` (DIR from --spool-dir).
    Mbox,
    /// Always `~/NAME` (NAME from --maildir-name).
    Maildir,
}

/// Options common to both servers. Each binary flattens this into its own `clap::Parser`.
#[derive(clap::Args, Clone, Debug)]
pub struct ServerOptions {
    /// Development/container mode: accept connections on ADDR:PORT and serve each one in a child
    /// process (the same per-connection code path, with the socket on fd 0/1).
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<SocketAddr>,

    /// Most simultaneous children in --listen mode; further connections wait in the backlog.
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub max_children: usize,

    /// Implicit TLS: the TLS handshake starts at once (also when invoked under a name that
    /// begins with s, such as simapd or spop3d, as UW did).
    #[arg(long)]
    pub tls: bool,

    /// PEM certificate chain (default /etc/ssl/certs/PROGRAM.pem, PROGRAM being imapd or ipop3d).
    #[arg(long, value_name = "PATH")]
    pub cert: Option<PathBuf>,

    /// PEM private key (default /etc/ssl/private/PROGRAM.pem).
    #[arg(long, value_name = "PATH")]
    pub key: Option<PathBuf>,

    /// Accept plaintext passwords on any transport (the transport is protected elsewhere,
    /// e.g. by stunnel, or the site accepts the risk).
    #[arg(long)]
    pub allow_plaintext: bool,

    /// Directory of the mbox spool; INBOX is DIR/USER.
    #[arg(long, default_value = "/var/mail", value_name = "DIR")]
    pub spool_dir: PathBuf,

    /// Which store users have.
    #[arg(long, value_enum, default_value_t = StoreChoice::Auto)]
    pub store: StoreChoice,

    /// Name of the Maildir under the home directory.
    #[arg(long, default_value = "Maildir", value_name = "NAME")]
    pub maildir_name: String,

    /// Where mbox folders live, relative to the home directory (UW: the home directory itself;
    /// many sites use `mail`). INBOX stays the spool.
    #[arg(long, default_value = "", value_name = "SUBDIR")]
    pub mail_dir: String,

    /// Show dot-files in LIST, as UW did (hidden by default).
    #[arg(long)]
    pub show_dotfiles: bool,

    /// CRAM-MD5/APOP secrets file (UW semantics); its presence enables APOP and CRAM-MD5.
    #[arg(long, default_value = "/etc/cram-md5.pwd", value_name = "PATH")]
    pub cram_file: PathBuf,

    /// PAM service name (default: `pop` for ipop3d, `imap` for imapd).
    #[arg(long, value_name = "NAME")]
    pub pam_service: Option<String>,

    /// Lowest uid allowed to log in (uid 0 never may).
    #[arg(long, default_value_t = 1, value_name = "UID")]
    pub min_uid: u32,

    /// Seconds a client may take to log in before `Autologout`.
    #[arg(long, default_value_t = 180, value_name = "SECS")]
    pub login_timeout: u64,

    /// Seconds of idleness allowed once logged in (default: 600 for POP3, 1800 for IMAP).
    #[arg(long, value_name = "SECS")]
    pub idle_timeout: Option<u64>,

    /// Seconds to wait after a failed login before answering.
    #[arg(long, default_value_t = 3, value_name = "SECS")]
    pub failure_delay: u64,

    /// setgid-mail helper that creates dotlocks in a spool directory the user cannot write.
    #[arg(
        long,
        default_value = "/usr/local/libexec/mailsuite/mlock",
        value_name = "PATH"
    )]
    pub dotlock_helper: PathBuf,

    /// Log to stderr as well as syslog (always on with --listen).
    #[arg(long)]
    pub debug: bool,
}
