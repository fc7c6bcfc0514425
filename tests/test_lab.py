"""The whole pipeline on the in-memory NIC: conservation, no leaks, drops by
reason, knobs that must not change results, the pcap source and sink."""
import subprocess
import shutil

import numpy as np
import pytest

from labkit.nic.pcap import PcapWriter, read_frames
from labkit.nic.traffic import FORWARDED_KINDS, KIND_NAMES, make_traffic
from labkit.run.knobs import Knobs, KnobError
from labkit.run.lab import Lab, LabError

GRAPHS = ["l2fwd", "ip4", "acl"]


def run(graph="ip4", packets=5000, **kw):
    knobs = kw.pop("knobs", Knobs())
    lab = Lab(graph=graph, knobs=knobs, **kw)
    return lab, lab.run(packets=packets)


def assert_sound(res, lab, sent):
    assert res.sent == sent
    assert res.conserved, (res.sent, res.forwarded, res.dropped)
    assert res.pool_ok and lab.pool.check()


@pytest.mark.parametrize("graph", GRAPHS)
@pytest.mark.parametrize("knobs", [
    Knobs(), Knobs(batch=1), Knobs(batch=31, unroll=2), Knobs(batch=33, unroll=4, prefetch=False),
    Knobs(layout="aos", batch=7), Knobs(copy=True), Knobs(mempool=False), Knobs(hugepages=False),
], ids=lambda k: ",".join(f"{a}={b}" for a, b in k.as_dict().items() if b != getattr(Knobs(), a)) or "defaults")
def test_conservation_on_every_graph_and_knob(graph, knobs):
    lab, res = run(graph, 3000, knobs=knobs, malformed=0.2)
    assert_sound(res, lab, 3000)
    assert res.forwarded > 0 and sum(res.dropped.values()) > 0


@pytest.mark.parametrize("graph", GRAPHS)
def test_jit_off_twin_gives_identical_results(graph):
    """JIT on and off differ in speed only: same counts, same bytes out."""
    outs = []
    for jit in (True, False):
        lab, res = run(graph, 600, knobs=Knobs(jit=jit, batch=16), malformed=0.3, flows=64)
        assert_sound(res, lab, 600)
        outs.append((res.forwarded, res.dropped, [r.packets for r in res.runtime]))
    assert outs[0] == outs[1]


@pytest.mark.parametrize("graph", ["ip4", "acl"])
@pytest.mark.parametrize("order", ["spread", "sorted", "shuffled"])
def test_every_variant_gives_identical_results(graph, order):
    """A node variant differs in how it decides only: same counts, same packets per node; the simd
    variant in both layouts (its scratch rows sit in frames_h either way) and at a batch that does
    not end on a vector's lanes."""
    outs = []
    for variant, layout, batch in (("scalar", "soa", 64), ("branchless", "soa", 64), ("simd", "soa", 61),
                                   ("simd", "aos", 64)):
        lab = Lab(graph=graph, knobs=Knobs(variant=variant, batch=batch, layout=layout), malformed=0.3,
                  mix="mixed", order=order, flows=64)
        n = int(lab.traffic.seq.size)                   # one whole pass: every kind, sorted or not
        res = lab.run(packets=n)
        assert_sound(res, lab, n)
        outs.append((res.forwarded, res.dropped, [r.packets for r in res.runtime]))
    assert all(o == outs[0] for o in outs) and sum(outs[0][1].values()) > 0


@pytest.mark.parametrize("graph", ["ip4"])       # the loop itself: test_kernels, packet by packet
def test_interleaved_and_repeated_multi_loops_give_the_same_frames(graph, tmp_path):
    """A dual or quad loop that interleaves ip4-lookup's stages, or repeats its function, or a
    single loop: the same counts and every output frame byte for byte, at batch sizes around the
    loop's width (the remainder loops run) and with prefetch on and off."""
    outs = []
    for i, (unroll, interleave, batch, pf) in enumerate(
            ((1, False, 64, True), (4, False, 61, True), (4, True, 7, False), (2, True, 253, True))):
        out = tmp_path / f"{i}.pcap"
        lab = Lab(graph=graph, knobs=Knobs(unroll=unroll, interleave=interleave, batch=batch, prefetch=pf),
                  malformed=0.3, mix="mixed", flows=4096, pcap_out=str(out))
        res = lab.run(packets=3000)
        assert_sound(res, lab, 3000)
        outs.append((res.forwarded, res.dropped, [r.packets for r in res.runtime], read_frames(str(out))))
    assert outs[0][0] > 0 and sum(outs[0][1].values()) > 0 and len(outs[0][3]) == outs[0][0]
    assert all(o == outs[0] for o in outs)


def test_an_order_arranges_the_same_frames_and_a_capture_keeps_its_own(tmp_path):
    labs = {o: Lab(graph="ip4", malformed=0.3, mix="mixed", flows=64, order=o) for o in ("spread", "sorted")}
    a, b = (labs[o].traffic for o in ("spread", "sorted"))
    assert np.array_equal(np.sort(a.seq), np.sort(b.seq)) and not np.array_equal(a.seq, b.seq)
    with pytest.raises(LabError, match="order='sorted' arranges generated traffic"):
        Lab(graph="ip4", pcap_in=str(tmp_path / "x.pcap"), order="sorted")
    with pytest.raises(ValueError, match="order='random': use 'spread', 'sorted', 'shuffled'"):
        Lab(graph="ip4", order="random")


def test_every_malformed_kind_dropped_for_its_reason():
    """Each template's fate in the ip4 graph: valid and IPv4-with-options are
    forwarded; each malformed kind is dropped for the reason of its name."""
    lab = Lab(graph="ip4", malformed=0.5, flows=16)
    t = lab.traffic
    n = int(t.seq.size)
    res = lab.run(packets=n)
    assert_sound(res, lab, n)
    kinds = t.kinds[t.seq]
    n_fwd = int(np.isin(kinds, list(FORWARDED_KINDS)).sum())
    assert res.forwarded == n_fwd
    reason = {"runt": "eth_runt"}
    expect = {}
    for code, name in KIND_NAMES.items():
        if code not in FORWARDED_KINDS and (kinds == code).any():
            expect[reason.get(name, name)] = int((kinds == code).sum())
    assert res.dropped == expect


def test_pool_smaller_than_ring_counts_mempool_empty_and_recovers():
    lab = Lab(graph="l2fwd", pool_size=64, knobs=Knobs(batch=32))
    res = lab.run(packets=20000)
    assert_sound(res, lab, 20000)
    assert res.dropped.get("mempool_empty", 0) > 0          # exhaustion is counted...
    assert res.forwarded > 5 * 64                            # ...and each buffer is reused many times


def test_copy_mode_runs_dry_and_counts():
    lab = Lab(graph="l2fwd", pool_size=40, knobs=Knobs(copy=True, batch=32), ring_size=32)
    res = lab.run(packets=5000)
    assert_sound(res, lab, 5000)


def test_seconds_run_stops_and_conserves():
    lab = Lab(graph="ip4", knobs=Knobs(batch=64))
    res = lab.run(seconds=0.2)
    assert res.sent > 0 and res.conserved and res.pool_ok
    assert 0.1 < res.seconds < 5
    assert res.cycles_per_packet > 0 and res.pps > 0 and res.tsc_hz > 1e8


def test_runtime_table_counts_every_packet_each_node_saw():
    lab, res = run("ip4", 4000, malformed=0.1)
    rows = {r.name: r for r in res.runtime}
    assert list(rows) == ["eth-input", "ip4-input", "ip4-lookup", "ip4-rewrite"]
    assert rows["eth-input"].packets == 4000
    assert rows["ip4-rewrite"].packets == res.forwarded
    assert all(r.calls >= r.packets / 256 for r in rows.values() if r.packets)


def test_output_frames_are_rewritten_routed_packets(tmp_path):
    """The sink's pcap holds what ip4 forwarded: TTL 63, checksum still valid,
    MACs of the adjacency the FIB chose; tcpdump and tshark can read it."""
    scapy = pytest.importorskip("scapy.all")
    out = tmp_path / "out.pcap"
    lab = Lab(graph="ip4", pcap_out=str(out), flows=32)
    res = lab.run(packets=500)
    frames = read_frames(str(out))
    assert len(frames) == res.forwarded == 500
    for raw in frames[:50]:
        p = scapy.Ether(raw)
        ip = p[scapy.IP]
        assert ip.ttl == 63
        chk = ip.chksum
        del ip.chksum
        assert scapy.IP(bytes(ip)).chksum == chk
        adj = lab.fib.lookup(int.from_bytes(scapy.inet_aton(ip.dst), "big"))
        assert bytes.fromhex(p.dst.replace(":", "")) == bytes(lab.fib.adj_mac[adj, :6])
    for tool, args in (("tcpdump", ["-nn", "-r"]), ("tshark", ["-r"])):
        if shutil.which(tool):
            r = subprocess.run([tool, *args, str(out)], capture_output=True, text=True)
            assert r.returncode == 0 and len(r.stdout.strip().splitlines()) == 500


def test_pcap_source_replays_once_through_any_graph(tmp_path):
    t = make_traffic(flows=20, malformed=0.3, seed=4)
    src = tmp_path / "in.pcap"
    with PcapWriter(str(src)) as w:
        for i in range(200):
            w.write(t.frame(int(t.seq[i])))
        w.write(bytes(3000))                                  # a jumbo: counted, not fatal
    for graph in GRAPHS:
        lab = Lab(graph=graph, pcap_in=str(src))
        res = lab.run()
        assert_sound(res, lab, 201)
        assert res.dropped.get("rx_frame_too_long") == 1


def test_l2fwd_swaps_macs_on_the_wire(tmp_path):
    out = tmp_path / "o.pcap"
    lab = Lab(graph="l2fwd", pcap_out=str(out), flows=4)
    lab.run(packets=10)
    for raw in read_frames(str(out)):
        assert raw[:6] == bytes.fromhex("020000000002") and raw[6:12] == bytes.fromhex("020000000001")


def test_trace_shows_path_reads_and_changes():
    lab = Lab(graph="acl", flows=8)
    traces = lab.trace(3)
    assert len(traces) == 3
    path = [s["node"] for s in traces[0]]
    assert path[0] == "eth-input" and path[-1] in ("ip4-rewrite", "acl", "ip4-lookup")
    if path[-1] == "ip4-rewrite":
        last = traces[0][-1]
        assert last["result"] == "tx"
        before, after = last["changed"]["ip4.ttl"]
        assert int(after) == int(before) - 1


@pytest.mark.parametrize("kw, msg", [
    (dict(graph="nope"), "graphs are"), (dict(backend="nope"), "backends are"),
    (dict(size=10), "use"), (dict(flows=0), "use"), (dict(malformed=2.0), "use"),
])
def test_bad_lab_arguments_say_what_to_use(kw, msg):
    with pytest.raises(ValueError, match=msg):
        Lab(**kw)


def test_bad_knobs_say_what_to_use():
    for kw in (dict(batch=0), dict(batch=257), dict(unroll=3), dict(layout="x"), dict(jit="yes"),
               dict(variant="simd?"), dict(prefetch_distance=0), dict(prefetch_distance=65),
               dict(prefetch_distance=True), dict(prefetch_distance=4.0), dict(interleave=1)):
        with pytest.raises(KnobError, match="use"):
            Knobs(**kw)
    with pytest.raises(KnobError, match="unknown knob"):
        Knobs().with_(turbo=True)


def test_run_rejects_bad_budgets():
    lab = Lab(graph="l2fwd")
    for kw in (dict(seconds=-1), dict(packets=0), dict(seconds=1, packets=5)):
        with pytest.raises(LabError):
            lab.run(**kw)


@pytest.mark.parametrize("layout", ["soa", "aos"])
def test_a_vector_that_goes_one_way_moves_whole_and_a_mixed_one_packet_by_packet(layout, tmp_path):
    """The enqueue step's two paths: vectors whose packets all take one arc or all drop for one
    reason (runs of 8 alike), and vectors that mix them, each counted exactly."""
    from labkit.nic.traffic import make_traffic
    ip = [make_traffic(flows=8, mix="udp", size=s).frame(i) for i, s in enumerate((64, 200, 64, 1500, 64, 90, 64, 64))]
    arp = bytes(6 * [0xFF]) + bytes(6) + b"\x08\x06" + bytes(46)
    runt = bytes(10)
    frames = ip * 3 + [arp] * 8 + [runt] * 8 + ip + [arp, runt] * 4 + ip[:5] + [arp] * 3
    path = tmp_path / "f.pcap"
    with PcapWriter(str(path)) as w:
        for f in frames:
            w.write(f)
    for graph, want in (("ip4", {"unknown_ethertype": 15, "eth_runt": 12}), ("l2fwd", {"macswap_runt": 12})):
        seen = []
        for batch in (8, 3, 1):           # runs of 8 alike fill whole vectors only at batch 8
            out = tmp_path / f"{graph}{batch}.pcap"
            lab = Lab(graph=graph, pcap_in=str(path), pcap_out=str(out), knobs=Knobs(batch=batch, layout=layout))
            res = lab.run()
            assert_sound(res, lab, len(frames))
            assert {k: res.dropped[k] for k in want} == want
            seen.append((res.forwarded, res.dropped, [r.packets for r in res.runtime], read_frames(str(out))))
        out_lengths = sorted(map(len, seen[0][3]))
        assert len(out_lengths) == res.forwarded and len(set(out_lengths)) >= 2
        if graph == "l2fwd":            # every frame but the runts back, each its own length
            assert out_lengths == sorted(len(f) for f in frames if f != runt)
        assert seen[0] == seen[1] == seen[2]


def _frames_strategy():
    from hypothesis import strategies as st
    from labkit.nic.traffic import make_traffic
    valid = make_traffic(flows=8, mix="mixed").frame(0)
    mutated = st.tuples(st.integers(0, len(valid)), st.binary(min_size=0, max_size=8),
                        st.integers(0, 70)).map(lambda t: (valid[:t[2]] + t[1] + valid[t[2] + len(t[1]):])[:t[0]])
    return st.lists(st.one_of(st.binary(min_size=0, max_size=120), mutated,
                              st.integers(0, 9000).map(lambda n: bytes(n))), min_size=1, max_size=40)


def test_random_frames_through_every_graph_are_forwarded_or_counted():
    """Any bytes, 0 to 9000 long: each frame is forwarded or dropped by a
    counted reason; nothing crashes, nothing leaks (kernels bounds-checked)."""
    import os
    import tempfile
    from hypothesis import HealthCheck, given, settings

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(_frames_strategy())
    def check(frames):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "f.pcap")
            with PcapWriter(path) as w:
                for f in frames:
                    w.write(f)
            for graph in GRAPHS:
                lab = Lab(graph=graph, pcap_in=path, knobs=Knobs(batch=8, unroll=4))
                res = lab.run()
                assert_sound(res, lab, len(frames))
    check()
