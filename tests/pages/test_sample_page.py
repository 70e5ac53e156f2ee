"""Sample detail joins a sample's history within its split: ids name samples of one split."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import hooks
from tests.conftest import tiny_cnn
from tests.pages._app import assert_ok, plotly_charts, run_app


@pytest.fixture(scope="module")
def overlapping_ids(tmp_path_factory):
    """Train ids 0..47 and val ids 0..23 name different samples (as when each split is indexed
    from 0): train records exist for id 3, val id 3 is another sample."""
    folder = tmp_path_factory.mktemp("runs")
    torch.manual_seed(0)
    model = tiny_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(0)
    x_tr, y_tr = torch.randn(48, 1, 8, 8, generator=g), torch.randint(0, 3, (48,), generator=g)
    x_va, y_va = torch.randn(24, 1, 8, 8, generator=g), torch.randint(0, 3, (24,), generator=g)
    with hooks.watch(model, optimizer=opt, run_dir=folder, name="overlap", every=4) as run:
        for _ in range(3):
            for i in range(0, 48, 16):
                idx = torch.arange(i, i + 16)
                opt.zero_grad()
                logits = model(x_tr[idx])
                loss = nn.functional.cross_entropy(logits, y_tr[idx])
                run.log_batch(logits, y_tr[idx], ids=idx, loss=loss)
                loss.backward()
                opt.step()
        run.evaluate([(x_va, y_va, torch.arange(24))], split="val", attribute_worst=0, progress=False)
        run.evaluate([(x_tr, y_tr, torch.arange(48))], split="train", attribute_worst=0, progress=False)
    return folder


def _history_traces(monkeypatch, folder, split: str, sample_id: str) -> list[str]:
    at = run_app(monkeypatch, folder, "overlap")
    at.session_state["sample_id"] = sample_id
    at.session_state["sample_split"] = split
    at.switch_page("pages/sample.py").run()
    assert_ok(at)
    spec = next(s for s in plotly_charts(at) if "history" in s["layout"].get("title", {}).get("text", ""))
    return [t["name"] for t in spec["data"]], at


def test_a_val_sample_does_not_show_the_training_history_of_the_train_sample_with_its_id(monkeypatch,
                                                                                         overlapping_ids):
    names, at = _history_traces(monkeypatch, overlapping_ids, "val", "3")
    assert not any(n.startswith("training") for n in names), names
    assert any(n.startswith("evaluation") for n in names)
    assert any("no per-step records in split val" in c.value for c in at.caption)


def test_a_train_sample_shows_its_own_training_records(monkeypatch, overlapping_ids):
    names, at = _history_traces(monkeypatch, overlapping_ids, "train", "3")
    assert any(n.startswith("training") for n in names), names
