//! How a server process meets its one client: launch modes ([`launch`]), the peer's address
//! ([`peer`]), the connection with optional TLS ([`conn`], [`tls`]).
//!
//! Owns file descriptors 0 and 1, sockets and rustls. Never interprets protocol commands.

pub mod conn;
pub mod launch;
pub mod peer;
pub mod tls;
