"""`hooks.watch` (defined here): attach to a model, its optimizer and its loss; record a run.

`WatchedRun` is the run's public face and owns its lifecycle: it checks the options,
writes the manifest (hooks/runinfo.py), creates the writer, registers the hooks of a
`Capture` (hooks/capture.py: the per-step state and the hook bodies), keeps every handle
in one list and removes them at `close()`. The evaluation pass is hooks/evaluate.py; the
agreement of several ranks hooks/distributed.py.
"""

from __future__ import annotations

import atexit
import dataclasses
import math
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
from hooks.amp import LossScale
from hooks.capture import Capture, register_hooks
from hooks.evaluate import Evaluation, attribute_samples, evaluate_model
from hooks.guard import Guard, contained, say
from hooks.options import WatchOptions
from hooks.positions import PositionOptions, check_tokenizer, loss_options, records_of
from hooks.probes import EvalProbes, class_agreement_probe
from hooks.shards import user_name
from hooks.tensors import task_of_loss

_WATCHED: weakref.WeakSet[nn.Module] = weakref.WeakSet()


class Metrics(dict):
    """`evaluate`'s summary metrics; a key it lacks reads NaN (an evaluation that could not
    be made has none), so `metrics["accuracy"]` in a training loop never raises."""

    def __missing__(self, key: str) -> float:
        return math.nan


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

    The run is a guest in the training: a failure of the tool's own (a hook, the disk, the
    run folder) never reaches the training loop (hooks/guard.py). When the run folder
    cannot be made, one warning says so and training goes on unrecorded (`path` is None);
    `options.strict` raises instead.

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
        self.options = options
        self._closed = False
        self._model_ref = weakref.ref(model)
        self._model: nn.Module | None = model  # kept alive while the run is open; dropped at close
        self._handles: list = []
        self._evaluations: list[dict] = []
        self._to_attribute: dict[str, tuple[int, Any]] = {}  # split: (step, `Worst` or None)
        self._positions = loss_options(loss_fn)  # the loss's ignore_index, several labels (BCE)
        self._writer: RunWriter | None = None
        self._capture: Capture | None = None
        self.guard = Guard(self._note_fault, strict=options.strict)
        self._atexit = partial(_close_at_exit, weakref.ref(self))
        options.selection.check([user_name(n) or type(model).__name__ for n, _ in model.named_modules()],
                                [user_name(n) for n, _ in model.named_parameters()])
        rank, world_size = distributed.rank_and_world_size()

        def writer_in(path: Path) -> RunWriter | None:
            manifest = runinfo.manifest(model, optimizer, loss_fn, options, name=path.name, task=options.task,
                                        wrapped_by=wrapped_by, compiled=compiled, world_size=world_size)
            return _made_or_none(options, lambda: RunWriter(path, manifest, rank=rank,
                                                            flush_every_s=options.flush_every_s))

        # rank 0 makes the (unique) run directory and its manifest; every other rank writes
        # into the same one, only once both exist (None: no rank records)
        path = _made_or_none(options, lambda: runinfo.make_run_dir(Path(options.run_dir), options.name)) \
            if rank == 0 else None
        if path is not None:
            self._writer = writer_in(path)
            path = path if self._writer is not None else None
        self.path: Path | None = distributed.broadcast_path(path) if world_size > 1 else path
        schedule, self._sync_group = distributed.make_schedule(options, world_size)  # collective: every rank
        self._schedule = schedule
        if rank != 0 and self.path is not None:
            self._writer = writer_in(self.path)
        if self._writer is None:
            return
        _install_crash_handler()
        _attach(self, model, optimizer, loss_fn, schedule, started, world_size > 1, compiled)
        atexit.register(self._atexit)

    def _note_fault(self, fault: dict) -> None:
        if self._writer is not None:
            self._writer.note_fault(fault)

    @property
    def recording(self) -> bool:
        """Whether this run records anything (False: its folder could not be made, or it is closed)."""
        return self._capture is not None and not self._closed and not self.guard.all_off

    # -- what the run is at -------------------------------------------------------------
    @property
    def step(self) -> int:
        """The current step: the number of optimizer steps taken so far (0 when unrecorded)."""
        return self._capture.step if self._capture is not None else 0

    @property
    def task(self) -> str | None:
        """"classification", "regression", or None until known."""
        return self._capture.task if self._capture is not None else self.options.task

    @property
    def every(self) -> int | str:
        """The capture schedule asked for: N, or "auto"."""
        return self.options.every

    @property
    def schedule(self) -> Any:
        """The capture schedule (hooks/schedule.py); `describe()` says what it did."""
        return self._schedule

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
        if self.recording and self.guard.active("log_batch"):
            # a batch it cannot take is skipped with one warning (strict=True raises): never the loop's end
            kept = contained(self.guard, "log_batch", lambda: _log_batch(self._capture, outputs, labels, ids, split,
                                                                         loss, self._positions), switch_off=False)
            self._positions = kept or self._positions  # float targets: several labels or not, as the first said

    def log_scalar(self, name: str, value: float, step: int | None = None) -> None:
        """Record any scalar worth plotting.

        Args:
            name: the scalar's name, e.g. "val/acc".
            value: a number or a one-element tensor.
            step: the step it belongs to (default: the current step).

        Example::

            run.log_scalar("val/acc", 0.91)
        """
        if self.recording:
            contained(self.guard, "log_scalar", lambda: self._writer.add_scalar(
                self.step if step is None else int(step), str(name),
                float(value.detach().item() if isinstance(value, torch.Tensor) else value)), switch_off=False)

    def evaluate(self, loader: Iterable, split: str = "val", embed_layer: str | None = None, attribute_worst: int = 32,
                 n_steps: int = 32, progress: bool = True, metadata: Any = None, attribute_at: str = "close",
                 ignore_index: int | None = None, tokenizer: Any = None, max_positions: int = 200_000,
                 shift_labels: bool = False) -> dict[str, float]:
        """Evaluate the model on `loader` and record one row per sample for error review.

        Records label, prediction, per-sample loss, confidence and margin (classification)
        or residual (regression), the probability vector, the embedding, input statistics,
        a preview of the input and, for the samples with the largest loss, captum
        IntegratedGradients and (with a conv layer) LayerGradCam attributions: by default of
        each split's last evaluation, when the run closes. Eval mode, no_grad, the model's
        modes and torch's random state given back: training goes on bitwise as without it.

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
            progress: show progress bars (on a terminal only).
            metadata: what you know about each sample (acquisition site, severity, ...), as
                a pandas DataFrame indexed by sample id or a dict of columns in the
                loader's order; stored as `meta_*` columns for the error review's slices.
            attribute_at: "close" (each split's last evaluation, attributed at `close()`) or
                "now" (this evaluation, during the call).
            ignore_index: position outputs ((N, C, *P) or (N, *P, C) against integer labels
                (N, *P): tokens, pixels; or BCE's (N, C) 0/1 targets, a position per label):
                a position with this label counts nowhere. Default: the watched loss's, else
                -100. A sample's record aggregates its counted positions (hooks/positions.py);
                `Run.positions(split)` has them one by one. Attributions: of the
                sample's summed loss (pixels, several labels), none for token ids.
            tokenizer: with `convert_ids_to_tokens` or `decode`: `Run.vocabulary(split)`.
            max_positions: at most this many positions stored (whole samples in loader order).
            shift_labels: a causal LM's output at t scored against label t + 1 (the last: none).

        Returns:
            Summary metrics: n, loss, and accuracy or mae (also logged as scalars
            `split/loss`, `split/accuracy`, ...). An evaluation the tool cannot make (a
            batch it cannot read) warns once and returns `Metrics()`, whose every key reads
            NaN: training goes on (strict=True raises instead). A closed run raises.

        Example::

            for epoch in range(epochs):
                train_one_epoch(...)
                run.evaluate(val_loader, split="val")
        """
        _check_evaluation(self._closed or self._model_ref() is None, attribute_worst, attribute_at, max_positions)
        check_tokenizer(tokenizer)
        positions = dataclasses.replace(self._positions, shift_labels=bool(shift_labels),
                                        **({} if ignore_index is None else {"ignore_index": int(ignore_index)}))
        options = dict(embed_layer=embed_layer, attribute_worst=attribute_worst, n_steps=n_steps, progress=progress,
                       metadata=metadata, attribute_now=attribute_at == "now", positions=positions,
                       max_positions=max_positions, tokenizer=tokenizer)
        return contained(self.guard, "evaluate", lambda: self._evaluate(loader, split, **options), default=Metrics(),
                         switch_off=False)

    def _evaluate(self, loader: Iterable, split: str, **options: Any) -> dict[str, float]:
        model = self._model_ref()
        if self._capture is None:  # an unrecorded run: the metrics, nothing written
            options["attribute_worst"] = 0
            return evaluate_model(model, loader, split, self.options.task, **options, with_previews=False).metrics()
        first = split not in {e["split"] for e in self._evaluations}
        result = _evaluate_watched(model, self._capture, self._probes, loader, split, first, options)
        self._to_attribute[split] = (self.step, result.worst)  # the split's last evaluation: attributed at close
        return _write_evaluation(self._writer, self.step, result, self._evaluations)

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
        if state == "finished" and model is not None and self._writer is not None:
            contained(self.guard, "evaluate", lambda: _attribute_last(model, self._writer, self._to_attribute),
                      switch_off=False)
            self._probes.close(model)  # the first training batch's eval-mode probes (contained)
        if model is not None:
            _WATCHED.discard(model)
        self._model = None
        capture, writer, guard = self._capture, self._writer, self.guard
        if capture is not None:  # each part on its own: what one cannot do, the next still does
            if not guard.all_off:  # a failed hand-over leaves the step's state in doubt: not handed over again
                contained(guard, "close", capture.finish, switch_off=False)
            contained(guard, "close", lambda: writer.update_manifest(
                task=capture.task, steps=capture.step, finished_at=time.time(), schedule=capture.schedule.describe()),
                switch_off=False)
            contained(guard, "close", lambda: writer.close(state), switch_off=False)
        group, self._sync_group = self._sync_group, None
        contained(guard, "close", lambda: distributed.release_group(group, self.schedule), switch_off=False)
        guard.closed = True  # the run's files are final now

    def __enter__(self) -> WatchedRun:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._finish("failed" if exc_type is not None else "finished")

    def __repr__(self) -> str:
        return f"WatchedRun(path={str(self.path)!r}, step={self.step}, every={self.every!r})"


def _attach(run: WatchedRun, model: nn.Module, optimizer: Any, loss_fn: Any, schedule: Any, started: float,
            distributed_run: bool, compiled: bool) -> None:
    """The run's `Capture` and every hook on the model, the optimizer and the loss (none left
    if one fails to register)."""
    options = run.options
    run._capture = capture = Capture(model, run._writer, schedule, options.task, distributed=distributed_run,
                                     started=started, guard=run.guard, selection=options.selection)
    if capture.task is None and isinstance(loss_fn, nn.Module):
        capture.task = task_of_loss(loss_fn)
    capture.loss_scale = LossScale(options.scaler) if options.scaler is not None else None
    capture.layers.always = compiled  # dynamo would not see hooks put on after it traced
    _WATCHED.add(model)
    try:
        register_hooks(capture, model, optimizer, loss_fn, run._handles)
        run._probes = EvalProbes(capture, model, run._handles)
    except BaseException:
        run._remove_handles()
        _WATCHED.discard(model)
        raise


def _write_evaluation(writer: RunWriter, step: int, result: Evaluation, evaluations: list[dict]) -> dict[str, float]:
    """Hand an evaluation's arrays to the writer, log its metrics and list it in the manifest."""
    split = result.split
    writer.add_samples(step, split, result.ids, result.rows, result.probs, result.embeddings, result.columns,
                       confidence=result.confidence)
    if result.position_rows is not None:
        rows = result.position_rows
        writer.add_positions(step, split, rows["sample_id"], rows["position"], rows["label"], rows["prediction"],
                             rows["loss"], rows["confidence"])
    if result.vocabulary:
        writer.add_vocabulary(step, split, list(result.vocabulary), list(result.vocabulary.values()))
    if result.preview_values is not None:
        writer.add_previews(split, result.ids, result.input_kind, result.preview_shape, result.preview_values)
    if result.attributions:
        writer.add_attributions(step, split, result.attributed_ids, result.attributed_targets, result.attributions)
    metrics = result.metrics()
    for name, value in metrics.items():
        if name != "n":
            writer.add_scalar(step, f"{split}/{name}", value)
    writer.flush()  # the samples on disk before the manifest lists them: a kill in between loses both
    evaluations.append({"split": split, "step": step, **metrics, "dataset": result.dataset(),
                        "input_kind": result.input_kind, "outputs": result.outputs,
                        **({schema.EVAL_POSITIONS: result.positions} if result.positions else {})})
    writer.update_manifest(evaluations=evaluations, task=result.task)
    return metrics


def _check_evaluation(closed: bool, attribute_worst: int, attribute_at: str, max_positions: int = 0) -> None:
    """`evaluate`'s own mistakes: raised, as a bad argument is (the evaluation itself is contained)."""
    if closed:
        raise RuntimeError("evaluate: the run is closed — call run.evaluate(...) before run.close()")
    if attribute_worst < 0:
        raise ValueError("evaluate: attribute_worst must be 0 (none) or more")
    if attribute_at not in ("close", "now"):
        raise ValueError(f"evaluate: attribute_at must be 'close' or 'now', not {attribute_at!r}")
    if not isinstance(max_positions, int) or max_positions < 0:
        raise ValueError(f"evaluate: max_positions must be 0 (none) or more, not {max_positions!r}")


def _evaluate_watched(model: nn.Module, capture: Capture, probes: EvalProbes, loader: Iterable, split: str,
                      first: bool, options: dict) -> Evaluation:
    """`WatchedRun.evaluate`'s pass with the capture hooks quiet; a split's first evaluation also
    keeps its first batch's first samples for the eval-mode probes (hooks/probes.py), run after it."""
    paused, capture.capturing = capture.capturing, False
    grab = probes.grab_evaluation(model, split)
    try:
        result = evaluate_model(model, loader, split, capture.task, **options, with_previews=first)
        probes.probe(model, split, grab)
    finally:
        capture.capturing = paused
        if grab is not None:
            grab.handle.remove()
    capture.task = result.task
    return result


def _attribute_last(model: nn.Module, writer: RunWriter, last: dict[str, tuple[int, Any]]) -> None:
    """Each split's last evaluation's worst samples, attributed now (the run closes)."""
    for split, (step, worst) in last.items():
        ids, targets, attributions = attribute_samples(model, worst)
        if attributions:
            writer.add_attributions(step, split, ids, targets, attributions)


def _log_batch(capture: Capture, outputs: Any, labels: Any, ids: Any, split: str, loss: Any,
               positions: PositionOptions) -> PositionOptions:
    """`WatchedRun.log_batch`'s work, checked first (its errors are contained there); returns
    the position options for the next batches (`records_of`)."""
    if not isinstance(outputs, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise TypeError("log_batch: outputs and labels must be tensors (pass the model's output and the targets)")
    if outputs.shape[0] != labels.shape[0]:
        raise ValueError(f"log_batch: outputs have {outputs.shape[0]} rows but labels {labels.shape[0]} — "
                         "pass matching batches")
    if ids is not None:
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        if len(ids) != outputs.shape[0]:
            raise ValueError(f"log_batch: {len(ids)} ids for {outputs.shape[0]} samples — pass one id per sample")
    if ids is not None:
        # position outputs (tokens, pixels, several labels): aggregated over each sample's counted positions
        rows, positions = records_of(outputs, labels, capture.task, positions)
        capture.handover.records.append((capture.step, split, ids, rows))
    if loss is not None and split == "train":
        capture.step_losses.append(loss.detach() if isinstance(loss, torch.Tensor) else torch.tensor(float(loss)))
    if capture.capturing and capture.first_call(schema.output_layer(split, "outputs"), "output"):
        with torch.no_grad():
            capture.record_outputs(outputs, labels, split)
    elif split != "train" and not capture.capturing and capture.first_call(split, "agreement"):
        # an evaluation between captures: its labels against the predictions, a few floats
        # (diagnostics/health/data.py, `val_label_mismatch`)
        capture.writer.add_scalars(capture.step, class_agreement_probe(outputs, labels, split))
    return positions


def _made_or_none(options: WatchOptions, make: Callable[[], Any]) -> Any:
    """`make()`, or None with one warning (training goes on unrecorded) when it fails: a run
    folder that cannot be made or written. `options.strict` raises instead."""
    try:
        return make()
    except Exception as exc:
        if options.strict:
            raise
        say(f"hookscope: cannot record this run in {str(options.run_dir)!r} ({type(exc).__name__}: {exc}); "
            "training goes on unrecorded — pass run_dir= a folder you can write to (strict=True raises instead)")
        return None


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
        try:
            run._finish("failed" if _crash["crashed"] else "finished")
        except Exception as exc:  # noqa: BLE001 -- strict runs raise in _finish; never a traceback at exit
            say(f"hookscope: closing the run at exit failed ({type(exc).__name__}: {exc})")


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
    scaler: Any = None,
    layers: str | list[str] | None = None,
    kinds: list[str] | None = None,
    strict: bool = False,
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
        optimizer: the optimizer; a step is one `optimizer.step()`. None (the loop updates
            parameters itself): a step is one training forward of the model. Several
            optimizers (a GAN): one run per model, each with its own optimizer and loss
            module: `watch(G, opt_g, crit_g, name="G")`, `watch(D, opt_d, crit_d, name="D")`.
        loss_fn: the loss module (its inputs are recorded as outputs and labels) or
            function (then call `run.log_batch`).
        run_dir: where runs are written; the run is `run_dir/name` (default name: the time).
        every: capture every N steps, or "auto" (holding `budget`).
        scaler: the loop's `torch.amp.GradScaler`: gradients are recorded unscaled, and a
            step the scaler skipped (Inf/NaN gradients) has scalar `amp_skipped` = 1.
        layers, kinds: record only these layers (names or glob patterns, "!pattern"
            excludes) and kinds (`["weight", "param_grad"]`); None: all.
        strict: raise the tool's own errors; by default a failure of the tool warns once,
            switches its part off, is listed in the run, and training goes on unchanged.
        task, config, flush_every_s, class_names, seed, budget, name: see
            `hooks.options.WatchOptions`.

    Returns:
        The `WatchedRun`; close it (or use `with`) to finish the run.

    Example::

        run = hooks.watch(model, optimizer=opt, loss_fn=criterion, run_dir="runs")
        for x, y in loader:
            opt.zero_grad(); loss = criterion(model(x), y); loss.backward(); opt.step()
        run.close()
    """
    options = WatchOptions(run_dir=run_dir, name=name, every=every, task=task, config=config,
                           flush_every_s=flush_every_s, class_names=class_names, seed=seed, budget=budget,
                           layers=layers, kinds=kinds, strict=strict, scaler=scaler)
    return WatchedRun(model, optimizer, loss_fn, options)

