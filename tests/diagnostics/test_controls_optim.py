"""Healthy public training scripts with unusual optimizers (benchmarks/controls_optim.py:
pytorch/examples mnist with Adadelta, time-sequence LBFGS, actor-critic with Adam, a small
ResNet with SGD momentum) draw no warning or error; the update-ratio rule reads whether the
loss falls before it blames the learning rate."""

from __future__ import annotations

import pandas as pd
import pytest

torch = pytest.importorskip("torch")

import diagnostics  # noqa: E402
from benchmarks.controls_optim import CONTROLS  # noqa: E402
from diagnostics import health  # noqa: E402
from tests.diagnostics.test_health import FakeRun, _rows  # noqa: E402

# Rules owned by other parts that still misread a control (the lead fixes them at the merge).
OTHERS: dict[str, set[str]] = {}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.slow
@pytest.mark.parametrize("case", CONTROLS, ids=lambda c: c.name)
def test_control_draws_no_warning(case, tmp_path):
    run = diagnostics.open_run(case.train(tmp_path / case.name))
    loss = run.scalars(names=["loss"])["value"].to_numpy(float)
    assert len(loss) >= 5 and loss[-3:].mean() < 0.6 * loss[:3].mean() or case.name == "actor_critic_adam", loss
    loud = [f"{f.rule} {f.layer}: {f.message}" for f in health.check(run)
            if f.severity in ("warning", "error") and f.rule not in OTHERS.get(case.name, ())]
    assert not loud, loud


def _ratio_run(loss_values):
    """One weight matrix moving by 0.3 of its norm per step, and the given loss per step."""
    steps = list(range(6))
    ratios = pd.DataFrame({"step": steps, "layer": "w", "ratio": [0.3] * len(steps)})
    scalars = pd.DataFrame({"step": list(range(len(loss_values))), "name": "loss", "value": loss_values})
    return FakeRun(manifest={"optimizer": "LBFGS", "parameters": [{"name": "w", "shape": [4, 4]}]},
                   ratios=ratios, scalars=scalars, dists=_rows("update", "w", steps))


def test_high_update_ratio_is_info_while_the_loss_falls():
    (f,) = health.rule_update_ratio(_ratio_run([0.35, 0.0015, 5e-4, 1.6e-4, 4.8e-5, 3e-5]))
    assert f.severity == "info" and "LBFGS" in f.message  # the old rule: a warning
    # first fifth (1 value) 0.35, last fifth 3e-5
    assert f.evidence["loss_first"] == 0.35 and f.evidence["loss_last"] == 3e-5


def test_high_update_ratio_is_info_while_the_loss_still_falls_at_the_end():
    """A character LM under SGD lr 20 + clip 0.25 (word_language_model's defaults): its loss falls
    23% and is still falling in its last fifth, by hand 2.825 against 2.897 before it."""
    fifths = [3.66, 3.144, 2.95, 2.897, 2.825]
    (f,) = health.rule_update_ratio(_ratio_run([v for v in fifths for _ in range(4)]))
    assert f.severity == "info" and f.evidence["loss_last"] == 2.825


@pytest.mark.parametrize("loss", [
    [2.3, 2.4, 1.9, 2.6, 2.2, 2.5, 2.1, 2.4],  # oscillates near where it started
    [2.3, 2.0, 1.6, 1.4, 1.3, 1.3, 1.25, 1.3],  # falls, but not to half (1.3 > 0.5 x 2.3)
    [2.3, 1.0, 0.5, float("nan"), 0.2, 0.1],  # a NaN on the way
    [2.3, 0.4, 0.3],  # too few points to tell
    [],  # no loss recorded: the ratio alone, as before
])
def test_high_update_ratio_warns_unless_the_loss_falls(loss):
    (f,) = health.rule_update_ratio(_ratio_run(loss))
    assert f.severity == "warning" and f.evidence["median_ratio"] == 0.3


@pytest.mark.parametrize("first_std, vanishing", [(0.01 / 227, False), (1e-7, True)])
def test_gradient_depth_compares_norms_across_a_global_pool(first_std, vanishing):
    """A ResNet's first conv map (64 samples x 16 channels x 8x8) against its 10 logits: a
    global average pool divides each element's gradient by the pooled area (64), so per element
    the first layer's gradient is 227x smaller on a healthy run (the issue's false alarm); per
    sample (the whole tensor's norm: sqrt(65536) x 0.01/227 = 0.0113 vs sqrt(640) x 0.01 = 0.253)
    it is 22x, under the 100x threshold. A gradient 1e5x smaller per element still warns."""
    steps = [0, 1, 2]
    run = FakeRun(manifest={"modules": [{"name": n, "type": t} for n, t in
                                        (("conv1", "Conv2d"), ("layer1", "Conv2d"), ("fc", "Linear"))]},
                  dists=pd.concat([_rows("gradient", "conv1", steps, count=65536, std=first_std),
                                   _rows("gradient", "layer1", steps, count=65536, std=0.01 / 64),
                                   _rows("gradient", "fc", steps, count=640, std=0.01)]))
    found = [f for f in health.rule_gradient_depth(run) if f.severity == "warning"]
    assert [f.rule for f in found] == (["vanishing_gradients"] if vanishing else [])
    if not vanishing:
        return
    assert found[0].evidence["ratio_first_to_last"] == pytest.approx(256 * 1e-7 / (640 ** 0.5 * 0.01))
