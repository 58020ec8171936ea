//! numa (skeleton: filled in by the foundation work).
