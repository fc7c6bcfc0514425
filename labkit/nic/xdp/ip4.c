/* ip4: labkit's ip4 graph (eth-input, ip4-input, ip4-lookup, ip4-rewrite) as one
 * XDP program, check for check and drop reason for drop reason the same, so
 * that a frame gets the same verdict and leaves with the same bytes whichever
 * path it takes (tests/test_xdp_backend.py compares them frame by frame).
 *
 * - the FIB is an LPM trie (BPF_MAP_TYPE_LPM_TRIE) that labkit.run.xdprun fills
 *   with the routes of labkit's own DIR-24-8 table, in their order: the longest
 *   prefix wins, and of two equal ones the later, as in labkit.graph.fib;
 * - adjacencies: an array of (destination MAC, source MAC, resolved);
 * - every read of the frame comes after a comparison with data_end that the
 *   verifier can follow; without it the program is refused at load time.
 */
#include "labkit_xdp.h"
#include <bpf/bpf_endian.h>

#define ETH_LEN 14
#define IP4_MIN (ETH_LEN + 20)

struct route_key {
	__u32 prefixlen;
	__u8 addr[4];           /* network order, as in the header */
};

struct adjacency {
	__u8 mac[12];           /* destination MAC, then source MAC */
	__u32 resolved;
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 1);         /* set to the FIB's size before loading */
	__type(key, struct route_key);
	__type(value, __u32);           /* adjacency */
} routes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);         /* set to the number of adjacencies before loading */
	__type(key, __u32);
	__type(value, struct adjacency);
} adjacencies SEC(".maps");

static __always_inline __u32 fold16(__u32 s)
{
	s = (s & 0xFFFF) + (s >> 16);
	return (s & 0xFFFF) + (s >> 16);
}

SEC("xdp")
int ip4(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u8 *eth = data, *ip = data + ETH_LEN;
	struct route_key key = {.prefixlen = 32};
	struct adjacency *adj;
	__u32 hlen, total, s = 0, m, m2, hc, *a;

	/* eth-input */
	if (data + ETH_LEN > data_end)
		return drop(R_eth_runt);
	if (eth[12] != 0x08 || eth[13] != 0x00)
		return drop(R_unknown_ethertype);
	/* ip4-input: RFC 1812 5.2.2, in ip4_input_one's order */
	if (data + IP4_MIN > data_end)
		return drop(R_ip4_truncated);
	if ((ip[0] >> 4) != 4)
		return drop(R_ip4_bad_version);
	hlen = (ip[0] & 0xF) * 4;
	if (hlen < 20)
		return drop(R_ip4_bad_ihl);
	if ((void *)ip + hlen > data_end)
		return drop(R_ip4_truncated);
	total = ((__u32)ip[2] << 8) | ip[3];
	if (total < hlen || (void *)ip + total > data_end)
		return drop(R_ip4_bad_length);
	/* The checksum covers the header's words, options included: 10 to 30 of them.
	 * Unrolled, each word's offset is a constant and its bound check one the
	 * verifier can follow (a loop over a variable offset it cannot prove inside). */
#pragma clang loop unroll(full)
	for (int o = 0; o < 60; o += 2) {
		if (o < hlen) {
			if ((void *)ip + o + 2 > data_end)      /* (never: hlen bytes are there) */
				return drop(R_ip4_truncated);
			s += ((__u32)ip[o] << 8) | ip[o + 1];
		}
	}
	if (fold16(s) != 0xFFFF)
		return drop(R_ip4_bad_checksum);
	if (ip[8] <= 1)
		return drop(R_ttl_expired);
	/* ip4-lookup */
	__builtin_memcpy(key.addr, ip + 16, 4);
	a = bpf_map_lookup_elem(&routes, &key);
	if (!a)
		return drop(R_no_route);
	adj = bpf_map_lookup_elem(&adjacencies, a);
	if (!adj || !adj->resolved)
		return drop(R_adj_unresolved);
	/* ip4-rewrite: TTL - 1, checksum by RFC 1624 eqn. 3, the adjacency's MACs */
	m = ((__u32)ip[8] << 8) | ip[9];
	m2 = (m - 0x100) & 0xFFFF;
	hc = ((__u32)ip[10] << 8) | ip[11];
	s = fold16((~hc & 0xFFFF) + (~m & 0xFFFF) + m2);
	s = ~s & 0xFFFF;
	ip[8] = m2 >> 8;
	ip[10] = s >> 8;
	ip[11] = s & 0xFF;
	__builtin_memcpy(eth, adj->mac, 12);
	return forward();
}

char _license[] SEC("license") = "GPL";
