"""Grade exercise notebooks with the solutions' own checks, decided by a judge
process that the student's code cannot overrule.

    labkit grade SUBMISSION.ipynb|FOLDER [--json] [--junit FILE] [--solutions DIR]
                 [--timeout SECONDS] [--cell-timeout SECONDS] [--jobs N] [--keep DIR]

For each submission:

1. Which exercise: ``metadata.labkit.course.exercise`` (every shipped exercise has
   it), else the file name (``01_polling.ipynb``, ``alice-01_polling.ipynb``).
2. A graded copy: the submission's cells, in its order, its measurement cells
   (tag ``measure``) left out; every check cell (tag ``check``, id
   ``check-<name>``) replaced by the solution's; a check cell missing from the
   submission is put back after the cell that precedes it in the solution. So
   a check cannot be weakened, reworded, renamed or deleted.
3. The judge (``labkit.course.judge``, a fresh process, ``LABKIT_QUICK=1``,
   ``NUMBA_BOUNDSCHECK=1``, a time limit per cell and per notebook) runs the
   copy. Before any student code it runs the solution's cells that precede
   the student's cell and snapshots the checking machinery; it guards the
   process with an audit hook; it puts the machinery back before each check
   and runs the check in a namespace of its own. A check passes when it
   raises nothing: what it prints does not matter. Verdicts come back signed
   with a key only this process and the judge know; a check without a signed
   verdict (the judge died, hung or was fooled into silence) fails.
4. Each check's pass/fail, the score (checks passed / checks), the first
   error of a cell that is not a check (a notebook that breaks before its
   checks fails them, and that error says why), notes on what the grader
   changed in the copy, and flags: code a human should read first (it
   imports ctypes, assigns to ``ex.check``, reads a notebook...), what the
   judge refused, and what it found changed and put back.

A folder grades every ``.ipynb`` under it (checkpoints skipped), one judge per
notebook, then prints a summary table. ``--json`` prints one JSON object
instead of the text; ``--junit FILE`` also writes JUnit XML, one testcase per
check per submission, for CI. ``grading/README.md`` says what the design
guarantees and what it does not.

Exit codes: 0 every check of every submission passed; 1 a check failed (or a
notebook did not run to its checks); 2 something could not be graded as
asked: a bad option, a path with no notebook, a file that is not a notebook
(invalid JSON), a notebook that is not one of ours, no solutions folder. A
single submission in that state prints one line on stderr; in a folder it is
a row of the table and the other notebooks are still graded.
"""
import argparse
import ast
import copy
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path


EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
CHECK_TAG = "check"
MEASURE_TAG = "measure"          # timing cells: not graded, skipped in the graded copy
SKIP_TAG = "nbval-skip"
STUDENT_TAG = "student"
CHECK_PREFIX = "check-"
DEFAULT_TIMEOUT_S = 600          # per notebook, kernel start to last cell
CELL_TIMEOUT_S = 120             # per cell: a check or a student's cell that hangs
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class GradeError(Exception):
    """A submission that cannot be graded; the message is one line."""


@dataclass
class CheckResult:
    name: str
    cell_id: str
    passed: bool
    message: str = None

    def to_dict(self):
        return {"name": self.name, "id": self.cell_id, "passed": self.passed, "message": self.message}


@dataclass
class Report:
    path: str
    exercise: str = None
    checks: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    flags: list = field(default_factory=list)    # what a human should read first (suspicious code)
    first_error: str = None       # the first cell (not a check) that raised, or a time-out
    error: str = None             # why the submission could not be graded at all
    seconds: float = 0.0
    student: str = None           # the path relative to the folder graded

    @property
    def passed(self):
        return sum(c.passed for c in self.checks)

    @property
    def total(self):
        return len(self.checks)

    @property
    def ok(self):
        return self.error is None and self.total > 0 and self.passed == self.total

    @property
    def exit_code(self):
        return EXIT_USAGE if self.error else EXIT_OK if self.ok else EXIT_FAILED

    def to_dict(self):
        return {"path": self.path, "student": self.student or self.path, "exercise": self.exercise,
                "ok": self.ok, "passed": self.passed, "total": self.total,
                "score": f"{self.passed}/{self.total}" if self.error is None else None,
                "error": self.error, "first_error": self.first_error, "notes": list(self.notes),
                "flags": list(self.flags),
                "checks": [c.to_dict() for c in self.checks], "seconds": round(self.seconds, 2)}


# ---- where the solutions are, which exercise a notebook is ----------------------

def solutions_dir(explicit=None):
    """--solutions, else $LABKIT_SOLUTIONS, else solutions/ next to the labkit package (a checkout)."""
    cand = explicit or os.environ.get("LABKIT_SOLUTIONS")
    if cand:
        p = Path(cand)
        if not p.is_dir():
            raise GradeError(f"solutions folder {cand} does not exist; pass --solutions DIR "
                             "(the solutions/ folder of the labkit repository)")
    else:
        p = Path(__file__).resolve().parents[2] / "solutions"      # labkit/course/grade.py -> the checkout
        if not p.is_dir():
            raise GradeError("no solutions folder next to this labkit install; pass --solutions DIR "
                             "(the solutions/ folder of the labkit repository)")
    if not known_exercises(p):
        raise GradeError(f"no solution notebooks (*.ipynb) in {p}")
    return p


def known_exercises(sol_dir):
    return sorted(p.stem for p in Path(sol_dir).glob("*.ipynb"))


def _one_line(text, limit=300):
    text = " ".join(_ANSI.sub("", str(text)).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def load_notebook(path):
    """The notebook at path (nbformat 4, cells with ids), or GradeError."""
    import nbformat
    path = Path(path)
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise GradeError(f"{path}: cannot read it ({_one_line(e)})") from None
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as e:
        raise GradeError(f"{path} is not a notebook: invalid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(data, dict) or not isinstance(data.get("cells"), list) or data.get("nbformat") != 4:
        raise GradeError(f"{path} is not a notebook: JSON without nbformat 4 cells "
                         "(save it from Jupyter as .ipynb)")
    try:
        with warnings.catch_warnings():        # nbformat's notes on old or repaired notebooks
            warnings.simplefilter("ignore")
            nb = nbformat.reads(raw, as_version=4)
    except Exception as e:
        raise GradeError(f"{path} is not a valid notebook: {_one_line(e, 200)}") from None
    if nb.nbformat_minor < 5:                  # ids came with nbformat 4.5
        nb.nbformat_minor = 5
    for cell in nb.cells:
        if not cell.get("id"):
            cell["id"] = uuid.uuid4().hex[:12]
    return nb


def exercise_of(nb, path, known):
    """The exercise a submission answers: its metadata, else its file name."""
    meta = nb.metadata.get("labkit", {})
    name = meta.get("exercise") if isinstance(meta, dict) else None
    if name is not None:
        if name not in known:
            raise GradeError(f"{path}: exercise {name!r} (metadata.labkit.course.exercise) is not one of ours: "
                             f"{', '.join(known)}")
        return name
    stem = Path(path).stem
    hits = [k for k in known if stem == k or stem.endswith(("_" + k, "-" + k, " " + k)) or k in stem]
    if len(hits) == 1:
        return hits[0]
    raise GradeError(f"{path} is not a labkit exercise: no metadata.labkit.course.exercise, and its name "
                     f"matches none of {', '.join(known)}")


def is_check(cell):
    return cell.get("cell_type") == "code" and CHECK_TAG in (cell.get("metadata", {}).get("tags") or [])


def check_name(cell_id):
    return cell_id[len(CHECK_PREFIX):] if cell_id.startswith(CHECK_PREFIX) else cell_id


# ---- the graded copy -----------------------------------------------------------

def merge_checks(submission, solution):
    """The graded copy of ``submission``: its cells with outputs cleared, its
    check cells replaced by the solution's (source and outputs), missing ones
    inserted where the solution has them. Returns (notebook, notes)."""
    nb = copy.deepcopy(submission)
    sol_checks = {c["id"]: c for c in solution.cells if is_check(c)}
    notes, edited, foreign = [], [], []
    cells, seen, dropped = [], set(), []
    for cell in nb.cells:
        cid = cell.get("id")
        if cid in sol_checks:
            if cid in seen:                      # a check copied: it runs once, where it first is
                dropped.append(cid)
                continue
            seen.add(cid)
            ref = sol_checks[cid]
            if cell.get("source") != ref.get("source") or not is_check(cell):
                edited.append(cid)
            cells.append(copy.deepcopy(ref))
            continue
        if cell.get("cell_type") == "code":
            tags = [t for t in (cell.metadata.get("tags") or []) if t not in (CHECK_TAG, SKIP_TAG)]
            if is_check(cell):
                foreign.append(cid)
            if MEASURE_TAG in tags:              # timings are not graded: do not spend the time
                tags.append(SKIP_TAG)
            if tags:
                cell.metadata["tags"] = tags
            else:
                cell.metadata.pop("tags", None)
            cell["outputs"], cell["execution_count"] = [], None   # the judge compares no output
        cells.append(cell)
    present = {c.get("id") for c in cells}
    missing = [cid for cid in sol_checks if cid not in present]
    for cid in missing:
        cells.insert(_insert_at(cells, solution.cells, cid), copy.deepcopy(sol_checks[cid]))
    nb.cells = cells
    if missing:
        notes.append("check cells missing from the submission were put back: " + ", ".join(missing))
    if edited:
        notes.append("check cells edited in the submission were replaced by the solution's: " + ", ".join(edited))
    if dropped:
        notes.append("check cells found twice in the submission run once: " + ", ".join(sorted(set(dropped))))
    if foreign:
        notes.append("cells tagged check that the solution does not have were run as ordinary cells: "
                     + ", ".join(foreign))
    return nb, notes


def _insert_at(cells, sol_cells, cid):
    """Index in ``cells`` where the solution's cell ``cid`` belongs: after the
    nearest solution cell before it that the copy has (same id, or same
    source), else before the nearest one after it, else at the end."""
    pos = next(i for i, c in enumerate(sol_cells) if c.get("id") == cid)

    def find(sol_cell):
        for i, c in enumerate(cells):
            if c.get("id") == sol_cell.get("id"):
                return i
        src = sol_cell.get("source", "").strip()
        if src:
            for i, c in enumerate(cells):
                if c.get("source", "").strip() == src and c.get("cell_type") == sol_cell.get("cell_type"):
                    return i
        return None
    for j in range(pos - 1, -1, -1):
        i = find(sol_cells[j])
        if i is not None:
            return i + 1
    for j in range(pos + 1, len(sol_cells)):
        i = find(sol_cells[j])
        if i is not None:
            return i
    return len(cells)


# ---- running the judge -------------------------------------------------------------

def _env(private=None):
    """The judge's environment. private: a folder of this run's own (its numba
    cache and IPython folder: what one submission writes there cannot reach
    the next submission's judge)."""
    env = dict(os.environ)
    env["LABKIT_QUICK"] = "1"
    # Out-of-bounds indexing in compiled student code raises IndexError instead
    # of reading a neighbour's bytes (or crashing the process).
    env["NUMBA_BOUNDSCHECK"] = "1"
    if private is not None:
        env["NUMBA_CACHE_DIR"] = str(Path(private) / "numba")
        env["IPYTHONDIR"] = str(Path(private) / "ipython")
    for k in ("PYTEST_ADDOPTS", "LABKIT_SOLUTIONS", "PYTHONSTARTUP", "PYTHONINSPECT"):
        env.pop(k, None)
    # The judge imports the labkit this grader is part of, installed or not.
    root = str(Path(__file__).resolve().parents[2])      # the folder that holds labkit/
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def _tags(cell):
    return cell.get("metadata", {}).get("tags") or []


def defined_names(source):
    """Names a cell binds at its top level: functions, classes, assignments."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    out = []

    def targets(t):
        if isinstance(t, ast.Name):
            out.append(t.id)
        elif isinstance(t, (ast.Tuple, ast.List)):
            for e in t.elts:
                targets(e)
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.append(node.name)
        elif isinstance(node, ast.Assign):
            for t in node.targets:
                targets(t)
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
            targets(node.target)
    return list(dict.fromkeys(out))


def judge_job(graded, solution, sol_dir):
    """What the judge runs (without its key and pipe): the trusted prefix (the
    solution's code cells before its student cell, measurements left out),
    the graded sequence (measurement cells left out), the names the student's
    cell defines, the folders the submission may not read."""
    trusted = []
    for c in solution.cells:
        if STUDENT_TAG in _tags(c):
            break
        if c.get("cell_type") == "code" and not is_check(c) and MEASURE_TAG not in _tags(c):
            trusted.append(c.source)
    deliverables = []
    for c in solution.cells:
        if STUDENT_TAG in _tags(c):
            deliverables += defined_names(c.source)
    sequence = [{"kind": "check" if is_check(c) else "cell", "id": c.get("id"), "source": c.source}
                for c in graded.cells
                if c.get("cell_type") == "code" and SKIP_TAG not in _tags(c)]
    denied = {str(Path(sol_dir).resolve())}
    default = Path(__file__).resolve().parents[2] / "solutions"
    if default.is_dir():
        denied.add(str(default.resolve()))
    return {"trusted": trusted, "sequence": sequence, "deliverables": list(dict.fromkeys(deliverables)),
            "denied_dirs": sorted(denied)}


@dataclass
class JudgeRun:
    """What one judge said: per sequence index, ("cell", ok, error) or
    ("check", passed, message); flags; why it stopped early (or None)."""
    outcomes: dict = field(default_factory=dict)
    flags: list = field(default_factory=list)
    stopped: str = None
    setup_error: str = None


LOG_KEEP = 64 << 10              # of what a notebook prints: the first and the last this many bytes


class _Output:
    """What the notebook prints: the first and the last LOG_KEEP bytes."""

    def __init__(self):
        self.head, self.tail, self.dropped = bytearray(), bytearray(), 0

    def add(self, text):
        if len(self.head) < LOG_KEEP:
            self.head += text
            return
        self.tail += text
        if len(self.tail) > LOG_KEEP:
            self.dropped += len(self.tail) - LOG_KEEP
            del self.tail[:len(self.tail) - LOG_KEEP]

    def write(self, path):
        gap = f"\n[... {self.dropped:,} bytes not kept ...]\n".encode() if self.dropped else b""
        Path(path).write_bytes(bytes(self.head) + gap + bytes(self.tail))


def _on_event(ev, out, state, cell_timeout):
    """Apply one signed event to the JudgeRun ``out``; state: {"current",
    "cell_deadline", "deadline"}. Returns True when the judge is done."""
    kind = ev.get("ev")
    if kind == "setup":
        if not ev.get("ok"):
            out.setup_error = ev.get("error")
            return True
    elif kind == "start":
        state["current"] = ev["i"]
        state["cell_deadline"] = time.monotonic() + cell_timeout
    elif kind in ("cell", "check"):
        ok = bool(ev["ok"]) if kind == "cell" else ev["passed"] is True
        out.outcomes[ev["i"]] = (kind, ok, ev.get("error") if kind == "cell" else ev.get("message"))
        state["cell_deadline"] = state["deadline"]
    elif kind == "flag":
        out.flags.append(str(ev.get("text")))
    elif kind == "crash":
        out.stopped = "the grader's judge failed: " + str(ev.get("error"))
        return True
    return kind == "done"


def _stop(out, seq, state, why, outcome):
    """The judge stopped early (a time limit, or it died): say why, and mark
    the item it was in."""
    out.stopped = why
    i = state["current"]
    if i is not None and i not in out.outcomes:
        out.outcomes[i] = (seq[i]["kind"], False, outcome)


def run_judge(job, timeout=DEFAULT_TIMEOUT_S, cell_timeout=CELL_TIMEOUT_S, log_path=None, cwd=None):
    """Run the judge on one job (see judge_job) in the folder cwd (its own:
    the judge's numba cache and IPython folder go there); returns a JudgeRun.
    Only events signed with this run's key count; a cell that runs past
    cell_timeout, or a notebook past timeout, stops the judge (its process
    group is killed) and leaves what was not decided undecided. What the
    notebook prints goes to log_path, its first and last LOG_KEEP bytes."""
    from labkit.course import judge
    key, (r_fd, w_fd) = os.urandom(32), os.pipe()
    seq, out, printed = job["sequence"], JudgeRun(), _Output()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "labkit.course.judge"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, pass_fds=(w_fd,),
                                start_new_session=True, env=_env(cwd), cwd=cwd)
    finally:
        os.close(w_fd)
    out_fd = proc.stdout.fileno()
    try:
        try:
            proc.stdin.write(json.dumps(dict(job, key=key.hex(), fd=w_fd)).encode())
            proc.stdin.close()
        except BrokenPipeError:
            pass
        deadline = time.monotonic() + timeout
        state = {"current": None, "cell_deadline": deadline, "deadline": deadline}
        expected, buf, forged, done = 0, b"", 0, False
        while not done:
            now = time.monotonic()
            if now >= min(deadline, state["cell_deadline"]):
                if now >= deadline:
                    _stop(out, seq, state, f"the notebook did not finish in {timeout:g} s (raise it with --timeout)",
                          f"the notebook did not finish in {timeout:g} s")
                else:
                    _stop(out, seq, state, f"cell {seq[state['current']]['id']} did not finish in {cell_timeout:g} s",
                          f"it did not finish in {cell_timeout:g} s")
                break
            ready, _, _ = select.select([r_fd] + ([out_fd] if out_fd is not None else []), [], [],
                                        min(deadline, state["cell_deadline"]) - now)
            if out_fd in ready:
                text = os.read(out_fd, 1 << 16)
                if text:
                    printed.add(text)
                else:
                    out_fd = None
            if r_fd not in ready:
                continue
            chunk = os.read(r_fd, 1 << 16)
            if not chunk:
                code = proc.wait()
                where = f" during cell {seq[state['current']]['id']}" if state["current"] is not None else ""
                _stop(out, seq, state, f"the notebook's process ended{where} (exit code {code})",
                      f"the notebook's process ended during it (exit code {code})")
                break
            *lines, buf = (buf + chunk).split(b"\n")
            for line in lines:
                ev = judge.verify(line, key, expected)
                if ev is None:
                    forged += 1
                    continue
                expected += 1
                done = _on_event(ev, out, state, cell_timeout)
                if done:
                    break
        if forged:
            out.flags.append(f"{forged} line(s) on the grader's private channel were not the grader's "
                             "(forged verdicts?): ignored")
    finally:
        os.close(r_fd)
        try:
            os.killpg(proc.pid, signal.SIGKILL)       # the judge and anything it left behind
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()
        proc.stdout.close()
        if log_path:
            printed.write(log_path)
    return out


# ---- flags for a human ---------------------------------------------------------------

SUSPECT_MODULES = {
    "ctypes": "ctypes (raw memory)", "cffi": "cffi (raw memory)", "gc": "gc (every object)",
    "inspect": "inspect (frames)", "sys": "sys", "builtins": "builtins", "signal": "signal",
    "_signal": "signal", "subprocess": "subprocess", "multiprocessing": "multiprocessing",
    "importlib": "importlib", "_imp": "_imp (the import machinery)", "faulthandler": "faulthandler",
    "socket": "socket", "pty": "pty",
    "traceback": "traceback (frames)", "llvmlite": "llvmlite (LLVM IR: raw memory)",
    "numba.extending": "numba.extending (intrinsics: raw memory)", "numba.core": "numba.core (numba's internals)",
    "numba.experimental": "numba.experimental", "IPython": "IPython's internals", "nbformat": "nbformat",
    "labkit.course.grade": "the grader", "labkit.course.judge": "the grader",
}
SUSPECT_CALLS = {"setattr", "delattr", "vars", "globals", "locals", "exec", "eval", "compile", "__import__",
                 "get_ipython", "id", "breakpoint", "_exit", "kill", "objmode", "intrinsic"}
SUSPECT_ATTRS = {"__dict__", "__builtins__", "__globals__", "__code__", "__closure__", "__class__", "__subclasses__",
                 "__mro__", "__bases__", "__defaults__", "__kwdefaults__", "modules", "_exit", "f_back", "f_locals",
                 "f_globals", "tb_frame", "gi_frame", "__traceback__", "py_func", "overloads", "_insert",
                 "add_overload", "recompile", "stdout", "stderr", "excepthook", "displayhook", "addaudithook"}
ALWAYS_EQUAL = {"__eq__", "__ne__", "__bool__", "__hash__", "__len__", "__index__", "__int__", "__instancecheck__"}
SUSPECT_TEXT = re.compile(r"solutions|\.ipynb|/proc/self|/dev/mem|labkit-grade-", re.I)


def static_flags(source, module_names=()):
    """What a human should read in one cell of a submission: each a short phrase.
    module_names: names the notebook binds to modules (its imports' aliases)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        try:
            from IPython.core.inputtransformer2 import TransformerManager
            tree = ast.parse(TransformerManager().transform_cell(source))
        except Exception:
            return ["code that does not parse"]
    out, modules = [], set(module_names)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
            for a in node.names:
                modules.add((a.asname or a.name).split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
            if (node.module or "").startswith("labkit"):
                names += [f"{node.module}.{a.name}" for a in node.names]
        else:
            names = []
        for n in names:
            for mod, what in SUSPECT_MODULES.items():
                if n == mod or n.startswith(mod + "."):
                    out.append(f"imports {what}")
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Delete)):
            targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
            for t in targets:
                for sub in ast.walk(t):
                    if isinstance(sub, (ast.Attribute, ast.Subscript)) and isinstance(sub.ctx, (ast.Store, ast.Del)):
                        base = sub.value
                        while isinstance(base, (ast.Attribute, ast.Subscript)):
                            base = base.value
                        if isinstance(base, ast.Name) and base.id in modules | {"ex", "lesson", "np", "numpy",
                                                                                  "labkit", "builtins", "sys"}:
                            out.append(f"assigns to {ast.unparse(sub)} (a module's attribute)")
        if isinstance(node, ast.Call):
            f = node.func
            name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
            if name in SUSPECT_CALLS and (name != "get_ipython" or "get_ipython" in source):   # not a %magic
                out.append(f"calls {name}()")
        if isinstance(node, ast.Attribute) and node.attr in SUSPECT_ATTRS:
            out.append(f"uses .{node.attr}")
        if isinstance(node, ast.Name) and node.id in ("__builtins__", "__loader__", "__spec__"):
            out.append(f"uses {node.id}")
        if isinstance(node, ast.FunctionDef) and node.name in ALWAYS_EQUAL:
            out.append(f"defines {node.name} (an object that compares or tests as it likes)")
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and SUSPECT_TEXT.search(node.value):
            out.append(f"names {SUSPECT_TEXT.search(node.value).group(0)!r}")
    return list(dict.fromkeys(out))


def submission_flags(submission, solution):
    """Flags for every code cell a student wrote or changed (not the checks):
    "cell ID: what", and one when the student's cell is the shipped solution's."""
    sol = {c.get("id"): c for c in solution.cells}
    aliases = set()
    for c in submission.cells:
        if c.get("cell_type") == "code":
            aliases |= module_aliases(c.source)
    flags = []
    for c in submission.cells:
        if c.get("cell_type") != "code" or is_check(c) or c.get("id") in {x for x in sol if x.startswith(CHECK_PREFIX)}:
            continue
        ref = sol.get(c.get("id"))
        student = STUDENT_TAG in _tags(c) or (ref is not None and STUDENT_TAG in _tags(ref))
        if ref is not None and not student and ref.source == c.source:
            continue                                   # a cell as the course ships it
        if student and ref is not None and _normal(ref.source) == _normal(c.source):
            flags.append(f"cell {c.get('id')}: the shipped solution's code, unchanged")
        flags += [f"cell {c.get('id')}: {f}" for f in static_flags(c.source, aliases)]
    return flags


def module_aliases(source):
    """Names a cell binds to modules: ``import numpy as np``, ``from labkit.course import exercise as ex``."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return set()
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            import importlib.util
            for a in node.names:
                full = f"{node.module}.{a.name}" if node.module else a.name
                try:
                    if node.level == 0 and importlib.util.find_spec(full) is not None:
                        out.add(a.asname or a.name)
                except (ImportError, ValueError, AttributeError):
                    pass
    return out


def _normal(source):
    return "\n".join(ln.split("#")[0].rstrip() for ln in source.splitlines() if ln.split("#")[0].strip())


# ---- grading -----------------------------------------------------------------------

def grade_notebook(path, solutions=None, timeout=DEFAULT_TIMEOUT_S, keep=None, cell_timeout=CELL_TIMEOUT_S):
    """Grade one submission; raises GradeError when it cannot be graded."""
    t0 = time.monotonic()
    sol_dir = solutions if isinstance(solutions, Path) else solutions_dir(solutions)
    known = known_exercises(sol_dir)
    nb = load_notebook(path)
    name = exercise_of(nb, path, known)
    solution = load_notebook(sol_dir / f"{name}.ipynb")
    graded, notes = merge_checks(nb, solution)
    report = Report(path=str(path), exercise=name, notes=notes, flags=submission_flags(nb, solution))
    job = judge_job(graded, solution, sol_dir)
    with tempfile.TemporaryDirectory(prefix="labkit-grade-") as tmp:
        log = Path(tmp) / "judge.log"
        work = Path(tmp) / "run"
        work.mkdir()
        if keep:
            import nbformat
            Path(keep).mkdir(parents=True, exist_ok=True)
            stem = re.sub(r"[^\w.-]+", "_", str(path).strip("/"))
            stem = stem if stem.endswith(".ipynb") else stem + ".ipynb"
            nbformat.write(graded, str(Path(keep) / stem))
        run = run_judge(job, timeout=timeout, cell_timeout=cell_timeout, log_path=log, cwd=work)
        if keep:
            shutil.copyfile(log, Path(keep) / (stem[:-len(".ipynb")] + ".log"))
    report.flags += [f for f in run.flags if f not in report.flags]
    first_error = None
    if run.setup_error:
        first_error = f"the grader's setup (the solution's cells before the student's) failed: {run.setup_error}"
    for i, item in enumerate(job["sequence"]):
        kind, ok, msg = run.outcomes.get(i, (item["kind"], None, None))
        if item["kind"] == "check":
            if ok is None:
                msg = "not run: " + (run.stopped or first_error or "the grader got no verdict for it")
            report.checks.append(CheckResult(check_name(item["id"]), item["id"], ok is True, None if ok else msg))
        elif ok is False and first_error is None:
            first_error = f"cell {item['id']}: {msg}"
    if first_error is None and run.stopped:
        first_error = run.stopped
    report.first_error = first_error
    report.seconds = time.monotonic() - t0
    return report


def find_notebooks(folder):
    folder = Path(folder)
    return sorted(p for p in folder.rglob("*.ipynb")
                  if ".ipynb_checkpoints" not in p.parts and not any(s.startswith(".") for s in
                                                                      p.relative_to(folder).parts))


def _check_tools():
    import importlib.util
    missing = [m for m in ("IPython", "nbformat", "numpy", "numba") if importlib.util.find_spec(m) is None]
    if missing:
        raise GradeError(f"grading needs {', '.join(missing)}: pip install 'labkit[test]' "
                         "(or pip install ipython nbformat numpy numba)")


def grade_path(path, solutions=None, timeout=DEFAULT_TIMEOUT_S, jobs=1, keep=None, cell_timeout=CELL_TIMEOUT_S):
    """Reports for one notebook or every notebook under a folder. Raises
    GradeError for a single file that cannot be graded, or a path with no notebook."""
    _check_tools()
    path = Path(path)
    sol_dir = solutions_dir(solutions) if not isinstance(solutions, Path) else solutions
    if path.is_file():
        return [grade_notebook(path, sol_dir, timeout, keep, cell_timeout)]
    if not path.is_dir():
        raise GradeError(f"{path}: no such file or folder")
    files = find_notebooks(path)
    if not files:
        raise GradeError(f"{path}: no .ipynb notebooks in this folder")

    def one(f):
        try:
            r = grade_notebook(f, sol_dir, timeout, keep, cell_timeout)
        except GradeError as e:
            r = Report(path=str(f), error=str(e))
        r.student = str(f.relative_to(path))
        return r
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        return list(pool.map(one, files))


def exit_code(reports):
    return max((r.exit_code for r in reports), default=EXIT_USAGE)


# ---- output ------------------------------------------------------------------------

def format_report(r):
    who = r.student or r.path
    if r.error:
        return f"{who}: cannot grade: {r.error}"
    lines = [f"{who} ({r.exercise})"]
    lines += [f"  FLAG  {f}" for f in r.flags]          # first: what a human should read
    lines += [f"  note: {n}" for n in r.notes]
    if r.first_error:
        lines.append(f"  error before or between the checks: {r.first_error}")
    for c in r.checks:
        lines.append(f"  {'pass' if c.passed else 'FAIL'}  {c.name}" + ("" if c.passed else f": {c.message}"))
    lines.append(f"  score {r.passed}/{r.total}: {'every check passed' if r.ok else 'some checks failed'}")
    return "\n".join(lines)


def format_table(reports):
    rows = [("submission", "exercise", "score", "flags", "result")]
    for r in reports:
        if r.error:
            rows.append((r.student or r.path, "-", "-", "-", "cannot grade: " + r.error))
        else:
            rows.append((r.student or r.path, r.exercise, f"{r.passed}/{r.total}", str(len(r.flags)),
                         "pass" if r.ok else "fail"))
    w = [max(len(row[i]) for row in rows) for i in range(4)]
    out = ["  ".join(row[i].ljust(w[i]) for i in range(4)) + "  " + row[4] for row in rows]
    out.insert(1, "-" * min(100, max(len(s) for s in out)))
    n_ok = sum(r.ok for r in reports)
    n_err = sum(bool(r.error) for r in reports)
    n_flagged = sum(bool(r.flags) for r in reports)
    out.append(f"{len(reports)} submissions: {n_ok} passed every check, "
               f"{len(reports) - n_ok - n_err} failed some, {n_err} could not be graded; "
               f"{n_flagged} flagged (read their FLAG lines first)")
    return "\n".join(out)


def to_json(reports):
    return {"ok": all(r.ok for r in reports) and bool(reports), "exit_code": exit_code(reports),
            "submissions": [r.to_dict() for r in reports]}


def junit_xml(reports):
    """JUnit XML: a testsuite per submission, a testcase per check."""
    suites = ET.Element("testsuites", name="labkit grade")
    tot = fail = errs = 0
    for r in reports:
        who = r.student or r.path
        s = ET.SubElement(suites, "testsuite", name=who, time=f"{r.seconds:.2f}")
        if r.exercise:
            props = ET.SubElement(s, "properties")
            ET.SubElement(props, "property", name="exercise", value=r.exercise)
        cls = re.sub(r"\.ipynb$", "", who).replace("/", ".")
        if r.error:
            case = ET.SubElement(s, "testcase", classname=cls, name="notebook")
            ET.SubElement(case, "error", message=r.error)
            n, f, e = 1, 0, 1
        else:
            n, f, e = len(r.checks), 0, 0
            for c in r.checks:
                case = ET.SubElement(s, "testcase", classname=cls, name=c.name)
                if not c.passed:
                    ET.SubElement(case, "failure", message=c.message or "failed")
                    f += 1
            if r.first_error:
                ET.SubElement(s, "system-err").text = r.first_error
        s.set("tests", str(n))
        s.set("failures", str(f))
        s.set("errors", str(e))
        tot, fail, errs = tot + n, fail + f, errs + e
    suites.set("tests", str(tot))
    suites.set("failures", str(fail))
    suites.set("errors", str(errs))
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"


# ---- the command ----------------------------------------------------------------

def _positive(text):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; use seconds, e.g. 900") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be more than 0 seconds")
    return v


def _jobs(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer; use 1 or more") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{v} is too small; use 1 or more")
    return v


def add_parser(sub):
    """Add `grade` to an argparse subparsers object (labkit's CLI)."""
    p = sub.add_parser("grade", help="grade exercise notebooks with the solutions' checks (a judge decides them)",
                       description="Grade exercise notebooks: the solution's check cells replace the "
                       "submission's, a judge process runs the copy and decides each check out of the "
                       "student code's reach. Exit 0 all checks pass, 1 some fail, 2 something could not be "
                       "graded.")
    p.add_argument("path", metavar="SUBMISSION", help="a notebook, or a folder: every .ipynb under it")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--junit", metavar="FILE", help="also write JUnit XML (a testcase per check) to FILE")
    p.add_argument("--solutions", metavar="DIR",
                   help="the solution notebooks (default: solutions/ of this labkit checkout)")
    p.add_argument("--timeout", type=_positive, default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
                   help=f"per notebook (default {DEFAULT_TIMEOUT_S})")
    p.add_argument("--cell-timeout", type=_positive, default=CELL_TIMEOUT_S, metavar="SECONDS",
                   help=f"per cell, a check or the student's (default {CELL_TIMEOUT_S})")
    p.add_argument("--jobs", type=_jobs, default=1, metavar="N", help="notebooks graded at once (default 1)")
    p.add_argument("--keep", metavar="DIR",
                   help="keep the graded copies (what the judge ran) and the judge's logs in DIR")
    return p


def _err(text):
    print(f"labkit grade: error: {_one_line(text)}", file=sys.stderr)


def main(args):
    """Run `labkit grade` with parsed args; returns the exit code."""
    try:
        reports = grade_path(args.path, args.solutions, args.timeout, args.jobs, args.keep,
                             getattr(args, "cell_timeout", CELL_TIMEOUT_S))
    except GradeError as e:
        _err(e)
        if args.json:
            print(json.dumps({"ok": False, "exit_code": EXIT_USAGE, "error": _one_line(e), "submissions": []}))
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    if args.junit:
        try:
            Path(args.junit).write_text(junit_xml(reports), encoding="utf-8")
        except OSError as e:
            _err(f"cannot write {args.junit}: {e.strerror or e}")
            return EXIT_USAGE
    if args.json:
        print(json.dumps(to_json(reports), indent=1))
    else:
        folder = Path(args.path).is_dir()
        for r in reports:
            if folder or not r.error:
                print(format_report(r))
        if folder:
            print()
            print(format_table(reports))
    return exit_code(reports)


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        _err(f"{message} (see `{self.prog} --help`)")
        sys.exit(EXIT_USAGE)


if __name__ == "__main__":
    parser = _Parser(prog="labkit")
    add_parser(parser.add_subparsers(dest="command", required=True))
    sys.exit(main(parser.parse_args(["grade"] + sys.argv[1:])))
