//! Topology from a Linux sysfs tree below a root directory.
//!
//! Files read (all relative to the root; each missing one has a fallback, see
//! [`super::Topology::from_sysfs`]):
//!
//! ```text
//! sys/devices/system/cpu/online                                  "0-7"
//! sys/devices/system/cpu/cpuN/topology/core_id                   "3"
//! sys/devices/system/cpu/cpuN/topology/physical_package_id       "0"   (-1 on some arches → 0)
//! sys/devices/system/cpu/cpuN/cache/indexK/level                 "2"
//! sys/devices/system/cpu/cpuN/cache/indexK/type                  "Data" | "Instruction" | "Unified"
//! sys/devices/system/cpu/cpuN/cache/indexK/size                  "1024K"
//! sys/devices/system/cpu/cpuN/cache/indexK/shared_cpu_list       "0,4"
//! sys/devices/system/node/online                                 "0-1"
//! sys/devices/system/node/nodeN/cpulist                          "0-1,4-5"
//! sys/devices/system/node/nodeN/meminfo                          "Node 0 MemTotal:  5597396 kB"
//! proc/meminfo                                                   "MemTotal:  24633180 kB" (no node dir only)
//! ```

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use super::{Cache, CacheKind, Pu, Topology, TopologyError, TopologySource, SYNTHETIC_CORE_BASE};
use crate::cpulist::parse_cpu_list;
use crate::sys::read_if_exists;

/// Reads a file, mapping "does not exist" to `None`.
fn read_optional(path: &Path) -> Result<Option<String>, TopologyError> {
    read_if_exists(path).map_err(|source| TopologyError::Io {
        path: path.to_owned(),
        source,
    })
}

fn parse_error(path: &Path, content: &str, reason: &str) -> TopologyError {
    TopologyError::Parse {
        path: path.to_owned(),
        content: content.trim().to_owned(),
        reason: reason.to_owned(),
    }
}

fn read_cpu_list(path: &Path) -> Result<Option<Vec<usize>>, TopologyError> {
    read_optional(path)?
        .map(|text| {
            parse_cpu_list(&text).map_err(|source| TopologyError::CpuList {
                path: path.to_owned(),
                source,
            })
        })
        .transpose()
}

/// Reads a decimal id; `-1` (unknown, written by some architectures) reads as `None`.
fn read_id(path: &Path) -> Result<Option<usize>, TopologyError> {
    let Some(text) = read_optional(path)? else {
        return Ok(None);
    };
    match text.trim().parse::<i64>() {
        Ok(-1) => Ok(None),
        Ok(value) => usize::try_from(value)
            .map(Some)
            .map_err(|_| parse_error(path, &text, "expected a non-negative id or -1")),
        Err(_) => Err(parse_error(path, &text, "expected a decimal id")),
    }
}

/// Parses a sysfs cache size: `"48K"`, `"2M"`, `"1G"` or plain bytes.
fn parse_size(path: &Path, text: &str) -> Result<u64, TopologyError> {
    let trimmed = text.trim();
    let (digits, multiplier) = match trimmed.as_bytes().last() {
        Some(b'K') => (&trimmed[..trimmed.len() - 1], 1u64 << 10),
        Some(b'M') => (&trimmed[..trimmed.len() - 1], 1 << 20),
        Some(b'G') => (&trimmed[..trimmed.len() - 1], 1 << 30),
        _ => (trimmed, 1),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .ok_or_else(|| parse_error(path, text, "expected a size like 48K"))
}

/// Finds `MemTotal: <n> kB` in a `meminfo` file (per-node lines carry a
/// `Node N ` prefix, `/proc/meminfo` does not).
fn parse_mem_total(path: &Path, text: &str) -> Result<Option<u64>, TopologyError> {
    let Some(line) = text.lines().find(|line| line.contains("MemTotal:")) else {
        return Ok(None);
    };
    let after = line
        .split_once("MemTotal:")
        .map_or("", |(_, after)| after)
        .trim();
    let kib = after
        .strip_suffix("kB")
        .map(str::trim)
        .and_then(|n| n.parse::<u64>().ok())
        .ok_or_else(|| parse_error(path, line, "expected `MemTotal: <n> kB`"))?;
    kib.checked_mul(1024)
        .map(Some)
        .ok_or_else(|| parse_error(path, line, "size overflows u64"))
}

/// Lists `<dir>/<prefix>N` entries, sorted by N; a missing `dir` lists nothing.
fn numbered_entries(dir: &Path, prefix: &str) -> Result<Vec<usize>, TopologyError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(TopologyError::Io {
                path: dir.to_owned(),
                source,
            })
        }
    };
    let mut numbers = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| TopologyError::Io {
            path: dir.to_owned(),
            source,
        })?;
        let name = entry.file_name();
        if let Some(n) = name
            .to_str()
            .and_then(|name| name.strip_prefix(prefix))
            .and_then(|digits| digits.parse::<usize>().ok())
        {
            numbers.push(n);
        }
    }
    numbers.sort_unstable();
    Ok(numbers)
}

pub(super) fn read(root: &Path) -> Result<Topology, TopologyError> {
    let cpu_dir = root.join("sys/devices/system/cpu");
    let node_dir = root.join("sys/devices/system/node");

    let cpus = match read_cpu_list(&cpu_dir.join("online"))? {
        Some(cpus) => cpus,
        None => numbered_entries(&cpu_dir, "cpu")?,
    };
    if cpus.is_empty() {
        return Err(TopologyError::NoCpus(cpu_dir));
    }

    // NUMA nodes: memory per node and the cpu → node map.
    let node_ids = match read_cpu_list(&node_dir.join("online"))? {
        Some(nodes) => nodes,
        None => numbered_entries(&node_dir, "node")?,
    };
    let mut node_memory = BTreeMap::new();
    let mut node_of_cpu = BTreeMap::new();
    for &node in &node_ids {
        let dir = node_dir.join(format!("node{node}"));
        let meminfo = dir.join("meminfo");
        let memory = match read_optional(&meminfo)? {
            Some(text) => parse_mem_total(&meminfo, &text)?,
            None => None,
        };
        node_memory.insert(node, memory);
        for cpu in read_cpu_list(&dir.join("cpulist"))?.unwrap_or_default() {
            node_of_cpu.entry(cpu).or_insert(node);
        }
    }
    // A CPU no node claims (or no node directory at all) goes to the first node.
    let fallback_node = match node_memory.keys().next() {
        Some(&first) => first,
        None => {
            let meminfo = root.join("proc/meminfo");
            let memory = match read_optional(&meminfo)? {
                Some(text) => parse_mem_total(&meminfo, &text)?,
                None => None,
            };
            node_memory.insert(0, memory);
            0
        }
    };

    let mut pus = Vec::with_capacity(cpus.len());
    let mut caches = Vec::new();
    for &cpu in &cpus {
        let dir = cpu_dir.join(format!("cpu{cpu}"));
        let topo = dir.join("topology");
        pus.push(Pu {
            os_index: cpu,
            core: read_id(&topo.join("core_id"))?.unwrap_or(SYNTHETIC_CORE_BASE + cpu),
            package: read_id(&topo.join("physical_package_id"))?.unwrap_or(0),
            node: node_of_cpu.get(&cpu).copied().unwrap_or(fallback_node),
        });
        let cache_dir = dir.join("cache");
        for index in numbered_entries(&cache_dir, "index")? {
            if let Some(cache) = read_cache(&cache_dir.join(format!("index{index}")), cpu)? {
                caches.push(cache);
            }
        }
    }
    Topology::assemble(TopologySource::Sysfs, pus, node_memory, caches)
}

/// Reads one `cache/indexK` directory of `cpu`; `None` when `level` is missing.
fn read_cache(dir: &Path, cpu: usize) -> Result<Option<Cache>, TopologyError> {
    let level_path = dir.join("level");
    let Some(level_text) = read_optional(&level_path)? else {
        return Ok(None);
    };
    let level: u8 = level_text
        .trim()
        .parse()
        .map_err(|_| parse_error(&level_path, &level_text, "expected a cache level"))?;
    let type_path: PathBuf = dir.join("type");
    let kind = match read_optional(&type_path)?.as_deref().map(str::trim) {
        None | Some("Unified") => CacheKind::Unified,
        Some("Data") => CacheKind::Data,
        Some("Instruction") => CacheKind::Instruction,
        Some(other) => {
            return Err(parse_error(
                &type_path,
                other,
                "expected Data, Instruction or Unified",
            ))
        }
    };
    let size_path = dir.join("size");
    let size_bytes = read_optional(&size_path)?
        .map(|text| parse_size(&size_path, &text))
        .transpose()?;
    let cpus = read_cpu_list(&dir.join("shared_cpu_list"))?.unwrap_or_else(|| vec![cpu]);
    Ok(Some(Cache {
        level,
        kind,
        size_bytes,
        cpus,
    }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design
mod tests {
    use super::*;

    #[test]
    fn sizes_and_meminfo_parse() {
        let p = Path::new("x");
        assert_eq!(parse_size(p, "48K\n").unwrap(), 48 * 1024);
        assert_eq!(parse_size(p, "2M").unwrap(), 2 << 20);
        assert_eq!(parse_size(p, "4096").unwrap(), 4096);
        assert!(parse_size(p, "big").is_err());
        assert_eq!(
            parse_mem_total(
                p,
                "Node 0 MemTotal:        5597396 kB\nNode 0 MemFree: 1 kB\n"
            )
            .unwrap(),
            Some(5_597_396 * 1024)
        );
        assert_eq!(
            parse_mem_total(p, "MemTotal:       24633180 kB\n").unwrap(),
            Some(24_633_180 * 1024)
        );
        assert_eq!(parse_mem_total(p, "Other: 1 kB\n").unwrap(), None);
        assert!(parse_mem_total(p, "MemTotal: lots\n").is_err());
    }
}
