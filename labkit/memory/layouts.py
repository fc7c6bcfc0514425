"""Every memory layout of the data plane, as numpy dtypes with pinned sizes.

ixy pins its 64-byte buffer header with a static assert; we pin ours with
``assert`` at import, so a change to a field that moves another is caught at
once. Header dtypes are big-endian (network order) and serve the slow paths:
tests, traces and pcap tooling. Hot kernels read fields by offset with
``labkit.memory.bytes`` and the ``*_OFF`` constants below, which are derived
from these same dtypes.

A buffer is one slot of the mempool arena::

    slot base (64-byte aligned)
    +0    BUF_META     64 bytes: per-buffer metadata (like vlib_buffer_t's opaque
                       area or an mbuf): adjacency chosen by ip4-lookup, rx queue
    +64   headroom     64 bytes: room to prepend a header without a copy
    +128  DATA_OFF     the frame, at most slot_size - 128 bytes

A buffer *handle* is the slot's position in the arena in 64-byte lines
(``base = handle << LINE_SHIFT``), so the fixed-slot mempool and the
general-purpose heap (the "mempool off" knob) hand out the same kind of handle.
"""
import numpy as np

CACHE_LINE = 64
LINE_SHIFT = 6
META_OFF = 0
HEADROOM = 64
DATA_OFF = CACHE_LINE + HEADROOM  # 128
DEFAULT_SLOT_SIZE = 2048
MAX_FRAME_DEFAULT = DEFAULT_SLOT_SIZE - DATA_OFF  # 1920 bytes: larger frames are counted drops

# --- per-buffer metadata (first cache line of each slot) ---------------------
BUF_META = np.dtype([
    ("adj_index", "<u4"),   # written by ip4-lookup, read by ip4-rewrite
    ("rx_queue", "<u2"),
    ("flags", "<u2"),
    ("hash", "<u4"),        # flow hash (NIC RSS or software)
    ("_pad0", "u1", 4),
    ("wire_seq", "<u8"),    # the frame's position on the wire (multi-queue NIC): flow order is checkable
    ("_pad", "u1", 40),
])
assert BUF_META.itemsize == CACHE_LINE
META_ADJ_OFF = META_OFF + BUF_META.fields["adj_index"][1]
META_RXQ_OFF = META_OFF + BUF_META.fields["rx_queue"][1]
META_HASH_OFF = META_OFF + BUF_META.fields["hash"][1]
META_WIRE_OFF = META_OFF + BUF_META.fields["wire_seq"][1]
assert META_WIRE_OFF == 16

# --- wire headers (network byte order) ---------------------------------------
ETH_HDR = np.dtype([("dst", "u1", 6), ("src", "u1", 6), ("ethertype", ">u2")])
assert ETH_HDR.itemsize == 14
ETH_DST_OFF = ETH_HDR.fields["dst"][1]
ETH_SRC_OFF = ETH_HDR.fields["src"][1]
ETH_TYPE_OFF = ETH_HDR.fields["ethertype"][1]
assert (ETH_DST_OFF, ETH_SRC_OFF, ETH_TYPE_OFF) == (0, 6, 12)
ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_IPV6 = 0x86DD
ETHERTYPE_ARP = 0x0806

IP4_HDR = np.dtype([
    ("ver_ihl", "u1"), ("tos", "u1"), ("total_length", ">u2"),
    ("id", ">u2"), ("frag", ">u2"), ("ttl", "u1"), ("proto", "u1"),
    ("checksum", ">u2"), ("src", ">u4"), ("dst", ">u4"),
])
assert IP4_HDR.itemsize == 20
IP4_OFF = ETH_HDR.itemsize  # 14: the IPv4 header starts right after Ethernet
IP4_LEN_OFF = IP4_HDR.fields["total_length"][1]
IP4_TTL_OFF = IP4_HDR.fields["ttl"][1]
IP4_PROTO_OFF = IP4_HDR.fields["proto"][1]
IP4_CSUM_OFF = IP4_HDR.fields["checksum"][1]
IP4_SRC_OFF = IP4_HDR.fields["src"][1]
IP4_DST_OFF = IP4_HDR.fields["dst"][1]
assert (IP4_LEN_OFF, IP4_TTL_OFF, IP4_PROTO_OFF, IP4_CSUM_OFF, IP4_SRC_OFF, IP4_DST_OFF) == (2, 8, 9, 10, 12, 16)
IPPROTO_TCP = 6
IPPROTO_UDP = 17

UDP_HDR = np.dtype([("sport", ">u2"), ("dport", ">u2"), ("length", ">u2"), ("checksum", ">u2")])
assert UDP_HDR.itemsize == 8
TCP_HDR = np.dtype([("sport", ">u2"), ("dport", ">u2"), ("seq", ">u4"), ("ack", ">u4"),
                    ("off_flags", ">u2"), ("window", ">u2"), ("checksum", ">u2"), ("urg", ">u2")])
assert TCP_HDR.itemsize == 20
L4_SPORT_OFF, L4_DPORT_OFF = 0, 2  # same place in TCP and UDP

# --- NIC descriptor (one entry of an RX or TX ring) ----------------------------
# 16 bytes like a legacy Intel descriptor: four per cache line. Rings are arrays
# of structures because that is what hardware DMAs; the data plane's own packet
# vector is a structure of arrays (see PKT_VEC_AOS for the "aos" knob).
NIC_DESC = np.dtype([("handle", "<u4"), ("length", "<u2"), ("flags", "<u2"),
                     ("hash", "<u4"), ("_pad", "<u4")])
assert NIC_DESC.itemsize == 16

# --- drop counters: every graph's counters array starts with these reasons ---
# (the run loop and the NIC count them, not a node; the graph's node errors follow:
# labkit.graph.compile.resolve)
RUN_REASONS = (
    ("mempool_empty", "no free buffer for an arriving frame (DPDK's rx_nombuf)"),
    ("rx_frame_too_long", "frame longer than a buffer's data room"),
    ("tx_full", "the NIC's tx ring had no room; dropped rather than queued (ixy's rule)"),
    ("tx_bad_descriptor", "the NIC rejected a tx descriptor (handle or length out of range)"),
)
MEMPOOL_EMPTY, RX_FRAME_TOO_LONG, TX_FULL, TX_BAD_DESCRIPTOR = (
    [r for r, _ in RUN_REASONS].index(name)
    for name in ("mempool_empty", "rx_frame_too_long", "tx_full", "tx_bad_descriptor"))

# --- packet vector, array-of-structures variant (Knobs.layout == "aos") --------
PKT_VEC_AOS = np.dtype([("handle", "<u4"), ("length", "<u4"), ("next", "<i4"), ("hash", "<u4")])
assert PKT_VEC_AOS.itemsize == 16


def aligned_zeros(n_bytes, align=CACHE_LINE):
    """A uint8 array of n_bytes whose first byte is ``align``-aligned."""
    raw = np.zeros(n_bytes + align, dtype=np.uint8)
    start = (-raw.ctypes.data) % align
    out = raw[start:start + n_bytes]
    assert out.ctypes.data % align == 0
    return out


def own_lines(shape, dtype):
    """Zeros of shape/dtype starting on a cache line, with the last line to itself."""
    dt = np.dtype(dtype)
    n = int(np.prod(shape)) * dt.itemsize
    raw = aligned_zeros(-(-max(n, 1) // CACHE_LINE) * CACHE_LINE)
    return raw[:n].view(dt).reshape(shape)


def rehome(a):
    """A copy of array a on cache lines of its own."""
    out = own_lines(a.shape, a.dtype)
    out[...] = a
    return out

