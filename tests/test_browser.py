"""The dashboard as a person sees it: served by the CLI, opened in headless Chromium."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.browser]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def dashboard(recorded_runs):
    yield from _serve(recorded_runs)


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory):
    """The runs `diagnostics demo` records (digits three times, OCT, radar), with short digits training."""
    folder = tmp_path_factory.mktemp("demo")
    subprocess.run([sys.executable, "-m", "diagnostics.cli", "demo", "--no-serve", "--epochs", "3",
                    "--runs-dir", str(folder)], check=True, capture_output=True, timeout=600)
    return folder


@pytest.fixture(scope="module")
def demo_dashboard(demo_runs):
    yield from _serve(demo_runs)


def _serve(runs_folder):
    port = _free_port()
    log = tempfile.TemporaryFile()  # not a pipe: a full pipe nobody reads would stall the server
    proc = subprocess.Popen(
        [sys.executable, "-m", "diagnostics.cli", "dashboard", str(runs_folder), "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).status == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                log.seek(0)
                raise RuntimeError(f"dashboard did not start: {log.read().decode()[-2000:]}")
            time.sleep(0.3)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # by PID: the CLI and the streamlit it started
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def _settle(page) -> None:
    """A chart drawn, then the page quiet (see _QUIET_JS: no running widget does not mean done)."""
    page.wait_for_selector('[data-testid="stPlotlyChart"] .main-svg', timeout=60_000)
    page.wait_for_function(_QUIET_JS, polling=200, timeout=120_000)


def _need_chromium() -> None:
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: .ci/run must install it (apt-get install chromium)")
        pytest.skip("chromium not installed (apt-get install -y chromium chromium-driver)")


def test_distributions_page_renders_a_chart_in_chromium(dashboard, tmp_path):
    _need_chromium()
    from playwright.sync_api import sync_playwright

    shots = Path(os.environ.get("DIAGNOSTICS_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True,
            viewport={"width": 1400, "height": 1000},
        )
        try:
            page = browser.new_page()
            page.goto(f"{dashboard}/distributions")
            _settle(page)
            assert page.locator('[data-testid="stException"]').count() == 0
            page.get_by_text("Distributions", exact=True).first.wait_for(timeout=60_000)
            # the chart holds data: the heatmap and band traces drew something (plotly draws after
            # the element arrives: waited for, as counted at once they raced the drawing)
            page.locator('[data-testid="stPlotlyChart"]').nth(2).wait_for(timeout=60_000)  # 3 or more
            page.locator('[data-testid="stPlotlyChart"] g.trace.scatter path.js-line').first.wait_for(
                state="attached", timeout=60_000)
            page.locator('[data-testid="stPlotlyChart"] g.hm image').first.wait_for(
                state="attached", timeout=60_000)  # heatmap drawn
            page.screenshot(path=str(shots / "distributions.png"), full_page=True)
            page.goto(f"{dashboard}/")
            _settle(page)
            assert page.locator('[data-testid="stException"]').count() == 0
            page.screenshot(path=str(shots / "overview.png"), full_page=True)
            page.goto(f"{dashboard}/outputs")
            _settle(page)
            assert page.locator('[data-testid="stException"]').count() == 0
            page.screenshot(path=str(shots / "outputs.png"), full_page=True)
        finally:
            browser.close()


def test_a_tag_saved_in_review_is_there_after_a_reload(dashboard, tmp_path):
    _need_chromium()
    from playwright.sync_api import sync_playwright

    shots = Path(os.environ.get("DIAGNOSTICS_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    tag = f"too dark {os.getpid()}"
    with sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True,
            viewport={"width": 1400, "height": 1400},
        )
        try:
            page = browser.new_page()
            page.goto(f"{dashboard}/sample?run=review")
            _settle(page)
            page.get_by_text("Tags: none yet").wait_for(timeout=60_000)
            box = page.locator('[data-testid="stForm"] [data-testid="stMultiSelect"] input').first
            box.click()
            box.fill(tag)
            box.press("Enter")
            page.keyboard.press("Escape")
            page.get_by_role("button", name="Save").click()
            page.get_by_text(f"Tags: {tag}").wait_for(timeout=60_000)  # saved: the rerun shows it
            page.reload()
            _settle(page)
            page.get_by_text(f"Tags: {tag}").wait_for(timeout=60_000)
            page.screenshot(path=str(shots / "sample.png"), full_page=True)
            # and the error review lists it for that sample
            page.goto(f"{dashboard}/errors?run=review")
            page.wait_for_selector('[data-testid="stDataFrame"]', timeout=60_000)
            assert page.locator('[data-testid="stException"]').count() == 0
            page.screenshot(path=str(shots / "errors.png"), full_page=True)
        finally:
            browser.close()


PAGES = ["", "distributions", "outputs", "health", "errors", "embedding", "sample", "datamap", "compare", "ensemble"]
# Every drawn chart's traces, as plotly.js holds them: a chart is empty when no trace has data
# (our figure builders' "nothing to show" figures are text without traces).
_CHARTS_JS = """() => Array.from(document.querySelectorAll('.js-plotly-plot')).map(el => {
  const traces = el._fullData || [];
  const title = el.layout && el.layout.title ? (el.layout.title.text || '') : '';
  return {title: String(title).replace(/<[^>]+>/g, ''), traces: traces.length,
          data: traces.some(t => t._length > 0 || ['x', 'y', 'z', 'values'].some(k => t[k] && t[k].length > 0))};
})"""


# Done drawing: no skeleton and no running-script widget for 1.5 s on end. Streamlit shows its
# running widget only a moment after a script starts, so one look can fall in that moment
# and catch a page half drawn (on a loaded machine, Compare runs still computing).
_QUIET_JS = """() => {
  const busy = document.querySelector('[data-testid="stSkeleton"]') ||
               document.querySelector('[data-testid="stStatusWidget"]');
  const now = Date.now();
  if (busy || window.__quietSince === undefined) { window.__quietSince = busy ? undefined : now; return false; }
  return now - window.__quietSince > 1500;
}"""


def test_every_page_of_every_demo_run_draws_its_charts(demo_dashboard, demo_runs, tmp_path):
    """A new user's first look: each demo run on each page, with no exception, no error box
    and no empty chart."""
    _need_chromium()
    from playwright.sync_api import sync_playwright

    shots = Path(os.environ.get("DIAGNOSTICS_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    runs = sorted(p.name for p in demo_runs.iterdir() if (p / "run.json").exists())
    assert len(runs) == 5, runs  # three digits runs on the same samples, OCT, radar
    problems = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True,
            viewport={"width": 1400, "height": 1600},
        )
        try:
            page = browser.new_page()
            for run in runs:
                for name in PAGES:
                    page.goto(f"{demo_dashboard}/{name}?run={run}")
                    page.wait_for_selector('[data-testid="stMain"] h1', timeout=90_000)
                    page.wait_for_function(_QUIET_JS, polling=200, timeout=180_000)
                    where = f"{run} / {name or 'overview'}"
                    page.screenshot(path=str(shots / f"{run}-{name or 'overview'}.png"), full_page=True)
                    if page.locator('[data-testid="stException"]').count():
                        problems.append(f"{where}: exception")
                    for box in page.locator('[data-testid="stAlertContentError"]').all():
                        problems.append(f"{where}: error box: {box.inner_text()[:120]}")
                    charts = page.evaluate(_CHARTS_JS)
                    if any(not c["data"] for c in charts):  # a rerun (the embedding's UMAP map) redrawing it?
                        page.evaluate("() => { window.__quietSince = undefined; }")
                        page.wait_for_timeout(1000)
                        page.wait_for_function(_QUIET_JS, polling=200, timeout=180_000)
                        charts = page.evaluate(_CHARTS_JS)
                    problems += [f"{where}: empty chart {c['title']!r}" for c in charts if not c["data"]]
                    if name in ("", "distributions", "outputs", "errors", "sample") and not charts:
                        problems.append(f"{where}: no chart at all")
                    if name == "ensemble" and run.startswith("digits") and len(charts) < 2:
                        problems.append(f"{where}: the digits runs share their samples, yet no phi heatmap")
                    if run == "digits-baseline" and name in ("compare", "ensemble"):
                        problems += _the_story_checks(page, name, demo_runs)
        finally:
            browser.close()
    assert not problems, "\n".join(problems)


_METRICS_JS = """() => Object.fromEntries(Array.from(document.querySelectorAll('[data-testid="stMetric"]')).map(m => [
  m.querySelector('[data-testid="stMetricLabel"]').innerText.trim(),
  m.querySelector('[data-testid="stMetricValue"]').innerText.trim()]))"""
_PHI_JS = """() => { const el = Array.from(document.querySelectorAll('.js-plotly-plot')).find(
  e => e.layout && e.layout.title && String(e.layout.title.text || '').includes('error correlation'));
  return el ? {x: Array.from(el.data[0].x), text: el.data[0].text.map(r => Array.from(r))} : null; }"""


def _the_story_checks(page, name: str, demo_runs: Path) -> list[str]:
    """The demo's story as the pages tell it, against diagnostics' own numbers: Compare runs of
    the baseline shows the fix (B = digits-fixed by default) with its fixed and broken counts;
    Ensemble shows the three digits runs' phi matrix."""
    import diagnostics

    # the headline metrics come after the comparison is computed (both runs' health: ~2 s cold),
    # which the page's quiet check may not wait for: wait for them here
    page.wait_for_function("() => document.querySelectorAll('[data-testid=\"stMetric\"]').length >= 3",
                           polling=200, timeout=120_000)
    where, shown = f"digits-baseline / {name}", page.evaluate(_METRICS_JS)
    digits = [demo_runs / n for n in ("digits-baseline", "digits-fixed", "digits-raw-pixels")]
    if name == "compare":
        s = diagnostics.compare(digits[0], digits[1]).summary
        expected = {"Samples in both": f"{s['shared']:,}", "Fixed": str(s["fixed"]), "Broken": str(s["broken"])}
        problems = [f"{where}: {label} shows {shown.get(label)!r}, compare() says {value!r}"
                    for label, value in expected.items() if shown.get(label) != value]
        if not s["fixed"] > 5 * max(s["broken"], 1):
            problems.append(f"{where}: the fix should fix far more than it breaks: {s['fixed']} vs {s['broken']}")
        text = page.locator('[data-testid="stMain"]').inner_text()
        if "A = digits-baseline" not in text or "B = digits-fixed" not in text:
            problems.append(f"{where}: B is not digits-fixed by default")
        return problems
    e = diagnostics.ensemble(digits)
    page.wait_for_function("() => (" + _PHI_JS + ")() !== null", polling=200, timeout=120_000)
    phi = page.evaluate(_PHI_JS)
    order = list(e.phi.columns)
    if phi is None or sorted(phi["x"]) != sorted(order):
        return [f"{where}: no phi heatmap of the three digits runs: {phi}"]
    cells = {(a, b): phi["text"][i][j] for i, a in enumerate(phi["x"]) for j, b in enumerate(phi["x"])}
    wrong = [f"{a}/{b}: {cells[a, b]} vs {e.phi.loc[a, b]:.2f}" for a in order for b in order
             if cells[a, b] != f"{e.phi.loc[a, b]:.2f}"]
    if shown.get("Oracle") != f"{e.oracle_accuracy:.1%}":
        wrong.append(f"oracle {shown.get('Oracle')!r} vs {e.oracle_accuracy:.1%}")
    return [f"{where}: {w}" for w in wrong]
