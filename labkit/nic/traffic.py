"""The frames the in-memory NIC "DMA"s: a small set of templates and a send order.

A traffic generator does not build a new packet per send; it keeps templates
and replays them, which is what lets it outrun the device under test. Here
``make_traffic`` builds one template per flow (a distinct 5-tuple), optional
malformed templates, and ``seq``: packet ``i`` of a run is template
``seq[i % len(seq)]``.

Sizes: frames carry no FCS, like the frames AF_PACKET and pcap files hand us,
so the 64-byte minimum Ethernet frame of RFC 2544 is 60 bytes here and a
1518-byte maximum frame is 1514. ``size`` counts the stored bytes: 60 up to
``max_frame`` (the slot's data room, ``MAX_FRAME_DEFAULT``), or ``"imix"``:
the simple IMIX, 60, 590 and 1514-byte frames in proportions 7:4:1.

Addresses: sources spread over 10.0.0.0/8; destinations drawn from ``dst``, by
default the RFC 2544 benchmarking range 198.18.0.0/15, so the traffic never
aliases a real network.

Checksums: every valid frame has a correct IPv4 header checksum (RFC 791) and
a correct UDP or TCP checksum. The payload is all zero bytes, so the L4
checksum covers only the pseudo-header and the L4 header, which is cheap to
compute for a million flows at once.
"""
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from numba import njit

from labkit.memory import layouts as L

GEN_MAC = bytes.fromhex("020000000002")   # the generator's port (locally administered)
DUT_MAC = bytes.fromhex("020000000001")   # the device under test's port

IMIX = ((60, 7), (590, 4), (1514, 1))     # (frame bytes without FCS, weight)
MIN_FRAME = 60                            # 64 on the wire minus the 4-byte FCS
MAX_FLOWS = 1_000_000
MIN_SEQ = 4096                            # a send order long enough to spread malformed frames
ORDERS = ("spread", "sorted", "shuffled")  # how the frames of a send order are arranged (make_traffic)
SHUFFLED_MIN = 1 << 20                    # a shuffled send order is at least this long (see make_traffic)
BENCH_NET, BENCH_BITS = 0xC6120000, 17    # 198.18.0.0/15 (RFC 2544 appendix C)
SRC_NET = 0x0A000000                      # 10.0.0.0/8
TTL = 64

# Kind codes. The malformed names are the drop reasons (error counter names) of
# the graph nodes, so a test can check each frame is dropped for its reason.
# "ip4_options" is valid: a router forwards it; it is only unusual.
KIND_NAMES = {
    0: "valid",
    1: "runt",
    2: "unknown_ethertype",
    3: "ip4_truncated",
    4: "ip4_bad_version",
    5: "ip4_bad_ihl",
    6: "ip4_bad_length",
    7: "ip4_bad_checksum",
    8: "ttl_expired",
    9: "ip4_options",
}
KIND_CODES = {name: code for code, name in KIND_NAMES.items()}
FORWARDED_KINDS = frozenset({KIND_CODES["valid"], KIND_CODES["ip4_options"]})


@dataclass
class Traffic:
    """Templates and send order. ``kinds`` says what each template is; a NIC
    needs only ``frames``, ``lengths`` and ``seq``. A template whose length
    exceeds the stride (possible only via ``from_frames``/``from_buffer``) is
    one the NIC must drop as too long."""
    frames: np.ndarray    # uint8 [n_templates, stride], stride a multiple of 64
    lengths: np.ndarray   # uint16 [n_templates], true frame length (may exceed stride, see from_frames)
    seq: np.ndarray       # uint32 send order: packet i is template seq[i % len(seq)]
    kinds: np.ndarray     # uint8 [n_templates], codes of KIND_NAMES
    spec: dict = field(default_factory=dict)
    KIND_NAMES: ClassVar[dict] = KIND_NAMES

    @property
    def stride(self):
        return self.frames.shape[1]

    def frame(self, i):
        """Template i as bytes (only the stored part if it is longer than the stride)."""
        return self.frames[i, :min(int(self.lengths[i]), self.stride)].tobytes()

    @classmethod
    def from_frames(cls, frames, max_frame=L.MAX_FRAME_DEFAULT):
        """Each frame a template, sent in order (the pcap source).

        Frames longer than ``max_frame`` are kept so the NIC can count them as
        "frame_too_long" drops: ``lengths`` holds their true length, but the
        stride only covers ``max_frame``, so just their first ``stride`` bytes
        are stored.
        """
        frames = [bytes(f) for f in frames]
        if not frames:
            raise ValueError("no frames: give at least one frame")
        lengths = np.array([len(f) for f in frames], dtype=np.int64)
        offsets = np.concatenate(([0], np.cumsum(lengths)[:-1]))
        data = np.frombuffer(b"".join(frames), dtype=np.uint8)
        return cls.from_buffer(data, offsets, lengths, max_frame)

    @classmethod
    def from_buffer(cls, data, offsets, lengths, max_frame=L.MAX_FRAME_DEFAULT):
        """Like ``from_frames`` for frames given as ``data[offsets[i]:offsets[i]+lengths[i]]``
        (what ``labkit.nic.pcap.read_pcap`` returns), copied by a compiled loop."""
        lengths = np.asarray(lengths, dtype=np.int64)
        offsets = np.asarray(offsets, dtype=np.int64)
        if lengths.size == 0:
            raise ValueError("no frames: give at least one frame")
        if lengths.max() > 0xFFFF:
            raise ValueError(f"frame of {lengths.max()} bytes: frames must be at most 65535 bytes")
        stride = _round64(max(min(int(lengths.max()), max_frame), 1))
        kept = np.minimum(lengths, stride)
        out = np.zeros((lengths.size, stride), dtype=np.uint8)
        data = np.ascontiguousarray(data, dtype=np.uint8).reshape(-1)
        if offsets.shape != lengths.shape or offsets.min() < 0 or (offsets + kept).max() > data.size:
            raise ValueError("frames run past the data: check offsets and lengths")
        _gather(data, offsets, kept, out)
        n = lengths.size
        return cls(out, lengths.astype(np.uint16), np.arange(n, dtype=np.uint32),
                   np.zeros(n, dtype=np.uint8), {"source": "frames", "max_frame": max_frame})


def make_traffic(size=64, flows=1024, mix="udp", malformed=0.0, seed=1, dst=None,
                 src_mac=GEN_MAC, dst_mac=DUT_MAC, max_frame=L.MAX_FRAME_DEFAULT, order="spread"):
    """Build ``flows`` flow templates (+ malformed ones) and their send order.

    ``order`` arranges the same frames three ways (``ORDERS``): "spread", malformed
    frames at evenly spaced places among the flows; "sorted", every frame of a kind
    together (valid UDP, valid TCP, then each defect): a branch predictor guesses
    almost every packet right; "shuffled", a seeded random order: whether the next
    frame is good, and what is wrong with it, cannot be guessed. The shuffled order
    is the send order repeated and shuffled as a whole to SHUFFLED_MIN packets or
    more: a branch predictor learns a random pattern of a few thousand outcomes
    that comes round again and again (notebook 10 measures it), and the NIC replays
    the send order in a loop."""
    _check(size, flows, mix, malformed, seed, src_mac, dst_mac, max_frame)
    if order not in ORDERS:
        raise ValueError(f"order={order!r}: use " + ", ".join(repr(o) for o in ORDERS))
    dst = _check_dst(dst)
    rng = np.random.default_rng(seed)
    idx = np.arange(flows, dtype=np.uint64)

    if size == "imix":
        pattern = np.repeat([s for s, _ in IMIX], [w for _, w in IMIX])
        sizes = pattern[rng.permutation(flows) % pattern.size]
    else:
        sizes = np.full(flows, size)
    proto = np.where((idx % 2 == 1) & (mix == "mixed") | (mix == "tcp"), L.IPPROTO_TCP, L.IPPROTO_UDP)
    # x -> x * odd mod 2**24 is a bijection, so every flow gets its own source.
    src = (SRC_NET + ((idx * np.uint64(0x9E3779B1) + np.uint64(rng.integers(1 << 24))) & np.uint64(0xFFFFFF)))
    dsts = dst[_spread(rng, dst.size, flows)]
    sport = 1024 + rng.integers(0, 64512, flows)
    dport = 1024 + rng.integers(0, 64512, flows)

    bad = _malformed_templates(src[0], dsts[0], sport[0], dport[0], src_mac, dst_mac) if malformed > 0 else []
    stride = _round64(max([int(sizes.max())] + [len(b) for _, b in bad]))
    frames = np.zeros((flows + len(bad), stride), dtype=np.uint8)
    _fill_valid(frames, sizes, proto, src, dsts, sport, dport, src_mac, dst_mac)
    lengths = np.concatenate((sizes, [len(b) for _, b in bad])).astype(np.uint16)
    kinds = np.zeros(frames.shape[0], dtype=np.uint8)
    for j, (kind, b) in enumerate(bad):
        frames[flows + j, :len(b)] = np.frombuffer(b, dtype=np.uint8)
        kinds[flows + j] = KIND_CODES[kind]
    seq = _arrange(_send_order(rng, flows, len(bad), malformed), order, kinds, frames, seed)
    spec = dict(size=size, flows=flows, mix=mix, malformed=malformed, seed=seed,
                src_mac=src_mac.hex(), dst_mac=dst_mac.hex(), max_frame=max_frame, order=order)
    return Traffic(frames, lengths, seq, kinds, spec)


def _arrange(seq, order, kinds, frames, seed):
    """The send order `seq` as it is ("spread"), grouped by kind and protocol ("sorted",
    a stable sort: within a group the flows keep their order, so only the kinds' order
    changes), or in a seeded random order ("shuffled", long): each frame as often as in `seq`."""
    if order == "sorted":
        proto = frames[:, L.IP4_OFF + L.IP4_PROTO_OFF]
        return seq[np.lexsort((proto[seq], kinds[seq]))]
    if order == "shuffled":       # long: a branch predictor learns a pattern of a few thousand that repeats
        reps = -(-SHUFFLED_MIN // seq.size)
        return np.random.default_rng([seed, 1]).permutation(np.tile(seq, reps))   # its own stream
    return seq


# --- validation: one line saying what to use -----------------------------------

def _is_int(x):
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _check(size, flows, mix, malformed, seed, src_mac, dst_mac, max_frame):
    if not _is_int(max_frame) or not MIN_FRAME <= max_frame <= 0xFFFF:
        raise ValueError(f"max_frame={max_frame!r}: use an integer {MIN_FRAME}..65535")
    if size == "imix":
        if max_frame < 1514:
            raise ValueError(f"size='imix' has 1514-byte frames but max_frame={max_frame}: use max_frame >= 1514")
    elif not _is_int(size) or not MIN_FRAME <= size <= max_frame:
        raise ValueError(f"size={size!r}: use a frame length {MIN_FRAME}..{max_frame} (bytes without FCS; "
                         f"a 64-byte wire frame is 60) or 'imix'")
    if not _is_int(flows) or not 1 <= flows <= MAX_FLOWS:
        raise ValueError(f"flows={flows!r}: use an integer 1..{MAX_FLOWS}")
    if mix not in ("udp", "tcp", "mixed"):
        raise ValueError(f"mix={mix!r}: use 'udp', 'tcp' or 'mixed'")
    if isinstance(malformed, bool) or not isinstance(malformed, (int, float, np.number)) \
            or not 0.0 <= malformed <= 1.0:
        raise ValueError(f"malformed={malformed!r}: use a share 0.0..1.0 of the packets")
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"seed={seed!r}: use a non-negative integer")
    for name, mac in (("src_mac", src_mac), ("dst_mac", dst_mac)):
        if not isinstance(mac, (bytes, bytearray)) or len(mac) != 6:
            raise ValueError(f"{name}={mac!r}: use 6 bytes, e.g. bytes.fromhex('020000000001')")


def _check_dst(dst):
    """The destination pool; None means the whole RFC 2544 range (not materialised twice)."""
    if dst is None:
        return BENCH_NET + np.arange(1 << BENCH_BITS, dtype=np.uint64)
    a = np.asarray(dst)
    if a.ndim != 1 or a.size == 0 or a.dtype.kind not in "ui" or (a.size and (a.min() < 0 or a.max() > 0xFFFFFFFF)):
        raise ValueError("dst: use a non-empty 1-D array of IPv4 addresses as uint32, or None for 198.18.0.0/15")
    return a.astype(np.uint64)


# --- building -------------------------------------------------------------------

def _round64(n):
    return -(-n // L.CACHE_LINE) * L.CACHE_LINE


def _spread(rng, pool, n):
    """Indices into a pool of destinations: all distinct while the pool is big
    enough, else every destination used about equally (so routes all get hit)."""
    if pool >= n:
        return rng.choice(pool, n, replace=False)
    return rng.permutation(n) % pool


@njit(cache=True, nogil=True)
def _gather(data, offsets, kept, out):
    """Row i of out = the kept[i] bytes of data at offsets[i] (rest stays zero)."""
    for i in range(kept.size):
        o = offsets[i]
        for j in range(kept[i]):
            out[i, j] = data[o + j]


def _put16(f, off, v, rows=slice(None)):
    v = np.asarray(v, dtype=np.uint64)
    f[rows, off] = (v >> np.uint64(8)) & np.uint64(0xFF)
    f[rows, off + 1] = v & np.uint64(0xFF)


def _put32(f, off, v, rows=slice(None)):
    v = np.asarray(v, dtype=np.uint64)
    _put16(f, off, v >> np.uint64(16), rows)
    _put16(f, off + 2, v & np.uint64(0xFFFF), rows)


def _word_sum(f, lo, hi, rows=slice(None)):
    """Sum of the big-endian 16-bit words of columns lo..hi (hi - lo even)."""
    b = f[:, lo:hi][rows].astype(np.int64)
    return (b[:, 0::2] << 8).sum(axis=1) + b[:, 1::2].sum(axis=1)


def _fold(s):
    """Internet checksum (RFC 1071) from a sum of 16-bit words."""
    s = np.asarray(s, dtype=np.int64)
    for _ in range(3):
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def _fill_valid(f, sizes, proto, src, dst, sport, dport, src_mac, dst_mac):
    """Write Ethernet + IPv4 (IHL 5, TTL 64, DF clear, RFC 791) + UDP/TCP headers
    into the first len(sizes) rows of f, all flows at once."""
    n = sizes.size
    rows = slice(0, n)
    ip, l4 = L.IP4_OFF, L.IP4_OFF + L.IP4_HDR.itemsize
    f[rows, L.ETH_DST_OFF:L.ETH_DST_OFF + 6] = np.frombuffer(bytes(dst_mac), dtype=np.uint8)
    f[rows, L.ETH_SRC_OFF:L.ETH_SRC_OFF + 6] = np.frombuffer(bytes(src_mac), dtype=np.uint8)
    _put16(f, L.ETH_TYPE_OFF, np.full(n, L.ETHERTYPE_IPV4), rows)
    f[rows, ip] = 0x45
    _put16(f, ip + L.IP4_LEN_OFF, sizes - ip, rows)
    _put16(f, ip + 4, np.arange(n) & 0xFFFF, rows)        # identification: varies per flow
    f[rows, ip + L.IP4_TTL_OFF] = TTL
    f[rows, ip + L.IP4_PROTO_OFF] = proto
    _put32(f, ip + L.IP4_SRC_OFF, src, rows)
    _put32(f, ip + L.IP4_DST_OFF, dst, rows)
    _put16(f, ip + L.IP4_CSUM_OFF, _fold(_word_sum(f, ip, l4, rows)), rows)
    _put16(f, l4 + L.L4_SPORT_OFF, sport, rows)
    _put16(f, l4 + L.L4_DPORT_OFF, dport, rows)
    l4len = sizes.astype(np.int64) - l4
    # Pseudo-header (RFC 768 / RFC 793): addresses, protocol, L4 length.
    pseudo = (src >> np.uint64(16)) + (src & np.uint64(0xFFFF)) + (dst >> np.uint64(16)) + (dst & np.uint64(0xFFFF))
    pseudo = pseudo.astype(np.int64) + proto + l4len
    udp = np.flatnonzero(proto == L.IPPROTO_UDP)
    tcp = np.flatnonzero(proto == L.IPPROTO_TCP)
    if udp.size:
        _put16(f, l4 + 4, l4len[udp], udp)
        c = _fold(pseudo[udp] + _word_sum(f, l4, l4 + 8, udp))
        _put16(f, l4 + 6, np.where(c == 0, 0xFFFF, c), udp)   # 0 would mean "no checksum"
    if tcp.size:
        _put32(f, l4 + 4, (tcp * 2654435761) & 0xFFFFFFFF, tcp)  # sequence number
        _put16(f, l4 + 12, np.full(tcp.size, 0x5010), tcp)        # data offset 5, ACK
        _put16(f, l4 + 14, np.full(tcp.size, 0xFFFF), tcp)        # window
        _put16(f, l4 + 16, _fold(pseudo[tcp] + _word_sum(f, l4, l4 + 20, tcp)), tcp)


def _csum_bytes(b):
    b = bytes(b) + b"\0" * (len(b) % 2)
    return int(_fold(sum(int.from_bytes(b[i:i + 2], "big") for i in range(0, len(b), 2))))


def _set_ip(b, **fields):
    """Rewrite IPv4 header fields of frame b (bytearray) and fix the checksum."""
    ip = L.IP4_OFF
    for name, v in fields.items():
        off = ip + L.IP4_HDR.fields[name][1]
        size = L.IP4_HDR.fields[name][0].itemsize
        b[off:off + size] = int(v).to_bytes(size, "big")
    hlen = max(20, (b[ip] & 0xF) * 4)
    b[ip + L.IP4_CSUM_OFF:ip + L.IP4_CSUM_OFF + 2] = b"\0\0"
    b[ip + L.IP4_CSUM_OFF:ip + L.IP4_CSUM_OFF + 2] = _csum_bytes(b[ip:ip + hlen]).to_bytes(2, "big")
    return b


def _malformed_templates(src, dst, sport, dport, src_mac, dst_mac):
    """(kind, frame) pairs, each with exactly one defect, addressed like flow 0 so
    that without the defect it would be routed (the test of each drop reason is
    then not confused by a missing route)."""
    f = np.zeros((1, 64), dtype=np.uint8)
    _fill_valid(f, np.array([MIN_FRAME]), np.array([L.IPPROTO_UDP]), np.array([src], dtype=np.uint64),
                np.array([dst], dtype=np.uint64), np.array([sport]), np.array([dport]), src_mac, dst_mac)
    base = bytes(f[0, :MIN_FRAME])
    eth = base[:12]
    ip = L.IP4_OFF
    out = [("runt", base[:10])]
    arp = (eth + L.ETHERTYPE_ARP.to_bytes(2, "big") + bytes.fromhex("0001080006040001") + bytes(src_mac)
           + int(src).to_bytes(4, "big") + bytes(6) + int(dst).to_bytes(4, "big"))
    out.append(("unknown_ethertype", arp.ljust(MIN_FRAME, b"\0")))
    v6 = (bytes.fromhex("60000000") + (8).to_bytes(2, "big") + bytes([L.IPPROTO_UDP, 64])
          + bytes.fromhex("fd000000000000000000000000000001") + bytes.fromhex("20010db8000000000000000000000001"))
    udp6 = int(sport).to_bytes(2, "big") + int(dport).to_bytes(2, "big") + (8).to_bytes(2, "big")
    c = _csum_bytes(v6[8:40] + (8).to_bytes(4, "big") + bytes([0, 0, 0, L.IPPROTO_UDP]) + udp6 + b"\0\0") or 0xFFFF
    out.append(("unknown_ethertype", (eth + L.ETHERTYPE_IPV6.to_bytes(2, "big") + v6 + udp6
                                      + c.to_bytes(2, "big"))))
    out.append(("ip4_truncated", base[:ip + 12]))
    out.append(("ip4_bad_version", bytes(_set_ip(bytearray(base), ver_ihl=0x65))))
    out.append(("ip4_bad_ihl", bytes(_set_ip(bytearray(base), ver_ihl=0x44))))
    out.append(("ip4_bad_length", bytes(_set_ip(bytearray(base), total_length=1500))))
    bad = bytearray(base)
    bad[ip + L.IP4_CSUM_OFF] ^= 0x55        # never turns 0x0000 into 0xFFFF, so really wrong
    out.append(("ip4_bad_checksum", bytes(bad)))
    out.append(("ttl_expired", bytes(_set_ip(bytearray(base), ttl=0))))
    out.append(("ttl_expired", bytes(_set_ip(bytearray(base), ttl=1))))
    # RFC 2113 Router Alert: a legal option, the header grows to IHL 6. The
    # UDP part is unchanged, so its checksum stays right.
    opt = bytearray(base[:ip + 20] + bytes.fromhex("94040000") + base[ip + 20:])
    out.append(("ip4_options", bytes(_set_ip(opt, ver_ihl=0x46, total_length=len(opt) - ip))))
    return out


def _send_order(rng, flows, n_bad, share):
    """``seq``: a seeded permutation of the flows repeated (so consecutive packets
    are of different flows and each flow is sent equally often), with malformed
    templates (cycled through, ids flows..flows+n_bad-1) at evenly spread
    positions making up ``share`` of the sequence."""
    cap = 16 * max(flows, MIN_SEQ)   # bounds seq when share is near 1 (then not every flow is sent)
    if share >= 1.0:
        n, m = max(MIN_SEQ, n_bad), max(MIN_SEQ, n_bad)
    else:
        valid = flows * -(-int(MIN_SEQ * (1 - share)) // flows)
        m = int(round(share * valid / (1 - share)))
        n = valid + m
        if n > cap:
            n, m = cap, int(round(share * cap))
    perm = rng.permutation(flows).astype(np.uint32)
    seq = np.empty(n, dtype=np.uint32)
    bad = np.zeros(n, dtype=bool)
    if m:
        bad[((np.arange(m) + 0.5) * n / m).astype(np.int64)] = True
        seq[bad] = flows + np.arange(m) % n_bad
    seq[~bad] = np.resize(perm, n - m)
    return seq
