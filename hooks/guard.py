"""Containment: the tool is a guest in someone else's training.

Every hook body runs inside a `Hook`, which catches what the body raises: the failing part
is switched off (its hooks return at once from then on), one warning says what is no longer
recorded and why, and the fault is recorded in the run (`faults` in the manifest and in the
rank's status file; the Overview page shows them). Training goes on as if unwatched: a hook
that fails returns None, which leaves the module's output, the gradient and the optimizer's
arguments as they were.

A `Hook` is what a module, a tensor or an optimizer keeps a reference to. A copy of the
model (`copy.deepcopy`, `pickle`, `torch.save(model)`) copies it as `inert_hook`, a function
that does nothing and holds nothing: the copy records nothing, the original goes on
recording. (A whole-model pickle names `hooks.guard.inert_hook`, so it loads where hookscope
is installed; the `state_dict()` checkpoints PyTorch recommends carry no hook at all.)
"""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Callable
from functools import partial
from typing import Any

# What a part's failure stops recording, in words, for the warning and the dashboard.
PARTS = {
    "activations": "activations and their gradients",
    "loss": "the loss and the model's outputs against the labels",
    "optimizer": "weights, parameter gradients, updates, learning rates and the step count",
    "grad_norm": "the gradient norm",
    "probe": "whether gradients are reset between steps",
    "mode": "forwards under no_grad in train mode",
    "steps": "the step count (no optimizer)",
    "log_batch": "run.log_batch's outputs, labels and per-sample records",
    "log_scalar": "run.log_scalar's values",
    "evaluate": "run.evaluate's per-sample rows",
    "eval_probe": "the eval-mode probes (the same outputs twice; a sample alone as in its batch)",
    "close": "what was buffered when the run closed",
}
# A failure here leaves the step count or the hand-over in doubt: every part stops.
_STOPS_ALL = {"optimizer", "steps"}  # the step ends, and hands over, inside these hooks


class Guard:
    """Which parts of a run are switched off, and the faults that switched them off.

    Args:
        record: called with one fault (a dict) to write it into the run; it must not raise
            (the writer's `note_fault` does not).
        strict: re-raise instead of containing (for people who prefer a crash to a gap).
    """

    def __init__(self, record: Callable[[dict], None], strict: bool = False) -> None:
        self.off: set[str] = set()
        self.all_off = False
        self.faults: list[dict] = []  # each part's first fault
        self.repeats: dict[str, int] = {}  # later faults, counted by part
        self._errors: set[str] = set()
        self.record = record
        self.strict = strict
        self.closed = False  # a closed run's files are final: faults after close are not recorded
        self.step = 0  # the step a fault is recorded at (the capture keeps it current)

    def active(self, part: str) -> bool:
        return not self.all_off and part not in self.off

    def fail(self, part: str, exc: BaseException, switch_off: bool = True) -> None:
        """Note a failure of `part`: switch it off (unless `switch_off` is False: a one-time
        call such as an evaluation), record a part's first fault in the run, warn once per error."""
        if self.strict:
            raise exc
        error = f"{type(exc).__name__}: {exc}"[:500]
        if switch_off:
            self.off.add(part)
            self.all_off = self.all_off or part in _STOPS_ALL
        if part in self.repeats:  # the run keeps each part's first fault (not one a step: run.json each step)
            self.repeats[part] += 1
            return
        self.repeats[part] = 0
        # one warning per fault: an error already warned about (one function failing under
        # several parts, or a closing step failing again) is recorded, not warned again
        warn, all_off = error not in self._errors, part in _STOPS_ALL and switch_off
        self._errors.add(error)
        fault = {"part": part, "error": error, "step": self.step, "time": time.time(), "switched_off": switch_off,
                 "stops_all": all_off}
        self.faults.append(fault)
        if warn:
            lost = "anything" if all_off else PARTS.get(part, part)
            what = (f"from now on this run does not record {lost}" if switch_off
                    else f"this time {lost} went unrecorded")
            say(f"hookscope: {part} failed at step {self.step} ({error}); {what} — training goes on unchanged "
                "(the run lists the fault; strict=True raises instead)")
        if not self.closed:
            try:
                self.record(fault)
            except Exception:  # noqa: BLE001 -- the fault was warned about; recording it is a best effort
                pass


class Hook:
    """A hook body bound to its owner, contained by the owner's `Guard`.

    `body(owner, *bound, *hook_args)` runs unless `part` is switched off; whatever it raises
    (an `Exception`: Ctrl-C and SystemExit pass) switches the part off and the hook returns
    None. Copies of a module, tensor or optimizer holding it hold `inert_hook` instead.

    Example::

        module.register_forward_hook(Hook(capture, "activations", Capture.on_forward, "conv1"))
    """

    __slots__ = ("owner", "part", "body", "call")

    def __init__(self, owner: Any, part: str, body: Callable, *bound: Any) -> None:
        self.owner, self.part, self.body = owner, part, body
        self.call = partial(body, owner, *bound)  # bound once: a partial adds no Python frame

    def __call__(self, *hook_args: Any) -> Any:
        guard = self.owner.guard
        if guard.all_off or self.part in guard.off:
            return None
        try:
            return self.call(*hook_args)
        except Exception as exc:  # the user's training must never die of diagnostics
            guard.fail(self.part, exc)
            return None

    def __deepcopy__(self, memo: dict) -> Callable:
        return inert_hook

    def __copy__(self) -> Callable:
        return inert_hook

    def __reduce__(self) -> tuple:
        return _restore_inert, ()

    def __repr__(self) -> str:
        return f"Hook({self.part}, {getattr(self.body, '__name__', self.body)})"


def say(message: str) -> None:
    """Warn (RuntimeWarning); where warnings are errors (`-W error`, pytest's filterwarnings)
    the message goes to stderr instead: a warning must not become the loop's exception."""
    try:
        warnings.warn(message, RuntimeWarning, stacklevel=4)
    except Exception:  # noqa: BLE001 -- a warnings filter set to "error"
        print(message, file=sys.stderr)


def inert_hook(*args: Any, **kwargs: Any) -> None:
    """What a copy of a watched model holds where the original holds a `Hook`: nothing runs.
    Called as a module hook (the module first), it removes itself from that module's hooks,
    so a copy that ran once holds no trace of the run."""
    module = args[0] if args else None
    for hooks in (getattr(module, "_forward_hooks", None), getattr(module, "_forward_pre_hooks", None)):
        if isinstance(hooks, dict):
            for key in [k for k, v in hooks.items() if v is inert_hook]:
                del hooks[key]
    return None


def _restore_inert() -> Callable:
    """What unpickling a `Hook` gives: `inert_hook`."""
    return inert_hook


def contained(guard: Guard, part: str, call: Callable[[], Any], default: Any = None,
              switch_off: bool = True) -> Any:
    """`call()`, or `default` when it raises (the part is switched off, as a hook's would be)."""
    if not guard.active(part) and switch_off:
        return default
    try:
        return call()
    except Exception as exc:  # noqa: BLE001 -- contained: see Guard.fail
        guard.fail(part, exc, switch_off=switch_off)
        return default
