"""Healthy controls for the fit and data rules (diagnostics/health/fit.py, data.py): real public
training scripts, ported small (CPU, seconds, digits or simulated data, nothing downloaded),
keeping what makes each unusual (its loss and what its "labels" mean, its optimizer and lr,
its init, its loop). No warning or error may appear on any of them (issue #23, item 2).

    from benchmarks.controls_fit import CONTROLS
    from benchmarks.health_suite import run_suite, summarise
    summarise(run_suite(CONTROLS))
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

import hooks
from benchmarks.health_suite import Case, digits, flat_digits, loop


def _digits01():
    """Flat digits scaled to [0, 1] (pixels 0..16 / 16), as the VAE's BCE needs."""
    x, _, _, _ = digits(standardise=False)
    return x.flatten(1) / 16.0


# ---------------------------------------------------------------------------------
# (a) DCGAN. Source: pytorch/examples dcgan/main.py (weights_init N(0, 0.02), BN N(1, 0.02);
# BCELoss; Adam lr 2e-4 betas (0.5, 0.999); D on a real batch labelled 1 and a fake batch
# labelled 0, then G against D with the fake batch labelled 1). Ported to 8x8 digits in [-1, 1].
# One run per model, as hooks.watch's docstring says: D with its loss, G with its own.

NZ = 16


def _weights_init(m):
    name = type(m).__name__
    if "Conv" in name:
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif "BatchNorm" in name:
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


def _dcgan_models():
    torch.manual_seed(0)
    g = nn.Sequential(  # nz x 1 x 1 -> 32 x 2 x 2 -> 16 x 4 x 4 -> 1 x 8 x 8
        nn.ConvTranspose2d(NZ, 32, 2, 1, 0, bias=False), nn.BatchNorm2d(32), nn.ReLU(True),
        nn.ConvTranspose2d(32, 16, 4, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(True),
        nn.ConvTranspose2d(16, 1, 4, 2, 1, bias=False), nn.Tanh())
    d = nn.Sequential(  # 1 x 8 x 8 -> 16 x 4 x 4 -> 32 x 2 x 2 -> 1
        nn.Conv2d(1, 16, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(16, 32, 4, 2, 1, bias=False), nn.BatchNorm2d(32), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(32, 1, 2, 1, 0, bias=False), nn.Sigmoid())
    g.apply(_weights_init)
    d.apply(_weights_init)
    return g, d


def _dcgan(folder: Path, which: str) -> Path:
    x, _, _, _ = digits(standardise=False)
    x = x / 8.0 - 1.0  # [-1, 1], as the upstream Normalize((0.5,), (0.5,)) and G's Tanh
    g, d = _dcgan_models()
    opt_d = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_g = torch.optim.Adam(g.parameters(), lr=2e-4, betas=(0.5, 0.999))
    crit_d, crit_g = nn.BCELoss(), nn.BCELoss()
    model, opt, crit = (d, opt_d, crit_d) if which == "D" else (g, opt_g, crit_g)
    gen = torch.Generator().manual_seed(0)
    with hooks.watch(model, optimizer=opt, loss_fn=crit, run_dir=folder, name=f"dcgan_{which}") as run:
        for _ in range(4):
            for idx in torch.randperm(len(x), generator=gen).split(32):
                real = x[idx]
                n = len(real)
                # (1) update D: maximize log(D(x)) + log(1 - D(G(z)))
                d.zero_grad()
                crit_d(d(real).view(-1), torch.ones(n)).backward()
                fake = g(torch.randn(n, NZ, 1, 1, generator=gen))
                crit_d(d(fake.detach()).view(-1), torch.zeros(n)).backward()
                opt_d.step()
                # (2) update G: maximize log(D(G(z)))
                g.zero_grad()
                crit_g(d(fake).view(-1), torch.ones(n)).backward()
                opt_g.step()
    return Path(run.path)


# ---------------------------------------------------------------------------------
# (b) VAE. Source: pytorch/examples vae/main.py (784-400-20 MLP, reparameterisation,
# loss = BCE(recon, x, reduction="sum") + KLD; Adam lr 1e-3), ported to 64-32-8 on digits in [0, 1].
# The loss is a plain function, so the loop reports it with run.log_batch(..., loss=).

class _VAE(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc21, self.fc22 = nn.Linear(64, 32), nn.Linear(32, 8), nn.Linear(32, 8)
        self.fc3, self.fc4 = nn.Linear(8, 32), nn.Linear(32, 64)

    def forward(self, x):
        h = F.relu(self.fc1(x))
        mu, logvar = self.fc21(h), self.fc22(h)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return torch.sigmoid(self.fc4(F.relu(self.fc3(z)))), mu, logvar


def _vae(folder: Path) -> Path:
    x = _digits01()
    torch.manual_seed(0)
    model = _VAE()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    with hooks.watch(model, optimizer=opt, run_dir=folder, name="vae") as run:
        for _ in range(6):
            for idx in torch.randperm(len(x), generator=gen).split(64):
                opt.zero_grad()
                recon, mu, logvar = model(x[idx])
                bce = F.binary_cross_entropy(recon, x[idx], reduction="sum")
                kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
                loss = bce + kld
                run.log_batch(recon, x[idx], loss=loss)
                loss.backward()
                opt.step()
    return Path(run.path)


# ---------------------------------------------------------------------------------
# (c) Knowledge distillation. Source: Hinton et al. 2015 as in the PyTorch tutorial
# "Knowledge Distillation" (pytorch/tutorials beginner_source/knowledge_distillation_tutorial.py):
# the student's log_softmax(logits / T) against the teacher's softmax(logits / T) in
# nn.KLDivLoss(reduction="batchmean"), T = 2. The teacher: an MLP trained briefly, unwatched.

def _distillation(folder: Path) -> Path:
    x, y, _, _ = flat_digits()
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    opt_t = torch.optim.Adam(teacher.parameters(), lr=1e-3)
    for _ in range(3):
        for idx in torch.randperm(len(x)).split(64):
            opt_t.zero_grad()
            F.cross_entropy(teacher(x[idx]), y[idx]).backward()
            opt_t.step()
    teacher.eval()
    student = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    opt = torch.optim.Adam(student.parameters(), lr=1e-3)
    kl, t = nn.KLDivLoss(reduction="batchmean"), 2.0
    gen = torch.Generator().manual_seed(0)
    with hooks.watch(student, optimizer=opt, loss_fn=kl, run_dir=folder, name="distill") as run:
        for _ in range(5):
            for idx in torch.randperm(len(x), generator=gen).split(64):
                with torch.no_grad():
                    soft = F.softmax(teacher(x[idx]) / t, dim=1)
                opt.zero_grad()
                (kl(F.log_softmax(student(x[idx]) / t, dim=1), soft) * t * t).backward()
                opt.step()
    return Path(run.path)


# ---------------------------------------------------------------------------------
# (d) Character LM. Source: pytorch/examples word_language_model/main.py (Embedding + RNN
# + Linear decoder, CrossEntropyLoss over the flattened (seq*batch, vocab) logits, SGD lr 20
# with clip_grad_norm_ 0.25, bptt windows), ported to a GRU over 40 characters drawn from a
# bigram chain with Zipf-like frequencies (rare characters are rarely the argmax).

VOCAB = 40


def _zipf_text(n=40_000, seed=0):
    g = torch.Generator().manual_seed(seed)
    zipf = 1.0 / torch.arange(1, VOCAB + 1, dtype=torch.float) ** 1.1
    logits = torch.log(zipf)[None, :] + 1.5 * torch.randn(VOCAB, VOCAB, generator=g)  # bigram preferences
    trans = torch.softmax(logits, dim=1)
    text = torch.empty(n, dtype=torch.long)
    text[0] = 0
    nxt = torch.multinomial(trans, n, replacement=True, generator=g)  # n candidate successors per char
    for i in range(1, n):
        text[i] = nxt[text[i - 1], i]
    return text


class _CharRNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder, self.rnn, self.decoder = nn.Embedding(VOCAB, 16), nn.GRU(16, 64), nn.Linear(64, VOCAB)
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)  # upstream RNNModel.init_weights
        nn.init.uniform_(self.decoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)

    def forward(self, tokens):
        out, _ = self.rnn(self.encoder(tokens))
        return self.decoder(out).view(-1, VOCAB)


def _char_lm(folder: Path) -> Path:
    text = _zipf_text()
    bptt, batch = 20, 16
    cols = len(text) // batch
    data = text[:cols * batch].view(batch, cols).t().contiguous()  # upstream batchify: (seq, batch)
    torch.manual_seed(0)
    model = _CharRNN()
    opt = torch.optim.SGD(model.parameters(), lr=20)
    crit = nn.CrossEntropyLoss()
    with hooks.watch(model, optimizer=opt, loss_fn=crit, run_dir=folder, name="char_lm") as run:
        for _ in range(2):
            for i in range(0, cols - 1 - bptt, bptt):
                inp, target = data[i:i + bptt], data[i + 1:i + 1 + bptt].reshape(-1)
                opt.zero_grad()
                crit(model(inp), target).backward()
                nn.utils.clip_grad_norm_(model.parameters(), 0.25)
                opt.step()
    return Path(run.path)


# ---------------------------------------------------------------------------------
# (e) Imbalanced binary classification with BCEWithLogitsLoss(pos_weight=neg/pos), as the
# PyTorch docs of BCEWithLogitsLoss advise ("pos_weight = 300/100" for an imbalanced class);
# 10% positives, a small MLP, Adam lr 1e-3.

def _pos_weight(folder: Path) -> Path:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2048, 10, generator=g)
    score = x @ torch.randn(10, generator=g) + 0.5 * torch.randn(2048, generator=g)
    y = (score > score.quantile(0.9)).float()[:, None]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 1))
    crit = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([(y == 0).sum() / (y == 1).sum()]))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    return loop(model, x, y, folder, "pos_weight", opt=opt, steps=300, batch=64, crit=crit, shuffle=True)


# ---------------------------------------------------------------------------------
# (f) Label smoothing, one epoch. Source: pytorch/vision references/classification/train.py
# (--label-smoothing 0.1: CrossEntropyLoss(label_smoothing=0.1); SGD momentum 0.9), one epoch
# of digits with per-sample records (run.log_batch(ids=)).

def _label_smoothing_one_epoch(folder: Path) -> Path:
    x, y, _, _ = flat_digits()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return loop(model, x, y, folder, "label_smoothing", opt=opt, steps=len(x) // 16, batch=16,
                crit=nn.CrossEntropyLoss(label_smoothing=0.1), ids=True, shuffle=True)


# Loud findings a control may draw, by control (none: every one is held to no warning at all,
# tests/diagnostics/test_controls_fit.py).
OTHER_PARTS_FIRE: dict[str, set[str]] = {}

CONTROLS: list[Case] = [
    Case("dcgan_discriminator", lambda f: _dcgan(f, "D")),
    Case("dcgan_generator", lambda f: _dcgan(f, "G")),
    Case("vae_bce_kld", _vae),
    Case("distillation_kldiv", _distillation),
    Case("char_lm_zipf_gru", _char_lm),
    Case("bce_pos_weight_imbalanced", _pos_weight),
    Case("label_smoothing_one_epoch", _label_smoothing_one_epoch),
]
