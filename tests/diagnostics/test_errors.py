"""Error tables: metrics against scikit-learn, confusion cells and calibration against hand
counts, the regression summary against numpy."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from diagnostics.errors import (
    calibration,
    class_metrics,
    confusion_cell,
    confusion_matrix,
    regression_summary,
    worst_cases,
)


def classification_frame(n: int = 400, k: int = 5, seed: int = 0) -> pd.DataFrame:
    """Random predictions over k classes; class k-1 is never predicted (zero-division case)."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, k, n)
    prediction = np.where(rng.uniform(size=n) < 0.6, label, rng.integers(0, k - 1, n))
    prediction = np.where(prediction == k - 1, 0, prediction)
    return pd.DataFrame({
        "sample_id": [f"s{i}" for i in range(n)], "split": "val", "step": 10,
        "label": label.astype(float), "prediction": prediction.astype(float),
        "loss": rng.exponential(size=n), "correct": (label == prediction).astype(float),
        "confidence": rng.uniform(0.2, 1.0, n)})


def hand_frame() -> pd.DataFrame:
    return pd.DataFrame({
        "sample_id": ["a", "b", "c", "d", "e", "f", "g", "h"],
        "label":      [0, 1, 1, 1, 2, 2, 0, 1],
        "prediction": [0, 0, 0, 1, 2, 1, 0, 0],
        "loss":       [0.1, 2.0, 3.5, 0.2, 0.3, 1.7, 0.05, 0.9],
        "confidence": [0.05, 0.15, 0.15, 0.55, 0.95, 0.95, 0.85, 1.0],
        "correct":    [1, 0, 0, 1, 1, 0, 1, 0],
    }).astype({"label": float, "prediction": float, "correct": float})


# -- classification metrics ------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(3))
def test_class_metrics_match_sklearn(seed):
    df = classification_frame(seed=seed)
    got = class_metrics(df, 5, ["CNV", "DME", "DRUSEN", "NORMAL", "OTHER"])
    p, r, f, s = skm.precision_recall_fscore_support(df["label"], df["prediction"], labels=range(5),
                                                     zero_division=0)
    assert list(got.columns) == ["class", "name", "precision", "recall", "f1", "support"]
    assert got["name"].tolist() == ["CNV", "DME", "DRUSEN", "NORMAL", "OTHER"]
    np.testing.assert_allclose(got["precision"], p)
    np.testing.assert_allclose(got["recall"], r)
    np.testing.assert_allclose(got["f1"], f)
    np.testing.assert_array_equal(got["support"], s)
    assert got.loc[4, "precision"] == 0.0        # never predicted: zero division gives 0.0


def test_class_metrics_class_without_labels_scores_zero():
    df = hand_frame()
    got = class_metrics(df, 4)
    assert got["name"].tolist() == ["0", "1", "2", "3"]
    assert got.loc[3, ["precision", "recall", "f1", "support"]].tolist() == [0.0, 0.0, 0.0, 0]
    with pytest.raises(ValueError, match="one name per class"):
        class_metrics(df, 4, ["a", "b"])


@pytest.mark.parametrize("seed", range(3))
def test_confusion_matrix_matches_sklearn(seed):
    df = classification_frame(seed=seed)
    expected = skm.confusion_matrix(df["label"], df["prediction"], labels=range(5))
    np.testing.assert_array_equal(confusion_matrix(df, 5), expected)


def test_confusion_matrix_rejects_an_index_outside_the_classes():
    with pytest.raises(ValueError, match="num_classes=3"):
        confusion_matrix(hand_frame(), 2)


def test_confusion_cell_hand_count():
    df = hand_frame()
    m = confusion_matrix(df, 3)
    # true 1 predicted 0: b (2.0), c (3.5), h (0.9); true 2 predicted 1: f
    assert m[1, 0] == 3 and m[2, 1] == 1 and m[0, 0] == 2 and m.sum() == 8
    cell = confusion_cell(df, 1, 0)
    assert cell["sample_id"].tolist() == ["c", "b", "h"]
    assert confusion_cell(df, 2, 1)["sample_id"].tolist() == ["f"]
    assert confusion_cell(df, 0, 2).empty


# -- calibration -----------------------------------------------------------------------------

def test_calibration_hand_computed():
    table, ece = calibration(hand_frame(), bins=10)
    assert table["count"].tolist() == [1, 2, 0, 0, 0, 1, 0, 0, 1, 3]   # 1.0 falls in the last bin
    np.testing.assert_allclose(table["bin_lo"], np.arange(10) / 10)
    np.testing.assert_allclose(table["bin_hi"], np.arange(1, 11) / 10)
    filled = table[table["count"] > 0]
    np.testing.assert_allclose(filled["mean_confidence"], [0.05, 0.15, 0.55, 0.85, (0.95 + 0.95 + 1.0) / 3])
    np.testing.assert_allclose(filled["accuracy"], [1.0, 0.0, 1.0, 1.0, 1 / 3])
    assert table.loc[table["count"] == 0, "accuracy"].isna().all()
    # Σ count/N · |acc − conf| over the five filled bins, N = 8
    expected = (1 * abs(1 - 0.05) + 2 * abs(0 - 0.15) + 1 * abs(1 - 0.55) + 1 * abs(1 - 0.85)
                + 3 * abs(1 / 3 - (0.95 + 0.95 + 1.0) / 3)) / 8
    assert ece == pytest.approx(expected)
    assert ece == pytest.approx(3.75 / 8)


def test_calibration_skips_missing_confidence_and_handles_no_samples():
    df = hand_frame()
    df.loc[0, "confidence"] = np.nan
    table, _ = calibration(df, bins=5)
    assert table["count"].sum() == 7 and len(table) == 5
    table, ece = calibration(df.iloc[:0])
    assert table["count"].sum() == 0 and np.isnan(ece)


def test_calibration_perfectly_calibrated_scores_zero():
    df = pd.DataFrame({"confidence": [0.25] * 4 + [0.75] * 4, "correct": [1, 0, 0, 0, 1, 1, 1, 0]})
    assert calibration(df, bins=2)[1] == pytest.approx(0.0)


# -- worst cases -----------------------------------------------------------------------------

def test_worst_cases_sorts_by_loss_and_filters():
    df = hand_frame()
    assert worst_cases(df, "classification")["sample_id"].tolist() == ["c", "b", "f", "h", "e", "d", "a", "g"]
    assert worst_cases(df, "classification", limit=2)["sample_id"].tolist() == ["c", "b"]
    assert worst_cases(df, "classification", true_class=[0, 2])["sample_id"].tolist() == ["f", "e", "a", "g"]
    assert worst_cases(df, "classification", predicted_class=0, true_class=1)["sample_id"].tolist() == ["c", "b", "h"]
    # inclusive on both ends
    got = worst_cases(df, "classification", confidence_range=(0.15, 0.95))
    assert got["sample_id"].tolist() == ["c", "b", "f", "e", "d", "g"]


def test_worst_cases_keeps_rows_with_repeated_index_labels_and_puts_missing_loss_last():
    df = pd.concat([hand_frame(), hand_frame().assign(sample_id=lambda d: d["sample_id"] + "2")])
    df.iloc[0, df.columns.get_loc("loss")] = np.nan
    got = worst_cases(df, "classification")
    assert len(got) == 16 and got["sample_id"].iloc[-1] == "a"
    assert got["loss"].iloc[:-1].is_monotonic_decreasing


def test_worst_cases_by_tags():
    df = hand_frame()
    tags = pd.DataFrame({"sample_id": ["a", "a", "c", "e", "h"], "tag": ["blurry", "dark", "dark", "mislabeled", "x"]})
    got = worst_cases(df, "classification", tags=["dark", "mislabeled"], tag_frame=tags)
    assert got["sample_id"].tolist() == ["c", "e", "a"]
    assert worst_cases(df, "classification", tags=["nothing"], tag_frame=tags).empty
    with pytest.raises(ValueError, match="tag_frame"):
        worst_cases(df, "classification", tags=["dark"])


def test_worst_cases_regression_sorts_by_absolute_residual():
    df = pd.DataFrame({"sample_id": list("abcd"), "label": [1.0, 2.0, 3.0, 4.0],
                       "prediction": [1.5, 0.0, 3.1, 7.0], "loss": [9.0, 0.0, 0.0, 0.0]})
    df["residual"] = df["prediction"] - df["label"]
    assert worst_cases(df, "regression")["sample_id"].tolist() == ["d", "b", "a", "c"]


@pytest.mark.parametrize("kwargs, match", [
    (dict(task="segmentation"), "task='classification'"),
    (dict(task="classification", confidence_range=(0.9, 0.1)), "lo <= hi"),
    (dict(task="classification", confidence_range=(0.1,)), "pair of numbers"),
    (dict(task="classification", true_class=1.5), "list of ints"),
    (dict(task="regression", true_class=1), "classification"),
])
def test_worst_cases_errors_say_what_to_do(kwargs, match):
    with pytest.raises(ValueError, match=match) as info:
        worst_cases(hand_frame(), **kwargs)
    assert "\n" not in str(info.value) and " — " in str(info.value)


# -- regression ------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(3))
def test_regression_summary_matches_numpy(seed):
    rng = np.random.default_rng(seed)
    label = rng.normal(10, 3, 500)
    prediction = label * 0.8 + 2.5 + rng.normal(0, 1, 500)
    df = pd.DataFrame({"label": label, "prediction": prediction, "residual": prediction - label})
    stats, table = regression_summary(df, bins=8)
    resid = prediction - label
    assert stats["mae"] == pytest.approx(np.mean(np.abs(resid)))
    assert stats["rmse"] == pytest.approx(np.sqrt(np.mean(resid ** 2)))
    assert stats["bias"] == pytest.approx(np.mean(resid))
    assert stats["r2"] == pytest.approx(skm.r2_score(label, prediction))
    counts, edges = np.histogram(label, bins=8)
    sums, _ = np.histogram(label, bins=edges, weights=resid)
    abs_sums, _ = np.histogram(label, bins=edges, weights=np.abs(resid))
    assert list(table.columns) == ["label_lo", "label_hi", "count", "mean_residual", "mae"]
    np.testing.assert_allclose(table["label_lo"], edges[:-1])
    np.testing.assert_allclose(table["label_hi"], edges[1:])
    np.testing.assert_array_equal(table["count"], counts)
    filled = counts > 0
    np.testing.assert_allclose(table["mean_residual"][filled], sums[filled] / counts[filled])
    np.testing.assert_allclose(table["mae"][filled], abs_sums[filled] / counts[filled])


def test_regression_summary_without_residual_column_and_degenerate_labels():
    df = pd.DataFrame({"label": [2.0, 2.0, 2.0], "prediction": [1.0, 2.0, 4.0]})
    stats, table = regression_summary(df)
    assert stats["bias"] == pytest.approx(1 / 3) and np.isnan(stats["r2"])
    assert table["count"].tolist() == [3]
    stats, table = regression_summary(df.iloc[:0])
    assert np.isnan(stats["mae"]) and table.empty


def test_target_unit_from_the_manifest_or_its_config():
    from diagnostics.errors import target_unit

    assert target_unit({"config": {"target": "breaths/min", "n": 2000}}) == "breaths/min"
    assert target_unit({"target_unit": "mm", "config": {"target": "breaths/min"}}) == "mm"  # top level first
    assert target_unit({"config": {"unit": " kPa "}}) == "kPa"
    assert target_unit({"config": {"target": 3}}) is None and target_unit({}) is None and target_unit(None) is None


def test_regression_loss_note_names_the_units_and_the_training_loss():
    from diagnostics.errors import regression_loss_note

    note = regression_loss_note("breaths/min", "SmoothL1Loss")
    assert "(breaths/min)²" in note and "squared error" in note and "SmoothL1Loss" in note
    assert "are in breaths/min" in note
    plain = regression_loss_note(None, "MSELoss")
    assert "target's unit squared" in plain and "MSELoss" not in plain


def test_review_table_names_classes_and_keeps_inputs():
    from diagnostics.errors import review_table

    view = pd.DataFrame({"sample_id": [3, 1], "label": [1.0, np.nan], "prediction": [0.0, 2.0], "loss": [2.0, 1.0],
                         "confidence": [0.9, 0.5], "residual": [np.nan, np.nan], "tags": [["dark"], []],
                         "input_brightness": [0.1, 0.2], "meta_site": ["a", "b"]})
    table = review_table(view, "classification", ["CNV", "DME", "DRUSEN"])
    assert list(table.columns) == ["sample_id", "label", "prediction", "loss", "confidence", "tags", "brightness",
                                   "site"]
    assert table["label"].tolist() == ["DME", "—"] and table["prediction"].tolist() == ["CNV", "DRUSEN"]
    assert table["sample_id"].tolist() == ["3", "1"] and table["tags"].tolist() == ["dark", ""]
    assert review_table(view, "classification")["label"].tolist() == ["1", "—"]  # no names: the index


def test_review_table_for_regression_has_residual_and_absolute_error():
    from diagnostics.errors import review_table

    view = pd.DataFrame({"sample_id": ["a", "b"], "label": [10.0, 20.0], "prediction": [13.0, 18.5],
                         "loss": [9.0, 2.25]})
    table = review_table(view, "regression")
    assert table["residual"].tolist() == [3.0, -1.5] and table["abs_error"].tolist() == [3.0, 1.5]
    assert table["label"].tolist() == [10.0, 20.0] and "confidence" not in table


# -- what an error review leads with --------------------------------------------------------

def test_most_confused_is_the_largest_off_diagonal_cell():
    from diagnostics.errors import most_confused

    m = np.array([[9, 1, 0], [4, 7, 2], [0, 3, 8]])
    assert most_confused(m) == (1, 0)  # four 1s predicted as 0; the diagonal never counts
    assert most_confused(m, true_class=2) == (2, 1)
    assert most_confused(np.diag([3, 4])) == (0, 1)  # no errors: the first off-diagonal cell
    assert most_confused(np.zeros((0, 0))) == (0, 0)


def test_error_headline_matches_hand_counts_and_the_regression_summary():
    from diagnostics.errors import error_headline

    samples = hand_frame()
    head = error_headline(samples, "classification")
    assert head["samples"] == 8 and head["wrong"] == 4 and head["accuracy"] == pytest.approx(0.5)
    assert head["ece"] == pytest.approx(calibration(samples)[1])
    reg = pd.DataFrame({"label": [1.0, 2.0, 4.0], "prediction": [1.5, 1.0, 4.5]})
    head = error_headline(reg, "regression")
    assert head["samples"] == 3
    assert head["mae"] == pytest.approx(2 / 3) and head["bias"] == pytest.approx(0.0)
    assert head["rmse"] == pytest.approx(np.sqrt((0.25 + 1 + 0.25) / 3))
    with pytest.raises(ValueError):
        error_headline(samples, "segmentation")


def test_class_count_from_the_manifest_or_the_probabilities():
    from diagnostics.errors import class_count

    samples = pd.DataFrame({"probs": [np.array([0.2, 0.3, 0.5])]})
    assert class_count({"num_classes": 4}, samples) == 4
    assert class_count({}, samples) == 3
    assert class_count({}, samples.iloc[:0]) == 0


def test_regression_loss_note_takes_the_functional_mse_for_the_same_quantity():
    from diagnostics.errors import regression_loss_note

    assert "mse_loss" not in regression_loss_note("breaths/min", "mse_loss")  # F.mse_loss: the same quantity
    assert "SmoothL1Loss, which this column is not" in regression_loss_note("breaths/min", "SmoothL1Loss")
