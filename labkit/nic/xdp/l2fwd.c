/* l2fwd: labkit's l2fwd graph (node l2-macswap) as an XDP program.
 *
 * Swap destination and source MAC, then send the frame out of the DUT's other
 * port. The verifier accepts a read of the frame only after a comparison with
 * data_end that proves it inside: the one check below is l2-macswap's
 * macswap_runt test.
 */
#include "labkit_xdp.h"

SEC("xdp")
int l2fwd(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u8 *eth = data, mac[6];

	if (data + 14 > data_end)
		return drop(R_macswap_runt);
	__builtin_memcpy(mac, eth, 6);
	__builtin_memcpy(eth, eth + 6, 6);
	__builtin_memcpy(eth + 6, mac, 6);
	return forward();
}

char _license[] SEC("license") = "GPL";
