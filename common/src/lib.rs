//! Shared core of the mail access suite (`imapd`, `ipop3d`).
//!
//! Owns everything both servers stand on: how a process is launched and talks to its one client
//! ([`net`]), who the client is ([`auth`]) and becoming that user ([`privs`]), what gets logged
//! ([`log`]), the command-line options both servers share ([`config`]), and the mail store
//! ([`store`]). It never speaks a mail protocol: no POP3 or IMAP response is formatted here.

pub mod auth;
pub mod config;
pub mod log;
pub mod net;
pub mod privs;
pub mod server;
pub mod store;
