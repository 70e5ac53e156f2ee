"""Health rules for loss bugs, read from the loss-input probes that `hooks/probes.py`
records at capture steps (`schema.PROBE_FIELDS`): a regression loss on class ids,
softmax or log-softmax over the batch dimension, NLLLoss on what is not a
log-probability, probabilities into CrossEntropyLoss, a sigmoid applied twice, and
outputs and targets of shapes an elementwise loss broadcasts ((N, 1) against (N,)).
Each is registered with `@rule`, its description and its evidence chart beside it.

Example::

    from diagnostics.health import loss
    loss.rule_softmax_wrong_dim(diagnostics.open_run("runs/exp1"))
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from diagnostics import figures, schema
from diagnostics.health.common import Finding, dist, make_finding, scalar
from diagnostics.health.problems import LOSS_INPUT_SYMPTOMS, starved, symptom
from diagnostics.health.registry import rule

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
_KL = {"KLDivLoss", "kl_div"}


# ---------------------------------------------------------------------------------
# Reading helpers


def _probe(run, field: str, split: str = "train") -> pd.DataFrame:
    """One probe's values by capture step (finite only)."""
    s = scalar(run, f"{schema.PROBE_PREFIX}{split}/{field}")
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
    d = dist(run, "output")
    return d[d["layer"] == "train/logits"] if not d.empty else d

def _label_range(run) -> tuple[float, float]:
    lab = dist(run, "label")
    lab = lab[lab["layer"].isin(["train/value", "train/class"]) & (lab["count"] > 0)] if not lab.empty else lab
    if lab.empty:
        return math.nan, math.nan
    return float(lab["min"].min()), float(lab["max"].max())


def _bands_chart(run, finding: Finding) -> go.Figure:
    return figures.value_bands_figure(run.distributions("output", layers=["train/value"]),
                                      run.distributions("label", layers=["train/value"]))


@rule("A regression loss (MSELoss, L1Loss...) on integer labels 0..K-1: class ids (error when the loss stays "
      "at the trivial baseline with it).", severities=("warning", "info", "error"), evidence=_bands_chart,
      explains=LOSS_INPUT_SYMPTOMS)
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
    return [make_finding(
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


# The probes of `_sums_chart` in words (the legend): near 0, the loss's inputs are normalised that way.
_SUM_LABELS = {
    "prob_sum_dev_class": "|sum over the classes − 1|: probabilities?",
    "prob_sum_dev_batch": "|sum over the batch − 1|",
    "logprob_sum_dev_class": "|log-sum-exp over the classes|: log-probabilities?",
    "logprob_sum_dev_batch": "|log-sum-exp over the batch|",
}


def _sums_chart(run, finding: Finding) -> go.Figure:
    """The four normalisation probes of the loss's inputs over the steps, named in words, each
    in its own dash (two may lie on one another), on a log axis with its title."""
    names = {f"{schema.PROBE_PREFIX}train/{f}": label for f, label in _SUM_LABELS.items()}
    scalars = run.scalars(names=list(names))
    scalars = scalars.assign(name=scalars["name"].map(names))
    fig = figures.scalar_figure(scalars, list(names.values()),
                                "loss inputs: how far from normalised (0: normalised)", log_y=True)
    for trace, dash in zip(fig.data, ("solid", "dash", "dot", "dashdot")):
        trace.line.dash = dash
    return fig.update_yaxes(title_text="distance (log)").update_layout(height=max(fig.layout.height or 0, 400))


@rule("Softmax or log-softmax over the batch dimension instead of the classes.", severities=("error",),
      evidence=_sums_chart,
      explains=(*LOSS_INPUT_SYMPTOMS, "batch_mixing"))  # a softmax over dim 0 is what mixes the samples
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
    return [make_finding(
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


def _log_prob_loss(run) -> str | None:
    """The loss, when it reads its input as log-probabilities over dim 1: NLLLoss; KLDivLoss
    (input always log-probabilities, `log_target` is about the target) on (N, C) outputs only,
    since a (N, T, V) distribution's log_softmax over the last dim is not what the probe's
    dim-1 sums measure."""
    loss_fn = run.manifest.get("loss_fn")
    if loss_fn in _NLL:
        return loss_fn
    shapes = run.manifest.get(schema.LOSS_INPUT_SHAPES) or {}
    return loss_fn if loss_fn in _KL and len(shapes.get("outputs") or ()) == 2 else None


_LOG_PROB_ADVICE = {
    "nll": "Apply torch.log_softmax(logits, dim=1) before nn.NLLLoss (not softmax), or give the raw logits to "
           "nn.CrossEntropyLoss, which does both.",
    "kl": "Give nn.KLDivLoss torch.log_softmax(student_logits, dim=1) (for distillation: of logits / T) as its "
          "input, not softmax; the target stays probabilities (or log-probabilities with log_target=True).",
}


@rule("NLLLoss or KLDivLoss given what is not a log-probability (raw scores or probabilities).",
      severities=("error",), evidence=_sums_chart,
      explains=(*LOSS_INPUT_SYMPTOMS, "negative_loss"))
def rule_nll_input(run) -> list[Finding]:
    """NLLLoss or KLDivLoss on what is not a log-probability: the inputs' log-sum-exp over the
    classes is off 0 by > 0.1 (median over ≥ 2 probed captures), i.e. no log_softmax before
    the loss; named "probabilities" when they sum to 1 over the classes (softmax, not
    log_softmax), "raw scores" otherwise. NLLLoss only picks -input[label], so raw scores
    are pushed to +inf (the loss runs below 0) and probabilities barely learn; KLDivLoss
    computes target·(log target − input), so probabilities as input give a loss below 0
    that rewards the wrong thing: an error. The batch-dimension case belongs to
    `softmax_wrong_dim`. Reference: PyTorch docs, torch.nn.NLLLoss ("The input given through
    a forward call is expected to contain log-probabilities of each class") and
    torch.nn.KLDivLoss ("the argument input is expected to be in the log-space")."""
    loss_fn = _log_prob_loss(run)
    if loss_fn is None:
        return []
    med = _sum_probes(run)
    if med is None or not med["logprob_sum_dev_class"] > SUM_OFF or med["logprob_sum_dev_batch"] < SUM_TOL:
        return []
    probs = med["prob_sum_dev_class"] < SUM_TOL
    steps = (int(med["first_step"]), int(med["last_step"]))
    loss = scalar(run, "loss")
    lowest = float(loss["value"].min()) if not loss.empty else math.nan
    note = f"; the loss went down to {lowest:.3g}, below 0, which a log-probability never allows" if lowest < 0 else ""
    kind = "probabilities (they sum to 1 over the classes)" if probs else "raw scores"
    name = "KLDivLoss" if loss_fn in _KL else "NLLLoss"
    return [make_finding(
        "nll_input", "error", None, steps,
        f"{name} is given {kind}, not log-probabilities: their log-sum-exp over the classes is off 0 by "
        f"{med['logprob_sum_dev_class']:.3g} (median of {int(med['captures'])} captures, steps "
        f"{steps[0]}-{steps[1]}){note}.",
        _LOG_PROB_ADVICE["kl" if loss_fn in _KL else "nll"],
        {"loss_fn": loss_fn, "logsumexp_dev_over_classes": med["logprob_sum_dev_class"],
         "sum_dev_over_classes": med["prob_sum_dev_class"], "input_kind": "probabilities" if probs else "raw scores",
         "lowest_loss": lowest, "tolerance": SUM_OFF},
        f"PyTorch docs: torch.nn.{name}",
    )]


def _both_classes(run) -> bool:
    """Whether at least two classes occur among the labels at the captures."""
    lab = dist(run, "label")
    lab = lab[lab["layer"] == "train/class"] if not lab.empty else lab
    hists = [np.asarray(h, dtype=float) for h in lab.get("hist_counts", []) if h is not None and len(h)]
    if not hists:
        return False
    width = max(h.size for h in hists)
    return int((np.sum([np.pad(h, (0, width - h.size)) for h in hists], axis=0) > 0).sum()) >= 2


def _range_chart(run, finding: Finding) -> go.Figure:
    out = run.distributions("output", layers=["train/logits"]).sort_values("step")
    fig = go.Figure([go.Scatter(x=out["step"], y=out[c], name=f"{c} of the loss input", mode="lines+markers")
                     for c in ("min", "max")])
    for y, text in ((0, "0"), (1, "1")):
        fig.add_hline(y=y, line_dash="dash", annotation_text=text)
    fig.update_layout(title="range of what the loss is given (logits would leave [0, 1])", xaxis_title="step")
    return fig


@rule("A sigmoid applied twice: outputs in [0, 1] into BCEWithLogitsLoss, or a sigmoid of a sigmoid into BCELoss.",
      severities=("error",), evidence=_range_chart,
      explains=LOSS_INPUT_SYMPTOMS)
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
    if "zero_frac" in d and float(d["zero_frac"].median()) >= ZERO_LOGIT_SHARE:
        return []  # exact zeros: a ReLU's clamp (`relu_on_logits`), which a sigmoid never gives
    lo, hi = float(d["min"].min()), float(d["max"].max())
    bounds = (0.0, 1.0) if loss_fn in _LOGIT_BINARY else DOUBLE_SIGMOID_RANGE
    if not (lo >= bounds[0] - 1e-6 and hi <= bounds[1] + 1e-6):
        return []
    steps = (int(d["step"].min()), int(d["step"].max()))
    where = ("BCEWithLogitsLoss (which applies a sigmoid itself) is given outputs in [0, 1]"
             if loss_fn in _LOGIT_BINARY
             else "BCELoss is given outputs confined to (0.5, 0.731), a sigmoid of a sigmoid")
    return [make_finding(
        "double_sigmoid", "error", None, steps,
        f"{where}: min {lo:.3g}, max {hi:.3g} over {len(d)} captures (steps {steps[0]}-{steps[1]}). The predicted "
        "probability stays within (0.5, 0.73), so the negative class is never predicted.",
        "Apply the sigmoid once: drop nn.Sigmoid from the model and keep nn.BCEWithLogitsLoss on the raw logits "
        "(numerically stabler), and take torch.sigmoid only for predictions.",
        {"loss_fn": loss_fn, "output_min": lo, "output_max": hi, "captures": len(d), "bounds": list(bounds)},
        "PyTorch docs: torch.nn.BCEWithLogitsLoss, torch.nn.BCELoss",
    )]


# Modules that bound what they give to [0, 1]: the last of a model's leaves that is one of these
# hands CrossEntropyLoss probabilities (the manifest lists modules in definition order, which
# need not be the order they run in: it corroborates the measured range, or stands in for it).
_SQUASHING = {"Sigmoid", "Softmax", "Softmax2d", "Hardsigmoid"}


def _last_leaf(run) -> str | None:
    """The type of the model's last leaf module, in definition order."""
    leaves = [m for m in run.manifest.get("modules") or () if m.get("leaf")]
    return leaves[-1].get("type") if leaves else None


def _classes(run) -> int:
    """K: the manifest's num_classes, else the outputs' dim 1 at the first capture (0: unknown)."""
    shape = (run.manifest.get(schema.LOSS_INPUT_SHAPES) or {}).get("outputs") or ()
    return int(run.manifest.get("num_classes") or (shape[1] if len(shape) >= 2 else 0))


def _bounded_in_unit(d: pd.DataFrame) -> bool:
    """What the loss is given lay in [0, 1] at every capture (≥ 2)."""
    return len(d) >= MIN_PROBES and float(d["min"].min()) >= -1e-6 and float(d["max"].max()) <= 1 + 1e-6


@rule("Probabilities (a softmax or a sigmoid: values in [0, 1]) into CrossEntropyLoss, which applies log_softmax "
      "itself (error when the loss stays at the trivial baseline with it).", severities=("warning", "error"),
      evidence=_sums_chart, explains=LOSS_INPUT_SYMPTOMS)
def rule_softmax_before_cross_entropy(run) -> list[Finding]:
    """CrossEntropyLoss given probabilities, not logits: its inputs are in [0, 1] and sum to 1
    over the classes within 0.01 (a softmax: median over ≥ 2 probed captures), or lie in
    [0, 1] at every capture (≥ 2: a sigmoid; logits that learn take both signs), or, with no
    range recorded, the model's last module is a Sigmoid/Softmax. The loss applies
    log_softmax itself, so the scores are squashed twice: even one-hot outputs at 1 leave
    the loss at log(1 + (K-1)/e) = -log(e / (e + K - 1)) or above, and gradients shrink. A
    warning (training runs, badly). A softmax over the batch belongs to `softmax_wrong_dim`.
    Reference: PyTorch docs, torch.nn.CrossEntropyLoss ("The
    input is expected to contain the unnormalized logits for each class")."""
    if run.manifest.get("loss_fn") not in _CE:
        return []
    med, d = _sum_probes(run), _logits(run)
    if med is not None and med["prob_sum_dev_batch"] < SUM_TOL and med["prob_sum_dev_class"] > SUM_OFF:
        return []  # a softmax over the batch: `softmax_wrong_dim`'s (one cause, one finding)
    d = d[d["count"] > 0] if not d.empty else d
    last = _last_leaf(run)
    softmax = med is not None and not d.empty and med["prob_sum_dev_class"] < SUM_TOL and float(d["min"].min()) >= 0
    clamped = not d.empty and "zero_frac" in d and float(d["zero_frac"].median()) >= ZERO_LOGIT_SHARE  # a ReLU
    bounded = (_bounded_in_unit(d) and not clamped) or (d.empty and last in _SQUASHING)
    if not (softmax or bounded):
        return []
    steps = (int(med["first_step"]), int(med["last_step"])) if med is not None else (
        (int(d["step"].min()), int(d["step"].max())) if not d.empty else (0, 0))
    c = _classes(run)
    floor = math.log(1 + (c - 1) / math.e) if c > 1 else math.nan
    loss = scalar(run, "loss")
    last_loss = float(loss.sort_values("step")["value"].iloc[-1]) if not loss.empty else math.nan
    if softmax:
        what = (f"probabilities (they sum to 1 over the classes within {med['prob_sum_dev_class']:.2g}, steps "
                f"{steps[0]}-{steps[1]})")
    else:
        rng = f"min {float(d['min'].min()):.3g}, max {float(d['max'].max()):.3g} over {len(d)} captures" if len(
            d) else "no range recorded"
        what = f"values in [0, 1] at every capture ({rng}), probabilities rather than logits"
    module = f"; the model's last module is {last}" if last in _SQUASHING else ""
    at = f" (its last value {last_loss:.3g}, the trivial baseline log K = {math.log(c):.3g})" if c > 1 and np.isfinite(
        last_loss) else ""
    return [make_finding(
        "softmax_before_cross_entropy", "warning", None, steps,
        f"CrossEntropyLoss is given {what}{module}. It applies log_softmax itself, so even one-hot outputs at 1 "
        f"leave the loss at log(1 + (K-1)/e) = {floor:.3g} for K = {c} or above{at}, and its gradients shrink.",
        "Remove the softmax or sigmoid (nn.Softmax, nn.Sigmoid, torch.softmax...) before nn.CrossEntropyLoss and "
        "pass the raw logits; apply it only to report probabilities.",
        {"sum_dev_over_classes": med["prob_sum_dev_class"] if med is not None else math.nan, "loss_floor": floor,
         "num_classes": c, "input_kind": "softmax" if softmax else "bounded", "last_module": last,
         "last_loss": last_loss},
        "PyTorch docs: torch.nn.CrossEntropyLoss",
    )]


# Losses that compare outputs and targets element by element, broadcasting them first:
# torch warns ("Using a target size ... that is different to the input size") and goes on.
_ELEMENTWISE = _REGRESSION_LOSSES | _LOGIT_BINARY | _PROB_BINARY | {
    "KLDivLoss", "kl_div", "PoissonNLLLoss", "poisson_nll_loss", "SoftMarginLoss", "soft_margin_loss"}
# The probe's `broadcast` values (hooks/probes.py, `outputs_expanded`)
PAIRWISE, OUTPUTS_EXPANDED = 2.0, 1.0


def _shape(shape) -> str:
    return "(" + ", ".join(str(int(d)) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def _broadcast_chart(run, finding: Finding) -> go.Figure:
    """Regression: the outputs' band against the labels' (a broadcast loss is minimised by the
    batch's mean: the outputs' band collapses while the labels' stays wide); else the range
    of what the loss is given."""
    return _bands_chart(run, finding) if run.manifest.get("task") == "regression" else _range_chart(run, finding)


# Where it comes from: pytorch/pytorch#16045 (MSELoss between shapes (n, 1) and (n,) gives the
# wrong result), which led to torch's UserWarning (pytorch/pytorch PR #18349, "Added tensor size
# warning to F.mse_loss()"); reports of it in the wild: deepset-ai/FARM#229 ("Using a target size
# ... that is different to the input size": a regression head's (32,) logits against (32, 1)
# labels), sunwuzhou03/reinforcement-learning-lab#1 ("MSE warning": a SAC critic's (64, 1)
# against (64, 4) targets, the outputs-expanded case).
@rule("The outputs and targets the loss compares element by element broadcast into another shape: (N, 1) "
      "outputs against (N,) targets compare every output with every target.", severities=("error", "warning"),
      evidence=_broadcast_chart, explains=LOSS_INPUT_SYMPTOMS)
def rule_loss_shape_broadcast(run) -> list[Finding]:
    """An elementwise loss (MSELoss, L1Loss, BCELoss, BCEWithLogitsLoss...) whose outputs are
    expanded by broadcasting against the targets at any probed capture (`probe/train/broadcast`
    > 0). Into a shape neither has ((N, 1) against (N,) gives (N, N)): each output is pushed
    towards every target of the batch, the minimum is the batch's mean whatever the inputs,
    and the loss stays at the trivial baseline: an error. The outputs alone expanded ((N, 1)
    against (N, 4)): each output is fit to several targets (a warning: one prediction for
    several targets can be meant). A target broadcast along the outputs is left alone
    (several predictions of one target, as pytorch/pytorch#18349's review asked). A loss the
    run cannot name as elementwise (a plain function, its inputs from `log_batch`): a warning.
    Reference: torch's UserWarning "Using a target size (...) that is different to the input
    size (...). This will likely lead to incorrect results due to broadcasting" (torch.nn.
    functional.mse_loss, l1_loss, binary_cross_entropy...); PyTorch docs, torch.nn.MSELoss
    (target: "(*), same shape as the input"); pytorch/pytorch#16045."""
    probes = _probe(run, "broadcast")
    hit = probes[probes["value"] > 0]
    if hit.empty:
        return []
    loss_fn = run.manifest.get("loss_fn")
    pairwise = bool((hit["value"] >= PAIRWISE).any())
    known = loss_fn in _ELEMENTWISE
    severity = "error" if pairwise and known else "warning"
    shapes = run.manifest.get(schema.LOSS_INPUT_SHAPES) or {}
    s0, s1 = int(hit["step"].min()), int(hit["step"].max())
    if shapes.get("broadcast") and shapes.get("broadcast_to"):
        out, lab, to = _shape(shapes["outputs"]), _shape(shapes["labels"]), _shape(shapes["broadcast_to"])
        what = f"outputs of shape {out} and targets of shape {lab}, which broadcast to {to}"
    else:
        out, lab, to = None, None, None
        what = "outputs and targets of different shapes that broadcast into a larger one"
    effect = ("every output is compared with every target of the batch, so the best the model can do is predict "
              "the batch's mean" if pairwise else "each output is compared with several targets")
    name = loss_fn or "The loss"
    hedge = "" if known else " (if these are the tensors your loss is given)"
    return [make_finding(
        "loss_shape_broadcast", severity, None, (s0, s1),
        f"{name} is given {what}{hedge}: {effect} (at {len(hit)} of {len(probes)} captures, steps {s0}-{s1}). "
        "torch warns 'Using a target size ... that is different to the input size' and goes on.",
        "Give the loss the same shapes: outputs.squeeze(-1) against (N,) targets, or targets.view(-1, 1) "
        "(targets.unsqueeze(1)) against (N, 1) outputs. To catch it at the first batch, turn the warning into an "
        "error: warnings.filterwarnings('error', message='Using a target size').",
        {"loss_fn": loss_fn, "outputs_shape": shapes.get("outputs"), "labels_shape": shapes.get("labels"),
         "broadcast_to": shapes.get("broadcast_to"), "pairwise": pairwise, "captures": len(hit),
         "probed_captures": len(probes)},
        "torch UserWarning 'Using a target size that is different to the input size'; PyTorch docs: "
        "torch.nn.MSELoss; pytorch/pytorch#16045, #18349",
    )]


def _labels_chart(run, finding: Finding) -> go.Figure:
    lab = dist(run, "label")
    lab = lab[lab["layer"].isin(["train/value", "train/class"])].sort_values("step") if not lab.empty else lab
    fig = go.Figure([go.Scatter(x=lab["step"], y=lab[c], name=f"{c} of the targets", mode="lines+markers")
                     for c in ("min", "max")])
    for y, text in ((0, "0"), (1, "1")):
        fig.add_hline(y=y, line_dash="dash", annotation_text=text)
    fig.update_layout(title="range of the targets (BCEWithLogitsLoss expects [0, 1])", xaxis_title="step")
    return fig


@rule("Targets outside what the loss accepts: outside [0, 1] into BCEWithLogitsLoss (labels -1/1, 0/255 masks: the "
      "loss has no minimum); float targets into CrossEntropyLoss whose rows do not sum to 1 (multi-hot labels).",
      severities=("error",), evidence=_labels_chart,
      explains=(*LOSS_INPUT_SYMPTOMS, "negative_loss"))
def rule_target_range(run) -> list[Finding]:
    """The targets break the loss's contract on their range. BCEWithLogitsLoss given targets below 0
    or above 1 at any capture: its loss per element, max(x, 0) − x·y + log(1 + e^−|x|), falls
    without bound as the logit x goes to +∞ for y > 1 or −∞ for y < 0: the model is rewarded
    for ever larger logits, the loss goes negative, and -1 labels never mean "the negative
    class". torch checks this range for BCELoss (an error) but not for BCEWithLogitsLoss.
    CrossEntropyLoss given float targets of the outputs' shape (class probabilities) whose rows
    do not sum to 1: |sum − 1| > 0.1 (median over ≥ 2 probed captures, `target_sum_dev`), as
    multi-hot labels with several ones per row (a loss that went below 0, from negative
    targets, is `negative_loss`'s). The loss then rewards spreading the
    probability over the row's ones and stays above what one-hot targets allow (the uniform
    prediction's log K times the row sum). Error either way. Reference: PyTorch docs,
    torch.nn.BCEWithLogitsLoss and torch.nn.BCELoss ("the targets y should be numbers between
    0 and 1"), torch.nn.CrossEntropyLoss (probability targets: "each value should be between
    [0,1]" and a distribution over the classes); torch.nn.BCEWithLogitsLoss for multi-label."""
    loss_fn = run.manifest.get("loss_fn")
    if loss_fn in _CE:
        return _target_row_sums(run, loss_fn)
    if loss_fn not in _LOGIT_BINARY:
        return []
    lo, hi = _label_range(run)
    if not (lo < -1e-6 or hi > 1 + 1e-6):  # NaN (no labels recorded) compares false: no finding
        return []
    lab = dist(run, "label")
    lab = lab[lab["layer"].isin(["train/value", "train/class"])]
    steps = (int(lab["step"].min()), int(lab["step"].max()))
    loss = scalar(run, "loss")
    negative = bool(len(loss)) and float(loss["value"].min()) < 0
    return [make_finding(
        "target_range", "error", None, steps,
        f"BCEWithLogitsLoss is given targets from {lo:.3g} to {hi:.3g} (captured steps {steps[0]}-{steps[1]}); it "
        "expects probabilities in [0, 1]. Outside that range its loss has no minimum: the model is pushed to ever "
        f"larger logits{' and the loss went negative' if negative else ''}.",
        "Map the targets into [0, 1]: (y + 1) / 2 for -1/1 labels, y / 255 (or y > 0) for 0/255 masks; for more "
        "than two classes use CrossEntropyLoss with class ids.",
        {"loss_fn": run.manifest.get("loss_fn"), "target_min": lo, "target_max": hi, "loss_went_negative": negative},
        "PyTorch docs: torch.nn.BCEWithLogitsLoss, torch.nn.BCELoss (targets between 0 and 1)",
    )]


def _target_row_sums(run, loss_fn: str) -> list[Finding]:
    """CrossEntropyLoss's probability targets whose rows sum to something else than 1."""
    probe, loss = _probe(run, schema.TARGET_SUM_DEV), scalar(run, "loss")
    if len(probe) < MIN_PROBES or float(probe["value"].median()) <= SUM_OFF:
        return []
    if len(loss) and float(loss["value"].min()) < -NEGATIVE_TOL:
        return []  # negative targets (one-hot − eps): `negative_loss` names that break of the contract
    dev, steps = float(probe["value"].median()), (int(probe["step"].min()), int(probe["step"].max()))
    c, integer = _classes(run), _probe(run, "label_integer_frac")
    binary = not integer.empty and bool((integer["value"] == 1).all())
    what = "0/1 targets with several ones per row (multi-hot labels)" if binary else "targets"
    bound = math.log(c) if c > 1 else math.nan
    above = (f" The loss, median {float(loss['value'].median()):.3g}, stays above log K = {bound:.3g}, what the "
             "uniform prediction gives one-hot targets." if len(loss) and float(loss["value"].median()) > bound else "")
    return [make_finding(
        "target_range", "error", None, steps,
        f"{loss_fn} is given {what} shaped like the outputs whose rows do not sum to 1: |row sum − 1| is "
        f"{dev:.3g} on average (median of {len(probe)} captures, steps {steps[0]}-{steps[1]}). It reads float "
        f"targets as one distribution over the classes per sample.{above}",
        "For multi-label targets (several classes per sample), use nn.BCEWithLogitsLoss on the same logits and "
        "0/1 targets; for one class per sample, pass class ids (targets.argmax(1)) or rows that sum to 1.",
        {"loss_fn": loss_fn, "row_sum_dev_median": dev, "captures": len(probe), "binary_targets": binary,
         "num_classes": c, "tolerance": SUM_OFF},
        "PyTorch docs: torch.nn.CrossEntropyLoss (probability targets), torch.nn.BCEWithLogitsLoss",
    )]


# What each loss that cannot go below 0 expects (its contract, from its PyTorch docs): inputs that
# keep to it give a loss ≥ 0 for every batch, so a loss below 0 says they do not.
_CONTRACTS = {
    **dict.fromkeys(("CrossEntropyLoss", "cross_entropy"),
                    "raw logits as input, and class ids in [0, C) or class probabilities (≥ 0, summing to 1) as "
                    "target; class weights ≥ 0"),
    **dict.fromkeys(_NLL, "log-probabilities as input (log_softmax over the classes), class ids as target, "
                          "class weights ≥ 0"),
    **dict.fromkeys(_KL, "log-probabilities as input (log_softmax, not softmax) and probabilities summing to 1 "
                         "as target (log-probabilities with log_target=True)"),
    **dict.fromkeys(_PROB_BINARY, "probabilities in [0, 1] as input and targets in [0, 1]; weights ≥ 0"),
    **dict.fromkeys(_LOGIT_BINARY, "raw logits as input, targets in [0, 1], weight and pos_weight ≥ 0"),
    **dict.fromkeys(_REGRESSION_LOSSES, "nothing that could make it negative: it is ≥ 0 for any inputs, so the "
                                        "logged loss is not this loss alone (a term subtracted from it?)"),
    **dict.fromkeys(("SoftMarginLoss", "soft_margin_loss", "MultiLabelSoftMarginLoss",
                     "multilabel_soft_margin_loss"), "targets of ±1 (SoftMarginLoss) or in [0, 1] "
                                                     "(MultiLabelSoftMarginLoss), weights ≥ 0"),
}
# Below 0 by more than rounding: a loss at its minimum 0 in float32 rounds to within ~1e-6 of it;
# 1e-3 leaves room for a bf16/fp16 loss (3 significant digits) and a mean of such terms.
NEGATIVE_TOL = 1e-3


def _loss_chart(run, finding: Finding) -> go.Figure:
    fig = figures.scalar_figure(run.scalars(names=["loss"]), ["loss"], "the training loss (this loss is ≥ 0 by "
                                                                       "its contract)")
    fig.add_hline(y=0, line_dash="dash", annotation_text="0: the lowest it may go")
    return fig


@rule("A loss that cannot go below 0 (CrossEntropyLoss, NLLLoss, KLDivLoss, BCELoss, BCEWithLogitsLoss, MSELoss...) "
      "went negative: its inputs break the loss's contract.", severities=("error", "warning"), evidence=_loss_chart,
      explains=LOSS_INPUT_SYMPTOMS)
def rule_negative_loss(run) -> list[Finding]:
    """The run's loss (`loss`, the value the watched loss gave) went below -0.001 at some step
    while the loss it names is ≥ 0 for every input that keeps to its contract
    (`_CONTRACTS`): CrossEntropyLoss, NLLLoss on log-probabilities, KLDivLoss on
    log-probabilities against a distribution, BCE on targets in [0, 1], MSE/L1/SmoothL1/
    Huber always. Then what it is given breaks the contract (probabilities where
    log-probabilities belong, targets outside [0, 1], negative weights), and the optimiser
    minimises something that is not the loss, often without bound: an error. A loss named
    as a function (`kl_div`), whose logged value may come from the user's own total, a
    warning. More specific causes explain it (`nll_input`, `target_range`). Reference:
    PyTorch docs of each loss (torch.nn.KLDivLoss: input "in the log-space"; torch.nn.
    BCEWithLogitsLoss, BCELoss: targets "between 0 and 1"; torch.nn.NLLLoss: "log-
    probabilities"); Cover & Thomas 2006, Elements of Information Theory, Thm 2.6.3 (KL ≥ 0)."""
    loss_fn = run.manifest.get("loss_fn")
    if loss_fn not in _CONTRACTS:
        return []
    loss = scalar(run, "loss")
    loss = loss[np.isfinite(loss["value"].astype(float))]
    below = loss[loss["value"] < -NEGATIVE_TOL]
    if below.empty:
        return []
    lowest, s0, s1 = float(below["value"].min()), int(below["step"].min()), int(below["step"].max())
    module = loss_fn[:1].isupper()  # an nn.Module: the logged loss is its own output
    hedge = "" if module else " (if the logged loss is this function's value alone)"
    return [make_finding(
        "negative_loss", "error" if module else "warning", None, (s0, s1),
        f"{loss_fn} went below 0{hedge}: down to {lowest:.3g}, negative at {len(below)} of {len(loss)} logged "
        f"steps ({s0}-{s1}). It is ≥ 0 for inputs that keep to its contract: {_CONTRACTS[loss_fn]}. So what it is "
        "given breaks that contract, and training minimises something else.",
        f"Check what {loss_fn} is given against that contract: print the input's and target's range and row sums "
        "on one batch (inputs.exp().sum(1) should be 1 for log-probabilities; targets.min(), targets.max()).",
        {"loss_fn": loss_fn, "lowest_loss": lowest, "negative_steps": len(below), "logged_steps": len(loss),
         "tolerance": NEGATIVE_TOL, "contract": _CONTRACTS[loss_fn]},
        f"PyTorch docs: torch.nn.{loss_fn if module else 'functional.' + loss_fn}; Cover & Thomas 2006, Thm 2.6.3",
    )]


# ---------------------------------------------------------------------------------
# Logits that cannot go below 0; a batch_first module whose batch is not the loss's


# Logits that learn are almost never exactly 0 in floating point (a zero is a measure-zero
# event); a ReLU clamps every negative one to exactly 0, about half of them at initialisation
# (He et al. 2015, §2.2: a ReLU zeroes the negative half of a symmetric input). A tenth of the
# loss's input at exactly 0, and nothing below it, is a clamp.
ZERO_LOGIT_SHARE = 0.1
_RELU_LIKE = {"ReLU", "ReLU6", "Threshold", "Hardtanh"}


def _last_module(run) -> tuple[str | None, str | None]:
    """(name, type) of the model's last leaf module in definition order."""
    leaves = [m for m in run.manifest.get("modules") or () if m.get("leaf")]
    return (leaves[-1].get("name"), leaves[-1].get("type")) if leaves else (None, None)


def _never_positive_classes(run, layer: str | None, classes: int) -> int | None:
    """Classes whose logit was never positive over the batch at the last capture, from the last
    module's `dead_frac` (a ReLU after the classifier: one unit per class)."""
    act = dist(run, "activation")
    act = act[act["layer"] == layer] if layer and not act.empty else act
    if act.empty or "dead_frac" not in act or classes < 2 or not np.isfinite(act["dead_frac"].iloc[-1]):
        return None
    return int(round(float(act["dead_frac"].iloc[-1]) * classes))


@rule("Logits clamped at 0 (a ReLU after the classifier) into CrossEntropyLoss or BCEWithLogitsLoss: a class's "
      "score cannot go below 0, and a clamped logit gets no gradient.", severities=("warning", "error"),
      evidence=_range_chart,
      explains=(*LOSS_INPUT_SYMPTOMS, ("dead_units", lambda c, s: s.layer == c.evidence.get("last_module"))))
def rule_relu_on_logits(run) -> list[Finding]:
    """CrossEntropyLoss or BCEWithLogitsLoss whose input (the logits) is never below 0 at any
    capture (≥ 2) while ≥ 10% of it is exactly 0 (median over the captures): a ReLU (or a
    clamp) after the classifier. Logits must take both signs: CrossEntropyLoss lowers a wrong
    class by pushing its logit down, BCEWithLogitsLoss predicts the negative class only below
    0. A clamped logit passes no gradient, so a class whose logit is 0 for every sample cannot
    be learned (the last module's `dead_frac` counts them). A warning (the run learns, badly);
    the loss staying at the baseline makes it an error. The ReLU variant of
    `softmax_before_cross_entropy`'s range reasoning. Reference: PyTorch docs,
    torch.nn.CrossEntropyLoss ("unnormalized logits"), torch.nn.BCEWithLogitsLoss; He et al.
    2015, Delving Deep into Rectifiers, §2.2."""
    loss_fn = run.manifest.get("loss_fn")
    if loss_fn not in _CE | _LOGIT_BINARY:
        return []
    d = _logits(run)
    d = d[d["count"] > 0] if not d.empty else d
    if len(d) < MIN_PROBES or "zero_frac" not in d or float(d["min"].min()) < 0 or float(
            d["zero_frac"].median()) < ZERO_LOGIT_SHARE:
        return []
    steps = (int(d["step"].min()), int(d["step"].max()))
    name, kind = _last_module(run)
    c = _classes(run)
    dead = _never_positive_classes(run, name, c) if kind in _RELU_LIKE else None
    module = f" The model's last module is {kind} ({name})." if kind in _RELU_LIKE else ""
    lost = f" At the last capture {dead} of {c} class logits were 0 for the whole batch." if dead else ""
    effect = ("a wrong class's score cannot be pushed below 0 and a clamped logit gets no gradient" if loss_fn in _CE
              else "the predicted probability never falls below 0.5, so the negative class is never predicted")
    return [make_finding(
        "relu_on_logits", "warning", None, steps,
        f"{loss_fn} is given logits that are never below 0: min {float(d['min'].min()):.3g} over {len(d)} captures "
        f"(steps {steps[0]}-{steps[1]}), {float(d['zero_frac'].median()):.0%} of them exactly 0 (median).{module}"
        f"{lost} Logits must take both signs: {effect}.",
        f"Remove the ReLU (or clamp) after the last Linear layer and give {loss_fn} the raw logits; keep "
        "activations between hidden layers only.",
        {"loss_fn": loss_fn, "logit_min": float(d["min"].min()), "zero_frac_median": float(d["zero_frac"].median()),
         "captures": len(d), "last_module": name, "last_module_type": kind, "never_positive_classes": dead,
         "num_classes": c, "threshold": ZERO_LOGIT_SHARE},
        "PyTorch docs: torch.nn.CrossEntropyLoss, torch.nn.BCEWithLogitsLoss; He et al. 2015, §2.2",
    )]


def _batch_axis_mismatches(run) -> list[tuple[str, str, list[int], int, int]]:
    """(module, type, output shape, its batch axis, the loss's N) for each module with a
    `batch_first` whose output's batch axis is not the loss's batch while the other of its
    first two axes is: the data's batch runs along the module's sequence axis."""
    shapes = run.manifest.get("output_shapes") or {}
    n = ((run.manifest.get(schema.LOSS_INPUT_SHAPES) or {}).get("outputs") or [None])[0]
    found = []
    for m in run.manifest.get("modules") or ():
        shape, batch_first = shapes.get(m.get("name")), m.get("batch_first")
        if not isinstance(batch_first, bool) or not shape or len(shape) < 3 or not n:
            continue
        axis = 0 if batch_first else 1
        if shape[axis] > 1 and shape[axis] != n and shape[1 - axis] == n:
            found.append((m["name"], m.get("type", ""), list(shape), axis, int(n)))
    return found


def _grad_one_slot(run, layer: str, size: int) -> float | None:
    """The median share of zeros in the gradient at `layer`'s output; (size-1)/size when the loss
    reads one slot of an axis of that size."""
    g = dist(run, "gradient")
    g = g[g["layer"] == layer] if not g.empty else g
    return float(g["zero_frac"].median()) if not g.empty else None


@rule("A module with batch_first (LSTM, GRU, RNN, MultiheadAttention, transformer layers) whose batch axis is not "
      "the loss's batch: the data's batch runs along its sequence axis and the samples mix.",
      severities=("error",), evidence=None,
      explains=(*LOSS_INPUT_SYMPTOMS, ("stuck_parameters", symptom(starved))))
def rule_batch_first_mismatch(run) -> list[Finding]:
    """A module that has `batch_first` (the manifest records it), whose output at the first step
    has its batch axis (0 with batch_first=True, 1 without) of size > 1 and not the loss's N,
    while its other leading axis is N: (batch, seq, feature) input into an nn.LSTM built
    seq-first. The module then runs the batch as time: each sample's state carries the samples
    before it, and the loss reads one slot of the module's real batch (the gradient at its
    output is then zero on (k-1)/k of it, quoted as corroboration). An error. A module whose
    batch axis has size 1 (one sequence, the loss per step) is left alone. Reference: PyTorch
    docs, torch.nn.LSTM ("batch_first – If True, then the input and output tensors are provided
    as (batch, seq, feature) instead of (seq, batch, feature)")."""
    found = _batch_axis_mismatches(run)
    out = []
    for name, kind, shape, axis, n in found:
        zeros = _grad_one_slot(run, name, shape[axis])
        slot = (f"; the gradient at its output is zero on {zeros:.0%} of it (one of its {shape[axis]} 'batch' slots "
                "reaches the loss)") if zeros is not None and zeros >= 1 - 1 / shape[axis] - 0.02 else ""
        built, meant = ("batch_first=True", "False") if axis == 0 else ("batch_first=False", "True")
        layout = "(seq, batch, feature)" if axis == 0 else "(batch, seq, feature)"
        out.append(make_finding(
            "batch_first_mismatch", "error", name, (0, 0),
            f"{name} ({kind}, {built}) gives output of shape {_shape(shape)}: its batch axis (dim {axis}) has "
            f"{shape[axis]}, while the loss's batch is {n}, the size of its dim {1 - axis}. The data's batch runs "
            f"along {name}'s sequence axis, so each sample's result depends on the samples beside it{slot}.",
            f"Build {name} with batch_first={meant} for {layout} input, or permute the input (x.transpose(0, 1), "
            "not x.view) to the layout it expects.",
            {"module": name, "type": kind, "output_shape": shape, "batch_axis": axis, "batch_first": axis == 0,
             "loss_batch": n, "gradient_zero_frac": zeros},
            "PyTorch docs: torch.nn.LSTM, torch.nn.GRU, torch.nn.MultiheadAttention (batch_first)",
        ))
    return out


# Activations whose outputs are never negative: a log-rate made of one cannot be below 0.
_NON_NEGATIVE = {"Softplus", "ReLU", "ReLU6", "Sigmoid", "Softmax", "Hardsigmoid"}
_POISSON = {"PoissonNLLLoss", "poisson_nll_loss"}


@rule("PoissonNLLLoss with log_input=True (its default: the input is the log of the rate) given a rate (outputs of a "
      "Softplus, ReLU or exp, never negative): the outputs settle near log(count) instead of the count.",
      severities=("warning",), evidence=_bands_chart, explains=LOSS_INPUT_SYMPTOMS)
def rule_loss_input_contract(run) -> list[Finding]:
    """PoissonNLLLoss (`log_input` True, from the manifest's `loss_log_input`) whose model ends in
    a non-negative activation (Softplus, ReLU, Sigmoid...: the last leaf module) and whose
    outputs were ≥ 0 at every capture (≥ 2): with log_input=True the loss is exp(x) − y·x, so x
    is a log-rate, which is negative wherever the rate is below 1; a model that can only output
    x ≥ 0 is giving the rate itself. It trains (the loss falls), but the outputs approach
    log(count): read as rates they are wrong. Warning. Reference: PyTorch docs,
    torch.nn.PoissonNLLLoss ("log_input: if True the loss is computed as exp(input) − target *
    input, if False the loss is input − target * log(input + eps)")."""
    if run.manifest.get("loss_fn") not in _POISSON or run.manifest.get("loss_log_input") is not True:
        return []
    leaf, out = _last_leaf(run), dist(run, "output")
    out = out[out["layer"] == "train/value"] if not out.empty else out
    if leaf not in _NON_NEGATIVE or len(out) < MIN_PROBES or float(out["min"].min()) < 0:
        return []
    lo, hi = _label_range(run)
    steps = (int(out["step"].min()), int(out["step"].max()))
    return [make_finding(
        "loss_input_contract", "warning", "train/value", steps,
        f"PoissonNLLLoss(log_input=True) reads the outputs as log-rates, but the model ends in {leaf}: its outputs "
        f"were never negative ({float(out['min'].min()):.3g} to {float(out['max'].max()):.3g} over steps "
        f"{steps[0]}-{steps[1]}; counts {lo:.3g} to {hi:.3g}). The loss fits exp(output) to the counts, so the outputs "
        "you read as rates are their logarithm.",
        f"Either drop the {leaf} and read the rate as output.exp(), or keep it and pass log_input=False "
        "(nn.PoissonNLLLoss(log_input=False)).",
        {"last_module": leaf, "output_min": float(out["min"].min()), "output_max": float(out["max"].max()),
         "label_min": lo, "label_max": hi, "log_input": True},
        "PyTorch docs: torch.nn.PoissonNLLLoss (log_input)",
    )]
