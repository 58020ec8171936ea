//! `aetherctl deploy FILE [--dry-run]` and `aetherctl undeploy FUNCTION`.

use std::path::Path;
use std::time::Duration;

use shm_abi::message::{Command, ReplyBody};

use super::{absolute, unexpected, Context};
use crate::CtlError;

/// Deploys start instances and wait for their handshake, so they may take a while.
const DEPLOY_TIMEOUT: Duration = Duration::from_secs(60);

pub(crate) fn run(ctx: &Context, file: &Path, dry_run: bool) -> Result<(), CtlError> {
    // Validate here first: the user gets every error with file:line:column even
    // when aetherd is not running.
    config::load_file(file).map_err(CtlError::InvalidConfig)?;
    let text = std::fs::read_to_string(file)
        .map_err(|e| CtlError::Failed(format!("cannot read {}: {e}", file.display())))?;
    let source_path = absolute(file).to_string_lossy().into_owned();
    let body = ctx.call(
        Command::Deploy {
            config_yaml: text,
            source_path,
            dry_run,
        },
        DEPLOY_TIMEOUT,
    )?;
    let ReplyBody::Deployed {
        added,
        updated,
        removed,
        unchanged,
    } = body
    else {
        return Err(unexpected("deploy", &body));
    };
    let verb = if dry_run { "would " } else { "" };
    for (list, what) in [(&added, "add"), (&updated, "update"), (&removed, "remove")] {
        for id in list {
            println!("{verb}{what} {id}");
        }
    }
    for id in &unchanged {
        println!("unchanged {id}");
    }
    if added.is_empty() && updated.is_empty() && removed.is_empty() {
        println!("nothing to change");
    }
    Ok(())
}

pub(crate) fn undeploy(ctx: &Context, function: &str) -> Result<(), CtlError> {
    let body = ctx.call(
        Command::Undeploy {
            function_id: function.to_string(),
        },
        DEPLOY_TIMEOUT,
    )?;
    match body {
        ReplyBody::Deployed { .. } | ReplyBody::Ok => {
            println!("removed {function}");
            Ok(())
        }
        other => Err(unexpected("undeploy", &other)),
    }
}
