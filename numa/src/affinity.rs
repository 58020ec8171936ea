//! The CPUs this process may run on, and pinning threads to one of them.
//!
//! The allowed set is the affinity mask of the process (its main thread, read
//! with `sched_getaffinity(getpid())`) intersected with the effective cpuset of
//! the process's cgroup when one is found (cgroup v1 `cpuset.effective_cpus`
//! or v2 `cpuset.cpus.effective`). The kernel already confines affinity to the
//! cpuset, so the intersection only matters when the two race or when the
//! affinity mask was widened before a cgroup move; it never widens the set.

use std::path::{Path, PathBuf};

use crate::cpulist::{parse_cpu_list, CpuListError};
use crate::sys::{mask_bits, read_if_exists, WORD_BITS};

/// Why an affinity query or pin failed.
#[derive(Debug, thiserror::Error)]
pub enum NumaError {
    /// `sched_getaffinity` failed.
    #[error("sched_getaffinity(pid {pid}) failed: {source}")]
    GetAffinity {
        /// The pid or tid queried (0 = the calling thread).
        pid: i32,
        /// The OS error.
        source: std::io::Error,
    },
    /// The CPU is outside the set this process may use.
    #[error("cpu {cpu} is not in this process's allowed cpus {allowed} (check `cores:` in the config, taskset, or the cgroup cpuset)")]
    CpuNotAllowed {
        /// The requested CPU.
        cpu: usize,
        /// The allowed set, as a cpu list.
        allowed: String,
    },
    /// `core_affinity` reported failure setting the mask.
    #[error("pinning the current thread to cpu {cpu} failed (sched_setaffinity refused it)")]
    PinFailed {
        /// The requested CPU.
        cpu: usize,
    },
    /// The mask read back after pinning is not exactly the requested CPU.
    #[error("after pinning to cpu {cpu}, the thread's affinity is {actual} instead")]
    PinNotApplied {
        /// The requested CPU.
        cpu: usize,
        /// The mask read back, as a cpu list.
        actual: String,
    },
    /// A cgroup or proc file could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A cgroup cpuset file holds a malformed list.
    #[error("{path}: {source}")]
    CpuList {
        /// The file.
        path: PathBuf,
        /// The parse error.
        source: CpuListError,
    },
}

/// The largest mask tried (the kernel's `NR_CPUS` maximum is 8192).
const MAX_MASK_BITS: usize = 1 << 16;

/// `sched_getaffinity(pid)` as a sorted CPU list, growing the mask buffer until
/// the kernel accepts it (so machines above 1024 CPUs work).
fn sched_getaffinity(pid: libc::pid_t) -> Result<Vec<usize>, NumaError> {
    let mut bits = 1024;
    loop {
        let mut mask: Vec<libc::c_ulong> = vec![0; bits / WORD_BITS];
        let bytes = mask.len() * std::mem::size_of::<libc::c_ulong>();
        // SAFETY: `mask` is a live, writable buffer of exactly `bytes` bytes, and
        // the raw syscall writes at most `bytes` bytes into it; it returns the
        // number of bytes written.
        let written =
            unsafe { libc::syscall(libc::SYS_sched_getaffinity, pid, bytes, mask.as_mut_ptr()) };
        if written < 0 {
            let source = std::io::Error::last_os_error();
            if source.raw_os_error() == Some(libc::EINVAL) && bits < MAX_MASK_BITS {
                bits *= 2;
                continue;
            }
            return Err(NumaError::GetAffinity { pid, source });
        }
        return Ok(mask_bits(&mask));
    }
}

/// The calling thread's current affinity mask, sorted.
pub fn current_thread_affinity() -> Result<Vec<usize>, NumaError> {
    sched_getaffinity(0)
}

/// The CPUs this process may use, sorted (see the module docs). Call it before
/// pinning the main thread: afterwards it reports the main thread's pin.
pub fn allowed_cpus() -> Result<Vec<usize>, NumaError> {
    // Pids fit in pid_t (the kernel caps them at 2^22); were that ever to fail,
    // 0 (the calling thread) is the closest answer.
    let pid = libc::pid_t::try_from(std::process::id()).unwrap_or(0);
    let mut cpus = sched_getaffinity(pid)?;
    if let Some(cpuset) = cgroup_cpuset(Path::new("/"))? {
        // A cpuset disjoint from our mask means it is stale or misread; the
        // kernel-enforced mask wins rather than leaving nothing to run on.
        let both: Vec<usize> = cpus
            .iter()
            .copied()
            .filter(|cpu| cpuset.contains(cpu))
            .collect();
        if !both.is_empty() {
            cpus = both;
        }
    }
    Ok(cpus)
}

/// Pins the calling thread to `cpu` (through `core_affinity`) and verifies with
/// `sched_getaffinity` that its mask is now exactly `{cpu}`.
pub fn pin_current_thread(cpu: usize) -> Result<(), NumaError> {
    let allowed = allowed_cpus()?;
    pin_current_thread_within(cpu, &allowed)
}

/// [`pin_current_thread`] against an allowed set the caller already holds
/// (e.g. the one a [`crate::PlacementPlan`] was computed from), so threads
/// pinned after the main thread do not see the main thread's own pin.
pub fn pin_current_thread_within(cpu: usize, allowed: &[usize]) -> Result<(), NumaError> {
    if !allowed.contains(&cpu) {
        return Err(NumaError::CpuNotAllowed {
            cpu,
            allowed: crate::format_cpu_list(allowed),
        });
    }
    if !core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
        return Err(NumaError::PinFailed { cpu });
    }
    let actual = current_thread_affinity()?;
    if actual != [cpu] {
        return Err(NumaError::PinNotApplied {
            cpu,
            actual: crate::format_cpu_list(&actual),
        });
    }
    Ok(())
}

/// The effective cpuset of this process's cgroup, read below `root` (`/` for
/// the running system): `<root>/proc/self/cgroup` names the cgroup,
/// `<root>/proc/self/mountinfo` where its hierarchy is mounted. `None` when no
/// cpuset hierarchy is mounted or its file is absent (no restriction known).
pub fn cgroup_cpuset(root: &Path) -> Result<Option<Vec<usize>>, NumaError> {
    let read = |path: PathBuf| -> Result<Option<String>, NumaError> {
        read_if_exists(&path).map_err(|source| NumaError::Io { path, source })
    };
    let (Some(cgroups), Some(mountinfo)) = (
        read(root.join("proc/self/cgroup"))?,
        read(root.join("proc/self/mountinfo"))?,
    ) else {
        return Ok(None);
    };
    // v1 first (a hybrid host's cpuset controller lives there), then v2.
    let candidates = [
        (false, "cpuset.effective_cpus"),
        (false, "cpuset.cpus"),
        (true, "cpuset.cpus.effective"),
    ];
    for (v2, file) in candidates {
        let Some(cgroup_path) = cgroup_path(&cgroups, v2) else {
            continue;
        };
        let Some((mount_root, mount_point)) = cgroup_mount(&mountinfo, v2) else {
            continue;
        };
        // Inside a cgroup namespace or bind mount, the mount shows the
        // hierarchy from `mount_root` down: strip it from the cgroup path.
        let relative = cgroup_path
            .strip_prefix(mount_root)
            .unwrap_or(cgroup_path)
            .trim_start_matches('/');
        let dir = root
            .join(mount_point.trim_start_matches('/'))
            .join(relative);
        let path = dir.join(file);
        if let Some(text) = read(path.clone())? {
            let cpus =
                parse_cpu_list(&text).map_err(|source| NumaError::CpuList { path, source })?;
            // An empty effective set (v2 cgroup without the controller) means
            // "inherit", not "no cpus".
            if !cpus.is_empty() {
                return Ok(Some(cpus));
            }
        }
    }
    Ok(None)
}

/// The process's cgroup path in the cpuset v1 hierarchy, or the v2 one.
fn cgroup_path(cgroups: &str, v2: bool) -> Option<&str> {
    cgroups.lines().find_map(|line| {
        let mut fields = line.splitn(3, ':');
        let (id, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        let matches = if v2 {
            id == "0" && controllers.is_empty()
        } else {
            controllers.split(',').any(|c| c == "cpuset")
        };
        matches.then_some(path)
    })
}

/// `(root within the hierarchy, mount point)` of the cpuset v1 or the v2 mount.
fn cgroup_mount(mountinfo: &str, v2: bool) -> Option<(&str, &str)> {
    mountinfo.lines().find_map(|line| {
        // mountinfo: id parent major:minor root mount-point options [optional...] - fstype source super-options
        let (before, after) = line.split_once(" - ")?;
        let mut left = before.split(' ');
        let root = left.nth(3)?;
        let mount_point = left.next()?;
        let mut right = after.split(' ');
        let fstype = right.next()?;
        let super_options = right.nth(1).unwrap_or("");
        let matches = if v2 {
            fstype == "cgroup2"
        } else {
            fstype == "cgroup" && super_options.split(',').any(|o| o == "cpuset")
        };
        matches.then_some((root, mount_point))
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design
mod tests {
    use super::*;

    #[test]
    fn finds_v1_and_v2_entries() {
        let cgroups = "4:memory:/x\n3:cpuset:/job\n0::/svc\n";
        assert_eq!(cgroup_path(cgroups, false), Some("/job"));
        assert_eq!(cgroup_path(cgroups, true), Some("/svc"));
        let mountinfo = "34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset\n\
                         41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup_mount(mountinfo, false),
            Some(("/", "/sys/fs/cgroup/cpuset"))
        );
        assert_eq!(
            cgroup_mount(mountinfo, true),
            Some(("/", "/sys/fs/cgroup/unified"))
        );
    }
}
