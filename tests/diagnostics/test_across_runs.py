"""Across runs: which runs of a folder recorded the same layer (for distributions side by
side), and the two figures that draw one layer of several runs on one step axis."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from diagnostics import figures, schema
from diagnostics.across_runs import runs_recording
from diagnostics.store import RunWriter


def summary_row(centre: float, spread: float = 1.0, bins: int = 4) -> list[float]:
    """One summary vector (schema.SUMMARY_FIELDS, then the histogram counts) of values spread
    evenly over centre ± 2·spread: quantile q at centre + spread·(4q − 2)."""
    quantiles = [centre + spread * (4 * q - 2) for q in schema.QUANTILES]
    lo, hi = centre - 2 * spread, centre + 2 * spread
    fields = {"count": 100, "mean": centre, "std": spread, "min": lo, "max": hi, "zero_frac": 0.0,
              "nan_count": 0, "inf_count": 0, **dict(zip(schema.QUANTILE_COLUMNS, quantiles)),
              "dead_frac": np.nan, "saturated_frac": np.nan, "hist_min": lo, "hist_max": hi}
    return [float(fields[f]) for f in schema.SUMMARY_FIELDS] + [25.0] * bins


def write_dist_run(folder, name: str, captures: dict[tuple[str, str], dict[int, float]], world_size: int = 1,
                   scalars: dict[str, dict[int, float]] | None = None):
    """A run whose distributions hold, for each (kind, layer), one capture per step: a
    summary centred at the given value (the same on every rank); and `scalars` by name and step."""
    writer = RunWriter(folder / name, {"name": name, "task": "classification", "world_size": world_size},
                       flush_every_s=3600)
    for scalar, by_step in (scalars or {}).items():
        for step, value in by_step.items():
            writer.add_scalar(step, scalar, value)
    steps = sorted({s for by_step in captures.values() for s in by_step})
    for step in steps:
        keys = [k for k, by_step in captures.items() if step in by_step]
        matrix = np.array([summary_row(captures[k][step]) for k in keys])
        writer.add_summaries(step, [layer for _, layer in keys], [kind for kind, _ in keys], matrix)
    writer.close()
    return folder / name


def test_runs_recording_lists_other_runs_with_the_same_kind_and_layer(tmp_path):
    a = write_dist_run(tmp_path, "a", {("activation", "conv1"): {0: 0.0}, ("activation", "conv2"): {0: 0.0}})
    b = write_dist_run(tmp_path, "b", {("activation", "conv1"): {0: 1.0}, ("gradient", "conv2"): {0: 0.0}})
    c = write_dist_run(tmp_path, "c", {("gradient", "conv1"): {0: 0.0}}, world_size=2)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "run.json").write_text("{not json")
    assert runs_recording(tmp_path, a, "activation", "conv1")["name"].tolist() == ["b"]
    assert runs_recording(tmp_path, b, "activation", "conv2")["name"].tolist() == ["a"]
    assert runs_recording(tmp_path, c, "activation", "conv1")["name"].tolist() == ["b", "a"]  # most recent first
    assert runs_recording(tmp_path, a, "gradient", "conv1")[["name", "world_size"]].values.tolist() == [["c", 2]]
    assert runs_recording(tmp_path, a, "weight", "conv1").empty
    assert runs_recording(tmp_path / "nowhere", a, "activation", "conv1").empty


def _frame(steps_centres: dict[int, float], ranks=(0,), drop=()) -> pd.DataFrame:
    rows = []
    for step, centre in steps_centres.items():
        for rank in ranks:
            values = dict(zip(schema.SUMMARY_FIELDS, summary_row(centre + rank)))
            rows.append({"step": step, "layer": "conv1", "kind": "activation", "rank": rank, **values,
                         "hist_counts": [25, 25, 25, 25]})
    return pd.DataFrame(rows).drop(columns=list(drop))


def test_runs_quantiles_figure_draws_each_run_on_one_step_axis():
    # run a at steps 0 2 4; run b at 0 3 6 with two ranks (centres c and c + 1: pooled c + 0.5)
    frames = {"a": _frame({0: 0.0, 2: 1.0, 4: 2.0}), "b": _frame({0: 5.0, 3: 6.0, 6: 7.0}, ranks=(0, 1)),
              "none": _frame({}).iloc[:0]}
    fig = figures.runs_quantiles_figure(frames, "activation of conv1")
    assert len(fig.data) == 6  # per run: band low edge, band high edge, median
    medians = {t.name: t for t in fig.data if t.legendgroup == t.name and t.showlegend is not False}
    assert list(medians) == ["a", "b"]
    assert list(medians["a"].x) == [0, 2, 4] and list(medians["b"].x) == [0, 3, 6]  # steps as recorded
    np.testing.assert_allclose(medians["a"].y, [0.0, 1.0, 2.0])
    np.testing.assert_allclose(medians["b"].y, [5.5, 6.5, 7.5])
    lows = [t for t in fig.data if t.showlegend is False and t.fill is None]
    np.testing.assert_allclose(lows[0].y, [-1.8, -0.8, 0.2])  # q05 = centre + (4·0.05 − 2)
    assert medians["a"].line.color != medians["b"].line.color
    assert all(t.xaxis in (None, "x") for t in fig.data)  # one shared step axis
    assert list(fig.layout.xaxis.range) == [-0.5, 6.5]
    assert "5–95%" in fig.layout.legend.title.text and "no captures: none" in fig.layout.legend.title.text


def test_runs_quantiles_figure_uses_the_band_every_run_has():
    fig = figures.runs_quantiles_figure({"a": _frame({0: 0.0, 1: 0.0}), "b": _frame({0: 0.0}, drop=("q05", "q95"))})
    assert "25–75%" in fig.layout.legend.title.text
    highs = [t for t in fig.data if t.fill == "tonexty"]
    np.testing.assert_allclose(highs[0].y, [1.0, 1.0])  # q75 = 0 + (4·0.75 − 2)
    assert figures.runs_quantiles_figure({"a": _frame({}).iloc[:0]}).layout.annotations[0].text == \
        "no run recorded this layer"


@pytest.mark.parametrize("count", [2, 4])
def test_runs_histograms_figure_shares_one_grid_and_both_axes(count):
    frames = {f"r{i}": _frame({0: float(i), 5: float(i) + 1}) for i in range(count)}
    fig = figures.runs_histograms_figure(frames, bins=16)
    assert [t.name for t in fig.data] == list(frames)
    assert all(list(t.y) == list(fig.data[0].y) for t in fig.data)  # one value grid
    lo, hi = -2.0, count - 1 + 1 + 2.0  # every run's span: r0 from −2, the last run up to its centre + 1 + 2
    assert fig.data[0].y[0] == pytest.approx(lo + (hi - lo) / 32) and fig.data[0].y[-1] == pytest.approx(
        hi - (hi - lo) / 32)
    assert [t.showscale for t in fig.data] == [True] + [False] * (count - 1)  # one colour scale
    assert all(list(t.x) == [0, 5] for t in fig.data)
    for axis in ("xaxis", "yaxis"):  # every panel's axis follows one of them: zoom one, all follow
        names = [k for k in fig.layout.to_plotly_json() if k.startswith(axis)]
        matched = {fig.layout[k].matches for k in names} - {None}
        assert len(names) == count and len(matched) == 1  # 2 × 1, 2 × 2
        assert sum(fig.layout[k].matches is None for k in names) == 1
    assert [a.text for a in fig.layout.annotations] == list(frames)  # one panel title per run
    # r0 at step 0 holds values in [−2, 2] only: its share sums to 1 there and is nil above
    centres, share = np.asarray(fig.data[0].y), 10 ** np.asarray(fig.data[0].z)[:, 0] - 1e-6
    assert share.sum() == pytest.approx(1.0)
    assert np.all(share[centres > 2 + (hi - lo) / 16] < 1e-9) and np.all(share[centres < 2] > 0)
