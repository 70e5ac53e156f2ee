"""The per-step state of a watched run and the hook bodies that fill it.

`Capture` owns what a step collects: it decides nothing about the run's lifecycle
(hooks/watcher.py registers its methods as hooks and removes them). Its methods are the
hook bodies, registered as `Hook(capture, part, Capture.method, ...)` (hooks/guard.py):

- `on_forward` on every recorded leaf module, put on only for captured steps
  (hooks/layerhooks.py): the output's summary
  (`activation`) and a tensor hook on that output for its gradient (`on_grad`,
  `gradient`); `Tensor.register_hook` works on in-place modules where full backward hooks fail;
  under `torch.compile` dynamo traces this hook, and the same work runs in two custom ops
  inside the graph (hooks/compiled.py);
- `on_loss` on the loss module: the loss every step, and on capture steps the model's
  outputs and the labels (`output`, `label`);
- `on_step_pre` / `on_step_post` on the optimizer: parameter values and gradients on
  capture steps (`weight`, `param_grad`, `update`), the learning rate of each param
  group, the global gradient norm (`on_grad_accumulated` on large parameters and the
  clipping probes, the rest read at backward's end: hooks/gradnorm.py) and the step count.

A step is one `optimizer.step()`. Forward passes without grad (evaluation inside the
loop) are ignored, and so are a module's second and later calls within a step (a module
used twice, or gradient accumulation): the first call of a step is recorded. On a
non-capture step every hook returns at its first line.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from typing import Any

import torch
from torch import nn

from diagnostics import schema
from diagnostics.writer import RunWriter
from hooks import compiled
from hooks.amp import LossScale, after_scaled_step, end_skipped_step, flag_skipped, on_scaled_forward, step_scale
from hooks.gradnorm import GradSquares, split_params
from hooks.guard import Guard, Hook, contained
from hooks.handover import LOSS_BATCH, Handover, write_summaries
from hooks.layerhooks import LayerHooks, add_sentinels
from hooks.options import Selection
from hooks.positions import position_classes
from hooks.probes import (
    class_agreement_probe,
    feature_label_probe,
    loss_input_probe,
    loss_input_shapes,
    target_alignment_probe,
    target_sum_probe,
)
from hooks.shards import local_pieces, shard_kind, user_name
from hooks.summarize import class_summary, fixed_sample, small_values, summarize, summarize_batch, unit_fraction
from hooks.tensors import first_tensor, global_norm, infer_task, squared_norm, stored_values

# Updates are summarised on this many fixed positions of each weight (copied before the
# step): the norm of the update, hence the update ratio, is estimated within ~1-2% for
# Gaussian-like updates (0.5·sqrt(2/4096)); a copy of every weight would double memory.
UPDATE_SAMPLE = 4_096
# small tensors' values held for the step's one batch of summaries (summarize_batch): past
# this, the batch runs at once (a step of 300 layers of 2,048 values holds 5 MB); summarising
# a full batch takes about four times as much again for a moment (a stacked copy, float64, sorted)
DEFER_BYTES = 32 << 20

# Modules that behave differently in train mode: a forward under no_grad with one of these
# in train mode is an evaluation with dropout on (or BatchNorm updating its running stats).
_MODE_TYPES = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._BatchNorm)


class SmallTensors:
    """A capture step's small CPU tensors (`small_values`: copies), summarised in one batch
    (`summarize_batch`) when the step ends, or sooner past DEFER_BYTES."""

    def __init__(self) -> None:
        self.items: list[tuple] = []  # (layer, kind, values, fill, count, sampled)
        self.nbytes = 0
        self.lock = threading.Lock()  # backward hooks of several threads (a threaded backward, hogwild)

    def __bool__(self) -> bool:
        return bool(self.items)

    def take(self, layer: str, kind: str, t: torch.Tensor, fill: tuple | None, count: int | None,
             sampled: bool) -> list[tuple[str, str, int, torch.Tensor]]:
        """Hold a small CPU tensor's values for the batch; summarise anything else at once.
        Returns the summaries ready now: that one, or the whole batch past DEFER_BYTES.
        `fill`: (field, value) to set in the vector (`unit_fraction`); `count`: the count to
        record if not t's size; `sampled`: as `summarize`'s."""
        values = small_values(t)
        if values is None:
            n, vec = summarize(t, sampled=sampled)
            return [(layer, kind, n if count is None else count, _filled(vec, fill))]
        with self.lock:
            self.items.append((layer, kind, values, fill, values.size if count is None else count, sampled))
            self.nbytes += values.nbytes
            full = self.nbytes > DEFER_BYTES
        return self.summarize() if full else []

    def summarize(self) -> list[tuple[str, str, int, torch.Tensor]]:
        """(layer, kind, count, vector) of every tensor held, in the order held; empties the batch."""
        with self.lock:
            items, self.items, self.nbytes = self.items, [], 0
        vecs = summarize_batch([i[2] for i in items], sampled=[i[5] for i in items])
        return [(layer, kind, count, _filled(vec, fill)) for (layer, kind, _, fill, count, _), vec in zip(items, vecs)]


def _filled(vec: torch.Tensor, fill: tuple | None) -> torch.Tensor:
    """`vec` with (field, value) of `unit_fraction` set, in place (a 0-d tensor on a device:
    no sync)."""
    if fill is not None:
        field, value = fill
        # a float, or a 0-d tensor on the vector's device (no sync); anything else (a numpy
        # scalar) as a float: assigning a numpy array to a tensor raises
        vec[field] = value if isinstance(value, (float, torch.Tensor)) else float(value)
    return vec


class Capture:
    """What the hooks collect, step by step, and hand to the writer.

    Args:
        model: the watched module.
        writer: the run's writer.
        schedule: decides the capture steps (hooks/schedule.py).
        task: "classification", "regression" or None (inferred from the first outputs).
        distributed: several ranks (gradients are averaged after backward's hooks).
        started: when the first step began (time.perf_counter()).
        guard: contains the hook bodies' failures (hooks/guard.py); a new one records faults
            through the writer.
        selection: the layers and kinds to record (default: all).
    """

    def __init__(self, model: nn.Module, writer: RunWriter, schedule: Any, task: str | None, *,
                 distributed: bool, started: float, guard: Guard | None = None,
                 selection: Selection | None = None) -> None:
        self.writer, self.schedule, self.task, self.distributed = writer, schedule, task, distributed
        self.guard = guard or Guard(writer.note_fault)
        self.selection = selection = selection or Selection()
        self.kinds = selection.kinds
        self.handover = Handover(writer)
        self.param_names = {p: n for n, p in model.named_parameters()}
        # the parameters whose weight, gradient and update are summarised at capture steps
        self.recorded_params = {p: n for p, n in self.param_names.items() if selection.parameter(user_name(n))}
        self.mode_modules = [(n or type(model).__name__, m) for n, m in model.named_modules()
                             if isinstance(m, _MODE_TYPES) and getattr(m, "p", 1) != 0]
        # clipping probes: a few small trainable parameters (reading them again is cheap)
        trainable = sorted((p for p in model.parameters() if p.requires_grad), key=lambda p: (p.numel() < 8, p.numel()))
        self.probes = trainable[:4]
        self.step, self.capturing = 0, True
        self.step_started, self.own_s = started, 0.0  # own_s: time the always-on hooks took in this step
        self.pending: list[tuple[str, str, int, torch.Tensor]] = []
        self.deferred = SmallTensors()
        self.seen: set[tuple[str, str]] = set()
        self.step_losses: list[torch.Tensor] = []
        self.grad_squares = GradSquares([], lambda read: contained(self.guard, "grad_norm", read))
        self.before_step: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.norm_recorded = False
        self.num_classes: int | None = None
        self.forward_seen = False
        self.output_shapes: dict[str, list[int]] = {}
        self.shapes_noted: bool | None = None  # the loss's input shapes in the manifest: whether they broadcast
        self.mode_noted = False  # a no-grad forward in train mode already recorded this step
        self.token_input: tuple[int, torch.Tensor] | None = None  # (step, 2-D model input) of a capture step
        self.mode_names_written = False
        self.step_eval: tuple[float, float] = (-1.0, 0.0)  # their share in eval mode at the last step, the most yet
        self.probe_reset: bool | torch.Tensor | None = None  # None: no backward reached the probe this step
        self.loss_scale: LossScale | None = None  # watch(..., scaler=): gradients scaled by a GradScaler
        self.manual = False  # no optimizer: the loop updates the parameters itself
        self.layer_hooks = 0  # modules whose activations are recorded (register_hooks counts them)
        self.layers = LayerHooks()  # their forward hooks: on only while a step is captured
        self.key = compiled.register(self)  # what a compiled graph's capture ops hold (hooks/compiled.py)
        self.modules = {name or type(model).__name__: m for name, m in model.named_modules()}

    # -- recording ----------------------------------------------------------------------
    def add(self, layer: str, kind: str, count: int, vec: torch.Tensor) -> None:
        """Queue one summary of this step (handed over at the step's end)."""
        self.pending.append((layer, kind, count, vec))

    def add_tensor(self, layer: str, kind: str, t: torch.Tensor, fill: tuple | None = None,
                   count: int | None = None, sampled: bool = False) -> None:
        """Queue the summary of `t` (see `SmallTensors.take`)."""
        self.pending += self.deferred.take(layer, kind, t, fill, count, sampled)

    def first_call(self, layer: str, kind: str) -> bool:
        """True the first time (layer, kind) is seen this step."""
        key = (layer, kind)
        if key in self.seen:
            return False
        self.seen.add(key)
        return True

    def record_outputs(self, outputs: torch.Tensor, labels: torch.Tensor, split: str) -> None:
        """Summaries of a batch's outputs against its labels, and the loss-input probe."""
        outputs, labels = outputs.detach(), labels.detach()
        task = self.task or infer_task(outputs, labels)
        if self.task is None:
            self.task = task
            self.writer.update_manifest(task=task)
        summaries, num_classes = output_summaries(outputs, labels, split, task)
        summaries = [s for s in summaries if s[1] in self.kinds]
        if num_classes is not None and self.num_classes != num_classes:
            self.num_classes = num_classes
            self.writer.update_manifest(num_classes=num_classes)
        self.pending.extend(summaries)
        note_label_probes(self, outputs, labels, split)  # capture steps only
        if split == "train" and not self.shapes_noted:
            note_loss_shapes(self, outputs, labels)

    def end_step(self, final: bool = False) -> None:
        """Hand this step's summaries to the writer and move to the next step (`final`:
        the run is closing; no schedule decision, which under DDP could start a collective
        on this rank alone)."""
        started = time.perf_counter()
        handover = self.handover
        handover.step_ended_at[self.step] = time.time()  # losses are written in batches: stamp each step now
        if self.probe_reset is not None:
            handover.grad_carried.append((self.step, self.probe_reset))
            self.probe_reset = None
        if self.step_losses:
            if self.capturing and self.layer_hooks and self.guard.active("activations") and not final:
                compiled.check_activations_seen(self.step, self.seen)
            handover.losses.append((self.step, torch.stack([v.float() for v in self.step_losses]).mean()))
            self.step_losses = []
        if self.deferred:
            self.pending += self.deferred.summarize()
        if self.pending:
            write_summaries(self.writer, self.step, self.pending)
            self.pending = []
        if max(len(handover.losses), len(handover.grad_norms), len(handover.records)) >= LOSS_BATCH or (
                self.capturing and (handover.waiting() or handover.grad_carried)):  # a capture syncs anyway
            flushing = time.perf_counter()
            handover.flush()
            # not charged to the budget: on a GPU the transfer waits for the queued work
            # (training's own time), which would read as the tool's
            started += time.perf_counter() - flushing
        if self.step == 0 and self.output_shapes:
            self.writer.update_manifest(output_shapes=self.output_shapes)
        now = time.perf_counter()
        if not self.capturing:
            self.own_s += now - started
        if not final:
            self.schedule.record(self.step, self.capturing, now - self.step_started, self.own_s)
        self.own_s = 0.0
        self.step_started = now
        self.step += 1
        self.guard.step = self.step
        self.norm_recorded = False
        self.mode_noted = False
        self.capturing = False if final else self.schedule.should_capture(self.step)
        self.layers.set(self.capturing)
        self.seen.clear()

    def finish(self) -> None:
        """The run closes: hand over what this step and the batches hold; drop parameters."""
        end_last_step(self)
        self.param_names = self.recorded_params = {}
        self.probes = []
        self.modules = {}
        if self.pending or self.deferred or self.step_losses:
            self.end_step(final=True)
        if self.handover.waiting():
            self.handover.flush()
        self.grad_squares.clear()
        self.before_step = {}
        self.capturing = False  # a compiled graph may keep the removed hooks: it runs its graph without capture
        compiled.unregister(self.key)

    # -- hook bodies: modules and the loss ----------------------------------------------
    def on_forward(self, layer: str, module: nn.Module, args, output) -> Any:
        if not self.capturing or not torch.is_grad_enabled():
            return None
        if torch.compiler.is_compiling():  # dynamo traces this hook: `capturing` is a guard of the graph
            return compiled.observed(output, self.key, layer)
        compiled.run_eagerly(record_forward, self, layer, module, output)
        return None

    def on_grad(self, layer: str, grad: torch.Tensor) -> None:
        if self.first_call(layer, "gradient"):
            self.add_tensor(layer, "gradient", grad)

    def on_loss(self, module: nn.Module, args, kwargs, output) -> None:
        if not torch.is_grad_enabled():
            return
        if isinstance(output, torch.Tensor) and output.numel() == 1:
            self.step_losses.append(output.detach())
        if self.capturing:
            compiled.run_eagerly(record_loss_inputs, self, args, kwargs)  # eager: the loss may be compiled

    def on_model_forward(self, module: nn.Module, args) -> None:
        # Without an optimizer a step is one training forward of the whole model (`manual_step`).
        if torch.is_grad_enabled():
            compiled.run_eagerly(manual_step, self)  # eager: the model may be compiled

    # -- hook bodies: gradients and the optimizer ---------------------------------------
    def on_grad_accumulated(self, param: torch.Tensor) -> None:
        # The gradient as backward left it (before any clipping), read while it is still in
        # cache; the last call of a step wins. Always on: its time is charged to the budget.
        started = time.perf_counter()
        if self.loss_scale is not None or self.manual:
            before_accumulated(self, param)
        self.grad_squares.take(param)
        self.own_s += time.perf_counter() - started

    def on_probe_grad(self, param: torch.Tensor, grad: torch.Tensor) -> None:
        """Each backward reaching the probe on a capture step, before its gradient accumulates:
        was its .grad reset (None or all zero)? A step none of whose backwards found it reset
        carries the previous step's gradient (no zero_grad). Several backwards per step
        (micro-batches, a GAN's two losses) count as reset when any one found it so. Kept as
        a device tensor (no sync); the hook returns None, so the gradient is unchanged."""
        if not self.capturing or self.probe_reset is True:
            return None
        old = param.grad
        reset = True if old is None else ~(stored_values(old) != 0).any()
        self.probe_reset = reset if self.probe_reset is None or reset is True else self.probe_reset | reset
        return None

    def on_step_pre(self, optimizer, args, kwargs) -> tuple[tuple, dict] | None:
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
            self.before_update(optimizer)
            return None
        called = False

        def closure_then_record() -> Any:
            nonlocal called
            result = closure()
            if not called:
                called = True
                contained(self.guard, "optimizer", lambda: self.before_update(optimizer))
            return result

        if "closure" in kwargs:
            return args, {**kwargs, "closure": closure_then_record}
        return (args[0], closure_then_record, *args[2:]), kwargs

    def before_update(self, optimizer) -> None:
        """The gradient norm; on capture steps weights, gradients and the update's sample (in
        true units under a GradScaler: see hooks/amp.py)."""
        started = time.perf_counter()
        with torch.no_grad():
            scale = self.loss_scale.backward_scale() if self.loss_scale is not None else None
            carried = step_scale(self, optimizer) if scale is not None else None
            self.record_grad_norm(scale, carried)
            if not self.capturing:
                self.own_s += time.perf_counter() - started
                return
            self.before_step = {}
            for group in optimizer.param_groups:
                for p in group["params"]:
                    if (name := self.recorded_params.get(p)) is None:
                        continue
                    for piece, values, grad in local_pieces(name, p):  # FSDP: this rank's shards
                        if "weight" in self.kinds:
                            self.add_tensor(piece, "weight", values)
                        if grad is not None and "param_grad" in self.kinds:
                            grad = stored_values(grad)
                            self.add_tensor(piece, "param_grad", grad if carried is None else grad / carried)
                        if grad is not None and "update" in self.kinds:
                            # the update: on a fixed sample of positions (copying all would double memory)
                            flat = values.detach().reshape(-1)
                            before = fixed_sample(flat, UPDATE_SAMPLE)  # a copy above UPDATE_SAMPLE elements
                            self.before_step[piece] = (values, before.clone() if before.numel() == flat.numel()
                                                       else before)

    def record_grad_norm(self, scale: torch.Tensor | None = None, carried: torch.Tensor | None = None,
                         clip_known: bool = True) -> None:
        """Global L2 norm of the gradients as backward produced them, and whether the loop
        clipped them (`norm_and_clipped`). `scale`: the GradScaler's scale backward ran with;
        `carried`: the scale the gradients still hold now (None: unscaled)."""
        if self.distributed and not self.norm_recorded:
            record_rank_norm(self, carried)
            return
        if self.norm_recorded or not self.guard.active("grad_norm") or not self.grad_squares:
            return
        self.norm_recorded = True  # once per step: later closure calls (LBFGS) re-run backward
        # its own part: a failure here stops the gradient norm, not the optimizer's recording
        read = contained(self.guard, "grad_norm",
                         lambda: norm_and_clipped(self.grad_squares, self.probes, scale, carried, clip_known))
        self.grad_squares.clear()
        if read is not None:
            self.handover.grad_norms.append((self.step, *read))

    def on_step_post(self, optimizer, args, kwargs) -> None:
        if _nested_step(optimizer):
            return
        started = time.perf_counter()
        groups = optimizer.param_groups
        lrs = {("lr" if len(groups) == 1 else f"lr/group{i}"): g["lr"] for i, g in enumerate(groups) if "lr" in g}
        self.writer.add_scalars(self.step, {k: float(v) for k, v in lrs.items()})
        note_step_mode(self)
        with torch.no_grad():
            self.record_grad_norm()  # a closure the optimizer never called: the norm lands on this step
            self.grad_squares.clear()
            for name, (p, before) in self.before_step.items():
                after = fixed_sample(p.detach().reshape(-1), UPDATE_SAMPLE)
                if after.dtype in (torch.float16, torch.bfloat16):  # subtract in float32; float64 stays
                    after, before = after.float(), before.float()
                # count: the tensor's size, so that sqrt(count·(std² + mean²)) estimates its norm
                self.add_tensor(name, "update", after - before, count=p.numel(), sampled=True)
            if self.loss_scale is not None:
                after_scaled_step(self)
        self.before_step = {}
        if not self.capturing:
            self.own_s += time.perf_counter() - started
        self.end_step()


def record_rank_norm(capture: Capture, carried: torch.Tensor | None) -> None:
    """Several ranks: this rank's gradient norm at the step (`_rank_norm`), unscaled unless
    `carried`; whether the loop clipped is not detected (NaN)."""
    produced = _rank_norm(capture.param_names, capture.handover)
    if produced is not None:
        capture.norm_recorded = True
        produced = produced if carried is None else produced / carried.to(produced.device, torch.float64)
        unknown = torch.full((), math.nan, device=produced.device)
        capture.handover.grad_norms.append((capture.step, produced.float(), unknown))


def end_last_step(capture: Capture) -> None:
    """The run closes mid-step, with no forward or step to end it: without an optimizer, the
    last step's gradient norm; under a GradScaler, whether it skipped the last step."""
    if capture.manual:
        with torch.no_grad():
            capture.record_grad_norm(clip_known=False)
    if capture.loss_scale is not None and capture.loss_scale.skipped_step():
        flag_skipped(capture)


def manual_step(capture: Capture) -> None:
    """A training forward without an optimizer: the step before it ends (its gradient norm:
    what its backward left), and a capture step records the weights this forward computes with."""
    if capture.forward_seen:
        with torch.no_grad():
            capture.record_grad_norm(clip_known=False)  # manual updates: a clip is not told from zero_grad
        capture.grad_squares.clear()
        capture.end_step()
    capture.forward_seen = True
    if capture.capturing:
        for p, name in capture.param_names.items():
            capture.add_tensor(name, "weight", p.detach())


def before_accumulated(capture: Capture, param: torch.Tensor) -> None:
    """Before a gradient's square is kept: a step the GradScaler skipped ends here when no
    forward of the model showed it (Lightning's training_step need not call forward);
    without an optimizer, a capture step's parameter gradient as its first backward left it."""
    if capture.loss_scale is not None and capture.loss_scale.skipped_step():
        end_skipped_step(capture)
    name = capture.param_names.get(param)
    if capture.manual and capture.capturing and name is not None and capture.first_call(name, "param_grad"):
        capture.add_tensor(name, "param_grad", stored_values(param.grad))


def norm_and_clipped(squares: GradSquares, probes: list, scale: torch.Tensor | None, carried: torch.Tensor | None,
                     clip_known: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(global norm from backward's per-parameter squares, whether the loop clipped), float32
    and bool (NaN: not judged) 0-d tensors: clip_grad_norm_ scales every gradient by one
    factor, so a probe (a few small parameters, fixed: choosing by value would sync with the
    device) whose gradient shrank since backward says so, for a few tiny norms instead of a
    second pass. Under a GradScaler backward's squares are `scale`² too large, and the
    gradients now carry `carried` (None: unscaled in place by `scaler.step`)."""
    produced = squares.total_norm()
    if scale is not None:
        produced = produced / scale.to(produced.device, torch.float64)
    if not clip_known:
        return produced.float(), torch.full((), math.nan, device=produced.device)
    clipped = None
    for p in [p for p in probes if squares.get(p) is not None and p.grad is not None] or [squares.first()]:
        if p is None or p.grad is None:
            continue
        now = squared_norm(p.grad)
        if scale is not None:  # compared in the units backward produced
            now = now * (scale if carried is None else scale / carried).to(torch.float64).square()
        shrank = now < squares.get(p) * (1 - 2e-4)
        clipped = shrank if clipped is None else clipped | shrank
    if not isinstance(clipped, torch.Tensor):  # None, or a bool from Python floats
        clipped = torch.tensor(bool(clipped), device=produced.device)
    return produced.float(), clipped


def record_loss_inputs(capture: Capture, args: tuple, kwargs: dict) -> None:
    """The loss module's inputs as the model's outputs and the labels (`Capture.on_loss`)."""
    outputs = args[0] if args else kwargs.get("input")
    labels = args[1] if len(args) > 1 else kwargs.get("target")
    if (isinstance(outputs, torch.Tensor) and isinstance(labels, torch.Tensor)
            and capture.first_call(schema.output_layer("train", "outputs"), "output")):
        with torch.no_grad():
            capture.record_outputs(outputs, labels, "train")


def note_train_mode(capture: Capture) -> None:
    """A forward under no_grad with dropout / BatchNorm in train mode (`Capture.on_no_grad_forward`)."""
    on = [name for name, m in capture.mode_modules if m.training]
    if not on:
        return
    capture.mode_noted = True
    capture.writer.add_scalars(capture.step, {"no_grad_forward_train_mode": float(len(on))})
    if not capture.mode_names_written:
        capture.mode_names_written = True
        capture.writer.update_manifest(no_grad_forward_train_mode=on)


def note_loss_shapes(capture: Capture, outputs: torch.Tensor, labels: torch.Tensor) -> None:
    """The loss's input shapes in the manifest (`schema.LOSS_INPUT_SHAPES`): the first train
    capture's, replaced once by the first capture whose shapes broadcast, if the first's did not."""
    shapes = loss_input_shapes(outputs, labels, capture.step)
    if capture.shapes_noted is None or shapes["broadcast"]:
        capture.shapes_noted = bool(shapes["broadcast"])
        capture.writer.update_manifest(**{schema.LOSS_INPUT_SHAPES: shapes})


def note_step_mode(capture: Capture) -> None:
    """At an optimizer step: the share of dropout / BatchNorm modules in eval mode (scalar
    `schema.STEP_EVAL_MODE`), written at the first step and then only when it changes (a few
    attribute reads on the host, no sync); in the manifest, the modules in eval mode at the
    first step with the largest share yet."""
    if not capture.mode_modules:
        return
    off = [name for name, m in capture.mode_modules if not m.training]
    frac = len(off) / len(capture.mode_modules)
    last, most = capture.step_eval
    if frac == last:
        return
    if frac > most:
        capture.writer.update_manifest(**{schema.STEP_EVAL_MODE: {"modules": off[:20], "of": len(capture.mode_modules),
                                                                  "step": capture.step}})
    capture.step_eval = (frac, max(most, frac))
    capture.writer.add_scalars(capture.step, {schema.STEP_EVAL_MODE: frac})


def record_forward(capture: Capture, layer: str, module: nn.Module, output: Any) -> None:
    """A capture step's activation (`Capture.on_forward`, eager), and a hook on it for its gradient."""
    out = first_tensor(output)
    if out is not None and record_activation(capture, layer, out, module) and out.requires_grad \
            and "gradient" in capture.kinds:
        out.register_hook(Hook(capture, "activations", Capture.on_grad, layer))


def record_activation(capture: Capture, layer: str, out: torch.Tensor, module: nn.Module | None = None) -> bool:
    """Queue `out`'s summary as `layer`'s activation; False where this step has one already.
    `module`: the layer's module (default: found by its name)."""
    if not capture.first_call(layer, "activation"):
        return False
    module = capture.modules.get(layer) if module is None else module
    if "activation" in capture.kinds:
        capture.add_tensor(layer, "activation", out, unit_fraction(out, module))
    if (isinstance(module, nn.modules.batchnorm._BatchNorm) and module.training and out.ndim >= 2
            and capture.first_call("batchnorm", "batch_size")):
        capture.writer.add_scalars(capture.step, {"batchnorm_batch_size": float(out.shape[0])})
    if capture.step == 0:
        capture.output_shapes[layer] = list(out.shape)
    return True


def _rank_norm(param_names: dict, handover: Handover) -> torch.Tensor | None:
    """Several ranks: backward's per-parameter hooks would see this rank's own gradient,
    before DDP averages it; the norm is read at the step, from the gradient the optimizer
    is given (after any clipping, which is then not detected: grad_clipped is NaN).

    Sharded parameters (FSDP): the norm of this rank's shards (`squared_norm` reads the
    local shard), recorded as `schema.GRAD_NORM_SHARD`, with the manifest's `sharding`
    ("fsdp2" or "fsdp1") set at the first step; the reader adds the ranks' squares. No
    collective here: a hook one rank skips would leave the others waiting for ever."""
    squares, sharding = [], None
    for p, name in param_names.items():
        sharding = sharding or shard_kind(name, p)
        if p.grad is not None:
            squares.append(squared_norm(p.grad))
    if sharding is not None and handover.norm_name != schema.GRAD_NORM_SHARD:
        handover.norm_name = schema.GRAD_NORM_SHARD
        handover.writer.update_manifest(sharding=sharding)
    return global_norm(squares) if squares else None


def _nested_step(optimizer) -> bool:
    """Whether this step() runs inside another step() of the same optimizer: a subclass
    whose step calls super().step() runs torch's step hooks twice (once per patched
    class), which must count as one step. The caller's frame is torch's hook wrapper;
    another frame of the same code for the same optimizer further up means nesting
    (read from the stack, so an exception inside an earlier step leaves no stale state)."""
    frame = sys._getframe(3)  # 0: here, 1: the hook body, 2: its guard (Hook.__call__), 3: torch's wrapper
    code = frame.f_code
    frame = frame.f_back
    while frame is not None:
        if frame.f_code is code and frame.f_locals.get("self") is optimizer:
            return True
        frame = frame.f_back
    return False


def on_no_grad_forward(capture: Capture, module: nn.Module, args) -> None:
    """A forward under no_grad (the user's own validation) while dropout / BatchNorm train:
    recorded once per step as the count of such modules, their names once in the manifest."""
    if torch.is_grad_enabled() or capture.mode_noted:
        return
    compiled.run_eagerly(note_train_mode, capture)  # eager: the model may be compiled


def on_token_input(capture: Capture, module: nn.Module, args: tuple) -> None:
    """The model's forward pre-hook: `note_token_input`; nothing in a forward dynamo traces (a
    model compiled after `watch`: a call out of the graph would break it)."""
    if not torch.compiler.is_compiling():
        note_token_input(capture, args)


def note_token_input(capture: Capture, args: tuple) -> None:
    """A capture step's first training forward: its 2-D input (token ids, tabular features), held
    by reference with its step (the targets are compared with it at the loss)."""
    if capture.capturing and torch.is_grad_enabled() and (capture.token_input or (None,))[0] != capture.step:
        x = args[0] if args else None
        if isinstance(x, torch.Tensor) and x.ndim == 2:
            capture.token_input = (capture.step, x)


def note_label_probes(capture: Capture, outputs: torch.Tensor, labels: torch.Tensor, split: str) -> None:
    """The probes of a capture (`Capture.record_outputs`): what the loss is given, the targets'
    row sums, predictions against the labels, and the training targets against this step's input."""
    capture.writer.add_scalars(capture.step, loss_input_probe(outputs, labels, split))
    if sums := target_sum_probe(outputs, labels, split):  # float targets shaped like the outputs only
        capture.writer.add_scalars(capture.step, sums)
    capture.writer.add_scalars(capture.step, class_agreement_probe(outputs, labels, split))
    held = capture.token_input
    if split == "train" and held is not None and held[0] == capture.step:
        capture.writer.add_scalars(capture.step, target_alignment_probe(held[1], labels, split))
        capture.writer.add_scalars(capture.step, feature_label_probe(held[1], labels, split))


def register_hooks(capture: Capture, model: nn.Module, optimizer, loss_fn, handles: list,
                   module_hooks: bool = True) -> None:
    """Register every hook of `capture`, appending each handle to `handles` (the caller
    removes them). Each hook is a `Hook` (hooks/guard.py): its failure switches its part
    off and never reaches the training loop; a copy of the model holds an inert one. The
    hooks hold the capture strongly; removing them breaks the cycle. Modules outside
    `capture.selection` get no hook at all (they cost nothing)."""
    selection = capture.selection
    if module_hooks and selection.kinds & {"activation", "gradient"}:
        for name, module in model.named_modules():
            # a loss module inside the model is the loss, not a layer
            if any(True for _ in module.children()) or isinstance(module, nn.modules.loss._Loss):
                continue
            layer = user_name(name) or type(model).__name__  # FSDP1: without _fsdp_wrapped_module
            if selection.layer(layer):
                capture.layers.add(module, Hook(capture, "activations", Capture.on_forward, layer))
                capture.layer_hooks += "activation" in selection.kinds
        if capture.layers.hooks:
            add_sentinels(capture, model, capture.layers.hooks[0][0], handles)
            capture.layers.set(capture.capturing)
            handles.append(capture.layers)
    if isinstance(loss_fn, nn.Module):
        handles.append(loss_fn.register_forward_hook(Hook(capture, "loss", Capture.on_loss), with_kwargs=True))
    trainable = [p for p in model.parameters() if p.requires_grad] if not capture.distributed else []
    # without an optimizer each hook also records its parameter's gradient: every one is hooked
    hooked, capture.grad_squares.batched = (trainable, []) if optimizer is None else split_params(
        trainable, capture.probes)
    for p in hooked:
        handles.append(p.register_post_accumulate_grad_hook(Hook(capture, "grad_norm", Capture.on_grad_accumulated)))
    if capture.loss_scale is not None:
        handles.append(model.register_forward_pre_hook(Hook(capture, "optimizer", on_scaled_forward)))
    if optimizer is not None:
        held = [p for g in optimizer.param_groups for p in g["params"]
                if p.requires_grad and p in capture.param_names]  # the optimizer may hold a replaced module's
        if held and not capture.distributed:  # the smallest held parameter: is its gradient reset?
            probe = min(held, key=lambda p: p.numel())
            handles.append(probe.register_hook(Hook(capture, "probe", Capture.on_probe_grad, probe)))
        handles.append(optimizer.register_step_pre_hook(Hook(capture, "optimizer", Capture.on_step_pre)))
        handles.append(optimizer.register_step_post_hook(Hook(capture, "optimizer", Capture.on_step_post)))
    else:
        capture.manual = True
        handles.append(model.register_forward_pre_hook(Hook(capture, "steps", Capture.on_model_forward)))
    if capture.mode_modules:
        handles.append(model.register_forward_pre_hook(Hook(capture, "mode", on_no_grad_forward)))
    if not capture.layers.always:  # not on a compiled model: dynamo would trace the hook into its graph
        handles.append(model.register_forward_pre_hook(Hook(capture, "alignment", on_token_input)))


def output_summaries(outputs: torch.Tensor, labels: torch.Tensor, split: str, task: str) -> tuple[list, int | None]:
    """(summaries as (layer, kind, count, vector), number of classes or None) of a batch's
    outputs and labels: predicted-class and label counts and the logits (classification),
    or outputs and targets over one shared span (regression)."""
    if task == "classification":
        positions = position_classes(outputs, labels)
        if positions is not None:  # (N, C, *P) or (N, *P, C) against (N, *P): counted positions only
            num_classes, pred, labels = positions
            layer = schema.class_layer(split)
            return [(layer, "output", *class_summary(pred, num_classes)),
                    (layer, "label", *class_summary(labels, num_classes)),
                    (schema.output_layer(split, "logits"), "output", *summarize(outputs))], num_classes
        if outputs.ndim >= 2 and outputs.shape[1] > 1:
            num_classes = outputs.shape[1]
            pred = outputs.argmax(dim=1)
        else:  # one logit per sample (binary)
            num_classes = 2
            pred = (outputs.reshape(labels.shape[0], -1)[:, 0] > 0).long()
        soft = labels.is_floating_point() and labels.ndim == outputs.ndim and labels.shape == outputs.shape
        if soft and num_classes > 2:
            labels = labels.argmax(dim=1)  # soft / one-hot labels
        layer = schema.class_layer(split)
        return [(layer, "output", *class_summary(pred, num_classes)),
                (layer, "label", *class_summary(labels.reshape(-1).long(), num_classes)),
                (schema.output_layer(split, "logits"), "output", *summarize(outputs))], num_classes
    out = outputs.reshape(-1).float()
    lab = labels.reshape(-1).float()
    both = torch.cat([out, lab])
    both = both[torch.isfinite(both)]  # an Inf output must not stretch the shared span
    span = (both.min(), both.max()) if both.numel() else None
    layer = schema.value_layer(split)
    return [(layer, "output", *summarize(out, hist_range=span)),
            (layer, "label", *summarize(lab, hist_range=span))], None
