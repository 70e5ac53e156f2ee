"""Per-sample records of a batch: the numbers training dynamics are built from.

One row per sample, columns `diagnostics.schema.RECORD_FIELDS`: label, prediction, loss,
confidence (probability given to the label), margin (label logit minus the largest
other logit, as in Pleiss et al. 2020, "Identifying Mislabeled Data using the Area Under
the Margin Ranking"), correct, residual. Outputs that are already probabilities (a model
ending in a softmax) are read as such, not passed through a second softmax. Computed on the batch's device, in float32,
without gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_NAN = float("nan")
PROB_SUM_TOL = 1e-3  # rows of non-negative outputs summing to 1 within this: probabilities, not logits


def as_logits(scores: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """(logits, whether `scores` were probabilities): a model that ends in a softmax gives
    (N, C) rows of non-negative values summing to 1; their log is a logit vector whose
    softmax is those probabilities again (a second softmax would flatten them: confidence
    0.18 where the model says 0.68). Other scores are returned as they are."""
    if scores.shape[1] > 1 and bool((scores >= 0).all()) and bool(((scores.sum(dim=1) - 1).abs() < PROB_SUM_TOL).all()):
        return scores.clamp_min(1e-12).log(), True
    return scores, False


@torch.no_grad()
def per_sample(outputs: torch.Tensor, labels: torch.Tensor, task: str) -> torch.Tensor:
    """(N, 7) float32 rows for a batch of model outputs and labels."""
    out = outputs.detach().float()
    n = out.shape[0]
    lab = labels.detach()
    if task == "classification":
        logits, _ = as_logits(out.reshape(n, -1))  # a softmax's output: its log (see `as_logits`)
        if logits.shape[1] == 1:  # one logit per sample (binary): as two-class logits
            logits = torch.cat([torch.zeros_like(logits), logits], dim=1)
        if lab.is_floating_point() and lab.shape == logits.shape:
            lab = lab.argmax(dim=1)  # one-hot or soft labels
        y = lab.reshape(n).long()
        valid = (y >= 0) & (y < logits.shape[1])  # ignore_index and padding get NaN rows
        y_safe = torch.where(valid, y, torch.zeros_like(y))
        log_probs = F.log_softmax(logits, dim=1)
        loss = -log_probs.gather(1, y_safe[:, None])[:, 0]
        label_logit = logits.gather(1, y_safe[:, None])[:, 0]
        others = logits.scatter(1, y_safe[:, None], float("-inf"))
        margin = label_logit - others.max(dim=1).values
        pred = logits.argmax(dim=1)
        rows = torch.stack([
            y.float(), pred.float(), loss, loss.neg().exp(), margin, (pred == y).float(),
            torch.full_like(loss, _NAN),
        ], dim=1)
        rows[:, 1:] = torch.where(valid[:, None], rows[:, 1:], _NAN)  # keep the raw label
        return rows
    pred = out.reshape(n, -1).mean(dim=1)
    y = lab.detach().float().reshape(n, -1).mean(dim=1)
    err = out.reshape(n, -1) - lab.detach().float().reshape(n, -1)
    nan = torch.full_like(pred, _NAN)
    return torch.stack([y, pred, err.pow(2).mean(dim=1), nan, nan, nan, pred - y], dim=1)
