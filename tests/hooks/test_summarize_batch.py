"""Small tensors summarised in one batch at a capture step's end (`summarize_batch`) give the
vectors `summarize` gives one at a time, and what `watch` records is the same either way."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import diagnostics
import hooks
from diagnostics import schema
from hooks import capture
from hooks.summarize import SAMPLE, VECTOR_FIELDS, small_values, summarize, summarize_batch

F = {name: i for i, name in enumerate(VECTOR_FIELDS)}
NF = len(VECTOR_FIELDS)


def _cases() -> tuple[list[np.ndarray], list[bool]]:
    rng = np.random.default_rng(0)
    values, sampled = [], []
    for n in (1, 2, 3, 7, 32, 1024, 2048, 2049, 4096, SAMPLE):
        for dtype in (np.float32, np.float64):
            normal = rng.normal(size=n)
            for a in (normal, np.maximum(normal, 0), np.full(n, 3.5), rng.normal(1000, 1, size=n)):
                a = a.astype(dtype)
                values += [a, a]
                sampled += [False, True]
    std_tie = [0.7487458366772067, 1.6347831869351768, 0.2727687998676775, -1.2333287726509752]
    for odd in (np.array([0.0, -0.0, 1.0], np.float32), np.array([0.0, -0.0], np.float32),
                np.array([-0.0, 0.0, 2.0]), np.array(std_tie),  # einsum put this std a float32 ulp off
                np.array([np.nan, 1.0, np.inf], np.float32),
                np.array([1e200, -1e200, 3.0]), np.array([3e38, -3e38, 1.0], np.float32)):
        values += [odd, odd]
        sampled += [False, True]
    return values, sampled


def test_a_batch_gives_each_tensor_the_vector_summarize_gives_it():
    values, sampled = _cases()
    batch = summarize_batch(values, sampled=sampled)
    assert len(batch) == len(values)
    for a, s, got in zip(values, sampled, batch):
        want = summarize(torch.from_numpy(a.copy()), sampled=s)[1].numpy()
        # bit for bit: the sign of a zero too (0.0 == -0.0 would pass assert_array_equal)
        np.testing.assert_array_equal(got.numpy().view(np.uint32), want.view(np.uint32),
                                      err_msg=f"{a.dtype} n={a.size} sampled={s}")


def test_a_batch_against_numpy():
    rng = np.random.default_rng(1)
    values = [rng.normal(size=n).astype(np.float32) for n in (5, 300, 300, 2048)]
    for a, got in zip(values, summarize_batch(values)):
        v, x = got.numpy().astype(np.float64), a.astype(np.float64)
        assert v[F["mean"]] == pytest.approx(x.mean(), rel=1e-6, abs=1e-7)
        assert v[F["std"]] == pytest.approx(x.std(), rel=1e-6)
        assert (v[F["min"]], v[F["max"]]) == (x.min(), x.max())
        q = [v[F[c]] for c in schema.QUANTILE_COLUMNS]
        np.testing.assert_allclose(q, np.quantile(x, schema.QUANTILES), rtol=1e-6, atol=1e-7)
        counts, _ = np.histogram(x, bins=schema.HIST_BINS, range=(x.min(), x.max()))
        np.testing.assert_array_equal(v[NF:], counts)


def test_small_values_copies_what_the_batch_may_take_and_refuses_the_rest():
    t = torch.arange(6.0).reshape(2, 3)
    copy = small_values(t.t())  # a transposed view: its values in logical order
    t.zero_()  # the weights move, an in-place ReLU rewrites: the copy keeps what was seen
    np.testing.assert_array_equal(copy, [0, 3, 1, 4, 2, 5])
    assert small_values(nn.Parameter(torch.ones(4))) is not None
    for refused in (torch.ones(4, dtype=torch.float16), torch.ones(SAMPLE + 1), torch.ones(0),
                    torch.ones(3, dtype=torch.int64)):
        assert small_values(refused) is None  # summarised at once, as before


class _Net(nn.Module):
    """Small layers (batched), an in-place ReLU that rewrites a Linear's output after its hook
    ran, a Tanh (saturated share), and one layer above SAMPLE values (summarised at once)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 16)
        self.relu = nn.ReLU(inplace=True)
        self.b = nn.Linear(16, 16)
        self.tanh = nn.Tanh()
        self.wide = nn.Linear(16, 600)  # 600 × 16 = 9,600 weights > SAMPLE
        self.head = nn.Linear(600, 3)

    def forward(self, x):
        return self.head(self.wide(self.tanh(self.b(self.relu(self.a(x))))))


def _record(tmp_path, name: str):
    torch.manual_seed(0)
    model = _Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    crit = nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(1)
    with hooks.watch(model, optimizer=opt, loss_fn=crit, run_dir=tmp_path, name=name, every=1) as run:
        for _ in range(6):
            x, y = torch.randn(32, 8, generator=g) * 3, torch.randint(0, 3, (32,), generator=g)
            opt.zero_grad()
            crit(model(x), y).backward()
            opt.step()
    return diagnostics.open_run(run.path)


@pytest.mark.parametrize("defer_bytes", [capture.DEFER_BYTES, 0], ids=["one batch a step", "a batch per tensor"])
def test_watch_records_the_same_summaries_batched_or_one_at_a_time(tmp_path, monkeypatch, defer_bytes):
    batched = _record(tmp_path, "batched") if defer_bytes else None
    if not defer_bytes:
        monkeypatch.setattr(capture, "DEFER_BYTES", 0)
        batched = _record(tmp_path, "batched")
    monkeypatch.setattr(capture, "small_values", lambda t: None)  # every summary at once, as before
    single = _record(tmp_path, "single")
    for kind in ("activation", "gradient", "weight", "param_grad", "update"):
        a, b = (r.distributions(kind).sort_values(["step", "layer"]).reset_index(drop=True) for r in (batched, single))
        assert len(a) > 0 and len(a) == len(b), kind
        assert a.drop(columns=[c for c in a.columns if "time" in c]).equals(
            b.drop(columns=[c for c in b.columns if "time" in c])), kind
    act = batched.distributions("activation")
    # the Linear's output before the in-place ReLU: negative values seen (a copy, not a view)
    assert (act[act["layer"] == "a"]["min"] < 0).all()
    assert act[act["layer"] == "tanh"]["saturated_frac"].notna().all()
    assert act[act["layer"] == "relu"]["dead_frac"].notna().all()
