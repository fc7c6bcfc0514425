"""Branch prediction (notebook and exercise 10): what a guess costs, and code that needs none.

Three things live here.

**The classic, in isolation.** ``walk_branchy`` goes over values and, for
each, takes one of two paths: a value of 128 or more XORs in a table entry
(a load only that path makes, so LLVM must keep the branch: it may not load
what the program might not read), a smaller one is added. ``walk_branchless``
computes both paths and picks one by arithmetic (LLVM makes selects and
conditional moves of it, no jump on the data). ``count_compiler`` is the
textbook loop (``if v >= 128: c += tbl[v]``) that LLVM turns into branch-free
vector code by itself on a core with masked loads: the branch in the source
is gone from the machine code. ``measure_classic`` runs them over the same
values sorted and shuffled; ``conditional_branches`` counts the jumps on data
left in a function's optimized LLVM IR.

**The predictor learns.** ``measure_learning``: the branchy walk over a random
pattern of L values repeated until 2**21 values have gone by. A modern
predictor keeps long histories of each branch's outcomes; when the same
pattern comes round again it guesses it. Short patterns cost what sorted data
costs; only patterns longer than what the predictor can hold cost the full
price (why labkit's shuffled traffic is at least 2**20 packets long,
``labkit.nic.traffic.SHUFFLED_MIN``).

**The exercise: a branchless classifier.** ``reference_class(arena, base,
length)`` decides, with early exits, what eth-input and ip4-input together
decide for a frame, as one of ``CLASSES`` (options go to a slow path, as in
VPP). The student writes the same verdict without a branch on the data;
``classify_problems`` compares every verdict on crafted, random and mutated
frames (and reads the frames from arrays that end where the frame does, so
a read past its end raises), ``conditional_branches`` counts what is left,
``time_classify`` measures TSC cycles per frame on a vector of frames in
sorted or shuffled order (2**21 frames: longer than the predictor learns).

Branch misses themselves are counted by the CPU's performance counters;
``branch_counter`` says whether this machine lets a program read them
(``perf_event_open``; most virtual machines do not).
"""
import ctypes
import os
import re
import statistics

import numpy as np
from numba import njit

from labkit.graph import kernels as k
from labkit.memory.bytes import rd16
from labkit.memory.intrinsics import rdtsc
from labkit.memory.layouts import DATA_OFF, ETH_TYPE_OFF, ETHERTYPE_IPV4, IP4_LEN_OFF, IP4_OFF, IP4_TTL_OFF
from labkit.settings import quick

__all__ = ["walk_branchy", "walk_branchless", "count_compiler", "measure_classic", "classic_table",
           "measure_learning", "learning_table", "conditional_branches", "compiled_fresh", "function_ir",
           "branch_counter",
           "CLASSES", "FORWARD", "RUNT", "NOT_IP4", "TRUNCATED", "BAD_VERSION", "BAD_IHL", "OPTIONS", "BAD_LENGTH",
           "BAD_CHECKSUM", "TTL_EXPIRED", "reference_class", "starter_class", "make_frames", "classify_problems",
           "order_of", "time_classify", "kernel_branches", "ORDER_N"]

ORDER_N = 1 << 21          # values (or frames) per measurement: more than a predictor learns


def _runs():
    return 3 if quick() else 7


# ---- the classic ---------------------------------------------------------------------------

@njit(nogil=True, cache=True)
def walk_branchy(v, tbl, n):
    """A state through n values: v >= 128 XORs in tbl[v] (a load only that path makes), else adds v."""
    s = 1
    for i in range(n):
        x = v[i]
        if x >= 128:
            s = ((s ^ tbl[x]) * 3) & 0xFFFF
        else:
            s = (s + x) & 0xFFFF
    return s


@njit(nogil=True, cache=True)
def walk_branchless(v, tbl, n):
    """walk_branchy's result with no jump on the data: both paths computed, one kept by arithmetic."""
    s = 1
    for i in range(n):
        x = v[i]
        big = np.int64(x >= 128)
        t = tbl[x & 0xFF]                     # always loaded: inside the table whatever x is
        s = (big * ((s ^ t) * 3) + (1 - big) * (s + x)) & 0xFFFF
    return s


@njit(nogil=True, cache=True)
def count_compiler(v, tbl, n):
    """The textbook loop; LLVM may compile it without a branch on the data (masked vector loads)."""
    c = 0
    for i in range(n):
        x = v[i]
        if x >= 128:
            c += tbl[x]
    return c


CLASSIC = {"branchy walk": walk_branchy, "branchless walk": walk_branchless, "compiler's count": count_compiler}


def _values(n, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, n).astype(np.int64), rng.integers(0, 1 << 16, 256).astype(np.int64)


def _cycles(fn, *args):
    t = rdtsc()
    fn(*args)
    return rdtsc() - t


def measure_classic(n=None, runs=None, seed=7):
    """{"sorted": {name: cycles per value}, "shuffled": {...}}: medians of `runs` passes over the
    same n values, sorted and shuffled, every function in every pass (a noisy moment hits all)."""
    n = n or (ORDER_N >> 3 if quick() else ORDER_N)
    runs = runs or _runs()
    shuffled, tbl = _values(n, seed)
    data = {"sorted": np.sort(shuffled), "shuffled": shuffled}
    for fn in CLASSIC.values():
        fn(shuffled[:16], tbl, 16)                          # compile first
    want = {name: fn(shuffled, tbl, n) for name, fn in CLASSIC.items()}
    got = {o: {name: [] for name in CLASSIC} for o in data}
    for _ in range(runs):
        for o, v in data.items():
            for name, fn in CLASSIC.items():
                got[o][name].append(_cycles(fn, v, tbl, n) / n)
    assert want["branchy walk"] == want["branchless walk"], "the two walks must compute the same state"
    return {o: {name: statistics.median(xs) for name, xs in d.items()} for o, d in got.items()}


def classic_table(res):
    names = list(CLASSIC)
    lines = [f"{'order':>10}" + "".join(f"{m:>18}" for m in names)]
    for o, d in res.items():
        lines.append(f"{o:>10}" + "".join(f"{d[m]:>18.2f}" for m in names))
    lines.append("(TSC cycles per value, median of the passes; conditional branches on the data in each "
                 "function's LLVM IR: " + ", ".join(f"{m} {conditional_branches(CLASSIC[m])}" for m in names) + ")")
    return "\n".join(lines)


# ---- the predictor learns -------------------------------------------------------------------

def measure_learning(lengths=(1 << 8, 1 << 10, 1 << 12, 1 << 14, 1 << 16, 1 << 18, 1 << 21), total=None,
                     runs=None, seed=11):
    """{L: cycles per value of walk_branchy over a random pattern of L values repeated to `total`},
    plus "sorted" and "branchless" over the longest pattern, for scale (medians of `runs`)."""
    total = total or (ORDER_N >> 3 if quick() else ORDER_N)
    runs = runs or _runs()
    _, tbl = _values(16, seed)
    rng = np.random.default_rng(seed)
    data = {}
    for L in lengths:
        L = min(L, total)
        data[L] = np.tile(rng.integers(0, 256, L).astype(np.int64), -(-total // L))[:total]
    longest = data[max(data)]
    walk_branchy(longest[:16], tbl, 16)
    walk_branchless(longest[:16], tbl, 16)
    got = {key: [] for key in list(data) + ["sorted", "branchless"]}
    srt = np.sort(longest)
    for _ in range(runs):
        for L, v in data.items():
            got[L].append(_cycles(walk_branchy, v, tbl, total) / total)
        got["sorted"].append(_cycles(walk_branchy, srt, tbl, total) / total)
        got["branchless"].append(_cycles(walk_branchless, longest, tbl, total) / total)
    return {key: statistics.median(xs) for key, xs in got.items()}


def learning_table(res):
    lines = [f"{'pattern length':>15}  branchy walk"]
    for key, c in res.items():
        name = {"sorted": "sorted", "branchless": "(branchless)"}[key] if isinstance(key, str) else f"{key:,}"
        lines.append(f"{name:>15}  {c:12.2f}")
    lines.append("(TSC cycles per value: a random pattern of this many values, repeated; median of the passes)")
    return "\n".join(lines)


# ---- reading the compiled code -------------------------------------------------------------

def _bodies(fn, sig):
    """The optimized LLVM IR of `fn`'s own function (not numba's wrappers) for `sig`."""
    ir = fn.inspect_llvm(sig)
    name = fn.py_func.__qualname__.split(".")[-1]
    out = []
    for m in re.finditer(r'^define [^\n]*@"?(_ZN[^"(]*)"?\(.*?^}', ir, re.M | re.S):
        if name in m.group(1) and "cpython" not in m.group(1) and "cfunc" not in m.group(1):
            out.append(m.group(0))
    return out


def compiled_fresh(fn, sig=None):
    """(a fresh dispatcher of fn's Python code compiled for `sig`, sig), `sig` defaulting to the
    first signature fn was compiled for. Fresh: a function loaded from numba's cache has machine
    code, not IR, to show; and without bounds checks whatever NUMBA_BOUNDSCHECK says (labkit's
    tests turn them on), as the data plane runs: a bounds check is a branch, and it keeps LLVM
    from vectorizing."""
    if not fn.signatures and sig is None:
        raise ValueError(f"{fn.__name__} has not been compiled yet: call it once, or give sig")
    sig = sig or fn.signatures[0]
    from numba.core import config
    fresh = njit(nogil=True, boundscheck=False)(fn.py_func)
    saved, config.BOUNDSCHECK = config.BOUNDSCHECK, None
    try:
        fresh.compile(sig)
    finally:
        config.BOUNDSCHECK = saved
    return fresh, sig


def function_ir(fn, sig=None):
    """The optimized LLVM IR of fn's own code for `sig` (compiled_fresh), numba's wrappers left out."""
    fresh, sig = compiled_fresh(fn, sig)
    bodies = _bodies(fresh, sig)
    if not bodies:
        raise ValueError(f"no LLVM function for {fn.__name__} found in its IR")
    return "\n".join(bodies)


def conditional_branches(fn, sig=None):
    """How many conditional branches (``br i1``, ``switch``) LLVM left in `fn`'s code for `sig`
    (default: the first signature it was compiled for), loops' own tests included."""
    ir = function_ir(fn, sig)
    return len(re.findall(r"\bbr i1 ", ir)) + len(re.findall(r"\bswitch ", ir))


PERF_TYPE_HARDWARE, PERF_COUNT_HW_BRANCH_MISSES = 0, 5
_NR_PERF_EVENT_OPEN = {"x86_64": 298, "aarch64": 241}


def branch_counter():
    """(True, "") when this process may count its branch misses with perf_event_open, else
    (False, why). Counting is not needed for the lesson: cycles tell the same story."""
    nr = _NR_PERF_EVENT_OPEN.get(os.uname().machine)
    if nr is None:
        return False, f"perf_event_open is not wired up here for {os.uname().machine}"
    attr = (ctypes.c_uint8 * 128)()
    ctypes.memmove(attr, np.array([PERF_TYPE_HARDWARE, 128], np.uint32).tobytes(), 8)       # type, size
    ctypes.memmove(ctypes.addressof(attr) + 8, np.array([PERF_COUNT_HW_BRANCH_MISSES], np.uint64).tobytes(), 8)
    flags = (1 << 0) | (1 << 5) | (1 << 6)             # disabled, exclude_kernel, exclude_hv
    ctypes.memmove(ctypes.addressof(attr) + 40, np.array([flags], np.uint64).tobytes(), 8)
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.syscall(nr, attr, 0, -1, -1, 0)
    if fd < 0:
        err = ctypes.get_errno()
        return False, (f"perf_event_open(branch-misses) failed: {os.strerror(err)} (errno {err}): "
                       "this machine does not give programs the CPU's branch-miss counter "
                       "(virtual machines often do not)")
    os.close(fd)
    return True, ""


# ---- the exercise: a frame's class -----------------------------------------------------------

CLASSES = ("forward", "runt", "not_ip4", "truncated", "bad_version", "bad_ihl", "options", "bad_length",
           "bad_checksum", "ttl_expired")
FORWARD, RUNT, NOT_IP4, TRUNCATED, BAD_VERSION, BAD_IHL, OPTIONS, BAD_LENGTH, BAD_CHECKSUM, TTL_EXPIRED = \
    range(len(CLASSES))


@njit(nogil=True, cache=True)
def reference_class(arena, base, length):
    """What eth-input and ip4-input decide, as a class of CLASSES, with early exits (the reference).
    A header with options (IHL > 5) goes to a slow path; its checksum is checked there."""
    f = np.int64(base) + DATA_OFF
    n = np.int64(length)
    if n < 14:
        return RUNT
    if rd16(arena, f + ETH_TYPE_OFF) != ETHERTYPE_IPV4:
        return NOT_IP4
    if n < 34:
        return TRUNCATED
    ip = f + IP4_OFF
    vi = int(arena[ip])
    if vi >> 4 != 4:
        return BAD_VERSION
    hlen = (vi & 0xF) * 4
    if hlen < 20:
        return BAD_IHL
    if hlen > 20:
        return OPTIONS
    total = rd16(arena, ip + IP4_LEN_OFF)
    if total < 20 or total > n - IP4_OFF:
        return BAD_LENGTH
    s = 0
    for o in range(0, 20, 2):
        s += rd16(arena, ip + o)
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    if s != 0xFFFF:
        return BAD_CHECKSUM
    if int(arena[ip + IP4_TTL_OFF]) <= 1:
        return TTL_EXPIRED
    return FORWARD


starter_class = reference_class          # the exercise's starter is the reference, branches and all

SLOT = 2048


def make_frames(seed=3):
    """(arena, bases, lengths, classes) of frame templates, one per mempool-like slot of SLOT bytes:
    valid UDP and TCP frames, every defect labkit's traffic generator makes, and random and
    mutated frames; `classes` by reference_class."""
    from labkit.nic.traffic import make_traffic
    t = make_traffic(flows=32, mix="mixed", malformed=0.5, seed=seed, size=60)
    frames = [bytes(t.frames[i, :t.lengths[i]]) for i in range(len(t.lengths))]
    rng = np.random.default_rng(seed)
    for _ in range(64):                                    # random bytes, some lengths around the checks
        frames.append(rng.integers(0, 256, int(rng.choice([0, 1, 13, 14, 20, 33, 34, 40, 60]))).astype(
            np.uint8).tobytes())
    for i in range(192):                                   # valid frames with a byte or two changed
        b = bytearray(frames[i % 32])
        for _ in range(1 + i % 2):
            b[int(rng.integers(12, 34))] = int(rng.integers(0, 256))
        frames.append(bytes(b[:len(b) - int(rng.integers(0, 3)) * (i % 5 == 0)]))
    arena = np.zeros(SLOT * len(frames), np.uint8)
    bases = np.arange(len(frames), dtype=np.int64) * SLOT
    lengths = np.array([len(f) for f in frames], np.int64)
    for b, f in zip(bases, frames):
        arena[b + DATA_OFF:b + DATA_OFF + len(f)] = np.frombuffer(f, np.uint8)
    classes = np.array([reference_class(arena, b, n) for b, n in zip(bases, lengths)], np.int64)
    return arena, bases, lengths, classes


def classify_problems(fn, seed=3):
    """Sentences saying where `fn(arena, base, length)` differs from reference_class: a wrong class
    (compiled, or its pure-Python twin), or a read past the frame's end (the twin on an array that
    ends where the frame does). [] when every frame gets the reference's class."""
    arena, bases, lengths, want = make_frames(seed)
    out = []
    seen = set(int(c) for c in want)
    missing = [CLASSES[c] for c in range(len(CLASSES)) if c not in seen]
    assert not missing, f"the test frames lack {missing}"
    for i, (b, n) in enumerate(zip(bases, lengths)):
        frame = arena[b + DATA_OFF:b + DATA_OFF + n].tobytes()
        for how, impl in (("compiled", fn), ("pure Python", getattr(fn, "py_func", fn))):
            got = int(impl(arena, b, n))
            if got != want[i]:
                out.append(f"frame {i} ({n} bytes, {frame[:24].hex(' ')}...): {how} it says "
                           f"{CLASSES[got] if 0 <= got < len(CLASSES) else got}, the reference "
                           f"{CLASSES[want[i]]}")
                break
        tight = np.zeros(DATA_OFF + n, np.uint8)
        tight[DATA_OFF:] = arena[b + DATA_OFF:b + DATA_OFF + n]
        try:
            getattr(fn, "py_func", fn)(tight, 0, n)
        except IndexError:
            out.append(f"frame {i} ({n} bytes): it reads past the frame's end (an array that ends with the "
                       "frame raised IndexError); read a short frame's header from the buffer's first "
                       "DATA_OFF bytes instead")
        if len(out) >= 5:
            break
    return out


@njit(nogil=True)
def _classify_all(fn, arena, bases, lengths, order, out, n):
    for i in range(n):
        j = order[i]
        out[i] = fn(arena, bases[j], lengths[j])


def order_of(classes, how, n=None, seed=5):
    """Template indices for n frames: every class together ("sorted") or in random order ("shuffled"),
    each template as often."""
    n = n or (ORDER_N >> 3 if quick() else ORDER_N)
    idx = np.resize(np.arange(classes.size), n)
    if how == "sorted":
        return idx[np.argsort(classes[idx], kind="stable")]
    return np.random.default_rng(seed).permutation(idx)


def time_classify(fns, runs=None, n=None):
    """{order: {name: TSC cycles per frame}} of each {name: fn} over n frames in sorted and shuffled
    order (medians of `runs`, every function in every run)."""
    runs = runs or _runs()
    arena, bases, lengths, classes = make_frames()
    orders = {how: order_of(classes, how, n) for how in ("sorted", "shuffled")}
    out = np.zeros(next(iter(orders.values())).size, np.int64)
    for fn in fns.values():
        _classify_all(fn, arena, bases, lengths, orders["sorted"][:8], out, 8)
    got = {how: {name: [] for name in fns} for how in orders}
    for _ in range(runs):
        for how, order in orders.items():
            for name, fn in fns.items():
                got[how][name].append(_cycles(_classify_all, fn, arena, bases, lengths, order, out, out.size)
                                      / out.size)
    return {how: {name: statistics.median(xs) for name, xs in d.items()} for how, d in got.items()}


def kernel_branches():
    """The data plane's own branchless nodes, counted the same way (for the notebook)."""
    a = np.zeros(4 * SLOT, np.uint8)
    out = {}
    for fn in (k.eth_input_one, k.eth_input_branchless, k.ip4_input_one, k.ip4_input_branchless):
        fn(a, 0, 60)
        out[fn.__name__] = conditional_branches(fn)
    return out
