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

from labkit.nic.syscalls import sys_sched_yield
from labkit.run import lthreads
from labkit.run.knobs import MODELS, KnobError, Knobs
from labkit.run.lab import Lab, LabError
from labkit.run.lthreads import BoundedRing, Stalled, run_cooperative, toy_pipeline


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
    wall = lab.workers.run(packets=5000, threads=False)
    res = lab.workers.result("memory", "ip4", [], wall)
    assert_sound(lab, res, 5000)
    assert res.extra["switches"] > 3 and res.dropped.get("rx_queue_full", 0) > 0


# --- failures and Ctrl-C ------------------------------------------------------------------

def _failing(lab, stage, after, monkeypatch):
    """Make `stage` raise before its call number `after` (between bursts)."""
    orig = lab.workers._stages

    def stages(budget, stop_tsc, yield_each):
        out = []
        for name, fn, head, tail in orig(budget, stop_tsc, yield_each):
            if name == stage and budget:
                calls = [0]

                def fn(*a, fn=fn, calls=calls):
                    calls[0] += 1
                    if calls[0] >= after:
                        raise ValueError("stage broke")
                    return fn(*a)
            out.append((name, fn, head, tail))
        return out
    monkeypatch.setattr(lab.workers, "_stages", stages)


@pytest.mark.parametrize("threads", [True, False])
@pytest.mark.parametrize("model", ["pipeline", "lthreads", "threads"])
def test_a_failing_dispatcher_stops_the_run_and_every_buffer_comes_back(model, threads, monkeypatch):
    lab = Lab(graph="l2fwd", workers=2, knobs=Knobs(model=model, batch=16))
    _failing(lab, "dispatcher", 2, monkeypatch)          # its second slice (one burst, or 50 ms)
    with pytest.raises(RuntimeError, match="dispatcher failed.*stage broke"):
        lab.workers.run(packets=10**8, threads=threads)
    assert all(p.n_free == p.capacity for p in lab.pools)     # the workers drained what it had posted
    assert no_stage_threads_left()


@pytest.mark.parametrize("model", ["lthreads", "threads"])
def test_a_failing_worker_stops_the_others(model, monkeypatch):
    lab = Lab(graph="l2fwd", workers=2, knobs=Knobs(model=model, batch=16))
    _failing(lab, "worker 1", 2, monkeypatch)
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
    m = lthreads.measure_switch(runs=1)
    assert set(m) == {"generator_switch_ns", "os_yield_switch_ns", "yields_per_switch", "os_pipe_switch_ns",
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
