"""diagnostics.positions against hand counts on constructed position frames (the columns of
Run.positions)."""

import math

import numpy as np
import pandas as pd
import pytest

from diagnostics import positions as P


def frame(rows):
    """rows: (sample_id, position, label, prediction, loss, confidence)."""
    return pd.DataFrame(rows, columns=list(P.COLUMNS)).astype({"position": "int64", "label": "int64",
                                                               "prediction": "int64"})


def mask_frame(sample_id, label, pred):
    label, pred = np.asarray(label), np.asarray(pred)
    flat = np.arange(label.size)
    return frame([(sample_id, int(p), int(label.ravel()[p]), int(pred.ravel()[p]), 0.1, 0.9) for p in flat])


# a 3x3 mask, by hand: class 1 labelled at 4 pixels, predicted at 3 of them plus 1 more
LABEL = [[0, 1, 1],
         [0, 1, 1],
         [0, 0, 2]]
PRED = [[0, 1, 1],
        [1, 1, 0],
        [0, 0, 0]]


def test_confusion_over_positions_counts_each_pixel():
    m = P.position_confusion(mask_frame("a", LABEL, PRED), num_classes=3)
    # true 0: (0,0) (1,0) (2,0) (2,1) -> predicted 0,1,0,0 ; true 1: 4 pixels -> 1,1,1,0 ; true 2 -> 0
    assert m.tolist() == [[3, 1, 0], [1, 3, 0], [1, 0, 0]]
    assert m.sum() == 9


def test_iou_and_dice_by_hand():
    o = P.class_overlap(mask_frame("a", LABEL, PRED), num_classes=4, class_names=["bg", "disc", "cup"])
    o = o.set_index("class")
    # class 1: TP 3, FP 1, FN 1 -> IoU 3/5, Dice 6/8
    assert o.loc[1, "iou"] == pytest.approx(3 / 5) and o.loc[1, "dice"] == pytest.approx(6 / 8)
    # class 0: TP 3, FP 2 (pred 0 at (1,2) label 1 and (2,2) label 2), FN 1 -> 3/6, 6/9
    assert o.loc[0, "iou"] == pytest.approx(3 / 6) and o.loc[0, "dice"] == pytest.approx(6 / 9)
    # class 2: labelled once, never predicted -> 0; class 3: absent everywhere -> NaN
    assert o.loc[2, "iou"] == 0 and o.loc[2, "dice"] == 0
    assert math.isnan(o.loc[3, "iou"]) and o.loc[3, "name"] == "3" and o.loc[1, "name"] == "disc"
    mean = P.mean_overlap(o.reset_index())
    assert mean["mean_iou"] == pytest.approx((3 / 6 + 3 / 5 + 0) / 3)
    assert mean["accuracy"] == pytest.approx(6 / 9)


def test_overlap_pools_positions_of_several_samples():
    both = pd.concat([mask_frame("a", LABEL, PRED), mask_frame("b", [[1]], [[1]])])
    o = P.class_overlap(both).set_index("class")
    assert o.loc[1, "iou"] == pytest.approx(4 / 6)  # TP 4, FP 1, FN 1


def test_label_metrics_precision_recall_and_ece_by_hand():
    rows = []
    # label 0 over four samples: labels 1,1,0,0 predicted 1,0,1,0 at confidence 0.9 each
    for sid, (y, p) in enumerate([(1, 1), (1, 0), (0, 1), (0, 0)]):
        rows.append((str(sid), 0, y, p, 0.5, 0.9))
    # label 1: always 1, always predicted 1, at confidence 0.75
    for sid in range(4):
        rows.append((str(sid), 1, 1, 1, 0.2, 0.75))
    m = P.label_metrics(frame(rows), label_names=["cat", "dog"]).set_index("label_index")
    assert m.loc[0, "precision"] == 0.5 and m.loc[0, "recall"] == 0.5 and m.loc[0, "positives"] == 2
    assert m.loc[0, "ece"] == pytest.approx(abs(0.5 - 0.9))  # one bin: accuracy 0.5, confidence 0.9
    assert m.loc[1, "precision"] == 1 and m.loc[1, "recall"] == 1
    assert m.loc[1, "ece"] == pytest.approx(0.25) and m.loc[1, "name"] == "dog"


def test_label_calibration_bins_one_labels_confidence():
    f = frame([("0", 0, 1, 1, 0.1, 0.95), ("1", 0, 0, 1, 2.0, 0.95), ("2", 0, 0, 0, 0.1, 0.55),
               ("0", 1, 1, 1, 0.1, 0.15)])
    table, ece = P.label_calibration(f, 0, bins=10)
    assert table["count"].tolist()[5] == 1 and table["count"].tolist()[9] == 2
    assert ece == pytest.approx(2 / 3 * abs(0.5 - 0.95) + 1 / 3 * abs(1 - 0.55))


def test_label_metrics_without_positives_gives_nan_not_zero_division():
    m = P.label_metrics(frame([("0", 0, 0, 0, 0.1, 0.9), ("1", 0, 0, 0, 0.1, 0.9)]))
    assert math.isnan(m["precision"].iloc[0]) and math.isnan(m["recall"].iloc[0])


def test_worst_by_label_orders_by_that_labels_loss():
    f = frame([("a", 0, 1, 0, 2.0, 0.8), ("b", 0, 1, 1, 0.1, 0.9), ("c", 0, 0, 1, 3.0, 0.9),
               ("c", 1, 0, 0, 9.0, 0.9)])
    assert P.worst_by_label(f, 0)["sample_id"].tolist() == ["c", "a", "b"]


def test_token_table_decodes_with_vocabulary_else_ids():
    f = frame([("s", 2, 7, 7, 0.1, 0.9), ("s", 0, 5, 6, 2.0, 0.4)])
    t = P.token_table(f, token_ids=[10, 11, 12], vocabulary={10: "<b>", 5: "x", 6: "y", 7: "z", 12: "w"})
    assert t["position"].tolist() == [0, 2]
    assert t["token"].tolist() == ["<b>", "w"] and t["label"].tolist() == ["x", "z"]
    assert t["prediction"].tolist() == ["y", "z"] and t["correct"].tolist() == [False, True]
    tags = P.token_table(f, token_ids=[10], vocabulary={10: "<b>"}, class_names=[str(i) for i in range(6)] + ["Z"])
    assert tags["token"].tolist() == ["<b>", ""] and tags["prediction"].tolist() == ["Z", "7"]
    ids = P.token_table(f, token_ids=[10])
    assert ids["token"].tolist() == ["10", ""] and ids["label"].tolist() == ["5", "7"]


def test_masks_put_flat_positions_row_major_and_mark_uncounted():
    f = frame([("s", 1, 3, 2, 0.1, 0.9), ("s", 4, 1, 1, 0.1, 0.9)])
    label, pred = P.masks(f, (2, 3))
    assert label.tolist() == [[-1, 3, -1], [-1, 1, -1]]
    assert pred.tolist() == [[-1, 2, -1], [-1, 1, -1]]


def test_pool_mask_takes_the_majority_of_each_block():
    mask = np.array([[1, 1, 2, 2],
                     [1, 0, 2, -1],
                     [0, 0, -1, -1],
                     [0, 3, -1, -1]])
    assert P.pool_mask(mask, (2, 2)).tolist() == [[1, 2], [0, -1]]
    assert P.pool_mask(np.array([[4, 5]]), (2, 4)).tolist() == [[4, 4, 5, 5], [4, 4, 5, 5]]


def test_position_changes_fixed_broken_by_hand():
    a = frame([("s1", 0, 1, 0, 2.0, 0.6), ("s1", 1, 2, 2, 0.1, 0.9), ("s2", 0, 0, 0, 0.1, 0.9),
               ("s2", 1, 1, 0, 1.0, 0.5), ("s3", 0, 1, 1, 0.1, 0.9)])
    b = frame([("s1", 0, 1, 1, 0.3, 0.7), ("s1", 1, 2, 0, 1.5, 0.6), ("s2", 0, 0, 0, 0.1, 0.9),
               ("s2", 1, 1, 2, 1.2, 0.5), ("s3", 0, 2, 2, 0.1, 0.9), ("s4", 0, 1, 1, 0.1, 0.9)])
    c = P.position_changes(a, b)
    # s3's label differs, s4 is only in B: left out
    assert len(c) == 4
    got = dict(zip(zip(c["sample_id"], c["position"]), c["outcome"]))
    assert got == {("s1", 0): "fixed", ("s1", 1): "broken", ("s2", 0): "right", ("s2", 1): "wrong"}
    by_sample = P.changes_by_sample(c).set_index("sample_id")
    assert by_sample.loc["s1", ["fixed", "broken", "net"]].tolist() == [1, 1, 0]
    assert by_sample.loc["s2", ["fixed", "broken", "positions"]].tolist() == [0, 0, 2]
    assert P.changes_by_sample(c)["sample_id"].iloc[0] == "s1"
    by_class = P.changes_by_class(c).set_index("class")
    assert by_class.loc[1, ["positions", "fixed", "broken"]].tolist() == [2, 1, 0]
    assert by_class.loc[1, "accuracy_a"] == 0 and by_class.loc[1, "accuracy_b"] == 0.5
    assert by_class.loc[2, "broken"] == 1


def test_a_frame_without_the_columns_says_which():
    with pytest.raises(ValueError, match="no column label"):
        P.position_confusion(pd.DataFrame({"prediction": [1]}))


def test_confusion_samples_lists_the_samples_of_one_cell():
    f = pd.concat([mask_frame("a", LABEL, PRED), mask_frame("b", [[1, 1, 0]], [[0, 0, 0]])])
    cell = P.confusion_samples(f, 1, 0)  # labelled 1, predicted 0: a at (1,2); b at 0 and 1
    assert cell["sample_id"].tolist() == ["b", "a"] and cell["positions"].tolist() == [2, 1]
    assert cell["first_position"].tolist() == [0, 5]
    assert P.confusion_samples(f, 2, 1).empty
