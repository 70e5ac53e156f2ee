"""Plotly figures of a run comparison (`diagnostics.compare`): per-class recall deltas and the
per-sample loss of run A against run B, coloured by what changed."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from diagnostics.figures.common import GREY, MARGIN, WEBGL_POINTS, empty_figure, log_ticks
from diagnostics.text import html

_CHANGE_COLORS = {"fixed": "#2ca02c", "improved": "#2ca02c", "broken": "#d62728", "worsened": "#d62728",
                  "still_wrong": "#ff7f0e", "still_right": "#c7c7c7", "same": "#c7c7c7"}
_CHANGE_ORDER = ("still_right", "same", "still_wrong", "fixed", "improved", "broken", "worsened")  # drawn last on top


def class_delta_figure(per_class: pd.DataFrame) -> go.Figure:
    """Bars of recall B − A per class in percentage points (green up, red down), with the
    fixed and broken counts on each bar and both recalls in the hover.

        class_delta_figure(compare(run_a, run_b).per_class)
    """
    if per_class is None or per_class.empty or not (per_class["support"] > 0).any():
        return empty_figure("no classified samples to compare per class")
    t = per_class[per_class["support"] > 0]
    delta = 100 * t["delta"].to_numpy(dtype=float)
    fig = go.Figure(go.Bar(
        x=t["name"].map(html), y=delta, marker_color=np.where(delta >= 0, _CHANGE_COLORS["fixed"],
                                                                 _CHANGE_COLORS["broken"]),
        text=[f"+{f} / −{b}" if f or b else "" for f, b in zip(t["fixed"], t["broken"])], textposition="outside",
        customdata=np.column_stack([t["recall_a"], t["recall_b"], t["support"], t["fixed"], t["broken"]]),
        hovertemplate="%{x}<br>recall A %{customdata[0]:.1%} → B %{customdata[1]:.1%} (%{y:+.1f} points)"
                      "<br>%{customdata[3]} fixed, %{customdata[4]} broken of %{customdata[2]}<extra></extra>"))
    fig.add_hline(y=0, line=dict(color=GREY))
    reach = max(5.0, float(np.nanmax(np.abs(delta))) if np.isfinite(delta).any() else 0.0) * 1.25
    fig.update_yaxes(title_text="recall B − A (points)", range=[-reach, reach], zeroline=False)
    fig.update_xaxes(type="category")
    fig.update_layout(title="recall per class, B − A (labels: +fixed / −broken)", height=380, margin=MARGIN,
                      showlegend=False)
    return fig


def loss_scatter_figure(samples: pd.DataFrame, task: str = "classification") -> go.Figure:
    """One point per shared sample: its loss in A (x) against B (y), or its |error| for
    regression, coloured by change. Below the diagonal, B does better on that sample. Log axes
    when every value is positive (cross-entropy spans decades), ticked by `log_ticks`. Both axes
    share one range, padded so that points at an end (a run whose losses all sit at one value)
    are drawn whole, not pressed against the frame.

        loss_scatter_figure(c.samples, c.task)
    """
    if samples is None or samples.empty:
        return empty_figure("no shared samples")
    x_col, y_col, what = (("loss_a", "loss_b", "loss") if task == "classification"
                          else ("abs_error_a", "abs_error_b", "|error|"))
    x, y = samples[x_col].to_numpy(dtype=float), samples[y_col].to_numpy(dtype=float)
    finite = np.isfinite(x) & np.isfinite(y)
    if not finite.any():
        return empty_figure(f"no finite {what} in both runs")
    both = np.concatenate([x[finite], y[finite]])
    log = bool((both >= 0).all() and (both > 0).any())
    floor = None
    if log and (both == 0).any():
        # a loss of exactly 0 (float32 underflow of a confident right answer) has no place
        # on a log axis, and a linear one piles hundreds of samples at the origin: draw
        # zeros at half the smallest positive value, and say so
        floor = float(both[both > 0].min()) / 2
        samples = samples.assign(**{c: samples[c].where(samples[c] != 0, floor) for c in (x_col, y_col)})
        x, y = samples[x_col].to_numpy(dtype=float), samples[y_col].to_numpy(dtype=float)
    lo, hi = float(min(x[finite].min(), y[finite].min())), float(max(x[finite].max(), y[finite].max()))
    scatter = go.Scattergl if len(samples) > WEBGL_POINTS else go.Scatter
    fig = go.Figure()
    fig.add_scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="same in A and B", hoverinfo="skip",
                    line=dict(color=GREY, dash="dash", width=1))
    present = set(samples["change"])
    for change in [c for c in _CHANGE_ORDER if c in present] + sorted(present - set(_CHANGE_ORDER)):
        part = samples[samples["change"] == change]
        ids = part["sample_id"].astype(str)
        fig.add_trace(scatter(
            x=part[x_col], y=part[y_col], mode="markers", name=f"{change.replace('_', ' ')} ({len(part)})",
            customdata=np.column_stack([ids, ids.map(html)]),  # the id a selection reads; the id as text
            marker=dict(color=_CHANGE_COLORS.get(change, GREY), size=6,
                        opacity=0.5 if change in ("still_right", "same") else 0.85),
            hovertemplate=f"%{{customdata[1]}}<br>{what} A %{{x:.3g}}<br>{what} B %{{y:.3g}}<extra>{change}</extra>"))
    axis = _axis(np.concatenate([x[finite], y[finite]]), log)
    fig.update_xaxes(title_text=f"{what} in A", **axis)
    fig.update_yaxes(title_text=f"{what} in B", **axis)
    fig.update_layout(title=f"per-sample {what}, A vs B (below the diagonal: B does better)", height=420,
                      margin=MARGIN, legend=dict(orientation="h", y=-0.2))
    if floor is not None:
        fig.add_annotation(text=f"{what} of exactly 0 drawn at {floor:.1e}", xref="paper", yref="paper", x=0.0,
                           y=1.0, xanchor="left", yanchor="top", showarrow=False, font=dict(size=11))
    return fig


def _axis(drawn: np.ndarray, log: bool) -> dict:
    """One axis's settings for both axes of the scatter: log_ticks's ticks and padded range on
    a log axis (plotly's own crowd minor labels in mixed sizes), 5% of the span either side on a
    linear one (a span of 0: 5% of the value's size, at least 0.05)."""
    if log:
        return dict(type="log", **log_ticks(drawn))
    lo, hi = float(drawn.min()), float(drawn.max())
    pad = 0.05 * (hi - lo) or 0.05 * max(abs(hi), 1.0)
    return dict(range=[lo - pad, hi + pad])
