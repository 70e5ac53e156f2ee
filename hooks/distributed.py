"""Several ranks, one run: where it is written and which steps every rank captures.

Every rank calls `watch()` (as torch.distributed expects of collectives): rank 0 picks
the run directory and broadcasts it; with `every="auto"`, the ranks agree on capture
steps through a non-blocking all-reduce on a gloo group of the tool's own.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

from hooks.options import WatchOptions
from hooks.schedule import AutoSchedule, EverySchedule, SyncedAutoSchedule


def rank_and_world_size() -> tuple[int, int]:
    """(rank, world size) of this process: (0, 1) outside torch.distributed."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def broadcast_path(path: Path | None) -> Path | None:
    """Rank 0's `path`, on every rank (collective); None where rank 0 could not make it."""
    box = [str(path) if path is not None else None]
    torch.distributed.broadcast_object_list(box, src=0)
    return Path(box[0]) if box[0] is not None else None


def all_reduce_max() -> tuple[Callable[[list[float]], Callable[[], list[float] | None]] | None, Any]:
    """For the synchronized schedule: `agree(values)` starts a non-blocking all-reduce
    (MAX) of a few floats and returns a poll (the result once every rank has sent its
    values, None before; raises if the collective failed). Runs on a gloo group of the
    tool's own (CPU tensors, whatever backend training uses, and never in the middle of
    training's own collectives), with a 5-minute timeout (the schedule waits for a result
    at most SyncedAutoSchedule.SYNC_WAIT_S, and only when the next sync step comes first).
    Creating the group is collective: every rank calls watch(), as for the run's path.
    Returns (agree, group), or (None, None) with a warning where no gloo group can be made."""
    dist = torch.distributed
    try:
        group = dist.new_group(backend="gloo", timeout=timedelta(minutes=5))
    except (RuntimeError, ValueError) as exc:
        warnings.warn(f"watch: no gloo process group for the ranks to agree on capture steps ({exc}); each rank "
                      "keeps its own schedule, so ranks may capture different steps. Pass every=N to align them.",
                      stacklevel=5)
        return None, None

    def agree(values: list[float]) -> Callable[[], list[float] | None]:
        t = torch.tensor(values, dtype=torch.float64)
        work = dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group, async_op=True)

        def poll() -> list[float] | None:
            if not work.is_completed():
                return None
            work.wait()  # raises if the collective failed
            return t.tolist()

        return poll

    return agree, group


def make_schedule(options: WatchOptions, world_size: int) -> tuple[Any, Any]:
    """(capture schedule, the gloo group it agrees on or None) for these options."""
    if options.every != "auto":
        return EverySchedule(options.every), None
    if world_size > 1:  # every rank captures the same steps
        agree, group = all_reduce_max()
        return SyncedAutoSchedule(options.budget, agree), group
    return AutoSchedule(options.budget), None


def release_group(group: Any, schedule: Any) -> None:
    """Destroy the schedule's gloo group, unless an agreement is still in flight."""
    if group is None:
        return
    # tearing down a group waits for its collectives: not while an agreement another
    # rank never joined is in flight (uneven inputs), which would hold close() until
    # the collective timed out; that group is left to the process's end
    if not schedule.in_flight():  # the group exists for the SyncedAutoSchedule
        try:
            torch.distributed.destroy_process_group(group)
        except Exception:  # e.g. the default group is gone already, and its subgroups with it
            pass
