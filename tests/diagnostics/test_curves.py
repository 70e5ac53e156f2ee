"""Loss and scalar curves: several runs on one chart (one colour each), step or wall-clock
time on x, and the raw and smoothed loss in two shades of one hue."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from diagnostics import figures


def _frame(rows) -> pd.DataFrame:
    """rows: (step, name, value, rank, wall_time_s)."""
    return pd.DataFrame(rows, columns=["step", "name", "value", "rank", "wall_time_s"])


def _ema_reference(values, weight):
    """Debiased EMA written out as weighted means: s_t = Σ w^(t-i) v_i / Σ w^(t-i)."""
    values = np.asarray(values, float)
    out = []
    for t in range(len(values)):
        w = weight ** np.arange(t, -1, -1)
        out.append(float((w * values[: t + 1]).sum() / w.sum()))
    return np.array(out)


def _rgb(color: str) -> tuple[int, int, int]:
    if color.startswith("#"):
        return tuple(int(color[i:i + 2], 16) for i in (1, 3, 5))
    return tuple(int(float(v)) for v in color[color.index("(") + 1:-1].split(",")[:3])


LOSS_A = [2.0, 1.5, 1.7, 1.0, 0.8, 0.9]
LOSS_B = [2.2, 1.2, 0.9, 0.7]


@pytest.fixture()
def two_runs():
    a = _frame([(s, "loss", v, 0, 1000.0 + 2 * s) for s, v in enumerate(LOSS_A)]
               + [(5, "val/accuracy", 0.7, 0, 1011.0)])
    b = _frame([(s, "loss", v, 0, 5000.0 + 0.5 * s) for s, v in enumerate(LOSS_B)]
               + [(3, "val/accuracy", 0.8, 0, 5001.5), (3, "val/acc", 0.8, 0, 5001.5)])
    return {"base": a, "norm": b}


def test_each_run_is_one_line_in_its_own_colour(two_runs):
    fig = figures.runs_scalar_figure(two_runs, "loss")
    assert [t.name for t in fig.data] == ["base", "norm"]
    assert list(fig.data[0].y) == LOSS_A and list(fig.data[1].y) == LOSS_B
    assert list(fig.data[0].x) == [0, 1, 2, 3, 4, 5] and list(fig.data[1].x) == [0, 1, 2, 3]
    assert fig.data[0].line.color != fig.data[1].line.color
    assert fig.layout.xaxis.title.text == "step" and fig.layout.title.text == "loss"


def test_time_axis_is_seconds_since_each_runs_start(two_runs):
    fig = figures.runs_scalar_figure(two_runs, "loss", x="time", starts={"base": 999.0})
    # base: its start given (999): 1000 + 2s - 999; norm: none given, its first value (5000)
    np.testing.assert_allclose(fig.data[0].x, [1, 3, 5, 7, 9, 11])
    np.testing.assert_allclose(fig.data[1].x, [0, 0.5, 1.0, 1.5])
    assert fig.layout.xaxis.title.text == "time since the run started (s)"
    long = {"slow": _frame([(s, "loss", 1.0, 0, 60.0 * s) for s in range(6)])}  # 5 minutes
    fig = figures.runs_scalar_figure(long, "loss", x="time")
    np.testing.assert_allclose(fig.data[0].x, [0, 1, 2, 3, 4, 5])
    assert fig.layout.xaxis.title.text == "time since the run started (min)"
    with pytest.raises(ValueError, match="'step' or 'time'"):
        figures.runs_scalar_figure(long, "loss", x="wall")


def test_raw_and_smoothed_are_two_shades_of_one_hue_named_in_the_legend(two_runs):
    fig = figures.runs_scalar_figure(two_runs, "loss", smooth=0.6)
    # several runs: one legend entry per run (its smoothed line); the legend's title names the faint raw lines
    assert [t.name for t in fig.data] == ["base · raw", "base", "norm · raw", "norm"]
    assert [t.showlegend for t in fig.data] == [False, None, False, None]
    assert fig.layout.legend.title.text == "smoothed (0.6); faint: raw"
    raw, smoothed = fig.data[0], fig.data[1]
    assert _rgb(raw.line.color) == _rgb(smoothed.line.color)          # the same hue
    assert "0.3)" in raw.line.color and raw.line.width < smoothed.line.width  # raw faint and thin
    assert raw.legendgroup == smoothed.legendgroup == "base"
    assert _rgb(fig.data[2].line.color) != _rgb(raw.line.color)
    np.testing.assert_allclose(smoothed.y, _ema_reference(LOSS_A, 0.6))
    assert list(raw.y) == LOSS_A


def test_single_run_loss_chart_names_raw_and_smoothed():
    """Overview without overlays: the Streamlit theme coloured the raw line dark blue and the
    smoothed one light blue (two default colours); now one hue, both named."""
    scalars = _frame([(s, "loss", v, 0, float(s)) for s, v in enumerate(LOSS_A)])
    for fig in (figures.scalar_figure(scalars, ["loss"], "loss", smooth=0.6),
                figures.runs_scalar_figure({"only": scalars}, "loss", smooth=0.6)):
        assert [t.name for t in fig.data] == ["loss · raw", "loss · smoothed (0.6)"]
        assert fig.data[0].showlegend is not False and fig.data[1].showlegend is not False
        assert fig.data[0].line.color is not None and _rgb(fig.data[0].line.color) == _rgb(fig.data[1].line.color)
        np.testing.assert_allclose(fig.data[1].y, _ema_reference(LOSS_A, 0.6))


def test_a_nan_loss_does_not_blank_the_smoothed_line():
    values = [1.0, 0.8, np.nan, 0.6, 0.5]
    scalars = _frame([(s, "loss", v, 0, float(s)) for s, v in enumerate(values)])
    fig = figures.scalar_figure(scalars, ["loss"], "loss", smooth=0.5)
    smoothed = fig.data[1]
    assert list(smoothed.x) == [0, 1, 3, 4]
    np.testing.assert_allclose(smoothed.y, _ema_reference([1.0, 0.8, 0.6, 0.5], 0.5))


def test_scalars_under_two_names_are_not_merged(two_runs):
    fig = figures.runs_scalar_figure(two_runs, "val/acc")
    assert [t.name for t in fig.data] == ["norm"] and list(fig.data[0].y) == [0.8]
    assert fig.layout.annotations[0].text == "not logged under this name in: base"
    fig = figures.runs_scalar_figure(two_runs, "val/accuracy")
    assert [t.name for t in fig.data] == ["base", "norm"] and not fig.layout.annotations
    assert fig.data[0].mode == "lines+markers"  # a lone point stays visible


def test_ranks_of_one_run_share_its_colour_with_their_own_dash():
    ddp = _frame([(s, "loss", 1.0 / (s + 1) + r, r, float(s)) for s in range(5) for r in (0, 1)])
    fig = figures.runs_scalar_figure({"ddp": ddp, "single": ddp[ddp["rank"] == 0]}, "loss")
    assert [t.name for t in fig.data] == ["ddp (rank 0)", "ddp (rank 1)", "single"]
    assert fig.data[0].line.color == fig.data[1].line.color != fig.data[2].line.color
    assert (fig.data[0].line.dash, fig.data[1].line.dash, fig.data[2].line.dash) == ("solid", "dash", "solid")


def test_nothing_to_draw_says_why():
    nan_only = _frame([(0, "loss", np.nan, 0, 0.0)])
    fig = figures.runs_scalar_figure({"a": nan_only, "b": nan_only.iloc[:0]}, "loss")
    assert not fig.data and fig.layout.annotations[0].text == "no finite values of loss in a, b"


def test_many_runs_make_the_chart_taller_not_the_plot_smaller():
    frames = {f"run{i}": _frame([(s, "loss", 1.0 / (s + 1), 0, float(s)) for s in range(5)]) for i in range(7)}
    assert figures.runs_scalar_figure(dict(list(frames.items())[:3]), "loss").layout.height == 320
    assert figures.runs_scalar_figure(frames, "loss").layout.height == 320 + 2 * 22  # 7 entries: 3 rows


def test_small_multiples_put_each_scalar_in_its_panel_with_one_legend_entry_per_run(two_runs):
    extra = {run: pd.concat([frame, pd.DataFrame({"step": [3, 6], "name": "grad_norm", "value": [5.0, 4.0],
                                                   "rank": 0, "wall_time_s": [1003.0, 1006.0]})])
             for run, frame in two_runs.items()}
    fig = figures.runs_scalars_figure(extra, ["loss", "grad_norm", "val/missing"])
    names = [a.text for a in fig.layout.annotations]
    assert names[:3] == ["loss", "grad_norm", "val/missing"] and "no finite values" in names
    by_axis = {}
    for trace in fig.data:
        by_axis.setdefault(trace.yaxis, []).append(trace)
    assert sorted(by_axis) == ["y", "y2"]  # the third panel has nothing to draw
    for run, trace in zip(two_runs, by_axis["y"]):  # loss panel: each run's own loss, in order
        part = two_runs[run][two_runs[run]["name"] == "loss"].sort_values("step")
        np.testing.assert_allclose(trace.y, part["value"])
    np.testing.assert_allclose(by_axis["y2"][0].y, [5.0, 4.0])
    assert [t.showlegend for t in fig.data] == [True, True, False, False]  # one legend entry per run
    assert by_axis["y"][0].line.color == by_axis["y2"][0].line.color  # a run keeps its colour across panels
    links = [fig.layout[f"xaxis{i or ''}"].matches for i in range(4) if i != 1]
    assert len(set(links) - {None}) == 1 and links.count(None) == 1  # all follow one: zoom one, all zoom


def test_small_multiples_say_when_nothing_is_picked_or_drawable(two_runs):
    assert figures.runs_scalars_figure(two_runs, []).layout.annotations[0].text == "no scalars picked"
    assert "no finite values" in figures.runs_scalars_figure(two_runs, ["nope"]).layout.annotations[0].text
    with pytest.raises(ValueError, match="x must be"):
        figures.runs_scalars_figure(two_runs, ["loss"], x="wall")


def test_a_panel_of_one_value_is_framed_around_it_not_from_zero_to_twice_it():
    """An end-of-run train/accuracy of 0.9 drew on an axis from 0 to 1.8: an accuracy of 1.8 is
    not a thing; ±10% around the value keeps it readable and in range."""
    frames = {"run": _frame([(s, "loss", 1.0 / (s + 1), 0, float(s)) for s in range(5)]
                            + [(4, "train/accuracy", 0.9, 0, 4.0), (4, "val/loss", -2.0, 0, 4.0)])}
    fig = figures.runs_scalars_figure(frames, ["loss", "train/accuracy", "val/loss"], smooth=0.0)
    np.testing.assert_allclose(fig.layout.yaxis2.range, [0.81, 0.99])
    np.testing.assert_allclose(fig.layout.yaxis3.range, [-2.2, -1.8])
    assert fig.layout.yaxis.range is None  # a varying panel keeps plotly's own range
