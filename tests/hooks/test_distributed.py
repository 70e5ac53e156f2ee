"""Distributed data parallel (gloo, two processes on this machine): one stream per rank."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import diagnostics

pytestmark = pytest.mark.slow


def _worker(rank: int, world_size: int, port: str, run_dir: str, steps: int = 4,
            watch_kwargs: dict | None = None) -> None:
    import hooks

    dist.init_process_group("gloo", init_method=port, rank=rank, world_size=world_size)
    try:
        torch.manual_seed(0)
        model = nn.parallel.DistributedDataParallel(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        crit = nn.CrossEntropyLoss()
        g = torch.Generator().manual_seed(100 + rank)  # each rank its own shard
        with hooks.watch(model, optimizer=opt, loss_fn=crit, run_dir=run_dir, name="ddp",
                         **(watch_kwargs or {"every": 2})):
            for _ in range(steps):
                x, y = torch.randn(16, 4, generator=g), torch.randint(0, 2, (16,), generator=g)
                opt.zero_grad()
                crit(model(x), y).backward()
                opt.step()
    finally:
        dist.destroy_process_group()


def _rendezvous(tmp_path) -> str:
    """A file store for the ranks to meet: a TCP port picked here could be taken by another
    process before the ranks bind it (an FSDP test failed so once)."""
    return f"file://{tmp_path / f'rendezvous-{uuid.uuid4().hex}'}"


def test_each_rank_writes_its_own_stream_into_one_run(tmp_path):
    mp.spawn(_worker, args=(2, _rendezvous(tmp_path), str(tmp_path)), nprocs=2, join=True)
    assert [p.name for p in tmp_path.iterdir()] == ["ddp"]
    r = diagnostics.open_run(tmp_path / "ddp")
    assert r.manifest["world_size"] == 2
    # the DDP wrapper's module is watched: names as in the user's model, not module.0
    assert r.manifest["model_class"] == "Sequential" and r.manifest["wrapped_by"] == "DistributedDataParallel"
    assert r.status() == {**r.status(), "state": "finished", "ranks": 2}
    loss = r.scalars(names=["loss"])
    assert sorted(loss["rank"].unique()) == [0, 1]
    assert len(loss) == 8
    # different shards: the two ranks saw different losses at the same step
    by_rank = loss.pivot(index="step", columns="rank", values="value")
    assert (by_rank[0] != by_rank[1]).all()
    acts = r.distributions("activation", layers=["0"])
    assert sorted(acts["rank"].unique()) == [0, 1] and sorted(acts["step"].unique()) == [0, 2]
    only_one = r.distributions("activation", layers=["0"], rank=1)
    assert set(only_one["rank"]) == {1} and len(only_one) == 2
    # the gradient norm is the averaged gradient's (the same on both ranks, though their
    # own gradients differ); clipping cannot be told from averaging there: unknown (NaN)
    norms = r.scalars(names=["grad_norm"]).pivot(index="step", columns="rank", values="value")
    assert len(norms) == 4 and np.allclose(norms[0], norms[1], rtol=1e-6)
    assert r.scalars(names=["grad_clipped"])["value"].isna().all()
    # DDP averages gradients: the weights stay identical on both ranks
    w = r.distributions("weight", layers=["0.weight"]).pivot(index="step", columns="rank", values="mean")
    assert (w[0] == w[1]).all()



def test_auto_schedule_captures_the_same_steps_on_every_rank(tmp_path):
    """every="auto" (the default) under DDP: the ranks agree on a capture period at
    power-of-two steps, so their captures line up step for step (each rank's own timing
    would give each its own steps). A large budget makes captures beyond the powers of two."""
    steps = 80
    mp.spawn(_worker, args=(2, _rendezvous(tmp_path), str(tmp_path), steps, {"budget": 0.9}), nprocs=2, join=True)
    r = diagnostics.open_run(tmp_path / "ddp")
    schedule = r.manifest["schedule"]
    assert schedule["synchronized"] is True and schedule["period"] >= 1
    acts = r.distributions("activation", layers=["0"])
    by_rank = {rank: sorted(acts.loc[acts["rank"] == rank, "step"]) for rank in (0, 1)}
    assert by_rank[0] == by_rank[1]
    assert {0, 1, 2, 4, 8, 16, 32, 64} <= set(by_rank[0])
    assert any(s & (s - 1) for s in by_rank[0])  # and steps beyond the powers of two
