"""Shared fixtures: small recorded runs made once per test session."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

import hooks

# A page that raises shows one line in the dashboard (pages/_shared.page_failed); the tests want the
# exception itself, so that a page's bug fails its test.
os.environ.setdefault("DIAGNOSTICS_STRICT_PAGES", "1")


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
    with hooks.watch(model, optimizer=opt, loss_fn=crit, run_dir=folder, name="reg", every=2) as run:
        for _ in range(8):
            opt.zero_grad()
            crit(model(x), y).backward()
            opt.step()
        run.evaluate([(x[:64], y[:64]), (x[64:], y[64:])], split="val", attribute_worst=4, n_steps=4,
                     progress=False)
    review_run(folder)
    return folder


def review_run(folder, name="review"):
    """A classification run with per-sample records every step and one evaluation."""
    torch.manual_seed(2)
    model = tiny_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(96, 1, 8, 8, generator=g)
    y = torch.randint(0, 3, (96,), generator=g)
    x[y == 1] += 0.5  # something to learn
    with hooks.watch(model, optimizer=opt, run_dir=folder, name=name, every=5,
                     class_names=["cat", "dog", "eel"]) as run:
        for _epoch in range(4):
            for i in range(0, 96, 16):
                idx = torch.arange(i, i + 16)
                opt.zero_grad()
                logits = model(x[idx])
                loss = nn.functional.cross_entropy(logits, y[idx])
                run.log_batch(logits, y[idx], ids=idx, loss=loss)
                loss.backward()
                opt.step()
        run.evaluate([(x[:48], y[:48], torch.arange(48)), (x[48:], y[48:], torch.arange(48, 96))],
                     split="val", attribute_worst=4, n_steps=4, progress=False)
    return run.path
