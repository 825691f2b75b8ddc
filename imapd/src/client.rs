//! The shared client connection (`common::server::Client`, fd 0/1 with optional TLS) as the
//! IMAP layers see it: an [`Input`] for the command reader and a [`Transport`] for the session.
//!
//! Owns nothing but this adaptation; never interprets commands.

use crate::protocol::session::Transport;
use crate::wire::reader::{Input, InputLine};
use common::net::conn::Line;
use common::server::Client;
use std::io;
use std::time::Duration;

impl Input for Client {
    fn read_line(&mut self, max: usize, timeout: Duration) -> io::Result<InputLine> {
        Ok(match Client::read_line(self, max, timeout)? {
            Line::Complete(line) => InputLine::Complete(line),
            Line::TooLong => InputLine::TooLong,
            Line::Eof => InputLine::Eof,
            Line::Timeout => InputLine::Timeout,
        })
    }
    fn read_exact_timeout(
        &mut self,
        n: usize,
        timeout: Duration,
        out: &mut Vec<u8>,
    ) -> io::Result<bool> {
        Client::read_exact_timeout(self, n, timeout, out)
    }
}

impl Transport for Client {
    fn has_pending_input(&self) -> bool {
        Client::has_pending_input(self)
    }
    fn wait_readable(&mut self, timeout: Duration) -> io::Result<bool> {
        Client::wait_readable(self, timeout)
    }
    fn start_tls(&mut self) -> Result<(), String> {
        Client::start_tls(self)
    }
    fn is_tls(&self) -> bool {
        Client::is_tls(self)
    }
}
