"""Helpers and fixtures for the imapd end-to-end tests: the imapd binary, the PAM service
/etc/pam.d/imap, imapd command lines, a user's ~/Maildir, and a raw IMAP client (over a pipe
to an imapd child, or over a socket to a launcher) that reads literals exactly.

conftest.py imports the fixtures (so session-scoped ones exist once per run); the POP3
fixtures they build on (users, spool, cert, ...) are conftest.py's own. Owns nothing outside
the temp dirs, the users' ~/Maildir and /etc/pam.d/imap (restored afterwards).
"""

import os
import re
import select
import shutil
import socket
import subprocess
import time

import pytest

from mailtest import REPO, read_file, server_argv, write_file

LITERAL_AT_END = re.compile(rb"\{(\d+)\+?\}$")
# A From_ line as UW writes and reads it, including the trailing zone UW's APPEND adds
# ("From user@host Thu Feb  1 12:00:00 2024 +0000"); mailtest.FROM_LINE lacks that form.
FROM_LINE_UW = re.compile(
    rb"^From \S+ +\w{3} \w{3} [ \d]?\d \d\d:\d\d(:\d\d)? (\S+ )?\d{4}( [+-]\d{4})?\s*$")


class ImapError(AssertionError):
    pass


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def imapd_built():
    """The path of the release imapd (env IMAPD), built with cargo if it is missing."""
    path = os.environ.get("IMAPD") or os.path.join(REPO, "target", "release", "imapd")
    if not os.path.exists(path):
        subprocess.run(["cargo", "build", "--release", "-p", "imapd"], cwd=REPO, check=True)
    assert os.access(path, os.X_OK), "no imapd binary at %s" % path
    return path


@pytest.fixture(scope="session")
def imapd(imapd_built, base_tmp):
    """A copy of imapd in a world-readable directory, so that test users can run it too."""
    bindir = os.path.join(base_tmp, "bin")
    os.makedirs(bindir, mode=0o755, exist_ok=True)
    dest = os.path.join(bindir, "imapd")
    staged = dest + ".new"
    shutil.copy2(imapd_built, staged)
    os.chmod(staged, 0o755)
    os.rename(staged, dest)  # a copy over a running binary would fail with ETXTBSY
    return dest


@pytest.fixture(scope="session")
def pam_imap(pam_pop):
    """pam.d/imap from this repository installed as /etc/pam.d/imap (previous file restored)."""
    target = "/etc/pam.d/imap"
    saved = read_file(target) if os.path.exists(target) else None
    shutil.copyfile(os.path.join(REPO, "pam.d", "imap"), target)
    os.chmod(target, 0o644)
    yield target
    if saved is None:
        os.unlink(target)
    else:
        write_file(target, saved, mode=0o644)


@pytest.fixture
def imap_users(users, pam_imap):
    """The conftest users with /etc/pam.d/imap installed; nobody has a ~/Maildir at first
    (maildir_of creates one) so alice and bob are mbox users."""
    for user in users.values():
        shutil.rmtree(os.path.join(user.home, "Maildir"), ignore_errors=True)
    yield users
    for user in users.values():
        shutil.rmtree(os.path.join(user.home, "Maildir"), ignore_errors=True)


def maildir_of(user, messages=(), sub="new"):
    """Create ~/Maildir (new, cur, tmp, owned by the user) holding `messages`; returns its path."""
    root = os.path.join(user.home, "Maildir")
    for d in ("", "new", "cur", "tmp"):
        path = os.path.join(root, d)
        os.makedirs(path, exist_ok=True)
        os.chown(path, user.uid, user.gid)
        os.chmod(path, 0o700)
    for i, raw in enumerate(messages):
        name = "17000000%02d.M%dP4242.testhost" % (i, i) + (":2," if sub == "cur" else "")
        write_file(os.path.join(root, sub, name), raw, owner=user)
        os.utime(os.path.join(root, sub, name), (1700000000 + i, 1700000000 + i))
    return root


@pytest.fixture
def imap_args(imapd, spool, mlock_helper):
    """Command line for imapd serving the test spool: imap_args(*extra) -> argv list."""

    def make(*extra, binary=None, **options):
        return server_argv(binary or imapd, spool, mlock_helper, extra, **options)

    return make


@pytest.fixture
def imap_pipe(imap_args):
    """Start a pipe-driven imapd (as root): imap_pipe(*extra, env=None) -> PipeImap."""
    sessions = []

    def start(*extra, env=None, argv=None, **options):
        s = PipeImap(argv or imap_args(*extra, **options), env=env)
        sessions.append(s)
        return s

    yield start
    for s in sessions:
        s.kill()


# ---------------------------------------------------------------- a raw IMAP client


class RawImap:
    """An IMAP client that sends exactly what it is given and reads responses with their
    literals. `responses` are lists of byte strings: a line without CRLF, with each literal
    spliced in (so `* 1 FETCH (BODY[] {3}\\r\\nabc)` is one item)."""

    timeout = 20.0

    def __init__(self):
        self.buf = b""
        self.tagno = 0

    # transport: subclasses provide _recv(timeout) -> bytes (b"" at EOF) and send_raw(bytes)
    def _fill(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no data from imapd within the timeout; have %r" % self.buf[-300:])
        chunk = self._recv(left)
        if chunk is None:
            return
        if not chunk:
            raise EOFError("imapd closed the connection; partial %r" % self.buf[-300:])
        self.buf += chunk

    def read_exact(self, n, timeout=None):
        deadline = time.monotonic() + (timeout or self.timeout)
        while len(self.buf) < n:
            self._fill(deadline)
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def readline(self, timeout=None):
        """One response line with literals spliced in, without the final CRLF."""
        deadline = time.monotonic() + (timeout or self.timeout)
        out = b""
        while True:
            while b"\r\n" not in self.buf:
                self._fill(deadline)
            line, _, self.buf = self.buf.partition(b"\r\n")
            out += line
            m = LITERAL_AT_END.search(line)
            if not m:
                return out
            out += b"\r\n" + self.read_exact(int(m.group(1)), timeout)

    def send(self, line):
        if isinstance(line, str):
            line = line.encode()
        self.send_raw(line + b"\r\n")

    def next_tag(self):
        self.tagno += 1
        return "t%03d" % self.tagno

    def response(self, tag, timeout=None):
        """Read until the tagged line for `tag`: (untagged/continuation lines, tagged line)."""
        lines = []
        want = tag.encode() + b" "
        while True:
            line = self.readline(timeout)
            if line.startswith(want):
                return lines, line
            lines.append(line)

    def cmd(self, text, timeout=None):
        """Send `TAG text`; returns (untagged lines, tagged line without the tag)."""
        tag = self.next_tag()
        self.send("%s %s" % (tag, text) if isinstance(text, str) else tag.encode() + b" " + text)
        lines, tagged = self.response(tag, timeout)
        return lines, tagged[len(tag) + 1:]

    def ok(self, text, timeout=None):
        lines, tagged = self.cmd(text, timeout)
        if not tagged.startswith(b"OK"):
            raise ImapError("%r -> %r (%r)" % (text, tagged, lines[-3:]))
        return lines

    def greeting(self):
        line = self.readline()
        assert line.startswith((b"* OK ", b"* PREAUTH ")), line
        return line

    def login(self, user, password):
        return self.ok('LOGIN "%s" "%s"' % (user, password.replace("\\", "\\\\").replace('"', '\\"')))

    def literal_cmd(self, head, data, tail=b"", sync=True, timeout=None):
        """`TAG head {n}` + data + tail; waits for the continuation unless sync is False
        (LITERAL+ form is then used). Returns (lines, tagged) like cmd."""
        tag = self.next_tag()
        if isinstance(head, str):
            head = head.encode()
        marker = b"{%d}" % len(data) if sync else b"{%d+}" % len(data)
        self.send_raw(tag.encode() + b" " + head + b" " + marker + b"\r\n")
        if sync:
            cont = self.readline(timeout)
            if not cont.startswith(b"+"):
                return [], cont[len(tag) + 1:] if cont.startswith(tag.encode()) else cont
        self.send_raw(data + tail + b"\r\n")
        lines, tagged = self.response(tag, timeout)
        return lines, tagged[len(tag) + 1:]


class PipeImap(RawImap):
    """imapd on a pipe (stdin/stdout are not a socket: the peer is UNKNOWN, not loopback)."""

    def __init__(self, argv, env=None, timeout=20.0):
        super().__init__()
        self.timeout = timeout
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=env, bufsize=0)
        self.pid = self.proc.pid

    def _recv(self, left):
        fd = self.proc.stdout.fileno()
        ready, _, _ = select.select([fd], [], [], left)
        return os.read(fd, 65536) if ready else None

    def send_raw(self, data):
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def read_to_eof(self, timeout=None):
        deadline = time.monotonic() + (timeout or self.timeout)
        try:
            while True:
                self._fill(deadline)
        except EOFError:
            data, self.buf = self.buf, b""
            return data

    def close(self, timeout=10):
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=timeout)
        err = self.proc.stderr.read()
        self.proc.stdout.close()
        self.proc.stderr.close()
        return err

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        if not self.proc.stdout.closed:
            self.close()


class SocketImap(RawImap):
    """A raw IMAP connection to 127.0.0.1:port (a launcher)."""

    def __init__(self, port, timeout=20.0):
        super().__init__()
        self.timeout = timeout
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)

    def _recv(self, left):
        ready, _, _ = select.select([self.sock], [], [], left)
        return self.sock.recv(65536) if ready else None

    def send_raw(self, data):
        self.sock.sendall(data)

    def close(self):
        self.sock.close()


# ---------------------------------------------------------------- response parsing


def parse_fetch(lines):
    """{message number: raw FETCH data bytes} of the `* n FETCH (...)` lines (later lines for
    the same message are appended)."""
    out = {}
    for line in lines:
        m = re.match(rb"\* (\d+) FETCH \((.*)\)$", line, re.S)
        if m:
            n = int(m.group(1))
            out[n] = out.get(n, b"") + m.group(2)
    return out


def imap_store_messages(client):
    """All messages of the selected mailbox via a RawImap, in UID order: list of BODY[] bytes."""
    out = []
    for data in parse_fetch(client.ok("UID FETCH 1:* BODY.PEEK[]")).values():
        m = re.search(rb"BODY\[\] \{(\d+)\}\r\n", data, re.S)
        assert m, data[:200]
        out.append(data[m.end():m.end() + int(m.group(1))])
    return out


def mbox_message_count(data):
    """Messages in an mbox file: From_ lines (UW's forms) at the start or after a blank line,
    UW's pseudo message (FOLDER INTERNAL DATA) not counted."""
    lines = data.split(b"\n")
    starts = [i for i, line in enumerate(lines)
              if FROM_LINE_UW.match(line) and (i == 0 or lines[i - 1] == b"")]
    pseudo = 1 if starts and b"FOLDER INTERNAL DATA" in b"\n".join(lines[:12]) else 0
    return len(starts) - pseudo


def vm_hwm_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM for pid %d" % pid)
