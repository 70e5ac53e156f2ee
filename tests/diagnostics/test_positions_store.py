"""The positions table, the manifest's positions entry and the vocabulary, written by RunWriter
and read back by Run (torch-free; issue #24)."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd

import diagnostics
from diagnostics import schema
from diagnostics.store import RunWriter


def _rows(ids, n_positions, seed):
    """One evaluation's per-sample rows and its positions (every position counted but position 1
    of each sample), as a hand-written table."""
    rng = np.random.default_rng(seed)
    table = []
    for sid in ids:
        for pos in range(n_positions):
            if pos == 1:
                continue
            table.append({"sample_id": str(sid), "position": pos, "label": int(rng.integers(0, 5)),
                          "prediction": int(rng.integers(0, 5)), "loss": float(rng.random() * 3),
                          "confidence": float(rng.random())})
    return pd.DataFrame(table)


def _write_evaluation(w: RunWriter, step: int, split: str, ids: list, frame: pd.DataFrame) -> dict:
    n = len(ids)
    rows = np.zeros((n, len(schema.RECORD_FIELDS)))
    w.add_samples(step, split, ids, rows, [None] * n, [np.zeros(2)] * n,
                  {"positions_counted": np.full(n, 3.0)}, confidence=np.full(n, 0.25))
    w.add_positions(step, split, frame["sample_id"].tolist(), frame["position"].to_numpy(),
                    frame["label"].to_numpy(), frame["prediction"].to_numpy(), frame["loss"].to_numpy(),
                    frame["confidence"].to_numpy())
    return {"split": split, "step": step, "n": n,
            schema.EVAL_POSITIONS: {"shape": [4], "layout": "tokens", "ignore_index": -100, "stored_samples": n,
                                    "total_samples": n, "cap": 200_000, "shift_labels": False}}


def test_positions_read_back_row_by_row(tmp_path):
    w = RunWriter(tmp_path / "run", {"name": "run"}, flush_every_s=3600)
    ids = ["a", "b", "c"]
    first, latest = _rows(ids, 4, seed=0), _rows(ids, 4, seed=1)
    entries = [_write_evaluation(w, 10, "val", ids, first)]
    w.flush()
    entries.append(_write_evaluation(w, 20, "val", ids, latest))
    w.add_vocabulary(20, "val", [0, 1, 7], ["<pad>", "the", "ĠDr"])
    w.update_manifest(evaluations=entries)
    w.close()

    r = diagnostics.open_run(tmp_path / "run")
    got = r.positions("val")
    assert list(got.columns) == [f.name for f in schema.POSITIONS_SCHEMA]
    assert set(got["step"]) == {20}  # the latest evaluation by default
    expected = latest.sort_values(["sample_id", "position"], ignore_index=True)
    pd.testing.assert_frame_equal(got.drop(columns=["split", "step"]), expected, check_dtype=False)
    assert got["position"].dtype == np.int64 and got["label"].dtype == np.int64
    older = r.positions("val", step=10)
    pd.testing.assert_frame_equal(older.drop(columns=["split", "step"]),
                                  first.sort_values(["sample_id", "position"], ignore_index=True), check_dtype=False)
    only_b = r.positions("val", ids=["b"])
    assert set(only_b["sample_id"]) == {"b"} and len(only_b) == 3
    info = r.position_info("val")
    assert info == entries[-1][schema.EVAL_POSITIONS]
    assert r.vocabulary("val") == {0: "<pad>", 1: "the", 7: "ĠDr"}
    samples = r.samples("val")
    assert (samples["confidence"] == 0.25).all() and (samples["positions_counted"] == 3).all()


def test_runs_without_positions_read_empty_and_none(tmp_path):
    w = RunWriter(tmp_path / "run", {"name": "run"}, flush_every_s=3600)
    n = 3
    w.add_samples(0, "val", ["x", "y", "z"], np.zeros((n, len(schema.RECORD_FIELDS))), [np.ones(2) / 2] * n,
                  [np.zeros(2)] * n)
    w.update_manifest(evaluations=[{"split": "val", "step": 0, "n": n}])
    w.close()
    # a run written before the positions table existed has no folder for it
    shutil.rmtree(tmp_path / "run" / "positions")
    shutil.rmtree(tmp_path / "run" / "vocabulary")
    r = diagnostics.open_run(tmp_path / "run")
    got = r.positions("val")
    assert got.empty and list(got.columns) == [f.name for f in schema.POSITIONS_SCHEMA]
    assert r.positions("test").empty  # no evaluation of that split
    assert r.position_info("val") is None and r.position_info("test") is None
    assert r.vocabulary("val") is None
    assert (r.samples("val")["confidence"] == 0.5).all()  # the largest probability, as before
