/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Types shared between the eBPF programs (compiled with clang -target bpf)
 * and the Rust loader (`bpf/src/abi.rs` mirrors them with #[repr(C)]).
 *
 * Every change here must be mirrored in abi.rs. The build script compiles a
 * host program that prints sizeof/offsetof of each struct; abi.rs asserts at
 * compile time that its mirrors have the same layout. The _Static_asserts
 * below pin the same numbers on the BPF side.
 */
#ifndef AETHER_BPF_H
#define AETHER_BPF_H

#include <linux/types.h>

/* port_policy.flags: the port belongs to a deployed function that is enabled. */
#define AETHER_PORT_ENABLED (1u << 0)
/* port_policy.flags: the port is allow-listed (e.g. SSH), not a function. */
#define AETHER_PORT_ALLOW (1u << 1)

/* Value of the `ports` map (key: __u16 destination port, host byte order). */
struct port_policy {
	__u32 function_slot; /* index of the function in aetherd's table */
	__u32 flags;         /* AETHER_PORT_* */
};

/* Value of the single entry of the `config` array. */
struct xdp_config {
	__u32 strict; /* 0: only count; 1: drop unknown and disabled ports */
};

/* Value of the `stats` per-CPU hash (key: __u16 destination port; 0 = other). */
struct port_stats {
	__u64 packets; /* TCP/UDP packets seen to this port (passed or dropped) */
	__u64 bytes;   /* their L2 frame length, Ethernet header included */
	__u64 drops;   /* of those, dropped by the policy */
};

/* Capacity of the maps (the Rust side reads the same constants). */
#define AETHER_MAX_PORTS 4096
/* Capacity of the reuseport program's CPU -> listener array. */
#define AETHER_MAX_CPUS 1024
/* Key of the stats bucket that counts drops to ports absent from `ports`. */
#define AETHER_OTHER_PORT 0

_Static_assert(sizeof(struct port_policy) == 8, "port_policy layout");
_Static_assert(sizeof(struct xdp_config) == 4, "xdp_config layout");
_Static_assert(sizeof(struct port_stats) == 24, "port_stats layout");

#endif /* AETHER_BPF_H */
