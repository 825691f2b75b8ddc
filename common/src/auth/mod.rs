//! Who the client is: plaintext passwords, APOP, and SASL (PLAIN, LOGIN, CRAM-MD5), checked
//! against PAM ([`pam`]) or the UW `/etc/cram-md5.pwd` secrets file ([`cram`]).
//!
//! Owns credential checking and the PAM session. Never changes process privileges (see
//! [`crate::privs`]), never logs a password, never formats a protocol response, and never
//! sleeps: the protocol layer applies the failure delay.
//!
//! UW semantics: a user listed in the secrets file is checked against the file only, also for
//! plaintext passwords (their system password is refused); everyone else goes through PAM.
//! APOP and CRAM-MD5 exist only when the file was loaded. The user must also be a system account
//! (`getpwnam`, retried in lower case when the name has upper-case letters, as UW's `pwuser`);
//! [`Login::user`] is the account's canonical name. As UW does, a plaintext password starting
//! with a space is retried without it (clients sending `PASS  secret`).

pub mod cram;
pub mod pam;
pub mod sasl;

use std::path::{Path, PathBuf};

use self::cram::CramSecrets;
use self::pam::PamSession;

/// Longest user name we consider (UW treats longer ones as a break-in attempt).
pub const MAX_USER_NAME: usize = 64;

/// Why a login was refused (the text is for logs; clients get a fixed message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthFailure(pub String);

impl std::fmt::Display for AuthFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AuthFailure {}

/// A successful login. Holds the open PAM session (if PAM was used) until dropped, which should
/// be at process exit.
#[derive(Debug)]
pub struct Login {
    /// The account's canonical name (from the password database).
    pub user: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
    pam: Option<PamSession>,
}

impl Login {
    /// A login without credentials, for a server already running as `user` (SASL EXTERNAL when
    /// started by that user, e.g. `ssh host ipop3d`). The account must exist.
    pub fn external(user: &str) -> Result<Login, AuthFailure> {
        account(user, None)
    }

    /// Whether a PAM session is held (false for users of the secrets file).
    pub fn has_pam_session(&self) -> bool {
        self.pam.is_some()
    }
}

/// Checks credentials for one service (`pop` or `imap`).
#[derive(Debug)]
pub struct Authenticator {
    service: String,
    secrets: Option<CramSecrets>,
}

impl Authenticator {
    /// Load the secrets file at `cram_path` if present and safe (owned by root, not readable by
    /// group or others; an unsafe one is logged and ignored). Must run while still root.
    pub fn new(service: &str, cram_path: &Path) -> Authenticator {
        let secrets = match cram::load(cram_path) {
            Ok(secrets) => secrets,
            Err(why) => {
                crate::log::err(&format!("CRAM-MD5/APOP secrets file unusable: {why}"));
                None
            }
        };
        Authenticator::with_secrets(service, secrets)
    }

    /// An authenticator with secrets already loaded (or none).
    pub fn with_secrets(service: &str, secrets: Option<CramSecrets>) -> Authenticator {
        Authenticator {
            service: service.to_owned(),
            secrets,
        }
    }

    /// APOP and CRAM-MD5 are offered only when the secrets file was loaded.
    pub fn cram_available(&self) -> bool {
        self.secrets.is_some()
    }

    /// Plaintext password: the secrets file for users listed there, PAM for everyone else.
    pub fn check_password(
        &self,
        user: &str,
        password: &[u8],
        rhost: Option<&str>,
    ) -> Result<Login, AuthFailure> {
        check_user_name(user)?;
        if password.is_empty() {
            return Err(AuthFailure(format!("empty password for {user}")));
        }
        if let Some(matched) = self
            .secrets
            .as_ref()
            .and_then(|s| s.check_plain(user, password))
        {
            return match matched {
                true => account(user, None),
                false => Err(AuthFailure(format!(
                    "wrong password for {user} (secrets file)"
                ))),
            };
        }
        let pw = lookup_account(user)?;
        let session = match PamSession::open(&self.service, &pw.name, password, rhost) {
            Ok(session) => session,
            Err(first) => match password {
                [b' ', rest @ ..] if !rest.is_empty() => {
                    PamSession::open(&self.service, &pw.name, rest, rhost)
                        .map_err(|_| AuthFailure(format!("PAM refused {}: {first}", pw.name)))?
                }
                _ => return Err(AuthFailure(format!("PAM refused {}: {first}", pw.name))),
            },
        };
        Ok(login_for(pw, Some(session)))
    }

    /// APOP: `digest_hex` = md5(timestamp + secret), compared in constant time.
    pub fn check_apop(
        &self,
        user: &str,
        timestamp: &str,
        digest_hex: &str,
    ) -> Result<Login, AuthFailure> {
        check_user_name(user)?;
        let secrets = self.secrets_or_refuse("APOP")?;
        if !secrets.check_apop(user, timestamp, digest_hex) {
            return Err(AuthFailure(format!("APOP digest mismatch for {user}")));
        }
        account(user, None)
    }

    /// CRAM-MD5: `digest_hex` = HMAC-MD5(secret, challenge), compared in constant time.
    pub fn check_cram(
        &self,
        user: &str,
        challenge: &[u8],
        digest_hex: &str,
    ) -> Result<Login, AuthFailure> {
        check_user_name(user)?;
        let secrets = self.secrets_or_refuse("CRAM-MD5")?;
        if !secrets.check_cram(user, challenge, digest_hex) {
            return Err(AuthFailure(format!("CRAM-MD5 digest mismatch for {user}")));
        }
        account(user, None)
    }

    /// Check what a finished SASL exchange produced.
    pub fn check_sasl(
        &self,
        credentials: &sasl::Credentials,
        rhost: Option<&str>,
    ) -> Result<Login, AuthFailure> {
        match credentials {
            sasl::Credentials::Password { user, password, .. } => {
                self.check_password(user, password, rhost)
            }
            sasl::Credentials::CramMd5 {
                user,
                challenge,
                digest_hex,
            } => self.check_cram(user, challenge, digest_hex),
        }
    }

    fn secrets_or_refuse(&self, mechanism: &str) -> Result<&CramSecrets, AuthFailure> {
        self.secrets
            .as_ref()
            .ok_or_else(|| AuthFailure(format!("{mechanism} disabled: no secrets file")))
    }
}

fn check_user_name(user: &str) -> Result<(), AuthFailure> {
    if user.is_empty() {
        return Err(AuthFailure("empty user name".into()));
    }
    if user.len() > MAX_USER_NAME {
        return Err(AuthFailure(format!(
            "user name of {} bytes is too long",
            user.len()
        )));
    }
    if user.chars().any(char::is_control) {
        return Err(AuthFailure("control character in user name".into()));
    }
    Ok(())
}

/// The system account for `user`, retried in lower case as UW's `pwuser` does.
fn lookup_account(user: &str) -> Result<nix::unistd::User, AuthFailure> {
    let find = |name: &str| nix::unistd::User::from_name(name).ok().flatten();
    find(user)
        .or_else(|| {
            if user.bytes().any(|b| b.is_ascii_uppercase()) {
                find(&user.to_ascii_lowercase())
            } else {
                None
            }
        })
        .ok_or_else(|| AuthFailure(format!("no such account {user}")))
}

fn account(user: &str, pam: Option<PamSession>) -> Result<Login, AuthFailure> {
    Ok(login_for(lookup_account(user)?, pam))
}

fn login_for(pw: nix::unistd::User, pam: Option<PamSession>) -> Login {
    Login {
        user: pw.name,
        uid: pw.uid.as_raw(),
        gid: pw.gid.as_raw(),
        home: pw.dir,
        pam,
    }
}

#[cfg(test)]
mod tests {
    use super::pam::tests::{TestAccount, TestService, TEST_PASSWORD};
    use super::*;

    /// `nobody` exists on every Debian system; the secrets file lists it (and a non-account).
    fn with_file_secrets(service: &str) -> Authenticator {
        let secrets = CramSecrets::parse(b"nobody\tmd5secret\nghost\tboo\n");
        Authenticator::with_secrets(service, Some(secrets))
    }

    #[test]
    fn listed_user_is_checked_against_the_file_only() {
        let auth = with_file_secrets("mailsuite-no-such-service");
        assert!(auth.cram_available());
        let login = auth.check_password("nobody", b"md5secret", None).unwrap();
        assert_eq!(login.user, "nobody");
        assert_eq!(login.uid, 65534);
        assert!(!login.has_pam_session());
        let login = auth.check_password("NOBODY", b" md5secret", None).unwrap();
        assert_eq!(login.user, "nobody");
        assert!(auth.check_password("nobody", b"other", None).is_err());
        // Listed but no system account: refused even with the right secret.
        assert!(auth.check_password("ghost", b"boo", None).is_err());
    }

    #[test]
    fn apop_and_cram_need_the_file() {
        let ts = "<31bb.6b0436ee@localhost>";
        let digest = "d09eb05ba6034fbbadd19256108d7f16";
        let none = Authenticator::with_secrets("pop", None);
        assert!(!none.cram_available());
        assert!(none.check_apop("nobody", ts, digest).is_err());
        let auth = with_file_secrets("pop");
        assert_eq!(
            auth.check_apop("nobody", ts, digest).unwrap().user,
            "nobody"
        );
        assert!(auth
            .check_apop("nobody", ts, &digest.replace('d', "e"))
            .is_err());
        let challenge = b"<12720.1795438318@vm>";
        let cram_hex = "d0dd2f65c101a9106af5f4556091b2e6";
        assert!(none.check_cram("nobody", challenge, cram_hex).is_err());
        let creds = sasl::Credentials::CramMd5 {
            user: "nobody".into(),
            challenge: challenge.to_vec(),
            digest_hex: cram_hex.into(),
        };
        assert_eq!(auth.check_sasl(&creds, None).unwrap().user, "nobody");
    }

    #[test]
    fn bad_user_names_and_empty_passwords_are_refused_early() {
        let auth = with_file_secrets("pop");
        assert!(auth.check_password("", b"x", None).is_err());
        assert!(auth
            .check_password("nobody\r\n", b"md5secret", None)
            .is_err());
        assert!(auth.check_password(&"a".repeat(65), b"x", None).is_err());
        assert!(auth.check_password("nobody", b"", None).is_err());
    }

    #[test]
    fn unsafe_secrets_file_disables_cram() {
        use std::os::unix::fs::PermissionsExt;
        let path = std::env::temp_dir().join(format!("auth-cram-{}", std::process::id()));
        std::fs::write(&path, "nobody\tmd5secret\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(!Authenticator::new("pop", &path).cram_available());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(Authenticator::new("pop", &path).cram_available());
        std::fs::remove_file(&path).unwrap();
        assert!(!Authenticator::new("pop", &path).cram_available());
    }

    #[test]
    fn unlisted_users_go_through_pam() {
        let Some(account) = TestAccount::create("auth") else {
            return;
        };
        let service = TestService::install("auth");
        // The secrets file lists others only, so the test user is checked by PAM.
        let auth = with_file_secrets(&service.name);
        let login = auth
            .check_password(&account.name, TEST_PASSWORD.as_bytes(), Some("localhost"))
            .unwrap();
        assert_eq!(login.user, account.name);
        assert!(login.has_pam_session());
        drop(login);
        let spaced = format!(" {TEST_PASSWORD}");
        assert!(auth
            .check_password(&account.name, spaced.as_bytes(), None)
            .is_ok());
        assert!(auth.check_password(&account.name, b"wrong", None).is_err());
        assert!(auth
            .check_password("mailsuite-no-such-user", TEST_PASSWORD.as_bytes(), None)
            .is_err());
        // APOP for an unlisted user fails even though PAM knows them.
        assert!(auth
            .check_apop(&account.name, "<1@x>", "d09eb05ba6034fbbadd19256108d7f16")
            .is_err());
    }
}
