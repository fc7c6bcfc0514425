"""``labkit bench veth --only latency``: what polling and the RX ring cost in latency and CPU.

The chapter's I/O trade-off, measured: busy polling gives the lowest latency
at a whole CPU whatever the load; waiting in ``poll()`` gives the CPU back and
pays a wake-up per frame; adaptive polling (busy for a while after the last
frame, then asleep) sits between. And the RX ring: a block ring
(TPACKET_V3) hands frames over a block at a time, when the block is full or
its timeout (1 ms) expires, which is interrupt coalescing; a per-frame ring
(TPACKET_V2) hands each frame over as it lands.

Each configuration: l2fwd on veth (``Lab("veth", "l2fwd", latency=True)``),
the generator stamping every frame and reading the stamps back on a
per-frame ring of its own, at 10 kpps, 100 kpps and saturation. Reported:
p50 and p99 latency, the DUT thread's CPU share, Mpps. Also: what stamping
costs on the in-memory NIC (ip4, closed loop, Mpps without stamps, stamping
every frame, and one frame in SAMPLED).
The targets (issue "Latency, interrupt coalescing and NAPI"):

- at 10 kpps, busy polling on the per-frame ring has a p99 at least 5x lower
  than waiting on the 1 ms block ring;
- adaptive polling (per-frame ring) uses at most 30% of a CPU at 10 kpps, with
  a p99 within 2x of busy polling's;
- stamping costs at most 5% of Mpps on the in-memory NIC.
"""
SAMPLED = 16
from ..run.knobs import Knobs
from ..run.lab import Lab

POLLS = ("busy", "wait", "adaptive")
RINGS = ("frame", "block")
LOADS = (10_000, 100_000, None)          # pps offered; None: saturation
QUICK_LOADS = (10_000, None)
TARGETS = {"busy_frame_vs_wait_block_p99": 5.0, "adaptive_cpu_percent": 30.0,
           "adaptive_vs_busy_p99": 2.0, "stamping_mpps_cost": 0.05}


def load_name(rate):
    return "saturation" if rate is None else f"{rate // 1000}k"


def measure(c, poll, ring, rate):
    """One configuration on veth: p50, p99 (ns), CPU share, Mpps."""
    with Lab(backend="veth", graph="l2fwd", knobs=Knobs(poll=poll, rx_ring=ring), rate=rate,
             latency=True) as lab:
        r = lab.run(seconds=c.seconds)
    lt = r.latency
    return {"p50_ns": lt["p50"], "p99_ns": lt["p99"], "max_ns": lt["max"], "samples": lt["samples"],
            "cpu_percent": r.cpu_percent, "pps": r.forwarded / r.seconds if r.seconds > 0 else 0.0,
            "conserved": r.conserved, "dropped": dict(r.dropped)}


def measure_stamping(c, every):
    """ip4 on the in-memory NIC, closed loop, without stamps (every=0) or stamping one frame in `every`."""
    with Lab(graph="ip4", latency=every or False) as lab:
        r = lab.run(seconds=c.seconds)
    return {"pps": r.pps, "cycles_per_packet": r.cycles_per_packet, "conserved": r.conserved}


def configurations(quick):
    out = []
    for rate in (QUICK_LOADS if quick else LOADS):
        for poll in POLLS:
            for ring in RINGS:
                out.append(("latency", f"{poll} {ring} {load_name(rate)}",
                            lambda c, p=poll, g=ring, r=rate: measure(c, p, g, r)))
    for every in (0, 1, SAMPLED):
        out.append(("latency", f"memory stamps {_stamps(every)}", lambda c, e=every: measure_stamping(c, e)))
    return out


def _stamps(every):
    return "off" if not every else "every frame" if every == 1 else f"1 in {every}"


def summarize(s, quick, ratio):
    """Medians per configuration; the targets' values. s(section, name, keys) -> medians."""
    keys = ("p50_ns", "p99_ns", "cpu_percent", "pps")
    table = {}
    for rate in (QUICK_LOADS if quick else LOADS):
        for poll in POLLS:
            for ring in RINGS:
                table[f"{poll} {ring} {load_name(rate)}"] = s("latency", f"{poll} {ring} {load_name(rate)}", keys)
    off, every, sampled = (s("latency", f"memory stamps {_stamps(x)}", ("pps", "cycles_per_packet"))
                           for x in (0, 1, SAMPLED))
    busy, wait, adaptive = (table[f"{p} 10k"] for p in ("busy frame", "wait block", "adaptive frame"))
    cost = (lambda d: None if ratio(d["pps"], off["pps"]) is None else 1.0 - ratio(d["pps"], off["pps"]))
    return {"configurations": table,
            "stamping": {"off": off, "every": every, "sampled": sampled, "sampled_every": SAMPLED,
                         "mpps_cost": cost(every), "sampled_mpps_cost": cost(sampled)},
            "busy_frame_vs_wait_block_p99": ratio(wait["p99_ns"], busy["p99_ns"]),
            "adaptive_cpu_percent": adaptive["cpu_percent"],
            "adaptive_vs_busy_p99": ratio(adaptive["p99_ns"], busy["p99_ns"])}


def target_rows(lt, row):
    """The targets, through row(name, value, limit, kind)."""
    row("latency: p99 wait+block / busy+frame at 10 kpps", lt["busy_frame_vs_wait_block_p99"],
        TARGETS["busy_frame_vs_wait_block_p99"], "at least")
    row("latency: adaptive CPU% at 10 kpps", lt["adaptive_cpu_percent"], TARGETS["adaptive_cpu_percent"],
        "at most")
    row("latency: p99 adaptive / busy at 10 kpps", lt["adaptive_vs_busy_p99"], TARGETS["adaptive_vs_busy_p99"],
        "at most")
    pct = (lambda x: None if x is None else 100.0 * x)
    row("latency: stamping every frame, % of Mpps lost (in memory)", pct(lt["stamping"]["mpps_cost"]),
        100 * TARGETS["stamping_mpps_cost"], "at most")
    row(f"latency: stamping 1 in {SAMPLED}, % of Mpps lost (in memory)", pct(lt["stamping"]["sampled_mpps_cost"]),
        100 * TARGETS["stamping_mpps_cost"], "at most")


def print_section(o, res, f):
    lt = res["latency"]
    rows = []
    for name, d in lt["configurations"].items():
        poll, ring, load = name.split()
        rows.append([load, poll, ring, f(d["p50_ns"] / 1e3 if d["p50_ns"] else None, ".1f"),
                     f(d["p99_ns"] / 1e3 if d["p99_ns"] else None, ".1f"), f(d.get("cpu_percent"), ".0f"),
                     f(d["pps"] / 1e3, ".0f")])
    o.table("7. latency: l2fwd on veth, the generator stamping every frame (µs; CPU% of the DUT's thread)",
            ["offered", "poll", "RX ring", "p50 µs", "p99 µs", "CPU%", "kpps"], rows)
    st = lt["stamping"]
    o.print(f"   stamping on the in-memory NIC (ip4, closed loop): {st['off']['pps'] / 1e6:.2f} Mpps without, "
            f"{st['every']['pps'] / 1e6:.2f} stamping every frame ({100 * st['mpps_cost']:.1f}% less), "
            f"{st['sampled']['pps'] / 1e6:.2f} one in {st['sampled_every']} ({100 * st['sampled_mpps_cost']:.1f}% less); "
            "the data plane's TSC cycles per packet meanwhile: "
            + " / ".join(f"{st[k]['cycles_per_packet']:.1f}" for k in ("off", "every", "sampled"))
            + " (the rest is the NIC's own work)")
    o.noise(*lt["configurations"].values(), st["off"], st["every"], st["sampled"])
