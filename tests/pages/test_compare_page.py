"""The Compare runs page through Streamlit's AppTest, over hand-built runs with known counts."""

from __future__ import annotations

import shutil

import pytest
from streamlit.testing.v1 import AppTest

from diagnostics.store import RunWriter
from tests.diagnostics.test_compare import LABELS, LOSS_A, LOSS_B, NAMES, PRED_A, PRED_B, write_run
from tests.pages._app import open_app, plotly_charts

PAGE = "pages/compare.py"


def _open(monkeypatch, runs_dir, run_name: str | None = None) -> AppTest:
    return open_app(monkeypatch, runs_dir, PAGE, run_name)


def _metrics(at: AppTest) -> dict[str, tuple[str, str]]:
    return {m.label: (m.value, m.proto.delta) for m in at.metric}


@pytest.fixture()
def folder(tmp_path):
    write_run(tmp_path, "base", LABELS, PRED_A, LOSS_A, class_names=NAMES, config={"lr": 0.1})
    write_run(tmp_path, "old", LABELS, PRED_A, LOSS_A, class_names=NAMES)
    write_run(tmp_path, "better", LABELS, PRED_B, LOSS_B, class_names=NAMES, config={"lr": 0.05},
              extra_splits=("test",))
    return tmp_path


def test_page_compares_the_sidebar_run_with_the_most_recent_other_one(monkeypatch, folder):
    at = _open(monkeypatch, folder, "base")
    assert not at.error, [e.value for e in at.error]
    assert at.selectbox(key="compare_b_base").value == "better"  # most recent other run
    assert at.selectbox(key="compare_b_base").options == ["better", "old"]
    metrics = _metrics(at)
    assert metrics["Samples in both"][0] == "12"
    assert metrics["Accuracy A"][0] == "58.3%" and metrics["Accuracy B"] == ("75.0%", "+16.7 points")
    assert metrics["Fixed"][0] == "4" and metrics["Broken"][0] == "2"
    assert metrics["p-value"][0] == "0.688"
    assert any("could be chance" in i.value for i in at.info)
    charts = plotly_charts(at)
    assert len(charts) == 2
    for spec in charts:  # no empty chart
        assert any(t.get("y") is not None for t in spec["data"]), spec["layout"]["title"]
    scatter = next(c for c in charts if "A vs B" in c["layout"]["title"]["text"])
    assert {t["name"] for t in scatter["data"]} >= {"fixed (4)", "broken (2)", "still wrong (1)", "still right (5)"}
    table = at.dataframe(key="compare_table").value
    assert table["change"].tolist() == ["fixed"] * 4 + ["broken"] * 2
    assert table["label"].iloc[0] == "eel"  # class names, not indices
    config = next(d.value for d in at.dataframe if "change" in d.value and "key" in d.value)
    assert config.set_index("key").loc["lr", ["value_a", "value_b"]].tolist() == ["0.1", "0.05"]
    assert at.button(key="compare_open_A").disabled and at.button(key="compare_open_B").disabled  # none selected


def test_page_switches_run_b_and_split(monkeypatch, folder):
    at = _open(monkeypatch, folder, "better")
    at.selectbox(key="compare_b_better").set_value("base").run()
    assert at.selectbox(key="compare_split_base").options == ["val"]
    at.selectbox(key="compare_b_better").set_value("old").run()
    assert not at.exception
    metrics = _metrics(at)
    assert metrics["Accuracy B"] == ("58.3%", "-16.7 points")  # A is better here: B = old
    assert metrics["Fixed"][0] == "2" and metrics["Broken"][0] == "4"


def test_page_warns_about_different_evaluation_sets(monkeypatch, tmp_path):
    write_run(tmp_path, "a", LABELS, PRED_A, LOSS_A)
    write_run(tmp_path, "b", LABELS[2:], PRED_B[2:], LOSS_B[2:], ids=[f"s{i}" for i in range(2, 12)])
    at = _open(monkeypatch, tmp_path, "a")
    assert any("Different evaluation sets" in w.value for w in at.warning)
    assert _metrics(at)["Samples in both"][0] == "10"


def test_page_compares_regression_runs(monkeypatch, tmp_path):
    labels = [1.0, 2.0, 3.0, 4.0]
    write_run(tmp_path, "a", labels, [1.5, 2.5, 3.5, 4.5], [0.25] * 4, task="regression")
    write_run(tmp_path, "b", labels, [1.1, 2.9, 3.5, 4.0], [0.01, 0.81, 0.25, 0.0], task="regression")
    at = _open(monkeypatch, tmp_path, "a")
    assert not at.error, [e.value for e in at.error]
    metrics = _metrics(at)
    assert metrics["MAE A"][0] == "0.5" and metrics["MAE B"][0] == "0.375"
    assert metrics["Improved"][0] == "2" and metrics["Worsened"][0] == "1"
    charts = plotly_charts(at)
    assert len(charts) == 1 and "|error|" in charts[0]["layout"]["title"]["text"]


def test_page_explains_a_folder_with_one_evaluated_run(monkeypatch, tmp_path):
    write_run(tmp_path, "only", LABELS, PRED_A, LOSS_A)
    RunWriter(tmp_path / "plain", {"name": "plain", "task": "classification"}).close()
    write_run(tmp_path, "reg", [1.0], [2.0], [1.0], task="regression")  # another task: not comparable
    at = _open(monkeypatch, tmp_path, "only")
    assert any("Nothing to compare only with" in i.value and "run.evaluate" in i.value for i in at.info)
    assert not at.get("plotly_chart") and not at.error


def test_page_explains_a_run_without_evaluation(monkeypatch, folder):
    RunWriter(folder / "plain", {"name": "plain", "task": "classification"}).close()
    at = _open(monkeypatch, folder, "plain")
    assert any("has no evaluation to compare" in i.value for i in at.info)
    assert not at.get("plotly_chart")


def test_page_explains_runs_without_a_common_split(monkeypatch, tmp_path):
    write_run(tmp_path, "a", LABELS, PRED_A, LOSS_A)
    write_run(tmp_path, "b", LABELS, PRED_B, LOSS_B, split="test")
    at = _open(monkeypatch, tmp_path, "a")  # not the same data on any split: B is the user's pick
    at.selectbox(key="compare_b_a").set_value("b").run()
    assert any("no evaluated split in common" in i.value for i in at.info)
    assert not at.get("plotly_chart") and not at.exception


def test_page_explains_an_empty_folder_and_a_broken_run(monkeypatch, tmp_path, folder):
    at = _open(monkeypatch, tmp_path / "empty")
    assert any("No runs in" in i.value for i in at.info)
    shutil.copytree(folder / "base", folder / "broken")
    (folder / "broken" / "run.json").write_text("{not json")
    at = _open(monkeypatch, folder, "broken")
    assert any("cannot be shown" in e.value for e in at.error)
    assert not at.get("plotly_chart")


def test_a_selected_sample_opens_in_sample_detail_as_run_b_saw_it(monkeypatch, folder):
    at = _open(monkeypatch, folder, "base")
    first = at.dataframe(key="compare_table").value["sample_id"].iloc[0]
    at.session_state["compare_table"] = {"selection": {"rows": [0], "columns": [], "cells": []}}
    at.run()
    at.button(key="compare_open_B").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert [t.value for t in at.title] == ["Sample detail"]
    assert at.session_state["run_path"] == str(folder / "better") and at.session_state["sample_id"] == first
    assert at.query_params["run"] == "better"  # the sidebar picker shows run B


def test_run_b_defaults_to_the_most_recent_run_on_the_same_data(monkeypatch, tmp_path):
    """The demo's trap: the most recent other run was on other data (digits vs OCT) and was
    picked as B, with a verdict on 85 ids whose labels mostly differed."""
    write_run(tmp_path, "base", LABELS, PRED_A, LOSS_A, class_names=NAMES)
    write_run(tmp_path, "better", LABELS, PRED_B, LOSS_B, class_names=NAMES)
    write_run(tmp_path, "oct", [3, 3, 3, 3, 1, 1, 1, 3, 3, 3, 3, 3], PRED_B, LOSS_B)  # newest; s4-s6 agree: 9 differ
    at = _open(monkeypatch, tmp_path, "base")
    picker = at.selectbox(key="compare_b_base")
    assert picker.value == "better"
    assert picker.options == ["better", "oct (other data)"]
    assert not at.error and _metrics(at)["Fixed"][0] == "4"
    picker.set_value("oct").run()
    assert not at.exception
    assert [e.value for e in at.error] == [
        "These runs cannot be compared: runs base and oct share 12 ids on split 'val' but 9 carry different labels: "
        "they were evaluated on different data — compare runs evaluated on the same samples (the same ids and "
        "labels passed to run.evaluate)"]
    assert not at.get("plotly_chart") and not at.metric


def test_page_says_when_no_other_run_is_on_the_same_data(monkeypatch, tmp_path):
    write_run(tmp_path, "base", LABELS, PRED_A, LOSS_A)
    write_run(tmp_path, "oct", [2] * 12, PRED_B, LOSS_B)
    at = _open(monkeypatch, tmp_path, "base")
    assert any("No other run" in i.value and "same data as base" in i.value for i in at.info)
    picker = at.selectbox(key="compare_b_base")
    assert picker.options == ["oct (other data)"]
    # nothing is compared until a run is asked for: no error box on opening the page
    assert picker.value is None and not at.error and not at.metric
    picker.set_value("oct").run()
    assert len(at.error) == 1 and "evaluated on different data" in at.error[0].value
    assert not at.exception


def test_copies_of_a_run_are_told_apart_by_folder(monkeypatch, folder):
    """A copied run keeps its manifest's name: B is picked by folder, as in the sidebar."""
    shutil.copytree(folder / "better", folder / "better-copy")
    at = _open(monkeypatch, folder, "base")
    picker = at.selectbox(key="compare_b_base")
    assert sorted(picker.options) == ["better", "better-copy", "old"]
    picker.set_value("better-copy").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert picker.value == "better-copy"


def test_by_review_tag_counts_what_b_did_to_the_tagged_samples(monkeypatch, folder):
    from diagnostics.schema import dataset_key
    from diagnostics.tags import TagStore

    at = _open(monkeypatch, folder, "base")
    assert any("Tag the failures on the Error review page" in i.value for i in at.info)  # nothing tagged yet
    key = dataset_key("val", [f"s{i}" for i in range(12)], LABELS)
    # hand count (tests/diagnostics/test_compare.py): s2 s3 s6 fixed, s1 broken, s10 still wrong, s0 still right
    TagStore(folder / "base").add_tags(key, ["s1", "s2", "s3", "s6", "s10"], "too dark")
    TagStore(folder / "old").add_tags(key, ["s0", "s9"], "blurry")  # tagged while reviewing another run
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    table = next(d.value for d in at.dataframe if "tag" in d.value)
    assert table.set_index("tag")[["tagged", "fixed", "broken", "still_wrong", "still_right"]].to_dict("index") == {
        "too dark": {"tagged": 5, "fixed": 3, "broken": 1, "still_wrong": 1, "still_right": 0},
        "blurry": {"tagged": 2, "fixed": 1, "broken": 0, "still_wrong": 0, "still_right": 1}}
    text = "\n".join(m.value for m in at.markdown)
    assert "Of the 5 samples tagged 'too dark', 3 fixed, 1 broken, 1 still wrong, 0 still right." in text
    assert not any("Tag the failures" in i.value for i in at.info)


def test_the_changed_samples_are_searched_by_id_and_open_from_the_search(monkeypatch, folder):
    at = _open(monkeypatch, folder, "base")
    every = at.dataframe(key="compare_table").value
    assert any(c.value.startswith("Rows 1–6 of 6, fixed first") for c in at.caption)
    wanted = every["sample_id"].iloc[4]  # a broken one
    at.text_input(key="compare_id").input(wanted).run()
    found = at.dataframe(key="compare_table").value
    assert wanted in found["sample_id"].tolist()
    assert found["sample_id"].tolist() == [s for s in every["sample_id"] if wanted.lower() in s.lower()]
    row = found["sample_id"].tolist().index(wanted)
    at.session_state["compare_table"] = {"selection": {"rows": [row], "columns": [], "cells": []}}
    at.run()
    at.button(key="compare_open_A").click().run()
    assert at.session_state["sample_id"] == wanted and [t.value for t in at.title] == ["Sample detail"]
