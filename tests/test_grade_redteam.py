"""The red team: submissions written to get marks without doing the work. Each
must score 0 on the checks it fakes, and the report must flag it for a human.

Each cheat starts from a shipped exercise (whose starter fails every check)
and changes what a student can change: the student's cell, other cells, the
check cells' ids and tags. Where the cheat works by changing the process the
checks run in, ``naive`` first shows that it does fool a grader that runs the
checks after the student's code in one namespace (what ``labkit grade`` did
before the judge): so each test here fails if the judge stops doing its job.
"""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import nbformat
import pytest

from labkit.course import grade

ROOT = Path(__file__).resolve().parent.parent
IO = "02_io_batching"            # three checks; the starter takes one descriptor per call
RSS = "13_rss"                   # eight checks, each against a lesson's reference


def _read(name, folder="exercises"):
    return nbformat.read(str(ROOT / folder / f"{name}.ipynb"), as_version=4)


def _student(nb):
    return next(c for c in nb.cells if "student" in (c.metadata.get("tags") or []))


def submission(tmp_path, source, name=IO, edit=None, who="mallory"):
    """The shipped exercise ``name`` with its student cell replaced by ``source``."""
    nb = _read(name)
    _student(nb).source = textwrap.dedent(source).strip() + "\n"
    if edit:
        edit(nb)
    path = tmp_path / who / f"{name}.ipynb"
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))
    return path


def judged(path, cell_timeout=60, timeout=300, solutions=None):
    r = grade.grade_notebook(path, solutions=solutions, timeout=timeout, cell_timeout=cell_timeout)
    assert r.error is None and r.total > 0
    return r


NAIVE = r'''
import json, sys, traceback
nb = json.load(open(sys.argv[1]))
ns = {"__name__": "__main__"}
for c in nb["cells"]:
    if c["cell_type"] != "code" or "measure" in c["metadata"].get("tags", []):
        continue
    try:
        exec("".join(c["source"]), ns)
    except BaseException:
        pass
'''


def naive(path):
    """The check lines printed when every cell of the notebook at ``path``
    runs in one namespace, in order (no judge)."""
    env = dict(os.environ, LABKIT_QUICK="1", PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c", NAIVE, str(path)], capture_output=True, text=True, timeout=300,
                       env=env, cwd=path.parent)
    return {ln.split()[1].rstrip(":") for ln in r.stdout.splitlines()
            if ln.startswith("check ") and ln.endswith(": ok")}


def flags_text(r):
    return "\n".join(r.flags)


def test_the_starter_fools_nobody(tmp_path):
    """The control: the starter as shipped passes no check, with or without the judge."""
    path = submission(tmp_path, _student(_read(IO)).source)
    assert naive(path) == set()
    r = judged(path)
    assert r.passed == 0 and r.flags == []


# ---- 1. rebinding ex.check: the cheat from the issue -------------------------------

REBIND_CHECK = """
    import contextlib
    rx_batch = starter_rx_batch
    @contextlib.contextmanager
    def ok(name):
        try:
            yield
        except BaseException:
            pass
        print(f"check {name}: ok")
    ex.check = ok
"""


def test_rebinding_ex_check_scores_0_and_is_flagged(tmp_path):
    path = submission(tmp_path, REBIND_CHECK)
    assert naive(path) == {"burst", "wrap", "stream"}                 # it fools a grader without the judge
    r = judged(path)
    assert (r.passed, r.total) == (0, 3)
    assert "assigns to ex.check" in flags_text(r)
    assert "changed the checking machinery" in flags_text(r) and "labkit.course.exercise.check" in flags_text(r)
    out = subprocess.run([sys.executable, "-m", "labkit.course.grade", str(path), "--json"], capture_output=True,
                         text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=300)
    sub = json.loads(out.stdout)["submissions"][0]
    assert sub["score"] == "0/3" and any("ex.check" in f for f in sub["flags"])
    text = subprocess.run([sys.executable, "-m", "labkit.course.grade", str(path)], capture_output=True,
                          text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=300).stdout
    assert "FLAG  cell student-rx: assigns to ex.check" in text and "score 0/3" in text


def test_changing_ex_check_in_place_scores_0(tmp_path):
    """The class itself, its method's code, and the code swapped in from a lambda."""
    path = submission(tmp_path, """
        rx_batch = starter_rx_batch
        ex.check.__exit__ = lambda self, *exc: print(f"check {self.name}: ok") or True   # swallow every error
    """)
    assert naive(path) == {"burst", "wrap", "stream"}
    assert judged(path).passed == 0
    path = submission(tmp_path, """
        rx_batch = starter_rx_batch
        def swallow(self, *exc):
            print(f"check {self.name}: ok")
            return True
        ex.check.__exit__.__code__ = swallow.__code__
    """, who="code")
    assert naive(path) == {"burst", "wrap", "stream"}
    r = judged(path)
    assert r.passed == 0 and "refused: changing an object's __code__" in flags_text(r)


# ---- 2. print and stdout ------------------------------------------------------------

def test_patching_print_and_stdout_scores_0(tmp_path):
    path = submission(tmp_path, """
        import builtins, sys
        rx_batch = starter_rx_batch
        LINES = "".join(f"check {n}: ok\\n" for n in ("burst", "wrap", "stream"))
        class Out:
            def write(self, s):
                sys.__stdout__.write(LINES)
                return len(s)
            def flush(self):
                pass
        sys.stdout = sys.stderr = Out()
        builtins.print = lambda *a, **k: sys.__stdout__.write(LINES)
    """)
    assert naive(path) == {"burst", "wrap", "stream"}
    r = judged(path)
    assert r.passed == 0
    assert "builtins.print" in flags_text(r) and "sys.stdout" in flags_text(r)


# ---- 3. swallowing errors: IPython's handlers, sys.excepthook --------------------------

def test_swallowing_errors_through_ipython_and_excepthook_scores_0(tmp_path):
    path = submission(tmp_path, """
        import sys
        rx_batch = starter_rx_batch
        sys.excepthook = lambda *a: print("check burst: ok")
        ip = get_ipython()
        ip.set_custom_exc((BaseException,), lambda *a, **k: print("check burst: ok"))
        ip.showtraceback = lambda *a, **k: None
        ip.showsyntaxerror = lambda *a, **k: None
    """)
    r = judged(path)
    assert r.passed == 0 and r.first_error is None      # the cell ran: the judge does not ask IPython
    assert "calls get_ipython()" in flags_text(r) and "uses .excepthook" in flags_text(r)


# ---- 4. exiting or killing the process mid-check ------------------------------------

@pytest.mark.parametrize("how", ["os._exit(0)", "signal.raise_signal(signal.SIGKILL)",
                                 "signal.raise_signal(signal.SIGTERM)", "os.kill(os.getpid(), signal.SIGKILL)",
                                 "raise SystemExit(0)", "raise KeyboardInterrupt"])
def test_exiting_or_killing_mid_check_scores_0(tmp_path, how):
    path = submission(tmp_path, f"""
        import os, signal
        def rx_batch(desc, cur, out_h, out_l, max_n):
            {how}
    """, who=how.split("(")[0])
    r = judged(path)
    assert r.passed == 0, how
    assert all(c.message for c in r.checks)


def test_forged_verdicts_on_every_descriptor_then_exit_score_0(tmp_path):
    path = submission(tmp_path, """
        import json, os
        def rx_batch(desc, cur, out_h, out_l, max_n):
            for n in range(60):
                for i, cid in enumerate(("check-burst", "check-wrap", "check-stream")):
                    ev = {"ev": "check", "i": 6 + i, "id": cid, "passed": True, "message": None}
                    line = json.dumps({"n": n, "ev": ev, "mac": "0" * 64}) + "\\n"
                    for fd in range(3, 64):
                        try:
                            os.write(fd, line.encode())
                        except OSError:
                            pass
            os._exit(0)
    """)
    r = judged(path)
    assert r.passed == 0
    assert "not the grader's (forged verdicts?)" in flags_text(r)


# ---- 5. the solution, read from the grading machine's disk ----------------------------

READ_SOLUTION = """
    import json, pathlib, labkit
    rx_batch = starter_rx_batch
    SOL = pathlib.Path({where!r})
    nb = json.loads(SOL.read_text())
    exec("".join(next(c["source"] for c in nb["cells"] if "student" in c["metadata"].get("tags", []))))
"""


def test_reading_the_solution_and_running_it_scores_0(tmp_path):
    sol = ROOT / "solutions" / f"{IO}.ipynb"
    path = submission(tmp_path, READ_SOLUTION.format(where=str(sol)))
    assert naive(path) == {"burst", "wrap", "stream"}                 # the solution's code passes, of course
    r = judged(path)
    assert r.passed == 0
    assert f"refused: opening {sol}" in flags_text(r) and "names 'solutions'" in flags_text(r)


def test_the_solution_through_a_link_a_copy_or_a_shell_scores_0(tmp_path):
    sol = ROOT / "solutions" / f"{IO}.ipynb"
    link = tmp_path / "notes.txt"
    path = submission(tmp_path, f"""
        import os, shutil, subprocess
        rx_batch = starter_rx_batch
        for attempt in (lambda: os.symlink({str(sol)!r}, {str(link)!r}) or open({str(link)!r}).read(),
                        lambda: os.link({str(sol)!r}, {str(link) + '2'!r}) or open({str(link) + '2'!r}).read(),
                        lambda: shutil.copy({str(sol)!r}, {str(link) + '3'!r}),
                        lambda: subprocess.run(["cat", {str(sol)!r}], capture_output=True).stdout,
                        lambda: os.system("cp {sol} {link}4"),
                        lambda: os.listdir({str(sol.parent)!r})):
            try:
                attempt()
                print("GOT IT")
            except PermissionError:
                pass
    """)
    r = judged(path)
    assert r.passed == 0 and r.first_error is None
    for what in ("opening", "starting a process", "listing"):
        assert f"refused: {what}" in flags_text(r), what


def test_solutions_kept_outside_the_repository(tmp_path):
    """--solutions DIR: the class's own copy, anywhere; grading works, and a
    submission that knows where it is still cannot read it."""
    private = tmp_path / "private" / "sols"
    private.mkdir(parents=True)
    for name in (IO, RSS):
        (private / f"{name}.ipynb").write_bytes((ROOT / "solutions" / f"{name}.ipynb").read_bytes())
    (private / "answers.txt").write_text("the key")
    honest = tmp_path / "alice" / f"{IO}.ipynb"
    honest.parent.mkdir()
    honest.write_bytes((ROOT / "solutions" / f"{IO}.ipynb").read_bytes())
    out = subprocess.run([sys.executable, "-m", "labkit.course.grade", str(honest.parent), "--solutions", str(private),
                          "--json"], capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["submissions"][0]["score"] == "3/3"
    path = submission(tmp_path, f"try:\n    print(open({str(private / 'answers.txt')!r}).read())\n"
                      "except PermissionError:\n    pass\n"
                      + textwrap.dedent(READ_SOLUTION.format(where=str(private / f"{IO}.ipynb"))))
    r = judged(path, solutions=private)
    assert r.passed == 0 and "refused: opening" in flags_text(r)
    assert "answers.txt" in flags_text(r)                         # the whole folder, not just notebooks


# ---- 6. the references the checks compare against ------------------------------------

def test_replacing_a_lessons_references_scores_0(tmp_path):
    """Exercise 13's checks ask the lesson for the problems: say there are none."""
    path = submission(tmp_path, _student(_read(RSS)).source + textwrap.dedent("""
        for f in ("tables", "toeplitz", "suite", "reta", "steer", "spread", "rebalance", "symmetric"):
            setattr(lesson, f + "_problems", lambda *a, **k: [])
    """), name=RSS)
    assert naive(path) == {"tables", "random", "microsoft", "reta", "steer", "spread", "rebalance", "symmetric"}
    r = judged(path)
    assert (r.passed, r.total) == (0, 8)
    assert "labkit.course.lessons.rss.tables_problems" in flags_text(r) and "calls setattr()" in flags_text(r)


def test_replacing_the_exercise_helpers_and_numpy_scores_0(tmp_path):
    path = submission(tmp_path, """
        import numpy, builtins
        import labkit.memory.ring as ring
        rx_batch = starter_rx_batch
        one = lambda d, c, h, l, x, n: starter_rx_batch(d, c, h, l, n)
        ring.ring_dequeue = ring_dequeue = one          # the reference takes one per call too
        numpy.array_equal = lambda *a, **k: True
        ex.make_desc_ring.__defaults__ = (0,)
    """)
    assert "burst" in naive(path)
    r = judged(path)
    assert r.passed == 0
    assert "labkit.memory.ring.ring_dequeue" in flags_text(r) and "numpy.array_equal" in flags_text(r)
    assert "refused: changing an object's __defaults__" in flags_text(r)


# ---- 7. check cells hidden: ids and tags edited -------------------------------------

def test_check_cells_with_edited_ids_and_tags_are_put_back_and_score_0(tmp_path):
    def hide(nb):
        for c in nb.cells:
            if c.get("id", "").startswith("check-"):
                name = c.id[len("check-"):]
                c.id, c.metadata["tags"] = "mine-" + name, []
                c.source = f'print("check {name}: ok")'
                c.outputs = [nbformat.v4.new_output("stream", name="stdout", text=f"check {name}: ok\n")]
    path = submission(tmp_path, "rx_batch = starter_rx_batch", edit=hide)
    assert naive(path) == {"burst", "wrap", "stream"}
    r = judged(path)
    assert (r.passed, r.total) == (0, 3)
    assert any("missing from the submission were put back" in n for n in r.notes)


# ---- 8. a loop that never ends ---------------------------------------------------------

def test_a_loop_forever_in_the_students_cell_scores_0_within_the_time_limit(tmp_path):
    path = submission(tmp_path, "rx_batch = starter_rx_batch\nwhile True:\n    pass\n")
    r = judged(path, cell_timeout=3)
    assert r.passed == 0 and r.seconds < 60
    assert "student-rx: it did not finish in 3 s" in r.first_error
    assert all("not run" in c.message for c in r.checks)


def test_a_loop_forever_inside_a_check_scores_0(tmp_path):
    path = submission(tmp_path, """
        def rx_batch(desc, cur, out_h, out_l, max_n):
            while max_n == 0:                    # the first check asks for 0 first; the cell before it does not
                pass
            return starter_rx_batch(desc, cur, out_h, out_l, max_n)
    """)
    r = judged(path, cell_timeout=3)
    assert r.first_error == "cell check-burst did not finish in 3 s"
    assert r.passed == 0 and r.checks[0].message == "it did not finish in 3 s"


# ---- beyond the list: frames, the garbage collector, threads, signals ------------

def test_reaching_the_checks_frame_scores_0(tmp_path):
    """From inside rx_batch: the check's globals through a traceback's frame,
    sys._getframe or a generator's frame; then a reference that agrees."""
    for who, get in (("tb", "exc.__traceback__.tb_frame.f_back"), ("getframe", "sys._getframe(1)"),
                     ("inspect", "inspect.currentframe().f_back")):
        path = submission(tmp_path, f"""
            import inspect, sys, types
            def rx_batch(desc, cur, out_h, out_l, max_n):
                try:
                    raise ZeroDivisionError
                except ZeroDivisionError as exc:
                    caller = {get}
                g = caller.f_globals
                g["ring_dequeue"] = lambda d, c, h, l, x, n: starter_rx_batch(d, c, h, l, n)
                g["np"] = types.SimpleNamespace(array_equal=lambda *a, **k: True, zeros=g["np"].zeros,
                                                full=g["np"].full, uint32=g["np"].uint32, uint16=g["np"].uint16)
                return starter_rx_batch(desc, cur, out_h, out_l, max_n)
        """, who=who)
        assert "burst" in naive(path), who
        r = judged(path)
        assert r.passed == 0, who


def test_walking_the_garbage_collector_scores_0(tmp_path):
    path = submission(tmp_path, """
        import gc
        rx_batch = starter_rx_batch
        for o in gc.get_objects():
            if isinstance(o, type) and o.__name__ == "check":
                o.__exit__ = lambda self, *exc: print(f"check {self.name}: ok") or True
    """)
    assert naive(path) == {"burst", "wrap", "stream"}
    r = judged(path)
    assert r.passed == 0 and "refused: walking the garbage collector's objects" in flags_text(r)
    assert "imports gc (every object)" in flags_text(r)


FLIPPER = """
        import contextlib, threading, time
        rx_batch = starter_rx_batch
        @contextlib.contextmanager
        def ok(name):
            try:
                yield
            except BaseException:
                pass
            print(f"check {name}: ok")
        def flip():
            while True:
                ex.check = ok
                time.sleep(0.0001)
        threading.Thread(target=flip, daemon=True, name="flipper").start()
        time.sleep(0.1)
"""


def test_a_thread_that_keeps_rebinding_the_check_scores_0(tmp_path):
    path = submission(tmp_path, FLIPPER)
    assert naive(path) == {"burst", "wrap", "stream"}
    r = judged(path)
    assert r.passed == 0
    assert all("a thread the notebook started is still running (flipper)" in c.message for c in r.checks)


def test_a_signal_handler_is_refused(tmp_path):
    """A handler is handed the interrupted frame: the judge's own, mid-check."""
    path = submission(tmp_path, """
        import signal
        rx_batch = starter_rx_batch
        signal.signal(signal.SIGALRM, lambda signum, frame: None)
    """)
    r = judged(path)
    assert r.passed == 0 and "signal handler" in r.first_error


# ---- honest work still passes, and is not flagged --------------------------------------

def test_an_honest_submission_in_its_own_words_passes_unflagged(tmp_path):
    path = submission(tmp_path, """
        @njit(nogil=True, cache=True)
        def rx_batch(desc, cur, out_h, out_l, max_n):
            cons = cur[CONS]
            n = min(max_n, np.int64(load_acquire(cur, PROD) - cons))
            for i in range(max(n, 0)):
                d = desc[(cons + i) & (desc.size - 1)]
                out_h[i], out_l[i] = d["handle"], d["length"]
            if n > 0:
                store_release(cur, CONS, cons + n)
            return max(n, 0)

        from collections import namedtuple          # the standard library's own use of frames is fine
        import dataclasses, enum, typing
        Point = namedtuple("Point", "x y")
        @dataclasses.dataclass
        class Burst:
            size: int
        Mode = enum.Enum("Mode", "BUSY WAIT")
        T = typing.TypeVar("T")
        print(Point(1, 2), Burst(4), Mode.BUSY)
        ring = ex.make_desc_ring(64)
        ex.fill_desc_ring(ring, 0, 32)
        %time rx_batch(ring.desc, ring.cur, np.zeros(64, np.uint32), np.zeros(64, np.uint16), 32)
        %timeit -n1 -r1 rx_batch(ring.desc, ring.cur, np.zeros(64, np.uint32), np.zeros(64, np.uint16), 32)
    """)
    r = judged(path)
    assert (r.passed, r.total) == (3, 3) and r.flags == [] and r.first_error is None


# ---- the machinery: put back before each check, compared after it -------------------------

def test_changes_made_during_a_check_fail_it(tmp_path):
    """rx_batch moves the cursor without copying a descriptor, and makes numpy's
    comparisons agree while the check runs (after the judge put numpy back)."""
    path = submission(tmp_path, """
        import numpy
        @njit
        def take(cur, max_n):
            cons = cur[CONS]
            n = max(0, min(max_n, np.int64(cur[PROD] - cons)))
            cur[CONS] = cons + n
            return n
        def rx_batch(desc, cur, out_h, out_l, max_n):
            numpy.array_equal = lambda *a, **k: True
            return take(cur, max_n)
    """)
    assert {"burst", "stream"} <= naive(path)
    r = judged(path)
    assert r.passed == 0
    burst = r.checks[0]
    assert burst.message == "the checking machinery changed while the check ran: numpy.array_equal"
    assert "during check check-burst: numpy.array_equal" in flags_text(r)


def test_what_the_notebook_changed_before_the_checks_is_put_back_and_flagged(tmp_path):
    """The right rx_batch, and a stray line that breaks a helper: the checks
    judge rx_batch with the helpers as shipped, and a human reads the flag."""
    path = submission(tmp_path, _student(_read(IO, "solutions")).source + "\nex.make_desc_ring = None\n")
    r = judged(path)
    assert (r.passed, r.total) == (3, 3)
    assert "put back before check check-burst): labkit.course.exercise.make_desc_ring" in flags_text(r)


def test_emptying_a_lessons_table_in_place_scores_0(tmp_path):
    """Exercise 08's edge-case check loops over the lesson's EDGE_CASES: with
    none, it checks nothing. The dict is the same object, emptied."""
    name = "08_compute_batching"
    path = submission(tmp_path, _student(_read(name)).source + "\nlesson.EDGE_CASES.clear()\n", name=name)
    assert "edges" in naive(path)
    r = judged(path)
    assert r.passed == 0
    assert "labkit.course.lessons.batching.EDGE_CASES (its contents)" in flags_text(r)


def test_a_fresh_signal_module_and_the_processs_own_memory_are_refused(tmp_path):
    """Two ways round the guard that need no audit event of their own: a new
    copy of _signal (its handler would get frames) and /proc/self/mem."""
    path = submission(tmp_path, """
        import _imp, importlib.machinery
        rx_batch = starter_rx_batch
        try:
            fresh = _imp.create_builtin(importlib.machinery.BuiltinImporter.find_spec("_signal"))
            fresh.signal(fresh.SIGALRM, lambda signum, frame: None)
            print("GOT A HANDLER")
        except PermissionError as e:
            print("refused:", e)
        try:
            open("/proc/self/mem", "r+b")
            print("GOT MEMORY")
        except PermissionError as e:
            print("refused:", e)
    """)
    r = judged(path)
    assert r.passed == 0 and r.first_error is None
    assert "refused: opening /proc/self/mem" in flags_text(r) and "imports _imp" in flags_text(r)


def test_a_thread_hidden_from_threadings_records_still_fails_the_checks(tmp_path):
    path = submission(tmp_path, FLIPPER + """
        threading._active.clear()                  # threading.enumerate() sees nothing now
    """)
    assert naive(path) == {"burst", "wrap", "stream"}
    r = judged(path)
    assert r.passed == 0
    assert all("threading's record of threads" in c.message for c in r.checks), [c.message for c in r.checks]
