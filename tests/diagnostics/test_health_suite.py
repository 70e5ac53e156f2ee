"""The planted-bug suite (benchmarks/health_suite.py): every planted bug's rule fires, loud,
at the right layer and steps; the healthy controls (BN CNN with Adam, dropout, regression,
early stopping, the OCT and radar simulators) show no warning or error."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "health_suite.py"


def _suite():
    spec = importlib.util.spec_from_file_location("health_suite_benchmark", _PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


suite = _suite()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.slow
@pytest.mark.parametrize("case", suite.PLANTED, ids=lambda c: c.name)
def test_planted_bug_is_found(case, tmp_path):
    result = suite.run_case(case, tmp_path)
    assert result["fired"], f"{case.rule}@{case.layer} not among {result['findings']}"
    _severities_as_registered(result["findings"])


@pytest.mark.slow
@pytest.mark.parametrize("case", suite.CONTROLS, ids=lambda c: c.name)
def test_healthy_control_stays_quiet(case, tmp_path):
    result = suite.run_case(case, tmp_path)
    assert result["passed"], result["false_alarms"]
    _severities_as_registered(result["findings"])


def _severities_as_registered(findings: list[str]) -> None:
    """Each finding ("severity rule layer") has a severity its rule registered."""
    from diagnostics.health import registry
    for text in findings:
        severity, rule = text.split()[:2]
        assert severity in registry.for_finding(rule).severities, text


def test_every_rule_has_a_planted_case():
    from diagnostics.health import registry
    planted = {c.rule for c in suite.PLANTED}
    for rule in registry.RULES:  # a rule may emit several names (gradient_depth: vanishing or exploding)
        assert set(rule.names) <= planted, f"no planted case for {sorted(set(rule.names) - planted)}"


def test_judge_and_summary_count_by_hand():
    from diagnostics.health import Finding
    f = lambda rule, sev, layer=None, s=None: Finding(rule, sev, layer, s, s, "m", "a")
    planted = suite.Case("p", None, "dead_units", "1")
    assert suite.judge(planted, [f("dead_units", "warning", "1")])["fired"]
    assert not suite.judge(planted, [f("dead_units", "info", "1")])["fired"]  # info is not loud
    assert not suite.judge(planted, [f("dead_units", "error", "3")])["fired"]  # wrong layer
    spike = suite.Case("s", None, "grad_norm_spikes", None, (60, 60))
    assert not suite.judge(spike, [f("grad_norm_spikes", "warning", s=10)])["fired"]  # wrong steps
    control = suite.Case("c", None)
    results = [dict(suite.judge(planted, [f("dead_units", "error", "1")]), train_s=1, check_s=0),
               dict(suite.judge(spike, []), train_s=1, check_s=0),
               dict(suite.judge(control, [f("loss_vs_baseline", "info")]), train_s=1, check_s=0),
               dict(suite.judge(control, [f("overfitting", "warning"), f("label_noise", "warning")]),
                    train_s=1, check_s=0)]
    s = suite.summarise(results)
    assert (s["fired"], s["planted"], s["recall"]) == (1, 2, 0.5)
    assert (s["controls_with_alarm"], s["controls"], s["false_alarm_rate"], s["false_alarms"]) == (1, 2, 0.5, 2)
