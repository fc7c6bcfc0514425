"""RSS on a real NIC: N DUT workers on N AF_PACKET rings in one PACKET_FANOUT_HASH group.

``Lab(backend="veth", workers=N)``: the kernel hands each frame arriving on
lk-d0 to one of N RX rings by its flow hash, and writes that hash into the
frame's header (tp_rxhash); each worker copies it, and its queue, into the
frame's metadata. The tests check the books per worker and in total, that a
flow stays on one worker in order with one hash, and that the kernel's choice
is its documented rule, ``queue = (rxhash * N) >> 32`` (af_packet.c,
fanout_demux_hash: reciprocal_scale of the flow hash).

Needs root (skipped otherwise, with the reason), on a lab network of its own
prefix, removed at the end. No test asserts a rate or a time.
"""
import os

import numpy as np
import pytest

from labkit import Knobs
from labkit.nic import labnet
from labkit.nic.pcap import PcapWriter, read_frames
from labkit.nic.traffic import make_traffic
from labkit.run.lab import Lab, LabError

WHY = labnet.why_not()
needs_net = pytest.mark.skipif(WHY is not None, reason=f"needs the lab network: {WHY}")
PREFIX = f"labkit-f{os.getpid()}"
FLOWS = 256
SEQ_OFF = 42            # the UDP payload of labkit's frames: each frame's number in its flow


def _namespaces(prefix=PREFIX):
    return [n for n in os.listdir("/var/run/netns") if n.startswith(prefix + "-")] \
        if os.path.isdir("/var/run/netns") else []


@pytest.fixture(scope="module")
def net():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LABKIT_NET_PREFIX", PREFIX)
        try:
            labnet.up()
            yield PREFIX
        finally:
            labnet.down()
    assert _namespaces() == []


def _check_books(r, n):
    """Every frame accounted for, in total and per worker; every ring block back."""
    assert r.conserved, (r.sent, r.forwarded, r.dropped)
    assert r.pool_ok
    rows = r.extra["workers"]
    assert [w["queue"] for w in rows] == list(range(n)) and r.extra["queues"] == n
    for w in rows:
        assert w["sent"] == w["forwarded"] + sum(w["dropped"].values()), w
        assert w["pool_ok"]
    # frames the generator put on the wire reached lk-d0, each went to exactly one ring
    assert sum(w["sent"] for w in rows) == r.sent - r.dropped.get("gen_unsendable", 0)
    assert "kernel" in r.extra["hash_source"]


# -- the books ------------------------------------------------------------------------

@needs_net
@pytest.mark.parametrize("n", [2, 3])
def test_workers_forward_every_frame_and_balance_their_books(net, n):
    with Lab(backend="veth", graph="ip4", workers=n) as lab:
        r = lab.run(packets=50_000)
    assert r.sent == 50_000
    _check_books(r, n)
    assert all(w["sent"] > 0 for w in r.extra["workers"])     # 1024 flows: every ring gets some
    assert r.forwarded > 0 and len(r.extra["workers"]) == n


@needs_net
def test_sleeping_workers_balance_their_books(net):
    with Lab(backend="veth", graph="l2fwd", workers=2, knobs=Knobs(poll="wait", batch=31),
             rate=50_000) as lab:
        r = lab.run(packets=5_000)
    _check_books(r, 2)
    assert r.extra["dut_polls"] > 0           # the workers did sleep in poll()


@needs_net
def test_one_worker_keeps_the_single_loop(net):
    with Lab(backend="veth", graph="l2fwd", workers=1) as lab:
        r = lab.run(packets=5_000)
    assert r.conserved and r.pool_ok
    assert "workers" not in r.extra and "hash_source" not in r.extra
    assert lab.net.fanout_group is None


# -- flows: one worker, one hash, in order, chosen by the kernel's rule -------------------------

def _numbered_pcap(path, per_flow, seed=7):
    """FLOWS flows of labkit's UDP frames, per_flow frames each, interleaved in a
    random order; each frame carries its number within its flow at SEQ_OFF."""
    t = make_traffic(size=64, flows=FLOWS, seed=1)
    order = np.random.default_rng(seed).permutation(np.repeat(np.arange(FLOWS), per_flow))
    seen = np.zeros(FLOWS, np.int64)
    with PcapWriter(str(path)) as w:
        for f in order:
            b = bytearray(t.frame(int(f)))
            b[SEQ_OFF:SEQ_OFF + 4] = int(seen[f]).to_bytes(4, "little")
            seen[f] += 1
            w.write(bytes(b))
    return len(order)


def _flow(frame):
    return bytes(frame[26:38])                 # IPv4 source, destination, L4 ports


def _per_flow(lab, n):
    """{flow: [(queue, rxhash, number), ...]} from every worker's capture, in each
    worker's transmit order."""
    out = {}
    for q in range(n):
        for h, rxq, frame in lab.net.capture(q):
            assert rxq == q                     # the queue in the metadata is the worker's
            out.setdefault(_flow(frame), []).append((q, h, int.from_bytes(frame[SEQ_OFF:SEQ_OFF + 4], "little")))
    return out


def _hashes(per_flow):
    return {f: xs[0][1] for f, xs in per_flow.items()}


@needs_net
@pytest.mark.parametrize("n, layout", [(2, "soa"), (3, "aos")])
def test_a_flow_stays_on_one_worker_with_one_hash_in_order(net, tmp_path, n, layout):
    pcap = tmp_path / "numbered.pcap"
    total = _numbered_pcap(pcap, per_flow=40)
    out = tmp_path / "out.pcap"
    with Lab(backend="veth", graph="l2fwd", workers=n, knobs=Knobs(layout=layout), pcap_in=str(pcap),
             pcap_out=str(out), rate=50_000) as lab:
        r = lab.run()
        flows = _per_flow(lab, n)
    assert r.sent == total
    _check_books(r, n)
    kept = sum(len(xs) for xs in flows.values())
    assert kept == sum(w["forwarded"] for w in r.extra["workers"])    # each worker kept all it sent
    assert len(flows) == FLOWS
    for f, xs in flows.items():
        assert len({q for q, _, _ in xs}) == 1, f"flow {f.hex()} on several workers"
        assert len({h for _, h, _ in xs}) == 1, f"flow {f.hex()} with several hashes"
        nums = [s for _, _, s in xs]
        assert nums == sorted(nums), f"flow {f.hex()} out of order"
        q, h, _ = xs[0]
        assert q == (h * n) >> 32             # PACKET_FANOUT_HASH: reciprocal_scale(hash, n)
    assert len(set(_hashes(flows).values())) >= FLOWS - 2      # a 32-bit hash: (almost) all distinct
    assert len(read_frames(str(out))) == r.forwarded             # and the generator's capture as before


@needs_net
def test_the_kernel_hashes_a_flow_alike_in_every_run(net, tmp_path):
    pcap = tmp_path / "numbered.pcap"
    _numbered_pcap(pcap, per_flow=4)
    seen = []
    for n in (2, 3, 2):
        with Lab(backend="veth", graph="l2fwd", workers=n, pcap_in=str(pcap), pcap_out=str(tmp_path / "o.pcap"),
                 rate=50_000) as lab:
            lab.run()
            seen.append(_hashes(_per_flow(lab, n)))
    assert len(seen[0]) == FLOWS and len(set(seen[0].values())) >= FLOWS - 2
    assert seen[0] == seen[1] == seen[2]        # the hash is the flow's, not the group's or the run's


@needs_net
def test_the_pure_python_loop_sees_the_same_hashes_and_queues(net, tmp_path):
    pcap = tmp_path / "numbered.pcap"
    _numbered_pcap(pcap, per_flow=2)
    seen = {}
    for jit, rate in ((True, 5_000), (False, 2_000)):
        with Lab(backend="veth", graph="l2fwd", workers=2, knobs=Knobs(jit=jit), pcap_in=str(pcap),
                 pcap_out=str(tmp_path / "o.pcap"), rate=rate) as lab:
            r = lab.run()
            flows = _per_flow(lab, 2)
        _check_books(r, 2)
        assert sum(len(xs) for xs in flows.values()) == r.forwarded
        seen[jit] = {f: {(q, h) for q, h, _ in xs} for f, xs in flows.items()}
    assert len(seen[True]) == FLOWS
    # A pure-Python worker on a busy machine may fall behind and lose frames to a full
    # RX ring (counted: the books above balance); every flow it did see must agree.
    assert len(seen[False]) >= FLOWS // 2
    assert all(seen[False][f] == seen[True][f] for f in seen[False])


# -- bad input (Ctrl-C in a fanout run: tests/test_veth.py) ------------------------------------

@pytest.mark.parametrize("kw, says", [
    (dict(workers=0), "workers=0"),
    (dict(workers=65), "workers=65"),
    (dict(workers=2, backend="tap"), "TAP"),
    (dict(workers=2, knobs=Knobs(copy=True)), "copy=True"),
    (dict(workers=2, multiqueue=True), "in-memory NIC only"),
    (dict(workers=2, dispatcher=True), "in-memory NIC only"),
])
def test_bad_worker_counts_and_modes_say_what_to_use(kw, says):
    kw = dict(dict(backend="veth", graph="l2fwd"), **kw)
    with pytest.raises(LabError) as e:
        Lab(**kw)
    assert says in str(e.value) and "\n" not in str(e.value)
