//! bpf (skeleton: filled in by the foundation work).
