"""The rule registry is the one list of health rules: what `check` runs, what the docs' Health
guide and the Health page describe, and where each finding's evidence chart comes from."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from diagnostics import health
from diagnostics.health import Finding, registry
from diagnostics.health.common import SEVERITIES

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "health.md"
BULLET = re.compile(r"^- ((?:`[a-z_]+`(?:, )?)+): (.*)$")


def _readme_rules() -> dict[tuple[str, ...], str]:
    """The rule bullets of docs/health.md: (names) -> description."""
    found = {}
    for line in GUIDE.read_text().splitlines():
        if m := BULLET.match(line):
            found[tuple(re.findall(r"`([a-z_]+)`", m.group(1)))] = m.group(2)
    return found


def _bullet(rule: registry.Rule) -> str:
    return f"- {', '.join(f'`{n}`' for n in rule.names)}: {rule.description}"


def test_check_runs_exactly_the_registered_rules_in_order():
    assert health.RULES == tuple(r.check for r in registry.RULES)
    assert len(registry.RULES) == 49
    names = [n for r in registry.RULES for n in r.names]
    assert len(names) == len(set(names))


def test_every_rule_is_described_with_its_severities():
    for r in registry.RULES:
        assert r.description and "\n" not in r.description and r.description.endswith("."), r.name
        assert r.severities and set(r.severities) <= set(SEVERITIES), r.name
        assert r.check.__name__.startswith("rule_") and r.topic in (
            "activations", "gradients", "fit", "loop", "data", "loss", "symmetry", "invariance"), r.name


def test_readme_lists_every_registered_rule_with_its_description_and_no_other():
    readme = _readme_rules()
    registered = {r.names: r.description for r in registry.RULES}
    missing = [_bullet(r) for r in registry.RULES if r.names not in readme]
    assert not missing, "add to docs/health.md's rule list:\n" + "\n".join(missing)
    unknown = sorted(set(readme) - set(registered))
    assert not unknown, f"docs/health.md names rules that are not registered: {unknown}"
    stale = [_bullet(r) for r in registry.RULES if readme[r.names] != r.description]
    assert not stale, "docs/health.md describes these rules differently from the registry:\n" + "\n".join(stale)


def test_the_page_table_comes_from_the_registry():
    table = health.rule_table()
    assert table["description"].tolist() == [r.description for r in registry.RULES]
    assert set(", ".join(table["rule"]).split(", ")) == {n for r in registry.RULES for n in r.names}


def test_a_finding_is_traced_to_the_rule_that_emits_it():
    assert registry.for_finding("exploding_gradients").check is health.rule_gradient_depth
    assert registry.for_finding("gradient_depth") is None  # a function name, never a finding's rule
    assert registry.for_finding("no_such_rule") is None


def test_evidence_of_an_unregistered_or_chartless_finding_is_an_empty_chart():
    for rule in ("no_such_rule", "split_leakage"):
        fig = health.evidence_figure(None, Finding(rule, "warning", None, None, None, "m", "a"))
        assert fig.layout.annotations and "no chart" in fig.layout.annotations[0].text


def test_registering_a_taken_name_or_an_unknown_severity_fails(monkeypatch):
    monkeypatch.setattr(registry, "RULES", list(registry.RULES))
    with pytest.raises(ValueError, match="registered already"):
        registry.rule("Again.", severities=("warning",), names=("dead_units",))(lambda run: [])
    with pytest.raises(ValueError, match="unknown severities"):
        registry.rule("Bad.", severities=("fatal",), names=("brand_new",))(lambda run: [])


def test_finding_location_in_words():
    f = lambda layer, s, e: Finding("r", "info", layer, s, e, "m", "a").location()
    assert f("fc1", 0, 8) == "layer fc1, steps 0–8"
    assert f(None, 3, 3) == "step 3" == f(None, 3, None)
    assert f("fc1", None, None) == "layer fc1" and f(None, None, None) == ""
    assert f("train/class", 0, 8) == "train outputs (class), steps 0–8"  # a stream, not a layer
    assert f("val/value", None, None) == "val outputs (value)" and f("block/0", 1, 1) == "layer block/0, step 1"
