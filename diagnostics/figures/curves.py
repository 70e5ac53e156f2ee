"""Curves of scalars over steps or time: one run's (`scalar_figure`), one scalar of several
runs (`runs_scalar_figure`), several scalars of several runs as small multiples
(`runs_scalars_figure`), with TensorBoard-style smoothing (`ema`)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from diagnostics.figures.common import empty_figure, log_ticks, rgba
from diagnostics.text import html

_CURVE_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
                 "#bcbd22", "#7f7f7f")
_RANK_DASHES = ("solid", "dash", "dot", "dashdot")


def ema(values: np.ndarray, weight: float = 0.8) -> np.ndarray:
    """TensorBoard-style exponential smoothing, debiased so the first points are not pulled to 0."""
    out = np.empty(len(values))
    acc, norm = 0.0, 0.0
    for i, v in enumerate(np.asarray(values, dtype=float)):
        acc = weight * acc + (1 - weight) * v
        norm = weight * norm + (1 - weight)
        out[i] = acc / norm
    return out


def scalar_figure(scalars: pd.DataFrame, names: list[str], title: str, log_y: bool = False,
                  smooth: float = 0.0) -> go.Figure:
    """Lines of some scalars over steps (one colour per name and rank); with `smooth`, each
    drawn raw (faint, thin) under its smoothed line in the same hue, both in the legend."""
    df = scalars[scalars["name"].isin(names)]
    if df.empty:
        return empty_figure(f"no {', '.join(names)} recorded")
    fig = go.Figure()
    # e.g. grad_clipped under DDP (unknown): no line to draw
    drawn = [(key, part) for key, part in df.groupby(["name", "rank"], sort=True)
             if np.isfinite(part["value"].to_numpy(dtype=float)).any()]
    for i, ((name, rank), part) in enumerate(drawn):
        label = html(name if df["rank"].nunique() == 1 else f"{name} (rank {rank})")
        _add_curve(fig, part["step"].to_numpy(), part["value"].to_numpy(dtype=float), label,
                   _CURVE_COLORS[i % len(_CURVE_COLORS)], smooth, pair=len(drawn) == 1)
    if not fig.data:
        return empty_figure(f"no finite values of {', '.join(names)}")
    fig.update_layout(title=title, xaxis_title="step", margin=dict(l=40, r=20, t=50, b=40),
                      legend=dict(orientation="h", y=-0.25))
    _legend_height(fig)
    _scalar_y_axis(fig, df["value"].to_numpy(dtype=float), log_y)
    return fig


def runs_scalar_figure(frames: dict[str, pd.DataFrame], name: str, title: str = "", x: str = "step",
                       smooth: float = 0.0, starts: dict[str, float] | None = None,
                       log_y: bool = False) -> go.Figure:
    """One scalar of several runs on one chart, one colour per run in the order given (the
    run being looked at first): TensorBoard's and W&B's default view. `frames` maps a run's
    name to its `Run.scalars()`. `x="time"`: wall-clock time since each run's start
    (`starts[run]`, such as the manifest's `created_at`; else its first logged scalar).
    Only scalars named exactly `name` are drawn: val/acc and val/accuracy are two scalars.

        runs_scalar_figure({"base": a.scalars(), "norm": b.scalars()}, "val/accuracy", x="time")
    """
    if x not in ("step", "time"):
        raise ValueError(f"x must be 'step' or 'time', got {x!r}")
    series, missing = _run_series(frames, name, x, starts or {})
    if not series:
        return empty_figure(f"no finite values of {name} in {', '.join(frames)}" if frames else "no runs")
    unit, scale = _time_unit(max(float(np.max(xs)) for *_, xs, _ in series)) if x == "time" else ("", 1.0)
    fig = go.Figure()
    several = len(frames) > 1
    for run, i, rank, ranks, xs, ys in series:
        label = html((run if several else name) + (f" (rank {rank})" if ranks > 1 else ""))
        _add_curve(fig, xs / scale, ys, label, _CURVE_COLORS[i % len(_CURVE_COLORS)], smooth,
                   dash=_RANK_DASHES[min(rank, len(_RANK_DASHES) - 1)] if ranks > 1 else "solid", group=run,
                   pair=len(series) == 1)
    fig.update_layout(title=title or html(name), margin=dict(l=40, r=20, t=50, b=40),
                      xaxis_title="step" if x == "step" else f"time since the run started ({unit})",
                      legend=dict(orientation="h", y=-0.25))
    _legend_height(fig)
    if missing:
        fig.add_annotation(text=f"not logged under this name in: {html(', '.join(missing))}", xref="paper",
                           yref="paper",
                           x=1.0, y=1.02, xanchor="right", yanchor="bottom", showarrow=False, font=dict(size=11))
    _scalar_y_axis(fig, np.concatenate([ys for *_, ys in series]), log_y)
    return fig


def runs_scalars_figure(frames: dict[str, pd.DataFrame], names: list[str], x: str = "step",
                        starts: dict[str, float] | None = None, columns: int = 2, smooth: float = 0.0,
                        smoothed: tuple[str, ...] = ("loss",)) -> go.Figure:
    """Several scalars of several runs as small multiples in one chart: a panel per name, each
    with its own y axis (a gradient norm of 5 would flatten an accuracy of 0.97), x axes
    linked (zoom one, all follow), one colour per run across panels, one legend entry per run
    (a click hides that run everywhere). One chart, not one per scalar: a browser draws one
    plotly chart of four panels in about the time of one chart, four charts in four times.
    With `smooth`, the panels of `smoothed` names draw each run's exponential moving average
    over its raw values, faint (TensorBoard's smoothing).

        runs_scalars_figure({"base": a.scalars(), "norm": b.scalars()}, ["loss", "val/accuracy"], smooth=0.6)
    """
    if x not in ("step", "time"):
        raise ValueError(f"x must be 'step' or 'time', got {x!r}")
    if not names:
        return empty_figure("no scalars picked")
    starts = starts or {}
    found = {name: _run_series(frames, name, x, starts) for name in names}
    longest = [float(np.max(xs)) for series, _ in found.values() for *_, xs, _ in series]
    if not longest:
        return empty_figure(f"no finite values of {', '.join(names)} in {', '.join(frames)}")
    unit, scale = _time_unit(max(longest)) if x == "time" else ("", 1.0)
    columns = max(1, min(columns, len(names)))
    rows = math.ceil(len(names) / columns)
    titles = [html(name) + (f" (smoothed {smooth:g}; faint: raw)" if smooth > 0 and name in smoothed else "")
              + (f" (not logged in: {html(', '.join(missing))})" if missing and len(missing) < len(frames) else "")
              for name, (_, missing) in found.items()]
    fig = make_subplots(rows=rows, cols=columns, subplot_titles=titles, shared_xaxes="all",
                        vertical_spacing=min(0.3, 0.45 / rows), horizontal_spacing=0.08)
    several, legended = len(frames) > 1, set()
    for i, (name, (series, _)) in enumerate(found.items()):
        row, col = i // columns + 1, i % columns + 1
        if not series:
            fig.add_annotation(text="no finite values", showarrow=False, row=row, col=col,
                               xref="x domain", yref="y domain", x=0.5, y=0.5)
            continue
        _add_panel(fig, html(name), series, (row, col), x, scale, smooth if name in smoothed else 0.0,
                   several, legended)
        values = np.concatenate([ys for *_, ys in series])
        finite = values[np.isfinite(values)]
        if len(finite) and finite.min() == finite.max() and finite[0] != 0:  # one value: ±10% around it
            fig.update_yaxes(range=sorted([0.9 * float(finite[0]), 1.1 * float(finite[0])]), row=row, col=col)
    fig.update_xaxes(showticklabels=True)  # every panel its steps, not the bottom row alone
    fig.update_xaxes(title_text="step" if x == "step" else f"time since the run started ({unit})", row=rows)
    fig.update_layout(margin=dict(l=40, r=20, t=40, b=40), legend=dict(orientation="h", y=-0.12 - 0.1 / rows),
                      height=60 + 260 * rows + (30 if several else 0))
    fig.update_annotations(font_size=13)
    return fig


def _add_panel(fig: go.Figure, name: str, series: list, at: tuple[int, int], x: str, scale: float, smooth: float,
               several: bool, legended: set) -> None:
    """One panel of `runs_scalars_figure`: a line per run (and rank), a run named in the legend
    once across panels; with `smooth`, its moving average over its raw values drawn faint."""
    row, col = at
    for run, j, rank, ranks, xs, ys in series:
        label = html(run) + (f" (rank {rank})" if ranks > 1 else "")
        color = _CURVE_COLORS[j % len(_CURVE_COLORS)]
        line = dict(color=color, width=2, dash=_RANK_DASHES[min(rank, len(_RANK_DASHES) - 1)] if ranks > 1
                    else "solid")
        mode = "lines" if len(ys) > 3 else "lines+markers"
        if smooth > 0:
            fig.add_scatter(x=xs / scale, y=ys, mode=mode, name=f"{label} · raw", legendgroup=label,
                            showlegend=False, line={**line, "color": rgba(color, 0.3), "width": 1},
                            marker=dict(color=rgba(color, 0.3)), hoverinfo="skip", row=row, col=col)
            ys = ema(ys, smooth)
        fig.add_scatter(x=xs / scale, y=ys, mode=mode, name=label, legendgroup=label,
                        showlegend=several and label not in legended, line=line,
                        hovertemplate=f"{label}<br>{name} %{{y:.4g}}<br>{x} %{{x:.4g}}<extra></extra>",
                        row=row, col=col)
        legended.add(label)


def _run_series(frames: dict[str, pd.DataFrame], name: str, x: str, starts: dict[str, float]) -> tuple[list, list]:
    """(run, colour index, rank, number of ranks, x, y) per run and rank with finite values,
    and the runs without any."""
    series, missing = [], []
    for i, (run, scalars) in enumerate(frames.items()):
        part = scalars[scalars["name"] == name].sort_values("step", kind="stable")
        xs_all = part["step"].to_numpy(dtype=float) if x == "step" else part["wall_time_s"].to_numpy(dtype=float)
        if x == "time" and len(part):
            xs_all = xs_all - float(starts.get(run, np.nanmin(xs_all) if np.isfinite(xs_all).any() else 0.0))
        ys_all = part["value"].to_numpy(dtype=float)
        ranks = part["rank"].to_numpy()
        found = []
        for rank in sorted(set(ranks.tolist())):
            keep = (ranks == rank) & np.isfinite(xs_all) & np.isfinite(ys_all)
            if keep.any():
                found.append((int(rank), xs_all[keep], ys_all[keep]))
        if not found:
            missing.append(run)
        series += [(run, i, rank, len(found), xs, ys) for rank, xs, ys in found]
    return series, missing


def _time_unit(longest_s: float) -> tuple[str, float]:
    if longest_s < 120:
        return "s", 1.0
    return ("min", 60.0) if longest_s < 7200 else ("h", 3600.0)


def _add_curve(fig: go.Figure, x: np.ndarray, y: np.ndarray, label: str, color: str, smooth: float,
               dash: str = "solid", group: str | None = None, pair: bool = True) -> None:
    """One series in one hue: its line, or with `smooth` the raw values faint and thin under
    the smoothed line. `pair`: both named in the legend ("loss · raw", "loss · smoothed");
    else (several series) the smoothed line alone, under the series' label, and the legend
    title says the rest. A click on the legend entry hides the series' raw line with it."""
    mode = "lines" if len(y) > 3 else "lines+markers"  # a point or two has no visible line
    group = group or label
    if smooth <= 0:
        fig.add_scatter(x=x, y=y, mode=mode, name=label, legendgroup=group, line=dict(color=color, width=2, dash=dash))
        return
    fig.add_scatter(x=x, y=y, mode=mode, name=f"{label} · raw", legendgroup=group, showlegend=pair,
                    line=dict(color=rgba(color, 0.3), width=1, dash=dash), marker=dict(color=rgba(color, 0.3)))
    finite = np.isfinite(y)  # one NaN would turn every later smoothed value into NaN
    fig.add_scatter(x=np.asarray(x)[finite], y=ema(y[finite], smooth), mode=mode, legendgroup=group,
                    name=f"{label} · smoothed ({smooth:g})" if pair else label,
                    line=dict(color=color, width=2.5, dash=dash))
    if not pair:
        fig.update_layout(legend_title_text=f"smoothed ({smooth:g}); faint: raw")


def _legend_height(fig: go.Figure, base: int = 320) -> None:
    """Room for a legend of many entries below the chart (three to a row), so that the
    plot itself keeps its height."""
    entries = sum(1 for t in fig.data if t.showlegend is not False)
    fig.update_layout(height=base + 22 * max(0, (entries + 2) // 3 - 1))


def _scalar_y_axis(fig: go.Figure, values: np.ndarray, log_y: bool) -> None:
    finite = values[np.isfinite(values)]
    if not log_y and len(finite) and finite.min() == finite.max() and finite[0] != 0:
        v = float(finite[0])  # a constant (a fixed learning rate): from 0 to twice it, not ±0.5 around it
        fig.update_yaxes(range=sorted([0.0, 2 * v]))
    if log_y:
        # our own ticks: plotly's crowd a decade with minor labels, or repeat one label
        # ("1.2", "1.2") when a format rounds neighbouring ticks alike
        fig.update_yaxes(type="log", **log_ticks(finite))
