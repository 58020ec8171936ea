//! Two network namespaces joined by a veth pair, deleted on drop.
//!
//! ```text
//!  netns aeth-xdpb-<pid>-a               netns aeth-xdpb-<pid>-b
//!  xb-a 10.252.<k>.1/30  <── veth ──>  xb-b 10.252.<k>.2/30   (k = pid % 250)
//! ```
//!
//! Deleting a namespace deletes its veth end, which deletes the pair, and every
//! nftables table inside it, so the guard's drop cleans up on every path.

use std::fs::File;
use std::net::Ipv4Addr;
use std::process::Command;
use thiserror::Error;

/// The sender's end of the veth pair (in namespace A).
pub const VETH_A: &str = "xb-a";
/// The receiver's end (in namespace B), where XDP and nftables drop.
pub const VETH_B: &str = "xb-b";

/// Errors creating or entering the namespaces.
#[derive(Debug, Error)]
pub enum NetnsError {
    /// `ip` could not be run at all.
    #[error("cannot run `ip {args}`: {source}; install iproute2")]
    Spawn {
        args: String,
        source: std::io::Error,
    },
    /// `ip` ran and failed.
    #[error("`ip {args}` failed: {stderr}")]
    Failed { args: String, stderr: String },
    /// A thread could not join a namespace.
    #[error("cannot enter network namespace {ns}: {detail}")]
    Enter { ns: String, detail: String },
    /// The MAC address of a veth end could not be read.
    #[error("cannot read the MAC address of {dev} in {ns}: {detail}")]
    Mac {
        ns: String,
        dev: String,
        detail: String,
    },
}

/// Runs `ip args`, returning its stdout.
///
/// # Errors
/// [`NetnsError`] when `ip` is missing or fails.
pub fn ip(args: &[&str]) -> Result<String, NetnsError> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|source| NetnsError::Spawn {
            args: args.join(" "),
            source,
        })?;
    if !output.status.success() {
        return Err(NetnsError::Failed {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The namespace pair (see the module docs).
#[derive(Debug)]
pub struct NetnsPair {
    pub a: String,
    pub b: String,
    pub addr_a: Ipv4Addr,
    pub addr_b: Ipv4Addr,
    pub mac_a: [u8; 6],
    pub mac_b: [u8; 6],
}

impl NetnsPair {
    /// Creates the namespaces and the veth pair, addresses them and brings
    /// the links (and both loopbacks) up.
    ///
    /// # Errors
    /// [`NetnsError`] from `ip`; whatever was created is deleted again.
    pub fn new() -> Result<Self, NetnsError> {
        let pid = std::process::id();
        let k = u8::try_from(pid % 250).unwrap_or(0); // < 250 by construction
        let mut pair = Self {
            a: format!("aeth-xdpb-{pid}-a"),
            b: format!("aeth-xdpb-{pid}-b"),
            addr_a: Ipv4Addr::new(10, 252, k, 1),
            addr_b: Ipv4Addr::new(10, 252, k, 2),
            mac_a: [0; 6],
            mac_b: [0; 6],
        };
        ip(&["netns", "add", &pair.a])?;
        let mut guard = PartialPair(vec![pair.a.clone()]);
        ip(&["netns", "add", &pair.b])?;
        guard.0.push(pair.b.clone());
        ip(&[
            "link", "add", VETH_A, "netns", &pair.a, "type", "veth", "peer", "name", VETH_B,
            "netns", &pair.b,
        ])?;
        for (ns, dev, addr) in [
            (&pair.a, VETH_A, pair.addr_a),
            (&pair.b, VETH_B, pair.addr_b),
        ] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/30"), "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        pair.mac_a = mac_of(&pair.a, VETH_A)?;
        pair.mac_b = mac_of(&pair.b, VETH_B)?;
        guard.0.clear(); // from here on `pair`'s Drop deletes them
        Ok(pair)
    }
}

/// Deletes namespaces created so far if [`NetnsPair::new`] fails midway.
struct PartialPair(Vec<String>);

impl Drop for PartialPair {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("xdp bench: cleaning up namespace {ns}: {e}");
            }
        }
    }
}

/// Parses `ip -br link` output's MAC (`xb-b@if2 UP 02:..:.. <...>`).
fn mac_of(ns: &str, dev: &str) -> Result<[u8; 6], NetnsError> {
    let err = |detail: String| NetnsError::Mac {
        ns: ns.to_owned(),
        dev: dev.to_owned(),
        detail,
    };
    let text = ip(&["-n", ns, "-br", "link", "show", "dev", dev])?;
    let field = text
        .split_whitespace()
        .nth(2)
        .ok_or_else(|| err(format!("unexpected `ip -br link` output {text:?}")))?;
    parse_mac(field).ok_or_else(|| err(format!("not a MAC address: {field:?}")))
}

/// `aa:bb:cc:dd:ee:ff` → bytes.
#[must_use]
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Moves the calling thread into namespace `ns` (threads only: the process's
/// other threads stay where they are).
///
/// # Errors
/// [`NetnsError::Enter`] when the namespace file cannot be opened or joined.
pub fn enter(ns: &str) -> Result<(), NetnsError> {
    let path = format!("/run/netns/{ns}");
    let err = |detail: String| NetnsError::Enter {
        ns: ns.to_owned(),
        detail,
    };
    let file = File::open(&path).map_err(|e| err(format!("open {path}: {e}")))?;
    nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| err(format!("setns: {e}")))
}

/// Runs `f` on a fresh thread inside namespace `ns` and returns its result.
///
/// # Errors
/// [`NetnsError::Enter`] when the thread cannot join `ns` or panicked.
pub fn in_ns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, NetnsError> {
    let name = ns.to_owned();
    std::thread::spawn(move || enter(&name).map(|()| f()))
        .join()
        .unwrap_or_else(|_| {
            Err(NetnsError::Enter {
                ns: ns.to_owned(),
                detail: "the thread panicked".to_owned(),
            })
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design
mod tests {
    use super::*;

    #[test]
    fn macs_parse_and_reject_garbage() {
        assert_eq!(
            parse_mac("02:00:0a:ff:10:01"),
            Some([2, 0, 0x0a, 0xff, 0x10, 1])
        );
        assert_eq!(parse_mac("02:00:0a:ff:10"), None);
        assert_eq!(parse_mac("02:00:0a:ff:10:01:02"), None);
        assert_eq!(parse_mac("zz:00:0a:ff:10:01"), None);
    }
}
