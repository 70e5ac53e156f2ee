"""Health rules for data and loss bugs: labels the inputs cannot predict, validation
samples duplicated in the training set, batches that were never shuffled, a regression
loss on class ids, probabilities normalised over the batch, NLLLoss on what is not a
log-probability, and a sigmoid (or softmax) applied twice.

Like the rules of `diagnostics.health` (which lists these in its `RULES`), each is
`rule_xxx(run) -> list[Finding]`, reads only what the run recorded and returns no
finding when its data is missing. The loss-input rules read the probes that
`hooks/probes.py` records at capture steps (`schema.PROBE_FIELDS`).

Example::

    from diagnostics import health_data
    health_data.rule_unshuffled_batches(diagnostics.open_run("runs/exp1"))
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from diagnostics import schema

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
# Regression loss on class ids: labels all integers in 0..K-1 with K at most this.
CLASS_ID_MAX = 20
MIN_PROBES = 2
# Loss-input probes: "sums to 1" within SUM_TOL; "does not" beyond SUM_OFF.
SUM_TOL = 1e-2
SUM_OFF = 0.1
DOUBLE_SIGMOID_RANGE = (0.5, 1 / (1 + math.exp(-1)))  # sigmoid(sigmoid(x)) lies in (0.5, 0.731)

_REGRESSION_LOSSES = {"MSELoss", "L1Loss", "SmoothL1Loss", "HuberLoss", "mse_loss", "l1_loss", "smooth_l1_loss",
                      "huber_loss"}
_LOGIT_BINARY = {"BCEWithLogitsLoss", "binary_cross_entropy_with_logits"}
_PROB_BINARY = {"BCELoss", "binary_cross_entropy"}
_NLL = {"NLLLoss", "nll_loss"}
_CE = {"CrossEntropyLoss", "cross_entropy"}
_TORCH_LOSS_DOCS = "PyTorch docs: torch.nn.{}"


# ---------------------------------------------------------------------------------
# Reading helpers


def _probe(run, field: str, split: str = "train") -> pd.DataFrame:
    """One probe's values by capture step (finite only)."""
    s = _scalar(run, f"{schema.PROBE_PREFIX}{split}/{field}")
    return s[np.isfinite(s["value"].astype(float))]


def _probe_frame(run, fields: tuple[str, ...]) -> pd.DataFrame:
    """The probes `fields` side by side, one row per capture step that has all of them."""
    cols = [_probe(run, f).set_index("step")["value"].rename(f) for f in fields]
    if any(c.empty for c in cols):
        return pd.DataFrame(columns=list(fields))
    return pd.concat(cols, axis=1, join="inner").sort_index()


def _steps(frame: pd.DataFrame) -> tuple[int, int]:
    return int(frame.index.min()), int(frame.index.max())


def _logits(run) -> pd.DataFrame:
    """Summaries of what the loss was given (`train/logits`, classification runs)."""
    d = _dist(run, "output")
    return d[d["layer"] == "train/logits"] if not d.empty else d


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
    lab = _dist(run, "label")
    lab = lab[lab["layer"] == "train/class"] if not lab.empty else lab
    if lab.empty:
        return 0, ""
    steps = int(run.manifest.get("steps") or lab["step"].max() + 1)
    return int(lab["count"].median() * steps), "samples seen (batch size x steps)"


# ---------------------------------------------------------------------------------
# Rules


def rule_labels_unlearnable(run) -> list[Finding]:
    """Labels the inputs cannot predict (labels shuffled apart from their inputs, a
    misaligned join): after ≥ 100 steps the training loss (median of the last 10% of
    steps) is still ≥ 90% of the label entropy, although every trainable weight matrix
    moves (median update ratio within [1e-4, 1e-1]) and the model has at least as many
    trainable parameters as training samples, enough to memorise them. Such a network
    fits even random labels, slowly (Zhang et al. 2017, "Understanding deep learning
    requires rethinking generalization"); with real labels it would have left the
    prior long before. Stronger than `loss_vs_baseline`: that rule says no better than
    the prior, this one rules out a frozen or starved optimizer and a too-small model."""
    m = run.manifest
    if m.get("task") != "classification" or not (m.get("loss_fn") in _CE_LOSSES or (
            m.get("loss_fn") in _BINARY_LOSSES and m.get("num_classes") == 2)):
        return []
    last = _last_loss(run)
    lab = _dist(run, "label")
    counts = _class_counts(lab[lab["layer"] == "train/class"]) if not lab.empty else None
    if last is None or counts is None or counts.sum() < MIN_POOLED_LABELS:
        return []
    value, s0, s1 = last
    p = counts[counts > 0] / counts.sum()
    entropy = float(-(p * np.log(p)).sum())
    if s1 + 1 < LABELS_MIN_STEPS or entropy <= 0 or value < BASELINE_NEAR_FRACTION * entropy:
        return []
    ratios = _weight_ratios(run)
    if not ratios or not all(MOVING_RATIO_LOW <= r <= MOVING_RATIO_HIGH for r in ratios.values()):
        return []
    trainable = sum(int(q.get("numel", 0)) for q in m.get("parameters", []) or [] if q.get("requires_grad", True))
    n, how = _train_samples(run)
    if n == 0 or trainable < n:
        return []
    val = _scalar(run, "val/accuracy")
    val_note = (f"; validation accuracy {val['value'].iloc[-1]:.1%} against a majority share of {p.max():.1%}"
                if not val.empty else "")
    return [_finding(
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
    return [_finding(
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
    lab = _dist(run, "label")
    lab = lab[lab["layer"] == "train/class"] if not lab.empty else lab
    rows = [(int(r["step"]), _hist(r)) for _, r in lab.iterrows()]
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
        lab = _dist(run, "label")
        lab = lab[lab["layer"] == "train/value"] if not lab.empty else lab
        if lab.empty:
            return [], np.array([]), ""
        stats = lab.set_index("step")[["count", "mean"]]
        mean, std, _ = _pooled_moments(lab)
        how = "label summaries at capture steps"
    if not std > 0:
        return [], np.array([]), ""
    z = (stats["mean"].to_numpy(float) - mean) / (std / np.sqrt(stats["count"].to_numpy(float)))
    p = np.where(stats["count"].to_numpy() >= SHUFFLE_MIN_BATCH, np.array([math.erfc(abs(v) / math.sqrt(2)) for v in z]),
                 np.nan)
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
    return [_finding(
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


def _label_range(run) -> tuple[float, float]:
    lab = _dist(run, "label")
    lab = lab[lab["layer"].isin(["train/value", "train/class"]) & (lab["count"] > 0)] if not lab.empty else lab
    if lab.empty:
        return math.nan, math.nan
    return float(lab["min"].min()), float(lab["max"].max())


def rule_regression_loss_on_class_ids(run) -> list[Finding]:
    """A regression loss (MSELoss, L1Loss, SmoothL1Loss, HuberLoss) on class ids: at every
    probed capture (≥ 2) the labels are integers, spanning 0..K-1 with 2 ≤ K ≤ 20, against
    one output per sample (or K > 2 outputs the ids broadcast against). The loss then
    treats class 3 as nearer to 2 than to 7; a warning for K ≥ 3, info for 0/1 targets
    (BCEWithLogitsLoss fits them better). Reference: PyTorch docs, torch.nn.CrossEntropyLoss
    (class-index targets) and torch.nn.MSELoss (same-shape real targets); Bishop 2006,
    Pattern Recognition and Machine Learning §4.1.3 (least squares for classification)."""
    loss_fn = run.manifest.get("loss_fn")
    if loss_fn not in _REGRESSION_LOSSES:
        return []
    probes = _probe_frame(run, ("label_integer_frac", "label_distinct", "output_columns"))
    if len(probes) < MIN_PROBES or (probes["label_integer_frac"] < 1).any():
        return []
    lo, hi = _label_range(run)
    if not (lo == 0 and 1 <= hi < CLASS_ID_MAX and hi == round(hi)):
        return []
    k, columns, distinct = int(hi) + 1, int(probes["output_columns"].median()), int(probes["label_distinct"].max())
    if distinct < 2 or (columns > 1 and k == 2):  # 0/1 targets against several outputs: one-hot
        return []
    s0, s1 = _steps(probes)
    severity = "warning" if k >= 3 else "info"
    target = "one output per sample" if columns == 1 else f"{columns} outputs per sample (broadcast against the ids)"
    return [_finding(
        "regression_loss_on_class_ids", severity, None, (s0, s1),
        f"{loss_fn} is given integer labels 0..{k - 1} (up to {distinct} distinct in a batch, steps {s0}-{s1}) "
        f"against {target}: the labels look like class ids, which a regression loss orders and spaces.",
        "For K classes, output K logits and use nn.CrossEntropyLoss with the integer labels (0/1 targets: one "
        "logit with nn.BCEWithLogitsLoss); if the integers really are quantities (counts, grades), ignore this.",
        {"loss_fn": loss_fn, "classes": k, "max_distinct_in_batch": distinct, "output_columns": columns,
         "label_min": lo, "label_max": hi, "captures": len(probes)},
        "PyTorch docs: torch.nn.CrossEntropyLoss, torch.nn.MSELoss; Bishop 2006, PRML §4.1.3",
    )]


def _sum_probes(run) -> pd.Series | None:
    probes = _probe_frame(run, schema.PROBE_FIELDS[:4])
    if len(probes) < MIN_PROBES:
        return None
    med = probes.median()
    med["first_step"], med["last_step"] = _steps(probes)
    med["captures"] = len(probes)
    return med


def rule_softmax_wrong_dim(run) -> list[Finding]:
    """Softmax or log-softmax taken over the batch dimension (dim=0) instead of the class
    dimension: the loss's inputs sum to 1 (log-sum-exp to 0) over the batch within 0.01
    (median over ≥ 2 probed captures) but not over the classes (off by > 0.1). Each class's
    scores are then normalised across samples, so a sample's prediction depends on its
    batch-mates: an error. Reference: PyTorch docs, torch.nn.functional.softmax /
    log_softmax (`dim`: "A dimension along which softmax will be computed"), and
    torch.nn.NLLLoss (input: log-probabilities of shape (N, C))."""
    if run.manifest.get("task") != "classification":
        return []
    med = _sum_probes(run)
    if med is None:
        return []
    if med["prob_sum_dev_batch"] < SUM_TOL and med["prob_sum_dev_class"] > SUM_OFF:
        fn, dev_batch, dev_class, what = "softmax", med["prob_sum_dev_batch"], med["prob_sum_dev_class"], "sum"
    elif med["logprob_sum_dev_batch"] < SUM_TOL and med["logprob_sum_dev_class"] > SUM_OFF:
        fn, dev_batch, dev_class, what = ("log_softmax", med["logprob_sum_dev_batch"], med["logprob_sum_dev_class"],
                                          "log-sum-exp")
    else:
        return []
    steps = (int(med["first_step"]), int(med["last_step"]))
    return [_finding(
        "softmax_wrong_dim", "error", None, steps,
        f"The loss is given a {fn} over the batch dimension: its values' {what} over the batch is off "
        f"{'1' if fn == 'softmax' else '0'} by {dev_batch:.2g}, over the classes by {dev_class:.2g} "
        f"(median of {int(med['captures'])} captures, steps {steps[0]}-{steps[1]}).",
        f"Take the {fn} over the class dimension: torch.{fn}(logits, dim=1) (dim=-1 for (N, C) outputs), or give "
        "nn.CrossEntropyLoss the raw logits and drop the softmax from the model.",
        {"function": fn, "dev_over_batch": dev_batch, "dev_over_classes": dev_class, "tolerance": SUM_TOL,
         "captures": int(med["captures"])},
        "PyTorch docs: torch.nn.functional.softmax, torch.nn.functional.log_softmax, torch.nn.NLLLoss",
    )]


def rule_nll_input(run) -> list[Finding]:
    """NLLLoss on what is not a log-probability: the inputs' log-sum-exp over the classes
    is off 0 by > 0.1 (median over ≥ 2 probed captures), i.e. no log_softmax before the
    loss; named "probabilities" when they sum to 1 over the classes (softmax, not
    log_softmax), "raw scores" otherwise. NLLLoss only picks -input[label], so raw scores
    are pushed to +inf (the loss runs below 0) and probabilities barely learn: an error.
    The batch-dimension case belongs to `softmax_wrong_dim`. Reference: PyTorch docs,
    torch.nn.NLLLoss ("The input given through a forward call is expected to contain
    log-probabilities of each class")."""
    if run.manifest.get("loss_fn") not in _NLL:
        return []
    med = _sum_probes(run)
    if med is None or not med["logprob_sum_dev_class"] > SUM_OFF or med["logprob_sum_dev_batch"] < SUM_TOL:
        return []
    probs = med["prob_sum_dev_class"] < SUM_TOL
    steps = (int(med["first_step"]), int(med["last_step"]))
    loss = _scalar(run, "loss")
    lowest = float(loss["value"].min()) if not loss.empty else math.nan
    note = f"; the loss went down to {lowest:.3g}, below 0, which a log-probability never allows" if lowest < 0 else ""
    kind = "probabilities (they sum to 1 over the classes)" if probs else "raw scores"
    return [_finding(
        "nll_input", "error", None, steps,
        f"NLLLoss is given {kind}, not log-probabilities: their log-sum-exp over the classes is off 0 by "
        f"{med['logprob_sum_dev_class']:.3g} (median of {int(med['captures'])} captures, steps "
        f"{steps[0]}-{steps[1]}){note}.",
        "Apply torch.log_softmax(logits, dim=1) before nn.NLLLoss (not softmax), or give the raw logits to "
        "nn.CrossEntropyLoss, which does both.",
        {"logsumexp_dev_over_classes": med["logprob_sum_dev_class"], "sum_dev_over_classes": med["prob_sum_dev_class"],
         "input_kind": "probabilities" if probs else "raw scores", "lowest_loss": lowest, "tolerance": SUM_OFF},
        "PyTorch docs: torch.nn.NLLLoss",
    )]


def _both_classes(run) -> bool:
    lab = _dist(run, "label")
    counts = _class_counts(lab[lab["layer"] == "train/class"]) if not lab.empty else None
    return counts is not None and int((counts > 0).sum()) >= 2


def rule_double_sigmoid(run) -> list[Finding]:
    """A sigmoid applied twice. BCEWithLogitsLoss applies its own sigmoid: given outputs
    that lie in [0, 1] at every capture (≥ 2, with both classes among the labels), the
    model's probabilities are sigmoid(p) ∈ (0.5, 0.73), so it can never predict the
    negative class. BCELoss given outputs all within (0.5, 0.731) (sigmoid of a sigmoid)
    has the same ceiling. An error either way. Reference: PyTorch docs,
    torch.nn.BCEWithLogitsLoss ("combines a Sigmoid layer and the BCELoss in one single
    class") and torch.nn.BCELoss."""
    loss_fn = run.manifest.get("loss_fn")
    if loss_fn not in _LOGIT_BINARY | _PROB_BINARY:
        return []
    d = _logits(run)
    d = d[d["count"] > 0] if not d.empty else d
    if len(d) < MIN_PROBES or not _both_classes(run):
        return []
    lo, hi = float(d["min"].min()), float(d["max"].max())
    bounds = (0.0, 1.0) if loss_fn in _LOGIT_BINARY else DOUBLE_SIGMOID_RANGE
    if not (lo >= bounds[0] - 1e-6 and hi <= bounds[1] + 1e-6):
        return []
    steps = (int(d["step"].min()), int(d["step"].max()))
    where = ("BCEWithLogitsLoss (which applies a sigmoid itself) is given outputs in [0, 1]"
             if loss_fn in _LOGIT_BINARY else "BCELoss is given outputs confined to (0.5, 0.731), a sigmoid of a sigmoid")
    return [_finding(
        "double_sigmoid", "error", None, steps,
        f"{where}: min {lo:.3g}, max {hi:.3g} over {len(d)} captures (steps {steps[0]}-{steps[1]}). The predicted "
        "probability stays within (0.5, 0.73), so the negative class is never predicted.",
        "Apply the sigmoid once: drop nn.Sigmoid from the model and keep nn.BCEWithLogitsLoss on the raw logits "
        "(numerically stabler), and take torch.sigmoid only for predictions.",
        {"loss_fn": loss_fn, "output_min": lo, "output_max": hi, "captures": len(d), "bounds": list(bounds)},
        "PyTorch docs: torch.nn.BCEWithLogitsLoss, torch.nn.BCELoss",
    )]


def rule_softmax_before_cross_entropy(run) -> list[Finding]:
    """CrossEntropyLoss given probabilities: its inputs are in [0, 1] and sum to 1 over the
    classes within 0.01 (median over ≥ 2 probed captures). The loss applies log_softmax
    itself, so the model's scores are squashed twice: the loss cannot fall below
    -log(e / (e + C - 1)) and gradients shrink. A warning (training runs, badly).
    Reference: PyTorch docs, torch.nn.CrossEntropyLoss ("The input is expected to contain
    the unnormalized logits for each class")."""
    if run.manifest.get("loss_fn") not in _CE:
        return []
    med = _sum_probes(run)
    d = _logits(run)
    if med is None or d.empty or not med["prob_sum_dev_class"] < SUM_TOL or float(d["min"].min()) < 0:
        return []
    steps = (int(med["first_step"]), int(med["last_step"]))
    c = int(run.manifest.get("num_classes") or 0)
    floor = -math.log(math.e / (math.e + c - 1)) if c > 1 else math.nan
    return [_finding(
        "softmax_before_cross_entropy", "warning", None, steps,
        f"CrossEntropyLoss is given probabilities (they sum to 1 over the classes within "
        f"{med['prob_sum_dev_class']:.2g}, steps {steps[0]}-{steps[1]}); it applies log_softmax itself, so the "
        f"loss cannot go below {floor:.3g} and its gradients shrink.",
        "Remove the softmax (nn.Softmax / torch.softmax) before nn.CrossEntropyLoss and pass the raw logits; "
        "apply softmax only to report probabilities.",
        {"sum_dev_over_classes": med["prob_sum_dev_class"], "loss_floor": floor, "num_classes": c},
        "PyTorch docs: torch.nn.CrossEntropyLoss",
    )]


DATA_RULES = (
    rule_labels_unlearnable,
    rule_split_leakage,
    rule_unshuffled_batches,
    rule_regression_loss_on_class_ids,
    rule_softmax_wrong_dim,
    rule_nll_input,
    rule_double_sigmoid,
    rule_softmax_before_cross_entropy,
)

# At the bottom: diagnostics.health imports this module to register DATA_RULES, so its
# helpers are bound here once the rules above exist (either module may be imported first).
from diagnostics.health import (  # noqa: E402
    BASELINE_NEAR_FRACTION, MIN_POOLED_LABELS, Finding, _BINARY_LOSSES, _CE_LOSSES, _class_counts, _dist,
    _finding, _hist, _last_loss, _pooled_moments, _scalar,
)
