"""Ctrl-C and SIGTERM that are never lost.

Python delivers a signal by raising ``KeyboardInterrupt`` (or ``Terminated``,
for SIGTERM) in whatever code runs when the handler fires. When that code is
a finalizer or a weakref callback, Python prints "Exception ignored in ..."
and drops the exception: the run goes on as if nobody had asked it to stop
(seen in CI: a SIGINT one second into ``labkit run --backend veth --seconds
60``, and the full 60 seconds ran). So the handlers ``install`` puts in place
also remember the signal; the loops that wait on a run call ``check()``,
which raises it again when it was lost, and ``caught()`` when they handle it.
Only the ``labkit`` command installs them: in a notebook, Jupyter's own
handling of interrupts is left alone.
"""
import signal


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C would be, so the same clean-up runs
    (the run drains, ports close, namespaces this run made are removed)."""


_pending = []


def _interrupt(signum):
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def _handler(signum, frame):
    _pending.append(signum)
    raise _interrupt(signum)


def install(sigterm=True):
    """Handle SIGINT (and SIGTERM) in this process: raise, and remember. Call from the main thread."""
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _handler)
    if sigterm and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _handler)


def caught():
    """The interrupt reached its handler: nothing to raise again."""
    _pending.clear()


def check():
    """Raise again an interrupt whose exception was lost (raised inside a finalizer)."""
    if _pending:
        signum = _pending[-1]
        _pending.clear()
        raise _interrupt(signum)
