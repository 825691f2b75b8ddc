//! How a server process starts: the name it was invoked under, SIGPIPE, and the development /
//! container accept loop (`--listen`) that gives each connection its own child process.
//!
//! Owns process-level launch concerns only. The accept loop never serves a client itself: every
//! connection runs in a fresh process exactly as under inetd, the socket on fd 0 and 1.

use std::ffi::{OsStr, OsString};
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{sigaction, signal, SaFlags, SigAction, SigHandler, SigSet, Signal};

/// Set by SIGTERM/SIGINT: the accept loop stops.
static STOP_REQUESTED: AtomicBool = AtomicBool::new(false);

/// How often the accept loop wakes up to reap children and check for a stop request.
const LOOP_TICK: Duration = Duration::from_millis(250);

/// The name this process was invoked under: the basename of `argv[0]`.
pub fn program_name() -> String {
    let from_argv0 = std::env::args_os().next().and_then(|arg0| basename(&arg0));
    from_argv0
        .or_else(|| {
            std::env::current_exe()
                .ok()
                .and_then(|exe| basename(exe.as_os_str()))
        })
        .unwrap_or_else(|| "unknown".to_string())
}

fn basename(path: &OsStr) -> Option<String> {
    Path::new(path)
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
}

/// UW convention: a server invoked under a name beginning with `s` (simapd, spop3d) speaks
/// TLS from the first byte.
pub fn implicit_tls_by_name(name: &str) -> bool {
    name.starts_with('s')
}

/// Makes writes to a vanished client fail with EPIPE instead of killing the process. Call at
/// startup (std resets SIGPIPE to the default in children it spawns).
pub fn ignore_sigpipe() {
    // SAFETY: SIG_IGN installs no handler, so no code runs in signal context.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigIgn) };
}

/// Restores the default action (end the process) of SIGHUP, SIGTERM and SIGINT, which a
/// parent may have left ignored (`nohup`, some launchers): a session must end when told to,
/// and an unfinished session changes nothing. Call at startup.
pub fn default_termination_signals() {
    for sig in [Signal::SIGHUP, Signal::SIGTERM, Signal::SIGINT] {
        // SAFETY: SIG_DFL installs no handler, so no code runs in signal context.
        let _ = unsafe { signal(sig, SigHandler::SigDfl) };
    }
}

/// Development/container mode: listens on `addr` and serves each connection in a child process
/// re-executing this program (`/proc/self/exe`, same `argv[0]`) with the same arguments minus
/// `--listen` plus `--debug`, the socket as its stdin and stdout. At most `max_children` run at
/// once; further connections wait in the listen backlog. Prints `listening on ADDR` to stderr
/// once bound. Returns when SIGTERM or SIGINT arrives (running children finish on their own).
pub fn listen_and_serve(addr: SocketAddr, max_children: usize) -> io::Result<()> {
    // std sets SO_REUSEADDR on Unix listeners.
    let listener = TcpListener::bind(addr)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
    install_stop_handlers()?;
    eprintln!("listening on {}", listener.local_addr()?);
    let argv0 = std::env::args_os().next().unwrap_or_default();
    let args = child_args(std::env::args_os().skip(1));
    let spawn = |stream: TcpStream| {
        let input = OwnedFd::from(stream.try_clone()?);
        Command::new("/proc/self/exe")
            .arg0(&argv0)
            .args(&args)
            .stdin(Stdio::from(input))
            .stdout(Stdio::from(OwnedFd::from(stream)))
            .stderr(Stdio::inherit())
            .spawn()
    };
    serve_children(&listener, max_children, &STOP_REQUESTED, spawn)
}

/// The arguments for a connection's child: `--listen X` and `--listen=X` removed, `--debug`
/// added (before any `--`) unless present.
pub fn child_args(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let mut kept = Vec::new();
    let mut after_separator = Vec::new();
    let mut has_debug = false;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        if arg == "--" {
            after_separator.push(arg);
            after_separator.extend(args.by_ref());
            break;
        }
        if arg == "--listen" {
            args.next();
            continue;
        }
        if arg.as_bytes().starts_with(b"--listen=") {
            continue;
        }
        has_debug |= arg == "--debug";
        kept.push(arg);
    }
    if !has_debug {
        kept.push(OsString::from("--debug"));
    }
    kept.extend(after_separator);
    kept
}

fn install_stop_handlers() -> io::Result<()> {
    // No SA_RESTART: a blocked poll(2) returns EINTR so the loop sees the request at once.
    let action = SigAction::new(
        SigHandler::Handler(request_stop),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for sig in [Signal::SIGTERM, Signal::SIGINT] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { sigaction(sig, &action) }.map_err(io::Error::from)?;
    }
    Ok(())
}

extern "C" fn request_stop(_signal: libc::c_int) {
    STOP_REQUESTED.store(true, Ordering::SeqCst);
}

/// The accept loop proper: `spawn` starts a child for one accepted connection.
fn serve_children<F>(
    listener: &TcpListener,
    max_children: usize,
    stop: &AtomicBool,
    mut spawn: F,
) -> io::Result<()>
where
    F: FnMut(TcpStream) -> io::Result<Child>,
{
    let max_children = max_children.max(1);
    let mut children: Vec<Child> = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        reap_exited(&mut children);
        if children.len() >= max_children {
            std::thread::sleep(LOOP_TICK / 5);
            continue;
        }
        if !wait_for_connection(listener)? {
            continue;
        }
        match listener.accept() {
            Ok((stream, peer)) => match spawn(stream) {
                Ok(child) => children.push(child),
                Err(e) => eprintln!("cannot start a server for {peer}: {e}"),
            },
            // The client may have given up already (ECONNABORTED), or descriptors ran out:
            // neither ends the loop.
            Err(e) => {
                eprintln!("accept failed: {e}");
                std::thread::sleep(LOOP_TICK);
            }
        }
    }
    Ok(())
}

/// Waits up to one tick for a pending connection; false on timeout or signal.
fn wait_for_connection(listener: &TcpListener) -> io::Result<bool> {
    let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
    let tick = PollTimeout::try_from(LOOP_TICK).unwrap_or(PollTimeout::MAX);
    match poll(&mut fds, tick) {
        Ok(ready) => Ok(ready > 0),
        Err(Errno::EINTR) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Collects children that have exited (no zombies), reporting abnormal ends on stderr.
/// Only our own children are waited for, never any other child of the process.
fn reap_exited(children: &mut Vec<Child>) {
    children.retain_mut(|child| match child.try_wait() {
        Ok(None) => true,
        Ok(Some(status)) => {
            if let Some(sig) = status.signal() {
                eprintln!("server process {} killed by signal {sig}", child.id());
            }
            false
        }
        Err(e) => {
            eprintln!("cannot wait for server process {}: {e}", child.id());
            false
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::sync::Arc;
    use std::time::Instant;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn listen_option_is_removed_in_both_forms_and_debug_added() {
        assert_eq!(
            child_args(os(&[
                "--listen",
                "127.0.0.1:1110",
                "--tls",
                "--max-children",
                "3"
            ])),
            os(&["--tls", "--max-children", "3", "--debug"])
        );
        assert_eq!(
            child_args(os(&["--cert", "/c.pem", "--listen=[::1]:995"])),
            os(&["--cert", "/c.pem", "--debug"])
        );
    }

    #[test]
    fn debug_is_not_doubled_and_goes_before_separator() {
        assert_eq!(
            child_args(os(&["--debug", "--listen", "0.0.0.0:110"])),
            os(&["--debug"])
        );
        assert_eq!(
            child_args(os(&["--listen=1.2.3.4:5", "--", "--listen", "x"])),
            os(&["--debug", "--", "--listen", "x"])
        );
        assert_eq!(child_args(os(&["--listen"])), os(&["--debug"]));
    }

    #[test]
    fn names_beginning_with_s_mean_implicit_tls() {
        assert!(implicit_tls_by_name("spop3d"));
        assert!(implicit_tls_by_name("simapd"));
        assert!(!implicit_tls_by_name("ipop3d"));
        assert!(!implicit_tls_by_name("imapd"));
        assert!(!implicit_tls_by_name(""));
    }

    #[test]
    fn program_name_is_a_basename() {
        let name = program_name();
        assert!(!name.is_empty());
        assert!(!name.contains('/'), "{name}");
    }

    #[test]
    fn sigpipe_ignored_turns_broken_pipe_into_an_error() {
        ignore_sigpipe();
        let (reader, writer) = nix::unistd::pipe().unwrap();
        drop(reader);
        let mut writer = std::fs::File::from(writer);
        let err = writer.write_all(b"x").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }

    /// A child that greets, waits for one line, answers and exits.
    fn greeter(stream: TcpStream) -> io::Result<Child> {
        let input = OwnedFd::from(stream.try_clone()?);
        Command::new("/bin/sh")
            .args(["-c", "echo hi; read line; echo \"bye $line\""])
            .stdin(Stdio::from(input))
            .stdout(Stdio::from(OwnedFd::from(stream)))
            .spawn()
    }

    fn read_line_from(reader: &mut BufReader<TcpStream>) -> String {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        line
    }

    #[test]
    fn accept_loop_serves_children_up_to_the_cap_and_reaps_them() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let loop_stop = Arc::clone(&stop);
        let server = std::thread::spawn(move || serve_children(&listener, 2, &loop_stop, greeter));

        let mut first = BufReader::new(TcpStream::connect(addr).unwrap());
        let second = BufReader::new(TcpStream::connect(addr).unwrap());
        assert_eq!(read_line_from(&mut first), "hi\n");
        let mut second = second;
        assert_eq!(read_line_from(&mut second), "hi\n");

        // A third client waits in the backlog while two children run.
        let third_socket = TcpStream::connect(addr).unwrap();
        third_socket
            .set_read_timeout(Some(Duration::from_millis(600)))
            .unwrap();
        let mut third = BufReader::new(third_socket);
        let mut nothing = String::new();
        assert!(third.read_line(&mut nothing).is_err(), "got {nothing:?}");

        // When the first child exits it is reaped and the third client is served.
        first.get_mut().write_all(b"one\n").unwrap();
        assert_eq!(read_line_from(&mut first), "bye one\n");
        third
            .get_ref()
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let started = Instant::now();
        assert_eq!(read_line_from(&mut third), "hi\n");
        assert!(started.elapsed() < Duration::from_secs(5));

        second.get_mut().write_all(b"two\n").unwrap();
        assert_eq!(read_line_from(&mut second), "bye two\n");
        third.get_mut().write_all(b"three\n").unwrap();
        assert_eq!(read_line_from(&mut third), "bye three\n");

        stop.store(true, Ordering::SeqCst);
        server.join().unwrap().unwrap();
    }
}
