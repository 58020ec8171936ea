/* Host program run by build.rs: prints the layout of the structs in
 * aether_bpf.h as Rust constants, which abi.rs checks its mirrors against. */
#include <stddef.h>
#include <stdio.h>

#include "aether_bpf.h"

#define SIZE(t) printf("pub const SIZEOF_%s: usize = %zu;\n", #t, sizeof(struct t))
#define ALIGN(t) printf("pub const ALIGNOF_%s: usize = %zu;\n", #t, _Alignof(struct t))
#define OFF(t, f) printf("pub const OFFSETOF_%s_%s: usize = %zu;\n", #t, #f, offsetof(struct t, f))
#define CONST(n) printf("pub const %s: u64 = %llu;\n", #n, (unsigned long long)(n))

int main(void)
{
	SIZE(port_policy);
	ALIGN(port_policy);
	OFF(port_policy, function_slot);
	OFF(port_policy, flags);
	SIZE(xdp_config);
	ALIGN(xdp_config);
	OFF(xdp_config, strict);
	SIZE(port_stats);
	ALIGN(port_stats);
	OFF(port_stats, packets);
	OFF(port_stats, bytes);
	OFF(port_stats, drops);
	CONST(AETHER_PORT_ENABLED);
	CONST(AETHER_PORT_ALLOW);
	CONST(AETHER_MAX_PORTS);
	CONST(AETHER_OTHER_PORT);
	CONST(AETHER_MAX_CPUS);
	return 0;
}
