"""labkit's traffic generator: MoonGen's job, on an AF_PACKET TX ring.

It sends the same traffic the in-memory NIC offers (``labkit.nic.traffic``:
flow templates and a send order) into a TX ring, at a given rate or as fast
as the kernel takes it, and counts (and optionally captures) what comes back
on its RX ring. One compiled loop does both, on its own thread: numba
releases the GIL, so the generator, the device under test and the Python
thread watching them run side by side.

Counters (``gst``, int64) are indices below. ``sent`` counts every frame the
generator offered: posted to the TX ring, or refused before that because no
Ethernet link can carry it (shorter than a header, longer than MTU + 14):
those are counted ``gen_unsendable``, as a NIC would refuse the descriptor.

Latency (``labkit.nic.latency``): with a histogram (``hist.size > 0``) the
generator writes each frame's stamp into its TX slot just before the kick
(one TSC reading per kick: the frames leave together), and reads the stamp of
each frame that comes back (one TSC reading per RX burst). The kernel reads a
TX slot only inside the kick's ``send()``, so writing the stamp after the
slot was requested, and before the kick, is safe.
"""
import numpy as np
from numba import njit

from ..memory.intrinsics import rdtsc
from ..memory.layouts import DATA_OFF
from .afpacket import ETH_HLEN, P2_DATA, T_FSIZE, T_HEAD, rx_burst, rx_release, tx_kick, tx_put, tx_reap
from .latency import H_MASK, stamps_this, take_stamp, write_stamp

(G_POS, G_SENT, G_UNSENDABLE, G_RX, G_RX_BYTES, G_TOO_LONG, G_CAP_N, G_CAP_BYTES,
 G_CAP_LOST, G_STOP, G_ERR, G_TX_DONE_TSC, G_LAST_RX_TSC, G_PENDING) = range(14)
GST_SIZE = 16
NO_STAMPS = (np.zeros(0, np.int32), np.zeros(0, np.int64), np.zeros((0, 2), np.int64))   # latency not measured


@njit(nogil=True, cache=True, inline="always")
def _came_back(rx8, hs, ls, n, gst, cap_data, cap_len, hist):
    """Count the n frames that came back; read their stamps, capture them, when asked."""
    if hist.size > 0:
        back = np.int64(rdtsc())
        for i in range(n):
            take_stamp(rx8, np.int64(hs[i]) + DATA_OFF, np.int64(ls[i]), back, hist)
    for i in range(n):
        length = np.int64(ls[i])
        gst[G_RX] += 1
        gst[G_RX_BYTES] += length
        if cap_len.size > 0:
            c, off = gst[G_CAP_N], gst[G_CAP_BYTES]
            if c < cap_len.size and off + length <= cap_data.size:
                src = np.int64(hs[i]) + DATA_OFF
                for j in range(length):
                    cap_data[off + j] = rx8[src + j]
                cap_len[c] = length
                gst[G_CAP_N] = c + 1
                gst[G_CAP_BYTES] = off + length
            else:
                gst[G_CAP_LOST] += 1


@njit(nogil=True, cache=True)
def gen_slice(tx8, tx32, tcur, tx_fd, kick_buf, frames, stride, flens, seq, max_len,
              rx8, rx32, rcur, hs, ls, hashes, rx_max, too_long,
              cap_data, cap_len, gst, budget, t_start, stop_tsc, cyc_per_pkt, batch, slice_end,
              stamp_at, hist, stamps):
    """Send (until `budget` frames or `stop_tsc`) and receive, until slice_end.

    Returns whether sending is over (and the TX ring empty). Receiving goes
    on for as long as the caller keeps calling. With a histogram, `stamp_at` is
    each template's stamp offset and `stamps` (batch x 2) holds where this
    kick's stamps go and their sequence numbers."""
    nseq = seq.size
    measure = hist.size > 0
    mask = hist[H_MASK] if measure else 0
    while True:
        now = np.int64(rdtsc())
        # -- receive: count what the device under test sent back --------------
        n = rx_burst(rx8, rx32, rcur, hs, ls, hashes, hs.size, rx_max, too_long)
        if n > 0:
            gst[G_LAST_RX_TSC] = now
            _came_back(rx8, hs, ls, n, gst, cap_data, cap_len, hist)
        rx_release(rx32, rcur)
        # -- send ---------------------------------------------------------------
        if gst[G_STOP] == 0 and (gst[G_SENT] >= budget or now >= stop_tsc):
            gst[G_STOP] = 1
        if gst[G_STOP] == 0:
            allowed = budget - gst[G_SENT]
            if cyc_per_pkt > 0:         # rate limit: no more than the clock allows so far
                allowed = min(allowed, np.int64((now - t_start) / cyc_per_pkt) + 1 - gst[G_SENT])
            k = min(batch, allowed)
            pos = gst[G_POS]                 # the next place in seq, always 0..nseq-1
            n_st = 0
            for _ in range(k):
                t = seq[pos]
                length = np.int64(flens[t])
                slot = tcur[T_HEAD] * tcur[T_FSIZE] + P2_DATA
                if length < ETH_HLEN or length > max_len:
                    gst[G_UNSENDABLE] += 1
                elif not tx_put(tx8, tx32, tcur, frames, np.int64(t) * stride, length):
                    break                   # the ring is full: kick, come back
                elif measure and stamp_at[t] >= 0 and stamps_this(mask, gst[G_SENT]):
                    stamps[n_st, 0] = slot + stamp_at[t]
                    stamps[n_st, 1] = gst[G_SENT]
                    n_st += 1
                pos += 1
                if pos == nseq:             # a compare, not `% nseq`: a division costs tens of cycles
                    pos = 0
                gst[G_SENT] += 1
            gst[G_POS] = pos
            if n_st > 0:
                leaving = np.int64(rdtsc())
                for i in range(n_st):
                    write_stamp(tx8, stamps[i, 0], leaving, stamps[i, 1])
        e = tx_kick(tx_fd, kick_buf, tcur)
        if e != 0:
            gst[G_ERR] = e
            return True
        pending = tx_reap(tx32, tcur)
        gst[G_PENDING] = pending
        done = gst[G_STOP] == 1 and pending == 0
        if done and gst[G_TX_DONE_TSC] == 0:
            gst[G_TX_DONE_TSC] = now
        if now >= slice_end:
            return done
