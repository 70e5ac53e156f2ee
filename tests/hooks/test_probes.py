"""The eval-mode invariance probes (hooks/probes.py): planted models that are random in eval
mode or mix the samples of a batch are caught, healthy public models are not; training stays
bitwise unchanged; a probe that fails is contained."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import diagnostics
import hooks
import hooks.probes as probes_module
from benchmarks.controls_fit import _VAE
from benchmarks.controls_lm import GPT
from benchmarks.controls_optim import ResNet
from diagnostics import schema
from hooks.probes import cut_batch, invariance_probe, padding_evidence

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class FunctionalDropout(nn.Module):
    """F.dropout without training=self.training: on in eval mode."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 3)

    def forward(self, x):
        return self.fc2(F.dropout(torch.relu(self.fc1(x)), 0.5))


class ViewAcrossBatch(nn.Module):
    """A (batch, seq, feature) batch viewed as (seq, batch, feature) for a seq-first LSTM."""

    def __init__(self):
        super().__init__()
        self.lstm, self.head = nn.LSTM(4, 8), nn.Linear(8, 3)

    def forward(self, x):
        b = x.shape[0]
        out, _ = self.lstm(x.view(b, 4, 4).view(4, b, 4))
        return self.head(out[-1])


class AttendOverBatch(nn.Module):
    """A transformer layer given (N, d) as one sequence: every sample attends to the others."""

    def __init__(self):
        super().__init__()
        self.enc = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.1)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.enc(x))


def _healthy_mlp():
    return nn.Sequential(nn.Linear(16, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 3))


def _plain_batch_difference(model, x, k):
    """The reference: the first k samples alone vs inside the batch, in eval mode, by hand."""
    model.eval()
    with torch.no_grad():
        full, alone = model(x)[:k], model(x[:k])
    return float(((full - alone).norm(dim=1) / full.norm(dim=1)).max())


def test_functional_dropout_is_random_in_eval_mode_and_named():
    torch.manual_seed(0)
    model = FunctionalDropout()
    fields, sites = invariance_probe(model, cut_batch((torch.randn(32, 16),), {}, 8))
    assert model.training  # its mode given back
    model.eval()
    with torch.no_grad():
        x = torch.randn(8, 16)
        assert not torch.equal(model(x), model(x))  # the reference: plain torch is random too
    assert fields["eval_random_dev"] > 0.01
    assert fields["eval_dropout_calls"] == 1 and fields["eval_sampling_calls"] == 0
    assert sites == ["dropout(p=0.5) in FunctionalDropout"]


@pytest.mark.parametrize("make", [ViewAcrossBatch, AttendOverBatch])
def test_models_mixing_the_batch_are_caught(make):
    torch.manual_seed(0)
    model = make()
    x = torch.randn(32, 16)
    fields, sites = invariance_probe(model, cut_batch((x,), {}, 8))
    assert model.training  # its mode given back
    assert fields["eval_random_dev"] == 0 and not sites
    assert fields["eval_batch_dev"] == pytest.approx(_plain_batch_difference(model, x[:8], 4), rel=1e-4)
    assert fields["eval_batch_dev"] > 0.05


def test_healthy_models_are_deterministic_and_batch_independent():
    torch.manual_seed(0)
    gpt, resnet, mlp = GPT(64), ResNet(), _healthy_mlp()
    for model, x in [(gpt, torch.randint(0, 64, (16, 12))), (resnet, torch.randn(16, 1, 8, 8)),
                     (mlp, torch.randn(16, 16))]:
        fields, sites = invariance_probe(model, cut_batch((x,), {}, 8))
        assert fields["eval_random_dev"] == 0 and not sites, type(model).__name__
        assert fields["eval_batch_dev"] < 1e-5, type(model).__name__


def test_sampling_is_told_from_dropout():
    torch.manual_seed(0)
    fields, sites = invariance_probe(_VAE(), cut_batch((torch.rand(16, 64),), {}, 8))
    assert fields["eval_random_dev"] > 0.001
    assert fields["eval_dropout_calls"] == 0 and fields["eval_sampling_calls"] >= 1
    assert sites == ["randn_like in _VAE"]


@pytest.mark.slow
def test_hf_models_built_from_config_are_quiet():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=64,
                                                                n_positions=32))
    bert = transformers.BertForSequenceClassification(transformers.BertConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64))
    ids = torch.randint(0, 64, (8, 12))
    mask = torch.ones_like(ids)
    mask[4:, 9:] = 0  # padded rows: the mask is cut with the ids
    for model in (gpt2, bert):
        model.train()
        fields, sites = invariance_probe(model, cut_batch((), {"input_ids": ids, "attention_mask": mask}, 8))
        assert fields["eval_random_dev"] == 0 and not sites
        assert fields["eval_batch_dev"] < 1e-4
        assert model.training


def test_cut_batch_cuts_only_batch_sized_tensors():
    x, h = torch.randn(10, 3), torch.zeros(2, 10, 5)
    (cx, ch), kw, k = cut_batch((x, h), {"mask": torch.ones(10, 3), "n": 3}, 4)
    assert k == 4 and torch.equal(cx, x[:4]) and ch is h and kw["mask"].shape == (4, 3) and kw["n"] == 3


def test_padding_evidence_reads_the_last_input_token():
    ids = torch.tensor([[5, 6, 0, 0], [7, 8, 9, 0], [1, 2, 3, 4]])
    ev = padding_evidence((ids,), {})
    assert ev == {"input_end_value": 0.0, "input_end_share": pytest.approx(2 / 3)}
    assert padding_evidence((torch.randn(3, 4),), {}) == {}


def _train(folder, model, name, steps=6, evaluate=True, **watch_kw):
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(64, 16, generator=g), torch.randint(0, 3, (64,), generator=g)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    crit = nn.CrossEntropyLoss()
    run = hooks.watch(model, optimizer=opt, loss_fn=crit, run_dir=folder, name=name, every=2, **watch_kw) \
        if name else None
    for i in range(steps):
        opt.zero_grad()
        crit(model(x[i * 8:(i + 1) * 8]), y[i * 8:(i + 1) * 8]).backward()
        opt.step()
        if run is not None and evaluate and i % 3 == 2:
            run.evaluate([(x[48:], y[48:])], split="val", attribute_worst=0, progress=False)
    if run is not None:
        run.close()
    return model, run


@pytest.mark.parametrize("make", [FunctionalDropout, _healthy_mlp])
def test_training_and_rng_are_bitwise_unchanged_by_the_probes(tmp_path, make):
    torch.manual_seed(0)
    plain, _ = _train(tmp_path, make(), None)
    after_plain = torch.get_rng_state()
    torch.manual_seed(0)
    watched, run = _train(tmp_path, make(), "w")
    assert torch.equal(torch.get_rng_state(), after_plain)
    for (k, a), b in zip(plain.state_dict().items(), watched.state_dict().values()):
        assert torch.equal(a, b), k
    probed = diagnostics.open_run(run.path).manifest[schema.EVAL_PROBES]
    assert set(probed) == {"val", "train"}  # the first evaluation's batch, and the first training batch at close


def test_probe_results_are_recorded_once_per_split(tmp_path):
    torch.manual_seed(0)
    _, run = _train(tmp_path, FunctionalDropout(), "fd")
    r = diagnostics.open_run(run.path)
    s = r.scalars()
    val = s[s["name"] == "probe/val/eval_random_dev"]
    assert len(val) == 1 and val["value"].iloc[0] > 0.01  # two evaluations, one probe
    assert r.manifest[schema.EVAL_PROBES]["val"]["sites"] == ["dropout(p=0.5) in FunctionalDropout"]
    assert s[s["name"] == "probe/train/eval_dropout_calls"]["value"].iloc[0] == 1


def test_a_failing_probe_is_contained(tmp_path, monkeypatch):
    def boom(model, batch):
        raise RuntimeError("probe exploded")
    monkeypatch.setattr(probes_module, "invariance_probe", boom)
    torch.manual_seed(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, run = _train(tmp_path, _healthy_mlp(), "boom")
    said = [str(w.message) for w in caught if "probe exploded" in str(w.message)]
    assert len(said) == 1 and "eval_probe" in said[0]
    r = diagnostics.open_run(run.path)
    assert len(r.samples(split="val")) == 16  # the evaluation is still recorded
    assert [f["part"] for f in r.manifest["faults"]] == ["eval_probe"]
    assert schema.EVAL_PROBES not in r.manifest


def test_hooks_are_gone_after_the_first_training_batch(tmp_path):
    torch.manual_seed(0)
    model = _healthy_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with hooks.watch(model, optimizer=opt, loss_fn=nn.CrossEntropyLoss(), run_dir=tmp_path, name="h") as run:
        before = len(model._forward_pre_hooks)
        F.cross_entropy(model(torch.randn(8, 16)), torch.zeros(8, dtype=torch.long)).backward()
        opt.step()
        assert len(model._forward_pre_hooks) == before - 1  # the grab removed itself
        assert run._probes.train.batch[2] == 8


def test_no_probe_hook_is_left_when_the_evaluation_fails(tmp_path):
    torch.manual_seed(0)
    model = _healthy_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    run = hooks.watch(model, optimizer=opt, loss_fn=nn.CrossEntropyLoss(), run_dir=tmp_path, name="e")
    hooks_before = dict(model._forward_pre_hooks)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metrics = run.evaluate([(torch.randn(4, 16), torch.zeros(4, dtype=torch.long)), (torch.randn(4, 7), None)],
                               split="val", attribute_worst=0, progress=False)
    assert dict(model._forward_pre_hooks) == hooks_before and metrics["n"] != metrics["n"]  # NaN: not made
    run.close()
    assert not model._forward_pre_hooks and not model._forward_pre_hooks_with_kwargs


def test_sequence_labels_top_value_and_share_by_hand():
    labels = torch.tensor([[3, 0, 0, 0], [4, 5, 0, 0]])
    probe = probes_module.loss_input_probe(torch.randn(2, 6, 4), labels)
    assert probe["probe/train/label_top_value"] == 0 and probe["probe/train/label_top_share"] == 5 / 8
    flat = probes_module.loss_input_probe(torch.randn(8, 6), torch.zeros(8, dtype=torch.long))
    assert flat["probe/train/label_top_share"] != flat["probe/train/label_top_share"]  # NaN: not sequence-shaped


def test_inputs_without_a_batch_tensor_are_not_kept():
    grab = probes_module.BatchGrab(None, lambda m: True)

    class Wrapped:  # an input type of its own (e.g. a BatchEncoding-like object)
        def __init__(self, t):
            self.t = t
    grab.take(nn.Identity(), (Wrapped(torch.randn(4, 3)),), {})
    assert grab.taken and grab.batch is None
    grab.take(nn.Identity(), (torch.randn(4, 3),), {})  # once only
    assert grab.batch is None


class _InPlaceScaling(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        x /= 4  # edits its input in place: the probe's repeated forwards must each get fresh samples
        return self.fc(x)


def test_a_forward_that_edits_its_input_is_not_taken_for_random():
    fields, sites = invariance_probe(_InPlaceScaling(), cut_batch((torch.randn(8, 16),), {}, 8))
    assert fields["eval_random_dev"] == 0 and fields["eval_batch_dev"] < 1e-6 and not sites
