"""What every health rule shares: the `Finding` it returns, the run readers it uses and the
loss-function families it recognises.

Every reader returns an empty frame (or None) when the run lacks the data, so a rule
stays silent instead of failing. Thresholds belong to the rule's own module; the few
shared by rules of different modules are here.

Example::

    from diagnostics.health.common import dist, make_finding
    acts = dist(run, "activation")   # rank 0 only, sorted by layer and step; empty if none
"""

from __future__ import annotations

import contextlib
import math
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from diagnostics import schema

SEVERITIES = ("error", "warning", "info")

# Pooled labels needed before a label distribution is trusted (outputs vs labels, baselines).
MIN_POOLED_LABELS = 30
# Loss vs the trivial baseline: "near" means above this fraction of the baseline.
BASELINE_NEAR_FRACTION = 0.9
MIN_LOSS_STEPS = 10

NORM_TYPES = ("BatchNorm", "LayerNorm", "GroupNorm", "InstanceNorm", "LocalResponseNorm", "RMSNorm")
CE_LOSSES = {"CrossEntropyLoss", "NLLLoss", "cross_entropy", "nll_loss"}
BINARY_LOSSES = {"BCEWithLogitsLoss", "BCELoss", "binary_cross_entropy_with_logits", "binary_cross_entropy"}
MSE_LOSSES = schema.MSE_LOSSES


@dataclass(frozen=True)
class Finding:
    """One problem a rule found: where (layer, steps), the evidence, and what to try.

    Example::

        Finding(rule="dead_units", severity="warning", layer="fc1", step_start=0, step_end=8,
                message="fc1: 94% of units never fire on 5 consecutive captures (steps 0-8).",
                advice="Lower the learning rate ...", evidence={"dead_frac": 0.94},
                reference="Lu et al. 2019, Dying ReLU and Initialization")
    """

    rule: str
    severity: str
    layer: str | None
    step_start: int | None
    step_end: int | None
    message: str
    advice: str
    evidence: dict = field(default_factory=dict)
    reference: str = ""

    def location(self) -> str:
        """Where, in words: 'layer fc1, steps 0–8', 'step 3', '' when neither is known; an
        output stream ('train/class': the outputs and labels of a split, not a layer) reads
        'train outputs (class)'."""
        steps = ("" if self.step_start is None else f"step {self.step_start}"
                 if self.step_end in (None, self.step_start) else f"steps {self.step_start}–{self.step_end}")
        split, _, what = (self.layer or "").partition("/")
        where = (f"{split} outputs ({what})" if what in schema.OUTPUT_LAYER_KINDS else
                 f"layer {self.layer}" if self.layer else "")
        return ", ".join(x for x in (where, steps) if x)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (numpy numbers become Python numbers, non-finite ones None)."""
        return jsonable(asdict(self))


def jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray, pd.Series)):
        return [jsonable(v) for v in list(obj)]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if obj is None or isinstance(obj, str):
        return obj
    return str(obj)


def make_finding(rule: str, severity: str, layer: str | None, steps: tuple, message: str, advice: str,
             evidence: dict, reference: str) -> Finding:
    start, end = steps
    return Finding(rule=rule, severity=severity, layer=layer,
                   step_start=None if start is None else int(start), step_end=None if end is None else int(end),
                   message=message, advice=advice, evidence=jsonable(evidence), reference=reference)


# ---------------------------------------------------------------------------------
# Reading helpers: every one returns an empty frame / None when the data is missing.


# One pass of the rules reads the same tables many times (35 rules: ~150 queries, 2 s a run on the
# demo): `reads_cached(run)` keeps what `dist`, `scalar` and `layer_order` read for that pass only
# (a live run changes between passes), and hands each caller its own copy.
_READS: ContextVar[dict | None] = ContextVar("health_reads", default=None)


@contextlib.contextmanager
def reads_cached(run):
    """Within the block, `dist`, `scalar` and `layer_order` read each table of `run` once."""
    token = _READS.set({})
    try:
        yield
    finally:
        _READS.reset(token)


def _cached(run, key: tuple, read):
    cache = _READS.get()
    if cache is None:
        return read()
    key = (id(run), *key)
    if key not in cache:
        cache[key] = read()
    value = cache[key]
    return value.copy() if isinstance(value, pd.DataFrame) else list(value) if isinstance(value, list) else value


def dist(run, kind: str) -> pd.DataFrame:
    return _cached(run, ("dist", kind), lambda: _read_dist(run, kind))


def _read_dist(run, kind: str) -> pd.DataFrame:
    try:
        d = run.distributions(kind)
    except Exception:
        return pd.DataFrame()
    if d.empty:
        return d
    if "rank" in d and d["rank"].nunique() > 1:
        d = d[d["rank"] == d["rank"].min()]
    return d.sort_values(["layer", "step"]).reset_index(drop=True)


SKIPPED = "amp_skipped"  # the scalar hooks/amp.py writes at a step the GradScaler skipped


def scalar(run, name: str) -> pd.DataFrame:
    """One scalar's (step, value), ranks averaged, without the steps a GradScaler skipped
    (`amp_skipped`: Inf/NaN gradients, no update; their loss is no training step's)."""
    return _cached(run, ("scalar", name), lambda: _read_scalar(run, name))


def _read_scalar(run, name: str) -> pd.DataFrame:
    wanted = [name] if name == SKIPPED else [name, SKIPPED]
    if _READS.get() is not None:  # a pass of the rules: every scalar read once, then filtered
        every = _cached(run, ("scalars",), lambda: _all_scalars(run))
        s = every[every["name"].isin(wanted)] if every is not None else None
    else:
        s = _all_scalars(run, wanted)
    if s is None:
        return pd.DataFrame(columns=["step", "value"])
    if name != SKIPPED and not s.empty:
        skipped = s["name"] == SKIPPED
        s = s[~skipped & ~s["step"].isin(s.loc[skipped & (s["value"] > 0), "step"])]
    if s.empty:
        return pd.DataFrame(columns=["step", "value"])
    s = s.groupby("step", as_index=False)["value"].mean()  # ranks: their mean
    return s.sort_values("step").reset_index(drop=True)


def _all_scalars(run, names: list[str] | None = None) -> pd.DataFrame | None:
    try:
        return run.scalars(names=names) if names is not None else run.scalars()
    except Exception:
        return None


def layer_order(run, kind: str, present) -> list[str]:
    order = _cached(run, ("layers", kind), lambda: _read_layers(run, kind))
    present = set(present)
    return [l for l in order if l in present] + sorted(present - set(order))


def _read_layers(run, kind: str) -> list[str]:
    try:
        return list(run.layers(kind))
    except Exception:
        return []


def module_types(run) -> dict[str, str]:
    return {m.get("name"): m.get("type", "") for m in run.manifest.get("modules", []) or []}


def module_params(run) -> dict[str, int]:
    return {m.get("name"): int(m.get("params", 0) or 0) for m in run.manifest.get("modules", []) or []}


def runs_of_true(mask: np.ndarray) -> list[tuple[int, int]]:
    """Maximal runs of True as (first index, last index)."""
    runs, start = [], None
    for i, v in enumerate(mask):
        if v and start is None:
            start = i
        elif not v and start is not None:
            runs.append((start, i - 1))
            start = None
    if start is not None:
        runs.append((start, len(mask) - 1))
    return runs


def last_captures(d: pd.DataFrame, min_count: int = MIN_POOLED_LABELS) -> pd.DataFrame:
    """Rows of the captures in the last third of the captured step range, reaching back one
    capture at a time until they pool `min_count` values. By steps, not by the number of
    captures: the automatic schedule captures at powers of two, so the last third of the
    captures of a 90-step run would reach back to step 16, long before the model settled."""
    steps = sorted(d["step"].unique())
    if not steps:
        return d
    late_from = steps[0] + 2 * (steps[-1] - steps[0]) / 3
    first = next(i for i, s in enumerate(steps) if s >= late_from)
    counts = d.groupby("step")["count"].sum() if "count" in d else pd.Series(1, index=steps)
    while first > 0 and counts.loc[steps[first:]].sum() < min_count:
        first -= 1
    return d[d["step"].isin(steps[first:])]


def histogram(row) -> np.ndarray:
    h = row["hist_counts"]
    return np.asarray([] if h is None else list(h), dtype=np.float64)


def class_counts(d: pd.DataFrame) -> np.ndarray | None:
    hists = [histogram(r) for _, r in d.iterrows()]
    hists = [h for h in hists if h.size]
    if not hists:
        return None
    width = max(h.size for h in hists)
    return np.sum([np.pad(h, (0, width - h.size)) for h in hists], axis=0)


def class_name(run, c: int) -> str:
    names = run.manifest.get("class_names") or []
    return str(names[c]) if c < len(names) else str(c)


def pooled_moments(d: pd.DataFrame) -> tuple[float, float, int]:
    """Mean and std of the union of the summarised batches (count-weighted)."""
    d = d[(d["count"] > 0) & np.isfinite(d["mean"]) & np.isfinite(d["std"])]
    n = d["count"].sum()
    if n == 0:
        return math.nan, math.nan, 0
    mean = float((d["count"] * d["mean"]).sum() / n)
    second = float((d["count"] * (d["std"] ** 2 + d["mean"] ** 2)).sum() / n)
    return mean, math.sqrt(max(second - mean ** 2, 0.0)), int(n)


def last_loss(run) -> tuple[float, int, int] | None:
    loss = scalar(run, "loss")
    loss = loss[np.isfinite(loss["value"].astype(float))]
    if len(loss) < MIN_LOSS_STEPS:
        return None
    tail = loss.iloc[-max(5, len(loss) // 10):]
    return float(tail["value"].median()), int(tail["step"].iloc[0]), int(tail["step"].iloc[-1])

