//! Tests of the flag log as sessions use it (see `deferred` and `flaglog`): large STOREs
//! recorded beside the mailbox, seen by every other session, written into the file by a
//! flush or an EXPUNGE, and kept across a kill.

use super::deferred::DEFER_AT_LEAST;
use super::tests::{TempDir, COMPACTIONS, PATCH_WRITES};
use super::*;

const MESSAGES: usize = DEFER_AT_LEAST + 36;

fn helper() -> &'static Path {
    Path::new("/nonexistent/mlock")
}

/// A mailbox of `MESSAGES` messages whose UIDs and `O` are already stored.
fn stored_mailbox(dir: &TempDir) -> PathBuf {
    let path = dir.path().join("user");
    let mut text = Vec::new();
    for i in 0..MESSAGES {
        text.extend_from_slice(
            format!(
                "From s{i}@example.com Mon Jan  1 10:00:00 2024\nSubject: m{i}\n\nbody {i}\n\n"
            )
            .as_bytes(),
        );
    }
    std::fs::write(&path, text).unwrap();
    drop(MboxMailbox::open(&path, Access::Shared, helper()).unwrap());
    path
}

fn log_path(path: &Path) -> PathBuf {
    path.with_file_name(".user.mbox-journal-flags")
}

fn patch_writes() -> usize {
    PATCH_WRITES.with(|n| n.get())
}

/// The flags a program that reads only the file sees (the log moved away for the read).
fn file_flags(path: &Path) -> Vec<Flags> {
    let log = log_path(path);
    let aside = path.with_file_name("log-aside");
    let had_log = std::fs::rename(&log, &aside).is_ok();
    let mb = MboxMailbox::open(path, Access::ReadOnly, helper()).unwrap();
    let flags = mb.messages().iter().map(|m| m.flags).collect();
    if had_log {
        std::fs::rename(&aside, &log).unwrap();
    }
    flags
}

fn flag_all(mb: &mut MboxMailbox, flags: Flags) {
    for i in 0..mb.messages().len() {
        let now = mb.messages()[i].flags.union(flags);
        mb.set_flags(i, now);
    }
}

#[test]
fn a_large_store_is_logged_and_every_session_sees_it() {
    let dir = TempDir::new("flaglog-sessions");
    let path = stored_mailbox(&dir);
    let before = std::fs::read(&path).unwrap();
    let mut a = MboxMailbox::open(&path, Access::Shared, helper()).unwrap();
    let mut b = MboxMailbox::open(&path, Access::Shared, helper()).unwrap();
    flag_all(&mut a, Flags::FLAGGED);
    let patches = patch_writes();
    a.commit(false).unwrap();
    assert_eq!(patch_writes(), patches, "no message was patched");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "the file is untouched"
    );
    assert!(log_path(&path).exists());
    assert!(a.has_deferred_writes());
    // Another session sees every change at its next refresh, from the log.
    let changes = b.refresh().unwrap();
    assert_eq!(changes.flags_changed, (0..MESSAGES).collect::<Vec<_>>());
    assert!(b.messages().iter().all(|m| m.flags == Flags::FLAGGED));
    // A session opened now (a kill of `a` would leave the same log) sees them too.
    drop(a);
    let c = MboxMailbox::open(&path, Access::ReadOnly, helper()).unwrap();
    assert!(c.messages().iter().all(|m| m.flags == Flags::FLAGGED));
    assert!(
        !c.has_deferred_writes(),
        "a read-only session does not flush"
    );
    assert!(file_flags(&path).iter().all(|f| *f == Flags::NONE));
    // Small changes while a log exists go to the log too, merged over it.
    b.set_flags(3, Flags::FLAGGED.union(Flags::SEEN));
    b.commit(false).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), before);
    let mut d = MboxMailbox::open(&path, Access::Shared, helper()).unwrap();
    assert_eq!(d.messages()[3].flags, Flags::FLAGGED.union(Flags::SEEN));
    // Another session's change to other flags of the same message survives a merge.
    d.set_flags(3, Flags::FLAGGED.union(Flags::SEEN).union(Flags::ANSWERED));
    b.set_flags(3, Flags::SEEN);
    d.commit(false).unwrap();
    b.commit(false).unwrap();
    d.refresh().unwrap();
    assert_eq!(d.messages()[3].flags, Flags::SEEN.union(Flags::ANSWERED));
}

#[test]
fn a_flush_writes_the_log_into_the_file_and_removes_it() {
    let dir = TempDir::new("flaglog-flush");
    let path = stored_mailbox(&dir);
    let mut a = MboxMailbox::open(&path, Access::Shared, helper()).unwrap();
    let mut b = MboxMailbox::open(&path, Access::Shared, helper()).unwrap();
    flag_all(&mut a, Flags::SEEN);
    a.commit(false).unwrap();
    b.refresh().unwrap();
    let patches = patch_writes();
    b.write_deferred().unwrap();
    assert_eq!(patch_writes(), patches + 1, "one pass of in-place patches");
    assert!(!log_path(&path).exists());
    assert!(!b.has_deferred_writes());
    assert!(file_flags(&path).iter().all(|f| *f == Flags::SEEN));
    // The writer's session learns the log is gone; no flag changed for it.
    let changes = a.refresh().unwrap();
    assert!(changes.is_empty(), "{changes:?}");
    assert!(!a.has_deferred_writes());
    assert!(a.messages().iter().all(|m| m.flags == Flags::SEEN));
}

#[test]
fn expunge_patches_the_kept_messages_then_compacts() {
    let dir = TempDir::new("flaglog-expunge");
    let path = stored_mailbox(&dir);
    let mut a = MboxMailbox::open(&path, Access::Shared, helper()).unwrap();
    flag_all(&mut a, Flags::FLAGGED);
    a.commit(false).unwrap();
    for i in (1..MESSAGES).step_by(2) {
        a.set_flags(i, Flags::FLAGGED.union(Flags::DELETED));
    }
    a.commit(false).unwrap();
    assert!(log_path(&path).exists());
    let (patches, compactions) = (patch_writes(), COMPACTIONS.with(|n| n.get()));
    let report = a.commit(true).unwrap();
    assert_eq!(report.expunged.len(), MESSAGES / 2);
    assert_eq!(patch_writes(), patches + 1, "kept messages patched first");
    assert_eq!(COMPACTIONS.with(|n| n.get()), compactions + 1, "then moved");
    assert!(!log_path(&path).exists());
    let flags = file_flags(&path);
    assert_eq!(flags.len(), MESSAGES - MESSAGES / 2);
    assert!(flags.iter().all(|f| *f == Flags::FLAGGED), "{flags:?}");
}

#[test]
fn new_keywords_are_written_at_once_and_known_ones_logged() {
    let dir = TempDir::new("flaglog-keywords");
    let path = stored_mailbox(&dir);
    let mut a = MboxMailbox::open(&path, Access::Shared, helper()).unwrap();
    let work = 1u64 << a.keyword_index("work").unwrap();
    for i in 0..MESSAGES {
        a.set_keywords(i, work);
    }
    a.commit(false).unwrap();
    assert!(
        !log_path(&path).exists(),
        "a new name is written into the file"
    );
    let home = 1u64 << a.keyword_index("home").unwrap();
    a.commit(false).unwrap();
    let both = work | home;
    for i in 0..MESSAGES {
        a.set_keywords(i, both);
    }
    a.commit(false).unwrap();
    // "home" is in the file's list now (the second commit wrote it): logged.
    assert!(log_path(&path).exists());
    let b = MboxMailbox::open(&path, Access::ReadOnly, helper()).unwrap();
    let names = b.keyword_names();
    for m in b.messages() {
        let mut got: Vec<&str> = (0..names.len())
            .filter(|&k| m.keywords & (1 << k) != 0)
            .map(|k| names[k].as_str())
            .collect();
        got.sort_unstable();
        assert_eq!(got, ["home", "work"]);
    }
}

#[test]
fn a_log_left_by_a_killed_session_is_applied_and_flushed_by_the_next() {
    let dir = TempDir::new("flaglog-kill");
    let path = stored_mailbox(&dir);
    let mut a = MboxMailbox::open(&path, Access::Shared, helper()).unwrap();
    flag_all(&mut a, Flags::ANSWERED);
    a.commit(false).unwrap();
    std::mem::forget(a); // as a kill: nothing more runs
                         // Mail delivered meanwhile: the next session claims it (`O`), which rewrites the file,
                         // which writes the log's states too.
    let mut delivered = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    io::Write::write_all(
        &mut delivered,
        b"From mta@example.com Mon Jan  1 11:00:00 2024\nSubject: late\n\nlate\n\n",
    )
    .unwrap();
    let b = MboxMailbox::open(&path, Access::Shared, helper()).unwrap();
    assert_eq!(b.messages().len(), MESSAGES + 1);
    assert!(!log_path(&path).exists());
    let flags = file_flags(&path);
    assert!(flags[..MESSAGES].iter().all(|f| *f == Flags::ANSWERED));
    assert_eq!(flags[MESSAGES], Flags::NONE);
}

#[test]
fn a_torn_log_is_ignored_and_replaced() {
    let dir = TempDir::new("flaglog-torn");
    let path = stored_mailbox(&dir);
    // A kill as a log was being made: half a header.
    std::fs::write(log_path(&path), b"MSFLOG1\n\x01\x02").unwrap();
    let mut r = MboxMailbox::open(&path, Access::ReadOnly, helper()).unwrap();
    assert!(log_path(&path).exists(), "a read-only session leaves it");
    let mut a = MboxMailbox::open(&path, Access::Shared, helper()).unwrap();
    assert!(!log_path(&path).exists(), "a writer removes it");
    assert!(a.messages().iter().all(|m| m.flags == Flags::NONE));
    flag_all(&mut a, Flags::DRAFT);
    a.commit(false).unwrap();
    assert!(log_path(&path).exists());
    r.refresh().unwrap();
    assert!(r.messages().iter().all(|m| m.flags == Flags::DRAFT));
}

#[test]
fn own_append_keeps_pending_and_logged_flags() {
    use super::imap_tests::append_text;
    let dir = TempDir::new("flaglog-append");
    let path = stored_mailbox(&dir);
    let mut a = MboxMailbox::open(&path, Access::Shared, helper()).unwrap();
    flag_all(&mut a, Flags::SEEN);
    a.commit(false).unwrap();
    assert!(log_path(&path).exists());
    a.set_flags(5, Flags::SEEN.union(Flags::ANSWERED)); // not committed
    let uids = append_text(&mut a, b"Subject: new\n\nnew\n", Flags::NONE, &[], None);
    let changes = a.refresh().unwrap();
    assert_eq!(changes.appended, 1, "{changes:?}");
    assert!(changes.flags_changed.is_empty(), "{changes:?}");
    let last = a.messages().last().unwrap();
    assert_eq!(
        (last.uid, last.flags, last.recent),
        (uids[0], Flags::NONE, true)
    );
    assert_eq!(a.messages()[5].flags, Flags::SEEN.union(Flags::ANSWERED));
    assert!(a.messages()[..MESSAGES]
        .iter()
        .all(|m| m.flags.contains(Flags::SEEN)));
    a.commit(false).unwrap();
    let b = MboxMailbox::open(&path, Access::ReadOnly, helper()).unwrap();
    assert_eq!(b.messages().len(), MESSAGES + 1);
    assert_eq!(b.messages()[5].flags, Flags::SEEN.union(Flags::ANSWERED));
    assert!(b.messages()[..MESSAGES]
        .iter()
        .all(|m| m.flags.contains(Flags::SEEN)));
}
