"""`hooks.watch` (defined here): attach to a model, its optimizer and its loss; record a run.

Hooks registered here (all handles kept in one list, removed by `close()`):

- a forward hook on every leaf module: on capture steps, the output's summary
  (`activation`) and a tensor hook on that output for its gradient (`gradient`);
  `Tensor.register_hook` works on in-place modules where full backward hooks fail;
- a forward hook on the loss module: the loss every step, and on capture steps the
  model's outputs and the labels (`output`, `label`);
- optimizer step pre/post hooks: parameter values and gradients on capture steps
  (`weight`, `param_grad`), the learning rate of each param group, and the step count.

A step is one `optimizer.step()`. Forward passes without grad (evaluation inside the
loop) are ignored, and so are a module's second and later calls within a step (a
module used twice, or gradient accumulation): the first call of a step is recorded.
"""

from __future__ import annotations

import atexit
import dataclasses
import math
import os
import platform
import subprocess
import sys
import time
import uuid
import warnings
import weakref
from collections.abc import Callable, Iterable
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from diagnostics import schema
from diagnostics.schema import dataset_key
from diagnostics.store import RunWriter
from hooks.probes import loss_input_probe
from hooks.records import per_sample
from hooks.schedule import AutoSchedule, EverySchedule, SyncedAutoSchedule
from hooks.summarize import _fixed_sample, _native_sumsq, class_summary, summarize, unit_activity

_WATCHED: weakref.WeakSet[nn.Module] = weakref.WeakSet()
_LOSS_BATCH = 32  # losses stay on device and cross to the CPU in batches (one sync each)
# Updates are summarised on this many fixed positions of each weight (copied before the
# step): the norm of the update, hence the update ratio, is estimated within ~1-2% for
# Gaussian-like updates (0.5·sqrt(2/4096)); a copy of every weight would double memory.
UPDATE_SAMPLE = 4_096

CLASSIFICATION_LOSSES = (nn.CrossEntropyLoss, nn.NLLLoss, nn.BCEWithLogitsLoss, nn.BCELoss)
REGRESSION_LOSSES = (nn.MSELoss, nn.L1Loss, nn.SmoothL1Loss, nn.HuberLoss)


def _first_tensor(obj: Any) -> torch.Tensor | None:
    """The first tensor in a module's output: tensor, tuple/list, dict or dataclass."""
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, (list, tuple)):
        items = obj
    elif isinstance(obj, dict):
        items = obj.values()
    elif dataclasses.is_dataclass(obj):
        items = (getattr(obj, f.name) for f in dataclasses.fields(obj))
    else:
        return None
    for item in items:
        found = _first_tensor(item)
        if found is not None:
            return found
    return None


def _distributed() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _broadcast_path(path: Path | None) -> Path:
    box = [str(path) if path is not None else None]
    torch.distributed.broadcast_object_list(box, src=0)
    return Path(box[0])


def _all_reduce_max() -> tuple[Callable[[list[float]], Callable[[], list[float] | None]] | None, Any]:
    """For the synchronized schedule: `agree(values)` starts a non-blocking all-reduce
    (MAX) of a few floats and returns a poll (the result once every rank has sent its
    values, None before; raises if the collective failed). Runs on a gloo group of the
    tool's own (CPU tensors, whatever backend training uses, and never in the middle of
    training's own collectives), with a 5-minute timeout for the result nobody waits for.
    Creating the group is collective: every rank calls watch(), as for the run's path.
    Returns (agree, group), or (None, None) with a warning where no gloo group can be made."""
    dist = torch.distributed
    try:
        group = dist.new_group(backend="gloo", timeout=timedelta(minutes=5))
    except (RuntimeError, ValueError) as exc:
        warnings.warn(f"watch: no gloo process group for the ranks to agree on capture steps ({exc}); each rank "
                      "keeps its own schedule, so ranks may capture different steps. Pass every=N to align them.",
                      stacklevel=4)
        return None, None

    def agree(values: list[float]) -> Callable[[], list[float] | None]:
        t = torch.tensor(values, dtype=torch.float64)
        work = dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group, async_op=True)

        def poll() -> list[float] | None:
            if not work.is_completed():
                return None
            work.wait()  # raises if the collective failed
            return t.tolist()

        return poll

    return agree, group


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _unique_run_path(run_dir: Path, name: str | None) -> Path:
    if name is None:
        name = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:4]
    path = run_dir / name
    n = 2
    while path.exists():  # never write into (and mix with) an earlier run
        path = run_dir / f"{name}-{n}"
        n += 1
    return path


def _model_summary(model: nn.Module) -> tuple[list[dict], list[dict]]:
    modules = [
        {
            "name": name or type(model).__name__,
            "type": type(m).__name__,
            "params": sum(p.numel() for p in m.parameters(recurse=False)),
            "leaf": not any(True for _ in m.children()),
        }
        for name, m in model.named_modules()
    ]
    params = [
        {"name": n, "shape": list(p.shape), "numel": p.numel(), "requires_grad": p.requires_grad}
        for n, p in model.named_parameters()
    ]
    return modules, params


def _optimizer_groups(optimizer, names: dict) -> list[dict]:
    """Each param group's hyperparameters (numbers, bools, strings; betas as a list) and
    the names of the parameters it holds, as they are when `watch` is called."""
    groups = []
    for group in optimizer.param_groups:
        entry: dict[str, Any] = {"params": [names[p] for p in group["params"] if p in names]}
        for key, value in group.items():
            if isinstance(value, (bool, int, float, str)) and key != "params":
                entry[key] = value
            elif isinstance(value, tuple) and all(isinstance(v, (int, float)) for v in value):
                entry[key] = list(value)
            elif isinstance(value, torch.Tensor) and value.numel() == 1:  # lr as a tensor
                entry[key] = float(value)
        groups.append(entry)
    return groups


# Modules that behave differently in train mode: a forward under no_grad with one of these
# in train mode is an evaluation with dropout on (or BatchNorm updating its running stats).
_MODE_TYPES = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._BatchNorm)


class WatchedRun:
    """A run being recorded; see `hooks.watch`. Close it (or use `with`) to finish it."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        loss_fn: Callable | None,
        run_dir: str | os.PathLike,
        name: str | None,
        every: int | str,
        task: str | None,
        config: dict | None,
        flush_every_s: float,
        class_names: list[str] | None = None,
        seed: int | None = None,
        budget: float = 0.03,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"watch: model must be a torch.nn.Module, got {type(model).__name__}")
        if every != "auto" and (not isinstance(every, int) or isinstance(every, bool) or every < 1):
            raise ValueError(f"watch: every must be a positive int (capture every N steps) or 'auto', got {every!r}")
        if not 0 < budget < 1:
            raise ValueError(f"watch: budget is a fraction of training time, e.g. 0.03 for 3%; got {budget!r}")
        if task not in (None, "classification", "regression"):
            raise ValueError(f"watch: task must be 'classification', 'regression' or None (infer), got {task!r}")
        # a data-parallel wrapper's forward calls its module: watch that, so that layers and
        # parameters are named as in the user's model (conv1, not module.conv1)
        wrapped_by = None
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            wrapped_by, model = type(model).__name__, model.module
        compiled = isinstance(model, torch._dynamo.eval_frame.OptimizedModule)
        if compiled:
            warnings.warn(
                "watch: the model is torch.compile'd, so activations and their gradients are not captured "
                "(module hooks would break its graph); weights, gradients, updates, loss and outputs are. "
                "To capture activations, watch the module before compiling it, or leave it uncompiled.",
                stacklevel=3,
            )
            model = model._orig_mod  # names as the user's module has them
        if model in _WATCHED:
            raise RuntimeError("watch: this model is already watched — close the other run first (run.close())")
        self.every = every
        self.step = 0
        self._step_started = time.perf_counter()
        self._own_s = 0.0  # time the always-on hooks took in this step
        self._norm_recorded = False
        self.task = task
        self._model_ref = weakref.ref(model)
        self._model: nn.Module | None = model  # kept alive while the run is open; dropped at close
        self._handles: list = []
        self._pending: list[tuple[str, str, int, torch.Tensor]] = []
        self._seen: set[tuple[str, str]] = set()
        self._losses: list[tuple[int, torch.Tensor]] = []
        self._step_losses: list[torch.Tensor] = []
        self._closed = False
        self._capturing = True
        self._num_classes: int | None = None
        self._forward_seen = False
        self._output_shapes: dict[str, list[int]] = {}
        self._grad_squares: dict[torch.Tensor, torch.Tensor] = {}
        self._grad_norms: list[tuple[int, torch.Tensor, torch.Tensor]] = []
        self._step_ended_at: dict[int, float] = {}  # wall time of each step not yet flushed
        self._records: list[tuple[int, str, list, torch.Tensor]] = []
        self._evaluations: list[dict] = []
        self._before_step: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._sync_group = None  # the synchronized schedule's gloo group (DDP)

        rank, world_size = _distributed()
        # several ranks: gradients are averaged (DDP) after backward's per-parameter hooks
        self._distributed = world_size > 1
        # rank 0 picks the (unique) run directory; every other rank writes into the same one
        self.path = _unique_run_path(Path(run_dir), name) if rank == 0 else None
        if world_size > 1:
            self.path = _broadcast_path(self.path)
        if every != "auto":
            self.schedule = EverySchedule(every)
        elif world_size > 1:  # every rank captures the same steps
            agree, self._sync_group = _all_reduce_max()
            self.schedule = SyncedAutoSchedule(budget, agree)
        else:
            self.schedule = AutoSchedule(budget)
        modules, params = _model_summary(model)
        self._param_names = {p: n for n, p in model.named_parameters()}
        groups = _optimizer_groups(optimizer, self._param_names) if optimizer is not None else None
        held = {n for g in groups or () for n in g["params"]}
        for entry in params:
            entry["in_optimizer"] = entry["name"] in held if optimizer is not None else None
        self._mode_modules = [(n or type(model).__name__, m) for n, m in model.named_modules()
                              if isinstance(m, _MODE_TYPES) and getattr(m, "p", 1) != 0]
        self._mode_noted = False  # a no-grad forward in train mode already recorded this step
        self._mode_names_written = False
        self._probe_reset: bool | torch.Tensor | None = None  # None: no backward reached the probe this step
        self._grad_carried: list[tuple[int, torch.Tensor]] = []
        # clipping probes: a few small trainable parameters (reading them again is cheap)
        trainable = sorted((p for p in model.parameters() if p.requires_grad), key=lambda p: (p.numel() < 8, p.numel()))
        self._probes = trainable[:4]
        self._writer = RunWriter(
            self.path,
            {
                "name": self.path.name,
                "model_class": type(model).__name__,
                "wrapped_by": wrapped_by,
                "task": task,
                "modules": modules,
                "parameters": params,
                "num_parameters": sum(p["numel"] for p in params),
                "watch": {"every": every, "budget": budget if every == "auto" else None,
                          "flush_every_s": flush_every_s},
                "config": config or {},
                "class_names": list(class_names) if class_names else None,
                "seed": seed,
                "git_commit": _git_commit(),
                "cwd": os.getcwd(),
                "torch_version": torch.__version__,
                "world_size": world_size,
                "compiled": compiled,
                "python_version": platform.python_version(),
                "optimizer": type(optimizer).__name__ if optimizer is not None else None,
                "optimizer_groups": groups,
                "loss_fn": getattr(loss_fn, "__name__", type(loss_fn).__name__) if loss_fn is not None else None,
            },
            rank=rank,
            flush_every_s=flush_every_s,
        )
        _WATCHED.add(model)
        self._register(model, optimizer, loss_fn, module_hooks=not compiled)
        self._atexit = partial(_close_at_exit, weakref.ref(self))
        atexit.register(self._atexit)

    # -- registration -----------------------------------------------------------------
    def _register(self, model: nn.Module, optimizer, loss_fn, module_hooks: bool = True) -> None:
        # Hooks hold the run strongly (a run nobody keeps a name for still records and is
        # closed at exit); close() removes them, which breaks the model → run → model cycle.
        me = self
        try:
            for name, module in model.named_modules() if module_hooks else ():
                # a loss module inside the model is the loss, not a layer
                if not any(True for _ in module.children()) and not isinstance(module, nn.modules.loss._Loss):
                    label = name or type(model).__name__
                    self._handles.append(module.register_forward_hook(partial(_on_forward, me, label)))
            if isinstance(loss_fn, nn.Module):
                self._handles.append(loss_fn.register_forward_hook(partial(_on_loss, me), with_kwargs=True))
                if self.task is None:
                    if isinstance(loss_fn, CLASSIFICATION_LOSSES):
                        self.task = "classification"
                    elif isinstance(loss_fn, REGRESSION_LOSSES):
                        self.task = "regression"
            if optimizer is not None:
                for p in model.parameters() if not self._distributed else ():
                    if p.requires_grad:
                        self._handles.append(p.register_post_accumulate_grad_hook(partial(_on_grad_accumulated, me)))
                held = [p for g in optimizer.param_groups for p in g["params"]
                        if p.requires_grad and p in self._param_names]  # the optimizer may hold a replaced module's
                if held and not self._distributed:  # the smallest held parameter: is its gradient reset?
                    probe = min(held, key=lambda p: p.numel())
                    self._handles.append(probe.register_hook(partial(_on_probe_grad, me, probe)))
                self._handles.append(optimizer.register_step_pre_hook(partial(_on_step_pre, me)))
                self._handles.append(optimizer.register_step_post_hook(partial(_on_step_post, me)))
            else:
                self._handles.append(model.register_forward_pre_hook(partial(_on_model_forward, me)))
            if self._mode_modules:
                self._handles.append(model.register_forward_pre_hook(partial(_on_no_grad_forward, me)))
        except BaseException:
            self._remove_handles()
            raise

    def _remove_handles(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    # -- recording ----------------------------------------------------------------------
    def _add(self, layer: str, kind: str, count: int, vec: torch.Tensor) -> None:
        self._pending.append((layer, kind, count, vec))

    def _first_call(self, layer: str, kind: str) -> bool:
        key = (layer, kind)
        if key in self._seen:
            return False
        self._seen.add(key)
        return True

    def _record_outputs(self, outputs: torch.Tensor, labels: torch.Tensor, split: str) -> None:
        outputs, labels = outputs.detach(), labels.detach()
        task = self.task or self._infer_task(outputs, labels)
        if self.task is None:
            self.task = task
            self._writer.update_manifest(task=task)
        if task == "classification":
            if outputs.ndim >= 2 and outputs.shape[1] > 1:
                num_classes = outputs.shape[1]
                pred = outputs.argmax(dim=1)
            else:  # one logit per sample (binary)
                num_classes = 2
                pred = (outputs.reshape(labels.shape[0], -1)[:, 0] > 0).long()
            if labels.is_floating_point() and labels.ndim == outputs.ndim and labels.shape == outputs.shape and num_classes > 2:
                labels = labels.argmax(dim=1)  # soft / one-hot labels
            if self._num_classes != num_classes:
                self._num_classes = num_classes
                self._writer.update_manifest(num_classes=num_classes)
            self._add(f"{split}/class", "output", *class_summary(pred, num_classes))
            self._add(f"{split}/class", "label", *class_summary(labels.reshape(-1).long(), num_classes))
            self._add(f"{split}/logits", "output", *summarize(outputs))
        else:
            out = outputs.reshape(-1).float()
            lab = labels.reshape(-1).float()
            both = torch.cat([out, lab])
            both = both[torch.isfinite(both)]  # an Inf output must not stretch the shared span
            span = (both.min(), both.max()) if both.numel() else None
            self._add(f"{split}/value", "output", *summarize(out, hist_range=span))
            self._add(f"{split}/value", "label", *summarize(lab, hist_range=span))
        self._writer.add_scalars(self.step, loss_input_probe(outputs, labels, split))  # capture steps only

    @staticmethod
    def _infer_task(outputs: torch.Tensor, labels: torch.Tensor) -> str:
        if not labels.is_floating_point() and outputs.is_floating_point() and outputs.ndim >= 2 and outputs.shape[1] > 1:
            return "classification"
        return "regression"

    def _end_step(self, final: bool = False) -> None:
        """Hand this step's summaries to the writer and move to the next step (`final`:
        the run is closing; no schedule decision, which under DDP could start a collective
        on this rank alone)."""
        started = time.perf_counter()
        self._step_ended_at[self.step] = time.time()  # losses are written in batches: stamp each step now
        if self._probe_reset is not None:
            self._grad_carried.append((self.step, self._probe_reset))
            self._probe_reset = None
        if self._step_losses:
            loss = torch.stack([l.float() for l in self._step_losses]).mean()
            self._losses.append((self.step, loss))
            self._step_losses = []
        if self._pending:
            layers, kinds, counts, vecs = zip(*self._pending)
            matrix = np.full((len(vecs), 1 + max(v.numel() for v in vecs)), -1.0)  # histograms padded with -1
            matrix[:, 0] = counts
            devices: dict[torch.device, list[int]] = {}
            for i, v in enumerate(vecs):
                if v.device.type != "cpu":
                    devices.setdefault(v.device, []).append(i)
            for rows in devices.values():  # one transfer per device for the whole step
                moved = torch.cat([vecs[i] for i in rows]).to("cpu", torch.float64).numpy()
                start = 0
                for i in rows:
                    width = vecs[i].numel()
                    matrix[i, 1:1 + width] = moved[start:start + width]
                    start += width
            for i, v in enumerate(vecs):
                if v.device.type == "cpu":
                    matrix[i, 1:1 + v.numel()] = v.numpy()
            self._writer.add_summaries(self.step, layers, kinds, matrix)
            self._pending = []
        if max(len(self._losses), len(self._grad_norms), len(self._records)) >= _LOSS_BATCH or (
                self._capturing and (self._losses or self._grad_norms or self._records or self._grad_carried)):
            flushing = time.perf_counter()
            self._flush_losses()
            # not charged to the budget: on a GPU the transfer waits for the queued work
            # (training's own time), which would read as the tool's
            started += time.perf_counter() - flushing
        if self.step == 0 and self._output_shapes:
            self._writer.update_manifest(output_shapes=self._output_shapes)
        now = time.perf_counter()
        if not self._capturing:
            self._own_s += now - started
        if not final:
            self.schedule.record(self.step, self._capturing, now - self._step_started, self._own_s)
        self._own_s = 0.0
        self._step_started = now
        self.step += 1
        self._norm_recorded = False
        self._mode_noted = False
        self._capturing = False if final else self.schedule.should_capture(self.step)
        self._seen.clear()

    def _flush_losses(self) -> None:
        """Losses, gradient norms and per-sample records cross to the CPU in batches of steps."""
        if self._losses:
            steps, values = zip(*self._losses)
            for step, value in zip(steps, torch.stack(values).cpu().tolist()):
                self._writer.add_scalar(step, "loss", value, wall_time_s=self._step_ended_at.get(step))
            self._losses = []
        if self._records:
            rows = torch.cat([r for *_, r in self._records]).cpu().double().numpy()
            start = 0
            for step, split, ids, r in self._records:
                self._writer.add_records(step, split, ids, rows[start:start + len(ids)])
                start += len(ids)
            self._records = []
        if self._grad_norms:
            steps, produced, clipped = zip(*self._grad_norms)
            both = torch.stack([torch.stack(produced), torch.stack(clipped).float()]).cpu().tolist()
            for step, norm, was_clipped in zip(steps, *both):
                self._writer.add_scalars(step, {"grad_norm": norm, "grad_clipped": was_clipped},
                                         wall_time_s=self._step_ended_at.get(step))
            self._grad_norms = []
        if self._grad_carried:
            steps, carried = zip(*self._grad_carried)
            reset = torch.stack([torch.as_tensor(c).cpu() for c in carried])
            for step, value in zip(steps, (~reset).float().tolist()):
                self._writer.add_scalar(step, "grad_carried", value)
            self._grad_carried = []
        self._step_ended_at.clear()

    # -- public API ---------------------------------------------------------------------
    def log_batch(
        self,
        outputs: torch.Tensor,
        labels: torch.Tensor,
        ids: Any = None,
        split: str = "train",
        loss: torch.Tensor | float | None = None,
    ) -> None:
        """Record the model's outputs and labels: their distributions on capture steps,
        and with `ids` (one per sample: dataset indices or names) a per-sample record
        every step (loss, confidence, margin or residual), from which the dashboard
        builds training dynamics. Pass `loss=` when the loss is a plain function.

        Example::

            logits = model(x)
            loss = F.cross_entropy(logits, y)
            run.log_batch(logits, y, ids=batch_indices, loss=loss)
        """
        if not isinstance(outputs, torch.Tensor) or not isinstance(labels, torch.Tensor):
            raise TypeError("log_batch: outputs and labels must be tensors (pass the model's output and the targets)")
        if outputs.shape[0] != labels.shape[0]:
            raise ValueError(f"log_batch: outputs have {outputs.shape[0]} rows but labels {labels.shape[0]} — pass matching batches")
        if ids is not None:
            ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
            if len(ids) != outputs.shape[0]:
                raise ValueError(f"log_batch: {len(ids)} ids for {outputs.shape[0]} samples — pass one id per sample")
            task = self.task or self._infer_task(outputs, labels)
            self._records.append((self.step, split, ids, per_sample(outputs, labels, task)))
        if loss is not None and split == "train":
            self._step_losses.append(loss.detach() if isinstance(loss, torch.Tensor) else torch.tensor(float(loss)))
        if self._capturing and self._first_call(f"{split}/outputs", "output"):
            with torch.no_grad():
                self._record_outputs(outputs, labels, split)

    def log_scalar(self, name: str, value: float, step: int | None = None) -> None:
        """Record any scalar worth plotting (e.g. "val/acc") at the current step or `step`."""
        if isinstance(value, torch.Tensor):
            value = value.detach().item()
        self._writer.add_scalar(self.step if step is None else int(step), str(name), float(value))

    def evaluate(
        self,
        loader: Iterable,
        split: str = "val",
        embed_layer: str | None = None,
        attribute_worst: int = 32,
        n_steps: int = 32,
        progress: bool = True,
        metadata: Any = None,
    ) -> dict[str, float]:
        """Evaluate the model on `loader` and record one row per sample for error review.

        Each batch is (inputs, labels), (inputs, labels, ids) or a dict with input/label/id
        keys; without ids a sample's id is its position in the loader. A dict keyed the
        Hugging Face way (input_ids, pixel_values, ...) is passed to the model as keyword
        arguments, attention_mask and the rest included, labels and ids left out. Records label,
        prediction, per-sample loss, confidence and margin (classification) or residual
        (regression), the probability vector, the embedding (the input of the last linear
        layer, or the output of `embed_layer`), input statistics, a small preview of the
        input and, for the `attribute_worst` samples with the largest loss, captum
        IntegratedGradients and (with a conv layer) LayerGradCam attributions. The model
        runs in eval mode under no_grad and gets its mode back; torch's random state is
        restored afterwards, so training goes on bitwise as without the evaluation.
        Returns summary metrics (also logged as scalars `split/loss`, `split/accuracy`).

        `metadata`: what you know about each sample (acquisition site, severity, scan
        quality, ...), as a pandas DataFrame indexed by sample id or a dict of columns
        aligned with the loader's order; stored as `meta_*` columns, which the error
        review's slice finding uses next to the input statistics.

        Example::

            for epoch in range(epochs):
                train_one_epoch(...)
                run.evaluate(val_loader, split="val")
        """
        from tqdm.auto import tqdm

        from hooks import evaluate as ev

        model = self._model_ref()
        if self._closed or model is None:
            raise RuntimeError("evaluate: the run is closed — call run.evaluate(...) before run.close()")
        if attribute_worst < 0:
            raise ValueError("evaluate: attribute_worst must be 0 (none) or more")
        found = ev._find_module(model, embed_layer, nn.Linear)
        conv = ev._find_module(model, None, (nn.Conv2d, nn.Conv1d))
        device = next(model.parameters(), torch.zeros(())).device
        captured: dict[str, torch.Tensor] = {}

        def grab(module, args, output):
            value = args[0] if embed_layer is None and args else _first_tensor(output)
            if isinstance(value, torch.Tensor):
                captured["embedding"] = value.detach()

        handle = found[1].register_forward_hook(grab) if found else None
        was_training, paused = model.training, self._capturing
        self._capturing = False  # the training capture hooks stay quiet during evaluation
        ids_all, rows_all, probs_all, emb_all, stats_all = [], [], [], [], {}
        preview_rows, preview_shape, kind = [], None, None
        first_eval = split not in {e["split"] for e in self._evaluations}
        worst = ev._Worst(attribute_worst)
        attributions: dict[str, np.ndarray] = {}
        # A DataLoader draws its base seed from torch's global generator: fork it, so that
        # training after an evaluation is bitwise what it would have been without one.
        rng = torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])
        rng.__enter__()
        try:
            model.eval()
            batches, total = ev.iterate(loader)
            with torch.no_grad():
                for batch in tqdm(batches, total=total, desc=f"evaluate {split}", disable=not progress, leave=False):
                    x, y, ids, kwargs = ev.unpack_batch(batch, len(ids_all))
                    out = _first_tensor(ev.forward(model, x, kwargs, device))
                    y_dev = y.to(device)
                    if self.task is None:
                        self.task = self._infer_task(out, y_dev)
                    rows = per_sample(out, y_dev, self.task).cpu().double().numpy()
                    if self.task == "classification":
                        logits = out.reshape(out.shape[0], -1).float()
                        if logits.shape[1] == 1:
                            logits = torch.cat([torch.zeros_like(logits), logits], dim=1)
                        probs_all += list(torch.softmax(logits, dim=1).cpu().numpy())
                    else:
                        probs_all += [None] * len(ids)
                    emb = captured.pop("embedding", out)
                    emb_all += list(emb.reshape(emb.shape[0], -1).float().cpu().numpy())
                    kind = kind or ev.input_kind(x)
                    for name, values in ev.input_statistics(x, kind).items():
                        stats_all.setdefault(name, []).append(values)
                    if first_eval:
                        preview_shape, values = ev.previews(x, kind)
                        preview_rows.append(values)
                    worst.offer(rows[:, 2], x, y, ids)
                    ids_all += ids
                    rows_all.append(rows)
            if not ids_all:
                raise ValueError(f"evaluate: the loader for {split!r} yielded no samples")
            picked = worst.items()
            if picked:
                xs = torch.stack([item[3] for item in picked]).to(device)
                # classification: attribute the label's logit (a single logit: the logit itself)
                targets = (torch.stack([item[4] for item in picked]).reshape(len(picked), -1)[:, 0].long().to(device)
                           if self.task == "classification" and out.reshape(out.shape[0], -1).shape[1] > 1 else None)
                if xs.is_floating_point():
                    attributions = ev.attribute(model, xs, targets, kind, conv, n_steps=n_steps, progress=progress)
        finally:
            if handle is not None:
                handle.remove()
            model.train(was_training)
            self._capturing = paused
            rng.__exit__(None, None, None)
        stats = {k: np.concatenate(v) for k, v in stats_all.items()}
        stats.update(ev.metadata_columns(metadata, ids_all))
        return self._write_evaluation(split, ids_all, np.concatenate(rows_all), probs_all, emb_all, stats, kind,
                                      preview_shape, preview_rows, picked, attributions)

    def _write_evaluation(self, split, ids, rows, probs, embeddings, stats, kind, preview_shape, preview_rows,
                          picked, attributions) -> dict[str, float]:
        from hooks import evaluate as ev

        rank = self._writer.rank
        self._writer.add_table("samples", ev.samples_table(self.step, split, rank, ids, rows, probs, embeddings, stats))
        if preview_rows:
            values = np.concatenate(preview_rows).astype(np.float32)
            self._writer.add_table("previews", pa.table({
                "split": pa.array([split] * len(ids), pa.string()),
                "sample_id": pa.array([str(i) for i in ids], pa.string()),
                "kind": pa.array([kind] * len(ids), pa.string()),
                "shape": pa.array([preview_shape] * len(ids), pa.list_(pa.int32())),
                "values": pa.array(list(values), pa.list_(pa.float32())),
            }))
        if attributions:
            picked_ids = [str(item[2]) for item in picked]
            targets = [int(item[4].reshape(-1)[0]) if self.task == "classification" else -1 for item in picked]
            tables = []
            for method, arr in attributions.items():
                tables.append(pa.table({
                    "step": pa.array([self.step] * len(picked_ids), pa.int64()),
                    "split": pa.array([split] * len(picked_ids), pa.string()),
                    "sample_id": pa.array(picked_ids, pa.string()),
                    "method": pa.array([method] * len(picked_ids), pa.string()),
                    "target": pa.array(targets, pa.int64()),
                    "shape": pa.array([list(arr.shape[1:])] * len(picked_ids), pa.list_(pa.int32())),
                    "values": pa.array(list(arr.reshape(len(picked_ids), -1).astype(np.float32)), pa.list_(pa.float32())),
                }))
            self._writer.add_table("attributions", pa.concat_tables(tables))
        named = dict(zip(schema.RECORD_FIELDS, rows.T))
        metrics = {"n": float(len(ids)), "loss": float(np.nanmean(named["loss"]))}
        if self.task == "classification":
            metrics["accuracy"] = float(np.nanmean(named["correct"]))
        else:
            metrics["mae"] = float(np.nanmean(np.abs(named["residual"])))
        for name, value in metrics.items():
            if name != "n":
                self._writer.add_scalar(self.step, f"{split}/{name}", value)
        self._evaluations.append({"split": split, "step": self.step, **metrics,
                                  "dataset": dataset_key(split, ids, named["label"]), "input_kind": kind})
        self._writer.update_manifest(evaluations=self._evaluations, task=self.task)
        self._writer.flush()
        return metrics

    def close(self) -> None:
        """Remove every hook, write what is buffered and mark the run finished. Safe twice."""
        self._finish("finished")

    def _finish(self, state: str) -> None:
        if self._closed:
            return
        self._closed = True
        self._remove_handles()
        atexit.unregister(self._atexit)
        model = self._model_ref()
        if model is not None:
            _WATCHED.discard(model)
        self._param_names = {}
        self._probes = []
        self._model = None
        if self._pending or self._step_losses:
            self._end_step(final=True)
        if self._losses or self._grad_norms or self._records:
            self._flush_losses()
        self._grad_squares.clear()
        self._before_step = {}
        self._writer.update_manifest(task=self.task, steps=self.step, finished_at=time.time(),
                                     schedule=self.schedule.describe())
        self._writer.close(state)
        if self._sync_group is not None:
            group, self._sync_group = self._sync_group, None
            # tearing down a group waits for its collectives: not while an agreement another
            # rank never joined is in flight (uneven inputs), which would hold close() until
            # the collective timed out; that group is left to the process's end
            if not self.schedule.in_flight():  # the group exists for the SyncedAutoSchedule
                try:
                    torch.distributed.destroy_process_group(group)
                except Exception:  # e.g. the default group is gone already, and its subgroups with it
                    pass

    def __enter__(self) -> WatchedRun:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._finish("failed" if exc_type is not None else "finished")

    def __repr__(self) -> str:
        return f"WatchedRun(path={str(self.path)!r}, step={self.step}, every={self.every!r})"


_CRASHED = False
_previous_excepthook = sys.excepthook


def _note_crash(exc_type, exc, tb) -> None:
    # A run still open when the process dies of an unhandled exception is marked failed
    # (atexit alone cannot tell a crash from a normal end).
    global _CRASHED
    _CRASHED = True
    _previous_excepthook(exc_type, exc, tb)


sys.excepthook = _note_crash


def _close_at_exit(ref: weakref.ref[WatchedRun]) -> None:
    run = ref()
    if run is not None:
        run._finish("failed" if _CRASHED else "finished")


# -- hook bodies ------------------------------------------------------------------------
def _on_forward(run: WatchedRun, layer: str, module: nn.Module, args, output) -> None:
    if not run._capturing or not torch.is_grad_enabled():
        return
    out = _first_tensor(output)
    if out is None or not run._first_call(layer, "activation"):
        return
    count, vec = summarize(out)
    run._add(layer, "activation", count, unit_activity(out, module, vec))
    if (isinstance(module, nn.modules.batchnorm._BatchNorm) and module.training and out.ndim >= 2
            and run._first_call("batchnorm", "batch_size")):
        run._writer.add_scalars(run.step, {"batchnorm_batch_size": float(out.shape[0])})
    if run.step == 0:
        run._output_shapes[layer] = list(out.shape)
    if out.requires_grad:
        out.register_hook(partial(_on_grad, run, layer))


def _on_grad(run: WatchedRun, layer: str, grad: torch.Tensor) -> None:
    if run._first_call(layer, "gradient"):
        run._add(layer, "gradient", *summarize(grad))


def _on_loss(run: WatchedRun, module: nn.Module, args, kwargs, output) -> None:
    if not torch.is_grad_enabled():
        return
    if isinstance(output, torch.Tensor) and output.numel() == 1:
        run._step_losses.append(output.detach())
    if not run._capturing:
        return
    outputs = args[0] if args else kwargs.get("input")
    labels = args[1] if len(args) > 1 else kwargs.get("target")
    if (isinstance(outputs, torch.Tensor) and isinstance(labels, torch.Tensor)
            and run._first_call("train/outputs", "output")):
        with torch.no_grad():
            run._record_outputs(outputs, labels, "train")


def _stored_values(grad: torch.Tensor) -> torch.Tensor:
    """A gradient's values: the gradient itself, or the stored values of a sparse one
    (nn.Embedding(sparse=True): the rows the batch touched, duplicates summed)."""
    grad = grad.detach()  # detached: backward(create_graph=True) must not grow a graph here
    return grad.coalesce().values() if grad.is_sparse else grad


def _squared_norm(grad: torch.Tensor) -> torch.Tensor | float:
    """Sum of squares of a gradient: a Python float for dense CPU float32 gradients (one
    call of the native pass, hooks/_fused.c, where it was built), else a 0-d float32
    (float64 for float64/complex128) tensor on its device. Dense float32/float64
    gradients: a BLAS dot, 2.6x faster than vector_norm's reduction (0.10 vs 0.25 ms per
    2.4 M elements). Each overflows float32 where elements pass ~1e19: the norm reads inf then."""
    # one native call: a Python float, no tensor ops to dispatch (~62 a step on a ResNet)
    if (native := _native_sumsq(grad)) is not None:
        return native
    grad = _stored_values(grad)
    if grad.layout == torch.strided and grad.dtype in (torch.float32, torch.float64) and grad.is_contiguous():
        flat = grad.view(-1)
        return torch.dot(flat, flat)
    wide = grad.dtype == torch.float64 or grad.is_complex()
    return torch.linalg.vector_norm(grad, dtype=None if wide else torch.float32).real.square()


def _on_grad_accumulated(run: WatchedRun, param: torch.Tensor) -> None:
    # The gradient as backward left it (before any clipping), read while it is still in
    # cache; the last call of a step wins. Always on: its time is charged to the budget.
    started = time.perf_counter()
    run._grad_squares[param] = _squared_norm(param.grad)
    run._own_s += time.perf_counter() - started


def _on_step_pre(run: WatchedRun, optimizer, args, kwargs) -> tuple[tuple, dict] | None:
    """Before `optimizer.step()`: the gradient norm and, on capture steps, weights, gradients
    and the sample of each weight the update is measured against.

    With a closure (`optimizer.step(closure)`: LBFGS, SAM, Lightning) forward and backward
    run inside `step`, after this hook: the closure is wrapped so that this work happens
    right after its first call, when this step's gradients exist and before the optimizer
    has changed anything. The closure itself runs when and as often as the optimizer calls
    it, so training is unchanged. `args` holds the optimizer itself first.
    """
    if _nested_step(optimizer):
        return None
    closure = kwargs.get("closure", args[1] if len(args) > 1 else None)
    if not callable(closure):
        _before_update(run, optimizer)
        return None
    called = False

    def closure_then_record() -> Any:
        nonlocal called
        result = closure()
        if not called:
            called = True
            _before_update(run, optimizer)
        return result

    if "closure" in kwargs:
        return args, {**kwargs, "closure": closure_then_record}
    return (args[0], closure_then_record, *args[2:]), kwargs


def _nested_step(optimizer) -> bool:
    """Whether this step() runs inside another step() of the same optimizer: a subclass
    whose step calls super().step() runs torch's step hooks twice (once per patched
    class), which must count as one step. The caller's frame is torch's hook wrapper;
    another frame of the same code for the same optimizer further up means nesting
    (read from the stack, so an exception inside an earlier step leaves no stale state)."""
    frame = sys._getframe(2)  # 0: here, 1: the hook, 2: torch's wrapper that called it
    code = frame.f_code
    frame = frame.f_back
    while frame is not None:
        if frame.f_code is code and frame.f_locals.get("self") is optimizer:
            return True
        frame = frame.f_back
    return False


def _before_update(run: WatchedRun, optimizer) -> None:
    started = time.perf_counter()
    with torch.no_grad():
        _record_grad_norm(run)
        if not run._capturing:
            run._own_s += time.perf_counter() - started
            return
        run._before_step = {}
        for group in optimizer.param_groups:
            for p in group["params"]:
                name = run._param_names.get(p)
                if name is None:
                    continue
                run._add(name, "weight", *summarize(p))
                if p.grad is not None:
                    run._add(name, "param_grad", *summarize(_stored_values(p.grad)))
                    # the update is summarised on a fixed sample of the weight's positions:
                    # a copy of every weight would double the parameters' memory
                    flat = p.detach().reshape(-1)
                    before = _fixed_sample(flat, UPDATE_SAMPLE)  # a copy above UPDATE_SAMPLE elements
                    run._before_step[name] = (p, before.clone() if before.numel() == flat.numel() else before)


def _global_norm(squares: list) -> torch.Tensor:
    """sqrt of the sum of squared norms (Python floats and 0-d tensors, on any devices
    and of any float dtypes), as a 0-d float64 tensor: on the first tensor's device, no
    sync; on the CPU when every part is a float (math.fsum: exactly rounded)."""
    tensors = [s for s in squares if isinstance(s, torch.Tensor)]
    floats = math.fsum(s for s in squares if not isinstance(s, torch.Tensor))
    if not tensors:
        return torch.tensor(math.sqrt(floats), dtype=torch.float64)
    device = tensors[0].device
    total = torch.stack([t.to(device, torch.float64) for t in tensors]).sum() + floats
    return total.sqrt()


def _record_grad_norm(run: WatchedRun) -> None:
    """Global L2 norm of the gradients as backward produced them, and whether the loop
    clipped them: clip_grad_norm_ scales every gradient by one factor, so a probe (a few
    small parameters, fixed: choosing by value would sync with the device) whose gradient
    shrank since backward says so, for a few tiny norms instead of a second pass."""
    if run._distributed and not run._norm_recorded:
        # several ranks: backward's per-parameter hooks would see this rank's own gradient,
        # before DDP averages it; the norm is read now, from the gradient the optimizer is
        # given (after any clipping, which is then not detected: grad_clipped is NaN)
        squares = [_squared_norm(p.grad) for p in run._param_names if p.grad is not None]
        if squares:
            run._norm_recorded = True
            produced = _global_norm(squares)
            unknown = torch.full((), math.nan, device=produced.device)
            run._grad_norms.append((run.step, produced.float(), unknown))
        return
    if not run._grad_squares or run._norm_recorded:
        return
    squares = run._grad_squares
    run._grad_squares = {}
    run._norm_recorded = True  # once per step: later closure calls (LBFGS) re-run backward
    produced = _global_norm(list(squares.values()))
    probes = [p for p in run._probes if p in squares and p.grad is not None] or [next(iter(squares))]
    clipped = None
    for p in probes:
        if p.grad is None:
            continue
        shrank = _squared_norm(p.grad) < squares[p] * (1 - 2e-4)
        clipped = shrank if clipped is None else clipped | shrank
    if not isinstance(clipped, torch.Tensor):  # None, or a bool from Python floats
        clipped = torch.tensor(bool(clipped), device=produced.device)
    run._grad_norms.append((run.step, produced.float(), clipped))


def _on_step_post(run: WatchedRun, optimizer, args, kwargs) -> None:
    if _nested_step(optimizer):
        return
    started = time.perf_counter()
    groups = optimizer.param_groups
    lrs = {("lr" if len(groups) == 1 else f"lr/group{i}"): g["lr"] for i, g in enumerate(groups) if "lr" in g}
    run._writer.add_scalars(run.step, {k: float(v) for k, v in lrs.items()})
    with torch.no_grad():
        _record_grad_norm(run)  # a closure the optimizer never called: the norm lands on this step
        run._grad_squares = {}
        for name, (p, before) in run._before_step.items():
            after = _fixed_sample(p.detach().reshape(-1), UPDATE_SAMPLE)
            if after.dtype in (torch.float16, torch.bfloat16):  # subtract in float32; float64 stays
                after, before = after.float(), before.float()
            # count: the tensor's size, so that sqrt(count·(std² + mean²)) estimates its norm
            run._add(name, "update", p.numel(), summarize(after - before, sampled=True)[1])
    run._before_step = {}
    if not run._capturing:
        run._own_s += time.perf_counter() - started
    run._end_step()


def _on_probe_grad(run: WatchedRun, param: torch.Tensor, grad: torch.Tensor) -> None:
    """Each backward reaching the probe on a capture step, before its gradient accumulates:
    was its .grad reset (None or all zero)? A step none of whose backwards found it reset
    carries the previous step's gradient (no zero_grad). Several backwards per step
    (micro-batches, a GAN's two losses) count as reset when any one found it so. Kept as
    a device tensor (no sync); the hook returns None, so the gradient is unchanged."""
    if not run._capturing or run._probe_reset is True:
        return None
    old = param.grad
    reset = True if old is None else ~(_stored_values(old) != 0).any()
    run._probe_reset = reset if run._probe_reset is None or reset is True else run._probe_reset | reset
    return None


def _on_no_grad_forward(run: WatchedRun, module: nn.Module, args) -> None:
    # A forward under no_grad (the user's own validation) while dropout / BatchNorm train:
    # recorded once per step as the count of such modules, their names once in the manifest.
    if torch.is_grad_enabled() or run._mode_noted:
        return
    on = [name for name, m in run._mode_modules if m.training]
    if not on:
        return
    run._mode_noted = True
    run._writer.add_scalars(run.step, {"no_grad_forward_train_mode": float(len(on))})
    if not run._mode_names_written:
        run._mode_names_written = True
        run._writer.update_manifest(no_grad_forward_train_mode=on)


def _on_model_forward(run: WatchedRun, module: nn.Module, args) -> None:
    # Without an optimizer a step is one training forward of the whole model.
    if not torch.is_grad_enabled():
        return
    if run._forward_seen:
        run._end_step()
    run._forward_seen = True


def watch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    loss_fn: Callable | None = None,
    run_dir: str | os.PathLike = "runs",
    name: str | None = None,
    every: int | str = "auto",
    task: str | None = None,
    config: dict | None = None,
    flush_every_s: float = 5.0,
    class_names: list[str] | None = None,
    seed: int | None = None,
    budget: float = 0.03,
) -> WatchedRun:
    """Attach diagnostics hooks to existing training; returns the run being recorded.

    Captures on a schedule: `every="auto"` (default) holds the capture overhead near
    `budget` (3%) of training time, capturing steps 0, 1, 2, 4, 8, ... and as many more
    as the budget allows; `every=N` captures every N optimizer steps. A capture records
    activations, their gradients, weights, parameter gradients and updates of every
    layer, and the model's outputs against the labels; the loss, learning rates and
    global gradient norm are recorded on every step. Training results are unchanged.
    `config` (any JSON-able dict) and `class_names` are kept in the run's manifest, with
    `seed` (if you pass the one you used), the git commit of the working directory, the
    model summary and torch/python versions. Data is flushed to `run_dir/name` every
    `flush_every_s` seconds.

    Example::

        run = hooks.watch(model, optimizer=opt, loss_fn=criterion, run_dir="runs")
        for x, y in loader:
            opt.zero_grad(); loss = criterion(model(x), y); loss.backward(); opt.step()
        run.close()
    """
    return WatchedRun(model, optimizer, loss_fn, run_dir, name, every, task, config, flush_every_s, class_names, seed, budget)
