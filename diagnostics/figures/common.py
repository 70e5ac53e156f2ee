"""What every figure builder shares: the figure that says why it is blank, log-axis ticks,
the colours and margins."""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go

BLUE = "#1f77b4"      # a line, the accent of a chart, a correct prediction
RED = "#d62728"       # the model's outputs, an error
GREY = "#7f7f7f"      # the labels, a reference line (the diagonal, zero)
MARGIN = dict(l=40, r=20, t=50, b=40)
# Above this many points a scatter switches to WebGL, which stays responsive (lasso included).
WEBGL_POINTS = 5000


def empty_figure(message: str) -> go.Figure:
    """A blank figure that says why it is blank (never an empty chart)."""
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_layout(height=240, margin=dict(l=20, r=20, t=30, b=20))
    return fig


def rgba(color: str, alpha: float) -> str:
    """'#1f77b4', 0.3 → 'rgba(31, 119, 180, 0.3)'."""
    r, g, b = (int(color[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r}, {g}, {b}, {alpha})"


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
    axis_range = [math.log10(lo) - pad, math.log10(hi) + pad]
    if len(ticks) < 3:  # a narrow span (1.2 to 1.9): evenly spaced round values, as on a linear axis
        step = _nice_step((hi - lo) / 4)
        ticks = [k * step for k in range(math.ceil(lo / step), math.floor(hi / step) + 1)]
        decimals = max(0, -math.floor(math.log10(step)))
        return {"tickvals": ticks, "ticktext": [f"{t:.{decimals}f}" for t in ticks], "range": axis_range}
    return {"tickvals": ticks, "ticktext": _tick_labels(ticks), "range": axis_range}


def _nice_step(raw: float) -> float:
    """1, 2 or 5 times a power of ten, at least `raw`."""
    power = 10.0 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
