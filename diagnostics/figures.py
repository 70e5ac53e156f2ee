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
    """Lines of some scalars over steps (one line per name and rank), optionally smoothed."""
    df = scalars[scalars["name"].isin(names)]
    if df.empty:
        return empty_figure(f"no {', '.join(names)} recorded")
    fig = go.Figure()
    for (name, rank), part in df.groupby(["name", "rank"], sort=True):
        label = name if df["rank"].nunique() == 1 else f"{name} (rank {rank})"
        y = part["value"].to_numpy(dtype=float)
        if not np.isfinite(y).any():  # e.g. grad_clipped under DDP (unknown): no line to draw
            continue
        mode = "lines" if len(y) > 3 else "lines+markers"  # a point or two has no visible line
        if smooth > 0:
            fig.add_scatter(x=part["step"], y=y, mode=mode, name=f"{label} (raw)", opacity=0.3,
                            showlegend=False, line=dict(width=1))
            y = ema(y, smooth)
        fig.add_scatter(x=part["step"], y=y, mode=mode, name=label)
    if not fig.data:
        return empty_figure(f"no finite values of {', '.join(names)}")
    fig.update_layout(title=title, xaxis_title="step", height=320, margin=dict(l=40, r=20, t=50, b=40),
                      legend=dict(orientation="h", y=-0.25))
    finite = df["value"].to_numpy(dtype=float)
    finite = finite[np.isfinite(finite)]
    if not log_y and len(finite) and finite.min() == finite.max() and finite[0] != 0:
        v = float(finite[0])  # a constant (a fixed learning rate): from 0 to twice it, not ±0.5 around it
        fig.update_yaxes(range=sorted([0.0, 2 * v]))
    if log_y:
        values = df["value"].to_numpy(dtype=float)
        positive = values[np.isfinite(values) & (values > 0)]
        decades = np.log10(positive.max() / positive.min()) if len(positive) else 0.0
        # decades only when the data spans some: plotly's minor labels (2, 5) crowd otherwise
        fig.update_yaxes(type="log", **({"dtick": 1} if decades >= 1 else {"tickformat": ".2g"}))
    return fig


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
    return {"tickvals": ticks, "ticktext": _tick_labels(ticks),
            "range": [math.log10(lo) - pad, math.log10(hi) + pad]}


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
                      height=360, margin=dict(l=40, r=20, t=50, b=40), legend=dict(orientation="h", y=-0.2))
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
        colorbar=dict(title="log10 share", tickvals=[-6, -4, -2, 0], ticktext=["≤1e-6", "1e-4", "1e-2", "1"]),
        hovertemplate="step %{x}<br>value %{y:.3g}<br>log10 share %{z:.2f}<extra></extra>",
    ))
    fig.update_layout(title=title or "histogram over steps", xaxis_title="step", yaxis_title="value",
                      height=360, margin=dict(l=40, r=20, t=50, b=40))
    return fig


def layers_at_step_figure(dist: pd.DataFrame, layer_order: list[str], title: str = "") -> go.Figure:
    """All layers side by side at one step: a box per layer (5–95% whiskers, quartile box,
    median) above, and each layer's standard deviation on a log scale below, where
    vanishing or exploding scale across depth shows as a slope."""
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
    fig.update_xaxes(type="category", tickangle=-45, row=2, col=1)
    fig.update_layout(title=title or "all layers at one step", height=520, margin=dict(l=40, r=20, t=50, b=40))
    return fig


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
