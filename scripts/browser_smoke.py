#!/usr/bin/env python3
"""Real-browser smoke test of the course notebooks.

Starts JupyterLab (this Python's, so the kernel is this Python too) on
127.0.0.1 with a random token, over a temporary copy of ``notebooks/``, drives
Debian's Chromium with Playwright, runs every cell of each notebook and checks
what a student would see:

  errors   no cell output is an error (a traceback), and no widget failed to
           display ("Error displaying widget")
  widgets  an ipywidgets control rendered and is visible
  chart    a plotly chart rendered: a ``.js-plotly-plot`` with its SVG

A screenshot of each notebook goes to ``test-artifacts/screenshots/``.

    python scripts/browser_smoke.py                 # every notebooks/*.ipynb
    python scripts/browser_smoke.py 01_polling      # some of them
    python scripts/browser_smoke.py path/to/x.ipynb --no-widgets

``tests/test_browser.py`` uses the same code under pytest. Environment:
LABKIT_CHROMIUM (default /usr/bin/chromium), LABKIT_BROWSER_TIMEOUT (seconds
for one notebook to run all its cells, default 900: the first run compiles the
numba kernels).
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS_DIR = REPO / "notebooks"
ARTIFACTS = REPO / "test-artifacts"
SCREENSHOTS = ARTIFACTS / "screenshots"

CHROMIUM = os.environ.get("LABKIT_CHROMIUM", "/usr/bin/chromium")
# How Chromium runs on this machine (root, no screen, no network but the registries).
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",
]
RUN_TIMEOUT = float(os.environ.get("LABKIT_BROWSER_TIMEOUT", "900"))
VIEWPORT = {"width": 1400, "height": 1000}
MARKER = "LABKIT_BROWSER_RUN"      # in the environment of every process we start

# JupyterLab user settings for the run: every cell stays in the DOM (no
# virtual scrolling, so outputs below the fold can be checked), and no
# news/update toast covers the notebook.
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none",
                                                                   "scrollPastEnd": False},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
}


def missing_requirements():
    """Why the browser test can't run here, or None."""
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        return f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright (python) is not installed"
    try:
        import jupyterlab  # noqa: F401
    except ImportError:
        return "jupyterlab is not installed"
    return None


class Fatal(Exception):
    """Stop waiting at once: what was waited for can't happen any more."""


class _ServerExited(Fatal):
    pass


def _poll(what, deadline, fn, interval=0.25, max_interval=2.0):
    """Call fn() until it returns something truthy; raise TimeoutError at the deadline."""
    last_exc = None
    while True:
        try:
            v = fn()
            if v:
                return v
        except (TimeoutError, Fatal):
            raise
        except Exception as e:                     # a page mid-navigation, a server not up yet
            last_exc = e
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}"
                               + (f" (last error: {last_exc!r})" if last_exc else ""))
        time.sleep(interval)
        interval = min(interval * 1.5, max_interval)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _marked_pids(marker_value):
    """PIDs of live processes whose environment carries our marker (the ones we started)."""
    needle = f"{MARKER}={marker_value}".encode()
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            with open(f"/proc/{d}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    pids.append(int(d))
        except OSError:
            pass
    return pids


def _kill_pids(pids, grace=5.0):
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    end = time.monotonic() + grace
    while time.monotonic() < end and any(_alive(p) for p in pids):
        time.sleep(0.1)
    for pid in pids:
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):
        return False


# --------------------------------------------------------------------------- the server

class LabServer:
    """JupyterLab on 127.0.0.1:<free port>, token-protected, over a temp copy of notebooks."""

    def __init__(self, notebooks_dir=NOTEBOOKS_DIR, extra_env=None, log_to=None):
        self.tmp = Path(tempfile.mkdtemp(prefix="labkit-browser-"))
        self.root = self.tmp / "root"
        if Path(notebooks_dir).is_dir():
            shutil.copytree(notebooks_dir, self.root,
                            ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))
        else:
            self.root.mkdir()
        self.token = secrets.token_hex(24)
        self.marker = secrets.token_hex(8)
        self.net_prefix = f"labkit-br{os.getpid()}"
        self.log_path = self.tmp / "jupyter.log"
        self.log_to = Path(log_to) if log_to else None
        self.extra_env = dict(extra_env or {})
        self.proc = None
        self.port = None

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def env(self):
        env = dict(os.environ)
        home = self.tmp / "home"
        settings = home / "lab-settings"
        for rel, value in LAB_SETTINGS.items():
            p = settings / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(json.dumps(value))
        env.update({
            # The kernel is this Python (jupyter_client runs the "python3" kernelspec
            # with the server's sys.executable) and imports labkit from this checkout.
            "PYTHONPATH": os.pathsep.join([str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])),
            "LABKIT_QUICK": "1",
            "LABKIT_NET_PREFIX": self.net_prefix,
            # Nothing from the user's own Jupyter/IPython setup: config, kernels,
            # settings, a workspace that reopens other files.
            "JUPYTER_CONFIG_DIR": str(home / "config"),
            "JUPYTER_DATA_DIR": str(home / "data"),
            "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
            "JUPYTERLAB_SETTINGS_DIR": str(settings),
            "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"),
            "IPYTHONDIR": str(home / "ipython"),
            "JUPYTER_PLATFORM_DIRS": "1",
            "PYDEVD_DISABLE_FILE_VALIDATION": "1",
            MARKER: self.marker,
        })
        env.update(self.extra_env)
        return env

    def start(self, timeout=180.0):
        for attempt in range(3):                    # a port taken between probe and bind: retry
            self.port = _free_port()
            cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser",
                   "--ip=127.0.0.1", f"--port={self.port}", "--ServerApp.port_retries=0",
                   f"--IdentityProvider.token={self.token}",
                   f"--ServerApp.root_dir={self.root}",
                   "--LabApp.expose_app_in_browser=True",
                   "--LabApp.news_url=None",
                   "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
                   "--LabApp.extension_manager=readonly"]
            if os.geteuid() == 0:
                cmd.append("--allow-root")          # CI and this machine run as root
            log = open(self.log_path, "ab")
            self.proc = subprocess.Popen(cmd, cwd=self.root, env=self.env(), stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            log.close()
            deadline = time.monotonic() + timeout
            try:
                _poll("JupyterLab to answer /api/status", deadline, self._up)
                return self
            except _ServerExited:
                if attempt == 2:
                    tail = self.log_tail()
                    self.stop()
                    raise RuntimeError("JupyterLab exited at start:\n" + tail)
            except TimeoutError:
                tail = self.log_tail()
                self.stop()
                raise RuntimeError("JupyterLab did not answer in time:\n" + tail)
        return self

    def _up(self):
        if self.proc.poll() is not None:
            raise _ServerExited()
        return self.api("GET", "/api/status", timeout=5) is not None

    def api(self, method, path, timeout=10):
        req = urllib.request.Request(self.url + path, method=method,
                                     headers={"Authorization": f"token {self.token}"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                body = r.read()
                return json.loads(body) if body else {}
        except urllib.error.HTTPError as e:
            if e.code == 404 and method == "DELETE":
                return {}
            raise
        except (urllib.error.URLError, ConnectionError, socket.timeout):
            return None

    def shutdown_kernels(self, path=None):
        """Delete the sessions (and so the kernels) of one notebook, or all of them."""
        try:
            sessions = self.api("GET", "/api/sessions") or []
            for s in sessions:
                if path is None or s.get("path") == path:
                    self.api("DELETE", f"/api/sessions/{s['id']}", timeout=30)
            if path is None:
                for k in self.api("GET", "/api/kernels") or []:
                    self.api("DELETE", f"/api/kernels/{k['id']}", timeout=30)
        except Exception:
            pass

    def lab_namespaces(self):
        """This run's lab network namespaces that still exist."""
        try:
            out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            return []
        names = [line.split()[0] for line in out.splitlines() if line.strip()]
        return [n for n in names if n.startswith(self.net_prefix + "-")]

    def remove_namespaces(self):
        if not self.lab_namespaces():
            return []
        code = f"from labkit.nic import labnet; print(labnet.down({self.net_prefix!r}))"
        subprocess.run([sys.executable, "-c", code], env=self.env(), capture_output=True, timeout=60)
        left = self.lab_namespaces()
        for ns in left:                            # labkit could not: plain iproute2
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True, timeout=30)
        return left

    def log_tail(self, n=60):
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.shutdown_kernels()
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)   # the group we started (start_new_session)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(10)
        # Kernels run in sessions of their own: anything still carrying our marker.
        _kill_pids(_marked_pids(self.marker))
        self.remove_namespaces()
        if self.log_to:
            try:
                self.log_to.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(self.log_path, self.log_to)
            except OSError:
                pass
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()




# --------------------------------------------------------------------------- the browser

class Browser:
    """Debian's Chromium through Playwright; each launch has a fresh, temporary profile."""

    def __init__(self, marker=None):
        self.marker = marker or secrets.token_hex(8)
        self._pw = None
        self.browser = None

    def start(self):
        from playwright.sync_api import sync_playwright
        self._pw = sync_playwright().start()
        try:
            self.browser = self._pw.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
                env={**os.environ, MARKER: self.marker}, timeout=60_000)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self):
        try:
            if self.browser is not None:
                self.browser.close()
        except Exception:
            pass
        try:
            if self._pw is not None:
                self._pw.stop()
        except Exception:
            pass
        self.browser = self._pw = None
        _kill_pids(_marked_pids(self.marker))

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


# --------------------------------------------------------------------------- one notebook

@dataclass
class Result:
    notebook: str
    seconds: float = 0.0
    run_seconds: float = 0.0
    code_cells: int = 0
    executed_cells: int = 0
    errors: list = field(default_factory=list)          # tracebacks and failed widget displays
    stderr: list = field(default_factory=list)          # stderr that is not an error (warnings)
    widgets: int = 0                                    # visible ipywidgets controls
    charts: int = 0                                     # visible plotly charts with their SVG
    console_errors: list = field(default_factory=list)  # the browser console (for diagnosis)
    screenshot: str = ""
    problem: str = ""                                   # the harness could not finish the run
    netns_left: list = field(default_factory=list)      # lab namespaces up after its kernel ended
    charts_after_resize: int = -1                       # charts still visible after a window resize
    dom_errors: list = field(default_factory=list)      # the errors as the page shows them

    def failures(self, widgets=True, chart=True):
        """What is wrong with this run, as sentences (empty: passed)."""
        out = []
        if self.problem:
            out.append(self.problem)
        for e in self.errors:
            out.append(f"error output: {e}")
        if not self.problem and self.executed_cells < self.code_cells:
            out.append(f"only {self.executed_cells} of {self.code_cells} code cells ran")
        if widgets and self.widgets == 0:
            out.append("no ipywidgets control rendered (no visible .jupyter-widgets .widget-*)")
        if chart and self.charts == 0:
            out.append("no plotly chart rendered (no visible .js-plotly-plot .main-svg)")
        if 0 <= self.charts_after_resize < self.charts:
            out.append(f"{self.charts - self.charts_after_resize} of {self.charts} plotly charts vanished "
                       "(zero height) when the browser window was resized: a static figure displayed "
                       "with config responsive=True does that in JupyterLab's plotly renderer")
        return out


# JS run in the page. window.jupyterapp is there because of expose_app_in_browser.
_JS_PANEL = """(path) => {
  const app = window.jupyterapp;
  if (!app) return null;
  for (const w of app.shell.widgets('main')) {
    if (w.context && w.context.path === path && w.content && w.sessionContext) return true;
  }
  return false;
}"""

_JS_KERNEL = """(path) => {
  const app = window.jupyterapp;
  for (const w of app.shell.widgets('main')) {
    if (!(w.context && w.context.path === path && w.sessionContext)) continue;
    const ctx = w.sessionContext;
    const k = ctx.session && ctx.session.kernel;
    return {ready: ctx.isReady, status: k ? k.status : null, conn: k ? k.connectionStatus : null,
            pending: ctx.pendingInput || false};
  }
  return null;
}"""

# The notebook alone on the screen: no file browser in the left area.
_JS_LAYOUT = """() => {
  const app = window.jupyterapp;
  if (!app.shell.leftCollapsed) app.commands.execute('application:toggle-left-area');
}"""

_JS_RUN_ALL = """async (path) => {
  const app = window.jupyterapp;
  for (const w of app.shell.widgets('main')) {
    if (!(w.context && w.context.path === path && w.content)) continue;
    app.shell.activateById(w.id);
    window.__labkitRun = {done: false, ok: null, error: null};
    app.commands.execute('notebook:run-all-cells')
      .then((ok) => { window.__labkitRun = {done: true, ok: ok !== false, error: null}; })
      .catch((e) => { window.__labkitRun = {done: true, ok: false, error: String(e)}; });
    return true;
  }
  return false;
}"""

# The notebook model's view of the run: execution counts and error outputs.
_JS_CELLS = """(path) => {
  const app = window.jupyterapp;
  for (const w of app.shell.widgets('main')) {
    if (!(w.context && w.context.path === path && w.content)) continue;
    const cells = [];
    w.content.widgets.forEach((cell, i) => {
      const m = cell.model;
      if (m.type !== 'code') return;
      const src = m.sharedModel.getSource();
      const c = {index: i, count: m.executionCount, empty: src.trim() === '',
                 prompt: (cell.node.querySelector('.jp-InputArea-prompt') || {}).textContent || '',
                 errors: []};
      for (let j = 0; j < m.outputs.length; j++) {
        const o = m.outputs.get(j).toJSON();
        if (o.output_type === 'error') c.errors.push(o.ename + ': ' + o.evalue);
      }
      cells.push(c);
    });
    return {cells: cells, run: window.__labkitRun || null};
  }
  return null;
}"""

# What a student sees, from the DOM only (the checks the brief names).
_JS_DOM = """() => {
  const visible = (el) => {
    const r = el.getBoundingClientRect();
    const s = getComputedStyle(el);
    return r.width > 0 && r.height > 0 && s.visibility !== 'hidden' && s.display !== 'none';
  };
  const outs = Array.from(document.querySelectorAll('.jp-NotebookPanel .jp-OutputArea-output'));
  const stderr = [], errors = [];
  for (const o of outs) {
    const text = (o.innerText || '').trim();
    const mime = o.getAttribute('data-mime-type') || '';
    if (/Error displaying widget|Failed to load model class|Could not create (a )?(model|view)/.test(text)) {
      errors.push(text.slice(0, 400));
    } else if (mime === 'application/vnd.jupyter.stderr') {
      if (/Traceback|^\\S*(Error|Exception)\\b/m.test(text)) errors.push(text.slice(-800));
      else if (text) stderr.push(text.slice(0, 400));
    }
  }
  // ipywidgets controls: ipywidgets 8 gives each view .jupyter-widgets and a .widget-<kind>
  // class; a plotly FigureWidget (an anywidget) alone does not count.
  const widgets = Array.from(document.querySelectorAll(
      '.jp-NotebookPanel .jp-OutputArea-output .jupyter-widgets'))
    .filter((el) => Array.from(el.classList).some((c) => c.startsWith('widget-') && c !== 'widget-output'))
    .filter((el) => !el.closest('.js-plotly-plot') && !el.querySelector('.js-plotly-plot'))
    .filter(visible);
  const charts = Array.from(document.querySelectorAll('.jp-NotebookPanel .js-plotly-plot'))
    .filter((p) => { const svg = p.querySelector('svg.main-svg'); return svg && visible(svg) && visible(p); });
  const text = outs.reduce((n, o) => n + (o.innerText || '').length, 0);
  return {errors: errors, stderr: stderr, widgets: widgets.length, charts: charts.length,
          outputs: outs.length, text: text};
}"""

_JS_TOP = """() => {
  for (const el of document.querySelectorAll('.jp-NotebookPanel .jp-WindowedPanel-outer, .jp-NotebookPanel-notebook'))
    el.scrollTop = 0;
}"""

_JS_HEIGHT = """() => {
  const inner = document.querySelector('.jp-NotebookPanel .jp-WindowedPanel-inner')
             || document.querySelector('.jp-NotebookPanel-notebook');
  const outer = document.querySelector('.jp-NotebookPanel .jp-WindowedPanel-outer')
             || document.querySelector('.jp-NotebookPanel-notebook');
  if (!inner || !outer) return null;
  return {content: inner.scrollHeight, view: outer.clientHeight};
}"""


def run_notebook(browser, server, path, *, widgets=True, chart=True, timeout=RUN_TIMEOUT,
                 screenshot_dir=SCREENSHOTS, name=None, render_wait=90.0):
    """Open ``path`` (relative to the server's root) in a fresh browser context,
    run all its cells, wait until the kernel is idle, and return a Result."""
    name = name or Path(path).stem
    res = Result(notebook=path)
    t0 = time.monotonic()
    context = browser.browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.on("console", lambda m: m.type == "error" and res.console_errors.append(m.text[:300]))
    page.on("pageerror", lambda e: res.console_errors.append(f"pageerror: {str(e)[:300]}"))
    try:
        _run(page, server, path, res, widgets, chart, timeout, render_wait)
    except TimeoutError as e:
        res.problem = str(e)
    except Exception as e:                          # noqa: BLE001 - reported, not hidden
        res.problem = f"harness error: {type(e).__name__}: {e}"
    finally:
        try:
            res.screenshot = str(_screenshot(page, Path(screenshot_dir) / f"{name}.png"))
        except Exception as e:                      # noqa: BLE001
            res.console_errors.append(f"screenshot failed: {e}")
        try:
            context.close()
        except Exception:
            pass
        server.shutdown_kernels(path)
        res.netns_left = server.lab_namespaces()
        if res.netns_left:                          # reported, then removed for the next notebook
            server.remove_namespaces()
        res.seconds = round(time.monotonic() - t0, 1)
    return res


def _dismiss_dialogs(page):
    """Accept a dialog in the way (kernel selection for a notebook without one, say)."""
    dlg = page.locator(".jp-Dialog")
    if dlg.count() and dlg.first.is_visible():
        btn = page.locator(".jp-Dialog .jp-mod-accept")
        if btn.count():
            btn.first.click()
        else:
            page.keyboard.press("Escape")


def _run(page, server, path, res, widgets, chart, timeout, render_wait):
    from urllib.parse import quote
    page.set_default_timeout(60_000)
    # A workspace of its own, reset: JupyterLab must not reopen the notebooks of an
    # earlier page (each would start a kernel of its own).
    ws = f"labkit-{secrets.token_hex(4)}"
    page.goto(f"{server.url}/lab/workspaces/{ws}/tree/{quote(path)}?reset&token={server.token}",
              wait_until="domcontentloaded", timeout=120_000)
    start = time.monotonic()
    deadline = start + 180
    _poll(f"{path} to open in JupyterLab", deadline,
          lambda: page.evaluate(_JS_PANEL, path) or _dismiss_dialogs(page))

    def kernel_idle():
        _dismiss_dialogs(page)
        k = page.evaluate(_JS_KERNEL, path)
        if k and k["status"] == "dead":
            raise TimeoutError(f"the kernel of {path} died")
        return k and k["ready"] and k["status"] == "idle" and k["conn"] == "connected"

    _poll(f"the kernel of {path} to start", deadline, kernel_idle)
    page.evaluate(_JS_LAYOUT)
    assert page.evaluate(_JS_RUN_ALL, path), "could not start Run All"
    run_start = time.monotonic()
    deadline = run_start + timeout
    quiet = {"n": 0}

    def finished():
        _dismiss_dialogs(page)
        st = page.evaluate(_JS_CELLS, path)
        k = page.evaluate(_JS_KERNEL, path)
        if k and k["status"] == "dead":
            raise TimeoutError(f"the kernel of {path} died while running its cells")
        if k and k["pending"]:
            raise TimeoutError(f"{path} waits for input() from the user")
        busy = any("*" in c["prompt"] for c in st["cells"])
        done = (st["run"] or {}).get("done") and not busy and k and k["status"] == "idle"
        quiet["n"] = quiet["n"] + 1 if done else 0   # idle on two polls in a row, not a gap between cells
        return st if quiet["n"] >= 2 else None

    st = _poll(f"all cells of {path} to run (timeout {timeout:.0f} s)", deadline, finished,
               interval=0.5, max_interval=2.0)
    res.run_seconds = round(time.monotonic() - run_start, 1)
    cells = [c for c in st["cells"] if not c["empty"]]
    res.code_cells = len(cells)
    res.executed_cells = sum(1 for c in cells if c["count"] is not None)
    model_errors = [f"cell {c['index']}: {e}" for c in cells for e in c["errors"]]
    if st["run"] and st["run"].get("error"):
        model_errors.append(f"run all: {st['run']['error']}")

    # Widgets and charts render after the kernel is idle (comm messages, lazy JS), and a
    # widget that can't display says so only then: wait until what is expected is there
    # and the page has stopped changing (the same on polls a second apart), or render_wait.
    def settled(need):
        seen = {"sig": None}

        def check():
            d = page.evaluate(_JS_DOM)
            sig = (d["widgets"], d["charts"], len(d["errors"]), d["outputs"], d["text"])
            same, seen["sig"] = sig == seen["sig"], sig
            ok = not need or ((not widgets or d["widgets"]) and (not chart or d["charts"])) or d["errors"]
            return d if same and ok else None
        return check

    def settle(what, need, wait):
        try:
            return _poll(what, time.monotonic() + wait, settled(need), interval=1.0, max_interval=1.0)
        except TimeoutError:
            return page.evaluate(_JS_DOM)

    dom = settle("widgets and charts to render", True, render_wait)
    res.widgets, res.charts = dom["widgets"], dom["charts"]

    # A student resizes the window: every chart must survive that (the screenshot
    # wants the tall window anyway). Look again once the page is steady.
    _grow_viewport(page)
    after = settle("the page to settle after a resize", False, 20)
    res.charts_after_resize = after["charts"]
    res.stderr = after["stderr"]
    res.dom_errors = dom["errors"] + [e for e in after["errors"] if e not in dom["errors"]]
    # One list of errors: the model's (precise), and the page's that the model lacks
    # (a widget that failed to display is no error output in the model).
    res.errors = model_errors + [e for e in res.dom_errors
                                 if not any(m.split(": ", 1)[-1][:40] in e for m in model_errors)]


def _grow_viewport(page):
    """Make the window as tall as the notebook (at least 200 px taller than at the
    start, so that there is a resize): the whole notebook fits in one screenshot."""
    h = page.evaluate(_JS_HEIGHT)
    if not h:
        return
    current = page.viewport_size["height"]
    extra = current - h["view"]                            # menus, toolbars, status bar
    height = int(min(max(h["content"] + extra + 40, VIEWPORT["height"] + 200), 16000))
    if abs(height - current) > 40:
        page.set_viewport_size({"width": VIEWPORT["width"], "height": height})
        page.wait_for_timeout(500)                         # relayout; plotly resizes its charts
    page.evaluate(_JS_TOP)


def _screenshot(page, dest):
    """The whole notebook: a tall window, then a page screenshot."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        _grow_viewport(page)
    except Exception:
        pass
    page.screenshot(path=str(dest), full_page=True, timeout=60_000)
    return dest


# --------------------------------------------------------------------------- command line

def notebooks():
    return sorted(p.name for p in NOTEBOOKS_DIR.glob("*.ipynb")) if NOTEBOOKS_DIR.is_dir() else []


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("notebooks", nargs="*",
                    help="names in notebooks/ (with or without .ipynb) or paths; default: all")
    ap.add_argument("--no-widgets", action="store_true", help="don't require an ipywidgets control")
    ap.add_argument("--no-chart", action="store_true", help="don't require a plotly chart")
    ap.add_argument("--timeout", type=float, default=RUN_TIMEOUT)
    args = ap.parse_args(argv)
    why = missing_requirements()
    if why:
        print(f"browser smoke test can't run: {why}", file=sys.stderr)
        return 2
    paths = args.notebooks or notebooks()
    if not paths:
        print("no notebooks in notebooks/", file=sys.stderr)
        return 2
    # Notebooks given by path outside notebooks/: serve their own directory instead.
    resolved = []
    for p in paths:
        p = p if p.endswith(".ipynb") else p + ".ipynb"
        q = Path(p)
        resolved.append(q.resolve() if q.exists() and q.parent.resolve() != NOTEBOOKS_DIR else NOTEBOOKS_DIR / q.name)
    dirs = {q.parent for q in resolved}
    if len(dirs) != 1:
        print("give notebooks from one directory at a time", file=sys.stderr)
        return 2
    results = []
    with LabServer(dirs.pop(), log_to=ARTIFACTS / "jupyter-server.log") as server, \
            Browser() as browser:
        for q in resolved:
            r = run_notebook(browser, server, q.name, widgets=not args.no_widgets,
                             chart=not args.no_chart, timeout=args.timeout)
            fails = r.failures(widgets=not args.no_widgets, chart=not args.no_chart)
            results.append((r, fails))
            print(f"{'FAIL' if fails else 'ok  '} {q.name}: {r.seconds:.1f} s (cells {r.run_seconds:.1f} s), "
                  f"{r.executed_cells}/{r.code_cells} cells, {r.widgets} widgets, {r.charts} charts, "
                  f"screenshot {r.screenshot}", flush=True)
            for f in fails:
                print(f"     - {f}")
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "browser-smoke.json").write_text(
        json.dumps([dict(asdict(r), failures=f) for r, f in results], indent=1))
    return 1 if any(f for _, f in results) else 0


if __name__ == "__main__":
    sys.exit(main())
