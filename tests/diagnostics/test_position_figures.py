"""Figures of errors over positions: what they draw, and hostile token strings escaped."""

import numpy as np
import pandas as pd

from diagnostics import figures
from diagnostics import positions as P


def test_token_figure_colours_by_loss_and_escapes_tokens():
    tokens = pd.DataFrame({"position": [0, 1, 2], "token": ["<script>", "a&b", ""], "label": ["x", "y", "<i>z"],
                           "prediction": ["x", "q", "z"], "correct": [True, False, True],
                           "loss": [0.1, 2.5, 0.3], "confidence": [0.9, 0.2, 0.7]})
    fig = figures.token_loss_figure(tokens, per_row=2)
    heat = fig.data[0]
    assert np.asarray(heat.z).shape == (2, 2) and heat.z[0][1] == 2.5 and np.isnan(heat.z[1][1])
    text = [t for row in heat.text for t in row]
    assert "&lt;script&gt;" in text and "a&amp;b ✗" in text and "&lt;i&gt;z" in text  # no token: its label
    assert "<script>" not in str(fig.to_plotly_json())
    assert figures.token_loss_figure(tokens.iloc[:0]).layout.annotations  # says why it is blank


def test_mask_overlay_marks_disagreement_only_where_both_counted():
    label = np.array([[0, 1], [1, -1]])
    pred = np.array([[0, 0], [1, 1]])
    fig = figures.mask_overlay_figure(np.zeros((2, 2)), label, pred, class_names=["bg", "<b>x</b>"])
    wrong = np.asarray(fig.data[-1].z, dtype=float)
    assert wrong[0, 0] == 0 and wrong[0, 1] == 1 and wrong[1, 0] == 0 and np.isnan(wrong[1, 1])
    assert "33.3% of counted pixels disagree" in fig.layout.title.text
    assert "<b>x</b>" not in str(fig.to_plotly_json())


def test_overlap_and_label_and_change_figures_draw_their_numbers():
    f = pd.DataFrame({"sample_id": ["a"] * 4, "position": [0, 1, 2, 3], "label": [0, 1, 1, 2],
                      "prediction": [0, 1, 0, 2], "loss": [0.1] * 4, "confidence": [0.9] * 4})
    overlap = P.class_overlap(f, num_classes=4)
    fig = figures.overlap_figure(overlap)
    assert list(fig.data[0].y) == [0.5, 0.5, 1.0]  # class 3 never occurs: not drawn
    conf = figures.position_confusion_figure(P.position_confusion(f, 3), ["a", "b", "c"], unit="pixels")
    assert "pixels" in conf.data[0].hovertemplate and conf.layout.title.text == "confusion matrix over pixels"
    metrics = P.label_metrics(f.assign(label=[1, 0, 1, 1], prediction=[1, 1, 1, 0]))
    assert len(figures.label_metrics_figure(metrics).data) == 2
    changes = P.changes_by_class(P.position_changes(f, f.assign(prediction=[1, 1, 1, 2])))
    fig = figures.position_changes_figure(changes)
    assert list(fig.data[0].y) == [0, 1, 0] and list(fig.data[1].y) == [-1, 0, 0]
