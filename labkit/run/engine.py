"""The engine interface: what every engine does, whatever port it drives.

An engine owns a run's machinery: pools, rings or sockets, the compiled loop
(``labkit.run.loopgen``) and the threads that call it. ``Lab`` checks its
arguments, picks one, and hands it every ``run``:

=================  ====================================  ========================
engine             where                                 ports (labkit.run.ports)
=================  ====================================  ========================
``SingleLoop``     one loop on the in-memory NIC         memory
``Workers``        N workers on the multi-queue NIC      device, dispatch
``NetEngine``      generator and DUT on veth or TAP      ring, socket, tap
``XdpEngine``      generator on veth, the DUT an XDP     none: the graph runs in
                   program in lk-d0's driver             the kernel (xdprun)
=================  ====================================  ========================

Each has ``notes`` (what a reader should know about its numbers), ``pools``
(every pool it owns), ``traffic`` (the frames it offers) and ``max_frame``,
and runs until `seconds` of wall time or `packets` frames, then drains:
every frame offered is forwarded or dropped by a counted reason, and every
buffer is back in its pool, also when the run is interrupted.
"""
from abc import ABC, abstractmethod

from .measure import now_tsc


class Engine(ABC):
    kind: str                       # "single", "workers" or "net"
    notes: list
    pools: list
    traffic: object
    max_frame: int

    @abstractmethod
    def run(self, seconds=None, packets=None, progress=None):
        """Offer traffic for `seconds` or `packets` (one of them), drain, return a Result.
        progress, when given, is called now and then with the share done (0..1)."""

    @property
    def threads(self):
        """How many threads a run keeps busy: the cores it needs (noise.MachineLoad)."""
        return 1

    def close(self):
        """Release what the engine holds (sockets, the lab network it brought up)."""


def tell_progress(progress, packets, sent, start_tsc, stop_tsc):
    """Report the share of a run done: frames offered of `packets`, or time of the run."""
    if progress is None:
        return
    if packets is not None:
        progress(min(1.0, sent / packets))
    else:
        progress(min(1.0, (now_tsc() - start_tsc) / (stop_tsc - start_tsc)))
