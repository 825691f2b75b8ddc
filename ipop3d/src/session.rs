//! The POP3 session state machine (RFC 1939 AUTHORIZATION, TRANSACTION and UPDATE states, with
//! RFC 2449 CAPA and response codes, RFC 5034 AUTH and RFC 2595 STLS).
//!
//! Owns the conversation: which command is allowed when, what is answered, what is logged.
//! Never touches files or privileges: logging in and opening the maildrop go through
//! [`Backend`], message bytes come from the [`Mailbox`] trait, and the client through
//! [`Transport`].

use crate::maildrop::Maildrop;
use crate::wire::{self, Command, DotStuffer, MAX_LINE};
use common::auth::sasl;
use common::log;
use common::net::conn::Line;
pub use common::server::{ConnectionPolicy, Credentials};
use common::store::Mailbox;
use std::io::{self, Write};
use std::time::Duration;

/// What the session needs from the client connection.
pub trait Transport: Write {
    fn read_line(&mut self, max: usize, timeout: Duration) -> io::Result<Line>;
    /// Bytes from the client already buffered (pipelining: delay flushing while true).
    fn has_pending_input(&self) -> bool;
    /// Switch to TLS now (after the +OK has been flushed).
    fn start_tls(&mut self) -> Result<(), String>;
    fn is_tls(&self) -> bool;
}

/// Why a login did not produce an open maildrop.
#[derive(Debug)]
pub enum LoginError {
    /// Wrong credentials, unknown user, forbidden uid: the session may try again.
    Refused(String),
    /// Logged in, but another session holds the maildrop (`[IN-USE]`). Ends the session.
    InUse(String),
    /// Logged in too soon after the previous login (`[LOGIN-DELAY]`). Ends the session.
    TooSoon(u64),
    /// A transient failure (`[SYS/TEMP]`). Ends the session.
    Temporary(String),
    /// A permanent failure (`[SYS/PERM]`). Ends the session.
    Permanent(String),
}

/// Logs users in and opens their maildrop (authentication, privilege drop, store).
pub trait Backend {
    fn login(&mut self, credentials: &Credentials) -> Result<Box<dyn Mailbox>, LoginError>;
}

/// Site policy and facts about this connection, fixed at start.
pub struct Policy {
    /// The connection and the rules both servers share.
    pub conn: ConnectionPolicy,
    pub login_delay: Option<u64>,
    pub expire: String,
}

const MAX_LOGIN_FAILURES: u32 = 3;

/// How a command handler wants the session to continue.
enum Next {
    Continue,
    /// Close the connection now (after flushing).
    Close,
}

pub struct Session<'a, T: Transport, B: Backend> {
    client: &'a mut T,
    backend: B,
    policy: Policy,
    apop_timestamp: Option<String>,
    pending_user: Option<String>,
    failures: u32,
    user: Option<String>,
    maildrop: Option<Maildrop>,
}

impl<'a, T: Transport, B: Backend> Session<'a, T, B> {
    pub fn new(client: &'a mut T, backend: B, policy: Policy) -> Self {
        let apop_timestamp = policy.conn.cram_available.then(|| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            format!("<{:x}.{:x}@{}>", std::process::id(), now, policy.conn.host)
        });
        Session {
            client,
            backend,
            policy,
            apop_timestamp,
            pending_user: None,
            failures: 0,
            user: None,
            maildrop: None,
        }
    }

    /// Serve the client until QUIT, disconnect or timeout. Returns the process exit status.
    pub fn run(mut self) -> i32 {
        match self.serve() {
            Ok(()) => 0,
            Err(e) => {
                if e.kind() != io::ErrorKind::BrokenPipe
                    && e.kind() != io::ErrorKind::ConnectionReset
                {
                    log::info(&format!("I/O error: {e} {}", self.who()));
                }
                1
            }
        }
    }

    fn serve(&mut self) -> io::Result<()> {
        let mut greeting = format!(
            "POP3 {} ipop3d {} server ready",
            self.policy.conn.host, self.policy.conn.version
        );
        if let Some(ts) = &self.apop_timestamp {
            greeting.push(' ');
            greeting.push_str(ts);
        }
        self.ok(&greeting)?;
        self.client.flush()?;
        loop {
            let timeout = if self.maildrop.is_some() {
                self.policy.conn.idle_timeout
            } else {
                self.policy.conn.login_timeout
            };
            let next = match self.client.read_line(MAX_LINE, timeout)? {
                Line::Complete(line) => self.dispatch(&line)?,
                Line::TooLong => {
                    self.err("Command line too long")?;
                    Next::Continue
                }
                Line::Eof => {
                    log::info(&format!("Connection reset by peer {}", self.who()));
                    return Ok(());
                }
                Line::Timeout => {
                    self.err("Autologout; idle for too long")?;
                    self.client.flush()?;
                    log::info(&format!("Autologout {}", self.who()));
                    return Ok(());
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

    fn dispatch(&mut self, line: &[u8]) -> io::Result<Next> {
        let Some(cmd) = Command::parse(line) else {
            self.err("Null command")?;
            return Ok(Next::Continue);
        };
        match cmd.keyword.as_str() {
            "CAPA" => self.capa().map(|_| Next::Continue),
            "QUIT" => self.quit(),
            "NOOP" if self.maildrop.is_some() => {
                self.ok("No-op to you too!").map(|_| Next::Continue)
            }
            _ if self.maildrop.is_some() => self.transaction(&cmd).map(|_| Next::Continue),
            _ => self.authorization(&cmd),
        }
    }

    // ----- AUTHORIZATION state -------------------------------------------------------------

    fn plaintext_allowed(&self) -> bool {
        self.policy.conn.allow_plaintext
            || self.client.is_tls()
            || self.policy.conn.peer_is_loopback
    }

    fn authorization(&mut self, cmd: &Command) -> io::Result<Next> {
        let is_login_attempt = matches!(cmd.keyword.as_str(), "USER" | "PASS" | "APOP" | "AUTH");
        if is_login_attempt && self.failures >= MAX_LOGIN_FAILURES {
            self.err("[AUTH] Too many login failures")?;
            return Ok(Next::Close);
        }
        match cmd.keyword.as_str() {
            "USER" => self.user_command(cmd).map(|_| Next::Continue),
            "PASS" => self.pass_command(cmd),
            "APOP" => self.apop_command(cmd),
            "AUTH" => self.auth_command(cmd),
            "STLS" => self.stls().map(|_| Next::Continue),
            _ => self
                .err("Unknown AUTHORIZATION state command")
                .map(|_| Next::Continue),
        }
    }

    fn user_command(&mut self, cmd: &Command) -> io::Result<()> {
        self.pending_user = None;
        if !self.plaintext_allowed() {
            return self.err("[AUTH] Plaintext authentication disallowed on non-secure connection");
        }
        match cmd.rest_str().map(str::trim) {
            Some(name) if valid_user_name(name) => {
                self.pending_user = Some(name.to_string());
                self.ok("User name accepted, password please")
            }
            Some("") => self.err("Missing username argument"),
            _ => self.err("[AUTH] Invalid user name"),
        }
    }

    fn pass_command(&mut self, cmd: &Command) -> io::Result<Next> {
        let Some(user) = self.pending_user.take() else {
            return self.err("No USER command").map(|_| Next::Continue);
        };
        if cmd.rest.is_empty() {
            return self
                .err("Missing password argument")
                .map(|_| Next::Continue);
        }
        let password = zeroize::Zeroizing::new(cmd.rest.clone());
        self.login(Credentials::Password { user, password }, "plain")
    }

    fn apop_command(&mut self, cmd: &Command) -> io::Result<Next> {
        let Some(timestamp) = self.apop_timestamp.clone() else {
            return self.err("Not supported").map(|_| Next::Continue);
        };
        let args = cmd.args();
        let (Some(user), Some(digest), 2) = (args.first(), args.get(1), args.len()) else {
            return self.err("Missing APOP argument").map(|_| Next::Continue);
        };
        let user = String::from_utf8_lossy(user).into_owned();
        let digest_hex = String::from_utf8_lossy(digest).into_owned();
        if !valid_user_name(&user) {
            return self.err("[AUTH] Bad login").map(|_| Next::Continue);
        }
        self.login(
            Credentials::Apop {
                user,
                timestamp,
                digest_hex,
            },
            "APOP",
        )
    }

    fn sasl_mechanisms(&self) -> Vec<&'static str> {
        let mut mechs = Vec::new();
        if self.plaintext_allowed() {
            mechs.extend(["PLAIN", "LOGIN"]);
        }
        if self.policy.conn.cram_available {
            mechs.push("CRAM-MD5");
        }
        if self.policy.conn.preauth_user.is_some() {
            mechs.push("EXTERNAL");
        }
        mechs
    }

    fn auth_command(&mut self, cmd: &Command) -> io::Result<Next> {
        let args = cmd.args();
        let Some(mech_name) = args
            .first()
            .map(|m| String::from_utf8_lossy(m).to_ascii_uppercase())
        else {
            self.ok("Supported authentication mechanisms:")?;
            for mech in self.sasl_mechanisms() {
                self.client.write_all(mech.as_bytes())?;
                self.client.write_all(b"\r\n")?;
            }
            self.client.write_all(b".\r\n")?;
            return Ok(Next::Continue);
        };
        if args.len() > 2 {
            return self.err("Syntax error in AUTH").map(|_| Next::Continue);
        }
        if !self.sasl_mechanisms().contains(&mech_name.as_str()) {
            return self
                .err("[AUTH] Unsupported authentication mechanism")
                .map(|_| Next::Continue);
        }
        let initial = args.get(1).copied();
        let credentials = if mech_name == "EXTERNAL" {
            self.sasl_external(initial)?
        } else {
            self.sasl_exchange(&mech_name, initial)?
        };
        match credentials {
            Ok(credentials) => self.login(credentials, &mech_name),
            Err(text) => self.err(text).map(|_| Next::Continue),
        }
    }

    /// Run a PLAIN, LOGIN or CRAM-MD5 exchange to its end.
    fn sasl_exchange(
        &mut self,
        mech_name: &str,
        initial: Option<&[u8]>,
    ) -> io::Result<Result<Credentials, &'static str>> {
        let Some(mech) = sasl::parse_mechanism(mech_name) else {
            return Ok(Err("[AUTH] Unsupported authentication mechanism"));
        };
        let (mut exchange, mut step) = sasl::Exchange::start(mech, initial, &self.policy.conn.host);
        loop {
            match step {
                sasl::Step::Done(creds) => return Ok(Ok(creds.into())),
                sasl::Step::Failed(e) => return Ok(Err(sasl_error_text(&e))),
                sasl::Step::Challenge(bytes) => {
                    self.client.write_all(b"+ ")?;
                    self.client
                        .write_all(sasl::encode_challenge(&bytes).as_bytes())?;
                    self.client.write_all(b"\r\n")?;
                    self.client.flush()?;
                    match self
                        .client
                        .read_line(MAX_LINE, self.policy.conn.login_timeout)?
                    {
                        Line::Complete(line) => step = exchange.step(&line),
                        Line::TooLong => return Ok(Err("Command line too long")),
                        Line::Eof | Line::Timeout => {
                            return Err(io::Error::new(
                                io::ErrorKind::ConnectionReset,
                                "client left during AUTH",
                            ))
                        }
                    }
                }
            }
        }
    }

    /// SASL EXTERNAL: the server already runs as the user; the authorization identity, if any,
    /// must be that user.
    fn sasl_external(
        &mut self,
        initial: Option<&[u8]>,
    ) -> io::Result<Result<Credentials, &'static str>> {
        let Some(user) = self.policy.conn.preauth_user.clone() else {
            return Ok(Err("[AUTH] Unsupported authentication mechanism"));
        };
        let response = match initial {
            Some(r) => r.to_vec(),
            None => {
                self.client.write_all(b"+ \r\n")?;
                self.client.flush()?;
                match self
                    .client
                    .read_line(MAX_LINE, self.policy.conn.login_timeout)?
                {
                    Line::Complete(line) => line,
                    _ => return Ok(Err("Authentication cancelled")),
                }
            }
        };
        if response == b"*" {
            return Ok(Err("Authentication cancelled"));
        }
        let authzid = if response.is_empty() || response == b"=" {
            Vec::new()
        } else {
            use base64::Engine;
            match base64::engine::general_purpose::STANDARD.decode(&response) {
                Ok(bytes) => bytes,
                Err(_) => return Ok(Err("Invalid base64 data")),
            }
        };
        if !authzid.is_empty() && authzid != user.as_bytes() {
            return Ok(Err("[AUTH] Bad authentication"));
        }
        Ok(Ok(Credentials::External { user }))
    }

    fn stls(&mut self) -> io::Result<()> {
        if self.client.is_tls() {
            return self.err("Already in TLS");
        }
        if !self.policy.conn.tls_available {
            return self.err("STLS not available");
        }
        self.ok("Begin TLS negotiation")?;
        self.client.flush()?;
        self.client.start_tls().map_err(|why| {
            log::info(&format!("STLS failed: {why} {}", self.who()));
            io::Error::new(io::ErrorKind::ConnectionReset, why)
        })?;
        self.pending_user = None;
        Ok(())
    }

    /// Check credentials and open the maildrop; answers the client either way.
    fn login(&mut self, credentials: Credentials, mech: &str) -> io::Result<Next> {
        let user = credentials.user().to_string();
        match self.backend.login(&credentials) {
            Ok(mailbox) => {
                let drop = Maildrop::new(mailbox);
                log::info(&format!(
                    "Login user={user} host={} nmsgs={}/{}",
                    self.policy.conn.peer,
                    drop.visible_count(),
                    drop.total_count()
                ));
                self.ok(&format!("Mailbox open, {} messages", drop.visible_count()))?;
                self.user = Some(user);
                self.maildrop = Some(drop);
                Ok(Next::Continue)
            }
            Err(LoginError::Refused(why)) => {
                self.failures += 1;
                log::auth_notice(&format!(
                    "Login failed user={user} auth={user} host={} ({why}, mechanism {mech})",
                    self.policy.conn.peer
                ));
                std::thread::sleep(self.policy.conn.failure_delay);
                let text = if mech == "plain" || mech == "APOP" {
                    "[AUTH] Bad login"
                } else {
                    "[AUTH] Authentication failed"
                };
                self.err(text).map(|_| Next::Continue)
            }
            Err(e) => {
                self.user = Some(user);
                let text = match &e {
                    LoginError::InUse(why) => format!("[IN-USE] Mailbox in use: {why}"),
                    LoginError::TooSoon(secs) => {
                        format!("[LOGIN-DELAY] Please wait {secs} seconds between logins")
                    }
                    LoginError::Temporary(why) => format!("[SYS/TEMP] {why}"),
                    LoginError::Permanent(why) | LoginError::Refused(why) => {
                        format!("[SYS/PERM] {why}")
                    }
                };
                log::info(&format!(
                    "Error opening or locking INBOX {}: {text}",
                    self.who()
                ));
                self.err(&text).map(|_| Next::Close)
            }
        }
    }

    // ----- TRANSACTION state ---------------------------------------------------------------

    fn transaction(&mut self, cmd: &Command) -> io::Result<()> {
        let Some(drop) = self.maildrop.as_mut() else {
            return Ok(());
        };
        let args = cmd.args();
        let out: &mut dyn Write = &mut *self.client;
        match (cmd.keyword.as_str(), args.len()) {
            ("STAT", 0) => {
                let (count, octets) = drop.stat();
                status(out, true, &format!("{count} {octets}"))
            }
            ("LIST", 0) => {
                status(out, true, "Mailbox scan listing follows")?;
                for (n, size) in drop.listing() {
                    write!(out, "{n} {size}\r\n")?;
                }
                out.write_all(b".\r\n")
            }
            ("UIDL", 0) => {
                status(out, true, "Unique-ID listing follows")?;
                for (n, uid) in drop.uid_listing() {
                    write!(out, "{n} {uid}\r\n")?;
                }
                out.write_all(b".\r\n")
            }
            ("LIST" | "UIDL" | "RETR" | "DELE", 1) => {
                let Some(n) = wire::parse_number(args[0]).filter(|&n| drop.is_live(n)) else {
                    return status(out, false, "No such message");
                };
                match cmd.keyword.as_str() {
                    "LIST" => status(out, true, &format!("{n} {}", drop.size(n))),
                    "UIDL" => status(out, true, &format!("{n} {}", drop.unique_id(n))),
                    "DELE" => {
                        drop.delete(n);
                        status(out, true, "Message deleted")
                    }
                    _ => {
                        status(out, true, &format!("{} octets", drop.size(n)))?;
                        send_message(out, drop, n, None)
                    }
                }
            }
            ("TOP", 2) => {
                let Some(n) = wire::parse_number(args[0]).filter(|&n| drop.is_live(n)) else {
                    return status(out, false, "No such message");
                };
                let Some(lines) = parse_line_count(args[1]) else {
                    return status(out, false, "Bad line count argument");
                };
                status(out, true, "Top of message follows")?;
                send_message(out, drop, n, Some(lines))
            }
            ("RETR" | "DELE", 0) | ("TOP", 0 | 1) => {
                status(out, false, "Missing message number argument")
            }
            ("RSET", 0) => {
                drop.reset();
                status(out, true, "Reset state")
            }
            ("LAST", 0) => status(out, true, &drop.last().to_string()),
            ("STAT" | "LIST" | "UIDL" | "RETR" | "DELE" | "TOP" | "RSET" | "LAST", _) => {
                status(out, false, "Too many arguments")
            }
            ("XTND", _) => status(out, false, "Sorry I can't do that"),
            _ => status(out, false, "Unknown TRANSACTION state command"),
        }
    }

    // ----- QUIT and the UPDATE state -------------------------------------------------------

    fn quit(&mut self) -> io::Result<Next> {
        let Some(mut drop) = self.maildrop.take() else {
            self.ok("Sayonara")?;
            return Ok(Next::Close);
        };
        match drop.commit() {
            Ok(update) => {
                log::info(&format!(
                    "Update {} nmsgs={} ndele={} nseen={}",
                    self.who(),
                    update.remaining,
                    update.deleted,
                    update.seen
                ));
                self.ok("Sayonara")?;
            }
            Err(e) => {
                log::err(&format!("Update failed {}: {e}", self.who()));
                self.err(&format!(
                    "[SYS/TEMP] Mailbox not updated, nothing deleted: {e}"
                ))?;
            }
        }
        log::info(&format!("Logout {}", self.who()));
        Ok(Next::Close)
    }

    fn capa(&mut self) -> io::Result<()> {
        let authorized = self.maildrop.is_some();
        let mut lines: Vec<String> = vec!["TOP".into(), "UIDL".into()];
        lines.extend(["RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"].map(String::from));
        lines.push(format!("EXPIRE {}", self.policy.expire));
        if let Some(delay) = self.policy.login_delay {
            lines.push(format!("LOGIN-DELAY {delay}"));
        }
        if !authorized {
            if self.plaintext_allowed() {
                lines.push("USER".into());
            }
            let mechs = self.sasl_mechanisms();
            if !mechs.is_empty() {
                lines.push(format!("SASL {}", mechs.join(" ")));
            }
            if self.policy.conn.tls_available && !self.client.is_tls() {
                lines.push("STLS".into());
            }
        }
        lines.push(format!(
            "IMPLEMENTATION ipop3d-{}",
            self.policy.conn.version
        ));
        self.ok("Capability list follows")?;
        for line in lines {
            self.client.write_all(line.as_bytes())?;
            self.client.write_all(b"\r\n")?;
        }
        self.client.write_all(b".\r\n")
    }

    // ----- helpers ------------------------------------------------------------------------

    fn who(&self) -> String {
        format!(
            "user={} host={}",
            self.user.as_deref().unwrap_or("???"),
            self.policy.conn.peer
        )
    }

    fn ok(&mut self, text: &str) -> io::Result<()> {
        wire::status_line(&mut *self.client, true, text)
    }

    fn err(&mut self, text: &str) -> io::Result<()> {
        wire::status_line(&mut *self.client, false, text)
    }
}

fn status(out: &mut dyn Write, ok: bool, text: &str) -> io::Result<()> {
    wire::status_line(out, ok, text)
}

/// Stream message `n` (dot-stuffed, terminated), marking it seen and accessed.
fn send_message(
    out: &mut dyn Write,
    drop: &mut Maildrop,
    n: u32,
    body_lines: Option<u64>,
) -> io::Result<()> {
    drop.note_access(n);
    let mut reader = drop.open(n)?;
    DotStuffer::new(out, body_lines).copy_from(&mut reader)
}

/// TOP's line count: a non-negative decimal number (values past u64 saturate).
fn parse_line_count(arg: &[u8]) -> Option<u64> {
    if arg.is_empty() || !arg.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        std::str::from_utf8(arg)
            .ok()?
            .parse::<u64>()
            .unwrap_or(u64::MAX),
    )
}

/// User names we pass on to PAM and NSS: printable, no spaces, bounded.
fn valid_user_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 256
        && name.bytes().all(|b| b.is_ascii_graphic() || b >= 0x80)
        && !name.starts_with('-')
}

fn sasl_error_text(e: &sasl::SaslError) -> &'static str {
    match e {
        sasl::SaslError::Cancelled => "Authentication cancelled",
        sasl::SaslError::BadBase64 => "Invalid base64 data",
        sasl::SaslError::Malformed(_) => "[AUTH] Malformed authentication exchange",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_counts() {
        assert_eq!(parse_line_count(b"0"), Some(0));
        assert_eq!(parse_line_count(b"99999999999999999999999"), Some(u64::MAX));
        assert_eq!(parse_line_count(b"-5"), None);
        assert_eq!(parse_line_count(b""), None);
    }

    #[test]
    fn user_names() {
        assert!(valid_user_name("alice"));
        assert!(valid_user_name("a.b@example.com"));
        assert!(!valid_user_name(""));
        assert!(!valid_user_name("-rf"));
        assert!(!valid_user_name("a\u{0}b"));
        assert!(!valid_user_name(&"x".repeat(300)));
    }
}
