//! IDLE (RFC 2177): report other processes' changes to the selected mailbox within about two
//! seconds until the client sends `DONE`.
//!
//! Owns the wait: poll(2) on the client with a one-second timeout, and between polls the store's
//! cheap change token; only when that changes is the mailbox refreshed and the differences sent
//! (EXPUNGE included: IDLE allows it). Each tick also writes the flag changes the store deferred
//! (see `Selected::settle`). Never reads message bodies.

use super::{Backend, Reply, Session, Transport};
use crate::wire::reader::InputLine;
use common::log;
use std::io;
use std::time::{Duration, Instant};

/// How often the mailbox is checked while idling.
const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Longest line accepted while idling (`DONE` is all that is expected).
const MAX_IDLE_LINE: usize = 1024;

impl<T: Transport, B: Backend> Session<'_, T, B> {
    pub(super) fn idle(&mut self) -> io::Result<Reply> {
        // The token is taken before the catch-up refresh: a change after it is seen by that
        // refresh or by the next comparison, never lost.
        let mut token = self.change_token();
        self.client.write_all(b"+ idling\r\n")?;
        self.sync_selected(true)?;
        self.client.flush()?;
        let started = Instant::now();
        loop {
            let readable =
                self.client.has_pending_input() || self.client.wait_readable(POLL_INTERVAL)?;
            if readable {
                return match self.client.read_line(MAX_IDLE_LINE, POLL_INTERVAL)? {
                    InputLine::Complete(line) if line.eq_ignore_ascii_case(b"DONE") => {
                        Ok(Reply::ok("IDLE terminated"))
                    }
                    InputLine::Complete(_) | InputLine::TooLong => {
                        Ok(Reply::bad("Expected DONE to end IDLE"))
                    }
                    InputLine::Timeout => continue,
                    InputLine::Eof => Err(io::Error::new(
                        io::ErrorKind::ConnectionReset,
                        "client left during IDLE",
                    )),
                };
            }
            if started.elapsed() >= self.policy.conn.idle_timeout {
                self.untagged("BYE Autologout; idle for too long")?;
                log::info(&format!("Autologout {}", self.who()));
                return Ok(Reply::silent_close());
            }
            if self.selected.as_ref().is_some_and(|sel| sel.settle_due()) {
                self.persist_selected();
            }
            let now = self.change_token();
            if now != token {
                token = now;
                let who = self.who();
                if let Some(sel) = self.selected.as_mut() {
                    sel.refresh(&mut *self.client, true, &who)?;
                }
                self.client.flush()?;
            }
        }
    }

    fn change_token(&self) -> Option<u64> {
        self.selected
            .as_ref()
            .and_then(|sel| sel.mailbox.change_token().ok())
    }
}
