//! Which cpus this process may use, and pinning the calling thread to one.
//!
//! Thin over the `numa` crate (the same code the data plane pins with): the
//! allowed set is `sched_getaffinity` intersected with the cgroup cpuset, so a
//! benchmark started under `taskset` or in a restricted cgroup measures the
//! cores it was given and records their ids.

use thiserror::Error;

/// Errors choosing or pinning cpus.
#[derive(Debug, Error)]
pub enum AffinityError {
    /// Reading the allowed cpus or pinning failed in the `numa` crate.
    #[error(transparent)]
    Numa(#[from] numa::NumaError),
    /// Fewer cpus allowed than the benchmark needs.
    #[error("benchmark needs {needed} distinct cpus, the allowed cpuset is {allowed:?}; run it on a machine (or cpuset) with more cpus")]
    TooFewCpus { needed: usize, allowed: Vec<usize> },
    /// A requested cpu is not in the allowed set.
    #[error("cpu {cpu} is not in the allowed cpuset {allowed:?}")]
    NotAllowed { cpu: usize, allowed: Vec<usize> },
    /// The same cpu was requested twice.
    #[error("cpus must differ, got {cpu} twice")]
    Duplicate { cpu: usize },
}

/// The cpu ids this process may use, ascending. Call before pinning.
///
/// # Errors
/// [`AffinityError::Numa`] when the affinity mask or cgroup cannot be read.
pub fn allowed_cpus() -> Result<Vec<usize>, AffinityError> {
    Ok(numa::allowed_cpus()?)
}

/// Chooses two distinct cpus: the requested ones (validated against the
/// allowed set) or the first two allowed.
///
/// # Errors
/// When fewer than two cpus are allowed, or a requested one is not allowed or
/// repeated.
pub fn choose_two(
    requested: Option<&[usize]>,
    allowed: &[usize],
) -> Result<[usize; 2], AffinityError> {
    let pick: Vec<usize> = match requested {
        Some(r) => r.to_vec(),
        None => allowed.iter().copied().take(2).collect(),
    };
    let [a, b] = pick[..] else {
        return Err(AffinityError::TooFewCpus {
            needed: 2,
            allowed: allowed.to_vec(),
        });
    };
    for cpu in [a, b] {
        if !allowed.contains(&cpu) {
            return Err(AffinityError::NotAllowed {
                cpu,
                allowed: allowed.to_vec(),
            });
        }
    }
    if a == b {
        return Err(AffinityError::Duplicate { cpu: a });
    }
    Ok([a, b])
}

/// Pins the calling thread to `cpu`, one of `allowed` (from
/// [`allowed_cpus`] before any pinning), and verifies the pin took.
///
/// # Errors
/// [`AffinityError::Numa`] when `cpu` is not allowed or the kernel refuses.
pub fn pin_current_thread(cpu: usize, allowed: &[usize]) -> Result<(), AffinityError> {
    Ok(numa::pin_current_thread_within(cpu, allowed)?)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design
mod tests {
    use super::*;

    #[test]
    fn choose_two_defaults_to_first_two_allowed() {
        assert_eq!(choose_two(None, &[3, 5, 7]).ok(), Some([3, 5]));
    }

    #[test]
    fn choose_two_rejects_bad_requests() {
        assert!(matches!(
            choose_two(None, &[0]),
            Err(AffinityError::TooFewCpus { needed: 2, .. })
        ));
        assert!(matches!(
            choose_two(Some(&[0, 9]), &[0, 1]),
            Err(AffinityError::NotAllowed { cpu: 9, .. })
        ));
        assert!(matches!(
            choose_two(Some(&[1, 1]), &[0, 1]),
            Err(AffinityError::Duplicate { cpu: 1 })
        ));
        assert!(matches!(
            choose_two(Some(&[0, 1, 2]), &[0, 1, 2]),
            Err(AffinityError::TooFewCpus { .. })
        ));
    }

    #[test]
    fn pinning_to_an_allowed_cpu_sticks() {
        let allowed = allowed_cpus().unwrap();
        let cpu = *allowed.last().unwrap();
        std::thread::spawn(move || {
            pin_current_thread(cpu, &allowed).unwrap();
            // SAFETY: sched_getcpu has no preconditions.
            let now = unsafe { libc::sched_getcpu() };
            assert_eq!(usize::try_from(now).unwrap(), cpu);
        })
        .join()
        .unwrap();
    }
}
