"""The model's outputs against the labels: class shares or value histograms at one step (or
pooled), and their gap over steps."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from diagnostics import histograms
from diagnostics.figures.common import GREY, RED, empty_figure
from diagnostics.text import html


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
    names = [html(c) for c in class_names] if class_names and len(class_names) == n else [str(i) for i in range(n)]
    fig = go.Figure()
    fig.add_bar(x=names, y=lab / max(lab.sum(), 1), name="labels", marker_color=GREY)
    fig.add_bar(x=names, y=pred / max(pred.sum(), 1), name="predictions", marker_color=RED)
    fig.update_layout(barmode="group", title=title or "predicted vs label class shares", xaxis_title="class",
                      yaxis_title="share of samples", height=360, margin=dict(l=40, r=20, t=50, b=40),
                      legend=dict(orientation="h", y=-0.2), xaxis_type="category")
    return fig


def value_distribution_figure(output_row: pd.Series, label_row: pd.Series, title: str = "") -> go.Figure:
    """The model's output values overlaid on the labels', both moved onto one grid of bins
    spanning the two (each was recorded over its own range: bars on their own edges made a
    picket fence whose heights could not be compared), as many bins as the values support."""
    fig = go.Figure()
    rows = pd.DataFrame([label_row, output_row])
    recorded = max(len(label_row["hist_counts"]), len(output_row["hist_counts"]), 1)
    values = max(float(np.sum(label_row["hist_counts"])), float(np.sum(output_row["hist_counts"])), 1.0)
    # the Rice rule, 2·n^(1/3) bins (a batch of 128 values: 10), within [10, recorded]: 64 bins over
    # one batch's values left most bars at one or two samples, a comb whose heights said nothing
    bins = int(min(recorded, max(10, round(2 * values ** (1 / 3)))))
    edges, shares = histograms.common_grid(rows, bins=bins)
    for share, name, color in ((shares[0], "labels", GREY), (shares[1], "outputs", RED)):
        fig.add_bar(x=(edges[:-1] + edges[1:]) / 2, y=share, width=np.diff(edges),
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
    names = [html(c) for c in class_names] if class_names and len(class_names) == n else [str(i) for i in range(n)]
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
