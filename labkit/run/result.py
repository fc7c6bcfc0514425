"""What a run measured, and the conservation rule it must satisfy."""
from dataclasses import dataclass, field
from typing import Dict, List, Optional


@dataclass
class NodeRuntime:
    """One row of the per-node table, like VPP's `show runtime`."""
    name: str
    calls: int          # dispatches of this node that had at least one packet
    packets: int        # packets it processed
    cycles: int         # TSC cycles spent inside it

    @property
    def vectors_per_call(self):
        return self.packets / self.calls if self.calls else 0.0

    @property
    def cycles_per_packet(self):
        return self.cycles / self.packets if self.packets else 0.0


@dataclass
class Result:
    backend: str
    graph: str
    knobs: dict
    sent: int                         # frames the traffic source offered
    forwarded: int                    # frames that left on TX and reached the sink
    dropped: Dict[str, int]           # reason -> count
    seconds: float                    # wall time of the measured loop
    tsc_hz: float
    dut_cycles: int                   # TSC cycles in the data plane (rx, graph, tx)
    nic_cycles: int = 0               # TSC cycles the in-memory NIC spent "being hardware"
    runtime: List[NodeRuntime] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    pool_ok: bool = True              # every buffer back in its pool after the run
    cpu_percent: Optional[float] = None   # CPU time / wall time of the DUT's polling thread (veth, tap)
    extra: dict = field(default_factory=dict)   # what only some backends measure (see to_dict)
    other_cpu_percent: Optional[float] = None   # the rest of the machine meanwhile, % of one CPU (noise.py)
    busiest: list = field(default_factory=list)  # [{"name", "cpu_percent"}] of the busiest other processes
    steal_percent: float = 0.0        # CPU the hypervisor gave other guests meanwhile, % of one CPU
    cores_needed: int = 1             # threads the run kept busy, and the CPUs this process may use:
    cpus: Optional[int] = None        # more threads than CPUs is time-sharing (noise.oversubscribed_note)
    latency: Optional[dict] = None    # per-packet latency in ns (labkit.nic.latency.summarize), when measured

    @property
    def batch(self):
        return self.knobs["batch"]

    @property
    def pps(self):
        """Packets the data plane processed (forwarded or dropped) per wall second."""
        handled = self.forwarded + sum(v for k, v in self.dropped.items() if k not in NIC_SIDE_DROPS)
        return handled / self.seconds if self.seconds > 0 else 0.0

    @property
    def cycles_per_packet(self):
        """TSC cycles the data plane spent per packet it handled (not core cycles)."""
        handled = self.forwarded + sum(v for k, v in self.dropped.items() if k not in NIC_SIDE_DROPS)
        return self.dut_cycles / handled if handled else 0.0

    @property
    def conserved(self):
        return self.sent == self.forwarded + sum(self.dropped.values())

    def to_dict(self):
        return {
            "backend": self.backend, "graph": self.graph, "batch": self.batch,
            "knobs": dict(self.knobs),
            "sent": self.sent, "forwarded": self.forwarded,
            "dropped": dict(sorted(self.dropped.items())),
            "pps": self.pps, "mpps": self.pps / 1e6,
            "cycles_per_packet": self.cycles_per_packet,
            "tsc_hz": self.tsc_hz, "seconds": self.seconds,
            "conserved": self.conserved, "pool_ok": self.pool_ok,
            "runtime": [{"node": r.name, "calls": r.calls, "packets": r.packets,
                         "vectors_per_call": r.vectors_per_call,
                         "cycles_per_packet": r.cycles_per_packet} for r in self.runtime],
            "notes": list(self.notes),
            "cpu_percent": self.cpu_percent,
            "other_cpu_percent": self.other_cpu_percent, "busiest": list(self.busiest),
            "steal_percent": self.steal_percent, "cores_needed": self.cores_needed, "cpus": self.cpus,
            **({"latency_ns": dict(self.latency)} if self.latency is not None else {}),
            **({"extra": dict(self.extra)} if self.extra else {}),
        }


# Drops that happen before the data plane sees the frame (no descriptor, no
# buffer; on veth and TAP: the DUT's RX ring was full, or no link carries the
# frame; with several workers: the frame's queue was full): they count in
# `sent` and in conservation, but the data plane spent no cycles on them.
NIC_SIDE_DROPS = ("mempool_empty", "rx_frame_too_long", "dut_rx_ring_full", "gen_unsendable", "rx_queue_full")


def by_reason(reasons, counters):
    """{reason: count} of a counters array, the reasons that counted something."""
    return {r: int(c) for r, c in zip(reasons, counters) if c}


def make_result(backend, g, knobs, *, stats, **fields):
    """The one way a Result is made: the graph's per-node runtime from `stats`
    (one row per node: calls, packets, TSC cycles), the knobs as a dict."""
    runtime = [NodeRuntime(n.name, int(s[0]), int(s[1]), int(s[2])) for n, s in zip(g.nodes, stats)]
    return Result(backend=backend, graph=g.name, knobs=knobs.as_dict(), runtime=runtime, **fields)
