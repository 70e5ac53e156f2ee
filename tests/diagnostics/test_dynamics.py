"""sample_dynamics and data_map_regions, checked against numpy by hand; the label-noise run."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from diagnostics.dynamics import DYNAMICS_COLUMNS, REGIONS, data_map_regions, sample_dynamics

NAN = float("nan")


def _records(rows, split="train"):
    """Record rows (step, sample_id, label, confidence, margin, correct, loss, residual)."""
    frame = pd.DataFrame(rows, columns=["step", "sample_id", "label", "confidence", "margin", "correct", "loss",
                                        "residual"])
    frame.insert(1, "split", split)
    frame.insert(3, "rank", 0)
    frame["prediction"] = frame["label"]
    frame["sample_id"] = frame["sample_id"].astype(str)
    return frame


def _classification_records(seed=0, n_samples=5, n_steps=6):
    rng = np.random.default_rng(seed)
    rows = []
    for step in range(n_steps):
        for sid in rng.permutation(n_samples):  # unsorted on purpose
            conf = rng.uniform(0.01, 0.99)
            rows.append((step, int(sid), int(sid) % 3, conf, rng.normal(), float(rng.uniform() < conf),
                         -np.log(conf), NAN))
    return _records(rows)


def test_classification_columns_match_numpy():
    rec = _classification_records()
    dyn = sample_dynamics(rec)
    assert list(dyn.columns) == list(DYNAMICS_COLUMNS)
    assert len(dyn) == 5 and set(dyn["split"]) == {"train"}
    for sid, part in rec.groupby("sample_id"):
        part = part.sort_values("step")
        row = dyn.set_index("sample_id").loc[sid]
        conf, margin = part["confidence"].to_numpy(), part["margin"].to_numpy()
        assert row["n_records"] == len(part) == 6
        assert row["label"] == part["label"].iloc[-1]
        assert row["confidence"] == pytest.approx(np.mean(conf), rel=1e-12)
        assert row["variability"] == pytest.approx(np.std(conf), rel=1e-12)  # ddof=0, as in the paper
        assert row["correct_frac"] == pytest.approx(np.mean(part["correct"]), rel=1e-12)
        assert row["aum"] == pytest.approx(np.mean(margin), rel=1e-12)
        assert row["mean_loss"] == pytest.approx(np.mean(part["loss"]), rel=1e-12)
        weights = part["step"].to_numpy() - rec["step"].min() + 1.0
        assert row["label_error_score"] == pytest.approx(-np.sum(weights * margin) / np.sum(weights), rel=1e-12)
        assert np.isnan(row["mean_abs_residual"]) and np.isnan(row["abs_residual_std"])
    scores = dyn["label_error_score"].to_numpy()
    assert np.all(np.diff(scores) <= 0)  # most likely mislabeled first


def test_hand_computed_sample():
    # three records of one sample, and one record of another with the same margin sum
    rec = _records([
        (0, 7, 1, 0.2, -1.0, 0.0, 1.6, NAN),
        (1, 7, 1, 0.4, -0.5, 0.0, 0.9, NAN),
        (2, 7, 2, 0.9, 2.0, 1.0, 0.1, NAN),
        (2, 8, 0, 0.6, 0.5, 1.0, 0.5, NAN),
    ])
    dyn = sample_dynamics(rec).set_index("sample_id")
    s = dyn.loc["7"]
    assert s["n_records"] == 3 and s["label"] == 2  # the most recent label
    assert s["confidence"] == pytest.approx(0.5)
    assert s["variability"] == pytest.approx(np.sqrt(((0.3**2) + (0.1**2) + (0.4**2)) / 3))
    assert s["correct_frac"] == pytest.approx(1 / 3)
    assert s["aum"] == pytest.approx(0.5 / 3)
    assert s["mean_loss"] == pytest.approx(2.6 / 3)
    # weights 1, 2, 3: -(-1 - 1 + 6) / 6; the late, learned record counts most
    assert s["label_error_score"] == pytest.approx(-4 / 6)
    assert dyn.loc["8", "label_error_score"] == pytest.approx(-0.5)
    assert dyn.loc["8", "variability"] == 0.0
    assert list(dyn.index) == ["8", "7"]


def test_late_weighting_ranks_a_late_loser_above_an_early_one():
    # same AUM; sample "late" loses its label late in training, "early" only at the start
    rec = _records([(t, "early", 0, NAN, m, NAN, NAN, NAN) for t, m in enumerate([-3, -2, 0, 2, 3])]
                   + [(t, "late", 0, NAN, m, NAN, NAN, NAN) for t, m in enumerate([3, 2, 0, -2, -3])])
    dyn = sample_dynamics(rec).set_index("sample_id")
    assert dyn.loc["early", "aum"] == dyn.loc["late", "aum"] == 0
    assert dyn.loc["late", "label_error_score"] > 0 > dyn.loc["early", "label_error_score"]


def test_late_columns_tell_a_late_learner_from_a_late_loser():
    # steps 0..6: the late records are those of steps >= 6 - 6/3 = 4 (steps 4, 5, 6)
    margins = {"learner": [-3, -2, -2, -1, 1, 2, 3], "loser": [1, 0, -1, -2, -3, -4, -2],
               "close": [0, -1, 0, -1, -0.5, 0.5, -1]}
    rec = _records([(t, sid, 0, NAN, m, NAN, NAN, NAN) for sid, ms in margins.items() for t, m in enumerate(ms)])
    dyn = sample_dynamics(rec).set_index("sample_id")
    for sid, ms in margins.items():
        late = np.array(ms[4:], dtype=float)
        assert dyn.loc[sid, "late_wrong_frac"] == pytest.approx(np.mean(late < 0))
        assert dyn.loc[sid, "late_margin"] == pytest.approx(np.median(late))
    assert dyn.loc["learner", "late_wrong_frac"] == 0 and dyn.loc["loser", "late_margin"] == -3
    # regression records carry no margin: NaN
    reg = sample_dynamics(_records([(t, 0, 1.0, NAN, NAN, NAN, NAN, 0.5) for t in range(3)]))
    assert reg["late_wrong_frac"].isna().all() and reg["late_margin"].isna().all()


def test_splits_and_ignored_records():
    train = _classification_records(n_samples=3, n_steps=4)
    val = _classification_records(seed=1, n_samples=3, n_steps=2).assign(split="val", step=lambda f: f["step"] + 10)
    # an ignored label (ignore_index): the raw label is kept, every number NaN
    ignored = _records([(20, 0, -100, NAN, NAN, NAN, NAN, NAN)], split="val")
    dyn = sample_dynamics(pd.concat([train, val, ignored], ignore_index=True))
    assert len(dyn) == 6 and sorted(dyn.groupby("split").size()) == [3, 3]
    v0 = dyn[(dyn.split == "val") & (dyn.sample_id == "0")].iloc[0]
    part = val[val.sample_id == "0"]
    assert v0["n_records"] == 3 and v0["label"] == -100
    assert v0["confidence"] == pytest.approx(part["confidence"].mean())
    # weights start at each split's first step (10 for val): 1 and 2
    m = part.sort_values("step")["margin"].to_numpy()
    assert v0["label_error_score"] == pytest.approx(-(m[0] + 2 * m[1]) / 3)


def test_regression_uses_absolute_residuals():
    res = {"a": [2.0, -1.0, 0.5], "b": [-0.1, 0.2, -3.0]}
    rec = _records([(t, sid, 1.0, NAN, NAN, NAN, r * r, r) for sid, rs in res.items() for t, r in enumerate(rs)])
    dyn = sample_dynamics(rec).set_index("sample_id")
    for sid, rs in res.items():
        a = np.abs(rs)
        row = dyn.loc[sid]
        assert row["mean_abs_residual"] == pytest.approx(a.mean())
        assert row["abs_residual_std"] == pytest.approx(a.std())
        assert row["label_error_score"] == pytest.approx(np.sum(np.array([1, 2, 3]) * a) / 6)
        assert row["mean_loss"] == pytest.approx(np.mean(np.square(rs)))
        assert row[["confidence", "variability", "correct_frac", "aum"]].isna().all()
    assert list(dyn.index) == ["b", "a"]  # b's large residual is the latest
    assert data_map_regions(dyn).isna().all()


def test_empty_input_gives_empty_frames_with_the_columns():
    empty = _records([])
    for frame in (empty, empty.iloc[:0, :3], None):
        dyn = sample_dynamics(frame)
        assert dyn.empty and list(dyn.columns) == list(DYNAMICS_COLUMNS)
    regions = data_map_regions(sample_dynamics(empty))
    assert regions.empty and regions.name == "region" and list(regions.cat.categories) == list(REGIONS)


def test_data_map_regions_at_the_documented_thresholds():
    dyn = pd.DataFrame({
        "confidence": [0.9, 0.5, 0.49, 0.1, 0.5, 0.9, NAN],
        "variability": [0.0, 0.2499, 0.2499, 0.1, 0.25, 0.4, NAN],
    }, index=list("abcdefg"))
    regions = data_map_regions(dyn)
    assert regions.name == "region" and list(regions.index) == list("abcdefg")
    assert list(regions.iloc[:6]) == ["easy", "easy", "hard-to-learn", "hard-to-learn", "ambiguous", "ambiguous"]
    assert pd.isna(regions["g"])
    moved = data_map_regions(dyn, confidence_threshold=0.95, variability_threshold=0.5)
    assert list(moved.iloc[:6]) == ["hard-to-learn"] * 6


def test_regions_of_real_dynamics():
    dyn = sample_dynamics(_classification_records(n_samples=20, n_steps=8))
    regions = data_map_regions(dyn)
    expected = np.where(dyn.variability >= 0.25, "ambiguous", np.where(dyn.confidence < 0.5, "hard-to-learn", "easy"))
    assert list(regions) == list(expected)


@pytest.mark.slow
def test_label_error_score_finds_flipped_labels():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "label_noise.py"
    spec = importlib.util.spec_from_file_location("label_noise_benchmark", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the model is tiny: one thread is the fastest on a busy machine
    try:
        records, is_flipped, _ = bench.train_with_label_noise(seed=0, epochs=6, noise_rate=0.1)
    finally:
        torch.set_num_threads(threads)
    figures = bench.score_rankings(sample_dynamics(records), is_flipped)
    noise_rate = is_flipped.mean()
    assert noise_rate == pytest.approx(0.1, abs=0.001)
    score = figures["label_error_score"]
    assert score["precision_at_k"] >= 3 * noise_rate
    assert score["precision_at_k"] >= figures["mean_loss"]["precision_at_k"]
    assert score["roc_auc"] > 0.95


def test_share_thresholds_split_a_third_then_a_third_of_the_rest():
    from diagnostics.dynamics import share_thresholds

    rng = np.random.default_rng(0)
    dyn = pd.DataFrame({"confidence": rng.uniform(0, 1, 9000), "variability": rng.uniform(0, 0.5, 9000)})
    counts = data_map_regions(dyn, *share_thresholds(dyn)).value_counts(normalize=True)
    assert counts["ambiguous"] == pytest.approx(1 / 3, abs=0.01)
    assert counts["hard-to-learn"] == pytest.approx(2 / 9, abs=0.01)
    assert counts["easy"] == pytest.approx(4 / 9, abs=0.01)


def test_regression_residual_std_and_latest_prediction_match_numpy():
    res = {"a": [2.0, -1.0, 0.5], "b": [-0.1, 0.2, -3.0]}
    rec = _records([(t, sid, 10.0, NAN, NAN, NAN, r * r, r) for sid, rs in res.items() for t, r in enumerate(rs)])
    rec["prediction"] = rec["label"] + rec["residual"]
    dyn = sample_dynamics(rec).set_index("sample_id")
    for sid, rs in res.items():
        assert dyn.loc[sid, "residual_std"] == pytest.approx(np.std(rs))  # signed, ddof=0
        assert dyn.loc[sid, "prediction"] == pytest.approx(10.0 + rs[-1])  # the latest record
    # classification rows carry no residual spread
    assert sample_dynamics(_classification_records())["residual_std"].isna().all()


def test_residual_map_regions_at_given_thresholds():
    dyn = pd.DataFrame({"mean_abs_residual": [0.5, 3.0, 0.5, 3.0, 1.0, NAN],
                        "residual_std": [0.1, 0.1, 2.0, 2.0, 0.99, 0.1]}, index=list("abcdef"))
    from diagnostics.dynamics import residual_map_regions

    regions = residual_map_regions(dyn, error_threshold=1.0, variability_threshold=1.0)
    assert regions.name == "region" and list(regions.index) == list("abcdef")
    # small and stable: easy; large and stable: hard; variable: ambiguous, whatever the error
    assert list(regions.iloc[:5]) == ["easy", "hard-to-learn", "ambiguous", "ambiguous", "easy"]
    assert pd.isna(regions["f"])


def test_residual_share_thresholds_split_a_third_then_a_third_of_the_rest():
    from diagnostics.dynamics import residual_map_regions, residual_share_thresholds

    rng = np.random.default_rng(0)
    dyn = pd.DataFrame({"mean_abs_residual": rng.exponential(2.0, 9000), "residual_std": rng.uniform(0, 3, 9000)})
    error, variability = residual_share_thresholds(dyn)
    assert variability == pytest.approx(np.quantile(dyn["residual_std"], 2 / 3))
    rest = dyn.loc[dyn["residual_std"] < variability, "mean_abs_residual"]
    assert error == pytest.approx(np.quantile(rest, 2 / 3))
    counts = residual_map_regions(dyn, error, variability).value_counts(normalize=True)
    assert counts["ambiguous"] == pytest.approx(1 / 3, abs=0.01)
    assert counts["hard-to-learn"] == pytest.approx(2 / 9, abs=0.01)
    assert counts["easy"] == pytest.approx(4 / 9, abs=0.01)
    # a classification frame (no residuals) gets no region rather than an arbitrary one
    cls = sample_dynamics(_classification_records())
    assert residual_map_regions(cls, *residual_share_thresholds(cls)).isna().all()


def test_data_map_splits_by_shares_and_counts_the_regions():
    from diagnostics.dynamics import data_map, label_error_suspects, share_thresholds

    dyn = sample_dynamics(_classification_records(n_samples=30, n_steps=8))
    found = data_map(dyn, "classification")
    assert not found.regression and found.thresholds == share_thresholds(dyn)
    assert found.counts == {r: int((found.regions == r).sum()) for r in REGIONS}
    assert sum(found.counts.values()) == 30 and found.median_records == 8
    table = label_error_suspects(dyn, found, ["a", "b", "c"], limit=5)
    worst = dyn.sort_values("label_error_score", ascending=False)["sample_id"]
    assert table["sample_id"].tolist() == worst[:5].tolist()
    assert set(table["label"]) <= {"a", "b", "c"}
    assert list(table.columns) == ["sample_id", "label", "prediction", "score", "verdict", "confidence",
                                   "variability", "aum", "correct", "region"]


def test_one_verdict_per_sample_for_the_data_map_and_health():
    """Hand-counted: wrong in >= 80% of the late records with another class > 2 logits ahead:
    suspected mislabeled; as often wrong but close: hard; else neither. The data map's
    shortlist holds exactly the suspects (it held every sample whose label lost on average)."""
    from diagnostics.dynamics import HARD, SUSPECTED, DataMap, label_verdict, suspicious

    frame = pd.DataFrame({"late_wrong_frac": [1.0, 0.9, 0.9, 0.5, 0.79], "late_margin": [-3.0, -2.5, -1.0, -4.0, -5.0],
                          "label_error_score": [3.0, 2.5, 1.0, 0.5, 0.2]})
    assert label_verdict(frame).tolist() == [SUSPECTED, SUSPECTED, HARD, "", ""]
    found = DataMap(False, pd.Series(["hard-to-learn"] * 5), (0.5, 0.2), {}, 5)
    assert suspicious(frame, found).tolist() == [True, True, False, False, False]


def test_data_map_of_residuals_is_a_regression_map_even_without_the_task():
    from diagnostics.dynamics import data_map, label_error_suspects, residual_share_thresholds

    rng = np.random.default_rng(1)
    rows = [(step, sid, float(sid), NAN, NAN, NAN, 0.0, float(rng.normal(scale=1 + sid)))
            for step in range(5) for sid in range(12)]
    dyn = sample_dynamics(_records(rows))
    found = data_map(dyn)
    assert found.regression and found.thresholds == residual_share_thresholds(dyn)
    table = label_error_suspects(dyn, found)
    assert list(table.columns) == ["sample_id", "label", "prediction", "score", "mean_abs_residual", "residual_std",
                                   "region"]


def _late_records(late_confidence, late_correct, labels=(0, 0, 1, 2)):
    """Steps 0-3 of one sample per label: the late records are steps 2 and 3 (>= 3 - 3/3),
    with the given confidences and correct flags; steps 0 and 1 are confident and right, so a
    check that read them would see a learned model."""
    rows = []
    for sid, label in enumerate(labels):
        for step in range(4):
            conf, right = (0.9, 1.0) if step < 2 else (late_confidence[sid][step - 2], late_correct[sid][step - 2])
            rows.append((step, sid, label, conf, 1.0 if right else -1.0, right, -np.log(conf), NAN))
    return _records(rows)


FLAT = [[0.3, 0.4], [0.3, 0.3], [0.4, 0.2], [0.2, 0.4]]  # late means 0.35, 0.3, 0.3, 0.3: 0.3125 in all


def test_late_probability_and_accuracy_columns_read_the_late_records_only():
    dyn = sample_dynamics(_late_records(FLAT, [[1, 1], [1, 0], [0, 0], [0, 0]]))
    dyn = dyn.set_index("sample_id").loc[["0", "1", "2", "3"]]
    assert dyn["late_confidence"].tolist() == pytest.approx([0.35, 0.3, 0.3, 0.3])
    assert dyn["late_correct_frac"].tolist() == pytest.approx([1.0, 0.5, 0.0, 0.0])


def test_learning_check_against_hand_computed_numbers():
    from diagnostics.dynamics import learning_check

    # labels 0, 0, 1, 2: accuracy's chance = the largest share = 0.5, near it below min(2 × 0.5, 0.5 + 0.2 × 0.5)
    # = 0.6; the prior's probability Σ p² = 0.25 + 0.0625 + 0.0625 = 0.375, near it below min(0.75, 0.5) = 0.5
    nothing = learning_check(sample_dynamics(_late_records(FLAT, [[1, 1], [1, 0], [0, 0], [0, 0]])))
    assert nothing.chance == 0.5 and nothing.bar == pytest.approx(0.6) and nothing.num_classes == 3
    assert nothing.prior_probability == pytest.approx(0.375) and nothing.probability_bar == pytest.approx(0.5)
    assert nothing.label_probability == pytest.approx(0.3125) and nothing.accuracy == pytest.approx(0.375)
    assert not nothing.learned and not nothing.flat
    text = nothing.summary()
    assert "has not learned" in text and "37.5% against 50.0%" in text and "0.312 against 0.375" in text
    assert "1/3 = 0.333" in text and "Health page" in text
    # right every time but with flat probabilities (softmax twice): learned, its probabilities flat
    flat = learning_check(sample_dynamics(_late_records(FLAT, [[1, 1]] * 4)), num_classes=10)
    assert flat.learned and flat.flat and flat.num_classes == 10
    assert "stay nearly flat" in flat.summary() and "100.0%" in flat.summary()
    learned = learning_check(sample_dynamics(_late_records([[0.7, 0.8]] * 4, [[1, 1]] * 4)))
    assert learned.learned and not learned.flat and learned.label_probability == pytest.approx(0.75)
    # ten balanced classes: chance 0.1, and twice chance (0.2) is the tighter bar
    ten = learning_check(sample_dynamics(_late_records([[0.19, 0.19]] * 10, [[0, 1]] * 10, labels=range(10))))
    assert ten.chance == pytest.approx(0.1) and ten.bar == pytest.approx(0.2) and ten.accuracy == 0.5
    assert ten.learned and ten.flat and ten.probability_bar == pytest.approx(0.2)
    # regression, one class or nothing: no verdict
    reg = sample_dynamics(_records([(t, 0, 1.0, NAN, NAN, NAN, NAN, 0.5) for t in range(3)]))
    one = sample_dynamics(_late_records([[0.5, 0.5]] * 2, [[1, 1]] * 2, labels=(1, 1)))
    assert learning_check(reg) is None and learning_check(one) is None
    assert learning_check(sample_dynamics(None)) is None


def test_a_model_that_learned_is_never_called_unlearned_on_unbalanced_or_binary_labels():
    """The review's cases: 95/5 labels, every prediction right (label probability 0.96 on the
    majority, 0.70 on the minority: 0.947 on average, under the largest share 0.95); and a
    calibrated binary model, right 70% of the time at probability 0.7 (label probability 0.58)."""
    from diagnostics.dynamics import learning_check

    labels = [0] * 19 + [1]
    confident = [[0.96, 0.96]] * 19 + [[0.70, 0.70]]
    unbalanced = learning_check(sample_dynamics(_late_records(confident, [[1, 1]] * 20, labels=labels)))
    assert unbalanced.learned and not unbalanced.flat and unbalanced.chance == pytest.approx(0.95)
    assert unbalanced.prior_probability == pytest.approx(0.95 ** 2 + 0.05 ** 2)
    # 10 samples, 5 per class; 7 right with 0.7 on the label, 3 wrong with 0.3 on it: accuracy 0.7, probability 0.58
    binary = learning_check(sample_dynamics(_late_records([[0.7, 0.7]] * 7 + [[0.3, 0.3]] * 3,
                                                          [[1, 1]] * 7 + [[0, 0]] * 3, labels=[0, 1] * 5)))
    assert binary.accuracy == pytest.approx(0.7) and binary.label_probability == pytest.approx(0.58)
    assert binary.learned and not binary.flat  # two classes: flat is not judged
    # the same unbalanced labels, a model that always answers the majority: 95% right, not learned beyond chance
    majority = learning_check(sample_dynamics(_late_records([[0.95, 0.95]] * 19 + [[0.05, 0.05]],
                                                            [[1, 1]] * 19 + [[0, 0]], labels=labels)))
    assert majority.accuracy == pytest.approx(0.95) and not majority.learned


def test_the_shortlist_holds_the_samples_whose_label_lost_confidently():
    from diagnostics.dynamics import data_map, label_error_suspects, suspects_page, suspicious

    rng = np.random.default_rng(0)
    rows = []  # samples 0-4 confidently wrong throughout (margin -3 or below), the rest around 0
    for step in range(8):
        for sid in range(30):
            margin = -3.0 - sid / 10 if sid < 5 else float(rng.normal())
            conf = float(1 / (1 + np.exp(-margin)))
            rows.append((step, sid, sid % 3, conf, margin, float(margin > 0), -np.log(conf), NAN))
    dyn = sample_dynamics(_records(rows))
    found = data_map(dyn, "classification")
    flagged = suspicious(dyn, found)
    hand = (dyn["late_wrong_frac"] >= 0.8) & (dyn["late_margin"] < -2)  # the rule, counted by hand
    assert flagged.tolist() == hand.tolist() and sorted(dyn.loc[flagged, "sample_id"].astype(int)) == [0, 1, 2, 3, 4]
    best = dyn.loc[flagged, "sample_id"].tolist()  # dyn is sorted by score already
    page = suspects_page(dyn, found, suspicious_only=True, limit=3)
    assert page.total == 3 and page.rows["sample_id"].tolist() == best[:3]
    assert suspects_page(dyn, found, suspicious_only=True).total == len(best) == 5
    assert suspects_page(dyn, found).total == 30  # callers without the keywords get every sample, as before
    grid = label_error_suspects(dyn, found, limit=100, suspicious_only=True)
    assert grid["sample_id"].tolist() == best and (grid["score"] > 0).all()
    # regression: a score above the hard-to-learn error threshold
    rows = [(step, sid, 0.0, NAN, NAN, NAN, 0.0, float(sid)) for step in range(3) for sid in range(9)]
    reg = sample_dynamics(_records(rows))
    cut = data_map(reg, "regression")
    assert suspicious(reg, cut).tolist() == (reg["label_error_score"] > cut.thresholds[0]).tolist()
