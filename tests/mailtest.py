"""Helpers for the ipop3d end-to-end tests: mbox building and parsing, the expected POP3
presentation of a message, a pipe-driven POP3 session, launchers and small process tools.

Owns no fixtures (see conftest.py) and never touches anything outside the temp dirs and
processes the tests create.
"""

import os
import poplib
import re
import select
import signal
import socket
import subprocess
import time

# poplib refuses lines over 2048 bytes; our fixtures carry a 3000-byte line on purpose.
poplib._MAXLINE = 1 << 16

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, "tests", "fixtures")

# Headers the store keeps for itself and hides from POP3 clients (content and sizes).
METADATA_HEADERS = re.compile(
    rb"(?i)^(status|x-status|x-keywords|x-uid|x-imapbase|x-imap|content-length):"
)
# A From_ line as UW's mbox driver recognises it ("From sender Www Mmm dd hh:mm:ss yyyy").
FROM_LINE = re.compile(
    rb"^From \S+ +\w{3} \w{3} [ \d]?\d \d\d:\d\d(:\d\d)? (\S+ )?\d{4}( [+-]?\w+)?\s*$")


# ---------------------------------------------------------------- mbox files


def make_message(n, body_lines=3, extra_headers=b"", tag=b"t", line=None):
    """One RFC 822 message (LF line ends, no From_ line) with Message-ID <tag-n@test>."""
    hdr = (
        b"Return-Path: <sender%d@example.com>\n"
        b"Date: Mon, 1 Jan 2024 10:%02d:00 +0000\n"
        b"From: Sender %d <sender%d@example.com>\n"
        b"To: someone@localhost\n"
        b"Subject: test message %d\n"
        b"Message-ID: <%s-%d@test>\n" % (n, n % 60, n, n, n, tag, n)
    ) + extra_headers
    text = line if line is not None else b"Body line %d of message %d, some filler text."
    body = b"".join((text % (i, n) if b"%d" in text else text) + b"\n" for i in range(body_lines))
    return hdr + b"\n" + body


def mbox_of(messages, sender=b"sender@example.com"):
    """An mbox file (mboxo, From_ separated, blank line after each message) of raw messages."""
    out = []
    for msg in messages:
        out.append(b"From " + sender + b" Mon Jan  1 10:00:00 2024\n" + msg)
        if not msg.endswith(b"\n"):
            out.append(b"\n")
        out.append(b"\n")
    return b"".join(out)


def is_pseudo_message(msg):
    """UW's folder-internal-data message (X-IMAP header) that keeps UIDVALIDITY in an
    emptied mailbox; never shown to clients."""
    head = msg.split(b"\n\n", 1)[0]
    return bool(re.search(rb"(?im)^X-IMAP: ", head)) and b"FOLDER INTERNAL DATA" in head


def split_mbox(data, include_pseudo=False):
    """The messages of an mbox file: each without its From_ line and separator blank line,
    UW's pseudo message left out unless include_pseudo.

    Raises AssertionError if the file does not start with a From_ line (a damaged file)."""
    if not data:
        return []
    lines = data.split(b"\n")
    assert FROM_LINE.match(lines[0]), "mbox does not start with a From_ line: %r" % lines[0][:80]
    messages, current = [], None
    for i, line in enumerate(lines):
        if FROM_LINE.match(line) and (i == 0 or lines[i - 1] == b""):
            if current is not None:
                messages.append(current)
            current = []
        else:
            current.append(line)
    messages.append(current)
    result = []
    for msg in messages:
        text = b"\n".join(msg)
        # the blank separator line before the next From_ (and the file's final newline)
        if text.endswith(b"\n\n"):
            text = text[:-1]
        elif text.endswith(b"\n"):
            pass
        elif text:
            text += b"\n"
        if include_pseudo or not is_pseudo_message(text):
            result.append(text)
    return result


def count_from_lines(data):
    return sum(1 for line in data.split(b"\n") if FROM_LINE.match(line))


def presented(raw):
    """What POP3 RETR must return for a raw (LF) message: metadata headers removed, CRLF."""
    head, sep, body = raw.partition(b"\n\n")
    kept = []
    skipping = False
    for line in head.split(b"\n"):
        if line[:1] in (b" ", b"\t") and kept is not None:
            if skipping:
                continue
        else:
            skipping = bool(METADATA_HEADERS.match(line))
            if skipping:
                continue
        kept.append(line)
    text = b"\n".join(kept) + sep + body
    return text.replace(b"\n", b"\r\n")


def message_ids(data):
    """Message-ID header values in order of appearance (one per message)."""
    return re.findall(rb"(?im)^Message-ID: *(<[^>\r\n]*>)", data)


def write_file(path, data, owner=None, mode=0o600):
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)
    if owner is not None:
        os.chown(path, owner.uid, owner.gid)


def read_file(path):
    with open(path, "rb") as f:
        return f.read()


def dot_unstuff(lines):
    """Undo POP3 dot-stuffing on a list of byte lines (without CRLF) and join with CRLF."""
    out = [line[1:] if line.startswith(b"..") else line for line in lines]
    return b"".join(line + b"\r\n" for line in out)


# ---------------------------------------------------------------- processes


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=10.0, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError("launcher exited with %s before listening" % proc.returncode)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("nothing listens on 127.0.0.1:%d after %.0fs" % (port, timeout))


def wait_listening_probe_free(port, timeout=10.0, proc=None):
    """Wait until a launcher has bound `port`, without connecting (a connect would spawn a
    server): poll /proc/net/tcp for a LISTEN socket on the port."""
    deadline = time.monotonic() + timeout
    want = ":%04X" % port
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError("launcher exited with %s before listening" % proc.returncode)
        with open("/proc/net/tcp") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[1].endswith(want) and fields[3] == "0A":
                    return
        time.sleep(0.05)
    raise AssertionError("nothing listens on 127.0.0.1:%d after %.0fs" % (port, timeout))


def stop(proc, sig=signal.SIGTERM, timeout=5):
    if proc is None or proc.poll() is not None:
        return
    try:
        proc.send_signal(sig)
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


def proc_status(pid):
    """/proc/<pid>/status as a dict of field -> value string."""
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            key, _, value = line.partition(":")
            out[key] = value.strip()
    return out


class PipeSession:
    """A POP3 session with ipop3d on a pipe (stdin/stdout are not a socket: peer UNKNOWN)."""

    def __init__(self, argv, env=None, timeout=15.0, stderr=None):
        self.timeout = timeout
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr if stderr is not None else subprocess.PIPE,
            env=env,
            bufsize=0,
        )
        self.buf = b""
        self.pid = self.proc.pid

    # raw I/O
    def send_raw(self, data):
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def send(self, line):
        if isinstance(line, str):
            line = line.encode()
        self.send_raw(line + b"\r\n")

    def readline(self, timeout=None):
        """One line without its CRLF; raises EOFError at end of stream, TimeoutError on timeout."""
        deadline = time.monotonic() + (timeout or self.timeout)
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no line from ipop3d within the timeout; got %r" % self.buf[:200])
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                raise EOFError("ipop3d closed the connection; partial %r" % self.buf[:200])
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        assert line.endswith(b"\r"), "response line not CRLF-terminated: %r" % line[:200]
        return line[:-1]

    def read_to_eof(self, timeout=None):
        deadline = time.monotonic() + (timeout or self.timeout)
        fd = self.proc.stdout.fileno()
        data = self.buf
        self.buf = b""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                return data
            data += chunk
        raise TimeoutError("ipop3d did not close the connection")

    # POP3
    def greeting(self):
        line = self.readline()
        assert line.startswith(b"+OK "), line
        return line

    def cmd(self, line, timeout=None):
        self.send(line)
        return self.readline(timeout)

    def multiline(self, timeout=None):
        lines = []
        while True:
            line = self.readline(timeout)
            if line == b".":
                return lines
            lines.append(line)

    def ok(self, line, timeout=None):
        resp = self.cmd(line, timeout)
        assert resp.startswith(b"+OK"), "%r -> %r" % (line, resp)
        return resp

    def login(self, user, password):
        self.ok("USER " + user)
        return self.ok("PASS " + password)

    def retr(self, n):
        resp = self.ok("RETR %d" % n)
        return resp, dot_unstuff(self.multiline())

    def quit(self, timeout=None):
        resp = self.cmd("QUIT", timeout)
        self.close()
        return resp

    def close(self, timeout=10):
        for f in (self.proc.stdin,):
            try:
                f.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=timeout)
        err = self.proc.stderr.read() if self.proc.stderr else b""
        for f in (self.proc.stdout, self.proc.stderr):
            if f:
                f.close()
        return err

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        self.close()


def poplib_fetch_all(client):
    """All messages through a poplib client: list of (size from LIST, content bytes CRLF)."""
    _, listing, _ = client.list()
    out = []
    for entry in listing:
        num, size = entry.split()
        _, lines, _ = client.retr(int(num))
        out.append((int(size), b"".join(line + b"\r\n" for line in lines)))
    return out


def varied_messages():
    """Messages that exercise the presentation: dot lines, >From, 8-bit, a long line, a
    message with metadata headers already present, an empty body, a folded header."""
    return [
        make_message(1),
        make_message(2, extra_headers=b"X-Folded: first part\n\tsecond part\n",
                     line=b".dot line %d in %d\n..double\n.") ,
        make_message(3, line=b">From quoted %d/%d, and 8-bit: \xc3\xa9t\xc3\xa9 \xff"),
        make_message(4, body_lines=1, line=b"x" * 3000),
        make_message(5, extra_headers=b"Status: RO\nX-Status: A\nX-Keywords: $Label1\nX-UID: 7\n"),
        make_message(6, body_lines=0),
    ]


NO_CRAM_FILE = "/nonexistent/cram-md5.pwd"


def server_argv(binary, spool, mlock_helper, extra, failure_delay=0, cram_file=NO_CRAM_FILE,
                spool_dir=None):
    """Command line for ipop3d or imapd serving `spool` (both take the same options)."""
    argv = [binary, "--spool-dir", spool_dir or spool]
    if failure_delay is not None:
        argv += ["--failure-delay", str(failure_delay)]
    if cram_file is not None:
        argv += ["--cram-file", cram_file]
    argv += ["--dotlock-helper", mlock_helper or "/nonexistent/mlock"]
    return argv + [str(x) for x in extra]
