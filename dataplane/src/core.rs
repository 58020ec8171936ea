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
use crate::instance::InstanceSpec;
use crate::lifecycle_metrics::{FunctionLabel, LifecycleMetrics};
use crate::snapshot::{SnapshotStatus, SnapshotStore};
use crate::steering::Steering;

/// How often a settled supervisor looks for exited instances.
const SUPERVISE_IDLE_TICK: Duration = Duration::from_millis(50);
/// Longest a handler gets between SIGTERM and SIGKILL when it is stopped
/// (python as pid 1 of its namespace ignores SIGTERM unless it handles it).
const STOP_GRACE: Duration = Duration::from_secs(1);
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
                let _ = done.send(());
            }
            CoreCommand::List { reply } => {
                let _ = reply.send(list(&core));
            }
            CoreCommand::Stats { reply } => {
                let _ = reply.send(stats(&core));
            }
            CoreCommand::Snapshot { id, done } => {
                let _ = done.send(Err(format!("{id}: forced snapshots are not wired yet")));
            }
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

/// Instances a core keeps of a function (the autoscaler of issue 6 will
/// move this between `min_instances` and `max_instances`).
fn desired_instances(f: &config::Function) -> usize {
    (f.min_instances as usize).max(1)
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
    let supervisor = Rc::new(RefCell::new(Supervisor::new(
        spec,
        core.shared.cgroups.clone(),
        desired_instances(&f),
        BackoffPolicy::default(),
    )));
    let stop_supervising = Rc::new(Cell::new(false));
    let (first_tx, first_rx) = flume::bounded::<Result<(), String>>(1);
    let supervise_task = glommio::spawn_local(supervise(
        core.clone(),
        supervisor.clone(),
        route.clone(),
        Rc::new(RefCell::new(HashMap::new())),
        stop_supervising.clone(),
        f.concurrency as usize,
        first_tx,
    ))
    .detach();
    let mut new = FunctionOnCore {
        function: f,
        steering,
        route,
        supervisor,
        stop_accepting: Rc::new(Signal::new()),
        stop_supervising,
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
        glommio::spawn_local(gateway::serve_listener(
            gateway::into_glommio(listener),
            serve,
            new.route.clone(),
            core.metrics.clone(),
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

/// The supervision task of one function on one core: ticks the supervisor and
/// keeps the route's backends equal to the ready instances.
async fn supervise(
    core: Rc<CoreState>,
    supervisor: Rc<RefCell<Supervisor>>,
    route: Rc<FunctionRoute>,
    backends: Rc<RefCell<HashMap<String, u64>>>,
    stop: Rc<Cell<bool>>,
    concurrency: usize,
    first: flume::Sender<Result<(), String>>,
) {
    let mut first = Some(first);
    let mut last_stats = SupervisorStats::default();
    while !stop.get() {
        let now = Instant::now();
        let events = supervisor.borrow_mut().tick(now, &core.pool);
        for event in events {
            match event {
                SupervisorEvent::Ready { instance, after } => {
                    tracing::info!(
                        "core {}: {instance} ready after {:.1} ms",
                        core.index,
                        after.as_secs_f64() * 1e3
                    );
                    core.lifecycle
                        .observe_handshake(route.function(), after.as_secs_f64());
                    let sup = supervisor.borrow();
                    if let Some(inst) = sup.ready().iter().find(|i| i.id() == instance) {
                        match InstanceUpstream::new(&core, inst) {
                            Ok(up) => {
                                backends.borrow_mut().insert(instance.clone(), up.id);
                                route.add_backend(Rc::new(up), concurrency.max(1));
                            }
                            Err(e) => tracing::error!(
                                "{instance}: cannot reach its network namespace: {e}"
                            ),
                        }
                    }
                    if let Some(tx) = first.take() {
                        let _ = tx.send(Ok(()));
                    }
                }
                SupervisorEvent::Exited { instance, reason } => {
                    tracing::warn!("core {}: {instance} exited: {reason}", core.index);
                    if let Some(id) = backends.borrow_mut().remove(&instance) {
                        route.remove_backend(id);
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
                    if let Some(tx) = first.take() {
                        let _ = tx.send(Err(format!("{instance}: {error}")));
                    }
                }
            }
        }
        report_supervisor(
            &core,
            route.function(),
            &supervisor.borrow(),
            &mut last_stats,
        );
        let next = supervisor
            .borrow()
            .next_tick(now)
            .unwrap_or(now + SUPERVISE_IDLE_TICK);
        let wait = next
            .saturating_duration_since(Instant::now())
            .clamp(Duration::from_millis(1), SUPERVISE_IDLE_TICK);
        glommio::timer::sleep(wait).await;
    }
}

/// Publish a supervisor's counters (as deltas since `last`) and its
/// instances by state.
fn report_supervisor(
    core: &CoreState,
    function: &str,
    sup: &Supervisor,
    last: &mut SupervisorStats,
) {
    let now = sup.stats();
    core.lifecycle.add_counts(
        function,
        now.restarts - last.restarts,
        now.oom_kills - last.oom_kills,
        now.crashes - last.crashes,
    );
    *last = now;
    let ready = i64::try_from(sup.ready().len()).unwrap_or(i64::MAX);
    let starting = i64::try_from(sup.starting()).unwrap_or(i64::MAX);
    core.lifecycle
        .set_instances(function, &[("ready", ready), ("starting", starting)]);
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
