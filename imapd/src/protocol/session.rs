//! The IMAP session state machine (RFC 3501 not-authenticated, authenticated, selected and
//! logout states) with the extensions `imapd` announces.
//!
//! Owns the conversation: which command is allowed in which state, what is answered, when
//! untagged updates (EXISTS, RECENT, EXPUNGE, FETCH FLAGS) are sent, what is logged. Never touches
//! files or privileges: logging in goes through [`Backend`], mailboxes through the
//! `common::store` traits ([`MailStore`], `Mailbox`), the client through [`Transport`].
//!
//! Command groups live in submodules: `auth` (CAPABILITY, LOGIN, AUTHENTICATE, STARTTLS),
//! `mailboxes` (CREATE ... APPEND, LIST, STATUS), `select` (the selected mailbox and its
//! sequence numbers, SELECT, CLOSE, EXPUNGE), `fetch`, `store`, `search` (SEARCH, SORT,
//! THREAD), `copy` (COPY, MOVE) and `idle`.
//!
//! Sequence numbers: the session keeps the client's view of the mailbox (UIDs in sequence order)
//! apart from the store's index. Changes found in the store are reported at the end of each
//! command; expunges are held back during FETCH, STORE, SEARCH, SORT, THREAD and COPY by sequence
//! number (RFC 3501 §7.4.1) and the vanished messages keep their numbers until then.
//!
//! POP3 interplay: while a POP3 session holds the INBOX session lock, SELECT of INBOX opens it
//! read-only and says so with `* NO [INUSE]`, so that the POP3 session's view is never changed
//! under it; EXAMINE and STATUS work as usual.

mod auth;
mod copy;
mod fetch;
mod format;
mod idle;
mod mailboxes;
mod search;
mod select;
mod store;

use crate::protocol::command::{parse_command, Command};
use crate::wire::parser::ParseLimits;
use crate::wire::reader::{CommandReader, Input, InputLine, Limits, ReadError, CONTINUATION};
use common::log;
pub use common::server::{ConnectionPolicy, Credentials};
use common::store::MailStore;
use select::Selected;
use std::cell::RefCell;
use std::io::{self, Write};
use std::path::PathBuf;
use std::time::Duration;

/// How long a client must be silent before deferred writes are made (see
/// [`Session::settle_when_quiet`]).
const QUIET: Duration = Duration::from_secs(1);

/// What the session needs from the client connection.
pub trait Transport: Write + Input {
    /// Bytes from the client already buffered (pipelining: hold back flushing while true).
    fn has_pending_input(&self) -> bool;
    /// Wait up to `timeout` for input; true when a read would not block.
    fn wait_readable(&mut self, timeout: Duration) -> io::Result<bool>;
    /// Switch to TLS now (after the tagged OK has been flushed).
    fn start_tls(&mut self) -> Result<(), String>;
    fn is_tls(&self) -> bool;
}

/// Why a login did not succeed.
#[derive(Debug)]
pub enum LoginError {
    /// Wrong credentials, unknown user, forbidden uid: the client may try again.
    Refused(String),
    /// The credentials were fine but the session cannot go on (privileges, system error).
    Unavailable(String),
}

/// A logged-in user: their mail store, and where their INBOX is (for the POP3 lock check).
pub struct LoggedIn {
    pub user: String,
    pub store: Box<dyn MailStore>,
    pub inbox_path: PathBuf,
}

/// Logs users in (authentication, privilege drop) and opens their mail store.
pub trait Backend {
    fn login(&mut self, credentials: &Credentials) -> Result<LoggedIn, LoginError>;
}

/// Site policy and facts about this connection, fixed at start.
pub struct Policy {
    /// The connection and the rules both servers share.
    pub conn: ConnectionPolicy,
    /// Show dot-files in LIST.
    pub show_hidden: bool,
    pub limits: Limits,
}

/// Login attempts allowed before the connection is closed.
const MAX_LOGIN_FAILURES: u32 = 3;

/// How a command ended: the tagged response, and whether the connection closes after it.
pub(crate) struct Reply {
    status: &'static str,
    text: String,
    close: bool,
}

impl Reply {
    pub(crate) fn ok(text: impl Into<String>) -> Reply {
        Reply {
            status: "OK",
            text: text.into(),
            close: false,
        }
    }
    pub(crate) fn no(text: impl Into<String>) -> Reply {
        Reply {
            status: "NO",
            text: text.into(),
            close: false,
        }
    }
    pub(crate) fn bad(text: impl Into<String>) -> Reply {
        Reply {
            status: "BAD",
            text: text.into(),
            close: false,
        }
    }
    /// End the connection without a tagged response (the session already sent `* BYE`).
    pub(crate) fn silent_close() -> Reply {
        Reply {
            status: "",
            text: String::new(),
            close: true,
        }
    }
    pub(crate) fn closing(mut self) -> Reply {
        self.close = true;
        self
    }
}

/// Which state a command needs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Needs {
    Any,
    NotAuthenticated,
    Authenticated,
    Selected,
}

fn state_needed(cmd: &Command) -> Needs {
    use Command::*;
    match cmd {
        Capability | Noop | Logout | Id(_) => Needs::Any,
        StartTls | Authenticate { .. } | Login { .. } => Needs::NotAuthenticated,
        Check
        | Close
        | Unselect
        | Expunge
        | UidExpunge(_)
        | Search { .. }
        | Fetch { .. }
        | Store { .. }
        | Copy { .. }
        | Move { .. }
        | Sort { .. }
        | Thread { .. } => Needs::Selected,
        _ => Needs::Authenticated,
    }
}

/// May untagged EXPUNGE responses be sent at the end of `cmd` (RFC 3501 §7.4.1)?
/// Commands that read message bytes from the selected mailbox.
fn reads_messages(cmd: &Command) -> bool {
    matches!(
        cmd,
        Command::Fetch { .. }
            | Command::Search { .. }
            | Command::Sort { .. }
            | Command::Thread { .. }
            | Command::Copy { .. }
            | Command::Move { .. }
    )
}

fn allows_expunge(cmd: &Command) -> bool {
    use Command::*;
    !matches!(
        cmd,
        Fetch { uid: false, .. }
            | Store { uid: false, .. }
            | Search { uid: false, .. }
            | Sort { uid: false, .. }
            | Thread { uid: false, .. }
            | Copy { uid: false, .. }
    )
}

/// What the main loop does after a command.
enum Next {
    Continue,
    Close,
}

pub struct Session<'a, T: Transport, B: Backend> {
    client: &'a mut T,
    backend: B,
    policy: Policy,
    reader: CommandReader,
    user: Option<String>,
    store: Option<Box<dyn MailStore>>,
    inbox_path: Option<PathBuf>,
    selected: Option<Selected>,
    failures: u32,
    /// STARTTLS was accepted: start the handshake once its tagged OK is out.
    tls_pending: bool,
}

impl<'a, T: Transport, B: Backend> Session<'a, T, B> {
    pub fn new(client: &'a mut T, backend: B, policy: Policy) -> Self {
        let reader = CommandReader::new(policy.limits.clone());
        Session {
            client,
            backend,
            policy,
            reader,
            user: None,
            store: None,
            inbox_path: None,
            selected: None,
            failures: 0,
            tls_pending: false,
        }
    }

    /// Serve the client until LOGOUT, disconnect or timeout. Returns the process exit status.
    pub fn run(mut self) -> i32 {
        let status = match self.serve() {
            Ok(()) => 0,
            Err(e) => {
                if e.kind() != io::ErrorKind::BrokenPipe
                    && e.kind() != io::ErrorKind::ConnectionReset
                {
                    log::info(&format!("I/O error: {e} {}", self.who()));
                }
                1
            }
        };
        self.leave_selected_at_exit();
        status
    }

    fn serve(&mut self) -> io::Result<()> {
        self.greet()?;
        self.client.flush()?;
        loop {
            self.settle_when_quiet()?;
            let timeout = if self.store.is_some() {
                self.policy.conn.idle_timeout
            } else {
                self.policy.conn.login_timeout
            };
            let next = match self.read_command(timeout) {
                Ok(raw) => match parse_command(raw, ParseLimits::default()) {
                    Ok(tagged) => self.execute(&tagged.tag, tagged.command)?,
                    Err(e) => {
                        self.client.write_all(&e.response_line())?;
                        Next::Continue
                    }
                },
                Err(ReadError::Eof) => {
                    log::info(&format!("Connection reset by peer {}", self.who()));
                    return Ok(());
                }
                Err(ReadError::Timeout) => return self.autologout(),
                Err(ReadError::Io(e)) => return Err(e),
                Err(e @ ReadError::Fatal { .. }) => {
                    if let Some(line) = e.response_line() {
                        self.client.write_all(&line)?;
                    }
                    return self.client.flush();
                }
                Err(e) => {
                    if let Some(line) = e.response_line() {
                        self.client.write_all(&line)?;
                    }
                    Next::Continue
                }
            };
            if let Next::Close = next {
                return self.client.flush();
            }
            if !self.client.has_pending_input() {
                self.client.flush()?;
            }
        }
    }

    /// When the store deferred writes (see [`Selected::settle`]) and the client sends nothing
    /// for [`QUIET`], make them now: other programs reading the mailbox see them within about
    /// a second of the client going quiet.
    fn settle_when_quiet(&mut self) -> io::Result<()> {
        let deferred = self.selected.as_ref().is_some_and(|sel| sel.settle_due());
        if deferred && !self.client.has_pending_input() && !self.client.wait_readable(QUIET)? {
            self.persist_selected();
        }
        Ok(())
    }

    fn autologout(&mut self) -> io::Result<()> {
        self.untagged("BYE Autologout; idle for too long")?;
        self.client.flush()?;
        log::info(&format!("Autologout {}", self.who()));
        Ok(())
    }

    /// Read one command, answering synchronizing literals with a continuation request.
    fn read_command(
        &mut self,
        timeout: Duration,
    ) -> Result<crate::wire::reader::RawCommand, ReadError> {
        let cell = RefCell::new(&mut *self.client);
        let mut input = SharedInput(&cell);
        let mut continuation = || {
            let mut client = cell.borrow_mut();
            client.write_all(CONTINUATION)?;
            client.flush()
        };
        self.reader
            .read_command(&mut input, timeout, &mut continuation)
    }

    fn execute(&mut self, tag: &str, cmd: Command) -> io::Result<Next> {
        let allow_expunge = allows_expunge(&cmd);
        let reply = match self.check_state(state_needed(&cmd)) {
            Some(refusal) => refusal,
            None => {
                if reads_messages(&cmd) {
                    self.catch_up();
                }
                self.run_command(tag, cmd)?
            }
        };
        if reply.status != "BAD" && !reply.close {
            self.sync_selected(allow_expunge)?;
        }
        if !reply.status.is_empty() {
            write!(self.client, "{tag} {} ", reply.status)?;
            self.client.write_all(one_line(&reply.text).as_bytes())?;
            self.client.write_all(b"\r\n")?;
        }
        if std::mem::take(&mut self.tls_pending) {
            self.client.flush()?;
            self.client.start_tls().map_err(|why| {
                log::info(&format!("STARTTLS failed: {why} {}", self.who()));
                io::Error::new(io::ErrorKind::ConnectionReset, why)
            })?;
        }
        Ok(if reply.close {
            Next::Close
        } else {
            Next::Continue
        })
    }

    fn check_state(&self, needs: Needs) -> Option<Reply> {
        let authenticated = self.store.is_some();
        match needs {
            Needs::Any => None,
            Needs::NotAuthenticated if authenticated => Some(Reply::bad("Already logged in")),
            Needs::NotAuthenticated => None,
            _ if !authenticated => Some(Reply::bad("Command unrecognized/login please")),
            Needs::Selected if self.selected.is_none() => {
                Some(Reply::bad("Command unrecognized: no mailbox selected"))
            }
            _ => None,
        }
    }

    fn run_command(&mut self, tag: &str, cmd: Command) -> io::Result<Reply> {
        use Command::*;
        match cmd {
            Capability => self.capability(),
            Noop => Ok(Reply::ok("NOOP completed")),
            Logout => self.logout(),
            Id(_) => self.id(),
            StartTls => self.starttls(),
            Login { user, password } => self.login_command(user, password),
            Authenticate { mechanism, initial } => self.authenticate(&mechanism, initial),
            Enable(_) => {
                self.untagged("ENABLED")?;
                Ok(Reply::ok("ENABLE completed"))
            }
            Namespace => {
                self.untagged("NAMESPACE ((\"\" \"/\")) NIL NIL")?;
                Ok(Reply::ok("NAMESPACE completed"))
            }
            Select { mailbox, .. } => self.select(&mailbox, false),
            Examine { mailbox, .. } => self.select(&mailbox, true),
            Create(name) => self.create(&name),
            Delete(name) => self.delete(&name),
            Rename { from, to } => self.rename(&from, &to),
            Subscribe(name) => self.subscribe(&name, true),
            Unsubscribe(name) => self.subscribe(&name, false),
            List(list) => self.list(&list),
            Lsub { reference, pattern } => self.lsub(&reference, pattern.as_deref()),
            Status { mailbox, items } => self.status(&mailbox, &items),
            Append { mailbox, messages } => self.append(&mailbox, &messages),
            Idle => self.idle(),
            Check => self.check(),
            Close => self.close(),
            Unselect => {
                self.leave_selected();
                Ok(Reply::ok("UNSELECT completed"))
            }
            Expunge => self.expunge(None),
            UidExpunge(set) => self.expunge(Some(&set)),
            Search {
                uid,
                charset,
                returns,
                key,
            } => self.search(tag, uid, charset.as_deref(), returns.as_deref(), &key),
            Fetch { uid, set, items } => self.fetch(uid, &set, &items),
            Store {
                uid,
                set,
                mode,
                silent,
                flags,
            } => self.store_flags(uid, &set, mode, silent, &flags),
            Copy { uid, set, mailbox } => self.copy(uid, &set, &mailbox, false),
            Move { uid, set, mailbox } => self.copy(uid, &set, &mailbox, true),
            Sort {
                uid,
                criteria,
                charset,
                key,
            } => self.sort(uid, &criteria, &charset, &key),
            Thread {
                uid,
                algorithm,
                charset,
                key,
            } => self.thread(uid, algorithm, &charset, &key),
        }
    }

    /// Bring the store's index up to date with other processes before a command reads
    /// message bytes, so reads start from where messages are now (an mbox another session
    /// rewrote has moved them). The client hears of the changes after the command, as always.
    fn catch_up(&mut self) {
        let who = self.who();
        if let Some(sel) = self.selected.as_mut() {
            sel.catch_up(&who);
        }
    }

    /// Report what changed in the selected mailbox since the client last heard.
    fn sync_selected(&mut self, allow_expunge: bool) -> io::Result<()> {
        let who = self.who();
        if let Some(sel) = self.selected.as_mut() {
            sel.refresh(&mut *self.client, allow_expunge, &who)?;
        }
        Ok(())
    }

    fn logout(&mut self) -> io::Result<Reply> {
        let bye = format!(
            "BYE {} IMAP4rev1 server terminating connection",
            self.policy.conn.host
        );
        self.untagged(&bye)?;
        self.persist_selected();
        if self.user.is_some() {
            log::info(&format!("Logout {}", self.who()));
        }
        Ok(Reply::ok("LOGOUT completed").closing())
    }

    fn id(&mut self) -> io::Result<Reply> {
        let text = format!(
            "ID (\"name\" \"imapd\" \"version\" \"{}\")",
            self.policy.conn.version
        );
        self.untagged(&text)?;
        Ok(Reply::ok("ID completed"))
    }

    /// Deselect, persisting flag changes (nothing is expunged).
    fn leave_selected(&mut self) {
        self.persist_selected();
        self.selected = None;
    }

    /// Persist the selected mailbox's flag changes, deferred ones included, keeping it
    /// selected.
    fn persist_selected(&mut self) {
        let who = self.who();
        if let Some(sel) = self.selected.as_mut() {
            if let Err(e) = sel.settle() {
                log::err(&format!(
                    "Error saving flags in {}: {e} {who}",
                    sel.mailbox.path().display(),
                ));
            }
        }
    }

    /// The end of the session: flag changes persisted, then the selected mailbox is left
    /// without freeing its index, which for 100,000 messages is 100,000 allocations given
    /// back one by one just before the process exits (about 5 ms the client would wait for
    /// its EOF). Safe because imapd never opens a mailbox exclusively, so nothing it holds
    /// needs undoing on disk: no session lock file, no dotlock between commands; descriptors
    /// and fcntl locks go with the process.
    fn leave_selected_at_exit(&mut self) {
        // After LOGOUT this was just done (or just failed, and is not tried again at once).
        if self
            .selected
            .as_ref()
            .is_some_and(|sel| sel.settle_pending())
        {
            self.persist_selected();
        }
        std::mem::forget(self.selected.take());
    }

    // ----- helpers ------------------------------------------------------------------------

    pub(crate) fn who(&self) -> String {
        format!(
            "user={} host={}",
            self.user.as_deref().unwrap_or("???"),
            self.policy.conn.peer
        )
    }

    pub(crate) fn untagged(&mut self, text: &str) -> io::Result<()> {
        self.client.write_all(b"* ")?;
        self.client.write_all(one_line(text).as_bytes())?;
        self.client.write_all(b"\r\n")
    }
}

/// Response text cannot carry a line break: it would forge another response.
fn one_line(text: &str) -> String {
    text.replace(['\r', '\n'], " ")
}

/// The client as the command reader's [`Input`], shared with the continuation callback (the two
/// are never used at the same time).
struct SharedInput<'r, 'c, T: Transport>(&'r RefCell<&'c mut T>);

impl<T: Transport> Input for SharedInput<'_, '_, T> {
    fn read_line(&mut self, max: usize, timeout: Duration) -> io::Result<InputLine> {
        self.0.borrow_mut().read_line(max, timeout)
    }
    fn read_exact_timeout(
        &mut self,
        n: usize,
        timeout: Duration,
        out: &mut Vec<u8>,
    ) -> io::Result<bool> {
        self.0.borrow_mut().read_exact_timeout(n, timeout, out)
    }
}
