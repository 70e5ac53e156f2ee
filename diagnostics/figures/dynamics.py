"""The data maps of training dynamics (`diagnostics.dynamics`): confidence against
variability per training sample (classification, Swayamdipta et al. 2020), mean |residual|
against its variability (regression)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from diagnostics.figures.common import GREY, empty_figure
from diagnostics.text import html

_REGION_COLORS = {"easy": "#2ca02c", "ambiguous": "#ff7f0e", "hard-to-learn": "#d62728"}
_REGION_SYMBOLS = {"easy": "circle", "ambiguous": "diamond", "hard-to-learn": "triangle-up"}


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
            customdata=np.column_stack([d["sample_id"].astype(str), d["label"], d["prediction"],
                                        [html(i) for i in d["sample_id"].astype(str)]]),
            hovertemplate="sample %{customdata[3]}<br>target %{customdata[1]:.3g}, latest prediction "
                          "%{customdata[2]:.3g}<br>residual std %{x:.3g}<br>mean |residual| %{y:.3g}<extra></extra>"))
    if thresholds is not None:
        error, variability = thresholds
        if math.isfinite(variability):
            fig.add_vline(x=variability, line=dict(color=GREY, dash="dash"))
        if math.isfinite(error):
            fig.add_shape(type="line", x0=0, x1=variability if math.isfinite(variability) else 1, y0=error, y1=error,
                          xref="x" if math.isfinite(variability) else "paper",
                          line=dict(color=GREY, dash="dash"))
    fig.update_layout(title="data map: mean |residual| vs its variability over training",
                      xaxis_title=f"variability: std of the residual over training{suffix}",
                      yaxis_title=f"mean |residual| over training{suffix}", height=460,
                      margin=dict(l=40, r=20, t=50, b=40), legend=dict(orientation="h", y=-0.2))
    fig.update_xaxes(rangemode="tozero")
    fig.update_yaxes(rangemode="tozero")
    return fig


def data_map_figure(dynamics: pd.DataFrame, regions: pd.Series | None = None,
                    thresholds: tuple[float, float] | None = None) -> go.Figure:
    """Dataset cartography (Swayamdipta et al. 2020): variability against confidence, one
    point per training sample, coloured by how often it was predicted correctly. With
    `regions` (`dynamics.data_map_regions`), each region gets its own marker symbol and a
    legend entry with its count below the plot, where no point can cover its name; with
    `thresholds` (confidence, variability), the region borders as dashed lines.

        m = data_map(dyn); data_map_figure(dyn, m.regions, m.thresholds)
    """
    if dynamics.empty:
        return empty_figure("no training dynamics: pass ids to run.log_batch(outputs, labels, ids=...)")
    fig = go.Figure()
    groups = [("", np.ones(len(dynamics), dtype=bool))] if regions is None else \
        [(r, (regions == r).to_numpy()) for r in _REGION_SYMBOLS]
    for region, keep in groups:
        d = dynamics[keep]
        fig.add_trace(go.Scattergl(
            x=d["variability"], y=d["confidence"], mode="markers", showlegend=False, legendgroup=region,
            marker=dict(color=d["correct_frac"], coloraxis="coloraxis", size=5, opacity=0.75,
                        symbol=_REGION_SYMBOLS.get(region, "circle")),
            customdata=np.stack([d["sample_id"], [region] * len(d), [html(i) for i in d["sample_id"].astype(str)]],
                                axis=1),
            hovertemplate="sample %{customdata[2]} %{customdata[1]}<br>variability %{x:.3f}<br>"
                          "confidence %{y:.3f}<extra></extra>"))
        if region:  # a grey key: the points' own colours say "correct", not the region
            fig.add_trace(go.Scattergl(x=[None], y=[None], mode="markers", legendgroup=region,
                                       name=f"{region} ({int(keep.sum()):,})",
                                       marker=dict(color=GREY, size=8, symbol=_REGION_SYMBOLS[region])))
    if thresholds is not None and all(map(math.isfinite, thresholds)):
        confidence, variability = thresholds
        fig.add_vline(x=variability, line=dict(color=GREY, dash="dash"))
        fig.add_shape(type="line", x0=0, x1=variability, y0=confidence, y1=confidence,
                      line=dict(color=GREY, dash="dash"))
    fig.update_layout(title="data map: confidence vs variability over training", xaxis_title="variability",
                      yaxis_title="confidence (mean probability of the label)", yaxis_range=[0, 1],
                      height=460, margin=dict(l=40, r=20, t=50, b=40), dragmode="lasso",
                      coloraxis=dict(colorscale="RdYlGn", cmin=0, cmax=1, colorbar=dict(title="correct")),
                      legend=dict(orientation="h", y=-0.2, title_text="region"))
    return fig
