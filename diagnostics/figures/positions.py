"""Figures of errors over positions (`diagnostics.positions`): a text sample's tokens coloured by
loss, a segmentation sample's masks over its input, IoU and Dice per class, the confusion matrix
over positions, per-label precision and recall, and what a change fixed and broke per class.
Every token string and class name goes out escaped (`html`): they are user input."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from diagnostics.figures.common import BLUE, GREY, MARGIN, RED, empty_figure
from diagnostics.figures.errors import confusion_figure
from diagnostics.text import html

_CLASS_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f")
_GREEN = "#2ca02c"


def _short(text: str, most: int = 12) -> str:
    text = text.replace("\n", "⏎").replace("\t", "⇥").replace(" ", "␣")  # white space, visible
    return text if len(text) <= most else text[:most - 1] + "…"


def token_loss_figure(tokens: pd.DataFrame, per_row: int = 16, title: str = "") -> go.Figure:
    """A text sample as its counted positions in reading order, `per_row` to a line: each cell
    shows the input token, coloured by the loss there (white low, red high); a wrong prediction
    is marked ✗ and the hover gives label, prediction, loss and confidence.

        token_loss_figure(positions.token_table(frame, ids, run.vocabulary("val")))
    """
    if tokens is None or tokens.empty:
        return empty_figure("no counted position stored for this sample")
    n = len(tokens)
    rows = -(-n // per_row)
    pad = rows * per_row - n

    def grid(values, fill):
        return np.concatenate([np.asarray(values, dtype=object), np.full(pad, fill, dtype=object)]).reshape(rows,
                                                                                                           per_row)
    shown = [html(_short(t if t else lab)) + ("" if ok else " ✗")
             for t, lab, ok in zip(tokens["token"], tokens["label"], tokens["correct"])]
    hover = np.stack([grid(tokens["position"], ""), grid([html(v) for v in tokens["label"]], ""),
                      grid([html(v) for v in tokens["prediction"]], ""), grid(tokens["confidence"], np.nan)], axis=-1)
    loss = np.concatenate([tokens["loss"].to_numpy(dtype=float), np.full(pad, np.nan)]).reshape(rows, per_row)
    fig = go.Figure(go.Heatmap(
        z=loss, text=grid(shown, ""), texttemplate="%{text}", customdata=hover, xgap=2, ygap=2,
        colorscale=[[0, "#ffffff"], [1, RED]], zmin=0, colorbar=dict(title="loss"),
        hovertemplate="position %{customdata[0]}<br>label %{customdata[1]}<br>prediction %{customdata[2]}"
                      "<br>loss %{z:.3f}, confidence %{customdata[3]:.1%}<extra></extra>"))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False, autorange="reversed")
    fig.update_layout(title=title or "tokens coloured by loss (✗: predicted wrong)", height=90 + 34 * rows,
                      margin=dict(l=10, r=10, t=50, b=10), plot_bgcolor="rgba(0,0,0,0)")
    return fig


def _class_scale(num_classes: int) -> list:
    """A discrete colour scale over class indices 0..num_classes-1."""
    k = max(num_classes, 1)
    scale = []
    for c in range(k):
        color = _CLASS_COLORS[c % len(_CLASS_COLORS)]
        scale += [[c / k, color], [(c + 1) / k, color]]
    return scale


def mask_overlay_figure(image: np.ndarray | None, label_mask: np.ndarray, prediction_mask: np.ndarray,
                        class_names: Sequence[str] | None = None, opacity: float = 0.45, title: str = "") -> go.Figure:
    """Three panels over the input (grey): the true mask, the predicted mask (one colour per
    class) and the disagreement (red where they differ). Masks hold -1 where no position was
    counted (drawn clear); they are pooled to the image's size already (`positions.pool_mask`)."""
    label_mask, prediction_mask = np.asarray(label_mask), np.asarray(prediction_mask)
    if label_mask.ndim != 2 or label_mask.size == 0:
        return empty_figure("no mask: this sample has no counted position stored")
    # every class the run names, so a class keeps its colour from sample to sample
    k = max(int(max(label_mask.max(), prediction_mask.max(), 0)) + 1, len(class_names or []))
    names = [html(class_names[c]) if class_names is not None and c < len(class_names) else str(c) for c in range(k)]
    fig = make_subplots(rows=1, cols=3, subplot_titles=("true mask", "predicted mask", "disagreement"),
                        horizontal_spacing=0.03)
    counted = (label_mask >= 0) & (prediction_mask >= 0)
    wrong = np.where(counted, (label_mask != prediction_mask).astype(float), np.nan)
    for col in (1, 2, 3):
        if image is not None:
            fig.add_heatmap(z=image, colorscale="gray", showscale=False, hoverinfo="skip", row=1, col=col)
    for col, mask in ((1, label_mask), (2, prediction_mask)):
        z = np.where(mask >= 0, mask, np.nan).astype(float)
        text = np.vectorize(lambda v: names[int(v)] if v >= 0 else "not counted", otypes=[object])(mask)
        fig.add_heatmap(z=z, zmin=-0.5, zmax=k - 0.5, colorscale=_class_scale(k), opacity=opacity,
                        showscale=col == 1, text=text, row=1, col=col,
                        colorbar=dict(title="class", tickvals=list(range(k)), ticktext=names, len=0.8),
                        hovertemplate="(%{x}, %{y}) %{text}<extra></extra>")
    fig.add_heatmap(z=wrong, zmin=0, zmax=1, colorscale=[[0, "rgba(0,0,0,0)"], [1, RED]], opacity=0.8,
                    showscale=False, row=1, col=3,
                    hovertemplate="(%{x}, %{y}) %{z:.0f} (1: true and predicted differ)<extra></extra>")
    bare = dict(showticklabels=False, showgrid=False, zeroline=False, ticks="")
    for col in (1, 2, 3):
        fig.update_yaxes(autorange="reversed", scaleanchor=f"x{'' if col == 1 else col}", row=1, col=col, **bare)
        fig.update_xaxes(row=1, col=col, **bare)
    share = float(np.nanmean(wrong)) if counted.any() else float("nan")
    fig.update_layout(title=title or f"masks over the input ({share:.1%} of counted pixels disagree)",
                      height=340, margin=dict(l=10, r=10, t=70, b=10), plot_bgcolor="rgba(0,0,0,0)")
    return fig


def overlap_figure(overlap: pd.DataFrame) -> go.Figure:
    """IoU and Dice per class (`positions.class_overlap`), classes that occur only."""
    if overlap is None or overlap.empty or not overlap["iou"].notna().any():
        return empty_figure("no class labelled or predicted at any counted position")
    t = overlap[overlap["iou"].notna()]
    names = t["name"].map(html)
    fig = go.Figure()
    for col, color in (("iou", BLUE), ("dice", GREY)):
        fig.add_bar(x=names, y=t[col], name="IoU" if col == "iou" else "Dice", marker_color=color,
                    customdata=np.column_stack([t["true"], t["predicted"], t["overlap"]]),
                    hovertemplate="%{x}: %{y:.3f}<br>%{customdata[0]} labelled, %{customdata[1]} predicted, "
                                  "%{customdata[2]} both<extra></extra>")
    fig.update_layout(title="IoU and Dice per class, over every counted position", barmode="group",
                      yaxis_range=[0, 1.05], height=340, margin=MARGIN, legend=dict(orientation="h", y=-0.2))
    fig.update_xaxes(type="category")
    return fig


def position_confusion_figure(matrix: np.ndarray, class_names: Sequence[str] | None = None,
                              unit: str = "positions") -> go.Figure:
    """The confusion matrix over counted positions (tokens, pixels): `confusion_figure` counting
    `unit` instead of samples."""
    fig = confusion_figure(matrix, class_names)
    if fig.data:
        fig.update_traces(hovertemplate=f"true %{{y}}<br>predicted %{{x}}<br>%{{text}} {unit} (%{{z:.1%}} of the "
                                        "row)<extra></extra>")
        fig.update_layout(title=f"confusion matrix over {unit}")
    return fig


def label_metrics_figure(metrics: pd.DataFrame) -> go.Figure:
    """Precision and recall per label (several labels per sample), with each label's ECE in the hover."""
    if metrics is None or metrics.empty:
        return empty_figure("no label stored")
    names = metrics["name"].map(html)
    fig = go.Figure()
    for col, color in (("precision", BLUE), ("recall", _GREEN)):
        fig.add_bar(x=names, y=metrics[col], name=col, marker_color=color,
                    customdata=np.column_stack([metrics["positives"], metrics["predicted"], metrics["ece"]]),
                    hovertemplate="%{x}: %{y:.3f}<br>%{customdata[0]} positives, %{customdata[1]} predicted, "
                                  "ECE %{customdata[2]:.3f}<extra></extra>")
    fig.update_layout(title="precision and recall per label", barmode="group", yaxis_range=[0, 1.05], height=340,
                      margin=MARGIN, legend=dict(orientation="h", y=-0.2))
    fig.update_xaxes(type="category")
    return fig


def position_changes_figure(by_class: pd.DataFrame) -> go.Figure:
    """Positions B fixed (up) and broke (down) per true class (`positions.changes_by_class`)."""
    if by_class is None or by_class.empty:
        return empty_figure("no position counted in both runs")
    names = by_class["name"].map(html)
    fig = go.Figure()
    fig.add_bar(x=names, y=by_class["fixed"], name="fixed", marker_color=_GREEN,
                hovertemplate="%{x}: %{y} positions fixed<extra></extra>")
    fig.add_bar(x=names, y=-by_class["broken"].to_numpy(), name="broken", marker_color=RED,
                customdata=by_class["broken"], hovertemplate="%{x}: %{customdata} positions broken<extra></extra>")
    fig.add_hline(y=0, line=dict(color=GREY))
    fig.update_layout(title="positions fixed (up) and broken (down) per true class", barmode="relative", height=340,
                      margin=MARGIN, legend=dict(orientation="h", y=-0.2))
    fig.update_xaxes(type="category")
    return fig
