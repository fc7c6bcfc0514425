"""One knob, live: the dashboard every notebook uses.

    from labkit.course.dashboard import Dashboard, backend_banner
    backend_banner()                       # which NIC this notebook measures on, and why
    dash = Dashboard("poll", ["wait", "busy"], over=("rate", [1_000, 100_000, None]),
                     graph="l2fwd", panels=("cpu", "mpps", "cycles"))
    dash                                   # the controls and a live plot
    dash.run()                             # measure every value now (blocks; the plot above updates)
    dash.report()                          # the static figure and the table of what was measured

The controls: the knob (toggle buttons for a choice, a slider for a number),
**Start** (measure the value the knob shows), **Sweep** (every value),
**Stop** (ends the run in progress; the books still balance), **Clear**, a
status line and a live plotly ``FigureWidget``: one panel per metric (Mpps,
TSC cycles per packet, the DUT thread's CPU share...), one bar or point per
knob value, the median of the repeated runs and each run as a dot.

Why a thread: a kernel busy in a loop does not see widget clicks, so the
measurement runs on a background thread (the numba loops release the GIL)
and the buttons stay live. ``run()`` starts the same thread and joins it
before the cell ends, so "Run all" works top to bottom.

Why a static figure: a notebook saved without widget state (as labkit stores
them; widget state is megabytes of JavaScript) shows no live plot when opened
without a kernel. ``report()`` displays a plain plotly figure (the
``application/vnd.plotly.v1+json`` mimetype, a few KB) whose
``layout.meta["labkit"]`` holds every number it was drawn from, with the
backend, the machine and the date, and prints the same numbers as a table:
a reader sees what was measured, and a test can check that the figure is
exactly that (``check_figure``).

Several cores: ``Dashboard("workers", [1, 2])`` (and the multi-core knobs,
``WORKER_KNOBS``: ``sync``, ``counters``..., and the Lab parameters
``dispatcher`` and ``rss_key``) run on the in-memory NIC's multi-queue
device, one worker per RX/TX queue pair (``labkit.run.workers``); with
``backend="veth"``, ``workers`` alone runs N workers on N AF_PACKET sockets
of one PACKET_FANOUT group (``labkit.run.netrun``). Each row then also
records the busiest queue's share of the packets (``queue_share``: RSS
balance), the threads' summed CPU share (``cpu``: 200% is two busy cores),
the dispatcher thread's cycles per frame when there is one, and each
worker's Mpps.

Noise: the runs go round-robin (every point once, then every point again),
so a slow moment of a shared machine hits all points alike; the table gives
each point's median and range and, against the first value (the technique
off), the ratio of the medians with a verdict (``labkit.run.noise.verdict``:
faster, slower or within noise). Every run records what the rest of the
machine used meanwhile; the figure's subtitle and the table's notes say it,
and flag the runs measured while the machine was busy. ``quiet_wait=S`` (or
``LABKIT_QUIET_WAIT=S``) waits up to S seconds for quiet before each run.

``LABKIT_QUICK=1`` makes every measurement short (``QUICK_SECONDS``, at most
``QUICK_REPEATS`` runs per value) for tests and CI; ``LABKIT_BACKEND=memory``
makes ``backend="auto"`` use the in-memory NIC even where veth is possible
(how the notebooks are tested as a student without root sees them).
"""
import datetime
import hashlib
import html
import json
import math
import os
import platform
import statistics
import threading
import time
import traceback
from collections import Counter
from dataclasses import fields

from labkit import __version__
from labkit.run import noise
from labkit.run.knobs import TECHNIQUES, WORKER_KNOBS, WORKER_TECHNIQUES, Knobs
from labkit.settings import quick

QUICK_SECONDS = 0.15      # seconds per run with LABKIT_QUICK=1
QUICK_REPEATS = 2         # at most this many runs per value with LABKIT_QUICK=1
STATUS_EVERY_S = 0.2      # the status line and progress bar are redrawn at most this often
BATCH_SWEEP = (1, 2, 4, 8, 16, 32, 64, 128, 256)

KNOB_NAMES = tuple(f.name for f in fields(Knobs))
# Parameters of Lab(...) a dashboard can turn besides the knobs.
LAB_PARAMS = ("backend", "graph", "size", "flows", "rate", "gen_batch", "mix", "seed", "workers", "dispatcher",
              "rss_key", "pool_size", "malformed", "order")
# What needs the multi-queue in-memory NIC: "auto" picks the in-memory NIC for these.
MULTICORE_PARAMS = ("workers", "dispatcher", "rss_key", "multiqueue") + WORKER_KNOBS

# metric -> its axis title; _ROW_KEY says which column of a row holds it ("batch_us" is derived, see _metric).
METRICS = {
    "mpps": "Mpps",
    "cycles": "TSC cycles/packet",
    "cpu": "DUT CPU %",
    "gen_mpps": "generator Mpps (offered)",
    "vector": "packets per vector (mean)",
    "batch_us": "µs per vector",
    "nic_cycles": "NIC TSC cycles/packet",
    "queue_share": "busiest queue's share of packets %",
    "disp_cycles": "dispatcher TSC cycles/frame",
    "p50_us": "latency p50 µs",
    "p99_us": "latency p99 µs",
    "kernel_cpu": "kernel receive CPU %",
}
LATENCY_PANELS = ("p50_us", "p99_us")     # a dashboard with one of these measures latency (Lab(latency=True))
# "vector" is how many packets the first node got per dispatch: the batch knob is
# a maximum, a vector is what the ring held. "batch_us" is vector x cycles/packet:
# the time one vector takes, which a packet may wait behind the others (latency-ish).
# "nic_cycles" is the in-memory NIC's own work per frame ("DMA" and TX collection),
# which real hardware does without the CPU: 0 on a real NIC.
# "kernel_cpu" (veth) is what the kernel spent receiving, in % of one CPU: softirq time on all CPUs
# (the machine's other softirqs, timers included, are in it too) plus the DUT veth's NAPI thread.
# With several workers: "cpu" is the sum over the threads (workers and dispatcher), so two busy
# cores show 200%; "queue_share" is 100/N when RSS spreads the packets evenly over N queues, 100
# when one queue gets them all; "disp_cycles" is what the dispatcher thread spends per frame it
# takes off the wire (software hash, hand-over, locks), its idle polls left out.
_ROW_KEY = {"mpps": "mpps", "cycles": "cycles_per_packet", "cpu": "cpu_percent", "gen_mpps": "gen_mpps",
            "nic_cycles": "nic_cycles_per_packet", "vector": "vector", "queue_share": "queue_share",
            "disp_cycles": "dispatcher_cycles_per_packet", "p50_us": "latency_p50_us",
            "p99_us": "latency_p99_us", "kernel_cpu": "kernel_cpu_percent"}

# What a value means, said in the plot (a knob's own name is the fallback).
LABELS = {
    "copy": {True: "copy", False: "zero-copy"},
    "jit": {False: "pure Python", True: "numba JIT"},
    "mempool": {False: "heap", True: "mempool"},
    "hugepages": {False: "4 KiB pages", True: "huge pages"},
    "prefetch": {False: "no prefetch", True: "prefetch"},
    "qdisc_bypass": {False: "via qdisc", True: "qdisc bypass"},
    "poll": {"wait": "wait in poll()", "busy": "busy-poll", "adaptive": "adaptive"},
    "napi": {"off": "backlog (no NAPI)", "gro": "NAPI (GRO on)", "threaded": "threaded NAPI"},
    "rx_ring": {"block": "block ring (V3)", "frame": "per-frame ring (V2)"},
    "backend": {"memory": "in-memory NIC", "veth": "veth", "tap": "TAP", "xdp": "XDP (in the kernel)"},
    "model": {"rtc": "run to completion", "pipeline": "pipeline", "lthreads": "lightweight threads",
              "threads": "OS threads"},
    "sync": {"spsc": "lock-free rings", "lock": "spinlocked queue"},
    "counters": {"padded": "padded (own line)", "packed": "packed (one line)"},
    "dispatcher": {False: "RSS in the NIC", True: "software dispatcher"},
    "rss_key": {"default": "Microsoft key", "symmetric": "symmetric key"},
    "layout": {"aos": "AoS (records)", "soa": "SoA (arrays)"},
    "unroll": {1: "single loop", 2: "dual loop", 4: "quad loop"},
    "interleave": {False: "body repeated", True: "stages interleaved"},
    "variant": {"scalar": "early exits", "branchless": "branchless"},
    "order": {"spread": "spread", "sorted": "sorted (predictable)", "shuffled": "shuffled (unpredictable)"},
}
TITLES = {"batch": "batch size (packets per burst)", "gen_batch": "generator frames per TX kick",
          "jit": "kernels: interpreted or JIT-compiled",
          "rate": "offered load (pps)", "size": "frame size (bytes)", "poll": "polling", "rx_ring": "RX ring",
          "coalesce_ms": "block timeout (ms)", "block_kb": "block size (KiB)",
          "napi": "the kernel's receive path", "busy_poll_us": "socket busy polling (µs)",
          "copy": "copy or zero-copy", "backend": "NIC", "graph": "graph", "flows": "flows",
          "workers": "workers (a core and a queue pair each)", "sync": "hand-over between cores",
          "counters": "per-worker counters", "dispatcher": "who hashes the frames", "rss_key": "RSS key",
          "model": "threading model", "layout": "packet vector layout", "pool_size": "pool size (buffers)",
          "unroll": "packets per loop iteration", "interleave": "multi-loop: interleaved or repeated", "variant": "node implementation",
          "prefetch_distance": "prefetch distance (packets ahead)",
          "order": "order of the frames", "malformed": "share of malformed frames"}

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")

BACKEND_WHY = {
    "veth": ("a real (virtual) NIC: the traffic generator and the device under test run in two "
             "network namespaces ({gen} and {dut}) joined by veth pairs, both on AF_PACKET rings. "
             "Here the kernel is the bottleneck (about half a million packets per second per core): "
             "I/O techniques show, compute techniques hide behind it."),
    "memory": ("the in-memory NIC: a synthetic device that hands frames to the data plane as fast as "
               "it takes them, no kernel involved. The data plane is the bottleneck (tens of Mpps): "
               "compute and memory techniques show; kernel I/O costs (system calls, wake-ups, copies "
               "out of the kernel) do not exist here."),
    "tap": "a TAP device: the DUT read()s and write()s frames on its file descriptor.",
    "xdp": ("veth, with the device under test in the kernel: labkit's graph as an XDP program in the veth "
            "driver of {dut}, fed by labkit's generator in {gen}."),
}


class Stopped(KeyboardInterrupt):
    """Raised from a run's progress callback when Stop was pressed: the Lab
    treats it as Ctrl-C (stops offering, drains, every buffer back), then it
    ends the run, which is not recorded."""


# -- the backend ------------------------------------------------------------------

def pick_backend(backend="auto"):
    """(backend, reason): veth when this process can build the lab network,
    else the in-memory NIC, and a line that says why. ``LABKIT_BACKEND``
    (memory, veth) overrides "auto"."""
    if backend == "auto":
        forced = os.environ.get("LABKIT_BACKEND")
        if forced == "memory":
            return "memory", "LABKIT_BACKEND=memory asks for the in-memory NIC"
        backend = forced or "auto"
    if backend == "memory":
        return "memory", "asked for the in-memory NIC"
    from labkit.nic import labnet
    why = labnet.why_not(tap=(backend == "tap"))
    if why is None and backend == "xdp":
        from labkit.nic import xdp
        why = xdp.why_not()
    if why is None:
        real = "veth" if backend == "auto" else backend
        return real, "this process may build the lab network (root, or CAP_NET_ADMIN and CAP_SYS_ADMIN)"
    if backend == "auto":
        return "memory", f"veth is not available here: {why}"
    raise ValueError(f"backend {backend!r} is not available here: {why}; use backend='auto' or 'memory'")


class Banner:
    """Which backend a notebook measures on and why; Markdown in Jupyter, text elsewhere."""

    def __init__(self, backend, why, info):
        self.backend, self.why, self.info = backend, why, info

    def _lines(self):
        from labkit.nic import labnet
        name = {"veth": "veth", "memory": "in-memory NIC", "tap": "TAP", "xdp": "XDP on veth"}[self.backend]
        what = BACKEND_WHY[self.backend].format(gen=labnet.gen_ns(), dut=labnet.dut_ns())
        i = self.info
        mode = (f"quick mode (LABKIT_QUICK=1): {QUICK_SECONDS:g} s per run, at most {QUICK_REPEATS} runs"
                if quick() else "full measurements (LABKIT_QUICK=1 makes them short)")
        return [f"Backend: {name} ({self.why}).", what,
                f"Machine: {i['cpu']}" + (f" ({i['cpu_id']})" if i.get("cpu_id") else "")
                + f", {i['cpus']} CPUs, Linux {i['kernel']}, "
                f"huge pages free: {i['hugepages_free']}; labkit {i['labkit']}, numba {i['numba']}; {mode}."]

    def _repr_markdown_(self):
        first, what, machine = self._lines()
        return f"**{first}** {what}\n\n<small>{machine}</small>"

    def __repr__(self):
        return "\n".join(self._lines())


def backend_banner(backend="auto"):
    """The banner each notebook shows first: the backend it measures on and why."""
    real, why = pick_backend(backend)
    return Banner(real, why, machine())


def machine():
    """What the numbers were measured on (stored with every static figure)."""
    cpu, cpu_id = platform.processor() or platform.machine(), ""
    try:
        with open("/proc/cpuinfo") as f:
            info = {}
            for ln in f:
                if not ln.strip():
                    break                                  # the first CPU is enough
                key, _, value = ln.partition(":")
                info[key.strip()] = value.strip()
        cpu = info.get("model name", cpu)
        # "AMD EPYC" names several generations: family and model say which core it is
        cpu_id = ", ".join(f"{name} {info[key]}" for name, key in (
            ("family", "cpu family"), ("model", "model"), ("stepping", "stepping")) if key in info)
    except OSError:
        pass
    huge = "n/a"
    try:
        with open("/proc/meminfo") as f:
            huge = next((ln.split()[1] for ln in f if ln.startswith("HugePages_Free")), huge)
    except OSError:
        pass
    try:
        import numba
        nb = numba.__version__
    except ImportError:
        nb = "n/a"
    return {"cpu": cpu, "cpu_id": cpu_id, "cpus": os.cpu_count(), "kernel": platform.release(),
            "python": platform.python_version(), "numba": nb, "labkit": __version__, "hugepages_free": huge}


# -- labels and numbers ---------------------------------------------------------

def _si(n):
    for div, suffix in ((1_000_000, "M"), (1_000, "k")):
        if n >= div and n % (div // 10) == 0:
            return f"{n / div:g}{suffix}"
    return f"{n:g}"


def label(param, value):
    """How a value of a knob or Lab parameter is shown."""
    for key, text in LABELS.get(param, {}).items():
        if type(key) is type(value) and key == value:       # True is not 1 here
            return text
    if param == "rate":
        return "max" if value is None else _si(value)
    if isinstance(value, bool):
        return f"{param}={value}"
    return str(value)


def _numeric(values):
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _r(v):
    """A measured number rounded to 6 significant digits (keeps the notebook small)."""
    if v is None or not math.isfinite(v):
        return None
    return float(f"{v:.6g}")


def _metric(row, metric):
    """One run's number: a METRICS name, or "node:NAME", that node's TSC cycles per packet."""
    if metric.startswith("node:"):
        return (row.get("node_cycles") or {}).get(metric[5:])
    if metric == "batch_us":
        c, v = row.get("cycles_per_packet"), row.get("vector")
        return _r(v * c / row["tsc_hz"] * 1e6) if c is not None and v and row.get("tsc_hz") else None
    return row.get(_ROW_KEY[metric])


def _median(xs):
    xs = [x for x in xs if x is not None]
    return _r(statistics.median(xs)) if xs else None


def _fmt(metric, v):
    if v is None:
        return "-"
    if metric in ("mpps", "gen_mpps"):
        return f"{v:.3f}" if v < 100 else f"{v:.1f}"
    if metric in ("cpu", "kernel_cpu"):
        return f"{v:.0f}"
    if metric == "queue_share":
        return f"{v:.1f}"
    if metric in ("batch_us", "vector", "p50_us", "p99_us"):
        return f"{v:.2f}" if v < 100 else f"{v:.0f}"
    return f"{v:.1f}" if v < 1000 else f"{v:.0f}"


# -- the static figure: a pure function of the spec and the rows ----------------------

def series_of(spec, rows):
    """[(series label, color, [(x, x label, [rows])...])...]: what every figure and table shows."""
    out = []
    if spec["over"]:
        for i, (v, vl) in enumerate(zip(spec["values"], spec["labels"])):
            pts = [(x, xl, [r for r in rows if r["value"] == v and r["x"] == x])
                   for x, xl in zip(spec["over_values"], spec["over_labels"])]
            out.append((vl, COLORS[i % len(COLORS)], pts))
    else:
        pts = [(v, vl, [r for r in rows if r["value"] == v]) for v, vl in zip(spec["values"], spec["labels"])]
        out.append((spec["title"], COLORS[0], pts))
    return out


def _x_axis(spec):
    """(numeric?, log?) for the x axis."""
    xs = spec["over_values"] if spec["over"] else spec["values"]
    if not _numeric(xs):
        return False, False
    return True, min(xs) > 0 and max(xs) / min(xs) >= 16


def build_figure(spec, rows, live=False):
    """The figure for these rows: per panel and per series, the medians (bars for a
    choice, lines for a number) and each run as a dot. The same number of traces
    whatever the rows, so the live figure is updated in place."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    panels = spec["panels"]
    fig = go.FigureWidget if live else go.Figure
    f = make_subplots(rows=1, cols=len(panels), subplot_titles=[METRICS[p] for p in panels],
                      horizontal_spacing=0.08 if len(panels) > 2 else 0.12, figure=fig())
    numeric, log_x = _x_axis(spec)
    bars = not spec["over"] and not numeric
    for si, (name, color, pts) in enumerate(series_of(spec, rows)):
        for pi, metric in enumerate(panels):
            xm, ym, xr, yr = [], [], [], []
            for x, xl, rs in pts:
                xv = x if numeric else xl
                vals = [_metric(r, metric) for r in rs]
                med = _median(vals)
                if bars or med is not None:
                    xm.append(xv)
                    ym.append(med)
                for v in vals:
                    if v is not None:
                        xr.append(xv)
                        yr.append(v)
            first = pi == 0
            if bars:
                f.add_trace(go.Bar(x=xm, y=ym, name="median", marker_color=color, opacity=0.55,
                                   legendgroup="median", showlegend=first), row=1, col=pi + 1)
            else:
                f.add_trace(go.Scatter(x=xm, y=ym, mode="lines+markers", name=name if spec["over"] else "median",
                                       line=dict(color=color, width=2), marker=dict(size=7),
                                       legendgroup=name, showlegend=first), row=1, col=pi + 1)
            f.add_trace(go.Scatter(x=xr, y=yr, mode="markers", name="each run",
                                   marker=dict(color="#333" if bars else color, size=6, symbol="circle-open"),
                                   legendgroup="runs", showlegend=first and si == 0), row=1, col=pi + 1)
    xs = spec["over_values"] if spec["over"] else spec["values"]
    xl = spec["over_labels"] if spec["over"] else spec["labels"]
    for pi, metric in enumerate(panels):
        ax = dict(title_text=spec["x_title"], showgrid=True, gridcolor="#eee", linecolor="#888", ticks="outside")
        if numeric:
            ax.update(type="log" if log_x else "linear", tickvals=list(xs), ticktext=list(xl))
        else:
            ax.update(type="category", categoryorder="array", categoryarray=list(xl))
        f.update_xaxes(row=1, col=pi + 1, **ax)
        f.update_yaxes(row=1, col=pi + 1, showgrid=True, gridcolor="#eee", linecolor="#888", rangemode="tozero",
                       type="log" if metric in spec["log"] else "linear", zeroline=False)
    f.update_layout(template="none", height=400, margin=dict(l=60, r=20, t=95, b=60),
                    font=dict(family="sans-serif", size=12), plot_bgcolor="white", barmode="overlay",
                    legend=dict(orientation="h", y=-0.25, x=0),
                    title=dict(text=_title(spec, rows, live), x=0.01, y=0.95, yanchor="top"))
    return f


def _title(spec, rows, live):
    head = f"<b>{spec['title']}</b>: {spec['graph']} on {spec['backend_label']}"
    counts = Counter((r["value"], r["x"]) for r in rows).values()
    lo, hi = (min(counts), max(counts)) if counts else (spec["repeats"], spec["repeats"])
    runs = f"{hi}" if lo == hi else f"{lo} to {hi}"
    sub = f"median of {runs} run(s) of {spec['seconds']:g} s per point (dots: each run)" + ("; live" if live else "")
    load = load_of(rows)
    if load["max"] is not None:
        sub += (f"; other processes: at most {load['max']:.0f}% of a CPU"
                + (f", BUSY in {load['busy']} run(s): not reliable" if load["busy"] else ""))
    return f"{head}<br><sup>{sub}</sup>"


def load_of(rows):
    """What the rest of the machine did during these runs: {"median", "max"} of the other
    processes' CPU share (and the hypervisor's steal), % of one CPU; "busy": how many runs had
    BUSY_PERCENT or more; "top": the names that used the most in the busiest run; "oversubscribed":
    runs with more busy threads than CPUs. None where the rows did not record it."""
    shares = [r["other_cpu_percent"] + (r.get("steal_percent") or 0.0) for r in rows
              if r.get("other_cpu_percent") is not None]
    out = {"median": _median(shares), "max": max(shares) if shares else None,
           "busy": sum(1 for x in shares if x >= noise.BUSY_PERCENT),
           "oversubscribed": sum(1 for r in rows if (r.get("cores_needed") or 1) > (r.get("cpus") or 1 << 30)),
           "top": []}
    if shares:
        worst = max((r for r in rows if r.get("other_cpu_percent") is not None),
                    key=lambda r: r["other_cpu_percent"] + (r.get("steal_percent") or 0.0))
        out["top"] = [tuple(b) for b in worst.get("busiest") or []]
        out["worst"] = (worst["other_cpu_percent"], worst.get("steal_percent") or 0.0)   # (others, steal)
    return out


def _load_lines(rows):
    """The footnotes of a table about the machine's load during its runs."""
    load = load_of(rows)
    if load["max"] is None:
        return ["the machine's load was not recorded for these runs"]
    lines = [f"other processes during the runs: median {load['median']:.0f}%, at most {load['max']:.0f}% of a CPU "
             f"(busy from {noise.BUSY_PERCENT:g}%)"]
    if load["busy"]:
        other, steal = load["worst"]
        lines.append(noise.busy_warning(other, load["top"], f"{load['busy']} of the {len(rows)} runs",
                                        quiet_wait=False, steal=steal))
    if load["oversubscribed"]:
        r = next(r for r in rows if (r.get("cores_needed") or 1) > (r.get("cpus") or 1 << 30))
        lines.append(f"{load['oversubscribed']} run(s): " + noise.oversubscribed_note(r["cores_needed"], r["cpus"]))
    return lines


def table_text(meta):
    """The numbers behind a static figure, as the report prints them."""
    spec, rows = meta["spec"], meta["rows"]
    m = meta["machine"]
    cols = [spec["knob"]] + ([spec["over"]] if spec["over"] else [])
    head = (f"{spec['title']}: {spec['graph']} on {spec['backend_label']}; median [min, max] of the runs, "
            f"{spec['seconds']:g} s each; {meta['date']}; {m['cpu']}"
            + (f" ({m['cpu_id']})" if m.get("cpu_id") else "") + f", {m['cpus']} CPUs; labkit {m['labkit']}")
    metrics = list(dict.fromkeys(list(spec["panels"]) + ["mpps"]))
    per_worker = any(len(r.get("worker_mpps") or []) > 1 for r in rows)
    compare = len(spec["values"]) > 1
    header = cols + ["runs"] + [METRICS[p] for p in metrics] + (["Mpps per worker"] if per_worker else []) \
        + ([f"Mpps vs {spec['labels'][0]}"] if compare else []) + ["conserved"]
    lines = []
    for v, vl in zip(spec["values"], spec["labels"]):
        xs = list(zip(spec["over_values"], spec["over_labels"])) if spec["over"] else [(None, None)]
        for x, xl in xs:
            rs = [r for r in rows if r["value"] == v and (not spec["over"] or r["x"] == x)]
            if not rs:
                continue
            cells = [vl] + ([xl] if spec["over"] else []) + [str(len(rs))]
            for p in metrics:
                vals = [val for val in (_metric(r, p) for r in rs) if val is not None]
                cells.append(f"{_fmt(p, _median(vals))} [{_fmt(p, min(vals))}, {_fmt(p, max(vals))}]"
                             if vals else "-")
            if per_worker:
                cells.append(_per_worker(rs))
            if compare:
                cells.append(_versus(spec, rows, v, x))
            cells.append("yes" if all(r["conserved"] and r["pool_ok"] for r in rs) else "NO")
            lines.append(cells)
    widths = [max(len(str(c)) for c in col) for col in zip(header, *lines)]
    fmt = lambda cells: "  ".join(str(c).ljust(w) if i < len(cols) else str(c).rjust(w)  # noqa: E731
                                  for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    out = [head, fmt(header)] + [fmt(c) for c in lines]
    if compare:
        out.append(f"vs {spec['labels'][0]}: the ratio of the medians and a verdict ({_verdict_rule()})")
    for note in meta.get("notes", []) + _load_lines(rows):
        out.append(f"note: {note}")
    return "\n".join(out)


def _verdict_rule():
    return (f"faster or slower when every run of one beat every run of the other and the medians differ by "
            f"{noise.MIN_EFFECT:.0%} or more, else within noise; {noise.MIN_RUNS} runs a side at least")


def runs_of(rows, value, x=None, metric="mpps"):
    """Each run's `metric` at one point (knob value, over value), in the order measured."""
    return [m for m in (_metric(r, metric) for r in rows if r["value"] == value and r["x"] == x) if m is not None]


def _versus(spec, rows, value, x):
    """"1.23x faster": this point's median Mpps over the first value's at the same x, and the verdict."""
    first = spec["values"][0]
    if value == first:
        return "-"
    base, this = runs_of(rows, first, x), runs_of(rows, value, x)
    if not base or not this or not statistics.median(base):
        return "-"
    ratio = statistics.median(this) / statistics.median(base)
    return f"{ratio:.2f}x {noise.verdict(base, this)}"


def _per_worker(rows):
    """Each worker's median Mpps over these runs, "a / b / ...": how the load split."""
    n = len(rows[0].get("worker_mpps") or [])
    if n == 0 or any(len(r.get("worker_mpps") or []) != n for r in rows):
        return "-"
    return " / ".join(_fmt("mpps", _median([r["worker_mpps"][w] for r in rows])) for w in range(n))


def medians_of(spec, rows, metric="mpps"):
    """{knob value: median of `metric`} or, with `over`, {(knob value, over value): median}."""
    out = {}
    for v in spec["values"]:
        for x in spec["over_values"] or [None]:
            ms = [_metric(r, metric) for r in rows if r["value"] == v and r["x"] == x]
            if any(m is not None for m in ms):
                out[(v, x) if spec["over"] else v] = _median(ms)
    return out


class Sweep:
    """A dashboard's measurement as its static figure stores it (``layout.meta``):
    what a notebook's findings read (``labkit.course.findings``), live or from
    the stored notebook alike. ``rows`` are the runs, ``spec`` what was swept."""

    def __init__(self, meta):
        self.meta, self.spec, self.rows = meta, meta["spec"], meta["rows"]
        self.knob, self.values, self.over = self.spec["knob"], self.spec["values"], self.spec["over"]
        self.over_values = self.spec["over_values"]
        self.key = sweep_key(meta)

    def medians(self, metric="mpps"):
        return medians_of(self.spec, self.rows, metric)

    def median(self, value, x=None, metric="mpps"):
        return self.medians(metric).get((value, x) if self.over else value)

    def runs(self, value, x=None, metric="mpps"):
        """Each run's `metric` at one point, in the order measured."""
        return runs_of(self.rows, value, x, metric)

    def label(self, value):
        return self.spec["labels"][self.values.index(value)]

    def verdict(self, value, than=None, x=None, metric="mpps"):
        """"faster", "slower", "within noise" or "too few runs": `value` against `than` (default:
        the first value, the technique off) by labkit.run.noise.verdict, on each run's `metric`
        ("cycles" and the other costs: lower is faster)."""
        than = self.values[0] if than is None else than
        higher = metric in ("mpps", "gen_mpps", "vector")          # "cycles", "node:NAME"...: lower is better
        return noise.verdict(self.runs(than, x, metric), self.runs(value, x, metric), higher_is_better=higher)

    def load(self):
        """What the rest of the machine did during the runs (load_of)."""
        return load_of(self.rows)

    def __repr__(self):
        return f"<Sweep {self.knob}: {len(self.rows)} runs, {self.meta.get('date')}>"


def sweep_key(meta):
    """A short digest of a measurement's runs: names a stored figure."""
    return hashlib.sha1(json.dumps(meta["rows"], sort_keys=True).encode()).hexdigest()[:12]


def figure_from_meta(meta):
    return build_figure(meta["spec"], meta["rows"])


def check_figure(fig_json):
    """Raise AssertionError unless a stored static figure (its plotly JSON, a dict)
    shows exactly the numbers its layout.meta records. Returns that record."""
    meta = (fig_json.get("layout", {}).get("meta") or {}).get("labkit")
    assert meta, "the figure has no layout.meta['labkit'] record of what was measured"
    want = json.loads(figure_from_meta(meta).to_json())
    assert len(fig_json["data"]) == len(want["data"]), "the figure's traces are not the recorded ones"
    for got, exp in zip(fig_json["data"], want["data"]):
        for key in ("x", "y", "name", "type"):
            assert _plain(got.get(key)) == _plain(exp.get(key)), \
                f"trace {exp.get('name')!r}: {key} differs from the recorded measurements"
    return meta


def _plain(v):
    """Trace data as plain lists (plotly may store arrays as {dtype, bdata})."""
    if isinstance(v, dict) and "bdata" in v:
        import base64
        import numpy as np
        a = np.frombuffer(base64.b64decode(v["bdata"]), dtype=v["dtype"])
        return a.reshape(v["shape"]).tolist() if "shape" in v else a.tolist()
    return list(v) if isinstance(v, tuple) else v


# -- the dashboard ------------------------------------------------------------------

class Dashboard:
    """Measure one knob (or Lab parameter) over its values, live.

    knob      a field of Knobs ("batch", "copy", "poll", "sync", ...) or a Lab parameter
              ("backend", "graph", "size", "flows", "rate", "gen_batch", "workers",
              "dispatcher", "rss_key")
    values    the values to measure, the "off" one first; for a technique's knob the
              default is (off, on) from TECHNIQUES, for batch 1, 2, 4 ... 256
    over      optional (parameter, values): the x axis, one line per knob value
              (e.g. ("rate", [1_000, 100_000, None]): None is "as fast as possible")
    backend   "auto" (veth when possible, else the in-memory NIC; always the in-memory NIC
              when the knob, `over` or `lab` involve several workers), "memory", "veth"
    graph     "l2fwd", "ip4" or "acl"; knobs: the other knobs (default: the fast path)
    lab       other Lab(...) arguments, e.g. dict(size=1500, rate=100_000)
    seconds, repeats   per run, runs per point (LABKIT_QUICK=1 shortens both)
    panels    metrics, one panel each (METRICS): "mpps", "cycles" (TSC cycles/packet),
              "cpu" (the DUT thread's CPU share on a real NIC; with workers, the sum over
              their threads, 200% for two busy cores), "gen_mpps" (what the
              generator offered), "vector" (packets per dispatch), "batch_us" (time per
              vector), "nic_cycles" (the in-memory NIC's own work per frame); with workers
              also "queue_share" (the busiest queue's share, RSS balance) and "disp_cycles"
              (the dispatcher thread's TSC cycles per frame)
    log       panels drawn with a log y axis
    labels    {value: text} to show instead of the default labels
    lab_factory   what makes a Lab (default labkit.Lab; tests pass a fake)
    quiet_wait    before each run, wait up to this many seconds for the rest of the machine
              to fall under labkit.run.noise.BUSY_PERCENT of a CPU (default $LABKIT_QUIET_WAIT or 0);
              each run records the other processes' CPU share meanwhile, and the table and
              the figure say when the machine was busy

    After a run: ``results`` (one dict per run: value, x, repeat, mpps,
    cycles_per_packet, cpu_percent, sent, forwarded, dropped, conserved, pool_ok...),
    ``raw`` (each Result.to_dict()), ``errors``, ``medians(metric)``,
    ``figure()``, ``table()``, ``report()``.
    """

    def __init__(self, knob, values=None, *, over=None, backend="auto", graph="ip4", knobs=None, lab=None,
                 seconds=1.0, repeats=3, panels=("mpps", "cycles"), log=(), title=None, labels=None,
                 lab_factory=None, quiet_wait=None):
        if knob not in KNOB_NAMES and knob not in LAB_PARAMS:
            raise ValueError(f"unknown knob {knob!r}; use a knob ({', '.join(KNOB_NAMES)}) "
                             f"or a Lab parameter ({', '.join(LAB_PARAMS)})")
        if values is None:
            values = _default_values(knob)
        values = list(values)
        if not values:
            raise ValueError("give at least one value to measure")
        bad = [p for p in panels if p not in METRICS]
        if bad:
            raise ValueError(f"unknown panel(s) {bad}; use {', '.join(METRICS)}")
        if over is not None:
            over_name, over_values = over
            if over_name not in LAB_PARAMS and over_name not in KNOB_NAMES or over_name == knob:
                raise ValueError(f"over=({over_name!r}, ...): use another knob or a Lab parameter "
                                 f"({', '.join(LAB_PARAMS)})")
            over_values = list(over_values)
        else:
            over_name, over_values = None, []
        self.knob, self.values, self.over, self.over_values = knob, values, over_name, over_values
        self.graph = graph
        self.base_knobs = knobs or Knobs()
        for name, vs in ((knob, values), (over_name, over_values)):
            if name in KNOB_NAMES:
                for v in vs:
                    self.base_knobs.with_(**{name: v})
        self.lab_kw = dict(lab or {})
        if any(p in LATENCY_PANELS for p in panels):
            self.lab_kw.setdefault("latency", True)
        for name, vs in ((knob, values), (over_name, over_values)):
            _check_lab_values(name, vs)
        involved = [p for p in MULTICORE_PARAMS if p in (knob, over_name) or p in self.lab_kw]
        multicore = involved[0] if involved else None
        if involved == ["workers"] and backend == "veth":
            multicore = None      # veth: N workers on N AF_PACKET sockets of one PACKET_FANOUT group
        if knob == "backend":
            for v in values:
                if pick_backend(v)[0] != v:
                    raise ValueError(f"backend {v!r}: use 'memory', 'veth', 'tap' or 'xdp'")
            self.backend, self.why = "+".join(values), "each value is a backend"
        elif multicore is not None:
            if backend not in ("auto", "memory"):
                raise ValueError(f"{multicore} needs the multi-queue in-memory NIC: use backend='memory' "
                                 f"(or 'auto'), not {backend!r} (on veth, only workers=N: a PACKET_FANOUT group)")
            self.backend, self.why = "memory", f"{multicore}: several workers run on the multi-queue in-memory NIC"
        else:
            self.backend, self.why = pick_backend(backend)
        self.seconds, self.repeats = float(seconds), int(repeats)
        self.quiet_wait = _quiet_wait(quiet_wait)
        self.panels, self.log = tuple(panels), tuple(log)
        labels = labels or {}
        self.spec = {
            "knob": knob, "values": values, "labels": [labels.get(v, label(knob, v)) for v in values],
            "over": over_name, "over_values": over_values,
            "over_labels": [label(over_name, v) for v in over_values] if over_name else [],
            "x_title": TITLES.get(over_name or knob, over_name or knob),
            "title": title or TITLES.get(knob, knob), "graph": graph,
            "backend_label": " vs ".join(LABELS["backend"][v] for v in values) if knob == "backend"
            else LABELS["backend"][self.backend],
            "panels": list(self.panels), "log": list(self.log), "seconds": self.seconds, "repeats": self.repeats,
        }
        self._factory = lab_factory
        self.results, self.raw, self.errors, self.notes = [], [], [], []
        self.error_traceback = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        self._ui = None
        self._status_text, self._last_draw = "ready", 0.0
        self._date = None

    # -- the controls --------------------------------------------------------------
    @property
    def widget(self):
        """The controls and the live figure (an ipywidgets VBox), built on first use."""
        if self._ui is None:
            self._ui = self._build_ui()
        return self._ui["box"]

    def _build_ui(self):
        import ipywidgets as w
        if _numeric(self.values) and len(self.values) > 3:
            pick = w.SelectionSlider(options=[(lb, v) for v, lb in zip(self.values, self.spec["labels"])],
                                     value=self.values[-1], description=self.knob,
                                     continuous_update=False, layout=w.Layout(width="380px"))
        elif len(self.values) <= 4:
            pick = w.ToggleButtons(options=[(lb, v) for v, lb in zip(self.values, self.spec["labels"])],
                                   value=self.values[-1], description=self.knob,
                                   style={"button_width": "auto"})
        else:
            pick = w.Dropdown(options=[(lb, v) for v, lb in zip(self.values, self.spec["labels"])],
                              value=self.values[-1], description=self.knob)
        start = w.Button(description="Start", icon="play", button_style="success",
                         tooltip="measure the value the knob shows")
        sweep = w.Button(description="Sweep", icon="forward", tooltip="measure every value")
        stop = w.Button(description="Stop", icon="stop", button_style="danger", tooltip="stop the measurement")
        clear = w.Button(description="Clear", icon="trash", tooltip="forget what was measured")
        progress = w.FloatProgress(value=0.0, min=0.0, max=1.0, layout=w.Layout(width="200px"))
        status = w.HTML(value=self._status_html("ready: press Start or Sweep"))
        start.on_click(lambda _: self.start(values=[pick.value]))
        sweep.on_click(lambda _: self.start())
        stop.on_click(lambda _: self.stop())
        clear.on_click(lambda _: self.clear())
        try:
            fig = build_figure(self.spec, self.results, live=True)
        except ImportError as e:      # plotly's FigureWidget needs anywidget
            fig = w.HTML(f"(no live plot: {html.escape(str(e))}; `pip install anywidget`)")
        box = w.VBox([pick, w.HBox([start, sweep, stop, clear]), w.HBox([progress, status]), fig])
        return {"box": box, "pick": pick, "start": start, "sweep": sweep, "stop": stop, "clear": clear,
                "progress": progress, "status": status, "fig": fig}

    def _repr_mimebundle_(self, **kwargs):
        bundle = self.widget._repr_mimebundle_(**kwargs)
        if isinstance(bundle, tuple):
            bundle = bundle[0]
        bundle = dict(bundle)
        bundle["text/plain"] = repr(self)
        return bundle

    def __repr__(self):
        over = f" over {self.over} ({', '.join(self.spec['over_labels'])})" if self.over else ""
        return (f"labkit dashboard: {self.knob} ({' | '.join(self.spec['labels'])}){over}, "
                f"{self.graph} on {self.spec['backend_label']} [live controls: run this cell in Jupyter]")

    @property
    def status(self):
        """The status line, as text."""
        return self._status_text

    def _status_html(self, text, color="#333"):
        return f'<span style="color:{color}; font-family:monospace">{html.escape(text)}</span>'

    def _set_status(self, text, color="#333", fraction=None, force=True):
        now = time.monotonic()
        self._status_text = text
        if not force and now - self._last_draw < STATUS_EVERY_S:
            return
        self._last_draw = now
        if self._ui is not None:
            self._ui["status"].value = self._status_html(text, color)
            if fraction is not None:
                self._ui["progress"].value = max(0.0, min(1.0, fraction))

    def _redraw(self):
        if self._ui is None or not hasattr(self._ui["fig"], "batch_update"):
            return
        with self._lock:
            rows = list(self.results)
        new = build_figure(self.spec, rows)
        fw = self._ui["fig"]
        with fw.batch_update():
            for tr, nt in zip(fw.data, new.data):
                tr.x, tr.y = nt.x, nt.y
            fw.layout.title.text = _title(self.spec, rows, live=True)

    # -- measuring ------------------------------------------------------------------
    def plan(self, values=None):
        """The points to measure: [(knob value, over value)...]."""
        values = self.values if values is None else list(values)
        return [(v, x) for v in values for x in (self.over_values or [None])]

    def running(self):
        return self._thread is not None and self._thread.is_alive()

    def start(self, values=None):
        """Measure on a background thread (the buttons stay live); returns the thread,
        or None when a measurement is already running."""
        if self.running():
            self._set_status("a measurement is already running: press Stop first", "#b60")
            return None
        seconds = QUICK_SECONDS if quick() else self.seconds
        repeats = min(self.repeats, QUICK_REPEATS) if quick() else self.repeats
        self.spec["seconds"], self.spec["repeats"] = seconds, repeats
        self._stop.clear()
        self._thread = threading.Thread(target=self._work, args=(self.plan(values), seconds, repeats),
                                        name="labkit-dashboard", daemon=True)
        self._thread.start()
        return self._thread

    def run(self, values=None):
        """Measure every value (or these) now: blocks until done, while the live plot
        updates. An error in the measurement is raised here; Ctrl-C (interrupt the
        kernel) stops cleanly."""
        n_err = len(self.errors)
        th = self.start(values)
        if th is None:
            raise RuntimeError("a measurement is already running: dash.stop() it first")
        try:
            while th.is_alive():
                th.join(0.1)
        except KeyboardInterrupt:
            self.stop()
            th.join()
            raise
        if len(self.errors) > n_err:
            raise self.errors[-1]

    def stop(self):
        """Stop: the run in progress drains and is not recorded; no further run starts."""
        self._stop.set()
        if self.running():
            self._set_status("stopping...", "#b60")

    def clear(self):
        if self.running():
            self._set_status("a measurement is running: press Stop first", "#b60")
            return
        with self._lock:
            self.results.clear()
            self.raw.clear()
            self.notes.clear()
        self._redraw()
        self._set_status("cleared", fraction=0.0)

    def _lab_kwargs(self, value, x):
        kw = dict(backend=self.backend, graph=self.graph, **self.lab_kw)
        knobs = self.base_knobs
        for name, v in ((self.knob, value), (self.over, x)):
            if name is None:
                continue
            if name in KNOB_NAMES:
                knobs = knobs.with_(**{name: v})
            else:
                kw[name] = v
        kw["knobs"] = knobs
        return kw

    def _work(self, plan, seconds, repeats):
        import contextlib
        total, done = len(plan) * repeats, 0
        backends = {self._lab_kwargs(v, x)["backend"] for v, x in plan}
        factory = self._factory
        try:
            with contextlib.ExitStack() as stack:
                if factory is None:
                    from labkit import Lab
                    factory = Lab
                    if backends - {"memory"}:
                        # One lab network for the whole sweep (each Lab finds it up and leaves it).
                        from labkit.nic import labnet
                        self._set_status("building the lab network...")
                        stack.enter_context(labnet.session(tap="tap" in backends))
                # Round-robin: every point once, then every point again... so a noisy
                # moment on a shared machine spreads over all points, not one.
                for rep in range(repeats):
                    for value, x in plan:
                        if self._stop.is_set():
                            break
                        kw = self._lab_kwargs(value, x)
                        head = f"{self._what(value, x)}, run {rep + 1}/{repeats}"
                        if self.quiet_wait:
                            noise.wait_quiet(self.quiet_wait, progress=lambda msg, head=head: self._set_status(
                                f"{head}: {msg} (up to {self.quiet_wait:g} s)", "#b60", force=False))
                        self._set_status(f"{head}: setting up (a first run compiles for tens of seconds)",
                                         fraction=done / total)

                        def progress(frac, head=head, done=done, raised=[]):
                            # Stop: raise once, as Ctrl-C would arrive; the Lab drains (it keeps
                            # calling progress meanwhile) and then raises it again to us.
                            if self._stop.is_set() and not raised:
                                raised.append(True)
                                raise Stopped()
                            self._set_status(f"{head}: {frac:.0%}", fraction=(done + frac) / total, force=False)
                        with factory(**kw) as lab:
                            res = lab.run(seconds=seconds, progress=progress)
                        row = self._record(value, x, rep, res)
                        done += 1
                        self._redraw()
                        brief = self._brief(row)
                        good = row["conserved"] and row["pool_ok"] and "BUSY" not in brief
                        self._set_status(f"{head}: {brief}", fraction=done / total, color="#333" if good else "#b00")
            if self._stop.is_set():
                self._set_status(f"stopped after {done} of {total} runs", "#b60")
            else:
                bugs = sum(1 for r in self.results if not (r["conserved"] and r["pool_ok"]))
                msg = f"done: {done} runs" + (f"; {bugs} broke conservation or leaked buffers: a bug, "
                                               f"please report it" if bugs else "")
                self._set_status(msg, "#b00" if bugs else "#070", fraction=1.0)
        except Stopped:
            self._set_status(f"stopped after {done} of {total} runs (the run in progress was not recorded)",
                             "#b60")
        except BaseException as e:           # shown in the status line, kept in .errors, raised by run()
            self.errors.append(e)
            self.error_traceback = traceback.format_exc()
            self._set_status(f"error: {type(e).__name__}: {e} (details: dash.error_traceback)", "#b00")

    def _what(self, value, x):
        s = f"{self.knob}={label(self.knob, value)}"
        return s + (f", {self.over}={label(self.over, x)}" if self.over else "")

    def _brief(self, row):
        parts = [f"{row['mpps']:.3f} Mpps", f"{row['cycles_per_packet']:.1f} TSC cycles/packet"]
        if row["cpu_percent"] is not None:
            parts.append(f"CPU {row['cpu_percent']:.0f}%")
        if not row["conserved"]:
            parts.append("CONSERVATION BROKEN")
        if not row["pool_ok"]:
            parts.append("BUFFERS LEAKED")
        other = row.get("other_cpu_percent")
        if noise.is_busy(other, row.get("steal_percent")):
            parts.append(f"MACHINE BUSY (other processes {other:.0f}% of a CPU): not reliable")
        return ", ".join(parts)

    def _record(self, value, x, rep, res):
        extra = getattr(res, "extra", None) or {}
        gen = extra.get("gen_tx_pps")
        per = extra.get("workers") or []
        cpu = res.cpu_percent
        if cpu is None and per:            # several threads: their CPU shares add up (200% = two cores)
            cpu = sum(w["cpu_percent"] for w in per) + extra.get("dispatcher_cpu_percent", 0.0)
        handled = [w["handled"] for w in per]
        row = {
            "knob": self.knob, "value": value, "over": self.over, "x": x, "repeat": rep,
            "backend": res.backend, "graph": res.graph, "seconds": _r(res.seconds),
            "mpps": _r(res.pps / 1e6), "cycles_per_packet": _r(res.cycles_per_packet),
            "cpu_percent": _r(cpu) if cpu is not None else None,
            "kernel_cpu_percent": (_r(extra["softirq_cpu_percent"] + extra["napi_thread_cpu_percent"])
                                   if "softirq_cpu_percent" in extra else None),
            "gen_mpps": _r(gen / 1e6) if gen is not None else None,
            "nic_cycles_per_packet": _r(res.nic_cycles / res.sent) if res.sent and res.backend == "memory" else None,
            "batch": res.batch, "tsc_hz": _r(res.tsc_hz),
            "vector": _r(res.runtime[0].vectors_per_call) if getattr(res, "runtime", None) else None,
            "node_cycles": {r.name: _r(r.cycles_per_packet) for r in getattr(res, "runtime", None) or []},
            "sent": res.sent, "forwarded": res.forwarded, "dropped": sum(res.dropped.values()),
            "polls": extra.get("dut_polls"), "kicks": extra.get("dut_kicks"),
            "conserved": bool(res.conserved), "pool_ok": bool(res.pool_ok),
            # the rest of the machine meanwhile (labkit.run.noise): a busy run is flagged, not hidden
            "other_cpu_percent": getattr(res, "other_cpu_percent", None),
            "steal_percent": getattr(res, "steal_percent", 0.0),
            "busiest": [[b["name"], b["cpu_percent"]] for b in getattr(res, "busiest", None) or []],
            "cores_needed": getattr(res, "cores_needed", 1), "cpus": getattr(res, "cpus", None),
        }
        lt = getattr(res, "latency", None)
        if lt:
            row["latency_p50_us"] = _r(lt["p50"] / 1e3) if lt["p50"] is not None else None
            row["latency_p99_us"] = _r(lt["p99"] / 1e3) if lt["p99"] is not None else None
        if per:
            row["worker_mpps"] = [_r(w["mpps"]) for w in per]
            row["queue_share"] = _r(100.0 * max(handled) / sum(handled)) if sum(handled) else None
            row["dispatcher_cycles_per_packet"] = _r(extra.get("dispatcher_busy_cycles_per_packet"))
        with self._lock:
            self.results.append(row)
            self.raw.append(res.to_dict() if hasattr(res, "to_dict") else row)
            for n in getattr(res, "notes", []):
                if n not in self.notes:
                    self.notes.append(n)
            self._date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        return row

    # -- what was measured ---------------------------------------------------------------
    def medians(self, metric="mpps"):
        """{knob value: median} or, with `over`, {(knob value, over value): median}."""
        with self._lock:
            rows = list(self.results)
        return medians_of(self.spec, rows, metric)

    def median(self, value, x=None, metric="mpps"):
        return self.medians(metric).get((value, x) if self.over else value)

    def meta(self):
        """The record a static figure carries: spec, rows, machine, date, notes."""
        with self._lock:
            rows = [dict(r) for r in self.results]
            notes = list(self.notes)
        return {"spec": json.loads(json.dumps(self.spec)), "rows": rows, "machine": machine(),
                "date": self._date, "quick": quick(), "notes": notes}

    def sweep(self):
        """What was measured, exactly as the static figure stores it (a Sweep)."""
        return Sweep(json.loads(self.figure().to_json())["layout"]["meta"]["labkit"])

    def figure(self):
        """A static go.Figure of what was measured; layout.meta['labkit'] holds the numbers."""
        meta = self.meta()
        fig = figure_from_meta(meta)
        fig.update_layout(meta={"labkit": meta})
        return fig

    def table(self):
        """What was measured, as text (medians, min and max per point)."""
        return table_text(self.meta())

    def report(self):
        """Display the static figure (plotly JSON: a few KB in the notebook, shown by
        JupyterLab without a kernel) and print the numbers it shows."""
        from IPython.display import display
        if not self.results:
            print(f"nothing measured yet: {self.errors[-1]!r}" if self.errors else
                  "nothing measured yet: press Start or Sweep, or call dash.run()")
            return
        fig = self.figure()
        spec = json.loads(fig.to_json())
        spec["config"] = {"displaylogo": False}   # not "responsive": it collapses the static figure on resize
        display({"application/vnd.plotly.v1+json": spec,
                 "text/plain": f"<figure: {self.spec['title']}, {len(self.results)} runs; open in JupyterLab>"},
                raw=True)
        print(self.table())


def _quiet_wait(seconds):
    """The seconds to wait for a quiet machine before each run: the argument, else
    $LABKIT_QUIET_WAIT, else 0 (do not wait)."""
    if seconds is None:
        env = os.environ.get("LABKIT_QUIET_WAIT", "").strip()
        try:
            seconds = float(env) if env else 0.0
        except ValueError:
            raise ValueError(f"LABKIT_QUIET_WAIT={env!r}: give seconds, e.g. 30") from None
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 <= seconds <= 3600:
        raise ValueError(f"quiet_wait={seconds!r}: give seconds from 0 (do not wait) to 3600")
    return float(seconds)


# Lab parameters with a natural pair of values, the "off" one first.
_LAB_DEFAULTS = {"workers": [1, 2], "dispatcher": [True, False], "rss_key": ["default", "symmetric"]}


def _check_lab_values(name, values):
    """Bad values of the multi-core Lab parameters and of pool_size fail when the dashboard is made,
    not later in its measuring thread."""
    for v in values:
        if name == "workers" and (isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 64):
            raise ValueError(f"workers={v!r}: use a whole number of workers from 1 to 64")
        if name == "dispatcher" and not isinstance(v, bool):
            raise ValueError(f"dispatcher={v!r}: use True (a dispatcher thread hashes in software) or False")
        if name == "rss_key" and v not in ("default", "symmetric"):
            raise ValueError(f"rss_key={v!r}: use 'default' or 'symmetric'")
        if name == "pool_size" and (isinstance(v, bool) or not isinstance(v, int) or not 1 <= v < 1 << 26):
            raise ValueError(f"pool_size={v!r}: use a whole number of buffers from 1 to {(1 << 26) - 1}")


def _default_values(knob):
    if knob == "batch":
        return list(BATCH_SWEEP)
    if knob in _LAB_DEFAULTS:
        return list(_LAB_DEFAULTS[knob])
    for tech, (k, off, _) in list(TECHNIQUES.items()) + list(WORKER_TECHNIQUES.items()):
        if k == knob:
            return [off, getattr(Knobs(), knob)]
    raise ValueError(f"give the values of {knob!r} to measure, e.g. values=[...]")
