"""Causes read from what moves the weights (issue #23's held-out misses): weights written
outside the optimizer (a re-init in the epoch loop), clipping that removes nearly all of the
gradient, a penalty in the loss that is the whole gradient, and a recurrent layer read at its
first time step. Each planted run fires with its cause first; a healthy near-miss (no re-init or
a restored checkpoint, the same clipping under Adam, a small penalty, the last time step read)
stays quiet. The references are hand counts and plain torch: where the bug was planted, the
clipped share measured in the loop, 2*lambda."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

import diagnostics
import hooks
from diagnostics.health import diagnose

LOUD = ("error", "warning")


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits(return_X_y=True)
    return torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y)


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def _train(model, x, y, tmp_path, name, step, opt=None, steps=100, batch=32, every="auto"):
    """`step(model, opt, crit, xb, yb, i)` does one training step: the planted bug lives there."""
    opt = opt or torch.optim.Adam(model.parameters(), lr=1e-3)
    crit = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(0)
    with hooks.watch(model, optimizer=opt, loss_fn=crit, run_dir=tmp_path, name=name, every=every) as run:
        for i in range(steps):
            idx = torch.randint(0, len(x), (batch,), generator=gen)
            step(model, opt, crit, x[idx], y[idx], i)
    return diagnostics.open_run(run.path)


def _plain(model, opt, crit, xb, yb, i):
    opt.zero_grad()
    crit(model(xb), yb).backward()
    opt.step()


def _loud(findings, rule):
    return [f for f in findings if f.rule == rule and f.severity in LOUD]


# ---------------------------------------------------------------------------------
# Weights written outside the optimizer

EPOCH = 40


def _reinit_each_epoch(model, opt, crit, xb, yb, i):
    if i % EPOCH == 0 and i:
        for m in model.modules():
            if isinstance(m, nn.Linear):
                m.reset_parameters()
    _plain(model, opt, crit, xb, yb, i)


def test_a_reinit_in_the_epoch_loop_is_named_weights_reset(digits, tmp_path):
    run = _train(_mlp(), *digits, tmp_path, "reinit", _reinit_each_epoch, steps=4 * EPOCH, every=5)
    findings, problems = diagnose(run)
    found = _loud(findings, "weights_reset")
    assert len(found) == 1 and problems[0].cause.rule == "weights_reset"
    # by hand: the re-inits at steps 40, 80, 120 fall between the captures that bracket them
    resets = found[0].evidence["resets"]
    assert [next(s for s in range(4) if a < (s + 1) * EPOCH <= b) + 1 for a, b in resets] == [1, 2, 3]
    assert all(b - a == 5 for a, b in resets)


def test_no_writes_or_a_restored_checkpoint_stay_quiet(digits, tmp_path):
    saved = {}

    def restore_best(model, opt, crit, xb, yb, i):  # early stopping's "restore the best weights"
        if i == 80:
            saved.update({k: v.clone() for k, v in model.state_dict().items()})
        if i == 120:
            model.load_state_dict(saved)
        _plain(model, opt, crit, xb, yb, i)

    healthy = _train(_mlp(), *digits, tmp_path / "a", "healthy", _plain, steps=4 * EPOCH, every=5)
    assert not [f for f in diagnose(healthy)[0] if f.rule == "weights_reset"]
    restored = _train(_mlp(), *digits, tmp_path / "b", "restored", restore_best, steps=4 * EPOCH, every=5)
    found = [f for f in diagnose(restored)[0] if f.rule == "weights_reset"]
    # the write is seen (the weights went back 40 steps), but the loss stays low: info, not a warning
    assert [f.severity for f in found] == ["info"] and found[0].evidence["intervals"] == [[115, 120]]


# ---------------------------------------------------------------------------------
# Clipping that removes nearly all of the gradient


def _clip_value(kept: dict):
    def step(model, opt, crit, xb, yb, i):
        opt.zero_grad()
        crit(model(xb), yb).backward()
        before = torch.linalg.vector_norm(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
        nn.utils.clip_grad_value_(model.parameters(), 1e-5)
        after = torch.linalg.vector_norm(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
        kept[i] = float(after / before)
        opt.step()
    return step


def test_clip_grad_value_1e_5_under_sgd_is_named_by_update_ratio(digits, tmp_path):
    kept = {}
    opt = lambda m: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)  # noqa: E731
    model = _mlp()
    run = _train(model, *digits, tmp_path, "clip", _clip_value(kept), opt=opt(model))
    findings, problems = diagnose(run)
    found = [f for f in _loud(findings, "update_ratio") if "clip_kept" in f.evidence]
    assert len(found) == 1 and problems[0].cause is not None and "clip_kept" in problems[0].cause.evidence
    # the share of the norm clipping kept, as plain torch measured it in the loop at the captured steps
    captured = sorted(set(run.distributions("param_grad")["step"]))
    assert found[0].evidence["clip_kept"] == pytest.approx(float(np.median([kept[s] for s in captured])), rel=0.02)
    assert found[0].evidence["clip_kept"] < 0.01


def test_the_same_clipping_under_adam_or_a_sensible_max_norm_stays_quiet(digits, tmp_path):
    adam = _train(_mlp(), *digits, tmp_path / "a", "clip_adam", _clip_value({}))  # Adam ignores the scale
    assert not [f for f in diagnose(adam)[0] if "clip_kept" in f.evidence]

    def clip_norm(model, opt, crit, xb, yb, i):
        opt.zero_grad()
        crit(model(xb), yb).backward()
        nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        opt.step()

    model = _mlp()
    sgd = _train(model, *digits, tmp_path / "b", "clip_norm", clip_norm,
                 opt=torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9))
    assert not [f for f in diagnose(sgd)[0] if "clip_kept" in f.evidence or f.severity in LOUD]


# ---------------------------------------------------------------------------------
# A penalty in the loss that is the whole gradient


def _l2_in_loss(lam: float):
    def step(model, opt, crit, xb, yb, i):
        opt.zero_grad()
        (crit(model(xb), yb) + lam * sum(p.pow(2).sum() for p in model.parameters())).backward()
        opt.step()
    return step


def test_an_l2_penalty_of_lambda_1_in_the_loss_is_named_and_the_labels_are_not_blamed(digits, tmp_path):
    run = _train(_mlp(), *digits, tmp_path, "l2", _l2_in_loss(1.0))
    findings, problems = diagnose(run)
    found = _loud(findings, "weight_decay_dominates")
    assert len(found) == 1 and problems[0].cause.rule == "weight_decay_dominates"
    assert found[0].evidence["gradient_to_weight"] == pytest.approx(2 * 1.0, rel=0.05)  # d(lambda w^2)/dw
    assert not _loud(findings, "labels_unlearnable")


def test_a_small_penalty_stays_quiet(digits, tmp_path):
    run = _train(_mlp(), *digits, tmp_path, "l2_small", _l2_in_loss(1e-4))
    findings = diagnose(run)[0]
    assert not [f for f in findings if f.rule == "weight_decay_dominates"]
    assert not [f for f in findings if f.severity in LOUD]


# ---------------------------------------------------------------------------------
# A recurrent layer read at one time step

T = 12


class _Reader(nn.Module):
    def __init__(self, at: int):
        super().__init__()
        torch.manual_seed(0)
        self.at = at
        self.emb, self.rnn, self.head = nn.Embedding(20, 16), nn.GRU(16, 32, batch_first=True), nn.Linear(32, 4)

    def forward(self, x):
        return self.head(self.rnn(self.emb(x))[0][:, self.at])


def _sequences():
    g = torch.Generator().manual_seed(0)
    seqs = torch.randint(0, 20, (1024, T), generator=g)
    return seqs, seqs[:, -1] % 4  # the class: the last token's residue


def test_a_gru_read_at_its_first_step_is_named_sequence_readout(tmp_path):
    run = _train(_Reader(0), *_sequences(), tmp_path, "first_step", _plain, steps=120)
    findings, problems = diagnose(run)
    found = _loud(findings, "sequence_readout")
    assert len(found) == 1 and problems[0].cause.rule == "sequence_readout" and found[0].layer == "rnn"
    assert found[0].evidence["time_steps"] == T
    assert found[0].evidence["zero_frac"] == pytest.approx((T - 1) / T)  # 1 of T steps gets a gradient
    assert found[0].evidence["recurrent_without_gradient"] == ["rnn.weight_hh_l0"]
    # the stuck recurrent weight is the readout's symptom, not a cause of its own
    assert not any(p.cause.rule == "stuck_parameters" for p in problems)


def test_a_gru_read_at_its_last_step_stays_quiet(tmp_path):
    run = _train(_Reader(-1), *_sequences(), tmp_path, "last_step", _plain, steps=120)
    findings = diagnose(run)[0]
    assert not [f for f in findings if f.rule == "sequence_readout"]
    assert not [f for f in findings if f.rule == "stuck_parameters"]
