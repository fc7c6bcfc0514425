"""The single loop: the in-memory NIC and the data plane in one compiled function.

The run loop (``labkit.run.loopgen`` with the "memory" port) does, per
iteration, what a poll-mode driver and its application do:

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
import numpy as np

from . import interrupts
from ..graph.compile import make_frames
from ..memory.ring import Ring
from ..nic import latency as lat
from ..nic import memory as nicmem
from ..nic.pcap import write_packed
from ..settings import SLICE_S
from .engine import Engine, tell_progress
from .loopgen import load_module, port_for
from .measure import now_tsc, tsc_hz
from .result import by_reason, make_result


class SingleLoop(Engine):
    """One loop, one queue: the in-memory NIC's rings, one pool, one compiled loop."""
    kind = "single"

    def __init__(self, graph, knobs, pool, tables, traffic, ring_size, capture_path=None, capture_max=0,
                 notes=(), rate=None, latency=False):
        self.g, self.knobs, self.pool, self.traffic = graph, knobs, pool, traffic
        self.rate, self.latency = rate, latency
        self.stamp_at = lat.stamp_offsets(traffic.frames, traffic.lengths)
        self.pools, self.max_frame, self.notes = [pool], pool.max_frame, list(notes)
        self.tables = [tables[name] for name in graph.tables]
        self.capture_path = capture_path
        self.capture_max = capture_max if capture_path else 0
        self.rx, self.tx = Ring(ring_size), Ring(ring_size)
        self.mod = load_module(graph, knobs, port_for(graph, knobs, "memory"))
        self.frames = make_frames(graph, knobs.batch, knobs.layout)
        b = knobs.batch
        self.tx_h, self.tx_l = np.zeros(b, np.uint32), np.zeros(b, np.uint32)
        self.free_h = np.zeros(b, np.uint32)
        self.tmp_h = np.zeros(ring_size, np.uint32)
        self.tmp_l = np.zeros(ring_size, np.uint32)
        self.tmp_hash = np.zeros(ring_size, np.uint32)

    def _slicer(self, counters, stats, nst, cap_data, cap_len, hist):
        """slice_(budget, stop_tsc, slice_end_tsc, t_start) -> done: one call of the compiled loop."""
        p, t, k = self.pool, self.traffic, self.knobs
        fh, fl, fx, counts = self.frames
        cpp = tsc_hz() / self.rate if self.rate else 0.0

        def slice_(budget, stop, slice_end, t_start=0):
            return self.mod.run_slice(p.arena, p.a, p.b, self.rx.desc, self.rx.cur, self.tx.desc, self.tx.cur,
                                      t.frames, t.lengths, t.seq, p.max_frame, cap_data, cap_len, nst, budget,
                                      stop, slice_end, k.batch, t_start, cpp, self.stamp_at, hist,
                                      fh, fl, fx, counts, self.tx_h, self.tx_l,
                                      self.free_h, self.tmp_h, self.tmp_l, self.tmp_hash, counters, stats,
                                      *self.tables)
        return slice_

    def run(self, seconds=None, packets=None, progress=None):
        hz = tsc_hz()
        g = self.g
        counters = np.zeros(len(g.reasons), np.int64)
        stats = np.zeros((len(g.nodes), 3), np.int64)
        nst = np.zeros(nicmem.NST_SIZE, np.int64)
        cap_n = self.capture_max
        cap_data = np.zeros(cap_n * min(self.traffic.stride, self.pool.max_frame) if cap_n else 0, np.uint8)
        cap_len = np.zeros(cap_n, np.uint32)
        budget = packets if packets is not None else np.iinfo(np.int64).max
        hist = lat.new_hist(self.latency) if self.latency else lat.no_hist()
        slice_ = self._slicer(counters, stats, nst, cap_data, cap_len, hist)
        # The first call compiles (or loads numba's cache): do it with nothing
        # to send, before the clock starts.
        slice_(0, 0, 0)
        nst[nicmem.STOPPED] = 0
        lat.clear(hist)
        start = now_tsc()
        stop = start + int(seconds * hz) if seconds is not None else np.iinfo(np.int64).max
        done = False
        try:
            while not done:
                done = slice_(budget, stop, now_tsc() + int(SLICE_S * hz), start)
                tell_progress(progress, packets, nst[nicmem.SENT], start, stop)
                interrupts.check()                  # a Ctrl-C lost in a finalizer, raised again
        except KeyboardInterrupt:
            interrupts.caught()
            # Stop offering, let the data plane drain what is in flight, so
            # every buffer goes back to the pool; then let the interrupt go on.
            nst[nicmem.STOPPED] = 1
            while not slice_(budget, stop, now_tsc() + int(SLICE_S * hz), start):
                pass
            raise
        wall = (now_tsc() - start) / hz
        if self.capture_path:
            write_packed(self.capture_path, cap_data, cap_len, int(nst[nicmem.CAP_N]))
        notes = list(self.notes)
        if nst[nicmem.CAP_LOST]:
            notes.append(f"capture: {nst[nicmem.CAP_LOST]} forwarded frames not written "
                         f"(the capture holds at most {self.capture_max})")
        dropped = by_reason(g.reasons, counters)
        if nst[nicmem.MISSED]:
            dropped["rx_queue_full"] = int(nst[nicmem.MISSED])
        return make_result("memory", g, self.knobs, stats=stats, sent=int(nst[nicmem.SENT]),
                           forwarded=int(nst[nicmem.FWD]), dropped=dropped, seconds=wall,
                           tsc_hz=hz, dut_cycles=int(nst[nicmem.DUT_CYC]), nic_cycles=int(nst[nicmem.NIC_CYC]),
                           notes=notes, pool_ok=self.pool.n_free == self.pool.capacity,
                           latency=lat.summarize(hist, hz, self.rate) if self.latency else None,
                           extra={"rate": self.rate} if self.rate else {})

    def close(self):
        self.rx = self.tx = None
