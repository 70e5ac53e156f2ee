"""hooks.transformers: DiagnosticsCallback through tiny real `Trainer.train` runs (no downloads)."""

from __future__ import annotations

import importlib
import os
import runpy
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import diagnostics

MESSAGE = 'hooks.transformers needs Hugging Face transformers: pip install "hookscope[transformers]"'
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_missing_transformers_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # find_spec sees no transformers
    monkeypatch.delitem(sys.modules, "hooks.transformers", raising=False)
    with pytest.raises(ImportError) as info:
        importlib.import_module("hooks.transformers")
    assert str(info.value) == MESSAGE


def test_importing_hooks_does_not_import_transformers():
    code = "import sys, hooks; assert 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_module_imports_the_real_transformers():
    transformers = pytest.importorskip("transformers")
    hf = importlib.import_module("hooks.transformers")
    assert hf.transformers is transformers and Path(transformers.__file__).parent.name == "transformers"
    assert issubclass(hf.DiagnosticsCallback, transformers.TrainerCallback)


class Tokens(torch.utils.data.Dataset):
    """Synthetic sequences of 12 tokens; the label is whether the first token is above 50."""

    def __init__(self, n: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(1, 100, (n, 12), generator=g)
        self.labels = (self.ids[:, 0] > 50).long()

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(12, dtype=torch.long), "labels": self.labels[i]}


def _trainer(tmp_path, callbacks, trainer_class=None, **args):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")  # the Trainer needs it
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, num_labels=2)
    model = transformers.BertForSequenceClassification(config)
    arguments = dict(output_dir=str(tmp_path / "hf"), max_steps=4, per_device_train_batch_size=4, report_to=[],
                     use_cpu=True, save_strategy="no", logging_steps=1, disable_tqdm=True)
    arguments.update(args)
    return (trainer_class or transformers.Trainer)(
        model=model, args=transformers.TrainingArguments(**arguments), train_dataset=Tokens(32, 0),
        eval_dataset=Tokens(16, 1), callbacks=callbacks)


def _callback(tmp_path, name, **kwargs):
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")  # the Trainer needs it
    from hooks.transformers import DiagnosticsCallback

    return DiagnosticsCallback(run_dir=tmp_path / "runs", name=name, every=1, **kwargs)


def _trainer_losses(trainer) -> list[tuple[int, float]]:
    """The Trainer's own per-step losses: (step index from 0, logs["loss"]) with logging_steps=1."""
    return [(entry["step"] - 1, entry["loss"]) for entry in trainer.state.log_history if "loss" in entry]


def _hooks_left(model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    modules = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._forward_hooks_with_kwargs)
                  for m in model.modules())
    params = sum(len(p._post_accumulate_grad_hooks or {}) for p in model.parameters())
    return modules + params + len(optimizer._optimizer_step_pre_hooks) + len(optimizer._optimizer_step_post_hooks)


@pytest.mark.slow
def test_train_is_recorded_step_by_step(tmp_path):
    cb = _callback(tmp_path, "bert")
    trainer = _trainer(tmp_path, [cb], eval_strategy="steps", eval_steps=2, per_device_eval_batch_size=8)
    trainer.train()
    run = diagnostics.open_run(cb.run.path)
    assert run.status()["state"] == "finished"
    assert run.manifest["steps"] == 4 and run.manifest["task"] == "classification"
    assert run.manifest["seed"] == 42 and run.manifest["config"]["max_steps"] == 4

    scalars = run.scalars()
    loss = scalars[scalars["name"] == "loss"].sort_values("step")
    steps, values = zip(*_trainer_losses(trainer))
    assert loss["step"].tolist() == list(steps) == [0, 1, 2, 3]
    assert loss["value"].tolist() == pytest.approx(values, rel=1e-6)

    evals = scalars[scalars["name"] == "eval_loss"].sort_values("step")
    assert evals["step"].tolist() == [2, 4]
    assert evals["value"].tolist() == pytest.approx([e["eval_loss"] for e in trainer.state.log_history
                                                     if "eval_loss" in e], rel=1e-6)
    assert not scalars["name"].str.endswith(("_runtime", "_per_second")).any()

    for kind in ("activation", "gradient", "weight", "param_grad", "update", "output", "label"):
        assert sorted(run.distributions(kind=kind)["step"].unique()) == [0, 1, 2, 3], kind
    assert "bert.encoder.layer.0.attention.self.query" in set(run.distributions(kind="activation")["layer"])

    # the per-sample evaluation at the end of training agrees with the Trainer's last evaluation
    samples = run.samples(split="val")
    assert len(samples) == 16
    assert samples["loss"].mean() == pytest.approx(evals["value"].iloc[-1], rel=1e-4)
    assert _hooks_left(trainer.model, trainer.optimizer.optimizer) == 0


@pytest.mark.slow
def test_gradient_accumulation_matches_the_trainers_loss(tmp_path):
    cb = _callback(tmp_path, "accumulate", evaluate=False)
    trainer = _trainer(tmp_path, [cb], max_steps=2, gradient_accumulation_steps=2)
    trainer.train()
    run = diagnostics.open_run(cb.run.path)
    loss = run.scalars().query("name == 'loss'").sort_values("step")
    steps, values = zip(*_trainer_losses(trainer))
    assert run.manifest["steps"] == 2 and loss["step"].tolist() == list(steps) == [0, 1]
    assert loss["value"].tolist() == pytest.approx(values, rel=1e-6)


@pytest.mark.slow
def test_training_result_is_bitwise_unchanged(tmp_path):
    plain = _trainer(tmp_path, [])
    plain.train()
    watched = _trainer(tmp_path, [_callback(tmp_path, "same", evaluate=False)])
    watched.train()
    for a, b in zip(plain.model.state_dict().values(), watched.model.state_dict().values()):
        assert torch.equal(a, b)


def _failing_trainer_class(fail_at_step: int):
    transformers = pytest.importorskip("transformers")

    class Failing(transformers.Trainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            if self.state.global_step == fail_at_step:
                raise RuntimeError("boom")
            return super().training_step(model, inputs, num_items_in_batch)

    return Failing


@pytest.mark.slow
def test_an_exception_inside_the_context_marks_the_run_failed(tmp_path):
    cb = _callback(tmp_path, "boom")
    trainer = _trainer(tmp_path, [cb], trainer_class=_failing_trainer_class(2))
    with pytest.raises(RuntimeError, match="boom"):
        with cb:
            trainer.train()
    run = diagnostics.open_run(cb.run.path)
    assert run.status()["state"] == "failed"
    assert run.scalars().query("name == 'loss'")["step"].tolist() == [0, 1]  # what came before is kept
    assert _hooks_left(trainer.model, trainer.optimizer.optimizer) == 0


@pytest.mark.slow
def test_a_crashed_train_is_marked_failed_by_the_next_one(tmp_path):
    cb = _callback(tmp_path, "again", evaluate=False)
    with pytest.raises(RuntimeError, match="boom"):
        _trainer(tmp_path, [cb], trainer_class=_failing_trainer_class(1)).train()
    crashed = cb.run.path
    _trainer(tmp_path, [cb]).train()
    assert diagnostics.open_run(crashed).status()["state"] == "failed"
    assert diagnostics.open_run(cb.run.path).status()["state"] == "finished"


@pytest.mark.slow
def test_a_script_that_crashes_leaves_a_failed_run(tmp_path):
    pytest.importorskip("transformers")
    script = textwrap.dedent(f"""
        import sys, torch
        sys.path[:0] = [{str(ROOT)!r}, {str(Path(__file__).parent)!r}]
        import test_transformers as t
        from pathlib import Path
        cb = t._callback(Path({str(tmp_path)!r}), "script")
        t._trainer(Path({str(tmp_path)!r}), [cb], trainer_class=t._failing_trainer_class(1)).train()
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode != 0 and "boom" in done.stderr
    assert diagnostics.open_run(tmp_path / "runs" / "script").status()["state"] == "failed"


@pytest.mark.slow
def test_the_example_runs(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    monkeypatch.setattr(sys, "argv", ["hf_tiny_bert.py", "--runs-dir", str(tmp_path), "--steps", "8"])
    runpy.run_path(str(ROOT / "examples" / "hf_tiny_bert.py"), run_name="__main__")
    run = diagnostics.open_run(tmp_path / "hf-tiny-bert")
    assert run.status()["state"] == "finished" and len(run.samples(split="val")) == 256


class Padded(torch.utils.data.Dataset):
    """Token sequences of 4 to 12 tokens padded with 0, and the mask that says so."""

    def __init__(self, n: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.lengths = torch.randint(4, 13, (n,), generator=g)
        self.ids = torch.randint(1, 100, (n, 12), generator=g)
        self.mask = (torch.arange(12)[None, :] < self.lengths[:, None]).long()
        self.ids = self.ids * self.mask
        self.labels = (self.ids[:, 0] > 50).long()

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": self.mask[i], "labels": self.labels[i], "id": f"s{i}"}


def test_evaluate_passes_hugging_face_dict_batches_as_keyword_arguments(tmp_path):
    """A collated dict keyed the Hugging Face way is the model's kwargs: attention_mask
    must reach the model (padding changes the logits otherwise); labels and ids must not."""
    transformers = pytest.importorskip("transformers")
    import hooks

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, num_labels=2, initializer_range=0.5)
    model = transformers.BertForSequenceClassification(config)
    data = Padded(24, 2)
    loader = torch.utils.data.DataLoader(data, batch_size=8)
    run = hooks.watch(model, run_dir=tmp_path, name="hf-eval", task="classification")
    metrics = run.evaluate(loader, split="val", progress=False)
    run.close()
    model.eval()
    with torch.no_grad():
        masked = model(input_ids=data.ids, attention_mask=data.mask).logits
        unmasked = model(input_ids=data.ids).logits
    expected = nn.functional.cross_entropy(masked, data.labels, reduction="none").numpy()
    assert (masked - unmasked).abs().max() > 0.05  # the mask matters here
    samples = diagnostics.open_run(run.path).samples(split="val").set_index("sample_id")
    samples = samples.loc[[f"s{i}" for i in range(24)]]
    np.testing.assert_allclose(samples["loss"].to_numpy(), expected, rtol=1e-4, atol=1e-6)
    assert metrics["accuracy"] == pytest.approx(float((masked.argmax(1) == data.labels).float().mean()))


def test_evaluate_dict_batch_without_a_known_input_key_is_one_line(tmp_path):
    import hooks

    model = nn.Linear(4, 2)
    loader = [{"features": torch.zeros(3, 4), "labels": torch.zeros(3, dtype=torch.long)}]
    with hooks.watch(model, run_dir=tmp_path, name="bad", strict=True) as run:
        with pytest.raises(TypeError, match="needs an input key .* got keys \\['features', 'labels'\\]"):
            run.evaluate(loader, progress=False)


def test_evaluate_accepts_mappings_that_are_not_dicts(tmp_path):
    """transformers' collators return a BatchEncoding (a UserDict, not a dict); a forward
    without **kwargs gets only the entries it names."""
    from collections import UserDict

    import hooks

    class Named(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 4)
            self.head = nn.Linear(4, 2)

        def forward(self, input_ids, attention_mask=None):
            h = self.emb(input_ids) * attention_mask[..., None]
            return self.head(h.mean(1))

    g = torch.Generator().manual_seed(0)
    batch = UserDict({"input_ids": torch.randint(0, 10, (6, 5), generator=g), "attention_mask": torch.ones(6, 5),
                      "labels": torch.randint(0, 2, (6,), generator=g), "idx": torch.arange(6)})
    with hooks.watch(Named(), run_dir=tmp_path, name="mapping", task="classification") as run:
        metrics = run.evaluate([batch], progress=False)
    assert set(metrics) >= {"loss", "accuracy"}
    assert len(diagnostics.open_run(run.path).samples(split="val")) == 6
