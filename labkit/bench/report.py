"""What every benchmark shares: a progress line, medians, tables, JSON."""
import json
import statistics
import sys
import time

import numpy as np


class Progress:
    """One line on stderr, rewritten in place on a terminal."""

    def __init__(self, quiet=False):
        self.tty = sys.stderr.isatty()
        self.quiet = quiet
        self.t0 = time.monotonic()
        self.last = ""

    def __call__(self, text):
        if self.quiet:
            return
        line = f"[bench {time.monotonic() - self.t0:5.1f}s] {text}"
        if self.tty:
            sys.stderr.write("\r" + line.ljust(max(len(self.last), len(line))))
        elif text.split(":")[0] != self.last.split("] ")[-1].split(":")[0]:
            sys.stderr.write(line + "\n")      # not a terminal: one line per step
        sys.stderr.flush()
        self.last = line

    def done(self):
        if self.tty and not self.quiet:
            sys.stderr.write("\r" + " " * len(self.last) + "\r")
            sys.stderr.flush()


def med(xs):
    return float(statistics.median(xs)) if xs else float("nan")


def jsonable(o):
    """Results as plain JSON: string keys, numpy scalars as numbers, NaN as null."""
    if isinstance(o, dict):
        return {str(k): jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [jsonable(v) for v in o]
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, float) and o != o:
        return None
    return o


def print_table(title, cols, rows, out=sys.stdout):
    """A titled table with right-aligned columns (rich when installed, else plain text)."""
    try:
        from rich import box
        from rich.console import Console
        from rich.table import Table
    except ImportError:           # plain text
        print(f"\n{title}", file=out)
        w = [max(len(str(c)), *(len(str(r[i])) for r in rows)) if rows else len(str(c))
             for i, c in enumerate(cols)]
        print("  ".join(str(c).rjust(w[i]) for i, c in enumerate(cols)), file=out)
        for r in rows:
            print("  ".join(str(x).rjust(w[i]) for i, x in enumerate(r)), file=out)
        return
    con = Console(file=out, highlight=False, width=120)
    con.print("\n" + title, soft_wrap=True)   # (a table's own title wraps to the table's width)
    t = Table(box=box.SIMPLE_HEAD)
    for c in cols:
        t.add_column(c, justify="right")
    for r in rows:
        t.add_row(*[str(x) for x in r])
    con.print(t)



def emit(res, as_json, print_tables):
    """A benchmark's result on stdout: JSON (--json) or its tables; exit code 0."""
    if as_json:
        json.dump(jsonable(res), sys.stdout, indent=2)
        print()
    else:
        print_tables(res)
    return 0
