"""hooks.lightning: the evaluation after fit on batches without labels (an autoencoder, a
self-supervised module) and on Hugging Face-style dict batches (issue #24)."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import diagnostics


class Lines(logging.Handler):
    """The lines Lightning's loggers emit (its own logger does not always propagate to the root)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def _fit(tmp_path, module, train, val, **callback_kwargs):
    """fit with the callback; returns (callback, our warnings, Lightning's info lines about us)."""
    pl = pytest.importorskip("lightning.pytorch")
    from hooks.lightning import DiagnosticsCallback

    cb = DiagnosticsCallback(run_dir=tmp_path / "runs", name="fit", every=1, **callback_kwargs)
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=4, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                         default_root_dir=tmp_path, callbacks=[cb])
    lines, logger = Lines(), logging.getLogger("lightning.pytorch")
    level, logger.level = logger.level, logging.INFO
    logger.addHandler(lines)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer.fit(module, train, val)
    finally:
        logger.removeHandler(lines)
        logger.setLevel(level)
    ours = [str(w.message) for w in caught if "hookscope" in str(w.message) or "DiagnosticsCallback" in str(w.message)]
    return cb, ours, [line for line in lines.lines if "DiagnosticsCallback" in line]


def _images(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 1, 6, 6, generator=torch.Generator().manual_seed(seed))


def autoencoder_class(loss: str):
    """A small convolutional autoencoder trained on `x` alone: loss "mse" (nn.MSELoss between
    forward(x) and x: a reconstruction), or "views" (nn.MSELoss between the embeddings of two
    noisy views: self-supervised, nothing per sample to score against)."""
    pl = pytest.importorskip("lightning.pytorch")

    class AutoEncoder(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(144, 8))
            self.decoder = nn.Sequential(nn.Linear(8, 36), nn.Unflatten(1, (1, 6, 6)))
            self.criterion = nn.MSELoss()

        def forward(self, x):
            return self.decoder(self.encoder(x))

        def training_step(self, batch, batch_idx):
            x = batch[0] if isinstance(batch, (list, tuple)) else batch
            if loss == "mse":
                return self.criterion(self(x), x)
            return self.criterion(self.encoder(x + 0.1 * torch.randn_like(x)), self.encoder(x))

        def validation_step(self, batch, batch_idx):
            x = batch[0] if isinstance(batch, (list, tuple)) else batch
            self.log("val_loss", self.criterion(self(x), x))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05)

    return AutoEncoder


@pytest.mark.parametrize("wrap", ["tuple", "tensor"])
def test_an_autoencoder_gets_its_reconstruction_error_per_sample(tmp_path, wrap):
    pytest.importorskip("lightning.pytorch").seed_everything(0)
    module = autoencoder_class("mse")()
    x, val = _images(32, 0), _images(12, 1)
    if wrap == "tuple":  # TensorDataset(x): batches (x,)
        loaders = DataLoader(TensorDataset(x), batch_size=8), DataLoader(TensorDataset(val), batch_size=5)
    else:  # a plain tensor per batch
        loaders = DataLoader(x, batch_size=8), DataLoader(val, batch_size=5)
    cb, ours, lines = _fit(tmp_path, module, *loaders)
    assert ours == [] and lines == []
    run = diagnostics.open_run(cb.run.path)
    assert not run.manifest.get("faults")
    samples = run.samples(split="val").set_index("sample_id").loc[[str(i) for i in range(12)]]
    module.eval()
    with torch.no_grad():
        expected = [nn.functional.mse_loss(module(val[i:i + 1]), val[i:i + 1]).item() for i in range(12)]
    np.testing.assert_allclose(samples["loss"].to_numpy(), expected, rtol=1e-5)
    assert run.manifest["task"] == "regression"


def test_unlabelled_batches_without_a_reconstruction_loss_are_skipped_with_one_line(tmp_path):
    pytest.importorskip("lightning.pytorch").seed_everything(0)
    loaders = DataLoader(TensorDataset(_images(32, 0)), batch_size=8), DataLoader(TensorDataset(_images(12, 1)),
                                                                                   batch_size=5)
    cb, ours, lines = _fit(tmp_path, autoencoder_class("views")(), *loaders)
    assert ours == []
    assert len(lines) == 1 and "no per-sample evaluation of 'val'" in lines[0] and "no labels" in lines[0]
    run = diagnostics.open_run(cb.run.path)
    assert run.status()["state"] == "finished" and not run.manifest.get("faults")
    assert not run.manifest.get("evaluations")


def hf_module_class():
    """A LightningModule around a Hugging Face model, trained on its own loss: batches are
    the collator's dicts (input_ids, attention_mask, token_type_ids, labels)."""
    pl = pytest.importorskip("lightning.pytorch")

    class Wrapped(pl.LightningModule):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask=None, token_type_ids=None):
            return self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).logits

        def training_step(self, batch, batch_idx):
            return self.model(**batch).loss

        def validation_step(self, batch, batch_idx):
            self.log("val_loss", self.model(**batch).loss)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05)

    return Wrapped


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sequence", "tokens", "causal"])
def test_hugging_face_dict_batches_are_evaluated(tmp_path, kind):
    """Padded dict batches through a LightningModule: every model input reaches forward,
    labels -100 are not counted, a causal LM's labels are shifted (the module holds one of
    transformers' causal LMs); each sample's loss is the model's own on that sample alone."""
    pytest.importorskip("transformers")
    from tests.hooks import test_transformers_outputs as hf

    pytest.importorskip("lightning.pytorch").seed_everything(0)
    module = hf_module_class()(hf._model(kind))
    module.tokenizer = hf._word_tokenizer()  # a module's tokenizer names the tokens
    data = hf.Sentences(20, 1)
    train = DataLoader(hf.Sentences(32, 0), batch_size=8, collate_fn=hf.pad_collator(kind))
    cb, ours, lines = _fit(tmp_path, module, train, DataLoader(data, batch_size=8, collate_fn=hf.pad_collator(kind)))
    assert ours == [] and lines == []
    run = diagnostics.open_run(cb.run.path)
    samples = run.samples(split="val").set_index("sample_id").loc[[str(i) for i in range(len(data))]]
    if kind == "sequence":
        module.eval()
        with torch.no_grad():
            expected = [nn.functional.cross_entropy(module(item["input_ids"][None],
                                                           token_type_ids=item["token_type_ids"][None]),
                                                    torch.tensor([item["label"]])).item() for item in data]
    else:
        expected = [float(r.mean()) for r in hf._per_token_reference(module.model, data, kind)]
        assert len(run.positions(split="val")) == sum(len(item["input_ids"]) - 1 for item in data)
        vocabulary = run.vocabulary(split="val")
        assert {int(t) for item in data for t in item["input_ids"]} <= set(vocabulary)
        assert all(vocabulary[i] == f"w{i}" for i in vocabulary)
    np.testing.assert_allclose(samples["loss"].to_numpy(), expected, rtol=1e-4, atol=1e-6)


def test_which_batches_carry_no_labels():
    pytest.importorskip("lightning.pytorch")
    from hooks.lightning import unlabelled_input

    x, ids = torch.zeros(4, 3), torch.ones(4, 5, dtype=torch.long)
    unlabelled = [(x, x), ((x,), x), ([x], x), ({"x": x}, x), ({"input_ids": ids, "attention_mask": ids}, ids)]
    for batch, expected in unlabelled:
        assert unlabelled_input(batch) is expected
    for batch in [(x, x), (x, x, x), {"input_ids": ids, "labels": ids}, {"x": x, "y": x}, {"features": x}, "text"]:
        assert unlabelled_input(batch) is None
