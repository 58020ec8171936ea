//! Tests on the real machine: hwloc and sysfs agree, the allowed set matches
//! the kernel's own report, and pinning really moves the thread.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::path::Path;

use numa::{
    allowed_cpus, current_thread_affinity, parse_cpu_list, pin_current_thread, CacheKind,
    NumaError, PlacementPlan, PlacementRequest, Topology, TopologySource,
};

#[test]
fn hwloc_and_sysfs_agree() {
    let started = std::time::Instant::now();
    let hwloc = Topology::from_hwloc().unwrap();
    let hwloc_took = started.elapsed();
    let started = std::time::Instant::now();
    let sysfs = Topology::from_sysfs(Path::new("/")).unwrap();
    eprintln!(
        "discovery took: hwloc {hwloc_took:?}, sysfs {:?}",
        started.elapsed()
    );
    eprintln!("hwloc: {hwloc:#?}\nsysfs: {sysfs:#?}");
    assert_eq!(hwloc.source, TopologySource::Hwloc);
    assert_eq!(sysfs.source, TopologySource::Sysfs);
    assert_eq!(hwloc.pus.len(), sysfs.pus.len());
    assert_eq!(hwloc.pus, sysfs.pus);
    let node_view = |t: &Topology| {
        t.nodes
            .iter()
            .map(|n| (n.os_index, n.cpus.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(node_view(&hwloc), node_view(&sysfs));
    // Data and unified caches: same levels, sharing and sizes. (hwloc may
    // drop instruction caches it cannot describe, so those are not compared.)
    let cache_view = |t: &Topology| {
        t.caches
            .iter()
            .filter(|c| c.kind != CacheKind::Instruction)
            .map(|c| (c.level, c.kind, c.size_bytes, c.cpus.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(cache_view(&hwloc), cache_view(&sysfs));
    // The online list is the kernel's own count of PUs.
    let online = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap();
    assert_eq!(sysfs.pus.len(), parse_cpu_list(&online).unwrap().len());
}

#[test]
fn detect_uses_hwloc_here() {
    let t = Topology::detect().unwrap();
    assert_eq!(t.source, TopologySource::Hwloc);
    assert!(!t.pus.is_empty());
    assert!(t.nodes.iter().any(|n| n.memory_bytes.is_some()));
}

/// `Cpus_allowed_list` from `/proc/self/status`: the kernel's own rendering
/// of the main thread's mask, an independent check on our syscall decoding.
fn proc_status_allowed() -> Vec<usize> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap();
    parse_cpu_list(line).unwrap()
}

#[test]
fn allowed_cpus_match_the_kernel() {
    let allowed = allowed_cpus().unwrap();
    assert!(!allowed.is_empty());
    let expected = proc_status_allowed();
    // allowed_cpus may be narrower (cgroup cpuset), never wider.
    assert!(
        allowed.iter().all(|c| expected.contains(c)),
        "{allowed:?} vs {expected:?}"
    );
    if let Some(cpuset) = numa::cgroup_cpuset(Path::new("/")).unwrap() {
        assert!(allowed.iter().all(|c| cpuset.contains(c)));
    }
}

#[test]
fn pinning_moves_the_thread() {
    let allowed = allowed_cpus().unwrap();
    let handle = std::thread::spawn(move || {
        for &cpu in &allowed {
            pin_current_thread(cpu).unwrap();
            assert_eq!(current_thread_affinity().unwrap(), vec![cpu]);
            // The scheduler migrates us at the next opportunity; spin until the
            // CPU we run on matches (bounded, a pinned thread must get there).
            let mut running_on = None;
            for _ in 0..1000 {
                std::thread::yield_now();
                // SAFETY: sched_getcpu has no preconditions.
                let now = unsafe { libc::sched_getcpu() };
                running_on = usize::try_from(now).ok();
                if running_on == Some(cpu) {
                    break;
                }
            }
            assert_eq!(
                running_on,
                Some(cpu),
                "pinned to {cpu} but running elsewhere"
            );
        }
        let outside = allowed.iter().max().map_or(0, |m| m + 1);
        let err = pin_current_thread(outside).unwrap_err();
        assert!(
            matches!(err, NumaError::CpuNotAllowed { cpu, .. } if cpu == outside),
            "{err}"
        );
        // The failed pin left the last pin in place.
        assert_eq!(current_thread_affinity().unwrap().len(), 1);
    });
    handle.join().unwrap();
}

#[test]
fn plan_for_this_machine_covers_the_allowed_cpus() {
    let topology = Topology::detect().unwrap();
    let allowed = allowed_cpus().unwrap();
    let plan = PlacementPlan::compute(&topology, &allowed, &PlacementRequest::default()).unwrap();
    eprintln!("plan: {plan}");
    let mut cpus = plan.cpus();
    cpus.sort_unstable();
    let expected: Vec<usize> = allowed
        .iter()
        .copied()
        .filter(|&c| topology.pu(c).is_some())
        .collect();
    assert_eq!(cpus, expected);
    for e in &plan.executors {
        assert_eq!(Some(e.node), topology.node_of(e.cpu));
    }
}
