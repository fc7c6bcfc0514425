"""Exercise 15's toys: lightweight threads as numba generators, a three-stage
pipeline through bounded rings, and what the student's compiled scheduler is
checked and measured with. The data plane's own lightweight threads are in
``labkit.run.lthreads`` (``scheduler`` generates a compiled round robin for any
stages); what a switch costs is measured in ``labkit.bench.cores``.

A lightweight thread here is a numba generator function: calling it with its
arguments creates the thread (nothing runs yet), each ``next()`` resumes it for
one burst, and the value it yields says whether it is done::

    @njit
    def stage(...):
        while ...:
            ...one burst...
            yield False          # lthread_yield(): resume me again later
        yield True               # my last burst: do not resume me again

Numba cannot catch ``StopIteration`` by name in compiled code (only
``except Exception``, which would swallow a stage's own errors too), so a stage
says it is done with the value of its last ``yield`` and the scheduler never
resumes it after that (a resume past it raises ``StopIteration``).

The compiled toys:

* rings: ``make_ring(capacity)``, one int64 array (a toy rte_ring): counters
  of items put and taken, a closed flag, the peak fill, then the slots;
  ``ring_room``, ``ring_count``, ``ring_put``, ``ring_take``;
* stages: ``source`` (0..n-1 into a ring, ``burst`` per turn), ``worker``
  (x -> 2x + 1 from one ring to the next), ``sink`` (into an array): each notes
  its turns in a log and raises ``Stalled`` after ``PATIENCE`` turns in a row
  with nothing it could do (a bounded ring whose other end never runs);
  ``logger`` (a stage of a given number of turns that only notes them) and
  ``spin`` (a stage that only counts, for timing switches);
* ``compiled_pipeline(run, n, capacity, burst)``: source -> worker -> sink
  under a scheduler ``run(s0, a0, s1, a1, s2, a2)``;
* ``python_round_robin``: the round robin as a Python loop resuming the
  compiled generators (each switch goes through Python: the measurement's
  comparison).

The Python toys below them (``BoundedRing``, ``toy_pipeline``: Python
generators for ``labkit.run.lthreads.run_cooperative``) are the previous
version of the exercise, kept for the library's tests.
"""
import time
from collections import deque

import numpy as np
from numba import njit


class Stalled(RuntimeError):
    """A toy stage found nothing it could do for too many turns in a row."""


# ---- the compiled toys: bounded rings and stages as numba generators -------------------------

# a ring: one int64 array; its slots start at R_SLOTS
R_PUT, R_TAKEN, R_CLOSED, R_PEAK, R_SLOTS = 0, 1, 2, 3, 8
PATIENCE = 1000                  # turns in a row with nothing to do before a stage gives up
_WHY = " for %d turns in a row: the stage at the other end never ran (a bounded ring needs its stages interleaved)"
SOURCE_STALLED = "source: its ring was full" + _WHY % PATIENCE
WORKER_STALLED = "worker: it had nothing to move" + _WHY % PATIENCE
SINK_STALLED = "sink: nothing arrived" + _WHY % PATIENCE
NAMES = "abcdefgh"

# The ring helpers: plain functions (they hold no array beyond a call), without reference counting.
_jit = njit(nogil=True, cache=True, _nrt=False)
# The stages are generators, and not cached: numba registers a generator's implementation when it
# compiles it, and a scheduler compiled later (the student's) looks it up there to resume it;
# loaded from the cache it is not registered, and the scheduler fails to compile (KeyError).
# They keep numba's reference counting: a thread holds its arrays alive however it was created
# (from Python too, with temporary arrays), at the price of an atomic increment and decrement per
# array at each resume. `spin`, the timing's thread, goes without (as labkit.run.lthreads' stages
# do): its switch is then the scheduler's alone, and switch_ns keeps its array alive.
_gen = njit(nogil=True)
_gen_no_nrt = njit(nogil=True, _nrt=False)


def make_ring(capacity):
    """An empty ring of `capacity` items (a numpy array: pass it to the stages)."""
    if capacity < 1:
        raise ValueError(f"ring capacity {capacity}: at least 1")
    return np.zeros(R_SLOTS + int(capacity), np.int64)


@_jit
def ring_count(r):
    """Items in the ring."""
    return r[R_PUT] - r[R_TAKEN]


@_jit
def ring_room(r):
    """Items the ring has room for."""
    return r.size - R_SLOTS - (r[R_PUT] - r[R_TAKEN])


@_jit
def ring_put(r, x):
    """Append x (the caller checked ring_room); keeps the peak fill."""
    r[R_SLOTS + r[R_PUT] % (r.size - R_SLOTS)] = x
    r[R_PUT] += 1
    r[R_PEAK] = max(r[R_PEAK], r[R_PUT] - r[R_TAKEN])


@_jit
def ring_take(r):
    """Remove and return the oldest item (the caller checked ring_count)."""
    x = r[R_SLOTS + r[R_TAKEN] % (r.size - R_SLOTS)]
    r[R_TAKEN] += 1
    return x


def new_log(size=4096):
    """A turn log: log[0] counts the turns, log[1..] say whose they were (while there is room)."""
    return np.zeros(size, np.int64)


@_jit
def note_turn(log, me):
    """Stage `me` takes a turn: count it, and note who (while the log has room)."""
    k = log[0] + 1
    log[0] = k
    if k < log.size:
        log[k] = me


def turns(log, first=None):
    """The log's turns as stage letters with each stage's turn number: "a0 b0 c0 a1 ..."
    (the first `first` of them, or all the log holds)."""
    seen, out = {}, []
    for me in log[1:min(int(log[0]), log.size - 1) + 1].tolist()[:first]:
        out.append(f"{NAMES[me]}{seen.get(me, 0)}")
        seen[me] = seen.get(me, 0) + 1
    return " ".join(out)


RESTARTED = ("a thread started again from its beginning: its generator was created twice, or resumed through "
             "a copy (create each one once, before the loop, and resume that one)")


@_jit
def _refuse_restart(log, me):
    """A stage's first lines: raise if `me` already took turns (see RESTARTED)."""
    for k in range(1, min(log[0], log.size - 1) + 1):
        if log[k] == me:
            raise RuntimeError(RESTARTED)


@_gen
def logger(log, me, steps):
    """A lightweight thread of `steps` turns (at least 1) that only notes them in `log`;
    yields True after the last. It refuses to start twice: a second start means the
    scheduler resumed a new copy of it, not the thread it created."""
    _refuse_restart(log, me)
    for i in range(steps - 1):
        note_turn(log, me)
        yield False
    note_turn(log, me)
    yield True


@_gen
def source(out, n, burst, log, me):
    """Puts 0..n-1 on ring `out`, at most `burst` per turn; closes the ring after the last."""
    _refuse_restart(log, me)
    i = idle = 0
    while True:
        note_turn(log, me)
        k = min(burst, n - i, ring_room(out))
        for j in range(k):
            ring_put(out, i + j)
        i += k
        if i >= n:
            out[R_CLOSED] = 1
            break
        idle = idle + 1 if k == 0 else 0
        if idle >= PATIENCE:
            raise Stalled(SOURCE_STALLED)
        yield False
    yield True


@_gen
def worker(inp, out, burst, log, me):
    """Moves up to `burst` items per turn from ring `inp` to ring `out`, each x as 2x + 1;
    closes `out` once `inp` is closed and empty."""
    _refuse_restart(log, me)
    idle = 0
    while True:
        note_turn(log, me)
        k = min(burst, ring_count(inp), ring_room(out))
        for _ in range(k):
            ring_put(out, 2 * ring_take(inp) + 1)
        if inp[R_CLOSED] == 1 and ring_count(inp) == 0:
            out[R_CLOSED] = 1
            break
        idle = idle + 1 if k == 0 else 0
        if idle >= PATIENCE:
            raise Stalled(WORKER_STALLED)
        yield False
    yield True


@_gen
def sink(inp, got, log, me):
    """Takes everything that reaches ring `inp` into `got` (item k into got[k]); done
    once `inp` is closed and empty."""
    _refuse_restart(log, me)
    idle = 0
    while True:
        note_turn(log, me)
        k = ring_count(inp)
        if inp[R_TAKEN] + k > got.size:
            raise RuntimeError("sink: more items arrived than were sent")
        for _ in range(k):
            i = inp[R_TAKEN]
            got[i] = ring_take(inp)
        if inp[R_CLOSED] == 1 and ring_count(inp) == 0:
            break
        idle = idle + 1 if k == 0 else 0
        if idle >= PATIENCE:
            raise Stalled(SINK_STALLED)
        yield False
    yield True


@_gen_no_nrt
def spin(counts, me, n):
    """A lightweight thread of n turns (at least 1) that only counts them in counts[me]:
    three of them under a scheduler time its switches. Compiled without reference
    counting: nothing keeps `counts` alive for the thread, its creator must."""
    for i in range(n - 1):
        counts[me] += 1
        yield False
    counts[me] += 1
    yield True


def ring_items(r):
    """The ring's items, oldest first (a list: for reading)."""
    cap = r.size - R_SLOTS
    return [int(r[R_SLOTS + k % cap]) for k in range(int(r[R_TAKEN]), int(r[R_PUT]))]


def pipeline_threads(n=1000, capacity=8, burst=4):
    """The pipeline's three lightweight threads as a scheduler takes them,
    (source, its arguments, worker, its arguments, sink, its arguments), and
    what they work on: (ring a, ring b, got, log)."""
    a, b = make_ring(capacity), make_ring(capacity)
    got = np.full(n, -1, np.int64)
    log = new_log()
    threads = (source, (a, n, burst, log, 0), worker, (a, b, burst, log, 1), sink, (b, got, log, 2))
    return threads, (a, b, got, log)


def compiled_pipeline(run, n=1000, capacity=8, burst=4):
    """source -> worker -> sink through two rings of `capacity` under the scheduler
    run(s0, a0, s1, a1, s2, a2). Returns dict(got, switches, turns, peak, log): what
    reached the sink (a list), the scheduler's switch count, the turns the stages
    took (log[0]), the fullest either ring got, the turn log."""
    threads, (a, b, got, log) = pipeline_threads(n, capacity, burst)
    switches = run(*threads)
    return dict(got=got[:int(b[R_TAKEN])].tolist(), switches=int(switches), turns=int(log[0]),
                peak=int(max(a[R_PEAK], b[R_PEAK])), log=log)


def python_round_robin(s0, a0, s1, a1, s2, a2):
    """The round robin as a Python loop over the compiled lightweight threads: right,
    but every switch goes through the interpreter (next() on a compiled generator
    from Python). The reference of the checks, and the measurement's comparison."""
    ready = deque([s0(*a0), s1(*a1), s2(*a2)])
    switches = 0
    while ready:
        g = ready.popleft()
        switches += 1
        if not next(g):
            ready.append(g)
    return switches


# ---- the checks: what is wrong with a scheduler, in sentences (empty: nothing) ----------------

def _loggers(steps):
    log = new_log()
    return (logger, (log, 0, steps[0]), logger, (log, 1, steps[1]), logger, (log, 2, steps[2])), log


def _raised(e, what):
    """A sentence for an exception the student's scheduler raised (or let through)."""
    if isinstance(e, StopIteration):
        return (f"{what}: a thread was resumed after its last turn (it had yielded True: done); "
                "never resume a thread once it said it is done")
    if isinstance(e, Stalled):
        return f"{what}: {e}"
    from numba.core.errors import TypingError
    if isinstance(e, TypingError):
        first = " ".join(line.strip() for line in str(e).splitlines()[:4] if line.strip())
        return (f"{what}: numba could not compile run for these threads ({first[:300]}); the three stage "
                "functions differ, and each generator function is a type of its own")
    return f"{what}: run raised {type(e).__name__}: {' '.join(str(e).split())[:400]}"


def _call(run, threads, what):
    """(switches, None), or (None, a sentence) when run raised."""
    try:
        return run(*threads), None
    except Exception as e:                      # noqa: BLE001  (the student's code: said, not raised)
        return None, _raised(e, what)


def _rounds(steps):
    """The round robin's order for loggers of `steps` turns, as turns() writes it."""
    left, count, out = list(steps), [0] * len(steps), []
    while any(left):
        for me in range(len(steps)):
            if left[me]:
                out.append(f"{NAMES[me]}{count[me]}")
                count[me] += 1
                left[me] -= 1
    return " ".join(out)


def order_problems(run):
    """Three threads that take turns: resumed one after the other, one turn each, in
    the order given (a, b, c, a, b, c, ...)."""
    for steps in ((3, 1, 2), (2, 2, 2)):
        threads, log = _loggers(steps)
        _, why = _call(run, threads, f"threads of {steps} turns")
        if why:
            return [why]
        if turns(log) != _rounds(steps):
            return [f"threads of {steps} turns ran in this order: {turns(log)}; round robin is {_rounds(steps)} "
                    "(one turn each, in turn)"]
    return []


FINISH_STEPS = ((1, 1, 1), (4, 1, 2), (2, 6, 1), (1, 1, 7), (5, 3, 5))


def finish_problems(run):
    """Threads that end at different times: a finished thread is never resumed again,
    the others go on round-robin to their ends, and every resume is a switch (the
    last of each thread too); run returns once all three are done."""
    for steps in FINISH_STEPS:
        threads, log = _loggers(steps)
        switches, why = _call(run, threads, f"threads of {steps} turns")
        if why:
            return [why]
        if int(log[0]) != sum(steps):
            return [f"threads of {steps} turns: {int(log[0])} turns ran, not {sum(steps)} ({turns(log)}): "
                    "go on until all three are done"]
        if turns(log) != _rounds(steps):
            return [f"threads of {steps} turns ran in this order: {turns(log)}; round robin, dropping each "
                    f"thread after its last turn, is {_rounds(steps)}"]
        if switches != sum(steps):
            return [f"threads of {steps} turns: run returned {switches} switches for {sum(steps)} resumes; "
                    "a switch is every resume (next), the last one of each thread too"]
    return []


PIPELINE_CASES = ((1000, 4, 4), (999, 2, 1), (5000, 64, 32), (300, 1, 3), (0, 4, 4))


def pipeline_problems(run):
    """The three-stage pipeline with small rings moves every item, in order, without
    stalling, and the switches run counts are the turns the stages took."""
    for n, capacity, burst in PIPELINE_CASES:
        what = f"{n} items through rings of {capacity}, bursts of {burst}"
        try:
            out = compiled_pipeline(run, n=n, capacity=capacity, burst=burst)
        except Exception as e:                  # noqa: BLE001  (said, not raised)
            return [_raised(e, what)]
        if out["got"] != [2 * x + 1 for x in range(n)]:
            return [f"{what}: the sink got {len(out['got'])} items, not the {n} sent, each 2x + 1, in order"]
        if out["peak"] > capacity:
            return [f"{what}: a ring held {out['peak']} items"]
        if out["switches"] != out["turns"]:
            return [f"{what}: run returned {out['switches']} switches, the stages took {out['turns']} turns"]
    return []


def compiled_problems(run):
    """run is compiled (a numba dispatcher, in nopython mode) and resumes the threads itself."""
    from numba.core.registry import CPUDispatcher
    if not isinstance(run, CPUDispatcher):
        return [f"run is a {type(run).__name__}, not a compiled function: decorate it with @njit, and create "
                "and resume the threads inside it (each switch then stays in machine code)"]
    threads, log = _loggers((2, 3, 1))
    switches, why = _call(run, threads, "threads of (2, 3, 1) turns")
    if why:
        return [why]
    if not run.nopython_signatures:
        return ["run compiled in object mode (every step through the interpreter): use @njit"]
    if switches != 6 or int(log[0]) != 6:
        return [f"threads of (2, 3, 1) turns: run returned {switches} switches and the threads took "
                f"{int(log[0])} turns, 6 expected"]
    return []


# ---- the measurement -----------------------------------------------------------------------

def switch_ns(run, n=100_000, stage=None):
    """ns per switch of scheduler `run` between three threads of `stage` (default
    `spin`; another must take the same arguments and count the same way) of n turns
    each. The first call with these types compiles: it is made before the clock starts."""
    stage = spin if stage is None else stage
    counts = np.zeros(3, np.int64)
    run(stage, (counts, 0, 1), stage, (counts, 1, 1), stage, (counts, 2, 1))
    counts[:] = 0
    t0 = time.perf_counter_ns()
    switches = run(stage, (counts, 0, n), stage, (counts, 1, n), stage, (counts, 2, n))
    dt = time.perf_counter_ns() - t0
    if switches != 3 * n or counts.tolist() != [n] * 3:
        raise AssertionError(f"the scheduler made {switches} switches, the threads {counts.tolist()} turns: "
                             f"{3 * n} and {n} each expected")
    return dt / switches


def pipeline_ns(run, n=100_000, capacity=64, burst=16):
    """ns per item through the pipeline under scheduler `run` (compiled first), and the
    switches per item."""
    compiled_pipeline(run, n=10, capacity=capacity, burst=burst)
    threads, (a, b, got, log) = pipeline_threads(n, capacity, burst)
    t0 = time.perf_counter_ns()
    switches = run(*threads)
    dt = time.perf_counter_ns() - t0
    if not np.array_equal(got, np.arange(1, 2 * n, 2)):
        raise AssertionError("the pipeline lost, repeated or reordered items")
    return dt / n, switches / n


LABELS = {
    "yours": "your scheduler",
    "labkit": "labkit's generated scheduler (labkit.run.lthreads)",
    "python loop": "a Python loop resuming the same compiled threads",
    "python generators": "a Python loop of Python generators (run_cooperative)",
    "os": "two OS threads on one CPU, through the kernel",
    "pipeline yours": "your scheduler",
    "pipeline python loop": "the Python loop (python_round_robin)",
}


def measure(run, runs=None, n=None):
    """The measurement cell's numbers: (medians, runs, failed). medians and runs are dicts
    over LABELS' keys, in ns per switch (three `spin` threads; the OS's: two threads pinned
    to one CPU handing a turn over with sched_yield, ``labkit.bench.cores.os_switch_ns``) or
    per item through the pipeline (rings of 64, bursts of 16). Each run is the fastest of
    three timings (a timing another program interrupted spoils only itself). A median is
    None where nothing was measured: threads cannot be pinned here (the OS's), or `run`
    failed, and then failed[key] says how."""
    from labkit.bench import cores
    from labkit.settings import quick
    n = n or (20_000 if quick() else 200_000)        # turns per thread, or items through the pipeline
    runs = runs or (3 if quick() else 5)
    timings = {
        "yours": lambda: switch_ns(run, n),
        "labkit": lambda: cores.compiled_switch_ns(n),
        "python loop": lambda: switch_ns(python_round_robin, n),
        "python generators": lambda: cores.generator_switch_ns(n=n),
        "os": lambda: cores.os_switch_ns(n=max(n // 10, 200))[0],
        "pipeline yours": lambda: pipeline_ns(run, n)[0],
        "pipeline python loop": lambda: pipeline_ns(python_round_robin, n)[0],
    }
    rows, failed = {k: [] for k in timings}, {}
    for _ in range(runs):
        for k, f in timings.items():
            if k in failed:
                continue
            try:
                best = [f() for _ in range(3)]
            except Exception as e:                   # noqa: BLE001  (the student's scheduler: said, not raised)
                failed[k] = f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"
                rows[k] = []
                continue
            rows[k].append(None if None in best else min(best))
    medians = {k: (float(np.median(v)) if v and None not in v else None) for k, v in rows.items()}
    return medians, rows, failed


def what_you_should_see(ns):
    """The measurement cell's conclusion, computed from its medians (``measure``): ns per
    switch of "yours", "labkit", "python loop", "python generators", "os", and ns per item
    through the pipeline, "pipeline yours" and "pipeline python loop"; None: not measured.
    Each claim is made only when the numbers bear it out; otherwise the text says so. A findings
    function (``labkit.course.findings``): the claims the exercise teaches are stated with expect()."""
    return "**What you should see.** " + _conclusion(ns)


def _conclusion(ns):
    from labkit.course.findings import expect
    y, lab, py, gen, os_ns = (ns[k] for k in ("yours", "labkit", "python loop", "python generators", "os"))
    pa, pb = ns["pipeline yours"], ns["pipeline python loop"]
    expect(y is not None and py >= 5 * y, "your compiled scheduler switches at least 5x cheaper than a Python "
                                          "loop resuming the same threads")
    if os_ns is not None:
        expect(y is not None and os_ns >= 10 * y, "an OS thread switch costs at least 10x one of yours")
    expect(pa is not None and pb > pa, "an item goes through the pipeline faster under your scheduler than under "
                                       "the Python loop")
    if y is None:
        return ("Your scheduler could not be timed (it failed on three trivial threads): pass the checks first. "
                f"For comparison, labkit's compiled scheduler switches in {lab:.1f} ns, a Python loop resuming "
                f"compiled threads in {py:.0f} ns, Python generators in a Python loop in {gen:.0f} ns"
                + ("." if os_ns is None else f", and two OS threads in {os_ns:.0f} ns."))

    def than(other):
        if other >= 1.5 * y:
            return f"{other / y:.{0 if other >= 10 * y else 1}f}x less than"
        if y >= 1.5 * other:
            return f"{y / other:.{0 if y >= 10 * other else 1}f}x more than"
        return "about as much as"
    text = (f"One switch of your scheduler costs {y:.1f} ns: {than(py)} the same compiled threads resumed from a "
            f"Python loop ({py:.0f} ns), {than(gen)} Python generators in a Python loop ({gen:.0f} ns)")
    text += "." if os_ns is None else f", and {than(os_ns)} a switch between two OS threads ({os_ns:.0f} ns)."
    if py < 5 * y:
        text += (" That is not much cheaper than the Python loop: is your scheduler compiled (check-compiled), "
                 "and does it resume the threads itself?")
    else:
        text += (" Through Python a switch costs what the interpreter costs (a call into the compiled generator, "
                 "the yielded value boxed, the loop's bytecode), whatever the threads are compiled to: only a "
                 "compiled scheduler makes it cheap.")
        if py > gen:
            text += (f" Resuming a compiled thread from Python even costs {py / gen:.1f}x what resuming a Python "
                     "generator does: each resume crosses from the interpreter into compiled code and back.")
        text += (f" labkit's generated scheduler switches in {lab:.1f} ns: yours is the same kind of loop."
                 if y < 3 * lab + 10 else
                 f" labkit's generated scheduler switches in {lab:.1f} ns, clearly less than yours: what else "
                 "does your loop do per switch?")
    if pa is None:
        text += " Your scheduler did not get the pipeline through (see check-pipeline)."
    elif pb > pa:
        text += (f" Through the pipeline an item costs {pa:.1f} ns with your scheduler and {pb:.1f} ns with the "
                 f"Python loop ({pb / pa:.1f}x): the stages' bursts are the same compiled code, the difference "
                 "is the switches, about 3 per 16 items.")
    else:
        text += (f" Through the pipeline an item costs {pa:.1f} ns with your scheduler and {pb:.1f} ns with the "
                 "Python loop: no gain here; bursts of 16 make few switches per item, but a compiled scheduler "
                 "should still win (a busy machine?).")
    return text


# ---- the Python toys: Python generators for run_cooperative (the library's tests) -------------

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

