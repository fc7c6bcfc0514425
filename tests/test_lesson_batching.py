"""labkit.course.lessons.batching (notebook and exercise 08): the reference dispatcher
does what an independent model of the graph says, the inputs are what they
claim, and the tools the checks use can fail. No test asserts a time."""
import numpy as np
import pytest
from numba import njit

from labkit.course import exercise as ex
from labkit.course.lessons import batching as L
from labkit.course.lessons.batching import DROP, N_NODES, PARSE, call_node

DROPPED_BY = {"parse": 0, "lookup": 1, "rewrite": 2, "arp": 3}


def _kinds(n, seed):
    rng = np.random.default_rng(seed)
    return [L.KINDS[i] for i in rng.integers(0, len(L.KINDS), size=n)]


def _model(g, vec, kinds):
    """What the graph must do, computed without any dispatcher: tx and drop in
    the order the reference promises, and the bytes after."""
    tx = {2: [], 3: []}
    drop = {0: [], 1: [], 2: [], 3: []}
    pkts = g.pkts.copy()
    for b, kind in zip(vec.tolist(), kinds):
        fate = L.FATE[kind]
        if fate != "tx":
            drop[DROPPED_BY[fate]].append(b)
            continue
        p = pkts[b]
        if kind == "arp":
            tx[3].append(b)
            asker_mac, asker_ip, asked_ip = p[6:12].copy(), p[28:32].copy(), p[38:42].copy()
            p[0:6], p[6:12] = asker_mac, L.MY_MAC
            p[21] = 2
            p[22:28], p[28:32] = L.MY_MAC, asked_ip
            p[32:38], p[38:42] = asker_mac, asker_ip
        else:
            tx[2].append(b)
            adj = g.fib[(int(p[30]) << 8) | int(p[31])]
            p[22] -= 1
            c = L.ip4_checksum(p[14:34])
            p[24], p[25] = c >> 8, c & 0xFF
            p[0:12] = g.adj_mac[adj]
    return tx[2] + tx[3], drop[0] + drop[1] + drop[2] + drop[3], pkts


@pytest.mark.parametrize("n,seed", [(0, 1), (1, 2), (2, 3), (3, 4), (255, 5), (256, 6), (256, 7)])
def test_the_reference_does_what_the_model_says(n, seed):
    kinds = _kinds(n, seed)
    g, vec = L.make_graph(n, seed=seed, kinds=kinds, trace=True)
    out = L.reference(g, vec)
    tx, drop, pkts = _model(g, vec, kinds)
    assert out["tx"] == tx and out["drop"] == drop
    assert np.array_equal(out["pkts"], pkts)
    assert out["counts"][:N_NODES] == [0] * N_NODES
    assert sum(out["errors"]) == len(drop)
    reached = [n, *(sum(1 for k in kinds if k in ks) for ks in
                    (("ip4", "no_route", "ttl1"), ("ip4", "ttl1"), ("arp", "arp_reply")))]
    assert out["packets"] == reached
    assert out["calls"] == [1 if r else 0 for r in reached]
    # each node was given its packets in arrival order
    for i, name in enumerate(L.NODE_NAMES):
        assert out["given"][i] == [b for b in vec.tolist() if b in set(out["given"][i])]
    assert out["given"][0] == vec.tolist()


def test_g_is_left_as_it_was():
    g, vec = L.make_graph(50, seed=3)
    before = [a.copy() for a in g]
    L.reference(g, vec)
    L.run_once(L.dispatch_packet, g, vec)
    assert all(np.array_equal(a, b) for a, b in zip(g, before))


def test_rewrite_keeps_the_checksum_right_for_every_ttl():
    kinds = ["ip4"] * 256
    g, vec = L.make_graph(256, seed=11, kinds=kinds)
    g.pkts[vec, 22] = np.arange(256) % 254 + 2           # TTL 2..255
    g.pkts[vec, 26] = np.arange(256)                     # vary the source: many checksums
    for b in vec:
        c = L.ip4_checksum(g.pkts[b, 14:34])
        g.pkts[b, 24], g.pkts[b, 25] = c >> 8, c & 0xFF
    out = L.reference(g, vec)
    assert len(out["tx"]) == 256
    for b in vec:
        h = out["pkts"][b, 14:34]
        assert (int(h[10]) << 8 | int(h[11])) == L.ip4_checksum(h), b
        assert h[8] == g.pkts[b, 22] - 1


def test_both_dispatchers_agree_but_on_order_and_calls():
    g, vec = L.make_graph(256, seed=12, trace=True)
    a, b = L.run_once(L.dispatch_packet, g, vec), L.reference(g, vec)
    assert sorted(a["tx"]) == sorted(b["tx"]) and sorted(a["drop"]) == sorted(b["drop"])
    assert a["tx"] != b["tx"]                         # arrival order against node order
    assert np.array_equal(a["pkts"], b["pkts"]) and a["errors"] == b["errors"]
    assert a["packets"] == b["packets"] == a["calls"]  # packet at a time: a call per packet
    assert b["calls"] == [1, 1, 1, 1]
    assert L.differences(a, b, ("pkts", "errors", "packets")) == []


def test_inputs_are_what_they_claim():
    g, vec = L.make_graph(300 - 44, seed=13, spare=44)
    assert len(set(vec.tolist())) == vec.size == 256 and vec.max() < 300
    assert vec.tolist() != sorted(vec.tolist())       # shuffled buffers, not 0..n-1
    assert g.trace.shape[1] == 0                      # no tracing unless asked
    for name, (n, kinds) in L.EDGE_CASES.items():
        g, vec = L.edge_case(name)
        assert vec.size == n <= L.VMAX, name
        out = L.reference(g, vec)
        if kinds is not None:
            want = [b for b, k in zip(vec.tolist(), kinds) if L.FATE[k] == "tx"]
            assert sorted(out["tx"]) == sorted(want), name
    out = L.reference(*L.edge_case("all dropped by the first node"))
    assert out["calls"] == [1, 0, 0, 0] and len(out["drop"]) == 256
    out = L.reference(*L.edge_case("all dropped midway (no route)"))
    assert out["calls"] == [1, 1, 0, 0] and out["errors"][L.E_NO_ROUTE] == 100
    out = L.reference(*L.edge_case("empty vector (n=0)"))
    assert out["calls"] == [0, 0, 0, 0] and out["tx"] == out["drop"] == []


@njit(nogil=True)
def _lifo(g, frames, counts, nxt):
    """Wrong on purpose: each next node gets its packets in reverse order."""
    for node in range(N_NODES):
        m = counts[node]
        if m == 0:
            continue
        call_node(node, g, frames[node], m, nxt)
        for k in range(m - 1, -1, -1):
            t = nxt[k]
            frames[t, counts[t]] = frames[node, k]
            counts[t] += 1
        counts[node] = 0


@njit(nogil=True)
def _loses_drops(g, frames, counts, nxt):
    """Wrong on purpose: forgets what was dropped."""
    for node in range(N_NODES):
        m = counts[node]
        if m == 0:
            continue
        call_node(node, g, frames[node], m, nxt)
        for k in range(m):
            t = nxt[k]
            if t != DROP:
                frames[t, counts[t]] = frames[node, k]
                counts[t] += 1
        counts[node] = 0


@njit(nogil=True)
def _allocates(g, frames, counts, nxt):
    tmp = np.empty(1, np.int32)
    tmp[0] = counts[PARSE]
    counts[PARSE] = tmp[0]
    L.dispatch_vector(g, frames, counts, nxt)


def test_differences_catch_wrong_dispatchers():
    g, vec = L.make_graph(256, seed=14, trace=True)
    want = L.reference(g, vec)
    assert L.differences(want, want, ("tx", "drop", "pkts", "errors", "packets", "calls", "given", "counts")) == []
    d = L.differences(L.run_once(_lifo, g, vec), want, ("given", "tx", "drop"))
    assert any("another order" in s for s in d) and any("was given" in s for s in d)
    d = L.differences(L.run_once(_loses_drops, g, vec), want, ("tx", "drop"))
    assert d == [f"frames[DROP] holds 0 buffers, expected {len(want['drop'])} ({len(want['drop'])} missing, "
                 "0 not expected)"]
    d = L.differences(L.run_once(L.dispatch_packet, g, vec), want, ("calls",))
    assert d and d[0].startswith("calls per node parse 256 (expected 1)")
    frames, counts, nxt = L.new_frames()
    assert ex.compiles_without_nrt(L.dispatch_vector, g, frames, counts, nxt) == (True, None)
    ok, why = ex.compiles_without_nrt(_allocates, g, frames, counts, nxt)
    assert not ok and "empty" in why


def test_measuring_tools_run_and_count_calls(monkeypatch):
    monkeypatch.setenv("LABKIT_QUICK", "1")
    assert L.time_dispatch(L.dispatch_vector, 64, n=512, rounds=2) > 0
    nodes = L.per_node_cycles(L.dispatch_vector, 256, n=1024)
    assert nodes["parse"][0] == 4 and all(c > 0 for _, c in nodes.values())
    nodes = L.per_node_cycles(L.dispatch_packet, 256, n=1024)
    assert nodes["parse"][0] == 1024
