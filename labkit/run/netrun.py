"""A Lab on a real (virtual) NIC: generator -> veth or TAP -> DUT -> back.

The testbed is wired as MoonGen and a device under test are::

    labkit-gen namespace                      labkit-dut namespace
    generator TX ring  lk-g0 ===veth=== lk-d0  DUT RX (ring or socket)
    generator RX ring  lk-g1 ===veth=== lk-d1  DUT TX (ring or socket)

or, with ``backend="tap"``, the generator's rings on ``lk-tap0`` and the DUT
reading and writing the TAP device's file descriptor.

Three threads: the generator's loop, the DUT's loop (both compiled, both
release the GIL) and this module's Python thread, which watches, shows
progress, takes Ctrl-C, and reads the kernel's counters.

``workers=N`` (N > 1, veth, ring port): RSS on a real NIC. N DUT workers, each
a thread running the same loop over its own RX ring on lk-d0 and its own TX
ring on lk-d1, with its own counters and vectors on cache lines of their own
(nothing shared on the fast path). The N RX rings form one PACKET_FANOUT_HASH
group, so the kernel gives every frame to one worker chosen by the flow
hash, and each ring asks for that hash in the frame's header (tp_rxhash):
the worker writes it, and its queue, into the frame's metadata, as the
multi-queue in-memory NIC writes its Toeplitz hash (``labkit.nic.afpacket``,
``labkit.run.ports``). The kernel computes the hash in the softirq that
delivers the frame, so the data plane gets it with the frame, for free;
``labkit.bench.cores.measure_toeplitz`` is what computing it in software
costs. Every worker's books balance on their own: the frames its socket
received plus those its ring had no room for (its PACKET_STATISTICS) are
forwarded or dropped by reason; the run's, summed, as above. With
``capture_path``, each worker also keeps what it forwarded, with the hash and
queue from each frame's metadata (``capture(q)``). A run ends when the
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

from . import interrupts
from ..graph.compile import make_frames
from ..memory.layouts import own_lines, rehome
from ..nic import afpacket as af
from ..nic import generator as gen
from ..nic import latency as lat
from ..nic import labnet
from ..nic import napi
from ..nic.pcap import write_packed
from ..nic.syscalls import strerror
from ..settings import SLICE_S
from .engine import Engine, tell_progress
from .knobs import ADAPTIVE_SPIN_US
from .loopgen import load_module, port_for
from .measure import now_tsc, tsc_hz
from .ports import (N_BUSY_ITER, N_CAP_LOST, N_CAP_N, N_DUT_CYC, N_ERR, N_KICKS, N_LAST_BUSY, N_NIC_CYC, N_POLLS,
                    N_RX, N_STOP, N_TX, NST_SIZE)
from .result import NIC_SIDE_DROPS, by_reason, make_result

WATCH_S = 0.02        # the watcher's period
QUIET_S = 5.0         # give up waiting for the books to balance after this long without activity
                      # (a balanced run ends at once; only a broken one waits this long)
LINK_S = 0.25         # read the links' drop counters this often (a netlink round trip costs ~1 ms)
STALL_S = 5.0         # give up sending when the kernel has taken no frame for this long
POLL_MS = 10          # poll(): longest sleep before the loop looks at its stop flag
RCVBUF = 8 << 20      # socket receive buffer of the copy path (bytes)
RX_RING_BYTES = 2 << 20   # the DUT's RX ring: 2 MiB, in blocks of block_kb (or 2 KiB frames)
SO_RCVBUFFORCE = 33   # (Linux; root may exceed rmem_max)
GEN_BATCH = 64        # frames per TX kick of the generator
HASH_SOURCE = "kernel (PACKET_FANOUT_HASH; tp_rxhash in each frame's metadata)"


class _Dut:
    """One DUT worker's ports and everything its loop writes."""

    def __init__(self, q, rx, tx, rx_fd, tx_fd):
        self.q, self.rx, self.tx, self.rx_fd, self.tx_fd = q, rx, tx, rx_fd, tx_fd
        self.ring_full = 0               # frames its RX ring had no room for (PACKET_STATISTICS)
        self.cpu = (0.0, 1.0)            # its thread's CPU seconds, wall seconds


class NetEngine(Engine):
    """Ports, rings and compiled loops of one Lab on veth or TAP."""
    kind = "net"

    def __init__(self, backend, graph, knobs, pool, tables, traffic_for, gen_batch=GEN_BATCH,
                 rate=None, capture_path=None, capture_max=0, workers=1, latency=False):
        self.backend, self.g, self.knobs, self.pool = backend, graph, knobs, pool
        self.pools, self.max_frame = [pool], pool.max_frame
        self.tables = tables
        self.gen_batch, self.rate = gen_batch, rate
        self.capture_path, self.capture_max = capture_path, (capture_max if capture_path else 0)
        self.n_workers = workers
        self.latency = latency
        self.fanout = workers > 1
        self.fanout_group = None
        self.notes = []
        self._stack = ExitStack()          # everything opened, closed in reverse order
        try:
            self._open(traffic_for)
        except BaseException:
            self.close()
            raise

    @property
    def threads(self):
        """The DUT's threads (one per worker) and the generator's."""
        return self.n_workers + 1

    # -- set-up --------------------------------------------------------------------
    def _open_generator(self):
        """The lab network, and the generator's rings on it; (gen namespace, DUT namespace)."""
        b, k = self.backend, self.knobs
        self._stack.enter_context(labnet.session(tap=(b == "tap")))
        gns, dns = labnet.gen_ns(), labnet.dut_ns()
        gen_tx_if, gen_rx_if = (labnet.TAP, labnet.TAP) if b == "tap" else (labnet.GEN_TX, labnet.GEN_RX)
        if b != "tap":          # the kernel's receive path into the DUT (labkit.nic.napi), put back on close
            self._stack.enter_context(napi.receive_path(k.napi, (gns, gen_tx_if), (dns, labnet.DUT_RX)))
        elif k.napi != "off":
            self.notes.append(f"knob napi={k.napi} shapes a veth's receive path; the TAP's is the tun driver's")
        self.gen_tx = self._own(af.TxRing(gns, gen_tx_if, qdisc_bypass=k.qdisc_bypass))
        # the generator measures latency on a per-frame ring: it sees each frame as it lands
        self.gen_rx = self._own(af.RxRing(gns, gen_rx_if, mode="frame" if self.latency else "block"))
        # Links whose drop counters count frames: (namespace, interface, reason, lost, counter).
        # From a TX *ring* a frame the link drops is not lost: tpacket_snd() sees the drop,
        # puts the frame back to TP_STATUS_SEND_REQUEST and returns ENOBUFS, and the next kick
        # sends it again (measured: on the TAP, tx_dropped rose by thousands while every
        # frame arrived). So those drops are retries, reported apart; only send() of the
        # copy path loses the frame it was given.
        self.wires = [(gns, gen_tx_if, "link_gen_to_dut", False, "tx_dropped")]
        self.kernel_socks = [(self.gen_rx.sock, "gen_rx_ring_full")]
        self.duts = []
        return gns, dns

    def graph_counters(self):
        """The graph's drop counters, one array per DUT worker (numbered as ``g.reasons``)."""
        return [d.counters for d in self.duts]

    def _open(self, traffic_for):
        b, k = self.backend, self.knobs
        gns, dns = self._open_generator()
        if b == "tap":
            self.port = "tap"
            fd = labnet.open_tap()
            self._stack.callback(os.close, fd)
            self.duts.append(_Dut(0, None, None, fd, fd))
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
            self.duts.append(_Dut(0, None, None, rx.fileno(), tx.fileno()))
            self.kernel_socks.append((rx, "dut_rx_ring_full"))
            self.wires.append((dns, labnet.DUT_TX, "link_dut_to_gen", True, "tx_dropped"))
            max_link = min(self.gen_tx.max_frame, labnet.link_mtu(dns, labnet.DUT_TX) + af.ETH_HLEN)
        else:
            self.port = "ring"
            for q in range(self.n_workers):
                block = k.block_kb << 10
                rx = self._own(af.RxRing(dns, labnet.DUT_RX, rxhash=self.fanout, mode=k.rx_ring, block_size=block,
                                         block_nr=max(1, RX_RING_BYTES // block), timeout_ms=k.coalesce_ms))
                if self.fanout:
                    self.fanout_group = rx.join_fanout(self.fanout_group)
                tx = self._own(af.TxRing(dns, labnet.DUT_TX, qdisc_bypass=k.qdisc_bypass))
                self.duts.append(_Dut(q, rx, tx, rx.fileno(), tx.fileno()))
            self.kernel_socks += [(d.rx.sock, "dut_rx_ring_full") for d in self.duts]
            self.wires.append((dns, labnet.DUT_TX, "link_dut_to_gen", False, "tx_dropped"))
            max_link = min(self.gen_tx.max_frame, self.duts[0].tx.max_frame)
        self.max_link = max_link
        self.rx_socks = [s for s, name in self.kernel_socks if name == "dut_rx_ring_full"]
        if k.busy_poll_us and self.rx_socks:
            for s in self.rx_socks:
                napi.busy_poll(s, k.busy_poll_us)
            self._stack.enter_context(napi.poll_spins(k.busy_poll_us))
        elif k.busy_poll_us:
            self.notes.append("knob busy_poll_us sets SO_BUSY_POLL on the DUT's RX socket; the tap port has none")
        if self.port != "ring":
            self.notes += [f"knob {name} shapes the DUT's AF_PACKET RX ring (veth, zero-copy); the {self.port} "
                           "port has none" for name in ("rx_ring", "coalesce_ms", "block_kb")
                           if getattr(k, name) != getattr(type(k)(), name)]
        self.traffic = traffic_for(max_link)
        options = dict(fanout=self.fanout, capture=self.fanout and self.capture_max > 0) if self.port == "ring" else {}
        self.mod = load_module(self.g, k, port_for(self.g, k, self.port, **options))
        self._zeros = lambda shape, dtype: np.zeros(shape, dtype)
        if self.fanout:      # each worker's arrays on cache lines of its own: no line written by two
            self._zeros = own_lines
        for d in self.duts:
            d.frames = make_frames(self.g, k.batch, k.layout)
            if self.fanout:
                d.frames = tuple(rehome(a) for a in d.frames)

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

    # -- one worker's loop ---------------------------------------------------------------
    def _dut_state(self, d):
        """Worker d's counters and scratch arrays for a run (with several workers,
        on cache lines of their own: no two workers write the same line)."""
        g, b, zeros = self.g, self.knobs.batch, self._zeros
        d.counters = zeros(len(g.reasons), np.int64)
        d.stats = zeros((len(g.nodes), 3), np.int64)
        d.nst = zeros(NST_SIZE, np.int64)
        d.tx_h, d.tx_l, d.free_h = (zeros(b, np.uint32) for _ in range(3))
        d.tmp_h, d.tmp_l, d.tmp_hash = (zeros(max(b, 1), np.uint32) for _ in range(3))
        d.too_long = zeros(1, np.int64)
        d.pfd = np.array([d.rx_fd, 1], np.int32)            # struct pollfd {fd, POLLIN}
        d.ring_full = 0
        cap_n = self.capture_max if self.fanout else 0
        d.cap_data = np.zeros(cap_n * min(self.traffic.stride, self.max_link), np.uint8)
        d.cap_len = np.zeros(cap_n, np.uint32)
        d.cap_meta = np.zeros((cap_n, 2), np.uint32)

    def _dut_slice(self, d, rx_max, poll_ms, spin_cyc):
        """A function slice_end -> done that runs worker d's loop for one slice."""
        m, b = self.mod, self.knobs.batch
        tables = [self.tables[name] for name in self.g.tables]
        fh, fl, fx, counts = d.frames
        if self.port == "ring":
            rx, tx = d.rx, d.tx
            more = (d.q, d.cap_data, d.cap_len, d.cap_meta) if self.fanout else ()
            return lambda slice_end: m.run_slice(
                rx.u8, rx.u32, rx.cur, rx_max, tx.u8, tx.u32, tx.cur, d.tx_fd, tx.max_frame, tx.kick_buf,
                d.pfd, poll_ms, spin_cyc, d.nst, slice_end, b, fh, fl, fx, counts, d.tx_h, d.tx_l, d.free_h, d.tmp_h,
                d.tmp_l, d.tmp_hash, d.too_long, d.counters, d.stats, *more, *tables)
        p = self.pool
        return lambda slice_end: m.run_slice(
            p.arena, p.a, p.b, d.rx_fd, d.tx_fd, p.max_frame, d.pfd, poll_ms, spin_cyc, d.nst, slice_end, b, fh, fl, fx,
            counts, d.tx_h, d.tx_l, d.free_h, d.tmp_h, d.counters, d.stats, *tables)

    # -- the run ---------------------------------------------------------------------
    def run(self, seconds=None, packets=None, progress=None):
        r = _Run(self, packets)
        r.compile()
        kernel0 = (*napi.kernel_cpu(labnet.DUT_RX), time.perf_counter())    # (reads /proc: before the clock starts)
        r.start = now_tsc()
        r.stop_tsc = r.start + int(seconds * r.hz) if seconds is not None else np.iinfo(np.int64).max
        threads = r.start_threads()
        try:
            interrupted, stalled = r.watch(progress)
        finally:
            for w in self.duts:
                w.nst[N_STOP] = 1
            r.gen_final.set()
            for th in threads:
                th.join()
        r.kernel_cpu = [b - a for a, b in zip(kernel0, (*napi.kernel_cpu(labnet.DUT_RX), time.perf_counter()))]
        dropped = r.drops(links=True)
        if r.errors:
            raise r.errors[0]
        dut_err = next((int(w.nst[N_ERR]) for w in self.duts if w.nst[N_ERR]), 0)
        for code, who in ((r.gst[gen.G_ERR], "generator"), (dut_err, "device under test")):
            if code:
                raise OSError(int(code), f"the {who}'s port failed: {strerror(int(code))}")
        if interrupted is not None:
            raise interrupted
        if self.capture_max:
            write_packed(self.capture_path, r.cap_data, r.cap_len, int(r.gst[gen.G_CAP_N]))
        return self._result(r, dropped, stalled)

    def _result(self, r, dropped, stalled):
        """The Result of run r: the generator's books, the DUT's cycles and CPU, the kernel's drops."""
        g, k, gst, duts, hz = self.g, self.knobs, r.gst, self.duts, r.hz
        end = max([int(w.nst[N_LAST_BUSY]) for w in duts] + [int(gst[gen.G_TX_DONE_TSC])])
        wall = max(end - r.start, 1) / hz
        dut_cpu = sum(w.cpu[0] for w in duts)
        dut_wall = max(w.cpu[1] for w in duts)
        gen_tx_s = max(int(gst[gen.G_TX_DONE_TSC]) - r.start, 1) / hz
        notes = list(self.notes)
        if stalled:
            notes.append(f"the run stopped early: for {STALL_S:g} s the kernel took no frame from the "
                         f"generator and nothing came back (is a lab interface down?)")
        if gst[gen.G_CAP_LOST]:
            notes.append(f"capture: {gst[gen.G_CAP_LOST]} returned frames not written "
                         f"(the capture holds at most {self.capture_max})")
        gen_cpu = r.cpu.get("gen", (0.0, 1.0))
        extra = {"port": self.port, "poll": k.poll, "qdisc_bypass": k.qdisc_bypass,
                 "gen_tx_pps": int(gst[gen.G_SENT]) / gen_tx_s, "gen_batch": self.gen_batch,
                 "rate": self.rate, "dut_polls": r.dut_sum(N_POLLS), "dut_kicks": r.dut_sum(N_KICKS),
                 "dut_busy_iterations": r.dut_sum(N_BUSY_ITER),
                 "kernel_tx_retries": {k: int(v) for k, v in r.retried.items()},
                 "kernel_ring_freezes": {k.replace("_full", ""): int(v) for k, v in r.freezes.items()},
                 "gen_cpu_percent": 100.0 * gen_cpu[0] / max(gen_cpu[1], 1e-9), **self._kernel_side(r, notes)}
        pool_ok = self.pool is None or self.pool.n_free == self.pool.capacity
        if self.fanout:
            rows = [self._worker_row(w, wall, hz, pool_ok) for w in duts]
            extra.update(workers=rows, queues=len(duts), hash_source=HASH_SOURCE, fanout_group=self.fanout_group)
            pool_ok = all(row["pool_ok"] for row in rows)
            lost = sum(int(w.nst[N_CAP_LOST]) for w in duts)
            if lost:
                notes.append(f"capture: {lost} frames the workers forwarded not kept (each keeps at most "
                             f"{self.capture_max})")
        return make_result(self.backend, g, k, stats=sum(w.stats for w in duts), sent=int(gst[gen.G_SENT]),
                           forwarded=int(gst[gen.G_RX]), dropped=dropped, seconds=wall, tsc_hz=hz,
                           dut_cycles=r.dut_sum(N_DUT_CYC), nic_cycles=r.dut_sum(N_NIC_CYC), notes=notes,
                           pool_ok=pool_ok, cpu_percent=100.0 * dut_cpu / max(dut_wall, 1e-9), extra=extra,
                           latency=lat.summarize(r.stamps[1], hz, self.rate) if self.latency else None)

    def _kernel_side(self, r, notes):
        """What the kernel spent receiving (softirq on all CPUs, the NAPI threads of the
        DUT's veth), in % of one CPU over the run, and whether it could busy-poll."""
        softirq, threads, wall = r.kernel_cpu
        ids = [napi.napi_id(s) for s in self.rx_socks]
        us = self.knobs.busy_poll_us
        if us and ids and not any(ids):
            notes.append(f"busy_poll_us={us}: poll() spun in the kernel up to {us} µs before sleeping "
                         f"(net.core.busy_poll at least {us} for the run), re-checking the ring only: the socket "
                         "has no NAPI ID (SO_INCOMING_NAPI_ID reads 0), so the kernel could not poll the veth's "
                         "NAPI from there")
        return {"napi": self.knobs.napi, "busy_poll_us": us,
                "dut_napi_id": ids[0] if ids else None,
                "softirq_cpu_percent": 100.0 * softirq / max(wall, 1e-9),
                "napi_thread_cpu_percent": 100.0 * threads / max(wall, 1e-9)}

    def _worker_row(self, w, wall, hz, pool_ok):
        """Worker w's share of the run, in the shape of labkit.run.workers' rows.
        Its books balance alone: sent (frames its socket received, and those
        its ring had no room for) == forwarded (handed to its TX ring) + drops."""
        dropped = {r: int(c) for r, c in zip(self.g.reasons, w.counters) if c}
        if w.ring_full:
            dropped["dut_rx_ring_full"] = w.ring_full
        too_long = dropped.get("rx_frame_too_long", 0)
        fwd = int(w.nst[N_TX])
        handled = fwd + sum(v for r, v in dropped.items() if r not in NIC_SIDE_DROPS)
        cyc = int(w.nst[N_DUT_CYC])
        cpu_s = w.cpu[0]
        return {"queue": w.q, "sent": int(w.nst[N_RX]) + too_long + w.ring_full, "forwarded": fwd,
                "dropped": dropped, "handled": handled, "dut_cycles": cyc, "nic_cycles": int(w.nst[N_NIC_CYC]),
                "cycles_per_packet": cyc / handled if handled else 0.0,
                # the loop counts only iterations that had frames: no idle polls to take out
                "busy_cycles_per_packet": cyc / handled if handled else 0.0,
                "mpps": handled / wall / 1e6 if wall > 0 else 0.0,
                "cpu_percent": 100.0 * cpu_s / max(w.cpu[1], 1e-9),
                "cpu_cycles_per_packet": cpu_s * hz / handled if handled else 0.0,
                "rx_packets": int(w.nst[N_RX]), "tx_packets": fwd,
                # every RX block back with the kernel, every TX slot sent
                "pool_ok": pool_ok and int(w.rx.cur[af.C_HELD]) == 0 and int(w.tx.cur[af.T_PENDING]) == 0}

    def capture(self, q):
        """Worker q's forwarded frames of the last run (with a capture_path and
        several workers): a list of (rxhash, queue, frame bytes) in the order q
        transmitted them, the hash and queue read from each frame's metadata."""
        d = self.duts[q]
        n = int(d.nst[N_CAP_N])
        offs = np.concatenate(([0], np.cumsum(d.cap_len[:n].astype(np.int64)))).astype(np.int64)
        return [(int(d.cap_meta[i, 0]), int(d.cap_meta[i, 1]), d.cap_data[offs[i]:offs[i + 1]].tobytes())
                for i in range(n)]



class _Run:
    """One run of a NetEngine: the generator's state, the DUT workers' slices, the
    watcher's books (the kernel's drops, the links' drops) and the threads."""

    def __init__(self, eng, packets):
        self.eng, self.hz, self.packets = eng, tsc_hz(), packets
        t, k = eng.traffic, eng.knobs
        self.gst = np.zeros(gen.GST_SIZE, np.int64)
        self.budget = packets if packets is not None else np.iinfo(np.int64).max
        cap_n = eng.capture_max
        self.cap_data = np.zeros(cap_n * min(t.stride, eng.max_link) if cap_n else 0, np.uint8)
        self.cap_len = np.zeros(cap_n, np.uint32)
        self.frames_flat = t.frames.reshape(-1)
        self.gh, self.gl, self.ghash = (np.zeros(256, np.uint32) for _ in range(3))
        self.g_too_long = np.zeros(1, np.int64)
        if eng.latency:
            self.stamps = (lat.stamp_offsets(t.frames, t.lengths), lat.new_hist(eng.latency),
                           np.zeros((256, 2), np.int64))
        else:
            self.stamps = gen.NO_STAMPS
        self.rate_cpp = self.hz / eng.rate if eng.rate else 0.0
        poll_ms = POLL_MS if k.poll != "busy" else 0
        spin_cyc = int(ADAPTIVE_SPIN_US * 1e-6 * self.hz) if k.poll == "adaptive" else 0
        self.slices = []
        for d in eng.duts:
            eng._dut_state(d)
            # a frame longer than a buffer's data room is dropped in every mode alike
            rx_max = min(d.rx.max_frame, eng.pool.max_frame) if d.rx else 0
            self.slices.append(eng._dut_slice(d, rx_max, poll_ms, spin_cyc))
        self.errors, self.cpu = [], {}
        self.gen_final = threading.Event()
        self.retried, self.freezes, self.wire = {}, {}, {}     # link drops as last read (every LINK_S)
        self.kernel = {name: 0 for _, name in eng.kernel_socks}
        self.per_sock = {id(d.rx.sock): d for d in eng.duts if d.rx is not None}
        self.links_read = 0.0
        self.start = self.stop_tsc = 0

    def gen_slice(self, t_start, stop_tsc, slice_end):
        eng, t = self.eng, self.eng.traffic
        tx, rx = eng.gen_tx, eng.gen_rx
        return gen.gen_slice(tx.u8, tx.u32, tx.cur, tx.fileno(), tx.kick_buf, self.frames_flat, t.stride,
                             t.lengths, t.seq, tx.max_frame, rx.u8, rx.u32, rx.cur, self.gh, self.gl, self.ghash,
                             rx.max_frame, self.g_too_long, self.cap_data, self.cap_len, self.gst, self.budget,
                             t_start, stop_tsc, self.rate_cpp, eng.gen_batch, slice_end, *self.stamps)

    def compile(self):
        """Compile (or load from numba's cache) before the clock starts; zero the kernel's counters."""
        self.gst[gen.G_STOP] = 1
        self.gen_slice(0, 0, 0)
        for d, dut_slice in zip(self.eng.duts, self.slices):
            d.nst[N_STOP] = 1
            dut_slice(0)
            d.nst[:] = 0
        self.gst[:] = 0
        lat.clear(self.stamps[1])
        for s, _ in self.eng.kernel_socks:
            af.read_stats(s)
        self.wire0 = {name: labnet.link_stats(ns, ifn)[stat] for ns, ifn, name, _, stat in self.eng.wires}

    def start_threads(self):
        duts = self.eng.duts
        names = ["labkit-dut"] if len(duts) == 1 else [f"labkit-dut{d.q}" for d in duts]
        threads = [threading.Thread(target=self._dut_main, args=(d, f), name=n, daemon=True)
                   for d, f, n in zip(duts, self.slices, names)]
        threads.append(threading.Thread(target=self._gen_main, name="labkit-gen", daemon=True))
        for th in threads:
            th.start()
        return threads

    def _dut_main(self, d, dut_slice):
        c0, w0 = time.thread_time(), time.perf_counter()
        try:
            while not dut_slice(now_tsc() + int(SLICE_S * self.hz)):
                pass
        except BaseException as e:        # shown by the watcher, not lost in a thread
            self.errors.append(e)
        d.cpu = (time.thread_time() - c0, time.perf_counter() - w0)

    def _gen_main(self):
        c0, w0 = time.thread_time(), time.perf_counter()
        try:
            while True:
                self.gen_slice(self.start, self.stop_tsc, now_tsc() + int(SLICE_S * self.hz))
                if self.gen_final.is_set() or self.gst[gen.G_ERR]:
                    break
        except BaseException as e:
            self.errors.append(e)
        self.cpu["gen"] = (time.thread_time() - c0, time.perf_counter() - w0)

    def drops(self, links=False):
        """Every drop so far by reason: the kernel's (ring full), the links' (read every
        LINK_S: a netlink round trip costs ~1 ms), the generator's, the graph's."""
        for s, name in self.eng.kernel_socks:
            _, dropped, frozen = af.read_stats(s)
            self.kernel[name] += dropped
            self.freezes[name] = self.freezes.get(name, 0) + frozen
            if id(s) in self.per_sock:
                self.per_sock[id(s)].ring_full += dropped
        if links or time.monotonic() - self.links_read >= LINK_S:
            self.links_read = time.monotonic()
            for ns, ifn, name, lost, stat in self.eng.wires:
                n = labnet.link_stats(ns, ifn)[stat] - self.wire0[name]
                (self.wire if lost else self.retried)[name] = n
        d = dict(self.wire)
        d.update(self.kernel)
        d["gen_unsendable"] = int(self.gst[gen.G_UNSENDABLE])
        d["gen_rx_too_long"] = int(self.g_too_long[0])
        for counters in self.eng.graph_counters():
            for r, c in by_reason(self.eng.g.reasons, counters).items():
                d[r] = d.get(r, 0) + c
        return {r: int(c) for r, c in d.items() if c}

    def dut_sum(self, i):
        return sum(int(d.nst[i]) for d in self.eng.duts)

    def watch(self, progress):
        """Until every frame is accounted for (or a thread failed, or the kernel stalled):
        progress, and the books. Ctrl-C stops the generator and lets what is in flight
        drain, so the books still balance; it is raised afterwards.
        Returns (the interrupt or None, stalled)."""
        gst, duts = self.gst, self.eng.duts
        interrupted, stalled = None, False
        last_change, last_seen = time.monotonic(), None
        while True:
            try:
                time.sleep(WATCH_S)
                interrupts.check()                          # a Ctrl-C lost in a finalizer, raised again
                if self.errors:
                    break
                d = self.drops()
                tell_progress(progress, self.packets, gst[gen.G_SENT], self.start, self.stop_tsc)
                if gst[gen.G_ERR] or any(w.nst[N_ERR] for w in duts):
                    break
                seen = (int(gst[gen.G_SENT]), int(gst[gen.G_RX]), self.dut_sum(N_RX), tuple(sorted(d.items())))
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
                interrupts.caught()
                interrupted = e
                gst[gen.G_STOP] = 1
        return interrupted, stalled
