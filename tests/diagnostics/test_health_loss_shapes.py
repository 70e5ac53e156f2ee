"""The rule `loss_shape_broadcast` (diagnostics/health/loss.py) on tiny real runs: it fires on
(N, 1) outputs against (N,) targets, as the cause the other findings defer to; quiet on
matching shapes and on broadcasts that are meant (per-sample weights of the same shape,
one target for several predictions)."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import diagnostics
import hooks
from diagnostics.health import check, evidence_figure
from diagnostics.health.loss import rule_loss_shape_broadcast


def _run(tmp_path, name, target=lambda y: y, d_out=1, loss_fn=None, loss=None, steps=60, log_batch=False):
    """A regression MLP on y = sum of 8 inputs (B=32): `target(y)` shapes the (B, 1) targets,
    `loss(out, y)` computes the loss (default: `loss_fn(out, y)`; `loss_fn` default MSELoss)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 8, generator=g)
    y = x.sum(1, keepdim=True)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, d_out))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = loss_fn or nn.MSELoss()
    loss = loss or loss_fn
    with warnings.catch_warnings(), hooks.watch(model, optimizer=opt, loss_fn=loss_fn, run_dir=tmp_path, name=name,
                                                every=5, task="regression") as run:
        warnings.filterwarnings("ignore", message="Using a target size")
        for step in range(steps):
            idx = torch.arange(step * 32, step * 32 + 32) % len(x)
            opt.zero_grad()
            out = model(x[idx])
            if log_batch:
                run.log_batch(out, target(y[idx]))
            loss(out, target(y[idx])).backward()
            opt.step()
    return diagnostics.open_run(run.path)


def _loud(findings):
    return [f for f in findings if f.severity in ("warning", "error")]


def test_fires_on_n1_outputs_against_n_targets_as_the_first_problem(tmp_path):
    r = _run(tmp_path, "broadcast", target=lambda y: y.squeeze(1))
    findings = check(r)
    first = findings[0]
    assert first.rule == "loss_shape_broadcast" and first.severity == "error"
    assert first.evidence["outputs_shape"] == [32, 1] and first.evidence["labels_shape"] == [32]
    assert first.evidence["broadcast_to"] == [32, 32] and first.evidence["captures"] == 12  # steps 0, 5, ..., 55
    assert "(32, 1)" in first.message and "(32,)" in first.message and "(32, 32)" in first.message
    assert "squeeze(-1)" in first.advice and "view(-1, 1)" in first.advice
    # the symptom (the outputs' spread collapsed to the mean) fires, deferred to it
    deferred = {f.rule for f in findings if f.evidence.get("deferred_to") == "loss_shape_broadcast"}
    assert "output_vs_label" in deferred
    assert _loud(findings) == [first]
    assert len(evidence_figure(r, first).data) > 0


def test_quiet_on_matching_shapes(tmp_path):
    r = _run(tmp_path, "matching")
    assert rule_loss_shape_broadcast(r) == []
    assert _loud(check(r)) == []


def test_quiet_on_per_sample_weights_of_the_same_shape(tmp_path):
    # MSELoss(reduction="none") on (B, 1) and (B, 1), weighted per sample by a (B, 1) tensor
    crit = nn.MSELoss(reduction="none")
    weights = torch.linspace(0.5, 1.5, 32)[:, None]
    r = _run(tmp_path, "weighted", loss_fn=crit, loss=lambda out, y: (crit(out, y) * weights).mean())
    assert rule_loss_shape_broadcast(r) == []


def test_quiet_on_one_target_for_several_predictions(tmp_path):
    # 3 predictions per sample against one (B, 1) target: the target is expanded, not the outputs
    r = _run(tmp_path, "multi", d_out=3)
    assert rule_loss_shape_broadcast(r) == []


def test_outputs_expanded_to_the_targets_shape_is_a_warning(tmp_path):
    # (B, 1) outputs against (B, 4) targets (a critic against 4 returns): each output fit to 4 targets
    r = _run(tmp_path, "expanded", target=lambda y: y.expand(-1, 4) * torch.tensor([1.0, 0.5, -1.0, 2.0]))
    found = rule_loss_shape_broadcast(r)
    assert [f.severity for f in found] == ["warning"] and not found[0].evidence["pairwise"]
    assert found[0].evidence["broadcast_to"] == [32, 4]


def test_a_plain_loss_function_with_log_batch_is_a_warning(tmp_path):
    # the loss a function: the shapes come from log_batch, which need not be what the loss saw
    r = _run(tmp_path, "function", target=lambda y: y.squeeze(1), loss_fn=lambda o, t: F.mse_loss(o, t),
             log_batch=True)
    found = rule_loss_shape_broadcast(r)
    assert [f.severity for f in found] == ["warning"] and "if these are the tensors" in found[0].message


@pytest.mark.parametrize("loss_fn", [F.mse_loss, F.l1_loss])
def test_a_named_elementwise_function_is_an_error(tmp_path, loss_fn):
    r = _run(tmp_path, loss_fn.__name__, target=lambda y: y.squeeze(1), loss_fn=loss_fn, log_batch=True)
    found = rule_loss_shape_broadcast(r)
    assert [f.severity for f in found] == ["error"] and found[0].evidence["loss_fn"] == loss_fn.__name__
