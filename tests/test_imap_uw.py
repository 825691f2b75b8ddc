"""UW-IMAP's recorded session (tests/fixtures/imap1.txt, uwtest on inbox.mbox) replayed in
part through imaplib with a real PAM login, the untagged data compared with UW's: STATUS and
SELECT counts, the FETCH of FLAGS UID RFC822.SIZE INTERNALDATE ENVELOPE BODYSTRUCTURE (byte
for byte), header and text literals, flag sets after STORE, COPYUID. The Rust test
imapd/tests/uw_reference.rs compares every byte of the whole session; this one checks the
same answers arrive through a real login, a real launcher and a real client library.

Faults tried: envelope/bodystructure text differing from UW's, sizes counted with LF,
\\Recent not reported for new mail, keywords lost, COPY to a missing folder not TRYCREATE.
"""

import imaplib
import os
import re

import launchers
from mailtest import FIXTURES, read_file


def uw_responses(tag):
    """UW's untagged `S: * ...` lines recorded for `tag` (literals left out)."""
    out, current = [], None
    for line in read_file(os.path.join(FIXTURES, "imap1.txt")).decode().splitlines():
        if line.startswith("C: "):
            current = line[3:].split(" ", 1)[0]
        elif line.startswith("S: * ") and current == tag:
            out.append(line[3:])
    return out


def flag_set(text):
    return set(re.search(r"FLAGS \(([^)]*)\)", text).group(1).split())


def test_uw_imap1_session_through_imaplib(imap_users, mbox_for, uw_inbox, imapd, imap_args):
    alice = imap_users["alice"]
    mbox_for(alice, uw_inbox)
    argv = [imapd if a == "/usr/local/sbin/imapd" else a
            for a in launchers.unit_exec_start("systemd/imapd@.service")]
    with launchers.socket_activate(argv + imap_args()[1:]) as port:
        M = imaplib.IMAP4("127.0.0.1", port)
        assert M.login(alice.name, alice.password)[0] == "OK"
        status = M.status("INBOX", "(MESSAGES RECENT UIDNEXT UIDVALIDITY UNSEEN)")[1][0].decode()
        uw = uw_responses("a010")[0]
        for item in ("MESSAGES 3", "RECENT 2", "UNSEEN 3", "UIDNEXT 4"):
            assert item in uw and item in status, (item, status)
        typ, data = M.select("INBOX")
        assert data == [b"3"] and M.untagged_responses["RECENT"] == [b"2"]
        assert M.untagged_responses["UNSEEN"] == [b"1"]
        typ, data = M.fetch("1:*", "(FLAGS UID RFC822.SIZE INTERNALDATE ENVELOPE BODYSTRUCTURE)")
        ours = [re.sub(r"^(\d+) ", r"* \1 FETCH ", d.decode()) for d in data]
        assert ours == uw_responses("a012"), "FETCH differs from UW"
        typ, data = M.fetch("1", "(BODY.PEEK[HEADER] BODY[TEXT])")
        text = read_file(os.path.join(FIXTURES, "imap1.txt")).decode()
        uw_header = text.split("S[literal 193 bytes]>>>\n", 1)[1].split("<<<", 1)[0]
        assert data[0][1] == uw_header.replace("␍", "\r").encode()
        assert data[1][1] == b"Hello, this is message one.\r\nIt has two lines.\r\n"
        flags = [d for d in data if isinstance(d, bytes) and b"FLAGS" in d]
        assert flags and flag_set(flags[-1].decode()) == {"\\Recent", "\\Seen"}, data
        M.store("1", "+FLAGS", "(\\Seen)")
        M.store("2", "+FLAGS", "($Forwarded Junk)")
        M.store("2", "+FLAGS.SILENT", "(\\Answered \\Flagged)")
        typ, data = M.fetch("1:*", "(FLAGS)")
        uw = uw_responses("a018")
        assert [flag_set(d.decode()) for d in data] == [flag_set(u) for u in uw], (data, uw)
        typ, data = M.copy("1:2", "testfolder")
        assert typ == "NO" and b"[TRYCREATE]" in data[0], data
        assert M.create("testfolder")[0] == "OK"
        typ, data = M.copy("1:2", "testfolder")
        # COPYUID names the destination's UIDVALIDITY (it equals INBOX's only when both were
        # made within the same second).
        copyuid = re.match(rb"\[COPYUID (\d+) 1:2 1:2\]", data[0])
        assert typ == "OK" and copyuid, data
        typ, data = M.status("testfolder", "(MESSAGES UIDNEXT UIDVALIDITY)")
        assert b"MESSAGES 2" in data[0] and b"UIDNEXT 3" in data[0], data
        assert b"UIDVALIDITY %s" % copyuid.group(1) in data[0], (data, copyuid.group(0))
        assert M.logout()[0] == "BYE"
