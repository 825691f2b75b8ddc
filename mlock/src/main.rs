//! `mlock <mailbox>`: the setgid-mail helper that creates `<mailbox>.lock` in a spool directory
//! (Debian's /var/mail is 2775 root:mail) for a server that has already dropped to the user.
//!
//! Install: `install -o root -g mail -m 2755 target/release/mlock /usr/local/libexec/mailsuite/mlock`
//! (the servers' `--dotlock-helper` default). This is the only code that runs with the mail
//! group, so it is paranoid: it trusts no environment variable, never follows a symlink on the
//! mailbox or the lock name, and only locks `<canonical dir>/<name>.lock` when the real uid owns `<dir>/<name>` (a
//! regular file, checked with lstat) or, when that mailbox does not exist yet, when `<name>` is
//! the real user's login name.
//!
//! Protocol on stdout: `+\n` once the lock is held, or `-<reason>\n` and exit status 1
//! (`-timeout` when another process kept the lock for longer than the stale-lock age). While
//! holding, it waits for stdin to reach end of file or to carry the line `unlock`, then removes
//! the lock (only if it is still the one it created) and exits 0.

use std::ffi::{OsStr, OsString};
use std::io::{self, BufRead, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use mlock::{lock_path_for, Dotlock, STALE_AFTER};

/// How long to keep trying: long enough that an abandoned lock becomes stale and is taken over.
const GIVE_UP_AFTER: Duration = Duration::from_secs(STALE_AFTER.as_secs() + 15);

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(reason) => {
            let mut out = io::stdout().lock();
            let _ = writeln!(out, "-{reason}");
            let _ = out.flush();
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[OsString]) -> Result<(), String> {
    let [_, mailbox] = args else {
        return Err("usage: mlock <mailbox-path>".to_string());
    };
    let real_uid = nix::unistd::getuid();
    let login = nix::unistd::User::from_uid(real_uid)
        .ok()
        .flatten()
        .map(|user| user.name);
    let mailbox = permitted_mailbox(mailbox, real_uid.as_raw(), login.as_deref())?;
    let lock_path = lock_path_for(&mailbox);
    let lock = Dotlock::acquire(&lock_path, Instant::now() + GIVE_UP_AFTER)
        .map_err(|e| describe(&lock_path, &e))?;
    let announced = {
        let mut out = io::stdout().lock();
        out.write_all(b"+\n").and_then(|()| out.flush())
    };
    if announced.is_ok() {
        wait_for_unlock(io::stdin().lock());
    }
    lock.release()
        .map(|_| ())
        .map_err(|e| describe(&lock_path, &e))
}

/// The mailbox path we may lock for `real_uid`, with its directory canonicalized.
fn permitted_mailbox(arg: &OsStr, real_uid: u32, login: Option<&str>) -> Result<PathBuf, String> {
    let path = Path::new(arg);
    if !path.is_absolute() {
        return Err("mailbox path must be absolute".to_string());
    }
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err("mailbox path has no file name".to_string());
    };
    let dir = dir
        .canonicalize()
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    let mailbox = dir.join(name);
    match std::fs::symlink_metadata(&mailbox) {
        Ok(meta) if !meta.file_type().is_file() => Err("mailbox is not a regular file".into()),
        Ok(meta) if meta.uid() != real_uid => Err("mailbox is not owned by the caller".into()),
        Ok(_) => Ok(mailbox),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if login.is_some_and(|login| OsStr::new(login) == name) {
                Ok(mailbox)
            } else {
                Err("a missing mailbox must be named after the caller".into())
            }
        }
        Err(e) => Err(format!("{}: {e}", mailbox.display())),
    }
}

/// Block until end of file or an `unlock` line; any read error also means the caller is gone.
fn wait_for_unlock(input: impl BufRead) {
    for line in input.lines() {
        match line {
            Ok(line) if line.trim() == "unlock" => return,
            Ok(_) => continue,
            Err(_) => return,
        }
    }
}

fn describe(lock_path: &Path, e: &io::Error) -> String {
    if e.kind() == io::ErrorKind::TimedOut {
        "timeout".to_string()
    } else {
        format!("{}: {e}", lock_path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("mlock-bin-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn me() -> u32 {
        nix::unistd::getuid().as_raw()
    }

    #[test]
    fn own_mailbox_is_permitted_and_dir_canonicalized() {
        let dir = temp_dir("own");
        fs::write(dir.join("alice"), "").unwrap();
        let indirect = dir.join("sub/../alice");
        fs::create_dir(dir.join("sub")).unwrap();
        let got = permitted_mailbox(indirect.as_os_str(), me(), None).unwrap();
        assert_eq!(got, dir.canonicalize().unwrap().join("alice"));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn someone_elses_mailbox_is_refused() {
        let dir = temp_dir("other");
        fs::write(dir.join("bob"), "").unwrap();
        let err = permitted_mailbox(dir.join("bob").as_os_str(), me() + 1, Some("bob"));
        assert_eq!(err.unwrap_err(), "mailbox is not owned by the caller");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn symlinked_mailbox_is_refused() {
        let dir = temp_dir("symlink");
        fs::write(dir.join("target"), "").unwrap();
        std::os::unix::fs::symlink(dir.join("target"), dir.join("alice")).unwrap();
        let err = permitted_mailbox(dir.join("alice").as_os_str(), me(), Some("alice"));
        assert_eq!(err.unwrap_err(), "mailbox is not a regular file");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_mailbox_only_under_own_login() {
        let dir = temp_dir("missing");
        let ok = permitted_mailbox(dir.join("alice").as_os_str(), me(), Some("alice"));
        assert!(ok.is_ok());
        let err = permitted_mailbox(dir.join("root").as_os_str(), me(), Some("alice"));
        assert!(err.is_err());
        let err = permitted_mailbox(dir.join("alice").as_os_str(), me(), None);
        assert!(err.is_err());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn relative_and_nameless_paths_are_refused() {
        assert!(permitted_mailbox(OsStr::new("alice"), me(), Some("alice")).is_err());
        assert!(permitted_mailbox(OsStr::new("/"), me(), Some("alice")).is_err());
    }

    #[test]
    fn unlock_line_or_eof_ends_the_wait() {
        wait_for_unlock(io::Cursor::new("noise\nunlock\nmore\n"));
        wait_for_unlock(io::Cursor::new(""));
    }
}
