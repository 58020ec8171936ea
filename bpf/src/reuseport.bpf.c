// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
/*
 * sk_reuseport program: pick, in a SO_REUSEPORT group, the listener owned by
 * the CPU that is processing the incoming packet (the SYN for TCP), so the
 * executor pinned to that CPU accepts the connection and the flow stays on
 * one core from softirq to handler.
 *
 * Map `reuseport_cpus` (REUSEPORT_SOCKARRAY, key u32 CPU id, value: the
 * listener, written from user space as a socket fd, read back as its cookie).
 * When the slot of the current CPU is empty (or holds a socket of another
 * group), the program returns SK_PASS without a selection and the kernel
 * falls back to its own hash over the group.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "aether_bpf.h"

struct {
	__uint(type, BPF_MAP_TYPE_REUSEPORT_SOCKARRAY);
	__uint(max_entries, AETHER_MAX_CPUS);
	__type(key, __u32);
	__type(value, __u32);
} reuseport_cpus SEC(".maps");

SEC("sk_reuseport")
int aether_reuseport(struct sk_reuseport_md *md)
{
	__u32 cpu = bpf_get_smp_processor_id();
	/* Error (e.g. -ENOENT for an empty slot): no selection, kernel hash. */
	bpf_sk_select_reuseport(md, &reuseport_cpus, &cpu, 0);
	return SK_PASS;
}

/* See xdp_policy.bpf.c: "GPL" declares GPL compatibility to the kernel. */
char _license[] SEC("license") = "GPL";
