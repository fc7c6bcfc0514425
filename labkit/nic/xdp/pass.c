/* pass: hand every frame on to the kernel's stack, unchanged.
 *
 * A veth can take frames that an XDP program redirects into it (ndo_xdp_xmit)
 * only when its peer runs NAPI, and a veth's peer runs NAPI when it has an XDP
 * program (or GRO on). labkit's XDP data plane redirects into lk-d1, so its
 * peer, the generator's lk-g1, gets this program: without it every redirect
 * into lk-d1 fails (measured on Linux 6.18: lk-d0's rx_dropped counts them).
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("xdp")
int pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char _license[] SEC("license") = "GPL";
