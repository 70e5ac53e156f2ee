"""The evaluation pass: one record per sample, with its embedding, a preview of its input,
simple input statistics, and attributions for the worst cases.

`evaluate_model` runs the whole pass and returns an `Evaluation` (arrays only); the run
(`WatchedRun.evaluate`) pauses its capture hooks meanwhile and hands the arrays to the
writer. The model runs in eval mode under `torch.no_grad()` (its mode is restored
afterwards) and torch's random state is forked, so training goes on bitwise unchanged.
Outputs with a position axis (tokens, pixels) and several labels per sample are scored per
position by hooks/positions.py; a sample's record aggregates its counted positions.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from diagnostics import schema
from hooks.positions import (
    Layout,
    PositionOptions,
    PositionRows,
    SummedLoss,
    aggregate,
    find_layout,
    pool_embedding,
    score,
    shift,
    token_texts,
)
from hooks.records import as_logits, per_sample
from hooks.tensors import first_tensor, infer_task

PREVIEW_PIXELS = 64    # images are pooled to at most 64 × 64
PREVIEW_POINTS = 512   # signals, vectors and token lists to at most 512 values


# A dict batch with one of these input keys is the model's keyword arguments, the way
# Hugging Face collators build them: the model gets every entry but labels and ids.
KWARG_INPUTS = ("input_ids", "pixel_values", "input_values", "input_features")
INPUT_KEYS = ("input", "inputs", "x", "image", *KWARG_INPUTS)
LABEL_KEYS = ("label", "labels", "y", "target")
ID_KEYS = ("id", "ids", "sample_id", "index")


def unpack_batch(batch: Any, offset: int) -> tuple[torch.Tensor, torch.Tensor, list, dict | None]:
    """(inputs, labels, ids, model kwargs) from a batch: (x, y), (x, y, ids) or a dict
    with input/x, label/labels/y/target and optionally id/ids/sample_id. Without ids, the
    running index. Model kwargs are None (call `model(inputs)`) or, for a dict keyed the
    Hugging Face way (input_ids, pixel_values, ...), every other entry of the dict but
    labels and ids (attention_mask, token_type_ids, ...): call `model(**kwargs)`."""
    kwargs = None
    if isinstance(batch, Mapping):  # dicts, and transformers' BatchEncoding (a UserDict)
        key = next((k for k in INPUT_KEYS if k in batch), None)
        x = batch[key] if key is not None else None
        y = next((batch[k] for k in LABEL_KEYS if k in batch), None)
        ids = next((batch[k] for k in ID_KEYS if k in batch), None)
        if key in KWARG_INPUTS:
            kwargs = {k: v for k, v in batch.items() if k not in LABEL_KEYS and k not in ID_KEYS}
        if x is None or y is None:
            raise TypeError(f"evaluate: a dict batch needs an input key ({', '.join(INPUT_KEYS)}) and a label key "
                            f"({', '.join(LABEL_KEYS)}); got keys {sorted(batch)}")
    elif isinstance(batch, (list, tuple)) and len(batch) in (2, 3):
        x, y, ids = batch[0], batch[1], batch[2] if len(batch) == 3 else None
    else:
        raise TypeError("evaluate: a batch must be (inputs, labels), (inputs, labels, ids) or a dict with "
                        "'input' and 'label' keys — wrap your loader to yield one of these")
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError("evaluate: the batch's inputs and labels must be tensors")
    n = x.shape[0]
    if ids is None:
        ids = list(range(offset, offset + n))
    else:
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        if len(ids) != n:
            raise ValueError(f"evaluate: {len(ids)} ids for a batch of {n} samples")
    return x, y, ids, kwargs


def forward(model: nn.Module, x: torch.Tensor, kwargs: dict | None, device: torch.device) -> Any:
    """The model's output on one batch, its tensors moved to `device` first."""
    if kwargs is None:
        return model(x.to(device))
    accepted = _forward_parameters(model)
    if accepted is not None:  # a forward without **kwargs gets only what it names (not idx, text, ...)
        kwargs = {k: v for k, v in kwargs.items() if k in accepted}
    return model(**{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()})


def _forward_parameters(model: nn.Module) -> set[str] | None:
    """The keyword names `model.forward` accepts, or None when it takes **kwargs."""
    import inspect

    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params}


def input_kind(x: torch.Tensor) -> str:
    if not x.is_floating_point():
        return "tokens"
    return {4: "image", 3: "signal", 2: "vector"}.get(x.ndim, "vector")


@torch.no_grad()
def input_statistics(x: torch.Tensor, kind: str) -> dict[str, np.ndarray]:
    """Per-sample properties preprocessing can change: images — brightness (mean), contrast
    (std), sharpness (mean |Laplacian| of the grey image); signals — amplitude (std),
    SNR estimate in dB (a 5-point moving average as the signal, the rest as noise), dominant
    frequency in cycles per sample (the largest non-DC FFT bin); tokens — length (non-zero)."""
    x = x.detach().float().cpu()
    n = x.shape[0]
    if kind == "image":
        grey = x.mean(dim=1, keepdim=True)
        lap = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])[None, None]
        sharp = F.conv2d(grey, lap).abs().flatten(1).mean(1) if min(grey.shape[-2:]) >= 3 else torch.zeros(n)
        flat = x.flatten(1)
        return {"input_brightness": flat.mean(1).numpy(), "input_contrast": flat.std(1, unbiased=False).numpy(),
                "input_sharpness": sharp.numpy()}
    if kind == "signal":
        sig = x - x.mean(dim=-1, keepdim=True)
        smooth = F.avg_pool1d(sig, 5, stride=1, padding=2, count_include_pad=False)
        noise = (sig - smooth).pow(2).flatten(1).mean(1)
        power = smooth.pow(2).flatten(1).mean(1)
        spectrum = torch.fft.rfft(sig.mean(dim=1), dim=-1).abs()
        spectrum[:, 0] = 0
        dominant = spectrum.argmax(dim=1).float() / sig.shape[-1]
        return {"input_amplitude": sig.flatten(1).std(1, unbiased=False).numpy(),
                "input_snr_db": (10 * torch.log10((power + 1e-12) / (noise + 1e-12))).numpy(),
                "input_dominant_freq": dominant.numpy()}
    if kind == "tokens":
        return {"input_length": (x != 0).flatten(1).sum(1).float().numpy()}
    flat = x.flatten(1)
    return {"input_mean": flat.mean(1).numpy(), "input_norm": flat.norm(dim=1).numpy()}


@torch.no_grad()
def previews(x: torch.Tensor, kind: str) -> tuple[list[int], np.ndarray]:
    """A small copy of each input: (shape of one preview, array n × prod(shape))."""
    x = x.detach().float().cpu()
    n = x.shape[0]
    if kind == "image":
        h, w = x.shape[-2:]
        scale = max(1, math.ceil(max(h, w) / PREVIEW_PIXELS))
        small = F.avg_pool2d(x, scale, ceil_mode=True) if scale > 1 else x
        small = small[:, :3] if small.shape[1] >= 3 else small[:, :1]
        small = small.permute(0, 2, 3, 1)  # H, W, C
        return list(small.shape[1:]), small.reshape(n, -1).numpy()
    if kind == "signal":
        t = x.shape[-1]
        small = F.adaptive_avg_pool1d(x, PREVIEW_POINTS) if t > PREVIEW_POINTS else x
        return list(small.shape[1:]), small.reshape(n, -1).numpy()
    flat = x.reshape(n, -1)[:, :PREVIEW_POINTS]
    return [flat.shape[1]], flat.numpy()


def metadata_columns(metadata: Any, ids: list) -> dict[str, np.ndarray]:
    """`meta_*` columns aligned with `ids`, from a DataFrame indexed by sample id or a dict of
    columns in loader order. Numbers stay numbers; anything else becomes text."""
    if metadata is None:
        return {}
    import pandas as pd

    if isinstance(metadata, pd.DataFrame):
        index = metadata.index.map(str)
        missing = [i for i in map(str, ids) if i not in set(index)]
        if missing:
            raise ValueError(f"evaluate: metadata has no row for sample id(s) {', '.join(missing[:5])} — "
                             "index the DataFrame by the same ids the loader yields")
        frame = metadata.set_axis(index).loc[[str(i) for i in ids]]
    elif isinstance(metadata, dict):
        frame = pd.DataFrame({k: np.asarray(v) for k, v in metadata.items()})
        if len(frame) != len(ids):
            raise ValueError(f"evaluate: metadata columns have {len(frame)} values for {len(ids)} samples — "
                             "give one value per sample, in the loader's order")
    else:
        raise TypeError("evaluate: metadata must be a pandas DataFrame indexed by sample id or a dict of columns")
    out = {}
    for name, col in frame.items():
        values = col.to_numpy()
        out[f"meta_{name}"] = values.astype(np.float64) if np.issubdtype(values.dtype, np.number) or \
            values.dtype == bool else values.astype(str)
    return out


def _find_module(model: nn.Module, name: str | None, kind: type | tuple) -> tuple[str, nn.Module] | None:
    modules = dict(model.named_modules())
    if name is not None:
        if name not in modules:
            near = [n for n in modules if name.split(".")[-1] in n][:5]
            raise ValueError(f"evaluate: no module named {name!r} in the model"
                             + (f" (did you mean {', '.join(near)}?)" if near else "; see model.named_modules()"))
        return name, modules[name]
    found = [(n, m) for n, m in modules.items() if isinstance(m, kind)]
    return found[-1] if found else None


def attribute(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor | None, kind: str,
              conv: tuple[str, nn.Module] | None, n_steps: int = 32, internal_batch_size: int = 64,
              progress: bool = True, labels: torch.Tensor | None = None) -> dict[str, np.ndarray]:
    """Captum attributions of `inputs` (n × …), summed over channels to the input's spatial
    shape: IntegratedGradients (zero baseline) always, LayerGradCam on the last conv layer
    when there is one (upsampled to the input). `labels`: the model's second argument, per
    sample (`SummedLoss`)."""
    from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam
    from tqdm.auto import tqdm

    out: dict[str, list] = {"integrated_gradients": []}
    if conv is not None and kind in ("image", "signal"):
        out["grad_cam"] = []
    # tqdm's disable=None: no bar where stderr is not a terminal (a log file, a notebook's pipe)
    for start in tqdm(range(0, len(inputs), 8), desc="attributions", disable=None if progress else True,
                      leave=False):
        x = inputs[start:start + 8].clone().requires_grad_(True)
        t = None if targets is None else targets[start:start + 8]
        extra = None if labels is None else (labels[start:start + 8],)
        ig = IntegratedGradients(model).attribute(x, baselines=torch.zeros_like(x), target=t, n_steps=n_steps,
                                                  additional_forward_args=extra,
                                                  internal_batch_size=internal_batch_size)
        out["integrated_gradients"].append(ig.detach().sum(dim=1).cpu() if ig.ndim >= 3 else ig.detach().cpu())
        if "grad_cam" in out:
            cam = LayerGradCam(model, conv[1]).attribute(x, target=t, additional_forward_args=extra,
                                                         relu_attributions=True)
            cam = LayerAttribution.interpolate(cam, tuple(x.shape[2:]), interpolate_mode="bilinear"
                                               if kind == "image" else "linear")
            out["grad_cam"].append(cam.detach()[:, 0].cpu())
    return {k: torch.cat(v).float().numpy() for k, v in out.items() if v}


class _Worst:
    """The k samples with the largest loss seen so far (inputs kept on the CPU)."""

    def __init__(self, k: int) -> None:
        self.k, self.heap, self.count = k, [], 0

    def offer(self, losses: np.ndarray, x: torch.Tensor, y: torch.Tensor, ids: list) -> None:
        for i, loss in enumerate(losses):
            if not np.isfinite(loss) or self.k == 0:
                continue
            item = (float(loss), self.count, ids[i], x[i].detach().cpu(), y[i].detach().cpu())
            self.count += 1
            if len(self.heap) < self.k:
                heapq.heappush(self.heap, item)
            elif loss > self.heap[0][0]:
                heapq.heapreplace(self.heap, item)

    def items(self) -> list:
        return sorted(self.heap, reverse=True)


def iterate(loader: Iterable) -> tuple[Iterable, int | None]:
    try:
        return loader, len(loader)  # type: ignore[arg-type]
    except TypeError:
        return loader, None


@dataclasses.dataclass
class Evaluation:
    """One evaluation pass, as the arrays the run writer takes.

    `rows` has one row per sample, columns `schema.RECORD_FIELDS`; `probs` holds each
    sample's probability vector (None for regression); `columns` the input statistics and
    metadata columns; `attributed_*` the worst samples' ids, targets and attributions.
    """

    split: str
    task: str
    ids: list
    rows: np.ndarray
    probs: list
    embeddings: list
    columns: dict[str, np.ndarray]
    input_kind: str
    preview_shape: list | None = None  # one preview's shape, or one per sample (token batches of several lengths)
    preview_values: np.ndarray | list | None = None
    attributed_ids: list = dataclasses.field(default_factory=list)
    attributed_targets: list[int] = dataclasses.field(default_factory=list)
    attributions: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    worst: Any = None  # a `Worst` to attribute later (attribute_now=False)
    outputs: str = "logits"  # or "probabilities": the model ends in a softmax (read as such)
    # position outputs: the manifest entry (`schema.EVAL_POSITIONS`), the stored rows by column,
    # each sample's mean confidence (of its predictions), the token ids' strings, the metrics
    # over every counted position (not only the stored ones)
    positions: dict | None = None
    position_rows: dict[str, np.ndarray] | None = None
    confidence: np.ndarray | None = None
    vocabulary: dict[int, str] | None = None
    position_metrics: dict[str, float] = dataclasses.field(default_factory=dict)

    def field(self, name: str) -> np.ndarray:
        """One column of `rows` by its name in `schema.RECORD_FIELDS`."""
        return self.rows[:, schema.RECORD_FIELDS.index(name)]

    def metrics(self) -> dict[str, float]:
        """n, mean loss, and accuracy (classification) or mean absolute error (regression)."""
        metrics = {"n": float(len(self.ids)), "loss": float(np.nanmean(self.field("loss")))}
        if self.task == "classification":
            metrics["accuracy"] = float(np.nanmean(self.field("correct")))
        else:
            metrics["mae"] = float(np.nanmean(np.abs(self.field("residual"))))
        return {**metrics, **self.position_metrics}

    def dataset(self) -> str:
        """The key of the evaluated samples (`schema.dataset_key`); for position outputs, of their
        layout, shape and stored position labels too (a sample's most frequent label, often the
        background or padding class, tells unrelated sets apart no better than its id)."""
        labels = self.field("label")
        if self.positions is not None and self.position_rows is not None:
            rows, info = self.position_rows, self.positions
            shape = "x".join(map(str, info.get("shape", ())))
            ids = [*self.ids, f"layout:{info.get('layout')}:{shape}",
                   *(f"{i}@{p}" for i, p in zip(rows["sample_id"], rows["position"].tolist()))]
            return schema.dataset_key(self.split, ids, np.concatenate([labels, [0.0], rows["label"]]))
        return schema.dataset_key(self.split, self.ids, labels)


class _Collected:
    """What the batches of one pass add up to."""

    def __init__(self, attribute_worst: int, with_previews: bool, options: PositionOptions | None = None,
                 max_positions: int = 0, tokenizer: Any = None) -> None:
        self.ids: list = []
        self.rows: list[np.ndarray] = []
        self.probs: list = []
        self.embeddings: list = []
        self.stats: dict[str, list] = {}
        self.previews: list[np.ndarray] = []
        self.preview_shape: list[int] | None = None
        self.with_previews = with_previews
        self.kind: str | None = None
        self.out_width = 0  # outputs per sample (a single logit: attribute the logit itself)
        self.probabilities = False  # the model outputs probabilities (it ends in a softmax)
        self.worst = _Worst(attribute_worst)
        self.options = options or PositionOptions()
        self.multilabel = self.options.multilabel  # float targets: several labels per sample (None: not known yet)
        self.layout: Layout | None = None  # position outputs: the first batch's layout
        self.position_shape: list[int] = []  # the largest position shape seen
        self.position_rows = PositionRows(max_positions)
        self.confidence: list[np.ndarray] = []
        self.totals = np.zeros(3)  # over every counted position: loss sum, correct sum, count
        self.tokenizer = tokenizer
        self.token_ids: set[int] = set()

    def add(self, x: torch.Tensor, y: torch.Tensor, y_dev: torch.Tensor, ids: list, out: torch.Tensor,
            emb: torch.Tensor, task: str, layout: Layout | None = None) -> None:
        if layout is not None:
            rows, emb = self.add_positions(x, ids, out, y_dev, emb, layout)
        else:
            rows = per_sample(out, y_dev, task).cpu().double().numpy()
            self.out_width = out.reshape(out.shape[0], -1).shape[1]
            self.probs += self.probabilities_of(out, task)
            # attributions: of the label's logit (position outputs: of the summed loss, `add_positions`)
            self.worst.offer(rows[:, schema.RECORD_FIELDS.index("loss")], x, y, ids)
        self.embeddings += list(emb.reshape(emb.shape[0], -1).float().cpu().numpy())
        self.kind = self.kind or input_kind(x)
        for name, values in input_statistics(x, self.kind).items():
            self.stats.setdefault(name, []).append(values)
        if self.with_previews:
            self.preview_shape, values = previews(x, self.kind)
            self.previews.append(values)
        self.ids += ids
        self.rows.append(rows)

    def probabilities_of(self, out: torch.Tensor, task: str) -> list:
        if task != "classification":
            return [None] * out.shape[0]
        logits, probabilities = as_logits(out.reshape(out.shape[0], -1).float())
        self.probabilities = self.probabilities or probabilities
        if logits.shape[1] == 1:
            logits = torch.cat([torch.zeros_like(logits), logits], dim=1)
        return list(torch.softmax(logits, dim=1).cpu().numpy())

    def add_positions(self, x: torch.Tensor, ids: list, out: torch.Tensor, y_dev: torch.Tensor, emb: torch.Tensor,
                      layout: Layout) -> tuple[np.ndarray, torch.Tensor]:
        """A batch of position outputs: (its per-sample rows, its pooled embedding)."""
        if self.layout is None:
            self.layout, self.position_shape = layout, list(layout.shape)
        elif len(layout.shape) == len(self.position_shape):
            self.position_shape = [max(a, b) for a, b in zip(self.position_shape, layout.shape)]
        scored = score(out, y_dev, layout, self.options.ignore_index, self.options.sigmoid_outputs)
        rows, columns = aggregate(scored)
        self.probabilities = self.probabilities or scored.probabilities
        self.position_rows.add(ids, scored)
        if layout.kind != "tokens":  # attributions of the sample's summed loss (token ids: none)
            self.worst.offer(rows[:, schema.RECORD_FIELDS.index("loss")].cpu().numpy(), x, y_dev, ids)
        for name in schema.POSITION_SAMPLE_COLUMNS:
            self.stats.setdefault(name, []).append(columns[name].cpu().double().numpy())
        self.confidence.append(columns["confidence"].cpu().double().numpy())
        counted = scored.counted
        self.totals += [float(torch.where(counted, scored.loss, 0.0).sum()),
                        float((counted & (scored.prediction == scored.label)).sum()), float(counted.sum())]
        self.probs += [None] * len(ids) if scored.probs is None else list(scored.probs.cpu().numpy())
        if self.tokenizer is not None and layout.kind == "tokens":
            seen = [scored.label[counted], scored.prediction[counted]]
            if not x.is_floating_point():
                seen.append(x.reshape(x.shape[0], -1)[:, :PREVIEW_POINTS])
            self.token_ids.update(int(i) for t in seen for i in torch.unique(t.cpu()).tolist() if i >= 0)
        return rows.cpu().double().numpy(), pool_embedding(emb, layout, counted)

    def position_info(self, max_positions: int) -> dict | None:
        """The manifest's positions entry (`schema.EVAL_POSITIONS`), None for per-sample outputs."""
        if self.layout is None:
            return None
        return {"shape": self.position_shape, "layout": self.layout.kind, "ignore_index": self.options.ignore_index,
                "stored_samples": self.position_rows.stored_samples,
                "total_samples": self.position_rows.total_samples, "cap": int(max_positions),
                "shift_labels": self.options.shift_labels}


def _collect(model: nn.Module, loader: Iterable, split: str, task: str | None, device: torch.device,
             captured: dict, collected: _Collected, progress: bool) -> str | None:
    """Run the model over every batch into `collected`; returns the task (inferred from
    the first batch when None)."""
    from tqdm.auto import tqdm

    batches, total = iterate(loader)
    for batch in tqdm(batches, total=total, desc=f"evaluate {split}", disable=None if progress else True,
                      leave=False):
        x, y, ids, kwargs = unpack_batch(batch, len(collected.ids))
        out = first_tensor(forward(model, x, kwargs, device))
        y_dev = y.to(device)
        options = collected.options
        if options.shift_labels:
            y_dev = shift(y_dev, options.ignore_index)
        layout = None if task == "regression" else find_layout(out, y_dev, collected.multilabel)
        if collected.ids and (layout is None) != (collected.layout is None):
            raise ValueError("evaluate: the loader's batches mix outputs with a position axis and outputs with one "
                             "label per sample — give every batch the same kind of outputs and labels")
        if collected.multilabel is None and y_dev.is_floating_point():  # the first batch decides
            collected.multilabel = layout is not None
        if task is None:
            task = "classification" if layout is not None else infer_task(out, y_dev)
        collected.add(x, y, y_dev, ids, out, captured.pop("embedding", out), task, layout)
    return task


@dataclasses.dataclass
class Worst:
    """The samples with the largest loss of one evaluation, to attribute (inputs on the CPU)."""

    inputs: torch.Tensor
    targets: torch.Tensor | None  # classification: the label's logit; None: the single output
    ids: list
    written: list[int]  # the targets as the attributions table stores them (-1: regression)
    kind: str
    n_steps: int
    progress: bool
    # pixel outputs, several labels: each sample's summed loss is attributed (`SummedLoss`), given its labels
    labels: torch.Tensor | None = None
    loss: Any = None  # (Layout, PositionOptions)


def _worst(collected: _Collected, task: str, n_steps: int, progress: bool) -> Worst | None:
    picked = collected.worst.items()
    if not picked or not picked[0][3].is_floating_point():
        return None  # token ids (of any padded width) get no attributions
    xs = torch.stack([item[3] for item in picked])
    ids = [str(item[2]) for item in picked]
    if collected.layout is not None:  # the summed loss: written as target -1
        labels = torch.stack([item[4] for item in picked])
        return Worst(xs, None, ids, [-1] * len(picked), collected.kind, n_steps, progress, labels,
                     (collected.layout, collected.options))
    by_label = task == "classification" and collected.out_width > 1
    # classification: attribute the label's logit (a single logit: the logit itself)
    targets = torch.stack([item[4] for item in picked]).reshape(len(picked), -1)[:, 0].long() if by_label else None
    written = [int(item[4].reshape(-1)[0]) if task == "classification" else -1 for item in picked]
    return Worst(xs, targets, ids, written, collected.kind, n_steps, progress)


def attribute_samples(model: nn.Module, worst: Worst | None) -> tuple[list, list[int], dict[str, np.ndarray]]:
    """(ids, targets, attributions by method) of `worst`, the model in eval mode (its modes and
    torch's random state given back: training goes on as if no attribution ran)."""
    if worst is None:
        return [], [], {}
    conv = _find_module(model, None, (nn.Conv2d, nn.Conv1d))
    device = next(model.parameters(), torch.zeros(())).device
    modes = [(m, m.training) for m in model.modules()]
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        try:
            model.eval()
            targets = None if worst.targets is None else worst.targets.to(device)
            labels = None if worst.labels is None else worst.labels.to(device)
            forward = model if worst.loss is None else SummedLoss(model, *worst.loss)
            found = attribute(forward, worst.inputs.to(device), targets, worst.kind, conv, n_steps=worst.n_steps,
                              progress=worst.progress, labels=labels)
        finally:
            for module, training in modes:
                module.training = training
    return worst.ids, worst.written, found


def evaluate_model(model: nn.Module, loader: Iterable, split: str, task: str | None, *, embed_layer: str | None = None,
                   attribute_worst: int = 32, n_steps: int = 32, progress: bool = True, metadata: Any = None,
                   with_previews: bool = True, attribute_now: bool = True, positions: PositionOptions | None = None,
                   max_positions: int = 200_000, tokenizer: Any = None) -> Evaluation:
    """Run the evaluation pass of `model` over `loader` (see `WatchedRun.evaluate`).

    Args:
        model: the model; put in eval mode and given its mode back.
        loader: batches of (inputs, labels), (inputs, labels, ids) or dicts (`unpack_batch`).
        split: the split's name.
        task: "classification", "regression", or None to infer from the first batch.
        embed_layer: the module whose output is the embedding (default: the input of the
            last linear layer).
        attribute_worst: how many of the largest-loss samples get attributions.
        n_steps: IntegratedGradients' steps.
        progress: show progress bars.
        metadata: per-sample metadata (`metadata_columns`).
        with_previews: compute the inputs' previews (the first evaluation of a split).
        attribute_now: attribute the worst samples in this pass; False: keep them for later
            (`Evaluation.worst`, attributed by `attribute_samples` when the run closes).
        positions: how outputs with a position axis are read (`hooks.positions.PositionOptions`:
            ignore_index, shift_labels, several labels per sample).
        max_positions: at most this many rows of counted positions kept (whole samples).
        tokenizer: maps the stored token ids to strings (`Evaluation.vocabulary`).

    Returns:
        The pass's `Evaluation`.
    """
    found = _find_module(model, embed_layer, nn.Linear)
    device = next(model.parameters(), torch.zeros(())).device
    captured: dict[str, torch.Tensor] = {}

    def grab(module, args, output):
        value = args[0] if embed_layer is None and args else first_tensor(output)
        if isinstance(value, torch.Tensor):
            captured["embedding"] = value.detach()

    handle = found[1].register_forward_hook(grab) if found else None
    modes = [(m, m.training) for m in model.modules()]  # a frozen BatchNorm stays in eval mode after
    collected = _Collected(attribute_worst, with_previews, positions, max_positions, tokenizer)
    # A DataLoader draws its base seed from torch's global generator: fork it, so that
    # training after an evaluation is bitwise what it would have been without one.
    rng = torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])
    rng.__enter__()
    try:
        model.eval()
        with torch.no_grad():
            task = _collect(model, loader, split, task, device, captured, collected, progress)
        if not collected.ids:
            raise ValueError(f"evaluate: the loader for {split!r} yielded no samples")
        worst = _worst(collected, task, n_steps, progress)
        attributed = attribute_samples(model, worst) if attribute_now else ([], [], {})
    finally:
        if handle is not None:
            handle.remove()
        for module, training in modes:
            module.training = training
        rng.__exit__(None, None, None)
    result = _evaluation(split, task, collected, metadata, attributed, None if attribute_now else worst)
    return _with_positions(result, collected, max_positions)


def _evaluation(split: str, task: str, collected: _Collected, metadata: Any, attributed: tuple,
                worst: Worst | None) -> Evaluation:
    columns = {k: np.concatenate(v) for k, v in collected.stats.items()}
    columns.update(metadata_columns(metadata, collected.ids))
    shape: Any = collected.preview_shape
    previews_values: Any = None
    if collected.previews and len({p.shape[1:] for p in collected.previews}) > 1:  # batches padded apart
        previews_values = [row.astype(np.float32) for p in collected.previews for row in p]
        shape = [list(row.shape) for row in previews_values]
    elif collected.previews:
        previews_values = np.concatenate(collected.previews).astype(np.float32)
    return Evaluation(split, task, collected.ids, np.concatenate(collected.rows), collected.probs,
                      collected.embeddings, columns, collected.kind, shape, previews_values,
                      *attributed, worst=worst, outputs="probabilities" if collected.probabilities else "logits")


def _with_positions(result: Evaluation, collected: _Collected, max_positions: int) -> Evaluation:
    """`result` with what position outputs add: the stored rows, the manifest entry, each
    sample's mean confidence, the metrics over all counted positions, the vocabulary."""
    result.positions = collected.position_info(max_positions)
    if result.positions is None:
        return result
    result.position_rows = collected.position_rows.arrays()
    result.confidence = np.concatenate(collected.confidence)
    loss_sum, correct_sum, count = collected.totals
    result.position_metrics = {"position_loss": loss_sum / count if count else math.nan,
                               "position_accuracy": correct_sum / count if count else math.nan}
    if collected.tokenizer is not None and collected.token_ids:
        ids = sorted(collected.token_ids)
        result.vocabulary = dict(zip(ids, token_texts(collected.tokenizer, ids)))
    return result
