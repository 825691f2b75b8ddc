//! syslog (facility mail, ident = program name, with pid), mirrored to stderr when asked.
//!
//! Owns the process's syslog connection and the sanitising of every logged message: control
//! characters (CR, LF, ESC, ...) that a client could smuggle in through a user name are replaced,
//! so one log call is always one log line. Never logs a password (callers must not pass one) and
//! never passes a message to syslog as a format string (always through `"%s"`).

use std::ffi::{CStr, CString};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

/// Longest message we log, in bytes; longer ones are cut (at a character boundary) and marked.
pub const MAX_MESSAGE: usize = 2048;

/// The ident given to `openlog`. syslog keeps the pointer, so it lives for the whole process.
static IDENT: OnceLock<CString> = OnceLock::new();
/// Whether messages are mirrored to stderr (and `debug` messages are emitted at all).
static ALSO_STDERR: AtomicBool = AtomicBool::new(false);

/// Open the syslog connection as `ident[pid]` with facility mail. Call once, early; later calls
/// keep the first ident but update `also_stderr`.
pub fn init(ident: &str, also_stderr: bool) {
    ALSO_STDERR.store(also_stderr, Ordering::Relaxed);
    let ident = IDENT.get_or_init(|| CString::new(sanitize(ident)).unwrap_or_default());
    open(ident);
}

/// Re-open syslog with our ident and facility. PAM modules call `openlog` themselves and leave
/// the process logging under their name; call this after every PAM conversation (as UW does).
pub fn reopen() {
    if let Some(ident) = IDENT.get() {
        open(ident);
    }
}

fn open(ident: &CStr) {
    // SAFETY: `ident` is a NUL-terminated string stored in a static `OnceLock`, so the pointer
    // syslog keeps stays valid for the life of the process.
    unsafe { libc::openlog(ident.as_ptr(), libc::LOG_PID, libc::LOG_MAIL) };
}

/// Routine events: logins, logouts, mailbox updates (mail.info).
pub fn info(msg: &str) {
    emit(libc::LOG_MAIL | libc::LOG_INFO, msg);
}

/// Significant but normal conditions (mail.notice).
pub fn notice(msg: &str) {
    emit(libc::LOG_MAIL | libc::LOG_NOTICE, msg);
}

/// Something is wrong but the session goes on (mail.warning).
pub fn warning(msg: &str) {
    emit(libc::LOG_MAIL | libc::LOG_WARNING, msg);
}

/// An error that ends an operation or the session (mail.err).
pub fn err(msg: &str) {
    emit(libc::LOG_MAIL | libc::LOG_ERR, msg);
}

/// Needs an administrator now, e.g. an attack (mail.alert).
pub fn alert(msg: &str) {
    emit(libc::LOG_MAIL | libc::LOG_ALERT, msg);
}

/// Authentication events such as `Login failed user=... host=...` (auth.notice, as UW logs them,
/// so they land where fail2ban and the site's auth log look).
pub fn auth_notice(msg: &str) {
    emit(libc::LOG_AUTH | libc::LOG_NOTICE, msg);
}

/// Developer detail: written to stderr only, and only when `init` asked for stderr.
pub fn debug(msg: &str) {
    if ALSO_STDERR.load(Ordering::Relaxed) {
        write_stderr(&sanitize(msg));
    }
}

fn emit(priority: libc::c_int, msg: &str) {
    let clean = sanitize(msg);
    if let Ok(text) = CString::new(clean.as_str()) {
        // SAFETY: both pointers are valid NUL-terminated strings for the duration of the call,
        // and the message is passed as an argument to a constant "%s" format.
        unsafe { libc::syslog(priority, c"%s".as_ptr(), text.as_ptr()) };
    }
    if ALSO_STDERR.load(Ordering::Relaxed) {
        write_stderr(&clean);
    }
}

fn write_stderr(clean: &str) {
    let ident = IDENT
        .get()
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_default();
    let line = format!("{ident}[{}]: {clean}\n", std::process::id());
    // Logging must never fail the caller; a closed stderr is ignored.
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// The message as it will be logged: every control character (C0, DEL, C1) and NUL becomes `?`,
/// and it is cut to at most [`MAX_MESSAGE`] bytes (ending in `...` when cut).
pub fn sanitize(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len().min(MAX_MESSAGE));
    for ch in msg.chars() {
        let ch = if ch.is_control() { '?' } else { ch };
        if out.len() + ch.len_utf8() > MAX_MESSAGE - 3 {
            out.push_str("...");
            return out;
        }
        out.push(ch);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_breaks_cannot_forge_log_lines() {
        let forged = sanitize("Login failed user=x\r\nLogin user=root host=evil");
        assert_eq!(forged, "Login failed user=x??Login user=root host=evil");
        assert!(!forged.contains('\n') && !forged.contains('\r'));
    }

    #[test]
    fn other_control_characters_are_replaced() {
        assert_eq!(sanitize("a\0b\x1b[31mc\x7fd\u{85}e\tf"), "a?b?[31mc?d?e?f");
    }

    #[test]
    fn printable_text_and_percent_signs_pass_unchanged() {
        let text = "user=j\u{f6}rg %s %n 100% host=[::1]";
        assert_eq!(sanitize(text), text);
    }

    #[test]
    fn overlong_messages_are_cut_at_a_character_boundary() {
        let long = "\u{e9}".repeat(MAX_MESSAGE);
        let cut = sanitize(&long);
        assert!(cut.len() <= MAX_MESSAGE);
        assert!(cut.ends_with("..."));
        assert!(cut.trim_end_matches("...").chars().all(|c| c == '\u{e9}'));
    }

    #[test]
    fn logging_with_format_directives_does_not_crash() {
        // Goes to syslog (or nowhere if no syslog daemon runs); must not interpret "%s%n".
        init("common-test", false);
        info("test message %s%s%n%n");
        auth_notice("Login failed user=%s%n host=test");
        reopen();
    }
}
