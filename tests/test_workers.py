"""Several workers on the multi-queue in-memory NIC (RSS): flow coherence and
order, queue balance, conservation and no leaked buffers across all workers
(also when a queue overflows, with the locked dispatcher and with packed
counters), the symmetric key, and one worker matching the single-queue loop.
No assertion here depends on speed or time."""
import threading

import numpy as np
import pytest
from numba import njit

from labkit.memory.layouts import CACHE_LINE
from labkit.nic import multiqueue as mq
from labkit.nic.pcap import PcapWriter, read_frames
from labkit.nic.traffic import make_traffic
from labkit.nic.rss import DEFAULT_KEY, SYMMETRIC_KEY, Reta, ipv4_tuple, toeplitz
from labkit.run.knobs import KnobError, Knobs
from labkit.run.lab import Lab, LabError
from labkit.bench.cores import measure_toeplitz
from labkit.run.workers import HOT, hot_counters


def five_tuple(frame):
    """(src, dst, proto, sport, dport) of an IPv4 TCP/UDP frame."""
    ip = 14
    proto = frame[ip + 9]
    hl = (frame[ip] & 0xF) * 4
    l4 = ip + hl
    return (frame[ip + 12:ip + 16], frame[ip + 16:ip + 20], proto,
            int.from_bytes(frame[l4:l4 + 2], "big"), int.from_bytes(frame[l4 + 2:l4 + 4], "big"))


def rss_hash(key, frame):
    src, dst, _, sport, dport = five_tuple(frame)
    return toeplitz(key, ipv4_tuple(int.from_bytes(src, "big"), int.from_bytes(dst, "big"), sport, dport))


def assert_sound(lab, res, sent):
    assert res.sent == sent
    assert res.conserved, (res.sent, res.forwarded, res.dropped)
    assert res.pool_ok and all(p.check() for p in lab.pools)          # every buffer back in its own pool
    rows = res.extra["workers"]
    assert all(r["rss_mismatch"] == 0 and r["pool_ok"] for r in rows)
    if not res.extra["dispatcher"]:
        for r in rows:                                               # each queue balances on its own
            assert r["sent"] == r["forwarded"] + sum(r["dropped"].values()), r
    assert sum(r["sent"] for r in rows) == res.sent
    # the per-packet counters saw every packet each worker took and sent
    if "mempool_empty" not in res.dropped:       # (copy mode drops those after taking them)
        assert [r["rx_packets"] for r in rows] == [r["handled"] for r in rows]
    assert sum(r["tx_packets"] for r in rows) == res.forwarded


def expected_sent_per_queue(lab, packets):
    """What RSS must give each queue: the queue of every frame on the wire."""
    t = lab.traffic
    pos = np.arange(packets) % t.seq.size
    q = lab.workers.nic.template_queue[t.seq[pos]]
    return np.bincount(q, minlength=lab.workers.n).tolist()


# --- flow coherence and order ---------------------------------------------------------

@pytest.mark.parametrize("design", ["spsc", "lock"])
def test_each_flow_on_one_queue_in_wire_order(tmp_path, design):
    lab = Lab(graph="ip4", workers=2, flows=256, mix="mixed", pcap_out=str(tmp_path / "o.pcap"),
              capture_max=40_000, knobs=Knobs(batch=32, sync=design))
    res = lab.run(packets=30_000)
    assert_sound(lab, res, 30_000)
    t = lab.traffic
    queue_of_flow = {}
    n_captured = 0
    for q in range(2):
        last = {}
        for wire, frame in lab.workers.capture(q):
            n_captured += 1
            flow = five_tuple(frame)
            # the wire stamp names the template this frame was made from
            assert five_tuple(t.frame(int(t.seq[wire % t.seq.size]))) == flow
            assert queue_of_flow.setdefault(flow, q) == q, "a flow reached two queues"
            assert last.get(flow, -1) < wire, "a flow's frames left out of order"
            last[flow] = wire
            # the queue is what the RSS reference says
            assert Reta(2).queue(rss_hash(DEFAULT_KEY, frame)) == q
    assert n_captured == res.forwarded
    assert len(queue_of_flow) == 256 and set(queue_of_flow.values()) == {0, 1}
    # the pcap holds every queue's frames, merged back into wire order
    assert len(read_frames(str(tmp_path / "o.pcap"))) == res.forwarded


def test_hash_in_descriptor_and_metadata_is_the_toeplitz_hash():
    """What the device writes for each frame is labkit.nic.rss's hash of its 5-tuple."""
    t = make_traffic(flows=32, mix="mixed")
    nic = mq.MultiQueueNic(4, t)
    for i in range(32):
        assert nic.template_hash[i] == rss_hash(DEFAULT_KEY, t.frame(i))
        assert nic.template_queue[i] == Reta(4).queue(int(nic.template_hash[i]))


# --- balance ----------------------------------------------------------------------------

@pytest.mark.parametrize("n", [2, 4])
def test_queues_balanced_over_many_flows(n):
    """4096 flows over n queues through a round-robin RETA: if the hash's low 7
    bits are uniform, each queue's flow count is Binomial(4096, 1/n); we allow
    5 standard deviations (n=2: +-160 of 2048; n=4: +-139 of 1024)."""
    flows = 4096
    t = make_traffic(flows=flows)
    nic = mq.MultiQueueNic(n, t)
    per_queue = np.bincount(nic.template_queue[:flows], minlength=n)
    sd = np.sqrt(flows * (1 / n) * (1 - 1 / n))
    assert np.all(np.abs(per_queue - flows / n) <= 5 * sd), per_queue
    # packets follow flows: the send order repeats a permutation of the flows
    pkts = np.array([p.size for p in nic.positions])
    assert pkts.sum() == t.seq.size
    assert np.all(np.abs(pkts / t.seq.size - per_queue / flows) < 1e-9)


def test_each_worker_gets_exactly_the_frames_rss_gives_its_queue():
    lab = Lab(graph="l2fwd", workers=2, flows=1024, knobs=Knobs(batch=64))
    res = lab.run(packets=50_000)
    assert_sound(lab, res, 50_000)
    assert [r["sent"] for r in res.extra["workers"]] == expected_sent_per_queue(lab, 50_000)


# --- conservation and no leaks ---------------------------------------------------------------

CASES = {
    "spsc": dict(),
    "lock": dict(knobs=Knobs(sync="lock", batch=32)),
    "dispatcher-spsc": dict(dispatcher=True, knobs=Knobs(batch=32)),
    "packed-counters": dict(knobs=Knobs(counters="packed")),
    "copy": dict(knobs=Knobs(copy=True, batch=64)),
    "heap": dict(knobs=Knobs(mempool=False, batch=64)),
    "aos-unroll1": dict(knobs=Knobs(layout="aos", unroll=1, batch=7)),
    "3-workers": dict(workers=3),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("graph", ["ip4", "acl"])
def test_conservation_and_no_leaks_across_workers(graph, case):
    kw = dict(CASES[case])
    workers = kw.pop("workers", 2)
    lab = Lab(graph=graph, workers=workers, malformed=0.2, **kw)
    res = lab.run(packets=20_000)
    assert_sound(lab, res, 20_000)
    assert res.forwarded > 0 and sum(res.dropped.values()) > 0
    assert len(res.extra["workers"]) == workers


@pytest.mark.parametrize("design", ["spsc", "lock"])
@pytest.mark.parametrize("threads", [False, True])
def test_a_tiny_ring_overflows_and_every_frame_is_still_counted(design, threads):
    """Rings of 4 descriptors: while one worker is not polling (threads=False:
    they take turns, so it certainly is not), its queue overflows; each frame
    lost there is counted rx_queue_full, and every buffer is back."""
    lab = Lab(graph="ip4", workers=2, ring_size=4, malformed=0.1, knobs=Knobs(batch=4, sync=design))
    res = lab.workers.run(packets=30_000, threads=threads)
    assert_sound(lab, res, 30_000)
    if not threads:
        assert res.dropped.get("rx_queue_full", 0) > 0


def test_tiny_pools_count_mempool_empty_and_recover():
    lab = Lab(graph="l2fwd", workers=2, pool_size=48, knobs=Knobs(batch=32))
    res = lab.run(packets=20_000)
    assert_sound(lab, res, 20_000)
    assert res.forwarded > 4 * 48


def test_seconds_run_stops_and_conserves_with_per_worker_numbers():
    lab = Lab(graph="ip4", workers=2, knobs=Knobs(batch=64))
    res = lab.run(seconds=0.2)
    assert res.sent > 0 and res.conserved and res.pool_ok
    rows = res.extra["workers"]
    assert [r["queue"] for r in rows] == [0, 1]
    handled = sum(r["handled"] for r in rows)
    assert handled == res.forwarded + sum(v for k, v in res.dropped.items() if k != "rx_queue_full")
    assert res.pps == pytest.approx(handled / res.seconds)
    assert res.cycles_per_packet > 0 and all(r["handled"] > 0 for r in rows)
    # a second run on the same Lab starts from scratch
    res2 = lab.run(packets=5000)
    assert_sound(lab, res2, 5000)


@pytest.mark.parametrize("model", ["rtc", "lthreads"])
def test_jit_off_workers_give_the_same_counts_as_jit_on(model):
    """lthreads: the compiled scheduler with JIT on, its Python twin (generators, next()) with JIT off."""
    outs = []
    for jit in (True, False):
        lab = Lab(graph="ip4", workers=2, flows=32, malformed=0.3, knobs=Knobs(jit=jit, batch=16, model=model))
        res = lab.run(packets=400)
        assert_sound(lab, res, 400)
        outs.append([(r["sent"], r["forwarded"]) for r in res.extra["workers"]])
    # what each queue received is fixed by RSS; without overflow so is what it forwarded
    assert [o[0] for o in outs[0]] == [o[0] for o in outs[1]]


# --- the symmetric key -------------------------------------------------------------------------

def _reverse(frame):
    """The same connection in the other direction: swap addresses and ports (the
    checksums stay right: their sums do not change)."""
    b = bytearray(frame)
    ip, l4 = 14, 34
    b[ip + 12:ip + 16], b[ip + 16:ip + 20] = frame[ip + 16:ip + 20], frame[ip + 12:ip + 16]
    b[l4:l4 + 2], b[l4 + 2:l4 + 4] = frame[l4 + 2:l4 + 4], frame[l4:l4 + 2]
    return bytes(b)


@pytest.fixture
def both_directions(tmp_path):
    t = make_traffic(flows=64, mix="mixed", seed=3)
    path = tmp_path / "both.pcap"
    with PcapWriter(str(path)) as w:
        for i in range(64):
            w.write(t.frame(i))
            w.write(_reverse(t.frame(i)))
    return str(path)


def test_symmetric_key_puts_both_directions_of_a_flow_on_one_queue(both_directions, tmp_path):
    lab = Lab(graph="l2fwd", workers=2, rss_key="symmetric", pcap_in=both_directions,
              pcap_out=str(tmp_path / "o.pcap"), capture_max=1000)
    nic = lab.workers.nic
    assert nic.key == SYMMETRIC_KEY
    assert np.array_equal(nic.template_queue[0::2], nic.template_queue[1::2])
    assert np.array_equal(nic.template_hash[0::2], nic.template_hash[1::2])
    res = lab.run()
    assert_sound(lab, res, 128)
    conn_queue = {}
    for q in range(2):
        for _, frame in lab.workers.capture(q):
            src, dst, proto, sport, dport = five_tuple(frame)
            conn = frozenset([(src, sport), (dst, dport)]), proto
            assert conn_queue.setdefault(conn, q) == q
    assert len(conn_queue) == 64


def test_default_key_splits_some_connections(both_directions):
    """The contrast: Microsoft's key hashes a->b and b->a differently."""
    lab = Lab(graph="l2fwd", workers=2, pcap_in=both_directions)
    nic = lab.workers.nic
    assert not np.array_equal(nic.template_queue[0::2], nic.template_queue[1::2])


# --- one worker is the single-queue loop ---------------------------------------------------------

@pytest.mark.parametrize("kw", [
    dict(graph="ip4", malformed=0.2),
    dict(graph="acl", malformed=0.2, knobs=Knobs(batch=31, unroll=2)),
    dict(graph="l2fwd", pool_size=64, knobs=Knobs(batch=32)),          # mempool_empty on both
    dict(graph="ip4", knobs=Knobs(copy=True, layout="aos", batch=16), malformed=0.1),
], ids=["ip4", "acl", "tiny-pool", "copy-aos"])
def test_one_worker_counts_equal_the_single_queue_loop(kw):
    outs = []
    for mqueue in (False, True):
        lab = Lab(multiqueue=mqueue, **kw)
        res = lab.run(packets=12_345)
        assert res.conserved and res.pool_ok
        outs.append((res.sent, res.forwarded, res.dropped, [r.packets for r in res.runtime]))
        assert ("workers" in res.extra) == mqueue
    assert outs[0] == outs[1]


def test_one_worker_is_the_unchanged_single_loop_by_default():
    lab = Lab(graph="ip4")
    assert lab.workers is None and lab.pool is not None


# --- counters and false sharing ---------------------------------------------------------------------

def test_padded_counters_each_on_their_own_line_packed_all_on_one():
    a, offs, step = hot_counters(4, packed=False)
    assert a.shape[0] == 4 and a.shape[1] % 8 == 0 and a.dtype == np.int64
    lines = {(a.ctypes.data + 8 * (o + j * step)) // CACHE_LINE for o in offs for j in range(len(HOT))}
    assert len(lines) == 4                                       # one line per worker, not shared
    for w, o in enumerate(offs):
        assert (a.ctypes.data + 8 * o) % CACHE_LINE == 0
    a, offs, step = hot_counters(2, packed=True)
    addrs = [a.ctypes.data + 8 * (o + j * step) for o in offs for j in range(len(HOT))]
    assert len({x // CACHE_LINE for x in addrs}) == 1 and len(set(addrs)) == 8   # one line, 8 counters


def test_packed_and_padded_counters_count_the_same():
    outs = []
    for layout in ("padded", "packed"):
        lab = Lab(graph="l2fwd", workers=2, knobs=Knobs(counters=layout))
        res = lab.run(packets=20_000)
        assert_sound(lab, res, 20_000)
        outs.append([r["sent"] for r in res.extra["workers"]])
    assert outs[0] == outs[1]


# --- the atomics ----------------------------------------------------------------------------------------

@njit(nogil=True)
def _locked_adds(lk, box, n):
    for _ in range(n):
        mq.spin_lock(lk, 0)
        box[0] = box[0] + 1            # not atomic: only the lock keeps it right
        mq.spin_unlock(lk, 0)


def test_cas_and_spinlock():
    a = np.zeros(8, np.int64)
    for f in (njit(lambda a, i, e, v: mq.cas(a, i, e, v)), mq.cas):
        a[:] = 0
        assert f(a, 1, 0, 5) == 0 and a[1] == 5           # swapped
        assert f(a, 1, 0, 7) == 5 and a[1] == 5           # not: it was not 0
    assert mq.fetch_or(a, 2, 4) == 0 and a[2] == 4
    lk, box = np.zeros(8, np.int64), np.zeros(8, np.int64)
    _locked_adds(lk, box, 10)
    box[0] = 0
    ts = [threading.Thread(target=_locked_adds, args=(lk, box, 200_000)) for _ in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert box[0] == 400_000 and lk[0] == 0


def test_toeplitz_cycles_are_measured():
    assert measure_toeplitz(n=64, reps=50) > 0


# --- arguments ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw, msg", [
    (dict(workers=0), "workers"), (dict(workers=65), "workers"), (dict(workers=2.0), "workers"),
    (dict(workers=2, queues=3), "one worker per queue"), (dict(queues=0), "queues"),
    (dict(dispatcher=True, backend="veth"), "in-memory NIC only"),
    (dict(workers=2, rss_key="short"), "rss_key"),
    (dict(multiqueue=False, workers=2), "multi-queue"),
])
def test_bad_worker_arguments_say_what_to_use(kw, msg):
    with pytest.raises(LabError, match=msg):
        Lab(graph="l2fwd", **kw)


def test_queues_is_workers():
    lab = Lab(graph="l2fwd", queues=2)
    assert lab.workers.n == 2


def test_bad_worker_knobs_say_what_to_use():
    for kw in (dict(sync="mutex"), dict(counters="shared")):
        with pytest.raises(KnobError, match="use"):
            Knobs(**kw)


def test_worker_knobs_on_one_worker_say_so():
    lab = Lab(graph="l2fwd", knobs=Knobs(counters="packed"))
    assert any("counters" in n and "workers" in n for n in lab.notes)
