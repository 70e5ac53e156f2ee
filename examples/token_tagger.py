"""A character-level tagger on text the example writes, with hooks attached: error review per token.

Sentences from templates ("Ada met Bob at 7 pm.", "Seven boats left Lima on 12 May.") are tagged
character by character: OTHER, NAME (a person's or a place's name), NUMBER (digits and number
words) and SPACE (spaces and punctuation). A small bidirectional GRU learns it in a few seconds
on a CPU and stays imperfect where the text is ambiguous: a capitalised word opening a sentence
is a name or not ("May" the month against "May" the name, "Seven" the number), names it never
saw in training. Sentences have different lengths: the padding is labelled -100, which the loss
(and the evaluation) leave out.

`run.evaluate` on the validation sentences records one row per sentence (mean loss over its
characters, the share right in `position_accuracy`; `correct` when all are) and one per
character in the positions table; with the tokenizer passed, Sample detail shows each
sentence as its characters coloured by loss.

    python examples/token_tagger.py --runs-dir runs
    diagnostics dashboard runs
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import torch
from torch import nn

import hooks

TAGS = ["OTHER", "NAME", "NUMBER", "SPACE"]
OTHER, NAME, NUMBER, SPACE = range(4)
IGNORE = -100
NAMES = ["Ada", "Bob", "Lima", "Oslo", "Kofi", "Mei", "Ines", "Tariq", "May", "Paris", "Olu", "Nora",
         "Hugo", "Rome", "Sami", "Zoe"]
HELD_OUT_NAMES = ["Quito", "Yara", "Basil", "June"]  # in validation sentences only
NUMBER_WORDS = ["one", "two", "three", "seven", "ten", "twelve"]
TEMPLATES = [
    "{name} met {name} at {num} pm.",
    "{Num} boats left {name} on {num} May.",
    "we saw {name} and {name} in {name}.",
    "{name} paid {num} dollars for {num} books.",
    "the train to {name} leaves at {num}.",
    "{Num} of us went to {name} with {name}.",
    "May {name} call {name} before {num}?",
]


class CharTokenizer:
    """Characters as token ids (0 is padding): `convert_ids_to_tokens` is what `run.evaluate(
    tokenizer=...)` reads to show the tokens by their strings."""

    def __init__(self, alphabet: str):
        self.itos = ["<pad>", *sorted(set(alphabet))]
        self.stoi = {c: i for i, c in enumerate(self.itos)}

    def __call__(self, text: str) -> list[int]:
        return [self.stoi[c] for c in text]

    def convert_ids_to_tokens(self, ids):
        if isinstance(ids, int):
            return self.itos[ids]
        return [self.itos[int(i)] for i in ids]

    def __len__(self) -> int:
        return len(self.itos)


def make_sentences(n: int, seed: int = 0, names: list[str] | None = None) -> list[tuple[str, list[int]]]:
    """`n` sentences with one tag per character."""
    rng = random.Random(seed)
    names = names or NAMES
    out = []
    for _ in range(n):
        text, tags = "", []
        template = rng.choice(TEMPLATES)
        for part in template.replace("{", "\0{").replace("}", "}\0").split("\0"):
            if part in ("{name}", "{num}", "{Num}"):
                if part == "{name}":
                    word, tag = rng.choice(names), NAME
                else:
                    digits = part == "{num}" and rng.random() < 0.5
                    word = str(rng.randint(1, 99)) if digits else rng.choice(NUMBER_WORDS)
                    word = word.capitalize() if part == "{Num}" else word
                    tag = NUMBER
                text += word
                tags += [tag] * len(word)
            else:
                for c in part:
                    text += c
                    # "May" the month in a template is a word, not a name
                    tags.append(SPACE if not c.isalnum() else OTHER)
        out.append((text, tags))
    return out


def tensors(sentences, tokenizer: CharTokenizer, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and tags padded to `length` (padding: id 0, tag -100)."""
    x = torch.zeros(len(sentences), length, dtype=torch.long)
    y = torch.full((len(sentences), length), IGNORE, dtype=torch.long)
    for i, (text, tags) in enumerate(sentences):
        ids = tokenizer(text)[:length]
        x[i, :len(ids)] = torch.tensor(ids)
        y[i, :len(ids)] = torch.tensor(tags[:length])
    return x, y


class Tagger(nn.Module):
    """Embedding, a bidirectional GRU, a linear layer per position: outputs (N, L, tags)."""

    def __init__(self, vocab: int, tags: int = len(TAGS), dim: int = 24, hidden: int = 32):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim, padding_idx=0)
        self.gru = nn.GRU(dim, hidden, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * hidden, tags)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.gru(self.embed(x))
        return self.head(h)


def train(runs_dir: str | Path = "runs", name: str = "token-tagger", n: int = 1200, epochs: int = 4,
          seed: int = 0, batch_size: int = 32, lr: float = 1e-2) -> Path:
    """Write `n` training sentences and n/4 validation ones (some with names never seen), train
    the tagger, evaluate per character; returns the run path."""
    torch.manual_seed(seed)
    train_sentences = make_sentences(n, seed=seed)
    val_sentences = make_sentences(max(n // 4, 4), seed=seed + 1, names=NAMES + HELD_OUT_NAMES)
    alphabet = "".join(t for t, _ in train_sentences + val_sentences)
    tokenizer = CharTokenizer(alphabet)
    length = max(len(t) for t, _ in train_sentences + val_sentences)
    x, y = tensors(train_sentences, tokenizer, length)
    xv, yv = tensors(val_sentences, tokenizer, length)
    model = Tagger(len(tokenizer))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    criterion = nn.CrossEntropyLoss(ignore_index=IGNORE)
    gen = torch.Generator().manual_seed(seed + 2)
    val_ids = torch.arange(len(xv))
    val_batches = [(xv[ids], yv[ids], ids) for ids in val_ids.split(64)]
    config = {"dataset": "template sentences (examples/token_tagger.py)", "n": n, "epochs": epochs,
              "batch_size": batch_size, "lr": lr, "seed": seed}
    with hooks.watch(model, optimizer=opt, loss_fn=criterion, run_dir=runs_dir, name=name, config=config,
                     class_names=list(TAGS), seed=seed) as run:
        for epoch in range(epochs):
            model.train()
            for batch in torch.randperm(len(x), generator=gen).split(batch_size):
                opt.zero_grad()
                # (N, L, C) → (N, C, L): torch's layout for a loss over positions
                loss = criterion(model(x[batch]).transpose(1, 2), y[batch])
                loss.backward()
                opt.step()
            metrics = run.evaluate(val_batches, split="val", attribute_worst=0, progress=False, tokenizer=tokenizer)
            print(f"  {name}: epoch {epoch + 1}/{epochs}  loss {loss.item():.3f}  "
                  f"val accuracy per character {metrics['position_accuracy']:.3f}", flush=True)
    return run.path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train a character tagger on generated text with hooks attached.")
    parser.add_argument("--runs-dir", default="runs", help="folder to write the run into (default: runs)")
    parser.add_argument("--name", default="token-tagger", help="run name (default: token-tagger)")
    parser.add_argument("--n", type=int, default=1200, help="training sentences (default: 1200)")
    parser.add_argument("--epochs", type=int, default=4, help="training epochs (default: 4)")
    parser.add_argument("--seed", type=int, default=0, help="seed for text, split and weights (default: 0)")
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
