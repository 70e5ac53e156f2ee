"""Health rules for silent training-loop bugs: the loss looks plausible, the loop is wrong.

Gradients never reset (no `optimizer.zero_grad()`), parameters that never change (frozen,
left out of the optimizer, a zero learning rate, gradients clipped to nothing), most of
the model frozen, a schedule that drives the learning rate to ~0 early, weight decay that
dominates the update, BatchNorm on tiny batches, and the user's own validation run with
dropout / BatchNorm in train mode. Same contract as every health rule: `rule_xxx(run)
-> list[Finding]`, no finding (never an exception) when the data is missing; each is
registered with `@rule`, its description and its evidence chart.

The hooks record what these rules read (see `diagnostics.schema.LOOP_SCALARS` and
`MANIFEST_OPTIONAL`): `grad_carried`, `batchnorm_batch_size`, `no_grad_forward_train_mode`
scalars, and per parameter `in_optimizer` plus the optimizer's param groups in the manifest.

Related work: TrainCheck (Jiang et al., OSDI 2025) learns invariants of the training
loop from known-good runs (e.g. that gradients are applied to the weights each step) and
checks new runs against them: the probes here state such invariants directly instead of
learning them. AutoTrainer (Zhang et al., ICSE 2021) covers five symptom classes
(vanishing/exploding gradients, dying ReLU, oscillating loss, slow convergence) and none
of these loop bugs; DeepFD (Cao et al., ICSE 2022) classifies fault types (loss, optimizer,
learning rate, ...) from runtime features with a learned model. Neither gives thresholds
for these bugs: each rule's docstring states its own and where it comes from.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from diagnostics import schema
from diagnostics.health import charts
from diagnostics.health.common import NORM_TYPES, Finding, dist, last_loss, make_finding, module_types, scalar
from diagnostics.health.fit import rule_loss_vs_baseline
from diagnostics.health.gradients import penalty_in_gradient
from diagnostics.health.problems import (
    NOT_LEARNING,
    cause,
    high_ratio,
    low_ratio,
    on_stuck_layer,
    same_layer,
    shrinking,
    symptom,
)
from diagnostics.health.registry import rule

# Gradients not reset: share of capture steps (after the first) whose probe gradient was carried.
CARRIED_SHARE = 0.5
# Fallback without the probe: grad_norm growth (late median over early median) and its monotonicity.
GRAD_GROWTH_FACTOR = 10.0
GRAD_GROWTH_RANK_CORR = 0.9
# Parameters that never change: captures (after step 0) needed.
MIN_STUCK_CAPTURES = 3
# Parameters that never get a gradient: info (an unused branch is often deliberate) unless they are
# more than half of the trainable parameters by count (then the model that trains is not the one
# built: a backbone run under torch.no_grad() or .detach()ed), or the loss does not fall.
NO_GRAD_SHARE = 0.5
# Frozen model: trained share of parameters (by count) under which "most of the model" is frozen.
TRAINED_SHARE_LOW = 0.05
LOSS_FALL_MIN = 0.10  # the loss fell less than 10% from its first steps: "not falling"
# Learning-rate collapse: below this fraction of its maximum, for more than this share of the steps.
LR_COLLAPSE_FRACTION = 0.01
LR_COLLAPSE_TAIL = 0.5
# ... or below 0.1% of its maximum for more than a quarter of the steps: no healthy schedule sits there
# that long (cosine and linear decay to 0 spend ~2% of the run below it, OneCycle ~1.5%, step decay by
# 10x twice ends at 1%), a ReduceLROnPlateau whose mode is the opposite of its metric ('max' for a loss)
# or a per-batch decay does.
LR_DEEP_FRACTION = 1e-3
LR_DEEP_TAIL = 0.25
MIN_LR_STEPS = 20
# Weight decay dominating: decay's share of the step above this, and the weight norm shrinking below this.
DECAY_SHARE = 0.5
WEIGHT_SHRINK = 0.8
# BatchNorm batch size under which the batch statistics are too noisy (Wu & He 2018).
BN_MIN_BATCH = 8


def _params(run) -> list[dict]:
    return list(run.manifest.get("parameters", []) or [])


def _last_step(run) -> int | None:
    s = scalar(run, "loss")
    if s.empty:
        s = scalar(run, "lr")
    return None if s.empty else int(s["step"].max())


def _loss_fall(run) -> float | None:
    """1 - (last loss / first loss): the medians of the last 10% and of the first 5 steps."""
    loss = scalar(run, "loss")
    loss = loss[np.isfinite(loss["value"].astype(float))]
    last = last_loss(run)
    if last is None:
        return None
    first = float(loss["value"].iloc[:5].median())
    return 1 - last[0] / first if first > 0 else None


def _names(names: list[str], limit: int = 5) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _grad_norm_chart(run, finding: Finding) -> go.Figure:
    return charts.scalar_lines(run, ["grad_norm"], "global gradient norm (grows when gradients are never reset)")


@rule("Gradients never reset between steps (optimizer.zero_grad() missing): a probe sees the last "
      "step's gradient at backward (error), or the gradient norm grows steadily 10x.",
      severities=("error", "warning"), evidence=_grad_norm_chart,
      explains=("grad_norm_spikes", "exploding_gradients", "nonfinite", ("update_ratio", symptom(high_ratio)),
                *NOT_LEARNING))
def rule_gradients_not_reset(run) -> list[Finding]:
    """Gradients never reset between steps (`optimizer.zero_grad()` missing): on ≥ 50% of the
    capture steps after the first, the smallest optimized parameter still held a non-zero
    gradient when the step's first backward reached it (`grad_carried`; error: every step
    then applies the sum of all earlier gradients). Without that probe (older runs): the
    gradient norm growing ≥ 10x from the first 5 steps to the last 10%, monotonically
    (Spearman ≥ 0.9; warning). Reference: PyTorch docs, "Zeroing out gradients in PyTorch";
    TrainCheck's invariant "zero_grad is called before backward"; the StackOverflow MNIST
    report (Adam lr=1e-4, batch 30, no zero_grad)."""
    norm = scalar(run, "grad_norm")
    norm = norm[np.isfinite(norm["value"].astype(float))]
    growth = None
    if len(norm) >= 10:
        early, late = norm["value"].iloc[:5].median(), norm["value"].iloc[-max(5, len(norm) // 10):].median()
        growth = float(late / early) if early > 0 else None
    advice = ("Call optimizer.zero_grad() (or model.zero_grad()) once per step, before loss.backward(); "
              "for deliberate gradient accumulation, zero after each optimizer.step().")
    ref = "PyTorch docs: Zeroing out gradients in PyTorch; TrainCheck (OSDI 2025) zero_grad invariant"
    carried = scalar(run, "grad_carried")
    carried = carried[carried["step"] > carried["step"].min()] if not carried.empty else carried
    if len(carried) >= 2:
        hit = carried[carried["value"] > 0.5]
        share = len(hit) / len(carried)
        if share < CARRIED_SHARE:
            return []
        grow = f"; the gradient norm grew {growth:.3g}x over the run" if growth else ""
        return [make_finding(
            "gradients_not_reset", "error", None, (hit["step"].min(), hit["step"].max()),
            f"On {len(hit)} of {len(carried)} captured steps (steps {int(hit['step'].min())}-"
            f"{int(hit['step'].max())}) the gradients of the previous step were still there when backward "
            f"ran: they are never reset, so each step applies the sum of all earlier gradients{grow}.",
            advice, {"carried_steps": hit["step"].astype(int).tolist(), "captures": len(carried),
                     "share": share, "grad_norm_growth": growth, "threshold": CARRIED_SHARE}, ref)]
    if growth is None or growth < GRAD_GROWTH_FACTOR or rule_not_in_optimizer(run):
        return []  # parameters left out of the optimizer are never zeroed: that rule says so
    corr = pd.Series(norm["value"].to_numpy()).corr(pd.Series(norm["step"].to_numpy(float)), method="spearman")
    if not corr >= GRAD_GROWTH_RANK_CORR:
        return []
    s0, s1 = int(norm["step"].min()), int(norm["step"].max())
    return [make_finding(
        "gradients_not_reset", "warning", None, (s0, s1),
        f"The gradient norm grew {growth:.3g}x, steadily (rank correlation with the step {corr:.2f}), "
        f"over steps {s0}-{s1}: gradients that are never reset add up like this.",
        advice, {"grad_norm_growth": growth, "rank_corr": corr, "factor": GRAD_GROWTH_FACTOR}, ref)]


def _states_chart(run, finding: Finding) -> go.Figure:
    return charts.parameter_states(run)


@rule("Trainable parameters the optimizer does not hold (e.g. a head replaced after building it).",
      severities=("warning",), evidence=_states_chart,
      explains=(("update_ratio", same_layer), *NOT_LEARNING))
def rule_not_in_optimizer(run) -> list[Finding]:
    """Parameters with requires_grad=True that the optimizer does not hold (manifest
    `in_optimizer` False): they get gradients but never change, e.g. a head replaced after
    the optimizer was built. Threshold: any such parameter (warning). Reference: PyTorch
    docs, torch.optim ("construct the optimizer after moving the model; pass it the
    parameters to optimize"); TrainCheck's invariant that optimized parameters change."""
    left = [p for p in _params(run) if p.get("requires_grad") and p.get("in_optimizer") is False]
    if not left:
        return []
    names = [p["name"] for p in left]
    numel = sum(int(p.get("numel", 0)) for p in left)
    total = sum(int(p.get("numel", 0)) for p in _params(run)) or 1
    return [make_finding(
        "not_in_optimizer", "warning", names[0], (0, _last_step(run)),
        f"{len(names)} trainable parameter(s) ({numel:,} values, {numel / total:.0%} of the model) are not in "
        f"the optimizer and never change: {_names(names)}.",
        "Build the optimizer after the model is final (after replacing the head or moving it to the "
        "device), from model.parameters(), or add them with optimizer.add_param_group({'params': ...}).",
        {"parameters": names, "numel": numel, "share": numel / total}, "PyTorch docs: torch.optim")]


def _constant(rows: pd.DataFrame) -> bool:
    cols = ["mean", "std", "min", "max"]
    v = rows[cols].to_numpy(float)
    return bool(len(v) >= 2 and np.all(v == v[0]))


# the reason when a parameter has a gradient and still never changes: too small to move it
# in its dtype (softmax before cross entropy shrinks every gradient), or an optimizer bug
MOVES_TOO_LITTLE = "the optimizer does not change it although it has a gradient"


NO_GRADIENT = "it never gets a gradient (not used in the forward, or cut from the graph by .detach())"
CLEARED = "its gradient is cleared before the optimizer step"


def _cleared_before_step(run, steps: list[int], grads: pd.DataFrame) -> float | None:
    """The median gradient norm at backward over `steps` when it was > 0 at each of them while no
    optimized parameter held a non-zero gradient when the optimizer stepped (`param_grad` is read
    in the optimizer's pre-step hook, `grad_norm` as backward accumulates): the gradients existed
    and were cleared in between. None otherwise (no gradient at backward either: not used, detached)."""
    norm = scalar(run, "grad_norm")
    norm = norm[norm["step"].isin(steps)]["value"].astype(float) if not norm.empty else norm
    if norm.empty or not (norm > 0).all():
        return None
    g = grads[grads["step"].isin(steps)] if not grads.empty else grads
    if not g.empty and not ((g["min"] == 0) & (g["max"] == 0)).all():
        return None
    return float(norm.median())


def _stuck_reason(run, name: str, steps: list[int], grads: pd.DataFrame, lr_of: dict) -> str:
    g = grads[grads["layer"] == name]
    lr = lr_of.get(name)
    if lr is not None and not lr.empty and (lr[lr["step"].isin(steps)]["value"] == 0).all():
        return "its learning rate is 0"
    if g.empty or ((g["min"] == 0).all() and (g["max"] == 0).all()):
        clipped = scalar(run, "grad_clipped")
        if not g.empty and not clipped.empty and (clipped[clipped["step"].isin(steps)]["value"] > 0.5).all():
            return "its gradients are clipped to zero (clip_grad_norm_ with max_norm 0 or a zero scale)"
        if (norm := _cleared_before_step(run, steps, grads)) is not None:
            return (f"{CLEARED} (the gradient norm at backward was {norm:.3g}, yet no parameter held a gradient "
                    "at optimizer.step(): zero_grad() runs between loss.backward() and optimizer.step()?)")
        if g.empty:
            return NO_GRADIENT
        return f"{ZERO_GRADIENT} (no signal reaches it: dead units upstream?)"
    return MOVES_TOO_LITTLE


ZERO_GRADIENT = "its gradient is zero at every capture"
# Loss-contract findings whose harm acts through the gradient the loss gives the outputs (a regression
# loss on class ids, probabilities into CrossEntropyLoss, ...): where no parameter ever gets a non-zero
# gradient, the outputs do not depend on the parameters differentiably (torch.round, argmax, a
# comparison or .long() in the forward): that comes first, whatever the loss would do with a gradient.
GRADIENT_SHAPING = ("regression_loss_on_class_ids", "softmax_wrong_dim", "nll_input", "double_sigmoid",
                    "softmax_before_cross_entropy", "loss_shape_broadcast", "target_range")
NOT_DIFFERENTIABLE = ("; no parameter gets a gradient although each is used: an operation in the forward whose "
                      "gradient is 0 (torch.round, floor, argmax, a comparison, .long()) cuts every path from the loss")


def no_gradient_anywhere(f: Finding) -> bool:
    """Every optimized parameter stuck, with a zero gradient at every capture."""
    return bool(f.evidence.get("all_parameters_stuck")) and str(f.evidence.get("reason", "")).startswith(ZERO_GRADIENT)


def _lr_by_param(run) -> dict[str, pd.DataFrame]:
    groups = run.manifest.get("optimizer_groups") or []
    out = {}
    for i, g in enumerate(groups):
        s = scalar(run, "lr" if len(groups) == 1 else f"lr/group{i}")
        for n in g.get("params", []):
            out[n] = s
    return out


def _norm_chart(run, finding: Finding) -> go.Figure | None:
    return charts.weight_norm(run, finding.layer) if finding.layer else None


@rule("Optimized parameters that never change, with the reason (lr 0, no gradient, clipped to zero).",
      severities=("error", "warning", "info"), evidence=_norm_chart,
      explains=(("update_ratio", on_stuck_layer), *NOT_LEARNING,
                *((s, cause(no_gradient_anywhere)) for s in GRADIENT_SHAPING)))
def rule_stuck_parameters(run) -> list[Finding]:
    """Parameters the optimizer holds that never change: the weight summary identical and
    the update exactly zero on every capture (≥ 3 after step 0); the reason named from what
    was recorded (zero learning rate, no gradient, zero or clipped-away gradient, a gradient
    cleared between backward and the step). Every parameter with a zero gradient at every capture
    outranks a loss-contract finding (GRADIENT_SHAPING): the loss's gradient never reaches the
    model. Warning; for parameters that never get a gradient,
    info (an unused branch is often deliberate) unless they are > 50% of the trainable
    parameters by count or the loss does not fall (`_no_gradient_harm`); error when no
    optimized parameter changes at all. Parameters with requires_grad=False
    are left to `rule_frozen_model`. Reference: TrainCheck (OSDI 2025),
    invariant "parameters in the optimizer are updated at every step"."""
    w, u = dist(run, "weight"), dist(run, "update")
    if w.empty:
        return []
    w = w[w["step"] > w["step"].min()]
    grads, lr_of = dist(run, "param_grad"), _lr_by_param(run)
    stuck: dict[str, list[str]] = {}
    frozen = {p["name"] for p in _params(run) if p.get("requires_grad") is False}  # deliberate: frozen_model's
    w = w[~w["layer"].isin(frozen)]
    present = set(w["layer"])
    order = [p["name"] for p in _params(run) if p["name"] in present]
    span, layers = [], order + sorted(present - set(order))
    for name in layers:
        rows = w[w["layer"] == name]
        if len(rows) < MIN_STUCK_CAPTURES or not _constant(rows):
            continue
        upd = u[u["layer"] == name] if not u.empty else u
        if not upd.empty and not ((upd["min"] == 0) & (upd["max"] == 0)).all():
            continue
        steps = rows["step"].astype(int).tolist()
        stuck.setdefault(_stuck_reason(run, name, steps, grads, lr_of), []).append(name)
        span += [steps[0], steps[-1]]
    if not stuck:
        return []
    everything = sum(len(v) for v in stuck.values()) == len(layers)
    findings = []
    for reason, names in stuck.items():
        severity, harm = ("error", NOT_DIFFERENTIABLE if reason.startswith(ZERO_GRADIENT) else "") if everything \
            else _no_gradient_harm(run, names) if reason == NO_GRADIENT else ("warning", "")
        findings.append(make_finding(
            "stuck_parameters", severity, names[0], (min(span), max(span)),
            f"{len(names)} parameter(s) never changed over {len(w['step'].unique())} captures "
            f"(steps {min(span)}-{max(span)}): {_names(names)}; {reason}{harm}.",
            "Check the learning rate of their param group (and the scheduler), that they are used in the "
            "forward without .detach(), that gradient clipping uses a sensible max_norm, and that "
            "optimizer.step() runs after loss.backward().",
            {"parameters": names, "reason": reason, "all_parameters_stuck": everything},
            "TrainCheck (Jiang et al., OSDI 2025): optimized parameters change at every step"))
    return findings


def _no_gradient_harm(run, names: list[str]) -> tuple[str, str]:
    """Severity and words for parameters that never get a gradient: a warning when they are
    most of the trainable parameters by count (> NO_GRAD_SHARE) or the loss does not fall
    (< LOSS_FALL_MIN from its first steps, or near the trivial baseline); else info (an unused
    branch, e.g. an auxiliary head, is often deliberate)."""
    numel = {p["name"]: int(p.get("numel", 0) or 0) for p in _params(run) if p.get("requires_grad") is not False}
    total = sum(numel.values())
    share = sum(numel.get(n, 0) for n in names) / total if total else 0.0
    fall = _loss_fall(run)
    if fall is not None and fall < LOSS_FALL_MIN:
        loss = "; the loss does not fall" if fall <= 0 else f"; the loss fell only {fall:.0%}"
    elif any(f.severity == "warning" for f in rule_loss_vs_baseline(run)):
        loss = "; the loss stays near the trivial baseline"
    else:
        loss = ""
    if share <= NO_GRAD_SHARE and not loss:
        return "info", ""
    most = f"; they are {share:.0%} of the trainable parameters" if share > NO_GRAD_SHARE else ""
    return "warning", f"{most}{loss}"


def _head(run) -> str | None:
    """The last module with parameters that is not a normalisation layer."""
    heads = [m["name"] for m in run.manifest.get("modules", []) or []
             if int(m.get("params", 0) or 0) > 0 and not any(str(m.get("type", "")).startswith(t) for t in NORM_TYPES)]
    return heads[-1] if heads else None


def _loss_chart(run, finding: Finding) -> go.Figure:
    return charts.loss_curves(run, "training (and validation) loss")


@rule("The head frozen, or under 5% of the parameters training, while the loss does not fall.",
      severities=("warning",), evidence=_loss_chart,
      explains=(("update_ratio", symptom(low_ratio)), "stuck_parameters", *NOT_LEARNING))
def rule_frozen_model(run) -> list[Finding]:
    """Most of the model frozen while the loss does not fall: the output head has no trained
    parameter, or < 5% of the parameters (by count) train (requires_grad and in the
    optimizer), and the loss fell < 10% from its first steps or stays near the trivial
    baseline. Warning. A frozen backbone with a training head and a falling loss stays
    quiet (transfer learning). Reference: the PyTorch-forum report "everything frozen but
    BatchNorm" (the head frozen too); PyTorch docs, Finetuning Torchvision Models."""
    params = _params(run)
    if not params:
        return []
    trained = [p for p in params if p.get("requires_grad") and p.get("in_optimizer") is not False]
    total = sum(int(p.get("numel", 0)) for p in params) or 1
    share = sum(int(p.get("numel", 0)) for p in trained) / total
    head = _head(run)

    def of_head(p: dict) -> bool:
        return p["name"].rsplit(".", 1)[0] == head or (head == run.manifest.get("model_class") and "." not in p["name"])

    # a head none of whose parameters is listed shares them with another module (tied weights:
    # GPT's lm_head is wte; named_parameters lists a shared parameter once, under its first name)
    head_frozen = head is not None and any(of_head(p) for p in params) and not any(of_head(p) for p in trained)
    if not (head_frozen or share < TRAINED_SHARE_LOW):
        return []
    fall = _loss_fall(run)
    base = [f for f in rule_loss_vs_baseline(run) if f.severity == "warning"]
    if not base and (fall is None or fall >= LOSS_FALL_MIN):
        return []
    last = last_loss(run)
    where = f"the head {head} is frozen" if head_frozen else f"only {share:.1%} of the parameters train"
    names = [p["name"] for p in trained]
    return [make_finding(
        "frozen_model", "warning", head, (0, last[2] if last else _last_step(run)),
        f"{1 - share:.0%} of the parameters are frozen (requires_grad=False or not in the optimizer) and {where}; "
        f"training only {_names(names, 4) or 'nothing'}; "
        f"{f'the loss fell only {fall:.0%}' if fall is not None and fall > 0 else 'the loss did not fall'}"
        f"{' and stays near the trivial baseline' if base else ''}.",
        "Unfreeze the head (set requires_grad=True on the new classifier after freezing the backbone, or "
        "freeze by module: for p in backbone.parameters(): p.requires_grad = False), then build the optimizer "
        "from [p for p in model.parameters() if p.requires_grad].",
        {"trained_share": share, "head": head, "head_frozen": head_frozen, "trained": names[:20],
         "loss_fall": fall, "near_baseline": bool(base)},
        "PyTorch forum: 'everything frozen but BatchNorm'; PyTorch docs, Finetuning Torchvision Models")]


def _lr_chart(run, finding: Finding) -> go.Figure:
    name = finding.layer or "lr"
    lr = run.scalars(names=[name])
    return charts.scalar_lines(run, [name], "learning rate", log_y=bool(len(lr)) and bool((lr["value"] > 0).all()))


@rule("The learning rate below 1% of its maximum for the last half of the run (a scheduler stepped per "
      "batch), or below 0.1% for the last quarter (ReduceLROnPlateau with the wrong mode), or 0 throughout (error).",
      severities=("error", "warning"), evidence=_lr_chart,
      explains=(("update_ratio", symptom(low_ratio)), "stuck_parameters", *NOT_LEARNING))
def rule_lr_collapse(run) -> list[Finding]:
    """A learning-rate schedule that reaches ~0 early: the lr (each param group) below 1% of
    its maximum for the last > 50% of the steps (≥ 20 steps), typically a scheduler stepped
    per batch with its length in epochs, or below 0.1% for the last > 25% (no healthy schedule
    stays that low that long; ReduceLROnPlateau(mode='max') stepped with a loss cuts the rate
    every patience + 1 epochs) (warning); a learning rate of 0 at every step is an
    error. Reference: PyTorch docs, "How to adjust learning rate" (call scheduler.step()
    per epoch unless the scheduler is defined in steps); Loshchilov & Hutter 2017 (SGDR)."""
    groups = run.manifest.get("optimizer_groups") or [{}]
    names = ["lr"] if len(groups) == 1 else [f"lr/group{i}" for i in range(len(groups))]
    findings = []
    for name in names:
        s = scalar(run, name)
        v, steps = s["value"].to_numpy(float), s["step"].to_numpy()
        if len(v) < MIN_LR_STEPS or not np.isfinite(v).all():
            continue
        top = v.max()
        if top <= 0:
            findings.append(make_finding(
                "lr_collapse", "error", name, (steps[0], steps[-1]),
                f"The learning rate ({name}) is 0 at every one of {len(v)} steps: nothing trains.",
                "Set a learning rate above 0 (check the scheduler's start factor and the value read from "
                "the config).", {"max_lr": top, "steps": len(v)}, "PyTorch docs: torch.optim.lr_scheduler"))
            continue
        fraction, first_low, tail = _lr_tail(v, top)
        if fraction is None:
            continue
        findings.append(make_finding(
            "lr_collapse", "warning", name, (steps[first_low], steps[-1]),
            f"The learning rate ({name}) falls below {fraction:.1%} of its maximum {top:.3g} at step "
            f"{steps[first_low]} and stays there for the last {tail:.0%} of the steps (ending at {v[-1]:.3g}): "
            "that part of the run barely trains.",
            "Step the scheduler once per epoch, or size it in steps (T_max / step_size / total_steps = epochs "
            "x batches per epoch); check gamma and the decay's length; give ReduceLROnPlateau the mode of its "
            "metric (mode='min' for a loss, 'max' for an accuracy).",
            {"max_lr": top, "final_lr": v[-1], "collapse_step": steps[first_low], "tail_share": tail,
             "fraction": fraction},
            "PyTorch docs: How to adjust learning rate (torch.optim.lr_scheduler); Loshchilov & Hutter 2017"))
    return findings


def _lr_tail(v: np.ndarray, top: float) -> tuple[float | None, int, float]:
    """(fraction, first low index, tail share) when the learning rate stays below `fraction` of its
    maximum `top` from that index to the end for more than the tail allowed for that fraction
    (LR_COLLAPSE_* or the deeper LR_DEEP_*); (None, 0, 0.0) otherwise."""
    for fraction, allowed in ((LR_COLLAPSE_FRACTION, LR_COLLAPSE_TAIL), (LR_DEEP_FRACTION, LR_DEEP_TAIL)):
        high = np.nonzero(v >= fraction * top)[0]
        first_low = int(high[-1]) + 1
        tail = (len(v) - first_low) / len(v)
        if tail > allowed:
            return fraction, first_low, tail
    return None, 0, 0.0


def _norms(d: pd.DataFrame) -> pd.DataFrame:
    return d.assign(norm=np.sqrt(d["count"] * (d["std"] ** 2 + d["mean"] ** 2)))[["step", "layer", "norm"]]


def _decay_share(run, group: dict, lr: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    """Per parameter and capture: the share of the step that is weight decay. Decoupled
    (AdamW): lr·wd·‖w‖ / ‖Δw‖; coupled (L2 in the gradient: SGD, Adam): wd·‖w‖ / (wd·‖w‖ + ‖g‖)."""
    wd = float(group.get("weight_decay", 0) or 0)
    ratios = run.update_ratios()
    grads = dist(run, "param_grad")
    if wd <= 0 or ratios.empty or grads.empty:
        return pd.DataFrame()
    d = ratios[ratios["layer"].isin(names)].merge(_norms(grads), on=["step", "layer"])
    d = d.merge(lr.rename(columns={"value": "lr"}), on="step", how="left")
    decoupled = run.manifest.get("optimizer") == "AdamW" or bool(group.get("decoupled_weight_decay"))
    decay = wd * d["weight_norm"]
    with np.errstate(divide="ignore", invalid="ignore"):
        share = (d["lr"] * decay / d["update_norm"]) if decoupled else decay / (decay + d["norm"])
    return d.assign(share=share, decoupled=decoupled, wd=wd)


def _decay_words(share: float, decoupled: bool) -> str:
    if decoupled:
        return f"takes a step {share:.2g}x the size of the whole update"
    return f"is {share:.0%} of the gradient the optimizer follows"


@rule("Weight decay most of the step while the weights shrink (wd far above 1e-2 AdamW / 5e-4 SGD), or a "
      "penalty in the loss read from its effect: every weight matrix's gradient one multiple of the weight.",
      severities=("warning",), evidence=_norm_chart,
      explains=("update_ratio", "stuck_parameters", "vanishing_gradients",
                ("activation_scale_depth", symptom(shrinking)), *NOT_LEARNING))
def rule_weight_decay_dominates(run) -> list[Finding]:
    """Weight decay that dominates the update: for a weight matrix or kernel, the decay's
    share of the step (see `_decay_share`) above 0.5 (median over the last third of the
    captures) while its norm shrinks below 0.8x its first capture's (warning). The data
    gradient then no longer steers the weights; they decay towards zero. Reference:
    Loshchilov & Hutter 2019, "Decoupled Weight Decay Regularization" (AdamW; wd 1e-2
    with lr 1e-3); Krogh & Hertz 1992; typical SGD values 1e-4-5e-4 (He et al. 2016)."""
    groups = run.manifest.get("optimizer_groups") or []
    shapes = {p["name"]: p.get("shape", []) for p in _params(run)}
    findings = []
    for i, group in enumerate(groups):
        names = [n for n in group.get("params", []) if len(shapes.get(n, [])) >= 2]
        lr = scalar(run, "lr" if len(groups) == 1 else f"lr/group{i}")
        d = _decay_share(run, group, lr, names) if names else pd.DataFrame()
        if d.empty:
            continue
        for name in names:
            rows = d[(d["layer"] == name) & np.isfinite(d["share"])].sort_values("step")
            if len(rows) < MIN_STUCK_CAPTURES:
                continue
            tail = rows.iloc[-max(3, math.ceil(len(rows) / 3)):]
            share = float(tail["share"].median())
            shrink = float(rows["weight_norm"].iloc[-1] / rows["weight_norm"].iloc[0])
            if share <= DECAY_SHARE or shrink >= WEIGHT_SHRINK:
                continue
            s0, s1 = int(rows["step"].iloc[0]), int(rows["step"].iloc[-1])
            findings.append(make_finding(
                "weight_decay_dominates", "warning", name, (s0, s1),
                f"{name}: weight decay {group.get('weight_decay'):g} {_decay_words(share, rows['decoupled'].iloc[0])} "
                f"(median of the last {len(tail)} captures; threshold {DECAY_SHARE:g}) and the weight norm shrank to "
                f"{shrink:.2f}x over steps {s0}-{s1}.",
                "Lower weight_decay (AdamW: around 1e-2 to 1e-1 with lr 1e-3; SGD: 1e-4 to 5e-4), or exclude "
                "biases and norm layers from decay with a second param group.",
                {"decay_share": share, "weight_norm_ratio": shrink, "weight_decay": group.get("weight_decay"),
                 "decoupled": bool(rows["decoupled"].iloc[0]), "threshold": DECAY_SHARE},
                "Loshchilov & Hutter 2019, Decoupled Weight Decay Regularization"))
    return findings or _penalty_in_loss(run)


def _penalty_in_loss(run) -> list[Finding]:
    """The same cause with no weight_decay in the optimizer: a penalty added to the loss by hand,
    read from its effect on the gradient (`gradients.penalty_in_gradient`)."""
    pen = penalty_in_gradient(run)
    if pen is None:
        return []
    c, shrink = pen["ratio"], pen["shrink"]
    s0, s1 = pen["steps"]
    return [make_finding(
        "weight_decay_dominates", "warning", pen["layers"][0], (s0, s1),
        f"The gradient of every weight matrix ({_names(pen['layers'], 4)}) is {c:.3g}x the weight itself at each of "
        f"{pen['captures']} captures (one ratio across layers and steps; quantiles within {pen['fit']:.0%} of the "
        f"gradient's std) while the weights shrink to {max(shrink.values()):.2f}x or less over steps {s0}-{s1}: a "
        f"penalty on the weights in the loss (an L2 term lambda*sum(w^2) gives 2*lambda = {c:.3g}) is the whole "
        "gradient, and the data's signal is lost under it.",
        "Scale the penalty down (lambda around 1e-4 for a sum of squares over the parameters, divided by the "
        "number of samples if the data loss is a mean), or drop it and use the optimizer's weight_decay "
        "(AdamW: 1e-2; SGD: 1e-4 to 5e-4).",
        {"gradient_to_weight": c, "weight_norm_ratio": min(shrink.values()), "shrink": shrink,
         "fit": pen["fit"], "captures": pen["captures"], "weight_decay": 0, "penalty_in_loss": True},
        "Krogh & Hertz 1992, A Simple Weight Decay Can Improve Generalization (the L2 term's gradient "
        "2*lambda*w); Loshchilov & Hutter 2019")]


def _batch_chart(run, finding: Finding) -> go.Figure:
    return charts.scalar_lines(run, ["batchnorm_batch_size"], "batch size BatchNorm normalises over")


@rule("BatchNorm in train mode on batches under 8.",
      severities=("warning",), evidence=_batch_chart,
      explains=("grad_norm_spikes", "output_vs_label"))
def rule_batchnorm_small_batch(run) -> list[Finding]:
    """BatchNorm normalising over tiny batches: the median batch a BatchNorm layer in train
    mode saw at the captures (`batchnorm_batch_size`) below 8 (warning): the batch
    statistics are too noisy and train/eval behaviour diverges. Reference: Ioffe & Szegedy
    2015; Wu & He 2018, "Group Normalization" (BN's error rises quickly below 8-16 per GPU)."""
    s = scalar(run, "batchnorm_batch_size")
    if s.empty:
        return []
    med = float(s["value"].median())
    if med >= BN_MIN_BATCH:
        return []
    types = module_types(run)
    bns = [n for n, t in types.items() if str(t).startswith("BatchNorm")]
    small = s[s["value"] < BN_MIN_BATCH]
    return [make_finding(
        "batchnorm_small_batch", "warning", bns[0] if bns else None,
        (small["step"].min(), small["step"].max()),
        f"BatchNorm layers ({_names(bns, 3) or 'BatchNorm'}) train on batches of {med:g} (median over "
        f"{len(s)} captures; threshold {BN_MIN_BATCH}): the batch statistics are noisy.",
        "Use a larger batch (accumulating gradients does not help BatchNorm), or replace BatchNorm by "
        "GroupNorm/LayerNorm, or freeze it (module.eval() for the BatchNorm layers, with pretrained stats).",
        {"median_batch": med, "min_batch": float(s["value"].min()), "captures": len(s),
         "layers": bns, "threshold": BN_MIN_BATCH},
        "Ioffe & Szegedy 2015; Wu & He 2018, Group Normalization")]


@rule("Your own validation ran under no_grad with dropout/BatchNorm in train mode.",
      severities=("warning",), evidence=_loss_chart,
      explains=("overfitting",))
def rule_eval_in_train_mode(run) -> list[Finding]:
    """The user's own validation run with dropout / BatchNorm in train mode: a forward
    under torch.no_grad() while such modules were in train mode
    (`no_grad_forward_train_mode`; `run.evaluate` sets eval mode itself). Any occurrence:
    warning (dropout makes the metrics noisy and pessimistic; BatchNorm uses batch
    statistics and updates its running stats with validation data). Reference: PyTorch
    docs, nn.Module.eval ("dropout, BatchNorm ... behave differently in eval mode")."""
    s = scalar(run, "no_grad_forward_train_mode")
    s = s[s["value"] > 0] if not s.empty else s
    if s.empty:
        return []
    names = list(run.manifest.get("no_grad_forward_train_mode") or [])
    s0, s1 = int(s["step"].min()), int(s["step"].max())
    return [make_finding(
        "eval_in_train_mode", "warning", names[0] if names else None, (s0, s1),
        f"At {len(s)} step(s) (steps {s0}-{s1}) the model ran under no_grad with dropout/BatchNorm modules in "
        f"train mode ({_names(names, 4) or 'unnamed'}): validation with dropout on, or BatchNorm on batch statistics.",
        "Call model.eval() before validating and model.train() after (or use run.evaluate); if the "
        "train-mode forward is deliberate (Monte-Carlo dropout, an EMA teacher), ignore this.",
        {"steps": s["step"].astype(int).tolist()[:50], "occurrences": len(s), "modules": names},
        "PyTorch docs: torch.nn.Module.eval")]


# Steps with every dropout/BatchNorm module in eval mode, after steps in train mode, that make
# `trained_in_eval_mode` a warning: at least this many, and this share of the run's steps.
EVAL_STEPS_MIN = 10
EVAL_STEPS_MIN_FRAC = 0.1


def _eval_mode_segments(run) -> pd.DataFrame:
    """The recorded share of dropout/BatchNorm modules in eval mode, as segments: `step`
    (first), `steps` (how many optimizer steps it held, to the run's last recorded step),
    `value`."""
    s = scalar(run, schema.STEP_EVAL_MODE).sort_values("step")
    if s.empty:
        return s
    # the run's last optimizer step: the learning rate is recorded at each
    ends = [scalar(run, name) for name in ("lr", "lr/group0", "loss")]
    last = max([int(s["step"].max()), *(int(e["step"].max()) for e in ends if not e.empty)])
    ends = np.append(s["step"].to_numpy()[1:], last + 1)
    return s.assign(steps=ends - s["step"].to_numpy()).reset_index(drop=True)


def _dropout_never_trained(run, seg: pd.DataFrame, names: list[str]) -> list[str]:
    """The dropout modules (p > 0) in eval mode at every optimizer step: the share in eval mode
    never changed from the first step (`step_eval_mode` is written when it changes), so the
    modules the manifest notes at that step held eval mode all run. BatchNorm is left out:
    BatchNorm alone held in eval mode while fine-tuning is deliberate (frozen statistics,
    detectron2's FrozenBatchNorm2d); dropout kept off for the whole of training is not (p = 0
    turns it off, and is not recorded)."""
    noted = run.manifest.get(schema.STEP_EVAL_MODE) or {}
    if seg.empty or noted.get("step") != int(seg["step"].iloc[0]) or not (seg["value"] == seg["value"].iloc[0]).all():
        return []
    types = module_types(run)
    return [n for n in names if "Dropout" in str(types.get(n, ""))]


def _eval_mode_chart(run, finding: Finding) -> go.Figure:
    fig = charts.scalar_lines(run, [schema.STEP_EVAL_MODE], "share of dropout/BatchNorm modules in eval mode at the "
                                                            "optimizer steps (1: model.eval())")
    for trace in fig.data:
        trace.line.shape = "hv"  # recorded when it changes: it holds until the next point
    return fig


@rule("Optimizer steps taken with the model's dropout/BatchNorm in eval mode: model.train() not called again after "
      "validation, or dropout never in train mode (info for BatchNorm alone held in eval: frozen statistics).",
      severities=("warning", "info"),
      evidence=_eval_mode_chart)
def rule_trained_in_eval_mode(run) -> list[Finding]:
    """Training steps with the model in eval mode: at the optimizer steps every dropout /
    BatchNorm module (p > 0) is in eval mode (`step_eval_mode` = 1) for ≥ 10 steps and ≥ 10%
    of the run, after steps in train mode: the usual `model.eval()` for validation with no
    `model.train()` after it, so dropout is off and BatchNorm normalises with running
    statistics it no longer updates. A warning. Also a warning: a dropout module (p > 0) in
    eval mode at every one of ≥ 10 optimizer steps (`_dropout_never_trained`; a model.eval()
    after loading a checkpoint, or from_pretrained, never undone): dropout built in and never
    used is not deliberate (p = 0 is how one turns it off). BatchNorm alone in eval mode from
    the start, or only some modules in eval mode part of the run, is info (frozen BatchNorm
    statistics for fine-tuning are common practice: detectron2's FrozenBatchNorm2d).
    Reference: PyTorch docs, torch.nn.Module.train / eval ("This has an effect only on certain
    modules ... Dropout, BatchNorm"); Hugging Face docs, PreTrainedModel.from_pretrained ("The
    model is set in evaluation mode by default"); detectron2, layers.FrozenBatchNorm2d."""
    seg = _eval_mode_segments(run)
    if seg.empty or not (seg["value"] > 0).any():
        return []
    full = seg["value"] >= 1 - 1e-9
    n_full, n_some, total = int(seg.loc[full, "steps"].sum()), int(seg.loc[seg["value"] > 0, "steps"].sum()), \
        int(seg["steps"].sum())
    first_full = int(seg.loc[full, "step"].min()) if full.any() else None
    trained_before = first_full is not None and bool((seg.loc[seg["step"] < first_full, "value"] < 1).any())
    noted = run.manifest.get(schema.STEP_EVAL_MODE) or {}
    names = list(noted.get("modules") or [])
    dropout = _dropout_never_trained(run, seg, names)
    loud = (trained_before and n_full >= max(EVAL_STEPS_MIN, EVAL_STEPS_MIN_FRAC * total)) or (
        bool(dropout) and total >= EVAL_STEPS_MIN)
    s0 = first_full if first_full is not None else int(seg.loc[seg["value"] > 0, "step"].min())
    s1 = int(seg["step"].iloc[-1] + seg["steps"].iloc[-1] - 1)
    if dropout and not trained_before:
        msg = (f"Every one of the run's {total} optimizer steps was taken with dropout ({_names(dropout, 4)}) in eval "
               "mode: dropout with p > 0 never ran in train mode, so the model trains without the regularisation it "
               "was built with (a model.eval() after loading a checkpoint, never undone?)"
               + (f"; the BatchNorm layers too ({_names(bn, 4)})." if (bn := [n for n in names if n not in dropout])
                  else "."))
    elif trained_before:
        msg = (f"From step {first_full} on, {n_full} of the run's {total} optimizer steps ({n_full / total:.0%}) were "
               f"taken with every dropout/BatchNorm module in eval mode ({_names(names, 4) or 'unnamed'}), after "
               "steps in train mode: model.eval() (for validation?) was not undone by model.train(), so dropout is "
               "off and BatchNorm no longer learns its statistics.")
    elif n_full:
        msg = (f"{n_full} of {total} optimizer steps were taken with every dropout/BatchNorm module in eval mode "
               f"({_names(names, 4) or 'unnamed'}), from the start: BatchNorm on running statistics (frozen "
               "BatchNorm for fine-tuning, if meant).")
    else:
        msg = (f"{n_some} of {total} optimizer steps were taken with some dropout/BatchNorm modules in eval mode "
               f"({_names(names, 4) or 'unnamed'}): frozen BatchNorm or dropout turned off, if meant.")
    return [make_finding(
        "trained_in_eval_mode", "warning" if loud else "info", (dropout or names or [None])[0], (s0, s1), msg,
        "Call model.train() at the start of each training epoch (after validating with model.eval()); a model "
        "loaded in eval mode (from_pretrained) needs it too. If eval mode is meant (frozen BatchNorm), ignore this.",
        {"steps_all_eval": n_full, "steps_some_eval": n_some, "steps": total, "after_train_mode": trained_before,
         "modules": names, "dropout_never_trained": dropout, "of": noted.get("of"), "threshold_steps": EVAL_STEPS_MIN,
         "threshold_frac": EVAL_STEPS_MIN_FRAC},
        "PyTorch docs: torch.nn.Module.train, torch.nn.Module.eval")]
