"""Overview through AppTest: other runs' curves overlaid on the loss and scalar charts."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
from streamlit.testing.v1 import AppTest

from tests.diagnostics.test_compare import LABELS, LOSS_A, LOSS_B, PRED_A, PRED_B, write_run

APP = str(Path(__file__).resolve().parents[2] / "streamlit_app.py")


def _open(monkeypatch, runs_dir, run_name: str) -> AppTest:
    monkeypatch.setenv("DIAGNOSTICS_RUNS", str(runs_dir))
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params["run"] = run_name
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _values(value) -> np.ndarray:
    """Plotly JSON holds arrays as lists or as base64 typed arrays."""
    if isinstance(value, dict) and "bdata" in value:
        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
    return np.asarray(value, dtype=float)


def _charts(at: AppTest) -> dict[str, dict]:
    """Charts by title; the small multiples of the other scalars (no title) as "scalars"."""
    specs = [json.loads(el.proto.spec) for el in at.get("plotly_chart")]
    return {spec["layout"].get("title", {}).get("text", "scalars"): spec for spec in specs}


def _folder(tmp_path):
    write_run(tmp_path, "base", LABELS, PRED_A, LOSS_A,
              scalars=[(s, "loss", 2.0 - 0.1 * s) for s in range(10)] + [(9, "val/acc", 0.6), (9, "lr", 0.1)])
    write_run(tmp_path, "norm", LABELS, PRED_B, LOSS_B,
              scalars=[(s, "loss", 1.5 - 0.1 * s) for s in range(8)] + [(7, "val/accuracy", 0.8)])
    write_run(tmp_path, "wide", LABELS, PRED_B, LOSS_B,
              scalars=[(s, "loss", 1.0) for s in range(5)] + [(4, "val/acc", 0.9)])
    return tmp_path


def test_overview_overlays_the_picked_runs_one_colour_each(monkeypatch, tmp_path):
    at = _open(monkeypatch, _folder(tmp_path), "base")
    overlay = at.multiselect(key="overlay_base")
    assert overlay.options == ["norm", "wide"] and overlay.value == []  # not itself; none by default
    loss = _charts(at)["loss"]
    assert [t["name"] for t in loss["data"]] == ["loss · raw", "loss · smoothed (0.6)"]
    overlay.set_value(["norm", "wide"]).run()
    assert not at.exception and not at.error
    charts = _charts(at)
    loss = charts["loss"]
    assert [t["name"] for t in loss["data"]] == ["base · raw", "base", "norm · raw", "norm", "wide · raw", "wide"]
    np.testing.assert_allclose(_values(loss["data"][2]["y"]), [1.5 - 0.1 * s for s in range(8)])
    assert len({t["line"]["color"] for t in loss["data"][1::2]}) == 3  # one colour per run
    lr = charts["learning rate"]  # base alone logged a learning rate
    assert [t["name"] for t in lr["data"]] == ["base"]
    assert lr["layout"]["annotations"][0]["text"] == "not logged under this name in: norm, wide"
    # the scalar base logged as val/acc: wide's val/acc drawn with it, norm's val/accuracy not merged in
    panels = charts["scalars"]  # one chart, a panel per scalar: here val/acc alone
    assert [t["name"] for t in panels["data"]] == ["base", "wide"]
    assert [t["showlegend"] for t in panels["data"]] == [True, True]
    np.testing.assert_allclose(_values(panels["data"][1]["y"]), [0.9])
    assert panels["layout"]["annotations"][0]["text"] == "val/acc (not logged in: norm)"


def test_overview_x_axis_switches_to_time_since_each_start(monkeypatch, tmp_path):
    at = _open(monkeypatch, _folder(tmp_path), "base")
    at.multiselect(key="overlay_base").set_value(["norm"]).run()
    at.radio(key="overview_x").set_value("time").run()
    assert not at.exception
    loss = _charts(at)["loss"]
    assert loss["layout"]["xaxis"]["title"]["text"].startswith("time since the run started")
    for trace in loss["data"]:  # seconds after each run's own created_at, not epoch seconds
        x = _values(trace["x"])
        assert 0 <= x.min() and x.max() < 60


def test_overview_picks_the_users_metrics_by_default_not_the_health_rules_scalars(monkeypatch, tmp_path):
    """The demo's digits run showed batchnorm_batch_size and grad_carried (recorded for the loop
    rules) and the one-point train/ evaluation by default, and not val/accuracy."""
    tool = [(s, name, 1.0) for s in range(0, 10, 5) for name in ("grad_carried", "batchnorm_batch_size",
                                                                  "no_grad_forward_train_mode", "probe/val/max")]
    write_run(tmp_path, "run", LABELS, PRED_A, LOSS_A,
              scalars=[(s, "loss", 2.0 - 0.1 * s) for s in range(10)] + tool
              + [(9, "train/accuracy", 0.99), (9, "train/loss", 0.1), (4, "val/accuracy", 0.7),
                 (9, "val/accuracy", 0.8), (9, "val/loss", 0.5), (4, "grad_norm", 2.0)])
    at = _open(monkeypatch, tmp_path, "run")
    picker = next(w for w in at.multiselect if w.label == "Other scalars")
    assert picker.value == ["val/accuracy", "val/loss", "train/accuracy", "train/loss"]
    assert "grad_carried" in picker.options  # still there to pick
