"""Error review, Sample detail and Compare on evaluations that stored positions (tokens, pixels,
several labels per sample), on runs written with the project's writer, and the same pages on a
run without positions looking as before."""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pytest

from diagnostics import schema
from diagnostics.schema import dataset_key
from diagnostics.store import RunWriter
from tests.pages._app import open_app, plotly_charts, plotly_values, run_app

HOSTILE = "<img src=x onerror=alert(1)>"


def write_position_run(folder, name, layout, labels, predictions, shape, class_names=None, vocabulary=None,
                       previews=None, stored=None, positions=True):
    """A run with one evaluation of split val whose positions are `labels` and `predictions`
    (n × positions, -100 not counted); per-sample rows aggregated the contract's way."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    n = len(labels)
    ids = [f"s{i}" for i in range(n)]
    counted = labels != -100
    loss = np.where(labels == predictions, 0.1, 2.0)
    conf = np.where(labels == predictions, 0.9, 0.6)
    label_col = np.array([np.bincount(row[c]).argmax() for row, c in zip(labels, counted)], float)
    pred_col = np.array([np.bincount(row[c]).argmax() for row, c in zip(predictions, counted)], float)
    acc = np.array([(row == p)[c].mean() for row, p, c in zip(labels, predictions, counted)])
    k = len(class_names) if class_names else int(max(labels.max(), predictions.max())) + 1
    probs = [np.bincount(p[c], minlength=k)[:k] / c.sum() for p, c in zip(predictions, counted)]  # mean one-hot
    writer = RunWriter(folder / name, {"name": name, "task": "classification", "class_names": class_names,
                                       "model_class": "Net"}, flush_every_s=3600)
    cols = {"step": np.full(n, 5), "split": ["val"] * n, "sample_id": ids, "rank": np.zeros(n, np.int32),
            "label": label_col, "prediction": pred_col,
            "loss": np.array([lo[c].mean() for lo, c in zip(loss, counted)]),
            "confidence": np.array([cf[c].mean() for cf, c in zip(conf, counted)]), "label_prob": np.full(n, np.nan),
            "margin": np.full(n, np.nan), "correct": acc, "residual": np.full(n, np.nan), "probs": probs,
            "embedding": [None] * n}
    writer.add_table("samples", pa.table({k: pa.array(v, schema.SAMPLES_SCHEMA.field(k).type)
                                          for k, v in cols.items()}, schema=schema.SAMPLES_SCHEMA))
    keep = range(n if stored is None else stored)
    rows = [(ids[i], p, labels[i, p], predictions[i, p], loss[i, p], conf[i, p])
            for i in keep for p in range(labels.shape[1]) if counted[i, p]]
    sid, position, lab, pred, lo, cf = (list(c) for c in zip(*rows))
    writer.add_positions(5, "val", sid, np.array(position), np.array(lab), np.array(pred), np.array(lo), np.array(cf))
    if previews is not None:
        kind, preview_shape, values = previews
        writer.add_previews("val", ids, kind, preview_shape, values)
    if vocabulary:
        writer.add_vocabulary(5, "val", list(vocabulary), list(vocabulary.values()))
    info = {"shape": list(shape), "layout": layout, "ignore_index": -100, "stored_samples": len(keep),
            "total_samples": n, "cap": 200_000, "shift_labels": False}
    entry = {"split": "val", "step": 5, "n": n, "dataset": dataset_key("val", ids, label_col)}
    writer.update_manifest(evaluations=[{**entry, schema.EVAL_POSITIONS: info} if positions else entry])
    writer.close()
    return folder / name


# tokens: 3 sentences of 5 tokens (last of the first is padding); token ids 1..6
TOKEN_IDS = np.array([[1, 2, 3, 4, 0], [5, 2, 6, 1, 2], [3, 3, 4, 5, 6]])
TAG_LABELS = np.array([[0, 1, 0, 2, -100], [1, 0, 0, 2, 0], [0, 0, 1, 1, 2]])
TAG_PRED_A = np.array([[0, 1, 1, 2, 0], [0, 0, 0, 2, 0], [0, 0, 1, 0, 2]])
TAG_PRED_B = np.array([[0, 1, 0, 2, 0], [0, 0, 1, 2, 0], [0, 0, 1, 1, 2]])
VOCAB = {0: "<pad>", 1: HOSTILE, 2: "the", 3: "**bold**", 4: "[x](javascript:alert(1))", 5: "Ada", 6: "&amp;"}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    f = tmp_path_factory.mktemp("runs")
    tokens = ("tokens", [5], TOKEN_IDS.astype(float))
    write_position_run(f, "tok", "tokens", TAG_LABELS, TAG_PRED_A, [5], ["O", HOSTILE, "NUM"], VOCAB, tokens)
    write_position_run(f, "tok_b", "tokens", TAG_LABELS, TAG_PRED_B, [5], ["O", HOSTILE, "NUM"], VOCAB, tokens)
    # pixels: two 4x4 masks; sample s0 has a 2x2 square of class 1 predicted one pixel short
    seg = np.zeros((2, 4, 4), int)
    seg[0, 1:3, 1:3] = 1
    seg[1, 0, :] = 2
    pred = seg.copy()
    pred[0, 2, 2] = 0
    pred[1, 3, 3] = 2
    image = np.random.default_rng(0).random((2, 4, 4, 1))
    write_position_run(f, "seg", "pixels", seg.reshape(2, -1), pred.reshape(2, -1), [4, 4],
                       ["background", "disc", "square"], previews=("image", [4, 4, 1], image.reshape(2, -1)))
    # several labels: 4 samples, 3 labels each
    multi = np.array([[1, 0, 1], [0, 0, 1], [1, 1, 0], [0, 1, 1]])
    multi_pred = np.array([[1, 0, 0], [0, 1, 1], [1, 1, 0], [0, 0, 1]])
    write_position_run(f, "multi", "labels", multi, multi_pred, [3], ["cat", "dog", HOSTILE])
    write_position_run(f, "capped", "tokens", TAG_LABELS, TAG_PRED_A, [5], ["O", "NAME", "NUM"], stored=1,
                       previews=tokens)
    write_position_run(f, "plain", "tokens", TAG_LABELS, TAG_PRED_A, [5], positions=False)
    return f


def _table(at, *columns):
    """The page's first table with these columns (a table without row selection has no key in AppTest)."""
    return next(d.value for d in at.dataframe if set(columns) <= set(d.value.columns))


def _no_raw_hostile(at):
    for chart in plotly_charts(at):
        assert HOSTILE not in str(chart), chart["layout"].get("title")
    for el in (*at.markdown, *at.caption, *at.info, *at.subheader):
        assert not re.search(r"(?<!\\)<img", el.value), el.value  # Markdown: escaped as \<img


def test_error_review_of_tokens_shows_the_confusion_over_tokens(monkeypatch, folder):
    at = open_app(monkeypatch, folder, "pages/errors.py", "tok", check_errors=True)
    assert at.tabs[-1].label == "Over tokens"
    assert not at.toggle(key="err_only_wrong").value  # over positions: every sample, worst first
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Tokens counted"] == "14"  # 15 positions, one padded
    assert metrics["Accuracy over tokens"] == f"{11 / 14:.1%}"
    spec = next(c for c in plotly_charts(at) if c["layout"]["title"]["text"] == "confusion matrix over tokens")
    counts = plotly_values(spec["data"][0]["text"]).reshape(3, 3)
    # by hand from TAG_LABELS against TAG_PRED_A
    assert counts.tolist() == [[6, 1, 0], [2, 2, 0], [0, 0, 3]]
    # the largest confusion opens: labelled HOSTILE, predicted O, in s1 (position 0) and s2 (position 3)
    cell = at.dataframe(key="pos_cell_table").value
    assert sorted(cell["sample_id"]) == ["s1", "s2"] and cell["positions"].tolist() == [1, 1]
    at.session_state["pos_cell_table"] = {"selection": {"rows": [0], "columns": [], "cells": []}}
    at.run()
    at.button(key="pos_cell_open").click().run()
    assert not at.exception and [t.value for t in at.title] == ["Sample detail"]
    assert at.session_state["sample_id"] == cell["sample_id"].iloc[0]
    _no_raw_hostile(at)


def test_error_review_of_pixels_gives_iou_and_dice(monkeypatch, folder):
    at = open_app(monkeypatch, folder, "pages/errors.py", "seg", check_errors=True)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Pixels counted"] == "32"
    # disc: 4 labelled, 3 predicted, 3 both -> IoU 0.75; square: 4 labelled, 5 predicted -> 4/5
    # background: 24 labelled, 24 predicted, 23 both -> 23/25
    assert metrics["Mean IoU"] == f"{(0.75 + 0.8 + 23 / 25) / 3:.3f}"
    overlap = _table(at, "iou", "dice").set_index("class")
    assert overlap.loc["disc", "iou"] == pytest.approx(0.75) and overlap.loc["square", "dice"] == pytest.approx(8 / 9)


def test_error_review_of_several_labels_gives_precision_and_recall(monkeypatch, folder):
    at = open_app(monkeypatch, folder, "pages/errors.py", "multi", check_errors=True)
    table = _table(at, "precision", "recall", "ece", "positives").set_index("name")
    # by hand: dog labels 0,0,1,1 predicted 0,1,1,0; the third label 1,1,0,1 predicted 0,1,0,1
    assert table.loc["dog", "precision"] == pytest.approx(1 / 2) and table.loc["dog", "recall"] == pytest.approx(1 / 2)
    assert table.loc[HOSTILE, "recall"] == pytest.approx(2 / 3) and table.loc[HOSTILE, "precision"] == 1
    worst = _table(at, "sample_id", "position", "confidence")
    assert len(worst) == 4
    # the label with the largest mean loss opens (dog): right twice at 0.9, wrong twice at 0.6
    titles = [c["layout"]["title"]["text"] for c in plotly_charts(at)]
    assert f"reliability (ECE {0.5 * 0.6 + 0.5 * 0.1:.3f})" in titles, titles
    _no_raw_hostile(at)


def _sample(monkeypatch, folder, run, sample_id):
    at = run_app(monkeypatch, folder, run)
    at.session_state["sample_id"], at.session_state["sample_split"] = sample_id, "val"
    at.switch_page("pages/sample.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_sample_detail_shows_tokens_coloured_by_loss_escaped(monkeypatch, folder):
    at = _sample(monkeypatch, folder, "tok", "s0")
    spec = next(c for c in plotly_charts(at) if "tokens coloured by loss" in c["layout"]["title"]["text"])
    text = [t for row in spec["data"][0]["text"] for t in row]
    assert text[0].startswith("&lt;img␣src=")  # shortened, spaces shown, escaped
    assert text[2] == "**bold** ✗"  # position 2 predicted wrong; plotly shows ** as typed
    loss = plotly_values(spec["data"][0]["z"]).ravel()
    assert loss[:4].tolist() == [0.1, 0.1, 2.0, 0.1]
    _no_raw_hostile(at)


def test_sample_detail_overlays_masks_and_the_disagreement(monkeypatch, folder):
    at = _sample(monkeypatch, folder, "seg", "s0")
    spec = next(c for c in plotly_charts(at) if "disagree" in c["layout"]["title"]["text"])
    wrong = plotly_values(spec["data"][-1]["z"]) if isinstance(spec["data"][-1]["z"], dict) else \
        np.asarray(spec["data"][-1]["z"], dtype=float)
    wrong = np.asarray(wrong, dtype=float).reshape(4, 4)
    assert wrong.sum() == 1 and wrong[2, 2] == 1
    assert "6.2% of counted pixels disagree" in spec["layout"]["title"]["text"]


def test_compare_tells_fixed_and_broken_tokens(monkeypatch, folder):
    at = open_app(monkeypatch, folder, "pages/compare.py", "tok")
    at.selectbox(key="compare_b_tok").set_value("tok_b").run()
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    # A wrong at s0/2, s1/0, s2/3; B wrong at s1/0, s1/2: s0/2 and s2/3 fixed, s1/2 broken
    assert metrics["Tokens in both"] == "14" and metrics["Fixed tokens"] == "2" and metrics["Broken tokens"] == "1"
    by_sample = _table(at, "fixed", "broken", "net").set_index("sample_id")
    assert by_sample.loc["s1", ["fixed", "broken"]].tolist() == [0, 1]
    assert by_sample.loc["s2", ["fixed", "broken"]].tolist() == [1, 0]


def test_pages_of_a_run_without_positions_are_as_before(monkeypatch, folder):
    at = open_app(monkeypatch, folder, "pages/errors.py", "plain", check_errors=True)
    assert [t.label for t in at.tabs] == ["Worst cases", "Confusion matrix", "Per class", "Calibration",
                                          "Where errors concentrate"]
    assert not any(m.label.endswith("counted") for m in at.metric)


def test_a_capped_evaluation_says_what_it_covers(monkeypatch, folder):
    at = open_app(monkeypatch, folder, "pages/errors.py", "capped", check_errors=True)
    assert any("first 1 of 3 evaluated samples" in c.value for c in at.caption)
    assert {m.label: m.value for m in at.metric}["Tokens counted"] == "4"  # s0's counted tokens only
    at = _sample(monkeypatch, folder, "capped", "s2")
    assert any("No tokens stored for this sample" in i.value for i in at.info)
    at = _sample(monkeypatch, folder, "capped", "s0")  # no vocabulary: the ids, said so
    spec = next(c for c in plotly_charts(at) if "tokens coloured by loss" in c["layout"]["title"]["text"])
    assert [t for row in spec["data"][0]["text"] for t in row][:2] == ["1", "2"]
    assert any("Token ids (pass" in c.value for c in at.caption)
