"""``Lab(backend, graph, knobs).run(...) -> Result``: one experiment.

A Lab checks what it is asked for, builds the tables (FIB, adjacencies, ACL)
and the traffic, and picks one engine (``labkit.run.engine``) to run them:
the single loop on the in-memory NIC, N workers on the multi-queue NIC, or
the generator and DUT on veth or TAP. ``run()`` can be called several times;
each run starts from empty rings and ends with every buffer back in its pool.

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
from ..graph.compile import resolve
from ..graph.fib import Fib
from ..graph.nodes import GRAPHS
from ..memory.layouts import MAX_FRAME_DEFAULT
from ..memory.mempool import make_pool
from ..memory.region import alloc_region
from ..nic.latency import MAX_EVERY
from ..nic.pcap import load_traffic
from ..nic.traffic import make_traffic
from . import noise
from .knobs import NET_KNOBS, WORKER_KNOBS, Knobs, KnobError
from .single import SingleLoop
from .trace import trace as _trace
from .workers import Workers

BACKENDS = ("memory", "veth", "tap", "xdp")
XDP_GRAPHS = ("l2fwd", "ip4")          # the graphs labkit/nic/xdp/ has a program for
XDP_FIBS = ("dir-24-8", "lpm-trie")    # ip4's FIB in the kernel (labkit.run.xdprun)
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
    """One experiment: a graph, its knobs, its traffic, and the engine that runs them.

    Every Lab has ``engine``, ``graph``, ``knobs``, ``tables``, ``fib`` (None
    without a FIB), ``traffic``, ``pools`` (``pool`` is the first, or None
    when each worker has its own), ``notes`` and ``max_frame``; ``workers``
    and ``net`` are the engine when it is that kind, else None."""

    def __init__(self, backend="memory", graph="ip4", knobs=None, size=64, flows=1024,
                 mix="udp", malformed=0.0, pcap_in=None, pcap_out=None, seed=1,
                 routes=100_000, pool_size=POOL_SIZE, ring_size=RING_SIZE, capture_max=1_000_000,
                 rate=None, gen_batch=None, workers=1, queues=None, rss_key="default", multiqueue=None,
                 dispatcher=None, order="spread", latency=False, xdp_fib=None):
        knobs = knobs if knobs is not None else Knobs()
        _check_lab(backend, graph, knobs, rate, gen_batch, latency)
        if xdp_fib is not None and xdp_fib not in XDP_FIBS:
            raise LabError(f"xdp_fib={xdp_fib!r}: use {' or '.join(XDP_FIBS)} (ip4's FIB in the XDP program)")
        latency = int(latency)          # 0: not measured; N: one frame in N stamped (True: every frame)
        if pcap_in is not None and order != "spread":
            raise LabError(f"order={order!r} arranges generated traffic; a capture (pcap_in) is replayed in its "
                           "own order: leave order unset")
        n_workers = _workers_arg(workers, queues)
        kind = _engine_kind(backend, knobs, n_workers, multiqueue, dispatcher)
        self.backend, self.graph_name, self.knobs = backend, graph, knobs
        self.closed = False
        self.graph = resolve(graph)
        self.fib = None
        self.tables = {}
        if any(t.startswith("fib_") or t == "adj_mac" for t in self.graph.tables):
            self.fib = _fib(routes, seed, knobs.hugepages)
            self.tables.update(self.fib.tables())
        if "acl_rules" in self.graph.tables:
            self.tables["acl_rules"] = Acl.default().rules
        self.from_pcap = pcap_in is not None

        def traffic_for(max_frame):
            if self.from_pcap:
                return load_traffic(pcap_in, max_frame)
            dst = self.fib.sample_destinations(max(flows, 1), seed) if self.fib is not None else None
            return make_traffic(size=size, flows=flows, mix=mix, malformed=malformed,
                                seed=seed, dst=dst, max_frame=max_frame, order=order)
        notes = []
        if xdp_fib is not None and not (backend == "xdp" and self.fib is not None):
            notes.append(f"xdp_fib={xdp_fib} chooses ip4's FIB in the XDP program (backend xdp, graph ip4)")
        pool = None
        if kind != "workers":     # (each worker has a pool of its own)
            pool = make_pool(knobs.mempool, pool_size, hugepages=knobs.hugepages)
            if rss_key != "default":
                notes.append("rss_key applies to the multi-queue NIC (workers=N), not to one queue")
            notes += [pool.note] if pool.note else []
        if kind == "net":
            # A real NIC (imported only then: pyroute2 and AF_PACKET are Linux's)
            from .netrun import GEN_BATCH, NetEngine
            net = dict(gen_batch=gen_batch or GEN_BATCH, rate=rate, capture_path=pcap_out, capture_max=capture_max,
                       latency=latency)
            if backend == "xdp":
                from .xdprun import XdpEngine
                self.engine = XdpEngine(self.graph, knobs, pool, self.tables, self.fib, traffic_for,
                                        xdp_fib=xdp_fib or XDP_FIBS[0], **net)
            else:
                self.engine = NetEngine(backend, self.graph, knobs, pool, self.tables, traffic_for,
                                        workers=n_workers, **net)
            self.notes = notes + self.engine.notes
            self.pools, self.max_frame, self.traffic = [pool], pool.max_frame, self.engine.traffic
            return
        notes += _memory_notes(knobs, rate, gen_batch, kind)
        self.engine = self._memory_engine(kind, knobs, pool, traffic_for, notes, n_workers, pool_size, ring_size,
                                          capture_max, pcap_out, rss_key, dispatcher, rate, latency)
        self.notes, self.pools, self.max_frame = self.engine.notes, self.engine.pools, self.engine.max_frame
        self.traffic = self.engine.traffic

    def _memory_engine(self, kind, knobs, pool, traffic_for, notes, n_workers, pool_size, ring_size, capture_max,
                       pcap_out, rss_key, dispatcher, rate, latency):
        if kind == "single":
            return SingleLoop(self.graph, knobs, pool, self.tables, traffic_for(pool.max_frame), ring_size,
                              capture_path=pcap_out, capture_max=capture_max, notes=notes, rate=rate,
                              latency=latency)
        traffic = traffic_for(MAX_FRAME_DEFAULT)
        try:
            return Workers(self.graph, knobs, self.tables, traffic, n_workers, pool_size, ring_size,
                           capture_max=capture_max if pcap_out else 0, rss_key=rss_key,
                           dispatcher=dispatcher, notes=notes, capture_path=pcap_out, latency=latency)
        except ValueError as e:
            raise LabError(str(e)) from None

    @property
    def pool(self):
        """The Lab's pool (None when each worker has its own)."""
        return None if self.engine.kind == "workers" or not self.pools else self.pools[0]

    @property
    def workers(self):
        """The engine when it is the multi-queue workers (else None)."""
        return self.engine if self.engine.kind == "workers" else None

    @property
    def net(self):
        """The engine when it runs on veth or TAP (else None)."""
        return self.engine if self.engine.kind == "net" else None

    # -- running ---------------------------------------------------------------
    def run(self, seconds=None, packets=None, progress=None, loops=None):
        """Offer traffic for `seconds` of wall time or `packets` frames, then
        drain: every frame offered is forwarded or dropped by a counted reason.
        A capture (pcap_in) is replayed `loops` times, each pass every frame
        once in file order (default: once, as tcpreplay does), then the run
        drains; `seconds` repeats it for that long, `packets` sends that many."""
        if sum(x is not None for x in (seconds, packets, loops)) > 1:
            raise LabError("give one of seconds, packets or loops")
        if loops is not None and not self.from_pcap:
            raise LabError("loops replays a capture: make the Lab with pcap_in=FILE, or give seconds or packets")
        if seconds is None and packets is None:
            if self.from_pcap:
                packets = self._replay(1 if loops is None else loops)
            else:
                seconds = 1.0
        if seconds is not None and not (isinstance(seconds, (int, float)) and 0 < seconds <= 3600):
            raise LabError(f"seconds={seconds!r}: use a number of seconds from 0 (exclusive) to 3600")
        if packets is not None and not (isinstance(packets, (int, np.integer)) and 0 < packets <= 10**12):
            raise LabError(f"packets={packets!r}: use a whole number from 1 to 10**12")
        if self.closed:
            raise LabError("this Lab is closed; make a new one")
        with noise.MachineLoad(self.engine.threads) as load:   # what the rest of the machine did meanwhile
            res = self.engine.run(seconds, packets, progress)
        for key, value in load.to_dict().items():
            setattr(res, key, value)
        res.notes += load.notes()
        return res

    def _replay(self, loops):
        """Frames in `loops` passes over the capture."""
        frames = int(self.traffic.seq.size)             # one pass: every frame of the file, in order
        if not (isinstance(loops, (int, np.integer)) and not isinstance(loops, bool)
                and 1 <= loops <= 10**12 // frames):
            raise LabError(f"loops={loops!r}: use a whole number of passes over the capture from 1 to "
                           f"{10**12 // frames}")
        return frames * int(loops)

    def trace(self, n=5):
        """The first n packets' path through the graph (see labkit.run.trace)."""
        if not isinstance(n, (int, np.integer)) or not 1 <= n <= 10_000:
            raise LabError(f"trace count {n!r}: use a whole number from 1 to 10000")
        return _trace(self.graph, self.tables, self.traffic, self.max_frame, n)

    def close(self):
        """Release everything; on veth/tap, close the ports (and take the lab
        network down if this Lab brought it up)."""
        self.closed = True
        self.engine.close()
        self.pools = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _check_lab(backend, graph, knobs, rate, gen_batch, latency):
    """The arguments that need no engine to check; one line says what to use."""
    if backend not in BACKENDS:
        raise LabError(f"unknown backend {backend!r}; backends are: {', '.join(BACKENDS)}")
    if rate is not None and not (isinstance(rate, (int, float)) and not isinstance(rate, bool)
                                 and 1 <= rate <= 1e9):
        raise LabError(f"rate={rate!r}: use packets per second from 1 to 1e9, or None for as fast as possible")
    if gen_batch is not None and (isinstance(gen_batch, bool) or not isinstance(gen_batch, int)
                                  or not 1 <= gen_batch <= 256):
        raise LabError(f"gen_batch={gen_batch!r}: use frames per TX kick from 1 to 256")
    if not (isinstance(latency, bool) or isinstance(latency, (int, np.integer)) and 1 <= latency <= MAX_EVERY
            and not latency & (latency - 1)):
        raise LabError(f"latency={latency!r}: use True (stamp every frame and report the latencies), a power of "
                       f"two N up to {MAX_EVERY} (stamp one frame in N), or False")
    if graph not in GRAPHS:
        raise LabError(f"unknown graph {graph!r}; graphs are: {', '.join(GRAPHS)}")
    if backend == "xdp" and graph not in XDP_GRAPHS:
        raise LabError(f"backend xdp runs the graphs {' and '.join(XDP_GRAPHS)} as XDP programs; {graph} has none "
                       "yet: use one of them, or another backend")
    if not isinstance(knobs, Knobs):
        raise KnobError("knobs must be a labkit.Knobs")


def _engine_kind(backend, knobs, n_workers, multiqueue, dispatcher):
    """"single", "workers" or "net": which engine runs this Lab, or a LabError
    saying why the combination cannot run."""
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
    if n_workers > 1 and backend == "xdp":
        raise LabError(f"workers={n_workers} with backend xdp: the XDP program runs wherever the kernel polls "
                       "lk-d0, there are no workers to give it; use workers=1")
    if n_workers > 1 and backend == "tap":
        raise LabError(f"workers={n_workers} on a TAP device: it has one file descriptor, one queue; "
                       "use backend='veth' (N sockets in a PACKET_FANOUT group) or workers=1")
    if n_workers > 1 and backend == "veth" and knobs.rx_ring == "frame":
        raise LabError(f"workers={n_workers} on veth need the flow hash the kernel writes in a block ring's "
                       "frames (tp_rxhash); rx_ring='frame' (TPACKET_V2) has none: use rx_ring='block' or workers=1")
    if n_workers > 1 and backend == "veth" and knobs.copy:
        raise LabError(f"workers={n_workers} on veth fans out over AF_PACKET rings; copy=True "
                       "(recv()/send() per frame) runs with workers=1")
    return "net" if backend != "memory" else "workers" if multiqueue else "single"


def _memory_notes(knobs, rate, gen_batch, kind):
    """What a run on the in-memory NIC says about knobs it has no use for."""
    notes = [f"knob {name} applies to a real NIC (veth, tap), not the in-memory one"
             for name in NET_KNOBS if getattr(knobs, name) != getattr(Knobs(), name)]
    if gen_batch is not None:
        notes.append("gen_batch applies to the veth and tap generator; the in-memory NIC "
                     "offers frames one ring's room at a time")
    if rate is not None and kind != "single":
        notes.append("rate applies to the veth and tap generator and to one queue of the in-memory NIC; "
                     "the multi-queue NIC offers frames as fast as the workers take them")
    if kind == "single":
        notes += [f"knob {name} applies to several workers (workers=N), not to one"
                  for name in WORKER_KNOBS if getattr(knobs, name) != getattr(Knobs(), name)]
    return notes
