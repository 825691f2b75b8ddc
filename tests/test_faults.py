"""Crash safety of QUIT's mailbox rewrite, and a full disk.

Faults tried: the rewrite aborted after N bytes for ~30 values of N spread over the rewrite
(MAILSUITE_CRASH_AFTER_BYTES), death right after the journal is synced
(MAILSUITE_CRASH_AT=journal), SIGKILL at seeded random instants while QUIT rewrites a large
mailbox, and a tmpfs spool with no room for a journal when QUIT must rewrite (through the undo
journal, or as a compaction). After each crash a
fresh session (which replays any journal) must see every non-deleted message exactly once, in
a file that still parses as mbox; after ENOSPC, QUIT must fail and leave the bytes unchanged.
"""

import os
import random
import signal
import subprocess
import time

import pytest

from mailtest import (PipeSession, count_from_lines, make_message, mbox_of, message_ids,
                      presented, read_file, split_mbox)


def small_mailbox(n=40):
    return [make_message(i, tag=b"f", body_lines=30) for i in range(n)]


def settle(argv, user):
    """A session that changes nothing, so UIDs/Status are already written before a fault."""
    s = PipeSession(argv, timeout=60)
    s.greeting()
    s.login(user.name, user.password)
    assert s.quit(timeout=60) == b"+OK Sayonara"


def start_deleting(argv, user, to_delete, env=None):
    s = PipeSession(argv, env=env, timeout=60)
    s.greeting()
    s.ok("USER " + user.name)
    s.ok("PASS " + user.password)
    for n in to_delete:
        assert s.cmd("DELE %d" % n) == b"+OK Message deleted"
    return s


def quit_under_fault(argv, user, to_delete, fault):
    """DELE `to_delete`, then QUIT with the crash hooks of `fault` set: (the reply, or None if
    the server died first; its exit status)."""
    s = start_deleting(argv, user, to_delete, env=dict(os.environ, **fault))
    s.send("QUIT")
    try:
        resp = s.readline(timeout=60)
    except EOFError:
        resp = None
    status = s.proc.wait(timeout=30)
    s.close()
    return resp, status


def journal_files(*dirs):
    return [os.path.join(d, f) for d in dirs for f in os.listdir(d) if "journal" in f]


def age_stale_dotlock(path):
    """A process killed inside QUIT leaves its `<mailbox>.lock`; like UW, ipop3d takes a
    dotlock over only once it is 5 minutes old. Age it by 10 minutes instead of waiting (this
    also exercises the stale takeover). Returns whether there was one."""
    lock = path + ".lock"
    if not os.path.exists(lock):
        return False
    old = time.time() - 600
    os.utime(lock, (old, old))
    return True


def check_recovered(argv, user, path, original_ids, deleted_ids, context):
    """A fresh session opens (replaying any journal); the spool then holds each non-deleted
    message exactly once, deleted ones at most once, and parses (From_ count = messages)."""
    age_stale_dotlock(path)
    s = PipeSession(argv, timeout=60)
    s.greeting()
    s.ok("USER " + user.name)
    resp = s.cmd("PASS " + user.password)
    assert resp.startswith(b"+OK Mailbox open, "), (context, resp)
    shown = int(resp.split()[3])
    assert s.cmd("QUIT", timeout=60) == b"+OK Sayonara", context
    s.close()
    data = read_file(path)
    messages = split_mbox(data)
    ids = [i for m in messages for i in message_ids(m)]
    assert len(ids) == len(messages) == shown, context
    assert count_from_lines(data) == len(split_mbox(data, include_pseudo=True)), context
    for mid in original_ids:
        got = ids.count(mid)
        if mid in deleted_ids:
            assert got <= 1, (context, "deleted message duplicated", mid)
        else:
            assert got == 1, (context, "message %r appears %d times" % (mid, got))
    assert set(ids) <= set(original_ids), (context, "unknown content appeared")
    assert not os.path.exists(path + ".lock"), (context, "dotlock left by a clean session")
    return messages


def test_crash_after_n_bytes_and_after_journal(users, mbox_for, server_args, spool):
    alice = users["alice"]
    msgs = small_mailbox()
    original = mbox_of(msgs)
    size = len(original)
    ids = [message_ids(m)[0] for m in msgs]
    to_delete = (1, 2, 17, 40)
    deleted = {ids[n - 1] for n in to_delete}
    argv = server_args("--allow-plaintext")
    faults = [{"MAILSUITE_CRASH_AFTER_BYTES": str(size * k // 28)} for k in range(28)]
    faults += [{"MAILSUITE_CRASH_AFTER_BYTES": "1"}, {"MAILSUITE_CRASH_AT": "journal"}]
    crashed = 0
    for fault in faults:
        path = mbox_for(alice, original)
        settle(argv, alice)
        resp, status = quit_under_fault(argv, alice, to_delete, fault)
        if resp != b"+OK Sayonara":
            crashed += 1
        assert resp in (None, b"+OK Sayonara") or resp.startswith(b"-ERR"), (fault, resp)
        left = check_recovered(argv, alice, path, ids, deleted, fault)
        if resp == b"+OK Sayonara":
            assert [presented(m) for m in left] == [presented(m) for i, m in enumerate(msgs)
                                                     if i + 1 not in to_delete], fault
        assert not journal_files(spool, alice.home), (fault, "journal left after recovery")
        assert status is not None
    assert crashed >= 20, "the crash hooks did not fire (%d of %d runs crashed)" % (crashed, len(faults))


def test_quit_deleting_every_other_message_is_a_compaction_finished_after_a_kill(
        users, mbox_for, server_args, spool):
    """DELE of every other message of 3,000 only moves mail (2.7 MB: more than the 2 MiB that go
    into the journal itself, so the moves take several steps): QUIT compacts the spool from a
    journal of moves. Killed at any of its hooks (all after the journal is synced) or after N
    bytes, the next session finishes it: exactly the kept messages remain, in order."""
    alice = users["alice"]
    msgs = small_mailbox(3000)
    original = mbox_of(msgs)
    ids = [message_ids(m)[0] for m in msgs]
    to_delete = list(range(1, len(msgs) + 1, 2))
    deleted = {ids[n - 1] for n in to_delete}
    kept = [presented(m) for i, m in enumerate(msgs) if i + 1 not in to_delete]
    argv = server_args("--allow-plaintext")
    hooks = ["journal", "first-step-done", "step-done", "cut-committed", "cut-done"]
    faults = [{"MAILSUITE_CRASH_AT": h} for h in hooks]
    faults += [{"MAILSUITE_CRASH_AFTER_BYTES": str(len(original) * k // 12)} for k in range(12)]
    for fault in faults:
        path = mbox_for(alice, original)
        settle(argv, alice)
        resp, _ = quit_under_fault(argv, alice, to_delete, fault)
        assert resp is None, (fault, "the hook did not fire: not a compaction?", resp)
        left = check_recovered(argv, alice, path, ids, deleted, fault)
        got = [presented(m) for m in left]
        assert len(got) == len(kept), (fault, len(got), len(kept))
        for n, (a, b) in enumerate(zip(got, kept)):
            assert a == b, (fault, n, a[:300], b[:300])
        assert not journal_files(spool, alice.home), (fault, "journal left after recovery")


def test_sigkill_during_large_quit(users, mbox_for, server_args, spool):
    """SIGKILL at seeded random instants after QUIT on a ~12 MB mailbox, spread over the time
    a QUIT with the same work takes (measured first)."""
    alice = users["alice"]
    msgs = [make_message(i, tag=b"big", body_lines=60) for i in range(3000)]
    original = mbox_of(msgs)
    ids = [message_ids(m)[0] for m in msgs]
    argv = server_args("--allow-plaintext")
    rng = random.Random(20261123)
    mbox_for(alice, original)
    s = start_deleting(argv, alice, [1])
    began = time.monotonic()
    assert s.quit(timeout=60) == b"+OK Sayonara"
    quit_time = time.monotonic() - began
    killed = 0
    for attempt in range(8):
        path = mbox_for(alice, original)
        to_delete = sorted({1, rng.randint(2, 3000)})
        s = start_deleting(argv, alice, to_delete)
        delay = rng.uniform(0, 0.8 * quit_time)
        s.send("QUIT")
        time.sleep(delay)
        if s.proc.poll() is None:
            os.kill(s.pid, signal.SIGKILL)
        if s.proc.wait(timeout=30) == -signal.SIGKILL:
            killed += 1
        print("attempt %d: kill after %.3fs, exit %s" % (attempt, delay, s.proc.returncode))
        s.close()
        deleted = {ids[n - 1] for n in to_delete}
        check_recovered(argv, alice, path, ids, deleted, "attempt %d, kill after %.3fs" % (attempt, delay))
    assert killed >= 3, "only %d of 8 kills landed before QUIT finished: make the mailbox larger" % killed


@pytest.fixture
def tiny_tmpfs(base_tmp):
    mnt = os.path.join(base_tmp, "tmpfs-spool")
    os.makedirs(mnt, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=1777", "tmpfs", mnt],
                          capture_output=True)
    if proc.returncode != 0:
        pytest.skip("cannot mount tmpfs here: %s" % proc.stderr.decode(errors="replace"))
    yield mnt
    subprocess.run(["umount", "-l", mnt], check=False)


def fill_disk(directory):
    path = os.path.join(directory, "filler")
    with open(path, "wb", buffering=0) as f:
        for chunk in (65536, 4096, 1):
            while True:
                try:
                    f.write(b"\0" * chunk)
                except OSError:
                    break
    return path


@pytest.mark.parametrize("count,to_delete", [(100, [1]), (1200, list(range(1, 1201, 2)))],
                         ids=["undo", "compaction"])
def test_disk_full_quit_fails_and_keeps_bytes(users, server_args, tiny_tmpfs, count, to_delete):
    """The spool's filesystem is filled up to 8 KB (room for lock files, none for a rewrite
    journal): DELE 1 of 100 messages needs an undo journal of the ~60 KB after message 1; DELE
    of every other message of 1,200 (733 KB, shortened by more than 256 KB) is a compaction
    whose journal holds the ~360 KB it moves (less than the 2 MiB of first steps it copies).
    QUIT must fail with -ERR [SYS/TEMP], the spool byte-identical; once space is freed a new
    session sees every message."""
    alice = users["alice"]
    msgs = [make_message(i, tag=b"full", body_lines=8) for i in range(count)]
    path = os.path.join(tiny_tmpfs, alice.name)
    with open(path, "wb") as f:
        f.write(mbox_of(msgs))
    os.chown(path, alice.uid, alice.gid)
    os.chmod(path, 0o600)
    argv = server_args("--allow-plaintext", spool_dir=tiny_tmpfs)
    settle(argv, alice)
    original = read_file(path)
    filler = fill_disk(tiny_tmpfs)
    os.truncate(filler, max(0, os.path.getsize(filler) - 8192))
    s = start_deleting(argv, alice, to_delete)
    resp = s.cmd("QUIT", timeout=60)
    s.close()
    assert resp.startswith(b"-ERR [SYS/TEMP]"), resp
    assert read_file(path) == original, "mailbox changed by a failed QUIT"
    os.unlink(filler)
    s = PipeSession(argv, timeout=60)
    s.greeting()
    assert s.login(alice.name, alice.password) == b"+OK Mailbox open, %d messages" % count
    assert s.quit() == b"+OK Sayonara"
    assert [presented(m) for m in split_mbox(read_file(path))] == [presented(m) for m in msgs]
