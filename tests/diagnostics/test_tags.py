"""Review tags and notes (diagnostics.tags): the SQLite store, folder unions, export."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from diagnostics.exceptions import RunFormatError, RunNotFoundError
from diagnostics.tags import (
    SUGGESTED_TAGS,
    NoteConflictError,
    TagError,
    TagStore,
    export_tagged,
    folder_notes,
    folder_tags,
)

DS = "digits/val"


def make_run(folder: Path, name: str) -> Path:
    run = folder / name
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"schema_version": 1, "name": name, "created_at": time.time()}))
    return run


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def _add_many(run_dir: str, worker: str, n: int, start) -> None:
    """One writer: n separate transactions (a module-level function, so spawn can import it).

    `start` is a barrier: both writers begin together, on a store neither has created yet.
    """
    store = TagStore(run_dir)
    start.wait(timeout=60)
    for i in range(n):
        store.add_tags(DS, f"{worker}-{i}", ["shared", f"{worker}-only"] if i == 0 else f"{worker}-only")
    store.close()


# -- the store -----------------------------------------------------------------------

def test_round_trip_and_idempotent_add(tmp_path):
    store = TagStore(make_run(tmp_path, "a"))
    assert store.add_tags(DS, [1, "2", 3], ["label noise", "too dark"]) == 6
    assert store.add_tags(DS, ["1", 2], ["label noise", "  too   dark "]) == 0  # same tags, same samples
    assert store.add_tags(DS, "2", "occluded") == 1

    tags = store.tags(DS)
    assert list(tags.columns) == ["sample_id", "tag", "created_at"]
    assert pd.api.types.is_datetime64_any_dtype(tags["created_at"])
    assert len(tags) == 7
    assert set(map(tuple, tags[["sample_id", "tag"]].to_numpy())) == {
        ("1", "label noise"), ("1", "too dark"), ("2", "label noise"), ("2", "too dark"),
        ("3", "label noise"), ("3", "too dark"), ("2", "occluded")}
    assert sorted(store.tags(DS, sample_ids=[2])["tag"]) == ["label noise", "occluded", "too dark"]
    assert store.tags("digits/train").empty  # datasets are kept apart


def test_remove_tag(tmp_path):
    store = TagStore(make_run(tmp_path, "a"))
    store.add_tags(DS, ["1", "2", "3"], ["ambiguous", "artifact"])
    assert store.remove_tag(DS, ["1", "2"], "ambiguous") == 2
    assert store.remove_tag(DS, ["1"], "ambiguous") == 0  # already gone
    left = store.tags(DS)
    assert sorted(map(tuple, left[["sample_id", "tag"]].to_numpy())) == [
        ("1", "artifact"), ("2", "artifact"), ("3", "ambiguous"), ("3", "artifact")]


def test_notes_replace_and_delete(tmp_path):
    store = TagStore(make_run(tmp_path, "a"))
    store.set_note(DS, 7, "looks like a 1")
    store.set_note(DS, "8", "blurred")
    store.set_note(DS, "7", "a 7 written like a 1")
    notes = store.notes(DS)
    assert list(notes.columns) == ["sample_id", "note", "updated_at"]
    assert dict(zip(notes["sample_id"], notes["note"])) == {"7": "a 7 written like a 1", "8": "blurred"}
    store.set_note(DS, "7", "   ")  # blank deletes
    assert store.notes(DS)["sample_id"].tolist() == ["8"]
    store.set_note(DS, "8", "")
    assert store.notes(DS).empty
    assert store.notes(DS, sample_ids=["8"]).empty


def test_a_note_with_expected_replaces_only_what_the_writer_saw(tmp_path):
    store = TagStore(make_run(tmp_path, "a"))
    store.set_note(DS, "1", "first", expected=None)  # none seen, none there
    with pytest.raises(NoteConflictError) as conflict:
        store.set_note(DS, "1", "second", expected=None)  # another session wrote "first" meanwhile
    assert conflict.value.current == "first" and conflict.value.note == "second"
    assert "'first'" in str(conflict.value) and "'second'" in str(conflict.value) and "\n" not in str(conflict.value)
    assert store.notes(DS)["note"].tolist() == ["first"]
    store.set_note(DS, "1", "second", expected="first")
    store.set_note(DS, "1", "second", expected="stale")  # already reads so: nothing to lose
    with pytest.raises(NoteConflictError):
        store.set_note(DS, "1", "", expected="first")  # a delete is checked too
    store.set_note(DS, "1", "", expected="second")
    assert store.notes(DS).empty
    store.set_note(DS, "1", "unchecked")  # without expected: replaces whatever is there
    assert store.notes(DS)["note"].tolist() == ["unchecked"]


def test_survives_restart_and_known_tags(tmp_path):
    run = make_run(tmp_path, "a")
    first = TagStore(run)
    first.add_tags(DS, ["1", "2", "3"], "label noise")
    first.add_tags(DS, ["1"], "my own tag")
    first.add_tags("other", ["1"], "other-only")
    first.set_note(DS, "1", "kept")
    del first

    again = TagStore(run)
    assert len(again.tags(DS)) == 4
    assert again.notes(DS)["note"].tolist() == ["kept"]
    known = again.known_tags(DS)
    assert known[:2] == ["label noise", "my own tag"]
    assert "other-only" not in known
    assert known[2:] == [t for t in SUGGESTED_TAGS if t != "label noise"]
    assert again.known_tags()[:3] == ["label noise", "my own tag", "other-only"]
    with sqlite3.connect(run / "review.sqlite") as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert con.execute("PRAGMA user_version").fetchone()[0] == 1


def test_reading_a_run_without_store_creates_nothing(tmp_path):
    run = make_run(tmp_path, "a")
    before = files_under(tmp_path)
    store = TagStore(run)
    assert store.tags(DS).empty and list(store.tags(DS).columns) == ["sample_id", "tag", "created_at"]
    assert store.notes(DS).empty and list(store.notes(DS).columns) == ["sample_id", "note", "updated_at"]
    assert store.known_tags(DS) == list(SUGGESTED_TAGS)
    assert store.remove_tag(DS, ["1"], "occluded") == 0
    store.set_note(DS, "1", "")
    assert store.add_tags(DS, [], "occluded") == 0
    assert folder_tags(tmp_path, DS).empty and folder_notes(tmp_path, DS).empty
    assert files_under(tmp_path) == before


_READ_ONLY_SCRIPT = """
import sys
from diagnostics.exceptions import DiagnosticsError
from diagnostics.tags import TagStore, folder_tags
store = TagStore(sys.argv[1] + "/a")
assert store.tags("digits/val")["sample_id"].tolist() == ["1"], store.tags("digits/val")
assert store.notes("digits/val")["note"].tolist() == ["kept"]
assert folder_tags(sys.argv[1], "digits/val")["run"].tolist() == ["a"]
try:
    store.add_tags("digits/val", "2", "blurry")
except DiagnosticsError as exc:
    assert "read-only" in str(exc), exc
    print("ok")
"""


def test_a_read_only_run_is_readable(tmp_path):
    store = TagStore(make_run(tmp_path, "a"))
    store.add_tags(DS, "1", "occluded")
    store.set_note(DS, "1", "kept")
    store.close()
    before = files_under(tmp_path)
    repo = Path(__file__).resolve().parents[2]
    if os.geteuid() != 0:
        for p in (tmp_path / "a", *(tmp_path / "a").iterdir()):
            p.chmod(p.stat().st_mode & ~0o222)
        cmd = [sys.executable, "-c", _READ_ONLY_SCRIPT, str(tmp_path)]
    elif shutil.which("unshare") and subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0:
        # root ignores permission bits: mount the folder read-only in a private namespace
        cmd = ["unshare", "-m", "sh", "-c", 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && '
               'exec "$2" -c "$3" "$1"', "sh", str(tmp_path), sys.executable, _READ_ONLY_SCRIPT]
    else:
        pytest.skip("running as root without unshare: cannot make a directory read-only")
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=repo)
    finally:
        for p in (tmp_path / "a", *(tmp_path / "a").iterdir()):
            p.chmod(p.stat().st_mode | 0o200)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
    assert files_under(tmp_path) == before


def test_two_threads_lose_no_tag(tmp_path):
    run = make_run(tmp_path, "a")
    start = threading.Barrier(2)
    threads = [threading.Thread(target=_add_many, args=(str(run), w, 200, start)) for w in ("t0", "t1")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    tags = TagStore(run).tags(DS)
    assert (tags["tag"] == "t0-only").sum() == 200 and (tags["tag"] == "t1-only").sum() == 200
    assert sorted(tags.loc[tags["tag"] == "shared", "sample_id"]) == ["t0-0", "t1-0"]
    assert len(tags) == 402


def test_two_processes_lose_no_tag(tmp_path):
    run = make_run(tmp_path, "a")
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(2)
    procs = [ctx.Process(target=_add_many, args=(str(run), w, 200, start)) for w in ("p0", "p1")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    tags = TagStore(run).tags(DS)
    assert (tags["tag"] == "p0-only").sum() == 200 and (tags["tag"] == "p1-only").sum() == 200
    assert sorted(tags.loc[tags["tag"] == "shared", "sample_id"]) == ["p0-0", "p1-0"]
    assert len(tags) == 402
    assert not tags.duplicated(["sample_id", "tag"]).any()


def _review_many(run_dir: str, worker: str, n: int, start) -> None:
    """One reviewer, as a dashboard process does it: each click one transaction. Per sample
    i: a tag, a note (rewritten once), and every 10th a tag added then removed; besides,
    every click also tags the one sample both reviewers work on."""
    store = TagStore(run_dir)
    start.wait(timeout=60)
    for i in range(n):
        sid = f"{worker}-{i}"
        store.add_tags(DS, [sid, "both"], [f"{worker}-tag", f"{worker}-{i}"] if i % 2 else f"{worker}-tag")
        store.set_note(DS, sid, f"draft by {worker}")
        if i % 10 == 0:
            store.add_tags(DS, sid, "oops")
            store.remove_tag(DS, sid, "oops")
        store.set_note(DS, sid, f"note {i} by {worker}")
    store.close()


def test_two_processes_writing_tags_and_notes_lose_nothing_while_a_third_reads(tmp_path):
    run = make_run(tmp_path, "a")
    n = 150
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(3)
    procs = [ctx.Process(target=_review_many, args=(str(run), w, n, start)) for w in ("p0", "p1")]
    for p in procs:
        p.start()
    start.wait(timeout=60)
    reads, reader = 0, TagStore(run)
    while any(p.is_alive() for p in procs):  # the dashboard's reads meanwhile: never an error
        tags, notes = reader.tags(DS), folder_notes(tmp_path, DS)
        assert not tags.duplicated(["sample_id", "tag"]).any() and not notes.duplicated("sample_id").any()
        reader.known_tags(DS)
        reads += 1
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0] and reads > 0
    tags, notes = reader.tags(DS), reader.notes(DS)
    for w in ("p0", "p1"):
        own = tags[tags["sample_id"].str.startswith(f"{w}-")]
        assert (own["tag"] == f"{w}-tag").sum() == n and (own["tag"] != f"{w}-tag").sum() == n // 2
        assert not (own["tag"] == "oops").any()
        both = set(tags.loc[tags["sample_id"] == "both", "tag"])
        assert {f"{w}-tag", *(f"{w}-{i}" for i in range(1, n, 2))} <= both
        mine = notes[notes["sample_id"].str.startswith(f"{w}-")].set_index("sample_id")["note"]
        assert mine.to_dict() == {f"{w}-{i}": f"note {i} by {w}" for i in range(n)}
    assert len(tags) == 2 * (n + n // 2) + 2 + n  # both: 2 worker tags + n per-sample tags
    with sqlite3.connect(run / "review.sqlite") as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


# -- several runs ----------------------------------------------------------------------

def test_folder_tags_merge_runs_of_the_same_dataset(tmp_path):
    a, b, c = (TagStore(make_run(tmp_path, n)) for n in ("run-a", "run-b", "run-c"))
    make_run(tmp_path, "run-untagged")
    a.add_tags(DS, ["1", "2"], "label noise")
    b.add_tags(DS, ["2"], "label noise")
    b.add_tags(DS, ["3"], "too dark")
    c.add_tags("digits/train", ["1"], "occluded")  # another dataset: ignored
    a.set_note(DS, "2", "old note")
    time.sleep(0.01)
    b.set_note(DS, "2", "new note")

    tags = folder_tags(tmp_path, DS)
    assert list(tags.columns)[:3] == ["sample_id", "tag", "run"]
    assert sorted(map(tuple, tags[["sample_id", "tag", "run"]].to_numpy())) == [
        ("1", "label noise", "run-a"), ("2", "label noise", "run-a"),
        ("2", "label noise", "run-b"), ("3", "too dark", "run-b")]
    assert len(tags.drop_duplicates(["sample_id", "tag"])) == 3

    notes = folder_notes(tmp_path, DS)
    assert notes[["sample_id", "note", "run"]].values.tolist() == [["2", "old note", "run-a"],
                                                                   ["2", "new note", "run-b"]]
    assert folder_tags(tmp_path, "digits/train")["run"].tolist() == ["run-c"]


def test_folder_tags_skips_a_damaged_store_with_a_warning(tmp_path):
    TagStore(make_run(tmp_path, "good")).add_tags(DS, "1", "duplicate")
    (make_run(tmp_path, "bad") / "review.sqlite").write_bytes(b"this is not a database" * 100)
    with pytest.warns(UserWarning, match="bad"):
        tags = folder_tags(tmp_path, DS)
    assert tags["run"].tolist() == ["good"]
    with pytest.raises(RunFormatError, match="review.sqlite"):
        TagStore(tmp_path / "bad").tags(DS)


def test_newer_store_version_is_refused_clearly(tmp_path):
    run = make_run(tmp_path, "a")
    store = TagStore(run)
    store.add_tags(DS, "1", "artifact")
    with sqlite3.connect(run / "review.sqlite") as con:
        con.execute("PRAGMA user_version = 99")
    with pytest.raises(RunFormatError, match="version 99.*upgrade"):
        store.tags(DS)
    with pytest.raises(RunFormatError, match="version 99.*upgrade"):
        store.add_tags(DS, "2", "artifact")


# -- export ----------------------------------------------------------------------------

def test_export_tagged_csv_and_parquet(tmp_path):
    samples = pd.DataFrame({
        "sample_id": ["1", "2", "3", "4", "2"],
        "step": [10, 10, 10, 10, 20],
        "split": "val",
        "label": [0.0, 1.0, 2.0, 3.0, 1.0],
        "prediction": [0.0, 7.0, 2.0, 5.0, 8.0],
        "loss": [0.1, 2.0, 0.2, 1.5, 2.5],
    })
    tags = pd.DataFrame({"sample_id": ["2", "2", "2", "9"], "tag": ["too dark", "label noise", "too dark", "occluded"],
                         "run": ["a", "a", "b", "a"]})
    notes = pd.DataFrame({"sample_id": ["4", "4", "1"], "note": ["first", "second", ""],
                          "updated_at": pd.to_datetime([1, 2, 3], unit="s")})
    paths = export_tagged(samples, tags, notes, tmp_path / "out" / "review")
    assert paths == [tmp_path / "out" / "review.csv", tmp_path / "out" / "review.parquet"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["review.csv", "review.parquet"]

    csv = pd.read_csv(paths[0], dtype={"sample_id": str})
    assert list(csv.columns) == ["sample_id", "label", "prediction", "loss", "tags", "note"]
    # 1 has only a blank note, 3 nothing, 9 no sample; rows keep the order of `samples`
    # at the row kept, sample 2's last evaluation (step 20)
    assert csv["sample_id"].tolist() == ["4", "2"]
    assert csv["prediction"].tolist() == [5.0, 8.0]
    assert csv.loc[1, "tags"] == "label noise; too dark"
    assert pd.isna(csv.loc[0, "tags"]) and csv.loc[0, "note"] == "second"
    assert pd.isna(csv.loc[1, "note"])

    table = pq.read_table(paths[1])
    tags_type = table.schema.field("tags").type
    assert pa.types.is_list(tags_type) and pa.types.is_string(tags_type.value_type)
    back = table.to_pandas()
    assert list(back.columns) == ["sample_id", "label", "prediction", "loss", "tags", "note"]
    assert [list(t) for t in back["tags"]] == [[], ["label noise", "too dark"]]
    assert back["note"].tolist()[0] == "second" and back["note"].isna().tolist()[1]
    assert back["loss"].tolist() == [1.5, 2.5]


def test_export_with_nothing_tagged_writes_empty_files(tmp_path):
    samples = pd.DataFrame({"sample_id": ["1"], "label": [0], "prediction": [1], "loss": [0.3]})
    store = TagStore(make_run(tmp_path, "a"))
    paths = export_tagged(samples, store.tags(DS), store.notes(DS), tmp_path / "empty.csv")
    assert [p.name for p in paths] == ["empty.csv", "empty.parquet"]
    assert pd.read_csv(paths[0]).empty and pq.read_table(paths[1]).num_rows == 0


# -- errors ----------------------------------------------------------------------------

def test_errors_are_one_clear_line(tmp_path):
    with pytest.raises(RunNotFoundError) as missing:
        TagStore(tmp_path / "runs" / "nope")
    assert "nope" in str(missing.value) and "does not exist" in str(missing.value)
    assert "diagnostics dashboard" in str(missing.value)
    (tmp_path / "plain").mkdir()
    with pytest.raises(RunNotFoundError, match="run.json"):
        TagStore(tmp_path / "plain")

    store = TagStore(make_run(tmp_path, "a"))
    cases = [
        (lambda: store.add_tags(DS, "1", "  "), "empty tag"),
        (lambda: store.add_tags(DS, "1", "x" * 65), "65 characters.*limit is 64"),
        (lambda: store.add_tags(DS, "1", "a;b"), "';'"),
        (lambda: store.add_tags(DS, "1", 5), "must be text"),
        (lambda: store.add_tags("", "1", "ok"), "dataset"),
        (lambda: store.add_tags(DS, [""], "ok"), "empty sample id"),
        (lambda: store.remove_tag(DS, "1", ""), "empty tag"),
        (lambda: export_tagged(pd.DataFrame({"sample_id": ["1"]}), store.tags(DS), store.notes(DS),
                               tmp_path / "x"), "label, prediction, loss"),
    ]
    for call, pattern in cases:
        with pytest.raises(TagError, match=pattern) as err:
            call()
        assert "\n" not in str(err.value)
        assert isinstance(err.value, ValueError)
    assert store.add_tags(DS, "1", "x" * 64) == 1
    assert not (tmp_path / "x.csv").exists()


def test_import_is_torch_and_streamlit_free():
    code = "import sys, diagnostics.tags\nprint(sorted(m for m in ('torch', 'streamlit', 'hooks') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_with_tag_lists_gives_each_sample_its_sorted_tags():
    import pandas as pd

    from diagnostics.tags import with_tag_lists

    samples = pd.DataFrame({"sample_id": ["a", "b", "c"], "loss": [1.0, 2.0, 3.0]})
    tags = pd.DataFrame({"sample_id": ["b", "a", "b", "b"], "tag": ["noisy", "blur", "blur", "noisy"]})
    out = with_tag_lists(samples, tags)
    assert out["tags"].tolist() == [["blur"], ["blur", "noisy"], []]
    assert "tags" not in samples  # the caller's frame is left as it was
    empty = with_tag_lists(samples, tags.iloc[:0])
    assert empty["tags"].tolist() == [[], [], []]
