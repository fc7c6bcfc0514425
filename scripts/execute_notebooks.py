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

The machine must be quiet (tests/test_notebooks.py refuses a notebook stored
from a busy one): before each code cell the script waits up to --quiet-wait
seconds for the rest of the machine to fall under BUSY_PERCENT of a CPU
(labkit.run.noise; each dashboard also waits before each of its runs, through
LABKIT_QUIET_WAIT), and records in the notebook's metadata
(``metadata.labkit.load``) what the other processes used during each cell, in
% of one CPU averaged over the cell or over one second, whichever is longer
(the kernel's clock ticks are 10 ms: a tick in a 50 ms cell is not a busy
machine). A cell measured while the machine was busy is named at the end.

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
QUIET_WAIT_S = 60         # per cell, and per dashboard run, at most this long for a quiet machine
MIN_WINDOW_S = 1.0        # a cell's load is averaged over at least this long


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


class LoadLog:
    """nbclient hooks: wait for quiet before each code cell, record the others' load during it."""

    def __init__(self, quiet_wait):
        from labkit.run import noise
        self.noise, self.quiet_wait, self.cells, self._now = noise, quiet_wait, {}, None

    def start(self, cell, **_):
        if cell.cell_type == "code":
            if self.quiet_wait:
                self.noise.wait_quiet(self.quiet_wait)
            self._now = (cell.get("id"), self.noise.MachineLoad().__enter__())

    def done(self, cell, **_):
        if self._now is None:
            return
        (cid, load), self._now = self._now, None
        load.__exit__(None, None, None)
        scale = load.seconds / max(load.seconds, MIN_WINDOW_S)
        other = None if load.other_percent is None else round(load.other_percent * scale, 1)
        self.cells[cid] = {"seconds": round(load.seconds, 2), "other_cpu_percent": other,
                           "steal_percent": round(load.steal_percent * scale, 1),
                           "busiest": [[n, round(p * scale, 1)] for n, p in load.top]}

    def record(self):
        return {"busy_percent": self.noise.BUSY_PERCENT, "min_window_s": MIN_WINDOW_S,
                "quiet_wait_s": self.quiet_wait, "cells": self.cells}


def busy_cells(nb):
    """[(cell id, what the others used)] of the cells stored from a busy machine, by the notebook's
    load record (metadata.labkit.load)."""
    from labkit.run import noise
    rec = nb.metadata.get("labkit", {}).get("load", {})
    limit = rec.get("busy_percent", noise.BUSY_PERCENT)
    return [(cid, c["other_cpu_percent"] + c.get("steal_percent", 0.0)) for cid, c in rec.get("cells", {}).items()
            if noise.is_busy(c["other_cpu_percent"], c.get("steal_percent"), limit)]


def execute(path, timeout=TIMEOUT_S, quiet_wait=QUIET_WAIT_S):
    from nbclient import NotebookClient
    nb = nbformat.read(path, as_version=4)
    log = LoadLog(quiet_wait)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", store_widget_state=False,
                            record_timing=False, resources={"metadata": {"path": str(Path(path).parent)}},
                            on_cell_execute=log.start, on_cell_executed=log.done)
    client.execute()
    nb.metadata.setdefault("labkit", {})["load"] = log.record()
    return clean(nb)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("notebooks", nargs="*", type=Path, help="default: notebooks/*.ipynb")
    ap.add_argument("--quick", action="store_true", help="LABKIT_QUICK=1: short measurements (for a try)")
    ap.add_argument("--backend", choices=("memory",), help="LABKIT_BACKEND=memory: as without root")
    ap.add_argument("--timeout", type=int, default=TIMEOUT_S, help=f"seconds per cell (default {TIMEOUT_S})")
    ap.add_argument("--clean-only", action="store_true", help="do not execute; only strip widget state")
    ap.add_argument("--quiet-wait", type=float, default=QUIET_WAIT_S, metavar="S",
                    help=f"before each cell and each dashboard run, wait up to S seconds for a quiet machine "
                         f"(default {QUIET_WAIT_S}; 0: do not wait)")
    ap.add_argument("--out", type=Path, help="write into this folder instead of over the notebooks")
    args = ap.parse_args(argv)
    paths = args.notebooks or sorted(NOTEBOOKS.glob("[0-9]*.ipynb"))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in
                                               os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    os.environ.setdefault("LABKIT_NET_PREFIX", "labkit-nb")
    os.environ["LABKIT_QUIET_WAIT"] = f"{args.quiet_wait:g}"
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
            nb = clean(nbformat.read(path, as_version=4)) if args.clean_only else \
                execute(path, args.timeout, args.quiet_wait)
        except Exception as e:             # say which notebook and go on with the others
            print(f"{path}: FAILED: {type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}",
                  file=sys.stderr)
            failed += 1
            continue
        out = (args.out / path.name) if args.out else path
        nbformat.write(nb, out)
        print(f"{out}: {out.stat().st_size / 1024:.0f} KB, {time.monotonic() - t0:.0f} s", flush=True)
        failed += not findings_hold(nb)
        busy = busy_cells(nb)
        for cid, pct in busy:
            print(f"  cell {cid}: measured while other processes used {pct:.0f}% of a CPU: run it again "
                  f"on a quiet machine", file=sys.stderr)
        failed += bool(busy)
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
