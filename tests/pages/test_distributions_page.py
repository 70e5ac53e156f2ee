"""The Distributions page's "Compare with other runs" through Streamlit's AppTest, over
hand-built runs whose medians are known."""

from __future__ import annotations

import json

import numpy as np
from streamlit.testing.v1 import AppTest

from tests.diagnostics.test_across_runs import write_dist_run
from tests.pages._app import open_app, plotly_charts, plotly_values

PAGE = "pages/distributions.py"


def _open(monkeypatch, runs_dir, run_name: str) -> AppTest:
    return open_app(monkeypatch, runs_dir, PAGE, run_name)


def _values(value) -> list:
    """A trace's array as a list, to compare with ==."""
    return plotly_values(value).tolist()


def _chart(at: AppTest, words: str) -> dict | None:
    return next((s for s in plotly_charts(at) if words in s["layout"]["title"]["text"]), None)


def test_picking_a_second_run_draws_both_on_one_step_axis(monkeypatch, tmp_path):
    write_dist_run(tmp_path, "base", {("activation", "conv1"): {0: 0.0, 2: 1.0, 4: 2.0}})
    write_dist_run(tmp_path, "norm", {("activation", "conv1"): {0: 5.0, 3: 6.0, 6: 7.0},
                                      ("activation", "conv2"): {0: 0.0}})
    write_dist_run(tmp_path, "other", {("gradient", "conv1"): {0: 0.0}})  # another kind: not offered
    at = _open(monkeypatch, tmp_path, "base")
    pick = at.multiselect(key="dist_compare_activation_conv1")
    assert pick.options == ["norm"] and pick.value == []
    assert _chart(at, "run by run") is None  # nothing picked: only the run's own charts
    pick.set_value(["norm"]).run()
    assert not at.exception, [e.value for e in at.exception]
    spec = _chart(at, "median and band, run by run")
    medians = {t["name"]: t for t in spec["data"] if t.get("showlegend") is not False}
    assert list(medians) == ["base", "norm"]
    assert _values(medians["base"]["x"]) == [0, 2, 4] and _values(medians["norm"]["x"]) == [0, 3, 6]
    np.testing.assert_allclose(_values(medians["norm"]["y"]), [5.0, 6.0, 7.0])
    assert spec["layout"]["xaxis"]["range"] == [-0.5, 6.5]
    assert _chart(at, "conv1: histogram over steps") is not None  # the run's own heatmap stays
    assert _chart(at, "histograms over steps") is None  # side by side only when asked for
    at.toggle(key="dist_runs_histograms").set_value(True).run()
    heatmaps = [t for t in _chart(at, "conv1: histograms over steps")["data"] if t["type"] == "heatmap"]
    assert [t["name"] for t in heatmaps] == ["base", "norm"]


def test_the_picks_follow_to_other_layers_and_runs_without_peers_say_so(monkeypatch, tmp_path):
    write_dist_run(tmp_path, "base", {("activation", "conv1"): {0: 0.0}, ("activation", "conv2"): {0: 0.0}})
    write_dist_run(tmp_path, "norm", {("activation", "conv1"): {0: 1.0}, ("activation", "conv2"): {0: 1.0}})
    write_dist_run(tmp_path, "solo", {("weight", "w"): {0: 1.0}})
    at = _open(monkeypatch, tmp_path, "base")
    at.multiselect(key="dist_compare_activation_conv1").set_value(["norm"]).run()
    at.selectbox(key="dist_layer_activation").set_value("conv2").run()
    assert at.multiselect(key="dist_compare_activation_conv2").value == ["norm"]
    assert _chart(at, "activation of conv2: median and band") is not None
    at = _open(monkeypatch, tmp_path, "solo")
    assert not at.multiselect and any("No other run of this folder recorded the weight of w:" in c.value
                                      for c in at.caption)


def test_the_compared_runs_loss_and_metrics_share_one_chart(monkeypatch, tmp_path):
    write_dist_run(tmp_path, "base", {("activation", "conv1"): {0: 0.0, 2: 1.0}},
                   scalars={"loss": {0: 2.0, 1: 1.5, 2: 1.0}, "val/acc": {2: 0.5}, "lr": {0: 0.1}})
    write_dist_run(tmp_path, "norm", {("activation", "conv1"): {0: 5.0, 2: 6.0}},
                   scalars={"loss": {0: 2.0, 1: 0.5, 2: 0.25}, "val/acc": {2: 0.9}})
    at = _open(monkeypatch, tmp_path, "base")
    curves = plotly_charts(at)
    assert not any("val/acc" in json.dumps(c["layout"].get("annotations", [])) for c in curves)  # nothing picked
    at.multiselect(key="dist_compare_activation_conv1").set_value(["norm"]).run()
    assert not at.exception, [e.value for e in at.exception]
    spec = next(s for s in plotly_charts(at) if "val/acc" in json.dumps(s["layout"].get("annotations", [])))
    titles = [a["text"] for a in spec["layout"]["annotations"]]
    assert titles[0].startswith("loss") and titles[1] == "val/acc"  # loss and the run's metric, not lr
    lines = {(t["name"], t["xaxis"]): t for t in spec["data"] if t.get("name") in ("base", "norm")}
    np.testing.assert_allclose(_values(lines[("norm", "x2")]["y"]), [0.9])
    assert _values(lines[("base", "x2")]["y"]) == [0.5]
    assert any("Their loss and metrics" in c.value for c in at.caption)
