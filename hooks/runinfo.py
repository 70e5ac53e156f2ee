"""What a run's manifest says about the training it records: the model, its parameters,
the optimizer's groups, the code version and the environment. Read once, at `watch()`."""

from __future__ import annotations

import os
import platform
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hooks.options import WatchOptions
from hooks.shards import user_name


def git_commit() -> str | None:
    """The commit checked out in the working directory, or None outside a git repository."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def make_run_dir(run_dir: Path, name: str | None) -> Path:
    """Make and return `run_dir/name`, or `name-2`, `name-3`, ... when taken; a time-stamped
    name for None. The folder is made with an exclusive mkdir, so two processes started with
    the same name at the same moment never share one (never write into an earlier run)."""
    if name is None:
        name = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:4]
    run_dir.mkdir(parents=True, exist_ok=True)
    path, n = run_dir / name, 2
    while True:
        try:
            path.mkdir()
            return path
        except FileExistsError:
            path = run_dir / f"{name}-{n}"
            n += 1


def _module_entry(name: str, m: nn.Module, model: nn.Module) -> dict:
    """One module's manifest entry; `batch_first` for the modules that take it (nn.LSTM, nn.GRU,
    nn.RNN, nn.MultiheadAttention, transformer layers): which axis of their output is the batch
    (`diagnostics.health.loss`, `batch_first_mismatch`, reads it against the loss's batch)."""
    entry = {"name": user_name(name) or type(model).__name__, "type": type(m).__name__,
             "params": sum(p.numel() for p in m.parameters(recurse=False)),
             "leaf": not any(True for _ in m.children())}
    try:
        batch_first = getattr(m, "batch_first", None)
    except Exception:  # a user's property that raises: the entry goes without it
        batch_first = None
    if isinstance(batch_first, bool):
        entry["batch_first"] = batch_first
    return entry


def model_summary(model: nn.Module) -> tuple[list[dict], list[dict]]:
    """(modules, parameters): one dict per module (name, type, params, leaf, and
    batch_first where the module has one) and per
    parameter (name, shape, numel, requires_grad, dtype: "float32", "float16", ... as at watch())."""
    modules = [_module_entry(name, m, model) for name, m in model.named_modules()]
    params = [
        {"name": user_name(n), "shape": list(p.shape), "numel": p.numel(), "requires_grad": p.requires_grad,
         "dtype": str(p.dtype).removeprefix("torch.")}
        for n, p in model.named_parameters()
    ]
    return modules, params


def optimizer_groups(optimizer, names: dict) -> list[dict]:
    """Each param group's hyperparameters (numbers, bools, strings; betas as a list) and
    the names of the parameters it holds, as they are when `watch` is called."""
    groups = []
    for group in optimizer.param_groups:
        entry: dict[str, Any] = {"params": [names[p] for p in group["params"] if p in names]}
        for key, value in group.items():
            if isinstance(value, (bool, int, float, str)) and key != "params":
                entry[key] = value
            elif isinstance(value, tuple) and all(isinstance(v, (int, float)) for v in value):
                entry[key] = list(value)
            elif isinstance(value, torch.Tensor) and value.numel() == 1:  # lr as a tensor
                entry[key] = float(value)
        groups.append(entry)
    return groups


def manifest(model: nn.Module, optimizer, loss_fn: Callable | None, options: WatchOptions, *, name: str,
             task: str | None, wrapped_by: str | None, compiled: bool, world_size: int) -> dict[str, Any]:
    """The manifest a new run starts with (the writer adds schema version and times).

    Args:
        model: the watched module (unwrapped: names as the user's model has them).
        optimizer: the watched optimizer, or None.
        loss_fn: the loss module or function, or None.
        options: the watch options.
        name: the run's name.
        task: the task, if known yet.
        wrapped_by: the data-parallel wrapper's class name, or None.
        compiled: whether the model was torch.compile'd.
        world_size: the number of ranks.
    """
    modules, params = model_summary(model)
    names = {p: user_name(n) for n, p in model.named_parameters()}
    groups = optimizer_groups(optimizer, names) if optimizer is not None else None
    held = {n for g in groups or () for n in g["params"]}
    for entry in params:
        entry["in_optimizer"] = entry["name"] in held if optimizer is not None else None
    return {
        "name": name,
        "model_class": type(model).__name__,
        "wrapped_by": wrapped_by,
        "task": task,
        "modules": modules,
        "parameters": params,
        "num_parameters": sum(p["numel"] for p in params),
        "watch": options.manifest_entry(),
        "config": options.config or {},
        "class_names": list(options.class_names) if options.class_names else None,
        "seed": options.seed,
        "git_commit": git_commit(),
        "cwd": os.getcwd(),
        "torch_version": torch.__version__,
        "world_size": world_size,
        "compiled": compiled,
        "python_version": platform.python_version(),
        "optimizer": type(optimizer).__name__ if optimizer is not None else None,
        "optimizer_groups": groups,
        "loss_fn": getattr(loss_fn, "__name__", type(loss_fn).__name__) if loss_fn is not None else None,
        # padding counted in the loss? (diagnostics/health/invariance.py): CrossEntropyLoss / NLLLoss's
        "loss_ignore_index": getattr(loss_fn, "ignore_index", None),
        # per-class weights of CrossEntropyLoss / NLLLoss (diagnostics/health/fit.py): weights that rise with
        # the class counts (counts where 1 / counts was meant) weigh the rare classes down
        "loss_class_weight": class_weight(loss_fn),
        # PoissonNLLLoss reads its input as a log-rate unless log_input=False (diagnostics/health/loss.py)
        "loss_log_input": getattr(loss_fn, "log_input", None),
    }


def class_weight(loss_fn) -> list[float] | None:
    """The per-class `weight` of a CrossEntropyLoss / NLLLoss module (at most 1,000 classes), or None."""
    w = getattr(loss_fn, "weight", None)
    if type(loss_fn).__name__ not in ("CrossEntropyLoss", "NLLLoss") or not isinstance(w, torch.Tensor):
        return None
    if w.ndim != 1 or w.numel() > 1000:
        return None
    return [float(v) for v in w.detach().float().cpu().tolist()]
