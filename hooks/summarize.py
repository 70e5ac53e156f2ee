"""Tensor → summary vector, in a few cheap passes over the tensor.

A summary is one float32 vector laid out as `diagnostics.schema.SUMMARY_FIELDS`
(without `count`, which the caller knows for free) followed by the histogram.
Count, mean, std (population, ddof=0), min, max, zero fraction and NaN/Inf counts are
exact. Quantiles and the histogram are exact up to `SAMPLE` (8,192) elements. Above, the
histogram comes from a fixed subsample of about 8,192 elements (never a random draw: the
tool must not touch torch's RNG): a bin holding a share p of the tensor holds
p ± sqrt(p(1-p)/8,192) of the sample (± 0.25% at p = 5%). Quantiles come from 2,048
values of that sample (`QUANTILE_SAMPLE`, nearest rank): a quantile's rank is off by
about 1/sqrt(2,048) ≈ 2.2% at most (one standard error at the median is 1.1%, at the 1%
and 99% quantiles 0.22%). Ranking was the dearest part of a capture: np.partition of
8,192 values took more time than the full passes over the tensor (every=1 on the
ResNet benchmark: 1.9x with 8,192 ranked values, 1.6x with 2,048). The
histogram spans [min, max] of the whole tensor in HIST_BINS equal bins and its counts
sum to the number of elements sampled. A sample is a fixed set of positions (see
`fixed_sample`), so a layer is sampled at the same positions at every step.

With NaN or Inf present, mean, std, min, max, quantiles and histogram describe the
finite values; `zero_frac` is the share of exact zeros among all elements, like `count`.

A capture step's small CPU tensors (up to SAMPLE values: the exact path) are copied as the
hooks see them and summarised together when the step ends (`summarize_batch`: one numpy call
per field over every tensor of a size, the same numbers bit for bit); a deep model of small
layers makes hundreds a step, and one at a time their cost was the calls, not the values.

Two implementations give the same numbers: on the CPU, one native pass (hooks/_fused.c,
built at install where a C compiler is; torch's sum, dot, aminmax and a zero count
otherwise) reads a large float32 tensor once, and numpy does everything else in float64
(a torch op on a 0-d tensor costs 5-15 µs of dispatch; a capture makes hundreds of
summaries, and that dispatch was most of its cost); on other devices everything stays
on the device and the vector comes back with two scalar syncs (`_summarize_torch`; its
quantiles are torch.quantile's linear ones over the whole 8,192-element sample).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from diagnostics import schema

try:  # optional, built by setup.py where a C compiler is: one pass instead of four
    from hooks import _fused
except ImportError:  # pragma: no cover - depends on the install
    _fused = None

SAMPLE = 8_192  # quantiles and histogram are exact up to this many elements
QUANTILE_SAMPLE = 2_048  # above SAMPLE elements, quantiles come from this many of the sample
_PIVOT_SAMPLE = 1_024
_Q_LEVELS = np.asarray(schema.QUANTILES, dtype=np.float64)
_QUANTILES = torch.tensor(schema.QUANTILES, dtype=torch.float32)
# Device vector = SUMMARY_FIELDS minus the leading count, then the histogram.
VECTOR_FIELDS = schema.SUMMARY_FIELDS[1:]
NF = len(VECTOR_FIELDS)
_F = {name: i for i, name in enumerate(VECTOR_FIELDS)}
_DEAD = _F["dead_frac"]
_SATURATED = _F["saturated_frac"]
_QCOLS = slice(_F[schema.QUANTILE_COLUMNS[0]], _F[schema.QUANTILE_COLUMNS[-1]] + 1)


_PLANS: dict[tuple, torch.Tensor] = {}
_BLOCK = 8  # elements per block of the sample: neighbours share a cache line
_PHI = 0.6180339887498949  # golden ratio - 1


def _plan(n: int, limit: int, device: torch.device) -> torch.Tensor:
    """The positions of the fixed sample of an n-element tensor (cached per size)."""
    key = (n, limit, device)
    plan = _PLANS.get(key)
    if plan is None:
        if n >= 4 * limit:  # blocks of 8 neighbours at golden-ratio starts
            blocks = limit // _BLOCK
            starts = (np.arange(blocks) * _PHI % 1.0 * (n - _BLOCK + 1)).astype(np.int64)
            idx = (starts[:, None] + np.arange(_BLOCK)).reshape(-1)
        else:  # single elements: (j·g) mod n with g ≈ 0.618·n coprime with n (a permutation)
            g = int(n * _PHI) | 1
            while math.gcd(g, n) != 1:
                g += 2
            idx = np.arange(limit, dtype=np.int64) * g % n
        plan = torch.from_numpy(idx).to(device)
        if len(_PLANS) > 512:
            _PLANS.clear()
        _PLANS[key] = plan
    return plan


def fixed_sample(flat: torch.Tensor, limit: int) -> torch.Tensor:
    """At most `limit` elements of the 1-D tensor `flat`, the same ones every time for a
    given size (all of them, in order, when `flat` is no larger); a copy above that.

    Above 4·limit elements: limit/8 blocks of 8 neighbours (one cache line each: a sample
    of scattered single elements touches 8 times as many lines, and on tensors just
    written by a layer, or cold weights, that is what a sample costs) starting at
    frac(k·φ)·n. For any layout period P dividing n ((batch, features), (N, C, H, W):
    the channel of a position is its place within one sample's C·H·W), the starts mod P
    are P·frac(k·φ·n/P), a Weyl sequence with an irrational step: spread evenly over
    every feature and every channel, which a fixed stride is not (a stride near n/1024
    steps the channel index by a near-constant amount and skips most channels). Below
    4·limit: single elements (j·g) mod n with g ≈ 0.618·n coprime with n.
    """
    n = flat.numel()
    if n <= limit:
        return flat
    return flat.index_select(0, _plan(n, limit, flat.device))


def _native_address(t: torch.Tensor) -> int:
    """Where the native pass (hooks._fused) can read `t`'s values: the address of a plain,
    contiguous CPU float32 tensor's first value; 0 where it cannot (not built, another
    dtype, layout or device, a tensor subclass, or no memory behind the tensor: a
    ZeroTensor gradient, storage freed as FSDP does, functorch wrappers)."""
    if (_fused is None or t.dtype != torch.float32 or type(t) is not torch.Tensor or not t.is_cpu
            or t.layout != torch.strided or not t.is_contiguous()):
        return 0
    try:
        return 0 if t._is_zerotensor() else t.data_ptr()
    except RuntimeError:  # "Cannot access data pointer of Tensor that doesn't have storage"
        return 0


def native_sumsq(t: torch.Tensor) -> float | None:
    """Sum of squares of `t` from the native pass, or None where it cannot read `t`."""
    address = _native_address(t)
    return _fused.sumsq_f32(address, t.numel()) if address else None


def native_sumsq_many(tensors: list[torch.Tensor]) -> tuple[float, list[torch.Tensor]]:
    """(sum of squares of those of `tensors` the native pass can read, in one call; the
    others, for the caller to read with torch)."""
    if _fused is None or not hasattr(_fused, "sumsq_f32_many"):  # not built, or built before it existed
        return 0.0, list(tensors)
    addresses, counts, rest = [], [], []
    f32, plain, strided = torch.float32, torch.Tensor, torch.strided
    for t in tensors:  # _native_address's checks, inlined: a thousand small gradients a step
        if (t.dtype is f32 and type(t) is plain and t.is_cpu and t.layout is strided and t.is_contiguous()
                and not t._is_zerotensor()):
            addresses.append(t.data_ptr())
            counts.append(t.numel())
        elif not (t.is_cpu and t._is_zerotensor()):  # a ZeroTensor adds nothing
            rest.append(t)
    return (_fused.sumsq_f32_many(addresses, counts) if addresses else 0.0), rest


def _as_float(t: torch.Tensor) -> torch.Tensor:
    x = t.detach()
    if x._is_zerotensor():  # autograd's gradient of `p * 0` has no memory: numpy cannot read it
        x = torch.zeros(x.shape, dtype=x.dtype, device=x.device)
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()  # half, bfloat16, integers and bools are summarised in float32
    return x.reshape(-1)


def _zero_count(flat: torch.Tensor) -> torch.Tensor:
    """Exact count of zeros (+0.0 and -0.0), on the device. count_nonzero on floats
    branches per element (10 ms on 4.7 M half-zero ReLU outputs); on the bits doubled,
    which drops the sign bit, it is one vectorised integer pass (0.9 ms)."""
    if flat.dtype in (torch.float32, torch.float64):
        bits = flat.view(torch.int32 if flat.dtype == torch.float32 else torch.int64)
        return flat.numel() - torch.count_nonzero(bits + bits)
    return flat.numel() - torch.count_nonzero(flat)


_INT32_MIN, _INT64_MIN = np.iinfo(np.int32).min, np.iinfo(np.int64).min


def _zero_count_cpu(flat: torch.Tensor, lo: float, hi: float) -> int:
    """Exact count of zeros of a CPU float tensor whose finite range is [lo, hi], with no
    temporary: +0.0 is the all-zero bit pattern (numpy counts those in one SIMD pass,
    0.09 ms per million), and -0.0 the integer minimum, which one integer min finds
    (torch's: two threads, where numpy's takes one).
    A temporary as large as the tensor costs page faults on every capture."""
    if lo > 0 or hi < 0:
        return 0
    single = flat.dtype == torch.float32
    bits = flat.view(torch.int32 if single else torch.int64)
    zeros = bits.numel() - np.count_nonzero(bits.numpy())
    smallest = _INT32_MIN if single else _INT64_MIN  # the bits of -0.0
    if int(torch.min(bits)) == smallest:
        zeros += np.count_nonzero(bits.numpy() == smallest)
    return int(zeros)


def _empty_vector(bins: int, zero_frac: float = 0.0, nan_count: float = 0.0, inf_count: float = 0.0) -> np.ndarray:
    vec = np.full(NF + bins, np.nan)
    vec[_F["zero_frac"]], vec[_F["nan_count"]], vec[_F["inf_count"]] = zero_frac, nan_count, inf_count
    vec[NF:] = 0.0
    return vec


_F32_MAX = float(np.finfo(np.float32).max)


def _f32(v: float) -> float:
    """v as float32 stores it (beyond float32's range: its largest finite value).
    Python scalars: np.clip on a scalar costs 3 µs, and a capture makes hundreds of spans."""
    return float(np.float32(min(max(v, -_F32_MAX), _F32_MAX)))


def _span(lo: float, hi: float) -> tuple[float, float]:
    """The histogram's span in float32, as stored (the bins are the ones the dashboard
    will draw). An empty range takes numpy's convention, [v - 0.5, v + 0.5], wider where
    float32 cannot tell v ± 0.5 from v (|v| ≥ 2**23)."""
    lo, hi = _f32(lo), _f32(hi)
    if not hi > lo:
        half = max(abs(lo) * 2.0**-20, 0.5)
        lo, hi = _f32(lo - half), _f32(hi + half)
    return lo, hi


_RANKS: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}
_NEAREST: dict[int, np.ndarray] = {}


def _ranks(m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For a sample of m values: the ranks below and above each quantile (numpy's linear
    method), the interpolation weights, and every rank np.partition must place (first
    and last included, which give min and max for free)."""
    plan = _RANKS.get(m)
    if plan is None:
        pos = _Q_LEVELS * (m - 1)
        below = np.floor(pos).astype(np.intp)
        above = np.minimum(below + 1, m - 1)
        plan = (below, above, pos - below, np.union1d(np.concatenate([below, above]), [0, m - 1]))
        if len(_RANKS) > 4096:
            _RANKS.clear()
        _RANKS[m] = plan
    return plan


_SUBSAMPLE: dict[int, np.ndarray] = {}


def _quantile_subsample(sample: np.ndarray) -> np.ndarray:
    """QUANTILE_SAMPLE values of a 1-D sample, at positions (j·g) mod m with g ≈ 0.618·m
    coprime with m: spread evenly over the sample whatever its order (every other value
    would see one parity of positions only). A gather of 2,048 values: microseconds."""
    flat = sample
    m = flat.size
    if m <= QUANTILE_SAMPLE:
        return flat
    idx = _SUBSAMPLE.get(m)
    if idx is None:
        g = int(m * 0.6180339887498949) | 1
        while math.gcd(g, m) != 1:
            g += 2
        if len(_SUBSAMPLE) > 512:
            _SUBSAMPLE.clear()
        idx = _SUBSAMPLE[m] = np.arange(QUANTILE_SAMPLE, dtype=np.intp) * g % m
    return flat[idx]


def _nearest_ranks(m: int) -> np.ndarray:
    """Nearest ranks of the quantiles in m sorted values."""
    ranks = _NEAREST.get(m)
    if ranks is None:
        ranks = _NEAREST[m] = np.rint(_Q_LEVELS * (m - 1)).astype(np.intp)
    return ranks


def _sample_stats(sample: np.ndarray, lo: float, hi: float, bins: int, vec: np.ndarray, clip: bool,
                  exact: bool = True) -> tuple[float, float]:
    """Quantiles (numpy's linear method) and the histogram over [lo, hi] of a finite,
    non-empty 1-D sample, written into `vec`; returns the sample's (min, max).
    np.partition at the ranks the quantiles need costs half a sort; the histogram bins
    the way np.histogram does, in float64 (a span near ±3e38 overflows float32)."""
    if exact:
        below, above, w, kth = _ranks(sample.size)
        part = np.partition(sample, kth)
        a, b = part[below].astype(np.float64), part[above].astype(np.float64)
        vec[_QCOLS] = a + (b - a) * w
    else:
        ranked = _quantile_subsample(sample)
        nearest = _nearest_ranks(ranked.size)
        # a sort, not np.partition: on these samples (blocks of neighbours, strided)
        # introselect hits its slow case: 43 µs per 2,048 values against 17 µs to sort
        vec[_QCOLS] = np.sort(ranked)[nearest]
    vec[_F["hist_min"]], vec[_F["hist_max"]] = lo, hi
    _histogram_into(sample, lo, hi, bins, vec[NF:], clip)
    return (float(part[0]), float(part[-1])) if exact else (math.nan, math.nan)


def _histogram_into(sample: np.ndarray, lo: float, hi: float, bins: int, out: np.ndarray, clip: bool) -> None:
    """The counts of `sample` in `bins` equal bins over [lo, hi], written into `out` (a
    contiguous float64 vector of `bins`), binned as np.histogram bins, in float64 (a span
    near ±3e38 overflows float32); `clip`: values outside the span are left out."""
    if bins and _fused is not None and sample.dtype == np.float32 and sample.flags.c_contiguous and hi > lo:
        # the same binning in one native loop (numpy's five passes: 28 µs per 8,192 values)
        _fused.hist_f32(sample.ctypes.data, sample.size, lo, hi, bins, out.ctypes.data, clip)
    elif bins:
        x = sample
        if clip:  # values outside a given span are left out; [min, max] holds every finite value
            x = x[(x >= lo) & (x <= hi)]
        t = np.subtract(x, lo, dtype=np.float64)
        t *= bins / (hi - lo)
        # clip (before the cast: float64 values beyond the span by 2**63 bins would wrap):
        # the maximum belongs to the last bin, and float64 values below the span rounded
        # to float32 to the first; the cast truncates, which is floor for t >= 0
        np.minimum(t, bins - 1, out=t)
        np.maximum(t, 0, out=t)
        out[:] = np.bincount(t.astype(np.intp), minlength=bins)


def _first_pass_large(flat: torch.Tensor, n: int) -> tuple:
    """(sum, sum of squares, min, max, zero count) of a large CPU tensor: from one native
    pass where it can read the tensor, else the sum alone (None for the rest; zeros are
    counted after min/max, which often rule them out). A NaN sum: non-finite values."""
    if address := _native_address(flat):
        # one native pass: sums, extremes, zeros (hooks/_fused.c)
        s1, s2, lo, hi, zero_count, non_finite = _fused.stats_f32(address, n)
        if non_finite:  # the sums include them: recomputed over the finite values below
            s1 = math.nan
        return s1, s2, lo, hi, zero_count
    return float(flat.sum()), None, None, None, None


def _small_moments_cpu(finite: torch.Tensor, sampled: bool) -> tuple:
    """(mean, std, min or None, max or None, sample) of a tensor of at most SAMPLE finite values."""
    m = finite.numel()
    sample = finite.numpy()
    a = sample.astype(np.float64)
    scale = 1.0  # float64 values past ~1e154 overflow the squares: divide by a power of two
    if sample.dtype == np.float64 and (big := float(np.abs(a).max())) > 1e150:
        scale = math.ldexp(1.0, math.frexp(big)[1] - 1)  # values / scale within ±2 (2.0**1024 raises)
        a /= scale
    mean = float(a.sum()) / m
    a -= mean
    std = math.sqrt(float(np.dot(a, a)) / m) * scale
    mean *= scale
    lo = hi = None  # from the partition in _sample_stats, or:
    if sampled:
        lo, hi = float(sample.min()), float(sample.max())
    return mean, std, lo, hi, sample


def _large_moments_cpu(finite: torch.Tensor, s1: float, s2: float | None) -> tuple[float, float]:
    """(mean, std) of a large tensor of finite values from its raw sums, shifted by a pivot
    where the raw sums lose the variance."""
    m = finite.numel()
    if s2 is None:
        s2 = float(torch.dot(finite, finite))
    mean = s1 / m
    var = s2 / m - mean * mean
    scale = 1.0  # var and std in units of scale (a power of two past ~1e154)
    # Raw float32 sums are exact enough while mean² ≤ 100·var (relative error ≲ 1e-4).
    # Past that they lose the variance (mean 1000, std 1: 13% off), and past |x| ≈ 1e19
    # they overflow: then shift by a pivot, in float64 if need be.
    if not (math.isfinite(s2) and mean * mean <= 100.0 * var):
        pivot = float(fixed_sample(finite, _PIVOT_SAMPLE).double().mean())
        centred = finite - pivot
        c1, c2 = float(centred.sum()), float(torch.dot(centred, centred))
        if not (math.isfinite(c1) and math.isfinite(c2)):
            centred = finite.double() - pivot
            c1, c2 = float(centred.sum()), float(torch.dot(centred, centred))
        if not (math.isfinite(c1) and math.isfinite(c2)):  # float64 past ~1e154: squares overflow
            pivot, centred = 0.0, finite.double()
            scale = math.ldexp(1.0, math.frexp(float(centred.abs().max()))[1] - 1)
            centred = centred / scale  # within ±2
            c1, c2 = float(centred.sum()), float(torch.dot(centred, centred))
        mean = pivot + c1 / m * scale
        var = c2 / m - (c1 / m) * (c1 / m)  # `**` raises OverflowError past 1e154
    return mean, math.sqrt(max(var, 0.0)) * scale


def _summarize_cpu(flat: torch.Tensor, hist_range, bins: int, sampled: bool = False) -> np.ndarray:
    n = flat.numel()
    small = n <= SAMPLE
    vec = np.empty(NF + bins)
    if small:  # everything in numpy, float64, exact
        zero_count = n - np.count_nonzero(flat.numpy())
        with np.errstate(all="ignore"):  # inf + -inf is NaN: counted below, not warned about
            s1 = float(flat.numpy().sum(dtype=np.float64))
        s2 = lo = hi = None
    else:
        s1, s2, lo, hi, zero_count = _first_pass_large(flat, n)
    nan_count = inf_count = 0
    finite = flat
    if not math.isfinite(s1):  # NaN/Inf counted only when the sum says so: rare, so paid rarely
        keep = torch.isfinite(flat)
        nan_count = int(torch.isnan(flat).sum())
        inf_count = n - nan_count - int(keep.sum())
        finite = flat[keep]
        if zero_count is None:
            zero_count = int(_zero_count(flat))
        if finite.numel() == 0:
            return _empty_vector(bins, zero_count / n, nan_count, inf_count)
    if small:
        mean, std, lo, hi, sample = _small_moments_cpu(finite, sampled)
    else:
        if finite is not flat:
            s1, s2, lo = float(finite.sum()), None, None
        mean, std = _large_moments_cpu(finite, s1, s2)
        if lo is None:
            extremes = torch.aminmax(finite)
            lo, hi = float(extremes.min), float(extremes.max)
        if zero_count is None:
            zero_count = _zero_count_cpu(flat, lo, hi)
        sample = fixed_sample(finite, SAMPLE).numpy()
    if hist_range is None:
        if lo is None:  # small: the partition finds them; the span needs them first
            lo, hi = float(sample.min()), float(sample.max())
        h_lo, h_hi = lo, hi
    else:
        h_lo, h_hi = (float(r.detach().to(torch.float32)) for r in hist_range)
    h_lo, h_hi = _span(h_lo, h_hi)
    s_lo, s_hi = _sample_stats(sample, h_lo, h_hi, bins, vec, clip=hist_range is not None, exact=small and not sampled)
    if lo is None:
        lo, hi = s_lo, s_hi
    vec[_F["mean"]], vec[_F["std"]] = mean, std
    vec[_F["min"]], vec[_F["max"]] = lo, hi
    vec[_F["zero_frac"]] = zero_count / n
    vec[_F["nan_count"]], vec[_F["inf_count"]] = nan_count, inf_count
    vec[_DEAD] = vec[_SATURATED] = np.nan
    return vec


def summarize(
    t: torch.Tensor,
    hist_range: tuple[torch.Tensor, torch.Tensor] | None = None,
    bins: int = schema.HIST_BINS,
    sampled: bool = False,
) -> tuple[int, torch.Tensor]:
    """Return (element count, float32 summary vector on `t.device`). Reads `t` only
    (detached: no autograd graph, no need for a no_grad context, which costs 5 µs).

    `hist_range` fixes the histogram's span (two 0-d tensors), e.g. to overlay the
    model's outputs on the labels with the same bins. `sampled=True` says `t` is itself
    a sample (an update's): its quantiles need no more exactness than a large tensor's.
    """
    flat = _as_float(t)
    n = flat.numel()
    if flat.device.type != "cpu":
        return n, _summarize_torch(flat, hist_range, bins)
    vec = _empty_vector(bins) if n == 0 else _summarize_cpu(flat, hist_range, bins, sampled)
    if flat.dtype == torch.float64:  # values beyond float32's range are stored as ±inf, quietly
        with np.errstate(over="ignore"):
            return n, torch.from_numpy(vec.astype(np.float32))
    return n, torch.from_numpy(vec.astype(np.float32))


def small_values(t: torch.Tensor) -> np.ndarray | None:
    """A copy of `t`'s values, flat, for `summarize_batch`: where `t` is a plain CPU float32
    or float64 tensor of 1 to SAMPLE elements (the exact path); None for anything else,
    which `summarize` takes at once. A copy: the weights move at the optimizer's step and
    a ReLU(inplace=True) rewrites its input, before a batch at the step's end reads them."""
    if (type(t) not in (torch.Tensor, nn.Parameter) or not t.is_cpu or t.dtype not in (torch.float32, torch.float64)
            or t.layout != torch.strided or not 0 < t.numel() <= SAMPLE):
        return None
    try:
        x = t.detach()
        return None if x._is_zerotensor() else x.reshape(-1).numpy().copy()
    except (RuntimeError, TypeError):  # no storage behind it (FSDP), a wrapper numpy cannot read
        return None


def summarize_batch(values: list[np.ndarray], bins: int = schema.HIST_BINS,
                    sampled: list[bool] | None = None) -> list[torch.Tensor]:
    """The summary vectors of many small tensors' values (`small_values`), as `summarize`
    gives them one at a time: the same fields, from the same float64 sums, the same
    partition and the same binning, but one numpy call per field over every tensor of a
    size, not one per tensor. A capture of a deep model of small layers makes hundreds of
    summaries a step at ~0.1 ms of Python and numpy each (300 layers: 21x a step's time);
    most of that is the calls, not the values. NaN/Inf, and float64 values past 1e150,
    take `summarize`'s own path. `sampled[i]`: values[i] is itself a sample (`summarize`'s
    `sampled`)."""
    out: list[torch.Tensor | None] = [None] * len(values)
    groups: dict[tuple[int, np.dtype, bool], list[int]] = {}
    for i, v in enumerate(values):
        groups.setdefault((v.size, v.dtype, bool(sampled and sampled[i])), []).append(i)
    for (_, dtype, is_sample), rows in groups.items():
        x = np.stack([values[i] for i in rows]) if len(rows) > 1 else values[rows[0]][None, :]
        a = x.astype(np.float64)
        with np.errstate(all="ignore"):
            s1 = a.sum(axis=1)
            plain = np.isfinite(s1)
            if dtype == np.float64:  # squares past 1e308: `summarize` rescales these
                plain &= np.abs(a).max(axis=1) <= 1e150
        for j in np.flatnonzero(~plain):
            out[rows[j]] = summarize(torch.from_numpy(values[rows[j]]), bins=bins, sampled=is_sample)[1]
        if not plain.all():
            keep = np.flatnonzero(plain)
            rows, x, a, s1 = [rows[j] for j in keep], x[keep], a[keep], s1[keep]
        if rows:
            for i, vec in zip(rows, _summarize_rows(x, a, s1, bins, is_sample)):
                out[i] = torch.from_numpy(vec)
    return out


def _summarize_rows(x: np.ndarray, a: np.ndarray, s1: np.ndarray, bins: int, is_sample: bool) -> np.ndarray:
    """Summary vectors (float32, one a row) of the finite k × n values `x` (`a`: in float64,
    `s1`: its row sums), as `_summarize_cpu` computes one small tensor's."""
    k, n = x.shape
    vec = np.empty((k, NF + bins))
    mean = s1 / n
    a -= mean[:, None]
    # np.dot per row, as _small_moments_cpu: einsum adds in another order (a float32 ulp apart)
    std = np.sqrt(np.array([np.dot(r, r) for r in a]) / n)
    # a sort, not np.partition at the quantiles' ranks: the same order statistics, and on
    # rows of up to 8,192 values numpy's vectorised sort is ~2.7x faster than a partition
    # at 16 ranks (300 rows of 2,048 float32: 5.3 against 14.3 ms)
    if is_sample:  # nearest ranks of a spread subsample, as _sample_stats(exact=False)
        ranked = x if n <= QUANTILE_SAMPLE else x[:, _quantile_subsample(np.arange(n))]
        vec[:, _QCOLS] = np.sort(ranked, axis=1)[:, _nearest_ranks(ranked.shape[1])]
    else:
        below, above, w, _ = _ranks(n)
        part = np.sort(x, axis=1)
        q_lo, q_hi = part[:, below].astype(np.float64), part[:, above].astype(np.float64)
        vec[:, _QCOLS] = q_lo + (q_hi - q_lo) * w
    lo, hi = x.min(axis=1), x.max(axis=1)  # as summarize's: the sort may put -0.0 and 0.0 either way
    vec[:, _F["mean"]], vec[:, _F["std"]] = mean, std
    vec[:, _F["min"]], vec[:, _F["max"]] = lo, hi
    vec[:, _F["zero_frac"]] = (n - np.count_nonzero(x, axis=1)) / n
    vec[:, _F["nan_count"]] = vec[:, _F["inf_count"]] = 0.0
    vec[:, _DEAD] = vec[:, _SATURATED] = np.nan
    for r, (low, high) in enumerate(zip(lo.tolist(), hi.tolist())):
        h_lo, h_hi = _span(low, high)
        vec[r, _F["hist_min"]], vec[r, _F["hist_max"]] = h_lo, h_hi
        _histogram_into(x[r], h_lo, h_hi, bins, vec[r, NF:], clip=False)
    if x.dtype == np.float64:  # values beyond float32's range are stored as ±inf, quietly
        with np.errstate(over="ignore"):
            return vec.astype(np.float32)
    return vec.astype(np.float32)


def _moments_torch(finite: torch.Tensor, s1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of finite values on their device, shifted by a pivot where the raw sums
    lose the variance (see _large_moments_cpu)."""
    m = finite.numel()
    dev = finite.device
    s2 = torch.dot(finite, finite)
    mean = s1 / m
    var = s2 / m - mean * mean
    scale = None  # set when float64 values are divided by a power of two (past ~1e154)
    if not bool(torch.isfinite(s2) & (mean * mean <= 100.0 * var)):
        pivot = fixed_sample(finite, _PIVOT_SAMPLE).double().mean()
        centred = finite - pivot.to(finite.dtype)
        s1, s2 = centred.sum(), torch.dot(centred, centred)
        if not bool(torch.isfinite(s1) & torch.isfinite(s2)):
            centred = finite.double() - pivot
            s1, s2 = centred.sum(), torch.dot(centred, centred)
        if not bool(torch.isfinite(s1) & torch.isfinite(s2)):  # float64 past ~1e154: squares overflow
            pivot, centred = torch.zeros((), dtype=torch.float64, device=dev), finite.double()
            exponent = torch.frexp(centred.abs().amax()).exponent
            scale = torch.ldexp(torch.ones((), dtype=torch.float64, device=dev), exponent - 1)
            centred = centred / scale  # within ±2
            s1, s2 = centred.sum(), torch.dot(centred, centred)
        mean = pivot + s1 / m if scale is None else pivot + s1 / m * scale
        var = s2 / m - (s1 / m) ** 2
    var = torch.clamp(var, min=0.0)
    return mean, var.sqrt() if scale is None else var.sqrt() * scale


def _histogram_torch(sample: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, hist_range, bins: int) -> tuple:
    """(span low, span high, counts) of the sample's histogram, on its device."""
    dev = sample.device
    if hist_range is None:
        h_lo, h_hi = lo.to(torch.float32), hi.to(torch.float32)
    else:
        h_lo, h_hi = (r.detach().to(device=dev, dtype=torch.float32) for r in hist_range)
    h_lo, h_hi = h_lo.clamp(-_F32_MAX, _F32_MAX), h_hi.clamp(-_F32_MAX, _F32_MAX)  # float64 beyond float32
    same = h_hi <= h_lo  # _span, on the device
    half = torch.clamp(h_lo.abs() * 2.0**-20, min=0.5)
    h_lo, h_hi = torch.where(same, h_lo - half, h_lo), torch.where(same, h_hi + half, h_hi)
    hist = torch.zeros(bins, device=dev)
    if bins:
        inside = sample if hist_range is None else sample[(sample >= h_lo) & (sample <= h_hi)]
        lo64, hi64 = h_lo.double(), h_hi.double()
        idx = ((inside.double() - lo64) * (bins / (hi64 - lo64))).floor().clamp_(0, bins - 1).long()
        hist = torch.bincount(idx, minlength=bins)[:bins].to(torch.float32)
    return h_lo, h_hi, hist


def _summarize_torch(flat: torch.Tensor, hist_range, bins: int) -> torch.Tensor:
    """The summary vector computed with torch ops on `flat`'s device (no sync except
    two bool checks; one CUDA sync each costs little next to a capture)."""
    n = flat.numel()
    dev = flat.device
    if n == 0:
        return torch.from_numpy(_empty_vector(bins).astype(np.float32)).to(dev)
    zero_frac = _zero_count(flat).to(torch.float32) / n
    s1 = flat.sum()
    if bool(torch.isfinite(s1)):
        nan_count = inf_count = torch.zeros((), device=dev)
        finite = flat
    else:
        nan_mask = torch.isnan(flat)
        inf_mask = torch.isinf(flat)
        nan_count = nan_mask.sum().to(torch.float32)
        inf_count = inf_mask.sum().to(torch.float32)
        finite = flat[~(nan_mask | inf_mask)]
        if finite.numel() == 0:
            vec = torch.full((NF + bins,), float("nan"), device=dev)
            vec[_F["zero_frac"]] = zero_frac
            vec[_F["nan_count"]] = nan_count
            vec[_F["inf_count"]] = inf_count
            vec[NF:] = 0.0
            return vec
        s1 = finite.sum()
    mean, std = _moments_torch(finite, s1)
    lo, hi = torch.aminmax(finite)
    sample = fixed_sample(finite, SAMPLE).to(torch.float32)
    quantiles = torch.quantile(sample.double(), _QUANTILES.to(dev, torch.float64)).to(torch.float32)
    h_lo, h_hi, hist = _histogram_torch(sample, lo, hi, hist_range, bins)
    head = torch.stack([
        mean.to(torch.float32), std.to(torch.float32), lo.to(torch.float32), hi.to(torch.float32),
        zero_frac, nan_count.to(torch.float32), inf_count.to(torch.float32),
    ])
    not_applicable = torch.full((2,), float("nan"), device=dev)  # dead_frac, saturated_frac
    return torch.cat([head, quantiles, not_applicable, torch.stack([h_lo, h_hi]), hist])


RELU_FAMILY = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
               nn.Mish, nn.Hardswish)
# module type → (low bound, high bound) of its output
SATURATING = {nn.Tanh: (-1.0, 1.0), nn.Hardtanh: (-1.0, 1.0), nn.Sigmoid: (0.0, 1.0), nn.Hardsigmoid: (0.0, 1.0),
              nn.Softsign: (-1.0, 1.0)}


def unit_fraction(out: torch.Tensor, module: nn.Module) -> tuple[int, float | torch.Tensor] | None:
    """(the vector's index of `dead_frac` or `saturated_frac`, its value) for an activation
    of `module`'s type, which a module hook sets in the activation's summary; None for other
    types. The value is a float on the CPU, a 0-d tensor on other devices (no sync). Reads
    `out` detached (no graph, no no_grad context needed)."""
    x = out.detach()
    if x.numel() == 0 or not x.is_floating_point():
        return None
    if isinstance(module, RELU_FAMILY):
        # units: channels (dim 1) of N×C×… outputs, features (last dim) of N×F ones; a
        # unit was active iff its largest value over the batch is positive (one pass, no copy)
        unit_dim = 1 if x.ndim >= 3 else x.ndim - 1
        other = tuple(d for d in range(x.ndim) if d != unit_dim)
        active = (x.amax(dim=other) > 0) if other else (x > 0)
        if x.is_cpu:  # numpy: a torch op on a few hundred values is mostly dispatch
            return _DEAD, 1.0 - np.count_nonzero(active.numpy()) / active.numel()
        return _DEAD, 1.0 - active.float().mean()
    bounds = next((b for t, b in SATURATING.items() if isinstance(module, t)), None)
    if bounds is None:
        return None
    lo, hi = bounds
    if isinstance(module, nn.Hardtanh):
        lo, hi = module.min_val, module.max_val
    margin = 0.01 * (hi - lo)
    share = ((x <= lo + margin) | (x >= hi - margin)).float().mean()
    return _SATURATED, float(share) if x.is_cpu else share


@torch.no_grad()
def class_summary(indices: torch.Tensor, num_classes: int) -> tuple[int, torch.Tensor]:
    """Summary of class indices whose histogram has one bin per class (0..C-1)."""
    idx = indices.detach().reshape(-1).long()
    n, vec = summarize(idx, bins=0)
    # indices outside 0..C-1 (ignore_index=-100, padding) belong to no class
    valid = idx[(idx >= 0) & (idx < num_classes)]
    counts = torch.bincount(valid, minlength=num_classes)[:num_classes]
    vec = vec.clone()
    vec[_F["hist_min"]] = -0.5
    vec[_F["hist_max"]] = num_classes - 0.5
    return n, torch.cat([vec, counts.to(vec.dtype)])
