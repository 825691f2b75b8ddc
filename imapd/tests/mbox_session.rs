//! FETCH sections, BINARY, (MULTI)APPEND and state rules against the mbox fixture, exact bytes.

mod common;

use common::{blank_validity, fixture, Server, TempDir};

fn session() -> (TempDir, Server) {
    let dir = TempDir::new("mbox");
    let home = dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    let inbox = dir.path().join("inbox");
    std::fs::copy(fixture("inbox.mbox"), &inbox).unwrap();
    dir.hand_over();
    let mut s = Server::start(&home, Some(&inbox), &[]);
    s.response();
    let got = s.command("a0", "SELECT INBOX");
    assert_eq!(
        got.last().unwrap(),
        "a0 OK [READ-WRITE] SELECT completed\r\n"
    );
    (dir, s)
}

fn joined(responses: Vec<String>) -> String {
    responses.iter().map(|r| blank_validity(r)).collect()
}

#[test]
fn sections_partials_and_binary() {
    let (_dir, mut s) = session();
    let got = joined(s.command(
        "a1",
        "FETCH 2 (BODY.PEEK[]<0.20> BODY.PEEK[1] BODY.PEEK[2.MIME] BINARY.PEEK[2] \
         BINARY.SIZE[2] BODY.PEEK[9])",
    ));
    let want = "* 2 FETCH (BODY[]<0> {20}\r\nReturn-Path: <bob@ex BODY[1] {16}\r\n\
        Body part one.\r\n BODY[2.MIME] {142}\r\n\
        Content-Type: application/octet-stream; name=\"a.bin\"\r\n\
        Content-Transfer-Encoding: base64\r\n\
        Content-Disposition: attachment; filename=\"a.bin\"\r\n\r\n \
        BINARY[2] ~{10}\r\n\0\x01\x02\x03\x04\x05\x06\x07\x08\x09 BINARY.SIZE[2] 10 BODY[9] \"\")\r\n\
        a1 OK FETCH completed\r\n";
    assert_eq!(got, want);
    // BODY[] past the end, and UID FETCH always carries UID.
    let got = joined(s.command("a2", "UID FETCH 3 (RFC822.SIZE BODY.PEEK[]<300.10>)"));
    assert_eq!(
        got,
        "* 3 FETCH (UID 3 RFC822.SIZE 258 BODY[]<300> \"\")\r\na2 OK FETCH completed\r\n"
    );
    // A non-peek fetch sets \Seen and says so.
    let got = joined(s.command("a3", "FETCH 3 (BODY[TEXT]<0.5>)"));
    assert_eq!(
        got,
        "* 3 FETCH (BODY[TEXT]<0> {5}\r\nFrom )\r\n* 3 FETCH (FLAGS (\\Seen))\r\n\
         a3 OK FETCH completed\r\n"
    );
}

#[test]
fn appends_are_checked_and_multiappend_is_one_group() {
    let (_dir, mut s) = session();
    s.send(b"a1 APPEND INBOX (\\Seen) ~{15+}\r\nSubject: \0\r\n\r\nx\r\n");
    let got = joined(s.until_tagged("a1"));
    assert_eq!(
        got,
        "* 4 EXISTS\r\n* 3 RECENT\r\na1 OK [APPENDUID V 4] APPEND completed\r\n"
    );
    s.send(b"a2 APPEND INBOX {9+}\r\nSubj: a\r\n {9+}\r\nSubj: b\r\n\r\n");
    let got = joined(s.until_tagged("a2"));
    assert_eq!(
        got,
        "* 6 EXISTS\r\n* 5 RECENT\r\na2 OK [APPENDUID V 5:6] APPEND completed\r\n"
    );
    s.send(b"a3 APPEND Nope {9+}\r\nSubj: a\r\n\r\n");
    assert_eq!(
        joined(s.until_tagged("a3")),
        "a3 NO [TRYCREATE] APPEND failed: no such destination mailbox\r\n"
    );
    s.send(b"a4 APPEND INBOX {9+}\r\nSubj:\0a\r\n\r\n");
    assert_eq!(
        joined(s.until_tagged("a4")),
        "a4 NO APPEND refused: message contains NUL octets (use a literal8, RFC 3516)\r\n"
    );
    let got = joined(s.command("a5", "FETCH 5:* (UID BODY[HEADER.FIELDS.NOT (Subj)])"));
    assert_eq!(
        got,
        "* 5 FETCH (UID 5 BODY[HEADER.FIELDS.NOT (Subj)] {2}\r\n\r\n)\r\n\
         * 5 FETCH (FLAGS (\\Recent \\Seen))\r\n\
         * 6 FETCH (UID 6 BODY[HEADER.FIELDS.NOT (Subj)] {2}\r\n\r\n)\r\n\
         * 6 FETCH (FLAGS (\\Recent \\Seen))\r\na5 OK FETCH completed\r\n"
    );
}

#[test]
fn state_and_flag_rules() {
    let (_dir, mut s) = session();
    assert_eq!(
        joined(s.command("a1", "STORE 1 FLAGS (\\Recent)")),
        "a1 BAD The \\Recent flag cannot be set\r\n"
    );
    assert_eq!(
        joined(s.command(
            "a2",
            "SEARCH 1:2 OR SEEN NOT ANSWERED SINCE 1-Jan-2024 LARGER 10 YOUNGER 999999999"
        )),
        "* SEARCH 1 2\r\na2 OK SEARCH completed\r\n"
    );
    assert_eq!(
        joined(s.command("a3", "ID NIL")),
        "* ID (\"name\" \"imapd\" \"version\" \"0.1.0\")\r\na3 OK ID completed\r\n"
    );
    assert_eq!(
        joined(s.command("a4", "UNSELECT")),
        "a4 OK UNSELECT completed\r\n"
    );
    assert_eq!(
        joined(s.command("a5", "EXPUNGE")),
        "a5 BAD Command unrecognized: no mailbox selected\r\n"
    );
    assert_eq!(
        joined(s.command("a6", "LOGIN x y")),
        "a6 BAD Already logged in\r\n"
    );
    assert_eq!(
        joined(s.command("a7", "CREATE INBOX")),
        "a7 NO [ALREADYEXISTS] Can't create INBOX\r\n"
    );
}
