//! The real [`Backend`]: the shared login sequence of `common::server` (credentials, account,
//! privilege drop, mail location), then LOGIN-DELAY and the user's INBOX opened exclusively.
//!
//! Never speaks POP3; never opens mail before `Logins::login` has dropped privileges.

use crate::session::{Backend, Credentials, LoginError};
use common::server::{LoginFailure, Logins};
use common::store::{self, Access, Mailbox, StoreError};
use std::path::Path;
use std::time::{Duration, SystemTime};

pub struct SystemBackend {
    pub logins: Logins,
    pub login_delay: Option<u64>,
}

impl Backend for SystemBackend {
    fn login(&mut self, credentials: &Credentials) -> Result<Box<dyn Mailbox>, LoginError> {
        let mail = self.logins.login(credentials).map_err(|e| match e {
            LoginFailure::Refused(why) => LoginError::Refused(why),
            LoginFailure::Broken(why) => LoginError::Permanent(why),
        })?;
        self.check_login_delay(&mail.home)?;
        store::open_inbox(self.logins.store_config(), &mail.inbox, Access::Exclusive).map_err(|e| {
            match e {
                StoreError::InUse(why) => LoginError::InUse(why),
                StoreError::Io(path, err) => {
                    LoginError::Temporary(format!("Can't open mailbox {}: {err}", path.display()))
                }
                other => LoginError::Permanent(format!("Can't open mailbox: {other}")),
            }
        })
    }
}

impl SystemBackend {
    /// LOGIN-DELAY (RFC 2449): the time of the last login is the mtime of
    /// `~/.ipop3d-last-login`, touched at every successful login.
    fn check_login_delay(&self, home: &Path) -> Result<(), LoginError> {
        let Some(delay) = self.login_delay else {
            return Ok(());
        };
        let stamp = home.join(".ipop3d-last-login");
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
