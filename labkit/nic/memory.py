"""The in-memory NIC: a synthetic device that needs no root and no kernel.

It behaves as a NIC does toward its driver: it takes free buffers, "DMA"s
frames into them (copies a template; real hardware does this without the CPU,
so its cycles are counted apart, as ``nic_cycles``), posts RX descriptors on a
ring, and takes TX descriptors back, checks them, and returns their buffers
to the pool. Frames come from ``labkit.nic.traffic`` (generated flows, with a
share of malformed ones) or from a pcap file; forwarded frames can be captured
for a pcap sink.

The traffic source is closed-loop: the NIC offers a frame only when an RX
descriptor is free, as a generator that always keeps the DUT busy. A frame it
cannot place because the pool is empty is counted ``mempool_empty`` (DPDK's
``rx_nombuf``); one longer than a buffer, ``rx_frame_too_long``.

The state of a port is an int64 array ``nst`` (indices below).
"""
import numpy as np
from numba import njit

from ..memory.layouts import DATA_OFF, LINE_SHIFT, META_HASH_OFF
from ..memory.layouts import MEMPOOL_EMPTY, RX_FRAME_TOO_LONG, TX_BAD_DESCRIPTOR
from ..memory.bytes import wr32le
from ..memory.ring import ring_enqueue, ring_dequeue

# nst: the port's counters and cursors
POS, SENT, FWD, FWD_BYTES, CAP_N, CAP_BYTES, NIC_CYC, DUT_CYC, STOPPED, CAP_LOST = range(10)
NST_SIZE = 16


@njit(nogil=True, cache=True)
def nic_rx_dma(arena, handles, got, want, frames, flens, seq, max_frame,
               rx_desc, rx_cur, tmp_l, tmp_hash, nst, counters):
    """Offer `want` frames with `got` free buffers; post what fits.

    Returns how many of the buffers were used (the caller frees the rest).
    """
    used = 0
    pos = nst[POS]                     # the next place in seq, always 0..nseq-1
    nseq = seq.size
    stride = frames.shape[1]
    for _ in range(want):
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
        tmp_l[used] = length
        tmp_hash[used] = t
        used += 1
    nst[POS] = pos
    nst[SENT] += want
    posted = ring_enqueue(rx_desc, rx_cur, handles, tmp_l, tmp_hash, used)
    assert posted == used  # the caller asked only for what the ring had room for
    return used


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
                   cap_data, cap_len, nst, counters):
    """Take every TX descriptor; count it forwarded (capturing it if asked) or
    bad (a length no frame can have); every buffer is to be freed: out_h[:k]."""
    k = ring_dequeue(tx_desc, tx_cur, out_h, tmp_l, tmp_hash, out_h.size)
    for i in range(k):
        length = np.int64(tmp_l[i])
        h = np.int64(out_h[i])
        if length > max_frame or length <= 0:
            counters[TX_BAD_DESCRIPTOR] += 1
            continue
        nst[FWD] += 1
        nst[FWD_BYTES] += length
        if cap_len.size > 0:
            capture(arena, h, length, cap_data, cap_len, nst)
    return k

