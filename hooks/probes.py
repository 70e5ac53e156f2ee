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
import sys
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from diagnostics import schema
from hooks.guard import Hook, contained
from hooks.tensors import first_tensor


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


AGREE_MIN_PER_CLASS = 5  # samples per labelled class in the batch before "the most common prediction" means much
AGREEMENT_FIELDS = ("label_agreement", "label_mode_agreement", "label_mode_distinct")


@torch.no_grad()
def class_agreement_probe(outputs: torch.Tensor, labels: torch.Tensor, split: str = "train") -> dict[str, float]:
    """How the argmax of (N, C) scores agrees with (N,) class ids, keyed `probe/{split}/{field}`:
    `label_agreement` (argmax == label: accuracy), and where the batch holds ≥ 5 samples per
    labelled class, `label_mode_agreement` (share of samples whose argmax is the most common
    argmax among their label's samples: the model consistent per label, right or wrong) and
    `label_mode_distinct` (distinct most-common argmaxes / labelled classes: 1 when the labels
    map to the predictions one to one). {} for other shapes. One bincount, one transfer.

    Example::

        class_agreement_probe(logits, (y + 1) % 10, "val")  # agreement ~0, mode agreement ~1: labels permuted
    """
    if not (outputs.is_floating_point() and outputs.ndim == 2 and outputs.shape[1] > 1 and labels.ndim == 1
            and not labels.is_floating_point() and labels.shape[0] == outputs.shape[0] > 0):
        return {}
    c = outputs.shape[1]
    lab = labels.detach().long()
    keep = (lab >= 0) & (lab < c)
    cell = torch.where(keep, lab * c + outputs.detach().argmax(1), torch.full_like(lab, c * c))
    conf = torch.bincount(cell, minlength=c * c + 1)[:c * c].reshape(c, c).cpu().double()
    n, present = float(conf.sum()), conf.sum(1) > 0
    if n == 0:
        return {}
    out = {"label_agreement": float(conf.diagonal().sum()) / n}
    if n / int(present.sum()) >= AGREE_MIN_PER_CLASS:
        modes = conf[present].argmax(1)
        out["label_mode_agreement"] = float(conf[present].max(1).values.sum()) / n
        out["label_mode_distinct"] = len(set(modes.tolist())) / int(present.sum())
    return {f"{schema.PROBE_PREFIX}{split}/{k}": v for k, v in out.items()}


@torch.no_grad()
def target_alignment_probe(tokens: torch.Tensor, labels: torch.Tensor, split: str = "train") -> dict[str, float]:
    """Do a language model's targets line up with its input tokens? For (d0, d1) integer inputs
    and integer targets of d0·d1 elements (flattened or not): the largest share of positions
    where the target is the next input token (along either axis) reading the targets in the
    inputs' layout (`target_next_same`) and in the transposed one (`target_next_transposed`,
    targets flattened time-major against batch-major outputs). {} for other shapes or when
    d0 == d1 (both layouts read alike). Element-wise compares, one transfer.

    Example::

        target_alignment_probe(x, x.roll(-1, 1).t().reshape(-1))  # transposed ~1, same ~1/V
    """
    if (tokens.is_floating_point() or labels.is_floating_point() or tokens.ndim != 2
            or tokens.shape[0] == tokens.shape[1] or labels.numel() != tokens.numel() or min(tokens.shape) < 2):
        return {}
    d0, d1 = tokens.shape
    x, y = tokens.detach(), labels.detach().reshape(-1).to(tokens.device)

    def next_share(t: torch.Tensor) -> torch.Tensor:
        return torch.maximum((t[:, :-1] == x[:, 1:]).float().mean(), (t[:-1] == x[1:]).float().mean())

    same, transposed = torch.stack([next_share(y.view(d0, d1)), next_share(y.view(d1, d0).t())]).cpu().tolist()
    return {f"{schema.PROBE_PREFIX}{split}/target_next_same": same,
            f"{schema.PROBE_PREFIX}{split}/target_next_transposed": transposed}


@torch.no_grad()
def feature_label_probe(inputs: torch.Tensor, labels: torch.Tensor, split: str = "train") -> dict[str, float]:
    """Is one input feature the label itself? For (N, F ≥ 2) float inputs and N labels (class ids or
    values, N ≥ 8, not all equal): the largest |Pearson correlation| of a feature with the label
    (`feature_label_corr`) and that feature's index (`feature_label_index`). A feature equal to
    the label up to scale and shift gives 1. {} for other shapes. One reduction, one transfer.

    Example::

        feature_label_probe(torch.cat([x, y[:, None].float()], 1), y)  # corr 1.0 at index x.shape[1]
    """
    if not (inputs.is_floating_point() and inputs.ndim == 2 and inputs.shape[1] >= 2 and labels.ndim == 1
            and labels.shape[0] == inputs.shape[0] >= 8 and not labels.is_complex()):
        return {}
    x, y = inputs.detach().double(), labels.detach().to(inputs.device).double()
    xc, yc = x - x.mean(0), y - y.mean()
    corr = (xc * yc[:, None]).sum(0) / ((xc * xc).sum(0) * (yc * yc).sum()).sqrt()
    corr = torch.nan_to_num(corr.abs(), nan=0.0)
    best, index = torch.stack([corr.max(), corr.argmax().double()]).cpu().tolist()
    return {f"{schema.PROBE_PREFIX}{split}/feature_label_corr": best,
            f"{schema.PROBE_PREFIX}{split}/feature_label_index": index}


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
        uniques, counts = torch.unique(flat, return_counts=True)
        distinct = torch.tensor(float(uniques.numel()), device=lab.device)
        top = counts.argmax()
        # sequence-shaped class ids (batch, positions): the most common value's share (padding?)
        top_value, top_share = (uniques[top].float(), counts[top].float() / flat.numel()) if (
            lab.ndim >= 2 and not lab.is_floating_point()) else (nan, nan)
    else:
        integer_frac, distinct, top_value, top_share = nan, nan, nan, nan
    values = torch.stack([d.to(out.device, torch.float32) for d in
                          [*devs, integer_frac.to(out.device), distinct.to(out.device), top_value.to(out.device),
                           top_share.to(out.device)]]).cpu().tolist()
    broadcast = outputs_expanded(out, lab)
    fields = dict(zip((*schema.PROBE_FIELDS, *schema.LABEL_TOP_FIELDS), [*values[:6], float(columns), broadcast,
                                                                        *values[6:]]))
    return {f"{schema.PROBE_PREFIX}{split}/{k}": v for k, v in fields.items()}


# ---------------------------------------------------------------------------------
# Evaluation-time invariance: in eval mode, does the model give the same outputs for the same
# batch twice (determinism), and a sample the same output alone as inside its batch (batch
# independence)? Run on a few samples of one batch: the first evaluation of each split
# (`run.evaluate`), and the first training batch when the run closes. Scalars
# `probe/{split}/{field}` (fields in `schema.EVAL_PROBE_FIELDS`), the random calls' sites in
# the manifest's `schema.EVAL_PROBES`; read by `diagnostics.health.invariance`.

PROBE_SAMPLES = 8  # samples of one batch kept and run (first half alone, then all together)
# Relative per-sample difference between two forwards of the same input under which they count as
# equal (float reordering across batch sizes is ~1e-6 in float32, ~1e-2 in bfloat16)
SAME_OUTPUT_TOL = 1e-4
# Functions that drop units at random unless told they are in eval mode: their `training`
# argument (F.dropout & co default to True, so model.eval() does not reach them), or a dropout
# probability passed to attention
_DROPOUTS = {"dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout",
             "feature_dropout", "rrelu"}
_ATTENTION = {"scaled_dot_product_attention", "multi_head_attention_forward"}
_SAMPLERS = {"rand", "randn", "rand_like", "randn_like", "randint", "randint_like", "randperm", "normal",
             "bernoulli", "multinomial", "poisson", "normal_", "uniform_", "bernoulli_", "exponential_",
             "geometric_", "log_normal_", "cauchy_", "random_"}


class BatchGrab:
    """A forward pre-hook body (`with_kwargs=True`) that keeps the first `PROBE_SAMPLES`
    samples of the inputs of the first call `wanted(module)` accepts: every tensor whose first
    dimension is the batch's (the first tensor's) is cut, the rest kept as given. `owner`
    gives the `Guard`; `ends`: for the first call's integer (batch, positions) input, its most
    common last token and that token's share of the batch (the padding token, if any)."""

    def __init__(self, guard, wanted) -> None:
        self.guard, self.wanted = guard, wanted
        self.batch: tuple[tuple, dict, int] | None = None
        self.taken = False
        self.ends: dict[str, float] = {}
        self.handle: Any = None
        self.step: Any = lambda: 0  # the run's step, when a training batch is taken
        self.taken_at = 0

    def take(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        # a forward dynamo traces (a model compiled after `watch`) is not grabbed: the hook traces
        # as nothing, so the compiled model keeps its two graphs (the probes are off when compiled)
        if torch.compiler.is_compiling() or self.taken or not self.wanted(module):
            return
        self.taken = True
        batch = cut_batch(args, kwargs, PROBE_SAMPLES)
        # no tensor with a batch axis found (an input type of its own): no probe, nothing kept
        self.batch = batch if batch[2] else None
        self.ends = padding_evidence(args, kwargs)
        self.taken_at = self.step()
        if self.handle is not None:  # once: no hook left on the training's forwards
            self.handle.remove()


def _first(obj: Any) -> torch.Tensor | None:
    if isinstance(obj, torch.Tensor):
        return obj
    items = obj.values() if type(obj) is dict else obj if type(obj) in (list, tuple) else ()
    return next((t for t in map(_first, items) if t is not None), None)


def _cut(obj: Any, n: int, k: int) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj[:k].detach().clone() if obj.ndim and obj.shape[0] == n else obj
    if type(obj) is dict:
        return {key: _cut(v, n, k) for key, v in obj.items()}
    if type(obj) in (list, tuple):
        return type(obj)(_cut(v, n, k) for v in obj)
    return obj


def cut_batch(args: tuple, kwargs: dict, k: int) -> tuple[tuple, dict, int]:
    """(args, kwargs, samples) with every tensor of the batch's size cut to its first `k`
    samples (cloned, detached); the batch's size is the first tensor's first dimension."""
    first = _first((args, kwargs))
    n = int(first.shape[0]) if first is not None and first.ndim else 0
    k = min(k, n)
    return _cut(args, n, k), _cut(kwargs, n, k), k


@torch.no_grad()
def padding_evidence(args: tuple, kwargs: dict) -> dict[str, float]:
    """The first integer (batch, positions) input's most common last token (`input_end_value`)
    and its share of the batch's last positions (`input_end_share`): padding at the end of
    sequences, when that share is large. Empty when there is no such input."""
    ids = next((t for t in _tensors((args, kwargs)) if t.ndim == 2 and not t.is_floating_point()
                and not t.is_complex() and t.dtype != torch.bool and t.shape[1] > 1), None)
    if ids is None or not ids.shape[0]:
        return {}
    values, counts = torch.unique(ids[:, -1], return_counts=True)
    top = int(counts.argmax())
    return {"input_end_value": float(values[top]), "input_end_share": float(counts[top]) / ids.shape[0]}


def _tensors(obj: Any):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif type(obj) in (dict, list, tuple):
        for v in obj.values() if type(obj) is dict else obj:
            yield from _tensors(v)


class _RandomCalls(TorchFunctionMode):
    """Notes the calls that draw random numbers during a forward: dropout told it is training,
    attention with a dropout probability, samplers; each with the module whose forward made it."""

    def __init__(self, names: dict[int, str]) -> None:
        super().__init__()
        self.names, self.dropout, self.sampling = names, [], []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in _DROPOUTS or name in _ATTENTION:
            p = kwargs.get("p", kwargs.get("dropout_p", args[1] if len(args) > 1 and name in _DROPOUTS else None))
            p = args[10] if p is None and name == "multi_head_attention_forward" and len(args) > 10 else p
            training = kwargs.get("training", kwargs.get("train", args[2] if len(args) > 2 and name in _DROPOUTS
                                                         else True))
            if training and isinstance(p, (int, float)) and p > 0 or name == "rrelu" and training:
                self.dropout.append(f"{name}(p={p}) in {self._caller()}")
        elif name in _SAMPLERS:
            self.sampling.append(f"{name} in {self._caller()}")
        return func(*args, **kwargs)

    def _caller(self) -> str:
        """The innermost module whose forward is on the stack (its name in the model)."""
        frame = sys._getframe(2)
        while frame is not None:
            owner = frame.f_locals.get("self")
            if isinstance(owner, nn.Module) and id(owner) in self.names:
                return self.names[id(owner)] or type(owner).__name__
            frame = frame.f_back
        return "the model"


def _as_rows(out: Any, n: int) -> torch.Tensor | None:
    t = first_tensor(out)
    if t is None:
        return None
    t = torch.nan_to_num(t.detach().float(), nan=0.0, posinf=0.0, neginf=0.0)
    return t.reshape(n, -1) if t.ndim and t.shape[0] == n else t.reshape(1, -1)


def sample_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """The largest per-row |a - b| / |a| (L2 norms; rows are samples): 0 for equal outputs."""
    if a.shape != b.shape:
        return math.nan
    scale = a.norm(dim=1).clamp_min(1e-12 * (1 + float(a.abs().max()) if a.numel() else 1))
    return float(((a - b).norm(dim=1) / scale).max()) if a.numel() else 0.0


def _forward(model: nn.Module, args: tuple, kwargs: dict, n: int) -> Any:
    """The model on fresh copies of the kept samples (a forward that edits its input in place,
    as `x /= 255`, must not make the next one differ)."""
    args, kwargs, _ = cut_batch(args, kwargs, n)
    return model(*args, **kwargs)


@torch.no_grad()
def invariance_probe(model: nn.Module, batch: tuple[tuple, dict, int]) -> tuple[dict[str, float], list[str]]:
    """In eval mode, with torch's random state forked and every module's mode given back:
    `eval_random_dev` (two forwards of the same samples, their largest per-sample relative
    difference), then either `eval_dropout_calls` / `eval_sampling_calls` (a third forward
    noting the random calls: the list of their sites is returned) or `eval_batch_dev` (the
    first half of the samples alone against the same samples inside the whole batch; NaN when
    the output has no sample dimension).

    Example::

        invariance_probe(model, cut_batch((x,), {}, 8))[0]["eval_batch_dev"]  # ~0: samples independent
    """
    args, kwargs, n = batch
    nan = math.nan
    fields = dict.fromkeys(schema.EVAL_PROBE_FIELDS, nan)
    fields["eval_probe_samples"] = float(n)
    sites: list[str] = []
    tensors = list(_tensors((args, kwargs)))
    devices = sorted({t.device.index or 0 for t in tensors if t.device.type == "cuda"})
    modes = [(m, m.training) for m in model.modules()]
    with torch.random.fork_rng(devices=devices):
        try:
            model.eval()
            first, second = (_as_rows(_forward(model, args, kwargs, n), n) for _ in range(2))
            if first is None or second is None:
                return fields, sites
            fields["eval_random_dev"] = sample_difference(first, second)
            if fields["eval_random_dev"] > SAME_OUTPUT_TOL:
                with _RandomCalls({id(m): name for name, m in model.named_modules()}) as calls:
                    _forward(model, args, kwargs, n)
                fields["eval_dropout_calls"], fields["eval_sampling_calls"] = len(calls.dropout), len(calls.sampling)
                sites = list(dict.fromkeys(calls.dropout + calls.sampling))[:8]
            elif n >= 2:
                sub_args, sub_kwargs, k = cut_batch(args, kwargs, n // 2)
                alone = _as_rows(model(*sub_args, **sub_kwargs), k)
                if alone is not None and first.shape[0] == n and alone.shape[0] == k:
                    fields["eval_batch_dev"] = sample_difference(first[:k], alone)
        finally:
            for module, training in modes:
                module.training = training
    return fields, sites


class EvalProbes:
    """A run's invariance probes (`invariance_probe`): once per split, on the first evaluation's
    first batch, and for "train" on the first training batch when the run closes. Written as
    scalars at the run's step and the manifest's `schema.EVAL_PROBES`. Off for a compiled model
    (a hook added or removed would recompile it) and under several ranks (a forward of a sharded
    model is a collective one rank alone must not start); each probe is contained (part
    `eval_probe`: one warning, the evaluation still recorded)."""

    def __init__(self, capture: Any, model: nn.Module, handles: list) -> None:
        self.capture, self.guard = capture, capture.guard
        self.done: dict[str, dict] = {}
        self.on = not capture.layers.always and not capture.distributed
        self.train = BatchGrab(self.guard, lambda m: torch.is_grad_enabled())  # a training forward
        if self.on:
            self.train.step = lambda: capture.step
            self.train.handle = model.register_forward_pre_hook(Hook(self.train, "eval_probe", BatchGrab.take),
                                                                with_kwargs=True)
            handles.append(self.train.handle)

    def grab_evaluation(self, model: nn.Module, split: str) -> BatchGrab | None:
        """A grab of the evaluation's first batch, when `split` has not been probed yet."""
        if not self.on or split in self.done or not self.guard.active("eval_probe"):
            return None
        grab = BatchGrab(self.guard, lambda m: True)
        grab.handle = model.register_forward_pre_hook(Hook(grab, "eval_probe", BatchGrab.take), with_kwargs=True)
        return grab

    def probe(self, model: nn.Module, split: str, grab: BatchGrab | None) -> None:
        """Remove `grab`'s hook; probe the batch it kept and write the results (contained)."""
        if grab is None:
            return
        grab.handle.remove()
        batch, grab.batch = grab.batch, None  # the run keeps no sample after its probe
        if batch is not None and split not in self.done:
            contained(self.guard, "eval_probe", lambda: self._write(model, split, batch), switch_off=False)

    def close(self, model: nn.Module) -> None:
        """The run closes: the padding evidence and the probe of the first training batch."""
        grab = self.train
        if not self.on or grab.batch is None:
            return
        if grab.ends:
            contained(self.guard, "eval_probe", lambda: self.capture.writer.add_scalars(grab.taken_at, {
                f"{schema.PROBE_PREFIX}train/{k}": v for k, v in grab.ends.items()}), switch_off=False)
        self.probe(model, "train", grab)

    def _write(self, model: nn.Module, split: str, batch: tuple) -> None:
        fields, sites = invariance_probe(model, batch)
        writer, step = self.capture.writer, self.capture.step
        writer.add_scalars(step, {f"{schema.PROBE_PREFIX}{split}/{k}": v for k, v in fields.items()})
        self.done[split] = {"step": step, "sites": sites}
        writer.update_manifest(**{schema.EVAL_PROBES: self.done})
