"""Activation checkpointing (`torch.utils.checkpoint`): the recomputation inside backward fires
the forward hooks again; each activation and each gradient is still recorded once per step,
equal to an un-checkpointed identical run's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

import diagnostics
import hooks


class Net(nn.Module):
    """Two blocks; the middle one checkpointed (or not)."""

    def __init__(self, mode: str | None):
        super().__init__()
        torch.manual_seed(0)
        self.mode = mode
        self.stem = nn.Linear(6, 16)
        self.block = nn.Sequential(nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 16), nn.ReLU())
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        h = self.stem(x)
        if self.mode is None:
            h = self.block(h)
        else:
            h = checkpoint(self.block, h, use_reentrant=self.mode == "reentrant")
        return self.head(h)


def _train(mode, tmp_path=None, watch=True, steps=3):
    model = Net(mode)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    crit = nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 6, generator=g), torch.randint(0, 3, (32,), generator=g)
    run = hooks.watch(model, opt, crit, run_dir=tmp_path, name=str(mode), every=1) if watch else None
    forward_calls = []
    model.block[0].register_forward_hook(lambda m, a, out: forward_calls.append(torch.is_grad_enabled()) and None)
    for _ in range(steps):
        opt.zero_grad()
        crit(model(x), y).backward()
        opt.step()
    if run:
        run.close()
    return model, run, forward_calls


def _rows(run, kind):
    d = diagnostics.open_run(run.path).distributions(kind)
    return d.sort_values(["layer", "step"]).reset_index(drop=True)


@pytest.mark.parametrize("mode", ["reentrant", "non_reentrant"])
def test_checkpointed_block_is_recorded_once_per_step(tmp_path, mode):
    plain, reference, _ = _train(None, tmp_path / "plain")
    unwatched, _, calls = _train(mode, watch=False)
    watched, run, _ = _train(mode, tmp_path / "ckpt")
    assert len(calls) == 6  # the block's forward ran twice per step: once more inside backward
    assert all(torch.equal(p, q) for p, q in zip(unwatched.state_dict().values(), watched.state_dict().values()))
    for kind in ("activation", "gradient", "param_grad", "weight"):
        got, want = _rows(run, kind), _rows(reference, kind)
        assert not got.duplicated(["layer", "step"]).any()  # once per (layer, step)
        assert got[["layer", "step", "count"]].equals(want[["layer", "step", "count"]])
        np.testing.assert_allclose(got["mean"], want["mean"], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(got["std"], want["std"], rtol=1e-5, atol=1e-7)
    assert {"block.0", "block.1", "block.2", "block.3"} <= set(_rows(run, "gradient")["layer"])
    loss = diagnostics.open_run(run.path).scalars(names=["loss", "grad_norm"])
    ref = diagnostics.open_run(reference.path).scalars(names=["loss", "grad_norm"])
    np.testing.assert_allclose(loss.sort_values(["name", "step"])["value"], ref.sort_values(["name", "step"])["value"],
                               rtol=1e-6)
