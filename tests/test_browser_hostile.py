"""Hostile text stays text (issue #15): a run whose class names, layer names, tags and notes
hold HTML, scripts and markdown links is shown on every page in headless Chromium, and no
script runs, no injected element appears, no link to javascript: or elsewhere is made."""

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
import torch
from torch import nn

import diagnostics
import hooks
from diagnostics.tags import TagStore
from tests.test_browser import _QUIET_JS

pytestmark = [pytest.mark.slow, pytest.mark.browser]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PAGES = ["", "distributions", "outputs", "health", "errors", "embedding", "sample", "datamap", "compare"]
HOSTILE = ['<img src=x onerror="window.__pwned=1">', "<script>window.__pwned=2</script>",
           "[click me](javascript:window.__pwned=3)", "<b>bold</b> **md**"]


def _hostile_run(folder: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module('<img src=x onerror="alert(4)">', nn.Linear(6, 12))  # a layer name
    model.add_module("relu", nn.ReLU())
    model.add_module("[layer](https://example/x)", nn.Linear(12, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    crit = nn.CrossEntropyLoss()
    x, y = torch.randn(80, 6), torch.randint(0, 4, (80,))
    with hooks.watch(model, optimizer=opt, loss_fn=crit, run_dir=folder, name="hostile", every=2,
                     class_names=HOSTILE) as run:
        for _ in range(10):
            opt.zero_grad()
            crit(model(x), y).backward()
            opt.step()
        run.evaluate([(x[:40], y[:40], list(range(40))), (x[40:], y[40:], list(range(40, 80)))],
                     split="val", attribute_worst=2, n_steps=4, progress=False)
    path = folder / "hostile"
    key = diagnostics.open_run(path).evaluations()["dataset"].iloc[0]
    store = TagStore(path)
    store.add_tags(key, ["0", "1"], "<img src=x onerror=window.__pwned=5>")
    store.set_note(key, "0", "[see](javascript:window.__pwned=6) <script>window.__pwned=7</script>")


def _serve(folder: Path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen([sys.executable, "-m", "diagnostics.cli", "dashboard", str(folder), "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).status == 200:
                return proc, url
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            log.seek(0)
            raise RuntimeError(f"dashboard did not start: {log.read().decode()[-2000:]}")
        time.sleep(0.3)


_INJECTED = """() => ({
  pwned: window.__pwned || 0,
  images: document.querySelectorAll('img[src="x"]').length,
  scripts: [...document.querySelectorAll('script')].filter(s => s.textContent.includes('__pwned')).length,
  bold: [...document.querySelectorAll('[data-testid="stMain"] b')].filter(b => b.textContent === 'bold').length,
  links: [...document.querySelectorAll('a')].map(a => a.getAttribute('href') || '')
           .filter(h => h.startsWith('javascript') || h.includes("example/x")),
})"""


def test_hostile_names_tags_and_notes_are_shown_inert(tmp_path):
    if CHROMIUM is None:
        pytest.skip("chromium not installed (apt-get install -y chromium chromium-driver)")
    from playwright.sync_api import sync_playwright

    _hostile_run(tmp_path)
    proc, url = _serve(tmp_path)
    found = {}
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=CHROMIUM,
                                                            args=ARGS, headless=True,
                                                            viewport={"width": 1400, "height": 1600})
            page = browser.new_page()
            dialogs = []
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            for name in PAGES:
                page.goto(f"{url}/{name}?run=hostile")
                page.wait_for_selector('[data-testid="stMain"] h1', timeout=90_000)
                page.wait_for_function(_QUIET_JS, polling=200, timeout=120_000)  # drawn, not just started
                seen = page.evaluate(_INJECTED)
                if seen["pwned"] or seen["images"] or seen["scripts"] or seen["bold"] or seen["links"]:
                    found[name or "overview"] = seen
            browser.close()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:  # a loaded machine: stopped all the same, not an error of the test
            os.killpg(proc.pid, signal.SIGKILL)
    assert not dialogs and found == {}, found


# -- issue #25: names are text, not Markdown, on every page ---------------------------------
ALL_PAGES = PAGES + ["ensemble"]
_MARKDOWN_MADE = """(raw) => {
  const all = [...document.querySelectorAll('[data-testid="stMain"], [data-testid="stSidebar"]')];
  const within = (sel) => all.flatMap(root => [...root.querySelectorAll(sel)]);
  return {
    javascript: [...document.querySelectorAll('a')].map(a => a.getAttribute('href') || '')
                  .filter(h => h.trim().toLowerCase().startsWith('javascript')),
    made: [...within('a'), ...within('strong'), ...within('b'), ...within('em'), ...within('code'),
           ...within('.katex')].map(e => e.textContent)
           .filter(t => ['click', 'bold', 'star', 'tick', 'x'].includes(t.trim())),
    svg_bold: [...document.querySelectorAll('svg tspan, svg a')]
                .filter(t => t.textContent === 'bold' && (t.style.fontWeight === 'bold' || t.tagName === 'a')).length,
    visible: raw.filter(s => [document.body.innerText, ...[...document.querySelectorAll('input')].map(i => i.value),
                              ...[...document.querySelectorAll('svg text')].map(t => t.textContent)]
                              .some(t => t.includes(s))),
  };
}"""


def test_user_chosen_names_show_as_literal_text_on_every_page(tmp_path):
    """Run, layer, class, split, tag, note and metric names that are Markdown ([x](javascript:..),
    *star*, `tick`, $x$) or HTML (<b>) make no link, emphasis, code, math or bold on any page,
    and each page shows one of them as typed."""
    if CHROMIUM is None:
        pytest.skip("chromium not installed (apt-get install -y chromium chromium-driver)")
    from urllib.parse import quote

    from playwright.sync_api import sync_playwright

    from tests import hostile

    hostile.hostile_runs(tmp_path / "runs")
    proc, url = _serve(tmp_path / "runs")
    raw = sorted(set(hostile.HOSTILE + hostile.RUNS + hostile.CLASSES + [hostile.SPLIT, hostile.NOTE, hostile.METRIC])
                 - {"plain"})
    found = {}
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=CHROMIUM,
                                                            args=ARGS, headless=True,
                                                            viewport={"width": 1400, "height": 2400})
            page = browser.new_page()
            for name in ALL_PAGES:
                page.goto(f"{url}/{name}?run={quote(hostile.RUNS[0], safe='')}")
                page.wait_for_selector('[data-testid="stMain"] h1', timeout=90_000)
                if name != "health":  # drawn to its charts (Health, without findings, has none)
                    page.wait_for_selector('[data-testid="stPlotlyChart"] .main-svg', state="attached", timeout=90_000)
                page.wait_for_function(_QUIET_JS, polling=200, timeout=120_000)
                seen = page.evaluate(_MARKDOWN_MADE, raw)
                if seen["javascript"] or seen["made"] or seen["svg_bold"] or not seen["visible"]:
                    found[name or "overview"] = seen
            browser.close()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    assert found == {}, found
