"""labkit.course.lessons.mempools: the exercise's reference, its model and replay,
its timers, and the working-set experiment. No test asserts a time."""
import numpy as np
import pytest
from numba import njit

from labkit.course import exercise as ex
from labkit.course.lessons import mempools as lesson
from labkit.memory.mempool import PoolError, stack_alloc


def _pool(capacity=16, n_free=None):
    return lesson.make_stack(capacity, n_free)


# ---- the pool and the reference ------------------------------------------------------

def test_a_fresh_pool_hands_out_low_handles_first():
    p = _pool(8)
    assert p.n_free == 8 and p.free_handles() == [7, 6, 5, 4, 3, 2, 1, 0]
    out = np.zeros(8, np.uint32)
    assert lesson.ref_alloc_bulk(p.stack, p.top, out, 3) == 3
    assert out[:3].tolist() == [0, 1, 2] and p.n_free == 5
    assert "n_free=5" in repr(p) and "<- top" in repr(p)


def test_a_partly_used_pool_and_bad_arguments():
    p = _pool(10, n_free=4)
    assert p.free_handles() == [3, 2, 1, 0]
    with pytest.raises(ValueError, match="n_free"):
        lesson.make_stack(4, n_free=5)
    with pytest.raises(ValueError, match="capacity"):
        lesson.make_stack(0)


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9])         # around the 8 free: n-1, n, n+1
def test_ref_alloc_is_all_or_nothing(n):
    p = _pool(16, n_free=8)
    before = p.stack.copy()
    out = np.full(16, 99, np.uint32)
    got = lesson.ref_alloc_bulk(p.stack, p.top, out, n)
    if n <= 8:
        assert got == n and p.n_free == 8 - n
        assert out[:n].tolist() == before[8 - n:8][::-1].tolist()   # the top first
        assert (out[n:] == 99).all()
    else:
        assert got == 0 and p.n_free == 8 and (out == 99).all()
    assert np.array_equal(p.stack, before)                      # alloc never rewrites the stack


def test_ref_free_is_lifo_and_refuses_to_overflow():
    p = _pool(16)
    h = np.zeros(16, np.uint32)
    lesson.ref_alloc_bulk(p.stack, p.top, h, 10)
    lesson.ref_free_bulk(p.stack, p.top, h[2:8], 4)              # only handles[:n]
    assert p.n_free == 10 and p.free_handles()[-4:] == h[2:6].tolist()
    out = np.zeros(2, np.uint32)
    lesson.ref_alloc_bulk(p.stack, p.top, out, 2)
    assert out.tolist() == [h[5], h[4]]                          # the last freed comes back first
    full = _pool(4)
    with pytest.raises(PoolError, match="double free"):
        lesson.ref_free_bulk(full.stack, full.top, np.zeros(1, np.uint32), 1)


def test_the_reference_needs_no_runtime():
    p = _pool(64, n_free=32)
    assert ex.compiles_without_nrt(lesson.ref_alloc_bulk, p.stack, p.top, np.zeros(8, np.uint32), 8) == (True, None)
    assert ex.compiles_without_nrt(lesson.ref_free_bulk, p.stack, p.top, np.arange(8, dtype=np.uint32), 8) \
        == (True, None)


def test_model_takes_none_when_short():
    m = lesson.Model(_pool(4))
    assert m.alloc(5) == [] and m.free == [3, 2, 1, 0]
    assert m.alloc(2) == [0, 1]
    m.release([7, 8])
    assert m.free == [3, 2, 7, 8] and m.alloc(1) == [8]


# ---- replay catches each kind of mistake ------------------------------------------------

_partial_alloc = stack_alloc                         # labkit's own: takes what there is


@njit(nogil=True)
def _bottom_alloc(stack, top, out, n):               # FIFO: the oldest free first
    t = top[0]
    if n > t:
        return 0
    for i in range(n):
        out[i] = stack[i]
    for j in range(t - n):
        stack[j] = stack[j + n]
    top[0] = t - n
    return n


@njit(nogil=True)
def _reversed_free(stack, top, handles, n):          # pushes handles[n-1] first
    t = top[0]
    for i in range(n):
        stack[t + i] = handles[n - 1 - i]
    top[0] = t + n


@njit(nogil=True)
def _leaky_free(stack, top, handles, n):             # loses the last buffer of a burst
    t = top[0]
    for i in range(n - 1):
        stack[t + i] = handles[i]
    top[0] = t + max(n - 1, 0)


def test_replay_accepts_the_reference_for_several_seeds():
    for seed in range(5):
        assert lesson.replay(lesson.ref_alloc_bulk, lesson.ref_free_bulk, seed=seed) is None
    assert lesson.replay(lesson.ref_alloc_bulk, lesson.ref_free_bulk, capacity=1, steps=300) is None


@pytest.mark.parametrize("alloc,free,says", [
    (_partial_alloc, lesson.ref_free_bulk, "returned"),
    (_bottom_alloc, lesson.ref_free_bulk, "handed out"),
    (lesson.ref_alloc_bulk, _reversed_free, ""),
    (lesson.ref_alloc_bulk, _leaky_free, "free stack holds"),
])
def test_replay_finds_each_mistake(alloc, free, says):
    problem = lesson.replay(alloc, free)
    assert problem is not None and problem.startswith("step ") and says in problem


def test_replay_exercises_the_short_case():
    calls = []

    def spy(stack, top, out, n):
        calls.append((n, int(top[0])))
        return lesson.ref_alloc_bulk(stack, top, out, n)
    assert lesson.replay(spy, lesson.ref_free_bulk) is None
    assert sum(1 for n, free in calls if n > free) >= 20          # all-or-nothing is tested often
    assert any(n == free for n, free in calls) and any(n == 0 for n, _ in calls)


# ---- timers -------------------------------------------------------------------------

def test_timers_return_a_cost_and_leave_every_buffer_free(monkeypatch):
    monkeypatch.setenv("LABKIT_QUICK", "1")
    assert lesson.time_alloc_free(lesson.ref_alloc_bulk, lesson.ref_free_bulk, capacity=256) > 0
    assert lesson.time_labkit(True, capacity=512) > 0
    assert lesson.time_labkit(False, capacity=512) > 0
    with pytest.raises(AssertionError, match="lose buffers"):
        lesson.time_alloc_free(lesson.ref_alloc_bulk, _leaky_free, capacity=256)


# ---- the working-set experiment ----------------------------------------------------------

def _ring_pool(n, ring_size, lifo):
    pool = np.arange(n, dtype=np.uint32)
    st = np.array([n, 0], np.int64)
    ring = np.zeros(ring_size, np.uint32)
    for i in range(ring_size):
        ring[i] = lesson._pool_get(pool, st, lifo)
    return pool, st, ring


def _held(pool, st, lifo):
    n, head = int(st[0]), int(st[1])
    if lifo:
        return pool[:n].tolist()
    return [int(pool[(head + i) % pool.size]) for i in range(n)]


@pytest.mark.parametrize("lifo", [True, False])
def test_flow_keeps_every_buffer_once_and_lifo_keeps_the_same_ones(lifo):
    n, d = 300, 64
    pool, st, ring = _ring_pool(n, d, lifo)
    first = sorted(ring.tolist())
    arena64 = np.zeros(n * (lesson.SLOT_BYTES // 8), np.uint64)
    cyc, _ = lesson._flow(arena64, pool, st, lifo, ring, 1000, lesson.SLOT_BYTES // 8, 8)
    assert cyc > 0
    assert sorted(_held(pool, st, lifo) + ring.tolist()) == list(range(n))
    if lifo:       # the buffer freed is the one allocated next: the ring keeps its buffers
        assert sorted(ring.tolist()) == first
    else:          # a FIFO hands out the buffer freed longest ago: the ring wanders through the pool
        assert sorted(ring.tolist()) != first
    # the "NIC" wrote the last frame into each buffer in the ring: DATA_OFF bytes into its slot
    h = int(ring[0])
    base = h * lesson.SLOT_BYTES // 8 + lesson.DATA_OFF // 8
    assert arena64[base + 1] == arena64[base] + 1


def test_fifo_touches_the_whole_pool_and_lifo_only_the_ring():
    n, d = 400, 32
    slot_words = lesson.SLOT_BYTES // 8
    for lifo, want in ((True, d), (False, n)):
        pool, st, ring = _ring_pool(n, d, lifo)
        arena64 = np.zeros(n * slot_words, np.uint64)
        lesson._flow(arena64, pool, st, lifo, ring, 3 * n, slot_words, 1)
        written = np.count_nonzero(arena64[lesson.DATA_OFF // 8::slot_words])
        assert abs(written - want) <= 1          # frame p=0 writes a zero word


def test_arena_is_aligned_and_zeroed():
    for thp in (False, True):
        a = lesson._arena64(1000, thp)
        assert a.size == 1000 and a.dtype == np.uint64 and not a.any()
        assert a.ctypes.data % lesson.THP == 0


def test_working_set_returns_both_orders_per_size(monkeypatch):
    monkeypatch.setenv("LABKIT_QUICK", "1")
    r = lesson.working_set(n_buffers=(300, 600), ring_size=64, chunk=500, chunks=3)
    assert set(r) == {300, 600}
    assert all(v["lifo"] > 0 and v["fifo"] > 0 and v["huge_mb"] >= 0 for v in r.values())
    with pytest.raises(ValueError, match="cannot fill a ring"):
        lesson.working_set(n_buffers=(64,), ring_size=64)
