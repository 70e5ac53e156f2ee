"""Mixed precision with a loss scaler (`torch.amp.GradScaler`, Lightning's and Accelerate's):
the true gradient numbers, and the steps the scaler skipped.

`scaler.scale(loss).backward()` multiplies every gradient by the scale S, so whatever backward's
hooks see (the global norm's per-parameter squares, the gradients w.r.t. module outputs) is S
times too large. `scaler.step(optimizer)` divides the parameters' gradients in place
(`unscale_`) before it calls `optimizer.step()` (a fused optimizer instead receives
`optimizer.grad_scale` and unscales inside its kernel), and skips `optimizer.step()` when a
gradient is Inf or NaN; `scaler.update()` then lowers the scale. The scale is read as the
scaler's device tensor (no sync): S is powers of two, so dividing by it is exact.
"""

from __future__ import annotations

import torch

from diagnostics import schema

# the summary vector's fields measured in the tensor's units (divided by the scale); fractions,
# counts and the histogram's counts are unchanged
_LINEAR = [i - 1 for i, f in enumerate(schema.SUMMARY_FIELDS)
           if f in ("mean", "std", "min", "max", "hist_min", "hist_max", *schema.QUANTILE_COLUMNS)]


class LossScale:
    """The loss scaler of a watched run.

    Args:
        scaler: a `torch.amp.GradScaler` (or `torch.cuda.amp.GradScaler`); a disabled one
            (`enabled=False`, bf16 without scaling) scales nothing.
    """

    def __init__(self, scaler) -> None:
        self.scaler = scaler
        self.updates = getattr(scaler, "_per_optimizer_states", None)  # update() replaces it
        self.stepped = False  # the watched optimizer stepped since the scaler's last update()

    def backward_scale(self) -> torch.Tensor | None:
        """The scale this step's gradients were produced with (a 0-d device tensor), or None:
        read before `update()`, i.e. from the optimizer's step hooks."""
        if not self.scaler.is_enabled():
            return None
        return getattr(self.scaler, "_scale", None)

    def skipped_step(self) -> bool:
        """Whether the scaler finished a step (`update()`) since the last call while the
        watched optimizer did not step: `scaler.step` skipped it (Inf/NaN gradients).
        Read from Python state, no sync."""
        updates = getattr(self.scaler, "_per_optimizer_states", None)
        if updates is self.updates or not self.scaler.is_enabled():
            return False
        self.updates = updates
        stepped, self.stepped = self.stepped, False
        return not stepped


def step_scale(capture, optimizer) -> torch.Tensor | None:
    """The scale the gradients still carry when `optimizer.step()` runs: a fused optimizer
    (Adam(fused=True)) is handed `grad_scale` and unscales in its kernel; otherwise None
    (`scaler.step` unscaled them in place). The fused kernel also skips the update itself
    when handed `found_inf`: the step is flagged `amp_skipped` from that device tensor (no sync)."""
    scale = getattr(optimizer, "grad_scale", None)
    if not isinstance(scale, torch.Tensor):
        return None
    found_inf = getattr(optimizer, "found_inf", None)
    if isinstance(found_inf, torch.Tensor):
        capture.handover.flags.append((capture.step, "amp_skipped", found_inf > 0))
    return scale


def unscale_summaries(pending: list, kind: str, scale: torch.Tensor) -> list:
    """`pending`'s (layer, kind, count, vector) with the vectors of `kind` in true units:
    the linear fields divided by `scale` (new vectors; the others as they were)."""
    out = []
    for layer, k, count, vec in pending:
        if k == kind:
            vec = vec.clone()
            vec[_LINEAR] = vec[_LINEAR] / scale.to(vec.device, vec.dtype)
        out.append((layer, k, count, vec))
    return out


# -- hook bodies of a run with a scaler (the capture: hooks/capture.py's Capture) ----------
def on_scaled_forward(capture, module, args) -> None:
    """A model forward pre-hook: a step the scaler skipped ends when the next training forward begins."""
    if torch.is_grad_enabled() and capture.loss_scale.skipped_step():
        end_skipped_step(capture)


def end_skipped_step(capture) -> None:
    """End a step whose `optimizer.step()` the GradScaler skipped: scalar `amp_skipped` = 1
    and its loss, which health leaves out of the training curves. Its gradients held
    Inf/NaN by definition: no gradient norm, no gradient summaries, no weights or update."""
    flag_skipped(capture)
    capture.end_step()


def flag_skipped(capture) -> None:
    """This step is one the scaler skipped: scalar `amp_skipped` = 1, its gradients dropped."""
    capture.grad_squares.clear()
    if capture.deferred:
        capture.pending += capture.deferred.summarize()
    capture.pending = [entry for entry in capture.pending if entry[1] != "gradient"]
    capture.writer.add_scalars(capture.step, {"amp_skipped": 1.0})


def after_scaled_step(capture) -> None:
    """After the optimizer stepped (before `update()` changes the scale): this step's
    module-output gradient summaries, seen scaled by backward, in true units."""
    capture.loss_scale.stepped = True
    scale = capture.loss_scale.backward_scale()
    if capture.capturing and scale is not None:
        if capture.deferred:
            capture.pending += capture.deferred.summarize()
        capture.pending = unscale_summaries(capture.pending, "gradient", scale)
