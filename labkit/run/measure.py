"""TSC calibration: how many TSC cycles make a second on this machine.

rdtsc counts at a constant rate (``constant_tsc``), independent of frequency
scaling, which is why we report "TSC cycles" per packet: comparable between
runs, though not the core's actual clock cycles. We calibrate it against the
monotonic clock once per process.
"""
import time

from numba import njit

from ..memory.intrinsics import rdtsc

_hz = []


@njit(cache=True)
def _tsc():
    return rdtsc()


def tsc_hz():
    """TSC ticks per second (calibrated once, over ~50 ms, median of 3)."""
    if not _hz:
        _tsc()  # compile before timing
        rates = []
        for _ in range(3):
            t0, c0 = time.perf_counter_ns(), _tsc()
            time.sleep(0.015)
            t1, c1 = time.perf_counter_ns(), _tsc()
            rates.append((c1 - c0) * 1e9 / (t1 - t0))
        _hz.append(sorted(rates)[1])
    return _hz[0]


def now_tsc():
    return int(_tsc())
