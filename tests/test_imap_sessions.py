"""imapd's login policy, TLS, PREAUTH and privileges, and what concurrent sessions see.

Faults tried: plaintext LOGIN accepted on a non-TLS non-loopback pipe (must announce
LOGINDISABLED and refuse), STARTTLS that does not switch or keeps LOGINDISABLED, implicit TLS
through xinetd.d/imaps and the inetd `simapd` name, PREAUTH not given to a user-run imapd,
privileges not fully dropped after LOGIN (uid/gid/groups/capabilities), IDLE missing an
MTA delivery (dotlockfile + append) for more than 2 s, one session not seeing another's
STORE or EXPUNGE, SELECT taking INBOX read-write while ipop3d holds it.
"""

import fcntl
import imaplib
import os
import re
import socket
import ssl
import subprocess
import time

import launchers
from imaptest import PipeImap, maildir_of, parse_fetch
from mailtest import PipeSession, make_message, mbox_of, proc_status


def tls_context():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def test_logindisabled_on_plain_pipe(imap_users, mbox_for, imap_pipe):
    """A pipe is neither TLS nor loopback: LOGINDISABLED, no AUTH=PLAIN, LOGIN refused with
    [PRIVACYREQUIRED] even with the right password; --allow-plaintext lifts it."""
    alice = imap_users["alice"]
    mbox_for(alice, mbox_of([make_message(1)]))
    s = imap_pipe()
    greeting = s.greeting()
    assert b"LOGINDISABLED" in greeting and b"AUTH=PLAIN" not in greeting, greeting
    lines, tagged = s.cmd('LOGIN %s "%s"' % (alice.name, alice.password))
    assert tagged.startswith(b"NO [PRIVACYREQUIRED]"), tagged
    lines, tagged = s.cmd("SELECT INBOX")
    assert tagged.startswith(b"BAD"), "SELECT before login: %r" % tagged
    s.ok("LOGOUT")
    s = imap_pipe("--allow-plaintext")
    greeting = s.greeting()
    assert b"LOGINDISABLED" not in greeting and b"AUTH=PLAIN" in greeting, greeting
    s.login(alice.name, alice.password)
    assert b"* 1 EXISTS" in s.ok("SELECT INBOX")


def test_privileges_after_login(imap_users, mbox_for, imap_pipe):
    """After LOGIN the process runs with the user's uid/gid (real, effective, saved, fs),
    exactly the user's groups, and no capabilities."""
    alice = imap_users["alice"]
    mbox_for(alice, mbox_of([make_message(1)]))
    s = imap_pipe("--allow-plaintext")
    s.greeting()
    s.login(alice.name, alice.password)
    s.ok("SELECT INBOX")
    st = proc_status(s.pid)
    assert st["Uid"].split() == [str(alice.uid)] * 4, st["Uid"]
    assert st["Gid"].split() == [str(alice.gid)] * 4, st["Gid"]
    assert sorted(int(g) for g in st["Groups"].split()) == sorted(alice.groups), st["Groups"]
    for cap in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
        assert int(st[cap], 16) == 0, (cap, st[cap])


def test_preauth_when_run_as_the_user(imap_users, mbox_for, imapd, spool):
    """`runuser -u alice -- imapd` over pipes greets `* PREAUTH` and serves alice's INBOX;
    LOGIN is then refused (already authenticated)."""
    alice = imap_users["alice"]
    mbox_for(alice, mbox_of([make_message(1), make_message(2)]))
    s = PipeImap(["runuser", "-u", alice.name, "--", imapd, "--spool-dir", spool])
    try:
        greeting = s.greeting()
        assert greeting.startswith(b"* PREAUTH [CAPABILITY IMAP4REV1 "), greeting
        assert alice.name.encode() in greeting
        assert b"* 2 EXISTS" in s.ok("SELECT INBOX")
        lines, tagged = s.cmd('LOGIN %s "%s"' % (alice.name, alice.password))
        assert tagged.startswith(b"BAD"), tagged
        s.ok("LOGOUT")
        assert s.close() is not None
    finally:
        s.kill()


def test_starttls_and_implicit_tls(imap_users, mbox_for, imapd, imap_args, cert, tmp_path):
    """STARTTLS through xinetd.d/imap with imaplib; implicit TLS through xinetd.d/imaps with
    IMAP4_SSL and through the inetd `simapd` line with openssl s_client."""
    alice = imap_users["alice"]
    mbox_for(alice, mbox_of([make_message(1)]))
    args = imap_args("--cert", cert[0], "--key", cert[1])[1:]
    with launchers.xinetd("xinetd.d/imap", imapd, args, str(tmp_path)) as port:
        M = imaplib.IMAP4("127.0.0.1", port)
        assert "STARTTLS" in M.capabilities
        M.starttls(ssl_context=tls_context())
        assert "STARTTLS" not in M.capabilities, "STARTTLS offered again after TLS"
        assert M.login(alice.name, alice.password)[0] == "OK"
        assert M.select("INBOX") == ("OK", [b"1"])
        M.logout()
    with launchers.xinetd("xinetd.d/imaps", imapd, args, str(tmp_path)) as port:
        M = imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=tls_context())
        assert "STARTTLS" not in M.capabilities
        assert M.login(alice.name, alice.password)[0] == "OK"
        assert M.select("INBOX") == ("OK", [b"1"])
        M.logout()
    server, argv = launchers.inetd_conf_entries()["imaps"]
    assert server == "/usr/local/sbin/imapd" and argv[0] == "simapd"
    with launchers.inetd_emulation(imapd, argv + args) as port:
        script = 'a LOGIN %s "%s"\r\nb SELECT INBOX\r\nc LOGOUT\r\n' % (alice.name, alice.password)
        proc = subprocess.run(["openssl", "s_client", "-quiet", "-connect", "127.0.0.1:%d" % port],
                              input=script.encode(), capture_output=True, timeout=30)
        out = proc.stdout
        assert out.startswith(b"* OK [CAPABILITY IMAP4REV1"), out[:300]
        assert b"a OK" in out and b"* 1 EXISTS" in out and b"c OK LOGOUT" in out, out


def deliver_mbox(path, raw):
    """Append like an MTA: dotlockfile, then fcntl lock, append, unlock."""
    lock = path + ".lock"
    subprocess.run(["dotlockfile", "-r", "30", "-l", lock], check=True, timeout=60)
    try:
        with open(path, "ab") as f:
            fcntl.lockf(f, fcntl.LOCK_EX)
            f.write(mbox_of([raw]))
            f.flush()
            fcntl.lockf(f, fcntl.LOCK_UN)
    finally:
        subprocess.run(["dotlockfile", "-u", lock], check=True, timeout=30)


def deliver_maildir(root, raw, n):
    tmp = os.path.join(root, "tmp", "1800000000.M%dP1.idle" % n)
    with open(tmp, "wb") as f:
        f.write(raw)
    os.rename(tmp, os.path.join(root, "new", os.path.basename(tmp)))


def test_idle_sees_delivery_within_two_seconds(imap_users, mbox_for, imap_pipe):
    """IDLE on an mbox (alice) and a Maildir (maddy): a delivery shows as `* n EXISTS`
    within 2 s; DONE ends IDLE with a tagged OK."""
    alice, maddy = imap_users["alice"], imap_users["maddy"]
    path = mbox_for(alice, mbox_of([make_message(1)]))
    root = maildir_of(maddy, [make_message(1)])
    for user, deliver in ((alice, lambda: deliver_mbox(path, make_message(2, tag=b"idle"))),
                          (maddy, lambda: deliver_maildir(root, make_message(2, tag=b"idle"), 2))):
        s = imap_pipe("--allow-plaintext")
        s.greeting()
        s.login(user.name, user.password)
        assert b"* 1 EXISTS" in s.ok("SELECT INBOX")
        s.send("i1 IDLE")
        assert s.readline().startswith(b"+ "), "no IDLE continuation"
        time.sleep(0.3)
        began = time.monotonic()
        deliver()
        line = s.readline(timeout=5)
        took = time.monotonic() - began
        assert line == b"* 2 EXISTS", line
        assert took < 2.0, "%s: IDLE reported the delivery after %.2fs" % (user.name, took)
        s.send("DONE")
        lines, tagged = s.response("i1")
        assert tagged.startswith(b"i1 OK"), tagged
        s.ok("LOGOUT")


def test_two_sessions_see_each_others_store_and_expunge(imap_users, mbox_for, imap_pipe):
    """Each session sees the other's STORE at its next NOOP and its EXPUNGE only at a command
    that allows it, for mbox (alice) and Maildir (maddy)."""
    alice, maddy = imap_users["alice"], imap_users["maddy"]
    mbox_for(alice, mbox_of([make_message(i) for i in range(1, 5)]))
    maildir_of(maddy, [make_message(i) for i in range(1, 5)])
    for user in (alice, maddy):
        a, b = imap_pipe("--allow-plaintext"), imap_pipe("--allow-plaintext")
        for s in (a, b):
            s.greeting()
            s.login(user.name, user.password)
            assert b"* 4 EXISTS" in s.ok("SELECT INBOX")
        a.ok("STORE 2 +FLAGS.SILENT (\\Flagged)")
        lines = b.ok("NOOP")
        assert any(re.match(rb"\* 2 FETCH \(.*\\Flagged", l) for l in lines), (user.name, lines)
        b.ok("STORE 3 +FLAGS.SILENT (\\Deleted)")
        b.ok("EXPUNGE")
        lines = a.ok("NOOP")
        assert b"* 3 EXPUNGE" in lines, (user.name, lines)
        got = parse_fetch(a.ok("FETCH 1:* (UID FLAGS)"))
        assert sorted(got) == [1, 2, 3], got
        assert b"UID 4" in got[3] and b"\\Flagged" in got[2], got
        # a expunges a message b still shows: b's FETCH must not announce the EXPUNGE (RFC 3501
        # 7.4.1 forbids it during FETCH) nor renumber; b's NOOP then does
        a.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
        a.ok("EXPUNGE")
        lines, tagged = b.cmd("FETCH 1:* UID")
        assert not any(l.endswith(b" EXPUNGE") for l in lines), lines
        fetched = re.findall(rb"\* (\d+) FETCH \(UID (\d+)\)", b"\n".join(lines))
        if tagged.startswith(b"NO"):  # RFC 2180 4.1.1: the expunged message may be refused
            assert fetched == [(b"2", b"2"), (b"3", b"4")], lines
        else:
            assert tagged.startswith(b"OK") and fetched == [(b"1", b"1"), (b"2", b"2"), (b"3", b"4")], lines
        lines = b.ok("NOOP")
        assert b"* 1 EXPUNGE" in lines, lines
        got = parse_fetch(b.ok("FETCH 1:* UID"))
        assert [re.search(rb"UID (\d+)", v).group(1) for v in got.values()] == [b"2", b"4"], got
        a.ok("LOGOUT")
        b.ok("LOGOUT")


def test_pop3_session_makes_select_read_only(imap_users, mbox_for, imap_pipe, server_args):
    """ipop3d holds alice's INBOX: SELECT INBOX answers an untagged NO [INUSE] and completes
    [READ-ONLY]; STORE is refused; after POP3 QUIT a new SELECT is read-write."""
    alice = imap_users["alice"]
    mbox_for(alice, mbox_of([make_message(1), make_message(2)]))
    pop = PipeSession(server_args("--allow-plaintext"))
    try:
        pop.greeting()
        pop.login(alice.name, alice.password)
        s = imap_pipe("--allow-plaintext")
        s.greeting()
        s.login(alice.name, alice.password)
        lines, tagged = s.cmd("SELECT INBOX", timeout=30)
        assert any(l.startswith(b"* NO [INUSE]") for l in lines), lines
        assert tagged.startswith(b"OK [READ-ONLY]"), tagged
        assert b"* 2 EXISTS" in lines
        lines, tagged = s.cmd("STORE 1 +FLAGS (\\Deleted)")
        assert tagged.startswith(b"NO"), tagged
        assert pop.quit() == b"+OK Sayonara"
        lines, tagged = s.cmd("SELECT INBOX", timeout=30)
        assert tagged.startswith(b"OK [READ-WRITE]"), (tagged, lines)
        assert not any(b"INUSE" in l for l in lines)
    finally:
        if pop.proc.poll() is None:
            pop.kill()


def test_starttls_rejects_pipelined_plaintext(imap_users, mbox_for, imapd, imap_args, cert):
    """Commands sent in the clear right behind STARTTLS (in the same packet) must not be run
    as if they came over TLS (CVE-2011-0411 class): BAD and close, or ignored."""
    alice = imap_users["alice"]
    mbox_for(alice, mbox_of([make_message(1)]))
    argv = [imapd if a == "/usr/local/sbin/imapd" else a
            for a in launchers.unit_exec_start("systemd/imapd@.service")]
    with launchers.socket_activate(argv + imap_args("--cert", cert[0], "--key", cert[1])[1:]) as port:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        assert sock.recv(4096).startswith(b"* OK")
        sock.sendall(b"a STARTTLS\r\nb LOGIN %s \"%s\"\r\n" % (alice.name.encode(), alice.password.encode()))
        data = b""
        try:
            while True:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
        except socket.timeout:
            pass
        sock.close()
        assert b"b OK" not in data, data
        assert data.startswith(b"a BAD") or data.startswith(b"a OK"), data
