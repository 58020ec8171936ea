//! File names aetherd and aetherctl agree on inside `orchestrator.state_dir`
//! and `orchestrator.log_dir`.

/// The control segment (two SPSC rings, see `shm_abi::channel`).
pub const CONTROL_SEGMENT: &str = "control.shm";
/// aetherd's pidfile, `flock`ed while aetherd runs.
pub const PIDFILE: &str = "aetherd.pid";
/// A detached aetherd's own log, in the log dir.
pub const DAEMON_LOG: &str = "aetherd.log";
