"""Error tables a review session works from (worst cases, per-class metrics, confusion,
calibration, residuals).

Every table function takes the reader's samples frame (`Run.samples()`: one row per evaluated
sample with `label`, `prediction`, `loss`, `correct`, `confidence`, `residual`, ...) and returns
plain pandas/numpy, so a page only lays the result out and a test can check it by hand.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from diagnostics import schema
from diagnostics.paging import PAGE_SIZE, Page, id_matches, page_span
from diagnostics.slices import shown_names

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
    found = ReviewFilter(true_class=true_class, predicted_class=predicted_class,
                         confidence_range=confidence_range, tags=tags)
    order = review_order(samples, task, found, tag_frame=tag_frame)
    if limit is not None:
        order = order[:int(limit)]
    return samples.iloc[order].reset_index(drop=True)


@dataclass(frozen=True)
class ReviewFilter:
    """What an error review keeps (all given filters combine with AND; None keeps everything):
    `true_class`/`predicted_class` (an index or indices), `confidence_range` and `loss_range`
    (lo, hi; inclusive), `outcome` ("wrong" or "right"), `tags` (samples that carry any of
    them) and `id_contains` (a case-insensitive part of the sample id).

        ReviewFilter(true_class=1, outcome="wrong", loss_range=(2.0, float("inf")))
    """

    true_class: int | Sequence[int] | None = None
    predicted_class: int | Sequence[int] | None = None
    confidence_range: tuple[float, float] | None = None
    loss_range: tuple[float, float] | None = None
    outcome: str | None = None
    tags: Sequence[str] | None = None
    id_contains: str | None = None


OUTCOMES = ("wrong", "right")


def _range(value, name: str, example: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={value!r} is not a pair of numbers — pass (lo, hi), e.g. {example}") from None
    if np.isnan(lo) or np.isnan(hi) or lo > hi:
        raise ValueError(f"{name}=({lo}, {hi}) is empty or not a number — pass (lo, hi) with lo <= hi")
    return lo, hi


def _class_filters(samples: pd.DataFrame, f: ReviewFilter) -> np.ndarray:
    keep = np.ones(len(samples), dtype=bool)
    if f.true_class is not None:
        keep &= np.isin(samples["label"].to_numpy(dtype=float), _class_list(f.true_class, "true_class"))
    if f.predicted_class is not None:
        keep &= np.isin(samples["prediction"].to_numpy(dtype=float),
                        _class_list(f.predicted_class, "predicted_class"))
    if f.confidence_range is not None:
        lo, hi = _range(f.confidence_range, "confidence_range", "(0.8, 1.0)")
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise ValueError(f"confidence_range=({lo}, {hi}) is not finite — pass (lo, hi) within 0..1")
        conf = samples["confidence"].to_numpy(dtype=float)
        keep &= (conf >= lo) & (conf <= hi)
    if f.outcome is not None:
        if f.outcome not in OUTCOMES:
            raise ValueError(f"outcome={f.outcome!r} — pass 'wrong', 'right' or None")
        keep &= samples["correct"].to_numpy(dtype=float) == (1.0 if f.outcome == "right" else 0.0)
    return keep


def _keep(samples: pd.DataFrame, task: str, f: ReviewFilter, tag_frame: pd.DataFrame | None) -> np.ndarray:
    """Which samples pass the filter `f` (a boolean array in the frame's row order)."""
    _check_task(task)
    by_class = (f.true_class, f.predicted_class, f.confidence_range, f.outcome)
    if any(v is not None for v in by_class) and task != "classification":
        raise ValueError("class, confidence and outcome filters need classification samples — "
                         "drop true_class/predicted_class/confidence_range/outcome for a regression run")
    keep = _class_filters(samples, f)
    if f.loss_range is not None:
        lo, hi = _range(f.loss_range, "loss_range", "(1.0, inf)")
        loss = samples["loss"].to_numpy(dtype=float)
        keep &= (loss >= lo) & (loss <= hi)
    if f.tags is not None:
        if tag_frame is None:
            raise ValueError("tags given without tag_frame — pass tag_frame=<the run's sample_id, tag frame>")
        tags = [f.tags] if isinstance(f.tags, str) else list(f.tags)
        tagged = tag_frame.loc[tag_frame["tag"].isin(tags), "sample_id"].astype(str).unique()
        keep &= samples["sample_id"].astype(str).isin(tagged).to_numpy()
    if f.id_contains:
        keep &= id_matches(samples["sample_id"], f.id_contains)
    return keep


def review_order(samples: pd.DataFrame, task: str, filters: ReviewFilter = ReviewFilter(),
                 sort_by: str | None = None, ascending: bool = False,
                 tag_frame: pd.DataFrame | None = None) -> np.ndarray:
    """Row positions of the samples that pass `filters`, in review order: by how wrong they are
    (loss, or |residual| for regression) worst first with `sort_by=None`, else by the column
    `sort_by` (`ascending` or not). Missing values go last; ties keep the frame's order.

        samples.iloc[review_order(samples, "classification", ReviewFilter(outcome="wrong"))]
    """
    keep = np.flatnonzero(_keep(samples, task, filters, tag_frame))
    if sort_by is None:
        key = error_size(samples, task).to_numpy()
    elif sort_by not in samples.columns:
        raise ValueError(f"sort_by={sort_by!r} is not a column of the samples — pass one of "
                         f"{', '.join(c for c in samples.columns if c in SORTABLE)} (or None: worst first)")
    elif sort_by == "sample_id":
        ids = samples["sample_id"]
        numeric = pd.to_numeric(ids, errors="coerce")
        key = (numeric if numeric.notna().all() else ids.astype(str)).to_numpy()
    else:
        key = samples[sort_by].to_numpy(dtype=float)
    # positions, not labels: a frame concatenated from several splits may repeat index labels
    order = pd.Series(key[keep]).sort_values(ascending=ascending, kind="stable", na_position="last").index
    return keep[order.to_numpy()]


def review_orders(task: str) -> dict[str, tuple[str | None, bool]]:
    """The orders a review table offers, by their label: (sort_by, ascending) for `review_order`."""
    _check_task(task)
    if task == "classification":
        return {"worst first, by loss": (None, False), "least confident first": ("confidence", True),
                "most confident first": ("confidence", False), "lowest loss first": (None, True),
                "by sample id": ("sample_id", True)}
    return {"worst first, by |residual|": (None, False), "most overestimated first": ("residual", False),
            "most underestimated first": ("residual", True), "smallest |residual| first": (None, True),
            "by sample id": ("sample_id", True)}


SORTABLE = ("sample_id", "loss", "confidence", "margin", "label", "prediction", "residual", "abs_error")


def page_table(samples: pd.DataFrame, task: str, filters: ReviewFilter = ReviewFilter(), sort_by: str | None = None,
               ascending: bool = False, page: int = 1, page_size: int = PAGE_SIZE,
               tag_frame: pd.DataFrame | None = None) -> Page:
    """One page of the filtered, sorted samples (as `review_order` orders them): the page's
    rows, the filtered total, the clamped page number. Only the page's rows are copied, so a
    review of 100,000 samples sends the browser `page_size` rows.

        p = page_table(samples, "classification", ReviewFilter(outcome="wrong"), page=2, page_size=200)
        p.rows, p.total, p.label     # 200 rows, 8312, "rows 201–400 of 8,312"
    """
    order = review_order(samples, task, filters, sort_by, ascending, tag_frame)
    page, start, stop = page_span(len(order), page, page_size)
    return Page(samples.iloc[order[start:stop]].reset_index(drop=True), len(order), page, int(page_size))


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
    trained = (f"; training optimised {loss_fn}, which this column is not"
               if loss_fn and loss_fn not in schema.MSE_LOSSES else "")
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
    (regression) — for position outputs the share of counted positions right, their count,
    the mean and the worst position's loss instead —, tags joined by commas, then the input
    statistics and metadata without their `input_`/`meta_` prefixes.

        review_table(worst_cases(samples, "classification"), "classification", ["CNV", "DME", ...])
    """
    _check_task(task)
    classification = task == "classification"
    name = (lambda v: class_name(class_names, v)) if classification else (lambda v: v)  # noqa: E731
    columns = {"sample_id": view["sample_id"].astype(str),
               "label": view["label"].map(name), "prediction": view["prediction"].map(name),
               "loss": view["loss"]}
    if "position_accuracy" in view:  # tokens, pixels: a sample's share right says more than its commonest class
        columns = {"sample_id": columns["sample_id"], "right": view["position_accuracy"],
                   "counted": view["positions_counted"], "loss": view["loss"],
                   "worst_position_loss": view["worst_position_loss"]}
    elif classification:
        columns["confidence"] = view["confidence"]
    else:
        columns["residual"] = view["residual"] if "residual" in view else view["prediction"] - view["label"]
        columns["abs_error"] = error_size(view, task)
    tags = view["tags"] if "tags" in view else pd.Series([[]] * len(view), index=view.index)
    columns["tags"] = tags.map(lambda t: ", ".join(t) if isinstance(t, (list, tuple, np.ndarray)) else "")
    shown = shown_names([c for c in view.columns if c.startswith(("input_", "meta_"))])
    for c, name in shown.items():  # 'snr_db (input)' and 'snr_db (meta)' where both exist: none hides the other
        columns.setdefault(re.sub(r"^(input|meta)_", "", name), view[c])
    return pd.DataFrame(columns).reset_index(drop=True)
