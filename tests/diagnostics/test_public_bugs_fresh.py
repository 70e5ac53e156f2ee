"""benchmarks/public_bugs_fresh.py (a fresh held-out set of public-report bugs): the set is
well-formed and new, the scoring uses this set's accepted names, and three cheap cases train,
plant their bug (checked against a hand count of what the run must hold) and are scored as
judged by hand. It does not assert that the rules find the bugs: the set measures them."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from diagnostics.health.common import Finding  # noqa: E402
from diagnostics.health.problems import Problem  # noqa: E402
from diagnostics.health.registry import RULES  # noqa: E402

_ROOT = Path(__file__).resolve().parents[2]


def _module(name, file):
    spec = importlib.util.spec_from_file_location(name, _ROOT / "benchmarks" / file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


fresh = _module("public_bugs_fresh_benchmark", "public_bugs_fresh.py")
_EMITTED = {n for r in RULES for n in r.names}


def _finding(rule, severity="warning"):
    return Finding(rule=rule, severity=severity, layer="0", step_start=0, step_end=9, message=f"{rule} here",
                   advice="")


def test_the_set_is_new_and_every_case_has_its_rule_among_the_accepted_names():
    from benchmarks import health_suite, public_bugs
    names = [c.name for c in fresh.CASES]
    assert 15 <= len(names) <= 20 and len(set(names)) == len(names)
    assert set(fresh.ACCEPT) == set(names)
    for case in fresh.CASES:
        assert case.rule in fresh.ACCEPT[case.name], case.name
    assert not set(names) & {c.name for c in public_bugs.CASES}
    assert not set(names) & {c.name for c in health_suite.PLANTED}


def test_judge_reads_this_sets_accepted_names_not_public_bugs():
    case = next(c for c in fresh.CASES if c.name == "l2_penalty_lambda_1_in_loss")
    wrong, right = _finding("labels_unlearnable"), _finding("weight_decay_dominates")
    # by hand: the data blamed first, the penalty second -> first NO, any yes
    r = fresh.judge(case, [wrong, right], [Problem(wrong, severity="warning"), Problem(right, severity="warning")])
    assert (r["first_ok"], r["any_ok"]) == (False, True)
    assert r["accept"] == ["regularisation_dominates", "weight_decay_dominates"]
    assert r["loud"] == ["warning labels_unlearnable 0", "warning weight_decay_dominates 0"]
    r = fresh.judge(case, [], [])
    assert (r["first_ok"], r["any_ok"], r["problems"]) == (False, False, [])


def _problem_rules(result):
    return [p.split()[1] for p in result["problems"]]


@pytest.mark.slow
def test_three_cases_train_plant_their_bug_and_score_as_judged_by_hand(tmp_path, one_torch_thread):
    import diagnostics
    cases = {c.name: c for c in fresh.CASES}
    picked = ["labels_all_one_class", "zero_grad_on_other_optimizer", "tabular_feature_in_raw_units"]
    results = {r["case"]: r for r in fresh.run_all([cases[n] for n in picked], folder=tmp_path)}

    # labels_all_one_class: every recorded label is class 0 (the planted parse slip) ...
    run = diagnostics.open_run(next((tmp_path / "labels_all_one_class").glob("*/run.json")).parent)
    labels = run.distributions(kind="label")
    assert len(labels) and (labels["max"] == 0).all() and (labels["min"] == 0).all()
    # ... and its cause is now named by a registered rule (single_class_labels, rulesB), as the first problem
    r = results["labels_all_one_class"]
    assert set(r["accept"]) & _EMITTED == {"single_class_labels"}
    assert _problem_rules(r)[0] == "single_class_labels" and (r["first_ok"], r["any_ok"]) == (True, True)

    # zero_grad_on_other_optimizer: the decoder's gradient is never reset, so its recorded norm
    # grows with the steps (plain SGD on a fresh batch each step: a healthy norm stays ~flat)
    run = diagnostics.open_run(next((tmp_path / "zero_grad_on_other_optimizer").glob("*/run.json")).parent)
    norms = run.scalars(["grad_norm"]).sort_values("step")["value"].to_numpy()
    assert len(norms) == 120 and norms[-10:].mean() > 10 * norms[:3].mean()

    # tabular_feature_in_raw_units: one input column of mean 5e4 reaches the first layer
    run = diagnostics.open_run(next((tmp_path / "tabular_feature_in_raw_units").glob("*/run.json")).parent)
    first = run.distributions(kind="activation", layers=["0"])
    assert first["std"].max() > 100  # standardised inputs through nn.Linear(8, 64) give ~0.6

    for r in results.values():  # the verdicts follow from the problems and the accepted names
        causes = _problem_rules(r)
        assert r["first_ok"] == (bool(causes) and causes[0] in r["accept"])
        assert r["any_ok"] == any(c in r["accept"] for c in causes)
        assert r["accept"] == sorted(fresh.ACCEPT[r["case"]])


def test_the_committed_results_summarise_their_own_rows():
    payload = json.loads((_ROOT / "benchmarks" / "results" / "public_bugs_fresh.json").read_text())
    rows, s = payload["results"], payload["summary"]
    assert [r["case"] for r in rows] == [c.name for c in fresh.CASES]
    assert s["cases"] == len(rows) and s["first_ok"] == sum(r["first_ok"] for r in rows)
    assert s["any_ok"] == sum(r["any_ok"] for r in rows) and s["no_loud"] == sum(not r["loud"] for r in rows)
    for r in rows:
        causes = _problem_rules(r)
        assert r["first_ok"] == (bool(causes) and causes[0] in r["accept"]), r["case"]
