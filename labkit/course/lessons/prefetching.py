"""Support code of notebook and exercise 07 (prefetching): a flow table far
larger than the last-level cache, batched lookups into it with and without
software prefetch, and the tools the exercise's checks use.

The table is a hash table of ``n_buckets`` buckets (a power of two), each one
64-byte cache line of 8 uint64 words: 4 slots of (key, value). Key 0 marks an
empty slot. A key lives in bucket ``bucket_of(key, mask)`` (a multiplicative
hash, Knuth's 2**64 / golden ratio) and nowhere else; the table is filled to
half its slots, so a bucket rarely overflows (``make_table`` drops the keys
that find their bucket full, as a flow table that refuses a flow would). A
lookup reads one line at a random place of the table: with a table of
128 MiB (4x this VM's 32 MiB L3) almost every lookup is a cache miss, and with
4 KiB pages a TLB miss as well. This is the access a flow table (VPP's
bihash, DPDK's rte_hash) or an LPM table (DIR-24-8's 32 MiB tbl24) makes per
packet.

- ``lookup_reference``: the plain loop, one lookup after the other.
- ``lookup_prefetch(..., d)``: the same, prefetching the bucket of key
  ``i + d`` while it looks up key ``i`` (d = 0: no prefetch).
- ``lookup_two_pass``: stage-wise, as ``rte_hash_lookup_bulk``: first every
  key's bucket is computed and prefetched, then the lookups run.
- ``time_lookup`` / ``time_distances``: TSC cycles per lookup, in batches of
  256 keys, medians of many short rounds of fresh random keys (interleaved).
- ``trace``: runs a lookup function's Python source on recording arrays and
  says what it read and prefetched, in order (the exercise's checks).

``LABKIT_QUICK=1`` (``labkit.course.exercise.quick()``) makes every measurement short.
"""
import statistics
import types as pytypes
from collections import namedtuple

import numpy as np
from numba import njit

from labkit.course.exercise import quick, tsc_hz
from labkit.memory import intrinsics
from labkit.memory.intrinsics import prefetch, rdtsc
from labkit.memory.layouts import CACHE_LINE, aligned_zeros

__all__ = ["SLOTS", "BUCKET_WORDS", "MISS", "EMPTY", "bucket_of", "buckets_of", "prefetch", "value_of", "Table",
           "make_table", "make_keys", "lookup_reference", "lookup_prefetch", "lookup_two_pass", "reference",
           "time_lookup", "time_distances", "ns", "Trace", "trace", "llvm_has_prefetch", "BIG_MIB",
           "QUICK_BIG_MIB", "ROUND_KEYS"]

SLOTS = 4                        # (key, value) slots per bucket
BUCKET_WORDS = 2 * SLOTS         # 8 uint64 words: one 64-byte cache line
assert BUCKET_WORDS * 8 == CACHE_LINE
BUCKET_SHIFT = 3                 # word index of bucket b: b << 3
EMPTY = 0                        # the key of an empty slot
MISS = np.uint64(0xFFFFFFFFFFFFFFFF)   # what a lookup returns for a key not in the table
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
BIG_MIB = 128                    # the big table: 4x the 32 MiB L3 of the VM this was written on
QUICK_BIG_MIB = 64               # LABKIT_QUICK=1: still 2x that L3, and faster to build


@njit(nogil=True, cache=True, inline="always")
def bucket_of(key, mask):
    """The bucket of ``key`` (a uint64) in a table of ``mask + 1`` buckets:
    the top bits of key x 2**64/phi (Knuth's multiplicative hashing), as an int64."""
    h = (np.uint64(key) * _GOLDEN) >> np.uint64(32)
    return np.int64(h) & mask


def buckets_of(keys, mask):
    """bucket_of for a whole array of keys, in numpy: int64 bucket numbers."""
    k = np.asarray(keys, np.uint64)
    return ((k * _GOLDEN) >> np.uint64(32)).astype(np.int64) & mask


# ---- the table ---------------------------------------------------------------------------

Table = namedtuple("Table", "words mask n_buckets keys")
Table.__doc__ = """A hash table: ``words`` uint64 [8 * n_buckets] (bucket b = words[8b:8b+8],
slot s = (key words[8b+2s], value words[8b+2s+1])), ``mask`` = n_buckets - 1, ``keys``:
every key stored (uint64, none is 0)."""


def value_of(key):
    """The value stored with ``key``: a function of it, so a check can tell a value
    from its neighbour's (keys have bit 63 clear; values have bit 62 set)."""
    return (np.asarray(key, np.uint64) ^ np.uint64(0x5A5A5A5A5A5A5A5A)) | np.uint64(1 << 62)


@njit(nogil=True, cache=True)
def _insert_all(words, mask, keys, values, stored):
    """Put each key in the first empty slot of its bucket; stored[i] = 1 if it fit."""
    for i in range(keys.size):
        b = bucket_of(keys[i], mask) << BUCKET_SHIFT
        for s in range(SLOTS):
            if words[b + 2 * s] == EMPTY:
                words[b + 2 * s] = keys[i]
                words[b + 2 * s + 1] = values[i]
                stored[i] = 1
                break


def make_table(mib=None, seed=7, fill=0.5):
    """A table of ``mib`` MiB (a power of two; default BIG_MIB, QUICK_BIG_MIB when
    quick), its slots ``fill`` full of distinct keys (bit 63 clear, never 0) that
    look random: their buckets are spread over the whole table.
    The array starts on a cache line, so a bucket is exactly one line."""
    mib = mib if mib is not None else (QUICK_BIG_MIB if quick() else BIG_MIB)
    n_bytes = int(mib * (1 << 20))
    if n_bytes < CACHE_LINE or n_bytes & (n_bytes - 1):
        raise ValueError(f"mib={mib}: use a power of two of at least 1/16384 (one 64-byte bucket)")
    n_buckets = n_bytes // CACHE_LINE
    words = aligned_zeros(n_bytes, CACHE_LINE).view(np.uint64)
    rng = np.random.default_rng(seed)
    want = max(1, int(n_buckets * SLOTS * fill))
    # i -> (i * odd + c) mod 2**63 is a bijection: distinct keys without a sort
    odd = np.uint64(int(rng.integers(1 << 40, 1 << 62)) | 1)
    c = np.uint64(int(rng.integers(1, 1 << 62)))
    keys = (np.arange(1, want + 1, dtype=np.uint64) * odd + c) & np.uint64((1 << 63) - 1)
    keys = keys[keys != EMPTY]
    stored = np.zeros(keys.size, np.uint8)
    _insert_all(words, n_buckets - 1, keys, value_of(keys), stored)
    return Table(words, n_buckets - 1, n_buckets, keys[stored == 1])


def make_keys(table, n, hit=0.9, seed=1):
    """``n`` lookup keys (uint64): a share ``hit`` of them stored in the table (drawn at
    random, so their buckets are all over it), the others absent (bit 63 set: no
    stored key has it), in random order."""
    rng = np.random.default_rng(seed)
    n_hit = int(round(n * hit))
    present = table.keys[rng.integers(0, table.keys.size, n_hit)]
    absent = rng.integers(1 << 63, (1 << 64) - 1, n - n_hit, dtype=np.uint64, endpoint=True)
    keys = np.concatenate((present, absent)).astype(np.uint64)
    return keys[rng.permutation(n)]


# ---- lookups -----------------------------------------------------------------------------

@njit(nogil=True, cache=True, inline="always")
def _probe(words, b, key):
    """The value of ``key`` in the bucket starting at word ``b``, or MISS."""
    for s in range(SLOTS):
        if words[b + 2 * s] == key:
            return words[b + 2 * s + 1]
    return MISS


@njit(nogil=True, cache=True)
def lookup_reference(words, keys, out, n):
    """out[i] = the value of keys[i], or MISS, for i < n: one lookup after the
    other, no prefetch. Returns n."""
    mask = (words.size >> BUCKET_SHIFT) - 1
    for i in range(n):
        out[i] = _probe(words, bucket_of(keys[i], mask) << BUCKET_SHIFT, keys[i])
    return n


@njit(nogil=True, cache=True)
def lookup_prefetch(words, keys, out, n, d):
    """As lookup_reference, prefetching the bucket of keys[i + d] while it looks
    up keys[i]; the first d buckets are prefetched before the loop. d = 0: no
    prefetch at all. Never reads keys[n] or beyond."""
    mask = (words.size >> BUCKET_SHIFT) - 1
    if d > 0:
        for i in range(min(d, n)):
            prefetch(words, bucket_of(keys[i], mask) << BUCKET_SHIFT)
    for i in range(n):
        if d > 0 and i + d < n:
            prefetch(words, bucket_of(keys[i + d], mask) << BUCKET_SHIFT)
        out[i] = _probe(words, bucket_of(keys[i], mask) << BUCKET_SHIFT, keys[i])
    return n


@njit(nogil=True, cache=True)
def lookup_two_pass(words, keys, out, n):
    """Stage-wise (DPDK's rte_hash_lookup_bulk): pass 1 computes every key's
    bucket, keeps it in out[i] and prefetches it; pass 2 does the lookups,
    whose lines have been on their way meanwhile. No scratch array: out is it."""
    mask = (words.size >> BUCKET_SHIFT) - 1
    for i in range(n):
        b = bucket_of(keys[i], mask) << BUCKET_SHIFT
        out[i] = b
        prefetch(words, b)
    for i in range(n):
        out[i] = _probe(words, np.int64(out[i]), keys[i])
    return n


def reference(table, keys, n=None):
    """The expected out[:n] for keys[:n], computed in numpy (no loop shared with
    the lookups above): uint64 values, MISS where the key is not stored."""
    n = keys.size if n is None else n
    keys = np.asarray(keys[:n], np.uint64)
    b = buckets_of(keys, table.mask)
    slots = table.words.reshape(-1, BUCKET_WORDS)[b]                  # [n, 8]
    match = slots[:, 0::2] == keys[:, None]
    vals = slots[:, 1::2]
    out = np.full(n, MISS, np.uint64)
    hit = match.any(axis=1)
    out[hit] = vals[hit, match[hit].argmax(axis=1)]
    return out


# ---- timing ------------------------------------------------------------------------------

@njit(nogil=True)
def _drive(fn, words, keys, out, batch):
    """Look up every key, in batches of `batch` (the last one shorter); TSC cycles."""
    t0 = rdtsc()
    i = 0
    while i < keys.size:
        m = min(batch, keys.size - i)
        fn(words, keys[i:i + m], out, m)
        i += m
    return rdtsc() - t0


@njit(nogil=True)
def _drive_d(words, keys, out, batch, d):
    t0 = rdtsc()
    i = 0
    while i < keys.size:
        m = min(batch, keys.size - i)
        lookup_prefetch(words, keys[i:i + m], out, m, d)
        i += m
    return rdtsc() - t0


ROUND_KEYS = 1 << 14             # lookups per timed round: well under a millisecond, shorter than a time slice


def _rounds(table, configs, rounds, batch, seed):
    """{name: median TSC cycles per lookup} of each (name, timer) in configs, where
    timer(keys, out) returns TSC cycles; interleaved round by round (a noisy moment
    hits every configuration alike), fresh random keys for every timing (keys looked
    up in an earlier round would find their lines still in the cache)."""
    rounds = rounds or (9 if quick() else 31)
    out = np.zeros(batch, np.uint64)
    warm = make_keys(table, batch, seed=seed)
    for _, timer in configs:                  # compile (or load the cache) outside the clock
        timer(warm, out)
    runs = {name: [] for name, _ in configs}
    for r in range(rounds):
        for c, (name, timer) in enumerate(configs):
            keys = make_keys(table, ROUND_KEYS, seed=seed + 1000 * r + c + 1)
            runs[name].append(timer(keys, out) / keys.size)
    return {name: statistics.median(v) for name, v in runs.items()}


def time_lookup(fns, table, batch=256, rounds=None, seed=3):
    """{name: median TSC cycles per lookup} of each lookup function ``fn(words, keys,
    out, n)`` in ``fns`` ({name: fn}, or one function) over rounds of 2**14 random
    keys (90% stored), in batches of ``batch``; 31 rounds (9 when quick)."""
    if not isinstance(fns, dict):
        fns = {"lookup": fns}
    configs = [(name, (lambda keys, out, fn=fn: _drive(fn, table.words, keys, out, batch))) for name, fn in fns.items()]
    return _rounds(table, configs, rounds, batch, seed)


def time_distances(table, distances=(0, 1, 2, 4, 8, 16, 32), batch=256, rounds=None, seed=3, two_pass=True):
    """{d: median TSC cycles per lookup} of ``lookup_prefetch`` at each prefetch
    distance d (0: no prefetch), plus {"two-pass": ...} of ``lookup_two_pass``."""
    configs = [(d, (lambda keys, out, d=d: _drive_d(table.words, keys, out, batch, d))) for d in distances]
    if two_pass:
        configs.append(("two-pass", lambda keys, out: _drive(lookup_two_pass, table.words, keys, out, batch)))
    return _rounds(table, configs, rounds, batch, seed)


def ns(cycles):
    """TSC cycles as nanoseconds at this machine's TSC rate."""
    return cycles / tsc_hz() * 1e9


# ---- what a lookup function does, access by access ----------------------------------------

class _Rec(np.ndarray):
    """An array that logs every scalar read: ("load", name, index into the whole array)."""

    def __array_finalize__(self, obj):
        self.name = getattr(obj, "name", "?")
        self.log = getattr(obj, "log", None)
        self.root = getattr(obj, "root", None)

    def _index(self, i):
        i = int(i)
        if i < 0:
            i += self.shape[0]
        return (self.ctypes.data + i * self.strides[0] - self.root[0]) // self.itemsize

    def __getitem__(self, i):
        v = np.ndarray.__getitem__(self, i)
        if self.log is not None and np.ndim(i) == 0 and not isinstance(i, (slice, tuple)) and self.ndim == 1:
            self.log.append(("load", self.name, self._index(i)))
        return v


def _recorded(a, name, log):
    r = np.array(a, copy=True).view(_Rec)
    r.name, r.log, r.root = name, log, (r.ctypes.data, r.size)
    return r


Trace = namedtuple("Trace", "out returned events prefetches out_of_range beyond_batch foreign ahead looked_up "
                            "buckets")
Trace.__doc__ = """What ``trace`` saw. out: out[:n] after the call; returned: its return value;
events: [(kind, array, index)] in order, kind "load" or "prefetch", array "words"/"keys"/"out";
prefetches: how many; out_of_range: prefetches outside their array; beyond_batch: keys read
or prefetched at index >= n; foreign: prefetched buckets that no key of the batch needs;
ahead: lookups whose bucket was prefetched before it was first read, with some other
bucket's access (read or prefetch) in between; looked_up: buckets read; buckets: the
bucket of each key of the batch."""


def _rebind(py, rec_prefetch, memo):
    """``py`` with its globals patched: prefetch (under whatever name it was imported)
    records, and the compiled helpers of its own module run as Python too, so their
    reads are recorded (``bucket_of`` stays compiled: it reads no array)."""
    if py in memo:
        return memo[py]
    glb = dict(py.__globals__)
    f = pytypes.FunctionType(py.__code__, glb, py.__name__, py.__defaults__, py.__closure__)
    memo[py] = f
    for k, v in py.__globals__.items():
        if v is intrinsics.prefetch:
            glb[k] = rec_prefetch
        elif isinstance(v, pytypes.ModuleType) and getattr(v, "prefetch", None) is intrinsics.prefetch:
            glb[k] = pytypes.SimpleNamespace(**{**vars(v), "prefetch": rec_prefetch})
        elif (hasattr(v, "py_func") and v is not bucket_of and getattr(v.py_func, "__module__", None) == py.__module__
              and v.py_func is not py):
            glb[k] = _rebind(v.py_func, rec_prefetch, memo)
    return f


def trace(fn, table, keys, n, keys_size=None):
    """Run ``fn``'s Python source (numba's ``py_func``) on copies of the table and
    keys that record every element read, with ``prefetch`` recording where it
    points, and return a Trace. ``keys_size``: how long the keys array is (at
    least n; longer, the keys past n are there to be ignored)."""
    py = getattr(fn, "py_func", fn)
    keys_size = n if keys_size is None else keys_size
    log = []
    words = _recorded(table.words, "words", log)
    ks = _recorded(keys[:keys_size], "keys", log)
    out = _recorded(np.zeros(max(keys_size, 1), np.uint64), "out", None)

    def rec_prefetch(a, i):
        name = getattr(a, "name", "?")
        idx = int(i)
        size = a.shape[0] if np.ndim(a) == 1 else a.size
        if isinstance(a, _Rec) and a.root is not None and 0 <= idx < size:
            idx = a._index(idx)
        elif isinstance(a, _Rec) and a.root is not None:
            idx = (a.ctypes.data - a.root[0]) // a.itemsize + idx
        log.append(("prefetch", name, idx, 0 <= idx < (a.root[1] if isinstance(a, _Rec) and a.root else size)))

    returned = _rebind(py, rec_prefetch, {})(words, ks, out, n)
    events = [e[:3] for e in log]
    buckets = buckets_of(keys[:n], table.mask).tolist()
    wanted = set(buckets)
    prefetches = [e for e in log if e[0] == "prefetch"]
    out_of_range = [e[1:3] for e in prefetches if not e[3]]
    beyond = sorted({e[2] for e in log if e[1] == "keys" and e[2] >= n})
    foreign = sorted({e[2] >> BUCKET_SHIFT for e in prefetches if e[1] == "words" and e[3]} - wanted)
    # a lookup's bucket counts as prefetched ahead when, between its prefetch and its
    # first read, the code touched (read or prefetched) another bucket
    first_pf, first_read, touched = {}, {}, []
    for t, (kind, name, idx, *_) in enumerate(log):
        if name != "words":
            continue
        b = idx >> BUCKET_SHIFT
        touched.append((t, b))
        if kind == "prefetch":
            first_pf.setdefault(b, t)
        elif b not in first_read:
            first_read[b] = t
    ahead = 0
    for b, tr in first_read.items():
        tp = first_pf.get(b)
        if tp is not None and tp < tr and any(tp < t < tr and o != b for t, o in touched):
            ahead += 1
    return Trace(np.array(out[:n], np.uint64), returned, events, len(prefetches), out_of_range, beyond,
                 foreign, ahead, len(first_read), buckets)


def llvm_has_prefetch(fn, *args):
    """True when numba's LLVM IR of ``fn`` for these arguments calls llvm.prefetch.
    It compiles a fresh, uncached twin of ``fn`` (same options) for them: numba
    cannot show the IR of code it loaded from its cache (it warns and shows
    nothing), which is what a ``cache=True`` kernel compiled once before gives."""
    opts = {k: v for k, v in getattr(fn, "targetoptions", {}).items() if k != "nopython"}
    twin = njit(**opts)(fn.py_func)
    twin(*args)
    return any("llvm.prefetch" in text for text in twin.inspect_llvm().values())
