"""Hugging Face integration: `DiagnosticsCallback` records `Trainer.train` as a run.

    from hooks.transformers import DiagnosticsCallback
    trainer = Trainer(model, args, train_dataset=..., callbacks=[DiagnosticsCallback(run_dir="runs")])

transformers is imported here only; `import hooks` never imports it. This module is
`hooks.transformers`, and `import transformers` below is absolute: it finds the real package.
"""

from __future__ import annotations

import atexit
import dataclasses
import functools
import importlib.util
import numbers
import os
import warnings
from collections.abc import Iterable
from typing import Any

if importlib.util.find_spec("transformers") is None:
    raise ImportError('hooks.transformers needs Hugging Face transformers: pip install "hookscope[transformers]"')

import torch
import transformers
from torch import nn

from hooks.amp import LossScale
from hooks.guard import Guard, Hook
from hooks.handover import LOSS_BATCH
from hooks.options import WatchOptions
from hooks.watcher import WatchedRun

__all__ = ["DiagnosticsCallback"]

_PROBLEM_TASKS = {"single_label_classification": "classification", "regression": "regression"}
_NOT_PLOTTED = ("epoch",)
_NOT_PLOTTED_SUFFIXES = ("_runtime", "_per_second")


class DiagnosticsCallback(transformers.TrainerCallback):
    """Records `trainer.train()` with `hooks.watch`: one run per call, in `run_dir/name`.

    Args:
        run_dir, name, every, task, config, flush_every_s, class_names, seed, budget, layers,
            kinds, strict: as for `hooks.watch` (one `hooks.options.WatchOptions` holds them).
        evaluate: at the end of training, `run.evaluate` on the last evaluation's dataloader (split "val").
        shift_labels: whether the model is a causal LM whose labels are its inputs (the output at
            position t predicts label t + 1); None: when the model is one of transformers'
            causal LMs (GPT-2, Llama, ...).

    The run being recorded is `callback.run` (a `WatchedRun`) from the start of training.

    The watched model is the Trainer's model and the watched optimizer the one inside
    Accelerate's wrapper: a step is one optimizer update, or one that fp16's GradScaler skipped
    on overflow (as the Trainer's `global_step` counts it): that step has scalar `amp_skipped`
    = 1 and its loss, which health leaves out; gradients are recorded unscaled.

    - Loss: read from the model's own `output.loss` by a forward hook, per micro-batch, and
      recorded as scalar `loss` on its optimizer step: the mean over the step's micro-batches,
      or their sum when the Trainer passed `num_items_in_batch` (the model then normalised by
      the whole accumulated batch) — the number the Trainer logs with `logging_steps=1` on one
      process, without its NaN filter. `on_log`'s `logs["loss"]` is exact only with
      `logging_steps=1`, so it is the fallback when the model returns no loss (a custom
      `compute_loss`, `compute_loss_func` or label smoothing): then a point every
      `logging_steps`, their mean.
    - Outputs and labels: `output.logits` against the `labels` input, when there is one
      label per sample (sequence classification or regression).
    - Evaluation: `on_evaluate`'s metrics as scalars under their names (`eval_loss`, ...),
      without `epoch`, runtimes and throughputs.
    - `evaluate=True`: at the end of training, `run.evaluate` (split "val") on the dataloader
      of the Trainer's last evaluation, if it evaluated during training. Each batch reaches
      the model as the Trainer gives it (input_ids, attention_mask, token_type_ids, ...:
      padded batches), its `labels` held out and scored: one label per sample (sequence
      classification), or one per token (token classification; a causal LM's labels shifted
      one to the left, as its own loss does); labels -100 are not counted. The Trainer's
      tokenizer (`processing_class`) names the tokens the pages show. On a failure a
      warning says why and the run still finishes.
    - The run closes at `on_train_end`. The Trainer has no exception event: use the
      callback as a context manager around `train()` to mark a crash failed; without it, a
      run whose training never ended is marked failed at interpreter exit, or when the next
      `train()` with this callback begins. `config` defaults to the TrainingArguments,
      `seed` to `args.seed`, `class_names` to the model's `id2label` if it names them.

    Example::

        with DiagnosticsCallback(run_dir="runs", name="bert") as cb:
            Trainer(model, args, train_dataset=train, eval_dataset=val, callbacks=[cb]).train()
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
        shift_labels: bool | None = None,
    ) -> None:
        self.watch_options = WatchOptions(run_dir=run_dir, name=name, every=every, task=task, config=config,
                                          flush_every_s=flush_every_s, class_names=class_names, seed=seed,
                                          budget=budget, layers=layers, kinds=kinds, strict=strict)
        self.evaluate = evaluate
        self.shift_labels = shift_labels
        self._shift = bool(shift_labels)  # this train()'s model is a causal LM: evaluate shifts its labels
        self.run: WatchedRun | None = None  # the run of the current (or last) train()
        self._recording = False
        self._handles: list = []
        self._micro_losses: list[torch.Tensor] = []  # the model's losses since the last optimizer step
        self._losses_summed = False
        self._model_gives_loss = False
        self._step_losses: list[tuple[int, torch.Tensor]] = []  # (step, loss) not yet on the CPU
        self._step_at_window_start = 0
        self._loss_scale: LossScale | None = None  # fp16: which steps the scaler skipped

    # -- attach and detach --------------------------------------------------------------

    @property
    def guard(self) -> Guard:
        """The run's containment (hooks/guard.py): a failure in this callback's hooks never
        reaches training."""
        return self.run.guard if self.run is not None else _IDLE
    def on_train_begin(self, args, state, control, model: nn.Module | None = None,
                       optimizer: torch.optim.Optimizer | None = None, **kwargs: Any) -> None:
        if self._recording:  # the last train() never reached on_train_end: it crashed
            self._close(failed=True)
        options = self.watch_options
        model_config = getattr(model, "config", None)
        options = dataclasses.replace(
            options,
            task=options.task if options.task is not None else _PROBLEM_TASKS.get(getattr(model_config, "problem_type",
                                                                                          None)),
            class_names=options.class_names if options.class_names is not None else _class_names(model_config),
            config=options.config if options.config is not None else args.to_sanitized_dict(),
            seed=options.seed if options.seed is not None else args.seed,
        )
        scaler = getattr(optimizer, "scaler", None)  # Accelerate's wrapper holds fp16's GradScaler
        options = dataclasses.replace(options, scaler=scaler)
        self._loss_scale = LossScale(scaler) if scaler is not None else None
        optimizer = getattr(optimizer, "optimizer", optimizer)  # Accelerate's wrapper runs no step hooks
        self._micro_losses, self._step_losses, self._model_gives_loss = [], [], False
        self._step_at_window_start = 0
        self._shift = self.shift_labels if self.shift_labels is not None else is_causal_lm(model)
        self.run = WatchedRun(model, optimizer, None, options)
        self._recording = True
        self._handles.append(model.register_forward_hook(Hook(self, "loss", _on_model_output), with_kwargs=True))
        atexit.register(self._close_at_exit)

    def on_train_end(self, args, state, control, eval_dataloader: Iterable | None = None, **kwargs: Any) -> None:
        if not self._recording:
            return
        self._flush_losses()
        if self.evaluate and eval_dataloader is not None:
            try:
                # a dict batch reaches the model as the Trainer gives it, its labels held out
                self.run.evaluate(eval_dataloader, split="val", progress=not args.disable_tqdm,
                                  shift_labels=self._shift, tokenizer=_tokenizer(kwargs))
            except Exception as exc:  # training succeeded: keep its run, say what to change
                warnings.warn(f"DiagnosticsCallback: the per-sample evaluation after training failed ({exc}); "
                              "pass evaluate=False to skip it.", stacklevel=2)
        self._close(failed=False)

    def _close(self, failed: bool) -> None:
        self._recording = False
        atexit.unregister(self._close_at_exit)
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        try:
            self._flush_losses()
        finally:
            if failed:
                self.run.__exit__(RuntimeError, RuntimeError("training did not end"), None)  # state "failed"
            else:
                self.run.close()

    def _close_at_exit(self) -> None:
        if self._recording:
            self._close(failed=True)

    def __enter__(self) -> DiagnosticsCallback:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._recording:
            self._close(failed=exc_type is not None)

    # -- the loss, on the step it belongs to -----------------------------------------------
    def on_step_end(self, args, state, control, **kwargs: Any) -> None:
        if not self._recording:
            return
        # The optimizer's post-step hook has already advanced run.step: this window's
        # micro-batches belong to step run.step - 1; a window whose step the fp16 scaler skipped is
        # step run.step, which the run ends at the next forward.
        if self._loss_scale is not None:
            self._loss_scale.stepped = self.run.step > self._step_at_window_start
            if self._loss_scale.skipped_step():  # the run ends it as step run.step, at the next forward
                if self._micro_losses:
                    losses = torch.stack(self._micro_losses)
                    self._step_losses.append((self.run.step, losses.sum() if self._losses_summed else losses.mean()))
                    self._micro_losses = []
                self._step_at_window_start = self.run.step + 1
        if self.run.step > self._step_at_window_start:
            if self._micro_losses:
                losses = torch.stack(self._micro_losses)
                self._step_losses.append((self.run.step - 1, losses.sum() if self._losses_summed else losses.mean()))
                self._micro_losses = []
            self._step_at_window_start = self.run.step
        if len(self._step_losses) >= LOSS_BATCH:
            self._flush_losses()

    def on_log(self, args, state, control, logs: dict | None = None, **kwargs: Any) -> None:
        if self._recording and not self._model_gives_loss and logs and "loss" in logs and self.run.step > 0:
            self.run.log_scalar("loss", logs["loss"], step=self.run.step - 1)

    def _flush_losses(self) -> None:
        if self._step_losses:
            steps, values = zip(*self._step_losses)
            for step, value in zip(steps, torch.stack(values).cpu().tolist()):
                self.run.log_scalar("loss", value, step=step)
            self._step_losses = []

    # -- evaluation metrics ------------------------------------------------------------
    def on_evaluate(self, args, state, control, metrics: dict | None = None, **kwargs: Any) -> None:
        if not self._recording:
            return
        for name, value in (metrics or {}).items():
            if isinstance(value, numbers.Real) and not isinstance(value, bool) and name not in _NOT_PLOTTED \
                    and not name.endswith(_NOT_PLOTTED_SUFFIXES):
                self.run.log_scalar(name, value)


def _class_names(model_config: Any) -> list[str] | None:
    id2label = getattr(model_config, "id2label", None) or {}
    names = [str(id2label[i]) for i in sorted(id2label)]
    return names if names and names != [f"LABEL_{i}" for i in range(len(names))] else None


# a failure before the first run exists is contained all the same
_IDLE = Guard(lambda fault: None)


def _on_model_output(callback: DiagnosticsCallback, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
    if not callback._recording or not callback.run.recording or not torch.is_grad_enabled() or not module.training:
        return  # unrecorded, or switched off: hold no loss
    if not isinstance(output, dict):  # ModelOutput is a dict; return_dict=False tuples are ambiguous
        return
    loss = output.get("loss")
    if isinstance(loss, torch.Tensor) and loss.numel() == 1:
        callback._model_gives_loss = True
        callback._losses_summed = kwargs.get("num_items_in_batch") is not None
        callback._micro_losses.append(loss.detach().float().reshape(()))
    logits, labels = output.get("logits"), kwargs.get("labels")
    if (isinstance(logits, torch.Tensor) and isinstance(labels, torch.Tensor) and logits.ndim == 2
            and labels.ndim == 1 and logits.shape[0] == labels.shape[0]):
        callback.run.log_batch(logits.detach(), labels.detach(), split="train")


def is_causal_lm(model: nn.Module | None) -> bool:
    """Whether `model` (or the model a PEFT wrapper holds) is one of transformers' causal LMs
    (GPT-2, Llama, ...: a class `AutoModelForCausalLM` builds)."""
    base = getattr(model, "get_base_model", None)
    candidates = [model, base() if callable(base) else None]
    return any(type(m).__name__ in _causal_lm_names() or type(m).__name__.endswith("ForCausalLM") for m in candidates
               if m is not None)


@functools.cache
def _causal_lm_names() -> frozenset[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return frozenset(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())


def _tokenizer(kwargs: dict) -> Any:
    """The Trainer's tokenizer (`processing_class`, or `tokenizer` before transformers 4.46)
    when it can turn token ids into text; None for an image processor or none."""
    found = kwargs.get("processing_class")
    found = kwargs.get("tokenizer") if found is None else found  # not `or`: a tokenizer's truth is its length
    found = getattr(found, "tokenizer", found)  # a processor (text and images) holds its tokenizer
    return found if hasattr(found, "convert_ids_to_tokens") or hasattr(found, "decode") else None
