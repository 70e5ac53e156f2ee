"""Plotly figure builders. Each takes reader frames and returns a `go.Figure`;
nothing here knows about Streamlit, so a test (or a notebook) can call them directly."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from diagnostics.histograms import common_grid

_BAND_FILL = "rgba(31, 119, 180, {a})"
_LINE = "#1f77b4"
_LABEL_COLOR = "#7f7f7f"
_OUTPUT_COLOR = "#d62728"


def empty_figure(message: str) -> go.Figure:
    """A blank figure that says why it is blank (never an empty chart)."""
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_layout(height=240, margin=dict(l=20, r=20, t=30, b=20))
    return fig


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
        label = name if df["rank"].nunique() == 1 else f"{name} (rank {rank})"
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
        label = (run if several else name) + (f" (rank {rank})" if ranks > 1 else "")
        _add_curve(fig, xs / scale, ys, label, _CURVE_COLORS[i % len(_CURVE_COLORS)], smooth,
                   dash=_RANK_DASHES[min(rank, len(_RANK_DASHES) - 1)] if ranks > 1 else "solid", group=run,
                   pair=len(series) == 1)
    fig.update_layout(title=title or name, margin=dict(l=40, r=20, t=50, b=40),
                      xaxis_title="step" if x == "step" else f"time since the run started ({unit})",
                      legend=dict(orientation="h", y=-0.25))
    _legend_height(fig)
    if missing:
        fig.add_annotation(text=f"not logged under this name in: {', '.join(missing)}", xref="paper", yref="paper",
                           x=1.0, y=1.02, xanchor="right", yanchor="bottom", showarrow=False, font=dict(size=11))
    _scalar_y_axis(fig, np.concatenate([ys for *_, ys in series]), log_y)
    return fig


def runs_scalars_figure(frames: dict[str, pd.DataFrame], names: list[str], x: str = "step",
                        starts: dict[str, float] | None = None, columns: int = 2) -> go.Figure:
    """Several scalars of several runs as small multiples in one chart: a panel per name, each
    with its own y axis (a gradient norm of 5 would flatten an accuracy of 0.97), x axes
    linked (zoom one, all follow), one colour per run across panels, one legend entry per run
    (a click hides that run everywhere). One chart, not one per scalar: a browser draws one
    plotly chart of four panels in about the time of one chart, four charts in four times.

        runs_scalars_figure({"base": a.scalars(), "norm": b.scalars()}, ["val/accuracy", "grad_norm"])
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
    titles = [name + (f" (not logged in: {', '.join(missing)})" if missing and len(missing) < len(frames) else "")
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
        for run, j, rank, ranks, xs, ys in series:
            label = run + (f" (rank {rank})" if ranks > 1 else "")
            fig.add_scatter(x=xs / scale, y=ys, mode="lines" if len(ys) > 3 else "lines+markers", name=label,
                            legendgroup=label, showlegend=several and label not in legended,
                            line=dict(color=_CURVE_COLORS[j % len(_CURVE_COLORS)], width=2,
                                      dash=_RANK_DASHES[min(rank, len(_RANK_DASHES) - 1)] if ranks > 1 else "solid"),
                            hovertemplate=f"{label}<br>{name} %{{y:.4g}}<br>{x} %{{x:.4g}}<extra></extra>",
                            row=row, col=col)
            legended.add(label)
        values = np.concatenate([ys for *_, ys in series])
        finite = values[np.isfinite(values)]
        if len(finite) and finite.min() == finite.max() and finite[0] != 0:
            fig.update_yaxes(range=sorted([0.0, 2 * float(finite[0])]), row=row, col=col)
    fig.update_xaxes(title_text="step" if x == "step" else f"time since the run started ({unit})", row=rows)
    fig.update_layout(margin=dict(l=40, r=20, t=40, b=40), legend=dict(orientation="h", y=-0.12 - 0.1 / rows),
                      height=60 + 260 * rows + (30 if several else 0))
    fig.update_annotations(font_size=13)
    return fig


_CURVE_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
                 "#bcbd22", "#7f7f7f")
_RANK_DASHES = ("solid", "dash", "dot", "dashdot")


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


def _rgba(color: str, alpha: float) -> str:
    r, g, b = (int(color[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r}, {g}, {b}, {alpha})"


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
                    line=dict(color=_rgba(color, 0.3), width=1, dash=dash), marker=dict(color=_rgba(color, 0.3)))
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


def _tick_labels(ticks: list[float]) -> list[str]:
    """Plain numbers where all are (0.001 to 10,000), else all as powers: one format per axis."""
    if all(1e-3 <= t < 1e5 for t in ticks):
        return [f"{t:g}" for t in ticks]
    return [f"{t:.0e}".replace("e-0", "e-").replace("e+0", "e") for t in ticks]


def log_ticks(values: np.ndarray, most: int = 8) -> dict:
    """Tick values and labels for a log axis over positive `values`: 1-2-5 steps, whole
    decades when those are too many, more steps when too few, all in one format, and
    the range padded so the end ticks show. plotly's own log ticks either pile up
    (~10 labels within one decade) or leave a decade's span with a single "1"."""
    positive = values[np.isfinite(values) & (values > 0)]
    if not len(positive):
        return {}
    lo, hi = float(positive.min()), float(positive.max())
    if hi / lo < 1.5:
        lo, hi = lo / 1.5, hi * 1.5
    first, last = math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1
    ticks: list[float] = []
    for mantissas in ((1,), (1, 2, 5), (1, 1.5, 2, 3, 5, 7)):
        ticks = [m * 10.0**k for k in range(first, last + 1) for m in mantissas]
        ticks = [t for t in ticks if lo / 1.05 <= t <= hi * 1.05]
        if len(ticks) >= 3:
            break
    while len(ticks) > most:
        ticks = ticks[::2]
    pad = 0.05 * max(math.log10(hi / lo), 0.3)
    axis_range = [math.log10(lo) - pad, math.log10(hi) + pad]
    if len(ticks) < 3:  # a narrow span (1.2 to 1.9): evenly spaced round values, as on a linear axis
        step = _nice_step((hi - lo) / 4)
        ticks = [k * step for k in range(math.ceil(lo / step), math.floor(hi / step) + 1)]
        decimals = max(0, -math.floor(math.log10(step)))
        return {"tickvals": ticks, "ticktext": [f"{t:.{decimals}f}" for t in ticks], "range": axis_range}
    return {"tickvals": ticks, "ticktext": _tick_labels(ticks), "range": axis_range}


def _nice_step(raw: float) -> float:
    """1, 2 or 5 times a power of ten, at least `raw`."""
    power = 10.0 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw)


def quantile_bands_figure(dist: pd.DataFrame, title: str = "") -> go.Figure:
    """One layer over steps: min–max, 1–99%, 5–95% and 25–75% bands, median and mean
    (TensorBoard's Distributions view)."""
    if dist.empty:
        return empty_figure("no captures for this layer")
    d = dist.groupby("step", as_index=False).agg(
        {"min": "min", "max": "max", "q01": "mean", "q05": "mean", "q25": "mean", "q50": "mean",
         "q75": "mean", "q95": "mean", "q99": "mean", "mean": "mean"})
    fig = go.Figure()
    for lo, hi, alpha, name in (("min", "max", 0.10, "min–max"), ("q01", "q99", 0.18, "1–99%"),
                                ("q05", "q95", 0.28, "5–95%"), ("q25", "q75", 0.45, "25–75%")):
        fig.add_scatter(x=d["step"], y=d[lo], mode="lines", line=dict(width=0), showlegend=False,
                        hoverinfo="skip")
        fig.add_scatter(x=d["step"], y=d[hi], mode="lines", line=dict(width=0), fill="tonexty",
                        fillcolor=_BAND_FILL.format(a=alpha), name=name)
    fig.add_scatter(x=d["step"], y=d["q50"], mode="lines", line=dict(color=_LINE, width=2), name="median")
    fig.add_scatter(x=d["step"], y=d["mean"], mode="lines", line=dict(color="#ff7f0e", width=1, dash="dot"),
                    name="mean")
    fig.update_layout(title=title or "distribution over steps", xaxis_title="step", yaxis_title="value",
                      height=340, margin=_OVER_STEPS_MARGIN, legend=dict(orientation="h", y=-0.25))
    fig.update_xaxes(range=_step_range(d["step"]))
    framed = _inner_span(d)
    if framed is not None:
        (lo, hi), (outer_lo, outer_hi) = framed
        fig.update_yaxes(range=[lo, hi])
        fig.add_annotation(text=f"min–max ({outer_lo:.3g} to {outer_hi:.3g}) runs off the chart: "
                                "Autoscale in the chart's toolbar shows all", xref="paper", yref="paper",
                           x=1.0, y=1.02, xanchor="right", yanchor="bottom", showarrow=False, font=dict(size=11))
    return fig


def _inner_span(d: pd.DataFrame) -> tuple[tuple[float, float], tuple[float, float]] | None:
    """For heavy tails (gradients: max ~100x q99), which would flatten every band but
    min–max into a line at 0: the 1–99% span with room to draw in, and the full one;
    None when the tails are light."""
    if not {"q01", "q99", "min", "max"} <= set(d.columns) or d.empty:
        return None
    inner_lo, inner_hi = float(d["q01"].min()), float(d["q99"].max())
    outer_lo, outer_hi = float(d["min"].min()), float(d["max"].max())
    span = inner_hi - inner_lo
    if not (np.isfinite([inner_lo, inner_hi, outer_lo, outer_hi]).all() and span > 0
            and outer_hi - outer_lo > 4 * span):
        return None
    pad = 0.3 * span
    return (inner_lo - pad, inner_hi + pad), (outer_lo, outer_hi)


def histogram_heatmap_figure(dist: pd.DataFrame, title: str = "", bins: int = 64) -> go.Figure:
    """One layer's histograms over steps on a common grid, coloured by log share of
    values (fastai's "colorful dimension", TensorBoard's Histograms seen from above)."""
    if dist.empty:
        return empty_figure("no captures for this layer")
    d = dist.sort_values("step")
    d = d[d["rank"] == d["rank"].min()] if "rank" in d else d
    # the full span even with heavy tails: a stored histogram has 64 bins over min..max,
    # so framing its body would only magnify two or three of them (the bands show the body)
    edges, frac = common_grid(d, bins)
    centres = (edges[:-1] + edges[1:]) / 2
    with np.errstate(divide="ignore"):
        z = np.log10(frac.T + 1e-6)
    fig = go.Figure(go.Heatmap(
        x=d["step"].to_numpy(), y=centres, z=z, colorscale="Viridis", zmin=-6, zmax=0,
        colorbar=dict(title="log10 share", tickvals=[-6, -4, -2, 0], ticktext=["≤1e-6", "1e-4", "1e-2", "1"],
                      x=1.01, xanchor="left", thickness=14),
        hovertemplate="step %{x}<br>value %{y:.3g}<br>log10 share %{z:.2f}<extra></extra>",
    ))
    fig.update_layout(title=title or "histogram over steps", xaxis_title="step", yaxis_title="value",
                      height=340, margin=_OVER_STEPS_MARGIN)
    fig.update_xaxes(range=_step_range(d["step"]))
    return fig


# The quantile bands and the heatmap of one layer are drawn one above the other with the same
# margins (the colorbar fits in the right one) and the same step range, so a step lines up.
_OVER_STEPS_MARGIN = dict(l=70, r=110, t=50, b=40)


def _step_range(steps: pd.Series) -> list[float]:
    lo, hi = float(steps.min()), float(steps.max())
    return [lo - 0.5, hi + 0.5] if hi > lo else [lo - 1, hi + 1]


def layers_at_step_figure(dist: pd.DataFrame, layer_order: list[str], title: str = "",
                          layer_types: dict[str, str] | None = None) -> go.Figure:
    """All layers side by side at one step: a box per layer (5–95% whiskers, quartile box,
    median) above, and each layer's standard deviation on a log scale below, where
    vanishing or exploding scale across depth shows as a slope. `layer_types` (name →
    module type, from the manifest's model summary) labels each layer "name · type"."""
    if dist.empty:
        return empty_figure("no captures at this step")
    d = dist.groupby("layer", as_index=False).agg(
        {"q05": "mean", "q25": "mean", "q50": "mean", "q75": "mean", "q95": "mean", "std": "mean"})
    order = [l for l in layer_order if l in set(d["layer"])] + sorted(set(d["layer"]) - set(layer_order))
    d = d.set_index("layer").loc[order].reset_index()
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.65, 0.35], vertical_spacing=0.06)
    fig.add_trace(go.Box(
        x=d["layer"], q1=d["q25"], median=d["q50"], q3=d["q75"], lowerfence=d["q05"], upperfence=d["q95"],
        name="5/25/50/75/95%", marker_color=_LINE, showlegend=False,
    ), row=1, col=1)
    std = d["std"].where(d["std"] > 0)
    fig.add_trace(go.Scatter(x=d["layer"], y=std, mode="lines+markers", name="std", line=dict(color="#ff7f0e"),
                             showlegend=False), row=2, col=1)
    fig.update_yaxes(title_text="value", row=1, col=1)
    fig.update_yaxes(title_text="std (log)", type="log", row=2, col=1, **log_ticks(std.dropna().to_numpy()))
    # names as categories: "0".."11" (an nn.Sequential's layers) would be read as numbers
    # and labelled every other one
    fig.update_xaxes(type="category", row=1, col=1)
    fig.update_xaxes(type="category", tickangle=-45, row=2, col=1, tickvals=order,
                     ticktext=[layer_label(name, layer_types) for name in order])
    fig.update_layout(title=title or "all layers at one step", height=560, margin=dict(l=60, r=20, t=50, b=40))
    return fig


def layer_label(name: str, layer_types: dict[str, str] | None) -> str:
    """'conv1 · Conv2d': a layer's (or a parameter's) name with its module's type, when known.
    A parameter ('0.weight') takes the type of the module that owns it ('0')."""
    types = layer_types or {}
    owner = name if name in types else name.rpartition(".")[0]
    return f"{name} · {types[owner]}" if owner in types else name


def pooled_class_counts(rows: pd.DataFrame) -> pd.Series:
    """Class histograms of several steps summed into one (a row with `hist_counts`)."""
    counts = np.sum([np.asarray(c, dtype=np.int64) for c in rows["hist_counts"]], axis=0)
    return pd.Series({"hist_counts": counts, "count": int(counts.sum())})


def class_distribution_figure(output_row: pd.Series, label_row: pd.Series,
                              class_names: list[str] | None = None, title: str = "") -> go.Figure:
    """Predicted-class shares next to label shares for one step (or summed steps)."""
    pred = np.asarray(output_row["hist_counts"], dtype=float)
    lab = np.asarray(label_row["hist_counts"], dtype=float)
    n = max(len(pred), len(lab))
    names = class_names if class_names and len(class_names) == n else [str(i) for i in range(n)]
    fig = go.Figure()
    fig.add_bar(x=names, y=lab / max(lab.sum(), 1), name="labels", marker_color=_LABEL_COLOR)
    fig.add_bar(x=names, y=pred / max(pred.sum(), 1), name="predictions", marker_color=_OUTPUT_COLOR)
    fig.update_layout(barmode="group", title=title or "predicted vs label class shares", xaxis_title="class",
                      yaxis_title="share of samples", height=360, margin=dict(l=40, r=20, t=50, b=40),
                      legend=dict(orientation="h", y=-0.2), xaxis_type="category")
    return fig


def value_distribution_figure(output_row: pd.Series, label_row: pd.Series, title: str = "") -> go.Figure:
    """The model's output values overlaid on the labels' (same bins, recorded together)."""
    fig = go.Figure()
    for row, name, color in ((label_row, "labels", _LABEL_COLOR), (output_row, "outputs", _OUTPUT_COLOR)):
        counts = np.asarray(row["hist_counts"], dtype=float)
        edges = np.linspace(row["hist_min"], row["hist_max"], len(counts) + 1)
        fig.add_bar(x=(edges[:-1] + edges[1:]) / 2, y=counts / max(counts.sum(), 1), width=np.diff(edges),
                    name=name, marker_color=color, opacity=0.55)
    fig.update_layout(barmode="overlay", title=title or "output vs label values", xaxis_title="value",
                      yaxis_title="share of samples", height=360, margin=dict(l=40, r=20, t=50, b=40),
                      legend=dict(orientation="h", y=-0.2))
    return fig


def class_share_gap_figure(outputs: pd.DataFrame, labels: pd.DataFrame,
                           class_names: list[str] | None = None) -> go.Figure:
    """Over steps: predicted share minus label share per class (red: over-predicted,
    blue: under-predicted)."""
    if outputs.empty or labels.empty:
        return empty_figure("no class histograms recorded")
    merged = outputs[["step", "hist_counts"]].merge(labels[["step", "hist_counts"]], on="step",
                                                    suffixes=("_out", "_lab")).sort_values("step")
    pred = np.stack([np.asarray(c, float) / max(np.sum(c), 1) for c in merged["hist_counts_out"]])
    lab = np.stack([np.asarray(c, float) / max(np.sum(c), 1) for c in merged["hist_counts_lab"]])
    gap = (pred - lab).T
    n = gap.shape[0]
    names = class_names if class_names and len(class_names) == n else [str(i) for i in range(n)]
    lim = max(float(np.abs(gap).max()), 1e-3)
    fig = go.Figure(go.Heatmap(
        x=merged["step"], y=names, z=gap, colorscale="RdBu_r", zmin=-lim, zmax=lim,
        colorbar=dict(title="pred − label"),
        hovertemplate="step %{x}<br>class %{y}<br>pred − label share %{z:+.3f}<extra></extra>",
    ))
    fig.update_layout(title="predicted minus label share, per class over steps", xaxis_title="step",
                      yaxis_title="class", yaxis_type="category", height=360, margin=dict(l=40, r=20, t=50, b=40))
    return fig


def value_bands_figure(outputs: pd.DataFrame, labels: pd.DataFrame) -> go.Figure:
    """Over steps: 5–95% band and median of the outputs against those of the labels."""
    if outputs.empty or labels.empty:
        return empty_figure("no output values recorded")
    fig = go.Figure()
    for d, name, rgb in ((labels, "labels", "127,127,127"), (outputs, "outputs", "214,39,40")):
        d = d.sort_values("step")
        fig.add_scatter(x=d["step"], y=d["q05"], mode="lines", line=dict(width=0), showlegend=False, hoverinfo="skip")
        fig.add_scatter(x=d["step"], y=d["q95"], mode="lines", line=dict(width=0), fill="tonexty",
                        fillcolor=f"rgba({rgb},0.25)", name=f"{name} 5–95%")
        fig.add_scatter(x=d["step"], y=d["q50"], mode="lines", line=dict(color=f"rgb({rgb})"), name=f"{name} median")
    fig.update_layout(title="outputs vs labels over steps", xaxis_title="step", yaxis_title="value", height=360,
                      margin=dict(l=40, r=20, t=50, b=40), legend=dict(orientation="h", y=-0.2))
    return fig


def update_ratio_figure(ratios: pd.DataFrame, layer: str) -> go.Figure:
    """Update-to-weight ratio of one parameter over steps (log scale), with the usual
    healthy band around 1e-3 shaded."""
    d = ratios[(ratios["layer"] == layer) & (ratios["ratio"] > 0)].sort_values("step")
    if d.empty:
        return empty_figure(f"no non-zero updates recorded for {layer}")
    fig = go.Figure()
    fig.add_hrect(y0=1e-4, y1=1e-2, fillcolor="rgba(44,160,44,0.12)", line_width=0)
    # an annotation's y on a log axis is log10 of the value (hrect's own label landed at 10**0.01)
    fig.add_annotation(x=0, xref="paper", y=-2, yref="y", text="usual range", showarrow=False,
                       xanchor="left", yanchor="top", font=dict(size=11, color="#2c7a2c"))
    fig.add_scatter(x=d["step"], y=d["ratio"], mode="lines+markers", name="‖update‖ / ‖weight‖")
    fig.update_yaxes(type="log", title_text="‖update‖ / ‖weight‖", dtick=1, tickformat=".0e")
    fig.update_layout(title=f"update-to-weight ratio of {layer}", xaxis_title="step", height=320,
                      margin=dict(l=40, r=20, t=50, b=40))
    return fig


# -- regression ---------------------------------------------------------------------------

_REGION_COLORS = {"easy": "#2ca02c", "ambiguous": "#ff7f0e", "hard-to-learn": "#d62728"}


def residual_map_figure(dynamics: pd.DataFrame, regions: pd.Series, thresholds: tuple[float, float] | None = None,
                        unit: str | None = None) -> go.Figure:
    """The regression data map: each training sample's mean |residual| over training against
    the standard deviation of its residual, both in the target's `unit`, coloured by region
    (`dynamics.residual_map_regions`), with the region thresholds (error, variability) as
    dashed lines when given.

        dyn = run.sample_dynamics("train"); cut = residual_share_thresholds(dyn)
        residual_map_figure(dyn, residual_map_regions(dyn, *cut), cut, unit="breaths/min")
    """
    ok = dynamics["mean_abs_residual"].notna() & dynamics["residual_std"].notna() if len(dynamics) else []
    if not len(dynamics) or not ok.any():
        return empty_figure("no regression dynamics: log residuals with run.log_batch(outputs, targets, ids=...)")
    suffix = f" ({unit})" if unit else ""
    fig = go.Figure()
    for region, color in _REGION_COLORS.items():
        d = dynamics[ok & (regions == region).to_numpy()]
        fig.add_trace(go.Scattergl(
            x=d["residual_std"], y=d["mean_abs_residual"], mode="markers", name=f"{region} ({len(d):,})",
            marker=dict(color=color, size=5, opacity=0.7),
            customdata=np.column_stack([d["sample_id"].astype(str), d["label"], d["prediction"]]),
            hovertemplate="sample %{customdata[0]}<br>target %{customdata[1]:.3g}, latest prediction "
                          "%{customdata[2]:.3g}<br>residual std %{x:.3g}<br>mean |residual| %{y:.3g}<extra></extra>"))
    if thresholds is not None:
        error, variability = thresholds
        if math.isfinite(variability):
            fig.add_vline(x=variability, line=dict(color=_LABEL_COLOR, dash="dash"))
        if math.isfinite(error):
            fig.add_shape(type="line", x0=0, x1=variability if math.isfinite(variability) else 1, y0=error, y1=error,
                          xref="x" if math.isfinite(variability) else "paper",
                          line=dict(color=_LABEL_COLOR, dash="dash"))
    fig.update_layout(title="data map: mean |residual| vs its variability over training",
                      xaxis_title=f"variability: std of the residual over training{suffix}",
                      yaxis_title=f"mean |residual| over training{suffix}", height=460,
                      margin=dict(l=40, r=20, t=50, b=40), legend=dict(orientation="h", y=-0.2))
    fig.update_xaxes(rangemode="tozero")
    fig.update_yaxes(rangemode="tozero")
    return fig
