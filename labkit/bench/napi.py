"""``labkit bench veth --only napi``: the kernel's side of receiving, measured.

The DUT's veth receives in one of three ways (the ``napi`` knob,
``labkit.nic.napi``): through the backlog queue, drained by a softirq on the
*sender's* CPU ("off", the veth's default); through NAPI polls of up to 64
frames, still in the sender's softirq ("gro"); or through NAPI in a kernel
thread of its own, which the scheduler puts on whichever CPU it likes
("threaded"). Three questions:

1. What each path costs, and where: l2fwd on veth, the DUT's per-frame ring,
   waiting in ``poll()`` and busy polling, at 10 kpps, 100 kpps and
   saturation: p50 and p99 latency, the DUT thread's CPU share, the softirq
   time of all CPUs and the NAPI thread's, in % of one CPU, and kpps.
2. The socket's own busy polling (``SO_BUSY_POLL``, ``busy_poll_us``): the
   kernel spins in ``poll()`` for 50 or 200 µs before it sleeps (NAPI on,
   waiting, 10 kpps: a frame every 100 µs): CPU share and latency beside
   the same run without, and the socket's NAPI ID (``SO_INCOMING_NAPI_ID``;
   0: the spin cannot poll the device's NAPI, only re-check the ring).
3. Receive livelock (Mogul and Ramakrishnan, 1997): a DUT slower than the
   offered load (ip4 with interpreted kernels, ``jit=False``: about ten
   thousand frames per second), waiting in ``poll()``, offered more and more:
   if the kernel's receive work took the DUT's CPU, frames delivered per
   second would *fall* as the offered load rises. Backlog vs threaded NAPI.
"""
from ..run.knobs import NAPIS, Knobs
from ..run.lab import Lab

POLLS = ("wait", "busy")
LOADS = (10_000, 100_000, None)                # pps offered; None: saturation
QUICK_LOADS = (10_000,)
BUSY_POLL_USS = (50, 200)
QUICK_BUSY_POLL_USS = (200,)
LIVELOCK_LOADS = (10_000, 50_000, 200_000, None)
QUICK_LIVELOCK_LOADS = (None,)
LIVELOCK_NAPIS = ("off", "threaded")


def load_name(rate):
    return "saturation" if rate is None else f"{rate // 1000}k"


def measure(c, graph="l2fwd", rate=None, **knobs):
    """One run on veth with these knobs: latency, CPU shares (DUT, softirq, NAPI thread), kpps."""
    latency = graph == "l2fwd"
    with Lab(backend="veth", graph=graph, knobs=Knobs(rx_ring="frame", **knobs), rate=rate, latency=latency) as lab:
        r = lab.run(seconds=c.seconds)
    x, lt = r.extra, r.latency or {}
    return {"p50_ns": lt.get("p50"), "p99_ns": lt.get("p99"), "cpu_percent": r.cpu_percent,
            "softirq_cpu_percent": x["softirq_cpu_percent"], "napi_thread_cpu_percent": x["napi_thread_cpu_percent"],
            "gen_cpu_percent": x["gen_cpu_percent"], "napi_id": x["dut_napi_id"],
            "pps": r.forwarded / r.seconds if r.seconds > 0 else 0.0,
            "offered_pps": r.sent / r.seconds if r.seconds > 0 else 0.0,
            "conserved": r.conserved, "dropped": dict(r.dropped), "sent": r.sent, "forwarded": r.forwarded}


def _names(quick):
    paths = [(f"{napi} {poll} {load_name(rate)}", dict(napi=napi, poll=poll, rate=rate))
             for rate in (QUICK_LOADS if quick else LOADS) for napi in NAPIS
             for poll in (POLLS[:1] if quick else POLLS)]
    busy = [(f"gro wait 10k busy_poll {us}", dict(napi="gro", poll="wait", rate=10_000, busy_poll_us=us))
            for us in (QUICK_BUSY_POLL_USS if quick else BUSY_POLL_USS)]
    livelock = [(f"livelock {napi} {load_name(rate)}", dict(graph="ip4", jit=False, napi=napi, poll="wait", rate=rate))
                for rate in (QUICK_LIVELOCK_LOADS if quick else LIVELOCK_LOADS) for napi in LIVELOCK_NAPIS]
    return paths, busy, livelock


def configurations(quick):
    return [("napi", name, lambda c, kw=kw: measure(c, **kw)) for part in _names(quick) for name, kw in part]


def summarize(s, quick, ratio):
    """Medians per configuration, in three tables; and the busy-polling comparison."""
    keys = ("p50_ns", "p99_ns", "cpu_percent", "softirq_cpu_percent", "napi_thread_cpu_percent", "gen_cpu_percent",
            "napi_id", "pps", "offered_pps")
    paths, busy, livelock = ({name: s("napi", name, keys) for name, _ in part} for part in _names(quick))
    base = paths["gro wait 10k"]
    spins = {name.split()[-1]: d for name, d in busy.items()}       # µs, as text (the JSON keys)
    return {"paths": paths, "busy_poll": {"without": base, "with": spins,
                                          "napi_id": max((d.get("napi_id") or 0) for d in spins.values()),
                                          "p50_ratio": {us: ratio(base["p50_ns"], d["p50_ns"])
                                                        for us, d in spins.items()}},
            "livelock": livelock}


def print_section(o, res, f):
    nq = res["napi"]
    us = (lambda x: f(x / 1e3 if x else None, ".1f"))
    rows = [[name.split()[2], name.split()[0], name.split()[1], us(d["p50_ns"]), us(d["p99_ns"]),
             f(d["cpu_percent"], ".0f"), f(d["softirq_cpu_percent"], ".0f"), f(d["napi_thread_cpu_percent"], ".0f"),
             f(d["gen_cpu_percent"], ".0f"), f(d["pps"] / 1e3, ".0f")] for name, d in nq["paths"].items()]
    o.table("8. the kernel's receive path into the DUT's veth: l2fwd, per-frame ring (µs; CPU in % of one CPU)",
            ["offered", "napi", "poll", "p50 µs", "p99 µs", "DUT CPU%", "softirq%", "NAPI thread%", "gen CPU%",
             "kpps"], rows)
    bp = nq["busy_poll"]
    rows = [["off", us(bp["without"]["p50_ns"]), us(bp["without"]["p99_ns"]), f(bp["without"]["cpu_percent"], ".0f")]]
    rows += [[f"{n} µs", us(d["p50_ns"]), us(d["p99_ns"]), f(d["cpu_percent"], ".0f")] for n, d in bp["with"].items()]
    can = "it can poll the veth's NAPI" if bp["napi_id"] else "the spin re-checks the ring, it cannot poll the NAPI"
    o.table(f"   SO_BUSY_POLL on the DUT's socket (NAPI on, waiting, 10 kpps); its NAPI ID: "
            f"{f(bp['napi_id'], '.0f')} ({can})", ["busy poll", "p50 µs", "p99 µs", "DUT CPU%"], rows)
    rows = [[name.split()[2], name.split()[1], f(d["offered_pps"] / 1e3, ".0f"), f(d["pps"] / 1e3, ".1f"),
             f(d["cpu_percent"], ".0f"), f(d["softirq_cpu_percent"], ".0f"), f(d["napi_thread_cpu_percent"], ".0f")]
            for name, d in nq["livelock"].items()]
    o.table("   receive livelock? ip4 with interpreted kernels (a slow DUT), waiting in poll(), offered ever more",
            ["offered", "napi", "offered kpps", "delivered kpps", "DUT CPU%", "softirq%", "NAPI thread%"], rows)
    o.noise(*nq["paths"].values(), *nq["livelock"].values(), *bp["with"].values())
