"""The one list of health rules: each is registered once, with the description the Health
page and docs/health.md show and the chart that gives its evidence.

A rule module writes::

    def _chart(run, finding) -> go.Figure | None:      # None: no chart for this finding
        return charts.scalar_lines(run, ["grad_norm"], "global gradient norm")

    @rule("one line: what it catches", severities=("warning",), evidence=_chart)
    def rule_my_check(run) -> list[Finding]:
        ...

A rule also declares which other findings its cause would explain, when it fires loud
(`explains=`): a finding name, or a name with a condition on the two findings (same layer,
the symptom's evidence). `diagnostics.health.problems` groups findings by these declarations:

    @rule("Weight decay dominates the update.", severities=("warning",),
          explains=("loss_vs_baseline", ("update_ratio", symptom(low_ratio))))

(the conditions live in `diagnostics.health.problems`).

`RULES` holds the `Rule`s in registration order (the import order of the rule modules in
`diagnostics.health`); `for_finding(name)` is the rule that emits findings named `name`. A
rule some other rule explains can give `info` too (a symptom is shown as info beside its
cause): registration adds it to its `severities`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from diagnostics.health.common import SEVERITIES, Finding


@dataclass(frozen=True)
class Rule:
    """A registered health rule.

    `check(run)` returns its findings (none when the data is missing, never an exception);
    `names` are the `Finding.rule` values it can emit (usually one: the function's name
    without `rule_`); `severities` those it can give; `description` one line for the page
    and docs/health.md; `evidence(run, finding)` the chart behind a finding, or None;
    `explains` the findings its cause would explain: (finding name, condition or None).
    """

    check: Callable[[Any], list[Finding]]
    names: tuple[str, ...]
    severities: tuple[str, ...]
    description: str
    evidence: Callable[[Any, Finding], Any] | None = None
    explains: tuple[tuple[str, Condition | None], ...] = ()

    @property
    def name(self) -> str:
        """The check function's name without `rule_` (e.g. `gradient_depth`)."""
        return self.check.__name__.removeprefix("rule_")

    @property
    def topic(self) -> str:
        """The rule module's short name (activations, gradients, fit, loop, data, loss)."""
        return self.check.__module__.rsplit(".", 1)[-1]


# A condition on a declared explanation: (cause, symptom) -> does this cause explain this symptom?
Condition = Callable[[Finding, Finding], bool]
Explained = str | tuple[str, Condition]

RULES: list[Rule] = []


def rule(description: str, severities: tuple[str, ...], names: tuple[str, ...] | None = None,
         evidence: Callable[[Any, Finding], Any] | None = None, explains: tuple[Explained, ...] = ()):
    """Register the decorated `rule_xxx(run)` function (returned unchanged) as a `Rule`.
    `explains`: the finding names its cause would explain, each alone or with a `Condition`.

    Example::

        @rule("Dead ReLU units.", severities=("warning", "error"), evidence=_dead_chart,
              explains=("vanishing_gradients", "loss_vs_baseline"))
        def rule_dead_units(run): ...
    """

    def register(check: Callable[[Any], list[Finding]]) -> Callable[[Any], list[Finding]]:
        entry = Rule(check, tuple(names or (check.__name__.removeprefix("rule_"),)), tuple(severities),
                     " ".join(description.split()), evidence,
                     tuple((e, None) if isinstance(e, str) else (e[0], e[1]) for e in explains))
        taken = {n for r in RULES for n in r.names}
        if unknown := set(entry.severities) - set(SEVERITIES):
            raise ValueError(f"{check.__name__}: unknown severities {sorted(unknown)}")
        if clash := taken & set(entry.names):
            raise ValueError(f"{check.__name__}: rule names {sorted(clash)} are registered already")
        RULES.append(entry)
        _symptoms_may_be_info()
        return check

    return register


def _symptoms_may_be_info() -> None:
    """A rule whose findings another rule explains may give info (a symptom shown under its cause)."""
    explained = {name for r in RULES for name, _ in r.explains}
    for i, r in enumerate(RULES):
        if explained & set(r.names) and "info" not in r.severities:
            RULES[i] = replace(r, severities=(*r.severities, "info"))


def for_finding(name: str) -> Rule | None:
    """The registered rule whose findings are named `name`, or None."""
    return next((r for r in RULES if name in r.names), None)
