"""Health checks: rules that read a recorded run and say what looks wrong, where, and what to try.

Each rule is a small function `rule_xxx(run) -> list[Finding]` listed in `RULES`. A rule
reads only what the run recorded; when its data is missing (no activations captured, no
`val/loss` logged, a regression run for a classification rule) it returns no finding,
never an exception. Thresholds are module constants named after what they bound, and
each rule's docstring gives its threshold and where it comes from.

Example::

    import diagnostics
    from diagnostics.health import check
    for f in check(diagnostics.open_run("runs/exp1")):
        print(f.severity, f.rule, f.layer, f.step_start, f.message)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

SEVERITIES = ("error", "warning", "info")

# Dead units and saturation: share of units / values, held on this many consecutive captures.
DEAD_FRAC_THRESHOLD = 0.5
SATURATED_FRAC_THRESHOLD = 0.5
MIN_CONSECUTIVE_CAPTURES = 3
# Gradient (w.r.t. module outputs) RMS ratio between the first and the last layer.
GRADIENT_DEPTH_RATIO = 100.0
EARLY_CAPTURES = 3
# Global gradient norm: a spike stands GRAD_SPIKE_Z robust stds (of log norm) above its
# neighbours' median and at least GRAD_SPIKE_MIN_FACTOR times it; warning from GRAD_SPIKE_FACTOR.
GRAD_SPIKE_FACTOR = 10.0
GRAD_SPIKE_MIN_FACTOR = 3.0
GRAD_SPIKE_Z = 3.0
GRAD_SPIKE_MAD_FLOOR = 0.05
GRAD_SPIKE_WARMUP_STEPS = 10
GRAD_SPIKE_WINDOW = 50
# Activation std of the last parametrised layer over the first one, at the first capture.
ACTIVATION_DEPTH_RATIO = 10.0
MIN_DEPTH_LAYERS = 3
# Update-to-weight ratio: healthy around 1e-3 (cs231n).
UPDATE_RATIO_LOW = 1e-5
UPDATE_RATIO_HIGH = 1e-1
# Output vs label: predicted share outside [share / 3, share * 3].
CLASS_SHARE_FACTOR = 3.0
MIN_POOLED_LABELS = 30
MIN_EXPECTED_COUNT = 5
REGRESSION_STD_RATIO = 0.1
REGRESSION_MEAN_GAP_STDS = 1.0
# Loss vs the trivial baseline: "near" means above this fraction of the baseline.
BASELINE_NEAR_FRACTION = 0.9
MIN_LOSS_STEPS = 10
# Overfitting: validation points needed, and how far val loss must rise above its best.
MIN_VAL_POINTS = 5
VAL_RISE_FRACTION = 0.05
# Label noise: a suspect loses in >= 80% of its late records with a median margin below -2
# logits; suspects as a share of the samples (calibrated on flipped digits and the OCT simulator).
LABEL_NOISE_LATE_WRONG = 0.8
LABEL_NOISE_MARGIN = -2.0
LABEL_NOISE_MIN_SHARE = 0.02
LABEL_NOISE_WARN_SHARE = 0.03
LABEL_NOISE_MAX_SHARE = 0.30  # above this the model has not learned yet: not label noise
# Inputs left unnormalised: first module's output (or the input itself) at the first capture.
INPUT_SCALE_THRESHOLD = 10.0
INPUT_RMS_THRESHOLD = 3.0

_NORM_TYPES = ("BatchNorm", "LayerNorm", "GroupNorm", "InstanceNorm", "LocalResponseNorm", "RMSNorm")
_CE_LOSSES = {"CrossEntropyLoss", "NLLLoss", "cross_entropy", "nll_loss"}
_BINARY_LOSSES = {"BCEWithLogitsLoss", "BCELoss", "binary_cross_entropy_with_logits", "binary_cross_entropy"}
_MSE_LOSSES = {"MSELoss", "mse_loss"}


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

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (numpy numbers become Python numbers, non-finite ones None)."""
        return _jsonable(asdict(self))


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray, pd.Series)):
        return [_jsonable(v) for v in list(obj)]
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


def _finding(rule: str, severity: str, layer: str | None, steps: tuple, message: str, advice: str,
             evidence: dict, reference: str) -> Finding:
    start, end = steps
    return Finding(rule=rule, severity=severity, layer=layer,
                   step_start=None if start is None else int(start), step_end=None if end is None else int(end),
                   message=message, advice=advice, evidence=_jsonable(evidence), reference=reference)


# ---------------------------------------------------------------------------------
# Reading helpers: every one returns an empty frame / None when the data is missing.


def _dist(run, kind: str) -> pd.DataFrame:
    try:
        d = run.distributions(kind)
    except Exception:
        return pd.DataFrame()
    if d.empty:
        return d
    if "rank" in d and d["rank"].nunique() > 1:
        d = d[d["rank"] == d["rank"].min()]
    return d.sort_values(["layer", "step"]).reset_index(drop=True)


def _scalar(run, name: str) -> pd.DataFrame:
    try:
        s = run.scalars(names=[name])
    except Exception:
        return pd.DataFrame(columns=["step", "value"])
    if s.empty:
        return pd.DataFrame(columns=["step", "value"])
    s = s.groupby("step", as_index=False)["value"].mean()  # ranks: their mean
    return s.sort_values("step").reset_index(drop=True)


def _order(run, kind: str, present) -> list[str]:
    try:
        order = run.layers(kind)
    except Exception:
        order = []
    present = set(present)
    return [l for l in order if l in present] + sorted(present - set(order))


def _module_types(run) -> dict[str, str]:
    return {m.get("name"): m.get("type", "") for m in run.manifest.get("modules", []) or []}


def _module_params(run) -> dict[str, int]:
    return {m.get("name"): int(m.get("params", 0) or 0) for m in run.manifest.get("modules", []) or []}


def _runs_of_true(mask: np.ndarray) -> list[tuple[int, int]]:
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


def _last_captures(d: pd.DataFrame) -> pd.DataFrame:
    """Rows of the last third of the capture steps (at least 3, or all there are)."""
    steps = sorted(d["step"].unique())
    keep = steps[-max(3, math.ceil(len(steps) / 3)):]
    return d[d["step"].isin(keep)]


def _hist(row) -> np.ndarray:
    h = row["hist_counts"]
    return np.asarray([] if h is None else list(h), dtype=np.float64)


def _class_counts(d: pd.DataFrame) -> np.ndarray | None:
    hists = [_hist(r) for _, r in d.iterrows()]
    hists = [h for h in hists if h.size]
    if not hists:
        return None
    width = max(h.size for h in hists)
    return np.sum([np.pad(h, (0, width - h.size)) for h in hists], axis=0)


def _class_name(run, c: int) -> str:
    names = run.manifest.get("class_names") or []
    return str(names[c]) if c < len(names) else str(c)


def _pooled_moments(d: pd.DataFrame) -> tuple[float, float, int]:
    """Mean and std of the union of the summarised batches (count-weighted)."""
    d = d[(d["count"] > 0) & np.isfinite(d["mean"]) & np.isfinite(d["std"])]
    n = d["count"].sum()
    if n == 0:
        return math.nan, math.nan, 0
    mean = float((d["count"] * d["mean"]).sum() / n)
    second = float((d["count"] * (d["std"] ** 2 + d["mean"] ** 2)).sum() / n)
    return mean, math.sqrt(max(second - mean ** 2, 0.0)), int(n)


# ---------------------------------------------------------------------------------
# Rules


def rule_nonfinite(run) -> list[Finding]:
    """NaN or Inf anywhere (loss, gradient norm, any captured summary): always an error.

    Threshold: any non-finite value. Where: `Run.first_nonfinite()`, the first step and,
    in forward order, the first module or parameter that held one.
    """
    try:
        first = run.first_nonfinite()
    except Exception:
        return []
    if not first:
        return []
    where = (f"{first['kind']} of {first['layer']}" if "layer" in first else f"the {first.get('scalar', 'loss')}")
    counts = (f" ({first.get('nan_count', 0)} NaN, {first.get('inf_count', 0)} Inf)" if "layer" in first else "")
    step = first.get("step")
    return [_finding(
        "nonfinite", "error", first.get("layer"), (step, first.get("capture_step", step)),
        f"NaN/Inf first appears at step {step} in {where}{counts}.",
        "Lower the learning rate (or add warm-up), clip gradients (torch.nn.utils.clip_grad_norm_), "
        "normalise the inputs, and compute the loss from logits (CrossEntropyLoss, BCEWithLogitsLoss) "
        "rather than log(softmax) by hand; with AMP, use a GradScaler.",
        dict(first), "PyTorch docs: torch.autograd.detect_anomaly; Goodfellow et al. 2016, Deep Learning §4.1",
    )]


def _sustained(run, column: str, threshold: float, rule: str, what: str, advice: str,
               reference: str) -> list[Finding]:
    d = _dist(run, "activation")
    if d.empty or column not in d:
        return []
    findings = []
    for layer in _order(run, "activation", d["layer"].unique()):
        rows = d[d["layer"] == layer].sort_values("step")
        values = rows[column].to_numpy(dtype=np.float64)
        if np.isnan(values).all():
            continue
        # captures holding NaN/Inf belong to the nonfinite rule (ReLU(NaN) is never positive)
        finite = (rows["nan_count"].fillna(0) + rows["inf_count"].fillna(0)).to_numpy() == 0
        runs = [r for r in _runs_of_true((np.nan_to_num(values, nan=-1.0) >= threshold) & finite)
                if r[1] - r[0] + 1 >= MIN_CONSECUTIVE_CAPTURES]
        if not runs:
            continue
        i, j = max(runs, key=lambda r: (r[1] - r[0], -r[0]))
        seg = values[i:j + 1]
        steps = rows["step"].to_numpy()
        severity = "error" if rule == "dead_units" and seg.min() >= 0.99 else "warning"
        findings.append(_finding(
            rule, severity, layer, (steps[i], steps[j]),
            f"{layer}: {seg.mean():.0%} of {what} on average (min {seg.min():.0%}, max {seg.max():.0%}) "
            f"on {j - i + 1} consecutive captures, steps {steps[i]}-{steps[j]} (threshold {threshold:.0%}).",
            advice,
            {column + "_mean": seg.mean(), column + "_min": seg.min(), column + "_max": seg.max(),
             "captures": j - i + 1, "steps": steps[i:j + 1].tolist(), "threshold": threshold},
            reference,
        ))
    return findings


def rule_dead_units(run) -> list[Finding]:
    """ReLU-family layers whose units never fire: `dead_frac` ≥ 0.5 on ≥ 3 consecutive
    captures (error when every unit is dead). A dead unit passes no gradient, so it never
    recovers. Reference: Lu et al. 2019, "Dying ReLU and Initialization"; cs231n notes
    ("as much as 40% of your network can be dead")."""
    return _sustained(
        run, "dead_frac", DEAD_FRAC_THRESHOLD, "dead_units", "units never positive over the batch",
        "Check the initialisation (He/Kaiming for ReLU, biases at zero or small positive), lower the "
        "learning rate or warm it up, add normalisation (BatchNorm/LayerNorm) before the activation, "
        "or use LeakyReLU/GELU so that units can recover.",
        "Lu et al. 2019, Dying ReLU and Initialization (arXiv:1903.06733); cs231n, Neural Networks Part 1",
    )


def rule_saturation(run) -> list[Finding]:
    """tanh/sigmoid-family layers stuck at their bounds: `saturated_frac` ≥ 0.5 on ≥ 3
    consecutive captures. Saturated units have a near-zero derivative and stop learning.
    Reference: Glorot & Bengio 2010, "Understanding the difficulty of training deep
    feedforward neural networks" (saturation of sigmoid layers)."""
    return _sustained(
        run, "saturated_frac", SATURATED_FRAC_THRESHOLD, "saturation", "values within 1% of the bounds",
        "Use Xavier/Glorot initialisation for tanh/sigmoid, normalise the inputs and add normalisation "
        "before the activation, lower the learning rate, or switch hidden layers to ReLU/GELU "
        "(keep sigmoid only at the output, with a logits-based loss).",
        "Glorot & Bengio 2010, Understanding the difficulty of training deep feedforward neural networks",
    )


def rule_gradient_depth(run) -> list[Finding]:
    """Vanishing or exploding gradients across depth: the norm of the gradient w.r.t. the
    first module's output over that of the last module (per sample: same batch), median
    over the first 3 captures,
    below 1/100 (vanishing) or above 100 (exploding). Reference: Glorot & Bengio 2010;
    He et al. 2015 (backward-propagation case of their initialisation); Bengio et al. 1994."""
    d = _dist(run, "gradient")
    if d.empty:
        return []
    d = d[np.isfinite(d["std"]) & np.isfinite(d["mean"]) & (d["count"] > 0)]
    # the whole tensor's norm (the batch is the same at one step, so: the per-sample norm);
    # an element's RMS would also shrink with the layer's width (a conv map vs 10 logits)
    d = d.assign(rms=np.sqrt(d["count"] * (d["std"] ** 2 + d["mean"] ** 2)))
    d = d[d["rms"] > 0]
    layers = _order(run, "gradient", d["layer"].unique())
    if len(layers) < MIN_DEPTH_LAYERS:
        return []
    first, last = layers[0], layers[-1]
    ratios, steps = [], []
    for step in sorted(d["step"].unique())[:EARLY_CAPTURES]:
        at = d[d["step"] == step].set_index("layer")["rms"]
        if first in at and last in at:
            ratios.append(float(at[first] / at[last]))
            steps.append(int(step))
    if not ratios:
        return []
    ratio = float(np.median(ratios))
    at0 = d[d["step"] == steps[0]].set_index("layer")["rms"]
    evidence = {"ratio_first_to_last": ratio, "ratios": ratios, "steps": steps,
                "norm_by_layer": {l: float(at0[l]) for l in layers if l in at0}, "threshold": GRADIENT_DEPTH_RATIO}
    ref = "Glorot & Bengio 2010; He et al. 2015, Delving Deep into Rectifiers; Bengio et al. 1994"
    if ratio < 1 / GRADIENT_DEPTH_RATIO:
        return _defer_to_input_scale(run, _finding(
            "vanishing_gradients", "warning", first, (steps[0], steps[-1]),
            f"The gradient reaching {first} is {1 / ratio:.3g}x smaller (norm) than at {last} "
            f"at the first captures (steps {steps[0]}-{steps[-1]}; threshold {GRADIENT_DEPTH_RATIO:.0f}x): "
            "the early layers barely learn.",
            "Use He/Kaiming initialisation for ReLU layers (Xavier for tanh), replace sigmoid/tanh hidden "
            "activations by ReLU/GELU, add normalisation (BatchNorm/LayerNorm) or residual connections.",
            evidence, ref))
    if ratio > GRADIENT_DEPTH_RATIO:
        return _defer_to_input_scale(run, _finding(
            "exploding_gradients", "warning", first, (steps[0], steps[-1]),
            f"The gradient reaching {first} is {ratio:.3g}x larger (norm) than at {last} "
            f"at the first captures (steps {steps[0]}-{steps[-1]}; threshold {GRADIENT_DEPTH_RATIO:.0f}x).",
            "Check the initialisation (He/Kaiming scaled to fan-in, not larger), add normalisation, clip "
            "gradients (clip_grad_norm_) and lower the learning rate.",
            evidence, ref))
    return []


def _defer_to_input_scale(run, finding: Finding) -> list[Finding]:
    """A depth/initialisation finding on a run whose inputs are unnormalised: the input
    scale explains it (a BatchNorm after a first layer fed raw pixels divides its gradient
    by the pre-norm std), so it becomes info and points at the input_scale finding."""
    scale = rule_input_scale(run)
    if not scale:
        return [finding]
    return [replace(
        finding, severity="info",
        message=finding.message + f" The unnormalised inputs at {scale[0].layer} explain this (see input_scale).",
        advice="Normalise the inputs first (input_scale finding) and check again; change the initialisation "
               "or the architecture only if this persists.",
        evidence={**finding.evidence, "deferred_to": "input_scale"})]


def _grad_spikes(values: np.ndarray, steps: np.ndarray) -> list[tuple[int, float, float, float]]:
    """(step, norm, local median, robust z) of each step that stands out from its neighbours."""
    logv = np.log(np.maximum(values, 1e-30))
    h = GRAD_SPIKE_WINDOW // 2
    spikes = []
    for i in range(GRAD_SPIKE_WARMUP_STEPS, len(values)):
        w = np.r_[logv[max(0, i - h):i], logv[i + 1:i + 1 + h]]
        med = float(np.median(w))
        mad = max(1.4826 * float(np.median(np.abs(w - med))), GRAD_SPIKE_MAD_FLOOR)
        z = (logv[i] - med) / mad
        if z >= GRAD_SPIKE_Z and values[i] >= GRAD_SPIKE_MIN_FACTOR * math.exp(med):
            spikes.append((int(steps[i]), float(values[i]), math.exp(med), float(z)))
    return spikes


def rule_grad_norm_spikes(run) -> list[Finding]:
    """Global gradient-norm spikes against the run's own noise: a step (after 10 of warm-up)
    whose log norm lies ≥ 3 robust standard deviations (1.4826·MAD, floored at 0.05) above
    the median of its neighbours (25 steps either side, the step left out) AND ≥ 3x that
    median. Info from 3x; warning when one reaches 10x. Neighbours on both sides: a norm
    that climbs steadily while the model learns (every healthy run's first epoch) is no
    spike. Measured on the demo runs (examples/oct_cnn.py: its 4x spike at step 115 has
    z = 3.5; healthy digits runs peak at z = 2.6, 3.3x). References: Hampel 1974 and Leys
    et al. 2013 (median ± 3·MAD outlier rule); Pascanu et al. 2013 (gradient clipping)."""
    s = _scalar(run, "grad_norm")
    s = s[np.isfinite(s["value"].astype(float))]
    if len(s) <= GRAD_SPIKE_WARMUP_STEPS:
        return []
    spikes = _grad_spikes(s["value"].to_numpy(float), s["step"].to_numpy())
    if not spikes:
        return []
    clipped = _scalar(run, "grad_clipped")
    clipped_steps = set(clipped.loc[clipped["value"] > 0.5, "step"].astype(int)) if not clipped.empty else set()
    worst = max(spikes, key=lambda x: x[1] / x[2])
    n_clipped = sum(st in clipped_steps for st, *_ in spikes)
    # NaN: not detectable (several ranks: averaging changes gradients as clipping would)
    clip_note = ("clipping unknown" if clipped.empty or clipped["value"].isna().all()
                 else f"{n_clipped} of them clipped")
    severe = worst[1] / worst[2] >= GRAD_SPIKE_FACTOR
    return [_finding(
        "grad_norm_spikes", "warning" if severe else "info", None, (spikes[0][0], spikes[-1][0]),
        f"{len(spikes)} step(s) with a gradient norm far above its neighbours' median "
        f"(≥ {GRAD_SPIKE_MIN_FACTOR:g}x and ≥ {GRAD_SPIKE_Z:g} robust stds); the worst at step {worst[0]}: "
        f"{worst[1]:.3g} vs median {worst[2]:.3g} ({worst[1] / worst[2]:.1f}x; {clip_note}).",
        ("Clip gradients (torch.nn.utils.clip_grad_norm_, max_norm around the median norm), lower the "
         "learning rate or add warm-up, and look for outlier batches or labels at those steps." if severe else
         "Look at the batches of those steps (outliers, wrong labels); if spikes recur or grow, clip gradients "
         "(torch.nn.utils.clip_grad_norm_) or lower the learning rate."),
        {"spikes": [{"step": st, "grad_norm": v, "running_median": m, "z": z} for st, v, m, z in spikes[:20]],
         "count": len(spikes), "clipped": n_clipped, "factor": GRAD_SPIKE_FACTOR,
         "min_factor": GRAD_SPIKE_MIN_FACTOR, "z_threshold": GRAD_SPIKE_Z},
        "Hampel 1974; Leys et al. 2013, Detecting outliers (median absolute deviation); Pascanu et al. 2013",
    )]


def rule_activation_scale_depth(run) -> list[Finding]:
    """Activation scale drifting across depth at initialisation: the std of the last hidden
    parametrised layer's output over the first one's, at the first capture, below 1/10 or
    above 10 (with ≥ 3 parametrised layers; the output head is left out, since small logits
    at initialisation are a deliberate choice). A good initialisation keeps the variance of
    activations constant across layers. Reference: Glorot & Bengio 2010 (Xavier);
    He et al. 2015 (Kaiming)."""
    d = _dist(run, "activation")
    if d.empty:
        return []
    step0 = int(d["step"].min())
    at = d[(d["step"] == step0) & np.isfinite(d["std"])].set_index("layer")["std"]
    params = _module_params(run)
    layers = [l for l in _order(run, "activation", at.index) if params.get(l, 0) > 0]
    if len(layers) < MIN_DEPTH_LAYERS:
        return []
    layers = layers[:-1]
    first, last = layers[0], layers[-1]
    if at[first] <= 0:
        return []
    ratio = float(at[last] / at[first])
    evidence = {"ratio_last_to_first": ratio, "std_by_layer": {l: float(at[l]) for l in layers},
                "step": step0, "threshold": ACTIVATION_DEPTH_RATIO}
    ref = "Glorot & Bengio 2010; He et al. 2015, Delving Deep into Rectifiers"
    if ratio < 1 / ACTIVATION_DEPTH_RATIO or ratio > ACTIVATION_DEPTH_RATIO:
        verb = "shrinks" if ratio < 1 else "grows"
        factor = 1 / ratio if ratio < 1 else ratio
        if not math.isfinite(factor):
            return []
        return _defer_to_input_scale(run, _finding(
            "activation_scale_depth", "warning", last, (step0, step0),
            f"At step {step0} the activation std {verb} {factor:.3g}x from {first} ({at[first]:.3g}) "
            f"to {last} ({at[last]:.3g}) across {len(layers)} layers (threshold {ACTIVATION_DEPTH_RATIO:.0f}x).",
            "Initialise for the activation: He/Kaiming (nn.init.kaiming_normal_) for ReLU, Xavier/Glorot "
            "for tanh/sigmoid; or add normalisation (BatchNorm/LayerNorm) between layers.",
            evidence, ref))
    return []


def rule_update_ratio(run) -> list[Finding]:
    """Update-to-weight ratio ‖Δw‖/‖w‖ far from ~1e-3: its median over captures below 1e-5
    (the layer barely moves) or above 1e-1 (the learning rate is too high for it), for
    trainable weight matrices and kernels (biases and norm scales left out: their norms
    start at 0 or 1). Reference: Karpathy's rule of thumb, cs231n, Neural Networks Part 3."""
    try:
        ratios = run.update_ratios()
    except Exception:
        return []
    if ratios.empty:
        return []
    params = {p.get("name"): p for p in run.manifest.get("parameters", []) or []}
    findings = []
    for layer in _order(run, "update", ratios["layer"].unique()):
        p = params.get(layer)
        if p is not None and (len(p.get("shape", [])) < 2 or p.get("requires_grad") is False):
            continue
        if p is None and not layer.endswith("weight"):
            continue
        rows = ratios[(ratios["layer"] == layer) & np.isfinite(ratios["ratio"])].sort_values("step")
        if "sampled" in rows:  # a zero measured on a sample says nothing (sparse updates miss it)
            rows = rows[~(rows["sampled"].astype(bool) & (rows["ratio"] == 0))]
        if len(rows) < 2:
            continue
        med = float(rows["ratio"].median())
        steps = rows["step"].astype(int)
        ev = {"median_ratio": med, "min_ratio": rows["ratio"].min(), "max_ratio": rows["ratio"].max(),
              "captures": len(rows), "low": UPDATE_RATIO_LOW, "high": UPDATE_RATIO_HIGH}
        ref = "Karpathy, cs231n Neural Networks Part 3 (update/weight ratio ~1e-3)"
        change = "nothing (the ratio is 0)" if med == 0 else f"only {med:.2g} of their norm"
        if med > UPDATE_RATIO_HIGH:
            findings.append(_finding(
                "update_ratio", "warning", layer, (steps.min(), steps.max()),
                f"{layer}: each optimizer step changes the weights by {med:.2g} of their norm (median over "
                f"{len(rows)} captures), far above the healthy ~1e-3 (threshold {UPDATE_RATIO_HIGH:g}).",
                "Lower the learning rate (or this layer's, with a parameter group), add warm-up and a decay "
                "schedule, and check that weight decay is not fighting a too-small initialisation.",
                ev, ref))
        elif med < UPDATE_RATIO_LOW:
            findings.append(_finding(
                "update_ratio", "warning", layer, (steps.min(), steps.max()),
                f"{layer}: each optimizer step changes the weights by {change} (median over "
                f"{len(rows)} captures), far below the healthy ~1e-3 (threshold {UPDATE_RATIO_LOW:g}).",
                "Raise the learning rate or use an adaptive optimizer (Adam); check for vanishing gradients "
                "(initialisation, saturating activations) and for a schedule that decayed too early.",
                ev, ref))
    return findings


def rule_output_vs_label(run) -> list[Finding]:
    """The model's outputs against the labels, pooled over the last third of the captures.
    Classification: a class predicted at < 1/3 or > 3x its label share (classes with at
    least 5 expected samples; ≥ 30 labels pooled). Regression: output std < 0.1x the label
    std, or means apart by > 1 label std. Reference: the practitioner's checklist (compare
    output and label distributions); Karpathy 2019, "A Recipe for Training Neural Networks"."""
    task = run.manifest.get("task")
    ref = "Karpathy 2019, A Recipe for Training Neural Networks"
    if task == "classification":
        out, lab = _dist(run, "output"), _dist(run, "label")
        if out.empty or lab.empty:
            return []
        out, lab = out[out["layer"] == "train/class"], lab[lab["layer"] == "train/class"]
        if out.empty or lab.empty:
            return []
        lab = _last_captures(lab)
        out = out[out["step"].isin(lab["step"].unique())]
        pred_counts, label_counts = _class_counts(out), _class_counts(lab)
        if pred_counts is None or label_counts is None or label_counts.sum() < MIN_POOLED_LABELS:
            return []
        width = max(pred_counts.size, label_counts.size)
        pred_counts, label_counts = np.pad(pred_counts, (0, width - pred_counts.size)), np.pad(
            label_counts, (0, width - label_counts.size))
        n = label_counts.sum()
        p, q = label_counts / n, pred_counts / max(pred_counts.sum(), 1)
        over, under = [], []
        for c in range(width):
            if p[c] * n >= MIN_EXPECTED_COUNT and q[c] < p[c] / CLASS_SHARE_FACTOR:
                under.append(c)
            elif q[c] * n >= MIN_EXPECTED_COUNT and q[c] > CLASS_SHARE_FACTOR * p[c]:
                over.append(c)
        if not over and not under:
            return []
        steps = sorted(lab["step"].unique())
        fmt = lambda cs: ", ".join(f"{_class_name(run, c)} ({q[c]:.0%} predicted vs {p[c]:.0%} labelled)" for c in cs)
        parts = ([f"over-predicted: {fmt(over)}"] if over else []) + ([f"under-predicted: {fmt(under)}"] if under else [])
        return [_finding(
            "output_vs_label", "warning", "train/class", (steps[0], steps[-1]),
            f"Over the last {len(steps)} captures (steps {steps[0]}-{steps[-1]}), {'; '.join(parts)} "
            f"(threshold {CLASS_SHARE_FACTOR:.0f}x).",
            "For class imbalance, weight the loss (CrossEntropyLoss(weight=...)) or resample the classes "
            "(WeightedRandomSampler), try a focal loss, and initialise the last bias to the log class prior; "
            "if the model predicts one class for everything, check the learning rate and the normalisation.",
            {"predicted_share": {_class_name(run, c): q[c] for c in range(width)},
             "label_share": {_class_name(run, c): p[c] for c in range(width)},
             "over_predicted": [_class_name(run, c) for c in over],
             "under_predicted": [_class_name(run, c) for c in under], "labels_pooled": n,
             "factor": CLASS_SHARE_FACTOR}, ref)]
    if task == "regression":
        out, lab = _dist(run, "output"), _dist(run, "label")
        if out.empty or lab.empty:
            return []
        out, lab = out[out["layer"] == "train/value"], lab[lab["layer"] == "train/value"]
        if out.empty or lab.empty:
            return []
        lab = _last_captures(lab)
        out = out[out["step"].isin(lab["step"].unique())]
        (om, osd, _), (lm, lsd, ln) = _pooled_moments(out), _pooled_moments(lab)
        if ln < MIN_POOLED_LABELS or not (lsd > 0) or not math.isfinite(om):
            return []
        steps = sorted(lab["step"].unique())
        problems = []
        if osd < REGRESSION_STD_RATIO * lsd:
            problems.append(f"the outputs' std {osd:.3g} is under {REGRESSION_STD_RATIO:g}x the labels' {lsd:.3g}")
        if abs(om - lm) > REGRESSION_MEAN_GAP_STDS * lsd:
            problems.append(f"the outputs' mean {om:.3g} is {abs(om - lm) / lsd:.1f} label stds from the labels' {lm:.3g}")
        if not problems:
            return []
        return [_finding(
            "output_vs_label", "warning", "train/value", (steps[0], steps[-1]),
            f"Over the last {len(steps)} captures (steps {steps[0]}-{steps[-1]}), {' and '.join(problems)}.",
            "Standardise the targets (subtract the mean, divide by the std) and initialise the output bias to "
            "the target mean; check the learning rate, and that the loss compares the right shapes "
            "(an (N,1) output against an (N,) target broadcasts).",
            {"output_mean": om, "output_std": osd, "label_mean": lm, "label_std": lsd}, ref)]
    return []


def _last_loss(run) -> tuple[float, int, int] | None:
    loss = _scalar(run, "loss")
    loss = loss[np.isfinite(loss["value"].astype(float))]
    if len(loss) < MIN_LOSS_STEPS:
        return None
    tail = loss.iloc[-max(5, len(loss) // 10):]
    return float(tail["value"].median()), int(tail["step"].iloc[0]), int(tail["step"].iloc[-1])


def rule_loss_vs_baseline(run) -> list[Finding]:
    """The last training loss (median of the last 10% of steps, at least 5) against the loss
    of a model that ignores its input. Classification with cross-entropy: the entropy of
    the label distribution (from the label class histograms); regression with MSE: the
    label variance. Warning at ≥ 90% of the baseline; info otherwise (how far below).
    Reference: Karpathy 2019, "A Recipe for Training Neural Networks" (verify loss @ init,
    input-independent baseline)."""
    task = run.manifest.get("task")
    loss_fn = run.manifest.get("loss_fn")
    last = _last_loss(run)
    if last is None:
        return []
    value, s0, s1 = last
    if task == "classification" and (loss_fn in _CE_LOSSES or (loss_fn in _BINARY_LOSSES
                                                                 and run.manifest.get("num_classes") == 2)):
        lab = _dist(run, "label")
        if lab.empty:
            return []
        counts = _class_counts(lab[lab["layer"] == "train/class"])
        if counts is None or counts.sum() < MIN_POOLED_LABELS:
            return []
        p = counts[counts > 0] / counts.sum()
        baseline, what = float(-(p * np.log(p)).sum()), "always predicting the class prior"
        unit = "nats"
    elif task == "regression" and loss_fn in _MSE_LOSSES:
        lab = _dist(run, "label")
        if lab.empty:
            return []
        _, lsd, n = _pooled_moments(lab[lab["layer"] == "train/value"])
        if n < MIN_POOLED_LABELS or not math.isfinite(lsd):
            return []
        baseline, what, unit = lsd ** 2, "always predicting the label mean (the label variance)", "MSE"
    else:
        return []
    ev = {"last_loss": value, "baseline": baseline, "ratio": value / baseline if baseline > 0 else None,
          "loss_fn": loss_fn, "near_fraction": BASELINE_NEAR_FRACTION}
    ref = "Karpathy 2019, A Recipe for Training Neural Networks"
    if baseline <= 0:
        return []
    if value >= BASELINE_NEAR_FRACTION * baseline:
        rel = "no better than" if value >= baseline else "barely better than"
        return [_finding(
            "loss_vs_baseline", "warning", None, (s0, s1),
            f"Your loss {value:.3g} (steps {s0}-{s1}) is {rel} {what} ({baseline:.3g} {unit}).",
            "The model ignores its input: check that inputs and labels line up, normalise the inputs, raise "
            "or lower the learning rate (try a learning-rate range test), check the initialisation, and make "
            "sure the model can overfit a single batch first.",
            ev, ref)]
    return [_finding(
        "loss_vs_baseline", "info", None, (s0, s1),
        f"Your loss {value:.3g} (steps {s0}-{s1}) is {1 - value / baseline:.0%} below {what} ({baseline:.3g} {unit}).",
        "Nothing to fix; compare the validation loss against the same baseline.",
        ev, ref)]


def rule_overfitting(run) -> list[Finding]:
    """Overfitting, when `val/loss` is logged (≥ 5 points): over the last third of its
    points (at least 3) the validation loss rises (positive slope, and its last value ≥ 5%
    above its best) while the training loss falls and the gap between them grows.
    Reference: Prechelt 1998, "Early Stopping — But When?"; Goodfellow et al. 2016, §7.8."""
    val = _scalar(run, "val/loss")
    val = val[np.isfinite(val["value"].astype(float))]
    train = _scalar(run, "loss")
    train = train[np.isfinite(train["value"].astype(float))]
    if len(val) < MIN_VAL_POINTS or len(train) < 2:
        return []
    vs, vv = val["step"].to_numpy(float), val["value"].to_numpy(float)
    ts, tv = train["step"].to_numpy(float), train["value"].to_numpy(float)

    def train_at(i: int) -> float:  # train loss smoothed over the steps since the previous evaluation
        lo = vs[i - 1] if i > 0 else -math.inf
        sel = tv[(ts > lo) & (ts <= vs[i])]
        return float(np.median(sel)) if sel.size else math.nan

    k = max(3, math.ceil(len(val) / 3))
    idx = list(range(len(val) - k, len(val)))
    best = int(np.argmin(vv))
    val_slope = np.polyfit(vs[idx], vv[idx], 1)[0]
    tr = np.array([train_at(i) for i in idx])
    ok = np.isfinite(tr)
    if ok.sum() < 2:
        return []
    train_slope = np.polyfit(vs[idx][ok], tr[ok], 1)[0]
    gap = vv[idx][ok] - tr[ok]
    rising = val_slope > 0 and vv[-1] >= (1 + VAL_RISE_FRACTION) * vv[best] and best < len(val) - 1
    if not (rising and train_slope < 0 and gap[-1] > gap[0]):
        return []
    return [_finding(
        "overfitting", "warning", None, (vs[best], vs[-1]),
        f"Validation loss rose from its best {vv[best]:.3g} (step {int(vs[best])}) to {vv[-1]:.3g} "
        f"(step {int(vs[-1])}) while the training loss kept falling (to {tr[ok][-1]:.3g}); "
        f"the gap grew from {gap[0]:.3g} to {gap[-1]:.3g}.",
        f"Stop early (keep the checkpoint of step {int(vs[best])}), add regularisation (weight decay, dropout, "
        "data augmentation), get more data, or use a smaller model.",
        {"best_val_loss": vv[best], "best_step": vs[best], "last_val_loss": vv[-1],
         "last_train_loss": tr[ok][-1], "gap_start": gap[0], "gap_end": gap[-1],
         "val_slope": val_slope, "train_slope": train_slope},
        "Prechelt 1998, Early Stopping - But When?; Goodfellow et al. 2016, Deep Learning §7.8",
    )]


def _label_noise_frame(run) -> pd.DataFrame:
    if run.manifest.get("task") != "classification":
        return pd.DataFrame()
    try:
        dyn = run.sample_dynamics("train")
    except Exception:
        return pd.DataFrame()
    cols = ("label_error_score", "late_wrong_frac", "late_margin")
    if dyn.empty or any(c not in dyn for c in cols) or dyn["aum"].isna().all():
        return pd.DataFrame()
    dyn = dyn[np.isfinite(dyn[list(cols)].astype(float)).all(axis=1)]
    return dyn if len(dyn) >= 20 else pd.DataFrame()


def rule_label_noise(run) -> list[Finding]:
    """Suspected mislabeled samples vs hard ones (classification, per-sample records from
    `log_batch(ids=)`). Over the late records (last third of the recorded steps) a sample
    is a suspect when its given label loses in ≥ 80% of them AND its median margin is
    below -2 logits (another class ≥ e² ≈ 7x as probable: the model is sure of another
    class, as Pleiss et al. find for flipped labels); "hard" when it is still wrong as
    often but the classes stay close (a learned-late sample that ends right is neither).
    Suspects at ≥ 2% of the samples: info ("review"); from 3%: warning ("relabel or drop");
    above 30%: nothing (the model has not learned yet). No suspects but ≥ 2% hard: info.
    Calibrated with benchmarks/label_noise.py's training (digits, small CNN, 12 epochs,
    seeds 0-4): 10% flipped labels give 8.6-9.5% suspects, 5% give 4.4-4.7%, precision
    0.97-1.00 in every seed; examples/oct_cnn.py (OCT simulator, no flipped labels,
    overlapping severities; seeds 0-2) gives 0.9-1.3% suspects and 5-6% hard samples.
    Reference: Pleiss et al. 2020, "Identifying Mislabeled Data using the Area Under the Margin
    Ranking"; Northcutt et al. 2021, "Confident Learning"."""
    dyn = _label_noise_frame(run)
    if dyn.empty:
        return []
    late_wrong = dyn["late_wrong_frac"] >= LABEL_NOISE_LATE_WRONG
    suspects = dyn[late_wrong & (dyn["late_margin"] < LABEL_NOISE_MARGIN)].sort_values("label_error_score",
                                                                                          ascending=False)
    hard = dyn[late_wrong & (dyn["late_margin"] >= LABEL_NOISE_MARGIN)]
    share, hard_share = len(suspects) / len(dyn), len(hard) / len(dyn)
    if share > LABEL_NOISE_MAX_SHARE or hard_share > LABEL_NOISE_MAX_SHARE:
        return []
    ev = {"suspects": len(suspects), "hard": len(hard), "samples": len(dyn), "share": share,
          "hard_share": hard_share, "late_wrong_threshold": LABEL_NOISE_LATE_WRONG,
          "margin_threshold": LABEL_NOISE_MARGIN, "min_share": LABEL_NOISE_MIN_SHARE}
    ref = "Pleiss et al. 2020, Area Under the Margin Ranking; Northcutt et al. 2021, Confident Learning"
    if share >= LABEL_NOISE_MIN_SHARE:
        top = suspects.head(10)
        sure = share >= LABEL_NOISE_WARN_SHARE
        return [_finding(
            "label_noise", "warning" if sure else "info", None, (None, None),
            f"{len(suspects)} of {len(dyn)} training samples ({share:.1%}) stay misclassified late in training "
            f"with another class confidently ahead (median late margin < {LABEL_NOISE_MARGIN:g} logits): "
            f"likely wrong labels; the most suspect: {', '.join(map(str, top['sample_id']))}.",
            ("Relabel or drop the wrong ones after a look (error review page), or train with a noise-robust "
             "loss (label smoothing, a symmetric or truncated loss)." if sure else
             "Review these samples (error review page); too few to call label noise with confidence."),
            {**ev, "top_ids": top["sample_id"].astype(str).tolist(),
             "top_scores": top["label_error_score"].tolist()}, ref)]
    if hard_share >= LABEL_NOISE_MIN_SHARE:
        return [_finding(
            "label_noise", "info", None, (None, None),
            f"{len(hard)} of {len(dyn)} training samples ({hard_share:.1%}) are still misclassified late in "
            f"training, but without a confident other class (median late margin ≥ {LABEL_NOISE_MARGIN:g} "
            "logits): hard or ambiguous cases, not evidence of wrong labels.",
            "Nothing to relabel: look at them (error review page) for a pattern (a sub-population, an "
            "artefact); more data or capacity for those cases helps more than cleaning.", ev, ref)]
    return []


def _second_moment(row) -> float:
    return float(row["std"]) ** 2 + float(row["mean"]) ** 2


def _input_rms(run, layer: str, step: int, out_row) -> float | None:
    """The RMS of a Linear/Conv layer's input, estimated from its output and its weights at
    the first capture: E[out²] ≈ fan_in · E[w²] · E[x²] + E[b²] (zero-mean random weights
    independent of the input, as at initialisation). None when the weights are missing."""
    params = {p.get("name"): p for p in run.manifest.get("parameters", []) or []}
    shape = (params.get(f"{layer}.weight") or {}).get("shape") or []
    if len(shape) < 2 or not _module_types(run).get(layer, "").startswith(("Linear", "Conv1d", "Conv2d", "Conv3d")):
        return None
    w = _dist(run, "weight")
    if w.empty:
        return None
    w = w[w["step"] == w["step"].min()].set_index("layer")
    if f"{layer}.weight" not in w.index:
        return None
    fan_in = int(np.prod(shape[1:]))
    w2 = _second_moment(w.loc[f"{layer}.weight"])
    b2 = _second_moment(w.loc[f"{layer}.bias"]) if f"{layer}.bias" in w.index else 0.0
    x2 = (_second_moment(out_row) - b2) / (fan_in * w2) if fan_in * w2 > 0 else math.nan
    return math.sqrt(x2) if math.isfinite(x2) and x2 > 0 else None


def rule_input_scale(run) -> list[Finding]:
    """Inputs left unnormalised, judged at the first capture on the first leaf module:
    a parameter-free one (Flatten, Identity) shows the input itself: std or |mean| > 10;
    a Linear/Conv one: its input's RMS, estimated from its output and weights
    (E[out²] ≈ fan_in·E[w²]·E[x²] + E[b²]), above 3 — standardised inputs have RMS 1,
    raw 0..16 digits 7.7, 0..255 pixels ~150 — or its output std above 10. Inputs in
    0..1 (RMS ~0.3-0.6) are not flagged: they train well with a standard initialisation.
    Reference: LeCun et al. 1998, "Efficient BackProp" (§4.3, normalising the inputs)."""
    d = _dist(run, "activation")
    if d.empty:
        return []
    step0 = int(d["step"].min())
    at = d[(d["step"] == step0)].set_index("layer")
    layers = _order(run, "activation", at.index)
    if not layers:
        return []
    first = layers[0]
    row = at.loc[first]
    std, mean = float(row["std"]), float(row["mean"])
    if not (math.isfinite(std) and math.isfinite(mean)):
        return []
    kind = _module_types(run).get(first, "")
    if any(kind.startswith(t) for t in _NORM_TYPES):
        return []
    # a parametrised layer's mean is mostly its bias (a planted -10 bias is not an input
    # problem); a parameter-free first module (Flatten, Identity, Dropout) shows the input itself
    parametrised = _module_params(run).get(first, 0) > 0
    rms = _input_rms(run, first, step0, row) if parametrised else None
    high_rms = rms is not None and rms > INPUT_RMS_THRESHOLD
    if not high_rms and std <= INPUT_SCALE_THRESHOLD and (parametrised or abs(mean) <= INPUT_SCALE_THRESHOLD):
        return []
    what = (f"its inputs have an estimated RMS of {rms:.3g} (threshold {INPUT_RMS_THRESHOLD:g}; 1 when "
            f"standardised) and it outputs std {std:.3g}" if rms is not None else
            f"it outputs values with std {std:.3g} and mean {mean:.3g} (threshold {INPUT_SCALE_THRESHOLD:g})")
    return [_finding(
        "input_scale", "warning", first, (step0, step0),
        f"At step {step0} the first module {first} ({kind or 'module'}): {what}. The inputs look unnormalised.",
        "Normalise the inputs to zero mean and unit variance per channel (e.g. transforms.Normalize with the "
        "training set's mean and std, or divide pixels by 255 and standardise), or start with a "
        "normalisation layer.",
        {"std": std, "mean": mean, "input_rms": rms, "module_type": kind, "threshold": INPUT_SCALE_THRESHOLD,
         "rms_threshold": INPUT_RMS_THRESHOLD},
        "LeCun et al. 1998, Efficient BackProp, §4.3",
    )]


from diagnostics.health_data import DATA_RULES  # noqa: E402  (data and loss bugs)
from diagnostics.health_loop import RULES as LOOP_RULES  # noqa: E402  (training-loop bugs; imports this module)

RULES: tuple[Callable[[Any], list[Finding]], ...] = (
    rule_nonfinite,
    rule_dead_units,
    rule_saturation,
    rule_gradient_depth,
    rule_grad_norm_spikes,
    rule_activation_scale_depth,
    rule_update_ratio,
    rule_output_vs_label,
    rule_loss_vs_baseline,
    rule_overfitting,
    rule_label_noise,
    rule_input_scale,
    *LOOP_RULES,
    *DATA_RULES,
)


def check(run) -> list[Finding]:
    """Run every rule in `RULES` over `run`; findings sorted by severity (errors first),
    then step. A rule that fails on an unexpected run is skipped with a warning, so the
    dashboard never shows a traceback.

    Example::

        findings = check(diagnostics.open_run("runs/exp1"))
        [f.to_dict() for f in findings if f.severity != "info"]
    """
    findings: list[Finding] = []
    for rule in RULES:
        try:
            findings.extend(rule(run))
        except Exception as exc:  # a rule's bug must not hide the other rules' findings
            warnings.warn(f"health rule {rule.__name__} failed on {getattr(run, 'path', run)}: {exc!r}",
                          RuntimeWarning, stacklevel=2)
    rank = {s: i for i, s in enumerate(SEVERITIES)}
    return sorted(findings, key=lambda f: (rank.get(f.severity, len(rank)),
                                           math.inf if f.step_start is None else f.step_start, f.rule,
                                           f.layer or ""))
