"""Rules that missed bugs from public reports (benchmarks/public_bugs.py), on tiny real runs:
inputs scaled twice (`input_scale`, too small), and a learning rate so high that ReLUs die
while the loss still falls (`update_ratio`, the cause of `dead_units`). Each with a control."""

import pytest
import torch
from torch import nn

import diagnostics
from benchmarks import public_bugs
from benchmarks.health_suite import flat_digits, loop
from diagnostics.health import diagnose

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _case(name):
    return next(c for c in public_bugs.CASES if c.name == name)


def _first_layer_input_share(x: torch.Tensor) -> float:
    """Plain torch: the share of a fresh Linear(64, 64)'s output second moment that its inputs
    (not its bias) make."""
    torch.manual_seed(0)
    layer = nn.Linear(64, 64)
    with torch.no_grad():
        out, bias = layer(x), layer.bias.expand(len(x), -1)
    return float(((out - bias) ** 2).mean() / (out ** 2).mean())


def test_inputs_scaled_twice_are_the_first_problem(tmp_path):
    run = diagnostics.open_run(_case("pixels_divided_by_255_twice").train(tmp_path))
    findings, found = diagnose(run)
    assert found[0].cause.rule == "input_scale" and found[0].cause.evidence["too_small"]
    assert found[0].cause.evidence["input_rms"] < 0.01 and "scaled twice" in found[0].cause.message
    twice = public_bugs.digits_raw()[0].flatten(1) / 16 / 255
    assert _first_layer_input_share(twice) < 0.01  # what the rule infers, in plain torch
    assert _first_layer_input_share(twice * 255) > 0.5  # scaled once, the inputs make most of it


def test_inputs_in_zero_one_are_not_too_small(tmp_path):
    x, y, _, _ = flat_digits()
    x = (x - x.min()) / (x.max() - x.min())  # [0, 1]: trains well with the default init
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    run = diagnostics.open_run(loop(model, x, y, tmp_path, "zero_one", shuffle=True))
    assert not [f for f in diagnose(run)[0] if f.rule == "input_scale"]


def test_a_rate_that_kills_relus_is_the_cause_though_the_loss_falls(tmp_path):
    run = diagnostics.open_run(_case("adam_lr_0.1_oscillating").train(tmp_path))
    findings, found = diagnose(run)
    first = found[0]
    assert first.cause.rule == "update_ratio" and first.cause.severity == "warning"
    assert first.cause.evidence["dead_layers"] and "died" in first.cause.message
    assert "dead_units" in {s.rule for s in first.symptoms}


def test_a_high_ratio_with_a_falling_loss_and_live_units_stays_info(tmp_path):
    """The same model under Adam at lr 1e-2: large early steps, no unit dies: info at most."""
    x, y, _, _ = flat_digits()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    run = diagnostics.open_run(loop(model, x, y, tmp_path, "adam_1e-2", shuffle=True,
                                    opt=torch.optim.Adam(model.parameters(), lr=1e-2), steps=120))
    loud = [f for f in diagnose(run)[0] if f.severity in ("warning", "error")]
    assert not loud, [f.message for f in loud]
