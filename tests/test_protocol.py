"""POP3 protocol behaviour of ipop3d over a pipe (inetd style, peer UNKNOWN), run as root with
real PAM users: greeting, CAPA before/after login, every TRANSACTION command, exact message
bytes, DELE applied only at QUIT, RSET, [IN-USE], plaintext refusal, and the log lines.

Faults tried: wrong message numbers, deleted messages, a second session on a held mailbox,
a dropped connection after DELE (must delete nothing), SIGTERM, SIGKILL and SIGHUP after
DELE (the server started with the signal ignored, as `nohup` leaves it: it must still end,
deleting nothing), plaintext on a non-secure transport.
"""

import os
import re
import signal
import time

import pytest

from mailtest import dot_unstuff, make_message, mbox_of, presented, read_file, split_mbox

GREETING = re.compile(rb"^\+OK POP3 \S+ ipop3d \S+ server ready$")


def three_messages():
    return [make_message(i, body_lines=i + 1) for i in (1, 2, 3)]


def test_greeting_and_capa_before_and_after_login(users, mbox_for, pipe_session):
    """Greeting text; CAPA lists USER/SASL only before login and never STLS without a cert."""
    alice = users["alice"]
    mbox_for(alice, mbox_of(three_messages()))
    s = pipe_session("--allow-plaintext")
    greeting = s.greeting()
    assert GREETING.match(greeting), greeting
    assert s.cmd("CAPA") == b"+OK Capability list follows"
    caps = s.multiline()
    for cap in (b"TOP", b"UIDL", b"RESP-CODES", b"AUTH-RESP-CODE", b"PIPELINING",
                b"EXPIRE NEVER", b"USER"):
        assert cap in caps, (cap, caps)
    sasl = [c for c in caps if c.startswith(b"SASL ")]
    assert sasl and b"PLAIN" in sasl[0].split() and b"LOGIN" in sasl[0].split(), caps
    assert b"CRAM-MD5" not in sasl[0], "CRAM-MD5 offered without a secrets file"
    assert b"STLS" not in caps, "STLS offered without a certificate"
    assert any(re.match(rb"^IMPLEMENTATION ipop3d-\S+$", c) for c in caps), caps
    assert not any(c.startswith(b"LOGIN-DELAY") for c in caps), caps
    assert s.login(alice.name, alice.password) == b"+OK Mailbox open, 3 messages"
    assert s.cmd("CAPA") == b"+OK Capability list follows"
    after = s.multiline()
    assert b"TOP" in after and b"UIDL" in after
    assert not any(c == b"USER" or c.startswith(b"SASL") or c == b"STLS" for c in after), after
    assert s.quit() == b"+OK Sayonara"


def test_transaction_commands_and_exact_bytes(users, mbox_for, pipe_session):
    """STAT/LIST/UIDL/RETR/TOP/DELE/RSET/LAST/NOOP answers; RETR bytes equal the originals."""
    alice = users["alice"]
    msgs = three_messages()
    msgs[1] = msgs[1].replace(b"Body line 0", b".leading dot line\n..two dots\n.")
    path = mbox_for(alice, mbox_of(msgs))
    want = [presented(m) for m in msgs]
    s = pipe_session("--allow-plaintext")
    s.greeting()
    s.login(alice.name, alice.password)
    assert s.cmd("STAT") == b"+OK 3 %d" % sum(len(w) for w in want)
    assert s.cmd("LIST") == b"+OK Mailbox scan listing follows"
    assert s.multiline() == [b"%d %d" % (i + 1, len(w)) for i, w in enumerate(want)]
    assert s.cmd("LIST 2") == b"+OK 2 %d" % len(want[1])
    assert s.cmd("LIST 4") == b"-ERR No such message"
    assert s.cmd("UIDL") == b"+OK Unique-ID listing follows"
    uidl = s.multiline()
    assert len(uidl) == 3
    uids = [line.split()[1] for line in uidl]
    assert all(re.match(rb"^[0-9a-f]{16}$", u) for u in uids), uids
    assert len({u[:8] for u in uids}) == 1, "one UIDVALIDITY prefix"
    assert [int(u[8:], 16) for u in uids] == [1, 2, 3]
    assert s.cmd("UIDL 3") == b"+OK 3 " + uids[2]
    for i, w in enumerate(want):
        resp, data = s.retr(i + 1)
        assert resp == b"+OK %d octets" % len(w)
        assert data == w, "RETR %d bytes differ" % (i + 1)
    assert s.cmd("TOP 3 1") == b"+OK Top of message follows"
    top = s.multiline()
    head = want[2].split(b"\r\n\r\n")[0].split(b"\r\n")
    assert top == head + [b"", b"Body line 0 of message 3, some filler text."]
    assert s.cmd("TOP 3 0") == b"+OK Top of message follows"
    assert s.multiline() == head + [b""]
    assert s.cmd("TOP 1 x") == b"-ERR Bad line count argument"
    assert s.cmd("LAST") == b"+OK 3"
    assert s.cmd("NOOP") == b"+OK No-op to you too!"
    assert s.cmd("DELE 2") == b"+OK Message deleted"
    assert s.cmd("DELE 2") == b"-ERR No such message"
    assert s.cmd("RETR 2") == b"-ERR No such message"
    assert s.cmd("LIST 2") == b"-ERR No such message"
    assert s.cmd("STAT") == b"+OK 2 %d" % (len(want[0]) + len(want[2]))
    assert s.cmd("RSET") == b"+OK Reset state"
    assert s.cmd("STAT") == b"+OK 3 %d" % sum(len(w) for w in want)
    assert s.cmd("DELE 1") == b"+OK Message deleted"
    assert s.cmd("USER x") == b"-ERR Unknown TRANSACTION state command"
    assert s.cmd("FOO") == b"-ERR Unknown TRANSACTION state command"
    before = os.stat(path)
    assert s.quit() == b"+OK Sayonara"
    left = split_mbox(read_file(path))
    assert [presented(m) for m in left] == want[1:], "QUIT must remove exactly message 1"
    after = os.stat(path)
    # rewritten in place: same inode (an MTA holding the file open appends to the live
    # mailbox), same owner and mode
    assert (after.st_ino, after.st_uid, after.st_gid, after.st_mode) == \
        (before.st_ino, before.st_uid, before.st_gid, before.st_mode)


def test_dele_without_quit_deletes_nothing(users, mbox_for, pipe_session):
    """A connection dropped (stdin closed) after DELE leaves every message in place."""
    alice = users["alice"]
    msgs = three_messages()
    path = mbox_for(alice, mbox_of(msgs))
    s = pipe_session("--allow-plaintext")
    s.greeting()
    s.login(alice.name, alice.password)
    s.ok("DELE 1")
    s.ok("DELE 3")
    s.close()
    assert [presented(m) for m in split_mbox(read_file(path))] == [presented(m) for m in msgs]
    s2 = pipe_session("--allow-plaintext")
    s2.greeting()
    assert s2.login(alice.name, alice.password) == b"+OK Mailbox open, 3 messages"
    s2.quit()


def test_authorization_state_errors(users, mbox_for, pipe_session):
    """TRANSACTION commands before login, PASS without USER, unknown commands."""
    alice = users["alice"]
    mbox_for(alice, mbox_of(three_messages()))
    s = pipe_session("--allow-plaintext")
    s.greeting()
    for cmd in ("STAT", "LIST", "RETR 1", "DELE 1", "UIDL", "TOP 1 1", "RSET", "LAST", "FOO"):
        assert s.cmd(cmd) == b"-ERR Unknown AUTHORIZATION state command", cmd
    assert s.cmd("PASS whatever").startswith(b"-ERR"), "PASS without USER"
    assert s.cmd("NOOP").startswith(b"-ERR"), "NOOP is TRANSACTION only (RFC 1939)"
    assert s.login(alice.name, alice.password) == b"+OK Mailbox open, 3 messages"
    s.quit()


def test_quit_in_authorization_state(pipe_session):
    s = pipe_session("--allow-plaintext")
    s.greeting()
    assert s.cmd("QUIT").startswith(b"+OK")
    assert s.read_to_eof() == b""


def test_plaintext_refused_on_pipe_without_allow_plaintext(users, mbox_for, pipe_session):
    """A pipe is neither TLS nor a loopback socket: USER -> [AUTH] refusal, CAPA lacks USER,
    AUTH PLAIN is refused too."""
    alice = users["alice"]
    mbox_for(alice, mbox_of(three_messages()))
    s = pipe_session()
    s.greeting()
    s.send("CAPA")
    assert s.readline() == b"+OK Capability list follows"
    caps = s.multiline()
    assert b"USER" not in caps, caps
    assert not any(b"PLAIN" in c for c in caps), caps
    assert s.cmd("USER " + alice.name) == (
        b"-ERR [AUTH] Plaintext authentication disallowed on non-secure connection")
    assert s.cmd("AUTH PLAIN").startswith(b"-ERR"), "AUTH PLAIN must be refused too"
    assert s.cmd("STAT") == b"-ERR Unknown AUTHORIZATION state command"
    s.cmd("QUIT")


def test_second_session_gets_in_use(users, mbox_for, pipe_session):
    """POP3 is exclusive: a second login while the first holds the mailbox gets [IN-USE] and
    stays in AUTHORIZATION; after the first QUITs, login works again."""
    alice = users["alice"]
    mbox_for(alice, mbox_of(three_messages()))
    first = pipe_session("--allow-plaintext")
    first.greeting()
    first.login(alice.name, alice.password)
    second = pipe_session("--allow-plaintext")
    second.greeting()
    second.ok("USER " + alice.name)
    resp = second.cmd("PASS " + alice.password, timeout=60)
    assert resp.startswith(b"-ERR [IN-USE] Mailbox in use"), resp
    assert_closed_or_authorization(second)
    assert first.quit() == b"+OK Sayonara"
    third = pipe_session("--allow-plaintext")
    third.greeting()
    assert third.login(alice.name, alice.password) == b"+OK Mailbox open, 3 messages"
    third.quit()


def assert_closed_or_authorization(s):
    """After a login that authenticated but could not open the mailbox the session has
    already become the user: ipop3d closes, as UW does; staying in AUTHORIZATION is the
    other RFC 2449 option. Anything else (e.g. TRANSACTION) is wrong."""
    try:
        resp = s.cmd("STAT")
    except (EOFError, BrokenPipeError):
        return
    assert resp == b"-ERR Unknown AUTHORIZATION state command", resp


def test_log_lines_on_debug(users, mbox_for, pipe_session):
    """--debug copies the syslog lines to stderr: Login, Update (counts), Logout, host UNKNOWN."""
    alice = users["alice"]
    mbox_for(alice, mbox_of(three_messages()))
    s = pipe_session("--allow-plaintext", "--debug")
    s.greeting()
    s.ok("USER nosuchuser")
    assert s.cmd("PASS nope") == b"-ERR [AUTH] Bad login"
    s.login(alice.name, alice.password)
    s.retr(3)
    s.ok("DELE 1")
    s.send("QUIT")
    assert s.readline() == b"+OK Sayonara"
    err = s.close().decode("utf-8", "replace")
    u = alice.name
    assert re.search(r"ipop3d\[\d+\]: Login failed user=nosuchuser auth=nosuchuser host=UNKNOWN", err), err
    assert re.search(r"ipop3d\[\d+\]: Login user=%s host=UNKNOWN nmsgs=3/3" % u, err), err
    assert re.search(r"ipop3d\[\d+\]: Update user=%s host=UNKNOWN nmsgs=2 ndele=1 nseen=1" % u, err), err
    assert re.search(r"ipop3d\[\d+\]: Logout user=%s host=UNKNOWN" % u, err), err


def test_empty_and_missing_mailbox(users, spool, mbox_for, pipe_session):
    """A user without a spool file, and one with an empty file, both see 0 messages."""
    bob = users["bob"]
    s = pipe_session("--allow-plaintext")
    s.greeting()
    assert s.login(bob.name, bob.password) == b"+OK Mailbox open, 0 messages"
    assert s.cmd("STAT") == b"+OK 0 0"
    assert s.cmd("LIST") == b"+OK Mailbox scan listing follows"
    assert s.multiline() == []
    assert s.cmd("RETR 1") == b"-ERR No such message"
    assert s.quit() == b"+OK Sayonara"
    mbox_for(bob, b"")
    s = pipe_session("--allow-plaintext")
    s.greeting()
    assert s.login(bob.name, bob.password) == b"+OK Mailbox open, 0 messages"
    assert s.quit() == b"+OK Sayonara"


def test_damaged_mailbox_is_sys_perm_and_untouched(users, mbox_for, pipe_session):
    """A spool file that is not an mbox (no From_ line) -> -ERR [SYS/PERM], bytes unchanged."""
    alice = users["alice"]
    junk = b"This is not a mailbox\nat all\n"
    path = mbox_for(alice, junk)
    s = pipe_session("--allow-plaintext")
    s.greeting()
    s.ok("USER " + alice.name)
    resp = s.cmd("PASS " + alice.password)
    assert resp.startswith(b"-ERR [SYS/PERM]"), resp
    assert_closed_or_authorization(s)
    assert read_file(path) == junk


def test_login_delay_and_expire_capabilities(users, mbox_for, pipe_session):
    """--login-delay N advertises LOGIN-DELAY N; --expire sets the EXPIRE value."""
    s = pipe_session("--allow-plaintext", "--login-delay", "900", "--expire", "30")
    s.greeting()
    s.send("CAPA")
    assert s.readline() == b"+OK Capability list follows"
    caps = s.multiline()
    assert b"LOGIN-DELAY 900" in caps, caps
    assert b"EXPIRE 30" in caps, caps
    s.cmd("QUIT")


def test_login_timeout_autologout(users, pipe_session):
    """--login-timeout 1: an idle unauthenticated client is told and disconnected."""
    s = pipe_session("--allow-plaintext", "--login-timeout", "1")
    s.greeting()
    start = time.monotonic()
    line = s.readline(timeout=15)
    assert line.startswith(b"-ERR") and b"utologout" in line, line
    assert s.read_to_eof() == b""
    assert 0.5 <= time.monotonic() - start < 10


def test_idle_timeout_deletes_nothing(users, mbox_for, pipe_session):
    """--idle-timeout 1 after DELE: Autologout, connection closed, nothing deleted, logged."""
    alice = users["alice"]
    msgs = three_messages()
    path = mbox_for(alice, mbox_of(msgs))
    s = pipe_session("--allow-plaintext", "--idle-timeout", "1", "--debug")
    s.greeting()
    s.login(alice.name, alice.password)
    s.ok("DELE 1")
    line = s.readline(timeout=15)
    assert line.startswith(b"-ERR") and b"utologout" in line, line
    assert s.read_to_eof() == b""
    err = s.close().decode("utf-8", "replace")
    assert re.search(r"Autologout user=%s host=UNKNOWN" % alice.name, err), err
    assert [presented(m) for m in split_mbox(read_file(path))] == [presented(m) for m in msgs]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL, signal.SIGHUP])
def test_signal_during_session_deletes_nothing(sig, users, mbox_for, pipe_session):
    alice = users["alice"]
    msgs = three_messages()
    path = mbox_for(alice, mbox_of(msgs))
    # Started as `nohup` would start it, with the signal ignored: the server still ends.
    inherited = signal.signal(sig, signal.SIG_IGN) if sig != signal.SIGKILL else None
    try:
        s = pipe_session("--allow-plaintext")
    finally:
        if inherited is not None:
            signal.signal(sig, inherited)
    s.greeting()
    s.login(alice.name, alice.password)
    s.ok("DELE 1")
    s.ok("DELE 2")
    os.kill(s.pid, sig)
    s.proc.wait(timeout=10)
    s.close()
    lock = path + ".lock"
    if os.path.exists(lock):  # only a SIGKILL inside a locked section may leave one
        assert sig == signal.SIGKILL, "dotlock left after %s" % sig
    assert [presented(m) for m in split_mbox(read_file(path))] == [presented(m) for m in msgs]


def test_login_delay_enforced(users, mbox_for, pipe_session):
    """--login-delay 60: a second login right after the first gets [LOGIN-DELAY]."""
    alice = users["alice"]
    mbox_for(alice, mbox_of(three_messages()))
    stamp = os.path.join(alice.home, ".ipop3d-last-login")
    if os.path.exists(stamp):
        os.unlink(stamp)
    try:
        s = pipe_session("--allow-plaintext", "--login-delay", "60")
        s.greeting()
        assert s.login(alice.name, alice.password) == b"+OK Mailbox open, 3 messages"
        assert s.quit() == b"+OK Sayonara"
        s = pipe_session("--allow-plaintext", "--login-delay", "60")
        s.greeting()
        s.ok("USER " + alice.name)
        resp = s.cmd("PASS " + alice.password)
        assert resp.startswith(b"-ERR [LOGIN-DELAY]"), resp
    finally:
        if os.path.exists(stamp):
            os.unlink(stamp)


def test_retr_and_top_mark_seen_and_last(users, mbox_for, pipe_session):
    """LAST is 0 before any access and the highest number accessed after; RETR and TOP mark
    \\Seen, which QUIT writes as Status: RO; an untouched message is only marked old (O)."""
    alice = users["alice"]
    path = mbox_for(alice, mbox_of(three_messages()))
    s = pipe_session("--allow-plaintext")
    s.greeting()
    s.login(alice.name, alice.password)
    assert s.cmd("LAST") == b"+OK 0"
    s.ok("TOP 1 0")
    s.multiline()
    assert s.cmd("LAST") == b"+OK 1"
    s.retr(3)
    assert s.cmd("LAST") == b"+OK 3"
    assert s.quit() == b"+OK Sayonara"
    statuses = [re.findall(rb"(?m)^Status: (\w*)$", m.split(b"\n\n")[0]) for m in split_mbox(read_file(path))]
    assert statuses == [[b"RO"], [b"O"], [b"RO"]], statuses


def test_case_insensitive_commands_and_bare_lf(users, mbox_for, pipe_session):
    """Keywords are case-insensitive (RFC 1939); a bare LF line end is accepted; TOP with a
    count beyond the body returns the whole message."""
    alice = users["alice"]
    msgs = three_messages()
    mbox_for(alice, mbox_of(msgs))
    s = pipe_session("--allow-plaintext")
    s.greeting()
    s.send_raw(b"user " + alice.name.encode() + b"\n")
    assert s.readline() == b"+OK User name accepted, password please"
    assert s.cmd("Pass " + alice.password) == b"+OK Mailbox open, 3 messages"
    assert s.cmd("stat").startswith(b"+OK 3 ")
    assert s.cmd("list 2") == b"+OK 2 %d" % len(presented(msgs[1]))
    assert s.cmd("rEtR 2") == b"+OK %d octets" % len(presented(msgs[1]))
    assert dot_unstuff(s.multiline()) == presented(msgs[1])
    assert s.cmd("TOP 2 99999") == b"+OK Top of message follows"
    assert dot_unstuff(s.multiline()) == presented(msgs[1])
    assert s.cmd("quit") == b"+OK Sayonara"
