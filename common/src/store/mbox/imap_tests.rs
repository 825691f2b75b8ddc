//! Tests of the IMAP side of the mbox store on real files: several sessions (and an "MTA"
//! writing the file directly) sharing one mailbox, APPEND (including kills between its steps),
//! keywords, and the folder operations of [`MboxStore`].

use super::tests::{expect_crash, TempDir, XorShift};
use super::*;
use crate::config::StoreChoice;
use crate::store::{MailStore, NewMessage, SpecialUse, StoreConfig};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;

const INBOX: &[u8] = include_bytes!("testdata/inbox.mbox");
const AFTER_IMAP1: &[u8] = include_bytes!("testdata/mbox-after-imap1.raw");
const DELIVERED: &[u8] =
    b"From new@example.com Fri Jan  5 08:00:00 2024\nSubject: late\n\nlate body\n\n";
/// The message UW's imap1 session appended (CRLF, with a body line starting "From ").
const APPENDED: &[u8] =
    b"Date: Thu, 1 Feb 2024 12:00:00 +0000\r\nFrom: Appender <app@example.com>\r\n\
To: uwtest@localhost\r\nSubject: Appended message\r\nMessage-ID: <app1@example.com>\r\n\r\n\
Appended body.\r\nFrom here on.\r\n";

fn helper() -> &'static Path {
    Path::new("/nonexistent/mlock")
}

fn spool(dir: &TempDir, bytes: &[u8]) -> PathBuf {
    let path = dir.path().join("user");
    std::fs::write(&path, bytes).unwrap();
    path
}

fn deliver(path: &Path, bytes: &[u8]) {
    let mut f = OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(bytes).unwrap();
}

fn uids(mb: &dyn Mailbox) -> Vec<u32> {
    mb.messages().iter().map(|m| m.uid).collect()
}

fn text_of(mb: &mut dyn Mailbox, i: usize) -> Vec<u8> {
    let mut out = Vec::new();
    mb.open_message(i).unwrap().read_to_end(&mut out).unwrap();
    out
}

/// Append one message with the given flags and keywords at a fixed date.
pub(super) fn append_text(
    mb: &mut dyn Mailbox,
    text: &[u8],
    flags: Flags,
    keywords: &[String],
    date: Option<(i64, i32)>,
) -> Vec<u32> {
    let mut source = text;
    let mut batch = [NewMessage {
        source: &mut source,
        len: Some(text.len() as u64),
        flags,
        keywords,
        internal_date: date,
    }];
    mb.append(&mut batch).unwrap()
}

fn open(path: &Path, access: Access) -> MboxMailbox {
    MboxMailbox::open(path, access, helper()).unwrap()
}

#[test]
fn refresh_reports_deliveries_and_is_silent_otherwise() {
    let dir = TempDir::new("refresh-deliver");
    let path = spool(&dir, INBOX);
    let mut a = open(&path, Access::Shared);
    assert!(a.refresh().unwrap().is_empty());
    let token = a.change_token().unwrap();
    deliver(&path, DELIVERED);
    assert_ne!(
        a.change_token().unwrap(),
        token,
        "delivery changes the token"
    );
    let changes = a.refresh().unwrap();
    assert_eq!(
        changes,
        Changes {
            expunged: vec![],
            flags_changed: vec![],
            appended: 1
        }
    );
    assert_eq!(uids(&a), vec![1, 2, 3, 4]);
    assert!(
        a.messages()[3].recent,
        "the first session to see it claims it"
    );
    assert_eq!(text_of(&mut a, 3), b"Subject: late\r\n\r\nlate body\r\n");
    let token = a.change_token().unwrap();
    assert!(a.refresh().unwrap().is_empty());
    assert_eq!(a.change_token().unwrap(), token);
    let b = open(&path, Access::Shared);
    assert!(
        b.messages().iter().all(|m| !m.recent),
        "\\Recent goes to one session only"
    );
}

#[test]
fn refresh_reports_other_sessions_flags_and_expunges() {
    let dir = TempDir::new("refresh-others");
    let path = spool(&dir, INBOX);
    let mut a = open(&path, Access::Shared);
    let mut b = open(&path, Access::Shared);
    let k = b.keyword_bit("Work").unwrap();
    b.set_flags(0, Flags::DELETED);
    b.set_flags(2, Flags::FLAGGED);
    b.set_keywords(1, 1 << k);
    b.commit_with(Expunge::Nothing).unwrap();
    let changes = a.refresh().unwrap();
    assert_eq!(changes.flags_changed, vec![0, 1, 2]);
    assert!(changes.expunged.is_empty() && changes.appended == 0);
    assert_eq!(a.messages()[2].flags, Flags::FLAGGED);
    let bit = a.keyword_names().iter().position(|n| n == "Work").unwrap();
    assert_eq!(a.messages()[1].keywords, 1 << bit);
    assert_eq!(
        b.commit_with(Expunge::AllDeleted).unwrap().expunged,
        vec![0]
    );
    deliver(&path, DELIVERED);
    let changes = a.refresh().unwrap();
    assert_eq!(changes.expunged, vec![0]);
    assert_eq!(changes.appended, 1);
    assert!(changes.flags_changed.is_empty());
    assert_eq!(uids(&a), vec![2, 3, 4]);
    assert_eq!(a.messages()[1].flags, Flags::FLAGGED);
    assert_eq!(uids(&b), vec![2, 3]);
    assert_eq!(b.refresh().unwrap().appended, 1);
    assert_eq!(
        uids(&b),
        vec![2, 3, 4],
        "one UID per message in every session"
    );
}

#[test]
fn pending_changes_survive_refresh_and_land_on_top_of_others() {
    let dir = TempDir::new("pending");
    let path = spool(&dir, INBOX);
    let mut a = open(&path, Access::Shared);
    let mut b = open(&path, Access::Shared);
    a.set_flags(0, Flags::SEEN.union(Flags::ANSWERED));
    b.set_flags(1, Flags::FLAGGED);
    b.commit(false).unwrap();
    deliver(&path, DELIVERED);
    let changes = a.refresh().unwrap();
    assert_eq!(changes.flags_changed, vec![1]);
    assert_eq!(
        a.messages()[0].flags,
        Flags::SEEN.union(Flags::ANSWERED),
        "our pending change is kept"
    );
    a.commit(false).unwrap();
    let c = open(&path, Access::ReadOnly);
    let flags: Vec<Flags> = c.messages().iter().map(|m| m.flags).collect();
    assert_eq!(
        flags,
        vec![
            Flags::SEEN.union(Flags::ANSWERED),
            Flags::FLAGGED,
            Flags::NONE,
            Flags::NONE
        ]
    );
}

#[test]
fn uid_expunge_removes_only_the_listed_deleted_messages() {
    let dir = TempDir::new("uid-expunge");
    let path = spool(&dir, INBOX);
    let mut a = open(&path, Access::Shared);
    for i in 0..3 {
        a.set_flags(i, Flags::DELETED);
    }
    let report = a.commit_with(Expunge::Uids(&[3, 1, 99])).unwrap();
    assert_eq!(report.expunged, vec![0, 2]);
    assert_eq!(uids(&a), vec![2]);
    assert!(a.messages()[0].flags.contains(Flags::DELETED));
    let again = open(&path, Access::ReadOnly);
    assert_eq!(uids(&again), vec![2]);
    assert_eq!(again.uid_next(), 4, "UIDs are never reused");
}

#[test]
fn append_assigns_consecutive_uids_and_normalises_text() {
    let dir = TempDir::new("append-many");
    let path = spool(&dir, INBOX);
    let mut a = open(&path, Access::Shared);
    assert_eq!(a.uid_next(), 4);
    let keywords = vec!["Project".to_string(), "bad name".to_string()];
    let mut first: &[u8] = b"Subject: one\r\n\r\nline\r\nFrom the start\r\n";
    let mut second: &[u8] = b"Subject: two\nStatus: RO\n\nbody without newline";
    let mut batch = [
        NewMessage {
            source: &mut first,
            len: None,
            flags: Flags::SEEN.union(Flags::DRAFT),
            keywords: &keywords,
            internal_date: Some((1_700_000_000, -300)),
        },
        NewMessage {
            source: &mut second,
            len: None,
            flags: Flags::NONE,
            keywords: &[],
            internal_date: Some((1_600_000_000, 60)),
        },
    ];
    assert_eq!(a.append(&mut batch).unwrap(), vec![4, 5]);
    assert_eq!(a.messages().len(), 3, "the index waits for refresh");
    assert_eq!(a.refresh().unwrap().appended, 2);
    assert_eq!(a.uid_next(), 6);
    assert_eq!(uids(&a), vec![1, 2, 3, 4, 5]);
    let one = a.messages()[3].clone();
    assert_eq!(one.flags, Flags::SEEN.union(Flags::DRAFT));
    assert_eq!(
        (one.internal_date, one.internal_tz_minutes),
        (1_700_000_000, -300)
    );
    let bit = a
        .keyword_names()
        .iter()
        .position(|n| n == "Project")
        .unwrap();
    assert_eq!(one.keywords, 1 << bit);
    assert!(!a.keyword_names().iter().any(|n| n.contains(' ')));
    assert_eq!(
        text_of(&mut a, 3),
        b"Subject: one\r\n\r\nline\r\n>From the start\r\n"
    );
    assert_eq!(
        text_of(&mut a, 4),
        b"Subject: two\r\nX-Original-Status: RO\r\n\r\nbody without newline\r\n"
    );
    assert_eq!(a.messages()[4].internal_tz_minutes, 60);
    for i in 0..5 {
        assert_eq!(text_of(&mut a, i).len() as u64, a.messages()[i].size);
    }
    let file = std::fs::read(&path).unwrap();
    assert!(!file.contains(&b'\r'), "LF line ends in the file");
    let b = open(&path, Access::Shared);
    assert_eq!(uids(&b), vec![1, 2, 3, 4, 5]);
    assert_eq!(b.uid_validity(), a.uid_validity());
}

#[test]
fn append_writes_the_bytes_uw_writes() {
    let dir = TempDir::new("append-uw");
    // The spool as it was before UW's two APPENDs: the first three messages, UID-last 3.
    let cut = AFTER_IMAP1
        .windows(15)
        .position(|w| w == b"From uwtest@vm ")
        .unwrap();
    let before = String::from_utf8(AFTER_IMAP1[..cut].to_vec())
        .unwrap()
        .replace("X-IMAPbase: 1795438470 5 ", "X-IMAPbase: 1795438470 3 ");
    let path = spool(&dir, before.as_bytes());
    let mut a = open(&path, Access::ReadOnly);
    assert_eq!(
        append_text(
            &mut a,
            APPENDED,
            Flags::FLAGGED,
            &[],
            Some((1_706_788_800, 0))
        ),
        vec![4]
    );
    assert_eq!(
        append_text(&mut a, APPENDED, Flags::NONE, &[], Some((1_795_438_470, 0))),
        vec![5]
    );
    // UW's session then selected INBOX and claimed the new messages.
    drop(open(&path, Access::Shared));
    let sender = format!("{}@{}", append::user_name(), host_name());
    let expected = String::from_utf8(AFTER_IMAP1.to_vec())
        .unwrap()
        .replace("From uwtest@vm ", &format!("From {sender} "));
    assert_eq!(
        String::from_utf8(std::fs::read(&path).unwrap()).unwrap(),
        expected
    );
}

#[test]
fn append_to_a_missing_spool_creates_it_private() {
    let dir = TempDir::new("append-missing");
    let path = dir.path().join("user");
    let mut a = open(&path, Access::Shared);
    assert!(a.messages().is_empty());
    assert_eq!(
        append_text(&mut a, b"Subject: x\n\nbody\n", Flags::NONE, &[], None),
        vec![1]
    );
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(a.refresh().unwrap().appended, 1);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("\nX-IMAPbase: "), "{text}");
    assert_eq!(
        append_text(&mut a, b"Subject: y\n\nbody\n", Flags::NONE, &[], None),
        vec![2]
    );
    let empty: &[u8] = b"";
    let mut src = empty;
    let mut batch = [NewMessage {
        source: &mut src,
        len: Some(0),
        flags: Flags::NONE,
        keywords: &[],
        internal_date: None,
    }];
    assert!(matches!(a.append(&mut batch), Err(StoreError::Refused(_))));
}

#[test]
fn keyword_bits_are_limited_to_thirty() {
    let dir = TempDir::new("keywords");
    let path = spool(&dir, INBOX);
    let mut a = open(&path, Access::Shared);
    let existing = a.keyword_names().len();
    let mut bits = Vec::new();
    for i in existing..30 {
        bits.push(a.keyword_bit(&format!("kw{i}")).unwrap());
    }
    assert_eq!(
        a.keyword_bit("kw29"),
        Some(29),
        "known names keep their bit"
    );
    assert_eq!(a.keyword_bit("one-too-many"), None);
    assert_eq!(a.keyword_bit("bad(name"), None);
    a.set_keywords(0, 1 << 29 | 1 << 40);
    a.commit(false).unwrap();
    let b = open(&path, Access::ReadOnly);
    assert_eq!(b.keyword_names().len(), 30);
    assert_eq!(b.messages()[0].keywords, 1 << 29);
}

#[test]
fn read_only_sessions_never_write() {
    let dir = TempDir::new("readonly");
    let path = spool(&dir, INBOX);
    let before = std::fs::read(&path).unwrap();
    let mut r = open(&path, Access::ReadOnly);
    assert!(r.read_only());
    r.set_flags(0, Flags::SEEN);
    r.commit(true).unwrap();
    deliver(&path, DELIVERED);
    let grown = std::fs::read(&path).unwrap();
    assert_eq!(r.refresh().unwrap().appended, 1);
    assert_eq!(std::fs::read(&path).unwrap(), grown);
    assert_eq!(&grown[..before.len()], &before[..]);
}

// ---- append crash safety --------------------------------------------------------------

const APPEND_CRASH_ENV: &str = "MBOX_TEST_APPEND_CRASH_DIR";

#[test]
#[ignore = "helper run in a child process by the append crash test"]
fn append_crash_child() {
    if let Some(dir) = std::env::var_os(APPEND_CRASH_ENV) {
        let path = PathBuf::from(dir).join("user");
        let mut a = open(&path, Access::ReadOnly);
        append_text(&mut a, APPENDED, Flags::SEEN, &["New".to_string()], None);
    }
}

/// Run the append child in a spool INBOX of three messages, dying at `point`; returns the
/// directory, the mailbox path and the three messages' texts.
fn killed_append(point: &str) -> (TempDir, PathBuf, Vec<Vec<u8>>) {
    let dir = TempDir::new("append-crash");
    let path = spool(&dir, INBOX);
    drop(open(&path, Access::Shared));
    let mut original = open(&path, Access::ReadOnly);
    let texts: Vec<Vec<u8>> = (0..3).map(|i| text_of(&mut original, i)).collect();
    drop(original);
    expect_crash(
        "store::mbox::imap_tests::append_crash_child",
        &[
            (APPEND_CRASH_ENV, dir.path().to_str().unwrap()),
            ("MAILSUITE_CRASH_AT", point),
        ],
    );
    let _ = std::fs::remove_file(dir.path().join("user.lock"));
    (dir, path, texts)
}

/// Killed after its sync, before its (unsynced) journal is gone: the append is whole, and
/// recovery keeps it. The same journal over a file that lost the append's last byte (a power
/// failure before the sync) cuts the append off.
#[test]
fn a_complete_append_outlives_its_journal_and_a_partial_one_does_not() {
    let (dir, path, texts) = killed_append("append-synced");
    let journal = dir.path().join(".user.mbox-journal");
    assert!(journal.exists());
    let whole = std::fs::read(&path).unwrap();
    let saved_journal = std::fs::read(&journal).unwrap();
    let mut a = open(&path, Access::Shared);
    assert_eq!(uids(&a), vec![1, 2, 3, 4]);
    let kept = text_of(&mut a, 3);
    assert!(kept.starts_with(&APPENDED[..40]));
    assert!(kept.ends_with(b"Appended body.\r\n>From here on.\r\n"));
    assert!(!journal.exists());
    drop(a);
    // Power failure before the sync: the journal made it to disk, the append's end did not.
    let mut torn = whole.clone();
    torn.pop();
    std::fs::write(&path, &torn).unwrap();
    std::fs::write(&journal, &saved_journal).unwrap();
    let mut a = open(&path, Access::Shared);
    assert_eq!(uids(&a), vec![1, 2, 3]);
    for (i, text) in texts.iter().enumerate() {
        assert_eq!(&text_of(&mut a, i), text, "message {i} unchanged");
    }
    assert!(!journal.exists());
}

#[test]
fn append_survives_a_kill_between_and_inside_its_steps() {
    for point in ["append-base", "append-half"] {
        let (dir, path, texts) = killed_append(point);
        let mut a = open(&path, Access::Shared);
        assert_eq!(uids(&a), vec![1, 2, 3], "{point}: no half message appears");
        for (i, text) in texts.iter().enumerate() {
            assert_eq!(&text_of(&mut a, i), text, "{point}: message {i} unchanged");
        }
        assert!(a.uid_next() >= 4);
        let skipped = a.uid_next();
        let got = append_text(&mut a, APPENDED, Flags::NONE, &[], None);
        assert_eq!(got, vec![skipped], "{point}: UIDs only ever move forward");
        assert!(!dir.path().join(".user.mbox-journal").exists());
    }
}

// ---- folders -------------------------------------------------------------------------

struct Fixture {
    _dir: TempDir,
    home: PathBuf,
    inbox: PathBuf,
    store: MboxStore,
}

fn store_fixture(name: &str, mail_dir: &str) -> Fixture {
    let dir = TempDir::new(name);
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let inbox = dir.path().join("spool");
    std::fs::write(&inbox, INBOX).unwrap();
    let cfg = StoreConfig {
        spool_dir: dir.path().to_path_buf(),
        maildir_name: "Maildir".into(),
        mail_dir: mail_dir.into(),
        choice: StoreChoice::Mbox,
        dotlock_helper: helper().to_path_buf(),
    };
    let store = MboxStore::new(&cfg, &inbox, &home);
    Fixture {
        _dir: dir,
        home,
        inbox,
        store,
    }
}

fn listed(store: &MboxStore, hidden: bool) -> Vec<(String, bool, bool, bool)> {
    store
        .list(hidden)
        .unwrap()
        .into_iter()
        .map(|f| (f.name, f.selectable, f.inferiors_allowed, f.has_children))
        .collect()
}

#[test]
fn create_list_delete_folders() {
    let fx = store_fixture("folders", "mail");
    let s = &fx.store;
    s.create("Sent").unwrap();
    s.create("work/2024/q1").unwrap();
    s.create("empty/").unwrap();
    assert!(matches!(
        s.create("Sent"),
        Err(StoreError::AlreadyExists(_))
    ));
    assert!(matches!(
        s.create("inbox"),
        Err(StoreError::AlreadyExists(_))
    ));
    assert!(matches!(
        s.create("Sent/child"),
        Err(StoreError::Refused(_))
    ));
    std::fs::write(fx.home.join("mail/.hidden"), b"").unwrap();
    assert_eq!(
        listed(s, false),
        vec![
            ("INBOX".to_string(), true, false, false),
            ("Sent".to_string(), true, false, false),
            ("empty".to_string(), false, true, false),
            ("work".to_string(), false, true, true),
            ("work/2024".to_string(), false, true, true),
            ("work/2024/q1".to_string(), true, false, false),
        ]
    );
    let all = s.list(true).unwrap();
    assert!(all.iter().any(|f| f.name == ".hidden"));
    let sent = all.iter().find(|f| f.name == "Sent").unwrap();
    assert_eq!(sent.special_use, Some(SpecialUse::Sent));
    let mode = std::fs::metadata(fx.home.join("mail/work/2024"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
    let text = std::fs::read_to_string(fx.home.join("mail/Sent")).unwrap();
    assert!(text.contains(meta::PSEUDO_SUBJECT));
    let mb = s.open("Sent", Access::Shared).unwrap();
    assert!(mb.messages().is_empty());
    assert!(matches!(
        s.open("work", Access::Shared),
        Err(StoreError::Refused(_))
    ));
    assert!(matches!(
        s.open("nope", Access::Shared),
        Err(StoreError::NoSuchMailbox(_))
    ));
    match s.delete("work") {
        Err(StoreError::Refused(why)) => {
            assert_eq!(why, "Can't delete mailbox work: Directory not empty")
        }
        other => panic!("{other:?}"),
    }
    s.delete("work/2024/q1").unwrap();
    s.delete("work/2024").unwrap();
    s.delete("empty").unwrap();
    s.delete("Sent").unwrap();
    assert!(matches!(
        s.delete("Sent"),
        Err(StoreError::NoSuchMailbox(_))
    ));
    assert!(matches!(s.delete("INBOX"), Err(StoreError::Refused(_))));
    assert_eq!(listed(s, false).len(), 2, "INBOX and work remain");
}

#[test]
fn listing_survives_symlink_loops() {
    let fx = store_fixture("loops", "");
    fx.store.create("a/box").unwrap();
    std::os::unix::fs::symlink(fx.home.join("a"), fx.home.join("a/loop")).unwrap();
    let names: Vec<String> = fx
        .store
        .list(false)
        .unwrap()
        .into_iter()
        .map(|f| f.name)
        .collect();
    assert_eq!(names, vec!["INBOX", "a", "a/box", "a/loop"]);
}

#[test]
fn rename_moves_folders_children_and_inbox() {
    let fx = store_fixture("rename", "");
    let s = &fx.store;
    s.create("old/child").unwrap();
    s.create("other").unwrap();
    s.rename("old", "new/place").unwrap();
    assert!(fx.home.join("new/place/child").is_file());
    assert!(!fx.home.join("old").exists());
    assert!(matches!(
        s.rename("other", "new/place"),
        Err(StoreError::AlreadyExists(_))
    ));
    assert!(matches!(
        s.rename("missing", "x"),
        Err(StoreError::NoSuchMailbox(_))
    ));
    assert!(matches!(
        s.rename("new", "new/place/deeper"),
        Err(StoreError::Refused(_))
    ));
    let validity = open(&fx.inbox, Access::ReadOnly).uid_validity();
    s.rename("INBOX", "archive/2024").unwrap();
    let moved = s.open("archive/2024", Access::ReadOnly).unwrap();
    assert_eq!(uids(moved.as_ref()), vec![1, 2, 3]);
    assert_eq!(moved.uid_validity(), validity);
    let inbox = s.open("INBOX", Access::Shared).unwrap();
    assert!(inbox.messages().is_empty());
    assert_eq!(inbox.uid_next(), 4, "INBOX keeps its UID state");
    assert!(matches!(
        s.rename("INBOX", "other"),
        Err(StoreError::AlreadyExists(_))
    ));
}

#[test]
fn subscriptions_round_trip() {
    let fx = store_fixture("subs", "");
    let s = &fx.store;
    assert!(s.subscriptions().unwrap().is_empty());
    s.set_subscribed("INBOX", true).unwrap();
    s.set_subscribed("lists/rust", true).unwrap();
    s.set_subscribed("lists/rust", true).unwrap();
    s.set_subscribed("Sent", true).unwrap();
    s.set_subscribed("lists/rust", false).unwrap();
    assert_eq!(s.subscriptions().unwrap(), vec!["INBOX", "Sent"]);
    assert_eq!(
        std::fs::read_to_string(fx.home.join(".mailboxlist")).unwrap(),
        "INBOX\nSent\n"
    );
    assert!(s.set_subscribed("../etc", true).is_err());
}

#[test]
fn status_stores_missing_uids_and_nothing_else() {
    let fx = store_fixture("status", "");
    // EXAMINE of the fresh spool writes nothing: its UIDVALIDITY is provisional.
    drop(MboxMailbox::open(&fx.inbox, Access::ReadOnly, helper()).unwrap());
    assert_eq!(std::fs::read(&fx.inbox).unwrap(), INBOX);
    // STATUS stores UIDVALIDITY and UIDs (as UW: "Assigning new unique identifiers") ...
    let st = fx.store.status("INBOX").unwrap();
    assert_eq!(
        (st.messages, st.recent, st.unseen, st.uid_next),
        (3, 2, 3, 4)
    );
    let stored = String::from_utf8(std::fs::read(&fx.inbox).unwrap()).unwrap();
    assert!(
        stored.contains(&format!("X-IMAPbase: {} 3\n", st.uid_validity)),
        "{stored}"
    );
    assert_eq!(stored.matches("\nX-UID: ").count(), 3, "{stored}");
    // ... but claims no \Recent: the O flags are as they were.
    assert_eq!(stored.matches("\nStatus: O").count(), 1, "{stored}");
    // Once stored, STATUS writes nothing and agrees with itself.
    let meta = std::fs::metadata(&fx.inbox).unwrap();
    assert_eq!(fx.store.status("inbox").unwrap(), st);
    assert_eq!(std::fs::read_to_string(&fx.inbox).unwrap(), stored);
    let after = std::fs::metadata(&fx.inbox).unwrap();
    assert_eq!(after.modified().unwrap(), meta.modified().unwrap());
    // SELECT then sees what STATUS promised, \Recent included.
    let selected = fx.store.open("INBOX", Access::Shared).unwrap();
    assert_eq!(selected.uid_validity(), st.uid_validity);
    assert_eq!(selected.uid_next(), st.uid_next);
    assert_eq!(selected.messages().iter().filter(|m| m.recent).count(), 2);
    assert!(matches!(
        fx.store.status("nope"),
        Err(StoreError::NoSuchMailbox(_))
    ));
}

#[test]
fn refused_names_never_touch_the_disk() {
    let fx = store_fixture("names", "mail");
    let s = &fx.store;
    for bad in [
        "../escape",
        "/etc/x",
        "~root/x",
        "a//b",
        "a/../b",
        "#news.x",
        "caf\u{e9}",
    ] {
        assert!(
            matches!(s.create(bad), Err(StoreError::Refused(_))),
            "{bad}"
        );
        assert!(
            matches!(s.delete(bad), Err(StoreError::Refused(_))),
            "{bad}"
        );
        assert!(
            matches!(s.rename("INBOX", bad), Err(StoreError::Refused(_))),
            "{bad}"
        );
        assert!(s.open(bad, Access::Shared).is_err());
        let mut src: &[u8] = b"Subject: x\n\nx\n";
        let appended = s.append(bad, &mut one_message(&mut src, Flags::NONE));
        assert!(matches!(appended, Err(StoreError::Refused(_))));
    }
    assert!(!fx.home.join("mail").exists(), "nothing was created");
    assert!(!fx.home.parent().unwrap().join("escape").exists());
    assert_eq!(std::fs::read(&fx.inbox).unwrap(), INBOX);
}

fn one_message<'a>(src: &'a mut &[u8], flags: Flags) -> [NewMessage<'a>; 1] {
    [NewMessage {
        source: src,
        len: None,
        flags,
        keywords: &[],
        internal_date: None,
    }]
}

#[test]
fn store_append_by_name() {
    let fx = store_fixture("store-append", "");
    let s = &fx.store;
    let mut src: &[u8] = b"Subject: x\n\nx\n";
    let missing = s.append("Saved", &mut one_message(&mut src, Flags::SEEN));
    assert!(matches!(missing, Err(StoreError::NoSuchMailbox(_))));
    s.create("Saved").unwrap();
    let mut src: &[u8] = b"Subject: x\n\nx\n";
    let (validity, got) = s
        .append("Saved", &mut one_message(&mut src, Flags::SEEN))
        .unwrap();
    assert_eq!(got, vec![1]);
    let mb = s.open("Saved", Access::ReadOnly).unwrap();
    assert_eq!(mb.uid_validity(), validity);
    assert_eq!(mb.messages()[0].flags, Flags::SEEN);
    assert!(
        mb.messages()[0].recent,
        "appended mail is new to the next session"
    );
    let text = std::fs::read_to_string(fx.home.join("Saved")).unwrap();
    assert!(
        text.starts_with("From MAILER-DAEMON "),
        "pseudo-message kept first"
    );
    std::fs::remove_file(&fx.inbox).unwrap();
    let mut src: &[u8] = b"Subject: y\n\ny\n";
    let (_, got) = s
        .append("INBOX", &mut one_message(&mut src, Flags::NONE))
        .unwrap();
    assert_eq!(got, vec![1], "a missing spool is created");
}

// ---- incremental re-reading ----------------------------------------------------------

fn full_parses() -> usize {
    super::tests::FULL_PARSES.with(|n| n.get())
}

/// What a fresh read-only open sees: (uid, flags, keyword names, size, date, text).
#[allow(clippy::type_complexity)]
fn observed(mb: &mut dyn Mailbox) -> Vec<(u32, Flags, Vec<String>, u64, i64, Vec<u8>)> {
    (0..mb.messages().len())
        .map(|i| {
            let m = mb.messages()[i].clone();
            let names = mb
                .keyword_names()
                .iter()
                .enumerate()
                .filter(|(b, _)| m.keywords & (1 << b) != 0)
                .map(|(_, n)| n.clone())
                .collect();
            (
                m.uid,
                m.flags,
                names,
                m.size,
                m.internal_date,
                text_of(mb, i),
            )
        })
        .collect()
}

#[test]
fn growth_after_in_place_changes_is_read_without_a_full_parse() {
    let dir = TempDir::new("incremental");
    let path = spool(&dir, INBOX);
    let mut a = open(&path, Access::Shared);
    let mut b = open(&path, Access::Shared);
    b.set_flags(1, Flags::FLAGGED);
    let k = b.keyword_bit("Later").unwrap();
    b.set_keywords(2, 1 << k);
    b.commit(false).unwrap();
    deliver(&path, DELIVERED);
    append_text(&mut b, APPENDED, Flags::SEEN, &[], Some((1_706_788_800, 0)));
    let before = full_parses();
    let changes = a.refresh().unwrap();
    assert_eq!(full_parses(), before, "headers and tail only");
    assert_eq!(changes.flags_changed, vec![1, 2]);
    assert_eq!(changes.appended, 2);
    let mut fresh = open(&path, Access::ReadOnly);
    assert_eq!(observed(&mut a), observed(&mut fresh));
    assert!(a.messages()[3].recent && a.messages()[4].recent);
    // A flag change of ours is written in place and read back without a full parse too.
    a.set_flags(0, Flags::ANSWERED);
    let before = full_parses();
    a.commit(false).unwrap();
    assert_eq!(full_parses(), before);
    let mut fresh = open(&path, Access::ReadOnly);
    assert_eq!(observed(&mut a), observed(&mut fresh));
}

#[test]
fn moved_messages_are_never_mistaken_for_the_old_ones() {
    let dir = TempDir::new("incremental-moved");
    let path = spool(&dir, INBOX);
    let mut a = open(&path, Access::Shared);
    let mut b = open(&path, Access::Shared);
    b.set_flags(1, Flags::DELETED);
    b.commit(true).unwrap();
    let mut big = DELIVERED[..DELIVERED.len() - 1].to_vec();
    big.extend_from_slice(&b"padding line\n".repeat(200));
    big.push(b'\n');
    deliver(&path, &big);
    let before = full_parses();
    let changes = a.refresh().unwrap();
    assert_eq!(
        full_parses(),
        before,
        "parsed again from the first moved message on"
    );
    assert_eq!(changes.expunged, vec![1]);
    assert_eq!(changes.appended, 1);
    let mut fresh = open(&path, Access::ReadOnly);
    assert_eq!(observed(&mut a), observed(&mut fresh));
}

#[test]
fn append_after_a_file_without_final_blank_line_keeps_sizes() {
    let dir = TempDir::new("append-separator");
    for ending in [&b"last line\n"[..], b"last line", b"last line\n\n"] {
        let mut bytes = INBOX.to_vec();
        while bytes.last() == Some(&b'\n') {
            bytes.pop();
        }
        let cut = bytes.len() - bytes.rsplit(|&c| c == b'\n').next().unwrap().len();
        bytes.truncate(cut);
        bytes.extend_from_slice(ending);
        let path = spool(&dir, &bytes);
        let mut a = open(&path, Access::Shared);
        let sizes: Vec<u64> = a.messages().iter().map(|m| m.size).collect();
        append_text(&mut a, b"Subject: s\n\nx\n", Flags::NONE, &[], None);
        a.refresh().unwrap();
        let mut fresh = open(&path, Access::ReadOnly);
        assert_eq!(fresh.messages().len(), 4);
        if ending.ends_with(b"\n") {
            let now: Vec<u64> = fresh.messages()[..3].iter().map(|m| m.size).collect();
            assert_eq!(now, sizes, "{ending:?}");
        }
        assert_eq!(text_of(&mut fresh, 3), b"Subject: s\r\n\r\nx\r\n");
        assert_eq!(observed(&mut a), observed(&mut fresh));
    }
}

// ---- expunging everything -------------------------------------------------------------

const EXPUNGE_ALL_ENV: &str = "MBOX_TEST_EXPUNGE_ALL_DIR";

#[test]
#[ignore = "helper run in a child process by the expunge-all test"]
fn expunge_all_child() {
    if let Some(dir) = std::env::var_os(EXPUNGE_ALL_ENV) {
        let mut mb = open(&PathBuf::from(dir).join("user"), Access::Exclusive);
        for i in 0..mb.messages().len() {
            mb.set_flags(i, Flags::DELETED);
        }
        mb.commit(true).unwrap();
    }
}

#[test]
fn expunging_everything_journals_only_the_first_message() {
    let dir = TempDir::new("expunge-all-journal");
    let mut bytes = Vec::new();
    for i in 0..200 {
        write!(
            bytes,
            "From s@example.com Mon Jan  1 10:00:00 2024\nSubject: {i}\n\n{}\n",
            "body line\n".repeat(100)
        )
        .unwrap();
    }
    let path = spool(&dir, &bytes);
    drop(open(&path, Access::Shared));
    let first_len = {
        let mb = open(&path, Access::ReadOnly);
        mb.entries[0].next_off
    };
    expect_crash(
        "store::mbox::imap_tests::expunge_all_child",
        &[
            (EXPUNGE_ALL_ENV, dir.path().to_str().unwrap()),
            ("MAILSUITE_CRASH_AT", "journal"),
        ],
    );
    let journal = std::fs::metadata(dir.path().join(".user.mbox-journal")).unwrap();
    assert!(
        journal.len() < first_len + 1024,
        "journal of {} bytes for a first message of {first_len}",
        journal.len()
    );
    let _ = std::fs::remove_file(dir.path().join("user.lock"));
    // Only a pseudo-message is written over the first message: a compaction, which a kill after
    // its journal does not undo but finishes.
    let mb = open(&path, Access::Shared);
    assert!(uids(&mb).is_empty(), "the kill left {:?}", uids(&mb));
    assert!(!dir.path().join(".user.mbox-journal").exists());
    let mut mb = mb;
    let expunged = mb.commit(true).unwrap().expunged;
    assert!(expunged.is_empty(), "{expunged:?}");
    assert!(mb.messages().is_empty());
    assert_eq!(mb.uid_next(), 201, "UID state kept");
}

// ---- several sessions at random -------------------------------------------------------

fn random_message(rng: &mut XorShift, n: usize) -> Vec<u8> {
    let mut text = format!("Subject: random {n}\r\nMessage-ID: <r{n}@x>\r\n\r\n");
    for i in 0..rng.index(40) {
        match rng.index(6) {
            0 => text.push_str("From the body, not a separator\r\n"),
            1 => text.push_str("\r\n"),
            _ => text.push_str(&format!("line {i} {}\r\n", "x".repeat(rng.index(90)))),
        }
    }
    text.into_bytes()
}

/// Apply a refresh's report to the UIDs seen before it: must give the UIDs seen after it.
fn check_changes(before: &[u32], changes: &Changes, after: &[u32]) {
    let mut kept: Vec<u32> = before
        .iter()
        .enumerate()
        .filter(|(i, _)| !changes.expunged.contains(i))
        .map(|(_, u)| *u)
        .collect();
    assert_eq!(kept.len() + changes.appended, after.len(), "{changes:?}");
    assert_eq!(&after[..kept.len()], &kept[..], "{changes:?}");
    kept.extend_from_slice(&after[before.len() - changes.expunged.len()..]);
    assert_eq!(kept, after);
}

#[test]
fn sessions_mta_and_appends_stay_consistent() {
    let seeds: u64 = std::env::var("MBOX_STRESS_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    for seed in 0..seeds {
        random_sessions(seed);
    }
}

/// Two sessions, an MTA and appends acting at random; after every step each session's view
/// (after a refresh whose report must be right) equals a fresh open's.
fn random_sessions(seed: u64) {
    let dir = TempDir::new("random-sessions");
    let path = spool(&dir, INBOX);
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15 ^ seed.wrapping_mul(0x2545_F491_4F6C_DD1D));
    let mut sessions = [open(&path, Access::Shared), open(&path, Access::Shared)];
    let mut highest = 3u32;
    let mut gone: Vec<u32> = Vec::new();
    for step in 0..150 {
        let who = rng.index(2);
        let s = &mut sessions[who];
        let n = s.messages().len();
        match rng.index(6) {
            0 => {
                let text = random_message(&mut rng, step);
                let mut mbox = b"From mta@example.com Mon Jan  1 10:00:00 2024\n".to_vec();
                mbox.extend(text.iter().filter(|&&c| c != b'\r'));
                mbox.extend_from_slice(b"\n");
                deliver(&path, &mbox);
            }
            1 => {
                let text = random_message(&mut rng, step);
                let kw = vec![format!("k{}", rng.index(3))];
                let got = append_text(s, &text, Flags::FLAGGED, &kw, None);
                assert!(
                    got[0] > highest,
                    "seed {seed} step {step}: UID {got:?} not new"
                );
                highest = got[0];
            }
            2 | 3 if n > 0 => {
                let i = rng.index(n);
                let bits = rng.index(31) as u8;
                s.set_flags(i, Flags::from_bits(bits & !Flags::DELETED.bits()));
                if rng.index(2) == 0 {
                    let k = s.keyword_bit(&format!("k{}", rng.index(3))).unwrap();
                    s.set_keywords(i, 1 << k);
                }
                s.commit_with(Expunge::Nothing).unwrap();
            }
            4 if n > 0 => {
                let i = rng.index(n);
                let uid = s.messages()[i].uid;
                s.set_flags(i, Flags::DELETED);
                let report = if rng.index(2) == 0 {
                    s.commit_with(Expunge::Uids(&[uid])).unwrap()
                } else {
                    s.commit_with(Expunge::AllDeleted).unwrap()
                };
                assert!(!report.expunged.is_empty());
                gone.push(uid);
            }
            _ => {}
        }
        let mut fresh = open(&path, Access::ReadOnly);
        let truth = observed(&mut fresh);
        for s in sessions.iter_mut() {
            let before = uids(s);
            let changes = s.refresh().unwrap();
            check_changes(&before, &changes, &uids(s));
            assert_eq!(observed(s), truth, "seed {seed} step {step}");
        }
        for uid in uids(&fresh) {
            assert!(
                !gone.contains(&uid),
                "seed {seed} step {step}: UID {uid} reused"
            );
            highest = highest.max(uid);
        }
    }
}

#[test]
fn opening_after_a_delivery_parses_the_file_once() {
    let dir = TempDir::new("open-once");
    let path = spool(&dir, INBOX);
    drop(open(&path, Access::Shared));
    deliver(&path, DELIVERED);
    let before = full_parses();
    let a = open(&path, Access::Shared);
    assert_eq!(
        full_parses(),
        before + 1,
        "claiming the new message re-reads only it"
    );
    assert_eq!(uids(&a), vec![1, 2, 3, 4]);
    assert!(a.messages()[3].recent);
    let mut fresh = open(&path, Access::ReadOnly);
    assert!(!fresh.messages()[3].recent, "claimed");
    let mut a = a;
    assert_eq!(
        observed(&mut a)[..3],
        observed(&mut fresh)[..3],
        "same messages"
    );
    assert_eq!(observed(&mut a), observed(&mut fresh));
}

#[test]
fn a_deleted_folder_reads_as_all_expunged_in_open_sessions() {
    let fx = store_fixture("delete-open", "");
    let s = &fx.store;
    s.create("box").unwrap();
    let mut src: &[u8] = b"Subject: x\n\nx\n";
    s.append("box", &mut one_message(&mut src, Flags::NONE))
        .unwrap();
    let mut open_box = s.open("box", Access::Shared).unwrap();
    assert_eq!(open_box.messages().len(), 1);
    let token = open_box.change_token().unwrap();
    s.delete("box").unwrap();
    assert_ne!(open_box.change_token().unwrap(), token);
    let changes = open_box.refresh().unwrap();
    assert_eq!(changes.expunged, vec![0]);
    assert!(open_box.messages().is_empty());
    assert!(open_box.refresh().unwrap().is_empty());
}
