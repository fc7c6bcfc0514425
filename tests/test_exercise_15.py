"""Exercise 15 (lightweight threads: a compiled cooperative scheduler) and its toys,
labkit.course.lessons.lthreads: the compiled stages move every item through bounded
rings when they are interleaved and stall when they are not; the solution's scheduler
passes every check, the starter fails every one, and each check says what is wrong
with one plausible mistake at a time (numba's own traps included). The functions are
taken from the notebooks themselves.

No test asserts a time or a rate."""

import numpy as np
import pytest
from numba import jit, literal_unroll, njit

from exercise_cells import functions
from labkit.course.lessons import lthreads as lesson
from labkit.course.lessons.lthreads import (Stalled, compiled_pipeline, logger, make_ring, new_log,
                                            python_round_robin, ring_count, ring_items, ring_put, ring_room,
                                            ring_take, source, turns)

CHECKS = ("order", "finish", "pipeline", "compiled")


@pytest.fixture(autouse=True)
def _quick(monkeypatch):
    monkeypatch.setenv("LABKIT_QUICK", "1")


@pytest.fixture(scope="module")
def solution():
    return functions("solutions", "15_lthreads")


@pytest.fixture(scope="module")
def starter():
    return functions("exercises", "15_lthreads")


def _all_problems(run):
    return {name: getattr(lesson, f"{name}_problems")(run) for name in CHECKS}


# ---- the toys ------------------------------------------------------------------------------

def test_ring_is_a_bounded_fifo_that_keeps_its_peak():
    r = make_ring(3)
    for x in (7, 8, 9):
        ring_put(r, x)
    assert ring_room(r) == 0 and ring_count(r) == 3 and ring_items(r) == [7, 8, 9]
    assert ring_take(r) == 7
    ring_put(r, 10)                                         # wraps around
    assert ring_items(r) == [8, 9, 10] and r[lesson.R_PEAK] == 3
    assert [ring_take(r) for _ in range(3)] == [8, 9, 10] and ring_count(r) == 0
    with pytest.raises(ValueError):
        make_ring(0)


def test_a_thread_is_created_without_running_and_resumed_one_burst_at_a_time():
    ring, log = make_ring(4), new_log()
    src = source(ring, 10, 3, log, 0)
    assert log[0] == 0                                      # created: nothing ran yet
    assert [next(src) for _ in range(3)] == [False, False, False]
    assert ring_items(ring) == [0, 1, 2, 3] and turns(log) == "a0 a1 a2"
    ring2 = make_ring(8)
    assert list(source(ring2, 5, 8, new_log(), 0)) == [True]           # one burst, done
    assert ring2[lesson.R_CLOSED] == 1


def test_loggers_take_their_turns_and_say_when_done():
    log = new_log()
    assert list(logger(log, 1, 3)) == [False, False, True]
    assert turns(log) == "b0 b1 b2" and turns(log, first=2) == "b0 b1"
    g = logger(new_log(), 0, 1)
    assert next(g) is True
    with pytest.raises(StopIteration):                      # resumed past its last turn
        next(g)


def test_a_thread_started_twice_says_so():
    log = new_log()
    list(logger(log, 0, 2))
    with pytest.raises(RuntimeError, match="started again from its beginning"):
        next(logger(log, 0, 2))


@pytest.mark.parametrize("n, capacity, burst", [(1000, 8, 4), (999, 2, 1), (100, 1, 7), (0, 4, 4)])
def test_the_pipeline_interleaved_moves_every_item_in_order(n, capacity, burst):
    out = compiled_pipeline(python_round_robin, n=n, capacity=capacity, burst=burst)
    assert out["got"] == [2 * x + 1 for x in range(n)]
    assert out["peak"] <= capacity and out["switches"] == out["turns"]
    assert turns(out["log"], first=3) == "a0 b0 c0"


def test_the_pipeline_one_stage_after_another_stalls_unless_the_rings_hold_everything(starter):
    run = starter["starter_run"]
    with pytest.raises(Stalled, match="source: its ring was full"):
        compiled_pipeline(run, n=100, capacity=8, burst=4)
    out = compiled_pipeline(run, n=100, capacity=100, burst=4)
    assert out["got"] == [2 * x + 1 for x in range(100)] and out["peak"] == 100


def test_the_reference_round_robin_order():
    assert lesson._rounds((3, 1, 2)) == "a0 b0 c0 a1 c1 a2"
    assert lesson._rounds((1, 1, 7)) == "a0 b0 c0 c1 c2 c3 c4 c5 c6"


# ---- the notebooks' own functions --------------------------------------------------------

def test_the_solution_passes_every_check_and_is_compiled(solution):
    run = solution["run"]
    assert _all_problems(run) == {name: [] for name in CHECKS}
    assert _all_problems(python_round_robin)["compiled"]    # the reference is right, and not compiled


def test_the_starter_fails_every_check_and_says_why(starter):
    problems = _all_problems(starter["run"])
    assert all(problems[name] for name in CHECKS), problems
    assert "round robin is a0 b0 c0 a1 c1 a2" in problems["order"][0]
    assert "dropping each thread after its last turn" in problems["finish"][0]
    assert "source: its ring was full" in problems["pipeline"][0]
    assert "@njit" in problems["compiled"][0]
    # ... though it gets every item through when the rings hold them all: it is wrong in order, and slow
    assert starter["run"](*lesson._loggers((2, 2, 2))[0]) == 6


# ---- one mistake at a time -----------------------------------------------------------------

@njit
def _run_to_completion(s0, a0, s1, a1, s2, a2):
    switches = 0
    g0 = s0(*a0)
    while True:
        switches += 1
        if next(g0):
            break
    g1 = s1(*a1)
    while True:
        switches += 1
        if next(g1):
            break
    g2 = s2(*a2)
    while True:
        switches += 1
        if next(g2):
            break
    return switches


@njit
def _never_dropped(s0, a0, s1, a1, s2, a2):
    g0, g1, g2 = s0(*a0), s1(*a1), s2(*a2)
    done0 = done1 = done2 = False
    switches = 0
    while not (done0 and done1 and done2):
        switches += 3
        done0 = next(g0) or done0
        done1 = next(g1) or done1
        done2 = next(g2) or done2
    return switches


@njit
def _stops_at_the_first_done(s0, a0, s1, a1, s2, a2):
    g0, g1, g2 = s0(*a0), s1(*a1), s2(*a2)
    switches = 0
    while True:
        switches += 3
        if next(g0) or next(g1) or next(g2):
            return switches


@njit
def _counts_rounds(s0, a0, s1, a1, s2, a2):
    g0, g1, g2 = s0(*a0), s1(*a1), s2(*a2)
    done0 = done1 = done2 = False
    switches = 0
    while not (done0 and done1 and done2):
        switches += 1
        if not done0:
            done0 = next(g0)
        if not done1:
            done1 = next(g1)
        if not done2:
            done2 = next(g2)
    return switches


@njit
def _created_in_the_loop(s0, a0, s1, a1, s2, a2):
    done0 = done1 = done2 = False
    switches = 0
    while not (done0 and done1 and done2):
        g0, g1, g2 = s0(*a0), s1(*a1), s2(*a2)
        if not done0:
            switches += 1
            done0 = next(g0)
        if not done1:
            switches += 1
            done1 = next(g1)
        if not done2:
            switches += 1
            done2 = next(g2)
    return switches


@njit
def _literal_unroll(s0, a0, s1, a1, s2, a2):
    gens = (s0(*a0), s1(*a1), s2(*a2))
    done = np.zeros(3, np.bool_)
    switches = 0
    left = 3
    while left > 0:
        i = 0
        for g in literal_unroll(gens):
            if not done[i]:
                switches += 1
                if next(g):
                    done[i] = True
                    left -= 1
            i += 1
    return switches


@njit
def _indexed_tuple(s0, a0, s1, a1, s2, a2):
    gens = (s0(*a0), s1(*a1), s2(*a2))
    done = np.zeros(3, np.bool_)
    switches = 0
    left = 3
    while left > 0:
        for i in range(3):
            if not done[i]:
                switches += 1
                if next(gens[i]):
                    done[i] = True
                    left -= 1
    return switches


@njit
def _catches_everything(s0, a0, s1, a1, s2, a2):
    g0, g1, g2 = s0(*a0), s1(*a1), s2(*a2)
    done0 = done1 = done2 = False
    switches = 0
    while not (done0 and done1 and done2):
        if not done0:
            switches += 1
            try:
                next(g0)
            except Exception:
                done0 = True
        if not done1:
            switches += 1
            try:
                next(g1)
            except Exception:
                done1 = True
        if not done2:
            switches += 1
            try:
                next(g2)
            except Exception:
                done2 = True
    return switches


@pytest.mark.parametrize("run, failing, says", [
    (_run_to_completion, ("order", "finish", "pipeline"), "round robin is"),
    (_never_dropped, ("order", "finish", "compiled"), "resumed after its last turn"),
    (_stops_at_the_first_done, CHECKS, "a0 b0; round robin"),
    (_counts_rounds, ("finish", "pipeline", "compiled"), None),
    (_created_in_the_loop, CHECKS, "started again from its beginning"),
    (_literal_unroll, ("pipeline",), "started again from its beginning"),   # copies of different generators
    (_indexed_tuple, ("pipeline",), "a type of its own"),                   # different generators: no index
    (_catches_everything, ("finish", "pipeline", "compiled"), None),
    (python_round_robin, ("compiled",), "not a compiled function"),
])
def test_each_mistake_fails_its_checks(run, failing, says):
    problems = _all_problems(run)
    assert [name for name in CHECKS if problems[name]] == list(failing), problems
    if says:
        first = problems[failing[0]][0]
        assert says in first, first


def test_finish_says_a_switch_is_every_resume():
    problems = lesson.finish_problems(_counts_rounds)
    assert "a switch is every resume" in problems[0]


def test_object_mode_is_not_compiled(solution):
    body = solution["run"].py_func
    objmode = jit(forceobj=True)(body)
    problems = lesson.compiled_problems(objmode)
    assert problems and "object mode" in problems[0]


# ---- the measurement -------------------------------------------------------------------------

def test_measure_gives_every_number_and_the_conclusion(solution):
    ns, runs, failed = lesson.measure(solution["run"], runs=1, n=2000)
    assert set(ns) == set(lesson.LABELS) and failed == {}
    assert all(v is None or v > 0 for v in ns.values()) and ns["yours"] > 0 and ns["pipeline yours"] > 0
    assert all(len(v) == 1 for v in runs.values())
    text, claims = _see(ns)
    assert text.startswith("**What you should see.** One switch of your scheduler costs") and len(claims) == 3


def test_measure_with_the_starter_runs_and_says_what_failed(starter):
    ns, _, failed = lesson.measure(starter["run"], runs=1, n=2000)
    assert ns["pipeline yours"] is None and "Stalled" in failed["pipeline yours"]
    assert ns["yours"] > 0                                   # a Python round, timed all the same
    text, claims = _see(ns)
    assert "did not get the pipeline through" in text and not claims[-1]["holds"]


def _ns(**kw):
    ns = {"yours": 3.0, "labkit": 1.0, "python loop": 600.0, "python generators": 300.0, "os": 2000.0,
          "pipeline yours": 13.0, "pipeline python loop": 45.0}
    ns.update(kw)
    return ns


def _see(ns):
    from labkit.course.findings import evaluate
    return evaluate(lesson.what_you_should_see, {"ns": ns})


def _text(**kw):
    return _see(_ns(**kw))[0]


def test_what_you_should_see_makes_each_claim_only_when_the_numbers_bear_it_out():
    text, claims = _see(_ns())
    assert [c["holds"] for c in claims] == [True, True, True]
    assert "200x less than the same compiled threads" in text and "667x less than a switch between two OS" in text
    assert "the same kind of loop" in text and "2.0x what resuming a Python generator does" in text
    assert "(3.5x): the stages' bursts" in text
    slow, claims = _see(_ns(yours=400.0))
    assert "not much cheaper than the Python loop" in slow and "same kind of loop" not in slow
    assert [c["holds"] for c in claims] == [False, False, True]
    assert "1.7x more than the same compiled threads" in _text(yours=1000.0)
    assert "costs 500.0 ns: about as much as the same" in _text(yours=500.0)
    assert "4.0x less than the same" in _text(yours=150.0)
    assert "clearly less than yours" in _text(yours=40.0)
    assert "OS" not in _text(os=None) and len(_see(_ns(os=None))[1]) == 2
    assert "no gain here" in _text(**{"pipeline yours": 50.0})
    assert "pass the checks first" in _text(yours=None)


@njit
def _spin_counted(counts, me, n):          # lesson.spin with numba's reference counting on
    for i in range(n - 1):
        counts[me] += 1
        yield False
    counts[me] += 1
    yield True


def test_switch_ns_takes_another_stage_as_food_for_thought_3_asks(solution):
    assert lesson.switch_ns(solution["run"], 1000, stage=_spin_counted) > 0
    with pytest.raises(AssertionError, match="3000 and 1000 each expected"):
        lesson.switch_ns(solution["run"], 1000, stage=logger)       # not a counting stage: said, not timed
