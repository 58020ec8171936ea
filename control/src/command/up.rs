//! `aetherctl up [--foreground]`: start aetherd.
//!
//! Foreground: aetherctl replaces itself with aetherd (signals reach it
//! directly). Detached: aetherd runs in its own session with its output in
//! `<log_dir>/aetherd.log`; aetherctl waits until aetherd answers a `Ping` on
//! the control ring, then reports its pid and where the logs are.

use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use shm_abi::message::{Command as Cmd, ReplyBody};

use super::{absolute, Context};
use crate::paths::{pid_alive, read_pid};
use crate::{Client, CtlError};

/// Locate the aetherd binary: `$AETHERD`, else beside this executable, else `$PATH`.
fn aetherd_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("AETHERD") {
        return PathBuf::from(p);
    }
    if let Ok(me) = std::env::current_exe() {
        if let Some(dir) = me.parent() {
            let beside = dir.join("aetherd");
            if beside.is_file() {
                return beside;
            }
        }
    }
    PathBuf::from("aetherd")
}

pub(crate) fn run(
    ctx: &Context,
    foreground: bool,
    warm_pool: bool,
    xdp: Option<&str>,
    timeout: Duration,
) -> Result<(), CtlError> {
    let (config_path, _cfg) = ctx.require_config()?;
    let paths = ctx.paths()?;
    if let Some(pid) = read_pid(&paths.pidfile()) {
        if pid_alive(pid) && Client::connect(&paths.control_segment()).is_ok() {
            return Err(CtlError::Failed(format!(
                "aetherd is already running (pid {pid}, state dir {}); stop it with `aetherctl down`",
                paths.state_dir.display()
            )));
        }
    }
    let mut cmd = Command::new(aetherd_binary());
    cmd.arg("--config").arg(absolute(&config_path));
    if let Some(dir) = &ctx.state_dir {
        cmd.arg("--state-dir").arg(absolute(dir));
    }
    if warm_pool {
        cmd.arg("--warm-pool");
    }
    if let Some(iface) = xdp {
        cmd.arg("--xdp").arg(iface);
    }
    if foreground {
        let err = cmd.exec();
        return Err(CtlError::Failed(format!(
            "cannot start {}: {err}",
            aetherd_binary().display()
        )));
    }

    std::fs::create_dir_all(&paths.log_dir).map_err(|e| {
        CtlError::Failed(format!(
            "cannot create log dir {}: {e}",
            paths.log_dir.display()
        ))
    })?;
    let log_path = paths.daemon_log();
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| CtlError::Failed(format!("cannot open {}: {e}", log_path.display())))?;
    let log_err = log
        .try_clone()
        .map_err(|e| CtlError::Failed(format!("cannot open {}: {e}", log_path.display())))?;
    cmd.stdin(Stdio::null()).stdout(log).stderr(log_err);
    // SAFETY: `new_session` only calls setsid, which is async-signal-safe, so
    // it may run in the forked child between fork and exec.
    unsafe {
        cmd.pre_exec(new_session);
    }
    let mut child = cmd.spawn().map_err(|e| {
        CtlError::Failed(format!("cannot start {}: {e}", aetherd_binary().display()))
    })?;

    eprint!("starting aetherd (pid {})", child.id());
    let start = Instant::now();
    let mut last_dot = Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            eprintln!();
            return Err(CtlError::Failed(format!(
                "aetherd exited during start-up ({status}); last lines of {}:\n{}",
                log_path.display(),
                tail(&log_path, 20)
            )));
        }
        if let Ok(mut client) = Client::connect(&paths.control_segment()) {
            if let Ok(ReplyBody::Pong { pid, cores, .. }) =
                client.call(Cmd::Ping, Duration::from_millis(500))
            {
                eprintln!();
                println!(
                    "aetherd running (pid {pid}, {} executor core(s): {cores:?}); logs: {}; stop with `aetherctl down`",
                    cores.len(),
                    log_path.display()
                );
                return Ok(());
            }
        }
        if start.elapsed() > timeout {
            eprintln!();
            return Err(CtlError::Failed(format!(
                "aetherd (pid {}) did not answer within {} s; see {}",
                child.id(),
                timeout.as_secs(),
                log_path.display()
            )));
        }
        if last_dot.elapsed() > Duration::from_secs(1) {
            eprint!(".");
            last_dot = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Put the detached aetherd in a session of its own, away from our terminal.
fn new_session() -> std::io::Result<()> {
    // SAFETY: setsid takes no arguments and only changes the calling process's
    // session; it cannot touch memory.
    if unsafe { libc::setsid() } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The last `n` lines of a file, for error messages.
pub(crate) fn tail(path: &std::path::Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
