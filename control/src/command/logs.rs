//! `aetherctl logs FUNCTION`: the captured stdout/stderr of its instances.

use shm_abi::message::{Command, ReplyBody};

use super::{unexpected, Context, QUERY_TIMEOUT};
use crate::CtlError;

pub(crate) fn run(ctx: &Context, function: &str, lines: u32) -> Result<(), CtlError> {
    let body = ctx.call(
        Command::Logs {
            function_id: function.to_string(),
            tail_lines: lines,
        },
        QUERY_TIMEOUT,
    )?;
    let ReplyBody::Logs { lines } = body else {
        return Err(unexpected("logs", &body));
    };
    for line in lines {
        println!("{line}");
    }
    Ok(())
}
