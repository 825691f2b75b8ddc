"""UW-IMAP compatibility on UW's own fixture (tests/fixtures, recorded from imap-2007f).

Replays the commands of pop1-fresh.txt and compares the answers and the spool UW left
(mbox-after-pop1-fresh.raw) with ours. Deliberate difference: UW synthesizes a
"Status: xx" line (12 octets with CRLF) in every message it presents; ipop3d hides all
metadata headers, so each size is UW's minus 12 and the Status line is absent from TOP/RETR.
Faults tried: a reused UIDVALIDITY across sessions, wrong UIDL rule, wrong metadata written.
"""

import os
import re

from mailtest import FIXTURES, presented, read_file, split_mbox

UW_STATUS_LINE = 12  # "Status: O\r\n" style line UW adds to every presented message


def uw_transcript():
    """[(command, [response lines])] from pop1-fresh.txt, without the greeting."""
    pairs, current = [], None
    for line in read_file(os.path.join(FIXTURES, "pop1-fresh.txt")).decode().split("\n"):
        if line.startswith("C: "):
            current = (line[3:], [])
            pairs.append(current)
        elif line.startswith("S: ") and current is not None:
            current[1].append(line[3:].rstrip("\r"))
    return pairs


def replay(session, user):
    """Send each recorded command (user/password substituted); return our response lines."""
    answers = []
    for command, uw_lines in uw_transcript():
        if command.startswith("USER "):
            command = "USER " + user.name
        elif command.startswith("PASS "):
            command = "PASS " + user.password
        first = session.cmd(command)
        lines = [first.decode()]
        multi = command in ("CAPA", "LIST", "UIDL") or command.startswith(("TOP", "RETR"))
        if multi and first.startswith(b"+OK"):
            lines += [x.decode() for x in session.multiline()] + ["."]
        answers.append((command, uw_lines, lines))
    return answers


def test_uw_sizes_are_uw_minus_status_line(uw_inbox):
    """The presentation rule on UW's fixture gives UW's LIST sizes minus 12 each."""
    msgs = split_mbox(uw_inbox)
    assert [len(presented(m)) for m in msgs] == [253 - 12, 625 - 12, 270 - 12]


def test_replay_pop1_fresh(users, mbox_for, pipe_session, uw_inbox):
    """Every answer of UW's session, adjusted only for the documented differences, and the
    spool afterwards byte-equal to UW's apart from the UIDVALIDITY digits."""
    alice = users["alice"]
    path = mbox_for(alice, uw_inbox)
    s = pipe_session("--allow-plaintext")
    s.greeting()
    answers = replay(s, alice)
    s.close()
    by_cmd = {}
    for command, uw, ours in answers:
        by_cmd.setdefault(command, []).append((uw, ours))

    assert by_cmd["PASS " + alice.password][0][1] == ["+OK Mailbox open, 3 messages"]
    stat_fresh, stat_after = by_cmd["STAT"]
    assert stat_fresh[1] == ["+OK 3 %d" % (1148 - 3 * UW_STATUS_LINE)]
    assert stat_after[1] == ["+OK 2 %d" % (895 - 2 * UW_STATUS_LINE)]
    list_fresh, list_after = by_cmd["LIST"]
    assert list_fresh[1] == ["+OK Mailbox scan listing follows", "1 241", "2 613", "3 258", "."]
    assert list_after[1] == ["+OK Mailbox scan listing follows", "2 613", "3 258", "."]
    assert by_cmd["LIST 2"][0][1] == ["+OK 2 613"]

    uw_uidl, our_uidl = by_cmd["UIDL"][0]
    assert our_uidl[0] == "+OK Unique-ID listing follows"
    validity_hex = our_uidl[1].split()[1][:8]
    assert re.match(r"^[0-9a-f]{8}$", validity_hex), our_uidl
    uw_validity_hex = uw_uidl[1].split()[1][:8]
    assert our_uidl == [line.replace(uw_validity_hex, validity_hex) for line in uw_uidl]
    assert by_cmd["UIDL 3"][0][1] == ["+OK 3 %s00000003" % validity_hex]

    uw_top, our_top = by_cmd["TOP 1 1"][0]
    assert our_top == [line for line in uw_top if not line.startswith("Status:")]
    uw_retr, our_retr = by_cmd["RETR 3"][0]
    assert our_retr[0] == "+OK 258 octets"
    assert our_retr[1:] == [line for line in uw_retr[1:] if not line.startswith("Status:")]

    for command in ("DELE 1", "RETR 1", "NOOP", "LAST", "QUIT"):
        for uw, ours in by_cmd[command]:
            assert ours == uw, (command, uw, ours)
    assert by_cmd["XTND XMIT"][0][1][0].startswith("-ERR")

    after = read_file(path)
    uw_after = read_file(os.path.join(FIXTURES, "mbox-after-pop1-fresh.raw"))
    validity = int(validity_hex, 16)
    expected = re.sub(rb"X-IMAPbase: \d+ ", b"X-IMAPbase: %d " % validity, uw_after)
    assert after == expected


def test_uidvalidity_and_uids_persist(users, mbox_for, pipe_session, uw_inbox):
    """A second session sees the same UIDL values (persisted X-IMAPbase/X-UID)."""
    alice = users["alice"]
    mbox_for(alice, uw_inbox)
    uidls = []
    for _ in range(2):
        s = pipe_session("--allow-plaintext")
        s.greeting()
        s.login(alice.name, alice.password)
        s.ok("UIDL")
        uidls.append(s.multiline())
        s.quit()
    assert uidls[0] == uidls[1]
    assert len(uidls[0]) == 3


def test_reads_uw_written_metadata(users, mbox_for, pipe_session):
    """The spool UW left after an IMAP session (mbox-after-imap1.raw: X-IMAPbase with
    keywords, X-UID gaps, X-Status flags, a From_ line with a zone): UIDLs come from UW's
    UIDVALIDITY and X-UIDs, bodies are presented without metadata, and a POP3 session that
    reads everything keeps UW's UIDs, keywords and flags, only adding \\Seen."""
    alice = users["alice"]
    uw = read_file(os.path.join(FIXTURES, "mbox-after-imap1.raw"))
    path = mbox_for(alice, uw)
    msgs = split_mbox(uw)
    uids = [int(re.search(rb"(?m)^X-UID: (\d+)", m).group(1)) for m in msgs]
    validity = int(re.search(rb"(?m)^X-IMAPbase: (\d+) ", uw).group(1))
    s = pipe_session("--allow-plaintext")
    s.greeting()
    assert s.login(alice.name, alice.password) == b"+OK Mailbox open, %d messages" % len(msgs)
    s.ok("UIDL")
    assert s.multiline() == [b"%d %08x%08x" % (i + 1, validity, uid) for i, uid in enumerate(uids)]
    for i, m in enumerate(msgs):
        resp, data = s.retr(i + 1)
        assert data == presented(m), "message %d" % (i + 1)
    assert s.quit() == b"+OK Sayonara"
    after = read_file(path)
    assert re.search(rb"(?m)^X-IMAPbase: %d 5 \$Forwarded Junk$" % validity, after), after[:600]
    assert re.findall(rb"(?m)^X-UID: (\d+)$", after) == [b"%d" % u for u in uids]
    assert re.findall(rb"(?m)^X-Status: (.*)$", after) == re.findall(rb"(?m)^X-Status: (.*)$", uw)
    assert [k.strip() for k in re.findall(rb"(?m)^X-Keywords:(.*)$", after)] == \
        [k.strip() for k in re.findall(rb"(?m)^X-Keywords:(.*)$", uw)]
    assert re.findall(rb"(?m)^Status: (.*)$", after) == [b"RO"] * len(msgs)
    assert [presented(m) for m in split_mbox(after)] == [presented(m) for m in msgs]
