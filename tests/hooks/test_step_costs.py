"""What keeps a model of many small layers within its budget: layer hooks only on captured
steps (hooks/layerhooks.py) and small gradients read together at backward's end
(hooks/gradnorm.py). Numbers against numpy and plain torch."""

import numpy as np
import pytest
import torch
from torch import nn

import diagnostics
import hooks
import hooks.summarize
from hooks.gradnorm import batched_squares, split_params


def _exact(grads: list[torch.Tensor]) -> float:
    total = 0.0
    for g in grads:
        g = g.coalesce().values() if g.is_sparse else g
        total += float(np.sum(np.square(g.detach().double().numpy())))
    return total


@pytest.mark.parametrize("native", [True, False], ids=["native", "torch"])
def test_batched_squares_sum_every_kind_of_gradient(monkeypatch, native):
    if not native:
        monkeypatch.setattr(hooks.summarize, "_fused", None)
    torch.manual_seed(0)
    grads = [torch.randn(64, 64), torch.randn(7), torch.randn(300).double(), torch.randn(50).bfloat16(),
             torch.randn(20, 20)[:, ::2], torch._efficientzerotensor(30),
             torch.sparse_coo_tensor([[0, 2, 2]], [1.0, 2.0, -3.0], (5,))]
    got = sum(float(p) for p in batched_squares(grads))
    assert got == pytest.approx(_exact(grads), rel=1e-5)
    assert batched_squares([]) == [0.0]


def test_only_large_parameters_and_the_probes_get_a_hook():
    small, large = torch.zeros(10, requires_grad=True), torch.zeros(70_000, requires_grad=True)
    probe = torch.zeros(8, requires_grad=True)
    hooked, batched = split_params([small, large, probe], [probe])
    assert [id(p) for p in hooked] == [id(large), id(probe)] and [id(p) for p in batched] == [id(small)]


def _leaf_hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules() if not list(m.children()))


def test_layer_hooks_are_on_only_for_captured_steps(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    crit = nn.CrossEntropyLoss()
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    on = []
    with hooks.watch(model, optimizer=opt, loss_fn=crit, run_dir=tmp_path, every=3) as run:
        for _ in range(7):
            on.append(_leaf_hooks(model))
            opt.zero_grad()
            crit(model(x), y).backward()
            opt.step()
    assert on == [3, 0, 0, 3, 0, 0, 3]
    assert _leaf_hooks(model) == 0  # closed: nothing left behind
    act = diagnostics.open_run(run.path).distributions("activation")
    assert sorted(act.step.unique()) == [0, 3, 6] and set(act.layer) == {"0", "1", "2"}


def test_a_backward_reaching_no_hooked_parameter_is_read_at_the_step(tmp_path):
    """The four clipping probes (the smallest parameters of 8 or more elements: the four
    16-element weights) live in `a`; this loop trains `b`
    alone, so no hooked parameter ends its backward: the small gradients are read at the
    step, and the norm is still exact (no clipping here)."""
    torch.manual_seed(0)
    model = nn.ModuleDict({"a": nn.Sequential(*[nn.Linear(4, 4) for _ in range(4)]), "b": nn.Linear(32, 32)})
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(16, 32)
    expected = []
    with hooks.watch(model, optimizer=opt, run_dir=tmp_path, every=1) as run:
        for _ in range(3):
            opt.zero_grad()
            model["b"](x).square().mean().backward()
            expected.append(float(torch.cat([p.grad.flatten() for p in model["b"].parameters()]).norm()))
            opt.step()
    s = diagnostics.open_run(run.path).scalars()
    got = s[s.name == "grad_norm"].sort_values("step")["value"].tolist()
    np.testing.assert_allclose(got, expected, rtol=1e-5)
