//! PAM through a minimal FFI to Debian's libpam (no bindgen, no libclang).
//!
//! SKELETON.
