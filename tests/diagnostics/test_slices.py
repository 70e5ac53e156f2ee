"""find_slices on synthetic frames with a planted slice (and without one): the planted slice
comes first and its numbers match a direct count; noise reports nothing with a high lift."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from diagnostics.slices import COLUMNS, describe_slice, find_slices, slice_mask

CLASSES = ["CNV", "DME", "DRUSEN", "NORMAL"]


def synthetic(seed: int, n: int = 2000, planted: bool = True) -> pd.DataFrame:
    """Brightness uniform on [0, 2], so `brightness < 0.2` holds ~10% of the samples; there
    45% are wrong, elsewhere 5%. `input_noise` and `confidence` carry no signal."""
    rng = np.random.default_rng(seed)
    brightness = rng.uniform(0, 2, n)
    rate = np.where(planted & (brightness < 0.2), 0.45, 0.05)
    wrong = rng.uniform(size=n) < rate
    label = rng.integers(0, 4, n)
    prediction = np.where(wrong, (label + 1 + rng.integers(0, 3, n)) % 4, label)
    return pd.DataFrame({
        "sample_id": [f"s{i}" for i in range(n)], "label": label.astype(float),
        "prediction": prediction.astype(float), "correct": (~wrong).astype(float),
        "loss": rng.exponential(size=n), "confidence": rng.uniform(0.3, 1.0, n),
        "input_brightness": brightness, "input_noise": rng.normal(0, 1, n)})


@pytest.mark.parametrize("seed", range(3))
def test_planted_slice_comes_first_with_counts_that_match_its_mask(seed):
    df = synthetic(seed)
    table = find_slices(df, "classification", min_size=20)
    assert list(table.columns) == COLUMNS
    top = table.iloc[0]
    assert len(top["predicates"]) == 1
    feature, op, threshold = top["predicates"][0]
    assert (feature, op) == ("input_brightness", "<")
    assert abs(threshold - 0.2) <= 0.05

    mask = slice_mask(df, top["predicates"])
    wrong = 1 - df["correct"]
    assert top["size"] == mask.sum()
    assert top["errors"] == wrong[mask].sum()
    assert top["error_rate"] == pytest.approx(wrong[mask].mean())
    assert top["overall_rate"] == pytest.approx(wrong.mean())
    assert top["lift"] == pytest.approx(wrong[mask].mean() / wrong.mean())
    assert top["lift"] > 3
    # the same finding is not repeated at a neighbouring cut point
    for preds in table["predicates"].iloc[1:]:
        assert not any(f == "input_brightness" and o == "<" for f, o, _ in preds)


@pytest.mark.parametrize("seed", range(5))
def test_no_planted_slice_reports_nothing_with_a_high_lift(seed):
    df = synthetic(seed, planted=False)
    table = find_slices(df, "classification", min_size=20)
    assert (table["lift"] <= 1.5).all()
    for _, row in table.iterrows():          # whatever it reports is still a true count
        assert row["size"] == slice_mask(df, row["predicates"]).sum() >= 20


def test_conjunction_is_found_and_named_with_the_class():
    rng = np.random.default_rng(7)
    df = synthetic(7, n=3000, planted=False)
    inside = (df["label"] == 1) & (df["input_noise"] >= 0.8)
    wrong = np.where(inside, rng.uniform(size=len(df)) < 0.6, df["correct"] == 0)
    df["correct"] = (~wrong).astype(float)
    table = find_slices(df, "classification", class_names=CLASSES)
    top = table.iloc[0]
    features = {(f, o) for f, o, _ in top["predicates"]}
    assert features == {("label", "="), ("input_noise", ">=")}
    assert "label = DME" in top["description"]
    noise_cut = next(v for f, _, v in top["predicates"] if f == "input_noise")
    assert abs(noise_cut - 0.8) <= 0.15
    assert top["size"] == slice_mask(df, top["predicates"]).sum()
    assert all(len(p) == 1 for p in find_slices(df, "classification", max_depth=1)["predicates"])


def test_regression_uses_the_top_quartile_of_absolute_residuals():
    rng = np.random.default_rng(3)
    df = synthetic(3, planted=False)
    df["residual"] = rng.normal(0, 1, len(df)) * np.where(df["input_brightness"] < 0.2, 5.0, 1.0)
    table = find_slices(df, "regression")
    assert table.iloc[0]["overall_rate"] == pytest.approx(0.25, abs=0.002)
    feature, op, threshold = table.iloc[0]["predicates"][0]
    assert (feature, op) == ("input_brightness", "<") and abs(threshold - 0.2) <= 0.05


def test_error_override_and_tag_columns():
    df = synthetic(1, planted=False)
    blurry = np.random.default_rng(1).uniform(size=len(df)) < 0.1
    df["tags"] = [["blurry", "dark"] if b else ["dark"] for b in blurry]
    error = pd.Series(blurry & (np.random.default_rng(2).uniform(size=len(df)) < 0.7), index=df.index)
    table = find_slices(df, "classification", error=error)
    assert table.iloc[0]["overall_rate"] == pytest.approx(error.mean())
    assert table.iloc[0]["predicates"] == [("tags", "has", "blurry")]
    assert table.iloc[0]["size"] == slice_mask(df, table.iloc[0]["predicates"]).sum() == blurry.sum()
    # a scalar tag column is categorical
    df["tag"] = np.where(blurry, "blurry", "ok")
    table = find_slices(df, "classification", features=["tag", "input_noise"], error=error.to_numpy())
    assert table.iloc[0]["predicates"] == [("tag", "=", "blurry")]


def test_describe_slice_sentence():
    row = {"description": "input_brightness < 0.21", "error_rate": 0.41, "overall_rate": 0.07, "size": 96}
    assert describe_slice(row) == "brightness < 0.21: 41% wrong vs 7% overall, 96 samples"
    row = {"description": "label = DME and input_snr_db >= 3", "error_rate": 0.5, "overall_rate": 0.1, "size": 20}
    assert describe_slice(row) == "label = DME and snr_db >= 3: 50% wrong vs 10% overall, 20 samples"
    top = find_slices(synthetic(0), "classification").iloc[0]
    assert re.fullmatch(r"brightness < [\d.]+: \d+% wrong vs \d+% overall, \d+ samples", describe_slice(top))


def test_slice_mask_and_find_slices_reject_bad_input():
    df = synthetic(0, n=200)
    assert slice_mask(df, []).all()
    with pytest.raises(ValueError, match="unknown slice op"):
        slice_mask(df, [("input_noise", "~", 1)])
    with pytest.raises(ValueError, match="not a column"):
        slice_mask(df, [("input_missing", "<", 1)])
    with pytest.raises(ValueError, match="task="):
        find_slices(df, "ranking")
    with pytest.raises(ValueError, match="max_depth"):
        find_slices(df, "classification", max_depth=3)
    with pytest.raises(ValueError, match="not columns"):
        find_slices(df, "classification", features=["input_missing"])
    all_right = df.assign(correct=1.0)
    assert find_slices(all_right, "classification").empty
    assert list(find_slices(df.iloc[:0], "classification").columns) == COLUMNS


def test_review_features_are_the_inputs_label_tags_and_the_confidence_of_a_classifier():
    from diagnostics.slices import review_features

    samples = pd.DataFrame(columns=["sample_id", "input_mean", "label", "meta_site", "confidence", "loss"])
    assert review_features(samples, "classification") == ["input_mean", "meta_site", "label", "tags", "confidence"]
    assert review_features(samples, "regression") == ["input_mean", "meta_site", "label", "tags"]


def test_features_that_read_alike_are_named_whole():
    """The input's estimated SNR and the user's own `snr_db` metadata: a slice on either says
    which (a bare 'snr_db < 40.5' could be both); the review table keeps both columns."""
    from diagnostics.errors import review_table

    rng = np.random.default_rng(0)
    n = 400
    snr_input, snr_meta = rng.uniform(0, 60, n), rng.uniform(0, 60, n)
    wrong = snr_meta < 15  # errors concentrate at low *simulator* SNR
    samples = pd.DataFrame({"sample_id": np.arange(n), "label": 0.0, "prediction": np.where(wrong, 1.0, 0.0),
                            "correct": (~wrong).astype(float), "loss": 1.0, "confidence": 0.5,
                            "input_snr_db": snr_input, "meta_snr_db": snr_meta, "input_brightness": snr_input})
    top = find_slices(samples, "classification", max_depth=1).iloc[0]
    assert describe_slice(top).startswith("snr_db (meta) < ")
    assert top["predicates"][0][0] == "meta_snr_db"  # the mask still reads the real column
    table = review_table(samples, "classification")
    assert {"snr_db (input)", "snr_db (meta)", "brightness"} <= set(table.columns)
