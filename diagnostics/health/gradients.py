"""Health rules on the gradients and the updates: NaN/Inf anywhere, vanishing or exploding
gradients across depth, gradient-norm spikes, update-to-weight ratios far from ~1e-3 (or clipping
that removes nearly all of the gradient), steps a GradScaler keeps skipping, weights written
outside the optimizer (a re-init in the loop), a recurrent layer read at its first time step; and
`penalty_in_gradient`, a penalty in the loss read from the gradient's shape (for
`weight_decay_dominates` and `labels_unlearnable`).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from diagnostics import figures
from diagnostics.health import charts
from diagnostics.health.activations import MIN_DEPTH_LAYERS, defer_to_input_scale, rule_dead_units
from diagnostics.health.common import SKIPPED, Finding, dist, layer_order, make_finding, module_types, scalar
from diagnostics.health.problems import (
    NOT_LEARNING,
    cause,
    high_ratio,
    lasting,
    low_ratio,
    same_layer,
    starved,
    symptom,
)
from diagnostics.health.registry import rule

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
# Update-to-weight ratio: healthy around 1e-3 (cs231n).
UPDATE_RATIO_LOW = 1e-5
UPDATE_RATIO_HIGH = 1e-1
# ... but a high ratio is "too high a learning rate" only if the loss does not fall: a rate too
# high oscillates, stalls or diverges (cs231n, Neural Networks Part 3, "loss function" plot;
# Goodfellow et al. 2016 §11.4.1). Adadelta at lr 1.0 (pytorch/examples mnist), LBFGS (each
# step a line search of up to 20 iterations: pytorch/examples time_sequence_prediction moves
# its weights by 0.1-0.3 per step while the loss falls 10,000x) and Adam early take steps that
# large on purpose. Loss falling: the median of its last fifth at most half that of its first
# fifth, or still falling at the end (at most 90% of the first fifth's and 1% below the fifth
# before it: a too-high rate stalls the loss early at a high level, cs231n's "high learning
# rate" curve; pytorch/examples word_language_model, SGD lr 20 with clip 0.25, moves its
# decoder by ~0.5 a step while its loss still falls), every value finite; then the high ratio
# is info (the rule cannot tell harm).
LOSS_FALL_FACTOR = 0.5
# Steps too small for the run: every weight matrix's median ratio times the number of optimizer
# steps (an upper bound on how far the weights can get from where they started) under 5% of their
# norm while the loss stays within 10% of where it started. 100 steps at the healthy 1e-3 may
# travel 10%; Adadelta given Adam's lr 1e-3 (its own default is 1.0) travels ~0.4% in 120 steps.
RUN_TRAVEL_LOW = 0.05
LOSS_FLAT = 0.9
# Floating point keeps p significant bits: an update under half the spacing near a weight,
# 2^-p of it, rounds to nothing (float16 p=11, bfloat16 p=8: Micikevicius et al., "Mixed
# Precision Training", ICLR 2018, section 3.1, hence fp32 master weights).
HALF_SPACING = {"float16": 2.0 ** -11, "bfloat16": 2.0 ** -8}
STILL_FALLING = (0.9, 0.99)  # last fifth ≤ 0.9 x the first's and ≤ 0.99 x the one before it
MIN_LOSS_POINTS = 4  # an LBFGS run of a few steps has a loss per step (each step many evaluations)
# Clipping that removes nearly all of the gradient: the optimizer gets under 1% of the norm backward
# produced at every captured step (≥ 3), clipping is on at ≥ 90% of the steps, and the loss does not
# fall (its last fifth ≥ 90% of its first). Clipping at the gradient's usual norm keeps most of it
# (pytorch/examples word_language_model: clip 0.25 on norms of ~1, with its loss falling).
CLIP_KEPT = 0.01
CLIP_STEP_SHARE = 0.9
CLIP_LOSS_FLAT = 0.9
MIN_STUCK_CLIPS = 3
# Steps a GradScaler skipped: its initial scale backs off over the first steps, then about one
# skip per growth interval (2,000 steps) is normal.
AMP_SKIP_SHARE = 0.05
AMP_STARTUP_STEPS = 20
AMP_STUCK_STEPS = 10


@rule("NaN/Inf in the loss, a gradient or any captured summary, with the first step and layer that held one.",
      severities=("error",), evidence=charts.loss_with_baseline,
      explains=tuple((s, lasting) for s in ("grad_norm_spikes", "dead_units", "stuck_parameters", *NOT_LEARNING)))
def rule_nonfinite(run) -> list[Finding]:
    """NaN or Inf anywhere (loss, gradient norm, any captured summary): always an error.

    Threshold: any non-finite value. Where: `Run.first_nonfinite()`, the first step and,
    in forward order, the first module or parameter that held one.
    """
    try:
        first = run.first_nonfinite()
    except Exception:
        return []
    if not first or _at_skipped_step(run, first):
        return []
    where = (f"{first['kind']} of {first['layer']}" if "layer" in first else f"the {first.get('scalar', 'loss')}")
    counts = (f" ({first.get('nan_count', 0)} NaN, {first.get('inf_count', 0)} Inf)" if "layer" in first else "")
    step = first.get("step")
    return [make_finding(
        "nonfinite", "error", first.get("layer"), (step, first.get("capture_step", step)),
        f"NaN/Inf first appears at step {step} in {where}{counts}.",
        "Lower the learning rate (or add warm-up), clip gradients (torch.nn.utils.clip_grad_norm_), "
        "normalise the inputs, and compute the loss from logits (CrossEntropyLoss, BCEWithLogitsLoss) "
        "rather than log(softmax) by hand; with AMP, use a GradScaler.",
        dict(first), "PyTorch docs: torch.autograd.detect_anomaly; Goodfellow et al. 2016, Deep Learning §4.1",
    )]


def _at_skipped_step(run, first: dict) -> bool:
    """The first NaN/Inf is at a step the GradScaler skipped (a fused optimizer's Inf gradient
    norm, a float16 overflow the scaler backed off from): no training step's; `amp_skipped_steps`
    judges the skips."""
    skipped = scalar(run, SKIPPED)
    steps = set(skipped.loc[skipped["value"] > 0, "step"].astype(int)) if not skipped.empty else set()
    return bool(steps) and first.get("step") in steps and first.get("capture_step", first.get("step")) in steps


def _depth_chart(run, finding: Finding) -> go.Figure:
    return charts.across_layers(run, "gradient", finding.step_start, "gradient std across depth")


@rule("Vanishing or exploding gradients across depth: the first layer's gradient norm 100x below or above "
      "the last's at the first captures.", severities=("warning", "info"),
      names=("vanishing_gradients", "exploding_gradients"), evidence=_depth_chart,
      explains=(*((s, cause("vanishing_gradients")) for s in NOT_LEARNING),
                ("update_ratio", cause("vanishing_gradients", symptom(low_ratio))),
                ("stuck_parameters", cause("vanishing_gradients", symptom(starved))),
                *((s, cause("exploding_gradients")) for s in ("grad_norm_spikes", "nonfinite", "output_vs_label")),
                ("update_ratio", cause("exploding_gradients", symptom(high_ratio)))))
def rule_gradient_depth(run) -> list[Finding]:
    """Vanishing or exploding gradients across depth: the norm of the gradient w.r.t. the
    first module's output over that of the last module (per sample: same batch), median
    over the first 3 captures,
    below 1/100 (vanishing) or above 100 (exploding). Reference: Glorot & Bengio 2010;
    He et al. 2015 (backward-propagation case of their initialisation); Bengio et al. 1994."""
    d = dist(run, "gradient")
    if d.empty:
        return []
    d = d[np.isfinite(d["std"]) & np.isfinite(d["mean"]) & (d["count"] > 0)]
    # the whole tensor's norm (the batch is the same at one step, so: the per-sample norm);
    # an element's RMS would also shrink with the layer's width (a conv map vs 10 logits) and,
    # across a global average pool, by the pooled area (each element gets 1/(H*W) of its channel's
    # gradient): per element, a healthy ResNet's first conv reads 227x below its head (issue #23)
    d = d.assign(rms=np.sqrt(d["count"] * (d["std"] ** 2 + d["mean"] ** 2)))
    d = d[d["rms"] > 0]
    layers = layer_order(run, "gradient", d["layer"].unique())
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
        return defer_to_input_scale(run, make_finding(
            "vanishing_gradients", "warning", first, (steps[0], steps[-1]),
            f"The gradient reaching {first} is {1 / ratio:.3g}x smaller (norm) than at {last} "
            f"at the first captures (steps {steps[0]}-{steps[-1]}; threshold {GRADIENT_DEPTH_RATIO:.0f}x): "
            "the early layers barely learn.",
            "Use He/Kaiming initialisation for ReLU layers (Xavier for tanh), replace sigmoid/tanh hidden "
            "activations by ReLU/GELU, add normalisation (BatchNorm/LayerNorm) or residual connections.",
            evidence, ref))
    if ratio > GRADIENT_DEPTH_RATIO:
        return defer_to_input_scale(run, make_finding(
            "exploding_gradients", "warning", first, (steps[0], steps[-1]),
            f"The gradient reaching {first} is {ratio:.3g}x larger (norm) than at {last} "
            f"at the first captures (steps {steps[0]}-{steps[-1]}; threshold {GRADIENT_DEPTH_RATIO:.0f}x).",
            "Check the initialisation (He/Kaiming scaled to fan-in, not larger), add normalisation, clip "
            "gradients (clip_grad_norm_) and lower the learning rate.",
            evidence, ref))
    return []


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


def _spikes_chart(run, finding: Finding) -> go.Figure:
    fig = charts.scalar_lines(run, ["grad_norm"], "global gradient norm", log_y=True)
    spikes = (finding.evidence or {}).get("spikes") or []
    if spikes:
        fig.add_trace(go.Scatter(x=[s["step"] for s in spikes], y=[s["grad_norm"] for s in spikes],
                                 mode="markers", name="spike", marker=dict(size=10, symbol="x", color="red")))
    return fig


@rule("Gradient-norm spikes: steps 3x above their neighbours' median and 3 robust stds out (warning from 10x).",
      severities=("info", "warning"), evidence=_spikes_chart)
def rule_grad_norm_spikes(run) -> list[Finding]:
    """Global gradient-norm spikes against the run's own noise: a step (after 10 of warm-up)
    whose log norm lies ≥ 3 robust standard deviations (1.4826·MAD, floored at 0.05) above
    the median of its neighbours (25 steps either side, the step left out) AND ≥ 3x that
    median. Info from 3x; warning when one reaches 10x. Neighbours on both sides: a norm
    that climbs steadily while the model learns (every healthy run's first epoch) is no
    spike. Measured on the demo runs (examples/oct_cnn.py: its 4x spike at step 115 has
    z = 3.5; healthy digits runs peak at z = 2.6, 3.3x). References: Hampel 1974 and Leys
    et al. 2013 (median ± 3·MAD outlier rule); Pascanu et al. 2013 (gradient clipping)."""
    s = scalar(run, "grad_norm")
    s = s[np.isfinite(s["value"].astype(float))]
    if len(s) <= GRAD_SPIKE_WARMUP_STEPS:
        return []
    spikes = _grad_spikes(s["value"].to_numpy(float), s["step"].to_numpy())
    if not spikes:
        return []
    clipped = scalar(run, "grad_clipped")
    clipped_steps = set(clipped.loc[clipped["value"] > 0.5, "step"].astype(int)) if not clipped.empty else set()
    worst = max(spikes, key=lambda x: x[1] / x[2])
    n_clipped = sum(st in clipped_steps for st, *_ in spikes)
    # NaN: not detectable (several ranks: averaging changes gradients as clipping would)
    clip_note = ("clipping unknown" if clipped.empty or clipped["value"].isna().all()
                 else f"{n_clipped} of them clipped")
    severe = worst[1] / worst[2] >= GRAD_SPIKE_FACTOR
    return [make_finding(
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


def clipped_away(f: Finding) -> bool:
    """An update-ratio finding whose cause is gradient clipping that removes nearly all of the gradient."""
    return f.evidence.get("clip_kept") is not None


def _ratio_chart(run, finding: Finding) -> go.Figure | None:
    if not finding.layer:
        return None
    return figures.update_ratio_figure(run.update_ratios(layers=[finding.layer]), finding.layer)


@rule("Update-to-weight ratios far from ~1e-3 (below 1e-5: the layer barely moves; above 1e-1: too high a "
      "learning rate, info while the loss falls to half); or clipping that leaves the optimizer under 1% of the "
      "gradient while the loss stays flat; or steps too small to move the weights 5% over the run, or under a float16 "
      "weight's spacing, while the loss stays flat.", severities=("warning", "info"), evidence=_ratio_chart,
      explains=(*((s, cause(low_ratio)) for s in NOT_LEARNING), *((s, cause(clipped_away)) for s in NOT_LEARNING),
                ("update_ratio", cause(clipped_away, symptom(low_ratio))),
                *((s, cause(high_ratio)) for s in ("nonfinite", "grad_norm_spikes", "dead_units"))))
def rule_update_ratio(run) -> list[Finding]:
    """Update-to-weight ratio ‖Δw‖/‖w‖ far from ~1e-3: its median over captures below 1e-5
    (the layer barely moves) or above 1e-1 (the learning rate is too high for it), for
    trainable weight matrices and kernels (biases and norm scales left out: their norms
    start at 0 or 1). A high ratio while the loss falls to half of where it started is info
    (`loss_falls`): Adadelta, LBFGS and Adam take such steps on purpose. Reference: Karpathy's
    rule of thumb, cs231n, Neural Networks Part 3."""
    try:
        ratios = run.update_ratios()
    except Exception:
        return []
    if ratios.empty:
        return []
    params = {p.get("name"): p for p in run.manifest.get("parameters", []) or []}
    falls, findings, meds = loss_falls(run), [], {}
    for layer in layer_order(run, "update", ratios["layer"].unique()):
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
        meds[layer] = (med, int(steps.min()), int(steps.max()), ev)
        if med > UPDATE_RATIO_HIGH:
            findings.append(_high_ratio(run, layer, med, len(rows), (steps.min(), steps.max()), ev, ref, falls))
        elif med < UPDATE_RATIO_LOW:
            findings.append(make_finding(
                "update_ratio", "warning", layer, (steps.min(), steps.max()),
                f"{layer}: each optimizer step changes the weights by {change} (median over "
                f"{len(rows)} captures), far below the healthy ~1e-3 (threshold {UPDATE_RATIO_LOW:g}).",
                "Raise the learning rate or use an adaptive optimizer (Adam); check for vanishing gradients "
                "(initialisation, saturating activations) and for a schedule that decayed too early.",
                ev, ref))
    clip = _clipped_away(run, ratios)
    return findings + ([clip] if clip is not None else []) + (_too_small_for_the_run(run, meds) if not findings else [])


def _too_small_for_the_run(run, meds: dict[str, tuple]) -> list[Finding]:
    """Every weight matrix's steps too small to move it over the whole run (median ratio x
    optimizer steps < RUN_TRAVEL_LOW, over at least 100 steps: a shorter run cannot tell a
    learning rate too small from one that has had no time), or
    float16/bfloat16 weights (where the manifest records the dtype) whose median step is under
    their precision's spacing (most elements' updates under half of it round away), while the
    loss stays flat (its last fifth > LOSS_FLAT of its first): a warning per matrix."""
    loss = scalar(run, "loss")
    if not meds or len(loss) < MIN_LOSS_POINTS or loss_falls(run) is not None:
        return []
    v = loss.sort_values("step")["value"].to_numpy(float)
    k, n = max(1, len(v) // 5), int(loss["step"].max()) + 1
    first, last = float(np.median(v[:k])), float(np.median(v[-k:]))
    if not (np.isfinite(v).all() and first > 0 and last > LOSS_FLAT * first):
        return []
    dtypes = {p.get("name"): p.get("dtype") for p in run.manifest.get("parameters", []) or []}
    # under 100 steps the run is too short to say its steps cannot move the weights (issue #23: short runs)
    if n < 100 or any(m * n >= RUN_TRAVEL_LOW and not m < 2 * HALF_SPACING.get(dtypes.get(x), 0) for
                      x, (m, *_) in meds.items()):
        return []
    opt, out = run.manifest.get("optimizer") or "the optimizer", []
    for layer, (med, s0, s1, ev) in meds.items():
        half = HALF_SPACING.get(dtypes.get(layer))
        why = (f"its weights are {dtypes[layer]}, whose spacing near a weight is {2 * half:.2g} of it: a step under "
               f"half of that ({half:.2g}) rounds to nothing, so most of each update is lost") if half else \
            f"the learning rate {opt} applies is far too small for {n} steps"
        out.append(make_finding(
            "update_ratio", "warning", layer, (s0, s1),
            f"{layer}: each step changes the weights by {med:.2g} of their norm, so {n} steps move them by at most "
            f"{med * n:.1%} (threshold {RUN_TRAVEL_LOW:.0%}, or a step under the spacing of their dtype) while the "
            f"loss stays at {last / first:.0%} of where it started ({first:.3g} -> {last:.3g}): {why}.",
            "Keep the weights in float32 and train in mixed precision (torch.autocast with a GradScaler) instead "
            "of model.half()." if half else
            f"Raise the learning rate: check the value {opt} expects (Adadelta's lr is a factor on its own step, "
            "1.0 by default, not Adam's 1e-3), the scheduler's factor, and that the loss is not divided twice.",
            {**ev, "low": RUN_TRAVEL_LOW / n, "steps": n, "travel": med * n, "dtype": dtypes.get(layer),
             "loss_first": first, "loss_last": last},
            "Karpathy, cs231n Neural Networks Part 3 (update/weight ratio ~1e-3)"
            + ("; Micikevicius et al., Mixed Precision Training (ICLR 2018) 3.1" if half else "")))
    return out


def loss_falls(run) -> tuple[float, float] | None:
    """(first, last): the medians of the loss's first and last fifth when the loss falls to at
    most LOSS_FALL_FACTOR of where it started, or is still falling at the end (STILL_FALLING),
    every value finite; None otherwise or unknown."""
    loss = scalar(run, "loss")
    if len(loss) < MIN_LOSS_POINTS:
        return None
    v = loss.sort_values("step")["value"].to_numpy(float)
    if not np.isfinite(v).all():
        return None
    k = max(1, len(v) // 5)
    first, last = float(np.median(v[:k])), float(np.median(v[-k:]))
    before = float(np.median(v[-2 * k:-k])) if len(v) >= 2 * k + 1 else math.inf
    if first <= 0:
        return None
    halved = last <= LOSS_FALL_FACTOR * first
    still = last <= STILL_FALLING[0] * first and last <= STILL_FALLING[1] * before
    return (first, last) if halved or still else None


def _high_ratio(run, layer, med, n, steps, ev, ref, falls) -> Finding:
    """A layer that moves more than UPDATE_RATIO_HIGH per step: a warning, or info while the loss
    falls (large steps the optimizer takes on purpose, not a learning rate too high)."""
    opt = run.manifest.get("optimizer") or "the optimizer"
    what = (f"{layer}: each optimizer step changes the weights by {med:.2g} of their norm (median over "
            f"{n} captures), far above the healthy ~1e-3 (threshold {UPDATE_RATIO_HIGH:g})")
    dead = _dead_layers(run) if falls is not None else []
    if dead:  # the loss falls, but units died: the harm a too-high rate does to ReLUs (cs231n)
        return make_finding(
            "update_ratio", "warning", layer, steps,
            f"{what}, and the ReLU units of {', '.join(dead)} died (dead_units) although the loss falls from "
            f"{falls[0]:.3g} to {falls[1]:.3g}: steps this large push units where they never fire again.",
            "Lower the learning rate (or this layer's, with a parameter group), add warm-up and a decay "
            "schedule; check that the loss is averaged, not summed, over the batch and over accumulated "
            "micro-batches.",
            {**ev, "optimizer": opt, "dead_layers": dead}, ref + "; cs231n Neural Networks Part 1 (dying ReLUs: "
            "'with a proper setting of the learning rate this is less frequently an issue')")
    if falls is None:
        return make_finding(
            "update_ratio", "warning", layer, steps, what + ".",
            "Lower the learning rate (or this layer's, with a parameter group), add warm-up and a decay "
            "schedule, and check that weight decay is not fighting a too-small initialisation.",
            {**ev, "optimizer": opt}, ref)
    return make_finding(
        "update_ratio", "info", layer, steps,
        f"{what}, but the loss falls from {falls[0]:.3g} to {falls[1]:.3g} under {opt}: steps this large "
        "are no sign of too high a learning rate while the loss keeps falling.",
        "Nothing to do while the loss falls; if it later stalls or oscillates, lower the learning rate "
        "(or this layer's) or add a decay schedule.",
        {**ev, "optimizer": opt, "loss_first": falls[0], "loss_last": falls[1],
         "loss_fall_factor": LOSS_FALL_FACTOR}, ref + "; cs231n (a too-high rate stalls or diverges the loss)")


def _clip_kept(run) -> pd.DataFrame:
    """Per capture step the loop clipped at (`grad_clipped`): the norm of the gradients the
    optimizer got (`param_grad`, read at optimizer.step) over the norm backward produced
    (`grad_norm`): `kept`."""
    g, norm, clipped = dist(run, "param_grad"), scalar(run, "grad_norm"), scalar(run, "grad_clipped")
    if g.empty or norm.empty or clipped.empty:
        return pd.DataFrame(columns=["step", "kept"])
    got = np.sqrt((g["count"] * (g["std"] ** 2 + g["mean"] ** 2)).groupby(g["step"]).sum()).rename("got")
    d = norm.merge(got, left_on="step", right_index=True).merge(clipped.rename(columns={"value": "clipped"}),
                                                                on="step")
    d = d[(d["clipped"] > 0.5) & (d["value"] > 0)]
    return d.assign(kept=d["got"] / d["value"])[["step", "kept"]]


def _clipped_away(run, ratios: pd.DataFrame) -> Finding | None:
    """Gradient clipping that leaves the optimizer < 1% (CLIP_KEPT) of the gradient's norm at
    every one of ≥ 3 captured steps, clipped at ≥ 90% of all steps, while the loss does not fall
    (its last fifth ≥ 90% of its first): the weights barely move, though no ratio is below 1e-5."""
    kept, clipped = _clip_kept(run), scalar(run, "grad_clipped")
    loss = scalar(run, "loss")["value"].to_numpy(float)
    if len(kept) < MIN_STUCK_CLIPS or (kept["kept"] >= CLIP_KEPT).any() or len(loss) < MIN_LOSS_POINTS:
        return None
    k = max(1, len(loss) // 5)
    first, last = float(np.median(loss[:k])), float(np.median(loss[-k:]))
    share = float((clipped["value"] > 0.5).mean())
    if not np.isfinite(first + last) or last < CLIP_LOSS_FLAT * first or share < CLIP_STEP_SHARE:
        return None
    params = {p.get("name"): p for p in run.manifest.get("parameters", []) or []}
    mats = ratios[ratios["layer"].map(lambda n: len((params.get(n) or {}).get("shape", [])) >= 2)]
    med = mats.groupby("layer")["ratio"].median() if not mats.empty else pd.Series(dtype=float)
    layer = str(med.idxmin()) if not med.empty else None
    ratio = float(med.min()) if not med.empty else math.nan
    steps = kept["step"].astype(int)
    return make_finding(
        "update_ratio", "warning", layer, (steps.min(), steps.max()),
        f"Gradient clipping removes nearly all of the gradient: at {len(kept)} captured steps the optimizer got "
        f"{kept['kept'].median():.2%} of the norm backward produced (median; threshold {CLIP_KEPT:.0%}), clipped "
        f"at {share:.0%} of the steps, so the weights move by {ratio:.2g} of their norm a step ({layer}) and the "
        f"loss stays at {last:.3g} from {first:.3g}.",
        "Raise the clipping threshold to around the gradient's usual norm (clip_grad_norm_(params, max_norm=1.0)); "
        "clip_grad_value_ caps every element at the value, so a tiny value (1e-5) is not a norm threshold.",
        {"clip_kept": float(kept["kept"].median()), "clip_kept_max": float(kept["kept"].max()),
         "clipped_share": share, "median_ratio": ratio, "low": UPDATE_RATIO_LOW, "high": UPDATE_RATIO_HIGH,
         "loss_first": first, "loss_last": last, "threshold": CLIP_KEPT},
        "Pascanu et al. 2013, On the difficulty of training recurrent neural networks (clipping rescales "
        "rare large gradients); PyTorch docs: torch.nn.utils.clip_grad_value_")


def _dead_layers(run) -> list[str]:
    """The layers whose ReLU units died (a loud dead_units finding)."""
    return [f.layer for f in rule_dead_units(run) if f.severity in ("warning", "error") and f.layer]


def _skipped_chart(run, finding: Finding) -> go.Figure:
    return charts.scalar_lines(run, ["amp_skipped"], "steps the GradScaler skipped (1)")


@rule(f"Steps a GradScaler skipped (Inf/NaN gradients, no update): over {AMP_SKIP_SHARE:.0%} of the steps after the "
      f"first {AMP_STARTUP_STEPS}, or the last {AMP_STUCK_STEPS} in a row.", severities=("warning",),
      evidence=_skipped_chart,
      explains=("nonfinite", "stuck_parameters", ("update_ratio", symptom(low_ratio)), *NOT_LEARNING))
def rule_amp_skipped_steps(run) -> list[Finding]:
    """Mixed precision whose GradScaler keeps skipping `optimizer.step()` (scalar
    `amp_skipped`, recorded with `watch(..., scaler=)`): the other rules leave those steps
    out, so they are judged here. A healthy scaler skips a few steps at the start (its
    initial scale backs off) and about one per growth interval (2,000 steps) after; a share
    above 5% after the first 20 steps, or the last 10 steps all skipped, means the gradients
    overflow at any scale (the model diverged, or float16 cannot hold them). Reference:
    PyTorch docs, Automatic Mixed Precision: torch.amp.GradScaler."""
    skipped = scalar(run, SKIPPED)
    skipped = skipped[skipped["value"] > 0] if not skipped.empty else skipped
    if skipped.empty:
        return []
    try:
        steps = np.unique(run.scalars(names=["loss", SKIPPED])["step"].to_numpy(dtype=np.int64))
    except Exception:
        return []
    flagged = set(skipped["step"].astype(int))
    late = steps[steps >= AMP_STARTUP_STEPS]
    share = float(np.mean([s in flagged for s in late])) if len(late) else 0.0
    stuck = len(steps) >= AMP_STUCK_STEPS and all(int(s) in flagged for s in steps[-AMP_STUCK_STEPS:])
    if share <= AMP_SKIP_SHARE and not stuck:
        return []
    what = (f"the last {AMP_STUCK_STEPS} steps were all skipped" if stuck
            else f"{share:.0%} of the steps after step {AMP_STARTUP_STEPS} were skipped")
    return [make_finding(
        "amp_skipped_steps", "warning", None, (min(flagged), max(flagged)),
        f"The GradScaler skipped {len(flagged)} of {len(steps)} steps (Inf/NaN gradients, no update): {what}.",
        "Find where the values overflow (the first NaN/Inf in the gradient distributions of a skipped step's "
        "neighbours); lower the learning rate, clip gradients after scaler.unscale_(optimizer), or train in "
        "bfloat16 (precision='bf16-mixed'), which needs no scaler.",
        {"skipped": len(flagged), "steps": len(steps), "late_share": share, "stuck": stuck,
         "first_steps": sorted(flagged)[:20]},
        "PyTorch docs: Automatic Mixed Precision, torch.amp.GradScaler")]


# Weights written outside the optimizer. Every statistic recorded of a weight (mean, std, min, max,
# the quantiles) moves by at most the largest element change, ‖w_b − w_a‖∞ ≤ Σ_t ‖Δw_t‖∞ over the
# steps between two captures. The updates of the uncaptured steps are bounded by the larger of the
# two captured ones, scaled up where the learning rate or the gradient norm (recorded every step)
# rose in between. On healthy runs (Adam, SGD with momentum, AdamW under OneCycleLR; sampled
# updates of 512x512 layers) the change reaches at most 1.04x that bound; a re-initialisation
# every epoch reaches 3.7-24x. A write is a change 3x the bound, of at least 5% of the weight's std.
WRITE_FACTOR = 3.0
WRITE_MIN_CHANGE = 0.05
WRITE_SHARE = 0.5  # of the parameters compared over the same interval: the whole model was written
# ... and the loss went back to where it started: the worst loss after the write undoes at least
# 75% of what the loss had fallen from its first steps' median to the 5 steps before the write, a
# fall of at least 5% (a restored checkpoint undoes none of it; a model that has learned nothing
# has nothing to undo).
RESET_UNDONE = 0.75
RESET_LEARNED = 0.05
_WEIGHT_STATS = ("mean", "std", "min", "max", "q01", "q05", "q25", "q50", "q75", "q95", "q99")


def _step_growth(s, a: int, b: int) -> np.ndarray | None:
    """Per step a..b-1: how far the scalar `s` (step-indexed) rose above its smaller value at a
    and b (1 where it did not, or is not recorded); None when it is 0 there and rises after."""
    ref = [v for v in (s.get(a), s.get(b)) if v is not None and np.isfinite(v)]
    vals = s.reindex(range(a, b)).to_numpy(float)
    if not ref:
        return np.ones(b - a)
    low = min(ref)
    if low <= 0:
        return None if np.nanmax(np.r_[vals, 0.0]) > 0 else np.ones(b - a)
    return np.where(np.isfinite(vals), np.maximum(1.0, vals / low), 1.0)


def weight_writes(run) -> pd.DataFrame:
    """Per parameter and pair of consecutive captures (a, b): `change` (the largest change of a
    recorded weight statistic), `bound` (what the optimizer's updates can add up to) and `written`
    (change above WRITE_FACTOR x bound and WRITE_MIN_CHANGE x the weight's std)."""
    w, u = dist(run, "weight"), dist(run, "update")
    cols = ["layer", "a", "b", "change", "bound", "written"]
    if w.empty or u.empty or not set(_WEIGHT_STATS) <= set(w.columns):
        return pd.DataFrame(columns=cols)
    groups = len(run.manifest.get("optimizer_groups") or [None])
    rates = [scalar(run, "lr" if groups == 1 else f"lr/group{i}") for i in range(groups)]
    lr = pd.concat(rates).groupby("step")["value"].max() if rates else pd.Series(dtype=float)  # the fastest group
    gn = scalar(run, "grad_norm").set_index("step")["value"]
    u = u.assign(inf=np.maximum(u["min"].abs(), u["max"].abs())).set_index(["layer", "step"])["inf"]
    rows = []
    for layer, ws in w.groupby("layer"):
        ws = ws.sort_values("step")
        for (_, x), (_, y) in zip(ws.iterrows(), ws.iloc[1:].iterrows()):
            a, b = int(x["step"]), int(y["step"])
            base = max(u.get((layer, a), np.nan), u.get((layer, b), np.nan))
            grow = [_step_growth(s, a, b) for s in (lr, gn)]
            if not np.isfinite(base) or base <= 0 or any(g is None for g in grow):
                continue
            change = max(abs(float(y[k]) - float(x[k])) for k in _WEIGHT_STATS)
            bound = float(base * np.sum(grow[0] * grow[1]))
            written = change > WRITE_FACTOR * bound and change > WRITE_MIN_CHANGE * float(x["std"])
            rows.append((layer, a, b, change, bound, written))
    return pd.DataFrame(rows, columns=cols)


def _reset_loss(loss: pd.Series, a: int, b: int) -> tuple[float, float, float] | None:
    """(first, before, after): the loss's first 5 steps' median, the 5 steps' to a, and its worst
    over (a, b], when it went back near its start (RESET_UNDONE) after having fallen (RESET_LEARNED)."""
    if len(loss) < MIN_LOSS_POINTS:
        return None
    first = float(loss.iloc[:5].median())
    before = loss[(loss.index <= a)].iloc[-5:]
    after = loss[(loss.index > a) & (loss.index <= b)]
    if first <= 0 or before.empty or after.empty:
        return None
    v = (first, float(before.median()), float(after.max()))
    learned = first - v[1]
    return v if learned >= RESET_LEARNED * first and v[2] >= first - (1 - RESET_UNDONE) * learned else None


def _writes_chart(run, finding: Finding) -> go.Figure | None:
    return charts.weight_norm(run, finding.layer) if finding.layer else None


@rule("Weights written outside the optimizer: between two captures most parameters change 3x more than "
      "the recorded updates allow (warning when the loss goes back to where it started: a re-initialisation).",
      severities=("warning", "info"), evidence=_writes_chart,
      explains=("grad_norm_spikes", ("update_ratio", symptom(high_ratio)), *NOT_LEARNING))
def rule_weights_reset(run) -> list[Finding]:
    """Weights changed by something other than the optimizer (`weight_writes`: a change of a
    recorded weight statistic over 3x what the updates between the two captures can add up to)
    in at least half of the parameters over the same interval. A warning when the loss at a
    step in that interval undoes ≥ 75% of its fall (≥ 5%) from its first steps to the write:
    the model was re-initialised (a `model.apply(init)` or `reset_parameters()` inside the
    epoch loop, a checkpoint of step 0 loaded). Otherwise info: a restored checkpoint or an
    EMA swap writes weights on purpose and the loss stays low. Reference: the triangle
    inequality on ‖Δw‖∞; TrainCheck (OSDI 2025), invariant "parameters change only through
    optimizer.step"; the PyTorch-forum report "loss resets to the initial value each epoch"."""
    writes = weight_writes(run)
    if writes.empty:
        return []
    share = writes.groupby(["a", "b"])["written"].mean()
    spans = [ab for ab, s in share.items() if s >= WRITE_SHARE]
    if not spans:
        return []
    loss = scalar(run, "loss").set_index("step")["value"].astype(float)
    resets = [(ab, r) for ab in spans if (r := _reset_loss(loss, *ab)) is not None]
    hit = writes[writes["written"] & writes.set_index(["a", "b"]).index.isin(spans)]
    worst = hit.loc[(hit["change"] / hit["bound"]).idxmax()]
    where = ", ".join(f"{a}-{b}" for a, b in spans[:6]) + (" ..." if len(spans) > 6 else "")
    msg = (f"Between the captures at steps {where}, {hit['layer'].nunique()} parameter(s) changed far more than "
           f"the optimizer's updates allow (worst: {worst['layer']}, {worst['change']:.3g} against at most "
           f"{worst['bound']:.3g} from the updates, steps {int(worst['a'])}-{int(worst['b'])}): something else "
           "wrote the weights")
    if resets:
        (a, b), (first, before, after) = resets[0]
        msg += (f", and the loss went back to where it started ({after:.3g} after steps {a}-{b}, from {before:.3g};"
                f" {first:.3g} at the start) {len(resets)} time(s): the model is re-initialised during training.")
        advice = ("Initialise the model once, before the training loop: move model.apply(init_fn) / "
                  "reset_parameters() / load_state_dict(initial) out of the epoch loop.")
    else:
        msg += "; a checkpoint loaded, an EMA swap or a manual edit (fine if meant)."
        advice = "If nothing should write the weights between optimizer steps, look for a load_state_dict or init call."
    return [make_finding(
        "weights_reset", "warning" if resets else "info", str(worst["layer"]),
        (spans[0][0], spans[-1][1]), msg, advice,
        {"intervals": [list(ab) for ab in spans[:20]], "resets": [list(ab) for ab, _ in resets[:20]],
         "parameters": sorted(hit["layer"].unique().tolist())[:20], "worst_change": worst["change"],
         "worst_bound": worst["bound"], "factor": WRITE_FACTOR, "share": WRITE_SHARE},
        "TrainCheck (Jiang et al., OSDI 2025); the triangle inequality on the largest element change")]


# A recurrent module read at its first time step: its output (N, T, H) gets a gradient at 1 of its T
# steps only (the gradient w.r.t. the output zero at (T-1)/T of the positions, within 1%) on at least
# 80% of ≥ 3 captures, as for any one-step readout (out[:, -1] too: backpropagation through time runs
# inside the module), and its recurrent weights get no gradient at any capture: the step read is the
# first (h_0 = 0, so weight_hh never acts on what reaches the loss), a state that has seen one token.
RECURRENT_TYPES = ("RNN", "LSTM", "GRU")
READOUT_TOLERANCE = 0.01
READOUT_SHARE = 0.8
MIN_READOUT_CAPTURES = 3


def _time_steps(run, shape: list) -> int | None:
    """T of a recurrent output (N, T, H) or (T, N, H): the axis that is not the loss's batch."""
    batch = ((run.manifest.get("loss_input_shapes") or {}).get("outputs") or [None])[0]
    if batch is None or len(shape or []) != 3 or shape[0] == shape[1]:
        return None
    return shape[1] if shape[0] == batch else shape[0] if shape[1] == batch else None


def _zero_gradient(run, names: list[str]) -> list[str]:
    """Of `names`, the parameters whose gradient is exactly zero at every capture."""
    g = dist(run, "param_grad")
    if g.empty:
        return []
    g = g[g["layer"].isin(names)]
    return [n for n, rows in g.groupby("layer") if ((rows["min"] == 0) & (rows["max"] == 0)).all()]


@rule("A recurrent layer read at one time step: its output gets a gradient at 1 of T steps, its recurrent "
      "weight none (the loss reads out[:, 0], a state that has seen one token).",
      severities=("error", "warning"), evidence=_depth_chart,
      explains=(("stuck_parameters", same_layer), ("update_ratio", same_layer), "vanishing_gradients",
                *NOT_LEARNING))
def rule_sequence_readout(run) -> list[Finding]:
    """A unidirectional RNN/LSTM/GRU whose output gets a gradient at one time step only: the
    gradient w.r.t. its (N, T, H) output is zero at (T−1)/T of the positions (within 1%) on ≥ 80%
    of ≥ 3 captures, T ≥ 2 (the time axis is the one that is not the loss's batch), and its
    `weight_hh` gets no gradient at any capture: the step read is the first (h_0 = 0), whose
    state has seen one element. Warning. Read at the last step (the usual readout) the output
    has the same zeros, but weight_hh learns: quiet. A Transformer read at its [CLS]
    position has the same pattern by design: only recurrent modules are read. Reference:
    PyTorch docs, nn.GRU/nn.LSTM (output holds h_t for every t; h_n the last); Goodfellow et
    al. 2016 §10.2 (backpropagation through time)."""
    shapes, types = run.manifest.get("output_shapes") or {}, module_types(run)
    d = dist(run, "gradient")
    if d.empty or "zero_frac" not in d:
        return []
    findings = []
    for name, kind in types.items():
        steps = _time_steps(run, shapes.get(name)) if str(kind) in RECURRENT_TYPES else None
        rows = d[(d["layer"] == name) & np.isfinite(d["zero_frac"])]
        if not steps or steps < 2 or len(rows) < MIN_READOUT_CAPTURES:
            continue
        one = (rows["zero_frac"] - (steps - 1) / steps).abs() <= READOUT_TOLERANCE
        if one.mean() < READOUT_SHARE:
            continue
        hh = [p["name"] for p in run.manifest.get("parameters", []) or []
              if p["name"].startswith(f"{name}.weight_hh")]
        if any("reverse" in n for n in hh):
            continue  # bidirectional: its backward half reads every step from the first
        none = _zero_gradient(run, hh)
        if not none or len(none) < len(hh):
            continue  # a later step (the last: the usual readout), whose state has seen the sequence
        s0, s1 = int(rows["step"].min()), int(rows["step"].max())
        findings.append(make_finding(
            "sequence_readout", "warning", name, (s0, s1),
            f"{name} ({kind}): on {int(one.sum())} of {len(rows)} captures only 1 of its {steps} time steps gets a "
            f"gradient (the gradient w.r.t. its output is zero at {rows['zero_frac'].median():.1%} of the positions, "
            f"{steps - 1}/{steps}), and its recurrent weight {', '.join(none)} gets none: the loss reads the first "
            "time step only (out[:, 0]?), a state that has seen one element of the sequence.",
            "Read the last time step (out[:, -1] with batch_first=True, out[-1] without, or h_n[-1]); with padded "
            "batches, the last valid step of each sequence (pack_padded_sequence and h_n).",
            {"time_steps": steps, "zero_frac": float(rows["zero_frac"].median()), "captures": len(rows),
             "one_step_captures": int(one.sum()), "recurrent_without_gradient": none,
             "tolerance": READOUT_TOLERANCE},
            "PyTorch docs: torch.nn.GRU, torch.nn.LSTM (outputs); Goodfellow et al. 2016, Deep Learning §10.2"))
    return findings


# A penalty on the weights read from its effect (an L2 term λ·Σw² added to the loss by hand gives
# the gradient 2λ·w): the gradient of every weight matrix is one multiple c of the weight itself,
# its quantiles (5%-95%) within 15% of the gradient's std of c x the weight's, with one c across the
# matrices and the captures (largest over smallest ≤ 1.25), on ≥ 3 captures, while every matrix's
# norm shrinks below 0.8x its first capture's. The data's gradient has no such shape: it is not a
# multiple of the weights, nor one multiple across layers and steps (healthy digits MLPs: misfit
# 0.21-1.1; a lambda-1 penalty: 0.01-0.09).
PENALTY_FIT = 0.15
PENALTY_SPREAD = 1.25
PENALTY_SHRINK = 0.8
MIN_PENALTY_CAPTURES = 3
_QUANTILES = ("q05", "q25", "q50", "q75", "q95")


def penalty_in_gradient(run) -> dict | None:
    """What a penalty on the weights left in the gradient (see PENALTY_FIT): `ratio` (c, the
    gradient over the weight), `layers`, `shrink` (each matrix's last norm over its first),
    `captures`, `fit` (the worst quantile misfit, in the gradient's std), `steps`; None when the
    gradient is not that."""
    w, g = dist(run, "weight"), dist(run, "param_grad")
    mats = [p["name"] for p in run.manifest.get("parameters", []) or []
            if len(p.get("shape", [])) >= 2 and p.get("requires_grad", True) is not False]
    if w.empty or g.empty or not mats or not set(_QUANTILES) <= set(w.columns):
        return None
    d = w.merge(g, on=["step", "layer"], suffixes=("_w", "_g"))
    d = d[d["layer"].isin(mats) & (d["std_w"] > 0) & (d["std_g"] > 0)]
    if d.empty or set(d["layer"]) != set(mats) or d.groupby("layer").size().min() < MIN_PENALTY_CAPTURES:
        return None
    c = d["std_g"] / d["std_w"]
    misfit = np.max([np.abs(d[f"{q}_g"] - c * d[f"{q}_w"]) / d["std_g"] for q in _QUANTILES], axis=0)
    norm = np.sqrt(d["count_w"] * (d["std_w"] ** 2 + d["mean_w"] ** 2))
    shrink = d.assign(norm=norm).sort_values("step").groupby("layer")["norm"].agg(lambda n: n.iloc[-1] / n.iloc[0])
    if (misfit > PENALTY_FIT).any() or c.max() > PENALTY_SPREAD * c.min() or (shrink >= PENALTY_SHRINK).any():
        return None
    return {"ratio": float(c.median()), "layers": mats, "shrink": {k: float(v) for k, v in shrink.items()},
            "captures": int(d["step"].nunique()), "fit": float(misfit.max()),
            "steps": (int(d["step"].min()), int(d["step"].max()))}
