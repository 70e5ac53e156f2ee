"""Ensemble view: would these runs, combined, do better than the best of them?

An ensemble helps only when its members' errors are weakly correlated: members wrong on the
same samples vote each other's mistakes back in. `ensemble(runs)` joins the latest evaluation
of one split of every member on `sample_id` and returns an `Ensemble`: each member's accuracy,
the phi coefficient of every pair's wrong/right indicators, the majority vote's and the
probability average's accuracy, the oracle's (any member right: the most any combination of
these predictions can reach) and the samples exactly one member gets right.

    import diagnostics
    e = diagnostics.ensemble(["runs/a", "runs/b", "runs/c"], split="val")
    e.phi                       # members x members
    e.reading()                 # "combining helps; errors weakly correlated (mean phi 0.21): ..."
    e.majority_accuracy, e.probability_accuracy, e.oracle_accuracy
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from diagnostics.compare import MAX_LABEL_MISMATCH_SHARE, no_evaluation_error
from diagnostics.errors import class_name
from diagnostics.exceptions import ComparisonError
from diagnostics.store import Run, open_run

# Reading the mean pairwise phi. |phi| below 0.3 is the usual "weak" association of two binary
# variables, above 0.6 "strong"; Kuncheva & Whitaker (2003, Machine Learning 51) find that
# ensembles gain most from members whose errors correlate least.
WEAK_PHI, STRONG_PHI = 0.3, 0.6
# A member at least this far below the best member's accuracy (20 points) is read apart. Wrong
# almost everywhere the others are right, its wrong indicator is nearly constant next to
# theirs, so its phi with them sits near 0 whatever they do and would pull the mean phi down
# (a broken baseline at chance made three members read "weakly correlated" while the two
# working ones correlate at 0.61); and a vote counts it as much as the best member.
WEAK_GAP = 0.2
MIN_MEMBERS = 2
# A voter's confidence is the probability it gave its own prediction (the `confidence` column).
TIE_BREAK = "a tie goes to the tied class whose voters are the most confident in sum, then to the lowest class id"
_COLUMNS = ("step", "label", "prediction", "correct", "confidence", "residual", "probs")


@dataclass(frozen=True)
class Ensemble:
    """Several classification runs as one ensemble on the samples all of them evaluated.

    - `members`: the runs' folder names (as the sidebar names them), in the order given.
    - `accuracy`: member → accuracy on the shared samples.
    - `phi`: members × members, the phi coefficient (Pearson correlation) of the members'
      wrong indicators; NaN for a member right (or wrong) on every shared sample, with why
      in `phi_notes`. `mean_phi`: the mean over the pairs where it is defined.
    - `majority_accuracy`, `majority_ties` (samples whose vote was tied, broken as TIE_BREAK says).
    - `probability_accuracy`: the argmax of the members' mean class probabilities; None
      when a member recorded no probabilities, with why in `probability_note`.
    - `oracle_accuracy`: share of samples at least one member gets right.
    - `correct`: one row per shared sample (sample_id, label, one bool column per member,
      majority, majority_correct, n_right).
    - `only_one_right`: samples exactly one member gets right: sample_id, label, member,
      confidence (that member's probability of its prediction, the label).
    - `class_names`: the first member's (None when it recorded none).
    - `weak_members()`: members at least WEAK_GAP below the best; `phi_without_weak()`: the
      mean phi of the others, which `reading()` explains with (a member wrong almost
      everywhere has a phi near 0 with anyone, and would drag `mean_phi` down).
    - `warnings`: what makes the ensemble less than like for like, in full sentences.
    """

    members: tuple[str, ...]
    paths: tuple[str, ...]
    split: str
    shared: int
    accuracy: dict[str, float]
    phi: pd.DataFrame
    phi_notes: tuple[str, ...]
    mean_phi: float
    majority_accuracy: float
    majority_ties: int
    probability_accuracy: float | None
    probability_note: str
    oracle_accuracy: float
    correct: pd.DataFrame
    only_one_right: pd.DataFrame
    class_names: tuple[str, ...] | None = None
    warnings: tuple[str, ...] = ()

    @property
    def best_member(self) -> tuple[str, float]:
        """The most accurate member (the first given among equals) and its accuracy."""
        name = max(self.members, key=lambda m: self.accuracy[m])
        return name, self.accuracy[name]

    def combined(self) -> dict[str, float | None]:
        """Accuracy of each way of combining the members: majority vote, probability average
        (None when it cannot be computed) and oracle."""
        return {"majority vote": self.majority_accuracy, "probability average": self.probability_accuracy,
                "oracle": self.oracle_accuracy}

    def gain(self) -> dict[str, float | None]:
        """`combined()` minus the best member's accuracy (a fraction: 0.02 is two points)."""
        best = self.best_member[1]
        return {way: None if value is None else value - best for way, value in self.combined().items()}

    def best_combination(self) -> tuple[str, float]:
        """The better of majority vote and probability average (the vote among equals) and its accuracy."""
        ways = {w: v for w, v in self.combined().items() if w != "oracle" and v is not None}
        way = max(ways, key=ways.get)
        return way, ways[way]

    def weak_members(self) -> tuple[str, ...]:
        """Members at least WEAK_GAP (20 points) below the best member's accuracy, in member order."""
        best = self.best_member[1]
        return tuple(m for m in self.members if best - self.accuracy[m] >= WEAK_GAP - 1e-9)

    def phi_without_weak(self) -> float:
        """Mean phi over the pairs of members that are not weak (NaN when fewer than two remain,
        or no pair's phi is defined): the correlation `reading()` explains with."""
        rest = [m for m in self.members if m not in self.weak_members()]
        return _mean_phi(self.phi.loc[rest, rest].to_numpy())

    def reading(self) -> str:
        """One sentence: what combining achieves, measured (the better of majority vote and
        probability average against the best member; no vote can beat it when the oracle does
        not), then why: the members far below the best (`weak_members`), and how the errors of
        the others correlate (`phi_without_weak`).

            "combining only matches the best member; base (11.1%) is far below the best member
            (91.9%): it can drag the vote down, consider dropping it; among the others, errors
            strongly correlated (phi 0.61): they fail on largely the same samples"
        """
        best_accuracy = self.best_member[1]
        accuracy = self.best_combination()[1]
        if accuracy > best_accuracy:
            verdict = "combining helps"
        elif self.oracle_accuracy <= best_accuracy:
            verdict = ("no vote can beat the best member: every sample some member gets right, it gets right "
                       "too")
        else:
            verdict = ("combining only matches the best member" if accuracy == best_accuracy else
                       "combining falls short of the best member")
        return "; ".join([verdict, *self._why()])

    def _why(self) -> list[str]:
        weak = self.weak_members()
        parts = []
        if weak:
            one = len(weak) == 1
            parts.append(f"{', '.join(f'{m} ({self.accuracy[m]:.1%})' for m in weak)} {'is' if one else 'are'} "
                         f"far below the best member ({self.best_member[1]:.1%}): {'it' if one else 'they'} can "
                         f"drag the vote down, consider dropping {'it' if one else 'them'}")
        rest = len(self.members) - len(weak)
        if rest < 2:
            return parts
        phi, among = self.phi_without_weak(), "among the others, " if weak else ""
        what = "phi" if rest == 2 else "mean phi"
        if not math.isfinite(phi):
            parts.append(f"{among}error correlation undefined (a member right or wrong on every shared sample)")
        elif phi < WEAK_PHI:
            parts.append(f"{among}errors weakly correlated ({what} {phi:.2f}): they fail on different samples")
        elif phi < STRONG_PHI:
            parts.append(f"{among}errors moderately correlated ({what} {phi:.2f}): they share part of their "
                         "failures")
        else:
            parts.append(f"{among}errors strongly correlated ({what} {phi:.2f}): they fail on largely the same "
                         "samples")
        return parts

    def outcome(self) -> str:
        """One sentence on what combining did here, measured: the better of majority vote and
        probability average against the best member, and the oracle (the ceiling)."""
        best, best_accuracy = self.best_member
        way, accuracy = self.best_combination()
        points = 100 * (accuracy - best_accuracy)
        verb = "beats" if points > 0 else "matches" if points == 0 else "falls short of"
        by = "" if points == 0 else f", by {abs(points):.1f} points"
        return (f"measured: the {way} ({accuracy:.1%}) {verb} the best member, {best} ({best_accuracy:.1%})"
                f"{by}; any member right (the oracle): {self.oracle_accuracy:.1%}")

    def only_one_right_named(self, class_names: Sequence[str] | None = None) -> pd.DataFrame:
        """`only_one_right` with class names for the labels, as a page lists it."""
        return self.only_one_right.assign(label=self.only_one_right["label"].map(lambda v: class_name(class_names, v)))

    def to_dict(self, limit: int | None = None) -> dict[str, Any]:
        """JSON-ready: every number, the phi matrix (rows by member; null where undefined), the
        reading, the warnings and the first `limit` only-one-right samples (all with None)."""
        rows = self.only_one_right if limit is None else self.only_one_right.head(int(limit))
        return {
            "members": list(self.members), "paths": list(self.paths), "split": self.split, "shared": self.shared,
            "accuracy": {m: _finite(a) for m, a in self.accuracy.items()},
            "best_member": self.best_member[0],
            "phi": json.loads(self.phi.to_json(orient="index")), "phi_notes": list(self.phi_notes),
            "mean_phi": _finite(self.mean_phi), "weak_members": list(self.weak_members()),
            "phi_without_weak": _finite(self.phi_without_weak()), "reading": self.reading(), "outcome": self.outcome(),
            "majority_accuracy": _finite(self.majority_accuracy), "majority_ties": self.majority_ties,
            "tie_break": TIE_BREAK, "probability_accuracy": _finite(self.probability_accuracy),
            "probability_note": self.probability_note, "oracle_accuracy": _finite(self.oracle_accuracy),
            "only_one_right_count": len(self.only_one_right),
            "only_one_right_by_member": {m: int((self.only_one_right["member"] == m).sum()) for m in self.members},
            "only_one_right": json.loads(rows.to_json(orient="records")),
            "class_names": None if self.class_names is None else list(self.class_names),
            "warnings": list(self.warnings),
        }


def ensemble(runs: Sequence[Run | str | os.PathLike], split: str = "val") -> Ensemble:
    """The runs as one ensemble on the latest evaluation of `split` in each.

    Samples are joined on `sample_id`; ids not every member evaluated are counted (and warned
    about), never scored. Each member is scored against its own label; the votes against the
    first member's. Majority vote: each member votes its prediction; TIE_BREAK says how ties go.
    Probability averaging: the argmax of the members' mean probability vectors.

    Raises ComparisonError when fewer than two runs are given (or one twice), a run has no
    evaluation of `split` or is a regression run, the runs share no sample id, or more than
    MAX_LABEL_MISMATCH_SHARE of the shared ids carry labels other than the first member's.

        e = ensemble(["runs/a", "runs/b"])
        e.accuracy, e.majority_accuracy, e.oracle_accuracy
    """
    opened = [r if isinstance(r, Run) else open_run(r) for r in runs]
    if len(opened) < MIN_MEMBERS:
        raise ComparisonError(f"an ensemble needs at least {MIN_MEMBERS} runs, got {len(opened)} — pass two or more "
                              "classification runs evaluated on the same samples")
    paths = [str(r.path.resolve()) for r in opened]
    if len(set(paths)) < len(paths):
        twice = next(p for p in paths if paths.count(p) > 1)
        raise ComparisonError(f"run {Path(twice).name} is given more than once — an ensemble's members are "
                              "different runs")
    names = _member_names(opened)
    notes: list[str] = []
    frames = [_member_frame(r, name, split, notes) for r, name in zip(opened, names)]
    shared = sorted(set.intersection(*(set(f.index) for f in frames)))
    if not shared:
        raise ComparisonError(f"runs {', '.join(names)} share no sample id on split {split!r} — they were "
                              "evaluated on different data; pass the same ids to run.evaluate in every run")
    if any(len(f) > len(shared) for f in frames):
        extra = ", ".join(f"{len(f) - len(shared)} of {name}'s {len(f)}" for f, name in zip(frames, names))
        notes.append(f"Different evaluation sets: {extra} samples are not in every member; every number here "
                     f"covers the {len(shared)} shared samples only.")
    frames = [f.loc[shared] for f in frames]
    _check_labels(frames, names, split, notes)
    for note in notes:
        warnings.warn(note, UserWarning, stacklevel=2)
    result = _combine(frames, tuple(names), tuple(str(r.path) for r in opened), split, tuple(notes))
    class_names = opened[0].manifest.get("class_names")
    return replace(result, class_names=tuple(str(c) for c in class_names) if class_names else None)


def _member_names(runs: list[Run]) -> list[str]:
    """Folder names; a folder name met twice (runs of different folders) gets its parent too."""
    folders = [r.path.name for r in runs]
    return [f"{r.path.parent.name}/{r.path.name}" if folders.count(r.path.name) > 1 else r.path.name for r in runs]


def _member_frame(run: Run, name: str, split: str, notes: list[str]) -> pd.DataFrame:
    """The latest evaluation of `split` by sample_id (first row of a repeated id), classification only."""
    frame = run.samples(split, columns=_COLUMNS)
    if frame.empty:
        raise no_evaluation_error(run, name, split, "pick another split")
    task = run.manifest.get("task")
    if task == "regression" or (task is None and frame["residual"].notna().any() and frame["correct"].isna().all()):
        raise ComparisonError(f"run {name} is a regression run — an ensemble view needs classification runs "
                              "(votes and right/wrong need classes); compare regression runs with diagnostics.compare")
    ids = frame["sample_id"].astype(str)
    if ids.duplicated().any():
        notes.append(f"Run {name} evaluated {int(ids.duplicated().sum())} sample id(s) more than once in one "
                     "evaluation (no ids passed to run.evaluate?); the first row of each is used.")
    return frame.assign(sample_id=ids)[~ids.duplicated().to_numpy()].set_index("sample_id")


def _check_labels(frames: list[pd.DataFrame], names: list[str], split: str, notes: list[str]) -> None:
    """Every member's labels against the first member's, as `compare` checks two runs."""
    first = frames[0]["label"].to_numpy(dtype=float)
    for frame, name in zip(frames[1:], names[1:]):
        other = frame["label"].to_numpy(dtype=float)
        differ = np.isfinite(first) & np.isfinite(other) & ~np.isclose(first, other, rtol=1e-6, atol=0.0)
        count = int(differ.sum())
        if count > MAX_LABEL_MISMATCH_SHARE * len(first):
            raise ComparisonError(
                f"runs {names[0]} and {name} share {len(first)} ids on split {split!r} but {count} carry different "
                "labels: they were evaluated on different data — ensemble runs evaluated on the same samples (the "
                "same ids and labels passed to run.evaluate)")
        if count:
            notes.append(f"{count} shared sample id(s) carry different labels in {names[0]} and {name} (e.g. "
                         f"{', '.join(frame.index[differ][:3])}): each member is scored against its own label, "
                         f"the votes against {names[0]}'s.")


def _right(frame: pd.DataFrame) -> np.ndarray:
    correct = frame["correct"].to_numpy(dtype=float)
    fallback = (frame["prediction"] == frame["label"]).to_numpy(dtype=float)
    return np.where(np.isfinite(correct), correct, fallback) > 0.5


def phi_matrix(wrong: np.ndarray) -> np.ndarray:
    """Phi of every pair of columns of a samples × members 0/1 matrix (Pearson correlation of
    binary variables); NaN where a column is constant. The diagonal is 1 where defined."""
    w = np.asarray(wrong, dtype=float)
    centered = w - w.mean(axis=0)
    cov = centered.T @ centered / max(len(w), 1)
    sd = np.sqrt(np.diag(cov))
    with np.errstate(divide="ignore", invalid="ignore"):
        phi = cov / np.outer(sd, sd)
    defined = np.outer(sd > 0, sd > 0)
    return np.where(defined, np.clip(phi, -1.0, 1.0), np.nan)


def majority_vote(predictions: np.ndarray, confidences: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The class most members predict per sample (samples × members integer predictions; a
    negative one abstains), ties broken as TIE_BREAK says; also which samples were tied."""
    preds = np.asarray(predictions, dtype=np.int64)
    conf = np.nan_to_num(np.asarray(confidences, dtype=float), nan=0.0)
    n, k = len(preds), max(int(preds.max(initial=0)) + 1, 1)
    votes, weight = np.zeros((n, k)), np.zeros((n, k))
    rows, cols = np.nonzero(preds >= 0)
    np.add.at(votes, (rows, preds[rows, cols]), 1.0)
    np.add.at(weight, (rows, preds[rows, cols]), conf[rows, cols])
    tied = votes == votes.max(axis=1, keepdims=True)
    winner = np.argmax(np.where(tied, weight, -np.inf), axis=1)  # argmax: the lowest id among equal sums
    return winner, tied.sum(axis=1) > 1


def _probability_average(frames: list[pd.DataFrame], names: tuple[str, ...]) -> tuple[np.ndarray | None, str]:
    """argmax of the members' mean probability vectors, or None and why not."""
    stacks = []
    for frame, name in zip(frames, names):
        probs = frame["probs"].tolist() if "probs" in frame else [None] * len(frame)
        missing = sum(not (hasattr(p, "__len__") and len(p) > 0) for p in probs)  # None, NA, []
        if missing:
            return None, (f"{name} recorded no class probabilities for {missing} of the {len(frame)} shared samples "
                          "(run.evaluate stores them for classification models that output logits)")
        stacks.append(np.stack([np.asarray(p, dtype=float) for p in probs]))
    widths = {s.shape[1] for s in stacks}
    if len(widths) > 1:
        return None, f"the members' probabilities cover different numbers of classes ({sorted(widths)})"
    return np.argmax(np.mean(stacks, axis=0), axis=1), ""


def _combine(frames: list[pd.DataFrame], names: tuple[str, ...], paths: tuple[str, ...], split: str,
             notes: tuple[str, ...]) -> Ensemble:
    right = np.column_stack([_right(f) for f in frames])
    label = frames[0]["label"].to_numpy(dtype=float)
    preds = np.column_stack([f["prediction"].to_numpy(dtype=float) for f in frames])
    preds = np.where(np.isfinite(preds), preds, -1).astype(np.int64)
    conf = np.column_stack([f["confidence"].to_numpy(dtype=float) for f in frames])
    phi = phi_matrix(~right)
    phi_notes = tuple(f"{name} is {'right' if right[:, i].all() else 'wrong'} on every shared sample: the "
                      "correlation of its errors with another member's is undefined (shown empty)"
                      for i, name in enumerate(names) if right[:, i].all() or not right[:, i].any())
    mean_phi = _mean_phi(phi)
    vote, tied = majority_vote(preds, conf)
    average, probability_note = _probability_average(frames, names)
    n_right = right.sum(axis=1)
    ids = frames[0].index.to_numpy()
    correct = pd.DataFrame({"sample_id": ids, "label": label, **{n: right[:, i] for i, n in enumerate(names)},
                            "majority": vote, "majority_correct": vote == label, "n_right": n_right})
    alone = np.flatnonzero(n_right == 1)
    who = right[alone].argmax(axis=1)
    only = pd.DataFrame({"sample_id": ids[alone], "label": label[alone], "member": np.asarray(names)[who],
                         "confidence": conf[alone, who]}, columns=["sample_id", "label", "member", "confidence"])
    only = only.assign(order=who).sort_values(["order", "confidence"], ascending=[True, False], kind="stable")
    return Ensemble(
        members=names, paths=paths, split=split, shared=len(ids),
        accuracy={n: float(right[:, i].mean()) for i, n in enumerate(names)},
        phi=pd.DataFrame(phi, index=list(names), columns=list(names)), phi_notes=phi_notes, mean_phi=mean_phi,
        majority_accuracy=float(np.mean(vote == label)), majority_ties=int(tied.sum()),
        probability_accuracy=None if average is None else float(np.mean(average == label)),
        probability_note=probability_note, oracle_accuracy=float(right.any(axis=1).mean()), correct=correct,
        only_one_right=only.drop(columns="order").reset_index(drop=True), warnings=notes)


def _mean_phi(phi: np.ndarray) -> float:
    """The mean over the pairs (upper triangle) where phi is defined; NaN where none is."""
    upper = phi[np.triu_indices(len(phi), k=1)]
    return float(np.mean(upper[np.isfinite(upper)])) if np.isfinite(upper).any() else math.nan


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)
