"""labkit.run.noise: the verdict rule on synthetic samples, and the busy-machine
detector against a CPU hog this test starts (no test asserts a speed)."""
import os
import subprocess
import sys
import time

import pytest

from labkit.run import noise

linux = pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="needs /proc (Linux)")


def test_separation_chance_is_one_over_the_binomial():
    assert noise.separation_chance(3) == pytest.approx(1 / 20)
    assert noise.separation_chance(5) == pytest.approx(1 / 252)
    assert noise.separation_chance(2, 4) == pytest.approx(1 / 15)


@pytest.mark.parametrize("offs, ons, want", [
    ([1.00, 1.02, 0.99], [1.30, 1.25, 1.31], "faster"),          # clearly faster
    ([1.00, 1.02, 0.99], [0.70, 0.75, 0.71], "slower"),          # clearly slower
    ([1.00, 1.20, 0.90], [0.83, 1.10, 0.95], "within noise"),    # 0.83x at the median, ranges overlap
    ([1.00, 1.02, 0.99], [1.02, 1.30, 1.31], "within noise"),    # touching is overlapping
    ([1.00, 1.02], [1.30, 1.31], "too few runs"),
    ([0.1000, 0.1000, 0.1000], [0.0999, 0.0999, 0.0999], "within noise"),   # separated, but 0.1% apart
    ([1.00, None, 0.99, 1.01], [1.30, 1.31, None, 1.29], "faster"),   # a run that gave nothing is left out
])
def test_verdict(offs, ons, want):
    assert noise.verdict(offs, ons) == want


def test_verdict_on_cycles_lower_is_faster():
    assert noise.verdict([40, 41, 42], [30, 31, 29], higher_is_better=False) == "faster"
    assert noise.verdict([40, 41, 42], [50, 51, 52], higher_is_better=False) == "slower"


def test_spread():
    assert noise.spread([3, 1, 2, None]) == (2, 1, 3)
    assert noise.spread([]) == (None, None, None)


HOG = "import time\nt = time.monotonic()\nwhile time.monotonic() - t < 20: pass\n"


class Hog:
    """A process spinning on a CPU for up to 20 s that is not our child (a
    shell starts it and exits, so it belongs to the rest of the machine)."""

    def __enter__(self):
        out = subprocess.run(["sh", "-c", f'"{sys.executable}" -c "$0" >/dev/null 2>&1 & echo $!', HOG],
                             capture_output=True, text=True, check=True)
        self.pid = int(out.stdout.strip())
        time.sleep(0.3)                                    # it is spinning
        return self

    def __exit__(self, *exc):
        try:
            os.kill(self.pid, 9)
        except ProcessLookupError:
            pass


@linux
def test_a_cpu_hog_is_seen_named_and_flagged():
    with Hog() as hog, noise.MachineLoad() as load:
        before = noise.proc_times()
        time.sleep(1.0)
        per = noise.others_by_process(before, noise.proc_times(), 1.0)
    assert per[hog.pid][1] > 50                          # the hog itself, most of a CPU
    assert load.busy and load.other_percent >= noise.BUSY_PERCENT
    assert "python" in per[hog.pid][0] and load.top                 # named (the busiest: the hog or worse)
    warning = noise.busy_warning(load.other_percent, load.top)
    assert warning.startswith("the machine was busy during the run: other processes used") and "--quiet-wait" in warning
    d = load.to_dict()
    assert d["other_cpu_percent"] >= noise.BUSY_PERCENT and d["busiest"]


@linux
def test_our_own_work_and_our_children_are_not_others():
    """Spinning in this process, or in a child of it, is not the rest of the
    machine; the CPU the others used is measured, whatever it is."""
    child = subprocess.Popen([sys.executable, "-c", HOG.replace("20", "1.5")])
    before = noise.proc_times()
    t = time.monotonic()
    while time.monotonic() - t < 1.0:
        pass
    per = noise.others_by_process(before, noise.proc_times(), 1.0)
    child.wait()
    assert os.getpid() not in per and child.pid not in per
    assert all(p >= 0 for _, p in per.values())


@linux
def test_wait_quiet_gives_up_at_its_limit_while_a_hog_runs():
    with Hog():
        waited = noise.wait_quiet(0.6, window=0.2)
    assert waited >= 0.6


def test_steal_is_read_from_the_first_line_of_proc_stat():
    line = "cpu  1704 0 886 8671 77 0 15 40 0 0\n"
    assert noise.parse_cpu_line(line) == (40, 1704 + 886 + 8671 + 77 + 15 + 40)
    assert noise.parse_cpu_line("cpu  1 2 3 4\n") == (0, 10)          # an old kernel: no steal column
    assert noise.parse_cpu_line("intr 5 6\n") == (0, 0)


def test_steal_counts_toward_busy_and_is_said():
    load = noise.MachineLoad()
    load.other_percent, load.steal_percent = 10.0, 20.0                # neither alone is busy; both are
    assert load.busy
    load.steal_percent = 5.0
    assert not load.busy
    load.steal_percent = 20.0
    (note,) = load.notes()
    assert "the hypervisor took 20% for other virtual machines" in note


def test_more_busy_threads_than_cpus_is_oversubscribed(monkeypatch):
    monkeypatch.setattr(noise, "usable_cpus", lambda: 2)
    with noise.MachineLoad(cores_needed=3) as load:
        pass
    assert load.oversubscribed and load.to_dict()["cores_needed"] == 3 and load.to_dict()["cpus"] == 2
    assert any("keeps 3 threads busy but this process may use 2 CPU(s)" in n for n in load.notes())
    with noise.MachineLoad(cores_needed=2) as load:
        pass
    assert not load.oversubscribed and not any("time-sharing" in n for n in load.notes())


def test_each_engine_says_how_many_threads_it_keeps_busy():
    from labkit import Knobs, Lab
    cases = [(dict(), 1), (dict(workers=2), 2), (dict(workers=2, dispatcher=True), 3),
             (dict(workers=2, knobs=Knobs(model="lthreads")), 1)]
    for kw, want in cases:
        with Lab(backend="memory", graph="l2fwd", **kw) as lab:
            assert lab.engine.threads == want, kw


def test_a_run_carries_its_load_and_says_when_it_was_oversubscribed(monkeypatch):
    from labkit import Lab
    monkeypatch.setattr(noise, "usable_cpus", lambda: 1)
    with Lab(backend="memory", graph="l2fwd", workers=2) as lab:
        res = lab.run(packets=2000)
    d = res.to_dict()
    assert (d["cores_needed"], d["cpus"]) == (2, 1) and d["steal_percent"] >= 0
    assert any("time-sharing" in n for n in res.notes)
    with Lab(backend="memory", graph="l2fwd") as lab:
        res = lab.run(packets=2000)
    assert (res.cores_needed, res.cpus) == (1, 1) and not any("time-sharing" in n for n in res.notes)
    if os.path.exists("/proc/stat"):
        assert res.other_cpu_percent is not None
