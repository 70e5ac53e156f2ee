"""Plotly figures of an ensemble (`diagnostics.ensemble`): the members' error correlation (phi)
as a heatmap, and the accuracy of each member against the ways of combining them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from diagnostics.figures.common import BLUE, GREY, MARGIN, empty_figure


def phi_heatmap_figure(phi: pd.DataFrame) -> go.Figure:
    """Members × members phi of the wrong indicators, the value written in each cell (blue:
    errors apart, red: errors together; an empty cell where phi is undefined).

        phi_heatmap_figure(ensemble(runs).phi)
    """
    if phi is None or phi.empty:
        return empty_figure("no members to correlate")
    z = phi.to_numpy(dtype=float)
    text = np.where(np.isfinite(z), np.char.mod("%.2f", np.nan_to_num(z)), "—")
    names = [str(n) for n in phi.columns]
    fig = go.Figure(go.Heatmap(
        z=z, x=names, y=[str(n) for n in phi.index], text=text, texttemplate="%{text}", zmin=-1, zmax=1,
        colorscale="RdBu", reversescale=True, colorbar=dict(title="phi"), hoverongaps=False,
        hovertemplate="%{y} vs %{x}<br>phi of their errors: %{text}<extra></extra>"))
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_xaxes(type="category", side="bottom")
    fig.update_layout(title="error correlation (phi of the wrong indicators)", margin=MARGIN,
                      height=max(320, 60 * len(names) + 140))
    return fig


def ensemble_accuracy_figure(accuracy: dict[str, float], combined: dict[str, float | None]) -> go.Figure:
    """Bars: each member's accuracy (blue), then the combinations (majority vote, probability
    average, oracle; grey; a None is left out), with a dotted line at the best member's.

        e = ensemble(runs)
        ensemble_accuracy_figure(e.accuracy, e.combined())
    """
    if not accuracy:
        return empty_figure("no members")
    shown = {**accuracy, **{k: v for k, v in combined.items() if v is not None}}
    values = 100 * np.array(list(shown.values()), dtype=float)
    colors = [BLUE] * len(accuracy) + [GREY] * (len(shown) - len(accuracy))
    fig = go.Figure(go.Bar(x=list(shown), y=values, marker_color=colors, text=[f"{v:.1f}%" for v in values],
                           textposition="outside", hovertemplate="%{x}: %{y:.2f}%<extra></extra>"))
    fig.add_hline(y=100 * max(accuracy.values()), line=dict(color=BLUE, dash="dot"))
    low = max(0.0, float(np.nanmin(values)) - 10)
    fig.update_yaxes(title_text="accuracy on the shared samples (%)", range=[low, 105])
    fig.update_xaxes(type="category")
    fig.update_layout(title="accuracy: members (blue), combined (grey)",
                      margin=MARGIN, height=380, showlegend=False)
    return fig
