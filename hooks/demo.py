"""The built-in demo tells the loop the dashboard serves, on scikit-learn's bundled digits
(8×8 images, 10 classes, no download), with `hooks.watch` attached:

1. `digits-baseline` has a bug practitioners really make: the model ends in a softmax and
   its probabilities go into CrossEntropyLoss, which applies log_softmax itself (gradients
   shrink, training crawls). The Health page finds it.
2. `digits-raw-pixels`: the fixed model on raw 0..16 pixels (a preprocessing variant:
   the Health page flags the input scale; the Ensemble page's third member).
3. `digits-fixed`: the softmax removed. Compare runs (A = baseline, B = fixed) shows
   which validation samples the fix fixed and which it broke, on the same samples.

Then the seed's two example problems from examples/ (simulated OCT B-scans, simulated FMCW
radar breathing), when the package runs from a checkout.

    python -m hooks.demo --runs-dir runs
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

import hooks


def digits_split(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Dataset indices of the training and validation digits (80/20, a seeded permutation):
    the sample ids of both splits, so that an id names one image whichever split it is in."""
    order = np.random.default_rng(seed).permutation(len(load_digits().target))
    cut = int(0.8 * len(order))
    return order[:cut], order[cut:]


def digits_tensors(seed: int = 0, standardise: bool = True):
    """Digits as (x_train, y_train, x_val, y_val) tensors, split as `digits_split(seed)`."""
    data = load_digits()
    x = data.images.astype(np.float32)[:, None]  # N×1×8×8, values 0..16
    y = data.target.astype(np.int64)
    tr, va = digits_split(seed)
    if standardise:
        mean, std = x[tr].mean(), x[tr].std()
        x = (x - mean) / std
    return torch.from_numpy(x[tr]), torch.from_numpy(y[tr]), torch.from_numpy(x[va]), torch.from_numpy(y[va])


def small_cnn(softmax_head: bool = False) -> nn.Module:
    """The demo's CNN; `softmax_head` appends the baseline's bug (a softmax before CrossEntropyLoss)."""
    layers = [
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(inplace=True),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(32, 64), nn.ReLU(), nn.Dropout(0.2),
        nn.Linear(64, 10),
    ]
    return nn.Sequential(*layers, *([nn.Softmax(dim=1)] if softmax_head else []))


def train_digits(runs_dir: str | Path, name: str, epochs: int = 8, standardise: bool = True,
                 lr: float = 0.05, every: int = 5, seed: int = 0, batch_size: int = 32,
                 softmax_head: bool = False) -> Path:
    """Train the small CNN on digits with hooks attached; returns the run's path."""
    torch.manual_seed(seed)
    x_tr, y_tr, x_va, y_va = digits_tensors(seed, standardise)
    ids_tr, ids_va = (torch.from_numpy(i) for i in digits_split(seed))  # dataset indices: unique across splits
    model = small_cnn(softmax_head)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * (len(x_tr) // batch_size + 1))
    criterion = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(seed)
    config = {"dataset": "sklearn digits", "epochs": epochs, "lr": lr, "standardise": standardise,
              "batch_size": batch_size, "seed": seed,
              "softmax_head": softmax_head}
    with hooks.watch(model, optimizer=opt, loss_fn=criterion, run_dir=runs_dir, name=name, every=every,
                     config=config, class_names=[str(i) for i in range(10)]) as run:
        for epoch in range(epochs):
            model.train()
            for idx in torch.randperm(len(x_tr), generator=gen).split(batch_size):
                opt.zero_grad()
                logits = model(x_tr[idx])
                loss = criterion(logits, y_tr[idx])
                run.log_batch(logits, y_tr[idx], ids=ids_tr[idx])  # per-sample records: training dynamics
                loss.backward()
                opt.step()
                sched.step()
            val = [(x_va[i:i + 128], y_va[i:i + 128], ids_va[i:i + 128]) for i in range(0, len(x_va), 128)]
            last = epoch == epochs - 1
            metrics = run.evaluate(val, split="val", attribute_worst=32 if last else 0, progress=False)
            if last:  # the training images too: previews for the Data map's suspects
                train = [(x_tr[i:i + 256], y_tr[i:i + 256], ids_tr[i:i + 256]) for i in range(0, len(x_tr), 256)]
                run.evaluate(train, split="train", attribute_worst=0, progress=False)
            print(f"  {name}: epoch {epoch + 1}/{epochs}  val acc {metrics['accuracy']:.3f}", flush=True)
    return run.path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train the built-in digits demo with hooks attached.")
    parser.add_argument("--runs-dir", default="runs", help="folder to write the runs into (default: runs)")
    parser.add_argument("--epochs", type=int, default=8, help="epochs per run (default: 8)")
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error("--epochs must be at least 1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # models this small only wait on a second thread
    try:
        for name, standardise, softmax_head in DIGITS_RUNS:
            print(f"training {name} ...", flush=True)
            path = train_digits(args.runs_dir, name, epochs=args.epochs, standardise=standardise,
                                softmax_head=softmax_head)
            print(f"  recorded {path}", flush=True)
        for example in _seed_examples():
            print(f"training {example.__name__} ...", flush=True)
            print(f"  recorded {example.train(args.runs_dir)}", flush=True)
    finally:
        torch.set_num_threads(threads)
    print(story(args.runs_dir), flush=True)


def story(runs_dir: str | Path) -> str:
    """What the digits runs show, read off the runs themselves: the baseline's health
    finding, and what the fix changed on the same validation samples."""
    import diagnostics

    runs_dir = Path(runs_dir)
    baseline, fixed = runs_dir / DIGITS_RUNS[0][0], runs_dir / DIGITS_RUNS[2][0]
    found = [f for f in diagnostics.open_run(baseline).health() if f.rule == "softmax_before_cross_entropy"]
    c = diagnostics.compare(baseline, fixed)
    s = c.summary
    e = diagnostics.ensemble([runs_dir / name for name, *_ in DIGITS_RUNS])
    lines = ["", "The story of the digits runs (open them in the dashboard):",
             f"  1. Health of {baseline.name}: " + (found[0].message if found else "no finding on its loss input."),
             f"  2. {fixed.name} removes the softmax. Compare runs, A = {baseline.name}, B = {fixed.name}: "
             f"val accuracy {s['accuracy_a']:.1%} -> {s['accuracy_b']:.1%}, {s['fixed']} samples fixed, "
             f"{s['broken']} broken (p = {s['p_value']:.2g}), on the same {s['shared']} samples.",
             f"  3. Ensemble of the three digits runs: {e.reading()}; {e.outcome()}."]
    return "\n".join(lines)


# name, standardised pixels, softmax before CrossEntropyLoss (the baseline's bug); trained
# in this order, so that the Compare page's default B for the baseline is the fixed run
# (the most recent run on the same samples)
DIGITS_RUNS = (("digits-baseline", True, True), ("digits-raw-pixels", False, False), ("digits-fixed", True, False))


def _seed_examples() -> list:
    """The seed's two problems (OCT B-scans, FMCW radar breathing) from the checkout's
    examples/ folder; an installed package without the checkout trains digits only."""
    folder = Path(__file__).resolve().parents[1] / "examples"
    if not (folder / "oct_cnn.py").exists():
        print("  (examples/ not found next to the package: skipping the OCT and radar examples)")
        return []
    import importlib
    import sys

    sys.path.insert(0, str(folder.parent))
    try:
        return [importlib.import_module("examples.oct_cnn"), importlib.import_module("examples.radar_cnn")]
    finally:
        sys.path.remove(str(folder.parent))


if __name__ == "__main__":
    main()
