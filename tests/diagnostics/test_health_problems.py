"""Problems: findings grouped by cause (diagnostics/health/problems.py), on hand-built findings."""

from __future__ import annotations

import json

import pytest

from diagnostics.health import Finding, Problem, loop, problems, registry
from diagnostics.health.problems import explains, group, settle


def finding(rule, severity="warning", layer=None, steps=(0, 9), **evidence):
    return Finding(rule=rule, severity=severity, layer=layer, step_start=steps[0], step_end=steps[1],
                   message=f"{rule} fired.", advice=f"Fix {rule}.", evidence=evidence)


def test_a_cause_and_its_symptoms_are_one_problem_that_names_them():
    decay = finding("weight_decay_dominates", layer="0.weight")
    ratios = [finding("update_ratio", layer=f"{i}.weight", median_ratio=1e-7, low=1e-5, high=0.1) for i in (0, 2)]
    at_baseline = finding("loss_vs_baseline", last_loss=2.3, baseline=2.3)
    leak = finding("split_leakage")  # nothing explains it, it explains nothing: a problem of its own
    found = group([*ratios, leak, at_baseline, decay])
    assert [(p.cause.rule, len(p.symptoms)) for p in found] == [("weight_decay_dominates", 3), ("split_leakage", 0)]
    first = found[0]
    assert {id(s) for s in first.symptoms} == {id(ratios[0]), id(ratios[1]), id(at_baseline)}
    assert "It explains 3 other findings: update ratio (2 layers), loss vs baseline." in first.message
    assert first.message.startswith("weight_decay_dominates fired.")
    # weight decay registers no error: a loss at the baseline leaves it a warning
    assert first.severity == "warning" and first.cause == decay
    assert found[1].message == "split_leakage fired." and found[1].symptoms == []


def test_check_keeps_every_finding_and_folds_symptoms_to_info():
    decay, at_baseline = finding("weight_decay_dominates"), finding("loss_vs_baseline", last_loss=2.3, baseline=2.3)
    quiet = finding("overfitting", "info")
    out, found = settle([at_baseline, quiet, decay])
    assert [(f.rule, f.severity) for f in out] == [("loss_vs_baseline", "info"), ("overfitting", "info"),
                                                  ("weight_decay_dominates", "warning")]
    assert out[0].evidence["deferred_to"] == "weight_decay_dominates" and out[1] == quiet
    assert "Likely a consequence of weight_decay_dominates" in out[0].message
    assert len(found) == 1  # an info finding is neither a problem nor a symptom


def test_explanation_is_transitive():
    # raw inputs explain dead units; dead units explain a parameter starved of gradient; raw inputs do not
    # declare the stuck parameter themselves
    raw = finding("input_scale", layer="0")
    dead = finding("dead_units", layer="1")
    stuck = finding("stuck_parameters", layer="0.weight", reason="its gradient is zero at every capture",
                    parameters=["0.weight"])
    assert explains(raw, dead) and explains(dead, stuck) and not explains(raw, stuck)
    (only,) = group([stuck, dead, raw])
    assert only.cause is raw and [s.rule for s in only.symptoms] == ["dead_units", "stuck_parameters"]


def test_conditions_read_the_evidence():
    lr = finding("lr_collapse", layer="lr")
    low = finding("update_ratio", layer="0.weight", median_ratio=1e-7, low=1e-5, high=0.1)
    high = finding("update_ratio", layer="2.weight", median_ratio=0.5, low=1e-5, high=0.1)
    assert explains(lr, low) and not explains(lr, high)  # a collapsed lr explains layers that barely move
    nan = finding("nonfinite", "error", steps=(9, 9))
    assert not explains(nan, finding("dead_units", steps=(5, 7)))  # ended before the NaN
    assert explains(nan, finding("dead_units", steps=(5, 19)))
    # only loud findings explain or are explained
    assert not explains(finding("lr_collapse", "info"), low) and not explains(lr, finding("update_ratio", "info"))
    # a stuck parameter defers to a loss-input bug only when a gradient too small could explain it
    softmax = finding("softmax_before_cross_entropy")
    assert explains(softmax, finding("stuck_parameters", reason=loop.MOVES_TOO_LITTLE))
    assert not explains(softmax, finding("stuck_parameters", reason="its learning rate is 0"))


def test_ranked_by_severity_then_symptoms_then_step():
    late = finding("split_leakage", steps=(50, 50))
    early = finding("batchnorm_small_batch", layer="1", steps=(3, 40))
    error = finding("gradients_not_reset", "error", steps=(90, 90))
    spikes = finding("grad_norm_spikes", steps=(60, 60))  # explained by the small batches and the missing zero_grad
    found = group([late, early, error, finding("eval_in_train_mode", steps=(1, 1)),
                   finding("overfitting", steps=(0, 80))])
    assert [p.cause.rule for p in found] == ["gradients_not_reset", "eval_in_train_mode", "batchnorm_small_batch",
                                             "split_leakage"]
    # a symptom raises its problem's count: the small batches now rank ahead of the earlier eval-mode problem
    found = group([late, early, finding("eval_in_train_mode", steps=(1, 1)), spikes,
                   finding("unshuffled_batches", layer="train/class", steps=(5, 5)),
                   finding("label_noise", steps=(0, 0))])
    assert [(p.cause.rule, len(p.symptoms)) for p in found][:3] == [
        ("unshuffled_batches", 2), ("batchnorm_small_batch", 1), ("eval_in_train_mode", 0)]


def test_an_error_symptom_makes_its_problem_an_error():
    not_reset = finding("gradients_not_reset", steps=(0, 50))
    nan = finding("nonfinite", "error", steps=(40, 40))
    (only,) = group([nan, not_reset])
    assert only.cause is not_reset and only.symptoms == [nan] and only.severity == "error"


def test_a_loss_input_bug_with_which_training_failed_is_an_error_problem():
    softmax = finding("softmax_before_cross_entropy", loss_floor=1.46, num_classes=10)
    (only,) = group([softmax, finding("loss_vs_baseline", last_loss=2.25, baseline=2.30)])
    assert only.severity == "error" and only.cause.severity == "error"
    assert only.cause.evidence["training_failed"] is True and "It explains 1 other finding: loss vs baseline." in \
        only.message


@pytest.fixture
def two_rules_that_explain_each_other(monkeypatch):
    def rule(name, severities, explained):
        check = lambda run: []  # noqa: E731
        check.__name__ = f"rule_{name}"
        return registry.Rule(check, (name,), severities, name, None, tuple((e, None) for e in explained))

    rules = [rule("alpha", ("warning", "error", "info"), ["beta", "gamma"]),
             rule("beta", ("warning", "info"), ["alpha"]),
             rule("gamma", ("warning", "info"), ["delta"]), rule("delta", ("warning", "info"), [])]
    monkeypatch.setattr(registry, "RULES", rules)


def test_a_cycle_gives_one_problem(two_rules_that_explain_each_other):
    alpha, beta = finding("alpha", steps=(5, 5)), finding("beta", steps=(2, 2))
    gamma, delta = finding("gamma"), finding("delta")
    # alpha and beta explain each other: one problem, not none; both reach all the others, and alpha
    # explains more of them directly (beta and gamma; delta through gamma): alpha is the cause
    (only,) = group([beta, alpha, gamma, delta])
    assert only.cause is alpha and [s.rule for s in only.symptoms] == ["beta", "gamma", "delta"]
    # with the same reach, the worse severity, then the earlier step, is the cause (explaining each other alone)
    (only,) = group([finding("alpha", steps=(5, 5)), beta])
    assert only.cause is beta
    (only,) = group([finding("alpha", "error", steps=(5, 5)), beta])
    assert only.cause.rule == "alpha" and only.severity == "error"
    out, _ = settle([beta, alpha])
    assert [f.severity for f in out] == ["warning", "info"] and out[1].evidence["deferred_to"] == "beta"


def test_a_problem_round_trips_through_json():
    (p,) = group([finding("lr_collapse", layer="lr"), finding("loss_vs_baseline", last_loss=2.3, baseline=2.3)])
    back = Problem.from_dict(json.loads(json.dumps(p.to_dict())))
    assert back == p and back.severity == "error"  # lr_collapse may be an error: training failed with it


def test_check_and_problems_come_from_one_pass_of_the_rules(monkeypatch):
    from diagnostics import health
    calls = []

    def rule_decay(run):
        calls.append(run)
        return [finding("weight_decay_dominates", layer="0.weight", steps=(5, 50))]

    def rule_baseline(run):
        return [finding("loss_vs_baseline", steps=(40, 50), last_loss=2.3, baseline=2.3)]

    def rule_broken(run):
        raise ValueError("a rule's own bug")

    monkeypatch.setattr(health, "RULES", (rule_baseline, rule_broken, rule_decay))
    with pytest.warns(RuntimeWarning, match="rule_broken failed"):
        findings, found = health.diagnose("run")
    assert calls == ["run"]
    assert [(f.rule, f.severity) for f in findings] == [("weight_decay_dominates", "warning"),
                                                       ("loss_vs_baseline", "info")]
    assert [(p.cause.rule, [s.rule for s in p.symptoms]) for p in found] == [("weight_decay_dominates",
                                                                               ["loss_vs_baseline"])]
    with pytest.warns(RuntimeWarning):
        assert health.check("run") == findings and problems("run") == found


def test_one_cause_on_several_layers_is_one_problem():
    """Dead units in three layers are one problem (hand count: 3 findings, 1 problem naming the
    other two layers); a layer moving too fast and another too slowly stay two."""
    dead = [finding("dead_units", layer=name, steps=(i, 9)) for i, name in enumerate(("fc1", "fc2", "fc3"))]
    stuck = finding("stuck_parameters", layer="fc3.weight", reason="its gradient is zero at every capture",
                    parameters=["fc3.weight"])
    found = group([dead[2], stuck, dead[0], dead[1]])
    assert len(found) == 1
    (only,) = found
    assert only.cause is dead[0] and [f.layer for f in only.also] == ["fc2", "fc3"]
    assert [s.rule for s in only.symptoms] == ["stuck_parameters"]
    assert "The same on 2 other layers: fc2, fc3. It explains 1 other finding: stuck parameters." in only.message
    assert Problem.from_dict(json.loads(json.dumps(only.to_dict()))) == only
    fast = finding("update_ratio", layer="0.weight", median_ratio=0.5, low=1e-5, high=0.1)
    slow = finding("update_ratio", layer="2.weight", median_ratio=1e-7, low=1e-5, high=0.1)
    assert len(group([fast, slow])) == 2
    out, _ = settle([dead[1], dead[0]])
    assert [f.severity for f in out] == ["warning", "warning"]  # every finding stays in the list, as found
