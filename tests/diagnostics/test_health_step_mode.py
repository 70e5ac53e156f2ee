"""The rule `trained_in_eval_mode` (diagnostics/health/loop.py) on tiny real runs: a warning
when the loop forgets model.train() after validating in eval mode; info when the run trains
in eval mode from its start or with only the BatchNorm frozen; nothing when every step is in
train mode."""

from __future__ import annotations

import torch
from torch import nn

import diagnostics
import hooks
from diagnostics.health import check, evidence_figure
from diagnostics.health.loop import rule_trained_in_eval_mode


def _run(tmp_path, name, modes: dict, steps=60):
    """A dropout + BatchNorm MLP on a learnable 3-class problem; `modes[step]` is called before
    that step ("eval", "train", "bn_eval": the BatchNorm alone)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(600, 10, generator=g)
    y = (x @ torch.randn(10, 3, generator=g)).argmax(1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 3))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    with hooks.watch(model, optimizer=opt, loss_fn=nn.CrossEntropyLoss(), run_dir=tmp_path, name=name,
                     every=10) as run:
        for step in range(steps):
            if modes.get(step) in ("validate", "validate_and_train"):  # the user's validation
                model.eval()
                with torch.no_grad():
                    model(x[:50])
                if modes[step] == "validate_and_train":
                    model.train()
            {"eval": model.eval, "bn_eval": model[1].eval}.get(modes.get(step), lambda: None)()
            idx = torch.arange(step * 30, step * 30 + 30) % len(x)
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return diagnostics.open_run(run.path)


def test_warns_when_model_train_is_not_called_after_validation(tmp_path):
    r = _run(tmp_path, "forgot", {20: "validate"})  # validated before step 20, never back in train mode
    found = rule_trained_in_eval_mode(r)
    assert [f.severity for f in found] == ["warning"]
    f = found[0]
    assert f.evidence["steps_all_eval"] == 40 and f.evidence["steps"] == 60 and f.evidence["after_train_mode"]
    assert f.evidence["modules"] == ["1", "3"] and f.layer == "1" and f.step_start == 20 and f.step_end == 59
    assert "model.train()" in f.advice
    assert any(f.rule == "trained_in_eval_mode" and f.severity == "warning" for f in check(r))
    assert len(evidence_figure(r, f).data) == 1


def test_quiet_when_every_step_trains_in_train_mode(tmp_path):
    r = _run(tmp_path, "control", {20: "validate_and_train", 40: "validate_and_train"})
    assert rule_trained_in_eval_mode(r) == []


def test_warns_when_dropout_never_ran_in_train_mode(tmp_path):
    """A model put in eval mode before training (model.eval() after loading a checkpoint, never
    undone): dropout p=0.3 off for all 60 steps is not deliberate, so a warning (it was info
    while "from the start" alone decided), naming the dropout module, not the BatchNorm."""
    r = _run(tmp_path, "from_start", {0: "eval"})
    found = rule_trained_in_eval_mode(r)
    assert [f.severity for f in found] == ["warning"]
    f = found[0]
    assert not f.evidence["after_train_mode"] and f.evidence["steps_all_eval"] == 60
    assert f.evidence["dropout_never_trained"] == ["3"] and f.layer == "3"
    assert "never ran in train mode" in f.message and "BatchNorm layers too (1)" in f.message


def test_info_when_batchnorm_alone_is_frozen_from_the_start(tmp_path):
    """BatchNorm held in eval mode from the first step while dropout trains: frozen BatchNorm
    statistics for fine-tuning (detectron2's FrozenBatchNorm2d), deliberate: info."""
    r = _run(tmp_path, "frozen_bn_from_start", {0: "bn_eval"})
    found = rule_trained_in_eval_mode(r)
    assert [f.severity for f in found] == ["info"]
    assert found[0].evidence["dropout_never_trained"] == [] and found[0].evidence["steps_some_eval"] == 60


def test_dropout_off_for_a_short_run_is_info(tmp_path):
    r = _run(tmp_path, "short", {0: "eval"}, steps=8)  # under EVAL_STEPS_MIN steps: too short to judge
    found = rule_trained_in_eval_mode(r)
    assert [f.severity for f in found] == ["info"] and found[0].evidence["dropout_never_trained"] == ["3"]


def test_dropout_that_trained_once_is_not_never_trained(tmp_path):
    """Eval mode from step 10 on after steps in train mode is the forgotten-model.train() case,
    judged as before; the dropout ran in train mode, so it is not listed as never trained."""
    r = _run(tmp_path, "later", {10: "eval"})
    found = rule_trained_in_eval_mode(r)
    assert [f.severity for f in found] == ["warning"] and found[0].evidence["dropout_never_trained"] == []
    assert found[0].evidence["after_train_mode"]


def test_info_when_only_batchnorm_is_frozen(tmp_path):
    r = _run(tmp_path, "frozen_bn", {10: "bn_eval"})
    found = rule_trained_in_eval_mode(r)
    assert [f.severity for f in found] == ["info"]
    assert found[0].evidence["steps_some_eval"] == 50 and found[0].evidence["steps_all_eval"] == 0


def test_a_few_steps_in_eval_mode_are_info(tmp_path):
    r = _run(tmp_path, "brief", {52: "eval"})  # 8 steps: under EVAL_STEPS_MIN
    found = rule_trained_in_eval_mode(r)
    assert [f.severity for f in found] == ["info"] and found[0].evidence["steps_all_eval"] == 8
