"""The rule `target_range` (diagnostics/health/loss.py) on tiny real runs: -1/1 labels into
BCEWithLogitsLoss are an error (the loss really goes negative: checked with plain torch);
0/1 labels and smoothed targets inside [0, 1] draw nothing."""

import pytest
import torch
from torch import nn

import diagnostics
import hooks
from diagnostics.health import check, problems
from diagnostics.health.loss import rule_target_range


def _train(targets, folder):
    torch.manual_seed(0)
    x = torch.randn(256, 6)
    positive = x[:, 0] > 0
    y = torch.where(positive, targets[1], targets[0])
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 1), nn.Flatten(0))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    crit = nn.BCEWithLogitsLoss()
    with hooks.watch(model, optimizer=opt, loss_fn=crit, run_dir=folder, name="bce") as run:
        for i in range(60):
            b = slice((i * 32) % 224, (i * 32) % 224 + 32)
            opt.zero_grad()
            crit(model(x[b]), y[b]).backward()
            opt.step()
    return diagnostics.open_run(run.path), model, x, y


def test_minus_one_one_labels_are_an_error_and_the_loss_goes_negative(tmp_path):
    r, model, x, y = _train((-1.0, 1.0), tmp_path)
    assert float(nn.BCEWithLogitsLoss()(model(x).detach(), y)) < 0  # plain torch: no minimum
    (found,) = rule_target_range(r)
    assert found.severity == "error" and found.evidence["target_min"] == -1.0
    assert found.evidence["loss_went_negative"] and "went negative" in found.message
    assert problems(r)[0].cause.rule == "target_range"


@pytest.mark.parametrize("targets", [(0.0, 1.0), (0.05, 0.95)], ids=["zero-one", "smoothed"])
def test_targets_inside_zero_one_draw_nothing(tmp_path, targets):
    r, *_ = _train(targets, tmp_path)
    assert rule_target_range(r) == []
    assert not [f for f in check(r) if f.rule == "target_range"]
