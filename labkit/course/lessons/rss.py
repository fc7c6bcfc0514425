"""RSS (exercise 13): the Toeplitz hash by tables, and the indirection table.

The student writes what a software RSS needs, the way a driver or a software
dispatcher does it:

    make_tables(key)                  uint32 [len(key) - 4, 256]: tables[p, b] is what byte
                                      value b at input byte p XORs into the hash
    toeplitz(tables, data, length)    @njit: the hash of data[:length], one load per byte
    fill_reta(n_queues, size=128)     the default indirection table: entry i -> queue i % n
    steer(reta, h)                    @njit: the queue of hash h, reta[h & (len(reta) - 1)]

Here is what they are checked and measured with: Microsoft's verification
suite (``VERIFICATION``: the IPv4 table of ``labkit.nic.rss`` and the IPv6
one, each with and without ports), random inputs and flows, one function per
check that says in sentences what is wrong (an empty list: nothing), compiled
loops that call the student's compiled functions, and the timing.

The reference is ``labkit.nic.rss``: ``toeplitz`` (the specification's
algorithm, bit by bit, in Python), ``make_tables`` and ``toeplitz_batch``
(labkit's own table-driven version), ``Reta``.
"""
import ipaddress
import time
from collections import namedtuple

import numpy as np
from numba import njit

from labkit.nic import rss
from labkit.settings import quick

__all__ = ["VERIFICATION_IPV6", "Vector", "VERIFICATION", "ipv6_tuple", "window", "reference_tables",
           "MAX_INPUT", "RETA_SIZE", "suite_rows", "random_rows", "flows", "reversed_flows", "reference_hashes",
           "hash_rows", "steer_hashes", "tables_problems", "toeplitz_problems", "suite_problems",
           "reta_problems", "steer_problems", "spread_problems", "rebalance_problems", "symmetric_problems",
           "time_hash", "what_you_should_see"]

# Microsoft, "Verifying the RSS Hash Calculation": the IPv6 table under the default key,
# each row as printed (destination address and port, source address and port, the hash
# of the addresses, the hash with the ports), like rss.VERIFICATION_IPV4.
VERIFICATION_IPV6 = (
    ("3ffe:2501:200:3::1", 1766, "3ffe:2501:200:1fff::7", 2794, 0x2cc18cd5, 0x40207d3d),
    ("ff02::1", 4739, "3ffe:501:8::260:97ff:fe40:efab", 14230, 0x0f0c461c, 0xdde51bbf),
    ("fe80::200:f8ff:fe21:67cf", 38024, "3ffe:1900:4545:3:200:f8ff:fe21:67cf", 44251, 0x4b61e985, 0x02d1feef),
)

MAX_INPUT = 36                    # bytes: an IPv6 4-tuple (16 + 16 + 2 + 2), the longest RSS input
RETA_SIZE = 128                   # entries: the specification's table (7 bits of the hash)
JUNK = 0xA5                       # what follows an input in its row: a hash that reads it is wrong

Vector = namedtuple("Vector", "name data published")
Vector.__doc__ = """One published test vector: what it is, the RSS input (bytes, source first), its hash."""


def ipv6_tuple(src, dst, sport=None, dport=None) -> bytes:
    """The RSS input of an IPv6 packet: source address, destination address
    (16 bytes each), then for TCP and UDP source port, destination port."""
    t = ipaddress.IPv6Address(src).packed + ipaddress.IPv6Address(dst).packed
    if (sport is None) != (dport is None):
        raise ValueError("ports: give both the source and destination port, or neither")
    if sport is not None:
        t += int(sport).to_bytes(2, "big") + int(dport).to_bytes(2, "big")
    return t


def _verification():
    out = []
    for family, table, tup in (("IPv4", rss.VERIFICATION_IPV4, rss.ipv4_tuple),
                               ("IPv6", VERIFICATION_IPV6, ipv6_tuple)):
        for dst, dport, src, sport, h2, h4 in table:      # printed destination first: the input is source first
            out.append(Vector(f"{family} {src} -> {dst}", tup(src, dst), h2))
            out.append(Vector(f"{family} with TCP {src}:{sport} -> {dst}:{dport}", tup(src, dst, sport, dport), h4))
    return tuple(out)


# The 16 published vectors: IPv4 and IPv6, each addresses only and with the ports.
VERIFICATION = _verification()


def window(key, p) -> int:
    """The key's 32-bit window that starts at bit p (bit 0: the most significant
    bit of key[0]): what input bit p XORs into the hash when it is set."""
    k, top = int.from_bytes(key, "big"), 8 * len(key) - 32
    if not 0 <= p <= top:
        raise ValueError(f"bit {p}: a {len(key)}-byte key has windows at bits 0..{top}")
    return (k >> (top - p)) & 0xFFFFFFFF


def _window_or_none(key, p):
    return window(key, p) if 0 <= p <= 8 * len(key) - 32 else None


def reference_tables(key) -> np.ndarray:
    """labkit's tables for every input byte the key covers: uint32 [len(key) - 4, 256]."""
    return rss.make_tables(bytes(key), len(key) - 4)


# ---- inputs -----------------------------------------------------------------------------

def _rows(inputs, width=MAX_INPUT):
    """uint8 [n, width] rows holding the inputs, JUNK after each; int64 lengths."""
    data = np.full((len(inputs), width), JUNK, np.uint8)
    lengths = np.zeros(len(inputs), np.int64)
    for i, d in enumerate(inputs):
        data[i, :len(d)] = np.frombuffer(d, np.uint8)
        lengths[i] = len(d)
    return data, lengths


def suite_rows():
    """The verification suite as rows for ``hash_rows``: (data, lengths, published)."""
    data, lengths = _rows([v.data for v in VERIFICATION])
    return data, lengths, np.array([v.published for v in VERIFICATION], np.int64)


def random_rows(n, max_len=MAX_INPUT, seed=1):
    """n random inputs, of every length 0..max_len in turn, as rows (JUNK after each)."""
    rng = np.random.default_rng(seed)
    lengths = np.arange(n, dtype=np.int64) % (max_len + 1)
    data = np.full((n, MAX_INPUT), JUNK, np.uint8)
    body = rng.integers(0, 256, (n, MAX_INPUT), dtype=np.uint8)
    keep = np.arange(MAX_INPUT) < lengths[:, None]
    data[keep] = body[keep]
    return data, lengths


def flows(n, seed=1, ipv6=False):
    """n random flows' RSS inputs (4-tuples: 12 bytes, or 36 with ipv6=True) as
    rows for ``hash_rows``: (data, lengths)."""
    rng = np.random.default_rng(seed)
    m = 36 if ipv6 else 12
    data = np.full((n, MAX_INPUT), JUNK, np.uint8)
    data[:, :m] = rng.integers(0, 256, (n, m), dtype=np.uint8)
    return data, np.full(n, m, np.int64)


def reversed_flows(data, lengths):
    """The same flows seen from the other end: source and destination swapped,
    addresses and ports (4-tuples of 12 or 36 bytes)."""
    out = data.copy()
    for i, m in enumerate(lengths):
        a = (int(m) - 4) // 2                        # address length: 4 or 16
        s, d = data[i, :a].copy(), data[i, a:2 * a].copy()
        out[i, :a], out[i, a:2 * a] = d, s
        out[i, 2 * a:2 * a + 2], out[i, 2 * a + 2:2 * a + 4] = data[i, 2 * a + 2:2 * a + 4], data[i, 2 * a:2 * a + 2]
    return out


def reference_hashes(key, data, lengths) -> np.ndarray:
    """labkit's hashes (table-driven, checked against the specification's
    algorithm in tests/test_rss.py) of every row: int64."""
    out = np.zeros(len(lengths), np.uint32)
    rss.toeplitz_batch(reference_tables(key), data, lengths, out)
    return out.astype(np.int64)


# ---- calling the student's compiled functions ----------------------------------------------

@njit(nogil=True)
def _hash_loop(fn, state, data, lengths, out, rounds):
    for _ in range(rounds):
        for i in range(data.shape[0]):
            out[i] = fn(state, data[i], lengths[i])


@njit(nogil=True)
def _steer_loop(fn, reta, hashes, out):
    for i in range(hashes.shape[0]):
        out[i] = fn(reta, hashes[i])


def _first_line(e):
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith("Failed in nopython mode")] or [""]
    return f"{type(e).__name__}: {lines[0][:240]}"


class Refused(Exception):
    """A student's function could not be called as the exercise calls it (the
    message says why, in a sentence)."""


def _compiled(fn, name, signature):
    if not hasattr(fn, "py_func"):
        raise Refused(f"{name} is not compiled: put @njit(nogil=True) above `def {signature}` "
                      "(the receive loop that calls it is compiled)")


def hash_rows(toeplitz, tables, data, lengths, rounds=1) -> np.ndarray:
    """``toeplitz(tables, data[i], lengths[i])`` for every row i, from a compiled
    loop: int64 hashes. Raises ``Refused`` (with the reason) when it cannot run."""
    _compiled(toeplitz, "toeplitz", "toeplitz(tables, data, length)")
    out = np.zeros(len(lengths), np.int64)
    try:
        _hash_loop(toeplitz, tables, data, lengths, out, rounds)
    except Exception as e:                       # the student's code: say what it raised
        what = (f"uint32 [{tables.shape[0]}, 256] tables" if isinstance(tables, np.ndarray) and tables.ndim == 2
                else "these tables")
        raise Refused(f"toeplitz(tables, data, length) failed with {what}, a uint8 row and its length "
                      f"(it gets what make_tables returns: index it tables[p, data[p]]): {_first_line(e)}") from None
    return out


def steer_hashes(steer, reta, hashes) -> np.ndarray:
    """``steer(reta, h)`` for every hash, from a compiled loop: int64 queues."""
    _compiled(steer, "steer", "steer(reta, h)")
    out = np.zeros(len(hashes), np.int64)
    try:
        _steer_loop(steer, reta, np.asarray(hashes, np.uint32), out)
    except Exception as e:
        hint = " (an index must stay below len(reta): mask the hash with len(reta) - 1)" \
            if isinstance(e, IndexError) else ""
        raise Refused(f"steer(reta, h) failed with a {len(reta)}-entry RETA and a uint32 hash: "
                      f"{_first_line(e)}{hint}") from None
    return out


def _tables_of(make_tables, key, own=False):
    """The student's tables for key, or Refused saying what is wrong with their form
    (``own``: for check-tables itself, which must not send the student to itself)."""
    try:
        t = make_tables(bytes(key))
    except Exception as e:
        raise Refused(f"make_tables({len(key)}-byte key) raised {_first_line(e)}") from None
    rows = len(key) - 4
    if not isinstance(t, np.ndarray) or t.shape != (rows, 256) or t.dtype != np.uint32:
        got = (f"{t.dtype} {t.shape}" if isinstance(t, np.ndarray) else type(t).__name__)
        why = ("one row per input byte the key covers (len(key) - 4), one column per byte value, 4 bytes an entry"
               if own else "check-tables says what is wrong")
        raise Refused(f"make_tables({len(key)}-byte key) returned {got}: the hash needs the tables, "
                      f"uint32 [{rows}, 256] ({why})")
    return t


def _reta_of(fill_reta, n_queues, size=RETA_SIZE, own=False):
    try:
        r = fill_reta(n_queues, size) if size != RETA_SIZE else fill_reta(n_queues)
    except Exception as e:
        raise Refused(f"fill_reta({n_queues}{'' if size == RETA_SIZE else f', {size}'}) raised {_first_line(e)}") \
            from None
    if not isinstance(r, np.ndarray) or r.ndim != 1 or r.size != size or r.dtype.kind not in "ui":
        got = f"{r.dtype} {r.shape}" if isinstance(r, np.ndarray) else type(r).__name__
        why = "each a queue number" if own else "check-reta says what is wrong"
        raise Refused(f"fill_reta({n_queues}{'' if size == RETA_SIZE else f', {size}'}) returned {got}: the RETA "
                      f"is a numpy array of {size} integer entries ({why})")
    return r


def _problems(fn):
    """Run a check body; a Refused becomes its one problem."""
    def run(*args, **kw):
        try:
            return fn(*args, **kw)
        except Refused as e:
            return [str(e)]
    run.__name__, run.__doc__ = fn.__name__, fn.__doc__
    return run


# ---- the checks: each returns what is wrong, in sentences ------------------------------------

def _keys(seed=13):
    """The default key, the symmetric one, and random keys of 16 to 52 bytes (52: Linux's
    NETDEV_RSS_KEY_LEN; 16: the shortest that hashes an IPv4 4-tuple)."""
    rng = np.random.default_rng(seed)
    keys = [rss.DEFAULT_KEY, rss.SYMMETRIC_KEY]
    keys += [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in (16, 17, 40, 52)]
    return keys


@_problems
def tables_problems(make_tables):
    """make_tables(key) for the default key and five others: the shape and type,
    then the entries, the first wrong one explained."""
    for key in _keys():
        t = _tables_of(make_tables, key, own=True)
        ref = reference_tables(key)
        if np.array_equal(t, ref):
            continue
        p, b = [int(x) for x in np.argwhere(t != ref)[0]]
        got, want = int(t[p, b]), int(ref[p, b])
        head = f"{len(key)}-byte key {key[:4].hex()}..: tables[{p}, {b:#04x}] is {got:#010x}, expected {want:#010x}"
        if b == 0:
            return [f"{head}: byte value 0 has no bit set, it adds nothing to the hash"]
        bits = [j for j in range(8) if b & (0x80 >> j)]
        if len(bits) == 1:
            j = bits[0]
            why = (f"the key's window at input bit 8*{p}+{j} = {8 * p + j} (bit {j} of byte {p}, "
                   f"counting from its most significant bit)")
            if got == window(key, 8 * p + 7 - j):
                why += f"; you gave the window of bit {8 * p + 7 - j}: the bits of a byte go most significant first"
            elif got in [_window_or_none(key, 8 * q + j) for q in (p - 1, p + 1)]:
                why += "; you gave the window of the same bit one byte before or after"
            return [f"{head}: only one bit is set, so the entry is {why}"]
        single = [int(ref[p, 0x80 >> j]) for j in bits]
        if all(int(t[p, 0x80 >> j]) == s for j, s in zip(bits, single)):
            return [f"{head}: the entries of the single bits are right; an entry with several bits set is "
                    f"the XOR (^) of theirs (the hash is linear over GF(2)), here "
                    + " ^ ".join(f"{s:#010x}" for s in single)]
        return [head]
    return []


@_problems
def toeplitz_problems(toeplitz, n=4000):
    """toeplitz with labkit's tables: random inputs of every length 0..36 under
    three keys, against labkit's reference."""
    for seed, key in enumerate((rss.DEFAULT_KEY, _keys()[4], _keys()[5])):
        data, lengths = random_rows(n, seed=100 + seed)
        got = hash_rows(toeplitz, reference_tables(key), data, lengths)
        want = reference_hashes(key, data, lengths)
        bad = np.flatnonzero(got != want)
        if bad.size == 0:
            continue
        i = int(bad[0])
        m = int(lengths[i])
        head = (f"{len(key)}-byte key, input of {m} bytes {data[i, :m].tobytes().hex()}: got {got[i]:#x}, "
                f"expected {want[i]:#010x} ({bad.size} of {n} inputs wrong)")
        full = reference_hashes(key, data[i:i + 1], np.array([MAX_INPUT]))[0]
        if got[i] == full:
            return [f"{head}: that is the hash of the whole row; only data[:length] is the input"]
        if m and got[i] == reference_hashes(key, data[i:i + 1], np.array([m - 1]))[0]:
            return [f"{head}: that is the hash of its first {m - 1} bytes; every byte p < length counts"]
        if got[i] < 0 or got[i] > 0xFFFFFFFF:
            return [f"{head}: the hash is a 32-bit value (XOR of uint32 entries)"]
        return [head]
    return []


@_problems
def suite_problems(make_tables, toeplitz):
    """Your make_tables(KEY) and toeplitz on Microsoft's 16 published vectors."""
    tables = _tables_of(make_tables, rss.DEFAULT_KEY)
    data, lengths, published = suite_rows()
    got = hash_rows(toeplitz, tables, data, lengths)
    wrong = [f"{v.name} ({len(v.data)} bytes): got {g:#x}, published {p:#010x}"
             for v, g, p in zip(VERIFICATION, got.tolist(), published.tolist()) if g != p]
    return [f"{len(wrong)} of {len(VERIFICATION)} published vectors wrong; the first, {w}" for w in wrong[:1]]


def _round_robin_problem(r, n, size):
    want = np.arange(size) % n
    bad = np.flatnonzero(r.astype(np.int64) != want)
    if bad.size == 0:
        return None
    i = int(bad[0])
    return (f"fill_reta({n}{'' if size == RETA_SIZE else f', {size}'}): entry {i} is {int(r[i])}, round robin "
            f"gives {i} % {n} = {i % n} (Linux's ethtool_rxfh_indir_default: entry i -> queue i % n)")


@_problems
def reta_problems(fill_reta):
    """fill_reta(n) for 1 to 16 queues and fill_reta(n, size) for other sizes:
    size entries, round robin."""
    for n, size in [(n, RETA_SIZE) for n in range(1, 17)] + [(6, 512), (3, 64), (128, 128)]:
        p = _round_robin_problem(_reta_of(fill_reta, n, size, own=True), n, size)
        if p:
            return [p]
    return []


@_problems
def steer_problems(steer):
    """steer(reta, h) on random tables of 128, 512 and 64 entries, for hashes
    with every bit pattern: the queue is reta[h & (len(reta) - 1)]."""
    rng = np.random.default_rng(7)
    hashes = np.concatenate([rng.integers(0, 2 ** 32, 4000, dtype=np.uint64),
                             [0, 1, 127, 128, 255, 511, 512, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]]).astype(np.uint32)
    for size in (RETA_SIZE, 512, 64):
        reta = rng.integers(0, 16, size).astype(np.uint16)
        got = steer_hashes(steer, reta, hashes)
        want = reta[hashes & np.uint32(size - 1)].astype(np.int64)
        bad = np.flatnonzero(got != want)
        if bad.size == 0:
            continue
        i = int(bad[0])
        h = int(hashes[i])
        head = (f"{size}-entry RETA, hash {h:#010x}: queue {got[i]}, expected reta[h & {size - 1}] = "
                f"reta[{h & (size - 1)}] = {want[i]}")
        modulo = [k for k in range(1, 129) if np.array_equal(got, hashes.astype(np.int64) % k)]
        if modulo:
            return [f"{head}: steer returned the hash modulo {modulo[0]}; the queue is the RETA entry that "
                    "the hash's low bits index"]
        if size != RETA_SIZE and got[i] == reta[h & (RETA_SIZE - 1)]:
            return [f"{head}: the mask is len(reta) - 1, not 127 (an i40e's RETA has 512 entries)"]
        if got[i] == reta[h >> (32 - int(np.log2(size)))]:
            return [f"{head}: you used the hash's high bits; the RETA is indexed by its low bits"]
        return [head]
    return []


@_problems
def spread_problems(fill_reta, steer, n_flows=1024, per_flow=8):
    """Packets of 1024 flows (8 each, interleaved) through fill_reta(n) and
    steer, for 2 to 8 queues: each flow on one queue, and each queue's share
    of the flows within 4 points of its share of the RETA."""
    data, lengths = flows(n_flows, seed=21)
    h = reference_hashes(rss.DEFAULT_KEY, data, lengths)
    order = np.random.default_rng(22).permutation(np.repeat(np.arange(n_flows), per_flow))
    for n in (2, 3, 4, 6, 8):
        reta = _reta_of(fill_reta, n)
        q = steer_hashes(steer, reta, h[order])
        first = q[np.unique(order, return_index=True)[1]]   # the queue of each flow's first packet
        split = np.flatnonzero(q != first[order])
        if split.size:
            f = int(order[split[0]])
            return [f"{n} queues: the packets of flow {f} (hash {h[f]:#010x}) went to queues "
                    f"{sorted(set(q[order == f].tolist()))}: a flow must stay on one queue, or it is reordered"]
        if q.min() < 0 or q.max() >= n:
            return [f"{n} queues: a flow was steered to queue {int(q.max() if q.max() >= n else q.min())}; "
                    f"the queues are 0..{n - 1}"]
        share = np.bincount(first, minlength=n) / n_flows
        entries = np.bincount(reta.astype(np.int64), minlength=n)[:n] / reta.size
        worst = int(np.argmax(np.abs(share - entries)))
        if abs(share[worst] - entries[worst]) > 0.04:
            return [f"{n} queues: queue {worst} got {share[worst]:.0%} of the {n_flows} flows but holds "
                    f"{entries[worst]:.0%} of the RETA's entries; the hash's low bits should spread the flows "
                    f"over the entries evenly"]
    return []


@_problems
def rebalance_problems(fill_reta, steer, n_flows=2048):
    """Rewrite the RETA as a driver does (``ethtool -X``) and watch 2048 flows:
    queue 3 drained into queue 0, then queue 0 weighted to half the entries."""
    data, lengths = flows(n_flows, seed=31)
    h = reference_hashes(rss.DEFAULT_KEY, data, lengths)
    reta = _reta_of(fill_reta, 4)
    q0 = steer_hashes(steer, reta, h)
    drained = reta.copy()
    drained[drained == 3] = 0                            # queue 3's entries now name queue 0
    q1 = steer_hashes(steer, drained, h)
    stay = q0 != 3
    if (q1[stay] != q0[stay]).any():
        i = int(np.flatnonzero(stay & (q1 != q0))[0])
        return [f"queue 3's entries rewritten to 0: flow {i} (hash {h[i]:#010x}) moved from queue {q0[i]} to "
                f"{q1[i]}, but its entry did not change: only the flows of the rewritten entries may move"]
    if (q1[~stay] != 0).any():
        i = int(np.flatnonzero(~stay & (q1 != 0))[0])
        return [f"queue 3's entries rewritten to 0: flow {i} (hash {h[i]:#010x}) is on queue {q1[i]}; its entry "
                f"now says 0"]
    weighted = np.where(np.arange(reta.size) % 2 == 0, 0, 1 + (np.arange(reta.size) // 2) % 3).astype(reta.dtype)
    q2 = steer_hashes(steer, weighted, h)
    share = float(np.mean(q2 == 0))
    if abs(share - 0.5) > 0.04:
        return [f"queue 0 given half of the RETA's entries: it got {share:.0%} of the flows, expected about 50%"]
    return []


@_problems
def symmetric_problems(make_tables, toeplitz, fill_reta, steer):
    """With rss.SYMMETRIC_KEY, your hash and queue of 500 IPv4 and 100 IPv6
    flows and of the same flows reversed; with the default key, the reverse
    hashes apart."""
    reta = _reta_of(fill_reta, 4)
    sym, default = _tables_of(make_tables, rss.SYMMETRIC_KEY), _tables_of(make_tables, rss.DEFAULT_KEY)
    for ipv6, n in ((False, 500), (True, 100)):
        data, lengths = flows(n, seed=41 + ipv6, ipv6=ipv6)
        back = reversed_flows(data, lengths)
        fam = "IPv6" if ipv6 else "IPv4"
        there, rev = hash_rows(toeplitz, sym, data, lengths), hash_rows(toeplitz, sym, back, lengths)
        want = reference_hashes(rss.SYMMETRIC_KEY, data, lengths)
        if (there != want).any():
            i = int(np.flatnonzero(there != want)[0])
            return [f"{fam} flow {i}, symmetric key: your hash {there[i]:#x}, labkit's {want[i]:#010x}"]
        if (there != rev).any():
            i = int(np.flatnonzero(there != rev)[0])
            return [f"{fam} flow {i}: {there[i]:#010x} one way, {rev[i]:#010x} back: the symmetric key should "
                    "hash both directions alike"]
        qa, qb = steer_hashes(steer, reta, there), steer_hashes(steer, reta, rev)
        if (qa != qb).any():
            i = int(np.flatnonzero(qa != qb)[0])
            return [f"{fam} flow {i}: the same hash both ways, but queues {qa[i]} and {qb[i]}"]
        apart = np.mean(hash_rows(toeplitz, default, data, lengths) != hash_rows(toeplitz, default, back, lengths))
        if apart < 0.99:
            return [f"{fam}: with the default key only {apart:.0%} of the flows hash differently reversed; "
                    "nearly all should"]
    return []


# ---- the measurement ------------------------------------------------------------------------

def time_hash(fn, state, length, n=1024, rounds=None, repeat=5, seed=3):
    """ns per hash of ``fn(state, data, length)`` over n random inputs of
    ``length`` bytes (inputs and tables stay in cache), called from a compiled
    loop: the fastest of ``repeat`` calls of ``rounds`` passes (a call that
    another program interrupted only spoils itself)."""
    rounds = rounds or (20 if quick() else 200)
    data = np.random.default_rng(seed).integers(0, 256, (n, MAX_INPUT), dtype=np.uint8)
    lengths = np.full(n, length, np.int64)
    out = np.zeros(n, np.int64)
    _compiled(fn, getattr(fn, "__name__", "the hash"), "hash(state, data, length)")
    _hash_loop(fn, state, data, lengths, out, 1)             # compile, warm the caches
    best = None
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        _hash_loop(fn, state, data, lengths, out, rounds)
        dt = time.perf_counter_ns() - t0
        best = dt if best is None else min(best, dt)
    return best / (rounds * n)


def what_you_should_see(ns):
    """The measurement's conclusion, computed from its medians (a findings function:
    ``labkit.course.findings``): ``ns`` is [[kind, input length, ns per hash]...], kind
    "bits" or "tables", length 12 or 36. The direction a sentence states follows the
    numbers; the claims the exercise teaches are stated with expect()."""
    from labkit.course.findings import expect
    by = {(kind, length): v for kind, length, v in ns}
    b4, b6, t4, t6 = by["bits", 12], by["bits", 36], by["tables", 12], by["tables", 36]
    expect(b4 > 3 * t4, "the tables hash an IPv4 4-tuple at least 3x faster than bit by bit")
    expect(b6 > 3 * t6, "the tables hash an IPv6 4-tuple at least 3x faster than bit by bit")

    def faster(slow, fast):
        return f"{slow / fast:.1f}x faster" if slow > fast else f"not faster ({fast / slow:.1f}x slower)"
    text = (f"**What you should see.** On this machine your tables hash an IPv4 4-tuple in {t4:.1f} ns, {faster(b4, t4)} than the starter's "
            f"{b4:.1f} ns bit by bit, and an IPv6 4-tuple in {t6:.1f} ns against {b6:.1f} ns "
            f"({faster(b6, t6)}). Per input byte: {t4 / 12:.2f} ns (IPv4) and {t6 / 36:.2f} ns (IPv6) with the "
            f"tables, one load and one XOR; {b4 / 12:.2f} and {b6 / 36:.2f} ns bit by bit, eight steps.")
    if t6 / 36 > 1.5 * t4 / 12:
        text += (f" The IPv6 hash costs {(t6 / 36) / (t4 / 12):.1f}x more per byte: its 36 rows (36 KiB) fill "
                 "an L1 data cache (32 to 48 KiB), the 12 rows of an IPv4 4-tuple (12 KiB) leave room; "
                 "that is the first suspect.")
    else:
        text += (" Per byte, the IPv6 hash costs less than 1.5 times what the IPv4 one does: its 36 KiB of "
                 "tables do not slow it much here.")
    text += (f" A core doing nothing else would hash {1e3 / t4:.0f} million IPv4 packets per second with the "
             f"tables, {1e3 / b4:.0f} million bit by bit.")
    return text
