"""``labkit bench veth --only paths``: kernel bypass beside the kernel's own fast paths.

The same generator (labkit's, 60-byte IPv4/UDP frames, as fast as the kernel
takes them) sends through the DUT's namespace along each path in turn, and
counts what comes back at lk-g1:

=========================  =============================================  =========
path                       what forwards                                  graphs
=========================  =============================================  =========
kernel IP forwarding       the kernel's router: ip_forward=1, a default   ip4's job
                           route out of lk-d1, a static neighbour
Linux bridge               the kernel's bridge, lk-d0 and lk-d1 its ports l2fwd's
labkit recv()/send()       labkit, one system call per frame (copy=True)  l2fwd, ip4
labkit AF_PACKET rings     labkit on its rings (the default)              l2fwd, ip4
labkit AF_XDP              not built yet (issue 13): not measured         -
XDP in the kernel          labkit's graph as an XDP program in lk-d0's    l2fwd, ip4
                           driver (backend xdp); with threaded NAPI;
                           ip4 with the kernel's LPM trie as its FIB
=========================  =============================================  =========

For each: Mpps (frames back at the generator / seconds), the CPU it took
(the DUT thread's, where there is one, plus the kernel's: softirq time on all
CPUs and lk-d0's NAPI threads, in % of one CPU) and that CPU in TSC cycles
per forwarded frame. The generator's own sending is in none of them. The
kernel's softirq time holds the generator's receiving too (lk-g1), the same
for every path.

The kernel paths forward frames a Lab does not make (the bench's traffic,
addressed to 10.255.x.x and beyond); the labkit paths send the Lab's own
frames of the same size, to destinations in its FIB.
"""
import subprocess
from contextlib import contextmanager

from ..nic import labnet, napi
from ..run.knobs import Knobs
from ..run.lab import Lab
from ..run.measure import tsc_hz

# the router's addresses, its next hop behind lk-d1 (the generator's lk-g1) and the MAC it has
ROUTER_ADDRS = {labnet.DUT_RX: "10.255.0.1/24", labnet.DUT_TX: "10.255.1.1/24"}
NEXT_HOP, NEXT_HOP_MAC = "10.255.1.2", "02:00:00:00:00:02"
ROUTER_SYSCTLS = ("ipv4/ip_forward", "ipv4/conf/all/rp_filter", "ipv4/conf/default/rp_filter",
                  f"ipv4/conf/{labnet.DUT_RX}/rp_filter")

# (name, kind, arguments): kind "kernel" runs the generator alone through a kernel path,
# "lab" a Lab on that backend
PATHS = (
    ("kernel IP forwarding", "kernel", dict(setup="router", graph="ip4")),
    ("Linux bridge", "kernel", dict(setup="bridge", graph="l2fwd")),
    ("labkit recv()/send() l2fwd", "lab", dict(backend="veth", graph="l2fwd", copy=True)),
    ("labkit recv()/send() ip4", "lab", dict(backend="veth", graph="ip4", copy=True)),
    ("labkit AF_PACKET rings l2fwd", "lab", dict(backend="veth", graph="l2fwd")),
    ("labkit AF_PACKET rings ip4", "lab", dict(backend="veth", graph="ip4")),
    ("XDP l2fwd", "lab", dict(backend="xdp", graph="l2fwd")),
    ("XDP ip4", "lab", dict(backend="xdp", graph="ip4")),
    ("XDP ip4, LPM trie", "lab", dict(backend="xdp", graph="ip4", xdp_fib="lpm-trie")),
    ("XDP l2fwd, threaded NAPI", "lab", dict(backend="xdp", graph="l2fwd", napi="threaded")),
)
NOT_BUILT = {"labkit AF_XDP": "the AF_XDP backend is not built yet (issue 13, item 2)"}
KEYS = ("pps", "cpu_percent", "dut_cpu_percent", "kernel_cpu_percent", "cpu_cycles_per_packet")


class BenchError(RuntimeError):
    """A measurement could not be made; the message says which and why."""


def sh(*argv):
    """Run a command (ip, tc, bridge); its output, or BenchError with what it said."""
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode != 0:
        raise BenchError(f"`{' '.join(argv)}` failed: {(r.stderr or r.stdout).strip()}")
    return r.stdout


def _sysctls(ns, values=None):
    """ROUTER_SYSCTLS in namespace ns: read, or set to ``values`` first."""
    return labnet.net_sysctls(ns, ROUTER_SYSCTLS, values)


@contextmanager
def kernel_router(p):
    """The DUT's namespace as a Linux router from lk-d0 to lk-d1: addresses, a default route
    through a static neighbour (the generator's MAC), forwarding on, reverse-path filtering
    off (the frames' sources are not behind lk-d0 in its table). Everything put back after."""
    dns = labnet.dut_ns(p)
    saved = _sysctls(dns)
    try:
        for ifname, addr in ROUTER_ADDRS.items():
            # labnet's tc ingress drop keeps the kernel's stack out of labkit's runs: it must go
            sh("tc", "-n", dns, "qdisc", "del", "dev", ifname, "clsact")
            sh("ip", "-n", dns, "addr", "add", addr, "dev", ifname)
        sh("ip", "-n", dns, "neigh", "replace", NEXT_HOP, "lladdr", NEXT_HOP_MAC, "dev", labnet.DUT_TX,
            "nud", "permanent")
        sh("ip", "-n", dns, "route", "replace", "default", "via", NEXT_HOP, "dev", labnet.DUT_TX)
        _sysctls(dns, {name: 0 if "rp_filter" in name else 1 for name in ROUTER_SYSCTLS})
        yield
    finally:
        for ifname in ROUTER_ADDRS:
            sh("ip", "-n", dns, "addr", "flush", "dev", ifname)
            sh("ip", "-n", dns, "neigh", "flush", "dev", ifname)
        _sysctls(dns, saved)
        labnet.up(tap=False, p=p)            # the tc drops, idempotently


def kernel_cpu():
    """CPU seconds the kernel has spent receiving so far (softirq on all CPUs, lk-d0's NAPI threads)."""
    softirq, threads = napi.kernel_cpu(labnet.DUT_RX)
    return softirq + threads


def row(pps, forwarded, seconds, dut_cpu_s, kernel_cpu_s, wall, **more):
    """One measurement: rates, CPU shares in % of one CPU, CPU cycles per forwarded frame."""
    hz = tsc_hz()
    return {"pps": pps, "dut_cpu_percent": 100.0 * dut_cpu_s / max(wall, 1e-9),
            "kernel_cpu_percent": 100.0 * kernel_cpu_s / max(wall, 1e-9),
            "cpu_percent": 100.0 * (dut_cpu_s + kernel_cpu_s) / max(wall, 1e-9),
            "cpu_cycles_per_packet": (dut_cpu_s + kernel_cpu_s) * hz / forwarded if forwarded else None,
            "forwarded": forwarded, "seconds": seconds, **more}


def m_lab(c, backend, graph, copy=False, napi="off", xdp_fib=None):
    """A Lab on ``backend`` (veth or xdp) through its graph."""
    with Lab(backend=backend, graph=graph, knobs=Knobs(copy=copy, napi=napi), size=60, xdp_fib=xdp_fib) as lab:
        r = lab.run(seconds=c.seconds)
    x = r.extra
    kernel = (x["softirq_cpu_percent"] + x["napi_thread_cpu_percent"]) / 100.0 * r.seconds
    dut = 0.0 if backend == "xdp" else r.cpu_percent / 100.0 * r.seconds
    return row(r.forwarded / r.seconds if r.seconds > 0 else 0.0, r.forwarded, r.seconds, dut, kernel, r.seconds,
                sent=r.sent, conserved=r.conserved, dropped=dict(r.dropped),
                program_cycles_per_packet=r.cycles_per_packet if backend == "xdp" else None,
                gen_cpu_percent=x.get("gen_cpu_percent"))


def _planned(quick):
    """The paths this run measures: (name, kind, arguments); and {name: why not} for the others."""
    from ..nic import xdp
    why_xdp = xdp.why_not()
    run, skip = [], dict(NOT_BUILT)
    for name, kind, kw in PATHS:
        if quick and (kw.get("napi") == "threaded" or "xdp_fib" in kw):
            continue
        if kw.get("backend") == "xdp" and why_xdp:
            skip[name] = why_xdp
        else:
            run.append((name, kind, kw))
    return run, skip


def configurations(quick, m_kernel):
    """[(section, name, function(ctx) -> dict)]; ``m_kernel(ctx, setup)`` runs the generator alone
    through the kernel's "router" (``kernel_router``) or "bridge" (labkit.bench.net)."""
    return [("paths", name, (lambda c, kw=kw: m_kernel(c, kw["setup"])) if kind == "kernel" else
             (lambda c, kw=kw: m_lab(c, **kw))) for name, kind, kw in _planned(quick)[0]]


def summarize(s, quick, ratio):
    """Medians per path, the paths not measured and why, and the ratios of the issue's goals."""
    run, skip = _planned(quick)
    rows = {name: s("paths", name, KEYS + ("program_cycles_per_packet",)) for name, _, _ in run}
    rows.update({name: {"not_measured": why} for name, why in skip.items()})

    def pps(name):
        return (rows.get(name) or {}).get("pps")

    def cyc(name):
        return (rows.get(name) or {}).get("program_cycles_per_packet")
    return {"paths": rows,
            "xdp_vs_rings_l2fwd": ratio(pps("XDP l2fwd"), pps("labkit AF_PACKET rings l2fwd")),
            "xdp_threaded_vs_rings_l2fwd": ratio(pps("XDP l2fwd, threaded NAPI"), pps("labkit AF_PACKET rings l2fwd")),
            "xdp_vs_rings_ip4": ratio(pps("XDP ip4"), pps("labkit AF_PACKET rings ip4")),
            "xdp_vs_kernel_ip4": ratio(pps("XDP ip4"), pps("kernel IP forwarding")),
            "dir24_vs_trie_program_cycles": ratio(cyc("XDP ip4, LPM trie"), cyc("XDP ip4")),
            "rings_vs_copy_l2fwd": ratio(pps("labkit AF_PACKET rings l2fwd"), pps("labkit recv()/send() l2fwd"))}


def print_section(o, res, f):
    """The path table (o: the report's printer; f: its number format)."""
    pa = res["paths"]
    rows = []
    for name, d in pa["paths"].items():
        if "not_measured" in d:
            rows.append([name, "not measured: " + d["not_measured"], "", "", "", ""])
            continue
        rows.append([name, f(d.get("pps") and d["pps"] / 1e6, ".3f"), f(d.get("dut_cpu_percent"), ".0f"),
                     f(d.get("kernel_cpu_percent"), ".0f"), f(d.get("cpu_cycles_per_packet"), ".0f"),
                     f(d.get("program_cycles_per_packet"), ".0f")])
    o.table("9. paths: the same 60-byte frames through each path (CPU in % of one CPU; cycles per frame forwarded)",
            ["path", "Mpps", "DUT thread CPU%", "kernel CPU%", "CPU cyc/frame", "XDP program cyc/frame"], rows)
    r = (lambda x: "-" if x is None else f"{x:.2f}x")
    o.print(f"   XDP / AF_PACKET rings: l2fwd {r(pa['xdp_vs_rings_l2fwd'])} (threaded NAPI "
            f"{r(pa['xdp_threaded_vs_rings_l2fwd'])}), ip4 {r(pa['xdp_vs_rings_ip4'])}; XDP ip4 / the kernel's "
            f"IP forwarding {r(pa['xdp_vs_kernel_ip4'])}; rings / recv()-send() l2fwd {r(pa['rings_vs_copy_l2fwd'])}")
    o.print(f"   the XDP program's cycles per frame, the LPM trie's / DIR-24-8's: {r(pa['dir24_vs_trie_program_cycles'])}")
    o.noise(*[d for d in pa["paths"].values() if "runs" in d])
