// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
/*
 * Test fixture: an XDP program the verifier must reject (it reads the packet
 * without checking data_end), to check that the load error carries the
 * verifier's log. Never loaded outside tests.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("xdp")
int aether_rejected(struct xdp_md *ctx)
{
	unsigned char *data = (unsigned char *)(long)ctx->data;
	return data[20] == 6 ? XDP_DROP : XDP_PASS; /* no bound check */
}

char _license[] SEC("license") = "GPL";
