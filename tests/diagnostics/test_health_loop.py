"""Training-loop health rules (diagnostics.health.loop): each silent bug planted in a tiny
seeded run on real data (sklearn's digits) fires at the right parameter and steps, and
the healthy loops stay quiet."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

import diagnostics
import hooks
from diagnostics.health import check, evidence_figure
from diagnostics.health.loop import rule_gradients_not_reset, rule_stuck_parameters

LOOP_RULES = {"gradients_not_reset", "not_in_optimizer", "stuck_parameters", "frozen_model", "lr_collapse",
              "weight_decay_dominates", "batchnorm_small_batch", "eval_in_train_mode"}


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits(return_X_y=True)
    return torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y)


def _mlp(bn=False, dropout=0.0, seed=0):
    torch.manual_seed(seed)
    mid = [nn.BatchNorm1d(64)] if bn else []
    return nn.Sequential(nn.Linear(64, 64), *mid, nn.ReLU(), nn.Dropout(dropout), nn.Linear(64, 10))


def _loop(model, data, tmp_path, name, opt=None, steps=60, batch=30, zero_grad=True, sched=None,
          validate=None, every="auto", clip=None):
    """A plain loop: `validate(model, run)` is called every 10 steps (the user's own validation)."""
    x, y = data
    opt = opt or torch.optim.Adam(model.parameters(), lr=1e-3)
    crit = nn.CrossEntropyLoss()
    with hooks.watch(model, optimizer=opt, loss_fn=crit, run_dir=tmp_path, name=name, every=every) as run:
        for step in range(steps):
            i = (step * batch) % (len(x) - batch)
            if zero_grad:
                opt.zero_grad()
            crit(model(x[i:i + batch]), y[i:i + batch]).backward()
            if clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            if sched is not None:
                sched.step()
            if validate is not None and step % 10 == 9:
                validate(model, run)
    return diagnostics.open_run(run.path)


def _loop_findings(run):
    return [f for f in check(run) if f.rule in LOOP_RULES]


def _quiet(run):
    loud = [f"{f.severity} {f.rule} {f.layer}: {f.message}" for f in _loop_findings(run)]
    assert not loud, loud


def _by(findings, rule, run=None):
    """The findings of `rule`; with `run`, each must come with a chart that has data."""
    found = [f for f in findings if f.rule == rule]
    for f in found if run is not None else ():
        fig = evidence_figure(run, f)
        assert fig.data and all(len(t.x) for t in fig.data), (rule, fig.layout.title.text)
    return found


# ---------------------------------------------------------------------------------
# 1. Gradients never reset


def test_missing_zero_grad_the_stackoverflow_mnist_case(digits, tmp_path):
    """Adam lr=1e-4, batch 30, no zero_grad: the loss still falls a little, so nothing else says it."""
    model = _mlp()
    run = _loop(model, digits, tmp_path, "so", opt=torch.optim.Adam(model.parameters(), lr=1e-4), steps=120,
                zero_grad=False)
    found = _by(check(run), "gradients_not_reset", run)
    assert len(found) == 1 and found[0].severity == "error"
    captured = sorted(run.scalars(names=["grad_carried"])["step"])
    assert found[0].evidence["carried_steps"] == captured[1:]  # every capture after the first
    assert (found[0].step_start, found[0].step_end) == (captured[1], captured[-1])
    norm = run.scalars(names=["grad_norm"]).sort_values("step")["value"].to_numpy()
    assert found[0].evidence["grad_norm_growth"] > 10 and norm[-1] > 10 * norm[0]


def test_gradient_accumulation_over_micro_batches_is_not_a_missing_zero_grad(digits, tmp_path):
    x, y = digits
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    crit = nn.CrossEntropyLoss()
    with hooks.watch(model, optimizer=opt, loss_fn=crit, run_dir=tmp_path, name="accum", every=1) as run:
        for step in range(20):
            opt.zero_grad()
            for k in range(4):  # four micro-batches, one step
                i = (step * 120 + k * 30) % 1700
                (crit(model(x[i:i + 30]), y[i:i + 30]) / 4).backward()
            opt.step()
    r = diagnostics.open_run(run.path)
    assert r.scalars(names=["grad_carried"])["value"].tolist() == [0.0] * 20
    _quiet(r)


def test_a_backward_before_zero_grad_in_the_same_step_is_not_a_missing_zero_grad(digits, tmp_path):
    """A GAN-like step: another loss's backward reaches the parameters (the previous step's
    gradient still there), then zero_grad, then this optimizer's own backward and step."""
    x, y = digits
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    crit = nn.CrossEntropyLoss()
    with hooks.watch(model, optimizer=opt, loss_fn=crit, run_dir=tmp_path, name="gan", every=1) as run:
        for step in range(20):
            i = (step * 30) % 1700
            crit(model(x[i + 30:i + 60]), y[i + 30:i + 60]).backward()  # the other player's loss
            opt.zero_grad()
            crit(model(x[i:i + 30]), y[i:i + 30]).backward()
            opt.step()
    r = diagnostics.open_run(run.path)
    assert r.scalars(names=["grad_carried"])["value"].tolist() == [0.0] * 20
    assert not _by(check(r), "gradients_not_reset")


# ---------------------------------------------------------------------------------
# 2-4. Parameters that never change, not in the optimizer, most of the model frozen


def test_head_replaced_after_the_optimizer_was_built(digits, tmp_path):
    model = _mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model[-1] = nn.Linear(64, 10)  # a new head: the optimizer still holds the old one
    run = _loop(model, digits, tmp_path, "newhead", opt=opt)
    params = {p["name"]: p["in_optimizer"] for p in run.manifest["parameters"]}
    assert params == {"0.weight": True, "0.bias": True, "3.weight": False, "3.bias": False}
    findings = check(run)
    found = _by(findings, "not_in_optimizer", run)
    assert len(found) == 1 and found[0].layer == "3.weight"
    assert found[0].evidence["parameters"] == ["3.weight", "3.bias"] and found[0].evidence["numel"] == 650
    # the new head's gradients are never zeroed (opt.zero_grad() does not hold them): that is
    # this finding, not a missing zero_grad; the probe watches a parameter the optimizer holds
    assert not _by(findings, "gradients_not_reset")
    assert set(run.scalars(names=["grad_carried"])["value"]) == {0.0}


def test_zero_learning_rate_for_one_group(digits, tmp_path):
    model = _mlp()
    opt = torch.optim.SGD([{"params": model[0].parameters(), "lr": 0.0},
                           {"params": model[-1].parameters(), "lr": 0.05}])
    run = _loop(model, digits, tmp_path, "lr0", opt=opt, every=5)
    found = _by(check(run), "stuck_parameters", run)
    # a symptom of the group's zero learning rate (lr_collapse, an error): shown under it, as info
    assert len(found) == 1 and found[0].severity == "info" and found[0].evidence["deferred_to"] == "lr_collapse"
    assert found[0].evidence["parameters"] == ["0.weight", "0.bias"] and "learning rate is 0" in found[0].message
    assert (found[0].step_start, found[0].step_end) == (5, 55)
    lr0 = _by(check(run), "lr_collapse", run)
    assert [(f.layer, f.severity) for f in lr0] == [("lr/group0", "error")]


def test_gradients_clipped_to_nothing(digits, tmp_path):
    model = _mlp()
    run = _loop(model, digits, tmp_path, "clip0", opt=torch.optim.SGD(model.parameters(), lr=0.05), clip=0.0,
                every=5)
    found = _by(check(run), "stuck_parameters", run)
    assert len(found) == 1 and found[0].severity == "error" and "clipped to zero" in found[0].message
    assert found[0].evidence["parameters"] == ["0.weight", "0.bias", "3.weight", "3.bias"]


def test_everything_frozen_but_batchnorm_the_forum_case(digits, tmp_path):
    model = _mlp(bn=True)
    for name, p in model.named_parameters():
        p.requires_grad = name.startswith("1.")  # only the BatchNorm's affine parameters
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    run = _loop(model, digits, tmp_path, "frozen", opt=opt)
    found = _by(check(run), "frozen_model", run)
    assert len(found) == 1 and found[0].layer == "4" and found[0].evidence["head_frozen"]
    assert found[0].evidence["trained_share"] == pytest.approx(128 / (64 * 64 + 64 + 128 + 650))
    assert found[0].evidence["trained"] == ["1.weight", "1.bias"]


def test_a_frozen_backbone_with_a_training_head_is_transfer_learning(digits, tmp_path):
    model = _mlp()
    for p in model[0].parameters():
        p.requires_grad = False
    run = _loop(model, digits, tmp_path, "transfer",
                opt=torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2))
    _quiet(run)
    # the optimizer handed every parameter, the frozen ones included (they get no gradient)
    model = _mlp()
    for p in model[0].parameters():
        p.requires_grad = False
    _quiet(_loop(model, digits, tmp_path, "transfer_all", opt=torch.optim.Adam(model.parameters(), lr=1e-2)))


def test_a_parameter_outside_the_forward_is_only_worth_a_look(digits, tmp_path):
    class WithUnused(nn.Module):
        def __init__(self):
            super().__init__()
            self.net, self.unused = _mlp(), nn.Linear(10, 10)  # defined, never called

        def forward(self, x):
            return self.net(x)

    run = _loop(WithUnused(), digits, tmp_path, "unused", every=5)
    found = _by(check(run), "stuck_parameters", run)
    assert [(f.severity, f.evidence["parameters"]) for f in found] == [("info", ["unused.weight", "unused.bias"])]


class _NoGradFirstLayer(nn.Module):
    """The forum report "Does torch.no_grad() in forward freeze the layers?": the first layer
    (4,160 of 4,810 parameters) runs under torch.no_grad(), the optimizer holds everything."""

    def __init__(self):
        super().__init__()
        self.net = _mlp()

    def forward(self, x):
        with torch.no_grad():
            h = self.net[0](x)
        return self.net[3](self.net[2](self.net[1](h)))


def test_most_of_the_model_without_a_gradient_is_a_warning(digits, tmp_path):
    """86% of the trainable parameters never get a gradient: not an unused branch (info before),
    even though the head alone still brings the loss down (lr 1e-2)."""
    model = _NoGradFirstLayer()
    run = _loop(model, digits, tmp_path, "no_grad_backbone", opt=torch.optim.Adam(model.parameters(), lr=1e-2),
                every=5)
    found = rule_stuck_parameters(run)
    assert [(f.severity, f.evidence["parameters"]) for f in found] == [("warning", ["net.0.weight", "net.0.bias"])]
    assert "86% of the trainable parameters" in found[0].message and ".detach()" in found[0].message


def test_an_unused_branch_while_the_loss_does_not_fall_is_a_warning(digits, tmp_path):
    class WithUnused(nn.Module):
        def __init__(self):
            super().__init__()
            self.net, self.unused = _mlp(), nn.Linear(10, 10)

        def forward(self, x):
            return self.net(x)

    model = WithUnused()  # SGD lr 1e-5: every used parameter moves, the loss does not fall
    run = _loop(model, digits, tmp_path, "unused_flat", opt=torch.optim.SGD(model.parameters(), lr=1e-5), every=5)
    found = rule_stuck_parameters(run)
    assert [(f.severity, f.evidence["parameters"]) for f in found] == [("warning", ["unused.weight", "unused.bias"])]
    assert "the loss does not fall" in found[0].message or "the loss fell only" in found[0].message


def test_zero_grad_between_backward_and_step_is_named_not_detach(digits, tmp_path):
    """StackOverflow "model not learning: optimizer.zero_grad() between loss.backward() and
    optimizer.step()": the gradient norm at backward is > 0, no gradient at the step, so the
    reason is the cleared gradient, not ".detach()" (what it said before)."""
    x, y = digits
    model = _mlp()
    opt, crit = torch.optim.SGD(model.parameters(), lr=0.05), nn.CrossEntropyLoss()
    with hooks.watch(model, optimizer=opt, loss_fn=crit, run_dir=tmp_path, name="cleared", every=5) as r:
        for step in range(40):
            crit(model(x[step * 30:step * 30 + 30]), y[step * 30:step * 30 + 30]).backward()
            opt.zero_grad()
            opt.step()
    found = rule_stuck_parameters(diagnostics.open_run(r.path))
    assert len(found) == 1 and found[0].severity == "error"
    assert found[0].evidence["parameters"] == ["0.weight", "0.bias", "3.weight", "3.bias"]
    assert "cleared before the optimizer step" in found[0].message and ".detach()" not in found[0].message


# ---------------------------------------------------------------------------------
# 5. Learning rate collapsing early


def test_scheduler_stepped_per_batch_with_its_length_in_epochs(digits, tmp_path):
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.3)  # meant: every 5 epochs
    run = _loop(model, digits, tmp_path, "steplr", opt=opt, sched=sched, steps=60)
    lr = run.scalars(names=["lr"]).sort_values("step")
    first_low = int(lr[lr["value"] < 0.001]["step"].min())  # independent count: 0.1 * 0.3**k < 0.001
    assert first_low == 20  # 0.1 * 0.3**4 = 8.1e-4 from step 20
    found = _by(check(run), "lr_collapse", run)
    assert len(found) == 1 and found[0].layer == "lr" and found[0].step_start == first_low
    assert found[0].evidence["tail_share"] == pytest.approx(40 / 60)


def test_a_healthy_step_schedule_is_quiet(digits, tmp_path):
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[30, 45], gamma=0.1)
    _quiet(_loop(model, digits, tmp_path, "multistep", opt=opt, sched=sched, steps=60))


def _plateau_loop(digits, tmp_path, mode):
    """ReduceLROnPlateau stepped once per epoch (10 batches) with the epoch's mean loss."""
    x, y = digits[0][:300], digits[1][:300]
    model, crit = _mlp(), nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode=mode, factor=0.1, patience=2)
    with hooks.watch(model, optimizer=opt, loss_fn=crit, run_dir=tmp_path, name=f"plateau_{mode}") as run:
        for _epoch in range(20):
            total = 0.0
            for b in range(10):
                opt.zero_grad()
                loss = crit(model(x[b * 30:(b + 1) * 30]), y[b * 30:(b + 1) * 30])
                loss.backward()
                opt.step()
                total += float(loss.detach())
            sched.step(total / 10)
    return diagnostics.open_run(run.path)


def test_plateau_scheduler_with_the_mode_of_an_accuracy_stepped_with_a_loss(digits, tmp_path):
    run = _plateau_loop(digits, tmp_path, "max")  # every lower loss counts as no improvement
    lr = run.scalars(names=["lr"]).sort_values("step")
    first_low = int(lr[lr["value"] < 0.01 * 1e-3]["step"].min())  # independent: the first step under 0.1% of 0.01
    found = _by(check(run), "lr_collapse", run)
    assert len(found) == 1 and found[0].severity == "warning" and found[0].step_start == first_low
    assert found[0].evidence["fraction"] == 1e-3 and found[0].evidence["tail_share"] > 0.25
    assert "mode" in found[0].advice


@pytest.mark.parametrize("schedule", ["plateau_min", "cosine_to_zero"])
def test_healthy_decays_to_near_zero_are_quiet(digits, tmp_path, schedule):
    if schedule == "plateau_min":
        run = _plateau_loop(digits, tmp_path, "min")
    else:
        model = _mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=80, eta_min=0.0)
        run = _loop(model, digits, tmp_path, "cosine", opt=opt, sched=sched, steps=80)
    assert not [f for f in check(run) if f.rule == "lr_collapse"]


# ---------------------------------------------------------------------------------
# 6. Weight decay dominating the update


@pytest.mark.parametrize("make_opt", [
    lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=20.0),
    lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1.0),
], ids=["adamw", "sgd"])
def test_weight_decay_that_dominates_the_update(digits, tmp_path, make_opt):
    model = _mlp()
    run = _loop(model, digits, tmp_path, "wd", opt=make_opt(model.parameters()), steps=60, every=3)
    found = _by(check(run), "weight_decay_dominates", run)
    assert {f.layer for f in found} >= {"0.weight"}
    f = [f for f in found if f.layer == "0.weight"][0]
    w = run.distributions("weight", layers=["0.weight"]).sort_values("step")
    norms = (w["count"] * (w["std"] ** 2 + w["mean"] ** 2)) ** 0.5
    assert f.evidence["weight_norm_ratio"] == pytest.approx(norms.iloc[-1] / norms.iloc[0], rel=1e-6)
    assert f.evidence["weight_norm_ratio"] < 0.5 and f.evidence["decay_share"] > 0.5


@pytest.mark.parametrize("make_opt", [
    lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=1e-2),
    lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=5e-4),
], ids=["adamw", "sgd"])
def test_usual_weight_decay_is_quiet(digits, tmp_path, make_opt):
    model = _mlp()
    _quiet(_loop(model, digits, tmp_path, "wdok", opt=make_opt(model.parameters()), steps=60, every=3))


# ---------------------------------------------------------------------------------
# 7. BatchNorm on tiny batches


def test_batchnorm_with_batches_of_four(digits, tmp_path):
    run = _loop(_mlp(bn=True), digits, tmp_path, "bn4", batch=4, steps=40)
    sizes = run.scalars(names=["batchnorm_batch_size"])
    assert set(sizes["value"]) == {4.0} and len(sizes) >= 5
    found = _by(check(run), "batchnorm_small_batch", run)
    assert len(found) == 1 and found[0].layer == "1" and found[0].evidence["median_batch"] == 4
    assert (found[0].step_start, found[0].step_end) == (int(sizes["step"].min()), int(sizes["step"].max()))


def test_batchnorm_with_batches_of_thirty_and_frozen_batchnorm_are_quiet(digits, tmp_path):
    _quiet(_loop(_mlp(bn=True), digits, tmp_path, "bn30"))
    model = _mlp(bn=True)
    model[1].eval()  # frozen BatchNorm (running statistics) on tiny batches is the fix
    run = _loop(model, digits, tmp_path, "bnfrozen", batch=4, steps=30)
    assert run.scalars(names=["batchnorm_batch_size"]).empty
    _quiet(run)


# ---------------------------------------------------------------------------------
# 8. The user's own validation with dropout on


def _validate(eval_mode):
    def validate(model, run):
        x, y = load_digits(return_X_y=True)
        x, y = torch.tensor(x[-200:] / 16.0, dtype=torch.float32), torch.tensor(y[-200:])
        if eval_mode:
            model.eval()
        with torch.no_grad():
            run.log_scalar("val/loss", nn.functional.cross_entropy(model(x), y))
        model.train()
    return validate


def test_validation_with_dropout_left_on(digits, tmp_path):
    run = _loop(_mlp(dropout=0.5), digits, tmp_path, "dropon", validate=_validate(eval_mode=False))
    assert run.manifest["no_grad_forward_train_mode"] == ["2"]
    found = _by(check(run), "eval_in_train_mode", run)
    assert len(found) == 1 and found[0].layer == "2"
    assert found[0].evidence["steps"] == [10, 20, 30, 40, 50, 60]  # after step 9, 19, ...: the next step


def test_validation_in_eval_mode_and_run_evaluate_are_quiet(digits, tmp_path):
    x, y = digits
    model = _mlp(dropout=0.5)
    run = _loop(model, digits, tmp_path, "dropoff", validate=_validate(eval_mode=True))
    assert run.scalars(names=["no_grad_forward_train_mode"]).empty
    _quiet(run)


# ---------------------------------------------------------------------------------
# Healthy loops


def test_healthy_adam_and_sgd_loops_are_quiet(digits, tmp_path):
    _quiet(_loop(_mlp(), digits, tmp_path, "adam", steps=80))
    model = _mlp(bn=True, dropout=0.2)
    _quiet(_loop(model, digits, tmp_path, "sgd", opt=torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
                 every=1, steps=40))


class _Scalars:
    """Only scalars, as an older run (recorded before the gradient-reset probe) has them."""

    def __init__(self, values):
        self.manifest = {}
        self._s = pd.DataFrame({"step": np.arange(len(values)), "name": "grad_norm", "value": values})

    def scalars(self, names=None):
        return self._s[self._s["name"].isin(names)] if names else self._s


def test_without_the_probe_a_steadily_growing_gradient_norm_is_a_warning():
    rng = np.random.default_rng(0)
    growing = 0.4 * np.arange(1, 121) * (1 + 0.05 * rng.standard_normal(120))  # ~linear: summed gradients
    found = rule_gradients_not_reset(_Scalars(growing))
    assert len(found) == 1 and found[0].severity == "warning" and (found[0].step_start, found[0].step_end) == (0, 119)
    early, late = np.median(growing[:5]), np.median(growing[-12:])
    assert found[0].evidence["grad_norm_growth"] == pytest.approx(late / early)
    # a norm that rises 3x while training (or is noisy around a level) is not that
    assert not rule_gradients_not_reset(_Scalars(np.linspace(1, 3, 120)))
    assert not rule_gradients_not_reset(_Scalars(np.abs(rng.standard_normal(120)) + 0.1))


def test_the_loop_probes_are_removed_at_close_and_leave_training_bitwise_unchanged(digits, tmp_path):
    def train(watched):
        model = _mlp(bn=True, dropout=0.3)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        run = hooks.watch(model, optimizer=opt, run_dir=tmp_path, name=f"w{watched}", every=1) if watched else None
        x, y = digits
        for step in range(5):
            torch.manual_seed(step)
            nn.functional.cross_entropy(model(x[:30]), y[:30]).backward()  # no zero_grad: the probe's case
            opt.step()
            with torch.no_grad():
                model(x[30:60])  # validation in train mode: the no-grad probe's case
        if run is not None:
            run.close()
        return model
    plain, watched = train(False), train(True)
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), watched.state_dict().values()))
    assert not watched._forward_pre_hooks and all(not p._backward_hooks for p in watched.parameters())


@pytest.mark.parametrize("module", ["diagnostics.health.loop", "diagnostics.health.data", "diagnostics.health.loss",
                                    "diagnostics.health.activations", "diagnostics.health.gradients",
                                    "diagnostics.health.fit", "diagnostics.health.registry",
                                    "diagnostics.health.common", "diagnostics.health.charts", "diagnostics.health"])
def test_any_rule_module_can_be_imported_first(module):
    """Any module of the health package imports first in a fresh process, and all rules register."""
    import subprocess
    import sys

    code = f"import {module}; import diagnostics.health as h; assert len(h.RULES) > 20"
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=120)


class _TiedLM(nn.Module):
    """An embedding and a head sharing one weight (GPT's wte / lm_head): named_parameters lists
    it once, under the embedding's name."""

    def __init__(self, vocab=10, width=64):
        super().__init__()
        self.wte = nn.Embedding(vocab, width)
        self.body = nn.Linear(width, width)
        self.lm_head = nn.Linear(width, vocab, bias=False)
        self.lm_head.weight = self.wte.weight

    def forward(self, x):
        return self.lm_head(torch.tanh(self.body(self.wte(x))))


def test_a_head_tied_to_the_embedding_is_not_frozen(tmp_path):
    """The loss barely falls here (a tiny lr), which is when frozen_model looks at the head:
    the tied head trains through the embedding's parameter and must not read as frozen."""
    torch.manual_seed(0)
    model = _TiedLM()
    x = torch.randint(0, 10, (300,))
    y = (x + 1) % 10
    run = _loop(model, (x, y), tmp_path, "tied", opt=torch.optim.SGD(model.parameters(), lr=1e-6))
    assert "lm_head.weight" not in {p["name"] for p in run.manifest["parameters"]}
    assert _by(check(run), "frozen_model") == []
