"""Network-order (big-endian) field access on a uint8 array.

Packet bytes live in one uint8 arena; these helpers read and write the
multi-byte fields of headers at a byte offset. They are ``@njit`` and tiny, so
LLVM inlines them into each node's loop; called from plain Python (the JIT-off
twin) they are ordinary functions over numpy scalars.
"""
from numba import njit


@njit(inline="always", cache=True)
def rd16(a, o):
    return (int(a[o]) << 8) | int(a[o + 1])


@njit(inline="always", cache=True)
def wr16(a, o, v):
    a[o] = (v >> 8) & 0xFF
    a[o + 1] = v & 0xFF


@njit(inline="always", cache=True)
def rd32(a, o):
    return (int(a[o]) << 24) | (int(a[o + 1]) << 16) | (int(a[o + 2]) << 8) | int(a[o + 3])


@njit(inline="always", cache=True)
def wr32(a, o, v):
    a[o] = (v >> 24) & 0xFF
    a[o + 1] = (v >> 16) & 0xFF
    a[o + 2] = (v >> 8) & 0xFF
    a[o + 3] = v & 0xFF


@njit(inline="always", cache=True)
def rd32le(a, o):
    """Little-endian (host order on x86): buffer metadata, not wire fields."""
    return int(a[o]) | (int(a[o + 1]) << 8) | (int(a[o + 2]) << 16) | (int(a[o + 3]) << 24)


@njit(inline="always", cache=True)
def wr32le(a, o, v):
    a[o] = v & 0xFF
    a[o + 1] = (v >> 8) & 0xFF
    a[o + 2] = (v >> 16) & 0xFF
    a[o + 3] = (v >> 24) & 0xFF
