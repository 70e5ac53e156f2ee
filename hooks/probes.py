"""Probes of what the loss is given, at capture steps: do the outputs look like
probabilities or log-probabilities, and over which dimension; do the labels look like
class ids. A handful of numbers per capture (scalars named `probe/{split}/{field}`,
fields in `diagnostics.schema.PROBE_FIELDS`), read by the data and loss rules of
`diagnostics.health.data`.

Costs one reduction of the (batch × classes) outputs per dimension and one transfer of
a few floats, at capture steps only; no RNG, nothing written to the observed tensors.
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
    fields = dict(zip(schema.PROBE_FIELDS, [*values, float(columns)]))
    return {f"{schema.PROBE_PREFIX}{split}/{k}": v for k, v in fields.items()}
