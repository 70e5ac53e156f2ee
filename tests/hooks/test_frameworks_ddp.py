"""The framework callbacks under DDP (issue #22's compatibility table): Lightning's "ddp"
strategy and the Hugging Face Trainer under torchrun, two CPU processes with gloo. Each is a
script run as its users run it (Lightning re-launches the script for rank 1; torchrun starts
both), writing one run with a stream per rank."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import diagnostics

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]

LIGHTNING = textwrap.dedent("""
    import sys
    import lightning.pytorch as pl
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset
    from hooks.lightning import DiagnosticsCallback

    class Boring(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
            self.criterion = nn.CrossEntropyLoss()

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            return self.criterion(self(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    if __name__ == "__main__":
        pl.seed_everything(0)
        g = torch.Generator().manual_seed(0)
        x, y = torch.randn(64, 8, generator=g), torch.randint(0, 3, (64,), generator=g)
        trainer = pl.Trainer(max_epochs=1, limit_train_batches=4, logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", devices=2,
                             strategy="ddp", callbacks=[DiagnosticsCallback(run_dir=sys.argv[1], name="pl", every=1,
                                                                            evaluate=False)])
        trainer.fit(Boring(), DataLoader(TensorDataset(x, y), batch_size=8))
""")

TRANSFORMERS = textwrap.dedent("""
    import sys
    import torch
    import transformers
    from hooks.transformers import DiagnosticsCallback

    class Tokens(torch.utils.data.Dataset):
        def __init__(self, n, seed):
            g = torch.Generator().manual_seed(seed)
            self.ids = torch.randint(1, 100, (n, 12), generator=g)
            self.labels = (self.ids[:, 0] > 50).long()

        def __len__(self):
            return len(self.ids)

        def __getitem__(self, i):
            return {"input_ids": self.ids[i], "attention_mask": torch.ones(12, dtype=torch.long),
                    "labels": self.labels[i]}

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, num_labels=2)
    args = transformers.TrainingArguments(output_dir="hf-trainer-output", max_steps=4, per_device_train_batch_size=4,
                                          report_to=[], use_cpu=True, save_strategy="no", logging_steps=1,
                                          disable_tqdm=True, ddp_backend="gloo")
    trainer = transformers.Trainer(model=transformers.BertForSequenceClassification(config), args=args,
                                   train_dataset=Tokens(32, 0),
                                   callbacks=[DiagnosticsCallback(run_dir=sys.argv[1], name="hf", every=1,
                                                                  evaluate=False)])
    trainer.train()
""")


def _run(command: list[str], tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-4000:])


def _assert_two_ranks_recorded(path: Path, steps: int) -> None:
    r = diagnostics.open_run(path)
    assert r.status()["state"] == "finished" and r.status()["ranks"] == 2 and not r.status()["faults"]
    loss = r.scalars(names=["loss"])
    assert sorted(loss["rank"].unique()) == [0, 1]
    assert sorted(loss[loss["rank"] == 0]["step"]) == list(range(steps))
    assert set(r.distributions(kind="weight")["rank"]) == {0, 1}


def test_lightning_ddp_records_one_stream_per_rank(tmp_path):
    pytest.importorskip("lightning")
    script = tmp_path / "train_pl.py"
    script.write_text(LIGHTNING)
    _run([sys.executable, str(script), str(tmp_path / "runs")], tmp_path)
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["pl"]
    _assert_two_ranks_recorded(tmp_path / "runs" / "pl", steps=4)  # limit_train_batches=4 on each rank


def test_transformers_trainer_under_torchrun_records_one_stream_per_rank(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    script = tmp_path / "train_hf.py"
    script.write_text(TRANSFORMERS)
    with socket.socket() as s:  # torchrun's --master_port 0 hangs: a free port of our own
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
          str(script), str(tmp_path / "runs")], tmp_path)
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["hf"]
    _assert_two_ranks_recorded(tmp_path / "runs" / "hf", steps=4)
