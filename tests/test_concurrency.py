"""Delivery during POP3 sessions: an MTA-like process appends 1,000 messages to the spool with
the locking Postfix/procmail use (dotlockfile -l, then fcntl lockf) while POP3 sessions
RETR, DELE and QUIT again and again. At the end every delivered message that was not deleted
is in the spool exactly once and every deleted one is gone.

Faults tried: appends landing during a session, during QUIT's rewrite, right after it; a
server that held the dotlock for a whole session would starve the deliverer (time bound);
one whose lock retries starve behind the deliverer runs too few sessions (>= 3 required).
"""

import fcntl
import os
import re
import subprocess
import threading
import time

from mailtest import PipeSession, make_message, mbox_of, message_ids, read_file, split_mbox

DELIVERIES = 1000
TIME_LIMIT = 60.0
DELIVERY_GAP = 0.01
SESSION_GAP = 0.02


def take_dotlock(lock, patience=60.0):
    """dotlockfile -l, one try at a time, 20 ms apart (its own retry sleeps a second)."""
    deadline = time.monotonic() + patience
    while subprocess.run(["dotlockfile", "-r", "0", "-l", lock], timeout=30).returncode != 0:
        assert time.monotonic() < deadline, "dotlock %s held for %.0fs" % (lock, patience)
        time.sleep(0.02)


def deliver(path, count, errors):
    lock = path + ".lock"
    try:
        for i in range(count):
            take_dotlock(lock)
            try:
                with open(path, "ab") as f:
                    fcntl.lockf(f, fcntl.LOCK_EX)
                    f.write(mbox_of([make_message(i, tag=b"d", body_lines=2)]))
                    f.flush()
                    fcntl.lockf(f, fcntl.LOCK_UN)
            finally:
                subprocess.run(["dotlockfile", "-u", lock], check=True, timeout=30)
            # An MTA's pace between deliveries (and a client's between sessions, below):
            # back to back, one side retakes the dotlock within microseconds and the other,
            # retrying every few hundred ms, starves.
            time.sleep(DELIVERY_GAP)
    except Exception as e:  # reported by the test thread
        errors.append(repr(e))


def message_id_of(text):
    ids = message_ids(text)
    assert len(ids) == 1, "message with %d Message-IDs: %r" % (len(ids), text[:300])
    return ids[0]


def pop_round(argv, user, deleted):
    """One session: RETR the first and last messages, DELE them, QUIT; returns whether done."""
    s = PipeSession(argv, timeout=30)
    try:
        s.greeting()
        s.ok("USER " + user.name)
        resp = s.cmd("PASS " + user.password)
        assert resp.startswith(b"+OK Mailbox open, "), resp
        count = int(resp.split()[3])
        picked = {}
        for n in sorted({1, count} if count else set()):
            _, data = s.retr(n)
            picked[n] = message_id_of(data)
            assert s.cmd("DELE %d" % n) == b"+OK Message deleted"
        resp = s.cmd("QUIT", timeout=60)
        assert resp in (b"+OK Sayonara",) or resp.startswith(b"-ERR [SYS/TEMP]"), resp
        if resp == b"+OK Sayonara":
            deleted.update(picked.values())
    finally:
        s.close()


def test_delivery_during_pop3_sessions(users, mbox_for, server_args):
    alice = users["alice"]
    path = mbox_for(alice, mbox_of([make_message(i, tag=b"pre") for i in range(20)]))
    argv = server_args("--allow-plaintext")
    errors, deleted = [], set()
    deliverer = threading.Thread(target=deliver, args=(path, DELIVERIES, errors), daemon=True)
    start = time.monotonic()
    deliverer.start()
    rounds = 0
    while deliverer.is_alive() and time.monotonic() - start < TIME_LIMIT:
        began = time.monotonic()
        pop_round(argv, alice, deleted)
        rounds += 1
        print("round %d took %.3fs" % (rounds, time.monotonic() - began))
        time.sleep(SESSION_GAP)
    deliverer.join(timeout=max(1.0, TIME_LIMIT - (time.monotonic() - start)))
    assert not deliverer.is_alive(), "delivery of %d messages did not finish in %.0fs" % (
        DELIVERIES, TIME_LIMIT)
    assert not errors, errors
    print("delivery took %.1fs" % (time.monotonic() - start))
    pop_round(argv, alice, deleted)
    assert rounds >= 3, "only %d POP3 rounds ran during delivery" % rounds

    data = read_file(path)
    messages = split_mbox(data)
    ids = [message_id_of(m) for m in messages]
    delivered = {b"<d-%d@test>" % i for i in range(DELIVERIES)} | {b"<pre-%d@test>" % i for i in range(20)}
    counts = {}
    for mid in ids:
        counts[mid] = counts.get(mid, 0) + 1
    dupes = {m: c for m, c in counts.items() if c > 1}
    assert not dupes, "duplicated messages: %r" % list(dupes)[:10]
    assert set(ids) <= delivered, "unknown messages appeared"
    assert not (set(ids) & deleted), "deleted messages came back: %r" % list(set(ids) & deleted)[:10]
    missing = delivered - deleted - set(ids)
    assert not missing, "lost messages: %r" % sorted(missing)[:10]
    assert len(deleted) >= 2 * 3, "too few deletions to mean anything"
    assert len(re.findall(rb"(?m)^From ", data)) == len(split_mbox(data, include_pseudo=True))
    assert not os.path.exists(path + ".lock"), "dotlock left behind"
