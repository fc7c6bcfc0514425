"""Notebook and exercise 08 (compute batching): a small graph of four nodes,
run packet at a time or vector at a time, in TSC cycles per packet.

The graph, VPP's shape in miniature (arcs point to higher node indices, so
running the nodes in index order is a topological order)::

                 ┌──► LOOKUP (1) ──► REWRITE (2) ──► tx
    PARSE (0) ───┤
                 └──► ARP (3) ─────────────────────► tx
    (every node may also send a packet to drop, counting why in ``errors``)

A node is a *vector* function, as a VPP node's ``function`` is::

    node(g, vec, n, nxt)

it processes buffers ``vec[0..n-1]`` (indices into ``g.pkts``), writes the
next node of packet ``k`` into ``nxt[k]`` (``LOOKUP``, ``REWRITE``, ``ARP``,
``TX`` or ``DROP``), counts its drops by reason in ``g.errors``, and books
the call as VPP's dispatcher does (``vlib_node_runtime_update_stats``): one
call, ``n`` packets and the TSC cycles it took, in ``g.stats[node]``. Reading
the clock twice and updating the counters is this graph's fixed cost per
call, paid once per vector whatever ``n`` is. ``call_node(node, g, vec, n,
nxt)`` calls node number ``node``.

A dispatcher runs one vector through the graph. Its input is in
``frames[PARSE, :counts[PARSE]]`` (as labkit's generated ``dispatch`` finds
its vector in frame 0); on return ``frames[TX, :counts[TX]]`` holds the
buffers to send and ``frames[DROP, :counts[DROP]]`` the buffers to free,
``counts[node] == 0`` for every node. Two dispatchers are here:

- ``dispatch_packet``: each packet walks the graph alone, one call per packet
  per node (the exercise's starter, without its allocation);
- ``dispatch_vector``: each node runs once over all its packets, then every
  packet is enqueued to its next node's frame, VPP's
  ``vlib_buffer_enqueue_to_next`` (the exercise's reference). Nodes run in
  index order, so a frame holds its packets in the order they left the nodes
  before it, each node's in arrival order: that order is part of the output.

The tables: ``g.fib`` (uint16 [65536], the adjacency of a destination's
/16, 0: no route; 128 KiB), ``g.adj_mac`` (uint8 [N_ADJ, 12]: next hop's
destination and source MAC), ``MY_MAC`` for ARP replies. ``g.meta[b]`` is
buffer b's adjacency (VPP's ``vnet_buffer(b)->ip.adj_index``).

For the checks: ``make_graph`` (inputs of a given mix), ``EDGE_CASES``,
``run_once`` (what a dispatcher did to one vector: sent and dropped buffers in
order, bytes, counters, calls, what each node was given) and ``differences``
(a readable list of where two runs differ). For the measurements:
``time_dispatch`` (TSC cycles per packet of a dispatcher at a vector size)
and ``per_node_cycles``.
"""
from collections import namedtuple

import numpy as np
from numba import njit

from labkit.memory.intrinsics import rdtsc

PARSE, LOOKUP, REWRITE, ARP = 0, 1, 2, 3
N_NODES = 4
TX, DROP = 4, 5                     # the two terminals: frames[TX] to send, frames[DROP] to free
N_NEXT = 6                          # rows of `frames`: every node, then tx and drop
NODE_NAMES = ("parse", "lookup", "rewrite", "arp")
NEXT_NAMES = NODE_NAMES + ("tx", "drop")
VMAX = 256                          # packets per vector at most (VPP's VLIB_FRAME_SIZE)
BUF = 64                            # bytes per buffer: a frame of up to 64 bytes, one cache line
CALLS, PACKETS, CYCLES = 0, 1, 2    # columns of g.stats
ERRORS = (("runt", "frame shorter than an Ethernet header"),
          ("unknown_ethertype", "neither IPv4 nor ARP"),
          ("ip4_short", "frame too short for an IPv4 header"),
          ("no_route", "no route for the destination's /16"),
          ("ttl_expired", "TTL 0 or 1 (RFC 1812 5.3.1)"),
          ("arp_not_request", "ARP that is not a request for IPv4 over Ethernet"))
E_RUNT, E_ETHERTYPE, E_IP4_SHORT, E_NO_ROUTE, E_TTL, E_ARP = range(len(ERRORS))
N_ADJ = 16
MY_MAC = np.array([0x02, 0x00, 0x00, 0x00, 0x08, 0x08], np.uint8)

# where things are in a frame (Ethernet II, IPv4 without options, ARP)
ETH_TYPE = 12
IP_TTL, IP_PROTO, IP_CSUM, IP_SRC, IP_DST = 22, 23, 24, 26, 30
ARP_OP, ARP_SHA, ARP_SPA, ARP_THA, ARP_TPA = 20, 22, 28, 32, 38
ARP_LEN = 42

Graph = namedtuple("Graph", "pkts lens meta fib adj_mac my_mac stats errors trace trace_n")
Graph.__doc__ = """The graph's state, one namedtuple of arrays (numba passes it whole):
pkts uint8 [n_buf, BUF], lens int32 [n_buf], meta int32 [n_buf] (adjacency),
fib uint16 [65536], adj_mac uint8 [N_ADJ, 12], my_mac uint8 [6],
stats int64 [N_NODES, 3] (calls, packets, TSC cycles), errors int64 [len(ERRORS)],
trace int32 [N_NODES, cap] and trace_n int64 [N_NODES]: what each node was given,
in order (recorded only when cap > 0)."""

__all__ = ["PARSE", "LOOKUP", "REWRITE", "ARP", "N_NODES", "TX", "DROP", "N_NEXT", "VMAX", "NODE_NAMES",
           "NEXT_NAMES", "ERRORS", "Graph", "parse", "lookup", "rewrite", "arp", "call_node",
           "dispatch_packet", "dispatch_vector", "make_graph", "EDGE_CASES", "edge_case", "new_frames",
           "run_once", "reference", "differences", "time_dispatch", "per_node_cycles", "ip4_checksum"]


# ---- the nodes ------------------------------------------------------------------

@njit(nogil=True, cache=True, _nrt=False)
def _book(g, node, vec, n, t0):
    """The fixed cost of a call: VPP's per-dispatch runtime stats (and the trace
    the checks read, when it is on: one test per call)."""
    g.stats[node, CALLS] += 1
    g.stats[node, PACKETS] += n
    if g.trace.shape[1] > 0:
        m = g.trace_n[node]
        for k in range(n):
            if m + k < g.trace.shape[1]:
                g.trace[node, m + k] = vec[k]
        g.trace_n[node] = m + n
    g.stats[node, CYCLES] += rdtsc() - t0


@njit(nogil=True, cache=True, _nrt=False)
def parse(g, vec, n, nxt):
    """IPv4 to LOOKUP, ARP to ARP, anything else dropped."""
    t0 = rdtsc()
    for k in range(n):
        b = vec[k]
        ln = g.lens[b]
        if ln < 14:
            g.errors[E_RUNT] += 1
            nxt[k] = DROP
            continue
        etype = (np.int32(g.pkts[b, ETH_TYPE]) << 8) | g.pkts[b, ETH_TYPE + 1]
        if etype == 0x0800:
            if ln < 34:
                g.errors[E_IP4_SHORT] += 1
                nxt[k] = DROP
            else:
                nxt[k] = LOOKUP
        elif etype == 0x0806:
            nxt[k] = ARP
        else:
            g.errors[E_ETHERTYPE] += 1
            nxt[k] = DROP
    _book(g, PARSE, vec, n, t0)


@njit(nogil=True, cache=True, _nrt=False)
def lookup(g, vec, n, nxt):
    """The destination's /16 in the FIB: its adjacency goes into the buffer's
    metadata and the packet to REWRITE; no route, dropped."""
    t0 = rdtsc()
    for k in range(n):
        b = vec[k]
        p = g.pkts[b]
        adj = g.fib[(np.int64(p[IP_DST]) << 8) | p[IP_DST + 1]]
        if adj == 0:
            g.errors[E_NO_ROUTE] += 1
            nxt[k] = DROP
        else:
            g.meta[b] = adj
            nxt[k] = REWRITE
    _book(g, LOOKUP, vec, n, t0)


@njit(nogil=True, cache=True, _nrt=False)
def rewrite(g, vec, n, nxt):
    """TTL - 1 with an incremental checksum update (RFC 1624, eqn. 3), the next
    hop's MACs from the adjacency; TTL 0 or 1 is dropped."""
    t0 = rdtsc()
    for k in range(n):
        b = vec[k]
        p = g.pkts[b]
        ttl = np.int64(p[IP_TTL])
        if ttl <= 1:
            g.errors[E_TTL] += 1
            nxt[k] = DROP
            continue
        old = (ttl << 8) | p[IP_PROTO]
        new = old - 0x100
        hc = (np.int64(p[IP_CSUM]) << 8) | p[IP_CSUM + 1]
        s = (~hc & 0xFFFF) + (~old & 0xFFFF) + new
        s = (s & 0xFFFF) + (s >> 16)
        s = (s & 0xFFFF) + (s >> 16)
        hc = ~s & 0xFFFF
        p[IP_TTL] = ttl - 1
        p[IP_CSUM] = hc >> 8
        p[IP_CSUM + 1] = hc & 0xFF
        a = g.meta[b]
        for j in range(12):
            p[j] = g.adj_mac[a, j]
        nxt[k] = TX
    _book(g, REWRITE, vec, n, t0)


@njit(nogil=True, cache=True, _nrt=False)
def arp(g, vec, n, nxt):
    """Answer an ARP request for anything (proxy ARP): the reply goes back to
    the asker from my_mac; anything else is dropped."""
    t0 = rdtsc()
    for k in range(n):
        b = vec[k]
        p = g.pkts[b]
        if (g.lens[b] < ARP_LEN or p[14] != 0 or p[15] != 1 or p[16] != 8 or p[17] != 0
                or p[ARP_OP] != 0 or p[ARP_OP + 1] != 1):
            g.errors[E_ARP] += 1
            nxt[k] = DROP
            continue
        p[ARP_OP + 1] = 2
        for j in range(6):
            p[j] = p[6 + j]                           # Ethernet: back to the asker...
            p[6 + j] = g.my_mac[j]                    # ...from us
            p[ARP_THA + j] = p[ARP_SHA + j]           # target: the asker
            p[ARP_SHA + j] = g.my_mac[j]              # sender: us
        for j in range(4):
            p[ARP_TPA + j], p[ARP_SPA + j] = p[ARP_SPA + j], p[ARP_TPA + j]
        nxt[k] = TX
    _book(g, ARP, vec, n, t0)


@njit(nogil=True, cache=True, _nrt=False)
def call_node(node, g, vec, n, nxt):
    """Call node number `node` on vec[0..n-1] (numba has no arrays of functions:
    a switch, as a C dispatcher would index a table of node functions)."""
    if node == PARSE:
        parse(g, vec, n, nxt)
    elif node == LOOKUP:
        lookup(g, vec, n, nxt)
    elif node == REWRITE:
        rewrite(g, vec, n, nxt)
    else:
        arp(g, vec, n, nxt)


# ---- two dispatchers ------------------------------------------------------------

@njit(nogil=True, cache=True, _nrt=False)
def dispatch_packet(g, frames, counts, nxt):
    """Packet at a time: each packet walks the graph alone, one call per packet
    per node (the exercise's starter does this, and allocates its vector of one)."""
    n = counts[PARSE]
    for k in range(n):
        node = PARSE
        while node < N_NODES:
            call_node(node, g, frames[PARSE, k:k + 1], 1, nxt)
            node = nxt[0]
        frames[node, counts[node]] = frames[PARSE, k]
        counts[node] += 1
    counts[PARSE] = 0


@njit(nogil=True, cache=True, _nrt=False)
def dispatch_vector(g, frames, counts, nxt):
    """Vector at a time: each node once over its whole frame, then each packet
    enqueued to the frame of its next node, in order (vlib_buffer_enqueue_to_next)."""
    for node in range(N_NODES):
        m = counts[node]
        if m == 0:
            continue
        call_node(node, g, frames[node], m, nxt)
        for k in range(m):
            t = nxt[k]
            frames[t, counts[t]] = frames[node, k]
            counts[t] += 1
        counts[node] = 0


# ---- inputs -----------------------------------------------------------------------

def ip4_checksum(hdr):
    """The IPv4 header checksum of 20 bytes (checksum field taken as zero)."""
    h = bytearray(bytes(hdr[:20]))
    h[10:12] = b"\0\0"
    s = sum((h[i] << 8) | h[i + 1] for i in range(0, 20, 2))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


# traffic kinds, and where each ends: tx, or dropped by which node
KINDS = ("ip4", "arp", "ipv6", "runt", "ip4_short", "no_route", "ttl1", "arp_reply")
FATE = {"ip4": "tx", "arp": "tx", "ipv6": "parse", "runt": "parse", "ip4_short": "parse",
        "no_route": "lookup", "ttl1": "rewrite", "arp_reply": "arp"}
MIX = {"ip4": 0.70, "arp": 0.10, "ipv6": 0.04, "runt": 0.03, "ip4_short": 0.03, "no_route": 0.04,
       "ttl1": 0.03, "arp_reply": 0.03}
ROUTED = 192                         # destinations 10.0.0.0/16 .. 10.191.0.0/16 have routes


def _frame(kind, rng):
    f = bytearray(60)
    f[0:6] = bytes([0x02, 0, 0, 0, 0, 0x01])                   # to us
    f[6:12] = bytes([0x02, 0, 0, 0, 1, int(rng.integers(0, 256))])
    if kind in ("arp", "arp_reply"):
        f[12:14] = b"\x08\x06"
        f[14:22] = bytes([0, 1, 8, 0, 6, 4, 0, 1 if kind == "arp" else 2])
        f[ARP_SHA:ARP_SHA + 6] = f[6:12]
        f[ARP_SPA:ARP_SPA + 4] = bytes([10, 9, 0, int(rng.integers(1, 255))])
        f[ARP_TPA:ARP_TPA + 4] = bytes([10, 9, 0, 1])
        return f, 60
    if kind == "ipv6":
        f[12:14] = b"\x86\xdd"
        return f, 60
    if kind == "runt":
        return f, int(rng.integers(0, 14))
    f[12:14] = b"\x08\x00"
    ttl = 1 if kind == "ttl1" else int(rng.integers(2, 256))
    dst_net = int(rng.integers(ROUTED, 256)) if kind == "no_route" else int(rng.integers(0, ROUTED))
    f[14:34] = bytes([0x45, 0, 0, 46, 0, 0, 0x40, 0, ttl, 17, 0, 0,
                      10, 1, 0, int(rng.integers(1, 255)), 10, dst_net, int(rng.integers(0, 256)),
                      int(rng.integers(1, 255))])
    c = ip4_checksum(f[14:34])
    f[24:26] = bytes([c >> 8, c & 0xFF])
    f[34:42] = bytes([0x30, 0x39, 0x00, 0x35, 0, 26, 0, 0])
    if kind == "ip4_short":
        return f, int(rng.integers(14, 34))
    return f, 60


def make_graph(n, seed=8, mix=None, kinds=None, trace=False, spare=0):
    """A graph with n packets and its input vector: (g, vec).

    The packets' kinds are drawn from `mix` ({kind: weight}, default MIX) or
    given one per packet in `kinds`. They sit in buffers n + spare buffers,
    in a shuffled order, so vec (the buffer indices, int32) is not 0..n-1.
    trace=True records what each node is given (g.trace)."""
    rng = np.random.default_rng(seed)
    if kinds is None:
        mix = mix or MIX
        names = sorted(mix)
        w = np.array([mix[k] for k in names], float)
        kinds = [names[i] for i in rng.choice(len(names), size=n, p=w / w.sum())]
    kinds = list(kinds)
    assert len(kinds) == n and all(k in KINDS for k in kinds), f"kinds must be {KINDS}"
    n_buf = n + spare
    pkts = np.zeros((max(n_buf, 1), BUF), np.uint8)
    lens = np.zeros(max(n_buf, 1), np.int32)
    vec = rng.permutation(n_buf)[:n].astype(np.int32)
    for k, kind in enumerate(kinds):
        f, ln = _frame(kind, rng)
        pkts[vec[k], :60] = np.frombuffer(bytes(f), np.uint8)
        lens[vec[k]] = ln
    fib = np.zeros(1 << 16, np.uint16)
    nets = np.arange(ROUTED)
    fib[(10 << 8) | nets] = 1 + nets % (N_ADJ - 1)           # 10.x/16 -> adjacency 1..15
    adj_mac = np.zeros((N_ADJ, 12), np.uint8)
    for a in range(N_ADJ):
        adj_mac[a] = [0x02, 0, 0, 0, 0x0A, a, 0x02, 0, 0, 0, 0x08, 0x08]
    g = Graph(pkts, lens, np.zeros(max(n_buf, 1), np.int32), fib, adj_mac, MY_MAC.copy(),
              np.zeros((N_NODES, 3), np.int64), np.zeros(len(ERRORS), np.int64),
              np.zeros((N_NODES, (n + 1) if trace else 0), np.int32), np.zeros(N_NODES, np.int64))
    return g, vec


def edge_case(name, seed=8):
    """(g, vec) of one edge case (see EDGE_CASES), with tracing on."""
    n, kinds = EDGE_CASES[name]
    return make_graph(n, seed=seed, kinds=kinds, trace=True, spare=3)


EDGE_CASES = {
    "empty vector (n=0)": (0, []),
    "one packet (n=1)": (1, ["ip4"]),
    "one ARP request (n=1)": (1, ["arp"]),
    "a full vector (n=256)": (VMAX, None),
    "all dropped by the first node": (VMAX, ["runt", "ipv6", "ip4_short"] * 85 + ["runt"]),
    "all dropped midway (no route)": (100, ["no_route"] * 100),
    "dropped at the last node": (64, ["ttl1", "ip4"] * 32),
    "only ARP": (40, ["arp", "arp_reply", "arp", "arp"] * 10),
}


def new_frames():
    """(frames, counts, nxt): the scratch a dispatcher needs, owned by the caller."""
    return (np.zeros((N_NEXT, VMAX), np.int32), np.zeros(N_NEXT, np.int64), np.zeros(VMAX, np.int32))


def run_once(dispatch, g, vec):
    """Run `dispatch` on one vector (vec: at most VMAX buffers) and say what it did:
    a dict of tx and drop (buffers in order), pkts (the bytes after), meta,
    errors, calls and packets per node, given (what each node was given, in
    order, when g was made with trace=True), counts (the frames' counts after).
    It runs on a copy of g: g itself is left as it was."""
    g = _copy(g)
    vec = np.asarray(vec, np.int32)
    n = len(vec)
    assert n <= VMAX, f"a vector holds at most {VMAX} packets"
    frames, counts, nxt = new_frames()
    frames[PARSE, :n] = vec
    counts[PARSE] = n
    dispatch(g, frames, counts, nxt)
    given = None
    if g.trace.shape[1] > 0:
        given = [g.trace[i, :min(int(g.trace_n[i]), g.trace.shape[1])].tolist() for i in range(N_NODES)]
        given = [gv + ["..."] * (int(g.trace_n[i]) - len(gv)) for i, gv in enumerate(given)]
    return {"tx": frames[TX, :min(int(counts[TX]), VMAX)].tolist(),
            "drop": frames[DROP, :min(int(counts[DROP]), VMAX)].tolist(),
            "pkts": g.pkts.copy(), "meta": g.meta.copy(), "errors": g.errors.tolist(),
            "calls": g.stats[:, CALLS].tolist(), "packets": g.stats[:, PACKETS].tolist(),
            "given": given, "counts": counts.tolist()}


def _copy(g):
    return Graph(*(a.copy() for a in g))


def reference(g, vec):
    """What the reference, dispatch_vector, does to (a copy of) g and vec."""
    return run_once(dispatch_vector, g, vec)


def differences(got, want, what=("tx", "drop", "pkts", "errors", "packets")):
    """Where two run_once results differ, as sentences (empty: they agree)."""
    out = []
    for key in what:
        a, b = got[key], want[key]
        if key == "pkts":
            if not np.array_equal(a, b):
                bad = np.flatnonzero((a != b).any(axis=1))
                out.append(f"the bytes of {bad.size} buffers differ from the reference's "
                           f"(first: buffer {bad[0]}, bytes {np.flatnonzero(a[bad[0]] != b[bad[0]]).tolist()})")
        elif key in ("tx", "drop"):
            if a != b:
                if sorted(a) == sorted(b):
                    out.append(f"frames[{key.upper()}] holds the right {len(b)} buffers in another order: "
                               f"the first difference at position {next(i for i in range(len(a)) if a[i] != b[i])} "
                               "(expected: the packets of the node that ran first, then of the next..., each node's "
                               "in the order it was given them)")
                else:
                    out.append(f"frames[{key.upper()}] holds {len(a)} buffers, expected {len(b)} "
                               f"({len(set(b) - set(a))} missing, {len(set(a) - set(b))} not expected)")
        elif key == "errors":
            if a != b:
                out.append("drop counters " + ", ".join(f"{ERRORS[i][0]} {a[i]} (expected {b[i]})"
                                                        for i in range(len(a)) if a[i] != b[i]))
        elif key in ("packets", "calls"):
            if a != b:
                out.append(f"{key} per node " + ", ".join(f"{NODE_NAMES[i]} {a[i]} (expected {b[i]})"
                                                          for i in range(N_NODES) if a[i] != b[i]))
        elif key == "given":
            for i in range(N_NODES):
                if a[i] != b[i]:
                    out.append(f"node {NODE_NAMES[i]} was given {len(a[i])} packets "
                               f"{a[i][:6]}{'...' if len(a[i]) > 6 else ''}, expected "
                               f"{b[i][:6]}{'...' if len(b[i]) > 6 else ''} ({len(b[i])} packets)")
        elif key == "counts":
            left = [NEXT_NAMES[i] for i in range(N_NODES) if a[i] != 0]
            if left:
                out.append(f"counts of {left} are not 0 on return: a node's frame was not emptied")
    return out


# ---- measuring --------------------------------------------------------------------

@njit(nogil=True)
def _sweep(dispatch, g, vec, batch, frames, counts, nxt, pristine, rounds):
    """Fastest of `rounds` passes over all of vec in vectors of `batch`, in TSC
    cycles; the bytes are restored between passes (not timed)."""
    best = np.int64(1) << 62
    n = vec.size
    for r in range(rounds):
        for b in range(n):
            for j in range(BUF):
                g.pkts[vec[b], j] = pristine[vec[b], j]
        t0 = rdtsc()
        s = 0
        while s < n:
            m = min(batch, n - s)
            for k in range(m):
                frames[PARSE, k] = vec[s + k]
            counts[:] = 0
            counts[PARSE] = m
            dispatch(g, frames, counts, nxt)
            s += m
        dt = rdtsc() - t0
        if dt < best:
            best = dt
    return best


def time_dispatch(dispatch, batch, n=4096, rounds=None, seed=8):
    """TSC cycles per packet of `dispatch` over n packets (the usual mix, 70%
    forwarded) in vectors of `batch`: the fastest of several passes, so warm
    caches; includes the copy of each vector into frames[PARSE] (labkit's rx)."""
    from labkit.course.exercise import quick
    rounds = rounds or (5 if quick() else 25)
    g, vec = make_graph(n, seed=seed)
    frames, counts, nxt = new_frames()
    pristine = g.pkts.copy()
    _sweep(dispatch, g, vec, batch, frames, counts, nxt, pristine, 1)       # compile and warm up
    return _sweep(dispatch, g, vec, batch, frames, counts, nxt, pristine, rounds) / n


def per_node_cycles(dispatch, batch, n=4096, seed=8):
    """{node name: (calls, TSC cycles per packet inside it)} for one pass of
    `dispatch` over n packets in vectors of `batch` (after a warm-up pass)."""
    g, vec = make_graph(n, seed=seed)
    frames, counts, nxt = new_frames()
    pristine = g.pkts.copy()
    _sweep(dispatch, g, vec, batch, frames, counts, nxt, pristine, 1)
    g.stats[:] = 0
    _sweep(dispatch, g, vec, batch, frames, counts, nxt, pristine, 1)
    return {NODE_NAMES[i]: (int(g.stats[i, CALLS]), g.stats[i, CYCLES] / max(1, g.stats[i, PACKETS]))
            for i in range(N_NODES)}
