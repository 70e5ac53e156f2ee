"""What `hooks.watch` is asked to do, written down once: `watch` and both framework
callbacks (hooks/lightning.py, hooks/transformers.py) take these options and pass one
`WatchOptions` on."""

from __future__ import annotations

import dataclasses
import fnmatch
import os
from collections.abc import Iterable, Sequence
from typing import Any

from diagnostics import schema

# kinds=: what can be chosen (the reader's kinds, DESIGN.md)
KINDS = schema.KINDS


def _patterns(layers: str | Sequence[str] | None) -> tuple[str, ...]:
    if layers is None:
        return ()
    return (layers,) if isinstance(layers, str) else tuple(layers)


def _matches(name: str, pattern: str) -> bool:
    """`name` is `pattern`, inside it (`encoder` holds `encoder.0.conv`) or matches it as a
    glob, itself or as the module holding what the glob names (`encoder.0.*`: encoder.0)."""
    return (name == pattern or name.startswith(pattern + ".") or fnmatch.fnmatchcase(name, pattern)
            or fnmatch.fnmatchcase(name + ".", pattern))


@dataclasses.dataclass(frozen=True)
class Selection:
    """Which layers and kinds a run records (`watch(layers=..., kinds=...)`).

    A layer is recorded when it matches an include pattern (or there is none) and no
    exclude pattern (one starting with "!"). A pattern matches a name that equals it, lies
    inside it (`"encoder"` holds `encoder.0.conv`), or matches it as a glob (`fnmatch`:
    `*` also crosses dots). A parameter is recorded when its name or its module's matches.

    Example::

        Selection(("encoder.*", "!*.norm*"), frozenset({"activation", "weight"})).layer("encoder.0")
    """

    patterns: tuple[str, ...] = ()
    kinds: frozenset[str] = frozenset(KINDS)

    def _selected(self, names: Iterable[str]) -> bool:
        names = list(names)
        include = [p for p in self.patterns if not p.startswith("!")]
        if include and not any(_matches(n, p) for n in names for p in include):
            return False
        return not any(_matches(n, p[1:]) for n in names for p in self.patterns if p.startswith("!"))

    def layer(self, name: str) -> bool:
        """Whether the module `name` (as `named_modules()` gives it) is recorded."""
        return self._selected((name,))

    def parameter(self, name: str) -> bool:
        """Whether the parameter `name` (as `named_parameters()` gives it) is recorded."""
        return self._selected((name, name.rpartition(".")[0]) if "." in name else (name,))

    def check(self, module_names: list[str], parameter_names: list[str]) -> None:
        """Raise ValueError for an include pattern that matches nothing in the model."""
        names = module_names + parameter_names
        for p in self.patterns:
            if p.startswith("!"):  # excluding what is not there is harmless
                continue
            if not any(_matches(n, p) for n in names):
                example = ", ".join(repr(n) for n in module_names[1:4])
                raise ValueError(f"watch: layers pattern {p!r} matches no module or parameter of the model "
                                 f"(names look like {example}) — use names from model.named_modules()")


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
        layers: the layers to record (names or glob patterns; "!pattern" excludes), None: all.
        kinds: the kinds to record (of `KINDS`), None: all.
        strict: raise the tool's own errors instead of containing them (the default warns
            once, switches the failing part off and lets training go on).
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
    layers: str | Sequence[str] | None = None
    kinds: Sequence[str] | None = None
    strict: bool = False

    @property
    def selection(self) -> Selection:
        """The layers and kinds to record."""
        kinds = (self.kinds,) if isinstance(self.kinds, str) else self.kinds
        return Selection(_patterns(self.layers), frozenset(KINDS if kinds is None else kinds))

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
        patterns = _patterns(self.layers)
        if not all(isinstance(p, str) and p.strip("!") for p in patterns):
            raise ValueError(f"watch: layers must be a name or glob pattern, or a list of them, got {self.layers!r}")
        kinds = (self.kinds,) if isinstance(self.kinds, str) else self.kinds
        if kinds is not None and (not kinds or any(k not in KINDS for k in kinds)):
            raise ValueError(f"watch: kinds must be a list of {', '.join(KINDS)}; got {self.kinds!r}")
        if self.task not in (None, "classification", "regression"):
            raise ValueError(
                f"watch: task must be 'classification', 'regression' or None (infer), got {self.task!r}")

    def manifest_entry(self) -> dict[str, Any]:
        """The manifest's `watch` entry: the capture schedule asked for."""
        entry = {"every": self.every, "budget": self.budget if self.every == "auto" else None,
                 "flush_every_s": self.flush_every_s}
        if self.layers is not None:
            entry["layers"] = list(_patterns(self.layers))
        if self.kinds is not None:
            entry["kinds"] = sorted(self.selection.kinds)
        return entry
