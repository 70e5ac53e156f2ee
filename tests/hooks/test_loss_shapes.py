"""The loss's input shapes (hooks/probes.py, recorded by Capture.record_outputs): the probe
`probe/train/broadcast` at each capture step and the manifest's `loss_input_shapes`, against
numpy's own broadcasting; training bitwise unchanged with a shape bug in the loop."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import diagnostics
import hooks
from diagnostics import schema
from hooks.probes import loss_input_probe, loss_input_shapes


def _train(tmp_path, target_shape, watch=True, steps=6, batches=None, every=2, name="shapes"):
    """A 1-D regression MLP with nn.MSELoss on (B, 1) outputs; `target_shape(y)` shapes the
    (B, 1) targets as the loop under test gives them; `batches`: the batch size per step."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    crit = nn.MSELoss()
    g = torch.Generator().manual_seed(1)
    run = hooks.watch(model, optimizer=opt, loss_fn=crit, run_dir=tmp_path, name=name, every=every) if watch else None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Using a target size")
        for step in range(steps):
            b = batches[step] if batches else 16
            x = torch.randn(b, 3, generator=g)
            y = x.sum(1, keepdim=True)
            opt.zero_grad()
            crit(model(x), target_shape(y)).backward()
            opt.step()
    if run:
        run.close()
    return model, run


def _numpy_kind(out_shape, lab_shape) -> float:
    """The probe's value by numpy's broadcasting rules: 2 a third shape, 1 the labels', 0 else."""
    try:
        shape = np.broadcast_shapes(out_shape, lab_shape)
    except ValueError:
        return 0.0
    return 0.0 if shape == tuple(out_shape) else 1.0 if shape == tuple(lab_shape) else 2.0


@pytest.mark.parametrize("out_shape, lab_shape", [
    ((16, 1), (16,)), ((16,), (16, 1)), ((16, 1), (16, 4)), ((16, 4), (16, 1)), ((16, 5), (16,)),
    ((5, 5), (5,)), ((16, 1), (16, 1)), ((2, 1, 6, 6), (2, 6, 6)), ((1,), (16,)), ((16, 3), (16, 7)),
])
def test_probe_against_numpy_broadcasting(out_shape, lab_shape):
    out, lab = torch.randn(out_shape), torch.randn(lab_shape)
    before = (out.clone(), lab.clone())
    probe = loss_input_probe(out, lab)
    assert probe["probe/train/broadcast"] == _numpy_kind(out_shape, lab_shape)
    shapes = loss_input_shapes(out, lab, step=3)
    assert shapes["outputs"] == list(out_shape) and shapes["labels"] == list(lab_shape) and shapes["step"] == 3
    try:
        expected = list(np.broadcast_shapes(out_shape, lab_shape))
    except ValueError:
        expected = None
    assert shapes["broadcast_to"] == expected
    assert torch.equal(out, before[0]) and torch.equal(lab, before[1])  # the user's tensors untouched
    assert out.shape == out_shape and lab.shape == lab_shape


def test_broadcast_recorded_at_each_capture_and_shapes_in_the_manifest(tmp_path):
    _, run = _train(tmp_path, lambda y: y.squeeze(1))  # (16, 1) outputs against (16,) targets
    r = diagnostics.open_run(run.path)
    probe = r.scalars(names=[f"{schema.PROBE_PREFIX}train/broadcast"])
    assert probe["step"].tolist() == [0, 2, 4] and probe["value"].tolist() == [2.0, 2.0, 2.0]
    assert r.manifest[schema.LOSS_INPUT_SHAPES] == {"outputs": [16, 1], "labels": [16], "broadcast_to": [16, 16],
                                                    "broadcast": 2.0, "step": 0}


def test_matching_shapes_record_no_broadcast(tmp_path):
    _, run = _train(tmp_path, lambda y: y)
    r = diagnostics.open_run(run.path)
    assert r.scalars(names=[f"{schema.PROBE_PREFIX}train/broadcast"])["value"].tolist() == [0.0, 0.0, 0.0]
    assert r.manifest[schema.LOSS_INPUT_SHAPES] == {"outputs": [16, 1], "labels": [16, 1], "broadcast_to": [16, 1],
                                                    "broadcast": 0.0, "step": 0}


def test_manifest_keeps_the_first_capture_that_broadcast(tmp_path):
    # a first batch of 1: (1, 1) against (1,) broadcasts to the outputs' own shape; later ones do not
    _, run = _train(tmp_path, lambda y: y.squeeze(1), batches=[1, 16, 16, 16, 8, 16])
    r = diagnostics.open_run(run.path)
    probe = r.scalars(names=[f"{schema.PROBE_PREFIX}train/broadcast"])
    assert probe["value"].tolist() == [0.0, 2.0, 2.0]
    assert r.manifest[schema.LOSS_INPUT_SHAPES] == {"outputs": [16, 1], "labels": [16], "broadcast_to": [16, 16],
                                                    "broadcast": 2.0, "step": 2}  # not overwritten by step 4's (8, 8)


@pytest.mark.parametrize("target_shape", [lambda y: y.squeeze(1), lambda y: y], ids=["broadcast", "matching"])
def test_training_is_bitwise_unchanged(tmp_path, target_shape):
    plain, _ = _train(tmp_path, target_shape, watch=False)
    watched, _ = _train(tmp_path, target_shape, every=1)
    for (k, a), b in zip(plain.state_dict().items(), watched.state_dict().values()):
        assert torch.equal(a, b), k
