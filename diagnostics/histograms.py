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


def common_grid(rows: pd.DataFrame, bins: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Edges spanning every row's histogram and a (rows × bins) matrix of fractions."""
    lo = np.nanmin(rows["hist_min"].to_numpy(dtype=float)) if len(rows) else np.nan
    hi = np.nanmax(rows["hist_max"].to_numpy(dtype=float)) if len(rows) else np.nan
    if not np.isfinite(lo) or not np.isfinite(hi):
        return np.linspace(0.0, 1.0, bins + 1), np.zeros((len(rows), bins))
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)
    matrix = np.zeros((len(rows), bins))
    for i, (counts, a, b) in enumerate(zip(rows["hist_counts"], rows["hist_min"], rows["hist_max"])):
        moved = rebin(np.asarray(counts), float(a), float(b), edges)
        total = moved.sum()
        matrix[i] = moved / total if total > 0 else moved
    return edges, matrix
