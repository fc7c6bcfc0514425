"""labkit.course.lessons.prefetching (notebook and exercise 07): the table is what it
claims (a bucket is one aligned cache line, every stored key is in its bucket,
absent keys are absent), every lookup variant agrees with the numpy reference
on batches that hit the remainder paths, and the trace that the exercise's
checks rely on sees prefetches, reads past the batch, prefetches outside the
table and prefetches issued too late. No test asserts a time."""
import numpy as np
import pytest
from numba import njit

from labkit.course import exercise as ex
from labkit.course.lessons import prefetching as lesson
from labkit.course.lessons.prefetching import BUCKET_WORDS, MISS, SLOTS, bucket_of, prefetch

SIZES = (0, 1, 2, 3, 7, 8, 9, 31, 32, 33, 255, 256, 257, 1000)


@pytest.fixture(scope="module")
def table():
    return lesson.make_table(mib=1, seed=11)


def test_a_bucket_is_one_aligned_cache_line_and_every_stored_key_is_in_its_bucket(table):
    assert table.words.ctypes.data % 64 == 0 and BUCKET_WORDS * 8 == 64
    assert table.words.size == table.n_buckets * BUCKET_WORDS == (1 << 20) // 8
    assert table.mask == table.n_buckets - 1 and table.n_buckets & table.mask == 0
    slots = table.words.reshape(-1, BUCKET_WORDS)
    stored = slots[:, 0::2]
    assert np.count_nonzero(stored) == table.keys.size > 0.95 * table.n_buckets * SLOTS / 2
    assert (table.keys != 0).all() and (table.keys >> np.uint64(63) == 0).all()
    assert np.unique(table.keys).size == table.keys.size
    b = np.array([bucket_of(k, table.mask) for k in table.keys[:2000]])
    for k, bk in zip(table.keys[:2000], b):
        row = slots[bk]
        j = list(row[0::2]).index(k)
        assert row[2 * j + 1] == lesson.value_of(k)
    # the buckets of stored keys spread over the whole table (both ends included)
    assert b.min() < table.n_buckets // 50 and b.max() > table.n_buckets - table.n_buckets // 50


def test_bucket_of_is_the_documented_hash():
    keys = np.array([1, 2, 12345, (1 << 63) + 5, (1 << 64) - 1], np.uint64)
    for bits in (4, 14, 21):
        mask = (1 << bits) - 1
        want = [((int(k) * 0x9E3779B97F4A7C15) % (1 << 64) >> 32) & mask for k in keys]
        assert [bucket_of(k, mask) for k in keys] == want


def test_keys_hit_and_miss_as_asked(table):
    keys = lesson.make_keys(table, 10_000, hit=0.9, seed=3)
    assert keys.dtype == np.uint64 and keys.size == 10_000
    want = lesson.reference(table, keys)
    assert np.count_nonzero(want == MISS) == 1000
    present = np.isin(keys, table.keys)
    assert present.sum() == 9000 and (want[present] == lesson.value_of(keys[present])).all()
    assert lesson.make_keys(table, 0).size == 0
    assert not np.array_equal(keys, lesson.make_keys(table, 10_000, seed=4))


def test_make_table_refuses_sizes_that_are_not_a_power_of_two():
    with pytest.raises(ValueError, match="power of two"):
        lesson.make_table(mib=3)
    assert lesson.make_table(mib=1 / 16384).n_buckets == 1


@pytest.mark.parametrize("n", SIZES)
def test_every_variant_agrees_with_the_reference(table, n):
    keys = lesson.make_keys(table, n, seed=n)
    want = lesson.reference(table, keys)
    variants = [lesson.lookup_reference, lesson.lookup_two_pass]
    variants += [(lambda w, k, o, m, d=d: lesson.lookup_prefetch(w, k, o, m, d)) for d in (0, 1, 3, 8, 16, 300)]
    for fn in variants:
        out = np.full(n + 4, 7, np.uint64)
        assert fn(table.words, keys, out, n) == n
        assert np.array_equal(out[:n], want) and (out[n:] == 7).all()


def test_the_variants_stay_in_bounds(table):
    for fn in (lesson.lookup_reference, lesson.lookup_two_pass, lesson.lookup_prefetch):
        checked = njit(boundscheck=True)(fn.py_func)
        extra = (16,) if fn is lesson.lookup_prefetch else ()
        for n in (0, 1, 5, 40):
            keys = lesson.make_keys(table, n, seed=n)          # exactly n keys: keys[n] would raise
            checked(table.words, keys, np.zeros(n, np.uint64), n, *extra)


def test_prefetching_variants_have_prefetch_in_their_code_and_no_allocation(table):
    keys = lesson.make_keys(table, 64)
    out = np.zeros(64, np.uint64)
    assert lesson.llvm_has_prefetch(lesson.lookup_two_pass, table.words, keys, out, 64)
    assert lesson.llvm_has_prefetch(lesson.lookup_prefetch, table.words, keys, out, 64, 8)
    assert not lesson.llvm_has_prefetch(lesson.lookup_reference, table.words, keys, out, 64)
    for fn in (lesson.lookup_reference, lesson.lookup_two_pass):
        assert ex.compiles_without_nrt(fn, table.words, keys, out, 64) == (True, None)


# ---- the trace the checks use -------------------------------------------------------------

def _probe(tbl, b, key):
    for s in range(SLOTS):
        if tbl[b + 2 * s] == key:
            return tbl[b + 2 * s + 1]
    return MISS


def late(tbl, keys, out, n):
    """Prefetches each bucket right before reading it: useless."""
    mask = (tbl.size >> 3) - 1
    for i in range(n):
        b = bucket_of(keys[i], mask) << 3
        prefetch(tbl, b)
        out[i] = _probe(tbl, b, keys[i])
    return n


def past_the_batch(tbl, keys, out, n):
    """Distance 4 without the i + 4 < n guard: reads keys[n..n+3]."""
    mask = (tbl.size >> 3) - 1
    for i in range(n):
        if i + 4 < keys.size:
            prefetch(tbl, bucket_of(keys[i + 4], mask) << 3)
        out[i] = _probe(tbl, bucket_of(keys[i], mask) << 3, keys[i])
    return n


def off_the_end(tbl, keys, out, n):
    """Prefetches a word past the bucket's line: the next bucket, or past the table."""
    mask = (tbl.size >> 3) - 1
    for i in range(n):
        prefetch(tbl, (bucket_of(keys[i], mask) << 3) + 8)
    for i in range(n):
        out[i] = _probe(tbl, bucket_of(keys[i], mask) << 3, keys[i])
    return n


def test_trace_of_the_plain_loop_sees_reads_and_no_prefetch(table):
    keys = lesson.make_keys(table, 64, seed=5)
    tr = lesson.trace(lesson.lookup_reference, table, keys, 64)
    assert tr.returned == 64 and np.array_equal(tr.out, lesson.reference(table, keys))
    assert tr.prefetches == 0 and tr.ahead == 0
    assert tr.looked_up == len(set(tr.buckets)) and tr.looked_up > 60
    assert {e[1] for e in tr.events} == {"words", "keys"}


def ahead8(tbl, keys, out, n):
    """Distance 8, the first 8 buckets prefetched before the loop: right."""
    mask = (tbl.size >> 3) - 1
    for i in range(min(8, n)):
        prefetch(tbl, bucket_of(keys[i], mask) << 3)
    for i in range(n):
        if i + 8 < n:
            prefetch(tbl, bucket_of(keys[i + 8], mask) << 3)
        out[i] = _probe(tbl, bucket_of(keys[i], mask) << 3, keys[i])
    return n


@pytest.mark.parametrize("fn", [lesson.lookup_two_pass, ahead8])
def test_trace_of_prefetching_lookups_sees_them_ahead(table, fn):
    keys = lesson.make_keys(table, 100, seed=5)
    tr = lesson.trace(fn, table, keys, 100, keys_size=128)
    assert tr.prefetches == 100 and tr.ahead == tr.looked_up > 90
    assert not tr.out_of_range and not tr.beyond_batch and not tr.foreign
    assert np.array_equal(tr.out, lesson.reference(table, keys, 100))


def test_trace_sees_the_three_mistakes(table):
    keys = lesson.make_keys(table, 64, seed=9)
    tr = lesson.trace(late, table, keys, 64)
    assert tr.prefetches == 64 and tr.ahead == 0
    tr = lesson.trace(past_the_batch, table, keys, 40, keys_size=64)
    assert tr.beyond_batch == [40, 41, 42, 43]
    assert set(tr.foreign) and np.array_equal(tr.out, lesson.reference(table, keys, 40))
    last = np.array([k for k in table.keys if bucket_of(k, table.mask) == table.mask][:1], np.uint64)
    tr = lesson.trace(off_the_end, table, np.concatenate((keys[:8], last)), 9)
    assert tr.out_of_range == [("words", table.words.size)]
    assert len(tr.foreign) == 8                   # the neighbours' buckets


def test_time_lookup_runs_in_quick_mode(monkeypatch):
    monkeypatch.setenv("LABKIT_QUICK", "1")
    small = lesson.make_table(mib=0.25)
    r = lesson.time_lookup({"plain": lesson.lookup_reference, "two": lesson.lookup_two_pass}, small, rounds=2)
    assert set(r) == {"plain", "two"} and all(v > 0 for v in r.values())
    r = lesson.time_distances(small, distances=(0, 4), rounds=2)
    assert set(r) == {0, 4, "two-pass"} and all(v > 0 for v in r.values())
    assert lesson.ns(lesson.tsc_hz()) == pytest.approx(1e9)
