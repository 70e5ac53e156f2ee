"""The squared gradient norms of one step, as backward left them: what the global gradient
norm is summed from, read before any code of the user's (clipping) touches the gradients.

A hook per parameter costs a model of 1,000 small layers more than its budget: torch's
dispatch of a tensor hook and the call itself, about 6 µs a parameter a step, against a
step of ~55 ms (`benchmarks/overhead.py --models deep`: 10%). So only two kinds of
parameter get a post-accumulate hook:

- large ones (over `SMALL` elements), read in their hook while the gradient is still in
  cache (one native pass on the CPU);
- the clipping probes (a few small parameters whose gradient is compared with itself at
  the step: was it clipped?), read in their hook too.

Every other parameter is small and is read once per backward, all together, in a callback
the autograd engine runs when that backward ends (`queue_callback`, what DDP's reducer
uses), queued by the first hooked parameter the backward reaches: one native call over
every CPU float32 gradient, one `torch._foreach_norm` per device and precision for the
rest. A backward that reaches no hooked parameter queues nothing: the small gradients are
then read at the step (after any clipping: the one case where their share is read late).

Gradient accumulation: each read replaces the last (the gradients accumulated so far), as
a parameter's last hook call of a step does.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from hooks.summarize import native_sumsq_many
from hooks.tensors import global_norm, squared_norm

SMALL = 1 << 16  # elements: at most 256 KB of float32, read in the end-of-backward batch


def split_params(params: list[torch.Tensor], probes: list[torch.Tensor]) -> tuple[list, list]:
    """(hooked, batched): the parameters read in their own hook (large ones and the
    probes) and those read together at backward's end."""
    probe_ids = {id(p) for p in probes}
    hooked = [p for p in params if p.numel() > SMALL or id(p) in probe_ids]
    hooked_ids = {id(p) for p in hooked}
    return hooked, [p for p in params if id(p) not in hooked_ids]


class GradSquares:
    """Per-parameter squared gradient norms of one step (hooked parameters) and the sum of
    the batched ones' squares.

    Args:
        batched: the parameters read together at backward's end (`split_params`).
        contain: runs a read contained (`contained(guard, "grad_norm", f)`): the callback
            runs inside the user's `backward()`, where nothing may raise.
    """

    def __init__(self, batched: list[torch.Tensor], contain: Callable[[Callable[[], None]], None]) -> None:
        self.batched = batched
        self.contain = contain
        self.eager: dict[torch.Tensor, torch.Tensor | float] = {}
        self.batch_total: list | None = None  # its parts (floats, 0-d tensors); None: not read this step
        self.armed = False  # a callback waits for this backward's end

    def take(self, param: torch.Tensor) -> None:
        """A hooked parameter's gradient was just accumulated: read it, and have the
        batched ones read when this backward ends."""
        if not self.armed and self.batched:
            torch.autograd.Variable._execution_engine.queue_callback(self._at_backward_end)
            self.armed = True
        if param.grad is not None:
            self.eager[param] = squared_norm(param.grad)

    def _at_backward_end(self) -> None:
        self.armed = False
        self.contain(self.read_batched)

    def read_batched(self) -> None:
        """The batched parameters' gradients' sum of squares, as they are now."""
        self.batch_total = batched_squares([p.grad for p in self.batched if p.grad is not None])

    def total_norm(self) -> torch.Tensor:
        """sqrt of the sum of every parameter's square: a 0-d float64 tensor (no sync)."""
        parts: list = list(self.eager.values())
        if self.batched:
            if self.batch_total is None:  # no hooked parameter ended a backward this step
                self.armed = False
                self.read_batched()
            parts += self.batch_total
        return global_norm(parts)

    def get(self, param: torch.Tensor) -> torch.Tensor | float | None:
        return self.eager.get(param)

    def first(self) -> torch.Tensor | None:
        """One parameter whose square is held (the clipping check's fallback probe)."""
        return next(iter(self.eager), None)

    def clear(self) -> None:
        self.eager, self.batch_total = {}, None

    def __bool__(self) -> bool:
        """Whether a norm can be read: a gradient was read, or a batched parameter has one."""
        return bool(self.eager) or self.batch_total is not None or any(p.grad is not None for p in self.batched)


def batched_squares(grads: list[torch.Tensor]) -> list:
    """Sum of squares of many gradients, in parts: one native call over the dense CPU
    float32 ones (a Python float), one `_foreach_norm` per device and precision for the
    others (a 0-d float64 tensor on that device; no sync)."""
    total, rest = native_sumsq_many(grads)
    if not rest:
        return [total]
    groups: dict[tuple, list[torch.Tensor]] = {}
    for g in rest:
        g = g.detach()
        if g.is_sparse:
            g = g.coalesce().values()
        groups.setdefault((g.device, g.dtype == torch.float64), []).append(g)
    parts: list = [total]
    with torch.no_grad():
        for (_, wide), members in groups.items():
            norms = torch._foreach_norm(members, 2, dtype=torch.float64 if wide else torch.float32)
            parts.append(torch.stack(norms).double().square().sum())
    return parts
