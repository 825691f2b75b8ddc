//! ENVELOPE (RFC 3501 section 7.4.2): the header fields of a message, raw and unfolded (never
//! RFC 2047-decoded), and RFC 5322 address lists parsed the way UW-IMAP's c-client does
//! (a comment after a bare addr-spec becomes the personal name, a missing host becomes
//! `.MISSING-HOST-NAME.`, groups become start/end markers).
//!
//! Owns address parsing and the ENVELOPE writer; never decodes and never panics on bad input.

use super::header::fields;
use super::write_nstring;

/// Host c-client supplies for an address without one.
pub const MISSING_HOST: &[u8] = b".MISSING-HOST-NAME.";

/// One IMAP address. A group start has `mailbox` = group name and no host; a group end is
/// all `None`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Address {
    pub name: Option<Vec<u8>>,
    pub adl: Option<Vec<u8>>,
    pub mailbox: Option<Vec<u8>>,
    pub host: Option<Vec<u8>>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Envelope {
    pub date: Option<Vec<u8>>,
    pub subject: Option<Vec<u8>>,
    pub from: Vec<Address>,
    pub sender: Vec<Address>,
    pub reply_to: Vec<Address>,
    pub to: Vec<Address>,
    pub cc: Vec<Address>,
    pub bcc: Vec<Address>,
    pub in_reply_to: Option<Vec<u8>>,
    pub message_id: Option<Vec<u8>>,
}

impl Envelope {
    /// Build the envelope from a header block. As in c-client, the first Date, Subject,
    /// In-Reply-To and Message-ID count, while repeated address fields are concatenated.
    pub fn parse(header: &[u8]) -> Envelope {
        let mut env = Envelope::default();
        for f in fields(header) {
            let n = f.name;
            let text = |slot: &mut Option<Vec<u8>>| {
                if slot.is_none() {
                    *slot = Some(envelope_text(f.value));
                }
            };
            let list = |slot: &mut Vec<Address>| slot.extend(parse_address_list(f.value));
            if n.eq_ignore_ascii_case(b"Date") {
                text(&mut env.date);
            } else if n.eq_ignore_ascii_case(b"Subject") {
                text(&mut env.subject);
            } else if n.eq_ignore_ascii_case(b"In-Reply-To") {
                text(&mut env.in_reply_to);
            } else if n.eq_ignore_ascii_case(b"Message-ID") {
                text(&mut env.message_id);
            } else if n.eq_ignore_ascii_case(b"From") {
                list(&mut env.from);
            } else if n.eq_ignore_ascii_case(b"Sender") {
                list(&mut env.sender);
            } else if n.eq_ignore_ascii_case(b"Reply-To") {
                list(&mut env.reply_to);
            } else if n.eq_ignore_ascii_case(b"To") {
                list(&mut env.to);
            } else if n.eq_ignore_ascii_case(b"Cc") {
                list(&mut env.cc);
            } else if n.eq_ignore_ascii_case(b"Bcc") {
                list(&mut env.bcc);
            }
        }
        if env.sender.is_empty() {
            env.sender = env.from.clone();
        }
        if env.reply_to.is_empty() {
            env.reply_to = env.from.clone();
        }
        env
    }

    /// Write `(date subject from sender reply-to to cc bcc in-reply-to message-id)`.
    pub fn write_imap(&self, out: &mut Vec<u8>) {
        out.push(b'(');
        write_nstring(out, self.date.as_deref());
        out.push(b' ');
        write_nstring(out, self.subject.as_deref());
        for list in [
            &self.from,
            &self.sender,
            &self.reply_to,
            &self.to,
            &self.cc,
            &self.bcc,
        ] {
            out.push(b' ');
            write_address_list(out, list);
        }
        out.push(b' ');
        write_nstring(out, self.in_reply_to.as_deref());
        out.push(b' ');
        write_nstring(out, self.message_id.as_deref());
        out.push(b')');
    }
}

/// A text field as c-client keeps it: line breaks of folding removed, tabs made spaces,
/// leading spaces dropped (trailing ones kept).
fn envelope_text(value: &[u8]) -> Vec<u8> {
    let start = value
        .iter()
        .position(|&c| !matches!(c, b' ' | b'\t'))
        .unwrap_or(value.len());
    value[start..]
        .iter()
        .filter(|&&c| c != b'\r' && c != b'\n')
        .map(|&c| if c == b'\t' { b' ' } else { c })
        .collect()
}

fn write_address_list(out: &mut Vec<u8>, list: &[Address]) {
    if list.is_empty() {
        out.extend_from_slice(b"NIL");
        return;
    }
    out.push(b'(');
    for a in list {
        out.push(b'(');
        write_nstring(out, a.name.as_deref());
        out.push(b' ');
        write_nstring(out, a.adl.as_deref());
        out.push(b' ');
        write_nstring(out, a.mailbox.as_deref());
        out.push(b' ');
        write_nstring(out, a.host.as_deref());
        out.push(b')');
    }
    out.push(b')');
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Tok {
    /// An atom, or a quoted string: (raw source text, text with quotes and escapes removed).
    Word(Vec<u8>, Vec<u8>),
    /// A domain literal `[...]`, raw.
    Literal(Vec<u8>),
    Special(u8),
    Comment(Vec<u8>),
}

struct Token {
    tok: Tok,
    space_before: bool,
}

/// Tokenize an address header.
fn tokenize(s: &[u8]) -> Vec<Token> {
    let mut toks = Vec::new();
    let mut i = 0;
    let mut space = false;
    while i < s.len() {
        let c = s[i];
        match c {
            b' ' | b'\t' | b'\r' | b'\n' => {
                space = true;
                i += 1;
                continue;
            }
            b'(' => {
                let (text, end) = comment(s, i);
                toks.push(Token {
                    tok: Tok::Comment(text),
                    space_before: space,
                });
                i = end;
                space = true;
                continue;
            }
            b'"' => {
                let start = i;
                let mut text = Vec::new();
                i += 1;
                while i < s.len() && s[i] != b'"' {
                    if s[i] == b'\\' && i + 1 < s.len() {
                        i += 1;
                    }
                    if s[i] != b'\r' && s[i] != b'\n' {
                        text.push(s[i]);
                    }
                    i += 1;
                }
                i = (i + 1).min(s.len());
                let raw: Vec<u8> = s[start..i]
                    .iter()
                    .copied()
                    .filter(|&c| c != b'\r' && c != b'\n')
                    .collect();
                toks.push(Token {
                    tok: Tok::Word(raw, text),
                    space_before: space,
                });
            }
            b'[' => {
                let end = memchr::memchr(b']', &s[i..]).map_or(s.len(), |e| i + e + 1);
                toks.push(Token {
                    tok: Tok::Literal(s[i..end].to_vec()),
                    space_before: space,
                });
                i = end;
            }
            b'<' | b'>' | b'@' | b',' | b';' | b':' | b'.' | b')' | b'\\' | b']' => {
                toks.push(Token {
                    tok: Tok::Special(c),
                    space_before: space,
                });
                i += 1;
            }
            _ => {
                let start = i;
                while i < s.len() && !b" \t\r\n()<>@,;:.\"[]\\".contains(&s[i]) {
                    i += 1;
                }
                let w = s[start..i].to_vec();
                toks.push(Token {
                    tok: Tok::Word(w.clone(), w),
                    space_before: space,
                });
            }
        }
        space = false;
    }
    toks
}

/// A (possibly nested) comment starting at `s[start] == '('`: (its text, index after it).
fn comment(s: &[u8], start: usize) -> (Vec<u8>, usize) {
    let mut depth = 0usize;
    let mut text = Vec::new();
    let mut i = start;
    while i < s.len() {
        let c = s[i];
        i += 1;
        match c {
            b'(' => {
                depth += 1;
                if depth == 1 {
                    continue;
                }
            }
            b')' => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            b'\\' if i < s.len() => {
                text.push(s[i]);
                i += 1;
                continue;
            }
            b'\r' | b'\n' => continue,
            _ => {}
        }
        text.push(c);
    }
    (text, i)
}

/// Parse an RFC 5322 address list (tolerant of obsolete and broken syntax).
pub fn parse_address_list(value: &[u8]) -> Vec<Address> {
    let toks = tokenize(value);
    let mut out = Vec::new();
    let mut p = Parser {
        toks: &toks,
        pos: 0,
        in_group: false,
    };
    while p.pos < toks.len() {
        p.item(&mut out);
    }
    if p.in_group {
        out.push(Address::default());
    }
    out
}

struct Parser<'a> {
    toks: &'a [Token],
    pos: usize,
    in_group: bool,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<&'a Tok> {
        self.toks.get(self.pos).map(|t| &t.tok)
    }

    /// One mailbox, group start or group end, plus a following separator.
    fn item(&mut self, out: &mut Vec<Address>) {
        let start = self.pos;
        while let Some(t) = self.peek() {
            if matches!(t, Tok::Special(b'<' | b':' | b',' | b';')) {
                break;
            }
            self.pos += 1;
        }
        let words = &self.toks[start..self.pos];
        match self.peek() {
            Some(Tok::Special(b'<')) => {
                self.pos += 1;
                let mut addr = self.angle_addr();
                addr.name = phrase(words);
                out.push(addr);
            }
            Some(Tok::Special(b':')) if !self.in_group => {
                self.pos += 1;
                self.in_group = true;
                out.push(Address {
                    mailbox: Some(phrase(words).unwrap_or_default()),
                    ..Address::default()
                });
                return;
            }
            _ => {
                if let Some(addr) = self.bare_addr_spec(words) {
                    out.push(addr);
                }
            }
        }
        // Skip to and over the separator.
        while let Some(t) = self.peek() {
            self.pos += 1;
            match t {
                Tok::Special(b',') => return,
                Tok::Special(b';') if self.in_group => {
                    self.in_group = false;
                    out.push(Address::default());
                    return;
                }
                _ => {}
            }
        }
    }

    /// After `<`: `[route ":"] addr-spec ">"`.
    fn angle_addr(&mut self) -> Address {
        let start = self.pos;
        let mut route_end = None;
        let mut end = self.toks.len();
        for (i, t) in self.toks.iter().enumerate().skip(start) {
            match t.tok {
                Tok::Special(b':') if route_end.is_none() => route_end = Some(i),
                Tok::Special(b'>') => {
                    end = i;
                    break;
                }
                _ => {}
            }
        }
        self.pos = (end + 1).min(self.toks.len());
        let (adl, spec) = match route_end {
            Some(r) => (Some(concat(&self.toks[start..r])), &self.toks[r + 1..end]),
            None => (None, &self.toks[start..end]),
        };
        let (mailbox, host) = split_addr_spec(spec);
        Address {
            name: None,
            adl: adl.filter(|a| !a.is_empty()),
            mailbox: Some(mailbox),
            host: Some(host),
        }
    }

    /// `addr-spec` with an optional trailing comment that becomes the personal name.
    fn bare_addr_spec(&self, words: &[Token]) -> Option<Address> {
        if words.iter().all(|t| matches!(t.tok, Tok::Comment(_))) {
            return None;
        }
        let (mailbox, host) = split_addr_spec(words);
        let name = words.iter().rev().find_map(|t| match &t.tok {
            Tok::Comment(c) if !c.is_empty() => Some(c.clone()),
            _ => None,
        });
        Some(Address {
            name,
            adl: None,
            mailbox: Some(mailbox),
            host: Some(host),
        })
    }
}

/// Split `local-part "@" domain` tokens; a missing domain gives c-client's missing-host name.
fn split_addr_spec(toks: &[Token]) -> (Vec<u8>, Vec<u8>) {
    match toks.iter().rposition(|t| t.tok == Tok::Special(b'@')) {
        Some(at) => {
            let host = concat(&toks[at + 1..]);
            let host = if host.is_empty() {
                MISSING_HOST.to_vec()
            } else {
                host
            };
            (unquoted(&toks[..at]), host)
        }
        None => (unquoted(toks), MISSING_HOST.to_vec()),
    }
}

/// Tokens' raw text with whitespace removed (local parts, domains, routes).
fn concat(toks: &[Token]) -> Vec<u8> {
    let mut out = Vec::new();
    for t in toks {
        match &t.tok {
            Tok::Word(raw, _) => out.extend_from_slice(raw),
            Tok::Literal(raw) => out.extend_from_slice(raw),
            Tok::Special(c) => out.push(*c),
            Tok::Comment(_) => {}
        }
    }
    out
}

/// A local part as c-client stores it: quotes and quoting backslashes removed.
fn unquoted(toks: &[Token]) -> Vec<u8> {
    let mut out = Vec::new();
    for t in toks {
        match &t.tok {
            Tok::Word(_, text) => out.extend_from_slice(text),
            Tok::Literal(raw) => out.extend_from_slice(raw),
            Tok::Special(c) => out.push(*c),
            Tok::Comment(_) => {}
        }
    }
    out
}

/// A display-name phrase: words unquoted, joined by single spaces where the source had space.
fn phrase(toks: &[Token]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    for t in toks.iter().filter(|t| !matches!(t.tok, Tok::Comment(_))) {
        if t.space_before && !out.is_empty() {
            out.push(b' ');
        }
        match &t.tok {
            Tok::Word(_, text) => out.extend_from_slice(text),
            Tok::Literal(raw) => out.extend_from_slice(raw),
            Tok::Special(c) => out.push(*c),
            Tok::Comment(_) => {}
        }
    }
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_string(header: &[u8]) -> String {
        let mut out = Vec::new();
        Envelope::parse(header).write_imap(&mut out);
        String::from_utf8(out).unwrap()
    }

    fn addr(s: &str) -> String {
        let mut out = Vec::new();
        write_address_list(&mut out, &parse_address_list(s.as_bytes()));
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn parses_common_forms() {
        assert_eq!(
            addr("Alice Example <alice@example.com>"),
            r#"(("Alice Example" NIL "alice" "example.com"))"#
        );
        assert_eq!(
            addr(r#"uwtest@localhost, "Carol C." <carol@example.org>"#),
            r#"((NIL NIL "uwtest" "localhost")("Carol C." NIL "carol" "example.org"))"#
        );
        assert_eq!(
            addr("bob@example.com (Bob Smith)"),
            r#"(("Bob Smith" NIL "bob" "example.com"))"#
        );
        assert_eq!(
            addr("<@a.org,@b.org:joe@c.org>"),
            r#"((NIL "@a.org,@b.org" "joe" "c.org"))"#
        );
        assert_eq!(
            addr("localuser"),
            r#"((NIL NIL "localuser" ".MISSING-HOST-NAME."))"#
        );
        assert_eq!(addr(""), "NIL");
        assert_eq!(
            addr("John Q. Public <jqp@x.org>"),
            r#"(("John Q. Public" NIL "jqp" "x.org"))"#
        );
    }

    #[test]
    fn parses_groups() {
        assert_eq!(
            addr("Friends: a@b.c, Dee <d@e.f>;, z@y.x"),
            r#"((NIL NIL "Friends" NIL)(NIL NIL "a" "b.c")("Dee" NIL "d" "e.f")(NIL NIL NIL NIL)(NIL NIL "z" "y.x"))"#
        );
        assert_eq!(
            addr("undisclosed-recipients:;"),
            r#"((NIL NIL "undisclosed-recipients" NIL)(NIL NIL NIL NIL))"#
        );
    }

    #[test]
    fn defaults_sender_and_reply_to_from_from() {
        let h = b"Date: Mon, 1 Jan 2024 10:00:00 +0000\r\nFrom: Alice Example <alice@example.com>\r\nTo: uwtest@localhost\r\nSubject: First\r\n message\r\nMessage-ID: <msg1@example.com>\r\n\r\n";
        assert_eq!(
            env_string(h),
            r#"("Mon, 1 Jan 2024 10:00:00 +0000" "First message" (("Alice Example" NIL "alice" "example.com")) (("Alice Example" NIL "alice" "example.com")) (("Alice Example" NIL "alice" "example.com")) ((NIL NIL "uwtest" "localhost")) NIL NIL NIL "<msg1@example.com>")"#
        );
        assert_eq!(env_string(b""), "(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)");
        // Repeated address fields add up; the first Subject wins; tabs become spaces.
        assert_eq!(
            env_string(b"To: a@b\r\nSubject:\tone\r\n\ttwo \r\nTo: c@d\r\nSubject: 2nd\r\nSender: s@t\r\n\r\n"),
            r#"(NIL "one two " NIL ((NIL NIL "s" "t")) NIL ((NIL NIL "a" "b")(NIL NIL "c" "d")) NIL NIL NIL NIL)"#
        );
        assert_eq!(
            addr(r#""john \"q\" doe"@example.com"#),
            "((NIL NIL {12}\r\njohn \"q\" doe \"example.com\"))"
        );
    }

    #[test]
    fn eight_bit_names_become_literals() {
        let out = addr("\"Jos\u{e9}\" <j@x.org>");
        assert_eq!(out, "(({5}\r\nJos\u{e9} NIL \"j\" \"x.org\"))");
    }
}

#[cfg(test)]
mod reference_tests {
    use super::*;
    use crate::message::header::split_header;
    use crate::message::tests::fixture_messages;

    #[test]
    fn matches_uw_envelopes_on_reference_mailbox() {
        let expected = [
            r#"("Mon, 1 Jan 2024 10:00:00 +0000" "First message" (("Alice Example" NIL "alice" "example.com")) (("Alice Example" NIL "alice" "example.com")) (("Alice Example" NIL "alice" "example.com")) ((NIL NIL "uwtest" "localhost")) NIL NIL NIL "<msg1@example.com>")"#,
            r#"("Tue, 2 Jan 2024 11:30:00 +0100" "Second message with attachment" (("Bob" NIL "bob" "example.com")) (("Bob" NIL "bob" "example.com")) (("Bob" NIL "bob" "example.com")) ((NIL NIL "uwtest" "localhost")("Carol C." NIL "carol" "example.org")) ((NIL NIL "dave" "example.net")) NIL NIL "<msg2@example.com>")"#,
            r#"("Wed, 3 Jan 2024 09:15:00 -0500" "Third message" ((NIL NIL "carol" "example.org")) ((NIL NIL "carol" "example.org")) ((NIL NIL "carol" "example.org")) ((NIL NIL "uwtest" "localhost")) NIL NIL NIL "<msg3@example.org>")"#,
        ];
        for (msg, want) in fixture_messages().iter().zip(expected) {
            let (h, _) = split_header(msg, 0);
            let mut out = Vec::new();
            Envelope::parse(&msg[h]).write_imap(&mut out);
            assert_eq!(String::from_utf8(out).unwrap(), want);
        }
    }
}
