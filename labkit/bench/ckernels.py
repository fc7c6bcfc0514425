"""The l2fwd and ip4 kernels again, in C, compiled at run time: a yardstick.

``labkit bench`` asks "how far is the numba data plane from what a C compiler
makes of the same logic?". To answer it fairly, this module holds:

- ``C_SOURCE``: the per-packet logic of ``labkit.graph.kernels`` for the l2fwd
  graph (MAC swap) and the ip4 graph (eth-input, ip4-input, ip4-lookup,
  ip4-rewrite), as ONE C function per graph that walks a whole vector, a C
  twin of the generated dispatch per graph, and timing harnesses
  ``time_vector`` and ``time_dispatch`` in C;
- ``build()``: compiles it with the system compiler (``cc -O2 -march=native
  -shared -fPIC``) into ``<labkit cache>/c/`` under a name that hashes the
  source and flags, and loads it with ctypes;
- ``CKernels``: thin wrappers taking numpy arrays;
- ``time_numba()``: a numba harness with the same structure as the C one,
  timing the generated ``dispatch`` of a Lab's compiled graph.

Both harnesses restore each frame from its template before every pass,
outside the timed part, and time only the vector processing with rdtsc. The
numba side runs the real ``dispatch``, which after each node also moves every
packet to the next node's frame (or the tx / free list), counts drops by
reason, and reads the TSC twice per node for the per-node statistics. So C
comes twice: ``time_c_dispatch`` runs ``*_dispatch``, the C twin of that
whole dispatch (the same frames, moves, counters and readings: like with
like), and ``time_c`` runs ``*_vector``, the kernels alone, which only
compute a next code per packet ("our data plane against the bare kernels").

Drop codes of the C vector functions (``next[i]``): 0 = forwarded, else
``-(100 * node + k)`` where ``node`` is the position of the node in its graph
counted from 1 and ``k`` its error number counted from 1, in the order of the
node's ``errors`` in ``labkit.graph.nodes`` (so ``k`` is minus the kernel's
``E_*`` code). For example ip4_bad_checksum (ip4-input, node 2, error 5) is
-205 and no_route (ip4-lookup, node 3, error 1) is -301. ``decode(graph,
code)`` turns a code into the error name.
"""
import ctypes
import hashlib
import os
import platform
import shutil
import subprocess

import numpy as np

from ..graph.compile import compile_graph, make_frames, resolve
from ..graph.nodes import NODES
from ..memory.intrinsics import rdtsc
from ..memory.layouts import LINE_SHIFT, aligned_zeros
from ..run.knobs import Knobs
from ..settings import cache_root

C_FLAGS = ("-O2", "-march=native", "-shared", "-fPIC")
NO_COMPILER = "no C compiler (cc) found; install gcc to compare with C"

C_SOURCE = r"""
/* labkit C kernels: the same logic as labkit/graph/kernels.py, one function
 * per graph over a whole vector. Generated nothing: this is the whole file.
 *
 * Buffer layout (labkit/memory/layouts.py): handle << 6 = slot base; the
 * buffer metadata is at base + 0 (adjacency index: little-endian u32 at
 * META_ADJ_OFF = 0); the frame starts at base + DATA_OFF = base + 128.
 *
 * next[i]: 0 = forwarded, else -(100 * node + k): node = position in the
 * graph from 1, k = the node's error number from 1 (labkit/graph/nodes.py).
 */
#include <stdint.h>
#include <string.h>

#define LINE_SHIFT 6
#define DATA_OFF 128
#define META_ADJ_OFF 0
#define ETH_LEN 14              /* Ethernet II header, no VLAN */
#define IP4_OFF 14
#define IP4_MIN 34              /* Ethernet + option-less IPv4 header */
#define ETHERTYPE_IPV4 0x0800
#define TBL8_FLAG 0x8000

/* error codes of each node, numbered as in labkit/graph/nodes.py */
#define DROP(node, k) (-(100 * (node) + (k)))
/* l2fwd: node 1 = l2-macswap */
#define E_MACSWAP_RUNT      DROP(1, 1)
/* ip4: node 1 = eth-input, 2 = ip4-input, 3 = ip4-lookup, 4 = ip4-rewrite */
#define E_ETH_RUNT          DROP(1, 1)
#define E_UNKNOWN_ETHERTYPE DROP(1, 2)
#define E_IP4_TRUNCATED     DROP(2, 1)
#define E_IP4_BAD_VERSION   DROP(2, 2)
#define E_IP4_BAD_IHL       DROP(2, 3)
#define E_IP4_BAD_LENGTH    DROP(2, 4)
#define E_IP4_BAD_CHECKSUM  DROP(2, 5)
#define E_TTL_EXPIRED       DROP(2, 6)
#define E_NO_ROUTE          DROP(3, 1)
#define E_LOOKUP_TRUNCATED  DROP(3, 2)
#define E_ADJ_UNRESOLVED    DROP(3, 3)
#define E_BAD_ADJACENCY     DROP(4, 1)
#define E_REWRITE_TRUNCATED DROP(4, 2)

static inline uint32_t rd16(const uint8_t *p) { return ((uint32_t)p[0] << 8) | p[1]; }
static inline uint32_t rd32(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
static inline void wr16(uint8_t *p, uint32_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static inline uint32_t fold16(uint32_t s) {       /* RFC 1071 4.1 */
    s = (s & 0xFFFF) + (s >> 16);
    return (s & 0xFFFF) + (s >> 16);
}

/* ---- l2fwd: l2-macswap ---------------------------------------------------- */
static inline int32_t macswap_one(uint8_t *arena, uint64_t base, uint32_t len) {
    uint8_t *f = arena + base + DATA_OFF, t[6];
    if (len < ETH_LEN) return E_MACSWAP_RUNT;
    memcpy(t, f, 6); memcpy(f, f + 6, 6); memcpy(f + 6, t, 6);
    return 0;
}

int l2fwd_vector(uint8_t *arena, const uint32_t *handles, const uint32_t *lengths,
                 int n, int32_t *next) {
    int fwd = 0;
    for (int i = 0; i < n; i++) {
        int32_t c = macswap_one(arena, (uint64_t)handles[i] << LINE_SHIFT, lengths[i]);
        next[i] = c;
        fwd += (c == 0);
    }
    return fwd;                                   /* packets forwarded */
}

/* ---- ip4: eth-input -> ip4-input -> ip4-lookup -> ip4-rewrite --------------- */
static inline int32_t eth_input_one(const uint8_t *f, uint32_t n) {
    if (n < ETH_LEN) return E_ETH_RUNT;
    if (rd16(f + 12) != ETHERTYPE_IPV4) return E_UNKNOWN_ETHERTYPE;
    return 0;
}

/* RFC 1812 5.2.2, checks in the order of kernels.ip4_input_one */
static inline int32_t ip4_input_one(const uint8_t *f, uint32_t n) {
    const uint8_t *ip = f + IP4_OFF;
    if (n < IP4_MIN) return E_IP4_TRUNCATED;
    uint32_t ver_ihl = ip[0];
    if ((ver_ihl >> 4) != 4) return E_IP4_BAD_VERSION;
    uint32_t hlen = (ver_ihl & 0xF) * 4;
    if (hlen < 20) return E_IP4_BAD_IHL;
    if (IP4_OFF + hlen > n) return E_IP4_TRUNCATED;
    uint32_t total = rd16(ip + 2);
    if (total < hlen || total > n - IP4_OFF) return E_IP4_BAD_LENGTH;
    uint32_t s = 0;
    for (uint32_t o = 0; o < hlen; o += 2) s += rd16(ip + o);
    if (fold16(s) != 0xFFFF) return E_IP4_BAD_CHECKSUM;
    if (ip[8] <= 1) return E_TTL_EXPIRED;
    return 0;
}

/* DIR-24-8: adjacency + 1, or 0 for no route */
static inline uint32_t dir24_8(const uint16_t *tbl24, const uint16_t *tbl8, uint32_t dst) {
    uint32_t e = tbl24[dst >> 8];
    if (e & TBL8_FLAG) e = tbl8[((e & 0x7FFF) << 8) | (dst & 0xFF)];
    return e;
}

static inline int32_t ip4_lookup_one(uint8_t *meta, const uint8_t *f, uint32_t n,
                                     const uint16_t *tbl24, const uint16_t *tbl8,
                                     const uint8_t *adj_valid, int n_adj) {
    if (n < IP4_MIN) return E_LOOKUP_TRUNCATED;
    uint32_t e = dir24_8(tbl24, tbl8, rd32(f + IP4_OFF + 16));
    if (e == 0) return E_NO_ROUTE;
    uint32_t adj = e - 1;
    if (adj >= (uint32_t)n_adj || adj_valid[adj] == 0) return E_ADJ_UNRESOLVED;
    memcpy(meta + META_ADJ_OFF, &adj, 4);         /* little-endian u32 (x86 host order) */
    return 0;
}

static inline int32_t ip4_rewrite_one(const uint8_t *meta, uint8_t *f, uint32_t n,
                                      int n_adj, const uint8_t *adj_mac) {
    if (n < IP4_MIN) return E_REWRITE_TRUNCATED;
    uint32_t adj;
    memcpy(&adj, meta + META_ADJ_OFF, 4);
    if (adj >= (uint32_t)n_adj) return E_BAD_ADJACENCY;
    uint8_t *ip = f + IP4_OFF;
    uint32_t m = rd16(ip + 8);                    /* TTL, protocol */
    uint32_t m2 = (m - 0x100) & 0xFFFF;
    uint32_t hc = rd16(ip + 10);
    uint32_t s = fold16((~hc & 0xFFFF) + (~m & 0xFFFF) + m2);   /* RFC 1624 eqn. 3 */
    wr16(ip + 8, m2);
    wr16(ip + 10, ~s & 0xFFFF);
    memcpy(f, adj_mac + 12 * (uint64_t)adj, 12);  /* dst MAC, src MAC */
    return 0;
}

int ip4_vector(uint8_t *arena, const uint32_t *handles, const uint32_t *lengths, int n,
               int32_t *next, const uint16_t *tbl24, const uint16_t *tbl8,
               const uint8_t *adj_valid, int n_adj, const uint8_t *adj_mac) {
    int fwd = 0;
    for (int i = 0; i < n; i++) {
        uint8_t *meta = arena + ((uint64_t)handles[i] << LINE_SHIFT);
        uint8_t *f = meta + DATA_OFF;
        uint32_t len = lengths[i];
        int32_t c = eth_input_one(f, len);
        if (c == 0) c = ip4_input_one(f, len);
        if (c == 0) c = ip4_lookup_one(meta, f, len, tbl24, tbl8, adj_valid, n_adj);
        if (c == 0) c = ip4_rewrite_one(meta, f, len, n_adj, adj_mac);
        next[i] = c;
        fwd += (c == 0);
    }
    return fwd;                                   /* packets forwarded */
}

/* ---- timing harness ---------------------------------------------------------
 * Runs the graph's vector function `reps` times over the same vector. Before
 * each pass (not timed) every frame gets its first min(length, 64) bytes back
 * from its template (templates: n rows of `stride` bytes), so every pass sees
 * the same input. Returns the total TSC cycles of the vector calls only.
 * graph: 0 = l2fwd, 1 = ip4.
 * On x86 the count is __rdtsc(); elsewhere it is CLOCK_MONOTONIC nanoseconds
 * (tsc_is_ns() returns 1 then, and the caller must say so). */
#if defined(__x86_64__) || defined(__i386__)
#include <x86intrin.h>
static inline uint64_t ticks(void) { return __rdtsc(); }
int tsc_is_ns(void) { return 0; }
#else
#include <time.h>
static inline uint64_t ticks(void) {
    struct timespec ts; clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + ts.tv_nsec;
}
int tsc_is_ns(void) { return 1; }
#endif

/* ---- the whole dispatch, as labkit.graph.compile generates it ----------------------
 * The fair twin of the numba side: frames per node (row `node` of fh, fl, fx, `batch`
 * wide: handles, lengths, next codes), each node's loop over its frame, then the generic
 * enqueue step: every packet to the next node's frame, to the tx vector, or counted by
 * reason (counters[err_base[node] + k - 1] for code DROP(node + 1, k)) with its buffer on
 * the free list, the whole vector in one copy when every packet goes the same way; per node, statistics (calls, packets, TSC cycles), the TSC read twice per
 * node as the numba side does. Single loops, no prefetch: the compiler's own choices. */
typedef struct {
    uint8_t *arena; uint32_t *fh, *fl; int32_t *fx; int64_t *counts; int64_t batch;
    uint32_t *tx_h, *tx_l, *free_h; int64_t *counters, *stats; const int64_t *err_base;
    int64_t n_tx, n_free;
} dp_t;

static inline void enqueue(dp_t *d, int node, int64_t n, int to) {   /* to < 0: tx */
    const uint32_t *h = d->fh + node * d->batch, *l = d->fl + node * d->batch;
    const int32_t *x = d->fx + node * d->batch;
    int32_t c0 = x[0];
    int64_t same = 0;
    for (int64_t i = 0; i < n; i++)
        same += x[i] == c0;
    if (same == n) {                      /* the whole vector one way */
        if (c0 < 0) {
            d->counters[d->err_base[node] - c0 - 100 * (node + 1) - 1] += n;
            for (int64_t i = 0; i < n; i++)
                d->free_h[d->n_free + i] = h[i];
            d->n_free += n;
        } else if (to < 0) {
            for (int64_t i = 0; i < n; i++) {
                d->tx_h[d->n_tx + i] = h[i];
                d->tx_l[d->n_tx + i] = l[i];
            }
            d->n_tx += n;
        } else {
            int64_t m = d->counts[to];
            for (int64_t i = 0; i < n; i++) {
                d->fh[to * d->batch + m + i] = h[i];
                d->fl[to * d->batch + m + i] = l[i];
            }
            d->counts[to] = m + n;
        }
        return;
    }
    for (int64_t i = 0; i < n; i++) {
        int32_t c = x[i];
        if (c < 0) {
            d->counters[d->err_base[node] - c - 100 * (node + 1) - 1]++;
            d->free_h[d->n_free++] = h[i];
        } else if (to < 0) {
            d->tx_h[d->n_tx] = h[i];
            d->tx_l[d->n_tx++] = l[i];
        } else {
            int64_t m = d->counts[to];
            d->fh[to * d->batch + m] = h[i];
            d->fl[to * d->batch + m] = l[i];
            d->counts[to] = m + 1;
        }
    }
}

static inline void node_done(dp_t *d, int node, int64_t n, uint64_t t0) {
    d->counts[node] = 0;
    d->stats[3 * node] += 1;
    d->stats[3 * node + 1] += n;
    d->stats[3 * node + 2] += ticks() - t0;
}

#define NODE_LOOP(node, to, CALL) do {                                              \
    int64_t n = d->counts[node];                                                    \
    if (n > 0) {                                                                    \
        uint64_t t0 = ticks();                                                      \
        const uint32_t *h = d->fh + (node) * d->batch, *l = d->fl + (node) * d->batch; \
        int32_t *x = d->fx + (node) * d->batch;                                     \
        for (int64_t i = 0; i < n; i++) {                                           \
            uint8_t *meta = d->arena + ((uint64_t)h[i] << LINE_SHIFT);              \
            uint8_t *f = meta + DATA_OFF;                                           \
            (void)meta; (void)f;                                                    \
            x[i] = (CALL);                                                          \
        }                                                                           \
        enqueue(d, node, n, to);                                                    \
        node_done(d, node, n, t0);                                                  \
    }                                                                               \
} while (0)

static void l2fwd_dispatch(dp_t *d) {
    NODE_LOOP(0, -1, macswap_one(d->arena, (uint64_t)h[i] << LINE_SHIFT, l[i]));
}

static void ip4_dispatch(dp_t *d, const uint16_t *tbl24, const uint16_t *tbl8,
                         const uint8_t *adj_valid, int n_adj, const uint8_t *adj_mac) {
    NODE_LOOP(0, 1, eth_input_one(f, l[i]));
    NODE_LOOP(1, 2, ip4_input_one(f, l[i]));
    NODE_LOOP(2, 3, ip4_lookup_one(meta, f, l[i], tbl24, tbl8, adj_valid, n_adj));
    NODE_LOOP(3, -1, ip4_rewrite_one(meta, f, l[i], n_adj, adj_mac));
}

/* Like time_vector, with the whole dispatch: the vector restored into frame 0 (not
 * timed), then one dispatch timed; the frames, counters, stats, tx and free lists are
 * the caller's (numpy arrays), left as the last pass made them. *n_tx: packets sent. */
uint64_t time_dispatch(int graph, int reps, uint8_t *arena, const uint32_t *handles,
                       const uint32_t *lengths, int n, const uint8_t *templates, int stride,
                       uint32_t *fh, uint32_t *fl, int32_t *fx, int64_t *counts, int64_t batch,
                       uint32_t *tx_h, uint32_t *tx_l, uint32_t *free_h, int64_t *counters,
                       int64_t *stats, const int64_t *err_base,
                       const uint16_t *tbl24, const uint16_t *tbl8,
                       const uint8_t *adj_valid, int n_adj, const uint8_t *adj_mac, int64_t *n_tx) {
    dp_t d = {arena, fh, fl, fx, counts, batch, tx_h, tx_l, free_h, counters, stats, err_base, 0, 0};
    uint64_t total = 0;
    for (int r = 0; r < reps; r++) {
        for (int i = 0; i < n; i++) {
            uint32_t k = lengths[i] < 64 ? lengths[i] : 64;
            memcpy(arena + ((uint64_t)handles[i] << LINE_SHIFT) + DATA_OFF,
                   templates + (uint64_t)i * stride, k);
            fh[i] = handles[i];
            fl[i] = lengths[i];
        }
        counts[0] = n;
        d.n_tx = d.n_free = 0;
        uint64_t t0 = ticks();
        if (graph == 0)
            l2fwd_dispatch(&d);
        else
            ip4_dispatch(&d, tbl24, tbl8, adj_valid, n_adj, adj_mac);
        total += ticks() - t0;
        __asm__ __volatile__("" ::: "memory");
    }
    *n_tx = d.n_tx;
    return total;
}

uint64_t time_vector(int graph, int reps, uint8_t *arena, const uint32_t *handles,
                     const uint32_t *lengths, int n, int32_t *next,
                     const uint8_t *templates, int stride,
                     const uint16_t *tbl24, const uint16_t *tbl8,
                     const uint8_t *adj_valid, int n_adj, const uint8_t *adj_mac) {
    uint64_t total = 0;
    for (int r = 0; r < reps; r++) {
        for (int i = 0; i < n; i++) {
            uint32_t k = lengths[i] < 64 ? lengths[i] : 64;
            memcpy(arena + ((uint64_t)handles[i] << LINE_SHIFT) + DATA_OFF,
                   templates + (uint64_t)i * stride, k);
        }
        uint64_t t0 = ticks();
        if (graph == 0)
            l2fwd_vector(arena, handles, lengths, n, next);
        else
            ip4_vector(arena, handles, lengths, n, next, tbl24, tbl8, adj_valid, n_adj, adj_mac);
        total += ticks() - t0;
        __asm__ __volatile__("" ::: "memory");    /* keep passes apart */
    }
    return total;
}
"""

GRAPH_NODES = {"l2fwd": ("l2-macswap",),
               "ip4": ("eth-input", "ip4-input", "ip4-lookup", "ip4-rewrite")}
GRAPH_ID = {"l2fwd": 0, "ip4": 1}

_lib = []


def _compiler():
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def available():
    """(True, "") when C kernels can be built and loaded, else (False, why)."""
    if _compiler() is None:
        return False, NO_COMPILER
    try:
        build()
    except Exception as e:     # compiler present but broken, or load failure
        return False, f"C kernels did not build: {str(e).strip().splitlines()[-1] if str(e).strip() else e}"
    return True, ""


def build():
    """Compile C_SOURCE (once per source+flags) and load it; returns the ctypes CDLL."""
    if _lib:
        return _lib[0]
    cc = _compiler()
    if cc is None:
        raise RuntimeError(NO_COMPILER)
    flags = list(C_FLAGS)
    key = hashlib.sha1("\n".join([C_SOURCE, " ".join(flags), platform.machine()]).encode()).hexdigest()[:16]
    d = cache_root() / "c"
    d.mkdir(parents=True, exist_ok=True)
    so = d / f"labkit_ckernels_{key}.so"
    if not so.exists():
        src = d / f"labkit_ckernels_{key}.c"
        src.write_text(C_SOURCE)
        tmp = so.with_suffix(f".tmp{os.getpid()}.so")
        p = subprocess.run([cc, *flags, "-o", str(tmp), str(src)], capture_output=True, text=True)
        if p.returncode != 0 and "-march=native" in flags:
            flags.remove("-march=native")      # some compilers/CPUs reject it: still build
            p = subprocess.run([cc, *flags, "-o", str(tmp), str(src)], capture_output=True, text=True)
        if p.returncode != 0:
            raise RuntimeError(f"{os.path.basename(cc)} failed: {p.stderr.strip()[-500:]}")
        os.replace(tmp, so)
    lib = ctypes.CDLL(str(so))
    P = ctypes.c_void_p
    i32 = ctypes.c_int
    lib.l2fwd_vector.argtypes = [P, P, P, i32, P]
    lib.l2fwd_vector.restype = i32
    lib.ip4_vector.argtypes = [P, P, P, i32, P, P, P, P, i32, P]
    lib.ip4_vector.restype = i32
    lib.time_vector.argtypes = [i32, i32, P, P, P, i32, P, P, i32, P, P, P, i32, P]
    lib.time_vector.restype = ctypes.c_uint64
    i64 = ctypes.c_int64
    lib.time_dispatch.argtypes = [i32, i32, P, P, P, i32, P, i32, P, P, P, P, i64, P, P, P, P, P, P,
                                  P, P, P, i32, P, P]
    lib.time_dispatch.restype = ctypes.c_uint64
    lib.tsc_is_ns.argtypes = []
    lib.tsc_is_ns.restype = i32
    _lib.append(lib)
    return lib


def _p(a, dtype):
    assert isinstance(a, np.ndarray) and a.dtype == dtype and a.flags.c_contiguous, (a.dtype, dtype)
    return a.ctypes.data_as(ctypes.c_void_p)


def _tables(tables):
    """(tbl24, tbl8, adj_valid, n_adj, adj_mac) from Fib.tables() or None (l2fwd)."""
    if tables is None:
        z16, z8 = np.zeros(1, np.uint16), np.zeros(1, np.uint8)
        return z16, z16, z8, 0, np.zeros((1, 12), np.uint8)
    t24, t8 = tables["fib_tbl24"], tables["fib_tbl8"]
    av = np.ascontiguousarray(tables["fib_adj_valid"], np.uint8)
    am = np.ascontiguousarray(tables["adj_mac"], np.uint8)
    assert am.shape == (av.shape[0], 12)
    return t24, t8, av, av.shape[0], am


def run_vector(graph, arena, handles, lengths, tables=None):
    """Run the C vector function of `graph` once; returns next codes (int32 [n])."""
    lib = build()
    n = len(handles)
    nxt = np.zeros(n, np.int32)
    if graph == "l2fwd":
        lib.l2fwd_vector(_p(arena, np.uint8), _p(handles, np.uint32), _p(lengths, np.uint32), n,
                         _p(nxt, np.int32))
    elif graph == "ip4":
        t24, t8, av, n_adj, am = _tables(tables)
        lib.ip4_vector(_p(arena, np.uint8), _p(handles, np.uint32), _p(lengths, np.uint32), n,
                       _p(nxt, np.int32), _p(t24, np.uint16), _p(t8, np.uint16), _p(av, np.uint8),
                       n_adj, _p(am, np.uint8))
    else:
        raise ValueError(f"C kernels exist for graphs l2fwd and ip4, not {graph!r}")
    return nxt


def decode(graph, code):
    """'forwarded' or the error name of a C next code (see the module doc)."""
    if code == 0:
        return "forwarded"
    node, k = divmod(-int(code), 100)
    return NODES[GRAPH_NODES[graph][node - 1]].errors[k - 1][0]


# --- the test vector both harnesses use -------------------------------------------

SLOT = 2048                      # bytes per buffer, like the default mempool slot


class Vector:
    """n buffers in a private arena, filled from `traffic` templates in send order.

    ``templates`` holds row i = the frame of packet i (stride bytes), so a pass
    can be restored; ``handles``/``lengths`` are the packet vector."""

    def __init__(self, traffic, n, start=0):
        idx = traffic.seq[(start + np.arange(n)) % len(traffic.seq)]
        self.n = n
        self.lengths = np.minimum(traffic.lengths[idx].astype(np.uint32), SLOT - 128)
        self.templates = np.ascontiguousarray(traffic.frames[idx])
        self.stride = self.templates.shape[1]
        self.arena = aligned_zeros(SLOT * n)
        self.handles = (np.arange(n, dtype=np.uint32) * (SLOT >> LINE_SHIFT)).astype(np.uint32)
        self.kinds = traffic.kinds[idx]
        self.restore(full=True)

    def restore(self, full=False):
        for i in range(self.n):
            b = int(self.handles[i]) * 64 + 128
            k = min(int(self.lengths[i]), self.stride) if full else min(int(self.lengths[i]), 64)
            self.arena[b:b + k] = self.templates[i, :k]

    def frame(self, i):
        b = int(self.handles[i]) * 64 + 128
        return self.arena[b:b + int(self.lengths[i])].tobytes()


def time_c(graph, vec, reps, tables=None):
    """Total TSC cycles of `reps` passes of the C vector function over `vec`."""
    lib = build()
    nxt = np.zeros(vec.n, np.int32)
    t24, t8, av, n_adj, am = _tables(tables)
    tot = lib.time_vector(GRAPH_ID[graph], reps, _p(vec.arena, np.uint8), _p(vec.handles, np.uint32),
                          _p(vec.lengths, np.uint32), vec.n, _p(nxt, np.int32),
                          _p(vec.templates, np.uint8), vec.stride, _p(t24, np.uint16),
                          _p(t8, np.uint16), _p(av, np.uint8), n_adj, _p(am, np.uint8))
    return int(tot), nxt


def time_c_dispatch(graph, vec, reps, tables=None):
    """Total TSC cycles of `reps` passes of the C twin of the whole dispatch over `vec` (the same
    frames, moves between them, drop counters and per-node statistics as the generated one).
    Returns (cycles, n_tx, counters by reason index, stats [node, calls/packets/cycles],
    tx handles, free handles) of the last pass (counters and stats summed over all passes)."""
    lib = build()
    g = resolve(graph)
    n = vec.n
    fh, fl, fx, counts = make_frames(g, n, "soa")
    tx_h, tx_l, free_h = (np.zeros(n, np.uint32) for _ in range(3))
    counters = np.zeros(len(g.reasons), np.int64)
    stats = np.zeros((len(g.nodes), 3), np.int64)
    err_base = np.array(g.err_base, np.int64)
    n_tx = np.zeros(1, np.int64)
    t24, t8, av, n_adj, am = _tables(tables)
    tot = lib.time_dispatch(GRAPH_ID[graph], reps, _p(vec.arena, np.uint8), _p(vec.handles, np.uint32),
                            _p(vec.lengths, np.uint32), n, _p(vec.templates, np.uint8), vec.stride,
                            _p(fh, np.uint32), _p(fl, np.uint32), _p(fx, np.int32), _p(counts, np.int64), n,
                            _p(tx_h, np.uint32), _p(tx_l, np.uint32), _p(free_h, np.uint32),
                            _p(counters, np.int64), _p(stats, np.int64), _p(err_base, np.int64),
                            _p(t24, np.uint16), _p(t8, np.uint16), _p(av, np.uint8), n_adj, _p(am, np.uint8),
                            _p(n_tx, np.int64))
    k = int(n_tx[0])
    return int(tot), k, counters, stats, tx_h[:k].copy(), free_h[:n - k].copy()


def c_ticks_are_ns():
    return bool(build().tsc_is_ns())


# --- the numba harness -------------------------------------------------------------

_numba_harness = []


def _harness():
    """njit(dispatch, ...) harness, built on first use (numba compiles it per dispatch)."""
    if _numba_harness:
        return _numba_harness[0]
    from numba import njit

    @njit(nogil=True)
    def harness(dispatch, reps, arena, handles, lengths, templates, frames_h, frames_l, frames_x,
                counts, tx_h, tx_l, free_h, counters, stats, tables):
        n = handles.shape[0]
        total = 0
        n_tx = 0
        for r in range(reps):
            # restore (not timed): frame bytes, and the vector in frame 0
            for i in range(n):
                b = (np.int64(handles[i]) << 6) + 128
                k = min(np.int64(lengths[i]), 64)
                for j in range(k):
                    arena[b + j] = templates[i, j]
                frames_h[0, i] = handles[i]
                frames_l[0, i] = lengths[i]
            counts[0] = n
            t0 = rdtsc()
            n_tx, n_free = dispatch(arena, frames_h, frames_l, frames_x, counts, tx_h, tx_l,
                                    free_h, counters, stats, *tables)
            total += rdtsc() - t0
        return total, n_tx

    _numba_harness.append(harness)
    return harness


def numba_module(graph, knobs=None):
    """(Graph, generated module) of `graph` with these knobs (default Knobs())."""
    return compile_graph(graph, knobs if knobs is not None else Knobs())


def time_numba(graph, vec, reps, tables=None, knobs=None, out=None):
    """Total TSC cycles of `reps` passes of the generated dispatch over `vec`.

    Returns (cycles, n_tx, stats) with stats the per-node [calls, packets, cycles]; a dict `out`
    receives the drop counters (summed over the passes) and the last pass's tx and free handles."""
    knobs = knobs if knobs is not None else Knobs(batch=max(1, min(vec.n, 256)))
    if knobs.layout != "soa":
        raise ValueError("the numba harness drives the soa layout only")
    g, mod = numba_module(graph, knobs)
    fh, fl, fx, counts = make_frames(g, vec.n, "soa")
    tx_h, tx_l, free_h = (np.zeros(vec.n, np.uint32) for _ in range(3))
    counters = np.zeros(len(g.reasons), np.int64)
    stats = np.zeros((len(g.nodes), 3), np.int64)
    tabs = tuple(tables[t] for t in g.tables) if g.tables else ()
    cyc, n_tx = _harness()(mod.dispatch, reps, vec.arena, vec.handles, vec.lengths, vec.templates,
                           fh, fl, fx, counts, tx_h, tx_l, free_h, counters, stats, tabs)
    if out is not None:
        out.update(counters=counters, tx_h=tx_h[:n_tx].copy(), free_h=free_h[:vec.n - n_tx].copy())
    return int(cyc), int(n_tx), stats
