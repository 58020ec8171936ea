//! aetherd's XDP port policy: the `bpf` crate's [`bpf::XdpPolicy`] attached
//! to one interface, kept in step with the deployed functions, and its
//! counters exported on the Prometheus endpoint.
//!
//! # Settings
//!
//! `aetherctl up --xdp IFACE` (aetherd `--xdp IFACE`) or `orchestrator.xdp`
//! turn it on. `--xdp` names the interface and wins over
//! `orchestrator.xdp.interface`; mode, strict and the allow list come from
//! `orchestrator.xdp` when present, otherwise `auto`, **not strict** and
//! `[22]` (so `--xdp` alone counts traffic and drops only disabled
//! functions' ports; set `orchestrator.xdp.strict: true` to drop unknown
//! ports).
//!
//! # Ports
//!
//! ```text
//! port                          ports map entry              metrics `function` label
//! ----------------------------  ---------------------------  ------------------------
//! a deployed function's port    { slot = index, ENABLED }    the function id
//! orchestrator.xdp.allow_ports  { NO_FUNCTION, ALLOW }       "(allowed)"
//! 0: unknown ports, malformed   (none; strict-mode drops)    "(none)"
//! ```
//!
//! The slot is the function's index among the deployed functions. A
//! function's port takes precedence over the allow list; when the function
//! goes, an allow-listed port is allowed again, any other port is removed
//! (with its counters).
//!
//! # Threads
//!
//! The policy sits behind a mutex shared by the control loop (which updates
//! it on deploy and undeploy) and the metrics thread (which reads the
//! counters at scrape time through a weak reference). The executors never
//! touch it: the request path pays nothing for it.
//!
//! # Lifetime
//!
//! The attachment is a BPF link owned by this process: dropping
//! [`XdpPortPolicy`] (at shutdown) detaches the program, and so does the
//! kernel if aetherd dies, even by SIGKILL.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use bpf::{BpfError, PortStats, XdpAttachMode, XdpPolicy};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;

/// Where and how to attach, resolved from `--xdp` and `orchestrator.xdp`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XdpSettings {
    pub interface: String,
    pub mode: XdpAttachMode,
    pub strict: bool,
    pub allow_ports: Vec<u16>,
}

impl XdpSettings {
    /// The settings for `--xdp` (`cli_interface`) and `orchestrator.xdp`
    /// (`config`); `None` when neither asks for XDP. See the module docs.
    pub fn resolve(cli_interface: Option<&str>, config: Option<&config::Xdp>) -> Option<Self> {
        let interface = cli_interface.or(config.map(|x| x.interface.as_str()))?;
        let defaults = config::schema::orchestrator::XDP_ALLOW_PORTS;
        Some(XdpSettings {
            interface: interface.to_string(),
            mode: config.map_or(XdpAttachMode::Auto, |x| match x.mode {
                config::XdpMode::Auto => XdpAttachMode::Auto,
                config::XdpMode::Native => XdpAttachMode::Native,
                config::XdpMode::Generic => XdpAttachMode::Generic,
            }),
            strict: config.is_some_and(|x| x.strict),
            allow_ports: config.map_or_else(|| defaults.to_vec(), |x| x.allow_ports.clone()),
        })
    }
}

/// Errors of the XDP port policy.
#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    /// Loading or attaching failed at start-up.
    #[error("cannot attach the XDP program to {interface} ({mode} mode): {source}{hint}")]
    Attach {
        interface: String,
        mode: XdpAttachMode,
        /// A next step for the operator ("run as root"), or empty.
        hint: &'static str,
        #[source]
        source: Box<BpfError>,
    },
    /// A map update failed (a port could not be set, allowed or removed).
    #[error("XDP on {interface}: cannot {action} port {port}: {source}")]
    Port {
        interface: String,
        action: &'static str,
        port: u16,
        #[source]
        source: Box<BpfError>,
    },
}

/// The policy and what aetherd knows about its ports.
#[derive(Debug)]
struct Inner {
    policy: XdpPolicy,
    interface: String,
    allow_ports: Vec<u16>,
    /// Deployed function ports: port → function id.
    functions: BTreeMap<u16, String>,
}

/// The attached XDP policy; dropping it detaches the program.
#[derive(Debug)]
pub struct XdpPortPolicy {
    inner: Arc<Mutex<Inner>>,
    mode: XdpAttachMode,
}

impl XdpPortPolicy {
    /// Load the program, attach it to `settings.interface` (resolved in the
    /// calling thread's network namespace), set strict mode and allow-list
    /// `settings.allow_ports`. No function port is known yet: call
    /// [`XdpPortPolicy::sync`] once functions are deployed.
    pub fn attach(settings: &XdpSettings) -> Result<Self, XdpError> {
        let attach_error = |source: BpfError| XdpError::Attach {
            interface: settings.interface.clone(),
            mode: settings.mode,
            hint: if source.is_permission_denied() {
                " (run aetherd as root, or with CAP_BPF and CAP_NET_ADMIN)"
            } else {
                ""
            },
            source: Box::new(source),
        };
        let mut policy = XdpPolicy::load().map_err(attach_error)?;
        // Strict mode and the allow list go in before the program sees its
        // first packet, so SSH is never dropped, not even for a moment.
        policy.set_strict(settings.strict).map_err(attach_error)?;
        for &port in &settings.allow_ports {
            policy.allow_port(port).map_err(attach_error)?;
        }
        let mode = policy
            .attach(&settings.interface, settings.mode)
            .map_err(attach_error)?;
        Ok(XdpPortPolicy {
            inner: Arc::new(Mutex::new(Inner {
                policy,
                interface: settings.interface.clone(),
                allow_ports: settings.allow_ports.clone(),
                functions: BTreeMap::new(),
            })),
            mode,
        })
    }

    /// The mode that worked (never `Auto`).
    pub fn mode(&self) -> XdpAttachMode {
        self.mode
    }

    /// Make the ports map match `functions` (the deployed ones, in order):
    /// each trigger port enabled with its index as slot; ports of functions
    /// no longer there removed, or allowed again if allow-listed. Every
    /// update is attempted; the first error is returned.
    pub fn sync(&self, functions: &[config::Function]) -> Result<(), XdpError> {
        let mut guard = lock(&self.inner);
        let inner = &mut *guard;
        let mut first_error = None;
        let mut record = |result: Result<(), XdpError>| {
            if let Err(e) = result {
                first_error.get_or_insert(e);
            }
        };
        let mut wanted = BTreeMap::new();
        for (index, f) in functions.iter().enumerate() {
            // The index fits: the ports map holds at most 4096 entries, and
            // NO_FUNCTION (u32::MAX) would only mislabel, never misroute.
            let slot = u32::try_from(index).unwrap_or(bpf::abi::NO_FUNCTION);
            record(inner.port_op("enable", f.trigger_port, |p| {
                p.set_port(f.trigger_port, slot, true)
            }));
            wanted.insert(f.trigger_port, f.id.clone());
        }
        let gone: Vec<u16> = inner
            .functions
            .keys()
            .filter(|port| !wanted.contains_key(port))
            .copied()
            .collect();
        for port in gone {
            record(if inner.allow_ports.contains(&port) {
                inner.port_op("allow", port, |p| p.allow_port(port))
            } else {
                inner.port_op("remove", port, |p| p.remove_port(port))
            });
        }
        inner.functions = wanted;
        first_error.map_or(Ok(()), Err)
    }

    /// The counters per port with their `function` label (see the module
    /// docs), summed over CPUs.
    pub fn stats(&self) -> Result<Vec<PortCounters>, BpfError> {
        lock(&self.inner).counters()
    }

    /// A Prometheus collector of the counters, read at scrape time; it holds
    /// a weak reference, so it neither delays nor prevents the detach.
    pub fn collector(&self) -> XdpCollector {
        XdpCollector {
            inner: Arc::downgrade(&self.inner),
        }
    }
}

impl Drop for XdpPortPolicy {
    fn drop(&mut self) {
        tracing::info!("XDP detached from {}", lock(&self.inner).interface);
    }
}

impl Inner {
    fn port_op(
        &mut self,
        action: &'static str,
        port: u16,
        op: impl FnOnce(&mut XdpPolicy) -> Result<(), BpfError>,
    ) -> Result<(), XdpError> {
        op(&mut self.policy).map_err(|source| XdpError::Port {
            interface: self.interface.clone(),
            action,
            port,
            source: Box::new(source),
        })
    }

    fn counters(&self) -> Result<Vec<PortCounters>, BpfError> {
        let stats = self.policy.stats()?;
        Ok(stats
            .into_iter()
            .map(|(port, stats)| PortCounters {
                port,
                function: match self.functions.get(&port) {
                    Some(id) => id.clone(),
                    None if self.allow_ports.contains(&port) => ALLOWED_LABEL.to_string(),
                    None => NO_FUNCTION_LABEL.to_string(),
                },
                stats,
            })
            .collect())
    }
}

/// `function` label of allow-listed ports.
pub const ALLOWED_LABEL: &str = "(allowed)";
/// `function` label of port 0 (strict-mode drops to unknown ports and
/// malformed frames).
pub const NO_FUNCTION_LABEL: &str = "(none)";

/// One port's counters and labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortCounters {
    pub port: u16,
    pub function: String,
    pub stats: PortStats,
}

fn lock(inner: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    // A panic while holding the lock leaves the maps as the kernel has them,
    // which is a valid state: keep going.
    inner.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One counter family: name (before the registry's `aether_` prefix and the
/// `_total` suffix), help, and the field it reads.
type Family = (&'static str, &'static str, fn(&PortStats) -> u64);

/// Exports `aether_xdp_packets_total`, `aether_xdp_bytes_total` and
/// `aether_xdp_drops_total`, labelled `port` and `function`.
#[derive(Debug)]
pub struct XdpCollector {
    inner: Weak<Mutex<Inner>>,
}

impl Collector for XdpCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(inner) = self.inner.upgrade() else {
            return Ok(());
        };
        let counters = match lock(&inner).counters() {
            Ok(counters) => counters,
            Err(e) => {
                // A failed read leaves the families out of this scrape rather
                // than failing the whole endpoint.
                tracing::warn!("XDP counters unreadable: {e}");
                return Ok(());
            }
        };
        let families: [Family; 3] = [
            (
                "xdp_packets",
                "TCP/UDP packets seen by the XDP program, by destination port (0: unknown ports and malformed frames dropped in strict mode)",
                |s| s.packets,
            ),
            (
                "xdp_bytes",
                "bytes of those packets (whole frames, Ethernet header included)",
                |s| s.bytes,
            ),
            (
                "xdp_drops",
                "packets the XDP program dropped, by destination port",
                |s| s.drops,
            ),
        ];
        for (name, help, value) in families {
            let metric_type = ConstCounter::new(0u64).metric_type();
            let mut family = encoder.encode_descriptor(name, help, None, metric_type)?;
            for c in &counters {
                let labels = [
                    ("port", c.port.to_string()),
                    ("function", c.function.clone()),
                ];
                let sample = family.encode_family(&labels)?;
                ConstCounter::new(value(&c.stats)).encode(sample)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design
mod tests {
    use super::*;

    fn xdp(strict: bool, allow_ports: Vec<u16>) -> config::Xdp {
        config::Xdp {
            interface: "eth9".into(),
            mode: config::XdpMode::Generic,
            strict,
            allow_ports,
        }
    }

    #[test]
    fn settings_come_from_the_flag_and_the_config() {
        assert_eq!(XdpSettings::resolve(None, None), None);
        let flag_only = XdpSettings::resolve(Some("eth0"), None).unwrap();
        assert_eq!(
            flag_only,
            XdpSettings {
                interface: "eth0".into(),
                mode: XdpAttachMode::Auto,
                strict: false,
                allow_ports: vec![22],
            }
        );
        let cfg = xdp(true, vec![]);
        let config_only = XdpSettings::resolve(None, Some(&cfg)).unwrap();
        assert_eq!(config_only.interface, "eth9");
        assert_eq!(config_only.mode, XdpAttachMode::Generic);
        assert!(config_only.strict);
        assert!(config_only.allow_ports.is_empty());
        // The flag names the interface; the rest stays the config's.
        let both = XdpSettings::resolve(Some("eth0"), Some(&cfg)).unwrap();
        assert_eq!(both.interface, "eth0");
        assert!(both.strict);
        assert_eq!(both.mode, XdpAttachMode::Generic);
    }
}
