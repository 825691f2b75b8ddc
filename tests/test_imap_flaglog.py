"""The mbox flag log: a STORE on many messages is recorded in `.<mailbox>.mbox-journal-flags`
beside the mailbox (one write) instead of patched into every message, and written into the
mbox later.

Checked here, on real spools through the real binaries: another imapd session sees the
flags at its next command; programs that read only the mbox see them about a second after
the client goes quiet; and when the session that stored them is killed (SIGKILL) before
that, nothing is lost: the next imapd or ipop3d session applies the log, an ipop3d QUIT
writes it, a RENAME of a folder with a pending log keeps the flags, and DELETE removes the
log with the folder.
"""

import os
import re
import time

from imaptest import parse_fetch
from mailtest import PipeSession, make_message, mbox_of, read_file, split_mbox

COUNT = 100  # enough messages for the log (a STORE on fewer than 64 patches the file)


def statuses(data):
    """(Status, X-Status) of each message of an mbox file."""
    out = []
    for msg in split_mbox(data):
        head = msg.split(b"\n\n", 1)[0]
        status = re.search(rb"(?m)^Status: (\w*)$", head)
        xstatus = re.search(rb"(?m)^X-Status: (\w*)$", head)
        out.append((status.group(1) if status else b"", xstatus.group(1) if xstatus else b""))
    return out


def log_of(path):
    return os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".mbox-journal-flags")


def selected(imap_pipe, user, mailbox="INBOX"):
    s = imap_pipe("--allow-plaintext")
    s.greeting()
    s.login(user.name, user.password)
    assert b"* %d EXISTS" % COUNT in s.ok("SELECT " + mailbox)
    return s


def wait_for(predicate, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def flags_seen_by(s):
    return {n: data for n, data in parse_fetch(s.ok("FETCH 1:* FLAGS")).items()}


def test_store_is_logged_seen_by_others_and_written_when_the_client_is_quiet(imap_users, mbox_for, imap_pipe):
    alice = imap_users["alice"]
    path = mbox_for(alice, mbox_of([make_message(i) for i in range(COUNT)]))
    a, b = selected(imap_pipe, alice), selected(imap_pipe, alice)
    before = read_file(path)
    # b keeps a command in flight so it never goes quiet itself; a STOREs.
    a.ok("STORE 1:* +FLAGS.SILENT (\\Flagged)")
    stored = time.monotonic()
    now = read_file(path)
    if time.monotonic() - stored < 0.9:  # before a's one-second quiet flush could start
        assert now == before, "the STORE patched the file"
        assert os.path.exists(log_of(path)), "no flag log"
    lines = b.ok("NOOP")
    fetched = [l for l in lines if re.match(rb"\* \d+ FETCH \(FLAGS \(\\Flagged\)\)", l)]
    assert len(fetched) == COUNT, lines[:5]
    # a is quiet now: within about a second the mbox itself holds the flags.
    assert wait_for(lambda: all(x == b"F" for _, x in statuses(read_file(path))), 3), statuses(read_file(path))[:3]
    assert wait_for(lambda: not os.path.exists(log_of(path)), 1)
    assert b.ok("NOOP") == [], "the flush changed no flag for b"
    for s in (a, b):
        s.ok("LOGOUT")


def test_logout_writes_the_log(imap_users, mbox_for, imap_pipe):
    alice = imap_users["alice"]
    path = mbox_for(alice, mbox_of([make_message(i) for i in range(COUNT)]))
    a = selected(imap_pipe, alice)
    a.send("s STORE 1:* +FLAGS.SILENT (\\Answered)\r\nl LOGOUT")
    assert a.response("s")[1].startswith(b"s OK")
    assert a.response("l")[1].startswith(b"l OK")
    assert a.proc.wait(timeout=10) == 0
    assert all(x == b"A" for _, x in statuses(read_file(path)))
    assert not os.path.exists(log_of(path))


def test_a_killed_session_loses_no_flag_and_ipop3d_writes_them(imap_users, mbox_for, imap_pipe, pipe_session):
    alice = imap_users["alice"]
    path = mbox_for(alice, mbox_of([make_message(i) for i in range(COUNT)]))
    a = selected(imap_pipe, alice)
    a.ok("STORE 1:* +FLAGS.SILENT (\\Seen \\Flagged)")
    a.kill()  # SIGKILL, well before the quiet flush
    assert os.path.exists(log_of(path)), "the killed session flushed"
    c = selected(imap_pipe, alice)
    got = flags_seen_by(c)
    assert all(b"\\Seen" in v and b"\\Flagged" in v for v in got.values()), list(got.items())[:3]
    c.kill()
    p = pipe_session("--allow-plaintext")
    p.greeting()
    p.login(alice.name, alice.password)
    p.ok("STAT")
    assert p.quit() == b"+OK Sayonara"
    assert statuses(read_file(path)) == [(b"RO", b"F")] * COUNT
    assert not os.path.exists(log_of(path))


def test_rename_and_delete_of_a_folder_with_a_pending_log(imap_users, mbox_for, imap_pipe):
    alice = imap_users["alice"]
    mbox_for(alice, mbox_of([make_message(1)]))
    folder = os.path.join(alice.home, "work")
    with open(folder, "wb") as f:
        f.write(mbox_of([make_message(i, tag=b"w") for i in range(COUNT)]))
    os.chown(folder, alice.uid, alice.gid)
    try:
        a = selected(imap_pipe, alice, "work")
        a.ok("STORE 1:* +FLAGS.SILENT (\\Draft)")
        a.kill()
        assert os.path.exists(log_of(folder))
        b = imap_pipe("--allow-plaintext")
        b.greeting()
        b.login(alice.name, alice.password)
        b.ok("RENAME work done")
        assert not os.path.exists(log_of(folder))
        done = os.path.join(alice.home, "done")
        assert all(x == b"T" for _, x in statuses(read_file(done)))
        assert b"* %d EXISTS" % COUNT in b.ok("SELECT done")
        got = flags_seen_by(b)
        assert all(b"\\Draft" in v for v in got.values()), list(got.items())[:3]
        b.ok("STORE 1:* +FLAGS.SILENT (\\Answered)")
        assert os.path.exists(log_of(done))
        b.ok("UNSELECT")
        assert not os.path.exists(log_of(done)), "UNSELECT writes the log"
        b.ok("SELECT done")
        b.ok("STORE 1:* -FLAGS.SILENT (\\Answered)")
        b.kill()
        c = imap_pipe("--allow-plaintext")
        c.greeting()
        c.login(alice.name, alice.password)
        c.ok("DELETE done")
        assert not os.path.exists(done) and not os.path.exists(log_of(done))
        c.ok("LOGOUT")
    finally:
        for name in ("work", "done"):
            for p in (os.path.join(alice.home, name), log_of(os.path.join(alice.home, name))):
                if os.path.exists(p):
                    os.unlink(p)


def test_idle_reports_a_logged_store_within_two_seconds(imap_users, mbox_for, imap_pipe):
    alice = imap_users["alice"]
    mbox_for(alice, mbox_of([make_message(i) for i in range(COUNT)]))
    a, b = selected(imap_pipe, alice), selected(imap_pipe, alice)
    b.send("i1 IDLE")
    assert b.readline().startswith(b"+ "), "no IDLE continuation"
    time.sleep(0.3)
    began = time.monotonic()
    a.ok("STORE 1:* +FLAGS.SILENT (\\Seen)")
    first = b.readline(timeout=5)
    took = time.monotonic() - began
    assert first == b"* 1 FETCH (FLAGS (\\Seen))", first
    assert took < 2.0, "IDLE reported the STORE after %.2fs" % took
    rest = [b.readline(timeout=5) for _ in range(COUNT - 1)]
    assert rest == [b"* %d FETCH (FLAGS (\\Seen))" % n for n in range(2, COUNT + 1)], rest[:3]
    b.send("DONE")
    assert b.response("i1")[1].startswith(b"i1 OK")
    for s in (a, b):
        s.ok("LOGOUT")


def test_a_large_store_sends_its_fetch_responses_before_saving(imap_users, mbox_for, imap_pipe):
    """While another process holds the mailbox lock, a STORE on 100 messages has already sent
    its 100 FETCH responses (the client reads them while the server waits to save); the
    tagged OK follows once the lock is free."""
    import fcntl

    alice = imap_users["alice"]
    path = mbox_for(alice, mbox_of([make_message(i) for i in range(COUNT)]))
    a = selected(imap_pipe, alice)
    with open(path, "r+b") as held:
        fcntl.lockf(held, fcntl.LOCK_EX)
        a.send("s STORE 1:* +FLAGS (\\Flagged)")
        lines = [a.readline(timeout=5) for _ in range(COUNT)]
        assert lines == [b"* %d FETCH (FLAGS (\\Recent \\Flagged))" % n for n in range(1, COUNT + 1)], lines[:3]
        time.sleep(0.3)
        assert a.proc.poll() is None
        fcntl.lockf(held, fcntl.LOCK_UN)
    assert a.response("s")[1].startswith(b"s OK")
    a.ok("LOGOUT")
    assert all(x == b"F" for _, x in statuses(read_file(path)))


def test_a_failing_flush_is_retried_after_a_pause_not_every_second(imap_users, mbox_for, imap_pipe):
    """The mbox turns read-only for its owner while a log is pending: the flush fails. During
    3.5 s of IDLE it is tried once (one error logged), not at every one-second tick; LOGOUT
    tries again. The flags stay in the log meanwhile, nothing is lost."""
    alice = imap_users["alice"]
    path = mbox_for(alice, mbox_of([make_message(i) for i in range(COUNT)]))
    s = imap_pipe("--allow-plaintext", "--debug")
    s.greeting()
    s.login(alice.name, alice.password)
    assert b"* %d EXISTS" % COUNT in s.ok("SELECT INBOX")
    s.ok("STORE 1:* +FLAGS.SILENT (\\Answered)")
    os.chmod(path, 0o400)
    try:
        s.send("i IDLE")
        assert s.readline().startswith(b"+ ")
        time.sleep(3.5)
        s.send("DONE")
        assert s.response("i")[1].startswith(b"i OK")
        s.ok("LOGOUT")
        err = s.close().decode("utf-8", "replace")
    finally:
        os.chmod(path, 0o600)
    failures = re.findall(r"Error saving flags", err)
    assert len(failures) == 2, err
    assert os.path.exists(log_of(path))
    c = selected(imap_pipe, alice)
    assert all(b"\\Answered" in v for v in flags_seen_by(c).values())
    c.ok("LOGOUT")
    assert all(x == b"A" for _, x in statuses(read_file(path)))
