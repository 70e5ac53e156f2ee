"""Mixed precision with a GradScaler (`watch(..., scaler=scaler)`): gradients recorded in true
units, steps the scaler skipped recorded as skipped, training unchanged. The reference is an
unwatched identical run that reads the true gradients with plain torch (`scaler.unscale_`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import diagnostics
import hooks

STEPS = 6


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(32, 6, generator=g), torch.randint(0, 3, (32,), generator=g)


def _train(dtype, tmp_path=None, init_scale=2.0 ** 16, watch=True, steps=STEPS):
    """A fp16/bf16 autocast loop with a CPU GradScaler. Unwatched, it also returns per
    iteration what plain torch says: the loss, whether the scaler skipped the step, the true
    gradient norm and each parameter's true gradient, and layer 0's true output gradient."""
    model, (x, y) = _model(), _data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    crit = nn.CrossEntropyLoss()
    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
    run = hooks.watch(model, opt, crit, run_dir=tmp_path, name="amp", every=1, scaler=scaler) if watch else None
    ref, out_grads = [], []
    if not watch:  # the module-output gradient as backward produces it (scaled)
        def grab(module, args, out):
            out.register_hook(lambda g: out_grads.append(g.detach()))

        model[0].register_forward_hook(grab)
    for _ in range(steps):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=dtype):
            loss = crit(model(x), y)
        scaler.scale(loss).backward()
        if not watch:
            scale = scaler.get_scale()
            scaler.unscale_(opt)  # scaler.step below does not unscale twice
            grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.double()) for g in grads.values()]))
            ref.append({"loss": loss.item(), "norm": norm.item(), "grads": grads,
                        "out_grad": out_grads[-1].float() / scale})
        scaler.step(opt)
        before = scaler.get_scale()
        scaler.update()
        if not watch:
            ref[-1]["skipped"] = scaler.get_scale() < before
    if run:
        run.close()
    return model, run, ref


def _same(a, b):
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_gradient_norm_and_distributions_are_unscaled(tmp_path, dtype):
    plain, _, ref = _train(dtype, watch=False)
    watched, run, _ = _train(dtype, tmp_path)
    assert _same(plain, watched)  # training unchanged
    assert not any(r["skipped"] for r in ref)
    r = diagnostics.open_run(run.path)
    norms = r.scalars(names=["grad_norm"]).sort_values("step")
    assert norms["step"].tolist() == list(range(STEPS))
    np.testing.assert_allclose(norms["value"], [x["norm"] for x in ref], rtol=1e-6)  # not 65,536x
    assert (r.scalars(names=["grad_clipped"])["value"] == 0).all()  # unscale_ is not a clip
    pg = r.distributions("param_grad")
    for name in ("0.weight", "2.bias"):
        rows = pg[pg["layer"] == name].sort_values("step")
        true = [x["grads"][name].double() for x in ref]
        np.testing.assert_allclose(rows["mean"], [g.mean().item() for g in true], rtol=1e-5, atol=1e-12)
        np.testing.assert_allclose(rows["max"], [g.max().item() for g in true], rtol=1e-6)
        np.testing.assert_allclose(rows["std"], [g.std(correction=0).item() for g in true], rtol=1e-4)
    grad = r.distributions("gradient", layers=["0"]).sort_values("step")  # w.r.t. layer 0's output
    true = [x["out_grad"].double() for x in ref]
    np.testing.assert_allclose(grad["max"], [g.max().item() for g in true], rtol=1e-6)
    np.testing.assert_allclose(grad["min"], [g.min().item() for g in true], rtol=1e-6)
    np.testing.assert_allclose(grad["mean"], [g.mean().item() for g in true], rtol=1e-4, atol=1e-12)
    np.testing.assert_allclose(grad["hist_max"], [g.max().item() for g in true], rtol=1e-6)


def test_fused_optimizer_gets_scaled_gradients_and_records_true_ones(tmp_path):
    """Adam(fused=True) is handed `grad_scale` and unscales inside its kernel: at
    optimizer.step() the gradients are still scaled; recorded in true units all the same."""
    def train(watch):
        model, (x, y) = _model(), _data()
        opt, crit = torch.optim.Adam(model.parameters(), lr=1e-2, fused=True), nn.CrossEntropyLoss()
        scaler = torch.amp.GradScaler("cpu")
        run = hooks.watch(model, opt, crit, run_dir=tmp_path, every=1, scaler=scaler) if watch else None
        ref = []
        for _ in range(3):
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.float16):
                loss = crit(model(x), y)
            scaler.scale(loss).backward()
            scale = scaler.get_scale()
            true = [p.grad.double() / scale for p in model.parameters()]
            ref.append((torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in true])).item(),
                        true[0].max().item()))
            scaler.step(opt)
            scaler.update()
        if run:
            run.close()
        return model, run, ref

    plain, _, ref = train(False)
    watched, run, _ = train(True)
    assert _same(plain, watched)
    r = diagnostics.open_run(run.path)
    np.testing.assert_allclose(r.scalars(names=["grad_norm"]).sort_values("step")["value"], [n for n, _ in ref],
                               rtol=1e-6)
    assert (r.scalars(names=["grad_clipped"])["value"] == 0).all()
    pg = r.distributions("param_grad", layers=["0.weight"]).sort_values("step")
    np.testing.assert_allclose(pg["max"], [m for _, m in ref], rtol=1e-6)


def test_fused_optimizer_skipped_steps_are_flagged(tmp_path):
    """A fused optimizer is called even on a step the scaler skips (its kernel skips the update):
    the step is flagged amp_skipped from the optimizer's found_inf, and health reads its Inf
    gradient norm as no NaN/Inf of training."""
    def train(watch):
        model, (x, y) = _model(), _data()
        opt, crit = torch.optim.Adam(model.parameters(), lr=1e-2, fused=True), nn.CrossEntropyLoss()
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 24)
        run = hooks.watch(model, opt, crit, run_dir=tmp_path, every=1, scaler=scaler) if watch else None
        skipped = []
        for _ in range(10):
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.float16):
                loss = crit(model(x), y)
            scaler.scale(loss).backward()
            before = scaler.get_scale()
            scaler.step(opt)
            scaler.update()
            skipped.append(scaler.get_scale() < before)
        if run:
            run.close()
        return model, run, skipped

    plain, _, skipped = train(False)
    watched, run, _ = train(True)
    assert _same(plain, watched) and any(skipped) and not all(skipped)
    r = diagnostics.open_run(run.path)
    flags = r.scalars(names=["amp_skipped"]).sort_values("step")
    assert flags["step"].tolist() == list(range(10))
    assert (flags["value"] > 0).tolist() == skipped
    assert "nonfinite" not in {f.rule for f in r.health()}


def test_without_the_scaler_the_norm_reads_scaled(tmp_path):
    """The bug this fixes, kept visible: watch without scaler= sees backward's scaled gradients."""
    _, _, ref = _train(torch.float16, watch=False, steps=1)
    model, (x, y) = _model(), _data()
    opt, crit, scaler = torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss(), torch.amp.GradScaler("cpu")
    with hooks.watch(model, opt, crit, run_dir=tmp_path, every=1) as run:
        with torch.autocast("cpu", dtype=torch.float16):
            loss = crit(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    norm = diagnostics.open_run(run.path).scalars(names=["grad_norm"])["value"].iloc[0]
    np.testing.assert_allclose(norm, ref[0]["norm"] * 2 ** 16, rtol=1e-6)


def test_skipped_steps_are_recorded_as_skipped(tmp_path):
    """A huge initial scale overflows fp16 gradients: the scaler skips optimizer.step() and
    halves the scale until they fit. Each skipped iteration is a step with amp_skipped = 1,
    its loss, and no gradient norm, gradients, weights or update."""
    plain, _, ref = _train(torch.float16, watch=False, init_scale=2.0 ** 24, steps=12)
    watched, run, _ = _train(torch.float16, tmp_path, init_scale=2.0 ** 24, steps=12)
    assert _same(plain, watched)
    skipped = [i for i, x in enumerate(ref) if x["skipped"]]
    kept = [i for i, x in enumerate(ref) if not x["skipped"]]
    assert skipped and kept  # the reference shows both kinds
    r = diagnostics.open_run(run.path)
    s = r.scalars()
    assert sorted(s[s["name"] == "amp_skipped"]["step"]) == skipped
    assert (s[s["name"] == "amp_skipped"]["value"] == 1).all()
    loss = s[s["name"] == "loss"].sort_values("step")
    assert loss["step"].tolist() == list(range(12))  # one step per iteration, skipped or not
    np.testing.assert_allclose(loss["value"], [x["loss"] for x in ref], rtol=1e-6)
    norms = s[s["name"] == "grad_norm"].sort_values("step")
    assert norms["step"].tolist() == kept
    np.testing.assert_allclose(norms["value"], [ref[i]["norm"] for i in kept], rtol=1e-6)
    for kind in ("weight", "param_grad", "update", "gradient"):
        assert sorted(r.distributions(kind, layers=["0.weight" if kind != "gradient" else "0"])["step"]) == kept
    assert sorted(r.distributions("activation", layers=["0"])["step"]) == list(range(12))


def test_health_does_not_read_skipped_steps_as_spikes(tmp_path):
    """Skipped steps whose loss and gradient norm blew up (why the scaler skipped) change no
    finding: the run's health is that of the same run without them; unflagged, they are spikes."""
    from diagnostics.writer import RunWriter

    def health(name, bad_steps, flag):
        path = tmp_path / name
        w = RunWriter(path, {"name": name, "task": "classification"}, flush_every_s=60)
        rng = np.random.default_rng(0)
        for step in range(200):
            normal = {"loss": 2.0 - step / 200 + 0.01 * rng.standard_normal(),
                      "grad_norm": 1.0 + 0.05 * rng.standard_normal()}
            bad = step in bad_steps
            w.add_scalars(step, {"loss": 1e6, "grad_norm": 1e5} if bad else normal)
            if bad and flag:
                w.add_scalar(step, "amp_skipped", 1.0)
        w.close()
        return {(f.rule, f.severity) for f in diagnostics.open_run(path).health()}

    bad = {39, 79, 119, 159}
    clean = health("clean", set(), False)
    assert health("flagged", bad, True) == clean  # 4 of 200 skipped: a healthy scaler, no finding either
    assert "grad_norm_spikes" in {rule for rule, _ in health("unflagged", bad, False)}  # the control
    # a scaler that keeps skipping is a finding of its own: the last 10 steps, or 10% of them
    assert ("amp_skipped_steps", "warning") in health("stuck", set(range(190, 200)), True)
    assert ("amp_skipped_steps", "warning") in health("often", set(range(25, 200, 10)), True)
    assert ("amp_skipped_steps", "warning") not in health("startup", set(range(8)), True)  # the initial backoff


@pytest.mark.slow
def test_lightning_16_mixed_records_unscaled_norms_and_skipped_steps(tmp_path):
    """precision="16-mixed" (a CPU GradScaler through Lightning's MixedPrecision plugin): the
    callback passes the plugin's scaler to watch; the norm is the true one, skipped steps flagged
    with their batch's loss. Reference: the same fit unwatched, gradients read at
    on_before_optimizer_step (after Lightning's unscale_)."""
    pl = pytest.importorskip("lightning.pytorch")
    from lightning.pytorch.plugins.precision import MixedPrecision
    from torch.utils.data import DataLoader, TensorDataset

    from hooks.lightning import DiagnosticsCallback

    class Net(pl.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
            self.criterion = nn.CrossEntropyLoss()
            self.seen: list[dict] = []

        def training_step(self, batch, batch_idx):
            loss = self.criterion(self.net(batch[0]), batch[1])  # forward not through self(...)
            self.seen.append({"loss": loss.item()})
            return loss

        def on_before_optimizer_step(self, optimizer):
            self.seen[-1]["norm"] = _norm_of(self.parameters())

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    def fit(callbacks):
        model = Net()
        x, y = _data()
        plugin = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=2.0 ** 24))
        trainer = pl.Trainer(max_steps=10, plugins=[plugin], callbacks=callbacks, logger=False,
                             enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
        trainer.fit(model, DataLoader(TensorDataset(x, y), batch_size=8))
        return model

    plain = fit([])
    cb = DiagnosticsCallback(run_dir=tmp_path, name="pl", every=1, evaluate=False)
    watched = fit([cb])
    assert torch.equal(torch.cat([p.flatten() for p in plain.parameters()]),
                       torch.cat([p.flatten() for p in watched.parameters()]))
    finite = [i for i, x in enumerate(plain.seen) if np.isfinite(x["norm"])]
    skipped = [i for i, x in enumerate(plain.seen) if not np.isfinite(x["norm"])]
    assert skipped and finite
    s = diagnostics.open_run(cb.run.path).scalars()
    assert sorted(s[s["name"] == "amp_skipped"]["step"]) == skipped
    norms = s[s["name"] == "grad_norm"].sort_values("step")
    assert norms["step"].tolist() == finite
    np.testing.assert_allclose(norms["value"], [plain.seen[i]["norm"] for i in finite], rtol=1e-6)
    loss = s[s["name"] == "loss"].sort_values("step")
    np.testing.assert_allclose(loss["value"], [x["loss"] for x in plain.seen], rtol=1e-6)


def _norm_of(params) -> float:
    grads = [p.grad for p in params if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.double()) for g in grads])).item()


def test_hugging_face_trainer_passes_accelerates_scaler(tmp_path):
    """The HF callback finds the GradScaler on Accelerate's optimizer wrapper. Accelerate makes
    none on CPU, so one is put in its place (the loss is scaled by 65,536, mixed precision
    otherwise off): the norm recorded is the Trainer's own logged norm (of the gradients as
    scaled, since Accelerate unscales only under fp16) over the scale, and training is unchanged."""
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from tests.hooks.test_transformers import _callback, _trainer

    def train(callbacks):
        trainer = _trainer(tmp_path, callbacks, max_steps=6, optim="adamw_torch")
        trainer.accelerator.scaler = torch.amp.GradScaler("cpu")
        trainer.accelerator.native_amp = True
        trainer.train()
        return trainer

    plain = train([])
    cb = _callback(tmp_path, "hf-scaled")
    watched = train([cb])
    assert _same(plain.model, watched.model)
    logged = [e["grad_norm"] for e in watched.state.log_history if "grad_norm" in e]
    s = diagnostics.open_run(cb.run.path).scalars()
    norms = s[s["name"] == "grad_norm"].sort_values("step")
    assert norms["step"].tolist() == list(range(6)) and "amp_skipped" not in set(s["name"])
    np.testing.assert_allclose(norms["value"], np.array(logged) / 2 ** 16, rtol=1e-5)
