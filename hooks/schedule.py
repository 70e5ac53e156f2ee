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

Several processes training one model (DDP) need the same captured steps on every rank, to
be compared step by step, and their timings differ: `SyncedAutoSchedule` lets the ranks
agree on a capture period at each power-of-two step instead (one small all-reduce each
time, log2(steps) over a run).
"""

from __future__ import annotations

import math
import statistics
import time
import warnings
from collections import deque
from collections.abc import Callable


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


class SyncedAutoSchedule(AutoSchedule):
    """The automatic schedule for several ranks: the same captured steps on every rank.

    Each rank measures as `AutoSchedule` does. At sync steps (powers of two from 8 on, then
    every 1,024 steps: steps every rank reaches, in the same order) `agree` starts a
    non-blocking all-reduce of this rank's [capture cost, median plain step, always-on
    time per plain step] with MAX, and returns a poll: the largest of each over the ranks
    once every rank has sent its values, None before. The result is read at the next sync
    step (by then complete, as a rule) and every rank derives the same period
    P = ceil(cost / (budget × step − always-on)): between powers of two, the
    multiples of P are captured. A result not complete at the next sync step (a slow link
    and very fast steps: 8 steps can take milliseconds) is waited for, up to SYNC_WAIT_S; if
    it is still missing then (a rank stopped stepping: uneven inputs) or failed, the rank
    warns once and keeps its own schedule.
    """

    SYNC_WAIT_S = 5.0

    def __init__(self, budget: float, agree: Callable[[list[float]], Callable[[], list[float] | None]] | None,
                 window: int = 32) -> None:
        super().__init__(budget, window)
        self._agree = agree
        self._poll: Callable[[], list[float] | None] | None = None
        self.period: int | None = None  # beyond powers of two, capture multiples of this
        self.agreed: list[float] | None = None
        self._own = deque(maxlen=window)

    def record(self, step: int, captured: bool, duration_s: float, own_s: float = 0.0) -> None:
        super().record(step, captured, duration_s, own_s)
        if step and not captured:
            self._own.append(own_s)

    def should_capture(self, step: int) -> bool:
        if self._agree is None:  # no agreement (any more): this rank's own schedule
            return super().should_capture(step)
        if step >= 8 and (step & (step - 1) == 0 or step % 1024 == 0):
            self._sync()
            if self._agree is None:
                return super().should_capture(step)
        if step & (step - 1) == 0:
            return True
        return self.period is not None and step % self.period == 0

    def in_flight(self) -> bool:
        """Whether an agreement was started and has not completed (or failed) yet."""
        if self._poll is None:
            return False
        try:
            return self._poll() is None
        except Exception:
            return False

    def _local(self) -> list[float]:
        """What this rank sends: capture cost, median plain step, always-on time per step."""
        return [
            self.cost_s or 0.0,
            statistics.median(self.plain) if self.plain else 0.0,
            statistics.fmean(self._own) if self._own else 0.0,
        ]

    def _wait_for_agreement(self) -> list[float]:
        """The last agreement's result, waited for up to SYNC_WAIT_S (polls 1-10 ms apart)."""
        deadline, pause = time.monotonic() + self.SYNC_WAIT_S, 0.001
        while (agreed := self._poll()) is None:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"another rank did not take part in the last agreement within "
                                   f"{self.SYNC_WAIT_S:g} s")
            time.sleep(pause)
            pause = min(2 * pause, 0.01)
        return agreed

    def _sync(self) -> None:
        try:
            if self._poll is not None:
                agreed = self._wait_for_agreement()
                self.agreed = agreed
                cost, plain, own = agreed
                spare = self.budget * plain - own  # capture time one plain step pays for
                self.period = math.ceil(cost / spare) if cost > 0 and spare > 0 else None
            self._poll = self._agree(self._local())
        except Exception as exc:  # a collective that failed, or a rank that stopped stepping
            self._agree = None  # (the last poll is kept: `in_flight` reports on it)
            warnings.warn(
                f"watch: the ranks could not agree on capture steps ({type(exc).__name__}: {exc}); "
                "each rank now keeps its own schedule, so ranks may capture different steps. "
                "Pass every=N to capture the same steps everywhere.",
                stacklevel=2,
            )

    def describe(self) -> dict:
        agreed = dict(zip(("capture_cost_s", "step_s", "always_on_s"), self.agreed)) if self.agreed else None
        return {**super().describe(), "synchronized": self._agree is not None, "period": self.period,
                "agreed": agreed}
