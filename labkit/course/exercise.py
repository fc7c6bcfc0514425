"""What the exercises (``exercises/*.ipynb``) import: rings laid out like the
real ones, a "kernel" that fills them, and small measuring tools.

Everything here runs without root. The "kernel" is a numba function that
writes frames into a numpy array exactly where and how Linux writes them into
an AF_PACKET TPACKET_V3 ring (net/packet/af_packet.c: ``prb_open_block``,
``prb_fill_curr_block``, ``prb_close_block``; the layout is in
``include/uapi/linux/if_packet.h``), so a student's walker, the real driver's
``labkit.nic.afpacket.rx_burst`` and the checks all read the same bytes.

A block of the ring (``block_size`` bytes, blocks back to back)::

    +0   tpacket_block_desc: version, offset_to_priv, then tpacket_hdr_v1:
    +8     block_status (TP_STATUS_KERNEL 0: the kernel's; TP_STATUS_USER 1: ours,
           possibly with more bits, e.g. TP_STATUS_BLK_TMO when a timeout closed it)
    +12    num_pkts     +16 offset_to_first_pkt (48)   +20 blk_len   +24 seq_num
    +32    ts_first_pkt +40 ts_last_pkt
    +48  first frame: tpacket3_hdr (48 bytes: tp_next_offset +0, tp_snaplen +12,
         tp_len +16, tp_status +20, tp_mac +24, tp_net +26, tp_rxhash +28),
         sockaddr_ll at +48, the frame itself at +tp_mac (192 here, see
         afpacket.RX_MACOFF); the next frame at +tp_next_offset (0 in the last).

Each synthetic frame carries its sequence number (uint32, little-endian) at
byte ``SEQ_OFF`` of the frame (the UDP payload), so a check can tell which
frames were read, in which order, and whether one was read twice.

Exercise 13 (RSS) gets the published Toeplitz verification table and timers
for a hash function; exercise 14 (an SPSC ring's producer) gets a ring of
plain items, its consumer, a spinlocked twin, a check of the order of a
producer's memory accesses (``order_problems``) and a two-thread stress test
(``spsc_stress``).

``LABKIT_QUICK=1`` in the environment makes every measurement short (tests,
grading); ``quick()`` says whether it is set.
"""
import os
import re
import select
import threading
import time
from collections import namedtuple

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from labkit.memory import intrinsics
from labkit.memory.intrinsics import load_acquire, rdtsc, store_release
from labkit.memory.layouts import CACHE_LINE, DATA_OFF, aligned_zeros
from labkit.memory.ring import CONS, PROD, Ring, ring_enqueue
from labkit.nic.multiqueue import spin_lock, spin_unlock
from labkit.nic.rss import VERIFICATION_IPV4, make_tables, toeplitz_batch
from labkit.nic.syscalls import sys_write
from labkit.settings import quick
from labkit.nic.afpacket import (BLK_FIRST, BLK_NUM_PKTS, BLK_STATUS, C_BNR, C_BSIZE, P3_LEN, P3_MAC, P3_NEXT,
                                 P3_RXHASH, P3_SNAPLEN, RX_RESERVE, TP_STATUS_USER, rx_burst)

__all__ = [
    "quick", "tsc_hz", "now_tsc", "Stream", "make_stream", "V3Ring", "make_v3_ring", "new_log",
    "take_frame", "log_seqs", "receive", "time_walk", "poll_experiment", "SEQ_OFF", "TP_STATUS_BLK_TMO",
    "make_desc_ring", "fill_desc_ring", "drain_compiled", "drain_from_python", "compiles_without_nrt",
    "TxArea", "frames_ring", "real_nic", "check", "stream_bytes", "stream_frame", "Received", "DATA_OFF",
    "time_l2fwd", "RSS_TABLE", "rss_inputs", "time_hash", "time_toeplitz_tables", "SPSC_LOCK", "Spsc", "make_spsc",
    "spsc_dequeue", "locked_enqueue", "locked_dequeue", "order_problems", "spsc_stress", "spsc_one_thread",
]


def tsc_hz():
    from labkit.run.measure import tsc_hz as hz
    return hz()


def now_tsc():
    from labkit.run.measure import now_tsc as now
    return now()


class check:
    """A check cell's frame: ``with check("walk"): assert ...`` prints exactly
    ``check walk: ok`` when the body passes, and nothing else (numba's
    warnings are silenced inside, so the cell's output is that one line)."""

    def __init__(self, name):
        self.name = name

    def __enter__(self):
        import warnings
        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore")
        return self

    def __exit__(self, exc_type, exc, tb):
        self._w.__exit__(exc_type, exc, tb)
        if exc_type is None:
            print(f"check {self.name}: ok")
        return False


# ---- synthetic traffic: frames with a sequence number ------------------------

SEQ_OFF = 42                     # UDP payload: 14 Ethernet + 20 IPv4 + 8 UDP bytes in

Stream = namedtuple("Stream", "templates lengths order n")
Stream.__doc__ = """n frames: frame i is template order[i] (length lengths[order[i]]), with i at SEQ_OFF."""


def make_stream(n, size=60, flows=64, seed=1):
    """n UDP frames from labkit's traffic generator (``labkit.nic.traffic``):
    ``size`` 60..1514 bytes or "imix"; frame i carries i at byte SEQ_OFF."""
    from labkit.nic.traffic import make_traffic
    t = make_traffic(size=size, flows=flows, mix="udp", seed=seed)
    order = t.seq[np.arange(n) % t.seq.size].astype(np.int32)
    return Stream(t.frames, t.lengths.astype(np.int64), order, int(n))


def stream_bytes(stream, start=0, count=None):
    """Total length of frames start..start+count-1."""
    count = stream.n - start if count is None else count
    return int(stream.lengths[stream.order[start:start + count]].sum())


def stream_frame(stream, i):
    """Frame i as bytes, sequence number included."""
    t = stream.order[i]
    f = bytearray(stream.templates[t, :stream.lengths[t]].tobytes())
    f[SEQ_OFF:SEQ_OFF + 4] = int(i).to_bytes(4, "little")
    return bytes(f)


# ---- the TPACKET_V3 ring and its kernel ----------------------------------------

TP_STATUS_BLK_TMO = 1 << 5       # set with TP_STATUS_USER when the block timer retired the block
BLK_VERSION, BLK_O2PRIV, BLK_LEN, BLK_SEQ, BLK_TS_FIRST, BLK_TS_LAST = 0, 4, 20, 24, 32, 40
BLK_HDR_LEN = 48                 # ALIGN(sizeof(struct tpacket_block_desc), 8): the first frame's offset
P3_SEC, P3_NSEC, P3_STATUS, P3_NET = 4, 8, 20, 26
SLL_OFF = 48                     # struct sockaddr_ll, after TPACKET_ALIGN(sizeof(struct tpacket3_hdr))
TPACKET_V3 = 2


def macoff_for(reserve):
    """Where the kernel puts the frame: TPACKET_ALIGN(TPACKET3_HDRLEN 68 + 16) + reserve - 14."""
    return 96 + reserve - 14


# kernel state (int64 array)
(K_BLK, K_OPEN, K_OFF, K_PREV, K_NPK, K_BSEQ, K_DELIVERED, K_DROPPED, K_FREEZES, K_FROZEN,
 K_MACOFF, K_BSIZE, K_BNR, K_FIRST_SEQ, K_OPEN_TSC, K_DONE, K_HANDED) = range(17)
K_SIZE = 24


@njit(nogil=True, cache=True)
def _open_block(u32, kst, now):
    """prb_open_block, or False when the next block is still the user's: the
    queue freezes and frames are dropped until the user gives it back."""
    base = kst[K_BLK] * kst[K_BSIZE]
    if load_acquire(u32, (base + BLK_STATUS) >> 2) & TP_STATUS_USER:
        if kst[K_FROZEN] == 0:
            kst[K_FREEZES] += 1
            kst[K_FROZEN] = 1
        return False
    kst[K_FROZEN] = 0
    u32[(base + BLK_VERSION) >> 2] = TPACKET_V3
    u32[(base + BLK_O2PRIV) >> 2] = BLK_HDR_LEN
    u32[(base + BLK_NUM_PKTS) >> 2] = 0
    u32[(base + BLK_FIRST) >> 2] = BLK_HDR_LEN
    u32[(base + BLK_LEN) >> 2] = BLK_HDR_LEN
    u32[(base + BLK_SEQ) >> 2] = kst[K_BSEQ] & 0xFFFFFFFF
    u32[(base + BLK_SEQ + 4) >> 2] = kst[K_BSEQ] >> 32
    u32[(base + BLK_TS_FIRST) >> 2] = now & 0xFFFFFFFF
    kst[K_BSEQ] += 1
    kst[K_OPEN] = 1
    kst[K_OFF] = BLK_HDR_LEN
    kst[K_NPK] = 0
    kst[K_OPEN_TSC] = now
    return True


@njit(nogil=True, cache=True)
def _close_block(u32, kst, status_bits, handover, now):
    """prb_close_block: the last frame's tp_next_offset becomes 0, then the
    block is the user's (a release store, after every byte of it is written)."""
    base = kst[K_BLK] * kst[K_BSIZE]
    npk = kst[K_NPK]
    if npk > 0:
        u32[(base + kst[K_PREV] + P3_NEXT) >> 2] = 0
    u32[(base + BLK_TS_LAST) >> 2] = now & 0xFFFFFFFF
    if handover.size > 1:                      # the threaded kernel: when each frame was handed over
        for s in range(kst[K_FIRST_SEQ], kst[K_FIRST_SEQ] + npk):
            if s < handover.size:
                handover[s] = now
    store_release(u32, (base + BLK_STATUS) >> 2, TP_STATUS_USER | status_bits)
    kst[K_HANDED] += npk
    kst[K_BLK] = (kst[K_BLK] + 1) % kst[K_BNR]
    kst[K_OPEN] = 0


@njit(nogil=True, cache=True)
def _put_frame(u8, u32, kst, templates, lengths, t, seq, handover, now):
    """tpacket_rcv for one frame: 1 if it is in the ring, 0 if dropped (ring full)."""
    length = lengths[t]
    macoff = kst[K_MACOFF]
    need = (macoff + length + 7) & ~7          # TOTAL_PKT_LEN_INCL_ALIGN(macoff + snaplen)
    bsize = kst[K_BSIZE]
    if kst[K_OPEN] == 1 and kst[K_OFF] + need >= bsize:
        _close_block(u32, kst, 0, handover, now)   # full: hand it over, open the next
    if kst[K_OPEN] == 0:
        if not _open_block(u32, kst, now):
            kst[K_DROPPED] += 1
            return 0
        kst[K_FIRST_SEQ] = seq
    base = kst[K_BLK] * bsize
    off = base + kst[K_OFF]
    for j in range(48 + 20):                   # tpacket3_hdr and sockaddr_ll: fresh
        u8[off + j] = 0
    u32[(off + P3_NEXT) >> 2] = need
    u32[(off + P3_SEC) >> 2] = (now >> 30) & 0xFFFFFFFF
    u32[(off + P3_NSEC) >> 2] = now & 0x3FFFFFFF
    u32[(off + P3_SNAPLEN) >> 2] = length
    u32[(off + P3_LEN) >> 2] = length
    u32[(off + P3_STATUS) >> 2] = TP_STATUS_USER
    u32[(off + P3_MAC) >> 2] = macoff | ((macoff + 14) << 16)    # tp_mac, tp_net (uint16 each)
    u32[(off + P3_RXHASH) >> 2] = (seq * 0x9E3779B1) & 0xFFFFFFFF
    sll = off + SLL_OFF
    u8[sll] = 17                               # sll_family AF_PACKET
    u8[sll + 2] = templates[t, 12]             # sll_protocol: the EtherType, network order
    u8[sll + 3] = templates[t, 13]
    u8[sll + 4] = 2                            # sll_ifindex
    u8[sll + 8] = 1                            # sll_hatype ARPHRD_ETHER
    u8[sll + 11] = 6                           # sll_halen
    for j in range(6):
        u8[sll + 12 + j] = templates[t, 6 + j]  # sll_addr: the source MAC
    f = off + macoff
    for j in range(length):
        u8[f + j] = templates[t, j]
    for j in range(4):
        u8[f + SEQ_OFF + j] = (seq >> (8 * j)) & 0xFF
    kst[K_PREV] = kst[K_OFF]
    kst[K_OFF] += need
    kst[K_NPK] += 1
    u32[(base + BLK_NUM_PKTS) >> 2] = kst[K_NPK]
    u32[(base + BLK_LEN) >> 2] += need
    kst[K_DELIVERED] += 1
    return 1


@njit(nogil=True, cache=True)
def _deliver(u8, u32, kst, templates, lengths, order, start, count, retire):
    """Frames start..start+count-1 arrive; then, if retire, the block timer
    fires and hands over the partly filled block (TP_STATUS_BLK_TMO)."""
    none = np.zeros(1, np.int64)
    got = 0
    for i in range(start, start + count):
        got += _put_frame(u8, u32, kst, templates, lengths, order[i], i, none, 0)
    if retire and kst[K_OPEN] == 1 and kst[K_NPK] > 0:
        _close_block(u32, kst, TP_STATUS_BLK_TMO, none, 0)
    return got


class V3Ring:
    """A TPACKET_V3 RX ring in ordinary memory, and the kernel's side of it.

    ``u8``/``u32``: the ring's bytes, as ``RxRing.u8``/``RxRing.u32`` are the
    mmap'ed ring. ``cur``: the reader's cursor in ``afpacket``'s layout
    (``cur[0]`` the next block to look at; ``cur[C_BSIZE]``, ``cur[C_BNR]``
    the geometry), so ``rx_burst(ring.u8, ring.u32, ring.cur, ...)`` works on
    it. ``deliver()`` is the kernel receiving frames."""

    def __init__(self, block_size=1 << 14, block_nr=8, reserve=RX_RESERVE):
        if block_size % 4096 or block_size < 4096 or not 1 <= block_nr <= 4096:
            raise ValueError(f"ring geometry {block_size}x{block_nr}: block size a multiple of 4096, 1..4096 blocks")
        self.block_size, self.block_nr = int(block_size), int(block_nr)
        self.mem = aligned_zeros(self.block_size * self.block_nr, 4096)
        self.u8, self.u32 = self.mem, self.mem.view(np.uint32)
        self.cur = np.zeros(8, np.int64)
        self.cur[C_BSIZE], self.cur[C_BNR] = self.block_size, self.block_nr
        self.kst = np.zeros(K_SIZE, np.int64)
        self.kst[K_MACOFF] = macoff_for(reserve)
        self.kst[K_BSIZE], self.kst[K_BNR] = self.block_size, self.block_nr
        self.macoff = int(self.kst[K_MACOFF])
        if BLK_HDR_LEN + self.macoff + 1514 + 8 >= self.block_size:
            raise ValueError(f"block size {block_size} cannot hold a 1514-byte frame")

    def deliver(self, stream, start=0, count=None, retire=True):
        """The kernel receives frames start..start+count-1 of ``stream``; with
        ``retire`` the block timer then hands over the last, partly filled
        block. Returns how many went into the ring (the rest were dropped:
        no free block)."""
        count = stream.n - start if count is None else count
        if not 0 <= start <= start + count <= stream.n:
            raise ValueError(f"frames {start}..{start + count - 1}: the stream has {stream.n}")
        return int(_deliver(self.u8, self.u32, self.kst, stream.templates, stream.lengths, stream.order,
                            start, count, retire))

    def status(self):
        """Each block's status word."""
        return self.u32[(np.arange(self.block_nr) * self.block_size + BLK_STATUS) >> 2].copy()

    @property
    def held(self):
        """Blocks handed to the user and not given back."""
        return int(np.count_nonzero(self.status() & TP_STATUS_USER))

    @property
    def delivered(self):
        return int(self.kst[K_DELIVERED])

    @property
    def dropped(self):
        return int(self.kst[K_DROPPED])

    def copy(self):
        """An independent ring with the same bytes, cursor and kernel state."""
        twin = V3Ring.__new__(V3Ring)
        twin.__dict__.update(self.__dict__)
        twin.mem = aligned_zeros(self.mem.size, 4096)
        twin.mem[:] = self.mem
        twin.u8, twin.u32 = twin.mem, twin.mem.view(np.uint32)
        twin.cur, twin.kst = self.cur.copy(), self.kst.copy()
        return twin

    def frame_offsets(self):
        """Offsets and lengths of every frame in blocks the user holds, in ring
        order from cur[0], walked in plain Python: the reference."""
        offs, lens = [], []
        blk = int(self.cur[0])
        for _ in range(self.block_nr):
            base = blk * self.block_size
            if not self.u32[(base + BLK_STATUS) >> 2] & TP_STATUS_USER:
                break
            off = base + int(self.u32[(base + BLK_FIRST) >> 2])
            for _ in range(int(self.u32[(base + BLK_NUM_PKTS) >> 2])):
                offs.append(off + int(self.u32[(off + P3_MAC) >> 2] & 0xFFFF))
                lens.append(int(self.u32[(off + P3_SNAPLEN) >> 2]))
                off += int(self.u32[(off + P3_NEXT) >> 2])
            blk = (blk + 1) % self.block_nr
        return np.array(offs, np.int64), np.array(lens, np.int64)


def make_v3_ring(stream=None, block_size=1 << 14, block_nr=8, reserve=RX_RESERVE, retire=True):
    """A ring of ``block_nr`` blocks of ``block_size`` bytes; if ``stream``
    is given, the kernel lays all its frames into the blocks and hands them
    over (the last, partly filled block by timeout, unless ``retire=False``)."""
    ring = V3Ring(block_size, block_nr, reserve)
    if stream is not None:
        ring.deliver(stream, retire=retire)
    return ring


# ---- the data plane's side of a frame: take it, remember which it was -------

def new_log(capacity=1 << 20):
    """Where take_frame() writes: log[0] frames taken, then their sequence numbers."""
    log = np.zeros(capacity + 1, np.int64)
    return log


@njit(nogil=True, cache=True)
def take_frame(u8, off, length, log):
    """The data plane's work on one frame at byte ``off`` (its first byte, the
    Ethernet header) of ``length`` bytes: here it reads the frame's sequence
    number and logs it, so a check can see which frames were taken, in order."""
    seq = 0
    if length >= SEQ_OFF + 4:
        for j in range(4):
            seq |= np.int64(u8[off + SEQ_OFF + j]) << (8 * j)
    else:
        seq = -1
    n = log[0]
    log[1 + n % (log.size - 1)] = seq
    log[0] = n + 1


def log_seqs(log):
    """The sequence numbers take_frame() logged, in the order it saw them."""
    n = int(log[0])
    return log[1:1 + min(n, log.size - 1)].copy()


Received = namedtuple("Received", "frames bytes dropped seqs polls held")


def receive(walk, ring, stream, bursts=(1, 37, 100, 250, 63, 400, 8)):
    """Run ``stream`` through ``ring``: frames arrive in bursts (sizes cycled
    from ``bursts``), each burst is followed by the block timeout, then one
    poll: ``walk(ring.u8, ring.u32, ring.cur, log)``. A burst that finds no
    free block is dropped, as the kernel does. Returns a Received."""
    log = new_log(stream.n)
    frames = nbytes = polls = 0
    start, k = 0, 0
    while start < stream.n:
        count = min(bursts[k % len(bursts)], stream.n - start)
        ring.deliver(stream, start, count)
        start, k = start + count, k + 1
        nf, nb = walk(ring.u8, ring.u32, ring.cur, log)
        frames, nbytes, polls = frames + int(nf), nbytes + int(nb), polls + 1
    return Received(frames, nbytes, ring.dropped, log_seqs(log), polls, ring.held)


def time_walk(walk, stream, block_size=1 << 16, block_nr=32, burst=4096, rounds=None):
    """TSC cycles per frame of ``walk`` alone, over rings filled in bursts of
    ``burst`` frames (the kernel's filling is not counted). Returns
    (cycles_per_frame, frames_taken, frames_delivered)."""
    ring = make_v3_ring(block_size=block_size, block_nr=block_nr)
    log = new_log(1 << 16)
    hz = tsc_hz()
    rounds = rounds or (5 if quick() else 50)
    walk(ring.u8, ring.u32, ring.cur, log)                 # compile outside the timing
    spent = taken = delivered = 0
    for r in range(rounds):
        start = (r * burst) % max(1, stream.n - burst)
        delivered += ring.deliver(stream, start, burst)
        t0 = time.perf_counter_ns()
        nf, _ = walk(ring.u8, ring.u32, ring.cur, log)
        spent += time.perf_counter_ns() - t0
        taken += int(nf)
    return (spent * hz / 1e9 / taken if taken else float("inf")), taken, delivered


# ---- polling or waiting: a kernel on its own thread ---------------------------

@njit(nogil=True, cache=True, inline="always")
def _wake(efd, one8):
    sys_write(efd, one8, 0, 8)           # eventfd: add 1 to its counter, waking a poll()


@intrinsic
def _usleep(typingctx, us):
    """libc usleep(us) from compiled code: the kernel thread sleeps between its
    softirq-like rounds instead of spinning on a core the reader needs."""
    def codegen(context, builder, sig, args):
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(i32, [i32]), "usleep")
        builder.call(fn, [builder.trunc(args[0], i32)])
        return context.get_dummy_value()
    return types.void(types.int64), codegen


@njit(nogil=True, cache=True)
def _kernel_thread(u8, u32, kst, templates, lengths, order, n, period_tsc, timeout_tsc, t_end,
                   handover, efd, one8, tick_us):
    """Frame i arrives at start + i * period_tsc. Every tick_us the kernel
    puts the frames that have arrived into the ring (as a NIC interrupt and
    its softirq would, a few at a time); a block is handed over when full or
    timeout_tsc after it opened, and then, if efd >= 0, the kernel "wakes
    the socket" (a write to an eventfd, as sk_data_ready would)."""
    seq = 0
    start = rdtsc()
    while seq < n:
        now = rdtsc()
        if now >= t_end:
            break
        handed = kst[K_HANDED]
        while seq < n and start + seq * period_tsc <= now:
            _put_frame(u8, u32, kst, templates, lengths, order[seq], seq, handover, now)
            seq += 1
        if kst[K_OPEN] == 1 and kst[K_NPK] > 0 and now - kst[K_OPEN_TSC] >= timeout_tsc:
            _close_block(u32, kst, TP_STATUS_BLK_TMO, handover, now)
        if kst[K_HANDED] != handed and efd >= 0:
            _wake(efd, one8)
        _usleep(tick_us)
    if kst[K_OPEN] == 1 and kst[K_NPK] > 0:
        _close_block(u32, kst, TP_STATUS_BLK_TMO, handover, rdtsc())
        if efd >= 0:
            _wake(efd, one8)
    store_release(kst, K_DONE, 1)




@njit(nogil=True, cache=True)
def _latencies(log, before, handover, lat, now):
    """Handover-to-seen TSC cycles of the frames logged since ``before``."""
    n = log[0]
    cap = log.size - 1
    k = 0
    for i in range(before, n):
        s = log[1 + i % cap]
        if 0 <= s < handover.size and handover[s] > 0 and i < lat.size:
            lat[i] = now - handover[s]
            k += 1
    return k


def poll_experiment(walk, mode="busy", rate_pps=100_000, seconds=None, block_size=1 << 14, block_nr=8,
                    timeout_ms=1.0, tick_us=50):
    """The kernel (a thread) delivers 60-byte frames at ``rate_pps``; the
    reader either spins on ``walk`` (mode "busy", a poll-mode driver) or
    sleeps until the kernel wakes it (mode "wait": poll() on the socket; here
    an eventfd the kernel writes when it hands over a block), then walks.

    Returns a dict: frames delivered/taken/dropped, the reader's CPU share
    (its thread's CPU time over wall time, percent), wake-ups, and the
    latency from a block's handover to the reader seeing its frames (median
    and 99th percentile, microseconds)."""
    if mode not in ("busy", "wait"):
        raise ValueError(f"mode {mode!r}: use 'busy' or 'wait'")
    seconds = seconds if seconds is not None else (0.2 if quick() else 1.0)
    hz = tsc_hz()
    n = int(rate_pps * seconds) + 1
    stream = make_stream(n)
    ring = make_v3_ring(block_size=block_size, block_nr=block_nr)
    log, handover = new_log(n), np.zeros(n, np.int64)
    lat = np.zeros(n, np.int64)
    efd = os.eventfd(0, os.EFD_NONBLOCK) if mode == "wait" else -1
    one8 = np.zeros(8, np.uint8)
    one8[0] = 1
    walk(ring.u8, ring.u32, ring.cur, log)                   # compile before the clock starts
    _latencies(log, 0, handover, lat, 0)
    _kernel_thread(ring.u8, ring.u32, ring.kst.copy(), stream.templates, stream.lengths, stream.order, 0,
                   1, 1, 0, handover, -1, one8, 0)
    start = now_tsc()
    t_end = start + int((seconds + 0.5) * hz)
    kernel = threading.Thread(target=_kernel_thread, args=(
        ring.u8, ring.u32, ring.kst, stream.templates, stream.lengths, stream.order, n,
        max(1, int(hz / rate_pps)), int(timeout_ms * 1e-3 * hz), t_end, handover, efd, one8, tick_us))
    wakeups = 0
    w0, c0 = time.perf_counter(), time.thread_time()
    kernel.start()
    try:
        poller = select.poll()
        if efd >= 0:
            poller.register(efd, select.POLLIN)
        after_done = 0
        while after_done <= block_nr:            # a walk that never gives blocks back would spin for ever
            done = ring.kst[K_DONE]
            after_done += bool(done)
            if mode == "wait" and not done:
                if poller.poll(10):
                    try:
                        os.read(efd, 8)
                    except BlockingIOError:
                        pass
                    wakeups += 1
            before = int(log[0])
            nf, _ = walk(ring.u8, ring.u32, ring.cur, log)
            if nf:
                _latencies(log, before, handover, lat, now_tsc())
            elif done:
                break
    finally:
        kernel.join()
        if efd >= 0:
            os.close(efd)
    wall, cpu = time.perf_counter() - w0, time.thread_time() - c0
    taken = int(log[0])
    seen = lat[:taken][lat[:taken] > 0] / hz * 1e6
    return {
        "mode": mode, "rate_pps": rate_pps, "delivered": ring.delivered, "taken": taken,
        "dropped": ring.dropped, "cpu_percent": 100.0 * cpu / wall if wall > 0 else 0.0,
        "wakeups": wakeups,
        "latency_us_p50": float(np.percentile(seen, 50)) if seen.size else float("nan"),
        "latency_us_p99": float(np.percentile(seen, 99)) if seen.size else float("nan"),
    }


# ---- 02: SPSC descriptor rings ------------------------------------------------

def make_desc_ring(size=1024, start=0):
    """A labkit.memory.ring.Ring whose cursors both start at ``start`` (so a
    test can put the wrap-around of the index, or huge cursor values, where
    it likes). Unused descriptors hold 0xDEAD: reading one shows."""
    r = Ring(size)
    r.desc["handle"] = 0xDEAD
    r.desc["length"] = 0xDEAD & 0xFFFF
    r.cur[PROD] = r.cur[CONS] = np.uint64(start)
    return r


def fill_desc_ring(ring, first, n):
    """Producer: post n descriptors, handles first..first+n-1 and lengths
    60 + handle % 1455; returns how many fit."""
    h = np.arange(first, first + n, dtype=np.uint32)
    ln = (60 + h % 1455).astype(np.uint16)
    return int(ring_enqueue(ring.desc, ring.cur, h, ln, h, n))


@njit(nogil=True)
def _drain_compiled(rx, desc, cur, out_h, out_l, batch, total, src_h, src_l, src_hash):
    """Producer and consumer in one compiled loop: post 256 descriptors, then
    take them back with rx(..., batch) until the ring is empty."""
    got = 0
    check = 0
    t0 = rdtsc()
    while got < total:
        ring_enqueue(desc, cur, src_h, src_l, src_hash, src_h.size)
        while True:
            k = rx(desc, cur, out_h, out_l, batch)
            if k == 0:
                break
            got += k
            check += out_h[0]
    return rdtsc() - t0, got, check


def drain_compiled(rx, batch, total=None):
    """TSC cycles per descriptor through a 1024-slot ring, producer and
    consumer in one compiled loop (``rx`` must be numba-compiled)."""
    total = total or (200_000 if quick() else 2_000_000)
    ring = make_desc_ring()
    out_h, out_l = np.zeros(256, np.uint32), np.zeros(256, np.uint16)
    src_h = np.arange(256, dtype=np.uint32)
    src_l, src_hash = np.full(256, 60, np.uint16), src_h.copy()
    _drain_compiled(rx, ring.desc, ring.cur, out_h, out_l, batch, 1024, src_h, src_l, src_hash)
    cycles, got, _ = _drain_compiled(rx, ring.desc, ring.cur, out_h, out_l, batch, total, src_h, src_l, src_hash)
    return cycles / got


def drain_from_python(rx, batch, total=None):
    """TSC cycles per descriptor when every rx call comes from Python: each
    call crosses into compiled code (~0.1-0.3 us here), about what a system
    call costs; the burst shares that cost."""
    total = total or (20_000 if quick() else 200_000)
    ring = make_desc_ring()
    out_h, out_l = np.zeros(256, np.uint32), np.zeros(256, np.uint16)
    hz = tsc_hz()
    rx(ring.desc, ring.cur, out_h, out_l, batch)
    got, spent, first = 0, 0, 0
    while got < total:
        fill_desc_ring(ring, first, 256)
        first += 256
        t0 = time.perf_counter_ns()
        while True:
            k = rx(ring.desc, ring.cur, out_h, out_l, batch)
            if k == 0:
                break
            got += k
        spent += time.perf_counter_ns() - t0
    return spent * hz / 1e9 / got


# ---- 03: frames where the kernel wrote them ------------------------------------

def compiles_without_nrt(fn, *args):
    """Compile ``fn`` (a numba function, or a plain one) again with numba's
    runtime off (``_nrt=False``, as labkit's generated data-plane loops are)
    and run it on ``args``. Code that allocates an array cannot compile so;
    returns (True, None) or (False, the first line of numba's complaint)."""
    from numba import njit as _njit
    py = getattr(fn, "py_func", fn)
    try:
        _njit(nogil=True, _nrt=False)(py)(*args)
    except Exception as e:                     # numba's TypingError/LoweringError
        text = " ".join(str(e).split())
        called = re.search(r"built-in function (\w+)", text)
        if called:
            return False, f"it calls {called.group(1)}(), which needs numba's runtime (an allocation)"
        return False, text[:160]
    return True, None


class TxArea:
    """Where forwarded frames go: ``n`` slots of ``slot`` bytes (like the
    TPACKET_V2 TX ring's 2 KiB frames), slot i at byte ``i * slot``; the
    caller sets ``lens[i]`` to the frame's length."""

    def __init__(self, n, slot=2048):
        self.slot = slot
        self.u8 = np.zeros(n * slot, np.uint8)
        self.lens = np.zeros(n, np.int64)

    def frame(self, i):
        return self.u8[i * self.slot:i * self.slot + int(self.lens[i])].tobytes()


def frames_ring(n, size=60, seed=1):
    """A V3 ring holding ``n`` frames of ``size`` bytes (or "imix") and what
    the real driver's rx_burst says about them: (ring, hs, ls), frame i at
    ring.u8[hs[i] + DATA_OFF : ... + ls[i]]. The ring is sized to hold them."""
    stream = make_stream(n, size=size, seed=seed)
    block_size = 1 << 16
    per_block = (block_size - BLK_HDR_LEN) // (macoff_for(RX_RESERVE) + 1514 + 8)
    if size != "imix":
        per_block = (block_size - BLK_HDR_LEN - 1) // ((macoff_for(RX_RESERVE) + int(size) + 7) & ~7)
    block_nr = max(1, -(-n // per_block) + 1)
    ring = make_v3_ring(stream, block_size=block_size, block_nr=block_nr)
    assert ring.delivered == n, "frames_ring: the ring is too small"
    hs, ls, hashes = np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n, np.uint32)
    too_long = np.zeros(1, np.int64)
    got = rx_burst(ring.u8, ring.u32, ring.cur, hs, ls, hashes, n, 1 << 16, too_long)
    assert got == n
    return ring, hs, ls


def time_l2fwd(fn, size, n=None, rounds=None):
    """TSC cycles per frame of ``fn(u8, hs, ls, n, tx_u8, tx_lens, slot)``
    forwarding n frames of ``size`` bytes from a V3 ring into a TxArea."""
    n = n or (1024 if quick() else 4096)
    rounds = rounds or (5 if quick() else 30)
    ring, hs, ls = frames_ring(n, size=size)
    tx = TxArea(n)
    fn(ring.u8, hs, ls, n, tx.u8, tx.lens, tx.slot)          # compile, and warm the caches
    best = None
    for _ in range(rounds):
        t0 = time.perf_counter_ns()
        fn(ring.u8, hs, ls, n, tx.u8, tx.lens, tx.slot)
        dt = time.perf_counter_ns() - t0
        best = dt if best is None else min(best, dt)
    return best * tsc_hz() / 1e9 / n


# ---- the real thing ------------------------------------------------------------

def real_nic():
    """None if the notebook may run on the lab's veth pair now, else why not
    (not root, not Linux, or quick mode: the real NIC takes seconds)."""
    from labkit.nic import labnet
    why = labnet.why_not()
    if why is None and quick():
        return "LABKIT_QUICK is set: the real-NIC runs take several seconds"
    return why



# ---- 13: the Toeplitz hash ------------------------------------------------------

# The published IPv4 table, each row as printed (destination first: the trap).
RSS_TABLE = VERIFICATION_IPV4


def rss_inputs(n=1000, seed=1):
    """n random 12-byte RSS inputs (an IPv4 4-tuple's size)."""
    rng = np.random.default_rng(seed)
    return [bytes(row) for row in rng.integers(0, 256, (n, 12), dtype=np.uint8)]


def time_hash(fn, key, inputs, rounds=None):
    """TSC cycles per call of the Python function ``fn(key, data)`` over
    ``inputs`` (best of ``rounds`` passes)."""
    rounds = rounds or (2 if quick() else 5)
    best = None
    for _ in range(rounds):
        t0 = time.perf_counter_ns()
        for d in inputs:
            fn(key, d)
        dt = time.perf_counter_ns() - t0
        best = dt if best is None else min(best, dt)
    return best * tsc_hz() / 1e9 / len(inputs)


@njit(nogil=True, cache=True)
def _hash_rounds(tables, data, lengths, out, rounds):
    for _ in range(rounds):
        toeplitz_batch(tables, data, lengths, out)


def time_toeplitz_tables(key, inputs, rounds=None):
    """TSC cycles per hash of labkit's table-driven numba version
    (``labkit.nic.rss.toeplitz_batch``: one table load per input byte) over
    ``inputs`` (equal lengths), best of 5 timings of ``rounds`` passes."""
    rounds = rounds or (200 if quick() else 2000)
    data = np.frombuffer(b"".join(inputs), np.uint8).reshape(len(inputs), -1)
    lengths = np.full(len(inputs), data.shape[1], np.int64)
    out = np.zeros(len(inputs), np.uint32)
    tables = make_tables(key, data.shape[1])
    _hash_rounds(tables, data, lengths, out, 1)
    best = None
    for _ in range(5):
        t0 = now_tsc()
        _hash_rounds(tables, data, lengths, out, rounds)
        dt = now_tsc() - t0
        best = dt if best is None else min(best, dt)
    return best / (rounds * len(inputs))


# ---- 14: a lock-free SPSC ring across two threads -------------------------------------

SPSC_LOCK = 2 * CACHE_LINE // 8    # cur[SPSC_LOCK]: the lock word of the spinlocked variant (third line)
SPSC_EMPTY = 0xDEAD                # what an unused slot holds: reading one shows

Spsc = namedtuple("Spsc", "slots cur")
Spsc.__doc__ = """A ring of uint64 items: ``slots`` (a power of two of them) and ``cur``,
the producer's cursor cur[PROD] and the consumer's cur[CONS] on cache lines
of their own, as labkit.memory.ring lays them out (plus a lock word on a
third line, used only by the spinlocked variant)."""


def make_spsc(size=1024, start=0):
    """An empty ring of ``size`` slots whose cursors both start at ``start``
    (so a check can put the wrap-around where it likes)."""
    if not isinstance(size, (int, np.integer)) or size < 2 or size & (size - 1):
        raise ValueError(f"ring size {size!r}: use a power of two >= 2 (the cursor wraps with a mask)")
    slots = aligned_zeros(int(size) * 8).view(np.uint64)
    slots[:] = SPSC_EMPTY
    cur = aligned_zeros(3 * CACHE_LINE).view(np.uint64)
    cur[PROD] = cur[CONS] = np.uint64(start)
    return Spsc(slots, cur)


@njit(nogil=True, cache=True)
def spsc_dequeue(slots, cur, out, n):
    """The consumer (exercise 02's rx_batch, for plain items): take up to n
    items into out; returns how many there were."""
    mask = slots.size - 1
    cons = cur[CONS]                                   # only the consumer writes it
    k = min(n, np.int64(load_acquire(cur, PROD) - cons))   # acquire: the slots are read after it
    for i in range(k):
        out[i] = slots[(cons + i) & mask]
    store_release(cur, CONS, cons + k)                 # release: the producer may reuse them now
    return max(k, 0)


@njit(nogil=True, cache=True)
def locked_enqueue(slots, cur, items, n):
    """The same ring behind a spinlock (``labkit.nic.multiqueue.spin_lock``, a
    compare-and-swap): both sides take the lock for every call, so plain
    loads and stores of the cursors suffice, and every call moves the lock's
    cache line between the cores."""
    spin_lock(cur, SPSC_LOCK)
    mask = slots.size - 1
    prod = cur[PROD]
    k = min(n, slots.size - np.int64(prod - cur[CONS]))
    for i in range(k):
        slots[(prod + i) & mask] = items[i]
    cur[PROD] = prod + k
    spin_unlock(cur, SPSC_LOCK)
    return max(k, 0)


@njit(nogil=True, cache=True)
def locked_dequeue(slots, cur, out, n):
    """The consumer of ``locked_enqueue``'s ring, under the same lock."""
    spin_lock(cur, SPSC_LOCK)
    mask = slots.size - 1
    cons = cur[CONS]
    k = min(n, np.int64(cur[PROD] - cons))
    for i in range(k):
        out[i] = slots[(cons + i) & mask]
    cur[CONS] = cons + k
    spin_unlock(cur, SPSC_LOCK)
    return max(k, 0)


class _Recorded(np.ndarray):
    """An array that logs every element read and write: (kind, array name, index, value)."""

    def __getitem__(self, i):
        v = np.ndarray.__getitem__(self, i)
        if np.ndim(i) == 0:
            self.log.append(("load", self.name, int(i), int(v)))
        return v

    def __setitem__(self, i, v):
        np.ndarray.__setitem__(self, i, v)
        if np.ndim(i) == 0:
            self.log.append(("store", self.name, int(i), int(np.ndarray.__getitem__(self, i))))


def _recorded(a, name, log):
    r = a.copy().view(_Recorded)
    r.name, r.log = name, log
    return r


def _record_call(enqueue, size, start, cons_behind, items):
    """Run enqueue's Python source (numba's ``py_func``) once on a recording
    ring whose consumer is ``cons_behind`` items behind; returns (log, returned)."""
    import types as pytypes
    py = getattr(enqueue, "py_func", enqueue)
    log = []

    def acquire(a, i):
        v = np.ndarray.__getitem__(a, i)
        log.append(("acquire", getattr(a, "name", "?"), int(i), int(v)))
        return v

    def release(a, i, v):
        np.ndarray.__setitem__(a, i, v)
        log.append(("release", getattr(a, "name", "?"), int(i), int(np.ndarray.__getitem__(a, i))))

    glb = dict(py.__globals__)
    for k, v in py.__globals__.items():           # whatever name the intrinsics were imported as
        if v is intrinsics.load_acquire or v is load_acquire:
            glb[k] = acquire
        elif v is intrinsics.store_release or v is store_release:
            glb[k] = release
    fn = pytypes.FunctionType(py.__code__, glb, py.__name__, py.__defaults__, py.__closure__)
    ring = make_spsc(size, start)
    ring.cur[CONS] = np.uint64(start - cons_behind)
    slots, cur = _recorded(ring.slots, "slots", log), _recorded(ring.cur, "cur", log)
    got = fn(slots, cur, items, len(items))
    return log, got


def order_problems(enqueue):
    """What is wrong with the order of ``enqueue``'s memory accesses, as a
    list of sentences (empty: nothing). Its Python source is run on a
    recording ring (3 items, room for them) and its accesses are checked
    against the SPSC protocol:

    - the consumer's cursor cur[CONS] is read with load_acquire before any
      slot is written (the consumer is done with the slots it gave back);
    - every slot is written before the store_release of cur[PROD] that
      publishes it; cur[PROD] is never written with a plain store;
    - the producer never writes cur[CONS].
    """
    start = 2 ** 40 + 6
    try:
        log, got = _record_call(enqueue, 8, start, 2, np.array([11, 12, 13], np.uint64))
    except Exception as e:                     # the student's code, run as plain Python
        return [f"enqueue's Python source failed on a ring of 8 with room for 3 items: {type(e).__name__}: {e}"]
    problems = []
    writes = [(t, e) for t, e in enumerate(log) if e[1] == "slots" and e[0] == "store"]
    first_write = writes[0][0] if writes else len(log)
    acq_cons = [t for t, e in enumerate(log) if e[0] == "acquire" and e[1] == "cur" and e[2] == CONS]
    if not acq_cons or acq_cons[0] > first_write:
        problems.append("read the consumer's cursor with load_acquire(cur, CONS) before writing slots "
                        "(a plain read may be stale or hoisted out of a loop)")
    if any(e[0] == "store" and e[1] == "cur" and e[2] == PROD for e in log):
        problems.append("cur[PROD] is written with a plain store: publish it with store_release(cur, PROD, ...)")
    if any(e[0] in ("store", "release") and e[1] == "cur" and e[2] == CONS for e in log):
        problems.append("the producer wrote cur[CONS]: only the consumer moves it")
    mask = 7
    for t, e in enumerate(log):
        if e[1] == "cur" and e[2] == PROD and e[0] in ("store", "release"):
            written = {w[2] for u, w in writes if u < t}
            late = [p for p in range(start, e[3]) if (p & mask) not in written]
            if late:
                problems.append(f"cur[PROD] becomes {e[3] - start} items ahead before slot {late[0] & mask} "
                                f"is written: a consumer on another core may read the slot too early")
                break
    if not any(e[1] == "cur" and e[2] == PROD and e[0] in ("store", "release") for e in log) and got:
        problems.append("cur[PROD] is never moved: the consumer never sees the items")
    return problems


@njit(nogil=True, cache=True)
def _produce(enqueue, slots, cur, items, n, burst, deadline, stamps):
    """Post items 0..n-1 in calls of up to `burst`; stamps[0:2] = start and end TSC."""
    stamps[0] = rdtsc()
    sent = 0
    while sent < n:
        m = min(burst, n - sent)
        for j in range(m):
            items[j] = sent + j
        sent += enqueue(slots, cur, items, m)
        if rdtsc() > deadline:
            break
    stamps[1] = rdtsc()
    return sent


@njit(nogil=True, cache=True)
def _consume(dequeue, slots, cur, out, n, burst, deadline, stamps, bad):
    """Take n items in calls of up to `burst`; bad[0] counts items that were not
    the next of the sequence, bad[1] is the position of the first one (-1: none)."""
    stamps[0] = rdtsc()
    got = 0
    while got < n:
        k = dequeue(slots, cur, out, burst)
        for j in range(k):
            if out[j] != got + j:
                if bad[0] == 0:
                    bad[1] = got + j
                bad[0] += 1
        got += k
        if k == 0 and rdtsc() > deadline:
            break
    stamps[1] = rdtsc()
    return got


def spsc_stress(enqueue, dequeue=spsc_dequeue, n=None, size=1024, burst=32, timeout_s=10.0):
    """Producer and consumer on two threads (two cores, if the machine has
    them free): ``enqueue`` posts items 0..n-1, ``dequeue`` takes them and
    checks each is the next of the sequence. Both loops are compiled and
    release the GIL. Returns a dict: sent, received, out_of_order (items that
    were not the next one expected), first_bad (its position, or -1),
    timed_out, mpps (items per second, first start to last end)."""
    n = n or (200_000 if quick() else 2_000_000)
    ring = make_spsc(size)
    items, out = np.zeros(max(burst, 1), np.uint64), np.zeros(max(burst, 1), np.uint64)
    ps, cs, bad = np.zeros(2, np.int64), np.zeros(2, np.int64), np.array([0, -1], np.int64)
    _produce(enqueue, ring.slots, ring.cur, items, 0, burst, 0, ps)      # compile outside the clock
    _consume(dequeue, ring.slots, ring.cur, out, 0, burst, 0, cs, bad)
    hz = tsc_hz()
    deadline = now_tsc() + int(timeout_s * hz)
    res = {}
    prod = threading.Thread(target=lambda: res.update(
        sent=_produce(enqueue, ring.slots, ring.cur, items, n, burst, deadline, ps)))
    cons = threading.Thread(target=lambda: res.update(
        received=_consume(dequeue, ring.slots, ring.cur, out, n, burst, deadline, cs, bad)))
    cons.start()
    prod.start()
    prod.join()
    cons.join()
    wall = (max(ps[1], cs[1]) - min(ps[0], cs[0])) / hz
    return {"sent": int(res["sent"]), "received": int(res["received"]), "out_of_order": int(bad[0]),
            "first_bad": int(bad[1]), "timed_out": res["received"] < n or res["sent"] < n,
            "mpps": float(res["received"] / wall / 1e6) if wall > 0 else 0.0}


@njit(nogil=True, cache=True)
def _one_thread(enqueue, dequeue, slots, cur, items, out, n, burst):
    sent = got = 0
    t0 = rdtsc()
    while got < n:
        m = min(burst, n - sent)
        for j in range(m):
            items[j] = sent + j
        sent += enqueue(slots, cur, items, m)
        got += dequeue(slots, cur, out, burst)
    return rdtsc() - t0


def spsc_one_thread(enqueue, dequeue=spsc_dequeue, n=None, size=1024, burst=32):
    """Mpps of the same ring with producer and consumer taking turns on one
    thread: no cache line crosses between cores."""
    n = n or (200_000 if quick() else 2_000_000)
    ring = make_spsc(size)
    items, out = np.zeros(burst, np.uint64), np.zeros(burst, np.uint64)
    _one_thread(enqueue, dequeue, ring.slots, ring.cur, items, out, 0, burst)
    ring = make_spsc(size)
    cycles = _one_thread(enqueue, dequeue, ring.slots, ring.cur, items, out, n, burst)
    return float(n / (cycles / tsc_hz()) / 1e6)


# --- exercise 02b: a latency histogram ----------------------------------------------------------

def latency_samples(rng, n):
    """n latencies in TSC cycles: a body around 2,000 (lognormal) and, for 1% of them, a long tail
    (Pareto) up to millions: what a data plane with an occasional stall gives."""
    body = rng.lognormal(np.log(2000), 0.5, n)
    tail = rng.pareto(1.2, n) * 20_000
    return np.where(rng.random(n) < 0.01, body + tail, body).astype(np.int64)


def latency_probe_values(max_bits=42):
    """Sorted values from 0 to 2**max_bits - 1: every value below 300, each power of two with its
    neighbours, and random ones in between."""
    vs = set(range(300))
    for k in range(5, max_bits + 1):
        vs.update(x for x in (2**k - 1, 2**k, 2**k + 1) if x < 2**max_bits)
    rng = np.random.default_rng(3)
    vs.update(int(x) for x in np.exp(rng.uniform(0, max_bits * np.log(2), 3000)) if x < 2**max_bits)
    return np.array(sorted(vs), np.int64)


def latency_distributions(rng):
    """(name, TSC-cycle samples) for the percentile check: small integers, a long tail, and values
    spread over nine orders of magnitude."""
    return [("small integers", rng.integers(0, 40, 5000).astype(np.int64)),
            ("long-tailed", latency_samples(rng, 20_000)),
            ("wide", np.exp(rng.uniform(0, 28, 20_000)).astype(np.int64))]


@njit(nogil=True, cache=True)
def _keep(samples, out):
    for i in range(samples.size):
        out[i] = samples[i]


def time_record(record, bucket, n_buckets, n=None):
    """TSC cycles per sample, medians of 5: `record(hist, samples, bucket)` into a histogram,
    against keeping every sample in an array and asking np.percentile for four percentiles."""
    n = n or (200_000 if quick() else 2_000_000)
    samples = latency_samples(np.random.default_rng(5), n)
    hist, kept = np.zeros(n_buckets, np.int64), np.zeros(n, np.int64)
    record(hist, samples[:10], bucket)
    _keep(samples[:10], kept)
    h, k = [], []
    for _ in range(5):
        hist[:] = 0
        t0 = now_tsc()
        record(hist, samples, bucket)
        t1 = now_tsc()
        _keep(samples, kept)
        np.percentile(kept, [50, 90, 99, 99.9])
        t2 = now_tsc()
        h.append((t1 - t0) / n)
        k.append((t2 - t1) / n)
    return {"histogram": float(np.median(h)), "keep_and_sort": float(np.median(k))}
