"""Every page through Streamlit's AppTest: a recorded run, an empty folder, a broken run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from tests.pages._app import assert_ok, plotly_charts, plotly_values, run_app

TRAINING_PAGES = ["pages/overview.py", "pages/distributions.py", "pages/outputs.py"]
REVIEW_PAGES = ["pages/errors.py", "pages/embedding.py", "pages/sample.py", "pages/datamap.py"]
PAGES = TRAINING_PAGES + REVIEW_PAGES


def _open(monkeypatch, runs_dir, page: str, run_name: str | None = None) -> AppTest:
    at = run_app(monkeypatch, runs_dir, run_name)
    if run_name is not None:
        assert at.session_state["run_path"] == str(Path(runs_dir) / run_name)
        label = at.selectbox[0].value  # "BADGE folder[ · state]": the health badge first
        assert label.split(" · ")[0].endswith(f" {run_name}")
    if page != "pages/overview.py":
        at.switch_page(page).run()
    assert_ok(at)
    return at


@pytest.mark.parametrize("page,run_name", [(p, r) for p in TRAINING_PAGES for r in ("cls", "reg")]
                         + [(p, "review") for p in REVIEW_PAGES]
                         + [("pages/errors.py", "reg"), ("pages/sample.py", "reg")])
def test_page_shows_charts_with_data_for_a_recorded_run(monkeypatch, recorded_runs, page, run_name):
    at = _open(monkeypatch, recorded_runs, page, run_name)
    assert not at.error, [e.value for e in at.error]
    charts = plotly_charts(at)
    # the Overview's loss, learning rate and other scalars are panels of one chart
    single = (page in ("pages/datamap.py", "pages/embedding.py", "pages/overview.py")
              or run_name == "reg" and page != "pages/errors.py")
    assert len(charts) >= (1 if single else 2), [i.value for i in at.info]
    for spec in charts:  # no chart is empty: each has a trace with data
        assert any(t.get("x") is not None or t.get("z") is not None or t.get("y") is not None
                   for t in spec["data"]), spec["layout"].get("title")


def test_distributions_page_switches_kind_and_layer(monkeypatch, recorded_runs):
    at = _open(monkeypatch, recorded_runs, "pages/distributions.py", "cls")
    at.selectbox(key="dist_kind").set_value("param_grad").run()
    at.selectbox(key="dist_layer_param_grad").set_value("3.weight").run()
    assert not at.exception
    titles = [c["layout"]["title"]["text"] for c in plotly_charts(at)]
    assert any("param_grad of 3.weight" in t for t in titles)


@pytest.mark.parametrize("page", PAGES)
def test_page_explains_an_empty_runs_folder(monkeypatch, tmp_path, page):
    at = _open(monkeypatch, tmp_path, page)
    assert any("No runs in" in i.value for i in at.info)
    assert not at.get("plotly_chart")


@pytest.mark.parametrize("page", PAGES)
def test_page_explains_a_broken_run(monkeypatch, tmp_path, recorded_runs, page):
    broken = tmp_path / "broken"
    shutil.copytree(recorded_runs / "cls", broken)
    (broken / "run.json").write_text("{not json")
    at = _open(monkeypatch, tmp_path, page, "broken")
    assert any("cannot be shown" in e.value and "run.json" in e.value for e in at.error)
    assert not at.get("plotly_chart")


def test_outputs_page_pools_class_counts_over_captures(monkeypatch, recorded_runs):
    at = _open(monkeypatch, recorded_runs, "pages/outputs.py", "cls")
    at.toggle(key="outputs_pool").set_value(True).run()
    assert not at.exception
    chart = plotly_charts(at)[0]
    assert "4 captures pooled" in chart["layout"]["title"]["text"]
    labels = plotly_values([t for t in chart["data"] if t.get("name") == "labels"][0]["y"])
    # 4 captures of 16 labels each, pooled: shares over 64 labels
    assert labels.sum() == pytest.approx(1.0) and np.allclose(labels * 64, np.round(labels * 64))


def test_distributions_page_shows_update_to_weight_ratio(monkeypatch, recorded_runs):
    at = _open(monkeypatch, recorded_runs, "pages/distributions.py", "cls")
    at.selectbox(key="dist_kind").set_value("update").run()
    at.selectbox(key="dist_layer_update").set_value("3.weight").run()
    assert not at.exception
    ratio = [c for c in plotly_charts(at) if "update-to-weight ratio of 3.weight" in c["layout"]["title"]["text"]]
    assert ratio and plotly_values(ratio[0]["data"][0]["y"]).min() > 0


@pytest.mark.parametrize("page", REVIEW_PAGES)
def test_review_pages_explain_what_to_record(monkeypatch, recorded_runs, page):
    at = _open(monkeypatch, recorded_runs, page, "cls")
    assert any("run.evaluate" in i.value or "ids=" in i.value for i in at.info)


@pytest.mark.parametrize("run_name", ["cls", "reg", "review"])
def test_health_page_lists_problems_with_evidence_or_says_all_clear(monkeypatch, recorded_runs, run_name):
    import diagnostics
    from diagnostics import health

    at = _open(monkeypatch, recorded_runs, "pages/health.py", run_name)
    assert not at.error, [e.value for e in at.error]
    run = diagnostics.open_run(recorded_runs / run_name)
    findings, problems = run.health(), health.problems(run)
    if findings:  # one expander and one evidence chart per problem; every finding in the table below
        assert len(at.expander) == len(problems)
        assert len(plotly_charts(at)) == len(problems)
        assert len(at.dataframe[0].value) == len(findings)
    else:
        assert any("No finding" in s.value for s in at.success)


@pytest.fixture(scope="module")
def two_rank_run(recorded_runs, tmp_path_factory):
    """The "cls" run plus a second rank's stream whose summaries are shifted by +100, as
    two DDP processes would record (without spawning them)."""
    import diagnostics
    from diagnostics import schema
    from diagnostics.store import RunWriter

    folder = tmp_path_factory.mktemp("ranks")
    path = folder / "ddp"
    shutil.copytree(recorded_runs / "cls", path)
    manifest = json.loads((path / "run.json").read_text())
    manifest["world_size"], manifest["name"] = 2, "ddp"
    (path / "run.json").write_text(json.dumps(manifest))
    source = diagnostics.open_run(path)
    writer = RunWriter(path, {}, rank=1)
    for kind in ("activation", "weight", "output", "label"):
        d = source.distributions(kind)
        width = max(len(h) for h in d["hist_counts"])
        for step, part in d.groupby("step"):
            matrix = np.full((len(part), len(schema.SUMMARY_FIELDS) + width), -1.0)
            for i, (_, row) in enumerate(part.iterrows()):
                head = [row[f] for f in schema.SUMMARY_FIELDS]
                if kind in ("activation", "weight"):
                    head[schema.SUMMARY_FIELDS.index("mean")] += 100.0
                matrix[i, :len(head)] = head
                matrix[i, len(head):len(head) + len(row["hist_counts"])] = row["hist_counts"]
            writer.add_summaries(int(step), list(part["layer"]), list(part["kind"]), matrix)
    writer.close("finished")
    return folder


def test_pages_show_one_rank_of_a_distributed_run(monkeypatch, two_rank_run):
    """Several ranks: Distributions and Outputs show the picked rank's stream, never a
    blend of ranks (outputs of one rank against labels of another)."""
    import diagnostics

    r = diagnostics.open_run(two_rank_run / "ddp")
    last = r.distributions("activation", layers=["0"]).sort_values("step")
    at = _open(monkeypatch, two_rank_run, "pages/distributions.py", "ddp")
    at.selectbox(key="dist_kind").set_value("activation").run()
    at.selectbox(key="dist_layer_activation").set_value("0").run()
    for rank in (0, 1):
        at.selectbox(key="dist_rank").set_value(rank).run()
        assert not at.exception
        mean = last[last["rank"] == rank]["mean"].iloc[-1]
        assert f"mean {mean:.4g}," in at.caption[0].value
    at = _open(monkeypatch, two_rank_run, "pages/outputs.py", "ddp")
    assert at.selectbox(key="outputs_rank").options == ["rank 0", "rank 1"]
    assert "on rank 0" in at.caption[-1].value


def test_overview_draws_each_other_scalar_in_its_own_panel(monkeypatch, recorded_runs):
    """A gradient norm of 5 on the axis of an accuracy of 0.97 flattens the accuracy: one
    panel (own y axis) per scalar; a grad_clipped that never left 0 is not picked by default."""
    at = _open(monkeypatch, recorded_runs, "pages/overview.py", "cls")
    picker = next(w for w in at.multiselect if w.label == "Other scalars")  # after "Overlay other runs"
    assert "grad_norm" in picker.value and "grad_clipped" not in picker.value
    (panels,) = plotly_charts(at)  # loss, lr, then a panel per picked scalar
    titles = [a["text"] for a in panels["layout"]["annotations"]]
    assert titles[0].startswith("loss") and titles[1] == "lr" and titles[2:] == picker.value
    assert len({t.get("yaxis", "y") for t in panels["data"]}) == 2 + len(picker.value)


def test_overview_model_table_counts_parameters_with_children(monkeypatch, recorded_runs):
    at = _open(monkeypatch, recorded_runs, "pages/overview.py", "cls")
    assert not any("params (own)" in d.value.columns for d in at.dataframe)  # filled once opened
    at.session_state["overview_config"] = True
    at.run()
    table = next(d.value for d in at.dataframe if "params (own)" in d.value.columns)
    import diagnostics

    run = diagnostics.open_run(recorded_runs / "cls")
    total = sum(p["numel"] for p in run.manifest["parameters"])
    assert table["params (with children)"].iloc[0] == total > 0
    assert table["params (own)"].iloc[0] == 0  # the root container holds none itself
    leaves = table[table["leaf"]]
    assert (leaves["params (with children)"] == leaves["params (own)"]).all()
