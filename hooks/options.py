"""What `hooks.watch` is asked to do, written down once: `watch` and both framework
callbacks (hooks/lightning.py, hooks/transformers.py) take these options and pass one
`WatchOptions` on."""

from __future__ import annotations

import dataclasses
import os
from typing import Any


@dataclasses.dataclass(frozen=True)
class WatchOptions:
    """The options of one watched run.

    Args:
        run_dir: the folder runs are written to; the run is `run_dir/name`.
        name: the run's name (generated from the time when None; `-2`, `-3`, ... is
            appended when the name is taken).
        every: capture every N optimizer steps, or "auto": hold `budget`.
        task: "classification", "regression" or None (inferred from the loss or outputs).
        config: any JSON-able dict, kept in the manifest.
        flush_every_s: seconds between flushes to disk.
        class_names: the classes' names, kept in the manifest.
        seed: the seed you used, kept in the manifest.
        budget: with every="auto", the share of training time captures may take.
        scaler: the `torch.amp.GradScaler` the loop scales its loss with, or None.

    Example::

        options = WatchOptions(run_dir="runs", name="exp1", every=10)
        dataclasses.replace(options, seed=0)
    """

    run_dir: str | os.PathLike = "runs"
    name: str | None = None
    every: int | str = "auto"
    task: str | None = None
    config: dict | None = None
    flush_every_s: float = 5.0
    class_names: list[str] | None = None
    seed: int | None = None
    budget: float = 0.03
    scaler: Any = dataclasses.field(default=None, compare=False, repr=False)

    def validate(self) -> None:
        """Raise ValueError, saying what to pass instead, for an option out of range."""
        every = self.every
        if every != "auto" and (not isinstance(every, int) or isinstance(every, bool) or every < 1):
            raise ValueError(f"watch: every must be a positive int (capture every N steps) or 'auto', got {every!r}")
        if not 0 < self.budget < 1:
            raise ValueError(f"watch: budget is a fraction of training time, e.g. 0.03 for 3%; got {self.budget!r}")
        name = self.name
        if name is not None and (not isinstance(name, str) or name.strip() in ("", ".", "..")
                                 or any(c in name for c in "/\\\0")):
            raise ValueError(f"watch: name must be one folder name inside run_dir (no '/', '\\' or '..'), got "
                             f"{name!r} — pass name='exp1' and run_dir for the folder")
        if self.task not in (None, "classification", "regression"):
            raise ValueError(
                f"watch: task must be 'classification', 'regression' or None (infer), got {self.task!r}")

    def manifest_entry(self) -> dict[str, Any]:
        """The manifest's `watch` entry: the capture schedule asked for."""
        return {"every": self.every, "budget": self.budget if self.every == "auto" else None,
                "flush_every_s": self.flush_every_s}
