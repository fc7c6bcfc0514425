"""What a notebook says about its own measurement: computed from it, and checked.

A notebook's "What you should see" is a function of what it measured, not
Markdown typed after one run (prose typed that way drifts: the next run, on
another machine, says something else while the sentence stays). The function
reads the measurement, returns the text (Markdown), and states each
qualitative claim it makes with ``expect``::

    from labkit.course.findings import findings, expect, knee

    def what_you_should_see(mem):              # mem: the dashboard's Sweep
        cyc = mem.medians("cycles")
        expect(cyc[1] > 5 * cyc[256], "batching cuts the cycles per packet fivefold or more")
        return f"From batch 1 to 256 the cycles per packet fall {cyc[1] / cyc[256]:.1f}-fold ..."

    findings(what_you_should_see, mem=dash_mem)

``findings`` calls the function with the measurement *as stored*: a
Dashboard becomes the ``Sweep`` its static figure records (``dash.report()``
must have shown it), other data goes through JSON. It shows the text, the
claims it checked (and, in bold, any this run did not bear out), and keeps a
record as an output of the cell (``MIME``): the function's name, its inputs
(a sweep by its key, data as is) and each claim with its verdict.

Because the function sees only stored data, it can be run again without a
kernel: ``recheck(nb)`` rebuilds the inputs from the stored notebook, runs
the cell's imports and definitions (``HELPERS`` are there already) and then the function, and reports any
claim that does not hold or any text that differs from the stored one.
``tests/test_notebooks.py`` does that for every notebook, so a re-run that
changes a result fails the tests instead of leaving a false sentence.
``python -m labkit.course.findings --refresh NOTEBOOK`` re-renders the
findings from the stored measurements after their prose was edited.
"""
import ast
import contextvars
import json
import sys

MIME = "application/vnd.labkit.findings+json"
PLOTLY = "application/vnd.plotly.v1+json"

_claims = contextvars.ContextVar("labkit_findings_claims", default=None)


def expect(holds, says):
    """State a claim the text makes about the measurement; returns whether it holds."""
    claims = _claims.get()
    if claims is None:
        raise RuntimeError("expect() states a claim of a findings function: call it inside one "
                           "that findings(fn, ...) runs")
    claims.append({"says": str(says), "holds": bool(holds)})
    return bool(holds)


def knee(curve, frac=0.9):
    """The first x (in the curve's order) whose y reaches `frac` of the best y."""
    best = max(curve.values())
    return next(x for x, y in curve.items() if y >= frac * best)


def overlap(a, b):
    """Do two sets of runs' values overlap (min..max ranges)?"""
    return min(a) <= max(b) and min(b) <= max(a)


HELPERS = (expect, knee, overlap)      # a findings cell may use these without importing them again


def evaluate(fn, kwargs):
    """(text, claims) of a findings function on these inputs."""
    claims = []
    token = _claims.set(claims)
    try:
        text = fn(**kwargs)
    finally:
        _claims.reset(token)
    if not isinstance(text, str):
        raise TypeError(f"{fn.__name__} returned {type(text).__name__}: a findings function returns its text")
    return text.strip(), claims


def render(text, claims):
    """The Markdown a findings cell shows."""
    out = [text]
    missed = [c["says"] for c in claims if not c["holds"]]
    if missed:
        out.append("> **Not seen in this run:** " + "; ".join(missed) + ". The text above was written "
                   "from a run where this held; machines and their load differ: measure again (more "
                   "repeats, a quiet machine) before you trust either run.")
    held = [c["says"] for c in claims if c["holds"]]
    if held:
        out.append("<sub>Checked against this run: " + "; ".join("✓ " + s for s in held) + ".</sub>")
    return "\n\n".join(out)


def _as_input(name, value):
    """(record, what the function gets) for one input."""
    from labkit.course.dashboard import Sweep
    if hasattr(value, "sweep") and hasattr(value, "results"):       # a Dashboard
        if not value.results:
            raise ValueError(f"{name}: nothing measured yet; run the sweep (and its report) first")
        value = value.sweep()
    if isinstance(value, Sweep):
        return {"sweep": value.key}, value
    data = json.loads(json.dumps(value, default=_plain))
    return {"data": data}, data


def _plain(v):
    import numpy as np
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    raise TypeError(f"findings inputs are numbers, strings, lists and dicts, not {type(v).__name__}")


def findings(fn, **inputs):
    """Show what `fn` says about these measurements (Dashboards or plain data), and keep
    a record (MIME) with which tests re-check it on the stored notebook."""
    from IPython.display import display
    record, kwargs = {}, {}
    for name, value in inputs.items():
        record[name], kwargs[name] = _as_input(name, value)
    text, claims = evaluate(fn, kwargs)
    shown = render(text, claims)
    display({"text/markdown": shown, "text/plain": shown,
             MIME: {"function": fn.__name__, "inputs": record, "claims": claims, "text": text}}, raw=True)


# -- re-checking a stored notebook -------------------------------------------------------

def stored_sweeps(nb):
    """{key: Sweep} of every static figure stored in a notebook (a dict, as json.load gives)."""
    from labkit.course.dashboard import Sweep
    out = {}
    for cell in nb["cells"]:
        for o in cell.get("outputs", []) if cell["cell_type"] == "code" else []:
            meta = (o.get("data", {}).get(PLOTLY, {}).get("layout", {}).get("meta") or {}).get("labkit")
            if meta:
                s = Sweep(meta)
                out[s.key] = s
    return out


def records(cell):
    """The findings records stored in a cell's outputs."""
    return [o["data"][MIME] for o in cell.get("outputs", []) if MIME in o.get("data", {})]


def definitions(source):
    """A cell's imports, definitions and constant assignments (what a findings function
    may use), as source: the rest of the cell (measuring, displaying) is left out."""
    tree = ast.parse(source)
    keep = []
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef)):
            keep.append(node)
        elif isinstance(node, ast.Assign):
            try:
                ast.literal_eval(node.value)
                keep.append(node)
            except ValueError:
                pass
    return ast.unparse(ast.Module(body=keep, type_ignores=[]))


def rerun(cell, record, sweeps):
    """(text, claims) of a stored findings record, computed again from the stored data."""
    ns = {"__name__": "labkit_findings_recheck", **{f.__name__: f for f in HELPERS}}
    exec(compile(definitions("".join(cell["source"])), f"<cell {cell.get('id')}>", "exec"), ns)
    fn = ns.get(record["function"])
    if fn is None:
        raise LookupError(f"cell {cell.get('id')}: no function {record['function']!r} defined in the cell")
    kwargs = {}
    for name, how in record["inputs"].items():
        if "sweep" in how:
            if how["sweep"] not in sweeps:
                raise LookupError(f"cell {cell.get('id')}: input {name!r} is a measurement whose figure is "
                                  "not stored in the notebook (re-run its report)")
            kwargs[name] = sweeps[how["sweep"]]
        else:
            kwargs[name] = how["data"]
    return evaluate(fn, kwargs)


def recheck(nb):
    """[(cell id, problem)] of a stored notebook's findings: a claim that does not hold,
    text that is not what the stored data gives, a record that cannot be re-run."""
    sweeps, problems = stored_sweeps(nb), []
    for cell in nb["cells"]:
        if cell["cell_type"] == "code" and not records(cell) and _calls("".join(cell["source"])):
            problems.append((cell.get("id"), "shows findings but stores none: run the notebook"))
        for record in records(cell) if cell["cell_type"] == "code" else []:
            try:
                text, claims = rerun(cell, record, sweeps)
            except Exception as e:                     # report it as this cell's problem
                problems.append((cell.get("id"), f"{type(e).__name__}: {e}"))
                continue
            problems += [(cell.get("id"), f"does not hold: {c['says']}") for c in claims if not c["holds"]]
            if text != record["text"]:
                problems.append((cell.get("id"), "the stored text is not what the stored data gives"))
            if claims != record["claims"]:
                problems.append((cell.get("id"), "the stored claims are not what the stored data gives"))
    return problems


def findings_cells(nb):
    """The code cells of a notebook that show findings."""
    return [c for c in nb["cells"] if c["cell_type"] == "code" and records(c)]


def _calls(source):
    """[(function name, {input: variable})] of the findings(...) calls in a cell's source."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "findings"
                and node.args and isinstance(node.args[0], ast.Name)):
            out.append((node.args[0].id, {k.arg: k.value.id for k in node.keywords
                                          if isinstance(k.value, ast.Name)}))
    return out


def _figure_of(nb, var):
    """The sweep key of the figure `var.report()` stored, or None."""
    for cell in nb["cells"]:
        if cell["cell_type"] == "code" and f"{var}.report()" in "".join(cell["source"]):
            keys = list(stored_sweeps({"cells": [cell]}))
            if len(keys) == 1:
                return keys[0]
    return None


def _new_records(nb, cell):
    """Records for a findings cell that has none stored yet: each input must be a dashboard
    whose report() stored its figure (plain data needs a run of the notebook)."""
    out = []
    for fn, inputs in _calls("".join(cell["source"])):
        rec = {"function": fn, "inputs": {}, "claims": [], "text": ""}
        for name, var in inputs.items():
            key = _figure_of(nb, var)
            if key is None:
                raise LookupError(f"cell {cell.get('id')}: {var} has no stored figure (a {var}.report() "
                                  "cell with one); run the notebook instead")
            rec["inputs"][name] = {"sweep": key}
        out.append(rec)
    return out


def _node(d):
    """A dict as nbformat's NotebookNode where nbformat is at hand (it writes only those)."""
    try:
        from nbformat import from_dict
    except ImportError:
        return d
    return from_dict(d)


def refresh(nb):
    """Re-render every findings output of a stored notebook from its stored data (after
    the prose of a findings function was edited, or one was added; nothing is measured).
    Returns nb."""
    sweeps = stored_sweeps(nb)
    for cell in nb["cells"]:
        if cell["cell_type"] != "code" or "findings(" not in "".join(cell["source"]):
            continue
        found = records(cell)
        # a cell with no record yet was just written: its old outputs are not its own
        kept = [o for o in cell.get("outputs", []) if MIME not in o.get("data", {})] if found else []
        for record in found or _new_records(nb, cell):
            text, claims = rerun(cell, record, sweeps)
            shown = render(text, claims)
            record.update(text=text, claims=claims)
            kept.append(_node({"output_type": "display_data", "metadata": {},
                               "data": {"text/markdown": shown, "text/plain": shown, MIME: record}}))
        cell["outputs"] = kept
        if cell.get("execution_count") is None:        # a new cell: shown as run after the others
            cell["execution_count"] = 1 + max((c.get("execution_count") or 0) for c in nb["cells"]
                                              if c["cell_type"] == "code")
    return nb


def main(argv=None):
    import argparse
    ap = argparse.ArgumentParser(prog="python -m labkit.course.findings",
                                 description="Re-check (or re-render) a stored notebook's findings from its "
                                             "stored measurements; nothing is measured.")
    ap.add_argument("notebooks", nargs="+")
    ap.add_argument("--refresh", action="store_true", help="re-render the findings outputs in place")
    args = ap.parse_args(argv)
    bad = 0
    import nbformat
    for path in args.notebooks:
        nb = nbformat.read(path, as_version=4)
        if args.refresh:
            nbformat.write(refresh(nb), path)
        problems = recheck(nb)
        n = len(findings_cells(nb))
        print(f"{path}: {n} findings cell(s), " + (f"{len(problems)} problem(s)" if problems else "all claims hold"))
        for cid, why in problems:
            print(f"  cell {cid}: {why}")
        bad += bool(problems)
    return 1 if bad else 0


if __name__ == "__main__":           # run as labkit.course.findings, not a second copy (one expect())
    from labkit.course.findings import main as _main
    sys.exit(_main())
