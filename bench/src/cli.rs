//! Flags every benchmark binary accepts (flattened into its own clap parser).

use std::path::PathBuf;

/// The flags `bench/compare.sh` passes to every benchmark binary.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// Run a short version of the benchmark (the whole binary finishes in
    /// well under a minute); the JSON records `"smoke": true`.
    #[arg(long)]
    pub smoke: bool,

    /// Directory the JSON result is written to (created when missing).
    #[arg(long, default_value = "bench/results")]
    pub output_dir: PathBuf,
}
