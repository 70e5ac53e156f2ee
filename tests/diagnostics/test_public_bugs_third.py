"""benchmarks/public_bugs_third.py (a third held-out set of public-report bugs): the set is
well-formed and new (no name shared with the other sets or the planted suite), the scoring uses
this set's accepted names, and three cheap cases train, plant their bug (checked against a hand
count of what the run must hold), harm training against their fix in plain torch, and are scored
consistently. It does not assert that the rules find the bugs: the set measures them."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from diagnostics.health.common import Finding  # noqa: E402
from diagnostics.health.problems import Problem  # noqa: E402

_ROOT = Path(__file__).resolve().parents[2]


def _module(name, file):
    spec = importlib.util.spec_from_file_location(name, _ROOT / "benchmarks" / file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


third = _module("public_bugs_third_benchmark", "public_bugs_third.py")


def _finding(rule, severity="warning"):
    return Finding(rule=rule, severity=severity, layer="0", step_start=0, step_end=9, message=f"{rule} here",
                   advice="")


def test_the_set_is_new_and_every_case_has_its_rule_among_the_accepted_names():
    from benchmarks import health_suite, public_bugs, public_bugs_fresh, public_bugs_heldout
    names = [c.name for c in third.CASES]
    assert len(names) == 20 and len(set(names)) == len(names)
    assert set(third.ACCEPT) == set(names) == set(third.TRAIN)
    for case in third.CASES:
        assert case.rule in third.ACCEPT[case.name], case.name
    others = {c.name for m in (public_bugs, public_bugs_fresh, public_bugs_heldout) for c in m.CASES}
    others |= {c.name for c in health_suite.PLANTED}
    assert len(others) > 90 and not set(names) & others


def test_judge_reads_this_sets_accepted_names():
    case = next(c for c in third.CASES if c.name == "kl_div_target_teacher_logits")
    wrong, right = _finding("labels_unlearnable"), _finding("negative_loss")
    # by hand: the data blamed first, the negative loss (the target's contract) second -> first NO, any yes
    r = third.judge(case, [wrong, right], [Problem(wrong, severity="warning"), Problem(right, severity="warning")])
    assert (r["first_ok"], r["any_ok"]) == (False, True)
    assert r["accept"] == ["kl_div_target", "negative_loss", "target_range"]
    r = third.judge(case, [right], [Problem(right, severity="warning")])
    assert (r["first_ok"], r["any_ok"]) == (True, True)
    r = third.judge(case, [], [])
    assert (r["first_ok"], r["any_ok"], r["problems"]) == (False, False, [])


def _problem_rules(result):
    return [p.split()[1] for p in result["problems"]]


def _open(tmp_path, name):
    import diagnostics
    return diagnostics.open_run(next((tmp_path / name).glob("*/run.json")).parent)


def _scalar(run, name):
    return run.scalars([name]).sort_values("step")["value"].to_numpy()


@pytest.mark.slow
def test_three_cases_plant_their_bug_harm_training_and_score_consistently(tmp_path, one_torch_thread):
    picked = ["loss_clamped_not_gradients", "standardise_zero_variance_column", "gan_d_optimizer_holds_generator"]
    cases = {c.name: c for c in third.CASES}
    results = {r["case"]: r for r in third.run_all([cases[n] for n in picked], folder=tmp_path)}

    # loss_clamped: cross-entropy starts at ~2.3 > 1, so the clamped loss has a zero gradient at every
    # step: all 120 recorded gradient norms are 0 and the loss never falls below the clamp
    run = _open(tmp_path, "loss_clamped_not_gradients")
    norms, loss = _scalar(run, "grad_norm"), _scalar(run, "loss")
    assert len(norms) == 120 and (norms == 0).all() and loss.min() > 1.0

    # zero-variance column: 0/0 gives a NaN input, so every recorded loss is NaN from step 0
    run = _open(tmp_path, "standardise_zero_variance_column")
    loss = run.scalars(["loss"]).sort_values("step")
    assert len(loss) == 100 and loss["step"].iloc[0] == 0 and all(math.isnan(v) for v in loss["value"])

    # GAN: the discriminator is in no optimizer, so its gradient is never reset: its norm grows
    # with the steps (a D stepped and zeroed each step keeps a roughly flat norm)
    run = _open(tmp_path, "gan_d_optimizer_holds_generator")
    norms = _scalar(run, "grad_norm")
    assert len(norms) == 300 and norms[-10:].mean() > 10 * norms[:3].mean()

    for r in results.values():  # the verdicts follow from the problems and the accepted names
        causes = _problem_rules(r)
        assert r["first_ok"] == (bool(causes) and causes[0] in r["accept"])
        assert r["any_ok"] == any(c in r["accept"] for c in causes)
        assert r["accept"] == sorted(third.ACCEPT[r["case"]])

    # each bug harms training against its fix, in plain torch (held-out error of 10 digits, 2 classes)
    checked = {r["case"]: r for r in third.verify(picked[:2])}
    assert checked["loss_clamped_not_gradients"]["bug"] > 0.8 > 0.2 > checked["loss_clamped_not_gradients"]["fix"]
    assert checked["standardise_zero_variance_column"]["bug"] > 0.3 > 0.15 > checked[
        "standardise_zero_variance_column"]["fix"]


def test_the_committed_results_summarise_their_own_rows_and_every_bug_harms():
    payload = json.loads((_ROOT / "benchmarks" / "results" / "public_bugs_third.json").read_text())
    rows, s = payload["results"], payload["summary"]
    assert [r["case"] for r in rows] == [c.name for c in third.CASES]
    assert s["cases"] == len(rows) and s["first_ok"] == sum(r["first_ok"] for r in rows)
    assert s["any_ok"] == sum(r["any_ok"] for r in rows) and s["no_loud"] == sum(not r["loud"] for r in rows)
    for r in rows:
        causes = _problem_rules(r)
        assert r["first_ok"] == (bool(causes) and causes[0] in r["accept"]), r["case"]
    assert [v["case"] for v in payload["verify"]] == [c.name for c in third.CASES]
    assert all(v["harms"] and v["bug"] > v["fix"] for v in payload["verify"])
