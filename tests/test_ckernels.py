"""The C kernels (labkit.bench.ckernels) and the numba data plane agree, packet by packet.

A vector of valid and malformed frames (make_traffic(malformed=0.3)) goes
through both: the C vector function, and the numba side (the node kernels
called one by one, and the generated dispatch). They must agree on which
packets are forwarded, on the drop reason of every dropped packet, and on the
bytes of every frame afterwards.
"""
import numpy as np
import pytest

from labkit.bench import ckernels as ck
from labkit.graph import kernels as K
from labkit.graph.fib import Fib
from labkit.memory.layouts import aligned_zeros
from labkit.nic.traffic import make_traffic

OK, WHY = ck.available()
pytestmark = pytest.mark.skipif(not OK, reason=f"C kernels unavailable: {WHY}")

N = 256


@pytest.fixture(scope="module")
def fib():
    return Fib.random(n_routes=20_000, n_adj=16, seed=3, alloc=aligned_zeros)


@pytest.fixture(scope="module")
def traffic(fib):
    # 10% of destinations match no route, so no_route drops are covered too
    dst = fib.sample_destinations(512, seed=5, miss_share=0.1)
    return make_traffic(size=64, flows=512, malformed=0.3, seed=7, dst=dst)


def _numba_codes(graph, vec, tables):
    """Per packet: 0 or the C-style code -(100 * node + k), by calling the kernels."""
    a = vec.arena
    out = np.zeros(vec.n, np.int32)
    for i in range(vec.n):
        base, ln = int(vec.handles[i]) << 6, int(vec.lengths[i])
        if graph == "l2fwd":
            steps = [lambda: K.l2_macswap_one(a, base, ln)]
        else:
            steps = [lambda: K.eth_input_one(a, base, ln),
                     lambda: K.ip4_input_one(a, base, ln),
                     lambda: K.ip4_lookup_one(a, base, ln, tables["fib_tbl24"], tables["fib_tbl8"],
                                              tables["fib_adj_valid"]),
                     lambda: K.ip4_rewrite_one(a, base, ln, tables["adj_mac"])]
        for node, step in enumerate(steps, 1):
            c = step()
            if c < 0:
                out[i] = -(100 * node - c)
                break
    return out


@pytest.mark.parametrize("graph", ["l2fwd", "ip4"])
def test_c_and_numba_kernels_agree(graph, traffic, fib):
    tables = fib.tables() if graph == "ip4" else None
    vc, vn = ck.Vector(traffic, N), ck.Vector(traffic, N)
    assert len(set(vc.kinds.tolist())) > 3, "the vector should mix valid and malformed frames"
    c_codes = ck.run_vector(graph, vc.arena, vc.handles, vc.lengths, tables)
    n_codes = _numba_codes(graph, vn, tables)
    assert c_codes.tolist() == n_codes.tolist()
    if graph == "ip4":
        assert (c_codes == 0).any() and (c_codes < 0).any()
        reasons = {ck.decode(graph, c) for c in c_codes.tolist()}
        assert {"forwarded", "ip4_bad_checksum", "ttl_expired", "unknown_ethertype", "no_route"} <= reasons
    for i in range(N):
        assert vc.frame(i) == vn.frame(i), f"packet {i}: frame bytes differ"
    # the adjacency the lookup wrote into the metadata line, for forwarded packets
    for i in np.flatnonzero(c_codes == 0):
        b = int(vc.handles[i]) << 6
        assert vc.arena[b:b + 4].tobytes() == vn.arena[b:b + 4].tobytes()


@pytest.mark.parametrize("graph", ["l2fwd", "ip4"])
def test_c_agrees_with_generated_dispatch(graph, traffic, fib):
    """The timed numba harness runs the generated dispatch: same forwarded set, same bytes."""
    tables = fib.tables() if graph == "ip4" else None
    vc, vn = ck.Vector(traffic, N), ck.Vector(traffic, N)
    c_codes = ck.run_vector(graph, vc.arena, vc.handles, vc.lengths, tables)
    _, n_tx, _ = ck.time_numba(graph, vn, 1, tables)
    assert n_tx == int((c_codes == 0).sum())
    for i in range(N):
        assert vc.frame(i) == vn.frame(i), f"packet {i}: frame bytes differ"


@pytest.fixture(scope="module")
def clean(fib):
    """Every frame valid and routed: every vector goes one way (the enqueue step's copy)."""
    return make_traffic(size=64, flows=512, seed=7, dst=fib.sample_destinations(512, seed=5, miss_share=0.0))


@pytest.mark.parametrize("kind", ["mixed", "clean"])
@pytest.mark.parametrize("graph", ["l2fwd", "ip4"])
def test_the_c_twin_of_the_dispatch_moves_counts_and_times_as_the_generated_one(graph, kind, traffic, clean, fib):
    """The fair comparison: the C dispatch sends the same packets in the same order, frees the
    same buffers, counts every drop under the same reason and every node's calls and packets,
    and leaves the same bytes; on mixed vectors and on vectors that go one way."""
    traffic = traffic if kind == "mixed" else clean
    tables = fib.tables() if graph == "ip4" else None
    vc, vn = ck.Vector(traffic, N), ck.Vector(traffic, N)
    cyc, n_tx, counters, stats, tx_h, free_h = ck.time_c_dispatch(graph, vc, 3, tables)
    seen = {}
    _, nn_tx, nstats = ck.time_numba(graph, vn, 3, tables, out=seen)
    assert cyc > 0 and n_tx == nn_tx > 0 and (n_tx < N if kind == "mixed" else n_tx == N)
    assert tx_h.tolist() == seen["tx_h"].tolist() and free_h.tolist() == seen["free_h"].tolist()
    assert counters.tolist() == seen["counters"].tolist() and counters.sum() == 3 * (N - n_tx)
    assert stats[:, :2].tolist() == nstats[:, :2].tolist() and (stats[:, 2] > 0).all()
    for i in range(N):
        assert vc.frame(i) == vn.frame(i), f"packet {i}: frame bytes differ"


@pytest.mark.parametrize("graph", ["l2fwd", "ip4"])
def test_timing_harnesses_restore_frames(graph, traffic, fib):
    """Many passes see the same input (TTL would expire otherwise): the same
    packets are forwarded after 300 passes as after one."""
    tables = fib.tables() if graph == "ip4" else None
    v = ck.Vector(traffic, N)
    one = ck.run_vector(graph, v.arena, v.handles, v.lengths, tables)
    v = ck.Vector(traffic, N)
    cyc, many = ck.time_c(graph, v, 300, tables)
    assert cyc > 0 and many.tolist() == one.tolist()
    cyc, n_tx, stats = ck.time_numba(graph, ck.Vector(traffic, N), 300, tables)
    assert cyc > 0 and n_tx == int((one == 0).sum())
    assert stats[0, 1] == 300 * N


def test_decode_names_every_code():
    assert ck.decode("ip4", 0) == "forwarded"
    assert ck.decode("ip4", -205) == "ip4_bad_checksum"
    assert ck.decode("ip4", -301) == "no_route"
    assert ck.decode("l2fwd", -101) == "macswap_runt"


def test_no_compiler_message(monkeypatch):
    monkeypatch.setattr(ck, "_compiler", lambda: None)
    assert ck.available() == (False, "no C compiler (cc) found; install gcc to compare with C")


def test_bench_ratios_measure_each_pair_and_the_targets_judge_them(monkeypatch):
    """Section 4 of `labkit bench` on small labs: each technique off and on, its ratio, and the
    targets table's rows for them (met exactly when the ratio reaches the target)."""
    from labkit.bench import compute
    from labkit.run.knobs import Knobs
    small = dict(flows=64)
    monkeypatch.setattr(compute, "RATIOS", (
        ("unroll", "quad over single", small, Knobs(unroll=1), Knobs(unroll=4), None),
        ("prefetch", "prefetch over none", small, Knobs(prefetch=False), Knobs(prefetch=True), None),
        ("simd", "simd over scalar", dict(malformed=0.3, mix="mixed"), Knobs(), Knobs(variant="simd"), None),
        ("simd_node", "  ip4-input alone", dict(malformed=0.3, mix="mixed"), Knobs(), Knobs(variant="simd"),
         "ip4-input")))
    monkeypatch.setattr(compute, "_packets", lambda batch, graph, quick: 3000)
    seen = []
    res = compute.bench_ratios(runs=2, quick=True, progress=seen.append)
    assert list(res) == ["unroll", "prefetch", "simd", "simd_node"] and seen
    for r in res.values():
        assert r["off"] > 0 and r["on"] > 0 and r["ratio"] == pytest.approx(r["off"] / r["on"])
    assert res["simd_node"]["on"] < res["simd"]["on"]          # one node costs less than the whole graph
    rows = compute._targets({}, {g: {"speedup": 200.0} for g in compute.GRAPHS}, {"skipped": "no C"}, res)
    judged = {t["target"]: t for t in rows if t["unit"] == "x" and "numba" not in t["target"]
              and "JIT" not in t["target"]}
    assert set(judged) == {r["label"].strip() for r in res.values()}
    for name, r in res.items():
        t = judged[r["label"].strip()]
        assert t["met"] == (r["ratio"] >= compute.TARGETS[name.split("_")[0]])
