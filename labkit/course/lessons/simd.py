"""SIMD (notebook and exercise 12): one instruction, many packets' headers.

A vector register holds 4 (SSE, 128 bits), 8 (AVX2, 256 bits) or 16 (AVX-512,
512 bits) 32-bit lanes; one vector instruction adds, compares or selects in
every lane at once. numba does not ask for it: LLVM's *loop vectorizer* finds
a loop whose iterations are independent and alike, and runs it several
iterations per instruction. It needs the same field of many packets side by
side (structure of arrays) and no jump that differs from one packet to the
next. Three things live here.

**Header words, structure of arrays.** ``Headers``: n IPv4 headers as ten rows
of 16-bit words (``words[k, i]`` is word k of header i, as ``rd16`` reads it)
and the bytes each frame has after its Ethernet header (``room``).
``checksum64`` and ``checksum32`` (RFC 1071 over every header, in 64-bit and
in 32-bit arithmetic) and ``validate`` (version, IHL, total length, checksum,
TTL: one class of ``CLASSES`` per header) are loops over packets that LLVM
vectorizes.

**Lanes, measured.** ``measure_lanes`` compiles the same kernels for four
instruction sets in child processes (numba reads the target CPU once per
process): vectorizing off (one lane), SSE4.2 (4 lanes of 32 bits), AVX2 (8)
and AVX-512 (16), each only where this CPU has it. Each child reports the
lanes per vector instruction (``vector_lanes``: the widest register its
assembly names over the lane width of its IR's vector additions), the
registers (``registers``: xmm, ymm, zmm) and TSC cycles per header.

**Headers where they live.** In the data plane a header is not in a row of
words: it is 14 bytes into a frame, each frame in its own buffer.
``measure_in_place`` measures, on one vector of frames in mempool-like
buffers, ip4-input's scalar loop (``ip4_input_one`` on each frame) against
the three loops of its ``simd`` variant (``labkit.graph.kernels``): the
gather (each header copied into rows, three loads and six stores: no vector
instruction helps there), the lanes (every check, vectorized) and the
verdicts, so that what SIMD buys and what the transposition costs are seen
apart.

**The exercise** vectorizes ``starter_validate`` (early exits, a checksum loop
as long as the header, numba's 64-bit integers: LLVM vectorizes it at best in
64-bit lanes, with masks): ``validate_problems`` compares classes on crafted
and random headers, ``lane_bits`` reads the IR, ``time_validate`` measures.
"""
import json
import os
import re
import statistics
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
from numba import njit

from labkit.course.lessons.branches import compiled_fresh, function_ir
from labkit.graph import kernels as k
from labkit.memory.intrinsics import rdtsc
from labkit.memory.layouts import DATA_OFF, IP4_OFF
from labkit.settings import quick

__all__ = ["CLASSES", "FORWARD", "BAD_VERSION", "BAD_IHL", "OPTIONS", "BAD_LENGTH", "BAD_CHECKSUM", "TTL_EXPIRED",
           "Headers", "make_headers", "checksum64", "checksum32", "validate", "KERNELS", "starter_validate",
           "reference_validate",
           "vector_lanes", "registers", "ISAS", "isas_here", "measure_lanes", "lanes_table", "measure_in_place",
           "in_place_table", "validate_problems", "time_validate", "N_HEADERS", "lane_bits", "vector_ops",
           "cycles_per_header", "frames_of"]

N_HEADERS = 256            # one vector: what a node gets at a time
WORDS = 10                 # 16-bit words of an option-less IPv4 header

CLASSES = ("forward", "bad_version", "bad_ihl", "options", "bad_length", "bad_checksum", "ttl_expired")
FORWARD, BAD_VERSION, BAD_IHL, OPTIONS, BAD_LENGTH, BAD_CHECKSUM, TTL_EXPIRED = range(len(CLASSES))


def _runs():
    return 5 if quick() else 15


# ---- header words, structure of arrays -----------------------------------------------------

@dataclass
class Headers:
    """n IPv4 headers as rows: ``words`` uint16 [10, n] (word k of header i at [k, i], network
    order as rd16 reads it), ``room`` int32 [n] (frame bytes after the Ethernet header)."""
    words: np.ndarray
    room: np.ndarray

    @property
    def n(self):
        return self.room.size


def _csum(w):
    s = sum(int(x) for x in w)
    s = (s & 0xFFFF) + (s >> 16)
    return (s & 0xFFFF) + (s >> 16)


def _valid_header(rng):
    """Ten words of a valid option-less IPv4 header (random addresses, TTL, length) and its room."""
    total = int(rng.integers(20, 1500))
    w = [0x4500 | int(rng.integers(0, 256)), total, int(rng.integers(0, 1 << 16)), 0x4000 * int(rng.integers(0, 2)),
         (int(rng.integers(2, 256)) << 8) | int(rng.choice([6, 17, 1])), 0,
         *(int(x) for x in rng.integers(0, 1 << 16, 4))]
    w[5] = ~_csum(w) & 0xFFFF
    return w, total + int(rng.integers(0, 30))


def make_headers(n=N_HEADERS, bad=0.3, seed=1):
    """Headers: valid ones, and a share `bad` with one defect each (every class of CLASSES),
    plus random words; in random order."""
    rng = np.random.default_rng(seed)
    words = np.zeros((WORDS, n), np.uint16)
    room = np.zeros(n, np.int32)
    for i in range(n):
        w, r = _valid_header(rng)
        if rng.random() < bad:
            kind = int(rng.integers(0, 7))
            if kind == 0:
                w[0] = (int(rng.choice([0, 5, 6, 15])) << 12) | (w[0] & 0x0FFF)
            elif kind == 1:
                w[0] = (w[0] & 0xF0FF) | (int(rng.integers(0, 5)) << 8)
            elif kind == 2:
                w[0] = (w[0] & 0xF0FF) | (int(rng.integers(6, 16)) << 8)
            elif kind == 3:
                r = int(rng.integers(20, w[1]))            # frame cut short
            elif kind == 4:
                w[5] ^= 1 << int(rng.integers(0, 16))
            elif kind == 5:
                w[4] = (int(rng.integers(0, 2)) << 8) | (w[4] & 0xFF)
                w[5] = 0
                w[5] = ~_csum(w) & 0xFFFF
            else:
                w = [int(x) for x in rng.integers(0, 1 << 16, WORDS)]
        words[:, i] = w
        room[i] = r
    return Headers(words, room)


@njit(nogil=True, cache=True)
def checksum64(words, room, n, out):
    """out[i] = 1 when header i's ones' complement sum is 0xFFFF (RFC 1071), else 0; written as
    one would, so numba computes in 64 bits (its integers are at least 64 bits wide): each lane
    of a vector holds one 64-bit sum. ``room`` is not used (every kernel here has one signature)."""
    for i in range(n):
        s = 0
        for w in range(WORDS):                 # a fixed count: unrolled, no branch is left
            s += words[w, i]
        s = (s & 0xFFFF) + (s >> 16)
        s = (s & 0xFFFF) + (s >> 16)
        out[i] = s == 0xFFFF


@njit(nogil=True, cache=True)
def checksum32(words, room, n, out):
    """checksum64 with every step cast back to 32 bits (ten 16-bit words cannot overflow them):
    LLVM then computes in 32-bit lanes, twice as many headers per vector instruction."""
    for i in range(n):
        s = np.uint32(0)
        for w in range(WORDS):
            s = np.uint32(s + words[w, i])
        s = np.uint32((s & 0xFFFF) + (s >> 16))
        s = np.uint32((s & 0xFFFF) + (s >> 16))
        out[i] = s == 0xFFFF


@njit(nogil=True, cache=True)
def validate(words, room, n, out):
    """out[i] = header i's class (CLASSES), 32-bit lanes: every check computed, the first that
    failed (in the reference's order) picked by selects, so that every lane does the same work;
    the checksum over the ten words of an option-less header (options are a class of their own,
    a slow path's work, as in VPP)."""
    for i in range(n):
        w0 = np.int32(words[0, i])
        total = np.int32(words[1, i])
        hlen = np.int32((w0 >> 6) & 0x3C)                    # IHL * 4
        s = np.uint32(0)
        for w in range(WORDS):
            s = np.uint32(s + words[w, i])
        s = np.uint32((s & 0xFFFF) + (s >> 16))
        s = np.uint32((s & 0xFFFF) + (s >> 16))
        c = np.int32(FORWARD)                                # the last check first: the first failing one wins
        c = np.int32(TTL_EXPIRED) if np.int32(np.int32(words[4, i]) >> 8) <= 1 else c
        c = np.int32(BAD_CHECKSUM) if s != 0xFFFF else c
        c = np.int32(BAD_LENGTH) if (total < 20) | (total > room[i]) else c
        c = np.int32(OPTIONS) if hlen > 20 else c
        c = np.int32(BAD_IHL) if hlen < 20 else c
        c = np.int32(BAD_VERSION) if np.int32(w0 >> 12) != 4 else c
        out[i] = c


KERNELS = {"checksum, 64-bit sums": checksum64, "checksum, 32-bit sums": checksum32, "validate": validate}


@njit(nogil=True, cache=True)
def starter_validate(words, room, n, out):
    """validate's classes the way ip4_input_one finds them (the exercise's starter): an early exit
    per check, the checksum summed over the header's own length (a loop inside the loop over
    packets, whose count changes from header to header), numba's 64-bit integers. LLVM 22 still
    vectorizes it, by unrolling the inner loop to its longest count and masking every path, in
    64-bit lanes; an older LLVM may leave it scalar."""
    for i in range(n):
        w0 = int(words[0, i])
        if w0 >> 12 != 4:
            out[i] = BAD_VERSION
            continue
        hlen = (w0 >> 8 & 0xF) * 4
        if hlen < 20:
            out[i] = BAD_IHL
            continue
        s = 0
        for w in range(min(hlen, 2 * WORDS) // 2):      # the header's words (options are not in `words`)
            s += int(words[w, i])
        if hlen > 20:
            out[i] = OPTIONS
            continue
        total = int(words[1, i])
        if total < 20 or total > room[i]:
            out[i] = BAD_LENGTH
            continue
        s = (s & 0xFFFF) + (s >> 16)
        s = (s & 0xFFFF) + (s >> 16)
        if s != 0xFFFF:
            out[i] = BAD_CHECKSUM
            continue
        if int(words[4, i]) >> 8 <= 1:
            out[i] = TTL_EXPIRED
            continue
        out[i] = FORWARD


def reference_validate(h):
    """The classes of Headers h, in plain Python: what every kernel here must give."""
    out = []
    for i in range(h.n):
        w = [int(x) for x in h.words[:, i]]
        hlen = (w[0] >> 8 & 0xF) * 4
        out.append(BAD_VERSION if w[0] >> 12 != 4 else BAD_IHL if hlen < 20 else OPTIONS if hlen > 20 else
                   BAD_LENGTH if not 20 <= w[1] <= int(h.room[i]) else BAD_CHECKSUM if _csum(w) != 0xFFFF else
                   TTL_EXPIRED if w[4] >> 8 <= 1 else FORWARD)
    return np.array(out, np.int32)


# ---- reading the compiled code -------------------------------------------------------------

_VEC_OP = re.compile(r"= (add|sub|and|or|xor|lshr|ashr|shl|mul|select|icmp \w+) (?:nuw |nsw )*"
                     r"(?:<\d+ x i1> %[\w.]+, )?<(\d+) x i(\d+)>")


def vector_ops(fn, sig=None):
    """{(operation, lanes, bits): count} of the vector integer operations in fn's optimized LLVM IR
    (compiled afresh, without bounds checks: ``branches.function_ir``). LLVM's vectors may be
    wider than a register (``<32 x i32>`` is two zmm registers' worth: it interleaves)."""
    out = {}
    for op, lanes, bits in _VEC_OP.findall(function_ir(fn, sig)):
        key = (op.split()[0], int(lanes), int(bits))
        out[key] = out.get(key, 0) + 1
    return out


def lane_bits(fn, sig=None):
    """The integer widths (bits) of the lanes in fn's vector additions: {64} when numba's 64-bit
    arithmetic went to vectors as it is, {32} when the sums were cast back to 32 bits; set() when
    LLVM did not vectorize the sums at all."""
    return {bits for (op, _, bits) in vector_ops(fn, sig) if op == "add"}


def registers(fn, sig=None):
    """{"xmm": n, "ymm": n, "zmm": n}: how often fn's machine code names each kind of vector register
    (128, 256 and 512 bits: SSE, AVX2 and AVX-512); all 0 off x86."""
    fresh, sig = compiled_fresh(fn, sig)
    asm = fresh.inspect_asm(sig)
    return {r: len(re.findall(rf"%{r}\d+", asm)) for r in ("xmm", "ymm", "zmm")}


def vector_lanes(fn, sig=None):
    """Lanes per vector instruction of fn's vector additions: the widest register its code names
    (bits) divided by the narrowest lane of its vector adds; 1 when nothing was vectorized."""
    bits = lane_bits(fn, sig)
    regs = registers(fn, sig)
    width = 512 if regs["zmm"] else 256 if regs["ymm"] else 128 if bits else 0
    return width // min(bits) if bits and width else 1


# ---- lanes, measured: one child process per instruction set ----------------------------------

@njit(nogil=True)
def _repeat(fn, words, room, n, out, reps):
    """TSC cycles of `reps` calls of fn over the same headers, timed inside compiled code (a call
    from Python costs more than a vector of 256 headers takes)."""
    t0 = rdtsc()
    for _ in range(reps):
        fn(words, room, n, out)
    return rdtsc() - t0


def cycles_per_header(fn, h, runs=None, reps=None):
    """Median over `runs` of TSC cycles per header of fn on Headers h, `reps` calls per run."""
    runs = runs or _runs()
    reps = reps or (200 if quick() else 1000)
    out = np.zeros(h.n, np.int32)
    _repeat(fn, h.words, h.room, h.n, out, 2)                # compile, warm the caches
    return statistics.median(_repeat(fn, h.words, h.room, h.n, out, reps) / (reps * h.n) for _ in range(runs))


# (name, LLVM features to turn off, vectorizers on): the same source for each; lanes of 32 bits:
# 1, 4, 8 and 16, as the children read them back from their own code (vector_lanes)
ISAS = (("scalar", (), False), ("SSE4.2", ("avx",), True), ("AVX2", ("avx512",), True), ("AVX-512", (), True))
_AVX_FAMILY = ("avx", "fma", "f16c", "vaes", "vpclmulqdq")


def _host_features():
    import llvmlite.binding as ll
    ll.initialize_native_target()
    return ll.get_host_cpu_name(), ll.get_host_cpu_features()


def isas_here():
    """[(name, environment for a child process)] of the ISAS this CPU has: numba reads the target
    CPU and its features once per process (NUMBA_CPU_NAME, NUMBA_CPU_FEATURES). Off x86, the
    scalar row and this CPU's own vectors."""
    cpu, feats = _host_features()
    on = {f for f, v in feats.items() if v}
    flat = ",".join(("+" if v else "-") + f for f, v in feats.items())
    if not {"sse4.2"} <= on:
        return [("scalar", {"NUMBA_LOOP_VECTORIZE": "0", "NUMBA_SLP_VECTORIZE": "0"}), (f"{cpu} (this CPU)", {})]
    out = []
    for name, off, vectorize in ISAS:
        if name == "AVX2" and "avx2" not in on or name == "AVX-512" and not {"avx512f", "avx512bw"} <= on:
            continue
        family = _AVX_FAMILY if off == ("avx",) else off
        feats_s = ",".join("-" + f[1:] if f[0] == "+" and f[1:].startswith(family) else f for f in flat.split(","))
        if name == "AVX-512":
            # LLVM tunes Intel's server cores (skylake-avx512 to emeraldrapids) to prefer 256-bit
            # vectors, since 512-bit instructions may lower their clock: it then vectorizes with
            # half of AVX-512's lanes. The AVX-512 row asks for the whole width, as clang's
            # -mprefer-vector-width=512 does (LLVM's tuning for AMD's Zen 4 has no such preference).
            feats_s += ",-prefer-256-bit"
        env = {"NUMBA_CPU_NAME": cpu, "NUMBA_CPU_FEATURES": feats_s}
        if not vectorize:
            env.update(NUMBA_LOOP_VECTORIZE="0", NUMBA_SLP_VECTORIZE="0")
        out.append((name, env))
    return out


def _child(seed):
    """In a child process: every kernel compiled afresh for this process's target, measured."""
    h = make_headers(seed=seed)
    res = {}
    for name, fn in KERNELS.items():
        fresh = njit(nogil=True, boundscheck=False)(fn.py_func)
        out = np.zeros(h.n, np.int32)
        fresh(h.words, h.room, h.n, out)
        res[name] = {"cycles": cycles_per_header(fresh, h), "lanes": vector_lanes(fresh),
                     "bits": sorted(lane_bits(fresh)), "registers": registers(fresh),
                     "result": int(out.astype(np.int64) @ np.arange(1, h.n + 1))}
    return res


def measure_lanes(seed=1):
    """{isa name: {kernel name: {"cycles", "lanes", "bits", "registers", "result"}}} for every
    instruction set this CPU has, each measured in a child process of its own, one after another.
    Every ISA must compute the same results (checked)."""
    out = {}
    for name, env in isas_here():
        r = subprocess.run([sys.executable, "-m", "labkit.course.lessons.simd", "--child", str(seed)],
                           env=dict(os.environ, NUMBA_BOUNDSCHECK="0", **env), capture_output=True, text=True,
                           timeout=600)
        if r.returncode:
            raise RuntimeError(f"the {name} child failed:\n{r.stderr[-2000:]}")
        out[name] = json.loads(r.stdout.strip().splitlines()[-1])
    results = {isa: {k: v["result"] for k, v in d.items()} for isa, d in out.items()}
    assert len({json.dumps(r, sort_keys=True) for r in results.values()}) == 1, f"ISAs disagree: {results}"
    return out


def lanes_table(res):
    names = list(KERNELS)
    base = next(iter(res.values()))
    lines = [f"{'instruction set':>16}" + "".join(f"{n:>26}" for n in names)]
    for isa, d in res.items():
        cells = [f"{d[n]['cycles']:6.2f} x{base[n]['cycles'] / d[n]['cycles']:4.1f} {d[n]['lanes']:>3} lanes"
                 for n in names]
        lines.append(f"{isa:>16}" + "".join(f"{c:>26}" for c in cells))
    lines.append(f"(TSC cycles per header over {N_HEADERS} headers, median of the runs; x: against "
                 f"{next(iter(res))}; lanes per vector instruction, from the IR and the registers)")
    return "\n".join(lines)



# ---- headers where they live: in frames, one per buffer ---------------------------------------

SLOT = 2112                # a mempool's stride: 33 cache lines (labkit.memory.mempool.slot_lines)


def frames_of(h):
    """(arena, bases, lengths): each header of Headers h in a 60-byte-or-longer IPv4 frame of its own
    buffer, DATA_OFF bytes in, as the mempool holds them; a frame's length is its room plus 14."""
    arena = np.zeros(SLOT * h.n, np.uint8)
    bases = np.arange(h.n, dtype=np.int64) * SLOT
    lengths = (h.room.astype(np.int64) + IP4_OFF).clip(60, SLOT - DATA_OFF)
    for i, b in enumerate(bases):
        f = b + DATA_OFF
        arena[f + 12:f + 14] = (0x08, 0x00)
        for w in range(WORDS):
            arena[f + IP4_OFF + 2 * w] = h.words[w, i] >> 8
            arena[f + IP4_OFF + 2 * w + 1] = h.words[w, i] & 0xFF
    return arena, bases, lengths


@njit(nogil=True, _nrt=False)       # as the data plane compiles (labkit.graph.compile)
def _node(arena, bases, lengths, n, codes):
    """What ip4-input's scalar loop does: ip4_input_one on each frame where it lies."""
    for i in range(n):
        codes[i] = k.ip4_input_one(arena, bases[i], lengths[i])


@njit(nogil=True, _nrt=False)       # as the data plane compiles (labkit.graph.compile)
def _gather(arena, bases, lengths, n, rows):
    """The simd variant's first loop: each frame's header into column i of the rows."""
    for i in range(n):
        k.ip4_input_gather(arena, bases[i], lengths[i], rows, 0, i)


@njit(nogil=True, _nrt=False)       # as the data plane compiles (labkit.graph.compile)
def _verdicts(arena, bases, lengths, n, rows, codes):
    """The simd variant's last loop: each code from the rows, the slow path for options."""
    for i in range(n):
        c = np.int64(rows[k.ROW_CODE, i]) - k.CODE_BIAS
        if c == k.SLOW:
            c = k.ip4_input_one(arena, bases[i], lengths[i])
        codes[i] = c


@njit(nogil=True)
def _in_place(arena, bases, lengths, n, rows, codes, simd_codes, reps):
    """TSC cycles of `reps` rounds of: the scalar node; the simd variant's gather, lanes, verdicts."""
    t = np.zeros(4, np.int64)
    for _ in range(reps):
        t0 = rdtsc()
        _node(arena, bases, lengths, n, codes)
        t1 = rdtsc()
        _gather(arena, bases, lengths, n, rows)
        t2 = rdtsc()
        k.ip4_input_lanes(rows, 0, n)
        t3 = rdtsc()
        _verdicts(arena, bases, lengths, n, rows, simd_codes)
        t4 = rdtsc()
        t[0] += t1 - t0
        t[1] += t2 - t1
        t[2] += t3 - t2
        t[3] += t4 - t3
    return t


IN_PLACE = ("scalar node", "gather", "lanes", "verdicts")


def measure_in_place(n=N_HEADERS, seed=2, runs=None, reps=None):
    """{"scalar node": c, "gather": c, "lanes": c, "verdicts": c, "simd variant": c}: TSC cycles per
    packet over one vector of n frames in mempool-like buffers (medians of `runs`): ip4-input's
    scalar loop (ip4_input_one on each frame) against its simd variant's three loops, the data
    plane's own kernels (labkit.graph.kernels). Both must give every frame the same code."""
    runs, reps = runs or _runs(), reps or (100 if quick() else 500)
    h = make_headers(n, seed=seed)
    arena, bases, lengths = frames_of(h)
    rows = np.zeros((k.SIMD_ROWS, n), np.uint32)
    codes, simd_codes = np.zeros(n, np.int64), np.zeros(n, np.int64)
    _in_place(arena, bases, lengths, n, rows, codes, simd_codes, 2)
    assert (codes == simd_codes).all(), "the scalar node and the simd variant must give the same codes"
    got = [_in_place(arena, bases, lengths, n, rows, codes, simd_codes, reps) / (reps * n) for _ in range(runs)]
    med = {name: statistics.median(float(g[i]) for g in got) for i, name in enumerate(IN_PLACE)}
    med["simd variant"] = statistics.median(float(g[1:].sum()) for g in got)
    return med


def in_place_table(res):
    lines = [f"{name:>18}  {c:6.2f}" for name, c in res.items()]
    return "\n".join(lines + [f"(TSC cycles per packet, one vector of {N_HEADERS} frames in mempool-like buffers, "
                               "median of the runs)"])


# ---- the exercise ------------------------------------------------------------------------------

def validate_problems(fn, seeds=(1, 2, 3)):
    """Sentences saying where fn(words, room, n, out) differs from the reference on crafted and
    random headers (compiled, and its pure-Python twin on a few); [] when every class agrees."""
    out = []
    for seed in seeds:
        h = make_headers(n=N_HEADERS + seed, seed=seed)          # vectors that do not end on a lane
        want = reference_validate(h)
        for how, impl, m in (("compiled", fn, h.n), ("pure Python", getattr(fn, "py_func", fn), 40)):
            got = np.full(h.n, -1, np.int32)
            impl(h.words, h.room, m, got)
            bad = np.flatnonzero(got[:m] != want[:m])
            if bad.size:
                i = int(bad[0])
                words = " ".join(f"{int(x):04x}" for x in h.words[:, i])
                out.append(f"header {i} of seed {seed} ({words}, room {int(h.room[i])}): {how} it says "
                           f"{CLASSES[got[i]] if 0 <= got[i] < len(CLASSES) else got[i]}, the reference "
                           f"{CLASSES[want[i]]} ({bad.size} of {m} differ)")
                break
    return out


def time_validate(fns, runs=None, seed=4):
    """{name: TSC cycles per header} of each {name: fn(words, room, n, out)} on one vector of headers,
    compiled afresh without bounds checks (as the data plane runs), measured in turn (medians)."""
    h = make_headers(seed=seed)
    sig = (h.words, h.room, h.n, np.zeros(h.n, np.int32))
    fresh = {}
    for name, fn in fns.items():
        fn(*sig)
        fresh[name] = compiled_fresh(fn)[0]
    runs = runs or _runs()
    got = {name: [] for name in fns}
    for _ in range(runs):
        for name, fn in fresh.items():
            got[name].append(cycles_per_header(fn, h, runs=1))
    return {name: statistics.median(xs) for name, xs in got.items()}


if __name__ == "__main__" and sys.argv[1:2] == ["--child"]:
    print(json.dumps(_child(int(sys.argv[2]))))
