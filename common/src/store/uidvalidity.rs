//! UIDVALIDITY values for new mailboxes: the current time, but always above the last value
//! handed out from the same state file, so that a mailbox deleted and created again within one
//! second still gets a new one (RFC 3501 section 2.3.1.1: UIDs that did not persist need a
//! greater UIDVALIDITY).
//!
//! The state file holds the last value as 8 hex digits, Dovecot's `dovecot-uidvalidity`
//! format. Which file a store uses is its own choice. Never fails a caller: when the file
//! cannot be read or written the current time is used, as Dovecot falls back too.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::SystemTime;

/// A fresh UIDVALIDITY, recorded in `state` as handed out.
pub fn next(state: &Path) -> u32 {
    let value = peek(state);
    // Best effort: an unwritable file only loses the same-second guarantee.
    let _ = write_state(state, value);
    value
}

/// What [`next`] would hand out now, recording nothing (for sessions that may not write).
pub fn peek(state: &Path) -> u32 {
    let last = fs::read_to_string(state)
        .ok()
        .and_then(|text| u32::from_str_radix(text.trim(), 16).ok())
        .unwrap_or(0);
    now().max(last.saturating_add(1)).max(1)
}

/// Replace the state file in one rename, so a reader never sees it half written.
fn write_state(state: &Path, value: u32) -> std::io::Result<()> {
    let name = state
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let tmp = state.with_file_name(format!(".{name}.tmp.{}", std::process::id()));
    let result = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(format!("{value:08x}").as_bytes()))
        .and_then(|()| fs::rename(&tmp, state));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn now() -> u32 {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(1);
    u32::try_from(secs).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("uidvalidity-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn values_never_repeat_within_a_second() {
        let dir = temp_dir("repeat");
        let state = dir.join("dovecot-uidvalidity");
        let a = next(&state);
        let b = next(&state);
        assert!(a < b, "{a} {b}");
        assert!(a + 5 >= now());
        assert_eq!(fs::read_to_string(&state).unwrap(), format!("{b:08x}"));
        // Peeking records nothing; no temporary file is left behind.
        assert_eq!(peek(&state), b + 1);
        assert_eq!(next(&state), b + 1);
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
        let mode =
            std::os::unix::fs::PermissionsExt::mode(&fs::metadata(&state).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600, "private, like the uidlist");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_value_ahead_of_the_clock_is_continued_and_garbage_ignored() {
        let dir = temp_dir("ahead");
        let state = dir.join("dovecot-uidvalidity");
        let ahead = now() + 1000;
        fs::write(&state, format!("{ahead:08x}")).unwrap();
        assert_eq!(next(&state), ahead + 1);
        fs::write(&state, "zz").unwrap();
        let v = next(&state);
        assert!(v + 5 >= now() && v <= now());
        // An unwritable place: still a value.
        assert!(next(&dir.join("missing-dir").join("state")) + 5 >= now());
        fs::remove_dir_all(&dir).unwrap();
    }
}
