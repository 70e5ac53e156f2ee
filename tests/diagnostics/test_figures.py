"""Scalar charts: what a user sees for series that cannot be drawn as a line."""

from __future__ import annotations

import numpy as np
import pandas as pd

from diagnostics import figures


def _scalars(rows):
    return pd.DataFrame(rows, columns=["step", "name", "value", "rank"])


def test_all_nan_series_draws_no_trace_and_short_series_get_markers():
    rows = [(s, "grad_clipped", np.nan, r) for s in range(5) for r in (0, 1)]  # unknown under DDP
    rows += [(3, "val/acc", 0.8, 0)]  # one evaluation: a lone point
    rows += [(s, "grad_norm", 1.0 + s, 0) for s in range(5)]
    fig = figures.scalar_figure(_scalars(rows), ["grad_clipped", "val/acc", "grad_norm"], "logged scalars")
    names = {t.name: t.mode for t in fig.data}
    assert names == {"val/acc (rank 0)": "lines+markers", "grad_norm (rank 0)": "lines"}


def test_only_nan_says_so_instead_of_an_empty_chart():
    fig = figures.scalar_figure(_scalars([(0, "grad_clipped", np.nan, 0)]), ["grad_clipped"], "x")
    assert not fig.data and "no finite values of grad_clipped" in fig.layout.annotations[0].text


def test_a_constant_scalar_is_drawn_from_zero():
    rows = [(s, "lr", 0.05, 0) for s in range(10)]
    fig = figures.scalar_figure(_scalars(rows), ["lr"], "learning rate")
    assert list(fig.layout.yaxis.range) == [0.0, 0.1]
