//! Handler instances: spawn, handshake, supervise, clean up.
//!
//! One instance = one handler process that is pid 1 of its own pid namespace,
//! runs in a network namespace prepared ahead ([`netns::NetnsPool`]), sits in
//! its own memory cgroup ([`cgroup`]), writes stdout and stderr to its log
//! file ([`logs`]), and is only handed requests after the `READY` handshake
//! ([`handshake`]) *and* a successful probe connection to its trigger port.
//! Its lifecycle is the state machine in [`state`]; [`supervisor`] keeps the
//! desired number of instances of a function on one core.
//!
//! Starting is non-blocking and runtime-agnostic:
//!
//! ```text
//! start(spec, id, cgroups, netns) -> StartingInstance --poll()--> Pending(StartingInstance)
//!                                                    \-> Ready(Instance)  | Err(InstanceError)
//! ```
//!
//! `StartingInstance::wait()` is the blocking form (poll(2) on the socket and
//! pidfd). On any handshake error the process is killed and reaped and its
//! cgroup removed before the error is returned.
//!
//! **Environment of a handler**: `PATH`, `HOME` and `LANG` copied from aetherd
//! (PATH defaults to the usual system directories when aetherd has none),
//! then the function's `environment`, then — overriding anything above —
//! `AETHER_SOCKET`, `AETHER_FUNCTION_ID`, `AETHER_TRIGGER_PORT`,
//! `AETHER_INSTANCE_ID`. Nothing else leaks from aetherd's environment.

pub mod cgroup;
pub mod handshake;
pub mod logs;
pub mod netns;
pub mod restore;
pub mod spawn;
pub mod state;
pub mod supervisor;

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cgroup::{CgroupError, CgroupRoot, InstanceCgroup};
use handshake::{Handshake, HandshakeStep};
use logs::LogError;
use netns::{Netns, NetnsError};
use spawn::{SpawnError, SpawnRequest};
use state::{InstanceState, InvalidTransition, Lifecycle, LifecycleEvent};

/// Everything needed to start instances of one function on one core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceSpec {
    /// Function id (a cgroup and file name component).
    pub function_id: String,
    /// Program to execute: a path, or a bare name looked up in the
    /// handler's `PATH` (e.g. `python3`, as `config::Function::command` says).
    pub program: PathBuf,
    /// Arguments after `argv[0]`.
    pub args: Vec<String>,
    /// The function's extra environment.
    pub environment: BTreeMap<String, String>,
    /// `AETHER_TRIGGER_PORT`; the handler listens on it inside its netns.
    pub trigger_port: u16,
    /// Memory limit of each instance's cgroup.
    pub memory_limit_bytes: u64,
    /// Time from spawn to `READY` + listening port.
    pub handshake_timeout: Duration,
    /// Outbound network through the aetherd bridge.
    pub egress: bool,
    /// CPU the instance is pinned to (the owning executor's core).
    pub cpu: Option<usize>,
    /// Logs go to `<log_dir>/<function>/<instance>.log`.
    pub log_dir: PathBuf,
    /// Handshake sockets go to `<state_dir>/sock/<instance>.sock`.
    pub state_dir: PathBuf,
}

impl InstanceSpec {
    /// The spec of `f`'s instances on `cpu`, with logs under `log_dir` and
    /// handshake sockets under `state_dir`.
    pub fn from_function(
        f: &config::Function,
        cpu: Option<usize>,
        log_dir: &Path,
        state_dir: &Path,
    ) -> Self {
        let (program, args) = f.command();
        Self {
            function_id: f.id.clone(),
            program: PathBuf::from(program),
            args: args
                .into_iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect(),
            environment: f.environment.clone(),
            trigger_port: f.trigger_port,
            memory_limit_bytes: u64::from(f.memory_limit_mb) << 20,
            handshake_timeout: Duration::from_millis(f.handshake_timeout_ms),
            egress: f.egress,
            cpu,
            log_dir: log_dir.to_path_buf(),
            state_dir: state_dir.to_path_buf(),
        }
    }
}

/// Errors of starting or running an instance.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    /// Preparing a network namespace failed.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// Cgroup creation or clean-up failed.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// Creating the process failed.
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    /// Opening the log failed.
    #[error(transparent)]
    Log(#[from] LogError),
    /// The handshake socket could not be created or read.
    #[error("handshake socket {path}: {source}")]
    Socket {
        /// Socket path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The socket path does not fit in `sockaddr_un`.
    #[error("handshake socket path {path} is longer than 107 bytes; use a shorter state_dir")]
    SocketPathTooLong {
        /// The path.
        path: PathBuf,
    },
    /// No `READY` (or no listening port) before the deadline; the instance was killed.
    #[error("handler sent no READY and listened on no port within {after_ms} ms (was waiting for {waiting_for}); it was killed")]
    HandshakeTimeout {
        /// The handshake timeout.
        after_ms: u64,
        /// `READY on AETHER_SOCKET` or `a listener on AETHER_TRIGGER_PORT`.
        waiting_for: &'static str,
    },
    /// The handler sent something other than `READY`; the instance was killed.
    #[error("handler sent {got:?} instead of exactly \"READY\" on AETHER_SOCKET; it was killed")]
    HandshakeGarbage {
        /// What arrived (lossy UTF-8).
        got: String,
    },
    /// The handler exited during the handshake.
    #[error("handler exited before it was ready ({reason}); last output:\n{stderr_tail}")]
    ExitedBeforeReady {
        /// How it ended.
        reason: ExitReason,
        /// Last lines of its log.
        stderr_tail: String,
    },
    /// waitpid/pidfd failed.
    #[error("watching handler pid {pid}: {source}")]
    Wait {
        /// The pid.
        pid: i32,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A lifecycle event was not allowed.
    #[error(transparent)]
    Transition(#[from] InvalidTransition),
}

/// How an instance's process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitReason {
    /// Exited by itself with this code.
    Exited {
        /// Exit code.
        code: i32,
    },
    /// Killed by a signal nobody in aetherd sent.
    Signaled {
        /// Signal number.
        signal: i32,
    },
    /// Killed by the kernel's OOM killer in its cgroup.
    OomKilled {
        /// The cgroup limit it hit.
        limit_bytes: u64,
    },
    /// Ended after aetherd asked it to stop.
    Stopped,
}

impl ExitReason {
    /// A crash: anything but a requested stop or a clean `exit(0)`.
    pub fn is_failure(self) -> bool {
        !matches!(self, Self::Stopped | Self::Exited { code: 0 })
    }
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exited { code } => write!(f, "exited with code {code}"),
            Self::Signaled { signal } => write!(f, "killed by signal {signal}"),
            Self::OomKilled { limit_bytes } => {
                write!(
                    f,
                    "OOM-killed at its memory limit of {} MiB",
                    limit_bytes >> 20
                )
            }
            Self::Stopped => f.write_str("stopped by aetherd"),
        }
    }
}

fn classify(status: i32, oom_kills: u64, limit_bytes: u64, stop_requested: bool) -> ExitReason {
    let signaled = libc::WIFSIGNALED(status);
    if signaled && libc::WTERMSIG(status) == libc::SIGKILL && oom_kills > 0 {
        return ExitReason::OomKilled { limit_bytes };
    }
    if stop_requested {
        return ExitReason::Stopped;
    }
    if signaled {
        ExitReason::Signaled {
            signal: libc::WTERMSIG(status),
        }
    } else {
        ExitReason::Exited {
            code: libc::WEXITSTATUS(status),
        }
    }
}

/// A running handler instance (after `start`).
#[derive(Debug)]
pub struct Instance {
    id: String,
    function_id: String,
    pid: i32,
    pidfd: OwnedFd,
    netns: Netns,
    cgroup: Option<InstanceCgroup>,
    limit_bytes: u64,
    port: u16,
    lifecycle: Lifecycle,
    log_path: PathBuf,
    started_at: Instant,
    ready_after: Option<Duration>,
    exit: Option<ExitReason>,
    stop_requested: bool,
}

impl Instance {
    /// Instance id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Function id.
    pub fn function_id(&self) -> &str {
        &self.function_id
    }

    /// Pid as seen by aetherd (it is 1 inside its namespace).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The trigger port it listens on inside its namespace.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Current lifecycle state.
    pub fn state(&self) -> InstanceState {
        self.lifecycle.state()
    }

    /// Applies a lifecycle event (e.g. `RequestBegan` from the gateway).
    pub fn transition(
        &mut self,
        event: LifecycleEvent,
    ) -> Result<InstanceState, InvalidTransition> {
        self.lifecycle.apply(event)
    }

    /// Its network namespace.
    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// Its log file.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Its cgroup directory (None after clean-up).
    pub fn cgroup_path(&self) -> Option<&Path> {
        self.cgroup.as_ref().map(InstanceCgroup::path)
    }

    /// Spawn-to-ready time, once ready.
    pub fn ready_after(&self) -> Option<Duration> {
        self.ready_after
    }

    /// When it was spawned.
    pub fn started_at(&self) -> Instant {
        self.started_at
    }

    /// How it ended, once reaped.
    pub fn exit_reason(&self) -> Option<ExitReason> {
        self.exit
    }

    /// A new TCP connection to the handler: the socket is created inside the
    /// instance's network namespace (the calling thread enters it with
    /// `setns` and returns to its own), connects to 127.0.0.1:port, and has
    /// `TCP_NODELAY` set. This is what the gateway pools.
    pub fn connect_upstream(&self) -> io::Result<TcpStream> {
        self.netns
            .tcp_connect(SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.port), None)
    }

    /// Sends `signal` and marks the exit as requested (a later exit is
    /// `Stopped`, or `OomKilled` if the kernel got there first). Note: pid 1 of
    /// a namespace ignores signals it has no handler for, except SIGKILL.
    pub fn request_stop(&mut self, signal: i32) -> io::Result<()> {
        self.stop_requested = true;
        if self.exit.is_some() {
            return Ok(());
        }
        spawn::pidfd_signal(self.pidfd.as_fd(), signal)
    }

    /// SIGKILLs it (a requested stop).
    pub fn kill(&mut self) -> io::Result<()> {
        self.request_stop(libc::SIGKILL)
    }

    /// The pidfd (readable once the process exited).
    pub fn pidfd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.pidfd.as_fd()
    }

    /// Reaps without blocking. On exit: classifies it, moves the lifecycle to
    /// `Gone` (requested) or `Failed`, and removes the cgroup.
    pub fn try_wait(&mut self) -> Result<Option<ExitReason>, InstanceError> {
        if let Some(r) = self.exit {
            return Ok(Some(r));
        }
        let status = spawn::try_wait(self.pid).map_err(|source| InstanceError::Wait {
            pid: self.pid,
            source,
        })?;
        match status {
            Some(st) => Ok(Some(self.record_exit(st))),
            None => Ok(None),
        }
    }

    /// Kills (if still running) and reaps, blocking until the process is gone.
    pub fn kill_and_wait(&mut self) -> Result<ExitReason, InstanceError> {
        if let Some(r) = self.exit {
            return Ok(r);
        }
        let _ = self.kill();
        let st = spawn::wait_blocking(self.pid).map_err(|source| InstanceError::Wait {
            pid: self.pid,
            source,
        })?;
        Ok(self.record_exit(st))
    }

    fn record_exit(&mut self, status: i32) -> ExitReason {
        let ooms = self
            .cgroup
            .as_ref()
            .and_then(|c| c.oom_kills().ok())
            .unwrap_or(0);
        let reason = classify(status, ooms, self.limit_bytes, self.stop_requested);
        self.exit = Some(reason);
        if self.stop_requested && !self.lifecycle.state().is_terminal() {
            let _ = self.lifecycle.apply(LifecycleEvent::Drain);
        }
        let _ = self.lifecycle.apply(LifecycleEvent::Exited);
        if let Some(cg) = self.cgroup.take() {
            if let Err(e) = cg.destroy() {
                tracing::warn!(instance = %self.id, error = %e, "cgroup clean-up failed");
            }
        }
        reason
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if self.exit.is_none() {
            if let Err(e) = self.kill_and_wait() {
                tracing::warn!(instance = %self.id, error = %e, "could not reap handler");
            }
        }
        if let Some(cg) = self.cgroup.take() {
            let _ = cg.destroy();
        }
    }
}

/// Which part of the handshake a starting instance waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Ready,
    Port,
}

/// An instance between spawn and ready.
#[derive(Debug)]
pub struct StartingInstance {
    inst: Instance,
    hs: Handshake,
    phase: Phase,
    deadline: Instant,
    timeout: Duration,
}

/// Result of [`StartingInstance::poll`].
#[derive(Debug)]
pub enum StartProgress {
    /// Still in the handshake.
    Pending(StartingInstance),
    /// Ready for requests.
    Ready(Instance),
}

/// The environment a handler gets (see the module docs).
pub fn handler_env(
    spec: &InstanceSpec,
    instance_id: &str,
    socket: &Path,
) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    env.insert(
        "PATH".to_owned(),
        std::env::var("PATH").unwrap_or_else(|_| {
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()
        }),
    );
    for k in ["HOME", "LANG"] {
        if let Ok(v) = std::env::var(k) {
            env.insert(k.to_owned(), v);
        }
    }
    env.extend(spec.environment.clone());
    env.insert("AETHER_SOCKET".into(), socket.display().to_string());
    env.insert("AETHER_FUNCTION_ID".into(), spec.function_id.clone());
    env.insert("AETHER_TRIGGER_PORT".into(), spec.trigger_port.to_string());
    env.insert("AETHER_INSTANCE_ID".into(), instance_id.to_owned());
    env
}

/// Spawns instance `instance_id` of `spec` in `netns` and a new cgroup under
/// `cgroups`. Returns once the handler program runs; the handshake is driven
/// with [`StartingInstance::poll`] or [`StartingInstance::wait`].
///
/// The calling thread must outlive the instance (parent-death signal, see
/// [`spawn`]).
pub fn start(
    spec: &InstanceSpec,
    instance_id: &str,
    cgroups: &CgroupRoot,
    netns: Netns,
) -> Result<StartingInstance, InstanceError> {
    let started_at = Instant::now();
    let socket = spec
        .state_dir
        .join("sock")
        .join(format!("{instance_id}.sock"));
    if socket.as_os_str().len() > 107 {
        return Err(InstanceError::SocketPathTooLong { path: socket });
    }
    let hs = Handshake::bind(&socket).map_err(|source| InstanceError::Socket {
        path: socket.clone(),
        source,
    })?;
    let log: File = logs::open_log(&spec.log_dir, &spec.function_id, instance_id)?;
    let cg = cgroups.create(&spec.function_id, instance_id, spec.memory_limit_bytes)?;
    let env = handler_env(spec, instance_id, &socket);
    let program = spawn::resolve_program(&spec.program, env.get("PATH").map_or("", String::as_str));
    let spawned = (|| {
        let mut req = SpawnRequest::new(
            &program,
            &spec.args,
            env.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            netns.fd(),
            log.as_fd(),
        )?;
        req.cgroup = Some(&cg);
        req.cpu = spec.cpu;
        spawn::spawn_process(&req)
    })();
    let spawned = match spawned {
        Ok(s) => s,
        Err(e) => {
            let _ = cg.destroy();
            return Err(e.into());
        }
    };
    drop(log);
    let mut lifecycle = Lifecycle::new();
    lifecycle.apply(LifecycleEvent::Spawned)?;
    let inst = Instance {
        id: instance_id.to_owned(),
        function_id: spec.function_id.clone(),
        pid: spawned.pid,
        pidfd: spawned.pidfd,
        netns,
        cgroup: Some(cg),
        limit_bytes: spec.memory_limit_bytes,
        port: spec.trigger_port,
        lifecycle,
        log_path: logs::log_path(&spec.log_dir, &spec.function_id, instance_id),
        started_at,
        ready_after: None,
        exit: None,
        stop_requested: false,
    };
    Ok(StartingInstance {
        inst,
        hs,
        phase: Phase::Ready,
        deadline: started_at + spec.handshake_timeout,
        timeout: spec.handshake_timeout,
    })
}

impl StartingInstance {
    /// The instance being started.
    pub fn instance(&self) -> &Instance {
        &self.inst
    }

    /// Advances the handshake without blocking. On error the process has
    /// been killed and reaped.
    pub fn poll(mut self) -> Result<StartProgress, InstanceError> {
        match self.step() {
            Ok(true) => {
                self.inst.lifecycle.apply(LifecycleEvent::HandshakeOk)?;
                self.inst.ready_after = Some(self.inst.started_at.elapsed());
                Ok(StartProgress::Ready(self.inst))
            }
            Ok(false) => Ok(StartProgress::Pending(self)),
            Err(e) => {
                let _ = self.inst.kill_and_wait();
                Err(e)
            }
        }
    }

    fn step(&mut self) -> Result<bool, InstanceError> {
        if let Some(reason) = self.inst.try_wait()? {
            let stderr_tail = logs::tail_file(&self.inst.log_path, 20)
                .map(|l| l.join("\n"))
                .unwrap_or_default();
            return Err(InstanceError::ExitedBeforeReady {
                reason,
                stderr_tail,
            });
        }
        if self.phase == Phase::Ready {
            let step = self.hs.poll().map_err(|source| InstanceError::Socket {
                path: self.hs.path().to_path_buf(),
                source,
            })?;
            match step {
                HandshakeStep::Ready => self.phase = Phase::Port,
                HandshakeStep::Garbage(got) => {
                    return Err(InstanceError::HandshakeGarbage {
                        got: String::from_utf8_lossy(&got).into_owned(),
                    })
                }
                HandshakeStep::Pending => {}
            }
        }
        if self.phase == Phase::Port {
            let probe = self.inst.netns.tcp_connect(
                SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.inst.port),
                Some(Duration::from_millis(100)),
            );
            if probe.is_ok() {
                return Ok(true);
            }
        }
        if Instant::now() >= self.deadline {
            return Err(InstanceError::HandshakeTimeout {
                after_ms: u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX),
                waiting_for: match self.phase {
                    Phase::Ready => "READY on AETHER_SOCKET",
                    Phase::Port => "a listener on AETHER_TRIGGER_PORT",
                },
            });
        }
        Ok(false)
    }

    /// Blocks until ready or failed (poll(2) on the handshake socket and the
    /// pidfd; while waiting for the port, re-probes every millisecond).
    pub fn wait(mut self) -> Result<Instance, InstanceError> {
        loop {
            match self.poll()? {
                StartProgress::Ready(i) => return Ok(i),
                StartProgress::Pending(s) => self = s,
            }
            let left = self.deadline.saturating_duration_since(Instant::now());
            let cap = if self.phase == Phase::Port {
                Duration::from_millis(1)
            } else {
                left
            };
            let ms = i32::try_from(left.min(cap).as_millis())
                .unwrap_or(i32::MAX)
                .max(1);
            let mut fds = [
                libc::pollfd {
                    fd: self.hs.pollable_fd().as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.inst.pidfd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            let n = if self.phase == Phase::Port { 1 } else { 2 };
            let (first, _) = fds.split_at_mut(n);
            // Only the pidfd matters while probing the port.
            if self.phase == Phase::Port {
                first[0].fd = self.inst.pidfd.as_raw_fd();
            }
            // SAFETY: `first` is a valid array of `n` pollfd structs.
            unsafe { libc::poll(first.as_mut_ptr(), n as libc::nfds_t, ms) };
        }
    }
}
