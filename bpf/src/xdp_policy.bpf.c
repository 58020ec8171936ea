// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
/*
 * XDP port policy and per-port counters (see bpf/src/lib.rs for the map
 * layout and the parsing limits, documented for users of the crate).
 *
 * Parsing: Ethernet, up to two VLAN tags (802.1Q 0x8100 / 802.1ad 0x88a8),
 * IPv4 (IHL 5..15, options skipped; non-first fragments carry no L4 header and
 * pass), IPv6 (fixed header, then up to AETHER_MAX_IPV6_EXT hop-by-hop /
 * routing / destination-options / fragment headers; non-first fragments
 * pass), then TCP or UDP. Every read is preceded by a bound check against
 * data_end.
 *
 * Outcome of parsing:
 *   L4        TCP/UDP with a destination port -> policy below
 *   NOT_L4    not IP, or IP carrying another protocol (ICMP, ESP, ...) -> PASS
 *   MALFORMED claims IPv4/IPv6 (or a third VLAN tag) but cannot be parsed to
 *             a decision within the limits (truncated headers, IHL < 5, IPv6
 *             extension chain longer than the limit) -> DROP in strict mode
 *             (a policy bypass otherwise), PASS when not strict
 *
 * Policy for L4 (port = destination port):
 *   port in `ports` with ALLOW            -> PASS
 *   port in `ports` with ENABLED          -> PASS
 *   port in `ports` with neither flag     -> DROP (disabled function), any mode
 *   port not in `ports`, strict           -> DROP (counted under port 0)
 *   port not in `ports`, not strict       -> PASS (not counted)
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "aether_bpf.h"

#define AETHER_MAX_VLAN 2
#define AETHER_MAX_IPV6_EXT 4

#define ETH_P_8021Q_ 0x8100
#define ETH_P_8021AD_ 0x88A8
#define IPV4_FRAG_OFFSET_MASK 0x1FFF
#define IPV6_FRAG_OFFSET_MASK 0xFFF8

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, AETHER_MAX_PORTS);
	__type(key, __u16);
	__type(value, struct port_policy);
} ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct xdp_config);
} config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, AETHER_MAX_PORTS + 1);
	__type(key, __u16);
	__type(value, struct port_stats);
} stats SEC(".maps");

struct vlan_hdr_ {
	__be16 tci;
	__be16 encap_proto;
};

struct ipv6_frag_hdr_ {
	__u8 nexthdr;
	__u8 reserved;
	__be16 frag_off;
	__be32 identification;
};

enum parse_result {
	PARSE_NOT_L4 = 0,
	PARSE_L4 = 1,
	PARSE_MALFORMED = 2,
};

static __always_inline enum parse_result l4_port(void *l4, void *data_end, __u8 proto,
						 __u16 *dport)
{
	if (proto == IPPROTO_TCP) {
		struct tcphdr *tcp = l4;
		if ((void *)(tcp + 1) > data_end)
			return PARSE_MALFORMED;
		*dport = bpf_ntohs(tcp->dest);
		return PARSE_L4;
	}
	if (proto == IPPROTO_UDP) {
		struct udphdr *udp = l4;
		if ((void *)(udp + 1) > data_end)
			return PARSE_MALFORMED;
		*dport = bpf_ntohs(udp->dest);
		return PARSE_L4;
	}
	return PARSE_NOT_L4;
}

static __always_inline enum parse_result parse_ipv4(void *l3, void *data_end, __u16 *dport)
{
	struct iphdr *ip = l3;
	if ((void *)(ip + 1) > data_end)
		return PARSE_MALFORMED;
	__u32 ihl = ip->ihl;
	if (ihl < 5)
		return PARSE_MALFORMED;
	/* ihl is a 4-bit field: the header is at most 60 bytes. */
	void *l4 = l3 + ihl * 4;
	if (l4 > data_end)
		return PARSE_MALFORMED;
	if (ip->frag_off & bpf_htons(IPV4_FRAG_OFFSET_MASK))
		return PARSE_NOT_L4; /* non-first fragment: no L4 header */
	return l4_port(l4, data_end, ip->protocol, dport);
}

static __always_inline int is_ipv6_ext(__u8 nexthdr)
{
	return nexthdr == IPPROTO_HOPOPTS || nexthdr == IPPROTO_ROUTING ||
	       nexthdr == IPPROTO_DSTOPTS || nexthdr == IPPROTO_FRAGMENT;
}

static __always_inline enum parse_result parse_ipv6(void *l3, void *data_end, __u16 *dport)
{
	struct ipv6hdr *ip6 = l3;
	if ((void *)(ip6 + 1) > data_end)
		return PARSE_MALFORMED;
	__u8 nexthdr = ip6->nexthdr;
	void *cursor = (void *)(ip6 + 1);

#pragma unroll
	for (int i = 0; i < AETHER_MAX_IPV6_EXT; i++) {
		if (!is_ipv6_ext(nexthdr))
			break;
		if (nexthdr != IPPROTO_FRAGMENT) {
			struct ipv6_opt_hdr *opt = cursor;
			if ((void *)(opt + 1) > data_end)
				return PARSE_MALFORMED;
			nexthdr = opt->nexthdr;
			/* hdrlen: 8-octet units after the first 8 octets (<= 2048 bytes). */
			cursor += ((__u32)opt->hdrlen + 1) * 8;
		} else {
			struct ipv6_frag_hdr_ *frag = cursor;
			if ((void *)(frag + 1) > data_end)
				return PARSE_MALFORMED;
			if (frag->frag_off & bpf_htons(IPV6_FRAG_OFFSET_MASK))
				return PARSE_NOT_L4; /* non-first fragment */
			nexthdr = frag->nexthdr;
			cursor += sizeof(*frag);
		}
	}
	if (is_ipv6_ext(nexthdr))
		return PARSE_MALFORMED; /* extension chain longer than the limit */
	if (cursor > data_end)
		return PARSE_MALFORMED;
	return l4_port(cursor, data_end, nexthdr, dport);
}

static __always_inline enum parse_result parse_packet(void *data, void *data_end, __u16 *dport)
{
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return PARSE_NOT_L4;
	__be16 proto = eth->h_proto;
	void *cursor = (void *)(eth + 1);

#pragma unroll
	for (int i = 0; i < AETHER_MAX_VLAN; i++) {
		if (proto != bpf_htons(ETH_P_8021Q_) && proto != bpf_htons(ETH_P_8021AD_))
			break;
		struct vlan_hdr_ *vlan = cursor;
		if ((void *)(vlan + 1) > data_end)
			return PARSE_NOT_L4;
		proto = vlan->encap_proto;
		cursor = (void *)(vlan + 1);
	}
	if (proto == bpf_htons(ETH_P_8021Q_) || proto == bpf_htons(ETH_P_8021AD_))
		return PARSE_MALFORMED; /* more VLAN tags than the limit */
	if (proto == bpf_htons(ETH_P_IP))
		return parse_ipv4(cursor, data_end, dport);
	if (proto == bpf_htons(ETH_P_IPV6))
		return parse_ipv6(cursor, data_end, dport);
	return PARSE_NOT_L4;
}

static __always_inline void count(__u16 port, __u64 bytes, int dropped)
{
	struct port_stats *s = bpf_map_lookup_elem(&stats, &port);
	if (!s) {
		struct port_stats zero = {};
		/* Fails only when the map is full: then the packet is not counted. */
		bpf_map_update_elem(&stats, &port, &zero, BPF_NOEXIST);
		s = bpf_map_lookup_elem(&stats, &port);
		if (!s)
			return;
	}
	/* Per-CPU value, XDP runs with migration disabled: plain increments. */
	s->packets += 1;
	s->bytes += bytes;
	if (dropped)
		s->drops += 1;
}

SEC("xdp")
int aether_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u64 bytes = data_end - data;
	__u32 zero = 0;
	struct xdp_config *cfg = bpf_map_lookup_elem(&config, &zero);
	int strict = cfg && cfg->strict;

	__u16 dport = 0;
	enum parse_result parsed = parse_packet(data, data_end, &dport);
	if (parsed == PARSE_NOT_L4)
		return XDP_PASS;
	if (parsed == PARSE_MALFORMED) {
		if (!strict)
			return XDP_PASS;
		count(AETHER_OTHER_PORT, bytes, 1);
		return XDP_DROP;
	}

	struct port_policy *policy = bpf_map_lookup_elem(&ports, &dport);
	if (policy) {
		int pass = policy->flags & (AETHER_PORT_ENABLED | AETHER_PORT_ALLOW);
		count(dport, bytes, !pass);
		return pass ? XDP_PASS : XDP_DROP;
	}
	if (!strict)
		return XDP_PASS;
	count(AETHER_OTHER_PORT, bytes, 1);
	return XDP_DROP;
}

/* The program is dual licensed; "GPL" tells the kernel it is GPL-compatible. */
char _license[] SEC("license") = "GPL";
