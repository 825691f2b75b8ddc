//! `imapd`: an IMAP4rev1 server for one connection on stdin/stdout, a drop-in for UW-IMAP's.
//!
//! Layers, bottom up:
//! - [`wire`]: bytes on the connection. [`wire::reader`] assembles one command (lines and
//!   literals) under hard limits; [`wire::parser`] tokenizes it (atoms, strings, numbers, sequence
//!   sets, dates, mailbox names); [`wire::response`] writes responses, streaming literals.
//! - [`protocol`]: what the bytes mean. [`protocol::command`] turns a raw command into a typed
//!   [`protocol::command::Command`]; [`protocol::session`] is the state machine that executes
//!   commands against the `common::store` traits (the only layer that touches the store).
//! - [`message`]: what a message says: MIME structure, ENVELOPE, BODYSTRUCTURE, sections,
//!   SEARCH matching, SORT and THREAD, computed from message bytes.
//!
//! The wire and message layers never touch the mail store; the binary (`main.rs`) only wires
//! the connection, the login backend and the session together.

pub mod client;
pub mod message;
pub mod protocol;
pub mod wire;
