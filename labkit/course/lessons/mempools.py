"""Notebook and exercise 04 (mempools): a free stack, its reference, and measurements.

The exercise's pool is the heart of ``labkit.memory.mempool.Mempool`` with
slot numbers for handles: ``stack`` (uint32) holds the free handles in
``stack[:top[0]]``, the top of the stack is ``stack[top[0] - 1]``. The student
writes ``alloc_bulk`` and ``free_bulk``; ``ref_alloc_bulk`` and
``ref_free_bulk`` are the answer, ``Model`` the same pool as a Python list,
``replay`` runs a seeded sequence of bulk allocs and frees against it, and
``time_alloc_free`` measures TSC cycles per buffer.

The allocation is all-or-nothing, as DPDK's ``rte_mempool_get_bulk`` (and
``rte_pktmbuf_alloc_bulk``): a driver refilling 32 RX descriptors wants 32
buffers or none. labkit's own ``stack_alloc`` takes what there is instead (its
loop counts the shortfall as ``mempool_empty`` drops).

The notebook's measurements: ``pool_size_runs`` (the data plane, heap or
mempool, over pool sizes) and ``working_set`` (the DDIO "leaky DMA" point in
isolation: buffers handed out LIFO from a stack, or FIFO from a ring as DPDK's
default ring-backed mempool does without its per-core cache, through pools of
hundreds to a hundred thousand buffers).
"""
import mmap
import statistics
import time

import numpy as np
from numba import njit

from labkit.course import exercise as ex
from labkit.memory.intrinsics import rdtsc
from labkit.memory.layouts import CACHE_LINE, DATA_OFF, DEFAULT_SLOT_SIZE
from labkit.memory.mempool import slot_lines, stack_free

SLOT_BYTES = slot_lines(DEFAULT_SLOT_SIZE) * CACHE_LINE    # 2112: labkit's slot stride (an odd number of lines)


class FreeStack:
    """A pool of ``capacity`` buffers, ``n_free`` of them on the free stack.

    ``stack[:top[0]]`` are the free handles (slot numbers), the top last. A
    fresh pool holds them in reverse, so the first pops return 0, 1, 2...
    (as ``Mempool`` does: low addresses first). Handles ``n_free`` to
    ``capacity - 1`` are "in use" (not on the stack) when ``n_free < capacity``.
    """

    def __init__(self, capacity=1024, n_free=None):
        if not isinstance(capacity, (int, np.integer)) or capacity < 1:
            raise ValueError(f"capacity={capacity!r}: use a whole number of buffers, at least 1")
        n_free = capacity if n_free is None else n_free
        if not 0 <= n_free <= capacity:
            raise ValueError(f"n_free={n_free!r}: use 0 to capacity ({capacity})")
        self.capacity = int(capacity)
        self.stack = np.zeros(capacity, np.uint32)
        self.stack[:n_free] = np.arange(n_free, dtype=np.uint32)[::-1]
        self.top = np.array([n_free], np.int64)

    @property
    def n_free(self):
        return int(self.top[0])

    def free_handles(self):
        """The free handles, bottom of the stack first (the top last)."""
        return self.stack[:self.n_free].tolist()

    def __repr__(self):
        shown = self.free_handles()
        tail = ", ".join(map(str, shown[-8:]))
        return (f"FreeStack(capacity={self.capacity}, n_free={self.n_free}, "
                f"stack[:top] = [{'..., ' if len(shown) > 8 else ''}{tail}] <- top)")


def make_stack(capacity=1024, n_free=None):
    return FreeStack(capacity, n_free)


# ---- the answer ---------------------------------------------------------------

@njit(nogil=True, cache=True)
def ref_alloc_bulk(stack, top, out, n):
    """Pop n handles into out[:n], the top of the stack first; return n. With
    fewer than n free, take none and return 0 (rte_mempool_get_bulk)."""
    t = top[0]
    if n > t:
        return 0
    for i in range(n):
        out[i] = stack[t - 1 - i]
    top[0] = t - n
    return n


# The free side of the answer is labkit's own: push handles[:n], handles[n - 1]
# ends on top; more than the pool holds is a double free (PoolError).
ref_free_bulk = stack_free


class Model:
    """The free stack as a Python list (the top last): what the checks compare with."""

    def __init__(self, pool):
        self.free = pool.free_handles()

    def alloc(self, n):
        if n > len(self.free):
            return []
        return [self.free.pop() for _ in range(n)]

    def release(self, handles):
        self.free.extend(int(h) for h in handles)


def _short(xs, k=6):
    return "[" + ", ".join(map(str, xs[:k])) + (", ...]" if len(xs) > k else "]")


def replay(alloc, free, capacity=64, steps=2000, seed=4):
    """Run a seeded random sequence of bulk allocs and frees on ``alloc``/``free``
    and on ``Model`` side by side. Returns None when they agree at every step,
    else one line that says at which step and how they differ.

    The sequence depends only on the model (which handles it holds), so it is
    the same for every implementation: bursts of 0 to 40 (often more than is
    free, so the all-or-nothing rule is exercised), frees of random subsets of
    the held buffers in random order, sometimes of all of them."""
    rng = np.random.default_rng(seed)
    pool = FreeStack(capacity)
    model = Model(pool)
    held = []
    out = np.zeros(capacity + 64, np.uint32)
    for step in range(steps):
        if rng.random() < 0.55 or not held:
            n = int(rng.integers(0, 41)) if rng.random() < 0.9 else len(model.free) + int(rng.integers(0, 3))
            want = model.alloc(n)
            out[:] = 0xFFFFFFFF
            got = int(alloc(pool.stack, pool.top, out, n))
            if got != len(want):
                return (f"step {step}: alloc_bulk(n={n}) with {len(model.free) + len(want)} free returned {got}, "
                        f"expected {len(want)}")
            if out[:got].tolist() != want:
                return (f"step {step}: alloc_bulk(n={n}) handed out {_short(out[:got].tolist())}, "
                        f"expected {_short(want)} (the top of the stack first)")
            held.extend(want)
        else:
            k = len(held) if rng.random() < 0.1 else int(rng.integers(1, len(held) + 1))
            pick = rng.permutation(len(held))[:k]
            handles = np.array([held[i] for i in pick], np.uint32)
            keep = set(pick.tolist())
            held = [h for i, h in enumerate(held) if i not in keep]
            model.release(handles)
            free(pool.stack, pool.top, handles, k)
        if pool.free_handles() != model.free:
            return (f"step {step}: the free stack holds {pool.n_free} handles "
                    f"(top: {pool.free_handles()[-5:]}), expected {len(model.free)} (top: {model.free[-5:]})")
    return None


# ---- timing the student's pool --------------------------------------------------

@njit(nogil=True)
def _churn(alloc, free, stack, top, out, burst, rounds):
    """rounds x (alloc a burst, free it): TSC cycles taken."""
    t0 = rdtsc()
    for _ in range(rounds):
        got = alloc(stack, top, out, burst)
        free(stack, top, out, got)
    return rdtsc() - t0


def time_alloc_free(alloc, free, capacity=8192, burst=32, repeats=None, target_s=None, pool=None):
    """TSC cycles per buffer of one alloc + free, in bursts of ``burst`` from a
    pool of ``capacity`` buffers, all free (as in a data plane between bursts):
    the fastest of ``repeats`` rounds of about ``target_s`` seconds each.

    ``alloc(a, b, out, n)`` and ``free(a, b, handles, n)`` take the pool's two
    state arrays: a FreeStack's ``stack, top`` by default, or ``pool``'s
    ``a, b`` (a labkit ``Mempool`` or ``Heap``)."""
    repeats = repeats or (3 if ex.quick() else 7)
    target_s = target_s or (0.005 if ex.quick() else 0.03)
    if pool is None:
        fs = FreeStack(capacity)
        a, b, n_free = fs.stack, fs.top, (lambda: fs.n_free)
    else:
        a, b, n_free, capacity = pool.a, pool.b, (lambda: pool.n_free), pool.capacity
    out = np.zeros(burst, np.uint32)
    _churn(alloc, free, a, b, out, burst, 1)            # compile, warm up
    t0 = time.perf_counter()
    _churn(alloc, free, a, b, out, burst, 4)
    per_round = max((time.perf_counter() - t0) / 4, 1e-8)
    rounds = max(1, int(target_s / per_round))
    best = min(_churn(alloc, free, a, b, out, burst, rounds) for _ in range(repeats))
    if n_free() != capacity:
        raise AssertionError(f"after the measurement {n_free()} of {capacity} buffers are free: "
                             "alloc and free lose buffers")
    return best / (rounds * burst)


def time_labkit(mempool, capacity=8192, burst=32, repeats=None):
    """time_alloc_free of labkit's own allocators: the free stack (``stack_alloc``,
    ``stack_free``: Knobs(mempool=True)) or the heap (``heap_alloc``, ``heap_free``:
    mempool=False), over a pool of ``capacity`` 2 KiB slots."""
    from labkit.memory.mempool import Heap, Mempool, heap_alloc, heap_free, stack_alloc, stack_free
    pool = (Mempool if mempool else Heap)(capacity, hugepages=False)
    alloc, free = (stack_alloc, stack_free) if mempool else (heap_alloc, heap_free)
    return time_alloc_free(alloc, free, burst=burst, repeats=repeats, pool=pool)


# ---- pool size in the data plane ------------------------------------------------

def pool_size_runs(sizes=(4096, 16384, 65536), seconds=None, repeats=None, graph="ip4"):
    """The data plane (in-memory NIC), heap and mempool, at each pool size:
    {(mempool, size): {"cycles": median TSC cycles/packet, "mpps": median Mpps}}.
    Runs are interleaved (every point once, then again) and every run must
    balance its books (conserved, every buffer back)."""
    from labkit import Knobs, Lab
    seconds = seconds or (0.15 if ex.quick() else 1.0)
    repeats = repeats or (1 if ex.quick() else 3)
    runs = {}
    for _ in range(repeats):
        for mempool in (False, True):
            for size in sizes:
                with Lab("memory", graph, Knobs(mempool=mempool), pool_size=size) as lab:
                    res = lab.run(seconds=seconds)
                if not (res.conserved and res.pool_ok):
                    raise AssertionError(f"mempool={mempool}, pool_size={size}: a run lost packets or buffers")
                runs.setdefault((mempool, size), []).append((res.cycles_per_packet, res.pps / 1e6))
    return {k: {"cycles": statistics.median(c for c, _ in v), "mpps": statistics.median(m for _, m in v)}
            for k, v in runs.items()}


# ---- the working set: LIFO stack or FIFO ring ---------------------------------------

@njit(nogil=True, cache=True)
def _pool_get(pool, st, lifo):
    """One handle from the pool: the top of the stack (LIFO) or the head of the ring (FIFO).
    st: [count, head]; a FIFO's tail is (head + count) mod size."""
    n = st[0]
    if lifo:
        h = pool[n - 1]
    else:
        h = pool[st[1]]
        st[1] = st[1] + 1 if st[1] + 1 < pool.size else 0
    st[0] = n - 1
    return h


@njit(nogil=True, cache=True)
def _pool_put(pool, st, h, lifo):
    n = st[0]
    if lifo:
        pool[n] = h
    else:
        t = st[1] + n
        pool[t if t < pool.size else t - pool.size] = h
    st[0] = n + 1


@njit(nogil=True, cache=True)
def _flow(arena64, pool, st, lifo, ring, n_packets, slot_words, frame_words):
    """n_packets through an RX ring of ring.size buffers, as a driver and a NIC do:
    the oldest buffer in the ring is processed (its header read, its metadata
    written) and freed; a buffer is allocated and the NIC writes the next frame
    into it ("DMA": the CPU writes frame_words words here) and posts it. Returns
    (TSC cycles, a checksum that keeps the reads alive)."""
    d = ring.size
    k = 0
    acc = np.uint64(0)
    t0 = rdtsc()
    for p in range(n_packets):
        h = ring[k]
        base = np.int64(h) * slot_words
        data = base + DATA_OFF // 8
        acc += arena64[data] ^ arena64[data + 1] ^ arena64[data + 3]   # Ethernet and IPv4 header words
        arena64[base] = np.uint64(p)                                      # the metadata line: a next hop
        _pool_put(pool, st, h, lifo)
        h2 = _pool_get(pool, st, lifo)
        base2 = np.int64(h2) * slot_words + DATA_OFF // 8
        frame = arena64[base2:base2 + frame_words]   # a view: indexed by range(), the loop vectorizes
        for w in range(frame_words):
            frame[w] = np.uint64(p + w)
        ring[k] = h2
        k = k + 1 if k + 1 < d else 0
    return rdtsc() - t0, acc


THP = 2 << 20


def anon_huge_kb():
    """This process's memory on transparent huge pages, in KiB (0 if unknown)."""
    try:
        with open("/proc/self/smaps_rollup") as f:
            return next((int(ln.split()[1]) for ln in f if ln.startswith("AnonHugePages:")), 0)
    except OSError:
        return 0


def _arena64(n_words, thp):
    """A zeroed, 2 MiB-aligned uint64 array, on transparent huge pages (thp: madvise
    MADV_HUGEPAGE; the kernel gives them when it can, no reservation needed, unlike
    hugetlbfs) or on 4 KiB pages (MADV_NOHUGEPAGE; numpy itself asks for huge pages
    for big arrays, so np.zeros would not do)."""
    m = mmap.mmap(-1, n_words * 8 + THP, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
                  prot=mmap.PROT_READ | mmap.PROT_WRITE)
    advice = getattr(mmap, "MADV_HUGEPAGE" if thp else "MADV_NOHUGEPAGE", None)
    if advice is not None:
        m.madvise(advice)
    u8 = np.frombuffer(m, np.uint8)                 # keeps the mapping alive
    off = -u8.ctypes.data % THP
    return u8[off:off + n_words * 8].view(np.uint64)


def working_set(n_buffers=(512, 2048, 8192, 32768, 131072), ring_size=256, frame_bytes=64, thp=False,
                chunk=50_000, chunks=None):
    """TSC cycles per packet, LIFO (a stack) against FIFO (a ring) free list,
    at each pool size: {n: {"lifo": cycles, "fifo": cycles, "huge_mb": MiB of
    the arena on huge pages}}. After a warm-up (a FIFO hands out every buffer
    once), ``chunks`` runs of ``chunk`` packets each; the number is the fastest
    chunk: on a shared machine most longer runs lose the CPU for a while, and
    the TSC counts that too. The buffers are labkit's 2112-byte slots (a pool
    of 131072 is 277 MB), on 4 KiB pages, or with ``thp`` on transparent huge
    pages when the kernel gives them."""
    chunks = chunks or (5 if ex.quick() else 40)
    slot_words, frame_words = SLOT_BYTES // 8, -(-frame_bytes // 8)
    out = {}
    for n in n_buffers:
        if n < ring_size + 1:
            raise ValueError(f"a pool of {n} cannot fill a ring of {ring_size}: use more buffers")
        huge0 = anon_huge_kb()
        arena64 = _arena64(n * slot_words, thp)
        arena64[::512] = 0                           # touch every 4 KiB page: map the arena now
        res = {"huge_mb": max(0, anon_huge_kb() - huge0) // 1024}
        for lifo in (True, False):
            pool = np.arange(n, dtype=np.uint32)
            st = np.array([n, 0], np.int64)
            ring = np.zeros(ring_size, np.uint32)
            for i in range(ring_size):
                ring[i] = _pool_get(pool, st, lifo)
            _flow(arena64, pool, st, lifo, ring, n + ring_size, slot_words, frame_words)     # warm-up
            best = None
            for _ in range(chunks):
                cyc, _ = _flow(arena64, pool, st, lifo, ring, chunk, slot_words, frame_words)
                best = cyc / chunk if best is None else min(best, cyc / chunk)
            res["lifo" if lifo else "fifo"] = best
        out[n] = res
        del arena64
    return out
