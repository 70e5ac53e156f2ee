"""Training loops other than one optimizer stepping once per batch: manual updates without an
optimizer, a GAN's two optimizers (one run per model), gradient accumulation. Each against an
unwatched identical run read with plain torch, and training bitwise unchanged."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import diagnostics
import hooks


def _same(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def _norm(grads) -> float:
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.double()) for g in grads])).item()


# -- no optimizer: pytorch/examples' regression (p.data.add_(-lr * p.grad)) -----------------
def _regression(tmp_path=None, watch=True, steps=5):
    torch.manual_seed(0)
    fc = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    g = torch.Generator().manual_seed(1)
    ref = []
    run = hooks.watch(fc, optimizer=None, run_dir=tmp_path, name="manual", every=1) if watch else None
    for _ in range(steps):
        x = torch.randn(32, 4, generator=g)
        y = x @ torch.tensor([[0.5], [-1.0], [2.0], [0.1]]) + 3.0
        weights = {n: p.detach().clone() for n, p in fc.named_parameters()}
        loss = F.smooth_l1_loss(fc(x), y)
        fc.zero_grad()
        loss.backward()
        ref.append({"weights": weights, "grads": {n: p.grad.clone() for n, p in fc.named_parameters()}})
        for p in fc.parameters():
            p.data.add_(-0.1 * p.grad)
    if run:
        run.close()
    return fc, run, ref


def test_no_optimizer_records_weights_and_gradients_each_capture_step(tmp_path):
    plain, _, ref = _regression(watch=False)
    watched, run, _ = _regression(tmp_path)
    assert _same(plain, watched)
    r = diagnostics.open_run(run.path)
    for kind, key in (("weight", "weights"), ("param_grad", "grads")):
        d = r.distributions(kind)
        assert set(d["layer"]) == {"0.weight", "0.bias", "2.weight", "2.bias"}
        for name in ("0.weight", "2.bias"):
            rows = d[d["layer"] == name].sort_values("step")
            assert rows["step"].tolist() == list(range(5))  # a step is one training forward
            true = [x[key][name].double() for x in ref]
            np.testing.assert_allclose(rows["mean"], [t.mean().item() for t in true], rtol=1e-5, atol=1e-9)
            np.testing.assert_allclose(rows["min"], [t.min().item() for t in true], rtol=1e-6)
            np.testing.assert_allclose(rows["max"], [t.max().item() for t in true], rtol=1e-6)
    norms = r.scalars(names=["grad_norm"]).sort_values("step")
    assert norms["step"].tolist() == list(range(5))  # the last one too, at close
    np.testing.assert_allclose(norms["value"], [_norm(x["grads"].values()) for x in ref], rtol=1e-6)
    assert r.scalars(names=["grad_clipped"])["value"].isna().all()  # not judged without an optimizer


# -- a GAN: two models, two optimizers, one run each --------------------------------------
def _gan(tmp_path=None, watch=True, steps=4):
    torch.manual_seed(0)
    G = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2))
    D = nn.Sequential(nn.Linear(2, 8), nn.LeakyReLU(0.2), nn.Linear(8, 1))
    optG, optD = torch.optim.Adam(G.parameters(), lr=1e-2), torch.optim.Adam(D.parameters(), lr=1e-2)
    critG, critD = nn.BCEWithLogitsLoss(), nn.BCEWithLogitsLoss()  # one loss module per run
    g = torch.Generator().manual_seed(1)
    runs = [hooks.watch(G, optG, critG, run_dir=tmp_path, name="G", every=1),
            hooks.watch(D, optD, critD, run_dir=tmp_path, name="D", every=1)] if watch else []
    ref = []
    for _ in range(steps):  # the DCGAN loop: G runs once per iteration
        real = torch.randn(16, 2, generator=g) * 0.5 + 2.0
        fake = G(torch.randn(16, 3, generator=g))
        optD.zero_grad()
        err_real = critD(D(real), torch.ones(16, 1))
        err_fake = critD(D(fake.detach()), torch.zeros(16, 1))
        (err_real + err_fake).backward()
        d_norm = _norm([p.grad for p in D.parameters()])
        optD.step()
        optG.zero_grad()
        err_g = critG(D(fake), torch.ones(16, 1))
        err_g.backward()
        ref.append({"d_loss": (err_real.item() + err_fake.item()) / 2, "d_norm": d_norm, "g_loss": err_g.item(),
                    "g_norm": _norm([p.grad for p in G.parameters()]), "g_grad": G[2].weight.grad.clone()})
        optG.step()
    for run in runs:
        run.close()
    return G, D, runs, ref


def test_gan_one_run_per_model(tmp_path):
    plain_g, plain_d, _, ref = _gan(watch=False)
    G, D, (run_g, run_d), _ = _gan(tmp_path)
    assert _same(plain_g, G) and _same(plain_d, D)
    for run, who in ((run_g, "g"), (run_d, "d")):
        s = diagnostics.open_run(run.path).scalars()
        loss = s[s["name"] == "loss"].sort_values("step")
        norm = s[s["name"] == "grad_norm"].sort_values("step")
        assert loss["step"].tolist() == norm["step"].tolist() == [0, 1, 2, 3]  # its own optimizer's steps
        # the loss: the mean of its loss module's calls in the step (D: real and fake halves)
        np.testing.assert_allclose(loss["value"], [x[f"{who}_loss"] for x in ref], rtol=1e-6)
        np.testing.assert_allclose(norm["value"], [x[f"{who}_norm"] for x in ref], rtol=1e-6)
    pg = diagnostics.open_run(run_g.path).distributions("param_grad", layers=["2.weight"]).sort_values("step")
    np.testing.assert_allclose(pg["mean"], [x["g_grad"].double().mean().item() for x in ref], rtol=1e-5, atol=1e-9)
    assert set(diagnostics.open_run(run_d.path).distributions("weight")["layer"]) == {"0.weight", "0.bias", "2.weight",
                                                                                      "2.bias"}


# -- gradient accumulation: a step is an optimizer step --------------------------------------
def test_gradient_accumulation_loss_is_the_micro_batches_mean(tmp_path):
    def train(watch):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
        opt, crit = torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss()
        g = torch.Generator().manual_seed(1)
        run = hooks.watch(model, opt, crit, run_dir=tmp_path, every=1) if watch else None
        micro = []
        for _ in range(3):
            opt.zero_grad()
            for _ in range(4):
                x, y = torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)
                loss = crit(model(x), y)
                (loss / 4).backward()
                micro.append(loss.item())
            opt.step()
        if run:
            run.close()
        return model, run, micro

    plain, _, micro = train(False)
    watched, run, _ = train(True)
    assert _same(plain, watched)
    loss = diagnostics.open_run(run.path).scalars(names=["loss"]).sort_values("step")
    assert loss["step"].tolist() == [0, 1, 2]
    by_hand = [sum(micro[i:i + 4]) / 4 for i in (0, 4, 8)]
    np.testing.assert_allclose(loss["value"], by_hand, rtol=1e-6)
