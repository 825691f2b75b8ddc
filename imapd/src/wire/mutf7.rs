//! Modified UTF-7 mailbox names (RFC 3501 section 5.1.3), strictly validated.
//!
//! Owns the conversion between wire mailbox names and UTF-8. Never accepts a name that is not
//! in canonical form where that matters for identity: 8-bit or control octets, printable ASCII
//! hidden in base64, an unterminated `&` run, bits left over, or unpaired UTF-16 surrogates are
//! all errors, so one mailbox cannot be reached under two different wire names by those tricks.

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,";

/// Why a name is not valid modified UTF-7.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidName(pub &'static str);

fn sextet(c: u8) -> Option<u32> {
    ALPHABET.iter().position(|&a| a == c).map(|p| p as u32)
}

/// Decode a wire mailbox name to UTF-8.
pub fn decode(name: &[u8]) -> Result<String, InvalidName> {
    let mut out = String::with_capacity(name.len());
    let mut i = 0;
    while i < name.len() {
        let c = name[i];
        if !(0x20..0x7f).contains(&c) {
            return Err(InvalidName("8-bit or control character in mailbox name"));
        }
        if c != b'&' {
            out.push(char::from(c));
            i += 1;
            continue;
        }
        let run_start = i + 1;
        let Some(run_len) = name[run_start..].iter().position(|&c| c == b'-') else {
            return Err(InvalidName("unterminated &-sequence in mailbox name"));
        };
        if run_len == 0 {
            out.push('&');
        } else {
            decode_run(&name[run_start..run_start + run_len], &mut out)?;
        }
        i = run_start + run_len + 1;
    }
    Ok(out)
}

/// Decode one base64 run (between `&` and `-`) of UTF-16BE.
fn decode_run(run: &[u8], out: &mut String) -> Result<(), InvalidName> {
    let mut units: Vec<u16> = Vec::with_capacity(run.len() * 6 / 16);
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    for &c in run {
        let v = sextet(c).ok_or(InvalidName("invalid base64 in mailbox name"))?;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 16 {
            bits -= 16;
            units.push((acc >> bits) as u16);
            acc &= (1 << bits) - 1;
        }
    }
    if bits >= 6 || acc != 0 {
        return Err(InvalidName("bad padding in modified UTF-7 mailbox name"));
    }
    for ch in char::decode_utf16(units.iter().copied()) {
        let ch = ch.map_err(|_| InvalidName("unpaired surrogate in mailbox name"))?;
        if (' '..='~').contains(&ch) {
            return Err(InvalidName(
                "printable ASCII encoded in base64 in mailbox name",
            ));
        }
        out.push(ch);
    }
    Ok(())
}

/// Encode a UTF-8 mailbox name for the wire.
pub fn encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut pending: Vec<u16> = Vec::new();
    for ch in name.chars() {
        if (' '..='~').contains(&ch) {
            flush_run(&mut pending, &mut out);
            if ch == '&' {
                out.push_str("&-");
            } else {
                out.push(ch);
            }
        } else {
            let mut buf = [0u16; 2];
            pending.extend_from_slice(ch.encode_utf16(&mut buf));
        }
    }
    flush_run(&mut pending, &mut out);
    out
}

fn flush_run(units: &mut Vec<u16>, out: &mut String) {
    if units.is_empty() {
        return;
    }
    out.push('&');
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    for &u in units.iter() {
        acc = (acc << 16) | u32::from(u);
        bits += 16;
        while bits >= 6 {
            bits -= 6;
            out.push(char::from(ALPHABET[((acc >> bits) & 63) as usize]));
        }
        acc &= (1 << bits) - 1;
    }
    if bits > 0 {
        out.push(char::from(ALPHABET[((acc << (6 - bits)) & 63) as usize]));
    }
    out.push('-');
    units.clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3501_example() {
        let wire = "~peter/mail/&U,BTFw-/&ZeVnLIqe-";
        let utf8 = "~peter/mail/\u{53f0}\u{5317}/\u{65e5}\u{672c}\u{8a9e}";
        assert_eq!(decode(wire.as_bytes()).unwrap(), utf8);
        assert_eq!(encode(utf8), wire);
    }

    #[test]
    fn accented_and_ampersand() {
        assert_eq!(decode(b"&AOk-t&AOk-").unwrap(), "\u{e9}t\u{e9}");
        assert_eq!(encode("\u{e9}t\u{e9}"), "&AOk-t&AOk-");
        assert_eq!(decode(b"Tom &- Jerry").unwrap(), "Tom & Jerry");
        assert_eq!(encode("Tom & Jerry"), "Tom &- Jerry");
        assert_eq!(decode(b"INBOX").unwrap(), "INBOX");
    }

    #[test]
    fn round_trips() {
        for s in [
            "",
            "plain",
            "a&b",
            "\u{1f600} smile",
            "Entw\u{fc}rfe",
            "\u{42f}\u{449}\u{438}\u{43a}",
            "x\u{e9}\u{e8}\u{ea}y",
        ] {
            assert_eq!(decode(encode(s).as_bytes()).unwrap(), s, "{s}");
        }
    }

    #[test]
    fn invalid_names_are_rejected() {
        for bad in [
            &b"&"[..],      // unterminated
            b"&AOk",        // unterminated
            b"caf\xc3\xa9", // raw UTF-8
            b"a\x01b",      // control
            b"&AGE-",       // 'a' in base64
            b"&AOkA-",      // leftover bits
            b"&2D0-",       // lone high surrogate
            b"&AO!-",       // not base64
            b"&AOk/-",      // '/' is not the modified alphabet
            b"a\tb",        // tab
        ] {
            assert!(decode(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
