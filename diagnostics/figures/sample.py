"""Figures of one sample: its input (with an attribution over it), its probabilities, its
history over training."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from diagnostics.figures.common import empty_figure
from diagnostics.text import html

_MARGIN = dict(l=30, r=20, t=50, b=30)


def _as_array(row: pd.Series) -> np.ndarray:
    return np.asarray(row["values"], dtype=np.float32).reshape([int(s) for s in row["shape"]])


def preview_figure(preview: pd.Series | None, attribution: pd.Series | None = None, opacity: float = 0.5,
                   title: str = "") -> go.Figure:
    """The input as recorded (image, signal, vector or tokens), with an attribution laid
    over it when given (|attribution| as a red overlay on images, as line colour on signals)."""
    if preview is None:
        return empty_figure("no preview recorded for this sample")
    x = _as_array(preview)
    att = None if attribution is None else np.abs(_as_array(attribution))
    kind = preview["kind"]
    fig = go.Figure()
    if kind == "image":
        grey = x.mean(axis=-1)
        fig.add_heatmap(z=grey, colorscale="gray", showscale=False,
                        hovertemplate="(%{x}, %{y}) %{z:.3g}<extra></extra>")
        if att is not None and att.shape == grey.shape and att.max() > 0:
            fig.add_heatmap(z=att / att.max(), colorscale=[[0, "rgba(255,0,0,0)"], [1, "rgba(255,0,0,1)"]],
                            opacity=opacity, showscale=True, colorbar=dict(title="|attr|"),
                            hovertemplate="attribution %{z:.2f}<extra></extra>")
        # an image, not a chart: no grid, zero lines or tick marks over it
        bare = dict(showticklabels=False, showgrid=False, zeroline=False, ticks="")
        fig.update_yaxes(autorange="reversed", scaleanchor="x", **bare)
        fig.update_xaxes(**bare)
        fig.update_layout(plot_bgcolor="rgba(0,0,0,0)")
    elif kind == "signal":
        for c, channel in enumerate(x.reshape(x.shape[0], -1)):
            fig.add_scatter(y=channel, mode="lines", name=f"channel {c}", line=dict(color="#444", width=1))
        if att is not None and att.size:
            profile = att.reshape(-1)
            idx = np.linspace(0, len(profile) - 1, x.shape[-1]).astype(int)
            fig.add_scatter(y=x.reshape(x.shape[0], -1)[0], mode="markers", name="|attribution|",
                            marker=dict(color=profile[idx], colorscale="Reds", size=5, showscale=True))
        fig.update_layout(xaxis_title="time (preview samples)")
    elif kind == "tokens":
        fig.add_bar(y=x.reshape(-1), name="token ids")
        fig.update_layout(xaxis_title="position", yaxis_title="token id")
    else:
        fig.add_bar(y=x.reshape(-1), name="values")
    fig.update_layout(title=title or "input", height=360, margin=_MARGIN, showlegend=kind == "signal",
                      legend=dict(orientation="h", y=-0.25))
    return fig


def probability_figure(probs, label: float, prediction: float, class_names: list[str] | None = None) -> go.Figure:
    """The probability vector, the label's bar in grey and the prediction's in red."""
    if probs is None or np.ndim(probs) == 0 or len(probs) == 0:
        return empty_figure("no probabilities (regression)")
    p = np.asarray(probs, dtype=float)
    names = ([html(c) for c in class_names] if class_names and len(class_names) == len(p)
             else [str(i) for i in range(len(p))])
    colors = ["#1f77b4"] * len(p)
    if 0 <= int(prediction) < len(p):
        colors[int(prediction)] = "#d62728"
    if 0 <= int(label) < len(p):
        colors[int(label)] = "#7f7f7f" if int(label) != int(prediction) else "#2ca02c"
    fig = go.Figure(go.Bar(x=names, y=p, marker_color=colors, hovertemplate="%{x}: %{y:.3f}<extra></extra>"))
    fig.update_layout(title="probabilities: grey label, red prediction, green both", yaxis_range=[0, 1],
                      xaxis_type="category", height=300, margin=_MARGIN)
    return fig


def sample_history_figure(records: pd.DataFrame, evaluations: pd.DataFrame, task: str) -> go.Figure:
    """One sample over training: its per-step training records and its evaluations."""
    value = "confidence" if task == "classification" else "residual"
    label = "probability of the label" if task == "classification" else "residual"
    fig = go.Figure()
    if not records.empty:
        r = records.sort_values("step")
        fig.add_scatter(x=r["step"], y=r[value], mode="lines+markers", name=f"training: {label}")
    if not evaluations.empty:
        e = evaluations.sort_values("step")
        y = e["label_prob"] if task == "classification" else e["residual"]
        fig.add_scatter(x=e["step"], y=y, mode="lines+markers", name=f"evaluation: {label}",
                        marker=dict(symbol="diamond", size=9))
    if not fig.data:
        return empty_figure("no history: log ids with run.log_batch(..., ids=) or evaluate more than once")
    fig.update_layout(title="history of this sample", xaxis_title="step", yaxis_title=label, height=300,
                      margin=_MARGIN, legend=dict(orientation="h", y=-0.3))
    if task == "classification":
        fig.update_yaxes(range=[-0.03, 1.03])  # a probability: its whole range, even for one point
    steps = pd.concat([records.get("step", pd.Series(dtype=float)),
                       evaluations.get("step", pd.Series(dtype=float))]).dropna()
    if steps.nunique() < 5:  # a step or a few: whole steps only (plotly ticked one evaluation 23.5, 24, 24.5)
        fig.update_xaxes(tickmode="array", tickvals=sorted(int(s) for s in steps.unique()))
    return fig
