"""DIR-24-8 FIB against a linear-scan longest-prefix match."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from labkit.graph import kernels as k
from labkit.graph.acl import Acl
from labkit.graph.fib import ROUTE, Fib, make_adj_mac, prefix_mask, reference_lookup
from labkit.memory.layouts import DATA_OFF, META_ADJ_OFF


def lookup_via_node(fib, addr):
    """ip4_lookup_one on a minimal IPv4 frame whose destination is ``addr``."""
    arena = np.zeros(2048 * 2, np.uint8)
    base = 2048
    arena[base + DATA_OFF + 14 + 16:base + DATA_OFF + 14 + 20] = np.frombuffer(addr.to_bytes(4, "big"), np.uint8)
    c = k.ip4_lookup_one(arena, base, 34, fib.tbl24, fib.tbl8, fib.adj_valid)
    return -1 if c == k.E_NO_ROUTE else int(arena[base + META_ADJ_OFF])


def boundaries(routes):
    """First and last address of each route and their outside neighbours."""
    out = set()
    for p, ln in zip(routes["prefix"].tolist(), routes["length"].tolist()):
        last = p | (~prefix_mask(ln) & 0xFFFFFFFF)
        out.update(a & 0xFFFFFFFF for a in (p, last, p - 1, last + 1))
    return sorted(out)


def overlapping_routes(rng, n, base=0x0A000000):
    """Routes crowded into 10.0.0.0/12 with lengths /8 to /32: many overlap."""
    length = rng.integers(8, 33, n).astype(np.uint8)
    prefix = (base + rng.integers(0, 1 << 20, n) * rng.integers(1, 16, n)).astype(np.uint32)
    return prefix, length, rng.integers(0, 50, n).astype(np.uint32)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_matches_linear_scan(seed):
    rng = np.random.default_rng(seed)
    fib = Fib(overlapping_routes(rng, 300), n_adj=50)
    addrs = boundaries(fib.routes) + rng.integers(0x09000000, 0x0C000000, 500).tolist()
    got = fib.lookup_many(np.array(addrs, np.uint32))
    for a, g in zip(addrs, got.tolist()):
        want = reference_lookup(fib.routes, a)
        assert g == want == fib.lookup(a), hex(a)
    assert (got >= 0).any() and (got < 0).any()
    for a in addrs[:200]:
        assert lookup_via_node(fib, a) == reference_lookup(fib.routes, a)


def test_insertion_order_does_not_matter():
    rng = np.random.default_rng(7)
    p, ln, adj = overlapping_routes(rng, 400)
    r = np.unique(np.rec.fromarrays([p & np.array([prefix_mask(int(x)) for x in ln], np.uint32), ln, adj],
                                    dtype=ROUTE))
    r = r[np.unique(r[["prefix", "length"]], return_index=True)[1]]   # one route per prefix
    a = Fib(r, n_adj=50)
    every = np.arange(0x09000000, 0x0C000000, dtype=np.uint32)   # all of 9/8 to 11/8
    want = a.lookup_many(every)
    for s in range(3):
        b = Fib(r[np.random.default_rng(s).permutation(len(r))], n_adj=50)
        assert np.array_equal(want, b.lookup_many(every))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 32), st.integers(0, 9)), min_size=1, max_size=25),
       st.lists(st.integers(0, 2**32 - 1), max_size=20))
def test_hypothesis_routes(routes, extra):
    p, ln, adj = (np.array(x, dt) for x, dt in zip(zip(*routes), (np.uint32, np.uint8, np.uint32)))
    fib = Fib((p, ln, adj), n_adj=10)
    for a in boundaries(fib.routes) + extra:
        assert fib.lookup(a) == reference_lookup(fib.routes, a), hex(a)


def test_nested_and_host_routes():
    # /8, /16, /24, /25, /32 all covering 10.1.1.1, inserted longest first
    routes = ([0x0A010101, 0x0A010100, 0x0A010100, 0x0A010000, 0x0A000000, 0],
              [32, 25, 24, 16, 8, 0], [5, 4, 3, 2, 1, 0])
    fib = Fib(routes, n_adj=6)
    expect = {0x0A010101: 5, 0x0A010102: 4, 0x0A010180: 3, 0x0A010201: 2, 0x0A020000: 1, 0x0B000000: 0}
    for a, want in expect.items():
        assert fib.lookup(a) == want == lookup_via_node(fib, a) == reference_lookup(fib.routes, a)


def test_duplicate_prefix_last_wins_and_host_bits_cleared():
    fib = Fib(([0x0A0000FF, 0x0A000000], [24, 24], [1, 2]), n_adj=3)
    assert fib.routes["prefix"][0] == 0x0A000000
    assert fib.lookup(0x0A000001) == 2 == reference_lookup(fib.routes, 0x0A000001)


def test_bad_routes_rejected():
    with pytest.raises(ValueError):
        Fib(([0], [8], [3]), n_adj=3)
    with pytest.raises(ValueError):
        Fib(([0], [33], [0]), n_adj=3)


def test_allocator_is_used():
    calls = []

    def alloc(n):
        calls.append(n)
        return np.zeros(n, np.uint8)
    fib = Fib(([0x0A000000], [8], [0]), n_adj=1, alloc=alloc)
    assert calls == [2 ** 25]
    assert fib.tbl24.dtype == np.uint16 and fib.tbl24.shape == (2 ** 24,)


def test_random_table():
    a = Fib.random(n_routes=100_000, n_adj=16, seed=5)
    b = Fib.random(n_routes=100_000, n_adj=16, seed=5)
    assert np.array_equal(a.routes, b.routes) and np.array_equal(a.tbl24, b.tbl24)
    assert not np.array_equal(a.routes, Fib.random(n_routes=1000, n_adj=16, seed=6).routes[:1000])
    ln = a.routes["length"]
    assert 0.8 < (ln == 24).mean() < 0.9 and (ln > 24).any() and (ln < 24).any() and ln.min() >= 16
    assert a.lookup(0) == -1 and a.lookup(0xFFFFFFFF) == -1
    assert a.tbl8.dtype == np.uint16 and a.tbl8.size % 256 == 0
    assert a.adj_valid.shape == (16,) and a.adj_mac.shape == (16, 12)
    d = a.sample_destinations(5000, seed=3, miss_share=0.2)
    got = a.lookup_many(d)
    assert d.dtype == np.uint32 and len(d) == 5000 and (got < 0).sum() == 1000
    assert ((got >= 0) & (got < 16)).sum() == 4000
    assert np.array_equal(d, a.sample_destinations(5000, seed=3, miss_share=0.2))
    sample = np.random.default_rng(0).choice(d, 50)
    small = a.routes[np.isin(a.routes["prefix"] >> 16, sample >> 16)]
    for x in sample.tolist():
        assert a.lookup(x) == reference_lookup(small, x)


def test_adj_mac():
    m = make_adj_mac(300)
    assert m.dtype == np.uint8 and m.shape == (300, 12)
    assert ((m[:, 0] & 0x02) != 0).all() and ((m[:, 0] & 0x01) == 0).all()
    assert len({bytes(r[:6]) for r in m}) == 300 and not (m[:, :6] == m[:, 6:]).all(axis=1).any()


def test_default_acl_drops_some_fib_traffic():
    fib, acl = Fib.random(n_routes=20_000, seed=2), Acl.default()
    rng = np.random.default_rng(1)
    dst = fib.sample_destinations(3000, seed=1)
    src = rng.integers(0, 2**32, 3000)
    dport = rng.choice([53, 80, 443, 23, 5000, 1900], 3000)
    denied = sum(not acl.permits(int(s), int(d), 17, 1234, int(p)) for s, d, p in zip(src, dst, dport))
    assert 0.1 < denied / 3000 < 0.9
