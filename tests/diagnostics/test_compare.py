"""Run comparison: the error diff against hand counts on hand-built runs, McNemar against
scipy, the regression case, and every error a user can meet."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from scipy.stats import binomtest

import diagnostics
from diagnostics import schema
from diagnostics.compare import MAX_LABEL_MISMATCH_SHARE, comparable_runs, compare, config_diff, mcnemar_p, same_data
from diagnostics.schema import dataset_key
from diagnostics.store import RunWriter

NAMES = ["cat", "dog", "eel"]
# Twelve samples, four per class. Hand count of (A right?, B right?):
#   s0 ✓✓  s1 ✓✗  s2 ✗✓  s3 ✗✓ | s4 ✓✓  s5 ✓✓  s6 ✗✓  s7 ✓✗ | s8 ✓✓  s9 ✗✓  s10 ✗✗  s11 ✓✓
# fixed s2 s3 s6 s9 = 4, broken s1 s7 = 2, still wrong s10 = 1, still right 5.
LABELS = [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
PRED_A = [0, 0, 1, 2, 1, 1, 0, 1, 2, 0, 0, 2]
PRED_B = [0, 1, 0, 0, 1, 1, 1, 0, 2, 2, 0, 2]
LOSS_A = [0.1, 0.2, 2.0, 1.5, 0.1, 0.3, 1.0, 0.2, 0.1, 3.0, 2.5, 0.4]
LOSS_B = [0.1, 1.8, 0.3, 0.5, 0.1, 0.2, 0.4, 2.2, 0.1, 0.2, 2.0, 0.3]


def write_run(folder, name: str, labels, predictions, losses, ids=None, task="classification", split="val",
              step=10, config=None, class_names=None, residuals=None, scalars=(), extra_splits=(), keyed=True):
    """A run directory with one evaluation of `split`, written with the project's writer; with
    `keyed`, each evaluation carries its dataset key as run.evaluate writes it (older runs lack it)."""
    ids = [f"s{i}" for i in range(len(labels))] if ids is None else ids
    n = len(ids)
    label, pred = np.asarray(labels, float), np.asarray(predictions, float)
    classification = task == "classification"
    resid = np.asarray(residuals, float) if residuals is not None else (pred - label if not classification
                                                                         else np.full(n, np.nan))
    writer = RunWriter(folder / name, {"name": name, "task": task, "config": config or {},
                                       "class_names": class_names, "model_class": "Net"}, flush_every_s=3600)
    evaluations = []
    for s in (split, *extra_splits):
        cols = {"step": np.full(n, step), "split": [s] * n, "sample_id": ids, "rank": np.zeros(n, np.int32),
                "label": label, "prediction": pred, "loss": np.asarray(losses, float),
                "confidence": np.full(n, 0.8) if classification else np.full(n, np.nan),
                "label_prob": np.full(n, np.nan), "margin": np.full(n, np.nan),
                "correct": (label == pred).astype(float) if classification else np.full(n, np.nan),
                "residual": resid, "probs": [None] * n, "embedding": [None] * n}
        writer.add_table("samples", pa.table({k: pa.array(v, schema.SAMPLES_SCHEMA.field(k).type)
                                              for k, v in cols.items()}, schema=schema.SAMPLES_SCHEMA))
        evaluations.append({"split": s, "step": step, "n": n,
                            **({"dataset": dataset_key(s, ids, label)} if keyed else {})})
    for scalar_step, scalar_name, value in scalars:
        writer.add_scalar(scalar_step, scalar_name, value)
    writer.update_manifest(evaluations=evaluations)
    writer.close()
    return folder / name


@pytest.fixture()
def pair(tmp_path):
    a = write_run(tmp_path, "base", LABELS, PRED_A, LOSS_A, class_names=NAMES,
                  config={"lr": 0.1, "epochs": 5, "aug": {"flip": True}},
                  scalars=[(s, "loss", 1.0 - 0.05 * s) for s in range(10)] + [(10, "val/accuracy", 7 / 12)])
    b = write_run(tmp_path, "better", LABELS, PRED_B, LOSS_B, class_names=NAMES,
                  config={"lr": 0.05, "epochs": 5, "aug": {"flip": False}, "wd": 1e-4},
                  scalars=[(s, "loss", 0.9 - 0.05 * s) for s in range(10)] + [(10, "val/accuracy", 9 / 12),
                                                                            (10, "val/loss", 0.6)])
    return a, b


def test_classification_diff_matches_hand_counts(pair):
    c = compare(*pair)
    assert (c.run_a, c.run_b, c.split, c.task) == ("base", "better", "val", "classification")
    by_id = c.samples.set_index("sample_id")["change"]
    assert sorted(by_id[by_id == "fixed"].index) == ["s2", "s3", "s6", "s9"]
    assert sorted(by_id[by_id == "broken"].index) == ["s1", "s7"]
    assert list(by_id[by_id == "still_wrong"].index) == ["s10"]
    s = c.summary
    assert (s["fixed"], s["broken"], s["still_wrong"], s["still_right"]) == (4, 2, 1, 5)
    assert (s["shared"], s["only_a"], s["only_b"], s["n_a"], s["n_b"]) == (12, 0, 0, 12, 12)
    assert s["accuracy_a"] == pytest.approx(7 / 12) and s["accuracy_b"] == pytest.approx(9 / 12)
    assert s["loss_a"] == pytest.approx(np.mean(LOSS_A)) and s["loss_b"] == pytest.approx(np.mean(LOSS_B))
    assert s["p_value"] == pytest.approx(binomtest(4, 6, 0.5).pvalue)
    assert c.warnings == ()
    row = c.samples.set_index("sample_id").loc["s1"]
    assert (row["label"], row["prediction_a"], row["prediction_b"]) == (0, 0, 1)
    assert row["loss_delta"] == pytest.approx(1.6)
    assert "could be chance" in c.verdict()


def test_per_class_table_matches_hand_counts(pair):
    t = compare(*pair).per_class
    assert list(t.columns) == ["class", "name", "support", "recall_a", "recall_b", "delta", "fixed", "broken"]
    assert t["name"].tolist() == NAMES and t["support"].tolist() == [4, 4, 4]
    np.testing.assert_allclose(t["recall_a"], [2 / 4, 3 / 4, 2 / 4])
    np.testing.assert_allclose(t["recall_b"], [3 / 4, 3 / 4, 3 / 4])
    np.testing.assert_allclose(t["delta"], [1 / 4, 0, 1 / 4])
    assert t["fixed"].tolist() == [2, 1, 1] and t["broken"].tolist() == [1, 1, 0]


def test_top_lists_the_largest_moves_first(pair):
    c = compare(*pair)
    fixed = c.top("fixed", limit=2)
    assert fixed["sample_id"].tolist() == ["s9", "s2"]  # loss fell by 2.8, then 1.7
    assert c.top("broken")["sample_id"].tolist() == ["s7", "s1"]  # rose by 2.0, then 1.6
    with pytest.raises(ValueError, match="pick one of"):
        c.top("improved")


def test_config_scalars_and_health_differences(tmp_path, pair):
    c = compare(*pair)
    config = c.config.set_index("key")
    assert set(config.index) == {"lr", "aug.flip", "wd"}  # epochs and model_class are equal
    assert config.loc["lr", ["value_a", "value_b", "change"]].tolist() == [0.1, 0.05, "changed"]
    assert config.loc["wd", "change"] == "only in B" and config.loc["wd", "value_a"] is None
    scalars = c.scalars.set_index("name")
    assert c.scalars["name"].tolist() == ["loss", "val/accuracy", "val/loss"]
    assert scalars.loc["loss", ["value_a", "value_b"]].tolist() == pytest.approx([0.55, 0.45])
    assert scalars.loc["loss", "step_a"] == 9
    assert scalars.loc["val/accuracy", "delta"] == pytest.approx(2 / 12)
    assert math.isnan(scalars.loc["val/loss", "value_a"])
    # a NaN loss in B only: the nonfinite finding shows as B's alone
    nan_run = write_run(tmp_path, "nan", LABELS, PRED_B, LOSS_B, scalars=[(3, "loss", float("nan"))])
    health = compare(pair[0], nan_run).health
    expected_a = {(f.rule, f.layer) for f in diagnostics.open_run(pair[0]).health()}
    expected_b = {(f.rule, f.layer) for f in diagnostics.open_run(nan_run).health()}
    got = {(r.rule, None if pd.isna(r.layer) else r.layer, r.only_in) for r in health.itertuples()}
    assert got == {(*k, "A") for k in expected_a - expected_b} | {(*k, "B") for k in expected_b - expected_a}
    assert ("nonfinite", None, "B") in got


def test_config_diff_of_nested_and_missing_entries():
    d = config_diff({"config": {"opt": {"lr": 1, "betas": [0.9, 0.99]}, "x": None}, "seed": 0},
                    {"config": {"opt": {"lr": 1, "betas": [0.9, 0.999]}}, "seed": 1})
    assert d[["key", "change", "source"]].values.tolist() == [["opt.betas", "changed", "config"],
                                                              ["x", "only in A", "config"],
                                                              ["seed", "changed", "run"]]


def test_compare_accepts_runs_or_paths_and_is_json_ready(pair):
    by_path = compare(str(pair[0]), pair[1])
    by_run = diagnostics.compare(diagnostics.open_run(pair[0]), diagnostics.open_run(pair[1]))
    pd.testing.assert_frame_equal(by_path.samples, by_run.samples)
    d = json.loads(json.dumps(by_run.to_dict(limit=None), allow_nan=False))
    assert d["summary"]["fixed"] == 4 and len(d["fixed"]) == 4 and len(d["broken"]) == 2
    assert {r["key"] for r in d["config"]} == {"lr", "aug.flip", "wd"}
    assert d["per_class"][0]["name"] == "cat" and d["scalars"][2]["value_a"] is None


def test_a_run_compared_with_itself_changes_nothing(recorded_runs):
    c = compare(recorded_runs / "review", recorded_runs / "review")
    assert c.summary["fixed"] == c.summary["broken"] == 0 and c.summary["p_value"] == 1.0
    assert c.summary["shared"] == 96 and c.summary["still_right"] + c.summary["still_wrong"] == 96
    assert c.config.empty and c.health.empty
    assert c.per_class["name"].tolist() == ["cat", "dog", "eel"]
    assert "right on the same samples" in c.verdict()


@pytest.mark.parametrize("fixed,broken", [(4, 2), (20, 5), (0, 7), (13, 13), (1, 30), (12, 11), (0, 1), (50, 21)])
def test_mcnemar_p_matches_scipy_binomtest(fixed, broken):
    assert mcnemar_p(fixed, broken) == pytest.approx(binomtest(fixed, fixed + broken, 0.5).pvalue, rel=1e-9)
    assert mcnemar_p(broken, fixed) == pytest.approx(mcnemar_p(fixed, broken))


def test_mcnemar_p_without_discordant_samples_is_one():
    assert mcnemar_p(0, 0) == 1.0


def test_a_significant_difference_is_called_so(tmp_path):
    n = 40
    labels = [0] * n
    a = write_run(tmp_path, "a", labels, [1] * 30 + [0] * 10, [1.0] * n)   # 10 right
    b = write_run(tmp_path, "b", labels, [0] * 28 + [1] * 2 + [0] * 10, [0.5] * n)  # 38 right
    c = compare(a, b)
    assert (c.summary["fixed"], c.summary["broken"]) == (28, 0)
    assert c.summary["p_value"] == pytest.approx(binomtest(28, 28, 0.5).pvalue)
    assert c.verdict().startswith("B fixes more samples than it breaks (28 fixed vs 0 broken), beyond chance")
    assert compare(b, a).verdict().startswith("B breaks more samples than it fixes")


def test_regression_compares_absolute_errors_with_a_tolerance(tmp_path):
    labels = [1, 2, 3, 4, 5, 6]
    resid_a = [0.5, -1.0, 1.0, 2.0, -0.2, 0.1]     # |e| 0.5 1 1 2 0.2 0.1: median 0.75, tolerance 0.075
    resid_b = [0.1, -1.05, 2.0, 0.5, -0.2, 0.3]    # Δ|e| -0.4 +0.05 +1.0 -1.5 0 +0.2
    a = write_run(tmp_path, "a", labels, np.add(labels, resid_a), np.square(resid_a), task="regression")
    b = write_run(tmp_path, "b", labels, np.add(labels, resid_b), np.square(resid_b), task="regression")
    c = compare(a, b)
    assert c.task == "regression" and c.per_class.empty
    assert c.samples["change"].tolist() == ["improved", "same", "worsened", "improved", "same", "worsened"]
    s = c.summary
    assert (s["improved"], s["worsened"], s["same"]) == (2, 2, 2)
    assert s["tolerance"] == pytest.approx(0.075)
    assert s["mae_a"] == pytest.approx(4.8 / 6) and s["mae_b"] == pytest.approx(4.15 / 6)
    assert s["p_value"] == 1.0 and s["test"] == "exact sign test"
    assert c.top("improved")["sample_id"].tolist() == ["s3", "s0"]
    assert c.top("worsened")["sample_id"].tolist() == ["s2", "s5"]
    assert compare(a, b, tolerance=0.0).summary["same"] == 1  # only the exact tie stays "same"


def test_different_evaluation_sets_are_said_loudly(tmp_path):
    a = write_run(tmp_path, "a", LABELS, PRED_A, LOSS_A)
    b = write_run(tmp_path, "b", LABELS[2:] + [0, 1], PRED_B[2:] + [0, 1], LOSS_B[2:] + [0.1, 0.1],
                  ids=[f"s{i}" for i in range(2, 12)] + ["new0", "new1"])
    with pytest.warns(UserWarning, match="Different evaluation sets"):
        c = compare(a, b)
    s = c.summary
    assert (s["shared"], s["only_a"], s["only_b"]) == (10, 2, 2)
    assert len(c.samples) == 10 and "s0" not in set(c.samples["sample_id"])
    assert "10 shared samples only" in c.warnings[0]
    assert s["accuracy_a"] == pytest.approx(5 / 10)  # s2..s11 in A: right on s4 s5 s7 s8 s11


def test_labels_that_differ_for_one_id_are_said(tmp_path):
    a = write_run(tmp_path, "a", LABELS, PRED_A, LOSS_A)
    b = write_run(tmp_path, "b", [1] + LABELS[1:], PRED_B, LOSS_B)
    with pytest.warns(UserWarning, match="different labels"):
        c = compare(a, b)
    assert c.summary["label_mismatches"] == 1 and "s0" in c.warnings[0]


def test_runs_on_different_data_are_an_error_not_a_verdict(tmp_path):
    """4 of the 12 shared ids relabelled (33% > 25%): different data, refused in one line;
    3 of 12 (25%, not above the threshold) is a label fix, compared with a warning."""
    assert MAX_LABEL_MISMATCH_SHARE == 0.25
    a = write_run(tmp_path, "a", LABELS, PRED_A, LOSS_A)
    four = [1, 1, 1, 1] + LABELS[4:]     # s0..s3 were class 0: 4 ids now carry another label
    three = [1, 1, 1] + LABELS[3:]
    b4 = write_run(tmp_path, "b4", four, PRED_B, LOSS_B)
    b3 = write_run(tmp_path, "b3", three, PRED_B, LOSS_B)
    with pytest.raises(diagnostics.ComparisonError) as err:
        compare(a, b4)
    assert str(err.value).startswith("runs a and b4 share 12 ids on split 'val' but 4 carry different labels: "
                                     "they were evaluated on different data — ")
    assert "\n" not in str(err.value)
    with pytest.warns(UserWarning, match="3 shared sample id"):
        c = compare(a, b3)
    assert c.summary["label_mismatches"] == 3 and c.summary["shared"] == 12


def test_unrelated_data_sharing_index_ids_is_refused(tmp_path):
    """Two data sets that both name samples 0..n-1: ids overlap, labels agree only by chance
    (here on 2 of 8 shared ids), as digits vs OCT did in the demo (85 shared, 78 differ)."""
    a = write_run(tmp_path, "digits", [3, 7, 1, 0, 9, 2, 5, 8, 4, 6], [3] * 10, [1.0] * 10,
                  ids=[str(i) for i in range(10)])
    b = write_run(tmp_path, "oct", [3, 2, 0, 3, 1, 2, 0, 1], [0] * 8, [1.0] * 8, ids=[str(i) for i in range(8)])
    with pytest.raises(diagnostics.ComparisonError, match="share 8 ids on split 'val' but 6 carry different labels"):
        compare(a, b)
    assert not same_data(diagnostics.open_run(a), diagnostics.open_run(b))


def test_same_data_by_key_or_by_labels_of_the_shared_ids(tmp_path):
    a = diagnostics.open_run(write_run(tmp_path, "a", LABELS, PRED_A, LOSS_A))
    keyed = diagnostics.open_run(write_run(tmp_path, "keyed", LABELS, PRED_B, LOSS_B))
    old = diagnostics.open_run(write_run(tmp_path, "old", LABELS, PRED_B, LOSS_B, keyed=False))
    # a subset of the ids: another dataset key (the key hashes the ids), the same labels
    subset = diagnostics.open_run(write_run(tmp_path, "subset", LABELS[:8], PRED_B[:8], LOSS_B[:8],
                                            ids=[f"s{i}" for i in range(8)]))
    relabelled = diagnostics.open_run(write_run(tmp_path, "relabelled", [2] * 12, PRED_B, LOSS_B))
    disjoint = diagnostics.open_run(write_run(tmp_path, "disjoint", LABELS, PRED_B, LOSS_B,
                                              ids=[f"x{i}" for i in range(12)]))
    assert a.manifest["evaluations"][0]["dataset"] == keyed.manifest["evaluations"][0]["dataset"]
    assert a.manifest["evaluations"][0]["dataset"] != subset.manifest["evaluations"][0]["dataset"]
    assert [same_data(a, r) for r in (keyed, old, subset, relabelled, disjoint)] == [True, True, True, False, False]


def test_comparable_runs_put_runs_on_the_same_data_first(tmp_path):
    a = write_run(tmp_path, "a", LABELS, PRED_A, LOSS_A)
    write_run(tmp_path, "same-old", LABELS, PRED_B, LOSS_B)
    write_run(tmp_path, "other-1", [2] * 12, PRED_B, LOSS_B)
    write_run(tmp_path, "same-new", LABELS[:6], PRED_B[:6], LOSS_B[:6], keyed=False)
    write_run(tmp_path, "other-2", LABELS, PRED_B, LOSS_B, ids=[f"x{i}" for i in range(12)])
    found = comparable_runs(tmp_path, a)
    assert found["name"].tolist() == ["same-new", "same-old", "other-2", "other-1"]
    assert found["same_data"].tolist() == [True, True, False, False]


def test_run_without_that_split_is_a_one_line_error(pair):
    with pytest.raises(diagnostics.ComparisonError, match=r"run base has no evaluation of split 'test' "
                                                          r"\(its evaluated splits: val\)") as err:
        compare(pair[0], pair[1], split="test")
    assert "\n" not in str(err.value)


def test_run_without_any_evaluation_is_an_error(tmp_path, pair):
    RunWriter(tmp_path / "plain", {"name": "plain"}).close()
    with pytest.raises(diagnostics.ComparisonError, match="run plain has no evaluation .* no evaluation at all"):
        compare(tmp_path / "plain", pair[1])


def test_runs_without_shared_ids_are_an_error(tmp_path):
    a = write_run(tmp_path, "a", LABELS, PRED_A, LOSS_A)
    b = write_run(tmp_path, "b", LABELS, PRED_B, LOSS_B, ids=[f"other{i}" for i in range(12)])
    with pytest.raises(diagnostics.ComparisonError, match="share no sample id on split 'val' "
                                                          r"\(12 and 12 samples\)"):
        compare(a, b)


def test_runs_of_different_tasks_are_an_error(tmp_path):
    a = write_run(tmp_path, "a", LABELS, PRED_A, LOSS_A)
    b = write_run(tmp_path, "b", LABELS, PRED_B, LOSS_B, task="regression")
    with pytest.raises(diagnostics.ComparisonError, match="run a is classification and run b is regression"):
        compare(a, b)


def test_missing_run_is_the_readers_error(tmp_path, pair):
    with pytest.raises(diagnostics.RunNotFoundError):
        compare(tmp_path / "missing", pair[1])


def test_comparable_runs_are_the_other_evaluated_runs_of_the_task(tmp_path, pair):
    RunWriter(tmp_path / "plain", {"name": "plain", "task": "classification"}).close()
    write_run(tmp_path, "reg", [1.0, 2.0], [1.5, 2.5], [0.25, 0.25], task="regression")
    write_run(tmp_path, "newest", LABELS, PRED_B, LOSS_B, extra_splits=("test",))
    found = comparable_runs(tmp_path, pair[0])
    assert found["name"].tolist() == ["newest", "better"]  # most recent first; not itself, plain or reg
    assert found["splits"].tolist() == [["val", "test"], ["val"]]


def test_compare_imports_neither_torch_nor_streamlit():
    code = ("import sys, diagnostics.compare, diagnostics.figures.compare\n"
            "print(sorted(m for m in ('torch', 'streamlit', 'hooks', 'scipy.stats') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_loss_scatter_keeps_log_axes_when_some_losses_are_exactly_zero():
    """Confident right answers underflow to a loss of 0 in float32: on linear axes they
    piled at the origin; on log axes they are drawn at half the smallest positive loss."""
    import numpy as np
    import pandas as pd

    from diagnostics.figures.compare import loss_scatter_figure

    samples = pd.DataFrame({"sample_id": ["a", "b", "c", "d"], "loss_a": [0.0, 1e-4, 2.0, 0.5],
                            "loss_b": [0.0, 0.0, 0.1, 3.0],
                            "change": ["still_right", "still_right", "fixed", "broken"]})
    fig = loss_scatter_figure(samples)
    assert fig.layout.xaxis.type == "log" and fig.layout.yaxis.type == "log"
    drawn = np.concatenate([np.asarray(t.x, dtype=float) for t in fig.data[1:]])
    assert drawn.min() == 5e-5 and "exactly 0 drawn at 5.0e-05" in fig.layout.annotations[0].text
    assert samples["loss_a"].iloc[0] == 0.0  # the caller's frame is left as it was


def test_loss_scatter_ticks_whole_decades_and_pads_a_run_stuck_at_one_loss():
    """The broken baseline's losses all sit at ~2.3: its points form a vertical line at the
    right end, which the padded range keeps whole; the ticks are log_ticks's (no minor labels
    "2 5 10⁻² 2 5" in mixed sizes), the same on both axes."""
    import numpy as np
    import pandas as pd

    from diagnostics.figures.common import log_ticks
    from diagnostics.figures.compare import loss_scatter_figure

    loss_a = np.array([2.302, 2.31, 2.316, 2.305])
    loss_b = np.array([0.006, 0.011, 0.4, 3.1])
    samples = pd.DataFrame({"sample_id": list("abcd"), "loss_a": loss_a, "loss_b": loss_b,
                            "change": ["fixed", "fixed", "fixed", "still_wrong"]})
    fig = loss_scatter_figure(samples)
    for axis in (fig.layout.xaxis, fig.layout.yaxis):
        assert axis.type == "log"
        assert list(axis.tickvals) == [0.01, 0.1, 1.0] and list(axis.ticktext) == ["0.01", "0.1", "1"]
        assert list(axis.tickvals) == log_ticks(np.concatenate([loss_a, loss_b]))["tickvals"]
        lo, hi = axis.range
        # every point inside, at least 0.1 decade (a few marker widths) from either end
        assert lo < np.log10(0.006) - 0.1 and hi > np.log10(3.1) + 0.1
    linear = loss_scatter_figure(samples.assign(loss_a=[2.3] * 4, loss_b=[-0.5, 0.0, 1.0, 2.0]))
    assert linear.layout.xaxis.type != "log"
    lo, hi = linear.layout.xaxis.range
    assert lo < -0.5 - 0.1 and hi > 2.3 + 0.1  # 5% of the span, 0.14, either side
    flat = loss_scatter_figure(samples.assign(loss_a=[-1.0] * 4, loss_b=[-1.0] * 4))
    lo, hi = flat.layout.yaxis.range
    assert lo < -1.0 < hi  # a span of 0 still gets a range around its one value


def test_changed_lists_fixed_then_broken_with_class_names(pair):
    c = compare(*pair)
    assert c.outcomes == ("fixed", "broken")
    table = c.changed(NAMES)
    assert table["sample_id"].tolist() == c.top("fixed", limit=None)["sample_id"].tolist() + ["s7", "s1"]
    assert table["change"].tolist() == ["fixed"] * 4 + ["broken"] * 2
    assert list(table.columns) == ["sample_id", "change", "label", "prediction_a", "prediction_b", "loss_a", "loss_b"]
    row = table.set_index("sample_id").loc["s1"]
    assert (row["label"], row["prediction_a"], row["prediction_b"]) == ("cat", "cat", "dog")
    points = c.per_class_points()
    np.testing.assert_allclose(points["recall_a"], [50, 75, 50])
    np.testing.assert_allclose(points["delta"], [25, 0, 25])


def test_comparable_runs_say_which_run_they_left_out_and_why(tmp_path, pair, monkeypatch):
    compare_module = sys.modules["diagnostics.compare"]  # diagnostics.compare is also the function

    def damaged(*args, **kwargs):
        raise diagnostics.DiagnosticsError("samples/part-0.parquet is damaged")

    monkeypatch.setattr(compare_module, "same_data", damaged)
    found = comparable_runs(tmp_path, pair[0])
    assert found.empty and found.attrs["skipped"] == {"better": "samples/part-0.parquet is damaged"}
    monkeypatch.undo()
    assert comparable_runs(tmp_path, pair[0]).attrs["skipped"] == {}


# -- per review tag ---------------------------------------------------------------------------
# With B evaluating s0..s9 only, the hand count of (A right?, B right?) above gives:
#   'too dark' on s1 s2 s3 s6 s10: s2 s3 s6 fixed, s1 broken, s10 not in B   -> 4 tagged
#   'blurry' on s0 s9: s0 still right, s9 fixed                              -> 2 tagged
#   'label noise' on s7, tagged while reviewing B (same data): broken       -> 1 tagged
#   'gone' on s11 only: not in B                                             -> 0 tagged, 1 not in B


@pytest.fixture()
def tagged_pair(tmp_path):
    from diagnostics.tags import TagStore

    a = write_run(tmp_path, "base", LABELS, PRED_A, LOSS_A, class_names=NAMES)
    b = write_run(tmp_path, "better", LABELS[:10], PRED_B[:10], LOSS_B[:10], ids=[f"s{i}" for i in range(10)],
                  class_names=NAMES)
    key_a = dataset_key("val", [f"s{i}" for i in range(12)], LABELS)  # what Error review of A writes under
    TagStore(a).add_tags(key_a, ["s1", "s2", "s3", "s6", "s10"], "too dark")
    TagStore(a).add_tags(key_a, ["s0", "s9"], ["blurry"])
    TagStore(a).add_tags(key_a, ["s11"], ["gone"])
    TagStore(b).add_tags(key_a, ["s7"], ["label noise"])  # B's store, A's data: Error review of A shows it
    TagStore(a).add_tags("val:000000000000", ["s2", "s3"], ["other data"])  # another dataset: not counted
    return a, b


def test_per_tag_counts_what_b_did_to_the_samples_tagged_in_a(tagged_pair):
    with pytest.warns(UserWarning, match="Different evaluation sets"):
        c = compare(*tagged_pair)
    t = c.per_tag()
    assert list(t.columns) == ["tag", "tagged", "fixed", "broken", "still_wrong", "still_right", "not_in_b"]
    assert t.to_dict("records") == [
        {"tag": "too dark", "tagged": 4, "fixed": 3, "broken": 1, "still_wrong": 0, "still_right": 0, "not_in_b": 1},
        {"tag": "blurry", "tagged": 2, "fixed": 1, "broken": 0, "still_wrong": 0, "still_right": 1, "not_in_b": 0},
        {"tag": "label noise", "tagged": 1, "fixed": 0, "broken": 1, "still_wrong": 0, "still_right": 0,
         "not_in_b": 0},
        {"tag": "gone", "tagged": 0, "fixed": 0, "broken": 0, "still_wrong": 0, "still_right": 0, "not_in_b": 1}]
    assert c.tag_sentences(t) == [
        "Of the 4 samples tagged 'too dark', 3 fixed, 1 broken, 0 still wrong, 0 still right; 1 more B did not "
        "evaluate.",
        "Of the 2 samples tagged 'blurry', 1 fixed, 0 broken, 0 still wrong, 1 still right.",
        "Of the 1 sample tagged 'label noise', 0 fixed, 1 broken, 0 still wrong, 0 still right.",
        "None of the 1 sample(s) tagged 'gone' is in B's evaluation."]
    assert c.to_dict()["per_tag"] == t.to_dict("records")


def test_per_tag_of_a_given_frame_counts_each_pair_once(pair):
    c = compare(*pair)
    tags = pd.DataFrame({"sample_id": ["s10", "s10", "s1", "s7", "s4", "nowhere"],
                         "tag": ["dim", "dim", "dim", "dim", "dim", "dim"]})
    row = c.per_tag(tags).iloc[0].to_dict()
    assert row == {"tag": "dim", "tagged": 4, "fixed": 0, "broken": 2, "still_wrong": 1, "still_right": 1,
                   "not_in_b": 0}
    assert c.per_tag().empty and c.tag_sentences() == []  # nothing tagged in the folder
    assert c.per_tag(tags.iloc[:0]).empty
    with pytest.raises(diagnostics.ComparisonError, match="lacks column.*tag"):
        c.per_tag(pd.DataFrame({"sample_id": ["s1"]}))


def test_per_tag_of_a_regression_comparison(tmp_path):
    labels = [1.0, 2.0, 3.0, 4.0]  # |error| A 0.5 each; B 0.1 0.9 0.5 0: improved, worsened, same, improved
    a = write_run(tmp_path, "a", labels, [1.5, 2.5, 3.5, 4.5], [0.25] * 4, task="regression")
    b = write_run(tmp_path, "b", labels, [1.1, 2.9, 3.5, 4.0], [0.01, 0.81, 0.25, 0.0], task="regression")
    c = compare(a, b)
    t = c.per_tag(pd.DataFrame({"sample_id": ["s0", "s1", "s2", "s3", "s3"], "tag": ["x", "x", "x", "y", "y"]}))
    assert t.to_dict("records") == [{"tag": "x", "tagged": 3, "improved": 1, "worsened": 1, "same": 1, "not_in_b": 0},
                                    {"tag": "y", "tagged": 1, "improved": 1, "worsened": 0, "same": 0, "not_in_b": 0}]
    assert c.tag_sentences(t)[0] == "Of the 3 samples tagged 'x', 1 improved, 1 worsened, 1 about the same."
