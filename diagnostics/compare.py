"""Run comparison: which samples a change fixed and which it broke, and whether that is more
than chance.

`compare(run_a, run_b)` joins the latest evaluation of one split of two runs on `sample_id`
and returns a `Comparison`: the per-sample diff, summary numbers with an exact test, a
per-class table, and what else differs between the runs (config, final scalars, health
findings). Run A is the reference ("before"), run B the candidate ("after").

    import diagnostics
    c = diagnostics.compare("runs/baseline", "runs/normalised")
    c.summary["fixed"], c.summary["broken"], c.summary["p_value"]
    c.top("broken", limit=10)          # the samples B gets wrong that A got right, worst first
    c.per_tag()                        # per review tag: how many tagged samples B fixed, broke, left wrong
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from diagnostics.across_runs import config_diff, health_diff, scalar_diff
from diagnostics.errors import class_name
from diagnostics.exceptions import ComparisonError, DiagnosticsError
from diagnostics.store import Run, list_runs, open_run
from diagnostics.tags import folder_tags

# Regression: a sample counts as improved or worsened when its |error| moves by more than
# this fraction of run A's median |error| on the shared samples (smaller moves are noise).
REGRESSION_TOLERANCE = 0.1
ALPHA = 0.05
CLASSIFICATION_CHANGES = ("fixed", "broken", "still_wrong", "still_right")
REGRESSION_CHANGES = ("improved", "worsened", "same")
_CHANGE_WORDS = {"fixed": "fixed", "broken": "broken", "still_wrong": "still wrong", "still_right": "still right",
                 "improved": "improved", "worsened": "worsened", "same": "about the same"}
# Different data: more than this share of the shared ids carry different labels in the two
# runs. Label fixes between runs (the loop this tool serves: tag label noise, relabel,
# retrain) touch a few percent of a set: Northcutt et al. (2021) estimate 3.4% label errors
# on average over ten benchmark test sets. Unrelated sets that both name samples by index
# agree by chance on about 1/K of the ids (K balanced classes): 50% mismatches for two
# classes, 90% for ten, nearly all for real-valued targets. A quarter sits well between.
MAX_LABEL_MISMATCH_SHARE = 0.25
_SAMPLE_COLUMNS = ("step", "label", "prediction", "loss", "correct", "confidence", "residual")


@dataclass(frozen=True)
class Comparison:
    """Run B against run A on one split (what `compare` returns).

    - `samples`: one row per sample evaluated in both runs: sample_id, label, prediction_a/b,
      loss_a/b, loss_delta (b − a), correct_a/b and confidence_a/b (classification) or
      residual_a/b, abs_error_a/b and error_delta (regression), and `change`.
    - `summary`: counts (shared, only_a, only_b, each change), accuracy or MAE of each run on
      the shared samples, and the exact test (`test`, `p_value`) of fixed vs broken
      (McNemar) or improved vs worsened (sign test).
    - `per_class`: class, name, support, recall_a, recall_b, delta, fixed, broken
      (classification; empty for regression).
    - `config`: key, value_a, value_b, change (changed / only in A / only in B), source
      (config or run) for every manifest entry that differs.
    - `scalars`: name, value_a, value_b, delta, step_a, step_b: the last `loss` and the last
      value of each `val/...` (and `<split>/...`) scalar.
    - `health`: rule, layer, severity, only_in (A or B), message: findings one run has and
      the other has not, matched by rule and layer.
    - `warnings`: what makes the comparison less than like for like (different evaluation
      sets, labels that differ for one id), said in full sentences.
    - `path_a`, `dataset_a`: run A's directory and the dataset key of its evaluation (where
      its review tags are found); `only_a_ids`: the ids A evaluated and B did not.
    """

    run_a: str
    run_b: str
    split: str
    task: str
    samples: pd.DataFrame
    summary: dict[str, Any]
    per_class: pd.DataFrame
    config: pd.DataFrame
    scalars: pd.DataFrame
    health: pd.DataFrame
    warnings: tuple[str, ...] = ()
    path_a: str = ""
    dataset_a: str = ""
    only_a_ids: tuple[str, ...] = ()

    def top(self, change: str, limit: int | None = 10) -> pd.DataFrame:
        """Samples with one `change`, the largest moves first: `fixed`/`improved` by how much
        the loss (|error|) fell, `broken`/`worsened` by how much it rose."""
        known = CLASSIFICATION_CHANGES if self.task == "classification" else REGRESSION_CHANGES
        if change not in known:
            raise ValueError(f"unknown change {change!r} for a {self.task} comparison — "
                             f"pick one of {', '.join(known)}")
        key = "loss_delta" if self.task == "classification" else "error_delta"
        rows = self.samples[self.samples["change"] == change]
        rows = rows.sort_values(key, ascending=change in ("fixed", "improved", "still_right"), kind="stable")
        rows = rows.reset_index(drop=True)
        return rows if limit is None else rows.head(int(limit))

    @property
    def outcomes(self) -> tuple[str, str]:
        """The two changes that count: ("fixed", "broken") or ("improved", "worsened")."""
        return ("fixed", "broken") if self.task == "classification" else ("improved", "worsened")

    def changed(self, class_names: Sequence[str] | None = None) -> pd.DataFrame:
        """The samples that changed, as a review lists them: those B fixed (improved), then
        those it broke (worsened), each group by how much it moved: sample_id, change, label,
        prediction_a, prediction_b (class names for classification), and loss_a, loss_b or
        abs_error_a, abs_error_b.

            c.changed(["CNV", "DME", "DRUSEN", "NORMAL"]).head(20)
        """
        good, bad = self.outcomes
        rows = pd.concat([self.top(good, limit=None), self.top(bad, limit=None)], ignore_index=True)
        classification = self.task == "classification"
        shown = (lambda v: class_name(class_names, v)) if classification else (lambda v: v)  # noqa: E731
        what = "loss" if classification else "abs_error"
        return rows[["sample_id", "change"]].assign(
            label=rows["label"].map(shown), prediction_a=rows["prediction_a"].map(shown),
            prediction_b=rows["prediction_b"].map(shown),
            **{f"{what}_a": rows[f"{what}_a"], f"{what}_b": rows[f"{what}_b"]})

    def per_class_points(self) -> pd.DataFrame:
        """`per_class` with recall_a, recall_b and delta in percent (points for the delta)."""
        return self.per_class.assign(**{col: 100 * self.per_class[col] for col in ("recall_a", "recall_b", "delta")})

    def review_tags(self) -> pd.DataFrame:
        """The review tags on A's evaluated data (its dataset key) from every run in A's folder,
        as the Error review page of A shows them and writes them: sample_id, tag, run,
        created_at. A tag made while reviewing a later run on the same data counts too."""
        if not self.path_a or not self.dataset_a:
            return pd.DataFrame(columns=["sample_id", "tag", "run", "created_at"])
        return folder_tags(Path(self.path_a).parent, self.dataset_a)

    def per_tag(self, tags: pd.DataFrame | None = None) -> pd.DataFrame:
        """Per review tag, what B did to the samples tagged in A: one row per tag with `tag`,
        `tagged` (tagged samples both runs evaluated), the counts of each change among them
        (fixed, broken, still_wrong, still_right; or improved, worsened, same) and `not_in_b`
        (tagged samples A evaluated and B did not). Most tagged first.

        `tags` is a frame with sample_id and tag (a pair listed twice counts once; ids A did
        not evaluate are left out); None reads `review_tags()`.

            c.per_tag()                    # tag, tagged, fixed, broken, still_wrong, still_right, not_in_b
            c.per_tag(pd.DataFrame({"sample_id": ["s1", "s2"], "tag": "too dark"}))
        """
        return tag_outcomes(self.samples, self.only_a_ids, self.review_tags() if tags is None else tags,
                            self.task)

    def tag_sentences(self, table: pd.DataFrame | None = None) -> list[str]:
        """One sentence per row of `per_tag()` (or of `table`): "Of the 40 samples tagged 'too
        dark', 31 fixed, 2 broken, 7 still wrong, 0 still right." """
        table = self.per_tag() if table is None else table
        changes = CLASSIFICATION_CHANGES if self.task == "classification" else REGRESSION_CHANGES
        out = []
        for row in table.to_dict("records"):
            if not row["tagged"]:
                out.append(f"None of the {row['not_in_b']} sample(s) tagged '{row['tag']}' is in B's evaluation.")
                continue
            missing = f"{row['not_in_b']} more B did not evaluate" if row["not_in_b"] else ""
            counts = ", ".join(f"{row[c]} {_CHANGE_WORDS[c]}" for c in changes)
            noun = "sample" if row["tagged"] == 1 else "samples"
            out.append(f"Of the {row['tagged']} {noun} tagged '{row['tag']}', {counts}"
                       f"{f'; {missing}' if missing else ''}.")
        return out

    def verdict(self, alpha: float = ALPHA) -> str:
        """One sentence: did B fix more than it broke, beyond chance?"""
        s = self.summary
        good, bad = ("fixed", "broken") if self.task == "classification" else ("improved", "worsened")
        n_good, n_bad = s[good], s[bad]
        if n_good + n_bad == 0:
            if self.task == "classification":
                return "No sample went from wrong to right or back: A and B are right on the same samples."
            return f"No sample's |error| moved by more than the tolerance ({s['tolerance']:.3g}) between A and B."
        test = f"{s['test']}, p = {s['p_value']:.3g}"
        if s["p_value"] < alpha:
            verbs = ("fixes", "breaks") if good == "fixed" else ("improves", "worsens")
            more, fewer = verbs if n_good > n_bad else verbs[::-1]
            return f"B {more} more samples than it {fewer} ({n_good} {good} vs {n_bad} {bad}), beyond chance ({test})."
        return (f"{n_good} {good} vs {n_bad} {bad}: a difference this size could be chance ({test}, "
                f"not below {alpha:g}).")

    def to_dict(self, limit: int | None = 10) -> dict[str, Any]:
        """JSON-ready: summary, verdict, warnings, per-class table, the top `limit` fixed and
        broken (improved and worsened) samples, all of them with `limit=None`, the config,
        scalar and health differences, and `per_tag` (A's review tags, see `per_tag`)."""
        changes = CLASSIFICATION_CHANGES[:2] if self.task == "classification" else REGRESSION_CHANGES[:2]
        return _jsonable({
            "run_a": self.run_a, "run_b": self.run_b, "split": self.split, "task": self.task,
            "summary": self.summary, "verdict": self.verdict(), "warnings": list(self.warnings),
            "per_class": self.per_class.to_dict("records"),
            **{change: self.top(change, limit).to_dict("records") for change in changes},
            "config": self.config.to_dict("records"), "scalars": self.scalars.to_dict("records"),
            "health": self.health.to_dict("records"),
            "per_tag": self.per_tag().to_dict("records"),
        })


def compare(run_a: Run | str | os.PathLike, run_b: Run | str | os.PathLike, split: str = "val",
            tolerance: float = REGRESSION_TOLERANCE) -> Comparison:
    """Compare run B against run A on the latest evaluation of `split` in each.

    Samples are joined on `sample_id`; ids only one run evaluated are counted (and warned
    about), never compared. Classification: each shared sample is `fixed` (wrong in A, right
    in B), `broken` (right in A, wrong in B), `still_wrong` or `still_right`, and McNemar's
    exact test says whether fixed vs broken is more than chance. Regression: a sample is
    `improved` or `worsened` when its |error| moves by more than `tolerance` × A's median
    |error|, else `same`, with the same exact (sign) test on improved vs worsened.

    Raises ComparisonError when a run has no evaluation of `split`, the runs share no
    sample id, more than MAX_LABEL_MISMATCH_SHARE of the shared ids carry different labels
    (different data: fewer are a warning), or their tasks differ.

        c = compare("runs/baseline", "runs/augmented")
        print(c.verdict())                  # "B fixes more samples than it breaks (31 fixed vs 9 broken) ..."
        c.per_class.sort_values("delta")    # which classes got worse
    """
    a = run_a if isinstance(run_a, Run) else open_run(run_a)
    b = run_b if isinstance(run_b, Run) else open_run(run_b)
    frame_a, frame_b = _evaluated(a, split), _evaluated(b, split)
    task_a = _same_task(a, b, frame_a, frame_b, split)
    notes: list[str] = []
    frame_a, frame_b = _unique_ids(frame_a, a.name, notes), _unique_ids(frame_b, b.name, notes)
    ids_a, ids_b = set(frame_a["sample_id"]), set(frame_b["sample_id"])
    shared = ids_a & ids_b
    if not shared:
        raise ComparisonError(
            f"runs {a.name} and {b.name} share no sample id on split {split!r} ({len(ids_a)} and {len(ids_b)} "
            "samples) — they were evaluated on different data; pass the same ids to run.evaluate in both")
    if len(shared) < max(len(ids_a), len(ids_b)):
        notes.append(
            f"Different evaluation sets: {len(ids_a) - len(shared)} of {a.name}'s {len(ids_a)} and "
            f"{len(ids_b) - len(shared)} of {b.name}'s {len(ids_b)} samples are not in the other run; "
            f"every number here covers the {len(shared)} shared samples only.")
    joined = frame_a.merge(frame_b, on="sample_id", suffixes=("_a", "_b")).sort_values("sample_id", kind="stable")
    joined = joined.reset_index(drop=True)
    mismatched = _label_check(joined, a.name, b.name, split, notes)
    summary: dict[str, Any] = {
        "run_a": a.name, "run_b": b.name, "split": split, "task": task_a,
        "step_a": int(frame_a["step"].max()), "step_b": int(frame_b["step"].max()),
        "n_a": len(ids_a), "n_b": len(ids_b), "shared": len(shared),
        "only_a": len(ids_a - shared), "only_b": len(ids_b - shared), "label_mismatches": int(mismatched.sum()),
        "loss_a": float(joined["loss_a"].mean()), "loss_b": float(joined["loss_b"].mean()),
    }
    if task_a == "classification":
        samples, per_class = _classification(joined, summary, a.manifest)
    else:
        samples, per_class = _regression(joined, summary, tolerance), pd.DataFrame(columns=_PER_CLASS_COLUMNS)
    for note in notes:
        warnings.warn(note, UserWarning, stacklevel=2)
    return Comparison(run_a=a.name, run_b=b.name, split=split, task=task_a, samples=samples, summary=summary,
                      per_class=per_class, config=config_diff(a.manifest, b.manifest),
                      scalars=scalar_diff(a, b, split), health=health_diff(a.health(), b.health()),
                      warnings=tuple(notes), path_a=str(a.path), only_a_ids=tuple(sorted(ids_a - shared)),
                      dataset_a=_evaluated_dataset(a, split, summary["step_a"]))


def mcnemar_p(fixed: int, broken: int) -> float:
    """Two-sided exact McNemar p-value: the chance of a split of the fixed + broken samples at
    least this uneven if fixing and breaking were equally likely (a binomial test at 1/2)."""
    # P(X <= k) for X ~ Binomial(n, 1/2), via the incomplete beta function: scipy.special
    # imports in a fraction of the time scipy.stats takes, and only when a comparison runs
    from scipy.special import betainc

    n, k = int(fixed) + int(broken), min(int(fixed), int(broken))
    if n == 0 or 2 * k >= n:
        return 1.0
    return float(min(1.0, 2.0 * betainc(n - k, k + 1, 0.5)))


def comparable_runs(folder: str | os.PathLike, run: Run | str | os.PathLike) -> pd.DataFrame:
    """The other runs of `folder` that `run` can be compared with: readable, with an evaluation,
    of the same task when both say. One row per run (name, path, created_at, splits,
    same_data): runs evaluated on the same data as `run` (see `same_data`; on `val` when both
    evaluated it, else their first common split) first, each group most recent first. A run
    that turns out unreadable while being checked is left out, with why in
    `frame.attrs["skipped"]` (folder name → message).

        comparable_runs("runs", "runs/baseline").query("same_data")["name"]
    """
    me = run if isinstance(run, Run) else open_run(run)
    my_splits = _splits(me)
    rows, skipped = [], {}
    for row in list_runs(folder).itertuples():
        if row.state == "broken" or Path(row.path).resolve() == me.path.resolve():
            continue
        try:
            other = open_run(row.path)
            splits = _splits(other)
            if not splits or not (row.task is None or me.manifest.get("task") is None
                                  or row.task == me.manifest.get("task")):
                continue
            common = [s for s in my_splits if s in splits]
            split = "val" if "val" in common else (common[0] if common else None)
            same = split is not None and same_data(me, other, split)
        except DiagnosticsError as exc:  # broken since it was listed
            skipped[Path(row.path).name] = str(exc)
            continue
        rows.append({"name": row.name, "path": row.path, "created_at": row.created_at, "splits": splits,
                     "same_data": same})
    frame = pd.DataFrame(rows, columns=["name", "path", "created_at", "splits", "same_data"])
    frame = frame.astype({"same_data": bool})
    frame = frame.sort_values("created_at", ascending=False, kind="stable")
    frame = frame.sort_values("same_data", ascending=False, kind="stable").reset_index(drop=True)
    frame.attrs["skipped"] = skipped
    return frame


def same_data(run_a: Run, run_b: Run, split: str = "val") -> bool:
    """Whether the latest evaluations of `split` in two runs are of the same data: the same
    dataset key (split, ids and labels hashed by `run.evaluate`), or, when the keys differ or
    are missing (id sets of different sizes, older runs), shared ids whose labels differ on at
    most MAX_LABEL_MISMATCH_SHARE of them: what `compare` accepts."""
    key_a, key_b = _dataset_key(run_a, split), _dataset_key(run_b, split)
    if key_a is not None and key_a == key_b:
        return True
    if _layout(run_a, split) != _layout(run_b, split):  # tokens vs pixels: their per-sample labels say nothing
        return False
    labels_a, labels_b = _labels(run_a, split), _labels(run_b, split)
    joined = pd.concat([labels_a.rename("a"), labels_b.rename("b")], axis=1, join="inner")
    if joined.empty:
        return False
    return int(_labels_differ(joined["a"], joined["b"]).sum()) <= MAX_LABEL_MISMATCH_SHARE * len(joined)


def _splits(run: Run) -> list[str]:
    return list(dict.fromkeys(e.get("split") for e in run.manifest.get("evaluations") or [] if e.get("split")))


def _same_task(a: Run, b: Run, frame_a: pd.DataFrame, frame_b: pd.DataFrame, split: str) -> str:
    """The task both runs' evaluations of `split` share; ComparisonError when their tasks, or the
    outputs they score (one label per sample, tokens, pixels, their shapes), differ."""
    task_a, task_b = _task(a, frame_a), _task(b, frame_b)
    if task_a != task_b:
        raise ComparisonError(f"run {a.name} is {task_a} and run {b.name} is {task_b} — "
                              "compare runs of the same task")
    if _layout(a, split) != _layout(b, split):
        raise ComparisonError(f"runs {a.name} and {b.name} score different outputs on split {split!r} "
                              f"({_describe_layout(_layout(a, split))} vs {_describe_layout(_layout(b, split))}) — "
                              "compare runs evaluated on the same task and data")
    return task_a


def _layout(run: Run, split: str) -> tuple | None:
    """(layout, position shape) of the latest evaluation of `split`; None: one label per sample."""
    info = run.position_info(split)
    return None if info is None else (info.get("layout"), tuple(info.get("shape") or ()))


def _describe_layout(layout: tuple | None) -> str:
    return "one label per sample" if layout is None else f"{layout[0]} of shape {list(layout[1])}"


def _dataset_key(run: Run, split: str) -> str | None:
    keys = [e.get("dataset") for e in run.manifest.get("evaluations") or [] if e.get("split") == split]
    return keys[-1] if keys and keys[-1] else None


def _labels(run: Run, split: str) -> pd.Series:
    """Label by sample id (str) in the latest evaluation of `split`, cached per run version."""
    return _labels_at(str(run.path.resolve()), run.data_version(), split).copy()


@functools.lru_cache(maxsize=256)
def _labels_at(path: str, version: str, split: str) -> pd.Series:
    frame = open_run(path).samples(split, columns=("label",))
    ids = frame["sample_id"].astype(str)
    return pd.Series(frame["label"].to_numpy(dtype=float), index=ids)[~ids.duplicated().to_numpy()]


def _labels_differ(labels_a: pd.Series, labels_b: pd.Series) -> np.ndarray:
    """Both labels known and different; real-valued labels within float32 rounding are equal."""
    a, b = labels_a.to_numpy(dtype=float), labels_b.to_numpy(dtype=float)
    known = np.isfinite(a) & np.isfinite(b)
    return known & ~np.isclose(a, b, rtol=1e-6, atol=0.0)


def tag_outcomes(samples: pd.DataFrame, only_a_ids: Sequence[str], tags: pd.DataFrame, task: str) -> pd.DataFrame:
    """`Comparison.per_tag` from its parts: `samples` (sample_id, change), the ids only A
    evaluated, and the (sample_id, tag) pairs. A tag none of whose samples A evaluated gets
    no row."""
    changes = CLASSIFICATION_CHANGES if task == "classification" else REGRESSION_CHANGES
    columns = ["tag", "tagged", *changes, "not_in_b"]
    missing = {"sample_id", "tag"} - set(tags.columns)
    if missing:
        raise ComparisonError(f"the tags frame lacks column(s) {', '.join(sorted(missing))} — pass one with "
                              "sample_id and tag, such as TagStore(run_dir).tags(dataset)")
    pairs = tags[["sample_id", "tag"]].astype(str).drop_duplicates()
    change_of = pd.Series(samples["change"].to_numpy(), index=samples["sample_id"].astype(str))
    pairs = pairs.assign(change=pairs["sample_id"].map(change_of), not_in_b=pairs["sample_id"].isin(set(only_a_ids)))
    rows = []
    for tag, group in pairs.groupby("tag", sort=True):
        counts = group["change"].value_counts()
        row = {"tag": tag, "tagged": int(group["change"].notna().sum()),
               **{c: int(counts.get(c, 0)) for c in changes}, "not_in_b": int(group["not_in_b"].sum())}
        if row["tagged"] or row["not_in_b"]:
            rows.append(row)
    frame = pd.DataFrame(rows, columns=columns).astype({c: "int64" for c in columns[1:]})
    return frame.sort_values(["tagged", "not_in_b"], ascending=False, kind="stable").reset_index(drop=True)


def _evaluated_dataset(run: Run, split: str, step: int) -> str:
    """The dataset key of the evaluation of `split` at `step`, under which the Error review
    page keeps its tags (the split's name for runs recorded before keys existed)."""
    keys = [e.get("dataset") for e in run.manifest.get("evaluations") or []
            if e.get("split") == split and e.get("step") == step]
    return str(keys[-1]) if keys and keys[-1] else split


# -- the per-sample diff ----------------------------------------------------------------------

_PER_CLASS_COLUMNS = ["class", "name", "support", "recall_a", "recall_b", "delta", "fixed", "broken"]


def no_evaluation_error(run: Run, name: str, split: str, instead: str) -> ComparisonError:
    """The one line for a run without an evaluation of `split`: the splits it has, and the fix."""
    splits = sorted({str(e.get("split")) for e in run.manifest.get("evaluations") or []})
    hint = f"its evaluated splits: {', '.join(splits)}" if splits else "it has no evaluation at all"
    return ComparisonError(f"run {name} has no evaluation of split {split!r} ({hint}) — record one with "
                           f"run.evaluate(loader, split={split!r}) or {instead}")


def _evaluated(run: Run, split: str) -> pd.DataFrame:
    frame = run.samples(split, columns=_SAMPLE_COLUMNS)
    if frame.empty:
        raise no_evaluation_error(run, run.name, split, "compare another split")
    return frame.assign(sample_id=frame["sample_id"].astype(str))


def _task(run: Run, frame: pd.DataFrame) -> str:
    task = run.manifest.get("task")
    if task in ("classification", "regression"):
        return task
    return "regression" if frame["residual"].notna().any() and frame["correct"].isna().all() else "classification"


def _unique_ids(frame: pd.DataFrame, name: str, notes: list[str]) -> pd.DataFrame:
    dup = frame["sample_id"].duplicated()
    if dup.any():
        notes.append(f"Run {name} evaluated {int(dup.sum())} sample id(s) more than once in one evaluation "
                     "(no ids passed to run.evaluate?); the first row of each is used.")
        frame = frame[~dup]
    return frame


def _label_check(joined: pd.DataFrame, name_a: str, name_b: str, split: str, notes: list[str]) -> pd.Series:
    """Which shared ids carry different labels in the two runs: a few are said (a note), more
    than MAX_LABEL_MISMATCH_SHARE of them mean different data (ComparisonError)."""
    mismatched = pd.Series(_labels_differ(joined["label_a"], joined["label_b"]), index=joined.index)
    if mismatched.sum() > MAX_LABEL_MISMATCH_SHARE * len(joined):
        raise ComparisonError(
            f"runs {name_a} and {name_b} share {len(joined)} ids on split {split!r} but {int(mismatched.sum())} "
            "carry different labels: they were evaluated on different data — compare runs evaluated on the same "
            "samples (the same ids and labels passed to run.evaluate)")
    if mismatched.any():
        first = ", ".join(joined.loc[mismatched, "sample_id"].head(3))
        notes.append(f"{int(mismatched.sum())} shared sample id(s) carry different labels in the two runs "
                     f"(e.g. {first}): the ids may not name the same samples; each run is scored against "
                     "its own label.")
    return mismatched


def _correct(joined: pd.DataFrame, side: str) -> np.ndarray:
    correct = joined[f"correct_{side}"].to_numpy(dtype=float)
    fallback = (joined[f"prediction_{side}"] == joined[f"label_{side}"]).to_numpy(dtype=float)
    return np.where(np.isfinite(correct), correct, fallback) > 0.5


def _classification(joined: pd.DataFrame, summary: dict, manifest: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    right_a, right_b = _correct(joined, "a"), _correct(joined, "b")
    change = np.select([~right_a & right_b, right_a & ~right_b, ~right_a & ~right_b],
                       ["fixed", "broken", "still_wrong"], "still_right")
    samples = pd.DataFrame({
        "sample_id": joined["sample_id"], "label": joined["label_a"],
        "prediction_a": joined["prediction_a"], "prediction_b": joined["prediction_b"],
        "loss_a": joined["loss_a"], "loss_b": joined["loss_b"], "loss_delta": joined["loss_b"] - joined["loss_a"],
        "correct_a": right_a, "correct_b": right_b,
        "confidence_a": joined["confidence_a"], "confidence_b": joined["confidence_b"], "change": change})
    counts = {c: int((change == c).sum()) for c in CLASSIFICATION_CHANGES}
    summary.update(accuracy_a=float(right_a.mean()), accuracy_b=float(right_b.mean()),
                   accuracy_delta=float(right_b.mean() - right_a.mean()), **counts,
                   test="exact McNemar test", p_value=mcnemar_p(counts["fixed"], counts["broken"]))

    names = manifest.get("class_names") or []
    labels = samples["label"].to_numpy(dtype=float)
    known = labels[np.isfinite(labels)].astype(np.int64)
    k = max(len(names), int(manifest.get("num_classes") or 0), int(known.max()) + 1 if known.size else 0)
    rows = []
    for c in range(k):
        of = labels == c
        support = int(of.sum())
        recall_a = float(right_a[of].mean()) if support else math.nan
        recall_b = float(right_b[of].mean()) if support else math.nan
        rows.append({"class": c, "name": str(names[c]) if c < len(names) else str(c), "support": support,
                     "recall_a": recall_a, "recall_b": recall_b, "delta": recall_b - recall_a,
                     "fixed": int((of & (change == "fixed")).sum()), "broken": int((of & (change == "broken")).sum())})
    return samples, pd.DataFrame(rows, columns=_PER_CLASS_COLUMNS)


def _regression(joined: pd.DataFrame, summary: dict, tolerance: float) -> pd.DataFrame:
    def abs_error(side: str) -> pd.Series:
        resid = joined[f"residual_{side}"].astype(float)
        return resid.where(resid.notna(), joined[f"prediction_{side}"] - joined[f"label_{side}"]).abs()

    err_a, err_b = abs_error("a"), abs_error("b")
    median_a = float(err_a.median())
    tol = tolerance * median_a if math.isfinite(median_a) else 0.0
    delta = err_b - err_a
    change = np.select([delta < -tol, delta > tol], ["improved", "worsened"], "same")
    samples = pd.DataFrame({
        "sample_id": joined["sample_id"], "label": joined["label_a"],
        "prediction_a": joined["prediction_a"], "prediction_b": joined["prediction_b"],
        "loss_a": joined["loss_a"], "loss_b": joined["loss_b"], "loss_delta": joined["loss_b"] - joined["loss_a"],
        "residual_a": joined["residual_a"], "residual_b": joined["residual_b"],
        "abs_error_a": err_a, "abs_error_b": err_b, "error_delta": delta, "change": change})
    counts = {c: int((change == c).sum()) for c in REGRESSION_CHANGES}
    summary.update(mae_a=float(err_a.mean()), mae_b=float(err_b.mean()), mae_delta=float(err_b.mean() - err_a.mean()),
                   tolerance=tol, **counts, test="exact sign test",
                   p_value=mcnemar_p(counts["improved"], counts["worsened"]))
    return samples


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in obj]
    if obj is None or obj is pd.NA or obj is pd.NaT:
        return None
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, str):
        return obj
    return str(obj)
