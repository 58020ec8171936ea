//! Where a running aetherd keeps its control segment, pidfile and logs.
//!
//! All of them derive from the orchestrator's `state_dir` (and `log_dir`), so
//! several aetherd processes with different state dirs can run side by side
//! (the end-to-end tests do).

use std::path::{Path, PathBuf};

/// File name of the control segment inside the state dir.
pub const CONTROL_SEGMENT: &str = "control.shm";
/// File name of aetherd's pidfile inside the state dir.
pub const PIDFILE: &str = "aetherd.pid";
/// File name of a detached aetherd's own log inside the log dir.
pub const DAEMON_LOG: &str = "aetherd.log";

/// Paths of one aetherd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonPaths {
    pub state_dir: PathBuf,
    pub log_dir: PathBuf,
}

impl DaemonPaths {
    pub fn new(state_dir: &Path, log_dir: &Path) -> Self {
        DaemonPaths {
            state_dir: state_dir.to_path_buf(),
            log_dir: log_dir.to_path_buf(),
        }
    }

    /// From the orchestrator section of a config.
    pub fn from_orchestrator(o: &config::Orchestrator) -> Self {
        DaemonPaths::new(&o.state_dir, &o.log_dir)
    }

    pub fn control_segment(&self) -> PathBuf {
        self.state_dir.join(CONTROL_SEGMENT)
    }

    pub fn pidfile(&self) -> PathBuf {
        self.state_dir.join(PIDFILE)
    }

    pub fn daemon_log(&self) -> PathBuf {
        self.log_dir.join(DAEMON_LOG)
    }
}

/// Read a pidfile; `None` when it is missing or does not hold a number.
pub fn read_pid(pidfile: &Path) -> Option<i32> {
    std::fs::read_to_string(pidfile).ok()?.trim().parse().ok()
}

/// Whether a process with this pid exists (signal 0).
pub fn pid_alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 performs only the permission and existence
    // check; it sends nothing and touches no memory of ours.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}
