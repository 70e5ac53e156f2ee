"""Embedding map benchmark: from a fresh server start to the first map, and to the UMAP map.

Writes one run with an evaluation of 10,000 samples x 128 dims (10 Gaussian clusters, seeded)
and opens the Embedding map page on it in a fresh Python process per scenario, through
Streamlit's AppTest (the same script a server runs: streamlit_app.py, with the server's UMAP
warm-up on, as `diagnostics dashboard` sets it). Each scenario times, from the moment the
process is started:

    first map       the page's first chart (the PCA preview, or the UMAP map when cached)
    UMAP map        the page showing the UMAP map (rerun as soon as the map is in the run's cache,
                    as the browser's one-second poll does; and every 5 s to read the progress)

Scenarios, in order (each depends on what the one before left on disk):

    new machine          numba's disk cache empty (NUMBA_CACHE_DIR a new folder), no map cached
    server restart       numba's cache filled by the run before, no map cached in the run
    map cached           a restart after the map was computed: read from RUN/cache/
    blocking project()   for reference: import + `project()` in a fresh process, numba cache
                         filled (what the page made users wait for before the preview)
    browser, restart     the server restart again, served by `diagnostics dashboard` and opened
                         in headless Chromium: server start to the map drawn (--no-browser skips)

Each row gives wall seconds and the process's CPU seconds; the machine's load average is
printed with the table (numbers from a busy machine run long).

Usage (torch-free)::

    .venv/bin/python benchmarks/umap_embedding.py                       # 10,000 x 128
    .venv/bin/python benchmarks/umap_embedding.py --n 2000 --dims 64 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def write_run(runs_dir: Path, n: int, dims: int) -> Path:
    """A finished classification run with one evaluation of `n` points in 10 clusters."""
    import numpy as np
    import pyarrow as pa

    from diagnostics import schema
    from diagnostics.store import RunWriter

    rng = np.random.default_rng(0)
    label = rng.integers(0, 10, n).astype(float)
    x = (rng.normal(scale=4.0, size=(10, dims))[label.astype(int)] + rng.normal(size=(n, dims))).astype(np.float32)
    prediction = np.where(rng.random(n) < 0.1, (label + 1) % 10, label)
    writer = RunWriter(runs_dir / "bench", {"name": "bench", "task": "classification",
                                            "class_names": [f"class {c}" for c in range(10)]}, flush_every_s=3600)
    cols = {"step": np.full(n, 1), "split": ["val"] * n, "sample_id": [f"s{i:06d}" for i in range(n)],
            "rank": np.zeros(n, np.int32), "label": label, "prediction": prediction, "loss": rng.random(n),
            "confidence": np.full(n, 0.8), "label_prob": np.full(n, np.nan), "margin": np.full(n, np.nan),
            "correct": (label == prediction).astype(float), "residual": np.full(n, np.nan),
            "probs": [None] * n, "embedding": list(x)}
    writer.add_table("samples", pa.table({k: pa.array(v, schema.SAMPLES_SCHEMA.field(k).type)
                                          for k, v in cols.items()}, schema=schema.SAMPLES_SCHEMA))
    writer.update_manifest(evaluations=[{"split": "val", "step": 1, "n": n}])
    writer.close()
    return runs_dir / "bench"


def _page_phase(started_at: float, timeout_s: float) -> dict:
    """Inside the fresh process: open the page, then rerun until the UMAP map shows."""
    import json as _json

    from streamlit.testing.v1 import AppTest

    def title(at) -> str:
        charts = [_json.loads(el.proto.spec) for el in at.get("plotly_chart")]
        return charts[0]["layout"]["title"]["text"] if charts else ""

    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=timeout_s)
    at.run()
    at.switch_page("pages/embedding.py").run()
    first, first_title = time.time() - started_at, title(at)
    messages, seen = [], set()
    cache = Path(os.environ["DIAGNOSTICS_RUNS"]) / "bench" / "cache"
    last_rerun = time.time()
    while not title(at).startswith("UMAP") and time.time() - started_at < timeout_s:
        for info in at.info:   # one of each kind: the same words with other numbers are one message
            kind = "".join(c for c in info.value if not c.isdigit())
            if kind not in seen:
                seen.add(kind)
                messages.append(f"{time.time() - started_at:.1f} s: {info.value}")
        # the browser's poll reruns only a small fragment each second: look at the run's cache as
        # cheaply, and rerun the whole page when the map is there (or every 5 s, for the messages)
        while not any(cache.glob("umap-*.parquet")) and time.time() - last_rerun < 5:
            time.sleep(0.2)
        at.run()
        last_rerun = time.time()
    done = title(at).startswith("UMAP")
    return {"first_map_s": first, "first_map": first_title.split(":")[0],
            "umap_map_s": time.time() - started_at if done else None, "cpu_s": time.process_time(),
            "progress_messages": messages[:6], "errors": [e.value for e in at.exception]}


def _project_phase(started_at: float, run_path: str) -> dict:
    import diagnostics
    from diagnostics.embedding import project

    samples = diagnostics.open_run(run_path).samples("val")
    project(run_path, samples, n_epochs=200)
    return {"first_map_s": None, "first_map": "UMAP (blocking)", "umap_map_s": time.time() - started_at,
            "cpu_s": time.process_time(), "progress_messages": [], "errors": []}


def _fresh(phase: str, runs_dir: Path, numba_dir: Path, timeout_s: float) -> dict:
    env = {**os.environ, "DIAGNOSTICS_RUNS": str(runs_dir), "DIAGNOSTICS_WARM_UP": "1",
           "NUMBA_CACHE_DIR": str(numba_dir), "PYTHONPATH": str(ROOT)}
    started = time.time()
    out = subprocess.run([sys.executable, __file__, "--phase", phase, "--started-at", repr(started),
                          "--run-dir", str(runs_dir / "bench"), "--timeout", str(timeout_s)],
                         capture_output=True, text=True, env=env, timeout=timeout_s + 120)
    if out.returncode != 0:
        raise SystemExit(f"{phase} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _browser_scenario(runs_dir: Path, numba_dir: Path, timeout_s: float) -> dict:
    """A real browser: `diagnostics dashboard` started, then /embedding?run=bench opened in
    headless Chromium (an empty profile); seconds from the server's start until the page has
    drawn its first map (the chart's title says which) and until it shows the UMAP map."""
    from playwright.sync_api import sync_playwright

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import dashboard_latency as latency

    title = """() => [...document.querySelectorAll('[data-testid="stPlotlyChart"] .gtitle')]
                     .map(t => t.textContent).join(' | ')"""
    os.environ["NUMBA_CACHE_DIR"] = str(numba_dir)  # the server inherits it
    with sync_playwright() as pw, tempfile.TemporaryDirectory() as profile:
        browser = pw.chromium.launch_persistent_context(profile, executable_path=shutil.which("chromium"),
                                                        args=latency.CHROMIUM_ARGS, headless=True,
                                                        viewport={"width": 1400, "height": 1000})
        port = latency._free_port()
        started = time.perf_counter()
        proc, _ = latency.start_dashboard(runs_dir, port)
        try:
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/embedding?run=bench", wait_until="commit")
            page.wait_for_function(f"() => ({title})().length > 0", timeout=timeout_s * 1000, polling=100)
            first, first_title = time.perf_counter() - started, page.evaluate(title)
            try:
                page.wait_for_function(f"() => ({title})().startsWith('UMAP')", timeout=timeout_s * 1000,
                                       polling=250)
                umap_s = time.perf_counter() - started
            except Exception:  # noqa: BLE001 -- reported as not shown
                umap_s = None
        finally:
            browser.close()
            latency.stop(proc)
    return {"first_map_s": first, "first_map": first_title.split(":")[0].split(" of ")[0][:17],
            "umap_map_s": umap_s, "cpu_s": float("nan"), "progress_messages": [], "errors": []}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000, help="points (default 10000)")
    ap.add_argument("--dims", type=int, default=128, help="embedding dimensions (default 128)")
    ap.add_argument("--timeout", type=float, default=400.0, help="seconds a scenario may take (default 400)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    ap.add_argument("--no-browser", action="store_true", help="skip the real-browser scenario (needs chromium)")
    ap.add_argument("--phase", default=None, help=argparse.SUPPRESS)   # internal: one scenario
    ap.add_argument("--started-at", type=float, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--run-dir", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.phase == "page":
        print(json.dumps(_page_phase(args.started_at, args.timeout)))
        return 0
    if args.phase == "project":
        print(json.dumps(_project_phase(args.started_at, args.run_dir)))
        return 0

    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory(prefix="umap-bench-") as tmp:
        runs_dir, numba_dir = Path(tmp) / "runs", Path(tmp) / "numba-cache"
        run = write_run(runs_dir, args.n, args.dims)
        for name, phase, clear_map in [("new machine", "page", True), ("server restart", "page", True),
                                       ("map cached", "page", False), ("blocking project()", "project", True)]:
            if clear_map:
                shutil.rmtree(run / "cache", ignore_errors=True)
            rows.append({"scenario": name, **_fresh(phase, runs_dir, numba_dir, args.timeout)})
            print(f"  {name} done", file=sys.stderr, flush=True)
        if not args.no_browser:  # the restart again, as a person sees it: server start to a drawn map
            shutil.rmtree(run / "cache", ignore_errors=True)
            rows.append({"scenario": "browser, restart", **_browser_scenario(runs_dir, numba_dir, args.timeout)})
            print("  browser, restart done", file=sys.stderr, flush=True)
    load_after = os.getloadavg()

    print(f"\nEmbedding map of {args.n:,} points x {args.dims} dims, fresh process each "
          f"({os.cpu_count()} CPUs, load average {load_before[0]:.1f} before, {load_after[0]:.1f} after)\n")
    print(f"{'scenario':<22}{'first map':<18}{'after s':>8}{'UMAP map s':>12}{'CPU s':>8}")
    for r in rows:
        first = "-" if r["first_map_s"] is None else f"{r['first_map_s']:.1f}"
        umap_s = "not shown" if r["umap_map_s"] is None else f"{r['umap_map_s']:.1f}"
        cpu = "-" if r["cpu_s"] != r["cpu_s"] else f"{r['cpu_s']:.1f}"
        print(f"{r['scenario']:<22}{r['first_map']:<18}{first:>8}{umap_s:>12}{cpu:>8}")
    for r in rows:
        for message in r["progress_messages"]:
            print(f"  [{r['scenario']}] {message[:150]}")
    if args.json:
        result = {"n": args.n, "dims": args.dims, "cpus": os.cpu_count(), "python": platform.python_version(),
                  "load_average_before": load_before, "load_average_after": load_after, "rows": rows}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
