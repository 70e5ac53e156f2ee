"""Health rules for data bugs: labels the inputs cannot predict, validation samples
duplicated in the training set, batches that were never shuffled. (The loss-input bugs
are in `diagnostics.health.loss`.)

Like every health rule, each is `rule_xxx(run) -> list[Finding]`, registered with `@rule`
(description and evidence chart), reads only what the run recorded and returns no
finding when its data is missing.

Example::

    from diagnostics.health import data
    data.rule_unshuffled_batches(diagnostics.open_run("runs/exp1"))
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from diagnostics.figures import empty_figure
from diagnostics.health import charts
from diagnostics.health.activations import inputs_constant
from diagnostics.health.common import (
    BASELINE_NEAR_FRACTION,
    BINARY_LOSSES,
    CE_LOSSES,
    MIN_POOLED_LABELS,
    Finding,
    class_counts,
    dist,
    histogram,
    last_loss,
    make_finding,
    pooled_moments,
    scalar,
)
from diagnostics.health.gradients import penalty_in_gradient
from diagnostics.health.registry import rule

# Labels not learnable: training long enough, with the optimizer moving every weight matrix.
LABELS_MIN_STEPS = 100
MOVING_RATIO_LOW = 1e-4  # update/weight ratio below which a layer counts as not moving
MOVING_RATIO_HIGH = 1e-1
# Leakage: cosine similarity of embeddings that makes a val sample a copy of a train sample.
DUPLICATE_COSINE = 0.9999
INPUT_STAT_RTOL = 1e-3
LEAK_MIN_SHARE = 0.01
LEAK_MIN_COUNT = 3
LEAK_MAX_VAL = 4_000
LEAK_MAX_TRAIN = 50_000
# Unshuffled: per-batch tests against the pooled label distribution, Holm-corrected.
SHUFFLE_ALPHA = 0.01
SHUFFLE_MIN_BATCH = 16
SHUFFLE_MIN_BATCHES = 5
SHUFFLE_REJECT_SHARE = 0.25
# One class: labels pooled over this many captures at least; a loss below this share of log K means
# the model reached the trivial answer (predict that class for every input), which a task with
# several classes, or a contrastive target at a fixed position (InfoNCE, positive at index 0), never gives.
SINGLE_CLASS_MIN_CAPTURES = 3
SINGLE_CLASS_LOSS_FRACTION = 0.1


# ---------------------------------------------------------------------------------
# Reading helpers


def _weight_ratios(run) -> dict[str, float]:
    """Median update ratio of each trainable weight matrix or kernel."""
    try:
        ratios = run.update_ratios()
    except Exception:
        return {}
    if ratios.empty:
        return {}
    params = {p.get("name"): p for p in run.manifest.get("parameters", []) or []}
    out = {}
    for layer, rows in ratios[np.isfinite(ratios["ratio"])].groupby("layer"):
        p = params.get(layer)
        if p is None or len(p.get("shape", [])) < 2 or p.get("requires_grad") is False:
            continue
        out[str(layer)] = float(rows["ratio"].median())
    return out


def _train_samples(run) -> tuple[int, str]:
    """How many training samples there are (distinct ids of the per-sample records), or
    at most (samples seen: the batch size at the captures times the steps)."""
    try:
        rec = run.records("train")
    except Exception:
        rec = pd.DataFrame()
    if not rec.empty:
        return int(rec["sample_id"].nunique()), "distinct sample ids"
    lab = dist(run, "label")
    lab = lab[lab["layer"] == "train/class"] if not lab.empty else lab
    if lab.empty:
        return 0, ""
    steps = int(run.manifest.get("steps") or lab["step"].max() + 1)
    return int(lab["count"].median() * steps), "samples seen (batch size x steps)"


# ---------------------------------------------------------------------------------
# Rules


def _entropy_chart(run, finding: Finding) -> go.Figure:
    return charts.with_line(charts.scalar_lines(run, ["loss"], "training loss against the label entropy"),
                            (finding.evidence or {}).get("label_entropy"), "label entropy")


@rule("Labels the inputs cannot predict: the loss stays at the label entropy although every layer moves and "
      "the model could memorise the training set (labels shuffled apart from their inputs).",
      severities=("warning", "info"), evidence=_entropy_chart,
      explains=("loss_vs_baseline", "output_vs_label", "label_noise", "overfitting"))
def rule_labels_unlearnable(run) -> list[Finding]:
    """Labels the inputs cannot predict (labels shuffled apart from their inputs, a
    misaligned join): after ≥ 100 steps the training loss (median of the last 10% of
    steps) is still ≥ 90% of the label entropy, although every trainable weight matrix
    moves (median update ratio within [1e-4, 1e-1]) and the model has at least as many
    trainable parameters as training samples, enough to memorise them. Such a network
    fits even random labels, slowly (Zhang et al. 2017, "Understanding deep learning
    requires rethinking generalization"); with real labels it would have left the
    prior long before. Stronger than `loss_vs_baseline`: that rule says no better than
    the prior, this one rules out a frozen or starved optimizer and a too-small model, and a
    penalty that is the whole gradient (`gradients.penalty_in_gradient`: every layer moves, but only
    towards zero; `weight_decay_dominates` names it)."""
    if inputs_constant(run):  # one input repeated: `constant_inputs`, not the labels (rule out the data first)
        return []
    m = run.manifest
    if m.get("task") != "classification" or not (m.get("loss_fn") in CE_LOSSES or (
            m.get("loss_fn") in BINARY_LOSSES and m.get("num_classes") == 2)):
        return []
    last = last_loss(run)
    lab = dist(run, "label")
    counts = class_counts(lab[lab["layer"] == "train/class"]) if not lab.empty else None
    if last is None or counts is None or counts.sum() < MIN_POOLED_LABELS:
        return []
    value, s0, s1 = last
    p = counts[counts > 0] / counts.sum()
    entropy = float(-(p * np.log(p)).sum())
    if s1 + 1 < LABELS_MIN_STEPS or entropy <= 0 or value < BASELINE_NEAR_FRACTION * entropy:
        return []
    if penalty_in_gradient(run) is not None:
        return []  # the model is ruled out first: the gradient is a penalty's, not the data's (weight_decay_dominates)
    ratios = _weight_ratios(run)
    if not ratios or not all(MOVING_RATIO_LOW <= r <= MOVING_RATIO_HIGH for r in ratios.values()):
        return []
    trainable = sum(int(q.get("numel", 0)) for q in m.get("parameters", []) or [] if q.get("requires_grad", True))
    n, how = _train_samples(run)
    if n == 0 or trainable < n:
        return []
    val = scalar(run, "val/accuracy")
    val_note = (f"; validation accuracy {val['value'].iloc[-1]:.1%} against a majority share of {p.max():.1%}"
                if not val.empty else "")
    return [make_finding(
        "labels_unlearnable", "warning", None, (s0, s1),
        f"The training loss {value:.3g} (steps {s0}-{s1}) stays at {value / entropy:.0%} of the label entropy "
        f"({entropy:.3g} nats) although every weight matrix moves (median update ratios "
        f"{min(ratios.values()):.2g}-{max(ratios.values()):.2g}) and the model has {trainable:,} trainable "
        f"parameters for {n:,} {how}, enough to memorise them{val_note}: the labels look unrelated to the inputs.",
        "Check that inputs and labels stay paired: shuffle them together (one index, or a Dataset that returns "
        "(x, y)), never separately; check joins and sort orders between input files and label files; look at a "
        "few inputs with their labels; and make sure the inputs are not constant (an all-zero or cached tensor).",
        {"last_loss": value, "label_entropy": entropy, "ratio": value / entropy, "trainable_params": trainable,
         "train_samples": n, "samples_counted_as": how, "update_ratio_min": min(ratios.values()),
         "update_ratio_max": max(ratios.values()), "near_fraction": BASELINE_NEAR_FRACTION,
         "val_accuracy": float(val["value"].iloc[-1]) if not val.empty else None},
        "Zhang et al. 2017, Understanding deep learning requires rethinking generalization; "
        "Karpathy 2019, A Recipe for Training Neural Networks",
    )]


def _unit_embeddings(samples: pd.DataFrame, limit: int) -> tuple[pd.DataFrame, np.ndarray]:
    """At most `limit` samples (evenly spaced, so the choice is fixed) with a non-zero
    embedding, and their embeddings scaled to unit length."""
    s = samples[samples["embedding"].map(lambda e: e is not None and len(e) > 0)]
    if len(s) > limit:
        s = s.iloc[np.linspace(0, len(s) - 1, limit).astype(int)]
    if s.empty:
        return s, np.zeros((0, 0))
    emb = np.stack(s["embedding"].map(lambda e: np.asarray(e, dtype=np.float64)).to_numpy())
    norms = np.linalg.norm(emb, axis=1)
    keep = norms > 0
    return s[keep].reset_index(drop=True), emb[keep] / norms[keep, None]


def _nearest(query: np.ndarray, base: np.ndarray, chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Cosine similarity of each unit row of `query` to its nearest unit row of `base`, and which."""
    best, where = np.empty(len(query)), np.empty(len(query), dtype=np.int64)
    for i in range(0, len(query), chunk):
        sims = query[i:i + chunk] @ base.T
        where[i:i + chunk] = sims.argmax(axis=1)
        best[i:i + chunk] = sims[np.arange(len(sims)), where[i:i + chunk]]
    return best, where


def _same_inputs(val: pd.DataFrame, train: pd.DataFrame, vi: np.ndarray, ti: np.ndarray) -> np.ndarray:
    """Whether the paired samples also agree on every recorded input statistic (input_*)."""
    cols = [c for c in val.columns if c.startswith("input_") and c in train.columns]
    same = np.ones(len(vi), dtype=bool)
    for c in cols:
        a, b = val[c].to_numpy(float)[vi], train[c].to_numpy(float)[ti]
        same &= np.isclose(a, b, rtol=INPUT_STAT_RTOL, atol=1e-6) | (np.isnan(a) & np.isnan(b))
    return same


@rule("Train/validation leakage: validation samples that are copies of training samples (same embedding, same "
      "input statistics; needs run.evaluate(..., split=\"train\") too).", severities=("warning",))
def rule_split_leakage(run) -> list[Finding]:
    """Train/validation leakage: validation samples whose embedding (from the same
    evaluation step for both splits) has cosine similarity ≥ 0.9999 with a training
    sample's, and whose recorded input statistics (input_*, required) agree within 0.1%: copies or
    near-copies of training samples, when they are ≥ 1% of the validation samples (and
    ≥ 3). Needs both splits evaluated (`run.evaluate(..., split="train")`); at most 4,000
    validation against 50,000 training samples. Validation metrics on such a split
    measure memorisation. Reference: Kaufman et al. 2012, "Leakage in data mining";
    Barz & Denzler 2020, "Do we train on test data? Purging CIFAR of near-duplicates"."""
    try:
        train = run.samples("train")
        if train.empty or "embedding" not in train:
            return []
        step = int(train["step"].max())
        val = run.samples("val", step=step)
    except Exception:
        return []
    # penultimate-layer embeddings of a confident model sit at cosines near 1 within a class
    # (digits: 99th percentile 0.9998): the input statistics are what tells a copy apart
    if val.empty or "embedding" not in val or not any(c.startswith("input_") and c in train for c in val):
        return []
    val, ev = _unit_embeddings(val, LEAK_MAX_VAL)
    train, et = _unit_embeddings(train, LEAK_MAX_TRAIN)
    if len(val) == 0 or len(train) == 0 or ev.shape[1] != et.shape[1]:
        return []
    best, where = _nearest(ev, et)
    vi = np.flatnonzero(best >= DUPLICATE_COSINE)
    vi = vi[_same_inputs(val, train, vi, where[vi])]
    share = len(vi) / len(val)
    if len(vi) < LEAK_MIN_COUNT or share < LEAK_MIN_SHARE:
        return []
    order = vi[np.argsort(-best[vi], kind="stable")][:10]
    pairs = [{"val_id": str(val["sample_id"].iloc[i]), "train_id": str(train["sample_id"].iloc[where[i]]),
              "cosine": float(best[i])} for i in order]
    shown = ", ".join(f"{q['val_id']}~{q['train_id']}" for q in pairs[:5])
    return [make_finding(
        "split_leakage", "warning", None, (step, step),
        f"{len(vi)} of {len(val)} validation samples ({share:.1%}) are copies of training samples at step {step} "
        f"(embedding cosine ≥ {DUPLICATE_COSINE}, same input statistics), e.g. val~train {shown}: "
        "validation metrics partly measure memorisation.",
        "Split before any augmentation or oversampling, deduplicate the dataset (hash the files or the arrays), "
        "and split by the unit that repeats (patient, recording, scene) with a group split "
        "(sklearn.model_selection.GroupShuffleSplit); then re-evaluate.",
        {"duplicates": len(vi), "val_samples": len(val), "train_samples": len(train), "share": share,
         "cosine_threshold": DUPLICATE_COSINE, "pairs": pairs, "step": step, "min_share": LEAK_MIN_SHARE},
        "Kaufman et al. 2012, Leakage in data mining; Barz & Denzler 2020, Do we train on test data?",
    )]


def _records(run) -> pd.DataFrame:
    try:
        rec = run.records("train")
    except Exception:
        return pd.DataFrame()
    return rec[np.isfinite(rec["label"].astype(float))] if not rec.empty else rec


def _class_batches(run) -> tuple[list[int], list[np.ndarray], str]:
    """Label counts per class of each step's batch: from the per-sample records when the
    run has them (every step), else from the label histograms (capture steps)."""
    rec = _records(run)
    if not rec.empty:
        rec = rec[rec["label"] >= 0]
        width = int(rec["label"].max()) + 1 if not rec.empty else 0
        groups = list(rec.groupby("step")["label"])
        return ([int(s) for s, _ in groups],
                [np.bincount(g.to_numpy().astype(int), minlength=width).astype(float) for _, g in groups],
                "per-sample records")
    lab = dist(run, "label")
    lab = lab[lab["layer"] == "train/class"] if not lab.empty else lab
    rows = [(int(r["step"]), histogram(r)) for _, r in lab.iterrows()]
    rows = [(s, h) for s, h in rows if h.size]
    return [s for s, _ in rows], [h for _, h in rows], "label histograms at capture steps"


def batch_label_shares(run) -> pd.DataFrame:
    """Each training batch's class shares (step, label, share), as the shuffling rule sees
    them: the evidence chart of `unshuffled_batches`.

    Example::

        batch_label_shares(run).pivot(index="label", columns="step", values="share")
    """
    steps, counts, _ = _class_batches(run)
    rows = [(s, c, n / max(h.sum(), 1)) for s, h in zip(steps, counts) for c, n in enumerate(h)]
    return pd.DataFrame(rows, columns=["step", "label", "share"])


def _class_pvalues(counts: list[np.ndarray]) -> np.ndarray:
    """Pearson chi-square test of each batch's counts against the pooled class shares."""
    from scipy.special import chdtrc  # scipy.special imports fast; scipy.stats does not

    width = max(c.size for c in counts)
    counts = [np.pad(c, (0, width - c.size)) for c in counts]
    pooled = np.sum(counts, axis=0)
    shares = pooled / pooled.sum()
    present = shares > 0
    if present.sum() < 2:
        return np.full(len(counts), np.nan)
    pvalues = []
    for c in counts:
        n = c.sum()
        if n < SHUFFLE_MIN_BATCH:
            pvalues.append(np.nan)
            continue
        expected = n * shares[present]
        stat = float(((c[present] - expected) ** 2 / expected).sum())
        pvalues.append(float(chdtrc(present.sum() - 1, stat)))
    return np.asarray(pvalues)


def _value_pvalues(run) -> tuple[list[int], np.ndarray, str]:
    """z-test of each batch's mean label against the pooled mean (regression)."""
    rec = _records(run)
    if not rec.empty:
        groups = rec.groupby("step")["label"]
        stats = pd.DataFrame({"count": groups.size(), "mean": groups.mean()})
        mean, std = float(rec["label"].mean()), float(rec["label"].std(ddof=0))
        how = "per-sample records"
    else:
        lab = dist(run, "label")
        lab = lab[lab["layer"] == "train/value"] if not lab.empty else lab
        if lab.empty:
            return [], np.array([]), ""
        stats = lab.set_index("step")[["count", "mean"]]
        mean, std, _ = pooled_moments(lab)
        how = "label summaries at capture steps"
    if not std > 0:
        return [], np.array([]), ""
    z = (stats["mean"].to_numpy(float) - mean) / (std / np.sqrt(stats["count"].to_numpy(float)))
    two_sided = np.array([math.erfc(abs(v) / math.sqrt(2)) for v in z])
    p = np.where(stats["count"].to_numpy() >= SHUFFLE_MIN_BATCH, two_sided, np.nan)
    return [int(s) for s in stats.index], p, how


def _holm_rejected(pvalues: np.ndarray, alpha: float) -> np.ndarray:
    """Which tests Holm's step-down procedure rejects at family-wise level `alpha`."""
    rejected = np.zeros(len(pvalues), dtype=bool)
    idx = np.flatnonzero(np.isfinite(pvalues))
    order = idx[np.argsort(pvalues[idx], kind="stable")]
    for k, i in enumerate(order):
        if pvalues[i] > alpha / (len(order) - k):
            break
        rejected[i] = True
    return rejected


def _batch_shares_chart(run, finding: Finding) -> go.Figure | None:
    if finding.layer != "train/class":
        return None
    shares = batch_label_shares(run)
    if shares.empty:
        return empty_figure("no per-batch labels recorded")
    grid = shares.pivot(index="label", columns="step", values="share")
    fig = go.Figure(go.Heatmap(z=grid.to_numpy(), x=grid.columns, y=[str(c) for c in grid.index],
                               colorscale="Blues", colorbar={"title": "share"}))
    fig.update_layout(title="class shares of each training batch (shuffled: every column alike)",
                      xaxis_title="step", yaxis_title="label")
    return fig


@rule("Unshuffled training data: per-batch label mix (or mean target) far from the whole stream's, chi-square / "
      "z-test with Holm's correction.", severities=("warning",), evidence=_batch_shares_chart,
      explains=("grad_norm_spikes", "output_vs_label", "loss_vs_baseline", "label_noise"))
def rule_unshuffled_batches(run) -> list[Finding]:
    """Training data not shuffled: each batch's labels tested against the labels of all
    batches pooled (classification: Pearson chi-square of the class counts; regression:
    z-test of the batch's mean label), batches of ≥ 16 samples, with Holm's correction
    for the many batches at family-wise α = 0.01; a finding when ≥ 25% of ≥ 5 tested
    batches reject. A shuffled loader's batches are random draws, so almost none does;
    a loader over class- or target-sorted data (shuffle=False) makes nearly every batch
    one-sided. Reference: Holm 1979, "A simple sequentially rejective multiple test
    procedure"; PyTorch docs, torch.utils.data.DataLoader (shuffle=True for training);
    Bengio 2012, "Practical recommendations for gradient-based training" (§ shuffling)."""
    task = run.manifest.get("task")
    if task == "classification":
        steps, counts, how = _class_batches(run)
        pvalues, layer = (_class_pvalues(counts) if counts else np.array([])), "train/class"
    elif task == "regression":
        (steps, pvalues, how), layer = _value_pvalues(run), "train/value"
    else:
        return []
    tested = int(np.isfinite(pvalues).sum())
    if tested < SHUFFLE_MIN_BATCHES:
        return []
    rejected = _holm_rejected(pvalues, SHUFFLE_ALPHA)
    share = rejected.sum() / tested
    if share < SHUFFLE_REJECT_SHARE:
        return []
    bad = [s for s, r in zip(steps, rejected) if r]
    what = "class mix" if task == "classification" else "mean label"
    return [make_finding(
        "unshuffled_batches", "warning", layer, (bad[0], bad[-1]),
        f"{int(rejected.sum())} of {tested} training batches ({share:.0%}, steps {bad[0]}-{bad[-1]}) have a {what} "
        f"far from the whole training stream's (Holm-corrected p < {SHUFFLE_ALPHA:g}; from {how}): "
        "the data looks unshuffled (sorted by label).",
        "Shuffle the training data every epoch (DataLoader(..., shuffle=True) or a RandomSampler / "
        "DistributedSampler with set_epoch); a dataset stored sorted by class or target otherwise feeds "
        "one-sided batches, and the model chases the latest class.",
        {"rejected": int(rejected.sum()), "tested": tested, "share": share, "alpha": SHUFFLE_ALPHA,
         "source": how, "first_steps": bad[:20], "min_share": SHUFFLE_REJECT_SHARE,
         "median_p": float(np.nanmedian(pvalues))},
        "Holm 1979; PyTorch docs, torch.utils.data.DataLoader; Bengio 2012, Practical recommendations "
        "for gradient-based training of deep architectures",
    )]


def _head_classes(run) -> int:
    """K: 2 for a binary loss on one output per sample; else the manifest's num_classes, else the
    outputs' dim 1 (0: unknown, or a multi-label binary head, whose argmax labels are no class)."""
    shape = (run.manifest.get("loss_input_shapes") or {}).get("outputs") or ()
    if run.manifest.get("loss_fn") in BINARY_LOSSES:
        return 2 if len(shape) == 1 or (len(shape) == 2 and shape[1] == 1) else 0
    return int(run.manifest.get("num_classes") or (shape[1] if len(shape) >= 2 else 0))


@rule("Labels of one class only over the whole run, into a K-class cross-entropy or binary head (a label column "
      "parsed wrong, a filter that kept one class): the loss falls to 0 by predicting that class for every input.",
      severities=("error", "info"), evidence=_batch_shares_chart,
      explains=("loss_vs_baseline", "output_vs_label", "label_noise", "labels_unlearnable", "unshuffled_batches"))
def rule_single_class_labels(run) -> list[Finding]:
    """Every training label captured (≥ 3 captures, ≥ 30 labels pooled) is the same class, with
    CrossEntropyLoss or NLLLoss over K ≥ 2 outputs, or a binary loss (BCE) on one output per
    sample (K = 2; a GAN generator's all-"real" labels keep its adversarial loss far from 0).
    The trivial baseline is then 0 nats: the model learns a bias towards that class and nothing
    about the inputs, and "far below the prior" means nothing. An error when the loss ends below
    10% of log K (the model found the trivial answer); info otherwise, since a contrastive loss
    with the positive at a fixed index (MoCo's InfoNCE: labels all 0) has this shape and a loss
    that stays high. Reference: Karpathy 2019, "A Recipe for Training Neural Networks" ("become
    one with the data": look at the label distribution); PyTorch docs,
    torch.nn.CrossEntropyLoss."""
    m = run.manifest
    k = _head_classes(run)
    if m.get("task") != "classification" or m.get("loss_fn") not in CE_LOSSES | BINARY_LOSSES or k < 2:
        return []
    lab = dist(run, "label")
    lab = lab[lab["layer"] == "train/class"] if not lab.empty else lab
    counts = class_counts(lab) if not lab.empty else None
    if counts is None or counts.sum() < MIN_POOLED_LABELS or lab["step"].nunique() < SINGLE_CLASS_MIN_CAPTURES:
        return []
    present = np.flatnonzero(counts > 0)
    if len(present) != 1:
        return []
    c, s0, s1 = int(present[0]), int(lab["step"].min()), int(lab["step"].max())
    last = last_loss(run)
    trivial = last is not None and last[0] < SINGLE_CLASS_LOSS_FRACTION * math.log(k)
    loss = f"; the loss fell to {last[0]:.3g} (log K = {math.log(k):.3g}) by predicting it for every input" if (
        trivial) else ""
    return [make_finding(
        "single_class_labels", "error" if trivial else "info", "train/class", (s0, s1),
        f"Every training label captured is class {c}: {int(counts.sum())} labels over {lab['step'].nunique()} "
        f"captures (steps {s0}-{s1}), with a {k}-class head{loss}. A loss at 0 here says nothing about the inputs.",
        "Check how the labels are built (a comparison against a string that never matches, a filter or a join "
        "that kept one class, integer division): print the label counts of the whole dataset (np.bincount(y)).",
        {"class": c, "labels": int(counts.sum()), "captures": int(lab["step"].nunique()), "num_classes": k,
         "last_loss": last[0] if last else None, "loss_fraction": SINGLE_CLASS_LOSS_FRACTION},
        "Karpathy 2019, A Recipe for Training Neural Networks; PyTorch docs: torch.nn.CrossEntropyLoss",
    )]


# A class the loss ignores: its share among the labels and what the model predicts for it.
IGNORED_MIN_SHARE = 0.01  # of the labels pooled over the captures: a real class, not a stray value
IGNORED_UNDER_PREDICTED = 1 / 3  # predicted share below this fraction of the labelled share: never learned


def _class_shares(run, kind: str, late: bool) -> np.ndarray | None:
    """Pooled class shares of the train labels or argmax predictions (`train/class`), over the
    later half of the captures when `late`."""
    d = dist(run, kind)
    d = d[d["layer"] == "train/class"] if not d.empty else d
    if d.empty:
        return None
    if late:
        d = d[d["step"] >= d["step"].median()]
    counts = class_counts(d)
    return counts / counts.sum() if counts is not None and counts.sum() > 0 else None


@rule("The loss's ignore_index is a real class: one label per sample, and labels equal to ignore_index are a "
      "share of the data, so that class never contributes to the loss and the model never learns to predict it.",
      severities=("warning", "info"), evidence=_batch_shares_chart,
      explains=("output_vs_label", "label_noise", "loss_vs_baseline"))
def rule_ignored_class(run) -> list[Finding]:
    """CrossEntropyLoss / NLLLoss with `ignore_index` c ≥ 0, labels one per sample (not sequences,
    whose padding is what ignore_index is for: the loss-input probe's `label_top_share` is
    recorded for sequence labels only), and class c at least `IGNORED_MIN_SHARE` (1%) of the
    pooled training labels: the loss drops every sample of that class. Warning when the model
    predicts c (argmax, later half of the captures) at under `IGNORED_UNDER_PREDICTED` (1/3) of
    its labelled share, the harm shown; info when the evidence is thinner. Reference: PyTorch
    docs, torch.nn.CrossEntropyLoss ("ignore_index: a target value that is ignored and does not
    contribute to the input gradient"; default -100, outside every class range)."""
    m = run.manifest
    ignore = m.get("loss_ignore_index")
    if m.get("loss_fn") not in CE_LOSSES or not isinstance(ignore, int) or ignore < 0:
        return []
    if not scalar(run, "probe/train/label_top_share").dropna(subset=["value"]).empty:
        return []  # sequence labels: padding at ignore_index is the intended use
    labelled, predicted = _class_shares(run, "label", False), _class_shares(run, "output", True)
    if labelled is None or ignore >= labelled.size or labelled[ignore] < IGNORED_MIN_SHARE:
        return []
    shown = 0.0 if predicted is None or ignore >= predicted.size else float(predicted[ignore])
    harm = predicted is not None and shown < IGNORED_UNDER_PREDICTED * labelled[ignore]
    lab = dist(run, "label")
    steps = (int(lab["step"].min()), int(lab["step"].max()))
    return [make_finding(
        "ignored_class", "warning" if harm else "info", "train/class", steps,
        f"{m.get('loss_fn')} ignores index {ignore}, but {ignore} is a real class: {labelled[ignore]:.0%} of the "
        "training labels (one per sample, captured steps "
        f"{steps[0]}-{steps[1]}). Those samples never reach the loss"
        + (f", and the model predicts class {ignore} for {shown:.0%} of its inputs." if predicted is not None
           else "."),
        "Drop ignore_index (its default -100 ignores nothing) unless the class is padding; to weigh a class down, "
        "use the loss's weight= argument instead.",
        {"ignore_index": ignore, "labelled_share": float(labelled[ignore]), "predicted_share": shown,
         "min_share": IGNORED_MIN_SHARE, "under_predicted": IGNORED_UNDER_PREDICTED},
        "PyTorch docs: torch.nn.CrossEntropyLoss (ignore_index)",
    )]


# Evaluation labels numbered differently from training's: the model consistent per label, and wrong.
MISMATCH_MODE_MIN = 0.6  # share of samples at their label's most common prediction: the model is consistent
MISMATCH_DISTINCT_MIN = 0.8  # labels mapped one to one onto predictions (not one class for everything)
MISMATCH_AGREEMENT_RATIO = 0.5  # accuracy at most this share of the mode agreement: the consistent answer is wrong
MISMATCH_TRAIN_MIN = 0.5  # training accuracy (later captures) at least this, and twice the evaluation's


def _late_mean(run, split: str, field: str) -> tuple[float, int, int] | None:
    """Mean of `probe/{split}/{field}` over the later half of its step range (captures thin out
    as a run goes on: the later half of the steps, not of the captures), with its first and last step."""
    s = scalar(run, f"probe/{split}/{field}").dropna(subset=["value"]).sort_values("step")
    if s.empty:
        return None
    s = s[s["step"] >= (s["step"].min() + s["step"].max()) / 2]
    return float(s["value"].mean()), int(s["step"].min()), int(s["step"].max())


def _eval_splits(run) -> list[str]:
    try:
        names = run.scalars()["name"].unique().tolist()
    except Exception:
        return []
    return sorted({n.split("/")[1] for n in names if n.startswith("probe/") and n.endswith("/label_mode_agreement")
                   and n.split("/")[1] != "train"})


@rule("Evaluation labels numbered differently from training's (a class folder missing from the validation "
      "directory, another label encoder): on the evaluation split the model is confident and consistent per "
      "label, one label to one prediction, and wrong.",
      severities=("warning", "info"), explains=("overfitting", "output_vs_label", "label_noise"))
def rule_val_label_mismatch(run) -> list[Finding]:
    """On an evaluation split (later half of its probes, `class_agreement_probe`): at least 60%
    of the samples get their label's most common prediction (`label_mode_agreement`), the labels
    map nearly one to one onto predictions (`label_mode_distinct` ≥ 0.8: not one class for all),
    and the accuracy is at most half that consistency: the model answers each class the same
    way, and a different class. Training accuracy (later captures) ≥ 50% and twice the
    evaluation's: warning (the model learned, the labels disagree); info without it. A model
    that generalises badly is inconsistent per label, or right where consistent. Reference:
    torchvision ImageFolder (classes numbered by the sorted folder names: `class_to_idx`);
    scikit-learn LabelEncoder (codes follow the classes seen when fitting)."""
    out = []
    for split in _eval_splits(run):
        mode, distinct = _late_mean(run, split, "label_mode_agreement"), _late_mean(run, split, "label_mode_distinct")
        acc, train = _late_mean(run, split, "label_agreement"), _late_mean(run, "train", "label_agreement")
        if None in (mode, distinct, acc) or mode[0] < MISMATCH_MODE_MIN or distinct[0] < MISMATCH_DISTINCT_MIN:
            continue
        if acc[0] > MISMATCH_AGREEMENT_RATIO * mode[0]:
            continue
        learned = train is not None and train[0] >= max(MISMATCH_TRAIN_MIN, 2 * acc[0])
        trained = f"; on training batches it is right for {train[0]:.0%}" if train is not None else ""
        out.append(make_finding(
            "val_label_mismatch", "warning" if learned else "info", None, (mode[1], mode[2]),
            f"On {split}, {mode[0]:.0%} of the samples get their label's most common prediction, and the labels map "
            f"one to one onto predictions ({distinct[0]:.0%} distinct), yet only {acc[0]:.0%} are right{trained}: "
            f"the model gives each class a consistent answer that the {split} labels number differently.",
            f"Check that {split} uses training's label mapping: compare the class_to_idx of both ImageFolders (a "
            "class missing from one folder shifts every later index), or fit one LabelEncoder and reuse it.",
            {"split": split, "mode_agreement": mode[0], "mode_distinct": distinct[0], "agreement": acc[0],
             "train_agreement": train[0] if train else None, "min_mode": MISMATCH_MODE_MIN,
             "max_ratio": MISMATCH_AGREEMENT_RATIO},
            "torchvision docs: datasets.ImageFolder (class_to_idx); scikit-learn docs: LabelEncoder"))
    return out


# One input feature that is the label itself (hooks/probes.py, `feature_label_probe`).
LEAK_FEATURE_CORR = 0.999  # |Pearson correlation| of one feature with the label, median over the captures


@rule("The target leaked into the inputs: one input feature equals the label up to scale and shift at every "
      "capture (the label column left in the features), so the loss falls far too low, far too early.",
      severities=("warning", "info"), explains=("loss_vs_baseline", "overfitting", "output_vs_label"))
def rule_target_leakage(run) -> list[Finding]:
    """(N, F) float model inputs with F ≥ 2 and one label per sample: the largest |Pearson
    correlation| of a feature with the label (`feature_label_corr`, at each capture's first
    training batch) has a median ≥ 0.999 over ≥ 2 captures, always at the same feature. Honest
    features of real data are not the label to three decimals; a label column kept when
    dropping columns, or a label-derived feature (a normalised copy, an id that encodes the
    class), is. Warning for classification; info for regression, where a toy task may define
    the target as one feature. Reference: Kaufman et al. 2012, "Leakage in data mining:
    formulation, detection, and avoidance"; scikit-learn docs, Common pitfalls (data leakage)."""
    corr, index = scalar(run, "probe/train/feature_label_corr"), scalar(run, "probe/train/feature_label_index")
    shape = (run.manifest.get("loss_input_shapes") or {}).get("outputs") or ()
    if len(corr) < 2 or float(corr["value"].median()) < LEAK_FEATURE_CORR or index["value"].nunique() != 1:
        return []
    feature = int(index["value"].iloc[0])
    classify = run.manifest.get("task") == "classification"
    steps = (int(corr["step"].min()), int(corr["step"].max()))
    last = last_loss(run)
    loss = f"; the loss is {last[0]:.3g}" if last else ""
    return [make_finding(
        "target_leakage", "warning" if classify else "info", None, steps,
        f"Input feature {feature} is the label: |correlation| {float(corr['value'].median()):.4f} (median of "
        f"{len(corr)} captures, steps {steps[0]}-{steps[1]}){loss}. The model can read the answer from its inputs, "
        "so its training loss says nothing about the task.",
        f"Drop feature {feature} (the label column, or one built from it) from the inputs: select the feature "
        "columns explicitly, e.g. X = df.drop(columns=[target]), and check every feature built from the labels.",
        {"feature": feature, "corr_median": float(corr["value"].median()), "captures": len(corr),
         "min_corr": LEAK_FEATURE_CORR, "outputs_shape": list(shape)},
        "Kaufman et al. 2012, Leakage in data mining; scikit-learn docs: Common pitfalls (data leakage)")]
