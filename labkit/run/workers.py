"""Workers: RSS across queues and cores, one run-to-completion worker per queue.

``Lab(graph=..., workers=N)`` runs the graph on N workers over the
multi-queue in-memory NIC (``labkit.nic.multiqueue``). Each worker is the
single-queue loop (``labkit.run.loopgen``) for its own queue: it frees what its
queue transmitted, refills its RX ring from its own pool, takes a vector,
runs the graph, posts the rest on its TX ring. Nothing on that path is
shared with another worker, so nothing is locked.

Threads, not processes. Each worker is a numba ``nogil`` function called
from its own Python thread: numba releases the GIL for the whole slice, so
the threads run on all cores at once, and they share one address space: the
wire and the traffic templates, the tables (the 32 MiB FIB) exist once, the
dispatcher (sync="lock") writes into every worker's pool, and Python reads
every worker's counters directly, without copies or IPC.
Processes would need every arena, ring, table and counter in shared memory
mapped at agreed places (what DPDK's multi-process mode does with huge
pages), and would compile every kernel once per process. DPDK's lcores are
threads for the same reasons.

Pools: one pool per worker. A worker allocates from and frees to its own
pool and the device refills queue q only from pool q, so a buffer never
changes hands between cores and the free stack needs no lock and no atomic.
The alternative is DPDK's: one shared pool (a lock-free multi-producer ring)
with a per-lcore cache of buffers in front of it, which lets a busy queue use
buffers an idle one does not need; a per-worker pool is that design with the
cache made the whole pool. It costs memory (N arenas) and is the simplest
thing that cannot contend.

Who plays the NIC: each worker runs its own queue's part of the device on
its own core, as the single-queue loop does (the cycles counted apart as
NIC cycles). A device thread would need a core of its own: on a two-core
machine two workers and a device would share two cores, and "two workers"
would measure the scheduler. What the queues share is the wire (a counter
moved by compare-and-swap, see ``labkit.nic.multiqueue``): the queue whose
ring has room pulls the next frames off it, and each queue posts the frames
the hash gave it or, when its ring is full, counts them ``rx_queue_full``.

On a shared machine a worker's thread waits for a core now and then; TSC
cycles count that wait, so each worker also reports its thread's CPU time
(``cpu_percent``) and CPU time per packet (``cpu_cycles_per_packet``, in TSC
cycles), which the other load does not inflate. ``run(threads=False)`` runs
the workers in turn on the calling thread (tests: a queue certainly overflows).

Conservation, over all workers: every frame that arrived on the wire is
posted on exactly one queue or counted by the device (``rx_queue_full``,
``mempool_empty``, ``rx_frame_too_long``), and every posted frame is
forwarded or dropped by a reason in that worker's counters, so
``sent == forwarded + sum(drops)`` summed over the workers; after the run
every buffer is back in its own pool.

Counters and false sharing (knob ``counters``). Each worker counts packets
and bytes it received and transmitted, one packet at a time. By default
("padded") each worker's counters are one row of an int64 array of shape
[N, 8 * COUNTER_LINES], 64-byte aligned, so no two workers write the same
cache line. "packed" puts all workers' counters on ONE cache line,
interleaved (counter j of worker w at j * N + w): the workers never touch
the same counter, but every write takes the line away from the other core.
Every other per-worker array (vectors, state, drop counters, runtime) is
allocated on cache lines of its own.

Dispatcher variants (knob ``sync``). "spsc" is the above: the device's RSS
puts each frame on its worker's lock-free single-producer single-consumer
ring. "lock" is the software alternative: a NIC without RSS and a dispatcher
thread that takes the frames off the wire, computes the Toeplitz hash in
software, and hands each frame to its worker through a queue guarded by a
spinlock (a compare-and-swap on a lock word, taken by the dispatcher to
post and by the worker to take). The worker gives the dispatcher empty
buffers from its own pool through a fill ring (AF_XDP's design), so buffers
still never change pools. ``Lab(dispatcher=True)`` with ``sync="spsc"`` runs
the same dispatcher with lock-free rings: the difference between the two is
the lock alone. The dispatcher is a thread of its own: with N workers it
needs N + 1 cores.
"""
import os
import resource
import threading
import time

import numpy as np
from numba import njit

from . import interrupts
from ..graph.compile import make_frames
from ..memory.bytes import wr32le
from ..memory.intrinsics import load_acquire, rdtsc, store_release
from ..memory.layouts import (CACHE_LINE, DATA_OFF, LINE_SHIFT, MEMPOOL_EMPTY, META_HASH_OFF, META_RXQ_OFF,
                              RX_FRAME_TOO_LONG, own_lines, rehome)
from ..memory.mempool import make_pool
from ..memory.ring import Ring, ring_count, ring_dequeue, ring_enqueue
from ..nic import latency as lat
from ..nic import multiqueue as mq
from ..nic.memory import CAP_LOST, CAP_N, DUT_CYC, FWD, NIC_CYC, SENT
from ..nic.latency import stamps_this, write_stamp
from ..nic.multiqueue import DONE, META_WIRE_OFF, READY, STOP_BIT, WIRE, spin_lock, spin_unlock
from ..nic.pcap import PcapWriter
from ..nic.rss import hash_ipv4_frames
from ..settings import SLICE_S
from . import lthreads
from .engine import Engine, tell_progress
from .loopgen import load_module, port_for
from .lthreads import give_way
from .measure import now_tsc, tsc_hz
from .result import NIC_SIDE_DROPS, by_reason, make_result

RR_SLICE_S = 0.0005       # a worker's turn when they run one after another (threads=False)
MAX_WORKERS = 64
COUNTER_LINES = 1         # cache lines per worker's row of hot counters
HOT = ("rx_packets", "rx_bytes", "tx_packets", "tx_bytes")   # per worker, bumped per packet
RX_PKTS, RX_BYTES, TX_PKTS, TX_BYTES = range(len(HOT))
LOCK_STRIDE = CACHE_LINE // 8   # one lock word per cache line
YIELDS = mq.YIELDS              # a worker's sched_yield calls (model="threads"), in its nst


def _rusage():
    """This thread's resource usage (its context switches: ru_nvcsw voluntary,
    ru_nivcsw preempted); the whole process's where threads have none (macOS)."""
    return resource.getrusage(getattr(resource, "RUSAGE_THREAD", resource.RUSAGE_SELF))


# --- state on cache lines of its own ---------------------------------------------------


def hot_counters(n, packed):
    """(array, offset of worker w's counter 0, step between its counters).

    padded: int64 [n, 8 * COUNTER_LINES], row w is worker w's, each row on its
    own cache line(s). packed: all workers' counters interleaved on one line
    (counter j of worker w at j * n + w; more than one line only past 2 workers).
    """
    if packed:
        a = own_lines((-(-len(HOT) * n // 8) * 8,), np.int64)
        return a, list(range(n)), n
    a = own_lines((n, 8 * COUNTER_LINES), np.int64)
    assert a.ctypes.data % CACHE_LINE == 0 and a.strides[0] % CACHE_LINE == 0
    return a, [w * 8 * COUNTER_LINES for w in range(n)], 1


# --- the software dispatcher (sync="lock", or dispatcher=True) ------------------------------

# dispatcher state dnst (int64): its wire cursor, its cycles, its sched_yield calls (model="threads")
D_WIRE, D_POS, D_NIC_CYC, D_CPU_CYC, D_IDLE_CYC, D_YIELDS = 0, 1, 2, 3, 4, 5




@njit(nogil=True, cache=True, inline="always")
def _idle(dnst, t0, slice_end_tsc, yield_each):
    """The dispatcher found nothing to do: count the cycles as idle; True when its slice is over."""
    t1 = rdtsc()
    dnst[D_CPU_CYC] += t1 - t0
    dnst[D_IDLE_CYC] += t1 - t0
    if t0 >= slice_end_tsc:
        return True
    give_way(yield_each, dnst, D_YIELDS)
    return False


@njit(nogil=True, cache=True, inline="always")
def _room(rx_descs, rx_curs, locks, locked, room, n_stage):
    """Room on each worker's RX ring (read under its lock when `locked`); the most of them."""
    best = 0
    for q in range(len(rx_descs)):
        if locked:
            spin_lock(locks, q * LOCK_STRIDE)
        r = rx_descs[q].size - ring_count(rx_curs[q])
        if locked:
            spin_unlock(locks, q * LOCK_STRIDE)
        room[q] = r
        best = max(best, r)
        n_stage[q] = 0
    return best


@njit(nogil=True, cache=True, inline="always")
def _off_the_wire(seq, flens, stride, pos, nb, b_t, b_base, b_len):
    """The next nb frames on the wire (templates, where each starts, its length); the new position."""
    for k in range(nb):
        t = seq[pos]
        pos += 1
        if pos == seq.size:
            pos = 0
        b_t[k] = t
        b_base[k] = np.int64(t) * stride - DATA_OFF
        b_len[k] = min(np.int64(flens[t]), stride)
    return pos


@njit(nogil=True, cache=True, inline="always")
def _stage(arenas, frames, flens, reta, fill_descs, fill_curs, stash, n_stash, wire, nb, max_frame, qsent,
           counters, qfull, b_t, b_h, room, stage_h, stage_l, stage_hash, n_stage, scratch_l, scratch_h, stamp_at,
           stamp_mask):
    """"DMA" each frame into a buffer of its worker's (from the worker's fill ring), write
    its wire position, hash and queue into the metadata (and its latency stamp, when
    `stamp_at` is not empty), and stage it for that worker; count what has no room
    (rx_queue_full), no buffer (mempool_empty) or is too long."""
    stride, mask = frames.shape[1], reta.size - 1
    now = rdtsc() if stamp_at.size > 0 else 0
    for k in range(nb):
        h = b_h[k]
        q = reta[h & mask]
        qsent[q] += 1
        t = b_t[k]
        length = np.int64(flens[t])
        if length > max_frame or length > stride:
            counters[RX_FRAME_TOO_LONG] += 1
            continue
        if n_stage[q] >= room[q]:
            counters[qfull] += 1
            continue
        if n_stash[q] == 0:
            n_stash[q] = ring_dequeue(fill_descs[q], fill_curs[q], stash[q], scratch_l, scratch_h, stash.shape[1])
            if n_stash[q] == 0:
                counters[MEMPOOL_EMPTY] += 1
                continue
        n_stash[q] -= 1
        hd = stash[q, n_stash[q]]
        arena = arenas[q]
        base = np.int64(hd) << LINE_SHIFT
        for b in range(length):
            arena[base + DATA_OFF + b] = frames[t, b]
        p = wire + k
        wr32le(arena, base + META_WIRE_OFF, p & 0xFFFFFFFF)
        wr32le(arena, base + META_WIRE_OFF + 4, p >> 32)
        wr32le(arena, base + META_HASH_OFF, h)
        arena[base + META_RXQ_OFF] = q & 0xFF
        arena[base + META_RXQ_OFF + 1] = (q >> 8) & 0xFF
        if stamp_at.size > 0 and stamp_at[t] >= 0 and stamps_this(stamp_mask, p):
            write_stamp(arena, base + DATA_OFF + stamp_at[t], now, p)
        m = n_stage[q]
        stage_h[q, m] = hd
        stage_l[q, m] = length
        stage_hash[q, m] = h
        n_stage[q] = m + 1


@njit(nogil=True, cache=True, inline="always")
def _hand_over(rx_descs, rx_curs, locks, locked, stage_h, stage_l, stage_hash, n_stage):
    """Post each worker's staged frames on its RX ring: one lock per queue per burst."""
    for q in range(len(rx_descs)):
        m = n_stage[q]
        if m > 0:
            if locked:
                spin_lock(locks, q * LOCK_STRIDE)
            s = ring_enqueue(rx_descs[q], rx_curs[q], stage_h[q], stage_l[q], stage_hash[q], m)
            if locked:
                spin_unlock(locks, q * LOCK_STRIDE)
            assert s == m                  # only the dispatcher posts: the room it saw is still there


@njit(nogil=True, cache=True)
def dispatcher_slice(arenas, frames, flens, seq, tflat, tables, reta, rx_descs, rx_curs, fill_descs, fill_curs,
                     stash, n_stash, locks, locked, ws, budget, stop_tsc, slice_end_tsc, batch, max_frame,
                     dnst, qsent, counters, qfull, b_t, b_base, b_len, b_h, room, stage_h, stage_l, stage_hash,
                     n_stage, scratch_l, scratch_h, yield_each, stamp_at, stamp_mask):
    """Take up to `batch` frames off the wire, hash them in software, and hand
    each to its worker's RX ring (under the ring's lock when `locked`), in a
    buffer the worker posted on its fill ring. Runs until the slice ends
    (False) or the run is over and DONE is posted (True); slice_end_tsc 0:
    one burst (or one idle poll). yield_each: sched_yield after each."""
    n_q = len(rx_descs)
    while True:
        t0 = rdtsc()
        wire = dnst[D_WIRE]
        if t0 >= stop_tsc or wire >= budget or (load_acquire(ws, WIRE) & STOP_BIT) != 0:
            store_release(ws, DONE, 1)
            return True
        if load_acquire(ws, READY) < n_q:      # the link is up once every worker polls
            if _idle(dnst, t0, slice_end_tsc, yield_each):
                return False
            continue
        best = _room(rx_descs, rx_curs, locks, locked, room, n_stage)
        if best == 0:                          # every worker's ring is full: wait, as a closed loop
            if _idle(dnst, t0, slice_end_tsc, yield_each):
                return False
            continue
        nb = min(batch, best, budget - wire)
        dnst[D_POS] = _off_the_wire(seq, flens, frames.shape[1], dnst[D_POS], nb, b_t, b_base, b_len)
        hash_ipv4_frames(tables, tflat, b_base, b_len, nb, b_h)
        t1 = rdtsc()
        _stage(arenas, frames, flens, reta, fill_descs, fill_curs, stash, n_stash, wire, nb, max_frame, qsent,
               counters, qfull, b_t, b_h, room, stage_h, stage_l, stage_hash, n_stage, scratch_l, scratch_h,
               stamp_at, stamp_mask)
        t2 = rdtsc()
        _hand_over(rx_descs, rx_curs, locks, locked, stage_h, stage_l, stage_hash, n_stage)
        dnst[D_WIRE] = wire + nb
        t3 = rdtsc()
        dnst[D_NIC_CYC] += t2 - t1
        dnst[D_CPU_CYC] += (t1 - t0) + (t3 - t2)
        if t3 >= slice_end_tsc:
            return False
        give_way(yield_each, dnst, D_YIELDS)


# --- one worker's private state ---------------------------------------------------------

class _Worker:
    def __init__(self, q, g, knobs, pool, ring_size, n_reasons, capture_max, max_frame, stride):
        self.q = q
        self.pool = pool
        self.frames = tuple(rehome(a) for a in make_frames(g, knobs.batch, knobs.layout))
        b = knobs.batch
        self.tx_h, self.tx_l, self.free_h = (own_lines((b,), np.uint32) for _ in range(3))
        self.tmp_h, self.tmp_l, self.tmp_hash = (own_lines((ring_size,), np.uint32) for _ in range(3))
        self.bases = own_lines((ring_size,), np.int64)
        self.nst = own_lines((mq.MQ_NST_SIZE,), np.int64)
        self.counters = own_lines((n_reasons,), np.int64)
        self.stats = own_lines((len(g.nodes), 3), np.int64)
        self.cap_len = own_lines((capture_max,), np.uint32)
        self.cap_wire = own_lines((capture_max,), np.int64)
        self.cap_data = own_lines((capture_max * min(stride, max_frame),), np.uint8)
        self.fill = Ring(ring_size)        # dispatcher mode: empty buffers for the dispatcher
        self.hist = lat.no_hist()          # its latency histogram, when measured

    def reset(self):
        for a in (self.nst, self.counters, self.stats):
            a[...] = 0
        lat.clear(self.hist)
        self.frames[3][...] = 0


class Workers(Engine):
    """N workers over a MultiQueueNic; ``run()`` returns a Result summed over them
    with per-worker numbers in ``extra["workers"]``."""
    kind = "workers"

    def __init__(self, graph, knobs, tables, traffic, n, pool_size, ring_size, capture_max=0,
                 rss_key="default", reta=None, dispatcher=None, pin=False, notes=(), capture_path=None,
                 latency=False):
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= MAX_WORKERS:
            raise ValueError(f"workers={n!r}: use 1..{MAX_WORKERS} workers")
        self.g, self.knobs, self.n = graph, knobs, int(n)
        self.tables = [tables[name] for name in graph.tables]
        self.traffic = traffic
        staged = knobs.sync == "lock" or knobs.model != "rtc"
        self.dispatcher = staged if dispatcher is None else bool(dispatcher)
        self.locked = knobs.sync == "lock"
        if self.locked and not self.dispatcher:
            raise ValueError('sync="lock" is the dispatcher design: use dispatcher=True (or leave it None)')
        if knobs.model != "rtc" and not self.dispatcher:
            raise ValueError(f"model={knobs.model!r} runs an I/O stage (the dispatcher) and worker stages: "
                             "leave dispatcher unset")
        # rtc with a dispatcher (dispatcher=True, sync="lock") is the pipeline: one stage per thread
        self.model = "pipeline" if knobs.model == "rtc" and self.dispatcher else knobs.model
        self.pin = pin
        self.nic = mq.MultiQueueNic(self.n, traffic, ring_size, rss_key, reta)
        self.pools = [make_pool(knobs.mempool, pool_size, hugepages=knobs.hugepages) for _ in range(self.n)]
        self.notes = list(notes) + sorted({p.note for p in self.pools if p.note})
        self.capture_path = capture_path
        self.max_frame = self.pools[0].max_frame
        self.reasons = list(graph.reasons) + ["rx_queue_full"]
        self.qfull = len(graph.reasons)
        self.capture_max = int(capture_max)
        mode = "dispatch" if self.dispatcher else "device"
        self.mod = load_module(graph, knobs, port_for(graph, knobs, mode))
        self.w = [_Worker(q, graph, knobs, self.pools[q], ring_size, len(self.reasons), self.capture_max,
                          self.max_frame, traffic.stride) for q in range(self.n)]
        self.latency = latency          # False, or stamp one frame in this many
        self.stamp_at = lat.stamp_offsets(traffic.frames, traffic.lengths) if latency else np.zeros(0, np.int32)
        for w in self.w:
            w.hist = rehome(lat.new_hist(latency)) if latency else lat.no_hist()
        self.wc, self.wo, self.wstep = hot_counters(self.n, knobs.counters == "packed")
        self.locks = own_lines((self.n * LOCK_STRIDE,), np.int64)
        self.claim_max = 4 * ring_size * self.n
        if self.dispatcher:
            b = knobs.batch
            self.d_arenas = tuple(p.arena for p in self.pools)
            self.d_tflat = np.ascontiguousarray(traffic.frames).reshape(-1)
            self.dnst = own_lines((8,), np.int64)
            self.d_qsent = own_lines((self.n,), np.int64)
            self.d_counters = own_lines((len(self.reasons),), np.int64)
            self.d_b = (own_lines((b,), np.int64), own_lines((b,), np.int64), own_lines((b,), np.int64),
                        own_lines((b,), np.uint32))
            self.d_room = own_lines((self.n,), np.int64)
            self.d_stage = (own_lines((self.n, b), np.uint32), own_lines((self.n, b), np.uint32),
                            own_lines((self.n, b), np.uint32))
            self.d_n_stage = own_lines((self.n,), np.int64)
            self.d_stash = own_lines((self.n, ring_size), np.uint32)
            self.d_n_stash = own_lines((self.n,), np.int64)
            self.d_scratch = (own_lines((ring_size,), np.uint32), own_lines((ring_size,), np.uint32))
        self.last_wall = 0.0
        self.cpu = [0.0] * (self.n + self.dispatcher)
        self.switches = self.context_switches = 0

    # -- the stages ---------------------------------------------------------------------------
    def _stages(self, budget, stop_tsc, yield_each):
        """[(name, fn, head, tail)]: each stage's slice is fn(*head, slice_end_tsc, *tail)
        (slice_end_tsc 0: one burst, so the same function is the OS threads' slice and
        the lightweight threads' burst). The workers, then the dispatcher if there is one."""
        nic, m, k, t = self.nic, self.mod, self.knobs, self.traffic
        out = []
        for w in self.w:
            pool, q = w.pool, w.q
            fh, fl, fx, counts = w.frames
            head = (pool.arena, pool.a, pool.b, nic.rx[q].desc, nic.rx[q].cur, nic.tx[q].desc, nic.tx[q].cur,
                    w.fill.desc, w.fill.cur, self.locks, q * LOCK_STRIDE,
                    t.frames, t.lengths, t.seq, nic.positions[q], q, self.n, nic.ws, budget, self.claim_max,
                    self.max_frame, nic.tables, nic.reta_table,
                    w.cap_data, w.cap_len, w.cap_wire, w.nst, stop_tsc)
            tail = (k.batch, fh, fl, fx, counts, w.tx_h, w.tx_l, w.free_h, w.tmp_h, w.tmp_l, w.tmp_hash, w.bases,
                    w.counters, self.qfull, w.stats, self.wc.reshape(-1), self.wo[q], self.wstep, yield_each,
                    self.stamp_at, w.hist, *self.tables)
            out.append((f"worker {q}", m.run_slice, head, tail))
        if self.dispatcher:
            fn = dispatcher_slice if k.jit else dispatcher_slice.py_func
            head = (self.d_arenas, t.frames, t.lengths, t.seq, self.d_tflat, nic.tables, nic.reta_table,
                    tuple(r.desc for r in nic.rx), tuple(r.cur for r in nic.rx),
                    tuple(w.fill.desc for w in self.w), tuple(w.fill.cur for w in self.w),
                    self.d_stash, self.d_n_stash, self.locks, self.locked, nic.ws, budget, stop_tsc)
            tail = (k.batch, self.max_frame, self.dnst, self.d_qsent, self.d_counters, self.qfull, *self.d_b,
                    self.d_room, *self.d_stage, self.d_n_stage, *self.d_scratch, yield_each, self.stamp_at,
                    max(int(self.latency) - 1, 0))
            out.append(("dispatcher", fn, head, tail))
        return out

    def _reset(self):
        self.nic.reset()
        self.wc[...] = 0
        for w in self.w:
            w.reset()
            assert len(w.fill) == 0
            w.fill.cur[:] = 0
        if self.dispatcher:
            for a in (self.dnst, self.d_qsent, self.d_counters, self.d_n_stash, self.d_n_stage):
                a[...] = 0

    def _return_fill_buffers(self):
        """Dispatcher mode, after the threads are joined: the empty buffers on the
        fill rings and in the dispatcher's stash go back to their pools."""
        if not self.dispatcher:
            return
        for q, w in enumerate(self.w):
            k = int(self.d_n_stash[q])
            if k:
                w.pool.free(w.pool.a, w.pool.b, self.d_stash[q, :k].copy(), k)
                self.d_n_stash[q] = 0
            h = np.zeros(w.fill.size, np.uint32)
            n = ring_dequeue(w.fill.desc, w.fill.cur, h, np.zeros(w.fill.size, np.uint32),
                             np.zeros(w.fill.size, np.uint32), w.fill.size)
            if n:
                w.pool.free(w.pool.a, w.pool.b, h, n)

    def _prefill(self):
        """Dispatcher mode: each driver posts empty buffers before the link comes up."""
        if not self.dispatcher:
            return
        for w in self.w:
            h = np.zeros(w.fill.size, np.uint32)
            got = w.pool.alloc(w.pool.a, w.pool.b, h, w.fill.size)
            z = np.zeros(w.fill.size, np.uint32)
            assert ring_enqueue(w.fill.desc, w.fill.cur, h, z, z, got) == got

    # -- a run -----------------------------------------------------------------------------------
    @property
    def threads(self):
        """One thread per stage (the workers, and the dispatcher when there is one); the one-CPU
        models ("lthreads", "threads") keep a single CPU busy."""
        return 1 if self.model in ("lthreads", "threads") else self.n + self.dispatcher

    def run(self, seconds=None, packets=None, progress=None, threads=True):
        """One run; returns its Result.

        The threading model (knob ``model``) says where the stages run: "rtc" and
        "pipeline", one OS thread per stage (the kernel gives each busy thread a
        core of its own when there are enough); "lthreads", every stage as a
        lightweight thread of one OS thread, switched by the compiled scheduler
        of ``labkit.run.lthreads`` (a numba generator per stage, resumed in
        machine code: a switch costs nanoseconds); "threads", one OS thread per
        stage, all pinned to one CPU, each calling ``sched_yield`` after every
        burst (a kernel context switch, about a microsecond). Both one-CPU
        models switch after every burst and run the same stage code, so they
        differ only in who switches: the program or the kernel.

        threads=False runs the stages one after another, in short slices, on the
        calling thread: the queue of a worker that is not running overflows while
        another one pulls the wire, as on a machine with fewer cores than workers.
        Tests use it to make overflow certain."""
        hz = tsc_hz()
        budget = int(packets) if packets is not None else int(mq.WIRE_MASK)
        self._compile(threads)
        self._prefill()
        start = now_tsc()
        stop = start + int(seconds * hz) if seconds is not None else np.iinfo(np.int64).max
        stages = self._stages(budget, stop, threads and self.model == "threads")
        self.cpu = [0.0] * len(stages)
        self.switches = self.context_switches = 0
        errors = []
        if threads:
            self._on_threads(stages, errors, lambda: tell_progress(
                progress, packets, int(self.nic.ws[mq.WIRE]) & int(mq.WIRE_MASK), start, stop))
        else:
            ticks = int(RR_SLICE_S * hz)
            calls = [self._timed(i, lambda fn=fn, h=head, t=tail: fn(*h, now_tsc() + ticks, *t))
                     for i, (_, fn, head, tail) in enumerate(stages)]
            try:
                self._cooperative(calls, [s[0] for s in stages], errors)
            finally:
                self._return_fill_buffers()
        wall = self._finish(start, hz, errors)
        if self.capture_path:
            self.write_capture(self.capture_path)
        return self._result(wall)

    def _compile(self, threads):
        """Compile (or load the cache) with nothing to send, before the clock starts."""
        self._reset()
        for _, fn, head, tail in self._stages(0, 0, False):
            fn(*head, 0, *tail)
        if threads and self.model == "lthreads":           # and the scheduler, on the same (empty) stages
            self._lthreads(self._stages(0, 0, False), errors=None)
        self._return_fill_buffers()
        self._reset()

    def _on_threads(self, stages, errors, report):
        """Run the stages on OS threads (or, model="lthreads", on one OS thread under the
        compiled scheduler) until all are done; report() progress meanwhile. Ctrl-C stops
        the wire and lets every stage drain before it goes on."""
        slice_ticks = int(SLICE_S * tsc_hz())
        if self.model == "lthreads":          # one OS thread, the compiled scheduler; a turn is one burst
            works, cpus, names = [lambda: self._lthreads(stages, errors)], [None], ["lthreads"]
        else:
            works = [lambda fn=fn, h=head, t=tail: self._spin(fn, h, t, slice_ticks) for _, fn, head, tail in stages]
            cpus, names = self._cpus(len(works)), [s[0] for s in stages]
        go = threading.Barrier(len(works) + 1)
        ctx = [0] * len(works)
        ths = [threading.Thread(target=self._stage_thread, args=(i, w, cpus[i], names[i], go, ctx, errors),
                                name=f"labkit {names[i]}", daemon=True) for i, w in enumerate(works)]
        for th in ths:
            th.start()
        go.wait()
        try:
            for th in ths:
                while th.is_alive():
                    th.join(SLICE_S)
                    report()
                    interrupts.check()              # a Ctrl-C lost in a finalizer, raised again
        except KeyboardInterrupt:
            interrupts.caught()
            mq.stop_wire(self.nic.ws)                 # stop offering; every stage drains
            for th in ths:
                th.join()
            self._return_fill_buffers()
            raise
        self._return_fill_buffers()
        self.context_switches = sum(ctx)
        if self.model != "lthreads":
            self.switches = self.context_switches

    def _stage_thread(self, i, work, cpu, name, go, ctx, errors):
        """The body of stage thread i: pinned to `cpu` (None: not pinned), its CPU time
        and context switches counted; a failure stops the wire (see _failed)."""
        try:
            if cpu is not None:
                os.sched_setaffinity(0, {cpu})     # this thread only
            go.wait()
            c0, r0 = time.thread_time(), _rusage()
            work()
            r1 = _rusage()
            ctx[i] = (r1.ru_nvcsw - r0.ru_nvcsw) + (r1.ru_nivcsw - r0.ru_nivcsw)
            if self.model == "lthreads":
                self._split_cpu(time.thread_time() - c0)
            else:
                self.cpu[i] = time.thread_time() - c0
        except BaseException as e:                # noqa: BLE001  (re-raised in the caller)
            self._failed(name, e, errors)

    def _finish(self, start, hz, errors):
        wall = (now_tsc() - start) / hz
        if errors:
            name, e = errors[0]
            raise RuntimeError(f"{name} failed: {e!r}") from e
        self.last_wall = wall
        return wall

    def _cpus(self, n):
        """The CPU each stage's thread is pinned to (None: not pinned). model="threads":
        all on one CPU (the first this process may use); pin=True: one each, in turn."""
        if not hasattr(os, "sched_getaffinity") or not (self.pin or self.model == "threads"):
            return [None] * n
        allowed = sorted(os.sched_getaffinity(0))
        return [allowed[0] if self.model == "threads" else allowed[i % len(allowed)] for i in range(n)]

    @staticmethod
    def _spin(fn, head, tail, ticks):
        """An OS thread's loop: slices until the stage is done."""
        while not fn(*head, now_tsc() + ticks, *tail):
            pass

    def _failed(self, name, e, errors):
        """A stage failed: stop the wire so the others drain and finish (a failed
        dispatcher posts nothing more: it says so); the run raises it afterwards."""
        errors.append((name, e))
        mq.stop_wire(self.nic.ws)
        if name == "dispatcher":
            self.nic.ws[mq.DONE] = 1

    def _timed(self, i, call):
        def timed():
            c0 = time.thread_time()
            done = call()
            self.cpu[i] += time.thread_time() - c0
            return done
        return timed

    def _lthreads(self, stages, errors):
        """model="lthreads": every stage as a lightweight thread of this OS thread, under
        the compiled scheduler (``lthreads.scheduler``), until all are done; a turn is one
        burst (slice_end_tsc 0). A failure ends that stage only (see _failed); errors
        None: it is raised at once. Ctrl-C reaches only the main thread, which stops the
        wire: the stages drain and the scheduler returns."""
        run = lthreads.scheduler([fn for _, fn, _, _ in stages], self.knobs.jit)
        args = [head + (0,) + tail for _, _, head, tail in stages]

        def failed(i, e):
            if errors is None:
                raise e
            self._failed(stages[i][0], e, errors)
        self.switches += lthreads.run_until_done(run, args, failed)

    def _lthread(self, call, name, errors, done, i):
        """A stage as a lightweight thread: a slice, then yield, until the stage is done.
        A failure ends this stage only (see _failed)."""
        try:
            while not call():
                yield
            done[i] = True
        except Exception as e:                      # noqa: BLE001  (re-raised by run())
            done[i] = True
            self._failed(name, e, errors)

    def _cooperative(self, calls, names, errors):
        """run(threads=False): every stage's slices in turn on the calling thread, as Python
        generators under ``lthreads.run_cooperative``, until all are done.
        Ctrl-C (which reaches only the main thread) ends the lthread it hits: stop
        the wire and let fresh lthreads drain the stages (a stage's state is in its
        arrays, so a new lthread goes on where the old one stopped)."""
        done = [False] * len(calls)
        try:
            self.switches += lthreads.run_cooperative(
                [self._lthread(c, n, errors, done, i) for i, (c, n) in enumerate(zip(calls, names))])
        except BaseException:
            mq.stop_wire(self.nic.ws)
            self.switches += lthreads.run_cooperative(
                [self._lthread(c, n, errors, done, i) for i, (c, n) in enumerate(zip(calls, names)) if not done[i]])
            raise

    def _split_cpu(self, cpu_s):
        """model="lthreads": one thread ran every stage; its CPU time is split between
        them in proportion to the TSC cycles each counted (timing every switch would
        cost more than the switch)."""
        cyc = [int(w.nst[DUT_CYC] + w.nst[NIC_CYC]) for w in self.w]
        if self.dispatcher:
            cyc.append(int(self.dnst[D_CPU_CYC] + self.dnst[D_NIC_CYC]))
        total = sum(cyc)
        self.cpu = [cpu_s * c / total if total else 0.0 for c in cyc]

    # -- what a run measured --------------------------------------------------------------------
    def hot(self, q):
        """Worker q's per-packet counters, by name (HOT)."""
        flat = self.wc.reshape(-1)
        return {name: int(flat[self.wo[q] + j * self.wstep]) for j, name in enumerate(HOT)}

    def _result(self, wall):
        g, reasons = self.g, self.reasons
        total = np.zeros(len(reasons), np.int64)
        stats = np.zeros((len(g.nodes), 3), np.int64)
        sent_wire = self._wire()
        per = [self._worker_row(w, wall) for w in self.w]
        for w in self.w:
            total += w.counters
            stats += w.stats
        sent = sum(r["sent"] for r in per)
        fwd, dut, nic_c = (sum(int(w.nst[i]) for w in self.w) for i in (FWD, DUT_CYC, NIC_CYC))
        extra = {"workers": per, "queues": self.n, "sync": self.knobs.sync,
                 "counters": self.knobs.counters, "dispatcher": self.dispatcher, "rss_key": self.nic.rss_key,
                 "model": self.model, **self._switch_counts(sent_wire)}
        if self.dispatcher:
            total += self.d_counters
            dut += int(self.dnst[D_CPU_CYC])
            nic_c += int(self.dnst[D_NIC_CYC])
            extra.update(self._dispatcher_extra(wall, sent))
        extra["wire"] = sent_wire
        extra["nic_cycles"] = nic_c       # the in-memory NIC's share (Result.cycles_per_packet leaves it out)
        notes = list(self.notes)
        lost = sum(int(w.nst[CAP_LOST]) for w in self.w)
        if lost:
            notes.append(f"capture: {lost} forwarded frames not written (each queue holds at most "
                         f"{self.capture_max})")
        if sent != sent_wire:
            notes.append(f"workers: the queues took {sent} frames but {sent_wire} arrived on the wire")
        return make_result("memory", g, self.knobs, stats=stats, sent=sent_wire, forwarded=fwd,
                           dropped=by_reason(reasons, total), seconds=wall, tsc_hz=tsc_hz(), dut_cycles=dut,
                           nic_cycles=nic_c, notes=notes, pool_ok=all(p.n_free == p.capacity for p in self.pools),
                           extra=extra,
                           latency=lat.summarize(lat.merge([w.hist for w in self.w]), tsc_hz()) if self.latency
                           else None)

    def _worker_row(self, w, wall):
        """Worker w's share of the run (a row of extra["workers"])."""
        dropped = by_reason(self.reasons, w.counters)
        handled = int(w.nst[FWD]) + sum(v for r, v in dropped.items() if r not in NIC_SIDE_DROPS)
        q_sent = int(self.d_qsent[w.q]) if self.dispatcher else int(w.nst[SENT])
        return {"queue": w.q, "sent": q_sent, "forwarded": int(w.nst[FWD]), "dropped": dropped,
                "handled": handled, "dut_cycles": int(w.nst[DUT_CYC]), "nic_cycles": int(w.nst[NIC_CYC]),
                "cycles_per_packet": int(w.nst[DUT_CYC]) / handled if handled else 0.0,
                # the same without the polls that found nothing (waiting for the dispatcher)
                "busy_cycles_per_packet": int(w.nst[DUT_CYC] - w.nst[mq.IDLE_CYC]) / handled if handled else 0.0,
                "mpps": handled / wall / 1e6 if wall > 0 else 0.0,
                "rss_mismatch": int(w.nst[mq.RSS_BAD]),
                # CPU time the worker's thread got: on a shared machine TSC cycles also
                # count the time it waited for a core; CPU cycles per packet do not.
                "cpu_percent": 100.0 * self.cpu[w.q] / wall if wall > 0 else 0.0,
                "cpu_cycles_per_packet": self.cpu[w.q] * tsc_hz() / handled if handled else 0.0,
                "pool_ok": w.pool.n_free == w.pool.capacity, **self.hot(w.q)}

    def _dispatcher_extra(self, wall, sent):
        """What the dispatcher thread measured: its cycles, per frame it took off the
        wire (software hash, hand-over, and locks), its CPU share, its drops."""
        return {"dispatcher_cycles": int(self.dnst[D_CPU_CYC]),
                "dispatcher_idle_cycles": int(self.dnst[D_IDLE_CYC]),
                "dispatcher_busy_cycles_per_packet": int(self.dnst[D_CPU_CYC] - self.dnst[D_IDLE_CYC]) / max(sent, 1),
                "dispatcher_cpu_percent": 100.0 * self.cpu[-1] / wall if wall > 0 else 0.0,
                "dispatcher_dropped": by_reason(self.reasons, self.d_counters)}

    def _wire(self):
        """Frames that arrived on the wire in the last run (the dispatcher's count when it took them)."""
        return int(self.dnst[D_WIRE]) if self.dispatcher else int(self.nic.ws[mq.WIRE]) & int(mq.WIRE_MASK)

    def _switch_counts(self, wire):
        """What the threading model switched: "switches" are the lthreads' resumes
        (model "lthreads", or a run with threads=False) or else the OS context
        switches of the stage threads; "yields" the stages' sched_yield calls
        (model "threads"); per packet of the `wire` that arrived."""
        yields = sum(int(w.nst[YIELDS]) for w in self.w) + (int(self.dnst[D_YIELDS]) if self.dispatcher else 0)
        return {"switches": self.switches, "switches_per_packet": self.switches / wire if wire else 0.0,
                "yields": yields, "context_switches": self.context_switches}

    def capture(self, q):
        """Queue q's forwarded frames of the last run (with capture on): a list of
        (wire position, frame bytes) in the order q transmitted them."""
        w = self.w[q]
        n = int(w.nst[CAP_N])
        lengths = w.cap_len[:n].astype(np.int64)
        offs = np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.int64)
        return [(int(w.cap_wire[i]), w.cap_data[offs[i]:offs[i] + lengths[i]].tobytes()) for i in range(n)]

    def write_capture(self, path):
        """Every queue's forwarded frames in one pcap, in wire order."""
        frames = sorted((f for q in range(self.n) for f in self.capture(q)), key=lambda x: x[0])
        with PcapWriter(path) as wr:
            for _, b in frames:
                wr.write(b)
