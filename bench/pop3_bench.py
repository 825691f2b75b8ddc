#!/usr/bin/env python3
"""POP3 benchmark: ipop3d against Dovecot and GNU Mailutils on the same mailboxes.

Owns the measurement: it builds fresh copies of a generated mailbox, runs each server for ONE
connection on a socketpair (the server's fd 0/1, as inetd or systemd Accept=yes would), drives a
download-and-delete POP3 session and prints medians and ratios. It never asserts on timings and
never touches a real spool: everything lives below --workdir.

Every server runs pre-authenticated (or with the cheapest possible login) as an unprivileged
user, so the numbers measure mail work, not PAM:
  ours       target/release/ipop3d run as the user, $MAIL -> mbox copy / $HOME/Maildir, then
             "AUTH EXTERNAL =".
  dovecot    /usr/lib/dovecot/pop3 started from the shell (standalone = pre-authenticated) with
             -c <minimal config>, mail_location ...:INDEX=MEMORY (no index files exist).
  mailutils  /usr/sbin/pop3d --inetd has no pre-auth mode; it runs as uid=<user> gid=mail (the
             group it insists on) with a virtdomain password file (MD5-crypt, well under 1 ms),
             login "USER <user>@bench" / "PASS bench". Its INBOX is $home/INBOX.

Run as root (recommended; servers then run as the `popbench` user made by setup.sh) or as a
normal user (mailutils is then skipped unless your real group is `mail`).
"""

from __future__ import annotations

import argparse
import datetime
import grp
import json
import os
import platform
import pwd
import shutil
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import gen_mailbox

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
BENCH_USER = "popbench"
MU_DOMAIN = "bench"
MU_PASSWORD = "bench"
# MD5-crypt of MU_PASSWORD: cheap to verify, so the login costs mailutils almost nothing.
MU_PASSWORD_HASH = "$1$popbench$jY6sIgKNSRHBhLF7OX1Bg0"
SOCKET_TIMEOUT = 600.0
SERVERS = ("ours", "dovecot", "mailutils")
TIME_BINARY = "/usr/bin/time"  # GNU time (Debian package `time`)
PSEUDO_MESSAGE_MARK = b"FOLDER INTERNAL DATA"  # UW/Dovecot X-IMAP pseudo-message subject


class BenchError(Exception):
    """A server misbehaved (bad reply, early close): the round is reported, not timed."""


# ---------------------------------------------------------------------------------------------
# A minimal, strict POP3 client over a socket.


class Pop3Client:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.chunk = bytearray(1 << 18)
        self.chunk_view = memoryview(self.chunk)

    def send(self, line: str) -> None:
        self.sock.sendall(line.encode("ascii") + b"\r\n")

    def _fill(self) -> None:
        received = self.sock.recv_into(self.chunk)
        if not received:
            raise BenchError("server closed the connection")
        self.buf += self.chunk_view[:received]

    def line(self) -> bytes:
        while True:
            end = self.buf.find(b"\r\n")
            if end >= 0:
                line = bytes(self.buf[:end])
                del self.buf[:end + 2]
                return line
            self._fill()

    def ok(self, command: str | None = None) -> bytes:
        if command is not None:
            self.send(command)
        reply = self.line()
        if not reply.startswith(b"+OK"):
            raise BenchError(f"{command!r} -> {reply[:200]!r}")
        return reply

    def send_batch(self, commands: list[str]) -> None:
        self.sock.sendall("".join(c + "\r\n" for c in commands).encode("ascii"))

    def multiline(self, command: str) -> int:
        """Read the +OK multi-line reply to `command` (already sent); return the octets after
        the status line."""
        while (status_end := self.buf.find(b"\r\n")) < 0:
            self._fill()
        if not self.buf.startswith(b"+OK"):
            raise BenchError(f"{command!r} -> {bytes(self.buf[:200])!r}")
        scan = status_end
        while (term := self.buf.find(b"\r\n.\r\n", scan)) < 0:
            scan = max(scan, len(self.buf) - 4)
            self._fill()
        octets = term + 2 - (status_end + 2)
        del self.buf[:term + 5]
        return octets

    def uidl_count(self) -> int:
        self.send("UIDL")
        self.ok()
        count = 0
        while self.line() != b".":
            count += 1
        return count

    def retr_all(self, count: int, window: int) -> int:
        """RETR 1..count, `window` commands in flight (1 = wait for each reply); octets read."""
        octets = 0
        for first in range(1, count + 1, window):
            batch = [f"RETR {n}" for n in range(first, min(first + window, count + 1))]
            self.send_batch(batch)
            octets += sum(self.multiline(command) for command in batch)
        return octets

    def dele_all(self, count: int, window: int) -> None:
        for first in range(1, count + 1, window):
            batch = [f"DELE {n}" for n in range(first, min(first + window, count + 1))]
            self.send_batch(batch)
            for command in batch:
                reply = self.line()
                if not reply.startswith(b"+OK"):
                    raise BenchError(f"{command!r} -> {reply[:200]!r}")

    def wait_eof(self) -> None:
        while self.sock.recv(1 << 16):
            pass


# ---------------------------------------------------------------------------------------------
# Who runs the servers.


@dataclass
class RunAs:
    uid: int
    gid: int
    name: str
    is_root_harness: bool

    @staticmethod
    def decide() -> "RunAs":
        if os.geteuid() == 0:
            try:
                pw = pwd.getpwnam(BENCH_USER)
            except KeyError:
                sys.exit(f"user {BENCH_USER} missing: run bench/setup.sh first")
            return RunAs(pw.pw_uid, pw.pw_gid, pw.pw_name, True)
        pw = pwd.getpwuid(os.getuid())
        return RunAs(os.getuid(), os.getgid(), pw.pw_name, False)

    def popen_kwargs(self, gid: int | None = None) -> dict:
        if not self.is_root_harness:
            return {}
        return {"user": self.uid, "group": self.gid if gid is None else gid, "extra_groups": []}

    def chown_tree(self, path: Path) -> None:
        if not self.is_root_harness:
            return
        os.chown(path, self.uid, self.gid)
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                os.chown(os.path.join(root, name), self.uid, self.gid, follow_symlinks=False)


# ---------------------------------------------------------------------------------------------
# The servers under test. Each one knows how to lay out a fresh mailbox, start, and log in.


@dataclass
class Launch:
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    mailbox: Path  # what must be empty after DELE all + QUIT
    gid: int | None = None


class Server:
    name = ""

    def __init__(self, work: Path, run_as: RunAs) -> None:
        self.work = work / self.name
        self.run_as = run_as
        self.home = self.work / "home"

    def available(self) -> str | None:
        """None when the server can run, else why not."""
        return None

    def version(self) -> str:
        return ""

    def reset_home(self) -> None:
        if self.home.exists():
            shutil.rmtree(self.home)
        self.home.mkdir(parents=True)
        self.run_as.chown_tree(self.home)

    def base_env(self) -> dict[str, str]:
        return {"USER": self.run_as.name, "LOGNAME": self.run_as.name, "HOME": str(self.home),
                "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"}

    def place(self, fmt: str, source: Path) -> Path:
        """Copy the corpus mailbox (owner preserved) to where this server expects INBOX, and
        write the copy out, so that a server's first fsync does not also wait for the disk to
        take the harness's copy (and the files the last session deleted)."""
        target = self.inbox_path(fmt)
        subprocess.run(["cp", "-a", str(source), str(target)], check=True)
        os.sync()
        return target

    def inbox_path(self, fmt: str) -> Path:
        raise NotImplementedError

    def launch(self, fmt: str) -> Launch:
        raise NotImplementedError

    def login(self, client: Pop3Client) -> None:
        raise NotImplementedError

    def first_reply(self, client: Pop3Client) -> None:
        """Read the first thing the server says (its greeting)."""
        client.ok()

    def warm_up(self, fmt: str) -> None:
        """Untimed preparation of a freshly placed mailbox (nothing by default)."""


class Ours(Server):
    name = "ours"

    def __init__(self, work: Path, run_as: RunAs, binary: Path) -> None:
        super().__init__(work, run_as)
        self.source_binary = binary
        self.binary = self.work / "ipop3d"

    def available(self) -> str | None:
        if not self.source_binary.is_file():
            return f"{self.source_binary} not built (cargo build --release -p ipop3d)"
        self.work.mkdir(parents=True, exist_ok=True)
        shutil.copy2(self.source_binary, self.binary)  # reachable by the unprivileged user
        os.chmod(self.binary, 0o755)
        return None

    def version(self) -> str:
        rev = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True)
        return f"ipop3d (git {rev.stdout.strip() or '?'})"

    def inbox_path(self, fmt: str) -> Path:
        return self.home / ("inbox.mbox" if fmt == "mbox" else "Maildir")

    def launch(self, fmt: str) -> Launch:
        env = self.base_env()
        env["MAIL"] = str(self.home / "inbox.mbox")
        argv = [str(self.binary), "--store", fmt, "--spool-dir", str(self.home),
                "--maildir-name", "Maildir"]
        return Launch(argv, env, self.home, self.inbox_path(fmt))

    def login(self, client: Pop3Client) -> None:
        client.ok()  # greeting
        client.ok("AUTH EXTERNAL =")


class Dovecot(Server):
    name = "dovecot"
    binary = Path("/usr/lib/dovecot/pop3")

    def available(self) -> str | None:
        if not self.binary.is_file():
            return f"{self.binary} missing (apt-get install dovecot-pop3d)"
        return None

    def version(self) -> str:
        out = subprocess.run(["dovecot", "--version"], capture_output=True, text=True)
        return "dovecot " + out.stdout.strip()

    def inbox_path(self, fmt: str) -> Path:
        return self.home / ("inbox.mbox" if fmt == "mbox" else "Maildir")

    def index_option(self) -> str:
        return "INDEX=MEMORY"  # no index files: every session starts from the mail alone

    def config(self, fmt: str) -> Path:
        if fmt == "mbox":
            location = f"mbox:{self.home}/mail:INBOX={self.inbox_path(fmt)}:{self.index_option()}"
        else:
            location = f"maildir:{self.inbox_path(fmt)}:{self.index_option()}"
        path = self.work / f"dovecot-{fmt}.conf"
        path.write_text(f"mail_location = {location}\n"
                        "pop3_uidl_format = %08Xv%08Xu\n"
                        f"log_path = {self.work}/dovecot.log\n")
        os.chmod(path, 0o644)
        return path

    def launch(self, fmt: str) -> Launch:
        self.work.mkdir(parents=True, exist_ok=True)
        log = self.work / "dovecot.log"
        log.touch()
        if self.run_as.is_root_harness:
            os.chown(log, self.run_as.uid, self.run_as.gid)
        if fmt == "mbox":
            (self.home / "mail").mkdir(exist_ok=True)
            self.run_as.chown_tree(self.home / "mail")
        argv = [str(self.binary), "-c", str(self.config(fmt))]
        return Launch(argv, self.base_env(), self.home, self.inbox_path(fmt))

    def login(self, client: Pop3Client) -> None:
        pass  # standalone pop3 is pre-authenticated and says nothing until asked

    def first_reply(self, client: Pop3Client) -> None:
        client.ok("NOOP")  # no greeting in pre-auth mode: the first reply is to NOOP


class DovecotIndexed(Dovecot):
    """Dovecot as deployed: on-disk indexes, built by one untimed session (STAT, QUIT) on the
    fresh copy before the measured one. Optional (--servers ...,dovecot-idx)."""

    name = "dovecot-idx"

    def index_option(self) -> str:
        return f"INDEX={self.home}/index"

    def warm_up(self, fmt: str) -> None:
        session = start(self, self.launch(fmt), self.work / "stderr.log", track_rss=False)
        try:
            session.client.ok("STAT")
            session.client.ok("QUIT")
            session.client.wait_eof()
        except (BenchError, OSError):
            abort(session)
            raise
        session.finish()


class Mailutils(Server):
    name = "mailutils"
    binary = Path("/usr/sbin/pop3d")

    def available(self) -> str | None:
        if not self.binary.is_file():
            return f"{self.binary} missing (apt-get install mailutils-pop3d)"
        mail_gid = grp.getgrnam("mail").gr_gid
        if not self.run_as.is_root_harness and os.getgid() != mail_gid:
            return "GNU pop3d insists on setgid(mail): run the benchmark as root"
        return None

    def version(self) -> str:
        out = subprocess.run([str(self.binary), "--version"], capture_output=True, text=True)
        return out.stdout.splitlines()[0] if out.stdout else "GNU pop3d"

    def inbox_path(self, fmt: str) -> Path:
        return self.home / "INBOX"  # virtdomain fixes the mailbox at <home>/INBOX

    def config(self) -> Path:
        passwd_dir = self.work / "virtdomain"
        passwd_dir.mkdir(parents=True, exist_ok=True)
        (passwd_dir / MU_DOMAIN).write_text(
            f"{self.run_as.name}:{MU_PASSWORD_HASH}:{self.run_as.uid}:{self.run_as.gid}"
            f"::{self.home}:/bin/sh\n")
        self.run_as.chown_tree(passwd_dir)
        lock_dir = self.work / "locks"  # its default /var/lock/subsys/mail is root-only
        lock_dir.mkdir(exist_ok=True)
        self.run_as.chown_tree(lock_dir)
        path = self.work / "mailutils.conf"
        path.write_text("auth { authentication generic; authorization virtdomain; };\n"
                        f"virtdomain {{ passwd-dir {passwd_dir}; }};\n"
                        f"mandatory-locking {{ enable true; lock-directory {lock_dir}; }};\n"
                        "logging { syslog false; };\n")
        os.chmod(path, 0o644)
        return path

    def launch(self, fmt: str) -> Launch:
        argv = [str(self.binary), "--inetd", f"--config-file={self.config()}"]
        return Launch(argv, self.base_env(), self.home, self.inbox_path(fmt),
                      gid=grp.getgrnam("mail").gr_gid)

    def login(self, client: Pop3Client) -> None:
        client.ok()  # greeting
        client.ok(f"USER {self.run_as.name}@{MU_DOMAIN}")
        client.ok(f"PASS {MU_PASSWORD}")


# ---------------------------------------------------------------------------------------------
# One session.


@dataclass
class Session:
    proc: subprocess.Popen
    sock: socket.socket
    client: Pop3Client
    t0: float
    maxrss_file: Path | None

    def server_pid(self) -> int:
        """The server's pid: the Popen child itself, or the child of /usr/bin/time."""
        if self.maxrss_file is None:
            return self.proc.pid
        try:
            kids = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
            return int(kids.split()[0])
        except (OSError, ValueError, IndexError):
            return 0

    def finish(self) -> tuple[int, int, float]:
        """Wait for the server to exit; return (exit code, peak RSS in KiB, CPU seconds) with
        0 for what GNU time did not report."""
        code = self.proc.wait()
        self.sock.close()
        if self.maxrss_file is None:
            return code, 0, 0.0
        try:
            maxrss, user, system = self.maxrss_file.read_text().split()[-3:]
            return code, int(maxrss), float(user) + float(system)
        except (OSError, ValueError):
            return code, 0, 0.0


def start(server: Server, launch: Launch, stderr_path: Path, track_rss: bool) -> Session:
    """Start the server on a socketpair. With track_rss it runs under GNU time, whose %M is the
    server's own ru_maxrss: wait4() from this (large) Python process would report at least our
    own RSS, because Linux carries the parent's high-water mark across fork+exec."""
    argv = launch.argv
    maxrss_file = None
    if track_rss:
        maxrss_file = server.work / "maxrss.txt"
        maxrss_file.unlink(missing_ok=True)
        argv = [TIME_BINARY, "-q", "-f", "%M %U %S", "-o", str(maxrss_file)] + argv
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.settimeout(SOCKET_TIMEOUT)
    with open(stderr_path, "ab") as stderr:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdin=theirs, stdout=theirs, stderr=stderr,
                                env=launch.env, cwd=launch.cwd, close_fds=True,
                                **server.run_as.popen_kwargs(launch.gid))
    theirs.close()
    return Session(proc, ours, Pop3Client(ours), t0, maxrss_file)


def abort(session: Session) -> None:
    pid = session.server_pid()
    for victim in {pid, session.proc.pid} - {0}:
        try:
            os.kill(victim, 9)
        except ProcessLookupError:
            pass
    session.finish()


def vm_hwm_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def mailbox_is_empty(fmt: str, path: Path) -> bool:
    if fmt == "mbox":
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return True
        messages = data.split(b"\nFrom ")
        if not data.startswith(b"From "):
            messages = messages[1:]
        return all(PSEUDO_MESSAGE_MARK in m.split(b"\n\n", 1)[0] for m in messages)
    return not any((path / "cur").iterdir()) and not any((path / "new").iterdir())


def measure_startup(server: Server, fmt: str, empty: Path) -> float:
    """Process start to first reply, on an empty mailbox (exec, config, init only)."""
    server.reset_home()
    server.place(fmt, empty)
    launch = server.launch(fmt)
    session = start(server, launch, server.work / "stderr.log", track_rss=False)
    try:
        server.first_reply(session.client)
        elapsed = time.perf_counter() - session.t0
        session.client.send("QUIT")
        session.client.wait_eof()
    except (BenchError, OSError):
        abort(session)
        raise
    session.finish()
    return elapsed


def measure_session(server: Server, fmt: str, corpus: Path, count: int, window: int) -> dict:
    """Download-and-delete: login+STAT+UIDL, RETR all, DELE all + QUIT; `window` commands
    in flight during RETR and DELE (1 = lockstep)."""
    server.reset_home()
    server.place(fmt, corpus / ("mbox" if fmt == "mbox" else "Maildir"))
    server.warm_up(fmt)
    launch = server.launch(fmt)
    session = start(server, launch, server.work / "stderr.log", track_rss=True)
    client = session.client
    try:
        server.login(client)
        stat = client.ok("STAT").split()
        if len(stat) < 3 or int(stat[1]) != count:
            raise BenchError(f"STAT says {stat!r}, expected {count} messages")
        if client.uidl_count() != count:
            raise BenchError("UIDL listing has the wrong length")
        t_open = time.perf_counter()

        octets = client.retr_all(count, window)
        t_retr = time.perf_counter()

        hwm = vm_hwm_kib(session.server_pid())
        t_dele = time.perf_counter()
        client.dele_all(count, window)
        client.ok("QUIT")
        client.wait_eof()
    except (BenchError, OSError):
        abort(session)
        raise
    code, maxrss, cpu = session.finish()
    t_done = time.perf_counter()
    return {
        "open_s": t_open - session.t0,
        "retr_s": t_retr - t_open,
        "retr_octets": octets,
        "retr_mb_s": octets / 1e6 / (t_retr - t_open),
        "dele_quit_s": t_done - t_dele,
        "vmhwm_before_quit_kib": hwm,
        "maxrss_kib": maxrss,
        "cpu_s": cpu,
        "exit_code": code,
        "emptied": mailbox_is_empty(fmt, launch.mailbox),
    }


# ---------------------------------------------------------------------------------------------
# Corpus, rounds, report.


def ensure_corpus(work: Path, count: int, seed: int, run_as: RunAs) -> Path:
    corpus = work / f"corpus-{count}-seed{seed}"
    stats_file = corpus / "stats.json"
    if not stats_file.exists():
        if corpus.exists():
            shutil.rmtree(corpus)
        print(f"generating {count} messages in {corpus} ...", flush=True)
        stats = gen_mailbox.write_corpus(corpus, count, seed)
        (corpus / "empty.mbox").write_bytes(b"")
        for sub in ("cur", "new", "tmp"):
            (corpus / "empty.Maildir" / sub).mkdir(parents=True, exist_ok=True)
        run_as.chown_tree(corpus)
        stats_file.write_text(json.dumps(stats))
    return corpus


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


# (key, label, display scale, unit, how ours compares: "cost" ours/other, "rate" other/ours)
METRICS = [
    ("startup_s", "start->greeting (empty box)", 1e3, "ms", "cost"),
    ("open_s", "login+STAT+UIDL", 1e3, "ms", "cost"),
    ("retr_s", "RETR all", 1e3, "ms", "cost"),
    ("retr_mb_s", "RETR throughput", 1.0, "MB/s", "rate"),
    ("retr_octets", "RETR volume (sanity)", 1e-6, "MB", None),
    ("dele_quit_s", "DELE all+QUIT (rewrite)", 1e3, "ms", "cost"),
    ("cpu_s", "server CPU, whole session", 1e3, "ms", "cost"),
    ("maxrss_kib", "peak RSS (GNU time %M)", 1 / 1024, "MiB", "cost"),
]


def ratio(ours: float | None, other: float | None, kind: str | None) -> str:
    if not ours or not other or kind is None:
        return "-"
    value = other / ours if kind == "rate" else ours / other
    return f"{value:.2f}"


def print_table(results: dict, servers: list[str], title: str, metrics=None,
                widths: tuple[int, int] = (14, 30)) -> None:
    """The medians per server and the ratios; imap_bench.py prints its table with this too."""
    metrics = METRICS if metrics is None else metrics
    box_w, label_w = widths
    print()
    print(title)
    head = f"{'mailbox':<{box_w}}{'metric':<{label_w}}" + "".join(f"{s:>12}" for s in servers)
    head += f"{'ours/dovecot':>14}{'ours/mailutils':>16}"
    print()
    print(head)
    print("-" * len(head))
    for config, per_server in results.items():
        for key, label, scale, unit, kind in metrics:
            meds = {s: per_server.get(s, {}).get("median", {}).get(key) for s in servers}
            cells = "".join(f"{meds[s] * scale:>12.1f}" if meds[s] is not None else f"{'-':>12}"
                            for s in servers)
            print(f"{config:<{box_w}}{label + ' [' + unit + ']':<{label_w}}{cells}"
                  f"{ratio(meds.get('ours'), meds.get('dovecot'), kind):>14}"
                  f"{ratio(meds.get('ours'), meds.get('mailutils'), kind):>16}")
        notes = [f"{s}: {per_server[s]['note']}" for s in servers if per_server.get(s, {}).get("note")]
        for note in notes:
            print(f"{'':<{box_w}}! {note}")
        print()
    print("ratios: ours/other for times and RSS, other/ours for MB/s; <= 1.00 means ours is at "
          "least as good. Medians of interleaved rounds on fresh copies.")


def run_config(servers: dict[str, Server], fmt: str, count: int, corpus: Path,
               rounds: int, window: int) -> dict:
    empty = corpus / ("empty.mbox" if fmt == "mbox" else "empty.Maildir")
    samples: dict[str, dict[str, list]] = {name: {} for name in servers}
    failures: dict[str, list[str]] = {name: [] for name in servers}
    for round_no in range(1, rounds + 1):
        for name, server in servers.items():  # interleaved: A B C, A B C, ...
            try:
                samples[name].setdefault("startup_s", []).append(
                    measure_startup(server, fmt, empty))
                result = measure_session(server, fmt, corpus, count, window)
            except (BenchError, OSError, subprocess.CalledProcessError) as err:
                failures[name].append(f"round {round_no}: {err}")
                print(f"  {fmt} {count} round {round_no} {name}: FAILED {err}", flush=True)
                continue
            for key, value in result.items():
                samples[name].setdefault(key, []).append(value)
            print(f"  {fmt} {count} round {round_no} {name}: open {result['open_s']*1e3:.0f} ms, "
                  f"retr {result['retr_mb_s']:.0f} MB/s, dele+quit "
                  f"{result['dele_quit_s']*1e3:.0f} ms, rss {result['maxrss_kib']/1024:.1f} MiB"
                  + ("" if result["emptied"] else ", MAILBOX NOT EMPTIED"), flush=True)
    out = {}
    for name in servers:
        numeric = {k: v for k, v in samples[name].items() if k not in ("emptied", "exit_code")}
        out[name] = {
            "samples": samples[name],
            "median": {k: median(v) for k, v in numeric.items()},
            "min": {k: min(v) for k, v in numeric.items() if v},
            "failures": failures[name],
        }
        notes = []
        if failures[name]:
            notes.append(f"{len(failures[name])} failed round(s): {failures[name][0]}")
        if samples[name].get("emptied") and not all(samples[name]["emptied"]):
            notes.append("mailbox not emptied after DELE all + QUIT")
        if any(samples[name].get("exit_code", [])):
            notes.append(f"exit codes {sorted(set(samples[name]['exit_code']))}")
        out[name]["note"] = "; ".join(notes)
    return out


def machine_info() -> dict:
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
        "python": platform.python_version(),
    }


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="POP3 benchmark: ipop3d vs Dovecot vs Mailutils")
    parser.add_argument("--quick", action="store_true", help="1,000-message mailboxes only")
    parser.add_argument("--counts", default="1000,10000", help="mailbox sizes (comma list)")
    parser.add_argument("--formats", default="mbox,maildir", help="mbox,maildir")
    parser.add_argument("--servers", default=",".join(SERVERS),
                        help="comma list of ours,dovecot,mailutils,dovecot-idx")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--pipeline", type=int, default=1, metavar="N",
                        help="RETR/DELE commands in flight (all three servers advertise "
                             "PIPELINING); default 1 = wait for each reply")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp/pop3-bench"))
    parser.add_argument("--ipop3d", type=Path, default=REPO_ROOT / "target/release/ipop3d")
    parser.add_argument("--results", type=Path, default=BENCH_DIR / "results")
    args = parser.parse_args(argv)
    if args.quick:
        args.counts = "1000"
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    run_as = RunAs.decide()
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    if run_as.is_root_harness:
        os.chown(work, run_as.uid, run_as.gid)
    constructors = {"ours": lambda: Ours(work, run_as, args.ipop3d.resolve()),
                    "dovecot": lambda: Dovecot(work, run_as),
                    "dovecot-idx": lambda: DovecotIndexed(work, run_as),
                    "mailutils": lambda: Mailutils(work, run_as)}
    servers: dict[str, Server] = {}
    skipped: dict[str, str] = {}
    for name in args.servers.split(","):
        if name not in constructors:
            sys.exit(f"unknown server {name!r}: choose from {', '.join(constructors)}")
        server = constructors[name]()
        server.work.mkdir(parents=True, exist_ok=True)
        run_as.chown_tree(server.work)
        why = server.available()
        if why:
            skipped[name] = why
            print(f"skipping {name}: {why}", file=sys.stderr)
        else:
            servers[name] = server
    if not servers:
        return 1

    if args.pipeline < 1:
        sys.exit("--pipeline must be at least 1")
    report = {"machine": machine_info(), "run_as": run_as.name, "rounds": args.rounds,
              "pipeline_window": args.pipeline,
              "versions": {n: s.version() for n, s in servers.items()}, "skipped": skipped,
              "results": {}}
    print(f"servers run as {run_as.name}; versions: {report['versions']}", flush=True)
    for count in (int(c) for c in args.counts.split(",")):
        corpus = ensure_corpus(work, count, args.seed, run_as)
        report.setdefault("corpora", {})[count] = json.loads((corpus / "stats.json").read_text())
        for fmt in args.formats.split(","):
            config = f"{fmt} {count}"
            report["results"][config] = run_config(servers, fmt, count, corpus, args.rounds,
                                                   args.pipeline)
    report["machine"]["loadavg_end"] = os.getloadavg()

    mode = "lockstep" if args.pipeline == 1 else f"pipelined, {args.pipeline} in flight"
    print_table(report["results"], list(servers),
                f"median of {args.rounds} interleaved rounds; RETR/DELE {mode}; load average "
                f"{report['machine']['loadavg_start'][0]:.1f} at start, "
                f"{report['machine']['loadavg_end'][0]:.1f} at end")
    for name, why in skipped.items():
        print(f"skipped {name}: {why}")
    args.results.mkdir(parents=True, exist_ok=True)
    out = args.results / (time.strftime("%Y-%m-%dT%H%M%S") + ".json")
    out.write_text(json.dumps(report, indent=1, default=str))
    print(f"JSON results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
