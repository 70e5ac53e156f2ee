"""rebin and common_grid: stored per-row histograms brought onto one grid."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from diagnostics.histograms import common_grid, rebin

# -- rebin -----------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(4))
def test_rebin_preserves_mass_when_target_covers_source(seed):
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 1000, size=64)
    lo, hi = -rng.uniform(0.1, 5), rng.uniform(0.1, 5)
    edges = np.linspace(lo - rng.uniform(0, 3), hi + rng.uniform(0, 3), int(rng.integers(5, 200)))
    moved = rebin(counts, lo, hi, edges)
    assert moved.shape == (len(edges) - 1,)
    assert np.all(moved >= -1e-9)
    assert moved.sum() == pytest.approx(counts.sum(), rel=1e-12)


def test_rebin_is_exact_on_the_same_edges():
    counts = np.array([3, 0, 7, 1, 12, 5, 0, 9])
    lo, hi = -1.5, 2.5
    moved = rebin(counts, lo, hi, np.linspace(lo, hi, len(counts) + 1))
    np.testing.assert_allclose(moved, counts, rtol=0, atol=1e-12)


def test_rebin_hand_computed():
    # [4, 8] uniformly over [0, 1) and [1, 2]
    counts = np.array([4, 8])
    np.testing.assert_allclose(rebin(counts, 0.0, 2.0, np.array([0.0, 0.5, 1.5, 2.0])), [2.0, 6.0, 4.0])
    # target wider than the source: nothing outside [0, 2]
    np.testing.assert_allclose(rebin(counts, 0.0, 2.0, np.array([-1.0, 0.0, 1.0, 3.0])), [0.0, 4.0, 8.0])
    # a coarser grid sums neighbours; a finer one splits evenly
    np.testing.assert_allclose(rebin([1, 2, 3, 4], 0.0, 4.0, np.array([0.0, 2.0, 4.0])), [3.0, 7.0])
    np.testing.assert_allclose(rebin([6], 10.0, 13.0, np.array([10.0, 11.0, 12.0, 13.0])), [2.0, 2.0, 2.0])
    # part of the source outside the target: that mass is dropped, the rest is kept
    np.testing.assert_allclose(rebin([10, 10], 0.0, 2.0, np.array([0.5, 1.0, 1.25])), [5.0, 2.5])


def test_rebin_empty_or_non_finite_span():
    edges = np.linspace(0, 1, 6)
    np.testing.assert_array_equal(rebin(np.array([]), 0.0, 1.0, edges), np.zeros(5))
    np.testing.assert_array_equal(rebin(np.array([1, 2]), np.nan, np.nan, edges), np.zeros(5))
    np.testing.assert_array_equal(rebin(np.array([1, 2]), 0.0, np.inf, edges), np.zeros(5))


# -- common_grid ------------------------------------------------------------------------------

def _rows(specs):
    return pd.DataFrame(
        [{"hist_counts": np.asarray(c), "hist_min": a, "hist_max": b} for c, a, b in specs]
    )


def test_common_grid_spans_all_rows_and_normalises():
    rng = np.random.default_rng(0)
    specs = [
        (rng.integers(0, 50, 64), -1.0, 1.0),
        (rng.integers(0, 50, 64), -3.0, 0.5),
        (rng.integers(0, 50, 64), 0.25, 4.0),
        (np.array([0, 5, 1]), -0.5, 2.5),  # a class histogram
    ]
    edges, matrix = common_grid(_rows(specs), bins=40)
    assert edges.shape == (41,) and matrix.shape == (4, 40)
    assert edges[0] == -3.0 and edges[-1] == 4.0
    np.testing.assert_allclose(np.diff(edges), 7.0 / 40)
    np.testing.assert_allclose(matrix.sum(axis=1), 1.0, rtol=1e-12)
    assert np.all(matrix >= -1e-12)
    # each row's mass stays inside its own span
    centres = (edges[:-1] + edges[1:]) / 2
    for row, (_, a, b) in zip(matrix, specs):
        outside = (edges[1:] <= a) | (edges[:-1] >= b)
        assert np.all(row[outside] == 0)
        assert row[(centres > a) & (centres < b)].sum() > 0


def test_common_grid_single_row_on_its_own_grid_is_identity():
    counts = np.array([1, 3, 0, 4])
    edges, matrix = common_grid(_rows([(counts, 2.0, 6.0)]), bins=4)
    np.testing.assert_allclose(edges, [2.0, 3.0, 4.0, 5.0, 6.0])
    np.testing.assert_allclose(matrix[0], counts / counts.sum())


@pytest.mark.filterwarnings("ignore:All-NaN slice:RuntimeWarning")
def test_common_grid_degenerate_inputs():
    # no rows
    edges, matrix = common_grid(_rows([]).reindex(columns=["hist_counts", "hist_min", "hist_max"]), bins=8)
    assert edges.shape == (9,) and matrix.shape == (0, 8)
    # an all-NaN row (no finite values) next to a normal one: stays zero, the other sums to 1
    edges, matrix = common_grid(_rows([(np.zeros(64), np.nan, np.nan), (np.ones(4), 0.0, 1.0)]), bins=8)
    assert (edges[0], edges[-1]) == (0.0, 1.0)
    np.testing.assert_array_equal(matrix[0], np.zeros(8))
    assert matrix[1].sum() == pytest.approx(1.0)
    # every row empty
    edges, matrix = common_grid(_rows([(np.zeros(64), np.nan, np.nan)]), bins=8)
    assert np.all(np.isfinite(edges)) and np.all(matrix == 0)


def test_a_constant_row_does_not_stretch_the_grid():
    """A zero-initialised bias at step 0 is stored with numpy's padded span [-0.5, 0.5];
    later steps spread over ±0.04 must still fill the grid, not one or two of its bins."""
    rng = np.random.default_rng(1)
    later = np.histogram(rng.uniform(-0.04, 0.05, 500), bins=64, range=(-0.04, 0.05))[0]
    at_zero = np.zeros(64)
    at_zero[32] = 10  # all of step 0's values, in the middle bin of [-0.5, 0.5]
    rows = pd.DataFrame([
        {"hist_counts": at_zero, "hist_min": -0.5, "hist_max": 0.5, "min": 0.0, "max": 0.0},
        {"hist_counts": later, "hist_min": -0.04, "hist_max": 0.05, "min": -0.04, "max": 0.05},
    ])
    edges, matrix = common_grid(rows, bins=64)
    assert edges[0] == pytest.approx(-0.04) and edges[-1] == pytest.approx(0.05)
    assert np.count_nonzero(matrix[1]) > 50  # spread over the grid
    zero_bin = np.searchsorted(edges, 0.0, side="right") - 1
    assert matrix[0, zero_bin] == 1.0 and matrix[0].sum() == 1.0
    # every row constant at the same value: a grid of ±0.5 around it, mass at it
    edges, matrix = common_grid(rows.iloc[:1], bins=8)
    assert (edges[0], edges[-1]) == (-0.5, 0.5) and matrix[0, 4] == 1.0
