"""A runs folder whose user-chosen strings are hostile Markdown and HTML (issue #25): run names,
layer names, class names, a split, a tag, a note and a metric name. Shared by the AppTest check
of every page and the real-browser one."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

import diagnostics
import hooks
from diagnostics.tags import TagStore

LINK = "[click](javascript:alert(1))"
BOLD = "<b>bold</b>"
STAR = "*star*"
TICK = "`tick`"
MATH = "$x$"
HOSTILE = [LINK, BOLD, STAR, TICK, MATH]
RUNS = [LINK, f"{STAR} {TICK} {MATH}", "plain"]  # run names: a folder name holds no "/"
CLASSES = [LINK, BOLD, f"{STAR} {TICK} {MATH}"]
SPLIT = f"{STAR}{MATH}"
TAG = BOLD
NOTE = f"{LINK} {TICK}"
METRIC = f"val/{LINK}"
LAYERS = [LINK, STAR]  # the two linear layers' module names (a module name holds no ".")


def _model() -> nn.Module:
    model = nn.Sequential()
    model.add_module(LINK, nn.Linear(6, 12))
    model.add_module("relu", nn.ReLU())
    model.add_module(STAR, nn.Linear(12, 3))
    return model


def record_one(folder: Path, name: str, seed: int) -> Path:
    torch.manual_seed(seed)
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    crit = nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(0)  # the same data in every run: they can be compared
    x, y = torch.randn(60, 6, generator=g), torch.randint(0, 3, (60,), generator=g)
    x[y == 1] += 1.0
    ids = torch.arange(60)
    with hooks.watch(model, optimizer=opt, loss_fn=crit, run_dir=folder, name=name, every=2,
                     class_names=CLASSES, config={LINK: BOLD}) as run:
        for step in range(8):
            idx = ids[(step % 3) * 20:(step % 3) * 20 + 20]
            opt.zero_grad()
            logits = model(x[idx])
            loss = crit(logits, y[idx])
            run.log_batch(logits, y[idx], ids=idx, loss=loss)
            loss.backward()
            opt.step()
            run.log_scalar(METRIC, float(step))
        run.evaluate([(x[:30], y[:30], ids[:30]), (x[30:], y[30:], ids[30:])], split=SPLIT,
                     attribute_worst=2, n_steps=4, progress=False)
    return run.path


def hostile_runs(folder: Path) -> Path:
    """Three comparable runs (the first, named LINK, with a tag and a note on samples 0 and 1)."""
    paths = [record_one(folder, name, seed) for seed, name in enumerate(RUNS)]
    key = diagnostics.open_run(paths[0]).evaluations()["dataset"].iloc[0]
    store = TagStore(paths[0])
    store.add_tags(key, ["0", "1"], TAG)
    store.set_note(key, "0", NOTE)
    return folder
