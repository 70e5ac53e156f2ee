"""Steps that cannot move the weights over the run (#23): a learning rate far too small for the
optimizer (Adadelta given Adam's 1e-3), float16 weights whose updates round away under plain SGD,
and a non-differentiable op in the forward (every gradient exactly 0) ranked before a
loss-contract finding; each with a healthy near-miss that stays quiet. The hooks record each
parameter's dtype without changing training."""

from __future__ import annotations

import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

import diagnostics
import hooks
from diagnostics.health import check, diagnose


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits(return_X_y=True)
    return torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y)


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def _train(model, opt, data, tmp_path, name, steps=120, half=False, watch=True):
    x, y = data
    x = x.half() if half else x
    crit, losses = nn.CrossEntropyLoss(), []
    ctx = hooks.watch(model, optimizer=opt, loss_fn=crit, run_dir=tmp_path, name=name) if watch else None
    run = ctx.__enter__() if ctx else None
    for step in range(steps):
        i = (step * 32) % (len(x) - 32)
        opt.zero_grad()
        loss = crit(model(x[i:i + 32]), y[i:i + 32])
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    if ctx:
        ctx.__exit__(None, None, None)
        return diagnostics.open_run(run.path), losses
    return None, losses


def _travel(run):
    return [f for f in check(run) if f.rule == "update_ratio" and "steps" in f.evidence]


def test_adadelta_given_adams_learning_rate_cannot_move_the_weights(digits, tmp_path):
    model = _mlp()
    w0 = model[0].weight.detach().clone()
    run, losses = _train(model, torch.optim.Adadelta(model.parameters(), lr=1e-3), digits, tmp_path, "adadelta")
    moved = float((model[0].weight.detach() - w0).norm() / w0.norm())  # independent: the net displacement
    assert moved < 0.05 and losses[-1] > 0.9 * losses[0]
    found = _travel(run)
    assert {f.layer for f in found} == {"0.weight", "2.weight"} and all(f.severity == "warning" for f in found)
    assert all(f.evidence["travel"] < 0.05 and f.evidence["steps"] == 120 for f in found)
    assert "Adadelta" in found[0].advice
    findings, problems = diagnose(run)
    assert problems and problems[0].cause.rule == "update_ratio"


def test_adadelta_at_its_own_default_rate_is_quiet(digits, tmp_path):
    model = _mlp()
    run, losses = _train(model, torch.optim.Adadelta(model.parameters(), lr=1.0), digits, tmp_path, "adadelta1")
    assert losses[-1] < 0.5 * losses[0]
    assert not [f for f in check(run) if f.rule == "update_ratio" and f.severity == "warning"]


def test_float16_weights_under_plain_sgd_lose_their_updates(digits, tmp_path):
    model = _mlp().half()
    run, _ = _train(model, torch.optim.SGD(model.parameters(), lr=1e-3), digits, tmp_path, "fp16", steps=100, half=True)
    assert {p["dtype"] for p in run.manifest["parameters"]} == {"float16"}
    found = _travel(run)
    assert found and all(f.evidence["dtype"] == "float16" for f in found)
    assert "float16" in found[0].message and "autocast" in found[0].advice
    # independent: one SGD step of this size in float32 differs from the float16 step (rounded away)
    w = model[0].weight.detach()
    step = torch.full_like(w, 1e-3 * 1e-2)
    assert (((w + step) == w).float().mean() > 0.5)


def test_float16_weights_that_learn_are_quiet(digits, tmp_path):
    model = _mlp().half()
    run, losses = _train(model, torch.optim.SGD(model.parameters(), lr=0.5), digits, tmp_path, "fp16ok", steps=100,
                         half=True)
    assert losses[-1] < 0.5 * losses[0]
    assert not _travel(run)


def test_dtype_recorded_and_training_bitwise_unchanged(digits, tmp_path):
    runs = []
    for watch in (True, False):
        model = _mlp()
        _, losses = _train(model, torch.optim.SGD(model.parameters(), lr=0.1), digits, tmp_path, "dt", steps=20,
                           watch=watch)
        runs.append((losses, [p.detach().clone() for p in model.parameters()]))
    assert runs[0][0] == runs[1][0] and all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1], strict=True))


class _Rounded(nn.Module):
    def __init__(self, round_in_forward: bool):
        super().__init__()
        torch.manual_seed(0)
        self.net, self.rounds = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1)), round_in_forward

    def forward(self, x):
        out = self.net(x)
        return torch.round(out) if self.rounds else out


@pytest.mark.parametrize("rounds", [True, False])
def test_round_in_the_forward_cuts_every_gradient_first(tmp_path, rounds):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 8, generator=g)
    y = torch.poisson(torch.exp(1.0 + 0.5 * x[:, :1]), generator=g)  # integer counts
    model, crit = _Rounded(rounds), nn.MSELoss()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    with hooks.watch(model, optimizer=opt, loss_fn=crit, run_dir=tmp_path, name="rounded", task="regression") as run:
        for step in range(80):
            i = (step * 32) % (len(x) - 32)
            opt.zero_grad()
            loss = crit(model(x[i:i + 32]), y[i:i + 32])
            loss.backward()
            opt.step()
    grads = [p.grad for p in model.parameters()]
    _, problems = diagnose(diagnostics.open_run(run.path))
    stuck = [p for p in problems if p.cause.rule == "stuck_parameters"]
    if rounds:  # independent: round's gradient is 0, so every parameter's is
        assert all(gr is not None and not gr.any() for gr in grads)
        assert problems[0].cause.rule == "stuck_parameters" and "torch.round" in problems[0].cause.message
    else:
        assert all(gr.any() for gr in grads) and not stuck


@pytest.mark.parametrize("per_sample", [False, True])
def test_a_sampler_given_class_weights_repeats_a_few_samples_and_overfits(tmp_path, per_sample):
    """WeightedRandomSampler wants one weight per sample; given the 10 class weights it draws indices 0-9 only."""
    from benchmarks.health_suite import flat_digits
    xt, yt, xv, yv = flat_digits()
    class_w = 1.0 / torch.bincount(yt).float()
    weights = class_w[yt] if per_sample else class_w
    idx_all = torch.tensor(list(torch.utils.data.WeightedRandomSampler(
        weights, num_samples=len(xt), replacement=True, generator=torch.Generator().manual_seed(0))))
    model, crit = _mlp(), nn.CrossEntropyLoss()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with hooks.watch(model, optimizer=opt, loss_fn=crit, run_dir=tmp_path, name="sampler") as run:
        for i, idx in enumerate(idx_all.split(32)[:120]):
            opt.zero_grad()
            crit(model(xt[idx]), yt[idx]).backward()
            opt.step()
            if i % 10 == 9:
                with torch.no_grad():
                    run.log_scalar("val/loss", nn.functional.cross_entropy(model(xv), yv))
    val = diagnostics.open_run(run.path).scalars(names=["val/loss"])["value"].to_numpy()
    found = [f for f in check(diagnostics.open_run(run.path)) if f.rule == "overfitting"]
    assert len(val) == 4
    if per_sample:
        assert not found and val[-1] < val[0]
    else:  # independent: 10 distinct samples drawn; the validation loss climbs at every point after its best
        best = int(val.argmin())
        assert len(set(idx_all.tolist())) <= 10 and best < 3 and (val[best + 1:] > val[best:-1]).all(), val
        assert len(found) == 1 and found[0].severity == "warning"


@pytest.mark.parametrize("inverse", [False, True])
def test_class_weights_proportional_to_the_counts_starve_the_rare_classes(digits, tmp_path, inverse):
    """CrossEntropyLoss(weight=counts / counts.sum()) where 1 / counts was meant: classes 5-9 kept at 20%."""
    x, y = digits
    keep = (y < 5) | (torch.rand(len(y), generator=torch.Generator().manual_seed(0)) < 0.2)
    x, y = x[keep], y[keep]
    counts = torch.bincount(y, minlength=10).float()
    weight = counts.sum() / (10 * counts) if inverse else counts / counts.sum()
    model, crit = _mlp(), nn.CrossEntropyLoss(weight=weight)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    with hooks.watch(model, optimizer=opt, loss_fn=crit, run_dir=tmp_path, name="cw") as run:
        for step in range(120):
            idx = order[(step * 32) % (len(x) - 32):][:32]
            opt.zero_grad()
            crit(model(x[idx]), y[idx]).backward()
            opt.step()
    r = diagnostics.open_run(run.path)
    assert r.manifest["loss_class_weight"] == pytest.approx(weight.tolist())
    with torch.no_grad():  # independent: how often the rare classes 5-9 are predicted on the kept data
        rare_pred = float((model(x).argmax(1) >= 5).float().mean())
    rare_share = float((y >= 5).float().mean())
    found = [f for f in check(r) if f.rule == "output_vs_label" and "class_weight" in f.evidence]
    if inverse:
        assert not found and rare_pred > rare_share / 3
    else:
        assert rare_pred < rare_share / 3
        assert len(found) == 1 and found[0].severity == "warning" and set(found[0].evidence["rare_classes"]) <= set(
            range(5, 10))
