"""hooks.lightning: DiagnosticsCallback through tiny real `Trainer.fit` runs."""

from __future__ import annotations

import importlib
import runpy
import subprocess
import sys
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import diagnostics

MESSAGE = 'hooks.lightning needs PyTorch Lightning: pip install "hookscope[lightning]"'


def test_missing_lightning_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "lightning", None)  # find_spec sees no lightning
    monkeypatch.delitem(sys.modules, "hooks.lightning", raising=False)
    with pytest.raises(ImportError) as info:
        importlib.import_module("hooks.lightning")
    assert str(info.value) == MESSAGE


def test_importing_hooks_does_not_import_lightning():
    code = "import sys, hooks; assert 'lightning' not in sys.modules and 'pytorch_lightning' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@cache
def boring_model_class():
    """A BoringModel-like classifier that remembers the losses its training_step returned."""
    pl = pytest.importorskip("lightning.pytorch")

    class Boring(pl.LightningModule):
        def __init__(self, fail_at: int | None = None, lr: float = 0.1):
            super().__init__()
            self.save_hyperparameters()
            self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
            self.criterion = nn.CrossEntropyLoss()
            self.fail_at = fail_at
            self.step_losses: list[float] = []

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            if batch_idx == self.fail_at:
                raise RuntimeError("boom")
            x, y = batch[0], batch[1]  # (inputs, labels) or (inputs, labels, ids)
            loss = self.criterion(self(x), y)
            self.step_losses.append(loss.item())
            self.log("train_loss", loss)
            return loss

        def validation_step(self, batch, batch_idx):
            x, y = batch[0], batch[1]  # (inputs, labels, ids): the ids are for run.evaluate
            self.log("val_loss", self.criterion(self(x), y))
            self.log("val_const", 1.0)  # equal every epoch: still logged every epoch

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)

    return Boring


def _loaders():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 8, generator=g), torch.randint(0, 3, (64,), generator=g)
    return (DataLoader(TensorDataset(x, y), batch_size=8),
            DataLoader(TensorDataset(x[:32], y[:32], torch.arange(100, 132)), batch_size=8))


def _setup(tmp_path, callbacks, max_epochs=1, fail_at=None, **trainer_kwargs):
    pl = pytest.importorskip("lightning.pytorch")
    pl.seed_everything(0)
    model = boring_model_class()(fail_at=fail_at)
    trainer = pl.Trainer(max_epochs=max_epochs, limit_train_batches=4, limit_val_batches=2, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         accelerator="cpu", default_root_dir=tmp_path, callbacks=callbacks, **trainer_kwargs)
    return trainer, model


def _fit(tmp_path, callbacks, **kwargs):
    trainer, model = _setup(tmp_path, callbacks, **kwargs)
    trainer.fit(model, *_loaders())
    return model


def _callback(tmp_path, name, **kwargs):
    pytest.importorskip("lightning.pytorch")
    from hooks.lightning import DiagnosticsCallback

    return DiagnosticsCallback(run_dir=tmp_path / "runs", name=name, every=1, **kwargs)


def _hooks_left(model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    modules = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._forward_hooks_with_kwargs)
                  for m in model.modules())
    params = sum(len(p._post_accumulate_grad_hooks or {}) for p in model.parameters())
    return modules + params + len(optimizer._optimizer_step_pre_hooks) + len(optimizer._optimizer_step_post_hooks)


@pytest.mark.slow
def test_training_batches_with_ids_give_per_sample_records(tmp_path):
    """A dataset that returns (inputs, labels, ids): the callback records every sample of
    every step under its id (the training dynamics), without a log_batch call."""
    pl = pytest.importorskip("lightning.pytorch")
    cb = _callback(tmp_path, "ids")
    trainer, model = _setup(tmp_path, [cb])
    pl.seed_everything(0)
    reference = boring_model_class()()  # the same initial weights as `model`
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 8, generator=g), torch.randint(0, 3, (64,), generator=g)
    ids = torch.arange(1000, 1064)
    trainer.fit(model, DataLoader(TensorDataset(x, y, ids), batch_size=8), _loaders()[1])
    records = diagnostics.open_run(cb.run.path).records(split="train")
    assert sorted(records["step"].unique()) == [0, 1, 2, 3]
    for step in range(4):  # one record per sample of the step's batch, under its id
        batch_ids = [str(i) for i in range(1000 + 8 * step, 1008 + 8 * step)]
        assert sorted(records.loc[records["step"] == step, "sample_id"]) == sorted(batch_ids)
    first = records[records["step"] == 0].sort_values("sample_id")
    with torch.no_grad():
        expected = nn.functional.cross_entropy(reference(x[:8]), y[:8], reduction="none")
    np.testing.assert_allclose(first["loss"], expected.numpy(), rtol=1e-5)
    np.testing.assert_array_equal(first["label"], y[:8].numpy())


@pytest.mark.slow
def test_fit_is_recorded_step_by_step(tmp_path):
    cb = _callback(tmp_path, "fit")
    model = _fit(tmp_path, [cb], max_epochs=2)
    run = diagnostics.open_run(cb.run.path)
    assert run.status()["state"] == "finished"
    assert run.manifest["steps"] == 8 and run.manifest["task"] == "classification"
    assert run.manifest["config"] == {"fail_at": None, "lr": 0.1} and run.manifest["seed"] == 0

    scalars = run.scalars()
    loss = scalars[scalars["name"] == "loss"].sort_values("step")
    assert loss["step"].tolist() == list(range(8))
    assert loss["value"].tolist() == pytest.approx(model.step_losses, rel=1e-6)

    # this step's gradients, step 0 included (the closure runs before watch's pre-step hook)
    assert sorted(run.distributions(kind="param_grad")["step"].unique()) == list(range(8))
    grad_norm = scalars[scalars["name"] == "grad_norm"]
    assert sorted(grad_norm["step"]) == list(range(8))
    for kind in ("activation", "gradient", "weight", "update", "output", "label"):
        assert not run.distributions(kind=kind).empty, kind
    assert "net.0" in set(run.distributions(kind="activation")["layer"])

    # validation metrics after each epoch's 4 steps; training metrics are not validation
    val = scalars[scalars["name"].isin(["val_loss", "val_const", "train_loss"])]
    assert sorted(zip(val["name"], val["step"])) == [("val_const", 4), ("val_const", 8),
                                                     ("val_loss", 4), ("val_loss", 8)]

    # the per-sample evaluation after fit, with the ids the loader carried
    samples = run.samples(split="val")
    assert len(samples) == 32 and set(samples["sample_id"].astype(int)) == set(range(100, 132))
    assert _hooks_left(model, model.trainer.optimizers[0]) == 0


@pytest.mark.slow
def test_training_result_is_bitwise_unchanged(tmp_path):
    plain = _fit(tmp_path, [])
    watched = _fit(tmp_path, [_callback(tmp_path, "same", evaluate=False)])
    for a, b in zip(plain.state_dict().values(), watched.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.slow
def test_gradient_accumulation_records_the_mean_loss_per_step(tmp_path):
    cb = _callback(tmp_path, "accumulate", evaluate=False)
    model = _fit(tmp_path, [cb], accumulate_grad_batches=2)
    run = diagnostics.open_run(cb.run.path)
    loss = run.scalars().query("name == 'loss'").sort_values("step")
    micro = model.step_losses
    assert run.manifest["steps"] == 2 and loss["step"].tolist() == [0, 1]
    assert loss["value"].tolist() == pytest.approx([(micro[0] + micro[1]) / 2, (micro[2] + micro[3]) / 2], rel=1e-6)


@pytest.mark.slow
def test_an_exception_marks_the_run_failed_and_removes_every_hook(tmp_path):
    cb = _callback(tmp_path, "boom")
    trainer, model = _setup(tmp_path, [cb], fail_at=2)
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit(model, *_loaders())
    run = diagnostics.open_run(cb.run.path)
    assert run.status()["state"] == "failed"
    assert run.scalars().query("name == 'loss'")["step"].tolist() == [0, 1]  # what came before is kept
    assert _hooks_left(model, trainer.optimizers[0]) == 0


@pytest.mark.slow
def test_the_example_runs(tmp_path, monkeypatch):
    pytest.importorskip("lightning.pytorch")
    root = Path(__file__).resolve().parents[2]
    monkeypatch.setattr(sys, "argv", ["lightning_digits.py", "--runs-dir", str(tmp_path), "--epochs", "1"])
    runpy.run_path(str(root / "examples" / "lightning_digits.py"), run_name="__main__")
    run = diagnostics.open_run(tmp_path / "lightning-digits")
    assert run.status()["state"] == "finished" and len(run.samples(split="val")) == 360
    records = run.records(split="train")  # its training batches carry ids: one epoch, each sample once
    assert len(records) == 1437 and records["sample_id"].nunique() == 1437
