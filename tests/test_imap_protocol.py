"""IMAP4rev1 conformance over real sockets: imapd under systemd-socket-activate (the ExecStart of
systemd/imapd@.service), Python's imaplib as the client, every command and every FETCH item,
for an mbox user (alice) and a Maildir user (maddy), PAM login as root with real users.

Faults tried: metadata headers leaking into BODY[], wrong RFC822.SIZE (LF vs CRLF), MIME part
numbering and BINARY decoding, flags and keywords not persisted across sessions, UIDs or
UIDVALIDITY changing between sessions, COPYUID/APPENDUID codes that lie, EXPUNGE numbering,
folders not created/renamed/deleted on disk, EXAMINE allowing writes.
"""

import base64
import imaplib
import os
import re
import time

import pytest

import launchers
from imaptest import maildir_of
from mailtest import make_message, mbox_of, read_file

MULTIPART = (
    b"From: Bob <bob@example.com>\n"
    b"To: someone@localhost\n"
    b"Subject: multipart here\n"
    b"Date: Tue, 2 Jan 2024 11:30:00 +0100\n"
    b"Message-ID: <mp@test>\n"
    b"MIME-Version: 1.0\n"
    b"Content-Type: multipart/mixed; boundary=\"XYZ\"\n"
    b"\n"
    b"--XYZ\n"
    b"Content-Type: text/plain; charset=us-ascii\n"
    b"\n"
    b"Hello part one.\n"
    b"--XYZ\n"
    b"Content-Type: application/octet-stream; name=\"a.bin\"\n"
    b"Content-Transfer-Encoding: base64\n"
    b"\n"
    b"AAECAw==\n"
    b"--XYZ--\n"
)
APPENDED = b"From: a@example.com\r\nSubject: appended\r\nMessage-ID: <app@test>\r\n\r\nAppended body\r\n"


def crlf(raw):
    return raw.replace(b"\n", b"\r\n")


def flat(data):
    """imaplib's FETCH data as one byte string, literals spliced in as `{n}\\r\\n<bytes>`."""
    out = b""
    for item in data:
        if isinstance(item, tuple):
            out += item[0] + b"\r\n" + item[1]
        elif item is not None:
            out += item
    return out


def literal_after(blob, item):
    m = re.search(re.escape(item) + rb" \{(\d+)\}\r\n", blob, re.I)
    assert m, "no %r literal in %r" % (item, blob[:400])
    return blob[m.end():m.end() + int(m.group(1))]


def ok(result):
    typ, data = result
    assert typ == "OK", (typ, data)
    return data


@pytest.fixture(params=["mbox", "maildir"])
def mail_user(request, imap_users, mbox_for):
    """(user, store kind, original raw messages) with INBOX holding 3 messages."""
    msgs = [make_message(1, body_lines=2), MULTIPART, make_message(3, body_lines=4)]
    if request.param == "mbox":
        user = imap_users["alice"]
        path = mbox_for(user, mbox_of(msgs))
    else:
        user = imap_users["maddy"]
        path = maildir_of(user, msgs)
    return user, request.param, msgs, path


@pytest.fixture
def launcher(imapd, imap_args):
    argv = [imapd if a == "/usr/local/sbin/imapd" else a
            for a in launchers.unit_exec_start("systemd/imapd@.service")]
    with launchers.socket_activate(argv + imap_args()[1:]) as port:
        yield port


def test_every_command_and_fetch_item(mail_user, launcher):
    user, kind, msgs, path = mail_user
    M = imaplib.IMAP4("127.0.0.1", launcher)
    caps = M.capabilities
    for cap in ("IMAP4REV1", "IDLE", "UIDPLUS", "LITERAL+", "NAMESPACE", "UNSELECT", "AUTH=PLAIN"):
        assert cap in caps, caps
    assert "LOGINDISABLED" not in caps, "loopback peer may log in without TLS"
    typ, data = M.login(user.name, user.password)
    assert typ == "OK" and data[0].startswith(b"[CAPABILITY IMAP4REV1 "), data
    assert b"AUTH=" not in data[0] and b"STARTTLS" not in data[0], "pre-login capabilities after LOGIN"
    ok(M.noop())
    namespace = ok(M.namespace())[0]
    assert re.match(rb'\(\("" "[./]"\)\) ', namespace), namespace
    typ, data = M.xatom("ID", "NIL")
    assert typ == "OK" and M.untagged_responses.pop("ID", None), "ID gave no untagged ID response"
    typ, data = M._simple_command("ENABLE", "CONDSTORE")
    assert typ == "OK" and M.untagged_responses.pop("ENABLED", None) == [b""], \
        "ENABLE of an extension not announced must answer an empty * ENABLED"
    typ, listing = M.list('""', "*")
    assert typ == "OK" and any(re.search(rb' "?INBOX"?$', l) for l in listing), listing
    delim = re.match(rb'\(\("" "(.)"', namespace).group(1).decode()

    # folders
    ok(M.create("Archive"))
    ok(M.create("Trash"))
    assert M.create("Archive")[0] == "NO", "CREATE of an existing mailbox must fail"
    ok(M.subscribe("Archive"))
    assert any(b"Archive" in l for l in ok(M.lsub('""', "*")))
    ok(M.unsubscribe("Archive"))
    assert not any(b"Archive" in (l or b"") for l in ok(M.lsub('""', "*")))
    status = ok(M.status("INBOX", "(MESSAGES RECENT UIDNEXT UIDVALIDITY UNSEEN)"))[0]
    assert re.search(rb"MESSAGES 3\b", status) and re.search(rb"UNSEEN 3\b", status), status

    # SELECT
    typ, data = M.select("INBOX")
    assert typ == "OK" and data == [b"3"], data
    assert M.untagged_responses.get("READ-WRITE") is not None
    uidvalidity = int(M.untagged_responses["UIDVALIDITY"][-1])
    assert M.untagged_responses["UIDNEXT"][-1] == b"4"

    # FETCH items, bytes exact
    blob = flat(ok(M.fetch("1:3", "(FLAGS UID RFC822.SIZE INTERNALDATE)")))
    for n, raw in enumerate(msgs, 1):
        m = re.search(rb"%d \(FLAGS \(([^)]*)\) UID (\d+) RFC822.SIZE (\d+) INTERNALDATE \"([^\"]+)\"" % n, blob)
        assert m, blob
        assert int(m.group(2)) == n and int(m.group(3)) == len(crlf(raw)), (n, m.group(0))
        assert b"\\Seen" not in m.group(1)
        assert re.match(rb"[ \d]\d-\w{3}-\d{4} \d\d:\d\d:\d\d [+-]\d{4}$", m.group(4))
    for n, raw in enumerate(msgs, 1):
        blob = flat(ok(M.fetch(str(n), "(BODY.PEEK[] BODY.PEEK[HEADER] BODY.PEEK[TEXT])")))
        head, _, body = crlf(raw).partition(b"\r\n\r\n")
        assert literal_after(blob, b"BODY[]") == crlf(raw)
        assert literal_after(blob, b"BODY[HEADER]") == head + b"\r\n\r\n"
        assert literal_after(blob, b"BODY[TEXT]") == body
    blob = flat(ok(M.fetch("1", "(BODY.PEEK[HEADER.FIELDS (Subject To)] BODY.PEEK[HEADER.FIELDS.NOT (Subject To Date From Return-Path)] BODY.PEEK[]<0.10> BODY.PEEK[]<5000.10>)")))
    assert literal_after(blob, b"BODY[HEADER.FIELDS (SUBJECT TO)]") == \
        b"To: someone@localhost\r\nSubject: test message 1\r\n\r\n", blob
    assert literal_after(blob, b"BODY[HEADER.FIELDS.NOT (SUBJECT TO DATE FROM RETURN-PATH)]") == \
        b"Message-ID: <t-1@test>\r\n\r\n", blob
    assert literal_after(blob, b"BODY[]<0>") == crlf(msgs[0])[:10]
    assert b'BODY[]<5000> ""' in blob, "partial beyond the end must be empty"
    blob = flat(ok(M.fetch("2", "(BODYSTRUCTURE BODY ENVELOPE BODY.PEEK[1] BODY.PEEK[2.MIME] BINARY.PEEK[2] BINARY.SIZE[2] BODY.PEEK[2])")))
    assert b'("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 15 0' in blob, blob
    assert b'("APPLICATION" "OCTET-STREAM" ("NAME" "a.bin") NIL NIL "BASE64" 8' in blob, blob
    assert b'"MIXED" ("BOUNDARY" "XYZ")' in blob, blob
    assert b'ENVELOPE ("Tue, 2 Jan 2024 11:30:00 +0100" "multipart here" (("Bob" NIL "bob" "example.com"))' in blob
    assert b'"<mp@test>")' in blob
    assert literal_after(blob, b"BODY[1]") == b"Hello part one."
    assert literal_after(blob, b"BODY[2.MIME]") == \
        b"Content-Type: application/octet-stream; name=\"a.bin\"\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    assert literal_after(blob, b"BODY[2]") == b"AAECAw=="
    assert re.search(rb"BINARY\[2\] (\{4\}\r\n|~\{4\}\r\n)\x00\x01\x02\x03", blob), blob
    assert b"BINARY.SIZE[2] 4" in blob
    blob = flat(ok(M.fetch("3", "(RFC822.HEADER RFC822.TEXT)")))
    head, _, body = crlf(msgs[2]).partition(b"\r\n\r\n")
    assert literal_after(blob, b"RFC822.HEADER") == head + b"\r\n\r\n"
    assert literal_after(blob, b"RFC822.TEXT") == body
    assert b"\\Seen" in flat(ok(M.fetch("3", "FLAGS"))), "RFC822.TEXT sets \\Seen"
    for macro in ("ALL", "FAST", "FULL"):
        blob = flat(ok(M.fetch("1", macro)))
        assert b"RFC822.SIZE %d" % len(crlf(msgs[0])) in blob and b"INTERNALDATE" in blob, (macro, blob)
        assert (b"ENVELOPE" in blob) == (macro != "FAST") and (b"BODY (" in blob) == (macro == "FULL")
    blob = flat(ok(M.fetch("1", "RFC822")))
    assert literal_after(blob, b"RFC822") == crlf(msgs[0])

    # STORE and keywords
    assert b"\\Flagged" in flat(ok(M.store("1", "+FLAGS", "(\\Flagged $Label1)")))
    assert ok(M.store("2", "+FLAGS.SILENT", "(\\Answered)")) == [None]
    blob = flat(ok(M.store("1", "-FLAGS", "(\\Seen)")))
    assert b"$Label1" in blob and b"\\Seen" not in blob, blob
    blob = flat(ok(M.uid("STORE", "3", "FLAGS", "(\\Draft)")))
    assert b"UID 3" in blob and b"\\Draft" in blob, blob

    # SEARCH, ESEARCH, SORT, THREAD
    assert ok(M.search(None, "ALL")) == [b"1 2 3"]
    assert ok(M.search(None, "FLAGGED")) == [b"1"]
    assert ok(M.search(None, "KEYWORD", "$Label1")) == [b"1"]
    assert ok(M.search(None, "SUBJECT", '"multipart"')) == [b"2"]
    assert ok(M.search(None, "BODY", '"part one"')) == [b"2"]
    assert ok(M.search(None, "HEADER", "Message-ID", "<t-3@test>")) == [b"3"]
    assert ok(M.search(None, "OR", "ANSWERED", "DRAFT")) == [b"2 3"]
    assert ok(M.search(None, "NOT", "FLAGGED", "LARGER", "10")) == [b"2 3"]
    assert ok(M.uid("SEARCH", "UID", "2:*")) == [b"2 3"]
    assert ok(M.search(None, "SENTBEFORE", "1-Jan-2024")) == [b""]
    typ, data = M._simple_command("SEARCH", "RETURN", "(MIN MAX COUNT)", "ALL")
    assert typ == "OK"
    esearch = M.untagged_responses.pop("ESEARCH", [b""])[0]
    assert b"MIN 1" in esearch and b"MAX 3" in esearch and b"COUNT 3" in esearch, esearch
    assert ok(M.sort("(SUBJECT)", "UTF-8", "ALL")) == [b"2 1 3"]
    assert ok(M.thread("REFERENCES", "UTF-8", "ALL"))[0].count(b"(") == 3

    # COPY / MOVE with COPYUID, APPEND with APPENDUID
    typ, data = M.copy("1:2", "Archive")
    assert typ == "OK" and re.match(rb"\[COPYUID \d+ 1:2 1:2\]", data[0]), data
    typ, data = M._simple_command("MOVE", "3", "Trash")
    assert typ == "OK", data
    assert M.untagged_responses.pop("EXPUNGE", None) == [b"3"]
    typ, data = M.append("INBOX", "(\\Seen Custom)", imaplib.Time2Internaldate(1706788800), APPENDED)
    assert typ == "OK" and re.match(rb"\[APPENDUID %d 4\]" % uidvalidity, data[0]), data
    ok(M.noop())
    blob = flat(ok(M.uid("FETCH", "4", "(FLAGS INTERNALDATE BODY.PEEK[])")))
    assert literal_after(blob, b"BODY[]") == APPENDED
    assert b"\\Seen" in blob and b"Custom" in blob and b" 1-Feb-2024 12:00:00 +0000" in blob, blob
    # INTERNALDATE keys (a Maildir reads the file's mtime only now) and SORT by arrival.
    assert ok(M.uid("SEARCH", "ON", "1-Feb-2024")) == [b"4"]
    assert ok(M.uid("SEARCH", "SINCE", "1-Feb-2024", "BEFORE", "2-Feb-2024")) == [b"4"]
    dates = re.findall(rb"UID (\d+) INTERNALDATE (\"[^\"]+\")", flat(ok(M.fetch("1:*", "(UID INTERNALDATE)"))))
    by_arrival = sorted(dates, key=lambda d: (time.mktime(imaplib.Internaldate2tuple(b"INTERNALDATE " + d[1])), int(d[0])))
    assert ok(M.uid("SORT", "(ARRIVAL)", "UTF-8", "ALL"))[0].split() == [uid for uid, _ in by_arrival]

    # EXPUNGE, UID EXPUNGE, CHECK, CLOSE, UNSELECT, EXAMINE
    ok(M.store("1", "+FLAGS.SILENT", "(\\Deleted)"))
    ok(M.store("3", "+FLAGS.SILENT", "(\\Deleted)"))
    typ, data = M.uid("EXPUNGE", "4")
    assert typ == "OK" and M.untagged_responses.pop("EXPUNGE", None) == [b"3"], data
    typ, data = M.expunge()
    assert typ == "OK" and data == [b"1"], data
    ok(M.check())
    ok(M._simple_command("UNSELECT"))
    typ, data = M.select("Archive", readonly=True)
    assert typ == "OK" and data == [b"2"], data
    typ, data = M.store("1", "+FLAGS", "(\\Deleted)")
    assert typ == "NO" and b"READ-ONLY" in data[0], ("STORE after EXAMINE", typ, data)
    ok(M.close())
    ok(M.rename("Archive", "Kept"))
    assert any(b"Kept" in l for l in ok(M.list('""', "*")))
    assert not any(re.search(rb"Archive$", l) for l in ok(M.list('""', "*")))
    ok(M.delete("Trash"))
    assert M.select("Trash")[0] == "NO"
    typ, data = M.logout()
    assert typ == "BYE", (typ, data)

    # A second session: flags, UIDs and UIDVALIDITY persisted; the folders are on disk.
    M = imaplib.IMAP4("127.0.0.1", launcher)
    ok(M.login(user.name, user.password))
    typ, data = M.select("INBOX")
    assert data == [b"1"], data
    assert int(M.untagged_responses["UIDVALIDITY"][-1]) == uidvalidity
    blob = flat(ok(M.fetch("1", "(UID FLAGS BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")))
    assert b"UID 2" in blob and b"\\Answered" in blob and b"<mp@test>" in blob, blob
    status = ok(M.status("Kept", "(MESSAGES UIDNEXT)"))[0]
    assert b"MESSAGES 2" in status and b"UIDNEXT 3" in status, status
    M.logout()
    if kind == "mbox":
        data = read_file(path)
        assert data.count(b"From ") >= 1 and b"Message-ID: <mp@test>" in data
        assert b"<t-1@test>" not in data and b"<app@test>" not in data, "expunged bytes remain"
        assert re.search(rb"(?m)^X-Status: A", data), "\\Answered not written as X-Status: A"
        assert os.path.isfile(os.path.join(user.home, "Kept"))
    else:
        names = os.listdir(os.path.join(path, "cur")) + os.listdir(os.path.join(path, "new"))
        assert len(names) == 1 and re.search(r":2,[A-Z]*R", names[0]), names
        kept = [d for d in os.listdir(path) if d.endswith("Kept")]
        assert kept == [".Kept"], ("Maildir++ folder", delim, os.listdir(path))


def test_authenticate_plain_with_sasl_ir(imap_users, mbox_for, launcher):
    """AUTHENTICATE PLAIN (initial response, RFC 4959) logs in; a wrong password is NO
    [AUTHENTICATIONFAILED] and the session stays usable."""
    alice = imap_users["alice"]
    mbox_for(alice, mbox_of([make_message(1)]))
    M = imaplib.IMAP4("127.0.0.1", launcher)
    wrong = base64.b64encode(b"\0%s\0nope" % alice.name.encode()).decode()
    typ, data = M._simple_command("AUTHENTICATE", "PLAIN", wrong)
    assert typ == "NO" and b"[AUTHENTICATIONFAILED]" in data[0], data
    right = base64.b64encode(b"\0%s\0%s" % (alice.name.encode(), alice.password.encode())).decode()
    typ, data = M._simple_command("AUTHENTICATE", "PLAIN", right)
    assert typ == "OK", data
    M.state = "AUTH"  # imaplib does not track a raw AUTHENTICATE
    assert M.select("INBOX") == ("OK", [b"1"])
    M.logout()


def test_status_uidvalidity_is_the_one_select_reports(mail_user, imap_pipe):
    """UIDVALIDITY from STATUS on a never-opened mailbox must be the one SELECT reports a
    second later (a client caches UIDs under it, RFC 3501 2.3.1.1)."""
    user, kind, msgs, path = mail_user
    s = imap_pipe("--allow-plaintext")
    s.greeting()
    s.login(user.name, user.password)
    status = b"".join(s.ok("STATUS INBOX (UIDVALIDITY UIDNEXT)"))
    before = re.search(rb"UIDVALIDITY (\d+)", status).group(1)
    time.sleep(1.1)
    lines = b"".join(s.ok("SELECT INBOX"))
    after = re.search(rb"\[UIDVALIDITY (\d+)\]", lines).group(1)
    assert before == after, "%s: STATUS said UIDVALIDITY %s, SELECT says %s" % (kind, before, after)
