"""hooks._fused (the optional one-pass reduction in C) against numpy in float64."""

from __future__ import annotations

import shutil
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch

from hooks import summarize as summarize_module

fused = summarize_module._fused
needs_native = pytest.mark.skipif(fused is None, reason="hooks._fused not built (no C compiler at install)")


def test_native_pass_is_built_where_a_compiler_is():
    """setup.py builds it as optional: a silent build failure would only show as speed."""
    has_headers = (Path(sysconfig.get_paths()["include"]) / "Python.h").exists()
    if shutil.which("cc") is None or not has_headers:
        pytest.skip("no C compiler or Python headers here: the torch passes are used")
    assert fused is not None, "hooks._fused missing: reinstall with `pip install -e .` and read its build log"


def reference(x: np.ndarray) -> tuple:
    a = x.astype(np.float64)
    fin = a[np.isfinite(a)]
    lo = float(a[~np.isnan(a)].min()) if (~np.isnan(a)).any() else np.inf
    hi = float(a[~np.isnan(a)].max()) if (~np.isnan(a)).any() else -np.inf
    return fin.sum(), np.dot(fin, fin), lo, hi, int(np.count_nonzero(x == 0)), int(np.count_nonzero(~np.isfinite(a)))


@needs_native
@pytest.mark.parametrize("n", [0, 1, 15, 17, 2047, 2049, 100_003])  # lanes of 16, blocks of 2,048, tails
def test_stats_match_numpy(n):
    rng = np.random.default_rng(n)
    x = rng.normal(0.5, 2.0, n).astype(np.float32)
    x[::7] = 0.0
    x[3::11] = -0.0
    s1, s2, lo, hi, zeros, non_finite = fused.stats_f32(torch.from_numpy(x).data_ptr(), n)
    r1, r2, rlo, rhi, rzeros, rnon = reference(x)
    assert s1 == pytest.approx(r1, rel=1e-6, abs=1e-6)
    assert s2 == pytest.approx(r2, rel=1e-6)
    assert (lo, hi) == (rlo, rhi) if n else (lo, hi) == (np.inf, -np.inf)
    assert zeros == rzeros and non_finite == rnon == 0


@needs_native
def test_non_finite_counted_min_max_skip_nan():
    x = np.random.default_rng(1).normal(size=5000).astype(np.float32)
    x[[3, 4000]] = np.nan
    x[[10, 4999]] = np.inf
    x[77] = -np.inf
    _, _, lo, hi, _, non_finite = fused.stats_f32(torch.from_numpy(x).data_ptr(), x.size)
    assert non_finite == 5
    assert lo == -np.inf and hi == np.inf  # NaN skipped, ±Inf kept (the caller recomputes)
    y = np.full(40, np.nan, dtype=np.float32)
    _, _, lo, hi, _, non_finite = fused.stats_f32(torch.from_numpy(y).data_ptr(), y.size)
    assert non_finite == 40 and lo == np.inf and hi == -np.inf


@needs_native
def test_reads_from_the_view_start_not_the_storage_start():
    base = torch.arange(10_000, dtype=torch.float32)
    view = base[5000:]
    s1, _, lo, hi, zeros, _ = fused.stats_f32(view.data_ptr(), view.numel())
    assert (lo, hi, zeros) == (5000.0, 9999.0, 0)
    assert s1 == float(np.arange(5000, 10_000, dtype=np.float64).sum())


@needs_native
def test_summarize_uses_the_native_pass_only_for_contiguous_float32(monkeypatch):
    calls = []

    class Counting:  # hooks._fused, counting the full passes
        hist_f32 = staticmethod(fused.hist_f32)

        @staticmethod
        def stats_f32(*a):
            calls.append(a)
            return fused.stats_f32(*a)

    monkeypatch.setattr(summarize_module, "_fused", Counting)
    x = torch.randn(300, 100)
    summarize_module.summarize(x)
    assert len(calls) == 1
    summarize_module.summarize(x.t())  # non-contiguous: reshape copies, then contiguous
    summarize_module.summarize(x.double())
    summarize_module.summarize(x.reshape(-1)[::2])  # 1-D strided view: reshape keeps the stride
    summarize_module.summarize(x[:10])  # small: numpy
    assert len(calls) == 2


@needs_native
@pytest.mark.parametrize("clip", [False, True])
def test_histogram_matches_numpy_binning(clip):
    rng = np.random.default_rng(3)
    x = rng.normal(size=8192).astype(np.float32)
    x[:5] = x.min()  # ties at both ends: the maximum belongs to the last bin
    x[5:9] = x.max()
    lo, hi = (-1.0, 1.5) if clip else (float(x.min()), float(x.max()))
    out = np.full(64, 7.0)  # zeroed by the call
    fused.hist_f32(x.ctypes.data, x.size, lo, hi, 64, out.ctypes.data, clip)
    kept = x[(x >= lo) & (x <= hi)] if clip else x
    expected, _ = np.histogram(kept.astype(np.float64), bins=64, range=(lo, hi))
    np.testing.assert_array_equal(out, expected)


@needs_native
def test_histogram_rejects_an_empty_span():
    out = np.zeros(4)
    with pytest.raises(ValueError, match="hi > lo"):
        fused.hist_f32(out.ctypes.data, 0, 1.0, 1.0, 4, out.ctypes.data, False)


@needs_native
@pytest.mark.parametrize("n", [0, 5, 16, 2047, 2049, 300_001])
def test_sum_of_squares_matches_numpy(n):
    x = np.random.default_rng(n).normal(0.0, 3.0, n).astype(np.float32)
    expected = float(np.dot(x.astype(np.float64), x.astype(np.float64)))
    assert fused.sumsq_f32(torch.from_numpy(x).data_ptr(), n) == pytest.approx(expected, rel=1e-6, abs=0)


@needs_native
def test_gradient_norm_uses_the_native_sum_only_for_dense_cpu_float32():
    from hooks.tensors import squared_norm

    g = torch.randn(1000)
    assert isinstance(squared_norm(g), float)
    assert squared_norm(g) == pytest.approx(float(g.double().square().sum()), rel=1e-6)
    for other in (g.double(), g[::2], g.to(torch.bfloat16)):
        value = squared_norm(other)
        assert isinstance(value, torch.Tensor)
        assert float(value) == pytest.approx(float(other.double().square().sum()), rel=1e-2)


@needs_native
def test_tensors_without_memory_behind_them_are_not_read_natively():
    """A ZeroTensor (autograd's gradient of `p * 0`) or storage freed as FSDP does: the
    native pass would read address 0 (a crash); torch's passes answer instead."""
    from hooks.tensors import squared_norm

    zero = torch._efficientzerotensor(10_000)
    assert summarize_module._native_address(zero) == 0
    assert float(squared_norm(zero)) == 0.0
    _, vec = summarize_module.summarize(zero)
    assert float(vec[summarize_module._F["zero_frac"]]) == 1.0
    freed = torch.randn(10_000)
    freed.untyped_storage().resize_(0)
    assert summarize_module._native_address(freed) == 0


def test_a_nan_histogram_span_leaves_every_value_out():
    """Same answer with and without the native pass: nothing lies in a NaN span."""
    n, vec = summarize_module.summarize(torch.randn(100), hist_range=(torch.tensor(float("nan")), torch.tensor(1.0)))
    assert float(vec[summarize_module.NF:].sum()) == 0
