"""Real-browser smoke test of the course notebooks (Debian's Chromium + Playwright).

Each notebook in notebooks/ is opened in JupyterLab, run with Run All Cells, and
must show no error output, a rendered ipywidgets control and a rendered plotly
chart; a screenshot of each goes to test-artifacts/screenshots/<notebook>.png.
The self-tests at the top run small notebooks of their own to show that the
harness sees widgets and charts, and that it fails a notebook that raises, one
without a chart and one without a widget.

The logic lives in scripts/browser_smoke.py (also runnable by hand). Skipped,
with the reason, where /usr/bin/chromium or playwright is missing, unless
LABKIT_BROWSER_REQUIRED=1 (CI), where that is a failure.
"""
import importlib.util
import json
import os
import sys
import warnings
from dataclasses import asdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("browser_smoke", REPO / "scripts" / "browser_smoke.py")
smoke = importlib.util.module_from_spec(_spec)
sys.modules["browser_smoke"] = smoke
_spec.loader.exec_module(smoke)

# What each course notebook must show; a notebook not listed must show both.
EXPECT = {
    # "00_tour.ipynb": {"widgets": True, "chart": True},
}
SELFTEST = "_selftest"          # the self-tests' notebooks, beside the copies of notebooks/

NOTEBOOKS = smoke.notebooks()

_RESULTS = []


def _selftest_notebooks(d):
    import nbformat
    d.mkdir(parents=True, exist_ok=True)

    def nb(name, *sources):
        n = nbformat.v4.new_notebook()
        n.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)",
                                    "language": "python"}
        n.cells = [nbformat.v4.new_code_cell(s) for s in sources]
        nbformat.write(n, str(d / f"{name}.ipynb"))

    nb("good",
       "import ipywidgets as widgets\nfrom IPython.display import display\n"
       "slider = widgets.IntSlider(value=3, min=0, max=10, description='n')\ndisplay(slider)",
       "import plotly.graph_objects as go\nfw = go.FigureWidget(go.Scatter(y=[1, 3, 2]))\nfw",
       "go.Figure(go.Bar(y=[2, 1, 3])).show()",
       "import os, labkit\n"
       f"assert labkit.__file__.startswith({str(REPO)!r}), labkit.__file__\n"
       "assert os.environ['LABKIT_QUICK'] == '1'\n"
       "assert os.environ['LABKIT_NET_PREFIX'].startswith('labkit-br')\n"
       "print(labkit.__file__, os.environ['LABKIT_NET_PREFIX'])")
    nb("raising", "print('before')", "raise ValueError('boom from the self-test')",
       "import ipywidgets as widgets\nwidgets.IntSlider()")
    nb("nochart", "import ipywidgets as widgets\nwidgets.IntSlider()")
    nb("vanishing",
       "import json\nimport ipywidgets as widgets\nimport plotly.graph_objects as go\n"
       "from IPython.display import display\ndisplay(widgets.IntSlider())\n"
       "spec = json.loads(go.Figure(go.Bar(y=[1, 3, 2])).to_json())\n"
       "spec['config'] = {'responsive': True}\n"
       "display({'application/vnd.plotly.v1+json': spec, 'text/plain': 'a figure'}, raw=True)")
    nb("brokenwidget",       # a widget view whose model the kernel never made: no traceback
       "from IPython.display import display\n"
       "display({'application/vnd.jupyter.widget-view+json': {'model_id': 'no-such-model', "
       "'version_major': 2, 'version_minor': 0}, 'text/plain': 'a widget'}, raw=True)")
    nb("nowidget", "import plotly.graph_objects as go\ngo.FigureWidget(go.Scatter(y=[1, 2]))",
       "go.Figure(go.Bar(y=[1, 2])).show()")


# Module scope, not session: playwright's sync API keeps an asyncio loop
# running in this thread until it stops, and pyroute2 (the lab network tests
# that run after this module) cannot start its own loop while one runs.
@pytest.fixture(scope="module")
def lab():
    why = smoke.missing_requirements()
    if why:
        if os.environ.get("LABKIT_BROWSER_REQUIRED") == "1":
            pytest.fail(f"LABKIT_BROWSER_REQUIRED=1 but {why}")
        pytest.skip(why)
    server = smoke.LabServer(smoke.NOTEBOOKS_DIR, log_to=smoke.ARTIFACTS / "jupyter-server.log")
    _selftest_notebooks(server.root / SELFTEST)
    try:
        server.start()
    except BaseException:
        server.stop()
        raise
    yield server
    server.stop()
    left = server.lab_namespaces()
    smoke.ARTIFACTS.mkdir(exist_ok=True)
    (smoke.ARTIFACTS / "browser-smoke.json").write_text(json.dumps(_RESULTS, indent=1))
    assert not left, f"lab namespaces left behind: {left}"


@pytest.fixture(scope="module")
def browser(lab):
    b = smoke.Browser()
    try:
        b.start()
    except BaseException:
        b.stop()
        raise
    yield b
    b.stop()


def _run(lab, browser, path, name, widgets=True, chart=True, **kw):
    r = smoke.run_notebook(browser, lab, path, widgets=widgets, chart=chart, name=name, **kw)
    fails = r.failures(widgets=widgets, chart=chart)
    _RESULTS.append(dict(asdict(r), failures=fails))
    print(f"\n{path}: {r.seconds:.1f} s (cells {r.run_seconds:.1f} s), {r.executed_cells}/{r.code_cells} "
          f"cells, {r.widgets} widgets, {r.charts} charts, screenshot {r.screenshot}")
    if r.netns_left:
        warnings.warn(f"{path} left its lab network up after its kernel ended: {r.netns_left} (removed)")
    return r, fails


def _explain(r, fails, lab):
    lines = [f"{r.notebook}: " + "; ".join(fails), f"screenshot: {r.screenshot}"]
    if r.stderr:
        lines.append("stderr (not errors): " + " | ".join(s[:200] for s in r.stderr[:5]))
    if r.console_errors:
        lines.append("browser console errors: " + " | ".join(r.console_errors[-8:]))
    lines.append("jupyter server log (tail):\n" + lab.log_tail(30))
    return "\n".join(lines)


# ---- the harness itself ----------------------------------------------------------------

QUICK_RENDER = 10.0      # the self-tests that expect a missing chart/widget don't wait 90 s for it


def test_harness_sees_widgets_and_charts(lab, browser):
    r, fails = _run(lab, browser, f"{SELFTEST}/good.ipynb", "selftest_good")
    assert not fails, _explain(r, fails, lab)
    assert r.widgets >= 1                  # the slider (the FigureWidget is no "control")
    assert r.charts >= 2                   # the FigureWidget and the static go.Figure
    assert r.executed_cells == r.code_cells == 4
    assert Path(r.screenshot).stat().st_size > 10_000


def test_harness_fails_a_raising_notebook(lab, browser):
    r, fails = _run(lab, browser, f"{SELFTEST}/raising.ipynb", "selftest_raising",
                    render_wait=QUICK_RENDER)
    assert any("ValueError: boom from the self-test" in f for f in fails), fails
    assert r.executed_cells == 2 and r.code_cells == 3, r   # Run All stops at the error
    assert not r.problem, r.problem                          # ...and the harness still finished
    # The page shows it too (the stderr-mimetype output with the traceback), not just the model.
    assert any("Traceback" in e and "boom from the self-test" in e for e in r.dom_errors), r.dom_errors


def test_harness_fails_a_widget_that_does_not_display(lab, browser):
    r, fails = _run(lab, browser, f"{SELFTEST}/brokenwidget.ipynb", "selftest_brokenwidget",
                    widgets=False, chart=False, render_wait=QUICK_RENDER)
    assert any("Error displaying widget" in f for f in fails), (fails, r.dom_errors)


def test_harness_fails_a_notebook_without_chart(lab, browser):
    r, fails = _run(lab, browser, f"{SELFTEST}/nochart.ipynb", "selftest_nochart",
                    render_wait=QUICK_RENDER)
    assert r.widgets >= 1 and r.charts == 0 and not r.errors, r
    assert fails == ["no plotly chart rendered (no visible .js-plotly-plot .main-svg)"], fails


def test_harness_fails_a_notebook_without_widget(lab, browser):
    r, fails = _run(lab, browser, f"{SELFTEST}/nowidget.ipynb", "selftest_nowidget",
                    render_wait=QUICK_RENDER)
    assert r.charts >= 2 and r.widgets == 0 and not r.errors, r
    assert fails == ["no ipywidgets control rendered (no visible .jupyter-widgets .widget-*)"], fails


def test_harness_fails_a_chart_that_vanishes_on_resize(lab, browser):
    """A static figure with config responsive=True renders, then collapses to zero
    height at the first window resize (JupyterLab 4, jupyterlab-plotly)."""
    r, fails = _run(lab, browser, f"{SELFTEST}/vanishing.ipynb", "selftest_vanishing",
                    render_wait=QUICK_RENDER)
    assert r.widgets >= 1 and r.charts == 1 and r.charts_after_resize == 0, r
    assert len(fails) == 1 and "vanished" in fails[0], fails


# ---- the course notebooks ----------------------------------------------------------------

@pytest.mark.parametrize("notebook", NOTEBOOKS or [pytest.param(None, marks=pytest.mark.skip(
    reason="no notebooks in notebooks/ yet"))])
def test_notebook_runs_in_jupyterlab(lab, browser, notebook):
    expect = {"widgets": True, "chart": True, **EXPECT.get(notebook, {})}
    r, fails = _run(lab, browser, notebook, Path(notebook).stem, **expect)
    assert not fails, _explain(r, fails, lab)
