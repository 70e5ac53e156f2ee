"""`hooks.watch` (defined here): attach to a model, its optimizer and its loss; record a run.

`WatchedRun` is the run's public face and owns its lifecycle: it checks the options,
writes the manifest (hooks/runinfo.py), creates the writer, registers the hooks of a
`Capture` (hooks/capture.py: the per-step state and the hook bodies), keeps every handle
in one list and removes them at `close()`. The evaluation pass is hooks/evaluate.py; the
agreement of several ranks hooks/distributed.py.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diagnostics import schema
from diagnostics.writer import RunWriter
from hooks import distributed, runinfo
from hooks.capture import Capture, register_hooks
from hooks.evaluate import Evaluation, evaluate_model
from hooks.options import WatchOptions
from hooks.records import per_sample
from hooks.tensors import infer_task, task_of_loss

_WATCHED: weakref.WeakSet[nn.Module] = weakref.WeakSet()


def _unwrap(model: nn.Module) -> tuple[nn.Module, str | None, bool]:
    """(the module to watch, the data-parallel wrapper's class name or None, compiled).

    A data-parallel wrapper's forward calls its module, and so does `torch.compile`'s
    wrapper (OptimizedModule): watch that module, so that layers and parameters are named
    as in the user's model (conv1, not module.conv1 or _orig_mod.conv1). `model.compile()`
    compiles in place: the module is the one to watch. Either way its hooks are traced into
    the compiled graph (hooks/compiled.py says how a capture step stays one graph).
    """
    wrapped_by = None
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        wrapped_by, model = type(model).__name__, model.module
    # no OptimizedModule exists before torch._dynamo is imported (a second's import: not for watch)
    dynamo = sys.modules.get("torch._dynamo")
    compiled = dynamo is not None and isinstance(model, dynamo.eval_frame.OptimizedModule)
    if compiled:
        model = model._orig_mod
    compiled = compiled or getattr(model, "_compiled_call_impl", None) is not None
    return model, wrapped_by, compiled


class WatchedRun:
    """A run being recorded; see `hooks.watch`. Close it (or use `with`) to finish it.

    Args:
        model: the model to watch (a DDP/DataParallel wrapper or a compiled module is
            unwrapped, so that names are the user's).
        optimizer: the optimizer whose `step()` counts steps, or None (then a step is one
            training forward of the model).
        loss_fn: the loss module (its inputs are the outputs and labels) or function.
        options: what to record and where (`hooks.options.WatchOptions`).

    Example::

        with WatchedRun(model, opt, criterion, WatchOptions(run_dir="runs")) as run:
            train(model)
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None, loss_fn: Callable | None,
                 options: WatchOptions) -> None:
        started = time.perf_counter()
        if not isinstance(model, nn.Module):
            raise TypeError(f"watch: model must be a torch.nn.Module, got {type(model).__name__}")
        options.validate()
        model, wrapped_by, compiled = _unwrap(model)
        if model in _WATCHED:
            raise RuntimeError("watch: this model is already watched — close the other run first (run.close())")
        _install_crash_handler()
        self.options = options
        self._closed = False
        self._model_ref = weakref.ref(model)
        self._model: nn.Module | None = model  # kept alive while the run is open; dropped at close
        self._handles: list = []
        self._evaluations: list[dict] = []
        rank, world_size = distributed.rank_and_world_size()
        # rank 0 picks the (unique) run directory; every other rank writes into the same one
        path = runinfo.unique_run_path(Path(options.run_dir), options.name) if rank == 0 else None
        self.path: Path = distributed.broadcast_path(path) if world_size > 1 else path
        schedule, self._sync_group = distributed.make_schedule(options, world_size)
        manifest = runinfo.manifest(model, optimizer, loss_fn, options, name=self.path.name, task=options.task,
                                    wrapped_by=wrapped_by, compiled=compiled, world_size=world_size)
        self._writer = RunWriter(self.path, manifest, rank=rank, flush_every_s=options.flush_every_s)
        self._capture = Capture(model, self._writer, schedule, options.task, distributed=world_size > 1,
                                started=started)
        if self._capture.task is None and isinstance(loss_fn, nn.Module):
            self._capture.task = task_of_loss(loss_fn)
        _WATCHED.add(model)
        try:
            register_hooks(self._capture, model, optimizer, loss_fn, self._handles)
        except BaseException:
            self._remove_handles()
            raise
        self._atexit = partial(_close_at_exit, weakref.ref(self))
        atexit.register(self._atexit)

    # -- what the run is at -------------------------------------------------------------
    @property
    def step(self) -> int:
        """The current step: the number of optimizer steps taken so far."""
        return self._capture.step

    @property
    def task(self) -> str | None:
        """"classification", "regression", or None until known."""
        return self._capture.task

    @property
    def every(self) -> int | str:
        """The capture schedule asked for: N, or "auto"."""
        return self.options.every

    @property
    def schedule(self) -> Any:
        """The capture schedule (hooks/schedule.py); `describe()` says what it did."""
        return self._capture.schedule

    def _remove_handles(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

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
        and with `ids` a per-sample record every step (loss, confidence, margin or
        residual), from which the dashboard builds training dynamics.

        Args:
            outputs: the model's outputs for the batch (N × ...).
            labels: the batch's labels or targets (N × ...).
            ids: one id per sample (dataset indices or names), or None.
            split: the split the batch comes from.
            loss: the batch's loss, when the loss is a plain function (not a watched module).

        Example::

            logits = model(x)
            loss = F.cross_entropy(logits, y)
            run.log_batch(logits, y, ids=batch_indices, loss=loss)
        """
        if not isinstance(outputs, torch.Tensor) or not isinstance(labels, torch.Tensor):
            raise TypeError("log_batch: outputs and labels must be tensors (pass the model's output and the targets)")
        if outputs.shape[0] != labels.shape[0]:
            raise ValueError(f"log_batch: outputs have {outputs.shape[0]} rows but labels {labels.shape[0]} — "
                             "pass matching batches")
        if ids is not None:
            ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
            if len(ids) != outputs.shape[0]:
                raise ValueError(f"log_batch: {len(ids)} ids for {outputs.shape[0]} samples — pass one id per sample")
        capture = self._capture
        if ids is not None:
            task = capture.task or infer_task(outputs, labels)
            capture.handover.records.append((capture.step, split, ids, per_sample(outputs, labels, task)))
        if loss is not None and split == "train":
            capture.step_losses.append(loss.detach() if isinstance(loss, torch.Tensor) else torch.tensor(float(loss)))
        if capture.capturing and capture.first_call(schema.output_layer(split, "outputs"), "output"):
            with torch.no_grad():
                capture.record_outputs(outputs, labels, split)

    def log_scalar(self, name: str, value: float, step: int | None = None) -> None:
        """Record any scalar worth plotting.

        Args:
            name: the scalar's name, e.g. "val/acc".
            value: a number or a one-element tensor.
            step: the step it belongs to (default: the current step).

        Example::

            run.log_scalar("val/acc", 0.91)
        """
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

        Records label, prediction, per-sample loss, confidence and margin (classification)
        or residual (regression), the probability vector, the embedding, input statistics,
        a small preview of the input and, for the samples with the largest loss, captum
        IntegratedGradients and (with a conv layer) LayerGradCam attributions. The model
        runs in eval mode under no_grad and gets its mode back; torch's random state is
        restored afterwards, so training goes on bitwise as without the evaluation.

        Args:
            loader: batches of (inputs, labels), (inputs, labels, ids) or a dict with
                input/label/id keys; without ids a sample's id is its position in the
                loader. A dict keyed the Hugging Face way (input_ids, pixel_values, ...)
                is passed to the model as keyword arguments, labels and ids left out.
            split: the split's name ("val", "test", ...).
            embed_layer: the module whose output is the embedding (default: the input of
                the last linear layer).
            attribute_worst: how many of the largest-loss samples get attributions (0: none).
            n_steps: IntegratedGradients' steps.
            progress: show progress bars.
            metadata: what you know about each sample (acquisition site, severity, ...), as
                a pandas DataFrame indexed by sample id or a dict of columns in the
                loader's order; stored as `meta_*` columns for the error review's slices.

        Returns:
            Summary metrics: n, loss, and accuracy or mae (also logged as scalars
            `split/loss`, `split/accuracy`, ...).

        Example::

            for epoch in range(epochs):
                train_one_epoch(...)
                run.evaluate(val_loader, split="val")
        """
        model = self._model_ref()
        if self._closed or model is None:
            raise RuntimeError("evaluate: the run is closed — call run.evaluate(...) before run.close()")
        if attribute_worst < 0:
            raise ValueError("evaluate: attribute_worst must be 0 (none) or more")
        capture = self._capture
        paused, capture.capturing = capture.capturing, False  # the capture hooks stay quiet meanwhile
        try:
            result = evaluate_model(model, loader, split, capture.task, embed_layer=embed_layer,
                                    attribute_worst=attribute_worst, n_steps=n_steps, progress=progress,
                                    metadata=metadata,
                                    with_previews=split not in {e["split"] for e in self._evaluations})
        finally:
            capture.capturing = paused
        capture.task = result.task
        return self._write_evaluation(result)

    def _write_evaluation(self, result: Evaluation) -> dict[str, float]:
        writer, step, split = self._writer, self.step, result.split
        writer.add_samples(step, split, result.ids, result.rows, result.probs, result.embeddings, result.columns)
        if result.preview_values is not None:
            writer.add_previews(split, result.ids, result.input_kind, result.preview_shape, result.preview_values)
        if result.attributions:
            writer.add_attributions(step, split, result.attributed_ids, result.attributed_targets,
                                    result.attributions)
        metrics = result.metrics()
        for name, value in metrics.items():
            if name != "n":
                writer.add_scalar(step, f"{split}/{name}", value)
        writer.flush()  # the samples on disk before the manifest lists them: a kill in between loses both
        self._evaluations.append({"split": split, "step": step, **metrics, "dataset": result.dataset(),
                                  "input_kind": result.input_kind})
        writer.update_manifest(evaluations=self._evaluations, task=result.task)
        return metrics

    def close(self) -> None:
        """Remove every hook, write what is buffered and mark the run finished. Safe twice.

        Example::

            run = hooks.watch(model, optimizer=opt, loss_fn=criterion)
            ...
            run.close()
        """
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
        self._model = None
        capture = self._capture
        capture.finish()
        self._writer.update_manifest(task=capture.task, steps=capture.step, finished_at=time.time(),
                                     schedule=capture.schedule.describe())
        self._writer.close(state)
        group, self._sync_group = self._sync_group, None
        distributed.release_group(group, capture.schedule)

    def __enter__(self) -> WatchedRun:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._finish("failed" if exc_type is not None else "finished")

    def __repr__(self) -> str:
        return f"WatchedRun(path={str(self.path)!r}, step={self.step}, every={self.every!r})"


# A run still open when the process dies of an unhandled exception is marked failed
# (atexit alone cannot tell a crash from a normal end): the first watch() chains a hook
# in front of sys.excepthook that notes the crash.
_crash = {"installed": False, "crashed": False}


def _install_crash_handler() -> None:
    if _crash["installed"]:
        return
    _crash["installed"] = True
    previous = sys.excepthook

    def note_crash(exc_type, exc, tb) -> None:
        _crash["crashed"] = True
        previous(exc_type, exc, tb)

    sys.excepthook = note_crash
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _exit_on_sigterm)  # a handler of the user's own is left alone


def _exit_on_sigterm(signum, frame) -> None:
    """SIGTERM (kill, a job scheduler's stop) unwinds like Ctrl-C: `with` blocks and atexit
    close the open runs, flushed and marked failed, and the process exits with 143."""
    _crash["crashed"] = True
    raise SystemExit(128 + signum)


def _close_at_exit(ref: weakref.ref[WatchedRun]) -> None:
    run = ref()
    if run is not None:
        run._finish("failed" if _crash["crashed"] else "finished")


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

    Args:
        model: the model (a DDP/DataParallel wrapper or compiled module is fine).
        optimizer: the optimizer; a step is one `optimizer.step()`.
        loss_fn: the loss module (its inputs are recorded as outputs and labels) or
            function (then call `run.log_batch`).
        run_dir: where runs are written; the run is `run_dir/name`.
        name: the run's name (default: generated from the time).
        every: capture every N steps, or "auto".
        task: "classification", "regression" or None (inferred).
        config: any JSON-able dict, kept in the manifest (with the git commit, the model
            summary and the torch/python versions).
        flush_every_s: seconds between flushes to disk.
        class_names: the classes' names, kept in the manifest.
        seed: the seed you used, kept in the manifest.
        budget: with every="auto", the share of training time captures may take.

    Returns:
        The `WatchedRun`; close it (or use `with`) to finish the run.

    Example::

        run = hooks.watch(model, optimizer=opt, loss_fn=criterion, run_dir="runs")
        for x, y in loader:
            opt.zero_grad(); loss = criterion(model(x), y); loss.backward(); opt.step()
        run.close()
    """
    options = WatchOptions(run_dir=run_dir, name=name, every=every, task=task, config=config,
                           flush_every_s=flush_every_s, class_names=class_names, seed=seed, budget=budget)
    return WatchedRun(model, optimizer, loss_fn, options)

