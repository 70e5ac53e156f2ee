"""The embedding map: one plotly scatter point per sample at its `project` position.

Colour by correct/wrong, label, prediction, loss or any column the page adds to the samples
(a tag, a slice); wrong predictions are drawn on top as crosses whatever the colour, so
errors never hide under the crowd. Each point's customdata starts with its sample id, and
the figure opens in lasso mode, so a page turns a selection into ids with
`diagnostics.embedding.selection_ids`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from diagnostics.figures.common import BLUE, GREY, RED, WEBGL_POINTS, empty_figure
from diagnostics.text import html

_CORRECT, _WRONG, _UNKNOWN = BLUE, RED, GREY
# One colour per class, 20 distinct ones: Tableau 10 without its grey (grey means n/a here), then
# colours picked greedily for the largest CIELAB distance to all before them and to grey, among
# Kelly's, Trubetskoy's and plotly's qualitative sets (L* < 80, visible on white). Any two are
# at least 27 ΔE apart; plotly's default Plotly + Dark24 fell to 9 within the first 20.
_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22",
            "#17becf", "#511cfb", "#fe00fa", "#000075", "#620042", "#fc0080", "#6c7c32", "#222a2a",
            "#f99379", "#b10da1", "#0d2a63", "#3283fe")
# An integer-valued numeric column with at most this many values is drawn as categories.
_MAX_CATEGORIES = 30
_HOVER_COLUMNS = ("label", "prediction", "loss")


def embedding_figure(points: pd.DataFrame, samples: pd.DataFrame, color_by: str = "correct",
                     class_names: Sequence[str] | None = None, method: str | None = None) -> go.Figure:
    """Scatter of `points` (sample_id, x, y from `project`) coloured by a column of `samples`.

    `color_by` is "correct", "label", "prediction", "loss" or any other column of `samples`
    (a tag flag, a slice name): text, booleans and class indices (integers, at most 30 values)
    give one legend entry each, other numbers a colour scale. Hover shows the sample id, label,
    prediction and loss; `class_names` turns class indices into names (legend and hover).
    Classes get distinct colours up to 20 (then they repeat; the legend and hover still name
    them). `method` names the layout in the title ("UMAP", "PCA preview"), so a preview is never
    taken for the map.

        points = project(run.path, samples)
        fig = embedding_figure(points, samples, color_by="label",
                               class_names=["CNV", "DME", "DRUSEN", "NORMAL"])
    """
    if points is None or len(points) == 0:
        return empty_figure("no embeddings to map")
    if color_by not in ("correct", *_HOVER_COLUMNS) and color_by not in samples.columns:
        known = ("sample_id", "embedding", "probs", "correct", *_HOVER_COLUMNS)
        extra = ", ".join(str(c) for c in samples.columns if c not in known) or "a tag column you add"
        raise ValueError(f"color_by={color_by!r} is not a column of the samples — pick one of "
                         f"correct, label, prediction, loss or {extra}")
    rows = _joined(points, samples)
    names = [str(c) for c in class_names] if class_names is not None else None
    wrong = rows["correct"].eq(0).to_numpy() if "correct" in rows else np.zeros(len(rows), bool)
    values = rows[color_by] if color_by in rows else pd.Series(np.nan, index=rows.index)
    custom, hover = _hover(rows, color_by, names)
    scatter = go.Scattergl if len(rows) > WEBGL_POINTS else go.Scatter

    fig = go.Figure()
    if _is_continuous(values, color_by, names):
        _add_scale(fig, scatter, rows, values, wrong, custom, hover, color_by)
    else:
        categories = _categories(values, color_by, names)
        colours = _category_colours([name for name, _ in categories], color_by, names)
        _add_categories(fig, scatter, rows, categories, wrong, custom, hover, colours)
    n_wrong = int(wrong.sum())
    title = f"{method or 'embedding map'}: {len(rows):,} samples" + (f", {n_wrong:,} wrong (×)" if n_wrong else "")
    fig.update_layout(title=title, dragmode="lasso", height=560, margin=dict(l=20, r=20, t=50, b=20),
                      legend=dict(title=html(color_by), itemsizing="constant"), hovermode="closest")
    # the axes of a UMAP map carry no meaning: no ticks, but equal scale so distances read true
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False, title=None)
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False, title=None,
                     scaleanchor="x", scaleratio=1)
    return fig


def _add_scale(fig: go.Figure, scatter, rows: pd.DataFrame, values: pd.Series, wrong: np.ndarray,
               custom: np.ndarray, hover: str, color_by: str) -> None:
    """One trace on a colour scale, wrong predictions last (on top) as crosses."""
    order = np.lexsort((values.to_numpy(dtype=float), wrong))   # wrong last, then by value
    v = values.to_numpy(dtype=float)[order]
    finite = v[np.isfinite(v)]
    # 99th percentile: one huge loss would otherwise paint every other point the same colour
    top = float(np.percentile(finite, 99)) if finite.size else None
    fig.add_trace(scatter(
        x=rows["x"].to_numpy()[order], y=rows["y"].to_numpy()[order], mode="markers", name=html(color_by),
        customdata=custom[order], hovertemplate=hover, showlegend=False,
        marker=dict(color=v, colorscale="Viridis", cmin=float(finite.min()) if finite.size else None,
                    cmax=top, colorbar=dict(title=html(color_by)), size=np.where(wrong[order], 8, 6),
                    symbol=np.where(wrong[order], "x", "circle"), opacity=0.8)))


def _add_categories(fig: go.Figure, scatter, rows: pd.DataFrame, categories: list[tuple[str, np.ndarray]],
                    wrong: np.ndarray, custom: np.ndarray, hover: str, colours: dict[str, str]) -> None:
    """A trace per category, the right predictions first and the wrong ones over them as
    crosses of the same colour (one legend entry for both)."""
    for layer_wrong in (False, True):
        for name, mask in categories:
            keep = mask & (wrong == layer_wrong)
            if not keep.any():
                continue
            first = not (layer_wrong and (mask & ~wrong).any())
            fig.add_trace(scatter(
                x=rows["x"].to_numpy()[keep], y=rows["y"].to_numpy()[keep], mode="markers",
                name=html(name), legendgroup=name, showlegend=first, customdata=custom[keep],
                hovertemplate=hover, marker=dict(color=colours[name], size=8 if layer_wrong else 6,
                                                 symbol="x" if layer_wrong else "circle",
                                                 opacity=0.9 if layer_wrong else 0.6)))


def _category_colours(categories: list[str], color_by: str, names: list[str] | None) -> dict[str, str]:
    """A colour per legend entry. A class keeps its colour whatever the filters and whether the
    map is coloured by label or by prediction: class i gets _PALETTE[i]."""
    if color_by == "correct":
        return {"correct": _CORRECT, "wrong": _WRONG, "n/a": _UNKNOWN}
    colours = {}
    for i, name in enumerate(categories):
        index = i
        if color_by in ("label", "prediction"):
            if names is not None and name in names:
                index = names.index(name)
            elif name.lstrip("-").isdigit():
                index = int(name)
        colours[name] = _UNKNOWN if name == "n/a" else _PALETTE[index % len(_PALETTE)]
    return colours


def _joined(points: pd.DataFrame, samples: pd.DataFrame) -> pd.DataFrame:
    """`points` with each sample's latest row of `samples` (as `project` maps it)."""
    rows = samples.assign(sample_id=samples["sample_id"].astype(str))
    if "step" in rows.columns:
        rows = rows.sort_values("step", kind="stable")
    rows = rows.drop_duplicates("sample_id", keep="last").drop(
        columns=[c for c in ("x", "y", "embedding", "probs") if c in rows.columns])
    return points.assign(sample_id=points["sample_id"].astype(str)).merge(rows, on="sample_id", how="left")


def _class_text(values: pd.Series, names: list[str] | None) -> list[str]:
    out = []
    for v in values:
        if pd.isna(v):
            out.append("n/a")
        elif isinstance(v, (int, float, np.number)) and float(v).is_integer():
            i = int(v)
            out.append(names[i] if names is not None and 0 <= i < len(names) else str(i))
        elif isinstance(v, (float, np.floating)):
            out.append(f"{v:.4g}")
        else:
            out.append(str(v))
    return out


def _hover(rows: pd.DataFrame, color_by: str, names: list[str] | None) -> tuple[np.ndarray, str]:
    """customdata (sample id first) and the hover template that reads it."""
    columns = [rows["sample_id"].tolist()]
    lines = ["<b>%{customdata[0]}</b>"]
    shown = [c for c in _HOVER_COLUMNS if c in rows.columns]
    if color_by in rows.columns and color_by not in shown and color_by != "correct":
        shown.append(color_by)
    for c in shown:
        text = [f"{v:.4g}" if pd.notna(v) else "n/a" for v in rows[c]] if c == "loss" \
            else _class_text(rows[c], names if c in ("label", "prediction") else None)
        columns.append([html(t) for t in text])  # shown in the hover: names as text
        lines.append(f"{html(c)} %{{customdata[{len(columns) - 1}]}}")
    columns.append([html(s) for s in columns[0]])  # the id as text: customdata[0] stays the id a selection reads
    lines[0] = f"<b>%{{customdata[{len(columns) - 1}]}}</b>"
    custom = np.empty((len(rows), len(columns)), dtype=object)
    for j, col in enumerate(columns):
        custom[:, j] = col
    return custom, "<br>".join(lines) + "<extra></extra>"


def _is_continuous(values: pd.Series, color_by: str, names: list[str] | None) -> bool:
    if color_by == "correct" or (color_by in ("label", "prediction") and names is not None):
        return False
    if color_by == "loss":
        return True
    if pd.api.types.is_bool_dtype(values) or not pd.api.types.is_numeric_dtype(values):
        return False
    v = values.dropna().to_numpy(dtype=float)
    return not (np.all(v == np.round(v)) and len(np.unique(v)) <= _MAX_CATEGORIES)


def _categories(values: pd.Series, color_by: str, names: list[str] | None) -> list[tuple[str, np.ndarray]]:
    """(legend name, row mask) per category, in a stable order; missing values last as n/a."""
    if color_by == "correct":
        v = values.to_numpy(dtype=float)
        found = [("correct", v == 1), ("wrong", v == 0), ("n/a", ~np.isin(v, [0, 1]))]
    else:
        missing = values.isna().to_numpy()
        present = values[~missing]
        if pd.api.types.is_bool_dtype(values) or (
                len(present) and present.map(lambda v: isinstance(v, (bool, np.bool_))).all()):
            text = np.where(values.fillna(False).astype(bool).to_numpy(), color_by, f"not {color_by}")
            order = [color_by, f"not {color_by}"]
        else:
            names = names if color_by in ("label", "prediction") else None
            text = np.asarray(_class_text(values, names), dtype=object)
            present = present.drop_duplicates()
            try:
                present = present.sort_values()
            except TypeError:   # mixed types: order as text
                present = present.astype(str).sort_values()
            order = list(dict.fromkeys(_class_text(present, names)))
        found = [(name, (text == name) & ~missing) for name in order] + [("n/a", missing)]
    return [(name, mask) for name, mask in found if mask.any()]
