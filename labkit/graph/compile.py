"""The graph compiler: from node declarations to one JIT-compiled dispatch.

For a graph (nodes in order from the rx side, arcs by name) and the knobs that
shape code (jit, unroll, prefetch, layout), we *generate Python source*:

- one loop per node that calls the node's per-packet function over a whole
  vector and fills ``next`` (a single, dual or quad loop; with software
  prefetch of the packets a few places ahead, and of the node's tables);
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
from ..memory.layouts import DATA_OFF, LINE_SHIFT, PKT_VEC_AOS
from .node import DROP, TX, Node
from .nodes import GRAPHS, NODES, WIRING

PREFETCH_AHEAD = 4     # packets ahead: far enough to hide a miss at ~20 cycles per packet per node
GEN_VERSION = 2        # bump when the generator's output changes meaning


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

# Drop reasons the run loop and the NIC count (not any node's).
RUN_REASONS = (
    ("mempool_empty", "no free buffer for an arriving frame (DPDK's rx_nombuf)"),
    ("rx_frame_too_long", "frame longer than a buffer's data room"),
    ("tx_full", "the NIC's tx ring had no room; dropped rather than queued (ixy's rule)"),
    ("tx_bad_descriptor", "the NIC rejected a tx descriptor (handle or length out of range)"),
)


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


def _node_loop(node, i, knobs, shift):
    """Source of the loop that runs `node` over one vector; a buffer's base is
    its handle << shift (64-byte lines in a mempool, bytes in an RX ring)."""
    tbl = "".join(", " + t for t in node.tables)
    aos = knobs.layout == "aos"
    u = knobs.unroll
    if aos:
        h = lambda j: f"(np.int64(v[i + {j}]['handle']) << {shift})"
        l = lambda j: f"np.int64(v[i + {j}]['length'])"
        put = lambda j, e: f"v[i + {j}]['next'] = {e}"
        args = f"arena, v, n{tbl}"
        hraw = lambda e: f"(np.int64(v[{e}]['handle']) << {shift})"
        lraw = lambda e: f"np.int64(v[{e}]['length'])"
    else:
        h = lambda j: f"(np.int64(hs[i + {j}]) << {shift})"
        l = lambda j: f"np.int64(ls[i + {j}])"
        put = lambda j, e: f"nxt[i + {j}] = {e}"
        args = f"arena, hs, ls, n, nxt{tbl}"
        hraw = lambda e: f"(np.int64(hs[{e}]) << {shift})"
        lraw = lambda e: f"np.int64(ls[{e}])"
    one = f"{_fname(node)}_one"
    pf = f"{_fname(node)}_pf"

    def body(width, ind):
        out = []
        if knobs.prefetch:
            # Prefetch the packets PREFETCH_AHEAD places ahead: their data line
            # (and the node's tables), so they are in L1 when we get there.
            for j in range(width):
                out.append(f"{ind}if i + {j + PREFETCH_AHEAD} < n:")
                out.append(f"{ind}    prefetch(arena, {hraw(f'i + {j + PREFETCH_AHEAD}')} + {DATA_OFF})")
                if node.prefetch is not None:
                    out.append(f"{ind}    {pf}(arena, {hraw(f'i + {j + PREFETCH_AHEAD}')}, "
                               f"{lraw(f'i + {j + PREFETCH_AHEAD}')}{tbl})")
        for j in range(width):
            out.append(f"{ind}{put(j, f'{one}(arena, {h(j)}, {l(j)}{tbl})')}")
        out.append(f"{ind}i += {width}")
        return out

    lines = ["@JIT", f"def node_{i}({args}):", "    i = 0"]
    if u > 1:
        lines.append(f"    while i + {u} <= n:")
        lines += body(u, "        ")
    lines.append("    while i < n:")
    lines += body(1, "        ")
    return "\n".join(lines) + "\n"


def _dispatch(g, knobs):
    """Source of dispatch(): every node in order, then the generic enqueue step."""
    aos = knobs.layout == "aos"
    tbl = "".join(", " + t for t in g.tables)
    lines = ["@JIT",
             f"def dispatch(arena, frames_h, frames_l, frames_x, counts, tx_h, tx_l, free_h, "
             f"counters, stats{tbl}):",
             '    """Run one vector (already in frame 0) through the graph."""',
             "    n_tx = 0", "    n_free = 0"]
    for i, node in enumerate(g.nodes):
        ntbl = "".join(", " + t for t in node.tables)
        lines += [f"    n = counts[{i}]", "    if n > 0:", "        t0 = rdtsc()"]
        if aos:
            lines.append(f"        v = frames_x[{i}]")
            lines.append(f"        node_{i}(arena, v, n{ntbl})")
        else:
            lines.append(f"        hs = frames_h[{i}]")
            lines.append(f"        ls = frames_l[{i}]")
            lines.append(f"        nxt = frames_x[{i}]")
            lines.append(f"        node_{i}(arena, hs, ls, n, nxt{ntbl})")
        # the generic step: enqueue every packet to its next node
        lines.append("        for k in range(n):")
        if aos:
            lines += ["            c = v[k]['next']", "            hk = v[k]['handle']", "            lk = v[k]['length']"]
        else:
            lines += ["            c = nxt[k]", "            hk = hs[k]", "            lk = ls[k]"]
        lines += ["            if c < 0:",
                  f"                counters[{g.err_base[i]} - 1 - c] += 1",
                  "                free_h[n_free] = hk",
                  "                n_free += 1"]
        for a, t in enumerate(g.arcs[i]):
            lines.append(f"            elif c == {a}:")
            if t == TX_T:
                lines += ["                tx_h[n_tx] = hk", "                tx_l[n_tx] = lk", "                n_tx += 1"]
            elif t == DROP_T:
                lines += ["                free_h[n_free] = hk", "                n_free += 1"]
            else:
                if aos:
                    lines += [f"                m = counts[{t}]",
                              f"                frames_x[{t}][m]['handle'] = hk",
                              f"                frames_x[{t}][m]['length'] = lk"]
                else:
                    lines += [f"                m = counts[{t}]",
                              f"                frames_h[{t}, m] = hk",
                              f"                frames_l[{t}, m] = lk"]
                lines.append(f"                counts[{t}] = m + 1")
        lines += [f"        counts[{i}] = 0",
                  f"        stats[{i}, 0] += 1",
                  f"        stats[{i}, 1] += n",
                  f"        stats[{i}, 2] += rdtsc() - t0"]
    lines.append("    return n_tx, n_free")
    return "\n".join(lines) + "\n"


def generate(g, knobs, handle_shift=LINE_SHIFT):
    """The whole generated module's source for graph g under these knobs.

    handle_shift: LINE_SHIFT when handles are mempool buffers, 0 when they are
    byte offsets of frames in an AF_PACKET ring (zero-copy on veth)."""
    imports = sorted({(n.one.__module__, n.one.__name__) for n in g.nodes} |
                     {(n.prefetch.__module__, n.prefetch.__name__) for n in g.nodes if n.prefetch})
    head = [f'"""Generated by labkit.graph.compile for graph {g.name!r}: '
            f'unroll={knobs.unroll} prefetch={knobs.prefetch} layout={knobs.layout} jit={knobs.jit}.',
            "", "Do not edit: it is rewritten from the node declarations.", '"""',
            "import numpy as np",
            "from numba import njit",
            "from labkit.memory.intrinsics import rdtsc, prefetch"]
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
    for n in g.nodes:
        head.append(f"{_fname(n)}_one = {n.one.__name__}")
        if n.prefetch:
            head.append(f"{_fname(n)}_pf = {n.prefetch.__name__}")
    parts = ["\n".join(head) + "\n"]
    parts += [_node_loop(n, i, knobs, handle_shift) for i, n in enumerate(g.nodes)]
    parts.append(_dispatch(g, knobs))
    return "\n\n".join(parts)


def load_source(source, stem):
    """Write generated source to the cache directory and import it. Its name
    hashes the text and labkit's source (``labkit.source_fingerprint``): numba
    caches the module's compiled code, the kernels it calls inlined, and would
    keep their old code after an update if only the kernels' files changed."""
    digest = hashlib.sha1(f"{GEN_VERSION}\n{source_fingerprint()}\n{source}".encode()).hexdigest()[:16]
    name = f"labkit_gen_{stem}_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    d = cache_root() / "gen"
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{name}.py"
    if not path.exists() or path.read_text() != source:
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(source)
        os.replace(tmp, path)        # atomic: a concurrent process sees old or new, never half
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def compile_graph(graph_name, knobs):
    """(Graph, module with node_i and dispatch) for these knobs."""
    g = resolve(graph_name)
    src = generate(g, knobs)
    return g, load_source(src, f"{graph_name}")


def make_frames(g, batch, layout):
    """Per-node frames of `batch` packets, in the chosen layout."""
    k = len(g.nodes)
    counts = np.zeros(k, dtype=np.int64)
    if layout == "aos":
        x = np.zeros((k, batch), dtype=PKT_VEC_AOS)
        h = np.zeros((1, 1), dtype=np.uint32)
        return h, h.astype(np.uint32), x, counts
    return (np.zeros((k, batch), dtype=np.uint32), np.zeros((k, batch), dtype=np.uint32),
            np.zeros((k, batch), dtype=np.int32), counts)
