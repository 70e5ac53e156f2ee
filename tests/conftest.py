"""Shared fixtures: small recorded runs made once per test session."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import hooks


def tiny_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(4 * 8 * 8, 3)
    )


def train_tiny(run_dir, name="tiny", steps=12, every=3, seed=0, watch=True, **watch_kwargs):
    """A seeded 3-class CNN trained for `steps` SGD steps; returns (model, run or None)."""
    torch.manual_seed(seed)
    model = tiny_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    crit = nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 1, 8, 8, generator=g)
    y = torch.randint(0, 3, (64,), generator=g)
    run = hooks.watch(model, optimizer=opt, loss_fn=crit, run_dir=run_dir, name=name, every=every,
                      **watch_kwargs) if watch else None
    for i in range(steps):
        idx = slice((i * 16) % 64, (i * 16) % 64 + 16)
        opt.zero_grad()
        loss = crit(model(x[idx]), y[idx])
        loss.backward()
        opt.step()
    if run is not None:
        run.close()
    return model, run


@pytest.fixture(scope="session")
def recorded_runs(tmp_path_factory):
    """A runs folder holding one finished classification run and one regression run."""
    folder = tmp_path_factory.mktemp("runs")
    train_tiny(folder, name="cls", steps=12, every=3)
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    crit = nn.MSELoss()
    x = torch.randn(128, 5)
    y = x.sum(dim=1, keepdim=True)
    with hooks.watch(model, optimizer=opt, loss_fn=crit, run_dir=folder, name="reg", every=2):
        for _ in range(8):
            opt.zero_grad()
            crit(model(x), y).backward()
            opt.step()
    return folder
