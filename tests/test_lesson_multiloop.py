"""labkit.course.lessons.multiloop: the flow hash is zlib's CRC-32, the checks of
exercise 09 accept a quad loop and say what is wrong with each kind of
mistake, and the micro-measurement's loops compute the same hashes.

No test asserts a time or a rate."""
import zlib
from types import SimpleNamespace

import numpy as np
import pytest
from numba import njit

from labkit.course.lessons import multiloop as ml
from labkit.course.lessons.multiloop import CRC_INIT, CRC_TABLE, CRC_XOR, crc32_u32, crc32_u8


@pytest.fixture(autouse=True)
def _quick(monkeypatch):
    monkeypatch.setenv("LABKIT_QUICK", "1")


# ---- the hash -----------------------------------------------------------------------

def test_crc_table_is_zlibs():
    assert CRC_TABLE.dtype == np.uint32 and CRC_TABLE.size == 256
    assert CRC_TABLE[0] == 0 and CRC_TABLE[1] == 0x77073096 and CRC_TABLE[255] == 0x2D02EF8D


def test_steps_compute_zlibs_crc32_of_the_key():
    flows = ml.make_flows(50, seed=4)
    for i in range(50):
        c = crc32_u32(CRC_TABLE, CRC_INIT, flows.src[i])
        c = crc32_u32(CRC_TABLE, c, flows.dst[i])
        c = crc32_u32(CRC_TABLE, c, flows.ports[i])
        c = crc32_u8(CRC_TABLE, c, flows.proto[i])
        assert (c ^ CRC_XOR) == zlib.crc32(ml.key_bytes(flows, i))
    # the published check value of CRC-32: "123456789" -> 0xCBF43926
    c = CRC_INIT
    for b in b"123456789":
        c = crc32_u8(CRC_TABLE, c, b)
    assert c ^ CRC_XOR == 0xCBF43926


def test_flows_are_soa_and_reproducible():
    a, b = ml.make_flows(33, seed=2), ml.make_flows(33, seed=2)
    assert [x.dtype for x in a] == [np.uint32, np.uint32, np.uint32, np.uint8]
    assert all(len(x) == 33 for x in a)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert set(a.proto.tolist()) <= {6, 17}
    key = ml.key_bytes(a, 3)
    assert len(key) == 13 and key[:4] == int(a.src[3]).to_bytes(4, "little") and key[12] == a.proto[3]
    assert ml.reference_hashes(a, 5).tolist() == [zlib.crc32(ml.key_bytes(a, i)) for i in range(5)]
    assert ml.reference_hashes(a, 0).size == 0


# ---- the checks: a right answer and one mistake at a time ---------------------------------

def _one(tbl, src, dst, ports, proto, i):
    c = crc32_u32(tbl, CRC_INIT, src[i])
    c = crc32_u32(tbl, c, dst[i])
    c = crc32_u32(tbl, c, ports[i])
    return crc32_u8(tbl, c, proto[i]) ^ CRC_XOR


@njit(nogil=True)
def quad(tbl, src, dst, ports, proto, out, n):
    i = 0
    while i + 4 <= n:
        c0 = crc32_u32(tbl, CRC_INIT, src[i])
        c1 = crc32_u32(tbl, CRC_INIT, src[i + 1])
        c2 = crc32_u32(tbl, CRC_INIT, src[i + 2])
        c3 = crc32_u32(tbl, CRC_INIT, src[i + 3])
        c0, c1 = crc32_u32(tbl, c0, dst[i]), crc32_u32(tbl, c1, dst[i + 1])
        c2, c3 = crc32_u32(tbl, c2, dst[i + 2]), crc32_u32(tbl, c3, dst[i + 3])
        c0, c1 = crc32_u32(tbl, c0, ports[i]), crc32_u32(tbl, c1, ports[i + 1])
        c2, c3 = crc32_u32(tbl, c2, ports[i + 2]), crc32_u32(tbl, c3, ports[i + 3])
        c0, c1 = crc32_u8(tbl, c0, proto[i]), crc32_u8(tbl, c1, proto[i + 1])
        c2, c3 = crc32_u8(tbl, c2, proto[i + 2]), crc32_u8(tbl, c3, proto[i + 3])
        out[i], out[i + 1], out[i + 2], out[i + 3] = c0 ^ CRC_XOR, c1 ^ CRC_XOR, c2 ^ CRC_XOR, c3 ^ CRC_XOR
        i += 4
    iters = i // 4
    while i < n:
        c = crc32_u32(tbl, CRC_INIT, src[i])
        c = crc32_u32(tbl, c, dst[i])
        c = crc32_u32(tbl, c, ports[i])
        out[i] = crc32_u8(tbl, c, proto[i]) ^ CRC_XOR
        i += 1
    return iters


@njit(nogil=True)
def single(tbl, src, dst, ports, proto, out, n):
    for i in range(n):
        c = crc32_u32(tbl, CRC_INIT, src[i])
        c = crc32_u32(tbl, c, dst[i])
        c = crc32_u32(tbl, c, ports[i])
        out[i] = crc32_u8(tbl, c, proto[i]) ^ CRC_XOR
    return n


@njit(nogil=True)
def unrolled(tbl, src, dst, ports, proto, out, n):
    """Four per iteration, but each packet run to the end before the next."""
    i = 0
    while i + 4 <= n:
        for j in range(4):
            c = crc32_u32(tbl, CRC_INIT, src[i + j])
            c = crc32_u32(tbl, c, dst[i + j])
            c = crc32_u32(tbl, c, ports[i + j])
            out[i + j] = crc32_u8(tbl, c, proto[i + j]) ^ CRC_XOR
        i += 4
    iters = i // 4
    while i < n:
        c = crc32_u32(tbl, CRC_INIT, src[i])
        c = crc32_u32(tbl, c, dst[i])
        c = crc32_u32(tbl, c, ports[i])
        out[i] = crc32_u8(tbl, c, proto[i]) ^ CRC_XOR
        i += 1
    return iters


@njit(nogil=True)
def no_remainder(tbl, src, dst, ports, proto, out, n):
    """The quad loop right, the remainder forgotten."""
    quad(tbl, src, dst, ports, proto, out, n - n % 4)
    return n // 4


def overrun(tbl, src, dst, ports, proto, out, n):
    """Plain Python: four at a time to the end, past n when n % 4 != 0."""
    i = 0
    while i < n:
        for j in range(4):
            out[i + j] = _one(tbl, src, dst, ports, proto, i + j)
        i += 4
    return n // 4


def twice(tbl, src, dst, ports, proto, out, n):
    """Plain Python: every packet's src read twice (a second look for nothing)."""
    i = 0
    while i + 4 <= n:
        cs = [crc32_u32(tbl, CRC_INIT, src[i + j]) for j in range(4)]
        _ = [src[i + j] for j in range(4)]
        cs = [crc32_u32(tbl, cs[j], dst[i + j]) for j in range(4)]
        cs = [crc32_u32(tbl, cs[j], ports[i + j]) for j in range(4)]
        cs = [crc32_u8(tbl, cs[j], proto[i + j]) for j in range(4)]
        for j in range(4):
            out[i + j] = cs[j] ^ CRC_XOR
        i += 4
    iters = i // 4
    while i < n:
        out[i] = _one(tbl, src, dst, ports, proto, i)
        i += 1
    return iters


@njit(nogil=True)
def allocates(tbl, src, dst, ports, proto, out, n):
    tmp = np.empty(n, np.uint32)
    single(tbl, src, dst, ports, proto, tmp, n)
    for i in range(n):
        out[i] = tmp[i]
    return n // 4


def test_a_quad_loop_passes_every_check():
    assert ml.result_problems(quad) == []
    assert ml.access_problems(quad) == []
    assert ml.quad_problems(quad) == []
    assert ml.run_nrt_free(quad) == (True, None, [])


def test_the_single_loop_fails_every_check():
    assert "returned 70" in ml.result_problems(single)[0]
    assert "70 main iterations" in ml.access_problems(single)[0]
    assert "a single loop" in ml.quad_problems(single)[0]
    ok, why, problems = ml.run_nrt_free(single)
    assert ok and "returned 70" in problems[0]


def test_unrolled_without_interleaving_fails_only_the_shape():
    assert ml.result_problems(unrolled) == [] and ml.access_problems(unrolled) == []
    assert "one after the other" in ml.quad_problems(unrolled)[0]


def test_a_forgotten_remainder_is_caught_at_every_n():
    problems = ml.result_problems(no_remainder)
    assert problems and "2 of 70 hashes wrong; out[68]" in problems[0]


def test_running_past_n_is_caught():
    assert "was written" in ml.result_problems(overrun)[0]
    assert "only packets 0..69 exist" in ml.access_problems(overrun)[0]


def test_reading_a_field_twice_is_caught():
    assert ml.quad_problems(twice) == []
    assert "src[0] was read 2 times" in ml.access_problems(twice)[0]


def test_hidden_accesses_are_explained():
    assert "no access to the arrays was seen" in ml.access_problems(no_remainder)[0]


def test_allocation_fails_without_the_runtime():
    ok, why, problems = ml.run_nrt_free(allocates)
    assert not ok and "empty" in why


def test_record_logs_reads_then_writes():
    log, got = ml.record(single, 2)
    assert got == 2
    assert log[:4] == [("r", "src", 0), ("r", "dst", 0), ("r", "ports", 0), ("r", "proto", 0)]
    assert log[4] == ("w", "out", 0)


def test_time_flow_hash_runs():
    assert ml.time_flow_hash(quad, n=64, runs=2, calls=5) > 0


# ---- the micro-measurement ----------------------------------------------------------------

@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 5, 7, 8, 9])
def test_chain_variants_agree_on_every_remainder(n):
    keys = np.arange(1, n + 1, dtype=np.uint64) * np.uint64(0x1234567)
    want = np.zeros(n, np.uint64)
    for rounds in (0, 1, 3):
        ml.chain_single(keys, want, rounds)
        for name, fn in ml.CHAIN_VARIANTS.items():
            out = np.zeros(n, np.uint64)
            fn(keys, out, rounds)
            assert np.array_equal(out, want), (name, n, rounds)
        if rounds == 0:
            assert np.array_equal(want, keys)


def test_measure_chains_reports_every_variant():
    res = ml.measure_chains(rounds=(1, 2), n=38, runs=1)
    assert list(res) == [1, 2]
    assert all(list(d) == list(ml.CHAIN_VARIANTS) and all(v > 0 for v in d.values()) for d in res.values())
    text = ml.chains_table(res)
    assert "quad, interleaved" in text and len(text.splitlines()) == 4


# ---- the data plane's generated loops -------------------------------------------------------

def test_node_source_is_the_generated_loop():
    one, four = ml.node_source(unroll=1), ml.node_source(unroll=4)
    assert one.startswith("@JIT\ndef ip4_rewrite_node(") and four.startswith("@JIT\ndef ip4_rewrite_node(")
    assert "while i + 4 <= n:" in four and "while i + 4 <= n:" not in one
    assert four.count("ip4_rewrite_one(") == 5 and one.count("ip4_rewrite_one(") == 1
    assert "while i + 2 <= n:" in ml.node_source("l2fwd", "l2-macswap", unroll=2)
    with pytest.raises(ValueError, match="no node"):
        ml.node_source("ip4", "acl")


def test_per_node_table_takes_medians():
    raw = [{"knobs": {"unroll": u}, "runtime": [{"node": "eth-input", "cycles_per_packet": c}]}
           for u, c in ((1, 5.0), (1, 7.0), (1, 100.0), (4, 3.0))]
    text = ml.per_node_table(SimpleNamespace(raw=raw, knob="unroll", values=[1, 2, 4]))
    row = next(r for r in text.splitlines() if r.startswith("eth-input")).split()
    assert row[1:] == ["7.0", "-", "3.0"]


@njit(nogil=True, inline="always")
def _one_jit(tbl, src, dst, ports, proto, i):
    c = crc32_u32(tbl, CRC_INIT, src[i])
    c = crc32_u32(tbl, c, dst[i])
    c = crc32_u32(tbl, c, ports[i])
    return crc32_u8(tbl, c, proto[i]) ^ CRC_XOR


@njit(nogil=True)
def via_helper(tbl, src, dst, ports, proto, out, n):
    """Right results, but the arrays are indexed in a compiled helper: the
    recording sees only the writes, and says where to index them."""
    i = 0
    while i + 4 <= n:
        h0 = _one_jit(tbl, src, dst, ports, proto, i)
        h1 = _one_jit(tbl, src, dst, ports, proto, i + 1)
        h2 = _one_jit(tbl, src, dst, ports, proto, i + 2)
        h3 = _one_jit(tbl, src, dst, ports, proto, i + 3)
        out[i], out[i + 1], out[i + 2], out[i + 3] = h0, h1, h2, h3
        i += 4
    iters = i // 4
    while i < n:
        out[i] = _one_jit(tbl, src, dst, ports, proto, i)
        i += 1
    return iters


def test_reads_in_a_compiled_helper_are_explained():
    assert ml.result_problems(via_helper) == []
    assert "no read of packet 0's fields was seen" in ml.quad_problems(via_helper)[0]
    assert "src[0] was read 0 times" in ml.access_problems(via_helper)[0]


def test_core_names_amd_cores_by_family_and_model(tmp_path):
    def cpu(vendor, family, model):
        p = tmp_path / f"{vendor}-{family}-{model}"
        block = f"processor\t: 0\nvendor_id\t: {vendor}\ncpu family\t: {family}\nmodel\t\t: {model}\n"
        p.write_text(block + "\n" + block.replace("processor\t: 0", "processor\t: 1"))
        return str(p)
    assert ml.core(cpu("AuthenticAMD", 25, 17)) == ("Zen 4", 320)       # EPYC 9004 (Genoa)
    assert ml.core(cpu("AuthenticAMD", 25, 1)) == ("Zen 3", 256)        # EPYC 7003 (Milan)
    assert ml.core(cpu("AuthenticAMD", 26, 2)) == ("Zen 5", 448)
    assert ml.core(cpu("AuthenticAMD", 23, 49)) == ("Zen 2", 224)
    assert ml.core(cpu("GenuineIntel", 6, 143)) is None
    assert ml.core(str(tmp_path / "absent")) is None
