"""Single-producer/single-consumer descriptor rings.

The shape of a NIC's RX/TX queue and of DPDK's ``rte_ring`` in SP/SC mode:
an array of ``size`` descriptors (a power of two, so a cursor wraps with
``& mask`` instead of a division), a producer cursor and a consumer cursor
that only grow (uint64 never wraps in practice), each on its own cache line so
the producer's core and the consumer's core do not steal the line from each
other at every update (false sharing).

Ordering: the producer writes descriptors, then publishes its cursor with a
*release* store; the consumer reads the producer cursor with an *acquire*
load before it reads the descriptors (and symmetrically for slots given back).
On x86 these compile to plain moves, but they also stop LLVM from caching a
cursor in a register across a polling loop.

``cur`` layout (uint64, 16 entries = two cache lines): ``cur[PROD]`` at byte 0,
``cur[CONS]`` at byte 64.
"""
import numpy as np
from numba import njit

from .intrinsics import load_acquire, store_release
from .layouts import CACHE_LINE, NIC_DESC, aligned_zeros

PROD = 0
CONS = CACHE_LINE // 8  # 8: the next cache line


class Ring:
    """Descriptors plus cursors; ``desc`` is a NIC_DESC structured array."""

    def __init__(self, size=1024):
        if not isinstance(size, (int, np.integer)) or size < 2 or size & (size - 1):
            raise ValueError(f"ring size {size!r} must be a power of two >= 2 "
                             "(the cursor wraps with a mask)")
        self.size = int(size)
        self.desc = aligned_zeros(self.size * NIC_DESC.itemsize).view(NIC_DESC)
        self.cur = aligned_zeros(2 * CACHE_LINE).view(np.uint64)

    def __len__(self):
        return int(self.cur[PROD] - self.cur[CONS])

    @property
    def free(self):
        return self.size - len(self)


@njit(nogil=True, cache=True)
def ring_count(cur):
    return np.int64(load_acquire(cur, PROD) - load_acquire(cur, CONS))


@njit(nogil=True, cache=True)
def ring_enqueue(desc, cur, handles, lengths, hashes, n):
    """Producer: post up to n descriptors; returns how many fit."""
    mask = desc.size - 1
    prod = cur[PROD]                      # only this side writes it
    room = desc.size - np.int64(prod - load_acquire(cur, CONS))
    k = min(n, room)
    for i in range(k):
        d = desc[(prod + i) & mask]
        d["handle"] = handles[i]
        d["length"] = lengths[i]
        d["hash"] = hashes[i]
    store_release(cur, PROD, prod + k)
    return k


@njit(nogil=True, cache=True)
def ring_dequeue(desc, cur, handles, lengths, hashes, n):
    """Consumer: take up to n descriptors; returns how many there were."""
    mask = desc.size - 1
    cons = cur[CONS]                      # only this side writes it
    avail = np.int64(load_acquire(cur, PROD) - cons)
    k = min(n, avail)
    for i in range(k):
        d = desc[(cons + i) & mask]
        handles[i] = d["handle"]
        lengths[i] = d["length"]
        hashes[i] = d["hash"]
    store_release(cur, CONS, cons + k)
    return k


@njit(nogil=True, cache=True)
def ring_dequeue_aos(desc, cur, vec, n):
    """Consumer, into an array-of-structures packet vector (Knobs.layout="aos")."""
    mask = desc.size - 1
    cons = cur[CONS]
    avail = np.int64(load_acquire(cur, PROD) - cons)
    k = min(n, avail)
    for i in range(k):
        d = desc[(cons + i) & mask]
        v = vec[i]
        v["handle"] = d["handle"]
        v["length"] = d["length"]
        v["hash"] = d["hash"]
    store_release(cur, CONS, cons + k)
    return k
