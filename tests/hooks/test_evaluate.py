"""run.evaluate: per-sample records, embeddings, previews, input statistics, attributions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import diagnostics
import hooks


def _cls_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 16),
                         nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3))


def _data(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g)


def test_classification_records_match_plain_torch(tmp_path):
    model = _cls_model()
    x, y = _data()
    ids = torch.arange(100, 140)
    loader = DataLoader(TensorDataset(x, y, ids), batch_size=16)
    model.train()
    with hooks.watch(model, run_dir=tmp_path, name="e") as run:
        metrics = run.evaluate(loader, split="val", attribute_worst=4, n_steps=8, progress=False)
    assert model.training  # mode restored
    s = diagnostics.open_run(run.path).samples("val").set_index("sample_id").loc[[str(i) for i in range(100, 140)]]
    model.eval()
    with torch.no_grad():
        logits = model(x)
        hidden = model[4](model[3](model[2](model[1](model[0](x)))))  # input of the last Linear
    np.testing.assert_allclose(s["loss"], F.cross_entropy(logits, y, reduction="none").numpy(), rtol=1e-5)
    probs = torch.softmax(logits, 1).numpy()
    np.testing.assert_allclose(s["confidence"], probs.max(1), rtol=1e-5)
    np.testing.assert_allclose(s["label_prob"], probs[np.arange(40), y.numpy()], rtol=1e-5)
    np.testing.assert_array_equal(s["prediction"], logits.argmax(1).numpy())
    np.testing.assert_allclose(np.stack(s["probs"].to_numpy()), probs, rtol=1e-5)
    np.testing.assert_allclose(np.stack(s["embedding"].to_numpy()), hidden.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(s["input_brightness"], x.mean(dim=(1, 2, 3)).numpy(), rtol=1e-5, atol=1e-6)
    assert metrics["accuracy"] == pytest.approx((logits.argmax(1) == y).float().mean().item())
    r = diagnostics.open_run(run.path)
    assert len(r.previews("val", ["100"])["values"].iloc[0]) == 64
    worst = s["loss"].sort_values(ascending=False).index[:4]
    att = r.attributions("val")
    assert set(att["sample_id"]) == set(worst)
    assert set(att["method"]) == {"integrated_gradients", "grad_cam"}
    assert r.evaluations()["accuracy"].iloc[0] == pytest.approx(metrics["accuracy"])


def test_evaluate_leaves_training_bitwise_unchanged(tmp_path):
    def train(with_eval):
        model = _cls_model()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        crit = nn.CrossEntropyLoss()
        x, y = _data()
        torch.manual_seed(5)
        with hooks.watch(model, optimizer=opt, loss_fn=crit, run_dir=tmp_path, every=1) as run:
            for _epoch in range(2):
                for i in range(0, 40, 10):
                    opt.zero_grad()
                    crit(model(x[i:i + 10]), y[i:i + 10]).backward()
                    opt.step()
                if with_eval:
                    run.evaluate(DataLoader(TensorDataset(x, y), batch_size=20), attribute_worst=2, n_steps=4,
                                 progress=False)
        return model

    a, b = train(False), train(True)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


class RegionModel(nn.Module):
    """The answer depends only on the top-left 3×3 corner of the image."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 4, 1)
        self.head = nn.Linear(4 * 9, 2)

    def forward(self, x):
        h = torch.relu(self.conv(x))
        return self.head(h[:, :, :3, :3].flatten(1))


def test_attribution_mass_concentrates_on_the_region_the_answer_depends_on(tmp_path):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(16, 1, 8, 8, generator=g) + 0.5
    y = torch.randint(0, 2, (16,), generator=g)
    model = RegionModel()
    with hooks.watch(model, run_dir=tmp_path, name="att") as run:
        run.evaluate([(x, y)], split="val", attribute_worst=8, n_steps=16, progress=False)
    att = diagnostics.open_run(run.path).attributions("val")
    assert len(att) == 16  # 8 samples × (IntegratedGradients, GradCAM)
    ig = att[att.method == "integrated_gradients"]
    for _, row in ig.iterrows():
        a = np.abs(np.asarray(row["values"]).reshape(row["shape"]))
        assert a.sum() > 0 and a[:3, :3].sum() / a.sum() > 0.99
    # Grad-CAM weighs whole feature maps by their mean gradient, so it is not confined to
    # the region by construction; it is kept at the input's resolution
    cam = att[att.method == "grad_cam"]
    assert all(list(s) == [8, 8] for s in cam["shape"])


def test_regression_on_signals(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(1, 4, 5, padding=2), nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(),
                          nn.Linear(4, 1))
    t = torch.linspace(0, 1, 1000)
    freqs = torch.tensor([5.0, 20.0, 50.0, 80.0])
    x = torch.sin(2 * torch.pi * freqs[:, None] * t)[:, None, :]
    y = freqs[:, None] / 10
    with hooks.watch(model, loss_fn=nn.MSELoss(), run_dir=tmp_path, name="reg") as run:
        metrics = run.evaluate([(x, y)], split="val", attribute_worst=2, n_steps=4, progress=False)
    r = diagnostics.open_run(run.path)
    s = r.samples("val")
    with torch.no_grad():
        pred = model(x)[:, 0]
    np.testing.assert_allclose(s["residual"], (pred - y[:, 0]).numpy(), rtol=1e-5, atol=1e-6)
    assert s["probs"].isna().all() and s["correct"].isna().all()
    # dominant frequency in cycles per sample: 5 cycles over 1,000 samples is 0.005
    np.testing.assert_allclose(s["input_dominant_freq"], freqs.numpy() / 1000, atol=1e-3)
    p = r.previews("val", ["0"]).iloc[0]
    assert p["kind"] == "signal" and list(p["shape"]) == [1, 512]
    assert metrics["mae"] == pytest.approx((pred - y[:, 0]).abs().mean().item(), rel=1e-5)


def test_dataset_key_is_shared_by_runs_on_the_same_data(tmp_path):
    x, y = _data(20)
    keys = []
    for name in ("a", "b"):
        with hooks.watch(_cls_model(), run_dir=tmp_path, name=name) as run:
            run.evaluate([(x, y)], attribute_worst=0, progress=False)
        keys.append(diagnostics.open_run(run.path).evaluations()["dataset"].iloc[0])
    assert keys[0] == keys[1]


def test_bad_input_gets_clear_errors(tmp_path):
    model = _cls_model()
    run = hooks.watch(model, run_dir=tmp_path, name="bad", strict=True)
    with pytest.raises(TypeError, match="a batch must be"):
        run.evaluate([torch.zeros(2, 1, 8, 8)], progress=False)
    with pytest.raises(ValueError, match="no module named 'nope'"):
        run.evaluate([_data(4)], embed_layer="nope", progress=False)
    with pytest.raises(ValueError, match="yielded no samples"):
        run.evaluate([], progress=False)
    run.close()
    with pytest.raises(RuntimeError, match="before run.close"):
        run.evaluate([_data(4)], progress=False)


def test_metadata_becomes_meta_columns(tmp_path):
    import pandas as pd

    x, y = _data(12)
    meta = pd.DataFrame({"site": ["a", "b", "c"] * 4, "quality": np.linspace(0, 1, 12)}, index=range(100, 112))
    with hooks.watch(_cls_model(), run_dir=tmp_path, name="m", strict=True) as run:
        run.evaluate([(x, y, torch.arange(100, 112))], attribute_worst=0, progress=False, metadata=meta)
        with pytest.raises(ValueError, match="no row for sample id"):
            run.evaluate([(x, y)], attribute_worst=0, progress=False, metadata=meta)
        with pytest.raises(ValueError, match="one value per sample"):
            run.evaluate([(x, y)], attribute_worst=0, progress=False, metadata={"q": [1, 2]})
    samples = diagnostics.open_run(tmp_path / "m").samples("val").set_index("sample_id")
    s = samples.loc[[str(i) for i in range(100, 112)]]
    assert s["meta_site"].tolist() == ["a", "b", "c"] * 4
    np.testing.assert_allclose(s["meta_quality"], np.linspace(0, 1, 12))


def test_a_failed_evaluation_warns_and_training_reads_nan(tmp_path):
    run = hooks.watch(_cls_model(), run_dir=tmp_path, name="guest")
    with pytest.warns(RuntimeWarning, match="a batch must be"):
        metrics = run.evaluate([torch.zeros(2, 1, 8, 8)], progress=False)
    assert np.isnan(metrics["accuracy"]) and np.isnan(metrics["loss"])  # a loop reading them goes on
    good = run.evaluate([_data(4)], attribute_worst=0, progress=False)
    with pytest.raises(KeyError):  # a successful evaluation's metrics: a typo is not a silent NaN
        good["acuracy"]
    run.close()


def test_every_modules_mode_comes_back_after_an_evaluation(tmp_path):
    """Fine-tuning with a frozen BatchNorm: the model trains, one module stays in eval mode."""
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    model.train()
    model[1].eval()
    with hooks.watch(model, run_dir=tmp_path, name="modes") as run:
        run.evaluate([_data(4)], attribute_worst=0, progress=False)
        assert model.training and not model[1].training and model[0].training
        with pytest.warns(RuntimeWarning):
            run.evaluate([torch.zeros(2, 1, 8, 8)], progress=False)  # a failed one too
        assert model.training and not model[1].training


def _counting_attribute(monkeypatch) -> list:
    import hooks.evaluate as evaluate_module

    calls, real = [], evaluate_module.attribute
    monkeypatch.setattr(evaluate_module, "attribute", lambda *a, **k: calls.append(len(a[1])) or real(*a, **k))
    return calls


def _epochs(run, model, opt, x, y, **evaluate):
    for _ in range(3):  # an evaluation every epoch, as the README's loop does
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        run.evaluate([(x, y)], split="val", attribute_worst=2, n_steps=4, progress=False, **evaluate)


def test_attributions_are_of_the_last_evaluation_computed_once_at_close(tmp_path, monkeypatch):
    calls = _counting_attribute(monkeypatch)
    model, (x, y) = _cls_model(), _data(12)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with hooks.watch(model, optimizer=opt, run_dir=tmp_path, name="last") as run:
        _epochs(run, model, opt, x, y)
        assert calls == []  # no captum pass while training
    assert calls == [2]  # one, when the run closed
    att = diagnostics.open_run(run.path).attributions("val")
    assert set(att["step"]) == {3}  # the last evaluation's step


def test_attribute_at_now_attributes_each_evaluation_and_a_crash_none(tmp_path, monkeypatch):
    calls = _counting_attribute(monkeypatch)
    model, (x, y) = _cls_model(), _data(12)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with hooks.watch(model, optimizer=opt, run_dir=tmp_path, name="now") as run:
        _epochs(run, model, opt, x, y, attribute_at="now")
        with pytest.raises(ValueError, match="attribute_at must be 'close' or 'now'"):
            run.evaluate([(x, y)], attribute_at="later")
    assert calls == [2, 2, 2]
    assert set(diagnostics.open_run(run.path).attributions("val")["step"]) == {1, 2, 3}
    calls.clear()
    with pytest.raises(RuntimeError, match="boom"), hooks.watch(model, optimizer=opt, run_dir=tmp_path,
                                                                name="crash") as run:
        _epochs(run, model, opt, x, y)
        raise RuntimeError("boom")
    assert calls == []  # a failed run is not held up by a captum pass


def test_a_model_that_ends_in_a_softmax_is_read_as_probabilities(tmp_path):
    """Its outputs are probabilities: confidence and the probability vector are the model's
    own (plain torch), not a second softmax of them (which flattened 0.68 to 0.18); the run
    says so. A logits model is unchanged."""
    torch.manual_seed(0)
    base = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    with torch.no_grad():
        base[1].weight.mul_(8)  # confident predictions, far from a flat softmax
    x, y = _data(24)
    for name, model in (("probabilities", nn.Sequential(base, nn.Softmax(dim=1))), ("logits", base)):
        with hooks.watch(model, run_dir=tmp_path, name=name) as run:
            run.evaluate([(x, y)], split="val", attribute_worst=0, progress=False)
        r = diagnostics.open_run(run.path)
        samples = r.samples(split="val").sort_values("sample_id", key=lambda s: s.astype(int))
        with torch.no_grad():
            probs = torch.softmax(base(x), dim=1)  # what the model means, either way
        expected = probs.max(dim=1).values.numpy()
        np.testing.assert_allclose(samples["confidence"].to_numpy(), expected, rtol=1e-4, atol=1e-6)
        assert r.manifest["evaluations"][0]["outputs"] == name
