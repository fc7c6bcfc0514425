"""Grade exercise notebooks with the solutions' own check cells, run by nbval.

    labkit grade SUBMISSION.ipynb|FOLDER [--json] [--junit FILE] [--solutions DIR]
                 [--timeout SECONDS] [--jobs N] [--keep DIR]

For each submission:

1. Which exercise: ``metadata.labkit.course.exercise`` (every shipped exercise has
   it), else the file name (``01_polling.ipynb``, ``alice-01_polling.ipynb``).
2. A graded copy: the submission's cells, in its order, with its outputs
   cleared and its measurement cells (tag ``measure``) skipped; every check cell (tag ``check``, id ``check-<name>``) replaced by
   the solution's cell, source *and* stored outputs; a check cell missing
   from the submission is put back after the cell that precedes it in the
   solution. So a check cannot be weakened, reworded or deleted.
3. nbval runs the copy (``python -m pytest --nbval``, one fresh kernel,
   ``LABKIT_QUICK=1``, a time limit). A check passes when its cell runs
   without an exception and prints exactly the solution's line
   (``check walk-ring: ok``).
4. Each check's pass/fail, the score (checks passed / checks), and the first
   error of a cell that is not a check (a notebook that breaks before its
   checks fails them, and that error says why).

A folder grades every ``.ipynb`` under it (checkpoints skipped), one kernel
per notebook, then prints a summary table. ``--json`` prints one JSON object
instead of the text; ``--junit FILE`` also writes JUnit XML, one testcase per
check per submission, for CI.

This keeps checks intact; it does not sandbox the student's code, which runs
in the same kernel as the checks. Read the code of a submission that passes
surprisingly.

Exit codes: 0 every check of every submission passed; 1 a check failed (or a
notebook did not run to its checks); 2 something could not be graded as
asked: a bad option, a path with no notebook, a file that is not a notebook
(invalid JSON), a notebook that is not one of ours, no solutions folder. A
single submission in that state prints one line on stderr; in a folder it is
a row of the table and the other notebooks are still graded.
"""
import argparse
import copy
import json
import os
import re
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

from labkit.settings import numba_cache_dir

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
CHECK_TAG = "check"
MEASURE_TAG = "measure"          # timing cells: not graded, skipped in the graded copy
SKIP_TAG = "nbval-skip"
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
            cell["outputs"], cell["execution_count"] = [], None   # nbval compares nothing here
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


# ---- running nbval ---------------------------------------------------------------

def _env():
    env = dict(os.environ)
    env["LABKIT_QUICK"] = "1"
    # Out-of-bounds indexing in compiled student code raises IndexError instead
    # of reading a neighbour's bytes (or crashing the kernel). The flag changes
    # the compiled code, so it gets a numba cache of its own.
    env["NUMBA_BOUNDSCHECK"] = "1"
    env["NUMBA_CACHE_DIR"] = numba_cache_dir("numba-boundscheck")
    env.pop("PYTEST_ADDOPTS", None)
    # The kernel imports the labkit this grader is part of, installed or not.
    root = str(Path(__file__).resolve().parents[2])      # the folder that holds labkit/
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def run_nbval(nb_path, timeout=DEFAULT_TIMEOUT_S, cell_timeout=CELL_TIMEOUT_S):
    """Run nbval on one notebook in a fresh kernel. Returns ({code cell index:
    (status, message)}, error), status "passed", "failed" or "skipped"; error
    is None, or why nbval gave no (or not all) results."""
    nb_path = Path(nb_path)
    xml_path = nb_path.with_suffix(".junit.xml")
    cmd = [sys.executable, "-m", "pytest", "--nbval", "--nbval-current-env", "-p", "no:cacheprovider",
           "-q", "--tb=short", "--color=no", "-o", "addopts=", "--rootdir", str(nb_path.parent),
           f"--nbval-cell-timeout={cell_timeout}", f"--junitxml={xml_path}", str(nb_path)]
    proc = subprocess.Popen(cmd, cwd=nb_path.parent, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)    # pytest and the kernel it started
        proc.communicate()
        return {}, f"the notebook did not finish in {timeout:g} s (raise it with --timeout)"
    if not xml_path.exists():
        tail = _one_line(out.decode(errors="replace")[-400:])
        return {}, f"nbval did not run (pytest exit {proc.returncode}): {tail}"
    results = {}
    for case in ET.parse(xml_path).getroot().iter("testcase"):
        m = re.search(r"Cell (\d+)$", case.get("name", ""))
        if not m:
            continue
        bad = case.find("failure")
        if bad is None:
            bad = case.find("error")
        skipped = case.find("skipped")
        if bad is not None:
            results[int(m.group(1))] = ("failed", _failure_message(bad))
        elif skipped is not None:
            why = _one_line((skipped.get("message") or "").replace("#x1B", "\x1b"))
            results[int(m.group(1))] = ("skipped", why or "skipped")
        else:
            results[int(m.group(1))] = ("passed", None)
    return results, None


def _failure_message(elem):
    """One line from nbval's failure report: the exception, or what differs."""
    text = elem.text or elem.get("message") or ""             # the message is a truncated text
    text = _ANSI.sub("", text.replace("#x1B", "\x1b"))     # junitxml escapes ESC as #x1B
    if "Cell outputs differ" in text:
        return "its printed output differs from the solution's (it must print exactly the check line)"
    m = re.search(r"Timeout of [\d.]+ seconds exceeded[^\n]*", text)
    if m:
        return m.group(0).strip()
    if "Traceback:" in text:
        lines = [ln.strip() for ln in text.split("Traceback:", 1)[1].splitlines() if ln.strip()]
        for ln in reversed(lines):
            if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt|Warning)(: |$)", ln) or \
               re.match(r"^[A-Za-z_][\w.]*: ", ln):
                return _one_line(ln)
        if lines:
            return _one_line(lines[-1])
    return _one_line(text.strip().splitlines()[-1] if text.strip() else "failed")


# ---- grading -----------------------------------------------------------------------

def grade_notebook(path, solutions=None, timeout=DEFAULT_TIMEOUT_S, keep=None):
    """Grade one submission; raises GradeError when it cannot be graded."""
    t0 = time.monotonic()
    sol_dir = solutions if isinstance(solutions, Path) else solutions_dir(solutions)
    known = known_exercises(sol_dir)
    nb = load_notebook(path)
    name = exercise_of(nb, path, known)
    solution = load_notebook(sol_dir / f"{name}.ipynb")
    graded, notes = merge_checks(nb, solution)
    report = Report(path=str(path), exercise=name, notes=notes)
    with tempfile.TemporaryDirectory(prefix="labkit-grade-") as tmp:
        import nbformat
        copy_path = Path(tmp) / f"{name}.ipynb"
        nbformat.write(graded, str(copy_path))
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            stem = re.sub(r"[^\w.-]+", "_", str(path).strip("/"))
            shutil.copyfile(copy_path, Path(keep) / (stem if stem.endswith(".ipynb") else stem + ".ipynb"))
        results, err = run_nbval(copy_path, timeout=timeout)
    code_cells = [c for c in graded.cells if c.get("cell_type") == "code"]
    first_error = err
    for k, cell in enumerate(code_cells):
        status, msg = results.get(k, (None, None))
        if is_check(cell):
            if status is None:
                msg = "not run: " + (err or "nbval reported nothing for this cell")
            elif status == "skipped":
                msg = "not run: " + msg
            report.checks.append(CheckResult(check_name(cell["id"]), cell["id"], status == "passed", msg))
        elif status == "failed" and first_error is None:
            first_error = f"cell {cell['id']}: {msg}"
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
    missing = [m for m in ("pytest", "nbval", "ipykernel", "nbformat") if importlib.util.find_spec(m) is None]
    if missing:
        raise GradeError(f"grading needs {', '.join(missing)}: pip install 'labkit[test]' "
                         "(or pip install pytest nbval ipykernel)")


def grade_path(path, solutions=None, timeout=DEFAULT_TIMEOUT_S, jobs=1, keep=None):
    """Reports for one notebook or every notebook under a folder. Raises
    GradeError for a single file that cannot be graded, or a path with no notebook."""
    _check_tools()
    path = Path(path)
    sol_dir = solutions_dir(solutions) if not isinstance(solutions, Path) else solutions
    if path.is_file():
        return [grade_notebook(path, sol_dir, timeout, keep)]
    if not path.is_dir():
        raise GradeError(f"{path}: no such file or folder")
    files = find_notebooks(path)
    if not files:
        raise GradeError(f"{path}: no .ipynb notebooks in this folder")

    def one(f):
        try:
            r = grade_notebook(f, sol_dir, timeout, keep)
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
    lines += [f"  note: {n}" for n in r.notes]
    if r.first_error:
        lines.append(f"  error before or between the checks: {r.first_error}")
    for c in r.checks:
        lines.append(f"  {'pass' if c.passed else 'FAIL'}  {c.name}" + ("" if c.passed else f": {c.message}"))
    lines.append(f"  score {r.passed}/{r.total}: {'every check passed' if r.ok else 'some checks failed'}")
    return "\n".join(lines)


def format_table(reports):
    rows = [("submission", "exercise", "score", "result")]
    for r in reports:
        if r.error:
            rows.append((r.student or r.path, "-", "-", "cannot grade: " + r.error))
        else:
            rows.append((r.student or r.path, r.exercise, f"{r.passed}/{r.total}", "pass" if r.ok else "fail"))
    w = [max(len(row[i]) for row in rows) for i in range(3)]
    out = ["  ".join(row[i].ljust(w[i]) for i in range(3)) + "  " + row[3] for row in rows]
    out.insert(1, "-" * min(100, max(len(s) for s in out)))
    n_ok = sum(r.ok for r in reports)
    n_err = sum(bool(r.error) for r in reports)
    out.append(f"{len(reports)} submissions: {n_ok} passed every check, "
               f"{len(reports) - n_ok - n_err} failed some, {n_err} could not be graded")
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
    p = sub.add_parser("grade", help="grade exercise notebooks with the solutions' check cells (nbval)",
                       description="Grade exercise notebooks: the solution's check cells replace the "
                       "submission's, nbval runs the copy. Exit 0 all checks pass, 1 some fail, "
                       "2 something could not be graded.")
    p.add_argument("path", metavar="SUBMISSION", help="a notebook, or a folder: every .ipynb under it")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--junit", metavar="FILE", help="also write JUnit XML (a testcase per check) to FILE")
    p.add_argument("--solutions", metavar="DIR",
                   help="the solution notebooks (default: solutions/ of this labkit checkout)")
    p.add_argument("--timeout", type=_positive, default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
                   help=f"per notebook (default {DEFAULT_TIMEOUT_S})")
    p.add_argument("--jobs", type=_jobs, default=1, metavar="N", help="notebooks graded at once (default 1)")
    p.add_argument("--keep", metavar="DIR", help="keep the graded copies (what nbval ran) in DIR")
    return p


def _err(text):
    print(f"labkit grade: error: {_one_line(text)}", file=sys.stderr)


def main(args):
    """Run `labkit grade` with parsed args; returns the exit code."""
    try:
        reports = grade_path(args.path, args.solutions, args.timeout, args.jobs, args.keep)
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
