//! One executor core: its glommio `LocalExecutor`, the functions it serves,
//! their instances and its gateway listeners.
//!
//! Each core owns, for every deployed function: its member of the function's
//! `SO_REUSEPORT` listener group, a [`Supervisor`] keeping that core's
//! instances alive (pinned to the core's CPU), and the gateway route whose
//! backends are those instances. Nothing here is shared with another core;
//! the control loop talks to a core only through its command channel
//! ([`CoreCommand`]), and each command carries its own reply channel.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::{LocalExecutorBuilder, Placement};
use hdrhistogram::Histogram;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use shm_abi::message::InstanceStatus;

use crate::criu::Criu;
use crate::daemon::DaemonError;
use crate::gateway::{
    self, CoreMetrics, FunctionRoute, RouteSettings, ServeConfig, Signal, Upstream,
};
use crate::instance::cgroup::CgroupRoot;
use crate::instance::netns::{self, Egress, EgressConfig, NetnsPool};
use crate::instance::supervisor::{BackoffPolicy, Supervisor, SupervisorEvent, SupervisorStats};
use crate::instance::supervisor::{RestoreSource, StartSource};
use crate::instance::InstanceSpec;
use crate::lifecycle_metrics::{FunctionLabel, LifecycleMetrics};
use crate::scaling::{FunctionScale, ScaleMetrics, ScaleRegistry};
use crate::snapshot::{DumpTicket, SnapshotState, SnapshotStatus, SnapshotStore};
use crate::steering::Steering;

/// How often a settled supervisor looks for exited instances and samples
/// the function's demand for the autoscaler (a queued request wakes it
/// at once).
const SUPERVISE_IDLE_TICK: Duration = Duration::from_millis(20);
/// Longest a handler gets between SIGTERM and SIGKILL when it is stopped
/// (python as pid 1 of its namespace ignores SIGTERM unless it handles it).
const STOP_GRACE: Duration = Duration::from_secs(1);
/// glommio's registered I/O buffer per executor ring (its minimum).
const IO_MEMORY: usize = 64 << 10;
/// Network namespaces each core keeps prepared ahead of need.
const NETNS_AHEAD: usize = 2;

/// What every core shares read-only: the orchestrator settings and the
/// kernel objects created once at start-up.
#[derive(Debug, Clone)]
pub struct Shared {
    pub orchestrator: Arc<config::Orchestrator>,
    pub cgroups: CgroupRoot,
    pub egress: Option<Arc<Egress>>,
    /// CRIU images of every function (see [`crate::snapshot`]).
    pub snapshots: Arc<SnapshotStore>,
    /// Frozen restored instances each core keeps per function (`--warm-pool`).
    pub warm_pool_per_core: usize,
    /// Number of cores (executors).
    pub cores: usize,
    /// Each deployed function's autoscaling state, shared by its cores.
    pub scales: Arc<ScaleRegistry>,
    /// The autoscaler's metrics.
    pub scale_metrics: ScaleMetrics,
}

/// A short, stable tag for a state dir, for kernel object names (the
/// segment header's FNV-1a, folded to 32 bits).
fn state_tag(dir: &std::path::Path) -> u32 {
    use shm_abi::segment::{fnv1a, FNV_OFFSET};
    let h = fnv1a(FNV_OFFSET, dir.as_os_str().as_encoded_bytes());
    // Folding keeps every bit's influence; the truncation is the point.
    #[allow(clippy::cast_possible_truncation)]
    let tag = (h ^ (h >> 32)) as u32;
    tag
}

impl Shared {
    /// Find the memory cgroup hierarchy, remove what a dead aetherd with the
    /// same state dir left behind (killing its handlers), and set up the
    /// egress bridge when a function wants it. The cgroup group and bridge
    /// names derive from the state dir, so several aetherd processes never
    /// clean up each other's instances.
    pub fn prepare(cfg: &config::Config) -> Result<Shared, DaemonError> {
        let o = &cfg.orchestrator;
        let default_dir = std::path::Path::new(config::schema::orchestrator::STATE_DIR);
        let tag = state_tag(&o.state_dir);
        let (group, egress_cfg) = if o.state_dir == default_dir {
            ("aetherless".to_string(), EgressConfig::default())
        } else {
            // 10.201.0.0/16 ..= 10.250.0.0/16; 10.200/16 belongs to the default state dir.
            let second = 201 + u8::try_from(tag % 50).unwrap_or(0);
            let eg = EgressConfig {
                bridge: format!("aeth{:06x}", tag & 0xff_ffff),
                veth_prefix: format!("a{:03x}", tag & 0xfff),
                subnet: Ipv4Addr::new(10, second, 0, 0),
                ..EgressConfig::default()
            };
            (format!("aetherless-{tag:08x}"), eg)
        };
        let cgroups = CgroupRoot::detect(&group)
            .map_err(|e| DaemonError::Unsupported(format!("cgroups: {e}")))?;
        match crate::instance::cgroup::favor_dynamic_modifications() {
            Ok(Some(path)) => tracing::info!(
                "remounted {} with favordynmods: moving a process into a cgroup no longer \
                 waits for an RCU grace period (≈ 5 ms → 0.2 ms per spawn or restore here); \
                 AETHER_CGROUP_FAVORDYNMODS=0 leaves it alone",
                path.display()
            ),
            Ok(None) => {}
            Err(e) => tracing::warn!(
                "cgroup moves stay slow (≈ 5 ms each), favordynmods could not be set: {e}"
            ),
        }
        match cgroups.cleanup_stale() {
            Ok(report) => tracing::info!(
                "stale cgroup clean-up under {}: {report:?}",
                cgroups.base().display()
            ),
            Err(e) => tracing::warn!("stale cgroup clean-up failed: {e}"),
        }
        Egress::cleanup_stale(&egress_cfg);
        let egress = if cfg.functions.iter().any(|f| f.egress) || cfg.functions.is_empty() {
            match Egress::setup(egress_cfg) {
                Ok(e) => Some(e),
                Err(e) => {
                    tracing::warn!("egress network unavailable, handlers get loopback only: {e}");
                    None
                }
            }
        } else {
            None
        };
        let snapshots = Arc::new(SnapshotStore::new(&o.snapshot_dir, open_criu()));
        Ok(Shared {
            orchestrator: Arc::new(o.clone()),
            cgroups,
            egress,
            snapshots,
            warm_pool_per_core: 0,
            cores: 1,
            scales: Arc::new(ScaleRegistry::default()),
            scale_metrics: ScaleMetrics::default(),
        })
    }

    /// Remove what `prepare` created: the group's cgroup directory (empty by
    /// now) and the egress bridge and NAT rules.
    pub fn teardown(self) {
        let _ = std::fs::remove_dir(self.cgroups.base());
        if let Some(egress) = self.egress {
            Egress::cleanup_stale(egress.config());
        }
    }
}

/// The CRIU that snapshots and restores instances, or why there is none.
/// `AETHER_SNAPSHOTS=0` turns snapshots off (every instance is spawned).
fn open_criu() -> Result<Criu, String> {
    if std::env::var("AETHER_SNAPSHOTS").is_ok_and(|v| v == "0") {
        return Err("AETHER_SNAPSHOTS=0: snapshots turned off".into());
    }
    let criu = Criu::default();
    if !criu.path().is_file() {
        return Err(format!(
            "CRIU not found at {} (scripts/setup.sh builds it)",
            criu.path().display()
        ));
    }
    criu.with_run_cache().map_err(|e| e.to_string())
}

/// The executors to run: the numa placement plan over the allowed CPUs.
pub fn plan_cpus(cores: &config::Cores) -> Result<Vec<numa::Executor>, String> {
    let topology = numa::Topology::detect().map_err(|e| e.to_string())?;
    let allowed = numa::allowed_cpus().map_err(|e| e.to_string())?;
    let selection = match cores {
        config::Cores::All => numa::CoreSelection::All,
        config::Cores::Count(n) => numa::CoreSelection::Count(*n as usize),
        config::Cores::List(ids) => {
            numa::CoreSelection::List(ids.iter().map(|c| *c as usize).collect())
        }
    };
    let request = numa::PlacementRequest {
        cores: selection,
        reserve_control_cpu: false,
    };
    let plan =
        numa::PlacementPlan::compute(&topology, &allowed, &request).map_err(|e| e.to_string())?;
    tracing::info!("placement: {plan}");
    Ok(plan.executors)
}

/// What a core needs to start.
#[derive(Debug)]
pub struct CoreSetup {
    index: usize,
    executor: numa::Executor,
    allowed: Vec<usize>,
    shared: Shared,
    metrics: CoreMetrics,
    lifecycle: LifecycleMetrics,
    steering: Family<FunctionLabel, Gauge>,
}

impl CoreSetup {
    /// Prepare core `index` and register its metrics under `core="<index>"`.
    pub fn new(
        index: usize,
        executor: numa::Executor,
        shared: &Shared,
        registry: &mut Registry,
    ) -> Self {
        let metrics = CoreMetrics::register(registry, index);
        let sub = registry.sub_registry_with_label(("core".into(), index.to_string().into()));
        let lifecycle = LifecycleMetrics::register(sub);
        let steering = Family::<FunctionLabel, Gauge>::default();
        sub.register(
            "reuseport_steering",
            "1 when this core's listener of the function is steered by sk_reuseport \
             (accepts what this core's CPU receives), 0 when the kernel's hash spreads them",
            steering.clone(),
        );
        let allowed = numa::allowed_cpus().unwrap_or_else(|_| vec![executor.cpu]);
        CoreSetup {
            index,
            executor,
            allowed,
            shared: shared.clone(),
            metrics,
            lifecycle,
            steering,
        }
    }
}

impl CoreSetup {
    /// The CPU this core's executor is pinned to.
    pub fn cpu(&self) -> usize {
        self.executor.cpu
    }
}

/// A request from the control loop to one core.
#[derive(Debug)]
pub enum CoreCommand {
    /// Start (or replace) a function on this core; answers once its first
    /// instance is ready or failed.
    Deploy {
        function: Box<config::Function>,
        /// The function's sk_reuseport selector; `None`: the kernel's hash.
        steering: Option<Steering>,
        done: flume::Sender<Result<(), String>>,
    },
    /// Stop a function: stop accepting, drain, stop its instances.
    Undeploy { id: String, done: flume::Sender<()> },
    List {
        reply: flume::Sender<Vec<(String, Vec<InstanceStatus>)>>,
    },
    Stats {
        reply: flume::Sender<Vec<(String, FunctionCoreStats)>>,
    },
    /// Dump a ready instance of the function now (`aetherctl snapshot`);
    /// answers with the new status, or why not.
    Snapshot {
        id: String,
        done: flume::Sender<Result<SnapshotStatus, String>>,
    },
    /// Drain everything until the deadline, stop every instance, end the executor.
    Shutdown { deadline: Instant },
}

/// One function's counters on one core, merged across cores by the control loop.
#[derive(Debug, Clone)]
pub struct FunctionCoreStats {
    pub by_status: Vec<(u16, u64)>,
    pub in_flight: u64,
    pub queue_depth: u64,
    pub latency_us: Histogram<u64>,
}

impl Default for FunctionCoreStats {
    fn default() -> Self {
        FunctionCoreStats {
            by_status: Vec::new(),
            in_flight: 0,
            queue_depth: 0,
            latency_us: empty_latency_histogram(),
        }
    }
}

impl FunctionCoreStats {
    pub fn merge(&mut self, other: &FunctionCoreStats) {
        for (status, n) in &other.by_status {
            match self.by_status.iter_mut().find(|(s, _)| s == status) {
                Some((_, m)) => *m += n,
                None => self.by_status.push((*status, *n)),
            }
        }
        self.by_status.sort_unstable();
        self.in_flight += other.in_flight;
        self.queue_depth += other.queue_depth;
        let _ = self.latency_us.add(&other.latency_us);
    }
}

/// An empty latency histogram (µs) that any core's histogram can be added to.
pub fn empty_latency_histogram() -> Histogram<u64> {
    // Auto-resizing with 3 significant figures: `new` fails only for more
    // than 5 significant figures, so this cannot fail.
    #[allow(clippy::expect_used)]
    Histogram::new(3).expect("3 significant figures are valid")
}

/// The control loop's handle on one core.
#[derive(Debug)]
pub struct CoreHandle {
    cpu: usize,
    tx: flume::Sender<CoreCommand>,
    thread: Option<glommio::ExecutorJoinHandle<()>>,
}

/// A deploy in progress on one core.
#[derive(Debug)]
pub struct PendingDeploy {
    rx: flume::Receiver<Result<(), String>>,
    wait: Duration,
    sent: bool,
}

impl PendingDeploy {
    /// Wait for the core's answer, bounded by the handshake timeout.
    pub fn wait(self) -> Result<(), String> {
        if !self.sent {
            return Err("core stopped".into());
        }
        self.rx
            .recv_timeout(self.wait)
            .map_err(|_| "core did not answer in time".to_string())?
    }
}

/// A forced snapshot in progress on one core.
#[derive(Debug)]
pub struct PendingSnapshot {
    rx: flume::Receiver<Result<SnapshotStatus, String>>,
}

/// Longest a forced snapshot may take (warm-up requests plus the dump).
const SNAPSHOT_WAIT: Duration = Duration::from_secs(60);

impl PendingSnapshot {
    /// The new status, or why this core made none (e.g. no ready instance).
    pub fn wait(self) -> Result<SnapshotStatus, String> {
        self.rx
            .recv_timeout(SNAPSHOT_WAIT)
            .map_err(|_| "core did not answer in time".to_string())?
    }
}

/// How long the control loop waits for a core to answer a query.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

impl CoreHandle {
    /// Start the core's executor thread, pinned to its CPU.
    pub fn spawn(setup: CoreSetup) -> Result<CoreHandle, String> {
        let cpu = setup.executor.cpu;
        let (tx, rx) = flume::unbounded();
        let thread = LocalExecutorBuilder::new(Placement::Fixed(cpu))
            .name(&format!("aether-core-{}", setup.index))
            // glommio pins this much per ring (three rings) for storage I/O,
            // which aetherd does not do. Pinned pages are copied eagerly at
            // every fork (handler spawns, criu runs): the 10 MiB default made
            // each fork copy 60 MiB (≈ 20–50 ms); the 64 KiB minimum ≈ 0.4 MiB.
            .io_memory(IO_MEMORY)
            .spawn(move || async move { core_main(setup, rx).await })
            .map_err(|e| e.to_string())?;
        Ok(CoreHandle {
            cpu,
            tx,
            thread: Some(thread),
        })
    }

    pub fn cpu(&self) -> usize {
        self.cpu
    }

    /// Start deploying `function` on this core; the returned [`PendingDeploy`]
    /// resolves once its first instance is ready (or failed). Deploy on every
    /// core first, then wait, so cores start their instances in parallel.
    /// With `steering`, the core puts its listener in the selector's slot of
    /// its CPU (see [`crate::steering`]).
    pub fn deploy(&self, function: config::Function, steering: Option<Steering>) -> PendingDeploy {
        let wait = function.handshake_timeout() + Duration::from_secs(5);
        let (done, rx) = flume::bounded(1);
        let sent = self
            .tx
            .send(CoreCommand::Deploy {
                function: Box::new(function),
                steering,
                done,
            })
            .is_ok();
        PendingDeploy { rx, wait, sent }
    }

    pub fn undeploy(&self, id: &str) {
        let (done, rx) = flume::bounded(1);
        if self
            .tx
            .send(CoreCommand::Undeploy {
                id: id.to_string(),
                done,
            })
            .is_ok()
        {
            let _ = rx.recv_timeout(Duration::from_secs(60));
        }
    }

    pub fn list(&self) -> Vec<(String, Vec<InstanceStatus>)> {
        let (reply, rx) = flume::bounded(1);
        if self.tx.send(CoreCommand::List { reply }).is_err() {
            return Vec::new();
        }
        rx.recv_timeout(QUERY_TIMEOUT).unwrap_or_default()
    }

    pub fn stats(&self) -> Vec<(String, FunctionCoreStats)> {
        let (reply, rx) = flume::bounded(1);
        if self.tx.send(CoreCommand::Stats { reply }).is_err() {
            return Vec::new();
        }
        rx.recv_timeout(QUERY_TIMEOUT).unwrap_or_default()
    }

    /// Force a snapshot of `function` from one of this core's ready
    /// instances; `None` when the core is gone.
    pub fn snapshot(&self, function: &str) -> Option<PendingSnapshot> {
        let (done, rx) = flume::bounded(1);
        self.tx
            .send(CoreCommand::Snapshot {
                id: function.to_string(),
                done,
            })
            .ok()?;
        Some(PendingSnapshot { rx })
    }

    pub fn begin_shutdown(&self, deadline: Instant) {
        let _ = self.tx.send(CoreCommand::Shutdown { deadline });
    }

    /// Wait for the executor thread to end.
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            if let Err(e) = t.join() {
                tracing::error!("core on cpu {} ended badly: {e}", self.cpu);
            }
        }
    }
}

/// A function as it runs on one core.
struct FunctionOnCore {
    function: config::Function,
    /// The selector holding this core's listener in its CPU's slot; `None`
    /// when the kernel's hash spreads the group's connections.
    steering: Option<Steering>,
    route: Rc<FunctionRoute>,
    supervisor: Rc<RefCell<Supervisor>>,
    /// Fired to stop accepting (the gateway then drains).
    stop_accepting: Rc<Signal>,
    /// Set to end the supervision task.
    stop_supervising: Rc<Cell<bool>>,
    /// Forced snapshots asked for (`aetherctl snapshot`), served by the
    /// supervision task.
    snapshot_requests: Rc<RefCell<SnapshotRequests>>,
    /// The snapshot identity of this version (shared with its supervision).
    identity: Rc<RefCell<String>>,
    /// The gateway task; `None` until the function's listener is serving.
    serve_task: Option<glommio::task::JoinHandle<gateway::ServeReport>>,
    supervise_task: glommio::task::JoinHandle<()>,
}

/// Everything one core owns.
struct CoreState {
    index: usize,
    cpu: usize,
    shared: Shared,
    metrics: Rc<CoreMetrics>,
    lifecycle: LifecycleMetrics,
    /// `reuseport_steering{core, function}`.
    steering: Family<FunctionLabel, Gauge>,
    pool: Rc<NetnsPool>,
    functions: RefCell<BTreeMap<String, FunctionOnCore>>,
    next_backend: Cell<u64>,
}

async fn core_main(setup: CoreSetup, rx: flume::Receiver<CoreCommand>) {
    if let Err(e) = numa::pin_current_thread_within(setup.executor.cpu, &setup.allowed) {
        tracing::warn!("core {}: {e}", setup.index);
    }
    let pool = match NetnsPool::new(NETNS_AHEAD, setup.shared.egress.clone()) {
        Ok(p) => Rc::new(p),
        Err(e) => {
            tracing::error!(
                "core {}: cannot prepare network namespaces: {e}",
                setup.index
            );
            return;
        }
    };
    let core = Rc::new(CoreState {
        index: setup.index,
        cpu: setup.executor.cpu,
        shared: setup.shared,
        metrics: Rc::new(setup.metrics),
        lifecycle: setup.lifecycle,
        steering: setup.steering,
        pool,
        functions: RefCell::new(BTreeMap::new()),
        next_backend: Cell::new(0),
    });
    while let Ok(cmd) = rx.recv_async().await {
        match cmd {
            CoreCommand::Deploy {
                function,
                steering,
                done,
            } => {
                let result = deploy(&core, *function, steering).await;
                let _ = done.send(result);
            }
            CoreCommand::Undeploy { id, done } => {
                let removed = core.functions.borrow_mut().remove(&id);
                if let Some(f) = removed {
                    unsteer(&core, &f);
                    let deadline = Instant::now() + core.shared.orchestrator.drain_timeout();
                    stop_function(&core, f, deadline).await;
                }
                // Every core does this; both are idempotent. The images stay
                // on disk for a later deploy of the same identity.
                core.shared.scale_metrics.forget(&id);
                core.shared.snapshots.forget(&id);
                let _ = done.send(());
            }
            CoreCommand::List { reply } => {
                let _ = reply.send(list(&core));
            }
            CoreCommand::Stats { reply } => {
                let _ = reply.send(stats(&core));
            }
            CoreCommand::Snapshot { id, done } => request_snapshot(&core, &id, done),
            CoreCommand::Shutdown { deadline } => {
                let all = std::mem::take(&mut *core.functions.borrow_mut());
                for f in all.values() {
                    unsteer(&core, f);
                }
                let stops: Vec<_> = all
                    .into_values()
                    .map(|f| {
                        let core = core.clone();
                        glommio::spawn_local(async move { stop_function(&core, f, deadline).await })
                            .detach()
                    })
                    .collect();
                for s in stops {
                    let _ = s.await;
                }
                return;
            }
        }
    }
}

async fn deploy(
    core: &Rc<CoreState>,
    f: config::Function,
    steering: Option<Steering>,
) -> Result<(), String> {
    // Replacing a function is make-before-break: the new instances start
    // beside the old ones, the new listener joins the port's SO_REUSEPORT
    // group only once one of them is ready, and only then does the old
    // function stop accepting and drain. A new function listens at once
    // (requests queue until its first instance is ready), and binding first
    // makes a port conflict this deploy's error.
    let replacing = core.functions.borrow().contains_key(&f.id);
    let addr = SocketAddr::new(core.shared.orchestrator.listen_addr, f.trigger_port);
    let mut serve = ServeConfig::new(addr);
    serve.drain_timeout = core.shared.orchestrator.drain_timeout();
    let (fid, port, backlog) = (f.id.clone(), f.trigger_port, serve.backlog);
    let bind = move || {
        gateway::bind_reuseport(addr, backlog).map_err(|e| {
            format!("function '{fid}': {e} (is another program using trigger_port {port}?)")
        })
    };
    let early_listener = if replacing { None } else { Some(bind()?) };
    let settings = RouteSettings {
        timeout: f.timeout(),
        queue_size: f.queue_size as usize,
        ..RouteSettings::default()
    };
    let route = FunctionRoute::new(&f.id, settings);
    let spec = InstanceSpec::from_function(
        &f,
        Some(core.cpu),
        &core.shared.orchestrator.log_dir,
        &core.shared.orchestrator.state_dir,
    );
    let scale = core
        .shared
        .scales
        .get_or_create(&f, core.shared.cores, &core.shared.scale_metrics)
        .map_err(|e| format!("function '{}': {e}", f.id))?;
    let snapshots = core.shared.snapshots.clone();
    let snap = snapshots.register(&f);
    // The deploy starts one instance on each of the first `max_instances`
    // cores (the others hand connections over until the autoscaler gives
    // them one).
    let initial = usize::from(core.index < f.max_instances as usize);
    let mut supervisor = Supervisor::new(
        spec,
        core.shared.cgroups.clone(),
        initial,
        BackoffPolicy::default(),
    );
    let identity = Rc::new(RefCell::new(snap.identity.clone()));
    if let Some(criu) = snapshots.criu() {
        supervisor = supervisor.with_restore(RestoreSource {
            criu: criu.clone(),
            snapshots: snapshots.clone(),
            budget: core.shared.orchestrator.restore_timeout(),
            warm_pool: core.shared.warm_pool_per_core,
            identity: snap.identity.clone(),
        });
    } else if snap.state == SnapshotState::Unavailable {
        tracing::info!(
            "core {}: {}: no snapshots, instances are spawned: {}",
            core.index,
            f.id,
            snap.error.as_deref().unwrap_or("")
        );
    }
    let supervisor = Rc::new(RefCell::new(supervisor));
    let stop_supervising = Rc::new(Cell::new(false));
    let snapshot_requests = Rc::new(RefCell::new(SnapshotRequests::default()));
    let (first_tx, first_rx) = flume::bounded::<Result<(), String>>(1);
    let first_tx = if initial == 0 {
        // Nothing to wait for on this core.
        let _ = first_tx.send(Ok(()));
        None
    } else {
        Some(first_tx)
    };
    let handoff = {
        let (tx, inbox) = flume::unbounded();
        scale.register_inbox(core.index, tx);
        let (offer_scale, index) = (scale.clone(), core.index);
        let own_scale = scale.clone();
        gateway::Handoff {
            inbox,
            offer: Box::new(move |fd| offer_scale.offer(index, fd)),
            expects_instance: Box::new(move || own_scale.allocation(index) > 0),
        }
    };
    let supervise_task = glommio::spawn_local(supervise(Supervision {
        core: core.clone(),
        supervisor: supervisor.clone(),
        route: route.clone(),
        stop: stop_supervising.clone(),
        concurrency: f.concurrency as usize,
        idle_timeout: f.idle_timeout(),
        warmup_requests: f.warmup_requests,
        scale,
        snapshot_requests: snapshot_requests.clone(),
        first: first_tx,
        function: f.clone(),
        identity: identity.clone(),
    }))
    .detach();
    let mut new = FunctionOnCore {
        function: f,
        steering,
        route,
        supervisor,
        stop_accepting: Rc::new(Signal::new()),
        stop_supervising,
        snapshot_requests,
        identity,
        serve_task: None,
        supervise_task,
    };
    let listener = match early_listener {
        Some(l) => l,
        None => {
            // The old version keeps serving until the new one is ready.
            let first = first_rx
                .recv_async()
                .await
                .unwrap_or(Err("supervisor ended".into()));
            match first.and_then(|()| bind()) {
                Ok(l) => l,
                Err(e) => {
                    let deadline = Instant::now();
                    stop_function(core, new, deadline).await;
                    return Err(format!("{e}; the previous version keeps running"));
                }
            }
        }
    };
    // From here this listener serves: on a replacement it takes over the
    // CPU's slot from the old listener, which only drains what it accepted.
    steer(core, &mut new, &listener);
    let stop = new.stop_accepting.clone();
    new.serve_task = Some(
        glommio::spawn_local(gateway::serve_listener_with(
            gateway::into_glommio(listener),
            serve,
            new.route.clone(),
            core.metrics.clone(),
            Some(handoff),
            async move { stop.wait().await },
        ))
        .detach(),
    );
    let id = new.function.id.clone();
    let old = core.functions.borrow_mut().insert(id, new);
    if let Some(old) = old {
        let deadline = Instant::now() + core.shared.orchestrator.drain_timeout();
        stop_function(core, old, deadline).await;
        return Ok(());
    }
    first_rx
        .recv_async()
        .await
        .unwrap_or(Err("supervisor ended".into()))
}

/// Put this core's `listener` of `f` in the slot of the core's CPU; on
/// failure, warn and leave the function to the kernel's hash.
fn steer(core: &CoreState, f: &mut FunctionOnCore, listener: &std::net::TcpListener) {
    let id = &f.function.id;
    if let Some(steering) = &f.steering {
        match steering.steer(core.cpu, listener) {
            Ok(()) => tracing::info!(
                "core {}: {id}: sk_reuseport steers cpu {}'s connections to this core",
                core.index,
                core.cpu
            ),
            Err(e) => {
                tracing::warn!(
                    "core {}: {id}: sk_reuseport steering unavailable, the kernel's hash \
                     spreads connections: {e}",
                    core.index
                );
                f.steering = None;
            }
        }
    }
    let on = i64::from(f.steering.is_some());
    core.steering
        .get_or_create(&FunctionLabel {
            function: id.clone(),
        })
        .set(on);
}

/// Empty the CPU's slot of a function leaving this core (not on a
/// replacement: the new listener already took the slot).
fn unsteer(core: &CoreState, f: &FunctionOnCore) {
    if let Some(steering) = &f.steering {
        if let Err(e) = steering.release(core.cpu) {
            tracing::warn!(
                "core {}: {}: clearing the sk_reuseport slot: {e}",
                core.index,
                f.function.id
            );
        }
    }
    core.steering.remove(&FunctionLabel {
        function: f.function.id.clone(),
    });
}

/// Forced snapshots waiting for a fresh instance of the function.
#[derive(Debug, Default)]
struct SnapshotRequests {
    /// The claim to dump the next instance that becomes ready.
    ticket: Option<DumpTicket>,
    /// Who waits for the outcome.
    waiters: Vec<flume::Sender<Result<SnapshotStatus, String>>>,
}

/// What the supervision task of one function on one core works with.
struct Supervision {
    core: Rc<CoreState>,
    supervisor: Rc<RefCell<Supervisor>>,
    route: Rc<FunctionRoute>,
    stop: Rc<Cell<bool>>,
    concurrency: usize,
    idle_timeout: Duration,
    warmup_requests: u32,
    scale: Arc<FunctionScale>,
    snapshot_requests: Rc<RefCell<SnapshotRequests>>,
    /// Told when this core's first instance is ready (or failed); `None`
    /// when the core starts with no instance.
    first: Option<flume::Sender<Result<(), String>>>,
    /// The function as deployed (its snapshot identity is re-checked before
    /// instances start, so a changed handler file gets a new snapshot).
    function: config::Function,
    /// This version's snapshot identity: while an update runs, the old and
    /// the new version each only dump and restore their own.
    identity: Rc<RefCell<String>>,
}

/// The outcome of a dump, from its thread: (instance id, status or error).
type DumpDone = (String, Result<SnapshotStatus, String>);

/// Mutable state of a supervision task.
struct SuperviseState {
    /// Instance id → gateway backend id, for the instances in the route.
    backends: HashMap<String, u64>,
    first: Option<flume::Sender<Result<(), String>>>,
    last_stats: SupervisorStats,
    /// The instance held out of the route while it is dumped.
    dumping: Option<String>,
    /// Whether that dump is the one forced snapshots wait for.
    dump_forced: bool,
    dump_tx: flume::Sender<DumpDone>,
    dump_rx: flume::Receiver<DumpDone>,
    /// The route's request count at the previous tick.
    last_requests: u64,
    /// When this core last saw a request start (the deploy counts as one).
    last_request_at: Instant,
}

/// The supervision task of one function on one core: ticks the supervisor,
/// keeps the route's backends equal to the ready instances, snapshots the
/// first fresh instance, and follows the autoscaler's allocation.
async fn supervise(sv: Supervision) {
    let (dump_tx, dump_rx) = flume::unbounded();
    let mut st = SuperviseState {
        backends: HashMap::new(),
        first: sv.first.clone(),
        last_stats: SupervisorStats::default(),
        dumping: None,
        dump_forced: false,
        dump_tx,
        dump_rx,
        last_requests: 0,
        last_request_at: Instant::now(),
    };
    while !sv.stop.get() {
        let now = Instant::now();
        // Allocation first, so a request that woke this task at zero
        // instances has its instance started (or thawed) in this same turn.
        follow_allocation(&sv, &mut st, now);
        let events = sv.supervisor.borrow_mut().tick(now, &sv.core.pool);
        for event in events {
            handle_event(&sv, &mut st, event);
        }
        while let Ok((instance, result)) = st.dump_rx.try_recv() {
            dump_finished(&sv, &mut st, &instance, result);
        }
        report_supervisor(
            &sv.core,
            sv.route.function(),
            &sv.supervisor.borrow(),
            &mut st.last_stats,
            usize::from(st.dumping.is_some()),
        );
        let next = sv
            .supervisor
            .borrow()
            .next_tick(now)
            .unwrap_or(now + SUPERVISE_IDLE_TICK);
        let wait = next
            .saturating_duration_since(Instant::now())
            .clamp(Duration::from_millis(1), SUPERVISE_IDLE_TICK);
        futures_lite::future::or(glommio::timer::sleep(wait), sv.route.demand().notified()).await;
    }
    for tx in std::mem::take(&mut sv.snapshot_requests.borrow_mut().waiters) {
        let _ = tx.send(Err("the function stopped on this core".into()));
    }
}

fn handle_event(sv: &Supervision, st: &mut SuperviseState, event: SupervisorEvent) {
    let core = &sv.core;
    let function = sv.route.function();
    match event {
        SupervisorEvent::Ready {
            instance,
            after,
            source,
        } => {
            tracing::info!(
                "core {}: {instance} ready after {:.1} ms ({})",
                core.index,
                after.as_secs_f64() * 1e3,
                source.as_str()
            );
            core.lifecycle.started(function, source.as_str());
            match source {
                StartSource::Spawn => core
                    .lifecycle
                    .observe_handshake(function, after.as_secs_f64()),
                StartSource::Restore => core
                    .lifecycle
                    .observe_restore(function, after.as_secs_f64()),
                StartSource::Warm => {}
            }
            if source == StartSource::Spawn && st.dumping.is_none() && start_dump(sv, st, &instance)
            {
                // Served once the dump is done (see `dump_finished`).
            } else {
                add_backend(sv, st, &instance);
            }
            if let Some(tx) = st.first.take() {
                let _ = tx.send(Ok(()));
            }
        }
        SupervisorEvent::Exited { instance, reason } => {
            tracing::warn!("core {}: {instance} exited: {reason}", core.index);
            if let Some(id) = st.backends.remove(&instance) {
                sv.route.remove_backend(id);
            }
        }
        SupervisorEvent::StartFailed {
            instance,
            error,
            retry_in,
        } => {
            tracing::error!(
                "core {}: {instance} failed to start: {error}; retrying in {} ms",
                core.index,
                retry_in.as_millis()
            );
            if let Some(tx) = st.first.take() {
                let _ = tx.send(Err(format!("{instance}: {error}")));
            }
        }
        SupervisorEvent::RestoreFailed {
            instance,
            error,
            over_budget,
            elapsed,
        } => {
            let reason = if over_budget { "over_budget" } else { "failed" };
            core.lifecycle.restore_failed(function, reason);
            tracing::error!(
                "core {}: restoring {instance} {reason} after {:.1} ms (restore_timeout_ms {}); \
                 the next instance is spawned: {error}",
                core.index,
                elapsed.as_secs_f64() * 1e3,
                core.shared.orchestrator.restore_timeout_ms
            );
        }
    }
}

/// Puts a ready instance into the route.
fn add_backend(sv: &Supervision, st: &mut SuperviseState, instance: &str) {
    let sup = sv.supervisor.borrow();
    let Some(inst) = sup.ready().iter().find(|i| i.id() == instance) else {
        return;
    };
    match InstanceUpstream::new(&sv.core, inst) {
        Ok(up) => {
            st.backends.insert(instance.to_string(), up.id);
            sv.route.add_backend(Rc::new(up), sv.concurrency.max(1));
        }
        Err(e) => tracing::error!("{instance}: cannot reach its network namespace: {e}"),
    }
}

/// Dumps `instance` (fresh, never served) on a thread of its own when the
/// function has no snapshot yet or one was asked for; returns whether it did.
fn start_dump(sv: &Supervision, st: &mut SuperviseState, instance: &str) -> bool {
    let store = sv.core.shared.snapshots.clone();
    let function = sv.route.function().to_string();
    let forced = sv.snapshot_requests.borrow_mut().ticket.take();
    let is_forced = forced.is_some();
    let mine = sv.identity.borrow().clone();
    let Some(ticket) = forced.or_else(|| store.claim(&function, &mine, false)) else {
        return false;
    };
    let sup = sv.supervisor.borrow();
    let Some(inst) = sup.ready().iter().find(|i| i.id() == instance) else {
        return false;
    };
    let (pid, log, port) = (inst.pid(), inst.log_path().to_path_buf(), inst.port());
    let netns = match inst.netns().fd().try_clone_to_owned() {
        Ok(fd) => fd,
        Err(e) => {
            tracing::warn!("{instance}: cannot snapshot: {e}");
            return false;
        }
    };
    let warmup = sv.warmup_requests;
    let tx = st.dump_tx.clone();
    let id = instance.to_string();
    tracing::info!(
        "core {}: snapshotting {id} into {}",
        sv.core.index,
        ticket.dir.display()
    );
    let spawned = std::thread::Builder::new()
        .name("aether-dump".into())
        .spawn(move || {
            let result = store
                .dump(ticket, pid, &log, || warm_up(&netns, port, warmup, &id))
                .map_err(|e| e.to_string());
            let _ = tx.send((id, result));
        });
    match spawned {
        Ok(_) => {
            st.dumping = Some(instance.to_string());
            st.dump_forced = is_forced;
            true
        }
        Err(e) => {
            tracing::warn!("{instance}: cannot start the dump thread: {e}");
            false
        }
    }
}

/// Sends `n` `GET /` requests to a fresh instance before its dump, each on
/// its own connection (closed before the dump, so none is in the images).
fn warm_up(
    netns: &OwnedFd,
    port: u16,
    n: u32,
    instance: &str,
) -> Result<(), crate::snapshot::SnapshotError> {
    use std::io::{Read, Write};
    use std::os::fd::AsFd;
    for i in 1..=n {
        let fail = |reason: String| crate::snapshot::SnapshotError::Warmup {
            instance: instance.to_string(),
            n: i,
            total: n,
            reason,
        };
        let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
        let mut s = netns::tcp_connect_in(netns.as_fd(), addr, Some(Duration::from_secs(5)))
            .map_err(|e| fail(e.to_string()))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| fail(e.to_string()))?;
        s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .map_err(|e| fail(e.to_string()))?;
        let mut sink = Vec::new();
        s.read_to_end(&mut sink).map_err(|e| fail(e.to_string()))?;
    }
    if n > 0 {
        // Let the handler close its side and return to accept(2).
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

fn dump_finished(
    sv: &Supervision,
    st: &mut SuperviseState,
    instance: &str,
    result: Result<SnapshotStatus, String>,
) {
    let function = sv.route.function();
    sv.core.lifecycle.snapshot_done(function, result.is_ok());
    match &result {
        Ok(s) => tracing::info!(
            "core {}: {function}: snapshot {} ready ({:.1} ms dump, {} KiB) from {instance}",
            sv.core.index,
            s.identity,
            s.dump_ms,
            s.bytes >> 10
        ),
        Err(e) => tracing::error!(
            "core {}: {function}: snapshot of {instance} failed, instances keep being spawned: {e}",
            sv.core.index
        ),
    }
    if st.dump_forced {
        for tx in std::mem::take(&mut sv.snapshot_requests.borrow_mut().waiters) {
            let _ = tx.send(result.clone());
        }
    }
    st.dumping = None;
    st.dump_forced = false;
    add_backend(sv, st, instance);
}

/// Samples this core's demand for the function's autoscaler, lets it decide
/// when due, and starts or retires instances to match this core's share.
fn follow_allocation(sv: &Supervision, st: &mut SuperviseState, now: Instant) {
    let route = &sv.route;
    let demand = route.in_flight() + route.queue_len() + route.parked();
    let requests = route.requests();
    let new_requests = requests != st.last_requests;
    if new_requests {
        st.last_requests = requests;
        st.last_request_at = now;
    }
    let active = demand > 0 || now.saturating_duration_since(st.last_request_at) < sv.idle_timeout;
    let mut sup = sv.supervisor.borrow_mut();
    let live = sup.live();
    let in_route = u32::try_from(route.backend_count()).unwrap_or(u32::MAX);
    sv.scale.publish(
        sv.core.index,
        u32::try_from(demand).unwrap_or(u32::MAX),
        u32::try_from(live).unwrap_or(u32::MAX),
        in_route,
        active,
    );
    // Requests waiting means capacity is short right now: decide at once
    // (at most every 2 ms) instead of at the next 100 ms mark.
    let urgent = route.queue_len() + route.parked() > 0;
    sv.scale.decide(now, urgent, new_requests);
    if st.first.is_some() {
        // The deploy waits for this core's first instance: keep it coming.
        return;
    }
    // No snapshot (its images were found unusable, or the handler changed)
    // while instances run: start one more, fresh, to dump — serving
    // instances are never dumped (their connections would be in the images).
    if live > 0 && st.dumping.is_none() && sv.snapshot_requests.borrow().ticket.is_none() {
        let mine = sv.identity.borrow().clone();
        if let Some(ticket) = sv
            .core
            .shared
            .snapshots
            .claim(sv.route.function(), &mine, false)
        {
            sv.snapshot_requests.borrow_mut().ticket = Some(ticket);
        }
    }
    // A snapshot waits for one more, fresh instance.
    let extra = usize::from(sv.snapshot_requests.borrow().ticket.is_some());
    let room = sv.scale.room_for(sv.core.index) as usize;
    let want = (sv.scale.allocation(sv.core.index) as usize + extra).min(room.max(live));
    let ready = sup.ready().len();
    if want >= ready {
        if sup.desired() != want {
            if want > sup.live() {
                // About to start instances: a handler file changed on disk
                // must not be restored from stale images.
                if let Ok(on_disk) = crate::snapshot::identity(&sv.function) {
                    if on_disk != *sv.identity.borrow() {
                        let s = sv.core.shared.snapshots.register(&sv.function);
                        sup.set_snapshot_identity(&s.identity);
                        *sv.identity.borrow_mut() = s.identity;
                    }
                }
            }
            sup.set_desired(want);
        }
        return;
    }
    // Fewer: drop what is still starting, then retire ready instances with
    // nothing in flight (never one in the middle of a request).
    sup.set_desired(ready);
    let idle: Vec<(String, u64)> = sup
        .ready()
        .iter()
        .filter_map(|i| {
            let bid = *st.backends.get(i.id())?;
            (route.backend_in_flight(bid) == Some(0)).then(|| (i.id().to_string(), bid))
        })
        .take(ready - want)
        .collect();
    for (id, bid) in idle {
        route.remove_backend(bid);
        st.backends.remove(&id);
        if let Some(SupervisorEvent::Exited { instance, reason }) = sup.retire(&id) {
            tracing::info!(
                "core {}: {instance} retired by the autoscaler ({reason})",
                sv.core.index
            );
        }
    }
}

/// Publish a supervisor's counters (as deltas since `last`) and its
/// instances by state.
fn report_supervisor(
    core: &CoreState,
    function: &str,
    sup: &Supervisor,
    last: &mut SupervisorStats,
    snapshotting: usize,
) {
    let now = sup.stats();
    core.lifecycle.add_counts(
        function,
        now.restarts - last.restarts,
        now.oom_kills - last.oom_kills,
        now.crashes - last.crashes,
    );
    *last = now;
    let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    let ready = sup.ready().len();
    let starting = sup.starting();
    let restoring = sup.live() - ready - starting;
    core.lifecycle.set_instances(
        function,
        &[
            // Ready and in the route; one held out for its dump is
            // "snapshotting".
            ("ready", count(ready.saturating_sub(snapshotting))),
            ("snapshotting", count(snapshotting)),
            ("starting", count(starting)),
            ("restoring", count(restoring)),
        ],
    );
    core.lifecycle
        .warm_pool
        .get_or_create(&crate::lifecycle_metrics::FunctionLabel {
            function: function.to_string(),
        })
        .set(count(sup.warm()));
}

/// Stop a function on this core: stop accepting, let in-flight requests
/// finish until `deadline` (the gateway's drain), then stop its instances
/// (SIGTERM, SIGKILL after a short grace) without blocking the executor.
async fn stop_function(core: &CoreState, f: FunctionOnCore, deadline: Instant) {
    f.stop_accepting.fire();
    let report = match f.serve_task {
        Some(task) => task.await,
        None => None,
    };
    if let Some(report) = report {
        if report.forced > 0 {
            tracing::warn!(
                "{}: {} connection(s) cut at the drain deadline",
                f.function.id,
                report.forced
            );
        }
    }
    f.stop_supervising.set(true);
    let _ = f.supervise_task.await;
    let grace = deadline
        .saturating_duration_since(Instant::now())
        .clamp(Duration::from_millis(100), STOP_GRACE);
    f.supervisor
        .borrow_mut()
        .begin_shutdown(Instant::now(), grace);
    loop {
        let events = f.supervisor.borrow_mut().tick(Instant::now(), &core.pool);
        for e in events {
            tracing::info!("{}: {e:?}", f.function.id);
        }
        if f.supervisor.borrow().is_stopped() {
            break;
        }
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    core.lifecycle.set_instances(&f.function.id, &[]);
    // The function's cgroup directory goes with its last instance; while
    // another core (or a replacing version) still has instances in it, the
    // kernel refuses (EBUSY) and the last one to stop removes it.
    let _ = std::fs::remove_dir(core.shared.cgroups.base().join(&f.function.id));
}

/// `aetherctl snapshot`: claim a new snapshot and start one more instance,
/// spawned, which is dumped once ready (a fresh instance: no request has
/// touched it); the answer comes when the dump ends.
fn request_snapshot(
    core: &CoreState,
    id: &str,
    done: flume::Sender<Result<SnapshotStatus, String>>,
) {
    let functions = core.functions.borrow();
    let Some(f) = functions.get(id) else {
        let _ = done.send(Err(format!("function '{id}' is not deployed on this core")));
        return;
    };
    let store = &core.shared.snapshots;
    let mut req = f.snapshot_requests.borrow_mut();
    if req.ticket.is_none() {
        let mine = f.identity.borrow().clone();
        match store.claim(id, &mine, true) {
            Some(ticket) => {
                req.ticket = Some(ticket);
                f.supervisor.borrow_mut().spawn_one_more();
            }
            None => {
                let s = store.status(id);
                if s.state != SnapshotState::Dumping {
                    let why = s.error.unwrap_or_else(|| s.state.as_str().to_string());
                    let _ = done.send(Err(format!("{id}: cannot snapshot: {why}")));
                    return;
                }
                // A dump is running (maybe on another core): answer with
                // its outcome.
                let store = store.clone();
                let id = id.to_string();
                glommio::spawn_local(async move {
                    let deadline = Instant::now() + SNAPSHOT_WAIT;
                    loop {
                        let s = store.status(&id);
                        if s.state != SnapshotState::Dumping || Instant::now() >= deadline {
                            let r = match s.state {
                                SnapshotState::Ready => Ok(s),
                                _ => Err(format!(
                                    "{id}: snapshot {}: {}",
                                    s.state.as_str(),
                                    s.error.unwrap_or_default()
                                )),
                            };
                            let _ = done.send(r);
                            return;
                        }
                        glommio::timer::sleep(Duration::from_millis(10)).await;
                    }
                })
                .detach();
                return;
            }
        }
    }
    req.waiters.push(done);
}

fn list(core: &CoreState) -> Vec<(String, Vec<InstanceStatus>)> {
    core.functions
        .borrow()
        .iter()
        .map(|(id, f)| {
            let sup = f.supervisor.borrow();
            let restarts = u32::try_from(sup.stats().restarts).unwrap_or(u32::MAX);
            let instances = sup
                .ready()
                .iter()
                .map(|i| InstanceStatus {
                    instance_id: i.id().to_string(),
                    core: u32::try_from(core.cpu).unwrap_or(u32::MAX),
                    state: format!("{:?}", i.state()).to_lowercase(),
                    pid: u32::try_from(i.pid()).unwrap_or(0),
                    restarts,
                })
                .collect();
            (id.clone(), instances)
        })
        .collect()
}

fn stats(core: &CoreState) -> Vec<(String, FunctionCoreStats)> {
    let latencies = core.metrics.latency_snapshot();
    core.functions
        .borrow()
        .iter()
        .map(|(id, f)| {
            let latency_us = latencies
                .iter()
                .find(|l| l.function == *id)
                .map_or_else(empty_latency_histogram, |l| l.histogram.clone());
            (
                id.clone(),
                FunctionCoreStats {
                    by_status: core.metrics.status_counts(id),
                    in_flight: f.route.in_flight() as u64,
                    queue_depth: f.route.queue_len() as u64,
                    latency_us,
                },
            )
        })
        .collect()
}

/// A handler instance as a gateway backend: connections are created inside
/// the instance's network namespace and go to its trigger port on loopback.
#[derive(Debug)]
struct InstanceUpstream {
    id: u64,
    netns: OwnedFd,
    addr: SocketAddrV4,
}

impl InstanceUpstream {
    fn new(core: &CoreState, inst: &crate::instance::Instance) -> io::Result<Self> {
        let id = (core.index as u64) << 48 | core.next_backend.get();
        core.next_backend.set(core.next_backend.get() + 1);
        Ok(InstanceUpstream {
            id,
            netns: inst.netns().fd().try_clone_to_owned()?,
            addr: SocketAddrV4::new(Ipv4Addr::LOCALHOST, inst.port()),
        })
    }
}

impl Upstream for InstanceUpstream {
    fn connect(&self) -> io::Result<std::net::TcpStream> {
        use std::os::fd::AsFd;
        netns::tcp_connect_in(self.netns.as_fd(), self.addr, None)
    }

    fn id(&self) -> u64 {
        self.id
    }
}
