"""Per-sample records from log_batch(..., ids=...), checked against plain torch by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import diagnostics
import hooks
from hooks.records import per_sample


def test_classification_rows_match_plain_torch():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0], [1.0, 1.0, 0.0]])
    y = torch.tensor([0, 1, -100])
    rows = per_sample(logits, y, "classification").double().numpy()
    # sample 0: correct, loss = CE, margin = 2.0 - 0.5
    assert rows[0, 0] == 0 and rows[0, 1] == 0 and rows[0, 5] == 1.0
    assert rows[0, 2] == pytest.approx(F.cross_entropy(logits[:1], y[:1]).item(), rel=1e-6)
    assert rows[0, 3] == pytest.approx(torch.softmax(logits[0], 0)[0].item(), rel=1e-6)
    assert rows[0, 4] == pytest.approx(1.5)
    # sample 1: wrong (predicts 2), margin 0.2 - 3.0
    assert rows[1, 1] == 2 and rows[1, 5] == 0.0 and rows[1, 4] == pytest.approx(-2.8)
    # ignore_index: the label is kept, every derived number is NaN
    assert rows[2, 0] == -100 and np.isnan(rows[2, 1:]).all()


def test_regression_rows():
    pred = torch.tensor([[1.0], [4.0]])
    y = torch.tensor([[2.0], [1.0]])
    rows = per_sample(pred, y, "regression").double().numpy()
    np.testing.assert_allclose(rows[:, [0, 1, 2, 6]], [[2, 1, 1, -1], [1, 4, 9, 3]])
    assert np.isnan(rows[:, 3:6]).all()


def test_records_every_step_with_ids_and_leave_training_unchanged(tmp_path):
    def train(watch: bool):
        torch.manual_seed(0)
        model = nn.Linear(5, 3)
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        g = torch.Generator().manual_seed(1)
        x, y = torch.randn(40, 5, generator=g), torch.randint(0, 3, (40,), generator=g)
        run = hooks.watch(model, optimizer=opt, run_dir=tmp_path, name="ids", every=4) if watch else None
        seen = []
        for step in range(6):
            idx = torch.arange(step * 8 % 40, step * 8 % 40 + 8)
            opt.zero_grad()
            logits = model(x[idx])
            loss = F.cross_entropy(logits, y[idx])
            if run:
                run.log_batch(logits, y[idx], ids=idx, loss=loss)
            seen.append((step, idx.tolist(), F.cross_entropy(logits, y[idx], reduction="none").detach()))
            loss.backward()
            opt.step()
        if run:
            run.close()
        return model, run, seen

    plain, _, _ = train(False)
    watched, run, seen = train(True)
    assert torch.equal(plain.weight, watched.weight) and torch.equal(plain.bias, watched.bias)
    rec = diagnostics.open_run(run.path).records(split="train")
    assert len(rec) == 6 * 8 and sorted(rec["step"].unique()) == list(range(6))
    for step, ids, losses in seen:
        part = rec[rec.step == step].set_index("sample_id").loc[[str(i) for i in ids]]
        np.testing.assert_allclose(part["loss"], losses.numpy(), rtol=1e-5)
    one = diagnostics.open_run(run.path).records(sample_ids=[3])
    assert set(one["sample_id"]) == {"3"} and list(one["step"]) == [0, 5]


def test_ids_must_match_the_batch(tmp_path):
    with hooks.watch(nn.Linear(2, 2), run_dir=tmp_path, name="strict", strict=True) as run:
        with pytest.raises(ValueError, match="3 ids for 2 samples"):
            run.log_batch(torch.zeros(2, 2), torch.zeros(2, dtype=torch.long), ids=[1, 2, 3])
    with hooks.watch(nn.Linear(2, 2), run_dir=tmp_path, name="guest") as run:  # the default: skipped, warned once
        with pytest.warns(RuntimeWarning, match="3 ids for 2 samples"):
            run.log_batch(torch.zeros(2, 2), torch.zeros(2, dtype=torch.long), ids=[1, 2, 3])
        run.log_batch(torch.zeros(2, 2), torch.zeros(2, dtype=torch.long), ids=[1, 2])  # the next batch is taken
    assert [f["part"] for f in diagnostics.open_run(tmp_path / "guest").manifest["faults"]] == ["log_batch"]
