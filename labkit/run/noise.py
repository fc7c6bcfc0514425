"""Noise: is a difference real, and was the machine quiet?

A speed-up measured once on a shared laptop is a coin toss. Two tools make a
comparison honest:

* **A verdict from repeats.** Each side of a comparison (a technique off, then
  on) runs several times, interleaved (off, on, off, on, ...), so that a slow
  moment of the machine hits both sides. ``verdict(offs, ons)`` says
  "faster" when every run with the technique on beat every run with it off
  (the two ranges do not overlap), "slower" when every one lost, and "within
  noise" otherwise. The rule needs no assumption about the distribution: if
  the technique changed nothing, all 2n runs come from one distribution and
  the chance that the n "on" runs all beat the n "off" runs is
  1 / C(2n, n) (``separation_chance``): 5% with 3 runs a side, 1.4% with 4,
  0.4% with 5. A difference of the medians under ``MIN_EFFECT`` (2%) is
  "within noise" however the runs fall (a rate the generator caps gives
  1.00x either way). Below ``MIN_RUNS`` a side the verdict is "too few
  runs".
* **The machine's load.** ``MachineLoad`` samples, from ``/proc``, the CPU
  time every other process used while a measurement ran (not this process,
  its children or kernel threads), in % of one CPU, and names the busiest.
  In a virtual machine it also reads the *steal* time of ``/proc/stat``: CPU
  the hypervisor gave to other guests while ours wanted it (zero where the
  hypervisor does not report it, as on this course's KVM machine: there,
  another guest's load is invisible, which is why verdicts need repeats).
  Above ``BUSY_PERCENT`` (others and steal together) the machine was busy
  and the numbers are not reliable; ``wait_quiet`` waits for a quiet moment
  first. A run that keeps more threads busy than this process may use CPUs
  (``cores_needed`` against ``cpus``) is *oversubscribed*: its threads take
  turns on the cores, and what it measures is time-sharing, not that many
  cores' worth of work.
"""
import math
import os
import statistics
import sys
import time

MIN_RUNS = 3                     # per side, for a verdict
MIN_EFFECT = 0.02                # and the medians at least this far apart (a capped rate: 1.00x "slower")
BUSY_PERCENT = 25.0              # the rest of the machine using this % of one CPU or more: busy
TOP = 3                          # the busiest other processes named

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def separation_chance(n_off, n_on=None):
    """The chance that n_on runs all beat n_off runs (in one given direction)
    when the technique changes nothing: 1 / C(n_off + n_on, n_on)."""
    n_on = n_off if n_on is None else n_on
    return 1.0 / math.comb(n_off + n_on, n_on)


def verdict(offs, ons, higher_is_better=True):
    """"faster", "slower", "within noise" or "too few runs": the technique
    (``ons``) against its absence (``offs``), by the rule above. With
    higher_is_better False (cycles per packet), lower values are faster."""
    offs, ons = [x for x in offs if x is not None], [x for x in ons if x is not None]
    if min(len(offs), len(ons)) < MIN_RUNS:
        return "too few runs"
    if not higher_is_better:
        offs, ons = [-x for x in offs], [-x for x in ons]
    off, on = statistics.median(offs), statistics.median(ons)
    small = abs(on - off) < MIN_EFFECT * abs(off)          # separated, but by less than it matters
    if min(ons) > max(offs) and not small:
        return "faster"
    if max(ons) < min(offs) and not small:
        return "slower"
    return "within noise"


def is_busy(other_percent, steal_percent=0.0, limit=BUSY_PERCENT):
    """The rule every report uses: the other processes and the hypervisor's steal together took
    `limit` % of a CPU or more (False when the others' share was not measured)."""
    return other_percent is not None and other_percent + (steal_percent or 0.0) >= limit


def spread(xs):
    """(median, min, max) of the runs, or (None, None, None)."""
    xs = [x for x in xs if x is not None]
    if not xs:
        return None, None, None
    return statistics.median(xs), min(xs), max(xs)


# ---- the rest of the machine -----------------------------------------------------

def proc_times():
    """{pid: (ppid, utime + stime in clock ticks, name)} of every process ({}
    where there is no /proc)."""
    out = {}
    try:
        pids = [d for d in os.listdir("/proc") if d.isdigit()]
    except OSError:
        return out
    for d in pids:
        try:
            with open(f"/proc/{d}/stat") as f:
                st = f.read()
        except OSError:                      # (gone meanwhile)
            continue
        name = st[st.find("(") + 1:st.rfind(")")]
        rest = st[st.rfind(")") + 2:].split()          # after "pid (comm) "
        out[int(d)] = (int(rest[1]), int(rest[11]) + int(rest[12]), name)
    return out


def _foreign(after, me):
    def foreign(pid):
        for _ in range(64):
            if pid == me or pid == 2:        # this process or a child; a kernel thread
                return False
            if pid <= 1 or pid not in after:
                return True
            pid = after[pid][0]
        return True
    return foreign


def cpu_ticks():
    """(steal, all) clock ticks of every CPU together, from /proc/stat's first line
    ((0, 0) where there is none)."""
    try:
        with open("/proc/stat") as f:
            return parse_cpu_line(f.readline())
    except OSError:
        return 0, 0


def parse_cpu_line(line):
    """(steal, all) ticks of /proc/stat's "cpu  user nice system idle iowait irq softirq steal
    guest guest_nice" line (guest time is already counted in user; old kernels end earlier)."""
    parts = line.split()
    if not parts or parts[0] != "cpu":
        return 0, 0
    ticks = [int(x) for x in parts[1:9]]
    return (ticks[7] if len(ticks) > 7 else 0), sum(ticks)


def usable_cpus():
    """How many CPUs this process may run on (its affinity), else os.cpu_count()."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def others_by_process(before, after, wall):
    """{pid: (name, % of one CPU)} of the other processes between two proc_times()."""
    foreign = _foreign(after, os.getpid())
    out = {}
    for pid, (_, t, name) in after.items():
        if foreign(pid):
            ticks = t - before.get(pid, (0, 0, name))[1]
            if ticks > 0:
                out[pid] = (name, 100.0 * ticks / _CLK_TCK / max(wall, 1e-9))
    return out


def others_cpu_percent(before, after, wall):
    """CPU the rest of the machine used between two proc_times(), in % of one CPU."""
    return sum(p for _, p in others_by_process(before, after, wall).values())


class MachineLoad:
    """``with MachineLoad(cores_needed=1) as load: ...``: then
    ``load.other_percent`` (the CPU the other processes used meanwhile, % of
    one CPU; None without /proc), ``load.steal_percent`` (CPU the hypervisor
    took, % of one CPU), ``load.top`` ([(name, percent)], the busiest, at most
    TOP), ``load.busy`` (the two together >= BUSY_PERCENT) and
    ``load.oversubscribed`` (the run keeps more threads busy than this process
    may use CPUs)."""

    def __init__(self, cores_needed=1):
        self.other_percent, self.steal_percent, self.top, self.seconds = None, 0.0, [], 0.0
        self.cores_needed, self.cpus = int(cores_needed), usable_cpus()

    def __enter__(self):
        self._before, self._ticks, self._t0 = proc_times(), cpu_ticks(), time.monotonic()
        return self

    def __exit__(self, *exc):
        self.seconds = time.monotonic() - self._t0
        if self._before:
            per = others_by_process(self._before, proc_times(), self.seconds)
            self.other_percent = sum(p for _, p in per.values())
            by_name = {}
            for name, p in per.values():
                by_name[name] = by_name.get(name, 0.0) + p
            self.top = sorted(((n, p) for n, p in by_name.items() if p >= 1.0), key=lambda x: -x[1])[:TOP]
            steal = cpu_ticks()[0] - self._ticks[0]
            self.steal_percent = 100.0 * max(steal, 0) / _CLK_TCK / max(self.seconds, 1e-9)
        return False

    @property
    def busy(self):
        return is_busy(self.other_percent, self.steal_percent)

    @property
    def oversubscribed(self):
        return self.cores_needed > self.cpus

    def to_dict(self):
        return {"other_cpu_percent": None if self.other_percent is None else round(self.other_percent, 1),
                "steal_percent": round(self.steal_percent, 1),
                "busiest": [{"name": n, "cpu_percent": round(p, 1)} for n, p in self.top],
                "cores_needed": self.cores_needed, "cpus": self.cpus}

    def notes(self, what="this run"):
        """The lines a result carries about its load: busy, oversubscribed (or none)."""
        out = []
        if self.busy:
            out.append(busy_warning(self.other_percent, self.top, what, quiet_wait=False, steal=self.steal_percent))
        if self.oversubscribed:
            out.append(oversubscribed_note(self.cores_needed, self.cpus))
        return out


def oversubscribed_note(needed, cpus):
    return (f"this run keeps {needed} threads busy but this process may use {cpus} CPU(s): the threads "
            f"take turns on the cores, so the numbers show time-sharing, not {needed} cores' worth of work")


def busy_warning(other_percent, top, what="the run", quiet_wait=True, steal=0.0):
    """One line: the machine was busy, by whom, and what to do."""
    who = ", ".join(f"{n} {p:.0f}%" for n, p in top) or "several processes"
    advice = ("close other programs, or pass --quiet-wait S to wait up to S seconds for quiet before each run"
              if quiet_wait else "close other programs and measure again")
    stolen = f", and the hypervisor took {steal:.0f}% for other virtual machines" if steal >= 1 else ""
    return (f"the machine was busy during {what}: other processes used {other_percent:.0f}% of a CPU "
            f"(most: {who}){stolen}; the numbers are not reliable: {advice}")


def wait_quiet(limit, progress=None, window=0.25):
    """Wait (at most ``limit`` seconds) for a ``window`` in which the rest of the
    machine uses less than BUSY_PERCENT % of a CPU; returns the seconds waited."""
    t0 = time.monotonic()
    if sys.platform != "linux":
        return 0.0
    while True:
        a, w0 = proc_times(), time.monotonic()
        time.sleep(window)
        if others_cpu_percent(a, proc_times(), time.monotonic() - w0) < BUSY_PERCENT:
            return time.monotonic() - t0 - window
        if time.monotonic() - t0 >= limit:
            return time.monotonic() - t0
        if progress is not None:
            progress("waiting for the other processes to calm down")
