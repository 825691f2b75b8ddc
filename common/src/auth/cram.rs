//! The UW-IMAP CRAM-MD5/APOP secrets file (`user<TAB>secret` lines, `#` comments).
//!
//! SKELETON.
