"""Planted-bug suite for the health rules: does each rule fire on its bug, and stay quiet
on healthy runs that look like real training?

A case trains one tiny run into a folder (seeded, CPU, seconds) and names what
`diagnostics.health.check` should say about it:

    Case(name, train, rule, layer, steps)
        train(folder) -> run path      trains the run with `hooks.watch` attached
        rule                           the rule expected to fire (warning or error);
                                       None: a healthy control, where no warning or error may appear
        layer                          the layer the finding must name (None: any, or a run-level finding)
        steps                          (first, last) step range the finding must overlap (None: any)

`CASES` holds them all, planted bugs first; every rule registered in diagnostics/health/
has one (tests/diagnostics/test_health_suite.py checks it): a new rule adds its case by
appending to it (`CASES.append(Case(...))` or extending the list below). `run_suite(cases)` trains and
checks each, `summarise(results)` gives recall (planted cases whose rule fired at the
right layer and steps, as a warning or error) and the false-alarm rate (healthy controls
with any warning or error). tests/diagnostics/test_health_suite.py (marked slow) asserts
100% recall and no false alarm on the same list.

Usage::

    PYTHONPATH=. .venv/bin/python benchmarks/health_suite.py            # table, ~1-3 min
    PYTHONPATH=. .venv/bin/python benchmarks/health_suite.py --json benchmarks/results/health_suite.json
    PYTHONPATH=. .venv/bin/python benchmarks/health_suite.py --only label_noise,oct
    PYTHONPATH=. .venv/bin/python benchmarks/health_suite.py --public   # + public scripts' controls

Torch runs on one thread (`--threads`): the models are tiny.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import platform
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # examples/ from a checkout
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

import diagnostics
import hooks
from diagnostics.health import diagnose

LOUD = ("error", "warning")


@dataclass(frozen=True)
class Case:
    """One planted bug (`rule` set) or healthy control (`rule` None); see the module docstring."""

    name: str
    train: Callable[[Path], Path]
    rule: str | None = None
    layer: str | None = None
    steps: tuple[int, int] | None = None


# ---------------------------------------------------------------------------------
# Data and a training loop that looks like real training (epochs, shuffled batches)


def blobs(n=256, d=10, c=3, seed=0):
    """A learnable c-class problem: the label is the argmax of a random linear map."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    return x, (x @ torch.randn(d, c, generator=g)).argmax(1)


def digits(standardise=True, seed=0):
    from hooks.demo import digits_tensors
    return digits_tensors(seed, standardise)


def fit(model, x, y, folder, name, epochs=3, lr=0.05, adam=False, crit=None, batch=64, every=1, ids=False,
        val=None, patience=None, seed=0, batch_hook=None, max_steps=None) -> Path:
    """Train `model` on (x, y) with hooks attached; `val`: (x, y) for val/loss each epoch;
    `patience`: early stopping on it; `batch_hook(step, xb)`: replaces a batch (planted bugs)."""
    torch.manual_seed(seed)
    crit = crit or nn.CrossEntropyLoss()
    opt = (torch.optim.Adam(model.parameters(), lr=lr) if adam
           else torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9))
    task = "regression" if isinstance(crit, nn.MSELoss) else "classification"
    gen, step, best, bad = torch.Generator().manual_seed(seed), 0, float("inf"), 0
    with hooks.watch(model, optimizer=opt, loss_fn=crit, run_dir=folder, name=name, every=every, task=task) as run:
        for _ in range(epochs):
            model.train()
            for idx in torch.randperm(len(x), generator=gen).split(batch):
                xb = x[idx] if batch_hook is None else batch_hook(step, x[idx])
                opt.zero_grad()
                out = model(xb)
                loss = crit(out, y[idx])
                if ids:
                    run.log_batch(out, y[idx], ids=idx, loss=loss)
                loss.backward()
                opt.step()
                step += 1
                if max_steps and step >= max_steps:
                    return Path(run.path)
            if val is not None:
                model.eval()
                with torch.no_grad():
                    v = float(crit(model(val[0]), val[1]))
                run.log_scalar("val/loss", v)
                best, bad = (v, 0) if v < best else (best, bad + 1)
                if patience is not None and bad >= patience:
                    break
    return Path(run.path)


def deep(act, n_layers=8, width=32, std=0.01, d_in=10, zero_bias=False, seed=0):
    torch.manual_seed(seed)
    layers, d = [], d_in
    for _ in range(n_layers):
        lin = nn.Linear(d, width)
        nn.init.normal_(lin.weight, std=std)
        if zero_bias:
            nn.init.zeros_(lin.bias)
        layers += [lin, act()]
        d = width
    return nn.Sequential(*layers, nn.Linear(width, 3))


def mlp(d_in=10, hidden=32, d_out=3, dropout=0.0, seed=0):
    torch.manual_seed(seed)
    extra = [nn.Dropout(dropout)] if dropout else []
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), *extra, nn.Linear(hidden, d_out))


def small_cnn(seed=0):
    from hooks.demo import small_cnn as cnn
    torch.manual_seed(seed)
    return cnn()


# ---------------------------------------------------------------------------------
# Planted bugs: one per rule of diagnostics/health/activations.py, gradients.py and fit.py


def _nonfinite(f):
    x, y = blobs()
    return fit(mlp(), x * 1e3, y, f, "nan", epochs=2, lr=1e30, max_steps=8)


def _dead(f):
    x, y = blobs()
    model = mlp(hidden=64)
    nn.init.constant_(model[0].bias, -10.0)
    return fit(model, x, y, f, "dead", epochs=5)


def _saturated(f):
    x, y = blobs()
    return fit(deep(nn.Tanh, n_layers=3, std=2.0), x, y, f, "saturated", epochs=2, lr=0.01)


def _vanishing(f):
    x, y = blobs()
    return fit(deep(nn.Sigmoid), x, y, f, "sigmoid", epochs=5, lr=0.1)


def _exploding(f):
    x, y = blobs()
    model = deep(nn.ReLU, n_layers=8, std=3 * (2 / 32) ** 0.5, zero_bias=True)  # 3x the He gain per layer
    nn.init.normal_(model[0].weight, std=3 * (2 / 10) ** 0.5)
    return fit(model, x, y, f, "exploding", epochs=2, lr=1e-6)


def _spike(f):
    x, y, _, _ = digits()
    flat = x.flatten(1)
    plant = lambda step, xb: xb * 30 if step == 60 else xb  # one corrupted batch (a unit bug in a loader)
    return fit(mlp(64, 64, 10), flat, y, f, "spike", epochs=3, lr=0.02, batch_hook=plant)


def _tanh_shrinks(f):
    x, y = blobs()
    return fit(deep(nn.Tanh, n_layers=6, zero_bias=True), x, y, f, "tanh", epochs=2, lr=0.1, max_steps=6)


def _lr_tiny(f):
    x, y = blobs()
    return fit(mlp(), x, y, f, "lr_tiny", epochs=5, lr=1e-7)


def _imbalance(f):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(512, 10, generator=g)
    y = torch.zeros(512, dtype=torch.long)
    y[torch.rand(512, generator=g) < 0.10] = 1
    y[torch.rand(512, generator=g) < 0.05] = 2
    return fit(mlp(hidden=16), x, y, f, "imbalance", epochs=4)


def _random_labels(f):
    x, _ = blobs(n=1024)
    y = torch.randint(0, 3, (1024,), generator=torch.Generator().manual_seed(3))
    return fit(mlp(), x, y, f, "random_labels", epochs=2, lr=0.01)


def _overfit(f):
    x, _ = blobs(n=32, d=20, seed=3)
    y = torch.randint(0, 3, (32,), generator=torch.Generator().manual_seed(5))  # nothing to generalise
    return fit(mlp(20, 256), x, y, f, "overfit", epochs=80, lr=0.01, adam=True, batch=32, every=10,
               val=blobs(n=256, d=20, seed=4))


def _flipped_digits(f):
    x, y, _, _ = digits()
    rng = np.random.default_rng(0)
    flip = rng.choice(len(y), size=len(y) // 10, replace=False)  # 10% to another class
    y = y.clone()
    y[flip] = torch.from_numpy((y[flip].numpy() + rng.integers(1, 10, len(flip))) % 10)
    return fit(small_cnn(), x, y, f, "flipped", epochs=12, lr=0.05, batch=32, every=100, ids=True)


def _raw_digits(f):
    x, y, _, _ = digits(standardise=False)
    return fit(small_cnn(), x, y, f, "raw_digits", epochs=2, lr=0.05, batch=32, every=5)


def _amp_overflow(f):
    """float16 autocast on inputs past float16's range (1e5x): every gradient is NaN at any
    scale and the GradScaler skips every step."""
    x, y = blobs()
    model, crit = mlp(), nn.CrossEntropyLoss()
    opt, scaler = torch.optim.SGD(model.parameters(), lr=0.05), torch.amp.GradScaler("cpu")
    with hooks.watch(model, opt, crit, run_dir=f, name="amp_overflow", every=5, scaler=scaler) as run:
        for step in range(40):
            idx = torch.arange(step * 32, step * 32 + 32) % len(x)
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.float16):
                loss = crit(model(x[idx] * 1e5), y[idx])
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
    return Path(run.path)


PLANTED = [
    Case("nan_from_huge_lr", _nonfinite, "nonfinite", "2"),
    Case("dead_relu_negative_bias", _dead, "dead_units", "1"),
    Case("tanh_saturated_large_init", _saturated, "saturation", "1"),
    Case("deep_sigmoid_small_init", _vanishing, "vanishing_gradients", "0"),
    Case("relu_thrice_he_gain", _exploding, "exploding_gradients", "0"),
    Case("one_batch_scaled_30x", _spike, "grad_norm_spikes", None, (60, 60)),
    Case("deep_tanh_small_init", _tanh_shrinks, "activation_scale_depth", "10"),
    Case("lr_1e-7", _lr_tiny, "update_ratio", "0.weight"),
    Case("class_imbalance", _imbalance, "output_vs_label", "train/class"),
    Case("random_labels", _random_labels, "loss_vs_baseline"),
    Case("tiny_train_set", _overfit, "overfitting"),
    Case("digits_10pct_flipped", _flipped_digits, "label_noise"),
    Case("raw_digit_pixels", _raw_digits, "input_scale", "0"),
    Case("fp16_overflow_every_step", _amp_overflow, "amp_skipped_steps"),
]


# ---------------------------------------------------------------------------------
# Planted bugs for the loop, data and loss rules (diagnostics/health/loop.py, data.py,
# loss.py), ported from tests/diagnostics/test_health_loop.py and test_health_data.py


def loop(model, x, y, folder, name, opt=None, steps=60, batch=30, crit=None, head=None, zero_grad=True,
         sched=None, clip=None, validate=None, shuffle=False, ids=False, evaluate=None, every="auto", task=None):
    """A plain step loop (the planted bug in its arguments): `head` between model and loss,
    `sched(opt)` a scheduler stepped every batch, `validate(model, run)` every 10 steps,
    `evaluate` {split: (x, y, ids)} after the last step."""
    crit = crit or nn.CrossEntropyLoss()
    opt = opt or torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = sched(opt) if sched else None
    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(len(x), generator=gen) if shuffle else torch.arange(len(x))
    with hooks.watch(model, optimizer=opt, loss_fn=crit, run_dir=folder, name=name, every=every, task=task) as run:
        for step in range(steps):
            i = (step * batch) % (len(x) - batch)
            if shuffle and step and i < batch:
                order = torch.randperm(len(x), generator=gen)
            idx = order[i:i + batch]
            if zero_grad:
                opt.zero_grad()
            out = model(x[idx]) if head is None else head(model(x[idx]))
            if ids:
                run.log_batch(out, y[idx], ids=idx)
            crit(out, y[idx]).backward()
            if clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            if sched is not None:
                sched.step()
            if validate is not None and step % 10 == 9:
                validate(model, run)
        for split, batch_ in (evaluate or {}).items():
            run.evaluate([batch_], split=split, attribute_worst=0, progress=False)
    return Path(run.path)


def flat_digits():
    x, y, xv, yv = digits()
    return x.flatten(1), y, xv.flatten(1), yv


def _dmlp(bn=False, dropout=0.0, d_out=10, seed=0):
    torch.manual_seed(seed)
    mid = [nn.BatchNorm1d(64)] if bn else []
    return nn.Sequential(nn.Linear(64, 64), *mid, nn.ReLU(), nn.Dropout(dropout), nn.Linear(64, d_out))


def _case(name, model=_dmlp, opt=None, prep=None, **kw):
    """train(folder) for a planted loop/data/loss bug on flat digits: `opt(model)` builds the
    optimizer (and may plant the bug), `prep(x, y)` the data."""
    def train(f):
        x, y, _, _ = flat_digits()
        x, y = prep(x, y) if prep else (x, y)
        m = model()
        return loop(m, x, y, f, name, opt=opt(m) if opt else None, **kw)
    return train


def _head_replaced(m):
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    m[-1] = nn.Linear(64, 10)  # a new head after the optimizer was built
    return opt


def _only_bn_trains(m):
    for name, p in m.named_parameters():
        p.requires_grad = name.startswith("1.")  # only the BatchNorm's affine parameters
    return torch.optim.Adam([p for p in m.parameters() if p.requires_grad])


def _val_dropout_on(f):
    x, y, xv, yv = flat_digits()

    def validate(model, run):  # the user's own validation, model.eval() forgotten
        with torch.no_grad():
            run.log_scalar("val/loss", nn.functional.cross_entropy(model(xv), yv))
    return loop(_dmlp(dropout=0.5), x, y, f, "dropout_on", validate=validate)


def _val_copies_train(f):
    x, y, xv, yv = flat_digits()
    xv, yv = torch.cat([xv, x[:60]]), torch.cat([yv, y[:60]])  # 60 training images in the validation set
    ev = {"train": (x, y, torch.arange(len(x))), "val": (xv, yv, torch.arange(len(xv)) + 10_000)}
    return loop(_dmlp(), x, y, f, "leak", batch=32, shuffle=True, evaluate=ev, every=5)


def _loss_case(name, d_out=10, prep=None, **kw):
    return _case(name, lambda: _dmlp(d_out=d_out), prep=prep, steps=40, batch=32, shuffle=True, ids=True, every=5,
                 **kw)


_shuffle_labels = lambda x, y: (x, y[torch.randperm(len(y), generator=torch.Generator().manual_seed(1))])
_sort_by_label = lambda x, y: (x[torch.argsort(y, stable=True)], y[torch.argsort(y, stable=True)])
_SGD = lambda m: torch.optim.SGD(m.parameters(), lr=0.05)
LOOP_DATA_PLANTED = [
    Case("no_zero_grad", _case("no_zero_grad", opt=lambda m: torch.optim.Adam(m.parameters(), lr=1e-4), steps=120,
                               zero_grad=False), "gradients_not_reset"),
    Case("head_replaced_after_optimizer", _case("new_head", opt=_head_replaced), "not_in_optimizer", "3.weight"),
    Case("grad_clipped_to_zero", _case("clip0", opt=_SGD, clip=0.0, every=5), "stuck_parameters", "0.weight"),
    Case("all_frozen_but_batchnorm", _case("frozen", lambda: _dmlp(bn=True), _only_bn_trains), "frozen_model", "4"),
    Case("steplr_stepped_per_batch", _case("steplr", opt=lambda m: torch.optim.SGD(m.parameters(), 0.1, momentum=0.9),
                                           sched=lambda o: torch.optim.lr_scheduler.StepLR(o, 5, gamma=0.3)),
         "lr_collapse", "lr"),  # StepLR(step_size=5) meant per epoch, stepped per batch
    Case("adamw_weight_decay_20", _case("wd", opt=lambda m: torch.optim.AdamW(m.parameters(), lr=1e-2,
                                                                              weight_decay=20.0), every=3),
         "weight_decay_dominates", "0.weight"),
    Case("batchnorm_batch_4", _case("bn4", lambda: _dmlp(bn=True), batch=4, steps=40), "batchnorm_small_batch", "1"),
    Case("validation_dropout_on", _val_dropout_on, "eval_in_train_mode", "2"),
    Case("labels_shuffled", _case("shuffled_labels", prep=_shuffle_labels, steps=150, batch=32, shuffle=True, ids=True,
                                  every=5), "labels_unlearnable"),
    Case("val_copies_of_train", _val_copies_train, "split_leakage"),
    Case("class_sorted_unshuffled", _case("sorted", prep=_sort_by_label, steps=112, batch=32, ids=True, every=2),
         "unshuffled_batches", "train/class"),
    Case("mse_on_class_ids", _loss_case("mse_ids", 1, lambda x, y: (x, y.float().unsqueeze(1)), crit=nn.MSELoss()),
         "regression_loss_on_class_ids"),
    Case("softmax_dim0", _loss_case("softmax_dim0", head=lambda o: torch.softmax(o, dim=0)), "softmax_wrong_dim"),
    Case("nll_on_logits", _loss_case("nll_logits", crit=nn.NLLLoss()), "nll_input"),
    Case("softmax_into_cross_entropy", _loss_case("ce_softmax", head=lambda o: torch.softmax(o, 1)),
         "softmax_before_cross_entropy"),
    Case("sigmoid_into_bce_with_logits", _loss_case("double_sigmoid", 1, lambda x, y: (x, (y >= 5).float()[:, None]),
                                                    head=torch.sigmoid, crit=nn.BCEWithLogitsLoss()), "double_sigmoid"),
]
PLANTED += LOOP_DATA_PLANTED


# ---------------------------------------------------------------------------------
# Healthy controls: real-looking training, hard-but-clean data; no warning may appear


def _digits_bn_cnn_adam(f):
    x, y, xv, yv = digits()
    return fit(small_cnn(), x, y, f, "digits_bn_adam", epochs=6, lr=1e-3, adam=True, batch=32, every=20,
               ids=True, val=(xv, yv))


def _digits_dropout_mlp(f):
    x, y, xv, yv = digits()
    return fit(mlp(64, 128, 10, dropout=0.3), x.flatten(1), y, f, "digits_dropout", epochs=10, lr=0.02,
               batch=32, every=20, ids=True, val=(xv.flatten(1), yv))


def _regression_mlp(f):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1024, 5, generator=g)
    y = 2 * x[:, :1] - x[:, 1:2] + 0.5 * x[:, 2:3] ** 2 + 0.1 * torch.randn(1024, 1, generator=g)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1))
    return fit(model, x, y, f, "regression", epochs=8, lr=3e-3, adam=True, crit=nn.MSELoss(), every=10)


def _early_stopping(f):
    x, y, xv, yv = digits()
    x, y = x[:300].flatten(1), y[:300]  # a small training set: val loss turns up after a few epochs
    return fit(mlp(64, 256, 10), x, y, f, "early_stop", epochs=60, lr=3e-3, adam=True, batch=32, every=10,
               ids=True, val=(xv.flatten(1), yv), patience=3)


def _quiet(fn, *args, **kwargs):
    with contextlib.redirect_stdout(io.StringIO()):
        return Path(fn(*args, **kwargs))


def _oct(f):
    from examples.oct_cnn import train
    return _quiet(train, runs_dir=f, name="oct", n=1200, epochs=6)


def _radar(f):
    from examples.radar_cnn import train
    return _quiet(train, runs_dir=f, name="radar", n=800, epochs=10)


CONTROLS = [
    Case("digits_bn_cnn_adam", _digits_bn_cnn_adam),
    Case("digits_dropout_mlp", _digits_dropout_mlp),
    Case("regression_mlp", _regression_mlp),
    Case("early_stopping_small_set", _early_stopping),
    Case("oct_simulator_cnn", _oct),
    Case("radar_simulator_cnn", _radar),
]

# ---------------------------------------------------------------------------------
# The loss's contract: shapes


def _sum_regression(name, broadcast):
    """A 1-D regression MLP (the target: the sum of 8 inputs) with nn.MSELoss on (N, 1) outputs;
    `broadcast`: the targets are (N,), so the loss compares every output with every target
    (torch warns and goes on). Source: pytorch/pytorch#16045 and deepset-ai/FARM#229 (a
    regression head's outputs against labels of another shape, "Using a target size ... that
    is different to the input size"); the control is the same with (N, 1) targets."""
    def train(f):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(1024, 8, generator=g)
        y = x.sum(1) if broadcast else x.sum(1, keepdim=True)
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Using a target size")  # the planted bug's own warning
            return fit(model, x, y, f, name, epochs=8, lr=3e-3, adam=True, crit=nn.MSELoss(), every=10)
    return train


PLANTED.append(Case("mse_outputs_n1_targets_n", _sum_regression("mse_broadcast", True), "loss_shape_broadcast"))
CONTROLS.append(Case("sum_regression_matching_shapes", _sum_regression("mse_matching", False)))

# ---------------------------------------------------------------------------------
# The model's mode while the optimizer steps


def _validated_every_10(name, train_after):
    """A dropout MLP on flat digits, validated every 10 steps with model.eval();
    `train_after`: the loop calls model.train() again (the control), else it forgets to and
    the rest of the run trains with dropout off. Source: the forgotten model.train() after
    validation of the PyTorch forum's "model.train() and model.eval()" threads and of
    TrainCheck's silent-error workloads (a model left in eval mode)."""
    def train(f):
        x, y, xv, yv = flat_digits()

        def validate(model, run):
            model.eval()
            with torch.no_grad():
                run.log_scalar("val/loss", nn.functional.cross_entropy(model(xv), yv))
            if train_after:
                model.train()
        return loop(_dmlp(dropout=0.5), x, y, f, name, validate=validate, steps=80)
    return train


PLANTED.append(Case("eval_mode_not_undone", _validated_every_10("eval_not_undone", False), "trained_in_eval_mode"))


def _constant_init(m):
    """Every parameter one constant (a hand-written init that forgets the random part; e.g.
    StackOverflow "Why should weights of neural networks be initialized to random numbers?",
    q. 20027598): the hidden units never differ."""
    for p in m.parameters():
        nn.init.constant_(p, 0.05)
    return torch.optim.SGD(m.parameters(), lr=0.1)


def _deep_constant():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 10))


def _signed_binary(name, signed):
    """Binary labels given to BCEWithLogitsLoss as -1/1 (SVM-style; e.g. PyTorch forum "BCEWithLogitsLoss
    returns negative loss"): the loss has no minimum. The control maps them to 0/1."""
    def train(f):
        x, y, _, _ = flat_digits()
        t = (y >= 5).float()
        t = t * 2 - 1 if signed else t
        torch.manual_seed(0)
        m = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 1), nn.Flatten(0))
        return loop(m, x, t, f, name, crit=nn.BCEWithLogitsLoss(), shuffle=True)
    return train


PLANTED.append(Case("bce_targets_minus_one_one", _signed_binary("bce_signed", True), "target_range"))
CONTROLS.append(Case("bce_targets_zero_one", _signed_binary("bce_01", False)))
PLANTED.append(Case("constant_init_every_parameter", _case("constant_init", model=_deep_constant,
                                                           opt=_constant_init), "symmetric_units"))
CONTROLS.append(Case("eval_then_train_each_validation", _validated_every_10("eval_then_train", True)))


def _smoothed_targets(sign):
    """Label smoothing written by hand with a sign slip (PyTorch forum "CrossEntropyLoss with soft
    labels gives negative loss"): `one_hot - eps` written for `one_hot * (1 - eps) + eps / K`,
    so the wrong classes get targets of -eps and CrossEntropyLoss goes below 0 (the model is
    rewarded for pushing them to -inf). The control smooths correctly (eps 0.1)."""
    def prep(x, y):
        one_hot = F.one_hot(y, 10).float()
        return x, one_hot - 0.1 if sign < 0 else one_hot * 0.9 + 0.1 / 10
    return prep


PLANTED.append(Case("soft_targets_negative", _case("soft_neg", prep=_smoothed_targets(-1), steps=60, every=5),
                    "negative_loss"))
CONTROLS.append(Case("soft_targets_smoothed", _case("soft_ok", prep=_smoothed_targets(1), steps=60, every=5)))



# ---------------------------------------------------------------------------------
# Eval-mode probes (diagnostics/health/invariance.py): the model random in eval mode, samples
# mixing inside a batch, padding counted in the loss


class _NoisyBlock(nn.Module):
    """A hand-written block with `F.dropout(h, self.p)` (training= forgotten: PyTorch forum
    "F.dropout is still active in eval mode"): dropout stays on after model.eval()."""

    def __init__(self, p=0.3):
        super().__init__()
        self.fc, self.p = nn.Linear(64, 64), p

    def forward(self, x):
        return F.dropout(torch.relu(self.fc(x)), self.p)


def _functional_dropout_block():
    torch.manual_seed(0)
    return nn.Sequential(_NoisyBlock(), nn.Linear(64, 10))


class _RowAttention(nn.Module):
    """An 8x8 digit as 8 rows of 8 pixels into nn.MultiheadAttention (PyTorch forum "MultiheadAttention
    expects (seq, batch, feature)": batch_first=False by default, so a (batch, seq, feature) input
    attends across the samples of the batch); `batch_first=True` is the healthy control."""

    def __init__(self, batch_first):
        super().__init__()
        torch.manual_seed(0)
        self.embed, self.attn = nn.Linear(8, 32), nn.MultiheadAttention(32, 4, batch_first=batch_first)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        h = self.embed(x.view(-1, 8, 8))
        return self.head(self.attn(h, h, h, need_weights=False)[0].mean(1))


class _PadLM(nn.Module):
    def __init__(self, vocab=20):
        super().__init__()
        torch.manual_seed(0)
        self.emb, self.rnn, self.head = nn.Embedding(vocab, 32), nn.GRU(32, 32, batch_first=True), nn.Linear(32, vocab)

    def forward(self, x):
        return self.head(self.rnn(self.emb(x))[0]).transpose(1, 2)


def _padded_lm(name, ignore):
    """Next-token prediction on sequences of 3-24 tokens padded to 24 with token 0 (transformers'
    "labels for padding should be -100" threads); the control sets the padded labels to -100."""
    def train(f):
        g = torch.Generator().manual_seed(0)
        seqs = 1 + (torch.randint(1, 19, (256, 1), generator=g) + torch.arange(25)) % 19
        seqs[torch.arange(25) >= torch.randint(3, 25, (256, 1), generator=g)] = 0
        labels = seqs[:, 1:].masked_fill(seqs[:, 1:] == 0, -100) if ignore else seqs[:, 1:]
        return loop(_PadLM(), seqs[:, :-1], labels, f, name, steps=40, batch=32, every=5)
    return train


PLANTED.append(Case("functional_dropout_in_block", _case("fdrop", model=_functional_dropout_block, steps=40),
                    "train_eval_mismatch", "0"))
PLANTED.append(Case("attention_without_batch_first", _case("mha_batch", model=lambda: _RowAttention(False),
                                                           steps=40), "batch_mixing"))
CONTROLS.append(Case("attention_batch_first", _case("mha_ok", model=lambda: _RowAttention(True), steps=150)))
PLANTED.append(Case("lm_padding_in_loss", _padded_lm("pad_loss", False), "loss_on_padding"))
CONTROLS.append(Case("lm_padding_ignored", _padded_lm("pad_ignored", True)))


def _reinit_every(epoch_steps):
    """`validate` hook re-initialising every Linear each `epoch_steps` steps: the `model.apply(init)`
    left inside the epoch loop (PyTorch-forum "loss goes back up at every epoch" threads)."""
    calls = []

    def validate(model, run):
        calls.append(1)
        if (10 * len(calls)) % epoch_steps == 0:
            for m in model.modules():
                if isinstance(m, nn.Linear):
                    m.reset_parameters()
    return validate


class _FirstStepReader(nn.Module):
    """A GRU whose classifier reads `out[:, 0]`, the first time step, where the last was meant."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb, self.rnn, self.head = nn.Embedding(20, 16), nn.GRU(16, 32, batch_first=True), nn.Linear(32, 4)

    def forward(self, x):
        return self.head(self.rnn(self.emb(x))[0][:, 0])


def _first_step_readout(f):
    g = torch.Generator().manual_seed(0)
    seqs = torch.randint(0, 20, (1024, 12), generator=g)
    return loop(_FirstStepReader(), seqs, seqs[:, -1] % 4, f, "first_step", steps=120, batch=32)


PLANTED.append(Case("weights_reinit_each_epoch", _case("reinit", validate=_reinit_every(40), steps=160, every=5),
                    "weights_reset"))
PLANTED.append(Case("rnn_reads_first_step", _first_step_readout, "sequence_readout", "rnn"))
# ---------------------------------------------------------------------------------
# What the loss is given, the labels and the inputs (issue #23: a held-out set's misses)


class _RowLstm(nn.Module):
    """Flat digits as 8 rows of 8 pixels into an LSTM read at its last row. Built without
    batch_first and given (batch, rows, pixels): StackOverflow "LSTM batch_first=True forgotten"
    and the PyTorch forum's "input shape for nn.LSTM" threads (the batch is run as time); the
    control is built with batch_first=True."""

    def __init__(self, batch_first: bool):
        super().__init__()
        torch.manual_seed(0)
        self.lstm, self.head = nn.LSTM(8, 48, batch_first=batch_first), nn.Linear(48, 10)

    def forward(self, x):
        return self.head(self.lstm(x.view(x.shape[0], 8, 8))[0][:, -1])


def _relu_after_head():
    """PyTorch forum "Should I use ReLU on the output layer?" / StackOverflow "ReLU before
    CrossEntropyLoss": the classifier's logits through a ReLU."""
    return nn.Sequential(_dmlp(), nn.ReLU())


def _digit_and_next(x, y):
    """Multi-label targets into CrossEntropyLoss (StackOverflow "Multi-label classification with
    CrossEntropyLoss"; nn.BCEWithLogitsLoss meant): each digit tagged with itself and its successor."""
    return x, F.one_hot(y, 10).float() + F.one_hot((y + 1) % 10, 10).float()


_ADAM_2 = lambda m: torch.optim.Adam(m.parameters(), lr=1e-2)
PLANTED += [
    Case("relu_after_classifier", _case("relu_head", model=_relu_after_head, steps=60, every=5), "relu_on_logits"),
    Case("lstm_batch_first_missing", _case("lstm_seq_first", model=lambda: _RowLstm(False), steps=60, batch=32,
                                           every=5), "batch_first_mismatch", "lstm"),
    Case("multi_label_into_cross_entropy", _case("multi_label_ce", prep=_digit_and_next, steps=60, every=5),
         "target_range"),
    # "is it a 3?" built as `y == "3"` on integer labels: every label 0 (a binary head)
    Case("labels_one_class_only", _case("one_class", model=lambda: _dmlp(d_out=2), opt=_ADAM_2,
                                        prep=lambda x, y: (x, torch.zeros_like(y)), steps=60, every=5),
         "single_class_labels", "train/class"),
    # a Dataset whose __getitem__ returns self.x[0] (StackOverflow "DataLoader returns the same image")
    Case("dataset_returns_one_sample", _case("one_sample", prep=lambda x, y: (x[:1].expand(len(x), -1).clone(), y),
                                             steps=60, every=5), "constant_inputs", "1"),
]
CONTROLS += [
    Case("lstm_rows_batch_first", _case("lstm_batch_first", model=lambda: _RowLstm(True), steps=60, batch=32,
                                        every=5)),
    Case("one_hot_float_targets", _case("one_hot_ce", prep=lambda x, y: (x, F.one_hot(y, 10).float()), steps=60,
                                        every=5)),
]


def _bandit(name, sign):
    """A contextual bandit with REINFORCE (8-D context, 4 arms, reward 1 for the arm a fixed linear
    map ranks first), the loss `sign * -(log_prob * reward).mean()`: sign -1 is the PyTorch forum's
    "REINFORCE: reward decreases during training" (the minus sign dropped); +1 pytorch/examples'
    reinforce.py. The reward is logged as a scalar."""
    def train(f):
        g = torch.Generator().manual_seed(1)
        w = torch.randn(8, 4, generator=g)
        torch.manual_seed(1)
        policy = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 4))
        opt = torch.optim.Adam(policy.parameters(), lr=3e-3)
        with hooks.watch(policy, optimizer=opt, run_dir=f, name=name, task="classification", every=5) as run:
            for _ in range(120):
                ctx = torch.randn(64, 8, generator=g)
                logits = policy(ctx)
                action = torch.multinomial(torch.softmax(logits.detach(), 1), 1, generator=g)[:, 0]
                reward = (action == (ctx @ w).argmax(1)).float()
                logp = torch.log_softmax(logits, 1).gather(1, action[:, None])[:, 0]
                loss = -sign * (logp * (reward - reward.mean())).mean()
                run.log_batch(logits, action, loss=loss)
                run.log_scalar("reward", float(reward.mean()))
                opt.zero_grad()
                loss.backward()
                opt.step()
        return Path(run.path)
    return train


# CrossEntropyLoss(ignore_index=3) on digits, where 3 is a real class (forum "ignore_index=0: my class 0
# is never predicted"); the control ignores 10, which no label holds.
PLANTED += [
    Case("ce_ignore_index_is_a_class", _case("ignore_class", crit=nn.CrossEntropyLoss(ignore_index=3), steps=80,
                                             every=5), "ignored_class", "train/class"),
    Case("reinforce_sign_dropped", _bandit("reinforce_sign", -1), "objective_sign"),
]
CONTROLS += [
    Case("ce_ignore_index_outside_classes", _case("ignore_none", crit=nn.CrossEntropyLoss(ignore_index=10), steps=80,
                                                  every=5)),
    Case("reinforce_with_baseline", _bandit("reinforce_ok", 1)),
]


def _poisson(name, head, log_input):
    """Counts from a log-linear rate (8 features); a Poisson regression trained with
    PoissonNLLLoss(log_input=...). `head` closes the model: Softplus with the default
    log_input=True is the PyTorch forum's "PoissonNLLLoss predictions are wrong" (a rate read as
    a log-rate); a Linear head (log-rate) with log_input=True is the docs' use."""
    def train(f):
        g = torch.Generator().manual_seed(2)
        x = torch.randn(1024, 8, generator=g)
        y = torch.poisson(torch.exp(0.8 + 0.5 * x[:, :1] - 0.4 * x[:, 1:2]), generator=g)
        torch.manual_seed(2)
        model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1), *head)
        return loop(model, x, y, f, name, crit=nn.PoissonNLLLoss(log_input=log_input), steps=150, every=5,
                    opt=torch.optim.Adam(model.parameters(), lr=1e-2),
                    task="regression")
    return train


PLANTED.append(Case("poisson_softplus_log_input", _poisson("poisson_rate", [nn.Softplus()], True),
                    "loss_input_contract"))
CONTROLS += [Case("poisson_log_rate_head", _poisson("poisson_log_rate", [], True)),
             Case("poisson_softplus_rate", _poisson("poisson_softplus", [nn.Softplus()], False))]


def _val_relabelled(name, relabel):
    """Digits validated every 10 steps (model.eval(), outputs and labels logged as split "val"):
    `relabel` maps the validation labels. Shifting digits 4-9 down one with 3 dropped is
    StackOverflow's "validation accuracy near 0 with ImageFolder: class_to_idx differs"; the
    identity is the control."""
    def train(f):
        x, y, xv, yv = flat_digits()
        xv, yv = relabel(xv, yv)

        def validate(model, run):
            model.eval()
            with torch.no_grad():
                run.log_batch(model(xv), yv, split="val")
            model.train()
        return loop(_dmlp(), x, y, f, name, steps=120, shuffle=True, validate=validate, every=5)
    return train


def _drop_three(xv, yv):
    keep = yv != 3
    return xv[keep], torch.where(yv[keep] > 3, yv[keep] - 1, yv[keep])


PLANTED.append(Case("val_classes_renumbered", _val_relabelled("val_renumbered", _drop_three), "val_label_mismatch"))
CONTROLS.append(Case("val_same_classes", _val_relabelled("val_same", lambda xv, yv: (xv, yv))))


def _char_gru(name, time_major):
    """A batch-first GRU character LM on controls_lm's text: `time_major` flattens the targets
    as `y.t().reshape(-1)` against `logits.reshape(-1, V)` (a seq-first script ported to
    batch_first, forum "language model loss stuck after switching to batch_first"); the control
    flattens both batch-major."""
    def train(f):
        from benchmarks.controls_lm import char_stream
        data, vocab = char_stream()
        seqs = torch.stack([data[s:s + 21] for s in range(0, len(data) - 21, 5)])
        torch.manual_seed(3)
        emb, rnn, head = nn.Embedding(vocab, 24), nn.GRU(24, 48, batch_first=True), nn.Linear(48, vocab)
        model = nn.ModuleDict({"emb": emb, "rnn": rnn, "head": head})
        opt, crit = torch.optim.Adam(model.parameters(), lr=3e-3), nn.CrossEntropyLoss()
        gen = torch.Generator().manual_seed(3)

        class LM(nn.Module):
            def __init__(self):
                super().__init__()
                self.m = model

            def forward(self, x):
                return self.m["head"](self.m["rnn"](self.m["emb"](x))[0])
        lm = LM()
        with hooks.watch(lm, optimizer=opt, loss_fn=crit, run_dir=f, name=name, every=5) as run:
            for _ in range(80):
                idx = torch.randint(0, len(seqs), (24,), generator=gen)
                x, y = seqs[idx, :-1], seqs[idx, 1:]
                opt.zero_grad()
                logits = lm(x)
                crit(logits.reshape(-1, vocab), (y.t() if time_major else y).reshape(-1)).backward()
                opt.step()
        return Path(run.path)
    return train


PLANTED.append(Case("lm_targets_time_major", _char_gru("lm_time_major", True), "target_misaligned"))
CONTROLS.append(Case("lm_targets_batch_major", _char_gru("lm_batch_major", False)))


def _tabular(name, leak):
    """A binary tabular task (12 features, the label a noisy linear score), an MLP: `leak` appends
    the label, min-max scaled, as a 13th column (StackOverflow "100% accuracy from the first
    epoch: the target column was left in the features"); the control has the honest 12."""
    def train(f):
        g = torch.Generator().manual_seed(4)
        x = torch.randn(1024, 12, generator=g)
        y = ((x @ torch.randn(12, generator=g)) + torch.randn(1024, generator=g) > 0).long()
        x = torch.cat([x, y[:, None].float()], 1) if leak else x
        torch.manual_seed(4)
        model = nn.Sequential(nn.Linear(x.shape[1], 32), nn.ReLU(), nn.Linear(32, 2))
        return loop(model, x, y, f, name, steps=100, shuffle=True, every=5)
    return train


PLANTED.append(Case("label_column_in_features", _tabular("label_in_x", True), "target_leakage"))
CONTROLS.append(Case("tabular_honest_features", _tabular("honest_x", False)))

CASES: list[Case] = [*PLANTED, *CONTROLS]


# ---------------------------------------------------------------------------------
# Running and scoring


def _overlaps(f, steps) -> bool:
    if steps is None:
        return True
    if f.step_start is None:
        return False
    end = f.step_end if f.step_end is not None else f.step_start
    return f.step_start <= steps[1] and end >= steps[0]


def judge(case: Case, findings) -> dict:
    """The verdict on one case: for a planted bug, whether its rule fired loud at the right
    layer and steps; for a control, the loud findings (each a false alarm)."""
    loud = [f for f in findings if f.severity in LOUD]
    out = {"case": case.name, "kind": "control" if case.rule is None else "planted", "rule": case.rule,
           "layer": case.layer, "findings": [f"{f.severity} {f.rule} {f.layer}" for f in findings]}
    if case.rule is None:
        out.update(passed=not loud, false_alarms=[f"{f.rule} {f.layer}: {f.message}" for f in loud])
    else:
        hit = [f for f in loud if f.rule == case.rule and (case.layer is None or f.layer == case.layer)
               and _overlaps(f, case.steps)]
        out.update(passed=bool(hit), fired=bool(hit), message=hit[0].message if hit else "")
    return out


def run_case(case: Case, folder: Path) -> dict:
    t0 = time.perf_counter()
    path = case.train(folder)
    train_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    findings, found = diagnose(diagnostics.open_run(path))
    first = found[0].cause.rule if found else None
    return {**judge(case, findings), "problems": len(found), "first_problem": first,
            "first_names_cause": None if case.rule is None else first == case.rule,
            "train_s": round(train_s, 2), "check_s": round(time.perf_counter() - t1, 3)}


def run_suite(cases: list[Case] | None = None, folder: Path | None = None) -> list[dict]:
    """Train and check every case (in `folder`, or a temporary one); one result dict each."""
    cases = CASES if cases is None else cases
    with contextlib.ExitStack() as stack:
        root = Path(folder) if folder else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        return [run_case(c, root / c.name) for c in cases]


def summarise(results: list[dict]) -> dict:
    planted = [r for r in results if r["kind"] == "planted"]
    controls = [r for r in results if r["kind"] == "control"]
    return {"planted": len(planted), "fired": sum(r["fired"] for r in planted),
            "first_problem_names_cause": sum(bool(r.get("first_names_cause")) for r in planted),
            "recall": sum(r["fired"] for r in planted) / len(planted) if planted else None,
            "controls": len(controls), "controls_with_alarm": sum(not r["passed"] for r in controls),
            "false_alarm_rate": (sum(not r["passed"] for r in controls) / len(controls)) if controls else None,
            "false_alarms": sum(len(r["false_alarms"]) for r in controls),
            "total_s": round(sum(r["train_s"] + r["check_s"] for r in results), 1)}


def format_table(results: list[dict]) -> str:
    lines = [f"{'case':28} {'kind':8} {'expected':24} {'result':8} {'train s':>8}  findings (warnings/errors)"]
    for r in results:
        expected = f"{r['rule']}@{r['layer']}" if r["rule"] and r["layer"] else (r["rule"] or "quiet")
        result = ("fired" if r.get("fired") else "MISSED") if r["kind"] == "planted" else (
            "quiet" if r["passed"] else "ALARM")
        loud = [f for f in r["findings"] if f.split()[0] in LOUD]
        lines.append(f"{r['case']:28} {r['kind']:8} {expected:24} {result:8} {r['train_s']:8.1f}  {'; '.join(loud)}")
    s = summarise(results)
    recall = f"{s['recall']:.0%}" if s["recall"] is not None else "n/a"
    lines.append(f"recall {s['fired']}/{s['planted']} = {recall}; the first problem names the cause in "
                 f"{s['first_problem_names_cause']}/{s['planted']}; false alarms: "
                 f"{s['controls_with_alarm']}/{s['controls']} controls ({s['false_alarms']} findings); "
                 f"total {s['total_s']} s")
    return "\n".join(lines)


def public_controls() -> list[Case]:
    """Healthy public training scripts, ported small (benchmarks/controls_*.py: nanoGPT, HF GPT-2
    from a config, word_language_model, pytorch/examples mnist, LBFGS time sequence, actor-critic,
    a ResNet, DCGAN, VAE, distillation...). Their own tests run them in CI
    (tests/diagnostics/test_controls_*.py); here they join the table with `--public`."""
    import importlib

    found = []
    for part in sorted(p.stem for p in Path(__file__).parent.glob("controls_*.py")):
        found += importlib.import_module(f"benchmarks.{part}").CONTROLS
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", help="comma-separated substrings of case names to run")
    parser.add_argument("--public", action="store_true", help="add the public training scripts' controls")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON to PATH")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cases = [*CASES, *public_controls()] if args.public else CASES
    cases = [c for c in cases if not args.only or any(k in c.name for k in args.only.split(","))]
    results = run_suite(cases)
    print(format_table(results))
    if args.json:
        payload = {"summary": summarise(results), "results": results, "threads": args.threads,
                   "machine": platform.platform(), "torch": torch.__version__}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
