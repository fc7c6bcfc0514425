"""The device under test's loop on a real (virtual) NIC: veth or TAP.

Like ``labkit.run.loop`` for the in-memory NIC, this is source generated next
to the graph's dispatch and compiled with it. Three kinds of port:

``ring`` (zero-copy): frames are processed where the kernel wrote them, in the
    AF_PACKET RX ring (handles are byte offsets into it), then copied once
    into the TX ring; one ``send()`` per batch kicks the kernel, and RX blocks
    go back to the kernel when their frames are done. No system call per
    packet, no copy into a buffer of our own.
``socket`` (copy): the classic socket path. One ``recv()`` per frame into a
    fresh buffer from the pool, one ``send()`` per forwarded frame.
``tap``: a TAP device, as a VM's virtio backend or an OpenVPN process uses
    one: one ``read()`` and one ``write()`` per frame on its file descriptor.

Idle: with ``poll_ms == 0`` the loop busy-polls (a poll-mode driver: lowest
latency, one core at 100%). Otherwise it sleeps in ``poll()`` until the
kernel has frames (an interrupt-style wake-up), at most poll_ms at a time.

Cycles: ``DUT_CYC`` counts the TSC cycles of every iteration that had frames,
system calls included (idle polling is not; the CPU share shows it).
``NIC_CYC`` is the part of them spent in the TX system calls (the kick, or
send()/write() per frame): that is where the kernel does the "NIC's" work,
veth's transmit and, on this same core, the peer's receive.

Fanout (``fanout=True``, ring port only): the loop is one of N workers, each
with its own RX ring in the interface's PACKET_FANOUT group
(``labkit.nic.afpacket``). It writes what the "NIC" said about each frame
into the frame's metadata, as the multi-queue in-memory NIC does: the
kernel's flow hash (``tp_rxhash``) at ``META_HASH_OFF`` and the worker's queue
``rxq`` at ``META_RXQ_OFF``, so a node can read them. ``capture=True`` also
keeps each frame the worker transmits, with that hash and queue read back
from its metadata (``cap_meta``): which worker forwarded which frame, in its
order, and what the kernel hashed it to.
"""
# nst: the DUT loop's counters
(N_RX, N_TX, N_DUT_CYC, N_NIC_CYC, N_STOP, N_ERR, N_LAST_BUSY, N_POLLS, N_BUSY_ITER,
 N_KICKS, N_CAP_N, N_CAP_BYTES, N_CAP_LOST) = range(13)
NST_SIZE = 16

PORT_KINDS = ("ring", "socket", "tap")


def net_loop_source(g, knobs, port, fanout=False, capture=False):
    if port not in PORT_KINDS:
        raise ValueError(f"port kind {port!r}: use one of {PORT_KINDS}")
    if fanout and port != "ring":
        raise ValueError(f"fanout needs the ring port, not {port!r}")
    if capture and not fanout:
        raise ValueError("the DUT captures as a fanout worker only (otherwise the generator captures)")
    aos = knobs.layout == "aos"
    tbl = "".join(", " + t for t in g.tables)
    alloc, free = ("stack_alloc", "stack_free") if knobs.mempool else ("heap_alloc", "heap_free")
    imports = [
        "from labkit.memory.mempool import " + alloc + ", " + free,
        "from labkit.memory.layouts import DATA_OFF, LINE_SHIFT, META_HASH_OFF, META_RXQ_OFF",
        "from labkit.nic.afpacket import rx_burst, rx_release, tx_put, tx_kick, tx_reap, T_PENDING",
        "from labkit.nic.syscalls import sys_recv, sys_send, sys_read, sys_write, sys_poll, errno, "
        "EAGAIN, EINTR, ENOBUFS, MSG_DONTWAIT, MSG_TRUNC",
        "from labkit.run.netloop import " + ", ".join(
            ["N_RX", "N_TX", "N_DUT_CYC", "N_NIC_CYC", "N_STOP", "N_ERR", "N_LAST_BUSY", "N_POLLS",
             "N_BUSY_ITER", "N_KICKS", "N_CAP_N", "N_CAP_BYTES", "N_CAP_LOST"]),
        "MEMPOOL_EMPTY, RX_FRAME_TOO_LONG, TX_FULL, TX_BAD_DESCRIPTOR = 0, 1, 2, 3",
    ]
    if not knobs.jit:
        for f in ("rx_burst", "rx_release", "tx_put", "tx_kick", "tx_reap", alloc, free):
            imports.append(f"{f} = {f}.py_func")
    if fanout:
        imports.append("from labkit.memory.bytes import rd32le, wr32le")
        if not knobs.jit:
            imports.append("rd32le, wr32le = rd32le.py_func, wr32le.py_func")
    h0 = "frames_x[0][i]['handle']" if aos else "frames_h[0, i]"
    l0 = "frames_x[0][i]['length']" if aos else "frames_l[0, i]"
    h_n = "frames_x[0][n]['handle']" if aos else "frames_h[0, n]"
    l_n = "frames_x[0][n]['length']" if aos else "frames_l[0, n]"
    idle = [
        "        if n == 0:",
        "            if nst[N_STOP] != 0 and pending == 0:",
        "                return True",
        "            if poll_ms > 0:",
        "                sys_poll(pfd, 1, poll_ms)",
        "                nst[N_POLLS] += 1",
        "            if rdtsc() >= slice_end_tsc:",
        "                return False",
        "            continue",
    ]
    # fanout: what the kernel said about each frame, into its metadata (as a NIC's RX descriptor)
    meta = [
        "        for i in range(n):",
        f"            hb = np.int64({h0})",
        "            wr32le(arena, hb + META_HASH_OFF, tmp_hash[i])",
        "            arena[hb + META_RXQ_OFF] = rxq & 0xFF",
        "            arena[hb + META_RXQ_OFF + 1] = (rxq >> 8) & 0xFF",
    ] if fanout else []
    capture_lines = [
        "                c, co = nst[N_CAP_N], nst[N_CAP_BYTES]",
        "                if c < cap_len.size and co + ln <= cap_data.size:",
        "                    for j in range(ln):",
        "                        cap_data[co + j] = arena[src + j]",
        "                    cap_len[c] = ln",
        "                    cap_meta[c, 0] = rd32le(arena, src - DATA_OFF + META_HASH_OFF)",
        "                    cap_meta[c, 1] = arena[src - DATA_OFF + META_RXQ_OFF] | "
        "(arena[src - DATA_OFF + META_RXQ_OFF + 1] << 8)",
        "                    nst[N_CAP_N] = c + 1",
        "                    nst[N_CAP_BYTES] = co + ln",
        "                else:",
        "                    nst[N_CAP_LOST] += 1",
    ]
    if port == "ring":
        args = ("arena, rx32, rx_cur, rx_max, tx8, tx32, tx_cur, tx_fd, tx_max, kick_buf, pfd, poll_ms, "
                "nst, slice_end_tsc, batch, frames_h, frames_l, frames_x, counts, tx_h, tx_l, free_h, "
                "tmp_h, tmp_l, tmp_hash, too_long, counters, stats")
        if fanout:
            args += ", rxq, cap_data, cap_len, cap_meta"
        if aos:
            take = ["        n = rx_burst(arena, rx32, rx_cur, tmp_h, tmp_l, tmp_hash, batch, rx_max, too_long)",
                    "        for i in range(n):",
                    f"            {h0} = tmp_h[i]",
                    f"            {l0} = tmp_l[i]"]
        else:
            take = ["        n = rx_burst(arena, rx32, rx_cur, frames_h[0], frames_l[0], tmp_hash, batch, rx_max, too_long)"]
        take += ["        if too_long[0] > 0:",
                 "            counters[RX_FRAME_TOO_LONG] += too_long[0]",
                 "            too_long[0] = 0",
                 "        if n == 0:",
                 "            rx_release(rx32, rx_cur)     # blocks of frames all too long",
                 "            tx_kick(tx_fd, kick_buf, tx_cur)",
                 "        pending = tx_reap(tx32, tx_cur)"]
        after_dispatch = [
            "        # dropped frames need no freeing: their block goes back whole",
            "        for i in range(n_tx):",
            "            ln = np.int64(tx_l[i])",
            "            if ln > tx_max:",
            "                counters[TX_BAD_DESCRIPTOR] += 1",
            "                continue",
            "            src = np.int64(tx_h[i]) + DATA_OFF",
            "            ok = tx_put(tx8, tx32, tx_cur, arena, src, ln)",
            "            tries = 0",
            "            while not ok and tries < 3:        # full: kick, let the kernel drain, retry",
            "                tx_kick(tx_fd, kick_buf, tx_cur)",
            "                tx_reap(tx32, tx_cur)",
            "                ok = tx_put(tx8, tx32, tx_cur, arena, src, ln)",
            "                tries += 1",
            "            if ok:",
            "                nst[N_TX] += 1",
            *(capture_lines if capture else []),
            "            else:",
            "                counters[TX_FULL] += 1",
            "        rx_release(rx32, rx_cur)",
            "        t1 = rdtsc()",
            "        e = tx_kick(tx_fd, kick_buf, tx_cur)",
            "        nst[N_KICKS] += 1",
            "        tx_reap(tx32, tx_cur)",
            "        if e != 0:",
            "            nst[N_ERR] = e",
            "            return True",
        ]
    else:
        args = ("arena, pa, pb, rx_fd, tx_fd, max_frame, pfd, poll_ms, nst, slice_end_tsc, batch, "
                "frames_h, frames_l, frames_x, counts, tx_h, tx_l, free_h, tmp_h, counters, stats")
        if port == "socket":
            rx_call = "sys_recv(rx_fd, arena, base + DATA_OFF, max_frame, MSG_DONTWAIT | MSG_TRUNC)"
            tx_call = "sys_send(tx_fd, arena, (np.int64(tx_h[i]) << LINE_SHIFT) + DATA_OFF, np.int64(tx_l[i]), MSG_DONTWAIT)"
        else:
            rx_call = "sys_read(rx_fd, arena, base + DATA_OFF, max_frame)"
            tx_call = "sys_write(tx_fd, arena, (np.int64(tx_h[i]) << LINE_SHIFT) + DATA_OFF, np.int64(tx_l[i]))"
        take = [
            f"        got = {alloc}(pa, pb, tmp_h, batch)",
            "        n = 0",
            "        while n < got:                 # one system call per frame, into a fresh buffer",
            "            base = np.int64(tmp_h[n]) << LINE_SHIFT",
            f"            r = {rx_call}",
            "            if r < 0:",
            "                e = errno()",
            "                if e != EAGAIN and e != EINTR:",
            "                    nst[N_ERR] = e",
            "                break",
            "            if r > max_frame:",
            "                counters[RX_FRAME_TOO_LONG] += 1   # truncated: keep the buffer for the next",
            "                continue",
            f"            {h_n} = tmp_h[n]",
            f"            {l_n} = r",
            "            n += 1",
            "        if got > n:",
            f"            {free}(pa, pb, tmp_h[n:], got - n)",
            "        if nst[N_ERR] != 0:",
            "            return True",
            "        pending = 0",
        ]
        after_dispatch = [
            "        if n_free > 0:",
            f"            {free}(pa, pb, free_h, n_free)",
            "        t1 = rdtsc()",
            "        for i in range(n_tx):",
            "            tries = 0",
            "            while True:",
            f"                r = {tx_call}",
            "                if r >= 0:",
            "                    nst[N_TX] += 1",
            "                    break",
            "                e = errno()",
            "                if e == ENOBUFS:",
            "                    break          # dropped by the device, and counted there (tx_dropped)",
            "                if (e == EAGAIN or e == EINTR) and tries < 100:",
            "                    tries += 1     # the socket's send buffer is full: try again",
            "                    continue",
            "                if e == EAGAIN or e == EINTR:",
            "                    counters[TX_FULL] += 1",
            "                    break",
            "                nst[N_ERR] = e",
            "                break",
            "        if n_tx > 0:",
            f"            {free}(pa, pb, tx_h, n_tx)   # send() copied them",
            "        if nst[N_ERR] != 0:",
            "            return True",
        ]
    body = [
        "@JIT",
        f"def run_slice({args}{tbl}):",
        '    """Run until the slice ends (returns False) or a stop is asked and',
        '    nothing is left in flight (True)."""',
        "    while True:",
        "        t0 = rdtsc()",
        *take,
        *idle,
        *meta,
        "        nst[N_RX] += n",
        "        counts[0] = n",
        f"        n_tx, n_free = dispatch(arena, frames_h, frames_l, frames_x, counts, tx_h, tx_l, free_h, counters, stats{tbl})",
        *after_dispatch,
        "        t2 = rdtsc()",
        "        nst[N_DUT_CYC] += t2 - t0",
        "        nst[N_NIC_CYC] += t2 - t1",
        "        nst[N_BUSY_ITER] += 1",
        "        nst[N_LAST_BUSY] = t2",
        "        if t2 >= slice_end_tsc:",
        "            return False",
    ]
    return "\n".join(imports) + "\n\n\n" + "\n".join(body) + "\n"
