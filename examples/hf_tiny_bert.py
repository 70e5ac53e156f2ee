"""Hugging Face Trainer with diagnostics: a tiny BERT, built from a config, on synthetic tokens.

Nothing downloads: the model is `BertForSequenceClassification(BertConfig(...))` and the
data are random sequences of 16 tokens: class "low" draws its tokens from 1–59, class
"high" from 40–99, so sequences made mostly of tokens 40–59 are the hard cases. The
callback records the loss of every optimizer step, activations, gradients, weights and
updates on a schedule, the logits against the labels, the Trainer's evaluation metrics,
and at the end one row per evaluation sequence for error review. About 10 s on a CPU,
half of it importing transformers.

    python examples/hf_tiny_bert.py --runs-dir runs
    diagnostics dashboard runs
"""

from __future__ import annotations

import argparse
import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a tiny model from a config: nothing to fetch

import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

from hooks.transformers import DiagnosticsCallback

SEQUENCE_LENGTH = 16


class SyntheticTokens(torch.utils.data.Dataset):
    """Random token sequences: label 0 ("low") tokens from 1–59, label 1 ("high") from 40–99."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, 2, (n,), generator=g)
        self.input_ids = torch.randint(0, 60, (n, SEQUENCE_LENGTH), generator=g) + 1 + 39 * self.labels[:, None]

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids[i], "attention_mask": torch.ones(SEQUENCE_LENGTH, dtype=torch.long),
                "labels": self.labels[i]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs-dir", default="runs")
    parser.add_argument("--name", default="hf-tiny-bert")
    parser.add_argument("--steps", type=int, default=80)
    args = parser.parse_args()

    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=SEQUENCE_LENGTH, num_labels=2,
                        id2label={0: "low", 1: "high"})
    model = BertForSequenceClassification(config)
    with tempfile.TemporaryDirectory() as output_dir, \
            DiagnosticsCallback(run_dir=args.runs_dir, name=args.name) as callback:
        training = TrainingArguments(output_dir=output_dir, max_steps=args.steps, per_device_train_batch_size=16,
                                     learning_rate=1e-3, eval_strategy="steps", eval_steps=40, logging_steps=20,
                                     save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True)
        trainer = Trainer(model=model, args=training, train_dataset=SyntheticTokens(1024, seed=0),
                          eval_dataset=SyntheticTokens(256, seed=1), callbacks=[callback])
        trainer.train()
    print(f"recorded {callback.run.path} — browse it with: diagnostics dashboard {args.runs_dir}")


if __name__ == "__main__":
    main()
