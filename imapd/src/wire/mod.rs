//! The IMAP wire: reading commands under limits, tokenizing them, writing responses.
//!
//! Owns byte-level syntax only (RFC 3501 section 9 formal syntax, RFC 7888 literals, RFC 3516
//! literal8). Never interprets a command's meaning and never touches a mailbox.

pub mod mutf7;
pub mod parser;
pub mod reader;
pub mod response;
