//! Mailbox names: which wire-form names are acceptable and how they map onto paths below a
//! mail root.
//!
//! A deliberate, documented difference from UW-IMAP: names that would leave the mail root
//! (absolute paths, `..` or `.` components, `~user`, `#namespace`) are refused, so a session can
//! only ever reach its own user's folders. Never touches the filesystem.

use super::StoreError;

/// True for `INBOX` in any case.
pub fn is_inbox(name: &str) -> bool {
    name.eq_ignore_ascii_case("INBOX")
}

/// Check a wire-form folder name (not INBOX) and split it into its `/`-separated components.
/// A single trailing `/` is allowed (CREATE of a directory level) and dropped.
pub fn validate(name: &str) -> Result<Vec<&str>, StoreError> {
    let refuse = |why: &str| {
        Err(StoreError::Refused(format!(
            "Invalid mailbox name {name:?}: {why}"
        )))
    };
    let trimmed = name.strip_suffix('/').unwrap_or(name);
    if trimmed.is_empty() {
        return refuse("empty name");
    }
    if trimmed.starts_with('/') || trimmed.starts_with('~') || trimmed.starts_with('#') {
        return refuse("names outside the mail directory are not allowed");
    }
    if trimmed.len() > 1024 {
        return refuse("name too long");
    }
    let parts: Vec<&str> = trimmed.split('/').collect();
    for part in &parts {
        if part.is_empty() || *part == "." || *part == ".." {
            return refuse("empty, . or .. component");
        }
        if part.bytes().any(|b| b < 0x20 || b == 0x7f || b >= 0x80) {
            return refuse("control or 8-bit characters (use modified UTF-7)");
        }
        if part.len() > 255 {
            return refuse("component too long");
        }
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        assert_eq!(validate("mail/saved").unwrap(), vec!["mail", "saved"]);
        assert_eq!(validate("dir/").unwrap(), vec!["dir"]);
        assert_eq!(validate("Entw&APw-rfe").unwrap(), vec!["Entw&APw-rfe"]);
        assert!(is_inbox("inBox") && !is_inbox("INBOX/x"));
    }

    #[test]
    fn refuses_escapes_from_the_root() {
        for bad in [
            "/etc/passwd",
            "~root/x",
            "../x",
            "a/../../b",
            "a//b",
            "a/./b",
            "#news.x",
            "",
            "/",
            "a\u{0}b",
            "été",
        ] {
            assert!(validate(bad).is_err(), "{bad:?} accepted");
        }
    }
}
