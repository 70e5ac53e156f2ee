"""Distributions of one layer over steps (quantile bands, histogram heatmap), of every layer
at one step, a parameter's update-to-weight ratio, and one layer of several runs side by
side (`runs_quantiles_figure`, `runs_histograms_figure`)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.colors
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from diagnostics.figures.common import BLUE, empty_figure, log_ticks, rgba
from diagnostics.histograms import common_grid
from diagnostics.text import html

_BAND_FILL = "rgba(31, 119, 180, {a})"
# The quantile bands and the heatmap of one layer are drawn one above the other with the same
# margins (the colorbar fits in the right one) and the same step range, so a step lines up.
_OVER_STEPS_MARGIN = dict(l=70, r=110, t=50, b=40)


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
    fig.add_scatter(x=d["step"], y=d["q50"], mode="lines", line=dict(color=BLUE, width=2), name="median")
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
        x=d["layer"].map(html), q1=d["q25"], median=d["q50"], q3=d["q75"], lowerfence=d["q05"], upperfence=d["q95"],
        name="5/25/50/75/95%", marker_color=BLUE, showlegend=False,
    ), row=1, col=1)
    std = d["std"].where(d["std"] > 0)
    fig.add_trace(go.Scatter(x=d["layer"].map(html), y=std, mode="lines+markers", name="std",
                             line=dict(color="#ff7f0e"),
                             showlegend=False), row=2, col=1)
    fig.update_yaxes(title_text="value", row=1, col=1)
    fig.update_yaxes(title_text="std (log)", type="log", row=2, col=1, **log_ticks(std.dropna().to_numpy()))
    # names as categories: "0".."11" (an nn.Sequential's layers) would be read as numbers
    # and labelled every other one
    fig.update_xaxes(type="category", row=1, col=1)
    fig.update_xaxes(type="category", tickangle=-45, row=2, col=1, tickvals=[html(name) for name in order],
                     ticktext=[html(layer_label(name, layer_types)) for name in order])
    fig.update_layout(title=title or "all layers at one step", height=560, margin=dict(l=60, r=20, t=50, b=40))
    return fig


def layer_label(name: str, layer_types: dict[str, str] | None) -> str:
    """'conv1 · Conv2d': a layer's (or a parameter's) name with its module's type, when known.
    A parameter ('0.weight') takes the type of the module that owns it ('0')."""
    types = layer_types or {}
    owner = name if name in types else name.rpartition(".")[0]
    return f"{name} · {types[owner]}" if owner in types else name


def update_ratio_figure(ratios: pd.DataFrame, layer: str) -> go.Figure:
    """Update-to-weight ratio of one parameter over steps (log scale), with the usual
    healthy band around 1e-3 shaded."""
    d = ratios[(ratios["layer"] == layer) & (ratios["ratio"] > 0)].sort_values("step")
    if d.empty:
        return empty_figure(f"no non-zero updates recorded for {html(layer)}")
    fig = go.Figure()
    fig.add_hrect(y0=1e-4, y1=1e-2, fillcolor="rgba(44,160,44,0.12)", line_width=0)
    # an annotation's y on a log axis is log10 of the value (hrect's own label landed at 10**0.01)
    fig.add_annotation(x=0, xref="paper", y=-2, yref="y", text="usual range", showarrow=False,
                       xanchor="left", yanchor="top", font=dict(size=11, color="#2c7a2c"))
    fig.add_scatter(x=d["step"], y=d["ratio"], mode="lines+markers", name="‖update‖ / ‖weight‖")
    fig.update_yaxes(type="log", title_text="‖update‖ / ‖weight‖", dtick=1, tickformat=".0e")
    fig.update_layout(title=f"update-to-weight ratio of {html(layer)}", xaxis_title="step", height=320,
                      margin=dict(l=40, r=20, t=50, b=40))
    return fig


# -- one layer of several runs ----------------------------------------------------------------

RUN_COLORS = tuple(plotly.colors.qualitative.D3)  # the Overview's overlay order: the run looked at first
# The band drawn around each run's median, the first pair every run recorded: the 5–95% band
# of the single-run chart, narrower or wider quantiles for summaries that lack it.
_BANDS = (("q05", "q95", "5–95%"), ("q25", "q75", "25–75%"), ("q01", "q99", "1–99%"), ("min", "max", "min–max"))


def _per_step(dist: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """One row per step: the mean over ranks (as the single-run chart pools them)."""
    finite = dist[columns].apply(pd.to_numeric, errors="coerce")
    return finite.assign(step=dist["step"].to_numpy()).groupby("step", as_index=False).mean().sort_values("step")


def _band_of(frames: list[pd.DataFrame]) -> tuple[str, str, str] | None:
    for lo, hi, label in _BANDS:
        if all({lo, hi} <= set(f.columns) and np.isfinite(f[[lo, hi]].to_numpy(dtype=float)).any() for f in frames):
            return lo, hi, label
    return None


def runs_quantiles_figure(frames: dict[str, pd.DataFrame], title: str = "") -> go.Figure:
    """One layer of several runs on one chart: each run's median over steps with its 5–95%
    band (or the widest quantiles every run has), one colour per run in the order given (the
    run being looked at first), on one step axis, so step 500 of each run lines up.
    `frames` maps a run's name to its `Run.distributions(kind, layers=[layer])`; a run
    without captures is left out, and said in the legend title.

        runs_quantiles_figure({"base": a.distributions("gradient", ["conv1"]),
                               "norm": b.distributions("gradient", ["conv1"])})
    """
    drawn = {html(name): f for name, f in frames.items() if not f.empty}
    if not drawn:
        return empty_figure("no run recorded this layer")
    band = _band_of(list(drawn.values()))
    fig = go.Figure()
    for i, (name, dist) in enumerate(drawn.items()):
        color = RUN_COLORS[i % len(RUN_COLORS)]
        d = _per_step(dist, ["q50", *band[:2]] if band else ["q50"])
        if band:
            lo, hi, label = band
            # faint edges in the run's colour: where bands overlap, each one's extent still shows
            edge = dict(width=1, color=rgba(color, 0.55))
            fig.add_scatter(x=d["step"], y=d[lo], mode="lines", line=edge, legendgroup=name,
                            showlegend=False, hoverinfo="skip")
            fig.add_scatter(x=d["step"], y=d[hi], mode="lines", line=edge, fill="tonexty",
                            fillcolor=rgba(color, 0.15), legendgroup=name, showlegend=False, name=f"{name} {label}",
                            hovertemplate=f"{name}<br>step %{{x}}<br>{hi} %{{y:.4g}}<extra></extra>")
        fig.add_scatter(x=d["step"], y=d["q50"], mode="lines+markers" if len(d) <= 40 else "lines", marker=dict(size=4),
                        line=dict(color=color, width=2), name=name, legendgroup=name,
                        hovertemplate=f"{name}<br>step %{{x}}<br>median %{{y:.4g}}<extra></extra>")
    missing = [html(name) for name in frames if html(name) not in drawn]
    legend_title = f"median{f' and {band[2]} band' if band else ''}" + (
        f" (no captures: {', '.join(missing)})" if missing else "")
    steps = pd.concat([f["step"] for f in drawn.values()])
    fig.update_layout(title=title or "one layer of several runs", xaxis_title="step", yaxis_title="value",
                      height=380, margin=_OVER_STEPS_MARGIN,
                      legend=dict(orientation="h", y=-0.22, title_text=legend_title))
    fig.update_xaxes(range=_step_range(steps))
    return fig


def runs_histograms_figure(frames: dict[str, pd.DataFrame], title: str = "", bins: int = 64,
                           columns: int = 3) -> go.Figure:
    """One layer's histogram heatmap per run, side by side (at most `columns` a row) on one
    value grid and one colour scale, with the step and value axes shared: where a run's
    values spread or collapse shows at the same height and step in each panel."""
    drawn = {html(name): (f[f["rank"] == f["rank"].min()] if "rank" in f else f).sort_values("step")
             for name, f in frames.items() if not f.empty}
    if not drawn:
        return empty_figure("no run recorded this layer")
    edges, frac = common_grid(pd.concat(drawn.values(), ignore_index=True), bins)
    centres = (edges[:-1] + edges[1:]) / 2
    rows = -(-len(drawn) // max(1, columns))
    cols = -(-len(drawn) // rows)  # balanced: 4 runs as 2 × 2, not 3 + 1
    fig = make_subplots(rows=rows, cols=cols, shared_xaxes="all", shared_yaxes="all", subplot_titles=list(drawn),
                        horizontal_spacing=0.03, vertical_spacing=0.12 if rows > 1 else 0.0)
    start = 0
    for i, (name, d) in enumerate(drawn.items()):
        with np.errstate(divide="ignore"):
            z = np.log10(frac[start:start + len(d)].T + 1e-6)
        start += len(d)
        fig.add_trace(go.Heatmap(
            x=d["step"].to_numpy(), y=centres, z=z, colorscale="Viridis", zmin=-6, zmax=0, showscale=i == 0,
            colorbar=dict(title="log10 share", tickvals=[-6, -4, -2, 0], ticktext=["≤1e-6", "1e-4", "1e-2", "1"],
                          thickness=14),
            name=name, hovertemplate=f"{name}<br>step %{{x}}<br>value %{{y:.3g}}<br>log10 share %{{z:.2f}}"
                                     "<extra></extra>"), row=i // cols + 1, col=i % cols + 1)
    # both ranges set: plotly's autorange of matched axes under heatmaps falls back to −1..4
    fig.update_xaxes(range=_step_range(pd.concat([d["step"] for d in drawn.values()])))
    fig.update_yaxes(range=[float(edges[0]), float(edges[-1])])
    fig.update_xaxes(title_text="step", row=rows)
    fig.update_yaxes(title_text="value", col=1)
    fig.update_layout(title=title or "histograms over steps, run by run", height=120 + 260 * rows,
                      margin=dict(l=70, r=20, t=70, b=40))
    return fig
