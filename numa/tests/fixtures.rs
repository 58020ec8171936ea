//! Topology parsing and placement plans against fake sysfs trees in
//! `tests/fixtures/`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::path::PathBuf;

use numa::{
    Cache, CacheKind, ControlCpu, CoreSelection, Node, PlacementPlan, PlacementRequest, PlanError,
    Pu, Topology, TopologySource, SYNTHETIC_CORE_BASE,
};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn load(name: &str) -> Topology {
    Topology::from_sysfs(&fixture(name)).unwrap()
}

fn pu(os_index: usize, core: usize, package: usize, node: usize) -> Pu {
    Pu {
        os_index,
        core,
        package,
        node,
    }
}

fn request(cores: CoreSelection, reserve_control_cpu: bool) -> PlacementRequest {
    PlacementRequest {
        cores,
        reserve_control_cpu,
    }
}

fn plan_cpus(topology: &Topology, allowed: &[usize], request: &PlacementRequest) -> Vec<usize> {
    PlacementPlan::compute(topology, allowed, request)
        .unwrap()
        .cpus()
}

const GIB: u64 = 1 << 30;

#[test]
fn two_node_smt_topology() {
    let t = load("two_node_smt");
    assert_eq!(t.source, TopologySource::Sysfs);
    // cpus 0-3 are the first threads, 4-7 their siblings; core ids are per package.
    assert_eq!(
        t.pus,
        vec![
            pu(0, 0, 0, 0),
            pu(1, 1, 0, 0),
            pu(2, 0, 1, 1),
            pu(3, 1, 1, 1),
            pu(4, 0, 0, 0),
            pu(5, 1, 0, 0),
            pu(6, 0, 1, 1),
            pu(7, 1, 1, 1),
        ]
    );
    assert_eq!(
        t.nodes,
        vec![
            Node {
                os_index: 0,
                memory_bytes: Some(8 * GIB),
                cpus: vec![0, 1, 4, 5]
            },
            Node {
                os_index: 1,
                memory_bytes: Some(8 * GIB),
                cpus: vec![2, 3, 6, 7]
            },
        ]
    );
    assert_eq!(t.cores().len(), 4);
    assert_eq!(t.smt_siblings(2), vec![2, 6]);
    // Per core: L1d, L1i, L2 (4 cores x 3); per package: L3 (2).
    assert_eq!(t.caches.len(), 14);
    let l3: Vec<&Cache> = t.caches.iter().filter(|c| c.level == 3).collect();
    assert_eq!(l3.len(), 2);
    assert_eq!(l3[0].cpus, vec![0, 1, 4, 5]);
    assert_eq!(l3[0].size_bytes, Some(16 << 20));
    let of_cpu6: Vec<(u8, CacheKind, Vec<usize>)> = t
        .caches_of(6)
        .map(|c| (c.level, c.kind, c.cpus.clone()))
        .collect();
    assert_eq!(
        of_cpu6,
        vec![
            (1, CacheKind::Data, vec![2, 6]),
            (1, CacheKind::Instruction, vec![2, 6]),
            (2, CacheKind::Unified, vec![2, 6]),
            (3, CacheKind::Unified, vec![2, 3, 6, 7]),
        ]
    );
}

#[test]
fn single_cpu_without_node_dir_gets_node_zero_with_proc_meminfo() {
    let t = load("single_cpu_no_node");
    assert_eq!(t.pus, vec![pu(0, 0, 0, 0)]);
    assert_eq!(
        t.nodes,
        vec![Node {
            os_index: 0,
            memory_bytes: Some(GIB),
            cpus: vec![0]
        }]
    );
    let sizes: Vec<(u8, CacheKind, Option<u64>)> = t
        .caches
        .iter()
        .map(|c| (c.level, c.kind, c.size_bytes))
        .collect();
    assert_eq!(
        sizes,
        vec![
            (1, CacheKind::Data, Some(48 << 10)),
            (1, CacheKind::Instruction, Some(32 << 10)),
            (2, CacheKind::Unified, Some(2 << 20)),
        ]
    );
}

#[test]
fn missing_files_fall_back() {
    let t = load("missing_files");
    assert_eq!(
        t.pus,
        vec![
            pu(0, 0, 0, 0),
            // No topology dir: its own synthetic core, package 0.
            pu(1, SYNTHETIC_CORE_BASE + 1, 0, 0),
            // physical_package_id -1 reads as package 0.
            pu(2, 1, 0, 1),
            // Claimed by no node: the first node.
            pu(3, 1, 0, 0),
        ]
    );
    assert_eq!(t.smt_siblings(1), vec![1]);
    assert_eq!(t.smt_siblings(3), vec![2, 3]);
    assert_eq!(
        t.nodes,
        vec![
            Node {
                os_index: 0,
                memory_bytes: Some(2 * GIB),
                cpus: vec![0, 1, 3]
            },
            Node {
                os_index: 1,
                memory_bytes: None,
                cpus: vec![2]
            },
        ]
    );
    assert_eq!(
        t.caches,
        vec![
            // No size file.
            Cache {
                level: 1,
                kind: CacheKind::Data,
                size_bytes: None,
                cpus: vec![0]
            },
            // No type (unified), no shared_cpu_list (private to cpu0).
            Cache {
                level: 2,
                kind: CacheKind::Unified,
                size_bytes: Some(512 << 10),
                cpus: vec![0]
            },
            // Offline cpu 9 dropped from the shared list.
            Cache {
                level: 2,
                kind: CacheKind::Unified,
                size_bytes: Some(512 << 10),
                cpus: vec![2, 3]
            },
        ]
    );
}

#[test]
fn a_tree_without_cpus_is_an_error() {
    let err = Topology::from_sysfs(&fixture("cgroup_v1")).unwrap_err();
    assert!(matches!(err, numa::TopologyError::NoCpus(_)), "{err}");
}

#[test]
fn smt_siblings_are_used_only_after_every_core() {
    let t = load("two_node_smt");
    let all: Vec<usize> = (0..8).collect();
    for n in 1..=4 {
        let cpus = plan_cpus(&t, &all, &request(CoreSelection::Count(n), false));
        let mut cores: Vec<_> = cpus.iter().map(|&c| t.pu(c).unwrap().core_key()).collect();
        cores.sort();
        cores.dedup();
        assert_eq!(cores.len(), n, "{n} executors share a core: {cpus:?}");
    }
    // Two executors stay on node 0; four cover both nodes grouped by node.
    assert_eq!(
        plan_cpus(&t, &all, &request(CoreSelection::Count(2), false)),
        vec![0, 1]
    );
    assert_eq!(
        plan_cpus(&t, &all, &request(CoreSelection::Count(4), false)),
        vec![0, 1, 2, 3]
    );
    // Six: all four cores, then node 0's siblings; numbered by node.
    let plan = PlacementPlan::compute(&t, &all, &request(CoreSelection::Count(6), false)).unwrap();
    assert_eq!(plan.cpus(), vec![0, 4, 1, 5, 2, 3]);
    assert_eq!(
        plan.executors.iter().map(|e| e.node).collect::<Vec<_>>(),
        vec![0, 0, 0, 0, 1, 1]
    );
    assert_eq!(plan.nodes(), vec![0, 1]);
    assert_eq!(plan.memory_node(4), Some(1));
    assert!(plan.executors.iter().enumerate().all(|(i, e)| e.index == i));
    // All: every cpu, grouped by node and core.
    assert_eq!(
        plan_cpus(&t, &all, &PlacementRequest::default()),
        vec![0, 4, 1, 5, 2, 6, 3, 7]
    );
}

#[test]
fn plans_respect_the_allowed_set() {
    let t = load("two_node_smt");
    // Only node 1 and one sibling on node 0 allowed.
    let allowed = [2, 3, 4, 6, 7];
    let plan =
        PlacementPlan::compute(&t, &allowed, &request(CoreSelection::Count(3), false)).unwrap();
    // Cores (0,0) via cpu 4, (1,0) via 2, (1,1) via 3: three distinct cores.
    assert_eq!(plan.cpus(), vec![4, 2, 3]);
    let err =
        PlacementPlan::compute(&t, &allowed, &request(CoreSelection::Count(6), false)).unwrap_err();
    assert!(
        matches!(
            err,
            PlanError::NotEnoughCpus {
                requested: 6,
                available: 5,
                ..
            }
        ),
        "{err}"
    );
    let err = PlacementPlan::compute(&t, &[9, 10], &PlacementRequest::default()).unwrap_err();
    assert!(matches!(err, PlanError::NoUsableCpus { .. }), "{err}");
}

#[test]
fn explicit_core_list_is_used_as_given_and_checked() {
    let t = load("two_node_smt");
    let all: Vec<usize> = (0..8).collect();
    let plan = PlacementPlan::compute(
        &t,
        &all,
        &request(CoreSelection::List(vec![6, 0, 5]), false),
    )
    .unwrap();
    assert_eq!(plan.cpus(), vec![6, 0, 5]);
    assert_eq!(
        plan.executors
            .iter()
            .map(|e| (e.cpu, e.package, e.core, e.node))
            .collect::<Vec<_>>(),
        vec![(6, 1, 0, 1), (0, 0, 0, 0), (5, 0, 1, 0)]
    );

    let allowed = [0, 1, 2, 3];
    let err = PlacementPlan::compute(
        &t,
        &allowed,
        &request(CoreSelection::List(vec![1, 5]), false),
    )
    .unwrap_err();
    assert_eq!(
        err,
        PlanError::CpuNotAllowed {
            cpu: 5,
            allowed: "0-3".into()
        }
    );
    assert!(err.to_string().contains("cpu 5 is not allowed"), "{err}");
    let err = PlacementPlan::compute(&t, &all, &request(CoreSelection::List(vec![1, 12]), false))
        .unwrap_err();
    assert!(
        matches!(err, PlanError::CpuNotInTopology { cpu: 12, .. }),
        "{err}"
    );
    let err = PlacementPlan::compute(&t, &all, &request(CoreSelection::List(vec![1, 1]), false))
        .unwrap_err();
    assert_eq!(err, PlanError::DuplicateCpu { cpu: 1 });
    let err =
        PlacementPlan::compute(&t, &all, &request(CoreSelection::List(vec![]), false)).unwrap_err();
    assert_eq!(err, PlanError::ZeroExecutors);
    let err =
        PlacementPlan::compute(&t, &all, &request(CoreSelection::Count(0), false)).unwrap_err();
    assert_eq!(err, PlanError::ZeroExecutors);
}

#[test]
fn control_cpu_reservation() {
    let t = load("two_node_smt");
    let all: Vec<usize> = (0..8).collect();
    // All + reserve: the least preferred cpu (node 1's last sibling) is kept.
    let plan = PlacementPlan::compute(&t, &all, &request(CoreSelection::All, true)).unwrap();
    assert_eq!(plan.cpus(), vec![0, 4, 1, 5, 2, 6, 3]);
    assert_eq!(
        plan.control,
        Some(ControlCpu {
            cpu: 7,
            shared_with_executor: None
        })
    );
    // Count fills up to one short of the usable cpus, then errors.
    assert!(PlacementPlan::compute(&t, &all, &request(CoreSelection::Count(7), true)).is_ok());
    let err =
        PlacementPlan::compute(&t, &all, &request(CoreSelection::Count(8), true)).unwrap_err();
    assert!(
        matches!(
            err,
            PlanError::NotEnoughCpus {
                requested: 8,
                available: 7,
                ..
            }
        ),
        "{err}"
    );
    // Explicit list: the spare is the least preferred unlisted cpu.
    let plan =
        PlacementPlan::compute(&t, &all, &request(CoreSelection::List(vec![7, 3]), true)).unwrap();
    assert_eq!(plan.control.map(|c| c.cpu), Some(6));
    // No spare: shared with the last executor, and said so.
    let plan = PlacementPlan::compute(&t, &[1, 2], &request(CoreSelection::List(vec![2, 1]), true))
        .unwrap();
    assert_eq!(
        plan.control,
        Some(ControlCpu {
            cpu: 1,
            shared_with_executor: Some(1)
        })
    );
    // One cpu machine: the control shares it.
    let one = load("single_cpu_no_node");
    let plan = PlacementPlan::compute(&one, &[0], &request(CoreSelection::All, true)).unwrap();
    assert_eq!(plan.cpus(), vec![0]);
    assert_eq!(
        plan.control,
        Some(ControlCpu {
            cpu: 0,
            shared_with_executor: Some(0)
        })
    );
    assert!(
        plan.to_string().contains("shared with executor 0"),
        "{plan}"
    );
}

#[test]
fn cgroup_cpusets_from_fixture_trees() {
    assert_eq!(
        numa::cgroup_cpuset(&fixture("cgroup_v1")).unwrap(),
        Some(vec![2, 3])
    );
    assert_eq!(
        numa::cgroup_cpuset(&fixture("cgroup_v2_ns")).unwrap(),
        Some(vec![0, 2, 4, 5])
    );
    assert_eq!(
        numa::cgroup_cpuset(&fixture("cgroup_v2_no_cpuset")).unwrap(),
        None
    );
    // A tree without /proc tells us nothing.
    assert_eq!(numa::cgroup_cpuset(&fixture("two_node_smt")).unwrap(), None);
}
