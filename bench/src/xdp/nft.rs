//! The nftables baseline: a rule in the receiver namespace that counts and
//! drops UDP to the flood's port, at the earliest hook available.
//!
//! ```text
//! preferred   table netdev aeth_xdp_bench
//!               chain ingress { type filter hook ingress device <veth> priority -500; }
//!                 udp dport <port> counter drop
//! fallback    table inet aeth_xdp_bench
//!               chain prerouting { type filter hook prerouting priority -300; }
//!                 udp dport <port> counter drop
//! ```
//!
//! The table is deleted on drop (and with the namespace in any case).

use std::io::Write;
use std::process::{Command, Stdio};
use thiserror::Error;

/// Name of the table the benchmark creates.
pub const TABLE: &str = "aeth_xdp_bench";

/// Errors driving `nft`.
#[derive(Debug, Error)]
pub enum NftError {
    #[error("cannot run `ip netns exec {ns} nft {args}`: {source}; install nftables")]
    Spawn {
        ns: String,
        args: String,
        source: std::io::Error,
    },
    #[error("`nft {args}` in {ns} failed: {stderr}")]
    Failed {
        ns: String,
        args: String,
        stderr: String,
    },
    #[error("no counter for the drop rule in `nft -j list table` output: {0}")]
    NoCounter(String),
}

/// Which hook the drop rule sits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// `netdev` family, ingress hook on the device (before the IP stack).
    NetdevIngress,
    /// `inet` family, prerouting at raw priority (inside the IP stack).
    InetPrerouting,
}

impl Hook {
    /// How the JSON names it.
    #[must_use]
    pub fn describe(self) -> &'static str {
        match self {
            Self::NetdevIngress => "netdev ingress (device hook, priority -500)",
            Self::InetPrerouting => "inet prerouting (priority -300)",
        }
    }

    fn family(self) -> &'static str {
        match self {
            Self::NetdevIngress => "netdev",
            Self::InetPrerouting => "inet",
        }
    }
}

fn nft(ns: &str, args: &[&str]) -> Result<String, NftError> {
    nft_with_input(ns, args, None)
}

/// Runs `nft args` in `ns`, feeding `input` (a ruleset for `-f /dev/stdin`).
fn nft_with_input(ns: &str, args: &[&str], input: Option<&str>) -> Result<String, NftError> {
    let spawn_error = |source| NftError::Spawn {
        ns: ns.to_owned(),
        args: args.join(" "),
        source,
    };
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_error)?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(text.as_bytes()).map_err(spawn_error)?;
    }
    let output = child.wait_with_output().map_err(spawn_error)?;
    if !output.status.success() {
        return Err(NftError::Failed {
            ns: ns.to_owned(),
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The drop rule, installed; deleted on drop.
#[derive(Debug)]
pub struct NftDrop {
    ns: String,
    hook: Hook,
}

impl NftDrop {
    /// Installs the rule in namespace `ns` for UDP to `port` arriving on
    /// `dev`: netdev ingress, else inet prerouting.
    ///
    /// # Errors
    /// [`NftError`] when neither can be installed (both errors in the message).
    pub fn install(ns: &str, dev: &str, port: u16) -> Result<Self, NftError> {
        let netdev = format!(
            "table netdev {TABLE} {{\n chain ingress {{\n  type filter hook ingress device {dev} priority -500;\n  udp dport {port} counter drop\n }}\n}}\n"
        );
        let first = match nft_with_input(ns, &["-f", "/dev/stdin"], Some(&netdev)) {
            Ok(_) => {
                return Ok(Self {
                    ns: ns.to_owned(),
                    hook: Hook::NetdevIngress,
                })
            }
            Err(e) => e,
        };
        eprintln!("xdp bench: netdev ingress unavailable ({first}); using inet prerouting");
        let inet = format!(
            "table inet {TABLE} {{\n chain prerouting {{\n  type filter hook prerouting priority -300;\n  udp dport {port} counter drop\n }}\n}}\n"
        );
        nft_with_input(ns, &["-f", "/dev/stdin"], Some(&inet)).map_err(|second| {
            NftError::Failed {
                ns: ns.to_owned(),
                args: "netdev and inet tables".to_owned(),
                stderr: format!("netdev: {first}; inet: {second}"),
            }
        })?;
        Ok(Self {
            ns: ns.to_owned(),
            hook: Hook::InetPrerouting,
        })
    }

    /// The hook the rule is on.
    #[must_use]
    pub fn hook(&self) -> Hook {
        self.hook
    }

    /// Packets the rule has counted (and dropped).
    ///
    /// # Errors
    /// [`NftError`] when `nft` fails or its JSON has no counter.
    pub fn packets(&self) -> Result<u64, NftError> {
        let text = nft(
            &self.ns,
            &["-j", "list", "table", self.hook.family(), TABLE],
        )?;
        counter_packets(&text).ok_or(NftError::NoCounter(text))
    }
}

impl Drop for NftDrop {
    fn drop(&mut self) {
        if let Err(e) = nft(&self.ns, &["delete", "table", self.hook.family(), TABLE]) {
            eprintln!("xdp bench: deleting nft table {TABLE} in {}: {e}", self.ns);
        }
    }
}

/// The first rule counter's packets in `nft -j` output:
/// `{"nftables": [..., {"rule": {"expr": [..., {"counter": {"packets": N, "bytes": M}}, ...]}}]}`.
#[must_use]
pub fn counter_packets(json: &str) -> Option<u64> {
    let doc: serde_json::Value = serde_json::from_str(json).ok()?;
    doc["nftables"].as_array()?.iter().find_map(|item| {
        item["rule"]["expr"]
            .as_array()?
            .iter()
            .find_map(|e| e["counter"]["packets"].as_u64())
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design
mod tests {
    use super::*;

    #[test]
    fn counter_is_read_from_nft_json() {
        let text = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
          {"table": {"family": "netdev", "name": "t", "handle": 1}},
          {"chain": {"family": "netdev", "table": "t", "name": "ingress"}},
          {"rule": {"family": "netdev", "table": "t", "chain": "ingress", "handle": 2,
            "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": 9}},
                     {"counter": {"packets": 1234, "bytes": 99}}, {"drop": null}]}}]}"#;
        assert_eq!(counter_packets(text), Some(1234));
        assert_eq!(counter_packets(r#"{"nftables": []}"#), None);
        assert_eq!(counter_packets("not json"), None);
    }
}
