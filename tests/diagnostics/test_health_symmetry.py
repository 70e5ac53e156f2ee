"""The rule `symmetric_units` (diagnostics/health/symmetry.py) on tiny real runs: hidden
layers initialised to one constant are locked together (checked against plain torch: their
units' outputs stay identical after training); a zero-initialised last layer, a constant
bias or LayerNorm, and PyTorch's default init draw nothing."""

import torch
from torch import nn

import diagnostics
import hooks
from diagnostics.health import check, problems
from diagnostics.health.symmetry import rule_symmetric_units


def _train(model, folder, steps=40):
    torch.manual_seed(0)
    x = torch.randn(128, 8)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    crit = nn.CrossEntropyLoss()
    with hooks.watch(model, optimizer=opt, loss_fn=crit, run_dir=folder, name="sym") as run:
        for _ in range(steps):
            opt.zero_grad()
            crit(model(x), y).backward()
            opt.step()
    return diagnostics.open_run(run.path), x


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3))


def test_constant_hidden_layers_are_found_and_their_units_really_stay_identical(tmp_path):
    model = _mlp()
    for p in model.parameters():  # the classic: every parameter one constant
        nn.init.constant_(p, 0.05)
    r, x = _train(model, tmp_path)
    hidden = model[1](model[0](x)).detach()  # plain torch: every unit's output equals the first's
    assert torch.allclose(hidden, hidden[:, :1].expand_as(hidden))
    found = rule_symmetric_units(r)
    assert [f.severity for f in found] == ["warning"]
    assert found[0].evidence["parameters"] == ["0.weight", "2.weight"] and found[0].layer == "0"
    assert "never differ" in found[0].message and "16 units" in found[0].message
    assert any(p.cause.rule == "symmetric_units" for p in problems(r))


def test_legitimate_constant_inits_draw_nothing(tmp_path):
    model = _mlp()
    nn.init.zeros_(model[4].weight)  # a zero-initialised head: its rows get different gradients
    for layer in (model[0], model[2]):
        nn.init.zeros_(layer.bias)
    r, _ = _train(model, tmp_path / "head")
    assert rule_symmetric_units(r) == []
    assert not [f for f in check(r) if f.rule == "symmetric_units"]
    model = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.ReLU(), nn.Linear(16, 3))
    r, _ = _train(model, tmp_path / "default")
    assert rule_symmetric_units(r) == []


def test_one_constant_layer_read_by_a_random_one_is_not_locked(tmp_path):
    """Only the first layer constant (weight and bias): the next layer's weights differ per
    unit, so the first step tells the units apart (plain torch agrees: their outputs differ
    after training)."""
    model = _mlp()
    nn.init.constant_(model[0].weight, 0.05)
    nn.init.constant_(model[0].bias, 0.0)
    r, x = _train(model, tmp_path)
    hidden = model[1](model[0](x)).detach()
    assert not torch.allclose(hidden, hidden[:, :1].expand_as(hidden))
    assert rule_symmetric_units(r) == []
