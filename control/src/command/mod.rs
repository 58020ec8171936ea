//! One module per verb; `dispatch` routes the parsed command line to it.

mod deploy;
mod down;
mod list;
mod logs;
mod snapshot;
mod stats;
mod up;
mod validate;

use std::path::{Path, PathBuf};
use std::time::Duration;

use shm_abi::message::{Command as Cmd, ReplyBody};

use crate::cli::{Cli, Command};
use crate::paths::DaemonPaths;
use crate::{Client, CtlError};

/// How long a query verb waits for aetherd's reply.
pub(crate) const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Default `snapshot --timeout`, in seconds.
pub const SNAPSHOT_TIMEOUT_S: u64 = snapshot::DEFAULT_TIMEOUT_S;

/// Run one parsed command line.
pub fn dispatch(cli: Cli) -> Result<(), CtlError> {
    let ctx = Context {
        config: cli.config,
        state_dir: cli.state_dir,
    };
    match cli.command {
        Command::Up {
            foreground,
            warm_pool,
            xdp,
            timeout,
        } => up::run(
            &ctx,
            foreground,
            warm_pool,
            xdp.as_deref(),
            Duration::from_secs(timeout),
        ),
        Command::Down { drain_ms, timeout } => {
            down::run(&ctx, drain_ms, Duration::from_secs(timeout))
        }
        Command::Deploy { file, dry_run } => deploy::run(&ctx, &file, dry_run),
        Command::Undeploy { function } => deploy::undeploy(&ctx, &function),
        Command::List { output } => list::run(&ctx, output),
        Command::Stats { output, dashboard } => stats::run(&ctx, output, dashboard),
        Command::Logs { function, lines } => logs::run(&ctx, &function, lines),
        Command::Snapshot {
            function,
            output,
            timeout,
        } => snapshot::run(&ctx, &function, output, Duration::from_secs(timeout)),
        Command::Validate { file } => validate::run(&ctx, file.as_deref()),
    }
}

/// What every verb may need: the global options.
#[derive(Debug)]
pub(crate) struct Context {
    pub config: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
}

impl Context {
    /// Load and validate the -c config, or say that -c is needed.
    pub fn require_config(&self) -> Result<(PathBuf, config::Config), CtlError> {
        let path = self.config.clone().ok_or_else(|| {
            CtlError::Failed("this command needs a configuration file: pass -c FILE".into())
        })?;
        let cfg = config::load_file(&path).map_err(CtlError::InvalidConfig)?;
        Ok((path, cfg))
    }

    /// Where the aetherd this invocation addresses keeps its files: `--state-dir`,
    /// else the -c config's orchestrator section, else the defaults.
    pub fn paths(&self) -> Result<DaemonPaths, CtlError> {
        let orchestrator = match &self.config {
            Some(path) => {
                config::load_file(path)
                    .map_err(CtlError::InvalidConfig)?
                    .orchestrator
            }
            None => config::Orchestrator::default(),
        };
        let mut paths = DaemonPaths::from_orchestrator(&orchestrator);
        if let Some(dir) = &self.state_dir {
            paths.state_dir = dir.clone();
        }
        Ok(paths)
    }

    /// Connect to the addressed aetherd.
    pub fn client(&self) -> Result<Client, CtlError> {
        Ok(Client::connect(&self.paths()?.control_segment())?)
    }

    /// One round trip; an `Error` reply becomes [`CtlError::Remote`].
    pub fn call(&self, command: Cmd, timeout: Duration) -> Result<ReplyBody, CtlError> {
        let body = self.client()?.call(command, timeout)?;
        match body {
            ReplyBody::Error { kind, message } => {
                Err(CtlError::Remote(format!("{kind}: {message}")))
            }
            other => Ok(other),
        }
    }
}

/// The reply did not have the shape the verb asked for.
pub(crate) fn unexpected(verb: &str, body: &ReplyBody) -> CtlError {
    CtlError::Failed(format!("unexpected reply to {verb}: {body:?}"))
}

/// Absolute form of a user-given path (for messages and for aetherd, whose cwd differs).
pub(crate) fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}
