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
        assert row["position_accuracy"] == pytest.approx(hits / int(mask.sum()))
        assert row["correct"] == float(hits == int(mask.sum()))  # a sample is right when all its positions are
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


def _multilabel_case(n=6, c=5, seed=3):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=g) * 2
    targets = (torch.rand(n, c, generator=g) < 0.4).float()
    targets[0] = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0])  # rows that are not one-hot
    return logits, targets


@pytest.mark.parametrize("with_loss", [True, False])
def test_several_labels_per_sample_are_one_position_per_label(tmp_path, with_loss):
    logits, targets = _multilabel_case()
    x = torch.arange(len(logits))[:, None].float()
    r, _ = _evaluate(tmp_path, FixedLogits(logits), _batches(x, targets),
                     loss_fn=nn.BCEWithLogitsLoss() if with_loss else None)
    per_label = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p = torch.sigmoid(logits)
    samples = r.samples("val").set_index("sample_id")
    for i in range(len(logits)):
        row = samples.loc[f"s{i}"]
        assert row["loss"] == pytest.approx(float(per_label[i].mean()), rel=1e-5)
        hits = sum(int((p[i, k] >= 0.5) == (targets[i, k] == 1)) for k in range(logits.shape[1]))
        assert row["position_accuracy"] == pytest.approx(hits / logits.shape[1])
        assert row["correct"] == float(hits == logits.shape[1])
        assert row["positions_counted"] == logits.shape[1]
        np.testing.assert_allclose(row["probs"], p[i].numpy(), rtol=1e-5)
    rows = r.positions("val")
    assert len(rows) == logits.numel()
    for _, q in rows.iterrows():
        i, k = int(q["sample_id"][1:]), int(q["position"])
        assert q["label"] == targets[i, k] and q["prediction"] == int(p[i, k] >= 0.5)
        assert q["loss"] == pytest.approx(float(per_label[i, k]), rel=1e-5)
        assert q["confidence"] == pytest.approx(float(max(p[i, k], 1 - p[i, k])), rel=1e-5)
    info = r.position_info("val")
    assert info["layout"] == "labels" and info["shape"] == [logits.shape[1]]
    assert r.manifest["task"] == "classification"


def test_one_hot_float_targets_stay_one_label_per_sample(tmp_path):
    logits = torch.randn(4, 3)
    targets = F.one_hot(torch.tensor([0, 2, 1, 2]), 3).float()
    x = torch.arange(4)[:, None].float()
    r, _ = _evaluate(tmp_path, FixedLogits(logits), [(x, targets)], name="plain")
    assert r.position_info("val") is None and r.positions("val").empty
    r, _ = _evaluate(tmp_path, FixedLogits(logits), [(x, targets)], loss_fn=nn.CrossEntropyLoss())
    assert r.position_info("val") is None
    samples = r.samples("val").sort_values("sample_id", key=lambda s: s.astype(int))
    np.testing.assert_array_equal(samples["label"], [0, 2, 1, 2])


def test_log_batch_records_of_position_outputs_aggregate_per_sample(tmp_path):
    logits, labels, _ = _token_case()
    model = nn.Linear(2, 2)
    with hooks.watch(model, run_dir=tmp_path, name="train", strict=True) as run:
        run.log_batch(logits, labels, ids=[f"s{i}" for i in range(len(logits))])
        mlogits, targets = _multilabel_case()
        run.log_batch(mlogits, targets, ids=[f"m{i}" for i in range(len(mlogits))])
        # a later batch whose rows happen to be one-hot: still several labels, as the first batch said
        one_hot = F.one_hot(torch.tensor([1, 0, 4]), 5).float()
        run.log_batch(mlogits[:3], one_hot, ids=["o0", "o1", "o2"])
    records = diagnostics.open_run(run.path).records("train").set_index("sample_id")
    per_position = F.cross_entropy(logits.transpose(1, 2), labels, reduction="none", ignore_index=-100)
    for i in range(len(logits)):
        mask = labels[i] != -100
        expected = float(per_position[i][mask].mean()) if mask.any() else np.nan
        assert records.loc[f"s{i}", "loss"] == pytest.approx(expected, rel=1e-5, nan_ok=True)
        if mask.any():
            hits = (logits[i].argmax(-1) == labels[i])[mask].float().mean()
            assert records.loc[f"s{i}", "correct"] == float(hits == 1)  # right when every counted position is
    per_label = F.binary_cross_entropy_with_logits(mlogits, targets, reduction="none").mean(1)
    np.testing.assert_allclose([records.loc[f"m{i}", "loss"] for i in range(len(mlogits))], per_label.numpy(),
                               rtol=1e-5)
    per_label = F.binary_cross_entropy_with_logits(mlogits[:3], one_hot, reduction="none").mean(1)
    np.testing.assert_allclose([records.loc[f"o{i}", "loss"] for i in range(3)], per_label.numpy(), rtol=1e-5)


class Tagger(nn.Module):
    def __init__(self, vocab: int = 30, dim: int = 8, classes: int = 4) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.emb(x))


class Tokens:
    """A tokenizer's face: ids to strings."""

    def convert_ids_to_tokens(self, ids):
        return [f"t{i}" for i in ids]


@pytest.mark.parametrize("embed_layer", [None, "emb"])
def test_the_embedding_is_the_mean_over_counted_positions(tmp_path, embed_layer):
    torch.manual_seed(0)
    model = Tagger()
    x = torch.randint(0, 30, (5, 7))
    y = torch.randint(0, 4, (5, 7))
    y[1, :3] = -100
    y[2] = -100  # nothing counted: the mean over every position
    r, _ = _evaluate(tmp_path, model, _batches(x, y), embed_layer=embed_layer, tokenizer=Tokens())
    samples = r.samples("val").set_index("sample_id")
    with torch.no_grad():
        emb = model.emb(x)
        predictions = model(x).argmax(-1)
    for i in range(len(x)):
        mask = y[i] != -100
        expected = emb[i][mask].mean(0) if mask.any() else emb[i].mean(0)
        np.testing.assert_allclose(samples.loc[f"s{i}", "embedding"], expected.numpy(), rtol=1e-5, atol=1e-6)
    counted = y != -100
    seen = set(x.reshape(-1).tolist()) | set(y[counted].tolist()) | set(predictions[counted].tolist())
    assert r.vocabulary("val") == {i: f"t{i}" for i in seen}
    assert r.attributions("val").empty  # token inputs: no attributions


def test_token_previews_keep_the_ids_exactly(tmp_path):
    g = torch.Generator().manual_seed(4)
    ids = torch.randint(0, 60_000, (3, 600), generator=g)
    ids[:, 0] = torch.arange(3)
    labels = torch.randint(0, 5, (3, 600), generator=g)
    r, _ = _evaluate(tmp_path, FixedLogits(torch.randn(3, 600, 5)), [(ids, labels)])
    previews = r.previews("val", ["0", "1", "2"]).set_index("sample_id")
    for i in range(3):
        values = np.asarray(previews.loc[str(i), "values"])
        assert previews.loc[str(i), "kind"] == "tokens" and len(values) == 512
        np.testing.assert_array_equal(values.astype(np.int64), ids[i, :512].numpy())


class Segmenter(nn.Module):
    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.out = nn.Conv2d(4, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.conv(x)))


def test_pixel_outputs_attribute_the_samples_summed_loss(tmp_path):
    torch.manual_seed(0)
    model = Segmenter()
    x = torch.randn(6, 1, 8, 8)
    y = torch.randint(0, 3, (6, 8, 8))
    y[:, :2] = -100
    with hooks.watch(model, run_dir=tmp_path, strict=True) as run:
        run.evaluate([(x, y)], attribute_worst=2, attribute_at="now", n_steps=64, progress=False)
    r = diagnostics.open_run(run.path)
    found = r.attributions("val")
    with torch.no_grad():
        per_sample = F.cross_entropy(model(x), y, reduction="none", ignore_index=-100).flatten(1).sum(1)
        at_zero = F.cross_entropy(model(torch.zeros_like(x)), y, reduction="none", ignore_index=-100).flatten(1).sum(1)
    worst = per_sample.argsort(descending=True)[:2].tolist()
    ig = found[found["method"] == "integrated_gradients"]
    assert sorted(ig["sample_id"]) == sorted(str(i) for i in worst) and set(found["method"]) == {
        "integrated_gradients", "grad_cam"}
    assert (found["target"] == -1).all()
    for _, row in ig.iterrows():  # completeness: the attributions add up to the loss's change from the baseline
        i = int(row["sample_id"])
        assert list(row["shape"]) == [8, 8]
        assert float(np.sum(row["values"])) == pytest.approx(float(per_sample[i] - at_zero[i]), rel=0.05, abs=0.05)


def test_batches_of_different_lengths_and_softmax_outputs(tmp_path):
    g = torch.Generator().manual_seed(5)
    short, long = torch.randn(3, 4, 5, generator=g), torch.randn(3, 7, 5, generator=g)
    y_short, y_long = torch.randint(0, 5, (3, 4), generator=g), torch.randint(0, 5, (3, 7), generator=g)

    class Padded(nn.Module):  # each batch padded to its own longest sequence; outputs probabilities
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return torch.softmax(short if x.shape[1] == 4 else long, dim=-1)

    batches = [(torch.zeros(3, 4, dtype=torch.long), y_short, ["a0", "a1", "a2"]),
               (torch.zeros(3, 7, dtype=torch.long), y_long, ["b0", "b1", "b2"])]
    r, _ = _evaluate(tmp_path, Padded(), batches)
    assert r.position_info("val")["shape"] == [7]
    samples = r.samples("val").set_index("sample_id")
    expected = F.cross_entropy(long.transpose(1, 2), y_long, reduction="none").mean(1)  # read as probabilities
    np.testing.assert_allclose([samples.loc[f"b{i}", "loss"] for i in range(3)], expected.numpy(), rtol=1e-4)
    assert r.evaluations()["outputs"].iloc[0] == "probabilities"
    previews = r.previews("val", ["a0", "b0"]).set_index("sample_id")  # each batch's own length
    assert list(previews.loc["a0", "shape"]) == [4] and list(previews.loc["b0", "shape"]) == [7]
    assert len(r.positions("val", ids=["a0"])) == 4 and len(r.positions("val", ids=["b0"])) == 7


def test_a_loader_mixing_position_and_per_sample_outputs_gets_a_one_line_error(tmp_path):
    table = torch.randn(4, 3, 5)
    batches = [(torch.arange(2)[:, None], torch.zeros(2, 3, dtype=torch.long)),
               (torch.arange(2)[:, None], torch.zeros(2, dtype=torch.long))]

    class Switch(FixedLogits):
        def forward(self, x):
            return self.table[: len(x)] if self.calls == 0 else self.table[: len(x), 0]

    model = Switch(table)
    model.calls = 0

    def counting(module, args, output):
        module.calls += 1

    model.register_forward_hook(counting)
    with hooks.watch(model, run_dir=tmp_path, strict=True) as run:
        with pytest.raises(ValueError, match="mix outputs with a position axis") as info:
            run.evaluate(batches, progress=False, attribute_worst=0)
    assert "\n" not in str(info.value)


def test_binary_masks_with_bce_are_pixel_outputs(tmp_path):
    torch.manual_seed(1)
    model = Segmenter(classes=1)
    x = torch.randn(5, 1, 6, 6)
    masks = (torch.rand(5, 1, 6, 6) < 0.3).float()
    with hooks.watch(model, loss_fn=nn.BCEWithLogitsLoss(), run_dir=tmp_path, strict=True) as run:
        run.evaluate([(x, masks)], attribute_worst=2, attribute_at="now", n_steps=8, progress=False)
    r = diagnostics.open_run(run.path)
    with torch.no_grad():
        z = model(x)
    per_pixel = F.binary_cross_entropy_with_logits(z, masks, reduction="none").flatten(1)
    samples = r.samples("val").sort_values("sample_id", key=lambda s: s.astype(int))
    np.testing.assert_allclose(samples["loss"], per_pixel.mean(1).numpy(), rtol=1e-4)
    hits = ((z > 0).float() == masks).flatten(1).float().mean(1)
    np.testing.assert_allclose(samples["position_accuracy"], hits.numpy(), rtol=1e-6)
    np.testing.assert_array_equal(samples["correct"], (hits == 1).float().numpy())
    rows = r.positions("val")
    assert len(rows) == masks.numel()
    p = torch.sigmoid(z).flatten(1)
    for _, q in rows.sample(15, random_state=0).iterrows():
        i, k = int(q["sample_id"]), int(q["position"])
        assert q["label"] == masks.flatten(1)[i, k] and q["prediction"] == int(p[i, k] > 0.5)
        assert q["confidence"] == pytest.approx(float(max(p[i, k], 1 - p[i, k])), rel=1e-5)
        assert q["loss"] == pytest.approx(float(per_pixel[i, k]), rel=1e-4)
    assert r.position_info("val")["layout"] == "pixels" and r.position_info("val")["shape"] == [6, 6]
    assert set(r.attributions("val")["target"]) == {-1}


def test_unrelated_position_sets_are_not_the_same_data(tmp_path):
    """A tagger's tokens and a segmenter's pixels, both on ids s0..s5 whose most frequent label
    is 0 (padding, background): their per-sample labels agree, yet they are not the same data —
    the dataset keys differ, `same_data` says no and `compare` refuses with one line. Two runs
    on the same tokens share a key."""
    from diagnostics.compare import ComparisonError, compare, same_data

    g = torch.Generator().manual_seed(5)
    tokens = torch.zeros(6, 5, dtype=torch.long)
    tokens[:, 1:3] = 1
    x_tok = torch.arange(6)[:, None].expand(6, 5).clone()
    tok_a, tok_b = (_evaluate(tmp_path, FixedLogits(torch.randn(6, 5, 3, generator=g)), _batches(x_tok, tokens),
                              name=name)[0] for name in ("tok_a", "tok_b"))
    pixels = torch.zeros(6, 3, 3, dtype=torch.long)
    pixels[:, 0, 0] = 1
    x_pix = torch.arange(6).float()[:, None, None, None].expand(6, 1, 3, 3).clone()
    pix = _evaluate(tmp_path, FixedLogits(torch.randn(6, 2, 3, 3, generator=g)), _batches(x_pix, pixels), name="pix")[0]
    keys = [r.manifest["evaluations"][-1]["dataset"] for r in (tok_a, tok_b, pix)]
    assert keys[0] == keys[1] != keys[2]
    assert same_data(tok_a, tok_b) and not same_data(tok_a, pix)
    with pytest.raises(ComparisonError, match="score different outputs"):
        compare(tok_a, pix)
    assert compare(tok_a, tok_b).summary["shared"] == 6


def test_training_output_shares_of_a_language_model_count_its_vocabulary_not_its_length(tmp_path):
    """Outputs vs labels during training: (N, T, V) logits against (N, T) labels have V classes
    (not T), and positions labelled -100 count in neither share (hand count of the argmaxes)."""
    g = torch.Generator().manual_seed(2)
    model = nn.Sequential(nn.Embedding(7, 8), nn.Linear(8, 5))  # T = 6 tokens, V = 5 classes
    x = torch.randint(0, 7, (4, 6), generator=g)
    y = torch.randint(0, 5, (4, 6), generator=g)
    y[:, -2:] = -100
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    crit = nn.CrossEntropyLoss()
    with hooks.watch(model, optimizer=opt, run_dir=tmp_path, name="lm", every=1, strict=True) as run:
        opt.zero_grad()
        logits = model(x)  # (N, T, V), as a causal LM returns them
        loss = crit(logits.transpose(1, 2), y)
        run.log_batch(logits, y, loss=loss)
        loss.backward()
        opt.step()
    r = diagnostics.open_run(run.path)
    assert r.manifest["num_classes"] == 5
    shares = r.distributions("output", layers=["train/class"])
    labels = r.distributions("label", layers=["train/class"])
    counted = y != -100
    pred = logits.detach().argmax(-1)[counted]
    assert int(shares["count"].iloc[0]) == int(labels["count"].iloc[0]) == int(counted.sum())
    assert np.asarray(shares["hist_counts"].iloc[0])[:5].tolist() == torch.bincount(pred, minlength=5).tolist()
