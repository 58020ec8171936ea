//! One memory cgroup per instance, on cgroup v1 or v2 (detected, not assumed).
//!
//! Layout: `<memory hierarchy root>/<group>/<function>/<instance>`, where
//! `<group>` is `aetherless` for aetherd (tests use their own group so they
//! never touch each other's instances).
//!
//! | | v1 (`/sys/fs/cgroup/memory`) | v2 (`memory` in `cgroup.controllers`) |
//! |---|---|---|
//! | limit | `memory.limit_in_bytes` | `memory.max` |
//! | no swap | `memory.swappiness` = 0 | `memory.swap.max` = 0 |
//! | OOM scope | the victim process | `memory.oom.group` = 1: the whole instance |
//! | OOM kills | `memory.oom_control`: `oom_kill N` | `memory.events`: `oom_kill N` |
//! | enable | — | `+memory` in `cgroup.subtree_control` of every ancestor we own |
//!
//! Removing an instance group first kills every process in it (`cgroup.kill`
//! on v2 when present, else SIGKILL to each pid in `cgroup.procs`).
//! [`CgroupRoot::cleanup_stale`] does this for every leftover group of a
//! previous aetherd, which is what guarantees that no handler survives an
//! aetherd that was SIGKILLed even if a parent-death signal was missed.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Errors of cgroup handling.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// No cgroup hierarchy with the memory controller is mounted.
    #[error("no memory cgroup controller found: neither a cgroup v1 hierarchy with `memory` nor a cgroup2 mount listing `memory` in cgroup.controllers (checked /proc/self/mountinfo)")]
    NoMemoryController,
    /// A cgroup file or directory operation failed.
    #[error("cgroup {op} {path}: {source}")]
    Io {
        /// What we tried (`mkdir`, `write`, `read`, `rmdir`).
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A name would escape the cgroup tree.
    #[error("invalid cgroup name {name:?}: must be non-empty and contain no '/' or '..'")]
    BadName {
        /// The name.
        name: String,
    },
    /// cgroup v2 refused to enable `memory` for children of a group that
    /// holds processes itself ("no internal processes" rule).
    #[error("cgroup v2: cannot enable the memory controller below {path}: it holds processes itself (EBUSY). Run aetherd in a cgroup namespace whose root has no processes, or move those processes into a child group first")]
    SubtreeBusy {
        /// The group whose `cgroup.subtree_control` refused.
        path: PathBuf,
    },
    /// Processes were still in the group after repeated SIGKILLs.
    #[error("cgroup {path} still has processes after kill: {pids:?}")]
    NotEmpty {
        /// The group.
        path: PathBuf,
        /// Remaining pids.
        pids: Vec<i32>,
    },
}

fn io_err<'p>(op: &'static str, path: &'p Path) -> impl FnOnce(io::Error) -> CgroupError + 'p {
    move |source| CgroupError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Which cgroup version carries the memory controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    /// Legacy hierarchy with the memory controller.
    V1,
    /// Unified hierarchy with `memory` available.
    V2,
}

/// Our subtree (`<mount>/<group>`) of the memory hierarchy.
#[derive(Debug, Clone)]
pub struct CgroupRoot {
    version: CgroupVersion,
    mount: PathBuf,
    base: PathBuf,
}

/// What [`CgroupRoot::cleanup_stale`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StaleCleanup {
    /// Processes killed.
    pub killed: usize,
    /// Instance groups removed.
    pub removed: usize,
}

fn check_name(name: &str) -> Result<(), CgroupError> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(CgroupError::BadName {
            name: name.to_owned(),
        });
    }
    Ok(())
}

/// Finds the memory controller's mount in a `/proc/self/mountinfo` text.
fn find_memory_mount(mountinfo: &str) -> Option<(CgroupVersion, PathBuf)> {
    let mut v2 = None;
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let Some(mount_point) = left.split(' ').nth(4) else {
            continue;
        };
        let mut r = right.split(' ');
        let fstype = r.next().unwrap_or_default();
        let _source = r.next();
        let opts = r.next().unwrap_or_default();
        match fstype {
            "cgroup" if opts.split(',').any(|o| o == "memory") => {
                return Some((CgroupVersion::V1, PathBuf::from(mount_point)));
            }
            "cgroup2" if v2.is_none() => {
                let ctrl = fs::read_to_string(Path::new(mount_point).join("cgroup.controllers"))
                    .unwrap_or_default();
                if ctrl.split_whitespace().any(|c| c == "memory") {
                    v2 = Some((CgroupVersion::V2, PathBuf::from(mount_point)));
                }
            }
            _ => {}
        }
    }
    v2
}

fn write_file(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(path, value).map_err(io_err("write", path))
}

fn mkdir(path: &Path) -> Result<(), CgroupError> {
    match fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io_err("mkdir", path)(e)),
    }
}

impl CgroupRoot {
    /// Finds the memory controller (v1 preferred: when it is bound to v1 it
    /// cannot be on v2) and creates `<mount>/<group>`.
    pub fn detect(group: &str) -> Result<Self, CgroupError> {
        let path = Path::new("/proc/self/mountinfo");
        let text = fs::read_to_string(path).map_err(io_err("read", path))?;
        let (version, mount) = find_memory_mount(&text).ok_or(CgroupError::NoMemoryController)?;
        Self::at(version, &mount, group)
    }

    /// Uses the memory hierarchy mounted at `mount` (a fixture tree in tests).
    pub fn at(version: CgroupVersion, mount: &Path, group: &str) -> Result<Self, CgroupError> {
        check_name(group)?;
        let base = mount.join(group);
        if version == CgroupVersion::V2 {
            enable_memory(mount)?;
        }
        mkdir(&base)?;
        if version == CgroupVersion::V2 {
            enable_memory(&base)?;
        }
        Ok(Self {
            version,
            mount: mount.to_path_buf(),
            base,
        })
    }

    /// The detected version.
    pub fn version(&self) -> CgroupVersion {
        self.version
    }

    /// `<mount>/<group>`.
    pub fn base(&self) -> &Path {
        &self.base
    }

    /// The hierarchy's mount point.
    pub fn mount(&self) -> &Path {
        &self.mount
    }

    /// Creates `<base>/<function>/<instance>` with `limit_bytes` and no swap.
    pub fn create(
        &self,
        function: &str,
        instance: &str,
        limit_bytes: u64,
    ) -> Result<InstanceCgroup, CgroupError> {
        check_name(function)?;
        check_name(instance)?;
        let fdir = self.base.join(function);
        mkdir(&fdir)?;
        if self.version == CgroupVersion::V2 {
            enable_memory(&fdir)?;
        }
        let path = fdir.join(instance);
        mkdir(&path)?;
        let cg = InstanceCgroup {
            version: self.version,
            path,
            limit_bytes,
        };
        let limit = limit_bytes.to_string();
        match self.version {
            CgroupVersion::V1 => {
                write_file(&cg.path.join("memory.limit_in_bytes"), &limit)?;
                // Absent when the kernel has no swap accounting; not fatal.
                let _ = fs::write(cg.path.join("memory.swappiness"), "0");
            }
            CgroupVersion::V2 => {
                write_file(&cg.path.join("memory.max"), &limit)?;
                // memory.swap.max exists only with swap accounting.
                let swap = cg.path.join("memory.swap.max");
                if swap.exists() {
                    write_file(&swap, "0")?;
                }
                // An OOM kills the whole instance (handler and its children)
                // rather than leaving a half-dead process tree.
                let group = cg.path.join("memory.oom.group");
                if group.exists() {
                    write_file(&group, "1")?;
                }
            }
        }
        Ok(cg)
    }

    /// Kills every process in every group under `<base>` and removes the
    /// groups: leftovers of an aetherd that died without cleaning up.
    pub fn cleanup_stale(&self) -> Result<StaleCleanup, CgroupError> {
        let mut report = StaleCleanup::default();
        let Ok(functions) = fs::read_dir(&self.base) else {
            return Ok(report);
        };
        for f in functions.flatten() {
            let fpath = f.path();
            if !fpath.is_dir() {
                continue;
            }
            for i in fs::read_dir(&fpath)
                .map_err(io_err("read", &fpath))?
                .flatten()
            {
                let ipath = i.path();
                if !ipath.is_dir() {
                    continue;
                }
                report.killed += kill_all(self.version, &ipath)?;
                remove_dir_retrying(&ipath)?;
                report.removed += 1;
            }
            remove_dir_retrying(&fpath)?;
        }
        Ok(report)
    }
}

fn enable_memory(dir: &Path) -> Result<(), CgroupError> {
    let ctl = dir.join("cgroup.subtree_control");
    let current = fs::read_to_string(&ctl).unwrap_or_default();
    if current.split_whitespace().any(|c| c == "memory") {
        return Ok(());
    }
    match fs::write(&ctl, "+memory") {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Err(CgroupError::SubtreeBusy {
            path: dir.to_path_buf(),
        }),
        Err(e) => Err(io_err("write", &ctl)(e)),
    }
}

fn read_pids(group: &Path) -> Result<Vec<i32>, CgroupError> {
    let p = group.join("cgroup.procs");
    match fs::read_to_string(&p) {
        Ok(s) => Ok(s.lines().filter_map(|l| l.trim().parse().ok()).collect()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io_err("read", &p)(e)),
    }
}

/// SIGKILLs everything in `group` until `cgroup.procs` is empty; returns how
/// many pids were signalled.
fn kill_all(version: CgroupVersion, group: &Path) -> Result<usize, CgroupError> {
    let mut killed = 0;
    let kill_file = group.join("cgroup.kill");
    for attempt in 0..200 {
        let pids = read_pids(group)?;
        if pids.is_empty() {
            return Ok(killed);
        }
        if attempt == 0 && version == CgroupVersion::V2 && kill_file.exists() {
            let _ = fs::write(&kill_file, "1");
        }
        for pid in &pids {
            // SAFETY: kill(2) has no memory-safety preconditions; a stale pid
            // yields ESRCH, which we ignore.
            unsafe { libc::kill(*pid, libc::SIGKILL) };
        }
        if attempt == 0 {
            killed = pids.len();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Err(CgroupError::NotEmpty {
        path: group.to_path_buf(),
        pids: read_pids(group)?,
    })
}

/// rmdir, retrying while the kernel still holds the group (EBUSY right after
/// the last task died).
fn remove_dir_retrying(path: &Path) -> Result<(), CgroupError> {
    let mut last = None;
    for _ in 0..100 {
        match fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                last = Some(e);
                std::thread::sleep(Duration::from_millis(2));
            }
            // A fixture tree (plain directory with files) cannot be rmdir'ed
            // while it holds files; cgroupfs files never block rmdir.
            Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => {
                return fs::remove_dir_all(path).map_err(io_err("rmdir", path));
            }
            Err(e) => return Err(io_err("rmdir", path)(e)),
        }
    }
    Err(io_err("rmdir", path)(last.unwrap_or_else(|| {
        io::Error::from_raw_os_error(libc::EBUSY)
    })))
}

/// One instance's memory cgroup.
#[derive(Debug)]
pub struct InstanceCgroup {
    version: CgroupVersion,
    path: PathBuf,
    limit_bytes: u64,
}

impl InstanceCgroup {
    /// The group directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The memory limit written at creation.
    pub fn limit_bytes(&self) -> u64 {
        self.limit_bytes
    }

    /// Moves process `pid` into the group.
    pub fn add_pid(&self, pid: i32) -> Result<(), CgroupError> {
        write_file(&self.path.join("cgroup.procs"), &pid.to_string())
    }

    /// Pids currently in the group.
    pub fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        read_pids(&self.path)
    }

    /// OOM kills the kernel performed in this group so far.
    pub fn oom_kills(&self) -> Result<u64, CgroupError> {
        let file = match self.version {
            CgroupVersion::V1 => "memory.oom_control",
            CgroupVersion::V2 => "memory.events",
        };
        let p = self.path.join(file);
        let text = fs::read_to_string(&p).map_err(io_err("read", &p))?;
        Ok(text
            .lines()
            .filter_map(|l| l.strip_prefix("oom_kill "))
            .find_map(|n| n.trim().parse().ok())
            .unwrap_or(0))
    }

    /// Kills every process in the group and removes it.
    pub fn destroy(self) -> Result<usize, CgroupError> {
        let killed = kill_all(self.version, &self.path)?;
        remove_dir_retrying(&self.path)?;
        Ok(killed)
    }
}

/// Makes moving a process into a cgroup cheap: with `favordynmods` on a
/// cgroup2 hierarchy the kernel keeps its global thread-group lock in the
/// mode writers take without waiting for an RCU grace period. Without it,
/// each write to a fresh cgroup's `cgroup.procs` (every spawn and every
/// restore moves a process) waited ≈ 5 ms here; with it ≈ 0.2 ms. The cost is
/// a slightly slower fork/exit for everyone, the trade the kernel documents
/// for hosts that create and fill cgroups all the time.
///
/// Remounts the first cgroup2 mount without it (`mount -o
/// remount,favordynmods`, which keeps its other options) and says what it
/// did; `AETHER_CGROUP_FAVORDYNMODS=0` leaves the host alone.
pub fn favor_dynamic_modifications() -> Result<Option<PathBuf>, String> {
    if std::env::var("AETHER_CGROUP_FAVORDYNMODS").is_ok_and(|v| v == "0") {
        return Ok(None);
    }
    let mounts =
        fs::read_to_string("/proc/self/mounts").map_err(|e| format!("/proc/self/mounts: {e}"))?;
    let Some((path, opts)) = mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(2) == Some(&"cgroup2")).then(|| (f.get(1).copied(), f.get(3).copied()))
    }) else {
        return Ok(None);
    };
    let (Some(path), Some(opts)) = (path, opts) else {
        return Ok(None);
    };
    if opts.split(',').any(|o| o == "favordynmods") {
        return Ok(None);
    }
    let out = std::process::Command::new("mount")
        .args(["-o", "remount,favordynmods", path])
        .output()
        .map_err(|e| format!("mount: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "mount -o remount,favordynmods {path}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(Some(PathBuf::from(path)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_prefers_v1_memory() {
        let text = "\
30 23 0:26 / /sys/fs/cgroup rw,nosuid - tmpfs tmpfs ro,mode=755\n\
31 30 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw,nsdelegate\n\
35 30 0:31 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        assert_eq!(
            find_memory_mount(text),
            Some((CgroupVersion::V1, PathBuf::from("/sys/fs/cgroup/memory")))
        );
    }

    #[test]
    fn v2_layout_on_fixture_tree() {
        let dir = tempfile::tempdir().unwrap();
        let root = CgroupRoot::at(CgroupVersion::V2, dir.path(), "aetherless").unwrap();
        assert_eq!(
            fs::read_to_string(dir.path().join("cgroup.subtree_control")).unwrap(),
            "+memory"
        );
        fs::write(root.base().join("memory.swap.max"), "").unwrap();
        let f = root.base().join("fn");
        fs::create_dir(&f).unwrap();
        fs::create_dir(f.join("i1")).unwrap();
        fs::write(f.join("i1").join("memory.swap.max"), "max").unwrap();
        fs::write(f.join("i1").join("memory.oom.group"), "0").unwrap();
        let cg = root.create("fn", "i1", 32 << 20).unwrap();
        assert_eq!(
            fs::read_to_string(cg.path().join("memory.max")).unwrap(),
            (32u64 << 20).to_string()
        );
        assert_eq!(
            fs::read_to_string(cg.path().join("memory.swap.max")).unwrap(),
            "0"
        );
        assert_eq!(
            fs::read_to_string(cg.path().join("memory.oom.group")).unwrap(),
            "1"
        );
        assert_eq!(
            fs::read_to_string(f.join("cgroup.subtree_control")).unwrap(),
            "+memory"
        );
        fs::write(
            cg.path().join("memory.events"),
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
        )
        .unwrap();
        assert_eq!(cg.oom_kills().unwrap(), 1);
        assert!(root.create("../x", "i", 1).is_err());
    }
}
