"""Held-out bugs from public reports: silent training bugs the health rules were not written for.

Each case ports one bug that people reported in public (a StackOverflow or PyTorch-forum thread,
a GitHub issue, TrainCheck's silent-error workloads (OSDI 2025), AutoTrainer's problem types
(ICSE 2021)), small enough to train on CPU in seconds with nothing downloaded. `rule` names
the rule that *should* name the cause (the most specific); `ACCEPT[case]` every rule name that
would name it. A name no rule emits yet (e.g. `loss_on_padding`) marks a cause no rule
reads: the case counts as missed until one does.

This set measures the rules as they are: nothing here tunes `diagnostics/`. Per case the
table gives the loud findings, whether the first problem's cause
(`diagnostics.health.problems(run)[0].cause.rule`) is accepted, and whether any problem's
cause is.

Usage::

    PYTHONPATH=. .venv/bin/python benchmarks/public_bugs.py
    PYTHONPATH=. .venv/bin/python benchmarks/public_bugs.py --json benchmarks/results/public_bugs.json
    PYTHONPATH=. .venv/bin/python benchmarks/public_bugs.py --only detached,warmup
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch import nn

import diagnostics
import hooks
from benchmarks.health_suite import LOUD, Case, fit, flat_digits
from diagnostics.health import diagnose

# ---------------------------------------------------------------------------------
# A step loop with the bug in one of its callables


def digits_mlp(bn=False, dropout=0.0, d_out=10, seed=0):
    """64 -> 64 (BatchNorm) ReLU Dropout -> d_out, for flat 8x8 digits."""
    torch.manual_seed(seed)
    mid = [nn.BatchNorm1d(64)] if bn else []
    return nn.Sequential(nn.Linear(64, 64), *mid, nn.ReLU(), nn.Dropout(dropout), nn.Linear(64, d_out))


def _default_step(model, opt, crit, xb, yb, step):
    opt.zero_grad()
    loss = crit(model(xb), yb)
    loss.backward()
    opt.step()


def train_loop(model, x, y, folder, name, opt=None, crit=None, steps=80, batch=32, step=_default_step,
               before=None, validate=None, sched=None, every="auto", task=None):
    """Shuffled mini-batches of (x, y) for `steps` optimizer steps with hooks attached;
    `step(model, opt, crit, xb, yb, i)` does one training step (the planted bug lives there),
    `before(model)` runs once first, `validate(model, run)` every 10 steps, `sched(opt)` a
    scheduler stepped every batch."""
    crit = crit or nn.CrossEntropyLoss()
    opt = opt or torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = sched(opt) if sched else None
    gen = torch.Generator().manual_seed(0)
    order, pos = torch.randperm(len(x), generator=gen), 0
    if before is not None:
        before(model)
    with hooks.watch(model, optimizer=opt, loss_fn=crit, run_dir=folder, name=name, every=every, task=task) as run:
        for i in range(steps):
            if pos + batch > len(x):
                order, pos = torch.randperm(len(x), generator=gen), 0
            idx = order[pos:pos + batch]
            pos += batch
            step(model, opt, crit, x[idx], y[idx], i)
            if sched is not None:
                sched.step()
            if validate is not None and i % 10 == 9:
                validate(model, run)
    return Path(run.path)


def _digits_case(name, model=digits_mlp, opt=None, prep=None, **kw):
    """train(folder) on flat 8x8 digits (64 inputs, 10 classes)."""
    def train(f):
        x, y, _, _ = flat_digits()
        x, y = prep(x, y) if prep else (x, y)
        m = model()
        return train_loop(m, x, y, f, name, opt=opt(m) if opt else None, **kw)
    return train


# ---------------------------------------------------------------------------------
# Gradients that never reach the parameters


def _detached_loss_step(model, opt, crit, xb, yb, step):
    """PyTorch forum "Loss doesn't decrease / weights not updating" threads (e.g. "Why are my
    weights not updating?"): the loss rebuilt from `.item()` as a new leaf tensor
    (`torch.tensor(loss.item(), requires_grad=True)`) so that backward reaches no parameter."""
    opt.zero_grad()
    loss = crit(model(xb), yb)
    loss = torch.tensor(loss.item(), requires_grad=True)
    loss.backward()
    opt.step()


def _zero_grad_after_backward(model, opt, crit, xb, yb, step):
    """StackOverflow "PyTorch model not learning: optimizer.zero_grad() between loss.backward()
    and optimizer.step()": every step applies zeroed gradients."""
    loss = crit(model(xb), yb)
    loss.backward()
    opt.zero_grad()
    opt.step()


class _FrozenByNoGrad(nn.Module):
    """PyTorch forum "Does torch.no_grad() in forward freeze the layers?": a fine-tuning model
    whose forward runs the backbone under `torch.no_grad()` (meant for a feature-extraction
    experiment, left in), while the optimizer holds every parameter: the backbone never trains."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
        self.head = nn.Linear(64, 10)


    def forward(self, x):
        with torch.no_grad():
            h = self.backbone(x)
        return self.head(h)


def _optimizer_on_old_model(f):
    """PyTorch forum "Model weights not changing: optimizer created before re-creating the model"
    (e.g. a K-fold loop that re-instantiates the model after building the optimizer): the
    optimizer steps parameters of a model no longer used."""
    x, y, _, _ = flat_digits()
    old = digits_mlp()
    opt = torch.optim.Adam(old.parameters(), lr=1e-3)
    model = digits_mlp(seed=1)  # the model actually trained
    return train_loop(model, x, y, f, "old_model_opt", opt=opt)


def _cross_entropy_one_logit(f):
    """StackOverflow "CrossEntropyLoss is always 0" / "loss zero with one output neuron": a
    binary classifier with one output unit and float (N, 1) 0/1 labels into nn.CrossEntropyLoss
    (read as class probabilities over one class): the softmax over one class is 1, the loss 0
    and every gradient 0."""
    x, y, _, _ = flat_digits()
    yb = (y >= 5).float()[:, None]
    return train_loop(digits_mlp(d_out=1), x, yb, f, "ce_one_logit", steps=60)


# ---------------------------------------------------------------------------------
# The model's mode


def _eval_after_loading(f):
    """PyTorch forum "Resume training: accuracy drops after loading a checkpoint" (model.eval()
    called to check the loaded model, model.train() never called before fine-tuning); one of
    TrainCheck's silent-error classes (a model trained in eval mode): dropout and BatchNorm
    stay in inference behaviour through all of training."""
    x, y, _, _ = flat_digits()
    model = digits_mlp(bn=True, dropout=0.5)
    return train_loop(model, x, y, f, "eval_after_load", before=lambda m: m.eval(), steps=80)


class _FunctionalDropout(nn.Module):
    """PyTorch forum "F.dropout is still active in eval mode": `F.dropout(h, 0.5)` in forward
    (its `training` argument defaults to True, so model.eval() does not turn it off): the
    validation the user runs under model.eval() sees half the units dropped."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2 = nn.Linear(64, 128), nn.Linear(128, 10)

    def forward(self, x):
        return self.fc2(nn.functional.dropout(torch.relu(self.fc1(x)), 0.5))


def _functional_dropout(f):
    x, y, xv, yv = flat_digits()

    def validate(model, run):
        model.eval()
        with torch.no_grad():
            run.log_scalar("val/loss", nn.functional.cross_entropy(model(xv), yv))
        model.train()
    return train_loop(_FunctionalDropout(), x, y, f, "functional_dropout", validate=validate, steps=120)


# ---------------------------------------------------------------------------------
# The loss and the inputs


def _sigmoid_into_ce():
    """StackOverflow "Sigmoid + CrossEntropyLoss for binary classification: loss stuck near
    0.69/0.5": two output units through nn.Sigmoid into nn.CrossEntropyLoss (which applies
    log_softmax itself): the probabilities it sees differ by at most 1 in logit space."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2), nn.Sigmoid())


class _RowLSTM(nn.Module):
    """StackOverflow "view() vs transpose()/permute() for LSTM input; model does not learn"
    (and the PyTorch forum's "Difference between view and permute" threads): a (batch, seq,
    feature) batch reshaped with `.view(seq, batch, feature)` for a seq-first LSTM, which
    mixes rows of different samples into each sequence."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lstm, self.head = nn.LSTM(8, 32), nn.Linear(32, 10)

    def forward(self, x):
        b = x.shape[0]
        seq = x.view(b, 8, 8).view(8, b, 8)  # the bug: .transpose(0, 1) meant
        out, _ = self.lstm(seq)
        return self.head(out[-1])


def _unscaled_targets(f):
    """StackOverflow "Regression network predicts the mean / loss huge and does not decrease"
    (house prices in dollars as targets, inputs standardised): targets with std ~1e4 and
    Adam at lr 1e-3, whose steps cannot reach that output scale in a run."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1024, 8, generator=g)
    y = (2e4 * x[:, :1] - 1e4 * x[:, 1:2] + 2e5) + 1e3 * torch.randn(1024, 1, generator=g)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))
    return fit(model, x, y, f, "unscaled_targets", epochs=4, lr=1e-3, adam=True, crit=nn.MSELoss(), every=5)


def _flip_without_target(f):
    """Torchvision's joint-transform reports (a random flip applied to the image but not to its
    mask or keypoints; the motivation for torchvision.transforms.v2 transforming targets
    alongside) and StackOverflow "keypoint regression does not learn with augmentation": an
    8x8 image with one blob, the target its column; the image flipped left-right at random
    and the target not, so the target given an image is column c or 7 - c at even odds."""
    g = torch.Generator().manual_seed(0)
    n = 1024
    r, c = torch.randint(0, 8, (n,), generator=g), torch.randint(0, 8, (n,), generator=g)
    img = 0.1 * torch.randn(n, 8, 8, generator=g)
    img[torch.arange(n), r, c] += 1.0
    y = c.float()[:, None]
    flip = torch.rand(n, generator=g) < 0.5
    img = torch.where(flip[:, None, None], img.flip(-1), img)  # the augmentation, the target left as is
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))
    return fit(model, img.flatten(1), y, f, "flip_no_target", epochs=6, lr=1e-3, adam=True, crit=nn.MSELoss(),
               every=5)


class _TinyLM(nn.Module):
    def __init__(self, vocab=30):
        super().__init__()
        torch.manual_seed(0)
        self.emb, self.rnn, self.head = nn.Embedding(vocab, 32), nn.GRU(32, 64, batch_first=True), nn.Linear(64, vocab)

    def forward(self, x):
        return self.head(self.rnn(self.emb(x))[0]).transpose(1, 2)  # (B, vocab, T) for CrossEntropyLoss


def _loss_on_padding(f):
    """Hugging Face forum / transformers issues "labels for padding should be -100" (a causal LM
    fine-tuned with the pad token left in the labels): next-token prediction on sequences of
    4-40 tokens padded to 40 with token 0, and nn.CrossEntropyLoss without ignore_index, so
    most positions the loss counts are pad-after-pad, learned at once, and the loss falls
    while the real tokens are barely learned."""
    g = torch.Generator().manual_seed(0)
    n, t, vocab = 512, 41, 30
    seqs = torch.zeros(n, t, dtype=torch.long)
    lengths = torch.randint(4, t, (n,), generator=g)
    start = torch.randint(1, vocab, (n,), generator=g)
    for i in range(n):  # a learnable language: each token is the previous one + 1 or + 2 (mod the vocab)
        steps = 1 + torch.randint(0, 2, (int(lengths[i]),), generator=g)
        seqs[i, :lengths[i]] = 1 + (start[i] + steps.cumsum(0)) % (vocab - 1)
    return train_loop(_TinyLM(vocab), seqs[:, :-1], seqs[:, 1:], f, "pad_in_loss", steps=80,
                      opt=None, every=5)


def _scaled_twice(x, y):
    """StackOverflow "ToTensor already scales to [0, 1]" threads (images divided by 255 after
    transforms.ToTensor(), or twice in a custom loader): the digits' 0..16 pixels divided by
    16 and then by 255 again, so the inputs are ~1e-3 and the first layer sees almost nothing."""
    x = digits_raw()[0].flatten(1)
    return x / 16 / 255, y


def digits_raw():
    from benchmarks.health_suite import digits
    return digits(standardise=False)


def _kl_on_probabilities(f):
    """PyTorch forum "KLDivLoss returns negative values" / "KL divergence loss is negative"
    threads on knowledge distillation: nn.KLDivLoss given the student's softmax probabilities
    instead of log_softmax (its input must be log-probabilities), against a teacher's soft
    targets (here: 0.9 on the label, the rest spread)."""
    x, y, _, _ = flat_digits()
    soft = torch.full((len(y), 10), 0.1 / 9).scatter_(1, y[:, None], 0.9)
    model = nn.Sequential(digits_mlp(), nn.Softmax(dim=1))  # the bug: nn.LogSoftmax meant
    return train_loop(model, x, soft, f, "kl_probs", crit=nn.KLDivLoss(reduction="batchmean"), steps=100)


# ---------------------------------------------------------------------------------
# The step size


def _warmup_lambda(total):
    """HF transformers issues on `get_linear_schedule_with_warmup` with num_warmup_steps larger
    than the run (warmup given in samples, or epochs x steps twice): the learning rate is
    still ramping when training ends, at 0.1% of its target."""
    warmup = 1000 * total
    return lambda s: min(1.0, (s + 1) / warmup)


def _accumulate_undivided(model, opt, crit, xb, yb, step, k=16):
    """PyTorch forum / HF forum "Gradient accumulation: should the loss be divided by the
    accumulation steps?": the loss summed over k=16 micro-batches without dividing by k, with
    the learning rate tuned for one batch: each step is 16x too large."""
    loss = crit(model(xb), yb)
    loss.backward()
    if step % k == k - 1:
        opt.step()
        opt.zero_grad()


def _oscillating_adam(m):
    """AutoTrainer (ICSE 2021) problem type "oscillating loss": Adam at lr 0.1, 100x its
    default, on a small MLP."""
    return torch.optim.Adam(m.parameters(), lr=0.1)


_SGD_M = lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
_ADAM_3 = lambda m: torch.optim.Adam(m.parameters(), lr=1e-3)

CASES: list[Case] = [
    Case("loss_rebuilt_from_item", _digits_case("detached_loss", step=_detached_loss_step), "stuck_parameters"),
    Case("zero_grad_before_step", _digits_case("zero_grad_before_step", step=_zero_grad_after_backward),
         "stuck_parameters"),
    Case("backbone_under_no_grad", _digits_case("no_grad_backbone", model=_FrozenByNoGrad, opt=_ADAM_3),
         "stuck_parameters"),
    Case("optimizer_on_replaced_model", _optimizer_on_old_model, "not_in_optimizer"),
    Case("cross_entropy_one_logit", _cross_entropy_one_logit, "stuck_parameters"),
    Case("eval_after_loading_checkpoint", _eval_after_loading, "trained_in_eval_mode"),
    Case("functional_dropout_in_eval", _functional_dropout, "eval_in_train_mode"),
    Case("sigmoid_into_cross_entropy", _digits_case("sigmoid_ce", model=_sigmoid_into_ce, prep=lambda x, y: (
        x, (y >= 5).long()), steps=100), "softmax_before_cross_entropy"),
    Case("lstm_view_not_transpose", _digits_case("lstm_view", model=_RowLSTM, opt=lambda m: torch.optim.Adam(
        m.parameters(), lr=3e-3), steps=150), "input_scrambled"),
    Case("augmentation_flips_image_not_target", _flip_without_target, "labels_unlearnable"),
    Case("loss_counts_padding", _loss_on_padding, "loss_on_padding"),
    Case("pixels_divided_by_255_twice", _digits_case("scaled_twice", prep=_scaled_twice, steps=100), "input_scale"),
    Case("kl_div_on_probabilities", _kl_on_probabilities, "kl_div_input"),
    Case("regression_targets_unscaled", _unscaled_targets, "output_vs_label"),
    Case("warmup_never_ends", _digits_case("warmup", opt=_SGD_M, steps=100, sched=lambda o: torch.optim.lr_scheduler.
                                           LambdaLR(o, _warmup_lambda(100))), "update_ratio"),
    Case("grad_accumulation_not_divided", _digits_case("accum", opt=lambda m: torch.optim.SGD(
        m.parameters(), lr=0.2, momentum=0.9), step=_accumulate_undivided, steps=320), "update_ratio"),
    Case("adam_lr_0.1_oscillating", _digits_case("adam_0.1", opt=_oscillating_adam, steps=120), "update_ratio"),
]

# Every rule name that names the cause (the case's `rule` first).
ACCEPT: dict[str, set[str]] = {
    "loss_rebuilt_from_item": {"stuck_parameters", "frozen_model"},
    "zero_grad_before_step": {"stuck_parameters", "frozen_model"},
    "backbone_under_no_grad": {"stuck_parameters", "frozen_model"},
    "optimizer_on_replaced_model": {"not_in_optimizer", "stuck_parameters", "frozen_model"},
    "cross_entropy_one_logit": {"stuck_parameters", "frozen_model", "loss_shape_broadcast"},
    "eval_after_loading_checkpoint": {"trained_in_eval_mode"},
    "functional_dropout_in_eval": {"eval_in_train_mode", "train_eval_mismatch"},
    "sigmoid_into_cross_entropy": {"softmax_before_cross_entropy"},
    "lstm_view_not_transpose": {"input_scrambled", "batch_mixing"},
    "augmentation_flips_image_not_target": {"labels_unlearnable", "label_noise", "loss_vs_baseline"},
    "loss_counts_padding": {"loss_on_padding"},
    "pixels_divided_by_255_twice": {"input_scale"},
    "kl_div_on_probabilities": {"kl_div_input", "nll_input"},
    "regression_targets_unscaled": {"output_vs_label", "target_scale"},
    "warmup_never_ends": {"update_ratio", "lr_collapse"},
    "grad_accumulation_not_divided": {"update_ratio", "grad_norm_spikes", "nonfinite"},
    "adam_lr_0.1_oscillating": {"update_ratio", "grad_norm_spikes", "nonfinite"},
}


# ---------------------------------------------------------------------------------
# Running and scoring


def judge(case: Case, findings, problems, accept: dict[str, set[str]] | None = None) -> dict:
    """First-problem and any-problem verdicts for one case, against `accept` (a set's accepted
    rule names by case; default: this set's ACCEPT)."""
    accept = (ACCEPT if accept is None else accept).get(case.name, {case.rule})
    causes = [p.cause.rule for p in problems]
    return {"case": case.name, "rule": case.rule, "accept": sorted(accept),
            "loud": [f"{f.severity} {f.rule} {f.layer}" for f in findings if f.severity in LOUD],
            "problems": [f"{p.severity} {p.cause.rule} {p.cause.layer}" for p in problems],
            "info": [f"info {f.rule} {f.layer}" for f in findings if f.severity == "info"],
            "first_ok": bool(causes) and causes[0] in accept, "any_ok": any(c in accept for c in causes),
            "first_message": problems[0].message if problems else ""}


def run_case(case: Case, folder: Path, accept: dict[str, set[str]] | None = None) -> dict:
    t0 = time.perf_counter()
    path = case.train(folder)
    train_s = time.perf_counter() - t0
    findings, problems = diagnose(diagnostics.open_run(path))
    return {**judge(case, findings, problems, accept), "train_s": round(train_s, 2)}


def run_all(cases: list[Case] | None = None, folder: Path | None = None,
            accept: dict[str, set[str]] | None = None) -> list[dict]:
    """Train and judge `cases` (default: this set's), in `folder` or a temporary one."""
    cases = CASES if cases is None else cases
    with contextlib.ExitStack() as stack:
        root = Path(folder) if folder else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        return [run_case(c, root / c.name, accept) for c in cases]


def summarise(results: list[dict]) -> dict:
    n = len(results)
    first, any_ = sum(r["first_ok"] for r in results), sum(r["any_ok"] for r in results)
    return {"cases": n, "first_ok": first, "any_ok": any_, "first_rate": first / n if n else None,
            "any_rate": any_ / n if n else None, "no_loud": sum(not r["loud"] for r in results),
            "total_s": round(sum(r["train_s"] for r in results), 1)}


def format_table(results: list[dict]) -> str:
    lines = [f"{'case':36} {'expected':28} {'first':6} {'any':5} {'train s':>7}  loud findings"]
    for r in results:
        lines.append(f"{r['case']:36} {r['rule']:28} {'yes' if r['first_ok'] else 'NO':6} "
                     f"{'yes' if r['any_ok'] else 'NO':5} {r['train_s']:7.1f}  {'; '.join(r['loud']) or '-'}")
    s = summarise(results)
    lines.append(f"first problem names the cause: {s['first_ok']}/{s['cases']} = {s['first_rate']:.0%}; "
                 f"some problem: {s['any_ok']}/{s['cases']} = {s['any_rate']:.0%}; "
                 f"no loud finding: {s['no_loud']}; total {s['total_s']} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None, cases: list[Case] | None = None, accept: dict[str, set[str]] | None = None,
         doc: str | None = None, verify=None) -> None:
    """The command line of a set of public bugs (this one by default; the other sets pass their
    `cases`, `accept`, `doc` and, for --verify, `verify(names)` -> rows of bug vs fix)."""
    parser = argparse.ArgumentParser(description=(doc or __doc__).split("\n")[0])
    parser.add_argument("--only", help="comma-separated substrings of case names to run")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    if verify is not None:
        parser.add_argument("--verify", action="store_true", help="also train each case bug vs fix in plain torch")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON to PATH")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cases = [c for c in (CASES if cases is None else cases)
             if not args.only or any(k in c.name for k in args.only.split(","))]
    checked = verify([c.name for c in cases]) if getattr(args, "verify", False) else []
    for r in checked:
        print(f"{r['case']:40} bug {r['bug']:8.3f}  fix {r['fix']:8.3f}  {'harms' if r['harms'] else 'NO HARM'}")
    results = run_all(cases, accept=accept)
    print(format_table(results))
    if args.json:
        payload = {"summary": summarise(results), "results": results, **({"verify": checked} if verify else {}),
                   "threads": args.threads, "machine": platform.platform(), "torch": torch.__version__}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
