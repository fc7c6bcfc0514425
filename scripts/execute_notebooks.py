#!/usr/bin/env python3
"""Run the course notebooks top to bottom and store them with their outputs.

    python scripts/execute_notebooks.py                   # every notebooks/*.ipynb, full measurements
    python scripts/execute_notebooks.py notebooks/01_polling.ipynb --quick
    python scripts/execute_notebooks.py --clean-only      # only strip widget state from the stored files

What is stored is what a reader sees without a kernel: text, tables and each
dashboard's static figure (plotly JSON, a few KB). Not stored: widget state
(nbclient runs with store_widget_state=False; metadata.widgets is removed) and
the live widgets' views (a view without its state shows an error in
JupyterLab; the dashboard's text line is kept instead), nor per-cell timing.

The kernel is this Python (the "python3" kernel of the environment running the
script) with the repository first on PYTHONPATH, so it measures the labkit of
this checkout. On veth the lab network gets the prefix $LABKIT_NET_PREFIX
(default labkit-nb), so a `labkit net up` of your own is not touched; each
dashboard removes the network it built.

After each notebook, its findings (labkit.course.findings) are re-checked on
what was stored: a claim this run did not bear out is printed, and the exit
code is 1, so that a sentence made false by a new measurement is seen before
the notebook lands (tests/test_notebooks.py fails on it too).
"""
import argparse
import os
import sys
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
TIMEOUT_S = 1800          # per cell; a full sweep on veth takes a minute or two


def clean(nb):
    """Strip what must not be stored; returns nb (changed in place)."""
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        if cell.cell_type != "code":
            continue
        kept = []
        for out in cell.get("outputs", []):
            data = out.get("data")
            if data and WIDGET_VIEW in data:
                data.pop(WIDGET_VIEW)
                if not data:
                    continue
            kept.append(out)
        cell.outputs = kept
    return nb


def execute(path, timeout=TIMEOUT_S):
    from nbclient import NotebookClient
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", store_widget_state=False,
                            record_timing=False, resources={"metadata": {"path": str(Path(path).parent)}})
    client.execute()
    return clean(nb)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("notebooks", nargs="*", type=Path, help="default: notebooks/*.ipynb")
    ap.add_argument("--quick", action="store_true", help="LABKIT_QUICK=1: short measurements (for a try)")
    ap.add_argument("--backend", choices=("memory",), help="LABKIT_BACKEND=memory: as without root")
    ap.add_argument("--timeout", type=int, default=TIMEOUT_S, help=f"seconds per cell (default {TIMEOUT_S})")
    ap.add_argument("--clean-only", action="store_true", help="do not execute; only strip widget state")
    ap.add_argument("--out", type=Path, help="write into this folder instead of over the notebooks")
    args = ap.parse_args(argv)
    paths = args.notebooks or sorted(NOTEBOOKS.glob("[0-9]*.ipynb"))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in
                                               os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    os.environ.setdefault("LABKIT_NET_PREFIX", "labkit-nb")
    if args.quick:
        os.environ["LABKIT_QUICK"] = "1"
    if args.backend:
        os.environ["LABKIT_BACKEND"] = args.backend
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for path in paths:
        t0 = time.monotonic()
        try:
            nb = clean(nbformat.read(path, as_version=4)) if args.clean_only else execute(path, args.timeout)
        except Exception as e:             # say which notebook and go on with the others
            print(f"{path}: FAILED: {type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}",
                  file=sys.stderr)
            failed += 1
            continue
        out = (args.out / path.name) if args.out else path
        nbformat.write(nb, out)
        print(f"{out}: {out.stat().st_size / 1024:.0f} KB, {time.monotonic() - t0:.0f} s", flush=True)
        failed += not findings_hold(nb)
    return 1 if failed else 0


def findings_hold(nb):
    """Say which claims of the notebook's findings this run did not bear out (the notebook
    is stored anyway: it is what was measured; its text needs a look before it lands)."""
    from labkit.course import findings
    problems = findings.recheck(nb)
    for cell_id, why in problems:
        print(f"  findings, cell {cell_id}: {why}", file=sys.stderr)
    return not problems


if __name__ == "__main__":
    sys.exit(main())
