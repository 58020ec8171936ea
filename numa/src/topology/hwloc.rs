//! Topology from hwloc (libhwloc ≥ 2.0 found through pkg-config by
//! `hwlocality-sys`; Debian 12 ships 2.9).
//!
//! Built with `INCLUDE_DISALLOWED` so the topology describes the machine, not
//! this process's cpuset (the placement plan applies the allowed set), and
//! with instruction caches kept so L1i appears as it does in sysfs.

use std::collections::BTreeMap;

use hwlocality::object::attributes::{CacheAttributes, ObjectAttributes};
use hwlocality::object::types::{CacheType, ObjectType};
use hwlocality::object::TopologyObject;
use hwlocality::topology::builder::{BuildFlags, TypeFilter};

use super::{Cache, CacheKind, Pu, Topology, TopologyError, TopologySource, SYNTHETIC_CORE_BASE};

fn hwloc_error(context: &str, error: impl std::fmt::Display) -> TopologyError {
    TopologyError::Hwloc(format!("{context}: {error}"))
}

/// The OS numbers of the CPUs in an object's cpuset.
fn cpus_of(object: &TopologyObject) -> Vec<usize> {
    object
        .cpuset()
        .map(|set| set.iter_set().map(usize::from).collect())
        .unwrap_or_default()
}

/// Cache object types with their level.
const CACHE_TYPES: [(ObjectType, u8); 8] = [
    (ObjectType::L1Cache, 1),
    (ObjectType::L2Cache, 2),
    (ObjectType::L3Cache, 3),
    (ObjectType::L4Cache, 4),
    (ObjectType::L5Cache, 5),
    (ObjectType::L1ICache, 1),
    (ObjectType::L2ICache, 2),
    (ObjectType::L3ICache, 3),
];

pub(super) fn read() -> Result<Topology, TopologyError> {
    let topology = hwlocality::Topology::builder()
        .with_flags(BuildFlags::INCLUDE_DISALLOWED)
        .map_err(|e| hwloc_error("setting INCLUDE_DISALLOWED", e))?
        .with_cpu_icache_type_filter(TypeFilter::KeepAll)
        .map_err(|e| hwloc_error("keeping instruction caches", e))?
        .build()
        .map_err(|e| hwloc_error("building the topology", e))?;

    let mut node_memory = BTreeMap::new();
    let mut node_of_cpu = BTreeMap::new();
    for node in topology.objects_with_type(ObjectType::NUMANode) {
        let os_index = node
            .os_index()
            .ok_or_else(|| hwloc_error("NUMA node", "has no OS index"))?;
        let memory = match node.attributes() {
            Some(ObjectAttributes::NUMANode(attributes)) => {
                attributes.local_memory().map(std::num::NonZeroU64::get)
            }
            _ => None,
        };
        node_memory.insert(os_index, memory);
        for cpu in cpus_of(node) {
            node_of_cpu.entry(cpu).or_insert(os_index);
        }
    }
    let fallback_node = match node_memory.keys().next() {
        Some(&first) => first,
        None => {
            node_memory.insert(0, None);
            0
        }
    };

    let mut pus = Vec::new();
    for pu in topology.objects_with_type(ObjectType::PU) {
        let os_index = pu
            .os_index()
            .ok_or_else(|| hwloc_error("PU", "has no OS index"))?;
        let ancestor_index = |ty| {
            pu.first_ancestor_with_type(ty)
                .and_then(TopologyObject::os_index)
        };
        pus.push(Pu {
            os_index,
            core: ancestor_index(ObjectType::Core).unwrap_or(SYNTHETIC_CORE_BASE + os_index),
            package: ancestor_index(ObjectType::Package).unwrap_or(0),
            node: node_of_cpu.get(&os_index).copied().unwrap_or(fallback_node),
        });
    }
    if pus.is_empty() {
        return Err(hwloc_error("topology", "lists no PU"));
    }

    let mut caches = Vec::new();
    for (ty, level) in CACHE_TYPES {
        for object in topology.objects_with_type(ty) {
            let attributes: Option<&CacheAttributes> = match object.attributes() {
                Some(ObjectAttributes::Cache(attributes)) => Some(attributes),
                _ => None,
            };
            let kind = match attributes.map(CacheAttributes::cache_type) {
                Some(CacheType::Data) => CacheKind::Data,
                Some(CacheType::Instruction) => CacheKind::Instruction,
                _ if ty.is_cpu_instruction_cache() => CacheKind::Instruction,
                _ => CacheKind::Unified,
            };
            caches.push(Cache {
                level,
                kind,
                size_bytes: attributes
                    .and_then(CacheAttributes::size)
                    .map(std::num::NonZeroU64::get),
                cpus: cpus_of(object),
            });
        }
    }
    Topology::assemble(TopologySource::Hwloc, pus, node_memory, caches)
}
