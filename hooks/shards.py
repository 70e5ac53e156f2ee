"""Sharded parameters (FSDP2's `fully_shard`, FSDP1's `FullyShardedDataParallel`): what
this rank holds of each parameter, under the name the user's model gives it.

Each rank summarises only its own shard, with no collective (a collective inside a hook
hangs every other rank the day one rank skips it); the reader merges the ranks' rows into
whole-parameter distributions (`diagnostics/merge.py`). Here:

- FSDP2: parameters and gradients are DTensors; their local shard is `to_local()` (rows
  of dim 0, unpadded; a rank may hold none). Names are the user's already.
- FSDP1, `use_orig_params=True`: each parameter is a flat 1-D view of this rank's part of
  it (possibly empty); names carry `_fsdp_wrapped_module.`, removed here.
- FSDP1, `use_orig_params=False`: the optimizer holds one `FlatParameter` per wrapped
  module (`..._fsdp_wrapped_module._flat_param`): its local shard is cut back into the
  original parameters' pieces (their names, e.g. `0.weight`) through the FlatParameter's
  own bookkeeping (`_fqns`, `_shard_param_infos`; FSDP1 internals, read defensively: where
  they are missing the flat shard is summarised as one tensor named `0._flat_param`).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import torch

# the parts wrappers insert into qualified names: FSDP1, activation checkpointing, torch.compile
_WRAPPER_PARTS = frozenset({"_fsdp_wrapped_module", "_checkpoint_wrapped_module", "_orig_mod"})
_FLAT = "_flat_param"


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor (`to_local()`: a view, no communication); any other
    tensor as it is. No DTensor exists until torch.distributed.tensor is imported, so
    the check costs a dict lookup where it never is.

    A DTensor replicated along a mesh dimension (HSDP: `fully_shard` on a 2-D mesh) has
    the same shard on every replica: only the first replica's counts, the others give an
    empty tensor, so that the reader's merge counts each element once."""
    dtensor = sys.modules.get("torch.distributed.tensor")
    if dtensor is not None and isinstance(t, dtensor.DTensor):
        local = t.to_local()
        return local if _first_replica(t) else local.reshape(-1)[:0]
    return t


def _first_replica(t: torch.Tensor) -> bool:
    """Whether this rank is at coordinate 0 of every mesh dimension `t` is replicated on."""
    coordinate = t.device_mesh.get_coordinate()
    if coordinate is None:  # this rank is not in the mesh: it holds nothing of `t`
        return False
    return all(c == 0 for c, p in zip(coordinate, t.placements) if p.is_replicate())


def user_name(name: str) -> str:
    """A qualified name without the wrappers' prefixes:
    `_fsdp_wrapped_module.0._fsdp_wrapped_module.weight` → `0.weight`,
    `_fsdp_wrapped_module.0._fsdp_wrapped_module` → `0`."""
    if "_" not in name:
        return name
    return ".".join(part for part in name.split(".") if part not in _WRAPPER_PARTS)


def shard_kind(name: str, param: torch.Tensor) -> str | None:
    """"fsdp2" for a DTensor parameter, "fsdp1" for one inside FSDP1's wrapper (its name
    says so), None for a whole parameter."""
    dtensor = sys.modules.get("torch.distributed.tensor")
    if dtensor is not None and isinstance(param, dtensor.DTensor):
        return "fsdp2"
    if "_fsdp_wrapped_module" in name or name.endswith(_FLAT):
        return "fsdp1"
    return None


def local_pieces(name: str, param: torch.Tensor) -> Iterator[tuple[str, torch.Tensor, torch.Tensor | None]]:
    """(user's parameter name, this rank's values, this rank's gradient or None) of one
    parameter the optimizer holds: the whole parameter outside FSDP, the local shard
    under it, one piece per original parameter of an FSDP1 FlatParameter.

    A rank holding none of a parameter gives an empty piece, and an empty gradient where
    FSDP1 leaves it None: every rank then records a row (of count 0) for every sharded
    parameter, so that the reader can tell a step all ranks have written (a live run's
    last flush may hold some ranks' rows only) from one they have not."""
    grad = param.grad
    if name.endswith(_FLAT) and _flat_bookkeeping(param):
        owner = user_name(name[: -len(_FLAT)].rstrip("."))  # the wrapped module's name; "" at the root
        prefix = f"{owner}." if owner else ""
        flat = param.detach()
        for fqn, info in zip(param._fqns, param._shard_param_infos):
            start = info.offset_in_shard if info.in_shard else 0
            cut = slice(start, start + (info.numel_in_shard if info.in_shard else 0))
            yield prefix + user_name(fqn), flat[cut], None if grad is None else grad[cut]
        return
    values = local_tensor(param)
    if grad is None and values.numel() == 0 and param.requires_grad and shard_kind(name, param):
        grad = values
    yield user_name(name), values, None if grad is None else local_tensor(grad)


def _flat_bookkeeping(param: torch.Tensor) -> bool:
    infos = getattr(param, "_shard_param_infos", None)
    fqns = getattr(param, "_fqns", None)
    return (infos is not None and fqns is not None and len(infos) == len(fqns)
            and all(hasattr(i, "offset_in_shard") and hasattr(i, "numel_in_shard") for i in infos))
