"""The in-memory NIC: a synthetic device that needs no root and no kernel.

It behaves as a NIC does toward its driver: it takes free buffers, "DMA"s
frames into them (copies a template; real hardware does this without the CPU,
so its cycles are counted apart, as ``nic_cycles``), posts RX descriptors on a
ring, and takes TX descriptors back, checks them, and returns their buffers
to the pool. Frames come from ``labkit.nic.traffic`` (generated flows, with a
share of malformed ones) or from a pcap file; forwarded frames can be captured
for a pcap sink.

The traffic source is closed-loop by default: the NIC offers a frame only
when an RX descriptor is free, as a generator that always keeps the DUT busy
(latency measured so is latency at saturation: mostly queueing). With a rate
it is open-loop: frame ``i`` arrives at ``t_start + i * cyc_per_pkt`` TSC
cycles whether the driver is ready or not, and the frames that find the RX
ring full are dropped and counted ``rx_queue_full`` (DPDK's ``imissed``). A
frame it cannot place because the pool is empty is counted ``mempool_empty``
(DPDK's ``rx_nombuf``); one longer than a buffer, ``rx_frame_too_long``.

Latency (``labkit.nic.latency``): with a histogram (``hist.size > 0``) the NIC
stamps each frame it "DMA"s with its arrival time (the DMA's TSC, or with a
rate the time it was due: waiting for the driver is latency too) and reads
the stamp of each frame it takes back from the TX ring.

The state of a port is an int64 array ``nst`` (indices below).
"""
import numpy as np
from numba import njit

from ..memory.intrinsics import rdtsc
from ..memory.layouts import DATA_OFF, LINE_SHIFT, META_HASH_OFF
from ..memory.layouts import MEMPOOL_EMPTY, RX_FRAME_TOO_LONG, TX_BAD_DESCRIPTOR
from ..memory.bytes import wr32le
from ..memory.ring import ring_enqueue, ring_dequeue
from .latency import H_MASK, stamps_this, take_stamp, write_stamp

# nst: the port's counters and cursors
POS, SENT, FWD, FWD_BYTES, CAP_N, CAP_BYTES, NIC_CYC, DUT_CYC, STOPPED, CAP_LOST, MISSED = range(11)
NST_SIZE = 16


@njit(nogil=True, cache=True)
def nic_rx_dma(arena, handles, got, want, frames, flens, seq, max_frame,
               rx_desc, rx_cur, tmp_l, tmp_hash, nst, counters, stamp_at, hist, t_start, cyc_per_pkt):
    """Offer `want` frames with `got` free buffers; post what fits; stamp them when
    there is a histogram (`stamp_at`: each template's stamp offset, -1 for none).

    Returns how many of the buffers were used (the caller frees the rest).
    """
    now = np.int64(rdtsc()) if hist.size > 0 else np.int64(0)
    mask = hist[H_MASK] if hist.size > 0 else 0
    sent = nst[SENT]
    used = 0
    pos = nst[POS]                     # the next place in seq, always 0..nseq-1
    nseq = seq.size
    stride = frames.shape[1]
    for w in range(want):
        t = seq[pos]
        pos += 1
        if pos == nseq:                # a compare, not `% nseq`: a division costs tens of cycles
            pos = 0
        length = np.int64(flens[t])
        if length > max_frame or length > stride:
            counters[RX_FRAME_TOO_LONG] += 1
            continue
        if used >= got:
            counters[MEMPOOL_EMPTY] += 1
            continue
        base = np.int64(handles[used]) << LINE_SHIFT
        for j in range(length):        # a loop, not slice assignment: this runs
            arena[base + DATA_OFF + j] = frames[t, j]   # in loops compiled without NRT
        wr32le(arena, base + META_HASH_OFF, t)       # the "NIC-computed" flow id
        if hist.size > 0 and stamp_at[t] >= 0 and stamps_this(mask, sent + w):
            i = sent + w
            arrived = np.int64(t_start) + np.int64(i * cyc_per_pkt) if cyc_per_pkt > 0 else now
            write_stamp(arena, base + DATA_OFF + stamp_at[t], arrived, i)
        tmp_l[used] = length
        tmp_hash[used] = t
        used += 1
    nst[POS] = pos
    nst[SENT] += want
    posted = ring_enqueue(rx_desc, rx_cur, handles, tmp_l, tmp_hash, used)
    assert posted == used  # the caller asked only for what the ring had room for
    return used


@njit(nogil=True, cache=True)
def nic_rx_missed(nst, nseq, k):
    """k frames arrived (open loop) while the RX ring was full: dropped by the NIC, counted."""
    nst[POS] = (nst[POS] + k) % nseq
    nst[SENT] += k
    nst[MISSED] += k


@njit(nogil=True, cache=True, inline="always")
def capture(arena, h, length, cap_data, cap_len, nst):
    """Append buffer h's frame to the capture; returns its slot, or -1 (and
    counts CAP_LOST) when the capture is full."""
    n, off = nst[CAP_N], nst[CAP_BYTES]
    if n >= cap_len.size or off + length > cap_data.size:
        nst[CAP_LOST] += 1
        return -1
    base = (h << LINE_SHIFT) + DATA_OFF
    for j in range(length):
        cap_data[off + j] = arena[base + j]
    cap_len[n] = length
    nst[CAP_N] = n + 1
    nst[CAP_BYTES] = off + length
    return n


@njit(nogil=True, cache=True)
def nic_tx_collect(arena, tx_desc, tx_cur, out_h, tmp_l, tmp_hash, max_frame,
                   cap_data, cap_len, nst, counters, hist):
    """Take every TX descriptor; count it forwarded (capturing it if asked, reading its
    stamp if there is a histogram) or bad (a length no frame can have); every buffer is to
    be freed: out_h[:k]."""
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
            capture(arena, h, length, cap_data, cap_len, nst)
    return k

