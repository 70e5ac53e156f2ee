"""Data and loss health rules (diagnostics/health/data.py, diagnostics/health/loss.py): each planted bug in a tiny real
training run (sklearn's digits, CPU, seconds), its healthy control quiet, and the
statistics against independent references."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

import diagnostics
import hooks
from diagnostics.health import check
from diagnostics.health import data as health_data
from hooks.probes import loss_input_probe

DATA_RULE_NAMES = {"labels_unlearnable", "split_leakage", "unshuffled_batches", "regression_loss_on_class_ids",
                   "softmax_wrong_dim", "nll_input", "double_sigmoid", "softmax_before_cross_entropy"}


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    x = torch.tensor((d.data - d.data.mean(0)) / (d.data.std(0) + 1e-6), dtype=torch.float32)
    return x, torch.tensor(d.target, dtype=torch.long)


def _mlp(d_out=10, hidden=64, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, d_out))


def _fit(tmp_path, name, model, x, y, loss_fn, head=lambda out: out, steps=60, lr=1e-2, batch=32, every=5,
         shuffle=True, ids=True, sgd=False, evaluate=None, task=None):
    """Train with hooks attached; `head` is applied between the model and the loss (where
    the planted bug lives). Returns the opened run."""
    opt = (torch.optim.SGD(model.parameters(), lr=lr) if sgd else torch.optim.Adam(model.parameters(), lr=lr))
    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(len(x), generator=gen) if shuffle else torch.arange(len(x))
    with hooks.watch(model, optimizer=opt, loss_fn=loss_fn, run_dir=tmp_path, name=name, every=every,
                     task=task) as run:
        for step in range(steps):
            if shuffle and (step * batch) % len(x) < batch and step:
                order = torch.randperm(len(x), generator=gen)
            start = (step * batch) % len(x)
            idx = order[start:start + batch]
            opt.zero_grad()
            out = head(model(x[idx]))
            if ids:
                run.log_batch(out, y[idx], ids=idx)
            loss = loss_fn(out, y[idx])
            loss.backward()
            opt.step()
        for split, (xs, ys, id_s) in (evaluate or {}).items():
            run.evaluate([(xs, ys, id_s)], split=split, attribute_worst=0, progress=False)
    return diagnostics.open_run(run.path)


def _rules(findings):
    return {f.rule for f in findings}


def _quiet(findings, names=DATA_RULE_NAMES):
    loud = [f"{f.rule}: {f.message}" for f in findings if f.rule in names]
    assert not loud, loud


# ---------------------------------------------------------------------------------
# 1. Labels not learnable from the inputs


def test_labels_shuffled_apart_from_inputs(tmp_path, digits):
    x, y = digits
    y_shuffled = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(1))]
    run = _fit(tmp_path, "shuffled-labels", _mlp(), x, y_shuffled, nn.CrossEntropyLoss(), steps=150, lr=1e-3)
    found = [f for f in check(run) if f.rule == "labels_unlearnable"]
    assert len(found) == 1 and found[0].severity == "warning"
    ev = found[0].evidence
    assert ev["ratio"] >= 0.9 and ev["train_samples"] == 1797 and ev["trainable_params"] > 1797
    counts = np.bincount(y_shuffled.numpy())
    p = counts / counts.sum()
    assert ev["label_entropy"] == pytest.approx(-(p * np.log(p)).sum(), rel=0.02)  # pooled batches vs all labels
    assert found[0].step_end == 149


def test_real_labels_and_a_starved_optimizer_are_not_unlearnable_labels(tmp_path, digits):
    x, y = digits
    healthy = check(_fit(tmp_path, "real-labels", _mlp(), x, y, nn.CrossEntropyLoss(), steps=150, lr=1e-3))
    _quiet(healthy)
    # a learning rate far too low also stays at the prior: that is not the labels' fault
    starved = check(_fit(tmp_path, "lr-too-low", _mlp(), x, y, nn.CrossEntropyLoss(), steps=150, lr=1e-6, sgd=True))
    assert "labels_unlearnable" not in _rules(starved)
    assert "loss_vs_baseline" in _rules(starved)


def test_a_model_too_small_to_memorise_is_not_flagged():
    run = _FakeUnlearnable(trainable=500, samples=1797)
    assert health_data.rule_labels_unlearnable(run) == []
    assert [f.rule for f in health_data.rule_labels_unlearnable(_FakeUnlearnable(5000, 1797))] == ["labels_unlearnable"]


# ---------------------------------------------------------------------------------
# 2. Train/val leakage


def _split_eval(x, y, train_idx, val_idx):
    return {"train": (x[train_idx], y[train_idx], train_idx), "val": (x[val_idx], y[val_idx], val_idx + 10_000)}


def test_validation_copies_of_training_samples(tmp_path, digits):
    x, y = digits
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(2))
    train_idx, val_idx = perm[:1400], perm[1400:]
    leaked = train_idx[:60]  # 60 of the 397+60 validation samples are training images
    xv, yv = torch.cat([x[val_idx], x[leaked]]), torch.cat([y[val_idx], y[leaked]])
    ev = {"train": (x[train_idx], y[train_idx], train_idx), "val": (xv, yv, torch.arange(len(xv)) + 10_000)}
    run = _fit(tmp_path, "leak", _mlp(), x[train_idx], y[train_idx], nn.CrossEntropyLoss(), steps=60, ids=False,
               evaluate=ev)
    found = [f for f in check(run) if f.rule == "split_leakage"]
    assert len(found) == 1
    e = found[0].evidence
    # digits holds a few genuine duplicate images too: count them independently, on the pixels
    tr = x[train_idx].numpy()
    exact = sum(bool((np.abs(tr - v).max(axis=1) < 1e-6).any()) for v in xv.numpy())
    assert e["duplicates"] == exact and exact >= 60
    assert e["share"] == pytest.approx(exact / len(xv))
    assert found[0].step_start == found[0].step_end == 60
    pair = e["pairs"][0]
    assert int(pair["val_id"]) - 10_000 >= len(val_idx)  # a planted copy ...
    assert int(pair["train_id"]) == int(leaked[int(pair["val_id"]) - 10_000 - len(val_idx)])  # ... of its original


def test_disjoint_splits_show_no_leakage(tmp_path, digits):
    x, y = digits
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(2))
    train_idx, val_idx = perm[:1400], perm[1400:]
    run = _fit(tmp_path, "no-leak", _mlp(), x[train_idx], y[train_idx], nn.CrossEntropyLoss(), steps=60, ids=False,
               evaluate=_split_eval(x, y, train_idx, val_idx))
    assert "split_leakage" not in _rules(check(run))


def test_leakage_needs_input_statistics_beside_the_embeddings():
    emb = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, 2.0]]
    frame = lambda split, stat: pd.DataFrame({"sample_id": [f"{split}{i}" for i in range(4)], "step": 9,
                                              "embedding": emb, **({"input_mean": stat} if stat else {})})

    class Run:
        def __init__(self, val_stat):
            self.manifest = {}
            self._s = {"train": frame("t", [0.1, 0.2, 0.3, 0.4]), "val": frame("v", val_stat)}

        def samples(self, split, step=None):
            return self._s[split]

    assert health_data.rule_split_leakage(Run(None)) == []  # embeddings alone: within-class neighbours look alike
    assert health_data.rule_split_leakage(Run([0.5, 0.6, 0.7, 0.8])) == []  # same embeddings, other inputs
    found = health_data.rule_split_leakage(Run([0.1, 0.2, 0.3, 0.4]))
    assert found and found[0].evidence["duplicates"] == 4


def test_nearest_neighbour_matches_brute_force():
    rng = np.random.default_rng(0)
    q, b = rng.normal(size=(700, 8)), rng.normal(size=(900, 8))
    q, b = q / np.linalg.norm(q, axis=1, keepdims=True), b / np.linalg.norm(b, axis=1, keepdims=True)
    best, where = health_data._nearest(q, b, chunk=128)
    sims = q @ b.T
    assert np.array_equal(where, sims.argmax(1)) and np.allclose(best, sims.max(1))


# ---------------------------------------------------------------------------------
# 3. Data not shuffled


def _sorted_by_label(x, y):
    order = torch.argsort(y, stable=True)
    return x[order], y[order]


@pytest.mark.parametrize("ids", [True, False], ids=["records", "label-histograms"])
def test_class_sorted_data_without_shuffling(tmp_path, digits, ids):
    xs, ys = _sorted_by_label(*digits)
    run = _fit(tmp_path, f"sorted-{ids}", _mlp(), xs, ys, nn.CrossEntropyLoss(), steps=112, shuffle=False,
               ids=ids, every=2)
    found = [f for f in check(run) if f.rule == "unshuffled_batches"]
    assert len(found) == 1 and found[0].layer == "train/class"
    ev = found[0].evidence
    sizes = [len(range(len(ys))[(s * 32) % len(ys):(s * 32) % len(ys) + 32]) for s in range(112)]
    tested = [n >= 16 for s, n in enumerate(sizes) if ids or s % 2 == 0]  # step 56 holds the last 5 samples
    assert ev["tested"] == sum(tested) and ev["share"] > 0.9
    assert ev["source"] == ("per-sample records" if ids else "label histograms at capture steps")


@pytest.mark.parametrize("ids", [True, False], ids=["records", "label-histograms"])
def test_shuffled_batches_are_quiet(tmp_path, digits, ids):
    x, y = digits
    run = _fit(tmp_path, f"shuffled-{ids}", _mlp(), x, y, nn.CrossEntropyLoss(), steps=112, ids=ids, every=2)
    _quiet(check(run))


def test_target_sorted_regression_without_shuffling(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1024, 5, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [0.0], [1.0]]) + 0.1 * torch.randn(1024, 1, generator=g)
    torch.manual_seed(0)
    reg = lambda: nn.Sequential(nn.Linear(5, 32), nn.Tanh(), nn.Linear(32, 1))
    order = torch.argsort(y[:, 0])
    sorted_run = _fit(tmp_path, "reg-sorted", reg(), x[order], y[order], nn.MSELoss(), steps=64, shuffle=False,
                      every=2)
    found = [f for f in check(sorted_run) if f.rule == "unshuffled_batches"]
    assert len(found) == 1 and found[0].layer == "train/value"
    _quiet(check(_fit(tmp_path, "reg-shuffled", reg(), x, y, nn.MSELoss(), steps=64, every=2)))


def test_chi_square_and_holm_against_references():
    from scipy import stats

    rng = np.random.default_rng(0)
    counts = [rng.multinomial(40, [0.5, 0.3, 0.2]).astype(float) for _ in range(30)]
    pooled = np.sum(counts, axis=0)
    expected_p = [stats.chisquare(c, pooled / pooled.sum() * c.sum()).pvalue for c in counts]
    assert np.allclose(health_data._class_pvalues(counts), expected_p)
    p = np.array([0.001, 0.02, 0.0001, 0.5, np.nan])
    # Holm at 0.01 over 4 tests: 0.0001 <= 0.0025, 0.001 <= 0.00333, 0.02 > 0.005 stops
    assert health_data._holm_rejected(p, 0.01).tolist() == [True, False, True, False, False]


# ---------------------------------------------------------------------------------
# 4. A regression loss on class ids


def test_mse_on_class_indices(tmp_path, digits):
    x, y = digits
    run = _fit(tmp_path, "mse-ids", _mlp(d_out=1), x, y.float().unsqueeze(1), nn.MSELoss(), steps=40)
    found = [f for f in check(run) if f.rule == "regression_loss_on_class_ids"]
    assert len(found) == 1 and found[0].severity == "warning"
    assert found[0].evidence["classes"] == 10 and found[0].evidence["output_columns"] == 1
    assert (found[0].step_start, found[0].step_end) == (0, 35)
    from diagnostics.health import evidence_figure

    assert evidence_figure(run, found[0]).data  # the outputs' and labels' bands, not an empty chart


def test_mse_on_real_targets_and_on_one_hot_targets_is_quiet(tmp_path, digits):
    x, y = digits
    target = x[:, :1] * 2 + 0.3  # real-valued
    _quiet(check(_fit(tmp_path, "mse-real", _mlp(d_out=1), x, target, nn.MSELoss(), steps=40)))
    one_hot = nn.functional.one_hot(y, 10).float()
    _quiet(check(_fit(tmp_path, "mse-onehot", _mlp(), x, one_hot, nn.MSELoss(), steps=40, task="regression")))


# ---------------------------------------------------------------------------------
# 5. Softmax / log-softmax over the wrong dimension, NLLLoss inputs


@pytest.mark.parametrize("head, loss, fn", [
    (lambda o: torch.log_softmax(o, dim=0), nn.NLLLoss(), "log_softmax"),
    (lambda o: torch.softmax(o, dim=0), nn.CrossEntropyLoss(), "softmax"),
], ids=["log_softmax-dim0-nll", "softmax-dim0-ce"])
def test_normalised_over_the_batch(tmp_path, digits, head, loss, fn):
    x, y = digits
    run = _fit(tmp_path, f"dim0-{fn}", _mlp(), x, y, loss, head=head, steps=40)
    findings = check(run)
    found = [f for f in findings if f.rule == "softmax_wrong_dim"]
    assert len(found) == 1 and found[0].severity == "error" and found[0].evidence["function"] == fn
    assert found[0].evidence["dev_over_batch"] < 1e-5
    assert "nll_input" not in _rules(findings)  # one cause, one finding


@pytest.mark.parametrize("head, kind",
                         [(lambda o: o, "raw scores"), (lambda o: torch.softmax(o, dim=1), "probabilities")],
                         ids=["logits", "softmax"])
def test_nll_loss_without_log_softmax(tmp_path, digits, head, kind):
    x, y = digits
    run = _fit(tmp_path, f"nll-{kind[:3]}", _mlp(), x, y, nn.NLLLoss(), head=head, steps=40)
    found = [f for f in check(run) if f.rule == "nll_input"]
    assert len(found) == 1 and found[0].severity == "error" and found[0].evidence["input_kind"] == kind
    if kind == "raw scores":
        assert found[0].evidence["lowest_loss"] < 0 and "below 0" in found[0].message


def test_log_softmax_over_classes_with_nll_and_logits_with_ce_are_quiet(tmp_path, digits):
    x, y = digits
    _quiet(check(_fit(tmp_path, "nll-ok", _mlp(), x, y, nn.NLLLoss(), head=lambda o: torch.log_softmax(o, 1),
                      steps=40)))
    _quiet(check(_fit(tmp_path, "ce-ok", _mlp(), x, y, nn.CrossEntropyLoss(), steps=40)))


def test_softmax_before_cross_entropy(tmp_path, digits):
    x, y = digits
    run = _fit(tmp_path, "ce-softmax", _mlp(), x, y, nn.CrossEntropyLoss(), head=lambda o: torch.softmax(o, 1),
               steps=40)
    found = [f for f in check(run) if f.rule == "softmax_before_cross_entropy"]
    assert len(found) == 1 and found[0].evidence["loss_floor"] == pytest.approx(-math.log(math.e / (math.e + 9)))
    from diagnostics.health import evidence_figure

    fig = evidence_figure(run, found[0])  # the probes, named in words, each its own dash, the y axis titled
    lines = {t.name: t for t in fig.data}
    assert set(lines) == {"|sum over the classes − 1|: probabilities?", "|sum over the batch − 1|",
                          "|log-sum-exp over the classes|: log-probabilities?", "|log-sum-exp over the batch|"}
    assert len({t.line.dash for t in fig.data}) == 4 and fig.layout.yaxis.title.text
    probe = run.scalars(names=["probe/train/prob_sum_dev_class"])
    np.testing.assert_allclose(lines["|sum over the classes − 1|: probabilities?"].y, probe["value"])
    assert max(lines["|sum over the classes − 1|: probabilities?"].y) < 1e-4  # they are probabilities


def test_probe_against_numpy():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 5, generator=g)
    probe = loss_input_probe(torch.softmax(logits, dim=0), torch.arange(16) % 5)
    p = torch.softmax(logits, dim=0).numpy()
    assert probe["probe/train/prob_sum_dev_batch"] == pytest.approx(np.abs(p.sum(0) - 1).mean(), abs=1e-6)
    assert probe["probe/train/prob_sum_dev_class"] == pytest.approx(np.abs(p.sum(1) - 1).mean(), rel=1e-5)
    lse = np.log(np.exp(p).sum(1))
    assert probe["probe/train/logprob_sum_dev_class"] == pytest.approx(np.abs(lse).mean(), rel=1e-5)
    assert probe["probe/train/label_distinct"] == 5 and probe["probe/train/label_integer_frac"] == 1
    assert probe["probe/train/output_columns"] == 5
    half = loss_input_probe(torch.randn(4, 1), torch.tensor([0.0, 1.5, 2.0, 3.25]), split="val")
    assert half["probe/val/label_integer_frac"] == 0.5 and math.isnan(half["probe/val/prob_sum_dev_class"])


# ---------------------------------------------------------------------------------
# 6. Double sigmoid


def _binary(digits):
    x, y = digits
    return x, (y >= 5).float().unsqueeze(1)


@pytest.mark.parametrize("head, loss", [
    (torch.sigmoid, nn.BCEWithLogitsLoss()),
    (lambda o: torch.sigmoid(torch.sigmoid(o)), nn.BCELoss()),
], ids=["bce-with-logits-on-sigmoid", "bce-on-sigmoid-of-sigmoid"])
def test_double_sigmoid(tmp_path, digits, head, loss):
    x, yb = _binary(digits)
    run = _fit(tmp_path, f"double-{type(loss).__name__}", _mlp(d_out=1), x, yb, loss, head=head, steps=40)
    found = [f for f in check(run) if f.rule == "double_sigmoid"]
    assert len(found) == 1 and found[0].severity == "error"
    assert found[0].evidence["output_min"] >= 0 and (found[0].step_start, found[0].step_end) == (0, 35)
    from diagnostics.health import evidence_figure

    fig = evidence_figure(run, found[0])
    assert len(fig.data) == 2 and max(fig.data[1].y) <= 1 and len(fig.data[0].x) == 8  # captures 0, 5, ..., 35


@pytest.mark.parametrize("head, loss", [(lambda o: o, nn.BCEWithLogitsLoss()), (torch.sigmoid, nn.BCELoss())],
                         ids=["bce-with-logits", "bce-on-sigmoid"])
def test_single_sigmoid_is_quiet(tmp_path, digits, head, loss):
    x, yb = _binary(digits)
    _quiet(check(_fit(tmp_path, f"single-{type(loss).__name__}", _mlp(d_out=1), x, yb, loss, head=head, steps=40)))


# ---------------------------------------------------------------------------------
# Hand-built runs


class _FakeRun:
    """The reader's surface the rules use, over hand-built frames."""

    def __init__(self, manifest, scalars=None, dists=None, ratios=None, records=None):
        self.manifest = {"schema_version": 1, "name": "fake", "created_at": 0, **manifest}
        self._scalars = scalars if scalars is not None else pd.DataFrame(columns=["step", "name", "value"])
        self._dists = dists if dists is not None else pd.DataFrame(columns=["step", "layer", "kind"])
        self._ratios = ratios if ratios is not None else pd.DataFrame(columns=["step", "layer", "ratio"])
        self._records = records if records is not None else pd.DataFrame()
        self.path = "fake"

    def scalars(self, names=None):
        s = self._scalars
        return s if names is None else s[s["name"].isin(list(names))]

    def distributions(self, kind="activation", layers=None):
        d = self._dists[self._dists["kind"] == kind]
        return d if layers is None else d[d["layer"].isin(list(layers))]

    def layers(self, kind="activation"):
        return list(dict.fromkeys(self._dists.loc[self._dists["kind"] == kind, "layer"]))

    def update_ratios(self):
        return self._ratios

    def records(self, split=None):
        return self._records


def _label_rows(hists, steps=None, layer="train/class"):
    steps = range(len(hists)) if steps is None else steps
    return pd.DataFrame({"step": list(steps), "layer": layer, "kind": "label", "rank": 0,
                         "count": [int(np.sum(h)) for h in hists], "hist_counts": [list(h) for h in hists]})


def _FakeUnlearnable(trainable, samples, steps=200):
    loss = pd.DataFrame({"step": range(steps), "name": "loss", "value": math.log(10)})
    ratios = pd.DataFrame({"step": range(0, steps, 10), "layer": "0.weight", "ratio": 1e-3})
    records = pd.DataFrame({"sample_id": [str(i) for i in range(samples)], "step": 0, "label": 0.0})
    return _FakeRun({"task": "classification", "loss_fn": "CrossEntropyLoss", "steps": steps,
                     "parameters": [{"name": "0.weight", "shape": [10, trainable // 10], "numel": trainable,
                                     "requires_grad": True}]},
                    scalars=loss, dists=_label_rows([[32] * 10] * 5), ratios=ratios, records=records)


def test_batch_label_shares_and_the_evidence_charts(tmp_path, digits):
    from diagnostics.health import evidence_figure

    xs, ys = _sorted_by_label(*digits)
    run = _fit(tmp_path, "sorted-chart", _mlp(), xs, ys, nn.CrossEntropyLoss(), steps=20, shuffle=False)
    shares = health_data.batch_label_shares(run)
    first = shares[shares["step"] == 0].set_index("label")["share"]
    assert first[0] == 1.0 and first.drop(0).sum() == 0  # digits sorted: the first batch is all zeros
    assert np.allclose(shares.groupby("step")["share"].sum(), 1.0)
    found = [f for f in check(run) if f.rule == "unshuffled_batches"]
    fig = evidence_figure(run, found[0])
    assert fig.data and fig.data[0].type == "heatmap"
    assert np.asarray(fig.data[0].z).shape == (int(ys[:640].max()) + 1, 20)
