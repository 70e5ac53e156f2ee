"""Healthy public training scripts (benchmarks/controls_fit.py: DCGAN, VAE, distillation, a
character LM, pos_weight, label smoothing) draw no warning from the fit and data rules, and
the rule changes that made them quiet, each on hand-built evidence where the old rule warned
(issue #23, item 2)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from diagnostics import health
from diagnostics.health import registry
from tests.diagnostics.test_health import FakeRun, _rows, _scal

torch = pytest.importorskip("torch")

from benchmarks.controls_fit import CONTROLS, OTHER_PARTS_FIRE  # noqa: E402
from benchmarks.health_suite import run_case  # noqa: E402

OWNED = {r.name for r in registry.RULES if r.topic in ("fit", "data")}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.slow
@pytest.mark.parametrize("case", CONTROLS, ids=lambda c: c.name)
def test_healthy_public_script_draws_no_warning(case, tmp_path):
    result = run_case(case, tmp_path)
    loud = {a.split(" ", 1)[0] for a in result["false_alarms"]}
    assert not loud & OWNED, result["false_alarms"]
    # rules of other parts: only the ones reported to the lead (benchmarks/controls_fit.py)
    assert loud <= OTHER_PARTS_FIRE.get(case.name, set()), result["false_alarms"]


# ---------------------------------------------------------------------------------
# output_vs_label


def _classes(steps, labels, preds, loss=None, loss_fn="CrossEntropyLoss"):
    d = pd.concat([_rows("label", "train/class", steps, hist_counts=[labels] * len(steps)),
                   _rows("output", "train/class", steps, hist_counts=[preds] * len(steps))])
    scalars = _scal("loss", [loss] * 40) if loss is not None else None
    return FakeRun(manifest={"task": "classification", "loss_fn": loss_fn}, dists=d, scalars=scalars)


def test_output_vs_label_from_one_late_capture_is_info():
    # The automatic schedule of a 248-step run: the late window holds step 128 only.
    one = _classes([0, 1, 2, 4, 8, 16, 32, 64, 128], [50, 30, 20], [80, 18, 2])
    found = health.rule_output_vs_label(one)
    assert [f.severity for f in found] == ["info"] and "1 capture(s) only" in found[0].message
    three = _classes(list(range(9)), [50, 30, 20], [80, 18, 2])  # late steps 6, 7, 8
    assert [f.severity for f in health.rule_output_vs_label(three)] == ["warning"]


def test_output_vs_label_uncertain_learning_model_is_info():
    labels, preds = [40, 30, 20, 10], [70, 28, 2, 0]  # prior entropy 1.28 nats
    entropy = -sum(p * math.log(p) for p in (0.4, 0.3, 0.2, 0.1))
    learning_uncertain = _classes(list(range(9)), labels, preds, loss=0.8 * entropy)  # 1.02 nats > ln 2
    found = health.rule_output_vs_label(learning_uncertain)
    assert [f.severity for f in found] == ["info"] and "still uncertain" in found[0].message
    # at the prior (the model ignores its input: the skew is the bug) and confident: warnings
    for loss in (0.95 * entropy, 0.5):
        assert [f.severity for f in health.rule_output_vs_label(_classes(list(range(9)), labels, preds, loss))] \
            == ["warning"]
    # a loss the rule cannot read: the shares alone decide, as before
    other = _classes(list(range(9)), labels, preds, loss=1.0, loss_fn="focal")
    assert [f.severity for f in health.rule_output_vs_label(other)] == ["warning"]


def test_output_vs_label_one_class_targets_and_probability_outputs_are_no_warning():
    # pytorch/examples dcgan: G is trained against D(G(z)) with every label "real" (1)
    generator = _classes(list(range(9)), [0, 64], [50, 14], loss=0.9, loss_fn="BCELoss")
    found = health.rule_output_vs_label(FakeRun(manifest={"task": "classification", "loss_fn": "focal"},
                                                dists=generator._dists))
    assert [f.severity for f in found] == ["info"] and "every label of the run is one class" in found[0].message
    # D on probabilities (BCELoss after a Sigmoid): the recorder's "predictions" (p > 0) are all 1
    discriminator = _classes(list(range(9)), [32, 32], [0, 64], loss=0.6, loss_fn="BCELoss")
    assert health.rule_output_vs_label(discriminator) == []
    logits = _classes(list(range(9)), [32, 32], [0, 64], loss=0.6, loss_fn="BCEWithLogitsLoss")
    assert [f.severity for f in health.rule_output_vs_label(logits)] == ["warning"]


def _values(out, lab, loss_fn=None):
    d = pd.concat([_rows("label", "train/value", [0, 1, 2], **lab), _rows("output", "train/value", [0, 1, 2], **out)])
    return FakeRun(manifest={"task": "regression", "loss_fn": loss_fn}, dists=d)


def test_output_vs_label_log_probs_against_probs_is_info():
    log_probs = {"mean": -2.4, "std": 0.6, "min": -6.0, "max": -0.05}
    probs = {"mean": 0.1, "std": 0.15, "min": 0.0, "max": 0.95}
    for run in (_values(log_probs, probs), _values({**log_probs, "max": math.nan}, probs, "KLDivLoss")):
        found = health.rule_output_vs_label(run)
        assert [f.severity for f in found] == ["info"] and "log-probabilities" in found[0].message
    # the same gap between outputs and targets that share a space (an MSE regression): warning
    shifted = _values({"mean": 2.4, "std": 0.6, "min": 0.05, "max": 6.0}, probs, "MSELoss")
    assert [f.severity for f in health.rule_output_vs_label(shifted)] == ["warning"]


# ---------------------------------------------------------------------------------
# loss_vs_baseline


def _binary(preds, loss):
    d = pd.concat([_rows("label", "train/class", range(9), count=100, hist_counts=[[90, 10]] * 9),
                   _rows("output", "train/class", range(9), count=100, hist_counts=[preds] * 9)])
    return FakeRun(manifest={"task": "classification", "loss_fn": "BCEWithLogitsLoss", "num_classes": 2},
                   dists=d, scalars=_scal("loss", [loss] * 40))


def test_loss_vs_baseline_reweighted_toward_the_rare_class_is_info():
    baseline = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))  # 0.325 nats
    found = health.rule_loss_vs_baseline(_binary([75, 25], 0.47))  # pos_weight=9: 25% predicted positive
    assert [f.severity for f in found] == ["info"] and found[0].evidence["baseline"] == pytest.approx(baseline)
    assert "1 at 25% against its 10% of the labels" in found[0].message
    # the majority for everything (an input-ignoring model), or the rare class under-predicted: warning
    for preds in ([100, 0], [95, 5], [88, 12]):
        assert [f.severity for f in health.rule_loss_vs_baseline(_binary(preds, 0.47))] == ["warning"]


# ---------------------------------------------------------------------------------
# label_noise


def _dynamics(records):
    rng = np.random.default_rng(0)
    n, suspects = 200, 10  # 5% confidently wrong late
    margin = np.where(np.arange(n) < suspects, -4.0, 3.0)
    return pd.DataFrame({"sample_id": np.arange(n), "aum": rng.normal(size=n), "n_records": records,
                         "label_error_score": -margin, "late_wrong_frac": np.where(margin < 0, 1.0, 0.0),
                         "late_margin": margin})


def test_label_noise_needs_several_records_per_sample():
    manifest = {"task": "classification"}
    one_epoch = health.rule_label_noise(FakeRun(manifest=manifest, dynamics=_dynamics(1)))
    assert [f.severity for f in one_epoch] == ["info"] and "seen 1 time(s)" in one_epoch[0].advice
    assert one_epoch[0].evidence["suspects"] == 10
    many = health.rule_label_noise(FakeRun(manifest=manifest, dynamics=_dynamics(6)))
    assert [f.severity for f in many] == ["warning"]

