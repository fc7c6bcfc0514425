"""Every technique's switch in one place. Defaults are the fast path.

Turning one knob changes only that technique, so the difference between two
runs that differ in one knob is that technique's effect. TECHNIQUES maps the
chapter's Table 1 (Linguaglossa 2020) to the knob that shows it.
"""
from dataclasses import dataclass, fields, replace, asdict

from ..graph.node import VARIANTS

MAX_BATCH = 256
# How many packets ahead a node prefetches: far enough that the line arrives before the
# packet's turn, near enough that it is still cached then. Chosen by measurement: ip4 on the
# in-memory NIC, 1,000,000 flows, vector 256, medians of 21 interleaved runs per distance, two
# sweeps (2026-12-07, a 2-vCPU AMD EPYC Zen 4 VM), TSC cycles per packet: no prefetch 149 / 114,
# distance 2: 124 / 116, 4: 109 / 108, 8: 105 / 101, 16: 102 / 95, 32: 117 / 96, 64: 135 / 103.
# (Until then it was 4; notebook 07, section 3, finds the same in isolation: 16 or more.)
PREFETCH_DISTANCE = 16
MAX_PREFETCH_DISTANCE = 64
# Whether a dual or quad loop interleaves a node's stages (Node.stages: ip4-lookup's load, FIB read,
# finish) or repeats its body. Off by default, by measurement: ip4 on the in-memory NIC, quad loop,
# vector 256, medians of 7 interleaved runs (2026-12-07, a 2-vCPU AMD EPYC Zen 4 VM), ip4-lookup's
# TSC cycles per packet, repeated / interleaved: 1,000,000 flows 43.5 / 46.2 with prefetch and
# 61.3 / 69.6 without; 1,024 flows 11.5 / 11.9 and 10.5 / 10.6. Most likely the core's out-of-order
# window already overlaps the packets of the repeated body (notebook 09, section 1; its section 2
# shows where interleaving pays: long chains of dependent work).
# Threading models (labkit.run.workers): run to completion; or an I/O stage and worker
# stages, one per core ("pipeline"), as lightweight threads of one OS thread switched by a
# compiled cooperative scheduler ("lthreads", labkit.run.lthreads: a switch costs ns), or as
# OS threads sharing one CPU, switched by the kernel ("threads": a switch costs ~1 µs).
MODELS = ("rtc", "pipeline", "lthreads", "threads")
# Polling on a real NIC: spin on the RX ring ("busy", a poll-mode driver: the lowest latency, a
# whole CPU at any load), sleep in poll() until the kernel says frames came ("wait": an
# interrupt-style wake-up), or spin for ADAPTIVE_SPIN_US after the last frame and then sleep
# ("adaptive": what NAPI and DPDK's l3fwd-power do, busy under load, asleep when idle).
POLLS = ("busy", "wait", "adaptive")
ADAPTIVE_SPIN_US = 20
# The RX ring's kind: TPACKET_V3 blocks ("block": the kernel hands a block over when it is full
# or `coalesce_ms` after its first frame, interrupt coalescing) or TPACKET_V2 frames ("frame":
# each frame handed over as it lands; no flow hash, so one worker).
RX_RINGS = ("block", "frame")
MAX_COALESCE_MS = 1000
BLOCK_KBS = (4, 8, 16, 32, 64, 128, 256, 512, 1024)
# The kernel's receive path on the DUT's veth (labkit.nic.napi): the backlog queue, drained in the
# sender's softirq ("off", the veth's default), NAPI polls of up to 64 frames ("gro": GRO on at the
# receiver), or NAPI in a kernel thread of its own ("threaded").
NAPIS = ("off", "gro", "threaded")
MAX_BUSY_POLL_US = 1000


class KnobError(ValueError):
    """A knob with a value it cannot take; the message says which and why."""


@dataclass(frozen=True)
class Knobs:
    batch: int = 256          # vector size: packets per rx burst and per graph dispatch
    jit: bool = True          # numba-compiled kernels (False: their pure-Python twins)
    copy: bool = False        # copy each frame into a fresh buffer on rx and tx (True) or pass handles (False)
    mempool: bool = True      # fixed-size slots from a free stack (False: a general-purpose heap, per packet)
    hugepages: bool = True    # arena and FIB on 2 MiB pages when reserved (False: 4 KiB pages)
    prefetch: bool = True     # software prefetch of the next packets' headers and table entries
    prefetch_distance: int = PREFETCH_DISTANCE   # prefetch: how many packets ahead of the one being processed
    unroll: int = 4           # packets per loop iteration in each node: 1 (single), 2 (dual), 4 (quad)
    interleave: bool = False  # unroll > 1: run a node's stages for all the iteration's packets in turn (False: repeat its body); default: see above
    layout: str = "soa"       # packet vector: structure of arrays ("soa") or array of structures ("aos")
    poll: str = "busy"        # veth/tap: busy-poll the RX ring ("busy"), sleep in poll() until frames come ("wait"), or both in turn ("adaptive")
    rx_ring: str = "block"    # veth/tap: the DUT's RX ring hands over blocks of frames ("block", TPACKET_V3) or each frame ("frame", TPACKET_V2)
    coalesce_ms: int = 1      # rx_ring="block": a block is handed over this long after its first frame, if not full before (the kernel's unit is 1 ms)
    block_kb: int = 64        # rx_ring="block": a block's size in KiB (64 KiB: ~250 frames of 60 bytes)
    napi: str = "off"         # veth: the kernel receives for the DUT through the backlog ("off"), NAPI ("gro") or NAPI in a kernel thread ("threaded")
    busy_poll_us: int = 0     # veth: SO_BUSY_POLL on the DUT's RX socket (and net.core.busy_poll for the run): the kernel spins this long in poll() before sleeping (0: off)
    qdisc_bypass: bool = True  # veth/tap: TX straight to the driver (PACKET_QDISC_BYPASS), or through the qdisc layer
    sync: str = "spsc"        # workers > 1: RSS in the NIC onto lock-free rings ("spsc"), or a dispatcher thread and locked queues ("lock")
    counters: str = "padded"  # workers > 1: each worker's per-packet counters on its own cache line ("padded"), or all on one ("packed")
    variant: str = "scalar"   # each node's implementation: "scalar" (early exits), "branchless" or "simd" (a whole vector in lanes) where a node has one
    model: str = "rtc"        # threading model: run to completion ("rtc"), or I/O and worker stages on cores of their own ("pipeline"), as lightweight threads on one thread ("lthreads"), or as OS threads on one CPU ("threads")

    def __post_init__(self):
        def bad(name, value, want):
            raise KnobError(f"knob {name}={value!r} is invalid: {want}")
        if isinstance(self.batch, bool) or not isinstance(self.batch, int) or not 1 <= self.batch <= MAX_BATCH:
            bad("batch", self.batch, f"use an integer from 1 to {MAX_BATCH}")
        for name in ("jit", "copy", "mempool", "hugepages", "prefetch", "interleave", "qdisc_bypass"):
            if not isinstance(getattr(self, name), bool):
                bad(name, getattr(self, name), "use True or False")
        if (isinstance(self.prefetch_distance, bool) or not isinstance(self.prefetch_distance, int)
                or not 1 <= self.prefetch_distance <= MAX_PREFETCH_DISTANCE):
            bad("prefetch_distance", self.prefetch_distance, f"use an integer from 1 to {MAX_PREFETCH_DISTANCE} "
                "(packets ahead; a vector holds at most 256)")
        if self.unroll not in (1, 2, 4) or isinstance(self.unroll, bool):
            bad("unroll", self.unroll, "use 1, 2 or 4")
        if self.layout not in ("soa", "aos"):
            bad("layout", self.layout, 'use "soa" or "aos"')
        if self.poll not in POLLS:
            bad("poll", self.poll, 'use "busy" (poll-mode driver), "wait" (sleep in poll()) or "adaptive" '
                f'(busy for {ADAPTIVE_SPIN_US} µs after the last frame, then sleep)')
        if self.rx_ring not in RX_RINGS:
            bad("rx_ring", self.rx_ring, 'use "block" (TPACKET_V3 blocks) or "frame" (TPACKET_V2, per frame)')
        if (isinstance(self.coalesce_ms, bool) or not isinstance(self.coalesce_ms, int)
                or not 1 <= self.coalesce_ms <= MAX_COALESCE_MS):
            bad("coalesce_ms", self.coalesce_ms, f"use whole milliseconds from 1 to {MAX_COALESCE_MS} (the kernel's "
                "block timeout has no finer unit; rx_ring='frame' has no timeout at all)")
        if self.block_kb not in BLOCK_KBS or isinstance(self.block_kb, bool):
            bad("block_kb", self.block_kb, "use one of " + ", ".join(map(str, BLOCK_KBS)) + " (KiB, whole pages)")
        if self.napi not in NAPIS:
            bad("napi", self.napi, 'use "off" (the backlog queue), "gro" (NAPI) or "threaded" (NAPI in a kernel thread)')
        if (isinstance(self.busy_poll_us, bool) or not isinstance(self.busy_poll_us, int)
                or not 0 <= self.busy_poll_us <= MAX_BUSY_POLL_US):
            bad("busy_poll_us", self.busy_poll_us, f"use whole µs from 0 (off) to {MAX_BUSY_POLL_US}")
        if self.sync not in ("spsc", "lock"):
            bad("sync", self.sync, 'use "spsc" (RSS in the NIC, lock-free rings) or "lock" (dispatcher thread, spinlocked queues)')
        if self.counters not in ("padded", "packed"):
            bad("counters", self.counters, 'use "padded" (a cache line per worker) or "packed" (all on one line: false sharing)')
        if self.variant not in VARIANTS:
            bad("variant", self.variant, "use " + " or ".join(f'"{v}"' for v in VARIANTS))
        if self.model not in MODELS:
            bad("model", self.model, 'use "rtc" (run to completion), "pipeline" (a stage per core), '
                '"lthreads" (lightweight threads on one core) or "threads" (OS threads on one core)')

    def with_(self, **changes):
        """A copy with some knobs changed (validated)."""
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise KnobError(f"unknown knob(s): {', '.join(sorted(unknown))}; "
                            f"knobs are: {', '.join(f.name for f in fields(self))}")
        return replace(self, **changes)

    def as_dict(self):
        return asdict(self)


# technique -> (knob, value that turns the technique OFF, where it shows)
# The "on" value is the Knobs() default.
TECHNIQUES = {
    "compute batching": ("batch", 1, "memory"),
    "JIT compilation": ("jit", False, "memory"),
    "zero-copy": ("copy", True, "both"),
    "mempools": ("mempool", False, "memory"),
    "hugepages": ("hugepages", False, "memory"),
    "prefetching": ("prefetch", False, "memory"),
    "multi-loop": ("unroll", 1, "memory"),
    "SoA layout": ("layout", "aos", "memory"),
    "polling": ("poll", "wait", "veth"),
    "I/O batching": ("batch", 1, "veth"),
    "qdisc bypass": ("qdisc_bypass", False, "veth"),
}
# Knobs that only a real NIC (veth, tap) has.
NET_KNOBS = ("poll", "qdisc_bypass", "rx_ring", "coalesce_ms", "block_kb", "napi", "busy_poll_us")
# Multi-core techniques: they show only with several workers (Lab(workers=N), N > 1),
# so they are not in TECHNIQUES (whose rows run on one worker).
WORKER_TECHNIQUES = {
    "cache-line padding": ("counters", "packed", "workers"),
    "lock-free rings": ("sync", "lock", "workers"),
}
# Not a row above: lightweight threads. Their "on" is model="lthreads" (the stages on one
# core, switched by the program: compiled generators) and their "off" is OS threads
# (model="threads"), the same stages on one core switched by the kernel;
# the default, "rtc", is neither (it has no stages to switch). Notebook 15 compares them.
WORKER_KNOBS = ("sync", "counters", "model")
