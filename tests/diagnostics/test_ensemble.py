"""The ensemble view: phi, majority vote, probability average, oracle and the samples only one
member gets right, against hand counts on hand-built runs (and phi against numpy's corrcoef)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pytest

import diagnostics
from diagnostics import figures, schema
from diagnostics.ensemble import TIE_BREAK, ensemble, majority_vote, phi_matrix
from diagnostics.exceptions import ComparisonError
from diagnostics.schema import dataset_key
from diagnostics.store import RunWriter

NAMES = ["cat", "dog", "eel"]
# Ten samples, three members. Hand count (✓ right, ✗ wrong; predictions A, B, C):
#   s0 0,0,0 ✓✓✓ | s1 0,1,0 ✓✗✓ | s2 1,0,0 ✗✓✓ | s3 1,1,2 ✓✓✗ | s4 1,2,1 ✓✗✓
#   s5 0,1,1 ✗✓✓ | s6 2,2,2 ✓✓✓ | s7 2,0,1 ✓✗✗ | s8 1,2,0 ✗✓✗ | s9 2,1,1 ✗✗✗
# Each member is right on 6. Wrong: A {2,5,8,9}, B {1,4,7,9}, C {3,7,8,9}.
# phi(A,B): both wrong 1, one only 3+3, neither 3: (1*3 - 3*3)/sqrt(4*6*4*6) = -1/4.
# phi(A,C): 2, 2+2, 4: (2*4 - 2*2)/24 = 1/6; phi(B,C) likewise 1/6. Mean (-1/4 + 1/3)/3 = 1/36.
# Oracle: all but s9 = 9/10. Only one right: s7 (A), s8 (B).
# Majority: 2-1 and 3-0 votes right on s0-s6; s9 votes 1 (label 0) wrong; s7 and s8 are
# three-way ties broken by confidence: s7 A 0.9 > C 0.6 > B 0.5 -> 2 right; s8 A 0.7 > C 0.6 >
# B 0.4 -> 1 wrong. 8/10, 2 ties.
# Probability average (conf on the predicted class, the rest split evenly): s1 B is sure
# (0.99) where A and C are not (0.34): [.685, 1.65, .665] -> 1, wrong; s7 [.75, .9, 1.35] -> 2
# right; s8 [1.05, 1.2, .75] -> 1 wrong; s9 -> 1 wrong; the rest as the vote. 7/10.
LABELS = [0, 0, 0, 1, 1, 1, 2, 2, 2, 0]
PRED = {"a": [0, 0, 1, 1, 1, 0, 2, 2, 1, 2], "b": [0, 1, 0, 1, 2, 1, 2, 0, 2, 1], "c": [0, 0, 0, 2, 1, 1, 2, 1, 0, 1]}
CONF = {"a": {1: 0.34, 7: 0.9, 8: 0.7}, "b": {1: 0.99, 7: 0.5, 8: 0.4}, "c": {1: 0.34, 7: 0.6, 8: 0.6}}


def confidences(name: str) -> list[float]:
    return [CONF[name].get(i, 0.8) for i in range(len(LABELS))]


def probabilities(predictions, conf, k: int = 3) -> list[list[float]]:
    """The predicted class gets `conf`, the others share the rest evenly."""
    return [[c if j == p else (1 - c) / (k - 1) for j in range(k)] for p, c in zip(predictions, conf)]


def write_member(folder, name: str, labels, predictions, conf=None, probs=True, ids=None, task="classification",
                 split="val", class_names=NAMES):
    """A run with one evaluation of `split` (confidences and probabilities), as the writer stores it."""
    ids = [f"s{i}" for i in range(len(labels))] if ids is None else ids
    n = len(ids)
    label, pred = np.asarray(labels, float), np.asarray(predictions, float)
    conf = np.full(n, 0.8) if conf is None else np.asarray(conf, float)
    classification = task == "classification"
    cols = {"step": np.full(n, 10), "split": [split] * n, "sample_id": ids, "rank": np.zeros(n, np.int32),
            "label": label, "prediction": pred, "loss": np.full(n, 0.5),
            "confidence": conf if classification else np.full(n, np.nan), "label_prob": np.full(n, np.nan),
            "margin": np.full(n, np.nan), "correct": (label == pred).astype(float) if classification else
            np.full(n, np.nan), "residual": np.full(n, np.nan) if classification else pred - label,
            "probs": probabilities(pred.astype(int), conf) if probs and classification else [None] * n,
            "embedding": [None] * n}
    writer = RunWriter(folder / name, {"name": name, "task": task, "class_names": class_names}, flush_every_s=3600)
    writer.add_table("samples", pa.table({k: pa.array(v, schema.SAMPLES_SCHEMA.field(k).type)
                                          for k, v in cols.items()}, schema=schema.SAMPLES_SCHEMA))
    writer.update_manifest(evaluations=[{"split": split, "step": 10, "n": n,
                                         "dataset": dataset_key(split, ids, label)}])
    writer.close()
    return folder / name


@pytest.fixture()
def trio(tmp_path):
    return [write_member(tmp_path, name, LABELS, PRED[name], confidences(name)) for name in "abc"]


def test_numbers_match_hand_counts(trio):
    e = ensemble(trio)
    assert e.members == ("a", "b", "c") and e.shared == 10 and e.split == "val"
    assert e.accuracy == pytest.approx({"a": 0.6, "b": 0.6, "c": 0.6})
    assert e.best_member == ("a", pytest.approx(0.6))  # the first given among equals
    expected = np.array([[1, -1 / 4, 1 / 6], [-1 / 4, 1, 1 / 6], [1 / 6, 1 / 6, 1]])
    np.testing.assert_allclose(e.phi.to_numpy(), expected, atol=1e-12)
    assert list(e.phi.index) == list(e.phi.columns) == ["a", "b", "c"]
    assert e.mean_phi == pytest.approx(1 / 36)
    assert e.oracle_accuracy == pytest.approx(0.9)
    assert e.majority_accuracy == pytest.approx(0.8) and e.majority_ties == 2
    assert e.probability_accuracy == pytest.approx(0.7) and e.probability_note == ""
    assert e.only_one_right["sample_id"].tolist() == ["s7", "s8"]
    assert e.only_one_right["member"].tolist() == ["a", "b"]
    assert e.only_one_right["label"].tolist() == [2, 2]
    np.testing.assert_allclose(e.only_one_right["confidence"], [0.9, 0.4])
    by_id = e.correct.set_index("sample_id")
    assert by_id["n_right"].tolist() == [3, 2, 2, 2, 2, 2, 3, 1, 1, 0]
    assert by_id.loc[["s7", "s8", "s9"], "majority"].tolist() == [2, 1, 1]
    assert e.warnings == () and e.phi_notes == ()
    assert e.gain() == pytest.approx({"majority vote": 0.2, "probability average": 0.1, "oracle": 0.3})
    assert e.weak_members() == () and e.phi_without_weak() == pytest.approx(1 / 36)
    assert e.reading() == ("combining helps; errors weakly correlated (mean phi 0.03): they fail on different "
                           "samples")
    best = e.best_member[0]
    assert e.accuracy[best] == pytest.approx(0.6)
    assert e.outcome() == (f"measured: the majority vote (80.0%) beats the best member, {best} (60.0%), by 20.0 "
                           "points; any member right (the oracle): 90.0%")


# Two working members whose errors overlap and a broken one, as the digits demo's baseline (its
# phi with the others near 0 or below made the mean read "weakly correlated, can help").
# Ten samples, labels LABELS. Wrong: good {s0, s1}, fair {s0, s1, s2}, broken everywhere but s0
# (it predicts label + 1 mod 3, the right 0 on s0). Accuracy 0.8, 0.7, 0.1; oracle 0.9 (s1 all
# wrong). phi(good, fair): both wrong 2, good only 0, fair only 1, neither 7:
# (2*7 - 0)/sqrt(2*8*3*7) = 14/sqrt(336) = 0.764. phi(good, broken): 1, 1, 8, 0: -8/sqrt(2*8*9*1)
# = -2/3; phi(fair, broken): 2, 1, 7, 0: -7/sqrt(3*7*9*1) = -0.509. Mean -0.137: "weak".
# Vote (all confidences 0.8): s0 1,1,0 -> 1 wrong; s1 1,1,1 wrong; s2 0,1,1 -> 1 wrong; s3-s8 two
# right against broken; s9 0,0,1 right: 0.7. Probability average: the same three wrong, 0.7.
GOOD = [1, 1] + LABELS[2:]
FAIR = [1, 1, 1] + LABELS[3:]
BROKEN = [0] + [(label + 1) % 3 for label in LABELS[1:]]


def test_reading_sets_a_broken_member_apart_and_reads_the_others(tmp_path):
    e = ensemble([write_member(tmp_path, n, LABELS, p) for n, p in (("good", GOOD), ("fair", FAIR),
                                                                    ("broken", BROKEN))])
    assert e.accuracy == pytest.approx({"good": 0.8, "fair": 0.7, "broken": 0.1}) and e.oracle_accuracy == 0.9
    assert e.phi.loc["good", "fair"] == pytest.approx(14 / math.sqrt(336))
    assert e.phi.loc["good", "broken"] == pytest.approx(-2 / 3)
    assert e.phi.loc["fair", "broken"] == pytest.approx(-7 / math.sqrt(189))
    assert e.mean_phi == pytest.approx((14 / math.sqrt(336) - 2 / 3 - 7 / math.sqrt(189)) / 3)  # -0.137
    assert e.majority_accuracy == pytest.approx(0.7) and e.probability_accuracy == pytest.approx(0.7)
    assert e.weak_members() == ("broken",)  # 70 points below; fair, 10 below, is not
    assert e.phi_without_weak() == pytest.approx(14 / math.sqrt(336))
    assert e.reading() == (
        "combining falls short of the best member; broken (10.0%) is far below the best member (80.0%): it can "
        "drag the vote down, consider dropping it; among the others, errors strongly correlated (phi 0.76): "
        "they fail on largely the same samples")
    assert e.outcome().startswith("measured: the majority vote (70.0%) falls short of the best member, good")
    d = e.to_dict()
    assert d["weak_members"] == ["broken"] and d["phi_without_weak"] == pytest.approx(0.764, abs=1e-3)


def test_reading_of_two_members_without_room_and_of_a_good_one_with_a_broken_one(tmp_path):
    good, fair = write_member(tmp_path, "good", LABELS, GOOD), write_member(tmp_path, "fair", LABELS, FAIR)
    # fair is wrong wherever good is: the oracle is good's 0.8. The vote ties on s2 (0 and 1 at
    # 0.8 each) and goes to the lower class, 0, right: 0.8 as well.
    e = ensemble([good, fair])
    assert e.oracle_accuracy == pytest.approx(0.8) and e.majority_accuracy == pytest.approx(0.8)
    assert e.reading() == (
        "no vote can beat the best member: every sample some member gets right, it gets right too; errors "
        "strongly correlated (phi 0.76): they fail on largely the same samples")
    # good and broken: the vote ties everywhere but s1 (both 1, wrong) and goes to the lower class:
    # right on s0 (0), s2 (0 vs 1), s3-s5 (1 vs 2), s9 (0 vs 1); wrong on s6-s8 (0 vs good's 2): 0.6.
    # No correlation is read: one member is left beside the broken one.
    e = ensemble([good, write_member(tmp_path, "broken", LABELS, BROKEN)])
    assert e.oracle_accuracy == pytest.approx(0.9) and e.majority_accuracy == pytest.approx(0.6)
    assert e.reading() == ("combining falls short of the best member; broken (10.0%) is far below the best member "
                           "(80.0%): it can drag the vote down, consider dropping it")
    assert math.isnan(e.phi_without_weak())


def test_weak_means_at_least_20_points_below_the_best(trio):
    e = ensemble(trio)
    at = replace(e, accuracy={"a": 0.8, "b": 0.6, "c": 0.61})
    assert at.weak_members() == ("b",)  # exactly 20 points below counts; 19 does not
    both = replace(e, accuracy={"a": 0.9, "b": 0.3, "c": 0.1})
    assert both.weak_members() == ("b", "c") and math.isnan(both.phi_without_weak())
    assert "b (30.0%), c (10.0%) are far below the best member (90.0%): they can drag the vote down, consider " \
           "dropping them" in both.reading()


def test_phi_is_the_correlation_of_the_wrong_indicators(trio):
    e = ensemble(trio)
    wrong = np.column_stack([np.asarray(PRED[n]) != np.asarray(LABELS) for n in "abc"]).astype(float)
    np.testing.assert_allclose(e.phi.to_numpy(), np.corrcoef(wrong.T), atol=1e-12)
    rng = np.random.default_rng(0)
    random = rng.random((200, 5)) < [0.1, 0.3, 0.5, 0.2, 0.4]
    np.testing.assert_allclose(phi_matrix(random), np.corrcoef(random.T.astype(float)), atol=1e-12)


def test_a_member_always_right_has_no_phi_and_says_why(tmp_path, trio):
    perfect = write_member(tmp_path, "perfect", LABELS, LABELS)
    e = ensemble([*trio, perfect])
    assert np.isnan(e.phi.loc["perfect"]).all() and np.isnan(e.phi["perfect"]).all()
    assert e.phi.loc["a", "b"] == pytest.approx(-0.25)
    assert e.mean_phi == pytest.approx(1 / 36)  # over the defined pairs only
    assert len(e.phi_notes) == 1 and "perfect is right on every shared sample" in e.phi_notes[0]
    assert e.oracle_accuracy == 1.0 and e.best_member == ("perfect", 1.0)
    assert json.loads(json.dumps(e.to_dict(), allow_nan=False))["phi"]["perfect"]["a"] is None
    only = ensemble([perfect, write_member(tmp_path, "same", LABELS, LABELS)])
    assert math.isnan(only.mean_phi) and only.reading() == (
        "no vote can beat the best member: every sample some member gets right, it gets right too; error "
        "correlation undefined (a member right or wrong on every shared sample)")


def test_ties_go_to_the_most_confident_voters_then_the_lowest_class():
    winner, tied = majority_vote(np.array([[2, 1], [2, 1], [2, 1], [0, 0], [3, 3]]),
                                 np.array([[0.6, 0.5], [0.5, 0.6], [0.5, 0.5], [0.1, 0.2], [0.5, np.nan]]))
    assert winner.tolist() == [2, 1, 1, 0, 3] and tied.tolist() == [True, True, True, False, False]
    winner, tied = majority_vote(np.array([[1, 1, 0, 0, 2]]), np.array([[0.4, 0.4, 0.5, 0.5, 0.9]]))
    assert winner.tolist() == [0] and tied.tolist() == [True]  # 0 and 1 tied at two votes; 0 sums 1.0 > 0.8
    assert "most confident" in TIE_BREAK and "lowest class id" in TIE_BREAK


def test_two_members_vote_by_the_more_confident_one(tmp_path):
    a = write_member(tmp_path, "a", [0, 1, 2], [0, 2, 2], conf=[0.9, 0.9, 0.3])
    b = write_member(tmp_path, "b", [0, 1, 2], [1, 1, 0], conf=[0.5, 0.6, 0.8])
    e = ensemble([a, b])
    assert e.majority_ties == 3 and e.correct["majority"].tolist() == [0, 2, 0]
    assert e.majority_accuracy == pytest.approx(1 / 3) and e.oracle_accuracy == 1.0
    assert e.only_one_right["sample_id"].tolist() == ["s0", "s2", "s1"]  # a's first, then b's
    assert e.phi.loc["a", "b"] == pytest.approx(-1.0)  # wrong a {1}, b {0, 2}: (0*0 - 1*2)/sqrt(1*2*2*1)


def test_probability_average_is_none_when_a_member_has_no_probabilities(tmp_path, trio):
    bare = write_member(tmp_path, "bare", LABELS, PRED["a"], probs=False)
    e = ensemble([*trio, bare])
    assert e.probability_accuracy is None and e.gain()["probability average"] is None
    assert "bare recorded no class probabilities for 10 of the 10 shared samples" in e.probability_note
    assert e.to_dict()["probability_accuracy"] is None
    four = write_member(tmp_path, "four", LABELS, PRED["a"], probs=False)
    assert ensemble([trio[0], four]).probability_accuracy is None


def test_only_shared_ids_count_and_different_sets_are_warned(tmp_path, trio):
    short = write_member(tmp_path, "short", LABELS[:6], PRED["b"][:6], ids=[f"s{i}" for i in range(6)])
    with pytest.warns(UserWarning, match="Different evaluation sets: 4 of a's 10, 0 of short's 6"):
        e = ensemble([trio[0], short])
    assert e.shared == 6 and e.warnings and "6 shared samples only" in e.warnings[0]
    # A right on s0 s1 s3 s4 (s2 s5 wrong); B right on s0 s2 s3 s5
    assert e.accuracy == pytest.approx({"a": 4 / 6, "short": 4 / 6})
    assert e.oracle_accuracy == pytest.approx(1.0) and len(e.only_one_right) == 4


def test_named_table_shows_class_names(trio):
    named = ensemble(trio).only_one_right_named(NAMES)
    assert named["label"].tolist() == ["eel", "eel"]
    assert list(named.columns) == ["sample_id", "label", "member", "confidence"]


def test_to_dict_is_json(trio):
    d = json.loads(json.dumps(ensemble(trio).to_dict(limit=1), allow_nan=False))
    assert d["members"] == ["a", "b", "c"] and d["shared"] == 10
    assert d["phi"]["a"]["b"] == pytest.approx(-0.25)
    assert d["majority_accuracy"] == pytest.approx(0.8) and d["oracle_accuracy"] == pytest.approx(0.9)
    assert d["only_one_right_count"] == 2 and len(d["only_one_right"]) == 1
    assert d["only_one_right_by_member"] == {"a": 1, "b": 1, "c": 0}
    assert d["only_one_right"][0] == {"sample_id": "s7", "label": 2.0, "member": "a", "confidence": 0.9}


def test_exported_from_the_package(trio):
    assert diagnostics.ensemble is ensemble and isinstance(ensemble(trio), diagnostics.Ensemble)


def test_bad_input_gets_one_clear_line(tmp_path, trio):
    cases = []
    with pytest.raises(ComparisonError, match="needs at least 2 runs, got 1") as exc:
        ensemble(trio[:1])
    cases.append(exc)
    with pytest.raises(ComparisonError, match="run a is given more than once") as exc:
        ensemble([trio[0], trio[0]])
    cases.append(exc)
    reg = write_member(tmp_path, "reg", [1.0, 2.0], [1.5, 2.5], task="regression")
    with pytest.raises(ComparisonError, match="run reg is a regression run — an ensemble view needs classification"):
        ensemble([trio[0], reg])
    with pytest.raises(ComparisonError, match=r"run a has no evaluation of split 'test' \(its evaluated splits: val\)"):
        ensemble(trio, split="test")
    other = write_member(tmp_path, "other", LABELS, PRED["a"], ids=[f"x{i}" for i in range(10)])
    with pytest.raises(ComparisonError, match="share no sample id") as exc:
        ensemble([trio[0], other])
    cases.append(exc)
    relabelled = write_member(tmp_path, "relabelled", [2] * 10, PRED["a"])  # 7 of 10 labels differ
    with pytest.raises(ComparisonError, match="7 carry different labels: they were evaluated on different data"):
        ensemble([trio[0], relabelled])
    for caught in cases:
        assert "\n" not in str(caught.value) and " — " in str(caught.value)


def test_a_few_relabelled_ids_are_warned_not_refused(tmp_path, trio):
    fixed = write_member(tmp_path, "fixed", [1] + LABELS[1:], PRED["b"])  # s0 relabelled
    with pytest.warns(UserWarning, match="1 shared sample id"):
        e = ensemble([trio[0], fixed])
    assert e.accuracy["fixed"] == pytest.approx(0.5)  # its own label: s0 (pred 0, label 1) now wrong
    assert any("each member is scored against its own label" in w for w in e.warnings)


def test_figures_draw_the_matrix_and_the_bars(trio):
    e = ensemble(trio)
    heat = figures.phi_heatmap_figure(e.phi)
    assert heat.data[0].type == "heatmap" and heat.data[0].text[0][1] == "-0.25"
    assert list(heat.data[0].x) == ["a", "b", "c"]
    undefined = e.phi.copy()
    undefined.loc["a", "a"] = np.nan
    assert figures.phi_heatmap_figure(undefined).data[0].text[0][0] == "—"
    dots = figures.ensemble_accuracy_figure(e.accuracy, {"majority vote": e.majority_accuracy,
                                                         "probability average": None, "oracle": e.oracle_accuracy})
    assert list(dots.data[0].x) == ["a", "b", "c", "majority vote", "oracle"]
    np.testing.assert_allclose(dots.data[0].y, [60, 60, 60, 80, 90])
    assert dots.data[0].type == "scatter" and dots.data[0].mode == "markers+text"  # dots: the axis is cut
    low, high = dots.layout.yaxis.range
    assert 50 < low < 60 and 90 < high <= 100.5  # every dot inside, its text too
    assert [shape.y0 for shape in dots.layout.shapes if shape.type == "line" and shape.y0 == shape.y1] == [60]
    assert not figures.phi_heatmap_figure(e.phi.iloc[:0, :0]).data  # empty: a message, no trace
    assert not figures.ensemble_accuracy_figure({}, {}).data


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "diagnostics.cli", "ensemble", *args], capture_output=True,
                          text=True, timeout=120)


def test_cli_prints_the_ensemble_as_text_and_json(tmp_path, trio):
    text = _cli(*map(str, trio))
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0] == "3 members, on the 10 samples of split val that all of them evaluated"
    assert "  majority vote                  80.0%  (2 tied; a tie goes to " in text.stdout
    assert "  oracle (any member right)      90.0%" in text.stdout
    assert "  probability average            70.0%" in text.stdout
    assert "combining helps; errors weakly correlated (mean phi 0.03): they fail on different samples" in lines
    assert "samples only one member gets right: 2 (a 1, b 1, c 0)" in lines
    assert any(line.split() == ["s7", "eel", "a", "0.9"] for line in lines)  # class names, not indices
    out = _cli(*map(str, trio), "--json", "--limit", "0")
    assert out.returncode == 0 and out.stderr == ""
    d = json.loads(out.stdout)
    assert d["phi"]["b"]["c"] == pytest.approx(1 / 6) and d["mean_phi"] == pytest.approx(1 / 36)
    assert [r["sample_id"] for r in d["only_one_right"]] == ["s7", "s8"] and d["class_names"] == NAMES


def test_cli_says_what_is_wrong_in_one_line(tmp_path, trio):
    for args in ([str(trio[0])], [str(trio[0]), str(tmp_path / "missing")], [*map(str, trio), "--split", "test"]):
        out = _cli(*args)
        assert out.returncode == 2 and out.stdout == ""
        assert len(out.stderr.strip().splitlines()) == 1 and out.stderr.startswith("diagnostics: "), out.stderr
    short = write_member(tmp_path, "short", LABELS[:6], PRED["b"][:6], ids=[f"s{i}" for i in range(6)])
    warned = _cli(str(trio[0]), str(short))
    assert warned.returncode == 0 and "diagnostics: warning: Different evaluation sets" in warned.stderr
