//! The real [`Backend`]: credentials checked by `common::auth`, the process dropped to the user
//! by `common::privs`, then the user's mail store located by `common::store`.
//!
//! Owns the order of those steps (privileges are dropped BEFORE any mail file is opened).
//! Never speaks IMAP.

use common::auth::{Authenticator, Login};
use common::privs::{self, Account};
use common::store::{self, InboxLocation, StoreConfig};
use imapd::protocol::session::{Backend, Credentials, LoggedIn, LoginError};
use std::path::PathBuf;

pub struct SystemBackend {
    pub authenticator: Authenticator,
    pub store: StoreConfig,
    pub min_uid: u32,
    pub rhost: Option<String>,
    /// Started as root: authenticate, then become the user. Otherwise serve only ourselves.
    pub as_root: bool,
    /// The successful login, kept alive (it holds the PAM session) until the process exits.
    pub login: Option<Login>,
}

impl Backend for SystemBackend {
    fn login(&mut self, credentials: &Credentials) -> Result<LoggedIn, LoginError> {
        if self.login.is_some() {
            return Err(LoginError::Unavailable("already logged in".into()));
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
            privs::become_user(&account, self.min_uid).map_err(LoginError::Unavailable)?;
            // The store keeps its crash journal in $HOME when the spool directory is not
            // writable; after the drop, HOME must be the user's, not root's.
            std::env::set_var("HOME", &account.home);
        } else if privs::current().map(|me| me.uid) != Some(account.uid) {
            return Err(LoginError::Refused(
                "not running as root: cannot serve other users".into(),
            ));
        }
        self.login = Some(login);
        Ok(self.open_store(&account))
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
            Credentials::Cram {
                user,
                challenge,
                digest_hex,
            } => self
                .authenticator
                .check_cram(user, challenge, digest_hex)
                .map_err(refused),
            Credentials::Preauth { user } if !self.as_root => {
                Login::external(user).map_err(refused)
            }
            Credentials::Preauth { .. } => {
                Err(LoginError::Refused("PREAUTH only when not root".into()))
            }
        }
    }

    fn open_store(&self, account: &Account) -> LoggedIn {
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
        let inbox_path = match &location {
            InboxLocation::Mbox(p) | InboxLocation::Maildir(p) => p.clone(),
        };
        LoggedIn {
            user: account.name.clone(),
            store: store::open_store(&self.store, &location, &home),
            inbox_path,
        }
    }
}
