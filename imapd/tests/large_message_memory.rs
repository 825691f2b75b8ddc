//! Bounded memory on a 40 MB message: after APPENDing a multipart message with a big base64
//! attachment, every FETCH item that needs its MIME structure, every section and BINARY item,
//! and SEARCH BODY/TEXT raise the server's peak RSS (VmHWM) by less than 8 MB, and the
//! results are right.

mod common;

use common::{is_root, TempDir};
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

/// The server, with a response reader that keeps only the start of each literal.
struct Imapd {
    child: Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
}

impl Imapd {
    fn start(home: &std::path::Path, mail: &std::path::Path) -> Imapd {
        let binary = env!("CARGO_BIN_EXE_imapd");
        let mut cmd = if is_root() {
            let mut c = Command::new("setpriv");
            c.args([
                "--reuid=nobody",
                "--regid=nogroup",
                "--clear-groups",
                binary,
            ]);
            c
        } else {
            Command::new(binary)
        };
        cmd.env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", home)
            .env("TMPDIR", home)
            .env("MAIL", mail)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().expect("start imapd");
        let input = child.stdin.take().unwrap();
        let output = BufReader::new(child.stdout.take().unwrap());
        Imapd {
            child,
            input,
            output,
        }
    }

    /// Peak resident memory of the server, in kB.
    fn vm_hwm_kb(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// Responses up to the tagged one; literals cut to their first 200 octets.
    fn command(&mut self, tag: &str, command: &[u8]) -> String {
        self.input.write_all(tag.as_bytes()).unwrap();
        self.input.write_all(b" ").unwrap();
        self.input.write_all(command).unwrap();
        self.input.write_all(b"\r\n").unwrap();
        self.input.flush().unwrap();
        let mut text = String::new();
        loop {
            let mut line = Vec::new();
            self.output.read_until(b'\n', &mut line).unwrap();
            assert!(!line.is_empty(), "EOF; got {text}");
            text.push_str(&String::from_utf8_lossy(&line));
            if let Some(n) = literal_length(&line) {
                let mut literal = Vec::new();
                (&mut self.output)
                    .take(n)
                    .read_to_end(&mut literal)
                    .unwrap();
                assert_eq!(literal.len() as u64, n);
                text.push_str(&String::from_utf8_lossy(&literal[..literal.len().min(200)]));
                continue;
            }
            if line.starts_with(format!("{tag} ").as_bytes()) {
                return text;
            }
        }
    }
}

fn literal_length(line: &[u8]) -> Option<u64> {
    let body = line.strip_suffix(b"\r\n")?.strip_suffix(b"}")?;
    let open = body.iter().rposition(|&c| c == b'{')?;
    std::str::from_utf8(&body[open + 1..]).ok()?.parse().ok()
}

/// The attachment's raw bytes: 30 MB of a repeating pattern with NULs.
fn attachment() -> Vec<u8> {
    (0..30_000_000u32).map(|i| (i % 251) as u8).collect()
}

fn base64_lines(raw: &[u8]) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::with_capacity(raw.len() / 3 * 4 + raw.len() / 57 * 2 + 8);
    for line in raw.chunks(57) {
        for group in line.chunks(3) {
            let b = [
                group[0],
                *group.get(1).unwrap_or(&0),
                *group.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for k in 0..4 {
                if k <= group.len() {
                    out.push(ALPHABET[(n >> (18 - 6 * k) & 63) as usize]);
                } else {
                    out.push(b'=');
                }
            }
        }
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn big_message(raw: &[u8]) -> Vec<u8> {
    let mut msg = b"From: big@example.com\r\nTo: you@example.net\r\nSubject: big\r\n\
        Message-ID: <big@test>\r\nMIME-Version: 1.0\r\n\
        Content-Type: multipart/mixed; boundary=\"=_sep\"\r\n\r\n\
        preamble\r\n--=_sep\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n\
        Hello, see the attachment.\r\n--=_sep\r\n\
        Content-Type: application/octet-stream; name=big.bin\r\n\
        Content-Transfer-Encoding: base64\r\n\r\n"
        .to_vec();
    msg.extend(base64_lines(raw));
    msg.extend_from_slice(
        b"--=_sep\r\nContent-Type: text/plain; charset=utf-8\r\n\
        Content-Transfer-Encoding: quoted-printable\r\n\r\n\
        The last part says K=C3=A4sefondue.\r\n--=_sep--\r\n",
    );
    msg
}

#[test]
fn fetch_and_search_of_a_40_mb_message_stay_within_8_mb() {
    let dir = TempDir::new("large");
    let home = dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    let inbox = dir.path().join("inbox");
    std::fs::write(&inbox, b"").unwrap();
    dir.hand_over();
    let mut s = Imapd::start(&home, &inbox);
    assert!(s.command("a0", b"SELECT INBOX").contains("a0 OK"));
    let raw = attachment();
    let msg = big_message(&raw);
    // The attachment's body ends before the CRLF that precedes the next delimiter.
    let encoded = base64_lines(&raw).len() - 2;
    let header_len = msg.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let mut append = format!("APPEND INBOX {{{}+}}\r\n", msg.len()).into_bytes();
    append.extend_from_slice(&msg);
    drop(msg);
    let got = s.command("a1", &append);
    assert!(got.contains("a1 OK [APPENDUID"), "{got}");
    drop(append);
    assert!(s.command("a2", b"NOOP").contains("a2 OK"));
    let baseline = s.vm_hwm_kb();
    let bound = baseline + 8 * 1024;
    let last = encoded - 8;
    let checks: Vec<(String, String)> = vec![
        ("ENVELOPE".into(), "ENVELOPE (NIL \"big\"".into()),
        ("BODYSTRUCTURE".into(), format!("\"BASE64\" {encoded} NIL")),
        (
            "BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]".into(),
            "{26}\r\nMessage-ID: <big@test>\r\n\r\n".into(),
        ),
        (
            "BODY.PEEK[TEXT]<0.12>".into(),
            "BODY[TEXT]<0> {12}\r\npreamble\r\n--".into(),
        ),
        (
            "RFC822.HEADER".into(),
            format!("RFC822.HEADER {{{header_len}}}\r\nFrom: big"),
        ),
        (
            format!("BODY.PEEK[2]<{last}.100>"),
            format!("BODY[2]<{last}> {{8}}\r\n"),
        ),
        (
            "BODY.PEEK[2.MIME]".into(),
            "Content-Transfer-Encoding: base64\r\n\r\n)".into(),
        ),
        ("BINARY.SIZE[2]".into(), "BINARY.SIZE[2] 30000000".into()),
        (
            "BINARY.PEEK[2]<29999990.100>".into(),
            "BINARY[2]<29999990> ".into(),
        ),
        (
            "BINARY.PEEK[3]".into(),
            "BINARY[3] {31}\r\nThe last part says Käsefondue.)".into(),
        ),
    ];
    for (i, (item, want)) in checks.iter().enumerate() {
        let tag = format!("f{i}");
        let got = s.command(&tag, format!("FETCH 1 ({item})").as_bytes());
        assert!(got.contains(want.as_str()), "FETCH {item}: {got:?}");
        assert!(got.contains(&format!("{tag} OK")), "FETCH {item}: {got:?}");
        let hwm = s.vm_hwm_kb();
        assert!(
            hwm < bound,
            "FETCH {item}: VmHWM {hwm} kB, baseline {baseline} kB"
        );
    }
    let got = s.command("b1", b"FETCH 1 (BINARY.PEEK[2]<1004.251>)");
    let start = got.find("~{251}\r\n").expect("a literal8") + 8;
    assert_eq!(got.as_bytes()[start..start + 5], raw[1004..1009]);
    for (tag, search, want) in [
        ("s1", "BODY {11+}\r\nkäsefondue", "* SEARCH 1\r\n"),
        ("s2", "TEXT \"see the attachment\"", "* SEARCH 1\r\n"),
        ("s3", "BODY nowhere-to-be-found", "* SEARCH\r\n"),
        ("s4", "TEXT AAECAwQFBgcICQ", "* SEARCH\r\n"),
    ] {
        let command = format!("SEARCH CHARSET UTF-8 {search}");
        let got = s.command(tag, command.as_bytes());
        assert!(got.starts_with(want), "{search}: {got:?}");
        let hwm = s.vm_hwm_kb();
        assert!(
            hwm < bound,
            "{search}: VmHWM {hwm} kB, baseline {baseline} kB"
        );
    }
    eprintln!(
        "peak RSS growth over the baseline: {} kB",
        s.vm_hwm_kb() - baseline
    );
    drop(raw);
    s.command("z", b"LOGOUT");
    let _ = s.child.wait();
}
