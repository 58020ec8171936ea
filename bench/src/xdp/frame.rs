//! The UDP/IPv4 Ethernet frames the flood sends and `BPF_PROG_TEST_RUN` runs.
//!
//! ```text
//! offset  size  field
//!      0     6  destination MAC
//!      6     6  source MAC
//!     12     2  ethertype 0x0800
//!     14    20  IPv4 header (IHL 5, TTL 64, proto 17, header checksum set)
//!     34     8  UDP header (source port 40000, checksum 0 = none)
//!     42     n  payload (zeros)
//! ```

use std::net::Ipv4Addr;

/// Where a frame goes.
#[derive(Debug, Clone, Copy)]
pub struct Udp4Frame {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub dport: u16,
    pub payload_len: u16,
}

/// Source port of every frame.
pub const SOURCE_PORT: u16 = 40000;

impl Udp4Frame {
    /// The frame's bytes (see the module docs).
    #[must_use]
    pub fn bytes(&self) -> Vec<u8> {
        let udp_len = 8 + self.payload_len;
        let total = 20 + udp_len;
        let mut out = Vec::with_capacity(14 + usize::from(total));
        out.extend_from_slice(&self.dst_mac);
        out.extend_from_slice(&self.src_mac);
        out.extend_from_slice(&0x0800u16.to_be_bytes());
        let ip_start = out.len();
        out.extend_from_slice(&[0x45, 0]);
        out.extend_from_slice(&total.to_be_bytes());
        out.extend_from_slice(&[0, 1, 0x40, 0, 64, 17, 0, 0]); // id 1, DF, TTL, UDP, csum
        out.extend_from_slice(&self.src.octets());
        out.extend_from_slice(&self.dst.octets());
        let csum = ipv4_checksum(&out[ip_start..]);
        out[ip_start + 10..ip_start + 12].copy_from_slice(&csum.to_be_bytes());
        out.extend_from_slice(&SOURCE_PORT.to_be_bytes());
        out.extend_from_slice(&self.dport.to_be_bytes());
        out.extend_from_slice(&udp_len.to_be_bytes());
        out.extend_from_slice(&[0, 0]);
        out.resize(out.len() + usize::from(self.payload_len), 0);
        out
    }
}

/// The Internet checksum of `header` (its checksum field zero).
#[must_use]
pub fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    // The loop above leaves sum <= 0xffff.
    !u16::try_from(sum).unwrap_or(0xffff)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design
mod tests {
    use super::*;

    #[test]
    fn frame_layout_and_checksum() {
        let f = Udp4Frame {
            dst_mac: [2, 0, 0, 0, 0, 2],
            src_mac: [2, 0, 0, 0, 0, 1],
            src: Ipv4Addr::new(10, 252, 0, 1),
            dst: Ipv4Addr::new(10, 252, 0, 2),
            dport: 9999,
            payload_len: 18,
        }
        .bytes();
        assert_eq!(f.len(), 14 + 20 + 8 + 18);
        assert_eq!(&f[12..14], &[0x08, 0x00]);
        assert_eq!(u16::from_be_bytes([f[16], f[17]]), 46);
        assert_eq!(u16::from_be_bytes([f[36], f[37]]), 9999);
        // A header with its checksum in place sums to 0xffff (checksum 0).
        assert_eq!(ipv4_checksum(&f[14..34]), 0);
    }

    #[test]
    fn checksum_matches_a_known_header() {
        // RFC 1071 style example: 4500 0073 0000 4000 4011 .... c0a8 0001 c0a8 00c7 → b861
        let h = [
            0x45, 0, 0, 0x73, 0, 0, 0x40, 0, 0x40, 0x11, 0, 0, 0xc0, 0xa8, 0, 1, 0xc0, 0xa8, 0,
            0xc7,
        ];
        assert_eq!(ipv4_checksum(&h), 0xb861);
    }
}
