"""Histograms stored per row (their own span) brought onto one grid, so steps compare."""

from __future__ import annotations

import numpy as np
import pandas as pd


def rebin(counts: np.ndarray, lo: float, hi: float, edges: np.ndarray) -> np.ndarray:
    """Counts of equal bins over [lo, hi] redistributed onto `edges` (mass assumed uniform
    inside each source bin, as TensorBoard does when it re-buckets for display)."""
    counts = np.asarray(counts, dtype=np.float64)
    if counts.size == 0 or not np.isfinite(lo) or not np.isfinite(hi):
        return np.zeros(len(edges) - 1)
    src = np.linspace(lo, hi, counts.size + 1)
    cdf = np.concatenate([[0.0], np.cumsum(counts)])
    at_edges = np.interp(edges, src, cdf, left=0.0, right=cdf[-1])
    return np.diff(at_edges)


def _constant(rows: pd.DataFrame) -> np.ndarray:
    """Rows whose tensor held one value (min == max): their stored histogram span is
    padded to [v - 0.5, v + 0.5] (numpy's convention), which says nothing of the data."""
    if "min" not in rows or "max" not in rows:
        return np.zeros(len(rows), dtype=bool)
    lo, hi = rows["min"].to_numpy(dtype=float), rows["max"].to_numpy(dtype=float)
    return np.isfinite(lo) & (lo == hi)


def common_grid(rows: pd.DataFrame, bins: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Edges spanning every row's histogram and a (rows × bins) matrix of fractions.

    A constant row (a zero-initialised bias at step 0, BatchNorm's weights of 1) counts as
    its value alone: its padded span of ±0.5 would stretch the grid of the whole run, and
    later steps' values, spread over ±0.04, would fill one or two of its 64 bins."""
    constant = _constant(rows)
    spans_lo = rows["hist_min"].to_numpy(dtype=float).copy() if len(rows) else np.empty(0)
    spans_hi = rows["hist_max"].to_numpy(dtype=float).copy() if len(rows) else np.empty(0)
    if constant.any():
        spans_lo[constant] = spans_hi[constant] = rows["min"].to_numpy(dtype=float)[constant]
    finite = np.isfinite(spans_lo) & np.isfinite(spans_hi)
    if not finite.any():
        return np.linspace(0.0, 1.0, bins + 1), np.zeros((len(rows), bins))
    lo, hi = float(spans_lo[finite].min()), float(spans_hi[finite].max())
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)
    matrix = np.zeros((len(rows), bins))
    for i, (counts, a, b) in enumerate(zip(rows["hist_counts"], rows["hist_min"], rows["hist_max"])):
        if constant[i]:  # all of its mass at its value
            matrix[i, min(int(np.searchsorted(edges, spans_lo[i], side="right")) - 1, bins - 1)] = 1.0
            continue
        moved = rebin(np.asarray(counts), float(a), float(b), edges)
        total = moved.sum()
        matrix[i] = moved / total if total > 0 else moved
    return edges, matrix
