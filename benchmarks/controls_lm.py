"""Healthy language-model controls for the health suite (issue #23): real public training
scripts, ported small (CPU, seconds, nothing downloaded), recorded with `hooks.watch` as a
user would. No warning or error may appear on any of them.

- `nanogpt_char`: karpathy/nanoGPT `model.py` + `train.py` (pre-LN GPT, 0.02 normal init,
  `c_proj` at 0.02/sqrt(2·n_layer), tied `wte`/`lm_head`, AdamW betas (0.9, 0.95) with weight
  decay 0.1 on the matrices only, warmup then cosine lr, clip 1.0), 2 layers, 2 heads, n_embd 32.
- `hf_gpt2_from_config`: transformers' `GPT2LMHeadModel(GPT2Config(...))` built from a config,
  trained with its own `labels=` loss (AdamW, linear warmup as in HF's `run_clm.py`).
- `word_language_model_lstm`: pytorch/examples `word_language_model/main.py` + `model.py`
  (RNNModel: Embedding, 2-layer LSTM, Linear decoder, uniform ±0.1 init, tied weights; plain SGD
  by hand at lr 20, clip 0.25, NLLLoss on log_softmax, truncated BPTT with hidden repackaging).

All three train on a character stream from a small random grammar (`char_stream`): some
characters are rare, as in real text.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch import nn
from torch.nn import functional as F

import hooks
from benchmarks.health_suite import Case

_WORDS = ["the", "cat", "dog", "sat", "ran", "on", "a", "mat", "log", "and", "quickly", "zebra", "jumped",
          "over", "lazy", "fox", "quiet", "xylophone", "kept", "playing", "by", "river", "."]


def char_stream(n_sentences=600, seed=0) -> tuple[torch.Tensor, int]:
    """A character stream from a tiny grammar (determiner noun verb [prep determiner noun] .),
    encoded as ids; returns (ids, vocabulary size). Rare letters (z, x, q) appear in few words."""
    g = torch.Generator().manual_seed(seed)
    pick = lambda options: options[int(torch.randint(len(options), (1,), generator=g))]
    text = []
    for _ in range(n_sentences):
        words = [pick(["the", "a"]), pick(["cat", "dog", "fox", "zebra"]),
                 pick(["sat", "ran", "jumped", "kept playing"])]
        if torch.rand(1, generator=g) < 0.6:
            words += [pick(["on", "over", "by"]), pick(["the", "a"]), pick(["mat", "log", "river", "xylophone"])]
        if torch.rand(1, generator=g) < 0.2:
            words.insert(2, pick(["quickly", "quiet", "lazy"]))
        text.append(" ".join(words) + ". ")
    text = "".join(text)
    chars = sorted(set(text))
    return torch.tensor([chars.index(c) for c in text]), len(chars)


# ---------------------------------------------------------------------------------
# (a) nanoGPT, model.py (karpathy/nanoGPT) small


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd, n_head, dropout=0.0):
        super().__init__()
        self.c_attn = nn.Linear(n_embd, 3 * n_embd)
        self.c_proj = nn.Linear(n_embd, n_embd)
        self.n_head, self.dropout = n_head, dropout
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x):
        b, t, c = x.size()
        q, k, v = self.c_attn(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0, is_causal=True)
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).contiguous().view(b, t, c)))


class MLP(nn.Module):
    def __init__(self, n_embd, dropout=0.0):
        super().__init__()
        self.c_fc, self.gelu = nn.Linear(n_embd, 4 * n_embd), nn.GELU()
        self.c_proj, self.dropout = nn.Linear(4 * n_embd, n_embd), nn.Dropout(dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, n_embd, n_head):
        super().__init__()
        self.ln_1, self.attn = nn.LayerNorm(n_embd), CausalSelfAttention(n_embd, n_head)
        self.ln_2, self.mlp = nn.LayerNorm(n_embd), MLP(n_embd)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, vocab_size, block_size=16, n_layer=2, n_head=2, n_embd=32):
        super().__init__()
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(vocab_size, n_embd), wpe=nn.Embedding(block_size, n_embd), drop=nn.Dropout(0.0),
            h=nn.ModuleList([Block(n_embd, n_head) for _ in range(n_layer)]), ln_f=nn.LayerNorm(n_embd)))
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx, targets=None):
        pos = torch.arange(idx.size(1), device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))
        loss = None if targets is None else F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
        return logits, loss

    def configure_optimizers(self, weight_decay, learning_rate, betas):
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas)


def _batches(data, block, batch, g):
    """nanoGPT train.py's get_batch: random windows x and the next characters y."""
    ix = torch.randint(len(data) - block, (batch,), generator=g)
    return (torch.stack([data[i:i + block] for i in ix]), torch.stack([data[i + 1:i + 1 + block] for i in ix]))


def _nanogpt_lr(it, lr=1e-3, min_lr=1e-4, warmup=20, decay_iters=200):
    """nanoGPT train.py's get_lr: linear warmup, then cosine decay to min_lr."""
    if it < warmup:
        return lr * (it + 1) / (warmup + 1)
    ratio = min(1.0, (it - warmup) / (decay_iters - warmup))
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


def _nanogpt_char(f, steps=200, block=16, batch=32):
    """Source: karpathy/nanoGPT model.py and train.py (config/train_shakespeare_char.py's lr 1e-3,
    min_lr 1e-4; train.py's betas (0.9, 0.95), weight decay 0.1, grad_clip 1.0), 2 layers."""
    data, vocab = char_stream()
    torch.manual_seed(0)
    model = GPT(vocab, block_size=block)
    opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95))
    g = torch.Generator().manual_seed(0)
    with hooks.watch(model, optimizer=opt, loss_fn=F.cross_entropy, run_dir=f, name="nanogpt_char") as run:
        for it in range(steps):
            for group in opt.param_groups:
                group["lr"] = _nanogpt_lr(it, decay_iters=steps)
            x, y = _batches(data, block, batch, g)
            logits, loss = model(x, y)
            run.log_batch(logits.view(-1, vocab), y.view(-1), loss=loss)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
    return Path(run.path)


# ---------------------------------------------------------------------------------
# (b) Hugging Face GPT-2 built from a config, its own labels= loss


def _hf_gpt2(f, steps=200, block=16, batch=32):
    """Source: huggingface/transformers examples/pytorch/language-modeling/run_clm_no_trainer.py
    (AdamW lr 5e-5 there, here 1e-3 for a 2-layer model trained 200 steps; linear schedule with
    warmup; the model's own shifted-label loss), model built from GPT2Config, nothing downloaded."""
    from transformers import GPT2Config, GPT2LMHeadModel, get_linear_schedule_with_warmup
    data, vocab = char_stream()
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=64, n_positions=32))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    sched = get_linear_schedule_with_warmup(opt, num_warmup_steps=20, num_training_steps=steps)
    g = torch.Generator().manual_seed(0)
    model.train()
    with hooks.watch(model, optimizer=opt, run_dir=f, name="hf_gpt2") as run:
        for _ in range(steps):
            x, _ = _batches(data, block, batch, g)
            out = model(input_ids=x, labels=x)
            # the model shifts the labels inside: log the positions its loss compares
            run.log_batch(out.logits[:, :-1].reshape(-1, out.logits.size(-1)), x[:, 1:].reshape(-1), loss=out.loss)
            out.loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad()
    return Path(run.path)


# ---------------------------------------------------------------------------------
# (c) pytorch/examples word_language_model, small


class RNNModel(nn.Module):
    """pytorch/examples word_language_model/model.py's RNNModel (LSTM), tied weights."""

    def __init__(self, ntoken, ninp=32, nhid=32, nlayers=2, dropout=0.2, tie_weights=True):
        super().__init__()
        self.drop, self.encoder = nn.Dropout(dropout), nn.Embedding(ntoken, ninp)
        self.rnn = nn.LSTM(ninp, nhid, nlayers, dropout=dropout)
        self.decoder = nn.Linear(nhid, ntoken)
        if tie_weights:
            self.decoder.weight = self.encoder.weight
        self.ntoken, self.nhid, self.nlayers = ntoken, nhid, nlayers
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)
        nn.init.uniform_(self.decoder.weight, -0.1, 0.1)

    def forward(self, input, hidden):
        output, hidden = self.rnn(self.drop(self.encoder(input)), hidden)
        decoded = self.decoder(self.drop(output)).view(-1, self.ntoken)
        return F.log_softmax(decoded, dim=1), hidden

    def init_hidden(self, bsz):
        w = next(self.parameters())
        return (w.new_zeros(self.nlayers, bsz, self.nhid), w.new_zeros(self.nlayers, bsz, self.nhid))


def _word_lm(f, epochs=6, bptt=16, bsz=20, lr=20.0, clip=0.25):
    """Source: pytorch/examples word_language_model/main.py (batchify, get_batch, repackage_hidden,
    NLLLoss, lr 20, clip 0.25, the update `p.data.add_(p.grad, alpha=-lr)` by hand: no optimizer,
    so a step is one training forward), model.py's RNNModel with --tied; characters, not words."""
    data, vocab = char_stream(400)
    nbatch = data.size(0) // bsz
    data = data[:nbatch * bsz].view(bsz, -1).t().contiguous()  # batchify
    torch.manual_seed(0)
    model, criterion = RNNModel(vocab), nn.NLLLoss()
    with hooks.watch(model, loss_fn=criterion, run_dir=f, name="word_lm") as run:
        for _ in range(epochs):
            model.train()
            hidden = model.init_hidden(bsz)
            for i in range(0, data.size(0) - 1, bptt):
                seq_len = min(bptt, len(data) - 1 - i)
                x, targets = data[i:i + seq_len], data[i + 1:i + 1 + seq_len].reshape(-1)
                model.zero_grad()
                hidden = tuple(h.detach() for h in hidden)  # repackage_hidden
                output, hidden = model(x, hidden)
                criterion(output, targets).backward()
                nn.utils.clip_grad_norm_(model.parameters(), clip)
                for p in model.parameters():
                    p.data.add_(p.grad, alpha=-lr)
    return Path(run.path)


# Each fires output_vs_label (fit.py): owned by another part. Read from one capture (step
# 128), the rare characters are never the argmax of a healthy character LM.
CONTROLS: list[Case] = [
    Case("nanogpt_char", _nanogpt_char),  # fires output_vs_label: owned by another part
    Case("hf_gpt2_from_config", _hf_gpt2),  # fires output_vs_label: owned by another part
    Case("word_language_model_lstm", _word_lm),  # fires output_vs_label: owned by another part
]


if __name__ == "__main__":
    import tempfile
    import time

    import diagnostics
    from diagnostics.health import check
    torch.set_num_threads(1)
    only = set(sys.argv[1:])
    with tempfile.TemporaryDirectory() as tmp:
        for case in CONTROLS:
            if only and case.name not in only:
                continue
            t = time.time()
            path = case.train(Path(tmp) / case.name)
            run = diagnostics.open_run(path)
            loss = run.scalars(["loss"])["value"]
            print(f"{case.name}: trained in {time.time() - t:.1f}s; loss "
                  f"{loss.iloc[:3].mean():.3f} -> {loss.iloc[-3:].mean():.3f}")
            for finding in check(run):
                print(f"  {finding.severity} {finding.rule} {finding.layer}: {finding.message}")
