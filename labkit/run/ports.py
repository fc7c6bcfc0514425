"""The ports: what each engine's run loop does around the graph.

A port fills the gaps of the skeleton in ``labkit.run.loopgen`` with lines of
its own, written at the loop body's indentation. Five ports, four builders:

``memory``   the single-queue in-memory NIC (``labkit.nic.memory``);
``device`` / ``dispatch``
             one worker of the multi-queue in-memory NIC
             (``labkit.nic.multiqueue``), fed by RSS in the device or by a
             dispatcher thread through its RX ring (spinlocked with
             ``Knobs(sync="lock")``);
``ring``     zero-copy on veth: frames are processed where the kernel wrote
             them, in the AF_PACKET RX ring (handles are byte offsets into
             it), then copied once into the TX ring; one ``send()`` kicks a
             whole batch (``labkit.nic.afpacket``);
``socket`` / ``tap``
             the classic path: one ``recv()``/``read()`` per frame into a
             fresh buffer from the pool, one ``send()``/``write()`` per
             forwarded frame.

Drop reasons are the generated module's constants (``MEMPOOL_EMPTY``,
``TX_FULL``...: ``labkit.graph.compile`` writes them from the graph's
declared reasons). On the in-memory NICs, ``copy=True`` copies every frame
into a fresh buffer on the way in and out, as recv()/send() would.
"""
from dataclasses import dataclass, field
from typing import List, Tuple

KINDS = ("memory", "device", "dispatch", "ring", "socket", "tap")

# nst of a DUT on veth or TAP: its counters
(N_RX, N_TX, N_DUT_CYC, N_NIC_CYC, N_STOP, N_ERR, N_LAST_BUSY, N_POLLS, N_BUSY_ITER,
 N_KICKS, N_CAP_N, N_CAP_BYTES, N_CAP_LOST) = range(13)
NET_NST = ("N_RX", "N_TX", "N_DUT_CYC", "N_NIC_CYC", "N_STOP", "N_ERR", "N_LAST_BUSY", "N_POLLS", "N_BUSY_ITER",
           "N_KICKS", "N_CAP_N", "N_CAP_BYTES", "N_CAP_LOST")
NST_SIZE = 16


@dataclass
class Port:
    """The lines one port puts in the skeleton's gaps (see ``labkit.run.loopgen``)."""
    kind: str
    args: str                       # run_slice's arguments (the graph's tables follow)
    doc: str
    imports: List[str]
    compiled: Tuple[str, ...]       # imported compiled functions: their Python twin when jit is off
    setup: List[str] = field(default_factory=list)
    reclaim: List[str] = field(default_factory=list)
    rx: List[str] = field(default_factory=list)
    idle: List[str] = field(default_factory=list)
    after_rx: List[str] = field(default_factory=list)
    tx: List[str] = field(default_factory=list)
    account: List[str] = field(default_factory=list)
    tail: List[str] = field(default_factory=list)
    byte_handles: bool = False      # handles are byte offsets (an AF_PACKET ring), not 64-byte lines
    fanout: bool = False            # one of several workers on a PACKET_FANOUT group (ring)


def _allocator(knobs):
    return ("stack_alloc", "stack_free") if knobs.mempool else ("heap_alloc", "heap_free")


def _vector(knobs):
    """How packet i's handle and length are named in the first node's frame (SoA or AoS)."""
    if knobs.layout == "aos":
        return "frames_x[0][i]['handle']", "frames_x[0][i]['length']"
    return "frames_h[0, i]", "frames_l[0, i]"


def _dequeue(knobs):
    if knobs.layout == "aos":
        return "ring_dequeue_aos(rx_desc, rx_cur, frames_x[0], batch)"
    return "ring_dequeue(rx_desc, rx_cur, frames_h[0], frames_l[0], tmp_hash, batch)"


def _indented(lines, by=4):
    return [" " * by + line for line in lines]


# --- the in-memory NICs ----------------------------------------------------------------------

def copy_lines(knobs):
    """copy=True on an in-memory NIC: (lines after RX, lines before the TX enqueue). As
    recv()/send() do, every frame is copied into a fresh buffer on the way in and on the
    way out, and the original is freed."""
    if not knobs.copy:
        return [], []
    alloc, free = _allocator(knobs)
    rx_h, rx_l = _vector(knobs)
    copy_rx = [
        f"m = {alloc}(pa, pb, tmp_h, n)",
        "for i in range(n):",
        f"    old = np.int64({rx_h}) << LINE_SHIFT",
        f"    free_h[i] = {rx_h}",
        "    if i < m:",
        "        new = np.int64(tmp_h[i]) << LINE_SHIFT",
        f"        ln = np.int64({rx_l})",
        "        for j in range(DATA_OFF + ln):   # memcpy: slice assignment would need NRT",
        "            arena[new + j] = arena[old + j]",
        f"        {rx_h} = tmp_h[i]",
        f"{free}(pa, pb, free_h, n)",
        "if m < n:",
        "    counters[MEMPOOL_EMPTY] += n - m",
        "    n = m",
    ]
    copy_tx = [
        f"m = {alloc}(pa, pb, tmp_h, n_tx)",
        "for i in range(n_tx):",
        "    if i < m:",
        "        old = np.int64(tx_h[i]) << LINE_SHIFT",
        "        new = np.int64(tmp_h[i]) << LINE_SHIFT",
        "        ln = np.int64(tx_l[i])",
        "        for j in range(DATA_OFF, DATA_OFF + ln):",
        "            arena[new + j] = arena[old + j]",
        "    free_h[i] = tx_h[i]",
        "    tx_h[i] = tmp_h[i]",
        f"{free}(pa, pb, free_h, n_tx)",
        "if m < n_tx:",
        "    counters[MEMPOOL_EMPTY] += n_tx - m",
        "    n_tx = m",
    ]
    return copy_rx, copy_tx


def _to_tx_ring(knobs, copy_tx, bumps=()):
    """Free what the graph dropped; post the rest on the TX ring. What does not fit is
    dropped as tx_full: queueing it would only add latency (ixy's forwarder says so)."""
    _, free = _allocator(knobs)
    return [
        "if n_free > 0:",
        f"    {free}(pa, pb, free_h, n_free)",
        "if n_tx > 0:",
        *_indented(copy_tx),
        "    s = ring_enqueue(tx_desc, tx_cur, tx_h, tx_l, tmp_hash, n_tx)",
        *_indented(bumps),
        "    if s < n_tx:",
        "        counters[TX_FULL] += n_tx - s",
        f"        {free}(pa, pb, tx_h[s:], n_tx - s)",
    ]


RING_FUNCS = ("ring_enqueue", "ring_dequeue", "ring_dequeue_aos", "ring_count")


def memory_port(g, knobs):
    """The single-queue in-memory NIC: TX completions, RX refill (the device's "DMA",
    its cycles counted apart as NIC cycles), then the data plane."""
    alloc, free = _allocator(knobs)
    copy_rx, copy_tx = copy_lines(knobs)
    return Port(
        kind="memory",
        args=("arena, pa, pb, rx_desc, rx_cur, tx_desc, tx_cur, frames, flens, seq, max_frame,\n"
              "              cap_data, cap_len, nst, budget, stop_tsc, slice_end_tsc, batch,\n"
              "              t_start, cyc_per_pkt, stamp_at, hist,\n"
              "              frames_h, frames_l, frames_x, counts, tx_h, tx_l, free_h, tmp_h, tmp_l, "
              "tmp_hash, counters, stats"),
        doc="Run until the slice ends (returns False) or all is done (True).",
        imports=[f"from labkit.memory.mempool import {alloc}, {free}",
                 "from labkit.memory.ring import " + ", ".join(RING_FUNCS),
                 "from labkit.nic.memory import nic_rx_dma, nic_rx_missed, nic_tx_collect, SENT, DUT_CYC, "
                 "NIC_CYC, STOPPED"],
        compiled=(alloc, free, *RING_FUNCS, "nic_rx_dma", "nic_rx_missed", "nic_tx_collect"),
        setup=["ring_size = rx_desc.size"],
        reclaim=[
            "k = nic_tx_collect(arena, tx_desc, tx_cur, tmp_h, tmp_l, tmp_hash, max_frame, cap_data, cap_len, "
            "nst, counters, hist)",
            "t1 = rdtsc()",
            "nic = t1 - t0",
            "if k > 0:",
            f"    {free}(pa, pb, tmp_h, k)",
            "if nst[STOPPED] == 0 and (nst[SENT] >= budget or t0 >= stop_tsc):",
            "    nst[STOPPED] = 1",
            "if nst[STOPPED] == 0:",
            "    due = budget - nst[SENT]",
            "    room = ring_size - ring_count(rx_cur)",
            "    if cyc_per_pkt > 0:        # open loop: the frames the clock says have arrived by now",
            "        due = min(due, np.int64((t0 - t_start) / cyc_per_pkt) + 1 - nst[SENT])",
            "    want = min(room, due, tmp_h.size)",
            "    if want > 0:",
            f"        got = {alloc}(pa, pb, tmp_h, want)",
            "        t2 = rdtsc()",
            "        used = nic_rx_dma(arena, tmp_h, got, want, frames, flens, seq, max_frame, rx_desc, rx_cur, "
            "tmp_l, tmp_hash, nst, counters,",
            "                          stamp_at, hist, t_start, cyc_per_pkt)",
            "        nic += rdtsc() - t2",
            "        if used < got:",
            f"            {free}(pa, pb, tmp_h[used:], got - used)",
            "    if cyc_per_pkt > 0 and due > room:     # the rest found the RX ring full: dropped",
            "        nic_rx_missed(nst, seq.size, due - room)",
            "nst[NIC_CYC] += nic",
        ],
        rx=[f"n = {_dequeue(knobs)}"],
        idle=["t2 = rdtsc()",
              "nst[DUT_CYC] += t2 - t0 - nic",
              "if nst[STOPPED] == 1 and ring_count(rx_cur) == 0 and ring_count(tx_cur) == 0:",
              "    return True",
              "if t2 >= slice_end_tsc:",
              "    return False"],
        after_rx=copy_rx,
        tx=_to_tx_ring(knobs, copy_tx),
        account=["nst[DUT_CYC] += t2 - t0 - nic"],
    )


def _refill_from_device(alloc, free):
    """A worker runs its queue's part of the device: it claims frames off the wire."""
    return [
        "if t0 >= stop_tsc and (load_acquire(ws, WIRE) & STOP_BIT) == 0:",
        "    stop_wire(ws)",
        "if not up:",
        "    up = link_up(ws, n_queues, nst)",
        "if mq_pending(ws, budget, plist, nseq, nst):",
        "    want = min(ring_size - ring_count(rx_cur), tmp_h.size)",
        "    if want > 0:",
        f"        got = {alloc}(pa, pb, tmp_h, want)",
        "        t2 = rdtsc()",
        "        used = mq_rx_dma(arena, tmp_h, got, want, frames, flens, seq, plist, q, ws, budget,",
        "                         claim_max, max_frame, rx_desc, rx_cur, tmp_l, tmp_hash, bases,",
        "                         rss_tables, reta, nst, counters, qfull, up, stamp_at, hist)",
        "        nic += rdtsc() - t2",
        "        if used < got:",
        f"            {free}(pa, pb, tmp_h[used:], got - used)",
    ]


def _refill_for_dispatcher(alloc):
    """A dispatcher thread fills the worker's RX ring: the worker keeps its fill ring full
    of empty buffers from its own pool (AF_XDP's design), so buffers never change pools."""
    return [
        "if not up:",
        "    up = link_up(ws, n_queues, nst)",
        "room = fill_desc.size - ring_count(fill_cur)",
        "if room > 0 and load_acquire(ws, DONE) == 0:",
        f"    got = {alloc}(pa, pb, tmp_h, min(room, tmp_h.size))",
        "    if got > 0:",
        "        ring_enqueue(fill_desc, fill_cur, tmp_h, tmp_l, tmp_hash, got)",
    ]


MQ_FUNCS = ("mq_rx_dma", "mq_tx_collect", "mq_pending", "stop_wire", "spin_lock", "spin_unlock", "link_up")


def multiqueue_port(g, knobs, mode):
    """One worker of the multi-queue in-memory NIC. mode "device": RSS in the NIC, the
    worker runs its queue's part of the device; "dispatch": a dispatcher thread feeds its
    RX ring (under a spinlock when knobs.sync == "lock")."""
    alloc, free = _allocator(knobs)
    copy_rx, copy_tx = copy_lines(knobs)
    _, rx_l = _vector(knobs)
    bump = lambda idx, v: f"store_release(wc, {idx}, load_acquire(wc, {idx}) + {v})"    # noqa: E731
    locked = mode == "dispatch" and knobs.sync == "lock"
    rx = [f"n = {_dequeue(knobs)}"]
    if locked:
        rx = ["spin_lock(locks, lock_i)", *rx, "spin_unlock(locks, lock_i)"]
    if mode == "device":
        refill, finished = _refill_from_device(alloc, free), "not mq_pending(ws, budget, plist, nseq, nst)"
    else:
        refill, finished = _refill_for_dispatcher(alloc), "load_acquire(ws, DONE) != 0"
    # model="threads": after each burst or empty poll, give the CPU to the next stage
    give_way = "give_way(yield_each, nst, YIELDS)"
    return Port(
        kind=mode,
        args=("arena, pa, pb, rx_desc, rx_cur, tx_desc, tx_cur, fill_desc, fill_cur, locks, lock_i,\n"
              "              frames, flens, seq, plist, q, n_queues, ws, budget, claim_max, max_frame, rss_tables, "
              "reta,\n"
              "              cap_data, cap_len, cap_wire, nst, stop_tsc, slice_end_tsc, batch,\n"
              "              frames_h, frames_l, frames_x, counts, tx_h, tx_l, free_h, tmp_h, tmp_l, tmp_hash, "
              "bases,\n"
              "              counters, qfull, stats, wc, wo, wstep, yield_each, stamp_at, hist"),
        doc=("One worker, until the slice ends (False) or its queue is drained for good (True).\n"
             "    slice_end_tsc 0: one burst (or one empty poll), a lightweight thread's turn."),
        imports=[f"from labkit.memory.mempool import {alloc}, {free}",
                 "from labkit.memory.ring import " + ", ".join(RING_FUNCS),
                 "from labkit.memory.intrinsics import load_acquire, store_release",
                 "from labkit.nic.multiqueue import " + ", ".join(MQ_FUNCS) + ", WIRE, DONE, STOP_BIT, IDLE_CYC, "
                 "YIELDS",
                 "from labkit.nic.memory import DUT_CYC, NIC_CYC",
                 "from labkit.run.lthreads import give_way"],
        compiled=(alloc, free, *RING_FUNCS, "give_way", *MQ_FUNCS),
        setup=["ring_size = rx_desc.size",
               "nseq = seq.size",
               "c_rx, c_rxb, c_tx, c_txb = wo, wo + wstep, wo + 2 * wstep, wo + 3 * wstep",
               "up = False"],
        reclaim=["k = mq_tx_collect(arena, tx_desc, tx_cur, tmp_h, tmp_l, tmp_hash, max_frame, cap_data, cap_len,",
                 "                  cap_wire, nst, counters, hist)",
                 "t1 = rdtsc()",
                 "nic = t1 - t0",
                 "if k > 0:",
                 f"    {free}(pa, pb, tmp_h, k)",
                 *refill,
                 "nst[NIC_CYC] += nic"],
        rx=rx,
        # (`finished` first: once DONE is seen, the dispatcher has posted its last frame)
        idle=["t2 = rdtsc()",
              "nst[DUT_CYC] += t2 - t0 - nic",
              "nst[IDLE_CYC] += t2 - t0 - nic",
              f"if {finished} and ring_count(rx_cur) == 0 and ring_count(tx_cur) == 0:",
              "    return True",
              "if t2 >= slice_end_tsc:",
              "    return False",
              give_way],
        after_rx=["for i in range(n):       # per-packet counters: the false-sharing knob's subject",
                  f"    {bump('c_rx', 1)}",
                  f"    {bump('c_rxb', f'np.int64({rx_l})')}",
                  *copy_rx],
        tx=_to_tx_ring(knobs, copy_tx, bumps=["for i in range(s):",
                                              f"    {bump('c_tx', 1)}",
                                              f"    {bump('c_txb', 'np.int64(tx_l[i])')}"]),
        account=["nst[DUT_CYC] += t2 - t0 - nic"],
        tail=[give_way],
    )


# --- veth and TAP ---------------------------------------------------------------------------

NET_IDLE = [
    "if nst[N_STOP] != 0 and pending == 0:",
    "    return True",
    "if poll_ms > 0 and rdtsc() - nst[N_LAST_BUSY] >= spin_cyc:   # wait for the kernel (an interrupt-style wake-up)",
    "    sys_poll(pfd, 1, poll_ms)",
    "    nst[N_POLLS] += 1",
    "if rdtsc() >= slice_end_tsc:",
    "    return False",
]

# DUT_CYC: every iteration that had frames, system calls included; NIC_CYC: the part
# spent in the TX system calls (veth's transmit and, on this core, the peer's receive)
NET_ACCOUNT = [
    "nst[N_DUT_CYC] += t2 - t0",
    "nst[N_NIC_CYC] += t2 - t1",
    "nst[N_BUSY_ITER] += 1",
    "nst[N_LAST_BUSY] = t2",
]

NET_DOC = ("Run until the slice ends (returns False) or a stop is asked and\n"
           "    nothing is left in flight (True).")


def _ring_rx(knobs):
    h0, l0 = _vector(knobs)
    if knobs.layout == "aos":
        take = ["n = rx_burst(arena, rx32, rx_cur, tmp_h, tmp_l, tmp_hash, batch, rx_max, too_long)",
                "for i in range(n):",
                f"    {h0} = tmp_h[i]",
                f"    {l0} = tmp_l[i]"]
    else:
        take = ["n = rx_burst(arena, rx32, rx_cur, frames_h[0], frames_l[0], tmp_hash, batch, rx_max, too_long)"]
    return take + ["if too_long[0] > 0:",
                   "    counters[RX_FRAME_TOO_LONG] += too_long[0]",
                   "    too_long[0] = 0",
                   "if n == 0:",
                   "    rx_release(rx32, rx_cur)     # blocks of frames all too long",
                   "    tx_kick(tx_fd, kick_buf, tx_cur)",
                   "pending = tx_reap(tx32, tx_cur)"]


# fanout: what the kernel said about each frame, into its metadata (as a NIC's RX descriptor)
def _fanout_meta(knobs):
    h0, _ = _vector(knobs)
    return ["for i in range(n):",
            f"    hb = np.int64({h0})",
            "    wr32le(arena, hb + META_HASH_OFF, tmp_hash[i])",
            "    arena[hb + META_RXQ_OFF] = rxq & 0xFF",
            "    arena[hb + META_RXQ_OFF + 1] = (rxq >> 8) & 0xFF"]


# capture (a fanout worker): each frame it transmits, with the hash and queue in its metadata
CAPTURE = [
    "c, co = nst[N_CAP_N], nst[N_CAP_BYTES]",
    "if c < cap_len.size and co + ln <= cap_data.size:",
    "    for j in range(ln):",
    "        cap_data[co + j] = arena[src + j]",
    "    cap_len[c] = ln",
    "    cap_meta[c, 0] = rd32le(arena, src - DATA_OFF + META_HASH_OFF)",
    "    cap_meta[c, 1] = arena[src - DATA_OFF + META_RXQ_OFF] | (arena[src - DATA_OFF + META_RXQ_OFF + 1] << 8)",
    "    nst[N_CAP_N] = c + 1",
    "    nst[N_CAP_BYTES] = co + ln",
    "else:",
    "    nst[N_CAP_LOST] += 1",
]


def _ring_tx(capture):
    return [
        "# dropped frames need no freeing: their block goes back whole",
        "for i in range(n_tx):",
        "    ln = np.int64(tx_l[i])",
        "    if ln > tx_max:",
        "        counters[TX_BAD_DESCRIPTOR] += 1",
        "        continue",
        "    src = np.int64(tx_h[i]) + DATA_OFF",
        "    ok = tx_put(tx8, tx32, tx_cur, arena, src, ln)",
        "    tries = 0",
        "    while not ok and tries < 3:        # full: kick, let the kernel drain, retry",
        "        tx_kick(tx_fd, kick_buf, tx_cur)",
        "        tx_reap(tx32, tx_cur)",
        "        ok = tx_put(tx8, tx32, tx_cur, arena, src, ln)",
        "        tries += 1",
        "    if ok:",
        "        nst[N_TX] += 1",
        *(_indented(CAPTURE, 8) if capture else []),
        "    else:",
        "        counters[TX_FULL] += 1",
        "rx_release(rx32, rx_cur)",
        "t1 = rdtsc()",
        "e = tx_kick(tx_fd, kick_buf, tx_cur)",
        "nst[N_KICKS] += 1",
        "tx_reap(tx32, tx_cur)",
        "if e != 0:",
        "    nst[N_ERR] = e",
        "    return True",
    ]


def ring_port(g, knobs, fanout=False, capture=False):
    """Zero-copy on an AF_PACKET ring pair. fanout: the loop is one of N workers, each
    with its own RX ring in the interface's PACKET_FANOUT group; it writes the kernel's
    flow hash (tp_rxhash) and its queue into each frame's metadata, as the multi-queue
    NIC does. capture (fanout only): keep each frame it transmits, with that hash and
    queue read back from its metadata."""
    if capture and not fanout:
        raise ValueError("the DUT captures as a fanout worker only (otherwise the generator captures)")
    args = ("arena, rx32, rx_cur, rx_max, tx8, tx32, tx_cur, tx_fd, tx_max, kick_buf, pfd, poll_ms, spin_cyc, "
            "nst, slice_end_tsc, batch, frames_h, frames_l, frames_x, counts, tx_h, tx_l, free_h, "
            "tmp_h, tmp_l, tmp_hash, too_long, counters, stats")
    imports = ["from labkit.memory.layouts import META_HASH_OFF, META_RXQ_OFF",
               "from labkit.nic.afpacket import rx_burst, rx_release, tx_put, tx_kick, tx_reap",
               "from labkit.nic.syscalls import sys_poll",
               "from labkit.run.ports import " + ", ".join(NET_NST)]
    compiled = ("rx_burst", "rx_release", "tx_put", "tx_kick", "tx_reap")
    if fanout:
        args += ", rxq, cap_data, cap_len, cap_meta"
        imports.append("from labkit.memory.bytes import rd32le, wr32le")
        compiled += ("rd32le", "wr32le")
    return Port(kind="ring", args=args, doc=NET_DOC, imports=imports, compiled=compiled, rx=_ring_rx(knobs),
                idle=NET_IDLE, after_rx=(_fanout_meta(knobs) if fanout else []) + ["nst[N_RX] += n"],
                tx=_ring_tx(capture), account=NET_ACCOUNT, byte_handles=True, fanout=fanout)


def syscall_port(g, knobs, kind):
    """A system call per frame: recv()/send() on packet sockets ("socket"), or
    read()/write() on a TAP device's file descriptor ("tap")."""
    alloc, free = _allocator(knobs)
    h_n, l_n = (x.replace("[i]", "[n]").replace(", i]", ", n]") for x in _vector(knobs))
    out = "(np.int64(tx_h[i]) << LINE_SHIFT) + DATA_OFF, np.int64(tx_l[i])"
    if kind == "socket":
        rx_call = "sys_recv(rx_fd, arena, base + DATA_OFF, max_frame, MSG_DONTWAIT | MSG_TRUNC)"
        tx_call = f"sys_send(tx_fd, arena, {out}, MSG_DONTWAIT)"
        calls = "sys_recv, sys_send"
    else:
        rx_call = "sys_read(rx_fd, arena, base + DATA_OFF, max_frame)"
        tx_call = f"sys_write(tx_fd, arena, {out})"
        calls = "sys_read, sys_write"
    rx = [
        f"got = {alloc}(pa, pb, tmp_h, batch)",
        "n = 0",
        "while n < got:                 # one system call per frame, into a fresh buffer",
        "    base = np.int64(tmp_h[n]) << LINE_SHIFT",
        f"    r = {rx_call}",
        "    if r < 0:",
        "        e = errno()",
        "        if e != EAGAIN and e != EINTR:",
        "            nst[N_ERR] = e",
        "        break",
        "    if r > max_frame:",
        "        counters[RX_FRAME_TOO_LONG] += 1   # truncated: keep the buffer for the next",
        "        continue",
        f"    {h_n} = tmp_h[n]",
        f"    {l_n} = r",
        "    n += 1",
        "if got > n:",
        f"    {free}(pa, pb, tmp_h[n:], got - n)",
        "if nst[N_ERR] != 0:",
        "    return True",
        "pending = 0",
    ]
    tx = [
        "if n_free > 0:",
        f"    {free}(pa, pb, free_h, n_free)",
        "t1 = rdtsc()",
        "for i in range(n_tx):",
        "    tries = 0",
        "    while True:",
        f"        r = {tx_call}",
        "        if r >= 0:",
        "            nst[N_TX] += 1",
        "            break",
        "        e = errno()",
        "        if e == ENOBUFS:",
        "            break          # dropped by the device, and counted there (tx_dropped)",
        "        if (e == EAGAIN or e == EINTR) and tries < 100:",
        "            tries += 1     # the socket's send buffer is full: try again",
        "            continue",
        "        if e == EAGAIN or e == EINTR:",
        "            counters[TX_FULL] += 1",
        "            break",
        "        nst[N_ERR] = e",
        "        break",
        "if n_tx > 0:",
        f"    {free}(pa, pb, tx_h, n_tx)   # send() copied them",
        "if nst[N_ERR] != 0:",
        "    return True",
    ]
    return Port(
        kind=kind,
        args=("arena, pa, pb, rx_fd, tx_fd, max_frame, pfd, poll_ms, spin_cyc, nst, slice_end_tsc, batch, "
              "frames_h, frames_l, frames_x, counts, tx_h, tx_l, free_h, tmp_h, counters, stats"),
        doc=NET_DOC,
        imports=[f"from labkit.memory.mempool import {alloc}, {free}",
                 f"from labkit.nic.syscalls import {calls}, sys_poll, errno, EAGAIN, EINTR, ENOBUFS, MSG_DONTWAIT, "
                 "MSG_TRUNC",
                 "from labkit.run.ports import " + ", ".join(NET_NST)],
        compiled=(alloc, free),
        rx=rx, idle=NET_IDLE, after_rx=["nst[N_RX] += n"], tx=tx, account=NET_ACCOUNT)
