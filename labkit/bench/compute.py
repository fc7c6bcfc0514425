"""``labkit bench [--quick] [--json] [--runs N]``: the data plane's numbers, side by side.

(``labkit bench veth ...`` is the real-NIC benchmark: ``labkit.bench.net``.)

Everything is measured in one process, configurations interleaved round by
round (so a noisy neighbour hurts all of them alike), and each number is the
median over ``--runs`` rounds. Four sections:

1. TSC cycles per packet and Mpps of graphs l2fwd and ip4 on the in-memory NIC
   (``Lab.run(packets=...)``) at vector sizes 1..256;
2. JIT vs pure Python: the same Lab with ``Knobs(jit=False)`` on a few
   thousand packets, against the JIT;
3. numba vs C: the generated ``dispatch`` against the same kernels in C
   (``labkit.bench.ckernels``), one 256-packet vector timed over and over with the
   frames restored between passes (untimed). Two C sides: the fair twin of the
   whole dispatch (the same frames, moves between them, drop counters and
   per-node TSC readings; single loops, no prefetch), and the kernels alone,
   which only decide. The numba side runs twice: with the default knobs, and
   without prefetch as the C twin (on one hot vector a prefetch has nothing to
   hide and costs its instructions); the target compares the second.
4. techniques side by side, each against itself off: the quad loop against
   the single loop and prefetching against none on ip4 with 1,000,000 flows
   (tables and headers that miss the caches), ip4-input's simd variant
   against its scalar one on a validation-heavy mix (30% malformed frames of
   every kind, shuffled): whole graph and that node alone;
5. targets, each "met" or "not met". Numbers are printed as measured.

TSC cycles tick at a constant rate, not the core's clock (see
``labkit.run.measure``).
"""
import argparse
import sys
import time

import numpy as np

from ..graph.nodes import GRAPHS as GN
from ..run import noise
from ..run.knobs import Knobs
from ..run.lab import Lab
from ..run.measure import tsc_hz
from . import ckernels as ck
from .report import Progress, emit, med as _med, print_table

SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
QUICK_SIZES = (1, 32, 256)
GRAPHS = ("l2fwd", "ip4")
TARGETS = {                    # issue 14's, on this machine's kind (2 vCPUs of an AMD EPYC)
    "l2fwd_cycles": 12.0,      # TSC cycles/packet at vector 256, at most
    "ip4_cycles": 35.0,
    "numba_vs_c": 1.25,        # numba / C, at most
    "jit_speedup": 100.0,      # JIT / pure Python packet rate, at least
    "unroll": 1.15,            # ip4, 1M flows: unroll=4 over unroll=1, at least
    "prefetch": 1.2,           # ip4, 1M flows: prefetch on over off, at least
    "simd": 1.5,               # ip4, validation-heavy: the simd variant over the scalar one, at least
}
# Section 4: (name, Lab arguments, the knobs off, the knobs on, the metric): each pair measured
# in the same rounds. The ratio is cycles off / cycles on (> 1: the technique is faster).
BIG = dict(flows=1_000_000)
HEAVY = dict(malformed=0.3, mix="mixed", order="shuffled")
RATIOS = (
    ("unroll", "quad loop over single loop, ip4, 1M flows", BIG, Knobs(unroll=1), Knobs(unroll=4), None),
    ("prefetch", "prefetch over none, ip4, 1M flows", BIG, Knobs(prefetch=False), Knobs(prefetch=True), None),
    ("interleave", "quad loop interleaved over repeated, no prefetch, 1M flows: ip4-lookup", BIG,
     Knobs(prefetch=False), Knobs(prefetch=False, interleave=True), "ip4-lookup"),
    ("simd", "simd over scalar ip4-input, 30% malformed shuffled: graph", HEAVY, Knobs(variant="scalar"),
     Knobs(variant="simd"), None),
    ("simd_node", "  the same, ip4-input alone", HEAVY, Knobs(variant="scalar"), Knobs(variant="simd"), "ip4-input"),
)
PY_PACKETS = 3000


def _packets(batch, graph, quick):
    """Packets per measured run: ~0.1-0.2 s each on a ~2.6 GHz core."""
    n = 400_000 if batch < 8 else 4_000_000
    if graph == "ip4":
        n //= 3
    return n // 2 if quick else n


def bench_graphs(sizes, runs, quick, progress):
    """Section 1: {graph: {batch: {...medians...}}}."""
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
    ok, why = ck.available()
    if not ok:
        return {"skipped": why}
    reps = 2000 if quick else 5000
    progress("numba vs C: preparing")
    lab = Lab("memory", "ip4", Knobs(batch=n))       # its FIB and traffic (destinations with routes)
    vecs = {g: ck.Vector(lab.traffic, n) for g in GRAPHS}
    tables = {"l2fwd": None, "ip4": lab.tables}
    for g in GRAPHS:                                   # compile the numba harness, warm both
        ck.time_numba(g, vecs[g], 10, tables[g])
        ck.time_c(g, vecs[g], 10, tables[g])
    raw = {g: ([], [], [], [], [], []) for g in GRAPHS}
    bare = Knobs(batch=n, prefetch=False)              # the C twin's shape: nothing prefetched
    for r in range(runs):
        for g in GRAPHS:
            progress(f"numba vs C: round {r + 1}/{runs}, {g}")
            c, _ = ck.time_c(g, vecs[g], reps, tables[g])
            cd, _, _, cstats, _, _ = ck.time_c_dispatch(g, vecs[g], reps, tables[g])
            nb, _, stats = ck.time_numba(g, vecs[g], reps, tables[g])
            raw[g][0].append(nb / (reps * n))
            raw[g][1].append(c / (reps * n))
            raw[g][2].append(stats[:, 2] / np.maximum(stats[:, 1], 1))
            raw[g][3].append(cd / (reps * n))
            raw[g][4].append(cstats[:, 2] / np.maximum(cstats[:, 1], 1))
            raw[g][5].append(ck.time_numba(g, vecs[g], reps, tables[g], knobs=bare)[0] / (reps * n))
    out = {"vector": n, "reps": reps, "c_ticks_are_ns": ck.c_ticks_are_ns()}
    for g, (nb, c, st, cd, cst, nbp) in raw.items():
        nbm, cm, cdm, nbpm = _med(nb), _med(c), _med(cd), _med(nbp)
        out[g] = {"numba_cycles_per_packet": nbm, "c_cycles_per_packet": cm, "c_dispatch_cycles_per_packet": cdm,
                  "numba_no_prefetch_cycles_per_packet": nbpm,
                  "ratio": nbpm / cdm if cdm > 0 else float("nan"),
                  "ratio_decide_only": nbm / cm if cm > 0 else float("nan"),
                  "numba_node_cycles_per_packet": {name: _med([s[i] for s in st])
                                                   for i, name in enumerate(GN[g])},
                  "c_node_cycles_per_packet": {name: _med([s[i] for s in cst]) for i, name in enumerate(GN[g])}}
    lab.close()
    return out


def _cycles(res, node):
    """A run's TSC cycles per packet: the whole data plane's, or one node's."""
    if node is None:
        return res.cycles_per_packet
    return next(r.cycles_per_packet for r in res.runtime if r.name == node)


def bench_ratios(runs, quick, progress):
    """Section 4: {name: {"off", "on", "ratio", "label"}}: each technique off and on, ip4 on the
    in-memory NIC at vector 256, the labs of all pairs measured round by round (medians)."""
    labs = {}
    for name, label, kw, off, on, _ in RATIOS:
        for side, k in (("off", off), ("on", on)):
            key = (tuple(sorted(kw.items())), k)
            if key not in labs:
                progress(f"techniques: building ip4 {label.strip()}, {side}")
                labs[key] = Lab("memory", "ip4", k, **kw)
                labs[key].run(packets=20_000)
    raw = {key: [] for key in labs}
    for r in range(runs):
        for key, lab in labs.items():
            progress(f"techniques: round {r + 1}/{runs}")
            raw[key].append(lab.run(packets=_packets(256, "ip4", quick)))
    out = {}
    for name, label, kw, off, on, node in RATIOS:
        c = {side: _med([_cycles(x, node) for x in raw[(tuple(sorted(kw.items())), k)]])
             for side, k in (("off", off), ("on", on))}
        out[name] = {"label": label, "off": c["off"], "on": c["on"],
                     "ratio": c["off"] / c["on"] if c["on"] > 0 else float("nan")}
    for lab in labs.values():
        lab.close()
    return out


def _targets(graphs, jit, cres, ratios):
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
            row(f"numba (no prefetch) vs the C twin of the dispatch, {g}", v, f"<= {TARGETS['numba_vs_c']}x",
                v <= TARGETS["numba_vs_c"], "x")
    for g in GRAPHS:
        v = jit[g]["speedup"]
        row(f"JIT vs pure Python, {g}", v, f">= {TARGETS['jit_speedup']:g}x", v >= TARGETS["jit_speedup"], "x")
    for name in ("unroll", "prefetch", "simd", "simd_node"):
        v, lim = ratios[name]["ratio"], TARGETS[name.split("_")[0]]
        row(ratios[name]["label"].strip(), v, f">= {lim:g}x", v >= lim, "x")
    return rows


# --- false sharing, in isolation (notebook 14) ------------------------------------------


def _print(res, out=sys.stdout):
    def table(title, cols, rows):
        print_table(title, cols, rows, out)

    m = res["meta"]
    print(f"labkit bench: {m['runs']} runs per number (medians), TSC {m['tsc_hz'] / 1e9:.3f} GHz, "
          f"{'quick, ' if m['quick'] else ''}{m['seconds']:.0f} s; other processes meanwhile: "
          f"{'n/a' if m['other_cpu_percent'] is None else format(m['other_cpu_percent'], '.0f') + '% of a CPU'}",
          file=out)
    for note in m["load_notes"]:
        print(f"WARNING: {note}", file=out)
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
        table(f"3. numba dispatch vs C, vector {c['vector']}"
              + (" (C side in ns: not x86)" if c["c_ticks_are_ns"] else ""),
              ["graph", "numba", "numba, no prefetch", "C dispatch", "ratio", "C kernels only", "numba/C kernels"],
              [[name, f"{c[name]['numba_cycles_per_packet']:.1f}",
                f"{c[name]['numba_no_prefetch_cycles_per_packet']:.1f}",
                f"{c[name]['c_dispatch_cycles_per_packet']:.1f}", f"{c[name]['ratio']:.2f}x",
                f"{c[name]['c_cycles_per_packet']:.1f}", f"{c[name]['ratio_decide_only']:.2f}x"] for name in GRAPHS])
        for side, key in (("numba", "numba_node_cycles_per_packet"), ("C dispatch", "c_node_cycles_per_packet")):
            print(f"   {side} per node (cycles/packet, incl. its enqueue step): "
                  + "; ".join(name + ": " + ", ".join(f"{k} {v:.1f}" for k, v in c[name][key].items())
                              for name in GRAPHS), file=out)
        print("   TSC cycles per packet. C dispatch: the same frames, moves, drop counters and per-node TSC "
              "readings as the numba dispatch, no prefetch; ratio: numba without prefetch against it; C kernels "
              "only: each packet's verdict, nothing moved or counted (against numba with its default knobs).",
              file=out)

    table("4. techniques at vector 256: TSC cycles per packet off and on",
          ["technique", "off", "on", "off/on"],
          [[r["label"], f"{r['off']:.1f}", f"{r['on']:.1f}", f"{r['ratio']:.2f}x"] for r in res["ratios"].values()])

    def fmt(t):
        if t["value"] is None:
            return "-"
        return f"{t['value']:.2f}{'x' if t['unit'] == 'x' else ''}"
    table("5. targets", ["target", "measured", "target", "status"],
          [[t["target"], fmt(t), t["limit"],
            "skipped" if t["met"] is None else ("met" if t["met"] else "not met")] for t in res["targets"]])


def run(quick=False, runs=None, progress=None):
    """All sections; returns the result dict (what --json prints)."""
    runs = runs if runs is not None else (3 if quick else 5)
    progress = progress or (lambda s: None)
    t0 = time.monotonic()
    sizes = QUICK_SIZES if quick else SIZES
    hz = tsc_hz()
    with noise.MachineLoad() as load:                  # the rest of the machine, all along
        graphs = bench_graphs(sizes, runs, quick, progress)
        jit = bench_jit(runs, quick, progress)
        cres = bench_c(runs, quick, progress)
        ratios = bench_ratios(runs, quick, progress)
    res = {"meta": {"runs": runs, "quick": quick, "sizes": list(sizes), "tsc_hz": hz,
                    "seconds": time.monotonic() - t0, "targets": TARGETS, **load.to_dict(),
                    "load_notes": load.notes("the benchmark")},
           "graphs": graphs, "jit": jit, "c": cres, "ratios": ratios}
    res["targets"] = _targets(graphs, jit, cres, ratios)
    return res


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
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
    return emit(res, args.json, _print)


if __name__ == "__main__":
    sys.exit(main())
