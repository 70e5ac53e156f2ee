"""Sharded data parallel (FSDP2 `fully_shard`, FSDP1 `FullyShardedDataParallel`), two ranks
on the CPU with gloo: training unchanged bit for bit, and the recorded weights, parameter
gradients and gradient norm are the whole parameters' (checked against numpy on the full
parameters gathered by FSDP itself, and against clip_grad_norm_)."""

from __future__ import annotations

import contextlib
import os
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import diagnostics
from tests.hooks.test_distributed import _rendezvous

pytestmark = pytest.mark.slow

STEPS = 3
MODES = ("fsdp2", "hsdp", "fsdp1_orig", "fsdp1_flat")


def _wrap(model: nn.Sequential, mode: str) -> nn.Module:
    if mode in ("fsdp2", "hsdp"):
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        # HSDP: two replicas of one shard each (every rank holds whole parameters, counted once)
        mesh = (init_device_mesh("cpu", (2, 1), mesh_dim_names=("replicate", "shard")) if mode == "hsdp"
                else init_device_mesh("cpu", (2,)))
        fully_shard(model[0], mesh=mesh)
        fully_shard(model[2], mesh=mesh)
        return fully_shard(model, mesh=mesh)
    from torch.distributed.fsdp import FullyShardedDataParallel
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    return FullyShardedDataParallel(model, use_orig_params=mode == "fsdp1_orig", device_id=torch.device("cpu"),
                                    auto_wrap_policy=ModuleWrapPolicy({nn.Linear}))


def _full(model: nn.Module, mode: str, grads: bool) -> dict[str, np.ndarray]:
    """Every rank gathers each whole parameter (or gradient) through FSDP itself (collective)."""
    if mode in ("fsdp2", "hsdp"):
        found = {}
        for name, p in model.named_parameters():
            t = p.grad if grads else p
            found[name] = t.full_tensor().detach().numpy().copy()
        return found
    from torch.distributed.fsdp import FullyShardedDataParallel

    with FullyShardedDataParallel.summon_full_params(model, writeback=False, with_grads=grads):
        # cloned in torch: a numpy view would pin the storage FSDP frees on leaving
        found = {n: (p.grad if grads else p).detach().clone() for n, p in model.named_parameters()}
    return {n: t.numpy() for n, t in found.items()}


def _total_norm(model: nn.Module, mode: str) -> float:
    """The gradient norm as the user's own clipping computes it (max_norm too large to clip)."""
    if mode in ("fsdp2", "hsdp"):
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1e30)
        return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
    return float(model.clip_grad_norm_(1e30))


def _worker(rank: int, port: str, run_dir: str, mode: str, watched: bool, out: str) -> None:
    import hooks

    dist.init_process_group("gloo", init_method=port, rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        # 7 rows over 2 ranks: unevenly sharded (FSDP2 gives rank 0 four rows, rank 1 three)
        model = _wrap(nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3)), mode)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        crit = nn.CrossEntropyLoss()
        g = torch.Generator().manual_seed(100 + rank)  # each rank its own batches
        saved: dict[str, np.ndarray] = {}
        run = (hooks.watch(model, optimizer=opt, loss_fn=crit, run_dir=run_dir, name=mode, every=1)
               if watched else contextlib.nullcontext())
        with run:
            for step in range(STEPS):
                x, y = torch.randn(16, 5, generator=g), torch.randint(0, 3, (16,), generator=g)
                opt.zero_grad()
                crit(model(x), y).backward()
                saved[f"norm/{step}"] = np.array(_total_norm(model, mode))
                saved.update({f"w/{step}/{n}": v for n, v in _full(model, mode, grads=False).items()})
                if mode != "fsdp1_flat":  # FSDP1 gathers gradients only with use_orig_params=True
                    saved.update({f"g/{step}/{n}": v for n, v in _full(model, mode, grads=True).items()})
                opt.step()
        saved.update({f"final/{n}": v for n, v in _full(model, mode, grads=False).items()})
        if rank == 0:
            np.savez(out, **saved)
    finally:
        dist.destroy_process_group()
    _leave_without_finalizing()


def _leave_without_finalizing() -> None:
    """End this rank as multiprocessing ends a forked child: os._exit, no interpreter teardown.

    The gloo group outlives destroy_process_group (FSDP's state holds it, and nothing frees
    it: after destroy, `del model` and gc.collect() its two pt_gloo_runloop threads and its
    gloo_tcp_loop thread still run, in every mode). A spawned rank that returns finalizes the
    interpreter, then runs C++ static destructors, with those threads alive; a rank died
    there once (fsdp1_flat, under CPU load): SIGABRT, "terminate called without an active
    exception". Everything the rank writes is closed by now (the run, the .npz); a rank that
    raised does not come here, and spawn reports its traceback as before."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _train(tmp_path, mode: str, watched: bool) -> dict[str, np.ndarray]:
    out = tmp_path / f"{mode}-{watched}.npz"
    mp.spawn(_worker, args=(_rendezvous(tmp_path), str(tmp_path), mode, watched, str(out)), nprocs=2, join=True)
    with np.load(out) as f:
        return dict(f)


@pytest.mark.parametrize("mode", MODES)
def test_fsdp_records_whole_parameters_and_leaves_training_unchanged(tmp_path, mode):
    plain = _train(tmp_path, mode, watched=False)
    seen = _train(tmp_path, mode, watched=True)
    finals = [k for k in plain if k.startswith("final/")]
    assert finals and all(np.array_equal(plain[k], seen[k]) for k in finals)  # bit for bit

    r = diagnostics.open_run(tmp_path / mode)
    assert r.manifest["world_size"] == 2
    assert r.manifest["sharding"] == ("fsdp1" if mode.startswith("fsdp1") else "fsdp2")
    assert r.status()["state"] == "finished"
    names = ["0.weight", "0.bias", "2.weight", "2.bias"]  # the user's names, whatever the wrapper
    assert sorted(r.layers("weight")) == sorted(names)
    assert r.layers("activation") == ["0", "1", "2"]
    if mode != "fsdp1_flat":  # FSDP1's FlatParameters: the manifest lists them as 0._flat_param, 2._flat_param
        assert [p["name"] for p in r.manifest["parameters"]] == names
    kinds = {"weight": "w"} if mode == "fsdp1_flat" else {"weight": "w", "param_grad": "g"}
    for kind, key in kinds.items():
        got = r.distributions(kind)
        # one whole-parameter row per rank, the same on both
        assert sorted(got["rank"].unique()) == [0, 1]
        assert len(got) == 2 * STEPS * len(names)
        for row in got.itertuples():
            full = seen[f"{key}/{row.step}/{row.layer}"].astype(np.float64).ravel()
            assert row.count == full.size, (kind, row.layer)
            np.testing.assert_allclose([row.mean, row.std, row.min, row.max],
                                       [full.mean(), full.std(), full.min(), full.max()], rtol=1e-5, atol=1e-6)
            assert sum(row.hist_counts) == full.size  # small tensors: every element in the histogram
        one = r.distributions(kind, rank=1)  # a rank's view: the whole parameter too
        assert set(one["rank"]) == {1} and list(one["count"]) == list(got.loc[got["rank"] == 1, "count"])
        # each rank's own shard stays readable, and the shards add up to the whole
        shards = r.distributions(kind, shards=True)
        for (step, layer), part in shards.groupby(["step", "layer"]):
            assert sorted(part["rank"]) == [0, 1]
            assert part["count"].sum() == seen[f"{key}/{step}/{layer}"].size
            assert (part["count"] < part["count"].sum()).all() or (part["count"] == 0).any()
            if mode == "hsdp":  # the second replica's copy is not counted again
                assert list(part.sort_values("rank")["count"])[1] == 0

    # the optimizer's change to each whole parameter (small tensors: measured on every position)
    for row in r.distributions("update").itertuples():
        after = seen[f"w/{row.step + 1}/{row.layer}" if row.step + 1 < STEPS else f"final/{row.layer}"]
        change = (after.astype(np.float32) - seen[f"w/{row.step}/{row.layer}"]).astype(np.float64).ravel()
        assert row.count == change.size
        np.testing.assert_allclose([row.mean, row.std], [change.mean(), change.std()], rtol=1e-4, atol=1e-7)

    norms = r.scalars(names=["grad_norm"])
    assert sorted(norms["rank"].unique()) == [0, 1] and len(norms) == 2 * STEPS
    for row in norms.itertuples():
        np.testing.assert_allclose(row.value, seen[f"norm/{row.step}"], rtol=1e-5)
    assert set(r.scalars(names=["grad_norm"], rank=1)["rank"]) == {1}
    # activations stay per rank, each from its own batch (as under DDP)
    acts = r.distributions("activation")
    assert sorted(acts["rank"].unique()) == [0, 1] and len(r.distributions("activation", rank=0)) > 0
    upd = r.update_ratios()
    assert len(upd) == 2 * STEPS * len(names) and np.isfinite(upd["ratio"]).all()
