//! `aetherctl` — the control client of Aetherless.
//!
//! Every verb that talks to a running aetherd goes through the shared-memory
//! control channel (`shm_abi::channel`): an rkyv-encoded [`Request`] on the
//! request ring, one [`Reply`] with the same id on the reply ring. Concurrent
//! aetherctl processes are serialised by an exclusive lock on the segment.
//!
//! # Exit codes
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | aetherd answered with an error, or an operation failed |
//! | 2 | bad command line (clap) |
//! | 3 | invalid configuration file |
//! | 4 | aetherd is not running or does not answer |
//! | 5 | timed out waiting for aetherd |
//!
//! [`Request`]: shm_abi::message::Request
//! [`Reply`]: shm_abi::message::Reply

pub mod cli;
pub mod client;
pub mod command;
pub mod paths;

use std::process::ExitCode;

use clap::Parser;

pub use client::{Client, ClientError};

/// Top-level failure of one aetherctl invocation, mapped to an exit code.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("{0}")]
    InvalidConfig(config::ConfigErrors),
    #[error("{0}")]
    Client(#[from] ClientError),
    #[error("aetherd: {0}")]
    Remote(String),
    #[error("{0}")]
    Failed(String),
}

impl CtlError {
    /// The documented exit code (see the crate docs).
    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::InvalidConfig(_) => 3,
            CtlError::Client(e) => e.exit_code(),
            CtlError::Remote(_) | CtlError::Failed(_) => 1,
        }
    }
}

/// Parse the command line, run the verb, map the outcome to an exit code.
pub fn run() -> ExitCode {
    let cli = cli::Cli::parse();
    match command::dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("aetherctl: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
