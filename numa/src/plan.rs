//! Which CPUs run executors, and which NUMA node each executor's memory comes from.
//!
//! Rules (see also the crate docs):
//! 1. Candidates are the allowed CPUs that the topology knows.
//! 2. Preference order: cores are ordered by (NUMA node, package, core id);
//!    round 1 takes the lowest-numbered allowed PU of every core, round 2 the
//!    next SMT sibling of every core, and so on. So an SMT sibling is used only
//!    once every allowed physical core already runs an executor, and within a
//!    round node 0's cores come before node 1's (executors pack onto as few
//!    nodes as their count allows, keeping ring traffic node-local).
//! 3. `All` takes every candidate, `Count(n)` the first `n` in preference
//!    order; executors are then numbered grouped by node: sorted by
//!    (node, package, core, cpu).
//! 4. `List(cpus)` uses exactly those CPUs in that order (executor `i` runs on
//!    `cpus[i]`); a CPU listed twice, unknown to the topology, or outside the
//!    allowed set is an error naming it.
//! 5. `reserve_control_cpu` sets aside the least-preferred candidate no
//!    executor uses for the control thread. With `All`/`List` and no spare
//!    CPU, the control thread shares the last executor's CPU (said so in
//!    [`ControlCpu::shared_with_executor`]); with `Count(n)` a missing spare is
//!    an error, since the caller asked for both.
//! 6. Each executor's rings and buffers come from its CPU's NUMA node.

use std::collections::BTreeMap;

use crate::topology::{CoreKey, Topology};

/// How many executors, or exactly where.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum CoreSelection {
    /// One executor per allowed CPU.
    #[default]
    All,
    /// This many executors, placed by the preference rules.
    Count(usize),
    /// Exactly these CPUs, in this order (the config's `cores:` list).
    List(Vec<usize>),
}

/// What the caller wants placed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PlacementRequest {
    /// Executor CPUs.
    pub cores: CoreSelection,
    /// Keep one CPU free of executors for the control thread.
    pub reserve_control_cpu: bool,
}

/// One executor's placement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Executor {
    /// Position in [`PlacementPlan::executors`].
    pub index: usize,
    /// The CPU it is pinned to.
    pub cpu: usize,
    /// The core id of that CPU (unique within `package`).
    pub core: usize,
    /// The package of that CPU.
    pub package: usize,
    /// The NUMA node its rings' memory should come from (the CPU's node).
    pub node: usize,
}

/// Where the control thread runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlCpu {
    /// The CPU.
    pub cpu: usize,
    /// `Some(i)` when no spare CPU existed and executor `i` shares it.
    pub shared_with_executor: Option<usize>,
}

/// The computed placement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacementPlan {
    /// One entry per executor, indexed by [`Executor::index`].
    pub executors: Vec<Executor>,
    /// The control thread's CPU, when one was requested.
    pub control: Option<ControlCpu>,
}

/// Why no plan could be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// None of the allowed CPUs is in the topology.
    #[error("none of the allowed cpus [{allowed}] is in the topology (cpus [{known}])")]
    NoUsableCpus {
        /// The allowed set, as a cpu list.
        allowed: String,
        /// The topology's PUs, as a cpu list.
        known: String,
    },
    /// `Count(0)` or an empty list.
    #[error("zero executors requested; ask for at least one core")]
    ZeroExecutors,
    /// More executors than usable CPUs.
    #[error("{requested} executors requested but only {available} cpus are usable ({detail})")]
    NotEnoughCpus {
        /// Executors asked for.
        requested: usize,
        /// CPUs available for them.
        available: usize,
        /// Which CPUs, and whether one is reserved for control.
        detail: String,
    },
    /// An explicitly listed CPU outside the allowed set.
    #[error("cores: cpu {cpu} is not allowed for this process (allowed: {allowed}); remove it or widen the affinity/cpuset")]
    CpuNotAllowed {
        /// The listed CPU.
        cpu: usize,
        /// The allowed set, as a cpu list.
        allowed: String,
    },
    /// An explicitly listed CPU the machine does not have (or has offline).
    #[error("cores: cpu {cpu} does not exist or is offline (machine cpus: {known})")]
    CpuNotInTopology {
        /// The listed CPU.
        cpu: usize,
        /// The topology's PUs, as a cpu list.
        known: String,
    },
    /// An explicitly listed CPU given twice.
    #[error("cores: cpu {cpu} is listed twice; each executor needs its own cpu")]
    DuplicateCpu {
        /// The repeated CPU.
        cpu: usize,
    },
}

impl PlacementPlan {
    /// Computes the plan for `request` on `topology`, using only `allowed` CPUs
    /// (normally [`crate::allowed_cpus`]). See the module docs for the rules.
    pub fn compute(
        topology: &Topology,
        allowed: &[usize],
        request: &PlacementRequest,
    ) -> Result<Self, PlanError> {
        let known = || {
            crate::format_cpu_list(
                &topology
                    .pus
                    .iter()
                    .map(|pu| pu.os_index)
                    .collect::<Vec<_>>(),
            )
        };
        let mut order = preference_order(topology, allowed);
        if order.is_empty() {
            return Err(PlanError::NoUsableCpus {
                allowed: crate::format_cpu_list(allowed),
                known: known(),
            });
        }
        let cpus: Vec<usize> = match &request.cores {
            CoreSelection::List(list) => {
                if list.is_empty() {
                    return Err(PlanError::ZeroExecutors);
                }
                for (i, &cpu) in list.iter().enumerate() {
                    if list[..i].contains(&cpu) {
                        return Err(PlanError::DuplicateCpu { cpu });
                    }
                    if topology.pu(cpu).is_none() {
                        return Err(PlanError::CpuNotInTopology {
                            cpu,
                            known: known(),
                        });
                    }
                    if !allowed.contains(&cpu) {
                        return Err(PlanError::CpuNotAllowed {
                            cpu,
                            allowed: crate::format_cpu_list(allowed),
                        });
                    }
                }
                list.clone()
            }
            CoreSelection::Count(0) => return Err(PlanError::ZeroExecutors),
            auto => {
                let reserve = usize::from(request.reserve_control_cpu);
                let n = match *auto {
                    // With a single cpu the control thread shares it (rule 5).
                    CoreSelection::Count(n) => n,
                    _ => order.len().saturating_sub(reserve).max(1),
                };
                let available = order.len().saturating_sub(reserve);
                if matches!(auto, CoreSelection::Count(_)) && n > available {
                    return Err(PlanError::NotEnoughCpus {
                        requested: n,
                        available,
                        detail: format!(
                            "usable cpus {}{}",
                            crate::format_cpu_list(&order),
                            if request.reserve_control_cpu {
                                ", one kept for the control thread"
                            } else {
                                ""
                            }
                        ),
                    });
                }
                order.truncate(n);
                // Executors numbered grouped by node (rule 3).
                order.sort_by_key(|&cpu| {
                    topology
                        .pu(cpu)
                        .map(|pu| (pu.node, pu.package, pu.core, cpu))
                });
                order
            }
        };

        let executors: Vec<Executor> = cpus
            .iter()
            .enumerate()
            .filter_map(|(index, &cpu)| {
                topology.pu(cpu).map(|pu| Executor {
                    index,
                    cpu,
                    core: pu.core,
                    package: pu.package,
                    node: pu.node,
                })
            })
            .collect();

        let control = request.reserve_control_cpu.then(|| {
            let spare = preference_order(topology, allowed)
                .into_iter()
                .rev()
                .find(|cpu| !cpus.contains(cpu));
            match spare {
                Some(cpu) => ControlCpu {
                    cpu,
                    shared_with_executor: None,
                },
                None => {
                    let last = executors.len().saturating_sub(1);
                    ControlCpu {
                        cpu: executors.get(last).map_or(0, |e| e.cpu),
                        shared_with_executor: Some(last),
                    }
                }
            }
        });
        Ok(Self { executors, control })
    }

    /// The executors' CPUs, in executor order.
    pub fn cpus(&self) -> Vec<usize> {
        self.executors.iter().map(|e| e.cpu).collect()
    }

    /// The NUMA nodes the executors use, sorted.
    pub fn nodes(&self) -> Vec<usize> {
        let mut nodes: Vec<usize> = self.executors.iter().map(|e| e.node).collect();
        nodes.sort_unstable();
        nodes.dedup();
        nodes
    }

    /// The node executor `index`'s memory should come from.
    pub fn memory_node(&self, index: usize) -> Option<usize> {
        self.executors.get(index).map(|e| e.node)
    }
}

impl std::fmt::Display for PlacementPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.executors.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(
                f,
                "executor {} on cpu {} (package {} core {}, node {})",
                e.index, e.cpu, e.package, e.core, e.node
            )?;
        }
        match self.control {
            Some(ControlCpu {
                cpu,
                shared_with_executor: None,
            }) => write!(f, "; control on cpu {cpu}"),
            Some(ControlCpu {
                cpu,
                shared_with_executor: Some(i),
            }) => write!(f, "; control on cpu {cpu}, shared with executor {i}"),
            None => Ok(()),
        }
    }
}

/// Allowed, known CPUs in preference order (rule 2).
fn preference_order(topology: &Topology, allowed: &[usize]) -> Vec<usize> {
    // (node, core) → allowed PUs of that core, ascending (pus are sorted).
    let mut cores: BTreeMap<(usize, CoreKey), Vec<usize>> = BTreeMap::new();
    for pu in topology
        .pus
        .iter()
        .filter(|pu| allowed.contains(&pu.os_index))
    {
        cores
            .entry((pu.node, pu.core_key()))
            .or_default()
            .push(pu.os_index);
    }
    let rounds = cores.values().map(Vec::len).max().unwrap_or(0);
    (0..rounds)
        .flat_map(|round| {
            cores
                .values()
                .filter_map(move |pus| pus.get(round).copied())
        })
        .collect()
}
