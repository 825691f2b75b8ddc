//! The greeting and the not-authenticated state: CAPABILITY, STARTTLS, LOGIN, AUTHENTICATE
//! (PLAIN, LOGIN, CRAM-MD5; RFC 4959 SASL-IR), and PREAUTH.
//!
//! Owns the capability list and the plaintext policy (as for POP3: plaintext passwords only over
//! TLS, from a loopback peer, or with --allow-plaintext; otherwise LOGINDISABLED). Logs logins
//! and failures as UW does. Never checks a password itself: that is the [`Backend`].

use super::{Backend, Credentials, LoginError, Reply, Session, Transport, MAX_LOGIN_FAILURES};
use crate::wire::reader::InputLine;
use base64::Engine;
use common::auth::sasl;
use common::log;
use std::io;

/// Extensions announced in every state (after IMAP4rev1), UW's order then ours.
const EXTENSIONS: &str = "I18NLEVEL=1 LITERAL+ IDLE UIDPLUS NAMESPACE CHILDREN BINARY UNSELECT \
     ESEARCH WITHIN SORT THREAD=REFERENCES THREAD=ORDEREDSUBJECT MULTIAPPEND ID ENABLE MOVE \
     SPECIAL-USE";

/// Longest SASL response line accepted.
const MAX_SASL_LINE: usize = 16 * 1024;

impl<T: Transport, B: Backend> Session<'_, T, B> {
    fn plaintext_allowed(&self) -> bool {
        self.policy.conn.allow_plaintext
            || self.client.is_tls()
            || self.policy.conn.peer_is_loopback
    }

    fn mechanisms(&self) -> Vec<&'static str> {
        let mut mechs = Vec::new();
        if self.plaintext_allowed() {
            mechs.extend(["PLAIN", "LOGIN"]);
        }
        if self.policy.conn.cram_available {
            mechs.push("CRAM-MD5");
        }
        mechs
    }

    /// The capability list for the current state.
    pub(super) fn capabilities(&self) -> String {
        let mut caps = format!("IMAP4REV1 {EXTENSIONS}");
        if self.store.is_some() {
            return caps;
        }
        caps.push_str(" SASL-IR");
        if self.policy.conn.tls_available && !self.client.is_tls() {
            caps.push_str(" STARTTLS");
        }
        if !self.plaintext_allowed() {
            caps.push_str(" LOGINDISABLED");
        }
        for mech in self.mechanisms() {
            caps.push_str(" AUTH=");
            caps.push_str(mech);
        }
        caps
    }

    /// `* OK [CAPABILITY ...]`, or `* PREAUTH` when the server runs as the user.
    pub(super) fn greet(&mut self) -> io::Result<()> {
        if let Some(user) = self.policy.conn.preauth_user.clone() {
            match self
                .backend
                .login(&Credentials::External { user: user.clone() })
            {
                Ok(logged_in) => {
                    self.start_user_session(logged_in);
                    log::info(&format!(
                        "Preauthenticated user={user} host={}",
                        self.policy.conn.peer
                    ));
                    let text = format!(
                        "PREAUTH [CAPABILITY {}] {} IMAP4rev1 imapd {} pre-authenticated user {user}",
                        self.capabilities(),
                        self.policy.conn.host,
                        self.policy.conn.version
                    );
                    return self.untagged(&text);
                }
                Err(LoginError::Refused(why) | LoginError::Unavailable(why)) => {
                    log::err(&format!("Cannot serve user {user}: {why}"));
                    return self.untagged(&format!("BYE Cannot open your mail store: {why}"));
                }
            }
        }
        let text = format!(
            "OK [CAPABILITY {}] {} IMAP4rev1 imapd {} ready",
            self.capabilities(),
            self.policy.conn.host,
            self.policy.conn.version
        );
        self.untagged(&text)
    }

    fn start_user_session(&mut self, logged_in: super::LoggedIn) {
        self.user = Some(logged_in.user);
        self.store = Some(logged_in.store);
        self.inbox_path = Some(logged_in.inbox_path);
    }

    pub(super) fn capability(&mut self) -> io::Result<Reply> {
        let caps = self.capabilities();
        self.untagged(&format!("CAPABILITY {caps}"))?;
        Ok(Reply::ok("CAPABILITY completed"))
    }

    pub(super) fn starttls(&mut self) -> io::Result<Reply> {
        if self.client.is_tls() {
            return Ok(Reply::bad("Already in TLS"));
        }
        if !self.policy.conn.tls_available {
            return Ok(Reply::no("STARTTLS not available: no certificate"));
        }
        if self.client.has_pending_input() {
            // Plaintext sent after STARTTLS would be taken as if it came over TLS.
            return Ok(Reply::bad("Pipelined data after STARTTLS").closing());
        }
        // The dispatcher sends the tagged OK in the clear, then starts the handshake.
        self.tls_pending = true;
        Ok(Reply::ok("Begin TLS negotiation now"))
    }

    pub(super) fn login_command(&mut self, user: Vec<u8>, password: Vec<u8>) -> io::Result<Reply> {
        let password = zeroize::Zeroizing::new(password);
        if !self.plaintext_allowed() {
            return Ok(Reply::no(
                "[PRIVACYREQUIRED] Plaintext authentication disallowed on non-secure connection",
            ));
        }
        if let Some(refusal) = self.too_many_failures() {
            return Ok(refusal);
        }
        let Ok(user) = String::from_utf8(user) else {
            return Ok(Reply::no("[AUTHENTICATIONFAILED] Invalid user name"));
        };
        let credentials = Credentials::Password {
            user,
            password: zeroize::Zeroizing::new(password.to_vec()),
        };
        self.log_in(credentials, "plain")
    }

    pub(super) fn authenticate(
        &mut self,
        mechanism: &str,
        initial: Option<Vec<u8>>,
    ) -> io::Result<Reply> {
        let mechanism = mechanism.to_ascii_uppercase();
        if !self.mechanisms().contains(&mechanism.as_str()) {
            return Ok(Reply::no("Unsupported authentication mechanism"));
        }
        let Some(mech) = sasl::parse_mechanism(&mechanism) else {
            return Ok(Reply::no("Unsupported authentication mechanism"));
        };
        if let Some(refusal) = self.too_many_failures() {
            return Ok(refusal);
        }
        // The parser decoded SASL-IR; the exchange wants it as sent (base64, `=` for empty).
        let initial = initial.map(|bytes| {
            if bytes.is_empty() {
                "=".to_string()
            } else {
                base64::engine::general_purpose::STANDARD.encode(&bytes)
            }
        });
        let (mut exchange, mut step) = sasl::Exchange::start(
            mech,
            initial.as_deref().map(str::as_bytes),
            &self.policy.conn.host,
        );
        loop {
            match step {
                sasl::Step::Done(creds) => {
                    return self.log_in(Credentials::from(creds), &mechanism)
                }
                sasl::Step::Failed(sasl::SaslError::Cancelled) => {
                    return Ok(Reply::bad("Authentication cancelled"))
                }
                sasl::Step::Failed(sasl::SaslError::BadBase64) => {
                    return Ok(Reply::bad("Invalid base64 data in authentication"))
                }
                sasl::Step::Failed(sasl::SaslError::Malformed(_)) => {
                    return Ok(Reply::no(
                        "[AUTHENTICATIONFAILED] Malformed authentication exchange",
                    ))
                }
                sasl::Step::Challenge(bytes) => {
                    write!(self.client, "+ {}\r\n", sasl::encode_challenge(&bytes))?;
                    self.client.flush()?;
                    match self
                        .client
                        .read_line(MAX_SASL_LINE, self.policy.conn.login_timeout)?
                    {
                        InputLine::Complete(line) => step = exchange.step(&line),
                        InputLine::TooLong => {
                            return Ok(Reply::bad("Authentication response too long"))
                        }
                        InputLine::Eof | InputLine::Timeout => {
                            return Err(io::Error::new(
                                io::ErrorKind::ConnectionReset,
                                "client left during AUTHENTICATE",
                            ))
                        }
                    }
                }
            }
        }
    }

    fn too_many_failures(&self) -> Option<Reply> {
        (self.failures >= MAX_LOGIN_FAILURES)
            .then(|| Reply::no("[AUTHENTICATIONFAILED] Too many login failures").closing())
    }

    /// Check credentials; on success the session enters the authenticated state.
    fn log_in(&mut self, credentials: Credentials, mech: &str) -> io::Result<Reply> {
        let user = credentials.user().to_string();
        match self.backend.login(&credentials) {
            Ok(logged_in) => {
                self.start_user_session(logged_in);
                log::info(&format!("Login user={user} host={}", self.policy.conn.peer));
                Ok(Reply::ok(format!(
                    "[CAPABILITY {}] User {user} authenticated",
                    self.capabilities()
                )))
            }
            Err(LoginError::Refused(why)) => {
                self.failures += 1;
                log::auth_notice(&format!(
                    "Login failed user={user} auth={user} host={} ({why}, mechanism {mech})",
                    self.policy.conn.peer
                ));
                std::thread::sleep(self.policy.conn.failure_delay);
                let reply = Reply::no("[AUTHENTICATIONFAILED] Authentication failed");
                Ok(if self.failures >= MAX_LOGIN_FAILURES {
                    reply.closing()
                } else {
                    reply
                })
            }
            Err(LoginError::Unavailable(why)) => {
                log::err(&format!(
                    "Login of user={user} host={} failed: {why}",
                    self.policy.conn.peer
                ));
                Ok(Reply::no(format!("[UNAVAILABLE] {why}")).closing())
            }
        }
    }
}
