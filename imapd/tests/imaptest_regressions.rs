//! Regressions found by Dovecot's imaptest (scripted tests and stress mode), replayed against
//! the real binary on a Maildir or an mbox store.

mod common;

use common::{maildir_home, Server, TempDir};

fn start(dir: &TempDir) -> Server {
    let home = maildir_home(dir, 1);
    let mut s = Server::start(&home, None, &[]);
    assert!(s.response().starts_with("* PREAUTH "));
    s
}

#[test]
fn names_that_are_not_modified_utf7_are_refused_not_syntax_errors() {
    let dir = TempDir::new("imaptest-atoms");
    let mut s = start(&dir);
    let got = s.command("a1", "SELECT !#$&'+,-.0123456789:;<=>?@^_`|[}");
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].starts_with("a1 NO [CANNOT] Invalid mailbox name"),
        "{got:?}"
    );
    let got = s.command("a2", "CREATE &Jjo");
    assert!(got[0].starts_with("a2 NO "), "{got:?}");
    // A pattern that is not modified UTF-7 matches nothing; the session goes on.
    assert_eq!(
        s.command("a3", "LIST \"\" !#$&'+,-.0123456789:;<=>?@^_`|[}%*"),
        ["a3 OK LIST completed\r\n"]
    );
    assert_eq!(
        s.command("a4", "LSUB \"\" &Jjo*"),
        ["a4 OK LSUB completed\r\n"]
    );
    let got = s.command("a5", "LIST \"\" ()");
    assert!(got[0].starts_with("a5 BAD "), "{got:?}");
    assert_eq!(s.command("a6", "NOOP"), ["a6 OK NOOP completed\r\n"]);
}

#[test]
fn lsub_percent_lists_unsubscribed_parents_as_noselect() {
    let dir = TempDir::new("imaptest-lsub");
    let mut s = start(&dir);
    for (tag, cmd) in [
        ("c1", "CREATE box/test"),
        ("c2", "CREATE box/test2/test"),
        ("c3", "SUBSCRIBE box/test"),
        ("c4", "SUBSCRIBE box/test2/test"),
    ] {
        let got = s.command(tag, cmd);
        assert!(got[0].starts_with(&format!("{tag} OK")), "{got:?}");
    }
    assert_eq!(
        s.command("l1", "LSUB \"\" box/%"),
        [
            "* LSUB () \"/\" box/test\r\n",
            "* LSUB (\\Noselect) \"/\" box/test2\r\n",
            "l1 OK LSUB completed\r\n",
        ]
    );
    // With `*` the subscribed names match themselves: no made-up parents.
    assert_eq!(
        s.command("l2", "LSUB \"\" box/*"),
        [
            "* LSUB () \"/\" box/test\r\n",
            "* LSUB () \"/\" box/test2/test\r\n",
            "l2 OK LSUB completed\r\n",
        ]
    );
}

#[test]
fn store_on_a_message_expunged_by_another_session_is_ok_with_expungeissued() {
    // imaptest stress: "DELETE failed: NO Some of the requested messages no longer exist".
    let dir = TempDir::new("imaptest-store-expunged");
    let home = maildir_home(&dir, 3);
    let mut a = Server::start(&home, None, &[]);
    let mut b = Server::start(&home, None, &[]);
    a.response();
    b.response();
    a.command("a1", "SELECT INBOX");
    b.command("b1", "SELECT INBOX");
    b.command("b2", "STORE 2 +FLAGS.SILENT (\\Deleted)");
    b.command("b3", "EXPUNGE");
    // A FETCH notices the expunge but may not report it: message 2 keeps its number.
    a.command("a2", "FETCH 3 (UID)");
    let got = a.command("a3", "STORE 1:2 +FLAGS (\\Seen)");
    assert_eq!(
        got,
        [
            "* 1 FETCH (FLAGS (\\Recent \\Seen))\r\n",
            "a3 OK [EXPUNGEISSUED] Some of the requested messages no longer exist\r\n"
        ]
    );
    // The surviving message's flag reached the disk: the other session sees it.
    let got = b.command("b4", "NOOP");
    assert_eq!(
        got,
        ["* 1 FETCH (FLAGS (\\Seen))\r\n", "b4 OK NOOP completed\r\n"]
    );
}

/// Two sessions with the UW reference inbox (an mbox) selected, tagged `a1` and `b1`.
fn two_sessions_on_one_mbox(dir: &TempDir) -> (Server, Server) {
    let home = dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    let inbox = dir.path().join("inbox");
    std::fs::copy(common::fixture("inbox.mbox"), &inbox).unwrap();
    dir.hand_over();
    let mut one = Server::start(&home, Some(&inbox), &[]);
    let mut two = Server::start(&home, Some(&inbox), &[]);
    one.response();
    two.response();
    one.command("a1", "SELECT INBOX");
    two.command("b1", "SELECT INBOX");
    (one, two)
}

#[test]
fn two_mbox_sessions_storing_flags_keep_each_others_changes() {
    // imaptest store: session 1 adds \Answered, session 2 removes \Seen, both CHECK.
    let dir = TempDir::new("imaptest-mbox-store");
    let (mut one, mut two) = two_sessions_on_one_mbox(&dir);
    one.command("a2", "STORE 1 FLAGS (\\Seen)");
    two.command("b2", "CHECK");
    one.command("a3", "STORE 1 +FLAGS.SILENT (\\Answered)");
    two.command("b3", "STORE 1 -FLAGS.SILENT (\\Seen)");
    one.command("a4", "CHECK");
    two.command("b4", "CHECK");
    for (server, tag) in [(&mut one, "a5"), (&mut two, "b5")] {
        let got = server.command(tag, "FETCH 1 (FLAGS)");
        let flags = got
            .iter()
            .find(|l| l.starts_with("* 1 FETCH"))
            .map(|l| l.replace("\\Recent ", "").replace(" \\Recent", ""));
        assert_eq!(
            flags.as_deref(),
            Some("* 1 FETCH (FLAGS (\\Answered))\r\n"),
            "{tag}: {got:?}"
        );
    }
}

#[test]
fn binary_append_is_stored_base64_so_body_never_carries_nul() {
    // imaptest append-binary: BODY[1] must not send NUL; BINARY[1] gives the octets back.
    let dir = TempDir::new("imaptest-append-binary");
    let mut s = start(&dir);
    let msg: &[u8] = b"From: a@b\r\nMime-Version: 1.0\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary\r\n\r\n\x00-\xe4\r\n\r\n";
    let mut command = format!("a1 APPEND INBOX ~{{{}+}}\r\n", msg.len()).into_bytes();
    command.extend_from_slice(msg);
    command.extend_from_slice(b"\r\n");
    s.send(&command);
    let got = s.until_tagged("a1");
    assert!(got[0].starts_with("a1 OK [APPENDUID "), "{got:?}");
    let uid = got[0].split(' ').nth(4).unwrap().trim_end_matches(']');
    s.command("a2", "SELECT INBOX");
    let got = s.command(
        "a3",
        &format!("UID FETCH {uid} (BODY.PEEK[1] BINARY.SIZE[1])"),
    );
    assert_eq!(
        got,
        [
            format!("* 1 FETCH (UID {uid} BODY[1] {{12}}\r\nAC3kDQoNCg== BINARY.SIZE[1] 7)\r\n")
                .as_str(),
            "a3 OK FETCH completed\r\n"
        ]
    );
}

/// CREATE, APPEND, STATUS, DELETE three times at once: every UIDVALIDITY differs.
fn uidvalidity_of_recreated_folders(s: &mut Server) {
    let mut validities = Vec::new();
    for round in 0..3 {
        let tag = |n: u32| format!("r{round}{n}");
        s.command(&tag(1), "CREATE box");
        s.send(format!("{} APPEND box {{3+}}\r\nx\r\n\r\n", tag(2)).as_bytes());
        s.until_tagged(&tag(2));
        let got = s.command(&tag(3), "STATUS box (UIDVALIDITY)");
        assert!(got[0].starts_with("* STATUS box (UIDVALIDITY "), "{got:?}");
        validities.push(got[0].clone());
        s.command(&tag(4), "DELETE box");
    }
    assert_ne!(validities[0], validities[1]);
    assert_ne!(validities[1], validities[2]);
}

#[test]
fn a_maildir_folder_created_again_at_once_gets_a_new_uidvalidity() {
    // imaptest uidvalidity: DELETE and CREATE within one second.
    let dir = TempDir::new("imaptest-uidvalidity");
    let mut s = start(&dir);
    uidvalidity_of_recreated_folders(&mut s);
}

#[test]
fn an_mbox_folder_created_again_at_once_gets_a_new_uidvalidity() {
    let dir = TempDir::new("imaptest-uidvalidity-mbox");
    let home = dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    let inbox = dir.path().join("inbox");
    std::fs::copy(common::fixture("inbox.mbox"), &inbox).unwrap();
    dir.hand_over();
    let mut s = Server::start(&home, Some(&inbox), &[]);
    s.response();
    uidvalidity_of_recreated_folders(&mut s);
    // No state is kept beside the folders.
    let got = s.command("l1", "LIST \"\" *");
    assert!(!got.iter().any(|l| l.contains("uidvalidity")), "{got:?}");
}

#[test]
fn messages_copied_with_flags_are_recent_in_the_session_that_has_the_target_selected() {
    // imaptest copy: COPY keeps \Seen, and the target's session still sees \Recent.
    let dir = TempDir::new("imaptest-copy-recent");
    let home = maildir_home(&dir, 2);
    let mut one = Server::start(&home, None, &[]);
    let mut two = Server::start(&home, None, &[]);
    one.response();
    two.response();
    one.command("a1", "CREATE box");
    two.command("b1", "SELECT box");
    one.command("a2", "SELECT INBOX");
    one.command("a3", "STORE 1 FLAGS.SILENT (\\Seen)");
    one.command("a4", "COPY 1:2 box");
    assert_eq!(
        two.command("b2", "NOOP"),
        [
            "* 2 EXISTS\r\n",
            "* 2 RECENT\r\n",
            "b2 OK NOOP completed\r\n"
        ]
    );
    assert_eq!(
        two.command("b3", "FETCH 1:2 (FLAGS)"),
        [
            "* 1 FETCH (FLAGS (\\Recent \\Seen))\r\n",
            "* 2 FETCH (FLAGS (\\Recent))\r\n",
            "b3 OK FETCH completed\r\n"
        ]
    );
    // Claimed by that session: another one does not see them recent.
    let got = one.command("a5", "STATUS box (RECENT)");
    assert_eq!(got[0], "* STATUS box (RECENT 0)\r\n");
}

#[test]
fn a_keyword_another_session_made_is_in_flags_before_any_fetch_shows_it() {
    // imaptest stress: "Keyword used without being in FLAGS". FETCH catches up with the
    // mailbox first; a keyword found there must be announced before a FETCH carries it.
    let dir = TempDir::new("imaptest-mbox-keyword");
    let (mut one, mut two) = two_sessions_on_one_mbox(&dir);
    let got = two.command("b2", "STORE 1 +FLAGS.SILENT ($Label7)");
    assert!(got.last().unwrap().starts_with("b2 OK"), "{got:?}");
    let got = one.command("a2", "FETCH 1 (FLAGS)");
    let flags_at = got
        .iter()
        .position(|l| l.starts_with("* FLAGS (") && l.contains("$Label7"));
    let fetch_at = got
        .iter()
        .position(|l| l.starts_with("* 1 FETCH") && l.contains("$Label7"));
    assert!(fetch_at.is_some(), "{got:?}");
    assert!(
        flags_at < fetch_at && flags_at.is_some(),
        "FLAGS must come first: {got:?}"
    );
}
