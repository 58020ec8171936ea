//! The machine's CPU topology as plain data, independent of where it came from.
//!
//! Two sources fill the same [`Topology`]: hwloc (through `hwlocality`,
//! [`Topology::from_hwloc`]) and Linux sysfs read from a root directory that
//! tests point at a fixture tree ([`Topology::from_sysfs`]). [`Topology::detect`]
//! tries hwloc first and falls back to sysfs at `/`.
//!
//! Invariants every constructor establishes (checked by [`Topology::assemble`]):
//! - `pus` is sorted by `os_index`, without duplicates;
//! - `nodes` is sorted by `os_index`; each node's `cpus` is exactly the sorted
//!   list of PUs whose `node` is that node (memory-only nodes have none);
//! - every PU's `node` names an entry of `nodes`;
//! - `caches` is sorted by (level, kind, cpus), deduplicated, and each cache's
//!   `cpus` is a non-empty sorted subset of the PUs.

mod hwloc;
mod sysfs;

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::cpulist::CpuListError;

/// Core id given to a CPU whose source reports none: `SYNTHETIC_CORE_BASE + cpu`,
/// so each such CPU is its own core and never collides with a reported id.
pub const SYNTHETIC_CORE_BASE: usize = 1 << 20;

/// One logical CPU (hardware thread, "processing unit").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Pu {
    /// The OS CPU number (`cpuN`, what `sched_setaffinity` takes).
    pub os_index: usize,
    /// The core id as the OS reports it (`core_id`); unique only within a package.
    pub core: usize,
    /// The physical package (socket) id.
    pub package: usize,
    /// The NUMA node whose memory is local to this CPU.
    pub node: usize,
}

impl Pu {
    /// The identity of the physical core: PUs with equal keys are SMT siblings.
    pub fn core_key(&self) -> CoreKey {
        CoreKey {
            package: self.package,
            core: self.core,
        }
    }
}

/// A physical core, unique across the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CoreKey {
    /// Physical package id.
    pub package: usize,
    /// Core id within the package.
    pub core: usize,
}

/// A NUMA node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// The OS node number (`nodeN`, what `mbind` takes).
    pub os_index: usize,
    /// Local memory in bytes, when the source reports it.
    pub memory_bytes: Option<u64>,
    /// The PUs local to this node, sorted.
    pub cpus: Vec<usize>,
}

/// What a cache holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CacheKind {
    /// Data only (L1d).
    Data,
    /// Instructions only (L1i).
    Instruction,
    /// Data and instructions.
    Unified,
}

/// One CPU cache and the PUs that share it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cache {
    /// 1 for L1, 2 for L2, ...
    pub level: u8,
    /// Data, instruction or unified.
    pub kind: CacheKind,
    /// Size in bytes, when the source reports it.
    pub size_bytes: Option<u64>,
    /// The PUs sharing this cache, sorted.
    pub cpus: Vec<usize>,
}

/// Where a [`Topology`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopologySource {
    /// hwloc, through `hwlocality`.
    Hwloc,
    /// Linux sysfs, read directly.
    Sysfs,
}

/// The machine's PUs, NUMA nodes and caches (see the module docs for invariants).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// Which source filled this topology.
    pub source: TopologySource,
    /// Logical CPUs, sorted by `os_index`.
    pub pus: Vec<Pu>,
    /// NUMA nodes, sorted by `os_index`.
    pub nodes: Vec<Node>,
    /// Caches, sorted by (level, kind, cpus).
    pub caches: Vec<Cache>,
}

/// Why a topology could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// hwloc failed to build or describe the topology.
    #[error("hwloc: {0}")]
    Hwloc(String),
    /// A sysfs file exists but could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A sysfs file holds something other than what the kernel writes there.
    #[error("{path}: cannot parse {content:?}: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Its content (trimmed).
        content: String,
        /// What was expected.
        reason: String,
    },
    /// A CPU list file is malformed.
    #[error("{path}: {source}")]
    CpuList {
        /// The file.
        path: PathBuf,
        /// The parse error.
        source: CpuListError,
    },
    /// No CPU was found at all.
    #[error("no CPUs found under {0} (is this a Linux sysfs tree?)")]
    NoCpus(PathBuf),
    /// Neither hwloc nor sysfs could describe the machine.
    #[error("no topology source worked: hwloc: {hwloc}; sysfs: {sysfs}")]
    NoSource {
        /// Why hwloc failed.
        hwloc: Box<TopologyError>,
        /// Why sysfs failed.
        sysfs: Box<TopologyError>,
    },
    /// The source described a PU with a NUMA node it does not list, or similar.
    #[error("inconsistent topology: {0}")]
    Inconsistent(String),
}

impl Topology {
    /// Discovers the running machine's topology: hwloc first, then sysfs at `/`.
    /// [`Topology::source`] says which one answered. When both fail, the error
    /// carries both reasons.
    pub fn detect() -> Result<Self, TopologyError> {
        match Self::from_hwloc() {
            Ok(topology) => Ok(topology),
            Err(hwloc_error) => {
                Self::from_sysfs(std::path::Path::new("/")).map_err(|sysfs_error| {
                    TopologyError::NoSource {
                        hwloc: Box::new(hwloc_error),
                        sysfs: Box::new(sysfs_error),
                    }
                })
            }
        }
    }

    /// Builds the topology from hwloc (includes CPUs outside this process's
    /// affinity; restrict with [`crate::allowed_cpus`] in the placement plan).
    pub fn from_hwloc() -> Result<Self, TopologyError> {
        hwloc::read()
    }

    /// Builds the topology from a sysfs tree below `root` (`/` for the running
    /// machine, a fixture directory in tests). Every missing file falls back:
    /// no `online` list → the `cpuN` directories; no `core_id` → each CPU its own
    /// core ([`SYNTHETIC_CORE_BASE`]` + cpu`); no `physical_package_id` → package 0; no node directory → one node 0
    /// holding all CPUs (memory from `<root>/proc/meminfo` if present); no
    /// `meminfo` → unknown memory; a cache index without `level` is skipped,
    /// without `size` has unknown size, without `shared_cpu_list` is private.
    pub fn from_sysfs(root: &std::path::Path) -> Result<Self, TopologyError> {
        sysfs::read(root)
    }

    /// Establishes the invariants listed in the module docs from raw parts.
    /// `nodes` gives each node's memory; node CPU lists are derived from `pus`.
    pub(crate) fn assemble(
        source: TopologySource,
        mut pus: Vec<Pu>,
        nodes: BTreeMap<usize, Option<u64>>,
        mut caches: Vec<Cache>,
    ) -> Result<Self, TopologyError> {
        pus.sort_by_key(|pu| pu.os_index);
        if let Some(pair) = pus.windows(2).find(|w| w[0].os_index == w[1].os_index) {
            return Err(TopologyError::Inconsistent(format!(
                "cpu {} listed twice",
                pair[0].os_index
            )));
        }
        let mut nodes: Vec<Node> = nodes
            .into_iter()
            .map(|(os_index, memory_bytes)| Node {
                os_index,
                memory_bytes,
                cpus: Vec::new(),
            })
            .collect();
        for pu in &pus {
            let node = nodes
                .iter_mut()
                .find(|node| node.os_index == pu.node)
                .ok_or_else(|| {
                    TopologyError::Inconsistent(format!(
                        "cpu {} is on node {} which is not listed",
                        pu.os_index, pu.node
                    ))
                })?;
            node.cpus.push(pu.os_index);
        }
        for cache in &mut caches {
            cache
                .cpus
                .retain(|cpu| pus.binary_search_by_key(cpu, |pu| pu.os_index).is_ok());
            cache.cpus.sort_unstable();
            cache.cpus.dedup();
        }
        caches.retain(|cache| !cache.cpus.is_empty());
        caches.sort_by(|a, b| (a.level, a.kind, &a.cpus).cmp(&(b.level, b.kind, &b.cpus)));
        caches.dedup_by(|a, b| (a.level, a.kind, &a.cpus) == (b.level, b.kind, &b.cpus));
        Ok(Self {
            source,
            pus,
            nodes,
            caches,
        })
    }

    /// The PU with OS number `cpu`.
    pub fn pu(&self, cpu: usize) -> Option<&Pu> {
        self.pus
            .binary_search_by_key(&cpu, |pu| pu.os_index)
            .ok()
            .and_then(|i| self.pus.get(i))
    }

    /// The NUMA node local to `cpu`.
    pub fn node_of(&self, cpu: usize) -> Option<usize> {
        self.pu(cpu).map(|pu| pu.node)
    }

    /// The distinct physical cores, sorted.
    pub fn cores(&self) -> Vec<CoreKey> {
        let mut cores: Vec<CoreKey> = self.pus.iter().map(Pu::core_key).collect();
        cores.sort_unstable();
        cores.dedup();
        cores
    }

    /// The PUs sharing a physical core with `cpu` (including `cpu`), sorted.
    pub fn smt_siblings(&self, cpu: usize) -> Vec<usize> {
        self.pu(cpu).map_or_else(Vec::new, |me| {
            self.pus
                .iter()
                .filter(|pu| pu.core_key() == me.core_key())
                .map(|pu| pu.os_index)
                .collect()
        })
    }

    /// The caches `cpu` uses, from L1 outwards.
    pub fn caches_of(&self, cpu: usize) -> impl Iterator<Item = &Cache> {
        self.caches
            .iter()
            .filter(move |cache| cache.cpus.contains(&cpu))
    }
}
