"""Notebook and exercise 05 (huge pages): tables on 4 KiB or 2 MiB pages, what
the kernel really gave a mapping, and random lookups over a growing table.

A TLB entry maps one page. With 4 KiB pages a few thousand entries cover a few
MiB ("TLB reach"); a table read at random beyond that makes most lookups walk
the page tables (4 levels, and on a VM a second walk through the host's tables
for each of them). A 2 MiB page covers 512 times more per entry. Huge pages
come in two kinds on Linux (Documentation/admin-guide/mm/hugetlbpage.rst and
transhuge.rst):

* **hugetlbfs pages** (``mmap(MAP_HUGETLB)``): taken from a pool the
  administrator reserved in ``/proc/sys/vm/nr_hugepages``. Guaranteed, but
  with an empty pool the mmap fails with ENOMEM. DPDK's mempools and tables
  live there.
* **transparent huge pages** (THP): ordinary memory that the kernel backs with
  2 MiB pages when it can, for a 2 MiB-aligned range; with
  ``/sys/kernel/mm/transparent_hugepage/enabled`` at "madvise" only after
  ``madvise(MADV_HUGEPAGE)``, at "always" anyway, at "never" not at all. No
  root needed, no guarantee.

Here: ``alloc_table`` (the exercise's reference) and ``alloc_mode`` (the three
placements side by side), ``mapping`` and ``page_kind`` (what /proc/self/smaps
says about an array's memory: KernelPageSize, AnonHugePages, Private_Hugetlb),
``resident_bytes`` (mincore), the page arithmetic (``pages_for``,
``tlb_reach``), ``hold_huge_pages`` (takes every available huge page for a
while, so a check sees the fallback even where pages are reserved), and the
micro-measurement ``measure_lookups``: dependent lookups (a pointer chase, as
in a trie or a hash chain) and independent ones over tables of growing size,
ns of CPU time per lookup, medians. ``python -m labkit.course.lessons.hugepages``
prints it. Measured on a 2-vCPU EPYC VM (busy): a dependent lookup in 256 MiB
takes ~320 ns on 4 KiB pages, ~200 ns on 2 MiB pages (hugetlbfs or THP).
"""
import contextlib
import ctypes
import ctypes.util
import mmap
import os
import statistics
import sys
import threading
import time

import numpy as np
from numba import njit

from labkit.memory.region import HUGE_PAGE, MAP_HUGETLB, huge_pages_free

SMALL_PAGE = mmap.PAGESIZE          # 4096 on x86-64 and most arm64 kernels
KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
LINE = 64                           # one table entry per cache line: every lookup is its own line
MODES = ("4k", "thp", "hugetlb")    # 4 KiB pages (THP off), transparent huge pages, reserved huge pages
THP_PATH = "/sys/kernel/mm/transparent_hugepage/enabled"
NR_PATH = "/proc/sys/vm/nr_hugepages"

__all__ = ["SMALL_PAGE", "HUGE_PAGE", "KiB", "MiB", "GiB", "MODES", "MAP_HUGETLB", "huge_pages_free",
           "huge_pages_available", "thp_mode", "reserve_hint", "status", "pages_for", "tlb_reach", "mapping",
           "page_kind", "resident_bytes", "Table", "alloc_mode", "alloc_table", "hold_huge_pages", "make_chase",
           "chase", "gather", "time_lookups", "measure_lookups", "lookups_table"]


# ---- what the system offers ----------------------------------------------------

def thp_mode():
    """Transparent huge pages: "always", "madvise", "never", or None (not Linux, no THP)."""
    try:
        with open(THP_PATH) as f:
            text = f.read()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else None


# Huge pages an mmap(MAP_HUGETLB) can still get: HugePages_Free minus those
# promised to mappings not yet touched (labkit.memory.region computes it).
huge_pages_available = huge_pages_free


def reserve_hint(pages=512):
    return (f"reserve huge pages as root: `echo {pages} | sudo tee {NR_PATH}` "
            f"({pages} x 2 MiB = {pages * 2} MiB), or at boot: hugepages={pages} on the kernel command line")


def status():
    """One line: reserved huge pages, free ones, THP mode."""
    try:
        with open(NR_PATH) as f:
            total = int(f.read())
    except (OSError, ValueError):
        total = 0
    return (f"huge pages (2 MiB) reserved: {total}, available: {huge_pages_available()}; "
            f"transparent huge pages: {thp_mode() or 'n/a'}")


# ---- page arithmetic -----------------------------------------------------------

def pages_for(n_bytes, page_bytes):
    """Pages a table of n_bytes spans, starting on a page boundary: the last one
    partly used counts (0 bytes: 0 pages)."""
    return -(-int(n_bytes) // int(page_bytes))


def tlb_reach(entries, page_bytes):
    """Bytes a TLB of ``entries`` entries maps when each entry maps one page."""
    return int(entries) * int(page_bytes)


# ---- what the kernel gave: /proc/self/smaps and mincore ------------------------

def _addr(a):
    return a.__array_interface__["data"][0]


def mapping(a, n_bytes=None):
    """What /proc/self/smaps says about the memory of ``a`` (its first
    ``n_bytes``, default all of it): the mappings (VMAs) it overlaps, summed.
    {"start", "end" (of the first and the last VMA), "size", "vmas" (how many),
    "KernelPageSize" (of the first VMA), "Rss", "AnonHugePages",
    "Private_Hugetlb", ... (bytes, summed over the VMAs)}; None where there is no
    smaps (not Linux). One array can span several VMAs: numpy madvises the
    2 MiB-aligned middle of a big array (MADV_HUGEPAGE), which splits it in
    three. And the kernel merges neighbouring anonymous mappings with the same
    flags into one VMA, so the sums may include a neighbour's memory."""
    lo_a = _addr(a)
    hi_a = lo_a + max(1, a.nbytes if n_bytes is None else int(n_bytes))
    try:
        f = open("/proc/self/smaps")
    except OSError:
        return None
    vmas, cur = [], None
    with f:
        for line in f:
            head = line.split(None, 1)[0]
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(x, 16) for x in head.split("-"))
                cur = {"start": lo, "end": hi, "size": hi - lo} if lo < hi_a and hi > lo_a else None
                if cur is not None:
                    vmas.append(cur)
            elif cur is not None and head.endswith(":"):
                parts = line.split()
                if len(parts) >= 3 and parts[2] == "kB":
                    cur[head[:-1]] = int(parts[1]) * 1024
    if not vmas:
        return None
    out = dict(vmas[0])
    out.update(end=vmas[-1]["end"], vmas=len(vmas))
    for key in vmas[0]:
        if key not in ("start", "end", "KernelPageSize", "MMUPageSize"):
            out[key] = sum(v.get(key, 0) for v in vmas)
    return out


_libc = None


def resident_bytes(a, n_bytes=None):
    """Bytes of ``a`` (or of its first ``n_bytes``, which may run past a.size
    into the rest of its mapping) that are in RAM right now, by mincore(2): a
    page not yet touched since mmap is not. Whole pages are counted."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        _libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)
    n_bytes = a.nbytes if n_bytes is None else int(n_bytes)
    start = _addr(a) & ~(SMALL_PAGE - 1)
    length = _addr(a) + n_bytes - start
    vec = np.zeros(pages_for(length, SMALL_PAGE), np.uint8)
    if _libc.mincore(ctypes.c_void_p(start), ctypes.c_size_t(length), vec.ctypes.data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mincore: {os.strerror(err)}")
    return int((vec & 1).sum()) * SMALL_PAGE


# ---- the reference placement (exercise 05's solution does the same) -----------

class Table:
    """A table's memory: ``u8`` (n_bytes long), the mapping behind it
    (``map_bytes``, whole pages of ``page_bytes``), and ``note``: "" or why it
    is not on huge pages and how to get them."""

    def __init__(self, u8, map_bytes, page_bytes, note, mm):
        self.u8, self.map_bytes, self.page_bytes, self.note, self._mm = u8, map_bytes, page_bytes, note, mm

    def __iter__(self):
        return iter((self.u8, self.page_bytes, self.note))

    def close(self):
        """Unmap now (else when the last view of it goes away)."""
        self.u8 = None
        with contextlib.suppress(BufferError):
            self._mm.close()


def _anon(size, flags=0):
    return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | flags,
                     prot=mmap.PROT_READ | mmap.PROT_WRITE)


def _prefault(u8, step):
    """Write one byte per page, so every page is in RAM (and mapped) before the
    first lookup: DPDK does this at startup, nothing faults in the data path."""
    u8[::step] = 0


def alloc_mode(n_bytes, mode="hugetlb", prefault=True):
    """A Table of n_bytes placed as ``mode`` says:

    "hugetlb"  reserved 2 MiB pages (MAP_HUGETLB), size rounded up to whole huge
               pages; raises OSError when not enough are free
    "thp"      4 KiB-page memory, 2 MiB-aligned, with madvise(MADV_HUGEPAGE): the
               kernel may back it with transparent huge pages (THP "madvise" or
               "always"); ``page_bytes`` says 4 KiB, ``mapping()`` tells what it did
    "4k"       4 KiB pages, madvise(MADV_NOHUGEPAGE), so even THP "always" stays away
    """
    if n_bytes <= 0:
        raise ValueError(f"table size must be positive, got {n_bytes}")
    if mode == "hugetlb":
        size = pages_for(n_bytes, HUGE_PAGE) * HUGE_PAGE
        mm = _anon(size, MAP_HUGETLB)
        u8 = np.frombuffer(mm, np.uint8)[:n_bytes]
        if prefault:
            _prefault(np.frombuffer(mm, np.uint8), HUGE_PAGE)
        return Table(u8, size, HUGE_PAGE, "", mm)
    if mode not in ("thp", "4k"):
        raise ValueError(f"mode={mode!r}: use one of {', '.join(MODES)}")
    size = pages_for(n_bytes, HUGE_PAGE) * HUGE_PAGE
    mm = _anon(size + HUGE_PAGE)                      # room to start on a 2 MiB boundary
    base = np.frombuffer(mm, np.uint8)
    skip = (-_addr(base)) % HUGE_PAGE
    advice = getattr(mmap, "MADV_HUGEPAGE" if mode == "thp" else "MADV_NOHUGEPAGE", None)
    if advice is not None:
        with contextlib.suppress(OSError):
            mm.madvise(advice, skip, size)
    region = base[skip:skip + size]
    if prefault:
        _prefault(region, SMALL_PAGE)
    return Table(region[:n_bytes], size, SMALL_PAGE, "", mm)


def alloc_table(n_bytes):
    """Exercise 05's reference: ``(u8, page_bytes, note)`` (a Table). On reserved
    2 MiB pages when enough are free (size rounded up to whole huge pages, every
    page touched); else 4 KiB pages, 2 MiB-aligned with MADV_HUGEPAGE (THP may
    still help), and a note that says so and how to reserve pages."""
    try:
        return alloc_mode(n_bytes, "hugetlb")
    except OSError:
        pass
    t = alloc_mode(n_bytes, "thp")
    need = pages_for(n_bytes, HUGE_PAGE)
    t.note = (f"huge pages: {need} needed, {huge_pages_available()} available; using 4 KiB pages "
              f"(transparent huge pages: {thp_mode() or 'n/a'}); {reserve_hint(max(need, 64))}")
    return t


def _grab(n):
    """An untouched MAP_HUGETLB mapping of the most of ``n`` pages we can get, or None."""
    while n > 0:
        try:
            return _anon(n * HUGE_PAGE, MAP_HUGETLB)
        except OSError:
            n -= 1
    return None


@contextlib.contextmanager
def hold_huge_pages(poll_s=0.001):
    """Take every available huge page (reserve them with untouched MAP_HUGETLB
    mappings, which cost no RAM) for the ``with`` block: inside it an
    ``mmap(MAP_HUGETLB)`` fails as on a machine with none reserved. Pages that
    other processes free meanwhile are taken too, within ``poll_s`` (a
    thread watches /proc/meminfo). Yields how many it held at the start."""
    held = [m for m in [_grab(huge_pages_available())] if m is not None]
    first = sum(len(m) for m in held) // HUGE_PAGE
    stop = threading.Event()

    def keep_taking():
        while not stop.wait(poll_s):
            n = huge_pages_available()
            if n:
                m = _grab(n)
                if m is not None:
                    held.append(m)
    watcher = threading.Thread(target=keep_taking, name="hold_huge_pages", daemon=True)
    watcher.start()
    try:
        yield first
    finally:
        stop.set()
        watcher.join()
        for m in held:
            m.close()


# ---- the micro-measurement: a pointer chase over a table -----------------------

def make_chase(u32, n_entries, seed=5):
    """Write into ``u32`` (a uint32 view of a table, one entry per 64-byte line,
    entry i at u32[16 * i]) one random cycle through all n_entries entries
    (Sattolo's shuffle): following entry after entry visits every line once,
    in an order the prefetchers cannot guess. Returns the first entry."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(n_entries).astype(np.uint32)
    u32[order.astype(np.int64) * (LINE // 4)] = np.roll(order, -1)
    return int(order[0])


@njit(nogil=True, cache=True)
def chase(u32, start, n_steps):
    """n_steps dependent lookups: each address is the previous lookup's result
    (as in a trie or a hash chain), so the CPU cannot overlap them; the time per
    step is the latency of one lookup: cache or DRAM, plus a page walk when the
    TLB misses."""
    i = np.uint32(start)
    for _ in range(n_steps):
        i = u32[np.int64(i) * 16]
    return i


@njit(nogil=True, cache=True)
def gather(u32, idx, n):
    """n independent lookups at random lines ``idx[i]`` (one 64-byte entry each):
    the CPU overlaps many of them, as a data plane overlaps the lookups of a
    burst of packets; the time per lookup is then set by how many misses (and
    page walks) the core can have in flight. Returns a checksum."""
    s = np.uint32(0)
    for i in range(n):
        s += u32[idx[i] * 16]
    return s


def _u32(table):
    u8 = table.u8 if isinstance(table, Table) else table
    return u8[:u8.size & ~(LINE - 1)].view(np.uint32)


def _steps(steps):
    from labkit.course import exercise as ex
    return steps if steps is not None else (200_000 if ex.quick() else 1_000_000)


def time_lookups(table, kind="chase", steps=None, rounds=5, idx=None):
    """ns per lookup (median of ``rounds``) over ``table`` (a Table or uint8
    array): "chase" follows the cycle make_chase wrote, "random" reads
    ``idx`` (random entry numbers; default: ``steps`` of them over the whole
    table). One warm-up round first. The clock is the thread's CPU time
    (CLOCK_THREAD_CPUTIME_ID), not the TSC: on a busy machine a round of a
    second is often descheduled, and wall time would count the wait."""
    u32 = _u32(table)
    steps = _steps(steps)
    if kind == "random" and idx is None:
        idx = np.random.default_rng(7).integers(0, u32.size // 16, steps)
    ns = []
    for r in range(rounds + 1):
        t0 = time.thread_time_ns()
        if kind == "chase":
            chase(u32, 0, steps)
        else:
            gather(u32, idx, idx.size)
        t = time.thread_time_ns() - t0
        if r:
            ns.append(t / steps)
    return statistics.median(ns)


def measure_lookups(sizes=None, modes=MODES, kinds=("chase", "random"), steps=None, rounds=None,
                    progress=print):
    """ns per lookup over tables of ``sizes`` bytes, each placed as each mode in
    ``modes`` says ("4k", "thp", "hugetlb"; a mode the machine cannot give is
    n/a, with a note), for each kind of lookup in ``kinds`` ("chase": dependent,
    "random": independent). The tables of one size are measured in turns, round
    after round, so a noisy moment hits all of them. Returns {"sizes": [...],
    "ns": {(kind, mode): [ns or None per size]}, "pages": {mode: [...]},
    "notes": [...]}: medians of ``rounds``; "pages" says what the kernel gave
    (from /proc/self/smaps): "4 KiB", "2 MiB" or "THP x%"."""
    from labkit.course import exercise as ex
    q = ex.quick()
    if sizes is None:
        sizes = [1 * MiB, 16 * MiB, 64 * MiB] if q else [1 * MiB, 4 * MiB, 16 * MiB, 64 * MiB,
                                                         256 * MiB, 512 * MiB]
    rounds = rounds or (3 if q else 5)
    steps = _steps(steps)
    out = {"sizes": list(sizes), "kinds": list(kinds), "modes": list(modes),
           "ns": {(k, m): [] for k in kinds for m in modes}, "pages": {m: [] for m in modes}, "notes": []}
    for size in sizes:
        tables = {}
        for mode in modes:
            try:
                tables[mode] = t = alloc_mode(size, mode)
            except OSError:
                note = (f"hugetlb: not enough free huge pages for the {size // MiB} MiB table "
                        f"({huge_pages_available()} available); {reserve_hint()}")
                if note not in out["notes"]:
                    out["notes"].append(note)
                continue
            make_chase(_u32(t), size // LINE)
        idx = np.random.default_rng(7).integers(0, size // LINE, steps)
        got = {key: [] for key in out["ns"]}
        for _ in range(rounds):
            for kind in kinds:
                for mode, t in tables.items():
                    got[(kind, mode)].append(time_lookups(t, kind, steps, 1, idx))
        for key, v in got.items():
            out["ns"][key].append(statistics.median(v) if v else None)
        for mode in modes:
            out["pages"][mode].append(page_kind(tables[mode].u8) if mode in tables else "-")
        for t in tables.values():
            t.close()
        del tables
        if progress:
            progress(lookups_table(out).splitlines()[-2])
    return out


def lookups_table(res):
    """The result of measure_lookups as text: one line per size."""
    keys = list(res["ns"])
    head = "  ".join(f"{k[0] + ' ' + k[1]:>15}" for k in keys)
    lines = [f"{'table':>9}  {head}   (ns per lookup)"]
    done = len(next(iter(res["ns"].values())))
    for i, size in enumerate(res["sizes"][:done]):
        cells = []
        for k in keys:
            v = res["ns"][k][i]
            cells.append(f"{'n/a':>15}" if v is None else f"{v:15.1f}")
        lines.append(f"{size / MiB:6.0f} MiB  " + "  ".join(cells))
    pages = "; ".join(f"{m}: {', '.join(p)}" for m, p in res["pages"].items())
    return "\n".join(lines + [f"pages the kernel gave, by size: {pages}"])


def page_kind(u8):
    """What the kernel gave the memory of ``u8``: "2 MiB" (hugetlbfs), "THP x%"
    (4 KiB pages, x% of them backed by transparent huge pages) or "4 KiB"."""
    m = mapping(u8)
    if m is None:
        return "?"
    if m.get("KernelPageSize", 0) >= HUGE_PAGE:
        return "2 MiB"
    thp = m.get("AnonHugePages", 0)
    if thp:
        return f"THP {min(100, round(100 * thp / max(u8.nbytes, 1)))}%"
    return "4 KiB"


if __name__ == "__main__":     # python -m labkit.course.lessons.hugepages: the measurement, as text
    print(status())
    t0 = time.time()
    r = measure_lookups(progress=None)
    print(lookups_table(r))
    print(*r["notes"], sep="\n")
    print(f"({time.time() - t0:.0f} s)", file=sys.stderr)
