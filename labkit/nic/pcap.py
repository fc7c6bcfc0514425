"""Read and write classic libpcap files (Ethernet link type only), without scapy.

The format (https://www.tcpdump.org/manpages/pcap-savefile.5.html): a 24-byte
file header (magic, version 2.4, zone, sigfigs, snaplen, link type), then per
packet a 16-byte record header (seconds, micro- or nanoseconds, captured
length, original length) and the captured bytes. The magic number tells the
byte order the writer used and whether the fraction is micro- or nanoseconds.
pcapng (tshark's default output) is a different format and is refused.
"""
import os
import struct
import time
from typing import NamedTuple

import numpy as np
from numba import njit

from labkit.memory.layouts import MAX_FRAME_DEFAULT

MAGIC_US, MAGIC_NS, MAGIC_PCAPNG = 0xA1B2C3D4, 0xA1B23C4D, 0x0A0D0D0A
LINKTYPE_ETHERNET = 1
LINKTYPE_NAMES = {0: "NULL (BSD loopback)", 1: "ETHERNET", 101: "RAW (bare IP)", 105: "IEEE802_11",
                  113: "LINUX_SLL (Linux 'any' cooked capture)", 127: "IEEE802_11_RADIOTAP",
                  228: "IPV4", 229: "IPV6", 276: "LINUX_SLL2 (Linux 'any' cooked capture v2)"}
FILE_HDR, REC_HDR = 24, 16
MAX_RECORD = 1 << 18     # far above any snaplen tools use; a larger length means a corrupt file


class PcapError(ValueError):
    """A file we cannot read, with one line saying why."""


class Frames(NamedTuple):
    """Frames as slices of one buffer: frame i is ``data[offsets[i]:offsets[i] + lengths[i]]``.

    ``data`` is the file's own bytes (record headers included), so reading
    copies nothing per frame."""
    data: np.ndarray      # uint8 1-D
    offsets: np.ndarray   # int64
    lengths: np.ndarray   # uint32, captured length


def read_pcap(path):
    """Parse a classic pcap file of Ethernet frames into ``Frames``."""
    if not os.path.isfile(path):
        raise PcapError(f"{path}: no such file")
    data = np.fromfile(path, dtype=np.uint8)
    raw = data.tobytes()
    if len(raw) < 4:
        raise PcapError(f"{path}: not a pcap file (only {len(raw)} bytes)")
    (magic,) = struct.unpack_from("<I", raw)
    if magic == MAGIC_PCAPNG:
        raise PcapError(f"{path}: pcapng is not supported; convert with: editcap -F pcap IN OUT")
    orders = {MAGIC_US: "<", MAGIC_NS: "<", _swap(MAGIC_US): ">", _swap(MAGIC_NS): ">"}
    if magic not in orders:
        raise PcapError(f"{path}: not a pcap file (magic 0x{magic:08x}, expected 0xa1b2c3d4 or 0xa1b23c4d)")
    if len(raw) < FILE_HDR:
        raise PcapError(f"{path}: truncated file header ({len(raw)} of {FILE_HDR} bytes)")
    order = orders[magic]
    # The top bits of the link-type word carry FCS information; the type is the low 28.
    link = struct.unpack_from(order + "I", raw, 20)[0] & 0x0FFFFFFF
    if link != LINKTYPE_ETHERNET:
        name = LINKTYPE_NAMES.get(link, "unknown")
        raise PcapError(f"{path}: unsupported link type {link} ({name}); only Ethernet (1) is supported")
    offsets, lengths = [], []
    rec_fmt = struct.Struct(order + "IIII")
    pos, i = FILE_HDR, 0
    while pos < len(raw):
        if pos + REC_HDR > len(raw):
            raise PcapError(f"{path}: truncated record {i} at byte {pos}: header cut short")
        _, _, incl, _ = rec_fmt.unpack_from(raw, pos)
        if incl > MAX_RECORD:
            raise PcapError(f"{path}: record {i} at byte {pos} claims {incl} bytes: corrupt file")
        if pos + REC_HDR + incl > len(raw):
            raise PcapError(f"{path}: truncated record {i} at byte {pos}: "
                            f"{incl} bytes captured, {len(raw) - pos - REC_HDR} present")
        offsets.append(pos + REC_HDR)
        lengths.append(incl)
        pos += REC_HDR + incl
        i += 1
    return Frames(data, np.array(offsets, dtype=np.int64), np.array(lengths, dtype=np.uint32))


def read_frames(path):
    """The frames of a pcap file as a list of bytes (convenient, not fast)."""
    data, offsets, lengths = read_pcap(path)
    return [data[o:o + n].tobytes() for o, n in zip(offsets.tolist(), lengths.tolist())]


def load_traffic(path, max_frame=MAX_FRAME_DEFAULT):
    """A pcap file as ``Traffic``: each frame a template, sent in file order."""
    from labkit.nic.traffic import Traffic
    fr = read_pcap(path)
    if fr.lengths.size == 0:
        raise PcapError(f"{path}: the file holds no packets")
    t = Traffic.from_buffer(fr.data, fr.offsets, fr.lengths, max_frame)
    t.spec = {"source": "pcap", "path": str(path), "max_frame": max_frame}
    return t


def _swap(x):
    return int.from_bytes(x.to_bytes(4, "little"), "big")


class PcapWriter:
    """Write a microsecond, little-endian, Ethernet pcap file.

    Without ``ts_ns`` packets are stamped 1 µs apart from the time the file was
    opened, so timestamps increase and tools show a sensible date."""

    REC = np.dtype([("sec", "<u4"), ("usec", "<u4"), ("incl", "<u4"), ("orig", "<u4")])

    def __init__(self, path, snaplen=65535):
        if not isinstance(snaplen, int) or not 1 <= snaplen <= MAX_RECORD:
            raise ValueError(f"snaplen={snaplen!r}: use an integer 1..{MAX_RECORD}")
        self.snaplen = snaplen
        self._next_us = time.time_ns() // 1000
        self._f = open(path, "wb")
        self._f.write(struct.pack("<IHHiIII", MAGIC_US, 2, 4, 0, 0, snaplen, LINKTYPE_ETHERNET))
        self.count = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self._f.close()

    def _stamps(self, n, ts_ns):
        """Microsecond timestamps: given ones, or the next n of the 1 µs clock."""
        if ts_ns is None:
            us = self._next_us + np.arange(n, dtype=np.int64)
        else:
            us = np.asarray(ts_ns, dtype=np.int64).reshape(-1) // 1000
            if us.size and (us.min() < 0 or us.max() // 1_000_000 > 0xFFFFFFFF):
                raise ValueError("ts_ns: use nanoseconds since 1970 that fit pcap's 32-bit seconds")
        if us.size:
            self._next_us = max(self._next_us, int(us.max()) + 1)
        return us

    def write(self, frame, ts_ns=None):
        """Append one frame (bytes, bytearray or uint8 array)."""
        b = frame.tobytes() if isinstance(frame, np.ndarray) else bytes(frame)
        (us,) = self._stamps(1, None if ts_ns is None else [ts_ns])
        incl = min(len(b), self.snaplen)
        self._f.write(struct.pack("<IIII", int(us // 1_000_000), int(us % 1_000_000), incl, len(b)))
        self._f.write(b[:incl])
        self.count += 1

    def write_many(self, data, offsets, lengths, ts_ns=None):
        """Append frames ``data[offsets[i]:offsets[i] + lengths[i]]`` in one write:
        headers come from one numpy record array and a compiled loop lays out
        the bytes, so a million frames take well under a second of copying."""
        data = np.asarray(data, dtype=np.uint8).reshape(-1)
        offsets = np.asarray(offsets, dtype=np.int64)
        orig = np.asarray(lengths, dtype=np.int64)
        if offsets.shape != orig.shape or offsets.ndim != 1:
            raise ValueError("offsets and lengths: use two 1-D arrays of the same length")
        incl = np.minimum(orig, self.snaplen)
        if incl.size and (offsets.min() < 0 or (offsets + incl).max() > data.size):
            raise ValueError("a frame runs past the end of data: check offsets and lengths")
        us = self._stamps(orig.size, ts_ns)
        rec = np.empty(orig.size, dtype=self.REC)
        rec["sec"], rec["usec"], rec["incl"], rec["orig"] = us // 1_000_000, us % 1_000_000, incl, orig
        out = np.empty(int((REC_HDR + incl).sum()), dtype=np.uint8)
        _pack(data, offsets, incl, rec.view(np.uint8).reshape(-1, REC_HDR), out)
        out.tofile(self._f)
        self.count += orig.size

    def write_traffic(self, traffic, n=None):
        """Append ``n`` packets of a ``Traffic`` run (default: one pass of ``seq``);
        a template longer than the stride is written as its stored bytes."""
        n = len(traffic.seq) if n is None else n
        t = traffic.seq[np.arange(n) % len(traffic.seq)].astype(np.int64)
        stored = np.minimum(traffic.lengths[t].astype(np.int64), traffic.stride)
        self.write_many(traffic.frames.reshape(-1), t * traffic.stride, stored)


def write_packed(path, data, lengths, n):
    """Write the first n frames of a capture packed back to back in `data`
    (frame i is lengths[i] bytes, right after frame i - 1) as a pcap file."""
    lengths = lengths[:n].astype(np.int64)
    offsets = np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.int64)
    with PcapWriter(path) as w:
        w.write_many(data, offsets, lengths)


@njit(cache=True, nogil=True)
def _pack(data, offsets, incl, headers, out):
    """Lay out record header i then its incl[i] captured bytes, back to back."""
    pos = 0
    for i in range(incl.size):
        out[pos:pos + REC_HDR] = headers[i]
        pos += REC_HDR
        n = incl[i]
        out[pos:pos + n] = data[offsets[i]:offsets[i] + n]
        pos += n
