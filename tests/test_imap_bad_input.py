"""Hostile and malformed IMAP input: each must get a clear tagged BAD or NO (or, where the
server cannot resynchronise, an untagged BYE and a close), the process must stay within a
bounded peak memory (VmHWM), and the mailbox file must be byte-for-byte unchanged.

Faults tried: 10,000 nested parentheses in SEARCH (stack overflow), literal sizes 2^32 and
10^20 (overflow, huge allocation, a continuation that invites 4 GB), sequence sets 0 and
4294967296 (out of range) and *:* (valid: the last message), a 1 MB atom (unbounded line
buffer), unbalanced quotes, NUL and CR inside quoted strings, invalid modified UTF-7 mailbox
names (must not create anything), APPEND of a message with NUL bytes (needs literal8) and of
a message without a header (an mbox `From ` body line must not split the mailbox).
"""

import hashlib
import os
import re

import pytest

from imaptest import imap_store_messages, mbox_message_count, vm_hwm_kb
from mailtest import make_message, mbox_of, read_file

MAX_HWM_KB = 64 * 1024


@pytest.fixture
def session(imap_users, mbox_for, imap_pipe):
    """alice logged in over a pipe with INBOX (3 messages) selected, after a first session
    has written the UID metadata: (session, spool path, bytes before)."""
    alice = imap_users["alice"]
    path = mbox_for(alice, mbox_of([make_message(i) for i in range(1, 4)]))
    first = imap_pipe("--allow-plaintext")
    first.greeting()
    first.login(alice.name, alice.password)
    first.ok("SELECT INBOX")
    first.ok("LOGOUT")
    first.close()
    s = imap_pipe("--allow-plaintext")
    s.greeting()
    s.login(alice.name, alice.password)
    s.ok("EXAMINE INBOX")
    s.ok("SELECT INBOX")
    return s, path, read_file(path)


def still_alive(s):
    lines, tagged = s.cmd("NOOP")
    assert tagged.startswith(b"OK"), tagged


def rejected(tagged):
    return tagged.startswith((b"BAD", b"NO"))


def check_after(s, path, before, alive=True):
    if alive:
        still_alive(s)
        assert vm_hwm_kb(s.pid) < MAX_HWM_KB, "VmHWM %d kB" % vm_hwm_kb(s.pid)
        s.ok("LOGOUT")
    s.close()
    assert read_file(path) == before, "mailbox changed"


def test_deeply_nested_search(session):
    s, path, before = session
    lines, tagged = s.cmd("SEARCH " + "(" * 10000 + "ALL" + ")" * 10000)
    assert rejected(tagged), tagged
    lines, tagged = s.cmd("SEARCH " + "NOT " * 10000 + "ALL")
    assert rejected(tagged) or lines == [b"* SEARCH"], (lines, tagged)
    check_after(s, path, before)


@pytest.mark.parametrize("size", ["4294967296", "99999999999999999999"])
def test_huge_synchronising_literal(session, size):
    """The server must refuse the literal before inviting it (no `+` continuation)."""
    s, path, before = session
    s.send("a1 APPEND INBOX {%s}" % size)
    line = s.readline()
    assert not line.startswith(b"+"), "continuation for a %s-byte literal" % size
    assert line.startswith((b"a1 BAD", b"a1 NO", b"* BYE")), line
    if line.startswith(b"* BYE"):
        s.read_to_eof()
        check_after(s, path, before, alive=False)
    else:
        check_after(s, path, before)


@pytest.mark.parametrize("size", ["4294967296", "99999999999999999999"])
def test_huge_non_synchronising_literal(session, size):
    """LITERAL+: the bytes follow anyway, so the server must reject and close (BYE) or read
    and discard without buffering them."""
    s, path, before = session
    s.send_raw(b"a1 APPEND INBOX {%s+}\r\nFrom: x\r\n\r\nbody\r\n" % size.encode())
    line = s.readline()
    assert line.startswith((b"* BYE", b"a1 BAD", b"a1 NO")), line
    if line.startswith(b"* BYE"):
        s.read_to_eof()
        check_after(s, path, before, alive=False)
    else:
        assert vm_hwm_kb(s.pid) < MAX_HWM_KB
        s.kill()
        assert read_file(path) == before


def test_sequence_sets(session):
    s, path, before = session
    for bad in ("0", "0:2", "4294967296", "1:4294967296", "1,,2", "-1", "1:"):
        lines, tagged = s.cmd("FETCH %s FLAGS" % bad)
        assert tagged.startswith(b"BAD"), (bad, tagged)
        lines, tagged = s.cmd("UID FETCH %s FLAGS" % bad)
        assert tagged.startswith(b"BAD"), ("UID", bad, tagged)
    lines, tagged = s.cmd("FETCH *:* UID")
    assert tagged.startswith(b"OK") and len(lines) == 1 and lines[0].startswith(b"* 3 FETCH"), lines
    lines, tagged = s.cmd("FETCH 4294967295 UID")
    assert rejected(tagged), tagged
    lines, tagged = s.cmd("UID FETCH 4294967295 UID")
    assert tagged.startswith(b"OK") and lines == [], (lines, tagged)
    check_after(s, path, before)


def test_one_megabyte_atom(session):
    s, path, before = session
    s.send("a1 SELECT " + "A" * (1 << 20))
    line = s.readline(timeout=30)
    assert line.startswith((b"a1 BAD", b"a1 NO", b"* BYE", b"* BAD")), line[:200]
    if line.startswith(b"* BYE"):
        s.read_to_eof()
        check_after(s, path, before, alive=False)
        return
    check_after(s, path, before)


def test_quoting_errors(session):
    s, path, before = session
    for bad in (b'SELECT "INBOX', b'SELECT INBOX"', b'SELECT "IN\0BOX"',
                b'SEARCH SUBJECT "a\rb"', b'LOGIN "a\\b" c', b'SEARCH SUBJECT "x\\"'):
        lines, tagged = s.cmd(bad)
        assert tagged.startswith(b"BAD"), (bad, tagged)
    check_after(s, path, before)


def test_invalid_modified_utf7(session, imap_users):
    """Names that are not valid modified UTF-7 are refused and nothing is created."""
    s, path, before = session
    alice = imap_users["alice"]
    home_before = sorted(os.listdir(alice.home))
    for name in ("&Jjo", "&AGE-", "&-x&", "a&Jjo!-", "&U,BTFw-&ZeVnLIqe-&", "&2D0-", "&3gE-"):
        lines, tagged = s.cmd('CREATE "%s"' % name)
        assert rejected(tagged), (name, tagged)
    assert sorted(os.listdir(alice.home)) == home_before
    lines, tagged = s.cmd('CREATE "&U,BTFw-"')
    assert tagged.startswith(b"OK"), tagged
    assert "&U,BTFw-" in os.listdir(alice.home), "UW keeps the modified UTF-7 name on disk"
    s.ok('DELETE "&U,BTFw-"')
    check_after(s, path, before)


def test_append_with_nul_bytes_is_refused(session):
    s, path, before = session
    msg = b"From: a@example.com\r\nSubject: nul\r\n\r\nbin\0ary\r\n"
    lines, tagged = s.literal_cmd("APPEND INBOX", msg)
    assert rejected(tagged), tagged
    lines, tagged = s.literal_cmd("APPEND INBOX", msg, sync=False)
    assert rejected(tagged), tagged
    check_after(s, path, before)


def test_append_without_header(session):
    """A message with no header that starts with a From_ line: refused, or stored so that the
    mailbox still has exactly 4 messages and the message reads back byte for byte except that
    lines starting `From ` may be quoted as `>From ` (the one change mboxo forces)."""
    s, path, before = session
    msg = b"From evil Mon Jan  1 00:00:00 2024\r\nno header here\r\n\r\nFrom again\r\n"
    lines, tagged = s.literal_cmd("APPEND INBOX", msg)
    if rejected(tagged):
        check_after(s, path, before)
        return
    assert tagged.startswith(b"OK [APPENDUID"), tagged
    s.ok("NOOP")
    quoted = re.sub(rb"(?m)^From ", b">From ", msg)
    assert imap_store_messages(s)[-1] in (msg, quoted)
    s.ok("LOGOUT")
    s.close()
    after = read_file(path)
    assert mbox_message_count(after) == 4, after[len(before) - 100:]
    assert read_file(path).startswith(before[:200])


def test_mailbox_unchanged_after_garbage_lines(session):
    s, path, before = session
    for junk in (b"", b" ", b"*", b"a1", b"a1 FROB", b"a1 FETCH", b"a1 STORE 1 +FLAGS (\\Bogus",
                 b"a1 UID", b"a1 FETCH 1 BODY[1.2.3.4.5.6.7.8.9.10.11.12.13.14.15.16.17.18]<0.>",
                 b"a1 COPY 1", b"\xff\xfe\x00", b"a1 LOGIN x y z"):
        s.send_raw(junk + b"\r\n")
        line = s.readline()
        assert re.match(rb"(\* BAD|a1 BAD|a1 NO|\* OK)", line), (junk, line)
    check_after(s, path, before)


BIG_LINE = b"x" * 998 + b"\r\n"
BIG_MESSAGE = (b"From: big@example.com\r\nSubject: big\r\nMessage-ID: <big@test>\r\n\r\n"
               + BIG_LINE * 40000)


def append_big(s):
    """APPEND the 40 MB message with LITERAL+ (the server cannot refuse before the bytes come);
    returns the VmHWM bound: the session's peak before it plus 16 MB."""
    bound = vm_hwm_kb(s.pid) + 16 * 1024
    lines, tagged = s.literal_cmd("APPEND INBOX", BIG_MESSAGE, sync=False, timeout=120)
    assert tagged.startswith(b"OK [APPENDUID"), tagged
    return bound


def test_large_append_has_bounded_memory(session):
    """A 40 MB APPEND is spooled, not held in memory: VmHWM grows by less than 16 MB; the
    message is stored whole (RFC822.SIZE, BODY[] checksum from a fresh session)."""
    s, path, before = session
    bound = append_big(s)
    assert vm_hwm_kb(s.pid) < bound, "VmHWM %d kB after a 40 MB APPEND" % vm_hwm_kb(s.pid)
    s.ok("LOGOUT")
    s.close()
    assert mbox_message_count(read_file(path)) == 4
    body = BIG_MESSAGE.split(b"\r\n\r\n", 1)[1].replace(b"\r\n", b"\n")
    assert b"\n\n" + body in read_file(path), "the appended body is not in the spool whole"


@pytest.mark.parametrize("items", [
    "BODY.PEEK[]", "RFC822.SIZE", "BODY.PEEK[TEXT]<0.100>", "BINARY.PEEK[1]<0.100>",
    "BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]", "BODYSTRUCTURE", "ENVELOPE",
])
def test_fetch_of_large_message_has_bounded_memory(session, items):
    """The session notices a new 40 MB message and FETCHes `items` of it without holding it in
    memory: VmHWM grows by less than 16 MB over the whole exchange."""
    s, path, before = session
    bound = append_big(s)
    lines = s.ok("NOOP")
    assert vm_hwm_kb(s.pid) < bound, "VmHWM %d kB after NOOP (%r)" % (vm_hwm_kb(s.pid), lines)
    got = b"".join(s.ok("FETCH 4 (%s)" % items, timeout=60))
    if items == "BODY.PEEK[]":
        assert hashlib.sha256(got).hexdigest() == hashlib.sha256(
            b"* 4 FETCH (BODY[] {%d}\r\n" % len(BIG_MESSAGE) + BIG_MESSAGE + b")").hexdigest()
    assert vm_hwm_kb(s.pid) < bound, "VmHWM %d kB after FETCH %s" % (vm_hwm_kb(s.pid), items)
