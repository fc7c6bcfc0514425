"""Every node of the data plane, declared once, and the graphs built from them.

Error k of a node is drop code -(k + 1) of its ``one`` (the ``E_*`` constants
of ``labkit.graph.kernels``); error names are unique across all nodes, so a
counter name says which node dropped. ``tables`` name the arrays passed after
``length``, in order:

- ``fib_tbl24``: uint16 [2**24], ``fib_tbl8``: uint16 [256 * groups],
  ``fib_adj_valid``: uint8 [n_adj], ``adj_mac``: uint8 [n_adj, 12]
  (``labkit.graph.fib.Fib.tables()``);
- ``acl_rules``: uint32 [n_rules, 10] (``labkit.graph.acl.Acl.rules``).
"""
from labkit.graph import kernels as k
from labkit.graph.node import TX, Node

_IP4_HDR = ("ip4.ver_ihl", "ip4.total_length", "ip4.checksum", "ip4.ttl")

NODES = {n.name: n for n in (
    Node("l2-macswap", k.l2_macswap_one, (TX,),
         errors=(("macswap_runt", "frame shorter than an Ethernet header (14 bytes)"),),
         reads=("eth.dst", "eth.src"),
         doc="Swap destination and source MAC and send the frame back (DPDK l2fwd)."),
    Node("eth-input", k.eth_input_one, ("ip4-input",),
         errors=(("eth_runt", "frame shorter than an Ethernet header (14 bytes)"),
                 ("unknown_ethertype", "ethertype other than IPv4 (0x0800), e.g. ARP or IPv6")),
         reads=("eth.type",), variants=(("branchless", k.eth_input_branchless),),
         doc="Classify by ethertype: IPv4 goes to ip4-input, the rest is dropped."),
    Node("ip4-input", k.ip4_input_one, ("ip4-lookup",),
         errors=(("ip4_truncated", "frame too short for 20 bytes of IPv4 header, or for IHL*4"),
                 ("ip4_bad_version", "IP version field is not 4"),
                 ("ip4_bad_ihl", "header length (IHL) below 5 words"),
                 ("ip4_bad_length", "total length below IHL*4 or beyond the frame"),
                 ("ip4_bad_checksum", "IPv4 header checksum does not verify"),
                 ("ttl_expired", "TTL 0 or 1: forwarding would make it 0 (RFC 1812 5.3.1)")),
         reads=_IP4_HDR, variants=(("branchless", k.ip4_input_branchless),),
         simd=(k.ip4_input_gather, k.ip4_input_lanes),
         doc="Validate the IPv4 header as a router must (RFC 1812 5.2.2)."),
    Node("ip4-lookup", k.ip4_lookup_one, ("ip4-rewrite",),
         errors=(("no_route", "no route matches the destination address"),
                 ("lookup_truncated", "frame too short to hold an IPv4 destination"),
                 ("adj_unresolved", "the route's next hop has no resolved adjacency")),
         tables=("fib_tbl24", "fib_tbl8", "fib_adj_valid"),
         prefetch=k.ip4_lookup_prefetch,
         stages=(k.ip4_lookup_load, k.ip4_lookup_fib, k.ip4_lookup_finish),
         reads=("ip4.dst",),
         doc="DIR-24-8 longest-prefix match; the adjacency goes into buffer metadata."),
    Node("ip4-rewrite", k.ip4_rewrite_one, (TX,),
         errors=(("bad_adjacency", "adjacency index in metadata beyond the adjacency table"),
                 ("rewrite_truncated", "frame too short for an IPv4 header")),
         tables=("adj_mac",),
         reads=("meta.adj_index", "ip4.ttl", "ip4.checksum"),
         doc="TTL-1, incremental checksum (RFC 1624), MACs of the adjacency."),
    Node("acl", k.acl_one, ("ip4-lookup",),
         errors=(("acl_truncated", "TCP/UDP packet too short to hold its ports"),
                 ("acl_deny", "a deny rule matched")),
         tables=("acl_rules",),
         reads=("ip4.src", "ip4.dst", "ip4.proto", "l4.sport", "l4.dport"),
         doc="First-match 5-tuple filter; no match = permit."),
)}

GRAPHS = {
    "l2fwd": ["l2-macswap"],
    "ip4": ["eth-input", "ip4-input", "ip4-lookup", "ip4-rewrite"],
    "acl": ["eth-input", "ip4-input", "acl", "ip4-lookup", "ip4-rewrite"],
}

# Per-graph overrides of a node's default arc: (node, arc) -> target.
WIRING = {
    "l2fwd": {},
    "ip4": {},
    "acl": {("ip4-input", 0): "acl"},
}

_all = [e[0] for n in NODES.values() for e in n.errors]
assert len(set(_all)) == len(_all), "error names must be unique across nodes"
