"""What the loss's contract rules read at capture time: the row sums of float targets shaped
like the outputs (`probe/train/target_sum_dev`, hooks/probes.py) against numpy, and the manifest's
`batch_first` of recurrent and attention modules (hooks/runinfo.py); training with multi-hot
targets into CrossEntropyLoss stays bitwise equal to an unwatched run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import diagnostics
import hooks
from hooks.probes import target_sum_probe
from hooks.runinfo import model_summary

KEY = "probe/train/target_sum_dev"


@pytest.mark.parametrize("make", [
    lambda g: (torch.rand(8, 5, generator=g) > 0.5).float(),                          # multi-hot
    lambda g: torch.eye(5)[torch.randint(0, 5, (8,), generator=g)],                     # one-hot
    lambda g: torch.softmax(torch.randn(8, 5, generator=g), 1),                         # soft targets
    lambda g: torch.rand(4, 3, 6, 6, generator=g),                                      # (N, C, H, W) maps
])
def test_probe_against_numpy(make):
    g = torch.Generator().manual_seed(0)
    y = make(g)
    out = torch.randn(y.shape)
    before = y.clone()
    expected = np.abs(y.numpy().sum(axis=1) - 1).mean()
    assert target_sum_probe(out, y)[KEY] == pytest.approx(float(expected), rel=1e-6, abs=1e-7)
    assert torch.equal(y, before)


@pytest.mark.parametrize("out, y", [
    (torch.randn(8, 5), torch.randint(0, 5, (8,))),        # class ids
    (torch.randn(8, 1), torch.rand(8, 1)),                  # one column: binary / regression
    (torch.randn(8, 5), torch.rand(8, 3)),                  # another shape
])
def test_probe_is_silent_for_other_targets(out, y):
    assert target_sum_probe(out, y) == {}


def test_manifest_records_batch_first_where_a_module_has_it():
    model = nn.ModuleDict({"a": nn.LSTM(3, 4), "b": nn.GRU(3, 4, batch_first=True), "c": nn.Linear(3, 4),
                           "d": nn.MultiheadAttention(4, 2, batch_first=True)})
    modules = {m["name"]: m for m in model_summary(model)[0]}
    assert modules["a"]["batch_first"] is False and modules["b"]["batch_first"] is True
    assert modules["d"]["batch_first"] is True and "batch_first" not in modules["c"]


def _train(tmp_path, watch: bool):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    crit = nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(1)
    run = hooks.watch(model, optimizer=opt, loss_fn=crit, run_dir=tmp_path, name="multi_hot", every=2) if watch \
        else None
    for _ in range(8):
        x = torch.randn(16, 6, generator=g)
        y = (torch.rand(16, 4, generator=g) > 0.5).float()
        opt.zero_grad()
        crit(model(x), y).backward()
        opt.step()
    if run:
        run.close()
    return model, run


def test_training_with_float_targets_is_bitwise_unchanged_and_the_probe_recorded(tmp_path):
    watched, run = _train(tmp_path, watch=True)
    plain, _ = _train(tmp_path, watch=False)
    for a, b in zip(watched.parameters(), plain.parameters()):
        assert torch.equal(a, b)
    probe = diagnostics.open_run(run.path).scalars(names=[KEY])
    assert len(probe) >= 2 and (probe["value"] > 0).all()
