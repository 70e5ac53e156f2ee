"""The run directory through RunWriter, open_run and list_runs (torch-free)."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

import diagnostics
from diagnostics import schema
from diagnostics.exceptions import RunFormatError, RunNotFoundError
from diagnostics.store import RunWriter

NF = len(schema.SUMMARY_FIELDS)
INT_FIELDS = ("count", "nan_count", "inf_count")
FLOAT_FIELDS = tuple(c for c in schema.SUMMARY_FIELDS if c not in INT_FIELDS)


# -- helpers -------------------------------------------------------------------------

def writer(path, rank=0, **manifest) -> RunWriter:
    """A writer that only flushes when told to (no background flush during a test)."""
    return RunWriter(path, {"name": "test", **manifest}, rank=rank, flush_every_s=3600)


def summary_rows(rng: np.random.Generator, hist_lens: list[int]) -> tuple[np.ndarray, list[dict]]:
    """A summary matrix (SUMMARY_FIELDS then histogram, -1 padded) and the rows it encodes."""
    width = NF + max(hist_lens)
    matrix = np.full((len(hist_lens), width), -1.0)
    rows = []
    for i, h in enumerate(hist_lens):
        row = {}
        for j, name in enumerate(schema.SUMMARY_FIELDS):
            v = (float(rng.integers(0, 10**6)) if name in INT_FIELDS
                 else float(rng.normal() * 10.0 ** rng.integers(-3, 6)))
            matrix[i, j] = v
            row[name] = v
        counts = rng.integers(0, 5000, size=h)
        matrix[i, NF:NF + h] = counts
        row["hist_counts"] = counts.tolist()
        rows.append(row)
    return matrix, rows


def assert_rows_equal(df: pd.DataFrame, expected: list[dict]) -> None:
    """df (any order) holds exactly the expected rows, values bit-exact."""
    key = ["layer", "kind", "step", "rank"]
    exp = pd.DataFrame(expected).sort_values(key).reset_index(drop=True)
    got = df.sort_values(key).reset_index(drop=True)
    assert len(got) == len(exp)
    for c in key:
        assert got[c].tolist() == exp[c].tolist(), c
    for c in INT_FIELDS:
        assert got[c].astype("int64").tolist() == [int(v) for v in exp[c]], c
    for c in FLOAT_FIELDS:
        np.testing.assert_array_equal(got[c].to_numpy(dtype=float), exp[c].to_numpy(dtype=float), err_msg=c)
    assert [list(map(int, h)) for h in got["hist_counts"]] == exp["hist_counts"].tolist()


def write_steps(w: RunWriter, steps, layers=("conv", "fc"), kinds=("activation", "gradient"),
                seed=0, rank=0, hist_lens=None) -> list[dict]:
    rng = np.random.default_rng(seed)
    expected = []
    for step in steps:
        row_layers = [l for l in layers for _ in kinds]
        row_kinds = [k for _ in layers for k in kinds]
        lens = hist_lens or [schema.HIST_BINS] * len(row_layers)
        matrix, rows = summary_rows(rng, lens)
        w.add_summaries(step, row_layers, row_kinds, matrix)
        for r, l, k in zip(rows, row_layers, row_kinds):
            expected.append({"step": step, "layer": l, "kind": k, "rank": rank, **r})
    return expected


def parts(path: Path, table: str) -> list[str]:
    return sorted(p.name for p in (path / table).iterdir())


def set_status(path: Path, rank: int, **entries) -> None:
    f = path / schema.STATUS_DIR / f"rank{rank}.json"
    s = json.loads(f.read_text())
    s.update(entries)
    f.write_text(json.dumps(s))


# -- round trips ------------------------------------------------------------------------

def test_scalars_round_trip_and_filters(tmp_path):
    w = writer(tmp_path)
    rng = np.random.default_rng(1)
    loss = rng.normal(size=20) * 1e3
    lr = rng.uniform(size=20) * 1e-3
    for s in range(20):
        w.add_scalar(s, "loss", loss[s])
        w.add_scalars(s, {"lr": lr[s], "acc": s / 19})
        if s % 7 == 0:
            w.flush()
    t0 = time.time()
    w.close()
    run = diagnostics.open_run(tmp_path)
    df = run.scalars()
    assert list(df.columns) == [f.name for f in schema.SCALARS_SCHEMA]
    assert len(df) == 60
    assert df["name"].tolist() == ["acc"] * 20 + ["loss"] * 20 + ["lr"] * 20  # ordered by name, step
    got = df[df["name"] == "loss"]
    assert got["step"].tolist() == list(range(20))
    np.testing.assert_array_equal(got["value"].to_numpy(), loss)
    np.testing.assert_array_equal(df[df["name"] == "lr"]["value"].to_numpy(), lr)
    assert (df["rank"] == 0).all()
    assert ((df["wall_time_s"] > t0 - 60) & (df["wall_time_s"] <= t0 + 1)).all()

    only = run.scalars(names=["lr"])
    assert set(only["name"]) == {"lr"} and len(only) == 20
    assert len(run.scalars(names=["lr", "loss"])) == 40
    assert len(run.scalars(names=["nope"])) == 0
    assert len(run.scalars(rank=0)) == 60 and len(run.scalars(rank=1)) == 0


def test_distributions_round_trip_exact(tmp_path):
    w = writer(tmp_path)
    expected = write_steps(w, range(0, 30, 3), seed=2)
    w.flush()
    expected += write_steps(w, [30, 33], seed=3)
    w.close()
    run = diagnostics.open_run(tmp_path)
    df = run.distributions("activation")
    assert list(df.columns) == [f.name for f in schema.DISTRIBUTIONS_SCHEMA]
    assert_rows_equal(df, [r for r in expected if r["kind"] == "activation"])
    assert_rows_equal(run.distributions("gradient"), [r for r in expected if r["kind"] == "gradient"])
    assert len(run.distributions("weight")) == 0
    assert run.kinds() == ["activation", "gradient"]
    assert run.steps("gradient") == list(range(0, 34, 3))


def test_distributions_filters(tmp_path):
    w = writer(tmp_path)
    expected = write_steps(w, range(10), layers=("a", "b", "c"), seed=4)
    w.close()
    run = diagnostics.open_run(tmp_path)
    act = [r for r in expected if r["kind"] == "activation"]

    df = run.distributions("activation", layers=["b"])
    assert_rows_equal(df, [r for r in act if r["layer"] == "b"])
    df = run.distributions("activation", layers=["a", "c"], steps=[2, 7, 99])
    assert_rows_equal(df, [r for r in act if r["layer"] in ("a", "c") and r["step"] in (2, 7)])
    df = run.distributions("activation", steps=np.array([5], dtype=np.int64))
    assert_rows_equal(df, [r for r in act if r["step"] == 5])
    assert len(run.distributions("activation", rank=0)) == len(act)
    assert len(run.distributions("activation", rank=1)) == 0
    assert len(run.distributions("activation", layers=[])) == 0
    with pytest.raises(ValueError, match="unknown kind"):
        run.distributions("activations")


def test_short_histograms_are_unpadded(tmp_path):
    """Class histograms (shorter than the matrix) lose only their trailing -1 padding."""
    w = writer(tmp_path)
    expected = write_steps(w, [0, 1], layers=("class", "logits"), kinds=("output",),
                           hist_lens=[3, 64], seed=5)
    w.close()
    df = diagnostics.open_run(tmp_path).distributions("output")
    assert_rows_equal(df, expected)
    assert [len(h) for h in df.sort_values(["layer", "step"])["hist_counts"]] == [3, 3, 64, 64]


def test_nan_statistics_round_trip(tmp_path):
    w = writer(tmp_path)
    m = np.full((1, NF + 4), 0.0)
    m[0, schema.SUMMARY_FIELDS.index("mean")] = np.nan
    m[0, schema.SUMMARY_FIELDS.index("max")] = np.inf
    m[0, schema.SUMMARY_FIELDS.index("count")] = 5
    m[0, NF:] = [0, 7, 0, -1]
    w.add_summaries(3, ["x"], ["weight"], m)
    w.close()
    row = diagnostics.open_run(tmp_path).distributions("weight").iloc[0]
    assert math.isnan(row["mean"]) and row["max"] == np.inf and row["count"] == 5
    assert list(row["hist_counts"]) == [0, 7, 0]


def test_add_summaries_rejects_mismatched_lengths(tmp_path):
    w = writer(tmp_path)
    with pytest.raises(ValueError):
        w.add_summaries(0, ["a", "b"], ["activation"], np.zeros((2, NF + 1)))
    w.close()


def test_layers_follow_manifest_module_order(tmp_path):
    modules = [{"name": n} for n in ("stem", "block.2", "block.10", "head")]
    w = writer(tmp_path, modules=modules, parameters=[{"name": "head.weight"}])
    write_steps(w, [0], layers=("head", "zzz_extra", "block.10", "stem", "aaa_extra", "block.2"),
                kinds=("activation",))
    write_steps(w, [0], layers=("head.weight", "stem"), kinds=("weight",))
    w.close()
    run = diagnostics.open_run(tmp_path)
    assert run.layers("activation") == ["stem", "block.2", "block.10", "head", "aaa_extra", "zzz_extra"]
    assert run.layers("weight") == ["stem", "head.weight"]
    assert run.layers("gradient") == []


def test_update_manifest_rank0_only(tmp_path):
    w0 = writer(tmp_path)
    w1 = writer(tmp_path, rank=1)
    w0.update_manifest(task="classification", num_classes=3)
    w1.update_manifest(task="regression")
    w0.close()
    w1.close()
    m = diagnostics.open_run(tmp_path).manifest
    assert m["task"] == "classification" and m["num_classes"] == 3
    assert m["name"] == "test" and m["schema_version"] == schema.SCHEMA_VERSION


# -- parts, compaction, atomicity ---------------------------------------------------

def _check_part_names(path: Path) -> None:
    for table in schema.TABLES:
        for name in parts(path, table):
            m = schema.PART_RE.match(name)
            assert m, name
            assert name == schema.part_name(int(m["rank"]), int(m["first"]), int(m["last"]))
            assert int(m["first"]) <= int(m["last"])


def test_tier_compaction_keeps_every_row_once(tmp_path):
    w = writer(tmp_path)
    expected, n_flush = [], 40
    for s in range(n_flush):
        w.add_scalar(s, "loss", float(s))
        expected += write_steps(w, [s], layers=("l",), kinds=("activation",), seed=s)
        w.flush()
        _check_part_names(tmp_path)
    w.close()
    _check_part_names(tmp_path)
    for table in ("scalars", "distributions"):
        names = parts(tmp_path, table)
        assert len(names) < n_flush, (table, names)
        ranges = sorted((int(m["first"]), int(m["last"])) for m in map(schema.PART_RE.match, names))
        # 40 parts: two merged groups of 16 and 8 small parts remain, none overlapping
        assert len(ranges) == 2 + 8
        assert all(a[1] < b[0] for a, b in zip(ranges, ranges[1:]))
    run = diagnostics.open_run(tmp_path)
    sc = run.scalars()
    assert sc["step"].tolist() == list(range(n_flush))
    np.testing.assert_array_equal(sc["value"].to_numpy(), np.arange(n_flush, dtype=float))
    assert_rows_equal(run.distributions("activation"), expected)


def test_compaction_of_a_single_table_ranges(tmp_path):
    """Only one table flushed: sequence numbers are contiguous, groups are 0-15 and 16-31."""
    w = writer(tmp_path)
    for s in range(33):
        w.add_scalar(s, "x", s)
        w.flush()
    w.close()
    assert parts(tmp_path, "scalars") == [
        schema.part_name(0, 0, 15), schema.part_name(0, 16, 31), schema.part_name(0, 32, 32)
    ]
    assert diagnostics.open_run(tmp_path).scalars()["step"].tolist() == list(range(33))


def test_second_tier_compaction(tmp_path):
    w = writer(tmp_path)
    n = 16 * 16 + 3
    for s in range(n):
        w.add_scalar(s, "x", s)
        w.flush()
    w.close()
    assert parts(tmp_path, "scalars") == [schema.part_name(0, 0, 255)] + [
        schema.part_name(0, s, s) for s in (256, 257, 258)
    ]
    df = diagnostics.open_run(tmp_path).scalars()
    assert df["step"].tolist() == list(range(n))


def test_reader_ignores_small_parts_covered_by_a_compacted_part(tmp_path):
    w = writer(tmp_path)
    saved = tmp_path / "saved"
    saved.mkdir()
    expected = []
    for s in range(17):
        w.add_scalar(s, "loss", s * 2.0)
        expected += write_steps(w, [s], layers=("l",), kinds=("gradient",), seed=s)
        w.flush()
        if s < 3:  # keep copies of early small parts before they are compacted away
            for table in schema.TABLES:
                for p in (tmp_path / table).glob("r*.parquet"):
                    shutil.copy(p, saved / f"{table}__{p.name}")
    w.close()
    assert not any(schema.PART_RE.match(n) and n.endswith("-00000000.parquet") for n in parts(tmp_path, "scalars"))
    # a crash between writing the merged part and deleting the small ones looks like this:
    restored = 0
    for p in saved.iterdir():
        table, name = p.name.split("__")
        if not (tmp_path / table / name).exists():
            shutil.copy(p, tmp_path / table / name)
            restored += 1
    assert restored >= 4
    run = diagnostics.open_run(tmp_path)
    sc = run.scalars()
    assert sc["step"].tolist() == list(range(17))
    np.testing.assert_array_equal(sc["value"].to_numpy(), np.arange(17) * 2.0)
    assert_rows_equal(run.distributions("gradient"), expected)
    # a writer reopening the run continues after the live parts and stays consistent
    w2 = writer(tmp_path)
    w2.add_scalar(17, "loss", 34.0)
    w2.close()
    assert diagnostics.open_run(tmp_path).scalars()["step"].tolist() == list(range(18))


def test_only_final_names_are_visible(tmp_path):
    """Concurrent listing/reading during flushes and compactions: every name a reader can
    match is a complete part (temporary files are dot-files), and none are left behind."""
    w = writer(tmp_path)
    stop = threading.Event()
    problems: list[str] = []

    def watch():
        while not stop.is_set():
            for table in schema.TABLES:
                try:
                    names = [p.name for p in (tmp_path / table).iterdir()]
                except FileNotFoundError:
                    continue
                for name in names:
                    if name.startswith(".tmp-"):
                        continue  # being written; hidden from readers' r*.parquet glob
                    if not schema.PART_RE.match(name):
                        problems.append(f"unexpected name {name}")
                        continue
                    try:
                        pq.read_table(tmp_path / table / name)
                    except FileNotFoundError:
                        pass  # deleted by a compaction after listing: fine
                    except Exception as exc:  # a half-written file
                        problems.append(f"{name}: {exc!r}")
            try:
                df = diagnostics.open_run(tmp_path).scalars()
                if df.duplicated(["step", "name"]).any():
                    problems.append("duplicate rows")
            except Exception as exc:
                problems.append(f"reader: {exc!r}")

    t = threading.Thread(target=watch)
    t.start()
    try:
        for s in range(40):
            w.add_scalar(s, "loss", float(s))
            write_steps(w, [s], layers=("l",), kinds=("activation",), seed=s)
            w.flush()
    finally:
        stop.set()
        t.join()
    w.close()
    assert problems == []
    leftovers = [p for p in tmp_path.rglob("*") if p.name.startswith(".tmp-")]
    assert leftovers == []
    for table in schema.TABLES:
        assert not list((tmp_path / table).glob(".*"))
    assert sorted(p.name for p in (tmp_path / schema.STATUS_DIR).iterdir()) == ["rank0.json"]
    assert diagnostics.open_run(tmp_path).scalars()["step"].tolist() == list(range(40))


def test_background_thread_flushes(tmp_path):
    w = RunWriter(tmp_path, {"name": "bg"}, flush_every_s=0.05)
    w.add_scalar(0, "loss", 1.5)
    deadline = time.time() + 30
    while time.time() < deadline and not list((tmp_path / "scalars").glob("r*.parquet")):
        time.sleep(0.02)
    df = diagnostics.open_run(tmp_path).scalars()
    assert df["value"].tolist() == [1.5]
    w.close()
    assert diagnostics.open_run(tmp_path).scalars()["value"].tolist() == [1.5]


def test_data_version_changes_when_data_lands(tmp_path):
    w = writer(tmp_path)
    run = diagnostics.open_run(tmp_path)
    v0 = run.data_version()
    w.add_scalar(0, "a", 1.0)
    w.flush()
    v1 = run.data_version()
    assert v1 != v0
    assert run.data_version() == v1
    w.close()


def test_corrupt_part_is_skipped_with_one_line(tmp_path):
    """Reported, not raised (issue #15): the run's other parts still read (tests/diagnostics/test_bad_files.py)."""
    w = writer(tmp_path)
    write_steps(w, [0])
    w.close()
    (tmp_path / "distributions" / schema.part_name(0, 50, 50)).write_bytes(b"not parquet")
    with pytest.warns(UserWarning) as caught:
        dists = diagnostics.open_run(tmp_path).distributions("activation")
    assert not dists.empty and set(dists["step"]) == {0}
    assert "\n" not in str(caught[0].message) and "r0-00000050-00000050.parquet" in str(caught[0].message)


# -- status ----------------------------------------------------------------------------------

def test_status_running_while_open_then_finished(tmp_path):
    w = writer(tmp_path)
    run = diagnostics.open_run(tmp_path)
    assert run.status()["state"] == "running"
    w.add_scalar(4, "loss", 1.0)
    w.flush()
    st = run.status()
    assert st["state"] == "running" and st["last_step"] == 4 and st["ranks"] == 1
    assert abs(st["heartbeat"] - time.time()) < 30
    w.close()
    assert run.status()["state"] == "finished"
    assert run.status()["last_step"] == 4


def test_status_failed(tmp_path):
    w = writer(tmp_path)
    w.close("failed")
    assert diagnostics.open_run(tmp_path).status()["state"] == "failed"


def test_status_stopped_when_heartbeat_is_stale(tmp_path):
    w = writer(tmp_path)
    w.close()
    run = diagnostics.open_run(tmp_path)
    set_status(tmp_path, 0, state="running", heartbeat=time.time() - schema.STALE_AFTER_S - 5)
    assert run.status()["state"] == "stopped"
    set_status(tmp_path, 0, heartbeat=time.time() - schema.STALE_AFTER_S + 20)
    assert run.status()["state"] == "running"


def test_status_without_status_files_is_stopped(tmp_path):
    w = writer(tmp_path)
    w.close()
    (tmp_path / schema.STATUS_DIR / "rank0.json").unlink()
    assert diagnostics.open_run(tmp_path).status()["state"] == "stopped"


def test_two_ranks(tmp_path):
    w0 = writer(tmp_path)
    w1 = writer(tmp_path, rank=1)
    e0 = write_steps(w0, range(3), seed=10, rank=0)
    e1 = write_steps(w1, range(3), seed=11, rank=1)
    for s in range(3):
        w0.add_scalar(s, "loss", s + 0.25)
        w1.add_scalar(s, "loss", s + 0.75)
    w0.flush()
    w1.flush()
    run = diagnostics.open_run(tmp_path)
    st = run.status()
    assert st["state"] == "running" and st["ranks"] == 2
    w0.close()
    assert run.status()["state"] == "running"  # rank 1 still alive
    w1.close()
    assert run.status()["state"] == "finished"

    both = run.distributions("activation")
    assert_rows_equal(both, [r for r in e0 + e1 if r["kind"] == "activation"])
    assert_rows_equal(run.distributions("gradient", rank=1), [r for r in e1 if r["kind"] == "gradient"])
    assert_rows_equal(run.distributions("gradient", rank=0), [r for r in e0 if r["kind"] == "gradient"])
    sc = run.scalars()
    assert len(sc) == 6
    assert run.scalars(rank=1)["value"].tolist() == [0.75, 1.75, 2.75]
    assert run.scalars(rank=0)["value"].tolist() == [0.25, 1.25, 2.25]
    assert sorted(p.name for p in (tmp_path / schema.STATUS_DIR).iterdir()) == ["rank0.json", "rank1.json"]


def test_two_ranks_one_failed(tmp_path):
    w0, w1 = writer(tmp_path), writer(tmp_path, rank=1)
    w1.close("failed")
    w0.close()
    assert diagnostics.open_run(tmp_path).status()["state"] == "failed"


def test_dead_rank_is_stopped_even_if_another_just_finished(tmp_path):
    """Regression: staleness was judged on the newest heartbeat of all ranks, so a dead
    rank looked alive while another rank's fresh 'finished' heartbeat was recent."""
    w0, w1 = writer(tmp_path), writer(tmp_path, rank=1)
    w1.close()
    set_status(tmp_path, 1, state="running", heartbeat=time.time() - 10 * schema.STALE_AFTER_S)
    w0.close()
    assert diagnostics.open_run(tmp_path).status()["state"] == "stopped"


# -- errors ------------------------------------------------------------------------------------

def test_open_run_without_manifest(tmp_path):
    (tmp_path / "scalars").mkdir()
    with pytest.raises(RunNotFoundError) as info:
        diagnostics.open_run(tmp_path)
    assert schema.MANIFEST_FILE in str(info.value)
    with pytest.raises(RunNotFoundError, match="run.json"):
        diagnostics.open_run(tmp_path / "does-not-exist")


def test_open_run_broken_json(tmp_path):
    w = writer(tmp_path)
    w.close()
    (tmp_path / schema.MANIFEST_FILE).write_text('{"name": "x", ')
    with pytest.raises(RunFormatError) as info:
        diagnostics.open_run(tmp_path)
    msg = str(info.value)
    assert "\n" not in msg and msg.strip()
    assert schema.MANIFEST_FILE in msg
    (tmp_path / schema.MANIFEST_FILE).write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(RunFormatError) as info:
        diagnostics.open_run(tmp_path)
    assert "\n" not in str(info.value)


def test_open_run_newer_schema_version(tmp_path):
    w = writer(tmp_path)
    w.close()
    mf = tmp_path / schema.MANIFEST_FILE
    m = json.loads(mf.read_text())
    m["schema_version"] = schema.SCHEMA_VERSION + 1
    mf.write_text(json.dumps(m))
    with pytest.raises(RunFormatError) as info:
        diagnostics.open_run(tmp_path)
    msg = str(info.value)
    assert "\n" not in msg
    assert str(schema.SCHEMA_VERSION + 1) in msg


@pytest.mark.parametrize("manifest", [[1, 2], {"name": "x"}, {"schema_version": "1", "name": "x", "created_at": 0}])
def test_open_run_manifest_not_from_this_tool(tmp_path, manifest):
    (tmp_path / schema.MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(RunFormatError) as info:
        diagnostics.open_run(tmp_path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("make", ["empty", "missing"])
def test_list_runs_empty_or_missing(tmp_path, make):
    folder = tmp_path / "runs"
    if make == "empty":
        folder.mkdir()
    df = diagnostics.list_runs(folder)
    assert len(df) == 0
    assert {"name", "path", "state"} <= set(df.columns)


def test_list_runs_shows_good_and_broken_runs(tmp_path):
    for name, close_as in (("alpha", "finished"), ("beta", "failed")):
        w = RunWriter(tmp_path / name, {"name": name, "task": "classification"}, flush_every_s=3600)
        w.add_scalar(7, "loss", 1.0)
        w.close(close_as)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / schema.MANIFEST_FILE).write_text("{not json")
    (tmp_path / "not-a-run").mkdir()  # no run.json: not listed
    (tmp_path / "file.txt").write_text("x")
    df = diagnostics.list_runs(tmp_path).set_index("name")
    assert sorted(df.index) == ["alpha", "beta", "broken"]
    assert df.loc["alpha", "state"] == "finished" and df.loc["alpha", "last_step"] == 7
    assert df.loc["alpha", "task"] == "classification"
    assert df.loc["alpha", "path"] == str(tmp_path / "alpha")
    assert df.loc["beta", "state"] == "failed"
    assert df.loc["broken", "state"] == "broken"
    err = df.loc["broken", "error"]
    assert isinstance(err, str) and schema.MANIFEST_FILE in err and "\n" not in err
    assert df.loc["alpha", "error"] is None or pd.isna(df.loc["alpha", "error"])


def test_list_runs_on_a_mixed_folder(tmp_path, monkeypatch):
    """Runs in every state next to things that are not runs: one row per run, never a traceback."""
    done = writer(tmp_path / "done", task="classification")
    done.add_scalar(3, "loss", 1.0)
    done.close()
    live = writer(tmp_path / "live")
    live.add_scalar(5, "loss", 1.0)
    live.flush()
    dead = writer(tmp_path / "dead")
    dead.close()
    set_status(tmp_path / "dead", 0, state="running", heartbeat=time.time() - schema.STALE_AFTER_S - 5)
    newer = writer(tmp_path / "newer")
    newer.close()
    manifest = json.loads((tmp_path / "newer" / schema.MANIFEST_FILE).read_text())
    (tmp_path / "newer" / schema.MANIFEST_FILE).write_text(json.dumps({**manifest, "schema_version": 99}))
    locked = writer(tmp_path / "locked")
    locked.close()
    (tmp_path / "renamed-copy").symlink_to(tmp_path / "done", target_is_directory=True)
    (tmp_path / "notes").mkdir()
    (tmp_path / "README.txt").write_text("not a run")
    real_read_text = Path.read_text

    def read_text(self, *args, **kwargs):  # as an unreadable run.json would (chmod does not stop root)
        if self == tmp_path / "locked" / schema.MANIFEST_FILE:
            raise PermissionError(13, "Permission denied", str(self))
        return real_read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", read_text)
    try:
        df = diagnostics.list_runs(tmp_path)
    finally:
        live.close()
    df.index = [Path(p).name for p in df["path"]]  # folder names: the copy keeps its manifest's name
    assert sorted(df.index) == ["dead", "done", "live", "locked", "newer", "renamed-copy"]
    assert df.loc["done", "state"] == "finished" and df.loc["done", "last_step"] == 3
    assert df.loc["live", "state"] == "running" and df.loc["live", "last_step"] == 5
    assert df.loc["dead", "state"] == "stopped"
    assert df.loc["newer", "state"] == "broken" and "upgrade" in df.loc["newer", "error"]
    assert df.loc["locked", "state"] == "broken"
    assert "Permission denied" in df.loc["locked", "error"] and schema.MANIFEST_FILE in df.loc["locked", "error"]
    assert df.loc["renamed-copy", "state"] == "finished" and df.loc["renamed-copy", "name"] == "test"


def test_import_diagnostics_is_torch_and_streamlit_free():
    code = (
        "import sys, diagnostics, diagnostics.store, diagnostics.histograms, diagnostics.schema\n"
        "print(sorted(m for m in ('torch', 'streamlit') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_output_layer_names_come_from_the_schema():
    assert schema.class_layer("train") == "train/class" and schema.value_layer("val") == "val/value"
    assert schema.output_layer("val", "logits") == "val/logits"
    with pytest.raises(ValueError, match="unknown output layer kind 'klass'"):
        schema.output_layer("val", "klass")


def test_evaluation_tables_are_built_by_the_writer_from_arrays(tmp_path):
    """add_samples / add_previews / add_attributions take arrays and write tables of the
    schema's types, read back by the reader."""
    w = writer(tmp_path / "ev")
    ids = ["a", "b", "c"]
    rows = np.array([[0, 0, 0.1, 0.9, 2.0, 1, np.nan], [1, 0, 2.3, 0.1, -1.0, 0, np.nan],
                     [2, 2, 0.2, 0.8, 1.5, 1, np.nan]], dtype=np.float64)
    probs = [np.array([0.9, 0.05, 0.05]), np.array([0.8, 0.1, 0.1]), np.array([0.1, 0.1, 0.8])]
    embeddings = [np.arange(4, dtype=np.float32) + i for i in range(3)]
    w.add_samples(7, "val", ids, rows, probs, embeddings,
                  {"input_mean": np.array([0.1, 0.2, 0.3]), "meta_site": np.array(["x", "y", "x"])})
    w.add_previews("val", ids, "vector", [4], np.ones((3, 4)))
    w.add_attributions(7, "val", ["b"], [1], {"integrated_gradients": np.full((1, 4), 0.5)})
    w.close()
    r = diagnostics.open_run(tmp_path / "ev")
    samples = r.samples(split="val").sort_values("sample_id").reset_index(drop=True)
    assert samples["sample_id"].tolist() == ids and (samples["step"] == 7).all()
    assert samples["loss"].tolist() == [0.1, 2.3, 0.2]
    assert samples["label_prob"].tolist() == [0.9, 0.1, 0.8]           # the record field "confidence"
    assert np.allclose(samples["confidence"], [0.9, 0.8, 0.8])          # the predicted class's probability
    assert samples["meta_site"].tolist() == ["x", "y", "x"]
    assert list(samples.loc[1, "embedding"]) == [1.0, 2.0, 3.0, 4.0]
    previews = r.previews("val", ids)
    assert len(previews) == 3 and set(previews["kind"]) == {"vector"}
    att = r.attributions("val")
    assert att["sample_id"].tolist() == ["b"] and att["target"].tolist() == [1]
    assert list(att.iloc[0]["shape"]) == [4]
    with pytest.raises(ValueError, match="one row of values"):
        writer(tmp_path / "bad").add_samples(0, "val", ids, rows[:2], probs, embeddings)

