//! `xdp`: XDP drop rate against nftables, XDP cost per packet, accept
//! locality with sk_reuseport (see `bench::xdp`).
//!
//! Exit codes: 0 = measured and written (targets may still be missed: see the
//! JSON's `targets`), 1 = not root, or a measurement failed (nothing written).

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = bench::xdp::XdpArgs::parse();
    match bench::xdp::run(&args) {
        Ok(path) => {
            println!("{}", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("xdp benchmark failed: {e}");
            ExitCode::FAILURE
        }
    }
}
