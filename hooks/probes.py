"""Probes of what the loss is given, at capture steps: do the outputs look like
probabilities or log-probabilities, and over which dimension; do the labels look like
class ids; do the two shapes broadcast into a third. A handful of numbers per capture
(scalars named `probe/{split}/{field}`, fields in `diagnostics.schema.PROBE_FIELDS`), read
by the data and loss rules of `diagnostics.health.data` and `diagnostics.health.loss`.

Costs one reduction of the (batch × classes) outputs per dimension and one transfer of
a few floats, at capture steps only; the shapes are read on the host, free
(`loss_input_shapes` gives the manifest's record of them); no RNG, nothing written to the
observed tensors.
"""

from __future__ import annotations

import math

import torch

from diagnostics import schema


@torch.no_grad()
def _sum_deviations(x: torch.Tensor) -> list[torch.Tensor]:
    """x: (N, C, rest) floats. Mean |sum - 1| of the values and mean |logsumexp| over the
    class dimension (1) and over the batch dimension (0): 0 when the values are
    probabilities (log-probabilities) normalised over that dimension."""
    return [
        (x.sum(dim=1) - 1).abs().mean(),
        (x.sum(dim=0) - 1).abs().mean(),
        torch.logsumexp(x, dim=1).abs().mean(),
        torch.logsumexp(x, dim=0).abs().mean(),
    ]


def broadcast_shape(outputs: torch.Tensor, labels: torch.Tensor) -> list[int] | None:
    """The shape elementwise arithmetic on `outputs` and `labels` gives (None: they do not
    broadcast, as class ids (N,) against logits (N, C) need not)."""
    try:
        return list(torch.broadcast_shapes(outputs.shape, labels.shape))
    except RuntimeError:
        return None


def outputs_expanded(outputs: torch.Tensor, labels: torch.Tensor) -> float:
    """How elementwise arithmetic (MSELoss, L1Loss, BCELoss...) broadcasts `outputs` against
    `labels`: 2.0 into a shape that is neither of theirs ((N, 1) outputs against (N,) targets
    give (N, N): every output against every target), 1.0 the outputs alone expanded to the
    labels' shape ((N, 1) against (N, 4): each output against 4 targets), 0.0 otherwise
    (same shapes; a target broadcast along the outputs, as one target for several
    predictions; shapes that do not broadcast, as class ids against logits). torch's own
    warning fires on any size difference; this counts only the outputs being expanded
    (pytorch/pytorch#18349's review: "warn only if the input is going to be expanded")."""
    shape = broadcast_shape(outputs, labels)
    if shape is None or shape == list(outputs.shape):
        return 0.0
    return 1.0 if shape == list(labels.shape) else 2.0


def loss_input_shapes(outputs: torch.Tensor, labels: torch.Tensor, step: int) -> dict:
    """The manifest's `schema.LOSS_INPUT_SHAPES` for one batch: what the loss was given.

    Example::

        loss_input_shapes(torch.zeros(8, 1), torch.zeros(8), step=0)["broadcast_to"]  # [8, 8]
    """
    return {"outputs": list(outputs.shape), "labels": list(labels.shape),
            "broadcast_to": broadcast_shape(outputs, labels), "broadcast": outputs_expanded(outputs, labels),
            "step": int(step)}


@torch.no_grad()
def target_sum_probe(outputs: torch.Tensor, labels: torch.Tensor, split: str = "train") -> dict[str, float]:
    """`probe/{split}/target_sum_dev`: mean |sum over dim 1 - 1| of float targets shaped like
    the (N, C, ...) outputs, which CrossEntropyLoss reads as class probabilities; {} for other
    targets (class ids, regression values, one output column). One reduction, one float read.

    Example::

        target_sum_probe(logits, torch.tensor([[1., 1., 0.]]))  # {"probe/train/target_sum_dev": 1.0}
    """
    if not (labels.is_floating_point() and labels.shape == outputs.shape and labels.ndim >= 2
            and labels.shape[1] > 1):
        return {}
    dev = (labels.detach().float().sum(dim=1) - 1).abs().mean()
    return {f"{schema.PROBE_PREFIX}{split}/{schema.TARGET_SUM_DEV}": float(dev)}


@torch.no_grad()
def loss_input_probe(outputs: torch.Tensor, labels: torch.Tensor, split: str = "train") -> dict[str, float]:
    """The probe's scalars for one batch of (outputs, labels), keyed `probe/{split}/{field}`.

    Example::

        loss_input_probe(torch.softmax(logits, 0), y)["probe/train/prob_sum_dev_batch"]  # ~0: softmax over dim 0
    """
    out = outputs.detach()
    lab = labels.detach()
    nan = torch.tensor(math.nan, device=out.device)
    columns = int(out[0].numel()) if out.ndim >= 1 and out.shape[0] > 0 else 0
    if out.is_floating_point() and out.ndim >= 2 and out.shape[0] > 1 and out.shape[1] > 1:
        devs = _sum_deviations(out.float().reshape(out.shape[0], out.shape[1], -1))
    else:
        devs = [nan] * 4
    flat = lab.reshape(-1)
    if flat.numel() and (lab.is_floating_point() or not lab.is_complex()):
        as_float = flat.float()
        integer_frac = (as_float == as_float.round()).float().mean() if lab.is_floating_point() else torch.ones(
            (), device=lab.device)
        distinct = torch.tensor(float(torch.unique(flat).numel()), device=lab.device)
    else:
        integer_frac, distinct = nan, nan
    values = torch.stack([d.to(out.device, torch.float32) for d in
                          [*devs, integer_frac.to(out.device), distinct.to(out.device)]]).cpu().tolist()
    broadcast = outputs_expanded(out, lab)
    fields = dict(zip(schema.PROBE_FIELDS, [*values, float(columns), broadcast]))
    return {f"{schema.PROBE_PREFIX}{split}/{k}": v for k, v in fields.items()}
