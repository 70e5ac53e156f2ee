"""Segmentation of simulated shapes with hooks attached: error review per pixel.

Each 32×32 image holds a few discs and squares (squares half as bright as discs) over a
background of noise and a slow illumination gradient; every pixel is labelled background, disc or square. Some images
are dim (low contrast) and some shapes small, so a tiny fully convolutional network, trained
for a few seconds on a CPU, stays imperfect where it should: shape edges, small squares read
as discs, dim images. The border pixels of each image are labelled -100 (left out of the loss
and of the evaluation), as a dataset marks the pixels it does not know.

`run.evaluate` on the validation images records one row per image (mean loss over its pixels,
pixel accuracy in `position_accuracy`) and one per pixel in the positions table: Error review gives IoU and Dice per
class and the confusion matrix over pixels, Sample detail the true and predicted masks over
the image with the disagreement highlighted.

    python examples/segmentation.py --runs-dir runs
    diagnostics dashboard runs
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import hooks

CLASSES = ["background", "disc", "square"]
IGNORE = -100


def make_shapes(n: int, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict]:
    """`n` images (n, 1, size, size) in [0, 1], their masks (n, size, size) and per image what was
    drawn: `contrast` (how much brighter the shapes are) and `shapes` (how many)."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:size, 0:size]
    images = np.empty((n, 1, size, size), dtype=np.float32)
    masks = np.zeros((n, size, size), dtype=np.int64)
    contrast, count = np.empty(n), np.empty(n, dtype=np.int64)
    for i in range(n):
        contrast[i] = rng.choice([rng.uniform(0.08, 0.2), rng.uniform(0.3, 0.6)], p=[0.25, 0.75])
        count[i] = rng.integers(1, 4)
        img = 0.3 + 0.15 * (rows * rng.uniform(-1, 1) + cols * rng.uniform(-1, 1)) / size
        for _ in range(count[i]):
            r = rng.uniform(2, 7)
            cy, cx = rng.uniform(r, size - r, size=2)
            if rng.random() < 0.5:
                inside, lift = (rows - cy) ** 2 + (cols - cx) ** 2 <= r ** 2, contrast[i]
                masks[i][inside] = 1
            else:  # squares are half as bright as discs: in a dim image they are hard to tell apart
                inside, lift = (np.abs(rows - cy) <= r) & (np.abs(cols - cx) <= r), contrast[i] / 2
                masks[i][inside] = 2
            img = np.where(inside, img + lift, img)
        img = img + rng.normal(0, 0.08, size=img.shape)
        images[i, 0] = np.clip(img, 0, 1)
    masks[:, 0, :] = masks[:, -1, :] = masks[:, :, 0] = masks[:, :, -1] = IGNORE
    return images, masks, {"contrast": contrast, "shapes": count}


def segmenter(classes: int = len(CLASSES), width: int = 16) -> nn.Module:
    """Four 3×3 conv layers (the second dilated: a 9-pixel view) and a 1×1 head: (N, classes, H, W)."""
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=2, dilation=2), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
        nn.Conv2d(width, classes, 1),
    )


def train(runs_dir: str | Path = "runs", name: str = "segmentation", n: int = 480, epochs: int = 6, seed: int = 0,
          batch_size: int = 32, lr: float = 1e-2, size: int = 32) -> Path:
    """Simulate `n` images, train on three quarters, evaluate per pixel on the rest; returns the run path."""
    torch.manual_seed(seed)
    images, masks, meta = make_shapes(n, size=size, seed=seed)
    x, y = torch.from_numpy(images), torch.from_numpy(masks)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = max(2, n // 4)
    val_ids, train_ids = order[:n_val], order[n_val:]
    model = segmenter()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    criterion = nn.CrossEntropyLoss(ignore_index=IGNORE)
    gen = torch.Generator().manual_seed(seed + 1)
    val_batches = [(x[ids], y[ids], ids) for ids in val_ids.split(64)]
    val_meta = {k: np.asarray(v)[val_ids.numpy()] for k, v in meta.items()}
    config = {"dataset": "simulated shapes (examples/segmentation.py)", "n": n, "size": size, "epochs": epochs,
              "batch_size": batch_size, "lr": lr, "seed": seed}
    with hooks.watch(model, optimizer=opt, loss_fn=criterion, run_dir=runs_dir, name=name, config=config,
                     class_names=list(CLASSES), seed=seed) as run:
        for epoch in range(epochs):
            model.train()
            for batch in train_ids[torch.randperm(len(train_ids), generator=gen)].split(batch_size):
                opt.zero_grad()
                loss = criterion(model(x[batch]), y[batch])
                loss.backward()
                opt.step()
            metrics = run.evaluate(val_batches, split="val", attribute_worst=0, progress=False, metadata=val_meta)
            print(f"  {name}: epoch {epoch + 1}/{epochs}  loss {loss.item():.3f}  "
                  f"val pixel accuracy {metrics['position_accuracy']:.3f}", flush=True)
    return run.path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train a tiny segmenter on simulated shapes with hooks attached.")
    parser.add_argument("--runs-dir", default="runs", help="folder to write the run into (default: runs)")
    parser.add_argument("--name", default="segmentation", help="run name (default: segmentation)")
    parser.add_argument("--n", type=int, default=480, help="images to simulate, a quarter held out (default: 480)")
    parser.add_argument("--epochs", type=int, default=6, help="training epochs (default: 6)")
    parser.add_argument("--seed", type=int, default=0, help="seed for data, split and weights (default: 0)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    args = parser.parse_args(argv)
    if args.n < 8 or args.epochs < 1 or args.threads < 1:
        parser.error("--n must be at least 8, --epochs and --threads at least 1")
    started, threads = time.perf_counter(), torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        path = train(args.runs_dir, name=args.name, n=args.n, epochs=args.epochs, seed=args.seed)
    finally:
        torch.set_num_threads(threads)
    print(f"recorded {path} in {time.perf_counter() - started:.1f} s", flush=True)


if __name__ == "__main__":
    main()
