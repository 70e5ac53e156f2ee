"""A third held-out set of bugs from public reports (issue #23's target): 20 silent training bugs,
none of them in benchmarks/public_bugs.py, public_bugs_fresh.py, public_bugs_heldout.py,
health_suite.py's planted cases or issue #23's text, and none a near-duplicate of one (another bug,
not the same bug with other numbers).

The other three sets are used to fix the rules; this one measures whether the fixes generalise.
Nothing here was tuned against `diagnostics/`: each case was written from its public report, its
`rule` and `ACCEPT` set judged by the cause (a name no rule emits yet marks a cause no rule reads:
the case counts as missed until one does), and the set scored once on the rules as they were.

Every case trains twice in plain torch (`verify()`, `--verify`): with the bug and with its fix,
nothing watched, and reports a held-out error of each (lower is better: 1 - accuracy, an MSE, a
next-token loss); the bug must be clearly worse. The table of that check is in the JSON.

Scoring, the table and the JSON are public_bugs.py's.

Usage::

    PYTHONPATH=. .venv/bin/python benchmarks/public_bugs_third.py
    PYTHONPATH=. .venv/bin/python benchmarks/public_bugs_third.py --verify \
        --json benchmarks/results/public_bugs_third.json
    PYTHONPATH=. .venv/bin/python benchmarks/public_bugs_third.py --only adam_eps,causal
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch import nn
from torch.nn import functional as F

import hooks
from benchmarks import public_bugs as pb
from benchmarks.health_suite import Case, flat_digits
from benchmarks.public_bugs import digits_mlp, digits_raw


class _Unwatched:
    """Stands in for a hooks run when a case trains in plain torch (verify)."""

    path = None

    def log_batch(self, *a, **k):
        pass

    def log_scalar(self, *a, **k):
        pass


def _watch(f, model, opt, crit, name, task=None):
    """hooks.watch(...) into folder f, or nothing watched when f is None (verify)."""
    if f is None:
        return contextlib.nullcontext(_Unwatched())
    return hooks.watch(model, optimizer=opt, loss_fn=crit, run_dir=f, name=name, task=task)


def _batches(n, batch, steps, seed=0):
    """`steps` index batches of shuffled epochs over range(n)."""
    gen, out = torch.Generator().manual_seed(seed), []
    while len(out) < steps:
        out += list(torch.randperm(n, generator=gen).split(batch))[:n // batch]
    return out[:steps]


def _error(model, x, y):
    """1 - accuracy of model on (x, y), in eval mode."""
    model.eval()
    with torch.no_grad():
        return 1.0 - float((model(x).argmax(1) == y).float().mean())


def _mse(model, x, y):
    model.eval()
    with torch.no_grad():
        return float(F.mse_loss(model(x), y))


def _digits_run(f, name, fix, step, opt=None, crit=None, steps=120, model=None):
    """Flat digits, shuffled batches of 32: `step(model, opt, crit, xb, yb, i, fix)` is one step.
    Returns the run's path, or the validation error when f is None."""
    x, y, xv, yv = flat_digits()
    model = model or digits_mlp()
    opt = opt(model) if opt else torch.optim.Adam(model.parameters(), lr=1e-3)
    crit = crit or nn.CrossEntropyLoss()
    with _watch(f, model, opt, crit, name) as run:
        for i, idx in enumerate(_batches(len(x), 32, steps)):
            step(model, opt, crit, x[idx], y[idx], i, fix)
    return Path(run.path) if f is not None else _error(model, xv, yv)


def _plain(model, opt, crit, xb, yb, i, fix):
    opt.zero_grad()
    crit(model(xb), yb).backward()
    opt.step()


# ---------------------------------------------------------------------------------
# Optimizer and loop bugs


def _adam_eps_1(f, fix=False):
    """TensorFlow's tf.keras Adam docs ("the default value of 1e-7 for epsilon might not be a good
    default ... when training an Inception network on ImageNet a current good choice is 1.0 or
    0.1"), copied into torch.optim.Adam, and the PyTorch forum's "Adam with eps=1 trains like SGD
    with a tiny lr" threads: with gradients ~1e-2, sqrt(v) << eps, so each step is ~lr * m."""
    opt = lambda m: torch.optim.Adam(m.parameters(), lr=1e-3, eps=1e-8 if fix else 1.0)
    return _digits_run(f, "adam_eps_1", fix, _plain, opt=opt)


def _step_outside_loop(f, fix=False):
    """StackOverflow "optimizer.step() outside the for loop: model does not learn" (an indentation
    slip: backward and step dedented out of the batch loop, zero_grad still inside): one step per
    epoch, on the last batch's gradient. 10 epochs of 40 batches of digits."""
    x, y, xv, yv = flat_digits()
    model, crit = digits_mlp(), nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    with _watch(f, model, opt, crit, "step_outside_loop") as run:
        for epoch in range(10):
            for idx in _batches(len(x), 32, 40, seed=epoch):
                opt.zero_grad()
                loss = crit(model(x[idx]), y[idx])
                if fix:
                    loss.backward()
                    opt.step()
            if not fix:  # the bug: these two lines belong in the batch loop
                loss.backward()
                opt.step()
    return Path(run.path) if f is not None else _error(model, xv, yv)


def _loss_clamped_step(model, opt, crit, xb, yb, i, fix):
    """Karpathy, "A Recipe for Training Neural Networks" (2019) and his list of common mistakes
    ("you clipped your loss instead of your gradients"): `loss.clamp(max=1.0)` meant as clipping;
    every loss above 1 (cross-entropy starts at ~2.3) has a zero gradient."""
    opt.zero_grad()
    loss = crit(model(xb), yb)
    if fix:
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    else:
        loss.clamp(max=1.0).backward()
    opt.step()


def _loss_clamped(f, fix=False):
    return _digits_run(f, "loss_clamped", fix, _loss_clamped_step,
                       opt=lambda m: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9))


def _sum_reduction(f, fix=False):
    """PyTorch forum "loss explodes with reduction='sum'" (a criterion built with reduction="sum",
    e.g. copied from the VAE example, in a loop whose lr was tuned for the mean): SGD lr 0.1,
    momentum 0.9, batches of 128, so each step is 128x the tuned one and training diverges."""
    crit = nn.CrossEntropyLoss(reduction="mean" if fix else "sum")
    x, y, xv, yv = flat_digits()
    model = digits_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with _watch(f, model, opt, crit, "ce_reduction_sum") as run:
        for idx in _batches(len(x), 128, 80):
            opt.zero_grad()
            crit(model(x[idx]), y[idx]).backward()
            opt.step()
    return Path(run.path) if f is not None else _error(model, xv, yv)


def _next_iter_same_batch(f, fix=False):
    """StackOverflow "next(iter(dataloader)) always returns the same batch" (the loader's iterator
    re-created every step, with shuffle=False): every step trains on the first 32 digits.
    Sample ids logged with each batch; validated every 10 steps (val/loss)."""
    x, y, xv, yv = flat_digits()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.arange(len(x))), batch_size=32)
    model, crit = digits_mlp(), nn.CrossEntropyLoss()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    it = iter(loader)
    with _watch(f, model, opt, crit, "next_iter_same_batch") as run:
        for i in range(150):
            if fix:
                idx = next(it, None)
                if idx is None:
                    it = iter(loader)
                    idx = next(it)
                idx = idx[0]
            else:
                idx = next(iter(loader))[0]  # the bug: a new iterator every step
            opt.zero_grad()
            out = model(x[idx])
            loss = crit(out, y[idx])
            run.log_batch(out, y[idx], ids=idx, loss=loss)
            loss.backward()
            opt.step()
            if i % 10 == 9:
                with torch.no_grad():
                    run.log_scalar("val/loss", F.cross_entropy(model(xv), yv))
    return Path(run.path) if f is not None else _error(model, xv, yv)


# ---------------------------------------------------------------------------------
# Model bugs


def _deep_uniform(fix):
    """PyTorch forum "nn.init.uniform_ makes my network output the same thing / explode" (the
    default range of nn.init.uniform_ is [0, 1), not symmetric around 0; people call
    `nn.init.uniform_(m.weight)` meaning a small symmetric init): a 4-hidden-layer ReLU MLP whose
    weights are all positive, so every unit sums ~32x its inputs and all units move together."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                          nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    if not fix:
        for m in model:
            if isinstance(m, nn.Linear):
                nn.init.uniform_(m.weight)  # the bug: uniform_(w, -b, b) (or the default init) meant
    return model


def _init_uniform_0_1(f, fix=False):
    return _digits_run(f, "init_uniform_0_1", fix, _plain, model=_deep_uniform(fix))


class _SkipsHidden(nn.Module):
    """PyTorch forum "first layer's weights never change" (forward applies the output layer to the
    input variable, `self.fc2(x)`, where the hidden `h` was meant; it runs because both are 64
    wide): fc1 gets no gradient and the model is linear."""

    def __init__(self, fix):
        super().__init__()
        torch.manual_seed(0)
        self.fix, self.fc1, self.fc2, self.out = fix, nn.Linear(64, 64), nn.Linear(64, 64), nn.Linear(64, 10)

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        h = torch.relu(self.fc2(h if self.fix else x))  # the bug: self.fc2(x)
        return self.out(h)


def _forward_skips_hidden(f, fix=False):
    return _digits_run(f, "forward_skips_fc1", fix, _plain, model=_SkipsHidden(fix),
                       opt=lambda m: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9))


def _regression_data(n=1024, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    y = x[:, :1] - 0.8 * x[:, 1:2] + 0.5 * torch.sin(2 * x[:, 2:3]) + 0.1 * torch.randn(n, 1, generator=g)
    return x, y


def _relu_output_negative_targets(f, fix=False):
    """StackOverflow "Regression network predicts 0 for all negative targets / ReLU in the last
    layer" (the output layer given the same ReLU as the hidden ones): a standardised regression
    target, half of it negative, that the model can never output."""
    x, y = _regression_data()
    xv, yv = _regression_data(512, seed=1)
    torch.manual_seed(0)
    layers = [nn.Linear(6, 64), nn.ReLU(), nn.Linear(64, 1)] + ([] if fix else [nn.ReLU()])
    model, crit = nn.Sequential(*layers), nn.MSELoss()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    with _watch(f, model, opt, crit, "relu_output_regression", task="regression") as run:
        for idx in _batches(len(x), 32, 150):
            opt.zero_grad()
            crit(model(x[idx]), y[idx]).backward()
            opt.step()
    return Path(run.path) if f is not None else _mse(model, xv, yv)


def _embedding_padding_idx_real(f, fix=False):
    """PyTorch forum "nn.Embedding padding_idx: my token 0 embedding stays zero" (padding_idx=0 copied
    from an NLP example into a model whose inputs have no padding and whose id 0 is a real value,
    as in categorical-feature ports): the embedding of id 0 is zero and never trained. Sequences
    of 8 tokens from 6 ids; the class is whether id 0 appears at least twice."""
    g = torch.Generator().manual_seed(0)
    toks = torch.randint(0, 6, (2048, 8), generator=g)
    y = ((toks == 0).sum(1) >= 2).long()
    x, xv, yt, yv = toks[:1536], toks[1536:], y[:1536], y[1536:]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(6, 16, padding_idx=None if fix else 0), nn.Flatten(), nn.Linear(128, 64),
                          nn.ReLU(), nn.Linear(64, 2))
    crit, opt = nn.CrossEntropyLoss(), torch.optim.Adam(model.parameters(), lr=3e-3)
    with _watch(f, model, opt, crit, "embedding_padding_idx_0") as run:
        for idx in _batches(len(x), 32, 150):
            opt.zero_grad()
            crit(model(x[idx]), yt[idx]).backward()
            opt.step()
    return Path(run.path) if f is not None else _error(model, xv, yv)


# ---------------------------------------------------------------------------------
# Sequence models


def _char_data():
    from benchmarks.controls_lm import char_stream
    data, vocab = char_stream()
    starts = torch.arange(0, len(data) - 25, 7)
    seqs = torch.stack([data[s:s + 25] for s in starts])
    n = int(0.85 * len(seqs))
    return seqs[:n], seqs[n:], vocab


class _TinyCausalLM(nn.Module):
    def __init__(self, vocab, causal):
        super().__init__()
        torch.manual_seed(0)
        self.causal = causal
        self.emb, self.pos = nn.Embedding(vocab, 32), nn.Parameter(0.02 * torch.randn(24, 32))
        layer = nn.TransformerEncoderLayer(32, 2, 64, dropout=0.0, batch_first=True)
        self.encoder, self.head = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False), nn.Linear(32, vocab)

    def forward(self, x, causal=None):
        causal = self.causal if causal is None else causal
        t = x.shape[1]
        mask = nn.Transformer.generate_square_subsequent_mask(t) if causal else None
        return self.head(self.encoder(self.emb(x) + self.pos[:t], mask=mask, is_causal=bool(causal)))


def _lm_loss(model, xv, yv, **kw):
    model.eval()
    with torch.no_grad():
        out = model(xv, **kw)
        return float(F.cross_entropy(out.reshape(-1, out.shape[-1]), yv.reshape(-1)))


def _causal_mask_missing(f, fix=False):
    """PyTorch forum "Transformer language model: loss goes to almost zero but generation is
    garbage" / "nn.TransformerEncoder for language modelling needs a causal mask" (the
    square-subsequent mask of the word_language_model example left out): each position attends
    to the next character, which is its target. Held-out: the next-character loss with the mask,
    as when generating."""
    seqs, val, vocab = _char_data()
    model, crit = _TinyCausalLM(vocab, causal=fix), nn.CrossEntropyLoss()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    with _watch(f, model, opt, crit, "causal_mask_missing") as run:
        for idx in _batches(len(seqs), 32, 120):
            xb, yb = seqs[idx, :-1], seqs[idx, 1:]
            opt.zero_grad()
            out = model(xb)
            loss = crit(out.reshape(-1, vocab), yb.reshape(-1))
            run.log_batch(out.reshape(-1, vocab), yb.reshape(-1), loss=loss)
            loss.backward()
            opt.step()
    return Path(run.path) if f is not None else _lm_loss(model, val[:, :-1], val[:, 1:], causal=True)


class _CharGRU(nn.Module):
    def __init__(self, vocab):
        super().__init__()
        torch.manual_seed(0)
        self.emb, self.rnn, self.head = nn.Embedding(vocab, 32), nn.GRU(32, 64, batch_first=True), nn.Linear(64, vocab)

    def forward(self, x):
        return self.head(self.rnn(self.emb(x))[0])


def _labels_shifted_twice(f, fix=False):
    """Hugging Face docs of GPT2LMHeadModel ("labels ... are shifted inside the model, i.e. you can
    set labels = input_ids") and the forum's "my causal LM predicts two tokens ahead" threads: the
    labels shifted by the user and again by the loss, so position t is trained on character t+2.
    Here a GRU LM whose loss shifts (as HF's does) given labels already shifted."""
    seqs, val, vocab = _char_data()
    model, crit = _CharGRU(vocab), nn.CrossEntropyLoss()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    with _watch(f, model, opt, crit, "labels_shifted_twice") as run:
        for idx in _batches(len(seqs), 32, 120):
            ids = seqs[idx]
            labels = ids if fix else torch.cat([ids[:, 1:], ids[:, :1]], 1)  # the bug: labels = ids meant
            opt.zero_grad()
            out = model(ids)[:, :-1].reshape(-1, vocab)  # the loss's own shift, as HF does
            target = labels[:, 1:].reshape(-1)
            loss = crit(out, target)
            run.log_batch(out, target, loss=loss)
            loss.backward()
            opt.step()
    return Path(run.path) if f is not None else _lm_loss(model, val[:, :-1], val[:, 1:])


# ---------------------------------------------------------------------------------
# The loss's contract


def _multi_output_index_typo(f, fix=False):
    """PyTorch forum "second output of my multi-output regression is wrong" (a per-output loss
    written out by hand with a copy-paste slip, `crit(pred[:, 1], y[:, 0])`): output 1 is trained
    on target 0, its own target never reaches the loss."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1536, 6, generator=g)
    y = torch.stack([x[:, 0] - 0.5 * x[:, 1], torch.sin(2 * x[:, 2]) + 0.5 * x[:, 3]], 1)
    x, xv, y, yv = x[:1024], x[1024:], y[:1024], y[1024:]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 64), nn.ReLU(), nn.Linear(64, 2))
    crit, opt = nn.MSELoss(), torch.optim.Adam(model.parameters(), lr=3e-3)
    with _watch(f, model, opt, crit, "multi_output_index_typo", task="regression") as run:
        for idx in _batches(len(x), 32, 150):
            opt.zero_grad()
            pred, yb = model(x[idx]), y[idx]
            loss = crit(pred[:, 0], yb[:, 0]) + crit(pred[:, 1], yb[:, 1 if fix else 0])  # the bug: yb[:, 0]
            run.log_batch(pred, yb, loss=loss)
            loss.backward()
            opt.step()
    return Path(run.path) if f is not None else _mse(model, xv, yv)


def _teacher():
    """A digits MLP trained (unwatched) for 200 Adam steps: the distillation teacher."""
    x, y, _, _ = flat_digits()
    model = digits_mlp(seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for idx in _batches(len(x), 32, 200, seed=1):
        opt.zero_grad()
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    return model.eval()


def _kl_target_logits(f, fix=False):
    """PyTorch docs of nn.KLDivLoss ("target ... probabilities by default (log_target=False)") and
    the forum's "knowledge distillation loss is negative" threads: the teacher's raw logits / T
    passed as the target, where softmax(teacher / T) is meant. The target is not a distribution:
    KLDivLoss takes its log, so every batch with a negative teacher logit gives a NaN loss (found
    when running the case; written expecting a negative loss, hence `negative_loss` in ACCEPT).
    T = 4, the student a digits MLP."""
    x, y, xv, yv = flat_digits()
    teacher, student = _teacher(), digits_mlp(seed=2)
    crit, opt = nn.KLDivLoss(reduction="batchmean"), torch.optim.Adam(student.parameters(), lr=1e-3)
    with _watch(f, student, opt, crit, "kl_target_logits") as run:
        for idx in _batches(len(x), 32, 120):
            with torch.no_grad():
                t = teacher(x[idx]) / 4
            opt.zero_grad()
            out = student(x[idx])
            loss = crit(F.log_softmax(out / 4, 1), torch.softmax(t, 1) if fix else t)  # the bug: t
            run.log_batch(out, y[idx], loss=loss)
            loss.backward()
            opt.step()
    return Path(run.path) if f is not None else _error(student, xv, yv)


def _pairs(n, g, centres):
    a, b = torch.randint(0, 4, (n,), generator=g), torch.randint(0, 4, (n,), generator=g)
    b = torch.where(torch.rand(n, generator=g) < 0.5, a, b)
    return torch.stack([centres[a], centres[b]], 1) + torch.randn(n, 2, 16, generator=g), (a == b).float()


class _ContrastiveLoss(nn.Module):
    """Hadsell, Chopra & LeCun (2006): Y = 0 for a similar pair, 1 for a dissimilar one."""

    def forward(self, emb, y):
        d = (emb[:, 0] - emb[:, 1]).norm(dim=1)
        return ((1 - y) * d.pow(2) + y * F.relu(2.0 - d).pow(2)).mean() / 2


def _contrastive_label_flipped(f, fix=False):
    """GitHub issues and forum threads on siamese-network repos ("contrastive loss: label 1 means
    similar or dissimilar?"; Hadsell et al. use Y = 0 for similar pairs, many datasets 1): pairs
    labelled 1 = same cluster fed to the paper's loss, so same-cluster pairs are pushed apart and
    different ones pulled together. Held-out: pair verification error at the median distance."""
    g = torch.Generator().manual_seed(0)
    centres = 2 * torch.randn(4, 16, generator=g)
    x, same = _pairs(1024, g, centres)
    xv, same_v = _pairs(512, g, centres)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 8))
    crit, opt = _ContrastiveLoss(), torch.optim.Adam(model.parameters(), lr=1e-3)
    target = 1 - same if fix else same  # the bug: labels 1 = similar, the loss's 1 = dissimilar
    with _watch(f, model, opt, crit, "contrastive_label_flipped", task="regression") as run:
        for idx in _batches(len(x), 32, 120):
            opt.zero_grad()
            crit(model(x[idx]), target[idx]).backward()
            opt.step()
    if f is not None:
        return Path(run.path)
    with torch.no_grad():
        d = (model(xv[:, 0]) - model(xv[:, 1])).norm(dim=1)
    return float(((d < d.median()).float() != same_v).float().mean())


# ---------------------------------------------------------------------------------
# Data and evaluation bugs


def _val_not_normalised(f, fix=False):
    """StackOverflow "validation accuracy is very low although training accuracy is high:
    transforms.Normalize only in the training transform" (the validation pipeline built with
    ToTensor alone): training digits scaled to [0, 1] and standardised, validation digits only
    scaled to [0, 1]. Validated every 10 steps in eval mode, outputs logged as split "val"."""
    xr, y, xvr, yv = digits_raw()
    xr, xvr = xr.flatten(1) / 16, xvr.flatten(1) / 16
    mean, std = xr.mean(0), xr.std(0).clamp_min(1e-6)
    x, xv = (xr - mean) / std, (xvr - mean) / std if fix else xvr  # the bug: Normalize left out
    model, crit = digits_mlp(), nn.CrossEntropyLoss()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with _watch(f, model, opt, crit, "val_not_normalised") as run:
        for i, idx in enumerate(_batches(len(x), 32, 120)):
            opt.zero_grad()
            crit(model(x[idx]), y[idx]).backward()
            opt.step()
            if i % 10 == 9:
                _validate(model, run, xv, yv)
    return Path(run.path) if f is not None else _error(model, xv, yv)


def _validate(model, run, xv, yv):
    """Eval-mode outputs on (xv, yv) logged as split "val", and val/loss; back to train mode."""
    model.eval()
    with torch.no_grad():
        out = model(xv)
        run.log_batch(out, yv, split="val")
        run.log_scalar("val/loss", F.cross_entropy(out, yv))
    model.train()


def _bn_momentum_keras(f, fix=False):
    """PyTorch forum "BatchNorm momentum in PyTorch vs Keras" and the nn.BatchNorm1d docs' note
    ("This momentum argument is different from one used in optimizer classes"; Keras' 0.99 is
    PyTorch's 0.01): a port keeping momentum=0.99, so the running statistics are ~the last batch's
    (batches of 8) and eval normalises with them. Validated every 10 steps in eval mode."""
    x, y, xv, yv = flat_digits()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.BatchNorm1d(64, momentum=0.1 if fix else 0.99), nn.ReLU(),
                          nn.Linear(64, 10))  # the bug: momentum=0.99 (Keras' convention)
    crit, opt = nn.CrossEntropyLoss(), torch.optim.Adam(model.parameters(), lr=1e-3)
    with _watch(f, model, opt, crit, "bn_momentum_keras") as run:
        for i, idx in enumerate(_batches(len(x), 8, 300)):
            opt.zero_grad()
            crit(model(x[idx]), y[idx]).backward()
            opt.step()
            if i % 10 == 9:
                _validate(model, run, xv, yv)
    return Path(run.path) if f is not None else _error(model, xv, yv)


def _split_sorted_classes(f, fix=False):
    """StackOverflow "validation accuracy 0: train/val split by slicing a dataset sorted by class"
    (`X[:n_train]`, `X[n_train:]` on data grouped by label, where a shuffled split was meant): the
    model trains on digits 0-7 and is validated on 8-9. Validated every 10 steps (outputs as split
    "val"). Held-out (the harm): error on a shuffled test set of all ten digits."""
    x, y, xt, yt = flat_digits()
    order = torch.argsort(y, stable=True) if not fix else torch.randperm(len(y), generator=torch.Generator()
                                                                           .manual_seed(0))
    x, y = x[order], y[order]
    n = int(0.8 * len(x))
    (xtr, ytr), (xv, yv) = (x[:n], y[:n]), (x[n:], y[n:])
    model, crit = digits_mlp(), nn.CrossEntropyLoss()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with _watch(f, model, opt, crit, "split_sorted_classes") as run:
        for i, idx in enumerate(_batches(len(xtr), 32, 120)):
            opt.zero_grad()
            out = model(xtr[idx])
            loss = crit(out, ytr[idx])
            run.log_batch(out, ytr[idx], loss=loss)
            loss.backward()
            opt.step()
            if i % 10 == 9:
                _validate(model, run, xv, yv)
    return Path(run.path) if f is not None else _error(model, xt, yt)


def _zero_variance_column(f, fix=False):
    """StackOverflow "loss is nan from the first batch: standardising a constant column" (a tabular
    feature with one value everywhere, `(X - X.mean(0)) / X.std(0)` giving 0/0): one NaN input
    column reaches the first layer, every output and the loss are NaN from step one."""
    g = torch.Generator().manual_seed(0)
    raw = torch.cat([torch.randn(1536, 7, generator=g), torch.full((1536, 1), 3.0)], 1)
    y = (raw[:, :7] @ torch.randn(7, generator=g) > 0).long()
    std = raw[:1024].std(0)
    x = (raw - raw[:1024].mean(0)) / (std.clamp_min(1e-6) if fix else std)  # the bug: no guard on std 0
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 2))
    crit, opt = nn.CrossEntropyLoss(), torch.optim.Adam(model.parameters(), lr=1e-3)
    with _watch(f, model, opt, crit, "zero_variance_column") as run:
        for idx in _batches(1024, 32, 100):
            opt.zero_grad()
            crit(model(x[idx]), y[idx]).backward()
            opt.step()
    return Path(run.path) if f is not None else _error(model, x[1024:], y[1024:])


# ---------------------------------------------------------------------------------
# Several models


def _gan_d_optimizer_on_generator(f, fix=False):
    """PyTorch forum "discriminator loss stays at 1.386 / discriminator not training" (a copy-paste
    slip, `opt_d = Adam(netG.parameters())`): the discriminator's optimizer holds the generator,
    so D never changes and its step moves G. Real data: 8-D points around (2, ..., 2); the
    discriminator is watched (one run per model). Held-out: how far the generated points' mean is
    from the real mean."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    gen = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 8))
    disc = nn.Sequential(nn.Linear(8, 32), nn.LeakyReLU(0.2), nn.Linear(32, 1))
    opt_g = torch.optim.Adam(gen.parameters(), lr=1e-3)
    opt_d = torch.optim.Adam((disc if fix else gen).parameters(), lr=1e-3)  # the bug: gen.parameters()
    crit = nn.BCEWithLogitsLoss()
    ones, zeros = torch.ones(32, 1), torch.zeros(32, 1)
    with _watch(f, disc, opt_d, crit, "gan_d_optimizer_on_g") as run:
        for _ in range(300):
            real = 2 + 0.3 * torch.randn(32, 8, generator=g)
            fake = gen(torch.randn(32, 4, generator=g))
            opt_d.zero_grad()
            (crit(disc(real), ones) + crit(disc(fake.detach()), zeros)).backward()
            opt_d.step()
            opt_g.zero_grad()
            crit(disc(fake), ones).backward()
            opt_g.step()
    if f is not None:
        return Path(run.path)
    with torch.no_grad():
        return float((gen(torch.randn(512, 4, generator=g)).mean(0) - 2).abs().mean())


class _Backbone(nn.Module):
    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.features = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8), nn.ReLU())
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        return self.head(self.features(x))


def _checkpoint_strict_false(f, fix=False):
    """PyTorch forum "load_state_dict(strict=False) loads nothing: keys prefixed with 'module.'"
    (a checkpoint saved from nn.DataParallel, loaded with strict=False to silence the key error,
    so no weight is loaded): a backbone pretrained (unwatched) on digits, its features frozen for
    a linear probe, stays at its random init."""
    x, y, xv, yv = flat_digits()
    pre = _Backbone(seed=1)
    opt = torch.optim.Adam(pre.parameters(), lr=3e-3)
    for idx in _batches(len(x), 32, 200, seed=1):
        opt.zero_grad()
        F.cross_entropy(pre(x[idx]), y[idx]).backward()
        opt.step()
    ckpt = {"module." + k: v for k, v in pre.state_dict().items() if k.startswith("features")}
    model = _Backbone(seed=0)
    if fix:
        ckpt = {k.removeprefix("module."): v for k, v in ckpt.items()}
    model.load_state_dict(ckpt, strict=False)  # the bug: the "module." prefix not stripped
    model.features.requires_grad_(False)
    crit, opt = nn.CrossEntropyLoss(), torch.optim.Adam(model.head.parameters(), lr=3e-3)
    with _watch(f, model, opt, crit, "checkpoint_strict_false") as run:
        for idx in _batches(len(x), 32, 120):
            opt.zero_grad()
            crit(model(x[idx]), y[idx]).backward()
            opt.step()
    return Path(run.path) if f is not None else _error(model, xv, yv)


# ---------------------------------------------------------------------------------

TRAIN = {  # case name -> train(folder, fix=False); folder None: plain torch, returns the held-out error
    "adam_eps_1_from_tf_docs": _adam_eps_1,
    "step_outside_batch_loop": _step_outside_loop,
    "loss_clamped_not_gradients": _loss_clamped,
    "ce_reduction_sum_with_mean_lr": _sum_reduction,
    "next_iter_same_batch": _next_iter_same_batch,
    "init_uniform_default_0_1": _init_uniform_0_1,
    "forward_skips_hidden_layer": _forward_skips_hidden,
    "relu_output_negative_targets": _relu_output_negative_targets,
    "embedding_padding_idx_real_token": _embedding_padding_idx_real,
    "transformer_lm_no_causal_mask": _causal_mask_missing,
    "lm_labels_shifted_twice": _labels_shifted_twice,
    "multi_output_loss_index_typo": _multi_output_index_typo,
    "kl_div_target_teacher_logits": _kl_target_logits,
    "contrastive_label_convention_flipped": _contrastive_label_flipped,
    "val_without_normalize": _val_not_normalised,
    "split_by_slicing_sorted_classes": _split_sorted_classes,
    "standardise_zero_variance_column": _zero_variance_column,
    "gan_d_optimizer_holds_generator": _gan_d_optimizer_on_generator,
    "checkpoint_strict_false_nothing_loaded": _checkpoint_strict_false,
    "batchnorm_momentum_keras_convention": _bn_momentum_keras,
}

_RULE = {
    "adam_eps_1_from_tf_docs": "update_ratio",
    "step_outside_batch_loop": "optimizer_steps_missing",
    "loss_clamped_not_gradients": "stuck_parameters",
    "ce_reduction_sum_with_mean_lr": "update_ratio",
    "next_iter_same_batch": "repeated_samples",
    "init_uniform_default_0_1": "activation_scale_depth",
    "forward_skips_hidden_layer": "stuck_parameters",
    "relu_output_negative_targets": "output_vs_label",
    "embedding_padding_idx_real_token": "padding_idx_real_token",
    "transformer_lm_no_causal_mask": "target_leakage",
    "lm_labels_shifted_twice": "target_misaligned",
    "multi_output_loss_index_typo": "output_vs_label",
    "kl_div_target_teacher_logits": "kl_div_target",
    "contrastive_label_convention_flipped": "contrastive_label_convention",
    "val_without_normalize": "train_eval_mismatch",
    "split_by_slicing_sorted_classes": "val_label_mismatch",
    "standardise_zero_variance_column": "nonfinite",
    "gan_d_optimizer_holds_generator": "not_in_optimizer",
    "checkpoint_strict_false_nothing_loaded": "weights_not_loaded",
    "batchnorm_momentum_keras_convention": "train_eval_mismatch",
}

CASES: list[Case] = [Case(name, fn, _RULE[name]) for name, fn in TRAIN.items()]

# Every rule name that names the cause (the case's `rule` first); names no rule emits mark a cause
# no rule reads yet. Judged by the cause, not by what fires.
ACCEPT: dict[str, set[str]] = {
    "adam_eps_1_from_tf_docs": {"update_ratio", "stuck_parameters", "optimizer_eps"},
    # one step per 40 forwards: the weights barely move per batch (stuck), each step is normal-sized
    "step_outside_batch_loop": {"optimizer_steps_missing", "stuck_parameters"},
    "loss_clamped_not_gradients": {"stuck_parameters", "frozen_model", "loss_clamped"},
    "ce_reduction_sum_with_mean_lr": {"update_ratio", "nonfinite", "grad_norm_spikes", "loss_reduction"},
    "next_iter_same_batch": {"repeated_samples", "overfitting"},
    "init_uniform_default_0_1": {"activation_scale_depth", "exploding_gradients", "symmetric_units", "init_scale",
                                 "nonfinite"},
    "forward_skips_hidden_layer": {"stuck_parameters", "frozen_model"},
    "relu_output_negative_targets": {"output_vs_label", "output_range", "relu_on_logits", "dead_units"},
    "embedding_padding_idx_real_token": {"padding_idx_real_token", "input_ignored"},
    "transformer_lm_no_causal_mask": {"target_leakage", "causal_mask_missing"},
    "lm_labels_shifted_twice": {"target_misaligned"},
    "multi_output_loss_index_typo": {"output_vs_label", "target_misaligned"},
    "kl_div_target_teacher_logits": {"kl_div_target", "target_range", "negative_loss"},
    "contrastive_label_convention_flipped": {"contrastive_label_convention"},
    "val_without_normalize": {"train_eval_mismatch", "input_scale", "val_input_mismatch"},
    "split_by_slicing_sorted_classes": {"val_label_mismatch", "split_class_mismatch", "train_val_mismatch"},
    "standardise_zero_variance_column": {"nonfinite", "nonfinite_inputs"},
    "gan_d_optimizer_holds_generator": {"not_in_optimizer", "stuck_parameters", "frozen_model"},
    "checkpoint_strict_false_nothing_loaded": {"weights_not_loaded"},
    "batchnorm_momentum_keras_convention": {"train_eval_mismatch", "bn_momentum"},
}


# ---------------------------------------------------------------------------------
# Does each bug harm training? Plain torch, bug against fix


def verify(names: list[str] | None = None) -> list[dict]:
    """Train each case twice unwatched (bug, fix) and return the held-out errors (lower is better)."""
    rows = []
    for name in names or list(TRAIN):
        bug, fix = TRAIN[name](None, fix=False), TRAIN[name](None, fix=True)
        rows.append({"case": name, "bug": round(bug, 4), "fix": round(fix, 4), "harms": bug > 1.5 * fix + 0.01})
    return rows


# ---------------------------------------------------------------------------------
# Running and scoring: public_bugs.py's, with this set's ACCEPT


def judge(case: Case, findings, problems) -> dict:
    """public_bugs.judge's verdicts against this set's accepted names."""
    return pb.judge(case, findings, problems, ACCEPT)


def run_all(cases: list[Case] | None = None, folder: Path | None = None) -> list[dict]:
    """Train and judge `cases` (default: all of this set), in `folder` or a temporary one."""
    return pb.run_all(CASES if cases is None else cases, folder, ACCEPT)


def main(argv: list[str] | None = None) -> None:
    pb.main(argv, CASES, ACCEPT, __doc__, verify=verify)


if __name__ == "__main__":
    main()
