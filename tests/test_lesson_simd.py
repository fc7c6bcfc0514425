"""labkit.course.lessons.simd: every kernel gives the reference's class, the headers hold every
class, the IR and assembly readers see what LLVM made (64-bit lanes, 32-bit lanes, none), the
child processes compile for the instruction set they are given and agree, and the exercise's
checks catch each kind of mistake. No test asserts a time or a rate."""
import platform

import numpy as np
import pytest
from numba import njit

from labkit.course.lessons import simd as lesson
from labkit.course.lessons.simd import BAD_CHECKSUM, FORWARD, TTL_EXPIRED

X86 = platform.machine() in ("x86_64", "AMD64")


@pytest.fixture(autouse=True)
def _quick(monkeypatch):
    monkeypatch.setenv("LABKIT_QUICK", "1")


def _classes(fn, h, m=None):
    out = np.full(h.n, -1, np.int32)
    fn(h.words, h.room, m if m is not None else h.n, out)
    return out


def test_the_headers_hold_every_class_and_every_kernel_agrees_with_the_reference():
    for seed in (1, 2, 3):
        h = lesson.make_headers(n=300 + seed, seed=seed)
        want = lesson.reference_validate(h)
        assert set(want.tolist()) == set(range(len(lesson.CLASSES)))
        for fn in (lesson.validate, lesson.starter_validate):
            assert np.array_equal(_classes(fn, h), want), fn.__name__
            assert np.array_equal(_classes(fn.py_func, h, 50)[:50], want[:50]), fn.__name__
        ok = want != lesson.BAD_CHECKSUM
        for fn in (lesson.checksum64, lesson.checksum32):
            got = _classes(fn, h)
            sums_ok = np.array([lesson._csum(h.words[:, i]) == 0xFFFF for i in range(h.n)])
            assert np.array_equal(got == 1, sums_ok), fn.__name__
            assert got[ok & (want != lesson.BAD_VERSION) & (want != lesson.BAD_IHL) & (want != lesson.OPTIONS)
                       & (want != lesson.BAD_LENGTH)].all()


def test_a_vector_that_does_not_end_on_a_lane_is_decided_to_its_last_header():
    h = lesson.make_headers(n=64)
    want = lesson.reference_validate(h)
    for m in (0, 1, 15, 17, 63):
        got = _classes(lesson.validate, h, m)
        assert np.array_equal(got[:m], want[:m]) and (got[m:] == -1).all()


@pytest.mark.skipif(not X86, reason="reads x86 registers")
def test_the_ir_reader_tells_64_from_32_bit_lanes_and_scalar_code():
    h = lesson.make_headers()
    for fn in lesson.KERNELS.values():
        _classes(fn, h)
    assert lesson.lane_bits(lesson.checksum64) == {64}
    assert lesson.lane_bits(lesson.checksum32) == {32} == lesson.lane_bits(lesson.validate)
    # in this process the lanes are what LLVM's tuning for this CPU picks (for Intel's server cores it
    # prefers 256-bit vectors even with AVX-512); every instruction set at its full width, 32-bit sums
    # in twice the lanes of 64-bit ones, is test_each_child_compiles_for_its_instruction_set_and_all_agree
    assert lesson.vector_lanes(lesson.checksum32) >= lesson.vector_lanes(lesson.checksum64) > 1

    @njit(nogil=True)
    def serial(words, room, n, out):            # each header depends on the last: nothing to vectorize
        s = 0
        for i in range(n):
            s = (s * 31 + words[0, i]) & 0xFFFF
            out[i] = s
    _classes(serial, h)
    assert lesson.lane_bits(serial) == set() and lesson.vector_lanes(serial) == 1
    regs = lesson.registers(lesson.validate)
    assert set(regs) == {"xmm", "ymm", "zmm"} and sum(regs.values()) > 0


@pytest.mark.skipif(not X86, reason="the instruction sets are x86's")
def test_each_child_compiles_for_its_instruction_set_and_all_agree():
    here = lesson.isas_here()
    names = [n for n, _ in here]
    assert names[0] == "scalar" and "SSE4.2" in names
    assert here[0][1]["NUMBA_LOOP_VECTORIZE"] == "0"
    assert "-avx2" in here[1][1]["NUMBA_CPU_FEATURES"].split(",")
    res = lesson.measure_lanes()                  # raises if two instruction sets disagree on a result
    assert list(res) == names
    assert all(res["scalar"][k]["lanes"] == 1 for k in lesson.KERNELS)
    widest = {"SSE4.2": 128, "AVX2": 256, "AVX-512": 512}
    for isa, bits in widest.items():
        if isa in res:
            assert res[isa]["validate"]["lanes"] == bits // 32, isa
            assert res[isa]["checksum, 64-bit sums"]["lanes"] == bits // 64, isa
    assert "lanes" in lesson.lanes_table(res)


def test_in_place_the_scalar_node_and_the_simd_variant_give_the_same_codes():
    res = lesson.measure_in_place(n=64, runs=1, reps=2)     # asserts the codes agree
    assert list(res) == list(lesson.IN_PLACE) + ["simd variant"]
    assert all(v > 0 for v in res.values())
    assert "scalar node" in lesson.in_place_table(res)


# -- the exercise's checks -----------------------------------------------------------------------

def test_the_solution_passes_and_each_mistake_is_caught():
    assert lesson.validate_problems(lesson.validate) == []
    assert lesson.validate_problems(lesson.starter_validate) == []

    @njit(nogil=True)
    def order_wrong(words, room, n, out):       # the two codes picked in the wrong order
        lesson.validate(words, room, n, out)
        for i in range(n):
            if out[i] == lesson.BAD_LENGTH:
                out[i] = BAD_CHECKSUM

    @njit(nogil=True)
    def ttl_off(words, room, n, out):           # TTL 1 forwarded
        lesson.validate(words, room, n, out)
        for i in range(n):
            if out[i] == TTL_EXPIRED and (words[4, i] >> 8) == 1:
                out[i] = FORWARD

    @njit(nogil=True)
    def short(words, room, n, out):             # the last few headers of a vector never written
        lesson.validate(words, room, n - n % 16, out)

    for fn, says in ((order_wrong, "bad_checksum, the reference bad_length"),
                     (ttl_off, "forward, the reference ttl_expired"), (short, "the reference")):
        problems = lesson.validate_problems(fn)
        assert problems and says in problems[0], (fn, problems)


def test_time_validate_measures_each_function_compiled_afresh():
    t = lesson.time_validate({"starter": lesson.starter_validate, "solution": lesson.validate}, runs=1)
    assert set(t) == {"starter", "solution"} and all(v > 0 for v in t.values())
