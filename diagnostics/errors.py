"""Error tables a review session works from (worst cases, per-class metrics, confusion,
calibration, residuals).

Every table function takes the reader's samples frame (`Run.samples()`: one row per evaluated
sample with `label`, `prediction`, `loss`, `correct`, `confidence`, `residual`, ...) and returns
plain pandas/numpy, so a page only lays the result out and a test can check it by hand.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

TASKS = ("classification", "regression")


# -- worst cases ------------------------------------------------------------------------------

def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r} — pass task='classification' or task='regression'")


def _class_list(value: int | Iterable[int], name: str) -> list[int]:
    values = [value] if np.isscalar(value) else list(value)
    for v in values:
        if isinstance(v, (bool, np.bool_)) or not float(v).is_integer():
            raise ValueError(f"{name}={value!r} is not a class index — pass an int or a list of ints")
    return [int(v) for v in values]


def error_size(samples: pd.DataFrame, task: str) -> pd.Series:
    """How wrong each sample is: its loss (classification) or |residual| (regression)."""
    _check_task(task)
    if task == "classification":
        return samples["loss"].astype(float)
    if "residual" in samples:
        return samples["residual"].astype(float).abs()
    return (samples["prediction"].astype(float) - samples["label"].astype(float)).abs()


def worst_cases(samples: pd.DataFrame, task: str, true_class: int | Sequence[int] | None = None,
                predicted_class: int | Sequence[int] | None = None,
                confidence_range: tuple[float, float] | None = None, tags: Sequence[str] | None = None,
                tag_frame: pd.DataFrame | None = None, limit: int | None = None) -> pd.DataFrame:
    """The samples the model gets most wrong, worst first, after optional filters.

    Sorted by `loss` (classification) or |residual| (regression), descending; samples without
    a loss go last. Filters combine with AND: `true_class`/`predicted_class` (an index or a
    list of indices), `confidence_range` (lo, hi), inclusive, and `tags` (keep samples that
    carry any of them in `tag_frame`, a `sample_id, tag` frame).

        worst_cases(samples, "classification", true_class=1, predicted_class=[0, 2],
                    confidence_range=(0.8, 1.0), limit=20)   # confidently wrong DMEs
    """
    _check_task(task)
    keep = np.ones(len(samples), dtype=bool)
    if (true_class is not None or predicted_class is not None or confidence_range is not None) \
            and task != "classification":
        raise ValueError("class and confidence filters need classification samples — "
                         "drop true_class/predicted_class/confidence_range for a regression run")
    if true_class is not None:
        keep &= np.isin(samples["label"].to_numpy(dtype=float), _class_list(true_class, "true_class"))
    if predicted_class is not None:
        keep &= np.isin(samples["prediction"].to_numpy(dtype=float),
                        _class_list(predicted_class, "predicted_class"))
    if confidence_range is not None:
        try:
            lo, hi = (float(v) for v in confidence_range)
        except (TypeError, ValueError):
            raise ValueError(f"confidence_range={confidence_range!r} is not a pair of numbers — "
                             "pass (lo, hi), e.g. (0.8, 1.0)") from None
        if not (np.isfinite(lo) and np.isfinite(hi) and lo <= hi):
            raise ValueError(f"confidence_range=({lo}, {hi}) is empty or not finite — pass (lo, hi) with lo <= hi")
        conf = samples["confidence"].to_numpy(dtype=float)
        keep &= (conf >= lo) & (conf <= hi)
    if tags is not None:
        if tag_frame is None:
            raise ValueError("tags given without tag_frame — pass tag_frame=<the run's sample_id, tag frame>")
        tags = [tags] if isinstance(tags, str) else list(tags)
        tagged = tag_frame.loc[tag_frame["tag"].isin(tags), "sample_id"].astype(str).unique()
        keep &= samples["sample_id"].astype(str).isin(tagged).to_numpy()
    out = samples.loc[keep]
    # positions, not labels: a frame concatenated from several splits may repeat index labels
    key = pd.Series(error_size(out, task).to_numpy())
    order = key.sort_values(ascending=False, kind="stable", na_position="last").index
    out = out.iloc[order].reset_index(drop=True)
    return out if limit is None else out.head(int(limit))


# -- classification ---------------------------------------------------------------------------

def _class_pairs(samples: pd.DataFrame, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer (label, prediction) of the rows that have both, checked against num_classes."""
    y = samples["label"].to_numpy(dtype=float)
    p = samples["prediction"].to_numpy(dtype=float)
    ok = np.isfinite(y) & np.isfinite(p)
    y, p = y[ok].astype(np.int64), p[ok].astype(np.int64)
    bad = np.concatenate([y[(y < 0) | (y >= num_classes)], p[(p < 0) | (p >= num_classes)]])
    if bad.size:
        raise ValueError(f"class index {int(bad[0])} is outside 0..{num_classes - 1} — "
                         f"pass num_classes={max(int(bad.max()) + 1, num_classes)} (or the run's class count)")
    return y, p


def confusion_matrix(samples: pd.DataFrame, num_classes: int) -> np.ndarray:
    """Counts of (true class, predicted class): rows are the label, columns the prediction.

        m = confusion_matrix(samples, 4); m[1, 0]   # DMEs predicted as CNV
    """
    y, p = _class_pairs(samples, num_classes)
    m = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(m, (y, p), 1)
    return m


def confusion_cell(samples: pd.DataFrame, true_class: int, predicted_class: int) -> pd.DataFrame:
    """The samples of one confusion-matrix cell, highest loss first (what a click on the cell opens)."""
    return worst_cases(samples, "classification", true_class=int(true_class),
                       predicted_class=int(predicted_class))


def class_metrics(samples: pd.DataFrame, num_classes: int,
                  class_names: Sequence[str] | None = None) -> pd.DataFrame:
    """Precision, recall, F1 and support per class (a class with no predictions or no labels
    scores 0.0, as scikit-learn does with zero_division=0).

        class_metrics(samples, 4, ["CNV", "DME", "DRUSEN", "NORMAL"])
    """
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class_names for {num_classes} classes — "
                         "pass one name per class, in index order")
    m = confusion_matrix(samples, num_classes)
    tp = np.diag(m).astype(float)
    predicted, support = m.sum(axis=0), m.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
    return pd.DataFrame({"class": np.arange(num_classes), "name": names, "precision": precision,
                         "recall": recall, "f1": f1, "support": support.astype(np.int64)})


def calibration(samples: pd.DataFrame, bins: int = 10) -> tuple[pd.DataFrame, float]:
    """Reliability table and expected calibration error over equal-width confidence bins.

    Bins split [0, 1] into `bins` intervals [lo, hi) (the last one includes 1.0); a bin holds
    the samples whose `confidence` falls in it, its accuracy is their mean `correct`.
    ECE = Σ count/N · |accuracy − mean_confidence| over non-empty bins (NaN with no samples).

        table, ece = calibration(samples, bins=10)
    """
    if bins < 1:
        raise ValueError(f"bins={bins} — pass a positive number of bins")
    conf = samples["confidence"].to_numpy(dtype=float)
    correct = samples["correct"].to_numpy(dtype=float)
    ok = np.isfinite(conf) & np.isfinite(correct)
    conf, correct = conf[ok], correct[ok]
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.floor(conf * bins).astype(np.int64), 0, bins - 1)
    count = np.bincount(idx, minlength=bins)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_conf = np.bincount(idx, weights=conf, minlength=bins) / count
        accuracy = np.bincount(idx, weights=correct, minlength=bins) / count
    table = pd.DataFrame({"bin_lo": edges[:-1], "bin_hi": edges[1:], "count": count,
                          "mean_confidence": mean_conf, "accuracy": accuracy})
    n = count.sum()
    if n == 0:
        return table, float("nan")
    filled = count > 0
    ece = float(np.sum(count[filled] / n * np.abs(accuracy[filled] - mean_conf[filled])))
    return table, ece


def class_count(manifest: dict, samples: pd.DataFrame) -> int:
    """How many classes a classification run has: the manifest's `num_classes`, else the
    length of the evaluated samples' probability vectors (0 without samples)."""
    if manifest.get("num_classes"):
        return int(manifest["num_classes"])
    return len(samples["probs"].iloc[0]) if len(samples) and "probs" in samples else 0


def most_confused(matrix: np.ndarray, true_class: int | None = None) -> tuple[int, int]:
    """The largest off-diagonal cell of a confusion matrix as (true, predicted): where a
    review opens the drill-down, rather than on class 0. With `true_class`, the class that
    true class is most often mistaken for (its row's largest off-diagonal cell). Ties go to
    the first cell; a matrix without errors gives the first off-diagonal one.

        most_confused(np.array([[5, 1], [4, 3]]))      # (1, 0): four 1s predicted as 0
    """
    m = np.asarray(matrix)
    if m.ndim != 2 or m.size == 0:
        return 0, 0
    off = np.where(np.eye(m.shape[0], m.shape[1], dtype=bool), -1, m)
    true = int(np.unravel_index(np.argmax(off), off.shape)[0]) if true_class is None else int(true_class)
    return true, int(np.argmax(off[true]))


def error_headline(samples: pd.DataFrame, task: str) -> dict[str, float]:
    """The numbers an error review leads with: `samples`, and `accuracy`, `wrong` and `ece`
    (classification) or `mae`, `rmse` and `bias` (regression, in the target's unit).

        error_headline(run.samples("val"), "classification")["accuracy"]
    """
    _check_task(task)
    if task == "classification":
        return {"samples": len(samples), "accuracy": float(samples["correct"].mean()),
                "wrong": int((samples["correct"] == 0).sum()), "ece": calibration(samples)[1]}
    summary, _ = regression_summary(samples)
    return {"samples": len(samples), **{k: summary[k] for k in ("mae", "rmse", "bias")}}


# -- regression -------------------------------------------------------------------------------

def regression_summary(samples: pd.DataFrame, bins: int = 10) -> tuple[dict[str, float], pd.DataFrame]:
    """Overall error of a regression (mae, rmse, bias = mean residual, r2) and the residuals by
    label range (equal-width label bins), to see where along the target the model drifts.

        stats, by_label = regression_summary(samples)
        stats["bias"]            # > 0: the model overestimates on average
    """
    if bins < 1:
        raise ValueError(f"bins={bins} — pass a positive number of bins")
    label = samples["label"].to_numpy(dtype=float)
    pred = samples["prediction"].to_numpy(dtype=float)
    resid = samples["residual"].to_numpy(dtype=float) if "residual" in samples else pred - label
    ok = np.isfinite(label) & np.isfinite(resid)
    label, resid = label[ok], resid[ok]
    columns = ["label_lo", "label_hi", "count", "mean_residual", "mae"]
    nan = float("nan")
    if label.size == 0:
        return {"mae": nan, "rmse": nan, "bias": nan, "r2": nan}, pd.DataFrame(columns=columns)
    ss_tot = float(np.sum((label - label.mean()) ** 2))
    stats = {"mae": float(np.mean(np.abs(resid))), "rmse": float(np.sqrt(np.mean(resid ** 2))),
             "bias": float(np.mean(resid)),
             "r2": 1.0 - float(np.sum(resid ** 2)) / ss_tot if ss_tot > 0 else nan}
    lo, hi = float(label.min()), float(label.max())
    if hi == lo:
        edges = np.array([lo, hi])
    else:
        edges = np.linspace(lo, hi, bins + 1)
    k = len(edges) - 1
    idx = np.clip(np.searchsorted(edges, label, side="right") - 1, 0, k - 1)
    count = np.bincount(idx, minlength=k)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_resid = np.bincount(idx, weights=resid, minlength=k) / count
        mae = np.bincount(idx, weights=np.abs(resid), minlength=k) / count
    table = pd.DataFrame({"label_lo": edges[:-1], "label_hi": edges[1:], "count": count,
                          "mean_residual": mean_resid, "mae": mae})
    return stats, table


# Manifest keys that may name the regression target's unit, most specific first (the
# examples write config={"target": "breaths/min", ...}).
UNIT_KEYS = ("target_unit", "unit", "units", "target")


def target_unit(manifest: dict) -> str | None:
    """The regression target's unit as the run recorded it, or None: the first of
    `UNIT_KEYS` found at the manifest's top level, then in its `config`.

        target_unit(run.manifest)   # "breaths/min" for the radar example
    """
    for place in (manifest or {}, (manifest or {}).get("config") or {}):
        for key in UNIT_KEYS:
            value = place.get(key) if isinstance(place, dict) else None
            if isinstance(value, str) and value.strip():
                return value.strip()
    return None


def regression_loss_note(unit: str | None, loss_fn: str | None = None) -> str:
    """One sentence saying what a regression run's per-sample columns are in: `loss` is the
    squared error (prediction − label)² that the evaluation pass records for every sample
    (whatever loss the training optimised), residual and |error| are in the target's unit.

        regression_loss_note("breaths/min", "SmoothL1Loss")
    """
    in_unit = f" in {unit}" if unit else " in the target's unit"
    squared = f" in ({unit})²" if unit else " in the target's unit squared"
    trained = f"; training optimised {loss_fn}, which this column is not" if loss_fn and loss_fn != "MSELoss" else ""
    return (f"loss: each sample's squared error (prediction − label)²{squared} (mean over outputs){trained}. "
            f"residual = prediction − label and |error| are{in_unit}; MAE, RMSE and bias too.")


def class_name(class_names: Sequence[str] | None, value) -> str:
    """The name of class index `value` ("—" when missing; the index as text without names)."""
    if value is None or (isinstance(value, float) and not np.isfinite(value)) or pd.isna(value):
        return "—"
    i = int(value)
    return str(class_names[i]) if class_names is not None and 0 <= i < len(class_names) else str(i)


def review_table(view: pd.DataFrame, task: str, class_names: Sequence[str] | None = None) -> pd.DataFrame:
    """The worst-cases table as a review page shows it: sample_id, label and prediction (class
    names for classification), loss, confidence (classification) or residual and |error|
    (regression), tags joined by commas, then the input statistics and metadata without their
    `input_`/`meta_` prefixes.

        review_table(worst_cases(samples, "classification"), "classification", ["CNV", "DME", ...])
    """
    _check_task(task)
    classification = task == "classification"
    name = (lambda v: class_name(class_names, v)) if classification else (lambda v: v)  # noqa: E731
    columns = {"sample_id": view["sample_id"].astype(str),
               "label": view["label"].map(name), "prediction": view["prediction"].map(name),
               "loss": view["loss"]}
    if classification:
        columns["confidence"] = view["confidence"]
    else:
        columns["residual"] = view["residual"] if "residual" in view else view["prediction"] - view["label"]
        columns["abs_error"] = error_size(view, task)
    tags = view["tags"] if "tags" in view else pd.Series([[]] * len(view), index=view.index)
    columns["tags"] = tags.map(lambda t: ", ".join(t) if isinstance(t, (list, tuple, np.ndarray)) else "")
    for c in view.columns:
        if c.startswith(("input_", "meta_")):
            columns.setdefault(c.removeprefix("input_").removeprefix("meta_"), view[c])
    return pd.DataFrame(columns).reset_index(drop=True)
