"""One loop generator: the run loop every engine compiles, from one skeleton.

Every engine runs the same poll-mode loop, as a DPDK application's lcore
does; only the port it talks to differs. The skeleton is here once, and a
port fills its gaps with a few lines of its own (``labkit.run.ports``):

    while True:
        t0 = rdtsc()
        <reclaim>        the NIC's part: take sent buffers back, refill the RX ring
        <rx>             take up to `batch` packets into the first node's frame: n
        if n == 0:
            <idle>       nothing came: are we done? sleep? is the slice over?
            continue
        <after_rx>       what the port does to each packet it took (copies, metadata)
        counts[0] = n
        n_tx, n_free = dispatch(...)       the graph (labkit.graph.compile)
        <tx>             free what the graph dropped, transmit the rest
        t2 = rdtsc()
        <account>        TSC cycles: the data plane's, the NIC's
        if t2 >= slice_end_tsc:
            return False
        <tail>           give the CPU away (model="threads")

The loop returns to Python every slice (``labkit.settings.SLICE_S``): numba
code cannot be interrupted, and Python shows progress and takes Ctrl-C.

``module_source(g, knobs, port)`` is the whole generated module: the graph's
node loops and dispatch, then this loop for the port; ``labkit gen`` prints
it, and ``tests/golden/`` pins it for a few knob combinations.
"""
from ..graph.compile import generate, load_source, write_source
from ..memory.layouts import LINE_SHIFT
from . import ports as P

SKELETON = (
    "@JIT",
    "def run_slice({args}{tables}):",
    '    """{doc}"""',
    "{setup}",
    "    while True:",
    "        t0 = rdtsc()",
    "{reclaim}",
    "{rx}",
    "        if n == 0:",
    "{idle}",
    "            continue",
    "{after_rx}",
    "        counts[0] = n",
    "        n_tx, n_free = dispatch(arena, frames_h, frames_l, frames_x, counts, tx_h, tx_l, free_h, "
    "counters, stats{tables})",
    "{tx}",
    "        t2 = rdtsc()",
    "{account}",
    "        if t2 >= slice_end_tsc:",
    "            return False",
    "{tail}",
)


def _indent(lines, spaces):
    return "\n".join(" " * spaces + line if line else "" for line in lines)


def loop_source(g, knobs, port):
    """The source of ``run_slice`` for graph g on `port` (a ``labkit.run.ports.Port``)."""
    fill = {"args": port.args, "tables": "".join(", " + t for t in g.tables), "doc": port.doc,
            "setup": _indent(port.setup, 4), "reclaim": _indent(port.reclaim, 8), "rx": _indent(port.rx, 8),
            "idle": _indent(port.idle, 12), "after_rx": _indent(port.after_rx, 8), "tx": _indent(port.tx, 8),
            "account": _indent(port.account, 8), "tail": _indent(port.tail, 8)}
    body = [line.format(**fill) for line in SKELETON]
    body = [line for line in body if line.strip()]          # a port with no lines for a gap
    imports = list(port.imports)
    if not knobs.jit:                                        # JIT off: the same loop, interpreted
        imports += [f"{f} = {f}.py_func" for f in port.compiled]
    return "\n".join(imports) + "\n\n\n" + "\n".join(body) + "\n"


def module_source(g, knobs, port):
    """The whole generated module: node loops and dispatch, then the run loop."""
    shift = 0 if port.byte_handles else LINE_SHIFT      # ring handles are byte offsets into the ring
    return generate(g, knobs, handle_shift=shift) + "\n\n" + loop_source(g, knobs, port)


def port_for(g, knobs, kind, **options):
    """The port of an engine by name: "memory" (the single-queue in-memory NIC),
    "device" and "dispatch" (a worker of the multi-queue NIC, fed by RSS in the
    device or by a dispatcher thread), "ring", "socket", "tap" (veth and TAP)."""
    if kind == "memory":
        return P.memory_port(g, knobs)
    if kind in ("device", "dispatch"):
        return P.multiqueue_port(g, knobs, kind)
    if kind == "ring":
        return P.ring_port(g, knobs, **options)
    if kind in ("socket", "tap"):
        return P.syscall_port(g, knobs, kind)
    raise ValueError(f"port kind {kind!r}: use one of {', '.join(P.KINDS)}")


def stem(g, port):
    """The generated module's name stem: the graph, and the port unless it is the single loop's."""
    if port.kind == "memory":
        return g.name
    if port.kind in ("device", "dispatch"):
        return f"{g.name}_workers"
    return f"{g.name}_{port.kind}" + ("_fanout" if port.fanout else "")


def load_module(g, knobs, port):
    """The generated module for graph g on `port`, written to labkit's cache and imported."""
    return load_source(module_source(g, knobs, port), stem(g, port))


def write_module(g, knobs, port):
    """(path, source) of the generated module, written where load_module imports it from."""
    source = module_source(g, knobs, port)
    return write_source(source, stem(g, port))[1], source
