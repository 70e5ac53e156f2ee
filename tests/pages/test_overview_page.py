"""Overview through AppTest: other runs' curves overlaid on the loss and scalar charts."""

from __future__ import annotations

import json

import numpy as np
from streamlit.testing.v1 import AppTest

from tests.diagnostics.test_compare import LABELS, LOSS_A, LOSS_B, PRED_A, PRED_B, write_run
from tests.pages._app import open_app, plotly_charts, plotly_values


def _open(monkeypatch, runs_dir, run_name: str) -> AppTest:
    return open_app(monkeypatch, runs_dir, run_name=run_name)


def _panels(at: AppTest) -> dict[str, tuple[str, list[dict]]]:
    """The Overview's one chart of curves, by panel: the first word of each panel's title ->
    (the whole title, its traces)."""
    specs = plotly_charts(at)
    assert len(specs) == 1  # loss, lr and the other scalars: one chart of panels
    titles = [a["text"] for a in specs[0]["layout"]["annotations"]]
    by_axis = {}
    for trace in specs[0]["data"]:
        by_axis.setdefault(trace.get("xaxis", "x"), []).append(trace)
    return {t.split(" ")[0]: (t, by_axis.get("x" if i == 0 else f"x{i + 1}", [])) for i, t in enumerate(titles)}


def _layout(at: AppTest) -> dict:
    return plotly_charts(at)[0]["layout"]


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
    title, loss = _panels(at)["loss"]
    assert title == "loss (smoothed 0.6; faint: raw)"
    assert [t["name"] for t in loss] == ["base · raw", "base"] and loss[0]["showlegend"] is False
    overlay.set_value(["norm", "wide"]).run()
    assert not at.exception and not at.error
    panels = _panels(at)
    _, loss = panels["loss"]
    assert [t["name"] for t in loss] == ["base · raw", "base", "norm · raw", "norm", "wide · raw", "wide"]
    np.testing.assert_allclose(plotly_values(loss[2]["y"]), [1.5 - 0.1 * s for s in range(8)])
    assert len({t["line"]["color"] for t in loss[1::2]}) == 3  # one colour per run
    assert [t["showlegend"] for t in loss[1::2]] == [True, True, True]  # one legend entry per run
    title, lr = panels["lr"]  # base alone logged a learning rate
    assert [t["name"] for t in lr] == ["base"] and title == "lr (not logged in: norm, wide)"
    # the scalar base logged as val/acc: wide's val/acc drawn with it, norm's val/accuracy not merged in
    title, acc = panels["val/acc"]
    assert [t["name"] for t in acc] == ["base", "wide"]
    assert [t["showlegend"] for t in acc] == [False, False]  # named once, in the loss panel
    np.testing.assert_allclose(plotly_values(acc[1]["y"]), [0.9])
    assert title == "val/acc (not logged in: norm)"


def test_overview_x_axis_switches_to_time_since_each_start(monkeypatch, tmp_path):
    at = _open(monkeypatch, _folder(tmp_path), "base")
    at.multiselect(key="overlay_base").set_value(["norm"]).run()
    at.radio(key="overview_x").set_value("time").run()
    assert not at.exception
    _, loss = _panels(at)["loss"]
    bottom = [v for k, v in _layout(at).items() if k.startswith("xaxis") and v.get("title")]
    assert bottom and all(v["title"]["text"].startswith("time since the run started") for v in bottom)
    for trace in loss:  # seconds after each run's own created_at, not epoch seconds
        x = plotly_values(trace["x"])
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


def test_a_regression_run_says_its_loss_and_val_loss_are_different_quantities(monkeypatch, tmp_path):
    """The radar demo trains with SmoothL1Loss (0.2 at the end) and evaluates the squared error
    (val/loss 4.7): side by side they read as a 20× overfitting gap."""
    labels = np.linspace(10, 30, 12)
    write_run(tmp_path, "radar", labels, labels + 2.0, np.full(12, 4.0), task="regression",
              config={"target": "breaths/min"},
              scalars=[(s, "loss", 1.0 / (s + 1)) for s in range(10)] + [(9, "val/loss", 4.0), (9, "val/mae", 2.0)])
    manifest = tmp_path / "radar" / "run.json"  # as hooks.watch records it: the loss function's name
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "loss_fn": "SmoothL1Loss"}))
    at = _open(monkeypatch, tmp_path, "radar")
    assert "val/loss" in next(w for w in at.multiselect if w.label == "Other scalars").value
    (note,) = [c.value for c in at.caption if "different quantities" in c.value]
    assert "val/loss is the evaluation's mean squared error" in note and "(breaths/min)²" in note
    assert "SmoothL1Loss" in note
    write_run(tmp_path / "other", "cls", [0, 1], [0, 1], [0.1, 0.2], scalars=[(0, "loss", 1.0), (0, "val/loss", 0.5)])
    at = _open(monkeypatch, tmp_path / "other", "cls")
    assert "val/loss" in next(w for w in at.multiselect if w.label == "Other scalars").value
    assert not [c for c in at.caption if "different quantities" in c.value]  # cross-entropy both
