"""The IPv4 forwarding table: DIR-24-8 (Gupta, Lin, McKeown, INFOCOM 1998),
the scheme of DPDK's rte_lpm.

- ``tbl24``: uint16[2**24], indexed by the top 24 bits of the destination.
  Entry 0 = no route; ``adj + 1`` (< 0x8000) = next hop; ``0x8000 | g`` = the
  route depends on the last 8 bits: look at tbl8 group ``g``.
- ``tbl8``: uint16[n_groups * 256], groups of 256 entries coded like tbl24
  (without the flag), one group per /24 that holds a route longer than /24.

A /len <= 24 route fills 2**(24 - len) tbl24 entries; a longer one takes
(or creates) the group of its /24 and fills 2**(32 - len) of its entries. The
build inserts routes by prefix length, shortest first, so a longer prefix
always overwrites a shorter one that covers it, whatever the input order (for
two routes with the same prefix and length, the later one in the input wins).

Tables handed to the graph: ``tbl24`` (uint16 [2**24]), ``tbl8`` (uint16
[256 * n_groups]), ``adj_valid`` (uint8 [n_adj], 1 = resolved) and ``adj_mac``
(uint8 [n_adj, 12]: destination MAC then source MAC).
"""
import numpy as np
from numba import njit

from labkit.graph.kernels import TBL8_FLAG, _dir24_8
from labkit.memory.layouts import aligned_zeros

ROUTE = np.dtype([("prefix", "<u4"), ("length", "u1"), ("adj", "<u4")])
TBL24_ENTRIES = 1 << 24
MAX_ADJ = 0x7FFF - 1      # adj + 1 must stay below the tbl8 flag
MAX_GROUPS = 0x8000       # group index is 15 bits


def prefix_mask(length):
    """Netmask of a /length prefix as a Python int."""
    return (0xFFFFFFFF << (32 - length)) & 0xFFFFFFFF if length else 0


@njit(nogil=True, cache=True)
def _build(tbl24, tbl8, prefix, length, adj):
    """Fill the tables from routes already sorted by length (stable)."""
    groups = 0
    for r in range(prefix.shape[0]):
        p = np.int64(prefix[r])
        ln = np.int64(length[r])
        v = np.uint16(adj[r] + 1)
        if ln <= 24:
            lo = p >> 8
            for i in range(lo, lo + (np.int64(1) << (24 - ln))):
                tbl24[i] = v
        else:
            e = tbl24[p >> 8]
            if e & TBL8_FLAG:
                g = np.int64(e & 0x7FFF)
            else:
                if groups == tbl8.shape[0] >> 8:
                    return -1                          # routes not sorted by length
                g = groups
                groups += 1
                tbl8[g << 8:(g + 1) << 8] = e          # the covering route, if any
                tbl24[p >> 8] = np.uint16(TBL8_FLAG | g)
            lo = (g << 8) | (p & 0xFF)
            for i in range(lo, lo + (np.int64(1) << (32 - ln))):
                tbl8[i] = v
    return groups


@njit(nogil=True, cache=True)
def _lookup_many(tbl24, tbl8, addrs):
    out = np.empty(addrs.shape[0], np.int64)
    for i in range(addrs.shape[0]):
        out[i] = _dir24_8(tbl24, tbl8, np.int64(addrs[i])) - 1
    return out


def _as_routes(routes):
    """Structured ROUTE array from a structured array or (prefix, length, adj)."""
    if isinstance(routes, np.ndarray) and routes.dtype.names:
        prefix, length, adj = routes["prefix"], routes["length"], routes["adj"]
    else:
        prefix, length, adj = routes
    out = np.empty(len(prefix), ROUTE)
    out["length"] = np.asarray(length)
    out["adj"] = np.asarray(adj)
    out["prefix"] = np.asarray(prefix, np.uint64) & np.array(
        [prefix_mask(int(x)) for x in range(33)], np.uint64)[out["length"].clip(0, 32)]
    return out


class Fib:
    """A DIR-24-8 table built from ``routes`` towards ``n_adj`` adjacencies.

    ``routes``: a structured array with fields prefix (u4), length (u1), adj
    (u4), or a tuple of three arrays. Host bits of prefixes are cleared.
    ``alloc(n_bytes) -> uint8 array`` provides tbl24's memory (e.g. huge
    pages); default: a 64-byte-aligned numpy array.
    """

    def __init__(self, routes, n_adj, alloc=None):
        self.routes = _as_routes(routes)
        r = self.routes
        if not 1 <= n_adj <= MAX_ADJ:
            raise ValueError(f"n_adj={n_adj}: use 1 to {MAX_ADJ}")
        if len(r) and (r["length"].max() > 32 or r["adj"].max() >= n_adj):
            raise ValueError("route with length > 32 or adj >= n_adj")
        self.n_adj = n_adj
        raw = (alloc or aligned_zeros)(2 * TBL24_ENTRIES)
        assert raw.dtype == np.uint8 and raw.size >= 2 * TBL24_ENTRIES
        self.tbl24 = raw[:2 * TBL24_ENTRIES].view(np.uint16)
        self.tbl24[:] = 0
        long_ = r["length"] > 24
        n_groups = len(np.unique(r["prefix"][long_] >> 8))
        if n_groups > MAX_GROUPS:
            raise ValueError(f"{n_groups} /24s hold longer routes; DIR-24-8 allows {MAX_GROUPS}")
        self.tbl8 = np.zeros(256 * max(n_groups, 1), np.uint16)
        order = np.argsort(r["length"], kind="stable")
        s = r[order]
        used = _build(self.tbl24, self.tbl8, s["prefix"].copy(), s["length"].copy(), s["adj"].copy())
        assert used == n_groups
        self.adj_valid = np.ones(n_adj, np.uint8)
        self.adj_mac = make_adj_mac(n_adj)

    def tables(self):
        """The arrays the graph's nodes name, by name."""
        return {"fib_tbl24": self.tbl24, "fib_tbl8": self.tbl8,
                "fib_adj_valid": self.adj_valid, "adj_mac": self.adj_mac}

    def lookup(self, addr):
        """Adjacency of ``addr`` (an int), or -1: the table walk in plain Python."""
        e = int(self.tbl24[addr >> 8])
        if e & TBL8_FLAG:
            e = int(self.tbl8[((e & 0x7FFF) << 8) | (addr & 0xFF)])
        return e - 1

    def lookup_many(self, addrs):
        """Adjacency (or -1) per address of a uint32 array, compiled."""
        return _lookup_many(self.tbl24, self.tbl8, np.asarray(addrs, np.uint32))

    def sample_destinations(self, n, seed, miss_share=0.0):
        """``n`` destination addresses: a host inside a random route for all
        but ``miss_share`` of them, which match no route (shuffled in)."""
        rng = np.random.default_rng(seed)
        n_miss = int(round(n * miss_share))
        r = self.routes[rng.integers(0, len(self.routes), n - n_miss)]
        span = (np.uint64(1) << (32 - r["length"].astype(np.uint64)))
        hit = (r["prefix"].astype(np.uint64) + (rng.random(len(r)) * span).astype(np.uint64))
        miss = np.empty(0, np.uint32)
        while len(miss) < n_miss:
            c = rng.integers(0, 1 << 32, 4 * (n_miss - len(miss)) + 16, dtype=np.uint64).astype(np.uint32)
            miss = np.concatenate([miss, c[self.lookup_many(c) < 0]])
        out = np.concatenate([hit.astype(np.uint32), miss[:n_miss]])
        rng.shuffle(out)
        return out

    @classmethod
    def random(cls, n_routes=100_000, n_adj=16, seed=1, alloc=None):
        """A reproducible Internet-like table: ~85% /24, ~12% /16-/23, ~3%
        /25-/32, prefixes in unicast space 1.0.0.0-223.255.255.255, no default
        route (so some destinations have no route)."""
        rng = np.random.default_rng(seed)
        kind = rng.random(n_routes)
        length = np.where(kind < 0.85, 24,
                          np.where(kind < 0.97, rng.integers(16, 24, n_routes),
                                   rng.integers(25, 33, n_routes))).astype(np.uint8)
        prefix = rng.integers(1 << 24, 224 << 24, n_routes, dtype=np.uint64).astype(np.uint32)
        adj = rng.integers(0, n_adj, n_routes).astype(np.uint32)
        return cls((prefix, length, adj), n_adj, alloc)


def make_adj_mac(n_adj):
    """uint8 [n_adj, 12]: dst 02:00:00:00:hi:lo (next hop), src 02:00:00:01:hi:lo
    (our port), locally administered (bit 1 of the first byte)."""
    m = np.zeros((n_adj, 12), np.uint8)
    i = np.arange(n_adj)
    m[:, 0] = m[:, 6] = 0x02
    m[:, 9] = 0x01
    m[:, 4] = m[:, 10] = i >> 8
    m[:, 5] = m[:, 11] = i & 0xFF
    return m


def reference_lookup(routes, addr):
    """Longest-prefix match by linear scan over ``routes`` (a ROUTE array):
    for tests only. Ties (same prefix and length): the last route wins."""
    best, best_len = -1, -1
    for p, ln, a in zip(routes["prefix"].tolist(), routes["length"].tolist(), routes["adj"].tolist()):
        if (addr & prefix_mask(ln)) == p and ln >= best_len:
            best, best_len = a, ln
    return best
