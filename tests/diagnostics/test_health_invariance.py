"""Rules from the eval-mode probes (diagnostics/health/invariance.py): train_eval_mismatch,
batch_mixing and loss_on_padding fire on planted bugs, in real recorded runs, and stay quiet
on the healthy variant of each; their thresholds on hand-built runs."""

from __future__ import annotations

import pandas as pd
import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import diagnostics  # noqa: E402
import hooks  # noqa: E402
from diagnostics import schema  # noqa: E402
from diagnostics.health import diagnose, evidence_figure  # noqa: E402
from diagnostics.health.invariance import (  # noqa: E402
    BATCH_DEV_MIN,
    rule_batch_mixing,
    rule_loss_on_padding,
    rule_train_eval_mismatch,
)
from tests.diagnostics.test_health import FakeRun  # noqa: E402
from tests.hooks.test_probes import FunctionalDropout, ViewAcrossBatch, _healthy_mlp  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _classifier_run(folder, model, name, evaluate=True):
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(96, 16, generator=g), torch.randint(0, 3, (96,), generator=g)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    crit = nn.CrossEntropyLoss()
    with hooks.watch(model, optimizer=opt, loss_fn=crit, run_dir=folder, name=name, every=5) as run:
        for i in range(10):
            idx = slice((i * 8) % 80, (i * 8) % 80 + 8)
            opt.zero_grad()
            crit(model(x[idx]), y[idx]).backward()
            opt.step()
        if evaluate:
            run.evaluate([(x[80:], y[80:])], split="val", attribute_worst=0, progress=False)
    return diagnostics.open_run(run.path)


def _loud(run):
    return {f.rule: f for f in diagnose(run)[0] if f.severity in ("warning", "error")}


def test_functional_dropout_in_eval_is_named(tmp_path):
    torch.manual_seed(0)
    run = _classifier_run(tmp_path, FunctionalDropout(), "fd")
    [f] = rule_train_eval_mismatch(run)
    assert f.severity == "warning" and f.layer == "FunctionalDropout"
    assert "dropout(p=0.5)" in f.message and "training=self.training" in f.advice
    assert diagnose(run)[1][0].cause.rule == "train_eval_mismatch"
    assert set(evidence_figure(run, f).data[0].x) == {"val", "train"}  # the chart: one bar per probed split


def test_batch_mixing_is_named_without_an_evaluation(tmp_path):
    torch.manual_seed(0)
    run = _classifier_run(tmp_path, ViewAcrossBatch(), "view", evaluate=False)  # the close probes a train batch
    [f] = rule_batch_mixing(run)
    assert f.severity == "warning" and f.evidence["splits"] == ["train"]
    assert diagnose(run)[1][0].cause.rule == "batch_mixing"


def test_healthy_classifier_draws_neither(tmp_path):
    torch.manual_seed(0)
    run = _classifier_run(tmp_path, _healthy_mlp(), "ok")
    assert set(run.manifest[schema.EVAL_PROBES]) == {"val", "train"}
    assert rule_train_eval_mismatch(run) == [] and rule_batch_mixing(run) == [] and rule_loss_on_padding(run) == []


class _Sampler(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        h = self.fc(x)
        return h + 0.5 * torch.randn_like(h)  # noise that forgets self.training, or a deliberate sampler


def test_sampling_in_eval_mode_is_info(tmp_path):
    torch.manual_seed(0)
    [f] = rule_train_eval_mismatch(_classifier_run(tmp_path, _Sampler(), "s"))
    assert f.severity == "info" and "randn_like in _Sampler" in f.message


def _probe_run(field, values, manifest=None):
    rows = [{"step": 3, "name": f"probe/{split}/{field}", "value": v} for split, v in values.items()]
    return FakeRun(manifest={schema.EVAL_PROBES: {s: {"step": 3, "sites": []} for s in values}, **(manifest or {})},
                   scalars=pd.DataFrame(rows))


def test_batch_mixing_threshold():
    assert rule_batch_mixing(_probe_run("eval_batch_dev", {"val": BATCH_DEV_MIN * 0.5})) == []
    [f] = rule_batch_mixing(_probe_run("eval_batch_dev", {"val": 0.01, "test": BATCH_DEV_MIN * 2}))
    assert f.evidence["splits"] == ["test"]


class _TinyLM(nn.Module):
    def __init__(self, vocab=12):
        super().__init__()
        self.emb, self.head = nn.Embedding(vocab, 16), nn.Linear(16, vocab)

    def forward(self, x):
        return self.head(self.emb(x)).transpose(1, 2)  # (B, vocab, T)


def _lm_run(folder, name, crit=None, pad_share=0.5):
    """Next-token prediction on sequences padded at the end with token 0."""
    g = torch.Generator().manual_seed(0)
    seqs = torch.randint(1, 12, (64, 17), generator=g)
    lengths = torch.randint(2, 17, (64,), generator=g) if pad_share else torch.full((64,), 17)
    seqs[torch.arange(17)[None, :] >= lengths[:, None]] = 0
    torch.manual_seed(0)
    model = _TinyLM()
    crit = crit or nn.CrossEntropyLoss()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    with hooks.watch(model, optimizer=opt, loss_fn=crit, run_dir=folder,
                     name=name, every=2) as run:
        for i in range(8):
            x, y = seqs[i * 8:(i + 1) * 8, :-1], seqs[i * 8:(i + 1) * 8, 1:]
            opt.zero_grad()
            out = model(x)
            loss = crit(out, y)
            if not isinstance(crit, nn.Module):
                run.log_batch(out, y, loss=loss)
            loss.backward()
            opt.step()
    return diagnostics.open_run(run.path)


def test_padding_counted_in_the_loss(tmp_path):
    run = _lm_run(tmp_path, "pad")
    [f] = rule_loss_on_padding(run)
    assert f.severity == "warning" and f.evidence["pad_value"] == 0 and f.evidence["ignore_index"] == -100
    assert f.evidence["label_share"] >= 0.3
    assert "ignore_index=0" in f.advice
    assert diagnose(run)[1][0].cause.rule == "loss_on_padding"
    assert len(evidence_figure(run, f).data[0].y) == 4  # the label share at each of the 4 train captures


def test_padding_ignored_by_the_loss_is_quiet(tmp_path):
    assert rule_loss_on_padding(_lm_run(tmp_path, "ignored", crit=nn.CrossEntropyLoss(ignore_index=0))) == []


def test_padding_with_a_loss_function_is_info(tmp_path):
    [f] = rule_loss_on_padding(_lm_run(tmp_path, "fn", crit=F.cross_entropy))
    assert f.severity == "info"


def test_unpadded_sequences_are_quiet(tmp_path):
    assert rule_loss_on_padding(_lm_run(tmp_path, "nopad", pad_share=0)) == []
