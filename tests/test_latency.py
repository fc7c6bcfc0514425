"""Per-packet latency: the stamp, the histogram, and latency on every backend.

No test asserts a time: a delay the test injects itself is found again, the
percentiles agree with numpy's, and stamped runs give the same verdicts and
bytes as unstamped ones.
"""
import os

import numpy as np
import pytest
from conftest import lab_network

from labkit import Knobs
from labkit.memory.layouts import DATA_OFF, LINE_SHIFT
from labkit.memory.mempool import make_pool
from labkit.memory.ring import Ring, ring_dequeue, ring_enqueue
from labkit.nic import labnet
from labkit.nic import latency as lat
from labkit.nic import memory as nicmem
from labkit.nic.pcap import read_frames
from labkit.nic.traffic import KIND_CODES, make_traffic
from labkit.run.knobs import KnobError
from labkit.run.lab import Lab, LabError
from labkit.run.measure import now_tsc, tsc_hz


# -- the histogram ---------------------------------------------------------------------------

def _hist_of(values):
    h = lat.new_hist()
    for v in values:
        lat.hist_add(h, int(v))
    return h


def test_buckets_cover_every_value_once_in_order():
    edges = [lat.bucket_range(b) for b in range(lat.N_BUCKETS)]
    for (lo, width), (nxt, _) in zip(edges, edges[1:]):
        assert lo + width == nxt                        # contiguous, no gap, no overlap
    for v in list(range(200)) + [2**k + d for k in range(6, 41) for d in (-1, 0, 1)]:
        b = lat.bucket_of(v)
        lo, width = lat.bucket_range(b)
        assert lo <= v < lo + width, v
        assert width <= max(1, lo / lat.SUB)            # within 1/32 of the value


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_percentiles_agree_with_numpy(seed):
    rng = np.random.default_rng(seed)
    values = np.concatenate([rng.lognormal(8, 1.5, 5000), rng.integers(0, 40, 300)]).astype(np.int64)
    h = _hist_of(values)
    assert lat.samples(h) == values.size and h[lat.H_MAX] == values.max()
    for p in (0.1, 50, 90, 99, 99.9, 100):
        exact = np.percentile(values, p, method="inverted_cdf")
        assert abs(lat.percentile(h, p) - exact) <= exact / lat.SUB / 2 + 0.5, p


def test_merge_is_the_histogram_of_everything():
    rng = np.random.default_rng(7)
    a, b = rng.integers(0, 10**7, 1000), rng.integers(0, 10**4, 500)
    m = lat.merge([_hist_of(a), _hist_of(b)])
    assert np.array_equal(m, _hist_of(np.concatenate([a, b])))


def test_the_compiled_histogram_is_the_python_one():
    values = [0, 1, 31, 32, 33, 63, 64, 1000, 123456, 2**41, 2**50, -5]
    compiled, python = lat.new_hist(), lat.new_hist()
    for v in values:
        lat.hist_add(compiled, v)
        lat.hist_add.py_func(python, v)
    assert np.array_equal(compiled, python)
    assert compiled[lat.H_MAX] == 2**50 and compiled[0] == 2      # -5 counts as 0; the max stays exact


def test_summary_without_samples_says_so():
    s = lat.summarize(lat.new_hist(), 3e9)
    assert s["samples"] == 0 and s["p99"] is None and s["max"] is None
    assert s["load"].startswith("closed loop")
    assert lat.summarize(_hist_of([3000]), 3e9, offered=10_000)["load"] == "open loop, 10000 pps offered"


# -- the stamp ---------------------------------------------------------------------------------

def test_where_a_stamp_fits():
    udp = make_traffic(size=60, flows=4, mix="udp")
    tcp = make_traffic(size=60, flows=4, mix="tcp")
    assert set(lat.stamp_offsets(udp.frames, udp.lengths)) == {60 - 16}      # after the UDP header
    assert set(lat.stamp_offsets(tcp.frames, tcp.lengths)) == {60 - 16}      # after TCP's ports and seq
    bad = make_traffic(size=60, flows=4, mix="mixed", malformed=0.9, seed=3)
    offs = lat.stamp_offsets(bad.frames, bad.lengths)
    seen = set()
    for t, kind in enumerate(bad.kinds):
        f, n = bad.frames[t], int(bad.lengths[t])
        ip4 = n > 14 and (f[12], f[13]) == (8, 0)
        headers = 14 + max(f[14] & 0xF, 5) * 4 + 8 if ip4 else 14      # Ethernet, IPv4 with options, 8 of L4
        assert offs[t] == (n - 16 if n - 16 >= headers else -1), kind
        seen.add((int(kind), offs[t] >= 0))
    assert (KIND_CODES["runt"], False) in seen and (KIND_CODES["ip4_truncated"], False) in seen
    assert (KIND_CODES["valid"], True) in seen


def test_a_stamp_read_back_gives_the_delay_injected():
    """The in-memory NIC's own functions: frames stamped as if they arrived D cycles ago
    (open loop, t_start in the past) come back with a latency of at least D, and not much more."""
    pool = make_pool(True, 512)
    rx, tx = Ring(256), Ring(256)
    t = make_traffic(size=128, flows=16)
    stamp_at = lat.stamp_offsets(t.frames, t.lengths)
    nst = np.zeros(nicmem.NST_SIZE, np.int64)
    counters = np.zeros(8, np.int64)
    h = np.zeros(64, np.uint32)
    hist = lat.new_hist()
    delay = int(tsc_hz() / 100)                              # 10 ms
    got = pool.alloc(pool.a, pool.b, h, 64)
    tmp_l, tmp_hash = np.zeros(256, np.uint32), np.zeros(256, np.uint32)
    out = np.zeros(256, np.uint32)
    no_cap = (np.zeros(0, np.uint8), np.zeros(0, np.uint32))
    for _ in range(2):          # the first calls compile (seconds): before the clock is read
        nicmem.nic_rx_dma(pool.arena, h, got, 0, t.frames, t.lengths, t.seq, pool.max_frame, rx.desc, rx.cur,
                          tmp_l, tmp_hash, nst, counters, stamp_at, hist, 0, 1.0)
        nicmem.nic_tx_collect(pool.arena, tx.desc, tx.cur, out, tmp_l, tmp_hash, pool.max_frame, *no_cap, nst,
                              counters, hist)
    # frame i is due at t_start + i: all 64 of them long ago
    used = nicmem.nic_rx_dma(pool.arena, h, got, 64, t.frames, t.lengths, t.seq, pool.max_frame, rx.desc, rx.cur,
                             tmp_l, tmp_hash, nst, counters, stamp_at, hist, now_tsc() - delay, 1.0)
    assert used == 64
    hh, ll = np.zeros(256, np.uint32), np.zeros(256, np.uint32)
    n = ring_dequeue(rx.desc, rx.cur, hh, ll, tmp_hash, 256)
    assert ring_enqueue(tx.desc, tx.cur, hh, ll, tmp_hash, n) == n                # "forwarded" untouched
    k = nicmem.nic_tx_collect(pool.arena, tx.desc, tx.cur, out, tmp_l, tmp_hash, pool.max_frame, *no_cap, nst,
                              counters, hist)
    pool.free(pool.a, pool.b, out, k)
    assert k == 64 and lat.samples(hist) == 64 and hist[lat.H_UNSTAMPED] == 0
    # a percentile is its bucket's middle: up to half a bucket (1/64 of the value) below the truth
    assert delay * (1 - 1 / (2 * lat.SUB)) <= lat.percentile(hist, 0.1) and lat.percentile(hist, 100) < 2 * delay
    assert pool.n_free == pool.capacity


def test_a_frame_without_a_stamp_is_counted_unstamped():
    hist = lat.new_hist()
    buf = np.zeros(256, np.uint8)
    lat.take_stamp(buf, 0, 60, 1000, hist)                 # zeros: no magic
    lat.take_stamp(buf, 0, 10, 1000, hist)                 # too short to hold one
    lat.write_stamp(buf, 100 - 16, 400, 9)
    lat.take_stamp(buf, 0, 100, 1000, hist)
    assert hist[lat.H_UNSTAMPED] == 2 and lat.samples(hist) == 1 and hist[lat.H_MAX] == 600


# -- on the in-memory NICs --------------------------------------------------------------------

TRAFFIC = dict(size="imix", flows=512, mix="mixed", malformed=0.3, seed=5)


def _captured(tmp_path, name, latency, graph="ip4", **kw):
    out = tmp_path / f"{name}.pcap"
    with Lab(graph=graph, pcap_out=str(out), latency=latency, **TRAFFIC, **kw) as lab:
        r = lab.run(packets=20_000)
    assert r.conserved and r.pool_ok
    return r, read_frames(str(out))


@pytest.mark.parametrize("graph", ["ip4", "acl", "l2fwd"])
def test_stamps_change_no_verdict_and_no_byte_outside_the_stamp(tmp_path, graph):
    plain, frames0 = _captured(tmp_path, "plain", False, graph)
    stamped, frames1 = _captured(tmp_path, "stamped", True, graph)
    assert plain.latency is None
    assert (plain.forwarded, plain.dropped) == (stamped.forwarded, stamped.dropped)
    assert len(frames0) == len(frames1) == plain.forwarded
    lt = stamped.latency
    changed = 0
    for a, b in zip(frames0, frames1):
        assert len(a) == len(b)
        at = lat.stamp_offset(np.frombuffer(a, np.uint8), len(a))
        if at < 0:
            assert a == b
        else:
            assert a[:at] == b[:at] and a[at:] != b[at:]
            changed += 1
    assert changed == lt["samples"] > 0 and lt["unstamped"] == plain.forwarded - changed
    assert lt["p50"] <= lt["p90"] <= lt["p99"] <= lt["p999"] <= lt["max"]


def test_open_loop_in_memory_counts_what_the_ring_could_not_take():
    """Offered far faster than the data plane goes (jit off), the RX ring overflows:
    counted rx_queue_full, and every frame still accounted for."""
    with Lab(knobs=Knobs(jit=False, batch=32), rate=1e9, latency=True, ring_size=64) as lab:
        r = lab.run(packets=3000)
    assert r.sent == 3000 and r.conserved and r.pool_ok
    assert r.dropped.get("rx_queue_full", 0) > 0
    assert r.latency["samples"] == r.forwarded > 0 and r.latency["load"] == "open loop, 1e+09 pps offered"


def test_open_loop_in_memory_at_a_low_rate_offers_that_rate():
    with Lab(rate=20_000, latency=True) as lab:
        r = lab.run(packets=2000)
    assert r.sent == r.forwarded == 2000 and r.conserved and r.pool_ok
    assert r.latency["samples"] == 2000 and 0 < r.latency["p50"] <= r.latency["max"]
    # 2,000 frames at 20,000 per second take 0.1 s: the NIC did not send them all at once
    assert r.seconds >= 0.09


@pytest.mark.parametrize("model", ["rtc", "pipeline", "lthreads", "threads"])
def test_latency_with_workers(model):
    with Lab(workers=2, knobs=Knobs(model=model), latency=True, flows=256) as lab:
        r = lab.run(packets=40_000)
    assert r.conserved and r.pool_ok and r.forwarded > 0          # (a full queue drops: counted)
    assert r.latency["samples"] == r.forwarded and r.latency["p50"] <= r.latency["max"]


@pytest.mark.parametrize("workers", [1, 2])
def test_one_frame_in_n_is_stamped(workers):
    with Lab(latency=16, size=128, workers=workers) as lab:     # 128 bytes: every frame has room for a stamp
        r = lab.run(packets=16_000)
    assert r.conserved and r.pool_ok
    lt = r.latency
    assert lt["every"] == 16 and lt["samples"] + lt["unstamped"] == r.forwarded
    if workers == 1:             # frames 0, 16, 32...: exactly one in 16 of what was sent
        assert lt["samples"] == 1000
    else:                        # wire positions 0, 16, 32...; a full queue drops some of them
        assert 0 < lt["samples"] <= 1000


def test_bad_latency_and_knob_values_say_what_to_use():
    for bad in ("yes", 3, 0.5, 2048, -1):
        with pytest.raises(LabError, match="latency"):
            Lab(latency=bad)
    with pytest.raises(ValueError, match="power of two"):
        lat.new_hist(6)
    for bad in (dict(poll="sometimes"), dict(rx_ring="v2"), dict(coalesce_ms=0), dict(coalesce_ms=1.5),
                dict(block_kb=48), dict(block_kb=True)):
        with pytest.raises(KnobError, match=next(iter(bad))):
            Knobs(**bad)


# -- on veth ---------------------------------------------------------------------------------

WHY = labnet.why_not(tap=True)
needs_net = pytest.mark.skipif(WHY is not None, reason=f"needs the lab network: {WHY}")


@pytest.fixture(scope="module")
def lab_net():
    yield from lab_network(f"labkit-l{os.getpid()}")


@needs_net
@pytest.mark.parametrize("poll", ["busy", "wait", "adaptive"])
@pytest.mark.parametrize("rx_ring", ["block", "frame"])
def test_every_poll_mode_and_ring_conserves_100k_on_veth(lab_net, poll, rx_ring):
    with Lab(backend="veth", graph="ip4", knobs=Knobs(poll=poll, rx_ring=rx_ring), latency=True,
             malformed=0.1, mix="mixed") as lab:
        r = lab.run(packets=100_000)
    assert r.sent == 100_000 and r.conserved and r.pool_ok, (r.forwarded, r.dropped)
    lt = r.latency
    assert lt["samples"] + lt["unstamped"] == r.forwarded and lt["samples"] > 0
    assert lt["p50"] <= lt["p99"] <= lt["max"]


@needs_net
def test_the_generator_stamps_one_frame_in_n(lab_net):
    with Lab(backend="veth", graph="l2fwd", latency=8, size=128, rate=100_000) as lab:
        r = lab.run(packets=8000)
    assert r.conserved and r.forwarded == 8000
    assert r.latency["samples"] == 1000 and r.latency["unstamped"] == 7000 and r.latency["every"] == 8


@needs_net
@pytest.mark.parametrize("backend", ["tap", "veth-copy"])
def test_latency_on_the_other_ports(lab_net, backend):
    knobs = Knobs(copy=True) if backend == "veth-copy" else Knobs()
    with Lab(backend=backend.split("-")[0], graph="l2fwd", knobs=knobs, latency=True, rate=50_000) as lab:
        r = lab.run(packets=5000)
    assert r.conserved and r.pool_ok and r.latency["samples"] + r.latency["unstamped"] == r.forwarded
    assert r.latency["load"] == "open loop, 50000 pps offered"


@needs_net
def test_coalescing_knobs_reach_the_ring(lab_net):
    with Lab(backend="veth", graph="l2fwd", knobs=Knobs(coalesce_ms=5, block_kb=16)) as lab:
        rx = lab.net.duts[0].rx
        assert rx.mode == "block" and rx.cur[5] == 16 << 10 and rx.cur[6] == (2 << 20) // (16 << 10)
        r = lab.run(packets=5000)
    assert r.conserved and r.latency is None
    with pytest.raises(LabError, match="rx_ring"):
        Lab(backend="veth", workers=2, knobs=Knobs(rx_ring="frame"))
