"""Exercise 03 (zero-copy): a netmap port in numpy, its "kernel", and timers.

netmap (sys/net/netmap.h) gives an application, for each NIC queue, a ring of
*slots* in memory it shares with the kernel, and one area of fixed-size
buffers shared by all the rings of all the ports in netmap mode. A slot does
not hold a frame, it names the buffer that does::

    struct netmap_slot { uint32_t buf_idx; uint16_t len; uint16_t flags; uint64_t ptr; };

``SLOT`` is that struct as a numpy dtype: a ring is an array of ``SLOT`` (in
numba, ``rx[j].buf_idx``), and its cursors are an int64 array ``p`` with
``p[HEAD]``, ``p[CUR]`` and ``p[TAIL]`` (netmap's ``ring->head``, ``cur``,
``tail``). The slots from head up to tail - 1 (wrapping at the end) are the
application's: received frames in an RX ring, free slots in a TX ring. The
application moves head (and cur, here always with it) past the slots it is done
with; the kernel takes them at its next sync (``NIOCRXSYNC``/``NIOCTXSYNC``,
``poll()``) and moves tail. One slot is always the kernel's, so head == tail
means "nothing for you" (``nm_ring_empty``), never "all for you". Buffer i is
``bufs[i]`` (netmap's ``NETMAP_BUF(ring, i)``); buffers 0 and 1 are reserved,
as in netmap, so a slot naming them is a bug.

Zero-copy forwarding (netmap(4), "ZERO-COPY FORWARDING"; apps/bridge/bridge.c,
``rings_move``) swaps the buffer indices of an RX slot and a TX slot: the frame
goes out from the buffer it was received into, and the TX slot's free buffer
refills the RX ring. A slot whose ``buf_idx`` changed must carry
``NS_BUF_CHANGED``: the driver then points the NIC descriptor of that slot at
the new buffer (ixgbe_netmap.h: ``if (slot->flags & NS_BUF_CHANGED)
netmap_reload_map(...)``) and clears the flag.

``Port`` is one netmap port: an RX ring, a TX ring, the buffer area and the
"kernel" (``receive``: the NIC's DMA of new frames and the RX sync;
``transmit``: the TX sync, the NIC sending, completions). Its NIC keeps a
descriptor per slot that names the buffer it DMAs into or from, as a NIC's
own ring does, and re-reads a slot's buf_idx only when NS_BUF_CHANGED says so:
a swap without the flag sends the wrong bytes, and receives into a buffer that
now waits in the TX ring. (Some drivers write every descriptor's address at
every sync anyway; the flag is netmap's contract, and what drivers that keep a
DMA mapping per descriptor rely on.) The kernel checks the cursors as netmap's
sync prologues do and raises ``RingError`` where netmap would reset the ring.

Frames come from labkit's traffic generator, each with its sequence number
(uint32, little-endian) at byte ``SEQ_OFF``, so a check can tell which frame
is where. ``ref_forward`` is the answer (bridge.c's zero-copy branch plus the
l2fwd rewrite), ``copy_forward`` the starter (bridge.c's copy branch),
``run_rounds`` runs a forwarder for many rounds of random bursts and checks
that every buffer stays in exactly one slot, and ``time_forward`` measures TSC
cycles per frame of ``forward()`` alone.
"""
import statistics
from collections import namedtuple

import numpy as np
from numba import njit

from labkit.course import exercise as ex
from labkit.memory.intrinsics import rdtsc

SLOT = np.dtype([("buf_idx", np.uint32), ("len", np.uint16), ("flags", np.uint16), ("ptr", np.uint64)])
NS_BUF_CHANGED = 0x0001          # netmap.h: "must be set whenever buf_idx is changed"
HEAD, CUR, TAIL = 0, 1, 2        # a ring's cursors: p[HEAD], p[CUR], p[TAIL]
BUF_SIZE = 2048                  # netmap's default buffer size
FIRST_BUF = 2                    # buffers 0 and 1 are reserved
SEQ_OFF = ex.SEQ_OFF
FILL = 0xEE                      # what a buffer holds before a frame is written into it

# the kernel's state of one ring (int64 array), netmap's struct netmap_kring
K_HWCUR, K_HWTAIL, K_STALE, K_DONE, K_DROPPED, K_SEQ, K_ERR_SLOT, K_ERR_VAL = range(8)
K_SIZE = 16
# what a sync returns
OK, ERR_HEAD, ERR_CUR, ERR_BUF, ERR_LEN = 0, 1, 2, 3, 4


class RingError(Exception):
    """A sync found the ring in a state netmap would answer with a ring reset."""


# ---- netmap_user.h --------------------------------------------------------------

@njit(nogil=True, cache=True)
def ring_next(slots, i):
    """nm_ring_next: the slot after slot i, 0 after the last."""
    return 0 if i + 1 == slots.size else i + 1


@njit(nogil=True, cache=True)
def ring_space(slots, p):
    """nm_ring_space: how many slots are the application's, head up to tail - 1
    (received frames in an RX ring, free slots in a TX ring)."""
    n = p[TAIL] - p[HEAD]
    if n < 0:
        n += slots.size
    return n


# ---- the answer, and the starter --------------------------------------------------

@njit(nogil=True, cache=True)
def ref_forward(rx, rxp, tx, txp, bufs):
    """Zero-copy l2fwd: as many frames as RX holds and TX has room for; each
    leaves in the buffer it arrived in, its MACs swapped in place."""
    n = min(ring_space(rx, rxp), ring_space(tx, txp))
    j, k = rxp[HEAD], txp[HEAD]
    for _ in range(n):
        rs, ts = rx[j], tx[k]
        b = ts.buf_idx                     # swap the buffers: no byte moves
        ts.buf_idx = rs.buf_idx
        rs.buf_idx = b
        ts.len = rs.len
        ts.flags |= NS_BUF_CHANGED         # tell the kernel: the NIC must use the new buffers
        rs.flags |= NS_BUF_CHANGED
        f = bufs[ts.buf_idx]
        for i in range(6):                 # l2fwd: swap destination (0-5) and source (6-11) MAC
            f[i], f[6 + i] = f[6 + i], f[i]
        j, k = ring_next(rx, j), ring_next(tx, k)
    rxp[HEAD] = rxp[CUR] = j
    txp[HEAD] = txp[CUR] = k
    return n


@njit(nogil=True, cache=True)
def copy_forward(rx, rxp, tx, txp, bufs):
    """The same forwarding with a copy of every byte into the TX slot's own buffer."""
    n = min(ring_space(rx, rxp), ring_space(tx, txp))
    j, k = rxp[HEAD], txp[HEAD]
    for _ in range(n):
        rs, ts = rx[j], tx[k]
        src, dst = bufs[rs.buf_idx], bufs[ts.buf_idx]
        length = rs.len
        for i in range(length):
            dst[i] = src[i]
        ts.len = length
        for i in range(6):
            dst[i], dst[6 + i] = dst[6 + i], dst[i]
        j, k = ring_next(rx, j), ring_next(tx, k)
    rxp[HEAD] = rxp[CUR] = j
    txp[HEAD] = txp[CUR] = k
    return n


# ---- the kernel: RX and TX sync, the NIC ------------------------------------------

@njit(nogil=True, cache=True)
def _within(a, x, b, n):
    """x in [a, b] on a ring of n slots (going forward from a)."""
    return (x - a) % n <= (b - a) % n


@njit(nogil=True, cache=True)
def _prologue(slots, p, k, bufs):
    """nm_rxsync_prologue / nm_txsync_prologue, and a look at the slots handed
    back: head within [hwcur, hwtail], cur within [head, hwtail], every buf_idx
    a buffer of the port, every len within a buffer. OK or an error code (the
    slot or value in k[K_ERR_SLOT], k[K_ERR_VAL]); nothing is changed on error."""
    n = slots.size
    nbufs, size = bufs.shape[0], bufs.shape[1]
    head, cur = p[HEAD], p[CUR]
    if head < 0 or head >= n or not _within(k[K_HWCUR], head, k[K_HWTAIL], n):
        k[K_ERR_VAL] = head
        return ERR_HEAD
    if cur < 0 or cur >= n or not _within(head, cur, k[K_HWTAIL], n):
        k[K_ERR_VAL] = cur
        return ERR_CUR
    j = k[K_HWCUR]
    while j != head:
        b = slots[j].buf_idx
        if b < FIRST_BUF or b >= nbufs:
            k[K_ERR_SLOT], k[K_ERR_VAL] = j, b
            return ERR_BUF
        if slots[j].len > size:
            k[K_ERR_SLOT], k[K_ERR_VAL] = j, slots[j].len
            return ERR_LEN
        j = ring_next(slots, j)
    return OK


@njit(nogil=True, cache=True)
def _take_back(slots, desc, k, j):
    """The driver takes slot j back: a new buffer (NS_BUF_CHANGED) is given to
    the NIC's descriptor; a buf_idx changed without the flag is not seen (the
    NIC keeps the old buffer) and counted as stale. The flag is cleared."""
    s = slots[j]
    if s.flags & NS_BUF_CHANGED:
        desc[j] = s.buf_idx
        s.flags &= ~NS_BUF_CHANGED
    elif s.buf_idx != desc[j]:
        k[K_STALE] += 1


@njit(nogil=True, cache=True)
def _rxsync(rx, rxp, k, desc, bufs, templates, lengths, order, count):
    """The slots the application gave back (hwcur up to head) are the NIC's
    again, then up to ``count`` new frames arrive: the NIC writes each into the
    buffer its descriptor names, the slot gets its length. A full ring drops
    the rest (one slot stays the kernel's). Returns OK or an error code."""
    err = _prologue(rx, rxp, k, bufs)
    if err != OK:
        return err
    head = rxp[HEAD]
    j = k[K_HWCUR]
    while j != head:
        _take_back(rx, desc, k, j)
        j = ring_next(rx, j)
    k[K_HWCUR] = head
    t = k[K_HWTAIL]
    for i in range(count):
        nxt = ring_next(rx, t)
        if nxt == head:
            k[K_DROPPED] += count - i
            break
        seq = k[K_SEQ]
        f = order[seq % order.size]
        length = lengths[f]
        buf = bufs[desc[t]]
        for b in range(length):
            buf[b] = templates[f, b]
        for b in range(4):
            buf[SEQ_OFF + b] = (seq >> (8 * b)) & 0xFF
        rx[t].len = length
        rx[t].flags = 0
        k[K_SEQ] = seq + 1
        k[K_DONE] += 1
        t = nxt
    k[K_HWTAIL] = t
    rxp[TAIL] = t
    return OK


@njit(nogil=True, cache=True)
def _txsync(tx, txp, k, desc, bufs, complete, wire, wire_len, wire_buf, record):
    """The slots the application filled (hwcur up to head) go to the NIC, which
    sends each from the buffer its descriptor names (``record``: into ``wire``,
    frame i at wire[i], as long as there is room); then ``complete`` of the
    frames in flight (all if negative) are done and their slots free again
    (tail moves). Returns OK or an error code."""
    err = _prologue(tx, txp, k, bufs)
    if err != OK:
        return err
    n = tx.size
    head = txp[HEAD]
    j = k[K_HWCUR]
    while j != head:
        _take_back(tx, desc, k, j)
        if record:
            i = k[K_DONE]
            if i < wire.shape[0]:
                length = tx[j].len
                src = bufs[desc[j]]
                for b in range(length):
                    wire[i, b] = src[b]
                wire_len[i] = length
                wire_buf[i] = desc[j]
        k[K_DONE] += 1
        j = ring_next(tx, j)
    k[K_HWCUR] = head
    in_flight = (head - 1 - k[K_HWTAIL]) % n
    m = in_flight if complete < 0 else min(complete, in_flight)
    k[K_HWTAIL] = (k[K_HWTAIL] + m) % n
    txp[TAIL] = k[K_HWTAIL]
    return OK


Frames = namedtuple("Frames", "templates lengths order")


def _frames(size, seed, flows=64, n=1024):
    s = ex.make_stream(n, size=size, flows=flows, seed=seed)
    return Frames(s.templates, s.lengths, s.order)


class Port:
    """One netmap port: ``rx`` and ``tx`` (arrays of SLOT, ``slots`` each),
    their cursors ``rxp`` and ``txp``, the buffer area ``bufs`` (2 + 2 *
    slots buffers of BUF_SIZE bytes), and the kernel.

    A fresh port: every cursor at slot ``start``; RX empty (head == tail), TX
    with room for ``tx_room`` frames (default slots - 1, all free but the one
    the kernel keeps; fewer means the NIC is still sending the others). RX
    slot j holds buffer 2 + j, TX slot j buffer 2 + slots + j. ``receive``
    and ``transmit`` are the kernel's syncs; frames carry their sequence number
    at SEQ_OFF, the first one received is 0. ``wire`` frames sent are kept
    (their bytes, and which buffer the NIC sent each from)."""

    def __init__(self, slots=64, size="imix", seed=1, start=0, tx_room=None, wire=1024):
        if not isinstance(slots, (int, np.integer)) or slots < 2:
            raise ValueError(f"slots={slots!r}: a ring needs at least 2 slots")
        if not 0 <= start < slots:
            raise ValueError(f"start={start!r}: a slot of the ring, 0 to {slots - 1}")
        tx_room = slots - 1 if tx_room is None else tx_room
        if not 0 <= tx_room <= slots - 1:
            raise ValueError(f"tx_room={tx_room!r}: 0 to {slots - 1} (one slot is always the kernel's)")
        self.slots = int(slots)
        self.bufs = np.full((FIRST_BUF + 2 * slots, BUF_SIZE), FILL, np.uint8)
        self.rx, self.tx = np.zeros(slots, SLOT), np.zeros(slots, SLOT)
        self.rx["buf_idx"] = FIRST_BUF + np.arange(slots)
        self.tx["buf_idx"] = FIRST_BUF + slots + np.arange(slots)
        self.rxp = np.array([start, start, start], np.int64)
        self.txp = np.array([start, start, (start + tx_room) % slots], np.int64)
        self.rxk, self.txk = np.zeros(K_SIZE, np.int64), np.zeros(K_SIZE, np.int64)
        self.rxk[K_HWCUR] = self.rxk[K_HWTAIL] = start
        self.txk[K_HWCUR], self.txk[K_HWTAIL] = start, self.txp[TAIL]
        self.rx_desc, self.tx_desc = self.rx["buf_idx"].copy(), self.tx["buf_idx"].copy()
        self.frames = _frames(size, seed)
        self.wire = np.zeros((wire, BUF_SIZE), np.uint8)
        self.wire_len, self.wire_buf = np.zeros(wire, np.int64), np.zeros(wire, np.int64)

    def args(self):
        """What forward() takes: (rx, rxp, tx, txp, bufs)."""
        return self.rx, self.rxp, self.tx, self.txp, self.bufs

    # -- the kernel --

    def receive(self, n):
        """RX sync: take back the slots before head, then n frames arrive (as
        many as fit; the rest are dropped). Returns how many arrived."""
        before = int(self.rxk[K_DONE])
        t = self.frames
        err = _rxsync(self.rx, self.rxp, self.rxk, self.rx_desc, self.bufs, t.templates, t.lengths, t.order, int(n))
        self._raise(err, "RX", self.rx, self.rxp, self.rxk)
        return int(self.rxk[K_DONE]) - before

    def transmit(self, complete=None, record=True):
        """TX sync: the slots before head are sent, then ``complete`` frames in
        flight (default all) are done and their slots free again. Returns how
        many were sent."""
        before = int(self.txk[K_DONE])
        err = _txsync(self.tx, self.txp, self.txk, self.tx_desc, self.bufs, -1 if complete is None else int(complete),
                      self.wire, self.wire_len, self.wire_buf, record)
        self._raise(err, "TX", self.tx, self.txp, self.txk)
        return int(self.txk[K_DONE]) - before

    def _raise(self, err, name, slots, p, k):
        if err == OK:
            return
        head, cur, tail, hwcur = int(p[HEAD]), int(p[CUR]), int(k[K_HWTAIL]), int(k[K_HWCUR])
        val, slot = int(k[K_ERR_VAL]), int(k[K_ERR_SLOT])
        if err == ERR_HEAD:
            why = (f"{name} head is {head}: it may only move forward from {hwcur} (where the kernel left it) "
                   f"up to tail {tail}; slots from tail on are the kernel's")
        elif err == ERR_CUR:
            why = (f"{name} cur is {cur}, outside head {head} .. tail {tail}: move head and cur together "
                   f"(p[HEAD] = p[CUR] = ...)")
        elif err == ERR_BUF:
            why = (f"{name} slot {slot} holds buf_idx {val}, not a buffer of this port "
                   f"({FIRST_BUF} to {self.bufs.shape[0] - 1})")
        else:
            why = f"{name} slot {slot} has len {val}, more than a buffer holds ({BUF_SIZE})"
        raise RingError(f"the kernel's {name} sync: {why} (netmap would reset the ring)")

    # -- what the checks look at --

    @property
    def stale(self):
        """Slots the kernel took back whose buf_idx had changed without NS_BUF_CHANGED."""
        return int(self.rxk[K_STALE] + self.txk[K_STALE])

    @property
    def received(self):
        return int(self.rxk[K_DONE])

    @property
    def dropped(self):
        return int(self.rxk[K_DROPPED])

    @property
    def sent(self):
        return int(self.txk[K_DONE])

    def frame(self, seq):
        """Frame ``seq`` as it arrived, as bytes."""
        t = self.frames
        f = t.order[seq % t.order.size]
        b = bytearray(t.templates[f, :t.lengths[f]].tobytes())
        b[SEQ_OFF:SEQ_OFF + 4] = int(seq).to_bytes(4, "little")
        return bytes(b)

    def expected(self, seq):
        """Frame ``seq`` as it should leave: destination and source MAC swapped."""
        b = bytearray(self.frame(seq))
        b[0:6], b[6:12] = b[6:12], b[0:6]
        return bytes(b)

    def slot_frame(self, slots, j):
        """The bytes slot j of ``slots`` (self.rx or self.tx) points at."""
        s = slots[j]
        return self.bufs[int(s["buf_idx"]) % self.bufs.shape[0], :int(s["len"])].tobytes()

    def wire_frames(self):
        """The frames the NIC sent, in order (as many as the wire kept)."""
        n = min(self.sent, self.wire.shape[0])
        return [self.wire[i, :self.wire_len[i]].tobytes() for i in range(n)]

    def stale_problem(self):
        if self.stale == 0:
            return None
        return (f"the kernel took back {self.stale} slot(s) whose buf_idx had changed without NS_BUF_CHANGED: "
                f"the NIC kept using the old buffers (set slot.flags |= NS_BUF_CHANGED on both slots of a swap)")

    def tx_problem(self, first, seqs):
        """None if the TX slots from ``first`` on (wrapping) hold frames ``seqs``
        with their MACs swapped, in that order; else what is wrong, in words."""
        for i, seq in enumerate(seqs):
            k = (first + i) % self.slots
            got, want = self.slot_frame(self.tx, k), self.expected(seq)
            if got == want:
                continue
            where = f"TX slot {k} (frame {seq}, the {_nth(i + 1)} forwarded)"
            if len(got) != len(want):
                return (f"{where} has len {len(got)}, the frame has {len(want)} bytes: copy the length "
                        f"(ts.len = rs.len)")
            if got == self.frame(seq):
                return f"{where} is the frame as it arrived: swap its destination (bytes 0-5) and source (6-11) MAC"
            got_seq = int.from_bytes(got[SEQ_OFF:SEQ_OFF + 4], "little") if len(got) >= SEQ_OFF + 4 else -1
            if got_seq != seq and 0 <= got_seq < self.received:
                return f"{where} holds frame {got_seq}: the frames must leave in the order they arrived"
            return (f"{where} is not the frame with its MACs swapped (first wrong byte: "
                    f"{next(b for b in range(len(got)) if got[b] != want[b])})")
        return None

    def buffer_problem(self):
        """None if every buffer of the port is in exactly one slot; else which
        are lost and which are in two slots."""
        where = {}
        for name, slots in (("RX", self.rx), ("TX", self.tx)):
            for j, b in enumerate(slots["buf_idx"].tolist()):
                where.setdefault(b, []).append(f"{name} slot {j}")
        twice = {b: w for b, w in where.items() if len(w) > 1}
        lost = sorted(set(range(FIRST_BUF, self.bufs.shape[0])) - set(where))
        if not twice and not lost:
            return None
        parts = []
        if twice:
            b, w = next(iter(sorted(twice.items())))
            parts.append(f"{len(twice)} buffer(s) in two slots (buffer {b} is in {' and '.join(w)})")
        if lost:
            parts.append(f"{len(lost)} buffer(s) in no slot (first: {lost[0]})")
        return "; ".join(parts)

    # -- for reading --

    def __str__(self):
        return self.show()

    def show(self, frames=True):
        """Both rings, a line per slot: its buffer, length, flags, the frame's
        sequence number and MACs where the slot holds a frame, and the cursors."""
        lines = []
        for name, slots, p, k in (("RX", self.rx, self.rxp, self.rxk), ("TX", self.tx, self.txp, self.txk)):
            head, cur, tail = (int(x) for x in p[:3])
            n = ring_space(slots, p)
            what = "frames for you" if name == "RX" else "free slots for you"
            lines.append(f"{name} ring: {self.slots} slots, head {head}, cur {cur}, tail {tail}: {n} {what}")
            lines.append(f"  slot  buf_idx   len  flags         frame")
            hwcur = int(k[K_HWCUR])
            for j in range(self.slots):
                s = slots[j]
                marks = [m for m, v in (("head", head), ("cur", cur), ("tail", tail)) if v == j]
                held = (j - head) % self.slots < (tail - head) % self.slots if name == "RX" else \
                    (j - hwcur) % self.slots < (head - hwcur) % self.slots
                desc = ""
                if frames and held and s["len"] >= SEQ_OFF + 4:
                    f = self.bufs[int(s["buf_idx"]) % self.bufs.shape[0]]
                    seq = int.from_bytes(f[SEQ_OFF:SEQ_OFF + 4].tobytes(), "little")
                    desc = f"#{seq:<4} dst {f[0:6].tobytes().hex(':')} src {f[6:12].tobytes().hex(':')}"
                flags = "CHANGED" if s["flags"] & NS_BUF_CHANGED else "-"
                lines.append(f"  {j:4} {int(s['buf_idx']):8} {int(s['len']):5}  {flags:7}  {desc:46}"
                             f"{'  <- ' + ', '.join(marks) if marks else ''}".rstrip())
        return "\n".join(lines)


def _nth(i):
    return f"{i}{'th' if 10 <= i % 100 < 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(i % 10, 'th')}"


def moved_bytes(before, after, forwarded):
    """Bytes of the buffer area that changed from ``before`` to ``after``,
    leaving out the MAC addresses (bytes 0-11) of the buffers in ``forwarded``
    (the frames' own buffers, where the l2fwd rewrite belongs): (how many,
    the first buffer with one, or None)."""
    diff = before != after
    rows = np.asarray(forwarded, np.int64)
    diff[rows, 0:12] = False
    changed = np.flatnonzero(diff.any(axis=1))
    return int(diff.sum()), (int(changed[0]) if changed.size else None)


# ---- many rounds: every buffer in exactly one slot ----------------------------------------

Rounds = namedtuple("Rounds", "received forwarded sent dropped problem")


def run_rounds(forward, slots=32, rounds=200, seed=5, size="imix"):
    """``rounds`` rounds of: a burst of 0 to 1.5 * slots frames arrives (RX
    sync; a full ring drops the rest), ``forward(*port.args())``, the TX sync
    (a random number of the frames in flight complete, sometimes none, so TX
    room varies). After every forward() every buffer must be in exactly one
    slot, and every frame received must be sent or still waiting in RX.
    Returns Rounds(received, forwarded, sent, dropped, problem): problem is
    None or the first thing that went wrong, in words."""
    rng = np.random.default_rng(seed)
    port = Port(slots=slots, size=size, seed=seed, start=int(rng.integers(slots)), wire=1)
    forwarded = 0
    problem = None
    for r in range(rounds):
        port.receive(int(rng.integers(0, slots + slots // 2 + 1)))
        n = int(forward(*port.args()))
        forwarded += max(n, 0)
        bad = port.buffer_problem()
        if bad:
            problem = f"after forward() in round {r + 1}: {bad}"
            break
        c = int(rng.integers(0, slots)) if rng.random() < 0.7 else -1
        port.transmit(complete=None if c < 0 else c, record=False)
        waiting = ring_space(port.rx, port.rxp)
        if port.received != port.sent + waiting:
            problem = (f"round {r + 1}: {port.received} frames received, {port.sent} sent and {waiting} waiting "
                       f"in RX: forward() returned {n}, but moved a different number of slots")
            break
    return Rounds(port.received, forwarded, port.sent, port.dropped, problem)


# ---- timing forward() alone ---------------------------------------------------------

@njit(nogil=True)
def _bench(fn, rx, rxp, rxk, rx_desc, tx, txp, txk, tx_desc, bufs, templates, lengths, order,
           wire, wire_len, wire_buf, cycles, frames, err):
    """cycles.size rounds of: RX fills up, forward(), everything sent and
    completed. Only forward() is timed: cycles[r] and frames[r] of round r.
    err = [error of the RX sync, error of the TX sync]."""
    for r in range(cycles.size):
        e = _rxsync(rx, rxp, rxk, rx_desc, bufs, templates, lengths, order, rx.size)
        if e != OK:
            err[0] = e
            return
        t0 = rdtsc()
        n = fn(rx, rxp, tx, txp, bufs)
        cycles[r] = rdtsc() - t0
        frames[r] = n
        e = _txsync(tx, txp, txk, tx_desc, bufs, -1, wire, wire_len, wire_buf, False)
        if e != OK:
            err[1] = e
            return


def time_forward(fn, size, runs=None, rounds=None, slots=256):
    """TSC cycles per frame of ``fn(rx, rxp, tx, txp, bufs)`` forwarding
    ``size``-byte frames between two rings of ``slots``, each call on a full RX
    ring that the kernel has just written (so the frames are in cache). A run
    is ``rounds`` calls, timed one by one; its number is the median call (so a
    call during which the OS ran something else does not count); the result is
    the median of ``runs`` runs. None if fn forwarded nothing."""
    runs = runs or (3 if ex.quick() else 7)
    rounds = rounds or (20 if ex.quick() else 400)
    port = Port(slots=slots, size=size, wire=1)
    t = port.frames
    err = np.zeros(2, np.int64)

    def one(r):
        cycles, frames = np.zeros(r, np.int64), np.zeros(r, np.int64)
        _bench(fn, port.rx, port.rxp, port.rxk, port.rx_desc, port.tx, port.txp, port.txk, port.tx_desc,
               port.bufs, t.templates, t.lengths, t.order, port.wire, port.wire_len, port.wire_buf,
               cycles, frames, err)
        port._raise(int(err[0]), "RX", port.rx, port.rxp, port.rxk)
        port._raise(int(err[1]), "TX", port.tx, port.txp, port.txk)
        if (frames <= 0).any():
            return None
        return float(np.median(cycles / frames))

    if one(2) is None:                         # compile, warm up; a forward() that forwards nothing
        return None
    per = [one(rounds) for _ in range(runs)]
    return statistics.median(per) if all(p is not None for p in per) else None


def measure(starter, yours, sizes=(64, 512, 1514), runs=None, rounds=None):
    """{size: (starter cycles/frame, yours or None)} for each frame size."""
    return {s: (time_forward(starter, s, runs, rounds), time_forward(yours, s, runs, rounds)) for s in sizes}
