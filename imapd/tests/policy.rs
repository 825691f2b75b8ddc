//! Site policy seen from the client: the login rules before authentication (LOGINDISABLED,
//! mechanisms, failures) and the POP3 session lock on INBOX.

mod common;

use common::{fixture, is_root, Server, TempDir};

#[test]
fn plaintext_is_refused_on_an_insecure_transport() {
    if !is_root() {
        eprintln!("skipped: the login path needs the server started as root");
        return;
    }
    let dir = TempDir::new("logindisabled");
    let mut s = Server::start_unchanged(dir.path(), &["--cram-file", "/nonexistent"]);
    let greeting = s.response();
    assert!(
        greeting.starts_with("* OK [CAPABILITY IMAP4REV1 ")
            && greeting.contains(" SASL-IR LOGINDISABLED] ")
            && !greeting.contains("AUTH="),
        "{greeting}"
    );
    assert_eq!(
        s.command("a1", "LOGIN someone secret"),
        ["a1 NO [PRIVACYREQUIRED] Plaintext authentication disallowed on non-secure connection\r\n"]
    );
    assert_eq!(
        s.command("a2", "AUTHENTICATE PLAIN"),
        ["a2 NO Unsupported authentication mechanism\r\n"]
    );
    assert_eq!(
        s.command("a3", "SELECT INBOX"),
        ["a3 BAD Command unrecognized/login please\r\n"]
    );
    assert_eq!(s.command("a4", "LOGOUT")[1], "a4 OK LOGOUT completed\r\n");
    assert_eq!(s.wait(), 0);
}

#[test]
fn failed_logins_are_answered_and_limited() {
    if !is_root() {
        eprintln!("skipped: the login path needs the server started as root");
        return;
    }
    let dir = TempDir::new("loginfail");
    let mut s = Server::start_unchanged(
        dir.path(),
        &[
            "--allow-plaintext",
            "--failure-delay",
            "0",
            "--cram-file",
            "/nonexistent",
        ],
    );
    let greeting = s.response();
    assert!(
        greeting.contains(" SASL-IR AUTH=PLAIN AUTH=LOGIN] "),
        "{greeting}"
    );
    // SASL-IR: "\0nosuchuser-x\0pw".
    assert_eq!(
        s.command("a1", "AUTHENTICATE PLAIN AG5vc3VjaHVzZXIteABwdw=="),
        ["a1 NO [AUTHENTICATIONFAILED] Authentication failed\r\n"]
    );
    s.send(b"a2 AUTHENTICATE LOGIN\r\n");
    assert_eq!(s.response(), "+ VXNlciBOYW1l\r\n");
    s.send(b"*\r\n");
    assert_eq!(s.response(), "a2 BAD Authentication cancelled\r\n");
    assert_eq!(
        s.command("a3", "LOGIN nosuchuser-x pw"),
        ["a3 NO [AUTHENTICATIONFAILED] Authentication failed\r\n"]
    );
    assert_eq!(
        s.command("a4", "LOGIN nosuchuser-x pw"),
        ["a4 NO [AUTHENTICATIONFAILED] Authentication failed\r\n"]
    );
    // The third failure closes the connection.
    assert_eq!(s.response(), "");
    s.wait();
}

#[test]
fn inbox_held_by_pop3_opens_read_only() {
    let dir = TempDir::new("pop3lock");
    let home = dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    let inbox = dir.path().join("inbox");
    std::fs::copy(fixture("inbox.mbox"), &inbox).unwrap();
    dir.hand_over();
    let lock = ::common::store::lock::SessionLock::try_acquire(&inbox).unwrap();
    let mut s = Server::start(&home, Some(&inbox), &[]);
    s.response();
    let got = s.command("a1", "SELECT INBOX");
    assert!(got[0].starts_with("* NO [INUSE] "), "{got:?}");
    assert_eq!(
        got.last().unwrap(),
        "a1 OK [READ-ONLY] SELECT completed\r\n"
    );
    assert_eq!(
        s.command("a2", "STORE 1 +FLAGS (\\Deleted)"),
        ["a2 NO [READ-ONLY] Mailbox is read-only\r\n"]
    );
    // EXAMINE is unaffected, and once POP3 is gone SELECT is read-write again.
    drop(lock);
    let got = s.command("a3", "SELECT INBOX");
    assert_eq!(
        got.last().unwrap(),
        "a3 OK [READ-WRITE] SELECT completed\r\n"
    );
    s.command("a4", "LOGOUT");
    assert_eq!(s.wait(), 0);
    let after = std::fs::read(&inbox).unwrap();
    assert!(after.starts_with(b"From alice@example.com"));
}

#[test]
fn login_timeout_ends_the_session() {
    if !is_root() {
        eprintln!("skipped: the login path needs the server started as root");
        return;
    }
    let dir = TempDir::new("logintimeout");
    let mut s = Server::start_unchanged(dir.path(), &["--login-timeout", "1"]);
    assert!(s.response().starts_with("* OK [CAPABILITY "));
    assert_eq!(s.response(), "* BYE Autologout; idle for too long\r\n");
    assert_eq!(s.response(), "");
    s.wait();
}
