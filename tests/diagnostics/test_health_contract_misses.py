"""The loss's contract, the labels and the inputs, as the hooks see them (issue #23's held-out
misses): `relu_on_logits`, `batch_first_mismatch`, `target_range` on CrossEntropyLoss's
probability targets, `single_class_labels` and `constant_inputs`. Each planted bug is a tiny real
run checked against plain torch (the bug is really in the run) and named as the first problem's
cause; its healthy near-miss stays quiet."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import diagnostics
import hooks
from diagnostics.health import check, problems
from diagnostics.health.data import rule_labels_unlearnable, rule_single_class_labels
from tests.diagnostics.test_health import FakeRun, _rows, _scal

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _data(n=512, d=16, k=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    return x, (x[:, :k] * 2).argmax(1)


def _train(tmp_path, name, model, x, y, crit=None, steps=60, batch=32, lr=1e-2):
    crit = crit or nn.CrossEntropyLoss()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    with hooks.watch(model, optimizer=opt, loss_fn=crit, run_dir=tmp_path, name=name, every=5) as run:
        for i in range(steps):
            start = (i * batch) % (len(x) - batch + 1)
            opt.zero_grad()
            crit(model(x[start:start + batch]), y[start:start + batch]).backward()
            opt.step()
    return diagnostics.open_run(run.path), model


def _mlp(d_in=16, k=5, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, 32), nn.ReLU(), nn.Linear(32, k))


def _loud(r) -> set[str]:
    return {f.rule for f in check(r) if f.severity != "info"}


# ---------------------------------------------------------------------------------
# relu_on_logits


def test_relu_after_the_classifier_is_named_as_the_cause(tmp_path):
    x, y = _data()
    r, model = _train(tmp_path, "relu_logits", nn.Sequential(_mlp(), nn.ReLU()), x, y)
    logits = model(x).detach()
    assert float(logits.min()) == 0 and float((logits == 0).float().mean()) > 0.1  # plain torch: clamped
    first = problems(r)[0]
    assert first.cause.rule == "relu_on_logits" and first.cause.evidence["last_module_type"] == "ReLU"
    assert "softmax_before_cross_entropy" not in _loud(r)  # a clamp, not a sigmoid


def test_relu_before_bce_with_logits_is_named_not_a_double_sigmoid(tmp_path):
    x, y = _data(k=2)
    model = nn.Sequential(_mlp(k=1), nn.ReLU())
    r, _ = _train(tmp_path, "relu_bce", model, x, y.float()[:, None], crit=nn.BCEWithLogitsLoss())
    assert float(model(x).detach().min()) == 0  # plain torch: the probability never falls below 0.5
    assert problems(r)[0].cause.rule == "relu_on_logits" and "double_sigmoid" not in _loud(r)


def test_raw_logits_into_cross_entropy_are_quiet(tmp_path):
    x, y = _data()
    r, model = _train(tmp_path, "raw_logits", _mlp(), x, y)
    assert float(model(x).detach().min()) < 0
    assert "relu_on_logits" not in {f.rule for f in check(r)} and not _loud(r)


# ---------------------------------------------------------------------------------
# batch_first_mismatch


class _Lstm(nn.Module):
    def __init__(self, batch_first: bool, transpose: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.transpose = transpose
        self.lstm, self.head = nn.LSTM(4, 16, batch_first=batch_first), nn.Linear(16, 5)

    def forward(self, x):
        seq = x.view(x.shape[0], 4, 4)  # (batch, time, feature)
        if self.transpose:  # a seq-first LSTM given (time, batch, feature), read at the last step
            return self.head(self.lstm(seq.transpose(0, 1))[0][-1])
        return self.head(self.lstm(seq)[0][:, -1])


def test_lstm_without_batch_first_on_batch_major_input_is_an_error(tmp_path):
    x, y = _data()
    r, _ = _train(tmp_path, "lstm_bf", _Lstm(batch_first=False), x, y)
    lstm = next(m for m in r.manifest["modules"] if m["name"] == "lstm")
    assert lstm["batch_first"] is False and r.manifest["output_shapes"]["lstm"] == [32, 4, 16]
    first = problems(r)[0]
    assert first.cause.rule == "batch_first_mismatch" and first.cause.severity == "error"
    assert first.cause.layer == "lstm" and first.cause.evidence["loss_batch"] == 32
    assert "batch_first=True" in first.cause.advice


@pytest.mark.parametrize("batch_first, transpose", [(True, False), (False, True)])
def test_lstm_given_the_layout_it_expects_is_quiet(tmp_path, batch_first, transpose):
    x, y = _data()
    r, _ = _train(tmp_path, f"lstm_ok_{batch_first}", _Lstm(batch_first, transpose), x, y)
    assert "batch_first_mismatch" not in {f.rule for f in check(r)}


def test_one_sequence_seq_first_with_a_loss_per_step_is_quiet():
    # (T, 1, H): a char-RNN over one sequence, the loss over its T steps: nothing mixes across a batch of 1
    run = FakeRun(manifest={"modules": [{"name": "rnn", "type": "GRU", "leaf": True, "batch_first": False}],
                            "output_shapes": {"rnn": [50, 1, 32]},
                            "loss_input_shapes": {"outputs": [50, 65], "labels": [50]}})
    assert [f for f in check(run) if f.rule == "batch_first_mismatch"] == []


# ---------------------------------------------------------------------------------
# target_range: float targets into CrossEntropyLoss whose rows do not sum to 1


def _multi_hot(n=512, k=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 16, generator=g)
    return x, (x @ torch.randn(16, k, generator=g) > 0).float()


def test_multi_hot_targets_into_cross_entropy_are_an_error(tmp_path):
    x, y = _multi_hot()
    assert float((y.sum(1) - 1).abs().mean()) > 1  # plain torch: the rows hold ~2.5 ones
    r, _ = _train(tmp_path, "multi_hot", _mlp(), x, y)
    probe = r.scalars(names=["probe/train/target_sum_dev"])
    first_batch = y[:32]
    assert probe["value"].iloc[0] == pytest.approx(float((first_batch.sum(1) - 1).abs().mean()), rel=1e-6)
    first = problems(r)[0]
    assert first.cause.rule == "target_range" and "BCEWithLogitsLoss" in first.cause.advice
    assert first.cause.evidence["binary_targets"] is True


@pytest.mark.parametrize("smooth", [0.0, 0.1])
def test_one_hot_and_smoothed_probability_targets_are_quiet(tmp_path, smooth):
    x, y = _data()
    target = torch.full((len(y), 5), smooth / 4).scatter_(1, y[:, None], 1 - smooth)
    r, _ = _train(tmp_path, f"soft_{smooth}", _mlp(), x, target)
    assert r.scalars(names=["probe/train/target_sum_dev"])["value"].max() < 1e-5
    assert "target_range" not in {f.rule for f in check(r)} and not _loud(r)


# ---------------------------------------------------------------------------------
# single_class_labels


def test_labels_all_one_class_are_an_error(tmp_path):
    x, _ = _data()
    y = torch.zeros(len(x), dtype=torch.long)
    r, model = _train(tmp_path, "one_class", _mlp(k=2), x, y, steps=80)
    assert float(nn.functional.cross_entropy(model(x).detach(), y)) < 0.1 * math.log(2)  # plain torch: the trivial fit
    first = problems(r)[0]
    assert first.cause.rule == "single_class_labels" and first.cause.severity == "error"
    assert first.cause.evidence["class"] == 0


def test_binary_labels_all_zero_into_bce_are_an_error(tmp_path):
    x, _ = _data()
    y = torch.zeros(len(x), 1)
    r, _ = _train(tmp_path, "bce_one_class", _mlp(k=1), x, y, crit=nn.BCEWithLogitsLoss(), steps=80)
    first = problems(r)[0]
    assert first.cause.rule == "single_class_labels" and first.cause.severity == "error"


def test_two_classes_are_quiet(tmp_path):
    x, y = _data(k=2)
    r, _ = _train(tmp_path, "two_classes", _mlp(k=2), x, y, steps=80)
    assert "single_class_labels" not in {f.rule for f in check(r)}


def test_one_class_with_a_loss_that_stays_high_is_info_only():
    # InfoNCE with the positive at index 0 (MoCo): every label 0, the loss far from 0
    steps = [0, 8, 16, 32, 64]
    hist = [[32.0] + [0.0] * 4096] * len(steps)
    run = FakeRun(manifest={"task": "classification", "loss_fn": "CrossEntropyLoss",
                            "loss_input_shapes": {"outputs": [32, 4097], "labels": [32]}},
                  scalars=_scal("loss", [8.0 - 0.02 * i for i in range(80)]).assign(rank=0),
                  dists=_rows("label", "train/class", steps, count=32, hist_counts=hist))
    (f,) = rule_single_class_labels(run)
    assert f.severity == "info"


# ---------------------------------------------------------------------------------
# constant_inputs


def test_one_input_repeated_is_named_before_dead_units_and_the_labels(tmp_path):
    x, y = _data()
    same = x[:1].expand(len(x), -1).clone()
    r, model = _train(tmp_path, "same_input", _mlp(), same, y, steps=100, lr=1e-3)
    assert model(same[:32]).argmax(1).unique().numel() == 1  # plain torch: one prediction for the batch
    first = problems(r)[0]
    assert first.cause.rule == "constant_inputs" and first.cause.severity == "error"
    assert not rule_labels_unlearnable(r)
    assert {"dead_units", "labels_unlearnable"}.isdisjoint(p.cause.rule for p in problems(r))


def test_inputs_that_differ_and_batches_of_one_are_quiet(tmp_path):
    x, y = _data()
    r, _ = _train(tmp_path, "varied", _mlp(), x, y)
    assert "constant_inputs" not in {f.rule for f in check(r)}
    r1, _ = _train(tmp_path, "batch_of_one", _mlp(), x, y, steps=40, batch=1)  # a unit is on or off for all of 1
    assert "constant_inputs" not in {f.rule for f in check(r1)}
