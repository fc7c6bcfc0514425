"""labkit.course.lessons.hugepages: the page arithmetic, what the kernel says about a
mapping, the placements (4 KiB, THP, hugetlbfs) and the lookups that measure
them. These run with or without reserved huge pages (hold_huge_pages makes
"none available" here too); no test asserts a time."""
import mmap

import numpy as np
import pytest

from labkit.course.lessons import hugepages as hp
from labkit.course.lessons.hugepages import HUGE_PAGE, SMALL_PAGE, MiB

linux = pytest.mark.skipif(hp.mapping(np.zeros(1)) is None, reason="needs /proc/self/smaps (Linux)")


@pytest.mark.parametrize("page", [SMALL_PAGE, HUGE_PAGE])
def test_pages_for_counts_a_partly_used_last_page(page):
    assert [hp.pages_for(n, page) for n in (0, 1, page - 1, page, page + 1, 3 * page, 3 * page + 1)] == \
        [0, 1, 1, 1, 2, 3, 4]
    assert hp.pages_for(2 << 24, SMALL_PAGE) == 8192 and hp.pages_for(2 << 24, HUGE_PAGE) == 16


def test_tlb_reach():
    assert hp.tlb_reach(2048, SMALL_PAGE) == 8 * MiB
    assert hp.tlb_reach(2048, HUGE_PAGE) == 4 << 30
    assert hp.tlb_reach(0, HUGE_PAGE) == 0


def test_thp_mode_is_one_of_the_kernels_words():
    assert hp.thp_mode() in ("always", "madvise", "never", None)
    assert "available" in hp.status()


@linux
def test_resident_bytes_sees_only_touched_pages():
    mm = mmap.mmap(-1, 64 * SMALL_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    a = np.frombuffer(mm, np.uint8)
    assert hp.resident_bytes(a) == 0
    a[:10 * SMALL_PAGE:SMALL_PAGE] = 1
    a[-1] = 1
    assert hp.resident_bytes(a) == 11 * SMALL_PAGE
    assert hp.resident_bytes(a[5:], 9 * SMALL_PAGE) == 10 * SMALL_PAGE    # from the page holding a[5]
    del a
    mm.close()


@linux
@pytest.mark.parametrize("mode", ["4k", "thp"])
def test_small_page_modes_are_aligned_rounded_prefaulted(mode):
    n = 5 * MiB + 123
    t = hp.alloc_mode(n, mode)
    u8, page, note = t
    assert (u8.size, page, note) == (n, SMALL_PAGE, "")
    assert u8.ctypes.data % HUGE_PAGE == 0 and t.map_bytes == 3 * HUGE_PAGE
    m = hp.mapping(u8)
    assert m["start"] <= u8.ctypes.data < m["end"] and m["KernelPageSize"] == SMALL_PAGE
    assert hp.resident_bytes(u8, t.map_bytes) == t.map_bytes
    if mode == "4k":
        assert m.get("AnonHugePages", 0) == 0          # MADV_NOHUGEPAGE: even THP "always" stays away
    u8[:] = 3
    assert int(u8.sum()) == 3 * n
    t.close()


@linux
def test_hugetlb_mode_gives_2mib_pages_or_fails():
    n = 3 * MiB + 1
    if hp.huge_pages_available() >= 2 + 8:
        t = hp.alloc_mode(n, "hugetlb")
        m = hp.mapping(t.u8)
        assert m["KernelPageSize"] == HUGE_PAGE and t.page_bytes == HUGE_PAGE and t.map_bytes == 2 * HUGE_PAGE
        assert t.u8.ctypes.data % HUGE_PAGE == 0 and t.u8.size == n
        assert hp.resident_bytes(t.u8, t.map_bytes) == t.map_bytes
        t.close()
    with hp.hold_huge_pages():
        with pytest.raises(OSError):
            hp.alloc_mode(n, "hugetlb")


@linux
def test_hold_huge_pages_takes_every_available_page_and_gives_them_back():
    before = hp.huge_pages_available()
    with hp.hold_huge_pages() as held:
        assert hp.huge_pages_available() <= 8           # others may give some back meanwhile
        assert 0 <= held <= before + 8
    assert hp.huge_pages_available() >= min(before, held) - 8


@linux
def test_alloc_table_falls_back_and_says_how_to_reserve():
    with hp.hold_huge_pages():
        t = hp.alloc_table(3 * MiB)
    assert t.page_bytes == SMALL_PAGE and hp.mapping(t.u8)["KernelPageSize"] == SMALL_PAGE
    assert "nr_hugepages" in t.note and "4 KiB" in t.note
    assert t.u8.ctypes.data % HUGE_PAGE == 0 and hp.resident_bytes(t.u8) == 3 * MiB
    t.close()
    t = hp.alloc_table(3 * MiB)
    assert (t.page_bytes == HUGE_PAGE) == (t.note == "")
    assert hp.mapping(t.u8)["KernelPageSize"] == t.page_bytes
    t.close()


def test_bad_mode_and_size():
    with pytest.raises(ValueError, match="positive"):
        hp.alloc_mode(0, "4k")
    with pytest.raises(ValueError, match="use one of"):
        hp.alloc_mode(10, "1g")


@pytest.mark.parametrize("n", [1, 2, 3, 1000])
def test_make_chase_writes_one_cycle_through_every_entry(n):
    u32 = np.zeros(16 * n, np.uint32)
    start = hp.make_chase(u32, n, seed=n)
    nxt = u32[::16]
    seen, i = [], start
    for _ in range(n):
        seen.append(i)
        i = int(nxt[i])
    assert i == start and sorted(seen) == list(range(n))
    assert not u32.reshape(n, 16)[:, 1:].any()           # only the first word of each line
    assert int(hp.chase(u32, start, n)) == start
    assert int(hp.chase(u32, start, 1)) == int(nxt[start])


def test_gather_sums_the_entries_it_reads():
    u32 = np.arange(16 * 100, dtype=np.uint32)
    idx = np.array([0, 5, 99, 5], np.int64)
    assert int(hp.gather(u32, idx, 4)) == int(u32[idx * 16].sum())
    assert int(hp.gather(u32, idx, 0)) == 0


@linux
def test_measure_lookups_reports_every_mode_and_what_the_kernel_gave(monkeypatch):
    monkeypatch.setenv("LABKIT_QUICK", "1")
    with hp.hold_huge_pages():
        r = hp.measure_lookups(sizes=[1 * MiB, 2 * MiB], steps=2000, rounds=1, progress=None)
    assert r["sizes"] == [MiB, 2 * MiB] and set(r["ns"]) == {(k, m) for k in ("chase", "random") for m in hp.MODES}
    for (kind, mode), v in r["ns"].items():
        assert len(v) == 2
        assert all(x is None for x in v) if mode == "hugetlb" else all(x > 0 for x in v)
    assert r["pages"]["4k"] == ["4 KiB", "4 KiB"] and r["pages"]["hugetlb"] == ["-", "-"]
    assert r["notes"] and "nr_hugepages" in r["notes"][0]
    text = hp.lookups_table(r)
    assert "n/a" in text and text.count("MiB  ") == 2
