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
use common::config::ServerOptions;
use common::net::conn::Line;
use common::net::launch;
use common::server::{self, Client, ConnectionPolicy, Logins};
use std::io;
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
    if let Some(status) = server::start(&args.server, &program) {
        std::process::exit(status);
    }
    std::process::exit(serve_one(&args, &program));
}

/// Serve the one client on fd 0/1; returns the exit status.
fn serve_one(args: &Args, program: &str) -> i32 {
    let opts = &args.server;
    let mut client = match Client::accept(opts, SERVICE, program) {
        Ok(client) => client,
        Err(status) => return status,
    };
    let logins = Logins::new(opts, PAM_SERVICE, &client.peer);
    let policy = session::Policy {
        conn: ConnectionPolicy::new(
            opts,
            &client,
            &logins,
            Duration::from_secs(DEFAULT_IDLE_TIMEOUT),
            VERSION,
        ),
        login_delay: args.login_delay,
        expire: args.expire.clone(),
    };
    let backend = backend::SystemBackend {
        logins,
        login_delay: args.login_delay,
    };
    session::Session::new(&mut client, backend, policy).run()
}

impl session::Transport for Client {
    fn read_line(&mut self, max: usize, timeout: Duration) -> io::Result<Line> {
        Client::read_line(self, max, timeout)
    }
    fn has_pending_input(&self) -> bool {
        Client::has_pending_input(self)
    }
    fn start_tls(&mut self) -> Result<(), String> {
        Client::start_tls(self)
    }
    fn is_tls(&self) -> bool {
        Client::is_tls(self)
    }
}
