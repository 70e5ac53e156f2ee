"""hooks.summarize against numpy (float64) as the independent reference.

The summary vector is `VECTOR_FIELDS` followed by the histogram counts; fields are
always looked up by name.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diagnostics import schema
from hooks import summarize as summarize_module
from hooks.summarize import SAMPLE, VECTOR_FIELDS, class_summary, fixed_sample, summarize

NF = len(VECTOR_FIELDS)
Q_COLS = list(schema.QUANTILE_COLUMNS)
Q_LEVELS = np.array(schema.QUANTILES)
BINS = schema.HIST_BINS


# -- helpers -------------------------------------------------------------------------

@pytest.fixture(autouse=True, params=["cpu", "cpu-torch", "device"])
def implementation(request, monkeypatch):
    """Every test runs against every implementation: the CPU one with its native pass
    (hooks/_fused.c, where the install built it), the CPU one with torch's passes
    instead (an install without a C compiler), and the one other devices use (torch
    ops only), forced onto CPU tensors here."""
    if request.param == "cpu-torch":
        monkeypatch.setattr(summarize_module, "_fused", None)
    if request.param == "device":
        monkeypatch.setattr(summarize_module, "_summarize_cpu",
                            lambda flat, span, bins, sampled=False:
                            summarize_module._summarize_torch(flat, span, bins).double().numpy())
    return request.param


def run(t: torch.Tensor, **kw) -> tuple[int, np.ndarray]:
    n, vec = summarize(t, **kw)
    assert vec.dtype == torch.float32
    assert vec.device == t.device
    return n, vec.double().cpu().numpy()


def f(vec: np.ndarray, name: str) -> float:
    return float(vec[VECTOR_FIELDS.index(name)])


def quantiles(vec: np.ndarray) -> np.ndarray:
    return np.array([f(vec, c) for c in Q_COLS])


def hist(vec: np.ndarray) -> np.ndarray:
    return vec[NF:]


def assert_moments(vec: np.ndarray, a: np.ndarray, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    """mean, std (ddof=0), min, max of `a` (float64, finite values only)."""
    np.testing.assert_allclose(f(vec, "mean"), a.mean(), rtol=rtol, atol=atol)
    np.testing.assert_allclose(f(vec, "std"), a.std(ddof=0), rtol=rtol, atol=atol)
    np.testing.assert_allclose(f(vec, "min"), a.min(), rtol=1e-7, atol=0)
    np.testing.assert_allclose(f(vec, "max"), a.max(), rtol=1e-7, atol=0)


def sample_size(n: int, limit: int) -> int:
    """How many elements the module's fixed subsample of an n-element tensor holds."""
    size = fixed_sample(torch.empty(n), limit).numel()
    assert size == min(n, limit) or (n > limit and 0.8 * limit <= size <= limit)
    return size


def sampling_tv(full: np.ndarray, m: int) -> float:
    """Expected total-variation distance between a histogram of m random draws and the
    full histogram `full` (per bin E|p̂ - p| ≈ sqrt(2p(1-p)/(πm)))."""
    p = full / full.sum()
    return 0.5 * float(np.sum(np.sqrt(2 * p * (1 - p) / (np.pi * m))))


def normal(n: int, seed: int = 0, loc: float = 0.0, scale: float = 1.0, dtype=np.float32) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(n) * scale + loc).astype(dtype)


# -- layout -----------------------------------------------------------------------------

def test_vector_layout_is_summary_fields_without_count():
    assert VECTOR_FIELDS == schema.SUMMARY_FIELDS[1:]
    n, vec = run(torch.randn(100, generator=torch.Generator().manual_seed(0)))
    assert n == 100
    assert vec.shape == (NF + BINS,)
    # fields that only a module hook can fill (unit_fraction) are NaN in a plain summary
    for name in ("dead_frac", "saturated_frac"):
        if name in VECTOR_FIELDS:
            assert math.isnan(f(vec, name)), name


def test_bins_argument_sets_histogram_length():
    x = normal(1000)
    n, vec = run(torch.from_numpy(x), bins=10)
    assert vec.shape == (NF + 10,)
    expected, _ = np.histogram(x.astype(np.float64), bins=10, range=(float(x.min()), float(x.max())))
    np.testing.assert_array_equal(hist(vec), expected)


# -- small tensors: everything exact ------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size", [1, 7, 1000, SAMPLE])
def test_small_tensor_matches_numpy(dtype, size):
    x = normal(size, seed=size, loc=0.3, scale=2.0, dtype=dtype)
    x[::5] = 0.0  # some exact zeros
    a = x.astype(np.float64)
    n, vec = run(torch.from_numpy(x))
    assert n == size
    assert_moments(vec, a)
    assert f(vec, "zero_frac") == pytest.approx(np.mean(a == 0), abs=1e-6)
    assert f(vec, "nan_count") == 0 and f(vec, "inf_count") == 0
    np.testing.assert_allclose(quantiles(vec), np.quantile(a, Q_LEVELS), rtol=1e-5, atol=1e-5)
    lo, hi = float(x.min()), float(x.max())
    if lo == hi:  # size 1: numpy widens the range
        lo, hi = lo - 0.5, hi + 0.5
    assert f(vec, "hist_min") == pytest.approx(lo, rel=1e-7)
    assert f(vec, "hist_max") == pytest.approx(hi, rel=1e-7)
    expected, _ = np.histogram(a, bins=BINS, range=(lo, hi))
    np.testing.assert_array_equal(hist(vec), expected)


@pytest.mark.parametrize("seed", range(3))
def test_histogram_exact_up_to_hist_sample(seed):
    x = normal(SAMPLE, seed=100 + seed)
    a = x.astype(np.float64)
    _, vec = run(torch.from_numpy(x))
    expected, _ = np.histogram(a, bins=BINS, range=(a.min(), a.max()))
    np.testing.assert_array_equal(hist(vec), expected)
    assert hist(vec).sum() == SAMPLE


def test_mean_1000_std_1_keeps_std_precision():
    """The pivot shift: float32 sums of squares would lose all of the variance here."""
    x = normal(200_000, seed=3, loc=1000.0, scale=1.0)
    a = x.astype(np.float64)
    _, vec = run(torch.from_numpy(x))
    assert f(vec, "std") == pytest.approx(a.std(), rel=1e-3)
    assert f(vec, "mean") == pytest.approx(a.mean(), rel=1e-6)


def test_pivot_shift_small_tensor_and_negative_mean():
    x = normal(5000, seed=4, loc=-3e4, scale=0.5)
    a = x.astype(np.float64)
    _, vec = run(torch.from_numpy(x))
    assert f(vec, "std") == pytest.approx(a.std(), rel=1e-3)
    assert f(vec, "mean") == pytest.approx(a.mean(), rel=1e-6)


# -- large tensors: subsampled quantiles and histogram -----------------------------

@pytest.mark.parametrize("size", [SAMPLE + 1, 100_003, 300_000])
def test_large_tensor_quantiles_within_rank_bound(size):
    x = normal(size, seed=size, loc=1.0, scale=3.0)
    a = x.astype(np.float64)
    n, vec = run(torch.from_numpy(x))
    assert n == size
    assert_moments(vec, a)  # exact stats stay exact
    q = quantiles(vec)
    assert np.all(np.diff(q) >= 0)
    below = np.array([np.mean(a < v) for v in q])
    np.testing.assert_allclose(below, Q_LEVELS, atol=0.02)


@pytest.mark.parametrize("size", [SAMPLE + 1, 200_000, 1_000_003])
def test_large_tensor_histogram_is_subsample_over_full_range(size):
    x = normal(size, seed=size)
    a = x.astype(np.float64)
    _, vec = run(torch.from_numpy(x))
    counts = hist(vec)
    assert counts.sum() == sample_size(size, SAMPLE)
    assert np.all(counts >= 0)
    # spans [min, max] of the whole tensor, not of the subsample
    assert f(vec, "hist_min") == a.min() and f(vec, "hist_max") == a.max()
    # and is a faithful picture of the full histogram
    full, _ = np.histogram(a, bins=BINS, range=(a.min(), a.max()))
    tv = 0.5 * np.abs(counts / counts.sum() - full / full.sum()).sum()
    assert tv < 1.5 * sampling_tv(full, counts.sum())  # no worse than a random sample


def _feature_periodic(batch=4096, features=64, seed=16):
    """(batch, features) activations whose features have very different values: column j
    is centred on j, so any subsample that skips columns is visibly biased."""
    noise = np.random.default_rng(seed).uniform(-0.4, 0.4, size=(batch, features))
    return torch.from_numpy((np.arange(features) + noise).astype(np.float32))


@pytest.mark.parametrize("shape", [(4096, 64), (8192, 32), (2048, 128), (1000, 96)])
def test_subsample_does_not_alias_with_feature_period(shape):
    """A plain stride k over a (batch, features) layout sees only features that are
    multiples of gcd(k, features); quantiles and histogram must still be unbiased."""
    x = _feature_periodic(*shape)
    a = x.numpy().astype(np.float64).ravel()
    _, vec = run(x)
    below = np.array([np.mean(a < v) for v in quantiles(vec)])
    np.testing.assert_allclose(below, Q_LEVELS, atol=0.02)
    counts = hist(vec)
    full, _ = np.histogram(a, bins=BINS, range=(a.min(), a.max()))
    tv = 0.5 * np.abs(counts / counts.sum() - full / full.sum()).sum()
    assert tv < 1.5 * sampling_tv(full, counts.sum())  # no worse than a random sample


@pytest.mark.parametrize("size", [59_991, 60_000, 1_000_001])
def test_quantile_subsample_sees_both_parities(size):
    """Regression: quantiles came from every other element of the blocked sample, which
    sees one parity of positions only when the block stride is even (n = 59,991)."""
    x = torch.zeros(size)
    x[1::2] = 1.0  # odd positions 1, even positions 0
    _, vec = run(x)
    q = dict(zip(Q_LEVELS, quantiles(vec)))
    assert q[0.25] == 0.0 and q[0.75] == 1.0
    assert f(vec, "mean") == pytest.approx((size // 2) / size)
    assert hist(vec)[0] == pytest.approx(hist(vec)[-1], rel=0.05)


@pytest.mark.parametrize("size", [5, 3000, 8192])
def test_sampled_input_keeps_exact_moments_and_nearest_rank_quantiles(size, implementation):
    """sampled=True (an update's sample): mean/std/min/max/zeros exact over the input,
    quantiles are values of the input within the rank bound."""
    x = normal(size, seed=21)
    x[::7] = 0.0
    a = x.astype(np.float64)
    n, vec = summarize(torch.from_numpy(x), sampled=True)
    vec = vec.double().numpy()
    assert n == size
    assert_moments(vec, a)
    assert f(vec, "zero_frac") == pytest.approx(np.mean(a == 0))
    q = quantiles(vec)
    if implementation == "cpu":
        assert np.isin(q, x.astype(np.float64)).all()  # nearest rank: values of the input
    for level, v in zip(Q_LEVELS, q):
        assert np.mean(a < v) - 0.02 <= level <= np.mean(a <= v) + 0.02 or size < 50
    expected, _ = np.histogram(a, bins=BINS, range=(a.min(), a.max()))
    np.testing.assert_array_equal(hist(vec), expected)  # the histogram stays exact


@pytest.mark.parametrize("shape", [(32, 64, 56, 56), (64, 64, 56, 56), (128, 256, 14, 14), (16, 96, 3, 3)])
@pytest.mark.parametrize("limit", [SAMPLE, 4096])  # the summaries' sample and the updates'
def test_sample_covers_every_channel_of_nchw_tensors(shape, limit):
    """Regression: blocks a fixed stride apart stepped the channel index by a near-constant
    amount: 24 of 64 channels of a (64, 64, 56, 56) activation were ever sampled."""
    n = int(np.prod(shape))
    positions = fixed_sample(torch.arange(n, dtype=torch.float64), limit).numpy().astype(np.int64)
    assert len(np.unique(positions)) == len(positions) == min(n, limit)
    channels = positions // (shape[2] * shape[3]) % shape[1]
    counts = np.bincount(channels, minlength=shape[1])
    assert counts.min() > 0
    assert counts.max() <= 2.5 * counts.mean()  # evenly, not merely somewhere


def test_channel_scaled_activation_quantiles():
    """ReLU outputs whose channels have very different scales: quantiles within the bound."""
    rng = np.random.default_rng(24)
    scales = np.exp(rng.normal(0, 1, size=256)).astype(np.float32)
    x = np.maximum(rng.standard_normal((64, 256, 14, 14)).astype(np.float32), 0) * scales[None, :, None, None]
    a = x.ravel().astype(np.float64)
    _, vec = run(torch.from_numpy(x))
    for q, v in zip(Q_LEVELS, quantiles(vec)):
        assert np.mean(a < v) - 0.02 <= q <= np.mean(a <= v) + 0.02, (q, v)


def test_subsample_is_the_same_at_every_call():
    x = torch.from_numpy(normal(300_001, seed=17))
    _, v1 = run(x)
    _, v2 = run(x.clone())
    np.testing.assert_array_equal(v1, v2)


# -- NaN / Inf ------------------------------------------------------------------------

def _with_non_finite(n=5000, seed=5):
    """NaN at 3, 17, 400, 4001; +Inf at 8, 900; -Inf at 11, 2222, 4444; zeros every 10th."""
    x = normal(n, seed=seed, loc=2.0)
    x[::10] = 0.0
    x[[3, 17, 400, 4001]] = np.nan
    x[[8, 900]] = np.inf
    x[[11, 2222, 4444]] = -np.inf
    return x


@pytest.mark.parametrize("size", [5000, 60_000])  # below and above SAMPLE
def test_nan_inf_counts_exact_and_stats_over_finite_values(size):
    x = _with_non_finite(size)
    a = x.astype(np.float64)
    fin = a[np.isfinite(a)]
    n, vec = run(torch.from_numpy(x))
    assert n == x.size
    assert f(vec, "nan_count") == 4
    assert f(vec, "inf_count") == 5
    assert_moments(vec, fin)
    assert f(vec, "hist_min") == fin.min() and f(vec, "hist_max") == fin.max()
    if size <= SAMPLE:
        np.testing.assert_allclose(quantiles(vec), np.quantile(fin, Q_LEVELS), rtol=1e-5, atol=1e-5)
        expected, _ = np.histogram(fin, bins=BINS, range=(fin.min(), fin.max()))
        np.testing.assert_array_equal(hist(vec), expected)
    else:  # every 10th value is 0: a point mass, so a quantile's rank is an interval
        for q, v in zip(Q_LEVELS, quantiles(vec)):
            assert np.mean(fin < v) - 0.02 <= q <= np.mean(fin <= v) + 0.02


@pytest.mark.parametrize("size", [5000, 60_000])
def test_zero_frac_is_share_of_zeros_among_all_elements(size):
    """Documented: with NaN/Inf present zero_frac counts over all elements, like count."""
    x = _with_non_finite(size)
    _, vec = run(torch.from_numpy(x))
    assert f(vec, "zero_frac") == pytest.approx(np.mean(x == 0), abs=1e-6)
    _, vec = run(torch.tensor([0.0, 0.0, 1.0, float("nan"), float("inf")]))
    assert f(vec, "zero_frac") == pytest.approx(0.4)


@pytest.mark.parametrize("size", [1000, 100_000])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_negative_zero_counts_as_zero(size, dtype):
    """-0.0 is a zero (its bits are not all zero: the sign bit is set)."""
    x = normal(size, seed=22, dtype=dtype)
    x[::4] = 0.0
    x[1::8] = -0.0
    assert np.signbit(x[1]) and x[1] == 0
    _, vec = run(torch.from_numpy(x))
    assert f(vec, "zero_frac") == pytest.approx(np.mean(x == 0))
    y = np.abs(normal(size, seed=23, dtype=dtype)) + 1  # all positive: zeros ruled out by the range
    y[5] = -0.0
    _, vec = run(torch.from_numpy(y))
    assert f(vec, "zero_frac") == pytest.approx(1 / size)


@pytest.mark.parametrize("shape", [(3, 5), (300, 50)])
def test_all_nan_tensor(shape):
    x = torch.full(shape, float("nan"))
    n, vec = run(x)
    assert n == x.numel()
    assert f(vec, "nan_count") == x.numel() and f(vec, "inf_count") == 0
    for name in ("mean", "std", "min", "max", *Q_COLS, "hist_min", "hist_max"):
        assert math.isnan(f(vec, name)), name
    assert f(vec, "zero_frac") == 0.0
    np.testing.assert_array_equal(hist(vec), np.zeros(BINS))


def test_only_non_finite_values():
    n, vec = run(torch.tensor([float("inf"), float("-inf"), float("nan"), float("inf")]))
    assert n == 4
    assert f(vec, "nan_count") == 1 and f(vec, "inf_count") == 3
    assert math.isnan(f(vec, "mean")) and math.isnan(f(vec, "max"))
    np.testing.assert_array_equal(hist(vec), np.zeros(BINS))


@pytest.mark.parametrize("shape", [(0,), (3, 0, 2)])
def test_zero_size_tensor(shape):
    n, vec = run(torch.empty(shape))
    assert n == 0
    assert vec.shape == (NF + BINS,)
    assert f(vec, "nan_count") == 0 and f(vec, "inf_count") == 0 and f(vec, "zero_frac") == 0
    assert math.isnan(f(vec, "mean")) and math.isnan(f(vec, "std"))
    np.testing.assert_array_equal(hist(vec), np.zeros(BINS))


# -- special inputs -------------------------------------------------------------------

@pytest.mark.parametrize("value", [3.25, -7.0, 0.0])
def test_constant_tensor_widens_histogram_like_numpy(value):
    x = np.full(999, value, dtype=np.float32)
    a = x.astype(np.float64)
    _, vec = run(torch.from_numpy(x))
    assert f(vec, "mean") == value and f(vec, "std") == 0.0
    assert f(vec, "min") == value and f(vec, "max") == value
    np.testing.assert_array_equal(quantiles(vec), np.full(len(Q_COLS), value))
    assert f(vec, "zero_frac") == (1.0 if value == 0 else 0.0)
    assert f(vec, "hist_min") == value - 0.5 and f(vec, "hist_max") == value + 0.5
    expected, edges = np.histogram(a, bins=BINS)  # numpy's own empty-range widening
    assert (edges[0], edges[-1]) == (value - 0.5, value + 0.5)
    np.testing.assert_array_equal(hist(vec), expected)


@pytest.mark.parametrize("value, dtype", [
    *[(v, d) for v in (1e7, -3e7, 2.0**24 + 2, 1e20) for d in (torch.float32, torch.float64)],
    (-3e38, torch.float64),
])
def test_constant_tensor_with_large_magnitude(value, dtype):
    """Regression: float32 cannot tell v +- 0.5 from v for |v| >= 2**23; the histogram
    span was empty, the bin index NaN and torch.bincount raised inside a training hook."""
    x = torch.full((10,), value, dtype=dtype)
    v32 = float(np.float32(value))
    _, vec = run(x)
    assert f(vec, "min") == v32 and f(vec, "max") == v32 and f(vec, "std") == 0.0
    assert f(vec, "mean") == pytest.approx(v32, rel=1e-7)
    assert f(vec, "hist_min") < v32 < f(vec, "hist_max")
    assert np.isfinite(f(vec, "hist_min")) and np.isfinite(f(vec, "hist_max"))
    counts = hist(vec)
    assert counts.sum() == 10 and np.count_nonzero(counts) == 1


@pytest.mark.parametrize("size", [2000, 20_000])  # the large one's float32 sum overflows
def test_large_finite_float32_values_keep_finite_mean(size):
    x = normal(size, seed=18, loc=1e37, scale=1e34)
    a = x.astype(np.float64)
    _, vec = run(torch.from_numpy(x))
    assert f(vec, "nan_count") == 0 and f(vec, "inf_count") == 0
    assert f(vec, "mean") == pytest.approx(a.mean(), rel=1e-6)
    assert f(vec, "std") == pytest.approx(a.std(), rel=1e-3)


def test_std_of_wide_float32_tensor_does_not_overflow():
    x = normal(1_000_000, seed=19, scale=1e17)
    a = x.astype(np.float64)
    _, vec = run(torch.from_numpy(x))
    assert f(vec, "std") == pytest.approx(a.std(), rel=1e-3)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.int16, torch.uint8])
def test_integer_tensor(dtype):
    g = torch.Generator().manual_seed(1)
    lo = 0 if dtype == torch.uint8 else -50
    x = torch.randint(lo, 50, (3001,), generator=g).to(dtype)
    a = x.numpy().astype(np.float64)
    n, vec = run(x)
    assert n == 3001
    assert_moments(vec, a)
    assert f(vec, "zero_frac") == pytest.approx(np.mean(a == 0), abs=1e-6)
    np.testing.assert_allclose(quantiles(vec), np.quantile(a, Q_LEVELS), rtol=1e-6, atol=1e-5)
    expected, _ = np.histogram(a, bins=BINS, range=(a.min(), a.max()))
    np.testing.assert_array_equal(hist(vec), expected)


def test_bool_tensor():
    g = torch.Generator().manual_seed(2)
    x = torch.rand(2000, generator=g) < 0.3
    a = x.numpy().astype(np.float64)
    n, vec = run(x)
    assert n == 2000
    assert f(vec, "mean") == pytest.approx(a.mean(), abs=1e-6)
    assert f(vec, "std") == pytest.approx(a.std(), abs=1e-6)
    assert (f(vec, "min"), f(vec, "max")) == (0.0, 1.0)
    assert f(vec, "zero_frac") == pytest.approx(1 - a.mean(), abs=1e-6)
    np.testing.assert_allclose(quantiles(vec), np.quantile(a, Q_LEVELS), atol=1e-6)
    expected, _ = np.histogram(a, bins=BINS, range=(0.0, 1.0))
    np.testing.assert_array_equal(hist(vec), expected)
    assert hist(vec)[0] == (~x).sum() and hist(vec)[-1] == x.sum()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("size", [1000, 100_000])
def test_half_precision_equals_float32_copy(dtype, size):
    x = torch.from_numpy(normal(size, seed=7, loc=0.5, scale=4.0)).to(dtype)
    x[::13] = 0
    x[5] = float("nan")
    x[6] = float("inf")
    n16, v16 = summarize(x)
    n32, v32 = summarize(x.float())
    assert n16 == n32 == size
    assert torch.equal(v16.nan_to_num(-12345.0), v32.nan_to_num(-12345.0))
    vec = v16.double().numpy()
    a = x.float().numpy().astype(np.float64)
    fin = a[np.isfinite(a)]
    assert f(vec, "nan_count") == 1 and f(vec, "inf_count") == 1
    assert_moments(vec, fin)


def test_non_contiguous_transposed_view():
    base = torch.from_numpy(normal(50 * 80, seed=8).reshape(50, 80))
    t = base.t()
    assert not t.is_contiguous()
    a = t.numpy().astype(np.float64).ravel()
    n, vec = run(t)
    assert n == 4000
    assert_moments(vec, a)
    np.testing.assert_allclose(quantiles(vec), np.quantile(a, Q_LEVELS), rtol=1e-5, atol=1e-5)
    expected, _ = np.histogram(a, bins=BINS, range=(a.min(), a.max()))
    np.testing.assert_array_equal(hist(vec), expected)
    _, vec_c = run(t.contiguous())
    np.testing.assert_array_equal(vec, vec_c)


def test_non_contiguous_large_view_subsamples_logical_order():
    base = torch.from_numpy(normal(300 * 700, seed=9).reshape(300, 700))
    t = base[:, ::2].t()  # strided and transposed: 350 x 300
    a = t.numpy().astype(np.float64).ravel()
    _, vec = run(t)
    assert_moments(vec, a)
    assert hist(vec).sum() == sample_size(a.size, SAMPLE)
    _, vec_c = run(t.contiguous())
    np.testing.assert_array_equal(vec, vec_c)


def test_hist_range_matches_numpy_range():
    x = normal(6000, seed=10)
    a = x.astype(np.float64)
    lo, hi = -1.3, 1.7
    span = (torch.tensor(lo), torch.tensor(hi))
    _, vec = run(torch.from_numpy(x), hist_range=span)
    assert f(vec, "hist_min") == pytest.approx(lo) and f(vec, "hist_max") == pytest.approx(hi)
    expected, _ = np.histogram(a, bins=BINS, range=(np.float32(lo), np.float32(hi)))
    np.testing.assert_array_equal(hist(vec), expected)
    assert hist(vec).sum() < 6000  # values outside the span are left out
    # the other statistics do not depend on the span
    assert_moments(vec, a)


def test_hist_range_wider_than_data_and_float64_bounds():
    x = normal(3000, seed=11)
    a = x.astype(np.float64)
    span = (torch.tensor(-10.0, dtype=torch.float64), torch.tensor(10.0, dtype=torch.float64))
    _, vec = run(torch.from_numpy(x), hist_range=span)
    assert (f(vec, "hist_min"), f(vec, "hist_max")) == (-10.0, 10.0)
    expected, _ = np.histogram(a, bins=BINS, range=(-10.0, 10.0))
    np.testing.assert_array_equal(hist(vec), expected)
    assert hist(vec).sum() == 3000


# -- class_summary ----------------------------------------------------------------------

@pytest.mark.parametrize("num_classes", [2, 7, 100])
def test_class_summary_histogram_is_bincount(num_classes):
    g = torch.Generator().manual_seed(num_classes)
    idx = torch.randint(0, num_classes, (40, 25), generator=g)
    a = idx.numpy().ravel()
    n, vec = class_summary(idx, num_classes)
    vec = vec.double().numpy()
    assert n == 1000
    assert vec.shape == (NF + num_classes,)
    np.testing.assert_array_equal(hist(vec), np.bincount(a, minlength=num_classes))
    assert f(vec, "hist_min") == -0.5 and f(vec, "hist_max") == num_classes - 0.5
    af = a.astype(np.float64)
    assert_moments(vec, af)
    np.testing.assert_allclose(quantiles(vec), np.quantile(af, Q_LEVELS), atol=1e-5)


def test_class_summary_missing_classes_and_int32_input():
    idx = torch.tensor([2, 2, 0, 2], dtype=torch.int32)
    n, vec = class_summary(idx, 5)
    vec = vec.double().numpy()
    assert n == 4
    np.testing.assert_array_equal(hist(vec), [1, 0, 3, 0, 0])


def test_class_summary_empty():
    n, vec = class_summary(torch.empty(0, dtype=torch.long), 3)
    vec = vec.double().numpy()
    assert n == 0
    np.testing.assert_array_equal(hist(vec), [0, 0, 0])
    assert f(vec, "hist_min") == -0.5 and f(vec, "hist_max") == 2.5


def test_class_summary_out_of_range_indices_not_counted_as_classes():
    """Regression: indices were clamped into 0..C-1, so ignore_index=-100 counted as class 0."""
    idx = torch.tensor([-100, 0, 1, 2, 5, -100, 2])
    n, vec = class_summary(idx, 3)
    assert n == 7
    np.testing.assert_array_equal(hist(vec.double().numpy()), [1, 1, 2])


# -- side effects -------------------------------------------------------------------------

def test_does_not_touch_global_rng():
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    x = torch.from_numpy(normal(300_000, seed=12))
    summarize(x)
    summarize(x[:1000])
    summarize(torch.from_numpy(_with_non_finite()))
    summarize(x, hist_range=(torch.tensor(-1.0), torch.tensor(1.0)))
    class_summary(torch.arange(50) % 4, 4)
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("make", [
    lambda: torch.from_numpy(_with_non_finite()),
    lambda: torch.from_numpy(normal(200_000, seed=13)),
    lambda: torch.from_numpy(normal(1000, seed=14)).half(),
    lambda: torch.from_numpy(normal(40 * 30, seed=15).reshape(40, 30)).t(),
    lambda: torch.randint(-5, 5, (500,), generator=torch.Generator().manual_seed(0)),
])
def test_does_not_modify_input(make):
    t = make()
    before, stride = t.clone(), t.stride()
    summarize(t)
    summarize(t, hist_range=(torch.tensor(-0.5), torch.tensor(0.5)))
    if not t.is_floating_point():
        class_summary(t, 3)
    assert t.dtype == before.dtype and t.shape == before.shape and t.stride() == stride
    bits = {torch.float32: torch.int32, torch.float16: torch.int16}.get(t.dtype)
    if bits is None:
        assert torch.equal(t, before)
    else:
        assert torch.equal(t.contiguous().view(bits), before.contiguous().view(bits))


def test_span_near_float32_max_does_not_break_the_histogram():
    x = torch.tensor([-3e38, 0.0, 3e38, 1.0], dtype=torch.float32)
    n, vec = summarize(x)
    counts = vec[len(VECTOR_FIELDS):].double().numpy()
    assert n == 4 and counts.sum() == 4 and counts[0] == 1 and counts[-1] == 1


@pytest.mark.parametrize("size", [100, 50_000])
def test_float64_spread_below_float32_resolution_does_not_crash(size):
    """Regression: the float32-rounded span began above the float64 minimum, giving a
    negative bin index and a bincount error inside a training hook."""
    g = torch.Generator().manual_seed(25)
    x = 1 + torch.rand(size, generator=g, dtype=torch.float64) * 1.3e-7 + 0.7e-7
    n, vec = run(x)
    a = x.numpy()
    assert f(vec, "mean") == pytest.approx(a.mean(), rel=1e-7)  # the vector is float32
    assert hist(vec).sum() == min(size, SAMPLE)
    huge = torch.tensor([-1e300, 0.0, 1e300, 5.0] * 3000, dtype=torch.float64)
    n, vec = run(huge)
    assert f(vec, "min") == -np.inf or f(vec, "min") < -3e38  # float32 vector: beyond its range
    counts = hist(vec)
    assert counts.sum() == min(huge.numel(), SAMPLE)
    # the span stops at float32's largest value: what lies beyond belongs to the end bins
    # (a bin index past 2**63 once wrapped around into the first bin)
    assert counts[-1] == pytest.approx(counts.sum() / 4, rel=0.1)
    assert counts[0] == pytest.approx(counts.sum() / 4, rel=0.1)


def test_float64_values_beyond_float32_range_land_in_the_end_bins(implementation):
    x = torch.tensor([0.0, 1.0, 1e300], dtype=torch.float64)
    counts = hist(run(x)[1])
    assert counts[0] == 2 and counts[-1] == 1 and counts.sum() == 3


def test_float64_std_past_1e154_does_not_overflow(implementation):
    """The sum of squares of float64 values past ~1e154 overflows; the std itself need not
    (the summary vector is float32, so it reads inf there, not NaN)."""
    x = torch.tensor([0.0, 1.0, 1e300, -2e299], dtype=torch.float64)
    _, vec = summarize(x)
    assert f(vec.double().numpy(), "std") == np.inf  # beyond float32, not NaN
    if implementation == "device":  # its vector is float32 on the device: inf is all it can say
        return
    raw = summarize_module._summarize_cpu(x.reshape(-1), None, BINS)  # float64, before the float32 vector
    a = x.numpy()
    assert raw[0] == pytest.approx(np.mean(a / 1e300) * 1e300, rel=1e-12)  # mean
    assert raw[1] == pytest.approx(np.std(a / 1e300) * 1e300, rel=1e-12)  # std


@pytest.mark.parametrize("size", [3, 20_000])  # the numpy path and the torch passes
def test_float64_near_its_maximum_gives_finite_moments_not_an_error(size, implementation):
    """Past 2**1023 a power-of-two scale of 2.0**1024 raised OverflowError; sums overflow."""
    x = np.zeros(size)
    x[: size // 3 + 1] = 1.5e308
    a = x / 1e308
    _, vec = run(torch.from_numpy(x))
    assert f(vec, "max") == np.inf and f(vec, "std") == np.inf  # beyond float32: inf, not NaN
    if implementation == "device":  # its vector is float32 on the device: inf is all it can say
        return
    raw = summarize_module._summarize_cpu(torch.from_numpy(x), None, BINS)  # float64, before the cast
    assert raw[0] == pytest.approx(a.mean() * 1e308, rel=1e-9)
    assert raw[1] == pytest.approx(a.std() * 1e308, rel=1e-6)
