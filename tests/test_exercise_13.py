"""Exercise 13 (RSS) and labkit.course.lessons.rss: the published suite is the
specification's, the solution's functions pass every check, the starter fails
every one, and each check says what is wrong with one plausible mistake at a
time. The functions are taken from the notebooks themselves.

No test asserts a time or a rate."""

import numpy as np
import pytest
from numba import njit

from exercise_cells import functions
from labkit.course.lessons import rss as lesson
from labkit.nic import rss

CHECKS = ("tables", "random", "microsoft", "reta", "steer", "spread", "rebalance", "symmetric")


@pytest.fixture(autouse=True)
def _quick(monkeypatch):
    monkeypatch.setenv("LABKIT_QUICK", "1")


@pytest.fixture(scope="module")
def solution():
    return functions("solutions", "13_rss")


@pytest.fixture(scope="module")
def starter():
    return functions("exercises", "13_rss")


def _all_problems(f):
    mt, tz, fr, st = f["make_tables"], f["toeplitz"], f["fill_reta"], f["steer"]
    return {
        "tables": lesson.tables_problems(mt),
        "random": lesson.toeplitz_problems(tz),
        "microsoft": lesson.suite_problems(mt, tz),
        "reta": lesson.reta_problems(fr),
        "steer": lesson.steer_problems(st),
        "spread": lesson.spread_problems(fr, st),
        "rebalance": lesson.rebalance_problems(fr, st),
        "symmetric": lesson.symmetric_problems(mt, tz, fr, st),
    }


# ---- the published suite and the helpers ----------------------------------------------

def test_the_suite_is_the_specifications():
    assert len(lesson.VERIFICATION) == 16
    for v in lesson.VERIFICATION:
        assert rss.toeplitz(rss.DEFAULT_KEY, v.data) == v.published, v.name
    assert sorted({len(v.data) for v in lesson.VERIFICATION}) == [8, 12, 32, 36]
    # the IPv4 rows are labkit's table; the input starts with the source (the table prints the destination first)
    dst, dport, src, sport, h2, h4 = rss.VERIFICATION_IPV4[0]
    assert lesson.VERIFICATION[1].data == rss.ipv4_tuple(src, dst, sport, dport)
    v6 = lesson.VERIFICATION[11]
    assert v6.data[:16] == bytes.fromhex("3ffe250102001fff0000000000000007") and v6.published == 0x40207d3d
    data, lengths, published = lesson.suite_rows()
    assert data.shape == (16, 36) and lengths.tolist() == [len(v.data) for v in lesson.VERIFICATION]
    assert (data[0, 8:] == lesson.JUNK).all()
    assert lesson.reference_hashes(rss.DEFAULT_KEY, data, lengths).tolist() == published.tolist()


def test_windows_tables_and_reversed_flows():
    key = rss.DEFAULT_KEY
    assert lesson.window(key, 0) == 0x6d5a56da and lesson.window(key, 8) == 0x5a56da25
    assert lesson.window(key, 288) == int.from_bytes(key[-4:], "big")
    with pytest.raises(ValueError):
        lesson.window(key, 289)
    t = lesson.reference_tables(key)
    assert t.shape == (36, 256) and t.dtype == np.uint32
    assert t[5, 0x80] == lesson.window(key, 40) and t[5, 0x01] == lesson.window(key, 47)
    data, lengths = lesson.flows(50, ipv6=True)
    back = lesson.reversed_flows(data, lengths)
    assert (back[:, 16:32] == data[:, :16]).all() and (back[:, 34:36] == data[:, 32:34]).all()
    assert (lesson.reversed_flows(back, lengths) == data).all()
    sym = lesson.reference_hashes(rss.SYMMETRIC_KEY, data, lengths)
    assert (sym == lesson.reference_hashes(rss.SYMMETRIC_KEY, back, lengths)).all()
    d, ln = lesson.random_rows(74)
    assert sorted(set(ln.tolist())) == list(range(37)) and (d[0] == lesson.JUNK).all()


# ---- the notebooks' own functions --------------------------------------------------------

def test_the_solution_passes_every_check(solution):
    assert _all_problems(solution) == {name: [] for name in CHECKS}


def test_the_starter_fails_every_check_and_says_why(starter):
    problems = _all_problems(starter)
    assert all(problems[name] for name in CHECKS), problems
    assert "uint32 [36, 256]" in problems["tables"][0]
    assert "tables[p, data[p]]" in problems["random"][0]
    assert "modulo" in problems["steer"][0]
    assert "128 integer entries" in problems["reta"][0]
    # ... though its hash is right: the starter is slow, not wrong
    data, lengths, published = lesson.suite_rows()
    key = np.frombuffer(rss.DEFAULT_KEY, np.uint8).copy()
    assert [starter["starter_toeplitz"](key, data[i], lengths[i]) for i in range(16)] == published.tolist()


# ---- one mistake at a time -----------------------------------------------------------------

def _tables_with(mistake):
    def make_tables(key):
        k, top = int.from_bytes(key, "big"), 8 * len(key) - 32
        rows = len(key) - (0 if mistake == "rows" else 4)
        t = np.zeros((rows, 256), np.int64 if mistake == "dtype" else np.uint32)
        for p in range(min(rows, len(key) - 4)):
            for b in range(256):
                acc = 0
                for j in range(8):
                    if b & (1 << j if mistake == "bit order" else 0x80 >> j):
                        w = (k >> (top - 8 * p - j)) & 0xFFFFFFFF
                        acc = (acc + w) & 0xFFFFFFFF if mistake == "sum" else acc ^ w
                t[p, b] = acc ^ (lesson.window(key, 8 * p) if mistake == "zero" and b == 0 else 0)
        return t
    return make_tables


@pytest.mark.parametrize("mistake, says", [
    ("bit order", "most significant first"),
    ("sum", "XOR (^)"),
    ("zero", "byte value 0 has no bit set"),
    ("rows", "returned uint32 (40, 256): the hash needs the tables, uint32 [36, 256]"),
    ("dtype", "int64"),
])
def test_tables_mistakes(mistake, says):
    problems = lesson.tables_problems(_tables_with(mistake))
    assert problems and says in problems[0], problems


def test_a_wrong_table_fails_the_suite_too():
    problems = lesson.suite_problems(_tables_with("bit order"), _toeplitz_with("right"))
    assert problems and problems[0].startswith("16 of 16 published vectors wrong"), problems


def _toeplitz_with(mistake):
    if mistake == "right":
        @njit(nogil=True)
        def f(tables, data, length):
            h = np.uint32(0)
            for p in range(length):
                h ^= tables[p, data[p]]
            return h
    elif mistake == "whole row":
        @njit(nogil=True)
        def f(tables, data, length):
            h = np.uint32(0)
            for p in range(min(data.shape[0], tables.shape[0])):
                h ^= tables[p, data[p]]
            return h
    elif mistake == "one short":
        @njit(nogil=True)
        def f(tables, data, length):
            h = np.uint32(0)
            for p in range(length - 1):
                h ^= tables[p, data[p]]
            return h
    elif mistake == "sum":
        @njit(nogil=True)
        def f(tables, data, length):
            h = 0
            for p in range(length):
                h += tables[p, data[p]]
            return h
    else:                                      # "not compiled"
        def f(tables, data, length):
            return 0
    return f


@pytest.mark.parametrize("mistake, says", [
    ("whole row", "the whole row"),
    ("one short", "every byte p < length"),
    ("sum", "expected"),
    ("not compiled", "@njit"),
])
def test_toeplitz_mistakes(mistake, says):
    problems = lesson.toeplitz_problems(_toeplitz_with(mistake), n=400)
    assert problems and says in problems[0], problems


def test_toeplitz_that_raises_is_reported_not_raised():
    @njit(nogil=True)
    def transposed(tables, data, length):
        h = np.uint32(0)
        for p in range(length):
            h ^= tables[data[p], p]
        return h
    problems = lesson.toeplitz_problems(transposed, n=400)
    assert problems and ("IndexError" in problems[0] or "expected" in problems[0]), problems


@pytest.mark.parametrize("fill, says", [
    (lambda n, size=128: (np.arange(size) * n // size).astype(np.uint16), "round robin"),
    (lambda n, size=128: np.arange(n), "128 integer entries"),
    (lambda n, size=128: [i % n for i in range(size)], "numpy array"),
    (lambda n: (np.arange(128) % n).astype(np.uint16), "raised TypeError"),      # no size argument
])
def test_reta_mistakes(fill, says):
    problems = lesson.reta_problems(fill)
    assert problems and says in problems[0], problems


def _steer_with(mistake):
    if mistake == "modulo":
        @njit(nogil=True)
        def f(reta, h):
            return h % (reta.max() + 1)
    elif mistake == "127":
        @njit(nogil=True)
        def f(reta, h):
            return reta[h & 127]
    elif mistake == "high bits":
        @njit(nogil=True)
        def f(reta, h):
            return reta[h >> 25]
    else:                                      # "ignores the entries"
        @njit(nogil=True)
        def f(reta, h):
            return (h & (reta.size - 1)) % (reta.max() + 1)
    return f


@pytest.mark.parametrize("mistake, says", [
    ("modulo", "the hash modulo"),
    ("127", "not 127"),
    ("high bits", "low bits"),
    ("ignores the entries", "expected reta[h & 127]"),
])
def test_steer_mistakes(mistake, says):
    problems = lesson.steer_problems(_steer_with(mistake))
    assert problems and says in problems[0], problems


def test_spread_and_rebalance_catch_a_steer_that_ignores_the_table(solution):
    fill = solution["fill_reta"]

    @njit(nogil=True)
    def few_entries(reta, h):                  # only the first 8 entries are ever used
        return reta[h & 7]
    spread = lesson.spread_problems(fill, few_entries)
    assert spread and "3 queues" in spread[0] and "of the RETA's entries" in spread[0], spread
    rebalance = lesson.rebalance_problems(fill, _steer_with("ignores the entries"))
    assert rebalance and ("moved" in rebalance[0] or "now says 0" in rebalance[0]), rebalance


def test_symmetric_needs_the_key(solution):
    def keyless(key):                          # the default key's tables for every key
        return solution["make_tables"](rss.DEFAULT_KEY)[:len(key) - 4]
    problems = lesson.symmetric_problems(keyless, solution["toeplitz"], solution["fill_reta"], solution["steer"])
    assert problems and "symmetric key" in problems[0], problems


# ---- the measurement ------------------------------------------------------------------------

def test_time_hash_runs_both_kinds(solution, starter):
    key = np.frombuffer(rss.DEFAULT_KEY, np.uint8).copy()
    assert lesson.time_hash(starter["starter_toeplitz"], key, 12, n=64, rounds=2, repeat=2) > 0
    assert lesson.time_hash(solution["toeplitz"], lesson.reference_tables(rss.DEFAULT_KEY), 36,
                            n=64, rounds=2, repeat=2) > 0


def _see(**ns):
    from labkit.course.findings import evaluate
    rows = [[kind, int(length), v] for name, v in ns.items() for kind, length in [name.split("_")]]
    return evaluate(lesson.what_you_should_see, {"ns": rows})


def test_what_you_should_see_follows_the_numbers():
    text, claims = _see(bits_12=50.0, bits_36=130.0, tables_12=5.0, tables_36=13.0)
    assert "10.0x faster than the starter's 50.0 ns" in text and "less than 1.5 times" in text
    assert "200 million IPv4 packets per second" in text
    assert [c["holds"] for c in claims] == [True, True]
    text, claims = _see(bits_12=50.0, bits_36=130.0, tables_12=60.0, tables_36=300.0)
    assert "not faster (1.2x slower)" in text and "more per byte" in text
    assert [c["holds"] for c in claims] == [False, False]
