//! Starting an instance from a CRIU snapshot instead of spawning it.
//!
//! ```text
//! start_restore(spec, id, cgroups, netns, criu, images) -> RestoringInstance
//!     --poll(budget)--> None (criu still running, within budget)
//!                     | Some(Instance)        ready: listening since the dump
//!                     | Err(RestoreFailure)   over budget or failed; nothing left running
//! ```
//!
//! The copy is restored as a sibling (our child, like a spawned instance)
//! into a pre-made network namespace (handed to CRIU under
//! [`NETNS_KEY`]) and a memory cgroup made ahead with the function's limit
//! (`criu` is moved into it before it runs, so the copy's pages are charged
//! there from its first page). Its stdout and stderr, which pointed at the
//! dumped instance's log file, are handed the copy's own log file
//! (`--inherit-fd` keyed by the original's path, recorded at dump time in
//! `source-log` beside the images).
//!
//! Starting a restore forks and execs `criu` and makes a memory cgroup —
//! 5–40 ms of blocking work here — so a [`RestoreLauncher`] thread does it
//! off the executor. That thread is the restored instances' parent (their
//! death signal is tied to it), so it lives as long as its owner.
//!
//! A restored instance needs no handshake: its trigger port was listening
//! when it was dumped, and the listening socket is restored with it.
//! Once restored it gets `SIGCONT` — the *restored signal* of the handler
//! protocol (a no-op for handlers that do not catch it) — unless it is
//! parked frozen in a warm pool, where the thaw's `SIGCONT` is that signal.

use std::fs;
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::cgroup::{CgroupRoot, InstanceCgroup};
use super::netns::Netns;
use super::state::{Lifecycle, LifecycleEvent};
use super::{logs, spawn, Instance, InstanceError, InstanceSpec};
use crate::criu::{Criu, CriuError, PendingRestore, RestoreOptions};
use crate::snapshot::ReadyImages;

/// The key the instance's network namespace is dumped and restored under.
pub const NETNS_KEY: &str = "aether-netns";
/// Nice value of background restores (warm-pool refills, and instances
/// started while the core already serves with one): they would otherwise
/// take CPU time from the requests in flight (on two cores a warm-pool start
/// went from ≈ 4 to ≈ 10 ms p50 once refills started sooner).
pub const BACKGROUND_NICE: i32 = 10;
/// File beside the images naming the dumped instance's log file.
pub const SOURCE_LOG: &str = "source-log";

/// A restore that did not produce an instance. Whatever it had restored is
/// killed and reaped, and its cgroup removed.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// Setting up the copy (log, cgroup) failed before `criu` ran.
    #[error(transparent)]
    Setup(#[from] InstanceError),
    /// `criu` failed or ran past its budget (`CriuError::Timeout` carries
    /// the budget and the measured time).
    #[error(transparent)]
    Criu(#[from] CriuError),
}

impl RestoreError {
    /// Whether the restore was killed at its budget.
    pub fn over_budget(&self) -> bool {
        matches!(self, Self::Criu(CriuError::Timeout { .. }))
    }

    /// Whether the images themselves are at fault (CRIU failed on them), as
    /// opposed to a slow restore or a local set-up problem.
    pub fn images_unusable(&self) -> bool {
        matches!(
            self,
            Self::Criu(CriuError::Failed { .. } | CriuError::BadPidfile { .. })
        )
    }
}

/// An instance being restored.
#[derive(Debug)]
pub struct RestoringInstance {
    id: String,
    spec_port: u16,
    /// The core's CPU, which the copy is pinned to once restored (like a
    /// spawned instance; `criu` itself runs unpinned).
    cpu: Option<usize>,
    function_id: String,
    limit_bytes: u64,
    pending: PendingRestore,
    netns: Option<Netns>,
    cgroup: Option<InstanceCgroup>,
    log_path: PathBuf,
    work_dir: PathBuf,
    started_at: Instant,
    identity: String,
}

/// The log key of the instance dumped into `images` (its log path without
/// the leading `/`), if recorded.
fn source_log_key(images: &Path) -> Option<String> {
    let text = fs::read_to_string(images.join(SOURCE_LOG)).ok()?;
    let key = text.trim().trim_start_matches('/');
    (!key.is_empty()).then(|| key.to_string())
}

/// Starts restoring instance `instance_id` of `spec` from `images` into
/// `netns` and a new cgroup under `cgroups`; returns at once. CRIU's log and
/// pidfile go to `images.work_root/<instance_id>/` (removed on success).
/// The calling thread becomes the copy's parent and must outlive it.
pub fn start_restore(
    spec: &InstanceSpec,
    instance_id: &str,
    cgroups: &CgroupRoot,
    netns: Netns,
    criu: &Criu,
    images: &ReadyImages,
    background: bool,
) -> Result<RestoringInstance, RestoreError> {
    let started_at = Instant::now();
    let log = logs::open_log(&spec.log_dir, &spec.function_id, instance_id)
        .map_err(InstanceError::from)?;
    let cg = cgroups
        .create(&spec.function_id, instance_id, spec.memory_limit_bytes)
        .map_err(InstanceError::from)?;
    let work_dir = images.work_root.join(instance_id);
    let mut inherit_files = Vec::new();
    if let Some(key) = source_log_key(&images.dir) {
        inherit_files.push((log.as_fd(), key));
    }
    let opts = RestoreOptions {
        netns: Some((netns.fd(), NETNS_KEY.to_string())),
        inherit_files,
        sibling: true,
        cgroup: Some(cg.path().to_path_buf()),
        tcp_established: true,
        work_dir: Some(work_dir.clone()),
        nice: if background { BACKGROUND_NICE } else { 0 },
        ..RestoreOptions::default()
    };
    let pending = match criu.restore_start(&images.dir, &opts) {
        Ok(p) => p,
        Err(e) => {
            let _ = cg.destroy();
            return Err(e.into());
        }
    };
    drop(opts);
    drop(log);
    Ok(RestoringInstance {
        id: instance_id.to_string(),
        spec_port: spec.trigger_port,
        cpu: spec.cpu,
        function_id: spec.function_id.clone(),
        limit_bytes: spec.memory_limit_bytes,
        pending,
        netns: Some(netns),
        cgroup: Some(cg),
        log_path: logs::log_path(&spec.log_dir, &spec.function_id, instance_id),
        work_dir,
        started_at,
        identity: images.identity.clone(),
    })
}

impl RestoringInstance {
    /// Instance id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Identity of the images being restored.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Time since the restore started.
    pub fn elapsed(&self) -> Duration {
        self.started_at.elapsed()
    }

    /// Advances without blocking: `Ok(None)` while `criu` runs within
    /// `budget`; the ready instance once restored (sent `SIGCONT` unless
    /// `frozen`, then `SIGSTOP`); on failure everything is cleaned up.
    pub fn poll(
        &mut self,
        budget: Duration,
        frozen: bool,
    ) -> Result<Option<Instance>, RestoreError> {
        let restored = match self.pending.try_finish(budget) {
            Ok(None) => return Ok(None),
            Ok(Some(r)) => r,
            Err(e) => {
                self.clean_up();
                return Err(e.into());
            }
        };
        let pidfd = match spawn::pidfd_open(restored.pid) {
            Ok(fd) => fd,
            Err(source) => {
                self.clean_up();
                return Err(InstanceError::Wait {
                    pid: restored.pid,
                    source,
                }
                .into());
            }
        };
        if let Some(cpu) = self.cpu.filter(|c| *c < libc::CPU_SETSIZE as usize) {
            // SAFETY: an all-zero cpu_set_t is the empty set; CPU_SET writes
            // inside it for cpu < CPU_SETSIZE (checked above).
            let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
            // SAFETY: see above.
            unsafe { libc::CPU_SET(cpu, &mut set) };
            // SAFETY: sched_setaffinity(2) on the restored pid with a valid set.
            let _ =
                unsafe { libc::sched_setaffinity(restored.pid, std::mem::size_of_val(&set), &set) };
        }
        let signal = if frozen { libc::SIGSTOP } else { libc::SIGCONT };
        let _ = spawn::pidfd_signal(pidfd.as_fd(), signal);
        // AETHER_KEEP_RESTORE_LOGS=1 keeps each restore's log (diagnosis).
        if std::env::var_os("AETHER_KEEP_RESTORE_LOGS").is_none() {
            let _ = fs::remove_dir_all(&self.work_dir);
        }
        let mut lifecycle = Lifecycle::new();
        // Spawned then HandshakeOk from the initial state are valid moves.
        let _ = lifecycle.apply(LifecycleEvent::Spawned);
        let _ = lifecycle.apply(LifecycleEvent::HandshakeOk);
        let (Some(netns), cgroup) = (self.netns.take(), self.cgroup.take()) else {
            // Unreachable: both are taken only here or in clean_up, after
            // which poll is not called again.
            return Err(InstanceError::Wait {
                pid: restored.pid,
                source: std::io::Error::other("restore polled after it ended"),
            }
            .into());
        };
        Ok(Some(Instance {
            id: self.id.clone(),
            function_id: self.function_id.clone(),
            pid: restored.pid,
            pidfd,
            netns,
            cgroup,
            limit_bytes: self.limit_bytes,
            port: self.spec_port,
            lifecycle,
            log_path: self.log_path.clone(),
            started_at: self.started_at,
            ready_after: Some(restored.duration),
            exit: None,
            stop_requested: false,
        }))
    }

    /// Kills whatever the restore left in the cgroup, reaps what is our
    /// child, removes the cgroup and the work directory (the log stays).
    fn clean_up(&mut self) {
        if let Some(cg) = self.cgroup.take() {
            let pids = cg.pids().unwrap_or_default();
            if let Err(e) = cg.destroy() {
                tracing::warn!(instance = %self.id, error = %e, "cgroup clean-up after a failed restore");
            }
            for pid in pids {
                // Our child only when restored as a sibling; ECHILD otherwise.
                let _ = spawn::wait_blocking(pid);
            }
        }
        self.netns = None;
    }
}

impl Drop for RestoringInstance {
    fn drop(&mut self) {
        if self.cgroup.is_some() {
            // Abandoned mid-restore: let criu finish or die, then clean up.
            let _ = self.pending.try_finish(Duration::ZERO);
            self.clean_up();
        }
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// What [`RestoreLauncher::launch`] restores (the arguments of
/// [`start_restore`]).
#[derive(Debug)]
pub struct RestoreRequest {
    pub spec: InstanceSpec,
    pub instance_id: String,
    pub cgroups: CgroupRoot,
    pub netns: Netns,
    pub criu: Criu,
    pub images: ReadyImages,
    /// Niced (see [`BACKGROUND_NICE`]).
    pub background: bool,
}

/// A thread that starts restores (see the module docs).
#[derive(Debug)]
pub struct RestoreLauncher {
    tx: Option<flume::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A restore handed to a [`RestoreLauncher`], not started yet.
#[derive(Debug)]
pub struct LaunchingRestore {
    id: String,
    rx: flume::Receiver<Result<RestoringInstance, RestoreError>>,
}

impl LaunchingRestore {
    /// Instance id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The started restore, once the launcher got to it. If this is dropped
    /// first, the launcher drops the restore (killing what it restored).
    pub fn try_get(&self) -> Option<Result<RestoringInstance, RestoreError>> {
        match self.rx.try_recv() {
            Ok(r) => Some(r),
            Err(flume::TryRecvError::Empty) => None,
            Err(flume::TryRecvError::Disconnected) => {
                Some(Err(RestoreError::Setup(InstanceError::Wait {
                    pid: 0,
                    source: io::Error::other("the restore launcher thread is gone"),
                })))
            }
        }
    }
}

impl RestoreLauncher {
    /// Starts the thread (named `name`).
    pub fn new(name: &str) -> io::Result<Self> {
        let (tx, rx) = flume::unbounded::<Job>();
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                unpin_current_thread();
                for job in rx.iter() {
                    job();
                }
            })?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Starts `req` on the launcher thread (see [`start_restore`]).
    pub fn launch(&self, req: RestoreRequest) -> LaunchingRestore {
        let (done, rx) = flume::bounded(1);
        let id = req.instance_id.clone();
        let job: Job = Box::new(move || {
            let r = start_restore(
                &req.spec,
                &req.instance_id,
                &req.cgroups,
                req.netns,
                &req.criu,
                &req.images,
                req.background,
            );
            // If nobody waits any more, the restore is dropped here: killed
            // and reaped by this thread, its parent.
            let _ = done.send(r);
        });
        if let Some(tx) = &self.tx {
            let _ = tx.send(job);
        }
        LaunchingRestore { id, rx }
    }
}

/// Lets the calling thread run on every CPU the process may use. The
/// launcher is started from an executor pinned to one CPU and would pass that
/// pin to `criu` and to the restored task, which then waited for the busy
/// executor's CPU: ≈ 8.5 ms between the task's last restorer step and its
/// final trap, against 0.3 ms unpinned.
fn unpin_current_thread() {
    let Ok(cpus) = numa::allowed_cpus() else {
        return;
    };
    // SAFETY: an all-zero cpu_set_t is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for cpu in cpus.into_iter().filter(|c| *c < libc::CPU_SETSIZE as usize) {
        // SAFETY: CPU_SET writes inside `set` for cpu < CPU_SETSIZE.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    // SAFETY: sched_setaffinity(2) on this thread (0) with a valid set.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) } != 0 {
        tracing::warn!(
            "restore launcher keeps its executor's CPU pin: {}",
            io::Error::last_os_error()
        );
    }
}

impl Drop for RestoreLauncher {
    /// Ends the thread after its queued jobs. Drop it only once the
    /// instances it restored are gone (their death signal fires with it).
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
