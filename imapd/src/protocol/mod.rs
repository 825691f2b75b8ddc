//! IMAP protocol semantics on top of the wire: typed commands and the session that executes them.
//!
//! [`command`] maps syntax to meaning and never performs I/O. [`session`] is the state machine:
//! it talks to the client through a [`session::Transport`] and to the mail store through the
//! `common::store` traits, and never touches files or privileges itself.

pub mod command;
pub mod session;
