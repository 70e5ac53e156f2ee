"""A run watched while it trains, in headless Chromium (issue #15): with auto-refresh on, the
Overview's curve grows without a click, and the picker follows the run to `finished`."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.test_browser import CHROMIUM, CHROMIUM_ARGS, _need_chromium, _serve

pytestmark = [pytest.mark.slow, pytest.mark.browser]
ROOT = Path(__file__).resolve().parents[1]

# a training loop's writer, torch-free: a loss every 0.1 s, flushed every second, until the
# file argv[2] exists (the test has seen the curve grow; not a fixed time: on a loaded machine
# the dashboard's start alone can outlast it, and a finished run shows no auto-refresh toggle)
WRITER = textwrap.dedent("""
    import os, sys, time
    from diagnostics.store import RunWriter
    w = RunWriter(sys.argv[1], {"name": "live", "task": "classification"}, flush_every_s=1.0)
    end, step = time.time() + 600, 0
    while time.time() < end and not os.path.exists(sys.argv[2]):
        w.add_scalar(step, "loss", 1.0 / (step + 1))
        step += 1
        time.sleep(0.1)
    w.close()
""")
# the loss trace's length as plotly.js holds it
_POINTS_JS = """() => { const el = document.querySelector('.js-plotly-plot');
  return el && el._fullData ? Math.max(0, ...el._fullData.map(t => (t.x || []).length)) : -1; }"""


@pytest.fixture()
def training(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    stop = tmp_path / "stop-training"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(runs / "live"), str(stop)],
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.time() + 60
    while not (runs / "live" / "scalars").is_dir() or not any((runs / "live" / "scalars").iterdir()):
        assert proc.poll() is None and time.time() < deadline, "the writer did not start"
        time.sleep(0.2)
    yield runs, proc, stop
    if proc.poll() is None:
        proc.kill()


@pytest.fixture()
def live_dashboard(training):
    yield from _serve(training[0])


def test_auto_refresh_grows_the_curve_and_follows_the_run_to_finished(training, live_dashboard, tmp_path):
    _need_chromium()
    from playwright.sync_api import sync_playwright

    shots = Path(os.environ.get("DIAGNOSTICS_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    _, proc, stop = training
    with sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True,
            viewport={"width": 1400, "height": 900})
        try:
            page = browser.new_page()
            page.goto(f"{live_dashboard}/?run=live")
            page.wait_for_selector('[data-testid="stPlotlyChart"] .main-svg', timeout=60_000)
            page.get_by_text("Auto-refresh every 5 s").click()
            page.wait_for_timeout(1000)
            before = page.evaluate(_POINTS_JS)
            page.screenshot(path=str(shots / "live-before.png"))
            # no click meanwhile; a refresh every 5 s, each a rerun that may take seconds under load
            page.wait_for_function(f"() => ({_POINTS_JS})() > {before}", timeout=60_000)
            page.screenshot(path=str(shots / "live-later.png"))
            stop.touch()
            assert proc.wait(timeout=60) == 0
            sidebar = page.locator('[data-testid="stSidebar"]')
            sidebar.get_by_text("finished · step").wait_for(timeout=60_000)
            page.get_by_text("Auto-refresh stopped: this run is finished").wait_for(timeout=60_000)
            # the rerun draws the caption before it ends; the last run's toggle goes when it does
            page.get_by_text("Auto-refresh every 5 s").wait_for(state="detached", timeout=60_000)
            assert page.locator('[data-testid="stException"]').count() == 0
            page.screenshot(path=str(shots / "live-finished.png"))
        finally:
            browser.close()
