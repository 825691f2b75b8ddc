"""Hostile and malformed client input: a 1 MB line, NUL and 8-bit bytes, out-of-state
commands, bad message numbers (0, -1, 99999999999, 2^32+1 which must not wrap to 1, abc),
bad TOP counts, invalid base64 in AUTH, and 10,000 pipelined commands answered in order.
Each gets the right -ERR (or +OK), the server stays usable, its peak memory (VmHWM) stays
under 50 MB and the mailbox bytes are unchanged.
"""

import threading

from mailtest import make_message, mbox_of, presented, proc_status, read_file

BAD_NUMBER = (b"-ERR No such message", b"-ERR Bad message number argument")
MEMORY_LIMIT_KB = 50 * 1024


def settled_mailbox(users, mbox_for, pipe_session):
    """A 3-message spool after one clean session that read everything (metadata written)."""
    alice = users["alice"]
    path = mbox_for(alice, mbox_of([make_message(i) for i in (1, 2, 3)]))
    s = pipe_session("--allow-plaintext")
    s.greeting()
    s.login(alice.name, alice.password)
    for n in (1, 2, 3):
        s.retr(n)
    assert s.quit() == b"+OK Sayonara"
    return alice, path, read_file(path)


def test_malformed_commands(users, mbox_for, pipe_session):
    alice, path, before = settled_mailbox(users, mbox_for, pipe_session)
    s = pipe_session("--allow-plaintext")
    s.greeting()
    s.send_raw(b"X" * (1 << 20) + b"\r\n")
    assert s.readline(timeout=30) == b"-ERR Command line too long"
    s.send("CAPA")
    assert s.readline() == b"+OK Capability list follows"
    s.multiline()
    for raw in (b"\0\0\0", b"ST\0AT", b"US\xffER x", b"\xc3\xa9\xc3\xa9", b"", b"   "):
        s.send(raw)
        assert s.readline().startswith(b"-ERR"), raw
    s.login(alice.name, alice.password)
    s.send_raw(b"LIST " + b"9" * (1 << 20) + b"\r\n")
    assert s.readline(timeout=30) == b"-ERR Command line too long"
    assert s.cmd("STAT").startswith(b"+OK 3 ")
    for arg in ("0", "-1", "99999999999", "4294967297", "4294967296", "abc", "1x", "+1", ""):
        for verb in ("RETR", "DELE", "LIST", "UIDL"):
            if arg == "" and verb in ("LIST", "UIDL"):
                continue
            resp = s.cmd(("%s %s" % (verb, arg)).rstrip())
            assert resp in BAD_NUMBER or (arg == "" and resp.startswith(b"-ERR ")), (verb, arg, resp)
    for count in ("-5", "x", "", "1.5"):
        resp = s.cmd(("TOP 1 %s" % count).rstrip())
        assert resp == b"-ERR Bad line count argument" or (count == "" and resp.startswith(b"-ERR")), (count, resp)
    for raw in (b"RETR 1\0", b"NOOP\xff", b"STAT\0"):
        s.send(raw)
        assert s.readline().startswith(b"-ERR"), raw
    for cmd in ("USER x", "PASS y", "APOP a b", "AUTH PLAIN", "STLS"):
        assert s.cmd(cmd).startswith(b"-ERR"), cmd
    assert s.cmd("STAT").startswith(b"+OK 3 "), "nothing got deleted by bad input"
    hwm = int(proc_status(s.pid)["VmHWM"].split()[0])
    assert hwm < MEMORY_LIMIT_KB, "VmHWM %d kB" % hwm
    assert s.quit() == b"+OK Sayonara"
    assert read_file(path) == before


def test_invalid_base64_in_auth(users, mbox_for, pipe_session):
    alice, path, before = settled_mailbox(users, mbox_for, pipe_session)
    for raw in ("AUTH PLAIN ====", "AUTH PLAIN a", "AUTH PLAIN Zm9v\xff", "AUTH LOGIN !!"):
        s = pipe_session("--allow-plaintext")
        s.greeting()
        s.send(raw.encode("latin-1"))
        assert s.readline() == b"-ERR Invalid base64 data", raw
        s.cmd("QUIT")
    s = pipe_session("--allow-plaintext")
    s.greeting()
    assert s.cmd("AUTH PLAIN") == b"+ "
    s.send_raw(b"A" * (1 << 20) + b"\r\n")
    assert s.readline(timeout=30).startswith(b"-ERR")
    assert s.login(alice.name, alice.password).startswith(b"+OK")
    assert s.quit() == b"+OK Sayonara"
    assert read_file(path) == before


def test_ten_thousand_pipelined_commands(users, mbox_for, pipe_session):
    """All 10,000 answers arrive, in order, each the right one; memory stays bounded."""
    alice, path, before = settled_mailbox(users, mbox_for, pipe_session)
    s = pipe_session("--allow-plaintext")
    s.greeting()
    s.login(alice.name, alice.password)
    size2 = s.cmd("LIST 2")
    s.send("UIDL 1")
    uidl1 = s.readline()
    stat = s.cmd("STAT")
    script = [
        (b"NOOP", b"+OK No-op to you too!"),
        (b"STAT", stat),
        (b"LIST 2", size2),
        (b"UIDL 1", uidl1),
        (b"RETR 0", None),
        (b"DELE 99", None),
        (b"FROB", b"-ERR Unknown TRANSACTION state command"),
    ]
    commands = [script[i % len(script)] for i in range(10000)]
    payload = b"".join(c + b"\r\n" for c, _ in commands)
    writer = threading.Thread(target=s.send_raw, args=(payload,), daemon=True)
    writer.start()
    for i, (command, want) in enumerate(commands):
        got = s.readline(timeout=30)
        if want is None:
            assert got in BAD_NUMBER, (i, command, got)
        else:
            assert got == want, (i, command, got)
    writer.join(timeout=30)
    hwm = int(proc_status(s.pid)["VmHWM"].split()[0])
    assert hwm < MEMORY_LIMIT_KB, "VmHWM %d kB" % hwm
    assert s.quit() == b"+OK Sayonara"
    assert read_file(path) == before


def test_large_message_streams_in_bounded_memory(users, mbox_for, pipe_session):
    """A 40 MB message: STAT/LIST size exact, RETR bytes exact, VmHWM stays under 50 MB
    (the store streams bodies instead of loading them)."""
    import hashlib
    alice = users["alice"]
    big = make_message(1, body_lines=40 * 1024 * 1024 // 64, line=b"%d-%d " + b"z" * 52)
    want = hashlib.sha256(presented(big)).hexdigest()
    size = len(presented(big))
    mbox_for(alice, mbox_of([big, make_message(2)]))
    s = pipe_session("--allow-plaintext")
    s.greeting()
    s.login(alice.name, alice.password)
    assert s.cmd("LIST 1") == b"+OK 1 %d" % size
    assert s.cmd("RETR 1") == b"+OK %d octets" % size
    digest = hashlib.sha256()
    while True:
        line = s.readline(timeout=60)
        if line == b".":
            break
        digest.update((line[1:] if line.startswith(b"..") else line) + b"\r\n")
    assert digest.hexdigest() == want
    hwm = int(proc_status(s.pid)["VmHWM"].split()[0])
    assert hwm < MEMORY_LIMIT_KB, "VmHWM %d kB" % hwm
    assert s.quit(timeout=120) == b"+OK Sayonara"
