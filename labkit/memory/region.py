"""Big memory regions, on 2 MiB huge pages when the system has them reserved.

A 4 KiB page needs one TLB entry per 4 KiB; a 2 MiB huge page covers 512 times
more memory per entry, so a large table read at random (the 32 MiB DIR-24-8
FIB) misses the TLB far less. Linux hands out huge pages only from a pool the
administrator reserved (``/proc/sys/vm/nr_hugepages``); when it is empty,
``mmap(MAP_HUGETLB)`` fails with ENOMEM and we fall back to 4 KiB pages,
saying once how to reserve them.
"""
import mmap
import sys

import numpy as np

HUGE_PAGE = 2 << 20
MAP_HUGETLB = 0x40000  # <linux/mman.h>; Python's mmap module does not export it
_warned = []


def reserve_hint(n_bytes):
    pages = -(-n_bytes // HUGE_PAGE)
    return (f"huge pages: none free, using 4 KiB pages; to use 2 MiB pages reserve them with "
            f"`echo {max(pages, 64)} | sudo tee /proc/sys/vm/nr_hugepages`")


def alloc_region(n_bytes, huge=True):
    """A zeroed uint8 array of ``n_bytes`` (rounded up to a page), page-aligned.

    Returns ``(array, on_huge_pages, note)``; ``note`` is "" or one line saying
    why huge pages were not used and how to get them.
    """
    if n_bytes <= 0:
        raise ValueError(f"region size must be positive, got {n_bytes}")
    if huge and sys.platform.startswith("linux"):
        size = -(-n_bytes // HUGE_PAGE) * HUGE_PAGE
        try:
            m = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_HUGETLB,
                          prot=mmap.PROT_READ | mmap.PROT_WRITE)
            return np.frombuffer(m, dtype=np.uint8)[:n_bytes], True, ""
        except OSError:
            note = reserve_hint(n_bytes)
    elif huge:
        note = "huge pages: only used on Linux; using 4 KiB pages"
    else:
        note = ""
    size = -(-n_bytes // mmap.PAGESIZE) * mmap.PAGESIZE
    m = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
                  prot=mmap.PROT_READ | mmap.PROT_WRITE)
    # 4 KiB pages means 4 KiB pages: keep transparent huge pages away, even where
    # /sys/kernel/mm/transparent_hugepage/enabled is "always" (else both settings of
    # the knob could run on 2 MiB pages)
    if hasattr(mmap, "MADV_NOHUGEPAGE"):
        m.madvise(mmap.MADV_NOHUGEPAGE)
    return np.frombuffer(m, dtype=np.uint8)[:n_bytes], False, note


def huge_pages_free():
    """Huge pages an mmap(MAP_HUGETLB) can still get: HugePages_Free minus
    HugePages_Rsvd (promised to mappings not yet touched); 0 where unknown."""
    info = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(("HugePages_Free:", "HugePages_Rsvd:")):
                    info[line.split(":")[0]] = int(line.split()[1])
    except OSError:
        pass
    return max(0, info.get("HugePages_Free", 0) - info.get("HugePages_Rsvd", 0))
