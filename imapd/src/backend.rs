//! The real [`Backend`]: the shared login sequence of `common::server` (credentials, account,
//! privilege drop, mail location), then the user's mail store.
//!
//! Never speaks IMAP; never opens mail before `Logins::login` has dropped privileges.

use common::server::{LoginFailure, Logins};
use common::store::{self, InboxLocation};
use imapd::protocol::session::{Backend, Credentials, LoggedIn, LoginError};

pub struct SystemBackend {
    pub logins: Logins,
}

impl Backend for SystemBackend {
    fn login(&mut self, credentials: &Credentials) -> Result<LoggedIn, LoginError> {
        let mail = self.logins.login(credentials).map_err(|e| match e {
            LoginFailure::Refused(why) => LoginError::Refused(why),
            LoginFailure::Broken(why) => LoginError::Unavailable(why),
        })?;
        let inbox_path = match &mail.inbox {
            InboxLocation::Mbox(p) | InboxLocation::Maildir(p) => p.clone(),
        };
        Ok(LoggedIn {
            user: mail.account.name.clone(),
            store: store::open_store(self.logins.store_config(), &mail.inbox, &mail.home),
            inbox_path,
        })
    }
}
