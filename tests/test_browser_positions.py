"""The two position examples (a character tagger, a segmenter of simulated shapes) recorded small,
served by the CLI and opened on every page in headless Chromium: no exception, no error box, no
empty chart, and the position views drawn."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.test_browser import _CHARTS_JS, _QUIET_JS, CHROMIUM, CHROMIUM_ARGS, PAGES, _need_chromium, _serve

pytestmark = [pytest.mark.slow, pytest.mark.browser]

# what each run's pages must draw besides the usual (chart titles, as plotly.js holds them)
EXPECTED = {("errors", "tagger"): "confusion matrix over tokens", ("sample", "tagger"): "tokens coloured by loss",
            ("errors", "segmentation"): "IoU and Dice per class", ("sample", "segmentation"): "disagree",
            ("compare", "tagger-a"): "positions fixed"}


@pytest.fixture(scope="module")
def position_runs(tmp_path_factory):
    import torch

    from examples import segmentation, token_tagger

    folder = tmp_path_factory.mktemp("positions")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # recorded in this order, Compare opens tagger-a against tagger-b (the most recent other run)
        segmentation.train(folder, name="segmentation", n=64, epochs=1)
        token_tagger.train(folder, name="tagger-a", n=160, epochs=1)
        token_tagger.train(folder, name="tagger-b", n=160, epochs=2)  # the same sentences, trained longer
    finally:
        torch.set_num_threads(threads)
    return folder


@pytest.fixture(scope="module")
def position_dashboard(position_runs):
    yield from _serve(position_runs)


_TITLED_JS = """(wanted) => Array.from(document.querySelectorAll('.js-plotly-plot')).some(
  el => el.layout && el.layout.title && String(el.layout.title.text || '').includes(wanted))"""


def _expected(name: str, run: str) -> str | None:
    return next((title for (page, prefix), title in EXPECTED.items() if page == name and run.startswith(prefix)),
                None)


def test_every_page_of_the_position_examples_draws(position_dashboard, position_runs, tmp_path):
    _need_chromium()
    from playwright.sync_api import sync_playwright

    shots = Path(os.environ.get("DIAGNOSTICS_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    runs = sorted(p.name for p in position_runs.iterdir() if (p / "run.json").exists())
    assert runs == ["segmentation", "tagger-a", "tagger-b"], runs
    problems = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True,
            viewport={"width": 1400, "height": 1600})
        try:
            page = browser.new_page()
            for run in runs:
                for name in PAGES:
                    page.goto(f"{position_dashboard}/{name}?run={run}")
                    page.wait_for_selector('[data-testid="stMain"] h1', timeout=90_000)
                    page.wait_for_function(_QUIET_JS, polling=200, timeout=180_000)
                    where = f"{run} / {name or 'overview'}"
                    wanted = _expected(name, run)
                    if name == "compare" and run.startswith("tagger"):  # the comparison computes both runs'
                        page.wait_for_selector('[data-testid="stMetric"]', timeout=120_000)  # health: seconds
                    elif name == "compare":  # the segmenter has no run on its data: the taggers' are other data
                        page.get_by_text("was evaluated on the same data", exact=False).wait_for(timeout=60_000)
                    if wanted:
                        try:
                            page.wait_for_function(_TITLED_JS, arg=wanted, polling=200, timeout=60_000)
                        except Exception:  # noqa: BLE001  (reported below with the titles drawn)
                            pass
                        page.wait_for_function(_QUIET_JS, polling=200, timeout=180_000)
                    page.screenshot(path=str(shots / f"{run}-{name or 'overview'}.png"), full_page=True)
                    if page.locator('[data-testid="stException"]').count():
                        problems.append(f"{where}: exception")
                    for box in page.locator('[data-testid="stAlertContentError"]').all():
                        problems.append(f"{where}: error box: {box.inner_text()[:120]}")
                    charts = page.evaluate(_CHARTS_JS)
                    problems += [f"{where}: empty chart {c['title']!r}" for c in charts if not c["data"]]
                    if wanted and not any(wanted in c["title"] for c in charts):
                        problems.append(f"{where}: no chart titled {wanted!r} among {[c['title'] for c in charts]}")
                    if name == "errors":  # the tab over positions, opened as a person would
                        page.get_by_role("tab", name="Over ", exact=False).last.click()
                        page.wait_for_timeout(1000)
                        page.screenshot(path=str(shots / f"{run}-errors-positions.png"), full_page=True)
        finally:
            browser.close()
    assert not problems, "\n".join(problems)
