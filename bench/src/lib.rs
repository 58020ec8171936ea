//! Benchmark binaries live in src/bin.
pub mod gateway;
