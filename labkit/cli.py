"""The `labkit` command: the same experiments as the notebooks, without Jupyter.

    labkit run      one measured run: sent, forwarded, drops by reason, Mpps, TSC cycles/packet
    labkit runtime  the per-node table, like VPP's `show runtime`
    labkit trace    the first packets' path through the graph, like VPP's packet trace
    labkit demo     the tour: every technique's knob off, then on
    labkit net      the lab network (namespaces, veth pairs, TAP): up, down, status
    labkit rss      RSS: a flow's Toeplitz hash and the queue it lands on
    labkit grade    grade exercise notebooks with the solutions' checks (a judge decides them)
    labkit gen      the source labkit generates for a graph under some knobs (and where it is)
    labkit bench    delegated to labkit.bench

User errors (a bad flag, a knob out of range, a missing capture) exit 2 with
one line on stderr that says what to use instead; Ctrl-C exits 130 and
SIGTERM 143, quietly, after the run has drained and its namespaces are gone.
The library is imported lazily, so `labkit --help` and `--version` stay fast.
"""
import argparse
import json
import os
import sys
import threading

from labkit import __version__
from labkit.graph.node import VARIANTS
from labkit.run import interrupts
from labkit.run.interrupts import Terminated
from labkit.run.knobs import (ADAPTIVE_SPIN_US, MAX_BUSY_POLL_US, MAX_COALESCE_MS, MODELS, NAPIS, POLLS, RX_RINGS,
                              Knobs, KnobError, TECHNIQUES, WORKER_TECHNIQUES)
from labkit.run.ports import KINDS as PORTS     # light: dataclasses only
from labkit.settings import quick

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143

# Traffic the generator can make: frame sizes without FCS (64-byte wire frames are 60 here).
SIZE_MIN_BYTES, SIZE_MAX_BYTES = 60, 1920

BACKENDS = ("memory", "veth", "tap", "auto")
# Why a backend is the one the demo uses, said at the top of its output.
BACKEND_WHY = {
    "memory": "in-memory NIC (no root needed)",
    "veth": "AF_PACKET rings on veth pairs between two network namespaces",
    "tap": "TAP device read/write, generator on AF_PACKET rings",
}

KNOB_FLAGS = ("jit", "copy", "mempool", "hugepages", "prefetch", "interleave")
ORDERS = ("spread", "sorted", "shuffled")   # labkit.nic.traffic.ORDERS, without importing numba for --help
KNOB_HELP = {
    "jit": "numba-compiled kernels, or their pure-Python twins",
    "copy": "copy each frame into a fresh buffer on rx and tx, or pass handles",
    "mempool": "fixed-size slots from a free stack, or a general-purpose heap",
    "hugepages": "arena and FIB on 2 MiB pages when reserved, or 4 KiB pages",
    "prefetch": "software prefetch of the next packets' headers and table entries",
    "interleave": "dual and quad loops run a node's stages for all their packets in turn, or repeat its body",
}

# Said when numba starts compiling (a kernel not in its cache yet), with numba's cache folder.
COMPILE_NOTE = "compiling numba kernels (once; then cached in {cache})..."


class UsageError(Exception):
    """A user mistake: printed as one line, exit code 2."""


class Parser(argparse.ArgumentParser):
    """argparse, but an error is one line (no usage block) so it reads at a glance."""

    def error(self, message):
        raise UsageError(f"{message} (see `{self.prog} --help`)")


# -- argument types: each says what is wrong and what to use --------------------

def _int_at_least(low, what):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer; use {what}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is too small; use {what}")
        return value
    return parse


def _int_between(low, high, what):
    at_least = _int_at_least(low, what)

    def parse(text):
        value = at_least(text)
        if value > high:
            raise argparse.ArgumentTypeError(f"{value} is too large; use {what}")
        return value
    return parse


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; use seconds > 0, e.g. 1 or 0.2") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is not a duration; use seconds > 0, e.g. 1 or 0.2")
    return value


DEMO_REPEATS = 5                # runs of each side of a demo row, interleaved. If no knob changed anything,
                                # 16 rows at 3 a side would show a verdict somewhere in 4 demos of 5 (10% a
                                # row); at 5 a side, in 1 of 8 (0.8% a row)


def _repeats(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number; use 1 to 20") from None
    if not 1 <= value <= 20:
        raise argparse.ArgumentTypeError(f"{value}: use 1 to 20 runs")
    return value


def _quiet_wait(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; use seconds, 0 to 600") from None
    if not 0 <= value <= 600:
        raise argparse.ArgumentTypeError(f"{text}: use 0 to 600 seconds")
    return value


def _fraction(text):
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a fraction; use a number from 0 to 1, e.g. 0.01")
    return value


def _size(text):
    use = f"use a frame size from {SIZE_MIN_BYTES} to {SIZE_MAX_BYTES} bytes (without FCS) or 'imix'"
    if text.lower() == "imix":
        return "imix"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size; {use}") from None
    if not SIZE_MIN_BYTES <= value <= SIZE_MAX_BYTES:
        raise argparse.ArgumentTypeError(f"{value} bytes is out of range; {use}")
    return value


def _every(text):
    """--latency N: one frame in N stamped, N a power of two up to 1024."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if not 1 <= n <= 1024 or n & (n - 1):
        raise argparse.ArgumentTypeError(f"{text!r}: stamp one frame in N, N a power of two from 1 to 1024")
    return n


def _pcap_in(path):
    if not os.path.isfile(path):
        raise argparse.ArgumentTypeError(f"{path}: no such file; give a pcap capture to replay")
    if not os.access(path, os.R_OK):
        raise argparse.ArgumentTypeError(f"{path}: not readable; check its permissions")
    return path


def _pcap_out(path):
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise argparse.ArgumentTypeError(f"{path}: folder {folder} does not exist; create it or write elsewhere")
    return path


# -- the parser -------------------------------------------------------------------

def _lab_options(p):
    """Where the packets come from and what processes them (run, runtime, trace)."""
    g = p.add_argument_group("lab")
    g.add_argument("--backend", default="memory", choices=(*BACKENDS, "xdp"),
                   help="NIC: memory (in-memory, no root), veth or tap (a real NIC in network namespaces, "
                        "needs root), xdp (veth, the graph as an XDP program in the kernel; l2fwd and ip4; "
                        "needs root and clang), auto (veth when possible) (default: memory)")
    g.add_argument("--graph", default="ip4", help="graph of nodes: l2fwd, ip4 or acl (default: ip4)")
    g.add_argument("--xdp-fib", choices=("dir-24-8", "lpm-trie"), default=None,
                   help="backend xdp, graph ip4: the FIB in the kernel, labkit's DIR-24-8 tables in array maps "
                        "or the kernel's LPM trie (default: dir-24-8)")
    t = p.add_argument_group("traffic")
    t.add_argument("--size", type=_size, default=64, metavar="N|imix",
                   help=f"frame size in bytes without FCS, {SIZE_MIN_BYTES}..{SIZE_MAX_BYTES}, or imix (default: 64)")
    t.add_argument("--flows", type=_int_at_least(1, "1 or more flows"), default=1024, metavar="N",
                   help="distinct 5-tuples (default: 1024)")
    t.add_argument("--mix", choices=("udp", "tcp", "mixed"), default="udp", help="L4 protocols (default: udp)")
    t.add_argument("--malformed", type=_fraction, default=0.0, metavar="FRACTION",
                   help="fraction of frames with broken headers, 0..1 (default: 0)")
    t.add_argument("--order", choices=ORDERS, default="spread",
                   help="the frames' order: malformed ones spread evenly (spread), every kind together (sorted: "
                        "predictable branches) or at random (shuffled) (default: spread)")
    t.add_argument("--pcap", type=_pcap_in, metavar="FILE",
                   help="replay this capture instead of generating: each frame once, in order, then the run "
                        "ends when all are forwarded or dropped (as tcpreplay does; --loop N: N times, "
                        "--seconds S: over and over for S seconds)")
    t.add_argument("--out", type=_pcap_out, metavar="FILE", help="write the forwarded frames to this pcap, in order")
    t.add_argument("--seed", type=int, default=1, help="traffic generator seed (default: 1)")
    _knob_options(p)
    w = p.add_argument_group("several cores")
    w.add_argument("--workers", type=_int_between(1, 64, "1 to 64 workers, one per queue"), metavar="N",
                   help="run-to-completion workers, one per RSS queue of the multi-queue NIC; on veth one per "
                        "socket of a PACKET_FANOUT group (default: 1)")
    w.add_argument("--sync", choices=("spsc", "lock"),
                   help="RSS in the NIC onto lock-free rings, or a dispatcher thread and locked queues")
    w.add_argument("--model", choices=MODELS,
                   help="threading model: run to completion (rtc), or an I/O stage and a worker stage on a core "
                        "each (pipeline), as lightweight threads on one core (lthreads), or as OS threads on one "
                        "core (threads) (default: rtc)")
    w.add_argument("--counters", choices=("padded", "packed"),
                   help="per-worker counters on their own cache line, or all on one (false sharing)")
    w.add_argument("--rss-key", dest="rss_key", choices=("default", "symmetric"),
                   help="Toeplitz key: the RSS specification's, or symmetric (both directions, one queue)")
    m = p.add_argument_group("measure")
    m.add_argument("--latency", nargs="?", const=1, default=None, type=_every, metavar="N",
                   help="stamp each frame (or one in N, N a power of two) as it leaves and report its latency "
                        "when it comes back (percentiles; with --rate: at that offered load, else at saturation)")
    n = p.add_argument_group("real NIC (veth, tap)")
    n.add_argument("--poll", choices=POLLS,
                   help="busy-poll the RX ring, sleep in poll() until frames come, or adaptive: busy for "
                        f"{ADAPTIVE_SPIN_US} µs after the last frame, then sleep (default: busy)")
    n.add_argument("--rx-ring", dest="rx_ring", choices=RX_RINGS,
                   help="the DUT's RX ring hands over blocks of frames (TPACKET_V3: coalescing) or each frame "
                        "as it lands (TPACKET_V2) (default: block)")
    n.add_argument("--coalesce-ms", dest="coalesce_ms", type=int, metavar="MS",
                   help=f"block ring: hand a block over this long after its first frame (1..{MAX_COALESCE_MS}, "
                        "default: 1)")
    n.add_argument("--block-kb", dest="block_kb", type=int, metavar="KIB",
                   help="block ring: a block's size, 4..1024 KiB, a power of two (default: 64)")
    n.add_argument("--napi", choices=NAPIS,
                   help="veth: the kernel receives for the DUT through its backlog queue (off), NAPI polls (gro: "
                        "GRO on at the DUT's end) or NAPI in a kernel thread of its own (threaded) (default: off)")
    n.add_argument("--busy-poll-us", dest="busy_poll_us", type=int, metavar="US",
                   help=f"SO_BUSY_POLL on the DUT's RX socket, and net.core.busy_poll raised to match for the run: "
                        f"the kernel spins in poll() so many µs before it sleeps (0..{MAX_BUSY_POLL_US}) "
                        "(default: 0, off)")
    n.add_argument("--qdisc-bypass", dest="qdisc_bypass", action=argparse.BooleanOptionalAction, default=None,
                   help="send straight to the driver (PACKET_QDISC_BYPASS), or through the qdisc layer")
    n.add_argument("--rate", type=_int_at_least(1, "packets per second, 1 or more"), metavar="PPS",
                   help="offered load in packets per second: the generator's rate, or the in-memory NIC's "
                        "(one queue; frames that find its RX ring full are dropped) (default: as fast as "
                        "the device under test takes them)")
    n.add_argument("--gen-batch", dest="gen_batch", type=_int_between(1, 256, "frames per kick from 1 to 256"),
                   metavar="N",
                   help="generator frames per TX kick, 1..256 (default: 64)")


def _knob_options(p):
    k = p.add_argument_group("knobs (defaults are the fast path; see `labkit demo`)")
    k.add_argument("--batch", type=int, metavar="N", help="vector size: packets per burst and per dispatch (1..256)")
    for name in KNOB_FLAGS:
        k.add_argument(f"--{name}", action=argparse.BooleanOptionalAction, default=None, help=KNOB_HELP[name])
    k.add_argument("--prefetch-distance", type=int, metavar="N",
                   help="with prefetch: how many packets ahead a node prefetches (1 to 64)")
    k.add_argument("--unroll", type=int, choices=(1, 2, 4), help="packets per loop iteration: 1, 2 or 4")
    k.add_argument("--layout", choices=("soa", "aos"), help="packet vector layout")
    k.add_argument("--variant", choices=VARIANTS,
                   help="each node's implementation: scalar (early exits), branchless, or simd (a whole "
                        "vector in vector lanes) where a node has one")


def _gen_parser(sub):
    """`labkit gen`: the generated module for a graph, a port and the knobs that shape code."""
    p = sub.add_parser("gen", help="print the source labkit generates for a graph (and where it is)")
    p.add_argument("--graph", default="ip4", help="graph of nodes: l2fwd, ip4 or acl (default: ip4)")
    p.add_argument("--port", default="memory", choices=PORTS,
                   help="the engine's port: memory (the single loop), device or dispatch (a worker of the "
                        "multi-queue NIC, fed by RSS or by a dispatcher thread), ring (zero-copy on veth), "
                        "socket (recv()/send() per frame), tap (default: memory)")
    p.add_argument("--fanout", action="store_true", help="ring: one of several workers in a PACKET_FANOUT group")
    _knob_options(p)
    p.add_argument("--sync", choices=("spsc", "lock"), help="dispatch: lock-free rings, or spinlocked queues")
    p.set_defaults(poll=None, qdisc_bypass=None, counters=None, model=None, rx_ring=None, coalesce_ms=None,
                   block_kb=None, napi=None, busy_poll_us=None)
    return p


def _length_options(p):
    g = p.add_argument_group("how long (one of --seconds, --packets, --loop)").add_mutually_exclusive_group()
    g.add_argument("--seconds", type=_positive_float, metavar="S",
                   help="measure for S seconds; with --pcap, replay the capture over and over for S seconds "
                        "(default: 1, or with --pcap one pass over the capture)")
    g.add_argument("--packets", type=_int_at_least(1, "1 or more packets"), metavar="N",
                   help="measure until N packets were sent (with --pcap: N frames, from the capture's start)")
    g.add_argument("--loop", type=_int_at_least(1, "1 or more passes over the capture"), metavar="N",
                   help="with --pcap: replay the capture N times, each frame once per pass, then drain "
                        "(default: 1)")


def _rss_parser(sub):
    """`labkit rss hash|bench`: the options (labkit.nic.rss does the work, imported only when it runs)."""
    p = sub.add_parser("rss", help="RSS: the Toeplitz hash of a flow and the queue it lands on")
    p.add_argument("action", choices=("hash", "bench"),
                   help="hash: print the flow's 32-bit RSS hash; bench: what the hash costs, three ways")
    p.add_argument("--src", metavar="IP", help="source IPv4 address (hash)")
    p.add_argument("--dst", metavar="IP", help="destination IPv4 address (hash)")
    p.add_argument("--sport", metavar="N", help="source port (TCP/UDP; give --dport too)")
    p.add_argument("--dport", metavar="N", help="destination port (TCP/UDP; give --sport too)")
    p.add_argument("--key", default="default", metavar="HEX|default|symmetric",
                   help="Toeplitz key, at least 16 bytes (default: the RSS specification's key)")
    p.add_argument("--queues", metavar="N",
                   help="also print which of N queues the flow lands on (round-robin 128-entry RETA)")
    return p


def build_parser():
    parser = Parser(prog="labkit", description="A teaching data plane: every acceleration technique is a knob.")
    parser.add_argument("--version", action="version", version=f"labkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("run", help="one measured run: throughput, TSC cycles/packet, drops")
    _lab_options(p)
    _length_options(p)
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")

    p = sub.add_parser("runtime", help="per-node table, like VPP's `show runtime`")
    _lab_options(p)
    _length_options(p)
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")

    p = sub.add_parser("trace", help="the first packets' path through the graph")
    _lab_options(p)
    p.add_argument("-n", type=_int_at_least(1, "1 or more packets"), default=5, metavar="N",
                   help="packets to trace (default: 5)")
    p.add_argument("--json", action="store_true", help="print the traces as one JSON list")

    p = sub.add_parser("demo", help="the tour: each technique's knob off, then on")
    p.add_argument("--backend", default="auto", choices=BACKENDS,
                   help="real NIC for the I/O techniques: veth, tap, auto (veth when possible) or memory "
                        "(none); compute and memory techniques always run on the in-memory NIC (default: auto)")
    p.add_argument("--graph", default="ip4", help="graph of nodes (default: ip4)")
    p.add_argument("--seconds", type=_positive_float, metavar="S",
                   help="seconds per run (default: 0.5, or 0.2 with LABKIT_QUICK=1)")
    p.add_argument("--repeats", type=_repeats, default=DEMO_REPEATS, metavar="N",
                   help=f"runs of each side, interleaved off, on, off, on... (default {DEMO_REPEATS}; "
                        "a verdict needs 3)")
    p.add_argument("--quiet-wait", type=_quiet_wait, default=0.0, metavar="S",
                   help="before each run, wait up to S seconds for the other processes to calm down "
                        "(default 0: do not wait)")
    p.add_argument("--json", action="store_true", help="print the table as one JSON list")

    p = sub.add_parser("net", help="the lab network: namespaces labkit-gen and labkit-dut, veth pairs, TAP")
    p.add_argument("action", choices=("up", "down", "status"))
    p.add_argument("--tap", action="store_true", help="up: also make the TAP device lk-tap0")
    p.add_argument("--json", action="store_true", help="print the status as one JSON object")

    _rss_parser(sub)
    _gen_parser(sub)
    from labkit.course import grade              # light: the standard library only, until it runs
    grade.add_parser(sub)

    sub.add_parser("bench", help="benchmarks (see `labkit bench --help`)", add_help=False)
    return parser


# -- from arguments to a Lab --------------------------------------------------------

def _knobs(args):
    changes = {name: getattr(args, name) for name in ("batch", *KNOB_FLAGS, "prefetch_distance", "unroll", "layout",
                                                      "variant", "poll", "qdisc_bypass", "rx_ring", "coalesce_ms",
                                                      "block_kb", "napi", "busy_poll_us", "sync", "counters", "model")
               if getattr(args, name) is not None}
    return Knobs().with_(**changes)          # KnobError says which knob and what to use


def _lab_module():
    try:
        _watch_compiles()                    # before anything that may compile is imported
        from labkit.run import lab
    except ImportError as e:
        raise UsageError(f"the data plane did not import ({e}); reinstall with `make test` or `pip install -e .`")
    return lab


def _check_graph(lab, graph):
    if graph not in lab.GRAPHS:
        raise UsageError(f"unknown graph {graph!r}; use one of: {', '.join(lab.GRAPHS)}")


def _real_nic(backend):
    """The backend to use for `backend`, and a note when auto fell back to memory.
    veth or tap without the rights: a UsageError that says why and what to use."""
    if backend == "memory":
        return "memory", None
    from labkit.nic import labnet
    why = labnet.why_not(tap=(backend == "tap"))
    if why is None and backend == "xdp":
        from labkit.nic import xdp
        why = xdp.why_not()
    if why is None:
        return ("veth" if backend == "auto" else backend), None
    if backend == "auto":
        return "memory", f"auto: using the in-memory NIC, not veth: {why}"
    raise UsageError(f"backend {backend} is not available here: {why}")


def _make_lab(args):
    knobs = _knobs(args)                     # first: a bad knob is reported even without the data plane
    lab = _lab_module()
    _check_graph(lab, args.graph)
    backend, note = _real_nic(args.backend)
    if note:
        _say(f"note: {note}")
    args.backend = backend
    with _spinner(not args.json, "building the data plane (tables, traffic, kernels)"):
        return lab.Lab(backend=backend, graph=args.graph, knobs=knobs,
                       size=args.size, flows=args.flows, mix=args.mix, malformed=args.malformed,
                       order=args.order, pcap_in=args.pcap, pcap_out=args.out, seed=args.seed,
                       rate=getattr(args, "rate", None), gen_batch=getattr(args, "gen_batch", None),
                       workers=getattr(args, "workers", None) or 1, rss_key=getattr(args, "rss_key", None) or "default",
                       latency=getattr(args, "latency", None) or False, xdp_fib=getattr(args, "xdp_fib", None))


# -- output helpers -------------------------------------------------------------

def _console(stderr=False):
    from rich.console import Console
    stream = sys.stderr if stderr else sys.stdout
    # Piped into a file, rich would assume 80 columns and wrap the tables.
    wide = None if stream.isatty() or "COLUMNS" in os.environ else 160
    return Console(stderr=stderr, highlight=False, width=wide)


def _table(*columns):
    """A plain table (a header rule, no box) whose first column is left-aligned."""
    from rich import box
    from rich.table import Table
    t = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for i, name in enumerate(columns):
        t.add_column(name, justify="left" if i == 0 else "right", no_wrap=True)
    return t


def _say(text):
    """One line on stderr: notes and status, never on stdout (which --json owns)."""
    print(text, file=sys.stderr, flush=True)


_compile_watch = None


def _watch_compiles():
    """Say COMPILE_NOTE once, as numba starts the first compile of this process,
    so a run that compiles for tens of seconds does not look hung. numba raises
    "numba:compile" only when it compiles: a kernel loaded from its cache raises
    none, so a run that finds everything cached says nothing."""
    global _compile_watch
    if _compile_watch is not None:
        return
    import numba
    from numba.core import event

    class Note(event.Listener):
        said = False

        def on_start(self, ev):
            if not self.said:            # (numba compiles under its global lock: one at a time)
                self.said = True
                _say(COMPILE_NOTE.format(cache=numba.config.CACHE_DIR))

        def on_end(self, ev):
            pass
    _compile_watch = Note()
    event.register("numba:compile", _compile_watch)


def _spinner(enabled, text):
    """A transient spinner on stderr while something slow runs (only on a terminal)."""
    import contextlib
    if enabled and sys.stderr.isatty():
        return _console(stderr=True).status(text)
    return contextlib.nullcontext()


class _Progress:
    """A transient rich progress bar on stderr, or nothing when stderr is not a terminal.

    ``advance(done)`` takes the fraction done of the whole job; ``step(text)`` sets the
    label. It is safe to call from the thread that runs the lab.
    """

    def __init__(self, enabled, label):
        self.bar = None
        if enabled and sys.stderr.isatty():
            from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
            self.bar = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn(),
                                console=_console(stderr=True), transient=True)
            self.task = self.bar.add_task(label, total=1.0)

    def __enter__(self):
        if self.bar:
            self.bar.start()
        return self

    def __exit__(self, *exc):
        if self.bar:
            self.bar.stop()

    def step(self, text):
        if self.bar:
            self.bar.update(self.task, description=text)

    def advance(self, done):
        if self.bar:
            self.bar.update(self.task, completed=min(max(done, 0.0), 1.0))


def _run_length(args):
    """The Lab.run argument --seconds, --packets or --loop asks for: a capture
    replays once by default (as tcpreplay does), generated traffic runs 1 s."""
    if args.loop is not None and args.pcap is None:
        raise UsageError("--loop N replays a capture N times: give --pcap FILE too, "
                         "or use --packets N or --seconds S")
    if args.packets:
        return {"packets": args.packets}
    if args.seconds or args.pcap is None:
        return {"seconds": args.seconds or 1.0}
    return {"loops": args.loop or 1}


def _measure(args, lab, label, length):
    """Run the lab for `length` (``_run_length``) with a progress bar; returns the Result."""
    with _Progress(not args.json, label) as bar:
        return lab.run(progress=bar.advance, **length)


def _notes(notes):
    for note in dict.fromkeys(notes):          # once each, in order
        _say(f"note: {note}")


def _json_default(value):
    if hasattr(value, "item"):                 # numpy scalars
        return value.item()
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    return str(value)


def _print_json(obj):
    print(json.dumps(obj, default=_json_default))


def _broken(res):
    """Conservation and pool checks: a failure is a data-plane bug, not a user error."""
    problems = []
    if not res.conserved:
        problems.append(f"conservation broken: sent {res.sent} != forwarded {res.forwarded} "
                        f"+ dropped {sum(res.dropped.values())}")
    if not res.pool_ok:
        problems.append("buffers leaked: the mempool is not full after the run")
    return problems


def _finish(res):
    problems = _broken(res)
    for p in problems:
        _say(f"labkit: BUG: {p}")
    return 1 if problems else 0


# -- commands ---------------------------------------------------------------------

def _measured(args):
    """One run as the arguments describe it; with --json, also printed as JSON."""
    length = _run_length(args)               # first: a bad combination is reported before anything compiles
    with _make_lab(args) as lab:
        res = _measure(args, lab, f"{args.graph} on {args.backend}", length)
    if args.json:
        _print_json(res.to_dict())
    return res


def cmd_run(args):
    res = _measured(args)
    if args.json:
        return _finish(res)
    console = _console()
    xdp = res.extra.get("port") == "xdp"           # the DUT is an XDP program: no loop, no batch, no thread
    fib = f" (FIB: {res.extra['xdp_fib']})" if xdp and res.extra.get("xdp_fib") else ""
    how = f"XDP program {res.extra['program']}{fib} in lk-d0's driver" if xdp else f"batch {res.batch}"
    console.print(f"{res.graph} on {res.backend}, {how}, {res.seconds:.2f} s")
    t = _table("", "")
    t.show_header = False
    t.add_row("sent", f"{res.sent:,}")
    t.add_row("forwarded", f"{res.forwarded:,}")
    for reason, count in sorted(res.dropped.items()):
        t.add_row(f"drop: {reason}", f"{count:,}")
    t.add_row("Mpps", f"{res.pps / 1e6:.3f}")
    t.add_row("TSC cycles/packet" + (" (in the program)" if xdp else ""), f"{res.cycles_per_packet:.1f}")
    if res.extra.get("model", "rtc") != "rtc":   # stages: how often one gave way to another
        t.add_row("model", res.extra["model"])
        t.add_row("switches/packet", f"{res.extra['switches_per_packet']:.4f}")
    if res.cpu_percent is not None:              # a real NIC: the polling thread's cost, the generator
        several = len(res.extra.get("workers", [])) > 1
        t.add_row("DUT CPU (kernel)" if xdp else "DUT threads CPU (sum)" if several else "DUT thread CPU",
                  f"{res.cpu_percent:.0f}%")
        t.add_row("generator Mpps", f"{res.extra['gen_tx_pps'] / 1e6:.3f}")
        if "softirq_cpu_percent" in res.extra:   # veth, tap: what the kernel spent receiving meanwhile
            thread = res.extra["napi_thread_cpu_percent"]
            t.add_row("kernel receive CPU", f"softirq {res.extra['softirq_cpu_percent']:.0f}% (all CPUs)"
                      + (f", NAPI thread {thread:.0f}%" if res.extra["napi"] == "threaded" else ""))
        for link, n in sorted(res.extra.get("kernel_tx_retries", {}).items()):
            if n:
                t.add_row(f"kernel TX retries: {link}", f"{n:,}")
    if res.latency is not None:
        _latency_rows(t, res.latency)
    console.print(t)
    if len(res.extra.get("workers", [])) > 1:     # several cores: one row per RSS queue (or fanout socket)
        w = _table("queue", "handled", "Mpps", "TSC cyc/pkt", "CPU", "queue full")
        for q in res.extra["workers"]:
            full = q["dropped"].get("rx_queue_full", 0) + q["dropped"].get("dut_rx_ring_full", 0)
            w.add_row(str(q["queue"]), f"{q['handled']:,}", f"{q['mpps']:.3f}", f"{q['cycles_per_packet']:.1f}",
                      f"{q['cpu_percent']:.0f}%", f"{full:,}")
        console.print(w)
    _notes(res.notes)
    return _finish(res)


def _latency_rows(t, lat):
    """The latency rows of `labkit run`: percentiles in µs, and what load they were measured under."""
    t.add_row("latency", lat["load"] + (f", one frame in {lat['every']} stamped" if lat["every"] > 1 else ""))
    if not lat["samples"]:
        t.add_row("latency samples", f"none ({lat['unstamped']:,} frames came back without a stamp)")
        return
    for key in ("p50", "p90", "p99", "p999", "max"):
        t.add_row(f"latency {key}", f"{lat[key] / 1000:,.1f} µs")
    t.add_row("latency samples", f"{lat['samples']:,}" + (f" ({lat['unstamped']:,} frames came back without a stamp)"
                                                         if lat["unstamped"] else ""))


def cmd_runtime(args):
    res = _measured(args)
    if args.json:
        return _finish(res)
    console = _console()
    console.print(f"Time {res.seconds:.2f} s, {res.pps / 1e6:.3f} Mpps, {res.cycles_per_packet:.1f} TSC cycles/packet "
                  f"({res.graph} on {res.backend}, batch {res.batch})")
    t = _table("Name", "Calls", "Vectors", "Vectors/Call", "Clocks")
    for r in res.runtime:
        t.add_row(r.name, f"{r.calls:,}", f"{r.packets:,}", f"{r.vectors_per_call:.2f}", f"{r.cycles_per_packet:.2f}")
    console.print(t)
    _say("Clocks are TSC cycles per packet in that node (not core cycles); Vectors are packets.")
    _notes(res.notes)
    return _finish(res)


def _fmt_value(value):
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    return str(value)


def cmd_trace(args):
    with _make_lab(args) as lab:
        traces = lab.trace(n=args.n)
    if args.json:
        _print_json(traces)
        return 0
    out = []
    for i, steps in enumerate(traces, 1):
        out.append(f"Packet {i}")
        for step in steps:
            out.append(f"  {step['node']}")
            read = step.get("read") or {}
            if read:
                out.append("    read:    " + ", ".join(f"{k} {_fmt_value(v)}" for k, v in read.items()))
            changed = step.get("changed") or {}
            if changed:
                out.append("    changed: " + ", ".join(f"{k} {_fmt_value(b)} -> {_fmt_value(a)}"
                                                       for k, (b, a) in changed.items()))
            out.append(f"    => {step['result']}")
        out.append("")
    print("\n".join(out).rstrip("\n"))
    return 0


# Demo runs on a real NIC at this rate (pps) where the lesson is CPU, not speed.
DEMO_RATE = {"polling": 100_000}


# Multi-core rows of the demo (in-memory NIC): what each compares, as Lab arguments
# for the technique off and on. One worker on the multi-queue NIC, not the single
# loop, so that "RSS across 2 cores" changes the number of cores and nothing else.
DEMO_WORKERS = {
    "RSS across 2 cores": ("workers", 1, 2, dict(workers=1, multiqueue=True), dict(workers=2)),
    # two cores either way: an I/O stage and a worker stage, or two whole workers
    "run to completion": ("model", "pipeline", "rtc", dict(workers=1, knobs=Knobs(model="pipeline")),
                          dict(workers=2)),
    # one core either way: two stages switched by the kernel, or by a generator's yield
    "lightweight threads": ("model", "threads", "lthreads", dict(workers=1, knobs=Knobs(model="threads")),
                            dict(workers=1, knobs=Knobs(model="lthreads"))),
}
# Path rows of the demo (a real NIC): the DUT in user space on AF_PACKET rings, or in the
# kernel, labkit's graph as an XDP program in the veth driver (labkit.run.xdprun).
DEMO_PATHS = {"XDP in the kernel": ("backend", "veth", "xdp")}
DEMO_XDP_NOTE = ("XDP in the kernel: its cycles/packet are the XDP program's own, not the driver's work around it; "
                 "its CPU is the kernel's (softirq, NAPI threads). On veth the program runs on the generator's CPU "
                 "(README: XDP, the graph in the kernel)")
DEMO_WORKER_LAB = {             # WORKER_TECHNIQUES: the Lab both states run on
    "cache-line padding": dict(workers=2),
    "lock-free rings": dict(workers=1, dispatcher=True),
}


def _demo_plan(nic):
    """[(technique, knob, off, on, where, off Lab args, on Lab args)]: every row of the demo."""
    plan = []
    for technique, (knob, off, where) in TECHNIQUES.items():
        backend = "memory" if where == "memory" or nic == "memory" else nic
        plan.append((technique, knob, off, getattr(Knobs(), knob), where,
                     dict(backend=backend, knobs=Knobs().with_(**{knob: off})), dict(backend=backend, knobs=Knobs())))
    for technique, (knob, off, on, off_lab, on_lab) in DEMO_WORKERS.items():
        plan.append((technique, knob, off, on, "workers", dict(backend="memory", **off_lab),
                     dict(backend="memory", **on_lab)))
    for technique, (knob, off, _) in WORKER_TECHNIQUES.items():
        lab = DEMO_WORKER_LAB.get(technique, dict(workers=2))
        plan.append((technique, knob, off, getattr(Knobs(), knob), "workers",
                     dict(backend="memory", knobs=Knobs().with_(**{knob: off}), **lab),
                     dict(backend="memory", knobs=Knobs(), **lab)))
    for technique, (knob, off, on) in DEMO_PATHS.items():
        plan.append((technique, knob, off, on, "xdp", dict(backend=nic), dict(backend=on)))
    return plan


def _demo_skip(where, nic, graph):
    """Why a row of the demo cannot run here, or None."""
    if where in ("veth", "xdp") and nic != "veth":
        return "needs a real NIC: --backend veth, as root" if nic == "memory" else f"needs veth, not {nic}"
    if where == "xdp":
        from labkit.nic import xdp
        from labkit.run.lab import XDP_GRAPHS
        if xdp.why_not():
            return f"needs XDP: {xdp.why_not()}"
        if graph not in XDP_GRAPHS:
            return f"backend xdp runs the graphs {' and '.join(XDP_GRAPHS)}, not {graph}"
    return None


def _demo_rows(args, lab_mod, seconds, nic):
    """Each technique: off, then on (the defaults), on the backend where it
    shows: the in-memory NIC for compute, memory and multi-core techniques,
    the real NIC `nic` (veth or tap) for I/O ones. Each side runs
    ``args.repeats`` times, interleaved (off, on, off, on...), while the rest
    of the machine's CPU use is sampled; a row holds the medians, every run,
    a verdict (labkit.run.noise) and the other processes' CPU share.
    Returns (rows, notes)."""
    from labkit.run import noise
    todo = _demo_plan(nic)
    rows, notes = [], []
    repeats = getattr(args, "repeats", DEMO_REPEATS)
    quiet_wait = getattr(args, "quiet_wait", 0.0)
    traffic = dict(size=64, flows=1024, mix="udp", malformed=0.0, pcap_in=None, pcap_out=None, seed=1)
    steps = 2 * repeats * len(todo)
    with _Progress(not args.json, "demo") as bar:
        for i, (technique, knob, off_value, on_value, where, off_lab, on_lab) in enumerate(todo):
            row = {"technique": technique, "knob": knob, "off": off_value, "on": on_value, "where": where}
            rows.append(row)
            backend = off_lab["backend"]              # (the NIC: a path row runs both states on it)
            skip = _demo_skip(where, nic, args.graph)
            if skip:
                row["skipped"] = skip
                continue
            if where == "xdp":
                notes.append(DEMO_XDP_NOTE)
            row["backend"] = backend
            rate = DEMO_RATE.get(technique) if backend != "memory" else None
            if rate:
                row["rate"] = rate
            runs = {"off": [], "on": []}
            loads = []
            for rep in range(repeats):
                for j, (state, value, lab_args) in enumerate((("off", off_value, off_lab), ("on", on_value, on_lab))):
                    step = (i * repeats + rep) * 2 + j
                    bar.step(f"{technique}: {knob}={value} ({state}, run {rep + 1} of {repeats}) on {backend}, "
                             f"{i + 1} of {len(todo)}")

                    def progress(done, base=step / steps):
                        bar.advance(base + done / steps)
                    if quiet_wait:
                        noise.wait_quiet(quiet_wait, lambda why: bar.step(f"{technique}: {why}"))
                    with lab_mod.Lab(graph=args.graph, rate=rate, **lab_args, **traffic) as lab:
                        res = lab.run(seconds=seconds, progress=progress)     # (it samples the machine's load)
                    loads.append((res.other_cpu_percent, res.busiest, res.steal_percent))
                    notes.extend(n for n in res.notes
                                 if not n.startswith(("rate applies", "gen_batch applies", "the machine was busy")))
                    notes.extend(_broken(res))
                    runs[state].append({"mpps": res.pps / 1e6, "cycles_per_packet": res.cycles_per_packet,
                                        "cpu_percent": res.cpu_percent})
            for state in ("off", "on"):
                for key in ("mpps", "cycles_per_packet", "cpu_percent"):
                    xs = [r[key] for r in runs[state]]
                    row[f"{state}_{key}"] = noise.spread(xs)[0]
                    if key != "cpu_percent":
                        row[f"{state}_{key}_runs"] = xs
            offs, ons = row["off_mpps_runs"], row["on_mpps_runs"]
            row["speedup"] = row["on_mpps"] / row["off_mpps"] if row["off_mpps"] else None
            row["speedup_range"] = ([min(ons) / max(offs), max(ons) / min(offs)] if min(offs) > 0 else None)
            row["verdict"] = noise.verdict(offs, ons)
            other, busiest, steal = max(loads, key=lambda ld: -1 if ld[0] is None else ld[0] + ld[2])
            row["other_cpu_percent"], row["busiest"], row["steal_percent"] = other, busiest, steal
            row["busy"] = noise.is_busy(other, steal)
            if row["busy"] and row["verdict"] in ("faster", "slower"):
                row["verdict"] = "unreliable (busy)"
    return rows, notes


def _x(v):
    """A ratio in three figures or so: 0.98, 9.83, 15.5, 1980."""
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def _pct(v):
    return "" if v is None else f"{v:.0f}%"


def cmd_demo(args):
    from labkit.run import noise
    seconds = args.seconds or (0.2 if quick() else 0.5)
    lab_mod = _lab_module()
    _check_graph(lab_mod, args.graph)
    nic, note = _real_nic(args.backend)
    if not args.json:
        real = f"real NIC: {nic}: {BACKEND_WHY[nic]}" if nic != "memory" else \
            "no real NIC (I/O techniques need veth, as root)"
        _say(f"labkit demo: compute, memory and multi-core techniques on the {BACKEND_WHY['memory']}; {real}; "
             f"graph {args.graph}; {seconds:g} s per run, each technique off then on, {args.repeats} times")
    if note:
        _say(f"note: {note}")
    rows, notes = _demo_rows(args, lab_mod, seconds, nic)
    busy = [r for r in rows if r.get("busy")]
    if busy:
        worst = max(busy, key=lambda r: r["other_cpu_percent"] + r["steal_percent"])
        notes.append(noise.busy_warning(worst["other_cpu_percent"], [(b["name"], b["cpu_percent"])
                                                                     for b in worst["busiest"]],
                                        f"{len(busy)} of the {len(rows)} rows (marked unreliable)",
                                        steal=worst["steal_percent"]))
    if args.json:
        _print_json(rows)
    else:
        console = _console()
        console.print(f"Each technique off, then on ({args.graph}; medians of {args.repeats} runs a side, "
                      f"interleaved; cycles are TSC cycles/packet; CPU is the DUT thread's, on a real NIC)")
        with_cpu = any(r.get("off_cpu_percent") is not None for r in rows)     # a real NIC's rows
        t = _table("technique", "knob off", "NIC", "Mpps off → on", "cyc/pkt off → on",
                   *(["CPU off → on"] if with_cpu else []), "speed-up (range)", "verdict", "others")
        t.columns[-3].justify = "left"
        t.columns[1].justify = t.columns[2].justify = "left"
        for r in rows:
            knob = f"{r['knob']}={r['off']}"
            if "skipped" in r:                   # (the JSON row says why in full)
                short = "needs veth" if r["skipped"].startswith("needs") and "veth" in r["skipped"] else "skipped"
                t.add_row(r["technique"], knob, "-", "", "", *([""] if with_cpu else []), short, "", "")
                continue
            nic_ = r["backend"] + (f" @{r['rate'] // 1000}k" if r.get("rate") else "")
            cpu = "" if r["off_cpu_percent"] is None else \
                f"{_pct(r['off_cpu_percent'])} → {_pct(r['on_cpu_percent'])}"
            lo_hi = r.get("speedup_range")
            speed = "-" if not r["speedup"] else f"{_x(r['speedup'])}x" + \
                (f" ({_x(lo_hi[0])}-{_x(lo_hi[1])})" if lo_hi and args.repeats > 1 else "")
            t.add_row(r["technique"], knob, nic_, f"{r['off_mpps']:.3f} → {r['on_mpps']:.3f}",
                      f"{r['off_cycles_per_packet']:.1f} → {r['on_cycles_per_packet']:.1f}",
                      *([cpu] if with_cpu else []), speed, r["verdict"].replace(" (busy)", ""),
                      _pct(r["other_cpu_percent"]))
        console.print(t)
        console.print(f"verdict: faster (slower) when every run with the technique on beat (lost to) every run "
                      f"with it off, by {noise.MIN_EFFECT:.0%} or more at the medians; by chance alone a row "
                      f"gets one {2 * noise.separation_chance(args.repeats):.1%} of the time with {args.repeats} "
                      f"runs a side. NIC @100k: a fixed offered rate. others: the CPU the rest of the machine "
                      f"used during the row's busiest run, in % of one CPU; from {noise.BUSY_PERCENT:g}% the "
                      f"machine was busy and a verdict is unreliable.")
    _notes(notes)
    return 1 if any("conservation broken" in n or "buffers leaked" in n for n in notes) else 0


def cmd_net(args):
    from labkit.nic import labnet
    why = labnet.why_not(tap=args.tap)
    if why is not None and args.action != "status":
        raise UsageError(f"labkit net {args.action}: {why}")
    if args.action == "up":
        st = labnet.up(tap=args.tap)
        done = f"lab network up: namespaces {labnet.gen_ns()} and {labnet.dut_ns()}"
    elif args.action == "down":
        removed = labnet.down()
        st = labnet.status() if why is None else {"up": False}
        done = "removed: " + ", ".join(removed) if removed else "nothing to remove: the lab network was not up"
    else:
        st = labnet.status() if why is None else {"up": False, "why_not": why}
        done = None
    if args.json:
        _print_json(st)
        return 0
    if done:
        _say(done)
    if not st.get("up"):
        print("lab network: down" + (f" ({why})" if why else ""))
        return 0
    t = _table("namespace", "link", "state", "mac", "mtu", "rx", "tx", "rx drop", "tx drop", "IP off")
    t.columns[1].justify = t.columns[3].justify = "left"
    for ns, links in st["namespaces"].items():
        for name, ln in links.items():
            t.add_row(ns, name, ln["state"], ln["mac"], str(ln["mtu"]), f"{ln['rx_packets']:,}",
                      f"{ln['tx_packets']:,}", f"{ln['rx_dropped']:,}", f"{ln['tx_dropped']:,}",
                      "yes" if ln.get("ingress_drop") else "no")
    _console().print(t)
    _say("rx/tx: packets; IP off: the ingress drop that keeps the kernel's IP stack off lab traffic")
    return 0


def cmd_grade(args):
    from labkit.course import grade
    return grade.main(args)


def cmd_gen(args):
    """Print where the generated module is and its source (course material: the
    loop a run compiles, read as the student's own code)."""
    from labkit.graph.compile import resolve
    from labkit.graph.nodes import GRAPHS
    from labkit.run.loopgen import port_for, write_module
    if args.graph not in GRAPHS:
        raise UsageError(f"unknown graph {args.graph!r}; use one of: {', '.join(GRAPHS)}")
    if args.fanout and args.port != "ring":
        raise UsageError(f"--fanout is a ring port's (PACKET_FANOUT sockets), not {args.port!r}'s: add --port ring")
    knobs = _knobs(args)
    g = resolve(args.graph)
    path, source = write_module(g, knobs, port_for(g, knobs, args.port, **({"fanout": True} if args.fanout else {})))
    print(f"# labkit gen: {path}")
    print(source, end="")
    return 0


def cmd_rss(args):
    from labkit.nic import rss
    return rss.main(args)


def cmd_bench(argv):
    import importlib
    try:
        bench = importlib.import_module("labkit.bench")
    except ImportError as e:
        raise UsageError(f"labkit bench is not available: labkit.bench did not import ({e})")
    return bench.main(argv)


COMMANDS = {"run": cmd_run, "runtime": cmd_runtime, "trace": cmd_trace, "demo": cmd_demo, "net": cmd_net,
            "rss": cmd_rss, "grade": cmd_grade, "gen": cmd_gen}


def _one_line(text):
    return " ".join(str(text).split())


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] not in (["bench"],) and threading.current_thread() is threading.main_thread():
        interrupts.install()           # SIGTERM as Ctrl-C; neither lost in a finalizer
    try:
        if argv[:1] == ["bench"]:               # bench parses its own options
            return cmd_bench(argv[1:])
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except Terminated:
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except UsageError as e:
        _say(f"labkit: error: {_one_line(e)}")
        return EXIT_USAGE
    except (KnobError, ValueError) as e:      # LabError is a ValueError
        _say(f"labkit: error: {_one_line(e)}")
        return EXIT_USAGE
    except OSError as e:                      # e.g. the pcap could not be written
        _say(f"labkit: error: {_one_line(e)}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
