//! SASL mechanism exchanges shared by POP3 AUTH (RFC 5034) and IMAP AUTHENTICATE (RFC 3501,
//! SASL-IR RFC 4959): PLAIN (RFC 4616), LOGIN, CRAM-MD5 (RFC 2195).
//!
//! Owns the mechanism state machines: decoding client responses, producing the raw challenges,
//! and validating what the client sent into [`Credentials`]. Never checks a password (see
//! [`crate::auth::Authenticator`]), never formats a protocol line (the caller sends
//! `"+ " + encode_challenge(..)`), never logs.
//!
//! Policy:
//! - PLAIN: an authorization identity different from the authentication identity is refused:
//!   we do not offer proxy authentication. An authzid equal to the authcid is accepted.
//! - LOGIN: the challenges are UW's `User Name` and `Password`. An initial response is taken as
//!   the user name.
//! - CRAM-MD5 is server-first: an initial response is refused.
//! - User names must be non-empty UTF-8 without NUL or other control characters; no decoded
//!   response may exceed [`MAX_RESPONSE`] bytes.

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use zeroize::Zeroizing;

/// Longest client response (base64 text, and so also decoded) we accept.
pub const MAX_RESPONSE: usize = 8192;

const ALREADY_FINISHED: SaslError = SaslError::Malformed("exchange already finished");

/// LOGIN's challenges, as UW-IMAP sends them.
const LOGIN_USER_PROMPT: &[u8] = b"User Name";
const LOGIN_PASSWORD_PROMPT: &[u8] = b"Password";

/// Standard alphabet; padding optional on input (some clients omit it), always written.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The mechanisms we implement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mechanism {
    Plain,
    Login,
    CramMd5,
}

impl Mechanism {
    /// The registered name, as advertised.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Login => "LOGIN",
            Mechanism::CramMd5 => "CRAM-MD5",
        }
    }
}

/// The mechanism called `name` (case-insensitive), if we implement it.
pub fn parse_mechanism(name: &str) -> Option<Mechanism> {
    [Mechanism::Plain, Mechanism::Login, Mechanism::CramMd5]
        .into_iter()
        .find(|m| m.name().eq_ignore_ascii_case(name))
}

/// What the client proved it knows, ready for the [`crate::auth::Authenticator`].
#[derive(Debug)]
pub enum Credentials {
    /// PLAIN or LOGIN. `authzid` is present only when the client sent one (equal to `user`).
    Password {
        authzid: Option<String>,
        user: String,
        password: Zeroizing<Vec<u8>>,
    },
    /// CRAM-MD5: check `digest_hex` against HMAC-MD5(secret, `challenge`).
    CramMd5 {
        user: String,
        challenge: Vec<u8>,
        digest_hex: String,
    },
}

/// Why an exchange ended without credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SaslError {
    /// The client sent `*`.
    Cancelled,
    /// A response was not valid base64.
    BadBase64,
    /// A response decoded but does not fit the mechanism (the text is for logs).
    Malformed(&'static str),
}

/// What the caller does next.
#[derive(Debug)]
pub enum Step {
    /// Send these raw bytes as a challenge (`"+ " + encode_challenge(bytes)`) and pass the
    /// client's answer line to [`Exchange::step`].
    Challenge(Vec<u8>),
    /// The exchange is complete; check these credentials.
    Done(Credentials),
    /// The exchange failed; the caller answers with its protocol's error.
    Failed(SaslError),
}

#[derive(Debug)]
enum State {
    PlainAwaitingResponse,
    LoginAwaitingUser,
    LoginAwaitingPassword { user: String },
    CramAwaitingResponse { challenge: Vec<u8> },
    Finished,
}

/// One SASL exchange in progress.
#[derive(Debug)]
pub struct Exchange {
    state: State,
}

impl Exchange {
    /// Begin `mechanism`. `initial_response` is the client's text after the mechanism name
    /// (still base64; `=` means an empty response), if it sent one. `challenge_host` names this
    /// server in the CRAM-MD5 challenge.
    pub fn start(
        mechanism: Mechanism,
        initial_response: Option<&[u8]>,
        challenge_host: &str,
    ) -> (Exchange, Step) {
        let mut exchange = Exchange {
            state: State::Finished,
        };
        let step = match (mechanism, initial_response) {
            (Mechanism::Plain, None) => {
                exchange.state = State::PlainAwaitingResponse;
                Step::Challenge(Vec::new())
            }
            (Mechanism::Plain, Some(ir)) => finish(decode_initial(ir).and_then(|r| plain(&r))),
            (Mechanism::Login, None) => {
                exchange.state = State::LoginAwaitingUser;
                Step::Challenge(LOGIN_USER_PROMPT.to_vec())
            }
            (Mechanism::Login, Some(ir)) => match decode_initial(ir).and_then(|r| user_name(&r)) {
                Ok(user) => {
                    exchange.state = State::LoginAwaitingPassword { user };
                    Step::Challenge(LOGIN_PASSWORD_PROMPT.to_vec())
                }
                Err(e) => Step::Failed(e),
            },
            (Mechanism::CramMd5, None) => {
                let challenge = new_cram_challenge(challenge_host);
                exchange.state = State::CramAwaitingResponse {
                    challenge: challenge.clone(),
                };
                Step::Challenge(challenge)
            }
            (Mechanism::CramMd5, Some(_)) => Step::Failed(SaslError::Malformed(
                "CRAM-MD5 does not take an initial response",
            )),
        };
        (exchange, step)
    }

    /// Feed the client's answer to the last challenge: the raw line (base64, or `*` to cancel;
    /// a trailing CRLF is ignored). After `Done` or `Failed`, every further step fails.
    pub fn step(&mut self, client_line: &[u8]) -> Step {
        let state = std::mem::replace(&mut self.state, State::Finished);
        if matches!(state, State::Finished) {
            return Step::Failed(ALREADY_FINISHED);
        }
        let response = match decode_line(client_line) {
            Ok(response) => response,
            Err(e) => return Step::Failed(e),
        };
        match state {
            State::PlainAwaitingResponse => finish(plain(&response)),
            State::LoginAwaitingUser => match user_name(&response) {
                Ok(user) => {
                    self.state = State::LoginAwaitingPassword { user };
                    Step::Challenge(LOGIN_PASSWORD_PROMPT.to_vec())
                }
                Err(e) => Step::Failed(e),
            },
            State::LoginAwaitingPassword { user } => finish(login_password(user, response)),
            State::CramAwaitingResponse { challenge } => finish(cram(challenge, &response)),
            State::Finished => Step::Failed(ALREADY_FINISHED),
        }
    }
}

fn finish(result: Result<Credentials, SaslError>) -> Step {
    match result {
        Ok(credentials) => Step::Done(credentials),
        Err(e) => Step::Failed(e),
    }
}

/// Base64 for a challenge line (empty for an empty challenge).
pub fn encode_challenge(bytes: &[u8]) -> String {
    BASE64.encode(bytes)
}

/// A fresh RFC 2195 challenge `<pid.time.random@host>`: unique per exchange, in msg-id form.
pub fn new_cram_challenge(host: &str) -> Vec<u8> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let host: String = host
        .chars()
        .filter(|c| c.is_ascii_graphic() && !matches!(c, '<' | '>' | '@'))
        .collect();
    let host = if host.is_empty() { "localhost" } else { &host };
    format!(
        "<{}.{}.{:016x}@{host}>",
        std::process::id(),
        now.as_secs(),
        random_u64(now.subsec_nanos())
    )
    .into_bytes()
}

/// 64 unpredictable bits from the kernel; if /dev/urandom is unavailable (a bare chroot) the
/// nanoseconds keep the challenge unique, which is all RFC 2195 requires.
fn random_u64(fallback: u32) -> u64 {
    use std::io::Read;
    let mut bytes = [0u8; 8];
    match std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)) {
        Ok(()) => u64::from_ne_bytes(bytes),
        Err(_) => u64::from(fallback),
    }
}

/// An initial response: `=` is an empty one.
fn decode_initial(text: &[u8]) -> Result<Zeroizing<Vec<u8>>, SaslError> {
    if text == b"=" {
        return Ok(Zeroizing::new(Vec::new()));
    }
    decode_line(text)
}

/// A continuation line: `*` cancels; otherwise base64 (an empty line is an empty response).
fn decode_line(line: &[u8]) -> Result<Zeroizing<Vec<u8>>, SaslError> {
    let line = trim(line);
    if line == b"*" {
        return Err(SaslError::Cancelled);
    }
    if line.len() > MAX_RESPONSE {
        return Err(SaslError::Malformed("response too long"));
    }
    let mut decoded = Zeroizing::new(Vec::with_capacity(line.len() / 4 * 3 + 3));
    BASE64
        .decode_vec(line, &mut decoded)
        .map_err(|_| SaslError::BadBase64)?;
    Ok(decoded)
}

fn trim(line: &[u8]) -> &[u8] {
    let is_space = |b: &u8| matches!(b, b' ' | b'\t' | b'\r' | b'\n');
    let start = line.iter().position(|b| !is_space(b)).unwrap_or(line.len());
    let end = line
        .iter()
        .rposition(|b| !is_space(b))
        .map_or(start, |i| i + 1);
    &line[start..end]
}

/// RFC 4616: `[authzid] NUL authcid NUL passwd`.
fn plain(response: &[u8]) -> Result<Credentials, SaslError> {
    let mut parts = response.split(|&b| b == 0);
    let (Some(authzid), Some(authcid), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::Malformed(
            "PLAIN response is not authzid NUL authcid NUL password",
        ));
    };
    let user = user_name(authcid)?;
    let authzid = if authzid.is_empty() {
        None
    } else if authzid == user.as_bytes() {
        Some(user.clone())
    } else {
        return Err(SaslError::Malformed(
            "authorization identity differs from authentication identity (proxy login unsupported)",
        ));
    };
    Ok(Credentials::Password {
        authzid,
        user,
        password: Zeroizing::new(password.to_vec()),
    })
}

fn login_password(user: String, password: Zeroizing<Vec<u8>>) -> Result<Credentials, SaslError> {
    if password.contains(&0) {
        return Err(SaslError::Malformed("NUL in password"));
    }
    Ok(Credentials::Password {
        authzid: None,
        user,
        password,
    })
}

/// RFC 2195: `user SP digest`, the digest 32 hex digits; the user is everything before the last
/// space (as UW parses it).
fn cram(challenge: Vec<u8>, response: &[u8]) -> Result<Credentials, SaslError> {
    let Some(space) = response.iter().rposition(|&b| b == b' ') else {
        return Err(SaslError::Malformed(
            "CRAM-MD5 response is not user SP digest",
        ));
    };
    let user = user_name(&response[..space])?;
    let digest = &response[space + 1..];
    if digest.len() != 32 || !digest.iter().all(u8::is_ascii_hexdigit) {
        return Err(SaslError::Malformed("CRAM-MD5 digest is not 32 hex digits"));
    }
    Ok(Credentials::CramMd5 {
        user,
        challenge,
        digest_hex: String::from_utf8_lossy(digest).into_owned(),
    })
}

/// A user name as clients may send it: non-empty UTF-8, no NUL or control characters.
fn user_name(bytes: &[u8]) -> Result<String, SaslError> {
    if bytes.is_empty() {
        return Err(SaslError::Malformed("empty user name"));
    }
    let name =
        std::str::from_utf8(bytes).map_err(|_| SaslError::Malformed("user name is not UTF-8"))?;
    if name.chars().any(char::is_control) {
        return Err(SaslError::Malformed("control character in user name"));
    }
    Ok(name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(bytes: &[u8]) -> Vec<u8> {
        encode_challenge(bytes).into_bytes()
    }

    fn expect_password(step: Step) -> (Option<String>, String, Vec<u8>) {
        match step {
            Step::Done(Credentials::Password {
                authzid,
                user,
                password,
            }) => (authzid, user, password.to_vec()),
            other => panic!("expected password credentials, got {other:?}"),
        }
    }

    fn expect_failure(step: Step) -> SaslError {
        match step {
            Step::Failed(e) => e,
            other => panic!("expected failure, got {other:?}"),
        }
    }

    fn expect_challenge(step: Step) -> Vec<u8> {
        match step {
            Step::Challenge(c) => c,
            other => panic!("expected challenge, got {other:?}"),
        }
    }

    #[test]
    fn mechanism_names_are_case_insensitive() {
        assert_eq!(parse_mechanism("plain"), Some(Mechanism::Plain));
        assert_eq!(parse_mechanism("LoGiN"), Some(Mechanism::Login));
        assert_eq!(parse_mechanism("cram-md5"), Some(Mechanism::CramMd5));
        assert_eq!(parse_mechanism("DIGEST-MD5"), None);
        assert_eq!(parse_mechanism(""), None);
    }

    #[test]
    fn plain_with_initial_response() {
        let ir = b64(b"\0alice\0s3cret");
        let (_, step) = Exchange::start(Mechanism::Plain, Some(&ir), "vm");
        let (authzid, user, password) = expect_password(step);
        assert_eq!((authzid, user.as_str()), (None, "alice"));
        assert_eq!(password, b"s3cret");
    }

    #[test]
    fn plain_after_empty_challenge_with_crlf_and_no_padding() {
        let (mut ex, step) = Exchange::start(Mechanism::Plain, None, "vm");
        assert_eq!(expect_challenge(step), b"");
        let mut line = b64(b"alice\0alice\0pw");
        while line.last() == Some(&b'=') {
            line.pop();
        }
        line.extend_from_slice(b"\r\n");
        let (authzid, user, password) = expect_password(ex.step(&line));
        assert_eq!(authzid.as_deref(), Some("alice"));
        assert_eq!(user, "alice");
        assert_eq!(password, b"pw");
        assert!(matches!(
            ex.step(&line),
            Step::Failed(SaslError::Malformed(_))
        ));
    }

    #[test]
    fn plain_refuses_proxy_authorization() {
        let ir = b64(b"root\0alice\0pw");
        let (_, step) = Exchange::start(Mechanism::Plain, Some(&ir), "vm");
        assert!(matches!(expect_failure(step), SaslError::Malformed(_)));
    }

    #[test]
    fn plain_refuses_wrong_field_count_and_bad_user_names() {
        for bad in [
            &b"alice\0pw"[..],
            b"\0alice\0pw\0extra",
            b"\0\0pw",
            b"\0al\xffice\0pw",
            b"\0ali\nce\0pw",
        ] {
            let (_, step) = Exchange::start(Mechanism::Plain, Some(&b64(bad)), "vm");
            assert!(
                matches!(expect_failure(step), SaslError::Malformed(_)),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn plain_empty_initial_response_is_malformed_not_a_challenge() {
        let (_, step) = Exchange::start(Mechanism::Plain, Some(b"="), "vm");
        assert!(matches!(expect_failure(step), SaslError::Malformed(_)));
    }

    #[test]
    fn login_uses_uw_prompts() {
        let (mut ex, step) = Exchange::start(Mechanism::Login, None, "vm");
        assert_eq!(expect_challenge(step), b"User Name");
        assert_eq!(expect_challenge(ex.step(&b64(b"bob"))), b"Password");
        let (authzid, user, password) = expect_password(ex.step(&b64(b"hunter2")));
        assert_eq!((authzid, user.as_str()), (None, "bob"));
        assert_eq!(password, b"hunter2");
    }

    #[test]
    fn login_initial_response_is_the_user_name() {
        let (mut ex, step) = Exchange::start(Mechanism::Login, Some(&b64(b"bob")), "vm");
        assert_eq!(expect_challenge(step), b"Password");
        let (_, user, password) = expect_password(ex.step(b""));
        assert_eq!(user, "bob");
        assert!(password.is_empty());
    }

    #[test]
    fn login_refuses_empty_user_and_nul() {
        let (_, step) = Exchange::start(Mechanism::Login, Some(b"="), "vm");
        assert!(matches!(expect_failure(step), SaslError::Malformed(_)));
        let (mut ex, _) = Exchange::start(Mechanism::Login, None, "vm");
        assert!(matches!(
            ex.step(&b64(b"b\0b")),
            Step::Failed(SaslError::Malformed(_))
        ));
        let (mut ex, _) = Exchange::start(Mechanism::Login, Some(&b64(b"bob")), "vm");
        assert!(matches!(
            ex.step(&b64(b"pw\0x")),
            Step::Failed(SaslError::Malformed(_))
        ));
    }

    #[test]
    fn cancel_and_bad_base64_end_every_mechanism() {
        for mech in [Mechanism::Plain, Mechanism::Login, Mechanism::CramMd5] {
            let (mut ex, _) = Exchange::start(mech, None, "vm");
            assert_eq!(expect_failure(ex.step(b"*\r\n")), SaslError::Cancelled);
            let (mut ex, _) = Exchange::start(mech, None, "vm");
            assert_eq!(
                expect_failure(ex.step(b"not base64!")),
                SaslError::BadBase64
            );
        }
        let (_, step) = Exchange::start(Mechanism::Plain, Some(b"@@@"), "vm");
        assert_eq!(expect_failure(step), SaslError::BadBase64);
        let (_, step) = Exchange::start(Mechanism::Login, Some(b"*"), "vm");
        assert_eq!(expect_failure(step), SaslError::Cancelled);
    }

    #[test]
    fn overlong_response_is_refused() {
        let (mut ex, _) = Exchange::start(Mechanism::Plain, None, "vm");
        let long = b64(&vec![b'a'; MAX_RESPONSE]);
        assert!(matches!(
            ex.step(&long),
            Step::Failed(SaslError::Malformed("response too long"))
        ));
    }

    #[test]
    fn cram_md5_reference_exchange() {
        let (mut ex, step) = Exchange::start(Mechanism::CramMd5, None, "vm");
        let challenge = expect_challenge(step);
        let line = b"dXd0ZXN0IGQwZGQyZjY1YzEwMWE5MTA2YWY1ZjQ1NTYwOTFiMmU2";
        match ex.step(line) {
            Step::Done(Credentials::CramMd5 {
                user,
                challenge: echoed,
                digest_hex,
            }) => {
                assert_eq!(user, "uwtest");
                assert_eq!(echoed, challenge);
                assert_eq!(digest_hex, "d0dd2f65c101a9106af5f4556091b2e6");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn cram_md5_refuses_initial_response_and_bad_digests() {
        let (_, step) = Exchange::start(Mechanism::CramMd5, Some(&b64(b"u 0")), "vm");
        assert!(matches!(expect_failure(step), SaslError::Malformed(_)));
        for bad in [
            &b"uwtest"[..],
            b"uwtest d0dd2f65",
            b" d0dd2f65c101a9106af5f4556091b2e6",
            b"uwtest g0dd2f65c101a9106af5f4556091b2e6",
        ] {
            let (mut ex, _) = Exchange::start(Mechanism::CramMd5, None, "vm");
            assert!(
                matches!(ex.step(&b64(bad)), Step::Failed(SaslError::Malformed(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn cram_challenges_are_unique_msg_ids() {
        let a = String::from_utf8(new_cram_challenge("vm")).unwrap();
        let b = String::from_utf8(new_cram_challenge("vm")).unwrap();
        assert_ne!(a, b);
        let prefix = format!("<{}.", std::process::id());
        assert!(a.starts_with(&prefix) && a.ends_with("@vm>"), "{a}");
        let odd = String::from_utf8(new_cram_challenge("a b>@c")).unwrap();
        assert!(odd.ends_with("@abc>"), "{odd}");
    }

    #[test]
    fn challenge_encoding_matches_uw_recording() {
        assert_eq!(
            encode_challenge(b"<12720.1795438318@vm>"),
            "PDEyNzIwLjE3OTU0MzgzMThAdm0+"
        );
        assert_eq!(encode_challenge(b""), "");
    }
}
