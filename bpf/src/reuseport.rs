//! Loader of the sk_reuseport program (`reuseport.bpf.c`): in one
//! `SO_REUSEPORT` group, the listener of the CPU processing the packet takes
//! the connection.
//!
//! ```text
//! reuseport_cpus  REUSEPORT_SOCKARRAY[1024]
//!   key   u32  CPU id (bpf_get_smp_processor_id() in softirq)
//!   value      the listener of that CPU (written as a socket fd)
//! empty slot → SK_PASS without selection → the kernel's hash over the group
//! ```
//!
//! A `REUSEPORT_SOCKARRAY` may only select sockets of the group the packet is
//! for, so each group (one per function `trigger_port`) gets its own
//! [`ReuseportCpuSelector`]. Lifetimes: the program stays attached to the
//! group as long as a socket of the group is open (it belongs to the sockets,
//! so it dies with the process); a closed socket leaves the array by itself.

use std::fmt;
use std::os::fd::{AsFd, AsRawFd};

use aya::maps::{MapData, ReusePortSockArray};
use aya::programs::SkReuseport;
use aya::Ebpf;

use crate::abi::MAX_CPUS;
use crate::{load_error, load_object, map_error, take_map, BpfError};

static REUSEPORT_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/reuseport.bpf.o"));

/// Name of the sk_reuseport program (its C function) in the object and the kernel.
pub const REUSEPORT_PROGRAM_NAME: &str = "aether_reuseport";

/// The loaded sk_reuseport program and its CPU → listener array, for one
/// `SO_REUSEPORT` group.
pub struct ReuseportCpuSelector {
    ebpf: Ebpf,
    listeners: ReusePortSockArray<MapData>,
}

impl fmt::Debug for ReuseportCpuSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReuseportCpuSelector")
            .finish_non_exhaustive()
    }
}

impl ReuseportCpuSelector {
    /// Loads the program (verified) and creates an empty listener array.
    pub fn load() -> Result<Self, BpfError> {
        let mut ebpf = load_object("reuseport.bpf.o", REUSEPORT_OBJECT)?;
        program(&mut ebpf)?
            .load()
            .map_err(|source| load_error(REUSEPORT_PROGRAM_NAME, source))?;
        let listeners = ReusePortSockArray::try_from(take_map(&mut ebpf, "reuseport_cpus")?)
            .map_err(map_error("opening", "reuseport_cpus"))?;
        Ok(Self { ebpf, listeners })
    }

    /// Attaches the program to the `SO_REUSEPORT` group of `socket` (any
    /// member: the program belongs to the group).
    pub fn attach_to_group(&mut self, socket: &impl AsFd) -> Result<(), BpfError> {
        program(&mut self.ebpf)?
            .attach(socket)
            .map_err(|source| BpfError::ReuseportAttach {
                source: Box::new(source),
            })
    }

    /// Makes `listener` (a listening member of the group) the one selected
    /// for packets processed on `cpu`.
    pub fn set_listener(&mut self, cpu: u32, listener: &impl AsRawFd) -> Result<(), BpfError> {
        check_cpu(cpu)?;
        self.listeners
            .set(cpu, listener, 0)
            .map_err(map_error("setting a listener", "reuseport_cpus"))
    }

    /// Empties the slot of `cpu`: its packets fall back to the kernel's hash.
    pub fn clear_listener(&mut self, cpu: u32) -> Result<(), BpfError> {
        check_cpu(cpu)?;
        match self.listeners.clear_index(&cpu) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(source) => Err(map_error("clearing a listener", "reuseport_cpus")(source)),
        }
    }
}

fn check_cpu(cpu: u32) -> Result<(), BpfError> {
    if cpu >= MAX_CPUS {
        return Err(BpfError::CpuOutOfRange { cpu });
    }
    Ok(())
}

fn program(ebpf: &mut Ebpf) -> Result<&mut SkReuseport, BpfError> {
    let missing = BpfError::MissingProgram {
        name: REUSEPORT_PROGRAM_NAME,
    };
    match ebpf.program_mut(REUSEPORT_PROGRAM_NAME) {
        Some(program) => program.try_into().map_err(|_| missing),
        None => Err(missing),
    }
}
