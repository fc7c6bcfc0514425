"""Notebook and exercise 06, cache alignment and layout: what a loop costs
depends on how many 64-byte cache lines it touches, not on how many bytes it
uses.

For the notebook, two isolated micro-measurements (the data plane hides both
behind a vector that stays in L1):

- ``measure_field_read``: one 8-byte field read from n records of 64 bytes,
  array of structures (a line per record) against structure of arrays (eight
  records per line), n in L1, in L2 and in DRAM; in order and through a
  shuffled vector of indices (how a VPP node reaches its buffers).
- ``measure_straddle``: the whole of each 64-byte record read, the records
  placed on a line boundary (one line each) or 4, 32 or 60 bytes past it (two
  lines each; at 4 and 60 one 8-byte field is itself split across the two).
- ``measure_vector_field``: the knob's own two layouts (``Knobs(layout=...)``:
  ``PKT_VEC_AOS`` records, or one array per field) under a node that reads one
  field of every packet (it sums the lengths, as a byte counter does), for one
  vector of 256 packets and for many vectors' worth (in L2, and beyond the L3).

For the exercise: ``DESC``, a 64-byte packet descriptor laid out like the
first cache line of DPDK's ``rte_mbuf``; bursts of them (``make_burst``); the
reference results; ``lines_touched``, which runs a node's Python source
(numba's ``py_func``) on a vector that records every element it reads or
writes and returns the cache lines of the vector it touched; the checks of an
aligned slot allocator (``slot_problems``); and the timers.

Timings are TSC cycles (``rdtsc``), the fastest of several repetitions.
``LABKIT_QUICK=1`` makes them short.
"""
import numpy as np
from numba import njit

from labkit.course.exercise import quick
from labkit.memory.intrinsics import rdtsc
from labkit.memory.layouts import CACHE_LINE, LINE_SHIFT, PKT_VEC_AOS, aligned_zeros

# --- the packet vector -------------------------------------------------------------
# labkit's vector fields, in PKT_VEC_AOS's order. An SoA vector here is a tuple of
# four arrays in this order, so a node indexes vec[HASH] (a constant: numba
# compiles a tuple index into a direct reference to that array).
FIELDS = PKT_VEC_AOS.names
HANDLE, LENGTH, NEXT, HASH = range(4)
assert FIELDS == ("handle", "length", "next", "hash")
FIELD_DTYPES = tuple(PKT_VEC_AOS.fields[f][0] for f in FIELDS)

# --- a packet descriptor: DPDK's rte_mbuf, first cache line ----------------------------
# The fields and offsets of rte_mbuf's first 64 bytes (lib/mbuf/rte_mbuf_core.h,
# DPDK 22.11), with labkit's 32-bit buffer handle in the low half of buf_iova. The
# RX fields (rx_descriptor_fields1: packet_type, pkt_len, data_len, vlan_tci, hash)
# sit in this first line with what rx_burst re-arms (data_off, refcnt, nb_segs,
# port): receiving a packet writes one line of its mbuf.
DESC = np.dtype([
    ("buf_addr", "<u8"),        # +0   virtual address of the buffer
    ("handle", "<u4"),          # +8   (buf_iova in DPDK) labkit: the buffer's handle
    ("iova_hi", "<u4"),         # +12
    ("data_off", "<u2"),        # +16  rearm_data: where the frame starts in the buffer
    ("refcnt", "<u2"),          # +18
    ("nb_segs", "<u2"),         # +20
    ("port", "<u2"),            # +22
    ("ol_flags", "<u8"),        # +24  offload flags (checksum ok, RSS hash valid...)
    ("packet_type", "<u4"),     # +32  rx_descriptor_fields1
    ("pkt_len", "<u4"),         # +36  frame length
    ("data_len", "<u2"),        # +40
    ("vlan_tci", "<u2"),        # +42
    ("hash", "<u4"),            # +44  the NIC's RSS hash
    ("fdir_hi", "<u4"),         # +48
    ("vlan_tci_outer", "<u2"),  # +52
    ("buf_len", "<u2"),         # +54
    ("pool", "<u8"),            # +56  the mempool it came from
])
assert DESC.itemsize == CACHE_LINE
assert (DESC.fields["handle"][1], DESC.fields["pkt_len"][1], DESC.fields["hash"][1]) == (8, 36, 44)

RETA_SIZE = 128                 # an RSS indirection table of 128 entries (notebook 13)


def aligned_array(n, dtype):
    """A zeroed array of n items of dtype whose first byte starts a cache line."""
    dtype = np.dtype(dtype)
    return aligned_zeros(max(int(n), 1) * dtype.itemsize).view(dtype)[:int(n)]


def lines_of(offset, nbytes):
    """How many cache lines the bytes [offset, offset + nbytes) touch."""
    if nbytes <= 0:
        return 0
    return ((offset + nbytes - 1) >> LINE_SHIFT) - (offset >> LINE_SHIFT) + 1


def describe(dtype=DESC):
    """One line per field: offset, size, name and which cache line it is in."""
    rows = []
    for name in dtype.names:
        dt, off = dtype.fields[name][:2]
        rows.append(f"  +{off:<3} {dt.itemsize:2} B  {name:<15} line {off >> LINE_SHIFT}")
    return "\n".join(rows)


def make_burst(n, seed=6):
    """n descriptors as a NIC driver fills them on receive (64-byte aligned, one
    per cache line): random handles, frame lengths 60..1514 and RSS hashes."""
    rng = np.random.default_rng(seed)
    d = aligned_array(n, DESC)
    d["handle"] = rng.integers(0, 1 << 22, n)
    d["buf_addr"] = (d["handle"].astype(np.uint64) << np.uint64(LINE_SHIFT)) + np.uint64(0x7f0000000000)
    d["data_off"], d["refcnt"], d["nb_segs"], d["buf_len"] = 128, 1, 1, 2048
    d["port"] = rng.integers(0, 2, n)
    d["pkt_len"] = rng.integers(60, 1515, n)
    d["data_len"] = d["pkt_len"]
    d["packet_type"] = 0x211                        # L2 Ether, L3 IPv4, L4 UDP (RTE_PTYPE_*)
    d["hash"] = rng.integers(0, 1 << 32, n, dtype=np.uint64)
    d["ol_flags"] = 1 << 1                          # RTE_MBUF_F_RX_RSS_HASH
    d["pool"] = 0x7f0000001000
    return d


def make_reta(n_queues=4, size=RETA_SIZE):
    """An indirection table: entry k sends hash buckets k to queue k % n_queues."""
    return (np.arange(size) % n_queues).astype(np.int32)


def reference_vector(descs, n):
    """What the vector must hold after receiving descs[:n]: {field: values}."""
    return {"handle": descs["handle"][:n].astype(np.uint32), "length": descs["pkt_len"][:n].astype(np.uint32),
            "hash": descs["hash"][:n].astype(np.uint32)}


def reference_next(hashes, reta):
    """steer's result: next[i] = reta[hash[i] & (reta.size - 1)]."""
    return reta[np.asarray(hashes, np.int64) & (reta.size - 1)].astype(np.int32)


# --- either layout, from the outside ---------------------------------------------------

def field(vec, name):
    """The values of one field of every packet slot of a vector, whichever its
    layout: a tuple of arrays in FIELDS order (SoA) or an array of records (AoS)."""
    if isinstance(vec, tuple):
        return vec[FIELDS.index(name)]
    return vec[name]


def set_field(vec, name, values):
    field(vec, name)[:len(values)] = values


def soa_problems(vec, batch):
    """Why ``vec`` is not a structure of arrays for ``batch`` packets, as a list
    of sentences (empty: it is one)."""
    if isinstance(vec, np.ndarray) and vec.dtype.names:
        return [f"make_vector returned an array of {vec.dtype.itemsize}-byte records (an array of "
                f"structures): the hashes of 16 packets are spread over {16 * vec.dtype.itemsize // CACHE_LINE} "
                f"cache lines. Return a tuple of {len(FIELDS)} arrays, one per field, in the order {FIELDS}"]
    if not isinstance(vec, tuple) or len(vec) != len(FIELDS):
        return [f"make_vector returned a {type(vec).__name__}: return a tuple of {len(FIELDS)} numpy arrays, "
                f"one per field, in the order {FIELDS}"]
    problems = []
    for name, want, a in zip(FIELDS, FIELD_DTYPES, vec):
        if not isinstance(a, np.ndarray):
            problems.append(f"the {name} field is a {type(a).__name__}, not a numpy array")
            continue
        if a.ndim != 1 or a.dtype != want or a.size < batch:
            problems.append(f"the {name} array is {a.dtype}{list(a.shape)}: make it a 1-D {want} array of "
                            f"(at least) {batch} items, as PKT_VEC_AOS's {name} field is")
        elif not a.flags.c_contiguous:
            problems.append(f"the {name} array has a stride of {a.strides[0]} bytes: a view into records is "
                            f"still an array of structures; give each field an array of its own")
        elif a.ctypes.data % CACHE_LINE:
            problems.append(f"the {name} array starts {a.ctypes.data % CACHE_LINE} bytes into a cache line: "
                            f"allocate it cache-line aligned (lesson.aligned_array), so its first 16 "
                            f"{a.dtype.itemsize}-byte values fill exactly one line")
    if not problems and len({a.ctypes.data for a in vec}) < len(vec):
        problems.append("two fields share one array: give each its own")
    return problems


# --- following a node's memory accesses -------------------------------------------------

class _Recorded(np.ndarray):
    """An array that notes the cache line of every element read or written
    (element indexing; slices and field views stay recorded)."""

    def __array_finalize__(self, obj):
        self.lines = getattr(obj, "lines", None)
        self.elems = getattr(obj, "elems", None)

    def _note(self, idx):
        if self.lines is None:
            return
        if not isinstance(idx, tuple):
            idx = (idx,)
        if len(idx) != self.ndim or not all(isinstance(i, (int, np.integer)) for i in idx):
            return
        off = 0
        for i, n, s in zip(idx, self.shape, self.strides):
            i = int(i)
            off += (i + n if i < 0 else i) * s
        addr = self.__array_interface__["data"][0] + off
        self.elems.add(addr)
        for line in range(addr >> LINE_SHIFT, ((addr + self.itemsize - 1) >> LINE_SHIFT) + 1):
            self.lines.add(line)

    def __getitem__(self, idx):
        self._note(idx)
        return np.ndarray.__getitem__(self, idx)

    def __setitem__(self, idx, value):
        self._note(idx)
        np.ndarray.__setitem__(self, idx, value)


def _recorded(a, lines, elems):
    r = a.view(_Recorded)
    r.lines, r.elems = lines, elems
    return r


def lines_touched(fn, vec, *args):
    """Run ``fn(vec, *args)`` as plain Python (a numba function's ``py_func``)
    on a vector that notes every element of it read or written. Returns
    (lines, addresses): the set of the vector's cache lines it touched (line =
    address >> 6) and the set of element addresses. The vector's memory is the
    real one, so ``fn``'s results are there afterwards."""
    py = getattr(fn, "py_func", fn)
    lines, elems = set(), set()
    if isinstance(vec, tuple):
        rec = tuple(_recorded(a, lines, elems) if isinstance(a, np.ndarray) else a for a in vec)
    else:
        rec = _recorded(vec, lines, elems)
    py(rec, *args)
    return lines, elems


def field_lines(vec, name, n):
    """The cache lines that hold field ``name`` of packets 0..n-1 in ``vec``:
    what a loop over that one field must touch, at least."""
    f = field(vec, name)
    base, stride = f.__array_interface__["data"][0], f.strides[0]
    out = set()
    for i in range(n):
        a = base + i * stride
        out.update(range(a >> LINE_SHIFT, ((a + f.itemsize - 1) >> LINE_SHIFT) + 1))
    return out


# --- an aligned slot allocator -----------------------------------------------------------

def slot_problems(slot_offsets, n, record_bytes):
    """What is wrong with ``slot_offsets(n, record_bytes)``, the byte offsets of
    n records in an arena whose first byte starts a cache line, as sentences
    (empty: nothing). Every record must start on a line boundary, so it spans
    the fewest lines it can (ceil(record_bytes / 64)) and shares none with
    another record; records must not overlap; and no more than that is
    spent: the arena up to the last record's end is at most n such slots."""
    try:
        off = np.asarray(slot_offsets(n, record_bytes))
    except Exception as e:                       # the student's code
        return [f"slot_offsets({n}, {record_bytes}) failed: {type(e).__name__}: {e}"]
    if off.shape != (n,) or (n and not np.issubdtype(off.dtype, np.integer)):
        return [f"slot_offsets({n}, {record_bytes}) returned {off.dtype}{list(off.shape)}: return {n} integer "
                f"byte offsets"]
    if n == 0:
        return []
    off = off.astype(np.int64)
    need = -(-record_bytes // CACHE_LINE)        # lines a record needs at best
    problems = []
    bad = np.flatnonzero(off % CACHE_LINE)
    if bad.size:
        worst = max(bad.tolist(), key=lambda k: (lines_of(int(off[k]), record_bytes), -k))
        span = lines_of(int(off[worst]), record_bytes)
        problems.append(f"{bad.size} of {n} records of {record_bytes} bytes do not start on a cache line; record "
                        f"{worst} starts at byte {off[worst]} ({off[worst] % CACHE_LINE} into a line)"
                        + (f" and spans {span} lines where {need} would do" if span > need else "")
                        + f": round each offset up to a multiple of {CACHE_LINE}")
    if (off < 0).any():
        problems.append("a negative offset: the arena starts at byte 0")
    order = np.sort(off)
    gaps = np.diff(order)
    if (gaps < record_bytes).any():
        k = int(np.flatnonzero(gaps < record_bytes)[0])
        problems.append(f"records at bytes {order[k]} and {order[k + 1]} overlap: {record_bytes}-byte records need "
                        f"at least {record_bytes} bytes between their starts")
    owners = {}
    for o in off.tolist():
        first, last = o >> LINE_SHIFT, (o + record_bytes - 1) >> LINE_SHIFT
        for line in range(first, last + 1):
            owners[line] = owners.get(line, 0) + 1
    shared = sum(1 for c in owners.values() if c > 1)
    if shared:
        problems.append(f"{shared} cache lines hold parts of two records: a core writing one record would "
                        f"take the line from a core reading its neighbour (false sharing, notebook 14)")
    end = int(order[-1]) + record_bytes
    if not problems and end > n * need * CACHE_LINE:
        problems.append(f"{n} records of {record_bytes} bytes end at byte {end}: more than the {n * need * CACHE_LINE} "
                        f"bytes of {n} slots of {need * CACHE_LINE}; do not pad beyond the next line boundary")
    return problems


def mean_lines(offsets, record_bytes):
    """The mean number of cache lines a record of ``record_bytes`` at each of
    ``offsets`` spans (in an arena whose byte 0 starts a line)."""
    return float(np.mean([lines_of(int(o), record_bytes) for o in np.asarray(offsets)])) if len(offsets) else 0.0


# --- timers ---------------------------------------------------------------------------
# Every timer runs its loop in short timed chunks (about 10 to 100 thousand TSC cycles
# each) and takes the median chunk: on a machine shared with other work a chunk that
# lost the CPU to another thread is an outlier, not part of the number. The loops run
# over slices (range(seg.size)): written as range(lo, lo + span) LLVM neither
# vectorized them nor kept the indexed loads in flight (6x slower in L1 here).

def _chunks():
    return 41 if quick() else 201


@njit(nogil=True)
def _drive_pipeline(rx_to_vector, steer, descs, vec, reta, batch, per, times):
    """Bursts of `batch` descriptors, in order around the ring: rx into the vector,
    then steer; times[c] = TSC cycles of `per` bursts."""
    nb = descs.size // batch
    b = 0
    for c in range(times.size):
        t0 = rdtsc()
        for _ in range(per):
            s = b * batch
            rx_to_vector(descs[s:s + batch], batch, vec)
            steer(vec, batch, reta)
            b = b + 1 if b + 1 < nb else 0
        times[c] = rdtsc() - t0


def time_pipeline(make_vector, rx_to_vector, steer, n_descs=1 << 16, batch=256, seed=6):
    """TSC cycles per packet of ``rx_to_vector`` then ``steer`` over bursts of
    ``batch`` from a ring of ``n_descs`` 64-byte descriptors (64 Ki = 4 MiB by
    default: more than L2), with the vector from ``make_vector(batch)``: the
    median of many timed groups of 16 bursts."""
    n_descs -= n_descs % batch
    descs, reta = make_burst(n_descs, seed), make_reta()
    vec = make_vector(batch)
    per = 16
    warm = np.zeros(max(1, n_descs // (batch * per)), np.int64)
    _drive_pipeline(rx_to_vector, steer, descs, vec, reta, batch, per, warm)     # compile; one lap
    times = np.zeros(_chunks(), np.int64)
    _drive_pipeline(rx_to_vector, steer, descs, vec, reta, batch, per, times)
    return float(np.median(times)) / (per * batch)


@njit(nogil=True, cache=True)
def _read_records(words, starts, n_words, chunk, times):
    """Sum the n_words 8-byte words of each record, record k's first word at
    words[starts[k]] (the starts already in visiting order); times[c] = TSC
    cycles of starts[c * chunk:(c + 1) * chunk]."""
    s = np.uint64(0)
    for c in range(times.size):
        st = starts[c * chunk:(c + 1) * chunk]
        t0 = rdtsc()
        for k in range(st.size):
            b = st[k]
            for w in range(n_words):
                s += words[b + w]
        times[c] = rdtsc() - t0
    return s


def _visits(n, order, chunk, n_chunks, seed):
    """The record indices to visit: n_chunks * chunk of them, passes over 0..n-1,
    each pass in random order (a new permutation) or in order."""
    rng = np.random.default_rng(seed)
    total = chunk * n_chunks
    passes = -(-total // n)
    if order == "random":
        seq = np.concatenate([rng.permutation(n) for _ in range(passes)])
    else:
        seq = np.tile(np.arange(n), passes)
    return seq[:total].astype(np.int64)


def time_slots(offsets, record_bytes, order="random", seed=6):
    """TSC cycles per record to read every 8-byte word of records of
    ``record_bytes`` at byte ``offsets`` of a cache-line aligned arena, visited
    in random order (as a data plane meets its buffers) or in order; the
    median of many timed chunks of 2048 records. Offsets and record_bytes must
    be multiples of 8 (the records are read as 8-byte words)."""
    offsets = np.asarray(offsets, np.int64)
    if record_bytes % 8 or (offsets % 8).any():
        raise ValueError("time_slots reads 8-byte words: use offsets and a record size that are multiples of 8")
    n = offsets.size
    words = aligned_zeros(int(offsets.max()) + record_bytes + CACHE_LINE).view(np.uint64)
    words[:] = np.arange(words.size, dtype=np.uint64)
    chunk = 2048
    # a first lap over all records (compiles, and puts what fits in the caches), then the timed chunks
    starts = offsets >> 3
    _read_records(words, starts, record_bytes >> 3, n, np.zeros(1, np.int64))
    times = np.zeros(_chunks(), np.int64)
    _read_records(words, starts[_visits(n, order, chunk, times.size, seed)], record_bytes >> 3, chunk, times)
    return float(np.median(times)) / chunk


# --- the notebook's micro-measurements -------------------------------------------------

@njit(nogil=True, cache=True)
def _field_aos(recs, word, span, passes, times):
    """Sum recs[i, word] (a field of 64-byte records) over i in a range of `span`
    records, `passes` times per chunk; chunk c takes the next range."""
    n = recs.shape[0]
    s = np.uint64(0)
    lo = 0
    for c in range(times.size):
        seg = recs[lo:lo + span, word]         # a strided view: 64 bytes from one to the next
        t0 = rdtsc()
        for _ in range(passes):
            for i in range(seg.size):
                s += seg[i]
        times[c] = rdtsc() - t0
        lo = lo + span if lo + 2 * span <= n else 0
    return s


@njit(nogil=True, cache=True)
def _field_soa(cols, word, span, passes, times):
    """The same over cols[word, i]: the field's own array."""
    n = cols.shape[1]
    s = np.uint64(0)
    lo = 0
    for c in range(times.size):
        seg = cols[word, lo:lo + span]         # contiguous: 8 bytes from one to the next
        t0 = rdtsc()
        for _ in range(passes):
            for i in range(seg.size):
                s += seg[i]
        times[c] = rdtsc() - t0
        lo = lo + span if lo + 2 * span <= n else 0
    return s


@njit(nogil=True, cache=True)
def _field_aos_idx(recs, order, word, chunk, times):
    """Sum recs[order[k], word]: through a vector of indices."""
    s = np.uint64(0)
    for c in range(times.size):
        o = order[c * chunk:(c + 1) * chunk]
        t0 = rdtsc()
        for k in range(o.size):
            s += recs[o[k], word]
        times[c] = rdtsc() - t0
    return s


@njit(nogil=True, cache=True)
def _field_soa_idx(cols, order, word, chunk, times):
    s = np.uint64(0)
    for c in range(times.size):
        o = order[c * chunk:(c + 1) * chunk]
        t0 = rdtsc()
        for k in range(o.size):
            s += cols[word, o[k]]
        times[c] = rdtsc() - t0
    return s


# n records of 64 bytes: 16 KiB (in L1: 48 KiB per core on the 2-vCPU EPYC VM this was
# written on), 1 MiB (in L2: 1 MiB per core there), 64 MiB (in DRAM: twice its 32 MiB L3)
FIELD_SIZES = (256, 1 << 14, 1 << 20)
CHUNK = 4096                     # records per timed chunk


def measure_field_read(sizes=FIELD_SIZES, word=5, seed=6):
    """TSC cycles per record to sum one 8-byte field (word ``word`` of 8) of n
    records of 64 bytes, laid out as an array of structures (records[i, w]: a
    line per record) or as a structure of arrays (columns[w, i]: 8 records per
    line); each in index order and through a shuffled vector of indices (as a
    VPP node reaches its buffers). Medians of timed chunks of 4096 records.
    Returns a list of dicts (n, bytes, aos, soa, aos_idx, soa_idx)."""
    rows = []
    for n in sizes:
        aos = aligned_zeros(n * 64).view(np.uint64).reshape(n, 8)
        aos[:] = np.arange(n * 8, dtype=np.uint64).reshape(n, 8)
        soa = aligned_zeros(n * 64).view(np.uint64).reshape(8, n)
        soa[:] = aos.T
        span, passes = min(n, CHUNK), max(1, CHUNK // n)
        order = _visits(n, "random", CHUNK, _chunks(), seed)
        row = {"n": n, "bytes": n * 64}
        runs = (("aos", lambda t: _field_aos(aos, word, span, passes, t)),
                ("soa", lambda t: _field_soa(soa, word, span, passes, t)),
                ("aos_idx", lambda t: _field_aos_idx(aos, order, word, CHUNK, t)),
                ("soa_idx", lambda t: _field_soa_idx(soa, order, word, CHUNK, t)))
        for key, run in runs:
            run(np.zeros(min(max(1, n // CHUNK), _chunks()), np.int64))   # compile; warm what fits
            times = np.zeros(_chunks(), np.int64)
            run(times)
            row[key] = float(np.median(times)) / CHUNK
        rows.append(row)
    return rows


@njit(nogil=True, cache=True)
def _lengths_aos(v, span, passes, times):
    """Sum v[i]['length'] over PKT_VEC_AOS records (16 bytes each: 4 packets per line),
    a range of `span` packets `passes` times per chunk; chunk c takes the next range."""
    n = v.size
    s = np.uint64(0)
    lo = 0
    for c in range(times.size):
        seg = v[lo:lo + span]
        t0 = rdtsc()
        for _ in range(passes):
            for i in range(seg.size):
                s += seg[i]['length']
        times[c] = rdtsc() - t0
        lo = lo + span if lo + 2 * span <= n else 0
    return s


@njit(nogil=True, cache=True)
def _lengths_soa(ls, span, passes, times):
    """The same over the vector's array of lengths (4 bytes each: 16 packets per line)."""
    n = ls.size
    s = np.uint64(0)
    lo = 0
    for c in range(times.size):
        seg = ls[lo:lo + span]
        t0 = rdtsc()
        for _ in range(passes):
            for i in range(seg.size):
                s += seg[i]
        times[c] = rdtsc() - t0
        lo = lo + span if lo + 2 * span <= n else 0
    return s


# packets: one vector of 256 (4 KiB of records: L1), 64 vectors (256 KiB: L2), 16,384
# vectors (64 MiB of records: twice the 32 MiB L3 of the VM this was written on)
VECTOR_SIZES = (256, 1 << 14, 1 << 22)
QUICK_VECTOR_SIZES = (256, 1 << 14, 1 << 20)


def measure_vector_field(sizes=None, seed=6):
    """TSC cycles per packet of a node that reads one field of every packet (it sums
    the lengths, as a byte counter does), on the packet vector in the two layouts
    of ``Knobs(layout=...)``: ``PKT_VEC_AOS`` records ("aos", 16 bytes per packet,
    4 packets' lengths per cache line) or one array per field ("soa", 16 lengths
    per line); n packets in index order, as a node walks its vectors. Medians of
    timed chunks of 4096 packets. Returns a list of dicts (n, aos_bytes,
    soa_bytes: the bytes the node's field spans in each layout, aos, soa)."""
    if sizes is None:
        sizes = QUICK_VECTOR_SIZES if quick() else VECTOR_SIZES
    rng = np.random.default_rng(seed)
    rows = []
    for n in sizes:
        lengths = rng.integers(60, 1515, n).astype(np.uint32)
        aos = aligned_array(n, PKT_VEC_AOS)
        aos["length"] = lengths
        soa = tuple(aligned_array(n, dt) for dt in FIELD_DTYPES)
        soa[LENGTH][:] = lengths
        span, passes = min(n, CHUNK), max(1, CHUNK // n)
        # a vector that fits the caches is walked again and again (warm after the first chunk);
        # many vectors' worth is walked once, start to end, as packets pass through a node once
        n_chunks = max(_chunks(), n // CHUNK)
        row = {"n": n, "aos_bytes": n * PKT_VEC_AOS.itemsize, "soa_bytes": n * soa[LENGTH].itemsize}
        for key, run, compile_on in (
                ("aos", lambda t: _lengths_aos(aos, span, passes, t), lambda t: _lengths_aos(aos[:1], 1, 1, t)),
                ("soa", lambda t: _lengths_soa(soa[LENGTH], span, passes, t),
                 lambda t: _lengths_soa(soa[LENGTH][:1], 1, 1, t))):
            compile_on(np.zeros(1, np.int64))             # compiles, touching one packet only
            times = np.zeros(n_chunks, np.int64)
            run(times)
            row[key] = float(np.median(times)) / CHUNK
        rows.append(row)
    return rows


def vector_field_table(rows):
    """measure_vector_field's rows as text."""
    out = [f"{'packets':>9} {'records':>8} {'lengths':>8}   {'AoS':>6} {'SoA':>6} {'AoS/SoA':>7}   "
           f"(TSC cycles per packet)"]
    for r in rows:
        out.append(f"{r['n']:9,} {_size(r['aos_bytes']):>8} {_size(r['soa_bytes']):>8}   {r['aos']:6.2f} "
                   f"{r['soa']:6.2f} {r['aos'] / r['soa']:7.1f}")
    return "\n".join(out)


SLOT_STRIDE = 3 * CACHE_LINE     # records 192 bytes apart: an odd number of lines (see mempool.slot_lines)
STRADDLE_SIZES = (128, 1 << 12, 1 << 18)    # 24 KiB of slots (L1), 768 KiB (L2), 48 MiB (DRAM)
STRADDLE_OFFSETS = (0, 4, 32, 60)


@njit(nogil=True)
def _read_slots(recs, order, chunk, times):
    """Sum every word of the records recs[order[k]] (an (n, 8) uint64 view of
    the slots, possibly unaligned), timed in chunks."""
    s = np.uint64(0)
    for c in range(times.size):
        o = order[c * chunk:(c + 1) * chunk]
        t0 = rdtsc()
        for k in range(o.size):
            i = o[k]
            for w in range(8):
                s += recs[i, w]
        times[c] = rdtsc() - t0
    return s


def measure_straddle(sizes=STRADDLE_SIZES, offsets=STRADDLE_OFFSETS, seed=6):
    """TSC cycles per record to read all eight 8-byte words of n records of 64
    bytes, one per 192-byte slot, each at byte ``offset`` of its slot: 0 (the
    record is one cache line), 4, 32 or 60 (two lines, with 60, 32 or 4 of
    its bytes in the first; at 4 and 60 one 8-byte word is split across them). Records visited in random order and in order;
    medians of timed chunks of 2048 records. Returns a list of dicts (n,
    bytes, order, and one key per offset)."""
    rows = []
    chunk = 2048
    for n in sizes:
        arena = aligned_zeros(n * SLOT_STRIDE + CACHE_LINE)
        arena[:] = np.arange(arena.size) & 0xFF
        views = {o: np.ndarray((n, 8), np.uint64, buffer=arena, offset=o, strides=(SLOT_STRIDE, 8))
                 for o in offsets}
        for order_name in ("random", "in order"):
            visits = _visits(n, order_name, chunk, _chunks(), seed)
            row = {"n": n, "bytes": n * SLOT_STRIDE, "order": order_name}
            for o in offsets:
                _read_slots(views[o], _visits(n, "in order", n, 1, seed), n, np.zeros(1, np.int64))
                times = np.zeros(_chunks(), np.int64)
                _read_slots(views[o], visits, chunk, times)
                row[o] = float(np.median(times)) / chunk
            rows.append(row)
    return rows


def field_table(rows):
    """measure_field_read's rows as text."""
    out = [f"{'records':>9} {'bytes':>7}   {'AoS':>6} {'SoA':>6} {'AoS/SoA':>7}   "
           f"{'AoS idx':>7} {'SoA idx':>7} {'ratio':>6}   (TSC cycles per record)"]
    for r in rows:
        out.append(f"{r['n']:9,} {_size(r['bytes']):>7}   {r['aos']:6.2f} {r['soa']:6.2f} {r['aos'] / r['soa']:7.1f}   "
                   f"{r['aos_idx']:7.2f} {r['soa_idx']:7.2f} {r['aos_idx'] / r['soa_idx']:6.1f}")
    return "\n".join(out)


def straddle_table(rows, offsets=STRADDLE_OFFSETS):
    """measure_straddle's rows as text."""
    head = "".join(f" {'at +' + str(o):>7}" for o in offsets)
    out = [f"{'records':>9} {'slots':>7} {'order':>9}  {head}   (TSC cycles per 64-byte record)"]
    for r in rows:
        out.append(f"{r['n']:9,} {_size(r['bytes']):>7} {r['order']:>9}  " + "".join(f" {r[o]:7.2f}" for o in offsets))
    return "\n".join(out)


def _size(b):
    for div, unit in ((1 << 20, "MiB"), (1 << 10, "KiB")):
        if b >= div:
            return f"{b / div:g} {unit}"
    return f"{b} B"


def node_loop_source(layout, graph="l2fwd"):
    """The loop labkit generates for the first node of ``graph`` with this
    layout (single loop, no prefetch: the shortest form), as text."""
    from labkit import Knobs
    from labkit.graph.compile import generate, resolve
    g = resolve(graph)
    src = generate(g, Knobs(layout=layout, unroll=1, prefetch=False))
    start = src.index(f"def {g.nodes[0].name.replace('-', '_')}_node(")
    return src[start:src.index("\n\n", start)].rstrip()
