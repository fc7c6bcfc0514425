"""Per-packet latency: a stamp in each frame, and a histogram that costs no Python per packet.

What MoonGen, TRex and pktgen-DPDK do: the traffic source writes the time into
a frame just before it leaves, and reads it when the frame comes back; the
difference is the frame's latency through everything between (rings, the data
plane, the kernel, queues).

The stamp
---------
16 bytes at the very end of the frame, little-endian::

    [len - 16, len - 8)   the TSC when the frame left (the generator's TX kick,
                          or the in-memory NIC's "DMA")
    [len - 8,  len - 4)   its sequence number (the low 32 bits of ``sent``)
    [len - 4,  len)       STAMP_MAGIC, so a frame that carries no stamp is told
                          apart (its tail is payload: zeros in labkit's traffic)

A frame carries a stamp only where those 16 bytes are payload: after its
Ethernet header, and for IPv4 after its IP header (options included) and the
first 8 bytes of its UDP or TCP header (the ports, and UDP's length and
checksum). No node reads those bytes, so a stamp never changes what the data
plane sees: the same verdicts, the same bytes outside the stamp area
(``tests/test_latency.py`` checks both on every kind of frame). A frame too
short for a stamp (a 60-byte TCP frame has 6 bytes of payload; a frame with IP
options; a runt) is sent, forwarded and counted as ever, and counted
``unstamped`` when it comes back. The L4 checksum is not updated: nothing on
labkit's path checks it (the kernel does not, on AF_PACKET).

The histogram
-------------
HDR Histogram's log-linear buckets (Gil Tene's HdrHistogram): values below 32
TSC cycles get a bucket each; above, every power of two ``[2^k, 2^(k+1))`` is
split into 32 buckets of equal width. A value is then known to within 1/32 of
itself (3%), at any scale, in a fixed array of ``HIST_SIZE`` int64 counters:
no allocation, no per-packet Python, and merging two histograms is adding
them. Two more slots hold the exact maximum and the frames that came back
without a stamp; the sample count is the buckets' sum, computed when asked
(no counter to bump per sample). Values are TSC cycles; ``summarize`` turns
them into nanoseconds.

Sampling
--------
Stamping and reading a stamp cost about a dozen TSC cycles per frame in all
(measured on the in-memory NIC, where the NIC's "hardware" is the CPU too, as
NIC cycles; ``labkit bench veth --only latency`` prints what it costs in Mpps). ``every=N`` (a power of two) stamps one frame in
N, by sequence number, as MoonGen timestamps only some packets; the others
come back unstamped and are counted so. The histogram carries N - 1 in its
``H_MASK`` slot, so every loop that stamps reads it from there.
"""
import numpy as np
from numba import njit

from ..memory.intrinsics import bit_length, load_le, store_le
from ..memory.layouts import IP4_OFF

STAMP_LEN = 16
STAMP_MAGIC = 0x5354_4B4C            # b"LKTS", little-endian
ETH_P_IP = 0x0800
L4_STAMP_SKIP = 8                    # UDP's whole header; TCP's ports and sequence number

SUB_BITS = 5
SUB = 1 << SUB_BITS                  # buckets per power of two
MAX_BITS = 42                        # values up to 2^42 TSC cycles (over 20 minutes at 3.7 GHz)
N_BUCKETS = SUB * (MAX_BITS - SUB_BITS + 1)
H_MAX, H_UNSTAMPED, H_MASK = N_BUCKETS, N_BUCKETS + 1, N_BUCKETS + 2
HIST_SIZE = N_BUCKETS + 3
MAX_EVERY = 1024
PERCENTILES = (50, 90, 99, 99.9)


# -- the stamp ---------------------------------------------------------------------------

def stamp_offset(frame, length):
    """Where frame's stamp goes (bytes from its start), or -1 when its payload cannot hold one."""
    start = IP4_OFF
    if length >= IP4_OFF + 1 and int(frame[12]) << 8 | int(frame[13]) == ETH_P_IP:
        ihl = int(frame[IP4_OFF]) & 0xF
        start = IP4_OFF + max(ihl, 5) * 4 + L4_STAMP_SKIP
    return length - STAMP_LEN if length - STAMP_LEN >= start else -1


def stamp_offsets(frames, lengths):
    """stamp_offset of every template (int32, -1: carries no stamp)."""
    out = np.full(len(lengths), -1, np.int32)
    for t, length in enumerate(lengths):
        length = int(length)
        if length <= frames.shape[1]:
            out[t] = stamp_offset(frames[t], length)
    return out


@njit(nogil=True, cache=True, inline="always")
def write_stamp(buf, at, tsc, seq):
    """The stamp at buf[at:at + 16]."""
    store_le(buf, at, np.int64(tsc), 8)
    store_le(buf, at + 8, np.int64(seq) & 0xFFFFFFFF, 4)
    store_le(buf, at + 12, STAMP_MAGIC, 4)


@njit(nogil=True, cache=True, inline="always")
def take_stamp(buf, start, length, now, hist):
    """A frame came back (bytes buf[start:start + length]) at TSC `now`: its latency into
    hist, or counted unstamped."""
    if length >= STAMP_LEN:
        end = start + length
        if load_le(buf, end - 4, 4) == STAMP_MAGIC:
            hist_add(hist, np.int64(now) - np.int64(load_le(buf, end - STAMP_LEN, 8)))
            return
    hist[H_UNSTAMPED] += 1


# -- the histogram ---------------------------------------------------------------------------

@njit(nogil=True, cache=True, inline="always")
def bucket_of(v):
    """The bucket of a value (TSC cycles, 0 .. 2^MAX_BITS - 1)."""
    if v < SUB:
        return v
    e = bit_length(v) - SUB_BITS - 1          # v >> e is in [SUB, 2 * SUB)
    return SUB * (e + 1) + (v >> e) - SUB


@njit(nogil=True, cache=True, inline="always")
def hist_add(hist, v):
    """One sample of v TSC cycles (negative: 0, as TSCs of two cores can differ by a few;
    beyond the range: the last bucket, and the exact maximum still kept)."""
    v = max(np.int64(v), 0)
    hist[bucket_of(min(v, (np.int64(1) << MAX_BITS) - 1))] += 1
    if v > hist[H_MAX]:
        hist[H_MAX] = v


def new_hist(every=1):
    """An empty histogram whose owner stamps one frame in `every` (a power of two)."""
    if isinstance(every, bool) or not isinstance(every, (int, np.integer)) or not 1 <= every <= MAX_EVERY \
            or every & (every - 1):
        raise ValueError(f"latency sampling every={every!r}: use a power of two from 1 to {MAX_EVERY}")
    h = np.zeros(HIST_SIZE, np.int64)
    h[H_MASK] = every - 1
    return h


@njit(nogil=True, cache=True, inline="always")
def stamps_this(mask, i):
    """Whether frame number i gets a stamp (mask: every - 1, from the histogram's H_MASK)."""
    return (i & mask) == 0


def clear(hist):
    """Forget every sample; keep the sampling (H_MASK)."""
    hist[:H_MASK] = 0


def no_hist():
    """What a loop gets when latency is not measured: it checks ``hist.size > 0``."""
    return np.zeros(0, np.int64)


def bucket_range(b):
    """(lowest value, width) of bucket b."""
    if b < SUB:
        return b, 1
    e = b // SUB - 1
    return (SUB + b % SUB) << e, 1 << e


def merge(hists):
    """One histogram of several (each worker's, each run's)."""
    hists = list(hists)
    out = new_hist(int(hists[0][H_MASK]) + 1 if hists else 1)
    for h in hists:
        out[:N_BUCKETS] += h[:N_BUCKETS]
        out[H_UNSTAMPED] += h[H_UNSTAMPED]
        out[H_MAX] = max(out[H_MAX], h[H_MAX])
    return out


def samples(hist):
    """How many latencies the histogram holds."""
    return int(hist[:N_BUCKETS].sum())


def percentile(hist, p):
    """The p-th percentile in TSC cycles (nearest rank, as numpy's method="inverted_cdf"):
    the middle of the bucket that holds it, never above the maximum; None without samples."""
    n = samples(hist)
    if n == 0:
        return None
    rank = max(1, int(np.ceil(p / 100.0 * n - 1e-9)))
    b = int(np.searchsorted(np.cumsum(hist[:N_BUCKETS]), rank))
    low, width = bucket_range(b)
    return min(low + (width - 1) / 2.0, float(hist[H_MAX]))


def summarize(hist, tsc_hz, offered=None):
    """The latency of a run in nanoseconds: percentiles, max, samples, unstamped frames,
    and what load it was measured under (`offered`: a rate in pps, or None for saturation)."""
    n = samples(hist)
    ns = (lambda cycles: None if cycles is None else cycles * 1e9 / tsc_hz)
    out = {f"p{str(p).replace('.', '')}": ns(percentile(hist, p)) for p in PERCENTILES}
    out.update(max=ns(float(hist[H_MAX])) if n else None, samples=n, unstamped=int(hist[H_UNSTAMPED]),
               every=int(hist[H_MASK]) + 1,
               load=f"open loop, {offered:g} pps offered" if offered else "closed loop: saturation")
    return out
