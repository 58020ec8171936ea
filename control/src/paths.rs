//! Where a running aetherd keeps its control segment, pidfile and logs.
//!
//! All of them derive from the orchestrator's `state_dir` (and `log_dir`), so
//! several aetherd processes with different state dirs can run side by side
//! (the end-to-end tests do).

use std::path::{Path, PathBuf};

use config::runtime::{CONTROL_SEGMENT, DAEMON_LOG, PIDFILE};

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

/// Whether a process with this pid exists (signal 0) and is not a zombie
/// (a detached aetherd is reaped by whoever adopted it, maybe late).
pub fn pid_alive(pid: i32) -> bool {
    if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Format: "pid (comm) S ..." — comm may hold spaces or parentheses.
        if let Some(state) = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
        {
            if state == "Z" || state == "X" {
                return false;
            }
        }
    }
    // SAFETY: kill with signal 0 performs only the permission and existence
    // check; it sends nothing and touches no memory of ours.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}
