"""Lightweight threads: a cooperative scheduler of stages (and the OS threads' yield).

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
  ``next()`` the switch (exercise 15 has the student write its compiled twin). Its switch
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

Measured in ``labkit.bench.cores`` (``measure_switch``; ``python -m labkit.bench.cores switch``):

* a compiled switch: two trivial stages ping-ponging under ``scheduler``
  (LLVM may inline their bursts: what is left is the switch itself);
* a Python generator switch: two trivial generators under ``run_cooperative``;
* an OS thread switch: two threads pinned to one CPU handing a flag back and
  forth with ``sched_yield`` (compiled, the GIL released): the kernel's
  context switch, and a pipe ping-pong (a thread that sleeps and is woken);
* a Python function call, and a call from Python into a compiled stage with
  50 array arguments (``bind``): what a Python scheduler of compiled stages
  pays at every switch, and the compiled scheduler does not.

``labkit.bench.cores.measure_models`` compares the threading models on the in-memory NIC.
"""
import functools
import hashlib
import inspect
import sys
from collections import deque

import numpy as np
from numba import njit, typeof
from numba.core.typing.typeof import Purpose

from ..graph.compile import load_source
from ..nic.syscalls import sys_sched_yield


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


# --- model="threads": the same stages as OS threads, the kernel switching them ---------------

@njit(nogil=True, cache=True)
def give_way(yield_each, counts, i):
    """model="threads": a stage (worker or dispatcher) gives the CPU to the next
    one after each burst or idle poll, and counts it in counts[i]."""
    if yield_each:
        sys_sched_yield()
        counts[i] += 1
