"""The graph compiler: from node declarations to one JIT-compiled dispatch.

For a graph (nodes in order from the rx side, arcs by name) and the knobs that
shape code (jit, unroll, interleave, prefetch, prefetch_distance, layout,
variant), we *generate Python source*:

- one loop per node that calls the node's per-packet function over a whole
  vector and fills ``next`` (a single, dual or quad loop; a dual or quad loop
  *interleaves* a node that is cut in stages, ``Node.stages``: each stage for
  every packet of the iteration, then the next stage; with software
  prefetch of the packets ``prefetch_distance`` places ahead, and of the
  node's tables); under ``variant="simd"``, for a node that has one, three
  loops instead: gather the vector's headers into scratch rows, decide every
  row in vector lanes, hand out the verdicts (``labkit.graph.kernels``);
- ``dispatch``: runs the nodes in order; after each node a generic step moves
  every packet to its next node's frame, to the tx vector, or counts it by
  reason and puts it on the free list (VPP's ``vlib_buffer_enqueue_to_next``).

The source is written to ``~/.cache/labkit/gen/`` under a name that hashes its
text, and imported from there; so numba's on-disk cache works for generated
code too, and a student can open the file and read exactly what ran.

Graphs are DAGs here and every arc points forward, so one pass in order moves
each packet through all its nodes: frames of size ``batch`` suffice.
"""
import hashlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from typing import Dict, List, Tuple

import numpy as np

from ..settings import cache_root, source_fingerprint
from ..memory.layouts import LINE_SHIFT, PKT_VEC_AOS, RUN_REASONS
from .kernels import SIMD_ROWS
from .node import DROP, TX, Node
from .nodes import GRAPHS, NODES, WIRING

GEN_VERSION = 4        # bump when the generator's output changes meaning


@dataclass
class Graph:
    """A graph resolved to indices: who follows whom, and every drop reason."""
    name: str
    nodes: List[Node]
    arcs: List[List[int]]          # per node, per arc: a node index, or TX_T / DROP_T
    err_base: List[int]            # per node: index of its first error in `reasons`
    reasons: List[str]             # every drop reason, run-level ones first
    explanations: Dict[str, str]
    tables: Tuple[str, ...]        # every table the nodes need, in order of first use


TX_T, DROP_T = -1, -2



def resolve(graph_name):
    if graph_name not in GRAPHS:
        raise ValueError(f"unknown graph {graph_name!r}; graphs are: {', '.join(GRAPHS)}")
    names = GRAPHS[graph_name]
    index = {n: i for i, n in enumerate(names)}
    wiring = WIRING.get(graph_name, {})
    nodes = [NODES[n] for n in names]
    arcs, err_base = [], []
    reasons = [r for r, _ in RUN_REASONS]
    explanations = dict(RUN_REASONS)
    tables = []
    for i, node in enumerate(nodes):
        row = []
        for a, default in enumerate(node.next):
            target = wiring.get((node.name, a), default)
            if target == TX:
                row.append(TX_T)
            elif target == DROP:
                row.append(DROP_T)
            elif target in index and index[target] > i:
                row.append(index[target])
            else:
                raise ValueError(f"graph {graph_name}: arc {node.name}[{a}] -> {target!r} "
                                 "must go to a later node of the graph, tx or drop")
        arcs.append(row)
        err_base.append(len(reasons))
        for e, why in node.errors:
            reasons.append(e)
            explanations[e] = why
        tables += [t for t in node.tables if t not in tables]
    return Graph(graph_name, nodes, arcs, err_base, reasons, explanations, tuple(tables))


# --- code generation -----------------------------------------------------------

def _fname(node):
    return node.name.replace("-", "_")


def const_name(name):
    """A node's or a drop reason's name as a constant of the generated code."""
    return name.replace("-", "_").upper()


def _constants(g, handle_shift, knobs, simd):
    """The generated module's named constants: where each node's frame and each
    drop reason sit, so the code says counts[IP4_INPUT], not counts[1]."""
    width = max(len(const_name(x)) for x in list(g.reasons) + [n.name + "_errors" for n in g.nodes])
    pad = lambda name: const_name(name).ljust(width)          # noqa: E731
    where = ("64-byte lines of the mempool's arena" if handle_shift == LINE_SHIFT
             else "byte offsets into an AF_PACKET RX ring" if handle_shift == 0 else f"<< {handle_shift}")
    out = [f"HANDLE_SHIFT = {handle_shift}      # a handle's buffer starts at handle << HANDLE_SHIFT: {where}",
           f"PREFETCH_AHEAD = {knobs.prefetch_distance}    # packets ahead whose data line (and tables) a node "
           "prefetches (knob prefetch_distance)",
           "CALLS, VECTORS, CLOCKS = 0, 1, 2   # the columns of stats, per node (VPP's show runtime)",
           "", "# the nodes, in order: each one's frame in frames_* and counts, its row in stats"]
    if simd:
        out.insert(3, f"ROW0 = {row0(g, knobs.layout)}    # frames_h's scratch rows start here (simd variants: "
                   "make_frames)")
    out += [f"{pad(n.name)} = {i}" for i, n in enumerate(g.nodes)]
    out += ["", "# drop reasons: each one's index in counters (labkit.graph.compile.resolve)"]
    out += [f"{pad(r)} = {str(i).ljust(3)} # {g.explanations[r]}" for i, r in enumerate(g.reasons)]
    out += ["", "# each node's first error: a kernel's code c < 0 is error -1 - c of its node"]
    out += [f"{pad(n.name + '_errors')} = {g.err_base[i]}" for i, n in enumerate(g.nodes) if n.errors]
    return out


def _simd(node, knobs):
    """Whether `node` runs its whole-vector "simd" variant under these knobs."""
    return knobs.variant == "simd" and node.simd is not None


def _stages(node, knobs):
    """The stages a dual or quad loop interleaves for `node`: its own (``Node.stages``) when it
    runs its scalar implementation in a multi-loop, else none (the loop repeats the function)."""
    if knobs.unroll > 1 and knobs.interleave and not _simd(node, knobs) and node.impl(knobs.variant) is node.one:
        return node.stages
    return ()


def row0(g, layout):
    """Where the scratch rows of the simd variants begin in frames_h: after the nodes' frames
    (layout soa), or at 0 (aos, whose frames are in frames_x and frames_h holds only the rows)."""
    return len(g.nodes) if layout == "soa" else 0


def _accessors(node, knobs):
    """(handle expression, length expression, store-next statement, the node loop's arguments)."""
    tbl = "".join(", " + t for t in node.tables)
    if knobs.layout == "aos":
        return (lambda e: f"(np.int64(v[{e}]['handle']) << HANDLE_SHIFT)",
                lambda e: f"np.int64(v[{e}]['length'])",
                lambda e, x: f"v[{e}]['next'] = {x}", f"arena, v, n{tbl}")
    return (lambda e: f"(np.int64(hs[{e}]) << HANDLE_SHIFT)", lambda e: f"np.int64(ls[{e}])",
            lambda e, x: f"nxt[{e}] = {x}", f"arena, hs, ls, n, nxt{tbl}")


def _simd_loop(node, knobs):
    """Source of a node's loop under its "simd" variant: gather every packet's header into the
    scratch rows, decide every column at once (vectorized), then store the codes, asking the
    per-packet function for the packets the lanes sent to the slow path. Unroll and prefetch do
    not apply: these loops are the variant's own."""
    h, ln, put, args = _accessors(node, knobs)
    f = _fname(node)
    tbl = "".join(", " + t for t in node.tables)
    return "\n".join([
        "@JIT", f"def {f}_node({args}, frames_h):",
        f'    """{node.name} over one vector, the simd variant: gather into rows, decide in vector lanes."""',
        "    for i in range(n):",
        f"        {f}_gather(arena, {h('i')}, {ln('i')}, frames_h, ROW0, i)",
        f"    {f}_lanes(frames_h, ROW0, n)",
        "    for i in range(n):",
        "        c = np.int64(frames_h[ROW0 + ROW_CODE, i]) - CODE_BIAS",
        "        if c == SLOW:         # a header with options: the per-packet function decides",
        f"            c = {f}_one(arena, {h('i')}, {ln('i')}{tbl})",
        f"        {put('i', 'c')}"]) + "\n"


def _node_loop(node, knobs):
    """Source of the loop that runs `node` over one vector (a single, dual or quad
    loop, then a single loop for the rest). A dual or quad loop runs the node's stages
    interleaved when it has them (``_stages``), else its function once per packet, the
    body repeated. With prefetch, each iteration first
    prefetches the packets PREFETCH_AHEAD places ahead, checking that bound once
    per iteration (VPP's quad loops run ``while (n_left_from >= 8)``): the last
    iterations of a vector prefetch nothing, there is nothing ahead to fetch."""
    if _simd(node, knobs):
        return _simd_loop(node, knobs)
    tbl = "".join(", " + t for t in node.tables)
    h, ln, put, args = _accessors(node, knobs)
    f = _fname(node)

    def body(width, prefetch):
        out = []
        if prefetch:       # the bound once per iteration: all `width` packets ahead, or none
            out.append(f"        if i + {width} + PREFETCH_AHEAD <= n:")
            for j in range(width):
                p = f"i + PREFETCH_AHEAD + {j}"
                out.append(f"            prefetch(arena, {h(p)} + DATA_OFF)")
                if node.prefetch is not None:
                    out.append(f"            {f}_pf(arena, {h(p)}, {ln(p)}{tbl})")
        if width > 1 and stages:        # interleaved: each stage for every packet, then the next stage
            out += [f"        b{j}, n{j} = {h(f'i + {j}')}, {ln(f'i + {j}')}" for j in range(width)]
            out += [f"        s{j} = {f}_s0(arena, b{j}, n{j}{tbl})" for j in range(width)]
            for k in range(1, len(stages)):
                out += [f"        s{j} = {f}_s{k}(arena, b{j}, n{j}, s{j}{tbl}) if s{j} >= 0 else s{j}"
                        for j in range(width)]
            out += [f"        {put(f'i + {j}', f's{j}')}" for j in range(width)]
        else:
            for j in range(width):
                e = f"i + {j}"
                out.append(f"        {put(e, f'{f}_one(arena, {h(e)}, {ln(e)}{tbl})')}")
        return out + [f"        i += {width}"]

    u, pf = knobs.unroll, knobs.prefetch
    stages = _stages(node, knobs)
    kind = {1: "single", 2: "dual", 4: "quad"}[u] + (f" loop, {len(stages)} stages interleaved" if stages else " loop")
    lines = ["@JIT", f"def {f}_node({args}):",
             f'    """{node.name} over one vector: the {kind}{", prefetching ahead" if pf else ""}."""',
             "    i = 0"]
    if u > 1:
        lines.append(f"    while i + {u} <= n:")
        lines += body(u, pf)
    lines.append("    while i < n:")
    lines += body(1, pf and u == 1)     # after a dual or quad loop, no packet is PREFETCH_AHEAD ahead
    return "\n".join(lines) + "\n"


def _enqueue(g, i, aos):
    """The generic step after node i: every packet to its next node's frame, to
    the TX vector, or dropped (counted by reason, its buffer on the free list).

    First a check whether the whole vector goes one way (VPP's enqueue_to_next
    looks for the same "next" in runs of packets): it usually does (every packet
    valid, every route resolved), and then the frame moves in one branch-free
    copy. Else each packet by its code."""
    node = g.nodes[i]
    err0 = const_name(node.name + "_errors") if node.errors else None
    if aos:
        code, hk, lk = (lambda k: f"v[{k}]['next']"), (lambda k: f"v[{k}]['handle']"), (lambda k: f"v[{k}]['length']")
    else:
        code, hk, lk = (lambda k: f"nxt[{k}]"), (lambda k: f"hs[{k}]"), (lambda k: f"ls[{k}]")

    def to_node(t, k, m, ind):
        to = const_name(g.nodes[t].name)
        if aos:
            return [f"{ind}frames_x[{to}][{m}]['handle'] = {hk(k)}", f"{ind}frames_x[{to}][{m}]['length'] = {lk(k)}"]
        return [f"{ind}frames_h[{to}, {m}] = {hk(k)}", f"{ind}frames_l[{to}, {m}] = {lk(k)}"]

    lines = [f"        c0 = {code(0)}",
             "        same = 0",
             "        for k in range(n):",
             f"            same += {code('k')} == c0",
             "        if same == n:             # the whole vector one way: no per-packet decision",
             "            if c0 < 0:",
             f"                counters[{err0} - 1 - c0] += n" if err0 else
             "                pass    # (a node without errors returns no code < 0)",
             "                for k in range(n):",
             f"                    free_h[n_free + k] = {hk('k')}",
             "                n_free += n"]
    for a, t in enumerate(g.arcs[i]):
        lines.append(f"            elif c0 == {a}:     # -> {'tx' if t == TX_T else 'drop' if t == DROP_T else g.nodes[t].name}")
        if t == TX_T:
            lines += ["                for k in range(n):", f"                    tx_h[n_tx + k] = {hk('k')}",
                      f"                    tx_l[n_tx + k] = {lk('k')}", "                n_tx += n"]
        elif t == DROP_T:
            lines += ["                for k in range(n):", f"                    free_h[n_free + k] = {hk('k')}",
                      "                n_free += n"]
        else:
            to = const_name(g.nodes[t].name)
            lines += [f"                m = counts[{to}]", "                for k in range(n):"]
            lines += to_node(t, "k", "m + k", "                    ")
            lines.append(f"                counts[{to}] = m + n")
    lines += ["        else:",
              "            for k in range(n):",
              f"                c = {code('k')}",
              "                if c < 0:",
              f"                    counters[{err0} - 1 - c] += 1" if err0 else
              "                    pass    # (a node without errors returns no code < 0)",
              f"                    free_h[n_free] = {hk('k')}",
              "                    n_free += 1"]
    for a, t in enumerate(g.arcs[i]):
        if t == TX_T:
            lines += [f"                elif c == {a}:      # -> tx",
                      f"                    tx_h[n_tx] = {hk('k')}", f"                    tx_l[n_tx] = {lk('k')}",
                      "                    n_tx += 1"]
        elif t == DROP_T:
            lines += [f"                elif c == {a}:      # -> drop",
                      f"                    free_h[n_free] = {hk('k')}", "                    n_free += 1"]
        else:
            to = const_name(g.nodes[t].name)
            lines += [f"                elif c == {a}:      # -> {g.nodes[t].name}", f"                    m = counts[{to}]"]
            lines += to_node(t, "k", "m", "                    ")
            lines.append(f"                    counts[{to}] = m + 1")
    return lines


def _dispatch(g, knobs):
    """Source of dispatch(): every node in order, each followed by the generic enqueue step."""
    aos = knobs.layout == "aos"
    tbl = "".join(", " + t for t in g.tables)
    lines = ["@JIT",
             f"def dispatch(arena, frames_h, frames_l, frames_x, counts, tx_h, tx_l, free_h, "
             f"counters, stats{tbl}):",
             '    """Run one vector (already in the first node\'s frame) through the graph."""',
             "    n_tx = 0", "    n_free = 0"]
    for i, node in enumerate(g.nodes):
        ntbl = "".join(", " + t for t in node.tables)
        rows = ", frames_h" if _simd(node, knobs) else ""
        me = const_name(node.name)
        lines += [f"    n = counts[{me}]", "    if n > 0:", "        t0 = rdtsc()"]
        if aos:
            lines += [f"        v = frames_x[{me}]", f"        {_fname(node)}_node(arena, v, n{ntbl}{rows})"]
        else:
            lines += [f"        hs = frames_h[{me}]", f"        ls = frames_l[{me}]", f"        nxt = frames_x[{me}]",
                      f"        {_fname(node)}_node(arena, hs, ls, n, nxt{ntbl}{rows})"]
        lines += _enqueue(g, i, aos)
        lines += [f"        counts[{me}] = 0",
                  f"        stats[{me}, CALLS] += 1",
                  f"        stats[{me}, VECTORS] += n",
                  f"        stats[{me}, CLOCKS] += rdtsc() - t0"]
    lines.append("    return n_tx, n_free")
    return "\n".join(lines) + "\n"


def generate(g, knobs, handle_shift=LINE_SHIFT):
    """The graph's part of a generated module: node loops and dispatch, under these knobs.

    handle_shift: LINE_SHIFT when handles are mempool buffers, 0 when they are
    byte offsets of frames in an AF_PACKET ring (zero-copy on veth)."""
    impls = [n.impl(knobs.variant) for n in g.nodes]
    simd = [f for n in g.nodes if _simd(n, knobs) for f in n.simd]
    staged = [f for n in g.nodes for f in _stages(n, knobs)]
    imports = sorted({(f.__module__, f.__name__) for f in impls + simd + staged} |
                     {(n.prefetch.__module__, n.prefetch.__name__) for n in g.nodes if n.prefetch})
    head = [f'"""Generated by labkit.graph.compile for graph {g.name!r}: '
            f'unroll={knobs.unroll}{" interleave=True" if knobs.interleave else ""} prefetch={knobs.prefetch} layout={knobs.layout} jit={knobs.jit}'
            + (f' variant={knobs.variant}.' if knobs.variant != "scalar" else "."),
            "", "Do not edit: it is rewritten from the node declarations (labkit gen prints it).", '"""',
            "import numpy as np",
            "from numba import njit",
            "from labkit.memory.intrinsics import rdtsc, prefetch",
            "from labkit.memory.layouts import DATA_OFF, LINE_SHIFT"]
    if simd:
        head.append("from labkit.graph.kernels import CODE_BIAS, ROW_CODE, SLOW")
    for mod, name in imports:
        head.append(f"from {mod} import {name}")
    if knobs.jit:
        # _nrt=False: no reference counting in the generated loops. With it,
        # every call of a kernel did an atomic incref and decref per array
        # argument per packet: ip4-lookup cost ~122 TSC cycles/packet instead
        # of ~8 (found by comparing with the C kernels, labkit/bench/ckernels.py).
        # The kernels are inline="always", so they compile inside these loops
        # and inherit it. Nothing here allocates, which _nrt=False requires.
        head.append("JIT = njit(nogil=True, cache=True, _nrt=False)")
    else:
        # JIT off: the same loops, interpreted, calling each kernel's Python twin.
        head.append("JIT = lambda f: f")
        for mod, name in imports:
            head.append(f"{name} = {name}.py_func")
    for n, impl in zip(g.nodes, impls):
        head.append(f"{_fname(n)}_one = {impl.__name__}")
        if n.prefetch:
            head.append(f"{_fname(n)}_pf = {n.prefetch.__name__}")
        for k, st in enumerate(_stages(n, knobs)):
            head.append(f"{_fname(n)}_s{k} = {st.__name__}")
        if _simd(n, knobs):
            head.append(f"{_fname(n)}_gather, {_fname(n)}_lanes = {n.simd[0].__name__}, {n.simd[1].__name__}")
    parts = ["\n".join(head) + "\n", "\n".join(_constants(g, handle_shift, knobs, bool(simd))) + "\n"]
    parts += [_node_loop(n, knobs) for n in g.nodes]
    parts.append(_dispatch(g, knobs))
    return "\n\n".join(parts)


def write_source(source, stem):
    """Write generated source to the cache directory, under a name that hashes
    the text and labkit's source (``labkit.settings.source_fingerprint``):
    numba caches the module's compiled code, the kernels it calls inlined, and
    would keep their old code after an update if only the kernels' files
    changed. Returns (module name, path)."""
    digest = hashlib.sha1(f"{GEN_VERSION}\n{source_fingerprint()}\n{source}".encode()).hexdigest()[:16]
    name = f"labkit_gen_{stem}_{digest}"
    d = cache_root() / "gen"
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{name}.py"
    if not path.exists() or path.read_text() != source:
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(source)
        os.replace(tmp, path)        # atomic: a concurrent process sees old or new, never half
    return name, path


def load_source(source, stem):
    """Write generated source to the cache directory (``write_source``) and import it."""
    name, path = write_source(source, stem)
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def compile_graph(graph_name, knobs):
    """(Graph, module with the node loops and dispatch) for these knobs."""
    g = resolve(graph_name)
    src = generate(g, knobs)
    return g, load_source(src, f"{graph_name}")


def make_frames(g, batch, layout):
    """Per-node frames of `batch` packets, in the chosen layout: (frames_h, frames_l, frames_x,
    counts). frames_h also carries SIMD_ROWS scratch rows from ``row0(g, layout)`` on, where a
    node's "simd" variant gathers its headers (one set per engine or worker, like the frames)."""
    k = len(g.nodes)
    counts = np.zeros(k, dtype=np.int64)
    if layout == "aos":
        x = np.zeros((k, batch), dtype=PKT_VEC_AOS)
        return np.zeros((SIMD_ROWS, batch), np.uint32), np.zeros((1, 1), np.uint32), x, counts
    return (np.zeros((k + SIMD_ROWS, batch), dtype=np.uint32), np.zeros((k, batch), dtype=np.uint32),
            np.zeros((k, batch), dtype=np.int32), counts)
