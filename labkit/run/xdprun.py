"""A Lab whose DUT is an XDP program in the kernel: no DUT thread, no crossing to user space.

The generator is netrun's, on the same veth pairs; the DUT is labkit's graph
written as an XDP program (``labkit/nic/xdp/l2fwd.c``, ``ip4.c``) and run by
the veth driver of lk-d0 on each frame, before the kernel builds an sk_buff::

    labkit-gen namespace                      labkit-dut namespace
    generator TX ring  lk-g0 ===veth=== lk-d0  XDP: the graph, then
                                                bpf_redirect_map(tx_port) --+
    generator RX ring  lk-g1 ===veth=== lk-d1  <----------------------------+
                       (XDP_PASS: NAPI, so that lk-d1 can take redirected frames)

The program counts each drop under the graph's own reason, in a per-CPU
array numbered as the graph's counters (``labkit_xdp.h``), so the books are
the ones every engine keeps::

    sent == forwarded (back at the generator) + drops by reason

with the kernel's drops on the way: ``xdp_redirect_failed`` (lk-d0's
rx_dropped: the redirect itself failed), ``link_dut_to_gen`` (lk-d1's
tx_dropped: the peer's ring was full, or it had no NAPI to take frames), and
the generator's own (``gen_rx_ring_full``...).

Two things about veth that are not XDP's:

- a veth accepts redirected frames (ndo_xdp_xmit) only when its peer runs
  NAPI: an XDP program there, or GRO. So lk-g1 gets ``pass.c``; without it
  every forwarded frame is lost: the redirect fails, each frame an
  ``xdp_redirect_failed`` (tested);
- lk-d0's NAPI poll, and so the program, runs in the softirq of the CPU that
  sent the frame: the generator's, unless knob ``napi="threaded"`` gives the
  poll a kernel thread of its own. On a NIC, the poll runs on the CPU that
  takes the queue's interrupt.

Cycles per packet are the program's own: the kernel times every run while
BPF run-time statistics are on (``labkit.nic.xdp.run_time_stats``; two clock
reads per run, included); the driver's receive and redirect work is not in
them, it is in the kernel receive CPU (``softirq_cpu_percent``).
"""
import socket
import struct

import numpy as np

from ..nic import afpacket as af
from ..nic import generator as gen
from ..nic import labnet, xdp
from ..nic import latency as lat
from ..nic.labnet import in_netns
from .knobs import Knobs
from .netrun import STALL_S, NetEngine
from .result import NodeRuntime, make_result

# labkit graph -> (C source in labkit/nic/xdp/, program name)
PROGRAMS = {"l2fwd": ("l2fwd", "l2fwd"), "ip4": ("ip4", "ip4")}
# What runs on lk-g1, the peer of the port frames leave by: NAPI there, so that lk-d1 takes them.
PEER = ("pass", "pass")
# Knobs that still mean something here: the generator's and the kernel's receive path.
XDP_KNOBS = ("qdisc_bypass", "napi")


class XdpEngine(NetEngine):
    """The generator's rings on veth, and an XDP program as the DUT."""

    def __init__(self, graph, knobs, pool, tables, fib, traffic_for, xdp_fib="dir-24-8", **kw):
        self.fib, self.xdp_fib = fib, xdp_fib
        super().__init__("xdp", graph, knobs, pool, tables, traffic_for, **kw)

    @property
    def threads(self):
        return 1                         # the generator's: the program runs in the kernel

    def _open(self, traffic_for):
        g, k = self.g, self.knobs
        gns, dns = self._open_generator()
        self.port = "xdp"
        self.prog = self._stack.enter_context(load(g, self.fib, self.xdp_fib))
        with in_netns(dns):              # a devmap takes an ifindex of the namespace that writes it
            self.prog.update("tx_port", struct.pack("<I", 0), struct.pack("<I", socket.if_nametoindex(labnet.DUT_TX)))
        if PEER is not None:
            peer = self._stack.enter_context(xdp.Program(*PEER))
            peer.attach(gns, labnet.GEN_RX)
        self.prog.attach(dns, labnet.DUT_RX)
        self._stack.enter_context(xdp.run_time_stats())
        self.wires += [(dns, labnet.DUT_RX, "xdp_redirect_failed", True, "rx_dropped"),
                       (dns, labnet.DUT_TX, "link_dut_to_gen", True, "tx_dropped")]
        self.rx_socks = []
        self.notes += [f"knob {f} shapes labkit's own loop; with backend xdp the DUT is an XDP program in the "
                       "kernel" for f in Knobs.__dataclass_fields__
                       if f not in XDP_KNOBS and getattr(k, f) != getattr(Knobs(), f)]
        self.max_link = min(self.gen_tx.max_frame, labnet.link_mtu(dns, labnet.DUT_TX) + af.ETH_HLEN)
        self.traffic = traffic_for(self.max_link)
        self._base = np.zeros(len(g.reasons) + 1, np.uint64)

    def graph_counters(self):
        n = len(self.g.reasons)
        return [(self.prog.counters("verdicts")[:n] - self._base[:n]).astype(np.int64)]

    def run(self, seconds=None, packets=None, progress=None):
        self._base = self.prog.counters("verdicts")
        self._stats0 = self.prog.run_stats()
        return super().run(seconds=seconds, packets=packets, progress=progress)

    def _result(self, r, dropped, stalled):
        """The generator's books, the program's runs and time, the kernel's CPU."""
        g, k, gst, hz = self.g, self.knobs, r.gst, r.hz
        wall = max(int(gst[gen.G_TX_DONE_TSC]) - r.start, 1) / hz
        runs, ns = (b - a for a, b in zip(self._stats0, self.prog.run_stats()))
        cycles = int(ns * hz / 1e9)
        notes = list(self.notes)
        if stalled:
            notes.append(f"the run stopped early: for {STALL_S:g} s the kernel took no frame from the generator "
                         "and nothing came back (is a lab interface down?)")
        kernel = self._kernel_side(r, notes)
        gen_cpu = r.cpu.get("gen", (0.0, 1.0))
        redirected = int(self.prog.counters("verdicts")[-1] - self._base[-1])
        extra = {"port": "xdp", "program": PROGRAMS[g.name][1], "xdp_fib": self.xdp_fib if self.fib else None,
                 "qdisc_bypass": k.qdisc_bypass, "rate": self.rate,
                 "gen_batch": self.gen_batch, "gen_tx_pps": int(gst[gen.G_SENT]) / wall,
                 "xdp_runs": runs, "xdp_ns": ns, "xdp_redirected": redirected,
                 "kernel_tx_retries": {link: int(n) for link, n in r.retried.items()},
                 "gen_cpu_percent": 100.0 * gen_cpu[0] / max(gen_cpu[1], 1e-9), **kernel}
        res = make_result("xdp", g, k, stats=np.zeros((len(g.nodes), 3), np.int64), sent=int(gst[gen.G_SENT]),
                          forwarded=int(gst[gen.G_RX]), dropped=dropped, seconds=wall, tsc_hz=hz, dut_cycles=cycles,
                          notes=notes, pool_ok=True, extra=extra,
                          cpu_percent=kernel["softirq_cpu_percent"] + kernel["napi_thread_cpu_percent"],
                          latency=lat.summarize(r.stamps[1], hz, self.rate) if self.latency else None)
        res.runtime = [NodeRuntime(f"xdp:{PROGRAMS[g.name][1]}", runs, runs, cycles)]
        return res


def load(g, fib=None, xdp_fib="dir-24-8"):
    """Graph g's XDP program, loaded, its counters numbered as g's, its FIB (for ip4) filled
    from ``fib``, labkit's table; not attached anywhere yet."""
    source, name = PROGRAMS[g.name]
    if fib is None:
        return xdp.Program(source, name, reasons=g.reasons)
    trie = xdp_fib == "lpm-trie"
    sizes = {"adjacencies": fib.n_adj, **({"routes": len(fib.routes)} if trie else {"tbl8": fib.tbl8.size // 4})}
    prog = xdp.Program(source, name, reasons=g.reasons, sizes=sizes, defines=("FIB_LPM_TRIE",) if trie else ())
    try:
        fill_fib(prog, fib, xdp_fib)
    except BaseException:
        prog.close()
        raise
    return prog


def fill_fib(prog, fib, xdp_fib="dir-24-8"):
    """labkit's FIB into the program's maps: tbl24 and tbl8 copied into their mmapped arrays
    (DIR-24-8), or each route into the LPM trie in its order (of two equal prefixes the later
    wins, as in labkit.graph.fib); and the adjacencies."""
    if xdp_fib == "lpm-trie":
        r = fib.routes
        for prefix, length, adj in zip(r["prefix"].tolist(), r["length"].tolist(), r["adj"].tolist()):
            prog.update("routes", struct.pack("<I", length) + prefix.to_bytes(4, "big"), struct.pack("<I", adj))
    else:
        prog.array("tbl24", np.uint16, 1 << 22, 8)[:] = fib.tbl24
        prog.array("tbl8", np.uint16, fib.tbl8.size // 4, 8)[:] = fib.tbl8
    for a in range(fib.n_adj):
        value = bytes(fib.adj_mac[a]) + struct.pack("<I", int(fib.adj_valid[a]))
        prog.update("adjacencies", struct.pack("<I", a), value)
