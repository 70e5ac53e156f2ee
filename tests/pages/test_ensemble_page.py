"""The Ensemble page through Streamlit's AppTest, over hand-built runs with known counts
(tests/diagnostics/test_ensemble.py counts them)."""

from __future__ import annotations

import shutil

import pytest
from streamlit.testing.v1 import AppTest

from diagnostics.store import RunWriter
from tests.diagnostics.test_ensemble import BROKEN, FAIR, GOOD, LABELS, PRED, confidences, write_member
from tests.pages._app import open_app, plotly_charts

PAGE = "pages/ensemble.py"


def _open(monkeypatch, runs_dir, run_name: str | None = None) -> AppTest:
    return open_app(monkeypatch, runs_dir, PAGE, run_name)


def _metrics(at: AppTest) -> dict[str, tuple[str, str]]:
    return {m.label: (m.value, m.proto.delta) for m in at.metric}


@pytest.fixture()
def folder(tmp_path):
    for name in "abc":
        write_member(tmp_path, name, LABELS, PRED[name], confidences(name))
    write_member(tmp_path, "oct", [2] * 10, PRED["a"])  # other data: 7 of 10 labels differ
    write_member(tmp_path, "reg", [1.0, 2.0], [1.5, 2.5], task="regression")
    return tmp_path


def test_page_combines_the_sidebar_run_with_the_runs_on_the_same_data(monkeypatch, folder):
    at = _open(monkeypatch, folder, "a")
    assert not at.error, [e.value for e in at.error]
    members = at.multiselect(key="ensemble_members_a")
    assert members.options[0] == "a" and sorted(members.options) == ["a", "b", "c"]  # not oct, not reg
    assert sorted(members.value) == ["a", "b", "c"]  # all by default
    metrics = _metrics(at)
    assert metrics["Best member"][0] == "60.0%"
    assert metrics["Majority vote"] == ("80.0%", "+20.0 points")
    assert metrics["Probability average"] == ("70.0%", "+10.0 points")
    assert metrics["Oracle"] == ("90.0%", "+30.0 points")
    assert [s.value for s in at.success] == [
        "Combining helps; errors weakly correlated (mean phi 0.03): they fail on different samples. Measured: the "
        "majority vote (80.0%) beats the best member, a (60.0%), by 20.0 points; any member right (the oracle): "
        "90.0%."]
    charts = plotly_charts(at)
    assert len(charts) == 2
    heat = next(c for c in charts if c["data"][0]["type"] == "heatmap")
    assert "error correlation" in heat["layout"]["title"]["text"]
    assert sorted(heat["data"][0]["x"]) == ["a", "b", "c"]
    table = at.dataframe(key="ensemble_table").value
    assert table["sample_id"].tolist() == ["s7", "s8"] and table["member"].tolist() == ["a", "b"]
    assert table["label"].tolist() == ["eel", "eel"]  # class names, not indices
    assert at.button(key="ensemble_open").disabled  # nothing selected


def test_a_broken_member_is_named_and_the_verdict_follows_the_measured_accuracy(monkeypatch, tmp_path):
    for name, predictions in (("broken", BROKEN), ("good", GOOD), ("fair", FAIR)):
        write_member(tmp_path, name, LABELS, predictions)
    at = _open(monkeypatch, tmp_path, "broken")
    assert sorted(at.multiselect(key="ensemble_members_broken").value) == ["broken", "fair", "good"]
    assert not at.success  # the vote (70%) falls short of good (80%): no green box, whatever the mean phi (-0.14)
    assert [i.value for i in at.info] == [
        "Combining falls short of the best member; broken (10.0%) is far below the best member (80.0%): it can "
        "drag the vote down, consider dropping it; among the others, errors strongly correlated (phi 0.76): they "
        "fail on largely the same samples. Measured: the majority vote (70.0%) falls short of the best member, "
        "good (80.0%), by 10.0 points; any member right (the oracle): 90.0%."]


def test_fewer_members_change_the_numbers(monkeypatch, folder):
    at = _open(monkeypatch, folder, "a")
    at.multiselect(key="ensemble_members_a").set_value(["a", "b"]).run()
    assert not at.exception and not at.error
    metrics = _metrics(at)
    # a and b: right together on s0 s3 s6, only a on s1 s4 s7, only b on s2 s5 s8, neither s9
    assert metrics["Oracle"][0] == "90.0%"
    # each member's, most confident first: a s7 0.9, s4 0.8, s1 0.34; b s2 0.8, s5 0.8, s8 0.4
    assert at.dataframe(key="ensemble_table").value["sample_id"].tolist() == ["s7", "s4", "s1", "s2", "s5", "s8"]
    at.multiselect(key="ensemble_members_a").set_value(["a"]).run()
    assert any("Pick at least 2 members" in i.value for i in at.info)
    assert not at.get("plotly_chart")


def test_a_selected_sample_opens_in_sample_detail_as_its_member_saw_it(monkeypatch, folder):
    at = _open(monkeypatch, folder, "a")
    at.session_state["ensemble_table"] = {"selection": {"rows": [1], "columns": [], "cells": []}}
    at.run()
    assert not at.button(key="ensemble_open").disabled
    at.button(key="ensemble_open").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert [t.value for t in at.title] == ["Sample detail"]
    assert at.session_state["sample_id"] == "s8" and at.session_state["run_path"] == str(folder / "b")
    assert at.query_params["run"] == "b"


def test_page_explains_when_fewer_than_two_runs_qualify(monkeypatch, folder):
    at = _open(monkeypatch, folder, "oct")  # the only run on its data
    assert any("Nothing to combine oct with" in i.value and "run.evaluate" in i.value for i in at.info)
    assert not at.get("plotly_chart") and not at.error and not at.metric
    at = _open(monkeypatch, folder, "reg")
    assert any("regression run" in i.value for i in at.info)
    assert not at.get("plotly_chart") and not at.error


def test_page_explains_a_run_without_evaluation(monkeypatch, folder):
    RunWriter(folder / "plain", {"name": "plain", "task": "classification"}).close()
    at = _open(monkeypatch, folder, "plain")
    assert any("has no evaluation" in i.value for i in at.info)
    assert not at.get("plotly_chart") and not at.error


def test_page_warns_about_different_evaluation_sets_and_missing_probabilities(monkeypatch, tmp_path):
    write_member(tmp_path, "a", LABELS, PRED["a"])
    write_member(tmp_path, "short", LABELS[:6], PRED["b"][:6], ids=[f"s{i}" for i in range(6)], probs=False)
    at = _open(monkeypatch, tmp_path, "a")
    assert any("Different evaluation sets" in w.value for w in at.warning)
    metrics = _metrics(at)
    assert metrics["Probability average"][0] == "—" and metrics["Oracle"][0] == "100.0%"


def test_page_explains_an_empty_folder_and_a_broken_run(monkeypatch, tmp_path, folder):
    at = _open(monkeypatch, tmp_path / "empty")
    assert any("No runs in" in i.value for i in at.info)
    shutil.copytree(folder / "a", folder / "broken")
    (folder / "broken" / "run.json").write_text("{not json")
    at = _open(monkeypatch, folder, "broken")
    assert any("cannot be shown" in e.value for e in at.error)
    assert not at.get("plotly_chart")



def test_a_combination_no_better_than_the_best_member_shows_no_arrow(monkeypatch, tmp_path):
    from streamlit.proto.Metric_pb2 import Metric

    write_member(tmp_path, "a", LABELS, PRED["a"])
    write_member(tmp_path, "twin", LABELS, PRED["a"])  # the same predictions: every way of combining gives 60%
    metrics = {m.label: m.proto for m in _open(monkeypatch, tmp_path, "a").metric}
    for label in ("Majority vote", "Probability average", "Oracle"):
        shown = metrics[label]
        assert (shown.body, shown.delta) == ("60.0%", "0.0 points"), label
        assert (shown.direction, shown.color) == (Metric.MetricDirection.NONE, Metric.MetricColor.GRAY), label
