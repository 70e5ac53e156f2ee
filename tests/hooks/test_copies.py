"""Copies of a watched model (issue #22): deepcopy, pickle and `torch.save` work, the copy
records nothing, and the original keeps recording; `model.to()`, dtype casts and
`load_state_dict` during a run keep working.

The word-language-model case follows pytorch/examples' word_language_model (main.py, model.py):
an RNN language model whose whole model is saved with `torch.save(model, f)` every epoch and
loaded back at the end; it crashed at the first save before containment.
"""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import diagnostics
import hooks
from hooks.guard import inert_hook


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


def _hook_values(model: nn.Module) -> list:
    found = []
    for m in model.modules():
        for d in (m._forward_hooks, m._forward_pre_hooks, m._backward_hooks):
            found += list(d.values())
    for p in model.parameters():
        found += list((getattr(p, "_post_accumulate_grad_hooks", None) or {}).values())
        found += list((p._backward_hooks or {}).values())
    return found


@pytest.mark.parametrize("how", ["deepcopy", "pickle", "torch.save"])
def test_a_copy_carries_no_live_hook_and_the_original_keeps_recording(tmp_path, how):
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    crit = nn.CrossEntropyLoss()
    x, y = torch.randn(8, 6), torch.arange(8) % 3
    run = hooks.watch(model, optimizer=opt, loss_fn=crit, run_dir=tmp_path, name="orig", every=1)
    for _ in range(2):
        opt.zero_grad()
        crit(model(x), y).backward()
        opt.step()
    if how == "deepcopy":
        twin = copy.deepcopy(model)
    elif how == "pickle":
        twin = pickle.loads(pickle.dumps(model))
    else:
        buf = io.BytesIO()
        torch.save(model, buf)
        buf.seek(0)
        twin = torch.load(buf, weights_only=False)
    assert all(h is inert_hook for h in _hook_values(twin))  # what the copy holds does nothing
    assert all(torch.equal(a, b) for a, b in zip(twin.parameters(), model.parameters()))
    twin_opt = torch.optim.SGD(twin.parameters(), lr=0.1)
    for _ in range(3):  # training the copy (its own optimizer) records nothing in the run
        twin_opt.zero_grad()
        crit(twin(x), y).backward()
        twin_opt.step()
    assert run.step == 2
    opt.zero_grad()
    crit(model(x), y).backward()
    opt.step()
    run.close()
    r = diagnostics.open_run(run.path)
    assert sorted(r.scalars(names=["loss"])["step"]) == [0, 1, 2]
    assert r.steps("activation") == [0, 1, 2]
    assert not r.status()["faults"]


def test_an_ema_copy_made_by_averaged_model_works(tmp_path):
    """torch.optim.swa_utils.AveragedModel deep-copies the model it averages (EMA, SWA)."""
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    crit = nn.CrossEntropyLoss()
    x, y = torch.randn(8, 6), torch.arange(8) % 3
    with hooks.watch(model, optimizer=opt, loss_fn=crit, run_dir=tmp_path, name="ema", every=1) as run:
        ema = torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(0.9))
        for _ in range(3):
            opt.zero_grad()
            crit(model(x), y).backward()
            opt.step()
            ema.update_parameters(model)
        with torch.no_grad():
            ema(x)
    assert len(diagnostics.open_run(run.path).scalars(names=["loss"])) == 3


def _train_with_changes(watch, tmp_path=None):
    """Casts, moves and a state-dict load in the middle of training."""
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    crit = nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(8, 6, generator=g), torch.arange(8) % 3
    run = hooks.watch(model, optimizer=opt, loss_fn=crit, run_dir=tmp_path, name="changes", every=1) if watch else None
    saved = None
    for step in range(8):
        if step == 2:
            saved = copy.deepcopy(model.state_dict())
            model.to("cpu")
        if step == 3:
            model.double()
            x = x.double()
        if step == 5:
            model.float()
            x = x.float()
            model.load_state_dict(saved)
        opt.zero_grad()
        crit(model(x), y).backward()
        opt.step()
    if run:
        run.close()
    return [p.detach().clone() for p in model.parameters()], run


def test_to_dtype_casts_and_load_state_dict_during_a_run(tmp_path):
    expected, _ = _train_with_changes(False)
    got, run = _train_with_changes(True, tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(got, expected))
    r = diagnostics.open_run(run.path)
    assert r.steps("weight") == list(range(8)) and r.steps("activation") == list(range(8))
    assert not r.status()["faults"]


# -- pytorch/examples word_language_model, run small ---------------------------------------

class RNNModel(nn.Module):
    """model.py of pytorch/examples' word_language_model: encoder, an LSTM, decoder (tied
    weights off), log-softmax outputs for NLLLoss."""

    def __init__(self, ntoken: int, ninp: int, nhid: int, nlayers: int, dropout: float = 0.2) -> None:
        super().__init__()
        self.ntoken = ntoken
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(ntoken, ninp)
        self.rnn = nn.LSTM(ninp, nhid, nlayers, dropout=dropout)
        self.decoder = nn.Linear(nhid, ntoken)
        self.nhid, self.nlayers = nhid, nlayers
        initrange = 0.1
        nn.init.uniform_(self.encoder.weight, -initrange, initrange)
        nn.init.zeros_(self.decoder.bias)
        nn.init.uniform_(self.decoder.weight, -initrange, initrange)

    def forward(self, input, hidden):
        emb = self.drop(self.encoder(input))
        output, hidden = self.rnn(emb, hidden)
        output = self.drop(output)
        decoded = self.decoder(output).view(-1, self.ntoken)
        return F.log_softmax(decoded, dim=1), hidden

    def init_hidden(self, bsz):
        weight = next(self.parameters())
        return (weight.new_zeros(self.nlayers, bsz, self.nhid), weight.new_zeros(self.nlayers, bsz, self.nhid))


def _repackage_hidden(h):
    return h.detach() if isinstance(h, torch.Tensor) else tuple(_repackage_hidden(v) for v in h)


def _word_language_model(tmp_path, watch: bool):
    """main.py's loop: batchify, bptt windows, clip_grad_norm_, the manual SGD update
    (no optimizer), torch.save(model, f) after each epoch, torch.load at the end."""
    torch.manual_seed(1111)
    ntokens, bptt, lr, clip = 50, 5, 20.0, 0.25
    data = torch.randint(0, ntokens, (400,), generator=torch.Generator().manual_seed(0))
    train_data = data[: (len(data) // 10) * 10].view(10, -1).t().contiguous()  # batchify: batch size 10
    model = RNNModel(ntokens, 16, 16, 2)
    criterion = nn.NLLLoss()
    run = hooks.watch(model, loss_fn=criterion, run_dir=tmp_path, name="wlm", every=1) if watch else None
    tmp_path.mkdir(parents=True, exist_ok=True)
    save = tmp_path / "model.pt"
    for _epoch in range(2):
        model.train()
        hidden = model.init_hidden(10)
        for i in range(0, train_data.size(0) - 1, bptt):
            seq_len = min(bptt, len(train_data) - 1 - i)
            inputs, targets = train_data[i:i + seq_len], train_data[i + 1:i + 1 + seq_len].reshape(-1)
            model.zero_grad()
            hidden = _repackage_hidden(hidden)
            output, hidden = model(inputs, hidden)
            loss = criterion(output, targets)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            for p in model.parameters():
                p.data.add_(p.grad, alpha=-lr)
        with open(save, "wb") as f:
            torch.save(model, f)
    with open(save, "rb") as f:
        model = torch.load(f, weights_only=False)
        model.rnn.flatten_parameters()
    if run:
        run.close()
    return [p.detach().clone() for p in model.parameters()], run


def test_word_language_model_saving_the_whole_model_each_epoch(tmp_path):
    expected, _ = _word_language_model(tmp_path / "plain", watch=False)
    got, run = _word_language_model(tmp_path / "watched", watch=True)
    assert all(torch.equal(a, b) for a, b in zip(got, expected))
    r = diagnostics.open_run(run.path)
    assert len(r.scalars(names=["loss"])) > 0 and "rnn" in r.layers("activation")
    assert not r.status()["faults"]
