/* What labkit's XDP programs share: the verdict counters and the port they forward to.
 *
 * labkit.nic.xdp.build(source, reasons=graph.reasons) compiles each program with
 * one -DR_<reason>=<k> per drop reason of the labkit graph it stands for, in the
 * graph's order, and -DN_REASONS: counter k of `verdicts` is the graph's counter
 * k, so user space reads the kernel's drops by the same names
 * (labkit.run.xdprun). Counter N_REASONS counts the frames handed to
 * bpf_redirect_map(): the driver may still lose one after that (its own drop
 * counters say so).
 *
 * Per-CPU counters: each CPU increments its own copy, no atomics, no shared
 * cache line; user space sums the copies.
 */
#ifndef LABKIT_XDP_H
#define LABKIT_XDP_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#ifndef N_REASONS
#error "build with labkit.nic.xdp.build(source, reasons=...): the graph's drop reasons number the counters"
#endif
#define REDIRECTED N_REASONS

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, N_REASONS + 1);
	__type(key, __u32);
	__type(value, __u64);
} verdicts SEC(".maps");

/* Entry 0: the interface frames leave by (the DUT's other port), set by user space. */
struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} tx_port SEC(".maps");

static __always_inline void count(__u32 k)
{
	__u64 *n = bpf_map_lookup_elem(&verdicts, &k);

	if (n)
		*n += 1;
}

static __always_inline int drop(__u32 reason)
{
	count(reason);
	return XDP_DROP;
}

/* Out of the DUT's other port. A missing devmap entry gives XDP_ABORTED (flags 0),
 * which the driver counts as a drop, never a silent loss. */
static __always_inline int forward(void)
{
	count(REDIRECTED);
	return bpf_redirect_map(&tx_port, 0, 0);
}

#endif
