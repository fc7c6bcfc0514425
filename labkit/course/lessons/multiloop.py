"""Multi-loops (notebook and exercise 09): single, dual and quad loops.

Two things live here.

**The exercise: a flow-hash node.** For each packet of a vector, the CRC-32 of
its 5-tuple, kept as a structure of arrays (SoA): ``src`` and ``dst`` (uint32),
``ports`` (uint32: source port in the low 16 bits, destination port in the
high ones) and ``proto`` (uint8). The key is those 13 bytes as the arrays hold
them (little-endian, src first) and the hash is zlib's CRC-32 of them (IEEE
802.3 polynomial, reflected, table-driven: one table load per byte). DPDK's
``rte_hash_crc`` hashes flow keys the same way (with the CRC-32C polynomial,
in hardware when SSE4.2 is there). Each byte's step needs the previous one's
result, so a packet's hash is a chain of 13 dependent loads: the kind of work
where running four packets side by side pays.

``crc32_u32``/``crc32_u8`` are the steps; ``reference_hashes`` is the answer
from ``zlib.crc32``; ``quad_problems``, ``result_problems`` and
``access_problems`` say, in sentences, what is wrong with a student's
``flow_hash(tbl, src, dst, ports, proto, out, n)``, which must return how many
iterations its main (quad) loop ran; ``time_flow_hash`` measures it.

**The notebook's micro-measurement.** ``measure_chains``: a per-packet chain
of dependent work (``rounds`` multiply-xorshift rounds of a 64-bit key, a
hash), run as a single loop, as a quad loop that only repeats the body four
times (the shape labkit's graph compiler generates), and as dual and quad loops
that interleave the packets' chains, in TSC cycles per packet.

Measured on a 2-vCPU AMD EPYC VM (Zen 5, busy with other work): flow_hash 22.7
TSC cycles/packet as a single loop, 21.5 unrolled by four without
interleaving, 18 as an interleaved dual loop, 14.1 as an interleaved quad loop.
"""
import zlib
from collections import namedtuple

import numpy as np
from numba import njit

from labkit.course import exercise as ex
from labkit.memory.intrinsics import rdtsc

__all__ = ["CRC_TABLE", "CRC_INIT", "CRC_XOR", "crc32_u32", "crc32_u8", "Flows", "make_flows", "key_bytes",
           "reference_hashes", "N_MAX", "quad_problems", "result_problems", "access_problems", "run_nrt_free",
           "time_flow_hash", "CHAIN_VARIANTS", "measure_chains", "chain_single", "chain_unrolled4", "chain_dual",
           "chain_quad", "chains_table", "core", "node_source", "per_node_medians", "per_node_table"]


# ---- the exercise: CRC-32 of a 5-tuple -----------------------------------------------

def _crc_table():
    """zlib's table: entry b is the CRC register after shifting byte b through
    the reflected polynomial 0xEDB88320, eight bits at a time."""
    t = np.zeros(256, np.uint32)
    for b in range(256):
        c = b
        for _ in range(8):
            c = (c >> 1) ^ (0xEDB88320 if c & 1 else 0)
        t[b] = c
    return t


CRC_TABLE = _crc_table()
CRC_INIT = 0xFFFFFFFF            # the register starts all ones...
CRC_XOR = 0xFFFFFFFF             # ...and the result is inverted (zlib.crc32)


@njit(nogil=True, cache=True, inline="always")
def crc32_u8(tbl, c, b):
    """One byte through the CRC register ``c``: a table load that needs ``c``."""
    c = np.int64(c)
    return np.int64(tbl[(c ^ np.int64(b)) & 0xFF]) ^ (c >> 8)


@njit(nogil=True, cache=True, inline="always")
def crc32_u32(tbl, c, x):
    """The four bytes of ``x`` (low byte first) through the CRC register ``c``:
    four dependent table loads."""
    x = np.int64(x)
    c = crc32_u8(tbl, c, x)
    c = crc32_u8(tbl, c, x >> 8)
    c = crc32_u8(tbl, c, x >> 16)
    return crc32_u8(tbl, c, x >> 24)


Flows = namedtuple("Flows", "src dst ports proto")
Flows.__doc__ = """A vector's 5-tuples as a structure of arrays: src, dst, ports (uint32) and proto (uint8)."""


def make_flows(n, seed=9):
    """n random 5-tuples (TCP or UDP; ports = sport | dport << 16)."""
    rng = np.random.default_rng(seed)
    src = rng.integers(0, 2 ** 32, n, dtype=np.uint64).astype(np.uint32)
    dst = rng.integers(0, 2 ** 32, n, dtype=np.uint64).astype(np.uint32)
    ports = rng.integers(0, 2 ** 32, n, dtype=np.uint64).astype(np.uint32)
    proto = rng.choice(np.array([6, 17], np.uint8), n)
    return Flows(src, dst, ports, proto)


def key_bytes(flows, i):
    """The 13 bytes hashed for packet i: src, dst, ports little-endian, then proto."""
    return (int(flows.src[i]).to_bytes(4, "little") + int(flows.dst[i]).to_bytes(4, "little") +
            int(flows.ports[i]).to_bytes(4, "little") + bytes([int(flows.proto[i])]))


def reference_hashes(flows, n=None):
    """The answer for packets 0..n-1, from zlib (no loop of ours involved)."""
    n = len(flows.src) if n is None else n
    return np.array([zlib.crc32(key_bytes(flows, i)) for i in range(n)], np.uint32)


# ---- what the checks look at -----------------------------------------------------------

N_MAX = 70                       # the checks try every n from 0 to N_MAX: every remainder, many times
SENTINEL = 0xDEADBEEF            # out[i] for i >= n must keep it


def _case(n, seed):
    """Inputs with room beyond n (so a loop that runs too far shows) and a fresh out."""
    flows = make_flows(n + 5, seed=seed)
    out = np.full(n + 5, SENTINEL, np.uint32)
    return flows, out


def result_problems(fn, n_max=N_MAX, seeds=(1, 2)):
    """What is wrong with the results of ``fn``, the compiled function, for
    every n from 0 to n_max: its hashes against zlib's, what it leaves beyond
    n, its inputs, and its return value (the main loop's iterations, n // 4)."""
    problems = []
    for seed in seeds:
        for n in range(n_max, -1, -1):          # from the largest: the first message is the most telling
            flows, out = _case(n, seed * 1000 + n)
            before = [a.copy() for a in flows]
            got = fn(CRC_TABLE, *flows, out, n)
            want = reference_hashes(flows, n)
            bad = np.flatnonzero(out[:n] != want)
            if bad.size:
                i = int(bad[0])
                problems.append(f"n={n}: {bad.size} of {n} hashes wrong; out[{i}] is {int(out[i]):#010x}, "
                                f"zlib.crc32 of its 13 bytes is {int(want[i]):#010x}")
            elif (out[n:] != SENTINEL).any():
                problems.append(f"n={n}: out[{n + int(np.flatnonzero(out[n:] != SENTINEL)[0])}] was written: "
                                f"only packets 0..n-1 exist (does a loop run past n?)")
            elif any(not np.array_equal(a, b) for a, b in zip(flows, before)):
                problems.append(f"n={n}: an input array changed: read src, dst, ports, proto; write only out")
            elif got is None or int(got) != n // 4:
                problems.append(f"n={n}: the hashes are right, but it returned {got}: a quad loop runs n // 4 = "
                                f"{n // 4} iterations (four packets each), then a single loop does the {n % 4} left")
            if problems:
                return problems
    return problems


class _Recorded(np.ndarray):
    """An array that logs each scalar read and write: (kind, name, index)."""

    def __getitem__(self, i):
        if np.ndim(i) == 0 and not isinstance(i, slice):
            self.log.append(("r", self.name, int(i)))
        return np.ndarray.__getitem__(self, i)

    def __setitem__(self, i, v):
        if np.ndim(i) == 0 and not isinstance(i, slice):
            self.log.append(("w", self.name, int(i)))
        np.ndarray.__setitem__(self, i, v)


def _recorded(a, name, log):
    r = a.copy().view(_Recorded)
    r.name, r.log = name, log
    return r


INPUTS = ("src", "dst", "ports", "proto")
NOT_SEEN = ("n={n}: no access to the arrays was seen: the check records the accesses of the function's own "
            "Python version, so index src, dst, ports, proto and out in the function itself (not in another "
            "compiled function you pass the arrays to)")


def record(fn, n, seed=5):
    """Run ``fn``'s Python source (numba's py_func) for n packets on arrays
    that log every access; returns (log, returned)."""
    py = getattr(fn, "py_func", fn)
    flows, out = _case(n, seed)
    log = []
    args = [_recorded(a, name, log) for a, name in zip(flows, INPUTS)] + [_recorded(out, "out", log)]
    got = py(CRC_TABLE, *args, n)
    return log, got


def _run_recorded(fn, n):
    try:
        return record(fn, n), None
    except Exception as e:                       # the student's code, run as plain Python
        return None, f"n={n}: its Python version (py_func) failed: {type(e).__name__}: {e}"


def access_problems(fn, n_max=N_MAX):
    """Each packet handled exactly once: its four fields read once each and its
    hash written once, nothing at index n or beyond touched (recorded on the
    Python version of ``fn``), and the quad loop's count returned."""
    for n in range(n_max, -1, -1):
        rec, err = _run_recorded(fn, n)
        if err:
            return [err]
        log, got = rec
        if n and not log:
            return [NOT_SEEN.format(n=n)]
        beyond = [e for e in log if not 0 <= e[2] < n]
        if beyond:
            k, name, i = beyond[0]
            return [f"n={n}: {'read' if k == 'r' else 'wrote'} {name}[{i}]: only packets 0..{n - 1} exist"]
        for name in INPUTS:
            if any(e[0] == "w" and e[1] == name for e in log):
                return [f"n={n}: wrote {name}: the inputs are read-only"]
            reads = np.bincount([e[2] for e in log if e[1] == name], minlength=n)[:n]
            off = np.flatnonzero(reads != 1)
            if off.size:
                return [f"n={n}: {name}[{int(off[0])}] was read {int(reads[off[0]])} times: read each field of "
                        f"each packet once (keep it in a local variable)"]
        writes = np.bincount([e[2] for e in log if e[1] == "out" and e[0] == "w"], minlength=n)[:n]
        off = np.flatnonzero(writes != 1)
        if off.size:
            return [f"n={n}: out[{int(off[0])}] was written {int(writes[off[0]])} times: each packet exactly once"]
        if got is None or int(got) != n // 4:
            return [f"n={n}: each packet was handled once, but by a loop that ran {got} main iterations; "
                    f"a quad loop runs n // 4 = {n // 4} (task 1)"]
    return []


def quad_problems(fn, n_max=N_MAX):
    """The loop's shape, from the order of the recorded accesses: for each of
    the n // 4 main-loop iterations, every one of its four packets has a field
    read before the first of their four hashes is written (the four chains
    run side by side, not one after the other); the n % 4 packets left are
    then done one at a time, in order; and the return value is n // 4."""
    for n in range(n_max, -1, -1):
        rec, err = _run_recorded(fn, n)
        if err:
            return [err]
        log, got = rec
        if n and not log:
            return [NOT_SEEN.format(n=n)]
        q = n // 4
        if got is None or int(got) != q:
            how = " (one iteration per packet: a single loop)" if got is not None and int(got) == n and n else ""
            return [f"n={n}: returned {got}{how}; a quad loop runs n // 4 = {q} iterations, then the "
                    f"{n % 4} packet(s) left one at a time"]
        first_in = {}
        first_out = {}
        for t, (k, name, i) in enumerate(log):
            if name in INPUTS:
                first_in.setdefault(i, t)
            elif k == "w":
                first_out.setdefault(i, t)
        for b in range(q):
            pk = range(4 * b, 4 * b + 4)
            unread = [i for i in pk if i not in first_in]
            if unread:
                return [f"n={n}: no read of packet {unread[0]}'s fields was seen: the check records the accesses "
                        f"of the function's own Python version, so index src, dst, ports and proto in the "
                        f"function itself (not in a helper you pass the arrays to)"]
            unwritten = [i for i in pk if i not in first_out]
            if unwritten:
                return [f"n={n}: out[{unwritten[0]}] was never written"]
            w = min(first_out[i] for i in pk)
            late = [i for i in pk if first_in[i] > w]
            if late:
                return [f"n={n}: in the iteration for packets {4 * b}..{4 * b + 3}, packet {late[0]}'s fields are "
                        f"first read after a hash of that iteration was written: the four packets ran one after "
                        f"the other (an unrolled single loop); interleave them: read all four, work on all four, "
                        f"then write the four hashes"]
        for i in range(4 * q, n - 1):
            if i in first_out and i + 1 in first_in and first_in[i + 1] < first_out[i]:
                return [f"n={n}: packet {i + 1} was started before packet {i} was written: after the quad loop, "
                        f"the {n % 4} packet(s) left go one at a time (the remainder's single loop)"]
    return []


def run_nrt_free(fn, n=N_MAX, seed=3):
    """(ok, why, problems): compile ``fn``'s source with numba's runtime off,
    as labkit compiles its node loops (``ex.compiles_without_nrt``), run it for
    n packets and compare what it computed and returned with the reference."""
    flows, out = _case(n, seed)
    ok, why = ex.compiles_without_nrt(fn, CRC_TABLE, *flows, out, n)
    if not ok:
        return False, why, []
    want = reference_hashes(flows, n)
    problems = []
    if not np.array_equal(out[:n], want):
        problems.append(f"compiled without the runtime, it computed {int((out[:n] != want).sum())} wrong hashes")
    # compiles_without_nrt does not hand back the return value: run the same compilation once more for it
    from numba import njit as _njit
    got = _njit(nogil=True, _nrt=False)(getattr(fn, "py_func", fn))(CRC_TABLE, *flows, out, n)
    if int(got) != n // 4:
        problems.append(f"compiled without the runtime it returned {got} for n={n}, not n // 4 = {n // 4}")
    return True, None, problems


@njit(nogil=True, cache=False)
def _time_calls(fn, tbl, src, dst, ports, proto, out, n, calls):
    """The fastest of ``calls`` calls, in TSC cycles: a call that was
    interrupted (another program, an interrupt) only makes itself slower."""
    best = np.int64(1) << 62
    for _ in range(calls):
        t0 = rdtsc()
        fn(tbl, src, dst, ports, proto, out, n)
        best = min(best, np.int64(rdtsc() - t0))
    return best


def time_flow_hash(fn, n=256, runs=None, calls=None):
    """TSC cycles per packet of ``fn`` on vectors of n packets (inputs in L1,
    as in a node that runs over a vector): each run is the fastest of
    ``calls`` calls, timed in a compiled loop; the median of ``runs`` runs."""
    runs = runs or (5 if ex.quick() else 15)
    calls = calls or (100 if ex.quick() else 500)
    flows = make_flows(n, seed=11)
    out = np.zeros(n, np.uint32)
    _time_calls(fn, CRC_TABLE, *flows, out, n, 1)          # compile, warm the caches
    return float(np.median([_time_calls(fn, CRC_TABLE, *flows, out, n, calls) / n for _ in range(runs)]))


# ---- the notebook's micro-measurement: chains of dependent work --------------------------

MIX = np.uint64(0x9E3779B97F4A7C15)          # 2**64 / golden ratio (Fibonacci hashing)
SHIFT = np.uint64(29)


@njit(nogil=True, cache=True, inline="always")
def _mix(h, rounds):
    """``rounds`` multiply-xorshift rounds: each needs the previous (a multiply
    is ~3 cycles of latency), so a packet's hash is one dependent chain."""
    for _ in range(rounds):
        h = (h ^ (h >> SHIFT)) * MIX
    return h


@njit(nogil=True, cache=True)
def chain_single(keys, out, rounds):
    """One packet per iteration."""
    for i in range(keys.size):
        out[i] = _mix(keys[i], rounds)
    return keys.size


@njit(nogil=True, cache=True)
def chain_unrolled4(keys, out, rounds):
    """Four packets per iteration, one after the other (what labkit's graph
    compiler generates for unroll=4: the body four times), remainder single."""
    n = keys.size
    i = 0
    while i + 4 <= n:
        out[i] = _mix(keys[i], rounds)
        out[i + 1] = _mix(keys[i + 1], rounds)
        out[i + 2] = _mix(keys[i + 2], rounds)
        out[i + 3] = _mix(keys[i + 3], rounds)
        i += 4
    while i < n:
        out[i] = _mix(keys[i], rounds)
        i += 1
    return n // 4


@njit(nogil=True, cache=True)
def chain_dual(keys, out, rounds):
    """Two packets per iteration, their chains interleaved round by round."""
    n = keys.size
    i = 0
    while i + 2 <= n:
        h0, h1 = keys[i], keys[i + 1]
        for _ in range(rounds):
            h0 = (h0 ^ (h0 >> SHIFT)) * MIX
            h1 = (h1 ^ (h1 >> SHIFT)) * MIX
        out[i], out[i + 1] = h0, h1
        i += 2
    while i < n:
        out[i] = _mix(keys[i], rounds)
        i += 1
    return n // 2


@njit(nogil=True, cache=True)
def chain_quad(keys, out, rounds):
    """Four packets per iteration, their chains interleaved round by round (VPP's quad loop)."""
    n = keys.size
    i = 0
    while i + 4 <= n:
        h0, h1, h2, h3 = keys[i], keys[i + 1], keys[i + 2], keys[i + 3]
        for _ in range(rounds):
            h0 = (h0 ^ (h0 >> SHIFT)) * MIX
            h1 = (h1 ^ (h1 >> SHIFT)) * MIX
            h2 = (h2 ^ (h2 >> SHIFT)) * MIX
            h3 = (h3 ^ (h3 >> SHIFT)) * MIX
        out[i], out[i + 1], out[i + 2], out[i + 3] = h0, h1, h2, h3
        i += 4
    while i < n:
        out[i] = _mix(keys[i], rounds)
        i += 1
    return n // 4


CHAIN_VARIANTS = {"single": chain_single, "quad, unrolled": chain_unrolled4,
                  "dual, interleaved": chain_dual, "quad, interleaved": chain_quad}


@njit(nogil=True, cache=False)
def _time_chain(fn, keys, out, rounds, calls):
    """The fastest of ``calls`` calls, in TSC cycles."""
    best = np.int64(1) << 62
    for _ in range(calls):
        t0 = rdtsc()
        fn(keys, out, rounds)
        best = min(best, np.int64(rdtsc() - t0))
    return best


def measure_chains(rounds=(1, 4, 16, 64), n=1022, runs=None):
    """TSC cycles per packet of each variant (CHAIN_VARIANTS) for each chain
    length: the median of ``runs`` runs, each the fastest of several calls; n = 1022 packets (not a multiple of 4: the
    remainder loops run too). Every variant's hashes are checked against the
    single loop's. Returns {rounds: {variant: cycles per packet}}."""
    runs = runs or (3 if ex.quick() else 9)
    keys = np.random.default_rng(7).integers(0, 2 ** 63, n, dtype=np.int64).astype(np.uint64)
    want = np.zeros(n, np.uint64)
    res = {}
    for r in rounds:
        chain_single(keys, want, r)
        calls = max(3, int((2e5 if ex.quick() else 1e6) / (n * (r + 2))))   # about the same time per point
        res[r] = {}
        for name, fn in CHAIN_VARIANTS.items():
            out = np.zeros(n, np.uint64)
            _time_chain(fn, keys, out, r, 1)
            assert np.array_equal(out, want), f"{name}: its hashes differ from the single loop's"
            res[r][name] = float(np.median([_time_chain(fn, keys, out, r, calls) / n for _ in range(runs)]))
    return res


def chains_table(res):
    """The result of measure_chains as text, one row per chain length."""
    names = list(CHAIN_VARIANTS)
    head = f"{'rounds':>6} " + " ".join(f"{s:>18}" for s in names) + "   single / quad interleaved"
    rows = [head]
    for r, d in res.items():
        rows.append(f"{r:6d} " + " ".join(f"{d[s]:18.1f}" for s in names) +
                    f"   {d['single'] / d['quad, interleaved']:.2f}x")
    return "\n".join(rows) + "\n(TSC cycles per packet: median of runs, each the fastest of several calls)"



# ---- the data plane: what the graph compiler generates, and where the cycles go -------------

def node_source(graph="ip4", node="ip4-rewrite", **knobs):
    """The source labkit's graph compiler (``labkit.graph.compile.generate``)
    writes for one node's loop under these knobs (e.g. unroll=4)."""
    from labkit import Knobs
    from labkit.graph.compile import generate, resolve
    g = resolve(graph)
    names = [n.name for n in g.nodes]
    if node not in names:
        raise ValueError(f"graph {graph!r} has no node {node!r}; its nodes are: {', '.join(names)}")
    src = generate(g, Knobs(**knobs))
    start = src.index(f"def {node.replace('-', '_')}_node(")
    start = src.rindex("@JIT", 0, start)
    return src[start:src.index("\n\n", start)].rstrip() + "\n"


# AMD cores by CPUID family and model ranges, with their reorder buffers (AMD's optimization
# guides and Hot Chips talks: Zen 192 entries, Zen 2 224, Zen 3 256, Zen 4 320, Zen 5 448).
_AMD_CORES = (
    (0x17, ((0x00, 0x2F),), "Zen or Zen+", 192), (0x17, ((0x30, 0xFF),), "Zen 2", 224),
    (0x19, ((0x10, 0x1F), (0x60, 0x7F), (0xA0, 0xAF)), "Zen 4", 320),
    (0x19, ((0x00, 0xFF),), "Zen 3", 256), (0x1A, ((0x00, 0xFF),), "Zen 5", 448),
)


def core(cpuinfo="/proc/cpuinfo"):
    """(core name, reorder-buffer entries) of this machine's CPU when it is an AMD core labkit
    knows (by CPUID family and model, as /proc/cpuinfo gives them), else None."""
    try:
        text = open(cpuinfo).read()
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in text.split("\n\n")[0].splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    if fields.get("vendor_id") != "AuthenticAMD":
        return None
    try:
        fam, model = int(fields["cpu family"]), int(fields["model"])
    except (KeyError, ValueError):
        return None
    for f, ranges, name, rob in _AMD_CORES:
        if f == fam and any(lo <= model <= hi for lo, hi in ranges):
            return name, rob
    return None


def per_node_medians(dash):
    """{node: {knob value: median TSC cycles per packet in that node}} over a
    Dashboard's runs (from ``dash.raw``, each run's per-node runtime)."""
    by = {}
    for r in dash.raw:
        v = r["knobs"][dash.knob]
        for node in r["runtime"]:
            by.setdefault(node["node"], {}).setdefault(v, []).append(node["cycles_per_packet"])
    return {node: {v: float(np.median(c)) for v, c in d.items()} for node, d in by.items()}


def per_node_table(dash):
    """Per node, the median TSC cycles per packet over a Dashboard's runs, for
    each value of its knob (``per_node_medians``), as text."""
    values = dash.values
    rows = [f"{'node':<12} " + " ".join(f"{dash.knob + '=' + str(v):>10}" for v in values)]
    for node, d in per_node_medians(dash).items():
        rows.append(f"{node:<12} " + " ".join(f"{d[v]:10.1f}" if v in d else f"{'-':>10}" for v in values))
    return "\n".join(rows) + "\n(TSC cycles per packet spent in each node, median of the runs)"
