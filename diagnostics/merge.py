"""Sharded training (FSDP): each rank records the summary of its own shard of a parameter
(weights, gradients, updates) and its shard's gradient norm; merged here into the whole
parameter's, from the per-rank rows (the training side runs no collective for this: one
inside a hook would hang every other rank the day one rank skipped it).

How each field of a whole parameter is obtained from its shards' rows:

- count, nan_count, inf_count: summed; zero_frac: count-weighted. Exact.
- mean, std, min, max: exact up to the float32 they were stored in. Over the finite values
  (n_i of them per shard): M = Σ n_i m_i / N and, by Chan et al.'s parallel formula,
  var = Σ n_i (s_i² + (m_i − M)²) / N (population std, as every summary).
- histogram: each shard's bins are moved onto a common span (the union of the shards'
  spans, in as many equal bins), each bin's count whole into the common bin that holds its
  centre (a value moves by at most one common bin width), weighted by how many elements the
  shard's histogram sample stands for, and summed; the counts sum to the shards' samples'.
- quantiles: approximate, read from the merged histogram (linear within a bin): off by up
  to one bin width (1/64 of the span). A parameter that one rank alone holds keeps that
  rank's quantiles and histogram as recorded.
- gradient norm: sqrt of the sum of the shards' squared norms (exact).

A step is merged once every rank has written its rows for it (a live run's last flush may
hold some ranks' only): merged numbers are whole-parameter numbers or absent, never partial.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from diagnostics import schema

_KEYS = ["step", "layer", "kind"]


def merge_shards(rows: pd.DataFrame, world_size: int) -> pd.DataFrame:
    """Whole-parameter rows from per-rank shard rows (`Run.distributions` columns): one row
    per (step, layer, kind) that all `world_size` ranks recorded, repeated with each rank's
    number in `rank` (as the ranks' identical rows are under DDP), so that a rank's view
    shows the whole parameter.

    Example::

        merged = merge_shards(run.distributions("weight", shards=True), world_size=2)
    """
    if rows.empty:
        return rows
    d = rows.reset_index(drop=True)
    complete = d.groupby(_KEYS, sort=False)["rank"].transform("nunique") >= world_size
    d = d[complete].reset_index(drop=True)
    if d.empty:
        return rows.iloc[:0]
    group = d.groupby(_KEYS, sort=False).ngroup().to_numpy()
    merged = d.drop_duplicates(_KEYS).reset_index(drop=True)  # ngroup numbers groups in this order
    _merge_moments(d, group, merged)
    _merge_histograms(d, group, merged)
    per_rank = merged.drop(columns="rank").merge(d[["step", "kind", "rank"]].drop_duplicates(), on=["step", "kind"])
    return per_rank[list(rows.columns)].sort_values(["layer", "step", "rank"], ignore_index=True)


def _gsum(group: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    return np.bincount(group, weights=values, minlength=n)


def _merge_moments(d: pd.DataFrame, group: np.ndarray, out: pd.DataFrame) -> None:
    """count, mean, std, min, max, zero_frac, NaN/Inf counts and the units' fractions of
    each group, into `out` (one row per group, in group order)."""
    g = len(out)
    count = d["count"].to_numpy(np.float64)
    nan, inf = (d[c].fillna(0).to_numpy(np.float64) for c in ("nan_count", "inf_count"))
    finite = np.clip(count - nan - inf, 0, None)
    has = finite > 0
    mean = np.where(has, d["mean"].to_numpy(np.float64), 0.0)
    std = np.where(has, d["std"].to_numpy(np.float64), 0.0)
    n_all, n_finite = _gsum(group, count, g), _gsum(group, finite, g)
    with np.errstate(invalid="ignore", divide="ignore"):
        big_mean = _gsum(group, finite * mean, g) / n_finite
        var = _gsum(group, finite * (std**2 + (mean - big_mean[group]) ** 2), g) / n_finite
        out["zero_frac"] = _gsum(group, count * d["zero_frac"].fillna(0).to_numpy(np.float64), g) / n_all
        for col in ("dead_frac", "saturated_frac"):
            x = d[col].to_numpy(np.float64)
            known = ~np.isnan(x) & (count > 0)
            out[col] = _gsum(group, np.where(known, count * x, 0), g) / _gsum(group, np.where(known, count, 0), g)
    out["count"] = n_all.astype(np.int64)
    out["nan_count"], out["inf_count"] = _gsum(group, nan, g).astype(np.int64), _gsum(group, inf, g).astype(np.int64)
    out["mean"], out["std"] = big_mean, np.sqrt(np.clip(var, 0, None))
    lo, hi = np.full(g, np.inf), np.full(g, -np.inf)
    np.minimum.at(lo, group[has], d["min"].to_numpy(np.float64)[has])
    np.maximum.at(hi, group[has], d["max"].to_numpy(np.float64)[has])
    out["min"], out["max"] = np.where(n_finite > 0, lo, np.nan), np.where(n_finite > 0, hi, np.nan)


_CHUNK_ROWS = 32_768  # rows re-binned at a time: a whole run's (rows × 64) temporaries would take gigabytes


def _histograms(column: np.ndarray, bins: int) -> np.ndarray:
    """Histogram counts as a float matrix (rows × bins; zeros where missing)."""
    if all(h is not None and len(h) == bins for h in column):
        return np.clip(np.stack(column).astype(np.float64), 0, None) if len(column) else np.zeros((0, bins))
    matrix = np.zeros((len(column), bins))
    for i, h in enumerate(column):
        if h is not None and len(h) == bins:
            matrix[i] = np.clip(np.asarray(h, dtype=np.float64), 0, None)
    return matrix


def _rebinned(column: np.ndarray, group: np.ndarray, finite: np.ndarray, h_lo: np.ndarray, h_hi: np.ndarray,
              lo: np.ndarray, width: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(Σ per group of each row's histogram re-binned onto the group's span, each bin's
    count moved whole by its centre and weighted by the elements the row's sample stands
    for; Σ per group of the rows' sample sizes), in blocks of _CHUNK_ROWS rows."""
    g, bins = len(lo), schema.HIST_BINS
    merged, samples = np.zeros(g * bins), np.zeros(g)
    for start in range(0, len(column), _CHUNK_ROWS):
        rows = slice(start, start + _CHUNK_ROWS)
        hist, grp = _histograms(column[rows], bins), group[rows]
        sample = hist.sum(axis=1)
        centres = h_lo[rows, None] + (np.arange(bins) + 0.5) * ((h_hi[rows] - h_lo[rows]) / bins)[:, None]
        with np.errstate(invalid="ignore", divide="ignore"):
            target = np.clip(np.floor((centres - lo[grp, None]) / width[grp, None]), 0, bins - 1)
            per_sample = np.where(sample > 0, finite[rows] / sample, 0.0)
        target = np.nan_to_num(target).astype(np.int64)  # an empty shard's span is NaN: its counts are 0
        merged += np.bincount((grp[:, None] * bins + target).ravel(), weights=(hist * per_sample[:, None]).ravel(),
                              minlength=g * bins)
        samples += np.bincount(grp, weights=sample, minlength=g)
    return merged.reshape(g, bins), samples


def _merge_histograms(d: pd.DataFrame, group: np.ndarray, out: pd.DataFrame) -> None:
    """The merged histogram (re-binned by bin centres onto the union span) and the
    quantiles read from it, into `out`; a group with one non-empty shard keeps its row's."""
    g, bins = len(out), schema.HIST_BINS
    h_lo, h_hi = d["hist_min"].to_numpy(np.float64), d["hist_max"].to_numpy(np.float64)
    finite = np.clip(d["count"] - d["nan_count"].fillna(0) - d["inf_count"].fillna(0), 0, None).to_numpy(np.float64)
    used = (finite > 0) & np.isfinite(h_lo) & np.isfinite(h_hi)
    finite = np.where(used, finite, 0.0)
    lo, hi = np.full(g, np.inf), np.full(g, -np.inf)
    np.minimum.at(lo, group[used], h_lo[used])
    np.maximum.at(hi, group[used], h_hi[used])
    width = np.where(hi > lo, (hi - lo) / bins, 1.0)
    column = d["hist_counts"].to_numpy()
    merged, samples = _rebinned(column, group, finite, h_lo, h_hi, lo, width)
    with np.errstate(invalid="ignore", divide="ignore"):  # back to the samples' total
        merged *= np.nan_to_num(samples / _gsum(group, finite, g))[:, None]
    quantiles = _hist_quantiles(merged, lo, width, out["min"].to_numpy(), out["max"].to_numpy())
    shards = np.bincount(group[used], minlength=g)
    alone = np.full(g, -1)
    alone[group[used]] = np.flatnonzero(used)  # the row of a group's only non-empty shard
    one = shards == 1
    quantiles[one] = d[list(schema.QUANTILE_COLUMNS)].to_numpy(np.float64)[alone[one]]
    lo[one], hi[one] = h_lo[alone[one]], h_hi[alone[one]]
    merged[one] = _histograms(column[alone[one]], bins)
    counts = [h if k else None for h, k in zip(np.rint(merged).astype(np.int64), shards)]
    for k, col in enumerate(schema.QUANTILE_COLUMNS):
        out[col] = np.where(shards > 0, quantiles[:, k], np.nan)
    out["hist_min"], out["hist_max"] = np.where(shards > 0, lo, np.nan), np.where(shards > 0, hi, np.nan)
    out["hist_counts"] = pd.Series(counts, dtype=object)


def _hist_quantiles(hist: np.ndarray, lo: np.ndarray, width: np.ndarray, vmin: np.ndarray,
                    vmax: np.ndarray) -> np.ndarray:
    """Quantiles (schema.QUANTILES) of each row's histogram, linear within a bin, kept
    inside [min, max]: groups × levels."""
    g, bins = hist.shape
    cum = hist.cumsum(axis=1)
    total = cum[:, -1]
    rows = np.arange(g)
    out = np.full((g, len(schema.QUANTILES)), np.nan)
    for k, q in enumerate(schema.QUANTILES):
        want = q * total
        b = np.clip((cum < want[:, None]).sum(axis=1), 0, bins - 1)
        inside = hist[rows, b]
        before = cum[rows, b] - inside
        with np.errstate(invalid="ignore", divide="ignore"):
            frac = np.where(inside > 0, (want - before) / inside, 0.5)
        out[:, k] = np.clip(lo + (b + frac) * width, vmin, vmax)
    return out


def merge_shard_norms(norms: pd.DataFrame, world_size: int) -> pd.DataFrame:
    """`grad_norm` rows from the ranks' `schema.GRAD_NORM_SHARD` rows (scalars columns):
    per step that all ranks recorded, sqrt(Σ shard norm²), on one row per rank (each with
    its own wall time), as DDP's identical per-rank norms are."""
    if norms.empty:
        return norms.iloc[:0]
    d = norms.copy()
    d["square"] = d["value"].astype(np.float64) ** 2
    by_step = d.groupby("step").agg(ranks=("rank", "nunique"), total=("square", "sum"))
    by_step = by_step[by_step["ranks"] >= world_size]
    out = d[d["step"].isin(by_step.index)].copy()
    out["value"] = np.sqrt(out["step"].map(by_step["total"]).to_numpy(np.float64))
    out["name"] = "grad_norm"
    return out[list(norms.columns)].reset_index(drop=True)
