"""The recorded layers' forward hooks, on their modules only while a step is captured.

A module with a forward hook leaves torch's fast call path: about 3 µs a module a call
even when the hook returns at its first line, which on a model of 1,000 small layers is
5% of a step (`benchmarks/overhead.py --models deep`). Between captures nothing reads
activations, so the hooks come off at the end of a captured step and go back on at the end
of the step before the next capture (`Capture.end_step`).

`torch.compile` does not notice a hook added or removed after it traced a module (dynamo
does not guard on hooks), so once the model runs compiled the hooks stay on, as they were
before: the hook reads the capture flag, which dynamo guards on, and each graph is traced
twice (capturing or not). A compiled model is seen at `watch` (a compiled module, or
`model.compile()` called before) or by a sentinel, a forward pre-hook on the model and on
its first recorded layer that only asks `torch.compiler.is_compiling()`: the first
capture steps (0, 1, 2) run with every hook on, so a graph traced then holds them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from hooks.guard import Hook


class LayerHooks:
    """Forward hooks put on and taken off together. It is a handle too: `remove()` takes
    them off for good (the run's close removes it with the others)."""

    def __init__(self, always: bool = False) -> None:
        self.hooks: list[tuple[nn.Module, Any]] = []
        self.handles: list = []
        self.always = always  # the model runs compiled: the hooks stay on

    def add(self, module: nn.Module, hook: Any) -> None:
        self.hooks.append((module, hook))

    def set(self, capturing: bool) -> None:
        """On for a captured step (or for good once compiled), off otherwise."""
        if capturing or self.always:
            if not self.handles:
                self.handles = [module.register_forward_hook(hook) for module, hook in self.hooks]
        elif self.handles:
            self.detach()

    def detach(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def remove(self) -> None:
        self.detach()
        self.hooks = []


def on_compiling(capture: Any, module: nn.Module, args: Any) -> None:
    """The sentinel: under dynamo's trace, keep the layer hooks on from now on."""
    if torch.compiler.is_compiling() and not capture.layers.always:
        capture.layers.always = True


def add_sentinels(capture: Any, model: nn.Module, first: nn.Module | None, handles: list) -> None:
    """The compile sentinel on the model and on its first recorded layer (`model.compile()`
    traces the layers' hooks, not the model's own)."""
    for module in {id(m): m for m in (model, first) if m is not None}.values():
        handles.append(module.register_forward_pre_hook(Hook(capture, "activations", on_compiling)))
