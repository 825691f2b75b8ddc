//! `imapd`: an IMAP4rev1 server (RFC 3501 and the extensions it announces) for one connection
//! on stdin/stdout, a drop-in replacement for UW-IMAP's imapd.
//!
//! This file only wires things together: options, logging, TLS, the connection, the backend
//! and the session. The protocol lives in `imapd::protocol::session`, login and store opening
//! in [`backend`].

mod backend;

use clap::Parser;
use common::config::ServerOptions;
use common::net::launch;
use common::server::{self, Client, ConnectionPolicy, Logins};
use imapd::protocol::session;
use imapd::wire::reader::Limits;
use std::time::Duration;

const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Base name for the default certificate paths.
const SERVICE: &str = "imapd";
const PAM_SERVICE: &str = "imap";
const DEFAULT_IDLE_TIMEOUT: u64 = 1800;

#[derive(Parser, Debug)]
#[command(
    name = "imapd",
    version,
    about = "IMAP4rev1 server for one connection on stdin/stdout"
)]
struct Args {
    #[command(flatten)]
    server: ServerOptions,

    /// Directory for large APPEND literals and COPY spools (unlinked temporary files).
    #[arg(long, value_name = "DIR")]
    spool_tmp: Option<std::path::PathBuf>,
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
    let limits = Limits {
        spool_dir: args.spool_tmp.clone().unwrap_or_else(std::env::temp_dir),
        ..Limits::default()
    };
    let policy = session::Policy {
        conn: ConnectionPolicy::new(
            opts,
            &client,
            &logins,
            Duration::from_secs(DEFAULT_IDLE_TIMEOUT),
            VERSION,
        ),
        show_hidden: opts.show_dotfiles,
        limits,
    };
    let backend = backend::SystemBackend { logins };
    session::Session::new(&mut client, backend, policy).run()
}
