"""PyTorch Lightning integration: `DiagnosticsCallback` records `Trainer.fit` as a run.

    from hooks.lightning import DiagnosticsCallback
    trainer = Trainer(callbacks=[DiagnosticsCallback(run_dir="runs", name="exp1")])

Lightning is imported here only; `import hooks` never imports it.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import sys
import warnings
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

if importlib.util.find_spec("lightning") is None:
    raise ImportError('hooks.lightning needs PyTorch Lightning: pip install "hookscope[lightning]"')

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from hooks.amp import LossScale
from hooks.evaluate import ID_KEYS, INPUT_KEYS, LABEL_KEYS
from hooks.guard import Guard, Hook
from hooks.handover import LOSS_BATCH
from hooks.options import WatchOptions
from hooks.tensors import first_tensor, task_of_loss
from hooks.watcher import WatchedRun

__all__ = ["DiagnosticsCallback"]

class DiagnosticsCallback(pl.Callback):
    """Records `trainer.fit(...)` with `hooks.watch`: one run per fit, in `run_dir/name`.

    Args:
        run_dir, name, every, task, config, flush_every_s, class_names, seed, budget, layers,
            kinds, strict: as for `hooks.watch` (one `hooks.options.WatchOptions` holds them).
        evaluate: after fit, `run.evaluate` on the validation dataloader (split "val").
        loss_key: the key of `training_step`'s returned dict that holds the loss.
        shift_labels: whether the module is a causal LM whose labels are its inputs (evaluate
            scores position t's output against label t + 1); None: when it holds one of
            transformers' causal LMs.

    The run being recorded is `callback.run` (a `WatchedRun`) from the start of training.

    The LightningModule is the watched model and `trainer.optimizers[0]` the watched
    optimizer: a step is one `optimizer.step()`, whatever Lightning's batch count says.
    Every rank records its own stream into the same run (DDP).

    - Loss: what `training_step` returns (the tensor, or `outputs[loss_key]` of a dict),
      recorded as scalar `loss` on the optimizer step it belongs to. With gradient
      accumulation, a step's loss is the mean of its micro-batches' losses (undoing
      Lightning's division by `accumulate_grad_batches`); with manual optimisation, the
      losses of the batches since the last `opt.step()` are averaged onto the last step
      taken; a batch that stepped no optimizer carries its loss into the next step. Only
      `trainer.optimizers[0]` is watched.
    - precision="16-mixed": the precision plugin's GradScaler is passed to `watch(scaler=)`:
      gradients are recorded unscaled, and a step the scaler skipped is a step with scalar
      `amp_skipped` = 1 and its batches' loss, which health leaves out.
    - Outputs and labels: if the LightningModule holds exactly one `nn.Module` loss (e.g.
      `self.criterion = nn.CrossEntropyLoss()`), its inputs are recorded as the model's
      outputs and labels; and when the training batches carry sample ids ((inputs,
      labels, ids), or a dict with an id/ids/sample_id/index key: a dataset that returns them),
      a per-sample record on every step (`r.records(split="train")`: the training
      dynamics). Otherwise call `callback.run.log_batch(logits, y, ids=...)` from
      `training_step` (without `loss=`: the callback records the loss).
    - Validation: at `on_validation_end` (skipping the sanity check), every entry of
      `trainer.callback_metrics` that this validation logged, under its own name
      (`val_loss`, `val/acc`, ...).
    - `evaluate=True`: after fit, `run.evaluate` on the validation dataloader(s) Lightning
      used (split "val"; "val_1", ... or the dict's keys for more). Its batches must be
      (inputs, labels), (inputs, labels, ids) or a dict with input/label/id keys, and
      `pl_module(inputs)` must return the outputs; a dict keyed the Hugging Face way
      (input_ids, attention_mask, labels, ...) is passed as `pl_module(**batch)` without
      its labels. Batches without labels (`x`, `(x,)`, a dict without a label key) of a
      module trained on a reconstruction loss (its one `nn.MSELoss` between
      `forward(x)` and `x`: an autoencoder) are scored against their input: per sample,
      the mean squared error (regression records); other unlabelled batches are skipped
      with one info line. Token outputs are scored per position (labels -100 not counted;
      a causal LM's shifted, `shift_labels`), and a module's `tokenizer` attribute names
      the tokens the pages show. If the evaluation fails, a warning says why and the run
      still finishes.
    - The run is closed at `on_fit_end`, or marked failed at `on_exception`; either way
      every hook is removed. `config` defaults to the module's `hparams`, `seed` to the
      one `seed_everything` set.

    Example::

        cb = DiagnosticsCallback(run_dir="runs", name="digits")
        Trainer(max_epochs=3, callbacks=[cb]).fit(model, train_loader, val_loader)
        diagnostics.open_run(cb.run.path)
    """

    def __init__(
        self,
        *,
        run_dir: str | os.PathLike = "runs",
        name: str | None = None,
        every: int | str = "auto",
        task: str | None = None,
        config: dict | None = None,
        flush_every_s: float = 5.0,
        class_names: list[str] | None = None,
        seed: int | None = None,
        budget: float = 0.03,
        layers: str | list[str] | None = None,
        kinds: list[str] | None = None,
        strict: bool = False,
        evaluate: bool = True,
        loss_key: str = "loss",
        shift_labels: bool | None = None,
    ) -> None:
        self.watch_options = WatchOptions(run_dir=run_dir, name=name, every=every, task=task, config=config,
                                          flush_every_s=flush_every_s, class_names=class_names, seed=seed,
                                          budget=budget, layers=layers, kinds=kinds, strict=strict)
        self.evaluate = evaluate
        self.loss_key = loss_key
        self.shift_labels = shift_labels
        self._shift = bool(shift_labels)  # this fit's module: a causal LM (evaluate shifts its labels)
        self.run: WatchedRun | None = None  # the run of the current (or last) fit
        self._recording = False
        self._handles: list = []
        self._batch_losses: list[torch.Tensor] = []  # losses of batches since the last optimizer step
        self._step_losses: list[tuple[int, torch.Tensor]] = []  # (step, loss) not yet on the CPU
        self._step_at_batch_start = 0
        self._batch_ids: list | None = None  # the current training batch's sample ids, if it has them
        self._metrics_before: dict[str, Any] = {}
        self._loss_scale: LossScale | None = None  # precision="16-mixed": which steps the scaler skipped
        self._step_after_skip = 0
        self._batch_input: torch.Tensor | None = None  # the current training batch's input, if it has no labels
        self._forward_output = 0  # id() of the module's last output on an unlabelled batch
        self._reconstruction = False  # the loss compared the module's output with its input (MSE)

    # -- attach and detach --------------------------------------------------------------

    @property
    def guard(self) -> Guard:
        """The run's containment (hooks/guard.py): a failure in this callback's hooks never
        reaches training."""
        return self.run.guard if self.run is not None else _IDLE
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        options = self.watch_options
        losses = [m for m in pl_module.modules() if isinstance(m, nn.modules.loss._Loss)]
        loss_module = losses[0] if len(losses) == 1 else None
        if options.task is None and loss_module is not None:
            options = dataclasses.replace(options, task=task_of_loss(loss_module))
        if options.config is None and pl_module.hparams:
            options = dataclasses.replace(options, config=dict(pl_module.hparams))
        if options.seed is None and os.environ.get("PL_GLOBAL_SEED", "").lstrip("-").isdigit():
            options = dataclasses.replace(options, seed=int(os.environ["PL_GLOBAL_SEED"]))
        optimizer = trainer.optimizers[0] if trainer.optimizers else None
        scaler = getattr(trainer.precision_plugin, "scaler", None)  # precision="16-mixed": gradients scaled
        options = dataclasses.replace(options, scaler=scaler)
        self._loss_scale = LossScale(scaler) if scaler is not None else None
        self._step_after_skip = 0
        self._batch_losses, self._step_losses = [], []
        self._batch_input, self._forward_output, self._reconstruction = None, 0, False
        self._shift = self.shift_labels if self.shift_labels is not None else holds_causal_lm(pl_module)
        try:
            # Lightning calls optimizer.step(closure): watch wraps the closure so that its step
            # hooks run right after it (Capture.on_step_pre) and see this step's gradients
            if loss_module is not None:
                self._handles.append(loss_module.register_forward_hook(Hook(self, "loss", _on_loss_module)))
                self._handles.append(pl_module.register_forward_hook(Hook(self, "loss", _on_module_output)))
            self.run = WatchedRun(pl_module, optimizer, None, options)
            self._recording = True
        except BaseException:
            self._remove_handles()
            raise

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._recording:
            return
        self._flush_losses()
        loaders = trainer.val_dataloaders
        if self.evaluate and loaders is not None:
            self._evaluate(loaders, progress=trainer.progress_bar_callback is not None,
                           tokenizer=getattr(pl_module, "tokenizer", None))
        self._remove_handles()
        self._recording = False
        self.run.close()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if not self._recording:
            return
        self._remove_handles()
        self._recording = False
        try:
            self._flush_losses()
        finally:
            self.run.__exit__(type(exception), exception, exception.__traceback__)  # state "failed"

    def _remove_handles(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    # -- the loss, on the step it belongs to -----------------------------------------------
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self._recording:
            # a step the scaler skipped is ended by the run during this batch's backward
            self._step_at_batch_start = max(self.run.step, self._step_after_skip)
            self._batch_ids = _sample_ids(batch)
            self._batch_input = unlabelled_input(batch)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not self._recording or not self.run.recording:  # unrecorded, or switched off: hold no loss
            self._batch_losses.clear()
            return
        loss = outputs.get(self.loss_key) if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor) and loss.numel() == 1:
            loss = loss.detach().float().reshape(())
            if pl_module.automatic_optimization and self.loss_key == "loss":
                loss = loss * trainer.accumulate_grad_batches  # Lightning divided it for the backward
            self._batch_losses.append(loss)
        # The optimizer's post-step hook has already advanced run.step: the step this batch
        # finished is run.step - 1.
        stepped = self.run.step > self._step_at_batch_start
        if self._loss_scale is not None:
            self._loss_scale.stepped = stepped
        if self._loss_scale is not None and self._loss_scale.skipped_step():
            # the scaler skipped this batch's step: the run ends it as step run.step (amp_skipped)
            if self._batch_losses:
                self._step_losses.append((self.run.step, torch.stack(self._batch_losses).mean()))
                self._batch_losses = []
            self._step_after_skip = self.run.step + 1
        if stepped and self._batch_losses:
            self._step_losses.append((self.run.step - 1, torch.stack(self._batch_losses).mean()))
            self._batch_losses = []
        if len(self._step_losses) >= LOSS_BATCH:
            self._flush_losses()

    def _flush_losses(self) -> None:
        if self._step_losses:
            steps, values = zip(*self._step_losses)
            for step, value in zip(steps, torch.stack(values).cpu().tolist()):
                self.run.log_scalar("loss", value, step=step)
            self._step_losses = []

    # -- validation metrics ------------------------------------------------------------
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._recording and not trainer.sanity_checking:
            self._metrics_before = dict(trainer.callback_metrics)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Not on_validation_epoch_end: Lightning stores the epoch's reduced values, and those
        # the module logs in its own on_validation_epoch_end, only after the callbacks' hook.
        if not self._recording or trainer.sanity_checking:
            return
        self._flush_losses()
        for name, value in trainer.callback_metrics.items():
            # a value this validation logged is a new tensor, even if equal to the last one
            if self._metrics_before.get(name) is not value and _is_scalar(value):
                self.run.log_scalar(name, value)
        self._metrics_before = {}

    # -- the per-sample evaluation after fit -----------------------------------------------
    def _evaluate(self, loaders: Any, progress: bool, tokenizer: Any) -> None:
        if isinstance(loaders, dict):
            named = {f"val_{key}" if len(loaders) > 1 else "val": loader for key, loader in loaders.items()}
        elif isinstance(loaders, (list, tuple)):
            named = {("val" if i == 0 else f"val_{i}"): loader for i, loader in enumerate(loaders)}
        else:
            named = {"val": loaders}
        skipped = []
        if not hasattr(tokenizer, "convert_ids_to_tokens") and not hasattr(tokenizer, "decode"):
            tokenizer = None  # a module's `tokenizer` attribute names the tokens when it can
        for split, loader in named.items():
            batches = self._evaluation_batches(loader)
            if batches is None:
                skipped.append(split)
                continue
            try:
                # a reconstruction has no one output to attribute (captum needs a target)
                self.run.evaluate(batches, split=split, progress=progress, shift_labels=self._shift,
                                  attribute_worst=0 if isinstance(batches, Reconstructions) else 32,
                                  tokenizer=tokenizer)
            except Exception as exc:  # training succeeded: keep its run, say what to change
                warnings.warn(
                    f"DiagnosticsCallback: the per-sample evaluation of {split!r} after fit failed ({exc}). "
                    "It needs batches of (inputs, labels), (inputs, labels, ids) or a dict with input/label/id keys, "
                    "and a LightningModule whose forward(inputs) returns the outputs; or pass evaluate=False.",
                    stacklevel=2,
                )
        if skipped:  # nothing failed: there is nothing per sample to score (no labels, no reconstruction)
            rank_zero_info(f"DiagnosticsCallback: no per-sample evaluation of {', '.join(map(repr, skipped))}: its "
                           "batches carry no labels and the module's loss is no nn.MSELoss between forward(inputs) "
                           "and the inputs; give the batches labels for one, or pass evaluate=False.")

    def _evaluation_batches(self, loader: Iterable) -> Iterable | None:
        """`loader` for `run.evaluate`; batches without labels scored against their input when
        training's loss was a reconstruction (`Reconstructions`), else None: nothing to score."""
        first = next(iter(loader), None)
        if first is None or unlabelled_input(first) is None:
            return loader  # labelled (or empty: evaluate says so)
        return Reconstructions(loader) if self._reconstruction else None


class Reconstructions:
    """An unlabelled loader's batches with their input as the label, for an autoencoder:
    `run.evaluate` then records per sample the mean squared error between
    `forward(inputs)` and the inputs (regression records), what `nn.MSELoss` averages."""

    def __init__(self, loader: Iterable) -> None:
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]  # TypeError without one: evaluate shows no total

    def __iter__(self) -> Iterator[dict]:
        for batch in self.loader:
            x = unlabelled_input(batch)
            ids = _sample_ids(batch) if isinstance(batch, Mapping) else None
            yield {"input": x, "label": x} if ids is None else {"input": x, "label": x, "id": ids}


def holds_causal_lm(module: nn.Module) -> bool:
    """Whether `module` holds one of transformers' causal LMs (GPT-2, Llama, ...), whose
    labels are its inputs: position t's output predicts label t + 1."""
    if "transformers" not in sys.modules:  # then it holds none: no import of transformers here
        return False
    from hooks.transformers import is_causal_lm

    return any(is_causal_lm(m) for m in module.modules())


def unlabelled_input(batch: Any) -> torch.Tensor | None:
    """The input of a batch that carries no labels — a tensor, a 1-tuple (TensorDataset(x)),
    or a dict with an input key (`hooks.evaluate.INPUT_KEYS`) and no label key; None for a
    labelled batch or anything else."""
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (list, tuple)) and len(batch) == 1 and isinstance(batch[0], torch.Tensor):
        return batch[0]
    if isinstance(batch, Mapping) and not any(k in batch for k in LABEL_KEYS):
        x = next((batch[k] for k in INPUT_KEYS if k in batch), None)
        return x if isinstance(x, torch.Tensor) else None
    return None


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (int, float)) or (isinstance(value, torch.Tensor) and value.numel() == 1)


# a failure before the first run exists is contained all the same
_IDLE = Guard(lambda fault: None)


def _on_module_output(callback: DiagnosticsCallback, module: nn.Module, args: tuple, output: Any) -> None:
    if callback._recording and callback._batch_input is not None and not callback._reconstruction:
        callback._forward_output = id(first_tensor(output))  # alive until the loss reads it: the id is its own


def _on_loss_module(callback: DiagnosticsCallback, module: nn.Module, args: tuple, output: Any) -> None:
    run = callback.run
    if not callback._recording or not torch.is_grad_enabled() or len(args) < 2:
        return
    outputs, labels = args[0], args[1]
    x = callback._batch_input
    if x is not None and not callback._reconstruction and isinstance(module, nn.MSELoss) \
            and isinstance(labels, torch.Tensor) and id(outputs) == callback._forward_output:
        # an autoencoder's loss: MSE between forward(batch) and the batch itself
        callback._reconstruction = labels is x or (labels.numel() == x.numel()
                                                   and torch.equal(labels.reshape(-1), x.reshape(-1)))
    if isinstance(outputs, torch.Tensor) and isinstance(labels, torch.Tensor) and outputs.ndim >= 1 \
            and labels.ndim >= 1 and outputs.shape[0] == labels.shape[0]:
        ids = callback._batch_ids
        if ids is not None and len(ids) == outputs.shape[0]:
            callback._batch_ids = None  # once per batch: a second call of the loss is not another sample
        else:
            ids = None
        run.log_batch(outputs.detach(), labels.detach(), ids=ids, split="train")


def _sample_ids(batch: Any) -> list | None:
    """The sample ids a training batch carries: the third item of (inputs, labels, ids),
    or a dict's id/ids/sample_id/index entry; None for anything else (no ids is no error)."""
    if isinstance(batch, Mapping):
        ids = next((batch[k] for k in ID_KEYS if k in batch), None)
    elif isinstance(batch, (list, tuple)) and len(batch) == 3 and isinstance(batch[0], torch.Tensor):
        ids = batch[2]
    else:
        return None
    if isinstance(ids, torch.Tensor):
        return ids.tolist() if ids.ndim == 1 else None
    return list(ids) if isinstance(ids, (list, tuple)) else None
