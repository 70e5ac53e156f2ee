"""The parts of Error review, Sample detail and Compare that show errors over positions (tokens,
pixels, several labels per sample), drawn only for an evaluation that stored positions
(`Run.position_info(split)`): a run without them shows its pages as before."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

import diagnostics
from diagnostics import errors, figures, schema
from diagnostics import positions as pos
from diagnostics.compare import mcnemar_p
from diagnostics.text import md

UNITS = {"tokens": "tokens", "pixels": "pixels", "labels": "labels"}


@st.cache_data(show_spinner=False, max_entries=32)
def position_frame(path: str, version: str, split: str, step: int | None, ids: tuple | None = None) -> pd.DataFrame:
    return diagnostics.open_run(path).positions(split, ids=None if ids is None else list(ids), step=step)


@st.cache_data(show_spinner=False, max_entries=32)
def vocabulary(path: str, version: str, split: str) -> dict | None:
    return diagnostics.open_run(path).vocabulary(split)


def info_of(run: diagnostics.Run, split: str, step: int | None = None) -> dict | None:
    """How the evaluation of `split` at `step` (the latest by default) stored its positions, or
    None when it stored none: the page is drawn as for one label per sample."""
    entries = [e for e in run.manifest.get("evaluations") or [] if isinstance(e, dict) and e.get("split") == split]
    if step is not None:
        entries = [e for e in entries if str(e.get("step")) == str(step)] or entries
    info = entries[-1].get(schema.EVAL_POSITIONS) if entries else None
    return dict(info) if isinstance(info, dict) and info.get("layout") in UNITS else None


def _stored_caption(info: dict, unit: str) -> None:
    stored, total = info.get("stored_samples"), info.get("total_samples")
    if stored is not None and total is not None and stored < total:
        st.caption(f"{unit.capitalize()} of the first {stored:,} of {total:,} evaluated samples are stored (the cap, "
                   f"`run.evaluate(max_positions={info.get('cap')})`): the numbers here cover those.")


def _names(class_names, k: int) -> list[str]:
    return [str(class_names[c]) if class_names is not None and c < len(class_names) else str(c) for c in range(k)]


def error_review_section(r, info: dict) -> None:
    """Error review over the evaluation's positions: IoU and Dice (pixels), the confusion matrix
    over positions (tokens, pixels), per-label metrics and worst cases (several labels)."""
    layout = info.get("layout", "tokens")
    unit = UNITS.get(layout, "positions")
    frame = position_frame(r.path, r.version, r.split, r.step)
    if frame.empty:
        st.info(f"This evaluation stored no {unit} (`run.evaluate(max_positions=0)`, or no position was counted).")
        return
    _stored_caption(info, unit)
    if layout == "labels":
        _labels_section(r, frame)
        return
    k = max(pos.class_count(frame), len(r.class_names or []))
    overlap = pos.class_overlap(frame, k, r.class_names)
    head = pos.mean_overlap(overlap)
    cols = st.columns(4)
    cols[0].metric(f"{unit.capitalize()} counted", f"{len(frame):,}",
                   help=f"positions whose label is not the ignore index ({info.get('ignore_index')})")
    cols[1].metric(f"Accuracy over {unit}", f"{head['accuracy']:.1%}")
    if layout == "pixels":
        cols[2].metric("Mean IoU", f"{head['mean_iou']:.3f}", help="over the classes labelled or predicted")
        cols[3].metric("Mean Dice", f"{head['mean_dice']:.3f}")
    matrix = pos.position_confusion(frame, k)
    if layout == "pixels":
        left, right = st.columns(2)
        left.plotly_chart(figures.overlap_figure(overlap), key="pos_overlap")
        right.plotly_chart(figures.position_confusion_figure(matrix, _names(r.class_names, k), unit),
                           key="pos_confusion")
    else:
        st.plotly_chart(figures.position_confusion_figure(matrix, _names(r.class_names, k), unit),
                        key="pos_confusion")
    st.dataframe(overlap.drop(columns="class").rename(columns={"name": "class"}), hide_index=True,
                 key="pos_overlap_table", column_config={c: st.column_config.NumberColumn(format="%.3f")
                                                         for c in ("iou", "dice")})
    _confusion_cell(r, frame, matrix, unit)


def _confusion_cell(r, frame: pd.DataFrame, matrix: np.ndarray, unit: str) -> None:
    """A cell of the confusion over positions, as the samples that hold it (the largest confusion first)."""
    k = matrix.shape[0]
    names = _names(r.class_names, k)
    worst_true, _ = errors.most_confused(matrix)
    c1, c2 = st.columns(2)
    t = c1.selectbox("True class", range(k), index=worst_true, format_func=lambda c: names[c], key="pos_cell_true")
    p = c2.selectbox("Predicted class", range(k), index=errors.most_confused(matrix, t)[1],
                     format_func=lambda c: names[c], key="pos_cell_pred")
    cell = pos.confusion_samples(frame, t, p)
    st.caption(f"{len(cell):,} samples hold {unit} labelled {md(names[t])} and predicted {md(names[p])}, the most "
               "first (200 at most); select one and open it in Sample detail to see where.")
    shown = cell.head(200)
    event = st.dataframe(shown, hide_index=True, key="pos_cell_table", on_select="rerun",
                         selection_mode="single-row",
                         column_config={"mean_loss": st.column_config.NumberColumn(format="%.3f")})
    picked = shown["sample_id"].iloc[[i for i in event.selection.rows if i < len(shown)]].tolist()
    if st.button("Open in Sample detail", disabled=not picked, key="pos_cell_open"):
        st.session_state["sample_id"], st.session_state["sample_split"] = picked[0], r.split
        st.switch_page("pages/sample.py")


def _labels_section(r, frame: pd.DataFrame) -> None:
    metrics = pos.label_metrics(frame, r.class_names)
    st.plotly_chart(figures.label_metrics_figure(metrics), key="pos_labels")
    st.dataframe(metrics, hide_index=True, key="pos_labels_table",
                 column_config={c: st.column_config.NumberColumn(format="%.3f")
                                for c in ("precision", "recall", "accuracy", "ece", "mean_loss")})
    st.caption("Per label: precision (of the samples predicted positive, how many are), recall (of the positives, "
               "how many were found) and calibration error (ECE of the prediction's probability).")
    labels = metrics["label_index"].tolist()
    names = dict(zip(metrics["label_index"], metrics["name"]))
    worst = metrics.sort_values("mean_loss", ascending=False)["label_index"].iloc[0]
    picked = st.selectbox("Worst cases of label", labels, index=labels.index(worst),
                          format_func=lambda i: names[i], key="pos_label_pick")  # options: plain text
    left, right = st.columns([3, 2])
    left.dataframe(pos.worst_by_label(frame, picked), hide_index=True, key="pos_label_worst",
                   column_config={"loss": st.column_config.NumberColumn(format="%.3f"),
                                  "confidence": st.column_config.ProgressColumn(min_value=0, max_value=1)})
    right.plotly_chart(figures.reliability_figure(*pos.label_calibration(frame, picked)), key="pos_label_reliability")


def _image(preview: pd.Series | None) -> np.ndarray | None:
    if preview is None or preview.get("kind") != "image":
        return None
    x = np.asarray(preview["values"], dtype=np.float32).reshape([int(s) for s in preview["shape"]])
    return x.mean(axis=-1) if x.ndim == 3 else x if x.ndim == 2 else None


def sample_section(r, info: dict, sample_id: str, preview: pd.Series | None) -> None:
    """One sample over its positions: its tokens coloured by loss, its masks over the input, or
    its labels one by one."""
    layout = info.get("layout", "tokens")
    frame = position_frame(r.path, r.version, r.split, r.step, (str(sample_id),))
    if frame.empty:
        st.info(f"No {UNITS.get(layout, 'positions')} stored for this sample: only the first "
                f"{info.get('stored_samples', 0):,} samples of the evaluation keep them (the cap).")
        return
    if layout == "tokens":
        vocab = vocabulary(r.path, r.version, r.split)
        ids = None
        if preview is not None and preview.get("kind") == "tokens":
            ids = [int(v) for v in np.asarray(preview["values"]).reshape(-1)]
        classes = r.class_names if r.class_names and len(r.class_names) >= pos.class_count(frame) else None
        table = pos.token_table(frame, ids, vocab, classes)
        st.plotly_chart(figures.token_loss_figure(table, title=f"{len(table)} tokens coloured by loss (✗: wrong)"),
                        key="sample_tokens")
        st.caption("Tokens as the tokenizer passed to `run.evaluate(tokenizer=...)` writes them" if vocab else
                   "Token ids (pass `run.evaluate(..., tokenizer=tokenizer)` to see them as text)")
    elif layout == "pixels":
        shape = [int(s) for s in info.get("shape") or []]
        label, pred = pos.masks(frame, shape)
        image = _image(preview)
        size = image.shape if image is not None else label.shape[:2]
        label, pred = pos.pool_mask(label, size), pos.pool_mask(pred, size)
        st.plotly_chart(figures.mask_overlay_figure(image, label, pred, r.class_names), key="sample_masks")
    else:
        table = frame[["position", "label", "prediction", "confidence", "loss"]]
        table = table.rename(columns={"position": "label_index"})
        names = _names(r.class_names, int(table["label_index"].max()) + 1)
        st.dataframe(table.assign(name=[names[i] for i in table["label_index"]]), hide_index=True,
                     key="sample_labels", column_config={"loss": st.column_config.NumberColumn(format="%.3f")})


def compare_section(run_a: diagnostics.Run, run_b: diagnostics.Run, split: str, class_names) -> None:
    """What B fixed and broke position by position, when both evaluations stored positions."""
    info_a, info_b = info_of(run_a, split), info_of(run_b, split)
    if not info_a or not info_b:
        return
    unit = UNITS.get(info_a.get("layout"), "positions")
    if (info_a.get("layout"), info_a.get("shape")) != (info_b.get("layout"), info_b.get("shape")):
        shown = [f"{md(i.get('layout'))} of shape {md(i.get('shape'))}" for i in (info_a, info_b)]
        st.caption(f"Positions are not compared: A stored {shown[0]}, B {shown[1]}.")
        return
    changes = pos.position_changes(position_frame(str(run_a.path), run_a.data_version(), split, None),
                                   position_frame(str(run_b.path), run_b.data_version(), split, None))
    st.subheader(f"Fixed and broken {unit}")
    if changes.empty:
        st.info(f"No {unit[:-1]} was stored by both runs with the same label: positions are compared where both "
                "evaluations kept the sample (the cap) and its label there is the same.")
        return
    outcome = changes["outcome"].value_counts()
    fixed, broken = int(outcome.get("fixed", 0)), int(outcome.get("broken", 0))
    cols = st.columns(4)
    cols[0].metric(f"{unit.capitalize()} in both", f"{len(changes):,}")
    cols[1].metric(f"Fixed {unit}", f"{fixed:,}", help="wrong in A, right in B")
    cols[2].metric(f"Broken {unit}", f"{broken:,}", help="right in A, wrong in B")
    cols[3].metric("p-value", f"{mcnemar_p(fixed, broken):.3g}",
                   help="McNemar's test of fixed against broken positions (positions of one sample are not "
                        "independent: read it as a guide)")
    st.plotly_chart(figures.position_changes_figure(pos.changes_by_class(changes, class_names)),
                    key="compare_positions")
    st.dataframe(pos.changes_by_sample(changes).head(200), hide_index=True, key="compare_position_samples")
    st.caption(f"Samples by how many of their {unit} B fixed and broke, the most changed first (200 at most).")
