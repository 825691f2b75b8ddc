"""Two imapd sessions and a delivering process working on one mailbox for a while, on an mbox
(delivery with dotlockfile + fcntl, as Postfix/procmail) and on a Maildir (tmp/ then new/).
Session A keeps expunging its first message; session B keeps flagging; both keep fetching.

Checked throughout: every view has no duplicate Message-ID, UIDs strictly ascending with
sequence numbers, a UID always names the same message in both sessions (UIDVALIDITY fixed),
EXISTS agrees with FETCH. At the end: every delivered message not expunged is there exactly
once, every expunged one is gone, and the deliverer was never starved.
"""

import fcntl
import os
import re
import subprocess
import threading
import time

import pytest

from imaptest import PipeImap, maildir_of, mbox_message_count, parse_fetch
from mailtest import make_message, mbox_of, message_ids, read_file

DELIVERIES = 400
TIME_LIMIT = 90.0


def deliver_mbox(path, count, errors, done):
    lock = path + ".lock"
    try:
        for i in range(count):
            done[0] = i
            subprocess.run(["dotlockfile", "-i", "1", "-r", "60", "-l", lock], check=True, timeout=90)
            try:
                with open(path, "ab") as f:
                    fcntl.lockf(f, fcntl.LOCK_EX)
                    f.write(mbox_of([make_message(i, tag=b"d", body_lines=2)]))
                    f.flush()
                    fcntl.lockf(f, fcntl.LOCK_UN)
            finally:
                subprocess.run(["dotlockfile", "-u", lock], check=True, timeout=30)
    except Exception as e:  # reported by the test
        errors.append(repr(e))


def deliver_maildir(root, count, errors, owner, done):
    try:
        for i in range(count):
            done[0] = i
            name = "1800%06d.M%dP99.deliver" % (i, i)
            tmp = os.path.join(root, "tmp", name)
            with open(tmp, "wb") as f:
                f.write(make_message(i, tag=b"d", body_lines=2))
            os.chown(tmp, owner.uid, owner.gid)
            os.rename(tmp, os.path.join(root, "new", name))
            time.sleep(0.005)
    except Exception as e:
        errors.append(repr(e))


class View:
    """What one session sees, checked for consistency after every command."""

    def __init__(self, session, name, uid_names):
        self.s, self.name, self.uid_names = session, name, uid_names

    def fetch_all(self):
        lines = self.s.ok("NOOP", timeout=60)
        lines += self.s.ok("UID FETCH 1:* (UID BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])", timeout=60)
        exists = [int(m.group(1)) for m in (re.match(rb"\* (\d+) EXISTS", l) for l in lines) if m]
        got = parse_fetch(lines)
        assert sorted(got) == list(range(1, len(got) + 1)), (self.name, "gaps", sorted(got)[:20])
        uids, ids = [], []
        for n in sorted(got):
            data = got[n]
            uids.append(int(re.search(rb"UID (\d+)", data).group(1)))
            mids = message_ids(data)
            assert len(mids) == 1, (self.name, data[:200])
            ids.append(mids[0])
        assert uids == sorted(set(uids)), (self.name, "UIDs not ascending/unique")
        assert len(set(ids)) == len(ids), (self.name, "duplicate message in view")
        if exists:
            assert exists[-1] >= len(ids), (self.name, exists, len(ids))
        for uid, mid in zip(uids, ids):
            assert self.uid_names.setdefault(uid, mid) == mid, (self.name, "UID %d renamed" % uid)
        return ids


def open_session(argv, user):
    s = PipeImap(argv, timeout=60)
    s.greeting()
    s.login(user.name, user.password)
    lines = s.ok("SELECT INBOX", timeout=60)
    validity = re.search(rb"\[UIDVALIDITY (\d+)\]", b"\n".join(lines)).group(1)
    return s, validity


@pytest.mark.parametrize("kind", ["mbox", "maildir"])
def test_two_sessions_and_a_deliverer(kind, imap_users, mbox_for, imap_args):
    user = imap_users["alice" if kind == "mbox" else "maddy"]
    pre = [make_message(i, tag=b"pre") for i in range(20)]
    argv = imap_args("--allow-plaintext")
    errors, done = [], [0]
    if kind == "mbox":
        path = mbox_for(user, mbox_of(pre))
        deliverer = threading.Thread(target=deliver_mbox, args=(path, DELIVERIES, errors, done),
                                     daemon=True)
    else:
        path = maildir_of(user, pre)
        deliverer = threading.Thread(target=deliver_maildir, args=(path, DELIVERIES, errors, user, done),
                                     daemon=True)
    uid_names = {}
    (a, va), (b, vb) = open_session(argv, user), open_session(argv, user)
    assert va == vb
    view_a, view_b = View(a, "A", uid_names), View(b, "B", uid_names)
    expunged = set()
    start = time.monotonic()
    deliverer.start()
    rounds = 0
    while deliverer.is_alive() and time.monotonic() - start < TIME_LIMIT:
        ids = view_a.fetch_all()
        if ids:
            a.ok("STORE 1 +FLAGS.SILENT (\\Deleted)", timeout=60)
            lines, tagged = a.cmd("EXPUNGE", timeout=60)
            assert tagged.startswith(b"OK"), tagged
            if b"* 1 EXPUNGE" in lines:
                expunged.add(ids[0])
        ids_b = view_b.fetch_all()
        if ids_b:
            b.ok("STORE %d +FLAGS.SILENT (\\Flagged)" % len(ids_b), timeout=60)
        rounds += 1
        time.sleep(0.02)  # clients pause between commands; the deliverer gets its turn
    deliverer.join(timeout=max(1.0, TIME_LIMIT - (time.monotonic() - start)))
    assert not deliverer.is_alive(), "only %d of %d deliveries in %.0fs (%d session rounds)" % (
        done[0], DELIVERIES, TIME_LIMIT, rounds)
    assert not errors, errors
    assert rounds >= 5, "only %d rounds ran during delivery" % rounds
    final_a, final_b = view_a.fetch_all(), view_b.fetch_all()
    assert final_a == final_b, "the two sessions disagree at the end"
    a.ok("LOGOUT", timeout=60)
    b.ok("LOGOUT", timeout=60)
    a.close()
    b.close()
    c, vc = open_session(argv, user)
    assert vc == va, "UIDVALIDITY changed"
    final = View(c, "C", uid_names).fetch_all()
    c.ok("LOGOUT")
    c.close()
    delivered = {b"<d-%d@test>" % i for i in range(DELIVERIES)} | {b"<pre-%d@test>" % i for i in range(20)}
    assert len(expunged) >= 5, "too few expunges to mean anything"
    assert not set(final) & expunged, "expunged messages came back"
    missing = delivered - expunged - set(final)
    assert not missing, "lost messages: %r" % sorted(missing)[:10]
    if kind == "mbox":
        assert mbox_message_count(read_file(path)) == len(final)
        assert not os.path.exists(path + ".lock"), "dotlock left behind"


RACE_SECONDS = 12.0  # at least; longer on a slow machine, until both sides did 20 rounds
RACE_LIMIT = 90.0


@pytest.mark.parametrize("kind", ["mbox", "maildir"])
def test_fetch_of_bodies_while_another_session_expunges(kind, imap_users, mbox_for, imap_args):
    """Session A keeps fetching every body while session B, at the same time, expunges the
    first message and appends a new one: on an mbox every EXPUNGE rewrites the file under A.
    A's FETCH may come too late for a message (tagged NO, as RFC 3501 allows), but its
    connection must never drop and every literal it gets must be the right message's bytes."""
    user = imap_users["alice" if kind == "mbox" else "maddy"]
    # Big enough that FETCH 1:* takes a while, and different lengths so that shifted bytes show.
    pre = [make_message(i, tag=b"pre", body_lines=40 + i) for i in range(30)]
    argv = imap_args("--allow-plaintext")
    if kind == "mbox":
        mbox_for(user, mbox_of(pre))
    else:
        maildir_of(user, pre)
    (a, _), (b, _) = open_session(argv, user), open_session(argv, user)
    stop, b_errors, b_rounds = threading.Event(), [], [0]

    def churn():
        n = 1000
        try:
            while not stop.is_set():
                b.ok("STORE 1 +FLAGS.SILENT (\\Deleted)", timeout=60)
                b.ok("EXPUNGE", timeout=60)
                msg = make_message(n, tag=b"new", body_lines=n % 50 + 1).replace(b"\n", b"\r\n")
                lines, tagged = b.literal_cmd("APPEND INBOX", msg, timeout=60)
                assert tagged.startswith(b"OK"), tagged
                n += 1
                b_rounds[0] += 1
        except Exception as e:  # reported by the test
            b_errors.append(repr(e))

    churner = threading.Thread(target=churn, daemon=True)
    churner.start()
    start, fetches, refused, checked = time.monotonic(), 0, 0, 0
    try:
        def racing():
            elapsed = time.monotonic() - start
            enough = elapsed >= RACE_SECONDS and fetches >= 20 and b_rounds[0] >= 20
            return churner.is_alive() and not enough and elapsed < RACE_LIMIT

        while racing():
            lines, tagged = a.cmd("FETCH 1:* (UID BODY.PEEK[])", timeout=60)
            assert tagged.startswith((b"OK", b"NO")), tagged
            refused += tagged.startswith(b"NO")
            for data in parse_fetch(lines).values():
                m = re.search(rb"BODY\[\] \{(\d+)\}\r\n", data)
                if not m:
                    continue
                body = data[m.end():m.end() + int(m.group(1))]
                mid = re.search(rb"Message-ID: <(pre|new)-(\d+)@test>", body)
                assert mid, body[:300]
                tag, n = mid.group(1), int(mid.group(2))
                lines_of = 40 + n if tag == b"pre" else n % 50 + 1
                expected = make_message(n, tag=tag, body_lines=lines_of).replace(b"\n", b"\r\n")
                assert body == expected, "wrong bytes for <%s-%d@test>" % (tag.decode(), n)
                checked += 1
            fetches += 1
    finally:
        stop.set()
        churner.join(timeout=60)
    assert not b_errors, b_errors
    assert b_rounds[0] >= 20 and fetches >= 20, (b_rounds[0], fetches)
    assert checked >= 100, checked
    a.ok("LOGOUT", timeout=60)
    b.ok("LOGOUT", timeout=60)
    a.close()
    b.close()
    print("%s: %d fetches (%d NO), %d bodies checked, %d expunge+append rounds"
          % (kind, fetches, refused, checked, b_rounds[0]))
