"""Store scale benchmark: does a large run still open and draw fast?

Design target: a run of 200 layers x 2,000 captured steps of every kind (activation,
gradient, weight, param_grad): opening it and drawing one layer's distribution page
should take under 2 s warm on this machine.

The script writes a synthetic run with `diagnostics.store.RunWriter` exactly as a live
training would (one `add_summaries` call per step, a `flush()` every few steps, which
triggers the writer's tiered compaction), then times the reader calls the
Distributions page makes (`pages/distributions.py`), uncached:

    open_run(path)                                     # the run picked in the sidebar
    r.layers(kind)                                     # the layer picker
    r.steps(kind)                                      # the step slider
    r.distributions(kind, layers=[layer])              # one layer over all steps
    r.distributions(kind, steps=[step])                # every layer at one step

Each reader call is timed once as a warm-up (reported as "first"), then three more
times; the table shows the median of those three. "distributions page" is the sum of
the five calls within one repetition (median over the three repetitions), compared
with the 2 s target.

Usage (torch-free; numpy, pyarrow and duckdb only)::

    .venv/bin/python benchmarks/store_scale.py                       # 200 layers x 2,000 steps x 4 kinds
    .venv/bin/python benchmarks/store_scale.py --steps 200 --json out.json
    .venv/bin/python benchmarks/store_scale.py --out /tmp/bigrun      # keep the run to look at

Exit status: 0 when the page time meets the target, 1 when it misses it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import diagnostics
from diagnostics import schema
from diagnostics.store import RunWriter

TARGET_S = 2.0
DEFAULT_KINDS = ("activation", "gradient", "weight", "param_grad")
WARM_REPS = 3

# Standard-normal quantiles for schema.QUANTILES (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99).
_Z = {0.01: -2.3263, 0.05: -1.6449, 0.25: -0.6745, 0.5: 0.0, 0.75: 0.6745, 0.95: 1.6449, 0.99: 2.3263}


# ---------------------------------------------------------------------------------
# Synthetic data


def layer_names(n: int) -> list[str]:
    """Names like a real model's modules: blocks.{i}.{attn,mlp,...}."""
    subs = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2", "norm1", "norm2", "act", "drop")
    return [f"blocks.{i // len(subs)}.{subs[i % len(subs)]}" for i in range(n)]


class SyntheticSummaries:
    """Plausible summary rows (schema.SUMMARY_FIELDS + HIST_BINS counts) for every step.

    Each (layer, kind) row is a roughly normal distribution with its own size, centre
    and scale; scale and centre drift slowly over steps, and the histogram counts carry
    a few per cent of noise, so the Parquet columns compress about as real ones would.
    """

    def __init__(self, layers: list[str], kinds: list[str], seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.rng = rng
        self.layers = [l for _ in kinds for l in layers]
        self.kinds = [k for k in kinds for _ in layers]
        n = len(self.layers)
        self.numel = rng.choice([4096, 16384, 65536, 262144, 1048576], size=n).astype(np.float64)
        self.mu = rng.normal(0.0, 0.05, size=n)
        self.sigma = np.exp(rng.normal(-2.0, 1.0, size=n))
        self.phase = rng.uniform(0, 2 * math.pi, size=n)
        self.zero_frac = np.where(rng.random(n) < 0.25, rng.uniform(0.3, 0.6, size=n), 0.0)
        # Histogram spans [mu - k*sigma, mu + k*sigma]; bin probabilities are fixed per
        # row (standardised edges), so each step only scales and perturbs them.
        self.k = rng.uniform(3.5, 5.0, size=n)
        edges = np.linspace(-1.0, 1.0, schema.HIST_BINS + 1)[None, :] * self.k[:, None]
        cdf = 0.5 * (1.0 + np.vectorize(math.erf)(edges / math.sqrt(2.0)))
        p = np.diff(cdf, axis=1)
        self.p = p / p.sum(axis=1, keepdims=True)
        self.width = len(schema.SUMMARY_FIELDS) + schema.HIST_BINS
        # Activation-only fields (NaN for other kinds), where the schema has them: a dead
        # unit share for the ReLU-like rows, a saturated share for a few others.
        is_act = np.array([k == "activation" for k in self.kinds])
        relu_like = is_act & (self.zero_frac > 0)
        squashing = is_act & ~relu_like & (rng.random(n) < 0.2)
        self.extra = {
            "dead_frac": np.where(relu_like, rng.uniform(0.0, 0.2, size=n), np.nan),
            "saturated_frac": np.where(squashing, rng.uniform(0.0, 0.1, size=n), np.nan),
        }

    def step(self, step: int) -> np.ndarray:
        n = len(self.layers)
        drift = 1.0 + 0.3 * np.sin(step / 300.0 + self.phase)
        sigma = self.sigma * drift * np.exp(self.rng.normal(0.0, 0.02, size=n))
        mu = self.mu + 0.1 * self.sigma * np.sin(step / 500.0 + self.phase)
        lo, hi = mu - self.k * sigma, mu + self.k * sigma
        m = np.empty((n, self.width), dtype=np.float64)
        values = {
            "count": self.numel,
            "mean": mu,
            "std": sigma,
            "min": lo,
            "max": hi,
            "zero_frac": self.zero_frac,
            "nan_count": np.zeros(n),
            "inf_count": np.zeros(n),
            **{c: mu + _Z[q] * sigma for q, c in zip(schema.QUANTILES, schema.QUANTILE_COLUMNS)},
            "hist_min": lo,
            "hist_max": hi,
        }
        for i, f in enumerate(schema.SUMMARY_FIELDS):
            if f in values:
                m[:, i] = values[f]
            elif f in self.extra:
                m[:, i] = self.extra[f]
            else:  # a field this script does not know yet: 0 for counts, NaN ("not applicable") otherwise
                typ = schema.DISTRIBUTIONS_SCHEMA.field(f).type
                m[:, i] = 0.0 if pa.types.is_integer(typ) else np.nan
        noise = 1.0 + self.rng.normal(0.0, 0.03, size=self.p.shape)
        m[:, len(schema.SUMMARY_FIELDS):] = np.rint(self.p * self.numel[:, None] * np.clip(noise, 0.0, None))
        return m


# ---------------------------------------------------------------------------------
# Phases


def write_run(path: Path, n_layers: int, n_steps: int, kinds: list[str], flush_every: int) -> dict:
    data = SyntheticSummaries(layer_names(n_layers), kinds)
    t_start = time.perf_counter()
    # The background flush is pushed out of the way so that parts are cut only by the
    # explicit flush() every `flush_every` steps, deterministically.
    writer = RunWriter(path, {"name": "store-scale", "task": "benchmark"}, flush_every_s=1e9)
    t_writer = time.perf_counter() - t_start
    flush_times: list[float] = []
    for step in range(n_steps):
        matrix = data.step(step)
        t0 = time.perf_counter()
        writer.add_summaries(step, data.layers, data.kinds, matrix)
        if (step + 1) % flush_every == 0:
            t1 = time.perf_counter()
            writer.flush()
            flush_times.append(time.perf_counter() - t1)
        t_writer += time.perf_counter() - t0
        if sys.stderr.isatty() and (step + 1) % max(1, n_steps // 20) == 0:
            print(f"\r  writing: step {step + 1}/{n_steps}", end="", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    writer.close()
    t_close = time.perf_counter() - t0
    t_writer += t_close
    if sys.stderr.isatty():
        print(file=sys.stderr)
    total = time.perf_counter() - t_start
    if writer.fault is not None:  # a flush that failed (the writer warns and goes on)
        raise RuntimeError(f"writer failed: {writer.fault}")

    parts = {t: sorted((path / t).glob("r*.parquet")) for t in schema.TABLES}
    n_rows = row_groups = 0
    for p in parts["distributions"]:
        md = pq.ParquetFile(p).metadata
        n_rows += md.num_rows
        row_groups += md.num_row_groups
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return {
        "write_total_s": total,
        "write_in_writer_s": t_writer,
        "flushes": len(flush_times) + 1,
        "flush_median_s": statistics.median(flush_times) if flush_times else None,
        "flush_max_s": max(flush_times) if flush_times else None,
        "close_s": t_close,
        "part_files": sum(len(v) for v in parts.values()),
        "distribution_parts": [p.name for p in parts["distributions"]],
        "distribution_rows": n_rows,
        "distribution_row_groups": row_groups,
        "run_size_mb": size / 1e6,
    }


def time_page(path: Path, kind: str) -> dict:
    """Time the Distributions page's reader calls: 1 warm-up, then WARM_REPS repetitions."""
    names = ("open_run", "layers", "steps", "distributions_one_layer", "distributions_one_step")
    samples: dict[str, list[float]] = {k: [] for k in (*names, "page")}
    rows: dict[str, int] = {}
    picked: dict = {}
    for _rep in range(1 + WARM_REPS):
        t: dict[str, float] = {}
        t0 = time.perf_counter()
        r = diagnostics.open_run(path)
        t["open_run"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        layers = r.layers(kind)
        t["layers"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        steps = r.steps(kind)
        t["steps"] = time.perf_counter() - t0

        if not picked:  # the same layer and step in every repetition
            picked = {"layer": layers[len(layers) // 2], "step": steps[-1]}  # the slider starts at the last step

        t0 = time.perf_counter()
        one = r.distributions(kind, layers=[picked["layer"]])
        t["distributions_one_layer"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        at_step = r.distributions(kind, steps=[picked["step"]])
        t["distributions_one_step"] = time.perf_counter() - t0

        t["page"] = sum(t[k] for k in names)
        for k, v in t.items():
            samples[k].append(v)
        rows = {"layers": len(layers), "steps": len(steps), "distributions_one_layer": len(one),
                "distributions_one_step": len(at_step)}
    return {
        "kind": kind,
        **picked,
        "rows": rows,
        "first_s": {k: v[0] for k, v in samples.items()},
        "warm_s": {k: v[1:] for k, v in samples.items()},
        "warm_median_s": {k: statistics.median(v[1:]) for k, v in samples.items()},
    }


# ---------------------------------------------------------------------------------
# Report


def print_table(cfg: dict, w: dict, q: dict) -> None:
    def ms(s: float) -> str:
        return f"{s * 1000:9.1f} ms" if s < 10 else f"{s:9.2f} s "

    print(f"\nstore_scale: {cfg['layers']} layers x {cfg['steps']} steps x {len(cfg['kinds'])} kinds "
          f"({', '.join(cfg['kinds'])}), flush every {cfg['flush_every']} steps")
    print(f"machine: {platform.node()} · {platform.processor() or platform.machine()} · "
          f"{os.cpu_count()} CPUs · python {platform.python_version()}\n")
    print(f"{'write':<42}{'value':>14}")
    print("-" * 56)
    print(f"{'write time total':<42}{w['write_total_s']:>12.2f} s")
    print(f"{'  of which in RunWriter (add/flush/close)':<42}{w['write_in_writer_s']:>12.2f} s")
    print(f"{'  flush: median / max (incl. compaction)':<42}"
          f"{(w['flush_median_s'] or 0) * 1000:>6.0f}/{(w['flush_max_s'] or 0) * 1000:.0f} ms")
    print(f"{'part files at the end':<42}{w['part_files']:>14d}")
    print(f"{'  distribution rows / row groups':<42}{w['distribution_rows']:>8d} / {w['distribution_row_groups']}")
    print(f"{'run size on disk':<42}{w['run_size_mb']:>11.1f} MB")

    print(f"\nread, kind={q['kind']!r}, layer={q['layer']!r}, step={q['step']} "
          f"(first call, then median of {WARM_REPS} warm)")
    print(f"{'call':<44}{'rows':>8}{'first':>13}{'warm median':>14}{'target':>9}  result")
    print("-" * 96)
    labels = {
        "open_run": "open_run(path)",
        "layers": f"r.layers({q['kind']!r})",
        "steps": f"r.steps({q['kind']!r})",
        "distributions_one_layer": "r.distributions(kind, layers=[layer])",
        "distributions_one_step": "r.distributions(kind, steps=[step])",
    }
    for k, label in labels.items():
        n = q["rows"].get(k, "")
        print(f"{label:<44}{n!s:>8}{ms(q['first_s'][k]):>13}{ms(q['warm_median_s'][k]):>14}")
    print("-" * 96)
    page = q["warm_median_s"]["page"]
    verdict = "PASS" if page < TARGET_S else "FAIL"
    print(f"{'distributions page (sum)':<44}{'':>8}{ms(q['first_s']['page']):>13}{ms(page):>14}"
          f"{TARGET_S:>7.1f} s  {verdict}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=200, help="layers per kind (default 200)")
    ap.add_argument("--steps", type=int, default=2000, help="captured steps (default 2000)")
    ap.add_argument("--kinds", default=",".join(DEFAULT_KINDS),
                    help=f"comma-separated kinds (default {','.join(DEFAULT_KINDS)})")
    ap.add_argument("--flush-every", type=int, default=10, help="call writer.flush() every N steps (default 10)")
    ap.add_argument("--out", type=Path, default=None,
                    help="run directory to write (must not exist or be empty; kept). "
                         "Default: a temporary directory, deleted at the end unless --keep")
    ap.add_argument("--keep", action="store_true", help="keep the temporary run directory")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures as JSON here")
    args = ap.parse_args(argv)

    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in schema.KINDS]
    if unknown or not kinds:
        ap.error(f"--kinds: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(schema.KINDS)}")
    if args.layers < 1 or args.steps < 1 or args.flush_every < 1:
        ap.error("--layers, --steps and --flush-every must be at least 1")

    if args.out is not None:
        if args.out.exists() and any(args.out.iterdir()):
            ap.error(f"--out {args.out} is not empty; a RunWriter would append to the run there")
        run_dir, cleanup = args.out, False
    else:
        run_dir, cleanup = Path(tempfile.mkdtemp(prefix="store_scale-")) / "run", not args.keep

    cfg = {"layers": args.layers, "steps": args.steps, "kinds": kinds, "flush_every": args.flush_every,
           "run_dir": str(run_dir)}
    try:
        w = write_run(run_dir, args.layers, args.steps, kinds, args.flush_every)
        q = time_page(run_dir, "activation" if "activation" in kinds else kinds[0])
    finally:
        if cleanup:
            shutil.rmtree(run_dir.parent, ignore_errors=True)

    print_table(cfg, w, q)
    page = q["warm_median_s"]["page"]
    passed = page < TARGET_S
    if not cleanup:
        print(f"\nrun kept in {run_dir}")
    if args.json:
        result = {
            "config": cfg,
            "machine": {"node": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
                        "platform": platform.platform()},
            "write": w,
            "read": q,
            "page_s": page,
            "target_s": TARGET_S,
            "result": "PASS" if passed else "FAIL",
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
