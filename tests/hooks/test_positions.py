"""run.evaluate on outputs with a position axis (tokens, pixels) and several labels per sample
(issue #24), checked against plain torch and hand counts on constructed outputs."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import diagnostics
import hooks


class FixedLogits(nn.Module):
    """A "model" whose output for a sample is fixed: `table[i]`, with i the sample's index held
    in the input (its first value; token inputs: its first token)."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = nn.Parameter(table.clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.table[x.reshape(x.shape[0], -1)[:, 0].long()]


def _batches(x: torch.Tensor, y: torch.Tensor, size: int = 4) -> list:
    return [(x[i:i + size], y[i:i + size], [f"s{j}" for j in range(i, min(i + size, len(x)))])
            for i in range(0, len(x), size)]


def _mode(values) -> float:
    counts = Counter(int(v) for v in values)
    top = max(counts.values())
    return float(min(v for v, c in counts.items() if c == top))


def _evaluate(tmp_path, model, batches, loss_fn=None, name="run", **options):
    with hooks.watch(model, loss_fn=loss_fn, run_dir=tmp_path, name=name, strict=True) as run:
        metrics = run.evaluate(batches, split="val", attribute_worst=0, progress=False, **options)
    return diagnostics.open_run(run.path), metrics


def _token_case(n=6, t=5, c=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, t, c, generator=g) * 2
    labels = torch.randint(0, c, (n, t), generator=g)
    labels[0, 1] = labels[2, 0] = labels[2, 4] = -100
    labels[3] = -100  # a sample with no counted position
    x = torch.randint(1, 50, (n, t), generator=g)
    x[:, 0] = torch.arange(n)  # the sample's index, for FixedLogits
    return logits, labels, x


def test_token_outputs_per_sample_and_per_position_match_plain_torch(tmp_path):
    logits, labels, x = _token_case()
    r, metrics = _evaluate(tmp_path, FixedLogits(logits), _batches(x, labels))
    samples = r.samples("val").set_index("sample_id")
    per_position = F.cross_entropy(logits.transpose(1, 2), labels, reduction="none", ignore_index=-100)
    counted = labels != -100
    probs = torch.softmax(logits, dim=-1)
    for i in range(len(x)):
        row = samples.loc[f"s{i}"]
        mask = counted[i]
        assert row["positions_counted"] == int(mask.sum())
        if not mask.any():
            assert np.isnan(row["loss"]) and np.isnan(row["correct"]) and np.isnan(row["worst_position_loss"])
            continue
        assert row["loss"] == pytest.approx(float(per_position[i][mask].mean()), rel=1e-5)
        assert row["worst_position_loss"] == pytest.approx(float(per_position[i][mask].max()), rel=1e-5)
        pred = logits[i].argmax(-1)
        hits = sum(int(pred[k] == labels[i, k]) for k in range(labels.shape[1]) if mask[k])
        assert row["correct"] == pytest.approx(hits / int(mask.sum()))
        assert row["label"] == _mode(labels[i][mask]) and row["prediction"] == _mode(pred[mask])
        assert row["confidence"] == pytest.approx(float(probs[i].max(-1).values[mask].mean()), rel=1e-5)
        assert row["label_prob"] == pytest.approx(float(probs[i][mask].gather(1, labels[i][mask][:, None]).mean()),
                                                  rel=1e-5)
    rows = r.positions("val")
    assert len(rows) == int(counted.sum())
    for _, p in rows.iterrows():
        i, k = int(p["sample_id"][1:]), int(p["position"])
        assert counted[i, k] and p["label"] == labels[i, k] and p["prediction"] == logits[i, k].argmax()
        assert p["loss"] == pytest.approx(float(per_position[i, k]), rel=1e-5)
        assert p["confidence"] == pytest.approx(float(probs[i, k].max()), rel=1e-5)
    assert r.position_info("val") == {"shape": [5], "layout": "tokens", "ignore_index": -100, "stored_samples": 6,
                                      "total_samples": 6, "cap": 200_000, "shift_labels": False}
    # the run's metrics over every counted position: what the training loss (mean reduction) reads
    expected = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100)
    assert metrics["position_loss"] == pytest.approx(float(expected), rel=1e-5)


class PixelModel(FixedLogits):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (N, 1, H, W) images, the index in pixel (0, 0)
        return self.table[x[:, 0, 0, 0].long()]


def test_pixel_outputs_take_ignore_index_from_the_watched_loss(tmp_path):
    g = torch.Generator().manual_seed(1)
    n, c, h, w = 5, 3, 4, 6
    logits = torch.randn(n, c, h, w, generator=g)
    labels = torch.randint(0, c, (n, h, w), generator=g)
    x = torch.rand(n, 1, h, w, generator=g)
    x[:, 0, 0, 0] = torch.arange(n).float()
    criterion = nn.CrossEntropyLoss(ignore_index=0)
    r, _ = _evaluate(tmp_path, PixelModel(logits), _batches(x, labels), loss_fn=criterion)
    per_position = F.cross_entropy(logits, labels, reduction="none", ignore_index=0)
    samples = r.samples("val").set_index("sample_id")
    for i in range(n):
        mask = labels[i] != 0
        assert samples.loc[f"s{i}", "loss"] == pytest.approx(float(per_position[i][mask].mean()), rel=1e-5)
    rows = r.positions("val")
    assert len(rows) == int((labels != 0).sum()) and (rows["label"] != 0).all()
    for _, p in rows.sample(20, random_state=0).iterrows():
        i, k = int(p["sample_id"][1:]), int(p["position"])
        assert p["label"] == labels[i].reshape(-1)[k]  # flat row-major index into (H, W)
        assert p["loss"] == pytest.approx(float(per_position[i].reshape(-1)[k]), rel=1e-5)
    info = r.position_info("val")
    assert info["layout"] == "pixels" and info["shape"] == [h, w] and info["ignore_index"] == 0
    # an explicit ignore_index wins over the loss's
    r2, _ = _evaluate(tmp_path, PixelModel(logits), _batches(x, labels), loss_fn=criterion, name="explicit",
                      ignore_index=-100)
    assert len(r2.positions("val")) == n * h * w


def test_the_cap_keeps_whole_samples_in_loader_order(tmp_path):
    logits, labels, x = _token_case(n=6, t=5)
    counts = (labels != -100).sum(1).tolist()  # [4, 5, 3, 0, 5, 5]
    cap = counts[0] + counts[1] + counts[2] + 1  # the third fits, the fourth (0 positions) too, the fifth not
    r, _ = _evaluate(tmp_path, FixedLogits(logits), _batches(x, labels), max_positions=cap)
    rows = r.positions("val")
    assert set(rows["sample_id"]) == {"s0", "s1", "s2"} and len(rows) == sum(counts[:3])
    info = r.position_info("val")
    assert info["stored_samples"] == 4 and info["total_samples"] == 6 and info["cap"] == cap
    assert len(r.samples("val")) == 6  # every sample has its record
    r0, _ = _evaluate(tmp_path, FixedLogits(logits), _batches(x, labels), name="none", max_positions=0)
    assert r0.positions("val").empty and r0.position_info("val")["stored_samples"] == 0


def test_labels_that_fit_no_layout_get_a_one_line_error(tmp_path):
    model = FixedLogits(torch.randn(4, 5, 6))
    x, y = torch.arange(4)[:, None], torch.zeros(4, 7, dtype=torch.long)
    with hooks.watch(model, run_dir=tmp_path, strict=True) as run:
        with pytest.raises(ValueError, match=r"labels \(4, 7\) fit neither .* outputs are \(4, 5, 6\)") as info:
            run.evaluate([(x, y)], progress=False, attribute_worst=0)
        assert "\n" not in str(info.value)
        with pytest.raises(ValueError, match="max_positions"):
            run.evaluate([(x, y)], progress=False, max_positions=-1)
        with pytest.raises(TypeError, match="tokenizer"):
            run.evaluate([(x, y)], progress=False, tokenizer=object())


def test_shift_labels_scores_position_t_against_label_t_plus_1(tmp_path):
    g = torch.Generator().manual_seed(2)
    n, t, v = 4, 6, 7
    logits = torch.randn(n, t, v, generator=g)
    ids = torch.randint(0, v, (n, t), generator=g)
    ids[:, 0] = torch.arange(n)
    r, _ = _evaluate(tmp_path, FixedLogits(logits), [(ids, ids)], shift_labels=True)
    expected = F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")
    samples = r.samples("val").sort_values("sample_id", key=lambda s: s.astype(int))
    np.testing.assert_allclose(samples["loss"], expected.mean(1).numpy(), rtol=1e-5)
    rows = r.positions("val")
    assert sorted(set(rows["position"])) == list(range(t - 1))
    assert r.position_info("val")["shift_labels"] is True


def test_per_sample_outputs_stay_as_they_were(tmp_path):
    logits = torch.randn(6, 3)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    r, _ = _evaluate(tmp_path, FixedLogits(logits), [(torch.arange(6)[:, None].float(), labels)])
    assert r.position_info("val") is None and r.positions("val").empty
    samples = r.samples("val").sort_values("sample_id", key=lambda s: s.astype(int))
    np.testing.assert_allclose(samples["loss"], F.cross_entropy(logits, labels, reduction="none").numpy(), rtol=1e-5)
    assert "positions_counted" not in samples
