//! aetherd's life: start-up, the control loop, shutdown.
//!
//! ```text
//! load config ─► state/log dirs ─► pidfile (flock) ─► XDP policy attached
//! (`--xdp` / `orchestrator.xdp`, see `xdp`) ─► clean up a dead aetherd's
//! leftovers (control segment, cgroups, bridge) ─► placement plan (numa) ─►
//! one glommio executor per planned CPU ─► deploy the config's functions on
//! every core ─► metrics endpoint ─► control segment (readiness: aetherctl
//! sees it and gets a Pong) ─► control loop ─► drain ─► stop handlers ─►
//! XDP detached ─► remove control segment and pidfile
//! ```

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::registry::Registry;
use shm_abi::channel::ControlServer;

use crate::control_loop::ControlLoop;
use crate::core::{CoreHandle, CoreSetup, Shared};
use crate::metrics_http::MetricsServer;
use crate::pidfile::PidFile;
use crate::xdp::{XdpPortPolicy, XdpSettings};

/// Command-line options of aetherd (see `main.rs`).
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    pub config: PathBuf,
    pub state_dir: Option<PathBuf>,
    pub warm_pool: bool,
    pub xdp: Option<String>,
}

/// Why aetherd stopped with an error. `exit_code` maps each to the code
/// documented in the README.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    Config(config::ConfigErrors),
    #[error(transparent)]
    PidFile(#[from] crate::pidfile::PidFileError),
    #[error("cannot create {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("placement: {0}")]
    Placement(String),
    #[error("control segment: {0}")]
    Control(#[from] shm_abi::channel::ChannelError),
    #[error(transparent)]
    Metrics(#[from] crate::metrics_http::MetricsError),
    #[error("executor on cpu {cpu}: {reason}")]
    Executor { cpu: usize, reason: String },
    #[error(transparent)]
    Xdp(#[from] crate::xdp::XdpError),
    #[error("{0}")]
    Unsupported(String),
}

impl DaemonError {
    pub fn exit_code(&self) -> u8 {
        match self {
            DaemonError::Config(_) => 3,
            DaemonError::PidFile(crate::pidfile::PidFileError::AlreadyRunning { .. }) => 4,
            _ => 1,
        }
    }
}

/// Size of each of the control channel's two rings.
const CONTROL_RING_BYTES: usize = 2 << 20;

/// Start aetherd and run it until `aetherctl down`, SIGTERM or SIGINT.
pub fn run(opts: DaemonOptions) -> Result<(), DaemonError> {
    let started = Instant::now();
    let mut cfg = config::load_file(&opts.config).map_err(DaemonError::Config)?;
    if let Some(dir) = &opts.state_dir {
        cfg.orchestrator.state_dir = dir.clone();
    }
    let o = cfg.orchestrator.clone();
    for dir in [&o.state_dir, &o.log_dir] {
        create_private_dir(dir)?;
    }
    let _pidfile = PidFile::acquire(&o.state_dir.join(config::runtime::PIDFILE))?;
    // Before anything else is set up, so a failure leaves nothing to undo.
    let xdp = match XdpSettings::resolve(opts.xdp.as_deref(), o.xdp.as_ref()) {
        Some(settings) => {
            let policy = XdpPortPolicy::attach(&settings)?;
            tracing::info!(
                "XDP attached to {} in {} mode, strict {}, allowed ports {:?}",
                settings.interface,
                policy.mode(),
                settings.strict,
                settings.allow_ports
            );
            Some(policy)
        }
        None => None,
    };
    let control_path = o.state_dir.join(config::runtime::CONTROL_SEGMENT);
    if control_path.exists() {
        tracing::info!(
            "removing the control segment of a previous aetherd: {}",
            control_path.display()
        );
        let _ = std::fs::remove_file(&control_path);
    }
    let mut shared = Shared::prepare(&cfg)?;

    let terminate = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, terminate.clone())
            .map_err(|e| DaemonError::Unsupported(format!("cannot install signal handler: {e}")))?;
    }

    // Everything that can fail is set up before the first executor starts, so
    // a failure (a metrics port in use, no room for the control segment)
    // leaves no handler running.
    let cpus = crate::core::plan_cpus(&o.cores).map_err(DaemonError::Placement)?;
    shared.cores = cpus.len();
    if opts.warm_pool {
        // The pool's size is per function, spread over the cores.
        let size = cfg.orchestrator.warm_pool_size as usize;
        shared.warm_pool_per_core = size.div_ceil(cpus.len().max(1));
        match shared.snapshots.criu() {
            Some(_) => tracing::info!(
                "--warm-pool: {} frozen instance(s) per function on each of {} core(s), once a snapshot exists",
                shared.warm_pool_per_core,
                cpus.len()
            ),
            None => tracing::warn!(
                "--warm-pool: no CRIU here, so no warm pool; instances are spawned"
            ),
        }
    }
    let mut registry = Registry::with_prefix("aether");
    shared.scale_metrics.register(&mut registry);
    let setups: Vec<CoreSetup> = cpus
        .iter()
        .enumerate()
        .map(|(index, executor)| CoreSetup::new(index, *executor, &shared, &mut registry))
        .collect();
    if let Some(xdp) = &xdp {
        registry.register_collector(Box::new(xdp.collector()));
    }
    let metrics = MetricsServer::start(o.metrics_addr, Arc::new(registry))?;
    tracing::info!("metrics on http://{}/metrics", metrics.local_addr());
    // aetherctl's readiness probe (Ping) is answered once `serve` runs, after
    // the initial deploy.
    let server = ControlServer::create(&control_path, CONTROL_RING_BYTES)?;

    let mut cores = Vec::with_capacity(setups.len());
    for setup in setups {
        let cpu = setup.cpu();
        match CoreHandle::spawn(setup) {
            Ok(core) => cores.push(core),
            Err(reason) => {
                let deadline = Instant::now();
                ControlLoop::new(cfg.clone(), cores, started, shared.snapshots.clone())
                    .shutdown(deadline);
                return Err(DaemonError::Executor { cpu, reason });
            }
        }
    }
    tracing::info!(
        "{} executor(s) on cpu(s) {:?}",
        cores.len(),
        cores.iter().map(|c| c.cpu()).collect::<Vec<_>>()
    );

    let mut control = ControlLoop::new(cfg.clone(), cores, started, shared.snapshots.clone());
    control.set_xdp(xdp);
    let initial = control.deploy_initial(&cfg);
    tracing::info!("deployed {} function(s): {initial}", cfg.functions.len());
    tracing::info!("ready: control segment {}", control_path.display());
    let drain = control.serve(server, &terminate);

    tracing::info!("shutting down: draining for up to {} ms", drain.as_millis());
    // Drops the XDP policy (detaches) after the cores stopped.
    control.shutdown(Instant::now() + drain);
    let _ = std::fs::remove_file(&control_path);
    drop(metrics);
    shared.teardown();
    tracing::info!("stopped after {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Create `dir` (and parents) and make it accessible to root only.
fn create_private_dir(dir: &std::path::Path) -> Result<(), DaemonError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |source| DaemonError::Dir {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
    Ok(())
}

/// How often the control loop looks at the signal flag while idle.
pub(crate) const SIGNAL_POLL: Duration = Duration::from_millis(100);

/// Whether SIGTERM or SIGINT arrived.
pub(crate) fn terminated(flag: &AtomicBool) -> bool {
    // SYNC: Relaxed: the flag is set by signal-hook's handler and carries no data.
    flag.load(Ordering::Relaxed)
}
