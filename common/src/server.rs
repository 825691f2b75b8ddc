//! Process-level plumbing both servers share: start-up (syslog, SIGPIPE, the `--listen` accept
//! loop), meeting the client on fd 0/1 (peer, certificate, implicit TLS), and the login sequence
//! (credentials checked, account found, privileges dropped, the user's mail located).
//!
//! Owns the ORDER of the security-relevant steps: nothing here opens a mail file, and the
//! privilege drop happens before the caller gets anything that could. Never speaks a protocol.

use crate::auth::{AuthFailure, Authenticator, Login};
use crate::config::ServerOptions;
use crate::log;
use crate::net::conn::{Conn, Line};
use crate::net::{launch, peer::Peer, tls};
use crate::privs::{self, Account};
use crate::store::{self, InboxLocation, StoreConfig};
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Start-up common to both servers. Returns `Some(exit status)` when the process was the
/// `--listen` accept loop and is done; `None` when it should now serve the client on fd 0/1.
pub fn start(opts: &ServerOptions, program: &str) -> Option<i32> {
    log::init(program, opts.debug || opts.listen.is_some());
    launch::ignore_sigpipe();
    launch::default_termination_signals();
    let addr = opts.listen?;
    match launch::listen_and_serve(addr, opts.max_children) {
        Ok(()) => Some(0),
        Err(e) => {
            log::err(&format!("--listen {addr}: {e}"));
            Some(1)
        }
    }
}

/// Our host name, for greetings and challenges.
pub fn host_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}

/// Where users' mail is, from the options.
pub fn store_config(opts: &ServerOptions) -> StoreConfig {
    StoreConfig {
        spool_dir: opts.spool_dir.clone(),
        maildir_name: opts.maildir_name.clone(),
        mail_dir: opts.mail_dir.clone(),
        choice: opts.store,
        dotlock_helper: opts.dotlock_helper.clone(),
    }
}

/// The client on fd 0/1, with the certificate for STARTTLS/STLS if one is configured.
pub struct Client {
    conn: Conn,
    pub peer: Peer,
    tls: Option<Arc<rustls::ServerConfig>>,
    handshake_timeout: Duration,
}

impl Client {
    /// Meet the client: find the peer, load the certificate (`service` names the default
    /// paths), and do the implicit TLS handshake when asked (`--tls` or an `s` program name).
    /// `Err` carries the exit status after logging why.
    pub fn accept(opts: &ServerOptions, service: &str, program: &str) -> Result<Client, i32> {
        let peer = Peer::from_fd0();
        let tls = load_tls(opts, service);
        let mut conn = Conn::from_stdio().map_err(|e| {
            log::err(&format!("cannot use stdin/stdout: {e}"));
            1
        })?;
        let handshake_timeout = Duration::from_secs(opts.login_timeout);
        if opts.tls || launch::implicit_tls_by_name(program) {
            let Some(config) = tls.clone() else {
                let msg = "implicit TLS requested but no usable certificate (see --cert/--key)";
                eprintln!("{program}: {msg}");
                log::err(msg);
                return Err(1);
            };
            if let Err(e) = conn.start_tls(config, handshake_timeout) {
                log::info(&format!("TLS handshake failed host={peer}: {e}"));
                return Err(1);
            }
        }
        Ok(Client {
            conn,
            peer,
            tls,
            handshake_timeout,
        })
    }

    /// True when STARTTLS/STLS can be offered.
    pub fn tls_available(&self) -> bool {
        self.tls.is_some()
    }

    /// Switch to TLS now (the caller has flushed its go-ahead).
    pub fn start_tls(&mut self) -> Result<(), String> {
        let config = self.tls.clone().ok_or("no certificate")?;
        self.conn
            .start_tls(config, self.handshake_timeout)
            .map_err(|e| e.to_string())
    }

    pub fn is_tls(&self) -> bool {
        self.conn.is_tls()
    }

    pub fn read_line(&mut self, max: usize, timeout: Duration) -> io::Result<Line> {
        self.conn.read_line(max, timeout)
    }

    pub fn read_exact_timeout(
        &mut self,
        n: usize,
        timeout: Duration,
        out: &mut Vec<u8>,
    ) -> io::Result<bool> {
        self.conn.read_exact_timeout(n, timeout, out)
    }

    pub fn has_pending_input(&self) -> bool {
        self.conn.has_pending_input()
    }

    pub fn wait_readable(&mut self, timeout: Duration) -> io::Result<bool> {
        self.conn.wait_readable(timeout)
    }
}

impl Write for Client {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.conn.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.conn.flush()
    }
}

/// The certificate, if one is configured and loads; a configured but broken one is logged.
fn load_tls(opts: &ServerOptions, service: &str) -> Option<Arc<rustls::ServerConfig>> {
    let (default_cert, default_key) = tls::default_paths(service);
    let cert = opts.cert.clone().unwrap_or(default_cert);
    let key = opts.key.clone().unwrap_or(default_key);
    if opts.cert.is_none() && !cert.exists() {
        return None;
    }
    match tls::load_server_config(&cert, &key) {
        Ok(config) => Some(config),
        Err(e) => {
            log::err(&format!("TLS unavailable: {e}"));
            None
        }
    }
}

/// What the client offered as proof of identity (both protocols).
pub enum Credentials {
    Password {
        user: String,
        password: zeroize::Zeroizing<Vec<u8>>,
    },
    /// POP3 APOP (RFC 1939): `digest_hex` = md5(timestamp + secret).
    Apop {
        user: String,
        timestamp: String,
        digest_hex: String,
    },
    Cram {
        user: String,
        challenge: Vec<u8>,
        digest_hex: String,
    },
    /// Pre-authenticated: the server already runs as this user (SASL EXTERNAL, IMAP PREAUTH).
    External { user: String },
}

impl Credentials {
    /// The user name the client claims.
    pub fn user(&self) -> &str {
        match self {
            Credentials::Password { user, .. }
            | Credentials::Apop { user, .. }
            | Credentials::Cram { user, .. }
            | Credentials::External { user } => user,
        }
    }
}

impl From<crate::auth::sasl::Credentials> for Credentials {
    fn from(creds: crate::auth::sasl::Credentials) -> Credentials {
        use crate::auth::sasl::Credentials as Sasl;
        match creds {
            Sasl::Password { user, password, .. } => Credentials::Password { user, password },
            Sasl::CramMd5 {
                user,
                challenge,
                digest_hex,
            } => Credentials::Cram {
                user,
                challenge,
                digest_hex,
            },
        }
    }
}

/// Why a login failed.
#[derive(Debug)]
pub enum LoginFailure {
    /// Wrong credentials, unknown user, forbidden uid: the client may try again.
    Refused(String),
    /// Authenticated, but the process cannot go on (privilege drop failed): end the session.
    Broken(String),
}

/// A logged-in user, the process now running as them, and where their mail is.
pub struct UserMail {
    pub account: Account,
    pub home: PathBuf,
    pub inbox: InboxLocation,
}

/// What a session knows of its connection and of the site's rules, fixed at start: the part
/// of its policy that both servers share.
#[derive(Clone, Debug)]
pub struct ConnectionPolicy {
    /// Our host name, for greetings, BYE, and the APOP and CRAM-MD5 challenges.
    pub host: String,
    /// The client as logs show it: `localhost [127.0.0.1]` or `UNKNOWN`.
    pub peer: String,
    pub peer_is_loopback: bool,
    pub allow_plaintext: bool,
    pub tls_available: bool,
    pub cram_available: bool,
    /// Running as a normal user: that user is logged in at once (IMAP `PREAUTH`) or may log in
    /// without a password (POP3 AUTH EXTERNAL).
    pub preauth_user: Option<String>,
    pub failure_delay: Duration,
    pub login_timeout: Duration,
    pub idle_timeout: Duration,
    pub version: &'static str,
}

impl ConnectionPolicy {
    /// From the options, the accepted client and its logins; `default_idle` applies unless
    /// `--idle-timeout` was given.
    pub fn new(
        opts: &ServerOptions,
        client: &Client,
        logins: &Logins,
        default_idle: Duration,
        version: &'static str,
    ) -> ConnectionPolicy {
        ConnectionPolicy {
            host: host_name(),
            peer: client.peer.to_string(),
            peer_is_loopback: client.peer.is_loopback(),
            allow_plaintext: opts.allow_plaintext,
            tls_available: client.tls_available(),
            cram_available: logins.cram_available(),
            preauth_user: logins.preauth_user(),
            failure_delay: Duration::from_secs(opts.failure_delay),
            login_timeout: Duration::from_secs(opts.login_timeout),
            idle_timeout: opts.idle_timeout.map_or(default_idle, Duration::from_secs),
            version,
        }
    }
}

/// The login sequence: credentials, account, privilege drop, mail location.
pub struct Logins {
    authenticator: Authenticator,
    store: StoreConfig,
    min_uid: u32,
    rhost: Option<String>,
    as_root: bool,
    /// The successful login, kept alive (it holds the PAM session) until the process exits.
    login: Option<Login>,
}

impl Logins {
    /// `service` is the PAM service (`pop`, `imap`) unless the options name another one.
    pub fn new(opts: &ServerOptions, service: &str, peer: &Peer) -> Logins {
        Logins {
            authenticator: Authenticator::new(
                opts.pam_service.as_deref().unwrap_or(service),
                &opts.cram_file,
            ),
            store: store_config(opts),
            min_uid: opts.min_uid,
            rhost: peer.addr.map(|a| a.to_string()),
            as_root: privs::is_root(),
            login: None,
        }
    }

    /// APOP and CRAM-MD5 are available (the secrets file was loaded).
    pub fn cram_available(&self) -> bool {
        self.authenticator.cram_available()
    }

    /// The user served without a password when not started as root.
    pub fn preauth_user(&self) -> Option<String> {
        (!self.as_root)
            .then(|| privs::current().map(|a| a.name))
            .flatten()
    }

    pub fn store_config(&self) -> &StoreConfig {
        &self.store
    }

    /// Check the credentials, then (as root) become the user, then say where their mail is.
    pub fn login(&mut self, credentials: &Credentials) -> Result<UserMail, LoginFailure> {
        if self.login.is_some() {
            return Err(LoginFailure::Broken("already logged in".into()));
        }
        let login = self
            .authenticate(credentials)
            .map_err(|e| LoginFailure::Refused(e.0))?;
        let account = privs::lookup(&login.user)
            .ok_or_else(|| LoginFailure::Refused("no such user in passwd".into()))?;
        privs::check_uid_allowed(account.uid, self.min_uid).map_err(LoginFailure::Refused)?;
        if self.as_root {
            privs::become_user(&account, self.min_uid).map_err(LoginFailure::Broken)?;
            // The mbox store keeps its crash journal in $HOME when the spool directory is not
            // writable; after the drop, HOME must be the user's, not root's.
            std::env::set_var("HOME", &account.home);
        } else if privs::current().map(|me| me.uid) != Some(account.uid) {
            return Err(LoginFailure::Refused(
                "not running as root: cannot serve other users".into(),
            ));
        }
        self.login = Some(login);
        let (home, inbox) = self.locate(&account);
        Ok(UserMail {
            account,
            home,
            inbox,
        })
    }

    fn authenticate(&self, credentials: &Credentials) -> Result<Login, AuthFailure> {
        let auth = &self.authenticator;
        match credentials {
            Credentials::Password { user, password } => {
                auth.check_password(user, password, self.rhost.as_deref())
            }
            Credentials::Apop {
                user,
                timestamp,
                digest_hex,
            } => auth.check_apop(user, timestamp, digest_hex),
            Credentials::Cram {
                user,
                challenge,
                digest_hex,
            } => auth.check_cram(user, challenge, digest_hex),
            Credentials::External { user } if !self.as_root => Login::external(user),
            Credentials::External { .. } => Err(AuthFailure("EXTERNAL only when not root".into())),
        }
    }

    /// Run by the user (ssh, tunnels), the user's own environment says where mail is, as it
    /// does for mail(1) and mutt. Run as root, only the passwd entry counts.
    fn locate(&self, account: &Account) -> (PathBuf, InboxLocation) {
        let from_env = |name: &str| {
            (!self.as_root)
                .then(|| std::env::var_os(name).map(PathBuf::from))
                .flatten()
        };
        let home = from_env("HOME").unwrap_or_else(|| account.home.clone());
        let mail_env = from_env("MAIL");
        let inbox = store::locate_inbox(&self.store, &account.name, &home, mail_env.as_deref());
        (home, inbox)
    }
}
