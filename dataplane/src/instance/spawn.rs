//! Creating a handler process in its own pid namespace, inside a prepared
//! network namespace and a memory cgroup.
//!
//! Everything the child needs (argv, envp, fds) is built *before* the clone,
//! because aetherd is multi-threaded and the child may only make
//! async-signal-safe calls until `execve`. The sequence:
//!
//! ```text
//! parent                                   child (pid 1 of a new pid namespace)
//! ------                                   -----
//! pipe2(sync), pipe2(err), CStrings
//! clone(CLONE_NEWPID | SIGCHLD) ---------> setns(netns, CLONE_NEWNET)
//! pidfd_open(pid)                          setsid()            (CRIU wants a session leader)
//! write pid to <cgroup>/cgroup.procs       prctl(PR_SET_PDEATHSIG, SIGKILL)
//! sched_setaffinity(pid, {cpu})            read(sync) -- EOF means the parent died: _exit
//! write(sync, 1 byte) -------------------> dup2 stdin=/dev/null, stdout=stderr=log
//!                                          close_range(3.., CLOSE_RANGE_CLOEXEC)
//!                                          reset signal mask and dispositions
//! read(err): EOF = exec succeeded <------- execve  (on failure: write {stage u32, errno i32}
//!            8 bytes = failure                      to err, _exit(127))
//! ```
//!
//! The sync pipe closes the race where the parent dies before
//! `PR_SET_PDEATHSIG` is set: the child then reads EOF and exits.
//!
//! **Parent-death signal and threads**: `PR_SET_PDEATHSIG` fires when the
//! *thread* that cloned the child exits, not the process. The thread calling
//! [`spawn_process`] must live as long as the instance (aetherd's executor
//! threads do). Leftovers are also killed by cgroup clean-up at the next start.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::cgroup::{CgroupError, InstanceCgroup};

/// Where the child failed before or at `execve`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum ChildStage {
    /// `setns(netns, CLONE_NEWNET)`.
    Setns = 1,
    /// `setsid()`.
    Setsid = 2,
    /// `prctl(PR_SET_PDEATHSIG)`.
    Pdeathsig = 3,
    /// `dup2` of stdio.
    Dup2 = 4,
    /// `execve`.
    Exec = 5,
}

impl ChildStage {
    fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => Self::Setns,
            2 => Self::Setsid,
            3 => Self::Pdeathsig,
            4 => Self::Dup2,
            5 => Self::Exec,
            _ => return None,
        })
    }
}

/// Errors while creating the process.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// A string for argv/envp contained a NUL byte.
    #[error("argument or environment entry contains a NUL byte: {0:?}")]
    Nul(String),
    /// A syscall in the parent failed.
    #[error("{op}: {source}")]
    Sys {
        /// The call.
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The child failed before its program ran.
    #[error("handler child failed at {stage:?} for {program}: {source}")]
    Child {
        /// The program.
        program: String,
        /// The failing step.
        stage: ChildStage,
        /// The child's errno.
        #[source]
        source: io::Error,
    },
    /// Joining the cgroup failed (the child was killed).
    #[error("moving the handler into its cgroup failed: {0}")]
    Cgroup(#[from] CgroupError),
}

fn sys(op: &'static str) -> impl FnOnce(io::Error) -> SpawnError {
    move |source| SpawnError::Sys { op, source }
}

/// What the child needs; all built by [`SpawnRequest::new`] before cloning.
#[derive(Debug)]
pub struct SpawnRequest<'a> {
    program: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
    /// Network namespace to join.
    pub netns: BorrowedFd<'a>,
    /// Log file for stdout and stderr.
    pub log: BorrowedFd<'a>,
    /// Cgroup to join before exec.
    pub cgroup: Option<&'a InstanceCgroup>,
    /// CPU to pin to.
    pub cpu: Option<usize>,
}

fn cstring(s: &[u8]) -> Result<CString, SpawnError> {
    CString::new(s).map_err(|_| SpawnError::Nul(String::from_utf8_lossy(s).into_owned()))
}

impl<'a> SpawnRequest<'a> {
    /// `argv[0]` is `program` (an absolute or relative path: `execve` does
    /// not search `PATH`, see [`resolve_program`]); `env` entries become
    /// `KEY=VALUE`.
    pub fn new<'e>(
        program: &Path,
        args: &[String],
        env: impl IntoIterator<Item = (&'e str, &'e str)>,
        netns: BorrowedFd<'a>,
        log: BorrowedFd<'a>,
    ) -> Result<Self, SpawnError> {
        let program = cstring(program.as_os_str().as_bytes())?;
        let mut argv = vec![program.clone()];
        for a in args {
            argv.push(cstring(a.as_bytes())?);
        }
        let envp = env
            .into_iter()
            .map(|(k, v)| cstring(format!("{k}={v}").as_bytes()))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            program,
            argv,
            envp,
            netns,
            log,
            cgroup: None,
            cpu: None,
        })
    }
}

/// `program` itself when it contains a `/`; otherwise the first executable
/// file of that name in the directories of `path` (a `PATH` value), like a
/// shell would find it. Unresolvable names come back unchanged (the exec
/// then fails with ENOENT, reported as [`SpawnError::Child`]).
pub fn resolve_program(program: &Path, path: &str) -> PathBuf {
    if program.as_os_str().as_bytes().contains(&b'/') {
        return program.to_path_buf();
    }
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let candidate = Path::new(dir).join(program);
        let executable = std::fs::metadata(&candidate)
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
        if executable {
            return candidate;
        }
    }
    program.to_path_buf()
}

/// A running child: its pid (in aetherd's pid namespace) and a pidfd.
#[derive(Debug)]
pub struct Spawned {
    /// Pid as seen by aetherd.
    pub pid: i32,
    /// pidfd for race-free signalling and polling.
    pub pidfd: OwnedFd,
}

fn pipe_cloexec() -> Result<(OwnedFd, OwnedFd), SpawnError> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two fds into the 2-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(sys("pipe2")(io::Error::last_os_error()));
    }
    // SAFETY: both fds are fresh and owned by nobody else.
    let r = unsafe { OwnedFd::from_raw_fd(fds[0]) };
    // SAFETY: as above.
    let w = unsafe { OwnedFd::from_raw_fd(fds[1]) };
    Ok((r, w))
}

/// Opens a pidfd for `pid`.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open has no memory arguments.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = RawFd::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: the kernel returned a fresh fd we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sends `sig` through a pidfd (no pid-reuse race). ESRCH (already exited) is Ok.
pub fn pidfd_signal(pidfd: BorrowedFd<'_>, sig: i32) -> io::Result<()> {
    // SAFETY: null siginfo is allowed; the fd is a valid pidfd.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ESRCH) {
            return Err(e);
        }
    }
    Ok(())
}

/// Blocking reap of `pid`; returns the raw wait status.
pub fn wait_blocking(pid: i32) -> io::Result<i32> {
    let mut status = 0;
    loop {
        // SAFETY: waitpid writes the status into a valid i32.
        let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
        if rc == pid {
            return Ok(status);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

/// Non-blocking reap; `Some(status)` when the child has exited.
pub fn try_wait(pid: i32) -> io::Result<Option<i32>> {
    let mut status = 0;
    // SAFETY: waitpid writes the status into a valid i32.
    let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    match rc {
        0 => Ok(None),
        r if r == pid => Ok(Some(status)),
        _ => Err(io::Error::last_os_error()),
    }
}

fn kill_and_reap(pid: i32) {
    // SAFETY: the pid is our unreaped child, so it cannot have been reused.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let _ = wait_blocking(pid);
}

/// Everything the child touches, as raw values (no allocation after clone).
struct ChildArgs {
    program: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    netns: RawFd,
    log: RawFd,
    devnull: RawFd,
    sync_r: RawFd,
    sync_w: RawFd,
    err_r: RawFd,
    err_w: RawFd,
}

/// Reports `stage` and errno on the error pipe and exits. Async-signal-safe.
fn child_fail(err_w: RawFd, stage: ChildStage) -> ! {
    // SAFETY: __errno_location returns this thread's errno slot.
    let slot = unsafe { libc::__errno_location() };
    // SAFETY: the slot is valid for the life of the thread.
    let errno = unsafe { *slot };
    let mut msg = [0u8; 8];
    let (a, b) = msg.split_at_mut(4);
    a.copy_from_slice(&(stage as u32).to_ne_bytes());
    b.copy_from_slice(&errno.to_ne_bytes());
    // SAFETY: writes 8 bytes from a valid buffer.
    unsafe { libc::write(err_w, msg.as_ptr().cast(), msg.len()) };
    // SAFETY: exits without running destructors or atexit handlers (the child
    // shares copies of the parent's state, which must not be torn down).
    unsafe { libc::_exit(127) }
}

/// The child side. Only raw, async-signal-safe syscalls.
///
/// # Safety
/// Must run only in the freshly cloned child; every pointer in `a` must point
/// to memory prepared before the clone (the child has a copy of it).
#[allow(clippy::multiple_unsafe_ops_per_block)] // one SAFETY argument covers the whole child
unsafe fn child_main(a: &ChildArgs) -> ! {
    // SAFETY: all calls below are async-signal-safe syscalls on fds and
    // NUL-terminated arrays prepared before the clone (see ChildArgs).
    unsafe {
        libc::close(a.sync_w);
        libc::close(a.err_r);
        if libc::setns(a.netns, libc::CLONE_NEWNET) != 0 {
            child_fail(a.err_w, ChildStage::Setns);
        }
        if libc::setsid() < 0 {
            child_fail(a.err_w, ChildStage::Setsid);
        }
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
            child_fail(a.err_w, ChildStage::Pdeathsig);
        }
        let mut byte = 0u8;
        loop {
            let r = libc::read(a.sync_r, std::ptr::from_mut(&mut byte).cast(), 1);
            if r == 1 {
                break;
            }
            if r < 0 && *libc::__errno_location() == libc::EINTR {
                continue;
            }
            // The parent died (EOF) or told us nothing: never run the handler.
            libc::_exit(126);
        }
        libc::close(a.sync_r);
        if libc::dup2(a.devnull, 0) < 0 || libc::dup2(a.log, 1) < 0 || libc::dup2(a.log, 2) < 0 {
            child_fail(a.err_w, ChildStage::Dup2);
        }
        // Whatever aetherd opened without O_CLOEXEC (runtime eventfds, ...)
        // must not leak into the handler: mark every fd above stderr
        // close-on-exec (the error pipe already is, and must stay open until
        // the exec). Kernels before 5.11 lack close_range: ENOSYS is ignored.
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        );
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        // Ignored dispositions survive execve (Rust ignores SIGPIPE): reset all.
        for sig in 1..32 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        libc::execve(a.program, a.argv, a.envp);
        child_fail(a.err_w, ChildStage::Exec)
    }
}

/// Clones the handler process as described in the module docs.
pub fn spawn_process(req: &SpawnRequest<'_>) -> Result<Spawned, SpawnError> {
    let argv_ptrs: Vec<*const libc::c_char> = req
        .argv
        .iter()
        .map(|c| c.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let envp_ptrs: Vec<*const libc::c_char> = req
        .envp
        .iter()
        .map(|c| c.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let devnull = OwnedFd::from(
        std::fs::OpenOptions::new()
            .read(true)
            .open("/dev/null")
            .map_err(sys("open /dev/null"))?,
    );
    let (sync_r, sync_w) = pipe_cloexec()?;
    let (err_r, err_w) = pipe_cloexec()?;
    let args = ChildArgs {
        program: req.program.as_ptr(),
        argv: argv_ptrs.as_ptr(),
        envp: envp_ptrs.as_ptr(),
        netns: req.netns.as_raw_fd(),
        log: req.log.as_raw_fd(),
        devnull: devnull.as_raw_fd(),
        sync_r: sync_r.as_raw_fd(),
        sync_w: sync_w.as_raw_fd(),
        err_r: err_r.as_raw_fd(),
        err_w: err_w.as_raw_fd(),
    };
    let flags = libc::c_long::from(libc::CLONE_NEWPID | libc::SIGCHLD);
    // SAFETY: a raw clone without CLONE_VM and with a null stack behaves like
    // fork(2): the child gets a copy of this address space and continues here
    // on its copy of the stack. It then only runs `child_main`, which makes
    // async-signal-safe syscalls and never returns.
    let pid = unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) };
    if pid == 0 {
        // SAFETY: we are the freshly cloned child; `args` points into memory
        // prepared before the clone.
        unsafe { child_main(&args) }
    }
    if pid < 0 {
        return Err(sys("clone(CLONE_NEWPID)")(io::Error::last_os_error()));
    }
    let pid = i32::try_from(pid)
        .map_err(|_| sys("clone pid")(io::Error::from_raw_os_error(libc::ERANGE)))?;
    drop(sync_r);
    drop(err_w);
    drop(devnull);
    let pidfd = match pidfd_open(pid) {
        Ok(fd) => fd,
        Err(e) => {
            kill_and_reap(pid);
            return Err(sys("pidfd_open")(e));
        }
    };
    if let Some(cg) = req.cgroup {
        if let Err(e) = cg.add_pid(pid) {
            kill_and_reap(pid);
            return Err(e.into());
        }
    }
    if let Some(cpu) = req.cpu {
        // SAFETY: cpu_set_t is plain data; zeroed is the empty set.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: CPU_SET writes one bit inside `set`; cpu is checked by the
        // kernel (an out-of-range cpu makes sched_setaffinity fail).
        unsafe { libc::CPU_SET(cpu, &mut set) };
        // SAFETY: `set` is a valid cpu_set_t of the size we pass.
        let rc = unsafe { libc::sched_setaffinity(pid, std::mem::size_of_val(&set), &set) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            kill_and_reap(pid);
            return Err(sys("sched_setaffinity")(e));
        }
    }
    let go = [1u8];
    // SAFETY: writes one byte from a valid buffer to our pipe end.
    let w = unsafe { libc::write(sync_w.as_raw_fd(), go.as_ptr().cast(), 1) };
    if w != 1 {
        let e = io::Error::last_os_error();
        kill_and_reap(pid);
        return Err(sys("release child")(e));
    }
    drop(sync_w);
    let mut msg = [0u8; 8];
    let mut got = 0usize;
    while got < msg.len() {
        let rest = &mut msg[got..];
        // SAFETY: reads into the unfilled tail of `msg`.
        let r = unsafe { libc::read(err_r.as_raw_fd(), rest.as_mut_ptr().cast(), rest.len()) };
        if r == 0 {
            break;
        }
        if r < 0 {
            if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            break;
        }
        got += usize::try_from(r).unwrap_or(0);
    }
    if got == 0 {
        return Ok(Spawned { pid, pidfd });
    }
    let _ = wait_blocking(pid);
    let (a, b) = msg.split_at(4);
    let stage = u32::from_ne_bytes(a.try_into().unwrap_or([0; 4]));
    let errno = i32::from_ne_bytes(b.try_into().unwrap_or([0; 4]));
    Err(SpawnError::Child {
        program: req.program.to_string_lossy().into_owned(),
        stage: ChildStage::from_u32(stage).unwrap_or(ChildStage::Exec),
        source: io::Error::from_raw_os_error(errno),
    })
}
