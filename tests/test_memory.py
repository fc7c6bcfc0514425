"""Mempool, heap and rings: ownership, exhaustion, wrap-around, remainders."""
import os

import numpy as np
import pytest

from labkit.memory.layouts import CACHE_LINE, LINE_SHIFT
from labkit.memory.mempool import Heap, Mempool, PoolError, slot_lines
from labkit.memory.region import alloc_region
from labkit.memory.ring import CONS, PROD, Ring, ring_count, ring_dequeue, ring_dequeue_aos, ring_enqueue
from labkit.memory.layouts import PKT_VEC_AOS


@pytest.mark.parametrize("kind", [Mempool, Heap])
@pytest.mark.parametrize("jit", [True, False])
def test_pool_alloc_free_exhaustion_and_recovery(kind, jit):
    pool = kind(64, hugepages=False)
    alloc = pool.alloc if jit else pool.alloc.py_func
    free = pool.free if jit else pool.free.py_func
    out = np.zeros(100, np.uint32)
    got = alloc(pool.a, pool.b, out, 100)
    assert got == 64 and pool.n_free == 0                 # exhaustion: partial, counted by caller
    handles = out[:got].copy()
    assert len(np.unique(handles)) == 64                   # no buffer handed out twice
    bases = handles.astype(np.int64) << LINE_SHIFT
    assert np.all(bases % CACHE_LINE == 0)
    assert bases.max() + pool.slot_size <= pool.arena.size  # every slot inside the arena
    assert alloc(pool.a, pool.b, out, 1) == 0              # dry
    rng = np.random.default_rng(7)
    rng.shuffle(handles)
    free(pool.a, pool.b, handles[:10], 10)
    assert alloc(pool.a, pool.b, out, 5) == 5              # recovers
    free(pool.a, pool.b, out[:5], 5)
    free(pool.a, pool.b, handles[10:], 54)
    assert pool.n_free == pool.capacity and pool.check()


@pytest.mark.parametrize("kind", [Mempool, Heap])
def test_double_free_is_caught(kind):
    pool = kind(8, hugepages=False)
    out = np.zeros(8, np.uint32)
    pool.alloc(pool.a, pool.b, out, 1)
    pool.free(pool.a, pool.b, out, 1)
    with pytest.raises(PoolError):
        pool.free(pool.a, pool.b, out, 1)


def test_slots_do_not_overlap_and_stride_is_odd_lines():
    pool = Mempool(16, hugepages=False)
    out = np.zeros(16, np.uint32)
    pool.alloc(pool.a, pool.b, out, 16)
    starts = np.sort(out.astype(np.int64) << LINE_SHIFT)
    assert np.all(np.diff(starts) >= pool.slot_size)
    assert slot_lines(2048) % 2 == 1 and slot_lines(2112) == 33


def test_heap_random_alloc_free_keeps_blocks_disjoint():
    pool = Heap(128, hugepages=False)
    rng = np.random.default_rng(3)
    live = []
    out = np.zeros(1, np.uint32)
    for _ in range(2000):
        if live and (rng.random() < 0.5 or len(live) == 128):
            h = live.pop(rng.integers(len(live)))
            pool.free(pool.a, pool.b, np.array([h], np.uint32), 1)
        elif pool.alloc(pool.a, pool.b, out, 1) == 1:
            live.append(int(out[0]))
        starts = np.sort(np.array(live, np.int64))
        assert np.all(np.diff(starts) >= slot_lines(pool.slot_size))
    pool.free(pool.a, pool.b, np.array(live, np.uint32), len(live))
    assert pool.check()


def test_region_falls_back_with_a_note_or_uses_huge_pages():
    arr, huge, note = alloc_region(3 << 20, huge=True)
    assert arr.size == 3 << 20 and arr.ctypes.data % 4096 == 0
    assert huge or "nr_hugepages" in note
    arr, huge, note = alloc_region(4096, huge=False)
    assert not huge and note == ""


def _vm_flags(addr):
    """The VmFlags of the mapping holding addr, from /proc/self/smaps."""
    hit = False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(x, 16) for x in head.split("-"))
                hit = lo <= addr < hi
            elif hit and head == "VmFlags:":
                return line.split()[1:]
    return None


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="Linux only")
def test_a_4k_region_asks_for_no_transparent_huge_pages():
    """hugepages=False must mean 4 KiB pages even where THP is "always"."""
    arr, huge, _ = alloc_region(8 << 20, huge=False)
    assert not huge and "nh" in _vm_flags(arr.ctypes.data)     # MADV_NOHUGEPAGE


def test_huge_pages_free_leaves_out_the_promised_ones(monkeypatch, tmp_path):
    from labkit.memory import region
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("HugePages_Total:     512\nHugePages_Free:      300\nHugePages_Rsvd:      120\n")
    real_open = open
    monkeypatch.setattr("builtins.open", lambda p, *a, **k: real_open(meminfo if p == "/proc/meminfo" else p, *a, **k))
    assert region.huge_pages_free() == 180


def test_ring_size_must_be_power_of_two():
    with pytest.raises(ValueError, match="power of two"):
        Ring(1000)


def _enq(r, vals, n):
    v = np.asarray(vals, np.uint32)
    return ring_enqueue(r.desc, r.cur, v, v, v, n)


def _deq(r, n):
    h, l, x = (np.zeros(max(n, 1), np.uint32) for _ in range(3))
    k = ring_dequeue(r.desc, r.cur, h, l, x, n)
    return list(h[:k])


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9])
def test_ring_batch_sizes_full_and_empty(n):
    r = Ring(8)
    vals = list(range(100, 100 + max(n, 1)))
    assert _enq(r, vals, n) == min(n, 8)                   # n+1 does not fit: 8 taken
    assert len(r) == min(n, 8) and ring_count(r.cur) == min(n, 8)
    assert _deq(r, n + 1) == vals[:min(n, 8)]
    assert _deq(r, 1) == []                                # empty


def test_ring_wraps_around_many_times_in_order():
    r = Ring(8)
    sent, got = 0, []
    rng = np.random.default_rng(1)
    while sent < 1000:
        k = int(rng.integers(0, 9))
        sent += _enq(r, list(range(sent, sent + k)), k)
        got += _deq(r, int(rng.integers(0, 9)))
    got += _deq(r, 8)
    assert got == list(range(sent)) and r.cur[PROD] == r.cur[CONS] == sent


def test_ring_cursors_on_separate_cache_lines():
    r = Ring(8)
    assert (CONS - PROD) * r.cur.itemsize >= CACHE_LINE and r.cur.ctypes.data % CACHE_LINE == 0


def test_ring_dequeue_aos_matches_soa():
    r = Ring(16)
    _enq(r, range(5), 5)
    vec = np.zeros(8, PKT_VEC_AOS)
    assert ring_dequeue_aos(r.desc, r.cur, vec, 8) == 5
    assert list(vec["handle"][:5]) == list(range(5)) and list(vec["length"][:5]) == list(range(5))


def test_false_sharing_measurement_counts_every_increment():
    from labkit.bench.cores import measure_false_sharing
    r = measure_false_sharing(n=10_000, runs=2)
    assert set(r) == {"one line", "own lines"} and all(v > 0 for v in r.values())


def test_cache_folders_follow_labkit_source(tmp_path, monkeypatch):
    # numba checks a cached kernel against its own file only: the folder (and every
    # generated module's name) must change when any of labkit's source does
    import os

    import labkit
    from labkit.graph import compile as gc
    fp = labkit.source_fingerprint()
    assert len(fp) == 16 and labkit.numba_cache_dir("x").endswith(f"{os.sep}labkit{os.sep}x{os.sep}{fp}")
    assert os.environ["NUMBA_CACHE_DIR"].endswith(fp)       # set by conftest, per version too
    monkeypatch.setenv("LABKIT_CACHE_DIR", str(tmp_path))
    a = gc.load_source("X = 1\n", "fp_test").__name__
    monkeypatch.setattr(gc, "source_fingerprint", lambda: "0" * 16)
    b = gc.load_source("X = 1\n", "fp_test").__name__
    assert a != b


def test_old_cache_versions_are_pruned_when_a_new_one_starts(tmp_path, monkeypatch):
    import os

    import labkit
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    base = tmp_path / "labkit" / "numba"
    names = [f"{i:016x}" for i in range(5)]
    for i, name in enumerate(names):
        (base / name / "sub").mkdir(parents=True)
        os.utime(base / name, (1000 + i, 1000 + i))        # names[4] is the newest
    (base / "not-a-version").mkdir()
    path = labkit.numba_cache_dir("numba")
    assert path == str(base / labkit.source_fingerprint())
    left = sorted(p.name for p in base.iterdir())
    assert left == sorted(names[-(labkit.KEEP_VERSIONS - 1):] + ["not-a-version"])
    os.makedirs(path)                                         # this version's folder exists: nothing more goes
    labkit.numba_cache_dir("numba")
    assert len(list(base.iterdir())) == len(left) + 1


def test_the_cache_folder_holds_when_numba_was_imported_first(tmp_path):
    """A notebook that imports numba before labkit still gets the per-version
    folder, not numba's default next to the source (the stale-code trap)."""
    import os
    import subprocess
    import sys
    code = ("import numba, labkit, sys; "
            "sys.exit(0 if numba.config.CACHE_DIR == labkit.numba_cache_dir() else 1)")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env["XDG_CACHE_HOME"] = str(tmp_path)
    r = subprocess.run([sys.executable, "-c", code], env=env, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert r.returncode == 0


def test_wide_loads_and_stores_match_their_twins_at_any_alignment_and_refuse_past_the_end():
    from numba import njit
    from labkit.memory.intrinsics import load_le, store_le

    @njit
    def swap_words(a, i):                  # 12 bytes at i: the two halves traded, as the MAC swap does
        x, y = load_le(a, i, 8), load_le(a, i + 8, 4)
        store_le(a, i, (x >> 48) | (y << 16) | ((x & 0xFFFFFFFFFFFF) << 48), 8)
        store_le(a, i + 8, (x & 0xFFFFFFFFFFFF) >> 16, 4)
        return load_le(a, i, 4)

    rng = np.random.default_rng(5)
    for i in range(0, 9):                  # every alignment
        orig = rng.integers(0, 256, 32).astype(np.uint8)
        a, b = orig.copy(), orig.copy()
        assert swap_words(a, i) == swap_words.py_func(b, i) == int.from_bytes(orig[i + 6:i + 10].tobytes(), "little")
        want = np.concatenate([orig[:i], orig[i + 6:i + 12], orig[i:i + 6], orig[i + 12:]])
        assert np.array_equal(a, want) and np.array_equal(b, want)
    with pytest.raises(IndexError):
        load_le(np.zeros(7, np.uint8), 0, 8)
    with pytest.raises(IndexError):
        store_le(np.zeros(10, np.uint8), 8, 1, 4)


def test_network_order_fields_are_one_access_each_and_checked_like_indexing_when_compiled():
    """rd16/rd32/wr16/wr32 (load_be/store_be) and the little-endian metadata helpers, compiled and
    pure Python, at every alignment; compiled with NUMBA_BOUNDSCHECK=1 (tests/conftest.py) a field
    that runs past the array raises IndexError as a[i] would."""
    from numba import config, njit
    from labkit.memory.bytes import rd16, rd32, rd32le, wr16, wr32, wr32le
    from labkit.memory.intrinsics import load_be, store_be

    rng = np.random.default_rng(9)
    for o in range(8):
        a = rng.integers(0, 256, 16).astype(np.uint8)
        raw = a[o:o + 4].tobytes()
        for rd in (rd16, rd16.py_func):
            assert rd(a, o) == int.from_bytes(raw[:2], "big")
        for rd in (rd32, rd32.py_func):
            assert rd(a, o) == int.from_bytes(raw, "big")
        assert rd32le(a, o) == rd32le.py_func(a, o) == int.from_bytes(raw, "little")
        assert isinstance(rd16(a, o), int) and rd32(a, o) >= 0
        for wr, width, order in ((wr16, 2, "big"), (wr32, 4, "big"), (wr32le, 4, "little")):
            for f in (wr, wr.py_func):
                b = a.copy()
                f(b, o, 0x89ABCDEF)
                assert b[o:o + width].tobytes() == (0x89ABCDEF & ((1 << 8 * width) - 1)).to_bytes(width, order)
                assert np.array_equal(np.delete(b, range(o, o + width)), np.delete(a, range(o, o + width)))
    assert config.BOUNDSCHECK

    @njit
    def past(a, o):
        return load_be(a, o, 4)

    @njit
    def past_store(a, o):
        store_be(a, o, 1, 2)

    a = np.zeros(8, np.uint8)
    assert past(a, 4) == 0
    for bad in (5, -1):
        with pytest.raises(IndexError):
            past(a, bad)
    with pytest.raises(IndexError):
        past_store(a, 7)
    with pytest.raises(IndexError):
        rd32(a, 6)


def test_likely_and_unlikely_become_branch_weights_and_change_no_result():
    from numba import njit
    from labkit.memory.intrinsics import likely, unlikely

    def hinted(a):
        s = 0
        for i in range(a.size):
            if unlikely(a[i] > 100):
                s += 7
            elif likely(a[i] != 3):
                s += 1
        return s

    def plain(a):
        s = 0
        for i in range(a.size):
            if a[i] > 100:
                s += 7
            elif a[i] != 3:
                s += 1
        return s

    a = np.arange(200)
    jh, jp = njit(hinted), njit(plain)
    assert jh(a) == jp(a) == hinted(a) == 793
    weights = lambda f: [ln for ln in list(f.inspect_llvm().values())[0].splitlines()  # noqa: E731
                         if '!"branch_weights", !"expected"' in ln]
    assert weights(jh) and not weights(jp)
