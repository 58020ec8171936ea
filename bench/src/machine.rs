//! What a benchmark ran on.
//!
//! Read from procfs/sysfs; a missing file gives `"unknown"` rather than an
//! error, because a result without a CPU model is still a result.

use serde::Serialize;
use std::fs;

/// The machine a benchmark ran on, recorded in every result.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub hostname: String,
    pub kernel: String,
    pub cpu_model: String,
    /// Cpus online (`/sys/devices/system/cpu/online`, e.g. `0-1`).
    pub cpus_online: String,
    /// The cpu ids the benchmark pinned its processes/threads to.
    pub cores_used: Vec<usize>,
    /// Whether `/proc/cpuinfo` has the `hypervisor` flag (a VM: cross-core
    /// wake-ups go through the hypervisor and cost more than on bare metal).
    pub virtualized: bool,
    pub clocksource: String,
    pub cpuidle_driver: String,
    /// `/proc/loadavg`'s 1, 5 and 15 minute averages when the result was
    /// written: other work on the same cpus shows up in tail latencies.
    pub load_average: String,
}

impl Machine {
    /// Reads the machine description from `/proc` and `/sys`.
    #[must_use]
    pub fn detect(cores_used: &[usize]) -> Self {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        Self {
            hostname: read_trimmed("/proc/sys/kernel/hostname"),
            kernel: read_trimmed("/proc/sys/kernel/osrelease"),
            cpu_model: cpuinfo_field(&cpuinfo, "model name").unwrap_or_else(unknown),
            cpus_online: read_trimmed("/sys/devices/system/cpu/online"),
            cores_used: cores_used.to_vec(),
            virtualized: cpuinfo_field(&cpuinfo, "flags")
                .is_some_and(|f| f.split_whitespace().any(|flag| flag == "hypervisor")),
            clocksource: read_trimmed(
                "/sys/devices/system/clocksource/clocksource0/current_clocksource",
            ),
            cpuidle_driver: read_trimmed("/sys/devices/system/cpu/cpuidle/current_driver"),
            load_average: read_trimmed("/proc/loadavg")
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" "),
        }
    }
}

/// Time the hypervisor ran something else while `cpus` wanted to run
/// (the `steal` column of `/proc/stat`), in ms; `None` when unreadable.
/// Read before and after a measurement: a VM's vCPU that was not running
/// shows up as latency no ring or futex can be blamed for.
#[must_use]
pub fn steal_ms(cpus: &[usize]) -> Option<u64> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).ok()?;
    steal_ticks(&stat, cpus).map(|ticks| ticks * 1000 / hz.max(1))
}

/// Sum of the steal column (8th value) of the `cpuN` lines for `cpus`.
fn steal_ticks(stat: &str, cpus: &[usize]) -> Option<u64> {
    let mut total = 0u64;
    for cpu in cpus {
        let name = format!("cpu{cpu}");
        let line = stat
            .lines()
            .find(|l| l.split_whitespace().next() == Some(&name))?;
        total += line.split_whitespace().nth(8)?.parse::<u64>().ok()?;
    }
    Some(total)
}

fn unknown() -> String {
    "unknown".to_owned()
}

fn read_trimmed(path: &str) -> String {
    fs::read_to_string(path).map_or_else(|_| unknown(), |s| s.trim().to_owned())
}

/// The value of the first `key : value` line of `/proc/cpuinfo` text.
fn cpuinfo_field(cpuinfo: &str, key: &str) -> Option<String> {
    cpuinfo.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        (k.trim() == key).then(|| v.trim().to_owned())
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design
mod tests {
    use super::*;

    #[test]
    fn cpuinfo_field_reads_first_match() {
        let text = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu hypervisor\nmodel name\t: other\n";
        assert_eq!(
            cpuinfo_field(text, "model name").as_deref(),
            Some("AMD EPYC")
        );
        assert_eq!(
            cpuinfo_field(text, "flags").as_deref(),
            Some("fpu hypervisor")
        );
        assert_eq!(cpuinfo_field(text, "missing"), None);
    }

    #[test]
    fn steal_column_is_summed_per_cpu() {
        let stat =
            "cpu  1 2 3 4 5 6 7 99 0 0\ncpu0 1 2 3 4 5 6 7 40 0 0\ncpu1 1 2 3 4 5 6 7 59 0 0\n";
        assert_eq!(steal_ticks(stat, &[0, 1]), Some(99));
        assert_eq!(steal_ticks(stat, &[1]), Some(59));
        assert_eq!(steal_ticks(stat, &[7]), None);
        assert!(steal_ms(&[0]).is_some());
    }

    #[test]
    fn detect_reports_this_kernel() {
        let m = Machine::detect(&[0, 1]);
        assert_eq!(m.cores_used, vec![0, 1]);
        assert_eq!(
            m.kernel,
            fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap()
                .trim()
        );
        assert_ne!(m.cpu_model, "unknown");
    }
}
