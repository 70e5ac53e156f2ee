"""The model's mode at the optimizer steps (hooks/capture.py, `note_step_mode`): the share of
dropout/BatchNorm modules in eval mode, written at the first step and when it changes, against
a hand count of the loop's own mode changes; training bitwise unchanged."""

from __future__ import annotations

import torch
from torch import nn

import diagnostics
import hooks
from diagnostics import schema


def _model():
    torch.manual_seed(0)
    # Dropout(p=0) never changes anything: not counted; 2 mode-sensitive modules
    return nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3), nn.Dropout(0.0),
                         nn.Linear(16, 3))


def _train(tmp_path, modes: dict, watch=True, steps=12):
    """12 steps; `modes[step]`: called on the model before that step's forward ("eval",
    "train" or "bn_eval": only the BatchNorm frozen)."""
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(1)
    run = hooks.watch(model, optimizer=opt, loss_fn=nn.CrossEntropyLoss(), run_dir=tmp_path, name="mode",
                      every=5) if watch else None
    for step in range(steps):
        if modes.get(step) == "eval":
            model.eval()
        elif modes.get(step) == "train":
            model.train()
        elif modes.get(step) == "bn_eval":
            model[1].eval()
        x, y = torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    if run:
        run.close()
    return model, run


def test_share_in_eval_mode_written_when_it_changes(tmp_path):
    _, run = _train(tmp_path, {4: "eval", 7: "train", 9: "bn_eval"})
    r = diagnostics.open_run(run.path)
    s = r.scalars(names=[schema.STEP_EVAL_MODE]).sort_values("step")
    # hand count: train (0 of 2 in eval) from 0, both from 4, none from 7, the BatchNorm alone from 9
    assert s["step"].tolist() == [0, 4, 7, 9] and s["value"].tolist() == [0.0, 1.0, 0.0, 0.5]
    assert r.manifest[schema.STEP_EVAL_MODE] == {"modules": ["1", "3"], "of": 2, "step": 4}


def test_always_train_mode_writes_one_zero(tmp_path):
    _, run = _train(tmp_path, {})
    s = diagnostics.open_run(run.path).scalars(names=[schema.STEP_EVAL_MODE])
    assert s["step"].tolist() == [0] and s["value"].tolist() == [0.0]
    assert schema.STEP_EVAL_MODE not in diagnostics.open_run(run.path).manifest


def test_training_is_bitwise_unchanged(tmp_path):
    modes = {4: "eval", 7: "train", 9: "bn_eval"}
    plain, _ = _train(tmp_path, modes, watch=False)
    watched, _ = _train(tmp_path, modes)
    for (k, a), b in zip(plain.state_dict().items(), watched.state_dict().values()):
        assert torch.equal(a, b), k
    assert [m.training for m in plain.modules()] == [m.training for m in watched.modules()]


def test_manifest_names_the_modules_at_the_largest_share(tmp_path):
    _, run = _train(tmp_path, {3: "bn_eval", 6: "eval", 8: "train"})
    r = diagnostics.open_run(run.path)
    assert r.scalars(names=[schema.STEP_EVAL_MODE]).sort_values("step")["value"].tolist() == [0.0, 0.5, 1.0, 0.0]
    assert r.manifest[schema.STEP_EVAL_MODE] == {"modules": ["1", "3"], "of": 2, "step": 6}
