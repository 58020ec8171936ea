//! Command-line declaration (clap). `lib.rs` dispatches; `command/<verb>.rs` does one verb.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// aetherctl drives aetherd, the Aetherless data plane, over its shared-memory control ring.
#[derive(Debug, Parser)]
#[command(name = "aetherctl", version, about, long_about = None)]
pub struct Cli {
    /// Configuration file (YAML). `up` starts aetherd with it; other verbs read
    /// `orchestrator.state_dir` from it to find a running aetherd.
    #[arg(short = 'c', long = "config", global = true, env = "AETHER_CONFIG")]
    pub config: Option<PathBuf>,

    /// Directory of the running aetherd's control segment, pidfile and sockets
    /// (overrides the config's `orchestrator.state_dir`).
    #[arg(long, global = true, env = "AETHER_STATE_DIR")]
    pub state_dir: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

/// Output format of the reporting verbs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// A table for people.
    Table,
    /// One JSON document for programs.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start aetherd with the configuration given by -c.
    Up {
        /// Run aetherd in this terminal instead of detaching it.
        #[arg(long)]
        foreground: bool,
        /// Keep `warm_pool_size` instances restored and frozen.
        #[arg(long)]
        warm_pool: bool,
        /// Attach the XDP program to this interface.
        #[arg(long, value_name = "IFACE")]
        xdp: Option<String>,
        /// Seconds to wait for aetherd to answer on the control ring.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Stop aetherd: stop accepting, drain in-flight requests, stop handlers.
    Down {
        /// Milliseconds aetherd may spend draining in-flight requests.
        #[arg(long, default_value_t = 10_000)]
        drain_ms: u64,
        /// Seconds to wait for aetherd to exit.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Add or update functions on a running aetherd.
    Deploy {
        /// Configuration file whose functions to deploy.
        file: PathBuf,
        /// Validate and print the difference without changing anything
        /// (`--force` is accepted as in the original CLI).
        #[arg(long, alias = "force")]
        dry_run: bool,
    },
    /// Remove a function from a running aetherd.
    Undeploy {
        /// Function id.
        function: String,
    },
    /// Live state: functions, their instances per core and their states, and
    /// each function's snapshot (state, age, size).
    List {
        #[arg(long, short, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Request counters and latency percentiles.
    Stats {
        #[arg(long, short, value_enum, default_value_t = Output::Table)]
        output: Output,
        /// Refresh the table every second until interrupted.
        #[arg(long)]
        dashboard: bool,
    },
    /// Print the captured stdout/stderr of a function's instances.
    Logs {
        /// Function id.
        function: String,
        /// Number of lines from the end.
        #[arg(long, short = 'n', default_value_t = 100)]
        lines: u32,
    },
    /// Dump a ready instance of a function with CRIU now (it keeps running);
    /// new instances are restored from the images. Exit 0 when the snapshot
    /// is ready.
    Snapshot {
        /// Function id.
        function: String,
        #[arg(long, short, value_enum, default_value_t = Output::Table)]
        output: Output,
        /// Seconds to wait for aetherd's answer (each core may take up to 60 s).
        #[arg(long, default_value_t = crate::command::SNAPSHOT_TIMEOUT_S)]
        timeout: u64,
    },
    /// Check a configuration file; print OK or every error.
    Validate {
        /// File to check (defaults to -c).
        file: Option<PathBuf>,
    },
}
