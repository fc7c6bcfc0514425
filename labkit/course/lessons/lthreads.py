"""Exercise 15's toy pipeline: three Python-generator stages through bounded
rings, under a scheduler the student writes (``labkit.run.lthreads.run_cooperative``
is the reference). The data plane's own lightweight threads are in
``labkit.run.lthreads``; what a switch costs is measured in ``labkit.bench.cores``.
"""
from collections import deque


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

