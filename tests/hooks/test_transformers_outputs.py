"""hooks.transformers: the evaluation after training on every Hugging Face output shape —
sequence classification with padded batches, token classification, a causal LM (issue #24).
Tiny models built from a config (no downloads); references in plain torch, one sample at a time."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import diagnostics

VOCAB, PAD = 50, 0


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


class Sentences(torch.utils.data.Dataset):
    """Token sequences of 3 to 10 tokens (ids 1..VOCAB-1, unpadded), a second segment from
    the middle on (token_type_ids 1), and a label per sentence and per token."""

    def __init__(self, n: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.items = []
        for _ in range(n):
            length = int(torch.randint(3, 11, (), generator=g))
            ids = torch.randint(1, VOCAB, (length,), generator=g)
            types = (torch.arange(length) >= length // 2).long()
            self.items.append({"input_ids": ids, "token_type_ids": types, "label": int(ids[0] > VOCAB // 2),
                               "tags": (ids % 3).long()})

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def pad_collator(kind: str):
    """A hand-written padding collator (what DataCollatorWithPadding does): input_ids padded
    with PAD, attention_mask, token_type_ids; labels per sentence ("sequence"), per token with
    -100 at the padding and at the first token, a special token ("tokens"), or the input ids
    with -100 at the padding ("causal")."""

    def collate(items):
        width = max(len(item["input_ids"]) for item in items)
        batch = {"input_ids": torch.full((len(items), width), PAD), "attention_mask": torch.zeros(len(items), width,
                                                                                                   dtype=torch.long)}
        if kind != "causal":
            batch["token_type_ids"] = torch.zeros(len(items), width, dtype=torch.long)
        labels = torch.full((len(items), width), -100)
        for row, item in enumerate(items):
            n = len(item["input_ids"])
            batch["input_ids"][row, :n] = item["input_ids"]
            batch["attention_mask"][row, :n] = 1
            if kind != "causal":
                batch["token_type_ids"][row, :n] = item["token_type_ids"]
            labels[row, :n] = item["tags"] if kind == "tokens" else item["input_ids"]
            if kind == "tokens":
                labels[row, 0] = -100  # a [CLS]-like token: not scored
        batch["labels"] = torch.tensor([item["label"] for item in items]) if kind == "sequence" else labels
        return batch

    return collate


def _model(kind: str):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    if kind == "causal":
        config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=16, n_embd=32, n_layer=2, n_head=2,
                                         pad_token_id=PAD, initializer_range=0.5)
        return transformers.GPT2LMHeadModel(config)
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=16, type_vocab_size=2,
                                     num_labels=2 if kind == "sequence" else 3, initializer_range=0.5)
    model_class = transformers.BertForSequenceClassification if kind == "sequence" \
        else transformers.BertForTokenClassification
    return model_class(config)


def _train(tmp_path, kind: str, **callback_kwargs):
    """A few Trainer steps on padded batches with the callback; returns (callback, trainer,
    eval data, the warnings raised)."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")  # the Trainer needs it
    from hooks.transformers import DiagnosticsCallback

    cb = DiagnosticsCallback(run_dir=tmp_path / "runs", name=kind, every=1, **callback_kwargs)
    data = Sentences(20, 1)
    args = transformers.TrainingArguments(output_dir=str(tmp_path / "hf"), max_steps=3, per_device_train_batch_size=4,
                                          per_device_eval_batch_size=8, report_to=[], use_cpu=True,
                                          save_strategy="no", eval_strategy="steps", eval_steps=3,
                                          disable_tqdm=True, remove_unused_columns=False)
    trainer = transformers.Trainer(model=_model(kind), args=args, train_dataset=Sentences(24, 0), eval_dataset=data,
                                   data_collator=pad_collator(kind), callbacks=[cb])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
    ours = [str(w.message) for w in caught if "DiagnosticsCallback" in str(w.message) or "hookscope" in str(w.message)
            or "evaluat" in str(w.message)]
    return cb, trainer, data, ours


def _per_token_reference(model, data, kind: str) -> list[torch.Tensor]:
    """Each sample's per-position losses (counted positions only), the sample alone and
    unpadded through the model in plain torch."""
    model.eval()
    losses = []
    with torch.no_grad():
        for item in data:
            ids = item["input_ids"][None]
            if kind == "causal":
                logits = model(input_ids=ids).logits[0, :-1]
                targets = item["input_ids"][1:]
            else:
                logits = model(input_ids=ids, token_type_ids=item["token_type_ids"][None]).logits[0, 1:]
                targets = item["tags"][1:]
            losses.append(torch.nn.functional.cross_entropy(logits, targets, reduction="none"))
    return losses


@pytest.mark.slow
def test_sequence_classification_with_padded_batches_is_evaluated(tmp_path):
    """The most common fine-tuning: padded batches with attention_mask and token_type_ids.
    Every sample gets a record whose loss is the model's own on that sample alone."""
    cb, trainer, data, ours = _train(tmp_path, "sequence")
    assert ours == []
    run = diagnostics.open_run(cb.run.path)
    assert not run.manifest.get("faults")
    samples = run.samples(split="val").set_index("sample_id").loc[[str(i) for i in range(len(data))]]
    model = trainer.model.eval()
    with torch.no_grad():
        expected = [torch.nn.functional.cross_entropy(
            model(input_ids=item["input_ids"][None], token_type_ids=item["token_type_ids"][None]).logits,
            torch.tensor([item["label"]])).item() for item in data]
        padded = pad_collator("sequence")(list(data))
        unmasked = model(input_ids=padded["input_ids"], token_type_ids=padded["token_type_ids"]).logits
    np.testing.assert_allclose(samples["loss"].to_numpy(), expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(samples["label"].to_numpy(), [item["label"] for item in data])
    unmasked_loss = torch.nn.functional.cross_entropy(unmasked, padded["labels"], reduction="none").numpy()
    assert np.abs(unmasked_loss - expected).max() > 1e-3  # without the mask the losses differ: it reached the model
    # batches (of 8) padded to different widths: each preview is the sample's ids, then 0 to its batch's width
    previews = run.previews("val", [str(i) for i in range(len(data))]).set_index("sample_id")
    for i, item in enumerate(data):
        values = np.asarray(previews.loc[str(i), "values"])
        expected_ids = np.zeros(max(len(other["input_ids"]) for other in data.items[i // 8 * 8:i // 8 * 8 + 8]))
        expected_ids[:len(item["input_ids"])] = item["input_ids"].numpy()
        np.testing.assert_array_equal(values, expected_ids)


def _positions_reference(losses: list[torch.Tensor], kind: str) -> tuple[list[str], list[int], np.ndarray]:
    """(sample ids, positions, losses) of every counted position, by hand: a causal LM's
    output t scores token t + 1 (positions 0 .. n-2), a tagger scores tokens 1 .. n-1."""
    ids, positions = [], []
    for i, sample in enumerate(losses):
        first = 0 if kind == "causal" else 1
        ids += [str(i)] * len(sample)
        positions += list(range(first, first + len(sample)))
    return ids, positions, torch.cat(losses).numpy()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["tokens", "causal"])
def test_token_outputs_are_evaluated_per_position(tmp_path, kind):
    """Token classification (labels -100 at padding and the first token) and a causal LM
    (labels = input ids, -100 at padding; shifted as the model's own loss does): a sample's
    loss is the mean over its counted positions, and the positions table has one row per
    counted position, its loss the model's own."""
    cb, trainer, data, ours = _train(tmp_path, kind)
    assert ours == []
    run = diagnostics.open_run(cb.run.path)
    assert not run.manifest.get("faults")
    reference = _per_token_reference(trainer.model, data, kind)
    samples = run.samples(split="val").set_index("sample_id").loc[[str(i) for i in range(len(data))]]
    np.testing.assert_allclose(samples["loss"].to_numpy(), [float(r.mean()) for r in reference], rtol=1e-4)
    ids, positions, losses = _positions_reference(reference, kind)
    table = run.positions(split="val")
    assert len(table) == len(ids) == sum(len(item["input_ids"]) - 1 for item in data)  # the hand count
    table = table.assign(order=table["sample_id"].astype(int)).sort_values(["order", "position"])
    assert table["sample_id"].tolist() == ids and table["position"].tolist() == positions
    np.testing.assert_allclose(table["loss"].to_numpy(), losses, rtol=1e-4, atol=1e-6)
    targets = torch.cat([item["input_ids"][1:] if kind == "causal" else item["tags"][1:] for item in data])
    info = run.position_info(split="val")
    assert info["layout"] == "tokens" and info["shift_labels"] == (kind == "causal")  # the pages say so
    np.testing.assert_array_equal(table["label"].to_numpy(), targets.numpy())


def _word_tokenizer():
    """A word-level fast tokenizer over the test's vocabulary ("w0" ... "w49"), built in memory."""
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    vocab = {f"w{i}": i for i in range(VOCAB)}
    model = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="w1"))
    model.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=model, pad_token="w0", unk_token="w1")


@pytest.mark.slow
def test_the_trainers_tokenizer_names_the_tokens(tmp_path):
    """The Trainer's processing_class reaches evaluate: the run stores the strings of the
    token ids its pages show (inputs, labels, predictions)."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from hooks.transformers import DiagnosticsCallback

    tokenizer = _word_tokenizer()
    assert tokenizer.convert_ids_to_tokens(7) == "w7"
    cb = DiagnosticsCallback(run_dir=tmp_path / "runs", name="named", every=1)
    args = transformers.TrainingArguments(output_dir=str(tmp_path / "hf"), max_steps=2, per_device_train_batch_size=4,
                                          per_device_eval_batch_size=8, report_to=[], use_cpu=True,
                                          save_strategy="no", eval_strategy="steps", eval_steps=2,
                                          disable_tqdm=True, remove_unused_columns=False)
    data = Sentences(12, 1)
    transformers.Trainer(model=_model("causal"), args=args, train_dataset=Sentences(8, 0), eval_dataset=data,
                         data_collator=pad_collator("causal"), processing_class=tokenizer, callbacks=[cb]).train()
    vocabulary = diagnostics.open_run(cb.run.path).vocabulary(split="val")
    inputs = {int(t) for item in data for t in item["input_ids"]}
    assert vocabulary and inputs <= set(vocabulary)
    assert all(vocabulary[i] == f"w{i}" for i in vocabulary)
