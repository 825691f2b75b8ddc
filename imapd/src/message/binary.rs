//! Making binary content (an RFC 3516 `literal8` APPEND) readable by every IMAP client: each
//! leaf part whose body holds NUL octets is re-encoded base64 and its Content-Transfer-Encoding
//! field rewritten, as Dovecot does. A NUL may never be sent in an ordinary literal (RFC 3501
//! `CHAR8`), so without this the stored message could not be returned by `BODY[]`; `BINARY[]`
//! still returns the original octets, decoded.
//!
//! Works on message bytes only; never touches the store. Parts without NUL are copied byte for
//! byte.

use base64::Engine;

use super::header::{fields, split_header};
use super::mime::{parse, Part, PartKind};

/// Base64 line length (RFC 2045 section 6.8).
const LINE: usize = 76;

/// The message with every NUL-holding leaf part base64-encoded, or `None` when it has no NUL.
/// A message without MIME-Version gets one first (its encoding field would not count
/// otherwise), so its Content-* fields are read as MIME.
pub fn encode_nul_parts(msg: &[u8]) -> Option<Vec<u8>> {
    memchr::memchr(0, msg)?;
    let (header, _) = split_header(msg, 0);
    if !fields(&msg[header]).any(|f| f.name.eq_ignore_ascii_case(b"MIME-Version")) {
        let mut mime = b"MIME-Version: 1.0\r\n".to_vec();
        mime.extend_from_slice(msg);
        return encode_nul_parts(&mime);
    }
    let tree = parse(msg);
    let mut leaves = Vec::new();
    nul_leaves(&tree.root, msg, &mut leaves);
    let mut out = Vec::with_capacity(msg.len() * 4 / 3 + 256);
    let mut done = 0;
    for part in leaves {
        let header = part.header.clone();
        out.extend_from_slice(&msg[done..header.start]);
        write_header(&msg[header.clone()], &mut out);
        out.extend_from_slice(&msg[header.end..part.body.start.max(header.end)]);
        write_base64(&msg[part.body.clone()], &mut out);
        done = part.body.end;
    }
    out.extend_from_slice(&msg[done..]);
    Some(out)
}

/// Leaf parts (in message order) whose body contains a NUL octet.
fn nul_leaves<'t>(part: &'t Part, msg: &[u8], out: &mut Vec<&'t Part>) {
    match &part.kind {
        PartKind::Leaf => {
            if msg
                .get(part.body.clone())
                .is_some_and(|b| memchr::memchr(0, b).is_some())
            {
                out.push(part);
            }
        }
        PartKind::Multipart(children) => {
            for child in children {
                nul_leaves(child, msg, out);
            }
        }
        PartKind::Message(inner) => nul_leaves(inner, msg, out),
    }
}

/// The part's header without its Content-Transfer-Encoding fields, then `base64` as the
/// encoding, then the empty line.
fn write_header(header: &[u8], out: &mut Vec<u8>) {
    for f in fields(header) {
        if f.name.eq_ignore_ascii_case(b"Content-Transfer-Encoding") {
            continue;
        }
        out.extend_from_slice(f.raw);
        if !f.raw.ends_with(b"\n") {
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(b"Content-Transfer-Encoding: base64\r\n\r\n");
}

/// `body` in base64, CRLF between lines of 76 characters, none after the last.
fn write_base64(body: &[u8], out: &mut Vec<u8>) {
    let text = base64::engine::general_purpose::STANDARD.encode(body);
    for (i, line) in text.as_bytes().chunks(LINE).enumerate() {
        if i > 0 {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::section::binary;

    #[test]
    fn messages_without_nul_are_left_alone() {
        assert_eq!(
            encode_nul_parts(b"Subject: x\r\n\r\n\xe4 8-bit is fine\r\n"),
            None
        );
    }

    #[test]
    fn a_binary_single_part_becomes_base64_as_dovecot_writes_it() {
        // imaptest append-binary: the exact bytes Dovecot 2.3 stores for this APPEND.
        let msg = b"From: a@b\r\nMime-Version: 1.0\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary\r\n\r\n\x00-\xe4\r\n\r\n";
        let out = encode_nul_parts(msg).unwrap();
        assert_eq!(
            out,
            b"From: a@b\r\nMime-Version: 1.0\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\nAC3kDQoNCg=="
        );
        // BINARY[1] still gives the original octets.
        assert_eq!(
            binary(&parse(&out), &out, &[1]).unwrap(),
            b"\x00-\xe4\r\n\r\n"
        );
    }

    #[test]
    fn only_the_nul_part_of_a_multipart_changes() {
        let msg = b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\ntext\r\n--b\r\nContent-Type: application/x\r\nContent-Transfer-Encoding: binary\r\n\r\n\x00\x01\r\n--b--\r\n";
        let out = encode_nul_parts(msg).unwrap();
        let want = b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\ntext\r\n--b\r\nContent-Type: application/x\r\nContent-Transfer-Encoding: base64\r\n\r\nAAE=\r\n--b--\r\n";
        assert_eq!(String::from_utf8_lossy(&out), String::from_utf8_lossy(want));
        assert_eq!(binary(&parse(&out), &out, &[2]).unwrap(), b"\x00\x01");
    }

    #[test]
    fn a_message_without_mime_version_gets_one() {
        let out = encode_nul_parts(b"Subject: s\r\n\r\nab\x00\r\n").unwrap();
        assert_eq!(
            out,
            b"MIME-Version: 1.0\r\nSubject: s\r\nContent-Transfer-Encoding: base64\r\n\r\nYWIADQo="
        );
    }

    #[test]
    fn long_bodies_wrap_at_76_characters() {
        let mut msg = b"MIME-Version: 1.0\r\n\r\n".to_vec();
        msg.extend(std::iter::repeat_n(0u8, 100));
        let out = encode_nul_parts(&msg).unwrap();
        let body = &out[out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4..];
        let lines: Vec<&[u8]> = body.split(|&c| c == b'\n').collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].len(), LINE + 1); // with its CR
    }
}
