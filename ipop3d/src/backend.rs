//! The real [`Backend`]: credentials checked by `common::auth`, the process dropped to the user
//! by `common::privs`, then the user's INBOX opened exclusively from `common::store`.
//!
//! Owns the order of those steps (privileges are dropped BEFORE any mail file is opened).
//! Never speaks POP3.

use crate::session::{Backend, Credentials, LoginError};
use common::auth::{Authenticator, Login};
use common::privs::{self, Account};
use common::store::{self, Access, Mailbox, StoreConfig, StoreError};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

pub struct SystemBackend {
    pub authenticator: Authenticator,
    pub store: StoreConfig,
    pub min_uid: u32,
    pub rhost: Option<String>,
    /// Started as root: authenticate, then become the user. Otherwise serve only ourselves.
    pub as_root: bool,
    pub login_delay: Option<u64>,
    /// The successful login, kept alive (it holds the PAM session) until the process exits.
    pub login: Option<Login>,
}

impl Backend for SystemBackend {
    fn login(&mut self, credentials: &Credentials) -> Result<Box<dyn Mailbox>, LoginError> {
        if self.login.is_some() {
            return Err(LoginError::Permanent("already logged in".into()));
        }
        let login = self.authenticate(credentials)?;
        let account = privs::lookup(&login.user)
            .ok_or_else(|| LoginError::Refused("no such user in passwd".into()))?;
        if account.uid == 0 || account.uid < self.min_uid {
            return Err(LoginError::Refused(format!(
                "uid {} may not log in",
                account.uid
            )));
        }
        if self.as_root {
            privs::become_user(&account, self.min_uid).map_err(LoginError::Permanent)?;
            // The store keeps its crash journal in $HOME when the spool directory is not
            // writable; after the drop, HOME must be the user's, not root's.
            std::env::set_var("HOME", &account.home);
        } else if privs::current().map(|me| me.uid) != Some(account.uid) {
            return Err(LoginError::Refused(
                "not running as root: cannot serve other users".into(),
            ));
        }
        self.login = Some(login);
        self.check_login_delay(&account)?;
        self.open_inbox(&account)
    }
}

impl SystemBackend {
    fn authenticate(&self, credentials: &Credentials) -> Result<Login, LoginError> {
        let refused = |e: common::auth::AuthFailure| LoginError::Refused(e.0);
        match credentials {
            Credentials::Password { user, password } => self
                .authenticator
                .check_password(user, password, self.rhost.as_deref())
                .map_err(refused),
            Credentials::Apop {
                user,
                timestamp,
                digest_hex,
            } => self
                .authenticator
                .check_apop(user, timestamp, digest_hex)
                .map_err(refused),
            Credentials::Cram {
                user,
                challenge,
                digest_hex,
            } => self
                .authenticator
                .check_cram(user, challenge, digest_hex)
                .map_err(refused),
            Credentials::External { user } if !self.as_root => {
                Login::external(user).map_err(refused)
            }
            Credentials::External { .. } => {
                Err(LoginError::Refused("EXTERNAL only when not root".into()))
            }
        }
    }

    fn open_inbox(&self, account: &Account) -> Result<Box<dyn Mailbox>, LoginError> {
        // Run by the user (ssh, tunnels), the user's own environment says where mail is, as it
        // does for mail(1) and mutt. Run as root, only the passwd entry counts.
        let from_env = |name: &str| {
            (!self.as_root)
                .then(|| std::env::var_os(name).map(PathBuf::from))
                .flatten()
        };
        let home = from_env("HOME").unwrap_or_else(|| account.home.clone());
        let mail_env = from_env("MAIL");
        let location = store::locate_inbox(&self.store, &account.name, &home, mail_env.as_deref());
        store::open_inbox(&self.store, &location, Access::Exclusive).map_err(|e| match e {
            StoreError::InUse(why) => LoginError::InUse(why),
            StoreError::Damaged(why) => LoginError::Permanent(format!("Can't open mailbox: {why}")),
            StoreError::Io(path, err) => {
                LoginError::Temporary(format!("Can't open mailbox {}: {err}", path.display()))
            }
        })
    }

    /// LOGIN-DELAY (RFC 2449): the time of the last login is the mtime of
    /// `~/.ipop3d-last-login`, touched at every successful login.
    fn check_login_delay(&self, account: &Account) -> Result<(), LoginError> {
        let Some(delay) = self.login_delay else {
            return Ok(());
        };
        let stamp = account.home.join(".ipop3d-last-login");
        let since_last = std::fs::metadata(&stamp)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok());
        if let Some(elapsed) = since_last {
            if elapsed < Duration::from_secs(delay) {
                return Err(LoginError::TooSoon(delay - elapsed.as_secs()));
            }
        }
        let file = std::fs::File::create(&stamp)
            .map_err(|e| LoginError::Temporary(format!("{}: {e}", stamp.display())))?;
        file.set_modified(SystemTime::now())
            .map_err(|e| LoginError::Temporary(format!("{}: {e}", stamp.display())))
    }
}
