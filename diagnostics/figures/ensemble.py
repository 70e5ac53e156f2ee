"""Plotly figures of an ensemble (`diagnostics.ensemble`): the members' error correlation (phi)
as a heatmap, and the accuracy of each member against the ways of combining them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from diagnostics.figures.common import BLUE, GREY, MARGIN, empty_figure
from diagnostics.text import html


def phi_heatmap_figure(phi: pd.DataFrame) -> go.Figure:
    """Members × members phi of the wrong indicators, the value written in each cell (blue:
    errors apart, red: errors together; an empty cell where phi is undefined).

        phi_heatmap_figure(ensemble(runs).phi)
    """
    if phi is None or phi.empty:
        return empty_figure("no members to correlate")
    z = phi.to_numpy(dtype=float)
    text = np.where(np.isfinite(z), np.char.mod("%.2f", np.nan_to_num(z)), "—")
    names = [html(n) for n in phi.columns]
    fig = go.Figure(go.Heatmap(
        z=z, x=names, y=[html(n) for n in phi.index], text=text, texttemplate="%{text}", zmin=-1, zmax=1,
        colorscale="RdBu", reversescale=True, colorbar=dict(title="phi"), hoverongaps=False,
        hovertemplate="%{y} vs %{x}<br>phi of their errors: %{text}<extra></extra>"))
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_xaxes(type="category", side="bottom")
    fig.update_layout(title="error correlation (phi of the wrong indicators)", margin=MARGIN,
                      height=max(320, 60 * len(names) + 140))
    return fig


def ensemble_accuracy_figure(accuracy: dict[str, float], combined: dict[str, float | None]) -> go.Figure:
    """Dots: each member's accuracy (blue), then the combinations (majority vote, probability
    average, oracle; grey; a None is left out), with a dotted line at the best member's. Dots,
    not bars: the axis starts near the lowest value, so that tenths of a point show, and a bar
    cut off above zero would draw a 53% member as a sliver beside a 99% one.

        e = ensemble(runs)
        ensemble_accuracy_figure(e.accuracy, e.combined())
    """
    if not accuracy:
        return empty_figure("no members")
    shown = {**accuracy, **{k: v for k, v in combined.items() if v is not None}}
    values = 100 * np.array(list(shown.values()), dtype=float)
    colors = [BLUE] * len(accuracy) + [GREY] * (len(shown) - len(accuracy))
    fig = go.Figure(go.Scatter(
        x=[html(n) for n in shown], y=values, mode="markers+text", marker=dict(color=colors, size=14, symbol="diamond"),
        text=[f"{v:.1f}%" for v in values], textposition="top center", cliponaxis=False,
        hovertemplate="%{x}: %{y:.2f}%<extra></extra>"))
    best = 100 * max(accuracy.values())
    fig.add_hline(y=best, line=dict(color=BLUE, dash="dot"))
    pad = max(1.0, 0.15 * float(np.nanmax(values) - np.nanmin(values)))
    fig.update_yaxes(title_text="accuracy on the shared samples (%)",
                     range=[max(0.0, float(np.nanmin(values)) - pad), min(100.0, float(np.nanmax(values)) + pad) + 0.5])
    fig.update_xaxes(type="category")
    if len(shown) > len(accuracy):  # members left of the line, their combinations right of it
        fig.add_vline(x=len(accuracy) - 0.5, line=dict(color=GREY, width=1))
    title = f"accuracy: members (blue), combined (grey)<br><sup>dotted: the best member's {best:.1f}%</sup>"
    # room above the plot for the subtitle and the top dots' labels
    fig.update_layout(title=title, margin={**MARGIN, "t": 90}, height=400, showlegend=False)
    return fig
