//! Property test: plans on random machines and allowed sets against a simple
//! model (sort candidates by (SMT rank within core, node, core, cpu), take n).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::collections::BTreeSet;

use numa::{
    CoreSelection, Node, PlacementPlan, PlacementRequest, PlanError, Pu, Topology, TopologySource,
};
use proptest::prelude::*;

/// `nodes` nodes × `cores` cores per node × `smt` threads per core, numbered
/// like Linux: thread t of global core c is cpu `t * total_cores + c`; one
/// package per node, core ids restart in each package.
fn machine(nodes: usize, cores: usize, smt: usize) -> Topology {
    let total_cores = nodes * cores;
    let mut pus = Vec::new();
    for thread in 0..smt {
        for global_core in 0..total_cores {
            pus.push(Pu {
                os_index: thread * total_cores + global_core,
                core: global_core % cores,
                package: global_core / cores,
                node: global_core / cores,
            });
        }
    }
    pus.sort_by_key(|pu| pu.os_index);
    let nodes = (0..nodes)
        .map(|node| Node {
            os_index: node,
            memory_bytes: None,
            cpus: pus
                .iter()
                .filter(|pu| pu.node == node)
                .map(|pu| pu.os_index)
                .collect(),
        })
        .collect();
    Topology {
        source: TopologySource::Sysfs,
        pus,
        nodes,
        caches: Vec::new(),
    }
}

fn model(topology: &Topology, allowed: &[usize], n: usize) -> BTreeSet<usize> {
    let mut candidates: Vec<(usize, usize, usize, usize, usize)> = topology
        .pus
        .iter()
        .filter(|pu| allowed.contains(&pu.os_index))
        .map(|pu| {
            let rank = topology
                .pus
                .iter()
                .filter(|other| {
                    other.core_key() == pu.core_key()
                        && allowed.contains(&other.os_index)
                        && other.os_index < pu.os_index
                })
                .count();
            (rank, pu.node, pu.package, pu.core, pu.os_index)
        })
        .collect();
    candidates.sort_unstable();
    candidates.into_iter().take(n).map(|c| c.4).collect()
}

proptest! {
    #[test]
    fn count_plans_follow_the_rules(
        shape in (1usize..4, 1usize..5, 1usize..4),
        allowed_bits in any::<u64>(),
        n_seed in any::<usize>(),
        reserve in any::<bool>(),
    ) {
        let (nodes, cores, smt) = shape;
        let topology = machine(nodes, cores, smt);
        let total = topology.pus.len();
        let mut allowed: Vec<usize> = (0..total).filter(|cpu| allowed_bits & (1 << cpu) != 0).collect();
        if allowed.is_empty() {
            allowed.push(n_seed % total);
        }
        let usable = allowed.len() - usize::from(reserve);
        let n = n_seed % (allowed.len() + 1) + 1;
        let request = PlacementRequest { cores: CoreSelection::Count(n), reserve_control_cpu: reserve };
        let result = PlacementPlan::compute(&topology, &allowed, &request);
        if n > usable {
            let is_not_enough = matches!(result, Err(PlanError::NotEnoughCpus { .. }));
            prop_assert!(is_not_enough);
            return Ok(());
        }
        let plan = result.unwrap();
        let cpus = plan.cpus();
        let chosen: BTreeSet<usize> = cpus.iter().copied().collect();
        prop_assert_eq!(chosen.len(), n, "duplicate cpus {:?}", cpus);
        prop_assert!(cpus.iter().all(|c| allowed.contains(c)));
        prop_assert_eq!(&chosen, &model(&topology, &allowed, n));
        // Distinct cores first.
        let allowed_cores: BTreeSet<_> = allowed.iter().map(|&c| topology.pu(c).unwrap().core_key()).collect();
        let used_cores: BTreeSet<_> = cpus.iter().map(|&c| topology.pu(c).unwrap().core_key()).collect();
        prop_assert_eq!(used_cores.len(), n.min(allowed_cores.len()));
        // Numbered grouped by node, each with its cpu's node.
        let keys: Vec<_> = plan.executors.iter().map(|e| (e.node, e.package, e.core, e.cpu)).collect();
        let mut sorted = keys.clone();
        sorted.sort_unstable();
        prop_assert_eq!(keys, sorted);
        for (i, e) in plan.executors.iter().enumerate() {
            prop_assert_eq!(e.index, i);
            prop_assert_eq!(Some(e.node), topology.node_of(e.cpu));
        }
        // The control cpu, when reserved, is allowed and runs no executor.
        if reserve {
            let control = plan.control.unwrap();
            prop_assert!(allowed.contains(&control.cpu));
            prop_assert!(!chosen.contains(&control.cpu));
            prop_assert_eq!(control.shared_with_executor, None);
        } else {
            prop_assert_eq!(plan.control, None);
        }
    }
}
