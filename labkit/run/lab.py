"""``Lab(backend, graph, knobs).run(...) -> Result``: one experiment.

A Lab owns everything a run needs: the pool (mempool or heap, on huge pages
or not), the NIC and its rings, the tables (FIB, adjacencies, ACL), the
traffic, and the compiled graph+loop for its knobs. ``run()`` can be called
several times; each run starts from empty rings and ends with every buffer
back in the pool.

``workers=N`` (N > 1, in-memory NIC) runs N workers, one per queue of the
multi-queue NIC with RSS (``labkit.run.workers``); on veth, N workers on N
AF_PACKET rings in one PACKET_FANOUT_HASH group (``labkit.run.netrun``);
``workers=1`` is the single loop. ``multiqueue=True`` runs even one worker on
the multi-queue NIC, and so do ``Knobs(sync="lock")`` (a dispatcher thread
feeds the workers) and a threading model other than "rtc" (``Knobs(model=...)``).
"""
from functools import lru_cache

import numpy as np

from ..graph.acl import Acl
from ..graph.compile import make_frames, resolve
from ..graph.fib import Fib
from ..graph.nodes import GRAPHS
from ..memory.layouts import MAX_FRAME_DEFAULT
from ..memory.mempool import make_pool
from ..memory.region import alloc_region
from ..memory.ring import Ring
from ..nic import memory as nicmem
from ..nic.pcap import PcapWriter, load_traffic
from ..nic.traffic import make_traffic
from .knobs import NET_KNOBS, WORKER_KNOBS, Knobs, KnobError
from .loopgen import load_module, port_for
from .measure import now_tsc, tsc_hz
from .result import NodeRuntime, Result
from .trace import trace as _trace
from ..settings import SLICE_S

BACKENDS = ("memory", "veth", "tap")
POOL_SIZE = 8192          # buffers: rx ring + tx ring + vector + copies, with room to spare
RING_SIZE = 1024


class LabError(ValueError):
    """A Lab asked for something that does not exist; one line says what to use."""


@lru_cache(maxsize=4)
def _fib(n_routes, seed, hugepages):
    alloc = (lambda n: alloc_region(n, hugepages)[0])
    return Fib.random(n_routes=n_routes, seed=seed, alloc=alloc)


def _workers_arg(workers, queues):
    """workers=N or queues=N (one worker per queue): the same number."""
    def ok(v):
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and 1 <= v <= 64
    if not ok(workers):
        raise LabError(f"workers={workers!r}: use a whole number of workers from 1 to 64")
    if queues is not None:
        if not ok(queues):
            raise LabError(f"queues={queues!r}: use a whole number of queues from 1 to 64")
        if workers != 1 and workers != queues:
            raise LabError(f"workers={workers} and queues={queues}: one worker per queue, give one of them")
        return int(queues)
    return int(workers)


class Lab:
    def __init__(self, backend="memory", graph="ip4", knobs=None, size=64, flows=1024,
                 mix="udp", malformed=0.0, pcap_in=None, pcap_out=None, seed=1,
                 routes=100_000, pool_size=POOL_SIZE, ring_size=RING_SIZE, capture_max=1_000_000,
                 rate=None, gen_batch=None, workers=1, queues=None, rss_key="default", multiqueue=None,
                 dispatcher=None):
        if backend not in BACKENDS:
            raise LabError(f"unknown backend {backend!r}; backends are: {', '.join(BACKENDS)}")
        if rate is not None and not (isinstance(rate, (int, float)) and not isinstance(rate, bool)
                                     and 1 <= rate <= 1e9):
            raise LabError(f"rate={rate!r}: use packets per second from 1 to 1e9, or None for as fast as possible")
        if gen_batch is not None and (isinstance(gen_batch, bool) or not isinstance(gen_batch, int)
                                      or not 1 <= gen_batch <= 256):
            raise LabError(f"gen_batch={gen_batch!r}: use frames per TX kick from 1 to 256")
        if graph not in GRAPHS:
            raise LabError(f"unknown graph {graph!r}; graphs are: {', '.join(GRAPHS)}")
        self.knobs = knobs = knobs if knobs is not None else Knobs()
        if not isinstance(knobs, Knobs):
            raise KnobError("knobs must be a labkit.Knobs")
        n_workers = _workers_arg(workers, queues)
        if multiqueue is None:    # several workers, or a dispatcher thread (sync="lock"), need it
            # (on veth several workers fan out over AF_PACKET rings instead: labkit.run.netrun)
            multiqueue = (n_workers > 1 and backend == "memory") or dispatcher is True or knobs.sync == "lock"
            # a threading model other than run-to-completion runs an I/O stage (the dispatcher)
            multiqueue = multiqueue or knobs.model != "rtc"
        if knobs.model != "rtc" and backend != "memory":
            raise LabError(f"model={knobs.model!r} runs its stages on the in-memory NIC only; use "
                           "backend='memory' (or model='rtc')")
        if multiqueue and backend != "memory":
            raise LabError("the multi-queue NIC (multiqueue, dispatcher, sync='lock') runs on the in-memory NIC "
                           "only; use backend='memory' (on veth, workers=N fans out over N sockets)")
        if not multiqueue and (n_workers > 1 and backend == "memory" or dispatcher):
            raise LabError("workers > 1 and dispatcher=True need the multi-queue NIC: leave multiqueue unset")
        if not multiqueue and knobs.model != "rtc":
            raise LabError(f"model={knobs.model!r} runs on the multi-queue NIC: leave multiqueue unset")
        if n_workers > 1 and backend == "tap":
            raise LabError(f"workers={n_workers} on a TAP device: it has one file descriptor, one queue; "
                           "use backend='veth' (N sockets in a PACKET_FANOUT group) or workers=1")
        if n_workers > 1 and backend == "veth" and knobs.copy:
            raise LabError(f"workers={n_workers} on veth fans out over AF_PACKET rings; copy=True "
                           "(recv()/send() per frame) runs with workers=1")
        self.backend, self.graph_name = backend, graph
        self.notes = []
        self.workers = None
        self.max_frame = MAX_FRAME_DEFAULT
        self.pool = None
        if not multiqueue:
            self.pool = make_pool(knobs.mempool, pool_size, hugepages=knobs.hugepages)
            self.max_frame = self.pool.max_frame
            self.pools = [self.pool]
            if rss_key != "default":
                self.notes.append("rss_key applies to the multi-queue NIC (workers=N), not to one queue")
            if self.pool.note:
                self.notes.append(self.pool.note)
        self.graph = resolve(graph)
        self.tables = {}
        fib = None
        if any(t.startswith("fib_") or t == "adj_mac" for t in self.graph.tables):
            fib = _fib(routes, seed, knobs.hugepages)
            self.tables.update(fib.tables())
        if "acl_rules" in self.graph.tables:
            self.tables["acl_rules"] = Acl.default().rules
        self.fib = fib
        self.from_pcap = pcap_in is not None

        def traffic_for(max_frame):
            if self.from_pcap:
                return load_traffic(pcap_in, max_frame)
            dst = fib.sample_destinations(max(flows, 1), seed) if fib is not None else None
            return make_traffic(size=size, flows=flows, mix=mix, malformed=malformed,
                                seed=seed, dst=dst, max_frame=max_frame)
        self.pcap_out = pcap_out
        self.closed = False
        self.net = None
        if backend != "memory":
            # A real NIC: the generator and the DUT on veth or TAP (labkit.run.netrun).
            from .netrun import GEN_BATCH, NetBackend
            self.net = NetBackend(backend, self.graph, knobs, self.pool, self.tables, traffic_for,
                                  gen_batch=gen_batch or GEN_BATCH, rate=rate,
                                  capture_path=pcap_out, capture_max=capture_max, workers=n_workers)
            self.traffic = self.net.traffic
            self.notes += self.net.notes
            return
        for name in NET_KNOBS:
            if getattr(knobs, name) != getattr(Knobs(), name):
                self.notes.append(f"knob {name} applies to a real NIC (veth, tap), not the in-memory one")
        if rate is not None or gen_batch is not None:
            self.notes.append("rate and gen_batch apply to the veth and tap generator; the in-memory NIC "
                              "offers frames as fast as the data plane takes them")
        self.traffic = traffic_for(self.max_frame)
        if multiqueue:
            from .workers import Workers
            try:
                self.workers = Workers(self.graph, knobs, self.tables, self.traffic, n_workers, pool_size, ring_size,
                                       capture_max=capture_max if pcap_out else 0, rss_key=rss_key,
                                       dispatcher=dispatcher)
            except ValueError as e:
                raise LabError(str(e)) from None
            self.pools = self.workers.pools
            self.notes += self.workers.notes
            return
        for name in WORKER_KNOBS:
            if getattr(knobs, name) != getattr(Knobs(), name):
                self.notes.append(f"knob {name} applies to several workers (workers=N), not to one")
        self.rx, self.tx = Ring(ring_size), Ring(ring_size)
        self.mod = load_module(self.graph, knobs, port_for(self.graph, knobs, "memory"))
        self.frames = make_frames(self.graph, knobs.batch, knobs.layout)
        b = knobs.batch
        self.tx_h, self.tx_l = np.zeros(b, np.uint32), np.zeros(b, np.uint32)
        self.free_h = np.zeros(b, np.uint32)
        self.tmp_h = np.zeros(ring_size, np.uint32)
        self.tmp_l = np.zeros(ring_size, np.uint32)
        self.tmp_hash = np.zeros(ring_size, np.uint32)
        self.capture_max = capture_max if pcap_out else 0

    # -- running ---------------------------------------------------------------
    def run(self, seconds=None, packets=None, progress=None):
        """Offer traffic for `seconds` of wall time or `packets` frames, then
        drain: every frame offered is forwarded or dropped by a counted reason."""
        if seconds is not None and packets is not None:
            raise LabError("give seconds or packets, not both")
        if seconds is None and packets is None:
            if self.from_pcap:
                packets = int(self.traffic.seq.size)   # a capture replays once
            else:
                seconds = 1.0
        if seconds is not None and not (isinstance(seconds, (int, float)) and 0 < seconds <= 3600):
            raise LabError(f"seconds={seconds!r}: use a number of seconds from 0 (exclusive) to 3600")
        if packets is not None and not (isinstance(packets, (int, np.integer)) and 0 < packets <= 10**12):
            raise LabError(f"packets={packets!r}: use a whole number from 1 to 10**12")
        if self.closed:
            raise LabError("this Lab is closed; make a new one")
        if self.net is not None:
            return self.net.run(seconds, packets, progress)
        if self.workers is not None:
            wall = self.workers.run(seconds, packets, progress)
            if self.pcap_out:
                self.workers.write_capture(self.pcap_out)
            return self.workers.result(self.backend, self.graph_name, self.notes, wall)
        hz = tsc_hz()
        g, m, k = self.graph, self.mod, self.knobs
        counters = np.zeros(len(g.reasons), np.int64)
        stats = np.zeros((len(g.nodes), 3), np.int64)
        nst = np.zeros(nicmem.NST_SIZE, np.int64)
        cap_n = self.capture_max
        cap_data = np.zeros(cap_n * min(self.traffic.stride, self.pool.max_frame) if cap_n else 0, np.uint8)
        cap_len = np.zeros(cap_n, np.uint32)
        budget = packets if packets is not None else np.iinfo(np.int64).max
        t = self.traffic
        tables = [self.tables[name] for name in g.tables]
        fh, fl, fx, counts = self.frames

        def slice_(budget, stop, slice_end):
            return m.run_slice(self.pool.arena, self.pool.a, self.pool.b, self.rx.desc, self.rx.cur,
                               self.tx.desc, self.tx.cur, t.frames, t.lengths, t.seq,
                               self.pool.max_frame, cap_data, cap_len, nst, budget, stop, slice_end,
                               k.batch, fh, fl, fx, counts, self.tx_h, self.tx_l, self.free_h,
                               self.tmp_h, self.tmp_l, self.tmp_hash, counters, stats, *tables)

        # The first call compiles (or loads numba's cache): do it with nothing
        # to send, before the clock starts.
        slice_(0, 0, 0)
        nst[nicmem.STOPPED] = 0
        start = now_tsc()
        stop = start + int(seconds * hz) if seconds is not None else np.iinfo(np.int64).max
        done = False
        try:
            while not done:
                slice_end = now_tsc() + int(SLICE_S * hz)
                done = slice_(budget, stop, slice_end)
                if progress is not None:
                    if packets is not None:
                        progress(min(1.0, nst[nicmem.SENT] / packets))
                    else:
                        progress(min(1.0, (now_tsc() - start) / (stop - start)))
        except KeyboardInterrupt:
            # Stop offering, let the data plane drain what is in flight, so
            # every buffer goes back to the pool; then let the interrupt go on.
            nst[nicmem.STOPPED] = 1
            while not slice_(budget, stop, now_tsc() + int(SLICE_S * hz)):
                pass
            raise
        wall = (now_tsc() - start) / hz
        if self.pcap_out:
            self._write_capture(cap_data, cap_len, nst)
        dropped = {r: int(c) for r, c in zip(g.reasons, counters) if c}
        runtime = [NodeRuntime(n.name, int(s[0]), int(s[1]), int(s[2])) for n, s in zip(g.nodes, stats)]
        notes = list(self.notes)
        if nst[nicmem.CAP_LOST]:
            notes.append(f"capture: {nst[nicmem.CAP_LOST]} forwarded frames not written "
                         f"(the capture holds at most {self.capture_max})")
        return Result(backend=self.backend, graph=self.graph_name, knobs=k.as_dict(),
                      sent=int(nst[nicmem.SENT]), forwarded=int(nst[nicmem.FWD]), dropped=dropped,
                      seconds=wall, tsc_hz=hz, dut_cycles=int(nst[nicmem.DUT_CYC]),
                      nic_cycles=int(nst[nicmem.NIC_CYC]), runtime=runtime, notes=notes,
                      pool_ok=self.pool.n_free == self.pool.capacity)

    def _write_capture(self, cap_data, cap_len, nst):
        n = int(nst[nicmem.CAP_N])
        lengths = cap_len[:n].astype(np.int64)
        offsets = np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.int64)
        with PcapWriter(self.pcap_out) as w:
            w.write_many(cap_data, offsets, lengths)

    def trace(self, n=5):
        """The first n packets' path through the graph (see labkit.run.trace)."""
        if not isinstance(n, (int, np.integer)) or not 1 <= n <= 10_000:
            raise LabError(f"trace count {n!r}: use a whole number from 1 to 10000")
        return _trace(self.graph, self.tables, self.traffic, self.max_frame, n)

    def close(self):
        """Release everything; on veth/tap, close the ports (and take the lab
        network down if this Lab brought it up)."""
        self.closed = True
        if self.net is not None:
            self.net.close()
        self.pool = self.rx = self.tx = self.workers = None
        self.pools = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
