"""Small helpers shared by the capture hooks and the evaluation pass: the tensor in a
module's output, gradient norms, and the task a loss or a batch implies."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import nn

from hooks.shards import local_tensor
from hooks.summarize import native_sumsq


def first_tensor(obj: Any) -> torch.Tensor | None:
    """The first tensor in a module's output: tensor, tuple/list, dict or dataclass.

    Args:
        obj: what a module's forward returned.

    Returns:
        The first tensor found, depth first, or None.
    """
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
        found = first_tensor(item)
        if found is not None:
            return found
    return None


def infer_task(outputs: torch.Tensor, labels: torch.Tensor) -> str:
    """"classification" for float outputs with several columns against integer labels,
    else "regression"."""
    if not labels.is_floating_point() and outputs.is_floating_point() and outputs.ndim >= 2 and outputs.shape[1] > 1:
        return "classification"
    return "regression"


def stored_values(grad: torch.Tensor) -> torch.Tensor:
    """A gradient's values: the gradient itself, or the stored values of a sparse one
    (nn.Embedding(sparse=True): the rows the batch touched, duplicates summed); of a
    DTensor (FSDP2), this rank's shard."""
    grad = local_tensor(grad).detach()  # detached: backward(create_graph=True) must not grow a graph here
    return grad.coalesce().values() if grad.is_sparse else grad


def squared_norm(grad: torch.Tensor) -> torch.Tensor | float:
    """Sum of squares of a gradient: a Python float for dense CPU float32 gradients (one
    call of the native pass, hooks/_fused.c, where it was built), else a 0-d float32
    (float64 for float64/complex128) tensor on its device. Dense float32/float64
    gradients: a BLAS dot, 2.6x faster than vector_norm's reduction (0.10 vs 0.25 ms per
    2.4 M elements). Each overflows float32 where elements pass ~1e19: the norm reads inf then.
    Of a DTensor (FSDP2), this rank's shard's sum of squares: no collective (the shards'
    sums are added where every rank's are known: the reader, `diagnostics/merge.py`)."""
    grad = local_tensor(grad)
    # one native call: a Python float, no tensor ops to dispatch (~62 a step on a ResNet)
    if (native := native_sumsq(grad)) is not None:
        return native
    grad = stored_values(grad)
    if grad.layout == torch.strided and grad.dtype in (torch.float32, torch.float64) and grad.is_contiguous():
        flat = grad.view(-1)
        return torch.dot(flat, flat)
    wide = grad.dtype == torch.float64 or grad.is_complex()
    return torch.linalg.vector_norm(grad, dtype=None if wide else torch.float32).real.square()


def global_norm(squares: list) -> torch.Tensor:
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



CLASSIFICATION_LOSSES = (nn.CrossEntropyLoss, nn.NLLLoss, nn.BCEWithLogitsLoss, nn.BCELoss)
REGRESSION_LOSSES = (nn.MSELoss, nn.L1Loss, nn.SmoothL1Loss, nn.HuberLoss)


def task_of_loss(loss_fn: object) -> str | None:
    """The task a loss module implies: "classification", "regression", or None (unknown)."""
    if isinstance(loss_fn, CLASSIFICATION_LOSSES):
        return "classification"
    if isinstance(loss_fn, REGRESSION_LOSSES):
        return "regression"
    return None
