"""The exercises: every solution passes nbval and grading, every shipped
exercise (its starter) fails grading, and the synthetic rings the exercises
use are laid out as the kernel and labkit's real driver expect."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from labkit.course import exercise as ex
from labkit.course import grade
from labkit.memory.intrinsics import load_acquire, store_release
from labkit.memory.ring import CONS, PROD, ring_dequeue
from labkit.nic.afpacket import (BLK_FIRST, BLK_NUM_PKTS, BLK_STATUS, C_BNR, C_BSIZE, P3_LEN, P3_MAC, P3_NEXT,
                                 P3_SNAPLEN, RX_MACOFF, TP_STATUS_KERNEL, TP_STATUS_USER, rx_burst, rx_release)

ROOT = Path(__file__).resolve().parent.parent
# every solution, by name; the first three ship since issue 5, the rest with later techniques
NAMES = sorted(p.stem for p in (ROOT / "solutions").glob("*.ipynb"))
FIRST = ["01_polling", "02_io_batching", "03_zero_copy"]


def _nb(path):
    import nbformat
    return nbformat.read(str(path), as_version=4)


def _env():
    env = dict(os.environ, LABKIT_QUICK="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.pop("PYTEST_ADDOPTS", None)
    return env


# ---- the notebooks as files ------------------------------------------------------

def test_each_exercise_has_its_solution_with_the_same_checks():
    assert set(FIRST) <= set(NAMES)
    assert sorted(p.stem for p in (ROOT / "exercises").glob("*.ipynb")) == NAMES
    for name in NAMES:
        exe, sol = _nb(ROOT / "exercises" / f"{name}.ipynb"), _nb(ROOT / "solutions" / f"{name}.ipynb")
        for nb in (exe, sol):
            assert (nb["nbformat"], nb["nbformat_minor"]) >= (4, 5)
            assert nb["metadata"]["labkit"]["exercise"] == name
            assert "widgets" not in nb["metadata"]
        assert [c["id"] for c in exe["cells"]] == [c["id"] for c in sol["cells"]]
        checks = [c for c in sol["cells"] if "check" in c["metadata"].get("tags", [])]
        assert len(checks) >= 3
        for c in checks:
            assert c["id"].startswith("check-")
            name_ = c["id"][len("check-"):]
            assert "".join(o.get("text", "") for o in c["outputs"]) == f"check {name_}: ok\n", c["id"]
        student = [i for i, c in enumerate(sol["cells"]) if "student" in c["metadata"].get("tags", [])]
        assert len(student) == 1
        assert exe["cells"][student[0]]["source"] != sol["cells"][student[0]]["source"]
        # the exercise differs from its solution only in the student's cell
        for i, (a, b) in enumerate(zip(exe["cells"], sol["cells"])):
            if i != student[0]:
                assert a["source"] == b["source"], (name, a["id"])
        assert (ROOT / "solutions" / f"{name}.ipynb").stat().st_size < 100_000


def test_solutions_pass_nbval_in_quick_mode():
    r = subprocess.run([sys.executable, "-m", "pytest", "--nbval", "--nbval-current-env", "-p", "no:cacheprovider",
                        "-q", "-o", "addopts=", "--rootdir", str(ROOT / "solutions"), str(ROOT / "solutions")],
                       cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]


@pytest.fixture(scope="module")
def graded():
    """Every shipped exercise and every solution, graded (two at a time)."""
    return {folder: {Path(r.path).stem: r for r in grade.grade_path(ROOT / folder, jobs=2)}
            for folder in ("exercises", "solutions")}


@pytest.mark.parametrize("name", NAMES)
def test_solution_passes_grading(graded, name):
    r = graded["solutions"][name]
    assert r.ok and r.exit_code == 0, [c for c in r.checks if not c.passed] or r.first_error
    assert r.first_error is None and r.notes == []
    student = next(c["id"] for c in json.loads((ROOT / "solutions" / f"{name}.ipynb").read_text())["cells"]
                   if "student" in c["metadata"].get("tags", []))
    assert r.flags == [f"cell {student}: the shipped solution's code, unchanged"]     # nothing else to read


@pytest.mark.parametrize("name", NAMES)
def test_shipped_exercise_fails_grading(graded, name):
    r = graded["exercises"][name]
    assert r.exercise == name and r.total == graded["solutions"][name].total
    assert r.passed < r.total and r.exit_code == 1
    assert all(c.message for c in r.checks if not c.passed)
    assert r.first_error is None, "the starter should run, only its checks fail"
    assert r.flags == [], "the shipped starter is honest code: nothing to flag"


# ---- the synthetic TPACKET_V3 ring is the kernel's layout ---------------------------

def _rx_all(ring, cap=4096):
    hs, ls = np.zeros(cap, np.int64), np.zeros(cap, np.int64)
    hashes, too_long = np.zeros(cap, np.uint32), np.zeros(1, np.int64)
    n = rx_burst(ring.u8, ring.u32, ring.cur, hs, ls, hashes, cap, 1 << 16, too_long)
    assert too_long[0] == 0
    return hs[:n], ls[:n]


def test_v3_ring_frames_are_where_rx_burst_finds_them():
    s = ex.make_stream(500, size="imix", seed=3)
    ring = ex.make_v3_ring(s, block_size=1 << 14, block_nr=64)
    assert (ring.delivered, ring.dropped) == (500, 0)
    hs, ls = _rx_all(ring)
    assert len(hs) == 500
    for i in range(500):
        f = hs[i] + ex.DATA_OFF
        assert ring.u8[f:f + ls[i]].tobytes() == ex.stream_frame(s, i)
    assert ring.held == ring.status().astype(bool).sum() > 0
    rx_release(ring.u32, ring.cur)
    assert ring.held == 0 and (ring.status() == TP_STATUS_KERNEL).all()


def test_v3_ring_block_headers_follow_the_kernel():
    s = ex.make_stream(300)
    ring = ex.make_v3_ring(s, block_size=1 << 14, block_nr=8)
    status = ring.status()
    assert status.tolist() == [1, 1, 1, 1, 1 | ex.TP_STATUS_BLK_TMO, 0, 0, 0]
    total = 0
    for b in range(5):
        base = b * ring.block_size
        u32 = ring.u32
        npk = int(u32[(base + BLK_NUM_PKTS) >> 2])
        assert u32[(base + BLK_FIRST) >> 2] == 48                       # BLK_PLUS_PRIV(0)
        assert u32[(base + ex.BLK_SEQ) >> 2] == b                        # seq_num counts blocks
        off, blk_len = base + 48, 48
        for k in range(npk):
            assert off % 8 == 0                                          # V3_ALIGNMENT
            assert u32[(off + P3_MAC) >> 2] & 0xFFFF == RX_MACOFF        # 82 + PACKET_RESERVE
            assert u32[(off + P3_MAC) >> 2] >> 16 == RX_MACOFF + 14       # tp_net
            assert u32[(off + P3_SNAPLEN) >> 2] == u32[(off + P3_LEN) >> 2] == 60
            nxt = int(u32[(off + P3_NEXT) >> 2])
            need = (RX_MACOFF + 60 + 7) & ~7
            assert nxt == (0 if k == npk - 1 else need)
            assert off + need < base + ring.block_size                   # curr + len < end
            blk_len += need
            off += need
        assert u32[(base + ex.BLK_LEN) >> 2] == blk_len
        total += npk
    assert total == 300


def test_v3_ring_kernel_drops_when_no_block_is_free_and_refills_when_given_back():
    s = ex.make_stream(1000)
    ring = ex.make_v3_ring(block_size=1 << 14, block_nr=2)
    assert ring.deliver(s, 0, 200) == 126 and ring.dropped == 74           # two blocks of 63
    assert ring.kst[ex.K_FREEZES] == 1
    hs, _ = _rx_all(ring)
    assert len(hs) == 126
    rx_release(ring.u32, ring.cur)
    assert ring.deliver(s, 200, 100) == 100 and ring.dropped == 74
    assert len(_rx_all(ring)[0]) == 100


def test_ring_copy_is_independent():
    s = ex.make_stream(100)
    a = ex.make_v3_ring(s)
    b = a.copy()
    _rx_all(a)
    rx_release(a.u32, a.cur)
    assert a.held == 0 and b.held == 2 and b.cur[0] == 0


def _reference_walk():
    from numba import njit

    @njit(nogil=True)
    def walk(u8, u32, cur, log):
        bsize, bnr = cur[C_BSIZE], cur[C_BNR]
        n_frames = n_bytes = 0
        while True:
            base = cur[0] * bsize
            if (load_acquire(u32, (base + BLK_STATUS) >> 2) & TP_STATUS_USER) == 0:
                break
            off = base + u32[(base + BLK_FIRST) >> 2]
            for _ in range(u32[(base + BLK_NUM_PKTS) >> 2]):
                length = u32[(off + P3_SNAPLEN) >> 2]
                ex.take_frame(u8, off + (u32[(off + P3_MAC) >> 2] & 0xFFFF), length, log)
                n_frames += 1
                n_bytes += length
                off += u32[(off + P3_NEXT) >> 2]
            store_release(u32, (base + BLK_STATUS) >> 2, TP_STATUS_KERNEL)
            cur[0] = (cur[0] + 1) % bnr
        return n_frames, n_bytes
    return walk


def test_receive_runs_a_stream_through_a_walk():
    s = ex.make_stream(5000, size="imix")
    got = ex.receive(_reference_walk(), ex.make_v3_ring(block_size=1 << 16, block_nr=8), s)
    assert (got.frames, got.bytes, got.dropped, got.held) == (5000, ex.stream_bytes(s), 0, 0)
    assert np.array_equal(got.seqs, np.arange(5000))


@pytest.mark.parametrize("mode", ["busy", "wait"])
def test_poll_experiment_accounts_for_every_frame(mode, monkeypatch):
    monkeypatch.setenv("LABKIT_QUICK", "1")
    r = ex.poll_experiment(_reference_walk(), mode, rate_pps=20_000, seconds=0.1)
    assert r["taken"] == r["delivered"] > 0
    assert r["delivered"] + r["dropped"] <= int(20_000 * 0.1) + 1
    assert (r["wakeups"] > 0) == (mode == "wait")


def test_desc_ring_helpers_and_no_nrt_check():
    ring = ex.make_desc_ring(8, start=2**40 + 6)
    assert ex.fill_desc_ring(ring, 10, 10) == 8
    h, ln = np.zeros(8, np.uint32), np.zeros(8, np.uint16)
    assert ring_dequeue(ring.desc, ring.cur, h, ln, np.zeros(8, np.uint32), 8) == 8
    assert h.tolist() == list(range(10, 18)) and ln.tolist() == [60 + x for x in range(10, 18)]

    def allocates(a):
        return np.empty(a.size, np.uint8).size

    def views(a):
        return a[1:3].size
    a = np.zeros(4, np.uint8)
    ok, why = ex.compiles_without_nrt(allocates, a)
    assert not ok and "empty" in why
    assert ex.compiles_without_nrt(views, a) == (True, None)


def test_frames_ring_and_tx_area():
    ring, hs, ls = ex.frames_ring(40, size="imix")
    assert len(hs) == len(ls) == 40
    tx = ex.TxArea(40)
    tx.lens[:] = ls
    assert tx.frame(3) == bytes(ls[3])


# ---- 13 and 14: the published RSS table, the SPSC ring's helpers ----------------------------

def test_rss_table_is_the_published_one_source_first():
    from labkit.nic import rss
    assert len(ex.RSS_TABLE) == 5
    for dst, dport, src, sport, h2, h4 in ex.RSS_TABLE:
        assert rss.toeplitz(rss.DEFAULT_KEY, rss.ipv4_tuple(src, dst)) == h2
        assert rss.toeplitz(rss.DEFAULT_KEY, rss.ipv4_tuple(src, dst, sport, dport)) == h4
    assert len(ex.rss_inputs(7)) == 7 and all(len(d) == 12 for d in ex.rss_inputs(7))


def _enqueues():
    """The correct producer, and variants with one mistake each (pure Python: only their
    order is checked, by running their source on a recording ring)."""
    def good(slots, cur, items, n):
        mask, prod = slots.size - 1, cur[PROD]
        k = min(n, slots.size - int(prod - load_acquire(cur, CONS)))
        for i in range(k):
            slots[(prod + i) & mask] = items[i]
        store_release(cur, PROD, prod + k)
        return k

    def per_item(slots, cur, items, n):          # publishes after each slot: slower, still right
        mask, prod = slots.size - 1, cur[PROD]
        k = min(n, slots.size - int(prod - load_acquire(cur, CONS)))
        for i in range(k):
            slots[(prod + i) & mask] = items[i]
            store_release(cur, PROD, prod + i + 1)
        return k

    def publish_first(slots, cur, items, n):
        mask, prod = slots.size - 1, cur[PROD]
        k = min(n, slots.size - int(prod - load_acquire(cur, CONS)))
        store_release(cur, PROD, prod + k)
        for i in range(k):
            slots[(prod + i) & mask] = items[i]
        return k

    def plain_store(slots, cur, items, n):
        mask, prod = slots.size - 1, cur[PROD]
        k = min(n, slots.size - int(prod - load_acquire(cur, CONS)))
        for i in range(k):
            slots[(prod + i) & mask] = items[i]
        cur[PROD] = prod + k
        return k

    def plain_cons(slots, cur, items, n):
        mask, prod = slots.size - 1, cur[PROD]
        k = min(n, slots.size - int(prod - cur[CONS]))
        for i in range(k):
            slots[(prod + i) & mask] = items[i]
        store_release(cur, PROD, prod + k)
        return k
    return good, per_item, publish_first, plain_store, plain_cons


def test_order_problems_finds_each_mistake_and_accepts_the_right_orders():
    good, per_item, publish_first, plain_store, plain_cons = _enqueues()
    assert ex.order_problems(good) == [] and ex.order_problems(per_item) == []
    for fn, says in ((publish_first, "before slot 6 is written"), (plain_store, "plain store"),
                     (plain_cons, "load_acquire(cur, CONS)")):
        problems = ex.order_problems(fn)
        assert len(problems) == 1 and says in problems[0], (fn.__name__, problems)


def test_locked_ring_is_a_fifo_that_fills_up():
    r = ex.make_spsc(8, start=2**40 + 6)
    out = np.zeros(8, np.uint64)
    assert ex.locked_enqueue(r.slots, r.cur, np.arange(10, dtype=np.uint64), 10) == 8
    assert ex.locked_enqueue(r.slots, r.cur, np.arange(3, dtype=np.uint64), 3) == 0
    assert ex.locked_dequeue(r.slots, r.cur, out, 5) == 5 and out[:5].tolist() == [0, 1, 2, 3, 4]
    assert ex.spsc_dequeue(r.slots, r.cur, out, 8) == 3 and out[:3].tolist() == [5, 6, 7]
    assert r.cur[ex.SPSC_LOCK] == 0                                  # every lock taken was released
    with pytest.raises(ValueError, match="power of two"):
        ex.make_spsc(6)


def test_two_threads_move_a_sequence_through_the_locked_ring(monkeypatch):
    monkeypatch.setenv("LABKIT_QUICK", "1")
    r = ex.spsc_stress(ex.locked_enqueue, ex.locked_dequeue, n=50_000, size=16, burst=3)
    assert (r["sent"], r["received"], r["out_of_order"], r["timed_out"]) == (50_000, 50_000, 0, False)
    assert ex.spsc_one_thread(ex.locked_enqueue, ex.locked_dequeue, n=10_000, burst=7) > 0
