"""Crash safety of imapd's mbox rewrites (EXPUNGE) and Maildir expunges.

Faults tried: the rewrite aborted after N bytes for ~24 values of N spread over the file
(MAILSUITE_CRASH_AFTER_BYTES, the mbox store's hook, which imapd's EXPUNGE goes through),
death right after the journal is synced (MAILSUITE_CRASH_AT=journal), SIGKILL at seeded
random instants while EXPUNGE rewrites a ~12 MB mbox (through the undo journal, and as a
compaction that moves every other message, with the hook that only a compaction passes), SIGKILL at random instants while
STORE records the flags of 3,000 messages in the flag log and CHECK patches them into the
mbox in place (no journal there: with the log set aside each message must show its old or
its new flags, and with it each must show the flags the log had when the kill came), and SIGKILL while EXPUNGE removes files from a Maildir. After each crash a fresh session (replaying any journal) must see
every non-deleted message exactly once with its UID unchanged, deleted ones at most once,
and the spool must still parse as mbox.
"""

import os
import random
import re
import shutil
import signal
import time

from imaptest import PipeImap, maildir_of, mbox_message_count, parse_fetch
from mailtest import make_message, mbox_of, message_ids, read_file


def settle(argv, user):
    """A session that only SELECTs, so UIDs are written before the fault."""
    s = PipeImap(argv, timeout=60)
    s.greeting()
    s.login(user.name, user.password)
    s.ok("SELECT INBOX", timeout=60)
    s.ok("LOGOUT", timeout=60)
    s.close()


def uid_map(s):
    """{Message-ID: UID} of the selected mailbox (and the list of IDs in order)."""
    ids = []
    out = {}
    for data in parse_fetch(s.ok("FETCH 1:* (UID BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])", timeout=60)).values():
        uid = int(re.search(rb"UID (\d+)", data).group(1))
        mid = message_ids(data)
        assert len(mid) == 1, data[:300]
        ids.append(mid[0])
        out[mid[0]] = uid
    return out, ids


def settled_mbox(argv, user, mbox_for, msgs):
    """`msgs` as the user's spool with UIDs stored: (path, its bytes, {Message-ID: UID}, IDs in
    order)."""
    path = mbox_for(user, mbox_of(msgs))
    settle(argv, user)
    s = PipeImap(argv, timeout=60)
    s.greeting()
    s.login(user.name, user.password)
    s.ok("EXAMINE INBOX", timeout=60)
    uids, order = uid_map(s)
    s.kill()
    return path, read_file(path), uids, order


def start_expunge(argv, user, to_delete, env=None):
    """Log in, select, mark `to_delete` \\Deleted; returns the session before EXPUNGE."""
    s = PipeImap(argv, env=env, timeout=60)
    s.greeting()
    s.login(user.name, user.password)
    s.ok("SELECT INBOX", timeout=60)
    s.ok("STORE %s +FLAGS.SILENT (\\Deleted)" % ",".join(map(str, to_delete)), timeout=60)
    return s


def age_stale_dotlock(path):
    lock = path + ".lock"
    if os.path.exists(lock):
        old = time.time() - 600
        os.utime(lock, (old, old))


def age_stale_uidlist_lock(user):
    """A process killed while rewriting dovecot-uidlist leaves its lock, which (as in Dovecot)
    is taken over once 2 minutes old: age it instead of waiting."""
    lock = os.path.join(user.home, "Maildir", "dovecot-uidlist.lock")
    if os.path.exists(lock):
        old = time.time() - 600
        os.utime(lock, (old, old))


def check_recovered(argv, user, path, uids, deleted, context):
    if path is not None:
        age_stale_dotlock(path)
    else:
        age_stale_uidlist_lock(user)
    s = PipeImap(argv, timeout=60)
    s.greeting()
    s.login(user.name, user.password)
    lines = s.ok("SELECT INBOX", timeout=60)
    exists = [int(m.group(1)) for m in (re.match(rb"\* (\d+) EXISTS", l) for l in lines) if m][-1]
    now, ids = uid_map(s) if exists else ({}, [])
    s.ok("LOGOUT", timeout=60)
    s.close()
    assert len(ids) == exists, context
    for mid, uid in uids.items():
        got = ids.count(mid)
        if mid in deleted:
            assert got <= 1, (context, "deleted message duplicated", mid)
        else:
            assert got == 1, (context, "message %r seen %d times" % (mid, got))
            assert now[mid] == uid, (context, "UID of %r changed %d -> %d" % (mid, uid, now[mid]))
    assert set(ids) <= set(uids), (context, "unknown content appeared")
    if path is not None:
        data = read_file(path)
        assert mbox_message_count(data) == exists, (context, "spool does not parse as mbox")
        assert not os.path.exists(path + ".lock"), (context, "dotlock left by a clean session")
    return ids


def run_expunge(s):
    """EXPUNGE; returns the tagged reply, or None if the server died."""
    try:
        lines, tagged = s.cmd("EXPUNGE", timeout=60)
    except EOFError:
        tagged = None
    s.proc.wait(timeout=30) if tagged is None else None
    s.kill()
    return tagged


def test_crash_hooks_during_expunge(imap_users, mbox_for, imap_args):
    alice = imap_users["alice"]
    msgs = [make_message(i, tag=b"x", body_lines=30) for i in range(40)]
    argv = imap_args("--allow-plaintext")
    to_delete = (1, 2, 17, 40)
    path, settled, uids, order = settled_mbox(argv, alice, mbox_for, msgs)
    deleted = {order[n - 1] for n in to_delete}
    size = len(settled)
    faults = [{"MAILSUITE_CRASH_AFTER_BYTES": str(size * k // 22)} for k in range(22)]
    faults += [{"MAILSUITE_CRASH_AFTER_BYTES": "1"}, {"MAILSUITE_CRASH_AT": "journal"}]
    crashed = 0
    for fault in faults:
        path = mbox_for(alice, settled)
        try:
            s = start_expunge(argv, alice, to_delete, env=dict(os.environ, **fault))
            tagged = run_expunge(s)
        except EOFError:  # the hook fired in SELECT or STORE, which may write too
            tagged = None
        if tagged is None:
            crashed += 1
        else:
            assert tagged.startswith((b"OK", b"NO")), (fault, tagged)
        left = check_recovered(argv, alice, path, uids, deleted, fault)
        if tagged is not None and tagged.startswith(b"OK"):
            assert not set(left) & deleted, (fault, "EXPUNGE said OK but messages came back")
        journals = [f for d in (os.path.dirname(path), alice.home) for f in os.listdir(d) if "journal" in f]
        assert not journals, (fault, "journal left after recovery", journals)
    assert crashed >= 16, "the crash hooks did not fire (%d of %d runs)" % (crashed, len(faults))


def test_sigkill_during_large_expunge(imap_users, mbox_for, imap_args):
    """SIGKILL at seeded random instants within the time an EXPUNGE of a ~12 MB mbox takes."""
    alice = imap_users["alice"]
    msgs = [make_message(i, tag=b"big", body_lines=60) for i in range(3000)]
    argv = imap_args("--allow-plaintext")
    path, settled, uids, order = settled_mbox(argv, alice, mbox_for, msgs)
    s = start_expunge(argv, alice, [1])
    began = time.monotonic()
    assert run_expunge(s).startswith(b"OK")
    took = time.monotonic() - began
    rng = random.Random(20261123)
    killed = 0
    for attempt in range(6):
        path = mbox_for(alice, settled)
        to_delete = sorted({1, rng.randint(2, 3000)})
        s = start_expunge(argv, alice, to_delete)
        delay = rng.uniform(0, took)
        s.send("x EXPUNGE")
        time.sleep(delay)
        if s.proc.poll() is None:
            os.kill(s.pid, signal.SIGKILL)
        if s.proc.wait(timeout=30) == -signal.SIGKILL:
            killed += 1
        s.kill()
        deleted = {order[n - 1] for n in to_delete}
        check_recovered(argv, alice, path, uids, deleted, "attempt %d, kill after %.3fs" % (attempt, delay))
    assert killed >= 2, "only %d of 6 kills landed during EXPUNGE" % killed


def test_sigkill_during_compacting_expunge(imap_users, mbox_for, imap_args):
    """EXPUNGE of every other message of 3,000 only moves messages: it goes forward from a
    journal of moves (no undo copy), so after a kill the deleted messages are all there (killed
    before the journal) or all gone, never some of them."""
    alice = imap_users["alice"]
    msgs = [make_message(i, tag=b"cmp", body_lines=40) for i in range(3000)]
    argv = imap_args("--allow-plaintext")
    path, settled, uids, order = settled_mbox(argv, alice, mbox_for, msgs)
    odd = list(range(1, 3001, 2))
    deleted = {order[n - 1] for n in odd}
    # The hook that only a compaction passes: die once its first step is synced and recorded.
    s = start_expunge(argv, alice, odd, env=dict(os.environ, MAILSUITE_CRASH_AT="first-step-done"))
    assert run_expunge(s) is None, "EXPUNGE of every other message was not a compaction"
    left = check_recovered(argv, alice, path, uids, deleted, "first-step-done")
    assert not set(left) & deleted, "recovery did not finish the compaction"
    path = mbox_for(alice, settled)
    s = start_expunge(argv, alice, odd)
    began = time.monotonic()
    assert run_expunge(s).startswith(b"OK")
    took = time.monotonic() - began
    rng = random.Random(20261124)
    outcomes = []
    for attempt in range(6):
        path = mbox_for(alice, settled)
        s = start_expunge(argv, alice, odd)
        delay = rng.uniform(0, took)
        s.send("x EXPUNGE")
        time.sleep(delay)
        if s.proc.poll() is None:
            os.kill(s.pid, signal.SIGKILL)
        s.proc.wait(timeout=30)
        s.kill()
        context = "attempt %d, kill after %.3fs" % (attempt, delay)
        left = check_recovered(argv, alice, path, uids, deleted, context)
        gone = len(deleted - set(left))
        assert gone in (0, len(deleted)), (context, "%d of %d deleted messages gone" % (gone, len(deleted)))
        outcomes.append(gone)
    assert any(outcomes), "no kill landed after the journal: %r" % outcomes


def flag_sets(argv, user):
    """The flags of every message of INBOX (\\Recent left out), in order."""
    s = PipeImap(argv, timeout=60)
    s.greeting()
    s.login(user.name, user.password)
    s.ok("EXAMINE INBOX", timeout=60)
    fetched = parse_fetch(s.ok("FETCH 1:* FLAGS", timeout=60))
    s.ok("LOGOUT", timeout=60)
    s.close()
    sets = []
    for n in sorted(fetched):
        flags = re.search(rb"FLAGS \(([^)]*)\)", fetched[n]).group(1).split()
        sets.append(frozenset(f for f in flags if f != b"\\Recent"))
    return sets


def test_sigkill_during_store_of_flags(imap_users, mbox_for, imap_args):
    """SIGKILL at seeded random instants while STORE 1:* records 3,000 messages' flags in the
    flag log and CHECK then patches them into the mbox, in place."""
    alice = imap_users["alice"]
    msgs = [make_message(i, tag=b"st", body_lines=20) for i in range(3000)]
    argv = imap_args("--allow-plaintext")
    path, settled, uids, _ = settled_mbox(argv, alice, mbox_for, msgs)
    new = frozenset([b"\\Flagged", b"\\Answered"])
    store = "x STORE 1:* +FLAGS.SILENT (\\Flagged \\Answered)\r\ny CHECK"

    def session():
        s = PipeImap(argv, timeout=60)
        s.greeting()
        s.login(alice.name, alice.password)
        s.ok("SELECT INBOX", timeout=60)
        return s

    s = session()
    began = time.monotonic()
    s.send(store)
    assert s.response("x", timeout=60)[1].startswith(b"x OK")
    assert s.response("y", timeout=60)[1].startswith(b"y OK")
    took = time.monotonic() - began
    assert not os.path.exists(os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".mbox-journal-flags"))
    s.kill()
    assert set(flag_sets(argv, alice)) == {new}
    rng = random.Random(1123)
    killed = 0
    for attempt in range(6):
        path = mbox_for(alice, settled)
        s = session()
        delay = rng.uniform(0, took)
        s.send(store)
        time.sleep(delay)
        if s.proc.poll() is None:
            os.kill(s.pid, signal.SIGKILL)
        if s.proc.wait(timeout=30) == -signal.SIGKILL:
            killed += 1
        s.kill()
        context = "attempt %d, kill after %.4fs" % (attempt, delay)
        # First the mbox alone, as a program that knows no flag log sees it.
        log = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".mbox-journal-flags")
        logged = os.path.exists(log)
        if logged:
            os.rename(log, log + ".aside")
        check_recovered(argv, alice, path, uids, set(), context)
        sets = flag_sets(argv, alice)
        mixed = [n for n, f in enumerate(sets, 1) if f not in (frozenset(), new)]
        assert len(mixed) <= 1, (context, "messages with half their flags", mixed[:5])
        if logged:
            os.rename(log + ".aside", log)
            sets = flag_sets(argv, alice)
            assert set(sets) <= {frozenset(), new}, (context, "with the log")
    assert killed >= 2, "only %d of 6 kills landed during STORE" % killed


def test_sigkill_during_maildir_expunge(imap_users, imap_args):
    """maddy's Maildir: SIGKILL while EXPUNGE unlinks 300 of 600 files; nothing kept is lost,
    UIDs stay (dovecot-uidlist)."""
    maddy = imap_users["maddy"]
    msgs = [make_message(i, tag=b"md") for i in range(600)]
    argv = imap_args("--allow-plaintext")
    rng = random.Random(7)
    for attempt in range(3):
        maildir_of(maddy, msgs)
        settle(argv, maddy)
        s = PipeImap(argv)
        s.greeting()
        s.login(maddy.name, maddy.password)
        s.ok("EXAMINE INBOX")
        uids, order = uid_map(s)
        s.kill()
        s = start_expunge(argv, maddy, ["1:300"])
        deleted = set(order[:300])
        s.send("x EXPUNGE")
        time.sleep(rng.uniform(0, 0.05))
        if s.proc.poll() is None:
            os.kill(s.pid, signal.SIGKILL)
        s.proc.wait(timeout=30)
        s.kill()
        check_recovered(argv, maddy, None, uids, deleted, "maildir attempt %d" % attempt)
        shutil.rmtree(os.path.join(maddy.home, "Maildir"))


def test_crash_during_append(imap_users, mbox_for, imap_args):
    """imapd dies (abort) after raising X-IMAPbase's UID-last (MAILSUITE_CRASH_AT=append-base)
    or halfway through writing the new message (append-half): the next session sees every old
    message with its UID, the new one whole or not at all, and no UID a client saw reused."""
    alice = imap_users["alice"]
    msgs = [make_message(i, tag=b"ap") for i in range(5)]
    argv = imap_args("--allow-plaintext")
    new = b"From: n@example.com\r\nSubject: new\r\nMessage-ID: <new@test>\r\n\r\n" + b"line\r\n" * 500
    for point in ("append-base", "append-half"):
        path = mbox_for(alice, mbox_of(msgs))
        settle(argv, alice)
        s = PipeImap(argv)
        s.greeting()
        s.login(alice.name, alice.password)
        s.ok("EXAMINE INBOX")
        uids, order = uid_map(s)
        s.kill()
        s = PipeImap(argv, env=dict(os.environ, MAILSUITE_CRASH_AT=point))
        s.greeting()
        s.login(alice.name, alice.password)
        try:
            lines, tagged = s.literal_cmd("APPEND INBOX", new)
        except EOFError:
            tagged = None
        assert tagged is None, (point, "the crash hook did not fire", tagged)
        s.kill()
        ids = check_recovered(argv, alice, path, uids, set(), point)
        assert ids[:5] == order and set(ids[5:]) <= {b"<new@test>"}, (point, ids)
        s = PipeImap(argv)
        s.greeting()
        s.login(alice.name, alice.password)
        s.ok("SELECT INBOX")
        if len(ids) == 6:
            got = parse_fetch(s.ok("FETCH 6 (UID BODY.PEEK[])"))[6]
            assert got.endswith(b"{%d}\r\n" % len(new) + new), (point, "partial message", got[-200:])
        lines, tagged = s.literal_cmd("APPEND INBOX", b"Subject: after\r\n\r\nx\r\n")
        uid = int(re.search(rb"APPENDUID \d+ (\d+)", tagged).group(1))
        # The UID-last patch and the message share one append journal: recovery rolls an
        # interrupted append back whole, so the next UID may be the one the crashed append
        # never got to report (no client ever saw it); it must only never go backwards.
        assert uid > max(uids.values()), (point, tagged)
        s.ok("LOGOUT")
        s.close()
