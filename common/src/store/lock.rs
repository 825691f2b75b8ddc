//! Mailbox locking that interoperates with Debian's MTAs and MDAs and with UW-IMAP.
//!
//! Owns: `<mailbox>.lock` dotlocks (NFS-safe link() method and stale takeover after 5 minutes, in
//! the `mlock` crate shared with the setgid helper; the helper is used when the spool directory is
//! not writable by us), fcntl locks on the mailbox file, and the per-session lock
//! `/tmp/.<dev>.<ino>` that gives POP3 exclusive use of a maildrop. Never reads or writes mailbox
//! contents and never logs: callers decide what to report.
//!
//! Dotlock fallback: when the directory is not writable and the helper is missing or refuses (or
//! the filesystem is read-only), [`MailboxLock`] holds only the fcntl lock; [`MailboxLock::dotlocked`]
//! is then false and [`MailboxLock::dotlock_skipped`] says why, so the caller can log it. Postfix,
//! procmail and mutt on Debian also take fcntl locks, so this still excludes them.
//!
//! fcntl locks are Linux open-file-description locks (F_OFD_SETLK): they conflict with the
//! classic POSIX locks other programs take, but are owned by our descriptor, so closing some other
//! descriptor of the same file elsewhere in this process cannot silently drop them.

use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use mlock::{lock_path_for, Dotlock};
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, Flock, FlockArg, OFlag};
use nix::poll::{PollFd, PollFlags, PollTimeout};

/// Where UW-IMAP (and we) keep session locks.
const SESSION_LOCK_DIR: &str = "/tmp";

/// Longest a reader waits for a dotlocked writer before reading anyway under its fcntl lock.
pub const READER_COURTESY: Duration = Duration::from_secs(5);

/// Longest pause between two attempts at a busy fcntl lock (short, for the reason given at
/// the dotlock's in `mlock`).
const MAX_BACKOFF: Duration = Duration::from_millis(100);

/// Dotlock plus fcntl lock on a mailbox file, held while reading or rewriting it.
/// Dropping it releases the fcntl lock, then removes the dotlock.
pub struct MailboxLock {
    /// A duplicate of the caller's descriptor; it shares the open file description that owns the
    /// fcntl lock, so the lock lives exactly as long as this value.
    locked_file: File,
    dotlock: DotlockHold,
}

/// How the dotlock half of a [`MailboxLock`] is held.
enum DotlockHold {
    Own(Dotlock),
    Helper(HelperLock),
    Skipped(String),
}

impl MailboxLock {
    /// Take `<path>.lock` (via `helper` if the directory is not writable by us), then an fcntl
    /// lock on `file` (a write lock, or a read lock when `file` was opened read-only), waiting up
    /// to `timeout` in total. `TimedOut` when another process holds either lock that long.
    pub fn acquire(
        path: &Path,
        file: &File,
        helper: &Path,
        timeout: Duration,
    ) -> io::Result<MailboxLock> {
        let deadline = Instant::now() + timeout;
        let dotlock = take_dotlock(path, helper, deadline)?;
        let locked_file = file.try_clone()?;
        fcntl_lock_until(&locked_file, deadline)?;
        Ok(MailboxLock {
            locked_file,
            dotlock,
        })
    }

    /// Whether a `<path>.lock` dotlock is held (by us or by the helper on our behalf).
    pub fn dotlocked(&self) -> bool {
        !matches!(self.dotlock, DotlockHold::Skipped(_))
    }

    /// The `<path>.lock` file held, when [`MailboxLock::dotlocked`] is true.
    pub fn dotlock_path(&self) -> Option<&Path> {
        match &self.dotlock {
            DotlockHold::Own(lock) => Some(lock.path()),
            DotlockHold::Helper(helper) => Some(&helper.lock_path),
            DotlockHold::Skipped(_) => None,
        }
    }

    /// Why no dotlock is held, when [`MailboxLock::dotlocked`] is false.
    pub fn dotlock_skipped(&self) -> Option<&str> {
        match &self.dotlock {
            DotlockHold::Skipped(why) => Some(why),
            _ => None,
        }
    }
}

impl Drop for MailboxLock {
    fn drop(&mut self) {
        let _ = set_ofd_lock(&self.locked_file, libc::F_UNLCK);
        // The fields drop next: the descriptor closes, then the dotlock is removed.
    }
}

/// A shared fcntl (OFD) read lock on a whole mailbox file, without the dotlock: held while message
/// bytes are read by offset, so that no writer (writers take the write lock) rewrites the file
/// underneath. Appending MTAs that use fcntl wait too, as they wait for UW's readers. Released on
/// drop; hold it no longer than the read it protects.
///
/// Readers share the lock, so back-to-back reads could starve a writer that polls for it. Writers
/// take the dotlock first, so a reader that sees `<mailbox>.lock` lets that writer go first: it
/// waits until that dotlock is gone (for at most [`READER_COURTESY`], in case it is a stale
/// one). A dotlock taken after that is another writer's, and the reader does not wait for it
/// too: writers in a row must not starve readers either.
pub struct ReadLock {
    /// A duplicate of the caller's descriptor, sharing the open file description that owns the
    /// lock.
    locked_file: File,
}

impl ReadLock {
    /// Take the read lock on `file` (the mailbox at `path`), waiting up to `timeout` for a
    /// writer to finish. `TimedOut` when a writer holds the file that long.
    pub fn acquire(path: &Path, file: &File, timeout: Duration) -> io::Result<ReadLock> {
        let deadline = Instant::now() + timeout;
        let locked_file = file.try_clone()?;
        let dotlock = lock_path_for(path);
        if let Ok(writer) = fs::symlink_metadata(&dotlock) {
            let courtesy_end = Instant::now() + READER_COURTESY.min(timeout);
            let mut backoff = Duration::from_millis(1);
            while same_file(&dotlock, &writer) && Instant::now() < courtesy_end {
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_millis(50));
            }
        }
        fcntl_lock_kind_until(&locked_file, libc::F_RDLCK, deadline)?;
        Ok(ReadLock { locked_file })
    }
}

impl Drop for ReadLock {
    fn drop(&mut self) {
        let _ = set_ofd_lock(&self.locked_file, libc::F_UNLCK);
    }
}

/// Whether `path` still names the file `seen` described (same inode, not since recreated).
fn same_file(path: &Path, seen: &fs::Metadata) -> bool {
    fs::symlink_metadata(path).is_ok_and(|now| {
        now.dev() == seen.dev()
            && now.ino() == seen.ino()
            && now.ctime() == seen.ctime()
            && now.ctime_nsec() == seen.ctime_nsec()
    })
}

/// Take the dotlock ourselves, or through the helper when the directory refuses us.
fn take_dotlock(path: &Path, helper: &Path, deadline: Instant) -> io::Result<DotlockHold> {
    match Dotlock::acquire(&lock_path_for(path), deadline) {
        Ok(lock) => Ok(DotlockHold::Own(lock)),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            HelperLock::acquire(path, helper, deadline)
        }
        Err(e) if e.raw_os_error() == Some(libc::EROFS) => {
            Ok(DotlockHold::Skipped("read-only file system".to_string()))
        }
        Err(e) => Err(e),
    }
}

/// A dotlock held by a running setgid helper; dropping it tells the helper to unlock and waits.
struct HelperLock {
    lock_path: PathBuf,
    child: Child,
    stdin: Option<ChildStdin>,
}

impl HelperLock {
    fn acquire(path: &Path, helper: &Path, deadline: Instant) -> io::Result<DotlockHold> {
        let absolute = std::path::absolute(path)?;
        let spawned = Command::new(helper)
            .arg(&absolute)
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) => {
                let why = format!(
                    "spool directory not writable, helper {}: {e}",
                    helper.display()
                );
                return Ok(DotlockHold::Skipped(why));
            }
        };
        let reply = child
            .stdout
            .take()
            .map(|out| read_reply(out, deadline))
            .unwrap_or(Ok(None));
        match reply {
            Ok(Some(line)) if line == "+" => Ok(DotlockHold::Helper(HelperLock {
                lock_path: lock_path_for(&absolute),
                stdin: child.stdin.take(),
                child,
            })),
            Ok(Some(line)) if line == "-timeout" => {
                let _ = child.wait();
                Err(busy(&lock_path_for(path)))
            }
            Ok(answer) => {
                let _ = child.wait();
                let said = answer.unwrap_or_else(|| "no answer".to_string());
                let said = said.strip_prefix('-').unwrap_or(&said).to_string();
                Ok(DotlockHold::Skipped(format!(
                    "helper {}: {said}",
                    helper.display()
                )))
            }
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(e)
            }
        }
    }
}

impl Drop for HelperLock {
    fn drop(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = io::Write::write_all(&mut stdin, b"unlock\n");
        }
        let _ = self.child.wait();
    }
}

/// The helper's one-line answer without its newline; `None` at end of file. `TimedOut` at the
/// deadline.
fn read_reply(mut out: ChildStdout, deadline: Instant) -> io::Result<Option<String>> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        wait_readable(&out, deadline)?;
        match out.read(&mut byte) {
            Ok(0) if line.is_empty() => return Ok(None),
            Ok(0) => break,
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) if line.len() < 512 => line.push(byte[0]),
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(Some(String::from_utf8_lossy(&line).into_owned()))
}

fn wait_readable(out: &ChildStdout, deadline: Instant) -> io::Result<()> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let timeout = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(out.as_fd(), PollFlags::POLLIN)];
        match nix::poll::poll(&mut fds, timeout) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::TimedOut, "dotlock helper")),
            Ok(_) => return Ok(()),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Retry a non-blocking fcntl lock until `deadline`.
fn fcntl_lock_until(file: &File, deadline: Instant) -> io::Result<()> {
    fcntl_lock_kind_until(file, lock_kind_for(file)?, deadline)
}

/// Retry a non-blocking fcntl lock of `kind` (F_RDLCK or F_WRLCK) until `deadline`.
fn fcntl_lock_kind_until(file: &File, kind: libc::c_int, deadline: Instant) -> io::Result<()> {
    let mut backoff = Duration::from_millis(20);
    loop {
        match set_ofd_lock(file, kind) {
            Ok(()) => return Ok(()),
            Err(Errno::EAGAIN | Errno::EACCES) => {}
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "mailbox file is fcntl-locked by another process",
            ));
        }
        std::thread::sleep(backoff.min(deadline - now));
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// A write lock needs a writable descriptor: read-only opens get a read lock.
fn lock_kind_for(file: &File) -> io::Result<libc::c_int> {
    let flags = OFlag::from_bits_truncate(fcntl(file.as_raw_fd(), FcntlArg::F_GETFL)?);
    Ok(if flags & OFlag::O_ACCMODE == OFlag::O_RDONLY {
        libc::F_RDLCK
    } else {
        libc::F_WRLCK
    })
}

/// Set (F_RDLCK/F_WRLCK) or clear (F_UNLCK) an OFD lock on the whole file without waiting.
fn set_ofd_lock(file: &File, kind: libc::c_int) -> Result<(), Errno> {
    let whole_file = libc::flock {
        l_type: kind as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    };
    fcntl(file.as_raw_fd(), FcntlArg::F_OFD_SETLK(&whole_file)).map(|_| ())
}

fn busy(lock_path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("{} is held by another process", lock_path.display()),
    )
}

/// Exclusive use of a mailbox for a whole session (POP3), held on `/tmp/.<dev>.<ino>` of the
/// mailbox file or Maildir directory, as UW-IMAP does. Released on drop.
///
/// The file (mode 0666) holds the holder's pid in decimal. It is locked with both flock(2), which
/// is what UW-IMAP's servers test, and an fcntl lock. For a mailbox that does not exist yet the
/// name is `/tmp/.<dev of parent>.<64-bit FNV-1a hash of parent inode and name>`, so a mailbox
/// created during the session is locked under a different name than later sessions will use.
pub struct SessionLock {
    file: Flock<File>,
    path: PathBuf,
}

impl SessionLock {
    /// Take the session lock without waiting; `Err` with a human-readable reason (naming the
    /// holder's pid where known) when another session holds it.
    pub fn try_acquire(mailbox: &Path) -> Result<SessionLock, String> {
        SessionLock::try_acquire_in(Path::new(SESSION_LOCK_DIR), mailbox)
    }

    /// The pid recorded in `mailbox`'s session lock, if that process is alive. For diagnostics
    /// only: it does not prove the process still holds the lock.
    pub fn holder_pid(mailbox: &Path) -> Option<u32> {
        holder_pid_in(Path::new(SESSION_LOCK_DIR), mailbox)
    }

    /// The lock file's name.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn try_acquire_in(dir: &Path, mailbox: &Path) -> Result<SessionLock, String> {
        let path = session_lock_path(dir, mailbox)
            .map_err(|e| format!("Can't stat {}: {e}", mailbox.display()))?;
        match SessionLock::try_acquire_at(&path) {
            Err(Refused::Unusable) => {
                // A leftover of some other user's session on a file that had this inode before
                // (it outlives a killed session, and the sticky /tmp stops us removing it), or a
                // file planted to keep us out. Nobody holds it, so fall back to a name of our own.
                let euid = nix::unistd::geteuid().as_raw();
                let mut own = path.clone().into_os_string();
                own.push(format!(".{euid:x}"));
                SessionLock::try_acquire_at(Path::new(&own)).map_err(|refused| match refused {
                    Refused::Because(reason) => reason,
                    Refused::Unusable => format!(
                        "Can't open session lock {}: permission denied",
                        Path::new(&own).display()
                    ),
                })
            }
            Err(Refused::Because(reason)) => Err(reason),
            Ok(lock) => Ok(lock),
        }
    }

    fn try_acquire_at(path: &Path) -> Result<SessionLock, Refused> {
        let path = path.to_path_buf();
        let fail = |e: io::Error| {
            Refused::Because(format!("Can't open session lock {}: {e}", path.display()))
        };
        // Another process may unlink the file between our open and our lock; retry then.
        for _ in 0..8 {
            let file = match open_session_file(&path) {
                Ok(file) => file,
                Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                    return Err(match held_by_someone(&path) {
                        Some(reason) => Refused::Because(reason),
                        None => Refused::Unusable,
                    })
                }
                Err(e) => return Err(fail(e)),
            };
            let file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(locked) => locked,
                Err((file, Errno::EWOULDBLOCK)) => return Err(Refused::Because(locked_by(&file))),
                Err((_, e)) => return Err(fail(e.into())),
            };
            match set_ofd_lock(&file, libc::F_WRLCK) {
                Ok(()) => {}
                Err(Errno::EAGAIN | Errno::EACCES) => {
                    return Err(Refused::Because(locked_by(&file)))
                }
                Err(e) => return Err(fail(e.into())),
            }
            if still_named(&file, &path).map_err(fail)? {
                record_holder(&file).map_err(fail)?;
                return Ok(SessionLock { file, path });
            }
        }
        Err(fail(io::Error::other("lock file keeps changing")))
    }
}

/// Why [`SessionLock::try_acquire_at`] failed.
enum Refused {
    /// Held by another session, or a real error; the text says which.
    Because(String),
    /// The name holds a file we may not open for writing that nobody has locked.
    Unusable,
}

/// For a lock file we may not write: "locked by" text if some process holds its flock.
fn held_by_someone(path: &Path) -> Option<String> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    match Flock::lock(file, FlockArg::LockSharedNonblock) {
        Ok(_) => None,
        Err((file, _)) => Some(locked_by(&file)),
    }
}

impl Drop for SessionLock {
    fn drop(&mut self) {
        // As UW-IMAP's unlockfd: remove the name while still holding the lock (anyone who opened
        // it meanwhile notices the name changed and retries), then unlock by closing.
        if let Ok(true) = still_named(&self.file, &self.path) {
            let _ = fs::remove_file(&self.path);
        }
        let _ = set_ofd_lock(&self.file, libc::F_UNLCK);
    }
}

/// `<dir>/.<dev hex>.<ino hex>` as UW-IMAP's lock_work names it.
fn session_lock_path(dir: &Path, mailbox: &Path) -> io::Result<PathBuf> {
    let (dev, ino) = match fs::metadata(mailbox) {
        Ok(meta) => (meta.dev(), meta.ino()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let parent = match mailbox.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            let meta = fs::metadata(parent)?;
            let name = mailbox.file_name().unwrap_or_default();
            (meta.dev(), fnv1a(meta.ino(), name.as_encoded_bytes()))
        }
        Err(e) => return Err(e),
    };
    Ok(dir.join(format!(".{dev:x}.{ino:x}")))
}

fn fnv1a(seed: u64, bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in seed.to_le_bytes().iter().chain(bytes) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// Open the existing lock file or create it (mode 0666), never through a symlink, and refuse a
/// file that is hard-linked or not regular. As in UW-IMAP, a file some other user created is
/// used if its mode lets us write it: it may be left from that user's session on a file that
/// had the same inode number before.
fn open_session_file(path: &Path) -> io::Result<File> {
    let file = loop {
        let existing = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path);
        match existing {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            other => break other?,
        }
        let created = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o666)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path);
        match created {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            other => break other?,
        }
    };
    let meta = file.metadata()?;
    let euid = nix::unistd::geteuid().as_raw();
    if !meta.file_type().is_file() || meta.nlink() != 1 {
        return Err(io::Error::other("not a plain file (symlink or hard link?)"));
    }
    if meta.uid() == euid && meta.mode() & 0o777 != 0o666 {
        file.set_permissions(Permissions::from_mode(0o666))?;
    }
    Ok(file)
}

/// Whether `path` still names the file we locked (not unlinked or replaced meanwhile).
fn still_named(file: &File, path: &Path) -> io::Result<bool> {
    let ours = file.metadata()?;
    match fs::symlink_metadata(path) {
        Ok(now) => Ok(now.dev() == ours.dev() && now.ino() == ours.ino() && ours.nlink() == 1),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Replace the file's content with our pid, as UW-IMAP writes it (decimal, no newline).
fn record_holder(file: &File) -> io::Result<()> {
    file.set_len(0)?;
    file.write_all_at(std::process::id().to_string().as_bytes(), 0)
}

fn recorded_pid(file: &File) -> Option<u32> {
    let mut buf = [0u8; 32];
    let n = file.read_at(&mut buf, 0).ok()?;
    let text = std::str::from_utf8(&buf[..n]).ok()?;
    text.trim().parse::<u32>().ok().filter(|pid| *pid > 0)
}

fn locked_by(file: &File) -> String {
    match recorded_pid(file) {
        Some(pid) => format!("Mailbox is locked by process {pid}"),
        None => "Mailbox is locked by another process".to_string(),
    }
}

fn holder_pid_in(dir: &Path, mailbox: &Path) -> Option<u32> {
    let path = session_lock_path(dir, mailbox).ok()?;
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    let pid = recorded_pid(&file)?;
    let target = nix::unistd::Pid::from_raw(i32::try_from(pid).ok()?);
    match nix::sys::signal::kill(target, None) {
        Ok(()) | Err(Errno::EPERM) => Some(pid),
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::privs;
    use crate::privs::tests::{in_child, run_in_child, test_user};
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::fs::symlink;
    use std::sync::atomic::{AtomicU32, Ordering};

    static DIR_COUNTER: AtomicU32 = AtomicU32::new(0);
    const NO_HELPER: &str = "/nonexistent/mlock";

    fn temp_dir(tag: &str) -> PathBuf {
        let n = DIR_COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("lock-{tag}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn mailbox_in(dir: &Path) -> (PathBuf, File) {
        let path = dir.join("user");
        fs::write(&path, "From a@b Mon Jan  1 00:00:00 2024\n\nhi\n").unwrap();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        (path, file)
    }

    /// A python3 process holding a lock on `path`: `how` is `lockf` (POSIX fcntl, as Postfix) or
    /// `flock` (as UW-IMAP, also writing its pid). Returns once it holds it; it releases when its
    /// stdin closes. `None` (with a printed reason) without python3.
    fn python_holder(how: &str, path: &Path) -> Option<Child> {
        let script = format!(
            "import fcntl,os,sys\nf=open(sys.argv[1],'a+')\nfcntl.{how}(f,fcntl.LOCK_EX)\n\
             f.truncate(0) if '{how}'=='flock' else None\n\
             f.write(str(os.getpid())) if '{how}'=='flock' else None\nf.flush()\n\
             print('ready',flush=True)\nsys.stdin.read()\n"
        );
        let spawned = Command::new("python3")
            .args(["-c", &script])
            .arg(path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn();
        let Ok(mut child) = spawned else {
            println!("skipped: python3 not available");
            return None;
        };
        let mut ready = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut ready)
            .unwrap();
        assert_eq!(ready.trim(), "ready");
        Some(child)
    }

    fn release_holder(mut child: Child) {
        drop(child.stdin.take());
        child.wait().unwrap();
    }

    /// Whether another process can take a non-blocking POSIX write lock on `path` right now.
    fn others_can_fcntl_lock(path: &Path) -> bool {
        let script = "import fcntl,sys\nf=open(sys.argv[1],'r+')\n\
                      try:\n fcntl.lockf(f,fcntl.LOCK_EX|fcntl.LOCK_NB)\nexcept OSError:\n sys.exit(3)\n";
        let status = Command::new("python3")
            .args(["-c", script])
            .arg(path)
            .status()
            .expect("python3");
        assert!(matches!(status.code(), Some(0 | 3)), "{status:?}");
        status.code() == Some(0)
    }

    fn others_can_flock(path: &Path) -> bool {
        let status = Command::new("flock")
            .args(["-n", "-E", "3"])
            .arg(path)
            .arg("true")
            .status()
            .expect("flock(1) from util-linux");
        assert!(matches!(status.code(), Some(0 | 3)), "{status:?}");
        status.code() == Some(0)
    }

    fn have_python() -> bool {
        let ok = Command::new("python3").arg("-V").output().is_ok();
        if !ok {
            println!("skipped: python3 not available");
        }
        ok
    }

    #[test]
    fn dotlock_and_fcntl_held_until_drop() {
        let dir = temp_dir("held");
        let (path, file) = mailbox_in(&dir);
        let lock =
            MailboxLock::acquire(&path, &file, Path::new(NO_HELPER), Duration::ZERO).unwrap();
        assert!(lock.dotlocked());
        assert_eq!(lock.dotlock_path(), Some(dir.join("user.lock").as_path()));
        let content = fs::read_to_string(dir.join("user.lock")).unwrap();
        assert_eq!(content, format!("{}\n", std::process::id()));
        if have_python() {
            assert!(!others_can_fcntl_lock(&path), "fcntl lock not held");
        }
        drop(file); // the lock must survive the caller closing its own descriptor
        if have_python() {
            assert!(
                !others_can_fcntl_lock(&path),
                "fcntl lock lost with caller's fd"
            );
        }
        drop(lock);
        assert!(!dir.join("user.lock").exists());
        if have_python() {
            assert!(others_can_fcntl_lock(&path), "fcntl lock not released");
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn dotlock_held_by_another_process_times_out() {
        let dir = temp_dir("busy");
        let (path, file) = mailbox_in(&dir);
        let lock_path = dir.join("user.lock");
        let made = Command::new("dotlockfile")
            .args(["-r", "0", "-p"])
            .arg(&lock_path)
            .status();
        if !matches!(made, Ok(s) if s.success()) {
            println!("dotlockfile (liblockfile-bin) unavailable; a shell writes the lock");
            let status = Command::new("sh")
                .args(["-c", "echo $$ > \"$1\"", "sh"])
                .arg(&lock_path)
                .status()
                .unwrap();
            assert!(status.success());
        }
        let start = Instant::now();
        let err = MailboxLock::acquire(&path, &file, Path::new(NO_HELPER), ms(400))
            .err()
            .expect("got a dotlock someone else holds");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(start.elapsed() >= ms(400));
        assert!(lock_path.exists(), "removed someone else's fresh lock");
        if have_python() {
            assert!(others_can_fcntl_lock(&path), "fcntl lock leaked");
        }
        fs::remove_file(&lock_path).unwrap();
        let lock = MailboxLock::acquire(&path, &file, Path::new(NO_HELPER), ms(400)).unwrap();
        assert!(lock.dotlocked());
        drop(lock);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn stale_dotlock_is_taken_over() {
        let dir = temp_dir("stale");
        let (path, file) = mailbox_in(&dir);
        let lock_path = dir.join("user.lock");
        fs::write(&lock_path, "12345\n").unwrap();
        let touched = Command::new("touch")
            .args(["-m", "-d", "6 minutes ago"])
            .arg(&lock_path)
            .status()
            .unwrap();
        assert!(touched.success());
        let lock = MailboxLock::acquire(&path, &file, Path::new(NO_HELPER), ms(2000)).unwrap();
        let content = fs::read_to_string(&lock_path).unwrap();
        assert_eq!(content, format!("{}\n", std::process::id()));
        drop(lock);
        assert!(!lock_path.exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn fcntl_conflict_times_out_and_drops_the_dotlock() {
        let dir = temp_dir("fcntl");
        let (path, file) = mailbox_in(&dir);
        let Some(holder) = python_holder("lockf", &path) else {
            return;
        };
        let err = MailboxLock::acquire(&path, &file, Path::new(NO_HELPER), ms(400))
            .err()
            .expect("ignored another process's fcntl lock");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(!dir.join("user.lock").exists(), "dotlock left behind");
        release_holder(holder);
        let lock = MailboxLock::acquire(&path, &file, Path::new(NO_HELPER), ms(400)).unwrap();
        drop(lock);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn read_only_file_gets_a_read_lock() {
        let dir = temp_dir("readonly");
        let (path, _) = mailbox_in(&dir);
        let file = File::open(&path).unwrap();
        let lock = MailboxLock::acquire(&path, &file, Path::new(NO_HELPER), ms(400)).unwrap();
        if have_python() {
            assert!(!others_can_fcntl_lock(&path), "read lock not held");
        }
        drop(lock);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn read_lock_shuts_out_writers_only_while_held() {
        let dir = temp_dir("readlock");
        let (path, file) = mailbox_in(&dir);
        let lock = ReadLock::acquire(&path, &file, ms(400)).unwrap();
        // Another reader is welcome; a writer is not.
        let reader = File::open(&path).unwrap();
        drop(ReadLock::acquire(&path, &reader, ms(100)).unwrap());
        let writer = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let err = MailboxLock::acquire(&path, &writer, Path::new(NO_HELPER), ms(150))
            .err()
            .expect("a writer got in under a read lock");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        if have_python() {
            assert!(
                !others_can_fcntl_lock(&path),
                "read lock not seen by POSIX lockers"
            );
        }
        drop(lock);
        drop(MailboxLock::acquire(&path, &writer, Path::new(NO_HELPER), ms(400)).unwrap());
        if have_python() {
            assert!(others_can_fcntl_lock(&path), "read lock not released");
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn readers_wait_for_the_writer_they_found_not_for_the_next_one() {
        let dir = temp_dir("courtesy-next");
        let (path, file) = mailbox_in(&dir);
        let dotlock = dir.join("user.lock");
        fs::write(&dotlock, b"first").unwrap();
        let (next_taken, wait_next) = std::sync::mpsc::channel();
        let writers = {
            let dotlock = dotlock.clone();
            std::thread::spawn(move || {
                std::thread::sleep(ms(300));
                // The first writer leaves; the next takes the dotlock at once and keeps it.
                let next = dotlock.with_extension("next");
                fs::write(&next, b"second").unwrap();
                fs::rename(&next, &dotlock).unwrap();
                next_taken.send(()).unwrap();
                std::thread::sleep(ms(4000));
                fs::remove_file(&dotlock).unwrap();
            })
        };
        let start = Instant::now();
        drop(ReadLock::acquire(&path, &file, ms(10_000)).unwrap());
        let waited = start.elapsed();
        wait_next.recv().unwrap();
        assert!(
            waited >= ms(250),
            "did not wait for the first writer: {waited:?}"
        );
        assert!(
            waited < ms(3000),
            "waited for the second writer too: {waited:?}"
        );
        writers.join().unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn readers_let_a_dotlocked_writer_go_first() {
        let dir = temp_dir("courtesy");
        let (path, file) = mailbox_in(&dir);
        let dotlock = dir.join("user.lock");
        fs::write(&dotlock, b"").unwrap();
        let remover = {
            let dotlock = dotlock.clone();
            std::thread::spawn(move || {
                std::thread::sleep(ms(300));
                fs::remove_file(dotlock).unwrap();
            })
        };
        let start = Instant::now();
        drop(ReadLock::acquire(&path, &file, ms(2000)).unwrap());
        assert!(
            start.elapsed() >= ms(250),
            "did not wait: {:?}",
            start.elapsed()
        );
        remover.join().unwrap();
        // A dotlock nobody removes delays a reader only up to its timeout.
        fs::write(&dotlock, b"").unwrap();
        let start = Instant::now();
        drop(ReadLock::acquire(&path, &file, ms(200)).unwrap());
        assert!(start.elapsed() < ms(1500), "waited {:?}", start.elapsed());
        fs::remove_dir_all(&dir).unwrap();
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn session_lock_is_exclusive_and_released_on_drop() {
        let dir = temp_dir("session");
        let (mailbox, _) = mailbox_in(&dir);
        let locks = temp_dir("session-tmp");
        let lock = SessionLock::try_acquire_in(&locks, &mailbox).unwrap();
        let meta = fs::metadata(&mailbox).unwrap();
        let expected = locks.join(format!(".{:x}.{:x}", meta.dev(), meta.ino()));
        assert_eq!(lock.path(), expected);
        let lock_meta = fs::metadata(&expected).unwrap();
        assert_eq!(lock_meta.mode() & 0o777, 0o666);
        assert_eq!(
            fs::read_to_string(&expected).unwrap(),
            std::process::id().to_string()
        );
        assert_eq!(holder_pid_in(&locks, &mailbox), Some(std::process::id()));
        let again = SessionLock::try_acquire_in(&locks, &mailbox).err().unwrap();
        assert_eq!(
            again,
            format!("Mailbox is locked by process {}", std::process::id())
        );
        assert!(!others_can_flock(&expected), "flock not held");
        if have_python() {
            assert!(!others_can_fcntl_lock(&expected), "fcntl lock not held");
        }
        drop(lock);
        assert!(!expected.exists(), "lock file not removed");
        assert!(others_can_flock(&expected));
        let lock = SessionLock::try_acquire_in(&locks, &mailbox).unwrap();
        drop(lock);
        fs::remove_dir_all(&dir).unwrap();
        fs::remove_dir_all(&locks).unwrap();
    }

    #[test]
    fn session_lock_held_by_uw_style_flock_names_the_pid() {
        let dir = temp_dir("session-uw");
        let (mailbox, _) = mailbox_in(&dir);
        let locks = temp_dir("session-uw-tmp");
        let lock_path = session_lock_path(&locks, &mailbox).unwrap();
        let Some(holder) = python_holder("flock", &lock_path) else {
            return;
        };
        let err = SessionLock::try_acquire_in(&locks, &mailbox).err().unwrap();
        assert_eq!(err, format!("Mailbox is locked by process {}", holder.id()));
        assert_eq!(holder_pid_in(&locks, &mailbox), Some(holder.id()));
        release_holder(holder);
        let lock = SessionLock::try_acquire_in(&locks, &mailbox).unwrap();
        assert_eq!(
            fs::read_to_string(lock.path()).unwrap(),
            std::process::id().to_string()
        );
        drop(lock);
        fs::remove_dir_all(&dir).unwrap();
        fs::remove_dir_all(&locks).unwrap();
    }

    #[test]
    fn session_lock_refuses_a_symlink() {
        let dir = temp_dir("session-link");
        let (mailbox, _) = mailbox_in(&dir);
        let locks = temp_dir("session-link-tmp");
        let lock_path = session_lock_path(&locks, &mailbox).unwrap();
        let victim = dir.join("victim");
        symlink(&victim, &lock_path).unwrap();
        let err = SessionLock::try_acquire_in(&locks, &mailbox).err().unwrap();
        assert!(err.starts_with("Can't open session lock"), "{err}");
        assert!(!victim.exists(), "followed the symlink");
        fs::remove_dir_all(&dir).unwrap();
        fs::remove_dir_all(&locks).unwrap();
    }

    #[test]
    fn session_lock_names_for_missing_mailboxes_are_stable_and_distinct() {
        let dir = temp_dir("session-missing");
        let a = session_lock_path(Path::new("/tmp"), &dir.join("alice")).unwrap();
        let a2 = session_lock_path(Path::new("/tmp"), &dir.join("alice")).unwrap();
        let b = session_lock_path(Path::new("/tmp"), &dir.join("bob")).unwrap();
        assert_eq!(a, a2);
        assert_ne!(a, b);
        let dev = fs::metadata(&dir).unwrap().dev();
        let name = a.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with(&format!(".{dev:x}.")), "{name}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn public_session_lock_lives_in_tmp() {
        let dir = temp_dir("session-public");
        let (mailbox, _) = mailbox_in(&dir);
        let lock = SessionLock::try_acquire(&mailbox).unwrap();
        assert!(lock.path().starts_with("/tmp"));
        assert_eq!(SessionLock::holder_pid(&mailbox), Some(std::process::id()));
        assert!(SessionLock::try_acquire(&mailbox).is_err());
        drop(lock);
        assert_eq!(SessionLock::holder_pid(&mailbox), None);
        fs::remove_dir_all(&dir).unwrap();
    }

    /// The built `mlock` binary next to this test binary (`target/<profile>/mlock`).
    fn built_helper() -> Option<PathBuf> {
        let exe = std::env::current_exe().ok()?;
        let helper = exe.parent()?.parent()?.join("mlock");
        if helper.is_file() {
            Some(helper)
        } else {
            println!(
                "skipped: {} not built (cargo build -p mlock)",
                helper.display()
            );
            None
        }
    }

    #[test]
    fn child_part_spool_lock_as_user() {
        if !in_child() {
            return;
        }
        let spool = PathBuf::from(std::env::var_os("SPOOL").unwrap());
        let helper = PathBuf::from(std::env::var_os("HELPER").unwrap());
        let acct = privs::lookup("mailsuite-privtest").unwrap();
        privs::become_user(&acct, 1).unwrap();
        let mailbox = spool.join(&acct.name);
        let lock_path = spool.join(format!("{}.lock", acct.name));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&mailbox)
            .unwrap();
        assert!(
            fs::write(spool.join("probe"), "").is_err(),
            "spool is writable"
        );

        let lock = MailboxLock::acquire(&mailbox, &file, Path::new(NO_HELPER), ms(500)).unwrap();
        assert!(!lock.dotlocked());
        assert!(lock.dotlock_skipped().unwrap().contains(NO_HELPER));
        drop(lock);

        let lock = MailboxLock::acquire(&mailbox, &file, &helper, ms(5000)).unwrap();
        assert!(lock.dotlocked(), "{:?}", lock.dotlock_skipped());
        let meta = fs::symlink_metadata(&lock_path).expect("no dotlock made by helper");
        assert_eq!(meta.uid(), acct.uid);
        let mail = nix::unistd::Group::from_name("mail").unwrap().unwrap();
        assert_eq!(
            meta.gid(),
            mail.gid.as_raw(),
            "lock not made with the mail group"
        );
        let second = MailboxLock::acquire(&mailbox, &file, &helper, ms(300));
        assert_eq!(second.err().unwrap().kind(), io::ErrorKind::TimedOut);
        drop(lock);
        assert!(!lock_path.exists(), "helper left the dotlock");
        println!("CHILD-OK");
    }

    /// Stale session locks of another user (uid 54321): a 0666 one is reused in place, a 0600
    /// one is passed over for a name of our own, a held (readable) one still keeps us out.
    #[test]
    fn session_lock_of_another_user() {
        if in_child() {
            return;
        }
        let Some(acct) = test_user() else {
            return;
        };
        let dir = temp_dir("session-owner");
        let locks = dir.join("locks");
        fs::create_dir(&locks).unwrap();
        fs::set_permissions(&dir, Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(&locks, Permissions::from_mode(0o1777)).unwrap();
        let stranger = Some(nix::unistd::Uid::from_raw(54321));
        let mut lock_paths = Vec::new();
        for (name, mode) in [("reused", 0o666), ("private", 0o600), ("held", 0o644)] {
            let mailbox = dir.join(name);
            fs::write(&mailbox, "").unwrap();
            let lock_path = session_lock_path(&locks, &mailbox).unwrap();
            fs::write(&lock_path, "1").unwrap();
            nix::unistd::chown(&lock_path, stranger, None).unwrap();
            fs::set_permissions(&lock_path, Permissions::from_mode(mode)).unwrap();
            lock_paths.push(lock_path);
        }
        let Some(holder) = python_holder("flock", &lock_paths[2]) else {
            return;
        };
        let out = run_in_child(
            "store::lock::tests::child_part_session_lock_of_another_user",
            &[
                ("DIR", dir.to_str().unwrap()),
                ("HOLDER", &holder.id().to_string()),
            ],
        );
        release_holder(holder);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("CHILD-OK"),
            "child failed: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let fallback = format!("{}.{:x}", lock_paths[1].display(), acct.uid);
        assert!(!Path::new(&fallback).exists(), "fallback lock not removed");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn child_part_session_lock_of_another_user() {
        if !in_child() {
            return;
        }
        let acct = privs::lookup(privs::tests::TEST_USER).unwrap();
        privs::become_user(&acct, 1).unwrap();
        let dir = PathBuf::from(std::env::var("DIR").unwrap());
        let locks = dir.join("locks");
        let reused = SessionLock::try_acquire_in(&locks, &dir.join("reused")).unwrap();
        assert_eq!(
            reused.path(),
            session_lock_path(&locks, &dir.join("reused")).unwrap()
        );
        assert_eq!(
            fs::read_to_string(reused.path()).unwrap(),
            std::process::id().to_string()
        );
        let private = SessionLock::try_acquire_in(&locks, &dir.join("private")).unwrap();
        let uw_name = session_lock_path(&locks, &dir.join("private")).unwrap();
        let expected = format!("{}.{:x}", uw_name.display(), acct.uid);
        assert_eq!(private.path(), Path::new(&expected));
        assert!(SessionLock::try_acquire_in(&locks, &dir.join("private")).is_err());
        let held = SessionLock::try_acquire_in(&locks, &dir.join("held"))
            .err()
            .unwrap();
        let holder = std::env::var("HOLDER").unwrap();
        assert_eq!(held, format!("Mailbox is locked by process {holder}"));
        println!("CHILD-OK");
    }

    #[test]
    fn unwritable_spool_uses_setgid_helper() {
        if in_child() {
            return;
        }
        let (Some(acct), Some(built)) = (test_user(), built_helper()) else {
            return;
        };
        let Some(mail_gid) = nix::unistd::Group::from_name("mail").ok().flatten() else {
            println!("skipped: no mail group");
            return;
        };
        let root = temp_dir("spool");
        fs::set_permissions(&root, Permissions::from_mode(0o755)).unwrap();
        let spool = root.join("mail");
        let bin = root.join("bin");
        fs::create_dir_all(&spool).unwrap();
        fs::create_dir_all(&bin).unwrap();
        let helper = bin.join("mlock");
        fs::copy(&built, &helper).unwrap();
        let root_uid = Some(nix::unistd::Uid::from_raw(0));
        let mail = Some(mail_gid.gid);
        nix::unistd::chown(&spool, root_uid, mail).unwrap();
        nix::unistd::chown(&helper, root_uid, mail).unwrap();
        fs::set_permissions(&spool, Permissions::from_mode(0o2775)).unwrap();
        fs::set_permissions(&helper, Permissions::from_mode(0o2755)).unwrap();
        let mailbox = spool.join(&acct.name);
        let mut f = File::create(&mailbox).unwrap();
        f.write_all(b"From a@b Mon Jan  1 00:00:00 2024\n\nhi\n")
            .unwrap();
        let user = Some(nix::unistd::Uid::from_raw(acct.uid));
        nix::unistd::chown(&mailbox, user, mail).unwrap();
        fs::set_permissions(&mailbox, Permissions::from_mode(0o600)).unwrap();

        let out = run_in_child(
            "store::lock::tests::child_part_spool_lock_as_user",
            &[
                ("SPOOL", spool.to_str().unwrap()),
                ("HELPER", helper.to_str().unwrap()),
            ],
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("CHILD-OK"),
            "child failed: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        fs::remove_dir_all(&root).unwrap();
    }
}
