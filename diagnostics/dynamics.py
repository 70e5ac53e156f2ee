"""Training dynamics per sample: data maps, area under the margin, a label-error score.

Built from the per-sample records that `run.log_batch(..., ids=...)` writes on every step
(`schema.RECORDS_SCHEMA`), one row per sample and step. Two views of them:

- Dataset Cartography (Swayamdipta et al. 2020): `confidence`, the mean probability the
  model gives the sample's label, and `variability`, its standard deviation, place each
  sample on a data map with "easy", "ambiguous" and "hard-to-learn" regions
  (`data_map_regions`).
- Area under the margin (Pleiss et al. 2020): `aum`, the mean of the label's logit minus
  the largest other logit. A mislabeled sample keeps a negative margin because the other
  samples of its true class pull its logits away from the given label.

`label_error_score` ranks samples by how likely their label is wrong (higher = more
likely): the negated margin averaged with weights that grow linearly with the step,

    label_error_score = - Σ_t w_t · margin_t / Σ_t w_t,    w_t = step_t - first_step + 1

(first_step: the first recorded step of the sample's split). Why late-weighted: early in
training every margin is near zero (the model has not learned yet) and those records only
add noise to the plain AUM; later, clean samples sit at large positive margins while
flipped labels stay negative. Measured on digits with 10% of training labels flipped
(`benchmarks/label_noise.py`, 12 epochs), it ranks flipped labels above the plain mean
loss at every reading, above the plain AUM while the model learns (read after 4 or 8
epochs, as a live dashboard does), and level with the AUM at the end. Low variability,
the other mark of Cartography's hard-to-learn samples, does not enter the score: adding
its rank to those of low AUM and low confidence lowered precision in every setting tried
(0.98 to 0.71 after 40 epochs, where flipped labels start being fitted late and so gain
variability). That long-run
memorisation is also the score's weak spot: the late records then carry less signal,
and the plain AUM does better (figures in the benchmark's docstring). A positive score
means the given label lost to another class on (weighted) average; the unit is logits.

Regression records carry no margin or probability: for them the frame gives
`mean_abs_residual` (mean |prediction − label|), `abs_residual_std` (the standard
deviation of |residual|) and `residual_std` (the standard deviation of the signed
residual, which is that of the prediction: how much the model changes its answer), all
in the target's unit; it leaves `confidence`, `variability`, `correct_frac` and `aum`
NaN, and the score is the late-weighted mean |residual| (in the target's unit): a wrong
target stays far from the prediction after the model has fitted the rest. The regression
data map plots `mean_abs_residual` against `residual_std` (`residual_map_regions`): easy
= small and stable error, ambiguous = variable, hard-to-learn = large and stable.

Two checks frame what a data map page shows. `learning_check` says whether the model
learned beyond chance at all (mean late probability of the label and late accuracy near
the largest class share): if not, every sample sits where the untrained model puts it and
the regions and scores describe the model, not the labels. `suspicious` picks the
label-error shortlist: a positive score (regression: a score above the hard-to-learn
error threshold), of which a page shows the best-scored few.

Example::

    import diagnostics
    from diagnostics.dynamics import sample_dynamics, data_map_regions
    dyn = sample_dynamics(diagnostics.open_run("runs/exp1").records(split="train"))
    dyn.head(20)                          # most likely mislabeled first
    dyn["region"] = data_map_regions(dyn)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from diagnostics.errors import class_name
from diagnostics.paging import PAGE_SIZE, Page, id_matches, page_span

DYNAMICS_COLUMNS = (
    "sample_id", "split", "n_records", "label", "prediction", "confidence", "variability", "correct_frac",
    "aum", "mean_loss", "mean_abs_residual", "abs_residual_std", "residual_std", "label_error_score",
    "late_wrong_frac", "late_margin", "late_confidence", "late_correct_frac",
)
REGIONS = ("easy", "ambiguous", "hard-to-learn")

# "Late" records: those of the last third of a split's recorded steps (see `late_columns`).
LATE_FRACTION = 1 / 3

# Midpoints of the data map's axes: confidence lies in [0, 1]; variability, the standard
# deviation of a [0, 1]-valued series, in [0, 0.5].
CONFIDENCE_THRESHOLD = 0.5
VARIABILITY_THRESHOLD = 0.25

# "Near chance" (see `near_chance_bar`): below both twice the chance level and a fifth of
# the way from chance to 1 (the ratio alone would flag every binary run, the gap alone a
# 100-class run at 20%). The demo's digits baseline (softmax before CrossEntropyLoss):
# trained 3 epochs, late accuracy 17.4% against a bar of 21.6% (not learned); trained in
# full, 53% (learned) with a label probability of 0.154 against a bar of 0.2 (flat). Its
# learned runs (digits, OCT): label probabilities 0.68 to 0.97.
NEAR_CHANCE_RATIO = 2.0
NEAR_CHANCE_GAP = 0.2

# One verdict per training sample, shared by the data map's shortlist and Health's label_noise:
# still wrong in >= 80% of its late records, and either another class confidently ahead (median late
# margin below -2 logits: e² ≈ 7x as probable) — "suspected mislabeled" — or not — "hard". Calibrated
# with benchmarks/label_noise.py (digits, 10% flipped: 8.6-9.5% suspects, precision 0.97-1.00; the OCT
# simulator, no flipped labels: 0.9-1.3% suspects, 5-6% hard); Pleiss et al. 2020 (margins of flipped
# labels), Northcutt et al. 2021 (confident learning).
LATE_WRONG = 0.8
CONFIDENT_MARGIN = -2.0
SUSPECTED, HARD = "suspected mislabeled", "hard"

_KEYS = ["split", "sample_id"]


def sample_dynamics(records: pd.DataFrame) -> pd.DataFrame:
    """One row per (split, sample_id) with its training dynamics, most likely mislabeled first.

    `records` is the frame `Run.records()` returns (step, split, sample_id, label,
    confidence, margin, correct, loss, residual, ...). Columns: `DYNAMICS_COLUMNS`;
    `label` and `prediction` are the sample's most recent ones (a class index, or a value
    in the target's unit), standard deviations are population ones
    (ddof=0, as in Dataset Cartography), NaN records (ignored labels) count in `n_records`
    but not in the means. See the module docstring for the score; `late_columns` for the late ones.

    Example::

        dyn = sample_dynamics(run.records(split="train"))
        suspects = dyn[dyn.label_error_score > 0]
    """
    if records is None or len(records) == 0:
        return _empty()
    rec = pd.DataFrame({
        "split": records["split"].astype(str).to_numpy(),
        "sample_id": records["sample_id"].astype(str).to_numpy(),
        "step": records["step"].to_numpy(np.int64),
        "label": records["label"].to_numpy(np.float64),
        "prediction": records["prediction"].to_numpy(np.float64) if "prediction" in records else np.nan,
        "confidence": records["confidence"].to_numpy(np.float64),
        "margin": records["margin"].to_numpy(np.float64),
        "correct": records["correct"].to_numpy(np.float64),
        "loss": records["loss"].to_numpy(np.float64),
        "residual": records["residual"].to_numpy(np.float64),
    }).assign(abs_residual=lambda f: f["residual"].abs()).sort_values([*_KEYS, "step"], kind="stable")
    weight = (rec["step"] - rec.groupby("split")["step"].transform("min") + 1).astype(np.float64)
    rec["w_margin"] = weight.where(rec["margin"].notna())
    rec["wx_margin"] = rec["w_margin"] * rec["margin"]
    rec["w_residual"] = weight.where(rec["abs_residual"].notna())
    rec["wx_residual"] = rec["w_residual"] * rec["abs_residual"]

    g = rec.groupby(_KEYS, sort=False)
    sums = g[["w_margin", "wx_margin", "w_residual", "wx_residual"]].sum(min_count=1)
    out = pd.DataFrame({
        "n_records": g.size(),
        "label": g["label"].last(),
        "prediction": g["prediction"].last(),
        "confidence": g["confidence"].mean(),
        "variability": g["confidence"].std(ddof=0),
        "correct_frac": g["correct"].mean(),
        "aum": g["margin"].mean(),
        "mean_loss": g["loss"].mean(),
        "mean_abs_residual": g["abs_residual"].mean(),
        "abs_residual_std": g["abs_residual"].std(ddof=0),
        "residual_std": g["residual"].std(ddof=0),
    })
    late_margin = sums["wx_margin"] / sums["w_margin"]
    late_residual = sums["wx_residual"] / sums["w_residual"]
    classification = out["aum"].notna()
    out["label_error_score"] = np.where(classification, -late_margin, late_residual)
    out.loc[classification, ["mean_abs_residual", "abs_residual_std", "residual_std"]] = np.nan
    out = out.join(late_columns(rec))
    out = out.reset_index().sort_values(["label_error_score", *_KEYS], ascending=[False, True, True],
                                        na_position="last", kind="stable")
    out["n_records"] = out["n_records"].astype(np.int64)
    return out[list(DYNAMICS_COLUMNS)].reset_index(drop=True)


def late_columns(rec: pd.DataFrame) -> pd.DataFrame:
    """`late_wrong_frac` (share of the sample's late records whose margin is negative: the
    given label lost), `late_margin` (their median margin, in logits), `late_confidence`
    (their mean probability of the label) and `late_correct_frac` (the share predicted
    right), indexed by (split, sample_id). Late: the last `LATE_FRACTION` of the split's
    recorded step range. The first two tell a mislabeled sample (wrong to the end, another
    class confidently ahead: a very negative late margin) from a hard one (learned late,
    then right; or still wrong but with the classes close); the last two, averaged over the
    samples, whether the model learned at all (`learning_check`). NaN for samples without
    late margins (regression)."""
    names = ["late_wrong_frac", "late_margin", "late_confidence", "late_correct_frac"]
    rec = rec[rec["margin"].notna()]
    if rec.empty:
        return pd.DataFrame(columns=names, dtype=np.float64,
                            index=pd.MultiIndex.from_arrays([[], []], names=_KEYS))
    lo = rec.groupby("split")["step"].transform("min")
    hi = rec.groupby("split")["step"].transform("max")
    late = rec[rec["step"] >= hi - (hi - lo) * LATE_FRACTION]
    g = late.assign(wrong=(late["margin"] < 0).astype(np.float64)).groupby(_KEYS, sort=False)
    return pd.DataFrame({"late_wrong_frac": g["wrong"].mean(), "late_margin": g["margin"].median(),
                         "late_confidence": g["confidence"].mean(), "late_correct_frac": g["correct"].mean()})


def share_thresholds(dynamics: pd.DataFrame) -> tuple[float, float]:
    """(confidence_threshold, variability_threshold) that split the map by shares, as
    Swayamdipta et al. 2020 do: the most variable third is ambiguous; of the rest, the
    least confident third is hard-to-learn (so about 2/9 of all samples)."""
    var = dynamics["variability"].dropna()
    variability = float(var.quantile(2 / 3)) if len(var) else VARIABILITY_THRESHOLD
    rest = dynamics.loc[dynamics["variability"] < variability, "confidence"].dropna()
    confidence = float(rest.quantile(1 / 3)) if len(rest) else CONFIDENCE_THRESHOLD
    return confidence, variability


def data_map_regions(dynamics: pd.DataFrame, confidence_threshold: float = CONFIDENCE_THRESHOLD,
                     variability_threshold: float = VARIABILITY_THRESHOLD) -> pd.Series:
    """The Dataset Cartography region of each sample: a categorical Series named "region",
    aligned with `dynamics`.

    - "ambiguous": variability >= `variability_threshold` (the model changes its mind);
    - "hard-to-learn": lower variability and confidence < `confidence_threshold`
      (consistently given a low probability: where mislabeled samples gather);
    - "easy": lower variability and confidence >= `confidence_threshold`.

    Defaults are the midpoints of the map's axes (confidence 0.5, variability 0.25). The
    paper selects by share instead (the top third by variability, then the bottom third
    by confidence of the rest): `data_map_regions(dyn, *share_thresholds(dyn))`. Records of the first epochs
    of a model trained from scratch raise every sample's variability (everything starts
    near chance), so a short run puts many clean samples in "ambiguous". Samples without a
    confidence (regression) get NaN.

    Example::

        dyn = sample_dynamics(run.records(split="train"))
        dyn["region"] = data_map_regions(dyn)
        dyn["region"].value_counts()
    """
    conf = dynamics["confidence"].to_numpy(np.float64) if len(dynamics) else np.empty(0)
    var = dynamics["variability"].to_numpy(np.float64) if len(dynamics) else np.empty(0)
    region = np.where(var >= variability_threshold, "ambiguous",
                      np.where(conf < confidence_threshold, "hard-to-learn", "easy")).astype(object)
    region[np.isnan(conf) | np.isnan(var)] = None
    return pd.Series(pd.Categorical(region, categories=list(REGIONS)), index=dynamics.index, name="region")


def residual_share_thresholds(dynamics: pd.DataFrame) -> tuple[float, float]:
    """(error_threshold, variability_threshold) that split a regression map by shares, as
    `share_thresholds` does for classification: the third of samples whose residual varies
    most over training is ambiguous; of the rest, the third with the largest mean
    |residual| is hard-to-learn. Both thresholds are in the target's unit."""
    var = dynamics["residual_std"].dropna()
    variability = float(var.quantile(2 / 3)) if len(var) else float("inf")
    rest = dynamics.loc[dynamics["residual_std"] < variability, "mean_abs_residual"].dropna()
    error = float(rest.quantile(2 / 3)) if len(rest) else float("inf")
    return error, variability


def residual_map_regions(dynamics: pd.DataFrame, error_threshold: float, variability_threshold: float) -> pd.Series:
    """The data-map region of each regression sample (categorical "region", aligned with
    `dynamics`), from `mean_abs_residual` and `residual_std`, both in the target's unit:

    - "ambiguous": residual_std >= `variability_threshold` (the prediction keeps moving);
    - "hard-to-learn": a stabler residual and mean |residual| > `error_threshold` (the
      model settles far from the target: where wrong targets and hard inputs gather);
    - "easy": a stabler residual and mean |residual| <= `error_threshold`.

    Samples without residuals (classification) get NaN.

    Example::

        dyn = run.sample_dynamics("train")
        dyn["region"] = residual_map_regions(dyn, *residual_share_thresholds(dyn))
    """
    err = dynamics["mean_abs_residual"].to_numpy(np.float64) if len(dynamics) else np.empty(0)
    var = dynamics["residual_std"].to_numpy(np.float64) if len(dynamics) else np.empty(0)
    region = np.where(var >= variability_threshold, "ambiguous",
                      np.where(err > error_threshold, "hard-to-learn", "easy")).astype(object)
    region[np.isnan(err) | np.isnan(var)] = None
    return pd.Series(pd.Categorical(region, categories=list(REGIONS)), index=dynamics.index, name="region")


@dataclass(frozen=True)
class DataMap:
    """What a data map page shows of `sample_dynamics`: whether it is a regression map, each
    sample's region, the thresholds used (classification: confidence, variability;
    regression: error, variability), the region counts and the median records per sample."""

    regression: bool
    regions: pd.Series
    thresholds: tuple[float, float]
    counts: dict[str, int]
    median_records: int


def data_map(dynamics: pd.DataFrame, task: str | None = None) -> DataMap:
    """Regions by shares, as Swayamdipta et al. 2020 split theirs (midpoint thresholds put
    nearly all of a short run from scratch in "ambiguous"): `share_thresholds` for
    classification, `residual_share_thresholds` for regression, which `task` names or, when
    the manifest does not say, the dynamics show (residuals without confidences).

        m = data_map(run.sample_dynamics("train"), run.manifest.get("task"))
        m.counts["hard-to-learn"]
    """
    regression = task == "regression" or (len(dynamics) > 0 and bool(
        dynamics["confidence"].isna().all() and dynamics["mean_abs_residual"].notna().any()))
    if regression:
        cut = residual_share_thresholds(dynamics)
        regions = residual_map_regions(dynamics, *cut)
    else:
        cut = share_thresholds(dynamics)
        regions = data_map_regions(dynamics, *cut)
    counts = regions.value_counts()
    median = dynamics["n_records"].median() if len(dynamics) else 0
    return DataMap(regression, regions, cut, {r: int(counts.get(r, 0)) for r in REGIONS},
                   int(median) if median == median else 0)


def near_chance_bar(chance: float) -> float:
    """The value below which a score counts as near `chance`: min(`NEAR_CHANCE_RATIO` ×
    chance, chance + `NEAR_CHANCE_GAP` × (1 − chance)) (0.216 for ten balanced classes, 0.6
    for two)."""
    return min(NEAR_CHANCE_RATIO * chance, chance + NEAR_CHANCE_GAP * (1 - chance))


@dataclass(frozen=True)
class LearningCheck:
    """Whether a classification run learned, from its late records (`learning_check`).

    accuracy and its chance level `chance` (the largest class share: always answering the
    commonest class) and `bar` (`near_chance_bar`); label_probability and its chance level
    `prior_probability` (Σ p_k² over the class shares: what a model answering the class
    prior gives the label on average, 1/K for K balanced classes) and `probability_bar`.
    `learned`: the accuracy is above its bar (a model that ignores its inputs never is).
    `flat`: learned, but with three classes or more the label probability stays near its
    chance level (softmax applied twice, say): the map's confidence axis is squeezed."""

    label_probability: float
    accuracy: float
    chance: float
    bar: float
    prior_probability: float
    probability_bar: float
    num_classes: int

    @property
    def learned(self) -> bool:
        return self.accuracy >= self.bar

    @property
    def flat(self) -> bool:
        return self.learned and self.num_classes >= 3 and self.label_probability < self.probability_bar

    def summary(self) -> str:
        """What a page says when the run has not learned, or learned with flat probabilities (Markdown)."""
        accuracy = (f"the share of its late predictions that were right, averaged over the training samples, is "
                    f"{self.accuracy:.1%} against {self.chance:.1%} by always answering the commonest class "
                    f"(near chance: below {self.bar:.1%})")
        probability = (f"it gave the label a mean probability of {self.label_probability:.3f} against "
                       f"{self.prior_probability:.3f} by answering the class prior (1/{self.num_classes} = "
                       f"{1 / self.num_classes:.3f} for balanced classes; near chance: below "
                       f"{self.probability_bar:.3f})")
        if not self.learned:
            return (f"**The model has not learned.** Over the last third of training {accuracy}; {probability}. "
                    "The map's regions therefore describe the model, not the data, and no sample is listed as a "
                    "label error. Fix the training first: the Health page says what went wrong.")
        return (f"**The model's probabilities stay nearly flat.** Over the last third of training {probability}, "
                f"though {accuracy}: it ranks labels but its outputs stay close to uniform (softmax applied before "
                "the loss? too much label smoothing?), which squeezes the map's confidence axis.")


def learning_check(dynamics: pd.DataFrame, num_classes: int | None = None) -> LearningCheck | None:
    """Has the model learned beyond chance? Judged on the late records (the last
    `LATE_FRACTION` of the recorded steps, `late_correct_frac` and `late_confidence`
    averaged over samples): the accuracy against always answering the commonest class, the
    label probability against answering the class prior (see LearningCheck). A run whose
    accuracy stays near chance places every sample by the model's state, not the data: its
    data map regions and label-error ranking say nothing about the labels. None without
    late classification records or with one class.

        check = learning_check(run.sample_dynamics("train"), run.manifest.get("num_classes"))
        check.learned, check.accuracy, check.chance     # False, 0.174, 0.108
    """
    late = dynamics.dropna(subset=["late_confidence", "late_correct_frac", "label"]) if len(dynamics) else dynamics
    classes = max(int(num_classes or 0), late["label"].nunique()) if len(late) else 0
    if classes < 2:
        return None
    shares = late["label"].value_counts(normalize=True)
    chance, prior = float(shares.max()), float((shares ** 2).sum())
    return LearningCheck(float(late["late_confidence"].mean()), float(late["late_correct_frac"].mean()), chance,
                         near_chance_bar(chance), prior, near_chance_bar(prior), classes)


# A regression model "has learned" when its late error is well below a constant's: within 10% of
# what predicting the mean gives (mean |y - mean(y)|), its residuals are the targets' own spread.
REGRESSION_LEARNED = 0.9


@dataclass(frozen=True)
class RegressionCheck:
    """Whether a regression run learned (`regression_check`): `error`, the late-weighted mean
    |residual| averaged over the training samples, against `baseline`, mean |y − mean(y)| (a model
    answering the targets' mean). `learned`: error below REGRESSION_LEARNED × baseline."""

    error: float
    baseline: float

    @property
    def learned(self) -> bool:
        return self.error < REGRESSION_LEARNED * self.baseline

    flat = False  # (the classification check's second verdict; no regression counterpart)

    def summary(self) -> str:
        """What a page says when the run has not learned (Markdown)."""
        return (f"**The model has not learned.** Over the last third of training its mean |residual| is "
                f"{self.error:.3g}, against {self.baseline:.3g} by always answering the targets' mean (learned: "
                f"below {REGRESSION_LEARNED:.0%} of it). The samples with the largest error are then the extremes "
                "of the target range, whatever their targets' quality: no sample is listed as a target error. "
                "Fix the training first: the Health page says what went wrong.")


def regression_check(dynamics: pd.DataFrame) -> RegressionCheck | None:
    """Has a regression model learned beyond predicting the mean? From the late-weighted mean
    |residual| (`label_error_score`) and the targets; None without them.

        regression_check(run.sample_dynamics("train")).learned   # False: outputs collapsed to the mean
    """
    if not len(dynamics) or "label_error_score" not in dynamics:
        return None
    known = dynamics.dropna(subset=["label_error_score", "label"])
    if len(known) < 2:
        return None
    y = known["label"].to_numpy(float)
    return RegressionCheck(float(known["label_error_score"].mean()), float(np.mean(np.abs(y - y.mean()))))


def label_verdict(dynamics: pd.DataFrame) -> pd.Series:
    """Each classification sample's verdict: SUSPECTED ("suspected mislabeled"), HARD, or ""
    (neither), from its late records (see LATE_WRONG, CONFIDENT_MARGIN)."""
    if not len(dynamics) or not {"late_wrong_frac", "late_margin"} <= set(dynamics.columns):
        return pd.Series("", dtype=object, index=dynamics.index, name="verdict")  # no late records: no verdict
    late_wrong = dynamics["late_wrong_frac"].to_numpy(float) >= LATE_WRONG
    confident = dynamics["late_margin"].to_numpy(float) < CONFIDENT_MARGIN
    verdict = np.where(late_wrong & confident, SUSPECTED, np.where(late_wrong, HARD, ""))
    return pd.Series(verdict, index=dynamics.index, name="verdict")


def suspicious(dynamics: pd.DataFrame, data_map: DataMap) -> pd.Series:
    """Which samples the label-error shortlist holds (boolean, aligned with `dynamics`):
    classification, those whose `label_verdict` is "suspected mislabeled" (as Health's
    label_noise counts them); regression, a score (the late-weighted mean |residual|) above
    the map's hard-to-learn error threshold.

        d[suspicious(d, data_map(d))].head(50)
    """
    if not data_map.regression:
        return (label_verdict(dynamics) == SUSPECTED).rename("suspicious")
    return (dynamics["label_error_score"] > data_map.thresholds[0]).rename("suspicious")


def label_error_suspects(dynamics: pd.DataFrame, data_map: DataMap, class_names: Sequence[str] | None = None,
                         limit: int = 100, suspicious_only: bool = False) -> pd.DataFrame:
    """The `limit` samples most likely mislabeled (highest `label_error_score` first), as a
    review lists them: sample_id, label, prediction (class names for classification), score,
    then confidence, variability, aum and correct (the share of records predicted right), or
    mean_abs_residual and residual_std (regression), and region. `suspicious_only`: only
    those `suspicious` flags (the shortlist)."""
    return _suspect_rows(dynamics.iloc[_ranked(dynamics, data_map, suspicious_only)[:limit]], data_map, class_names)


def suspects_page(dynamics: pd.DataFrame, data_map: DataMap, class_names: Sequence[str] | None = None,
                  page: int = 1, page_size: int = PAGE_SIZE, id_contains: str | None = None,
                  suspicious_only: bool = False, limit: int | None = None) -> Page:
    """One page of the samples ordered as `label_error_suspects` orders them (highest score
    first): every sample, or with `suspicious_only` those `suspicious` flags, cut to the
    `limit` best-scored when given (the shortlist), then an optional case-insensitive search
    in the sample ids; only the page's rows are formatted, so 100,000 training samples cost
    one page.

        suspects_page(d, found, page=2, page_size=100).label    # "rows 101–200 of 100,000"
        suspects_page(d, found, suspicious_only=True, limit=50)  # the 50 best-scored suspects
    """
    order = _ranked(dynamics, data_map, suspicious_only)[:limit]
    order = order[id_matches(dynamics["sample_id"].iloc[order], id_contains)]
    page, start, stop = page_span(len(order), page, page_size)
    rows = _suspect_rows(dynamics.iloc[order[start:stop]], data_map, class_names)
    return Page(rows.reset_index(drop=True), len(order), page, int(page_size))


def _ranked(dynamics: pd.DataFrame, data_map: DataMap, suspicious_only: bool) -> np.ndarray:
    """Row positions by `label_error_score`, highest first (ties in frame order, NaN last),
    only the `suspicious` ones with `suspicious_only`."""
    score = pd.Series(dynamics["label_error_score"].to_numpy(dtype=float))
    order = score.sort_values(ascending=False, kind="stable", na_position="last").index.to_numpy()
    if suspicious_only:
        order = order[suspicious(dynamics, data_map).to_numpy(dtype=bool)[order]]
    return order


def _suspect_rows(top: pd.DataFrame, data_map: DataMap, class_names: Sequence[str] | None) -> pd.DataFrame:
    name = (lambda v: v) if data_map.regression else (lambda v: class_name(class_names, v))  # noqa: E731
    table = top[["sample_id"]].assign(label=top["label"].map(name), prediction=top["prediction"].map(name),
                                      score=top["label_error_score"])
    if data_map.regression:
        table = table.assign(mean_abs_residual=top["mean_abs_residual"], residual_std=top["residual_std"])
    else:
        table = table.assign(verdict=label_verdict(top), confidence=top["confidence"],
                             variability=top["variability"], aum=top["aum"], correct=top["correct_frac"])
    return table.assign(region=data_map.regions.loc[top.index])


def _empty() -> pd.DataFrame:
    dtypes = {"sample_id": object, "split": object, "n_records": np.int64}
    return pd.DataFrame({c: pd.Series(dtype=dtypes.get(c, np.float64)) for c in DYNAMICS_COLUMNS})
