"""The multi-queue in-memory NIC: N RX/TX queue pairs and RSS in the device.

What the device does, as hardware does it: every frame that arrives on the
wire is hashed (Toeplitz over the IPv4 5-tuple, ``labkit.nic.rss``), the low
7 bits of the hash index a 128-entry indirection table (RETA) that names the
queue, and the frame is "DMA"ed into a buffer that the queue's driver posted,
with the hash written into the buffer's metadata (``META_HASH_OFF``) and into
the descriptor's ``hash`` field, and posted on that queue's RX ring (an SPSC
``Ring``). Every packet of a flow hashes alike, so a flow stays on one queue,
in order. On TX the device collects every queue's TX ring.

Who runs the device's code. Real hardware has a DMA engine per queue that
costs the host CPU nothing. Here the device is code, so its cycles are
counted apart (``NIC_CYC``), as in ``labkit.nic.memory``, and each queue's
part of the device runs on the core of the worker that owns the queue
(``labkit.run.workers`` explains why: a device thread would take a third core
on a two-core machine and make the scaling numbers a measure of it). What the
queues share is the wire:

- ``ws[WIRE]``: how many frames have arrived on the wire so far (frame ``p``
  is template ``seq[p % len(seq)]``), plus ``STOP_BIT``. Only compare-and-swap
  moves it forward, and only while ``STOP_BIT`` is clear, so once a run stops
  the wire is frozen and every queue knows exactly which frames arrived.
- The link comes up when every queue's driver polls (``ws[READY]`` counts
  them, ``link_up``): until then no queue claims frames, so a worker thread
  that starts late does not find its ring overrun.
- The traffic source is closed-loop on the *fastest* queue: a queue whose RX
  ring has room claims wire positions until ``room`` of its own frames have
  arrived. The frames of other queues in that stretch have arrived too: each
  queue's part of the device walks them in wire order, posts what its ring
  holds and counts the rest ``rx_queue_full`` (a frame for a full queue is a
  counted drop, never lost; DPDK counts it in ``imissed``). A slow or
  descheduled worker loses frames while the others run at full speed: what a
  NIC at line rate does.
- Which wire position belongs to which queue: the wire replays templates, and
  a template always hashes the same, so the device classifies each position of
  ``seq`` once, at link-up (``MultiQueueNic.__init__``, with the same kernel),
  into one list of positions per queue. Each queue then walks only its own
  frames. The per-frame hash is computed again when the frame is written into
  its buffer (``hash_ipv4_frames`` on the buffer, counted as NIC cycles) and
  checked against the queue (``nst[RSS_BAD]`` must stay 0).

The metadata gets the hash (``META_HASH_OFF``), the queue (``META_RXQ_OFF``)
and the frame's wire position (``META_WIRE_OFF``, the ``wire_seq`` field of
``BUF_META``), so a test can check that each flow's frames left in wire order.

Also here: ``fetch_or`` and the spinlock of ``labkit.run.workers``, built on
``cas`` (compare-and-swap, in ``labkit.memory.intrinsics``).
"""

import numpy as np
from numba import njit

from ..memory.bytes import wr32le
from ..memory.intrinsics import cas, load_acquire, rdtsc, store_release
from ..memory.layouts import (CACHE_LINE, DATA_OFF, LINE_SHIFT, META_HASH_OFF, META_RXQ_OFF, META_WIRE_OFF,
                              aligned_zeros)
from ..memory.ring import Ring, ring_enqueue, ring_dequeue
from .latency import H_MASK, stamps_this, take_stamp, write_stamp
from .rss import DEFAULT_KEY, SYMMETRIC_KEY, Reta, hash_ipv4_frames, make_tables
from ..memory.layouts import MEMPOOL_EMPTY, RX_FRAME_TOO_LONG, TX_BAD_DESCRIPTOR
from .memory import capture, FWD, FWD_BYTES, SENT

RETA_SIZE = 128

# ws: the shared wire state, one cache line per word that moves
WIRE = 0                       # frames arrived so far | STOP_BIT
DONE = CACHE_LINE // 8         # the dispatcher (sync="lock") has posted its last frame
READY = 2 * CACHE_LINE // 8    # queues whose driver is polling: the wire moves once all are
WS_SIZE = 3 * CACHE_LINE // 8
STOP_BIT = np.int64(1) << 62
WIRE_MASK = STOP_BIT - 1

# per-queue nst beyond labkit.nic.memory's: a queue's device state and counters
RSS_BAD = 11       # frames whose per-frame hash disagreed with their queue: must stay 0
POLLING = 12       # 1 once this queue's driver has said it polls (ws[READY])
IDLE_CYC = 13      # the part of DUT_CYC spent in polls that found no packet
YIELDS = 14        # sched_yield calls of the worker's thread (model="threads", labkit.run.workers)
MQ_NST_SIZE = 16   # two cache lines of int64

KEYS = {"default": DEFAULT_KEY, "symmetric": SYMMETRIC_KEY}


# --- atomics ------------------------------------------------------------------

@njit(nogil=True, cache=True)
def fetch_or(a, i, bits):
    """Atomically ``a[i] |= bits``; returns the old value."""
    while True:
        old = load_acquire(a, i)
        if cas(a, i, old, old | bits) == old:
            return old


@njit(nogil=True, cache=True)
def stop_wire(ws):
    """Freeze the wire: no queue claims frames any more."""
    fetch_or(ws, WIRE, STOP_BIT)


# --- the device -----------------------------------------------------------------

class MultiQueueNic:
    """N queue pairs over one traffic source, RSS in the device.

    ``rss_key``: "default" (Microsoft's key), "symmetric" (both directions of
    a connection hash alike) or 40 key bytes. ``reta``: a ``labkit.nic.rss.Reta``
    (default: 128 entries, round robin over the queues).
    """

    def __init__(self, n_queues, traffic, ring_size=1024, rss_key="default", reta=None):
        if isinstance(n_queues, bool) or not isinstance(n_queues, (int, np.integer)) or not 1 <= n_queues <= 64:
            raise ValueError(f"n_queues={n_queues!r}: use 1..64 queues")
        key = KEYS.get(rss_key, rss_key) if isinstance(rss_key, str) else rss_key
        if not isinstance(key, (bytes, bytearray)) or len(key) < 16:
            raise ValueError(f"rss_key={rss_key!r}: use 'default', 'symmetric' or at least 16 key bytes")
        self.n = int(n_queues)
        self.key = bytes(key)
        self.rss_key = rss_key if isinstance(rss_key, str) else "custom"
        self.tables = make_tables(self.key, 12)
        self.reta = reta if reta is not None else Reta(self.n, RETA_SIZE)
        if self.reta.n_queues != self.n:
            raise ValueError(f"the RETA spreads over {self.reta.n_queues} queues, the NIC has {self.n}")
        self.reta_table = self.reta.table.astype(np.int64)
        self.rx = [Ring(ring_size) for _ in range(self.n)]
        self.tx = [Ring(ring_size) for _ in range(self.n)]
        self.ring_size = int(ring_size)
        self.ws = aligned_zeros(WS_SIZE * 8).view(np.int64)
        self.traffic = traffic
        # Link-up: classify every position of the send order (see the module doc).
        self.template_hash = self.hash_templates(traffic)
        self.template_queue = self.reta_table[self.template_hash & self.reta.mask]
        q_of_pos = self.template_queue[traffic.seq]
        self.positions = [np.flatnonzero(q_of_pos == q).astype(np.int64) for q in range(self.n)]

    def hash_templates(self, traffic):
        """Each template's Toeplitz hash, by the device's own kernel."""
        t = traffic
        flat = np.ascontiguousarray(t.frames).reshape(-1)
        n = t.frames.shape[0]
        bases = np.arange(n, dtype=np.int64) * t.stride - DATA_OFF   # frame i at flat[i * stride]
        lengths = np.minimum(t.lengths.astype(np.int64), t.stride)
        out = np.zeros(n, np.uint32)
        hash_ipv4_frames(self.tables, flat, bases, lengths, n, out)
        return out.astype(np.int64)

    def reset(self):
        """Empty rings and a fresh wire (before a run)."""
        for r in self.rx + self.tx:
            assert len(r) == 0, "a run ended with frames in a ring"
            r.cur[:] = 0
        self.ws[:] = 0


@njit(nogil=True, cache=True)
def link_up(ws, n_queues, nst):
    """Say this queue's driver polls (once per run); True when every queue's does."""
    if nst[POLLING] == 0:
        nst[POLLING] = 1
        while True:
            old = load_acquire(ws, READY)
            if cas(ws, READY, old, old + 1) == old:
                break
    return load_acquire(ws, READY) >= n_queues


@njit(nogil=True, cache=True)
def mq_pending(ws, budget, plist, nseq, nst):
    """Has queue q work on the wire: frames arrived that it has not taken,
    or (wire not frozen) frames it may still claim?"""
    w = load_acquire(ws, WIRE)
    wire = w & WIRE_MASK
    L = plist.size
    if L == 0:
        return False
    if (w & STOP_BIT) == 0 and wire < budget:
        return True
    j = nst[SENT]
    cyc = j // L
    return cyc * nseq + plist[j - cyc * L] < wire


@njit(nogil=True, cache=True, inline="always")
def _write_frame(arena, base, frames, t, length, p, q):
    """Template t into the buffer at `base`, with its wire position and queue in the metadata."""
    for b in range(length):      # a loop, not a slice: compiled without NRT
        arena[base + DATA_OFF + b] = frames[t, b]
    wr32le(arena, base + META_WIRE_OFF, p & 0xFFFFFFFF)
    wr32le(arena, base + META_WIRE_OFF + 4, p >> 32)
    arena[base + META_RXQ_OFF] = q & 0xFF
    arena[base + META_RXQ_OFF + 1] = (q >> 8) & 0xFF


@njit(nogil=True, cache=True)
def mq_rx_dma(arena, handles, got, room, frames, flens, seq, plist, q, ws, budget, claim_max, max_frame,
              rx_desc, rx_cur, tmp_l, tmp_hash, bases, tables, reta, nst, counters, qfull, may_claim, stamp_at,
              hist):
    """Queue q's part of the device: take the frames that arrived for q (in
    wire order), claim more if q's ring has room, write them into the buffers
    ``handles[:got]`` the driver allocated from q's pool, hash each, post them.

    ``room``: free RX descriptors. Frames beyond ``room`` are counted
    ``counters[qfull]`` (rx_queue_full), beyond ``got`` ``mempool_empty``,
    longer than a buffer ``rx_frame_too_long``. Returns the buffers used. With a
    histogram each frame gets its latency stamp (``labkit.nic.latency``).
    """
    now, mask = (np.int64(rdtsc()), hist[H_MASK]) if hist.size > 0 else (np.int64(0), np.int64(0))
    L = plist.size
    if L == 0:
        return 0
    nseq = seq.size
    stride = frames.shape[1]
    j = nst[SENT]                  # q's frames taken so far: the next is entry j of its endless list
    cyc = j // L
    i = j - cyc * L
    used = 0
    left = room
    claimed = not may_claim        # before link-up: only what has arrived (nothing)
    while True:
        w = load_acquire(ws, WIRE)
        wire = w & WIRE_MASK
        frozen = (w & STOP_BIT) != 0 or wire >= budget
        while True:                                  # every frame of q that has arrived
            p = cyc * nseq + plist[i]
            if p >= wire:
                break
            t = seq[plist[i]]
            i += 1
            j += 1
            if i == L:
                i = 0
                cyc += 1
            length = np.int64(flens[t])
            if length > max_frame or length > stride:
                counters[RX_FRAME_TOO_LONG] += 1
                continue
            if left == 0:
                counters[qfull] += 1
                continue
            if used >= got:
                counters[MEMPOOL_EMPTY] += 1
                continue
            base = np.int64(handles[used]) << LINE_SHIFT
            _write_frame(arena, base, frames, t, length, p, q)
            if hist.size > 0 and stamp_at[t] >= 0 and stamps_this(mask, p):
                write_stamp(arena, base + DATA_OFF + stamp_at[t], now, p)
            bases[used] = base
            tmp_l[used] = length
            used += 1
            left -= 1
        if frozen or left == 0 or claimed:
            break
        # Claim: move the wire to just past q's `left`-th next frame (at most
        # claim_max positions at once, never past the budget).
        k = i + left - 1
        c2 = cyc + k // L
        target = min(c2 * nseq + plist[k - (k // L) * L] + 1, budget, wire + claim_max)
        if target <= wire:
            break
        if cas(ws, WIRE, w, target) == w:
            claimed = True
        # else another queue moved the wire (or stopped it): look again
    nst[SENT] = j
    # The hash, per frame, from the bytes just written: what the NIC reports.
    hash_ipv4_frames(tables, arena, bases, tmp_l, used, tmp_hash)
    mask = reta.size - 1
    for u in range(used):
        h = tmp_hash[u]
        wr32le(arena, bases[u] + META_HASH_OFF, h)
        if reta[h & mask] != q:
            nst[RSS_BAD] += 1
    posted = ring_enqueue(rx_desc, rx_cur, handles, tmp_l, tmp_hash, used)
    assert posted == used     # the caller asked only for what the ring had room for
    return used


@njit(nogil=True, cache=True)
def read_wire(arena, h):
    base = (np.int64(h) << LINE_SHIFT) + META_WIRE_OFF
    lo = int(arena[base]) | (int(arena[base + 1]) << 8) | (int(arena[base + 2]) << 16) | (int(arena[base + 3]) << 24)
    hi = int(arena[base + 4]) | (int(arena[base + 5]) << 8) | (int(arena[base + 6]) << 16) | (int(arena[base + 7]) << 24)
    return np.int64(lo) | (np.int64(hi) << 32)


@njit(nogil=True, cache=True)
def mq_tx_collect(arena, tx_desc, tx_cur, out_h, tmp_l, tmp_hash, max_frame,
                  cap_data, cap_len, cap_wire, nst, counters, hist):
    """The device takes queue q's TX descriptors (as ``nic_tx_collect``, latency
    stamps included); a capture also records each frame's wire position. Every
    buffer taken is to be freed by the caller: out_h[:k]."""
    k = ring_dequeue(tx_desc, tx_cur, out_h, tmp_l, tmp_hash, out_h.size)
    now = rdtsc() if hist.size > 0 and k > 0 else 0
    for i in range(k):
        length = np.int64(tmp_l[i])
        h = np.int64(out_h[i])
        if length > max_frame or length <= 0:
            counters[TX_BAD_DESCRIPTOR] += 1
            continue
        nst[FWD] += 1
        nst[FWD_BYTES] += length
        if hist.size > 0:
            take_stamp(arena, (h << LINE_SHIFT) + DATA_OFF, length, now, hist)
        if cap_len.size > 0:
            n = capture(arena, h, length, cap_data, cap_len, nst)
            if n >= 0:
                cap_wire[n] = read_wire(arena, h)
    return k


# --- a software dispatcher's device side (sync="lock", labkit.run.workers) ---------------

@njit(nogil=True, cache=True)
def spin_lock(lk, i):
    """Test-and-test-and-set: spin on a plain (acquire) load, CAS only when free."""
    while True:
        if load_acquire(lk, i) == 0 and cas(lk, i, 0, 1) == 0:
            return
        # (a PAUSE instruction would go here; numba has no intrinsic for it)


@njit(nogil=True, cache=True)
def spin_unlock(lk, i):
    store_release(lk, i, 0)
