//! config (skeleton: filled in by the foundation work).
