//! `ipop3d`: a POP3 server (RFC 1939, 2449, 2595, 5034) for one connection on stdin/stdout,
//! a drop-in replacement for UW-IMAP's ipop3d.
//!
//! This file only wires things together: options, logging, TLS, the connection, the backend
//! and the session. The protocol lives in [`session`], the wire format in [`wire`], the POP3
//! view of a mailbox in [`maildrop`], login and mailbox opening in [`backend`].

mod backend;
mod maildrop;
mod session;
mod wire;

use clap::Parser;
use common::auth::Authenticator;
use common::config::ServerOptions;
use common::log;
use common::net::conn::{Conn, Line};
use common::net::{launch, peer::Peer, tls};
use common::privs;
use common::store::StoreConfig;
use std::io::{self, Write};
use std::sync::Arc;
use std::time::Duration;

const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Base name for the default certificate paths and the default PAM service.
const SERVICE: &str = "ipop3d";
const PAM_SERVICE: &str = "pop";
const DEFAULT_IDLE_TIMEOUT: u64 = 600;

#[derive(Parser, Debug)]
#[command(
    name = "ipop3d",
    version,
    about = "POP3 server for one connection on stdin/stdout"
)]
struct Args {
    #[command(flatten)]
    server: ServerOptions,

    /// Advertise LOGIN-DELAY (RFC 2449) and refuse logins more frequent than this many seconds.
    #[arg(long, value_name = "SECS")]
    login_delay: Option<u64>,

    /// Value of the EXPIRE capability (RFC 2449): NEVER, or a number of days.
    #[arg(long, default_value = "NEVER", value_name = "VALUE")]
    expire: String,
}

fn main() {
    let args = Args::parse();
    let program = launch::program_name();
    let opts = &args.server;
    log::init(&program, opts.debug || opts.listen.is_some());
    launch::ignore_sigpipe();
    if let Some(addr) = opts.listen {
        if let Err(e) = launch::listen_and_serve(addr, opts.max_children) {
            log::err(&format!("--listen {addr}: {e}"));
            std::process::exit(1);
        }
        return;
    }
    std::process::exit(serve_one(&args, &program));
}

/// Serve the one client on fd 0/1; returns the exit status.
fn serve_one(args: &Args, program: &str) -> i32 {
    let opts = &args.server;
    let peer = Peer::from_fd0();
    let tls_config = load_tls(opts);
    let implicit_tls = opts.tls || launch::implicit_tls_by_name(program);
    let mut conn = match Conn::from_stdio() {
        Ok(conn) => conn,
        Err(e) => {
            log::err(&format!("cannot use stdin/stdout: {e}"));
            return 1;
        }
    };
    if implicit_tls {
        let Some(config) = tls_config.clone() else {
            let msg = "implicit TLS requested but no usable certificate (see --cert/--key)";
            eprintln!("{program}: {msg}");
            log::err(msg);
            return 1;
        };
        if let Err(e) = conn.start_tls(config, Duration::from_secs(opts.login_timeout)) {
            log::info(&format!("TLS handshake failed host={peer}: {e}"));
            return 1;
        }
    }
    let as_root = privs::is_root();
    let authenticator = Authenticator::new(
        opts.pam_service.as_deref().unwrap_or(PAM_SERVICE),
        &opts.cram_file,
    );
    let preauth_user = (!as_root)
        .then(|| privs::current().map(|a| a.name))
        .flatten();
    let policy = session::Policy {
        host: host_name(),
        peer: peer.to_string(),
        peer_is_loopback: peer.is_loopback(),
        allow_plaintext: opts.allow_plaintext,
        tls_available: tls_config.is_some(),
        cram_available: authenticator.cram_available(),
        preauth_user,
        login_delay: args.login_delay,
        expire: args.expire.clone(),
        failure_delay: Duration::from_secs(opts.failure_delay),
        login_timeout: Duration::from_secs(opts.login_timeout),
        idle_timeout: Duration::from_secs(opts.idle_timeout.unwrap_or(DEFAULT_IDLE_TIMEOUT)),
        version: VERSION,
    };
    let backend = backend::SystemBackend {
        authenticator,
        store: StoreConfig {
            spool_dir: opts.spool_dir.clone(),
            maildir_name: opts.maildir_name.clone(),
            mail_dir: opts.mail_dir.clone(),
            choice: opts.store,
            dotlock_helper: opts.dotlock_helper.clone(),
        },
        min_uid: opts.min_uid,
        rhost: peer.addr.map(|a| a.to_string()),
        as_root,
        login_delay: args.login_delay,
        login: None,
    };
    let mut client = Client {
        conn,
        tls: tls_config,
        handshake_timeout: Duration::from_secs(opts.login_timeout),
    };
    session::Session::new(&mut client, backend, policy).run()
}

/// The certificate, if one is configured and loads; a configured but broken one is logged.
fn load_tls(opts: &ServerOptions) -> Option<Arc<rustls::ServerConfig>> {
    let (default_cert, default_key) = tls::default_paths(SERVICE);
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

fn host_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}

/// The connection as the session sees it.
struct Client {
    conn: Conn,
    tls: Option<Arc<rustls::ServerConfig>>,
    handshake_timeout: Duration,
}

impl Write for Client {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.conn.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.conn.flush()
    }
}

impl session::Transport for Client {
    fn read_line(&mut self, max: usize, timeout: Duration) -> io::Result<Line> {
        self.conn.read_line(max, timeout)
    }
    fn has_pending_input(&self) -> bool {
        self.conn.has_pending_input()
    }
    fn start_tls(&mut self) -> Result<(), String> {
        let config = self.tls.clone().ok_or("no certificate")?;
        self.conn
            .start_tls(config, self.handshake_timeout)
            .map_err(|e| e.to_string())
    }
    fn is_tls(&self) -> bool {
        self.conn.is_tls()
    }
}
