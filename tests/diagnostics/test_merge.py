"""Merging the ranks' shard summaries into a whole parameter's (diagnostics/merge.py),
against numpy on the whole array."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from diagnostics import schema
from diagnostics.merge import merge_shard_norms, merge_shards


def _row(values: np.ndarray, rank: int, step: int = 0, layer: str = "w", sample_every: int = 1) -> dict:
    """One rank's summary row as the writer stores it (histogram of a strided sample when
    `sample_every` > 1, as large tensors' are)."""
    finite = values[np.isfinite(values)]
    row = {"step": step, "layer": layer, "kind": "weight", "rank": rank, "count": values.size,
           "zero_frac": float(np.mean(values == 0)) if values.size else 0.0,
           "nan_count": int(np.isnan(values).sum()), "inf_count": int(np.isinf(values).sum()),
           "dead_frac": np.nan, "saturated_frac": np.nan}
    if finite.size == 0:
        return {**row, "mean": np.nan, "std": np.nan, "min": np.nan, "max": np.nan, "hist_min": np.nan,
                "hist_max": np.nan, "hist_counts": np.zeros(schema.HIST_BINS, dtype=np.int64),
                **{c: np.nan for c in schema.QUANTILE_COLUMNS}}
    counts, edges = np.histogram(finite[::sample_every], bins=schema.HIST_BINS, range=(finite.min(), finite.max()))
    return {**row, "mean": finite.mean(), "std": finite.std(), "min": finite.min(), "max": finite.max(),
            "hist_min": edges[0], "hist_max": edges[-1], "hist_counts": counts,
            **dict(zip(schema.QUANTILE_COLUMNS, np.quantile(finite, schema.QUANTILES)))}


def test_whole_parameter_moments_are_exact_and_quantiles_within_a_bin():
    rng = np.random.default_rng(0)
    whole = np.concatenate([rng.normal(1000, 1, 10_000), rng.normal(1002, 3, 3_000)])  # a large offset
    shards = [whole[:10_000], whole[10_000:], whole[:0]]  # uneven; the last rank holds nothing
    rows = pd.DataFrame([_row(s, r, sample_every=4 if s.size > 8_192 else 1) for r, s in enumerate(shards)])
    merged = merge_shards(rows, world_size=3)
    assert list(merged["rank"]) == [0, 1, 2] and list(merged.columns) == list(rows.columns)
    m = merged.iloc[0]
    assert m["count"] == whole.size and m["min"] == whole.min() and m["max"] == whole.max()
    np.testing.assert_allclose([m["mean"], m["std"]], [whole.mean(), whole.std()], rtol=1e-12)
    assert merged.drop(columns=["rank", "hist_counts"]).nunique(dropna=False).le(1).all()  # rows alike
    width = (m["hist_max"] - m["hist_min"]) / schema.HIST_BINS
    assert m["hist_min"] <= whole.min() and m["hist_max"] >= whole.max()
    assert abs(sum(m["hist_counts"]) - (2_500 + 3_000)) <= schema.HIST_BINS  # the samples' total, rounded per bin
    quantiles = m[list(schema.QUANTILE_COLUMNS)].to_numpy(np.float64)
    assert np.all(np.abs(quantiles - np.quantile(whole, schema.QUANTILES)) <= 2 * width)


def test_nan_and_inf_are_counted_and_left_out_of_the_moments():
    a, b = np.array([1.0, np.nan, 2.0, 0.0]), np.array([np.inf, 5.0, 6.0])
    m = merge_shards(pd.DataFrame([_row(a, 0), _row(b, 1)]), world_size=2).iloc[0]
    finite = np.array([1.0, 2.0, 0.0, 5.0, 6.0])
    assert (m["count"], m["nan_count"], m["inf_count"]) == (7, 1, 1)
    np.testing.assert_allclose([m["mean"], m["std"], m["min"], m["max"], m["zero_frac"]],
                               [finite.mean(), finite.std(), 0.0, 6.0, 1 / 7])


def test_one_non_empty_shard_keeps_its_quantiles_and_histogram():
    values = np.arange(20.0)
    rows = pd.DataFrame([_row(values, 0), _row(values[:0], 1)])
    m = merge_shards(rows, world_size=2).iloc[0]
    np.testing.assert_array_equal(m[list(schema.QUANTILE_COLUMNS)].to_numpy(np.float64),
                                  np.quantile(values, schema.QUANTILES))
    np.testing.assert_array_equal(m["hist_counts"], rows.at[0, "hist_counts"])


def test_a_step_not_every_rank_has_written_is_left_out():
    rows = pd.DataFrame([_row(np.ones(3), 0, step=0), _row(np.ones(2), 1, step=0), _row(np.ones(3), 0, step=1)])
    merged = merge_shards(rows, world_size=2)
    assert set(merged["step"]) == {0} and set(merged["count"]) == {5}


@pytest.mark.parametrize("complete", [True, False])
def test_the_gradient_norm_is_the_root_of_the_shards_squares(complete):
    n = 4 if complete else 3
    norms = pd.DataFrame({"step": [0, 0, 1, 1][:n], "name": schema.GRAD_NORM_SHARD,
                          "value": [3.0, 4.0, 1.0, 1.0][:n], "rank": [0, 1, 0, 1][:n], "wall_time_s": 0.0})
    out = merge_shard_norms(norms, world_size=2)
    assert set(out["name"]) == {"grad_norm"} and list(out.columns) == list(norms.columns)
    assert list(out.loc[out["step"] == 0, "value"]) == [5.0, 5.0]
    assert list(out.loc[out["step"] == 1, "value"]) == ([np.sqrt(2)] * 2 if complete else [])
