"""Lightweight threads: a cooperative scheduler of stages, and what a switch costs.

A lightweight thread is a task the program switches itself, without the
kernel: it runs until it gives the CPU up (``yield``), and a scheduler on the
same OS thread resumes the next ready one, round-robin. No system call, no
kernel scheduler, no preemption: a switch costs what resuming a function
costs, and a task is never interrupted in the middle of a burst. That is
DPDK's L-thread subsystem (``examples/performance-thread``, "L-thread
subsystem" in DPDK's sample application guide; removed in DPDK 21.05): many
lthreads on one lcore, each running until it calls ``lthread_yield()``, and
a scheduler round-robining its ready queue. Click's task scheduler and VPP's
graph dispatcher are the same idea: cooperative, one thread per core.

Two schedulers here, one idea:

* ``run_cooperative``: Python generators, ``yield`` is ``lthread_yield()``,
  ``next()`` the switch (exercise 15 has the student write it). Its switch
  costs what Python costs; resuming a compiled stage from it costs more (each
  turn crosses from Python into a function of ~50 arrays), about as much as
  the kernel's context switch, so it cannot show what the technique buys.
* ``scheduler(stages)``: the same round robin compiled. Each stage is a burst
  function wrapped in a numba generator (one burst per resume), and a
  generated ``run`` resumes them in turn, all in machine code: a switch is a
  jump, as in DPDK's lthreads, which are C (resuming a data-plane stage
  costs more, ~0.3 µs on a 2-vCPU EPYC VM: its generator carries the stage's
  ~60 arrays and passes them on; a kernel switch costs ~1.1 µs and more
  cache lines). ``labkit.run.workers`` runs the
  data plane's stages (the dispatcher and the workers) this way with
  ``Knobs(model="lthreads")``; with ``jit=False`` the same generated source
  runs as Python.

Measured here (``measure_switch``; ``python -m labkit.run.lthreads``):

* a compiled switch: two trivial stages ping-ponging under ``scheduler``
  (LLVM may inline their bursts: what is left is the switch itself);
* a Python generator switch: two trivial generators under ``run_cooperative``;
* an OS thread switch: two threads pinned to one CPU handing a flag back and
  forth with ``sched_yield`` (compiled, the GIL released): the kernel's
  context switch, and a pipe ping-pong (a thread that sleeps and is woken);
* a Python function call, and a call from Python into a compiled stage with
  50 array arguments (``bind``): what a Python scheduler of compiled stages
  pays at every switch, and the compiled scheduler does not.

``measure_models`` compares the threading models on the in-memory NIC.
"""
import functools
import hashlib
import inspect
import os
import sys
import threading
import time
from collections import deque

import numpy as np
from numba import njit, typeof
from numba.core.typing.typeof import Purpose

from ..memory.intrinsics import load_acquire, rdtsc, store_release
from ..nic.syscalls import sys_read, sys_sched_yield, sys_write
from .measure import tsc_hz


def run_cooperative(stages):
    """Run generator stages round-robin on this thread until every one has returned.

    Each turn resumes the next ready stage until it yields (it goes to the back
    of the queue) or returns (it is dropped). Returns the number of switches:
    resumes, the last one of each stage included. An exception in a stage
    propagates at once; the other stages stay suspended where they yielded (the
    caller may resume or close them)."""
    ready = deque(stages)
    switches = 0
    while ready:
        stage = ready.popleft()
        switches += 1
        try:
            next(stage)
        except StopIteration:
            continue
        ready.append(stage)
    return switches


def bind(fn, args):
    """fn(*args) as a call without arguments. For a numba function, the compiled
    entry point for these arguments' types is looked up once, so each call skips
    numba's type dispatch (half of the ~1.3 µs a call with 50 arrays costs from
    Python on a 2-vCPU EPYC VM); the arrays are still unboxed at every call."""
    if hasattr(fn, "compile"):
        fn = fn.compile(tuple(typeof(a, Purpose.argument) for a in args))
    return functools.partial(fn, *args)


# --- the compiled scheduler: lightweight threads as numba generators --------------------------

# the scheduler's state, an int64 array of STATE_HEAD + n (new_state): the stage it is
# resuming, the switches so far, then 1 for each stage that is done. It lives in an array,
# not in locals, so that it survives an exception that leaves the compiled scheduler.
CUR, SWITCHES, STATE_HEAD = 0, 1, 2

# _nrt=False: no reference counting. With it, every resume increfs and decrefs each array
# the stage takes (an atomic each, ~50 arrays per data-plane stage): ~600 ns per switch on a
# 2-vCPU EPYC VM, half a kernel context switch; without it a resume is a jump and a call.
# The scheduler allocates nothing (its generators live on its stack), which _nrt=False requires.
_JIT_LINE = {True: "JIT = njit(nogil=True, cache=True, _nrt=False)", False: "JIT = lambda f: f"}


def new_state(n):
    """A fresh state for a scheduler of n stages: none done, no switch yet."""
    return np.zeros(STATE_HEAD + n, np.int64)


def _where(fn):
    """(module, name) by which the generated scheduler imports stage function fn. It
    must be a module-level function (a numba one, or its .py_func), not a closure:
    compiled code calls it by name, and the import lets numba cache the scheduler."""
    py = getattr(fn, "py_func", fn)
    mod, name = py.__module__, py.__qualname__
    found = getattr(sys.modules.get(mod), name, None)
    if found is not fn and getattr(found, "py_func", None) is not py:
        raise ValueError(f"stage {name!r}: a lightweight thread's stage must be a module-level function "
                         f"(found {found!r} as {mod}.{name})")
    return mod, name


def _fingerprint(fn):
    """A digest of fn's source: the scheduler's source changes when a stage's does, so
    numba's cache (keyed by the scheduler's file) never runs a stale stage."""
    try:
        text = inspect.getsource(getattr(fn, "py_func", fn))
    except (OSError, TypeError):
        text = ""
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def scheduler_source(stages, jit=True):
    """Source of run(a0, ..., a{n-1}, state) for the stage functions `stages` (see scheduler)."""
    n = len(stages)
    kinds = list(dict.fromkeys(stages))          # one generator per distinct stage function
    head = ['"""Generated by labkit.run.lthreads: a round-robin scheduler of %d lightweight threads.' % n,
            "", "Do not edit: it is rewritten from the stage functions.", '"""',
            "from numba import njit",
            "from labkit.run.lthreads import CUR, SWITCHES, STATE_HEAD"]
    for k, fn in enumerate(kinds):
        mod, name = _where(fn)
        head.append(f"from {mod} import {name} as stage_{k}      # source {_fingerprint(fn)}")
        if not jit:
            head.append(f"stage_{k} = getattr(stage_{k}, 'py_func', stage_{k})")
    head.append(_JIT_LINE[jit])
    gens = ["\n".join([
        "@JIT",
        f"def lthread_{k}(args):",
        f'    """stage_{k}(*args) as a lightweight thread: one burst per resume, then yield',
        '    whether the stage is done."""',
        f"    while not stage_{k}(*args):",
        "        yield False",
        "    yield True"]) + "\n" for k in range(len(kinds))]
    a = ", ".join(f"a{i}" for i in range(n))
    body = ["@JIT",
            f"def run({a}{', ' if n else ''}state):",
            '    """Resume each stage that is not done, in turn, one burst each, until none is left;',
            '    state (new_state) says which is running, counts the switches and marks the done."""']
    body += [f"    g{i} = lthread_{kinds.index(fn)}(a{i})" for i, fn in enumerate(stages)]
    body += ["    left = 0",
             f"    for i in range({n}):",
             "        if state[STATE_HEAD + i] == 0:",
             "            left += 1"]
    body += ["    while left > 0:"] if n else []
    for i in range(n):
        body += [f"        if state[STATE_HEAD + {i}] == 0:",
                 f"            state[CUR] = {i}",
                 "            state[SWITCHES] += 1",
                 f"            if next(g{i}):",
                 f"                state[STATE_HEAD + {i}] = 1",
                 "                left -= 1"]
    body.append("    return state[SWITCHES]")
    return "\n".join(head) + "\n\n\n" + "\n\n".join(gens) + "\n\n" + "\n".join(body) + "\n"


def scheduler(stages, jit=True):
    """The compiled cooperative scheduler of len(stages) lightweight threads.

    Each stage is a burst function, stage(*args) -> True once the stage is done,
    which the scheduler wraps in a numba generator: one burst, then ``yield``
    (``lthread_yield()``). ``run(a0, ..., a{n-1}, state)`` creates stage i's
    lightweight thread with the tuple a_i, resumes them round-robin until every
    one is done, and returns the switches (every resume, the one that ends a
    stage too, as run_cooperative counts). Stages marked done in `state` are
    skipped, so calling run again after an exception resumes the others with
    fresh lightweight threads (a stage's state is in its arrays).

    The source is generated for these stage functions (they must be module-level:
    the compiled code calls them by name), imported from labkit's cache and
    compiled there once. jit=False: the same source as Python (generators and a
    next() loop), calling each stage's Python twin."""
    from ..graph.compile import load_source
    return load_source(scheduler_source(stages, jit), f"lthreads_{len(stages)}").run


def run_until_done(run, args, failed):
    """Run a scheduler (see scheduler) over the stages' argument tuples `args` until
    every stage is done. A stage that raises ends that stage only: failed(i, e) is
    told, and the others go on. Returns the switches."""
    state = new_state(len(args))
    while not state[STATE_HEAD:].all():
        state[CUR] = -1
        try:
            run(*args, state)
        except Exception as e:                   # noqa: BLE001  (the caller decides)
            i = int(state[CUR])
            if i < 0:                            # not a stage's: the scheduler did not start
                raise
            state[STATE_HEAD + i] = 1
            failed(i, e)
    return int(state[SWITCHES])


# --- a toy pipeline through bounded rings (exercise 15) ----------------------------------------

class Stalled(RuntimeError):
    """A toy stage found nothing it could do for too many turns in a row."""


class BoundedRing:
    """A FIFO of at most `capacity` items between two stages (a toy rte_ring);
    the producer sets `closed` when it will put nothing more. `peak` is the most
    it ever held: how long an item can wait in it."""

    def __init__(self, capacity):
        self.q, self.capacity, self.closed, self.peak = deque(), capacity, False, 0

    def room(self):
        return self.capacity - len(self.q)

    def put(self, items):
        assert len(items) <= self.room(), "put past the ring's capacity"
        self.q.extend(items)
        self.peak = max(self.peak, len(self.q))

    def take(self, n):
        return [self.q.popleft() for _ in range(min(n, len(self.q)))]


def _stalled(name, idle, patience, why):
    if idle > patience:
        raise Stalled(f"{name}: {why} for {patience} turns in a row: the stage at the other end never ran "
                      "(a bounded ring needs its stages interleaved)")


def toy_source(out, n, burst, patience=1000):
    """Puts 0..n-1 on `out`, at most `burst` per turn, yielding after each turn."""
    i = idle = 0
    while i < n:
        k = min(burst, n - i, out.room())
        out.put(list(range(i, i + k)))
        i += k
        idle = idle + 1 if k == 0 else 0
        _stalled("source", idle, patience, "its ring was full")
        yield
    out.closed = True


def toy_worker(inp, out, burst, patience=1000):
    """Moves up to `burst` items per turn from `inp` to `out` (each item x becomes 2x + 1)."""
    idle = 0
    while not (inp.closed and not inp.q):
        got = inp.take(min(burst, out.room()))
        out.put([2 * x + 1 for x in got])
        idle = idle + 1 if not got else 0
        _stalled("worker", idle, patience, "it had nothing to move")
        yield
    out.closed = True


def toy_sink(inp, got, patience=1000):
    """Takes everything that reaches it into the list `got`."""
    idle = 0
    while not (inp.closed and not inp.q):
        k = inp.take(inp.capacity)
        got.extend(k)
        idle = idle + 1 if not k else 0
        _stalled("sink", idle, patience, "nothing arrived")
        yield


def toy_pipeline(scheduler, n=1000, capacity=8, burst=4):
    """source -> worker -> sink through two rings of `capacity` under `scheduler`
    (a function like run_cooperative). Returns dict(got, switches, peak): what
    reached the sink, the scheduler's switch count, the fullest either ring got."""
    a, b, got = BoundedRing(capacity), BoundedRing(capacity), []
    switches = scheduler([toy_source(a, n, burst), toy_worker(a, b, burst), toy_sink(b, got)])
    return dict(got=got, switches=switches, peak=max(a.peak, b.peak))


# --- what a switch costs ---------------------------------------------------------------------

def _quick():
    return os.environ.get("LABKIT_QUICK", "") not in ("", "0")


def _ping(n):
    for _ in range(n):
        yield


def generator_switch_ns(scheduler=run_cooperative, n=100_000):
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
    run = scheduler([tick, tick])
    counts = np.zeros(2, np.int64)
    run((counts, 0, 1), (counts, 1, 1), new_state(2))        # compile (or load) before timing
    counts[:] = 0
    t0 = time.perf_counter_ns()
    switches = run((counts, 0, n), (counts, 1, n), new_state(2))
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
    call = bind(_stage_stub, [np.zeros(8, np.int64) for _ in range(50)])
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
    q = _quick()
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


# --- the threading models on the in-memory NIC -------------------------------------------------

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
    from .knobs import Knobs
    from .lab import Lab
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


if __name__ == "__main__":
    import json
    quick = "--quick" in sys.argv or _quick()
    out = {"switch": measure_switch(runs=3 if quick else 5)}
    out["models"] = measure_models(runs=2 if quick else 5, seconds=0.3 if quick else 1.0,
                                   say=lambda s: print(s, file=sys.stderr))
    print(json.dumps(out, indent=1))
