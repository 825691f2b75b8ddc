//! NFS-safe mailbox dotlocks: `<mailbox>.lock` created with the link() method.
//!
//! Owns the one dotlock primitive shared by the servers (through `common::store::lock`) and by the
//! setgid-mail helper binary `mlock`. It is deliberately tiny, because it is the trusted core that
//! runs with the mail group: it never follows a symlink on the lock name, never reads the
//! environment, and never touches any file other than the lock and its own hitching post.
//!
//! The protocol is the one liblockfile, procmail, Postfix and UW-IMAP agree on:
//! 1. create a unique hitching post `<lock>.<host>.<pid>.<n>` (O_EXCL, O_NOFOLLOW) holding our pid;
//! 2. link() it to `<lock>`; the lock is ours when the hitching post's link count is then 2
//!    (link() can report failure over NFS although it succeeded, so its result is not trusted);
//! 3. unlink the hitching post.
//!
//! On filesystems without hard links (link() fails with EPERM) the lock is created directly with
//! O_EXCL. A lock whose mtime is more than [`STALE_AFTER`] older than the file server's clock (read
//! from our fresh hitching post, so it is right over NFS) is removed, as liblockfile does.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Age (by mtime) after which someone else's dotlock is considered abandoned and removed.
pub const STALE_AFTER: Duration = Duration::from_secs(5 * 60);

/// Mode of the lock file (as liblockfile). Removal is governed by the directory, not this mode.
const LOCK_MODE: u32 = 0o644;

/// Longest pause between two attempts. Short: an MTA delivering a burst takes and drops the
/// lock every few milliseconds, and a waiter that slept a second between attempts could miss
/// every gap for as long as the burst lasts (a link() attempt costs microseconds).
const MAX_BACKOFF: Duration = Duration::from_millis(100);
/// The first pause.
const FIRST_BACKOFF: Duration = Duration::from_millis(10);

/// Distinguishes hitching posts made by threads of one process.
static HITCH_COUNTER: AtomicU32 = AtomicU32::new(0);

/// `<mailbox>.lock`, the name every Unix mail program agrees on.
pub fn lock_path_for(mailbox: &Path) -> PathBuf {
    let mut name: OsString = mailbox.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// A dotlock we created. Dropping it removes the lock file if it is still the one we created.
#[derive(Debug)]
pub struct Dotlock {
    path: PathBuf,
    dev: u64,
    ino: u64,
    held: bool,
}

impl Dotlock {
    /// Take `lock_path`, retrying with short sleeps (and removing a stale lock) until `deadline`.
    ///
    /// Errors: `TimedOut` when someone else still holds it at the deadline; `PermissionDenied`
    /// at once when we may not create files in the directory (use the setgid helper then);
    /// `InvalidData` when the lock name is not a regular file (never removed).
    pub fn acquire(lock_path: &Path, deadline: Instant) -> io::Result<Dotlock> {
        let mut backoff = FIRST_BACKOFF;
        loop {
            if let Some(lock) = Dotlock::try_once(lock_path)? {
                return Ok(lock);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{} is held by another process", lock_path.display()),
                ));
            }
            std::thread::sleep(backoff.min(deadline - now));
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One attempt: `Ok(None)` when the lock is held by someone else (a stale lock is removed
    /// first, so the next attempt may succeed).
    pub fn try_once(lock_path: &Path) -> io::Result<Option<Dotlock>> {
        refuse_non_regular(lock_path)?;
        let hitch_path = hitch_path_for(lock_path);
        let hitch = match create_exclusive(&hitch_path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                // Left behind by an earlier process that had our pid; it is ours by name.
                let _ = fs::remove_file(&hitch_path);
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let linked = fs::hard_link(&hitch_path, lock_path);
        let outcome = judge_link(lock_path, &hitch_path, &hitch, linked);
        let _ = fs::remove_file(&hitch_path);
        match outcome? {
            Some((dev, ino)) => Ok(Some(Dotlock {
                path: lock_path.to_path_buf(),
                dev,
                ino,
                held: true,
            })),
            None => {
                remove_if_stale(lock_path, hitch.mtime())?;
                Ok(None)
            }
        }
    }

    /// The lock file's name.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Remove the lock file. `Ok(false)` when it is no longer ours (another process took it over
    /// as stale and created its own): it is then left alone.
    pub fn release(mut self) -> io::Result<bool> {
        self.remove_if_ours()
    }

    fn remove_if_ours(&mut self) -> io::Result<bool> {
        if !self.held {
            return Ok(false);
        }
        self.held = false;
        match fs::symlink_metadata(&self.path) {
            Ok(meta)
                if meta.dev() == self.dev && meta.ino() == self.ino && self.content_is_ours() =>
            {
                fs::remove_file(&self.path)?;
                Ok(true)
            }
            Ok(_) => Ok(false),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Inode numbers are reused at once, so the pid we wrote is checked as well.
    fn content_is_ours(&self) -> bool {
        let mut content = [0u8; 32];
        let read = OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
            .open(&self.path)
            .and_then(|mut file| file.read(&mut content));
        matches!(read, Ok(n) if content[..n] == *pid_line().as_bytes())
    }
}

impl Drop for Dotlock {
    fn drop(&mut self) {
        let _ = self.remove_if_ours();
    }
}

/// Whether the hitching post got linked to the lock; `Some((dev, ino))` of our lock when it did.
fn judge_link(
    lock_path: &Path,
    hitch_path: &Path,
    hitch: &fs::Metadata,
    linked: io::Result<()>,
) -> io::Result<Option<(u64, u64)>> {
    let after = fs::symlink_metadata(hitch_path)?;
    if after.nlink() == 2 && after.dev() == hitch.dev() && after.ino() == hitch.ino() {
        return Ok(Some((hitch.dev(), hitch.ino())));
    }
    match linked {
        Ok(()) => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(None),
        Err(e) if e.raw_os_error() == Some(nix::libc::EPERM) => create_directly(lock_path),
        Err(e) => Err(e),
    }
}

/// Fallback for filesystems without hard links (cannot be NFS): O_EXCL create of the lock itself.
fn create_directly(lock_path: &Path) -> io::Result<Option<(u64, u64)>> {
    match create_exclusive(lock_path) {
        Ok(meta) => Ok(Some((meta.dev(), meta.ino()))),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(None),
        Err(e) => Err(e),
    }
}

/// Create `path` exclusively (never through a symlink), write our pid into it, and return its
/// metadata (whose mtime is the file server's idea of now).
fn create_exclusive(path: &Path) -> io::Result<fs::Metadata> {
    let mut file: File = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(LOCK_MODE)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)?;
    let written = file
        .write_all(pid_line().as_bytes())
        .and_then(|()| file.metadata());
    if written.is_err() {
        let _ = fs::remove_file(path);
    }
    written
}

/// What we write into a lock: our pid in decimal and a newline, as liblockfile does.
fn pid_line() -> String {
    format!("{}\n", std::process::id())
}

/// A lock name that exists but is not a regular file (symlink, directory, fifo) is an attack or a
/// misconfiguration: refuse rather than remove or follow it.
fn refuse_non_regular(lock_path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(lock_path) {
        Ok(meta) if !meta.file_type().is_file() => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} exists and is not a regular file", lock_path.display()),
        )),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Remove the lock when its mtime is more than [`STALE_AFTER`] before `server_now`.
///
/// Two processes may judge the same lock stale at once; the inode is re-checked right before
/// unlink() so a fresh lock made in between is almost never removed (liblockfile accepts the same
/// small window).
fn remove_if_stale(lock_path: &Path, server_now: i64) -> io::Result<()> {
    let meta = match fs::symlink_metadata(lock_path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let stale_secs = STALE_AFTER.as_secs() as i64;
    if !meta.file_type().is_file() || meta.mtime().saturating_add(stale_secs) >= server_now {
        return Ok(());
    }
    match fs::symlink_metadata(lock_path) {
        Ok(again) if again.ino() == meta.ino() && again.mtime() == meta.mtime() => {
            match fs::remove_file(lock_path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        }
        _ => Ok(()),
    }
}

/// `<lock>.<host>.<pid>.<n>`, unique across hosts sharing the directory over NFS.
fn hitch_path_for(lock_path: &Path) -> PathBuf {
    let host = nix::unistd::gethostname()
        .map(|h| sanitize_host(&h.to_string_lossy()))
        .unwrap_or_else(|_| "localhost".to_string());
    let n = HITCH_COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut name = lock_path.as_os_str().to_owned();
    name.push(format!(".{host}.{}.{n}", std::process::id()));
    PathBuf::from(name)
}

/// Keep a host name safe as part of a file name.
fn sanitize_host(host: &str) -> String {
    let clean: String = host
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        .take(64)
        .collect();
    if clean.is_empty() {
        "localhost".to_string()
    } else {
        clean
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;
    use std::process::Command;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "dotlock-{tag}-{}-{}",
            std::process::id(),
            HITCH_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn creates_lock_with_pid_and_removes_it() {
        let dir = temp_dir("basic");
        let lock_path = lock_path_for(&dir.join("user"));
        assert_eq!(lock_path, dir.join("user.lock"));
        let lock = Dotlock::acquire(&lock_path, Instant::now()).unwrap();
        let content = fs::read_to_string(&lock_path).unwrap();
        assert_eq!(content, format!("{}\n", std::process::id()));
        assert_eq!(entries(&dir), vec!["user.lock".to_string()], "hitch left");
        assert!(lock.release().unwrap());
        assert!(entries(&dir).is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn held_lock_times_out_then_frees() {
        let dir = temp_dir("busy");
        let lock_path = dir.join("user.lock");
        let first = Dotlock::acquire(&lock_path, Instant::now()).unwrap();
        let start = Instant::now();
        let err = Dotlock::acquire(&lock_path, start + Duration::from_millis(300)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(start.elapsed() >= Duration::from_millis(300));
        drop(first);
        assert!(!lock_path.exists());
        let second = Dotlock::acquire(&lock_path, Instant::now()).unwrap();
        assert!(lock_path.exists());
        drop(second);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn stale_lock_is_taken_over_fresh_one_is_not() {
        let dir = temp_dir("stale");
        let lock_path = dir.join("user.lock");
        fs::write(&lock_path, "99999\n").unwrap();
        assert!(
            Dotlock::try_once(&lock_path).unwrap().is_none(),
            "fresh lock"
        );
        assert!(lock_path.exists(), "fresh lock must survive");
        let status = Command::new("touch")
            .arg("-m")
            .arg("-d")
            .arg("6 minutes ago")
            .arg(&lock_path)
            .status()
            .unwrap();
        assert!(status.success());
        let lock = Dotlock::acquire(&lock_path, Instant::now() + Duration::from_secs(2)).unwrap();
        let content = fs::read_to_string(&lock_path).unwrap();
        assert_eq!(content, format!("{}\n", std::process::id()));
        drop(lock);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn symlink_lock_name_is_refused_and_kept() {
        let dir = temp_dir("symlink");
        let lock_path = dir.join("user.lock");
        symlink(dir.join("elsewhere"), &lock_path).unwrap();
        let err = Dotlock::try_once(&lock_path).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(fs::symlink_metadata(&lock_path).is_ok());
        assert!(!dir.join("elsewhere").exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn lock_taken_over_by_someone_else_is_not_removed() {
        let dir = temp_dir("theirs");
        let lock_path = dir.join("user.lock");
        let ours = Dotlock::acquire(&lock_path, Instant::now()).unwrap();
        fs::remove_file(&lock_path).unwrap();
        fs::write(&lock_path, "4242\n").unwrap();
        assert!(!ours.release().unwrap());
        assert_eq!(fs::read_to_string(&lock_path).unwrap(), "4242\n");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn interoperates_with_liblockfile_dotlockfile() {
        if Command::new("dotlockfile").arg("-v").output().is_err() {
            println!("skipped: dotlockfile (Debian liblockfile-bin) not installed");
            return;
        }
        let dir = temp_dir("liblockfile");
        let lock_path = dir.join("user.lock");
        let ours = Dotlock::acquire(&lock_path, Instant::now()).unwrap();
        let theirs = Command::new("dotlockfile")
            .args(["-r", "0"])
            .arg(&lock_path)
            .status()
            .unwrap();
        assert!(!theirs.success(), "dotlockfile got a lock we hold");
        drop(ours);
        let theirs = Command::new("dotlockfile")
            .args(["-r", "0"])
            .arg(&lock_path)
            .status()
            .unwrap();
        assert!(theirs.success());
        let err = Dotlock::acquire(&lock_path, Instant::now() + Duration::from_millis(200));
        assert_eq!(err.unwrap_err().kind(), io::ErrorKind::TimedOut);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn host_names_are_sanitized() {
        assert_eq!(sanitize_host("mx1.example.org"), "mx1.example.org");
        assert_eq!(sanitize_host("a/b c"), "abc");
        assert_eq!(sanitize_host("///"), "localhost");
    }
}
