//! CPU and NUMA topology, thread pinning and executor placement for Aetherless.
//!
//! aetherd runs one executor per CPU it is given. This crate answers three
//! questions at startup:
//!
//! 1. **What is the machine?** [`Topology::detect`] asks hwloc (through
//!    `hwlocality`) and falls back to reading sysfs; either way the answer is
//!    plain data: PUs (logical CPUs with their core, package and NUMA node),
//!    NUMA nodes (with memory size where known) and caches (level, kind, size
//!    and the PUs sharing them). [`Topology::from_sysfs`] takes a root
//!    directory, so tests run it against fixture trees.
//! 2. **Where may we run?** [`allowed_cpus`] reads the process's affinity mask
//!    (`sched_getaffinity`) intersected with its cgroup cpuset.
//! 3. **Where does each executor go?** [`PlacementPlan::compute`] applies these
//!    rules:
//!    - only allowed CPUs the topology knows are candidates;
//!    - **distinct physical cores first**: a second SMT thread of a core is
//!      used only once every allowed core already runs an executor;
//!    - **grouped by NUMA node**: within each round cores are taken node by
//!      node, so a small executor count stays on one node, and executors are
//!      numbered by (node, package, core, cpu);
//!    - an **explicit `cores:` list** is used as given, in order; a CPU listed
//!      twice, offline/unknown or not allowed is a [`PlanError`] naming it;
//!    - optionally one CPU is **reserved for the control thread** (the least
//!      preferred spare one; shared with the last executor only when there is
//!      no spare and the caller did not ask for a precise count);
//!    - each [`Executor`] records the NUMA node of its CPU: its rings and
//!      buffers should be allocated there ([`bind_memory_to_node`] applies
//!      that to a mapping with `mbind`).
//!
//! Then each executor thread calls [`pin_current_thread`] (or
//! [`pin_current_thread_within`] with the plan's allowed set), which pins via
//! `core_affinity` and verifies the mask with `sched_getaffinity`.
//!
//! ```no_run
//! let topology = numa::Topology::detect()?;
//! let allowed = numa::allowed_cpus()?;
//! let plan = numa::PlacementPlan::compute(&topology, &allowed, &numa::PlacementRequest::default())?;
//! for executor in &plan.executors {
//!     let allowed = allowed.clone();
//!     let cpu = executor.cpu;
//!     std::thread::spawn(move || numa::pin_current_thread_within(cpu, &allowed));
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod affinity;
mod cpulist;
mod mempolicy;
mod plan;
mod sys;
mod topology;

pub use affinity::{
    allowed_cpus, cgroup_cpuset, current_thread_affinity, pin_current_thread,
    pin_current_thread_within, NumaError,
};
pub use cpulist::{format_cpu_list, parse_cpu_list, CpuListError, MAX_CPU};
pub use mempolicy::{bind_memory_to_node, memory_policy_at, MemPolicyError, MODE_BIND};
pub use plan::{ControlCpu, CoreSelection, Executor, PlacementPlan, PlacementRequest, PlanError};
pub use topology::{
    Cache, CacheKind, CoreKey, Node, Pu, Topology, TopologyError, TopologySource,
    SYNTHETIC_CORE_BASE,
};
