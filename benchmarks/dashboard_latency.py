"""Dashboard latency: how long a person waits, measured in a real browser.

Targets (on this 2-core machine, a folder of 20 runs): the sidebar with its run picker
and the first chart within 3 s of opening the folder; every page warm (second visit)
within 2 s; a widget change within 1 s.

The script serves the dashboard with the CLI (`diagnostics dashboard RUNS`) in a
subprocess, opens it in headless Chromium (Playwright driving /usr/bin/chromium), and
times, from the Python side:

    server start -> /_stcore/health answers           (streamlit's own start)
    open -> app loaded and connected                   (the browser's part: Streamlit's scripts)
    open -> run picker visible in the sidebar          (first paint)
    open -> first chart drawn                          (Overview's loss curve)
    open -> badges shown in the picker                 (they are computed after the paint)
    each page, first visit and second visit (warm)     (sidebar navigation, as a click)
    one widget change: the layer picker on Distributions (a layer not shown before)

A page counts as drawn when its script run ended (the app's `data-test-script-state`
went to running and back to notRunning), its title is shown, every plotly chart on it
has drawn its SVG and no skeleton is left.

By default the browser has opened another dashboard (over a copy of one run) before, so
it holds Streamlit's and plotly's scripts, as a returning user's browser does; the
dashboard measured is a fresh process over a folder it has never seen (no badge cache).
`--cold-browser` measures a first-ever visit instead.

Usage::

    .venv/bin/python benchmarks/dashboard_latency.py                   # 20 copies of /tmp/demo_runs' runs
    .venv/bin/python benchmarks/dashboard_latency.py --runs RUNS_DIR --json out.json --shots /tmp/shots
    .venv/bin/python benchmarks/dashboard_latency.py --cold-browser

Without --runs it copies the runs of --source (default /tmp/demo_runs) --copies times
(default 5) into a temporary folder, under new names; the source is only read.
Exit status: 0 when every target is met, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import TimeoutError as PlaywrightTimeout

TARGETS_S = {"first_paint": 3.0, "first_chart": 3.0, "page_warm": 2.0, "widget_change": 1.0}
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# (url path, title shown on the page); the Overview's title is "Run NAME"
PAGES = [("", "Run "), ("distributions", "Distributions"), ("outputs", "Outputs vs labels"),
         ("health", "Health"), ("errors", "Error review"), ("embedding", "Embedding map"),
         ("sample", "Sample detail"), ("datamap", "Data map"), ("compare", "Compare runs")]

# Records the app's script-run state changes with their time, so that a rerun shorter
# than one polling interval is still seen to have started and ended.
_STATE_PROBE = """
window.__runs = [];
new MutationObserver(() => {
  const app = document.querySelector('[data-testid="stApp"]');
  const s = app && app.getAttribute('data-test-script-state');
  const last = window.__runs[window.__runs.length - 1];
  if (s && s !== last) window.__runs.push(s);
}).observe(document, {subtree: true, attributes: true, attributeFilter: ['data-test-script-state']});
"""
# the rerun started after `mark` has ended, the title is shown and every chart has drawn
_DRAWN = """([mark, title]) => {
  const runs = window.__runs.slice(mark);
  if (!runs.some(s => s === 'running') || runs[runs.length - 1] !== 'notRunning') return false;
  const main = document.querySelector('[data-testid="stMain"]') || document;
  const h1 = [...main.querySelectorAll('h1')].some(h => h.textContent.startsWith(title));
  const charts = main.querySelectorAll('[data-testid="stPlotlyChart"]').length;
  const drawn = main.querySelectorAll('[data-testid="stPlotlyChart"] .main-svg').length;
  return h1 && drawn >= charts && !document.querySelector('[data-testid="stSkeleton"]');
}"""
# When each milestone of the first open was first in the page's DOM, in ms since the navigation
# started (performance.now()): what a person sees, without the polling delay of waiting from
# Python (0.3-0.5 s on a busy 2-core machine, measured).
_FIRST_SEEN = """
window.__seen = {};
const __marks = {
  connected: () => document.querySelector('[data-testid="stApp"][data-test-connection-state="CONNECTED"]'),
  first_paint: () => document.querySelector('[data-testid="stSidebar"] [data-testid="stSelectbox"]'),
  first_chart: () => document.querySelector('[data-testid="stPlotlyChart"] .main-svg'),
  badges: () => { const s = document.querySelector('[data-testid="stSidebar"] [data-testid="stSelectbox"]');
    const shown = s && s.textContent + [...s.querySelectorAll('input')].map(i => i.value).join(' ');
    return s && /[\u26d4\u26a0\u2713]/.test(shown); },
};
new MutationObserver(() => {
  for (const [k, seen] of Object.entries(__marks))
    if (!(k in window.__seen) && seen()) window.__seen[k] = performance.now();
}).observe(document, {subtree: true, childList: true, attributes: true, characterData: true});
"""
_BADGES = """() => { const s = document.querySelector('[data-testid="stSidebar"] [data-testid="stSelectbox"]');
  if (!s) return false;
  const shown = s.textContent + [...s.querySelectorAll('input')].map(i => i.value).join(' ');
  return /[\u26d4\u26a0\u2713]/.test(shown); }"""  # the picked run's label shows ⛔, ⚠ or ✓ (no longer …)


def make_runs_folder(source: Path, copies: int, dest: Path) -> Path:
    """`copies` copies of every run in `source`, named RUN-1 .. RUN-copies (source is only read)."""
    runs = sorted(p for p in source.iterdir() if (p / "run.json").is_file())
    if not runs:
        sys.exit(f"dashboard_latency: no runs in {source} — record some first "
                 "(python -m hooks.demo --runs-dir DIR) or pass --runs")
    for i in range(1, copies + 1):
        for run in runs:
            shutil.copytree(run, dest / f"{run.name}-{i}", ignore=shutil.ignore_patterns("health_cache.json"))
    return dest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_dashboard(runs: Path, port: int) -> tuple[subprocess.Popen, float]:
    """The CLI's dashboard in its own process group; returns it and the seconds to /_stcore/health."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "diagnostics.cli", "dashboard", str(runs), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    while True:
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2).status == 200:
                return proc, time.perf_counter() - start
        except OSError:
            pass
        if proc.poll() is not None or time.perf_counter() - start > 120:
            stop(proc)
            sys.exit(f"dashboard_latency: the dashboard did not start: {proc.stdout.read().decode()[-2000:]}")
        time.sleep(0.05)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # by PID: the CLI's streamlit and nothing else
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def _timed(page, action, title: str, timeout_s: float = 180) -> float:
    """Seconds from `action()` until the rerun it starts has drawn a page titled `title`."""
    mark = page.evaluate("() => window.__runs.length")
    start = time.perf_counter()
    action()
    page.wait_for_function(_DRAWN, arg=[mark, title], timeout=timeout_s * 1000, polling="raf")
    return time.perf_counter() - start


def first_paint(page, url: str, shots: Path | None) -> dict:
    """Open the folder's dashboard: seconds from the navigation's start until the page first
    showed the connection, the picker, a drawn chart and the badges (read from the page's own
    clock; the waits from Python only pace the script)."""
    start = time.perf_counter()
    page.goto(url, wait_until="commit")
    page.wait_for_selector('[data-testid="stApp"][data-test-connection-state="CONNECTED"]', timeout=180_000)
    connected = time.perf_counter() - start
    page.wait_for_selector('[data-testid="stSidebar"] [data-testid="stSelectbox"]', timeout=180_000)
    picker = time.perf_counter() - start
    if shots:
        page.screenshot(path=str(shots / "sidebar_first_paint.png"))
    page.wait_for_selector('[data-testid="stPlotlyChart"] .main-svg', timeout=180_000)
    chart = time.perf_counter() - start
    try:
        page.wait_for_function(_BADGES, timeout=120_000, polling="raf")
        badges = time.perf_counter() - start
    except PlaywrightTimeout:  # a version of the app whose label has no mark for a clean run
        badges = None
    page.wait_for_function(_DRAWN, arg=[0, "Run "], timeout=180_000, polling="raf")
    if shots:
        page.screenshot(path=str(shots / "sidebar_with_badges.png"))
    waited = {"connected": connected, "first_paint": picker, "first_chart": chart, "badges": badges}
    seen = page.evaluate("() => window.__seen")
    return {key: seen[key] / 1000 if key in seen else waited[key] for key in waited}


def visit_pages(page) -> dict[str, float]:
    """Click each page in the sidebar's navigation once; seconds per page."""
    times = {}
    for slug, title in PAGES:
        link = page.locator(f'[data-testid="stSidebarNav"] a[href$="/{slug}"]').first
        times[slug or "overview"] = _timed(page, link.click, title)
    return times


def change_layer(page) -> dict[str, float]:
    """On Distributions: pick a layer not shown yet, then the first one again (cached)."""
    page.locator('[data-testid="stSidebarNav"] a[href$="/distributions"]').first.click()
    page.wait_for_function(_DRAWN, arg=[0, "Distributions"], timeout=180_000, polling="raf")
    picker = page.locator('[data-testid="stMain"] [data-testid="stSelectbox"]').nth(1)

    def pick(index: int):
        def act():
            picker.click()
            page.locator('[role="option"]').nth(index).click()
        return act

    new = _timed(page, pick(2), "Distributions")
    back = _timed(page, pick(0), "Distributions")
    return {"layer_new": new, "layer_back": back}


def prime_browser_cache(browser, runs: Path, port: int) -> None:
    """Open a dashboard over a copy of one run once, so that the browser holds Streamlit's
    and plotly's scripts as a returning user's browser does (they are served with hashed
    names and a year's `immutable` cache lifetime); the dashboard measured afterwards is a new
    process on the same port: the browser's cache is keyed by the address, port included, so a
    priming server on another port would leave nothing a later visit could use."""
    run = next(p for p in sorted(runs.iterdir()) if (p / "run.json").is_file())
    with tempfile.TemporaryDirectory(prefix="latency_prime_") as tmp:
        shutil.copytree(run, Path(tmp) / run.name, ignore=shutil.ignore_patterns("health_cache.json"))
        proc, _ = start_dashboard(Path(tmp), port)
        try:
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector('[data-testid="stPlotlyChart"] .main-svg', timeout=180_000)
            page.close()
        finally:
            stop(proc)


def forget_caches(runs: Path) -> None:
    """The folder as never opened: no badge cache, no cached maps (the runs' data untouched)."""
    for run in runs.iterdir():
        (run / "health_cache.json").unlink(missing_ok=True)
        shutil.rmtree(run / "cache", ignore_errors=True)


def measure(runs: Path, shots: Path | None, cold_browser: bool, trials: int = 3) -> dict:
    """`trials` first opens, each of a fresh server over the folder as never opened (and, with
    `cold_browser`, from a new browser profile); the last one then visits every page."""
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("dashboard_latency: chromium is not installed (apt-get install -y chromium chromium-driver)")
    opens, starts = [], []
    with sync_playwright() as pw, tempfile.TemporaryDirectory() as profiles:
        port = _free_port()
        for trial in range(trials):
            forget_caches(runs)
            profile = Path(profiles) / (f"cold{trial}" if cold_browser else "returning")
            browser = pw.chromium.launch_persistent_context(profile, executable_path=chromium, args=CHROMIUM_ARGS,
                                                            headless=True, viewport={"width": 1400, "height": 1000})
            browser.add_init_script(_STATE_PROBE)
            browser.add_init_script(_FIRST_SEEN)
            if not cold_browser and trial == 0:
                prime_browser_cache(browser, runs, port)
            proc, health_s = start_dashboard(runs, port)
            try:
                page = browser.new_page()
                opens.append(first_paint(page, f"http://127.0.0.1:{port}/", shots))
                starts.append(health_s)
                if trial == trials - 1:
                    cold = visit_pages(page)
                    warm = visit_pages(page)
                    widget = change_layer(page)
                    if shots:
                        page.screenshot(path=str(shots / "distributions_after_layer_change.png"), full_page=True)
            finally:
                browser.close()
                stop(proc)
    median = {key: statistics.median(o[key] for o in opens if o[key] is not None)
              for key in opens[0] if any(o[key] is not None for o in opens)}
    return {"browser_cache": "empty" if cold_browser else "primed", "trials": trials,
            "server_start_s": statistics.median(starts), "open_s": median, "open_s_each_trial": opens,
            "page_first_visit_s": cold, "page_warm_s": warm, "widget_change_s": widget}


def verdicts(result: dict) -> dict[str, bool]:
    return {
        "first_paint": result["open_s"]["first_paint"] <= TARGETS_S["first_paint"],
        "first_chart": result["open_s"]["first_chart"] <= TARGETS_S["first_chart"],
        "page_warm": max(result["page_warm_s"].values()) <= TARGETS_S["page_warm"],
        "widget_change": result["widget_change_s"]["layer_new"] <= TARGETS_S["widget_change"],
    }


_OPEN_KEYS = {"open -> app loaded, connected to the server": "connected", "open -> run picker in the sidebar":
              "first_paint", "open -> first chart drawn": "first_chart", "open -> badges in the picker": "badges"}


def print_table(result: dict) -> None:
    def each(key: str) -> str:
        return "  (" + ", ".join("—" if o[key] is None else f"{o[key]:.2f}" for o in result["open_s_each_trial"]) + ")"
    print(f"first opens: median of {result['trials']} fresh servers; each trial in brackets")
    rows = [("server start -> health answers", result["server_start_s"], None),
            ("open -> app loaded, connected to the server", result["open_s"]["connected"], None),
            ("open -> run picker in the sidebar", result["open_s"]["first_paint"], "first_paint"),
            ("open -> first chart drawn", result["open_s"]["first_chart"], "first_chart"),
            ("open -> badges in the picker", result["open_s"]["badges"], None)]
    for slug, first in result["page_first_visit_s"].items():
        rows.append((f"page {slug}: first visit", first, None))
        rows.append((f"page {slug}: warm (second visit)", result["page_warm_s"][slug], "page_warm"))
    rows.append(("widget: Distributions layer, new layer", result["widget_change_s"]["layer_new"], "widget_change"))
    rows.append(("widget: Distributions layer, back", result["widget_change_s"]["layer_back"], None))
    print(f"{'what':<44} {'seconds':>8}  target")
    for what, s, target in rows:
        mark = "" if target is None else f"<= {TARGETS_S[target]:g} s {'met' if s <= TARGETS_S[target] else 'MISSED'}"
        print(f"{what:<44} {'—' if s is None else f'{s:8.2f}':>8}  {mark}"
              + (each(_OPEN_KEYS[what]) if what in _OPEN_KEYS else ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=Path, help="a runs folder to serve (default: copies of --source's runs)")
    parser.add_argument("--source", type=Path, default=Path("/tmp/demo_runs"))
    parser.add_argument("--copies", type=int, default=5)
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--shots", type=Path, help="save screenshots of the sidebar and a page here")
    parser.add_argument("--trials", type=int, default=3, help="first opens to take the median of (default 3)")
    parser.add_argument("--cold-browser", action="store_true",
                        help="an empty browser cache (a first-ever visit); by default the browser has opened "
                             "another dashboard before, as a returning user's has")
    args = parser.parse_args(argv)
    if args.shots:
        args.shots.mkdir(parents=True, exist_ok=True)
    # a badge child killed with the server may write its cache while the folder is removed
    with tempfile.TemporaryDirectory(prefix="latency_runs_", ignore_cleanup_errors=True) as tmp:
        runs = args.runs or make_runs_folder(args.source, args.copies, Path(tmp))
        n_runs = sum(1 for p in runs.iterdir() if (p / "run.json").is_file())
        result = measure(runs, args.shots, args.cold_browser, args.trials)
    result.update(runs=n_runs, targets_s=TARGETS_S, met=verdicts(result), machine={
        "python": platform.python_version(), "cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0]})
    print(f"{n_runs} runs, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}, "
          f"browser cache {result['browser_cache']}")
    print_table(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    return 0 if all(result["met"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
