"""Health checks: rules that read a recorded run and say what looks wrong, where, and what to try.

Each rule is a function `rule_xxx(run) -> list[Finding]` registered once, with its
description and its evidence chart, by `@rule` (`diagnostics.health.registry`) in the
module of its topic: `activations`, `gradients`, `fit` (outputs, loss, overfitting, label
noise), `loop` (training-loop bugs), `data` (data bugs) and `loss` (loss-input bugs). A rule
reads only what the run recorded; when its data is missing (no activations captured, no
`val/loss` logged, a regression run for a classification rule) it returns no finding,
never an exception. Thresholds are module constants named after what they bound, and
each rule's docstring gives its threshold and where it comes from.

Example::

    import diagnostics
    from diagnostics.health import check, evidence_figure
    for f in check(diagnostics.open_run("runs/exp1")):
        print(f.severity, f.rule, f.layer, f.step_start, f.message)
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from diagnostics.figures import empty_figure
from diagnostics.health import registry
from diagnostics.health.common import SEVERITIES, Finding

# each rule module registers its rules when imported: this is their order
# isort: off
from diagnostics.health import activations, gradients, fit, loop, data, loss  # noqa: F401
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

__all__ = ["Finding", "SEVERITIES", "RULES", "ROOT_CAUSES", "SYMPTOMS", "TRAINING_FAILED", "check",
           "defer_to_root_cause", "evidence_figure", "rule_table",
           "rule_nonfinite", "rule_dead_units", "rule_saturation", "rule_gradient_depth", "rule_grad_norm_spikes",
           "rule_activation_scale_depth", "rule_update_ratio", "rule_output_vs_label", "rule_loss_vs_baseline",
           "rule_overfitting", "rule_label_noise", "rule_input_scale"]


def check(run) -> list[Finding]:
    """Run every rule in `RULES` over `run`; findings sorted by severity (errors first),
    then step. A rule that fails on an unexpected run is skipped with a warning, so the
    dashboard never shows a traceback.

    Example::

        findings = check(diagnostics.open_run("runs/exp1"))
        [f.to_dict() for f in findings if f.severity != "info"]
    """
    findings: list[Finding] = []
    for rule in RULES:
        try:
            findings.extend(rule(run))
        except Exception as exc:  # a rule's bug must not hide the other rules' findings
            warnings.warn(f"health rule {rule.__name__} failed on {getattr(run, 'path', run)}: {exc!r}",
                          RuntimeWarning, stacklevel=2)
    findings = defer_to_root_cause(findings)
    rank = {s: i for i, s in enumerate(SEVERITIES)}
    return sorted(findings, key=lambda f: (rank.get(f.severity, len(rank)),
                                           math.inf if f.step_start is None else f.step_start, f.rule,
                                           f.layer or ""))


# A bug in what the loss is given shapes everything downstream of it: gradients shrink
# (probabilities into CrossEntropyLoss bound the loss below and squash its gradient), the
# outputs cannot match the labels, the loss stays near its baseline. Those symptoms are
# real but their own advice (He init, class weights) sends the user the wrong way.
ROOT_CAUSES = ("softmax_before_cross_entropy", "softmax_wrong_dim", "nll_input", "double_sigmoid",
               "regression_loss_on_class_ids", "loss_shape_broadcast")
SYMPTOMS = ("vanishing_gradients", "exploding_gradients", "activation_scale_depth", "update_ratio",
            "output_vs_label", "loss_vs_baseline", "labels_unlearnable", "stuck_parameters")


# Symptoms that say the training failed outright: with one of them, a loss-input bug that
# is a warning on its own (softmax before CrossEntropyLoss slows learning; it need not stop
# it) is an error.
TRAINING_FAILED = ("loss_vs_baseline",)


def _is_symptom(f: Finding) -> bool:
    """A finding a loss-input bug may explain. A stuck parameter only when it has a gradient
    too small to move it (softmax before CE: the conv biases of the demo's baseline never
    changed in float32); a zero learning rate, no gradient or a clipped one are bugs of their own."""
    if f.rule == "stuck_parameters":
        return f.evidence.get("reason") == loop.MOVES_TOO_LITTLE and not f.evidence.get("all_parameters_stuck")
    return f.rule in SYMPTOMS


def defer_to_root_cause(findings: list[Finding]) -> list[Finding]:
    """Where a loss-input bug fired (warning or error), its symptoms become info that names
    it, with the advice to fix it first: the baseline of the demo read 'vanishing gradients:
    use He init' beside the softmax it came from, and, trained for fewer epochs, 'the labels
    look unrelated to the inputs' and 'parameters stuck', both from the same softmax. When
    a symptom says training failed outright (`TRAINING_FAILED`: the loss no better than the
    trivial baseline), the bug's warning becomes an error that says so."""
    causes = [f.rule for f in findings if f.rule in ROOT_CAUSES and f.severity in ("warning", "error")]
    if not causes:
        return findings
    cause = causes[0]
    failed = next((f for f in findings if f.rule in TRAINING_FAILED and f.severity in ("warning", "error")), None)
    return [dataclasses.replace(
        f, severity="info", message=f"{f.message} Likely a consequence of {cause} (see that finding).",
        advice=f"Fix {cause} first and check again; if this stays, then: {f.advice}",
        evidence={**f.evidence, "deferred_to": cause})
        if _is_symptom(f) and f.severity in ("warning", "error") else
        _escalated(f, failed) if failed and f.rule == cause and f.severity == "warning" else f for f in findings]


# A loss-input bug is made an error only where its own floor on the loss lies this far
# below the trivial baseline or further: softmax before CrossEntropyLoss bounds the loss at
# log(1 + (K − 1)/e), 63% of the baseline log K for 10 classes but 86% for 1,000, where a
# model that learned may end "barely better than the baseline" because of the floor alone.
FLOOR_BELOW_BASELINE = 0.8


def _escalated(cause: Finding, at_baseline: Finding) -> Finding:
    """A loss-input bug's warning, made an error when training failed with it (the demo's
    baseline read ⚠1, as the run with unnormalised inputs that trained best did): the loss
    stays near the trivial baseline (`at_baseline`'s evidence), and the bug's own floor on
    the loss (if it has one) is well below that baseline, so the floor does not explain it."""
    ev = at_baseline.evidence
    last, baseline, floor = ev.get("last_loss"), ev.get("baseline"), cause.evidence.get("loss_floor")
    if not last or not baseline or floor is not None and floor > FLOOR_BELOW_BASELINE * baseline:
        return cause
    below = f", which its floor of {floor:.3g} does not explain" if floor is not None else ""
    return dataclasses.replace(
        cause, severity="error", evidence={**cause.evidence, "training_failed": True},
        message=f"{cause.message} With it the model has barely learned, if at all: its loss {last:.3g} is "
                f"{last / baseline:.0%} of the trivial baseline {baseline:.3g}{below} (see loss vs baseline).")


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
