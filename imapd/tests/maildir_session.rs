//! Every command against a Maildir store, with exact responses (UIDVALIDITY blanked).

mod common;

use common::{blank_validity, deliver, maildir_home, Server, TempDir};

/// Run `command` and check every response line exactly.
fn expect(server: &mut Server, tag: &str, command: &str, want: &[&str]) {
    let got: Vec<String> = server
        .command(tag, command)
        .iter()
        .map(|r| blank_validity(r))
        .collect();
    let want: Vec<String> = want.iter().map(|l| format!("{l}\r\n")).collect();
    assert_eq!(got, want, "{tag} {command}");
}

#[test]
fn every_command_on_maildir() {
    let dir = TempDir::new("maildir");
    let home = maildir_home(&dir, 3);
    let mut s = Server::start(&home, None, &[]);
    assert!(s.response().starts_with("* PREAUTH [CAPABILITY IMAP4REV1 "));
    let unseen = format!(
        "* OK [UNSEEN 1] first unseen message in {}",
        home.join("Maildir").display()
    );
    expect(
        &mut s,
        "a1",
        "SELECT INBOX",
        &[
            "* 3 EXISTS",
            "* 3 RECENT",
            "* OK [UIDVALIDITY V] UID validity status",
            "* OK [UIDNEXT 4] Predicted next UID",
            "* FLAGS (\\Answered \\Flagged \\Deleted \\Draft \\Seen)",
            "* OK [PERMANENTFLAGS (\\* \\Answered \\Flagged \\Deleted \\Draft \\Seen)] Permanent flags",
            &unseen,
            "a1 OK [READ-WRITE] SELECT completed",
        ],
    );
    expect(
        &mut s,
        "a2",
        "FETCH 1 (FLAGS UID RFC822.SIZE INTERNALDATE ENVELOPE)",
        &[
            &format!(
                "* 1 FETCH (FLAGS (\\Recent) UID 1 RFC822.SIZE 130 INTERNALDATE {} ENVELOPE \
                 (\"Mon, 1 Jan 2024 10:00:00 +0000\" \"msg 1\" ((NIL NIL \"a1\" \"example.com\")) \
                 ((NIL NIL \"a1\" \"example.com\")) ((NIL NIL \"a1\" \"example.com\")) \
                 ((NIL NIL \"b\" \"example.com\")) NIL NIL NIL \"<m1@x>\"))",
                internal_date_of(&home, "1001.M1P1.host")
            ),
            "a2 OK FETCH completed",
        ],
    );
    expect(
        &mut s,
        "a3",
        "STORE 1 +FLAGS (\\Seen $Label1)",
        &[
            "* FLAGS ($Label1 \\Answered \\Flagged \\Deleted \\Draft \\Seen)",
            "* OK [PERMANENTFLAGS ($Label1 \\* \\Answered \\Flagged \\Deleted \\Draft \\Seen)] Permanent flags",
            "* 1 FETCH (FLAGS (\\Recent \\Seen $Label1))",
            "a3 OK STORE completed",
        ],
    );
    expect(&mut s, "a4", "CREATE Sent", &["a4 OK CREATE completed"]);
    expect(
        &mut s,
        "a5",
        "LIST (SPECIAL-USE) \"\" \"*\"",
        &[
            "* LIST (\\HasNoChildren \\UnMarked \\Sent) \"/\" Sent",
            "a5 OK LIST completed",
        ],
    );
    expect(
        &mut s,
        "a6",
        "LIST \"\" \"*\" RETURN (SPECIAL-USE STATUS (MESSAGES))",
        &[
            "* LIST (\\NoInferiors \\UnMarked) \"/\" INBOX",
            "* STATUS INBOX (MESSAGES 3)",
            "* LIST (\\HasNoChildren \\UnMarked \\Sent) \"/\" Sent",
            "* STATUS Sent (MESSAGES 0)",
            "a6 OK LIST completed",
        ],
    );
    expect(
        &mut s,
        "a7",
        "UID COPY 1:2 Sent",
        &["a7 OK [COPYUID V 1:2 1:2] UID COPY completed"],
    );
    expect(
        &mut s,
        "a8",
        "MOVE 3 Sent",
        &[
            "* OK [COPYUID V 3 3] Moved",
            "* 3 EXPUNGE",
            "* 2 EXISTS",
            "* 2 RECENT",
            "a8 OK MOVE completed",
        ],
    );
    expect(
        &mut s,
        "a9",
        "STATUS Sent (UIDNEXT MESSAGES)",
        &[
            "* STATUS Sent (MESSAGES 3 UIDNEXT 4)",
            "a9 OK STATUS completed",
        ],
    );
    expect(
        &mut s,
        "a10",
        "COPY 1 Nowhere",
        &["a10 NO [TRYCREATE] COPY failed: no such destination mailbox"],
    );
    s.send(b"a11 APPEND INBOX (\\Seen) {5+}\r\nhello\r\n");
    let got: Vec<String> = s
        .until_tagged("a11")
        .iter()
        .map(|r| blank_validity(r))
        .collect();
    assert_eq!(
        got.last().unwrap(),
        "a11 OK [APPENDUID V 4] APPEND completed\r\n"
    );
    assert!(got.contains(&"* 3 EXISTS\r\n".to_string()), "{got:?}");
    s.send(b"a12 APPEND INBOX {3+}\r\na\0b\r\n");
    let got = s.until_tagged("a12");
    assert!(got[0].starts_with("a12 NO "), "{got:?}");
    s.send(b"a13 APPEND INBOX {0+}\r\n\r\n");
    let got = s.until_tagged("a13");
    assert!(got[0].starts_with("a13 NO "), "{got:?}");
    expect(
        &mut s,
        "a14",
        "SEARCH RETURN (COUNT MIN) UNDELETED",
        &[
            "* ESEARCH (TAG \"a14\") MIN 1 COUNT 3",
            "a14 OK SEARCH completed",
        ],
    );
    expect(
        &mut s,
        "a15",
        "UID SEARCH SUBJECT \"msg\" NOT KEYWORD $Label1",
        &["* SEARCH 2", "a15 OK UID SEARCH completed"],
    );
    expect(
        &mut s,
        "a16",
        "SORT (REVERSE SUBJECT) UTF-8 ALL",
        &["* SORT 2 1 3", "a16 OK SORT completed"],
    );
    expect(
        &mut s,
        "a17",
        "THREAD ORDEREDSUBJECT UTF-8 ALL",
        &["* THREAD (1)(2)(3)", "a17 OK THREAD completed"],
    );
    expect(
        &mut s,
        "a18",
        "SEARCH CHARSET KOI8-R ALL",
        &["a18 NO [BADCHARSET (US-ASCII UTF-8)] Charset not supported"],
    );
    expect(
        &mut s,
        "a19",
        "UID STORE 1 +FLAGS.SILENT (\\Deleted)",
        &["a19 OK STORE completed"],
    );
    expect(
        &mut s,
        "a20",
        "UID EXPUNGE 1",
        &[
            "* 1 EXPUNGE",
            "* 2 EXISTS",
            // The message appended (\Seen) by a11 is recent here too: it came through new/.
            "* 2 RECENT",
            "a20 OK Expunged 1 messages",
        ],
    );
    expect(
        &mut s,
        "a21",
        "FETCH 1 (BODY[TEXT] BINARY.SIZE[1] BODY.PEEK[HEADER.FIELDS (Subject)]<0.9>)",
        &[
            "* 1 FETCH (BODY[TEXT] {13}\r\nbody 2 text\r\n BINARY.SIZE[1] 13 \
             BODY[HEADER.FIELDS (Subject)]<0> {9}\r\nSubject: )",
            "* 1 FETCH (FLAGS (\\Recent \\Seen))",
            "a21 OK FETCH completed",
        ],
    );
    expect(
        &mut s,
        "a22",
        "FETCH 9 FLAGS",
        &["a22 BAD Invalid message sequence number"],
    );
    expect(
        &mut s,
        "a23",
        "RENAME Sent Archive",
        &["a23 OK RENAME completed"],
    );
    expect(
        &mut s,
        "a24",
        "SUBSCRIBE Archive",
        &["a24 OK SUBSCRIBE completed"],
    );
    expect(
        &mut s,
        "a25",
        "LSUB \"\" \"*\"",
        &["* LSUB () \"/\" Archive", "a25 OK LSUB completed"],
    );
    expect(
        &mut s,
        "a26",
        "CREATE ../escape",
        &["a26 NO [CANNOT] Invalid mailbox name \"../escape\": empty, . or .. component"],
    );
    expect(
        &mut s,
        "a27",
        "DELETE Archive",
        &["a27 OK DELETE completed"],
    );
    expect(
        &mut s,
        "a28",
        "SELECT Archive",
        &["a28 NO [NONEXISTENT] No such mailbox: Archive"],
    );
    expect(
        &mut s,
        "a29",
        "FETCH 1 FLAGS",
        &["a29 BAD Command unrecognized: no mailbox selected"],
    );
    expect(
        &mut s,
        "a30",
        "EXAMINE INBOX",
        &[
            "* 2 EXISTS",
            "* 0 RECENT",
            "* OK [UIDVALIDITY V] UID validity status",
            "* OK [UIDNEXT 5] Predicted next UID",
            "* FLAGS ($Label1 \\Answered \\Flagged \\Deleted \\Draft \\Seen)",
            "* OK [PERMANENTFLAGS ()] No permanent flags permitted",
            "a30 OK [READ-ONLY] EXAMINE completed",
        ],
    );
    expect(
        &mut s,
        "a31",
        "STORE 1 +FLAGS (\\Flagged)",
        &["a31 NO [READ-ONLY] Mailbox is read-only"],
    );
    expect(&mut s, "a32", "CLOSE", &["a32 OK CLOSE completed"]);
    expect(
        &mut s,
        "a33",
        "NAMESPACE",
        &[
            "* NAMESPACE ((\"\" \"/\")) NIL NIL",
            "a33 OK NAMESPACE completed",
        ],
    );
    expect(
        &mut s,
        "a34",
        "LOGOUT",
        &[
            &format!("* BYE {} IMAP4rev1 server terminating connection", host()),
            "a34 OK LOGOUT completed",
        ],
    );
    assert_eq!(s.wait(), 0);
}

fn host() -> String {
    nix::unistd::gethostname().unwrap().into_string().unwrap()
}

/// INTERNALDATE of a delivered file: its mtime, in UTC.
fn internal_date_of(home: &std::path::Path, name: &str) -> String {
    let path = home.join("Maildir/new").join(name);
    let path = if path.exists() {
        path
    } else {
        home.join("Maildir/cur").join(format!("{name}:2,"))
    };
    let mtime = std::fs::metadata(path)
        .unwrap()
        .modified()
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let days = mtime.div_euclid(86_400);
    let secs = mtime.rem_euclid(86_400);
    // Civil from days (Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "\"{day:2}-{}-{year} {:02}:{:02}:{:02} +0000\"",
        months[(month - 1) as usize],
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[test]
fn idle_reports_deliveries_and_autologout() {
    let dir = TempDir::new("idle");
    let home = maildir_home(&dir, 1);
    let mut s = Server::start(&home, None, &["--idle-timeout", "4"]);
    s.response();
    let got = s.command("a1", "SELECT INBOX");
    assert_eq!(got[0], "* 1 EXISTS\r\n");
    s.send(b"a2 IDLE\r\n");
    assert_eq!(s.response(), "+ idling\r\n");
    let start = std::time::Instant::now();
    deliver(&home.join("Maildir"), 2);
    assert_eq!(s.response(), "* 2 EXISTS\r\n");
    assert_eq!(s.response(), "* 2 RECENT\r\n");
    assert!(start.elapsed() < std::time::Duration::from_secs(3));
    s.send(b"DONE\r\n");
    assert_eq!(s.response(), "a2 OK IDLE terminated\r\n");
    // Nothing more from the client: the idle timeout ends the session.
    assert_eq!(s.response(), "* BYE Autologout; idle for too long\r\n");
    assert_eq!(s.response(), "");
    s.wait();
}

#[test]
fn expunges_by_others_wait_for_a_command_that_allows_them() {
    let dir = TempDir::new("deferred");
    let home = maildir_home(&dir, 3);
    let mut a = Server::start(&home, None, &[]);
    let mut b = Server::start(&home, None, &[]);
    a.response();
    b.response();
    a.command("a1", "SELECT INBOX");
    b.command("b1", "SELECT INBOX");
    b.command("b2", "STORE 2 +FLAGS.SILENT (\\Deleted)");
    b.command("b3", "EXPUNGE");
    // FETCH must not send EXPUNGE: message 3 keeps its number.
    let got = a.command("a2", "FETCH 3 (UID)");
    assert_eq!(got, ["* 3 FETCH (UID 3)\r\n", "a2 OK FETCH completed\r\n"]);
    let got = a.command("a3", "FETCH 2 (UID)");
    assert_eq!(
        got,
        ["a3 NO Some of the requested messages no longer exist\r\n"]
    );
    let got = a.command("a4", "NOOP");
    assert_eq!(
        got,
        [
            "* 2 EXPUNGE\r\n",
            "* 2 EXISTS\r\n",
            "* 2 RECENT\r\n",
            "a4 OK NOOP completed\r\n"
        ]
    );
    // Flag changes by the other session are reported too.
    b.command("b4", "STORE 1 +FLAGS.SILENT (\\Flagged)");
    let got = a.command("a5", "NOOP");
    assert_eq!(
        got,
        [
            "* 1 FETCH (FLAGS (\\Recent \\Flagged))\r\n",
            "a5 OK NOOP completed\r\n"
        ]
    );
    a.command("a6", "LOGOUT");
    b.command("b5", "LOGOUT");
    assert_eq!(a.wait(), 0);
    assert_eq!(b.wait(), 0);
}

#[test]
fn large_messages_copy_through_a_spool_and_stream_back() {
    let dir = TempDir::new("large");
    let home = maildir_home(&dir, 0);
    let mut s = Server::start(&home, None, &[]);
    s.response();
    let line = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789\r\n";
    let mut message = b"Subject: big\r\n\r\n".to_vec();
    while message.len() < 5 * 1024 * 1024 {
        message.extend_from_slice(line.as_bytes());
    }
    let mut append = format!("a1 APPEND INBOX {{{}+}}\r\n", message.len()).into_bytes();
    append.extend_from_slice(&message);
    append.extend_from_slice(b"\r\n");
    s.send(&append);
    let got = s.until_tagged("a1");
    assert!(
        got.last().unwrap().starts_with("a1 OK [APPENDUID "),
        "{got:?}"
    );
    s.command("a2", "CREATE Big");
    s.command("a3", "SELECT INBOX");
    let got = s.command("a4", "COPY 1 Big");
    assert!(
        got.last().unwrap().starts_with("a4 OK [COPYUID "),
        "{got:?}"
    );
    s.command("a5", "SELECT Big");
    let got = s.command("a6", "FETCH 1 (RFC822.SIZE BODY.PEEK[])");
    let want = format!(
        "* 1 FETCH (RFC822.SIZE {} BODY[] {{{}}}\r\n",
        message.len(),
        message.len()
    );
    assert!(got[0].starts_with(&want), "{}", &got[0][..80]);
    assert!(got[0].as_bytes()[want.len()..].starts_with(&message));
    assert_eq!(got[0].len(), want.len() + message.len() + 3);
    s.command("a7", "LOGOUT");
    assert_eq!(s.wait(), 0);
}
