//! `coldstart`: cold starts of the quickstart's hello.py through aetherd
//! against `criu restore` and a fresh spawn (see `bench::coldstart`).
//!
//! Exit codes: 0 = measured and written (targets may still be missed: see the
//! JSON's `targets`), 1 = the measurement failed, or an aetherd mode could
//! not run without `--allow-missing-aetherd` (its JSON is still written, with
//! nulls and the reason in `results.errors`).

use bench::coldstart;
use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = coldstart::ColdstartArgs::parse();
    match coldstart::run(&args) {
        Ok(path) => {
            println!("{}", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("coldstart benchmark failed: {e}");
            ExitCode::FAILURE
        }
    }
}
