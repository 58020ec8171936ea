//! Keeps the desired number of instances of one function on one core.
//!
//! Runtime-agnostic: a [`Supervisor`] is a plain struct driven by
//! [`Supervisor::tick`], which never blocks (handshakes are polled, exits are
//! found with `waitpid(WNOHANG)`). The owner calls `tick` on a timer — every
//! few milliseconds while something is starting or backing off
//! ([`Supervisor::next_tick`] says when), and e.g. every 50 ms otherwise to
//! notice exits. (glommio cannot await arbitrary fds such as a pidfd cheaply,
//! so a tick is the simple, portable choice; [`Instance::pidfd`] is exposed
//! for owners that can poll it.)
//!
//! Restarts back off exponentially: `initial`, ×2 per consecutive failure, up
//! to `max`; the failure count resets once an instance has been ready for
//! `reset_after`. A failure is a crash (any exit nobody asked for, including
//! an OOM kill), a failed handshake or a failed spawn.
//!
//! Stopping: [`Supervisor::begin_shutdown`] (non-blocking; keep ticking
//! until [`Supervisor::is_stopped`]) or the blocking [`Supervisor::shutdown`].
//!
//! The set of ready instances changes only inside `tick`/`set_desired`/
//! `shutdown`; each change bumps [`Supervisor::generation`] and is reported as
//! a [`SupervisorEvent`], so the gateway can add and remove backends.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::cgroup::CgroupRoot;
use super::netns::NetnsPool;
use super::restore::{
    LaunchingRestore, RestoreError, RestoreLauncher, RestoreRequest, RestoringInstance,
};
use super::{start, ExitReason, Instance, InstanceSpec, StartProgress, StartingInstance};
use crate::criu::Criu;
use crate::snapshot::SnapshotStore;

/// Restart backoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// Delay after the first failure.
    pub initial: Duration,
    /// Largest delay.
    pub max: Duration,
    /// Ready time after which the failure count resets.
    pub reset_after: Duration,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
            reset_after: Duration::from_secs(30),
        }
    }
}

impl BackoffPolicy {
    /// Delay before the next start after `failures` consecutive failures.
    pub fn delay(&self, failures: u32) -> Duration {
        if failures == 0 {
            return Duration::ZERO;
        }
        let factor = 1u32.checked_shl(failures - 1).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }
}

/// Counters of one supervisor.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SupervisorStats {
    /// Instances spawned.
    pub spawned: u64,
    /// Spawns that replaced a failed instance.
    pub restarts: u64,
    /// Exits nobody asked for (OOM kills included).
    pub crashes: u64,
    /// OOM kills.
    pub oom_kills: u64,
    /// Failed handshakes and spawns.
    pub start_failures: u64,
}

/// Where instances come from when a snapshot exists (see
/// [`super::restore`]).
#[derive(Debug, Clone)]
pub struct RestoreSource {
    pub criu: Criu,
    pub snapshots: Arc<SnapshotStore>,
    /// A restore still running after this is killed (`restore_timeout_ms`).
    pub budget: Duration,
    /// Frozen restored instances to keep ready for a start (the warm pool).
    pub warm_pool: usize,
    /// The snapshot identity of this function version: only its images
    /// are restored (see [`Supervisor::set_snapshot_identity`]).
    pub identity: String,
}

/// How an instance came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartSource {
    /// Spawned, then the `READY` handshake.
    Spawn,
    /// Restored from the function's snapshot.
    Restore,
    /// Taken from the warm pool (restored earlier, frozen) and thawed.
    Warm,
}

impl StartSource {
    /// Lower-case name (a metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Spawn => "spawn",
            Self::Restore => "restore",
            Self::Warm => "warm",
        }
    }
}

/// A change the owner should know about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SupervisorEvent {
    /// An instance became ready (add it as a backend).
    Ready {
        /// Instance id.
        instance: String,
        /// Spawn-to-ready time (restore: criu's wall time; warm: the thaw).
        after: Duration,
        /// How it was started.
        source: StartSource,
    },
    /// A restore failed or ran past its budget (killed); the next start
    /// spawns. When CRIU failed on the images they were dropped, and the
    /// next spawned instance is dumped anew.
    RestoreFailed {
        /// Instance id.
        instance: String,
        /// The error, rendered (with the measured time when over budget).
        error: String,
        /// Killed at its budget.
        over_budget: bool,
        /// How long it ran.
        elapsed: Duration,
    },
    /// A ready instance is gone (remove it).
    Exited {
        /// Instance id.
        instance: String,
        /// How it ended.
        reason: ExitReason,
    },
    /// A start failed (spawn or handshake); a retry is scheduled.
    StartFailed {
        /// Instance id.
        instance: String,
        /// The error, rendered.
        error: String,
        /// When the next start may happen.
        retry_in: Duration,
    },
}

/// Supervisor of one function on one core.
#[derive(Debug)]
pub struct Supervisor {
    spec: InstanceSpec,
    cgroups: CgroupRoot,
    policy: BackoffPolicy,
    desired: usize,
    starting: Vec<StartingInstance>,
    ready: Vec<Instance>,
    seq: u64,
    failures: u32,
    owed_restarts: u64,
    not_before: Option<Instant>,
    stats: SupervisorStats,
    generation: u64,
    /// Set by `begin_shutdown`: when the survivors get SIGKILL.
    kill_at: Option<Instant>,
    restore: Option<RestoreSource>,
    /// Restores handed to the launcher thread: (for the pool, the launch).
    launching: Vec<(bool, LaunchingRestore)>,
    /// Restores that become instances.
    restoring: Vec<RestoringInstance>,
    /// Restores that refill the warm pool.
    refilling: Vec<RestoringInstance>,
    /// The warm pool: restored, frozen (SIGSTOP), not counted as instances.
    warm: Vec<Instance>,
    /// Starts that must spawn even though a snapshot exists (after a failed
    /// restore, or to make a fresh snapshot).
    force_spawn: usize,
    /// Consecutive failed warm-pool refills, and when the next may start.
    refill_failures: u32,
    refill_not_before: Option<Instant>,
    /// Starts restores off the owner's thread; created on first use. Last
    /// field: dropped after `Drop` stopped every instance it restored.
    launcher: Option<RestoreLauncher>,
}

impl Supervisor {
    /// A supervisor that will keep `desired` instances of `spec`.
    pub fn new(
        spec: InstanceSpec,
        cgroups: CgroupRoot,
        desired: usize,
        policy: BackoffPolicy,
    ) -> Self {
        Self {
            spec,
            cgroups,
            policy,
            desired,
            starting: Vec::new(),
            ready: Vec::new(),
            seq: 0,
            failures: 0,
            owed_restarts: 0,
            not_before: None,
            stats: SupervisorStats::default(),
            generation: 0,
            kill_at: None,
            restore: None,
            launching: Vec::new(),
            restoring: Vec::new(),
            refilling: Vec::new(),
            warm: Vec::new(),
            force_spawn: 0,
            refill_failures: 0,
            refill_not_before: None,
            launcher: None,
        }
    }

    /// Start instances from the function's snapshot when one exists (and
    /// keep a warm pool when `source.warm_pool > 0`).
    #[must_use]
    pub fn with_restore(mut self, source: RestoreSource) -> Self {
        self.restore = Some(source);
        self
    }

    /// The snapshot identity changed (the handler file changed on disk):
    /// restore only images of `identity` from now on, and drop frozen
    /// copies of the old one.
    pub fn set_snapshot_identity(&mut self, identity: &str) {
        if let Some(r) = &mut self.restore {
            if r.identity != identity {
                r.identity = identity.to_string();
                for mut w in std::mem::take(&mut self.warm) {
                    let _ = w.kill_and_wait();
                }
                self.refilling.clear();
                self.launching.retain(|(pool, _)| !pool);
            }
        }
    }

    /// Instances that exist or are on their way (ready, in the handshake,
    /// being restored); the warm pool is not counted.
    pub fn live(&self) -> usize {
        self.ready.len()
            + self.starting.len()
            + self.restoring.len()
            + self.launching.iter().filter(|(pool, _)| !pool).count()
    }

    /// Frozen instances in the warm pool.
    pub fn warm(&self) -> usize {
        self.warm.len()
    }

    /// The desired count.
    pub fn desired(&self) -> usize {
        self.desired
    }

    /// One more instance, spawned even if a snapshot exists (its owner dumps
    /// it into a fresh snapshot once ready).
    pub fn spawn_one_more(&mut self) {
        self.desired += 1;
        self.force_spawn += 1;
    }

    /// Stops the ready instance `id` at once (SIGKILL; the owner took it out
    /// of service and saw it idle) and lowers the desired count by one.
    pub fn retire(&mut self, id: &str) -> Option<SupervisorEvent> {
        let idx = self.ready.iter().position(|i| i.id() == id)?;
        let mut inst = self.ready.swap_remove(idx);
        let reason = inst.kill_and_wait().unwrap_or(ExitReason::Stopped);
        self.generation += 1;
        self.desired = self.desired.saturating_sub(1);
        Some(SupervisorEvent::Exited {
            instance: inst.id().to_owned(),
            reason,
        })
    }

    /// The spec.
    pub fn spec(&self) -> &InstanceSpec {
        &self.spec
    }

    /// Changes the desired count; extra instances are stopped at the next tick.
    pub fn set_desired(&mut self, n: usize) {
        self.desired = n;
    }

    /// Ready instances (the gateway's backends).
    pub fn ready(&self) -> &[Instance] {
        &self.ready
    }

    /// Ready instances, mutable (for lifecycle events such as `RequestBegan`).
    pub fn ready_mut(&mut self) -> &mut [Instance] {
        &mut self.ready
    }

    /// Instances in the handshake.
    pub fn starting(&self) -> usize {
        self.starting.len()
    }

    /// Bumped on every change of the ready set.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Counters.
    pub fn stats(&self) -> SupervisorStats {
        self.stats
    }

    /// Consecutive failures counted by the backoff.
    pub fn consecutive_failures(&self) -> u32 {
        self.failures
    }

    /// When `tick` next has work: now while starting, the backoff's end while
    /// backing off, `None` when settled (tick at leisure to notice exits).
    pub fn next_tick(&self, now: Instant) -> Option<Instant> {
        if let Some(kill_at) = self.kill_at {
            if self.is_stopped() {
                return None;
            }
            return Some(kill_at.min(now + Duration::from_millis(5)));
        }
        if !self.starting.is_empty()
            || !self.restoring.is_empty()
            || !self.refilling.is_empty()
            || !self.launching.is_empty()
        {
            return Some(now);
        }
        if self.live() < self.desired {
            return Some(self.not_before.unwrap_or(now).max(now));
        }
        if self.warm_short() {
            return Some(self.refill_not_before.unwrap_or(now).max(now));
        }
        None
    }

    fn fail(&mut self, now: Instant) -> Duration {
        self.failures = self.failures.saturating_add(1);
        self.owed_restarts += 1;
        let d = self.policy.delay(self.failures);
        self.not_before = Some(now + d);
        d
    }

    /// Advances everything; never blocks for long (spawning is a clone plus
    /// an exec; a namespace comes from the pool).
    pub fn tick(&mut self, now: Instant, pool: &NetnsPool) -> Vec<SupervisorEvent> {
        if self.kill_at.is_some() {
            return self.reap_stopping(now);
        }
        let mut events = Vec::new();
        // 1. Handshakes.
        for s in std::mem::take(&mut self.starting) {
            let id = s.instance().id().to_owned();
            match s.poll() {
                Ok(StartProgress::Pending(s)) => self.starting.push(s),
                Ok(StartProgress::Ready(i)) => {
                    events.push(SupervisorEvent::Ready {
                        instance: id,
                        after: i.ready_after().unwrap_or_default(),
                        source: StartSource::Spawn,
                    });
                    self.ready.push(i);
                    self.generation += 1;
                }
                Err(e) => events.push(self.start_failed(now, id, &e)),
            }
        }
        // 1b. Restores.
        self.poll_restores(now, &mut events);
        // 2. Exits of ready instances.
        let mut i = 0;
        while i < self.ready.len() {
            let exited = match self.ready[i].try_wait() {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "waitpid failed");
                    None
                }
            };
            let Some(reason) = exited else {
                i += 1;
                continue;
            };
            let inst = self.ready.swap_remove(i);
            self.generation += 1;
            if reason.is_failure() {
                self.stats.crashes += 1;
                if matches!(reason, ExitReason::OomKilled { .. }) {
                    self.stats.oom_kills += 1;
                }
                if now.duration_since(inst.started_at()) >= self.policy.reset_after {
                    self.failures = 0;
                }
                self.fail(now);
            }
            events.push(SupervisorEvent::Exited {
                instance: inst.id().to_owned(),
                reason,
            });
        }
        // 3. Healthy long enough: forget past failures.
        if self.failures > 0
            && self
                .ready
                .iter()
                .any(|r| now.duration_since(r.started_at()) >= self.policy.reset_after)
        {
            self.failures = 0;
        }
        // Frozen instances that died are dropped; the pool refills.
        self.warm
            .retain_mut(|w| !matches!(w.try_wait(), Ok(Some(_)) | Err(_)));
        // 4. Too many: stop the newest.
        while self.live() > self.desired {
            if let Some(mut s) = self.starting.pop() {
                let _ = stop_starting(&mut s);
                continue;
            }
            if self.restoring.pop().is_some() {
                // Dropping a restore kills and reaps what it restored.
                continue;
            }
            if let Some(i) = self.launching.iter().rposition(|(pool, _)| !pool) {
                // The launcher drops it when it finds nobody waiting.
                self.launching.remove(i);
                continue;
            }
            if let Some(mut inst) = self.ready.pop() {
                let reason = inst.kill_and_wait().unwrap_or(ExitReason::Stopped);
                self.generation += 1;
                events.push(SupervisorEvent::Exited {
                    instance: inst.id().to_owned(),
                    reason,
                });
            }
        }
        // 5. Too few: thaw, restore or start, unless backing off. A thawed
        // instance is handed to the owner at once: the rest (which may have
        // to make a network namespace, ≈ ms) waits for the next tick.
        let mut thawed = false;
        while self.live() < self.desired && self.not_before.is_none_or(|t| now >= t) {
            if let Some(ev) = self.thaw_one(now) {
                events.push(ev);
                thawed = true;
                if self.warm.is_empty() {
                    break;
                }
                continue;
            }
            let id = self.next_id();
            match self.try_restore(&id, pool, false) {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => {
                    events.push(SupervisorEvent::RestoreFailed {
                        instance: id.clone(),
                        error: e.to_string(),
                        over_budget: false,
                        elapsed: Duration::ZERO,
                    });
                    self.force_spawn += 1;
                }
            }
            let started = pool
                .take(self.spec.egress)
                .map_err(super::InstanceError::from)
                .and_then(|ns| start(&self.spec, &id, &self.cgroups, ns));
            match started {
                Ok(s) => {
                    self.force_spawn = self.force_spawn.saturating_sub(1);
                    self.stats.spawned += 1;
                    if self.owed_restarts > 0 {
                        self.owed_restarts -= 1;
                        self.stats.restarts += 1;
                    }
                    self.starting.push(s);
                }
                Err(e) => {
                    events.push(self.start_failed(now, id, &e));
                    break;
                }
            }
        }
        // 6. Refill the warm pool, one restore at a time.
        if !thawed
            && self.warm_short()
            && self.refilling.is_empty()
            && !self.launching.iter().any(|(pool, _)| *pool)
            && self.refill_not_before.is_none_or(|t| now >= t)
        {
            let id = self.next_id();
            if let Err(e) = self.try_restore(&id, pool, true) {
                self.refill_failed(now);
                tracing::warn!("{id}: warm pool refill failed: {e}");
            }
        }
        events
    }

    /// A refill failed: the next waits as a failed start would.
    fn refill_failed(&mut self, now: Instant) {
        self.refill_failures = self.refill_failures.saturating_add(1);
        self.refill_not_before = Some(now + self.policy.delay(self.refill_failures));
    }

    /// Whether the warm pool wants another instance (and a snapshot exists).
    fn warm_short(&self) -> bool {
        self.kill_at.is_none()
            && self.restore.as_ref().is_some_and(|r| {
                self.warm.len()
                    + self.refilling.len()
                    + self.launching.iter().filter(|(pool, _)| *pool).count()
                    < r.warm_pool
                    && r.snapshots
                        .ready(&self.spec.function_id, &r.identity)
                        .is_some()
            })
    }

    /// Takes a frozen instance from the warm pool and thaws it (`SIGCONT`:
    /// the restored signal).
    fn thaw_one(&mut self, now: Instant) -> Option<SupervisorEvent> {
        let mut inst = self.warm.pop()?;
        let t0 = Instant::now();
        if let Err(e) = spawn_signal(&inst, libc::SIGCONT) {
            tracing::warn!(instance = inst.id(), error = %e, "thawing a warm instance failed");
            let _ = inst.kill_and_wait();
            return None;
        }
        let _ = now;
        let after = t0.elapsed();
        inst.ready_after = Some(after);
        let id = inst.id().to_owned();
        self.ready.push(inst);
        self.generation += 1;
        self.stats.spawned += 1;
        if self.owed_restarts > 0 {
            self.owed_restarts -= 1;
            self.stats.restarts += 1;
        }
        Some(SupervisorEvent::Ready {
            instance: id,
            after,
            source: StartSource::Warm,
        })
    }

    /// Starts a restore of instance `id` when a snapshot exists and no spawn
    /// is forced: `Ok(true)` when started, `Ok(false)` when the caller should
    /// spawn.
    fn try_restore(
        &mut self,
        id: &str,
        pool: &NetnsPool,
        for_pool: bool,
    ) -> Result<bool, RestoreError> {
        let Some(src) = &self.restore else {
            return Ok(false);
        };
        if self.force_spawn > 0 && !for_pool {
            return Ok(false);
        }
        let Some(images) = src.snapshots.ready(&self.spec.function_id, &src.identity) else {
            return Ok(false);
        };
        let ns = pool
            .take(self.spec.egress)
            .map_err(|e| RestoreError::Setup(e.into()))?;
        let (criu, snapshots_images) = (src.criu.clone(), images);
        if self.launcher.is_none() {
            let name = format!("aether-restore-{}", self.spec.function_id);
            let l = RestoreLauncher::new(&name).map_err(|e| {
                RestoreError::Setup(super::InstanceError::Wait { pid: 0, source: e })
            })?;
            self.launcher = Some(l);
        }
        let Some(launcher) = &self.launcher else {
            return Ok(false);
        };
        // Only the first instance of a core is waited for urgently: a pool
        // refill, or an instance beside a ready or coming one, runs niced.
        let background = for_pool
            || !self.ready.is_empty()
            || !self.restoring.is_empty()
            || self.launching.iter().any(|(pool, _)| !pool);
        let launch = launcher.launch(RestoreRequest {
            spec: self.spec.clone(),
            instance_id: id.to_string(),
            cgroups: self.cgroups.clone(),
            netns: ns,
            criu,
            images: snapshots_images,
            background,
        });
        if !for_pool {
            self.stats.spawned += 1;
            if self.owed_restarts > 0 {
                self.owed_restarts -= 1;
                self.stats.restarts += 1;
            }
        }
        self.launching.push((for_pool, launch));
        Ok(true)
    }

    /// Advances the restores; finished ones become ready instances (or
    /// frozen pool members), failed ones are reported and turn the next
    /// start into a spawn.
    fn poll_restores(&mut self, now: Instant, events: &mut Vec<SupervisorEvent>) {
        let Some(src) = self.restore.clone() else {
            return;
        };
        for (for_pool, launch) in std::mem::take(&mut self.launching) {
            match launch.try_get() {
                None => self.launching.push((for_pool, launch)),
                Some(Ok(r)) if for_pool => self.refilling.push(r),
                Some(Ok(r)) => self.restoring.push(r),
                Some(Err(e)) => {
                    if for_pool {
                        self.refill_failed(now);
                    } else {
                        self.force_spawn += 1;
                    }
                    events.push(SupervisorEvent::RestoreFailed {
                        instance: launch.id().to_owned(),
                        over_budget: false,
                        elapsed: Duration::ZERO,
                        error: e.to_string(),
                    });
                }
            }
        }
        for (pool_refill, list) in [
            (false, std::mem::take(&mut self.restoring)),
            (true, std::mem::take(&mut self.refilling)),
        ] {
            for mut r in list {
                match r.poll(src.budget, pool_refill) {
                    Ok(None) if pool_refill => self.refilling.push(r),
                    Ok(None) => self.restoring.push(r),
                    Ok(Some(inst)) if pool_refill => {
                        self.refill_failures = 0;
                        self.warm.push(inst);
                    }
                    Ok(Some(inst)) => {
                        events.push(SupervisorEvent::Ready {
                            instance: inst.id().to_owned(),
                            after: inst.ready_after().unwrap_or_default(),
                            source: StartSource::Restore,
                        });
                        self.ready.push(inst);
                        self.generation += 1;
                    }
                    Err(e) => {
                        if e.images_unusable() {
                            src.snapshots.invalidate(
                                &self.spec.function_id,
                                r.identity(),
                                &e.to_string(),
                            );
                        }
                        if pool_refill {
                            self.refill_failed(now);
                        } else {
                            self.force_spawn += 1;
                        }
                        events.push(SupervisorEvent::RestoreFailed {
                            instance: r.id().to_owned(),
                            over_budget: e.over_budget(),
                            elapsed: r.elapsed(),
                            error: e.to_string(),
                        });
                    }
                }
            }
        }
    }

    fn start_failed(
        &mut self,
        now: Instant,
        instance: String,
        e: &super::InstanceError,
    ) -> SupervisorEvent {
        self.stats.start_failures += 1;
        let retry_in = self.fail(now);
        SupervisorEvent::StartFailed {
            instance,
            error: e.to_string(),
            retry_in,
        }
    }

    fn next_id(&mut self) -> String {
        self.seq += 1;
        match self.spec.cpu {
            Some(c) => format!("{}-c{c}-{}", self.spec.function_id, self.seq),
            None => format!("{}-{}", self.spec.function_id, self.seq),
        }
    }

    /// Starts stopping everything without blocking: handshakes are killed at
    /// once, ready instances get SIGTERM, and whatever still runs at
    /// `now + grace` gets SIGKILL from a later [`Self::tick`] (pid 1 of a
    /// namespace ignores SIGTERM unless it handles it). Keep ticking until
    /// [`Self::is_stopped`].
    pub fn begin_shutdown(&mut self, now: Instant, grace: Duration) {
        self.desired = 0;
        self.kill_at = Some(now + grace);
        for mut s in std::mem::take(&mut self.starting) {
            let _ = stop_starting(&mut s);
        }
        // Dropping a restore kills and reaps what it restored.
        self.launching.clear();
        self.restoring.clear();
        self.refilling.clear();
        for mut w in std::mem::take(&mut self.warm) {
            // Frozen: only SIGKILL ends it.
            let _ = w.kill_and_wait();
        }
        let signal = if grace.is_zero() {
            libc::SIGKILL
        } else {
            libc::SIGTERM
        };
        for inst in &mut self.ready {
            let _ = inst.request_stop(signal);
        }
    }

    /// True once `begin_shutdown` was called and every instance is gone.
    pub fn is_stopped(&self) -> bool {
        self.kill_at.is_some() && self.ready.is_empty() && self.starting.is_empty()
    }

    /// While stopping: reap what exited, SIGKILL the rest once `kill_at` passed.
    fn reap_stopping(&mut self, now: Instant) -> Vec<SupervisorEvent> {
        let mut events = Vec::new();
        let overdue = self.kill_at.is_some_and(|t| now >= t);
        let mut i = 0;
        while i < self.ready.len() {
            if overdue {
                let _ = self.ready[i].kill();
            }
            match self.ready[i].try_wait() {
                Ok(Some(reason)) => {
                    let inst = self.ready.swap_remove(i);
                    self.generation += 1;
                    events.push(SupervisorEvent::Exited {
                        instance: inst.id().to_owned(),
                        reason,
                    });
                }
                _ => i += 1,
            }
        }
        events
    }

    /// Blocking form of [`Self::begin_shutdown`]: returns when every
    /// instance is gone (at most `grace` plus the time SIGKILL takes).
    pub fn shutdown(&mut self, grace: Duration) -> Vec<SupervisorEvent> {
        self.begin_shutdown(Instant::now(), grace);
        let mut events = Vec::new();
        while !self.is_stopped() {
            events.extend(self.reap_stopping(Instant::now()));
            if !self.is_stopped() {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        events
    }
}

fn spawn_signal(inst: &Instance, signal: i32) -> std::io::Result<()> {
    super::spawn::pidfd_signal(inst.pidfd(), signal)
}

fn stop_starting(s: &mut StartingInstance) -> Result<ExitReason, super::InstanceError> {
    s.inst.kill_and_wait()
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        if !self.ready.is_empty()
            || !self.starting.is_empty()
            || !self.restoring.is_empty()
            || !self.refilling.is_empty()
            || !self.launching.is_empty()
            || !self.warm.is_empty()
        {
            let _ = self.shutdown(Duration::ZERO);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let p = BackoffPolicy::default();
        assert_eq!(p.delay(0), Duration::ZERO);
        assert_eq!(p.delay(1), Duration::from_millis(100));
        assert_eq!(p.delay(2), Duration::from_millis(200));
        assert_eq!(p.delay(5), Duration::from_millis(1600));
        assert_eq!(p.delay(8), Duration::from_secs(10));
        assert_eq!(p.delay(40), Duration::from_secs(10));
    }
}
