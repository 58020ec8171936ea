//! Child processes of the benchmark: started, checked, and always stopped.
//!
//! A [`ChildGuard`] sends `SIGTERM` when dropped (nginx's master then stops
//! its worker before it exits), waits up to [`STOP_GRACE`], then `SIGKILL`s.
//! Children stay in the benchmark's process group, so a Ctrl-C typed at the
//! terminal reaches them even if the benchmark itself were killed.

use super::loadgen::Client;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};
use thiserror::Error;

/// How long a child may take to exit after `SIGTERM`.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// Errors starting or readying a child.
#[derive(Debug, Error)]
pub enum ProcessError {
    /// The program could not be started.
    #[error("cannot start {name} ({program}): {source}")]
    Spawn {
        name: String,
        program: PathBuf,
        source: std::io::Error,
    },
    /// The child exited while it should be serving.
    #[error("{name} exited with {status} before it served{detail}")]
    Exited {
        name: String,
        status: ExitStatus,
        detail: String,
    },
    /// It did not answer `GET` with the expected `200` in time.
    #[error("{name} did not answer GET http://{addr}{path} with the hello JSON within {waited:?}; last: {last}")]
    NotReady {
        name: String,
        addr: SocketAddr,
        path: String,
        waited: Duration,
        last: String,
    },
    /// Ctrl-C or SIGTERM while waiting.
    #[error("interrupted by a signal while waiting for {name}")]
    Interrupted { name: String },
    /// No free loopback port.
    #[error("cannot reserve a loopback port: {0}")]
    Port(std::io::Error),
}

/// A child process stopped on drop.
#[derive(Debug)]
pub struct ChildGuard {
    name: String,
    child: Option<Child>,
}

impl ChildGuard {
    /// Starts `cmd` as `name` (used in messages).
    ///
    /// # Errors
    /// [`ProcessError::Spawn`].
    pub fn spawn(name: &str, cmd: &mut Command) -> Result<Self, ProcessError> {
        let child = cmd.spawn().map_err(|source| ProcessError::Spawn {
            name: name.to_owned(),
            program: PathBuf::from(cmd.get_program()),
            source,
        })?;
        Ok(Self {
            name: name.to_owned(),
            child: Some(child),
        })
    }

    /// `Err` with its exit status if the child already exited; `detail` is
    /// appended to the message (e.g. the tail of its log).
    ///
    /// # Errors
    /// [`ProcessError::Exited`].
    pub fn check_running(&mut self, detail: impl FnOnce() -> String) -> Result<(), ProcessError> {
        if let Some(child) = &mut self.child {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Err(ProcessError::Exited {
                    name: self.name.clone(),
                    status,
                    detail: detail(),
                });
            }
        }
        Ok(())
    }

    /// `SIGTERM`, wait up to [`STOP_GRACE`], then `SIGKILL`; reaps the child.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        if let Ok(pid) = libc::pid_t::try_from(child.id()) {
            // SAFETY: `pid` is our own unreaped child (try_wait said it is
            // running), so the id cannot have been recycled; kill only sends.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        eprintln!(
            "gateway: {} ignored SIGTERM for {STOP_GRACE:?}; killing it",
            self.name
        );
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A loopback port free at the time of the call (bound to port 0, released).
///
/// # Errors
/// [`ProcessError::Port`].
pub fn free_port() -> Result<u16, ProcessError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(ProcessError::Port)?;
    Ok(l.local_addr().map_err(ProcessError::Port)?.port())
}

/// Polls `GET path` on `addr` until it answers `200` with `expected_body`,
/// calling `alive` between attempts (it fails when the server process died).
///
/// # Errors
/// [`ProcessError::NotReady`] after `timeout`, or what `alive` returns.
pub fn wait_until_serving(
    name: &str,
    addr: SocketAddr,
    path: &str,
    expected_body: &[u8],
    timeout: Duration,
    alive: impl FnMut() -> Result<(), ProcessError>,
) -> Result<(), ProcessError> {
    wait_until_answers(name, addr, path, |b| b == expected_body, timeout, alive)
}

/// Polls `GET path` on `addr` until it answers `200` with a body `accept`
/// takes, calling `alive` between attempts.
///
/// # Errors
/// [`ProcessError::NotReady`] after `timeout`, [`ProcessError::Interrupted`]
/// on a signal, or what `alive` returns.
pub fn wait_until_answers(
    name: &str,
    addr: SocketAddr,
    path: &str,
    accept: impl Fn(&[u8]) -> bool,
    timeout: Duration,
    mut alive: impl FnMut() -> Result<(), ProcessError>,
) -> Result<(), ProcessError> {
    let request = super::http::get_request(path);
    let start = Instant::now();
    let mut last = String::from("no attempt");
    while start.elapsed() < timeout {
        if super::interrupt::interrupted() {
            return Err(ProcessError::Interrupted {
                name: name.to_owned(),
            });
        }
        alive()?;
        match Client::connect(addr).and_then(|mut c| c.fetch(&request)) {
            Ok((200, body)) if accept(&body) => return Ok(()),
            Ok((status, body)) => {
                last = format!("status {status}, body {:?}", String::from_utf8_lossy(&body))
            }
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(ProcessError::NotReady {
        name: name.to_owned(),
        addr,
        path: path.to_owned(),
        waited: timeout,
        last,
    })
}

/// User + system cpu time of process `pid` so far (all its threads), from
/// `/proc/PID/stat`; `None` if it is gone or unreadable.
#[must_use]
pub fn cpu_time(pid: libc::pid_t) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name, which may contain spaces:
    // state(3) … utime(14) stime(15), i.e. indices 11 and 12 after ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = u64::try_from(hz).ok().filter(|&h| h > 0)?;
    Some(Duration::from_nanos(
        ticks.saturating_mul(1_000_000_000) / hz,
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design
mod tests {
    use super::*;

    #[test]
    fn guard_stops_a_child_that_ignores_nothing_and_reports_exits() {
        let mut g = ChildGuard::spawn("sleep", Command::new("sleep").arg("30")).unwrap();
        assert!(g.check_running(String::new).is_ok());
        let t = Instant::now();
        g.stop();
        assert!(t.elapsed() < STOP_GRACE, "SIGTERM should end sleep at once");
        let mut quick = ChildGuard::spawn("true", &mut Command::new("true")).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let err = quick.check_running(|| ": detail".into()).unwrap_err();
        assert!(err.to_string().contains("true exited"), "{err}");
        assert!(err.to_string().ends_with(": detail"), "{err}");
    }

    #[test]
    fn cpu_time_of_a_busy_process_grows() {
        let me = libc::pid_t::try_from(std::process::id()).unwrap();
        let before = cpu_time(me).unwrap();
        let t = Instant::now();
        let mut x = 0u64;
        // Spin until 50 ms of cpu are counted (the machine may be shared, so
        // wall time says little); ticks are 10 ms, the bound is generous.
        while cpu_time(me).unwrap() - before < Duration::from_millis(50) {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "cpu time did not grow while spinning"
            );
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        let spent = cpu_time(me).unwrap() - before;
        assert!(
            spent <= t.elapsed() * 64 + Duration::from_millis(20),
            "{spent:?} in {:?}",
            t.elapsed()
        );
        assert_eq!(cpu_time(-5), None);
    }

    #[test]
    fn a_closed_port_is_not_serving() {
        let port = free_port().unwrap();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let err = wait_until_serving("nobody", addr, "/", b"", Duration::from_millis(100), || {
            Ok(())
        })
        .unwrap_err();
        assert!(matches!(err, ProcessError::NotReady { .. }), "{err}");
    }
}
