"""Several cores, measured: workers, the software Toeplitz hash, false sharing,
what a switch between stages costs, and the threading models.

``python -m labkit.bench.cores [--quick] [workers|models|switch]`` prints them
as JSON (progress on stderr). Notebooks 13-15 call these functions; the
engines they measure live in ``labkit.run`` (``workers``, ``lthreads``).
"""
import os
import statistics
import threading
import time

import numpy as np
from numba import njit

from ..memory.intrinsics import load_acquire, rdtsc, store_release
from ..memory.layouts import DATA_OFF, own_lines
from ..nic.rss import DEFAULT_KEY, hash_ipv4_frames, make_tables
from ..nic.syscalls import sys_read, sys_sched_yield, sys_write
from ..nic.traffic import make_traffic
from ..run import lthreads
from ..run.knobs import Knobs
from ..run.lab import Lab
from ..run.measure import now_tsc, tsc_hz
from ..settings import quick


def measure_toeplitz(n=256, reps=2000, key=DEFAULT_KEY, traffic=None):
    """TSC cycles per frame of the software Toeplitz hash over IPv4 frames in an
    arena (``hash_ipv4_frames``, 4-tuple), median of 5 timings of `reps` bursts."""
    t = traffic if traffic is not None else make_traffic(flows=n)
    tables = make_tables(key, 12)
    arena = np.ascontiguousarray(t.frames).reshape(-1)
    k = min(n, t.frames.shape[0])
    bases = np.arange(k, dtype=np.int64) * t.stride - DATA_OFF
    lengths = np.minimum(t.lengths[:k].astype(np.int64), t.stride)
    out = np.zeros(k, np.uint32)
    _hash_reps(tables, arena, bases, lengths, k, out, 1)
    samples = []
    for _ in range(5):
        t0 = now_tsc()
        _hash_reps(tables, arena, bases, lengths, k, out, reps)
        samples.append((now_tsc() - t0) / (reps * k))
    return float(np.median(samples))


@njit(nogil=True, cache=True)
def _hash_reps(tables, arena, bases, lengths, n, out, reps):
    for _ in range(reps):
        hash_ipv4_frames(tables, arena, bases, lengths, n, out)


MEASURE_CONFIGS = {
    "1 loop (single-queue path)": dict(workers=1),
    "1 worker (multi-queue NIC)": dict(workers=1, multiqueue=True),
    "2 workers": dict(workers=2),
    "2 workers, counters packed": dict(workers=2, counters="packed"),
    "1 worker, dispatcher, spsc": dict(workers=1, dispatcher=True),
    "1 worker, dispatcher, lock": dict(workers=1, sync="lock"),
    "2 workers, dispatcher, spsc": dict(workers=2, dispatcher=True),
    "2 workers, dispatcher, lock": dict(workers=2, sync="lock"),
}


def measure(configs=None, runs=5, seconds=1.0, graph="ip4", say=print):
    """Median of `runs` interleaved runs of each configuration (default traffic):
    Mpps, TSC cycles/packet (per worker), CPU cycles/packet (per worker: the
    thread's CPU time, which a busy machine does not inflate), and the share
    of frames lost to full queues."""
    configs = MEASURE_CONFIGS if configs is None else configs
    labs = {}
    for name, c in configs.items():
        c = dict(c)
        knobs = Knobs(**{k: c.pop(k) for k in ("sync", "counters") if k in c})
        labs[name] = Lab(graph=graph, knobs=knobs, **c)
    rows = {name: [] for name in configs}
    for r in range(runs):
        for name, lab in labs.items():
            res = lab.run(seconds=seconds)
            ws = res.extra.get("workers", [])
            rows[name].append(dict(
                mpps=res.pps / 1e6, cyc=res.cycles_per_packet,
                worker_cyc=[w["cycles_per_packet"] for w in ws],
                worker_busy_cyc=[w["busy_cycles_per_packet"] for w in ws],
                worker_nic_cyc=[w["nic_cycles"] / w["handled"] if w["handled"] else 0.0 for w in ws],
                disp_busy=res.extra.get("dispatcher_busy_cycles_per_packet", float("nan")),
                worker_cpu_cyc=[w["cpu_cycles_per_packet"] for w in ws],
                worker_cpu=[w["cpu_percent"] for w in ws],
                qfull=res.dropped.get("rx_queue_full", 0) / res.sent if res.sent else 0.0,
                ok=res.conserved and res.pool_ok))
            say(f"run {r + 1}/{runs} {name}: {res.pps / 1e6:.2f} Mpps")
    for lab in labs.values():
        lab.close()
    med = lambda xs: float(np.median(xs)) if len(xs) else float("nan")
    out = {}
    for name, rs in rows.items():
        k = len(rs[0]["worker_cyc"])
        out[name] = dict(
            mpps=med([x["mpps"] for x in rs]), cycles_per_packet=med([x["cyc"] for x in rs]),
            worker_cycles=[med([x["worker_cyc"][i] for x in rs]) for i in range(k)],
            worker_busy_cycles=[med([x["worker_busy_cyc"][i] for x in rs]) for i in range(k)],
            worker_nic_cycles=[med([x["worker_nic_cyc"][i] for x in rs]) for i in range(k)],
            dispatcher_busy_cycles=med([x["disp_busy"] for x in rs]),
            worker_cpu_cycles=[med([x["worker_cpu_cyc"][i] for x in rs]) for i in range(k)],
            worker_cpu_percent=[med([x["worker_cpu"][i] for x in rs]) for i in range(k)],
            rx_queue_full=med([x["qfull"] for x in rs]), all_ok=all(x["ok"] for x in rs),
            mpps_runs=[round(x["mpps"], 2) for x in rs])
    return out



def _count_kernel():

    @njit(nogil=True, cache=True)
    def count(a, i, n):
        """n increments of a[i], each a load and a store the other core can see."""
        for _ in range(n):
            store_release(a, i, load_acquire(a, i) + 1)
    return count


def measure_false_sharing(n=100_000_000, runs=5):
    """Nanoseconds per increment when two threads each bump their own counter,
    the two counters on one cache line ("one line") or on lines of their own
    ("own lines"); medians of `runs` interleaved timings. Nothing else runs in
    the loop, so every increment may find the line in the other core's cache:
    the worst case, which a data plane that bumps its counters once per burst
    (``labkit.run.workers``) mostly avoids."""
    count = _count_kernel()
    a = own_lines((16,), np.int64)           # two cache lines
    count(a, 0, 1)                           # compile (or load the cache) first

    def once(i, j):
        ts = [threading.Thread(target=count, args=(a, k, n)) for k in (i, j)]
        t0 = time.perf_counter()
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        return (time.perf_counter() - t0) / n * 1e9
    a[:] = 0
    one, own = [], []
    for _ in range(runs):
        one.append(once(0, 1))
        own.append(once(0, 8))
    # one writer per counter: sharing a line may cost time, never an increment
    assert a[0] == 2 * runs * n and a[1] == a[8] == runs * n, "a counter lost increments"
    return {"one line": statistics.median(one), "own lines": statistics.median(own)}


def _ping(n):
    for _ in range(n):
        yield


def generator_switch_ns(scheduler=lthreads.run_cooperative, n=100_000):
    """ns per switch of `scheduler` between two trivial generators (each yields n times)."""
    t0 = time.perf_counter_ns()
    switches = scheduler([_ping(n), _ping(n)])
    return (time.perf_counter_ns() - t0) / max(switches, 1)


@njit(nogil=True, cache=True, _nrt=False)
def tick(counts, i, n):
    """A trivial stage's burst: count a turn; done after n turns."""
    counts[i] += 1
    return counts[i] >= n


def compiled_switch_ns(n=1_000_000):
    """ns per switch of the compiled scheduler between two trivial stages (``tick``)
    that each run n bursts. LLVM may inline the stages' bursts into the scheduler:
    what is left is what a compiled lthread switch costs, a branch and a jump."""
    run = lthreads.scheduler([tick, tick])
    counts = np.zeros(2, np.int64)
    run((counts, 0, 1), (counts, 1, 1), lthreads.new_state(2))        # compile (or load) before timing
    counts[:] = 0
    t0 = time.perf_counter_ns()
    switches = run((counts, 0, n), (counts, 1, n), lthreads.new_state(2))
    return (time.perf_counter_ns() - t0) / max(switches, 1)


def _nothing():
    return None


def call_ns(n=100_000):
    """ns per plain Python function call (the loop included), for reference."""
    f = _nothing
    t0 = time.perf_counter_ns()
    for _ in range(n):
        f()
    return (time.perf_counter_ns() - t0) / n


@njit(nogil=True, cache=True)
def _stage_stub(a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, b0, b1, b2, b3, b4, b5, b6, b7, b8, b9,
                c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, d0, d1, d2, d3, d4, d5, d6, d7, d8, d9,
                e0, e1, e2, e3, e4, e5, e6, e7, e8, e9):
    return a0[0] != 0


def crossing_ns(n=20_000):
    """ns per call from Python into a compiled function of 50 arrays that does
    nothing (bound once, as the data plane's lthreads call their stages)."""
    call = lthreads.bind(_stage_stub, [np.zeros(8, np.int64) for _ in range(50)])
    call()
    t0 = time.perf_counter_ns()
    for _ in range(n):
        call()
    return (time.perf_counter_ns() - t0) / n


@njit(nogil=True, cache=True)
def _yield_pingpong(flag, me, n, warm, out):
    """Wait for my turn (flag == me), giving the CPU away with sched_yield, then
    hand the turn over; n turns. out[2 me]: TSC cycles of the last n - warm turns,
    out[2 me + 1]: sched_yield calls."""
    yields = 0
    t0 = rdtsc()
    for i in range(n):
        if i == warm:
            t0 = rdtsc()
        while load_acquire(flag, 0) != me:
            sys_sched_yield()
            yields += 1
        store_release(flag, 0, 1 - me)
    out[2 * me] = rdtsc() - t0
    out[2 * me + 1] = yields


@njit(nogil=True, cache=True)
def _pipe_pingpong(rfd, wfd, me, n, warm, buf, out):
    """Thread 0 writes a byte and sleeps in read() until thread 1 answers; n round trips."""
    t0 = rdtsc()
    for i in range(n):
        if i == warm:
            t0 = rdtsc()
        if me == 0:
            sys_write(wfd, buf, 0, 1)
            sys_read(rfd, buf, 0, 1)
        else:
            sys_read(rfd, buf, 0, 1)
            sys_write(wfd, buf, 0, 1)
    out[2 * me] = rdtsc() - t0


def _on_one_cpu(work):
    """Run work(0) and work(1) on two threads pinned to one CPU; the CPU's number."""
    cpu = sorted(os.sched_getaffinity(0))[0]
    errors = []

    def body(me):
        try:
            os.sched_setaffinity(0, {cpu})
            work(me)
        except BaseException as e:        # noqa: BLE001  (re-raised below)
            errors.append(e)
    ths = [threading.Thread(target=body, args=(me,), name=f"labkit switch {me}", daemon=True) for me in (0, 1)]
    for th in ths:
        th.start()
    for th in ths:
        th.join()
    if errors:
        raise errors[0]
    return cpu


def os_switch_ns(n=20_000, warm=100):
    """(ns per switch, sched_yield calls per switch) of two OS threads pinned to
    one CPU handing a turn back and forth: each hand-over is a context switch
    the kernel makes. None where threads cannot be pinned (not Linux)."""
    if not hasattr(os, "sched_setaffinity"):
        return None, None
    flag, out = np.zeros(8, np.int64), np.zeros(4, np.int64)
    _yield_pingpong(np.ones(8, np.int64), 1, 1, 0, out)          # compile before the threads start
    _on_one_cpu(lambda me: _yield_pingpong(flag, me, n, warm, out))
    turns = 2 * (n - warm)
    return out[0] / tsc_hz() * 1e9 / turns, (out[1] + out[3]) / (2 * n)


def pipe_switch_ns(n=5_000, warm=100):
    """ns per switch of two OS threads on one CPU that sleep in read() on a pipe
    until the other writes (a wake-up, as a thread waiting for work gets).
    None where threads cannot be pinned."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    r01, w01 = os.pipe()
    r10, w10 = os.pipe()
    out, buf = np.zeros(4, np.int64), np.zeros(8, np.uint8)
    try:
        _pipe_pingpong(r01, w01, 1, 0, 0, buf, out)                # compile (no round trip)
        fds = {0: (r10, w01), 1: (r01, w10)}
        _on_one_cpu(lambda me: _pipe_pingpong(fds[me][0], fds[me][1], me, n, warm, buf, out))
    finally:
        for fd in (r01, w01, r10, w10):
            os.close(fd)
    return out[0] / tsc_hz() * 1e9 / (2 * (n - warm))


def measure_switch(runs=5):
    """Medians of `runs` timings of each switch, in ns (see the module's docstring).
    LABKIT_QUICK=1 makes each timing short."""
    q = quick()
    scale = 10 if q else 1
    rows = {k: [] for k in ("compiled_switch_ns", "generator_switch_ns", "os_yield_switch_ns",
                            "yields_per_switch", "os_pipe_switch_ns", "call_ns", "crossing_ns")}
    for _ in range(runs):
        rows["compiled_switch_ns"].append(compiled_switch_ns(n=1_000_000 // scale))
        rows["generator_switch_ns"].append(generator_switch_ns(n=100_000 // scale))
        ns, yields = os_switch_ns(n=20_000 // scale)
        rows["os_yield_switch_ns"].append(ns)
        rows["yields_per_switch"].append(yields)
        rows["os_pipe_switch_ns"].append(pipe_switch_ns(n=5_000 // scale))
        rows["call_ns"].append(call_ns(n=100_000 // scale))
        rows["crossing_ns"].append(crossing_ns(n=20_000 // scale))
    return {k: (float(np.median(v)) if None not in v else None) for k, v in rows.items()}


# name -> (Lab arguments, cores the model keeps busy)
MODEL_CONFIGS = {
    "1 core: rtc, 1 worker": (dict(workers=1, multiqueue=True, model="rtc"), 1),
    "1 core: lthreads (I/O + worker)": (dict(workers=1, model="lthreads"), 1),
    "1 core: OS threads (I/O + worker)": (dict(workers=1, model="threads"), 1),
    "2 cores: rtc, 2 workers": (dict(workers=2, model="rtc"), 2),
    "2 cores: pipeline (I/O + worker)": (dict(workers=1, model="pipeline"), 2),
}


def measure_models(configs=None, runs=5, seconds=1.0, graph="ip4", say=print):
    """Median of `runs` interleaved runs of each configuration: Mpps, the stages'
    own TSC cycles per packet (cycles_per_packet: the data plane's; stage_cycles_per_packet:
    with the in-memory NIC's share, every cycle a stage counted), the TSC cycles per
    packet of the cores the model keeps busy (cores x TSC rate / packet rate: what the
    stages did plus what the switches and the loops around the stages cost), switches
    per packet, and ns_per_switch: what the cores spent beyond the stages, per switch
    (only where there is about a switch per burst or more; it includes the loops' glue)."""
    configs = MODEL_CONFIGS if configs is None else configs
    labs = {}
    for name, (c, _) in configs.items():
        c = dict(c)
        labs[name] = Lab(graph=graph, knobs=Knobs(model=c.pop("model")), **c)
    rows = {name: [] for name in configs}
    try:
        for r in range(runs):
            for name, lab in labs.items():
                res = lab.run(seconds=seconds)
                cores = configs[name][1]
                core_cyc = cores * res.tsc_hz / res.pps if res.pps else float("nan")
                stage_cyc = res.cycles_per_packet + (res.nic_cycles * res.cycles_per_packet / res.dut_cycles
                                                     if res.dut_cycles else 0.0)
                spp = res.extra["switches_per_packet"]
                rows[name].append(dict(mpps=res.pps / 1e6, cyc=res.cycles_per_packet, stage_cyc=stage_cyc,
                                       core_cyc=core_cyc, spp=spp, ok=res.conserved and res.pool_ok,
                                       ns=(core_cyc - stage_cyc) / spp / res.tsc_hz * 1e9 if spp > 0.001
                                       else float("nan")))
                say(f"run {r + 1}/{runs} {name}: {res.pps / 1e6:.2f} Mpps")
    finally:
        for lab in labs.values():
            lab.close()
    med = lambda xs: float(np.median(xs))
    return {name: dict(cores=configs[name][1], mpps=med([x["mpps"] for x in rs]),
                       cycles_per_packet=med([x["cyc"] for x in rs]),
                       stage_cycles_per_packet=med([x["stage_cyc"] for x in rs]),
                       core_cycles_per_packet=med([x["core_cyc"] for x in rs]),
                       switches_per_packet=med([x["spp"] for x in rs]), ns_per_switch=med([x["ns"] for x in rs]),
                       all_ok=all(x["ok"] for x in rs),
                       mpps_runs=[round(x["mpps"], 2) for x in rs])
            for name, rs in rows.items()}


def main(argv):
    """python -m labkit.bench.cores [--quick] [workers|models|switch ...]: JSON on stdout."""
    import json
    import sys
    fast = "--quick" in argv or quick()
    what = [a for a in argv if not a.startswith("-")] or ["workers", "models", "switch"]
    say = lambda s: print(s, file=sys.stderr)        # noqa: E731
    out = {}
    if "workers" in what:
        out["workers"] = measure(runs=2 if fast else 5, seconds=0.3 if fast else 1.0, say=say)
        out["toeplitz software TSC cycles/frame"] = measure_toeplitz()
    if "switch" in what:
        out["switch"] = measure_switch(runs=3 if fast else 5)
    if "models" in what:
        out["models"] = measure_models(runs=2 if fast else 5, seconds=0.3 if fast else 1.0, say=say)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    import sys
    sys.exit(main(sys.argv[1:]))
