"""When to capture: every N steps, or an automatic schedule that holds a cost budget.

The automatic schedule captures step 0, 1, 2, 4, 8, 16, … (dense at the start, where most
problems show) and, beyond those, whenever the time saved up allows: every step that is
not captured adds `budget` × its duration to a balance, minus the time the tool's
always-on hooks spent in it (loss, gradient norm, learning rate: the budget is for
everything the tool does, so that the default's total cost stays within it); every
capture takes away its measured overhead (its duration minus the median of recent plain
steps), and a step is captured when the balance covers the expected overhead. Over a
long run the tool costs about `budget` of training time; the power-of-two captures add
log2(steps) captures.
"""

from __future__ import annotations

import statistics
from collections import deque


class EverySchedule:
    """Capture every `every` steps (step 0 included)."""

    def __init__(self, every: int) -> None:
        self.every = every

    def should_capture(self, step: int) -> bool:
        return step % self.every == 0

    def record(self, step: int, captured: bool, duration_s: float, own_s: float = 0.0) -> None:
        pass

    def describe(self) -> dict:
        return {"every": self.every}


class AutoSchedule:
    """Hold capture overhead near `budget` (a fraction of training time)."""

    def __init__(self, budget: float = 0.03, window: int = 32) -> None:
        self.budget = budget
        self.balance_s = 0.0
        self.cost_s: float | None = None
        self.plain = deque(maxlen=window)
        self._unsettled: list[float] = []
        self.overhead_s = 0.0
        self.total_s = 0.0

    def should_capture(self, step: int) -> bool:
        if step & (step - 1) == 0:  # 0, 1, 2, 4, 8, ...
            return True
        return self.cost_s is not None and self.balance_s >= self.cost_s

    def record(self, step: int, captured: bool, duration_s: float, own_s: float = 0.0) -> None:
        """`own_s`: time the always-on hooks took within the step (charged to plain steps)."""
        if step == 0:
            return  # the first step pays one-off costs (allocation, lazy init): not a measure
        self.total_s += duration_s
        if not captured:
            self.plain.append(duration_s)
            self.balance_s += self.budget * duration_s - own_s
            self.overhead_s += own_s
            for d in self._unsettled:
                self._charge(d)
            self._unsettled = []
        elif self.plain:
            self._charge(duration_s)
        else:
            self._unsettled.append(duration_s)

    def _charge(self, duration_s: float) -> None:
        overhead = max(0.0, duration_s - statistics.median(self.plain))
        self.cost_s = overhead if self.cost_s is None else 0.7 * self.cost_s + 0.3 * overhead
        self.balance_s -= overhead
        self.overhead_s += overhead

    def describe(self) -> dict:
        return {
            "every": "auto",
            "budget": self.budget,
            "capture_cost_s": self.cost_s,
            "overhead_frac": self.overhead_s / self.total_s if self.total_s else None,
        }
