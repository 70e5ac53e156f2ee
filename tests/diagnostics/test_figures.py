"""Scalar charts: what a user sees for series that cannot be drawn as a line."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

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


def test_layers_at_step_names_are_categories_and_the_std_axis_is_labelled():
    """nn.Sequential names its layers "0".."11": as numbers plotly labelled every other one.
    The std axis: readable ticks in one format, at least three, inside the data's range."""
    rows = [{"layer": str(i), "q05": -1, "q25": -0.5, "q50": 0, "q75": 0.5, "q95": 1, "std": 1e-6 * (1 + i)}
            for i in range(12)]
    fig = figures.layers_at_step_figure(pd.DataFrame(rows), [str(i) for i in range(12)])
    assert fig.layout.xaxis.type == "category" and fig.layout.xaxis2.type == "category"
    ticks = fig.layout.yaxis2.tickvals
    assert len(ticks) >= 3 and all(1e-6 / 1.05 <= t <= 1.2e-5 * 1.05 for t in ticks)
    assert list(fig.layout.yaxis2.ticktext) == ["1e-6", "2e-6", "5e-6", "1e-5"]
    lo, hi = fig.layout.yaxis2.range
    assert lo < np.log10(1e-6) and hi > np.log10(1.2e-5)


def test_log_ticks_span_a_decade_and_a_half_with_more_than_one_label():
    ticks = figures.log_ticks(np.array([0.35, 7.2]))
    assert ticks["ticktext"] == ["0.5", "1", "2", "5"]
    assert figures.log_ticks(np.array([np.nan, 0.0])) == {}


def test_heavy_tailed_bands_are_framed_on_the_1_to_99_percent_band():
    steps = np.arange(5)
    dist = pd.DataFrame({"step": steps, "min": -5.0, "max": 5.0, "q01": -0.05, "q05": -0.03, "q25": -0.01,
                         "q50": 0.0, "q75": 0.01, "q95": 0.03, "q99": 0.05, "mean": 0.0})
    fig = figures.quantile_bands_figure(dist)
    lo, hi = fig.layout.yaxis.range
    assert -0.1 < lo < -0.05 and 0.05 < hi < 0.1
    assert "runs off the chart" in fig.layout.annotations[0].text
    narrow = dist.assign(min=-0.06, max=0.06)  # no tails: plotly's own range, no note
    fig = figures.quantile_bands_figure(narrow)
    assert fig.layout.yaxis.range is None and not fig.layout.annotations


def test_an_image_preview_has_no_grid_or_ticks_over_it():
    from diagnostics.figures import sample as sample_figures

    row = pd.Series({"kind": "image", "values": np.arange(64, dtype=np.float32).tolist(), "shape": [8, 8, 1]})
    fig = sample_figures.preview_figure(row)
    for axis in (fig.layout.xaxis, fig.layout.yaxis):
        assert axis.showgrid is False and axis.zeroline is False and axis.ticks == ""
    assert fig.layout.yaxis.autorange == "reversed"


def test_layers_at_step_labels_each_layer_with_its_module_type():
    rows = [{"layer": name, "q05": -1, "q25": -0.5, "q50": 0, "q75": 0.5, "q95": 1, "std": 1.0}
            for name in ("0", "1", "head")]
    types = {"0": "Conv2d", "1": "ReLU", "head": "Linear"}
    fig = figures.layers_at_step_figure(pd.DataFrame(rows), ["0", "1", "head"], layer_types=types)
    assert list(fig.layout.xaxis2.ticktext) == ["0 · Conv2d", "1 · ReLU", "head · Linear"]
    assert list(fig.layout.xaxis2.tickvals) == ["0", "1", "head"]
    # parameters take their module's type; unknown names stay as they are
    assert figures.layer_label("head.weight", types) == "head.weight · Linear"
    assert figures.layer_label("mystery", types) == "mystery"


def test_bands_and_heatmap_of_a_layer_share_step_range_and_margins():
    """Drawn one above the other: the same step lines up when the plot areas match."""
    steps = np.array([0, 1, 2, 4, 8])
    hist = [np.ones(64)] * len(steps)
    dist = pd.DataFrame({"step": steps, "rank": 0, "count": 64, "min": -1.0, "max": 1.0, "q01": -0.9, "q05": -0.8,
                         "q25": -0.5, "q50": 0.0, "q75": 0.5, "q95": 0.8, "q99": 0.9, "mean": 0.0,
                         "hist_counts": hist, "hist_min": -1.0, "hist_max": 1.0})
    bands, heat = figures.quantile_bands_figure(dist), figures.histogram_heatmap_figure(dist)
    assert list(bands.layout.xaxis.range) == list(heat.layout.xaxis.range) == [-0.5, 8.5]
    assert bands.layout.margin == heat.layout.margin
    assert heat.data[0].colorbar.x >= 1.0  # the colorbar sits in the right margin, not in the plot


def test_a_log_scalar_axis_within_one_decade_gets_distinct_explicit_ticks():
    """A gradient norm between 1.2 and 1.9: plotly's '.2g' labels repeated '1.2' for
    neighbouring ticks; our ticks are explicit, distinct, and inside the data's range."""
    s = pd.DataFrame({"step": np.arange(6), "name": "grad_norm", "rank": 0,
                      "value": [1.2, 1.25, 1.3, 1.5, 1.7, 1.9]})
    axis = figures.scalar_figure(s, ["grad_norm"], "g", log_y=True).layout.yaxis
    assert axis.type == "log" and axis.tickvals is not None
    assert len(set(axis.ticktext)) == len(axis.ticktext) >= 3
    wide = figures.scalar_figure(s.assign(value=s["value"] * [1, 10, 100, 1e3, 1e4, 1e5]), ["grad_norm"], "g",
                                 log_y=True).layout.yaxis
    assert len(set(wide.ticktext)) == len(wide.ticktext) and wide.ticktext[0] != wide.ticktext[-1]


def test_output_and_label_values_share_one_grid_of_bins():
    """Labels recorded over [0, 10] and outputs over [5, 15], 10 bins each, uniform: on one
    grid of 10 bins over [0, 15] (1.5 wide) by hand, labels 0.15 a bin up to 9, then 0.1 in
    [9, 10.5]; outputs 0.1 in [4.5, 6], then 0.15 a bin."""
    row = lambda lo, hi: pd.Series({"hist_counts": [1] * 10, "hist_min": lo, "hist_max": hi, "min": lo, "max": hi})
    fig = figures.value_distribution_figure(row(5.0, 15.0), row(0.0, 10.0))
    labels, outputs = fig.data
    assert (labels.name, outputs.name) == ("labels", "outputs")
    np.testing.assert_allclose(labels.x, outputs.x)
    np.testing.assert_allclose(labels.x, np.arange(0.75, 15, 1.5))
    np.testing.assert_allclose(labels.y, [0.15] * 6 + [0.1, 0, 0, 0], atol=1e-12)
    np.testing.assert_allclose(outputs.y, [0, 0, 0, 0.1] + [0.15] * 6, atol=1e-12)


def test_data_map_names_its_regions_in_the_legend_not_over_the_points():
    from diagnostics.dynamics import data_map

    rng = np.random.default_rng(0)
    n = 90
    dyn = pd.DataFrame({"sample_id": [str(i) for i in range(n)], "n_records": 5, "label": 0.0,
                        "confidence": rng.uniform(size=n), "variability": rng.uniform(0, 0.4, n),
                        "correct_frac": rng.uniform(size=n), "mean_abs_residual": np.nan})
    found = data_map(dyn, "classification")
    fig = figures.data_map_figure(dyn, found.regions, found.thresholds)
    keys = [t.name for t in fig.data if t.showlegend is not False]
    assert keys == [f"{r} ({found.counts[r]})" for r in ("easy", "ambiguous", "hard-to-learn")]
    assert fig.layout.legend.y < 0  # below the plot, outside the data area
    assert not fig.layout.annotations  # no names drawn at fixed places inside it
    points = [t for t in fig.data if t.showlegend is False]
    assert sum(len(t.x) for t in points) == n and all(t.marker.coloraxis == "coloraxis" for t in points)
    # the borders of the regions: the variability threshold, and the confidence one left of it
    lines = fig.layout.shapes
    assert any(s.x0 == s.x1 == found.thresholds[1] for s in lines)
    assert any(s.y0 == s.y1 == found.thresholds[0] and s.x1 == found.thresholds[1] for s in lines)
    # without regions (the health page's evidence before): one trace, no legend keys
    plain = figures.data_map_figure(dyn)
    assert len(plain.data) == 1 and len(plain.data[0].x) == n and not plain.layout.annotations


def test_a_sample_history_of_one_evaluation_is_ticked_at_whole_steps():
    """One evaluation at step 24: plotly ticked 23.5, 24, 24.5; a step is a whole number."""
    evaluation = pd.DataFrame({"step": [24], "label_prob": [0.7], "residual": [np.nan]})
    fig = figures.sample_history_figure(pd.DataFrame(), evaluation, "classification")
    assert list(fig.layout.xaxis.tickvals) == [24]
    two = pd.DataFrame({"step": [3, 7], "confidence": [0.2, 0.5]})
    assert list(figures.sample_history_figure(two, evaluation, "classification").layout.xaxis.tickvals) == [3, 7, 24]
    many = pd.DataFrame({"step": range(20), "confidence": np.linspace(0, 1, 20)})
    assert figures.sample_history_figure(many, evaluation, "classification").layout.xaxis.tickvals is None


def test_output_and_label_values_get_as_many_bins_as_their_count_supports():
    """One batch of 125 values recorded in 64 bins: 2 × 125^(1/3) = 10 bins; 64,000 values: 64 (all recorded)."""
    rng = np.random.default_rng(0)
    def row(n):
        counts, edges = np.histogram(rng.normal(size=n), bins=64)
        return pd.Series({"hist_counts": counts, "hist_min": edges[0], "hist_max": edges[-1], "min": edges[0],
                          "max": edges[-1]})
    small = figures.value_distribution_figure(row(125), row(125))
    assert len(small.data[0].x) == 10 and sum(small.data[0].y) == pytest.approx(1.0)
    assert len(figures.value_distribution_figure(row(64_000), row(64_000)).data[0].x) == 64


def _hover_ids(trace: dict) -> list[str]:
    """The sample ids a trace's hover shows: its template's customdata column, read back."""
    import re

    column = int(re.search(r"customdata\[(\d)\]", trace["hovertemplate"]).group(1))  # the first is the id
    return [row[column] for row in trace["customdata"]]


def test_hovers_show_sample_ids_as_text_and_selections_keep_the_ids():
    """A sample id is user input: the hover shows `<b>x</b>` as written (escaped for plotly's HTML),
    while customdata[0], what a selection reads, stays the id itself."""
    import pandas as pd

    from diagnostics.figures.compare import loss_scatter_figure
    from diagnostics.figures.dynamics import data_map_figure, residual_map_figure

    ids = ["<b>x</b>", "a&b", "plain"]
    compare = loss_scatter_figure(pd.DataFrame({"sample_id": ids, "loss_a": [0.5, 1.0, 2.0],
                                                "loss_b": [0.4, 1.5, 2.0], "change": ["improved", "worsened", "same"]}))
    cls = data_map_figure(pd.DataFrame({"sample_id": ids, "variability": [0.1, 0.2, 0.3],
                                        "confidence": [0.9, 0.5, 0.2], "correct_frac": [1.0, 0.5, 0.0]}))
    reg = residual_map_figure(pd.DataFrame({"sample_id": ids, "residual_std": [0.1, 0.2, 0.3],
                                            "mean_abs_residual": [0.5, 0.4, 0.3], "label": [1.0, 2.0, 3.0],
                                            "prediction": [1.1, 2.2, 3.3]}),
                              pd.Series(["easy"] * 3))
    for fig in (compare, cls, reg):
        traces = [t.to_plotly_json() for t in fig.data if t.customdata is not None and len(t.customdata)]
        assert traces
        shown = sorted(i for t in traces for i in _hover_ids(t))
        assert shown == sorted(["&lt;b&gt;x&lt;/b&gt;", "a&amp;b", "plain"])
        assert sorted(row[0] for t in traces for row in t["customdata"]) == sorted(ids)
