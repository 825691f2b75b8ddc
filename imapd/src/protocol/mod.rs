//! IMAP protocol semantics on top of the wire: typed commands.
//!
//! Owns the mapping from syntax to meaning. Never performs I/O and never touches a mailbox.

pub mod command;
