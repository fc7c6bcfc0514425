/* ip4: labkit's ip4 graph (eth-input, ip4-input, ip4-lookup, ip4-rewrite) as one
 * XDP program, check for check and drop reason for drop reason the same, so
 * that a frame gets the same verdict and leaves with the same bytes whichever
 * path it takes (tests/test_xdp_backend.py compares them frame by frame).
 *
 * - the FIB, one of two (labkit.run.xdprun fills it from labkit's own table):
 *   - DIR-24-8 (the default): labkit's tbl24 and tbl8, byte for byte, in two
 *     array maps that user space writes through mmap (BPF_F_MMAPABLE); four
 *     16-bit entries per 64-bit value. One or two array reads per lookup,
 *     which the verifier turns into plain loads;
 *   - with -DFIB_LPM_TRIE: the kernel's longest-prefix-match trie
 *     (BPF_MAP_TYPE_LPM_TRIE), filled with the routes in their order: the
 *     longest prefix wins, and of two equal ones the later, as in
 *     labkit.graph.fib. A binary trie: one node per prefix bit it walks;
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

#ifdef FIB_LPM_TRIE
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 1);         /* set to the FIB's size before loading */
	__type(key, struct route_key);
	__type(value, __u32);           /* adjacency */
} routes SEC(".maps");
#else
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1 << 22);   /* 2^24 entries of 16 bits, four per value */
	__type(key, __u32);
	__type(value, __u64);
} tbl24 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1);         /* set to 64 per group of 256 before loading */
	__type(key, __u32);
	__type(value, __u64);
} tbl8 SEC(".maps");
#endif

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);         /* set to the number of adjacencies before loading */
	__type(key, __u32);
	__type(value, struct adjacency);
} adjacencies SEC(".maps");

/* Entry i of a table of 16-bit entries stored four to a 64-bit array value (little-endian). */
static __always_inline __u32 entry16(void *map, __u32 i)
{
	__u32 k = i >> 2;
	__u64 *w = bpf_map_lookup_elem(map, &k);

	return w ? (*w >> ((i & 3) * 16)) & 0xFFFF : 0;
}

/* The route's adjacency + 1 for destination ip[16..19], or 0: no route. */
static __always_inline __u32 lookup(__u8 *ip)
{
#ifdef FIB_LPM_TRIE
	struct route_key key = {.prefixlen = 32};
	__u32 *a;

	__builtin_memcpy(key.addr, ip + 16, 4);
	a = bpf_map_lookup_elem(&routes, &key);
	return a ? *a + 1 : 0;
#else
	/* DIR-24-8 as labkit.graph.kernels._dir24_8: the top 24 bits index tbl24; an entry
	 * with the 0x8000 flag names a group of 256 in tbl8, indexed by the last 8 bits */
	__u32 d = ((__u32)ip[16] << 24) | ((__u32)ip[17] << 16) | ((__u32)ip[18] << 8) | ip[19];
	__u32 e = entry16(&tbl24, d >> 8);

	if (e & 0x8000)
		e = entry16(&tbl8, ((e & 0x7FFF) << 8) | (d & 0xFF));
	return e;
#endif
}

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
	struct adjacency *adj;
	__u32 hlen, total, s = 0, m, m2, hc, a;

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
	a = lookup(ip);
	if (!a)
		return drop(R_no_route);
	a -= 1;
	adj = bpf_map_lookup_elem(&adjacencies, &a);
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
