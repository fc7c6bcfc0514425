"""Receive Side Scaling: how a NIC spreads flows over cores (Toeplitz hash + RETA).

One core cannot keep up with a fast link, so the NIC splits the traffic over
several RX queues, one per core. It must keep each flow on one queue (else its
packets would be reordered across cores), so it hashes the fields that name
the flow and lets the hash pick the queue:

    tuple = src address, dst address[, src port, dst port]   (12 or 8 bytes, network order)
    hash  = Toeplitz(key, tuple)                               (32 bits)
    queue = RETA[hash & (RETA size - 1)]                       (the indirection table)

The Toeplitz hash of Microsoft's RSS specification is linear over GF(2):
every set bit of the input XORs in a 32-bit window of the secret key, the
window that starts at that bit. So it is cheap in hardware and easy to
tabulate in software: the contribution of a whole input byte depends only on
its position and value, which gives the 256-entry-per-byte tables of
``make_tables``, one load per byte instead of eight bit steps.

The key must be at least 4 bytes longer than the input (the last input bit
needs 32 key bits from its position on): 12 bytes of IPv4 4-tuple need 16,
and NICs carry a 40-byte key so IPv6 (36 bytes) fits as well.

This module has a pure-Python reference (``toeplitz``), a table-driven numba
version (``toeplitz_batch``, ``toeplitz_fast``), the reference's algorithm
compiled (``toeplitz_bits_batch``) and what each costs (``measure_hash``), a
kernel that hashes frames straight from the packet arena
(``hash_ipv4_frames``), the indirection table (``Reta``) and the
``labkit rss hash|bench`` command.
"""
import functools
import ipaddress

import numpy as np
from numba import njit

from labkit.memory.layouts import (
    DATA_OFF, ETH_TYPE_OFF, ETHERTYPE_IPV4, IP4_HDR, IP4_LEN_OFF, IP4_OFF, IP4_PROTO_OFF,
    IP4_SRC_OFF, IPPROTO_TCP, IPPROTO_UDP, L4_SPORT_OFF,
)

# The key of Microsoft's RSS specification (and of its verification tables),
# the default of many NIC drivers.
DEFAULT_KEY = bytes.fromhex("6d5a56da255b0ec24167253d43a38fb0d0ca2bcbae7b30b477cb2da38030f20c6a42b73bbeac01fa")
# Woo and Park (2012), "Scalable TCP Session Monitoring with Symmetric Receive-side Scaling": a
# key that repeats every 16 bits hashes a->b and b->a alike (see ``ipv4_tuple``).
SYMMETRIC_KEY = bytes.fromhex("6d5a" * 20)
assert len(DEFAULT_KEY) == len(SYMMETRIC_KEY) == 40

# Microsoft, "Verifying the RSS Hash Calculation" (the RSS specification's IPv4
# table, under DEFAULT_KEY), each row in the order it is printed: destination
# address, destination port, source address, source port, then the hash of the
# addresses ("IPv4") and of addresses and ports ("IPv4 with TCP"). The printed
# order is a trap: the hash input starts with the *source* (``ipv4_tuple``).
VERIFICATION_IPV4 = (
    ("161.142.100.80", 1766, "66.9.149.187", 2794, 0x323e8fc2, 0x51ccc178),
    ("65.69.140.83", 4739, "199.92.111.2", 14230, 0xd718262a, 0xc626b0ea),
    ("12.22.207.184", 38024, "24.19.198.95", 12898, 0xd2d0a5de, 0x5c2b394a),
    ("209.142.163.6", 2217, "38.27.205.30", 48228, 0x82989176, 0xafc7327f),
    ("202.188.127.2", 1303, "153.39.163.191", 44251, 0x5d1809c5, 0x10e828a2),
)

IPV4_2TUPLE = 8                   # bytes: src, dst address
IPV4_4TUPLE = 12                  # bytes: + src, dst port
MIN_KEY = IPV4_4TUPLE + 4         # 16: the shortest key that can hash an IPv4 4-tuple
IP4_FRAG_OFF = IP4_HDR.fields["frag"][1]   # 6: flags (3 bits) + fragment offset (13 bits)
IP4_MF_OFFSET = 0x3FFF            # "more fragments" bit + offset: non-zero in every fragment


def _bytes(x, what):
    if isinstance(x, (bytes, bytearray, memoryview)):
        return bytes(x)
    raise ValueError(f"{what} must be bytes, not {type(x).__name__}: use e.g. parse_key('default') or ipv4_tuple(...)")


def _check_key(key, n):
    if len(key) < n + 4:
        raise ValueError(f"key of {len(key)} bytes is too short for {n} bytes of input: "
                         f"Toeplitz needs len(input) + 4 = {n + 4} bytes or more")


# --- 1. the reference: the specification's algorithm, bit by bit ---------------

def toeplitz(key: bytes, data: bytes) -> int:
    """Toeplitz hash of ``data`` under ``key``, as the RSS specification states it:

        for each bit b of the input, left to right (most significant bit of byte 0 first):
            if b is 1: result ^= the leftmost 32 bits of K
            shift K left by one bit
    """
    key, data = _bytes(key, "key"), _bytes(data, "data")
    _check_key(key, len(data))
    k = int.from_bytes(key, "big")
    top = 8 * len(key) - 32           # shift that brings the leftmost 32 bits of K down
    all_bits = (1 << 8 * len(key)) - 1
    result = 0
    for byte in data:
        for bit in range(7, -1, -1):
            if (byte >> bit) & 1:
                result ^= (k >> top) & 0xFFFFFFFF
            k = (k << 1) & all_bits   # K keeps its length: bits shifted out are gone
    return result


# --- 2. the fast version: one table lookup per input byte -----------------------

def make_tables(key: bytes, n_bytes: int) -> np.ndarray:
    """uint32 [n_bytes, 256]: ``tables[i, v]`` is what byte value v at input
    position i XORs into the hash. Then Toeplitz(key, data) is the XOR of
    ``tables[i, data[i]]`` over i: 8 bit-steps become one load. Inputs shorter
    than ``n_bytes`` use the first rows (their windows are the same)."""
    key = _bytes(key, "key")
    if not isinstance(n_bytes, (int, np.integer)) or n_bytes < 0:
        raise ValueError(f"n_bytes={n_bytes!r}: use the input length in bytes, 0 or more")
    _check_key(key, n_bytes)
    k, top = int.from_bytes(key, "big"), 8 * len(key) - 32
    values = np.arange(256)
    tables = np.zeros((n_bytes, 256), dtype=np.uint32)
    for i in range(n_bytes):
        for bit in range(8):                          # bit 0 = the byte's most significant bit
            p = 8 * i + bit                           # its position in the input
            window = np.uint32((k >> (top - p)) & 0xFFFFFFFF)
            tables[i, (values >> (7 - bit)) & 1 == 1] ^= window
    return tables


@njit(nogil=True, cache=True)
def toeplitz_batch(tables, data, lengths, out):
    """out[i] = Toeplitz hash of data[i, :lengths[i]] for every row i of the
    uint8 [n, L] array ``data`` (``tables`` from ``make_tables``)."""
    n = data.shape[0]
    if lengths.shape[0] < n or out.shape[0] < n:
        raise ValueError("lengths and out need one entry per row of data")
    for i in range(n):
        m = np.int64(lengths[i])
        if m < 0 or m > data.shape[1] or m > tables.shape[0]:
            raise ValueError("lengths[i] must be 0..data.shape[1] and at most the rows of tables")
        h = np.uint32(0)
        for j in range(m):
            h ^= tables[j, data[i, j]]
        out[i] = h


@functools.lru_cache(maxsize=16)
def _tables_for(key, n_bytes):
    return make_tables(key, n_bytes)


def toeplitz_fast(key: bytes, data: bytes) -> int:
    """Same as ``toeplitz(key, data)``, by the tables (kept for the last 16 keys)."""
    key, data = _bytes(key, "key"), _bytes(data, "data")
    _check_key(key, len(data))
    row = np.frombuffer(data, dtype=np.uint8).reshape(1, len(data))
    out = np.zeros(1, dtype=np.uint32)
    toeplitz_batch(_tables_for(key, len(data)), row, np.array([len(data)]), out)
    return int(out[0])


@njit(nogil=True, cache=True)
def toeplitz_bits_batch(key, data, lengths, out):
    """``toeplitz_batch`` computed bit by bit, as the reference does, but compiled:
    a 32-bit window slides along the key (uint8 array), one key bit shifted in
    per input bit (DPDK's ``rte_softrss``). It separates what the JIT buys
    from what the tables buy (``measure_hash``). The key must be 4 bytes longer
    than every input."""
    for i in range(data.shape[0]):
        m = np.int64(lengths[i])
        if m < 0 or m > data.shape[1] or m + 4 > key.shape[0]:
            raise ValueError("lengths[i] must be 0..data.shape[1], and the key 4 bytes longer")
        w = (np.uint32(key[0]) << 24) | (np.uint32(key[1]) << 16) | (np.uint32(key[2]) << 8) | np.uint32(key[3])
        h = np.uint32(0)
        for j in range(m):
            b = data[i, j]
            for bit in range(7, -1, -1):
                if (b >> bit) & 1:
                    h ^= w
                p = 32 + 8 * j + 7 - bit                 # the key bit that enters the window
                w = (w << np.uint32(1)) | np.uint32((key[p >> 3] >> (7 - (p & 7))) & 1)
        out[i] = h


def measure_hash(n=1024, reps=200, key=DEFAULT_KEY, seed=1):
    """TSC cycles per IPv4 4-tuple (12 bytes) of the Toeplitz hash, three ways:
    the pure-Python reference, the same bit-by-bit algorithm compiled, and the
    table-driven version; medians of 5 timings. All three must agree on every
    tuple, or this raises (a measurement of a wrong hash is worth nothing)."""
    from labkit.memory.intrinsics import rdtsc as now_tsc      # the TSC, from Python
    key = _bytes(key, "key")
    _check_key(key, IPV4_4TUPLE)
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(n, IPV4_4TUPLE), dtype=np.uint8)
    lengths = np.full(n, IPV4_4TUPLE, np.int64)
    tables, kb = make_tables(key, IPV4_4TUPLE), np.frombuffer(key, np.uint8).copy()
    fast, bits = np.zeros(n, np.uint32), np.zeros(n, np.uint32)
    toeplitz_batch(tables, data, lengths, fast)              # compile (or load the cache)
    toeplitz_bits_batch(kb, data, lengths, bits)
    k_ref = min(n, 64)                                       # the reference is slow: fewer tuples
    ref = [toeplitz(key, data[i].tobytes()) for i in range(k_ref)]
    if ref != fast[:k_ref].tolist() or not np.array_equal(fast, bits):
        raise AssertionError("the three Toeplitz versions disagree")

    def per_tuple(fn, count, times):
        samples = []
        for _ in range(5):
            t0 = now_tsc()
            for _ in range(times):
                fn()
            samples.append((now_tsc() - t0) / (count * times))
        return float(np.median(samples))
    return {
        "reference (Python, bit by bit)": per_tuple(
            lambda: [toeplitz(key, data[i].tobytes()) for i in range(k_ref)], k_ref, 1),
        "bit by bit (numba)": per_tuple(lambda: toeplitz_bits_batch(kb, data, lengths, bits), n, reps),
        "table-driven (numba)": per_tuple(lambda: toeplitz_batch(tables, data, lengths, fast), n, reps),
    }


@njit(nogil=True, cache=True)
def hash_ipv4_frames(tables, arena, bases, lengths, n, out):
    """What an RSS NIC computes on receive: out[i] = the hash of frame i, the
    ``lengths[i]`` bytes at ``arena[bases[i] + DATA_OFF ...]``, with ``tables``
    from ``make_tables(key, 12)`` or longer.

    - IPv4 TCP or UDP, not a fragment: the 4-tuple (addresses, ports);
    - other IPv4, and every fragment (the first one too, which carries the
      ports: all fragments of a datagram must reach the same queue): the
      2-tuple (addresses), as NICs do;
    - anything that is not an Ethernet II frame holding a 20-byte IPv4 header
      of version 4 and IHL >= 5 (runts, ARP, IPv6, VLAN-tagged frames,
      truncated headers): 0, the hash of the empty tuple.

    The ports count only when they lie inside the frame and inside the
    datagram's total length. Like a NIC, no checksum or TTL is checked.
    Nothing past the frame's end, or the arena's, is ever read.
    """
    if tables.shape[0] < 12 or tables.shape[1] != 256:
        raise ValueError("tables must be make_tables(key, 12) or longer")
    if bases.shape[0] < n or lengths.shape[0] < n or out.shape[0] < n:
        raise ValueError("bases, lengths and out need n entries")
    for i in range(n):
        out[i] = 0                                       # until proven IPv4: the empty tuple
        f = np.int64(bases[i]) + DATA_OFF                # the frame's first byte
        avail = min(np.int64(lengths[i]), arena.shape[0] - f)   # bytes we may read from f
        if f < 0 or avail < IP4_OFF + 20:                # runt, or no room for an IPv4 header
            continue
        ip = f + IP4_OFF
        ethertype = (int(arena[f + ETH_TYPE_OFF]) << 8) | int(arena[f + ETH_TYPE_OFF + 1])
        ver_ihl = int(arena[ip])
        if ethertype != ETHERTYPE_IPV4 or (ver_ihl >> 4) != 4 or (ver_ihl & 0xF) < 5:
            continue
        h = np.uint32(0)
        for j in range(IPV4_2TUPLE):                     # src, dst: the 8 bytes at offset 12
            h ^= tables[j, arena[ip + IP4_SRC_OFF + j]]
        hlen = (ver_ihl & 0xF) * 4                       # the ports follow the options
        total = (int(arena[ip + IP4_LEN_OFF]) << 8) | int(arena[ip + IP4_LEN_OFF + 1])
        frag = (int(arena[ip + IP4_FRAG_OFF]) << 8) | int(arena[ip + IP4_FRAG_OFF + 1])
        proto = int(arena[ip + IP4_PROTO_OFF])
        if (proto == IPPROTO_TCP or proto == IPPROTO_UDP) and (frag & IP4_MF_OFFSET) == 0 \
                and hlen + 4 <= total and IP4_OFF + hlen + 4 <= avail:
            for j in range(4):                           # sport, dport
                h ^= tables[IPV4_2TUPLE + j, arena[ip + hlen + L4_SPORT_OFF + j]]
        out[i] = h


# --- 3. what gets hashed -------------------------------------------------------------

def _address(a, what):
    use = f"{what} address {a!r}: use a dotted IPv4 address like 10.0.0.1 or an integer 0..4294967295"
    if isinstance(a, bool) or not isinstance(a, (str, int, np.integer)):
        raise ValueError(use)
    try:
        return ipaddress.IPv4Address(int(a) if isinstance(a, np.integer) else a).packed
    except ValueError:
        raise ValueError(use) from None


def _port(p, what):
    if isinstance(p, bool) or not isinstance(p, (int, np.integer)) or not 0 <= p <= 0xFFFF:
        raise ValueError(f"{what} port {p!r}: use an integer 0..65535")
    return int(p).to_bytes(2, "big")


def ipv4_tuple(src, dst, sport=None, dport=None) -> bytes:
    """The RSS input for an IPv4 packet: src address, dst address, then, for TCP
    and UDP, src port, dst port, each in network byte order (12 or 8 bytes).

    A trap: the verification tables of Microsoft's specification list the
    *destination* first ("Destination Address/Port, Source Address/Port"), but
    the input puts the source first. Read the table's first column as ``dst``.

    Why ``SYMMETRIC_KEY`` makes both directions hash alike: reversing a
    connection swaps the two addresses (a shift of 32 bits in the input) and
    the two ports (16 bits). A key that repeats every 16 bits has the same
    32-bit window at bit p and p + 16, so each swapped bit XORs in the same
    value as before.
    """
    t = _address(src, "source") + _address(dst, "destination")
    if (sport is None) != (dport is None):
        raise ValueError("ports: give both the source and destination port, or neither (addresses only)")
    if sport is not None:
        t += _port(sport, "source") + _port(dport, "destination")
    return t


def parse_key(text: str) -> bytes:
    """A key from the command line: 'default' (``DEFAULT_KEY``), 'symmetric'
    (``SYMMETRIC_KEY``) or hex digits, two per byte, optionally after '0x'.
    The rule: at least ``MIN_KEY`` = 16 bytes, the 12 bytes of an IPv4 4-tuple
    plus 4."""
    word = text.strip().lower()
    if word in ("default", "symmetric"):
        return DEFAULT_KEY if word == "default" else SYMMETRIC_KEY
    digits = word[2:] if word.startswith("0x") else word
    use = f"use 'default', 'symmetric' or at least {2 * MIN_KEY} hex digits ({MIN_KEY} bytes)"
    if not digits or any(c not in "0123456789abcdef" for c in digits):
        raise ValueError(f"key {text!r} is not hex; {use}")
    if len(digits) % 2:
        raise ValueError(f"key has an odd number of hex digits ({len(digits)}), two make a byte; {use}")
    key = bytes.fromhex(digits)
    if len(key) < MIN_KEY:
        raise ValueError(f"key of {len(key)} bytes is too short to hash an IPv4 4-tuple "
                         f"(12 bytes + 4); {use}")
    return key


# --- 4. the indirection table ---------------------------------------------------------

def _is_int(x):
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


class Reta:
    """The RSS redirection (indirection) table: ``size`` entries, each a queue.

    Hardware indexes it with the low bits of the hash (the 82599's 128-entry
    table uses the 7 least significant bits), so ``size`` is a power of two and
    ``queue(h) = table[h & (size - 1)]``. The default fill is round robin,
    entry i -> queue i % n_queues; a driver rebalances load by rewriting
    entries (here: assign to ``table``), never by changing the hash.
    """

    def __init__(self, n_queues, size=128):
        if not _is_int(size) or size < 1 or size & (size - 1):
            raise ValueError(f"size={size!r}: use a power of two, e.g. 128 (hardware indexes with the hash's low bits)")
        if not _is_int(n_queues) or not 1 <= n_queues <= min(size, 0xFFFF):
            raise ValueError(f"n_queues={n_queues!r}: use 1..{min(size, 0xFFFF)} queues "
                             f"(a {size}-entry table cannot spread over more)")
        self.n_queues, self.size, self.mask = int(n_queues), int(size), int(size) - 1
        self.table = (np.arange(size) % n_queues).astype(np.uint16)

    def queue(self, h) -> int:
        if not _is_int(h) or not 0 <= h <= 0xFFFFFFFF:
            raise ValueError(f"hash {h!r}: use a 32-bit unsigned integer")
        return int(self.table[int(h) & self.mask])

    def queues(self, hashes) -> np.ndarray:
        """``queue`` of every hash in an array (uint32 from ``toeplitz_batch``)."""
        h = np.asarray(hashes)
        if h.size and (h.dtype.kind not in "ui" or h.min() < 0 or h.max() > 0xFFFFFFFF):
            raise ValueError("hashes: use an array of 32-bit unsigned integers")
        return self.table[(h.astype(np.uint64) & np.uint64(self.mask)).astype(np.intp)]


# --- 5. the command: labkit rss hash ------------------------------------------------

def _int_arg(text, what, use):
    if text is None:
        return None
    try:
        return int(text, 10)
    except ValueError:
        raise ValueError(f"{what} {text!r} is not an integer; use {use}") from None


def main(args) -> int:
    """``labkit rss hash``: print the hash as 0x%08x, with --queues also ``queue N of M``.
    ``labkit rss bench``: TSC cycles per 4-tuple of each Toeplitz version."""
    key = parse_key(args.key)
    if args.action == "bench":
        costs = measure_hash(key=key)
        ref = costs["reference (Python, bit by bit)"]
        print("Toeplitz hash of an IPv4 4-tuple (12 bytes), TSC cycles per tuple, median of 5")
        for name, c in costs.items():
            print(f"  {name:<32} {c:10.1f}   {ref / c:8.0f}x the reference")
        return 0
    if args.src is None or args.dst is None:
        raise ValueError("rss hash needs --src and --dst (IPv4 addresses)")
    sport = _int_arg(args.sport, "source port", "0..65535")
    dport = _int_arg(args.dport, "destination port", "0..65535")
    h = toeplitz(key, ipv4_tuple(args.src, args.dst, sport, dport))   # the reference: nothing to compile
    n_queues = _int_arg(args.queues, "--queues", "1..128 queues")
    reta = Reta(n_queues) if n_queues is not None else None   # checked before anything is printed
    print(f"0x{h:08x}")
    if reta is not None:
        print(f"queue {reta.queue(h)} of {n_queues}")
    return 0
