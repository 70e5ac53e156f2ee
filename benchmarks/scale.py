"""Scale benchmark: a 300-layer model captured at every step, and an evaluation of 100,000
samples — what they cost on disk, to open, to draw and in memory.

Two runs are recorded with the public API (`hooks.watch`, `run.evaluate`) in a child process
each (its peak RSS is the training side's memory), then read back in this process:

    deep      nn.Sequential of 150 × (Linear(32, 32), ReLU) = 300 layers, every=1 (a capture
              at every step), STEPS steps of a new 64-sample batch each, one torch thread
    wide      a small MLP, trained a few steps, then `run.evaluate` on N samples (ids 0..N-1)

Reported: training ms/step without `watch`, with `watch(every=1)` and with the default
schedule (the same process, one after the other) and the ratios; bytes on disk per layer per
capture (distributions table / its rows, one row per layer, kind and capture) and per
evaluated sample (samples table / N); open_run, the Distributions page's reader calls and the
Error review page (Streamlit AppTest, first and second run) in seconds, and the bytes of the
tables that page sends; the peak RSS of the training and reading sides. Timings are noisy on
a shared machine: look at the load average printed with the table.

Usage::

    .venv/bin/python benchmarks/scale.py                         # 300 layers × 60 steps; 100,000 samples
    .venv/bin/python benchmarks/scale.py --steps 20 --samples 20000 --json out.json
    .venv/bin/python benchmarks/scale.py --only wide --keep /tmp/scale   # one run, kept to browse
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEEP = textwrap.dedent("""
    import json, resource, sys, time, torch, hooks
    from torch import nn
    torch.manual_seed(0)
    torch.set_num_threads(1)  # 32-wide layers gain nothing from threads; a loaded machine's spin-waits cost seconds
    runs, steps = sys.argv[1], int(sys.argv[2])
    model = nn.Sequential(*[m for _ in range(150) for m in (nn.Linear(32, 32), nn.ReLU())], nn.Linear(32, 4))
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    crit = nn.CrossEntropyLoss()
    # a new batch each step: summaries that change from step to step, as in training (the same
    # batch every step compresses to a few bytes a row)
    xs, ys = torch.randn(steps + 5, 64, 32), torch.randint(0, 4, (steps + 5, 64))
    def step(i):
        opt.zero_grad(); crit(model(xs[i]), ys[i]).backward(); opt.step()
    for i in range(5): step(i)
    t = time.perf_counter()
    for i in range(steps): step(5 + i)
    plain = (time.perf_counter() - t) / steps
    with hooks.watch(model, optimizer=opt, loss_fn=crit, run_dir=runs, name="deep", every=1) as run:
        t = time.perf_counter()
        for i in range(steps): step(5 + i)
        watched = (time.perf_counter() - t) / steps
    # for scale: the same steps under the default schedule (every="auto"), in a run of its own
    with hooks.watch(model, optimizer=opt, loss_fn=crit, run_dir=runs, name="deep-auto") as run:
        t = time.perf_counter()
        for i in range(steps): step(5 + i)
        auto = (time.perf_counter() - t) / steps
    print(json.dumps({"plain_ms": 1000 * plain, "watched_ms": 1000 * watched, "auto_ms": 1000 * auto,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
""")

WIDE = textwrap.dedent("""
    import json, resource, sys, time, torch, hooks
    from torch import nn
    torch.manual_seed(0)
    runs, n = sys.argv[1], int(sys.argv[2])
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    crit = nn.CrossEntropyLoss()
    x, y = torch.randn(n, 32), torch.randint(0, 10, (n,))
    with hooks.watch(model, optimizer=opt, loss_fn=crit, run_dir=runs, name="wide", every=10) as run:
        for i in range(20):
            opt.zero_grad(); crit(model(x[:256]), y[:256]).backward(); opt.step()
        t = time.perf_counter()
        run.evaluate([(x[i:i + 1000], y[i:i + 1000], list(range(i, min(i + 1000, n)))) for i in range(0, n, 1000)],
                     split="val", progress=False)
        seconds = time.perf_counter() - t
    print(json.dumps({"evaluate_s": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
""")


def _child(script: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=1800)
    if out.returncode != 0:
        raise SystemExit(f"the recording process failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*.parquet"))


def _timed(fn):
    t = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - t


def _page(page: str, runs: Path, run: str) -> tuple[float, float, list[str], int]:
    """First and second run of a page (s), its exceptions, and the bytes its tables send."""
    from streamlit.testing.v1 import AppTest

    os.environ["DIAGNOSTICS_RUNS"] = str(runs)
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=600)
    at.query_params["run"] = run
    at.run()
    at.switch_page(page)
    _, first = _timed(at.run)
    _, second = _timed(at.run)
    table_bytes = sum(len(df.proto.arrow_data.data) for df in at.dataframe)
    return first, second, [e.value for e in at.exception], table_bytes


def read_deep(runs: Path) -> dict:
    import diagnostics

    run, open_s = _timed(lambda: diagnostics.open_run(runs / "deep"))
    layers, layers_s = _timed(lambda: run.layers("activation"))
    one, one_s = _timed(lambda: run.distributions("activation", layers=[layers[len(layers) // 2]]))
    steps = run.steps("activation")
    every, step_s = _timed(lambda: run.distributions("activation", steps=[steps[-1]]))
    kinds = run.kinds()
    n_rows = sum(len(run.distributions(kind)) for kind in kinds)
    first, second, errors, _ = _page("pages/distributions.py", runs, "deep")
    return {"layers": len(layers), "captures": len(steps), "kinds": len(kinds),
            "distribution_rows": n_rows, "distributions_bytes": _bytes(runs / "deep" / "distributions"),
            "bytes_per_layer_per_capture": _bytes(runs / "deep" / "distributions") / max(n_rows, 1),
            "bytes_per_capture_all_kinds": _bytes(runs / "deep" / "distributions") / max(len(steps), 1),
            "open_s": open_s, "layers_s": layers_s, "one_layer_s": one_s, "one_layer_rows": len(one),
            "one_step_s": step_s, "one_step_rows": len(every), "page_first_s": first, "page_second_s": second,
            "page_errors": errors}


def read_wide(runs: Path, n: int) -> dict:
    import diagnostics

    run, open_s = _timed(lambda: diagnostics.open_run(runs / "wide"))
    samples, samples_s = _timed(lambda: run.samples("val"))
    first, second, errors, table_bytes = _page("pages/errors.py", runs, "wide")
    return {"samples": len(samples), "samples_bytes": _bytes(runs / "wide" / "samples"),
            "bytes_per_sample": _bytes(runs / "wide" / "samples") / max(n, 1), "open_s": open_s,
            "samples_s": samples_s, "page_first_s": first, "page_second_s": second, "page_errors": errors,
            "page_table_bytes": table_bytes}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=60, help="steps of the 300-layer run (a capture each)")
    ap.add_argument("--samples", type=int, default=100_000, help="samples of the evaluation")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--only", choices=("deep", "wide"), help="record and read one of the two runs only")
    ap.add_argument("--keep", type=Path, help="record the runs into this folder and keep them (default: a "
                                               "temporary folder)")
    args = ap.parse_args(argv)
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="scale-") as tmp:
        runs = args.keep or Path(tmp)
        runs.mkdir(parents=True, exist_ok=True)
        result = {}
        if args.only != "wide":
            result["deep"] = {**_child(DEEP, str(runs), str(args.steps)), **read_deep(runs)}
        if args.only != "deep":
            result["wide"] = {**_child(WIDE, str(runs), str(args.samples)), **read_wide(runs, args.samples)}
    reader_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result.update(reader_peak_rss_mb=reader_rss, machine={"cpus": os.cpu_count(), "load_avg_1m": load,
                                                          "python": platform.python_version()})
    print(f"\n{os.cpu_count()} CPUs, load average {load:.1f} at start\n")
    for what, value in _report_rows(result):
        print(f"{what:<44} {value}")
    for name in ("deep", "wide"):
        if result.get(name, {}).get("page_errors"):
            print(f"page errors ({name}): {result[name]['page_errors']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    return 0


def _report_rows(result: dict) -> list[tuple[str, str]]:
    rows = []
    if "deep" in result:
        d = result["deep"]
        rows += [
            ("300-layer run", f"{d['layers']} layers × {d['kinds']} kinds × {d['captures']} captures"),
            ("  training ms/step, plain → every=1", f"{d['plain_ms']:.1f} → {d['watched_ms']:.1f} "
                                                   f"({d['watched_ms'] / d['plain_ms']:.2f}×)"),
            ("  training ms/step, default every='auto'", f"{d['auto_ms']:.1f} ({d['auto_ms'] / d['plain_ms']:.2f}×)"),
            ("  bytes per layer per capture (one kind)", f"{d['bytes_per_layer_per_capture']:.0f} "
                                                       f"({d['distributions_bytes'] / 1e6:.1f} MB in all, "
                                                       f"{d['bytes_per_capture_all_kinds'] / 1e3:.0f} kB a capture)"),
            ("  open / layers / one layer / one step", f"{d['open_s']:.2f} / {d['layers_s']:.2f} / "
                                                       f"{d['one_layer_s']:.2f} / {d['one_step_s']:.2f} s"),
            ("  Distributions page, first / again", f"{d['page_first_s']:.1f} / {d['page_second_s']:.1f} s"),
            ("  training peak RSS", f"{d['peak_rss_mb']:.0f} MB")]
    if "wide" in result:
        w = result["wide"]
        rows += [
            (f"evaluation of {w['samples']:,} samples", f"{w['evaluate_s']:.1f} s to evaluate"),
            ("  bytes per sample", f"{w['bytes_per_sample']:.0f} ({w['samples_bytes'] / 1e6:.1f} MB in all)"),
            ("  open / samples()", f"{w['open_s']:.2f} / {w['samples_s']:.2f} s"),
            ("  Error review page, first / again", f"{w['page_first_s']:.1f} / {w['page_second_s']:.1f} s "
                                                  f"(its tables send {w['page_table_bytes'] / 1e3:.0f} kB)"),
            ("  training peak RSS", f"{w['peak_rss_mb']:.0f} MB")]
    return rows + [("reading side peak RSS (runs read, pages)", f"{result['reader_peak_rss_mb']:.0f} MB")]


if __name__ == "__main__":
    sys.exit(main())
