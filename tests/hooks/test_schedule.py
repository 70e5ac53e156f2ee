"""The capture schedules, on simulated step durations (no clock involved)."""

from __future__ import annotations

import pytest

from hooks.schedule import AutoSchedule, EverySchedule


def simulate(schedule, steps: int, plain_s: float, capture_extra_s: float) -> list[int]:
    captured = []
    for step in range(steps):
        capture = schedule.should_capture(step)
        if capture:
            captured.append(step)
        schedule.record(step, capture, plain_s + (capture_extra_s if capture else 0.0))
    return captured


def test_every_schedule_captures_multiples():
    assert simulate(EverySchedule(5), 21, 1.0, 0.5) == [0, 5, 10, 15, 20]


@pytest.mark.parametrize("capture_extra_s", [0.2, 1.5, 10.0])
def test_auto_schedule_holds_the_budget_over_a_long_run(capture_extra_s):
    schedule = AutoSchedule(budget=0.03)
    steps = 20_000
    captured = simulate(schedule, steps, 1.0, capture_extra_s)
    overhead = len(captured) * capture_extra_s / steps
    # the budget, plus the log2(steps) early captures the schedule always takes
    assert overhead <= 0.03 + 15 * capture_extra_s / steps + 1e-9
    assert overhead >= 0.03 * 0.8  # and it uses what it is allowed
    assert schedule.describe()["overhead_frac"] == pytest.approx(overhead, rel=0.05)


def test_auto_schedule_is_dense_at_the_start():
    captured = simulate(AutoSchedule(budget=0.03), 300, 1.0, 3.0)
    assert captured[:8] == [0, 1, 2, 4, 8, 16, 32, 64]


def test_cheap_captures_are_taken_often():
    captured = simulate(AutoSchedule(budget=0.03), 1000, 1.0, 0.01)
    assert len(captured) > 500  # 1% of a step per capture fits the 3% budget almost every step
