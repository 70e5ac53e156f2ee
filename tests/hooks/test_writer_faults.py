"""Writer faults never stop training (issue #15): when the disk fills up or the run directory
stops taking writes mid-training, `watch` warns once, training goes on exactly as without it,
`close()` returns, and the condition is recorded where it still can be."""

from __future__ import annotations

import errno
import time
import warnings

import pyarrow.parquet as pq
import pytest
import torch
from torch import nn

import diagnostics
import hooks


def _train(steps, run=None, on_step=None):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    crit = nn.CrossEntropyLoss()
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    watched = run(model, opt, crit) if run else None
    losses = []
    for step in range(steps):
        if on_step:
            on_step(step, watched)
        opt.zero_grad()
        loss = crit(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    if watched:
        watched.close()
    return losses, watched


def _flushed_up_to(path, step: int) -> bool:
    try:
        scalars = diagnostics.open_run(path).scalars()
    except diagnostics.DiagnosticsError:  # not written yet
        return False
    return not scalars.empty and scalars["step"].max() >= step


@pytest.mark.parametrize("fault", [errno.ENOSPC, errno.EROFS], ids=["disk full", "read-only"])
def test_a_writer_fault_warns_once_and_training_goes_on(tmp_path, monkeypatch, fault):
    reference, _ = _train(30)
    real_write = pq.write_table

    def failing(*args, **kwargs):
        raise OSError(fault, "simulated: " + ("No space left on device" if fault == errno.ENOSPC
                                              else "Read-only file system"))

    def break_disk(step, run):
        if step == 10:  # the writer's thread flushes what was recorded before the fault
            deadline = time.monotonic() + 60  # a loaded machine: not a fixed sleep
            while not _flushed_up_to(tmp_path / "f", 9) and time.monotonic() < deadline:
                time.sleep(0.02)
            monkeypatch.setattr(pq, "write_table", failing)
        if step > 10:
            time.sleep(0.03)  # each flush meets the fault again: one warning all the same

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        losses, run = _train(30, lambda m, o, c: hooks.watch(m, optimizer=o, loss_fn=c, run_dir=tmp_path, name="f",
                                                             every=1, flush_every_s=0.01), break_disk)
    assert losses == reference  # training unchanged, to the bit
    ours = [w for w in caught if "could not write" in str(w.message)]
    assert len(ours) == 1, [str(w.message) for w in caught]
    assert "simulated" in str(ours[0].message) and "training goes on" in str(ours[0].message)
    monkeypatch.setattr(pq, "write_table", real_write)
    opened = diagnostics.open_run(tmp_path / "f")
    assert opened.scalars()["step"].max() >= 9  # what was flushed before the fault
    assert "simulated" in opened.manifest.get("writer_error", "") or "simulated" in str(opened.status())
