//! Tests of the whole mbox store on real files in temporary directories, including the UW
//! reference recordings (testdata/, copied from the UW-IMAP imap-2007f captures) and crash
//! recovery of a killed child process.

use super::imap_tests::append_text;
use super::*;
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};

thread_local! {
    /// Whole-file parses done by this test thread (to tell them from incremental ones).
    pub(crate) static FULL_PARSES: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    /// Rewrites done as compactions (see `compact`), without an undo copy.
    pub(crate) static COMPACTIONS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    /// Commits done by same-length metadata patches only.
    pub(crate) static PATCH_WRITES: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    /// Refreshes after our own append that read only the appended tail.
    pub(crate) static TAIL_ONLY: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    /// Refreshes that took our own append's index without locking the mailbox.
    pub(crate) static UNLOCKED_CATCH_UPS: std::cell::Cell<usize> =
        const { std::cell::Cell::new(0) };
}

pub(crate) struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub(crate) fn new(name: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let path =
            std::env::temp_dir().join(format!("mbox-test-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir { path }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

const INBOX: &[u8] = include_bytes!("testdata/inbox.mbox");
const AFTER_POP1: &[u8] = include_bytes!("testdata/mbox-after-pop1-fresh.raw");
const AFTER_IMAP1: &[u8] = include_bytes!("testdata/mbox-after-imap1.raw");

fn helper() -> &'static Path {
    Path::new("/nonexistent/mlock")
}

fn mailbox_with(dir: &TempDir, bytes: &[u8]) -> PathBuf {
    let path = dir.path().join("user");
    std::fs::write(&path, bytes).unwrap();
    path
}

fn read_all(mb: &mut MboxMailbox, i: usize) -> Vec<u8> {
    let mut out = Vec::new();
    mb.open_message(i).unwrap().read_to_end(&mut out).unwrap();
    out
}

fn assert_sizes_exact(mb: &mut MboxMailbox) {
    for i in 0..mb.messages().len() {
        let size = mb.messages()[i].size;
        assert_eq!(read_all(mb, i).len() as u64, size, "message {}", i + 1);
    }
}

/// Replace the UIDVALIDITY digits after "X-IMAPbase: " with "V".
fn mask_validity(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes).into_owned();
    let Some(at) = text.find("X-IMAPbase: ") else {
        return text;
    };
    let start = at + "X-IMAPbase: ".len();
    let digits = text[start..].bytes().take_while(u8::is_ascii_digit).count();
    format!("{}V{}", &text[..start], &text[start + digits..])
}

#[test]
fn reference_inbox_sizes_dates_and_recent_match_uw() {
    let dir = TempDir::new("ref");
    let path = mailbox_with(&dir, INBOX);
    let mut mb = MboxMailbox::open(&path, Access::ReadOnly, helper()).unwrap();
    let sizes: Vec<u64> = mb.messages().iter().map(|m| m.size).collect();
    assert_eq!(sizes, vec![241, 613, 258]);
    let recent: Vec<bool> = mb.messages().iter().map(|m| m.recent).collect();
    assert_eq!(recent, vec![true, true, false]);
    let uids: Vec<u32> = mb.messages().iter().map(|m| m.uid).collect();
    assert_eq!(uids, vec![1, 2, 3]);
    assert_eq!(mb.uid_next(), 4);
    // " 1-Jan-2024 10:00:00 +0000" (local time is UTC on the reference machine and here).
    let first = &mb.messages()[0];
    assert_eq!(
        first.internal_date + i64::from(first.internal_tz_minutes) * 60,
        1_704_103_200
    );
    assert_sizes_exact(&mut mb);
    let text = read_all(&mut mb, 0);
    let expected_header = "Return-Path: <alice@example.com>\r\nDate: Mon, 1 Jan 2024 10:00:00 +0000\r\n\
        From: Alice Example <alice@example.com>\r\nTo: uwtest@localhost\r\nSubject: First message\r\n\
        Message-ID: <msg1@example.com>\r\n\r\n";
    let expected = format!("{expected_header}Hello, this is message one.\r\nIt has two lines.\r\n");
    assert_eq!(String::from_utf8(text).unwrap(), expected);
    let third = String::from_utf8(read_all(&mut mb, 2)).unwrap();
    assert!(!third.contains("Status:"));
    assert!(third.ends_with("\r\nFrom the desk of Carol: a line starting with From.\r\n>From quoted already.\r\nBye.\r\n"));
    // Read-only never writes, not even new UIDs.
    assert_eq!(std::fs::read(&path).unwrap(), INBOX);
}

#[test]
fn pop1_fresh_session_leaves_the_file_uw_leaves() {
    let dir = TempDir::new("pop1");
    let path = mailbox_with(&dir, INBOX);
    let mut mb = MboxMailbox::open(&path, Access::Exclusive, helper()).unwrap();
    assert_eq!(mb.messages().len(), 3);
    let _ = read_all(&mut mb, 2);
    mb.set_flags(2, Flags::SEEN);
    mb.set_flags(0, Flags::DELETED);
    let report = mb.commit(true).unwrap();
    assert_eq!(report.expunged, vec![0]);
    drop(mb);
    let m = std::fs::metadata(&path).unwrap();
    assert!(
        m.modified().unwrap() < m.accessed().unwrap(),
        "no \"new mail\" after our write"
    );
    let got = std::fs::read(&path).unwrap();
    assert_eq!(mask_validity(&got), mask_validity(AFTER_POP1));
    let mb = MboxMailbox::open(&path, Access::ReadOnly, helper()).unwrap();
    let uids: Vec<u32> = mb.messages().iter().map(|m| m.uid).collect();
    assert_eq!(uids, vec![2, 3]);
    assert!(mb.messages()[1].flags.contains(Flags::SEEN));
}

#[test]
fn imap1_flags_and_keywords_written_as_uw_does() {
    let dir = TempDir::new("imap1");
    let path = mailbox_with(&dir, INBOX);
    let mut mb = MboxMailbox::open(&path, Access::Shared, helper()).unwrap();
    mb.set_flags(0, Flags::SEEN);
    let fwd = mb.keyword_index("$Forwarded").unwrap();
    let junk = mb.keyword_index("Junk").unwrap();
    mb.set_keywords(1, (1 << fwd) | (1 << junk));
    mb.set_flags(1, Flags::ANSWERED.union(Flags::FLAGGED));
    mb.commit(false).unwrap();
    drop(mb);
    let got = mask_validity(&std::fs::read(&path).unwrap());
    // UW's file had UID-last 5 after two APPENDs; ours has 3 (same digit count, same padding).
    let reference = mask_validity(AFTER_IMAP1).replacen("V 5 ", "V 3 ", 1);
    let cut = reference.find("From uwtest@vm").unwrap();
    assert_eq!(&got[..cut], &reference[..cut]);
    let mb = MboxMailbox::open(&path, Access::ReadOnly, helper()).unwrap();
    assert_eq!(mb.keyword_names(), ["$Forwarded", "Junk"]);
    assert_eq!(mb.messages()[1].keywords, 3);
    assert_eq!(mb.messages()[0].flags, Flags::SEEN);
}

#[test]
fn uids_persist_and_reopen_identically() {
    let dir = TempDir::new("persist");
    let path = mailbox_with(&dir, INBOX);
    let a = MboxMailbox::open(&path, Access::Shared, helper()).unwrap();
    let (validity, uids) = (
        a.uid_validity(),
        a.messages().iter().map(|m| m.uid).collect::<Vec<_>>(),
    );
    drop(a); // no commit: UIDs were persisted at open
    let written = std::fs::read(&path).unwrap();
    assert_ne!(written, INBOX);
    let b = MboxMailbox::open(&path, Access::Exclusive, helper()).unwrap();
    assert_eq!(b.uid_validity(), validity);
    assert_eq!(b.messages().iter().map(|m| m.uid).collect::<Vec<_>>(), uids);
    // Sessions after the first one see nothing as recent.
    assert!(b.messages().iter().all(|m| !m.recent));
    drop(b);
    assert_eq!(
        std::fs::read(&path).unwrap(),
        written,
        "nothing to write the second time"
    );
}

#[test]
fn duplicate_and_decreasing_uids_are_reassigned() {
    let dir = TempDir::new("dupuid");
    let mut text = Vec::new();
    for uid in [5, 5, 3, 9] {
        write!(
            text,
            "From a@b Mon Jan  1 10:00:00 2024\nSubject: {uid}\nX-UID: {uid}\n\nbody\n\n"
        )
        .unwrap();
    }
    let text = [
        b"From a@b Mon Jan  1 10:00:00 2024\nX-IMAPbase: 100 9\n\nfirst\n\n".as_slice(),
        &text,
    ]
    .concat();
    let path = mailbox_with(&dir, &text);
    let mb = MboxMailbox::open(&path, Access::Shared, helper()).unwrap();
    let uids: Vec<u32> = mb.messages().iter().map(|m| m.uid).collect();
    assert_eq!(uids.len(), 5);
    assert!(uids.windows(2).all(|w| w[0] < w[1]), "{uids:?}");
    assert!(uids.iter().all(|&u| u > 0));
    assert_ne!(
        mb.uid_validity(),
        100,
        "a broken UID sequence starts a new UIDVALIDITY"
    );
}

#[test]
fn from_lines_are_recognised_strictly() {
    let dir = TempDir::new("strict");
    let text =
        b"From a@b Mon Jan  1 10:00:00 2024\nSubject: one\n\nFrom here on\nFrom a Mon Jan  1\n\
From b@c Tue Jan  2 10:00:00 2024 +0100\nSubject: two\n\nx\n";
    let path = mailbox_with(&dir, text);
    let mut mb = MboxMailbox::open(&path, Access::ReadOnly, helper()).unwrap();
    assert_eq!(mb.messages().len(), 2);
    assert_eq!(
        read_all(&mut mb, 0),
        b"Subject: one\r\n\r\nFrom here on\r\nFrom a Mon Jan  1\r\n"
    );
    assert_eq!(mb.messages()[1].internal_tz_minutes, 60);
    assert_sizes_exact(&mut mb);
}

#[test]
fn empty_and_missing_mailboxes() {
    let dir = TempDir::new("empty");
    let missing = dir.path().join("nobody");
    let mut mb = MboxMailbox::open(&missing, Access::Exclusive, helper()).unwrap();
    assert!(mb.messages().is_empty());
    assert!(mb.open_message(0).is_err());
    assert_eq!(mb.commit(true).unwrap(), CommitReport::default());
    assert!(!missing.exists(), "nothing created until needed");
    let path = mailbox_with(&dir, b"");
    let mut mb = MboxMailbox::open(&path, Access::Shared, helper()).unwrap();
    assert!(mb.messages().is_empty());
    mb.commit(true).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"");
    let path = mailbox_with(&dir, b"\n\n  \n");
    assert!(MboxMailbox::open(&path, Access::ReadOnly, helper())
        .unwrap()
        .messages()
        .is_empty());
}

#[test]
fn damaged_mailbox_is_refused_and_untouched() {
    let dir = TempDir::new("damaged");
    let text = b"Subject: no separator\n\nFrom a@b Mon Jan  1 10:00:00 2024\n\nx\n";
    let path = mailbox_with(&dir, text);
    let before = std::fs::metadata(&path).unwrap().modified().unwrap();
    for access in [Access::Exclusive, Access::Shared, Access::ReadOnly] {
        match MboxMailbox::open(&path, access, helper()) {
            Err(StoreError::Damaged(why)) => assert!(why.contains("offset 0"), "{why}"),
            other => panic!(
                "expected Damaged, got {:?}",
                other.map(|m| m.messages().len())
            ),
        }
    }
    assert_eq!(std::fs::read(&path).unwrap(), text);
    assert_eq!(
        std::fs::metadata(&path).unwrap().modified().unwrap(),
        before
    );
}

#[test]
fn odd_shapes_have_exact_sizes() {
    let dir = TempDir::new("shapes");
    let mut huge_header = b"From a@b Mon Jan  1 10:00:00 2024\n".to_vec();
    for i in 0..3000 {
        writeln!(huge_header, "X-Filler-{i}: {}", "y".repeat(60)).unwrap();
    }
    writeln!(huge_header, "Subject: {}", "z".repeat(200_000)).unwrap();
    huge_header.extend_from_slice(b"\nbody\n\n");
    let cases: Vec<(&str, Vec<u8>, usize)> = vec![
        ("no trailing newline", b"From a@b Mon Jan  1 10:00:00 2024\nS: x\n\nabc".to_vec(), 1),
        ("no body at all", b"From a@b Mon Jan  1 10:00:00 2024\nS: x\n".to_vec(), 1),
        (
            "header then next message",
            b"From a@b Mon Jan  1 10:00:00 2024\nS: x\n\nFrom a@b Mon Jan  1 10:00:00 2024\nS: y\n\nb\n".to_vec(),
            2,
        ),
        (
            "CRLF stored",
            b"From a@b Mon Jan  1 10:00:00 2024\r\nS: x\r\nStatus: RO\r\n\r\nline\r\n\r\nFrom c@d Mon Jan  1 10:00:00 2024\r\n\r\nz\r\n".to_vec(),
            2,
        ),
        ("8-bit", b"From a@b Mon Jan  1 10:00:00 2024\nS: \xe9t\xe9\n\n\xff\xfe\x00\x80\n\n".to_vec(), 1),
        ("huge header", huge_header, 1),
        ("lone CR", b"From a@b Mon Jan  1 10:00:00 2024\nS: x\n\na\rb\n\n".to_vec(), 1),
        (
            "Content-Length hidden",
            b"From a@b Mon Jan  1 10:00:00 2024\nContent-Length: 999\nS: x\n\nabc\n\n".to_vec(),
            1,
        ),
    ];
    for (name, bytes, count) in cases {
        let path = mailbox_with(&dir, &bytes);
        let mut mb = MboxMailbox::open(&path, Access::ReadOnly, helper()).unwrap();
        assert_eq!(mb.messages().len(), count, "{name}");
        assert_sizes_exact(&mut mb);
        let all: Vec<u8> = (0..count).flat_map(|i| read_all(&mut mb, i)).collect();
        assert!(!all.windows(2).any(|w| w == b"\r\r"), "{name}: CR doubled");
        assert!(
            !all.windows(7).any(|w| w.eq_ignore_ascii_case(b"status:")),
            "{name}"
        );
        assert!(!all.windows(15).any(|w| w == b"Content-Length:"), "{name}");
    }
    let path = mailbox_with(
        &dir,
        b"From a@b Mon Jan  1 10:00:00 2024\nS: \xe9\n\n\xff\x80\n\n",
    );
    let mut mb = MboxMailbox::open(&path, Access::ReadOnly, helper()).unwrap();
    assert_eq!(read_all(&mut mb, 0), b"S: \xe9\r\n\r\n\xff\x80\r\n");
    let path = mailbox_with(
        &dir,
        b"From a@b Mon Jan  1 10:00:00 2024\r\nS: x\r\n\r\nline\r\n\r\n",
    );
    let mut mb = MboxMailbox::open(&path, Access::ReadOnly, helper()).unwrap();
    assert_eq!(read_all(&mut mb, 0), b"S: x\r\n\r\nline\r\n");
}

fn append(path: &Path, bytes: &[u8]) {
    let mut f = OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(bytes).unwrap();
}

const DELIVERED: &[u8] =
    b"From new@example.com Fri Jan  5 08:00:00 2024\nSubject: late\n\nlate body\nFrom the MTA\n\n";

#[test]
fn mail_appended_by_others_survives_commit() {
    let dir = TempDir::new("appended");
    let path = mailbox_with(&dir, INBOX);
    let mut mb = MboxMailbox::open(&path, Access::Exclusive, helper()).unwrap();
    append(&path, DELIVERED);
    mb.set_flags(0, Flags::DELETED);
    let report = mb.commit(true).unwrap();
    assert_eq!(report.expunged, vec![0]);
    assert_eq!(mb.messages().len(), 3);
    let last = mb.messages()[2].clone();
    assert_eq!(last.uid, 4);
    assert!(last.recent);
    assert_eq!(
        read_all(&mut mb, 2),
        b"Subject: late\r\n\r\nlate body\r\nFrom the MTA\r\n"
    );
    assert_sizes_exact(&mut mb);
    let reopened = MboxMailbox::open(&path, Access::ReadOnly, helper()).unwrap();
    assert_eq!(
        reopened
            .messages()
            .iter()
            .map(|m| m.uid)
            .collect::<Vec<_>>(),
        vec![2, 3, 4]
    );
    assert_eq!(reopened.uid_validity(), mb.uid_validity());
}

#[test]
fn changes_by_another_session_are_not_clobbered() {
    let dir = TempDir::new("concurrent");
    let path = mailbox_with(&dir, INBOX);
    let mut a = MboxMailbox::open(&path, Access::Shared, helper()).unwrap();
    let mut b = MboxMailbox::open(&path, Access::Shared, helper()).unwrap();
    b.set_flags(1, Flags::FLAGGED);
    b.commit(false).unwrap();
    append(&path, DELIVERED);
    a.set_flags(0, Flags::DELETED);
    a.set_flags(2, Flags::SEEN);
    let report = a.commit(true).unwrap();
    assert_eq!(report.expunged, vec![0]);
    let flags: Vec<Flags> = a.messages().iter().map(|m| m.flags).collect();
    assert_eq!(flags, vec![Flags::FLAGGED, Flags::SEEN, Flags::NONE]);
    let c = MboxMailbox::open(&path, Access::ReadOnly, helper()).unwrap();
    assert_eq!(
        c.messages().iter().map(|m| m.flags).collect::<Vec<_>>(),
        flags
    );
    // b learns that message 1 is gone when it commits next.
    let report = b.commit(false).unwrap();
    assert_eq!(report.expunged, vec![0]);
    assert_eq!(b.messages().len(), 3);
}

#[test]
fn expunging_everything_keeps_uid_state_in_a_pseudo_message() {
    let dir = TempDir::new("expunge-all");
    let path = mailbox_with(&dir, INBOX);
    let mut mb = MboxMailbox::open(&path, Access::Exclusive, helper()).unwrap();
    let validity = mb.uid_validity();
    for i in 0..3 {
        mb.set_flags(i, Flags::DELETED);
    }
    assert_eq!(mb.commit(true).unwrap().expunged, vec![0, 1, 2]);
    assert!(mb.messages().is_empty());
    drop(mb);
    let text = std::fs::read(&path).unwrap();
    assert!(String::from_utf8_lossy(&text).contains(meta::PSEUDO_SUBJECT));
    append(&path, DELIVERED);
    let mb = MboxMailbox::open(&path, Access::Shared, helper()).unwrap();
    assert_eq!(mb.uid_validity(), validity);
    assert_eq!(mb.messages().len(), 1);
    assert_eq!(mb.messages()[0].uid, 4, "UIDs are never reused");
}

#[test]
fn folders_get_a_pseudo_message() {
    let dir = TempDir::new("folder");
    let path = dir.path().join("saved");
    MboxMailbox::create_folder(&path).unwrap();
    assert!(matches!(
        MboxMailbox::create_folder(&path),
        Err(StoreError::Io(..))
    ));
    let mb = MboxMailbox::open_folder(&path, Access::Shared, helper()).unwrap();
    assert!(mb.messages().is_empty());
    let path = mailbox_with(&dir, INBOX);
    let mut mb = MboxMailbox::open_folder(&path, Access::Shared, helper()).unwrap();
    assert_eq!(mb.messages().len(), 3);
    assert_sizes_exact(&mut mb);
    let text = String::from_utf8(std::fs::read(&path).unwrap()).unwrap();
    assert!(text.starts_with("From MAILER-DAEMON "));
    assert!(!text.contains("X-IMAPbase"));
    let again = MboxMailbox::open(&path, Access::Shared, helper()).unwrap();
    assert_eq!(again.messages().len(), 3);
    assert_eq!(again.uid_validity(), mb.uid_validity());
}

fn big_mailbox(messages: usize, body_bytes: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(messages * (body_bytes + 200));
    let line = format!("{}\n", "abcdefghij".repeat(7));
    for i in 0..messages {
        write!(
            out,
            "From sender{i}@example.com Mon Jan  1 10:00:00 2024\nFrom: s{i}@example.com\n\
             Subject: message {i}\nMessage-ID: <{i}@example.com>\n\n"
        )
        .unwrap();
        let mut written = 0;
        while written < body_bytes {
            out.extend_from_slice(line.as_bytes());
            written += line.len();
        }
        out.push(b'\n');
    }
    out
}

#[test]
fn parses_ten_thousand_messages_quickly() {
    let dir = TempDir::new("perf");
    let path = mailbox_with(&dir, &big_mailbox(10_000, 4096));
    let started = std::time::Instant::now();
    let mut mb = MboxMailbox::open(&path, Access::ReadOnly, helper()).unwrap();
    let parse_time = started.elapsed();
    assert_eq!(mb.messages().len(), 10_000);
    // Timings are printed, not asserted: speed is bench/'s business (a loaded machine would
    // fail any bound). What must hold is that one parse indexes everything.
    assert_eq!(FULL_PARSES.with(|n| n.get()), 1);
    let started = std::time::Instant::now();
    let mut total = 0u64;
    for i in 0..mb.messages().len() {
        total += io::copy(&mut mb.open_message(i).unwrap(), &mut io::sink()).unwrap();
    }
    let read_time = started.elapsed();
    let expected: u64 = mb.messages().iter().map(|m| m.size).sum();
    assert_eq!(total, expected);
    eprintln!("parse {parse_time:?}, read {total} bytes in {read_time:?}");
    drop(mb);

    let started = std::time::Instant::now();
    let mut mb = MboxMailbox::open(&path, Access::Shared, helper()).unwrap();
    let persist_time = started.elapsed();
    let started = std::time::Instant::now();
    mb.set_flags(5000, Flags::SEEN);
    mb.commit(false).unwrap();
    let flag_time = started.elapsed();
    let started = std::time::Instant::now();
    mb.set_flags(0, Flags::DELETED);
    assert_eq!(mb.commit(true).unwrap().expunged, vec![0]);
    let expunge_time = started.elapsed();
    assert_eq!(mb.messages().len(), 9_999);
    assert!(mb.messages()[4999].flags.contains(Flags::SEEN));
    assert_eq!(mb.messages()[0].uid, 2);
    eprintln!(
        "persist UIDs {persist_time:?}, flag one {flag_time:?}, expunge first {expunge_time:?}"
    );
}

// ---- crash safety ----------------------------------------------------------------------

/// Run `child` (an ignored test of this binary, by its path) in a child process with `env`,
/// and check that it died in a crash hook (SIGABRT), as a kill would have stopped it.
pub(crate) fn expect_crash(child: &str, env: &[(&str, &str)]) {
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([child, "--exact", "--ignored", "--test-threads=1"])
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGABRT),
        "{child} with {env:?} did not die in the crash hook: {status}"
    );
}

const CRASH_DIR_ENV: &str = "MBOX_TEST_CRASH_DIR";

/// A mailbox with some messages already carrying metadata and some not, so a commit moves,
/// rewrites and keeps messages.
fn crash_fixture() -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..12 {
        write!(
            out,
            "From s{i}@example.com Mon Jan  1 10:00:{i:02} 2024\nMessage-ID: <m{i}@x>\nSubject: {i}\n\n"
        )
        .unwrap();
        for j in 0..(i * 7 % 13 + 1) {
            writeln!(out, "message {i} line {j} {}", "-".repeat(j * 3)).unwrap();
        }
        out.push(b'\n');
    }
    out
}

/// Deleted by the crashing commit (0-based).
const CRASH_DELETED: [usize; 3] = [0, 4, 5];

fn crash_commit(path: &Path) {
    let mut mb = MboxMailbox::open(path, Access::Exclusive, helper()).unwrap();
    for i in CRASH_DELETED {
        mb.set_flags(i, Flags::DELETED);
    }
    mb.set_flags(7, Flags::SEEN.union(Flags::ANSWERED));
    let k = mb.keyword_index("Important").unwrap();
    mb.set_keywords(9, 1 << k);
    mb.commit(true).unwrap();
}

/// Run by `commit_survives_a_kill_at_any_point` in a child process; does nothing otherwise.
#[test]
#[ignore = "helper run in a child process by the crash test"]
fn crash_child() {
    if let Some(dir) = std::env::var_os(CRASH_DIR_ENV) {
        crash_commit(&PathBuf::from(dir).join("user"));
    }
}

fn message_ids(mb: &mut MboxMailbox) -> Vec<(String, Vec<u8>)> {
    (0..mb.messages().len())
        .map(|i| {
            let text = read_all(mb, i);
            let s = String::from_utf8_lossy(&text);
            let id = s
                .lines()
                .find_map(|l| l.strip_prefix("Message-ID: "))
                .unwrap_or("")
                .to_string();
            (id, text)
        })
        .collect()
}

#[test]
fn commit_survives_a_kill_at_any_point() {
    let dir = TempDir::new("crash");
    let path = mailbox_with(&dir, &crash_fixture());
    // Persist UIDs first (without hooks), so the crashing commit is an ordinary one.
    drop(MboxMailbox::open(&path, Access::Exclusive, helper()).unwrap());
    let prepared = std::fs::read(&path).unwrap();
    let mut original = MboxMailbox::open(&path, Access::ReadOnly, helper()).unwrap();
    let originals = message_ids(&mut original);
    drop(original);
    // How many bytes does the commit write? Run it once in a scratch copy.
    let scratch = TempDir::new("crash-scratch");
    let scratch_path = mailbox_with(&scratch, &prepared);
    crash_commit(&scratch_path);
    let final_len = std::fs::metadata(&scratch_path).unwrap().len();
    let at = |point: &str| ("MAILSUITE_CRASH_AT", point.to_string());
    let mut points = vec![at("journal"), at("cut-committed"), at("cut-done")];
    points.extend((0..30).map(|k| {
        (
            "MAILSUITE_CRASH_AFTER_BYTES",
            (k * final_len / 29).to_string(),
        )
    }));
    points.push(("MAILSUITE_CRASH_AFTER_BYTES", (final_len * 2).to_string()));
    let crash_dir = dir.path().to_str().unwrap();
    for (n, point) in points.into_iter().enumerate() {
        std::fs::write(&path, &prepared).unwrap();
        expect_crash(
            "store::mbox::tests::crash_child",
            &[(CRASH_DIR_ENV, crash_dir), (point.0, &point.1)],
        );
        // The killed child left its dotlock; an MTA would take it over as stale after 5 minutes.
        let _ = std::fs::remove_file(dir.path().join("user.lock"));
        // Recovery happens on any open, read-only ones included.
        let access = if n % 2 == 0 {
            Access::Shared
        } else {
            Access::ReadOnly
        };
        let mut mb = MboxMailbox::open(&path, access, helper()).unwrap();
        let now = message_ids(&mut mb);
        for (i, (id, text)) in originals.iter().enumerate() {
            let copies: Vec<_> = now.iter().filter(|(n, _)| n == id).collect();
            if CRASH_DELETED.contains(&i) {
                assert!(copies.len() <= 1, "{id} duplicated at {point:?}");
            } else {
                assert_eq!(copies.len(), 1, "{id} at {point:?}");
            }
            for (_, t) in copies {
                assert_eq!(t, text, "{id} changed at {point:?}");
            }
        }
        assert!(!dir.path().join(".user.mbox-journal").exists());
    }
}

#[test]
fn cut_left_undone_by_a_kill_is_finished_keeping_mail_delivered_since() {
    let dir = TempDir::new("cut-crash");
    let path = mailbox_with(&dir, &crash_fixture());
    drop(MboxMailbox::open(&path, Access::Exclusive, helper()).unwrap());
    let mut original = MboxMailbox::open(&path, Access::ReadOnly, helper()).unwrap();
    let originals = message_ids(&mut original);
    drop(original);
    let crash_dir = dir.path().to_str().unwrap();
    for point in ["cut-committed", "cut-done"] {
        let before = std::fs::read(&path).unwrap();
        expect_crash(
            "store::mbox::tests::crash_child",
            &[(CRASH_DIR_ENV, crash_dir), ("MAILSUITE_CRASH_AT", point)],
        );
        let _ = std::fs::remove_file(dir.path().join("user.lock"));
        let left = std::fs::read(&path).unwrap();
        assert_eq!(
            left.len() == before.len(),
            point == "cut-committed",
            "the file is cut only after the commit record"
        );
        // An MTA delivers before any of our sessions runs the recovery.
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        file.write_all(
            b"From mta@example.com Tue Jan  2 10:00:00 2024\nMessage-ID: <late@x>\n\nlate\n\n",
        )
        .unwrap();
        drop(file);
        let mut mb = MboxMailbox::open(&path, Access::Shared, helper()).unwrap();
        let now = message_ids(&mut mb);
        let ids: Vec<&str> = now.iter().map(|(id, _)| id.as_str()).collect();
        let mut want: Vec<&str> = originals
            .iter()
            .enumerate()
            .filter(|(i, _)| !CRASH_DELETED.contains(i))
            .map(|(_, (id, _))| id.as_str())
            .collect();
        want.push("<late@x>");
        assert_eq!(ids, want, "after a kill at {point}");
        assert!(!dir.path().join(".user.mbox-journal").exists());
        drop(mb);
        std::fs::write(&path, &before).unwrap();
    }
}

// ---- compaction (an EXPUNGE that only moves messages) -----------------------------------

const COMPACT_DIR_ENV: &str = "MBOX_TEST_COMPACT_DIR";

/// 40 messages of varied sizes, UIDs and flags already on disk.
fn compaction_fixture(dir: &TempDir) -> PathBuf {
    let mut out = Vec::new();
    for i in 0..40 {
        write!(
            out,
            "From s{i}@example.com Mon Jan  1 10:00:{:02} 2024\nMessage-ID: <c{i}@x>\n\n",
            i % 60
        )
        .unwrap();
        for j in 0..(i * 11 % 17 + 2) {
            writeln!(out, "message {i} line {j} {}", "=".repeat(j * 5)).unwrap();
        }
        out.push(b'\n');
    }
    let path = mailbox_with(dir, &out);
    drop(MboxMailbox::open(&path, Access::Exclusive, helper()).unwrap());
    path
}

/// Expunge every other message (0-based even ones): only moves, so a compaction.
fn compaction_commit(path: &Path) {
    let mut mb = MboxMailbox::open(path, Access::Shared, helper()).unwrap();
    for i in (0..mb.messages().len()).step_by(2) {
        mb.set_flags(i, Flags::DELETED);
    }
    mb.commit(true).unwrap();
}

/// Run by `compaction_survives_a_kill_at_any_point` in a child process; does nothing otherwise.
#[test]
#[ignore = "helper run in a child process by the compaction crash test"]
fn compaction_child() {
    if let Some(dir) = std::env::var_os(COMPACT_DIR_ENV) {
        compaction_commit(&PathBuf::from(dir).join("user"));
    }
}

#[test]
fn compaction_survives_a_kill_at_any_point() {
    let dir = TempDir::new("compact-crash");
    let path = compaction_fixture(&dir);
    let prepared = std::fs::read(&path).unwrap();
    let mut original = MboxMailbox::open(&path, Access::ReadOnly, helper()).unwrap();
    let originals = message_ids(&mut original);
    let uids: Vec<u32> = original.messages().iter().map(|m| m.uid).collect();
    drop(original);
    // Done once in this process: it is a compaction, and how many bytes it moves.
    let before = COMPACTIONS.with(|n| n.get());
    compaction_commit(&path);
    assert_eq!(
        COMPACTIONS.with(|n| n.get()),
        before + 1,
        "not a compaction"
    );
    let moved = prepared.len() as u64; // an upper bound: the crash points spread over it
    let at = |point: &str| ("MAILSUITE_CRASH_AT", point.to_string());
    let mut points = vec![
        at("journal"),
        at("first-step-done"),
        at("step-done"),
        at("cut-committed"),
        at("cut-done"),
    ];
    points.extend((0..40).map(|k| ("MAILSUITE_CRASH_AFTER_BYTES", (k * moved / 80).to_string())));
    let crash_dir = dir.path().to_str().unwrap();
    let late = b"From mta@example.com Tue Jan  2 10:00:00 2024\nMessage-ID: <late@x>\n\nlate\n\n";
    for (n, point) in points.into_iter().enumerate() {
        std::fs::write(&path, &prepared).unwrap();
        expect_crash(
            "store::mbox::tests::compaction_child",
            &[(COMPACT_DIR_ENV, crash_dir), (point.0, &point.1)],
        );
        let _ = std::fs::remove_file(dir.path().join("user.lock"));
        // Every other run, an MTA delivers before any session recovers.
        if n % 2 == 1 {
            let mut file = OpenOptions::new().append(true).open(&path).unwrap();
            file.write_all(late).unwrap();
        }
        let access = if n % 4 < 2 {
            Access::Shared
        } else {
            Access::ReadOnly
        };
        let mut mb = MboxMailbox::open(&path, access, helper()).unwrap();
        let now = message_ids(&mut mb);
        // The journal was synced before the first move: recovery goes forward, never back.
        let mut want: Vec<(String, Vec<u8>)> =
            originals.iter().skip(1).step_by(2).cloned().collect();
        let want_uids: Vec<u32> = uids.iter().skip(1).step_by(2).copied().collect();
        let got_uids: Vec<u32> = mb
            .messages()
            .iter()
            .map(|m| m.uid)
            .take(want_uids.len())
            .collect();
        if n % 2 == 1 {
            want.push(("<late@x>".to_string(), b"late\n".to_vec()));
        }
        assert_eq!(now.len(), want.len(), "at {point:?}");
        for ((id, text), (want_id, want_text)) in now.iter().zip(&want) {
            assert_eq!(id, want_id, "at {point:?}");
            if want_id != "<late@x>" {
                assert_eq!(text, want_text, "{id} changed at {point:?}");
            }
        }
        assert_eq!(got_uids, want_uids, "UIDs at {point:?}");
        assert!(!dir.path().join(".user.mbox-journal").exists());
    }
}

// ---- disk full --------------------------------------------------------------------------

const FULL_DIR_ENV: &str = "MBOX_TEST_FULL_DIR";
const FULL_LIMIT_ENV: &str = "MBOX_TEST_FULL_LIMIT";
const LONG_KEYWORD: &str = "Important-keyword-with-a-long-name";

/// Makes the last three messages' metadata grow, so the file must get longer.
fn growing_commit(path: &Path) -> Result<CommitReport, StoreError> {
    let mut mb = MboxMailbox::open(path, Access::Shared, helper())?;
    let k = mb.keyword_index(LONG_KEYWORD).unwrap();
    let n = mb.messages().len();
    for i in n - 3..n {
        mb.set_keywords(i, 1 << k);
    }
    mb.commit(false)
}

/// Run by `disk_full_leaves_the_mailbox_untouched` in a child whose file size limit makes
/// writes fail with EFBIG, as a full disk makes them fail with ENOSPC.
#[test]
#[ignore = "helper run in a child process by the disk-full test"]
fn disk_full_child() {
    let (Some(dir), Some(limit)) = (
        std::env::var_os(FULL_DIR_ENV),
        std::env::var_os(FULL_LIMIT_ENV),
    ) else {
        return;
    };
    let limit: libc::rlim_t = limit.to_string_lossy().parse().unwrap();
    let rlimit = libc::rlimit {
        rlim_cur: limit,
        rlim_max: limit,
    };
    // SAFETY: plain FFI calls with valid arguments; ignoring SIGXFSZ makes oversized writes
    // fail with EFBIG instead of killing the process, and the limit applies to this child only.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &rlimit), 0);
    }
    match growing_commit(&PathBuf::from(dir).join("user")) {
        Err(StoreError::Io(_, e)) => eprintln!("refused as expected: {e}"),
        other => panic!("expected an I/O error, got {other:?}"),
    }
}

#[test]
fn disk_full_leaves_the_mailbox_untouched() {
    let dir = TempDir::new("full");
    let path = mailbox_with(&dir, &crash_fixture());
    drop(MboxMailbox::open(&path, Access::Exclusive, helper()).unwrap());
    let prepared = std::fs::read(&path).unwrap();
    let len = prepared.len() as u64;
    let exe = std::env::current_exe().unwrap();
    // 100 bytes: the journal cannot be written. len + 1: the journal fits, the file cannot grow.
    for limit in [100, len + 1] {
        let out = std::process::Command::new(&exe)
            .args([
                "store::mbox::tests::disk_full_child",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(FULL_DIR_ENV, dir.path())
            .env(FULL_LIMIT_ENV, limit.to_string())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "limit {limit}: {stderr}");
        assert!(
            stderr.contains("refused as expected"),
            "limit {limit}: {stderr}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), prepared, "limit {limit}");
        assert!(!dir.path().join(".user.mbox-journal").exists());
    }
    growing_commit(&path).unwrap();
    let mb = MboxMailbox::open(&path, Access::ReadOnly, helper()).unwrap();
    assert!(std::fs::metadata(&path).unwrap().len() > len);
    assert_eq!(mb.keyword_names(), [LONG_KEYWORD]);
    assert_eq!(mb.messages().iter().filter(|m| m.keywords == 1).count(), 3);
}

// ---- randomized round trips ---------------------------------------------------------------

/// A tiny deterministic generator (xorshift), shared by the store's randomized tests so
/// that failures repeat.
pub(crate) struct XorShift(pub u64);

impl XorShift {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// An index below `n` (0 when `n` is 0).
    pub fn index(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a [u8]]) -> &'a [u8] {
        items[self.index(items.len())]
    }
}

fn random_mailbox(rng: &mut XorShift) -> Vec<u8> {
    const FROM: [&[u8]; 4] = [
        b"From a@b Mon Jan  1 10:00:00 2024\n",
        b"From x y Tue Feb 13 01:02 PST 1990\n",
        b"From z@w Wed Mar  3 23:59:59 2021 -0700 remote from q\n",
        b"From c@d Thu Apr  4 04:04:04 2004\r\n",
    ];
    const HEADER: [&[u8]; 14] = [
        b"Subject: hello\n",
        b"Status: RO\n",
        b"X-UID: 7\n",
        b"x-status: F\n",
        b"X-Status: DA\n",
        b"Content-Length: 5\n",
        b"X-Keywords: a b\n",
        b" continuation\n",
        b"\tmore\r\n",
        b"Subject: From x Mon Jan  1 10:00:00 2024\n",
        b"X-IMAPbase: 5 9 a b\n",
        b"To: \xff\xfe\n",
        b"Received: by x\r\n",
        b"X-Other: y\n",
    ];
    const BODY: [&[u8]; 9] = [
        b"\n",
        b"From the desk\n",
        b">From x Mon Jan  1 10:00:00 2024\n",
        b"line\r\n",
        b"lone\rcr\n",
        b"8bit \xff\x80\n",
        b"\r\n",
        b"text text text\n",
        b"Status: RO\n",
    ];
    let mut out = Vec::new();
    for _ in 0..1 + rng.next() % 8 {
        out.extend_from_slice(rng.pick(&FROM));
        for _ in 0..rng.next() % 7 {
            out.extend_from_slice(rng.pick(&HEADER));
        }
        out.extend_from_slice(b"\n");
        for _ in 0..rng.next() % 6 {
            out.extend_from_slice(rng.pick(&BODY));
        }
        if !rng.next().is_multiple_of(3) {
            out.extend_from_slice(b"\n");
        }
    }
    out
}

fn snapshot(mb: &mut MboxMailbox) -> Vec<(u32, Flags, Vec<u8>)> {
    (0..mb.messages().len())
        .map(|i| {
            (
                mb.messages()[i].uid,
                mb.messages()[i].flags,
                read_all(mb, i),
            )
        })
        .collect()
}

#[test]
fn random_mailboxes_round_trip_through_commits() {
    let dir = TempDir::new("random");
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
    for round in 0..150 {
        let bytes = random_mailbox(&mut rng);
        let path = mailbox_with(&dir, &bytes);
        let mut ro = MboxMailbox::open(&path, Access::ReadOnly, helper()).unwrap();
        assert_sizes_exact(&mut ro);
        let ro_texts: Vec<Vec<u8>> = snapshot(&mut ro).into_iter().map(|(_, _, t)| t).collect();
        drop(ro);
        let mut mb = MboxMailbox::open(&path, Access::Shared, helper()).unwrap();
        let before = snapshot(&mut mb);
        let texts: Vec<Vec<u8>> = before.iter().map(|(_, _, t)| t.clone()).collect();
        assert_eq!(
            texts, ro_texts,
            "round {round}: persisting UIDs changed text"
        );
        let mut expected = Vec::new();
        for (i, (uid, _, text)) in before.iter().enumerate() {
            let flags = Flags::from_bits((rng.next() % 32) as u8);
            mb.set_flags(i, flags);
            if !flags.contains(Flags::DELETED) {
                expected.push((*uid, flags, text.clone()));
            }
        }
        mb.commit(true).unwrap();
        let mut after = MboxMailbox::open(&path, Access::ReadOnly, helper()).unwrap();
        assert_eq!(after.uid_validity(), mb.uid_validity(), "round {round}");
        assert_eq!(
            snapshot(&mut after),
            expected,
            "round {round}: {:?}",
            String::from_utf8_lossy(&bytes)
        );
        assert_eq!(
            snapshot(&mut mb),
            expected,
            "round {round}: session index after commit"
        );
    }
}

// ---- reading while another process rewrites ------------------------------------------------

const REWRITE_DIR_ENV: &str = "MBOX_TEST_REWRITE_DIR";

/// A message that describes itself: its serial number in the header and body lines whose
/// number and length depend on it, so a read of the wrong bytes cannot pass for it.
fn serial_message(serial: u64) -> Vec<u8> {
    let mut out = format!("X-Serial: {serial}\nSubject: message {serial}\n\n").into_bytes();
    for line in 0..serial % 17 + 1 {
        let pad = "=".repeat(((serial * 7 + line * 3) % 61) as usize);
        writeln!(out, "serial {serial} line {line} {pad}").unwrap();
    }
    out
}

/// How `serial_message` is presented: CRLF line ends.
fn presented_serial_message(serial: u64) -> Vec<u8> {
    let mut out = Vec::new();
    for &b in &serial_message(serial) {
        if b == b'\n' {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}

fn serial_of(presented: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(presented).ok()?;
    text.strip_prefix("X-Serial: ")?
        .split("\r\n")
        .next()?
        .parse()
        .ok()
}

fn append_serials(path: &Path, serials: std::ops::Range<u64>) {
    let mut mb = MboxMailbox::open(path, Access::Shared, helper()).unwrap();
    let texts: Vec<Vec<u8>> = serials.map(serial_message).collect();
    let mut sources: Vec<&[u8]> = texts.iter().map(Vec::as_slice).collect();
    let mut messages: Vec<NewMessage<'_>> = sources
        .iter_mut()
        .map(|source| NewMessage {
            len: Some(source.len() as u64),
            source,
            flags: Flags::NONE,
            keywords: &[],
            internal_date: None,
        })
        .collect();
    mb.append(&mut messages).unwrap();
}

/// Run by `reads_never_return_bytes_a_concurrent_rewrite_moved` in a child process: rewrite the
/// mailbox in place (expunge, flag changes, appends) until told to stop.
#[test]
#[ignore = "helper run in a child process by the concurrent-read test"]
fn rewriter_child() {
    let Some(dir) = std::env::var_os(REWRITE_DIR_ENV).map(PathBuf::from) else {
        return;
    };
    let path = dir.join("user");
    let give_up = std::time::Instant::now() + Duration::from_secs(60);
    let mut serial = 1000;
    while !dir.join("stop").exists() && std::time::Instant::now() < give_up {
        let mut mb = MboxMailbox::open(&path, Access::Shared, helper()).unwrap();
        let n = mb.messages().len();
        for i in 0..n.saturating_sub(8) {
            mb.set_flags(i, Flags::DELETED);
        }
        if n > 0 {
            let i = serial as usize % n;
            let flags = mb.messages()[i].flags;
            mb.set_flags(i, Flags::from_bits(flags.bits() ^ Flags::SEEN.bits()));
        }
        mb.commit(true).unwrap();
        drop(mb);
        append_serials(&path, serial..serial + 1 + serial % 2);
        serial += 2;
        std::thread::sleep(Duration::from_millis(2));
    }
    eprintln!("rewriter done at serial {serial}");
}

#[test]
fn reads_never_return_bytes_a_concurrent_rewrite_moved() {
    let dir = TempDir::new("concurrent");
    let path = dir.path().join("user");
    std::fs::write(&path, b"").unwrap();
    append_serials(&path, 1..11);
    let child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "store::mbox::tests::rewriter_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(REWRITE_DIR_ENV, dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut mb = MboxMailbox::open(&path, Access::ReadOnly, helper()).unwrap();
    let mut serial_of_uid = std::collections::HashMap::new();
    let (mut verified, mut changed, mut passes) = (0u32, 0u32, 0u32);
    let start = std::time::Instant::now();
    let enough = |verified, changed, elapsed: Duration| {
        elapsed > Duration::from_secs(20)
            || (elapsed > Duration::from_secs(2) && verified >= 300 && changed >= 5)
    };
    while !enough(verified, changed, start.elapsed()) {
        passes += 1;
        for i in 0..mb.messages().len() {
            let info = mb.messages()[i].clone();
            let mut text = Vec::new();
            let read = mb
                .open_message(i)
                .and_then(|mut reader| reader.read_to_end(&mut text));
            match read {
                Ok(_) => {}
                Err(e) if crate::store::is_mailbox_changed(&e) => {
                    changed += 1;
                    break;
                }
                Err(e) => panic!("message {} (UID {}): {e}", i + 1, info.uid),
            }
            let serial = serial_of(&text)
                .unwrap_or_else(|| panic!("UID {}: wrong bytes {text:?}", info.uid));
            assert_eq!(text, presented_serial_message(serial), "UID {}", info.uid);
            assert_eq!(text.len() as u64, info.size, "UID {}", info.uid);
            let first = *serial_of_uid.entry(info.uid).or_insert(serial);
            assert_eq!(
                first, serial,
                "UID {} now reads as another message",
                info.uid
            );
            verified += 1;
        }
        // Read a stale index now and then, as a session does between two commands.
        if passes % 3 == 0 {
            mb.refresh().unwrap();
        }
    }
    eprintln!(
        "{passes} passes: {verified} verified, {changed} changed, {:?}",
        start.elapsed()
    );
    std::fs::write(dir.path().join("stop"), b"").unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "rewriter failed: {stderr}");
    assert!(
        stderr.contains("rewriter done"),
        "rewriter did not run: {stderr}"
    );
    assert!(verified >= 300, "only {verified} messages verified");
    assert!(
        changed >= 5,
        "the rewriter never changed the file under a read ({changed})"
    );
}

#[test]
fn hold_message_sees_a_rewrite_and_then_keeps_writers_out() {
    let dir = TempDir::new("hold");
    let path = dir.path().join("user");
    std::fs::write(&path, b"").unwrap();
    append_serials(&path, 1..4);
    let mut reader = MboxMailbox::open(&path, Access::Shared, helper()).unwrap();
    let mut other = MboxMailbox::open(&path, Access::Shared, helper()).unwrap();
    other.set_flags(0, Flags::DELETED);
    other.commit(true).unwrap();
    // Message 2 moved: holding it by the stale index must fail, not read someone else's bytes.
    let stale = reader.hold_message(1).unwrap_err();
    assert!(crate::store::is_mailbox_changed(&stale), "{stale}");
    reader.refresh().unwrap();
    reader.hold_message(0).unwrap();
    let writer = std::thread::spawn(move || {
        other.set_flags(0, Flags::DELETED);
        other.commit(true).unwrap();
        std::time::Instant::now()
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(read_all(&mut reader, 0), presented_serial_message(2));
    assert_eq!(read_all(&mut reader, 1), presented_serial_message(3));
    assert_eq!(
        read_all(&mut reader, 0),
        presented_serial_message(2),
        "read twice"
    );
    let released = std::time::Instant::now();
    reader.release_message();
    let committed = writer.join().unwrap();
    assert!(
        committed >= released,
        "the writer did not wait for the hold"
    );
    let stale = reader.hold_message(0).unwrap_err();
    assert!(crate::store::is_mailbox_changed(&stale), "{stale}");
}

#[test]
fn reading_from_an_offset_matches_the_whole_message() {
    let dir = TempDir::new("offset");
    let mut body = Vec::new();
    let mut n = 0;
    while body.len() < 700 * 1024 {
        let end: &[u8] = if n % 4 == 0 { b"\r\n" } else { b"\n" };
        body.extend_from_slice(format!("line {n} {}", "y".repeat(n % 77)).as_bytes());
        body.extend_from_slice(end);
        n += 1;
    }
    let mut mbox = b"From a@b Mon Jan  1 00:00:00 2024\nSubject: big\nStatus: RO\n\n".to_vec();
    mbox.extend_from_slice(&body);
    mbox.extend_from_slice(b"\nFrom c@d Mon Jan  1 00:00:01 2024\nSubject: small\n\nhi\n");
    let path = mailbox_with(&dir, &mbox);
    let mut mb = MboxMailbox::open(&path, Access::ReadOnly, helper()).unwrap();
    let full = read_all(&mut mb, 0);
    let size = full.len() as u64;
    assert_eq!(size, mb.messages()[0].size);
    let header_len = full.windows(4).position(|w| w == b"\r\n\r\n").unwrap() as u64 + 4;
    let chunk = 256 * 1024;
    let mut offsets = vec![0, 1, header_len - 1, header_len, header_len + 1];
    offsets.extend([
        header_len + chunk - 1,
        header_len + chunk,
        size - 1,
        size,
        size + 3,
    ]);
    let from = |mb: &mut MboxMailbox, i: usize, offset: u64| {
        let mut out = Vec::new();
        mb.open_message_at(i, offset)
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        out
    };
    for offset in offsets {
        let want = &full[full.len().min(offset as usize)..];
        assert!(from(&mut mb, 0, offset) == want, "offset {offset}");
    }
    // Pieces in order (each may start from where the last one did), then one far behind.
    let mut offset = 0;
    while offset < size {
        assert!(
            from(&mut mb, 0, offset) == full[offset as usize..],
            "piece at {offset}"
        );
        offset += 65_536;
    }
    assert!(from(&mut mb, 0, header_len + 2) == full[header_len as usize + 2..]);
    // A point found in one message is never used for another.
    assert_eq!(from(&mut mb, 1, 0), read_all(&mut mb, 1));
    let small = read_all(&mut mb, 1);
    assert_eq!(from(&mut mb, 1, small.len() as u64 - 4), b"hi\r\n");
}

// ---- the index we compute after our own writes ---------------------------------------------

/// After every rewrite in the tests: the index computed from what was written (instead of
/// reading the file back) must be exactly what a full parse of the file says.
pub(super) fn assert_matches_disk(file: &File, len: u64, ours: &parse::Parsed) {
    let disk = parse::parse(file, len, 0).unwrap();
    assert_eq!(ours.entries, disk.entries, "entries");
    assert_eq!(ours.first_meta, disk.first_meta, "first_meta");
    assert_eq!(ours.pseudo, disk.pseudo, "pseudo");
    assert_eq!(ours.has_base, disk.has_base, "has_base");
    assert_eq!(ours.uid_validity, disk.uid_validity, "uid_validity");
    assert_eq!(ours.uid_last, disk.uid_last, "uid_last");
    assert_eq!(ours.keywords, disk.keywords, "keywords");
    assert!(!disk.needs_persist, "needs_persist");
    let strip = |v: &[MessageInfo]| -> Vec<MessageInfo> {
        v.iter()
            .map(|i| MessageInfo {
                recent: false,
                ..i.clone()
            })
            .collect()
    };
    assert_eq!(strip(&ours.infos), strip(&disk.infos), "infos");
}

// ---- in-place metadata patches -------------------------------------------------------------

fn patch_writes() -> usize {
    PATCH_WRITES.with(|n| n.get())
}

fn full_parses() -> usize {
    FULL_PARSES.with(|n| n.get())
}

/// The crash fixture with UIDs and metadata persisted by a first session.
fn prepared_mailbox(dir: &TempDir) -> PathBuf {
    let path = mailbox_with(dir, &crash_fixture());
    drop(MboxMailbox::open(&path, Access::Exclusive, helper()).unwrap());
    path
}

/// Every byte that differs between `a` and `b` (same length) lies in a metadata header line.
fn assert_only_metadata_differs(a: &[u8], b: &[u8]) {
    assert_eq!(a.len(), b.len());
    let mut differing = 0;
    for i in (0..a.len()).filter(|&i| a[i] != b[i]) {
        differing += 1;
        let start = b[..i]
            .iter()
            .rposition(|&c| c == b'\n')
            .map_or(0, |p| p + 1);
        let line = &b[start..];
        assert!(
            [
                &b"Status: "[..],
                b"X-Status: ",
                b"X-Keywords:",
                b"X-IMAPbase: "
            ]
            .iter()
            .any(|p| line.starts_with(p)),
            "byte {i} changed outside the metadata: {:?}",
            String::from_utf8_lossy(&line[..line.len().min(40)])
        );
    }
    assert!(differing > 0);
}

#[test]
fn flag_changes_are_patched_in_place() {
    let dir = TempDir::new("patch");
    let path = prepared_mailbox(&dir);
    let before = std::fs::read(&path).unwrap();
    let mut mb = MboxMailbox::open(&path, Access::Shared, helper()).unwrap();
    let n = mb.messages().len();
    for i in 0..n {
        mb.set_flags(i, Flags::SEEN.union(Flags::FLAGGED));
    }
    let junk = mb.keyword_index("Junk").unwrap();
    mb.set_keywords(3, 1 << junk);
    let (patches, parses) = (patch_writes(), full_parses());
    mb.commit(false).unwrap();
    assert_eq!(patch_writes(), patches + 1, "not patched in place");
    assert_eq!(full_parses(), parses, "read back after our own write");
    let after = std::fs::read(&path).unwrap();
    assert_only_metadata_differs(&before, &after);
    assert!(!dir.path().join(".user.mbox-journal").exists());
    assert_sizes_exact(&mut mb);
    let mut reopened = MboxMailbox::open(&path, Access::ReadOnly, helper()).unwrap();
    for (i, m) in reopened.messages().iter().enumerate() {
        assert_eq!(m.flags, Flags::SEEN.union(Flags::FLAGGED), "message {i}");
        assert_eq!(m.keywords, if i == 3 { 1 } else { 0 }, "message {i}");
    }
    assert_eq!(reopened.keyword_names(), ["Junk".to_string()]);
    assert_sizes_exact(&mut reopened);
    // A change that does not fit in the padding falls back to a full rewrite.
    let long = ["a", "b"].map(|c| c.repeat(40));
    let bits = long
        .iter()
        .map(|k| 1u64 << mb.keyword_index(k).unwrap())
        .sum();
    mb.set_keywords(5, bits);
    let patches = patch_writes();
    mb.commit(false).unwrap();
    assert_eq!(patch_writes(), patches);
    assert!(std::fs::metadata(&path).unwrap().len() > before.len() as u64);
    let reopened = MboxMailbox::open(&path, Access::ReadOnly, helper()).unwrap();
    assert_eq!(reopened.messages()[5].keywords.count_ones(), 2);
    assert_eq!(reopened.messages()[3].keywords, 1);
}

#[test]
fn patches_merge_two_sessions_and_keep_deliveries() {
    let dir = TempDir::new("patch-sessions");
    let path = prepared_mailbox(&dir);
    let mut a = MboxMailbox::open(&path, Access::Shared, helper()).unwrap();
    let mut b = MboxMailbox::open(&path, Access::Shared, helper()).unwrap();
    a.set_flags(1, Flags::FLAGGED);
    let patches = patch_writes();
    a.commit(false).unwrap();
    assert_eq!(patch_writes(), patches + 1);
    append(&path, DELIVERED);
    b.set_flags(1, Flags::SEEN);
    b.set_flags(2, Flags::ANSWERED);
    b.commit(false).unwrap();
    assert_eq!(b.messages().len(), 13);
    assert_eq!(b.messages()[1].flags, Flags::SEEN.union(Flags::FLAGGED));
    // Both sessions patch again, each merging the other's change first.
    a.set_flags(4, Flags::DRAFT);
    a.commit(false).unwrap();
    b.set_flags(6, Flags::DELETED);
    let patches = patch_writes();
    b.commit(false).unwrap();
    assert_eq!(patch_writes(), patches + 1);
    a.refresh().unwrap();
    for mb in [&mut a, &mut b] {
        let flags: Vec<Flags> = mb.messages().iter().map(|m| m.flags).collect();
        assert_eq!(flags[1], Flags::SEEN.union(Flags::FLAGGED));
        assert_eq!(flags[2], Flags::ANSWERED);
        assert_eq!(flags[4], Flags::DRAFT);
        assert_eq!(flags[6], Flags::DELETED);
        assert_sizes_exact(mb);
    }
    let mut reopened = MboxMailbox::open(&path, Access::ReadOnly, helper()).unwrap();
    assert_eq!(reopened.messages().len(), 13);
    assert_eq!(
        read_all(&mut reopened, 12),
        b"Subject: late\r\n\r\nlate body\r\nFrom the MTA\r\n"
    );
}

const PATCH_CRASH_DIR_ENV: &str = "MBOX_TEST_PATCH_CRASH_DIR";
/// Set for the child: its STORE also gives message 0 a keyword new to the mailbox.
const PATCH_KEYWORD_ENV: &str = "MBOX_TEST_PATCH_KEYWORD";

fn patch_commit(path: &Path, new_keyword: bool) {
    let mut mb = MboxMailbox::open(path, Access::Shared, helper()).unwrap();
    for i in 0..mb.messages().len() {
        mb.set_flags(i, Flags::SEEN.union(Flags::ANSWERED));
    }
    if new_keyword {
        let bit = mb.keyword_index("Junk").unwrap();
        mb.set_keywords(0, 1 << bit);
    }
    mb.commit(false).unwrap();
}

/// Run by the patch crash tests in a child process; does nothing otherwise.
#[test]
#[ignore = "helper run in a child process by the patch crash tests"]
fn patch_crash_child() {
    if let Some(dir) = std::env::var_os(PATCH_CRASH_DIR_ENV) {
        let keyword = std::env::var_os(PATCH_KEYWORD_ENV).is_some();
        patch_commit(&PathBuf::from(dir).join("user"), keyword);
    }
}

/// Run the patch commit in a child that dies at `point` (`MAILSUITE_CRASH_AT` or, as a
/// number, `MAILSUITE_CRASH_AFTER_BYTES`); returns the file as the kill left it.
fn killed_patch(dir: &TempDir, prepared: &[u8], keyword: bool, point: &str) -> Vec<u8> {
    let path = dir.path().join("user");
    std::fs::write(&path, prepared).unwrap();
    let hook = match point.parse::<u64>() {
        Ok(_) => "MAILSUITE_CRASH_AFTER_BYTES",
        Err(_) => "MAILSUITE_CRASH_AT",
    };
    let mut env = vec![
        (PATCH_CRASH_DIR_ENV, dir.path().to_str().unwrap()),
        (hook, point),
    ];
    if keyword {
        env.push((PATCH_KEYWORD_ENV, "1"));
    }
    expect_crash("store::mbox::tests::patch_crash_child", &env);
    let _ = std::fs::remove_file(dir.path().join("user.lock"));
    std::fs::read(&path).unwrap()
}

/// The file as a completed patch commit leaves it, and how many bytes it changes.
fn patched_copy(prepared: &[u8], keyword: bool) -> (Vec<u8>, u64) {
    let scratch = TempDir::new("patch-crash-scratch");
    let scratch_path = mailbox_with(&scratch, prepared);
    let patches = patch_writes();
    patch_commit(&scratch_path, keyword);
    assert_eq!(patch_writes(), patches + 1, "not a same-length patch");
    let patched = std::fs::read(&scratch_path).unwrap();
    let written = (0..prepared.len())
        .filter(|&i| prepared[i] != patched[i])
        .count() as u64;
    (patched, written)
}

/// A STORE of flags writes no journal: a kill between any two writes leaves every message
/// with its old or its new metadata block (at most one, cut between the halves of a patch
/// across a sector boundary, shows a mixture that still parses), its text and its UID.
#[test]
fn flag_patches_survive_a_kill_at_any_point_without_a_journal() {
    let dir = TempDir::new("patch-crash");
    let path = prepared_mailbox(&dir);
    let prepared = std::fs::read(&path).unwrap();
    let (patched, written) = patched_copy(&prepared, false);
    let index = parse::parse(&File::open(&path).unwrap(), prepared.len() as u64, 0).unwrap();
    let ranges: Vec<std::ops::Range<usize>> = index
        .entries
        .iter()
        .map(|e| e.from_off as usize..e.next_off as usize)
        .collect();
    for (n, point) in (0..=written).chain([1 << 40]).enumerate() {
        let torn = killed_patch(&dir, &prepared, false, &point.to_string());
        assert_eq!(torn.len(), prepared.len());
        if point == 0 {
            assert_eq!(torn, prepared);
        }
        if point >= written {
            assert_eq!(torn, patched);
        }
        let mixed = ranges
            .iter()
            .filter(|r| torn[(*r).clone()] != prepared[(*r).clone()])
            .filter(|r| torn[(*r).clone()] != patched[(*r).clone()])
            .count();
        assert!(mixed <= 1, "{mixed} messages half-patched at {point}");
        let torn_index = parse::parse(&File::open(&path).unwrap(), torn.len() as u64, 0).unwrap();
        let uids: Vec<u32> = torn_index.infos.iter().map(|i| i.uid).collect();
        assert_eq!(uids, (1..=12).collect::<Vec<u32>>(), "torn at {point}");
        let access = if n % 2 == 0 {
            Access::Shared
        } else {
            Access::ReadOnly
        };
        let mut mb = MboxMailbox::open(&path, access, helper()).unwrap();
        assert_eq!(mb.messages().len(), 12);
        assert_sizes_exact(&mut mb);
        for i in 0..12 {
            assert!(read_all(&mut mb, i).starts_with(format!("Message-ID: <m{i}@x>").as_bytes()));
        }
        assert!(!dir.path().join(".user.mbox-journal").exists());
    }
}

/// A patch of `X-IMAPbase` (a keyword new to the mailbox) goes through the journal: a kill
/// while it is written is undone by the next open.
#[test]
fn base_patch_survives_a_kill_through_its_journal() {
    let dir = TempDir::new("patch-crash-base");
    let path = prepared_mailbox(&dir);
    let prepared = std::fs::read(&path).unwrap();
    let (patched, _) = patched_copy(&prepared, true);
    assert!(String::from_utf8_lossy(&patched).contains(" Junk\n"));
    for point in ["journal", "0", "3"] {
        let torn = killed_patch(&dir, &prepared, true, point);
        assert_eq!(torn.len(), prepared.len());
        assert!(dir.path().join(".user.mbox-journal").exists(), "at {point}");
        let mut mb = MboxMailbox::open(&path, Access::ReadOnly, helper()).unwrap();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            prepared,
            "not restored at {point}"
        );
        assert_eq!(mb.messages().len(), 12);
        assert_sizes_exact(&mut mb);
        assert!(!dir.path().join(".user.mbox-journal").exists());
    }
}

// ---- APPEND into the open mailbox ----------------------------------------------------------

#[test]
fn own_appends_need_no_parse_and_refresh_reads_only_the_tail() {
    let dir = TempDir::new("own-append");
    let path = prepared_mailbox(&dir);
    let mut mb = MboxMailbox::open(&path, Access::Shared, helper()).unwrap();
    let mut other = MboxMailbox::open(&path, Access::Shared, helper()).unwrap();
    mb.set_flags(2, Flags::FLAGGED);
    mb.commit(false).unwrap();
    let parses = full_parses();
    let tails = TAIL_ONLY.with(|n| n.get());
    let patches = patch_writes();
    let keywords = vec!["Appended".to_string()];
    for n in 0..3u32 {
        let text = format!("Subject: appended {n}\n\nbody {n}\nFrom here\n");
        let date = Some((1_706_788_800, 0));
        let uids = append_text(&mut mb, text.as_bytes(), Flags::SEEN, &keywords, date);
        assert_eq!(uids, vec![13 + n]);
        let changes = mb.refresh().unwrap();
        assert_eq!(changes.appended, 1);
        assert!(mb.messages().last().unwrap().recent);
    }
    assert_eq!(
        full_parses(),
        parses,
        "APPEND or its refresh parsed the whole file"
    );
    assert_eq!(
        TAIL_ONLY.with(|n| n.get()),
        tails + 3,
        "refresh re-read old headers"
    );
    assert_eq!(
        patch_writes(),
        patches,
        "appended without O, claimed by a second write"
    );
    assert_eq!(mb.messages().len(), 15);
    assert_sizes_exact(&mut mb);
    other.refresh().unwrap();
    assert!(
        other.messages()[12..].iter().all(|m| !m.recent),
        "claimed by the appender"
    );
    let mut fresh = MboxMailbox::open(&path, Access::ReadOnly, helper()).unwrap();
    for view in [&mut mb, &mut other] {
        let got: Vec<_> = view
            .messages()
            .iter()
            .map(|m| (m.uid, m.flags, m.size))
            .collect();
        let want: Vec<_> = fresh
            .messages()
            .iter()
            .map(|m| (m.uid, m.flags, m.size))
            .collect();
        assert_eq!(got, want);
        assert_eq!(view.keyword_names(), fresh.keyword_names());
    }
    assert_eq!(fresh.messages()[14].keywords, 1);
    assert!(read_all(&mut fresh, 14).ends_with(b"body 2\r\n>From here\r\n"));
    // Someone else's change in between: the append parses, and so does nothing go stale.
    other.set_flags(0, Flags::DELETED);
    other.commit(false).unwrap();
    let late = append_text(&mut mb, b"Subject: late\n\nx\n", Flags::NONE, &[], None);
    assert_eq!(late, vec![16]);
    mb.refresh().unwrap();
    assert_eq!(mb.messages()[0].flags, Flags::DELETED);
    assert_eq!(mb.messages().len(), 16);
}

#[test]
fn refresh_after_own_append_skips_the_lock_only_while_the_file_is_as_left() {
    let dir = TempDir::new("append-unlocked");
    let path = prepared_mailbox(&dir);
    let mut mb = MboxMailbox::open(&path, Access::Shared, helper()).unwrap();
    let mut other = MboxMailbox::open(&path, Access::Shared, helper()).unwrap();
    let unlocked = || UNLOCKED_CATCH_UPS.with(|n| n.get());
    let append_one = |mb: &mut MboxMailbox, subject: &str| {
        let text = format!("Subject: {subject}\n\nbody\n");
        append_text(mb, text.as_bytes(), Flags::NONE, &[], None)
    };
    let before = unlocked();
    let uids = append_one(&mut mb, "first");
    let changes = mb.refresh().unwrap();
    assert_eq!((changes.appended, unlocked()), (1, before + 1));
    assert_eq!(mb.messages().last().unwrap().uid, uids[0]);
    assert!(
        mb.messages().last().unwrap().recent,
        "claimed by the appender"
    );
    // Another session's flag patch after our append changes the file: a locked refresh must
    // see both our new message and that change.
    let uids = append_one(&mut mb, "second");
    other.refresh().unwrap();
    other.set_flags(1, Flags::FLAGGED);
    other.commit(false).unwrap();
    let changes = mb.refresh().unwrap();
    assert_eq!(unlocked(), before + 1, "the changed file was not re-read");
    assert_eq!(changes.appended, 1);
    assert_eq!(changes.flags_changed, vec![1]);
    assert_eq!(mb.messages()[1].flags, Flags::FLAGGED);
    assert_eq!(mb.messages().last().unwrap().uid, uids[0]);
    assert_sizes_exact(&mut mb);
}

#[test]
fn append_spools_in_memory_or_to_a_file_with_the_same_bytes() {
    // The same message appended with a small known length (spooled in memory), with no known
    // length and inside a batch too large for memory (both through the scratch file).
    let dir = TempDir::new("append-spool");
    let text = b"Subject: spool\r\nX-UID: 99\r\n\r\nFrom the start\r\nline\r\n".to_vec();
    let filler = vec![b'x'; super::append::IN_MEMORY_SPOOL as usize];
    let filler_text = [b"Subject: filler\r\n\r\n".as_slice(), &filler, b"\r\n"].concat();
    let mut bodies = Vec::new();
    for (name, known, with_filler) in [
        ("mem", true, false),
        ("none", false, false),
        ("big", true, true),
    ] {
        let path = dir.path().join(name);
        let mut source = &text[..];
        let mut filler_source = &filler_text[..];
        let mut batch = vec![NewMessage {
            source: &mut source,
            len: known.then_some(text.len() as u64),
            flags: Flags::SEEN,
            keywords: &[],
            internal_date: Some((1_706_788_800, 0)),
        }];
        if with_filler {
            batch.push(NewMessage {
                source: &mut filler_source,
                len: Some(filler_text.len() as u64),
                flags: Flags::NONE,
                keywords: &[],
                internal_date: Some((1_706_788_800, 0)),
            });
        }
        let mut mb = MboxMailbox::open(&path, Access::Shared, helper()).unwrap();
        mb.append(&mut batch).unwrap();
        mb.refresh().unwrap();
        assert_sizes_exact(&mut mb);
        bodies.push(read_all(&mut mb, 0));
    }
    let converted = b"Subject: spool\r\nX-Original-X-UID: 99\r\n\r\n>From the start\r\nline\r\n";
    assert_eq!(bodies[0], converted, "metadata renamed, From escaped");
    assert_eq!(bodies[1], bodies[0]);
    assert_eq!(bodies[2], bodies[0]);
}

#[test]
fn append_touches_no_other_message_than_the_first() {
    // The third message's metadata is stored in another order than ours (as other programs
    // write it): an APPEND raises UID-last in the first message and leaves the rest alone.
    let dir = TempDir::new("append-untouched");
    let path = mailbox_with(&dir, &big_mailbox(4, 300));
    drop(MboxMailbox::open(&path, Access::Shared, helper()).unwrap());
    let text = std::fs::read(&path).unwrap();
    let block_start = memchr::memmem::find_iter(&text, b"\nStatus: ")
        .nth(2)
        .unwrap()
        + 1;
    let uid_line = memchr::memmem::find(&text[block_start..], b"X-UID: 3\n").unwrap() + block_start;
    let mut reordered = text[..block_start].to_vec();
    reordered.extend_from_slice(b"X-UID: 3\n");
    reordered.extend_from_slice(&text[block_start..uid_line]);
    reordered.extend_from_slice(&text[uid_line + 9..]);
    assert_eq!(reordered.len(), text.len());
    std::fs::write(&path, &reordered).unwrap();
    let mut mb = MboxMailbox::open(&path, Access::Shared, helper()).unwrap();
    let first_end = mb.entries[0].next_off as usize;
    let before = std::fs::read(&path).unwrap();
    let new = append_text(&mut mb, b"Subject: new\n\nnew\n", Flags::NONE, &[], None);
    assert_eq!(new, vec![5]);
    let after = std::fs::read(&path).unwrap();
    assert!(
        after[first_end..before.len()] == before[first_end..],
        "messages after the first were rewritten"
    );
    mb.refresh().unwrap();
    assert_eq!(
        mb.messages().iter().map(|m| m.uid).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    assert_sizes_exact(&mut mb);
}
