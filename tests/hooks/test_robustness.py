"""watch on the models people really train: odd outputs, odd training loops, AMP, NaN,
torch.compile. Each case records what it can, never raises, and changes nothing."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import diagnostics
import hooks


def _train(model, steps=3, every=1, watch=True, tmp_path=None, name="r", accumulate=1, autocast=False,
           make_loss=None, seed=0):
    torch.manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.1)
    crit = nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g)
    run = hooks.watch(model, optimizer=opt, loss_fn=crit, run_dir=tmp_path, name=name, every=every) if watch else None
    for _ in range(steps):
        opt.zero_grad()
        for part in range(accumulate):
            xb, yb = x[part::accumulate], y[part::accumulate]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                out = model(xb)
                logits = make_loss(out) if make_loss else out
            crit(logits.float(), yb).backward()
        opt.step()
    if run:
        run.close()
    return model, run


def _same(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


class Twice(nn.Module):
    """One Linear applied twice in a forward pass (weight sharing)."""

    def __init__(self):
        super().__init__()
        self.shared = nn.Linear(6, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        return self.head(torch.relu(self.shared(torch.relu(self.shared(x)))))


@dataclasses.dataclass
class Output:
    logits: torch.Tensor
    extra: dict


class Structured(nn.Module):
    """Submodules returning a tuple, a dict and a dataclass; one returns integers; one is empty."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(6, 6, batch_first=True)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        seq, (h, c) = self.lstm(x[:, None, :])
        logits = self.head(seq[:, 0])
        return Output(logits=logits, extra={"argmax": logits.argmax(1), "empty": logits[:0]})


class IntOut(nn.Module):
    def forward(self, x):
        return x.argmax(dim=1)


class EmptyOut(nn.Module):
    def forward(self, x):
        return x[:0]


def model_factory(kind):
    torch.manual_seed(0)
    if kind == "inplace":
        return nn.Sequential(nn.Linear(6, 8), nn.ReLU(inplace=True), nn.Linear(8, 8), nn.ReLU(inplace=True),
                             nn.Linear(8, 3))
    if kind == "twice":
        return Twice()
    if kind == "frozen":
        m = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3), nn.Linear(3, 3))
        m[0].requires_grad_(False)
        return m
    if kind == "unused":
        m = nn.ModuleDict({"used": nn.Linear(6, 3), "unused": nn.Linear(6, 3)})
        m.forward = lambda x: m["used"](x)  # noqa: E731 - a parameter that never gets a gradient
        return m
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["inplace", "twice", "frozen", "unused"])
def test_training_unchanged_and_recorded(tmp_path, kind):
    plain, _ = _train(model_factory(kind), watch=False)
    watched, run = _train(model_factory(kind), tmp_path=tmp_path, name=kind)
    assert _same(plain, watched)
    r = diagnostics.open_run(run.path)
    assert r.steps("activation") == [0, 1, 2]
    assert r.steps("gradient") == [0, 1, 2]
    acts = r.distributions("activation")
    assert (acts.groupby(["step", "layer"]).size() == 1).all()  # a module called twice: its first call
    if kind == "frozen":
        assert "0.weight" not in r.layers("param_grad") and "2.weight" in r.layers("param_grad")
    if kind == "unused":
        assert set(r.layers("param_grad")) == {"used.weight", "used.bias"}
        assert set(r.layers("weight")) == {"used.weight", "used.bias", "unused.weight", "unused.bias"}


def test_inplace_relu_gradient_is_the_gradient_of_its_output(tmp_path):
    model, run = _train(model_factory("inplace"), steps=1, tmp_path=tmp_path)
    ref = model_factory("inplace")
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g)
    h = ref[1](ref[0](x))  # in-place: h is the ReLU's output
    h.retain_grad()
    nn.CrossEntropyLoss()(ref[4](ref[3](ref[2](h))), y).backward()
    row = diagnostics.open_run(run.path).distributions("gradient", layers=["1"]).iloc[0]
    np.testing.assert_allclose([row["mean"], row["std"]], [h.grad.double().mean().item(), h.grad.double().std(
        unbiased=False).item()], rtol=1e-4, atol=1e-9)


def test_structured_integer_and_empty_outputs(tmp_path):
    def make():
        torch.manual_seed(0)
        return Structured()

    watched, run = _train(make(), tmp_path=tmp_path, make_loss=lambda o: o.logits)
    plain, _ = _train(make(), watch=False, make_loss=lambda o: o.logits)
    assert _same(plain, watched)
    r = diagnostics.open_run(run.path)
    assert set(r.layers("activation")) == {"lstm", "head"}
    # the LSTM's tuple output: its first tensor, (batch, 1, hidden)
    assert r.distributions("activation", layers=["lstm"])["count"].iloc[0] == 16 * 6


def test_integer_and_zero_size_module_outputs(tmp_path):
    model = nn.Sequential(nn.Linear(6, 3))
    side = nn.ModuleDict({"ints": IntOut(), "empty": EmptyOut()})
    model.add_module("probe", nn.Identity())

    class WithSide(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.side = model, side

        def forward(self, x):
            out = self.body(x)
            self.side["ints"](out)
            self.side["empty"](out)
            return out

    net = WithSide()
    _, run = _train(net, tmp_path=tmp_path, steps=2)
    d = diagnostics.open_run(run.path).distributions("activation")
    ints = d[d.layer == "side.ints"].iloc[0]
    empty = d[d.layer == "side.empty"].iloc[0]
    assert ints["count"] == 16 and 0 <= ints["min"] <= ints["max"] <= 2
    assert empty["count"] == 0 and sum(empty["hist_counts"]) == 0


def test_gradient_accumulation_counts_optimizer_steps(tmp_path):
    plain, _ = _train(model_factory("inplace"), watch=False, accumulate=4)
    watched, run = _train(model_factory("inplace"), tmp_path=tmp_path, accumulate=4, steps=3)
    assert _same(plain, watched)
    r = diagnostics.open_run(run.path)
    loss = r.scalars(names=["loss"])
    assert list(loss["step"]) == [0, 1, 2]  # one value per optimizer step: the micro-batch mean
    assert r.distributions("activation", layers=["0"])["count"].tolist() == [4 * 8] * 3  # first micro-batch


def test_bfloat16_autocast_on_cpu(tmp_path):
    plain, _ = _train(model_factory("inplace"), watch=False, autocast=True)
    watched, run = _train(model_factory("inplace"), tmp_path=tmp_path, autocast=True)
    assert _same(plain, watched)
    d = diagnostics.open_run(run.path).distributions("activation", layers=["0"])
    assert np.isfinite(d[["mean", "std", "q50"]].to_numpy()).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (float16 autocast)")
def test_float16_autocast_on_cuda(tmp_path):
    """float16 autocast with a GradScaler on CUDA: training unchanged, summaries computed
    in float32 on the device and equal to numpy's on the float32 copy."""

    def train(watch):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(8 * 14 * 14, 3)).cuda()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        scaler = torch.amp.GradScaler("cuda")
        crit = nn.CrossEntropyLoss()
        g = torch.Generator().manual_seed(0)
        x, y = torch.randn(16, 3, 16, 16, generator=g).cuda(), torch.randint(0, 3, (16,), generator=g).cuda()
        run = hooks.watch(model, optimizer=opt, loss_fn=crit, run_dir=tmp_path, name="fp16", every=1) if watch else None
        seen = {}
        grab = model[0].register_forward_hook(lambda m, a, out: seen.setdefault("conv", out.detach().float().cpu()))
        for _ in range(3):
            opt.zero_grad()
            with torch.autocast("cuda", dtype=torch.float16):
                loss = crit(model(x), y)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        grab.remove()
        if run:
            run.close()
        return model, run, seen["conv"]

    plain, _, _ = train(watch=False)
    watched, run, conv = train(watch=True)
    assert _same(plain, watched)
    r = diagnostics.open_run(run.path)
    row = r.distributions("activation", layers=["0"]).sort_values("step").iloc[0]
    a = conv.numpy().astype(np.float64)
    assert row["mean"] == pytest.approx(a.mean(), rel=1e-4, abs=1e-6)
    assert row["std"] == pytest.approx(a.std(), rel=1e-4)
    assert (row["min"], row["max"]) == (pytest.approx(a.min()), pytest.approx(a.max()))
    # GradScaler skips optimizer.step() while the scale is too large (a step is one
    # optimizer.step()), so there may be fewer than 3 steps; those recorded have gradients
    steps = r.steps("param_grad")
    assert 1 <= len(steps) <= 3 and steps == list(range(len(steps)))


def test_nan_is_counted_never_raised_and_its_first_step_found(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=1e30)  # explodes
    crit = nn.CrossEntropyLoss()
    x, y = torch.randn(16, 6) * 1e3, torch.randint(0, 3, (16,))
    with hooks.watch(model, optimizer=opt, loss_fn=crit, run_dir=tmp_path, name="nan", every=1) as run:
        for _ in range(4):
            opt.zero_grad()
            crit(model(x), y).backward()
            opt.step()
    r = diagnostics.open_run(run.path)
    where = r.first_nonfinite()
    assert where is not None
    d = r.distributions("activation")
    bad = d[(d.nan_count > 0) | (d.inf_count > 0)]
    assert where["capture_step"] == bad["step"].min()
    assert where["step"] <= where["capture_step"]
    assert diagnostics.open_run(tmp_path / "nan").status()["state"] == "finished"


def test_finite_run_has_no_nonfinite(tmp_path):
    _, run = _train(model_factory("inplace"), tmp_path=tmp_path)
    assert diagnostics.open_run(run.path).first_nonfinite() is None


def test_torch_compiled_model_records_everything_without_a_warning(tmp_path):
    """A model compiled before watch (hooks/compiled.py: the activation hooks run inside the
    graph); tests/hooks/test_compile.py covers the orders, model.compile() and Inductor."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    compiled = torch.compile(model, backend="eager")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    crit = nn.CrossEntropyLoss()
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = hooks.watch(compiled, optimizer=opt, loss_fn=crit, run_dir=tmp_path, name="c", every=1)
        for _ in range(2):
            opt.zero_grad()
            crit(compiled(x), y).backward()
            opt.step()
        run.close()
    assert not [w for w in caught if "watch" in str(w.message)]
    r = diagnostics.open_run(run.path)
    assert r.manifest["compiled"] is True
    assert r.kinds() == ["activation", "gradient", "weight", "param_grad", "update", "output", "label"]
    assert r.layers("activation") == ["0", "1", "2"]
    assert r.layers("weight") == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert len(r.scalars(names=["loss"])) == 2


def _lbfgs(model, watch, tmp_path=None, steps=3, every=1):
    """LBFGS: forward and backward run inside step(), in a closure it calls several times."""
    opt = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=4, history_size=5)
    crit = nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(32, 6, generator=g), torch.randint(0, 3, (32,), generator=g)
    first_norms = []  # the gradient norm after each step's first evaluation

    def closure():
        opt.zero_grad()
        loss = crit(model(x), y)
        loss.backward()
        if len(first_norms) < calls_before_step[-1] + 1:
            grads = torch.cat([p.grad.flatten() for p in model.parameters()])
            first_norms.append(torch.linalg.vector_norm(grads).item())
        return loss

    calls_before_step = []
    run = (hooks.watch(model, optimizer=opt, loss_fn=crit, run_dir=tmp_path, name="lbfgs", every=every)
           if watch else None)
    for step in range(steps):
        calls_before_step.append(step)
        opt.step(closure)
    if run:
        run.close()
    return first_norms, run


def test_closure_optimizer_records_each_steps_own_gradients(tmp_path):
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
    watched = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
    watched.load_state_dict(plain.state_dict())
    reference, _ = _lbfgs(plain, watch=False)
    norms, run = _lbfgs(watched, watch=True, tmp_path=tmp_path)
    assert _same(plain, watched)  # the closure ran the same number of times, in the same order
    assert norms == reference
    r = diagnostics.open_run(run.path)
    s = r.scalars()
    grad_norm = s[s.name == "grad_norm"].sort_values("step")
    assert grad_norm["step"].tolist() == [0, 1, 2]
    np.testing.assert_allclose(grad_norm["value"], norms, rtol=1e-5)  # this step's, not the last step's
    assert sorted(s[s.name == "loss"]["step"]) == [0, 1, 2]
    pg = r.distributions("param_grad")
    assert sorted(pg["step"].unique()) == [0, 1, 2]  # step 0 too: gradients existed before step()
    act = r.distributions("activation")
    assert sorted(act["step"].unique()) == [0, 1, 2]


class SAM(torch.optim.Optimizer):
    """Sharpness-aware minimisation's pattern: the user's backward gives the gradient at w;
    step() moves to w + ρ·g/|g|, re-evaluates there through the closure, comes back to w
    and takes the base step with the gradient from the perturbed point."""

    def __init__(self, params, lr=0.1, rho=0.05):
        super().__init__(params, dict(lr=lr, rho=rho))

    @torch.no_grad()
    def step(self, closure):
        params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))
        shifts = [p.grad * (self.param_groups[0]["rho"] / norm) for p in params]
        for p, e in zip(params, shifts):
            p.add_(e)
        self.zero_grad()
        with torch.enable_grad():
            closure()
        for p, e in zip(params, shifts):
            p.sub_(e)
            p.add_(p.grad, alpha=-self.param_groups[0]["lr"])


class PlainSGD(torch.optim.Optimizer):
    """SGD written out (a subclass calling super().step() would run the step hooks twice)."""

    def __init__(self, params, lr=0.1):
        super().__init__(params, dict(lr=lr))

    @torch.no_grad()
    def _sgd(self, scale=1.0):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad, alpha=-group["lr"] * scale)


class IgnoresClosure(PlainSGD):
    """An optimizer whose step takes a closure argument and never calls it."""

    def step(self, closure=None):
        self._sgd()


class Scaled(PlainSGD):
    """An optimizer whose step's first argument is not a closure."""

    def step(self, grad_scale=1.0):
        self._sgd(grad_scale)


@pytest.mark.parametrize("kind", ["sam", "ignores", "scaled"])
def test_step_arguments_other_than_a_plain_closure_leave_training_unchanged(tmp_path, kind):
    """Regression: running the closure ahead of step() made SAM take its base step with no
    gradient (the model never trained), made a closure-ignoring optimizer run it, and
    called a non-callable first argument."""

    def train(watch):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
        opt = {"sam": SAM, "ignores": IgnoresClosure, "scaled": Scaled}[kind](model.parameters(), lr=0.1)
        crit = nn.CrossEntropyLoss()
        g = torch.Generator().manual_seed(1)
        x, y = torch.randn(32, 6, generator=g), torch.randint(0, 3, (32,), generator=g)
        run = (hooks.watch(model, optimizer=opt, loss_fn=crit, run_dir=tmp_path, name=f"{kind}-{watch}", every=1)
               if watch else None)

        def closure():
            loss = crit(model(x), y)
            loss.backward()
            return loss

        for _ in range(3):
            opt.zero_grad()
            crit(model(x), y).backward()
            opt.step(0.5) if kind == "scaled" else opt.step(closure)
        if run:
            run.close()
        return model, run

    plain, _ = train(watch=False)
    watched, run = train(watch=True)
    assert _same(plain, watched)
    s = diagnostics.open_run(run.path).scalars()
    assert sorted(s[s.name == "grad_norm"]["step"]) == [0, 1, 2]


def test_regression_output_with_inf_does_not_stop_training(tmp_path):
    """Regression: an -inf output stretched the shared output/label histogram span to
    infinity and the bin computation raised inside the loss hook."""

    class LogHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 1)

        def forward(self, x):
            return torch.log(torch.relu(self.lin(x)))  # -inf wherever the unit is off

    torch.manual_seed(0)
    model = LogHead()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    crit = nn.MSELoss()
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    with hooks.watch(model, optimizer=opt, loss_fn=crit, run_dir=tmp_path, name="inf", every=1) as run:
        for _ in range(2):
            opt.zero_grad()
            crit(model(x), y).backward()
            opt.step()
    out = diagnostics.open_run(run.path).distributions("output")
    assert len(out) == 2 and (out["inf_count"] > 0).all()


class CallsSuper(torch.optim.SGD):
    """A subclass whose step calls super().step(): torch runs the step hooks once per
    patched class, i.e. twice once a plain SGD exists in the process."""

    def step(self, closure=None):
        return super().step(closure)


def test_step_calling_super_step_counts_once(tmp_path):
    torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=0.1)  # patches SGD.step too
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    opt = CallsSuper(model.parameters(), lr=0.1)
    crit = nn.CrossEntropyLoss()
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    with hooks.watch(model, optimizer=opt, loss_fn=crit, run_dir=tmp_path, name="super", every=1) as run:
        for _ in range(3):
            opt.zero_grad()
            crit(model(x), y).backward()
            opt.step()
    r = diagnostics.open_run(run.path)
    s = r.scalars()
    assert sorted(s[s.name == "grad_norm"]["step"]) == [0, 1, 2]
    assert r.steps("update") == [0, 1, 2] and r.steps("activation") == [0, 1, 2]
    upd = r.distributions("update", layers=["0.weight"])
    assert (upd["std"] > 0).all()  # measured across the real step, not an inner no-op
