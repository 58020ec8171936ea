//! `aetherctl down`: ask aetherd to drain and stop, then wait for it to exit.

use std::time::{Duration, Instant};

use shm_abi::message::{Command, ReplyBody};

use super::{unexpected, Context, QUERY_TIMEOUT};
use crate::paths::{pid_alive, read_pid};
use crate::CtlError;

pub(crate) fn run(ctx: &Context, drain_ms: u64, timeout: Duration) -> Result<(), CtlError> {
    let paths = ctx.paths()?;
    let pid = read_pid(&paths.pidfile());
    let body = ctx.call(
        Command::Shutdown {
            drain_deadline_ms: drain_ms,
        },
        QUERY_TIMEOUT,
    )?;
    if !matches!(body, ReplyBody::ShuttingDown | ReplyBody::Ok) {
        return Err(unexpected("down", &body));
    }
    eprint!("aetherd is draining");
    let start = Instant::now();
    let segment = paths.control_segment();
    loop {
        let gone = pid.is_none_or(|p| !pid_alive(p)) && !segment.exists();
        if gone {
            eprintln!();
            println!("aetherd stopped");
            return Ok(());
        }
        if start.elapsed() > timeout {
            eprintln!();
            return Err(CtlError::Failed(format!(
                "aetherd{} still running after {} s",
                pid.map(|p| format!(" (pid {p})")).unwrap_or_default(),
                timeout.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
