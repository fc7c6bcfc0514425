"""labkit.course.lessons.layout: the support code of notebook and exercise 06 (cache
alignment and layout). Its references are right, its inputs are what they
claim, and its checks (soa_problems, lines_touched, slot_problems) accept a
correct answer and reject the starter's. No test asserts a time."""
import math

import numpy as np
import pytest
from numba import njit

from labkit.course import exercise as ex
from labkit.course.lessons import layout as L
from labkit.course.lessons.layout import HANDLE, HASH, LENGTH, NEXT
from labkit.memory.layouts import CACHE_LINE, PKT_VEC_AOS


@pytest.fixture(autouse=True)
def _quick(monkeypatch):
    monkeypatch.setenv("LABKIT_QUICK", "1")


# ---- the exercise's answer and its starter, as the notebooks have them ----------------

def soa_vector(batch):
    return tuple(L.aligned_array(batch, dt) for dt in L.FIELD_DTYPES)


@njit(nogil=True)
def soa_rx(descs, n, vec):
    hs, ls, xs = vec[HANDLE], vec[LENGTH], vec[HASH]
    for i in range(n):
        hs[i] = descs[i]["handle"]
        ls[i] = descs[i]["pkt_len"]
        xs[i] = descs[i]["hash"]


@njit(nogil=True)
def soa_steer(vec, n, reta):
    mask = reta.size - 1
    xs, nxt = vec[HASH], vec[NEXT]
    for i in range(n):
        nxt[i] = reta[xs[i] & mask]


def aos_vector(batch):
    return L.aligned_array(batch, PKT_VEC_AOS)


@njit(nogil=True)
def aos_rx(descs, n, vec):
    for i in range(n):
        vec[i]["handle"] = descs[i]["handle"]
        vec[i]["length"] = descs[i]["pkt_len"]
        vec[i]["hash"] = descs[i]["hash"]


@njit(nogil=True)
def aos_steer(vec, n, reta):
    mask = reta.size - 1
    for i in range(n):
        vec[i]["next"] = reta[vec[i]["hash"] & mask]


def aligned_slots(n, record_bytes):
    return np.arange(n, dtype=np.int64) * (-(-record_bytes // CACHE_LINE) * CACHE_LINE)


def packed_slots(n, record_bytes):
    return np.arange(n, dtype=np.int64) * record_bytes


# ---- layouts and inputs ---------------------------------------------------------------

def test_desc_is_rte_mbufs_first_line():
    assert L.DESC.itemsize == CACHE_LINE
    want = {"buf_addr": 0, "data_off": 16, "refcnt": 18, "nb_segs": 20, "port": 22, "ol_flags": 24,
            "packet_type": 32, "pkt_len": 36, "data_len": 40, "vlan_tci": 42, "hash": 44, "vlan_tci_outer": 52,
            "buf_len": 54, "pool": 56}
    assert {k: L.DESC.fields[k][1] for k in want} == want
    text = L.describe(L.DESC)
    assert len(text.splitlines()) == len(L.DESC.names) and "+44   4 B  hash" in text
    assert L.FIELDS == PKT_VEC_AOS.names and [PKT_VEC_AOS.fields[f][0] for f in L.FIELDS] == list(L.FIELD_DTYPES)


@pytest.mark.parametrize("n", [0, 1, 3, 17, 256])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint32, PKT_VEC_AOS, L.DESC])
def test_aligned_array_starts_a_line(n, dtype):
    for _ in range(5):
        a = L.aligned_array(n, dtype)
        assert a.shape == (n,) and a.dtype == np.dtype(dtype) and a.ctypes.data % CACHE_LINE == 0
        assert not a.view(np.uint8).any()


@pytest.mark.parametrize("offset, nbytes, lines", [
    (0, 0, 0), (0, 1, 1), (0, 64, 1), (0, 65, 2), (63, 1, 1), (63, 2, 2), (40, 40, 2), (64, 64, 1),
    (32, 64, 2), (1, 128, 3), (128, 128, 2)])
def test_lines_of(offset, nbytes, lines):
    assert L.lines_of(offset, nbytes) == lines
    # the same, counted byte by byte
    assert len({b // 64 for b in range(offset, offset + nbytes)}) == lines


def test_make_burst_is_what_a_driver_fills():
    a, b = L.make_burst(300, seed=4), L.make_burst(300, seed=4)
    assert a.ctypes.data % CACHE_LINE == 0 and a.dtype == L.DESC
    assert a.tobytes() == b.tobytes() and a.tobytes() != L.make_burst(300, seed=5).tobytes()
    assert ((a["pkt_len"] >= 60) & (a["pkt_len"] <= 1514)).all() and (a["data_len"] == a["pkt_len"]).all()
    assert (a["refcnt"] == 1).all() and (a["buf_len"] == 2048).all()
    assert len(np.unique(a["hash"])) > 290 and a["hash"].max() > 2**31
    assert (a["buf_addr"] >> np.uint64(6) & np.uint64(0xFFFFFFFF) == a["handle"]).all()
    assert L.make_burst(0).size == 0


def test_reference_vector_and_next():
    d = L.make_burst(50)
    ref = L.reference_vector(d, 20)
    assert set(ref) == {"handle", "length", "hash"} and all(v.size == 20 for v in ref.values())
    assert ref["length"].tolist() == d["pkt_len"][:20].tolist() and ref["hash"].dtype == np.uint32
    reta = L.make_reta(3)
    assert reta.size == L.RETA_SIZE and reta.tolist()[:5] == [0, 1, 2, 0, 1]
    nxt = L.reference_next(ref["hash"], reta)
    assert nxt.tolist() == [int(reta[int(h) % 128]) for h in ref["hash"]]


# ---- soa_problems -----------------------------------------------------------------------

def test_soa_problems_accepts_arrays_and_rejects_records():
    assert L.soa_problems(soa_vector(256), 256) == []
    p = L.soa_problems(aos_vector(256), 256)
    assert len(p) == 1 and "array of 16-byte records" in p[0] and "4 cache lines" in p[0]
    assert "tuple" in L.soa_problems([np.zeros(4)] * 4, 256)[0]
    assert "tuple" in L.soa_problems(soa_vector(256)[:3], 256)[0]


def test_soa_problems_says_what_is_wrong_with_an_array():
    v = list(soa_vector(256))
    v[HASH] = L.aligned_array(256, np.uint64)
    assert "1-D uint32" in " ".join(L.soa_problems(tuple(v), 256))
    v = list(soa_vector(256))
    v[LENGTH] = L.aligned_array(100, np.uint32)
    assert "length" in " ".join(L.soa_problems(tuple(v), 256))
    d = L.aligned_array(256, PKT_VEC_AOS)
    v = list(soa_vector(256))
    v[HASH] = d["hash"]                                  # a field view of records: still AoS
    assert "stride of 16 bytes" in " ".join(L.soa_problems(tuple(v), 256))
    v = list(soa_vector(256))
    v[NEXT] = L.aligned_array(257, np.int32)[1:]         # 4 bytes into a line
    assert "4 bytes into a cache line" in " ".join(L.soa_problems(tuple(v), 256))
    v = list(soa_vector(256))
    v[LENGTH] = v[HANDLE]
    assert "share one array" in " ".join(L.soa_problems(tuple(v), 256))


def test_field_and_set_field_read_either_layout():
    for vec in (soa_vector(8), aos_vector(8)):
        L.set_field(vec, "hash", np.arange(5, dtype=np.uint32))
        assert L.field(vec, "hash").tolist() == [0, 1, 2, 3, 4, 0, 0, 0]


# ---- lines_touched, field_lines --------------------------------------------------------------

@pytest.mark.parametrize("n", [0, 1, 15, 16, 17, 100, 256])
def test_lines_touched_counts_the_lines_a_node_uses(n):
    reta = L.make_reta()
    d = L.make_burst(n, seed=n)
    want = L.reference_next(d["hash"][:n], reta)
    soa, aos = soa_vector(256), aos_vector(256)
    for vec in (soa, aos):
        for name, vals in L.reference_vector(d, n).items():
            L.set_field(vec, name, vals)
    lines, elems = L.lines_touched(soa_steer, soa, n, reta)
    assert L.field(soa, "next")[:n].tolist() == want.tolist()       # ran on the real memory
    assert len(lines) == 2 * math.ceil(n / 16) and len(elems) == 2 * n
    assert lines == L.field_lines(soa, "hash", n) | L.field_lines(soa, "next", n)
    lines, _ = L.lines_touched(aos_steer, aos, n, reta)
    assert L.field(aos, "next")[:n].tolist() == want.tolist()
    assert len(lines) == math.ceil(n / 4) and lines == L.field_lines(aos, "hash", n)


def test_lines_touched_follows_slices_and_2d_indexing():
    a = L.aligned_array(64, np.uint64)

    def sliced(vec, lo):
        s = vec[0][lo:lo + 8]
        return s[0] + s[7]

    lines, elems = L.lines_touched(sliced, (a,), 16)
    base = a.ctypes.data
    assert elems == {base + 16 * 8, base + 23 * 8} and lines == {(base >> 6) + 2}
    b = L.aligned_array(64, np.uint64).reshape(8, 8)

    def cols(vec):
        return vec[0][3, 5] + vec[0][-1, -1]

    lines, elems = L.lines_touched(cols, (b,))
    assert elems == {b.ctypes.data + 29 * 8, b.ctypes.data + 63 * 8}
    assert len(lines) == 2


def test_field_lines_of_misaligned_values():
    raw = L.aligned_array(64, np.uint8)
    v = raw[60:].view(np.uint8)                          # starts 60 bytes into a line
    vec = (v, v, v, v)
    assert len(L.field_lines(vec, "hash", 4)) == 1 and len(L.field_lines(vec, "hash", 5)) == 2


# ---- slot_problems, mean_lines -------------------------------------------------------------

@pytest.mark.parametrize("record_bytes", [1, 24, 40, 63, 64, 65, 100, 128, 200])
@pytest.mark.parametrize("n", [0, 1, 2, 7, 64])
def test_aligned_slots_pass_and_packed_ones_fail(record_bytes, n):
    assert L.slot_problems(aligned_slots, n, record_bytes) == []
    packed = L.slot_problems(packed_slots, n, record_bytes)
    assert bool(packed) == (n > 1 and record_bytes % 64 != 0)


def test_slot_problems_name_each_mistake():
    p = L.slot_problems(packed_slots, 8, 40)
    assert "do not start on a cache line" in p[0] and "spans 2 lines where 1 would do" in p[0]
    assert any("hold parts of two records" in x for x in p)
    p = L.slot_problems(lambda n, rb: np.arange(n) * 64, 4, 100)          # aligned, overlapping
    assert len(p) >= 1 and "overlap" in p[0]
    p = L.slot_problems(lambda n, rb: np.arange(n) * 128, 4, 40)          # aligned, wasteful
    assert p == ["4 records of 40 bytes end at byte 424: more than the 256 bytes of 4 slots of 64; "
                 "do not pad beyond the next line boundary"]
    assert "negative" in " ".join(L.slot_problems(lambda n, rb: np.arange(n) * 64 - 64, 3, 40))
    assert "return 3 integer" in L.slot_problems(lambda n, rb: np.zeros(2, np.int64), 3, 40)[0]
    assert "return 3 integer" in L.slot_problems(lambda n, rb: np.zeros(3) + 0.5, 3, 40)[0]
    assert "ZeroDivisionError" in L.slot_problems(lambda n, rb: 1 // 0, 3, 40)[0]
    # reversed order is fine: offsets need not be sorted
    assert L.slot_problems(lambda n, rb: aligned_slots(n, rb)[::-1].copy(), 5, 40) == []


def test_mean_lines():
    assert L.mean_lines(packed_slots(8, 40), 40) == 1.5
    assert L.mean_lines(aligned_slots(8, 40), 40) == 1.0
    assert L.mean_lines(aligned_slots(8, 100), 100) == 2.0
    assert L.mean_lines(np.zeros(0, np.int64), 40) == 0.0


# ---- the exercise's own checks, run on the answer and on the starter -------------------------

def test_the_answer_compiles_without_numbas_runtime_and_the_transposition_is_right():
    for n in (0, 1, 255, 256):
        d = L.make_burst(n, seed=n)
        vec = soa_vector(256)
        soa_rx(d, n, vec)
        for name, vals in L.reference_vector(d, n).items():
            assert L.field(vec, name)[:n].tolist() == vals.tolist()
    assert ex.compiles_without_nrt(soa_rx, d, 256, vec) == (True, None)
    assert ex.compiles_without_nrt(soa_steer, vec, 256, L.make_reta()) == (True, None)
    avec = aos_vector(256)
    aos_rx(d, 256, avec)
    assert ex.compiles_without_nrt(aos_steer, avec, 256, L.make_reta()) == (True, None)


# ---- timers and micro-measurements: they run and return numbers (no timing asserts) ----------

def test_timers_return_cycles():
    for mv, rx, st in ((soa_vector, soa_rx, soa_steer), (aos_vector, aos_rx, aos_steer)):
        c = L.time_pipeline(mv, rx, st, n_descs=4096)
        assert math.isfinite(c) and c > 0
    for fn in (packed_slots, aligned_slots):
        for order in ("random", "in order"):
            c = L.time_slots(fn(1000, 40), 40, order)
            assert math.isfinite(c) and c > 0
    with pytest.raises(ValueError, match="multiples of 8"):
        L.time_slots(packed_slots(10, 41), 41)


def test_micro_measurements_run_and_print():
    fr = L.measure_field_read(sizes=(256, 8192))
    assert [r["n"] for r in fr] == [256, 8192]
    assert all(r[k] > 0 for r in fr for k in ("aos", "soa", "aos_idx", "soa_idx"))
    assert len(L.field_table(fr).splitlines()) == 3
    st = L.measure_straddle(sizes=(128,), offsets=(0, 32, 60))
    assert [r["order"] for r in st] == ["random", "in order"] and all(r[o] > 0 for r in st for o in (0, 32, 60))
    assert "at +60" in L.straddle_table(st, offsets=(0, 32, 60))
    vf = L.measure_vector_field(sizes=(256, 8192))
    assert [(r["n"], r["aos_bytes"], r["soa_bytes"]) for r in vf] == [(256, 256 * 16, 256 * 4), (8192, 8192 * 16,
                                                                                                 8192 * 4)]
    assert all(r["aos"] > 0 and r["soa"] > 0 for r in vf) and len(L.vector_field_table(vf).splitlines()) == 3


def test_the_vector_field_kernels_read_the_same_field_in_either_layout():
    lengths = np.arange(60, 60 + 1000, dtype=np.uint32)
    aos = L.aligned_array(1000, PKT_VEC_AOS)
    aos["length"] = lengths
    aos["handle"] = 7                                  # another field: must not be summed
    times = np.zeros(5, np.int64)
    # 5 chunks of 250 packets: the ranges follow each other over the 1000 packets, then start again
    want = sum(int(lengths[lo:lo + 250].sum()) for lo in (0, 250, 500, 750, 0))
    assert L._lengths_aos(aos, 250, 1, times) == want == L._lengths_soa(lengths, 250, 1, times)
    assert L._lengths_aos(aos, 250, 2, times) == 2 * want and (times > 0).all()


def test_node_loop_source_shows_each_layout():
    aos, soa = L.node_loop_source("aos"), L.node_loop_source("soa")
    assert aos.startswith("def l2_macswap_node(arena, v, n):") and "v[i + 0]['next']" in aos
    assert soa.startswith("def l2_macswap_node(arena, hs, ls, n, nxt):") and "nxt[i + 0] =" in soa
