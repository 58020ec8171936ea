//! `#[repr(C)]` mirrors of the structs in `aether_bpf.h`, shared with the eBPF
//! programs through the maps.
//!
//! The build script compiles `abi_probe.c` against the same header and
//! generates [`c_layout`]: the sizes, alignments and field offsets the C
//! compiler chose. The `const` assertions below compare them with the Rust
//! layout, so a drift on either side fails the build (and the `layout_*`
//! tests state the same for readers of the test output).
//!
//! ```text
//! ports  key u16 (destination port, host order)
//!        value port_policy   0           4           8
//!                            +-----------+-----------+
//!                            | fn_slot   | flags     |   flags: bit0 ENABLED, bit1 ALLOW
//!                            +-----------+-----------+
//! config key u32 = 0
//!        value xdp_config    0           4
//!                            | strict    |
//! stats  key u16 (destination port; 0 = "other": drops to unknown ports)
//!        value port_stats (per CPU)
//!                            0           8           16          24
//!                            | packets   | bytes     | drops     |
//! ```

use std::mem::{align_of, offset_of, size_of};

/// Layout of the C structs, as printed by the host probe at build time.
#[allow(missing_docs, non_upper_case_globals)]
pub mod c_layout {
    include!(concat!(env!("OUT_DIR"), "/abi_layout.rs"));
}

/// `port_policy.flags` bit: the port belongs to a deployed, enabled function.
pub const PORT_ENABLED: u32 = 1 << 0;
/// `port_policy.flags` bit: the port is allow-listed (not a function).
pub const PORT_ALLOW: u32 = 1 << 1;
/// Capacity of the `ports` map.
pub const MAX_PORTS: u32 = 4096;
/// Capacity of the reuseport program's CPU → listener array (CPU ids above it fall back to the kernel's hash).
pub const MAX_CPUS: u32 = 1024;
/// Key of the `stats` bucket counting drops to ports absent from `ports`.
pub const OTHER_PORT: u16 = 0;
/// `function_slot` stored for allow-listed ports, which have no function.
pub const NO_FUNCTION: u32 = u32::MAX;

/// Value of the `ports` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortPolicy {
    /// Index of the function in aetherd's table ([`NO_FUNCTION`] for allow-listed ports).
    pub function_slot: u32,
    /// [`PORT_ENABLED`] and/or [`PORT_ALLOW`].
    pub flags: u32,
}

/// Value of the single entry of the `config` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XdpConfig {
    /// 1: drop TCP/UDP to ports that are neither functions nor allow-listed.
    pub strict: u32,
}

/// Value of the per-CPU `stats` map (and the sum over CPUs returned by the loader).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortStats {
    /// TCP/UDP packets to this port, passed or dropped.
    pub packets: u64,
    /// Their L2 length (Ethernet header included).
    pub bytes: u64,
    /// Of those, the ones the policy dropped.
    pub drops: u64,
}

// SAFETY: all three are `#[repr(C)]`, made of plain integers, with no padding
// (checked against the C layout below), so any bit pattern is a valid value.
unsafe impl aya::Pod for PortPolicy {}
// SAFETY: as above.
unsafe impl aya::Pod for XdpConfig {}
// SAFETY: as above.
unsafe impl aya::Pod for PortStats {}

macro_rules! assert_layout {
    ($rust:ty, $size:ident, $align:ident $(, $field:ident => $off:ident)*) => {
        const _: () = assert!(size_of::<$rust>() == c_layout::$size);
        const _: () = assert!(align_of::<$rust>() == c_layout::$align);
        $(const _: () = assert!(offset_of!($rust, $field) == c_layout::$off);)*
    };
}

assert_layout!(PortPolicy, SIZEOF_port_policy, ALIGNOF_port_policy,
    function_slot => OFFSETOF_port_policy_function_slot, flags => OFFSETOF_port_policy_flags);
assert_layout!(XdpConfig, SIZEOF_xdp_config, ALIGNOF_xdp_config,
    strict => OFFSETOF_xdp_config_strict);
assert_layout!(PortStats, SIZEOF_port_stats, ALIGNOF_port_stats,
    packets => OFFSETOF_port_stats_packets, bytes => OFFSETOF_port_stats_bytes,
    drops => OFFSETOF_port_stats_drops);
const _: () = assert!(PORT_ENABLED as u64 == c_layout::AETHER_PORT_ENABLED);
const _: () = assert!(PORT_ALLOW as u64 == c_layout::AETHER_PORT_ALLOW);
const _: () = assert!(MAX_PORTS as u64 == c_layout::AETHER_MAX_PORTS);
const _: () = assert!(OTHER_PORT as u64 == c_layout::AETHER_OTHER_PORT);
const _: () = assert!(MAX_CPUS as u64 == c_layout::AETHER_MAX_CPUS);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_c_header() {
        // The same facts are const-asserted above; this prints them.
        let pairs = [
            (
                "port_policy",
                size_of::<PortPolicy>(),
                c_layout::SIZEOF_port_policy,
            ),
            (
                "xdp_config",
                size_of::<XdpConfig>(),
                c_layout::SIZEOF_xdp_config,
            ),
            (
                "port_stats",
                size_of::<PortStats>(),
                c_layout::SIZEOF_port_stats,
            ),
        ];
        for (name, rust, c) in pairs {
            assert_eq!(rust, c, "sizeof {name}");
        }
        assert_eq!(
            offset_of!(PortStats, drops),
            c_layout::OFFSETOF_port_stats_drops
        );
        assert_eq!(c_layout::SIZEOF_port_stats, 24);
    }
}
