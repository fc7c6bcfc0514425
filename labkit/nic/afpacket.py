"""A poll-mode driver over AF_PACKET: the kernel's packet_mmap rings.

A DPDK poll-mode driver and a NIC share descriptor rings: the NIC DMAs frames
into buffers and flips a status bit; the driver polls that bit, takes the
frames, and hands the descriptors back. AF_PACKET's memory-mapped rings
(Documentation/networking/packet_mmap.rst) are the same contract with the
kernel in the NIC's place, on any interface, veth and TAP included.

RX: a TPACKET_V3 ring. The kernel fills *blocks* (here 64 KiB) with frames,
one after another, and hands a whole block over by setting its status to
TP_STATUS_USER: when it is full, or when ``timeout_ms`` passes with the block
still partly filled. So the driver polls one status word per block, not per
frame (I/O batching, done by the kernel), and gives the block back by storing
TP_STATUS_KERNEL. Both sides of that handshake need ordering: an acquire load
of the status (so the frame bytes are read after it, and so LLVM cannot hoist
the load out of a spin loop) and a release store to give the block back
(so our writes to it are done before the kernel reuses it).

RX, per frame: a TPACKET_V2 ring (``mode="frame"``): one status word per
frame, handed over the moment the kernel has written it. The driver polls
each frame's word and gives each back; ``poll()`` wakes on every frame. No
coalescing at all: the lowest latency, one status word per frame to walk.
The same ``rx_burst``/``rx_release`` walk both kinds (the cursor says which).

Geometry of a block ring, chosen for latency as well as rate: a block closes
when full or after ``timeout_ms``: together they are the ring's interrupt
coalescing (a NIC's ``rx-frames`` and ``rx-usecs``: ``ethtool -C``; knobs
``block_kb`` and ``coalesce_ms``). 64 KiB holds ~250 minimum-size frames, so
at the ~0.5 Mpps a veth pair carries per core it fills in about half a
millisecond; at low rates the 1 ms timeout (the smallest the kernel takes)
bounds the wait. 32 blocks (2 MiB) absorb ~16 ms of traffic while the poller is busy
elsewhere. Larger blocks would only add latency at low rates.

TX: a TPACKET_V2 ring of fixed 2 KiB frames. The driver copies each frame in,
sets TP_STATUS_SEND_REQUEST (release store), and after a batch makes *one*
``send()`` call (the "kick", as a doorbell write on a NIC): the kernel
transmits every requested frame and sets each back to TP_STATUS_AVAILABLE.
When veth's peer is full the kick returns ENOBUFS; the frame that hit it was
dropped *and counted* by veth (its tx_dropped), the rest stay requested, so
the driver just kicks again later: retry, don't fail.

Zero-copy on RX: the data plane works on frames where the kernel wrote them.
``PACKET_RESERVE`` leaves room in front of each frame so that, seen from the
frame, the layout is the same as a mempool buffer's (64 bytes of metadata,
64 of headroom, then the frame at DATA_OFF); a *handle* into a ring is then
the byte offset of that "buffer" (``handle_shift = 0`` in the generated code
instead of 64-byte lines).

RSS on a real NIC: several RX rings on one interface can join one
``PACKET_FANOUT`` group (packet(7)); the kernel then gives each frame to one
member only. With ``PACKET_FANOUT_HASH`` the member is chosen from the flow
hash, ``reciprocal_scale(hash, n) = (hash * n) >> 32`` (net/packet/af_packet.c,
``fanout_demux_hash``), so every frame of a flow lands in the same ring, in
order: RSS's rule, with the kernel in the NIC's place. ``rxhash=True`` asks
the kernel to write the frame's flow hash into its header (``tp_rxhash``,
feature ``TP_FT_REQ_FILL_RXHASH``, ``prb_fill_rxhash``): the "NIC-computed"
hash a driver finds in its RX descriptor. Without it the field is 0.
"""
import mmap
import socket
import struct

import numpy as np
from numba import njit

from ..memory.intrinsics import load_acquire, store_release
from ..memory.layouts import DATA_OFF
from . import labnet
from .syscalls import EAGAIN, EINTR, ENOBUFS, MSG_DONTWAIT, errno, sys_send

SOL_PACKET = 263
PACKET_RX_RING, PACKET_STATISTICS, PACKET_VERSION = 5, 6, 10
PACKET_RESERVE, PACKET_TX_RING, PACKET_LOSS = 12, 13, 14
PACKET_FANOUT, PACKET_QDISC_BYPASS, PACKET_IGNORE_OUTGOING = 18, 20, 23
PACKET_FANOUT_HASH = 0
PACKET_FANOUT_FLAG_UNIQUEID, PACKET_FANOUT_FLAG_IGNORE_OUTGOING = 0x2000, 0x4000
TP_FT_REQ_FILL_RXHASH = 0x1       # tpacket_req3.tp_feature_req_word: fill tp_rxhash
TPACKET_V2, TPACKET_V3 = 1, 2
ETH_P_ALL = 0x0003
ETH_HLEN = 14

TP_STATUS_KERNEL, TP_STATUS_USER = 0, 1                           # RX
TP_STATUS_AVAILABLE, TP_STATUS_SEND_REQUEST, TP_STATUS_WRONG_FORMAT = 0, 1, 4   # TX

# struct tpacket_block_desc / tpacket_hdr_v1 (block header), byte offsets
BLK_STATUS, BLK_NUM_PKTS, BLK_FIRST = 8, 12, 16
# struct tpacket3_hdr (per frame in a V3 block)
P3_NEXT, P3_SNAPLEN, P3_LEN, P3_MAC, P3_RXHASH = 0, 12, 16, 24, 28
# struct tpacket2_hdr (per TX frame, and per RX frame of a per-frame ring): status, len,
# snaplen, mac (RX: where the frame starts); TX data follows at 32
P2_STATUS, P2_LEN, P2_SNAPLEN, P2_MAC, P2_DATA = 0, 4, 8, 12, 32

# Where the kernel puts a frame in a V3 block: macoff = 82 + PACKET_RESERVE
# (TPACKET_ALIGN(68 + 16) + reserve - 14). We want DATA_OFF + 64 bytes before
# it: the 48-byte tpacket3_hdr, then our 64+64 bytes of metadata and headroom.
RX_MACOFF = 192
RX_RESERVE = RX_MACOFF - 82
assert RX_MACOFF - DATA_OFF >= 48
# A V2 frame: macoff = 66 + PACKET_RESERVE (TPACKET_ALIGN(52 + 16) + reserve - 14); the
# 32-byte tpacket2_hdr fits in front of our 128 bytes as well.
RX2_RESERVE = RX_MACOFF - 66
RX2_FRAME = 2048
RX_MODES = ("block", "frame")

# cursor of an RX ring (int64 array); a per-frame ring's "blocks" are its frames
C_BLK, C_OFF, C_LEFT, C_REL, C_HELD, C_BSIZE, C_BNR, C_PERFRAME = range(8)
# cursor of a TX ring
T_HEAD, T_FSIZE, T_FNR, T_PENDING = range(4)


class PortError(OSError):
    """A port could not be opened; the message says which and why."""


def packet_socket(ns, ifname):
    """A raw packet socket in namespace `ns`, bound to nothing yet (protocol 0:
    it receives nothing until bind names the interface)."""
    labnet.check_ifname(ifname)
    try:
        with labnet.in_netns(ns):
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            try:
                socket.if_nametoindex(ifname)
            except OSError:
                s.close()
                raise PortError(f"no interface {ifname!r} in namespace {ns} (run `labkit net up`)") from None
    except PermissionError:
        raise PortError("opening a packet socket needs root (CAP_NET_RAW)") from None
    return s


def bind(s, ns, ifname, proto):
    """Bind s to ifname for protocol proto (ETH_P_ALL: receive every frame; 0: none)."""
    with labnet.in_netns(ns):
        s.bind((ifname, proto))


def read_stats(s):
    """PACKET_STATISTICS: (packets, drops, freezes). The kernel resets them on
    read. Freezes (TPACKET_V3 only, else 0) count the times the ring was full
    and the kernel stopped filling it until the reader gave a block back."""
    raw = s.getsockopt(SOL_PACKET, PACKET_STATISTICS, 12)
    packets, drops = struct.unpack_from("II", raw)
    freezes = struct.unpack_from("I", raw, 8)[0] if len(raw) >= 12 else 0
    return packets, drops, freezes


class RxRing:
    """A receive ring on one interface: TPACKET_V3 blocks (mode "block"), or TPACKET_V2
    frames (mode "frame": per-frame hand-over, no flow hash)."""

    def __init__(self, ns, ifname, block_size=1 << 16, block_nr=32, timeout_ms=1, rxhash=False, mode="block"):
        if mode not in RX_MODES:
            raise PortError(f"RX ring mode {mode!r}: use one of {', '.join(RX_MODES)}")
        if block_size % mmap.PAGESIZE or block_size < RX_MACOFF + 64 or not 1 <= block_nr <= 4096:
            raise PortError(f"RX ring geometry {block_size}x{block_nr}: block size must be a "
                            f"multiple of {mmap.PAGESIZE}, count 1..4096")
        if mode == "frame" and rxhash:
            raise PortError("a per-frame (TPACKET_V2) ring has no flow hash (tp_rxhash is TPACKET_V3's)")
        if not 1 <= timeout_ms <= 60_000:
            raise PortError(f"RX block timeout {timeout_ms} ms: use 1 to 60000")
        self.ns, self.ifname, self.mode = ns, ifname, mode
        self.sock = s = packet_socket(ns, ifname)
        try:
            v3 = mode == "block"
            s.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3 if v3 else TPACKET_V2)
            s.setsockopt(SOL_PACKET, PACKET_RESERVE, RX_RESERVE if v3 else RX2_RESERVE)
            # Do not deliver frames this host sends on the interface (a TX
            # socket on the same TAP, say): they are not received traffic.
            s.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            frame_size = RX2_FRAME
            n_frames = block_size // frame_size * block_nr
            if v3:
                req = struct.pack("7I", block_size, block_nr, frame_size, n_frames,
                                  timeout_ms, 0, TP_FT_REQ_FILL_RXHASH if rxhash else 0)
            else:                   # the same memory, as 2 KiB frames of their own
                req = struct.pack("4I", block_size, block_nr, frame_size, n_frames)
            s.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
            self.map = mmap.mmap(s.fileno(), block_size * block_nr, mmap.MAP_SHARED,
                                 mmap.PROT_READ | mmap.PROT_WRITE)
            bind(s, ns, ifname, ETH_P_ALL)
        except BaseException:
            s.close()
            raise
        self.u8 = np.frombuffer(self.map, np.uint8)
        self.u32 = np.frombuffer(self.map, np.uint32)
        self.cur = np.zeros(8, np.int64)
        if v3:
            self.cur[C_BSIZE], self.cur[C_BNR] = block_size, block_nr
            self.max_frame = block_size - 48 - RX_MACOFF
        else:
            self.cur[C_BSIZE], self.cur[C_BNR], self.cur[C_PERFRAME] = frame_size, n_frames, 1
            self.max_frame = frame_size - RX_MACOFF
        read_stats(s)                     # start the kernel's counters from zero

    def fileno(self):
        return self.sock.fileno()

    def join_fanout(self, group=None):
        """Join this ring to the PACKET_FANOUT_HASH group ``group``; with None,
        make a new group whose id the kernel picks unused (UNIQUEID: no clash
        with anyone else's group on the interface). Returns the group's id, for
        the other members. The group ignores frames sent on the interface, as
        each ring does on its own (the group's flag replaces the socket's)."""
        flags = PACKET_FANOUT_FLAG_IGNORE_OUTGOING
        try:
            if group is None:
                self.sock.setsockopt(SOL_PACKET, PACKET_FANOUT,
                                     (PACKET_FANOUT_HASH | flags | PACKET_FANOUT_FLAG_UNIQUEID) << 16)
                return self.sock.getsockopt(SOL_PACKET, PACKET_FANOUT) & 0xFFFF
            self.sock.setsockopt(SOL_PACKET, PACKET_FANOUT, ((PACKET_FANOUT_HASH | flags) << 16) | group)
        except OSError as e:
            raise PortError(f"cannot join a PACKET_FANOUT group on {self.ifname}: {e.strerror} "
                            f"(the kernel needs PACKET_FANOUT_FLAG_UNIQUEID, Linux 4.20 or newer)") from None
        return group

    def stats(self):
        return read_stats(self.sock)

    def close(self):
        if self.sock is not None:
            self.u8 = self.u32 = None
            try:
                self.map.close()
            except BufferError:           # a view still alive: the GC unmaps it later
                pass
            self.sock.close()
            self.sock = None


class TxRing:
    """A TPACKET_V2 transmit ring on one interface."""

    def __init__(self, ns, ifname, frame_size=None, frame_nr=None, qdisc_bypass=False):
        self.ns, self.ifname = ns, ifname
        self.mtu = labnet.link_mtu(ns, ifname)
        if frame_size is None:          # a slot holds the largest frame the link carries
            frame_size = 2048
            while frame_size < P2_DATA + self.mtu + ETH_HLEN:
                frame_size *= 2
        if frame_nr is None:            # about 1 MiB of ring, at least 64 slots
            frame_nr = max(64, (1 << 20) // frame_size)
        self.sock = s = packet_socket(ns, ifname)
        try:
            s.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V2)
            if qdisc_bypass:
                # Hand frames straight to the driver's xmit, skipping the
                # queueing discipline layer (as a NIC's own queue would).
                s.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)
            # A frame the kernel refuses is then skipped, not a stalled ring.
            # The driver never posts one (it checks lengths first), so this
            # is a safety net; conservation would show any such loss.
            s.setsockopt(SOL_PACKET, PACKET_LOSS, 1)
            block = max(1 << 16, frame_size)
            req = struct.pack("4I", block, frame_size * frame_nr // block, frame_size, frame_nr)
            s.setsockopt(SOL_PACKET, PACKET_TX_RING, req)
            self.map = mmap.mmap(s.fileno(), frame_size * frame_nr, mmap.MAP_SHARED,
                                 mmap.PROT_READ | mmap.PROT_WRITE)
            bind(s, ns, ifname, 0)       # protocol 0: transmit only, receive nothing
        except BaseException:
            s.close()
            raise
        self.u8 = np.frombuffer(self.map, np.uint8)
        self.u32 = np.frombuffer(self.map, np.uint32)
        self.cur = np.zeros(4, np.int64)
        self.cur[T_FSIZE], self.cur[T_FNR] = frame_size, frame_nr
        # the longest frame the kernel accepts: MTU + Ethernet header, and what fits a slot
        self.max_frame = min(self.mtu + ETH_HLEN, frame_size - P2_DATA)
        self.kick_buf = np.zeros(1, np.uint8)

    def fileno(self):
        return self.sock.fileno()

    def close(self):
        if self.sock is not None:
            self.u8 = self.u32 = None
            try:
                self.map.close()
            except BufferError:
                pass
            self.sock.close()
            self.sock = None


# -- the compiled side: walking and filling the rings ---------------------------

@njit(nogil=True, cache=True, inline="always")
def _u16(u8, o):
    return np.int64(u8[o]) | (np.int64(u8[o + 1]) << 8)


@njit(nogil=True, cache=True)
def rx_burst(u8, u32, cur, hs, ls, hashes, max_n, max_frame, too_long):
    """Take up to max_n frames from the RX ring: hs[i] is the byte offset of
    frame i's "buffer" (frame at hs[i] + DATA_OFF), ls[i] its length, hashes[i]
    the kernel's flow hash. Frames the ring truncated (longer than a block) or
    longer than max_frame are counted in too_long[0] and skipped. Blocks whose
    frames have all been taken are *held* until rx_release(). A per-frame ring:
    see rx_burst_frames."""
    if cur[C_PERFRAME]:
        return rx_burst_frames(u8, u32, cur, hs, ls, hashes, max_n, max_frame, too_long)
    n = 0
    bsize, bnr = cur[C_BSIZE], cur[C_BNR]
    while n < max_n:
        if cur[C_LEFT] == 0:
            if cur[C_HELD] >= bnr:
                break
            base = cur[C_BLK] * bsize
            if (load_acquire(u32, (base + BLK_STATUS) >> 2) & TP_STATUS_USER) == 0:
                break                                  # the kernel still owns it
            npk = np.int64(u32[(base + BLK_NUM_PKTS) >> 2])
            cur[C_OFF] = base + np.int64(u32[(base + BLK_FIRST) >> 2])
            cur[C_LEFT] = npk
            if npk == 0:                               # (an empty block: just pass it on)
                cur[C_BLK] = (cur[C_BLK] + 1) % bnr
                cur[C_HELD] += 1
                continue
        off = cur[C_OFF]
        snap = np.int64(u32[(off + P3_SNAPLEN) >> 2])
        length = np.int64(u32[(off + P3_LEN) >> 2])
        frame = off + _u16(u8, off + P3_MAC)
        if snap < length or length > max_frame:
            too_long[0] += 1
        else:
            hs[n] = frame - DATA_OFF
            ls[n] = length
            hashes[n] = u32[(off + P3_RXHASH) >> 2]
            n += 1
        cur[C_LEFT] -= 1
        if cur[C_LEFT] == 0:
            cur[C_BLK] = (cur[C_BLK] + 1) % bnr
            cur[C_HELD] += 1
        else:
            cur[C_OFF] = off + np.int64(u32[(off + P3_NEXT) >> 2])
    return n


@njit(nogil=True, cache=True)
def rx_burst_frames(u8, u32, cur, hs, ls, hashes, max_n, max_frame, too_long):
    """rx_burst on a per-frame (TPACKET_V2) ring: each frame's status word says whether
    the kernel has handed it over; taken frames are held until rx_release()."""
    n = 0
    fsize, fnr = cur[C_BSIZE], cur[C_BNR]
    while n < max_n and cur[C_HELD] < fnr:
        base = cur[C_BLK] * fsize
        if (load_acquire(u32, (base + P2_STATUS) >> 2) & TP_STATUS_USER) == 0:
            break                                      # the kernel still owns it
        snap = np.int64(u32[(base + P2_SNAPLEN) >> 2])
        length = np.int64(u32[(base + P2_LEN) >> 2])
        if snap < length or length > max_frame:
            too_long[0] += 1
        else:
            hs[n] = base + _u16(u8, base + P2_MAC) - DATA_OFF
            ls[n] = length
            hashes[n] = 0
            n += 1
        cur[C_BLK] = (cur[C_BLK] + 1) % fnr
        cur[C_HELD] += 1
    return n


@njit(nogil=True, cache=True)
def rx_release(u32, cur):
    """Give every held block (or frame) back to the kernel (after its frames are done)."""
    bsize, bnr = cur[C_BSIZE], cur[C_BNR]
    status = P2_STATUS if cur[C_PERFRAME] else BLK_STATUS
    while cur[C_HELD] > 0:
        store_release(u32, (cur[C_REL] * bsize + status) >> 2, TP_STATUS_KERNEL)
        cur[C_REL] = (cur[C_REL] + 1) % bnr
        cur[C_HELD] -= 1


@njit(nogil=True, cache=True)
def tx_reap(u32, cur):
    """Count requested frames the kernel has finished with; pending after it."""
    fsize, fnr = cur[T_FSIZE], cur[T_FNR]
    # the oldest pending frame is `pending` slots behind head
    while cur[T_PENDING] > 0:
        slot = (cur[T_HEAD] - cur[T_PENDING]) % fnr
        st = load_acquire(u32, (slot * fsize) >> 2)
        if st == TP_STATUS_SEND_REQUEST or st == 2:   # 2: TP_STATUS_SENDING
            break
        if st == TP_STATUS_WRONG_FORMAT:               # (not with PACKET_LOSS; kept honest)
            store_release(u32, (slot * fsize) >> 2, TP_STATUS_AVAILABLE)
        cur[T_PENDING] -= 1
    return cur[T_PENDING]


@njit(nogil=True, cache=True)
def tx_put(u8, u32, cur, src, src_off, length):
    """Copy one frame into the next TX slot and request its sending.
    False if the slot is still the kernel's (the ring is full)."""
    fsize = cur[T_FSIZE]
    base = cur[T_HEAD] * fsize
    if cur[T_PENDING] >= cur[T_FNR] and tx_reap(u32, cur) >= cur[T_FNR]:
        return False
    if load_acquire(u32, base >> 2) != TP_STATUS_AVAILABLE:
        return False
    d = base + P2_DATA
    for j in range(length):          # a loop, not slice assignment: callers run without NRT
        u8[d + j] = src[src_off + j]
    u32[(base + P2_LEN) >> 2] = length
    u32[(base + P2_SNAPLEN) >> 2] = length
    store_release(u32, base >> 2, TP_STATUS_SEND_REQUEST)
    cur[T_HEAD] = (cur[T_HEAD] + 1) % cur[T_FNR]
    cur[T_PENDING] += 1
    return True


@njit(nogil=True, cache=True)
def tx_kick(fd, kick_buf, cur):
    """One send() for every requested frame: the doorbell. Returns 0, or an
    errno other than the "full, try again" ones (EAGAIN, ENOBUFS, EINTR)."""
    if cur[T_PENDING] == 0:
        return 0
    r = sys_send(fd, kick_buf, 0, 0, MSG_DONTWAIT)
    if r < 0:
        e = errno()
        if e != EAGAIN and e != ENOBUFS and e != EINTR:
            return e
    return 0
