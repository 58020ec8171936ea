//! `gateway`: the aetherd hop against direct and nginx (see `bench::gateway`).
//!
//! Exit codes: 0 = measured and written (targets may still be missed: see the
//! JSON's `targets`), 1 = the measurement failed or a mode was unavailable
//! without `--allow-missing` (its JSON is still written, with nulls).

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = bench::gateway::GatewayArgs::parse();
    match bench::gateway::run(&args) {
        Ok(path) => {
            println!("{}", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gateway benchmark failed: {e}");
            ExitCode::FAILURE
        }
    }
}
