"""Outputs with a position axis (tokens, pixels) and several labels per sample (issue #24).

Outputs `(N, C, *P)` or `(N, *P, C)` against integer labels `(N, *P)` are "position
outputs"; `(N, C)` outputs against `(N, C)` 0/1 targets (`BCEWithLogitsLoss`) are several
labels per sample, one position per label. `find_layout` tells which (None: one label per
sample, the per-sample path of hooks/records.py), `score` gives every position its label,
prediction, loss and confidence, and `aggregate` a sample's record over its counted positions
(a position whose label is the ignore_index is not counted): mean loss, accuracy, mean
confidence and margin, the most frequent label and prediction. `PositionRows` keeps the
counted positions for the `positions` table, up to a cap, whole samples in loader order.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hooks.records import PROB_SUM_TOL, per_sample
from hooks.tensors import first_tensor, infer_task

DEFAULT_IGNORE_INDEX = -100  # torch's CrossEntropyLoss and Hugging Face's labels
MAX_PROBS_CLASSES = 256      # a sample's mean probability vector is stored up to this many classes
_CHUNK = 1 << 22             # logits scored per chunk (a language model's (N, T, V) would double in memory)
_NAN = float("nan")


@dataclasses.dataclass(frozen=True)
class PositionOptions:
    """How position outputs are read: the label that counts nowhere, whether labels are
    shifted (a causal LM: position t's output against label t + 1), whether float targets
    are several labels per sample (None: from their values) and whether those outputs are
    sigmoid probabilities (BCELoss) rather than logits."""

    ignore_index: int = DEFAULT_IGNORE_INDEX
    shift_labels: bool = False
    multilabel: bool | None = None
    sigmoid_outputs: bool = False


def loss_options(loss_fn: object) -> PositionOptions:
    """The options a watched loss implies: its `ignore_index` (CrossEntropyLoss, NLLLoss),
    several labels for BCEWithLogitsLoss/BCELoss (BCELoss takes probabilities)."""
    ignore = getattr(loss_fn, "ignore_index", None)
    multilabel = None
    if isinstance(loss_fn, (nn.BCEWithLogitsLoss, nn.BCELoss)):
        multilabel = True
    elif isinstance(loss_fn, nn.Module) and loss_fn.__class__.__module__.startswith("torch.nn"):
        multilabel = False
    return PositionOptions(ignore_index=int(ignore) if isinstance(ignore, int) else DEFAULT_IGNORE_INDEX,
                           multilabel=multilabel, sigmoid_outputs=isinstance(loss_fn, nn.BCELoss))


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where the classes are: `kind` tokens (1-D positions), pixels (2-D or more) or labels
    (several per sample); `class_last`: outputs (N, *P, C), else (N, C, *P); `shape`: P."""

    kind: str
    class_last: bool
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return math.prod(self.shape)


def _shape(t: torch.Tensor) -> str:
    return "(" + ", ".join(map(str, t.shape)) + ")"


def _several_labels(labels: torch.Tensor, multilabel: bool | None) -> bool:
    if multilabel is not None:
        return multilabel
    binary = bool(((labels == 0) | (labels == 1)).all())
    return binary and bool((labels.sum(dim=1) != 1).any())  # one-hot rows: one label per sample


def find_layout(outputs: torch.Tensor, labels: torch.Tensor, multilabel: bool | None = None) -> Layout | None:
    """The layout of position outputs or several labels per sample; None for one label per
    sample. Integer labels (N, *P) whose shape fits neither (N, C, *P) nor (N, *P, C) raise
    a one-line ValueError."""
    if labels.is_floating_point():
        if outputs.ndim == 2 and outputs.shape[1] > 1 and labels.shape == outputs.shape and \
                _several_labels(labels, multilabel):
            return Layout("labels", True, (int(outputs.shape[1]),))
        return _binary_masks(outputs, labels, multilabel)
    return _integer_layout(outputs, labels)


def _binary_masks(outputs: torch.Tensor, labels: torch.Tensor, multilabel: bool | None) -> Layout | None:
    """One logit per position against 0/1 float targets (binary segmentation with
    BCEWithLogitsLoss): outputs (N, 1, *P), targets (N, 1, *P) or (N, *P)."""
    if multilabel is False or outputs.ndim < 3 or outputs.shape[1] != 1:
        return None
    positions = tuple(outputs.shape[2:])
    if tuple(labels.shape) not in (tuple(outputs.shape), (outputs.shape[0], *positions)):
        return None
    if multilabel is None and not bool(((labels == 0) | (labels == 1)).all()):
        return None
    return Layout("tokens" if len(positions) == 1 else "pixels", False, positions)


def _integer_layout(outputs: torch.Tensor, labels: torch.Tensor) -> Layout | None:
    if labels.ndim < 2 or math.prod(labels.shape[1:]) <= 1:
        return None
    positions = tuple(labels.shape[1:])
    fits = outputs.ndim == labels.ndim + 1 and outputs.shape[0] == labels.shape[0]
    first = fits and tuple(outputs.shape[2:]) == positions
    last = fits and tuple(outputs.shape[1:-1]) == positions
    if not (first or last):
        p = ", ".join(map(str, positions))
        raise ValueError(f"evaluate: labels {_shape(labels)} fit neither (N, C, {p}) nor (N, {p}, C) outputs; the "
                         f"outputs are {_shape(outputs)} — give labels the outputs' position shape (a causal LM: "
                         "shift_labels=True, or logits[:, :-1] against labels[:, 1:])")
    class_last = last if not (first and last) else outputs.ndim == 3  # ambiguous: HF for 3-D, torch for images
    return Layout("tokens" if len(positions) == 1 else "pixels", class_last, positions)


def hard_labels(labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Integer labels; 0/1 float targets (binary masks) at 0.5, the ignore_index kept."""
    if not labels.is_floating_point():
        return labels.long()
    return torch.where(labels == ignore_index, ignore_index, (labels >= 0.5).long())


def shift(labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Labels (N, T) moved one to the left: position t holds label t + 1, the last none."""
    if labels.ndim != 2 or labels.is_floating_point():
        raise ValueError(f"evaluate: shift_labels=True needs integer labels (N, T) of a sequence; got "
                         f"{_shape(labels)} {labels.dtype}")
    return torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], ignore_index)], dim=1)


@dataclasses.dataclass
class Scored:
    """Every position of a batch, (N, P) each: label, prediction, loss, confidence (the
    prediction's probability), label_prob, margin (label logit minus the largest other),
    counted; `probs` (N, C): each sample's mean class probabilities over its counted
    positions (several labels: its sigmoid probabilities), None past MAX_PROBS_CLASSES."""

    label: torch.Tensor
    prediction: torch.Tensor
    loss: torch.Tensor
    confidence: torch.Tensor
    label_prob: torch.Tensor
    margin: torch.Tensor
    counted: torch.Tensor
    probs: torch.Tensor | None
    probabilities: bool = False  # the outputs were read as probabilities (a model ending in a softmax)


def _are_probabilities(scores: torch.Tensor) -> bool:
    """Rows of non-negative values summing to 1 (a model ending in a softmax; see `as_logits`)."""
    # a reduction, not a mask: a language model's (N, T, V) scores take no second copy
    return scores.shape[-1] > 1 and bool(scores.min() >= 0) and \
        bool(((scores.sum(dim=-1) - 1).abs() < PROB_SUM_TOL).all())


@torch.no_grad()
def score(outputs: torch.Tensor, labels: torch.Tensor, layout: Layout, ignore_index: int,
          sigmoid_outputs: bool = False) -> Scored:
    """Each position's numbers (see `Scored`), on the outputs' device, in float32."""
    if layout.kind == "labels":
        return _score_labels(outputs, labels, ignore_index, sigmoid_outputs)
    n = outputs.shape[0]
    out = outputs.detach().float()
    if layout.class_last:
        logits = out.reshape(n, -1, out.shape[-1])
    else:
        logits = out.reshape(n, out.shape[1], -1).transpose(1, 2)
    probabilities = _are_probabilities(logits)
    y = hard_labels(labels.detach().reshape(n, -1), ignore_index).to(logits.device)
    classes = max(logits.shape[-1], 2)
    counted = (y != ignore_index) & (y >= 0) & (y < classes)
    flat, y_flat = logits.reshape(-1, logits.shape[-1]), torch.where(counted, y, 0).reshape(-1)
    keep_probs = classes <= MAX_PROBS_CLASSES
    probs_sum = torch.zeros(n, classes, device=logits.device) if keep_probs else None
    parts: list[tuple[torch.Tensor, ...]] = []
    rows = max(1, _CHUNK // classes)
    for start in range(0, flat.shape[0], rows):
        lg = flat[start:start + rows]
        lg = lg.clamp_min(1e-12).log() if probabilities else lg
        if lg.shape[1] == 1:  # one logit per position (binary): as two-class logits
            lg = torch.cat([torch.zeros_like(lg), lg], dim=1)
        yc = y_flat[start:start + rows, None]
        # log_softmax and one top-2 (the prediction, and the largest other logit for the margin: a
        # margin of log-probabilities is the logits' margin): on CPU, torch's logsumexp is 3x slower
        logp = F.log_softmax(lg, dim=1)
        top, index = logp.topk(2, dim=1)
        pred = index[:, 0]
        label_logp = logp.gather(1, yc)[:, 0]
        margin = label_logp - torch.where(pred == yc[:, 0], top[:, 1], top[:, 0])
        parts.append((pred, -label_logp, top[:, 0].exp(), label_logp.exp(), margin))
        if probs_sum is not None:
            weight = counted.reshape(-1)[start:start + rows, None].float()
            sample = torch.arange(start, start + lg.shape[0], device=lg.device) // y.shape[1]
            probs_sum.index_add_(0, sample, logp.exp() * weight)
    pred, loss, confidence, label_prob, margin = (torch.cat(p).reshape(n, -1) for p in zip(*parts))
    probs = None if probs_sum is None else probs_sum / counted.sum(dim=1, keepdim=True).clamp_min(1)
    return Scored(y, pred, loss, confidence, label_prob, margin, counted, probs, probabilities)


def _score_labels(outputs: torch.Tensor, labels: torch.Tensor, ignore_index: int, sigmoid_outputs: bool) -> Scored:
    """Several labels per sample: per label the sigmoid's binary cross-entropy, prediction
    at 0.5, confidence the probability of the prediction."""
    z = outputs.detach().float()
    if sigmoid_outputs:  # BCELoss takes probabilities: their logits
        p = z.clamp(1e-7, 1 - 1e-7)
        z = (p / (1 - p)).log()
    target = labels.detach().float().to(z.device)
    counted = (target != ignore_index) & target.isfinite()
    safe = torch.where(counted, target, 0.0)
    loss = F.binary_cross_entropy_with_logits(z, safe, reduction="none")
    p = torch.sigmoid(z)
    label = (safe >= 0.5).long()
    pred = (p >= 0.5).long()
    confidence = torch.where(pred == 1, p, 1 - p)
    label_prob = torch.where(label == 1, p, 1 - p)
    margin = torch.where(label == 1, z, -z)  # as two-class logits (0, z)
    return Scored(label, pred, loss, confidence, label_prob, margin, counted, p)


def _mode(values: torch.Tensor, counted: torch.Tensor, classes: int) -> torch.Tensor:
    """Each row's most frequent counted value (ties: the smallest)."""
    counts = torch.zeros(values.shape[0], classes, device=values.device)
    counts.scatter_add_(1, torch.where(counted, values, 0), counted.float())
    return counts.argmax(dim=1).float()


@torch.no_grad()
def aggregate(scored: Scored) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(rows, sample columns): one row per sample, columns `schema.RECORD_FIELDS` (label and
    prediction the most frequent counted ones; loss, confidence (of the label) and margin the
    means over counted positions; correct 1 when every counted position is right, the exact
    match a tagger's or a segmenter's per-sample view needs (a sample right at 80% of its
    positions is a sample with errors to review); residual NaN), and per sample
    `positions_counted`, `position_accuracy` (the share of counted positions right),
    `worst_position_loss` and `confidence` (the prediction's, mean).
    A sample without a counted position has NaN everywhere."""
    counted = scored.counted
    n_counted = counted.sum(dim=1)
    empty = n_counted == 0

    def mean(x: torch.Tensor) -> torch.Tensor:
        return torch.where(counted, x.float(), 0.0).sum(dim=1) / n_counted  # 0 / 0: NaN

    classes = int(max(torch.where(counted, scored.label, 0).max(), scored.prediction.max(), 1)) + 1
    correct = (scored.prediction == scored.label).float()
    rows = torch.stack([_mode(scored.label, counted, classes), _mode(scored.prediction, counted, classes),
                        mean(scored.loss), mean(scored.label_prob), mean(scored.margin),
                        (mean(correct) == 1).float(),
                        torch.full_like(n_counted, _NAN, dtype=torch.float32)], dim=1)
    rows = torch.where(empty[:, None], _NAN, rows)
    worst = torch.where(counted, scored.loss, float("-inf")).max(dim=1).values
    columns = {"positions_counted": n_counted.float(), "position_accuracy": mean(correct),
               "worst_position_loss": torch.where(empty, _NAN, worst),
               "confidence": mean(scored.confidence)}
    return rows, columns


def records_of(outputs: torch.Tensor, labels: torch.Tensor, task: str | None,
               options: PositionOptions) -> tuple[torch.Tensor, PositionOptions]:
    """`log_batch`'s per-sample records (of position outputs, aggregated over each sample's
    counted positions; otherwise `per_sample`'s), and the options for the next batches: the
    first batch of float targets decides whether they are several labels per sample."""
    layout = None if task == "regression" else find_layout(outputs, labels, options.multilabel)
    if options.multilabel is None and labels.is_floating_point():
        options = dataclasses.replace(options, multilabel=layout is not None)
    if layout is None:
        return per_sample(outputs, labels, task or infer_task(outputs, labels)), options
    scored = score(outputs, labels, layout, options.ignore_index, options.sigmoid_outputs)
    return aggregate(scored)[0], options


class PositionRows:
    """The counted positions an evaluation stores, at most `cap` rows: whole samples in
    loader order until the next one would pass the cap."""

    def __init__(self, cap: int) -> None:
        self.cap, self.rows, self.full = cap, 0, cap <= 0
        self.stored_samples = self.total_samples = 0
        self.parts: list[dict[str, np.ndarray]] = []

    def add(self, ids: list, scored: Scored) -> None:
        n = len(ids)
        self.total_samples += n
        if self.full:
            return
        counted = scored.counted.cpu()
        fits = counted.sum(dim=1).cumsum(0) <= self.cap - self.rows
        keep = n if bool(fits.all()) else int(fits.int().argmin())  # the first sample past the cap
        self.full = keep < n
        self.stored_samples += keep
        sample, position = counted[:keep].nonzero(as_tuple=True)
        if len(sample) == 0:
            return
        pick = {name: getattr(scored, name)[:keep].cpu()[sample, position].numpy()
                for name in ("label", "prediction", "loss", "confidence")}
        self.parts.append({"sample_id": np.asarray([str(ids[i]) for i in sample.tolist()], dtype=object),
                           "position": position.numpy(), **pick})
        self.rows += len(sample)

    def arrays(self) -> dict[str, np.ndarray]:
        """The stored rows by column (empty arrays when none)."""
        names = ("sample_id", "position", "label", "prediction", "loss", "confidence")
        if not self.parts:
            return {k: np.zeros(0, dtype=object if k == "sample_id" else np.float64) for k in names}
        return {k: np.concatenate([p[k] for p in self.parts]) for k in names}


def pool_embedding(emb: torch.Tensor, layout: Layout, counted: torch.Tensor) -> torch.Tensor:
    """A sample's embedding from a layer's output with a position axis: the mean over its
    counted positions (all positions when none is counted) where the layer keeps the
    positions, else the mean over its own spatial axes (channels first for 4-D and more)."""
    n = emb.shape[0]
    emb = emb.detach().float()
    if layout.kind == "labels" or emb.ndim < 3:
        return emb.reshape(n, -1)
    shape = layout.shape
    last, first = tuple(emb.shape[1:-1]) == shape, tuple(emb.shape[2:]) == shape
    if last and (not first or emb.ndim == 3):
        per_position = emb.reshape(n, -1, emb.shape[-1])
    elif first:
        per_position = emb.reshape(n, emb.shape[1], -1).transpose(1, 2)
    else:
        return emb.mean(dim=1) if emb.ndim == 3 else emb.flatten(2).mean(dim=2)
    weight = counted.to(emb.device).float()
    weight = torch.where(weight.sum(dim=1, keepdim=True) > 0, weight, 1.0)
    return (per_position * weight[..., None]).sum(dim=1) / weight.sum(dim=1, keepdim=True)


class SummedLoss(nn.Module):
    """A sample's loss summed over its counted positions, as a model whose output is (N,):
    what the attributions of pixel outputs and several labels explain (`labels` is the
    forward's second argument, captum's `additional_forward_args`)."""

    def __init__(self, model: nn.Module, layout: Layout, options: PositionOptions) -> None:
        super().__init__()
        self.model, self.layout, self.options = model, layout, options

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        out = first_tensor(self.model(x)).float()
        ignore = self.options.ignore_index
        if self.layout.kind == "labels":
            counted = labels != ignore
            safe = torch.where(counted, labels.float(), 0.0)
            loss = F.binary_cross_entropy(out.clamp(1e-7, 1 - 1e-7), safe, reduction="none") \
                if self.options.sigmoid_outputs else F.binary_cross_entropy_with_logits(out, safe, reduction="none")
            return (loss * counted).flatten(1).sum(dim=1)
        logits = out.movedim(-1, 1) if self.layout.class_last else out
        if logits.shape[1] == 1:
            logits = torch.cat([torch.zeros_like(logits), logits], dim=1)
        labels = hard_labels(labels, ignore).reshape(logits.shape[0], *logits.shape[2:])
        labels = torch.where((labels >= 0) & (labels < logits.shape[1]), labels, ignore)
        loss = F.cross_entropy(logits, labels, reduction="none", ignore_index=ignore)
        return loss.flatten(1).sum(dim=1)


def token_texts(tokenizer: object, token_ids: list[int]) -> list[str]:
    """The strings of token ids: `convert_ids_to_tokens` (a Hugging Face tokenizer), else
    `decode` of each id alone."""
    convert = getattr(tokenizer, "convert_ids_to_tokens", None)
    if convert is not None:
        texts = convert(list(token_ids))
        return ["" if t is None else str(t) for t in texts]
    return [str(tokenizer.decode([i])) for i in token_ids]  # type: ignore[attr-defined]


def check_tokenizer(tokenizer: object) -> None:
    if tokenizer is not None and not (hasattr(tokenizer, "convert_ids_to_tokens") or hasattr(tokenizer, "decode")):
        raise TypeError(f"evaluate: tokenizer must have convert_ids_to_tokens or decode (a Hugging Face "
                        f"tokenizer), not a {type(tokenizer).__name__}")


def position_classes(outputs: torch.Tensor, labels: torch.Tensor) -> tuple[int, torch.Tensor, torch.Tensor] | None:
    """(classes, predictions, labels) over the counted positions (label in 0..C-1: not the
    ignore_index) of outputs with a position axis against integer labels (N, *P); None for
    one label per sample. A language model's (N, T, V) logits have V classes, not T."""
    if labels.is_floating_point() or labels.ndim < 2:
        return None
    try:
        layout = find_layout(outputs, labels)
    except ValueError:
        return None
    if layout is None or layout.kind == "labels":
        return None
    axis = outputs.ndim - 1 if layout.class_last else 1
    pred = outputs.argmax(dim=axis)
    keep = (labels >= 0) & (labels < outputs.shape[axis])
    return int(outputs.shape[axis]), pred[keep], labels[keep].long()
