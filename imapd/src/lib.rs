//! `imapd`: an IMAP4rev1 server for one connection on stdin/stdout, a drop-in for UW-IMAP's.
//!
//! Layers, bottom up:
//! - [`wire`]: bytes on the connection. [`wire::reader`] assembles one command (lines and
//!   literals) under hard limits; [`wire::parser`] tokenizes it (atoms, strings, numbers, sequence
//!   sets, dates, mailbox names); [`wire::response`] writes responses, streaming literals.
//! - [`protocol`]: what the bytes mean. [`protocol::command`] turns a raw command into a typed
//!   [`protocol::command::Command`].
//! - [`message`]: what a message says: MIME structure, ENVELOPE, BODYSTRUCTURE, sections,
//!   SEARCH matching, SORT and THREAD, computed from message bytes.
//!
//! These layers never touch the mail store: the session (built on top) does.

pub mod message;
pub mod protocol;
pub mod wire;
