"""A fresh held-out set of bugs from public reports (issue #23's target), none of them in
benchmarks/public_bugs.py (whose 17 cases the rules were tuned on), health_suite.py's planted
cases, or issue #23's text.

Each case ports one silent training bug people reported in public (StackOverflow and PyTorch /
Hugging Face forum threads, TrainCheck's silent-error classes (OSDI 2025), AutoTrainer's
problem types (ICSE 2021), DeepFD / UMLAUT / NeuraLint fault types), small enough to train on
CPU in seconds with nothing downloaded. `rule` names the rule that *should* name the cause;
`ACCEPT[case]` every rule name that would. A name no rule emits yet (e.g. `weights_reset`)
marks a cause no rule reads: the case counts as missed until one does.

The set measures the rules as they are on the commit it was written against: nothing here
tunes `diagnostics/`. Scoring, the table and the JSON are public_bugs.py's.

Usage::

    PYTHONPATH=. .venv/bin/python benchmarks/public_bugs_fresh.py
    PYTHONPATH=. .venv/bin/python benchmarks/public_bugs_fresh.py --json benchmarks/results/public_bugs_fresh.json
    PYTHONPATH=. .venv/bin/python benchmarks/public_bugs_fresh.py --only relu_on_logits,l2
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch import nn

import hooks
from benchmarks import public_bugs as pb
from benchmarks.health_suite import Case, digits, fit, flat_digits
from benchmarks.public_bugs import digits_mlp, train_loop

_EPOCH = 45  # batches of 32 in an epoch of the 1437 training digits


def _digits(name, model=digits_mlp, opt=None, prep=None, **kw):
    """train(folder) on flat 8x8 digits through public_bugs.train_loop."""
    def train(f):
        x, y, _, _ = flat_digits()
        x, y = prep(x, y) if prep else (x, y)
        m = model()
        return train_loop(m, x, y, f, name, opt=opt(m) if opt else None, **kw)
    return train


def _mlp3(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


# ---------------------------------------------------------------------------------
# Optimizer and loop bugs


def _head_only_optimizer(m):
    """StackOverflow "Only the last layer's weights are updated" / PyTorch forum "optimizer
    only updates model.fc": `optim.Adam(model.fc.parameters())` copied from a transfer-learning
    tutorial into a model trained from scratch, so the hidden layers stay at their random init."""
    return torch.optim.Adam(m[-1].parameters(), lr=1e-3)


def _reinit_every_epoch(model, opt, crit, xb, yb, step):
    """PyTorch forum "Loss resets to the initial value at every epoch" / StackOverflow "model
    restarts learning each epoch": `model.apply(weights_init)` left inside the epoch loop, so the
    weights go back to a fresh random init at the start of every epoch."""
    if step % _EPOCH == 0:
        for layer in model.modules():
            if isinstance(layer, nn.Linear):
                layer.reset_parameters()
    opt.zero_grad()
    crit(model(xb), yb).backward()
    opt.step()


def _clip_value_tiny(model, opt, crit, xb, yb, step):
    """PyTorch forum "clip_grad_value_ vs clip_grad_norm_, model does not learn":
    `clip_grad_value_(params, 1e-5)` (a value meant as a norm threshold, or an epsilon), so with
    SGD every gradient element is capped at 1e-5 and the weights hardly move."""
    opt.zero_grad()
    crit(model(xb), yb).backward()
    nn.utils.clip_grad_value_(model.parameters(), 1e-5)
    opt.step()


def _l2_in_loss(model, opt, crit, xb, yb, step):
    """PyTorch forum "Adding L2 regularization to the loss manually: model does not learn" (a
    penalty summed over every parameter with lambda 1, where 1e-4 was meant): the penalty is most
    of the loss and pulls every weight to zero."""
    opt.zero_grad()
    penalty = sum(p.pow(2).sum() for p in model.parameters())
    (crit(model(xb), yb) + 1.0 * penalty).backward()
    opt.step()


def _warmup_never_stepped(f):
    """Hugging Face forum "Loss does not decrease: learning rate is 0" (get_linear_schedule_with_warmup
    built, `scheduler.step()` forgotten): a warmup schedule starts at lr 0 and, never stepped,
    stays there."""
    from transformers import get_linear_schedule_with_warmup
    x, y, _, _ = flat_digits()
    model = digits_mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    get_linear_schedule_with_warmup(opt, num_warmup_steps=50, num_training_steps=500)  # never stepped
    return train_loop(model, x, y, f, "warmup_not_stepped", opt=opt, steps=80)


def _zero_grad_other_optimizer(f):
    """PyTorch seq2seq-tutorial ports on the forum ("decoder loss explodes / does not converge"):
    an encoder and a decoder with one optimizer each, and only `encoder_optimizer.zero_grad()`
    called, so the decoder's gradients accumulate over every step. The decoder is watched (one run
    per model, as with a GAN)."""
    x, y, _, _ = flat_digits()
    torch.manual_seed(0)
    enc = nn.Sequential(nn.Linear(64, 64), nn.ReLU())
    dec = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    enc_opt, dec_opt = torch.optim.SGD(enc.parameters(), lr=0.01), torch.optim.SGD(dec.parameters(), lr=0.01)
    crit, gen = nn.CrossEntropyLoss(), torch.Generator().manual_seed(0)
    with hooks.watch(dec, optimizer=dec_opt, loss_fn=crit, run_dir=f, name="zero_grad_other_opt") as run:
        for _ in range(120):
            idx = torch.randint(len(x), (32,), generator=gen)
            enc_opt.zero_grad()  # the bug: dec_opt.zero_grad() missing
            crit(dec(enc(x[idx])), y[idx]).backward()
            enc_opt.step()
            dec_opt.step()
    return Path(run.path)


def _dying_relu_sgd(m):
    """AutoTrainer (ICSE 2021) problem type "dying ReLU" (and DeepFD's "learning rate too high"
    fault): plain SGD at lr 2.0 on a ReLU MLP; a few large steps push most hidden units negative
    for every input (on this run 77% of the first hidden layer's units and 97% of the second's
    are never positive on the training set after 100 steps) and the loss stays at the baseline."""
    return torch.optim.SGD(m.parameters(), lr=2.0)


# ---------------------------------------------------------------------------------
# Model bugs


def _relu_on_logits():
    """StackOverflow "ReLU as the last layer before CrossEntropyLoss: accuracy stuck" / PyTorch
    forum "Should I use ReLU on the output layer?": a ReLU after the classifier, so every negative
    logit is 0 and gets no gradient."""
    return nn.Sequential(digits_mlp(), nn.ReLU())


def _sigmoid_regression(f):
    """StackOverflow "Regression network always predicts 1" (age or price regression with a
    sigmoid output layer kept from a classifier): targets in [0, 100], outputs bounded by 1."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1024, 8, generator=g)
    y = (50 + 15 * (x[:, :1] - 0.5 * x[:, 1:2]) + 3 * torch.randn(1024, 1, generator=g)).clamp(0, 100)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 1), nn.Sigmoid())
    return fit(model, x, y, f, "sigmoid_regression", epochs=5, lr=1e-3, adam=True, crit=nn.MSELoss(), every=5)


class _LstmNotBatchFirst(nn.Module):
    """StackOverflow "LSTM batch_first=True forgotten: model does not learn" (and the forum's
    "input shape for nn.LSTM" threads): (batch, seq, feature) input into an nn.LSTM built
    seq-first, read as `out[:, -1]`: the batch is run as time, so each sample's state carries the
    samples before it in the batch."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lstm, self.head = nn.LSTM(8, 32), nn.Linear(32, 10)  # batch_first=True meant

    def forward(self, x):
        out, _ = self.lstm(x.view(x.shape[0], 8, 8))
        return self.head(out[:, -1])


class _FirstStepReadout(nn.Module):
    """StackOverflow "LSTM text classifier: output[:, 0] or output[:, -1]?" / PyTorch forum
    "LSTM many-to-one uses the wrong time step": a unidirectional GRU read at its first time
    step, which has seen one token; the label depends on the last tokens."""

    def __init__(self, vocab=20):
        super().__init__()
        torch.manual_seed(0)
        self.emb, self.rnn, self.head = nn.Embedding(vocab, 16), nn.GRU(16, 32, batch_first=True), nn.Linear(32, 4)

    def forward(self, x):
        return self.head(self.rnn(self.emb(x))[0][:, 0])  # the bug: [:, -1] meant


def _first_step_readout(f):
    g = torch.Generator().manual_seed(0)
    seqs = torch.randint(0, 20, (1024, 12), generator=g)
    y = seqs[:, -1] % 4  # the class: the last token's residue
    return train_loop(_FirstStepReadout(), seqs, y, f, "first_step_readout", steps=150)


def _hf_eval_mode(f):
    """Hugging Face docs and forum ("from_pretrained() returns the model in eval mode; call
    model.train() before fine-tuning", "fine-tuning without dropout"): a GPT-2 LM (built from a
    config, nothing downloaded) put in eval mode as from_pretrained leaves it, then fine-tuned
    without model.train(): dropout off for all of training. TrainCheck's class of a model trained
    in eval mode."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from benchmarks.controls_lm import char_stream
    data, _ = char_stream()
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=64, n_positions=32))
    model.eval()  # what from_pretrained does; model.train() never called
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    with hooks.watch(model, optimizer=opt, run_dir=f, name="hf_eval_mode") as run:
        for _ in range(80):
            start = torch.randint(len(data) - 16, (32,), generator=g)
            x = torch.stack([data[i:i + 16] for i in start])  # nanoGPT's get_batch
            out = model(input_ids=x, labels=x)
            run.log_batch(out.logits[:, :-1].reshape(-1, out.logits.size(-1)), x[:, 1:].reshape(-1), loss=out.loss)
            out.loss.backward()
            opt.step()
            opt.zero_grad()
    return Path(run.path)


# ---------------------------------------------------------------------------------
# Data and loss-contract bugs


def _tabular_one_feature_raw(f):
    """StackOverflow "Neural network on tabular data does not learn; one feature is in the
    thousands" (income or price in raw units next to standardised columns): 7 standardised
    features and one of mean 5e4, std 2e4; the target a linear map of the standardised ones."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1024, 8, generator=g)
    y = x[:, 1:2] - 0.5 * x[:, 2:3] + 0.1 * torch.randn(1024, 1, generator=g)
    x[:, 0] = 5e4 + 2e4 * x[:, 0]  # the raw column
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))
    return fit(model, x, y, f, "tabular_raw_feature", epochs=5, lr=1e-3, adam=True, crit=nn.MSELoss(), every=5)


def _normalize_without_totensor(x, y):
    """PyTorch forum "Normalize((0.1307,), (0.3081,)) gives huge values" (MNIST's mean and std
    applied to uint8 pixels 0..255, transforms.ToTensor() left out): inputs up to ~830."""
    raw = digits(standardise=False)[0].flatten(1) * (255 / 16)
    return (raw - 0.1307) / 0.3081, y


def _nan_in_targets(f):
    """StackOverflow "Loss is NaN from the first epoch" / PyTorch forum "MSELoss returns nan"
    (missing values in a CSV's target column read as NaN, never dropped): 1% of the regression
    targets NaN, so the first batch holding one makes the loss, every gradient and then every
    weight NaN."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1024, 8, generator=g)
    y = x[:, :1] - 0.5 * x[:, 1:2] + 0.1 * torch.randn(1024, 1, generator=g)
    y[torch.rand(1024, generator=g) < 0.01] = float("nan")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 1))
    return fit(model, x, y, f, "nan_targets", epochs=3, lr=1e-3, adam=True, crit=nn.MSELoss(), every=5)


def _multi_hot_into_ce(f):
    """StackOverflow "Multi-label classification with CrossEntropyLoss" (multi-hot targets with
    several ones per row into nn.CrossEntropyLoss, which reads them as one distribution; BCEWithLogitsLoss
    meant): 5 labels, each present when a linear score of the inputs is positive."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1024, 20, generator=g)
    y = (x @ torch.randn(20, 5, generator=g) > 0).float()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 5))
    return train_loop(model, x, y, f, "multi_hot_ce", steps=100)


def _labels_one_class(x, y):
    """StackOverflow "model predicts only one class / 100% accuracy at once" (a label column
    parsed by comparing to a string that never matches, e.g. `df.label == "Nine"` where the
    column holds 9): a binary "is it a 9?" task whose labels are all 0."""
    return x, torch.zeros_like(y)


def _same_sample_every_time(f):
    """StackOverflow "DataLoader returns the same image every time / model predicts the same
    class for everything" (a Dataset's __getitem__ returning `self.x[0]` for `self.x[idx]`): every
    input is the first sample, the labels are right."""
    x, y, _, _ = flat_digits()
    x = x[:1].expand(len(x), -1).clone()
    return train_loop(digits_mlp(), x, y, f, "same_sample", steps=100)


# ---------------------------------------------------------------------------------

_ADAM_3 = lambda m: torch.optim.Adam(m.parameters(), lr=1e-3)
_SGD_M = lambda m: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)

CASES: list[Case] = [
    Case("optimizer_holds_head_only", _digits("head_only_opt", model=_mlp3, opt=_head_only_optimizer, steps=100),
         "not_in_optimizer"),
    Case("weights_reinit_every_epoch", _digits("reinit_epoch", step=_reinit_every_epoch, steps=4 * _EPOCH,
                                               every=5), "weights_reset"),
    Case("clip_grad_value_1e-5", _digits("clip_value", opt=_SGD_M, step=_clip_value_tiny, steps=100), "update_ratio"),
    Case("l2_penalty_lambda_1_in_loss", _digits("l2_in_loss", step=_l2_in_loss, steps=100),
         "weight_decay_dominates"),
    Case("warmup_scheduler_never_stepped", _warmup_never_stepped, "lr_collapse"),
    Case("zero_grad_on_other_optimizer", _zero_grad_other_optimizer, "gradients_not_reset"),
    Case("sgd_lr_2_dying_relu", _digits("dying_relu", model=_mlp3, opt=_dying_relu_sgd, steps=100), "dead_units"),
    Case("relu_on_logits", _digits("relu_logits", model=_relu_on_logits, steps=100), "dead_units"),
    Case("sigmoid_head_regression_0_100", _sigmoid_regression, "output_vs_label"),
    Case("lstm_batch_first_forgotten", _digits("lstm_not_batch_first", model=_LstmNotBatchFirst, opt=lambda m: torch.
                                               optim.Adam(m.parameters(), lr=3e-3), steps=150), "batch_mixing"),
    Case("rnn_reads_first_time_step", _first_step_readout, "sequence_readout"),
    Case("hf_model_left_in_eval_mode", _hf_eval_mode, "trained_in_eval_mode"),
    Case("tabular_feature_in_raw_units", _tabular_one_feature_raw, "input_scale"),
    Case("normalize_without_totensor", _digits("normalize_255", prep=_normalize_without_totensor, steps=100),
         "input_scale"),
    Case("nan_in_regression_targets", _nan_in_targets, "nonfinite"),
    Case("multi_hot_into_cross_entropy", _multi_hot_into_ce, "soft_target_sum"),
    Case("labels_all_one_class", _digits("one_class", prep=_labels_one_class, model=lambda: digits_mlp(d_out=2),
                                         steps=80), "single_class_labels"),
    Case("dataset_returns_same_sample", _same_sample_every_time, "constant_inputs"),
]

# Every rule name that names the cause (the case's `rule` first); names no rule emits mark a cause
# no rule reads yet.
ACCEPT: dict[str, set[str]] = {
    "optimizer_holds_head_only": {"not_in_optimizer", "stuck_parameters", "frozen_model"},
    "weights_reinit_every_epoch": {"weights_reset"},
    "clip_grad_value_1e-5": {"update_ratio", "stuck_parameters"},
    "l2_penalty_lambda_1_in_loss": {"weight_decay_dominates", "regularisation_dominates"},
    "warmup_scheduler_never_stepped": {"lr_collapse", "stuck_parameters"},
    "zero_grad_on_other_optimizer": {"gradients_not_reset"},
    "sgd_lr_2_dying_relu": {"dead_units", "update_ratio", "nonfinite"},
    "relu_on_logits": {"dead_units", "relu_on_logits"},
    "sigmoid_head_regression_0_100": {"output_vs_label", "saturation", "output_range"},
    # batch_first_mismatch: the LSTM's batch axis (by its batch_first) is not the loss's N (rulesB)
    "lstm_batch_first_forgotten": {"batch_mixing", "input_scrambled", "batch_first_mismatch"},
    "rnn_reads_first_time_step": {"sequence_readout"},
    "hf_model_left_in_eval_mode": {"trained_in_eval_mode"},
    "tabular_feature_in_raw_units": {"input_scale"},
    "normalize_without_totensor": {"input_scale"},
    "nan_in_regression_targets": {"nonfinite", "nonfinite_targets"},
    "multi_hot_into_cross_entropy": {"soft_target_sum", "target_range"},
    "labels_all_one_class": {"single_class_labels"},
    "dataset_returns_same_sample": {"constant_inputs"},
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
