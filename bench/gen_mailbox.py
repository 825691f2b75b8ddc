#!/usr/bin/env python3
"""Deterministic benchmark mailboxes: the same N messages as an mbox file and as a Maildir.

Owns the synthetic corpus used by pop3_bench.py. It writes only below the output directory it
is given and never touches a real spool or home directory.

The messages look like what a real MUA and a chain of MTAs produce: 2-5 Received headers,
Message-ID, Date, From/To/Cc, MIME (text/plain, multipart/alternative with an HTML part, and
about 3% multipart/mixed with a base64 attachment of 100 KB to 1 MB). The median message is
about 4 KB. About 2% of the bodies contain lines starting with "From ", which the mbox copy
escapes as ">From " (as Postfix local(8) and procmail do); the Maildir copy keeps them as is.

Usage: gen_mailbox.py --count 1000 --out DIR [--seed 1]
  -> DIR/mbox (one mbox file) and DIR/Maildir/{cur,new,tmp} (Dovecot-style ,S=,W= names)
"""

from __future__ import annotations

import argparse
import base64
import email.utils
import os
import random
import sys
import time
from pathlib import Path

BASE_TIME = 1_767_225_600  # 2026-01-01 00:00:00 UTC: every date derives from it and the seed.
ATTACHMENT_SHARE = 0.03
FROM_LINE_SHARE = 0.02
MAILDIR_NEW_SHARE = 0.10  # the most recent 10% are still in new/ (never seen by a MUA)
HOSTNAME = "bench.example"

FIRST_NAMES = ["Alice", "Bob", "Carol", "Dave", "Erin", "Frank", "Grace", "Heidi", "Ivan",
               "Judy", "Mallory", "Niaj", "Olivia", "Peggy", "Rupert", "Sybil", "Trent",
               "Victor", "Walter", "Zoë"]
LAST_NAMES = ["Anders", "Brown", "Chen", "Dubois", "Evans", "Fischer", "García", "Hansen",
              "Ito", "Jones", "Kowalski", "Larsen", "Müller", "Nakamura", "O'Brien", "Petrov"]
DOMAINS = ["example.com", "example.org", "example.net", "mail.example.edu", "lists.example.io"]
WORDS = ("the of and to in is that for it as was with be by on not he this are or his from at "
         "which but have an they you were their one all we can her has there been if more when "
         "will would who so no mailbox server message delivery queue spool lock index folder "
         "meeting report quarterly budget attached please review thanks regards tomorrow "
         "deadline project release patch kernel network storage backup invoice schedule").split()
SUBJECT_WORDS = ["Re:", "Fwd:", "Meeting", "notes", "Quarterly", "report", "Invoice", "patch",
                 "review", "lunch", "Release", "plan", "question", "about", "the", "backup",
                 "schedule", "[list]", "update", "draft"]
RELAYS = ["mx1.example.net", "mx2.example.org", "relay.example.com", "smtp.example.edu",
          "filter.example.io", "gw.example.net"]


def person(rng: random.Random) -> tuple[str, str]:
    first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
    local = f"{first}.{last}".lower().encode("ascii", "ignore").decode().replace("'", "")
    return f"{first} {last}", f"{local}@{rng.choice(DOMAINS)}"


def address(rng: random.Random) -> str:
    name, addr = person(rng)
    if name.isascii():
        return email.utils.formataddr((name, addr))
    return email.utils.formataddr((name, addr), charset="utf-8")


def rfc2822_date(when: int) -> str:
    return email.utils.formatdate(when, localtime=False)


def received_chain(rng: random.Random, when: int, envelope_to: str) -> list[str]:
    hops = rng.randint(2, 5)
    lines = []
    for hop in range(hops):
        by = HOSTNAME if hop == 0 else rng.choice(RELAYS)
        frm = rng.choice(RELAYS)
        ip = f"192.0.2.{rng.randint(1, 254)}"
        queue_id = "".join(rng.choice("0123456789ABCDEF") for _ in range(10))
        stamp = rfc2822_date(when - hop * rng.randint(1, 30))
        lines.append(f"Received: from {frm} ({frm} [{ip}])\n"
                     f"\tby {by} (Postfix) with ESMTPS id {queue_id}\n"
                     f"\tfor <{envelope_to}>; {stamp}")
    return lines


def paragraph(rng: random.Random, words: int) -> str:
    out, line = [], []
    for _ in range(words):
        line.append(rng.choice(WORDS))
        if sum(len(w) + 1 for w in line) > 66:
            out.append(" ".join(line))
            line = []
    if line:
        out.append(" ".join(line))
    if out:
        if out[0].startswith("from "):  # only the deliberate ones may start with "From "
            out[0] = "and " + out[0]
        out[0] = out[0][:1].upper() + out[0][1:]
    return "\n".join(out) + "."


def body_text(rng: random.Random, target_bytes: int, with_from_line: bool) -> str:
    paras = []
    size = 0
    while size < target_bytes:
        p = paragraph(rng, rng.randint(20, 90))
        if rng.random() < 0.15:
            p = "\n".join("> " + line for line in p.splitlines())
        paras.append(p)
        size += len(p) + 2
    if with_from_line:
        at = rng.randrange(len(paras) + 1)
        paras.insert(at, "From the desk of the release manager: the freeze starts Monday.")
    paras.append("-- \n" + rng.choice(FIRST_NAMES))
    return "\n\n".join(paras) + "\n"


def html_of(text: str) -> str:
    escaped = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    paras = "".join(f"<p>{p.replace(chr(10), '<br>')}</p>\n" for p in escaped.split("\n\n"))
    return f"<html><head><meta charset=\"utf-8\"></head><body>\n{paras}</body></html>\n"


def wrap_base64(data: bytes) -> str:
    encoded = base64.b64encode(data).decode("ascii")
    return "\n".join(encoded[i:i + 76] for i in range(0, len(encoded), 76)) + "\n"


def make_message(rng: random.Random, index: int) -> bytes:
    """One RFC 5322 message with LF line endings (as stored in mbox and Maildir)."""
    when = BASE_TIME + index * 600 + rng.randint(0, 599)
    from_hdr = address(rng)
    to_name, to_addr = "Pop Bench", "popbench@" + HOSTNAME
    headers = received_chain(rng, when, to_addr)
    msgid = f"<{when}.{index}.{rng.getrandbits(48):012x}@{rng.choice(DOMAINS)}>"
    headers += [
        f"Return-Path: <{email.utils.parseaddr(from_hdr)[1]}>",
        f"Message-ID: {msgid}",
        f"Date: {rfc2822_date(when)}",
        f"From: {from_hdr}",
        f"To: {email.utils.formataddr((to_name, to_addr))}",
    ]
    if rng.random() < 0.4:
        headers.append("Cc: " + ", ".join(address(rng) for _ in range(rng.randint(1, 4))))
    subject = " ".join(rng.choice(SUBJECT_WORDS) for _ in range(rng.randint(2, 7)))
    headers.append(f"Subject: {subject} #{index + 1}")
    if index > 0 and rng.random() < 0.3:
        ref = f"<{when - 3600}.{index - 1}.thread@{rng.choice(DOMAINS)}>"
        headers += [f"In-Reply-To: {ref}", f"References: {ref}"]
    headers += ["User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:115.0) Thunderbird/115.5.0",
                "MIME-Version: 1.0",
                "Content-Language: en-US"]

    # Lognormal text size: median ~2 KB of text, giving ~4 KB messages with the headers.
    text_bytes = int(min(max(rng.lognormvariate(7.5, 0.8), 80), 60_000))
    text = body_text(rng, text_bytes, rng.random() < FROM_LINE_SHARE)
    boundary = f"------------{rng.getrandbits(96):024x}"
    if rng.random() < ATTACHMENT_SHARE:
        size = rng.randint(100 * 1024, 1024 * 1024)
        name = f"report-{index + 1}.pdf"
        headers.append(f"Content-Type: multipart/mixed; boundary=\"{boundary}\"")
        body = (f"This is a multi-part message in MIME format.\n--{boundary}\n"
                "Content-Type: text/plain; charset=UTF-8; format=flowed\n"
                "Content-Transfer-Encoding: 8bit\n\n"
                f"{text}\n--{boundary}\n"
                f"Content-Type: application/pdf; name=\"{name}\"\n"
                f"Content-Disposition: attachment; filename=\"{name}\"\n"
                "Content-Transfer-Encoding: base64\n\n"
                f"{wrap_base64(rng.randbytes(size))}\n--{boundary}--\n")
    elif rng.random() < 0.35:
        headers.append(f"Content-Type: multipart/alternative; boundary=\"{boundary}\"")
        body = (f"This is a multi-part message in MIME format.\n--{boundary}\n"
                "Content-Type: text/plain; charset=UTF-8; format=flowed\n"
                "Content-Transfer-Encoding: 8bit\n\n"
                f"{text}\n--{boundary}\n"
                "Content-Type: text/html; charset=UTF-8\n"
                "Content-Transfer-Encoding: 8bit\n\n"
                f"{html_of(text)}\n--{boundary}--\n")
    else:
        headers += ["Content-Type: text/plain; charset=UTF-8; format=flowed",
                    "Content-Transfer-Encoding: 8bit"]
        body = text
    return ("\n".join(headers) + "\n\n" + body).encode("utf-8")


def generate(count: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [make_message(rng, i) for i in range(count)]


def envelope_sender(message: bytes) -> str:
    for line in message.split(b"\n"):
        if line.startswith(b"Return-Path: <"):
            return line[len(b"Return-Path: <"):].rstrip(b">").decode("ascii", "replace")
        if not line:
            break
    return "MAILER-DAEMON"


def date_of(message: bytes) -> int:
    for line in message.split(b"\n"):
        if line.startswith(b"Date: "):
            parsed = email.utils.parsedate_tz(line[6:].decode("ascii", "replace"))
            if parsed:
                return int(email.utils.mktime_tz(parsed))
        if not line:
            break
    return BASE_TIME


def escape_from_lines(message: bytes) -> bytes:
    """mboxo escaping: body lines beginning with "From " get a leading '>'."""
    if b"\nFrom " not in message:
        return message
    return message.replace(b"\nFrom ", b"\n>From ")


def write_mbox(path: Path, messages: list[bytes]) -> None:
    with open(path, "wb") as out:
        for message in messages:
            stamp = time.strftime("%a %b %e %H:%M:%S %Y", time.gmtime(date_of(message)))
            out.write(f"From {envelope_sender(message)} {stamp}\n".encode("ascii"))
            out.write(escape_from_lines(message))
            if not message.endswith(b"\n"):
                out.write(b"\n")
            out.write(b"\n")


def maildir_name(index: int, message: bytes) -> str:
    """Dovecot-style unique name with ,S=<size> and ,W=<size with CRLF line endings>."""
    when = date_of(message)
    virtual = len(message) + message.count(b"\n")
    return f"{when}.M{index * 7 % 1_000_000}P{1000 + index}.{HOSTNAME},S={len(message)},W={virtual}"


def write_maildir(root: Path, messages: list[bytes]) -> None:
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    first_new = len(messages) - int(len(messages) * MAILDIR_NEW_SHARE)
    for index, message in enumerate(messages):
        name = maildir_name(index, message)
        target = root / "new" / name if index >= first_new else root / "cur" / (name + ":2,S")
        with open(target, "wb") as out:
            out.write(message)
        os.utime(target, (date_of(message), date_of(message)))


def write_corpus(out: Path, count: int, seed: int) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    messages = generate(count, seed)
    write_mbox(out / "mbox", messages)
    write_maildir(out / "Maildir", messages)
    sizes = sorted(len(m) for m in messages)
    return {
        "count": count,
        "seed": seed,
        "total_bytes": sum(sizes),
        "median_bytes": sizes[len(sizes) // 2],
        "attachments": sum(1 for m in messages if b"Content-Disposition: attachment" in m),
        "from_lines": sum(1 for m in messages if b"\nFrom " in m),
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    stats = write_corpus(args.out, args.count, args.seed)
    print(" ".join(f"{k}={v}" for k, v in stats.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
