/* count_drop: count every frame that reaches the interface, then drop it.
 *
 * The smallest XDP program that does something measurable: one per-CPU
 * counter (no two CPUs write the same line, no atomics), summed by
 * user space (labkit.nic.xdp.Program.counters). XDP_DROP frees the frame in
 * the driver, before the kernel allocates an sk_buff for it.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} frames SEC(".maps");

SEC("xdp")
int count_drop(struct xdp_md *ctx)
{
	__u32 key = 0;
	__u64 *n = bpf_map_lookup_elem(&frames, &key);

	if (n)
		*n += 1;
	return XDP_DROP;
}

char _license[] SEC("license") = "GPL";
