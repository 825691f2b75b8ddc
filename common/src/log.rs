//! syslog (facility mail, ident = program name, with pid), mirrored to stderr when asked.
//!
//! SKELETON.
