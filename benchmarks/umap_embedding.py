"""UMAP embedding map benchmark: what does a visit to the map cost?

Times `diagnostics.embedding.project` on seeded random clusters (10 Gaussian clusters,
10,000 points x 128 dims by default), each scenario in a fresh Python process so that numba's
compilation lands where a dashboard user would meet it:

    first fit, fresh process       import umap + numba compile + fit (data A)
    second fit, same process       warm fit on different data (data B)
    cached visit, same process     data A again: read from RUN/cache/
    cached visit, fresh process    data A again after a server restart (umap never imported)
    warm_up(), fresh process       the tiny fit a dashboard runs in a background thread at start
    first fit after warm_up()      data C, in that same process

Each row gives wall and CPU seconds (CPU = all threads of the process; on a shared machine it
is the steadier of the two) and whether umap was imported by then. The machine's load average
is printed with the table: numbers from a busy machine run long.

Usage (torch-free)::

    .venv/bin/python benchmarks/umap_embedding.py                      # 10,000 x 128
    .venv/bin/python benchmarks/umap_embedding.py --n 2000 --dims 64 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def clusters(n: int, dims: int, seed: int):
    """A samples frame of `n` points in 10 Gaussian clusters (centres 4 sd apart on each axis)."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=4.0, size=(10, dims))
    label = rng.integers(0, 10, n)
    x = (centres[label] + rng.normal(size=(n, dims))).astype(np.float32)
    return pd.DataFrame({"sample_id": [f"s{i:06d}" for i in range(n)], "split": "val", "step": seed,
                         "label": label.astype(float), "embedding": list(x)})


def _timed(name: str, fn) -> dict:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return {"name": name, "wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu,
            "umap_imported": "umap" in sys.modules}


def _phase(phase: str, run_dir: str, n: int, dims: int) -> list[dict]:
    """One scenario, run inside a fresh process; returns its timed rows."""
    from diagnostics.embedding import project, warm_up

    data = {seed: clusters(n, dims, seed) for seed in (1, 2, 3)}
    rows = []
    if phase == "cold":
        rows.append(_timed("first fit, fresh process", lambda: project(run_dir, data[1])))
        rows.append(_timed("second fit, same process", lambda: project(run_dir, data[2])))
        rows.append(_timed("cached visit, same process", lambda: project(run_dir, data[1])))
    elif phase == "restart":
        rows.append(_timed("cached visit, fresh process", lambda: project(run_dir, data[1])))
    elif phase == "warm_up":
        rows.append(_timed("warm_up(), fresh process", warm_up))
        rows.append(_timed("first fit after warm_up()", lambda: project(run_dir, data[3])))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000, help="points (default 10000)")
    ap.add_argument("--dims", type=int, default=128, help="embedding dimensions (default 128)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    ap.add_argument("--phase", default=None, help=argparse.SUPPRESS)   # internal: one scenario
    ap.add_argument("--run-dir", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.phase:
        print(json.dumps(_phase(args.phase, args.run_dir, args.n, args.dims)))
        return 0

    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory(prefix="umap-bench-") as run_dir:
        for phase in ("cold", "restart", "warm_up"):
            out = subprocess.run([sys.executable, __file__, "--phase", phase, "--run-dir", run_dir,
                                  "--n", str(args.n), "--dims", str(args.dims)],
                                 capture_output=True, text=True, check=True)
            rows += json.loads(out.stdout.strip().splitlines()[-1])
            print(f"  {phase} done", file=sys.stderr, flush=True)
    load_after = os.getloadavg()

    print(f"\nproject() on {args.n:,} points x {args.dims} dims, 10 clusters "
          f"({os.cpu_count()} CPUs, load average {load_before[0]:.1f} before, {load_after[0]:.1f} after)\n")
    print(f"{'scenario':<32}{'wall s':>9}{'CPU s':>9}  umap imported")
    for r in rows:
        print(f"{r['name']:<32}{r['wall_s']:>9.2f}{r['cpu_s']:>9.2f}  {'yes' if r['umap_imported'] else 'no'}")
    if args.json:
        result = {"n": args.n, "dims": args.dims, "cpus": os.cpu_count(), "python": platform.python_version(),
                  "load_average_before": load_before, "load_average_after": load_after, "rows": rows}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
