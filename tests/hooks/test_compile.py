"""watch and torch.compile, in either order, wrapped (`torch.compile(model)`) or in place
(`model.compile()`): training as without the tool, everything recorded, and no graph break:
on capture steps the activation hook's work runs in custom ops inside the graph
(hooks/compiled.py), so the model keeps two graphs, one per value of the capture flag."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch._dynamo
from torch import nn
from torch._dynamo.utils import counters

import diagnostics
import hooks

ORDERS = ["watch_then_wrap", "wrap_then_watch", "watch_then_compile_in_place", "compile_in_place_then_watch"]


class Net(nn.Module):
    """A model with its own forward (model.compile() traces it whole), an in-place ReLU and a Tanh."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2, self.out = nn.Linear(6, 16), nn.ReLU(inplace=True), nn.Linear(16, 8), nn.Tanh()
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.out(self.fc2(self.act(self.fc1(x)))))


LEAVES = ["fc1", "act", "fc2", "out", "head"]


def _train(order: str | None, tmp_path=None, steps=6, every=2, backend="eager", name="r"):
    """Train Net with SGD + momentum; order None: compiled, unwatched; "eager": watched, not
    compiled. Returns (model, run)."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    crit = nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 6, generator=g), torch.randint(0, 3, (32,), generator=g)
    run, call = None, model

    def watch():
        return hooks.watch(call, optimizer=opt, loss_fn=crit, run_dir=tmp_path, name=name, every=every)

    if order in ("watch_then_wrap", "watch_then_compile_in_place", "eager"):
        run = watch()
    if order in ("watch_then_wrap", "wrap_then_watch", None):
        call = torch.compile(model, backend=backend)
    elif order != "eager":
        model.compile(backend=backend)
    if order in ("wrap_then_watch", "compile_in_place_then_watch"):
        run = watch()
    for _ in range(steps):
        opt.zero_grad()
        crit(call(x), y).backward()
        opt.step()
    if run is not None:
        run.close()
    return model, run


def _same_parameters(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


@pytest.mark.parametrize("order", ORDERS)
def test_compiled_training_is_unchanged_and_everything_is_recorded(tmp_path, order):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning either: nothing is skipped any more
        watched, run = _train(order, tmp_path)
    plain, _ = _train(None)
    assert _same_parameters(watched, plain)  # bitwise, as the backend gives it run to run
    r = diagnostics.open_run(run.path)
    assert r.status()["state"] == "finished"
    assert r.manifest["compiled"] is order.endswith("then_watch")  # what watch could see
    assert set(r.kinds()) == {"activation", "gradient", "weight", "param_grad", "update", "output", "label"}
    assert sorted(r.layers("activation")) == sorted(LEAVES)
    assert sorted(r.layers("gradient")) == sorted(LEAVES)
    assert sorted(set(r.distributions(kind="activation").step)) == [0, 2, 4]
    assert len(r.scalars(names=["loss"])) == 6


@pytest.mark.parametrize("order", ["watch_then_wrap", "compile_in_place_then_watch"])
def test_compiled_summaries_equal_the_eager_ones(tmp_path, order):
    """The activations and gradients recorded through the graph's ops are those an eager
    watched run records (backend "eager" computes the same values)."""
    _, compiled_run = _train(order, tmp_path, name="c")
    _, eager_run = _train("eager", tmp_path, name="e")
    for kind in ("activation", "gradient", "weight", "param_grad"):
        cols = ["step", "layer", "count", "mean", "std", "min", "max", "zero_frac"]
        got = diagnostics.open_run(compiled_run.path).distributions(kind=kind)[cols]
        want = diagnostics.open_run(eager_run.path).distributions(kind=kind)[cols]
        got, want = (f.sort_values(["step", "layer"]).reset_index(drop=True) for f in (got, want))
        assert len(got) == len(want) > 0
        np.testing.assert_array_equal(got.to_numpy(), want.to_numpy(), err_msg=kind)


def test_the_capture_flag_is_a_guard_two_graphs_no_break(tmp_path):
    """torch.compile(model) after watch: one graph without the capture ops, one with them,
    each compiled once; 10 steps flip the flag 6 times and recompile nothing more."""
    counters.clear()
    _train("watch_then_wrap", tmp_path, steps=10, every=3)
    assert sum(counters["graph_break"].values()) == 0
    assert counters["stats"]["unique_graphs"] == 2


def test_closed_run_leaves_the_compiled_model_alone(tmp_path):
    """A graph traced with the hooks keeps them after close (dynamo does not guard on hooks):
    the run's flag is off for good, so the graph without capture runs, and training goes on."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    run = hooks.watch(model, optimizer=opt, loss_fn=nn.MSELoss(), run_dir=tmp_path, name="c", every=1)
    call = torch.compile(model, backend="eager")
    x = torch.randn(8, 6)
    call(x).sum().backward()
    opt.step()
    run.close()
    before = diagnostics.open_run(run.path).distributions(kind="activation")
    for _ in range(2):
        opt.zero_grad()
        call(x).sum().backward()
        opt.step()
    assert len(diagnostics.open_run(run.path).distributions(kind="activation")) == len(before)


@pytest.mark.slow
def test_inductor_training_is_unchanged_and_records_activations(tmp_path):
    """Inductor (C++ through gcc here; ~15 s of compiling): parameters bitwise equal to the
    unwatched compiled run, activations and gradients recorded at the capture steps."""
    watched, run = _train("watch_then_wrap", tmp_path, steps=4, backend="inductor")
    plain, _ = _train(None, steps=4, backend="inductor")
    assert _same_parameters(watched, plain)
    r = diagnostics.open_run(run.path)
    assert sorted(r.layers("activation")) == sorted(LEAVES)
    assert sorted(set(r.distributions(kind="gradient").step)) == [0, 2]


def test_a_graph_traced_before_watch_is_said_once(tmp_path, monkeypatch):
    """Compiled steps before watch: dynamo keeps its graph without the hooks, so activations
    cannot be captured; one warning says so and what to do, the rest is recorded."""
    from hooks import compiled

    monkeypatch.setitem(compiled._WARNED, "stale_graph", False)
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = Net()
    call = torch.compile(model, backend="eager")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    crit = nn.MSELoss()
    x, y = torch.randn(8, 6), torch.randn(8, 3)
    crit(call(x), y).backward()  # traced here, without hooks
    opt.step()
    run = hooks.watch(call, optimizer=opt, loss_fn=crit, run_dir=tmp_path, name="late", every=1)
    with pytest.warns(RuntimeWarning, match="traced before watch") as caught:
        for _ in range(3):
            opt.zero_grad()
            crit(call(x), y).backward()
            opt.step()
    run.close()
    assert len([w for w in caught if "traced before watch" in str(w.message)]) == 1
    r = diagnostics.open_run(run.path)
    assert "weight" in r.kinds() and "output" in r.kinds()
    assert len(r.scalars(names=["loss"])) == 3


def test_fullgraph_compiles_capture_steps_too(tmp_path):
    """fullgraph=True raises on any graph break: capture steps have none."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    crit = nn.CrossEntropyLoss()
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    run = hooks.watch(model, optimizer=opt, loss_fn=crit, run_dir=tmp_path, name="full", every=2)
    call = torch.compile(model, backend="eager", fullgraph=True)
    for _ in range(4):
        opt.zero_grad()
        crit(call(x), y).backward()
        opt.step()
    run.close()
    d = diagnostics.open_run(run.path).distributions(kind="gradient")
    assert d.groupby("step").size().to_dict() == {0: len(LEAVES), 2: len(LEAVES)}


def _train_compiled_loss(watch: bool, tmp_path=None):
    """The loss module inside the compiled function (a compiled training step's forward)."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model, crit = Net(), nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g)
    run = hooks.watch(model, optimizer=opt, loss_fn=crit, run_dir=tmp_path, name="l", every=2) if watch else None
    loss_of = torch.compile(lambda x, y: crit(model(x), y), backend="eager")
    for _ in range(6):
        opt.zero_grad()
        loss_of(x, y).backward()
        opt.step()
    if run is not None:
        run.close()
    return model, run


def test_a_compiled_loss_records_outputs_at_capture_steps(tmp_path):
    """The loss hook is traced too: its capture work runs eagerly (a graph break at the loss,
    capture steps only), so summaries are never traced; a bounded number of graphs."""
    counters.clear()
    watched, run = _train_compiled_loss(True, tmp_path)
    assert counters["stats"]["unique_graphs"] <= 6
    plain, _ = _train_compiled_loss(False)
    assert _same_parameters(watched, plain)
    r = diagnostics.open_run(run.path)
    assert sorted(set(r.distributions(kind="output").step)) == [0, 2, 4]
    assert sorted(set(r.distributions(kind="activation").step)) == [0, 2, 4]
    assert len(r.scalars(names=["loss"])) == 6
