//! The baselines, without aetherd: a fresh spawn, `criu restore` by the
//! command line, and restores per second with several at once.
//!
//! Instances are made with aetherd's own code (`dataplane::instance`): the
//! handler runs as pid 1 of its own pid namespace, in a pre-made network
//! namespace and its own memory cgroup, and sends `READY` on `AETHER_SOCKET`.
//! One such instance is dumped, left running, into images on tmpfs, exactly
//! as `dataplane/tests/criu_kernel.rs` does it: its network namespace is
//! external (`--external net[INODE]:KEY`) and `--network-lock skip`. Each
//! restore then runs
//!
//! ```text
//! criu restore -D IMAGES -W WORK --restore-detached --restore-sibling
//!     --inherit-fd fd[N]:KEY --manage-cgroups=ignore   (criu moved into a pre-made cgroup)
//! ```
//!
//! in a mount namespace with a private tmpfs `/run` (CRIU keeps its
//! kernel-probe cache there, `Criu::with_run_cache`). The time of one restore
//! is from starting `criu` to the first byte of the restored copy's answer to
//! a `GET` made inside its namespace; CRIU's own wall time is kept beside it.
//! The spawn time is from `instance::start` to `READY` (and its port
//! listening), and to the first answer byte.
//!
//! Namespace and cgroup are made before the clock starts in the latency runs
//! (aetherd makes namespaces ahead, in a pool); in the throughput run every
//! worker makes its own for each restore, inside the counted window, so the
//! rate is what two cores sustain end to end.

use super::probe::{fetch, Answer, ProbeError};
use crate::clock::duration_ns;
use crate::gateway::interrupt::interrupted;
use crate::histogram::{HistogramError, LatencyHistogram};
use dataplane::criu::{
    netns_inode, Criu, CriuError, DumpOptions, DumpReport, ExternalNetns, RestoreOptions,
};
use dataplane::instance::cgroup::{CgroupError, CgroupRoot, InstanceCgroup};
use dataplane::instance::netns::{Netns, NetnsError};
use dataplane::instance::{start, Instance, InstanceError, InstanceSpec};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use thiserror::Error;

/// The port the handler listens on inside its namespace.
const PORT: u16 = 8080;
/// The key the external network namespace is dumped and restored under.
const NETNS_KEY: &str = "coldstart-net";
/// Memory limit of each instance's cgroup (aetherd's default 128 MiB).
const MEMORY_LIMIT: u64 = 128 << 20;
/// How long a restored copy may take to accept its first connection.
const CONNECT_WITHIN: Duration = Duration::from_secs(2);

/// Errors of the baselines.
#[derive(Debug, Error)]
pub enum BaselineError {
    /// Not root.
    #[error("the CRIU and spawn baselines need root (namespaces, cgroups, criu); run as root")]
    NotRoot,
    /// CRIU is missing or does not work.
    #[error("CRIU at {path} is unusable: {source}; scripts/setup.sh builds it there, or pass --criu PATH")]
    Criu { path: PathBuf, source: CriuError },
    /// The handler file is missing.
    #[error("handler {0} not found (the quickstart's examples/hello.py); pass --handler PATH")]
    Handler(PathBuf),
    /// A CRIU run failed while measuring.
    #[error("{step}: {source}")]
    CriuRun {
        step: &'static str,
        source: CriuError,
    },
    #[error("cgroups: {0}")]
    Cgroup(#[from] CgroupError),
    #[error("network namespace: {0}")]
    Netns(#[from] NetnsError),
    #[error("spawning the handler: {0}")]
    Instance(#[from] InstanceError),
    /// The instance did not give the hello answer.
    #[error("{what}: {source}")]
    Answer {
        what: &'static str,
        source: ProbeError,
    },
    /// A temp dir could not be made.
    #[error("temp dir: {0}")]
    TempDir(std::io::Error),
    /// Restores were asked for before a dump.
    #[error("no images: snapshot() must run first")]
    NoImages,
    #[error("a restore worker panicked")]
    WorkerPanicked,
    #[error("interrupted by a signal")]
    Interrupted,
    #[error(transparent)]
    Histogram(#[from] HistogramError),
}

/// An image set to restore and how.
#[derive(Debug, Clone)]
struct Images {
    dir: PathBuf,
    /// The port the dumped handler listens on in its namespace.
    port: u16,
    /// The key its network namespace was dumped under.
    netns_key: String,
    /// The key of its log file, handed in as a fresh file (aetherd's dumps).
    log_key: Option<String>,
    /// `--tcp-established`, as at dump.
    tcp_established: bool,
}

/// One fresh spawn.
#[derive(Debug, Clone, Copy)]
pub struct SpawnSample {
    /// `start` → `READY` and the port listening.
    pub ready: Duration,
    /// `start` → first answer byte.
    pub first_byte: Duration,
}

/// One restore.
#[derive(Debug, Clone, Copy)]
pub struct RestoreSample {
    /// `criu restore` start → first answer byte of the restored copy.
    pub first_byte: Duration,
    /// Wall time of the `criu restore` process.
    pub criu: Duration,
}

/// Restores per second with `workers` at once.
#[derive(Debug, Clone)]
pub struct Throughput {
    pub workers: usize,
    pub restores: u64,
    pub window: Duration,
    /// Per restore, from making its namespace to its first answer byte.
    pub latency: LatencyHistogram,
}

impl Throughput {
    /// Completed restores per second.
    #[must_use]
    pub fn per_s(&self) -> f64 {
        #[allow(clippy::cast_precision_loss)] // counts far below 2^52
        let n = self.restores as f64;
        n / self.window.as_secs_f64().max(f64::MIN_POSITIVE)
    }
}

/// Root, CRIU, a cgroup group, a run dir and images on tmpfs; removes the
/// cgroup group on drop (killing anything left in it).
#[derive(Debug)]
pub struct Lab {
    criu: Criu,
    cgroups: CgroupRoot,
    spec: InstanceSpec,
    dir: tempfile::TempDir,
    images: tempfile::TempDir,
    dumped: Option<DumpReport>,
    seq: AtomicU64,
}

impl Lab {
    /// Checks root and `criu check`, and prepares the run.
    ///
    /// # Errors
    /// [`BaselineError`] naming what is missing.
    pub fn new(criu_path: &Path, handler: &Path) -> Result<Self, BaselineError> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return Err(BaselineError::NotRoot);
        }
        if !handler.is_file() {
            return Err(BaselineError::Handler(handler.to_path_buf()));
        }
        let criu_err = |source| BaselineError::Criu {
            path: criu_path.to_path_buf(),
            source,
        };
        let criu = Criu::new(criu_path);
        criu.check().map_err(criu_err)?;
        let criu = criu.with_run_cache().map_err(criu_err)?;
        let cgroups = CgroupRoot::detect(&format!("aetherless-coldstart-{}", std::process::id()))?;
        let dir = tempfile::Builder::new()
            .prefix("aether-coldstart.")
            .tempdir()
            .map_err(BaselineError::TempDir)?;
        let shm = Path::new("/dev/shm");
        let images = if shm.is_dir() {
            tempfile::Builder::new()
                .prefix("aether-coldstart-img.")
                .tempdir_in(shm)
        } else {
            tempfile::Builder::new()
                .prefix("aether-coldstart-img.")
                .tempdir()
        }
        .map_err(BaselineError::TempDir)?;
        let spec = InstanceSpec {
            function_id: "hello".to_owned(),
            // As aetherd runs a `.py` handler (config::Function::command).
            program: PathBuf::from("python3"),
            args: vec![handler.display().to_string()],
            environment: BTreeMap::new(),
            trigger_port: PORT,
            memory_limit_bytes: MEMORY_LIMIT,
            handshake_timeout: Duration::from_secs(10),
            egress: false,
            cpu: None,
            log_dir: dir.path().join("logs"),
            state_dir: dir.path().join("state"),
        };
        Ok(Self {
            criu,
            cgroups,
            spec,
            dir,
            images,
            dumped: None,
            seq: AtomicU64::new(0),
        })
    }

    /// A fresh instance name (cgroup and socket names).
    fn next_id(&self, prefix: &str) -> String {
        // SYNC: only uniqueness is needed; no data is published through it.
        format!("{prefix}{}", self.seq.fetch_add(1, Ordering::Relaxed))
    }

    /// What the restores run (for the JSON's parameters).
    #[must_use]
    pub fn restore_command(&self) -> String {
        format!(
            "{} restore -D IMAGES -W WORK --restore-detached --restore-sibling --inherit-fd fd[N]:{NETNS_KEY} \
             --manage-cgroups=ignore (criu moved into a pre-made memory cgroup), private tmpfs /run (kdat cache); \
             images on {}",
            self.criu.path().display(),
            if self.images.path().starts_with("/dev/shm") { "tmpfs (/dev/shm)" } else { "the temp dir" }
        )
    }

    /// Keeps the run dir (criu logs, handler logs) after the run; returns it.
    pub fn keep_run_dir(&mut self) -> &Path {
        self.dir.disable_cleanup(true);
        self.dir.path()
    }

    /// Spawns one instance, times it to `READY` and to its first answer,
    /// and kills it.
    ///
    /// # Errors
    /// [`BaselineError`].
    pub fn spawn_once(&self) -> Result<SpawnSample, BaselineError> {
        let ns = Netns::create(None)?;
        let id = self.next_id("s");
        let t0 = Instant::now();
        let mut inst = start(&self.spec, &id, &self.cgroups, ns)?.wait()?;
        let ready = t0.elapsed();
        let answer = ask(&inst, "the spawned handler")?;
        let first_byte = answer.first_byte_at.duration_since(t0);
        inst.kill_and_wait()?;
        Ok(SpawnSample { ready, first_byte })
    }

    /// Spawns one instance and dumps it right after `READY` (as aetherd
    /// does with `warmup_requests: 0`), left running; then kills it.
    ///
    /// # Errors
    /// [`BaselineError`].
    pub fn snapshot(&mut self) -> Result<DumpReport, BaselineError> {
        let ns = Netns::create(None)?;
        let id = self.next_id("d");
        let mut inst = start(&self.spec, &id, &self.cgroups, ns)?.wait()?;
        let opts = DumpOptions {
            leave_running: true,
            external_netns: Some(ExternalNetns {
                inode: netns_inode(inst.pid()).map_err(|source| BaselineError::CriuRun {
                    step: "reading the instance's netns inode",
                    source,
                })?,
                key: NETNS_KEY.to_owned(),
            }),
            // The namespace is external and private: nothing to lock.
            skip_network_lock: true,
            work_dir: Some(self.dir.path().join("dump")),
            ..DumpOptions::default()
        };
        let report = self
            .criu
            .dump(inst.pid(), self.images.path(), &opts)
            .map_err(|source| BaselineError::CriuRun {
                step: "criu dump of the spawned hello.py",
                source,
            })?;
        // --leave-running: the original still answers.
        ask(&inst, "the handler after its dump (--leave-running)")?;
        inst.kill_and_wait()?;
        self.dumped = Some(report);
        Ok(report)
    }

    /// This lab's own images (made by [`Lab::snapshot`]).
    fn own_images(&self) -> Result<Images, BaselineError> {
        if self.dumped.is_none() {
            return Err(BaselineError::NoImages);
        }
        Ok(Images {
            dir: self.images.path().to_path_buf(),
            port: PORT,
            netns_key: NETNS_KEY.to_owned(),
            log_key: None,
            tcp_established: false,
        })
    }

    /// Restores one copy of `images` into `ns` and `cg` with logs in
    /// `work`, times it to its first answer, kills and reaps it (the caller
    /// removes `cg`).
    fn restore_into(
        &self,
        images: &Images,
        ns: &Netns,
        cg: &InstanceCgroup,
        work: &Path,
    ) -> Result<RestoreSample, BaselineError> {
        // The dumped handler's log file is replaced by a fresh one of ours.
        let log = match &images.log_key {
            Some(key) => {
                let path = self.dir.path().join("logs").join("restored.log");
                std::fs::create_dir_all(self.dir.path().join("logs"))
                    .and_then(|()| std::fs::File::create(&path))
                    .map(|f| Some((f, key.clone())))
                    .map_err(BaselineError::TempDir)?
            }
            None => None,
        };
        let opts = RestoreOptions {
            netns: Some((ns.fd(), images.netns_key.clone())),
            inherit_files: log
                .iter()
                .map(|(f, key)| (f.as_fd(), key.clone()))
                .collect(),
            work_dir: Some(work.to_path_buf()),
            sibling: true,
            cgroup: Some(cg.path().to_path_buf()),
            tcp_established: images.tcp_established,
            ..RestoreOptions::default()
        };
        let criu_err = |source| BaselineError::CriuRun {
            step: "criu restore",
            source,
        };
        let t0 = Instant::now();
        let restored = self
            .criu
            .restore_start(&images.dir, &opts)
            .and_then(dataplane::criu::PendingRestore::wait)
            .map_err(criu_err)?;
        let _reap = Reaped(restored.pid);
        let answer = connect_in(ns, images.port)
            .and_then(fetch)
            .map_err(|source| BaselineError::Answer {
                what: "the restored copy",
                source,
            })?;
        Ok(RestoreSample {
            first_byte: answer.first_byte_at.duration_since(t0),
            criu: restored.duration,
        })
    }

    /// One restore of aetherd's own snapshot (`images`, made by aetherd for
    /// a function listening on `port`) by the command line, with the options
    /// aetherd restores it with (its netns key, its log file handed in, TCP
    /// established), namespace and cgroup made before the clock starts.
    ///
    /// # Errors
    /// [`BaselineError`].
    pub fn restore_aetherd_images_once(
        &self,
        images: &Path,
        port: u16,
    ) -> Result<RestoreSample, BaselineError> {
        let log_key =
            std::fs::read_to_string(images.join(dataplane::instance::restore::SOURCE_LOG))
                .ok()
                .map(|t| t.trim().trim_start_matches('/').to_owned())
                .filter(|k| !k.is_empty());
        let images = Images {
            dir: images.to_path_buf(),
            port,
            netns_key: dataplane::instance::restore::NETNS_KEY.to_owned(),
            log_key,
            tcp_established: true,
        };
        self.restore_with_premade(&images, "a")
    }

    /// One restore with namespace and cgroup made before the clock starts.
    ///
    /// # Errors
    /// [`BaselineError`].
    pub fn restore_once(&self) -> Result<RestoreSample, BaselineError> {
        self.restore_with_premade(&self.own_images()?, "r")
    }

    fn restore_with_premade(
        &self,
        images: &Images,
        prefix: &str,
    ) -> Result<RestoreSample, BaselineError> {
        let ns = Netns::create(None)?;
        let cg = self
            .cgroups
            .create("hello", &self.next_id(prefix), MEMORY_LIMIT)?;
        let work = self.dir.path().join("restore");
        let sample = self.restore_into(images, &ns, &cg, &work);
        cg.destroy()?;
        sample
    }

    /// `workers` threads restore one after another for `window`, each copy
    /// in its own namespace, cgroup and work dir, answering one request and
    /// then killed; counts the restores that completed.
    ///
    /// # Errors
    /// [`BaselineError`] from the first failed restore.
    pub fn restores_per_s(
        &self,
        workers: usize,
        window: Duration,
    ) -> Result<Throughput, BaselineError> {
        let images = &self.own_images()?;
        let t0 = Instant::now();
        let deadline = t0 + window;
        let per_worker: Vec<Result<(u64, LatencyHistogram), BaselineError>> =
            std::thread::scope(|s| {
                let handles: Vec<_> = (0..workers.max(1))
                    .map(|w| s.spawn(move || self.worker(images, w, deadline)))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or(Err(BaselineError::WorkerPanicked)))
                    .collect()
            });
        let window = t0.elapsed();
        let mut latency = LatencyHistogram::new()?;
        let mut restores = 0;
        for r in per_worker {
            let (n, h) = r?;
            restores += n;
            latency.merge(&h)?;
        }
        Ok(Throughput {
            workers: workers.max(1),
            restores,
            window,
            latency,
        })
    }

    /// One throughput worker: restores until `deadline`. The restored roots
    /// are this thread's children (`--restore-sibling`) and die before it ends.
    fn worker(
        &self,
        images: &Images,
        w: usize,
        deadline: Instant,
    ) -> Result<(u64, LatencyHistogram), BaselineError> {
        let work = self.dir.path().join(format!("worker{w}"));
        let mut h = LatencyHistogram::new()?;
        let mut n = 0;
        while Instant::now() < deadline {
            if interrupted() {
                return Err(BaselineError::Interrupted);
            }
            let t0 = Instant::now();
            let ns = Netns::create(None)?;
            let cg = self
                .cgroups
                .create("hello", &self.next_id("t"), MEMORY_LIMIT)?;
            let sample = self.restore_into(images, &ns, &cg, &work);
            cg.destroy()?;
            sample?;
            h.record(duration_ns(t0.elapsed()));
            n += 1;
        }
        Ok((n, h))
    }

    /// The handler's Python version (for the JSON).
    #[must_use]
    pub fn python_version(&self) -> String {
        std::process::Command::new(&self.spec.program)
            .arg("--version")
            .output()
            .ok()
            .map_or_else(
                || "unknown".to_owned(),
                |o| String::from_utf8_lossy(&o.stdout).trim().to_owned(),
            )
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = self.cgroups.cleanup_stale();
        let _ = std::fs::remove_dir(self.cgroups.base());
    }
}

/// A restored root (our child through `--restore-sibling`): SIGKILLed and
/// reaped on drop; it is pid 1 of its pid namespace, so the whole tree goes.
struct Reaped(i32);

impl Drop for Reaped {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the pid CRIU reported for a child not yet reaped
        // (we reap it just below), so it cannot have been reused.
        unsafe { libc::kill(self.0, libc::SIGKILL) };
        let _ = dataplane::instance::spawn::wait_blocking(self.0);
    }
}

/// One checked request to a running instance.
fn ask(inst: &Instance, what: &'static str) -> Result<Answer, BaselineError> {
    inst.connect_upstream()
        .map_err(|source| ProbeError::Io {
            step: "connecting to the handler",
            source,
        })
        .and_then(fetch)
        .map_err(|source| BaselineError::Answer { what, source })
}

/// A connection to the handler inside `ns`, retried until it accepts (a
/// restored listener accepts at once; the retry only bounds a surprise).
fn connect_in(ns: &Netns, port: u16) -> Result<TcpStream, ProbeError> {
    let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
    let t0 = Instant::now();
    loop {
        match ns.tcp_connect(addr, Some(Duration::from_secs(1))) {
            Ok(s) => return Ok(s),
            Err(e)
                if t0.elapsed() < CONNECT_WITHIN
                    && e.kind() == std::io::ErrorKind::ConnectionRefused =>
            {
                std::thread::sleep(Duration::from_micros(200));
            }
            Err(source) => {
                return Err(ProbeError::Io {
                    step: "connecting to the restored handler",
                    source,
                })
            }
        }
    }
}
