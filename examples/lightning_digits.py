"""PyTorch Lightning with diagnostics: a small CNN on scikit-learn's digits, one callback added.

The callback records the loss of every optimizer step, activations, gradients, weights and
updates on a schedule, the outputs against the labels (through the module's
`nn.CrossEntropyLoss`), Lightning's validation metrics, and after fit one row per
validation image for error review. About 10 s on a CPU, half of it importing Lightning.

    python examples/lightning_digits.py --runs-dir runs
    diagnostics dashboard runs
"""

from __future__ import annotations

import argparse

import lightning.pytorch as pl
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from hooks.lightning import DiagnosticsCallback


class DigitsClassifier(pl.LightningModule):
    def __init__(self, lr: float = 0.05):
        super().__init__()
        self.save_hyperparameters()  # recorded as the run's config
        self.net = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(32 * 4 * 4, 10),
        )
        self.criterion = nn.CrossEntropyLoss()

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y, _ids = batch  # the ids are for the callback: per-sample training records
        return self.criterion(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y, _ids = batch
        logits = self(x)
        self.log("val_loss", self.criterion(logits, y))
        self.log("val_acc", (logits.argmax(dim=1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)


def digits_loaders(batch_size: int = 64) -> tuple[DataLoader, DataLoader]:
    """Train on 80% of the digits; batches carry dataset indices as sample ids."""
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0  # N×1×8×8 in [0, 1]
    y = torch.tensor(digits.target)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    train, val = order[: int(0.8 * len(x))], order[int(0.8 * len(x)):]
    return (DataLoader(TensorDataset(x[train], y[train], train), batch_size=batch_size, shuffle=True),
            DataLoader(TensorDataset(x[val], y[val], val), batch_size=256))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs-dir", default="runs")
    parser.add_argument("--name", default="lightning-digits")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()

    pl.seed_everything(0)
    callback = DiagnosticsCallback(run_dir=args.runs_dir, name=args.name,
                                      class_names=[str(d) for d in range(10)])
    trainer = pl.Trainer(max_epochs=args.epochs, callbacks=[callback], accelerator="cpu", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(DigitsClassifier(), *digits_loaders())
    print(f"recorded {callback.run.path} — browse it with: diagnostics dashboard {args.runs_dir}")


if __name__ == "__main__":
    main()
