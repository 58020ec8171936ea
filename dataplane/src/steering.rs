//! sk_reuseport steering: each function's `SO_REUSEPORT` listener group gets
//! a [`bpf::ReuseportCpuSelector`], so the connection whose SYN a CPU
//! processes is accepted by the executor pinned to that CPU.
//!
//! ```text
//! control loop (deploy)            core on cpu c (after binding its listener)
//!   Steering::load() per function ──► attach_to_group(listener)   (the group's program)
//!   (one per trigger_port group)      set_listener(c, listener)   (slot c → this listener)
//! undeploy / shutdown: clear_listener(c); a closed listener leaves the array by itself
//! replacement (same port, same group): the new listener takes slot c when it
//!   starts serving; the old one keeps its accepted connections and drains
//! ```
//!
//! The selector is shared by the cores behind a mutex that is taken only at
//! deploy and undeploy time, never per request. Steering is off when the
//! environment of aetherd has `AETHER_REUSEPORT_STEERING=0` (or `off`,
//! `false`, `no`), or when the program cannot be loaded (no BPF): connections
//! are then spread by the kernel's hash over the group.

use std::os::fd::{AsFd, AsRawFd};
use std::sync::{Arc, Mutex, PoisonError};

use bpf::ReuseportCpuSelector;

/// Environment variable of aetherd that turns steering off (`0`, `off`,
/// `false`, `no`); anything else, or unset, leaves it on.
pub const STEERING_ENV: &str = "AETHER_REUSEPORT_STEERING";

/// Why a listener could not be steered.
#[derive(Debug, thiserror::Error)]
pub enum SteeringError {
    #[error("cpu {cpu} does not fit a u32 slot index")]
    CpuOutOfRange { cpu: usize },
    #[error("sk_reuseport program: {0}")]
    Bpf(#[from] bpf::BpfError),
}

/// Whether the environment leaves steering on (see [`STEERING_ENV`]).
pub fn enabled_by_env() -> bool {
    match std::env::var(STEERING_ENV) {
        Ok(v) => !matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "0" | "off" | "false" | "no"
        ),
        Err(_) => true,
    }
}

/// One function's selector, shared by every core serving it.
#[derive(Debug, Clone)]
pub struct Steering {
    selector: Arc<Mutex<ReuseportCpuSelector>>,
}

impl Steering {
    /// Load (and verify) a selector with an empty CPU → listener array.
    pub fn load() -> Result<Steering, SteeringError> {
        Ok(Steering {
            selector: Arc::new(Mutex::new(ReuseportCpuSelector::load()?)),
        })
    }

    /// Attach the program to `listener`'s group (attaching again on another
    /// member replaces the group's program with the same one) and make
    /// `listener` the one that accepts what `cpu` receives.
    pub fn steer<L: AsFd + AsRawFd>(&self, cpu: usize, listener: &L) -> Result<(), SteeringError> {
        let slot = u32::try_from(cpu).map_err(|_| SteeringError::CpuOutOfRange { cpu })?;
        let mut selector = self.lock();
        selector.attach_to_group(listener)?;
        selector.set_listener(slot, listener)?;
        Ok(())
    }

    /// Empty `cpu`'s slot: its connections fall back to the kernel's hash.
    pub fn release(&self, cpu: usize) -> Result<(), SteeringError> {
        let slot = u32::try_from(cpu).map_err(|_| SteeringError::CpuOutOfRange { cpu })?;
        self.lock().clear_listener(slot)?;
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ReuseportCpuSelector> {
        // A core that panicked while holding the lock left the map as the
        // kernel has it (each update is one syscall), so the state is usable.
        self.selector.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
