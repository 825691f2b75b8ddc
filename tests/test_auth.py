"""Authentication with real system users: PAM (service file pam.d/pop installed as
/etc/pam.d/pop), SASL PLAIN/LOGIN, the failure limit and delay, --min-uid, APOP and CRAM-MD5
with a UW-style secrets file, and non-root mode (AUTH EXTERNAL, $MAIL).

Faults tried: wrong passwords, unknown users, a 4th attempt after 3 failures, a uid below
--min-uid, invalid base64, a cancelled exchange, a wrong APOP digest, a group/world-readable
secrets file (must be ignored), AUTH EXTERNAL for someone else's name.
"""

import base64
import hashlib
import hmac
import os
import re
import time

from mailtest import PipeSession, make_message, mbox_of, write_file


def b64(data):
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def one_message_mbox(mbox_for, user):
    return mbox_for(user, mbox_of([make_message(1)]))


def test_pam_right_wrong_and_lockout(users, mbox_for, pipe_session):
    """Wrong password and unknown user -> [AUTH] Bad login; after 3 failures the next attempt
    gets 'Too many login failures' and the connection is closed."""
    alice = users["alice"]
    one_message_mbox(mbox_for, alice)
    s = pipe_session("--allow-plaintext")
    s.greeting()
    for user, password in ((alice.name, "wrong"), ("nosuchuser", "x"), (alice.name, alice.password + "x")):
        assert s.cmd("USER " + user) == b"+OK User name accepted, password please"
        assert s.cmd("PASS " + password) == b"-ERR [AUTH] Bad login"
    resp = s.cmd("USER " + alice.name)
    if resp.startswith(b"+OK"):
        resp = s.cmd("PASS " + alice.password)
    assert resp == b"-ERR [AUTH] Too many login failures"
    assert s.read_to_eof() == b"", "server must close after too many failures"
    s2 = pipe_session("--allow-plaintext")
    s2.greeting()
    s2.cmd("USER " + alice.name)
    assert s2.cmd("PASS wrong") == b"-ERR [AUTH] Bad login"
    assert s2.login(alice.name, alice.password) == b"+OK Mailbox open, 1 messages"
    s2.quit()


def test_password_with_spaces(users, spool, pipe_session):
    """PASS takes the rest of the line (bob's password contains a space)."""
    bob = users["bob"]
    s = pipe_session("--allow-plaintext")
    s.greeting()
    assert s.login(bob.name, bob.password) == b"+OK Mailbox open, 0 messages"
    s.quit()


def test_failure_delay_default(users, mbox_for, pipe_session):
    """Without --failure-delay the default (3 s) applies: a bad PASS answers after >= 2 s."""
    alice = users["alice"]
    s = pipe_session("--allow-plaintext", failure_delay=None)
    s.greeting()
    s.ok("USER " + alice.name)
    start = time.monotonic()
    assert s.cmd("PASS wrong", timeout=30) == b"-ERR [AUTH] Bad login"
    assert time.monotonic() - start >= 2.0, "failure delay not applied"
    s.cmd("QUIT")


def test_min_uid(users, mbox_for, pipe_session):
    """A user whose uid is below --min-uid gets Bad login even with the right password."""
    alice = users["alice"]
    one_message_mbox(mbox_for, alice)
    s = pipe_session("--allow-plaintext", "--min-uid", alice.uid + 1)
    s.greeting()
    s.ok("USER " + alice.name)
    assert s.cmd("PASS " + alice.password) == b"-ERR [AUTH] Bad login"
    s.cmd("QUIT")


def test_sasl_plain_login_and_errors(users, mbox_for, pipe_session):
    """AUTH list; PLAIN with initial response; LOGIN exchange; cancel; invalid base64."""
    alice = users["alice"]
    one_message_mbox(mbox_for, alice)
    s = pipe_session("--allow-plaintext")
    s.greeting()
    assert s.cmd("AUTH") == b"+OK Supported authentication mechanisms:"
    mechs = s.multiline()
    assert b"PLAIN" in mechs and b"LOGIN" in mechs, mechs
    assert s.cmd("AUTH PLAIN") == b"+ "
    assert s.cmd("*") == b"-ERR Authentication cancelled"
    assert s.cmd("AUTH PLAIN") == b"+ "
    assert s.cmd("!!!not base64!!!") == b"-ERR Invalid base64 data"
    assert s.cmd("AUTH PLAIN %%%") == b"-ERR Invalid base64 data"
    assert s.cmd("AUTH BOGUS").startswith(b"-ERR")
    assert s.cmd("AUTH PLAIN " + b64("\0%s\0wrong" % alice.name)).startswith(b"-ERR [AUTH] ")
    first = s.cmd("AUTH LOGIN")
    assert first.startswith(b"+ "), first
    assert base64.b64decode(first[2:]).lower().startswith(b"user"), first
    second = s.cmd(b64(alice.name))
    assert second.startswith(b"+ ") and base64.b64decode(second[2:]).lower().startswith(b"pass")
    assert s.cmd(b64(alice.password)) == b"+OK Mailbox open, 1 messages"
    s.quit()
    s = pipe_session("--allow-plaintext")
    s.greeting()
    assert s.cmd("AUTH PLAIN " + b64("\0%s\0%s" % (alice.name, alice.password))) == (
        b"+OK Mailbox open, 1 messages")
    s.quit()


def secrets_file(base, mode, entries):
    path = os.path.join(base, "cram-md5.pwd")
    text = "# UW-style secrets: user<TAB>secret\n" + "".join("%s\t%s\n" % e for e in entries)
    write_file(path, text.encode(), mode=mode)
    os.chown(path, 0, 0)
    return path


def test_apop_and_cram_md5(users, mbox_for, pipe_session, tmp_path):
    """Root-owned 0600 secrets file: APOP banner, CAPA SASL CRAM-MD5, APOP and CRAM-MD5 logins;
    a wrong digest fails."""
    alice = users["alice"]
    one_message_mbox(mbox_for, alice)
    secret = "md5 secret!"
    cram = secrets_file(str(tmp_path), 0o600, [(alice.name, secret)])
    s = pipe_session(cram_file=cram)
    greeting = s.greeting()
    m = re.search(rb" (<[^<>\s]+@[^<>\s]+>)$", greeting)
    assert m, "no APOP timestamp in %r" % greeting
    s.send("CAPA")
    s.readline()
    caps = s.multiline()
    sasl = [c for c in caps if c.startswith(b"SASL ")]
    assert sasl and b"CRAM-MD5" in sasl[0].split(), caps
    bad = hashlib.md5(m.group(1) + b"not the secret").hexdigest()
    assert s.cmd("APOP %s %s" % (alice.name, bad)) == b"-ERR [AUTH] Bad login"
    digest = hashlib.md5(m.group(1) + secret.encode()).hexdigest()
    assert s.cmd("APOP %s %s" % (alice.name, digest)) == b"+OK Mailbox open, 1 messages"
    s.quit()

    s = pipe_session(cram_file=cram)
    s.greeting()
    challenge_line = s.cmd("AUTH CRAM-MD5")
    assert challenge_line.startswith(b"+ "), challenge_line
    challenge = base64.b64decode(challenge_line[2:])
    assert re.match(rb"^<[^<>]+@[^<>]+>$", challenge), challenge
    answer = hmac.new(secret.encode(), challenge, hashlib.md5).hexdigest()
    assert s.cmd(b64("%s %s" % (alice.name, answer))) == b"+OK Mailbox open, 1 messages"
    s.quit()

    s = pipe_session(cram_file=cram)
    s.greeting()
    challenge = base64.b64decode(s.cmd("AUTH CRAM-MD5")[2:])
    wrong = hmac.new(b"wrong", challenge, hashlib.md5).hexdigest()
    assert s.cmd(b64("%s %s" % (alice.name, wrong))).startswith(b"-ERR [AUTH] ")
    s.cmd("QUIT")


def test_world_readable_secrets_file_is_ignored(users, mbox_for, pipe_session, tmp_path):
    """A 0644 secrets file is refused: no APOP banner, no CRAM-MD5, the PAM password works."""
    alice = users["alice"]
    one_message_mbox(mbox_for, alice)
    cram = secrets_file(str(tmp_path), 0o644, [(alice.name, "md5secret")])
    s = pipe_session("--allow-plaintext", cram_file=cram)
    greeting = s.greeting()
    assert not greeting.endswith(b">"), "APOP banner despite an unsafe secrets file: %r" % greeting
    s.send("CAPA")
    s.readline()
    caps = s.multiline()
    assert not any(b"CRAM-MD5" in c for c in caps), caps
    assert s.cmd("AUTH CRAM-MD5").startswith(b"-ERR")
    assert s.login(alice.name, alice.password) == b"+OK Mailbox open, 1 messages"
    s.quit()


def test_non_root_mode_auth_external_and_mail_env(users, ipop3d, server_args, spool):
    """Run as the user (runuser): AUTH EXTERNAL (none, own name, '=') logs in without a
    password and serves $MAIL; someone else's name is refused; USER/PASS checks PAM."""
    bob = users["bob"]
    mail = os.path.join(bob.home, "inbox-via-MAIL")
    write_file(mail, mbox_of([make_message(1), make_message(2)]), owner=bob)
    argv = ["runuser", "-u", bob.name, "--", "env", "MAIL=" + mail] + server_args("--allow-plaintext")

    def session():
        s = PipeSession(argv)
        s.greeting()
        return s

    s = session()
    s.send("CAPA")
    s.readline()
    caps = s.multiline()
    assert any(c.startswith(b"SASL ") and b"EXTERNAL" in c.split() for c in caps), caps
    assert s.cmd("AUTH EXTERNAL " + b64("alice-not-me")).startswith(b"-ERR")
    assert s.cmd("AUTH EXTERNAL " + b64(bob.name)) == b"+OK Mailbox open, 2 messages"
    s.quit()
    for initial in ("", " ="):
        s = session()
        resp = s.cmd("AUTH EXTERNAL" + initial)
        if resp == b"+ ":
            resp = s.cmd("")
        assert resp == b"+OK Mailbox open, 2 messages", (initial, resp)
        assert s.cmd("STAT").startswith(b"+OK 2 ")
        s.quit()
    s = session()
    s.ok("USER " + bob.name)
    assert s.cmd("PASS " + bob.password) == b"+OK Mailbox open, 2 messages"
    s.quit()
    assert not os.path.exists(os.path.join(spool, bob.name)), "used the spool instead of $MAIL"


def test_privileges_dropped_to_user(users, mbox_for, pipe_session):
    """While logged in, /proc/<pid>/status shows the user's uid and gid 4 times each (real,
    effective, saved, fs) and exactly the user's groups."""
    alice = users["alice"]
    one_message_mbox(mbox_for, alice)
    s = pipe_session("--allow-plaintext")
    s.greeting()
    s.login(alice.name, alice.password)
    status = {}
    with open("/proc/%d/status" % s.pid) as f:
        for line in f:
            key, _, value = line.partition(":")
            status[key] = value.split()
    assert status["Uid"] == [str(alice.uid)] * 4, status["Uid"]
    assert status["Gid"] == [str(alice.gid)] * 4, status["Gid"]
    assert sorted(int(g) for g in status["Groups"]) == sorted(alice.groups), status["Groups"]
    assert len(alice.groups) >= 2, "fixture: alice is in an extra group"
    s.quit()


def test_spool_dir_owned_by_mail_group_uses_mlock(users, mbox_for, pipe_session, spool, mlock_helper):
    """Debian layout: spool 2775 root:mail that the user cannot write; dotlocks go through the
    setgid helper and a DELE still works; no lock file is left behind."""
    import grp
    import pytest
    if mlock_helper is None:
        pytest.skip("target/release/mlock is not built")
    os.chown(spool, 0, grp.getgrnam("mail").gr_gid)
    os.chmod(spool, 0o2775)
    alice = users["alice"]
    path = mbox_for(alice, mbox_of([make_message(1), make_message(2)]))
    s = pipe_session("--allow-plaintext")
    s.greeting()
    s.login(alice.name, alice.password)
    s.ok("DELE 1")
    assert s.quit() == b"+OK Sayonara"
    assert b"<t-1@test>" not in open(path, "rb").read()
    assert sorted(os.listdir(spool)) == [alice.name]


def test_secrets_file_replaces_pam_for_plaintext(users, mbox_for, pipe_session, tmp_path):
    """UW semantics (tests/fixtures/cram-md5-apop.txt): with a valid secrets file, USER/PASS
    is checked against the file's secret, so the PAM password no longer works."""
    alice = users["alice"]
    one_message_mbox(mbox_for, alice)
    cram = secrets_file(str(tmp_path), 0o600, [(alice.name, "md5secret")])
    s = pipe_session("--allow-plaintext", cram_file=cram)
    s.greeting()
    s.ok("USER " + alice.name)
    assert s.cmd("PASS " + alice.password) == b"-ERR [AUTH] Bad login"
    assert s.login(alice.name, "md5secret") == b"+OK Mailbox open, 1 messages"
    s.quit()
