"""A Maildir user (~/Maildir exists, --store auto): PAM login, exact bytes (LF files presented
with CRLF), UIDL stable across sessions and across new deliveries, DELE removing exactly the
file at QUIT and nothing when the connection drops; also through xinetd with poplib.

Faults tried: messages in both new/ and cur/ (with flags), a delivery between sessions, a
dropped connection after DELE, --store mbox overriding auto. Reading leaves atimes alone.
"""

import os
import poplib
import shutil

import pytest

import launchers
from mailtest import make_message, message_ids, poplib_fetch_all, presented, read_file


@pytest.fixture
def maildir(users):
    """maddy's ~/Maildir with 3 messages in new/ and 2 in cur/; removed afterwards."""
    maddy = users["maddy"]
    root = os.path.join(maddy.home, "Maildir")
    shutil.rmtree(root, ignore_errors=True)
    msgs = {}
    for sub in ("", "new", "cur", "tmp"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
        os.chown(os.path.join(root, sub), maddy.uid, maddy.gid)
        os.chmod(os.path.join(root, sub), 0o700)

    def deliver(n, sub="new", info=""):
        raw = make_message(n, tag=b"md", body_lines=n)
        name = "17000000%02d.M%dP4242.testhost%s" % (n, n, info)
        path = os.path.join(root, sub, name)
        with open(path, "wb") as f:
            f.write(raw)
        os.chown(path, maddy.uid, maddy.gid)
        os.utime(path, (1700000000 + n, 1700000000 + n))
        msgs[message_ids(raw)[0]] = raw
        return path

    for n in (1, 2, 3):
        deliver(n)
    deliver(4, "cur", ":2,S")
    deliver(5, "cur", ":2,FS")
    yield root, msgs, deliver
    shutil.rmtree(root, ignore_errors=True)


def files_by_id(root):
    out = {}
    for sub in ("new", "cur"):
        for name in os.listdir(os.path.join(root, sub)):
            data = read_file(os.path.join(root, sub, name))
            for mid in message_ids(data):
                out.setdefault(mid, []).append(name)
    return out


def session(pipe_session, user, *extra):
    s = pipe_session("--allow-plaintext", *extra)
    s.greeting()
    return s, s.login(user.name, user.password)


def fetch_all(s, count):
    got = {}
    for n in range(1, count + 1):
        _, data = s.retr(n)
        got[message_ids(data)[0]] = (n, data)
    return got


def test_maildir_bytes_uidl_and_dele(users, maildir, pipe_session):
    maddy = users["maddy"]
    root, msgs, deliver = maildir
    s, resp = session(pipe_session, maddy)
    assert resp == b"+OK Mailbox open, 5 messages"
    got = fetch_all(s, 5)
    assert {mid: data for mid, (_, data) in got.items()} == {mid: presented(raw) for mid, raw in msgs.items()}
    s.ok("UIDL")
    uidl1 = s.multiline()
    assert len({line.split()[1] for line in uidl1}) == 5
    victim = b"<md-2@test>"
    s.ok("DELE %d" % got[victim][0])
    assert s.quit() == b"+OK Sayonara"
    present = files_by_id(root)
    assert victim not in present
    assert sorted(present) == sorted(m for m in msgs if m != victim)
    assert all(len(names) == 1 for names in present.values()), present

    deliver(6)
    s, resp = session(pipe_session, maddy)
    assert resp == b"+OK Mailbox open, 5 messages"
    s.ok("UIDL")
    uidl2 = s.multiline()
    ids2 = fetch_all(s, 5)
    s.quit()
    old_uid = {mid: uidl1[n - 1].split()[1] for mid, (n, _) in got.items()}
    new_uid = {mid: uidl2[n - 1].split()[1] for mid, (n, _) in ids2.items()}
    for mid, uid in new_uid.items():
        if mid in old_uid:
            assert uid == old_uid[mid], "UIDL of %r changed" % mid
    assert new_uid[b"<md-6@test>"] not in old_uid.values(), "UIDL reused"


def test_reading_leaves_access_times_alone(users, maildir, pipe_session):
    """Reading every message (sizes at login, RETR) leaves each file's atime as it was: the
    owner's server opens message files with O_NOATIME (here atime == mtime, which relatime
    would otherwise update on the first read)."""
    maddy = users["maddy"]
    root, msgs, _ = maildir
    s, _ = session(pipe_session, maddy)
    assert len(fetch_all(s, 5)) == 5
    assert s.quit() == b"+OK Sayonara"
    times = {}
    for sub in ("new", "cur"):
        for name in os.listdir(os.path.join(root, sub)):
            n = int(name[8:10])
            times[n] = os.stat(os.path.join(root, sub, name)).st_atime
    assert times == {n: 1700000000 + n for n in range(1, 6)}, times


def test_maildir_dropped_connection_deletes_nothing(users, maildir, pipe_session):
    maddy = users["maddy"]
    root, msgs, _ = maildir
    s, _ = session(pipe_session, maddy)
    s.ok("DELE 1")
    s.ok("DELE 5")
    s.close()
    assert sorted(files_by_id(root)) == sorted(msgs)


def test_maildir_through_xinetd(users, maildir, server_args, ipop3d, tmp_path):
    maddy = users["maddy"]
    _, msgs, _ = maildir
    with launchers.xinetd("xinetd.d/pop3", ipop3d, server_args()[1:], str(tmp_path)) as port:
        client = poplib.POP3("127.0.0.1", port, timeout=20)
        client.user(maddy.name)
        assert client.pass_(maddy.password) == b"+OK Mailbox open, 5 messages"
        got = poplib_fetch_all(client)
        client.quit()
    assert sorted(data for _, data in got) == sorted(presented(raw) for raw in msgs.values())
    assert all(size == len(data) for size, data in got)


def test_store_mbox_overrides_maildir(users, maildir, pipe_session, spool):
    maddy = users["maddy"]
    s, resp = session(pipe_session, maddy, "--store", "mbox")
    assert resp == b"+OK Mailbox open, 0 messages"
    s.quit()


def parse_dovecot_uidlist(root):
    """(uidvalidity, {maildir base name: uid}) from dovecot-uidlist version 3."""
    with open(os.path.join(root, "dovecot-uidlist"), "rb") as f:
        lines = f.read().decode().splitlines()
    header = lines[0].split()
    assert header[0] == "3", "dovecot-uidlist version: %r" % lines[0]
    validity = int(next(field[1:] for field in header[1:] if field.startswith("V")))
    uids = {}
    for line in lines[1:]:
        uid, _, rest = line.partition(" ")
        name = rest[rest.index(":") + 1:] if ":" in rest else rest.split()[-1]
        uids[name.split(":")[0]] = int(uid)
    return validity, uids


def test_maildir_uidl_follows_dovecot_uidlist(users, maildir, pipe_session):
    """Maildir variant of the UW UIDL rule: UIDL = 8 hex digits of the dovecot-uidlist
    UIDVALIDITY then 8 of the message's UID, as Dovecot's pop3_uidl_format %08Xv%08Xu
    (lower-case); the uidlist is owned by the user."""
    maddy = users["maddy"]
    root, msgs, _ = maildir
    s, _ = session(pipe_session, maddy)
    got = fetch_all(s, 5)
    s.ok("UIDL")
    uidl = {int(n): u.decode() for n, u in (line.split() for line in s.multiline())}
    s.quit()
    validity, uids = parse_dovecot_uidlist(root)
    assert os.stat(os.path.join(root, "dovecot-uidlist")).st_uid == maddy.uid
    names = {}
    for sub in ("new", "cur"):
        for name in os.listdir(os.path.join(root, sub)):
            names[message_ids(read_file(os.path.join(root, sub, name)))[0]] = name.split(":")[0]
    for mid, (n, _) in got.items():
        assert uidl[n] == "%08x%08x" % (validity, uids[names[mid]]), mid
