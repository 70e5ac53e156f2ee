"""Train a small 2-D CNN on simulated OCT B-scans (CNV, DME, DRUSEN, NORMAL) with hooks attached.

The simulator (`examples/oct_simulator.py`) draws mild disease and weak scans often enough
that the model stays clearly imperfect (about 80% validation accuracy at the defaults), so
error review has the field's confusions to show: small drusen read as NORMAL, drusen and
CNV mixed up over a raised RPE, a few CNV/DME mix-ups over fluid, dim scans missed.
Training batches are logged with their dataset indices as ids, and every epoch ends with
`run.evaluate` on the validation scans (attributions of the worst at the last), so the
index joins a reviewed sample to the simulator's `meta` (severity, quality, ...).
About 15–20 s on one CPU thread (the default; see --threads).

    python examples/oct_cnn.py --runs-dir runs
"""

from __future__ import annotations

import argparse
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

import hooks

try:
    from examples.oct_simulator import CLASSES, make_oct_dataset
except ImportError:  # run as a script: python examples/oct_cnn.py
    from oct_simulator import CLASSES, make_oct_dataset


def oct_cnn(num_classes: int = len(CLASSES)) -> nn.Module:
    """Average-pool the speckle to 32 px, three conv blocks (32 → 4 px), a linear head on
    the flattened 4×4 map (where a sign sits matters: above or below the RPE); ~22k parameters."""
    layers: list[tuple[str, nn.Module]] = [("pool_in", nn.AvgPool2d(2))]
    for i, (c_in, c_out) in enumerate(((1, 16), (16, 32), (32, 48)), start=1):
        layers += [(f"conv{i}", nn.Conv2d(c_in, c_out, 3, padding=1)), (f"bn{i}", nn.BatchNorm2d(c_out)),
                   (f"relu{i}", nn.ReLU(inplace=True)), (f"pool{i}", nn.MaxPool2d(2))]
    layers += [("flatten", nn.Flatten()), ("dropout", nn.Dropout(0.2)), ("head", nn.Linear(48 * 4 * 4, num_classes))]
    return nn.Sequential(OrderedDict(layers))


def train(
    runs_dir: str | Path = "runs",
    name: str = "oct-cnn",
    n: int = 2400,
    epochs: int = 8,
    seed: int = 0,
    size: int = 64,
    batch_size: int = 64,
    lr: float = 3e-3,
    val_fraction: float = 0.25,
) -> Path:
    """Simulate `n` scans, train on 1 - `val_fraction` of them, log val/acc each epoch; returns the run path."""
    torch.manual_seed(seed)
    images, labels, meta = make_oct_dataset(n, size=size, seed=seed)
    # Standardise with fixed constants, not batch statistics: dim scans must stay dim.
    x = torch.from_numpy((images - 0.15) / 0.2)
    y = torch.from_numpy(labels)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = max(1, int(round(val_fraction * n)))
    val_ids, train_ids = order[:n_val], order[n_val:]

    model = oct_cnn()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * -(-len(train_ids) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1))
    criterion = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(seed + 1)
    config = {"dataset": "simulated OCT B-scans (examples/oct_simulator.py)", "n": n, "size": size,
              "epochs": epochs, "batch_size": batch_size, "lr": lr, "val_fraction": val_fraction, "seed": seed}
    val_batches = [(x[ids], y[ids], ids) for ids in val_ids.split(256)]
    # what the simulator knows about each sample, for the error review's slices
    val_meta = pd.DataFrame({k: np.asarray(meta[k])[val_ids.numpy()]
                             for k in ("severity", "quality", "brightness") if k in meta},
                            index=val_ids.numpy())
    with hooks.watch(model, optimizer=opt, loss_fn=criterion, run_dir=runs_dir, name=name, config=config,
                     class_names=list(CLASSES), seed=seed) as run:
        for epoch in range(epochs):
            model.train()
            for batch in train_ids[torch.randperm(len(train_ids), generator=gen)].split(batch_size):
                opt.zero_grad()
                logits = model(x[batch])
                loss = criterion(logits, y[batch])
                run.log_batch(logits, y[batch], ids=batch)  # ids: dataset indices, to join with `meta`
                loss.backward()
                opt.step()
                sched.step()
            # One record per validation scan for error review; attributions of the worst at the end.
            metrics = run.evaluate(val_batches, split="val", attribute_worst=32 if epoch == epochs - 1 else 0,
                                   progress=False, metadata=val_meta)
            run.log_scalar("val/acc", metrics["accuracy"])
            print(f"  {name}: epoch {epoch + 1}/{epochs}  loss {loss.item():.3f}  val acc {metrics['accuracy']:.3f}",
                  flush=True)
        # the training scans too (no attributions): previews of the samples the Data map suspects
        run.evaluate([(x[ids], y[ids], ids) for ids in train_ids.split(256)], split="train", attribute_worst=0,
                     progress=False)
    model.eval()
    with torch.no_grad():
        pred = model(x[val_ids]).argmax(1).numpy()
    val = val_ids.numpy()
    _print_confusions(pred, labels[val], meta["severity"][val], meta["quality"][val])
    return run.path


def _print_confusions(pred: np.ndarray, true: np.ndarray, severity: np.ndarray, quality: np.ndarray) -> None:
    """Where the errors are: the confusion matrix and accuracy by severity and scan quality."""
    k = len(CLASSES)
    matrix = np.bincount(true * k + pred, minlength=k * k).reshape(k, k)
    print("  confusion, rows true, columns predicted:")
    print("  " + " " * 8 + "".join(f"{c:>8}" for c in CLASSES))
    for c, row in zip(CLASSES, matrix):
        print(f"  {c:>8}" + "".join(f"{v:8d}" for v in row))
    right = pred == true
    sick = true != CLASSES.index("NORMAL")
    for label, mask in (("sick, severity < 0.3", sick & (severity < 0.3)),
                        ("sick, severity >= 0.3", sick & (severity >= 0.3)),
                        ("quality < 0.45", quality < 0.45), ("quality >= 0.45", quality >= 0.45)):
        if mask.any():
            print(f"  accuracy on {label:<22} {right[mask].mean():.3f}  (n={mask.sum()})")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train a small CNN on simulated OCT B-scans with hooks attached.")
    parser.add_argument("--runs-dir", default="runs", help="folder to write the run into (default: runs)")
    parser.add_argument("--name", default="oct-cnn", help="run name (default: oct-cnn)")
    parser.add_argument("--n", type=int, default=2400, help="scans to simulate, 25%% held out (default: 2400)")
    parser.add_argument("--epochs", type=int, default=8, help="training epochs (default: 8)")
    parser.add_argument("--seed", type=int, default=0, help="seed for data, split and weights (default: 0)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default: 1; a model this small gains nothing from more, "
                             "and on a busy machine loses several-fold)")
    args = parser.parse_args(argv)
    if args.n < 8 or args.epochs < 1 or args.threads < 1:
        parser.error("--n must be at least 8, --epochs and --threads at least 1")
    started, threads = time.perf_counter(), torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        path = train(args.runs_dir, name=args.name, n=args.n, epochs=args.epochs, seed=args.seed)
    finally:
        torch.set_num_threads(threads)  # main() may run inside a larger process (tests)
    print(f"recorded {path} in {time.perf_counter() - started:.1f} s", flush=True)


if __name__ == "__main__":
    main()
