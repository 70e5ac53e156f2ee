"""The Health page: problems first (a cause, its symptoms under it), then every finding."""

from __future__ import annotations

import json
import shutil

from diagnostics import badges
from diagnostics.health import Finding, diagnose
from tests.pages._app import open_app, plotly_charts


def _f(rule, severity="warning", layer=None, **evidence):
    return Finding(rule, severity, layer, 0, 9, f"{rule} fired.", f"Fix {rule}.", evidence)


def test_problems_come_first_with_their_symptoms_under_them(monkeypatch, recorded_runs, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(recorded_runs / "cls", runs / "cls", ignore=shutil.ignore_patterns(badges.CACHE_FILE))
    # what the rules would find on a run with weight decay far too strong: the update ratios and the loss at
    # its baseline are its symptoms; a leak is a problem of its own; an overfitting note stays info
    found = [_f("update_ratio", layer="0.weight", median_ratio=1e-7, low=1e-5, high=0.1),
             _f("loss_vs_baseline", last_loss=1.1, baseline=1.1), _f("split_leakage"),
             _f("weight_decay_dominates", layer="0.weight"), _f("overfitting", "info")]

    # the run's health as the badge board's disk cache holds it (the page reads that cache)
    monkeypatch.setattr("diagnostics.health.RULES", tuple(lambda run, f=f: [f] for f in found))
    findings, problems = diagnose(None)
    (runs / "cls" / badges.CACHE_FILE).write_text(json.dumps({
        "key": badges._key(runs / "cls"), "findings": [f.to_dict() for f in findings],
        "problems": [p.to_dict() for p in problems]}))

    at = open_app(monkeypatch, runs, "pages/health.py", "cls", check_errors=True)
    assert [m.value for m in at.metric][:2] == ["2", "0"]  # 2 problems, no error
    labels = [e.label for e in at.expander]
    assert labels == ["1. weight decay dominates — layer 0.weight, steps 0–9 (+2 symptoms)",
                      "2. split leakage — steps 0–9"]
    first = at.expander[0]
    texts = [m.value for m in first.markdown]
    assert texts[0].startswith(r"**weight\_decay\_dominates fired. It explains 2 other findings:")
    assert r"Try: Fix weight\_decay\_dominates." in texts  # the rule's text, escaped: shown as written
    assert any(r"**update ratio** (layer 0.weight, steps 0–9): update\_ratio fired." in t and
               r"**loss vs baseline** (steps 0–9): loss\_vs\_baseline fired." in t for t in texts)
    assert len(plotly_charts(at)) == 2  # each problem's evidence
    table = at.dataframe[0].value
    assert len(table) == 5 and list(table["explained by"]).count("weight_decay_dominates") == 2
