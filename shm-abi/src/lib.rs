//! shm-abi (skeleton: filled in by the foundation work).
pub mod message;
