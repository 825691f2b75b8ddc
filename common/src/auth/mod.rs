//! Who the client is: plaintext passwords, APOP, and SASL (PLAIN, LOGIN, CRAM-MD5), checked
//! against PAM ([`pam`]) or the UW `/etc/cram-md5.pwd` secrets file ([`cram`]).
//!
//! Owns credential checking and the PAM session. Never changes process privileges (see
//! [`crate::privs`]), never logs a password, and never formats a protocol response.
//!
//! SKELETON: signatures only; the real implementation replaces the bodies.

pub mod cram;
pub mod pam;
pub mod sasl;

use std::path::Path;

/// Why a login was refused (the text is for logs; clients get a fixed message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthFailure(pub String);

/// A successful login. Holds the open PAM session (if PAM was used) until the process exits.
pub struct Login {
    pub user: String,
}

/// Checks credentials for one service (`pop` or `imap`).
pub struct Authenticator {
    _private: (),
}

impl Authenticator {
    /// Load the secrets file at `cram_path` if present and safe (owned by root, not readable by
    /// group or others; an unsafe one is logged and ignored). Must run while still root.
    pub fn new(_service: &str, _cram_path: &Path) -> Authenticator {
        Authenticator { _private: () }
    }
    /// APOP and CRAM-MD5 are offered only when the secrets file was loaded.
    pub fn cram_available(&self) -> bool {
        false
    }
    /// Plaintext password: the secrets file for users listed there, PAM for everyone else.
    pub fn check_password(
        &self,
        _user: &str,
        _password: &[u8],
        _rhost: Option<&str>,
    ) -> Result<Login, AuthFailure> {
        Err(AuthFailure("not implemented".into()))
    }
    /// APOP: `digest_hex` = md5(timestamp + secret), compared in constant time.
    pub fn check_apop(
        &self,
        _user: &str,
        _timestamp: &str,
        _digest_hex: &str,
    ) -> Result<Login, AuthFailure> {
        Err(AuthFailure("not implemented".into()))
    }
    /// CRAM-MD5: `digest_hex` = HMAC-MD5(secret, challenge), compared in constant time.
    pub fn check_cram(
        &self,
        _user: &str,
        _challenge: &[u8],
        _digest_hex: &str,
    ) -> Result<Login, AuthFailure> {
        Err(AuthFailure("not implemented".into()))
    }
}
