"""The capture schedules, on simulated step durations (no clock, but for the wait for a slow agreement)."""

from __future__ import annotations

import time
import warnings

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


def test_auto_schedule_charges_the_always_on_hooks_to_the_budget():
    """The budget is for everything the tool does: when the always-on hooks (loss, grad
    norm) already take 2% of each plain step, captures get the remaining 1%."""
    steps, capture_extra_s = 20_000, 1.5
    schedule = AutoSchedule(budget=0.03)
    captured = []
    for step in range(steps):
        capture = schedule.should_capture(step)
        captured.append(step) if capture else None
        schedule.record(step, capture, 1.0 + (capture_extra_s if capture else 0.0), own_s=0.02)
    capture_overhead = len(captured) * capture_extra_s / steps
    assert 0.01 * 0.8 <= capture_overhead <= 0.01 + 15 * capture_extra_s / steps
    assert schedule.describe()["overhead_frac"] == pytest.approx(0.02 + capture_overhead, rel=0.05)
    # always-on hooks over the budget on their own: only the power-of-two captures remain
    for own_s, expected_beyond in ((0.05, 0), (0.0, 50)):
        schedule, taken = AutoSchedule(budget=0.03), []
        for step in range(5000):
            capture = schedule.should_capture(step)
            taken.append(step) if capture else None
            schedule.record(step, capture, 1.0 + (1.5 if capture else 0.0), own_s=0.0 if capture else own_s)
        beyond = [s for s in taken if s & (s - 1)]
        assert len(beyond) >= expected_beyond and (expected_beyond or not beyond)


# -- several ranks: the same captured steps ----------------------------------------

def _ranks_in_lockstep(extras: list[float], steps: int, budget: float = 0.03) -> tuple[list[list[int]], list]:
    """Simulate ranks whose captures cost differently. `agree` is the non-blocking MAX
    all-reduce: each rank sends its values; the poll answers once every rank has sent
    its values for that agreement."""
    from hooks.schedule import SyncedAutoSchedule

    sent: list[dict[int, list[float]]] = []  # per agreement: rank -> values

    def make_agree(rank):
        calls = 0

        def agree(values):
            nonlocal calls
            if len(sent) <= calls:
                sent.append({})
            box = sent[calls]
            box[rank] = values
            calls += 1
            return lambda: [max(col) for col in zip(*box.values())] if len(box) == len(extras) else None
        return agree

    schedules = [SyncedAutoSchedule(budget, make_agree(r)) for r in range(len(extras))]
    captured = [[] for _ in extras]
    for step in range(steps):
        decisions = [schedule.should_capture(step) for schedule in schedules]
        for r, (schedule, extra, capture) in enumerate(zip(schedules, extras, decisions)):
            if capture:
                captured[r].append(step)
            schedule.record(step, capture, 1.0 + (extra if capture else 0.0))
    return captured, schedules


def test_synced_schedule_captures_the_same_steps_on_every_rank():
    captured, schedules = _ranks_in_lockstep([1.5, 3.0], steps=2_000)
    assert captured[0] == captured[1]
    # the dearest rank sets the period: 3.0 s per capture / (3% of a 1.0 s step) = 100 steps
    assert [s.period for s in schedules] == [100, 100]
    beyond = [s for s in captured[0] if s & (s - 1)]
    assert beyond and all(s % 100 == 0 for s in beyond)
    assert captured[0][:6] == [0, 1, 2, 4, 8, 16]
    described = schedules[0].describe()
    assert described["synchronized"] is True and described["agreed"]["capture_cost_s"] == pytest.approx(3.0)


def test_synced_schedule_holds_the_budget_of_the_dearest_rank():
    steps, extras = 20_000, [1.5, 3.0]
    captured, _ = _ranks_in_lockstep(extras, steps)
    overhead = len(captured[1]) * extras[1] / steps
    assert 0.03 * 0.8 <= overhead <= 0.03 + 15 * extras[1] / steps


def test_synced_schedule_follows_a_change_in_cost_within_1024_steps():
    """The period is agreed again every 1,024 steps past 1,024, not only at powers of two."""
    from hooks.schedule import SyncedAutoSchedule

    schedule = SyncedAutoSchedule(0.03, lambda values: (lambda: values))
    captured, periods = [], {}
    for step in range(6_000):
        capture = schedule.should_capture(step)
        captured.append(step) if capture else None
        periods[step] = schedule.period
        extra = 3.0 if step < 2_100 else 0.25  # captures become 12x cheaper at step 2,100
        schedule.record(step, capture, 1.0 + (extra if capture else 0.0))
    assert periods[2_000] == 100  # 3.0 / (3% of a 1.0 s step)
    assert periods[5_999] == 9  # ceil(0.25 / 0.03): agreed at 4,096, in force from 5,120
    assert [s for s in captured if 5_120 < s < 5_300] == [s for s in range(5_121, 5_300) if s % 9 == 0]


def test_a_slow_agreement_is_waited_for_not_taken_for_a_rank_that_stopped(monkeypatch):
    """Steps of a millisecond finish 8 steps before a slow link's all-reduce: not a failure."""
    from hooks.schedule import SyncedAutoSchedule

    def slow(values):  # completes 20 ms after it was started, whenever that is asked
        done_at = time.monotonic() + 0.02
        return lambda: list(values) if time.monotonic() >= done_at else None

    schedule = SyncedAutoSchedule(0.03, slow)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        simulate(schedule, 2_000, 1.0, 3.0)
    assert schedule.describe()["synchronized"] is True and schedule.period == 100  # 3.0 / (3% of 1.0 s)


@pytest.mark.parametrize("failure", ["raises", "never answers"])
def test_synced_schedule_falls_back_to_its_own_when_ranks_cannot_agree(failure, monkeypatch):
    from hooks.schedule import SyncedAutoSchedule

    monkeypatch.setattr(SyncedAutoSchedule, "SYNC_WAIT_S", 0.05)

    def broken(values):
        raise RuntimeError("Connection closed by peer")

    def silent(values):  # another rank stopped stepping: the all-reduce never completes
        return lambda: None

    schedule = SyncedAutoSchedule(0.03, broken if failure == "raises" else silent)
    with pytest.warns(UserWarning, match="could not agree on capture steps.*every=N"):
        captured = simulate(schedule, 2_000, 1.0, 0.5)
    assert schedule.describe()["synchronized"] is False
    assert len(captured) > 50  # the local budget keeps working: 0.5 s captures fit often
