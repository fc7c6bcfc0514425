"""The run loop: NIC and data plane in one JIT-compiled function.

Generated next to the graph's dispatch (``labkit.graph.compile``) because it
differs by knob in ways numba should see at compile time: which allocator
(mempool or heap), copy or zero-copy, SoA or AoS vector. The loop returns
every ``slice`` of TSC cycles, so Python can show progress and take Ctrl-C;
numba code cannot be interrupted.

One iteration, as a poll-mode driver does it:

1. TX completions: the NIC hands back sent descriptors, the driver frees
   their buffers;
2. RX refill: the driver allocates buffers for the free RX descriptors, the
   NIC "DMA"s frames into them;
3. the data plane: take up to ``batch`` RX descriptors, run the vector
   through the graph, free what was dropped, post the rest on the TX ring
   (what does not fit is dropped as ``tx_full``: queueing it would only add
   latency, as ixy's forwarder says).

Everything is the CPU's work except the NIC's own part of 1 and 2 (checking
and capturing sent frames, writing arriving frames): real hardware does that
without the CPU, so those cycles are counted apart (``nic_cycles``), and
``cycles_per_packet`` is the rest: the driver's allocation and freeing (as a
DPDK poll-mode driver refills its ring inside rx_burst), and the graph.
"""


def copy_lines(alloc, free, rx_h, rx_l):
    """Source lines of copy mode (the loop's RX step, then its TX step): as
    recv()/send() do, every frame is copied into a fresh buffer on the way in
    and on the way out, and the original is freed. rx_h and rx_l name the
    vector's handle and length of packet i (SoA or AoS)."""
    copy_rx = [
        "        m = " + alloc + "(pa, pb, tmp_h, n)",
        "        for i in range(n):",
        f"            old = np.int64({rx_h}) << LINE_SHIFT",
        "            free_h[i] = " + rx_h,
        "            if i < m:",
        "                new = np.int64(tmp_h[i]) << LINE_SHIFT",
        f"                ln = np.int64({rx_l})",
        "                for j in range(DATA_OFF + ln):   # memcpy: slice assignment would need NRT",
        "                    arena[new + j] = arena[old + j]",
        f"                {rx_h} = tmp_h[i]",
        "        " + free + "(pa, pb, free_h, n)",
        "        if m < n:",
        "            counters[MEMPOOL_EMPTY] += n - m",
        "            n = m",
    ]
    copy_tx = [
        "            m = " + alloc + "(pa, pb, tmp_h, n_tx)",
        "            for i in range(n_tx):",
        "                if i < m:",
        "                    old = np.int64(tx_h[i]) << LINE_SHIFT",
        "                    new = np.int64(tmp_h[i]) << LINE_SHIFT",
        "                    ln = np.int64(tx_l[i])",
        "                    for j in range(DATA_OFF, DATA_OFF + ln):",
        "                        arena[new + j] = arena[old + j]",
        "                free_h[i] = tx_h[i]",
        "                tx_h[i] = tmp_h[i]",
        "            " + free + "(pa, pb, free_h, n_tx)",
        "            if m < n_tx:",
        "                counters[MEMPOOL_EMPTY] += n_tx - m",
        "                n_tx = m",
    ]
    return copy_rx, copy_tx


def loop_source(g, knobs):
    aos = knobs.layout == "aos"
    alloc, free = ("stack_alloc", "stack_free") if knobs.mempool else ("heap_alloc", "heap_free")
    tbl = "".join(", " + t for t in g.tables)
    py = not knobs.jit
    imports = [
        "from labkit.memory.mempool import " + alloc + ", " + free,
        "from labkit.memory.ring import ring_enqueue, ring_dequeue, ring_dequeue_aos, ring_count",
        "from labkit.memory.layouts import DATA_OFF, LINE_SHIFT",
        "from labkit.nic.memory import nic_rx_dma, nic_tx_collect, SENT, DUT_CYC, NIC_CYC, STOPPED, MEMPOOL_EMPTY, TX_FULL",
    ]
    if py:
        for f in (alloc, free, "ring_enqueue", "ring_dequeue", "ring_dequeue_aos", "ring_count",
                  "nic_rx_dma", "nic_tx_collect"):
            imports.append(f"{f} = {f}.py_func")
    if aos:
        rx = ["        n = ring_dequeue_aos(rx_desc, rx_cur, frames_x[0], batch)"]
        rx_h = "frames_x[0][i]['handle']"
    else:
        rx = ["        n = ring_dequeue(rx_desc, rx_cur, frames_h[0], frames_l[0], tmp_hash, batch)"]
        rx_h = "frames_h[0, i]"
    rx_l = "frames_x[0][i]['length']" if aos else "frames_l[0, i]"
    copy_rx, copy_tx = copy_lines(alloc, free, rx_h, rx_l) if knobs.copy else ([], [])
    body = [
        "@JIT",
        "def run_slice(arena, pa, pb, rx_desc, rx_cur, tx_desc, tx_cur, frames, flens, seq, max_frame,",
        "              cap_data, cap_len, nst, budget, stop_tsc, slice_end_tsc, batch,",
        f"              frames_h, frames_l, frames_x, counts, tx_h, tx_l, free_h, tmp_h, tmp_l, tmp_hash, counters, stats{tbl}):",
        '    """Run until the slice ends (returns False) or all is done (True)."""',
        "    ring_size = rx_desc.size",
        "    while True:",
        "        t0 = rdtsc()",
        "        k = nic_tx_collect(arena, tx_desc, tx_cur, tmp_h, tmp_l, tmp_hash, max_frame, cap_data, cap_len, nst, counters)",
        "        t1 = rdtsc()",
        "        nic = t1 - t0",
        "        if k > 0:",
        f"            {free}(pa, pb, tmp_h, k)",
        "        if nst[STOPPED] == 0 and (nst[SENT] >= budget or t0 >= stop_tsc):",
        "            nst[STOPPED] = 1",
        "        if nst[STOPPED] == 0:",
        "            want = min(ring_size - ring_count(rx_cur), budget - nst[SENT], tmp_h.size)",
        "            if want > 0:",
        f"                got = {alloc}(pa, pb, tmp_h, want)",
        "                t2 = rdtsc()",
        "                used = nic_rx_dma(arena, tmp_h, got, want, frames, flens, seq, max_frame, rx_desc, rx_cur, tmp_l, tmp_hash, nst, counters)",
        "                nic += rdtsc() - t2",
        "                if used < got:",
        f"                    {free}(pa, pb, tmp_h[used:], got - used)",
        "        nst[NIC_CYC] += nic",
        *rx,
        "        if n == 0:",
        "            t2 = rdtsc()",
        "            nst[DUT_CYC] += t2 - t0 - nic",
        "            if nst[STOPPED] == 1 and ring_count(rx_cur) == 0 and ring_count(tx_cur) == 0:",
        "                return True",
        "            if t2 >= slice_end_tsc:",
        "                return False",
        "            continue",
        *copy_rx,
        "        counts[0] = n",
        f"        n_tx, n_free = dispatch(arena, frames_h, frames_l, frames_x, counts, tx_h, tx_l, free_h, counters, stats{tbl})",
        "        if n_free > 0:",
        f"            {free}(pa, pb, free_h, n_free)",
        "        if n_tx > 0:",
        *copy_tx,
        "            s = ring_enqueue(tx_desc, tx_cur, tx_h, tx_l, tmp_hash, n_tx)",
        "            if s < n_tx:",
        "                counters[TX_FULL] += n_tx - s",
        f"                {free}(pa, pb, tx_h[s:], n_tx - s)",
        "        t2 = rdtsc()",
        "        nst[DUT_CYC] += t2 - t0 - nic",
        "        if t2 >= slice_end_tsc:",
        "            return False",
    ]
    return "\n".join(imports) + "\n\n\n" + "\n".join(body) + "\n"
