"""``labkit bench [--quick] [--json] [--runs N]``: the data plane's numbers, side by side.

(``labkit bench veth ...`` is the real-NIC benchmark: ``labkit.netbench``.)

Everything is measured in one process, configurations interleaved round by
round (so a noisy neighbour hurts all of them alike), and each number is the
median over ``--runs`` rounds. Four sections:

1. TSC cycles per packet and Mpps of graphs l2fwd and ip4 on the in-memory NIC
   (``Lab.run(packets=...)``) at vector sizes 1..256;
2. JIT vs pure Python: the same Lab with ``Knobs(jit=False)`` on a few
   thousand packets, against the JIT;
3. numba vs C: the generated ``dispatch`` against the same kernels in C
   (``labkit.ckernels``), one 256-packet vector timed over and over with the
   frames restored between passes (untimed). The numba side is the real
   dispatch: it also moves packets between node frames, counts drops and
   reads the TSC for per-node statistics; the C side only decides.
4. targets, each "met" or "not met". Numbers are printed as measured.

TSC cycles tick at a constant rate, not the core's clock (see
``labkit.run.measure``).
"""
import argparse
import json
import statistics
import sys
import time

import numpy as np

SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
QUICK_SIZES = (1, 32, 256)
GRAPHS = ("l2fwd", "ip4")
TARGETS = {
    "l2fwd_cycles": 20.0,      # TSC cycles/packet at vector 256, at most
    "ip4_cycles": 60.0,
    "numba_vs_c": 1.25,        # numba / C, at most
    "jit_speedup": 100.0,      # JIT / pure Python packet rate, at least
}
PY_PACKETS = 3000


class Progress:
    """One line on stderr, rewritten in place on a terminal."""

    def __init__(self, quiet=False):
        self.tty = sys.stderr.isatty()
        self.quiet = quiet
        self.t0 = time.monotonic()
        self.last = ""

    def __call__(self, text):
        if self.quiet:
            return
        line = f"[bench {time.monotonic() - self.t0:5.1f}s] {text}"
        if self.tty:
            sys.stderr.write("\r" + line.ljust(max(len(self.last), len(line))))
        elif text.split(":")[0] != self.last.split("] ")[-1].split(":")[0]:
            sys.stderr.write(line + "\n")      # not a terminal: one line per step
        sys.stderr.flush()
        self.last = line

    def done(self):
        if self.tty and not self.quiet:
            sys.stderr.write("\r" + " " * len(self.last) + "\r")
            sys.stderr.flush()


def _med(xs):
    return float(statistics.median(xs)) if xs else float("nan")


def _packets(batch, graph, quick):
    """Packets per measured run: ~0.1-0.2 s each on a ~2.6 GHz core."""
    n = 400_000 if batch < 8 else 4_000_000
    if graph == "ip4":
        n //= 3
    return n // 2 if quick else n


def bench_graphs(sizes, runs, quick, progress):
    """Section 1: {graph: {batch: {...medians...}}}."""
    from .run.knobs import Knobs
    from .run.lab import Lab
    labs = {}
    for g in GRAPHS:
        for b in sizes:
            progress(f"graphs: building {g} batch {b}")
            lab = Lab("memory", g, Knobs(batch=b))
            lab.run(packets=min(20_000, _packets(b, g, quick)))   # warm: compile/load, caches, pages
            labs[g, b] = lab
    raw = {k: [] for k in labs}
    for r in range(runs):
        for (g, b), lab in labs.items():
            progress(f"graphs: round {r + 1}/{runs}, {g} batch {b}")
            res = lab.run(packets=_packets(b, g, quick))
            raw[g, b].append(res)
    out = {}
    for (g, b), rs in raw.items():
        node_cyc = {n.name: _med([x.runtime[i].cycles_per_packet for x in rs])
                    for i, n in enumerate(rs[0].runtime)}
        out.setdefault(g, {})[b] = {
            "cycles_per_packet": _med([x.cycles_per_packet for x in rs]),
            "mpps": _med([x.pps / 1e6 for x in rs]),
            "node_cycles_per_packet": node_cyc,
            "runs": [x.cycles_per_packet for x in rs],
            "conserved": all(x.conserved for x in rs), "pool_ok": all(x.pool_ok for x in rs),
        }
    for lab in labs.values():
        lab.close()
    return out


def bench_jit(runs, quick, progress):
    """Section 2: pure Python vs JIT, same Lab settings, per graph."""
    from .run.knobs import Knobs
    from .run.lab import Lab
    out = {}
    labs = {}
    for g in GRAPHS:
        progress(f"jit: building {g} (jit on and off)")
        on, off = Lab("memory", g, Knobs()), Lab("memory", g, Knobs(jit=False))
        on.run(packets=10_000)
        off.run(packets=256)
        labs[g] = (on, off)
    raw = {g: ([], []) for g in GRAPHS}
    py_packets = PY_PACKETS if not quick else PY_PACKETS // 2
    for r in range(runs):
        for g, (on, off) in labs.items():
            progress(f"jit: round {r + 1}/{runs}, {g}")
            raw[g][1].append(off.run(packets=py_packets))
            raw[g][0].append(on.run(packets=_packets(256, g, quick)))
    for g, (ons, offs) in raw.items():
        c_on = _med([x.cycles_per_packet for x in ons])
        c_off = _med([x.cycles_per_packet for x in offs])
        out[g] = {"jit_cycles_per_packet": c_on, "python_cycles_per_packet": c_off,
                  "jit_mpps": _med([x.pps / 1e6 for x in ons]),
                  "python_mpps": _med([x.pps / 1e6 for x in offs]),
                  "python_packets": py_packets,
                  "speedup": c_off / c_on if c_on > 0 else float("nan")}
    for on, off in labs.values():
        on.close()
        off.close()
    return out


def bench_c(runs, quick, progress, n=256):
    """Section 3: numba dispatch vs C kernels on one vector of n packets."""
    from . import ckernels as ck
    ok, why = ck.available()
    if not ok:
        return {"skipped": why}
    from .run.knobs import Knobs
    from .run.lab import Lab
    reps = 2000 if quick else 5000
    progress("numba vs C: preparing")
    lab = Lab("memory", "ip4", Knobs(batch=n))       # its FIB and traffic (destinations with routes)
    vecs = {g: ck.Vector(lab.traffic, n) for g in GRAPHS}
    tables = {"l2fwd": None, "ip4": lab.tables}
    for g in GRAPHS:                                   # compile the numba harness, warm both
        ck.time_numba(g, vecs[g], 10, tables[g])
        ck.time_c(g, vecs[g], 10, tables[g])
    raw = {g: ([], [], []) for g in GRAPHS}
    for r in range(runs):
        for g in GRAPHS:
            progress(f"numba vs C: round {r + 1}/{runs}, {g}")
            c, _ = ck.time_c(g, vecs[g], reps, tables[g])
            nb, _, stats = ck.time_numba(g, vecs[g], reps, tables[g])
            raw[g][0].append(nb / (reps * n))
            raw[g][1].append(c / (reps * n))
            raw[g][2].append(stats[:, 2] / np.maximum(stats[:, 1], 1))
    out = {"vector": n, "reps": reps, "c_ticks_are_ns": ck.c_ticks_are_ns()}
    from .graph.nodes import GRAPHS as GN
    for g, (nb, c, st) in raw.items():
        nbm, cm = _med(nb), _med(c)
        out[g] = {"numba_cycles_per_packet": nbm, "c_cycles_per_packet": cm,
                  "ratio": nbm / cm if cm > 0 else float("nan"),
                  "numba_node_cycles_per_packet": {name: _med([s[i] for s in st])
                                                   for i, name in enumerate(GN[g])}}
    lab.close()
    return out


def _targets(graphs, jit, cres):
    rows = []

    def row(name, value, target, ok, unit):
        rows.append({"target": name, "value": value, "limit": target, "unit": unit,
                     "met": bool(ok) if value == value else None})

    for g in GRAPHS:
        v = graphs.get(g, {}).get(256, {}).get("cycles_per_packet")
        if v is not None:
            lim = TARGETS[f"{g}_cycles"]
            row(f"{g} at vector 256", v, f"<= {lim:g}", v <= lim, "TSC cycles/packet")
    for g in GRAPHS:
        if "skipped" in cres:
            rows.append({"target": f"numba vs C, {g}", "value": None, "limit": f"<= {TARGETS['numba_vs_c']}x",
                         "unit": "", "met": None, "note": cres["skipped"]})
        else:
            v = cres[g]["ratio"]
            row(f"numba vs C, {g}", v, f"<= {TARGETS['numba_vs_c']}x", v <= TARGETS["numba_vs_c"], "x")
    for g in GRAPHS:
        v = jit[g]["speedup"]
        row(f"JIT vs pure Python, {g}", v, f">= {TARGETS['jit_speedup']:g}x", v >= TARGETS["jit_speedup"], "x")
    return rows


# --- false sharing, in isolation (notebook 14) ------------------------------------------

def _count_kernel():
    from numba import njit
    from labkit.memory.intrinsics import load_acquire, store_release

    @njit(nogil=True, cache=True)
    def count(a, i, n):
        """n increments of a[i], each a load and a store the other core can see."""
        for _ in range(n):
            store_release(a, i, load_acquire(a, i) + 1)
    return count


def measure_false_sharing(n=100_000_000, runs=5):
    """Nanoseconds per increment when two threads each bump their own counter,
    the two counters on one cache line ("one line") or on lines of their own
    ("own lines"); medians of `runs` interleaved timings. Nothing else runs in
    the loop, so every increment may find the line in the other core's cache:
    the worst case, which a data plane that bumps its counters once per burst
    (``labkit.run.workers``) mostly avoids."""
    import threading
    from labkit.run.workers import own_lines
    count = _count_kernel()
    a = own_lines((16,), np.int64)           # two cache lines
    count(a, 0, 1)                           # compile (or load the cache) first

    def once(i, j):
        ts = [threading.Thread(target=count, args=(a, k, n)) for k in (i, j)]
        t0 = time.perf_counter()
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        return (time.perf_counter() - t0) / n * 1e9
    a[:] = 0
    one, own = [], []
    for _ in range(runs):
        one.append(once(0, 1))
        own.append(once(0, 8))
    # one writer per counter: sharing a line may cost time, never an increment
    assert a[0] == 2 * runs * n and a[1] == a[8] == runs * n, "a counter lost increments"
    return {"one line": statistics.median(one), "own lines": statistics.median(own)}


def jsonable(o):
    """Results as plain JSON: string keys, numpy scalars as numbers, NaN as null."""
    if isinstance(o, dict):
        return {str(k): jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [jsonable(v) for v in o]
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, float) and o != o:
        return None
    return o


def print_table(title, cols, rows, out=sys.stdout):
    """A titled table with right-aligned columns (rich when installed, else plain text)."""
    try:
        from rich import box
        from rich.console import Console
        from rich.table import Table
    except ImportError:           # plain text
        print(f"\n{title}", file=out)
        w = [max(len(str(c)), *(len(str(r[i])) for r in rows)) if rows else len(str(c))
             for i, c in enumerate(cols)]
        print("  ".join(str(c).rjust(w[i]) for i, c in enumerate(cols)), file=out)
        for r in rows:
            print("  ".join(str(x).rjust(w[i]) for i, x in enumerate(r)), file=out)
        return
    con = Console(file=out, highlight=False, width=120)
    con.print("\n" + title, soft_wrap=True)   # (a table's own title wraps to the table's width)
    t = Table(box=box.SIMPLE_HEAD)
    for c in cols:
        t.add_column(c, justify="right")
    for r in rows:
        t.add_row(*[str(x) for x in r])
    con.print(t)


def _print(res, out=sys.stdout):
    def table(title, cols, rows):
        print_table(title, cols, rows, out)

    m = res["meta"]
    print(f"labkit bench: {m['runs']} runs per number (medians), TSC {m['tsc_hz'] / 1e9:.3f} GHz, "
          f"{'quick, ' if m['quick'] else ''}{m['seconds']:.0f} s", file=out)
    g = res["graphs"]
    rows = []
    for b in m["sizes"]:
        r = [b]
        for name in GRAPHS:
            x = g[name][b]
            r += [f"{x['cycles_per_packet']:.1f}", f"{x['mpps']:.2f}"]
        rows.append(r)
    table("1. TSC cycles per packet (data plane) and Mpps, in-memory NIC",
          ["vector", "l2fwd cyc/pkt", "l2fwd Mpps", "ip4 cyc/pkt", "ip4 Mpps"], rows)
    nodes = g["ip4"][m["sizes"][-1]]["node_cycles_per_packet"]
    print("   ip4 per node at vector %d (cycles/packet): " % m["sizes"][-1]
          + ", ".join(f"{k} {v:.1f}" for k, v in nodes.items()), file=out)
    j = res["jit"]
    table("2. JIT vs pure Python (same Lab, Knobs(jit=False))",
          ["graph", "python cyc/pkt", "jit cyc/pkt", "speedup"],
          [[name, f"{j[name]['python_cycles_per_packet']:.0f}", f"{j[name]['jit_cycles_per_packet']:.1f}",
            f"{j[name]['speedup']:.0f}x"] for name in GRAPHS])
    c = res["c"]
    if "skipped" in c:
        print(f"\n3. numba vs C: skipped: {c['skipped']}", file=out)
    else:
        table(f"3. numba dispatch vs C kernels, vector {c['vector']}"
              + (" (C side in ns: not x86)" if c["c_ticks_are_ns"] else ""),
              ["graph", "numba cyc/pkt", "C cyc/pkt", "numba/C"],
              [[name, f"{c[name]['numba_cycles_per_packet']:.1f}", f"{c[name]['c_cycles_per_packet']:.1f}",
                f"{c[name]['ratio']:.2f}x"] for name in GRAPHS])
        print("   numba per node (cycles/packet, incl. its enqueue step): "
              + "; ".join(name + ": " + ", ".join(f"{k} {v:.1f}" for k, v in
                                                  c[name]["numba_node_cycles_per_packet"].items())
                          for name in GRAPHS), file=out)
        print("   the numba side is the real dispatch: it also moves packets between node frames "
              "and counts drops; the C side only decides.", file=out)

    def fmt(t):
        if t["value"] is None:
            return "-"
        return f"{t['value']:.2f}{'x' if t['unit'] == 'x' else ''}"
    table("4. targets", ["target", "measured", "target", "status"],
          [[t["target"], fmt(t), t["limit"],
            "skipped" if t["met"] is None else ("met" if t["met"] else "not met")] for t in res["targets"]])


def run(quick=False, runs=None, progress=None):
    """All sections; returns the result dict (what --json prints)."""
    from .run.measure import tsc_hz
    runs = runs if runs is not None else (3 if quick else 5)
    progress = progress or (lambda s: None)
    t0 = time.monotonic()
    sizes = QUICK_SIZES if quick else SIZES
    hz = tsc_hz()
    graphs = bench_graphs(sizes, runs, quick, progress)
    jit = bench_jit(runs, quick, progress)
    cres = bench_c(runs, quick, progress)
    res = {"meta": {"runs": runs, "quick": quick, "sizes": list(sizes), "tsc_hz": hz,
                    "seconds": time.monotonic() - t0, "targets": TARGETS},
           "graphs": graphs, "jit": jit, "c": cres}
    res["targets"] = _targets(graphs, jit, cres)
    return res


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["veth"]:              # the ring driver on veth, against C tools and the kernel
        from . import netbench
        return netbench.main(argv[1:])
    p = argparse.ArgumentParser(prog="labkit bench", description=(
        "Measure the data plane side by side in one run: cycles per packet and Mpps by "
        "vector size, JIT vs pure Python, numba vs C kernels; medians of --runs. "
        "`labkit bench veth --help`: the ring driver on veth against netsniff-ng, trafgen "
        "and the kernel's bridge (root)."))
    p.add_argument("--quick", action="store_true", help="vector sizes 1, 32, 256 and 3 runs (under a minute)")
    p.add_argument("--json", action="store_true", help="print the results as JSON instead of tables")
    p.add_argument("--runs", type=int, default=None, metavar="N",
                   help="rounds per number, the median is reported (default 5, quick 3)")
    args = p.parse_args(argv)
    if args.runs is not None and not 1 <= args.runs <= 100:
        p.error(f"--runs {args.runs}: use 1 to 100")
    prog = Progress()
    try:
        res = run(quick=args.quick, runs=args.runs, progress=prog)
    except KeyboardInterrupt:
        prog.done()
        return 130
    prog.done()
    if args.json:
        json.dump(jsonable(res), sys.stdout, indent=2)
        print()
    else:
        _print(res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
