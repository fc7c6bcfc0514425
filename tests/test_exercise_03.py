"""Exercise 03 (zero-copy): the netmap port of labkit.course.lessons.zerocopy
(rings, cursors, the kernel's syncs, the NIC's descriptors), and the
notebook's check cells run against the answer and against plausible wrong
answers, each of which some check must catch. No test asserts a time."""
from pathlib import Path

import nbformat
import pytest
from numba import njit

from labkit.course.lessons import zerocopy as zc
from labkit.course.lessons.zerocopy import CUR, HEAD, NS_BUF_CHANGED, TAIL, ring_next, ring_space

ROOT = Path(__file__).resolve().parent.parent
CHECKS = ["forward", "no-copy", "buf-changed", "buffers", "wrap", "room"]


# ---- the port and its kernel ----------------------------------------------------------

def test_a_fresh_port_every_buffer_in_one_slot_cursors_at_start():
    p = zc.Port(slots=8, start=5)
    assert p.rx["buf_idx"].tolist() == list(range(2, 10)) and p.tx["buf_idx"].tolist() == list(range(10, 18))
    assert p.buffer_problem() is None and p.bufs.shape == (18, zc.BUF_SIZE)
    assert p.rxp.tolist() == [5, 5, 5] and p.txp.tolist() == [5, 5, 4]
    assert ring_space(p.rx, p.rxp) == 0 and ring_space(p.tx, p.txp) == 7      # one slot is the kernel's
    assert zc.SLOT.itemsize == 16                                              # struct netmap_slot
    assert [ring_next(p.rx, j) for j in (0, 6, 7)] == [1, 7, 0]
    with pytest.raises(ValueError, match="tx_room"):
        zc.Port(slots=8, tx_room=8)
    with pytest.raises(ValueError, match="start"):
        zc.Port(slots=8, start=8)


def test_receive_fills_all_but_one_slot_drops_the_rest_and_numbers_the_frames():
    p = zc.Port(slots=8, start=6, size="imix")
    assert p.receive(10) == 7 and p.dropped == 3
    assert p.rxp.tolist() == [6, 6, 5] and ring_space(p.rx, p.rxp) == 7
    for i in range(7):
        j = (6 + i) % 8
        assert p.slot_frame(p.rx, j) == p.frame(i)
        assert p.rx[j]["flags"] == 0
    assert p.receive(5) == 0 and p.dropped == 8          # nothing handed back: no room
    assert p.expected(0)[:6] == p.frame(0)[6:12] and p.expected(0)[6:12] == p.frame(0)[:6]


def test_the_answer_forwards_and_the_kernel_takes_the_buffers_back():
    p = zc.Port(slots=16, size="imix")
    p.receive(10)
    rx_bufs = p.rx["buf_idx"][:10].copy()
    before = p.bufs.copy()
    assert zc.ref_forward(*p.args()) == 10
    assert p.tx_problem(0, range(10)) is None
    assert (p.tx["buf_idx"][:10] == rx_bufs).all() and zc.moved_bytes(before, p.bufs, rx_bufs) == (0, None)
    assert (p.rx["flags"][:10] == NS_BUF_CHANGED).all() and (p.tx["flags"][:10] == NS_BUF_CHANGED).all()
    assert p.transmit() == 10 and p.wire_frames() == [p.expected(s) for s in range(10)]
    assert p.wire_buf[:10].tolist() == rx_bufs.tolist()                   # sent from where they arrived
    assert (p.tx["flags"][:10] == 0).all() and p.txp[TAIL] == 9           # flags taken, all completed
    assert p.receive(15) == 15 and (p.rx["flags"] == 0).all() and p.stale == 0
    assert p.buffer_problem() is None
    assert "head 10, cur 10, tail 9" in p.show()


def test_tx_room_and_completions():
    p = zc.Port(slots=16, tx_room=3)
    assert ring_space(p.tx, p.txp) == 3
    p.receive(10)
    assert zc.ref_forward(*p.args()) == 3 and ring_space(p.rx, p.rxp) == 7
    assert p.transmit(complete=2) == 3 and ring_space(p.tx, p.txp) == 2    # 2 of 15 in flight are done
    assert p.transmit() == 0 and ring_space(p.tx, p.txp) == 15


def test_a_swap_without_the_flag_is_not_seen_by_the_nic():
    p = zc.Port(slots=16)
    p.receive(4)

    @njit
    def swap_no_flag(rx, rxp, tx, txp, bufs):
        for i in range(4):
            rx[i].buf_idx, tx[i].buf_idx = tx[i].buf_idx, rx[i].buf_idx
            tx[i].len = rx[i].len
        rxp[HEAD] = rxp[CUR] = 4
        txp[HEAD] = txp[CUR] = 4
        return 4
    swap_no_flag(*p.args())
    p.transmit()
    assert p.stale == 4 and "NS_BUF_CHANGED" in p.stale_problem()
    assert p.wire_buf[:4].tolist() == list(range(18, 22))                  # the TX slots' old buffers
    p.receive(4)
    assert p.stale == 8


@pytest.mark.parametrize("ring,field,value,says", [
    ("rxp", HEAD, 9, "RX head is 9"), ("rxp", CUR, 2, "RX cur is 2"), ("txp", HEAD, 20, "TX head is 20"),
])
def test_the_kernel_refuses_cursors_netmap_would_reset_the_ring_for(ring, field, value, says):
    p = zc.Port(slots=16)
    p.receive(5)
    getattr(p, ring)[HEAD] = getattr(p, ring)[CUR] = 3
    getattr(p, ring)[field] = value
    with pytest.raises(zc.RingError, match=says):
        (p.receive if ring == "rxp" else p.transmit)(1)


def test_the_kernel_refuses_a_reserved_buffer():
    p = zc.Port(slots=16)
    p.receive(5)
    p.rx[0]["buf_idx"] = 1
    p.rxp[HEAD] = p.rxp[CUR] = 1
    with pytest.raises(zc.RingError, match="buf_idx 1, not a buffer of this port"):
        p.receive(1)


def test_buffer_problem_names_lost_and_duplicated_buffers():
    p = zc.Port(slots=8)
    p.tx[3]["buf_idx"] = p.rx[2]["buf_idx"]
    said = p.buffer_problem()
    assert "buffer 4 is in RX slot 2 and TX slot 3" in said and "1 buffer(s) in no slot (first: 13)" in said


def test_run_rounds_accounts_for_every_frame():
    r = zc.run_rounds(zc.ref_forward, slots=16, rounds=100, seed=2)
    assert r.problem is None and r.forwarded == r.sent > 0 and r.received > r.sent and r.dropped > 0


def test_time_forward(monkeypatch):
    monkeypatch.setenv("LABKIT_QUICK", "1")

    @njit
    def nothing(rx, rxp, tx, txp, bufs):
        return 0
    assert zc.time_forward(zc.ref_forward, 64, runs=1, rounds=2) > 0
    assert zc.time_forward(zc.copy_forward, 1514, runs=1, rounds=2) > 0
    assert zc.time_forward(nothing, 64, runs=1, rounds=2) is None
    assert set(zc.measure(zc.copy_forward, nothing, sizes=(64,), runs=1, rounds=2)) == {64}


# ---- the check cells against wrong answers ----------------------------------------------

def _cells(folder):
    nb = nbformat.read(str(ROOT / folder / "03_zero_copy.ipynb"), as_version=4)
    return {c["id"]: c["source"] for c in nb.cells}


def _variants():
    """Plausible wrong answers (compiled with bounds checks, as grading does)."""
    jit = njit(boundscheck=True)

    def no_flags(rx, rxp, tx, txp, bufs):
        n = min(ring_space(rx, rxp), ring_space(tx, txp))
        j, k = rxp[HEAD], txp[HEAD]
        for _ in range(n):
            rs, ts = rx[j], tx[k]
            rs.buf_idx, ts.buf_idx = ts.buf_idx, rs.buf_idx
            ts.len = rs.len
            f = bufs[ts.buf_idx]
            for i in range(6):
                f[i], f[6 + i] = f[6 + i], f[i]
            j, k = ring_next(rx, j), ring_next(tx, k)
        rxp[HEAD] = rxp[CUR] = j
        txp[HEAD] = txp[CUR] = k
        return n

    def index_copy(rx, rxp, tx, txp, bufs):            # TX gets the buffer, RX keeps it too
        n = min(ring_space(rx, rxp), ring_space(tx, txp))
        j, k = rxp[HEAD], txp[HEAD]
        for _ in range(n):
            rs, ts = rx[j], tx[k]
            ts.buf_idx = rs.buf_idx
            ts.len = rs.len
            ts.flags |= NS_BUF_CHANGED
            rs.flags |= NS_BUF_CHANGED
            f = bufs[ts.buf_idx]
            for i in range(6):
                f[i], f[6 + i] = f[6 + i], f[i]
            j, k = ring_next(rx, j), ring_next(tx, k)
        rxp[HEAD] = rxp[CUR] = j
        txp[HEAD] = txp[CUR] = k
        return n

    def no_wrap(rx, rxp, tx, txp, bufs):               # j + 1: runs off the end of the ring
        n = min(ring_space(rx, rxp), ring_space(tx, txp))
        j, k = rxp[HEAD], txp[HEAD]
        for _ in range(n):
            rs, ts = rx[j], tx[k]
            rs.buf_idx, ts.buf_idx = ts.buf_idx, rs.buf_idx
            ts.len = rs.len
            ts.flags |= NS_BUF_CHANGED
            rs.flags |= NS_BUF_CHANGED
            f = bufs[ts.buf_idx]
            for i in range(6):
                f[i], f[6 + i] = f[6 + i], f[i]
            j, k = j + 1, k + 1
        rxp[HEAD] = rxp[CUR] = j
        txp[HEAD] = txp[CUR] = k
        return n

    def no_room(rx, rxp, tx, txp, bufs):               # forwards all of RX, whatever TX has room for
        n = ring_space(rx, rxp)
        j, k = rxp[HEAD], txp[HEAD]
        for _ in range(n):
            rs, ts = rx[j], tx[k]
            rs.buf_idx, ts.buf_idx = ts.buf_idx, rs.buf_idx
            ts.len = rs.len
            ts.flags |= NS_BUF_CHANGED
            rs.flags |= NS_BUF_CHANGED
            f = bufs[ts.buf_idx]
            for i in range(6):
                f[i], f[6 + i] = f[6 + i], f[i]
            j, k = ring_next(rx, j), ring_next(tx, k)
        rxp[HEAD] = rxp[CUR] = j
        txp[HEAD] = txp[CUR] = k
        return n

    def mac_in_old_buffer(rx, rxp, tx, txp, bufs):     # rewrites the buffer RX got back, not the frame
        n = min(ring_space(rx, rxp), ring_space(tx, txp))
        j, k = rxp[HEAD], txp[HEAD]
        for _ in range(n):
            rs, ts = rx[j], tx[k]
            rs.buf_idx, ts.buf_idx = ts.buf_idx, rs.buf_idx
            ts.len = rs.len
            ts.flags |= NS_BUF_CHANGED
            rs.flags |= NS_BUF_CHANGED
            f = bufs[rs.buf_idx]
            for i in range(6):
                f[i], f[6 + i] = f[6 + i], f[i]
            j, k = ring_next(rx, j), ring_next(tx, k)
        rxp[HEAD] = rxp[CUR] = j
        txp[HEAD] = txp[CUR] = k
        return n
    return {name: jit(fn) for name, fn in (("no_flags", no_flags), ("index_copy", index_copy), ("no_wrap", no_wrap),
                                           ("no_room", no_room), ("mac_in_old_buffer", mac_in_old_buffer))}


def _run_checks(forward, ns):
    """Each check cell of the solution, run with ``forward``: {name: None (passed) or the error}."""
    sol = _cells("solutions")
    glb = dict(ns, forward=forward)
    out = {}
    for name in CHECKS:
        try:
            exec(sol[f"check-{name}"], glb)
            out[name] = None
        except Exception as e:                  # an assertion, an IndexError, a RingError
            out[name] = f"{type(e).__name__}: {e}"
    return out


@pytest.fixture(scope="module")
def notebook():
    """The solution's setup and starter, the exercise's and the solution's forward()."""
    sol, exe = _cells("solutions"), _cells("exercises")
    ns = {}
    exec(sol["setup"], ns)
    exec(sol["starter"], ns)
    answer, stub = dict(ns), dict(ns)
    exec(sol["student-zc"], answer)
    exec(exe["student-zc"], stub)
    return ns, answer["forward"], stub["forward"]


def test_the_cells_are_the_ones_checked_here():
    sol = _cells("solutions")
    assert [i[len("check-"):] for i in sol if i.startswith("check-")] == CHECKS


def test_the_answer_passes_every_check_and_the_shipped_stub_none(notebook, capsys):
    ns, answer, stub = notebook
    assert _run_checks(answer, ns) == {name: None for name in CHECKS}
    assert capsys.readouterr().out == "".join(f"check {name}: ok\n" for name in CHECKS)
    failed = _run_checks(stub, ns)
    assert all(failed.values()), failed
    assert "forward() returned 0" in failed["forward"] and "forwarded nothing" in failed["buffers"]


def test_the_copying_starter_fails_the_zero_copy_checks(notebook):
    ns, _, _ = notebook
    res = _run_checks(ns["starter_forward"], ns)
    assert res["forward"] is None and res["buffers"] is None and res["wrap"] is None and res["room"] is None
    assert "swap the indices" in res["no-copy"] and "bytes of the buffer area changed" in res["no-copy"]
    assert "lack NS_BUF_CHANGED" in res["buf-changed"]


@pytest.mark.parametrize("variant,fails,says", [
    ("no_flags", {"buf-changed", "wrap"}, "NS_BUF_CHANGED"),
    ("index_copy", {"no-copy", "buffers"}, "in two slots"),
    ("no_wrap", {"wrap", "buffers", "buf-changed"}, "after slot 15 comes slot 0"),
    ("no_room", {"room", "buffers"}, "room for 10 in TX"),
    ("mac_in_old_buffer", {"forward", "wrap", "room"}, "swap its destination"),
])
def test_each_wrong_answer_fails_the_checks_about_its_mistake(notebook, variant, fails, says):
    ns, _, _ = notebook
    res = _run_checks(_variants()[variant], ns)
    assert {name for name, err in res.items() if err} == fails, res
    assert any(says in err for err in res.values() if err), res
