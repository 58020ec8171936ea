//! `aetherd`: the Aetherless data plane. Thin: parse options, run the daemon,
//! map its error to the documented exit code.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use dataplane::daemon::{self, DaemonOptions};

/// aetherd serves functions through one glommio executor per core.
/// Usually started by `aetherctl up`.
#[derive(Debug, Parser)]
#[command(name = "aetherd", version, about)]
struct Args {
    /// Configuration file (YAML).
    #[arg(short = 'c', long)]
    config: PathBuf,
    /// Override `orchestrator.state_dir`.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Keep `warm_pool_size` instances restored and frozen.
    #[arg(long)]
    warm_pool: bool,
    /// Attach the XDP program to this interface.
    #[arg(long, value_name = "IFACE")]
    xdp: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("AETHER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let opts = DaemonOptions {
        config: args.config,
        state_dir: args.state_dir,
        warm_pool: args.warm_pool,
        xdp: args.xdp,
    };
    match daemon::run(opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("aetherd: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
