"""Choosing what to record (`watch(layers=..., kinds=...)`, issue #22): names, globs, a name
that holds what lies inside it, exclusions, kinds; modules left out get no hook at all."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import diagnostics
import hooks
from hooks.options import Selection


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.ReLU())
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.encoder(x))


def _train(tmp_path, name, **kwargs):
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    crit = nn.CrossEntropyLoss()
    x, y = torch.randn(8, 6), torch.arange(8) % 3
    with hooks.watch(model, optimizer=opt, loss_fn=crit, run_dir=tmp_path, name=name, every=1, **kwargs) as run:
        for _ in range(2):
            opt.zero_grad()
            crit(model(x), y).backward()
            opt.step()
    return model, diagnostics.open_run(run.path)


def test_selection_rules_by_hand():
    s = Selection(("encoder", "!*.1*"))
    assert [s.layer(n) for n in ("encoder.0", "encoder.1", "encoder.2", "head")] == [True, False, True, False]
    assert s.parameter("encoder.0.weight") and not s.parameter("encoder.1.bias") and not s.parameter("head.weight")
    only_excludes = Selection(("!head",))
    assert only_excludes.layer("encoder.0") and not only_excludes.parameter("head.bias")
    glob = Selection(("*.weight",))
    assert glob.parameter("head.weight") and not glob.parameter("head.bias")
    inside = Selection(("encoder.0.*",))  # what a module holds: the module's own hooks too
    assert inside.layer("encoder.0") and inside.parameter("encoder.0.weight") and not inside.layer("encoder.1")
    Selection(("!*.norm*",)).check(["Net", "encoder"], ["encoder.weight"])  # excluding nothing is fine


def test_layers_and_kinds_choose_what_is_recorded(tmp_path):
    model, r = _train(tmp_path, "some", layers=["encoder", "!encoder.1"], kinds=["activation", "weight"])
    assert r.kinds() == ["activation", "weight"]
    assert r.layers("activation") == ["encoder.0", "encoder.2"]
    assert r.layers("weight") == ["encoder.0.weight", "encoder.0.bias"]
    assert len(r.scalars(names=["loss"])) == 2 and len(r.scalars(names=["grad_norm"])) == 2  # always recorded
    assert r.manifest["watch"]["layers"] == ["encoder", "!encoder.1"]
    assert r.manifest["watch"]["kinds"] == ["activation", "weight"]
    assert not model.head._forward_hooks and not model.encoder[1]._forward_hooks  # left out: no hook at all


def test_everything_by_default(tmp_path):
    _, r = _train(tmp_path, "all")
    assert r.kinds() == ["activation", "gradient", "weight", "param_grad", "update", "output", "label"]
    assert r.layers("activation") == ["encoder.0", "encoder.1", "encoder.2", "head"]


def test_bad_selections_get_one_line_errors(tmp_path):
    with pytest.raises(ValueError, match="kinds must be a list of activation"):
        hooks.watch(Net(), run_dir=tmp_path, kinds=["activations"])
    with pytest.raises(ValueError, match="'decoder.*' matches no module or parameter.*'encoder'"):
        hooks.watch(Net(), run_dir=tmp_path, layers="decoder.*")
    with pytest.raises(ValueError, match="layers must be a name or glob pattern"):
        hooks.watch(Net(), run_dir=tmp_path, layers=[3])
    assert not list(tmp_path.iterdir())  # nothing was made


def test_callbacks_take_the_selection():
    pytest.importorskip("lightning")
    from hooks.lightning import DiagnosticsCallback

    callback = DiagnosticsCallback(layers="encoder", kinds=["weight"], strict=True)
    assert callback.watch_options.selection.kinds == {"weight"} and callback.watch_options.strict
