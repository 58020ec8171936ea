//! `ring`: the shared-memory ring benchmark (see `bench::ring`).
//!
//! Exit codes: 0 = measured and written (targets may still be missed: see the
//! JSON's `targets`), 1 = the measurement failed.

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = bench::ring::RingArgs::parse();
    match bench::ring::run(&args) {
        Ok(Some(path)) => {
            println!("{}", path.display());
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ring benchmark failed: {e}");
            ExitCode::FAILURE
        }
    }
}
