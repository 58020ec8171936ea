//! CRIU through its command line: dump a running instance, restore copies.
//!
//! ```text
//! dump:    criu dump -t PID -D IMAGES -W WORK -o dump.log -v4 [--leave-running]
//!               [--external net[INODE]:KEY] [--tcp-established] [--shell-job] [--file-locks]
//!               [--network-lock skip]
//! restore: criu restore -D IMAGES -W WORK -o restore.log -v4 --restore-detached
//!               --pidfile WORK/restore.pid [--restore-sibling] [--inherit-fd fd[N]:KEY]
//!               [--manage-cgroups=ignore] [--tcp-established] [--shell-job] [--file-locks]
//! ```
//!
//! A network namespace that was dumped as external (`net[INODE]:KEY`) is not
//! saved in the images: at restore the caller hands a pre-made namespace in
//! as an inherited fd under the same KEY, and the restored process tree joins
//! it (CRIU does not create or restore a namespace, which is the slow part).
//!
//! aetherd's handlers carry `PR_SET_PDEATHSIG(SIGKILL)`, which CRIU restores:
//! restore them with `--restore-sibling` ([`RestoreOptions::sibling`]) so their
//! parent is the caller, not the `criu` process that exits at once.
//!
//! Logs go to the work directory (the images directory unless another is
//! given), so several restores of one image set at once can each have their
//! own; a failure carries the tail of its log.

pub mod runcache;

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use runcache::RunCacheNs;

use crate::instance::spawn::pidfd_open;

/// Where CRIU is installed unless told otherwise (a CRIU ≥ 4.2 built by setup).
pub const DEFAULT_CRIU_PATH: &str = "/usr/local/sbin/criu";

/// Dumps run one at a time. Dumping the init of a pid namespace makes CRIU's
/// parasite mount a private proc on a fixed-name directory in the task's root
/// (`parasite_get_proc_fd`): two dumps of instances that share a root collide
/// with `Can't create a directory (-17)` (EEXIST) and one fails. The
/// handlers of every aetherd on the host share that root, so the exclusion
/// is host-wide: this mutex between threads, and an `flock` on
/// [`DUMP_LOCK_FILE`] between processes.
static DUMP_LOCK: Mutex<()> = Mutex::new(());

/// The host-wide dump lock (see [`DUMP_LOCK`]).
pub const DUMP_LOCK_FILE: &str = "/run/lock/aetherless-criu-dump.lock";

/// Holds the host-wide dump lock until dropped; `None` when the lock file
/// cannot be opened (then only this process's mutex excludes).
fn host_dump_lock() -> Option<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = Path::new(DUMP_LOCK_FILE).parent()?;
    let _ = fs::create_dir_all(dir);
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(DUMP_LOCK_FILE)
        .ok()?;
    loop {
        // SAFETY: flock(2) on an fd we own; it blocks until the lock is ours.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
            return Some(file);
        }
        if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return None;
        }
    }
}

/// How many log lines a failure carries.
const LOG_TAIL_LINES: usize = 40;

/// Errors of running CRIU.
#[derive(Debug, thiserror::Error)]
pub enum CriuError {
    /// No executable at the configured path.
    #[error("criu is not installed at {path} (setup builds CRIU >= 4.2 there)")]
    NotInstalled {
        /// The configured path.
        path: PathBuf,
    },
    /// The `criu` process could not be started.
    #[error("starting {path}: {source}")]
    Exec {
        /// The configured path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// CRIU ran and failed.
    #[error("criu {action} failed ({status}); log {log}:\n{log_tail}")]
    Failed {
        /// `dump`, `restore` or `check`.
        action: &'static str,
        /// Its exit status.
        status: ExitStatus,
        /// Its log file.
        log: PathBuf,
        /// The last lines of the log (or its stderr when there is no log).
        log_tail: String,
    },
    /// A file CRIU needs or writes could not be handled.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// `criu restore` ran past its budget and was killed.
    #[error("criu restore took more than {} ms (killed after {} ms); log {log}:\n{log_tail}", budget.as_millis(), elapsed.as_millis())]
    Timeout {
        /// The budget (`restore_timeout_ms`).
        budget: Duration,
        /// When it was killed.
        elapsed: Duration,
        /// Its log file.
        log: PathBuf,
        /// The last lines of the log.
        log_tail: String,
    },
    /// CRIU succeeded but its pidfile holds no pid.
    #[error("criu restore wrote no pid into {path} (content {content:?})")]
    BadPidfile {
        /// The pidfile.
        path: PathBuf,
        /// What it held.
        content: String,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CriuError + 'a {
    move |source| CriuError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// A network namespace dumped as external: `--external net[inode]:key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalNetns {
    /// The namespace's inode (`stat /proc/PID/ns/net`), see [`netns_inode`].
    pub inode: u64,
    /// The name a restore hands the replacement namespace in under.
    pub key: String,
}

/// Options of [`Criu::dump`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DumpOptions {
    /// `--leave-running`: the process goes on serving after the dump.
    pub leave_running: bool,
    /// Leave the network namespace out of the images (joined at restore).
    pub external_netns: Option<ExternalNetns>,
    /// `--network-lock skip`: no iptables lock/unlock around the dump *and
    /// every restore of these images* (CRIU records the method in the
    /// images; a restore cannot change it). Sound when the network namespace
    /// is external and private to the process. Here it took the dump from
    /// ≈ 140 to ≈ 65 ms and a restore from ≈ 50 to ≈ 15 ms: the iptables runs
    /// in the fresh namespace are followed by a 25–45 ms stall.
    pub skip_network_lock: bool,
    /// `--tcp-established`: dump open TCP connections too.
    pub tcp_established: bool,
    /// `--shell-job`: the process belongs to a session outside the tree.
    pub shell_job: bool,
    /// `--file-locks`: the process holds file locks.
    pub file_locks: bool,
    /// Logs go here instead of the images directory.
    pub work_dir: Option<PathBuf>,
}

/// What a dump produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DumpReport {
    /// Wall time of the `criu dump` process.
    pub duration: Duration,
    /// Total size of the image files (`*.img`).
    pub images_bytes: u64,
}

/// Options of [`Criu::restore`].
#[derive(Debug, Default)]
pub struct RestoreOptions<'a> {
    /// A pre-made network namespace joined in place of the external one
    /// dumped under `key`: `(namespace fd, key)`.
    pub netns: Option<(BorrowedFd<'a>, String)>,
    /// Open files handed in for files of the dump: `--inherit-fd fd[N]:KEY`,
    /// where KEY is a dumped regular file's path without its leading `/`
    /// (e.g. a restored copy's own log file in place of the original's).
    /// At most 7 besides the network namespace.
    pub inherit_files: Vec<(BorrowedFd<'a>, String)>,
    /// `--restore-sibling`: the restored root becomes a child of the caller
    /// (not of the `criu` process), which must then reap it. Needed for
    /// handlers spawned with `PR_SET_PDEATHSIG` (aetherd's are): CRIU restores
    /// the death signal, and without this it fires when `criu` exits.
    pub sibling: bool,
    /// A cgroup directory (made ahead, with its limits) the restored tree
    /// lives in: `criu` itself is moved into it before it runs and is told
    /// `--manage-cgroups=ignore`, so the tree stays there and its pages are
    /// charged there from the start. Without it, CRIU recreates the cgroup
    /// the process was dumped in and every copy shares that one.
    pub cgroup: Option<PathBuf>,
    /// `--tcp-established`, as at dump.
    pub tcp_established: bool,
    /// `--shell-job`, as at dump.
    pub shell_job: bool,
    /// `--file-locks`, as at dump.
    pub file_locks: bool,
    /// Log and pidfile directory; must differ between concurrent restores of
    /// one image set. Defaults to the images directory.
    pub work_dir: Option<PathBuf>,
    /// Nice value of `criu` (0: as the caller): a restore nobody waits for
    /// should not take CPU time from requests being served.
    pub nice: i32,
}

/// A process tree CRIU restored (detached; our child only when restored with
/// [`RestoreOptions::sibling`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestoredProcess {
    /// The root's pid as seen from our pid namespace.
    pub pid: i32,
    /// Wall time of the `criu restore` process.
    pub duration: Duration,
}

/// The `criu` command line.
#[derive(Debug, Clone)]
pub struct Criu {
    path: PathBuf,
    run_cache: Option<Arc<RunCacheNs>>,
}

impl Default for Criu {
    fn default() -> Self {
        Self::new(DEFAULT_CRIU_PATH)
    }
}

impl Criu {
    /// CRIU at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            run_cache: None,
        }
    }

    /// Restores run in a mount namespace whose `/run` is a tmpfs, so CRIU
    /// keeps its kernel-probe cache between runs (see [`runcache`]); for
    /// hosts whose `/run` is not a tmpfs.
    pub fn with_run_cache(mut self) -> Result<Self, CriuError> {
        self.run_cache = Some(Arc::new(RunCacheNs::new()?));
        Ok(self)
    }

    /// The configured path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn command(&self) -> Result<Command, CriuError> {
        if !self.path.is_file() {
            return Err(CriuError::NotInstalled {
                path: self.path.clone(),
            });
        }
        let mut cmd = Command::new(&self.path);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        Ok(cmd)
    }

    /// `criu ACTION -D images -W work -o work/ACTION.log -v4 [flags]`, with
    /// the work directory created; returns the command and its log path.
    fn action(
        &self,
        action: &str,
        images_dir: &Path,
        work_dir: Option<&Path>,
        flags: Flags,
    ) -> Result<(Command, PathBuf), CriuError> {
        let work = work_dir.unwrap_or(images_dir);
        fs::create_dir_all(work).map_err(io_err("creating", work))?;
        let log = work.join(format!("{action}.log"));
        let mut cmd = self.command()?;
        cmd.arg(action)
            .arg("-D")
            .arg(images_dir)
            .arg("-W")
            .arg(work)
            .arg("-o")
            .arg(&log)
            .arg("-v4");
        for (on, flag) in [
            (flags.tcp_established, "--tcp-established"),
            (flags.shell_job, "--shell-job"),
            (flags.file_locks, "--file-locks"),
        ] {
            if on {
                cmd.arg(flag);
            }
        }

        Ok((cmd, log))
    }

    fn run(
        &self,
        mut cmd: Command,
        action: &'static str,
        log: &Path,
    ) -> Result<Duration, CriuError> {
        let started = Instant::now();
        let child = self.spawn(&mut cmd)?;
        finish(child, started, action, log)
    }

    fn spawn(&self, cmd: &mut Command) -> Result<Child, CriuError> {
        cmd.spawn().map_err(|source| CriuError::Exec {
            path: self.path.clone(),
            source,
        })
    }

    /// `criu check`: whether this kernel and this CRIU work together.
    pub fn check(&self) -> Result<(), CriuError> {
        let mut cmd = self.command()?;
        cmd.arg("check");
        // `check` logs to stderr; run() falls back to it.
        self.run(cmd, "check", Path::new("/dev/null/criu-check.log"))
            .map(drop)
    }

    /// Dumps the process tree rooted at `pid` into `images_dir` (created if
    /// missing).
    pub fn dump(
        &self,
        pid: i32,
        images_dir: &Path,
        opts: &DumpOptions,
    ) -> Result<DumpReport, CriuError> {
        fs::create_dir_all(images_dir).map_err(io_err("creating", images_dir))?;
        let flags = Flags {
            tcp_established: opts.tcp_established,
            shell_job: opts.shell_job,
            file_locks: opts.file_locks,
        };
        let (mut cmd, log) = self.action("dump", images_dir, opts.work_dir.as_deref(), flags)?;
        cmd.arg("-t").arg(pid.to_string());
        if opts.leave_running {
            cmd.arg("--leave-running");
        }
        if opts.skip_network_lock {
            cmd.arg("--network-lock").arg("skip");
        }
        if let Some(ns) = &opts.external_netns {
            cmd.arg("--external")
                .arg(format!("net[{}]:{}", ns.inode, ns.key));
        }
        let duration = {
            // A poisoned lock guards nothing but the exclusion itself.
            let _one_at_a_time = DUMP_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
            // Released when the file closes at the end of this block.
            let _host_wide = host_dump_lock();
            self.run(cmd, "dump", &log)?
        };
        Ok(DumpReport {
            duration,
            images_bytes: images_bytes(images_dir)?,
        })
    }

    /// Restores the images in `images_dir` as a detached process tree
    /// (blocking: [`Criu::restore_start`] then [`PendingRestore::wait`]).
    pub fn restore(
        &self,
        images_dir: &Path,
        opts: &RestoreOptions<'_>,
    ) -> Result<RestoredProcess, CriuError> {
        self.restore_start(images_dir, opts)?.wait()
    }

    /// Starts `criu restore` and returns at once. With
    /// [`RestoreOptions::sibling`] the restored root's parent is the calling
    /// *thread*: its death signal fires when that thread exits, so start
    /// restores from a thread that outlives the instance.
    pub fn restore_start(
        &self,
        images_dir: &Path,
        opts: &RestoreOptions<'_>,
    ) -> Result<PendingRestore, CriuError> {
        let flags = Flags {
            tcp_established: opts.tcp_established,
            shell_job: opts.shell_job,
            file_locks: opts.file_locks,
        };
        let work = opts.work_dir.as_deref().unwrap_or(images_dir);
        let (mut cmd, log) = self.action("restore", images_dir, Some(work), flags)?;
        let pidfile = work.join("restore.pid");
        match fs::remove_file(&pidfile) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(io_err("removing", &pidfile)(e));
            }
            _ => {}
        }
        cmd.arg("--restore-detached").arg("--pidfile").arg(&pidfile);
        if opts.sibling {
            cmd.arg("--restore-sibling");
        }
        let procs = match &opts.cgroup {
            Some(cg) => {
                cmd.arg("--manage-cgroups=ignore");
                let path = cg.join("cgroup.procs");
                let file = fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io_err("opening", &path))?;
                Some(file)
            }
            None => None,
        };
        let procs_fd = procs.as_ref().map(AsRawFd::as_raw_fd);
        let mut inherit = [-1; 8];
        for (slot, (fd, key)) in inherit
            .iter_mut()
            .zip(opts.netns.iter().chain(opts.inherit_files.iter()))
        {
            let raw = fd.as_raw_fd();
            cmd.arg("--inherit-fd").arg(format!("fd[{raw}]:{key}"));
            *slot = raw;
        }
        let mntns = self.run_cache.as_ref().map(|ns| ns.fd().as_raw_fd());
        let nice = opts.nice;
        let in_child = move || {
            if nice != 0 {
                // SAFETY: setpriority(2) on this (child) process only.
                if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) } != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            // criu does not outlive the thread that started it (aetherd's).
            // SAFETY: prctl(2) with integer arguments only.
            if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } != 0 {
                return Err(io::Error::last_os_error());
            }
            if let Some(fd) = mntns {
                // SAFETY: setns(2) on an open namespace fd; it changes only
                // this single-threaded child's mount namespace.
                if unsafe { libc::setns(fd, libc::CLONE_NEWNS) } != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            if let Some(fd) = procs_fd {
                // "0" moves the writing process: the child, before it execs criu.
                // SAFETY: write(2) of a 1-byte static buffer to an open fd.
                if unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) } != 1 {
                    return Err(io::Error::last_os_error());
                }
            }
            for fd in inherit.into_iter().filter(|fd| *fd >= 0) {
                // SAFETY: fcntl(2) on an fd number; it only changes that fd's
                // flags in this (child) process.
                if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        };
        // SAFETY: the closure runs in the forked child before exec and only
        // calls setpriority(2), prctl(2), setns(2), write(2) and fcntl(2), all
        // async-signal-safe, on fds
        // that stay open until spawn returns (`self`'s namespace, `procs` and
        // the borrowed netns fd).
        unsafe {
            cmd.pre_exec(in_child);
        }
        let started = Instant::now();
        let child = self.spawn(&mut cmd)?;
        drop(procs);
        Ok(PendingRestore {
            child,
            started,
            log,
            pidfile,
        })
    }
}

/// A `criu restore` that is running.
#[derive(Debug)]
pub struct PendingRestore {
    child: Child,
    started: Instant,
    log: PathBuf,
    pidfile: PathBuf,
}

impl PendingRestore {
    /// Like [`PendingRestore::wait`], but a `criu` still running `budget`
    /// after it started is killed (SIGKILL) and reaped, and the result is
    /// [`CriuError::Timeout`]. What it had restored so far is left behind:
    /// restore into a pre-made cgroup ([`RestoreOptions::cgroup`]) and kill
    /// what is in it.
    pub fn wait_within(mut self, budget: Duration) -> Result<RestoredProcess, CriuError> {
        let deadline = self.started + budget;
        let pid = i32::try_from(self.child.id()).unwrap_or(i32::MAX);
        let pidfd = pidfd_open(pid).map_err(io_err("pidfd_open of criu", &self.log))?;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(self.kill_over_budget(budget));
            }
            let mut pfd = libc::pollfd {
                fd: pidfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // Round up so a sub-millisecond remainder still waits.
            let ms =
                libc::c_int::try_from(left.as_micros().div_ceil(1000)).unwrap_or(libc::c_int::MAX);
            // SAFETY: poll(2) on one valid pollfd that lives across the call.
            let rc = unsafe { libc::poll(&raw mut pfd, 1, ms) };
            if rc > 0 {
                break;
            }
            if rc < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(io_err("polling criu", &self.log)(e));
                }
            }
        }
        self.wait()
    }

    /// Kills and reaps a `criu` past its `budget`; the error carries the
    /// measured time and the tail of its log.
    fn kill_over_budget(&mut self, budget: Duration) -> CriuError {
        let elapsed = self.started.elapsed();
        let _ = self.child.kill();
        let _ = self.child.wait();
        let log_tail = fs::read_to_string(&self.log)
            .map(|t| tail(&t, LOG_TAIL_LINES))
            .unwrap_or_default();
        CriuError::Timeout {
            budget,
            elapsed,
            log: self.log.clone(),
            log_tail,
        }
    }

    /// Never blocks: `Ok(None)` while `criu` runs within `budget`; once it
    /// ended, the restored process or the failure; past the budget, `criu`
    /// is killed and reaped and the result is [`CriuError::Timeout`] (kill
    /// what it restored through its pre-made cgroup).
    pub fn try_finish(&mut self, budget: Duration) -> Result<Option<RestoredProcess>, CriuError> {
        let status = self
            .child
            .try_wait()
            .map_err(io_err("waiting for criu", &self.log))?;
        let Some(status) = status else {
            if self.started.elapsed() < budget {
                return Ok(None);
            }
            return Err(self.kill_over_budget(budget));
        };
        let took = self.started.elapsed();
        let mut stderr = Vec::new();
        if let Some(mut pipe) = self.child.stderr.take() {
            // criu exited: the pipe holds at most what it wrote, then EOF.
            let _ = io::Read::read_to_end(&mut pipe, &mut stderr);
        }
        let duration = outcome(status, &stderr, took, "restore", &self.log)?;
        read_pidfile(&self.pidfile).map(|pid| Some(RestoredProcess { pid, duration }))
    }

    /// How long `criu` has been running.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Waits for `criu` to finish; the restored root's pid from its pidfile.
    pub fn wait(self) -> Result<RestoredProcess, CriuError> {
        let pidfile = self.pidfile;
        let duration = finish(self.child, self.started, "restore", &self.log)?;
        let pid = read_pidfile(&pidfile)?;
        Ok(RestoredProcess { pid, duration })
    }
}

/// The restored root's pid from `criu restore --pidfile`.
fn read_pidfile(pidfile: &Path) -> Result<i32, CriuError> {
    let content = fs::read_to_string(pidfile).map_err(io_err("reading", pidfile))?;
    content
        .trim()
        .parse::<i32>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| CriuError::BadPidfile {
            path: pidfile.to_path_buf(),
            content: content.clone(),
        })
}

/// Waits for a `criu` process; its wall time since `started`, or the failure
/// with the tail of its log (of its stderr when there is no log).
fn finish(
    child: Child,
    started: Instant,
    action: &'static str,
    log: &Path,
) -> Result<Duration, CriuError> {
    let out = child
        .wait_with_output()
        .map_err(io_err("waiting for criu", log))?;
    outcome(out.status, &out.stderr, started.elapsed(), action, log)
}

/// A finished `criu`'s result: `took`, or the failure with its log tail.
fn outcome(
    status: std::process::ExitStatus,
    stderr: &[u8],
    took: Duration,
    action: &'static str,
    log: &Path,
) -> Result<Duration, CriuError> {
    if status.success() {
        return Ok(took);
    }
    let log_tail = match fs::read_to_string(log) {
        Ok(text) => tail(&text, LOG_TAIL_LINES),
        Err(_) => tail(&String::from_utf8_lossy(stderr), LOG_TAIL_LINES),
    };
    Err(CriuError::Failed {
        action,
        status,
        log: log.to_path_buf(),
        log_tail,
    })
}

/// Options that dump and restore must agree on.
#[derive(Debug, Clone, Copy)]
struct Flags {
    tcp_established: bool,
    shell_job: bool,
    file_locks: bool,
}

/// The inode of `pid`'s network namespace (what `--external net[...]` names).
pub fn netns_inode(pid: i32) -> Result<u64, CriuError> {
    let path = PathBuf::from(format!("/proc/{pid}/ns/net"));
    fs::metadata(&path)
        .map(|m| m.ino())
        .map_err(io_err("stat", &path))
}

/// Total size of the `*.img` files in `dir`.
pub fn images_bytes(dir: &Path) -> Result<u64, CriuError> {
    let mut total = 0;
    for entry in fs::read_dir(dir).map_err(io_err("listing", dir))? {
        let entry = entry.map_err(io_err("listing", dir))?;
        if entry.path().extension().is_some_and(|e| e == "img") {
            total += entry
                .metadata()
                .map_err(io_err("stat", &entry.path()))?
                .len();
        }
    }
    Ok(total)
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn tail_keeps_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
        assert_eq!(tail("", 5), "");
    }

    #[test]
    fn missing_binary_is_typed() {
        let c = Criu::new("/nonexistent/criu");
        let dir = tempfile::tempdir().unwrap();
        match c.dump(1, dir.path(), &DumpOptions::default()) {
            Err(CriuError::NotInstalled { path }) => {
                assert_eq!(path, Path::new("/nonexistent/criu"));
            }
            other => panic!("expected NotInstalled, got {other:?}"),
        }
        assert!(matches!(c.check(), Err(CriuError::NotInstalled { .. })));
    }

    #[test]
    fn images_bytes_counts_only_images() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("pages-1.img"), [0u8; 100]).unwrap();
        fs::write(dir.path().join("core-1.img"), [0u8; 20]).unwrap();
        fs::write(dir.path().join("dump.log"), [0u8; 1000]).unwrap();
        assert_eq!(images_bytes(dir.path()).unwrap(), 120);
    }

    #[test]
    fn netns_inode_matches_proc() {
        let ino = netns_inode(std::process::id().cast_signed()).unwrap();
        let want = fs::metadata("/proc/self/ns/net").unwrap().ino();
        assert_eq!(ino, want);
    }
}
