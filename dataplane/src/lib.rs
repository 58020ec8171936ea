//! `aetherd`, the Aetherless data plane, as a library: the binary in
//! `main.rs` only parses options and calls [`daemon::run`].

pub mod autoscale;
pub mod control_loop;
pub mod core;
pub mod criu;
pub mod daemon;
pub mod gateway;
pub mod instance;
pub mod lifecycle_metrics;
pub mod metrics_http;
pub mod pidfile;
pub mod scaling;
pub mod snapshot;
pub mod steering;
pub mod xdp;
