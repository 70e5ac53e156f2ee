"""Health rules from the eval-mode probes: a model that behaves differently from what eval mode
promises, and padding the loss counts.

`run.evaluate` (once per split, on its first batch) and the run's close (on the first training
batch) run the model in eval mode on a few samples (hooks/probes.py, `invariance_probe`):
twice on the same samples, and on half of them alone. In eval mode a model is a function of
each sample: dropout is off and BatchNorm uses its running statistics. So

- two forwards that differ mean something still draws random numbers in eval mode. The probe's
  third forward names the calls: `F.dropout(x, p)` (its `training` argument defaults to True, so
  `model.eval()` never reaches it), attention given a dropout probability whatever the mode
  (`train_eval_mismatch`, warning); a sampler alone (a VAE's reparameterisation, noise
  injection) is often deliberate: info.
- a sample whose output changes with the other samples of its batch means samples mix inside
  the model: a `.view`/`.reshape` across the batch axis where a `.transpose` was meant (a
  (batch, seq, feature) tensor viewed as (seq, batch, feature)), attention or a sum over dim 0
  (`batch_mixing`, warning). The model then learns from, and is judged on, mixtures of samples:
  "labels unlearnable" is its symptom, not the data's fault.

`loss_on_padding` reads the loss-input probe's sequence labels (their most common value and its
share), the first training batch's last input tokens (the padding token, if sequences end in
one) and the loss's `ignore_index` (the manifest's `loss_ignore_index`).

`objective_sign` reads a logged reward (or return): training that drives it down says the loss
rewards the opposite of the goal (its sign).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from diagnostics import schema
from diagnostics.figures import empty_figure
from diagnostics.health.common import CE_LOSSES, Finding, make_finding, scalar
from diagnostics.health.problems import NOT_LEARNING
from diagnostics.health.registry import rule

# Largest per-sample relative difference between two eval-mode forwards of the same samples
# above which the model counts as random in eval mode (float32 repeats bit for bit on CPU and
# within ~1e-6 on GPU kernels; a dropout mask changes outputs by O(p))
RANDOM_DEV_MIN = 1e-3
# ...and between samples run alone and inside their batch above which samples mix: batched
# float32 kernels differ by ~1e-6, bfloat16 by ~1e-2 at most; a view across the batch gives O(1)
BATCH_DEV_MIN = 0.05
# Padding counted in the loss: the most common label value takes at least this share of the label
# positions, and the inputs' sequences end in that same token in at least this share of the batch
PAD_LABEL_SHARE_MIN = 0.3
PAD_END_SHARE_MIN = 0.5
REFERENCE_MODE = "PyTorch docs: torch.nn.functional.dropout (training=True by default) and nn.Module.eval"
REFERENCE_BATCH = ("PyTorch docs: torch.Tensor.view (keeps memory order; transpose/permute reorder axes); "
                   "a model in eval mode computes each sample on its own")
REFERENCE_PAD = ("PyTorch docs: nn.CrossEntropyLoss(ignore_index=...); Hugging Face: padded label positions "
                 "set to -100")


def probe_values(run, field: str) -> pd.DataFrame:
    """`split`, `step`, `value` of the eval-mode probe's `field`, one row per probed split."""
    rows = []
    for split in (run.manifest.get(schema.EVAL_PROBES) or {}):
        s = scalar(run, f"{schema.PROBE_PREFIX}{split}/{field}")
        if not s.empty and s["value"].notna().any():
            last = s.dropna(subset=["value"]).sort_values("step").iloc[-1]
            rows.append({"split": split, "step": int(last["step"]), "value": float(last["value"])})
    return pd.DataFrame(rows, columns=["split", "step", "value"])


def _probe_chart(field: str, threshold: float, title: str):
    def chart(run, finding: Finding) -> go.Figure:
        v = probe_values(run, field)
        if v.empty:
            return empty_figure("no eval-mode probe recorded")
        fig = go.Figure(go.Bar(x=v["split"], y=v["value"], name=field))
        fig.add_hline(y=threshold, line_dash="dash", annotation_text=f"threshold {threshold:g}")
        fig.update_layout(title=title, xaxis_title="split probed", yaxis_title="largest relative difference",
                          yaxis_type="log", height=300, margin=dict(l=40, r=20, t=50, b=40))
        return fig
    return chart


@rule("The model is random in eval mode: two eval-mode forwards of the same samples differ (F.dropout without "
      "training=self.training, attention dropout passed whatever the mode).",
      severities=("warning", "info"),
      evidence=_probe_chart("eval_random_dev", RANDOM_DEV_MIN, "eval mode: the same samples twice"),
      explains=("overfitting",))
def rule_train_eval_mismatch(run) -> list[Finding]:
    """Two eval-mode forwards of the same samples differ by more than `RANDOM_DEV_MIN` (relative,
    per sample). Warning when the probe's third forward saw dropout told it trains (F.dropout,
    attention's dropout_p, rrelu); info when only samplers drew (a VAE's sampling may be meant).
    Reference: PyTorch docs, F.dropout (training defaults to True)."""
    v = probe_values(run, "eval_random_dev")
    v = v[v["value"] > RANDOM_DEV_MIN]
    if v.empty:
        return []
    probes = run.manifest.get(schema.EVAL_PROBES) or {}
    dropout = probe_values(run, "eval_dropout_calls")
    dropped = dropout[dropout["value"] > 0]
    sites = [s for split in v["split"] for s in probes.get(split, {}).get("sites", [])]
    drop_sites = [s for s in sites if "(p=" in s]  # dropout's sites; a sampler's is "randn in fc"
    worst = v.sort_values("value").iloc[-1]
    where = "; ".join(dict.fromkeys(sites)) or "no random call seen (a nondeterministic kernel?)"
    splits = ", ".join(v["split"])
    if not dropped.empty:
        return [make_finding(
            "train_eval_mismatch", "warning", _module_of(drop_sites), (int(worst["step"]), int(worst["step"])),
            f"In eval mode the model still drops units: two forwards of the same {splits} samples differ by "
            f"{worst['value']:.0%} (per sample, relative), from {where}. Dropout called as a function ignores "
            "model.eval(), so evaluation, inference and the reported metrics are noisy and pessimistic.",
            "Pass the module's mode: F.dropout(x, p, training=self.training) (and dropout_p=self.dropout if "
            "self.training else 0.0 for scaled_dot_product_attention), or use an nn.Dropout module.",
            {"splits": v["split"].tolist(), "difference": v["value"].tolist(), "sites": sites},
            REFERENCE_MODE)]
    return [make_finding(
        "train_eval_mismatch", "info", _module_of(sites), (int(worst["step"]), int(worst["step"])),
        f"The model is random in eval mode: two forwards of the same {splits} samples differ by {worst['value']:.0%} "
        f"(from {where}). Deliberate for sampling models (a VAE's reparameterisation); otherwise evaluation "
        "metrics vary between runs.",
        "If the randomness should stop in eval mode, gate it with `if self.training:` (noise layers, sampling).",
        {"splits": v["split"].tolist(), "difference": v["value"].tolist(), "sites": sites}, REFERENCE_MODE)]


def _module_of(sites: list[str]) -> str | None:
    """The module named by the first site ("dropout(p=0.5) in fc" -> "fc")."""
    return sites[0].rsplit(" in ", 1)[-1] if sites else None


@rule("Samples mix inside the batch: in eval mode a sample's output changes with the other samples of its batch "
      "(a .view where a .transpose was meant, attention or a sum over the batch axis).",
      severities=("warning",),
      evidence=_probe_chart("eval_batch_dev", BATCH_DEV_MIN, "eval mode: samples alone vs inside their batch"),
      explains=(*NOT_LEARNING, "label_noise", "overfitting"))
def rule_batch_mixing(run) -> list[Finding]:
    """In eval mode (BatchNorm on running statistics, dropout off), the first half of the probed
    samples run alone give outputs that differ from the same samples inside the whole batch by
    more than `BATCH_DEV_MIN` (relative, per sample): samples mix (warning). Reference: PyTorch
    docs, Tensor.view vs transpose; a model in eval mode computes each sample on its own."""
    v = probe_values(run, "eval_batch_dev")
    v = v[v["value"] > BATCH_DEV_MIN]
    if v.empty:
        return []
    worst = v.sort_values("value").iloc[-1]
    samples = probe_values(run, "eval_probe_samples")
    n = int(samples["value"].max()) if not samples.empty else 0
    return [make_finding(
        "batch_mixing", "warning", None, (int(worst["step"]), int(worst["step"])),
        f"Samples mix inside the batch: in eval mode, {n // 2} {worst['split']} samples run alone give outputs "
        f"{worst['value']:.0%} different (per sample, relative) from the same samples run inside a batch of {n}. "
        "Each sample's prediction depends on which other samples share its batch, so the model learns from "
        "mixtures of samples and the labels look unlearnable.",
        "Look for a .view/.reshape that moves the batch axis (use .transpose/.permute, or batch_first=True for "
        "RNNs), attention or a softmax/sum over dim 0, or a tensor built with the batch as its sequence axis; "
        "if samples are meant to interact (graph nodes, a set model), ignore this.",
        {"splits": v["split"].tolist(), "difference": v["value"].tolist(), "samples": n}, REFERENCE_BATCH)]


def _mean_scalar(run, name: str) -> tuple[float, int] | None:
    s = scalar(run, f"{schema.PROBE_PREFIX}{name}").dropna(subset=["value"])
    return (float(s["value"].mean()), int(s["step"].min())) if not s.empty else None


def _pad_chart(run, finding: Finding) -> go.Figure:
    s = scalar(run, f"{schema.PROBE_PREFIX}train/label_top_share").sort_values("step")
    if s.empty:
        return empty_figure("no sequence labels recorded")
    fig = go.Figure(go.Scatter(x=s["step"], y=s["value"], mode="lines+markers", name="most common label's share"))
    fig.add_hline(y=PAD_LABEL_SHARE_MIN, line_dash="dash", annotation_text=f"threshold {PAD_LABEL_SHARE_MIN:.0%}")
    fig.update_layout(title="share of the label positions holding the padding token", xaxis_title="step",
                      yaxis_range=[0, 1.05], height=300, margin=dict(l=40, r=20, t=50, b=40))
    return fig


@rule("Padding counted in the loss: the sequences' padding token is a large share of the labels and the loss does "
      "not ignore it (no ignore_index).",
      severities=("warning", "info"), evidence=_pad_chart,
      explains=("output_vs_label", "label_noise"))
def rule_loss_on_padding(run) -> list[Finding]:
    """Sequence-shaped class labels whose most common value takes at least `PAD_LABEL_SHARE_MIN`
    of the label positions (mean over the train captures), that value being the token the inputs'
    sequences end in (at least `PAD_END_SHARE_MIN` of the first batch), with a cross-entropy /
    NLL loss whose `ignore_index` differs: warning; info when the loss is a function (its
    ignore_index unknown). Reference: nn.CrossEntropyLoss(ignore_index=); HF's -100 labels."""
    top, share = _mean_scalar(run, "train/label_top_value"), _mean_scalar(run, "train/label_top_share")
    end, end_share = _mean_scalar(run, "train/input_end_value"), _mean_scalar(run, "train/input_end_share")
    loss_fn = run.manifest.get("loss_fn")
    if None in (top, share, end, end_share) or loss_fn not in CE_LOSSES:
        return []
    value = top[0]
    if share[0] < PAD_LABEL_SHARE_MIN or end_share[0] < PAD_END_SHARE_MIN or not math.isclose(value, end[0]):
        return []
    ignore = run.manifest.get("loss_ignore_index")
    if ignore is not None and math.isclose(float(ignore), value):
        return []
    known = ignore is not None
    return [make_finding(
        "loss_on_padding", "warning" if known else "info", None, (share[1], share[1]),
        f"The loss counts padding: token {value:g}, which ends {end_share[0]:.0%} of the input sequences, fills "
        f"{share[0]:.0%} of the label positions, and {loss_fn} "
        + (f"ignores index {ignore} instead." if known else "was given no ignore_index that the run could see.")
        + " Predicting padding after padding is easy, so the loss falls while the real tokens are barely learned, "
        "and the mean loss is diluted by the padded share.",
        f"Pass ignore_index={value:g} to the loss (nn.CrossEntropyLoss(ignore_index={value:g})), or set the labels "
        "at padded positions to -100 (the Hugging Face convention, CrossEntropyLoss's default ignore_index).",
        {"pad_value": value, "label_share": share[0], "input_end_share": end_share[0], "ignore_index": ignore,
         "loss_fn": loss_fn}, REFERENCE_PAD)]


# ---------------------------------------------------------------------------------
# The objective's sign: a logged reward (or return) that training drives down

REWARD_MIN_POINTS = 20
REWARD_FALL_SE = 4.0  # the fall, first quarter's mean to last quarter's, in standard errors of that difference
REWARD_FALL_SHARE = 0.5  # ... and at least half the first quarter's level (|mean|; its std when the mean is ~0)


def _reward_scalars(run) -> list[str]:
    try:
        names = run.scalars()["name"].unique().tolist()
    except Exception:
        return []
    return [n for n in names if not n.startswith(schema.PROBE_PREFIX) and not n.startswith("val")
            and any(w in n.rsplit("/", 1)[-1].lower() for w in ("reward", "return"))]


def _reward_chart(run, finding: Finding) -> go.Figure:
    s = scalar(run, finding.evidence.get("scalar", "reward")).sort_values("step")
    fig = go.Figure(go.Scatter(x=s["step"], y=s["value"], mode="lines", name=finding.evidence.get("scalar")))
    fig.update_layout(title="the logged reward over training", xaxis_title="step")
    return fig


@rule("A logged reward or return that training drives down: the policy learns to avoid what is rewarded (the "
      "loss written as log_prob * reward, its minus sign dropped).",
      severities=("warning",), evidence=_reward_chart, explains=("loss_vs_baseline", "output_vs_label"))
def rule_objective_sign(run) -> list[Finding]:
    """A scalar whose name holds "reward" or "return" (not a probe, not validation), logged at
    ≥ 20 steps, whose last quarter's mean lies below its first quarter's by more than 4 standard
    errors of the difference and by at least half the first quarter's |mean| (its std when the
    mean is ~0): the optimizer minimises the loss it is given, so a reward that falls steadily
    under training says the loss rewards the opposite of the goal. A healthy policy gradient
    raises its reward; a noisy one does not fall by 4 standard errors. Reference: Williams 1992
    (REINFORCE ascends E[R]: the loss to minimise is −log π(a|s)·R); pytorch/examples
    reinforcement_learning/reinforce.py (`-log_prob * R`)."""
    out = []
    for name in _reward_scalars(run):
        s = scalar(run, name).sort_values("step")
        v = s["value"].astype(float).to_numpy()
        v = v[np.isfinite(v)]
        q = len(v) // 4
        if len(v) < REWARD_MIN_POINTS:
            continue
        first, last = v[:q], v[-q:]
        fall = float(first.mean() - last.mean())
        se = math.sqrt(first.var(ddof=1) / q + last.var(ddof=1) / q)
        level = abs(float(first.mean())) or float(first.std())
        if not (fall > REWARD_FALL_SE * se and fall >= REWARD_FALL_SHARE * level and fall > 0):
            continue
        steps = (int(s["step"].min()), int(s["step"].max()))
        out.append(make_finding(
            "objective_sign", "warning", None, steps,
            f"The logged {name} fell from {first.mean():.3g} (first quarter of the run) to {last.mean():.3g} (last "
            f"quarter), {fall / se if se else math.inf:.1f} standard errors: training pushes it down. The optimizer "
            "minimises the loss, so this loss rewards the opposite of the goal.",
            "Check the loss's sign: a policy gradient minimises -(log_prob * advantage).mean(); a reward to maximise "
            "enters the loss negated (or use the optimizer's maximize=True).",
            {"scalar": name, "first_quarter_mean": float(first.mean()), "last_quarter_mean": float(last.mean()),
             "fall_in_se": fall / se if se else None, "min_se": REWARD_FALL_SE, "min_share": REWARD_FALL_SHARE},
            "Williams 1992 (REINFORCE); pytorch/examples reinforcement_learning/reinforce.py"))
    return out


# A language model's targets against its input tokens (hooks/probes.py, `target_alignment_probe`)
ALIGNED_MIN = 0.5  # share of positions whose target is the next input token, read in one layout
MISALIGNED_RATIO = 0.5  # ... and the inputs' own layout at most this share of it


@rule("A language model's targets flattened in another order than its outputs: the targets are the next input "
      "tokens when read time-major (or transposed), not in the outputs' order, so each position is scored against "
      "another sample's token.",
      severities=("warning",), explains=NOT_LEARNING + ("loss_vs_baseline", "label_noise"))
def rule_target_misaligned(run) -> list[Finding]:
    """Integer (d0, d1) model inputs and targets of as many elements: at the capture steps, the
    share of positions whose target is the next input token, with the targets read in the
    inputs' layout (`target_next_same`) and transposed (`target_next_transposed`). Warning when
    the transposed reading finds the next token at ≥ 50% of the positions (mean over the
    captures) and the inputs' own layout at most half as often: the targets were flattened
    time-major (`y.t().reshape(-1)`, a seq-first script's habit) against batch-major logits
    (`logits.view(-1, V)`), or the other way round. A model that is no language model has
    neither reading near 1: quiet. Reference: PyTorch docs, torch.Tensor.view and
    torch.Tensor.reshape (row-major order); pytorch/examples word_language_model (seq-first
    batches, `output.view(-1, ntokens)` against `targets.view(-1)` of the same layout)."""
    same, transposed = _mean_scalar(run, "train/target_next_same"), _mean_scalar(run, "train/target_next_transposed")
    if same is None or transposed is None or transposed[0] < ALIGNED_MIN or same[0] > MISALIGNED_RATIO * transposed[0]:
        return []
    s = scalar(run, f"{schema.PROBE_PREFIX}train/target_next_transposed")
    return [make_finding(
        "target_misaligned", "warning", None, (int(s["step"].min()), int(s["step"].max())),
        f"The loss's targets are the next input token at {transposed[0]:.0%} of the positions when read transposed "
        f"(time-major against the inputs' batch-major order, or the reverse), but at only {same[0]:.0%} in the "
        "order the outputs are flattened: each output is scored against another sample's token at another time.",
        "Flatten the outputs and the targets the same way: logits.reshape(-1, V) with targets.reshape(-1) from the "
        "same (batch, time) layout; after switching to batch_first, drop the targets' .t() / transpose.",
        {"next_token_share_same": same[0], "next_token_share_transposed": transposed[0], "min_share": ALIGNED_MIN,
         "ratio": MISALIGNED_RATIO}, "PyTorch docs: torch.Tensor.view, torch.Tensor.reshape; pytorch/examples "
        "word_language_model")]
