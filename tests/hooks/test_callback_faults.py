"""Fault injection through the framework callbacks (issue #22's compatibility table): the
Lightning and Hugging Face callbacks build the same `WatchedRun`, so the same guard wraps
their hooks; here a fault inside the tool, in a hook body and in the writer, never reaches
`trainer.fit()` / `trainer.train()`, the trained weights are bitwise those of the same
training without the callback, one warning is given, and the run lists the fault."""

from __future__ import annotations

import warnings

import pytest
import torch

import diagnostics
from diagnostics.writer import RunWriter
from hooks.capture import Capture
from tests.hooks import test_lightning as lightning_tests
from tests.hooks import test_transformers as transformers_tests
from tests.hooks.test_containment import _failing

INJECTED = [(Capture, "on_forward", "activations"), (RunWriter, "add_scalars", None)]


def _check(monkeypatch, caught, path, part) -> None:
    ours = [str(w.message) for w in caught if "hookscope" in str(w.message)]
    assert len(ours) == 1 and "injected fault" in ours[0], ours
    monkeypatch.undo()
    run = diagnostics.open_run(path)
    faults = list(run.manifest.get("faults", [])) + run.status()["faults"]
    assert faults and all("injected fault" in f["error"] for f in faults)
    if part is not None:
        assert {f["part"] for f in faults} == {part}


@pytest.mark.slow
@pytest.mark.parametrize("where,attribute,part", INJECTED, ids=[a for _, a, _ in INJECTED])
def test_lightning_training_survives_a_fault_bitwise(tmp_path, monkeypatch, where, attribute, part):
    plain = lightning_tests._fit(tmp_path, [])
    cb = lightning_tests._callback(tmp_path, "fault", evaluate=False)
    monkeypatch.setattr(where, attribute, _failing(getattr(where, attribute), 2))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        watched = lightning_tests._fit(tmp_path, [cb])
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), watched.state_dict().values()))
    _check(monkeypatch, caught, cb.run.path, part)


@pytest.mark.slow
@pytest.mark.parametrize("where,attribute,part", INJECTED, ids=[a for _, a, _ in INJECTED])
def test_hugging_face_training_survives_a_fault_bitwise(tmp_path, monkeypatch, where, attribute, part):
    plain = transformers_tests._trainer(tmp_path, [])
    plain.train()
    cb = transformers_tests._callback(tmp_path, "fault", evaluate=False)
    watched = transformers_tests._trainer(tmp_path, [cb])
    monkeypatch.setattr(where, attribute, _failing(getattr(where, attribute), 2))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        watched.train()
    assert all(torch.equal(a, b) for a, b in zip(plain.model.state_dict().values(),
                                                  watched.model.state_dict().values()))
    _check(monkeypatch, caught, cb.run.path, part)
