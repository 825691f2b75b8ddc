//! Users and privileges: passwd lookups and the one-way drop from root to the mail owner.
//!
//! SKELETON.
