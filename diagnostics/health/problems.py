"""Problems: the findings grouped by cause, the most likely cause first.

A bug is typically reported as several findings at once: weight decay far too strong also
collapses the update ratios and leaves the loss at the baseline. Each rule declares which
other findings its cause would explain (`explains=` on `@rule`, optionally conditioned on
the two findings: same layer, the symptom's evidence). Among the loud findings (warning or
error), a cause explains a symptom when its rule declares the symptom's name and the
condition holds; explanation is followed transitively.

A problem is a loud finding that no other loud finding explains, with every finding it
explains (transitively) as its symptoms. The same cause on several layers (one rule's
findings; for update ratios, in one direction) is one problem: the first-ranked finding leads,
the others are its `also`, their symptoms join its own. Where findings explain each other (a cycle), the
cycle yields one problem, whose cause is the member with the worst severity, then the most
findings explained directly, then the earliest step, then the earliest-registered rule. Problems are ranked by
severity (the worst of the cause's and its symptoms'), then how many symptoms they explain,
then step: the first is the most likely cause.

Example::

    from diagnostics.health import problems
    for p in problems(diagnostics.open_run("runs/exp1")):
        print(p.severity, p.message, [s.rule for s in p.symptoms])
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from diagnostics.health import registry
from diagnostics.health.common import SEVERITIES, Finding
from diagnostics.health.registry import Condition

LOUD = ("error", "warning")

# What a bug in the loss's inputs explains (softmax before CrossEntropyLoss, NLLLoss on logits, a
# regression loss on class ids...): gradients shrink (probabilities into CrossEntropyLoss bound the
# loss below and squash its gradient), the outputs cannot match the labels, the loss stays near its
# baseline. Their own advice (He init, class weights) sends the user the wrong way.
LOSS_INPUT_SYMPTOMS = ("vanishing_gradients", "exploding_gradients", "activation_scale_depth", "update_ratio",
                       "output_vs_label", "loss_vs_baseline", "labels_unlearnable",
                       ("stuck_parameters", lambda c, s: moves_too_little(s)))
# What a model that does not learn explains: the outputs stay at the prior, the loss at its baseline.
NOT_LEARNING = ("output_vs_label", "loss_vs_baseline", "labels_unlearnable")
_RANK = {s: i for i, s in enumerate(SEVERITIES)}

# Symptoms that say the training failed outright: a cause that explains one of them, and whose
# rule may give an error, becomes an error (softmax before CrossEntropyLoss slows learning; it
# need not stop it, but with the loss at the baseline it did).
TRAINING_FAILED = ("loss_vs_baseline",)

# A cause is made an error only where its own floor on the loss lies this far below the
# trivial baseline or further: softmax before CrossEntropyLoss bounds the loss at
# log(1 + (K − 1)/e), 63% of the baseline log K for 10 classes but 86% for 1,000, where a
# model that learned may end "barely better than the baseline" because of the floor alone.
FLOOR_BELOW_BASELINE = 0.8


@dataclass(frozen=True)
class Problem:
    """One cause with the symptoms it explains.

    `cause` is the finding that explains the others (escalated to an error when the training
    failed with it); `symptoms` the findings it explains, as their rules gave them; `severity`
    the worst of them all; `message` the cause's message and the symptoms it explains.
    """

    cause: Finding
    symptoms: list[Finding] = field(default_factory=list)
    severity: str = "warning"
    message: str = ""
    also: list[Finding] = field(default_factory=list)  # the same cause found on other layers

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: severity, message, cause, symptoms and `also` as `Finding.to_dict()`."""
        return {"severity": self.severity, "message": self.message, "cause": self.cause.to_dict(),
                "symptoms": [s.to_dict() for s in self.symptoms], "also": [f.to_dict() for f in self.also]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Problem:
        return cls(Finding(**d["cause"]), [Finding(**s) for s in d["symptoms"]], d["severity"], d["message"],
                   [Finding(**f) for f in d.get("also", [])])


# Conditions for `explains=` on `@rule`: each (cause, symptom) -> bool, built from predicates
# on one finding's evidence.


def symptom(holds: Callable[[Finding], bool]) -> Condition:
    """The symptom satisfies `holds` (e.g. `symptom(low_ratio)`)."""
    return lambda cause, found: holds(found)


def cause(holds: str | Callable[[Finding], bool], then: Condition | None = None) -> Condition:
    """The cause is named `holds` (a rule emitting several names) or satisfies it, and `then` holds."""
    test = (lambda f: f.rule == holds) if isinstance(holds, str) else holds
    return lambda c, s: test(c) and (then is None or then(c, s))


def low_ratio(f: Finding) -> bool:
    """An update ratio below its healthy range: the layer barely moves."""
    ev = f.evidence
    return ev.get("median_ratio") is not None and ev.get("low") is not None and ev["median_ratio"] < ev["low"]


def high_ratio(f: Finding) -> bool:
    """An update ratio above its healthy range: too high a learning rate for the layer."""
    ev = f.evidence
    return ev.get("median_ratio") is not None and ev.get("high") is not None and ev["median_ratio"] > ev["high"]


def shrinking(f: Finding) -> bool:
    """Activations whose scale shrinks with depth (their last-to-first std ratio below 1)."""
    ratio = f.evidence.get("ratio_last_to_first")
    return ratio is not None and ratio < 1


def growing(f: Finding) -> bool:
    """Activations whose scale grows with depth."""
    ratio = f.evidence.get("ratio_last_to_first")
    return ratio is not None and ratio > 1


def moves_too_little(f: Finding) -> bool:
    """A stuck parameter whose gradient is too small to move it (not a zero learning rate, no
    gradient or clipping, bugs of their own), while other parameters move."""
    from diagnostics.health.loop import MOVES_TOO_LITTLE  # loop imports this module

    return f.evidence.get("reason") == MOVES_TOO_LITTLE and not f.evidence.get("all_parameters_stuck")


def starved(f: Finding) -> bool:
    """A stuck parameter whose gradient is zero or too small to move it: what dead units,
    saturated units or a vanishing gradient upstream leave it (not a zero learning rate,
    clipping or a missing gradient)."""
    from diagnostics.health.loop import MOVES_TOO_LITTLE

    reason = f.evidence.get("reason") or ""
    return reason == MOVES_TOO_LITTLE or reason.startswith("its gradient is zero")


def on_stuck_layer(c: Finding, s: Finding) -> bool:
    """The symptom is on a parameter the cause (stuck parameters) names, or every parameter is stuck."""
    return bool(c.evidence.get("all_parameters_stuck")) or s.layer in (c.evidence.get("parameters") or [c.layer])


def lasting(c: Finding, s: Finding) -> bool:
    """The symptom lasts until the cause's first step or later (a NaN explains nothing that ended before it)."""
    return c.step_start is None or s.step_start is None or (s.step_end if s.step_end is not None
                                                             else s.step_start) >= c.step_start


def same_layer(c: Finding, s: Finding) -> bool:
    """The symptom is on the cause's layer, or on one of its parameters ('fc1.weight' for 'fc1')."""
    return bool(c.layer and s.layer) and (s.layer == c.layer or s.layer.rsplit(".", 1)[0] == c.layer)


def explains(cause: Finding, symptom: Finding) -> bool:
    """Whether `cause`'s rule declares `symptom` as something it explains, its condition holding;
    only loud findings explain or are explained."""
    if cause is symptom or cause.severity not in LOUD or symptom.severity not in LOUD:
        return False
    entry = registry.for_finding(cause.rule)
    return entry is not None and any(name == symptom.rule and (when is None or when(cause, symptom))
                                     for name, when in entry.explains)


def _reach(loud: list[Finding]) -> tuple[list[list[int]], list[set[int]]]:
    """For each loud finding, the indices of those it explains directly, and transitively (itself excluded)."""
    edges = [[j for j in range(len(loud)) if explains(c, loud[j])] for c in loud]
    reach = []
    for i in range(len(loud)):
        seen, todo = set(), list(edges[i])
        while todo:
            j = todo.pop()
            if j not in seen:
                seen.add(j)
                todo.extend(edges[j])
        seen.discard(i)
        reach.append(seen)
    return edges, reach


def _step(f: Finding) -> float:
    return math.inf if f.step_start is None else f.step_start


def _order(f: Finding) -> int:
    entry = registry.for_finding(f.rule)
    return registry.RULES.index(entry) if entry is not None else len(registry.RULES)


def group(findings: list[Finding]) -> list[Problem]:
    """The loud findings grouped into problems, ranked; see the module docstring.

    Example::

        group([weight_decay, update_ratio_fc1, at_baseline])  # one problem, two symptoms
    """
    return [p for _, p in _grouped(findings)]


def _grouped(findings: list[Finding]) -> list[tuple[Finding, Problem]]:
    """Each problem with its cause as the rule gave it (before escalation), ranked."""
    loud = [f for f in findings if f.severity in LOUD]
    edges, reach = _reach(loud)

    def as_cause(i: int) -> tuple:  # in a cycle all reach the same: the one explaining most directly leads
        return (_RANK.get(loud[i].severity, len(_RANK)), -len(reach[i]), -len(edges[i]), _step(loud[i]),
                _order(loud[i]))

    grouped = []
    for i in range(len(loud)):
        if any(i in reach[j] and j not in reach[i] for j in range(len(loud)) if j != i):
            continue  # explained by a finding outside its own cycle
        cycle = [j for j in range(len(loud)) if j == i or (i in reach[j] and j in reach[i])]
        if min(cycle, key=as_cause) == i:
            grouped.append((loud[i], _problem(loud[i], [loud[j] for j in sorted(reach[i], key=as_cause)])))
    return _ranked(_merged(_ranked(grouped)))


def _ranked(grouped: list[tuple[Finding, Problem]]) -> list[tuple[Finding, Problem]]:
    return sorted(grouped, key=lambda rp: (_RANK.get(rp[1].severity, len(_RANK)), -len(rp[1].symptoms),
                                           _step(rp[0]), _order(rp[0]), rp[0].layer or ""))


def _same_cause(f: Finding) -> tuple:
    """What makes two causes one: the rule, and for update ratios the direction (a layer moving
    too fast and another too slowly are two problems)."""
    return f.rule, high_ratio(f), low_ratio(f)


def _merged(grouped: list[tuple[Finding, Problem]]) -> list[tuple[Finding, Problem]]:
    """One problem per cause: a rule's findings on several layers (dead units in three layers)
    fold into the first-ranked one, as `also`, with their symptoms."""
    out: list[tuple[Finding, Problem]] = []
    first: dict[tuple, int] = {}
    for raw, p in grouped:
        key = _same_cause(p.cause)
        if key not in first:
            first[key] = len(out)
            out.append((raw, p))
            continue
        lead_raw, lead = out[first[key]]
        held = {id(s) for s in lead.symptoms}
        symptoms = lead.symptoms + [s for s in p.symptoms if id(s) not in held]
        also = [*lead.also, p.cause]
        severity = min(lead.severity, p.severity, key=lambda s: _RANK.get(s, len(_RANK)))
        out[first[key]] = (lead_raw, Problem(lead.cause, symptoms, severity, _message(lead.cause, symptoms, also),
                                             also))
    return out


def _problem(cause: Finding, symptoms: list[Finding]) -> Problem:
    failed = next((s for s in symptoms if s.rule in TRAINING_FAILED), None)
    entry = registry.for_finding(cause.rule)
    if failed is not None and cause.severity == "warning" and entry is not None and "error" in entry.severities:
        cause = _escalated(cause, failed)
    severity = min((cause.severity, *(s.severity for s in symptoms)), key=lambda s: _RANK.get(s, len(_RANK)))
    return Problem(cause, symptoms, severity, _message(cause, symptoms))


def _message(cause: Finding, symptoms: list[Finding], also: list[Finding] = ()) -> str:
    """The cause's message, where else it was found, then the symptoms it explains: 'The same
    on 2 other layers: fc2, fc3. It explains 3 other findings: update ratio (2 layers), loss
    vs baseline.'"""
    text = cause.message
    if also:
        where = [f.layer for f in also if f.layer]
        n = len(also)
        text += (f" The same on {n} other layer{'s' if n > 1 else ''}: {', '.join(where)}." if len(where) == n
                 else f" The same {n} more time{'s' if n > 1 else ''}.")
    if not symptoms:
        return text
    counts = Counter(s.rule for s in symptoms)
    layers = {rule: len({s.layer for s in symptoms if s.rule == rule and s.layer}) for rule in counts}
    named = [rule.replace("_", " ") + (f" ({layers[rule]} layers)" if layers[rule] > 1 else
                                       f" ({n} findings)" if n > 1 else "") for rule, n in counts.items()]
    n = len(symptoms)
    return f"{text} It explains {n} other finding{'s' if n > 1 else ''}: {', '.join(named)}."


def _escalated(cause: Finding, at_baseline: Finding) -> Finding:
    """A cause's warning, made an error when training failed with it (the demo's baseline
    read ⚠1, as the run with unnormalised inputs that trained best did): the loss stays near
    the trivial baseline (`at_baseline`'s evidence), and the cause's own floor on the loss
    (if it has one) is well below that baseline, so the floor does not explain it."""
    ev = at_baseline.evidence
    last, baseline, floor = ev.get("last_loss"), ev.get("baseline"), cause.evidence.get("loss_floor")
    if not last or not baseline or floor is not None and floor > FLOOR_BELOW_BASELINE * baseline:
        return cause
    below = f", which its floor of {floor:.3g} does not explain" if floor is not None else ""
    return dataclasses.replace(
        cause, severity="error", evidence={**cause.evidence, "training_failed": True},
        message=f"{cause.message} With it the model has barely learned, if at all: its loss {last:.3g} is "
                f"{last / baseline:.0%} of the trivial baseline {baseline:.3g}{below} (see loss vs baseline).")


def settle(findings: list[Finding]) -> tuple[list[Finding], list[Problem]]:
    """The findings as `check` returns them, and their problems. In the findings, in their
    order, a cause is replaced by its escalated self and a symptom becomes info that names
    the cause of the first problem that explains it (evidence `deferred_to`), with the advice
    to fix that first: its own advice (He init, class weights) would send the user the wrong way."""
    grouped = _grouped(findings)
    by_id = {id(f): p for _, p in reversed(grouped) for f in p.symptoms}  # the first problem wins
    causes = {id(raw): p.cause for raw, p in grouped}
    out = []
    for f in findings:
        if id(f) in causes:
            out.append(causes[id(f)])
        elif id(f) in by_id:
            cause = by_id[id(f)].cause.rule
            out.append(dataclasses.replace(
                f, severity="info", message=f"{f.message} Likely a consequence of {cause} (see that finding).",
                advice=f"Fix {cause} first and check again; if this stays, then: {f.advice}",
                evidence={**f.evidence, "deferred_to": cause}))
        else:
            out.append(f)
    return out, [p for _, p in grouped]
