"""labkit.course.lessons.branches: the walks compute the same state, the exercise's reference
gives every class its frames, the checks catch each kind of mistake, and the branch count reads
the compiled code. No test asserts a time or a rate."""
import numpy as np
import pytest
from numba import njit

from labkit.course.lessons import branches as br
from labkit.graph import kernels as k
from labkit.memory.bytes import rd16
from labkit.memory.layouts import DATA_OFF


@pytest.fixture(autouse=True)
def _quick(monkeypatch):
    monkeypatch.setenv("LABKIT_QUICK", "1")


def test_the_walks_compute_the_same_state_on_any_values():
    rng = np.random.default_rng(3)
    tbl = rng.integers(0, 1 << 16, 256).astype(np.int64)
    for n in (0, 1, 7, 1000):
        v = rng.integers(0, 256, n).astype(np.int64)
        assert br.walk_branchy(v, tbl, n) == br.walk_branchless(v, tbl, n) == br.walk_branchy.py_func(v, tbl, n)
        assert br.count_compiler(v, tbl, n) == sum(int(tbl[x]) for x in v if x >= 128)


def test_measurements_have_every_row_and_column():
    res = br.measure_classic(n=1 << 12, runs=1)
    assert set(res) == {"sorted", "shuffled"} and all(set(d) == set(br.CLASSIC) for d in res.values())
    assert all(c > 0 for d in res.values() for c in d.values())
    assert "branchy walk" in br.classic_table(res).splitlines()[0]
    learn = br.measure_learning(lengths=(16, 256), total=1 << 12, runs=1)
    assert set(learn) == {16, 256, "sorted", "branchless"} and "pattern length" in br.learning_table(learn)


def test_conditional_branches_reads_the_compiled_code():
    a = np.zeros(4 * br.SLOT, np.uint8)
    for fn in (k.eth_input_branchless, k.eth_input_one, k.ip4_input_one, br.reference_class):
        fn(a, 0, 60)
    assert br.conditional_branches(k.eth_input_branchless) == 0
    assert br.conditional_branches(k.eth_input_one) >= 1 and br.conditional_branches(k.ip4_input_one) >= 4
    assert br.conditional_branches(br.reference_class) >= 5            # loaded from the cache: compiled afresh
    assert br.kernel_branches()["eth_input_branchless"] == 0

    @njit
    def never_called(x):
        return x
    with pytest.raises(ValueError, match="has not been compiled yet"):
        br.conditional_branches(never_called)


def test_the_frames_cover_every_class_and_the_reference_agrees_with_the_data_plane():
    arena, bases, lengths, classes = br.make_frames()
    assert set(classes.tolist()) == set(range(len(br.CLASSES)))
    eth, ip4 = {0: None, k.E_ETH_RUNT: br.RUNT, k.E_UNKNOWN_ETHERTYPE: br.NOT_IP4}, {
        0: br.FORWARD, k.E_IP4_BAD_VERSION: br.BAD_VERSION, k.E_IP4_BAD_IHL: br.BAD_IHL,
        k.E_IP4_BAD_LENGTH: br.BAD_LENGTH, k.E_IP4_BAD_CHECKSUM: br.BAD_CHECKSUM, k.E_TTL_EXPIRED: br.TTL_EXPIRED}
    for b, n, c in zip(bases, lengths, classes):
        e = k.eth_input_one(arena, b, n)
        if e < 0:
            assert eth[e] == c
            continue
        hlen = (int(arena[b + DATA_OFF + 14]) & 0xF) * 4 if n > 14 else 0
        if c in (br.OPTIONS, br.TRUNCATED):            # the slow path, or too short: not the data plane's split
            continue
        if hlen == 20:
            assert ip4[k.ip4_input_one(arena, b, n)] == c


@njit(nogil=True)
def _branchless(arena, base, length):
    n = np.int64(length)
    eth = np.int64(base) + DATA_OFF * np.int64(n >= 14)
    ip = np.int64(base) + DATA_OFF * np.int64(n >= 34) + 14
    vi = int(arena[ip])
    hlen = (vi & 0xF) * 4
    total = rd16(arena, ip + 2)
    s = 0
    for o in range(0, 20, 2):
        s += rd16(arena, ip + o)
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    c = np.int64(br.FORWARD)
    for cls, failed in ((br.TTL_EXPIRED, int(arena[ip + 8]) <= 1), (br.BAD_CHECKSUM, s != 0xFFFF),
                        (br.BAD_LENGTH, (total < 20) | (total > n - 14)), (br.OPTIONS, hlen > 20),
                        (br.BAD_IHL, hlen < 20), (br.BAD_VERSION, (vi >> 4) != 4), (br.TRUNCATED, n < 34),
                        (br.NOT_IP4, rd16(arena, eth + 12) != 0x0800), (br.RUNT, n < 14)):
        c += (cls - c) * np.int64(failed)
    return c


@njit(nogil=True)
def _over_reads(arena, base, length):          # right classes, but reads the ethertype of a short frame too
    t = rd16(arena, np.int64(base) + DATA_OFF + 12)
    return br.reference_class(arena, base, length) + 0 * t


def test_classify_problems_accepts_a_right_answer_and_names_each_mistake():
    assert br.classify_problems(br.reference_class) == []
    assert br.classify_problems(_branchless) == []
    assert br.conditional_branches(_branchless) == 0
    over = br.classify_problems(_over_reads)
    assert over and "reads past the frame's end" in over[0]

    @njit(nogil=True)
    def wrong(arena, base, length):
        return br.FORWARD
    msg = br.classify_problems(wrong)
    assert msg and "the reference" in msg[0] and len(msg) <= 5


def test_time_classify_runs_every_function_in_both_orders():
    res = br.time_classify({"a": br.reference_class, "b": _branchless}, runs=1, n=1 << 12)
    assert set(res) == {"sorted", "shuffled"} and all(set(d) == {"a", "b"} for d in res.values())
    arena, bases, lengths, classes = br.make_frames()
    srt = br.order_of(classes, "sorted", n=4096)
    assert (np.diff(classes[srt]) >= 0).all()
    shf = br.order_of(classes, "shuffled", n=4096)
    assert np.array_equal(np.sort(shf), np.sort(srt))


def test_branch_counter_says_yes_or_why_not():
    ok, why = br.branch_counter()
    assert ok is True and why == "" or ok is False and "perf_event_open" in why
