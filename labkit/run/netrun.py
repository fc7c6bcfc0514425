"""A Lab on a real (virtual) NIC: generator -> veth or TAP -> DUT -> back.

The testbed is wired as MoonGen and a device under test are::

    labkit-gen namespace                      labkit-dut namespace
    generator TX ring  lk-g0 ===veth=== lk-d0  DUT RX (ring or socket)
    generator RX ring  lk-g1 ===veth=== lk-d1  DUT TX (ring or socket)

or, with ``backend="tap"``, the generator's rings on ``lk-tap0`` and the DUT
reading and writing the TAP device's file descriptor.

Three threads: the generator's loop, the DUT's loop (both compiled, both
release the GIL) and this module's Python thread, which watches, shows
progress, takes Ctrl-C, and reads the kernel's counters. A run ends when the
generator has sent everything and every frame is accounted for::

    sent == forwarded (back at the generator) + drops by reason

where the drops are the DUT graph's, plus the kernel's on the way: an
AF_PACKET ring that was full (``*_ring_full``, PACKET_STATISTICS), a frame
the DUT's send() gave to a link that dropped it (``link_dut_to_gen``, the
veth's tx_dropped; copy path only, see ``wires``), and frames no link can
carry (``gen_unsendable``). If the books do not balance within ``QUIET_S`` of
the last activity, the run ends anyway and the Result says ``conserved:
False``: that is a bug to report, never hidden.
"""
import os
import socket
import threading
import time

from contextlib import ExitStack

import numpy as np

from ..graph.compile import generate, load_source, make_frames
from ..memory.layouts import LINE_SHIFT
from ..nic import afpacket as af
from ..nic import generator as gen
from ..nic import labnet
from ..nic.pcap import PcapWriter
from ..nic.syscalls import strerror
from .measure import now_tsc, tsc_hz
from .netloop import (N_BUSY_ITER, N_DUT_CYC, N_ERR, N_KICKS, N_LAST_BUSY, N_NIC_CYC, N_POLLS,
                      N_RX, N_STOP, NST_SIZE, net_loop_source)
from .result import NodeRuntime, Result

SLICE_S = 0.05        # each compiled loop returns to Python this often
WATCH_S = 0.02        # the watcher's period
QUIET_S = 5.0         # give up waiting for the books to balance after this long without activity
                      # (a balanced run ends at once; only a broken one waits this long)
LINK_S = 0.25         # read the links' drop counters this often (a netlink round trip costs ~1 ms)
STALL_S = 5.0         # give up sending when the kernel has taken no frame for this long
POLL_MS = 10          # poll(): longest sleep before the loop looks at its stop flag
RCVBUF = 8 << 20      # socket receive buffer of the copy path (bytes)
SO_RCVBUFFORCE = 33   # (Linux; root may exceed rmem_max)
GEN_BATCH = 64        # frames per TX kick of the generator


class NetBackend:
    """Ports, rings and compiled loops of one Lab on veth or TAP."""

    def __init__(self, backend, graph, knobs, pool, tables, traffic_for, gen_batch=GEN_BATCH,
                 rate=None, capture_path=None, capture_max=0):
        self.backend, self.g, self.knobs, self.pool = backend, graph, knobs, pool
        self.tables = tables
        self.gen_batch, self.rate = gen_batch, rate
        self.capture_path, self.capture_max = capture_path, (capture_max if capture_path else 0)
        self.notes = []
        self._stack = ExitStack()          # everything opened, closed in reverse order
        try:
            self._open(traffic_for)
        except BaseException:
            self.close()
            raise

    # -- set-up --------------------------------------------------------------------
    def _open(self, traffic_for):
        b, k = self.backend, self.knobs
        self._stack.enter_context(labnet.session(tap=(b == "tap")))
        gns, dns = labnet.gen_ns(), labnet.dut_ns()
        gen_tx_if, gen_rx_if = (labnet.TAP, labnet.TAP) if b == "tap" else (labnet.GEN_TX, labnet.GEN_RX)
        self.gen_tx = self._own(af.TxRing(gns, gen_tx_if, qdisc_bypass=k.qdisc_bypass))
        self.gen_rx = self._own(af.RxRing(gns, gen_rx_if))
        # Links whose tx_dropped counts frames. From a TX *ring* a frame the
        # link drops is not lost: tpacket_snd() sees the drop, puts the frame
        # back to TP_STATUS_SEND_REQUEST and returns ENOBUFS, and the next kick
        # sends it again (measured: on the TAP, tx_dropped rose by thousands
        # while every frame arrived). So those drops are retries, reported
        # apart; only send() of the copy path loses the frame it was given.
        self.wires = [(gns, gen_tx_if, "link_gen_to_dut", False)]
        self.kernel_socks = [(self.gen_rx.sock, "gen_rx_ring_full")]
        self.dut_rx = self.dut_tx = None
        if b == "tap":
            self.port = "tap"
            fd = labnet.open_tap()
            self._stack.callback(os.close, fd)
            self.rx_fd = self.tx_fd = fd
            max_link = self.gen_tx.max_frame
        elif k.copy:
            self.port = "socket"
            rx = self._own_sock(dns, labnet.DUT_RX, af.ETH_P_ALL)
            rx.setsockopt(af.SOL_PACKET, af.PACKET_IGNORE_OUTGOING, 1)
            try:
                rx.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
            except OSError:
                rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            tx = self._own_sock(dns, labnet.DUT_TX, 0)
            if k.qdisc_bypass:
                tx.setsockopt(af.SOL_PACKET, af.PACKET_QDISC_BYPASS, 1)
            self.rx_fd, self.tx_fd = rx.fileno(), tx.fileno()
            self.kernel_socks.append((rx, "dut_rx_ring_full"))
            self.wires.append((dns, labnet.DUT_TX, "link_dut_to_gen", True))
            max_link = min(self.gen_tx.max_frame, labnet.link_mtu(dns, labnet.DUT_TX) + af.ETH_HLEN)
        else:
            self.port = "ring"
            self.dut_rx = self._own(af.RxRing(dns, labnet.DUT_RX))
            self.dut_tx = self._own(af.TxRing(dns, labnet.DUT_TX, qdisc_bypass=k.qdisc_bypass))
            self.rx_fd, self.tx_fd = self.dut_rx.fileno(), self.dut_tx.fileno()
            self.kernel_socks.append((self.dut_rx.sock, "dut_rx_ring_full"))
            self.wires.append((dns, labnet.DUT_TX, "link_dut_to_gen", False))
            max_link = min(self.gen_tx.max_frame, self.dut_tx.max_frame)
        self.max_link = max_link
        self.traffic = traffic_for(max_link)
        shift = 0 if self.port == "ring" else LINE_SHIFT     # ring handles are byte offsets
        src = generate(self.g, k, handle_shift=shift) + "\n\n" + net_loop_source(self.g, k, self.port)
        self.mod = load_source(src, f"{self.g.name}_{self.port}")
        self.frames = make_frames(self.g, k.batch, k.layout)

    def _own(self, ring):
        self._stack.callback(ring.close)
        return ring

    def _own_sock(self, ns, ifname, proto):
        s = self._stack.enter_context(af.packet_socket(ns, ifname))
        s.setblocking(False)
        af.bind(s, ns, ifname, proto)
        return s

    def close(self):
        """Close ports and sockets; take the lab network down if we built it."""
        self._stack.close()

    # -- the run ---------------------------------------------------------------------
    def run(self, seconds, packets, progress):
        hz = tsc_hz()
        g, m, k, t = self.g, self.mod, self.knobs, self.traffic
        b = k.batch
        counters = np.zeros(len(g.reasons), np.int64)
        stats = np.zeros((len(g.nodes), 3), np.int64)
        nst = np.zeros(NST_SIZE, np.int64)
        gst = np.zeros(gen.GST_SIZE, np.int64)
        tx_h, tx_l, free_h = (np.zeros(b, np.uint32) for _ in range(3))
        tmp_h, tmp_l, tmp_hash = (np.zeros(max(b, 1), np.uint32) for _ in range(3))
        too_long = np.zeros(1, np.int64)
        fh, fl, fx, counts = self.frames
        tables = [self.tables[name] for name in g.tables]
        poll_ms = POLL_MS if k.poll == "wait" else 0
        pfd = np.array([self.rx_fd, 1], np.int32)            # struct pollfd {fd, POLLIN}
        budget = packets if packets is not None else np.iinfo(np.int64).max
        cap_n = self.capture_max
        cap_data = np.zeros(cap_n * min(t.stride, self.max_link) if cap_n else 0, np.uint8)
        cap_len = np.zeros(cap_n, np.uint32)
        frames_flat = t.frames.reshape(-1)
        gh, gl, ghash = (np.zeros(256, np.uint32) for _ in range(3))
        g_too_long = np.zeros(1, np.int64)
        rate_cpp = hz / self.rate if self.rate else 0.0
        # a frame longer than a buffer's data room is dropped in every mode alike
        rx_max = min(self.dut_rx.max_frame, self.pool.max_frame) if self.dut_rx else 0

        def dut_slice(slice_end):
            if self.port == "ring":
                rx, tx = self.dut_rx, self.dut_tx
                return m.run_slice(rx.u8, rx.u32, rx.cur, rx_max, tx.u8, tx.u32, tx.cur, self.tx_fd,
                                   tx.max_frame, tx.kick_buf, pfd, poll_ms, nst, slice_end, b, fh, fl, fx,
                                   counts, tx_h, tx_l, free_h, tmp_h, tmp_l, tmp_hash, too_long,
                                   counters, stats, *tables)
            p = self.pool
            return m.run_slice(p.arena, p.a, p.b, self.rx_fd, self.tx_fd, p.max_frame, pfd, poll_ms, nst,
                               slice_end, b, fh, fl, fx, counts, tx_h, tx_l, free_h, tmp_h,
                               counters, stats, *tables)

        def gen_slice(t_start, stop_tsc, slice_end):
            tx, rx = self.gen_tx, self.gen_rx
            return gen.gen_slice(tx.u8, tx.u32, tx.cur, tx.fileno(), tx.kick_buf, frames_flat, t.stride,
                                 t.lengths, t.seq, tx.max_frame, rx.u8, rx.u32, rx.cur, gh, gl, ghash,
                                 rx.max_frame, g_too_long, cap_data, cap_len, gst, budget, t_start,
                                 stop_tsc, rate_cpp, self.gen_batch, slice_end)

        # Compile (or load from numba's cache) before the clock starts.
        gst[gen.G_STOP] = 1
        gen_slice(0, 0, 0)
        nst[N_STOP] = 1
        dut_slice(0)
        gst[:] = 0
        nst[:] = 0
        for s, _ in self.kernel_socks:
            af.read_stats(s)                                  # zero the kernel's counters
        wire0 = {name: labnet.link_stats(ns, ifn)["tx_dropped"] for ns, ifn, name, _ in self.wires}
        retried, freezes = {}, {}
        kernel = {name: 0 for _, name in self.kernel_socks}

        start = now_tsc()
        stop_tsc = start + int(seconds * hz) if seconds is not None else np.iinfo(np.int64).max
        errors, cpu = [], {}
        gen_final = threading.Event()

        def dut_main():
            c0, w0 = time.thread_time(), time.perf_counter()
            try:
                while not dut_slice(now_tsc() + int(SLICE_S * hz)):
                    pass
            except BaseException as e:        # shown by the watcher, not lost in a thread
                errors.append(e)
            cpu["dut"] = (time.thread_time() - c0, time.perf_counter() - w0)

        def gen_main():
            c0, w0 = time.thread_time(), time.perf_counter()
            try:
                while True:
                    gen_slice(start, stop_tsc, now_tsc() + int(SLICE_S * hz))
                    if gen_final.is_set() or gst[gen.G_ERR]:
                        break
            except BaseException as e:
                errors.append(e)
            cpu["gen"] = (time.thread_time() - c0, time.perf_counter() - w0)

        wire = {}                    # link drops as last read (netlink: read them every LINK_S)
        links_read = [0.0]

        def drops(links=False):
            for s, name in self.kernel_socks:
                _, dropped, frozen = af.read_stats(s)
                kernel[name] += dropped
                freezes[name] = freezes.get(name, 0) + frozen
            if links or time.monotonic() - links_read[0] >= LINK_S:
                links_read[0] = time.monotonic()
                for ns, ifn, name, lost in self.wires:
                    n = labnet.link_stats(ns, ifn)["tx_dropped"] - wire0[name]
                    (wire if lost else retried)[name] = n
            d = dict(wire)
            d.update(kernel)
            d["gen_unsendable"] = int(gst[gen.G_UNSENDABLE])
            d["gen_rx_too_long"] = int(g_too_long[0])
            for r, c in zip(g.reasons, counters):
                d[r] = d.get(r, 0) + int(c)
            return {r: int(c) for r, c in d.items() if c}

        threads = [threading.Thread(target=dut_main, name="labkit-dut", daemon=True),
                   threading.Thread(target=gen_main, name="labkit-gen", daemon=True)]
        for th in threads:
            th.start()
        interrupted, stalled = None, False
        last_change, last_seen = time.monotonic(), None
        try:
            while True:
                try:
                    time.sleep(WATCH_S)
                    if errors:
                        break
                    d = drops()
                    if progress is not None:
                        if packets is not None:
                            progress(min(1.0, gst[gen.G_SENT] / packets))
                        else:
                            progress(min(1.0, (now_tsc() - start) / (stop_tsc - start)))
                    if gst[gen.G_ERR] or nst[N_ERR]:
                        break
                    seen = (int(gst[gen.G_SENT]), int(gst[gen.G_RX]), int(nst[N_RX]), tuple(sorted(d.items())))
                    if seen != last_seen:
                        last_seen, last_change = seen, time.monotonic()
                    quiet = time.monotonic() - last_change
                    if gst[gen.G_TX_DONE_TSC] == 0:             # still sending
                        if quiet > STALL_S:
                            stalled = True                      # the kernel takes no frame: give up
                            break
                        continue
                    if gst[gen.G_SENT] == gst[gen.G_RX] + sum(d.values()):
                        break                                   # every frame accounted for
                    if quiet > QUIET_S:
                        break                                   # the books will not balance: say so
                except KeyboardInterrupt as e:
                    # Stop offering; let what is in flight drain, so the books
                    # still balance; then let the interrupt go on.
                    interrupted = e
                    gst[gen.G_STOP] = 1
        finally:
            nst[N_STOP] = 1
            gen_final.set()
            for th in threads:
                th.join()
        d = drops(links=True)
        if errors:
            raise errors[0]
        for code, who in ((gst[gen.G_ERR], "generator"), (nst[N_ERR], "device under test")):
            if code:
                raise OSError(int(code), f"the {who}'s port failed: {strerror(int(code))}")
        if interrupted is not None:
            raise interrupted
        if cap_n:
            self._write_capture(cap_data, cap_len, gst)
        end = max(int(nst[N_LAST_BUSY]), int(gst[gen.G_TX_DONE_TSC]))
        wall = max(end - start, 1) / hz
        dut_cpu, dut_wall = cpu.get("dut", (0.0, 1.0))
        gen_tx_s = max(int(gst[gen.G_TX_DONE_TSC]) - start, 1) / hz
        runtime = [NodeRuntime(n.name, int(s[0]), int(s[1]), int(s[2])) for n, s in zip(g.nodes, stats)]
        notes = list(self.notes)
        if stalled:
            notes.append(f"the run stopped early: for {STALL_S:g} s the kernel took no frame from the "
                         f"generator and nothing came back (is a lab interface down?)")
        if gst[gen.G_CAP_LOST]:
            notes.append(f"capture: {gst[gen.G_CAP_LOST]} returned frames not written "
                         f"(the capture holds at most {self.capture_max})")
        extra = {"port": self.port, "poll": k.poll, "qdisc_bypass": k.qdisc_bypass,
                 "gen_tx_pps": int(gst[gen.G_SENT]) / gen_tx_s, "gen_batch": self.gen_batch,
                 "rate": self.rate, "dut_polls": int(nst[N_POLLS]), "dut_kicks": int(nst[N_KICKS]),
                 "dut_busy_iterations": int(nst[N_BUSY_ITER]),
                 "kernel_tx_retries": {k: int(v) for k, v in retried.items()},
                 "kernel_ring_freezes": {k.replace("_full", ""): int(v) for k, v in freezes.items()},
                 "gen_cpu_percent": 100.0 * cpu.get("gen", (0.0, 1.0))[0] / max(cpu.get("gen", (0, 1.0))[1], 1e-9)}
        return Result(backend=self.backend, graph=g.name, knobs=k.as_dict(), sent=int(gst[gen.G_SENT]),
                      forwarded=int(gst[gen.G_RX]), dropped=d, seconds=wall, tsc_hz=hz,
                      dut_cycles=int(nst[N_DUT_CYC]), nic_cycles=int(nst[N_NIC_CYC]), runtime=runtime,
                      notes=notes, pool_ok=self.pool is None or self.pool.n_free == self.pool.capacity,
                      cpu_percent=100.0 * dut_cpu / max(dut_wall, 1e-9), extra=extra)

    def _write_capture(self, cap_data, cap_len, gst):
        n = int(gst[gen.G_CAP_N])
        lengths = cap_len[:n].astype(np.int64)
        offsets = np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.int64)
        with PcapWriter(self.capture_path) as w:
            w.write_many(cap_data, offsets, lengths)

