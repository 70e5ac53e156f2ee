"""Plotly figures for error review: confusion, reliability, per-class metrics, residuals,
predicted vs true, slices.

Each builder takes a frame from `diagnostics.errors` / `diagnostics.slices` and returns a
`go.Figure`; empty input gives a figure that says so instead of raising, so a page can always
draw what it gets.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from diagnostics.figures.common import BLUE, GREY, MARGIN, RED, WEBGL_POINTS, empty_figure
from diagnostics.text import html


def confusion_figure(matrix: np.ndarray, class_names: Sequence[str] | None = None) -> go.Figure:
    """Heatmap of a confusion matrix (rows true, columns predicted): the colour is the row share
    (recall per cell, so rare classes read as well as common ones), the text the count, and
    each cell's customdata is (true, predicted) so a click can open `confusion_cell`.

        confusion_figure(confusion_matrix(samples, 4), ["CNV", "DME", "DRUSEN", "NORMAL"])
    """
    m = np.asarray(matrix)
    if m.size == 0 or m.ndim != 2:
        return empty_figure("no classified samples")
    k = m.shape[0]
    names = [html(c) for c in class_names] if class_names is not None else [str(i) for i in range(k)]
    rows = m.sum(axis=1, keepdims=True)
    share = np.divide(m, rows, out=np.zeros(m.shape, dtype=float), where=rows > 0)
    true_idx, pred_idx = np.meshgrid(np.arange(k), np.arange(m.shape[1]), indexing="ij")
    fig = go.Figure(go.Heatmap(
        z=share, x=names[:m.shape[1]], y=names[:k], zmin=0, zmax=1, colorscale="Blues",
        text=m, texttemplate="%{text}", customdata=np.dstack([true_idx, pred_idx]),
        colorbar=dict(title="row share"),
        hovertemplate="true %{y}<br>predicted %{x}<br>%{text} samples (%{z:.1%} of the row)<extra></extra>"))
    fig.update_layout(title="confusion matrix", xaxis_title="predicted", yaxis_title="true",
                      height=max(320, 60 * k + 120), margin=MARGIN)
    fig.update_xaxes(type="category", side="bottom")
    fig.update_yaxes(type="category", autorange="reversed")
    return fig


def reliability_figure(calibration_frame: pd.DataFrame, ece: float) -> go.Figure:
    """Reliability diagram: accuracy per confidence bin against the diagonal of perfect
    calibration (bars below the line = overconfident), with the bin counts underneath.

        table, ece = calibration(samples); reliability_figure(table, ece)
    """
    cal = calibration_frame
    if cal is None or cal.empty or cal["count"].sum() == 0:
        return empty_figure("no samples with a confidence")
    centre = (cal["bin_lo"] + cal["bin_hi"]) / 2
    width = cal["bin_hi"] - cal["bin_lo"]
    hover = np.column_stack([cal["count"], cal["mean_confidence"], cal["bin_lo"], cal["bin_hi"]])
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.72, 0.28], vertical_spacing=0.06)
    fig.add_bar(x=centre, y=cal["accuracy"], width=width, name="accuracy", marker_color=BLUE,
                customdata=hover, row=1, col=1,
                hovertemplate="confidence %{customdata[2]:.2f}–%{customdata[3]:.2f}<br>accuracy %{y:.1%}"
                              "<br>mean confidence %{customdata[1]:.1%}<br>%{customdata[0]} samples<extra></extra>")
    fig.add_scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect calibration",
                    line=dict(color=GREY, dash="dash"), row=1, col=1)
    fig.add_bar(x=centre, y=cal["count"], width=width, name="samples", marker_color=GREY,
                showlegend=False, row=2, col=1, hovertemplate="%{y} samples<extra></extra>")
    fig.update_yaxes(title_text="accuracy", range=[0, 1], row=1, col=1)
    fig.update_yaxes(title_text="samples", row=2, col=1)
    fig.update_xaxes(title_text="confidence", range=[0, 1], row=2, col=1)
    fig.update_layout(title=f"reliability (ECE {ece:.3f})", height=460, margin=MARGIN, bargap=0.05,
                      legend=dict(orientation="h", y=-0.2))
    return fig


def class_metrics_figure(metrics_frame: pd.DataFrame) -> go.Figure:
    """Grouped bars of precision, recall and F1 per class, support in the hover."""
    if metrics_frame is None or metrics_frame.empty:
        return empty_figure("no class metrics")
    names = metrics_frame["name"].map(html)
    fig = go.Figure()
    for metric in ("precision", "recall", "f1"):
        fig.add_bar(x=names, y=metrics_frame[metric], name=metric, customdata=metrics_frame["support"],
                    hovertemplate=f"%{{x}}<br>{metric} %{{y:.3f}}<br>support %{{customdata}}<extra></extra>")
    fig.update_layout(title="per-class metrics", barmode="group", yaxis=dict(range=[0, 1]), height=340,
                      margin=MARGIN, legend=dict(orientation="h", y=-0.2))
    fig.update_xaxes(type="category")
    return fig


def _axis(name: str, unit: str | None) -> str:
    return f"{name} ({unit})" if unit else name


def residual_figure(samples: pd.DataFrame, unit: str | None = None) -> go.Figure:
    """Residual (prediction − label) against label, one point per sample, with the zero line:
    a slope shows regression to the mean, an offset a bias, a fan a label-dependent noise.
    `unit` (e.g. "breaths/min") goes into the axis titles."""
    if samples is None or samples.empty:
        return empty_figure("no regression samples")
    label = samples["label"].to_numpy(dtype=float)
    resid = samples["residual"].to_numpy(dtype=float) if "residual" in samples \
        else samples["prediction"].to_numpy(dtype=float) - label
    ids = samples["sample_id"].astype(str) if "sample_id" in samples else pd.Series(samples.index.astype(str))
    scatter = go.Scattergl if len(samples) > WEBGL_POINTS else go.Scatter
    fig = go.Figure(scatter(x=label, y=resid, mode="markers", name="samples", customdata=ids,
                            marker=dict(color=BLUE, size=5, opacity=0.6),
                            hovertemplate="%{customdata}<br>label %{x:.3g}<br>residual %{y:+.3g}<extra></extra>"))
    fig.add_hline(y=0, line=dict(color=GREY, dash="dash"))
    fig.update_layout(title="residuals by label", xaxis_title=_axis("label", unit),
                      yaxis_title=_axis("prediction − label", unit), height=360, margin=MARGIN)
    return fig


def prediction_figure(samples: pd.DataFrame, unit: str | None = None) -> go.Figure:
    """Predicted against true value, one point per sample, with the y = x line of a perfect
    model on equal axes: points above it are overestimates, a flatter cloud than the line
    is regression to the mean. `unit` (e.g. "breaths/min") goes into the axis titles.

        prediction_figure(run.samples("val"), unit=target_unit(run.manifest))
    """
    if samples is None or samples.empty:
        return empty_figure("no regression samples")
    true = samples["label"].to_numpy(dtype=float)
    pred = samples["prediction"].to_numpy(dtype=float)
    ok = np.isfinite(true) & np.isfinite(pred)
    if not ok.any():
        return empty_figure("no sample with both a label and a prediction")
    ids = (samples["sample_id"].astype(str) if "sample_id" in samples else pd.Series(samples.index.astype(str)))
    lo, hi = float(min(true[ok].min(), pred[ok].min())), float(max(true[ok].max(), pred[ok].max()))
    pad = 0.03 * (hi - lo) if hi > lo else 0.5
    scatter = go.Scattergl if ok.sum() > WEBGL_POINTS else go.Scatter
    fig = go.Figure(scatter(x=true[ok], y=pred[ok], mode="markers", name="samples",
                            customdata=np.column_stack([ids.to_numpy()[ok], pred[ok] - true[ok]]),
                            marker=dict(color=BLUE, size=5, opacity=0.6),
                            hovertemplate="%{customdata[0]}<br>true %{x:.3g}<br>predicted %{y:.3g}"
                                          "<br>residual %{customdata[1]:+.3g}<extra></extra>"))
    fig.add_scatter(x=[lo - pad, hi + pad], y=[lo - pad, hi + pad], mode="lines", name="y = x (perfect)",
                    line=dict(color=GREY, dash="dash"), hoverinfo="skip")
    # equal scales shrink the plot to a square rather than widen the x range past the data
    fig.update_xaxes(title_text=_axis("true", unit), range=[lo - pad, hi + pad], constrain="domain")
    fig.update_yaxes(title_text=_axis("predicted", unit), range=[lo - pad, hi + pad], scaleanchor="x")
    fig.update_layout(title="predicted vs true", height=460, margin=MARGIN, legend=dict(orientation="h", y=-0.2))
    return fig


def slices_figure(slices_frame: pd.DataFrame) -> go.Figure:
    """Horizontal bars of the error rate of each slice from `find_slices` (best on top), with
    the overall error rate as a vertical line; size, errors and lift in the hover."""
    if slices_frame is None or slices_frame.empty:
        return empty_figure("no slice with significantly more errors than overall")
    labels = [html(re.sub(r"\b(input|meta)_", "", str(d))) for d in slices_frame["description"]]
    overall = float(slices_frame["overall_rate"].iloc[0])
    fig = go.Figure(go.Bar(
        x=slices_frame["error_rate"], y=labels, orientation="h", marker_color=RED, name="error rate",
        customdata=np.column_stack([slices_frame["size"], slices_frame["errors"], slices_frame["lift"]]),
        hovertemplate="%{y}<br>%{x:.0%} wrong<br>%{customdata[1]} of %{customdata[0]} samples"
                      "<br>lift %{customdata[2]:.2f}<extra></extra>"))
    fig.add_vline(x=overall, line=dict(color=GREY, dash="dash"), annotation_text=f"overall {overall:.0%}",
                  annotation_position="top")
    fig.update_yaxes(type="category", autorange="reversed")
    reach = max(1e-9, float(slices_frame["error_rate"].max())) * 1.1
    fig.update_xaxes(title_text="error rate", tickformat=".0%", range=[0, reach])
    fig.update_layout(title="where errors concentrate", height=max(260, 40 * len(labels) + 120),
                      margin=MARGIN, showlegend=False)
    return fig
