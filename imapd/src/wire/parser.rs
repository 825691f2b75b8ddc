//! Tokenizer for IMAP command arguments (RFC 3501 section 9), over a [`RawCommand`].
//!
//! Owns the lexical grammar: atoms, numbers, quoted strings, literals, astring/nstring, sequence
//! sets, dates, date-times, flags and mailbox names (modified UTF-7 via [`super::mutf7`]). It is a
//! cursor that the recursive-descent command parser ([`crate::protocol::command`]) drives; it
//! counts tokens against [`ParseLimits::max_tokens`] and offers a depth guard for nesting.
//!
//! It never interprets a command and never performs I/O. Every failure is a [`ParseError`] whose
//! message is fit for `tag BAD <msg>`.

use super::mutf7;
use super::reader::{Literal, LiteralData, Part, RawCommand};

/// Why a command cannot be carried out as written: a syntax error (`tag BAD <msg>`), or, when
/// `refused`, well-formed syntax naming something unusable (`tag NO <msg>`), such as a mailbox
/// name that is not valid modified UTF-7.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub msg: String,
    pub refused: bool,
}

impl ParseError {
    pub fn new(msg: impl Into<String>) -> Self {
        ParseError {
            msg: msg.into(),
            refused: false,
        }
    }
    /// Syntactically valid but unusable: answered `NO`.
    pub fn refused(msg: impl Into<String>) -> Self {
        ParseError {
            msg: msg.into(),
            refused: true,
        }
    }
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.msg)
    }
}

pub type PResult<T> = Result<T, ParseError>;

/// Bounds on argument structure.
#[derive(Debug, Clone, Copy)]
pub struct ParseLimits {
    /// Nesting of parentheses (search keys, lists).
    pub max_depth: usize,
    /// Tokens in one command.
    pub max_tokens: usize,
}

impl Default for ParseLimits {
    fn default() -> Self {
        ParseLimits {
            max_depth: 100,
            max_tokens: 10_000,
        }
    }
}

/// One segment of the command: text, or a literal not yet taken.
enum Segment {
    Text(Vec<u8>),
    Literal(Option<Literal>),
}

/// A cursor over the arguments of one command.
pub struct Cursor {
    segments: Vec<Segment>,
    seg: usize,
    pos: usize,
    tokens: usize,
    depth: usize,
    limits: ParseLimits,
}

/// `atom-specials` (RFC 3501): `( ) { SP CTL % * " \ ]` and 8-bit.
pub fn is_atom_char(c: u8) -> bool {
    c > b' ' && c < 0x7f && !matches!(c, b'(' | b')' | b'{' | b'%' | b'*' | b'"' | b'\\' | b']')
}

/// `ASTRING-CHAR`: an atom char or `]`.
pub fn is_astring_char(c: u8) -> bool {
    is_atom_char(c) || c == b']'
}

/// `list-char`: an atom char, `%`, `*` or `]`.
pub fn is_list_char(c: u8) -> bool {
    is_astring_char(c) || c == b'%' || c == b'*'
}

/// A sequence number: a value, or `*` (the largest in use).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqNum {
    Value(u32),
    Last,
}

impl SeqNum {
    fn resolve(self, largest: u32) -> u32 {
        match self {
            SeqNum::Value(v) => v,
            SeqNum::Last => largest,
        }
    }
}

/// A sequence set (`1,3:5,7:*`), as sent. `0` is never present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SequenceSet(pub Vec<(SeqNum, SeqNum)>);

impl SequenceSet {
    /// Inclusive ranges with `*` resolved to `largest`, each ordered low..=high, sorted, merged.
    /// Ranges may reach past `largest` (`5:*` with largest 3 is `3:5`, which still includes 3 as
    /// RFC 3501 requires); the caller intersects with what exists. Empty when `largest` is 0.
    pub fn ranges(&self, largest: u32) -> Vec<(u32, u32)> {
        if largest == 0 {
            return Vec::new();
        }
        let mut v: Vec<(u32, u32)> = self
            .0
            .iter()
            .map(|&(a, b)| {
                let (a, b) = (a.resolve(largest), b.resolve(largest));
                (a.min(b), a.max(b))
            })
            .collect();
        v.sort_unstable();
        let mut merged: Vec<(u32, u32)> = Vec::with_capacity(v.len());
        for (lo, hi) in v {
            match merged.last_mut() {
                Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
                _ => merged.push((lo, hi)),
            }
        }
        merged
    }

    /// Is `n` in the set, with `*` meaning `largest`?
    pub fn contains(&self, n: u32, largest: u32) -> bool {
        self.0.iter().any(|&(a, b)| {
            let (a, b) = (a.resolve(largest), b.resolve(largest));
            a.min(b) <= n && n <= a.max(b)
        })
    }
}

/// A calendar date (`date-text`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Date {
    pub year: u16,
    pub month: u8,
    pub day: u8,
}

impl Date {
    /// Days since 1970-01-01 (proleptic Gregorian).
    pub fn days_since_epoch(&self) -> i64 {
        let (y, m, d) = (
            i64::from(self.year),
            i64::from(self.month),
            i64::from(self.day),
        );
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let mp = (m + 9) % 12;
        let doy = (153 * mp + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
    }
}

/// A `date-time` with its zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateTime {
    pub date: Date,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
    /// Offset east of UTC in minutes (`+0100` = 60).
    pub zone_minutes: i16,
}

impl DateTime {
    /// Seconds since the Unix epoch (UTC).
    pub fn unix_seconds(&self) -> i64 {
        self.date.days_since_epoch() * 86_400
            + i64::from(self.hour) * 3600
            + i64::from(self.minute) * 60
            + i64::from(self.second)
            - i64::from(self.zone_minutes) * 60
    }
}

/// A message flag as sent by a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Flag {
    Answered,
    Flagged,
    Deleted,
    Seen,
    Draft,
    /// `\Recent`: parsed so the session can answer it precisely; STORE and APPEND must refuse it.
    Recent,
    /// Another `\Word` (flag-extension).
    Extension(String),
    /// A keyword atom (`$Forwarded`, `Junk`).
    Keyword(String),
}

const MONTHS: [&[u8; 3]; 12] = [
    b"jan", b"feb", b"mar", b"apr", b"may", b"jun", b"jul", b"aug", b"sep", b"oct", b"nov", b"dec",
];

fn days_in_month(year: u16, month: u8) -> u8 {
    match month {
        2 if (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400) => {
            29
        }
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

impl Cursor {
    pub fn new(raw: RawCommand, limits: ParseLimits) -> Self {
        let segments = raw
            .parts
            .into_iter()
            .map(|p| match p {
                Part::Text(t) => Segment::Text(t),
                Part::Literal(l) => Segment::Literal(Some(l)),
            })
            .collect();
        Cursor {
            segments,
            seg: 0,
            pos: 0,
            tokens: 0,
            depth: 0,
            limits,
        }
    }

    /// A cursor over one line of text (tests, and commands known to carry no literal).
    pub fn from_text(text: &[u8]) -> Self {
        Cursor::new(
            RawCommand {
                tag: String::new(),
                parts: vec![Part::Text(text.to_vec())],
            },
            ParseLimits::default(),
        )
    }

    fn text(&self) -> &[u8] {
        match self.segments.get(self.seg) {
            Some(Segment::Text(t)) => &t[self.pos.min(t.len())..],
            _ => &[],
        }
    }

    /// The next byte of text, `None` at a literal or the end.
    pub fn peek(&self) -> Option<u8> {
        self.text().first().copied()
    }

    /// The rest of the current text segment, for lookahead.
    pub fn lookahead(&self) -> &[u8] {
        self.text()
    }

    /// Is the cursor at a literal (the end of a text segment followed by one)?
    pub fn at_literal(&self) -> bool {
        self.text().is_empty()
            && matches!(self.segments.get(self.seg + 1), Some(Segment::Literal(_)))
    }

    /// Is the whole command consumed?
    pub fn at_end(&self) -> bool {
        self.text().is_empty() && self.seg + 1 >= self.segments.len()
    }

    fn advance(&mut self, n: usize) {
        self.pos += n;
    }

    /// Count one token against the limit.
    fn token(&mut self) -> PResult<()> {
        self.tokens += 1;
        if self.tokens > self.limits.max_tokens {
            return Err(ParseError::new("Too many arguments"));
        }
        Ok(())
    }

    /// Enter a parenthesised level; pair with [`Cursor::leave`].
    pub fn enter(&mut self) -> PResult<()> {
        self.depth += 1;
        if self.depth > self.limits.max_depth {
            return Err(ParseError::new("Too deeply nested"));
        }
        Ok(())
    }

    pub fn leave(&mut self) {
        self.depth = self.depth.saturating_sub(1);
    }

    /// Consume `c` if it is next.
    pub fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.advance(1);
            true
        } else {
            false
        }
    }

    pub fn expect(&mut self, c: u8, what: &str) -> PResult<()> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(ParseError::new(format!("Expected {what}")))
        }
    }

    /// Exactly one space.
    pub fn sp(&mut self) -> PResult<()> {
        self.expect(b' ', "space")
    }

    /// Consume the keyword `word` (case-insensitive) if it is next as a whole atom.
    pub fn eat_keyword(&mut self, word: &str) -> bool {
        let t = self.text();
        let n = word.len();
        if t.len() >= n
            && t[..n].eq_ignore_ascii_case(word.as_bytes())
            && !t.get(n).is_some_and(|&c| is_atom_char(c))
        {
            self.advance(n);
            true
        } else {
            false
        }
    }

    /// The end of the command must come now.
    pub fn end(&mut self) -> PResult<()> {
        if self.at_end() {
            Ok(())
        } else {
            Err(ParseError::new("Unexpected extra arguments"))
        }
    }

    /// Take the bytes while `pred` holds (within the current text segment).
    fn take_while(&mut self, pred: impl Fn(u8) -> bool) -> Vec<u8> {
        let t = self.text();
        let n = t.iter().position(|&c| !pred(c)).unwrap_or(t.len());
        let v = t[..n].to_vec();
        self.advance(n);
        v
    }

    /// A name made of letters, digits and `.` (fetch attributes, section texts), upper-cased.
    pub fn word(&mut self) -> PResult<String> {
        let w = self.take_while(|c| c.is_ascii_alphanumeric() || c == b'.');
        if w.is_empty() {
            return Err(ParseError::new("Expected a name"));
        }
        self.token()?;
        Ok(String::from_utf8_lossy(&w).to_ascii_uppercase())
    }

    /// An atom (1*ATOM-CHAR), as text.
    pub fn atom(&mut self) -> PResult<String> {
        let a = self.take_while(is_atom_char);
        if a.is_empty() {
            return Err(ParseError::new("Expected atom"));
        }
        self.token()?;
        Ok(String::from_utf8_lossy(&a).into_owned())
    }

    /// An atom, upper-cased (command names, keywords).
    pub fn keyword(&mut self) -> PResult<String> {
        Ok(self.atom()?.to_ascii_uppercase())
    }

    /// A `number` (u32).
    pub fn number(&mut self) -> PResult<u32> {
        let digits = self.take_while(|c| c.is_ascii_digit());
        self.token()?;
        parse_u32(&digits)
    }

    /// A `number64` (RFC 9051), for sizes such as LARGER.
    pub fn number64(&mut self) -> PResult<u64> {
        let digits = self.take_while(|c| c.is_ascii_digit());
        self.token()?;
        if digits.is_empty() {
            return Err(ParseError::new("Expected number"));
        }
        digits
            .iter()
            .try_fold(0u64, |acc, &d| {
                acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
            })
            .filter(|&v| v <= i64::MAX as u64)
            .ok_or_else(|| ParseError::new("Number out of range"))
    }

    /// A non-zero `number`.
    pub fn nz_number(&mut self) -> PResult<u32> {
        match self.number()? {
            0 => Err(ParseError::new("Zero is not a valid number here")),
            n => Ok(n),
        }
    }

    /// A quoted string, unescaped. Escapes only `\"` and `\\`; NUL, CR and LF are errors. 8-bit
    /// octets are accepted (RFC 3501 forbids them, but clients send UTF-8 search strings quoted and
    /// RFC 6855 allows it); a caller that needs ASCII checks for itself.
    fn quoted(&mut self) -> PResult<Vec<u8>> {
        self.expect(b'"', "quoted string")?;
        let t = self.text();
        let mut out = Vec::new();
        let mut i = 0;
        loop {
            match t.get(i) {
                None => return Err(ParseError::new("Unterminated quoted string")),
                Some(b'"') => break,
                Some(b'\\') => match t.get(i + 1) {
                    Some(&c @ (b'"' | b'\\')) => {
                        out.push(c);
                        i += 2;
                        continue;
                    }
                    _ => return Err(ParseError::new("Invalid escape in quoted string")),
                },
                Some(0 | b'\r' | b'\n') => {
                    return Err(ParseError::new("NUL, CR or LF in quoted string"))
                }
                Some(&c) => out.push(c),
            }
            i += 1;
        }
        self.advance(i + 1);
        self.token()?;
        Ok(out)
    }

    /// Take the literal at the cursor.
    pub fn literal(&mut self) -> PResult<Literal> {
        if !self.at_literal() {
            return Err(ParseError::new("Expected literal"));
        }
        self.token()?;
        self.seg += 1;
        let lit = match self.segments.get_mut(self.seg) {
            Some(Segment::Literal(l)) => l.take(),
            _ => None,
        };
        self.seg += 1;
        self.pos = 0;
        lit.ok_or_else(|| ParseError::new("Expected literal"))
    }

    /// A literal's bytes (for arguments other than APPEND messages). A literal the reader
    /// spooled to disk is too large for any such argument.
    fn literal_bytes(&mut self) -> PResult<Vec<u8>> {
        let lit = self.literal()?;
        let LiteralData::Memory(bytes) = lit.data else {
            return Err(ParseError::new("Literal too large for this argument"));
        };
        if memchr::memchr(0, &bytes).is_some() {
            return Err(ParseError::new("NUL in literal"));
        }
        Ok(bytes)
    }

    /// A `string`: quoted or literal.
    pub fn string(&mut self) -> PResult<Vec<u8>> {
        if self.at_literal() {
            self.literal_bytes()
        } else if self.peek() == Some(b'"') {
            self.quoted()
        } else {
            Err(ParseError::new("Expected string"))
        }
    }

    /// An `astring`: 1*ASTRING-CHAR or a string.
    pub fn astring(&mut self) -> PResult<Vec<u8>> {
        if self.at_literal() || self.peek() == Some(b'"') {
            return self.string();
        }
        let a = self.take_while(is_astring_char);
        if a.is_empty() {
            return Err(ParseError::new("Expected string or atom"));
        }
        self.token()?;
        Ok(a)
    }

    /// An astring as UTF-8 text (user names, search strings): invalid UTF-8 is an error.
    pub fn astring_utf8(&mut self) -> PResult<String> {
        String::from_utf8(self.astring()?).map_err(|_| ParseError::new("Invalid UTF-8"))
    }

    /// An `nstring`: NIL or a string.
    pub fn nstring(&mut self) -> PResult<Option<Vec<u8>>> {
        if self.eat_keyword("NIL") {
            self.token()?;
            return Ok(None);
        }
        self.string().map(Some)
    }

    /// A `mailbox`: astring decoded from modified UTF-7, `INBOX` in any case normalised.
    pub fn mailbox(&mut self) -> PResult<String> {
        let raw = self.astring()?;
        mailbox_from_wire(&raw)
    }

    /// A `list-mailbox` pattern: 1*list-char or a string, decoded from modified UTF-7.
    pub fn list_mailbox(&mut self) -> PResult<String> {
        if self.at_literal() || self.peek() == Some(b'"') {
            let raw = self.string()?;
            return decode_name(&raw);
        }
        let a = self.take_while(is_list_char);
        if a.is_empty() {
            return Err(ParseError::new("Expected mailbox pattern"));
        }
        self.token()?;
        decode_name(&a)
    }

    /// A sequence set; `*`, `*:*`, `1:*` valid, `0` and numbers past u32 invalid.
    pub fn sequence_set(&mut self) -> PResult<SequenceSet> {
        let mut ranges = Vec::new();
        loop {
            let a = self.seq_number()?;
            let b = if self.eat(b':') {
                self.seq_number()?
            } else {
                a
            };
            ranges.push((a, b));
            if !self.eat(b',') {
                break;
            }
        }
        self.token()?;
        Ok(SequenceSet(ranges))
    }

    fn seq_number(&mut self) -> PResult<SeqNum> {
        if self.eat(b'*') {
            return Ok(SeqNum::Last);
        }
        let digits = self.take_while(|c| c.is_ascii_digit());
        if digits.is_empty() {
            return Err(ParseError::new("Invalid sequence set"));
        }
        match parse_u32(&digits)? {
            0 => Err(ParseError::new("Invalid sequence number 0")),
            n => Ok(SeqNum::Value(n)),
        }
    }

    /// A `date`: date-text, optionally quoted.
    pub fn date(&mut self) -> PResult<Date> {
        let quoted = self.eat(b'"');
        let d = self.date_text(false)?;
        if quoted {
            self.expect(b'"', "closing quote after date")?;
        }
        self.token()?;
        Ok(d)
    }

    /// `date-day "-" date-month "-" date-year`; `fixed` allows the leading-space day form.
    fn date_text(&mut self, fixed: bool) -> PResult<Date> {
        let bad = || ParseError::new("Invalid date");
        if fixed {
            self.eat(b' ');
        }
        let day = self.take_while(|c| c.is_ascii_digit());
        if day.is_empty() || day.len() > 2 {
            return Err(bad());
        }
        self.expect(b'-', "'-' in date")?;
        let mon = self.take_while(|c| c.is_ascii_alphabetic());
        let month = MONTHS
            .iter()
            .position(|m| mon.eq_ignore_ascii_case(&m[..]))
            .ok_or_else(bad)? as u8
            + 1;
        self.expect(b'-', "'-' in date")?;
        let year = self.take_while(|c| c.is_ascii_digit());
        if year.len() != 4 {
            return Err(bad());
        }
        let year = parse_u32(&year)? as u16;
        let day = parse_u32(&day)? as u8;
        if day == 0 || day > days_in_month(year, month) {
            return Err(bad());
        }
        Ok(Date { year, month, day })
    }

    /// A `date-time`: `"dd-Mon-yyyy hh:mm:ss +zzzz"` (day may be ` d`).
    pub fn date_time(&mut self) -> PResult<DateTime> {
        let bad = || ParseError::new("Invalid date-time");
        self.expect(b'"', "quoted date-time")?;
        let date = self.date_text(true)?;
        self.sp()?;
        let hour = self.two_digits(23)?;
        self.expect(b':', "':' in time")?;
        let minute = self.two_digits(59)?;
        self.expect(b':', "':' in time")?;
        let second = self.two_digits(60)?;
        self.sp()?;
        let sign: i16 = match self.peek() {
            Some(b'+') => 1,
            Some(b'-') => -1,
            _ => return Err(bad()),
        };
        self.advance(1);
        let hh = self.two_digits(99)?;
        let mm = self.two_digits(59)?;
        self.expect(b'"', "closing quote after date-time")?;
        self.token()?;
        Ok(DateTime {
            date,
            hour,
            minute,
            second,
            zone_minutes: sign * (i16::from(hh) * 60 + i16::from(mm)),
        })
    }

    fn two_digits(&mut self, max: u8) -> PResult<u8> {
        let t = self.text();
        match t {
            [a, b, ..] if a.is_ascii_digit() && b.is_ascii_digit() => {
                let v = (a - b'0') * 10 + (b - b'0');
                if v > max {
                    return Err(ParseError::new("Invalid date-time"));
                }
                self.advance(2);
                Ok(v)
            }
            _ => Err(ParseError::new("Invalid date-time")),
        }
    }

    /// A `flag` (`\Seen`, keyword atoms); `\*` is not accepted here.
    pub fn flag(&mut self) -> PResult<Flag> {
        if self.eat(b'\\') {
            let name = self.atom()?;
            return Ok(match name.to_ascii_uppercase().as_str() {
                "ANSWERED" => Flag::Answered,
                "FLAGGED" => Flag::Flagged,
                "DELETED" => Flag::Deleted,
                "SEEN" => Flag::Seen,
                "DRAFT" => Flag::Draft,
                "RECENT" => Flag::Recent,
                _ => Flag::Extension(name),
            });
        }
        Ok(Flag::Keyword(self.atom()?))
    }

    /// A `flag-list`: `(` [flag *(SP flag)] `)`.
    pub fn flag_list(&mut self) -> PResult<Vec<Flag>> {
        self.expect(b'(', "'(' before flag list")?;
        let mut flags = Vec::new();
        if !self.eat(b')') {
            loop {
                flags.push(self.flag()?);
                if self.eat(b')') {
                    break;
                }
                self.sp()?;
            }
        }
        Ok(flags)
    }

    /// Flags for STORE: a parenthesised list, or flags separated by spaces without parentheses.
    pub fn store_flags(&mut self) -> PResult<Vec<Flag>> {
        if self.peek() == Some(b'(') {
            return self.flag_list();
        }
        let mut flags = vec![self.flag()?];
        while self.eat(b' ') {
            flags.push(self.flag()?);
        }
        Ok(flags)
    }
}

fn parse_u32(digits: &[u8]) -> PResult<u32> {
    if digits.is_empty() {
        return Err(ParseError::new("Expected number"));
    }
    digits
        .iter()
        .try_fold(0u32, |acc, &d| {
            acc.checked_mul(10)?.checked_add(u32::from(d - b'0'))
        })
        .ok_or_else(|| ParseError::new("Number out of range"))
}

/// Decode modified UTF-7; a name that is not valid is refused (`NO`), not a syntax error: the
/// astring itself was well-formed (RFC 3501 section 5.1.3).
fn decode_name(raw: &[u8]) -> PResult<String> {
    mutf7::decode(raw)
        .map_err(|e| ParseError::refused(format!("[CANNOT] Invalid mailbox name: {}", e.0)))
}

/// Decode a wire mailbox name; any case of `INBOX` becomes `INBOX`.
pub fn mailbox_from_wire(raw: &[u8]) -> PResult<String> {
    let name = decode_name(raw)?;
    if name.eq_ignore_ascii_case("INBOX") {
        return Ok("INBOX".to_string());
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cur(s: &[u8]) -> Cursor {
        Cursor::from_text(s)
    }

    #[test]
    fn atoms_and_keywords() {
        let mut c = cur(b"fetch  x");
        assert_eq!(c.keyword().unwrap(), "FETCH");
        c.sp().unwrap();
        assert!(c.atom().is_err());
        let mut c = cur(b"NILS");
        assert!(!c.eat_keyword("NIL"));
        assert_eq!(c.atom().unwrap(), "NILS");
        assert!(c.end().is_ok());
    }

    #[test]
    fn numbers_reject_overflow() {
        assert_eq!(cur(b"4294967295").number().unwrap(), u32::MAX);
        assert!(cur(b"4294967296").number().is_err());
        assert!(cur(b"99999999999999999999").number().is_err());
        assert!(cur(b"0").nz_number().is_err());
        assert!(cur(b"x").number().is_err());
        assert_eq!(cur(b"4294967296").number64().unwrap(), 4294967296);
    }

    #[test]
    fn quoted_strings() {
        assert_eq!(cur(br#""a\"b\\c""#).astring().unwrap(), b"a\"b\\c");
        assert_eq!(cur(br#""""#).astring().unwrap(), b"");
        assert_eq!(
            cur("\"caf\u{e9}\"".as_bytes()).astring().unwrap(),
            "caf\u{e9}".as_bytes()
        );
        for bad in [
            &br#""abc"#[..],
            br#""a\b""#,
            b"\"a\0b\"",
            b"\"a\rb\"",
            b"\"a\nb\"",
            br#""abc\"#,
        ] {
            assert!(cur(bad).astring().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn astring_accepts_bracket_atom_does_not() {
        assert_eq!(cur(b"a]b").astring().unwrap(), b"a]b");
        let mut c = cur(b"a]b");
        assert_eq!(c.atom().unwrap(), "a");
        assert!(cur(b"(x)").astring().is_err());
    }

    #[test]
    fn literals_via_raw_command() {
        let raw = RawCommand {
            tag: "a".into(),
            parts: vec![
                Part::Text(b"x ".to_vec()),
                Part::Literal(Literal {
                    binary: false,
                    data: LiteralData::Memory(b"he\xffllo".to_vec()),
                }),
                Part::Text(b" NIL".to_vec()),
            ],
        };
        let mut c = Cursor::new(raw, ParseLimits::default());
        assert_eq!(c.atom().unwrap(), "x");
        c.sp().unwrap();
        assert!(c.at_literal());
        assert_eq!(c.astring().unwrap(), b"he\xffllo");
        c.sp().unwrap();
        assert_eq!(c.nstring().unwrap(), None);
        c.end().unwrap();
    }

    #[test]
    fn nul_in_string_literal_is_rejected() {
        let raw = RawCommand {
            tag: "a".into(),
            parts: vec![
                Part::Text(Vec::new()),
                Part::Literal(Literal {
                    binary: false,
                    data: LiteralData::Memory(b"a\0b".to_vec()),
                }),
                Part::Text(Vec::new()),
            ],
        };
        assert!(Cursor::new(raw, ParseLimits::default()).astring().is_err());
    }

    #[test]
    fn sequence_sets() {
        use SeqNum::*;
        assert_eq!(
            cur(b"1:*").sequence_set().unwrap(),
            SequenceSet(vec![(Value(1), Last)])
        );
        assert_eq!(
            cur(b"*:*").sequence_set().unwrap(),
            SequenceSet(vec![(Last, Last)])
        );
        assert_eq!(
            cur(b"*").sequence_set().unwrap(),
            SequenceSet(vec![(Last, Last)])
        );
        let s = cur(b"1,3:5,9:7,4").sequence_set().unwrap();
        assert_eq!(s.ranges(100), vec![(1, 1), (3, 5), (7, 9)]);
        assert!(s.contains(8, 100) && !s.contains(6, 100));
        assert_eq!(cur(b"5:*").sequence_set().unwrap().ranges(3), vec![(3, 5)]);
        assert_eq!(cur(b"1:*").sequence_set().unwrap().ranges(0), vec![]);
        assert_eq!(
            cur(b"4294967295,1:4294967294")
                .sequence_set()
                .unwrap()
                .ranges(7),
            vec![(1, u32::MAX)]
        );
        for bad in [
            &b"0"[..],
            b"1:0",
            b"4294967296",
            b"1,",
            b":",
            b"",
            b"a",
            b"1:",
        ] {
            assert!(cur(bad).sequence_set().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn dates() {
        assert_eq!(
            cur(b"01-Feb-2024").date().unwrap(),
            Date {
                year: 2024,
                month: 2,
                day: 1
            }
        );
        assert_eq!(cur(b"\"1-feb-2024\"").date().unwrap().day, 1);
        assert!(cur(b"29-Feb-2024").date().is_ok());
        for bad in [
            &b"29-Feb-2023"[..],
            b"32-Jan-2024",
            b"01-Foo-2024",
            b"01-Feb-24",
            b"0-Jan-2000",
        ] {
            assert!(cur(bad).date().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn date_times() {
        let dt = cur(b"\"01-Feb-2024 12:00:00 +0000\"").date_time().unwrap();
        assert_eq!(dt.unix_seconds(), 1_706_788_800);
        let dt = cur(b"\" 2-Jan-2024 11:30:00 +0100\"").date_time().unwrap();
        assert_eq!(dt.zone_minutes, 60);
        assert_eq!(dt.unix_seconds(), 1_704_191_400);
        assert_eq!(
            cur(b"\"01-Jan-1970 00:00:00 +0000\"")
                .date_time()
                .unwrap()
                .unix_seconds(),
            0
        );
        for bad in [
            &b"01-Feb-2024 12:00:00 +0000"[..],
            b"\"01-Feb-2024 24:00:00 +0000\"",
            b"\"01-Feb-2024 12:00:00 0000\"",
            b"\"01-Feb-2024 12:00 +0000\"",
            b"\"01-Feb-2024 12:00:00 +0000",
        ] {
            assert!(cur(bad).date_time().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn flags() {
        assert_eq!(
            cur(b"(\\Flagged Custom1 \\seen $Forwarded \\X)")
                .flag_list()
                .unwrap(),
            vec![
                Flag::Flagged,
                Flag::Keyword("Custom1".into()),
                Flag::Seen,
                Flag::Keyword("$Forwarded".into()),
                Flag::Extension("X".into())
            ]
        );
        assert_eq!(cur(b"()").flag_list().unwrap(), vec![]);
        assert!(cur(b"(\\Seen").flag_list().is_err());
        assert!(cur(b"(\\Seen  \\Draft)").flag_list().is_err());
        assert_eq!(cur(b"\\Seen \\Draft").store_flags().unwrap().len(), 2);
    }

    #[test]
    fn mailboxes() {
        assert_eq!(cur(b"inbox").mailbox().unwrap(), "INBOX");
        assert_eq!(cur(b"\"&U,BTFw-\"").mailbox().unwrap(), "\u{53f0}\u{5317}");
        assert!(cur(b"&Jjo").mailbox().is_err_and(|e| e.refused));
        assert!(cur(b"&AGE-").mailbox().is_err());
        assert_eq!(cur(b"mail/%").list_mailbox().unwrap(), "mail/%");
        assert_eq!(cur(b"*").list_mailbox().unwrap(), "*");
    }

    #[test]
    fn token_limit() {
        let mut c = Cursor::new(
            RawCommand {
                tag: "a".into(),
                parts: vec![Part::Text(b"a b c d".to_vec())],
            },
            ParseLimits {
                max_depth: 2,
                max_tokens: 3,
            },
        );
        for _ in 0..3 {
            c.atom().unwrap();
            c.sp().unwrap();
        }
        assert_eq!(c.atom().unwrap_err().msg, "Too many arguments");
        assert!(c.enter().is_ok() && c.enter().is_ok());
        assert!(c.enter().is_err());
    }
}
