//! shm-abi: the shared-memory ABI of Aetherless (docs filled in below).

pub mod channel;
pub mod ring;
pub mod segment;
mod sync;

/// Whether `pid` names a live process: `kill(pid, 0)` succeeds or fails with
/// anything but `ESRCH` (EPERM means alive but not ours). Pids that do not
/// fit a `pid_t` cannot exist and count as dead.
pub(crate) fn process_alive(pid: u32) -> bool {
    let Ok(p) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if p <= 0 {
        return false;
    }
    // SAFETY: kill with signal 0 sends nothing; it only checks existence and
    // permission.
    let rc = unsafe { libc::kill(p, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}
pub mod message;
