"""The one list of health rules: each is registered once, with the description the Health
page and the README show and the chart that gives its evidence.

A rule module writes::

    def _chart(run, finding) -> go.Figure | None:      # None: no chart for this finding
        return charts.scalar_lines(run, ["grad_norm"], "global gradient norm")

    @rule("one line: what it catches", severities=("warning",), evidence=_chart)
    def rule_my_check(run) -> list[Finding]:
        ...

`RULES` holds the `Rule`s in registration order (the import order of the rule modules in
`diagnostics.health`); `for_finding(name)` is the rule that emits findings named `name`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from diagnostics.health.common import SEVERITIES, Finding


@dataclass(frozen=True)
class Rule:
    """A registered health rule.

    `check(run)` returns its findings (none when the data is missing, never an exception);
    `names` are the `Finding.rule` values it can emit (usually one: the function's name
    without `rule_`); `severities` those it can give; `description` one line for the page
    and the README; `evidence(run, finding)` the chart behind a finding, or None.
    """

    check: Callable[[Any], list[Finding]]
    names: tuple[str, ...]
    severities: tuple[str, ...]
    description: str
    evidence: Callable[[Any, Finding], Any] | None = None

    @property
    def name(self) -> str:
        """The check function's name without `rule_` (e.g. `gradient_depth`)."""
        return self.check.__name__.removeprefix("rule_")

    @property
    def topic(self) -> str:
        """The rule module's short name (activations, gradients, fit, loop, data, loss)."""
        return self.check.__module__.rsplit(".", 1)[-1]


RULES: list[Rule] = []


def rule(description: str, severities: tuple[str, ...], names: tuple[str, ...] | None = None,
         evidence: Callable[[Any, Finding], Any] | None = None):
    """Register the decorated `rule_xxx(run)` function (returned unchanged) as a `Rule`.

    Example::

        @rule("Dead ReLU units.", severities=("warning", "error"), evidence=_dead_chart)
        def rule_dead_units(run): ...
    """

    def register(check: Callable[[Any], list[Finding]]) -> Callable[[Any], list[Finding]]:
        entry = Rule(check, tuple(names or (check.__name__.removeprefix("rule_"),)), tuple(severities),
                     " ".join(description.split()), evidence)
        taken = {n for r in RULES for n in r.names}
        if unknown := set(entry.severities) - set(SEVERITIES):
            raise ValueError(f"{check.__name__}: unknown severities {sorted(unknown)}")
        if clash := taken & set(entry.names):
            raise ValueError(f"{check.__name__}: rule names {sorted(clash)} are registered already")
        RULES.append(entry)
        return check

    return register


def for_finding(name: str) -> Rule | None:
    """The registered rule whose findings are named `name`, or None."""
    return next((r for r in RULES if name in r.names), None)
