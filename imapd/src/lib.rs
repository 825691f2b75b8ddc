//! IMAP4rev1 server library.

pub mod message;
