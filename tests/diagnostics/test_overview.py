"""What the Overview shows, without Streamlit: the headline, the module table, the default scalars."""

from __future__ import annotations

import numpy as np
import pandas as pd

from diagnostics import overview, schema

MANIFEST = {
    "task": "classification", "model_class": "Net", "num_parameters": 1234, "steps": 7,
    "modules": [{"name": "", "type": "Net", "leaf": False, "params": 0},
                {"name": "body", "type": "Sequential", "leaf": False, "params": 0},
                {"name": "body.0", "type": "Conv2d", "leaf": True, "params": 100},
                {"name": "body.1", "type": "ReLU", "leaf": True, "params": 0},
                {"name": "head", "type": "Linear", "leaf": True, "params": 34}],
    "output_shapes": {"body.0": [8, 4, 4], "head": [10]},
}


def test_module_table_counts_parameters_with_children():
    table = overview.module_table(MANIFEST).set_index("name")
    assert table["params (with children)"].to_dict() == {"": 134, "body": 100, "body.0": 100, "body.1": 0, "head": 34}
    assert table["params (own)"].tolist() == [0, 0, 100, 0, 34]
    assert table.loc["head", "output shape"] == "[10]" and table.loc["body", "output shape"] == ""
    assert overview.module_table({}).empty
    assert overview.module_types(MANIFEST)["body.0"] == "Conv2d"


def test_headline_says_the_last_step_as_the_picker_does_and_names_what_is_missing():
    head = overview.headline(MANIFEST, {"state": "finished", "last_step": 5})
    assert head == {"state": "finished", "last_step": "5", "task": "classification", "model": "Net",
                    "parameters": "1,234"}
    assert overview.headline(MANIFEST, {"state": "finished", "last_step": -1})["last_step"] == "6"  # 7 steps: 0-6
    bare = overview.headline({}, {"state": "running", "last_step": 1234})  # a RunWriter run: no model recorded
    assert bare == {"state": "running", "last_step": "1,234", "task": "—", "model": "—", "parameters": "—"}
    assert overview.headline({}, {"state": "running", "last_step": -1})["last_step"] == "—"


def test_a_metric_logged_under_two_names_gets_one_default_panel():
    scalars = _scalars({"val/acc": [0.5, np.nan, 0.7], "val/accuracy": [0.5, np.nan, 0.7], "val/top5": [0.5, 0.8, 0.9],
                        "val/mae": [2.0, 1.0, 1.0], "val/mae_bpm": [2.0, 1.0, 1.0]})
    assert overview.default_scalars(scalars) == ["val/acc", "val/mae", "val/top5"]
    assert "val/accuracy" in overview.other_scalars(scalars)  # still there to pick: the names are the user's


def test_loss_note_says_when_loss_and_val_loss_are_different_quantities():
    radar = {"task": "regression", "loss_fn": "SmoothL1Loss", "config": {"target": "breaths/min"}}
    note = overview.loss_note(radar, ["loss", "val/loss", "val/mae"])
    assert "SmoothL1Loss" in note and "val/loss" in note and "(breaths/min)²" in note and "val/mae" not in note
    assert overview.loss_note(radar, ["loss", "val/mae"]) is None                  # no evaluation loss drawn
    assert overview.loss_note({**radar, "loss_fn": "MSELoss"}, ["loss", "val/loss"]) is None  # the same quantity
    assert overview.loss_note({**radar, "task": "classification"}, ["loss", "val/loss"]) is None
    assert overview.loss_note({**radar, "loss_fn": "mse_loss"}, ["loss", "val/loss"]) is None  # F.mse_loss
    assert overview.loss_note({"task": "regression"}, ["loss", "val/loss"]) is None  # not recorded: unknown
    assert "the target's unit squared" in overview.loss_note({"task": "regression", "loss_fn": "L1Loss"},
                                                             ["loss", "test/loss"])


def _scalars(values: dict[str, list[float]]) -> pd.DataFrame:
    return pd.DataFrame([{"step": i, "name": name, "value": v, "rank": 0}
                         for name, vs in values.items() for i, v in enumerate(vs)])


def test_default_scalars_are_the_users_metrics_first_never_the_health_rules_scalars():
    scalars = _scalars({"loss": [1.0], "lr": [0.1], "lr/head": [0.1], "val/acc": [0.5], "train/acc": [0.6],
                        "grad_norm": [2.0], "grad_clipped": [0.0], f"{schema.PROBE_PREFIX}x": [1.0],
                        schema.LOOP_SCALARS[0]: [1.0], "empty": [np.nan]})
    assert overview.learning_rate_names(scalars) == ["lr", "lr/head"]
    assert "loss" not in overview.other_scalars(scalars) and "lr" not in overview.other_scalars(scalars)
    assert overview.default_scalars(scalars) == ["val/acc", "train/acc", "grad_norm"]  # clipping never engaged


def test_overlay_candidates_leave_out_the_run_itself_and_broken_runs(tmp_path):
    runs = pd.DataFrame({"name": ["me", "other", "bad"], "state": ["finished", "running", "broken"],
                         "path": [str(tmp_path / "me"), str(tmp_path / "other"), str(tmp_path / "bad")]})
    assert overview.overlay_candidates(runs, tmp_path / "me")["name"].tolist() == ["other"]


def test_capture_gap_note_says_why_the_end_of_a_run_has_no_capture():
    auto = {"watch": {"every": "auto", "budget": 0.03}}
    note = overview.capture_gap_note(auto, 180, 128)  # the radar demo: 52 steps after its last capture
    assert "step 180" in note and "automatic schedule" in note and "3% cost budget" in note and "every=N" in note
    assert overview.capture_gap_note(auto, 180, 170) == ""  # within a tenth of the run
    assert overview.capture_gap_note({"watch": {"every": 50}}, 199, 150) == ""
    assert "it captures every 50 steps" in overview.capture_gap_note({"watch": {"every": 50}}, 299, 150)
    assert overview.capture_gap_note({}, 100, 10).endswith("without another capture.")


def test_fault_lines_say_what_is_missing_once_per_fault():
    from diagnostics.overview import fault_lines

    same = {"part": "activations", "error": "ValueError: x", "step": 3, "switched_off": True}
    status = {"faults": [{**same, "rank": "0"}, {**same, "rank": "1"},
                         {"part": "optimizer", "error": "RuntimeError: y", "step": 5, "switched_off": True,
                          "stops_all": True, "rank": "0"},
                         {"part": "writer", "error": "OSError: full", "rank": "1", "switched_off": False}]}
    lines = fault_lines(status)
    assert len(lines) == 3
    assert "activations part" in lines[0] and "ranks 0, 1" in lines[0] and "step 3" in lines[0]
    assert lines[1].startswith("The recording stopped at step 5") and "nothing after it" in lines[1]
    assert lines[2].startswith("Writing failed (rank 1: OSError: full)")
    assert fault_lines({"state": "finished"}) == []


def test_module_table_shows_batch_first_where_recorded_and_blank_elsewhere():
    from diagnostics.overview import module_table
    lstm = {"name": "lstm", "type": "LSTM", "leaf": True, "params": 8, "batch_first": False}
    table = module_table({"modules": [{"name": "", "type": "Net", "leaf": False, "params": 0}, lstm]})
    assert table["batch_first"].tolist() == ["", "False"]
