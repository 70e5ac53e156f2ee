"""Loss contracts (diagnostics/health/loss.py): `negative_loss` (a loss that cannot go below 0
went negative), `nll_input` on KLDivLoss given probabilities, and `softmax_before_cross_entropy`
on a sigmoid before CrossEntropyLoss. Tiny real runs (the loss checked with plain torch) and
hand-built runs for the thresholds; the healthy counterparts stay quiet."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import diagnostics
import hooks
from diagnostics.health import check, evidence_figure, problems
from diagnostics.health.loss import NEGATIVE_TOL, rule_negative_loss, rule_softmax_before_cross_entropy
from tests.diagnostics.test_health import FakeRun, _rows, _scal


def _data(n=512, k=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 16, generator=g)
    y = (x[:, :k] * 2).argmax(1) % k
    return x, y


def _train(tmp_path, name, model, x, y, crit, steps=60, batch=32):
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    with hooks.watch(model, optimizer=opt, loss_fn=crit, run_dir=tmp_path, name=name, every=5) as run:
        for i in range(steps):
            b = slice((i * batch) % (len(x) - batch), (i * batch) % (len(x) - batch) + batch)
            opt.zero_grad()
            crit(model(x[b]), y[b]).backward()
            opt.step()
    return diagnostics.open_run(run.path), model


def _soft(y, k=10):
    return torch.full((len(y), k), 0.1 / (k - 1)).scatter_(1, y[:, None], 0.9)


# ---------------------------------------------------------------------------------
# KLDivLoss given probabilities (the forum's "KLDivLoss returns negative values")


def test_kl_div_on_probabilities_is_an_error_named_as_the_cause(tmp_path):
    x, y = _data()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 10), nn.Softmax(dim=1))  # LogSoftmax meant
    crit = nn.KLDivLoss(reduction="batchmean")
    r, model = _train(tmp_path, "kl_probs", model, x, _soft(y), crit)
    assert float(crit(model(x).detach(), _soft(y))) < 0  # plain torch: below the minimum KL can take
    found = {f.rule: f for f in check(r)}
    assert found["nll_input"].severity == "error" and found["nll_input"].evidence["input_kind"] == "probabilities"
    assert "KLDivLoss" in found["nll_input"].message and "log_softmax" in found["nll_input"].advice
    assert found["negative_loss"].severity == "info" and found["negative_loss"].evidence["deferred_to"] == "nll_input"
    first = problems(r)[0]
    assert first.cause.rule == "nll_input" and "negative_loss" in {s.rule for s in first.symptoms}


def test_kl_div_on_log_probabilities_against_soft_targets_is_quiet(tmp_path):
    x, y = _data()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 10), nn.LogSoftmax(dim=1))
    r, _ = _train(tmp_path, "kl_logp", model, x, _soft(y), nn.KLDivLoss(reduction="batchmean"))
    assert not {"nll_input", "negative_loss"} & {f.rule for f in check(r)}


# ---------------------------------------------------------------------------------
# negative_loss on hand-built runs: the tolerance, the losses it knows, the function-named hedge


def _neg_run(loss_fn, values):
    return FakeRun(manifest={"loss_fn": loss_fn}, scalars=_scal("loss", values).assign(rank=0))


def test_negative_loss_fires_below_the_tolerance_only():
    (f,) = rule_negative_loss(_neg_run("CrossEntropyLoss", [0.9, 0.2, -0.4, -0.6]))
    assert f.severity == "error" and f.evidence["lowest_loss"] == -0.6 and f.evidence["negative_steps"] == 2
    assert "class probabilities" in f.message  # the contract named for this loss
    assert rule_negative_loss(_neg_run("KLDivLoss", [0.3, 0.01, -NEGATIVE_TOL / 10])) == []  # rounding at 0
    assert rule_negative_loss(_neg_run("CrossEntropyLoss", [2.3, 1.0, 0.4])) == []


@pytest.mark.parametrize("loss_fn", ["PoissonNLLLoss", "GaussianNLLLoss", "CosineSimilarity", None])
def test_negative_loss_ignores_losses_that_may_be_negative(loss_fn):
    assert rule_negative_loss(_neg_run(loss_fn, [0.5, -1.0, -2.0])) == []


def test_negative_loss_named_as_a_function_is_a_hedged_warning():
    (f,) = rule_negative_loss(_neg_run("cross_entropy", [0.5, -1.0]))
    assert f.severity == "warning" and "if the logged loss is this function's value alone" in f.message
    assert evidence_figure(_neg_run("cross_entropy", [0.5, -1.0]), f).data


def test_cross_entropy_on_negative_soft_targets_goes_below_zero(tmp_path):
    """Soft targets with -eps on the wrong classes (a smoothing sign slip): plain torch gives a
    loss below 0, and the rule names the contract; smoothing done right stays quiet."""
    x, y = _data()
    one_hot = F.one_hot(y, 10).float()
    for name, t, fires in (("neg", one_hot - 0.1, True), ("ok", one_hot * 0.9 + 0.01, False)):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 10))
        r, model = _train(tmp_path / name, name, model, x, t, nn.CrossEntropyLoss())
        assert (float(nn.CrossEntropyLoss()(model(x).detach(), t)) < 0) == fires
        assert ("negative_loss" in {p.cause.rule for p in problems(r)}) == fires


def test_target_range_explains_the_negative_loss(tmp_path):
    x, y = _data(k=2)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 1), nn.Flatten(0))
    r, _ = _train(tmp_path, "bce_signed", model, x, y.float() * 2 - 1, nn.BCEWithLogitsLoss())
    first = problems(r)[0]
    assert first.cause.rule == "target_range" and "negative_loss" in {s.rule for s in first.symptoms}


# ---------------------------------------------------------------------------------
# A sigmoid before CrossEntropyLoss (StackOverflow "Sigmoid + CrossEntropyLoss: loss stuck")


def test_sigmoid_into_cross_entropy_names_the_floor(tmp_path):
    x, y = _data(k=2)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 2), nn.Sigmoid())
    r, _ = _train(tmp_path, "sig_ce", model, x, y, nn.CrossEntropyLoss())
    (f,) = rule_softmax_before_cross_entropy(r)
    # the floor against plain torch: one-hot outputs at 1 (the best a sigmoid can give) into CE
    best = float(nn.CrossEntropyLoss()(torch.tensor([[1.0, 0.0]]), torch.tensor([0])))
    assert f.evidence["loss_floor"] == pytest.approx(best) == pytest.approx(math.log(1 + 1 / math.e))
    assert f.severity == "warning" and f.evidence["input_kind"] == "bounded" and f.evidence["last_module"] == "Sigmoid"
    assert "0.313" in f.message and "Sigmoid" in f.message
    assert problems(r)[0].cause.rule == "softmax_before_cross_entropy"


def _ce_run(lo, hi, steps=(0, 5, 10), modules=None, classes=2):
    return FakeRun(manifest={"loss_fn": "CrossEntropyLoss", "task": "classification", "num_classes": classes,
                             "modules": modules or []},
                   dists=_rows("output", "train/logits", list(steps), min=lo, max=hi))


def test_cross_entropy_inputs_in_unit_range_need_every_capture():
    assert rule_softmax_before_cross_entropy(_ce_run(0.2, 0.9))[0].evidence["loss_floor"] == pytest.approx(
        math.log(1 + 1 / math.e))
    assert rule_softmax_before_cross_entropy(_ce_run([0.2, 0.1, -0.3], [0.9, 0.8, 1.4])) == []  # logits leave [0, 1]
    assert rule_softmax_before_cross_entropy(_ce_run(0.2, 0.9, steps=(0,))) == []  # one capture: cannot tell


def test_last_module_sigmoid_stands_in_when_no_range_was_recorded():
    sig = [{"name": "0", "type": "Linear", "params": 10, "leaf": True}, {"name": "1", "type": "Sigmoid",
                                                                        "params": 0, "leaf": True}]
    run = FakeRun(manifest={"loss_fn": "CrossEntropyLoss", "num_classes": 10, "modules": sig})
    (f,) = rule_softmax_before_cross_entropy(run)
    assert f.evidence["loss_floor"] == pytest.approx(math.log(1 + 9 / math.e))
    run.manifest["modules"] = [*sig[::-1]]  # the Sigmoid defined first, a Linear last: not evidence
    assert rule_softmax_before_cross_entropy(run) == []


def test_a_softmax_over_the_batch_is_left_to_softmax_wrong_dim(tmp_path):
    """Its values lie in [0, 1] too, but the cause is the dimension: one cause, one finding."""
    x, y = _data()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 10), nn.Softmax(dim=0))
    r, _ = _train(tmp_path, "softmax_dim0", model, x, y, nn.CrossEntropyLoss())
    rules = [f.rule for f in check(r) if f.severity != "info"]
    assert rules == ["softmax_wrong_dim"]
