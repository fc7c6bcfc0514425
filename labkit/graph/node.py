"""How a node is declared: once, by name, with its arcs and its error counters.

A node's work is a *per-packet decision function* ``one``::

    code = one(arena, base, length, *tables)

- ``arena`` is the mempool's uint8 arena; the frame is
  ``arena[base + DATA_OFF : base + DATA_OFF + length]``; the buffer's metadata
  line is ``arena[base : base + 64]`` (``labkit.memory.layouts.BUF_META``).
- ``tables`` are the read-only arrays named in ``Node.tables`` (the FIB, the
  ACL rules, the adjacencies...), passed in that order.
- It may rewrite the frame's bytes and the metadata line, never the length.
- It returns ``code >= 0``: the index of the arc in ``Node.next`` the packet
  takes; or ``code < 0``: the packet is dropped with error ``errors[-code - 1]``.
- It must not read past ``base + DATA_OFF + length`` whatever the bytes are:
  every header access is preceded by a length check.

``one`` is ``@njit(nogil=True, cache=True)``; ``one.py_func`` is its pure-Python
twin (the "JIT off" knob runs it). The graph compiler (``labkit.graph.compile``)
generates, per node, the loop that calls ``one`` over a whole vector (single,
dual or quad loop, with or without prefetch) and the generic step that
enqueues every packet to its next node, VPP's newer style.

``variants`` are other implementations of ``one``, by name: the same codes
and the same writes for every frame, computed another way (``"branchless"``:
no early exit, a branch predictor has nothing to guess). ``Knobs(variant=...)``
picks one for every node that has it; a node without it runs ``one``, the
``"scalar"`` implementation. Every variant is tested against ``one`` and its
pure-Python twin on the same crafted and random frames (tests/test_kernels.py),
so none can rot unseen.

``simd`` is the ``"simd"`` variant, which works on a whole vector instead of
one packet: ``gather(arena, base, length, rows, r0, i)`` copies what the node
reads of packet i into column i of scratch rows (``frames_h``' rows from
``r0`` on), then ``lanes(rows, r0, n)`` decides every column at once, code
plus ``CODE_BIAS`` into row ``ROW_CODE``, in a loop LLVM vectorizes; a code
``SLOW`` sends that packet to ``one`` (``labkit.graph.kernels``).

``stages``, when given, are ``one`` cut in the order it works, for the
graph compiler's dual and quad loops to *interleave*: they run each stage for
every packet of the iteration before the next stage, so that the packets'
memory accesses overlap (VPP's quad loops; DPDK l3fwd's
``processx4_step1/2/3``). The first is ``s = first(arena, base, length,
*tables)``, the others ``s = next(arena, base, length, s, *tables)``, and the
last returns the code. A state ``s < 0`` before the last stage is the
packet's drop code: the later stages are skipped. Run in a row, the stages
are ``one`` (tests/test_kernels.py checks it on every frame).

``prefetch``, when given, has ``one``'s signature and returns nothing: it
issues software prefetches for what ``one`` will touch (the frame is always
prefetched by the loop; this is for tables, e.g. the FIB entry of the
destination).
"""
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

# The implementations a node may have besides its scalar one (Knobs(variant=...)).
VARIANTS = ("scalar", "branchless", "simd")


@dataclass(frozen=True)
class Node:
    name: str
    one: Callable
    next: Tuple[str, ...]                      # arc index -> default next node name
    errors: Tuple[Tuple[str, str], ...] = ()   # (counter name, one-line explanation)
    tables: Tuple[str, ...] = ()               # names of the arrays passed after length
    prefetch: Optional[Callable] = None
    reads: Tuple[str, ...] = ()                # header fields it reads, for `labkit trace`
    doc: str = ""
    variants: Tuple[Tuple[str, Callable], ...] = ()   # (variant name, another `one`), see VARIANTS
    simd: Optional[Tuple[Callable, Callable]] = None  # (gather, lanes): the "simd" variant, a whole vector
    stages: Tuple[Callable, ...] = ()          # `one` cut in stages, for interleaved multi-loops

    def __post_init__(self):
        assert self.name and self.next, self.name
        names = [e[0] for e in self.errors]
        assert len(set(names)) == len(names), f"{self.name}: duplicate error names"
        assert len(self.stages) != 1, f"{self.name}: one stage is `one` itself"
        for v, _ in self.variants:
            assert v in VARIANTS and v != "scalar", f"{self.name}: unknown variant {v!r}"

    def impl(self, variant="scalar"):
        """The per-packet function of this variant: ``one`` unless the node has it."""
        return dict(self.variants).get(variant, self.one)

    def implementations(self):
        """[(variant name, function)] of every implementation, "scalar" (``one``) first."""
        return [("scalar", self.one)] + list(self.variants)


# The two terminal nodes are implemented by the graph compiler itself, not by
# a per-packet function: "drop" frees the buffer (its reason was counted by
# the node that sent it there), "tx" hands the buffer to the NIC's TX ring.
DROP = "drop"
TX = "tx"
