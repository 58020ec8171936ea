//! `autoscale`: a 0 → 50 clients burst against a function at zero instances
//! (see `bench::autoscale`).
//!
//! Exit codes: 0 = measured and written (targets may still be missed: see the
//! JSON's `targets`), 1 = the measurement failed (not root, aetherd did not
//! start or serve, the function never scaled to zero, a signal).

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = bench::autoscale::AutoscaleArgs::parse();
    match bench::autoscale::run(&args) {
        Ok(path) => {
            println!("{}", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("autoscale benchmark failed: {e}");
            ExitCode::FAILURE
        }
    }
}
