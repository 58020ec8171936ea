//! Which cpus this process may use, and pinning the calling thread to one.
//!
//! Thin over the `numa` crate (the same code the data plane pins with): the
//! allowed set is `sched_getaffinity` intersected with the cgroup cpuset, so a
//! benchmark started under `taskset` or in a restricted cgroup measures the
//! cores it was given and records their ids.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
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
    /// The idle-class spinner thread could not be started.
    #[error("cannot start the idle spinner thread for cpu {cpu}: {source}")]
    Spinner { cpu: usize, source: std::io::Error },
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

/// A `SCHED_IDLE` thread spinning on one cpu, so that cpu never enters an
/// idle state while it lives: any normal thread that wakes there preempts it
/// at once. Used to separate the cost of waking an *idle* cpu (on a VM: a
/// `HLT` exit and an IPI through the hypervisor) from the cost of the wake-up
/// itself. Stopped and joined on drop.
#[derive(Debug)]
pub struct IdleSpinner {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl IdleSpinner {
    /// Starts the spinner on `cpu` (one of `allowed`).
    ///
    /// # Errors
    /// [`AffinityError::Spinner`] when the thread cannot be spawned. Pinning
    /// or scheduling-class failures inside the thread stop it early (it then
    /// simply does not spin), reported on stderr.
    pub fn start(cpu: usize, allowed: &[usize]) -> Result<Self, AffinityError> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let allowed = allowed.to_vec();
        let thread = std::thread::Builder::new()
            .name(format!("idle-spin-{cpu}"))
            .spawn(move || {
                if let Err(e) = pin_current_thread(cpu, &allowed) {
                    eprintln!("idle spinner: {e}; not spinning");
                    return;
                }
                let param = libc::sched_param { sched_priority: 0 };
                // SAFETY: pid 0 = the calling thread; `param` is a valid
                // sched_param for the call.
                let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &raw const param) };
                if rc != 0 {
                    eprintln!(
                        "idle spinner: SCHED_IDLE refused ({}); not spinning",
                        std::io::Error::last_os_error()
                    );
                    return;
                }
                // SYNC: Relaxed: a stop request; nothing else is published.
                while !flag.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
            .map_err(|source| AffinityError::Spinner { cpu, source })?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for IdleSpinner {
    fn drop(&mut self) {
        // SYNC: Relaxed: see the loop above.
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
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
    fn idle_spinner_stops_on_drop() {
        let allowed = allowed_cpus().unwrap();
        let spinner = IdleSpinner::start(allowed[0], &allowed).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        drop(spinner); // joins: the test hangs here if the stop flag is ignored
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
