"""Health rules on how the model fits its labels: outputs against labels, the loss against a
trivial baseline, overfitting, suspected label noise.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from diagnostics import figures
from diagnostics.dynamics import CONFIDENT_MARGIN, HARD, LATE_WRONG, SUSPECTED, data_map, label_verdict
from diagnostics.health import charts
from diagnostics.health.common import (
    BASELINE_NEAR_FRACTION,
    BINARY_LOSSES,
    CE_LOSSES,
    MIN_POOLED_LABELS,
    MSE_LOSSES,
    Finding,
    class_counts,
    class_name,
    dist,
    last_captures,
    last_loss,
    make_finding,
    pooled_moments,
    scalar,
)
from diagnostics.health.registry import rule

# Output vs label: predicted share outside [share / 3, share * 3].
CLASS_SHARE_FACTOR = 3.0
MIN_EXPECTED_COUNT = 5
REGRESSION_STD_RATIO = 0.1
REGRESSION_MEAN_GAP_STDS = 1.0
# A verdict on the output/label shares needs this many captures in the late window: one
# capture (an automatic schedule's last power of two, half-way through a short run) is one
# batch of one moment, info at most (issue #23: a char LM flagged from one capture).
MIN_LATE_CAPTURES = 3
# Argmax shares track the label shares only for a model that is mostly right: at a mean
# cross-entropy above ln 2 the label's typical probability is under 1/2, so the argmax is
# often another class, and an uncertain but calibrated model (a language model over a Zipf
# vocabulary) puts it on the likely classes and never on the rare ones, by design (Bayes'
# rule picks the mode of p(y|x); Guo et al. 2017 on calibration vs accuracy).
CONFIDENT_LOSS_NATS = math.log(2)
# Losses whose input is a log-probability and whose target a probability (KLDivLoss):
# outputs and labels live in different spaces, so their moments are not comparable.
DIVERGENCE_LOSSES = {"KLDivLoss", "kl_div"}
# Binary losses on probabilities (a sigmoid inside the model, as a DCGAN discriminator's):
# hooks/capture.py's output_summaries counts a single output as class 1 when it is above 0,
# which every probability is, so the predicted shares say nothing (the D of pytorch/examples dcgan).
PROBABILITY_LOSSES = {"BCELoss", "binary_cross_entropy"}
# Class weights that rise with the class counts (weight = counts / total where 1 / counts was meant):
# the loss weighs the rare classes down on top of their rarity; a weighting for imbalance weighs them up
# (sklearn's class_weight="balanced": n / (k * count); King & Zeng 2001). The weights' rank correlation
# with the label counts (counted from the captured batches: noisy for rare classes) at least 0.7 and
# their span at least 2x; a warning when the rarest third of the
# classes is predicted at under 1/3 of its label share over the second half of the captures, else info.
WEIGHT_COUNT_CORR = 0.7
WEIGHT_SPAN = 2.0
# Loss vs baseline: labels this imbalanced (the rarest class under half the uniform share)
# and that class predicted at 1.5x its label share or more: the loss pushes toward the rare
# class (pos_weight, class weights, resampling), so its baseline is not the prior entropy.
MINORITY_SHARE_OF_UNIFORM = 0.5
MINORITY_OVERPREDICT = 1.5
# Overfitting: validation points needed, and how far val loss must rise above its best.
MIN_VAL_POINTS = 5
# ... or 4, when every one after the best is higher than the one before and the last at least 10%
# above the best: a short run validated a few times (a sampler repeating a few samples, #23) whose
# validation loss only climbs while the training loss falls is no noise.
MIN_VAL_POINTS_MONOTONE = 4
VAL_RISE_MONOTONE = 0.10
VAL_RISE_FRACTION = 0.05
# Label noise: a suspect loses in >= 80% of its late records with a median margin below -2
# logits (`dynamics.label_verdict`, which the data map's shortlist uses too); suspects as a share
# of the samples (calibrated on flipped digits and the OCT simulator).
LABEL_NOISE_LATE_WRONG = LATE_WRONG
LABEL_NOISE_MARGIN = CONFIDENT_MARGIN
LABEL_NOISE_MIN_SHARE = 0.02
LABEL_NOISE_WARN_SHARE = 0.03
LABEL_NOISE_MAX_SHARE = 0.30  # above this the model has not learned yet: not label noise
# "Stays misclassified" needs each sample seen in several epochs: with fewer records per
# sample (median) a suspect is one late look at a sample not learned yet (issue #23: one
# epoch), so the finding is info. Pleiss et al. rank by the margin over many epochs.
LABEL_NOISE_MIN_RECORDS = 3


def _output_chart(run, finding: Finding) -> go.Figure:
    out, lab = run.distributions("output"), run.distributions("label")
    if not lab.empty and "train/class" in set(lab["layer"]):
        out, lab = out[out["layer"] == "train/class"], lab[lab["layer"] == "train/class"]
        return figures.class_distribution_figure(figures.pooled_class_counts(out), figures.pooled_class_counts(lab),
                                                 run.manifest.get("class_names"), "class shares, all captures")
    out, lab = out[out["layer"] == "train/value"], lab[lab["layer"] == "train/value"]
    return figures.value_bands_figure(out, lab)


def _late_outputs_and_labels(run, layer: str) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """Output and label summaries of `layer` over the last third of the label captures, or None."""
    out, lab = dist(run, "output"), dist(run, "label")
    if out.empty or lab.empty:
        return None
    out, lab = out[out["layer"] == layer], lab[lab["layer"] == layer]
    if out.empty or lab.empty:
        return None
    lab = last_captures(lab)
    return out[out["step"].isin(lab["step"].unique())], lab


def _class_shares(run, out: pd.DataFrame, lab: pd.DataFrame, ref: str) -> list[Finding]:
    pred_counts, label_counts = class_counts(out), class_counts(lab)
    if pred_counts is None or label_counts is None or label_counts.sum() < MIN_POOLED_LABELS:
        return []
    if run.manifest.get("loss_fn") in PROBABILITY_LOSSES and max(pred_counts.size, label_counts.size) == 2:
        return []  # the recorder thresholds one output at 0, and a probability is always above: no predictions
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
    fmt = lambda cs: ", ".join(f"{class_name(run, c)} ({q[c]:.0%} predicted vs {p[c]:.0%} labelled)" for c in cs)
    parts = ([f"over-predicted: {fmt(over)}"] if over else []) + ([f"under-predicted: {fmt(under)}"] if under else [])
    caveat = _share_caveat(run, len(steps))
    return [make_finding(
        "output_vs_label", "info" if caveat else "warning", "train/class", (steps[0], steps[-1]),
        f"Over the last {len(steps)} captures (steps {steps[0]}-{steps[-1]}), {'; '.join(parts)} "
        f"(threshold {CLASS_SHARE_FACTOR:.0f}x){caveat}.",
        "For class imbalance, weight the loss (CrossEntropyLoss(weight=...)) or resample the classes "
        "(WeightedRandomSampler), try a focal loss, and initialise the last bias to the log class prior; "
        "if the model predicts one class for everything, check the learning rate and the normalisation.",
        {"predicted_share": {class_name(run, c): q[c] for c in range(width)},
         "label_share": {class_name(run, c): p[c] for c in range(width)},
         "over_predicted": [class_name(run, c) for c in over],
         "under_predicted": [class_name(run, c) for c in under], "labels_pooled": n,
         "factor": CLASS_SHARE_FACTOR, "late_captures": len(steps)}, ref)]


def _prior_entropy(run) -> float | None:
    """The label prior's entropy (nats), from the label class histograms of all captures."""
    lab = dist(run, "label")
    counts = class_counts(lab[lab["layer"] == "train/class"]) if not lab.empty else None
    if counts is None or counts.sum() < MIN_POOLED_LABELS:
        return None
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def _share_caveat(run, late_captures: int) -> str:
    """Why the class shares alone cannot support a warning ("" when they can): too few
    captures, or a cross-entropy model that learns from its input (loss below 90% of the
    prior's entropy) but is still uncertain (mean loss above ln 2), whose argmax favours the
    likely classes by design. A model at the prior's entropy ignores its input: then the
    skew is the problem, and stays a warning."""
    if _prior_entropy(run) == 0:
        return ("; but every label of the run is one class (a GAN generator's \"real\" targets, a one-class "
                "objective): the labels are the loss's targets, not a class mix the predictions should match")
    if late_captures < MIN_LATE_CAPTURES:
        return (f"; from {late_captures} capture(s) only (under {MIN_LATE_CAPTURES}): one moment of training, "
                "not a verdict")
    m = run.manifest
    if not (m.get("loss_fn") in CE_LOSSES or m.get("loss_fn") in BINARY_LOSSES):
        return ""
    last, baseline = last_loss(run), _prior_entropy(run)
    if last is None or baseline is None or last[0] <= CONFIDENT_LOSS_NATS:
        return ""
    if last[0] >= BASELINE_NEAR_FRACTION * baseline:
        return ""
    return (f"; but the model learns (loss {last[0]:.3g} nats, under {BASELINE_NEAR_FRACTION:.0%} of the prior's "
            f"{baseline:.3g}) and is still uncertain (above ln 2): its argmax goes to the likely classes and "
            "rarely to rare ones, as a calibrated model's does")


def _regression_moments(run, out: pd.DataFrame, lab: pd.DataFrame, ref: str) -> list[Finding]:
    (om, osd, _), (lm, lsd, ln) = pooled_moments(out), pooled_moments(lab)
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
    caveat = _value_caveat(run, out, lab)
    return [make_finding(
        "output_vs_label", "info" if caveat else "warning", "train/value", (steps[0], steps[-1]),
        f"Over the last {len(steps)} captures (steps {steps[0]}-{steps[-1]}), {' and '.join(problems)}{caveat}.",
        "Standardise the targets (subtract the mean, divide by the std) and initialise the output bias to "
        "the target mean; check the learning rate, and that the loss compares the right shapes "
        "(an (N,1) output against an (N,) target broadcasts).",
        {"output_mean": om, "output_std": osd, "label_mean": lm, "label_std": lsd}, ref)]


def _value_caveat(run, out: pd.DataFrame, lab: pd.DataFrame) -> str:
    """Why the outputs' and labels' moments are not comparable ("" when they are): the loss
    takes log-probabilities against probabilities (KLDivLoss, as in distillation), named by
    the manifest or seen in the values (every output <= 0, every label in [0, 1])."""
    named = run.manifest.get("loss_fn") in DIVERGENCE_LOSSES
    span = lambda d, col: d[col].to_numpy(float) if col in d else np.array([np.nan])
    out_max, lab_min, lab_max = span(out, "max"), span(lab, "min"), span(lab, "max")
    seen = bool(np.isfinite(out_max).all() and np.isfinite(lab_min).all() and np.isfinite(lab_max).all()
                and out_max.max() <= 0 and lab_min.min() >= 0 and lab_max.max() <= 1)
    if not (named or seen):
        return ""
    return ("; but the outputs are log-probabilities (all <= 0) and the labels probabilities (in [0, 1]), "
            "as KLDivLoss takes them (distillation, soft targets): their moments are not comparable")


@rule("Outputs against labels: a class predicted at under 1/3 or over 3x its label share; class weights of the "
      "loss that rise with the class counts; regression outputs collapsed (std under 0.1x the labels') or "
      "shifted (over 1 label std).", severities=("warning", "info"),
      evidence=_output_chart)
def rule_output_vs_label(run) -> list[Finding]:
    """The model's outputs against the labels, pooled over the last third of the captures.
    Classification: a class predicted at < 1/3 or > 3x its label share (classes with at
    least 5 expected samples; ≥ 30 labels pooled). Regression: output std < 0.1x the label
    std, or means apart by > 1 label std. Reference: the practitioner's checklist (compare
    output and label distributions); Karpathy 2019, "A Recipe for Training Neural Networks"."""
    task = run.manifest.get("task")
    ref = "Karpathy 2019, A Recipe for Training Neural Networks"
    if task == "classification":
        pair = _late_outputs_and_labels(run, "train/class")
        return (_class_shares(run, *pair, ref) if pair else []) + _weights_follow_counts(run)
    if task == "regression":
        pair = _late_outputs_and_labels(run, "train/value")
        return _regression_moments(run, *pair, ref) if pair else []
    return []


def _weights_follow_counts(run) -> list[Finding]:
    """The loss's per-class weights rising with the label counts (WEIGHT_COUNT_CORR, WEIGHT_SPAN):
    a warning when the rarest third of the classes is under-predicted (under 1/3 of its label
    share) over the second half of the captures, else info."""
    w, out, lab = run.manifest.get("loss_class_weight"), dist(run, "output"), dist(run, "label")
    if not w or lab.empty or out.empty:
        return []
    lab, out = lab[lab["layer"] == "train/class"], out[out["layer"] == "train/class"]
    counts = class_counts(lab)
    if counts is None or counts.sum() < MIN_POOLED_LABELS:
        return []
    w = np.asarray(w, float)
    present = [c for c in range(min(w.size, counts.size)) if counts[c] > 0]
    wp, cp = w[present], counts[present]
    if len(present) < 3 or not (wp.min() > 0 and wp.max() >= WEIGHT_SPAN * wp.min()):
        return []
    rho = float(pd.Series(wp).rank().corr(pd.Series(cp).rank()))
    if not rho >= WEIGHT_COUNT_CORR:
        return []
    rare = [present[i] for i in np.argsort(cp, kind="stable")[:max(1, len(present) // 3)]]
    half = lab["step"].max() / 2
    pred, labs = class_counts(out[out["step"] >= half]), class_counts(lab[lab["step"] >= half])
    p = q = math.nan
    if pred is not None and labs is not None and pred.sum() > 0 and labs.sum() > 0:
        pred, labs = np.pad(pred, (0, max(0, w.size - pred.size))), np.pad(labs, (0, max(0, w.size - labs.size)))
        p, q = labs[rare].sum() / labs.sum(), pred[rare].sum() / pred.sum()
    harm = bool(p > 0 and q < p / CLASS_SHARE_FACTOR)
    names = ", ".join(class_name(run, c) for c in rare)
    return [make_finding(
        "output_vs_label", "warning" if harm else "info", "train/class",
        (int(lab["step"].min()), int(lab["step"].max())),
        f"The loss's class weights rise with the class counts (rank correlation {rho:.2f}, weights "
        f"{wp.min():.3g}-{wp.max():.3g}): the rarest classes ({names}) are weighed down on top of being rare"
        + (f", and are predicted at {q:.0%} against their {p:.0%} of the labels over the second half of the run"
           if harm else "") + ".",
        "Weigh classes by the inverse of their counts: weight = counts.sum() / (len(counts) * counts) "
        "(sklearn's class_weight='balanced'), not counts / counts.sum().",
        {"class_weight": wp.tolist(), "label_counts": cp.tolist(), "rank_correlation": rho, "rare_classes": rare,
         "rare_predicted_share": q, "rare_label_share": p, "factor": CLASS_SHARE_FACTOR},
        "King & Zeng 2001, Logistic Regression in Rare Events Data; scikit-learn compute_class_weight('balanced')")]


def _reweighted_toward_rare(run) -> str | None:
    """How the late predictions over-predict the rarest label class (its share under half
    the uniform one, predicted at >= 1.5x that share), or None. A loss that is not
    reweighted pulls the argmax away from a rare class, never toward it (Bayes' rule picks
    the mode); an input-ignoring model predicts the majority for all. Only a loss that
    weighs the rare class up (BCEWithLogitsLoss(pos_weight=), CrossEntropyLoss(weight=),
    a balanced sampler) does, and its baseline is a weighted entropy the run does not record."""
    pair = _late_outputs_and_labels(run, "train/class")
    if pair is None:
        return None
    pred, labels = class_counts(pair[0]), class_counts(pair[1])
    if pred is None or labels is None or labels.sum() < MIN_POOLED_LABELS or pred.sum() == 0:
        return None
    width = max(pred.size, labels.size)
    pred, labels = np.pad(pred, (0, width - pred.size)), np.pad(labels, (0, width - labels.size))
    present = np.flatnonzero(labels > 0)
    c = int(present[np.argmin(labels[present])])
    p, q = labels[c] / labels.sum(), pred[c] / pred.sum()
    if p >= MINORITY_SHARE_OF_UNIFORM / len(present) or q < MINORITY_OVERPREDICT * p:
        return None
    return f"{class_name(run, c)} at {q:.0%} against its {p:.0%} of the labels"


def _trivial_baseline(run) -> tuple[float, str, str] | None:
    """(baseline loss, what it predicts, unit) of a model that ignores its input, or None:
    the label prior's entropy (cross-entropy, binary with 2 classes), the label variance (MSE)."""
    task, loss_fn = run.manifest.get("task"), run.manifest.get("loss_fn")
    if task == "classification" and (loss_fn in CE_LOSSES or (loss_fn in BINARY_LOSSES
                                                                 and run.manifest.get("num_classes") == 2)):
        entropy = _prior_entropy(run)
        return None if entropy is None else (entropy, "always predicting the class prior", "nats")
    if task == "regression" and loss_fn in MSE_LOSSES:
        lab = dist(run, "label")
        if lab.empty:
            return None
        _, lsd, n = pooled_moments(lab[lab["layer"] == "train/value"])
        if n < MIN_POOLED_LABELS or not math.isfinite(lsd):
            return None
        return lsd ** 2, "always predicting the label mean (the label variance)", "MSE"
    return None


@rule("The loss against a trivial baseline (the label prior's entropy, the label variance): warning when no "
      "better than 90% of it, info with how far below.", severities=("warning", "info"),
      evidence=charts.loss_with_baseline)
def rule_loss_vs_baseline(run) -> list[Finding]:
    """The last training loss (median of the last 10% of steps, at least 5) against the loss
    of a model that ignores its input. Classification with cross-entropy: the entropy of
    the label distribution (from the label class histograms); regression with MSE: the
    label variance. Warning at ≥ 90% of the baseline; info otherwise (how far below).
    Reference: Karpathy 2019, "A Recipe for Training Neural Networks" (verify loss @ init,
    input-independent baseline)."""
    loss_fn = run.manifest.get("loss_fn")
    last, found = last_loss(run), _trivial_baseline(run)
    if last is None or found is None:
        return []
    (value, s0, s1), (baseline, what, unit) = last, found
    ev = {"last_loss": value, "baseline": baseline, "ratio": value / baseline if baseline > 0 else None,
          "loss_fn": loss_fn, "near_fraction": BASELINE_NEAR_FRACTION}
    ref = "Karpathy 2019, A Recipe for Training Neural Networks"
    if baseline <= 0:
        return []
    if value >= BASELINE_NEAR_FRACTION * baseline:
        rel = "no better than" if value >= baseline else "barely better than"
        reweighted = _reweighted_toward_rare(run) if unit == "nats" else None
        if reweighted:
            return [make_finding(
                "loss_vs_baseline", "info", None, (s0, s1),
                f"Your loss {value:.3g} (steps {s0}-{s1}) is {rel} {what} ({baseline:.3g} {unit}), but the model "
                f"predicts the rare class {reweighted}: the loss weighs that class up (pos_weight, class weights, "
                "resampling), so the prior's entropy is not its baseline.",
                "Compare the loss against the same weighted loss of a constant prediction, or watch a metric "
                "that ignores the weights (balanced accuracy, average precision).",
                {**ev, "reweighted": reweighted}, ref)]
        return [make_finding(
            "loss_vs_baseline", "warning", None, (s0, s1),
            f"Your loss {value:.3g} (steps {s0}-{s1}) is {rel} {what} ({baseline:.3g} {unit}).",
            "The model ignores its input: check that inputs and labels line up, normalise the inputs, raise "
            "or lower the learning rate (try a learning-rate range test), check the initialisation, and make "
            "sure the model can overfit a single batch first.",
            ev, ref)]
    return [make_finding(
        "loss_vs_baseline", "info", None, (s0, s1),
        f"Your loss {value:.3g} (steps {s0}-{s1}) is {1 - value / baseline:.0%} below {what} ({baseline:.3g} {unit}).",
        "Nothing to fix; compare the validation loss against the same baseline.",
        ev, ref)]


def _overfitting_chart(run, finding: Finding) -> go.Figure:
    return charts.loss_curves(run, "training vs validation loss", smooth=0.6)


def _climbs(vv: np.ndarray) -> bool:
    """Every validation loss after the best is above the one before, the last VAL_RISE_MONOTONE above the best."""
    best = int(np.argmin(vv))
    return bool(best < len(vv) - 1 and np.all(np.diff(vv[best:]) > 0) and vv[-1] >= (1 + VAL_RISE_MONOTONE) * vv[best])


@rule("Overfitting: the validation loss rising from its best while the training loss falls and the gap grows.",
      severities=("warning",), evidence=_overfitting_chart)
def rule_overfitting(run) -> list[Finding]:
    """Overfitting, when `val/loss` is logged (≥ 5 points, or 4 that climb steadily after the
    best to 10% above it, `_climbs`): over the last third of its
    points (at least 3) the validation loss rises (positive slope, and its last value ≥ 5%
    above its best) while the training loss falls and the gap between them grows.
    Reference: Prechelt 1998, "Early Stopping — But When?"; Goodfellow et al. 2016, §7.8."""
    val = scalar(run, "val/loss")
    val = val[np.isfinite(val["value"].astype(float))]
    train = scalar(run, "loss")
    train = train[np.isfinite(train["value"].astype(float))]
    vs, vv = val["step"].to_numpy(float), val["value"].to_numpy(float)
    if len(val) < MIN_VAL_POINTS_MONOTONE or len(train) < 2 or len(val) < MIN_VAL_POINTS and not _climbs(vv):
        return []
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
    return [make_finding(
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


def _label_noise_chart(run, finding: Finding) -> go.Figure:
    dyn = run.sample_dynamics("train")
    found = data_map(dyn, "classification")
    return figures.data_map_figure(dyn, found.regions, found.thresholds)


@rule("Suspected label noise: training samples still misclassified late with another class confidently ahead "
      "(warning from 3%, info from 2%); hard samples, as info.", severities=("warning", "info"),
      evidence=_label_noise_chart,
      explains=("overfitting",))
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
    verdict = label_verdict(dyn)  # the data map's shortlist says the same of each sample
    suspects = dyn[verdict == SUSPECTED].sort_values("label_error_score", ascending=False)
    hard = dyn[verdict == HARD]
    share, hard_share = len(suspects) / len(dyn), len(hard) / len(dyn)
    if share > LABEL_NOISE_MAX_SHARE or hard_share > LABEL_NOISE_MAX_SHARE:
        return []
    ev = {"suspects": len(suspects), "hard": len(hard), "samples": len(dyn), "share": share,
          "hard_share": hard_share, "late_wrong_threshold": LABEL_NOISE_LATE_WRONG,
          "margin_threshold": LABEL_NOISE_MARGIN, "min_share": LABEL_NOISE_MIN_SHARE}
    ref = "Pleiss et al. 2020, Area Under the Margin Ranking; Northcutt et al. 2021, Confident Learning"
    records = float(dyn["n_records"].median()) if "n_records" in dyn else math.inf
    ev["median_records"] = records
    if share >= LABEL_NOISE_MIN_SHARE:
        top = suspects.head(10)
        sure = share >= LABEL_NOISE_WARN_SHARE and records >= LABEL_NOISE_MIN_RECORDS
        return [make_finding(
            "label_noise", "warning" if sure else "info", None, (None, None),
            f"{len(suspects)} of {len(dyn)} training samples ({share:.1%}) stay misclassified late in training "
            f"with another class confidently ahead (median late margin < {LABEL_NOISE_MARGIN:g} logits): "
            f"likely wrong labels; the most suspect: {', '.join(map(str, top['sample_id']))}.",
            ("Relabel or drop the wrong ones after a look (error review page), or train with a noise-robust "
             "loss (label smoothing, a symmetric or truncated loss)." if sure else
             "Review these samples (error review page); too few to call label noise with confidence"
             + (f" (each sample seen {records:g} time(s): train more epochs to tell)." if records <
                LABEL_NOISE_MIN_RECORDS else ".")),
            {**ev, "top_ids": top["sample_id"].astype(str).tolist(),
             "top_scores": top["label_error_score"].tolist()}, ref)]
    if hard_share >= LABEL_NOISE_MIN_SHARE:
        return [make_finding(
            "label_noise", "info", None, (None, None),
            f"{len(hard)} of {len(dyn)} training samples ({hard_share:.1%}) are still misclassified late in "
            f"training, but without a confident other class (median late margin ≥ {LABEL_NOISE_MARGIN:g} "
            "logits): hard or ambiguous cases, not evidence of wrong labels.",
            "Nothing to relabel: look at them (error review page) for a pattern (a sub-population, an "
            "artefact); more data or capacity for those cases helps more than cleaning.", ev, ref)]
    return []
