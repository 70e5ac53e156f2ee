"""Capture inside a `torch.compile` graph: the forward hook's work as two custom ops.

Dynamo traces the forward hooks of a compiled module's submodules into its graph. A hook
body that torch cannot trace (numpy, Python floats, `Tensor.register_hook`) would break the
graph at every layer; and a graph break inside a module's hook makes dynamo give up on the
whole nested call, so the model runs as one small graph per layer on every step afterwards,
capture steps or not (checked on torch 2.13). So on a capture step, under compilation, the
hook instead routes the module's output through `hookscope::observe_activation`: an opaque
op that dynamo and Inductor put in the graph as it is and call with the real tensor, whose
Python body summarises it as the eager hook would, and whose backward,
`hookscope::observe_gradient`, summarises the gradient that reaches the output. Each returns
a copy of its input (a custom op may not return its input): the same values, so training is
unchanged.

The hook reads `capturing` while dynamo traces it, so the flag is a guard: the model has two
graphs, one with the ops (capture steps) and one without (every other step), each compiled
once; flipping the flag switches between them and recompiles nothing after that.

Limits: dynamo does not guard on a module's hooks, so a graph traced before `watch` (compiled
steps first, or another model of the same class compiled without hooks) keeps running without
them: activations are then not captured, and `check_activations_seen` says so once. A module
called twice in a step records its first call's activation, but under compilation the gradient
of its last call (the first that backward reaches). On a capture step each observed output
exists twice for a moment (the op's copy).
"""

from __future__ import annotations

import itertools
import sys
import weakref
from collections.abc import Callable
from typing import Any

import torch

from hooks.guard import contained, say

# capture key → the Capture it names: the graph holds the key (an int), never the object
_CAPTURES: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()
_KEYS = itertools.count(1)


def register(capture: Any) -> int:
    """A key for `capture` that a compiled graph can hold as a constant."""
    key = next(_KEYS)
    _CAPTURES[key] = capture
    return key


def unregister(key: int) -> None:
    """The capture of `key` has finished: a graph still holding the key records nothing."""
    _CAPTURES.pop(key, None)


_WARNED = {"stale_graph": False}


def check_activations_seen(step: int, seen: set) -> None:
    """A capture step with a loss but no layer's activation: the model runs a graph dynamo
    traced before its hooks existed (dynamo does not guard on hooks: compiled steps before
    watch, or a model of the same class compiled earlier). Says so once per process."""
    if _WARNED["stale_graph"] or any(kind == "activation" for _, kind in seen):
        return
    _WARNED["stale_graph"] = True
    say(
        f"watch: capture step {step} saw the loss but no layer's activation. If the model is torch.compile'd, "
        "its graph was traced before watch (torch does not recompile when hooks are added), so activations "
        "and their gradients are not captured; weights, gradients, loss and outputs are. Watch before the "
        "first compiled step, or call torch.compiler.reset() after watch.",
    )


_EAGER: dict[Callable, Callable] = {}


def run_eagerly(fn: Callable, *args: Any) -> Any:
    """fn(*args), none of whose frames dynamo compiles. A hook that runs eagerly inside a
    compiled region (a module whose hooks dynamo leaves to eager code, as `model.compile()`
    can) would otherwise have each function it calls compiled as a frame of its own, numpy
    included (the summaries came back as numpy arrays)."""
    dynamo = sys.modules.get("torch._dynamo")
    if dynamo is None:  # nothing compiled exists before torch._dynamo is imported
        return fn(*args)
    eager = _EAGER.get(fn)
    if eager is None:
        eager = _EAGER[fn] = dynamo.disable(fn)
    return eager(*args)


@torch.library.custom_op("hookscope::observe_activation", mutates_args=())
def observe_activation(out: torch.Tensor, capture: int, layer: str) -> torch.Tensor:
    """Record `out` as `layer`'s activation (a capture step, inside a compiled graph); a copy of `out`."""
    from hooks.capture import record_activation  # here: hooks.capture imports this module

    owner = _CAPTURES.get(capture)
    if owner is not None:  # inside the graph, no Hook around it: contained here
        contained(owner.guard, "activations", lambda: record_activation(owner, layer, out))
    return out.clone()


@observe_activation.register_fake
def _observe_activation_fake(out: torch.Tensor, capture: int, layer: str) -> torch.Tensor:
    return torch.empty_like(out)


@torch.library.custom_op("hookscope::observe_gradient", mutates_args=())
def observe_gradient(grad: torch.Tensor, capture: int, layer: str) -> torch.Tensor:
    """Record `grad` as the gradient of `layer`'s output; a copy of `grad`."""
    owner = _CAPTURES.get(capture)
    if owner is not None:
        contained(owner.guard, "activations", lambda: owner.on_grad(layer, grad))
    return grad.clone()


@observe_gradient.register_fake
def _observe_gradient_fake(grad: torch.Tensor, capture: int, layer: str) -> torch.Tensor:
    return torch.empty_like(grad)


def _setup(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
    _, ctx.capture, ctx.layer = inputs


def _backward(ctx: Any, grad: torch.Tensor) -> tuple:
    return observe_gradient(grad, ctx.capture, ctx.layer), None, None


observe_activation.register_autograd(_backward, setup_context=_setup)


def observed(output: Any, capture: int, layer: str) -> Any:
    """`output` (a module's) with its first tensor routed through `observe_activation`; None
    (the hook leaves the output alone) where there is no floating-point tensor to observe:
    a tensor, or a tuple or list whose first item is one."""
    if isinstance(output, torch.Tensor):
        return observe_activation(output, capture, layer) if output.is_floating_point() else None
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        first = observed(output[0], capture, layer)
        if first is None:
            return None
        rest = list(output[1:])
        return type(output)([first, *rest]) if type(output) in (tuple, list) else None
    return None
