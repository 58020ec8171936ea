//! Shared harness for Aetherless benchmark binaries.
//!
//! Every benchmark is a plain binary in `bench/src/bin/<name>.rs` that records
//! into `hdrhistogram`, runs its baseline in the same process run (so results
//! can be read as ratios), and writes `<output-dir>/<name>.json` as a
//! [`report::Report`]. `bench/compare.sh` discovers the binaries by the file
//! names in `src/bin`, so a new benchmark plugs in by adding a file there.
//!
//! The contract each benchmark binary follows:
//! - accepts `--smoke` (a short run) and `--output-dir DIR` (default
//!   `bench/results`), see [`cli::CommonArgs`];
//! - exits non-zero when the measurement itself failed (a peer died, a checksum
//!   mismatched); a missed target is *not* a failure, it is a `pass: false` in
//!   the JSON's `targets`.
//!
//! Modules:
//! - [`affinity`]: the allowed cpuset and thread pinning;
//! - [`clock`]: `CLOCK_MONOTONIC` nanoseconds (comparable across processes),
//!   UTC timestamps and the timer's own overhead;
//! - [`cli`]: the flags every benchmark shares;
//! - [`histogram`]: an hdrhistogram in nanoseconds and its percentile summary;
//! - [`machine`]: what the run ran on (host, kernel, CPU model, cores used);
//! - [`report`]: the JSON document and target checks;
//! - [`shared`]: a small shared-memory file two benchmark processes map;
//! - [`ring`]: the shared-memory ring benchmark (binary `ring`).
//! - [`gateway`]: the HTTP gateway benchmark (binary `gateway`): the aetherd hop
//!   against the native handler direct and behind nginx.
//! - [`autoscale`]: the autoscaling benchmark (binary `autoscale`): a 0 → 50
//!   clients burst against a function at zero instances.
//! - [`coldstart`]: the cold-start benchmark (binary `coldstart`): hello.py
//!   through aetherd (scale to zero, warm pool) against `criu restore` and a
//!   fresh spawn.
//! - [`aetherd`]: aetherd started and stopped through `aetherctl` with a
//!   generated configuration, and the binaries located and built; shared by
//!   `gateway`, `autoscale` and `coldstart`.
//! - [`xdp`]: the eBPF data plane benchmark (binary `xdp`): XDP strict-mode
//!   drop rate against nftables, XDP cost per packet, accept locality.

pub mod aetherd;
pub mod affinity;
pub mod autoscale;
pub mod cli;
pub mod clock;
pub mod coldstart;
pub mod gateway;
pub mod histogram;
pub mod machine;
pub mod report;
pub mod ring;
pub mod shared;
pub mod xdp;
