"""Errors over positions (tokens, pixels, several labels per sample): per-class IoU and Dice,
the confusion matrix over positions, per-label precision, recall and calibration, one sample's
tokens or masks, and what a change fixed and broke position by position.

Every function takes the `positions` frame a run reads back (`Run.positions(split)`: one row per
counted position, columns `sample_id`, `position`, `label`, `prediction`, `loss`, `confidence`)
and returns numbers or tidy frames; nothing here reads a run or draws.

    frame = run.positions("val")
    overlap = class_overlap(frame)                 # IoU and Dice per class
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from diagnostics.errors import calibration

COLUMNS = ("sample_id", "position", "label", "prediction", "loss", "confidence")
IGNORED = -1  # a mask's value where no position was counted


def _check(positions: pd.DataFrame, columns: Sequence[str] = COLUMNS) -> None:
    missing = [c for c in columns if c not in positions.columns]
    if missing:
        raise ValueError(f"the positions frame has no column {', '.join(missing)}: pass the frame "
                         "run.positions(split) returns")


def class_count(positions: pd.DataFrame, num_classes: int | None = None) -> int:
    """The number of classes: `num_classes` when given, else one more than the largest label or
    prediction seen (0 for no position)."""
    if num_classes is not None:
        return int(num_classes)
    if positions.empty:
        return 0
    return int(max(positions["label"].max(), positions["prediction"].max())) + 1


def position_confusion(positions: pd.DataFrame, num_classes: int | None = None) -> np.ndarray:
    """Counts of counted positions by true class (rows) and predicted class (columns); labels or
    predictions outside [0, num_classes) are left out.

        matrix = position_confusion(run.positions("val"), num_classes=3)
    """
    _check(positions, ("label", "prediction"))
    n = class_count(positions, num_classes)
    label = positions["label"].to_numpy(dtype=np.int64)
    pred = positions["prediction"].to_numpy(dtype=np.int64)
    ok = (label >= 0) & (label < n) & (pred >= 0) & (pred < n)
    return np.bincount(label[ok] * n + pred[ok], minlength=n * n).reshape(n, n)


def confusion_samples(positions: pd.DataFrame, true_class: int, predicted_class: int) -> pd.DataFrame:
    """The samples with positions labelled `true_class` and predicted `predicted_class` (a cell of
    the confusion over positions): per sample how many, their mean loss and the first such
    position, the most first.

        confusion_samples(run.positions("val"), 1, 0)   # where NAME was read as OTHER
    """
    _check(positions)
    cell = positions[(positions["label"] == true_class) & (positions["prediction"] == predicted_class)]
    if cell.empty:
        return pd.DataFrame(columns=["sample_id", "positions", "mean_loss", "first_position"])
    table = cell.groupby("sample_id", sort=False).agg(positions=("position", "size"), mean_loss=("loss", "mean"),
                                                      first_position=("position", "min")).reset_index()
    return table.sort_values(["positions", "mean_loss"], ascending=False, kind="stable").reset_index(drop=True)


def class_overlap(positions: pd.DataFrame, num_classes: int | None = None,
                  class_names: Sequence[str] | None = None) -> pd.DataFrame:
    """Per class, pooled over every counted position: IoU = TP / (TP + FP + FN) and
    Dice = 2·TP / (2·TP + FP + FN) (NaN for a class neither labelled nor predicted), with the
    counts they come from (`true`: positions labelled so, `predicted`: predicted so, `overlap`: both).

        class_overlap(run.positions("val")).sort_values("iou")   # the worst-segmented class first
    """
    matrix = position_confusion(positions, num_classes)
    tp = np.diag(matrix).astype(np.int64)
    true, predicted = matrix.sum(axis=1), matrix.sum(axis=0)
    union = true + predicted - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
        dice = np.where(union > 0, 2 * tp / np.maximum(true + predicted, 1), np.nan)
    classes = np.arange(len(tp))
    names = [str(class_names[c]) if class_names is not None and c < len(class_names) else str(c) for c in classes]
    return pd.DataFrame({"class": classes, "name": names, "true": true, "predicted": predicted, "overlap": tp,
                         "iou": iou, "dice": dice})


def mean_overlap(overlap: pd.DataFrame) -> dict[str, float]:
    """Mean IoU and mean Dice over the classes that occur (labelled or predicted)."""
    return {"mean_iou": float(overlap["iou"].mean()) if overlap["iou"].notna().any() else float("nan"),
            "mean_dice": float(overlap["dice"].mean()) if overlap["dice"].notna().any() else float("nan"),
            "accuracy": float(overlap["overlap"].sum() / overlap["true"].sum()) if overlap["true"].sum() else
            float("nan")}


def label_metrics(positions: pd.DataFrame, label_names: Sequence[str] | None = None, bins: int = 10) -> pd.DataFrame:
    """Several labels per sample (layout "labels": `position` is the label index, `label` and
    `prediction` 0/1): per label, its positives, precision = TP / predicted positives, recall =
    TP / positives (NaN when the denominator is 0), and its calibration error (ECE of `confidence`,
    the probability of the prediction, against whether the prediction was right).

        label_metrics(run.positions("val")).sort_values("recall")
    """
    _check(positions)
    rows = []
    for index, group in positions.groupby("position", sort=True):
        label = group["label"].to_numpy() == 1
        pred = group["prediction"].to_numpy() == 1
        tp = int(np.sum(label & pred))
        correct = (label == pred).astype(float)
        _, ece = calibration(pd.DataFrame({"confidence": group["confidence"].to_numpy(dtype=float),
                                           "correct": correct}), bins=bins)
        name = label_names[index] if label_names is not None and 0 <= index < len(label_names) else str(index)
        rows.append({"label_index": int(index), "name": str(name), "samples": len(group),
                     "positives": int(label.sum()), "predicted": int(pred.sum()), "true_positives": tp,
                     "precision": tp / pred.sum() if pred.sum() else float("nan"),
                     "recall": tp / label.sum() if label.sum() else float("nan"),
                     "accuracy": float(correct.mean()), "ece": ece, "mean_loss": float(group["loss"].mean())})
    return pd.DataFrame(rows, columns=["label_index", "name", "samples", "positives", "predicted", "true_positives",
                                       "precision", "recall", "accuracy", "ece", "mean_loss"])


def label_calibration(positions: pd.DataFrame, label_index: int, bins: int = 10) -> tuple[pd.DataFrame, float]:
    """One label's reliability table and ECE (several labels per sample): the probability of the
    prediction against whether it was right, over the samples (`errors.calibration`)."""
    _check(positions)
    rows = positions[positions["position"] == label_index]
    return calibration(pd.DataFrame({"confidence": rows["confidence"].to_numpy(dtype=float),
                                     "correct": (rows["label"] == rows["prediction"]).to_numpy(dtype=float)}), bins)


def worst_by_label(positions: pd.DataFrame, label_index: int, n: int = 20) -> pd.DataFrame:
    """The samples with the highest loss on one label (several labels per sample), worst first."""
    _check(positions)
    rows = positions[positions["position"] == label_index]
    return rows.sort_values("loss", ascending=False, kind="stable").head(n)[list(COLUMNS)].reset_index(drop=True)


def token_table(positions: pd.DataFrame, token_ids: Sequence[int] | None = None,
                vocabulary: Mapping[int, str] | None = None, class_names: Sequence[str] | None = None) -> pd.DataFrame:
    """One text sample's counted positions in order: the input token at each (from the stored
    input ids, when the position is among them), the label and the prediction, as strings of the
    vocabulary when there is one, else as ids (as `class_names` when given: a tagger's labels are
    tags, not tokens); with loss, confidence and whether it was right. Strings come as stored:
    escape them where they are shown."""
    _check(positions)
    rows = positions.sort_values("position", kind="stable")
    ids = list(token_ids) if token_ids is not None else []

    def word(value) -> str:
        if value is None or (isinstance(value, float) and np.isnan(value)):
            return ""
        value = int(value)
        return vocabulary.get(value, str(value)) if vocabulary else str(value)

    def tag(value) -> str:
        value = int(value)
        return str(class_names[value]) if 0 <= value < len(class_names) else str(value)

    out = tag if class_names is not None else word
    pos = rows["position"].to_numpy(dtype=np.int64)
    return pd.DataFrame({
        "position": pos,
        "token": [word(ids[p]) if 0 <= p < len(ids) else "" for p in pos],
        "label": [out(v) for v in rows["label"]],
        "prediction": [out(v) for v in rows["prediction"]],
        "correct": rows["label"].to_numpy() == rows["prediction"].to_numpy(),
        "loss": rows["loss"].to_numpy(dtype=float),
        "confidence": rows["confidence"].to_numpy(dtype=float),
    })


def masks(positions: pd.DataFrame, shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """One sample's label and prediction as arrays of the position `shape` (flat positions are
    row-major); positions not counted hold IGNORED (-1). Positions outside the shape are left out."""
    _check(positions, ("position", "label", "prediction"))
    size = int(np.prod(shape)) if len(shape) else 1
    label = np.full(size, IGNORED, dtype=np.int64)
    pred = np.full(size, IGNORED, dtype=np.int64)
    pos = positions["position"].to_numpy(dtype=np.int64)
    ok = (pos >= 0) & (pos < size)
    label[pos[ok]] = positions["label"].to_numpy(dtype=np.int64)[ok]
    pred[pos[ok]] = positions["prediction"].to_numpy(dtype=np.int64)[ok]
    return label.reshape(tuple(shape)), pred.reshape(tuple(shape))


def pool_mask(mask: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """A 2-D mask brought to `size` (rows, columns) as the preview was pooled: each output cell takes
    the most frequent counted value of the block of the mask it covers (IGNORED only where nothing
    in it was counted); a larger `size` repeats cells (nearest)."""
    mask = np.asarray(mask)
    if mask.ndim > 2:  # more position axes than an image shows: the first slice of the rest
        mask = mask.reshape(mask.shape[0], mask.shape[1], -1)[:, :, 0]
    rows, cols = int(size[0]), int(size[1])
    r_edges = np.linspace(0, mask.shape[0], rows + 1)
    c_edges = np.linspace(0, mask.shape[1], cols + 1)
    out = np.full((rows, cols), IGNORED, dtype=np.int64)
    for i in range(rows):
        r0 = int(np.floor(r_edges[i]))
        r1 = max(int(np.ceil(r_edges[i + 1])), r0 + 1)
        for j in range(cols):
            c0 = int(np.floor(c_edges[j]))
            c1 = max(int(np.ceil(c_edges[j + 1])), c0 + 1)
            block = mask[r0:r1, c0:c1].ravel()
            block = block[block != IGNORED]
            if block.size:
                values, counts = np.unique(block, return_counts=True)
                out[i, j] = values[np.argmax(counts)]
    return out


def position_changes(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """The positions both evaluations counted (same sample id, same position, same label), each with
    both predictions and losses and its outcome: "fixed" (wrong in A, right in B), "broken" (right in
    A, wrong in B), "right" or "wrong" (in both). Positions whose label differs are left out.

        changes = position_changes(run_a.positions("val"), run_b.positions("val"))
        changes["outcome"].value_counts()
    """
    _check(a)
    _check(b)
    keep = ["sample_id", "position", "label", "prediction", "loss"]
    left = a[keep].assign(sample_id=a["sample_id"].astype(str))
    right = b[keep].assign(sample_id=b["sample_id"].astype(str))
    joined = left.merge(right, on=["sample_id", "position"], suffixes=("_a", "_b"))
    joined = joined[joined["label_a"] == joined["label_b"]].rename(columns={"label_a": "label"})
    right_a = joined["prediction_a"] == joined["label"]
    right_b = joined["prediction_b"] == joined["label"]
    outcome = np.select([~right_a & right_b, right_a & ~right_b, right_a & right_b],
                        ["fixed", "broken", "right"], default="wrong")
    return joined.assign(outcome=outcome)[["sample_id", "position", "label", "prediction_a", "prediction_b",
                                           "loss_a", "loss_b", "outcome"]].reset_index(drop=True)


def changes_by_sample(changes: pd.DataFrame) -> pd.DataFrame:
    """Per sample: its shared positions and how many B fixed and broke, the most changed first
    (by fixed + broken, then by the net, fixed − broken)."""
    if changes.empty:
        return pd.DataFrame(columns=["sample_id", "positions", "fixed", "broken", "net"])
    counts = pd.crosstab(changes["sample_id"], changes["outcome"])
    table = pd.DataFrame({"positions": counts.sum(axis=1),
                          "fixed": counts.get("fixed", 0), "broken": counts.get("broken", 0)})
    table = table.assign(net=table["fixed"] - table["broken"]).reset_index()
    order = (table["fixed"] + table["broken"]).to_numpy()
    return table.iloc[np.lexsort((-table["net"].to_numpy(), -order))].reset_index(drop=True)


def changes_by_class(changes: pd.DataFrame, class_names: Sequence[str] | None = None) -> pd.DataFrame:
    """Per true class: positions, fixed, broken and accuracy in A and in B (points)."""
    if changes.empty:
        return pd.DataFrame(columns=["class", "name", "positions", "fixed", "broken", "accuracy_a", "accuracy_b"])
    right_a = changes["prediction_a"] == changes["label"]
    right_b = changes["prediction_b"] == changes["label"]
    frame = changes.assign(right_a=right_a, right_b=right_b, is_fixed=changes["outcome"] == "fixed",
                           is_broken=changes["outcome"] == "broken")
    table = frame.groupby("label").agg(positions=("position", "size"), fixed=("is_fixed", "sum"),
                                       broken=("is_broken", "sum"), accuracy_a=("right_a", "mean"),
                                       accuracy_b=("right_b", "mean")).reset_index().rename(columns={"label": "class"})
    names = [str(class_names[c]) if class_names is not None and 0 <= c < len(class_names) else str(c)
             for c in table["class"]]
    return table.assign(name=names)[["class", "name", "positions", "fixed", "broken", "accuracy_a", "accuracy_b"]]
