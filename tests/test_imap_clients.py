"""Real IMAP clients against imapd under real launchers: curl (imap:// through
systemd-socket-activate, imaps:// through xinetd.d/imaps), fetchmail over IMAP (keep and
no keep), and mbsync (isync) doing a two-way sync of a local Maildir with an mbox user and
with a Maildir user: new mail, flag changes and deletions in both directions, then a rerun
that changes nothing on either side.

Faults tried: bytes changed on the way (CRLF, metadata headers, dot and >From lines, 8-bit,
a 3000-byte line), UIDs or UIDVALIDITY unstable between runs (mbsync would re-download or
complain), flags not persisted, deletions lost or resurrected, duplicates after a rerun.
"""

import hashlib
import imaplib
import os
import re
import shutil
import subprocess

import pytest

import launchers
from imaptest import maildir_of, mbox_message_count
from mailtest import make_message, mbox_of, message_ids, presented, read_file, varied_messages


def socket_activated(imapd, imap_args):
    argv = [imapd if a == launchers.INSTALLED_BINARY.replace("ipop3d", "imapd") else a
            for a in launchers.unit_exec_start("systemd/imapd@.service")]
    return launchers.socket_activate(argv + imap_args()[1:])


def curl(*args):
    proc = subprocess.run(["curl", "-sS", "--max-time", "30"] + list(args), capture_output=True,
                          timeout=60)
    assert proc.returncode == 0, (args, proc.stderr.decode(errors="replace"))
    return proc.stdout


def test_curl_imap_and_imaps(imap_users, mbox_for, imapd, imap_args, cert, tmp_path):
    alice = imap_users["alice"]
    msgs = varied_messages()
    mbox_for(alice, mbox_of(msgs))
    auth = "%s:%s" % (alice.name, alice.password)
    with socket_activated(imapd, imap_args) as port:
        base = "imap://127.0.0.1:%d" % port
        listing = curl("-u", auth, base + "/")
        assert re.search(rb'(?m)^\* LIST \([^)]*\) (NIL|"[./]") INBOX\r$', listing), listing
        for n, raw in enumerate(msgs, 1):
            assert curl("-u", auth, base + "/INBOX;UID=%d" % n) == presented(raw), "UID %d" % n
        assert curl("-u", auth, base + "/INBOX;UID=1;SECTION=HEADER.FIELDS%20(SUBJECT)") == \
            b"Subject: test message 1\r\n\r\n"
        out = curl("-u", auth, base + "/INBOX", "-X", "SEARCH SUBJECT \"message 3\"")
        assert out == b"* SEARCH 3\r\n", out
    args = imap_args("--cert", cert[0], "--key", cert[1])[1:]
    with launchers.xinetd("xinetd.d/imaps", imapd, args, str(tmp_path)) as port:
        got = curl("-k", "-u", auth, "imaps://127.0.0.1:%d/INBOX;UID=4" % port)
        assert got == presented(msgs[3])


def run_fetchmail(port, user, outdir, home, keep):
    rc = os.path.join(home, "fetchmailrc")
    with open(rc, "w") as f:
        f.write('set no syslog\n'
                'poll 127.0.0.1 with proto IMAP port %d timeout 20\n'
                '  user "%s" there with password "%s" is root here\n'
                '  fetchall %s sslproto \'\' no rewrite\n'
                '  mda "cat > %s/msg.$$"\n'
                % (port, user.name, user.password, "keep" if keep else "no keep", outdir))
    os.chmod(rc, 0o600)
    env = dict(os.environ, HOME=home, FETCHMAILHOME=home)
    proc = subprocess.run(["fetchmail", "--invisible", "-f", rc, "-i", os.path.join(home, "ids"),
                           "--nodetach", "-v"], env=env, capture_output=True, timeout=120)
    assert proc.returncode == 0, "fetchmail exit %d: %s" % (
        proc.returncode, (proc.stdout + proc.stderr).decode(errors="replace")[-3000:])
    return sorted(read_file(os.path.join(outdir, n)) for n in os.listdir(outdir))


@pytest.mark.parametrize("keep", [True, False], ids=["keep", "nokeep"])
def test_fetchmail_imap(keep, imap_users, mbox_for, imapd, imap_args, tmp_path):
    alice = imap_users["alice"]
    msgs = varied_messages()
    path = mbox_for(alice, mbox_of(msgs))
    out = tmp_path / "out"
    out.mkdir()
    with socket_activated(imapd, imap_args) as port:
        got = run_fetchmail(port, alice, str(out), str(tmp_path), keep)
    assert got == sorted(presented(m).replace(b"\r\n", b"\n") for m in msgs)
    left = mbox_message_count(read_file(path))
    assert left == (len(msgs) if keep else 0), "fetchmail %s left %d messages" % (keep, left)


# ---------------------------------------------------------------- mbsync


def mbsync_config(home, port, user, local):
    rc = os.path.join(home, "mbsyncrc")
    with open(rc, "w") as f:
        f.write("IMAPAccount test\nHost 127.0.0.1\nPort %d\nUser %s\nPass \"%s\"\n"
                "SSLType None\nAuthMechs LOGIN\n\n"
                "IMAPStore remote\nAccount test\n\n"
                "MaildirStore local\nPath %s/\nInbox %s/INBOX\n\n"
                "Channel ch\nFar :remote:\nNear :local:\nPatterns INBOX\nCreate Both\n"
                "Expunge Both\nSyncState *\nSync All\n"
                % (port, user.name, user.password, local, local))
    return rc


def run_mbsync(rc):
    proc = subprocess.run(["mbsync", "-c", rc, "-a"], capture_output=True, timeout=120)
    assert proc.returncode == 0, "mbsync exit %d: %s" % (
        proc.returncode, (proc.stdout + proc.stderr).decode(errors="replace")[-3000:])
    return proc.stdout + proc.stderr


def digest(data):
    """Content hash with LF line ends and without mbsync's own X-TUID tracking header."""
    data = re.sub(rb"(?mi)^X-TUID: [^\n]*\n", b"", data.replace(b"\r\n", b"\n"), count=1)
    return hashlib.sha1(data).hexdigest()


def local_state(local):
    """{Message-ID: (maildir flags, sha of LF content)} of the local INBOX."""
    out = {}
    for sub in ("new", "cur"):
        d = os.path.join(local, "INBOX", sub)
        for name in os.listdir(d):
            data = read_file(os.path.join(d, name))
            mid = message_ids(data)[0]
            assert mid not in out, "duplicate %r locally" % mid
            flags = name.rsplit(":2,", 1)[1] if ":2," in name else ""
            out[mid] = (flags, digest(data))
    return out


def server_state(port, user):
    """{Message-ID: (UID, sorted flags without \\Recent, sha of LF content)}, UIDVALIDITY."""
    M = imaplib.IMAP4("127.0.0.1", port)
    M.login(user.name, user.password)
    typ, data = M.select("INBOX", readonly=True)
    validity = M.untagged_responses["UIDVALIDITY"][-1]
    out = {}
    if data != [b"0"]:
        typ, data = M.fetch("1:*", "(UID FLAGS BODY.PEEK[])")
        for item in data:
            if not isinstance(item, tuple):
                continue
            uid = int(re.search(rb"UID (\d+)", item[0]).group(1))
            flags = re.search(rb"FLAGS \(([^)]*)\)", item[0]).group(1).split()
            flags = tuple(sorted(f for f in flags if f != b"\\Recent"))
            mid = message_ids(item[1])[0]
            assert mid not in out, "duplicate %r on the server" % mid
            out[mid] = (uid, flags, digest(item[1]))
    M.logout()
    return out, validity


def local_file(local, mid):
    for sub in ("new", "cur"):
        d = os.path.join(local, "INBOX", sub)
        for name in os.listdir(d):
            if message_ids(read_file(os.path.join(d, name)))[0] == mid:
                return os.path.join(d, name)
    raise AssertionError("no local file for %r" % mid)


@pytest.mark.parametrize("kind", ["mbox", "maildir"])
def test_mbsync_two_way(kind, imap_users, mbox_for, imapd, imap_args, tmp_path):
    user = imap_users["alice" if kind == "mbox" else "maddy"]
    msgs = [make_message(i, tag=b"s") for i in range(1, 7)]
    if kind == "mbox":
        path = mbox_for(user, mbox_of(msgs))
    else:
        path = maildir_of(user, msgs)
    local = str(tmp_path / "local")
    os.makedirs(local)
    with socket_activated(imapd, imap_args) as port:
        rc = mbsync_config(str(tmp_path), port, user, local)
        run_mbsync(rc)
        here = local_state(local)
        there, validity = server_state(port, user)
        assert set(here) == set(there) == {b"<s-%d@test>" % i for i in range(1, 7)}
        diff = [m for m in here if here[m][1] != there[m][2]]
        assert not diff, ("content differs after download", diff)

        # server side: new mail, \Flagged on 1, 2 deleted
        new_server = make_message(7, tag=b"s")
        if kind == "mbox":
            with open(path, "ab") as f:
                f.write(mbox_of([new_server]))
        else:
            with open(os.path.join(path, "new", "1800000000.M7P1.host"), "wb") as f:
                f.write(new_server)
        M = imaplib.IMAP4("127.0.0.1", port)
        M.login(user.name, user.password)
        M.select("INBOX")
        M.store("1", "+FLAGS", "(\\Flagged)")
        M.store("2", "+FLAGS", "(\\Deleted)")
        M.expunge()
        M.logout()
        # local side: new mail, 3 seen, 4 deleted
        new_local = make_message(8, tag=b"s")
        with open(os.path.join(local, "INBOX", "new", "1800000001.M8P1.local"), "wb") as f:
            f.write(new_local)
        f3 = local_file(local, b"<s-3@test>")
        os.rename(f3, os.path.join(os.path.dirname(os.path.dirname(f3)), "cur",
                                   os.path.basename(f3).split(":2,")[0] + ":2,S"))
        os.unlink(local_file(local, b"<s-4@test>"))

        run_mbsync(rc)
        here = local_state(local)
        there, validity2 = server_state(port, user)
        want = {b"<s-%d@test>" % i for i in (1, 3, 5, 6, 7, 8)}
        assert set(here) == want, sorted(here)
        assert set(there) == want, sorted(there)
        assert validity2 == validity, "UIDVALIDITY changed"
        assert "F" in here[b"<s-1@test>"][0], here[b"<s-1@test>"]
        assert b"\\Seen" in there[b"<s-3@test>"][1], there[b"<s-3@test>"]
        assert b"\\Flagged" in there[b"<s-1@test>"][1]
        assert all(here[m][1] == there[m][2] for m in want), "content differs after sync"

        # a rerun changes nothing on either side
        before_local = sorted(os.listdir(os.path.join(local, "INBOX", "cur")) +
                              os.listdir(os.path.join(local, "INBOX", "new")))
        run_mbsync(rc)
        after_local = sorted(os.listdir(os.path.join(local, "INBOX", "cur")) +
                             os.listdir(os.path.join(local, "INBOX", "new")))
        assert after_local == before_local, "rerun changed the local Maildir"
        again, validity3 = server_state(port, user)
        assert again == there and validity3 == validity, "rerun changed the server"
    if kind == "mbox":
        assert mbox_message_count(read_file(path)) == 6
    shutil.rmtree(local)
