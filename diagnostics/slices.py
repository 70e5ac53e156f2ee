"""Slices where errors concentrate: "brightness < 0.21: 41% wrong vs 7% overall, 96 samples".

A slice is a conjunction of predicates `(feature, op, value)` over the samples frame, with ops
`<`, `>=` (numeric), `=` (categorical) and `has` (a list-valued tag column). `find_slices`
searches them; `slice_mask` selects a slice's samples again from its predicates, so whatever
the table reports can be checked (and opened in the worst-cases view) by a direct count.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import betainc

Predicate = tuple[str, str, Any]

COLUMNS = ["description", "size", "errors", "error_rate", "overall_rate", "lift", "score", "p_value",
           "predicates"]
_OPS = ("<", ">=", "=", "has")
# A conjunction must beat each of its parts' scores by this factor, or the second predicate
# only trims noise off a slice that the first one already found.
_CONJUNCTION_GAIN = 1.1


def _binomial_tail(k: np.ndarray | int, n: np.ndarray | int, p: float) -> np.ndarray:
    """P(X >= k) for X ~ Binomial(n, p), through the incomplete beta function (scipy.special
    imports in a tenth of the time scipy.stats takes)."""
    k, n = np.asarray(k, dtype=float), np.asarray(n, dtype=float)
    return np.where(k <= 0, 1.0, betainc(np.maximum(k, 1.0), n - k + 1.0, p))


def _is_listlike(value: Any) -> bool:
    return isinstance(value, (list, tuple, set, frozenset, np.ndarray))


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def slice_mask(samples: pd.DataFrame, predicates: Sequence[Predicate]) -> pd.Series:
    """Boolean Series (on samples' index) of the rows satisfying every predicate.

        slice_mask(samples, [("input_brightness", "<", 0.21), ("label", "=", 1)])
    """
    mask = pd.Series(True, index=samples.index)
    for feature, op, value in predicates:
        if feature not in samples:
            raise ValueError(f"slice feature {feature!r} is not a column of the samples — "
                             "use predicates from find_slices on the same kind of frame")
        col = samples[feature]
        if op == "<":
            mask &= pd.to_numeric(col, errors="coerce") < value
        elif op == ">=":
            mask &= pd.to_numeric(col, errors="coerce") >= value
        elif op == "=":
            mask &= col == value
        elif op == "has":
            mask &= col.map(lambda v, wanted=value: _is_listlike(v) and wanted in list(v)).astype(bool)
        else:
            raise ValueError(f"unknown slice op {op!r} — use one of {', '.join(_OPS)}")
    return mask.fillna(False).astype(bool)


def describe_slice(row: pd.Series | dict) -> str:
    """The sentence a dashboard shows for one row of `find_slices`, `input_` prefixes dropped:
    "brightness < 0.21: 41% wrong vs 7% overall, 96 samples"."""
    description = re.sub(r"\b(input|meta)_", "", str(row["description"]))
    return (f"{description}: {row['error_rate']:.0%} wrong vs {row['overall_rate']:.0%} overall, "
            f"{int(row['size'])} samples")


def _error_indicator(samples: pd.DataFrame, task: str, error: pd.Series | np.ndarray | None) -> np.ndarray:
    """1.0 wrong, 0.0 right, NaN unknown, one per row of samples."""
    if error is not None:
        if isinstance(error, pd.Series):
            error = error.reindex(samples.index)
        values = np.asarray(error, dtype=float)
        if values.shape != (len(samples),):
            raise ValueError(f"error has shape {values.shape} for {len(samples)} samples — "
                             "pass one boolean per sample (a Series on samples' index)")
        return values
    if task == "classification":
        return 1.0 - samples["correct"].to_numpy(dtype=float)
    if task == "regression":
        if "residual" in samples:
            size = np.abs(samples["residual"].to_numpy(dtype=float))
        else:
            size = np.abs(samples["prediction"].to_numpy(dtype=float) - samples["label"].to_numpy(dtype=float))
        finite = np.isfinite(size)
        if not finite.any():
            return np.full(len(samples), np.nan)
        cut = np.quantile(size[finite], 0.75)
        return np.where(finite, (size > cut).astype(float), np.nan)
    raise ValueError(f"unknown task {task!r} — pass task='classification' or task='regression'")


def _default_features(samples: pd.DataFrame) -> list[str]:
    features = [c for c in samples.columns if str(c).startswith(("input_", "meta_"))]
    features += [c for c in ("confidence", "label", "tag", "tags") if c in samples]
    return features


def review_features(samples: pd.DataFrame, task: str) -> list[str]:
    """The features an error review searches for slices: the input statistics and metadata,
    the label, the review tags (a `tags` column of lists) and, for classification, the
    confidence.

        find_slices(samples, "classification", features=review_features(samples, "classification"))
    """
    features = [c for c in samples.columns if str(c).startswith(("input_", "meta_"))] + ["label", "tags"]
    return features + (["confidence"] if task == "classification" else [])


def _predicates_for(samples: pd.DataFrame, feature: str, task: str, bins: int) -> list[Predicate]:
    col = samples[feature]
    non_null = col.dropna()
    if non_null.empty:
        return []
    if _is_listlike(non_null.iloc[0]):
        values = pd.Series([v for items in non_null for v in items]).unique()
        return [(feature, "has", _plain(v)) for v in values]
    categorical = (feature == "label" and task == "classification") or not pd.api.types.is_numeric_dtype(col) \
        or pd.api.types.is_bool_dtype(col)
    if categorical:
        return [(feature, "=", _plain(v)) for v in non_null.unique()]
    x = pd.to_numeric(non_null, errors="coerce").to_numpy(dtype=float)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return []
    # Cut points are rounded to 3 significant digits so that the description is the predicate.
    cuts = sorted({float(f"{q:.3g}") for q in np.quantile(x, np.arange(1, bins) / bins)})
    return [(feature, op, c) for c in cuts for op in ("<", ">=")]


def _format_value(feature: str, value: Any, class_names: Sequence[str] | None) -> str:
    if feature == "label" and class_names is not None and float(value).is_integer() \
            and 0 <= int(value) < len(class_names):
        return str(class_names[int(value)])
    if isinstance(value, float):
        return format(value, ".6g")
    return str(value)


def shown_names(features: Sequence[str]) -> dict[str, str]:
    """How a page names each feature: `input_`/`meta_` columns by their name alone (which
    `describe_slice` drops the prefix to), unless two would read alike (the input's estimated
    `input_snr_db` and the user's `meta_snr_db`): then whole, as 'snr_db (input)', 'snr_db (meta)'."""
    def bare(f: str) -> str:
        return re.sub(r"^(input|meta)_", "", f)

    counts = Counter(bare(str(f)) for f in features)
    return {f: f"{bare(f)} ({f.split('_', 1)[0]})" if f != bare(f) and counts[bare(f)] > 1 else f
            for f in map(str, features)}


def _describe(predicates: Sequence[Predicate], class_names: Sequence[str] | None,
              names: dict[str, str] | None = None) -> str:
    names = names or {}
    if len(predicates) == 2 and predicates[0][0] == predicates[1][0] \
            and {predicates[0][1], predicates[1][1]} == {"<", ">="}:
        lo = next(v for _, op, v in predicates if op == ">=")
        hi = next(v for _, op, v in predicates if op == "<")
        name = names.get(predicates[0][0], predicates[0][0])
        return f"{_format_value('', lo, None)} <= {name} < {_format_value('', hi, None)}"
    words = {"has": "includes"}
    return " and ".join(f"{names.get(f, f)} {words.get(op, op)} {_format_value(f, v, class_names)}"
                        for f, op, v in predicates)


def find_slices(samples: pd.DataFrame, task: str, features: Sequence[str] | None = None, min_size: int = 20,
                max_depth: int = 2, top: int = 10, error: pd.Series | np.ndarray | None = None,
                class_names: Sequence[str] | None = None, bins: int = 10,
                alpha: float = 0.05) -> pd.DataFrame:
    """Rank the slices of the samples where errors concentrate, most telling first.

    Error indicator: `1 - correct` (classification); for regression, |residual| above its 75th
    percentile (so the overall rate is 25%). `error=` (a boolean per sample) replaces it; rows
    whose error is unknown (NaN) are left out of every count.

    Method: predicates per feature (default: the `input_*` and `meta_*` columns, `confidence`, `label`, which
    is categorical for classification, and a `tag` column; a list-valued `tag`/`tags` column
    gives `has` predicates): a numeric feature gives `< c` and `>= c` at its `bins`-quantile
    cut points, a categorical one `= value`. With max_depth=2, also every conjunction of two
    predicates (two features, or an interval of one). Slices of at least `min_size` samples
    are scored by (error_rate − overall_rate)·sqrt(size) — a z-score up to a constant, so a
    large slice with a moderate excess can outrank a tiny extreme one. Kept: slices whose
    one-sided binomial p-value, Bonferroni-corrected over all candidates, is below `alpha`
    (so pure noise reports nothing), and conjunctions that beat both their parts' scores by 10%.
    De-duplication, best first: a slice is reported only if its samples outside the slices
    already reported still number `min_size` and pass the same test, so the neighbouring cut
    points, subsets and dilutions of a reported slice (the same finding) are dropped.

        table = find_slices(samples, "classification", class_names=["CNV", "DME", "DRUSEN", "NORMAL"])
        describe_slice(table.iloc[0])   # 'brightness < 0.21: 41% wrong vs 7% overall, 96 samples'
        samples[slice_mask(samples, table.iloc[0]["predicates"])]
    """
    _check_search(task, max_depth, min_size, bins)
    empty = pd.DataFrame(columns=COLUMNS)
    e_all = _error_indicator(samples, task, error)
    known = np.isfinite(e_all)
    data, e = samples.loc[known], (e_all[known] > 0.5).astype(float)
    n = len(data)
    if n == 0:
        return empty
    overall = float(e.mean())
    if overall <= 0.0 or overall >= 1.0:
        return empty
    features = list(features) if features is not None else _default_features(data)
    missing = [f for f in features if f not in data]
    if missing:
        raise ValueError(f"features {missing} are not columns of the samples — pick from {list(data.columns)}")
    preds, columns = _single_predicates(data, features, task, bins, min_size)
    if not preds:
        return empty
    found = _Candidates(preds, columns, e, overall, min_size, max_depth)
    rows = found.report(alpha, top, class_names, shown_names(features))
    return pd.DataFrame(rows, columns=COLUMNS) if rows else empty


def _check_search(task: str, max_depth: int, min_size: int, bins: int) -> None:
    if task not in ("classification", "regression"):
        raise ValueError(f"unknown task {task!r} — pass task='classification' or task='regression'")
    if max_depth not in (1, 2):
        raise ValueError(f"max_depth={max_depth} — find_slices searches single predicates (1) or pairs (2)")
    if min_size < 1 or bins < 2:
        raise ValueError(f"min_size={min_size}, bins={bins} — pass min_size >= 1 and bins >= 2")


def _single_predicates(data: pd.DataFrame, features: list[str], task: str, bins: int,
                       min_size: int) -> tuple[list[Predicate], list[np.ndarray]]:
    """The predicates of each feature that keep at least `min_size` samples and not all, with their masks."""
    preds: list[Predicate] = []
    columns: list[np.ndarray] = []
    for feature in features:
        for p in _predicates_for(data, feature, task, bins):
            m = slice_mask(data, [p]).to_numpy()
            if min_size <= m.sum() < len(data):
                preds.append(p)
                columns.append(m)
    return preds, columns


class _Candidates:
    """The slices tested: single predicates and (max_depth=2) the pairs that beat both parts,
    as (predicate indices, size, errors); masks are rebuilt only for the slices reported."""

    def __init__(self, preds: list[Predicate], columns: list[np.ndarray], e: np.ndarray, overall: float,
                 min_size: int, max_depth: int):
        self.preds, self.columns, self.e, self.overall, self.min_size = preds, columns, e, overall, min_size
        member = np.column_stack(columns).astype(np.float32)          # n × candidates
        size1 = member.sum(axis=0).astype(np.int64)
        err1 = np.rint(e.astype(np.float32) @ member).astype(np.int64)
        self.index: list[tuple[int, ...]] = [(i,) for i in range(len(preds))]
        sizes, errs = [size1], [err1]
        self.n_tested = len(preds)
        if max_depth == 2 and len(preds) > 1:
            pairs, s2, e2, n_pairs = self._pairs(member, size1, err1)
            self.index += pairs
            sizes.append(s2)
            errs.append(e2)
            self.n_tested += n_pairs
        self.size, self.errors = np.concatenate(sizes), np.concatenate(errs)

    def _pairs(self, member: np.ndarray, size1: np.ndarray, err1: np.ndarray):
        """Conjunctions of two predicates (two features, or an interval of one) that beat
        both their parts' scores by 10%, and how many pairs were tested."""
        overall, min_size, preds = self.overall, self.min_size, self.preds
        score1 = (err1 / size1 - overall) * np.sqrt(size1)
        size2 = np.rint(member.T @ member).astype(np.int64)
        wrong = member[self.e > 0.5]
        err2 = np.rint(wrong.T @ wrong).astype(np.int64)
        i, j = np.triu_indices(len(preds), k=1)
        feat = np.array([p[0] for p in preds], dtype=object)
        op = np.array([p[1] for p in preds], dtype=object)
        distinct = (feat[i] != feat[j]) | ((op[i] != op[j]) & (op[i] != "=")) | ((op[i] == "has") & (op[j] == "has"))
        s2, e2 = size2[i, j], err2[i, j]
        ok = distinct & (s2 >= min_size) & (s2 < size1[i]) & (s2 < size1[j])
        i, j, s2, e2 = i[ok], j[ok], s2[ok], e2[ok]
        sc2 = (e2 / s2 - overall) * np.sqrt(s2)
        best_part = np.maximum(np.maximum(score1[i], 0), np.maximum(score1[j], 0))
        gain = sc2 > _CONJUNCTION_GAIN * best_part
        return list(zip(i[gain].tolist(), j[gain].tolist())), s2[gain], e2[gain], len(i)

    def report(self, alpha: float, top: int, class_names: Sequence[str] | None,
               names: dict[str, str] | None = None) -> list[dict]:
        """Significant slices best first, each only if its samples outside those already
        reported still number `min_size` and pass the same test."""
        size, errors, overall, n_tested = self.size, self.errors, self.overall, self.n_tested
        rate = errors / size
        score = (rate - overall) * np.sqrt(size)
        p_value = np.minimum(_binomial_tail(errors, size, overall) * n_tested, 1.0)
        keep = np.flatnonzero((score > 0) & (p_value < alpha))
        keep = keep[np.argsort(-score[keep], kind="stable")]
        rows, covered = [], np.zeros(len(self.e), dtype=bool)
        for k in keep:
            mask = self.columns[self.index[k][0]]
            for extra in self.index[k][1:]:
                mask = mask & self.columns[extra]
            fresh = mask & ~covered
            fresh_size = int(fresh.sum())
            if fresh_size < self.min_size or \
                    _binomial_tail(self.e[fresh].sum(), fresh_size, overall) * n_tested >= alpha:
                continue
            covered |= mask
            predicates = [self.preds[i] for i in self.index[k]]
            rows.append({"description": _describe(predicates, class_names, names), "size": int(size[k]),
                         "errors": int(errors[k]), "error_rate": float(rate[k]), "overall_rate": overall,
                         "lift": float(rate[k] / overall), "score": float(score[k]),
                         "p_value": float(p_value[k]), "predicates": predicates})
            if len(rows) >= top:
                break
        return rows
