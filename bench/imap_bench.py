#!/usr/bin/env python3
"""IMAP benchmark: imapd against Dovecot's imap and GNU Mailutils' imap4d on the same mailboxes.

Owns the IMAP measurement. It reuses pop3_bench.py's corpus (gen_mailbox.py), its unprivileged
user, its socketpair launcher and GNU time wrapping; it never asserts on timings and never
touches a real spool: everything lives below --workdir (mailboxes) and --corpus-dir (corpus).

Every server runs pre-authenticated as the unprivileged user, on ONE connection whose fd 0/1
is one end of a socketpair (as inetd or systemd Accept=yes would give it):
  ours       target/release/imapd run as the user (not root => "* PREAUTH" greeting),
             --store mbox|maildir, $MAIL -> mbox copy, $HOME/Maildir.
  dovecot    /usr/lib/dovecot/imap -c <minimal config> started from the shell (standalone =
             PREAUTH), mail_location ...:INDEX=MEMORY (no index files exist or are written).
  mailutils  /usr/sbin/imap4d --preauth (mode "stdio": the user who runs it), uid=<user>
             gid=mail, mailbox-pattern = <home>/INBOX (mbox file or Maildir, auto-detected).

Session per server and round, on a fresh copy: SELECT, FETCH 1:* FLAGS,
FETCH 1:* (ENVELOPE BODYSTRUCTURE), FETCH 1:* BODY.PEEK[], SEARCH TEXT, STORE 1:* +FLAGS
(\\Flagged), STORE every other message +FLAGS.SILENT (\\Deleted) then EXPUNGE, APPEND of 1,000
messages, LOGOUT until the process has exited.
"""

from __future__ import annotations

import argparse
import grp
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pop3_bench as pb
from pop3_bench import BenchError, RunAs

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
SERVERS = ("ours", "dovecot", "mailutils")
SEARCH_WORD = "Nakamura"  # a surname: in the From/To/Cc of some messages, not all
APPEND_COUNT = 1000
STORE_CHUNK = 1000  # sequence numbers per STORE command: keeps lines well under 64 KiB
# A separator line, not a body line that starts with "From " (Dovecot does not escape those in
# APPENDed mail: it writes Content-Length instead).
FROM_LINE = re.compile(rb"From \S+ +(Mon|Tue|Wed|Thu|Fri|Sat|Sun) (Jan|Feb|Mar|Apr|May|Jun|Jul|"
                       rb"Aug|Sep|Oct|Nov|Dec) ")
LITERAL = re.compile(rb"\{(\d+)\+?\}$")


# ---------------------------------------------------------------------------------------------
# A minimal, strict IMAP client: tagged commands, literals counted but not kept.


class ImapClient:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.chunk = bytearray(1 << 18)
        self.chunk_view = memoryview(self.chunk)
        self.tag_no = 0

    def _fill(self) -> None:
        received = self.sock.recv_into(self.chunk)
        if not received:
            raise BenchError("server closed the connection")
        self.buf += self.chunk_view[:received]

    def _line(self) -> bytes:
        scan = 0
        while True:
            end = self.buf.find(b"\r\n", scan)
            if end >= 0:
                line = bytes(self.buf[:end])
                del self.buf[:end + 2]
                return line
            scan = max(0, len(self.buf) - 1)
            self._fill()

    def _skip(self, octets: int) -> None:
        while len(self.buf) < octets:
            self._fill()
        del self.buf[:octets]

    def response(self) -> tuple[bytes, int]:
        """One whole response: its text with literals left out, and the literal octets."""
        parts = []
        literal_octets = 0
        while True:
            line = self._line()
            parts.append(line)
            match = LITERAL.search(line)
            if not match:
                return b"".join(parts), literal_octets
            size = int(match.group(1))
            self._skip(size)
            literal_octets += size

    def next_tag(self) -> str:
        self.tag_no += 1
        return f"T{self.tag_no}"

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def finish(self, tag: str, command: str, on_untagged=None) -> int:
        """Read responses until `tag` completes; OK or BenchError. Returns literal octets."""
        prefix = tag.encode() + b" "
        octets = 0
        while True:
            text, literal_octets = self.response()
            octets += literal_octets
            if text.startswith(prefix):
                if not text[len(prefix):].startswith(b"OK"):
                    raise BenchError(f"{command[:60]!r} -> {text[:200]!r}")
                return octets
            if on_untagged is not None:
                on_untagged(text)

    def command(self, command: str, on_untagged=None) -> int:
        tag = self.next_tag()
        self.send(f"{tag} {command}\r\n".encode("ascii"))
        return self.finish(tag, command, on_untagged)

    def greeting(self) -> bytes:
        text, _ = self.response()
        if not text.startswith(b"* PREAUTH"):
            raise BenchError(f"expected a PREAUTH greeting, got {text[:200]!r}")
        return text

    def append(self, message: bytes) -> None:
        tag = self.next_tag()
        self.send(f"{tag} APPEND INBOX {{{len(message)}}}\r\n".encode("ascii"))
        text, _ = self.response()
        if not text.startswith(b"+"):
            raise BenchError(f"APPEND -> {text[:200]!r}")
        self.send(message + b"\r\n")
        self.finish(tag, "APPEND")

    def wait_eof(self) -> None:
        while self.sock.recv(1 << 16):
            pass


class Counter:
    """Counts untagged responses of one kind (`* n FETCH`, `* n EXISTS`, `* SEARCH ...`) and
    keeps the last one."""

    def __init__(self, kind: bytes) -> None:
        self.kind = b" " + kind
        self.count = 0
        self.last = b""

    def __call__(self, text: bytes) -> None:
        if text.startswith(b"* ") and self.kind in text[:40]:
            self.count += 1
            self.last = text


# ---------------------------------------------------------------------------------------------
# The servers: layouts and environment come from pop3_bench; only the commands differ.


class Ours(pb.Ours):
    def __init__(self, work: Path, run_as: RunAs, binary: Path) -> None:
        super().__init__(work, run_as, binary)
        self.binary = self.work / "imapd"

    def available(self) -> str | None:
        if not self.source_binary.is_file():
            return f"{self.source_binary} not built (cargo build --release -p imapd)"
        self.work.mkdir(parents=True, exist_ok=True)
        shutil.copy2(self.source_binary, self.binary)  # reachable by the unprivileged user
        os.chmod(self.binary, 0o755)
        return None

    def version(self) -> str:
        return super().version().replace("ipop3d", "imapd")


class Dovecot(pb.Dovecot):
    binary = Path("/usr/lib/dovecot/imap")

    def available(self) -> str | None:
        if not self.binary.is_file():
            return f"{self.binary} missing (apt-get install dovecot-imapd)"
        return None

    def config(self, fmt: str) -> Path:
        if fmt == "mbox":
            location = f"mbox:{self.home}/mail:INBOX={self.inbox_path(fmt)}:INDEX=MEMORY"
        else:
            location = f"maildir:{self.inbox_path(fmt)}:INDEX=MEMORY"
        path = self.work / f"dovecot-{fmt}.conf"
        path.write_text(f"mail_location = {location}\nlog_path = {self.work}/dovecot.log\n")
        os.chmod(path, 0o644)
        return path


class Mailutils(pb.Mailutils):
    binary = Path("/usr/sbin/imap4d")

    def available(self) -> str | None:
        if not self.binary.is_file():
            return f"{self.binary} missing (apt-get install mailutils-imap4d)"
        return super().available()  # the setgid(mail) check, as for pop3d

    def version(self) -> str:
        out = subprocess.run([str(self.binary), "--version"], capture_output=True, text=True)
        return out.stdout.splitlines()[0] if out.stdout else "GNU imap4d"

    def imap_config(self, fmt: str) -> Path:
        # A Maildir INBOX needs mailbox-type: imap4d does not detect a directory at the pattern
        # ("File check failed"). Mandatory locking stays off: with it on, imap4d refuses every
        # APPEND to the INBOX it has selected ("NO APPEND [TRYCREATE] failed"); its ordinary
        # dotlock+fcntl locking still runs.
        kind = "" if fmt == "mbox" else " mailbox-type maildir;"
        path = self.work / "imap4d.conf"
        path.write_text(f'mailbox {{ mailbox-pattern "{self.home}/INBOX";{kind} }};\n'
                        "mandatory-locking { enable false; };\n"
                        "logging { syslog false; };\n")
        os.chmod(path, 0o644)
        return path

    def launch(self, fmt: str) -> pb.Launch:
        argv = [str(self.binary), "--preauth", f"--config-file={self.imap_config(fmt)}"]
        return pb.Launch(argv, self.base_env(), self.home, self.inbox_path(fmt),
                         gid=grp.getgrnam("mail").gr_gid)


# ---------------------------------------------------------------------------------------------
# Measurements.


def message_count(fmt: str, path: Path) -> int:
    """Messages in the mailbox on disk, without UW/Dovecot's pseudo-message."""
    if fmt != "mbox":
        return sum(1 for sub in ("cur", "new") for _ in (path / sub).iterdir())
    count = 0
    previous_blank = True
    with open(path, "rb") as mbox:
        head = mbox.read(4096)
        mbox.seek(0)
        for line in mbox:
            if previous_blank and FROM_LINE.match(line):
                count += 1
            previous_blank = line in (b"\n", b"\r\n")
    if pb.PSEUDO_MESSAGE_MARK in head.split(b"\n\n", 1)[0]:
        count -= 1
    return count


def measure_startup(server: pb.Server, fmt: str, empty: Path) -> float:
    """Process start to the PREAUTH greeting, on an empty mailbox."""
    server.reset_home()
    server.place(fmt, empty)
    session = pb.start(server, server.launch(fmt), server.work / "stderr.log", track_rss=False)
    client = ImapClient(session.sock)
    try:
        client.greeting()
        elapsed = time.perf_counter() - session.t0
        client.command("LOGOUT")
        client.wait_eof()
    except (BenchError, OSError):
        pb.abort(session)
        raise
    session.finish()
    return elapsed


def odd_sequence_sets(count: int) -> list[str]:
    odd = list(range(1, count + 1, 2))
    return [",".join(map(str, odd[i:i + STORE_CHUNK])) for i in range(0, len(odd), STORE_CHUNK)]


def measure_session(server: pb.Server, fmt: str, corpus: Path, count: int,
                    appends: list[bytes]) -> dict:
    server.reset_home()
    server.place(fmt, corpus / ("mbox" if fmt == "mbox" else "Maildir"))
    launch = server.launch(fmt)
    session = pb.start(server, launch, server.work / "stderr.log", track_rss=True)
    client = ImapClient(session.sock)
    marks: dict[str, float] = {}
    result: dict = {}

    def mark(name: str) -> None:
        marks[name] = time.perf_counter()

    try:
        client.greeting()
        mark("greeting")
        exists = Counter(b"EXISTS")
        client.command("SELECT INBOX", exists)
        mark("select")
        if exists.last != f"* {count} EXISTS".encode():
            raise BenchError(f"SELECT: {exists.last!r}, expected {count} EXISTS")

        for key, items in (("fetch_flags", "FLAGS"), ("fetch_envelope", "(ENVELOPE BODYSTRUCTURE)"),
                           ("fetch_body", "BODY.PEEK[]")):
            fetched = Counter(b"FETCH")
            octets = client.command(f"FETCH 1:* {items}", fetched)
            mark(key)
            if fetched.count != count:
                raise BenchError(f"FETCH 1:* {items}: {fetched.count} responses, not {count}")
            if key == "fetch_body":
                result["body_octets"] = octets

        search = Counter(b"SEARCH")
        client.command(f'SEARCH TEXT "{SEARCH_WORD}"', search)
        mark("search")
        result["search_hits"] = len(search.last.split()) - 2

        flagged = Counter(b"FETCH")
        client.command("STORE 1:* +FLAGS (\\Flagged)", flagged)
        mark("store_flagged")
        if flagged.count != count:
            raise BenchError(f"STORE 1:* +FLAGS: {flagged.count} FETCH responses, not {count}")

        tags = []
        for sequence in odd_sequence_sets(count):  # pipelined: all chunks, then the replies
            tag = client.next_tag()
            tags.append(tag)
            client.send(f"{tag} STORE {sequence} +FLAGS.SILENT (\\Deleted)\r\n".encode("ascii"))
        for tag in tags:
            client.finish(tag, "STORE +FLAGS.SILENT (\\Deleted)")
        expunged = Counter(b"EXPUNGE")
        client.command("EXPUNGE", expunged)
        mark("expunge_half")
        if expunged.count != (count + 1) // 2:
            raise BenchError(f"EXPUNGE: {expunged.count} EXPUNGE responses, "
                             f"not {(count + 1) // 2}")

        for message in appends:
            client.append(message)
        mark("append")

        result["vmhwm_before_logout_kib"] = pb.vm_hwm_kib(session.server_pid())
        mark("logout_start")
        client.command("LOGOUT")
        client.wait_eof()
    except (BenchError, OSError):
        pb.abort(session)
        raise
    code, maxrss, cpu = session.finish()
    mark("exit")
    order = ["greeting", "select", "fetch_flags", "fetch_envelope", "fetch_body", "search",
             "store_flagged", "expunge_half", "append"]
    result["greeting_s"] = marks["greeting"] - session.t0
    for before, after in zip(order, order[1:]):
        result[f"{after}_s"] = marks[after] - marks[before]
    result["logout_s"] = marks["exit"] - marks["logout_start"]
    result["body_mb_s"] = result["body_octets"] / 1e6 / result["fetch_body_s"]
    result["append_octets"] = sum(len(m) for m in appends)
    result.update(maxrss_kib=maxrss, cpu_s=cpu, exit_code=code)
    result["final_count"] = message_count(fmt, launch.mailbox)
    return result


# ---------------------------------------------------------------------------------------------
# Rounds and report.


def append_messages(corpus_dir: Path, seed: int, run_as: RunAs, count: int) -> list[bytes]:
    """The first `count` messages of the 1,000-message corpus, as an IMAP client sends them
    (CRLF line ends)."""
    corpus = pb.ensure_corpus(corpus_dir, APPEND_COUNT, seed, run_as)
    new = corpus / "Maildir" / "new"
    cur = corpus / "Maildir" / "cur"
    files = sorted(list(cur.iterdir()) + list(new.iterdir()), key=lambda p: p.name)
    return [f.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
            for f in files[:count]]


# (key, label, display scale, unit, "cost" = ours/other, "rate" = other/ours, None = sanity)
METRICS = [
    ("startup_s", "start->greeting (empty)", 1e3, "ms", "cost"),
    ("select_s", "SELECT", 1e3, "ms", "cost"),
    ("fetch_flags_s", "FETCH 1:* FLAGS", 1e3, "ms", "cost"),
    ("fetch_envelope_s", "FETCH ENVELOPE BODYSTRUCT", 1e3, "ms", "cost"),
    ("fetch_body_s", "FETCH 1:* BODY.PEEK[]", 1e3, "ms", "cost"),
    ("body_mb_s", "BODY.PEEK[] throughput", 1.0, "MB/s", "rate"),
    ("body_octets", "BODY[] volume (sanity)", 1e-6, "MB", None),
    ("search_s", f"SEARCH TEXT {SEARCH_WORD}", 1e3, "ms", "cost"),
    ("search_hits", "SEARCH hits (sanity)", 1.0, "#", None),
    ("store_flagged_s", "STORE 1:* +FLAGS \\Flagged", 1e3, "ms", "cost"),
    ("expunge_half_s", "STORE \\Deleted half+EXPUNGE", 1e3, "ms", "cost"),
    ("append_s", "APPEND (--appends) msgs", 1e3, "ms", "cost"),
    ("logout_s", "LOGOUT until exit", 1e3, "ms", "cost"),
    ("final_count", "msgs on disk (sanity)", 1.0, "#", None),
    ("cpu_s", "server CPU, whole session", 1e3, "ms", "cost"),
    ("maxrss_kib", "peak RSS (GNU time %M)", 1 / 1024, "MiB", "cost"),
]


def run_config(servers: dict[str, pb.Server], fmt: str, count: int, corpus: Path, rounds: int,
               appends: list[bytes]) -> dict:
    empty = corpus / ("empty.mbox" if fmt == "mbox" else "empty.Maildir")
    expected_final = count - (count + 1) // 2 + len(appends)
    samples: dict[str, dict[str, list]] = {name: {} for name in servers}
    failures: dict[str, list[str]] = {name: [] for name in servers}
    for round_no in range(1, rounds + 1):
        for name, server in servers.items():  # interleaved: A B C, A B C, ...
            try:
                startup = measure_startup(server, fmt, empty)
                result = measure_session(server, fmt, corpus, count, appends)
            except (BenchError, OSError, subprocess.CalledProcessError) as err:
                failures[name].append(f"round {round_no}: {err}")
                print(f"  {fmt} {count} round {round_no} {name}: FAILED {err}", flush=True)
                continue
            result["startup_s"] = startup
            for key, value in result.items():
                samples[name].setdefault(key, []).append(value)
            print(f"  {fmt} {count} round {round_no} {name}: select {result['select_s']*1e3:.0f}"
                  f" ms, body {result['body_mb_s']:.0f} MB/s, search "
                  f"{result['search_s']*1e3:.0f} ms, expunge {result['expunge_half_s']*1e3:.0f}"
                  f" ms, append {result['append_s']*1e3:.0f} ms, rss "
                  f"{result['maxrss_kib']/1024:.1f} MiB"
                  + ("" if result["final_count"] == expected_final
                     else f", {result['final_count']} MESSAGES ON DISK, not {expected_final}"),
                  flush=True)
    out = {}
    for name in servers:
        numeric = {k: v for k, v in samples[name].items() if k != "exit_code"}
        notes = []
        if failures[name]:
            notes.append(f"{len(failures[name])} failed round(s): {failures[name][0]}")
        if any(v != expected_final for v in samples[name].get("final_count", [])):
            notes.append(f"messages on disk {sorted(set(samples[name]['final_count']))}, "
                         f"expected {expected_final}")
        if any(samples[name].get("exit_code", [])):
            notes.append(f"exit codes {sorted(set(samples[name]['exit_code']))}")
        out[name] = {"samples": samples[name],
                     "median": {k: pb.median(v) for k, v in numeric.items()},
                     "min": {k: min(v) for k, v in numeric.items() if v},
                     "failures": failures[name], "note": "; ".join(notes)}
    return out


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="IMAP benchmark: imapd vs Dovecot vs Mailutils")
    parser.add_argument("--sizes", default="1000,10000,100000", help="mailbox sizes (comma list)")
    parser.add_argument("--formats", default="mbox,maildir", help="mbox,maildir")
    parser.add_argument("--servers", default=",".join(SERVERS),
                        help="comma list of ours,dovecot,mailutils")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp/imap-bench"))
    parser.add_argument("--corpus-dir", type=Path, default=Path("/var/tmp/pop3-bench"),
                        help="where the generated corpora live (shared with pop3_bench.py)")
    parser.add_argument("--appends", type=int, default=APPEND_COUNT, metavar="N",
                        help=f"messages APPENDed per session (default {APPEND_COUNT}; fewer "
                             "keeps 100,000-message mbox runs short when a server re-reads the "
                             "mailbox after every APPEND)")
    parser.add_argument("--imapd", type=Path, default=REPO_ROOT / "target/release/imapd")
    parser.add_argument("--results", type=Path, default=BENCH_DIR / "results")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    run_as = RunAs.decide()
    work = args.workdir.resolve()
    corpus_dir = args.corpus_dir.resolve()
    for directory in (work, corpus_dir):
        directory.mkdir(parents=True, exist_ok=True)
        if run_as.is_root_harness:
            os.chown(directory, run_as.uid, run_as.gid)
    constructors = {"ours": lambda: Ours(work, run_as, args.imapd.resolve()),
                    "dovecot": lambda: Dovecot(work, run_as),
                    "mailutils": lambda: Mailutils(work, run_as)}
    servers: dict[str, pb.Server] = {}
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

    if not 0 <= args.appends <= APPEND_COUNT:
        sys.exit(f"--appends must be 0..{APPEND_COUNT}")
    appends = append_messages(corpus_dir, args.seed, run_as, args.appends)
    report = {"machine": pb.machine_info(), "run_as": run_as.name, "rounds": args.rounds,
              "appends": len(appends),
              "versions": {n: s.version() for n, s in servers.items()}, "skipped": skipped,
              "append_octets": sum(len(m) for m in appends), "results": {}}
    print(f"servers run as {run_as.name}; versions: {report['versions']}", flush=True)
    for count in (int(c) for c in args.sizes.split(",")):
        corpus = pb.ensure_corpus(corpus_dir, count, args.seed, run_as)
        report.setdefault("corpora", {})[count] = json.loads((corpus / "stats.json").read_text())
        for fmt in args.formats.split(","):
            report["results"][f"{fmt} {count}"] = run_config(servers, fmt, count, corpus,
                                                             args.rounds, appends)
    report["machine"]["loadavg_end"] = os.getloadavg()

    pb.print_table(report["results"], list(servers),
                   f"median of {args.rounds} interleaved rounds; {len(appends)} APPENDs; load "
                   f"average {report['machine']['loadavg_start'][0]:.1f} at start, "
                   f"{report['machine']['loadavg_end'][0]:.1f} at end",
                   metrics=METRICS, widths=(16, 36))
    for name, why in skipped.items():
        print(f"skipped {name}: {why}")
    args.results.mkdir(parents=True, exist_ok=True)
    out = args.results / ("imap-" + time.strftime("%Y-%m-%dT%H%M%S") + ".json")
    out.write_text(json.dumps(report, indent=1, default=str))
    print(f"JSON results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
