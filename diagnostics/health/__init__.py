"""Health checks: rules that read a recorded run and say what looks wrong, where, and what to try.

Each rule is a function `rule_xxx(run) -> list[Finding]` registered once, with its
description and its evidence chart, by `@rule` (`diagnostics.health.registry`) in the
module of its topic: `activations`, `gradients`, `fit` (outputs, loss, overfitting, label
noise), `loop` (training-loop bugs), `data` (data bugs) and `loss` (loss-input bugs). A rule
reads only what the run recorded; when its data is missing (no activations captured, no
`val/loss` logged, a regression run for a classification rule) it returns no finding,
never an exception. Thresholds are module constants named after what they bound, and
each rule's docstring gives its threshold and where it comes from.

`problems(run)` groups the findings into problems: a cause with the symptoms it explains
(each rule declares them, `explains=` on `@rule`; see `diagnostics.health.problems`), the
most likely cause first. `check(run)` keeps every finding, a symptom shown as info.

Example::

    import diagnostics
    from diagnostics.health import check, evidence_figure
    for f in check(diagnostics.open_run("runs/exp1")):
        print(f.severity, f.rule, f.layer, f.step_start, f.message)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from diagnostics.figures import empty_figure
from diagnostics.health import problems as _problems
from diagnostics.health import registry
from diagnostics.health.common import SEVERITIES, Finding, reads_cached
from diagnostics.health.problems import TRAINING_FAILED, Problem

# each rule module registers its rules when imported: this is their order
# isort: off
from diagnostics.health import activations, gradients, fit, loop, data, loss, symmetry, invariance  # noqa: F401
# isort: on
from diagnostics.health.activations import (
    rule_activation_scale_depth,
    rule_dead_units,
    rule_input_scale,
    rule_saturation,
)
from diagnostics.health.fit import rule_label_noise, rule_loss_vs_baseline, rule_output_vs_label, rule_overfitting
from diagnostics.health.gradients import rule_grad_norm_spikes, rule_gradient_depth, rule_nonfinite, rule_update_ratio

# What `check` runs: the registered rules' functions, in registration order.
RULES: tuple[Callable[[Any], list[Finding]], ...] = tuple(r.check for r in registry.RULES)

__all__ = ["Finding", "Problem", "SEVERITIES", "RULES", "TRAINING_FAILED", "check", "problems", "diagnose",
           "defer_to_root_cause", "evidence_figure", "rule_table",
           "rule_nonfinite", "rule_dead_units", "rule_saturation", "rule_gradient_depth", "rule_grad_norm_spikes",
           "rule_activation_scale_depth", "rule_update_ratio", "rule_output_vs_label", "rule_loss_vs_baseline",
           "rule_overfitting", "rule_label_noise", "rule_input_scale"]


def check(run) -> list[Finding]:
    """Run every rule in `RULES` over `run`; findings sorted by severity (errors first),
    then step. A finding another explains (`problems`) is shown as info that names its
    cause. A rule that fails on an unexpected run is skipped with a warning, so the
    dashboard never shows a traceback.

    Example::

        findings = check(diagnostics.open_run("runs/exp1"))
        [f.to_dict() for f in findings if f.severity != "info"]
    """
    return diagnose(run)[0]


def problems(run) -> list[Problem]:
    """The run's findings grouped into problems (`diagnostics.health.problems`): each a cause
    with the symptoms it explains, the most likely cause first.

    Example::

        for p in problems(diagnostics.open_run("runs/exp1")):
            print(p.severity, p.message, [s.rule for s in p.symptoms])
    """
    return diagnose(run)[1]


def diagnose(run) -> tuple[list[Finding], list[Problem]]:
    """`check(run)` and `problems(run)` from one pass of the rules (the dashboard's cache keeps both)."""
    findings: list[Finding] = []
    with reads_cached(run):  # the rules share what they read in this pass
        for rule in RULES:
            try:
                findings.extend(rule(run))
            except Exception as exc:  # a rule's bug must not hide the other rules' findings
                warnings.warn(f"health rule {rule.__name__} failed on {getattr(run, 'path', run)}: {exc!r}",
                              RuntimeWarning, stacklevel=3)
    settled, grouped = _problems.settle(findings)
    rank = {s: i for i, s in enumerate(SEVERITIES)}
    return sorted(settled, key=lambda f: (rank.get(f.severity, len(rank)),
                                          math.inf if f.step_start is None else f.step_start, f.rule,
                                          f.layer or "")), grouped


def defer_to_root_cause(findings: list[Finding]) -> list[Finding]:
    """The findings, in their order, with each symptom made info that names its cause, and a
    cause with which training failed made an error (`problems.settle`): the baseline of the
    demo read 'vanishing gradients: use He init' beside the softmax it came from."""
    return _problems.settle(findings)[0]


def evidence_figure(run, finding: Finding) -> go.Figure:
    """The chart that shows why `finding` fired: its rule's registered evidence.

    Example::

        evidence_figure(run, check(run)[0])
    """
    entry = registry.for_finding(finding.rule)
    fig = entry.evidence(run, finding) if entry is not None and entry.evidence is not None else None
    return fig if fig is not None else empty_figure("no chart for this finding")


def rule_table() -> pd.DataFrame:
    """One row per registered rule: `rule` (the finding names it emits, comma-separated),
    `topic`, `severities` and `description`, in registration order (the Health page's list)."""
    return pd.DataFrame([{"rule": ", ".join(r.names), "topic": r.topic, "severities": ", ".join(r.severities),
                          "description": r.description} for r in registry.RULES],
                        columns=["rule", "topic", "severities", "description"])
