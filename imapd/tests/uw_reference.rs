//! Replays UW-IMAP's recorded session (tests/fixtures/imap1.txt) against `imapd` on the same
//! mbox fixture and compares the answers response by response, then the spool it leaves.
//!
//! Values that vary per run are normalised (UIDVALIDITY, host names, the spool path). The
//! differences below are deliberate and asserted exactly, so a change in either direction shows:
//! - We run PREAUTH (the test cannot use PAM), so the LOGIN is skipped and capability lists are
//!   ours (no SCAN, MAILBOX-REFERRALS, LOGIN-REFERRALS; plus ID ENABLE MOVE SPECIAL-USE).
//! - NAMESPACE lists only the personal namespace: names outside the mail root are refused.
//! - INBOX is listed with the `/` delimiter (UW says NIL), `LIST "" "mail/%"` does not list
//!   `mail/` itself (UW's quirk), and there is no untagged `* OK [TRYCREATE]` before a
//!   `NO [TRYCREATE]`.
//! - APPEND accepts new keywords (UW refuses `Custom1` with `* NO Unknown flag`) and answers
//!   APPENDUID (UW could not).

mod common;

use common::{fixture, Server, TempDir};

/// One recorded command: what the client sent and what UW answered.
#[derive(Debug, Default)]
struct Exchange {
    tag: String,
    /// Client text pieces: line text, then for each literal (bytes, synchronizing) and the text
    /// that follows it.
    first_line: String,
    literals: Vec<(Vec<u8>, bool, String)>,
    responses: Vec<String>,
}

/// Literal content as the recording shows it: `␍` marks each CR, lines end in LF.
fn literal_bytes(lines: &[&str]) -> Vec<u8> {
    lines
        .iter()
        .flat_map(|l| format!("{}\n", l.replace('␍', "\r")).into_bytes())
        .collect()
}

fn parse_recording(text: &str) -> (String, Vec<Exchange>) {
    let lines: Vec<&str> = text.lines().collect();
    let mut greeting = String::new();
    let mut exchanges: Vec<Exchange> = Vec::new();
    let mut i = 0;
    let mut after_literal = false;
    while i < lines.len() {
        let line = lines[i];
        if let Some(header) = line
            .strip_prefix("S[literal ")
            .or(line.strip_prefix("C[literal "))
        {
            let n: usize = header.split(' ').next().unwrap().parse().unwrap();
            let end = i + 1 + lines[i + 1..].iter().position(|l| *l == "<<<").unwrap();
            let bytes = literal_bytes(&lines[i + 1..end]);
            assert_eq!(bytes.len(), n, "literal at line {}", i + 1);
            let ex = exchanges.last_mut().unwrap();
            if line.starts_with('S') {
                ex.responses
                    .last_mut()
                    .unwrap()
                    .push_str(&String::from_utf8(bytes).unwrap());
            } else {
                let sync = !ex.literal_marker_plus();
                ex.literals.push((bytes, sync, String::new()));
            }
            after_literal = true;
            i = end + 1;
            continue;
        }
        if let Some(c) = line.strip_prefix("C: ") {
            if after_literal {
                let ex = exchanges.last_mut().unwrap();
                ex.literals.last_mut().unwrap().2 = c.to_string();
            } else {
                let tag = c.split(' ').next().unwrap().to_string();
                exchanges.push(Exchange {
                    tag,
                    first_line: c.to_string(),
                    ..Exchange::default()
                });
            }
            after_literal = false;
        } else if let Some(s) = line.strip_prefix("S: ") {
            if s.starts_with("+ ") {
                // A continuation request: the client's literal follows.
            } else if exchanges.is_empty() {
                greeting = s.to_string();
            } else {
                let ex = exchanges.last_mut().unwrap();
                if after_literal {
                    ex.responses
                        .last_mut()
                        .unwrap()
                        .push_str(&format!("{s}\r\n"));
                } else {
                    ex.responses.push(format!("{s}\r\n"));
                }
            }
            after_literal = false;
        }
        i += 1;
    }
    (greeting, exchanges)
}

impl Exchange {
    /// Does the line before the next literal end in `{n+}` (LITERAL+)?
    fn literal_marker_plus(&self) -> bool {
        let before = match self.literals.last() {
            Some(l) => &l.2,
            None => &self.first_line,
        };
        before.ends_with("+}")
    }

    fn run(&self, server: &mut Server) -> Vec<String> {
        server.send(format!("{}\r\n", self.first_line).as_bytes());
        for (bytes, sync, rest) in &self.literals {
            if *sync {
                let go = server.response();
                assert!(
                    go.starts_with("+ "),
                    "{}: expected continuation, got {go:?}",
                    self.tag
                );
            }
            server.send(bytes);
            server.send(format!("{rest}\r\n").as_bytes());
        }
        server.until_tagged(&self.tag)
    }
}

/// Tagged response codes compared; others are extra information we may add (`[CANNOT]`).
const COMPARED_CODES: &[&str] = &[
    "TRYCREATE",
    "READ-WRITE",
    "READ-ONLY",
    "COPYUID",
    "APPENDUID",
];

/// Replace what varies between runs and servers.
fn normalise(response: &str, tag: &str) -> String {
    if let Some(rest) = response.strip_prefix(&format!("{tag} ")) {
        // Tagged texts are free-form (UW's are sometimes odd); the status and code count.
        let status: String = rest.split(' ').next().unwrap_or("").to_string();
        let code = rest
            .split(' ')
            .nth(1)
            .filter(|w| w.starts_with('['))
            .map(|w| w.trim_start_matches('[').trim_end_matches(']'))
            .filter(|c| COMPARED_CODES.contains(c))
            .unwrap_or("");
        return format!("{tag} {status} {code}");
    }
    let mut words: Vec<String> = Vec::new();
    let mut previous = "";
    for word in response.split(' ') {
        let w = if matches!(
            previous,
            "[UIDVALIDITY" | "UIDVALIDITY" | "[COPYUID" | "[APPENDUID"
        ) {
            "N".to_string()
        } else if previous == "BYE" {
            "HOST".to_string()
        } else if previous == "in" && word.starts_with('/') {
            "PATH\r\n".to_string()
        } else {
            word.to_string()
        };
        previous = word;
        words.push(w);
    }
    words.join(" ")
}

/// Our answer where we deliberately differ from UW (see the module documentation).
fn deliberate(tag: &str) -> Option<Vec<&'static str>> {
    Some(match tag {
        "a004" => vec!["* NAMESPACE ((\"\" \"/\")) NIL NIL\r\n", "a004 OK "],
        "a008" => vec!["a008 OK "],
        "a019" => vec!["a019 NO [TRYCREATE"],
        "a022" => vec!["a022 NO [TRYCREATE"],
        "a038" => vec![
            "* FLAGS ($Forwarded Junk Custom1 \\Answered \\Flagged \\Deleted \\Draft \\Seen)\r\n",
            "* OK [PERMANENTFLAGS ($Forwarded Junk Custom1 \\* \\Answered \\Flagged \\Deleted \\Draft \\Seen)] Permanent flags\r\n",
            "* 4 EXISTS\r\n",
            "* 3 RECENT\r\n",
            "a038 OK [APPENDUID",
        ],
        "a049" => vec![
            "* 1 FETCH (UID 1 FLAGS (\\Recent \\Seen))\r\n",
            "* 2 FETCH (UID 2 FLAGS (\\Recent \\Flagged \\Answered $Forwarded Junk))\r\n",
            "* 3 FETCH (UID 4 FLAGS (\\Recent \\Flagged Custom1))\r\n",
            "* 4 FETCH (UID 5 FLAGS (\\Recent))\r\n",
            "a049 OK ",
        ],
        "a039" => vec!["* 5 EXISTS\r\n", "* 4 RECENT\r\n", "a039 OK [APPENDUID"],
        _ => return None,
    })
}

/// LIST responses sorted, without \\Marked / \\UnMarked.
fn list_lines(lines: Vec<String>) -> Vec<String> {
    let mut lines: Vec<String> = lines
        .into_iter()
        .map(|l| l.replace(" \\Marked", "").replace(" \\UnMarked", ""))
        .collect();
    lines.sort();
    lines
}

/// UW's INBOX line in LIST, in our form.
fn inbox_line(line: &str) -> String {
    line.replace(
        "(\\NoInferiors) NIL INBOX",
        "(\\NoInferiors \\Marked) \"/\" INBOX",
    )
}

#[test]
fn uw_imap1_session_replays_identically() {
    let recording = std::fs::read_to_string(fixture("imap1.txt")).unwrap();
    let (_greeting, exchanges) = parse_recording(&recording);
    assert_eq!(exchanges.len(), 51);
    let dir = TempDir::new("imap1");
    let home = dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    for dotfile in [".bashrc", ".bash_logout", ".profile"] {
        std::fs::write(home.join(dotfile), "# shell\n").unwrap();
    }
    std::fs::create_dir(home.join("mail")).unwrap();
    let spool = dir.path().join("spool");
    std::fs::create_dir(&spool).unwrap();
    let inbox = spool.join("uwtest");
    std::fs::copy(fixture("inbox.mbox"), &inbox).unwrap();
    dir.hand_over();
    let mut server = Server::start(&home, Some(&inbox), &["--show-dotfiles"]);
    let greeting = server.response();
    assert!(
        greeting.starts_with("* PREAUTH [CAPABILITY IMAP4REV1 "),
        "{greeting}"
    );
    let mut failures = Vec::new();
    for ex in &exchanges {
        if matches!(ex.tag.as_str(), "a001" | "a002" | "a003") {
            continue; // capabilities and LOGIN: see the module documentation
        }
        let mut got: Vec<String> = ex
            .run(&mut server)
            .iter()
            .map(|r| normalise(r, &ex.tag))
            .collect();
        let mut want: Vec<String> = match deliberate(&ex.tag) {
            Some(lines) => lines.iter().map(|l| normalise(l, &ex.tag)).collect(),
            None => ex
                .responses
                .iter()
                .map(|r| normalise(&inbox_line(r), &ex.tag))
                .collect(),
        };
        if ex.first_line.contains(" LIST ") {
            // Folder order and \Marked are the store's (directory order, atime/mtime).
            got = list_lines(got);
            want = list_lines(want);
        }
        if got != want {
            failures.push(format!(
                "{}:\n  want {want:?}\n  got  {got:?}",
                ex.first_line
            ));
        }
    }
    assert_eq!(server.wait(), 0);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let want = std::fs::read(fixture("mbox-after-imap1.raw")).unwrap();
    let got = std::fs::read(&inbox).unwrap();
    assert_eq!(
        normalise_spool(&String::from_utf8_lossy(&got)),
        with_custom1(normalise_spool(&String::from_utf8_lossy(&want)))
    );
}

/// The spool with what varies blanked: UIDVALIDITY, the user and date of From_ lines written
/// now (UW ran as `uwtest` in 2026, we run as whoever the test can be), and the padding UW keeps
/// after X-Keywords for rewriting in place.
fn normalise_spool(text: &str) -> String {
    text.lines()
        .map(|l| {
            if let Some(rest) = l.strip_prefix("X-IMAPbase: ") {
                let after = rest.split_once(' ').map_or("", |(_, a)| a);
                format!("X-IMAPbase: N {after}")
            } else if l.starts_with("X-Keywords:") {
                l.trim_end().to_string()
            } else if l.starts_with("From ") && l.contains("@vm ") {
                "From USER@vm DATE".to_string()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// UW's spool with our deliberate difference: APPEND kept the new keyword `Custom1`.
fn with_custom1(uw_spool: String) -> String {
    uw_spool
        .replace(
            "X-IMAPbase: N 5 $Forwarded Junk\n",
            "X-IMAPbase: N 5 $Forwarded Junk Custom1\n",
        )
        .replace(
            "X-Status: F\nX-Keywords:\nX-UID: 4",
            "X-Status: F\nX-Keywords: Custom1\nX-UID: 4",
        )
}
