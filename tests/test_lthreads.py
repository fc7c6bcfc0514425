"""Threading models (Knobs(model=...)) and the cooperative scheduler of
labkit.run.lthreads: every model forwards a fixed packet count with every
packet accounted for and every buffer back; the scheduler round-robins,
drops finished stages, counts switches and lets an exception through; a
failing stage or Ctrl-C stops a run cleanly. No assertion here depends on
speed or time."""
import threading

import numpy as np
import pytest
from numba import njit

from labkit.graph.compile import load_source
from labkit.nic import multiqueue as mq
from labkit.nic.syscalls import sys_sched_yield
from labkit.run import lthreads
from labkit.run.knobs import MODELS, KnobError, Knobs
from labkit.run.lab import Lab, LabError
from labkit.bench import cores
from labkit.course.lessons.lthreads import BoundedRing, Stalled, toy_pipeline
from labkit.run.lthreads import STATE_HEAD, run_cooperative
from labkit.run.workers import D_WIRE


def assert_sound(lab, res, sent):
    assert res.sent == sent
    assert res.conserved, (res.sent, res.forwarded, res.dropped)
    assert res.pool_ok and all(p.n_free == p.capacity and p.check() for p in lab.pools)
    assert all(r["rss_mismatch"] == 0 and r["pool_ok"] for r in res.extra["workers"])


def no_stage_threads_left():
    return not [t for t in threading.enumerate() if t.name.startswith("labkit ")]


# --- every model forwards everything ----------------------------------------------------

@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("model", MODELS)
def test_every_model_forwards_a_fixed_count_conserved(model, workers):
    lab = Lab(graph="acl", workers=workers, multiqueue=True, malformed=0.2, knobs=Knobs(model=model, batch=32))
    res = lab.run(packets=20_000)
    assert_sound(lab, res, 20_000)
    assert res.forwarded > 0 and sum(res.dropped.values()) > 0
    staged = model != "rtc"
    assert res.extra["model"] == model and res.extra["dispatcher"] == staged
    assert lab.workers.dispatcher == staged and len(res.extra["workers"]) == workers
    res = lab.run(seconds=0.1)                           # a timed run on the same Lab, from scratch
    assert res.sent > 0 and res.conserved and res.pool_ok


@pytest.mark.parametrize("model", ["lthreads", "threads"])
def test_switches_are_counted_per_burst(model):
    """Both one-core models switch after every burst: the worker and the dispatcher
    each make at least one burst per `batch` frames, so at least 2 (n / batch - 1)
    switches (lthreads: resumes; threads: sched_yield calls)."""
    n, batch = 10_000, 64
    lab = Lab(graph="l2fwd", workers=1, knobs=Knobs(model=model, batch=batch))
    res = lab.run(packets=n)
    assert_sound(lab, res, n)
    e = res.extra
    least = 2 * (-(-n // batch) - 1)
    if model == "lthreads":
        assert e["switches"] >= least and e["yields"] == 0
    else:
        assert e["yields"] >= least and e["switches"] == e["context_switches"]
    assert e["switches_per_packet"] == pytest.approx(e["switches"] / n)


def test_rtc_and_pipeline_never_yield():
    for model in ("rtc", "pipeline"):
        res = Lab(graph="l2fwd", workers=1, multiqueue=True, knobs=Knobs(model=model)).run(packets=5000)
        assert res.extra["yields"] == 0 and res.extra["switches"] == res.extra["context_switches"]


def test_a_dispatcher_with_rtc_is_the_pipeline():
    lab = Lab(graph="l2fwd", dispatcher=True)
    assert lab.workers.model == "pipeline"
    assert Lab(graph="l2fwd", knobs=Knobs(sync="lock")).workers.model == "pipeline"


def test_os_threads_share_one_cpu():
    lab = Lab(graph="l2fwd", workers=2, knobs=Knobs(model="threads"))
    cpus = lab.workers._cpus(3)
    assert len(set(cpus)) == 1 and cpus[0] is not None


def test_cooperative_turns_with_threads_false_count_switches():
    lab = Lab(graph="ip4", workers=2, ring_size=4, knobs=Knobs(model="lthreads", batch=4))
    res = lab.workers.run(packets=5000, threads=False)
    assert_sound(lab, res, 5000)
    assert res.extra["switches"] > 3 and res.dropped.get("rx_queue_full", 0) > 0


# --- failures and Ctrl-C ------------------------------------------------------------------

_BROKEN = """from numba import njit
from {mod} import {name} as inner


@njit(nogil=True, cache=True)
def broken(*a):
    if a[{idx}][{slot}] != 0:
        raise ValueError("stage broke")
    return inner(*a)
"""


def _failing(lab, stage, monkeypatch):
    """Make `stage` raise once it has run a turn: the dispatcher once it handed frames
    over (its wire cursor moved), a worker on its second call (it said it polls). The
    wrapper is compiled, so the compiled lthreads scheduler runs it as any stage."""
    orig = lab.workers._stages

    def stages(budget, stop_tsc, yield_each):
        out = []
        for name, fn, head, tail in orig(budget, stop_tsc, yield_each):
            if name == stage and budget:
                w = lab.workers
                arr, slot = (w.dnst, D_WIRE) if stage == "dispatcher" else (w.w[int(stage[-1])].nst, mq.POLLING)
                idx = next(i for i, x in enumerate(head + (0,) + tail) if x is arr)
                py = fn.py_func
                src = _BROKEN.format(mod=py.__module__, name=py.__name__, idx=idx, slot=slot)
                fn = load_source(src, "test_broken_stage").broken
            out.append((name, fn, head, tail))
        return out
    monkeypatch.setattr(lab.workers, "_stages", stages)


@pytest.mark.parametrize("threads", [True, False])
@pytest.mark.parametrize("model", ["pipeline", "lthreads", "threads"])
def test_a_failing_dispatcher_stops_the_run_and_every_buffer_comes_back(model, threads, monkeypatch):
    lab = Lab(graph="l2fwd", workers=2, knobs=Knobs(model=model, batch=16))
    _failing(lab, "dispatcher", monkeypatch)       # after its first burst (or 50 ms slice) with frames
    with pytest.raises(RuntimeError, match="dispatcher failed.*stage broke"):
        lab.workers.run(packets=10**8, threads=threads)
    assert all(p.n_free == p.capacity for p in lab.pools)     # the workers drained what it had posted
    assert no_stage_threads_left()


@pytest.mark.parametrize("model", ["lthreads", "threads"])
def test_a_failing_worker_stops_the_others(model, monkeypatch):
    lab = Lab(graph="l2fwd", workers=2, knobs=Knobs(model=model, batch=16))
    _failing(lab, "worker 1", monkeypatch)
    with pytest.raises(RuntimeError, match="worker 1 failed"):
        lab.run(packets=10**8)
    assert no_stage_threads_left()


@pytest.mark.parametrize("model", ["lthreads", "threads", "pipeline"])
def test_ctrl_c_drains_and_every_buffer_comes_back(model):
    lab = Lab(graph="ip4", workers=1, knobs=Knobs(model=model))
    calls = []

    def progress(frac):
        calls.append(frac)
        if len(calls) == 2:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        lab.run(seconds=30, progress=progress)
    assert all(p.n_free == p.capacity for p in lab.pools) and no_stage_threads_left()
    res = lab.run(packets=3000)                           # and the Lab still works
    assert_sound(lab, res, 3000)


# --- the scheduler ---------------------------------------------------------------------------

def _logger(name, steps, log):
    for i in range(steps):
        log.append(f"{name}{i}")
        yield


def test_round_robin_is_fair_and_drops_finished_stages():
    log = []
    switches = run_cooperative([_logger("a", 3, log), _logger("b", 1, log), _logger("c", 2, log)])
    assert log == ["a0", "b0", "c0", "a1", "c1", "a2"]
    assert switches == (3 + 1) + (1 + 1) + (2 + 1)        # every resume, the one that ends a stage too
    assert run_cooperative([]) == 0
    assert run_cooperative([_logger("x", 0, log)]) == 1


def test_an_exception_in_a_stage_propagates_and_the_others_stay_suspended():
    log = []

    def broken():
        log.append("b0")
        yield
        raise ValueError("boom")
    a = _logger("a", 5, log)
    with pytest.raises(ValueError, match="boom"):
        run_cooperative([a, broken()])
    assert log == ["a0", "b0", "a1"]
    next(a)                                              # a is suspended where it yielded
    assert log[-1] == "a2"


# --- the compiled scheduler -------------------------------------------------------------------

@njit(nogil=True, cache=True)
def log_turn(log, turns, me, steps):
    """A toy stage's burst: write `me` on the log (log[0] is its length); done after `steps` bursts."""
    k = log[0] + 1
    log[0] = k
    log[k] = me
    turns[me] += 1
    return turns[me] >= steps


@njit(nogil=True, cache=True)
def break_turn(log, turns, me, steps):
    """log_turn, but the stage raises on its third burst."""
    if turns[me] == 2:
        raise ValueError("boom")
    return log_turn(log, turns, me, steps)


def _toy_args(steps):
    log, turns = np.zeros(64, np.int64), np.zeros(len(steps), np.int64)
    return log, [(log, turns, me, k) for me, k in enumerate(steps)]


def _as_generator(fn, args):
    """A burst function as a Python generator, for run_cooperative: burst, yield, until done."""
    while not fn(*args):
        yield


@pytest.mark.parametrize("jit", [True, False])
def test_compiled_scheduler_round_robins_as_run_cooperative(jit):
    steps = [3, 1, 2]
    run = lthreads.scheduler([log_turn] * 3, jit=jit)
    log, args = _toy_args(steps)
    state = lthreads.new_state(3)
    switches = run(*args, state)
    ref_log, ref_args = _toy_args(steps)
    ref = run_cooperative([_as_generator(log_turn.py_func, a) for a in ref_args])
    assert list(log[1:log[0] + 1]) == list(ref_log[1:ref_log[0] + 1]) == [0, 1, 2, 0, 2, 0]
    assert switches == ref == state[lthreads.SWITCHES] == 6     # every resume, the last one of each too
    assert list(state[STATE_HEAD:]) == [1, 1, 1]


def test_compiled_scheduler_skips_stages_already_done():
    run = lthreads.scheduler([log_turn, log_turn])
    log, args = _toy_args([2, 2])
    state = lthreads.new_state(2)
    state[STATE_HEAD + 0] = 1
    assert run(*args, state) == 2 and list(log[1:log[0] + 1]) == [1, 1]
    assert lthreads.scheduler([])(lthreads.new_state(0)) == 0          # no stages: no switch


def test_a_stage_raising_in_the_compiled_scheduler_ends_that_stage_only():
    run = lthreads.scheduler([log_turn, break_turn, log_turn])
    log, args = _toy_args([4, 5, 3])
    state = lthreads.new_state(3)
    with pytest.raises(ValueError, match="boom"):
        run(*args, state)
    assert state[lthreads.CUR] == 1 and list(log[1:log[0] + 1]) == [0, 1, 2, 0, 1, 2, 0]
    log, args = _toy_args([4, 5, 3])
    failed = []
    switches = lthreads.run_until_done(run, args, lambda i, e: failed.append((i, str(e))))
    assert failed == [(1, "boom")]
    assert list(log[1:log[0] + 1]) == [0, 1, 2, 0, 1, 2, 0, 0, 2]     # the others went on to the end
    assert switches == 4 + 3 + 3                                     # stage 1's failed resume counts


def test_a_stage_must_be_a_module_level_function():
    @njit
    def local(x):
        return True
    with pytest.raises(ValueError, match="module-level"):
        lthreads.scheduler([local])


def test_jit_off_lthreads_conserve_and_count_as_jit_on():
    outs = []
    for jit in (True, False):
        lab = Lab(graph="acl", workers=2, malformed=0.2, knobs=Knobs(model="lthreads", jit=jit, batch=16))
        res = lab.run(packets=600)
        assert_sound(lab, res, 600)
        assert res.extra["switches"] > 2 * 600 // 16 // 2
        outs.append([r["sent"] for r in res.extra["workers"]])
    assert outs[0] == outs[1]                           # RSS (the dispatcher's software hash) is the same


def test_toy_pipeline_through_bounded_rings():
    out = toy_pipeline(run_cooperative, n=1000, capacity=4, burst=3)
    assert out["got"] == [2 * x + 1 for x in range(1000)]
    assert out["peak"] <= 4 and out["switches"] > 3 * 1000 // 3


def test_toy_pipeline_stalls_without_interleaving():
    def one_after_another(stages):
        n = 0
        for s in stages:
            for _ in s:
                n += 1
        return n
    with pytest.raises(Stalled, match="source"):
        toy_pipeline(one_after_another, n=100, capacity=8)
    out = toy_pipeline(one_after_another, n=100, capacity=100)     # big enough: it works, badly
    assert out["got"] == [2 * x + 1 for x in range(100)] and out["peak"] == 100


def test_bounded_ring_refuses_to_overfill():
    r = BoundedRing(2)
    r.put([1, 2])
    with pytest.raises(AssertionError):
        r.put([3])
    assert r.take(5) == [1, 2] and r.room() == 2


def test_bind_calls_the_compiled_entry_and_plain_functions():
    @njit
    def add(a, b):
        return a[0] + b
    assert lthreads.bind(add, (np.array([2]), 3))() == 5
    assert lthreads.bind(lambda x, y: x * y, (4, 5))() == 20


# --- switch costs ---------------------------------------------------------------------------------

def test_switch_costs_are_measured(monkeypatch):
    monkeypatch.setenv("LABKIT_QUICK", "1")
    m = cores.measure_switch(runs=1)
    assert set(m) == {"compiled_switch_ns", "generator_switch_ns", "os_yield_switch_ns", "yields_per_switch", "os_pipe_switch_ns",
                      "call_ns", "crossing_ns"}
    assert all(v > 0 for v in m.values())
    assert m["yields_per_switch"] >= 0.5                 # a hand-over waits in sched_yield


def test_sched_yield_from_python_and_compiled_code():
    assert sys_sched_yield() == 0
    assert njit(lambda: sys_sched_yield())() == 0


# --- arguments --------------------------------------------------------------------------------

def test_bad_model_says_what_to_use():
    with pytest.raises(KnobError, match='model=.*use "rtc"'):
        Knobs(model="fibers")


@pytest.mark.parametrize("kw, msg", [
    (dict(backend="veth"), "in-memory NIC only"),
    (dict(multiqueue=False), "multi-queue NIC"),
    (dict(dispatcher=False), "dispatcher"),
])
def test_a_model_where_it_cannot_run_says_why(kw, msg):
    with pytest.raises(LabError, match=msg):
        Lab(graph="l2fwd", knobs=Knobs(model="lthreads"), **kw)
