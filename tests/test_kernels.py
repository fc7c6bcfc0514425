"""Per-packet kernels: compiled vs pure-Python twin, and against scapy/references."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from scapy.all import ARP, ICMP, IP, TCP, UDP, Ether, IPOption_Router_Alert, IPv6, Raw

from labkit.graph import kernels as k
from labkit.graph.acl import Acl
from labkit.graph.fib import Fib
from labkit.graph.nodes import GRAPHS, NODES, WIRING
from labkit.memory.bytes import rd32le
from labkit.memory.layouts import DATA_OFF, META_ADJ_OFF

SLOT = 2048
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MAC_A, MAC_B = "00:11:22:33:44:55", "66:77:88:99:aa:bb"


def place(frame, slot=1, k_slots=3, adj=None):
    """An arena shaped like the mempool's: frame at slot*2048 + DATA_OFF."""
    arena = np.zeros(SLOT * k_slots, np.uint8)
    base = slot * SLOT
    arena[base + DATA_OFF:base + DATA_OFF + len(frame)] = np.frombuffer(bytes(frame), np.uint8)
    if adj is not None:
        arena[base + META_ADJ_OFF:base + META_ADJ_OFF + 4] = np.frombuffer(np.uint32(adj).tobytes(), np.uint8)
    return arena, base


def tight(frame, adj=None):
    """An arena that ends exactly where the frame ends: any over-read by the
    pure-Python twin raises IndexError."""
    arena = np.zeros(DATA_OFF + len(frame), np.uint8)
    arena[DATA_OFF:] = np.frombuffer(bytes(frame), np.uint8)
    if adj is not None:
        arena[META_ADJ_OFF:META_ADJ_OFF + 4] = np.frombuffer(np.uint32(adj).tobytes(), np.uint8)
    return arena, 0


def frame_of(arena, base, n):
    return bytes(arena[base + DATA_OFF:base + DATA_OFF + n])


@pytest.fixture(scope="module")
def fib():
    routes = ([0x14000000, 0x14010100, 0x0A000000, 0x2D000000, 0xB9000000, 0xC0000000, 0x08080808],
              [8, 24, 8, 8, 8, 8, 32], [1, 2, 3, 4, 5, 6, 7])
    return Fib(routes, n_adj=8)


@pytest.fixture(scope="module")
def acl():
    return Acl.default()


def tables_for(name, fib, acl):
    t = dict(fib.tables(), acl_rules=acl.rules)
    return tuple(t[n] for n in NODES[name].tables)


def both(name, frame, fib, acl, adj=0):
    """Run node `name` compiled and pure-Python on the same frame; check they
    agree on code and on every byte of the arena; return (code, arena, base)."""
    node, tabs = NODES[name], tables_for(name, fib, acl)
    a1, base = place(frame, adj=adj)
    a2 = a1.copy()
    c1 = node.one(a1, base, len(frame), *tabs)
    c2 = node.one.py_func(a2, base, len(frame), *tabs)
    assert c1 == c2, (name, c1, c2)
    assert np.array_equal(a1, a2), name
    at, bt = tight(frame, adj=adj)
    assert node.one.py_func(at, bt, len(frame), *tabs) == c1
    for variant, fn in node.variants:           # every other implementation: the same code, the same bytes
        for impl in (fn, fn.py_func):
            a3, _ = place(frame, adj=adj)
            assert impl(a3, base, len(frame), *tabs) == c1, (name, variant, impl)
            assert np.array_equal(a3, a1), (name, variant)
        at, bt = tight(frame, adj=adj)          # and it reads no byte past the frame
        assert fn.py_func(at, bt, len(frame), *tabs) == c1, (name, variant)
    if node.simd is not None:                   # the whole-vector variant, on a vector of one
        for py in (False, True):
            a3, _ = place(frame, adj=adj)
            assert simd_codes(node, a3, [base], [len(frame)], tabs, py)[0] == c1, (name, "simd", py)
            assert np.array_equal(a3, a1), (name, "simd")
        at, bt = tight(frame, adj=adj)
        assert simd_codes(node, at, [bt], [len(frame)], tabs, True)[0] == c1, (name, "simd", "tight")
    if node.stages:                             # the stages in a row, as a multi-loop runs them
        for py in (False, True):
            a3, _ = place(frame, adj=adj)
            assert staged(node, a3, base, len(frame), tabs, py) == c1, (name, "stages", py)
            assert np.array_equal(a3, a1), (name, "stages")
        at, bt = tight(frame, adj=adj)
        assert staged(node, at, bt, len(frame), tabs, True) == c1, (name, "stages", "tight")
    if node.prefetch is not None:
        node.prefetch(a1, base, len(frame), *tabs)
        node.prefetch.py_func(at, bt, len(frame), *tabs)
    assert -len(node.errors) <= c1 < len(node.next)
    return c1, a1, base


def staged(node, arena, base, length, tabs, py=False):
    """A node's stages run one after the other on one packet (``Node.stages``): its code."""
    fns = [f.py_func if py else f for f in node.stages]
    s = fns[0](arena, base, length, *tabs)
    for f in fns[1:]:
        if s < 0:
            break
        s = f(arena, base, length, s, *tabs)
    return s


def simd_codes(node, arena, bases, lengths, tabs, py=False):
    """A node's simd variant over one vector, as the generated loop runs it (gather every packet
    into rows, decide the lanes, the slow path for SLOW): the codes. py: the pure-Python twins."""
    gather, lanes = node.simd
    one = node.one
    if py:
        gather, lanes, one = gather.py_func, lanes.py_func, one.py_func
    n = len(bases)
    rows = np.zeros((k.SIMD_ROWS + 2, n + 3), np.uint32)        # rows from r0 = 2, spare columns
    for i in range(n):
        gather(arena, bases[i], lengths[i], rows, 2, i)
    lanes(rows, 2, n)
    codes = [int(rows[2 + k.ROW_CODE, i]) - k.CODE_BIAS for i in range(n)]
    assert not rows[2 + k.ROW_CODE, n:].any(), "the lanes wrote past the vector"
    return [one(arena, bases[i], lengths[i], *tabs) if c == k.SLOW else c for i, c in enumerate(codes)]


def udp(**ip):
    ip.setdefault("src", "10.1.2.3")
    ip.setdefault("dst", "20.1.1.9")
    return bytes(Ether(dst=MAC_A, src=MAC_B) / IP(**ip) / UDP(sport=1234, dport=80) / Raw(b"x" * 18))


def patch(frame, off, *vals):
    b = bytearray(frame)
    b[off:off + len(vals)] = bytes(vals)
    return bytes(b)


def _recsum(frame):
    """Recompute the IPv4 checksum of a patched frame (RFC 1071)."""
    b = bytearray(frame)
    hlen = (b[14] & 0xF) * 4
    b[24:26] = b"\0\0"
    s = sum(int.from_bytes(b[14 + i:16 + i], "big") for i in range(0, hlen, 2))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    b[24:26] = (~s & 0xFFFF).to_bytes(2, "big")
    return bytes(b)


ALL = list(NODES)
VALID = {
    "udp": udp(),
    "tcp": bytes(Ether() / IP(src="10.9.9.9", dst="20.1.1.1") / TCP(sport=5555, dport=443)),
    "icmp": bytes(Ether() / IP(src="1.2.3.4", dst="192.1.1.1") / ICMP()),
    "options": bytes(Ether() / IP(dst="20.1.1.1", options=[IPOption_Router_Alert()]) / UDP() / Raw(b"y" * 20)),
    "arp": bytes(Ether() / ARP()),
    "ipv6": bytes(Ether() / IPv6() / UDP()),
}


# --- declarations --------------------------------------------------------------

def test_the_classification_nodes_have_a_branchless_variant_and_the_others_fall_back():
    assert [v for v, _ in NODES["eth-input"].variants] == ["branchless"]
    assert NODES["ip4-input"].impl("branchless") is k.ip4_input_branchless
    assert NODES["ip4-lookup"].impl("branchless") is k.ip4_lookup_one        # no variant: the scalar one
    assert NODES["ip4-input"].implementations()[0] == ("scalar", k.ip4_input_one)


def test_node_declarations():
    names = [e for n in NODES.values() for e, _ in n.errors]
    assert len(names) == len(set(names))
    assert NODES["eth-input"].next == ("ip4-input",)
    assert NODES["acl"].next == ("ip4-lookup",)
    assert NODES["ip4-lookup"].tables == ("fib_tbl24", "fib_tbl8", "fib_adj_valid")
    for g, order in GRAPHS.items():
        assert all(n in NODES for n in order), g
    assert WIRING["acl"] == {("ip4-input", 0): "acl"}
    assert NODES["ip4-input"].errors[-k.E_TTL_EXPIRED - 1][0] == "ttl_expired"
    assert NODES["acl"].errors[-k.E_ACL_DENY - 1][0] == "acl_deny"
    assert NODES["ip4-lookup"].errors[-k.E_NO_ROUTE - 1][0] == "no_route"


# --- crafted packets: expected codes ---------------------------------------------

@pytest.mark.parametrize("kind", list(VALID))
def test_crafted_twins_agree(kind, fib, acl):
    for name in ALL:
        both(name, VALID[kind], fib, acl, adj=3)


def test_eth_input_codes(fib, acl):
    assert both("eth-input", VALID["udp"], fib, acl)[0] == 0
    assert both("eth-input", VALID["arp"], fib, acl)[0] == k.E_UNKNOWN_ETHERTYPE
    assert both("eth-input", VALID["ipv6"], fib, acl)[0] == k.E_UNKNOWN_ETHERTYPE


@pytest.mark.parametrize("n", range(61))
def test_truncated_every_length(n, fib, acl):
    f = VALID["udp"]
    assert len(f) == 60
    t = f[:n]
    assert both("l2-macswap", t, fib, acl)[0] == (k.E_MACSWAP_RUNT if n < 14 else 0)
    assert both("eth-input", t, fib, acl)[0] == (k.E_ETH_RUNT if n < 14 else 0)
    want = k.E_IP4_TRUNCATED if n < 34 else k.E_IP4_BAD_LENGTH if n < 60 else 0
    assert both("ip4-input", t, fib, acl)[0] == want
    assert both("ip4-lookup", t, fib, acl)[0] == (k.E_LOOKUP_TRUNCATED if n < 34 else 0)
    assert both("ip4-rewrite", t, fib, acl, adj=1)[0] == (k.E_REWRITE_TRUNCATED if n < 34 else 0)
    assert both("acl", t, fib, acl)[0] == (k.E_ACL_TRUNCATED if n < 38 else 0)


def test_ip4_input_malformed(fib, acl):
    f = VALID["udp"]
    cases = {
        "bad_version": (_recsum(patch(f, 14, 0x65)), k.E_IP4_BAD_VERSION),
        "ihl4": (_recsum(patch(f, 14, 0x44)), k.E_IP4_BAD_IHL),
        "ihl0": (patch(f, 14, 0x40), k.E_IP4_BAD_IHL),
        "ihl_beyond_frame": (_recsum(patch(f, 14, 0x4F)), k.E_IP4_TRUNCATED),
        "total_beyond_frame": (_recsum(patch(f, 16, 0, 47)), k.E_IP4_BAD_LENGTH),
        "total_below_ihl": (_recsum(patch(f, 16, 0, 19)), k.E_IP4_BAD_LENGTH),
        "bad_checksum": (patch(f, 24, f[24] ^ 0x01), k.E_IP4_BAD_CHECKSUM),
        "ttl0": (udp(ttl=0), k.E_TTL_EXPIRED),
        "ttl1": (udp(ttl=1), k.E_TTL_EXPIRED),
        "ttl2": (udp(ttl=2), 0),
        "options": (VALID["options"], 0),
        "padded": (f + b"\0" * 30, 0),
        "options_bad_checksum": (patch(VALID["options"], 36, 0x99), k.E_IP4_BAD_CHECKSUM),
    }
    for what, (frame, want) in cases.items():
        assert both("ip4-input", frame, fib, acl)[0] == want, what


def test_macswap_swaps(fib, acl):
    f = VALID["udp"]
    code, a, base = both("l2-macswap", f, fib, acl)
    out = frame_of(a, base, len(f))
    assert code == 0 and out[:6] == f[6:12] and out[6:12] == f[:6] and out[12:] == f[12:]


# --- lookup + rewrite against scapy ---------------------------------------------

def forward(frame, fib, acl):
    """ip4-lookup then ip4-rewrite on one buffer; checks both twins each step."""
    c, a, base = both("ip4-lookup", frame, fib, acl)
    if c < 0:
        return c, None, None
    adj = rd32le(a, base + META_ADJ_OFF)
    c, a, base = both("ip4-rewrite", frame_of(a, base, len(frame)), fib, acl, adj=adj)
    return c, frame_of(a, base, len(frame)), adj


def check_rewritten(before, after, adj, fib):
    p = Ether(after)
    assert p[IP].ttl == Ether(before)[IP].ttl - 1
    got = p[IP].chksum
    ip = p[IP].copy()
    del ip.chksum
    assert IP(bytes(ip)).chksum == got
    assert after[:12] == bytes(fib.adj_mac[adj])
    assert after[12:22] == before[12:22] and after[23] == before[23] and after[26:] == before[26:]


def test_lookup_routes_and_misses(fib, acl):
    for dst, adj in [("20.1.1.9", 2), ("20.1.2.9", 1), ("8.8.8.8", 7), ("8.8.8.9", -1), ("99.1.1.1", -1)]:
        c, a, base = both("ip4-lookup", udp(dst=dst), fib, acl)
        if adj < 0:
            assert c == k.E_NO_ROUTE
        else:
            assert c == 0 and rd32le(a, base + META_ADJ_OFF) == adj == fib.lookup(int.from_bytes(bytes(map(int, dst.split("."))), "big"))


def test_lookup_unresolved_adjacency(acl):
    f = Fib(([0x14000000], [8], [2]), n_adj=4)
    f.adj_valid[2] = 0
    assert both("ip4-lookup", udp(), f, acl)[0] == k.E_ADJ_UNRESOLVED


@pytest.mark.parametrize("ttl", [2, 3, 64, 128, 255])
def test_rewrite_matches_scapy(ttl, fib, acl):
    for frame in (udp(ttl=ttl), udp(ttl=ttl, id=0xFFFF, tos=0xFF), udp(ttl=ttl, src="0.0.0.0", id=0, flags=0)):
        c, out, adj = forward(frame, fib, acl)
        assert c == 0
        check_rewritten(frame, out, adj, fib)


def test_rewrite_bad_adjacency(fib, acl):
    assert both("ip4-rewrite", VALID["udp"], fib, acl, adj=8)[0] == k.E_BAD_ADJACENCY
    assert both("ip4-rewrite", VALID["udp"], fib, acl, adj=0xFFFFFFFF)[0] == k.E_BAD_ADJACENCY


ip_hdr = st.fixed_dictionaries({
    "ttl": st.integers(2, 255), "tos": st.integers(0, 255), "id": st.integers(0, 0xFFFF),
    "flags": st.integers(0, 7), "frag": st.integers(0, 0x1FFF), "proto": st.sampled_from([1, 6, 17, 47]),
    "src": st.integers(0, 2**32 - 1), "dst": st.sampled_from([0x14010101, 0x14010105, 0x0A0A0A0A, 0x08080808]),
})


def build(h, payload=b"", options=False):
    ip = IP(**{**h, "src": str(np_ip(h["src"])), "dst": str(np_ip(h["dst"]))})
    if options:
        ip.options = [IPOption_Router_Alert()]
    return bytes(Ether(dst=MAC_A, src=MAC_B) / ip / Raw(payload + b"\0" * 8))


def np_ip(v):
    return ".".join(str((v >> s) & 0xFF) for s in (24, 16, 8, 0))


@SETTINGS
@given(ip_hdr, st.binary(max_size=40), st.booleans())
def test_rewrite_random_headers(fib, acl, h, payload, options):
    frame = build(h, payload, options)
    assert both("ip4-input", frame, fib, acl)[0] == 0
    c, out, adj = forward(frame, fib, acl)
    assert c == 0
    check_rewritten(frame, out, adj, fib)
    want = 0 if h["ttl"] > 2 else k.E_TTL_EXPIRED
    assert both("ip4-input", out, fib, acl)[0] == want


# --- ACL against its reference ----------------------------------------------

def test_acl_concrete(fib, acl):
    def code(src, dst, l4):
        return both("acl", bytes(Ether() / IP(src=src, dst=dst) / l4), fib, acl)[0]
    assert code("8.8.4.4", "20.1.1.1", UDP(dport=53)) == k.E_ACL_DENY
    assert code("10.1.1.1", "20.1.1.1", UDP(dport=53)) == 0
    assert code("20.2.2.2", "20.1.1.1", TCP(dport=23)) == k.E_ACL_DENY
    assert code("20.2.2.2", "45.1.1.1", TCP(dport=443)) == 0
    assert code("20.2.2.2", "45.1.1.1", TCP(dport=80)) == k.E_ACL_DENY
    assert code("20.2.2.2", "192.1.1.1", ICMP()) == 0
    assert code("20.2.2.2", "192.1.1.1", UDP(dport=5000)) == k.E_ACL_DENY
    assert code("127.0.0.1", "20.1.1.1", ICMP()) == k.E_ACL_DENY
    assert code("20.2.2.2", "20.1.1.1", TCP(dport=80)) == 0


def test_acl_fragments_have_no_ports(fib, acl):
    later = bytes(Ether() / IP(src="8.8.4.4", dst="20.1.1.1", frag=100, proto=17) / Raw(b"\x00\x35\x00\x35"))
    assert both("acl", later, fib, acl)[0] == 0
    first = bytes(Ether() / IP(src="8.8.4.4", dst="20.1.1.1", flags=1, proto=17) / Raw(b"\x00\x35\x00\x35"))
    assert both("acl", first, fib, acl)[0] == k.E_ACL_DENY


ADDRS = st.one_of(st.integers(0, 2**32 - 1),
                  st.sampled_from([0x0A000001, 0x7F000001, 0x2D010203, 0xB9000001, 0xC0A80101, 0x08080808]))
PORTS = st.one_of(st.integers(0, 65535), st.sampled_from([19, 23, 53, 123, 137, 139, 443, 445, 1900, 11211]))


@SETTINGS
@given(ADDRS, ADDRS, st.sampled_from([1, 6, 17, 47]), PORTS, PORTS)
def test_acl_matches_reference(fib, acl, src, dst, proto, sport, dport):
    l4 = {6: TCP(sport=sport, dport=dport), 17: UDP(sport=sport, dport=dport)}.get(proto, Raw(b"\0" * 8))
    frame = bytes(Ether() / IP(src=np_ip(src), dst=np_ip(dst), proto=proto) / l4)
    if proto not in (6, 17):
        sport = dport = 0
    i = acl.match(src, dst, proto, sport, dport)
    want = k.E_ACL_DENY if i >= 0 and acl.rules[i, 9] == 1 else 0
    assert both("acl", frame, fib, acl)[0] == want


# --- random frames: twins agree, nothing raises --------------------------------

@SETTINGS
@given(st.binary(max_size=200))
def test_random_frames(fib, acl, frame):
    for name in ALL:
        both(name, frame, fib, acl, adj=len(frame) % 10)


@SETTINGS
@given(st.sampled_from(list(VALID)), st.lists(st.tuples(st.integers(0, 80), st.integers(0, 255)), max_size=4),
       st.integers(0, 80))
def test_mutated_frames(fib, acl, kind, flips, cut):
    b = bytearray(VALID[kind])
    for pos, val in flips:
        if pos < len(b):
            b[pos] = val
    frame = bytes(b[:len(b) - cut % 8])
    for name in ALL:
        both(name, frame, fib, acl, adj=cut % 9)


@pytest.mark.parametrize("n", [0, 1, 15, 16, 17, 64, 255])
def test_the_simd_variant_decides_a_whole_vector_as_the_scalar_node(n):
    """Vectors of every length around the lanes (remainder loops included): valid frames, every
    defect, options, short and random frames, each code the scalar node's."""
    rng = np.random.default_rng(n)
    kinds = list(VALID.values()) + [udp(ttl=1), udp(ihl=4), udp(version=6), udp(len=19), udp(len=900),
                                    patch(udp(), 24, 0, 0), udp()[:20], udp()[:34], b"", udp()[:13]]
    frames = []
    for i in range(n):
        f = bytearray(kinds[int(rng.integers(0, len(kinds)))])
        if i % 5 == 4 and len(f) > 20:
            f[int(rng.integers(14, 34))] = int(rng.integers(0, 256))
        frames.append(bytes(f))
    arena = np.zeros(SLOT * max(n, 1), np.uint8)
    bases = [i * SLOT for i in range(n)]
    for b, f in zip(bases, frames):
        arena[b + DATA_OFF:b + DATA_OFF + len(f)] = np.frombuffer(f, np.uint8)
    node = NODES["ip4-input"]
    want = [node.one(arena, b, len(f)) for b, f in zip(bases, frames)]
    assert simd_codes(node, arena, bases, [len(f) for f in frames], ()) == want
    if n >= 64:
        assert len(set(want)) >= 5, "the vector holds many kinds"


@pytest.mark.parametrize("unroll,interleave,prefetch", [(4, True, True), (4, True, False), (2, True, True),
                                                         (4, False, True)])
def test_the_generated_multi_loops_decide_every_packet_as_one(fib, unroll, interleave, prefetch):
    """ip4-lookup's loop as the graph compiler writes it (its stages interleaved four or two at a
    time, or its function repeated), on vectors of 0 to 61 packets (remainders of 0 to 3): each
    packet's code and metadata are ip4_lookup_one's for that packet, whatever its neighbours."""
    from labkit.graph.compile import compile_graph
    from labkit.memory.layouts import LINE_SHIFT
    from labkit.run.knobs import Knobs
    _, m = compile_graph("ip4", Knobs(unroll=unroll, interleave=interleave, prefetch=prefetch))
    assert ("ip4_lookup_s2(" in m.__loader__.get_data(m.__file__).decode()) == interleave
    t24, t8, valid = (a.copy() for a in (fib.tbl24, fib.tbl8, fib.adj_valid))
    valid[3] = 0                                              # 10.0.0.0/8: an unresolved adjacency
    kinds = [udp(dst="20.1.1.9"), udp(dst="20.1.2.9"), udp(dst="8.8.8.8"), udp(dst="8.8.8.9"),
             udp(dst="99.1.1.1"), udp(dst="10.1.2.3"), udp()[:33], udp(dst="192.0.0.1"), udp(dst="185.1.1.1")]
    rng = np.random.default_rng(unroll * 10 + prefetch)
    for n in (0, 1, 3, 4, 5, 8, 61):
        frames = [kinds[int(rng.integers(0, len(kinds)))] for _ in range(n)]
        arena = np.zeros(SLOT * (n + 1), np.uint8)
        hs = np.array([(i * SLOT) >> LINE_SHIFT for i in range(n)], np.uint32)
        ls = np.array([len(f) for f in frames], np.uint32)
        for i, f in enumerate(frames):
            arena[i * SLOT + DATA_OFF:i * SLOT + DATA_OFF + len(f)] = np.frombuffer(f, np.uint8)
        want = arena.copy()
        codes = [k.ip4_lookup_one(want, i * SLOT, len(f), t24, t8, valid) for i, f in enumerate(frames)]
        nxt = np.full(n + 2, 99, np.int32)
        m.ip4_lookup_node(arena, hs, ls, n, nxt, t24, t8, valid)
        assert list(nxt[:n]) == codes and list(nxt[n:]) == [99, 99], (n, unroll)
        assert np.array_equal(arena, want), n
        if n == 61:
            assert {0, k.E_NO_ROUTE, k.E_ADJ_UNRESOLVED, k.E_LOOKUP_TRUNCATED} <= set(codes)
