//! The UW-IMAP CRAM-MD5/APOP secrets file (`user<TAB>secret` lines, `#` comments).
//!
//! Owns reading `/etc/cram-md5.pwd` (refusing an unsafe one), holding the secrets in memory that
//! is wiped when dropped, and the APOP (RFC 1939) and CRAM-MD5 (RFC 2195) digests. Every
//! comparison with client input is constant-time. Never logs or prints a secret (the `Debug`
//! output shows only how many users are listed) and never consults PAM.
//!
//! File format, as UW's `auth_md5.c` reads it: lines end in LF or CRLF; empty lines, lines
//! starting with `#`, and lines without a TAB followed by a non-empty secret are ignored. The
//! secret is everything after the first TAB. A user name is looked up exactly, and if it has
//! upper-case letters and is not listed, its lower-case form is tried.

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// Largest secrets file we read; anything bigger is not a secrets file.
const MAX_FILE_SIZE: u64 = 1 << 20;

/// The secrets of the users listed in the file.
pub struct CramSecrets {
    entries: Vec<(String, Zeroizing<Vec<u8>>)>,
}

impl fmt::Debug for CramSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CramSecrets({} users)", self.entries.len())
    }
}

/// Read the secrets file at `path`.
///
/// `Ok(None)`: there is no file, so APOP and CRAM-MD5 are off. `Err(reason)`: the file exists
/// but must not be used (not a regular file, owned by someone other than root or ourselves,
/// readable or writable by group or others, unreadable, too big); the caller logs the reason.
/// Owner "ourselves" lets an unprivileged server (serving only its own user) use its own file.
pub fn load(path: &Path) -> Result<Option<CramSecrets>, String> {
    let file = match File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let meta = file
        .metadata()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    check_safe(&meta).map_err(|why| format!("{}: {why}; ignored", path.display()))?;
    // Read exactly the size fstat saw into a buffer with room for it and the EOF probe, so it
    // never reallocates (which would leave an unwiped copy of the secrets behind).
    let mut content = Zeroizing::new(Vec::with_capacity(meta.len() as usize + 1));
    file.take(meta.len())
        .read_to_end(&mut content)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Some(CramSecrets::parse(&content)))
}

fn check_safe(meta: &std::fs::Metadata) -> Result<(), String> {
    if !meta.file_type().is_file() {
        return Err("not a regular file".into());
    }
    let our_uid = nix::unistd::geteuid().as_raw();
    if meta.uid() != 0 && meta.uid() != our_uid {
        return Err(format!("owned by uid {}, not root", meta.uid()));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(format!(
            "mode {:04o} gives group or others access (must be 0600 or 0400)",
            meta.mode() & 0o7777
        ));
    }
    if meta.len() > MAX_FILE_SIZE {
        return Err(format!("{} bytes is too big", meta.len()));
    }
    Ok(())
}

impl CramSecrets {
    /// Parse the file's content (see the module documentation for the format).
    pub fn parse(content: &[u8]) -> CramSecrets {
        let mut entries = Vec::new();
        for line in content.split(|&b| b == b'\n' || b == b'\r') {
            if line.is_empty() || line[0] == b'#' {
                continue;
            }
            let Some(tab) = memchr::memchr(b'\t', line) else {
                continue;
            };
            let (user, secret) = (&line[..tab], &line[tab + 1..]);
            if secret.is_empty() {
                continue;
            }
            let Ok(user) = std::str::from_utf8(user) else {
                continue;
            };
            entries.push((user.to_owned(), Zeroizing::new(secret.to_vec())));
        }
        CramSecrets { entries }
    }

    /// How many users are listed.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the file lists nobody.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The secret for `user`: the first exact match, else (when `user` has upper-case letters)
    /// the first match of its lower-case form, as UW does.
    fn secret(&self, user: &str) -> Option<&[u8]> {
        let find = |name: &str| {
            self.entries
                .iter()
                .find(|(listed, _)| listed == name)
                .map(|(_, secret)| secret.as_slice())
        };
        find(user).or_else(|| {
            if user.bytes().any(|b| b.is_ascii_uppercase()) {
                find(&user.to_ascii_lowercase())
            } else {
                None
            }
        })
    }

    /// Whether `user` is listed (then its plaintext password is checked here, never by PAM).
    pub fn lists(&self, user: &str) -> bool {
        self.secret(user).is_some()
    }

    /// Plaintext password check for a listed user: `None` when `user` is not listed. As UW does,
    /// a password with one extra leading space (clients sending `PASS  secret`) also matches.
    pub fn check_plain(&self, user: &str, password: &[u8]) -> Option<bool> {
        let secret = self.secret(user)?;
        let exact: bool = secret.ct_eq(password).into();
        let spaced = match password {
            [b' ', rest @ ..] if !rest.is_empty() => secret.ct_eq(rest).into(),
            _ => false,
        };
        Some(exact | spaced)
    }

    /// APOP (RFC 1939): `digest_hex` must be hex(md5(timestamp + secret)), either case.
    pub fn check_apop(&self, user: &str, timestamp: &str, digest_hex: &str) -> bool {
        match (self.secret(user), parse_hex_digest(digest_hex)) {
            (Some(secret), Some(claimed)) => apop_digest(timestamp.as_bytes(), secret)
                .ct_eq(&claimed)
                .into(),
            _ => false,
        }
    }

    /// CRAM-MD5 (RFC 2195): `digest_hex` must be hex(HMAC-MD5(secret, challenge)), either case.
    pub fn check_cram(&self, user: &str, challenge: &[u8], digest_hex: &str) -> bool {
        match (self.secret(user), parse_hex_digest(digest_hex)) {
            (Some(secret), Some(claimed)) => cram_digest(secret, challenge).ct_eq(&claimed).into(),
            _ => false,
        }
    }
}

/// md5(timestamp + secret), the APOP digest.
pub fn apop_digest(timestamp: &[u8], secret: &[u8]) -> [u8; 16] {
    let mut hasher = Md5::new();
    hasher.update(timestamp);
    hasher.update(secret);
    hasher.finalize().into()
}

/// HMAC-MD5 keyed with the secret over the challenge, the CRAM-MD5 digest.
pub fn cram_digest(secret: &[u8], challenge: &[u8]) -> [u8; 16] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = match <Hmac<Md5> as Mac>::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => return [0; 16],
    };
    mac.update(challenge);
    mac.finalize().into_bytes().into()
}

/// Lower-case hex, as clients compute it.
pub fn to_hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// 32 hex digits (either case) as 16 bytes; anything else is `None`.
fn parse_hex_digest(hex: &str) -> Option<[u8; 16]> {
    let hex = hex.as_bytes();
    if hex.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        *byte = (hex_value(pair[0])? << 4) | hex_value(pair[1])?;
    }
    Some(out)
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;

    /// A private temporary directory removed on drop.
    struct TempDir(PathBuf);
    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let dir = std::env::temp_dir().join(format!("cram-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir(&dir).unwrap();
            TempDir(dir)
        }
        fn file(&self, content: &[u8], mode: u32) -> PathBuf {
            let path = self.0.join("cram-md5.pwd");
            std::fs::write(&path, content).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            path
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const REFERENCE_FILE: &[u8] = b"# UW secrets\r\nuwtest\tmd5secret\r\n\nno-tab-line\nempty\t\n";

    #[test]
    fn parses_entries_and_skips_comments_blank_and_bad_lines() {
        let secrets = CramSecrets::parse(REFERENCE_FILE);
        assert_eq!(secrets.len(), 1);
        assert!(secrets.lists("uwtest"));
        assert!(!secrets.lists("no-tab-line"));
        assert!(!secrets.lists("empty"));
        assert!(!secrets.lists("# UW secrets"));
        assert_eq!(format!("{secrets:?}"), "CramSecrets(1 users)");
    }

    #[test]
    fn secret_is_everything_after_the_first_tab() {
        let secrets = CramSecrets::parse(b"bob\tpass\twith tab \n");
        assert_eq!(secrets.check_plain("bob", b"pass\twith tab "), Some(true));
        assert_eq!(secrets.check_plain("bob", b"pass"), Some(false));
    }

    #[test]
    fn upper_case_user_falls_back_to_lower_case_entry() {
        let secrets = CramSecrets::parse(b"alice\ta-secret\nBob\tb-secret\n");
        assert_eq!(secrets.check_plain("ALICE", b"a-secret"), Some(true));
        assert_eq!(secrets.check_plain("Bob", b"b-secret"), Some(true));
        assert_eq!(secrets.check_plain("bob", b"b-secret"), None);
    }

    #[test]
    fn plaintext_check_for_listed_and_unlisted_users() {
        let secrets = CramSecrets::parse(REFERENCE_FILE);
        assert_eq!(secrets.check_plain("uwtest", b"md5secret"), Some(true));
        assert_eq!(secrets.check_plain("uwtest", b" md5secret"), Some(true));
        assert_eq!(secrets.check_plain("uwtest", b"pass"), Some(false));
        assert_eq!(secrets.check_plain("uwtest", b"md5secre"), Some(false));
        assert_eq!(secrets.check_plain("uwtest", b""), Some(false));
        assert_eq!(secrets.check_plain("other", b"md5secret"), None);
    }

    #[test]
    fn apop_digest_from_uw_recording_verifies() {
        let secrets = CramSecrets::parse(REFERENCE_FILE);
        let ts = "<31bb.6b0436ee@localhost>";
        let digest = "d09eb05ba6034fbbadd19256108d7f16";
        assert_eq!(to_hex(&apop_digest(ts.as_bytes(), b"md5secret")), digest);
        assert!(secrets.check_apop("uwtest", ts, digest));
        assert!(secrets.check_apop("uwtest", ts, &digest.to_ascii_uppercase()));
        assert!(!secrets.check_apop("uwtest", "<other@localhost>", digest));
        assert!(!secrets.check_apop("nobody", ts, digest));
        assert!(!secrets.check_apop("uwtest", ts, &digest[..31]));
        assert!(!secrets.check_apop("uwtest", ts, "zz9eb05ba6034fbbadd19256108d7f16"));
    }

    #[test]
    fn cram_digests_from_uw_recording_verify() {
        let secrets = CramSecrets::parse(REFERENCE_FILE);
        let imap_challenge = b"<12720.1795438318@vm>";
        let imap_digest = "d0dd2f65c101a9106af5f4556091b2e6";
        assert_eq!(
            to_hex(&cram_digest(b"md5secret", imap_challenge)),
            imap_digest
        );
        assert!(secrets.check_cram("uwtest", imap_challenge, imap_digest));
        assert!(secrets.check_cram("uwtest", imap_challenge, &imap_digest.to_uppercase()));
        // The POP3 AUTH CRAM-MD5 exchange of the same recording.
        assert!(secrets.check_cram(
            "uwtest",
            b"<13108.1795438321@vm>",
            "45c4d23436a0f88fd8f430186d0d9b78"
        ));
        assert!(!secrets.check_cram("uwtest", b"<1.2@vm>", imap_digest));
        assert!(!secrets.check_cram("nobody", imap_challenge, imap_digest));
    }

    #[test]
    fn absent_file_disables_cram() {
        let dir = TempDir::new("absent");
        assert!(load(&dir.0.join("missing")).unwrap().is_none());
    }

    #[test]
    fn private_file_loads() {
        let dir = TempDir::new("private");
        let path = dir.file(REFERENCE_FILE, 0o600);
        let secrets = load(&path).unwrap().unwrap();
        assert_eq!(secrets.check_plain("uwtest", b"md5secret"), Some(true));
    }

    #[test]
    fn group_or_world_accessible_file_is_refused() {
        let dir = TempDir::new("modes");
        for mode in [0o644, 0o640, 0o604, 0o620, 0o602] {
            let path = dir.file(REFERENCE_FILE, mode);
            let err = load(&path).unwrap_err();
            assert!(err.contains("must be 0600"), "mode {mode:o}: {err}");
        }
    }

    #[test]
    fn symlink_and_directory_are_refused() {
        let dir = TempDir::new("links");
        let target = dir.file(REFERENCE_FILE, 0o600);
        let link = dir.0.join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(load(&link).is_err());
        assert!(load(&dir.0).is_err());
    }

    #[test]
    fn file_owned_by_another_user_is_refused() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: changing a file's owner needs root");
            return;
        }
        let dir = TempDir::new("owner");
        let path = dir.file(REFERENCE_FILE, 0o600);
        std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
        let err = load(&path).unwrap_err();
        assert!(err.contains("owned by uid 65534"), "{err}");
    }
}
