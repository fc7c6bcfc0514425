"""labkit.course.grade: checks come from the solution, whatever the submission did
to them; folders, --json, --junit; and every way a submission can be wrong
says so in one line.

Exercise 02 is the test subject: its notebook runs in a few seconds."""
import copy
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import nbformat
import pytest

from labkit.course import grade

ROOT = Path(__file__).resolve().parent.parent
NAME = "02_io_batching"
SOLUTION = ROOT / "solutions" / f"{NAME}.ipynb"
EXERCISE = ROOT / "exercises" / f"{NAME}.ipynb"


def _read(path):
    return nbformat.read(str(path), as_version=4)


def _write(nb, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))
    return path


def _cell(nb, cid):
    return next(c for c in nb.cells if c.get("id") == cid)


def _checks(nb):
    return [c for c in nb.cells if grade.is_check(c)]


def _cli(*args, timeout=600):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return subprocess.run([sys.executable, "-m", "labkit.course.grade", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout)


def _weakened(base):
    """``base`` with every trick: an assert edited away, a check deleted, a
    check's printed line and stored output changed, and a fake check added."""
    nb = copy.deepcopy(base)
    _cell(nb, "check-burst").source = 'print("check burst: ok")'
    nb.cells = [c for c in nb.cells if c.get("id") != "check-wrap"]
    stream = _cell(nb, "check-stream")
    stream.source = stream.source.replace('ex.check("stream")', 'ex.check("anything")')
    stream.outputs = [nbformat.v4.new_output("stream", name="stdout", text="check anything: ok\n")]
    fake = nbformat.v4.new_code_cell('print("check bonus: ok")')
    fake.id, fake.metadata["tags"] = "check-bonus", ["check"]
    nb.cells.append(fake)
    return nb


# ---- the graded copy (no kernel needed) -----------------------------------------------

def test_graded_copy_has_the_solutions_checks_whatever_the_submission_did():
    sol = _read(SOLUTION)
    merged, notes = grade.merge_checks(_weakened(_read(EXERCISE)), sol)
    got = {c.id: c for c in _checks(merged)}
    assert list(got) == [c.id for c in _checks(sol)]                 # the fake one is no check
    for c in _checks(sol):
        assert got[c.id].source == c.source and got[c.id].outputs == c.outputs
    ids = [c.id for c in merged.cells]
    assert ids.index("check-wrap") == ids.index("check-burst") + 1   # put back where the solution has it
    assert any("put back" in n and "check-wrap" in n for n in notes)
    assert any("edited" in n and "check-burst" in n and "check-stream" in n for n in notes)
    assert any("check-bonus" in n for n in notes)
    bonus = _cell(merged, "check-bonus")
    assert "check" not in bonus.metadata.get("tags", []) and bonus.outputs == []


def test_graded_copy_clears_the_submissions_outputs_and_skips_measurements():
    merged, notes = grade.merge_checks(_read(SOLUTION), _read(SOLUTION))
    assert notes == []
    for c in merged.cells:
        if c.cell_type == "code" and not grade.is_check(c):
            assert c.outputs == [] and c.execution_count is None
    assert grade.SKIP_TAG in _cell(merged, "measure").metadata["tags"]
    assert grade.SKIP_TAG not in _cell(merged, "student-rx").metadata.get("tags", [])


def test_every_missing_check_is_inserted_in_the_solutions_order():
    sub = _read(EXERCISE)
    sub.cells = [c for c in sub.cells if not grade.is_check(c)]
    merged, notes = grade.merge_checks(sub, _read(SOLUTION))
    ids = [c.id for c in merged.cells]
    at = ids.index("checks-md")
    assert ids[at + 1:at + 4] == ["check-burst", "check-wrap", "check-stream"]
    assert any("put back" in n for n in notes)


def test_the_exercise_is_known_by_metadata_or_by_file_name(tmp_path):
    known = grade.known_exercises(ROOT / "solutions")
    nb = _read(EXERCISE)
    assert grade.exercise_of(nb, "whatever.ipynb", known) == NAME
    del nb.metadata["labkit"]
    assert grade.exercise_of(nb, "alice-02_io_batching.ipynb", known) == NAME
    with pytest.raises(grade.GradeError, match="not a labkit exercise"):
        grade.exercise_of(nb, "homework.ipynb", known)
    nb.metadata["labkit"] = {"exercise": "99_teleport"}
    with pytest.raises(grade.GradeError, match="not one of ours"):
        grade.exercise_of(nb, "02_io_batching.ipynb", known)


# ---- grading runs ------------------------------------------------------------------------

def test_weakened_checks_do_not_help_json_output(tmp_path):
    path = _write(_weakened(_read(EXERCISE)), tmp_path / f"{NAME}.ipynb")
    r = _cli(path, "--json")
    assert r.returncode == 1, r.stderr
    out = json.loads(r.stdout)
    assert set(out) >= {"ok", "exit_code", "submissions"} and out["ok"] is False and out["exit_code"] == 1
    (sub,) = out["submissions"]
    assert sub["exercise"] == NAME and (sub["passed"], sub["total"], sub["score"]) == (0, 3, "0/3")
    assert [(c["name"], c["id"], c["passed"]) for c in sub["checks"]] == [
        ("burst", "check-burst", False), ("wrap", "check-wrap", False), ("stream", "check-stream", False)]
    assert all(c["message"] and "\n" not in c["message"] for c in sub["checks"])
    assert "rx_batch returned 1" in sub["checks"][0]["message"]
    assert any("put back" in n for n in sub["notes"])
    assert sub["first_error"] is None and sub["error"] is None


def test_a_notebook_that_breaks_before_its_checks_fails_them_and_says_why(tmp_path):
    nb = _read(SOLUTION)
    _cell(nb, "setup").source = 'raise RuntimeError("the setup is broken")'
    report = grade.grade_notebook(_write(nb, tmp_path / f"{NAME}.ipynb"))
    assert report.total == 3 and report.passed == 0 and report.exit_code == 1
    assert "RuntimeError: the setup is broken" in report.first_error
    assert report.first_error.startswith("cell setup")
    assert all("NameError" in c.message for c in report.checks)
    assert "error before or between the checks" in grade.format_report(report)


def test_folder_grading_table_and_junit(tmp_path):
    folder = tmp_path / "class"
    _write(_read(SOLUTION), folder / "alice" / f"{NAME}.ipynb")
    _write(_read(EXERCISE), folder / "bob" / f"{NAME}.ipynb")
    (folder / "carol").mkdir()
    (folder / "carol" / f"{NAME}.ipynb").write_text("{ this is not json")
    foreign = nbformat.v4.new_notebook()
    foreign.cells = [nbformat.v4.new_code_cell("print(1)")]
    _write(foreign, folder / "dave" / "homework.ipynb")
    _write(_read(EXERCISE), folder / "bob" / ".ipynb_checkpoints" / f"{NAME}-checkpoint.ipynb")
    junit = tmp_path / "results.xml"

    r = _cli(folder, "--junit", junit)
    assert r.returncode == 2, r.stdout + r.stderr                  # an ungradable file is in the class
    table = r.stdout[r.stdout.rindex("\nsubmission") + 1:].splitlines()
    rows = {line.split()[0]: line for line in table[2:-1]}
    assert set(rows) == {f"alice/{NAME}.ipynb", f"bob/{NAME}.ipynb", f"carol/{NAME}.ipynb", "dave/homework.ipynb"}
    assert rows[f"alice/{NAME}.ipynb"].split()[2:5] == ["3/3", "1", "pass"]    # flagged: the solution's code
    assert rows[f"bob/{NAME}.ipynb"].split()[2:5] == ["0/3", "0", "fail"]
    assert "invalid JSON" in rows[f"carol/{NAME}.ipynb"]
    assert "not a labkit exercise" in rows["dave/homework.ipynb"]
    assert table[-1] == ("4 submissions: 1 passed every check, 1 failed some, 2 could not be graded; "
                         "1 flagged (read their FLAG lines first)")
    assert "FLAG  cell student-rx: the shipped solution's code, unchanged" in r.stdout
    assert "FAIL  burst" in r.stdout and "pass  burst" in r.stdout

    root = ET.parse(junit).getroot()
    assert root.tag == "testsuites" and root.get("tests") == "8" and root.get("failures") == "3"
    assert root.get("errors") == "2"
    suites = {s.get("name"): s for s in root.iter("testsuite")}
    assert set(suites) == set(rows)
    alice = suites[f"alice/{NAME}.ipynb"]
    assert [c.get("name") for c in alice.iter("testcase")] == ["burst", "wrap", "stream"]
    assert all(c.find("failure") is None for c in alice.iter("testcase"))
    assert all(c.find("failure") is not None for c in suites[f"bob/{NAME}.ipynb"].iter("testcase"))
    (case,) = suites[f"carol/{NAME}.ipynb"].iter("testcase")
    assert "invalid JSON" in case.find("error").get("message")


# ---- what cannot be graded: exit 2, one line -------------------------------------------

def _ungradable(tmp_path):
    not_json = tmp_path / "a" / f"{NAME}.ipynb"
    not_json.parent.mkdir()
    not_json.write_text("print('hello')\n")
    not_nb = tmp_path / "b.ipynb"
    not_nb.write_text('{"hello": 1}')
    nb = _read(EXERCISE)
    nb.metadata["labkit"]["exercise"] = "99_teleport"
    foreign = _write(nb, tmp_path / "c.ipynb")
    del nb.metadata["labkit"]
    unnamed = _write(nb, tmp_path / "homework.ipynb")
    (tmp_path / "empty").mkdir()
    return {
        "invalid JSON": [not_json],
        "not a notebook": [not_nb],
        "not one of ours": [foreign],
        "not a labkit exercise": [unnamed],
        "no such file": [tmp_path / "missing.ipynb"],
        "no .ipynb notebooks": [tmp_path / "empty"],
        "solutions folder": [SOLUTION, "--solutions", tmp_path / "nowhere"],
        "unrecognized arguments": [SOLUTION, "--bogus"],
        "must be more than 0": [SOLUTION, "--timeout", "0"],
    }


def test_what_cannot_be_graded_exits_2_with_one_line(tmp_path):
    for words, args in _ungradable(tmp_path).items():
        r = _cli(*args)
        assert r.returncode == 2, (words, r.stdout, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("labkit grade: error: "), (words, r.stderr)
        assert words in lines[0], (words, lines[0])
        assert r.stdout == ""


def test_json_says_so_too(tmp_path):
    bad = tmp_path / f"{NAME}.ipynb"
    bad.write_text("nope")
    r = _cli(bad, "--json")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    out = json.loads(r.stdout)
    assert out["ok"] is False and out["exit_code"] == 2 and "invalid JSON" in out["error"]


def test_main_takes_parsed_args_from_the_labkit_cli(tmp_path):
    import argparse
    parser = argparse.ArgumentParser(prog="labkit")
    sub = parser.add_subparsers(dest="command")
    grade.add_parser(sub)
    bad = tmp_path / f"{NAME}.ipynb"
    bad.write_text("nope")
    args = parser.parse_args(["grade", str(bad), "--json"])
    assert args.command == "grade" and grade.main(args) == 2
