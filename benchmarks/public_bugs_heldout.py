"""A second held-out set of bugs from public reports (issue #23's target): 20 silent training bugs,
none of them in benchmarks/public_bugs.py, benchmarks/public_bugs_fresh.py, health_suite.py's
planted cases or issue #23's text, and none a near-duplicate of one (another bug, not the same bug
with other numbers).

The first two sets are now used to fix the rules; this one measures whether the fixes generalise.
Nothing here was tuned against `diagnostics/`: each case was written from its public report, its
`rule` and `ACCEPT` set judged by the cause (a name no rule emits yet marks a cause no rule reads:
the case counts as missed until one does), and the set scored once on the rules as they were.

Each case ports one bug people reported in public (PyTorch forum and StackOverflow threads, GitHub
issues and documentation notes of pytorch and Hugging Face transformers, DeepFD's fault types,
the mixed-precision training paper), small enough to train on CPU in seconds with nothing
downloaded: optimizer, loop and precision bugs, model bugs (a transformer's padding mask, a
Hugging Face encoder read at the wrong layer), loss contracts (ignore_index, class weights,
cosine-embedding targets, Poisson log-rates, a language model's targets flattened in another
order), data bugs (a sampler, a leaked target, validation labels from another class mapping),
and two-model, generative and RL cases (a GAN, a VAE, a policy gradient).

Scoring, the table and the JSON are public_bugs.py's.

Usage::

    PYTHONPATH=. .venv/bin/python benchmarks/public_bugs_heldout.py
    PYTHONPATH=. .venv/bin/python benchmarks/public_bugs_heldout.py --json benchmarks/results/public_bugs_heldout.json
    PYTHONPATH=. .venv/bin/python benchmarks/public_bugs_heldout.py --only gan,vae
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch import nn
from torch.nn import functional as F

import hooks
from benchmarks import public_bugs as pb
from benchmarks.health_suite import Case, flat_digits
from benchmarks.public_bugs import digits_mlp, train_loop


def _digits(name, model=digits_mlp, opt=None, prep=None, **kw):
    """train(folder) on flat 8x8 digits through public_bugs.train_loop."""
    def train(f):
        x, y, _, _ = flat_digits()
        x, y = prep(x, y) if prep else (x, y)
        m = model()
        return train_loop(m, x, y, f, name, opt=opt(m) if opt else None, **kw)
    return train


def _batches(n, batch, steps, seed=0):
    """`steps` index batches of shuffled epochs over range(n)."""
    gen, out = torch.Generator().manual_seed(seed), []
    while len(out) < steps:
        out += list(torch.randperm(n, generator=gen).split(batch))[:n // batch]
    return out[:steps]


# ---------------------------------------------------------------------------------
# Optimizer, loop and precision bugs


def _amp_clip_before_unscale(f):
    """PyTorch AMP examples, "Working with unscaled gradients: gradient clipping" (clip only after
    `scaler.unscale_(optimizer)`), and the forum's "clip_grad_norm_ with GradScaler: model stops
    learning" threads: `clip_grad_norm_(params, 1.0)` applied to gradients still multiplied by the
    scale (65536), so after the scaler divides them the step is ~1/65536 of the clipped norm."""
    x, y, _, _ = flat_digits()
    model, crit = digits_mlp(), nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu")
    with hooks.watch(model, optimizer=opt, loss_fn=crit, run_dir=f, name="amp_clip_scaled", scaler=scaler) as run:
        for idx in _batches(len(x), 32, 120):
            opt.zero_grad()
            scaler.scale(crit(model(x[idx]), y[idx])).backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # the bug: scaler.unscale_(opt) first
            scaler.step(opt)
            scaler.update()
    return Path(run.path)


def _plateau_mode_max(f):
    """PyTorch forum "ReduceLROnPlateau keeps reducing the learning rate although the loss
    decreases" (mode='max' copied from an accuracy-monitoring example, stepped with a loss): every
    epoch's lower loss counts as no improvement, so the rate is cut by 10 every `patience + 1`
    epochs. Epochs of 10 batches (320 training digits), 20 epochs: the training loss stops at
    ~0.97 (mode="min": ~0.12) and validation accuracy at 86% (96%)."""
    x, y, _, _ = flat_digits()
    x, y = x[:320], y[:320]
    model, crit = digits_mlp(), nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.1, patience=2)  # mode="min" meant
    with hooks.watch(model, optimizer=opt, loss_fn=crit, run_dir=f, name="plateau_mode_max") as run:
        for epoch in range(20):
            total = 0.0
            for idx in _batches(len(x), 32, 10, seed=epoch):
                opt.zero_grad()
                loss = crit(model(x[idx]), y[idx])
                loss.backward()
                opt.step()
                total += float(loss.detach())
            sched.step(total / 10)
    return Path(run.path)


def _adadelta_keras_lr(m):
    """pytorch/examples' mnist trains with Adadelta at lr 1.0 (its upstream default); PyTorch forum
    "Adadelta does not learn" threads: Adadelta given lr=1e-3 (Adam's default, carried over when
    swapping optimizers), so each step is ~1e-3 of what Adadelta's own scaling gives (~1e-6 per
    weight at the start)."""
    return torch.optim.Adadelta(m.parameters(), lr=1e-3)


def _lambda_returns_lr(opt):
    """PyTorch forum "LambdaLR: the learning rate is far too small" (the `lr_lambda` written to
    return the learning rate, 1e-3, where LambdaLR multiplies the base rate by what it returns):
    Adam runs at 1e-3 x 1e-3 = 1e-6 from the first step."""
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1e-3)  # a factor (1.0) meant


def _fp16_weights(f):
    """Micikevicius et al., "Mixed Precision Training" (ICLR 2018), section 3.1 (updates below
    the float16 spacing of a weight are lost, hence fp32 master weights), and the PyTorch forum's
    "model.half() training: loss does not decrease" threads: the model and inputs cast with
    .half() and trained with plain SGD at lr 1e-3, so most updates round to nothing."""
    x, y, _, _ = flat_digits()
    model, crit = digits_mlp().half(), nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    with hooks.watch(model, optimizer=opt, loss_fn=crit, run_dir=f, name="fp16_weights") as run:
        for idx in _batches(len(x), 32, 100):
            opt.zero_grad()
            crit(model(x[idx].half()), y[idx]).backward()
            opt.step()
    return Path(run.path)


# ---------------------------------------------------------------------------------
# Two models, generative models and RL


def _gan_generator_detached(f):
    """PyTorch forum "Generator loss does not change / generator not updating" (DCGAN ports where
    the generator step reuses `netD(fake.detach())` from the discriminator step): the generator's
    loss reaches no generator parameter. Real data: 8-D points around (2, ..., 2); the generator
    is watched (one run per model)."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    gen = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 8))
    disc = nn.Sequential(nn.Linear(8, 32), nn.LeakyReLU(0.2), nn.Linear(32, 1))
    opt_g, opt_d = torch.optim.Adam(gen.parameters(), lr=1e-3), torch.optim.Adam(disc.parameters(), lr=1e-3)
    crit_g, crit_d = nn.BCEWithLogitsLoss(), nn.BCEWithLogitsLoss()
    ones, zeros = torch.ones(32, 1), torch.zeros(32, 1)
    with hooks.watch(gen, optimizer=opt_g, loss_fn=crit_g, run_dir=f, name="gan_g_detached") as run:
        for _ in range(150):
            real = 2 + 0.3 * torch.randn(32, 8, generator=g)
            fake = gen(torch.randn(32, 4, generator=g))
            opt_d.zero_grad()
            (crit_d(disc(real), ones) + crit_d(disc(fake.detach()), zeros)).backward()
            opt_d.step()
            opt_g.zero_grad()
            crit_g(disc(fake.detach()), ones).backward()  # the bug: disc(fake) meant
            opt_g.step()
    return Path(run.path)


class _VAE(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.enc, self.mu, self.logvar = nn.Sequential(nn.Linear(64, 64), nn.ReLU()), nn.Linear(64, 8), nn.Linear(64, 8)
        self.dec = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 64))

    def forward(self, x, noise):
        h = self.enc(x)
        mu, logvar = self.mu(h), self.logvar(h)
        return self.dec(mu + noise * torch.exp(0.5 * logvar)), mu, logvar


def _vae_kl_sum_recon_mean(f):
    """PyTorch forum "VAE reconstructs the same image for every input" / "VAE KL term dominates"
    (pytorch/examples' vae sums both terms; ports swap the reconstruction for F.mse_loss with its
    default mean and keep the KL summed over batch and latent dims): the KL weighs ~B x 64 times
    more than intended, the posterior collapses to the prior (the means' spread over samples 0.03;
    summed recon: 0.79) and the validation reconstruction is worse than the mean digit's."""
    x, _, _, _ = flat_digits()
    model, g = _VAE(), torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with hooks.watch(model, optimizer=opt, run_dir=f, name="vae_kl_sum", task="regression") as run:
        for idx in _batches(len(x), 32, 150):
            opt.zero_grad()
            recon, mu, logvar = model(x[idx], torch.randn(len(idx), 8, generator=g))
            kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
            loss = F.mse_loss(recon, x[idx]) + kld  # the bug: reduction="sum" (or kld / numel) meant
            run.log_batch(recon, x[idx], loss=loss)
            loss.backward()
            opt.step()
    return Path(run.path)


def _reinforce_sign(f):
    """PyTorch forum "REINFORCE: reward decreases during training" / "policy gradient loss sign"
    threads (the loss written as log_prob * reward, the minus sign of pytorch/examples'
    reinforcement_learning/reinforce.py dropped): a contextual bandit (8-D context, 4 arms, reward
    1 for the arm a fixed linear map of the context ranks first), so the policy learns to avoid
    the rewarded arm. The reward is logged as a scalar."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(8, 4, generator=g)
    torch.manual_seed(0)
    policy = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 4))
    opt = torch.optim.Adam(policy.parameters(), lr=3e-3)
    with hooks.watch(policy, optimizer=opt, run_dir=f, name="reinforce_sign", task="classification") as run:
        for _ in range(150):
            ctx = torch.randn(64, 8, generator=g)
            logits = policy(ctx)
            action = torch.multinomial(torch.softmax(logits.detach(), 1), 1, generator=g)[:, 0]
            reward = (action == (ctx @ w).argmax(1)).float()
            logp = torch.log_softmax(logits, 1).gather(1, action[:, None])[:, 0]
            loss = (logp * reward).mean()  # the bug: -(logp * (reward - baseline)).mean() meant
            run.log_batch(logits, action, loss=loss)
            run.log_scalar("reward", float(reward.mean()))
            opt.zero_grad()
            loss.backward()
            opt.step()
    return Path(run.path)


# ---------------------------------------------------------------------------------
# Model bugs


class _RoundedCounts(nn.Module):
    """PyTorch forum "Model not learning after torch.round in forward" / "Is there a
    differentiable round?" (a count regression rounding its prediction inside forward so that it
    outputs integers): round's gradient is 0 everywhere, so every parameter gets a zero gradient."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 1))

    def forward(self, x):
        return torch.round(self.net(x))  # the bug: round only when reporting


def _count_data(n=1024):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=g)
    rate = torch.exp(1.0 + 0.5 * x[:, :1] - 0.3 * x[:, 1:2])
    return x, torch.poisson(rate, generator=g)


def _round_in_forward(f):
    x, y = _count_data()
    return train_loop(_RoundedCounts(), x, y, f, "round_in_forward", crit=nn.MSELoss(), steps=100, task="regression")


def _poisson_log_input(f):
    """PyTorch docs of nn.PoissonNLLLoss (`log_input=True` by default: the input is the log of the
    rate) and the forum's "PoissonNLLLoss predictions are wrong / log_input" threads: a count model
    ending in Softplus (it outputs the rate) trained with the default loss, which reads that rate
    as a log-rate, so the outputs settle near log(count) instead of the count."""
    x, y = _count_data()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 1), nn.Softplus())
    return train_loop(model, x, y, f, "poisson_log_input", crit=nn.PoissonNLLLoss(), steps=150, task="regression")


class _PadMaskInverted(nn.Module):
    """PyTorch forum "src_key_padding_mask: True means ignore?" and pytorch/pytorch issues on
    nn.MultiheadAttention's mask convention (True = not attended) against Hugging Face's
    attention_mask (1 = attended): a [CLS]-read transformer classifier given `tokens != pad` as
    `src_key_padding_mask`, so every query attends only to the padding and [CLS] never sees a real
    token. Lengths 4-10 in 12 positions (every row has padding, so no row is fully masked)."""

    def __init__(self, vocab=20, width=32):
        super().__init__()
        torch.manual_seed(0)
        self.emb, self.pos = nn.Embedding(vocab, width), nn.Parameter(0.02 * torch.randn(12, width))
        layer = nn.TransformerEncoderLayer(width, 2, 64, dropout=0.0, batch_first=True)
        self.encoder, self.head = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False), nn.Linear(width, 2)

    def forward(self, tokens):
        attention_mask = tokens != 0
        h = self.encoder(self.emb(tokens) + self.pos, src_key_padding_mask=attention_mask)  # ~attention_mask meant
        return self.head(h[:, 0])


def _token_task(n=1024, seed=0):
    """[CLS]=1, then 3-9 tokens from 2..19, padded with 0 to 12; label: token 5 present."""
    g = torch.Generator().manual_seed(seed)
    seqs = torch.zeros(n, 12, dtype=torch.long)
    seqs[:, 0] = 1
    lengths = torch.randint(3, 10, (n,), generator=g)
    body = torch.randint(2, 20, (n, 11), generator=g)
    for i in range(n):
        seqs[i, 1:1 + lengths[i]] = body[i, :lengths[i]]
    return seqs, (seqs == 5).any(1).long()


def _pad_mask_inverted(f):
    x, y = _token_task()
    return train_loop(_PadMaskInverted(), x, y, f, "pad_mask_inverted", steps=150)


class _EmbeddingReadout(nn.Module):
    """Hugging Face docs ("hidden_states: one for the output of the embeddings, if the model has
    an embedding layer, + one for the output of each layer") and forum threads "hidden_states[0]
    vs last_hidden_state": a classifier on a BERT encoder (built from a config) reading
    `hidden_states[0][:, 0]`, the [CLS] embedding before any layer, which is the same for every
    input; the encoder layers get no gradient."""

    def __init__(self):
        super().__init__()
        from transformers import BertConfig, BertModel
        torch.manual_seed(0)
        cfg = BertConfig(vocab_size=20, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=16)
        self.bert, self.head = BertModel(cfg), nn.Linear(32, 2)

    def forward(self, tokens):
        out = self.bert(input_ids=tokens, attention_mask=(tokens != 0).long(), output_hidden_states=True)
        return self.head(out.hidden_states[0][:, 0])  # the bug: out.last_hidden_state[:, 0] meant


def _hf_embedding_readout(f):
    x, y = _token_task()
    return train_loop(_EmbeddingReadout(), x, y, f, "hf_hidden_states_0", steps=100)


def _softmax_hidden():
    """DeepFD (ICSE 2022) fault type "wrong activation function" (and NeuraLint's activation
    checks; StackOverflow "softmax as hidden layer activation: network does not learn"): a
    softmax, copied from the output block, as the first hidden activation: its 64 values sum to
    1, so the next layer sees inputs of ~1/64."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 64), nn.Softmax(dim=1), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


# ---------------------------------------------------------------------------------
# The loss's contract


def _ignore_real_class(f):
    """PyTorch forum "CrossEntropyLoss ignore_index=0: my class 0 is never predicted" (ignore_index=0
    copied from a padding-aware NLP script into a task whose class 0 is a real class, as in
    token-classification ports where 0 is the "O" tag): the digit 0 never contributes to the loss."""
    x, y, _, _ = flat_digits()
    return train_loop(digits_mlp(), x, y, f, "ignore_index_0", crit=nn.CrossEntropyLoss(ignore_index=0), steps=100)


def _class_weights_counts(f):
    """StackOverflow "How to use class weights in CrossEntropyLoss for imbalanced data" (answers
    pointing out weights computed as class frequencies, where inverse frequencies are meant):
    digits with classes 5-9 subsampled to 20%, and `weight=counts / counts.sum()`, so the rare
    classes are weighted ~5x down instead of up: after 120 steps they are never predicted
    (without weights: validation recall 49% on them; with 1 / counts: 90%)."""
    x, y, _, _ = flat_digits()
    g = torch.Generator().manual_seed(0)
    keep = (y < 5) | (torch.rand(len(y), generator=g) < 0.2)
    x, y = x[keep], y[keep]
    counts = torch.bincount(y, minlength=10).float()
    crit = nn.CrossEntropyLoss(weight=counts / counts.sum())  # the bug: 1 / counts meant
    return train_loop(digits_mlp(), x, y, f, "class_weights_counts", crit=crit, steps=120)


class _Siamese(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.tower = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 8))

    def forward(self, pairs):
        return self.tower(pairs)  # (B, 2, 16) -> (B, 2, 8)


class _PairCosineLoss(nn.Module):
    def forward(self, emb, target):
        return F.cosine_embedding_loss(emb[:, 0], emb[:, 1], target)


def _cosine_targets_01(f):
    """PyTorch forum "CosineEmbeddingLoss with labels 0 and 1" / "siamese network: all embeddings
    become the same" (CosineEmbeddingLoss takes targets 1 and -1; a 0 gives that pair a loss of 0):
    pairs from 4 clusters labelled 1 (same cluster) or 0 (different), so nothing pushes the
    different pairs apart and the embeddings collapse onto one direction."""
    g = torch.Generator().manual_seed(0)
    centres = 2 * torch.randn(4, 16, generator=g)
    n = 1024
    a, b = torch.randint(0, 4, (n,), generator=g), torch.randint(0, 4, (n,), generator=g)
    b = torch.where(torch.rand(n, generator=g) < 0.5, a, b)
    pairs = torch.stack([centres[a], centres[b]], 1) + torch.randn(n, 2, 16, generator=g)
    target = (a == b).float()  # the bug: 2 * (a == b) - 1 meant
    return train_loop(_Siamese(), pairs, target, f, "cosine_targets_01", crit=_PairCosineLoss(), steps=120)


def _lm_targets_time_major(model, opt, crit, xb, yb, step):
    """pytorch/examples' word_language_model batches seq-first and flattens `output.view(-1, ntokens)`
    against `targets.view(-1)` from the same layout; ports to batch_first models keep the targets'
    time-major flattening (forum "language model loss stuck after switching to batch_first"): the
    logits are flattened batch-major, the targets time-major, so nearly every position is scored
    against another sample's character at another time."""
    opt.zero_grad()
    logits = model(xb)  # (B, T, V)
    loss = crit(logits.reshape(-1, logits.shape[-1]), yb.t().reshape(-1))  # yb.reshape(-1) meant
    loss.backward()
    opt.step()


class _CharGRU(nn.Module):
    def __init__(self, vocab):
        super().__init__()
        torch.manual_seed(0)
        self.emb, self.rnn, self.head = nn.Embedding(vocab, 32), nn.GRU(32, 64, batch_first=True), nn.Linear(64, vocab)

    def forward(self, x):
        return self.head(self.rnn(self.emb(x))[0])


def _lm_targets_transposed(f):
    from benchmarks.controls_lm import char_stream
    data, vocab = char_stream()
    starts = torch.arange(0, len(data) - 25, 7)
    seqs = torch.stack([data[s:s + 25] for s in starts])
    return train_loop(_CharGRU(vocab), seqs[:, :-1], seqs[:, 1:], f, "lm_targets_time_major",
                      step=_lm_targets_time_major, steps=120)


# ---------------------------------------------------------------------------------
# Data bugs


def _sampler_class_weights(f):
    """StackOverflow "How to use WeightedRandomSampler in PyTorch" (its answers: the weights are
    one per sample, `class_weights[labels]`): the sampler given the 10 per-class weights, so it
    draws only indices 0-9 and trains on 10 digits. Validated every 10 steps (val/loss)."""
    x, y, xv, yv = flat_digits()
    class_w = 1.0 / torch.bincount(y).float()
    sampler = torch.utils.data.WeightedRandomSampler(class_w, num_samples=len(x), replacement=True,
                                                     generator=torch.Generator().manual_seed(0))  # class_w[y] meant
    idx_all = torch.tensor(list(sampler))
    model, crit = digits_mlp(), nn.CrossEntropyLoss()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with hooks.watch(model, optimizer=opt, loss_fn=crit, run_dir=f, name="sampler_class_weights") as run:
        for i, idx in enumerate(idx_all.split(32)[:120]):
            opt.zero_grad()
            out = model(x[idx])
            loss = crit(out, y[idx])
            run.log_batch(out, y[idx], ids=idx, loss=loss)
            loss.backward()
            opt.step()
            if i % 10 == 9:
                with torch.no_grad():
                    run.log_scalar("val/loss", F.cross_entropy(model(xv), yv))
    return Path(run.path)


def _target_in_features(f):
    """StackOverflow "100% accuracy from the first epoch" / "suspiciously perfect accuracy: the
    target column was left in the features" (the label column kept in X when dropping columns):
    a binary tabular task whose honest inputs predict the label at ~80%, with the label itself
    appended (standardised) as a ninth feature; the loss falls to ~0 within an epoch."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1024, 8, generator=g)
    y = ((x @ torch.randn(8, generator=g)) + 1.5 * torch.randn(1024, generator=g) > 0).long()
    leak = (y.float() - y.float().mean()) / y.float().std()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(9, 64), nn.ReLU(), nn.Linear(64, 2))
    return train_loop(model, torch.cat([x, leak[:, None]], 1), y, f, "target_in_features", steps=100)


def _val_labels_other_mapping(f):
    """StackOverflow "validation accuracy near 0 with ImageFolder: class_to_idx differs between
    train and val" (a class folder missing from the validation directory, so ImageFolder numbers
    the later classes one lower): training digits as they are, validation without digit 3 and
    digits 4-9 labelled 3-8. Validated every 10 steps (model.eval(), outputs and labels logged
    as split "val", and val/loss)."""
    x, y, xv, yv = flat_digits()
    keep = yv != 3
    xv, yv = xv[keep], torch.where(yv[keep] > 3, yv[keep] - 1, yv[keep])

    def validate(model, run):
        model.eval()
        with torch.no_grad():
            out = model(xv)
            run.log_batch(out, yv, split="val")
            run.log_scalar("val/loss", F.cross_entropy(out, yv))
        model.train()
    return train_loop(digits_mlp(), x, y, f, "val_labels_shifted", validate=validate, steps=120)


# ---------------------------------------------------------------------------------

CASES: list[Case] = [
    Case("amp_clip_before_unscale", _amp_clip_before_unscale, "update_ratio"),
    Case("plateau_scheduler_mode_max", _plateau_mode_max, "lr_collapse"),
    Case("adadelta_lr_1e-3", _digits("adadelta_lr", opt=_adadelta_keras_lr, steps=120), "update_ratio"),
    Case("lambdalr_returns_lr", _digits("lambdalr_lr", steps=100, sched=_lambda_returns_lr), "update_ratio"),
    Case("fp16_weights_plain_sgd", _fp16_weights, "stuck_parameters"),
    Case("gan_generator_step_detached", _gan_generator_detached, "stuck_parameters"),
    Case("vae_kl_summed_recon_mean", _vae_kl_sum_recon_mean, "posterior_collapse"),
    Case("reinforce_sign_flipped", _reinforce_sign, "objective_sign"),
    Case("round_in_forward", _round_in_forward, "stuck_parameters"),
    Case("poisson_nll_log_input", _poisson_log_input, "output_vs_label"),
    Case("padding_mask_inverted", _pad_mask_inverted, "padding_mask_inverted"),
    Case("hf_reads_hidden_states_0", _hf_embedding_readout, "stuck_parameters"),
    Case("softmax_hidden_activation", _digits("softmax_hidden", model=_softmax_hidden, steps=100), "wrong_activation"),
    Case("ce_ignore_index_real_class", _ignore_real_class, "output_vs_label"),
    Case("ce_class_weights_are_counts", _class_weights_counts, "output_vs_label"),
    Case("cosine_embedding_targets_0_1", _cosine_targets_01, "target_range"),
    Case("lm_targets_flattened_time_major", _lm_targets_transposed, "target_misaligned"),
    Case("sampler_given_class_weights", _sampler_class_weights, "repeated_samples"),
    Case("target_column_in_features", _target_in_features, "target_leakage"),
    Case("val_labels_other_class_mapping", _val_labels_other_mapping, "val_label_mismatch"),
]

# Every rule name that names the cause (the case's `rule` first); names no rule emits mark a cause
# no rule reads yet. Judged by the cause, not by what fires.
ACCEPT: dict[str, set[str]] = {
    "amp_clip_before_unscale": {"update_ratio", "stuck_parameters", "clip_before_unscale"},
    "plateau_scheduler_mode_max": {"lr_collapse"},
    "adadelta_lr_1e-3": {"update_ratio", "stuck_parameters"},
    "lambdalr_returns_lr": {"update_ratio", "stuck_parameters"},
    "fp16_weights_plain_sgd": {"stuck_parameters", "update_ratio", "precision_underflow"},
    "gan_generator_step_detached": {"stuck_parameters", "frozen_model"},
    "vae_kl_summed_recon_mean": {"posterior_collapse", "regularisation_dominates"},
    "reinforce_sign_flipped": {"objective_sign", "reward_falls"},
    "round_in_forward": {"stuck_parameters", "frozen_model"},
    "poisson_nll_log_input": {"output_vs_label", "loss_input_contract"},
    "padding_mask_inverted": {"padding_mask_inverted", "input_ignored"},
    "hf_reads_hidden_states_0": {"stuck_parameters", "frozen_model"},
    "softmax_hidden_activation": {"wrong_activation", "activation_scale_depth", "vanishing_gradients"},
    "ce_ignore_index_real_class": {"output_vs_label", "ignored_class"},
    "ce_class_weights_are_counts": {"output_vs_label", "class_weights"},
    "cosine_embedding_targets_0_1": {"target_range", "embedding_collapse"},
    "lm_targets_flattened_time_major": {"target_misaligned", "batch_mixing", "input_scrambled"},
    "sampler_given_class_weights": {"repeated_samples", "overfitting"},
    "target_column_in_features": {"target_leakage"},
    "val_labels_other_class_mapping": {"val_label_mismatch", "train_val_mismatch"},
}


# ---------------------------------------------------------------------------------
# Running and scoring: public_bugs.py's, with this set's ACCEPT


def judge(case: Case, findings, problems) -> dict:
    """public_bugs.judge's verdicts against this set's accepted names."""
    return pb.judge(case, findings, problems, ACCEPT)


def run_all(cases: list[Case] | None = None, folder: Path | None = None) -> list[dict]:
    """Train and judge `cases` (default: all of this set), in `folder` or a temporary one."""
    return pb.run_all(CASES if cases is None else cases, folder, ACCEPT)


def main(argv: list[str] | None = None) -> None:
    pb.main(argv, CASES, ACCEPT, __doc__)


if __name__ == "__main__":
    main()
