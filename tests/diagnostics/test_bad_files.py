"""Bad files on the reading side (issue #15): a truncated or garbage Parquet part, a missing
or malformed run.json, an unknown schema_version, an empty run, a folder that is not a run,
a zero-byte review.sqlite, a symlink loop. The reader skips or reports with one clear line;
one bad run never breaks the listing of the good ones."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import diagnostics
from diagnostics import schema
from diagnostics.exceptions import DiagnosticsError
from diagnostics.store import RunWriter
from diagnostics.tags import TagStore


def _run(folder: Path, name: str, steps: int = 5) -> Path:
    w = RunWriter(folder / name, {"name": name, "task": "classification"}, flush_every_s=3600)
    for s in range(steps):
        w.add_scalar(s, "loss", 1.0 / (s + 1))
        w.flush()  # a part per step
    w.close()
    return folder / name


def _one_line(message: str) -> None:
    assert message and "\n" not in message and "Traceback" not in message, message


def _damage(part: Path, how: str) -> None:
    data = part.read_bytes()
    part.write_bytes(data[: len(data) // 2] if how == "truncated" else b"not parquet at all" * 10)


@pytest.mark.parametrize("how", ["truncated", "garbage"])
def test_a_damaged_part_is_skipped_and_named(tmp_path, how):
    path = _run(tmp_path, "r", steps=5)
    parts = sorted((path / "scalars").glob("r*.parquet"))
    _damage(parts[1], how)
    run = diagnostics.open_run(path)
    with pytest.warns(UserWarning) as caught:
        scalars = run.scalars()
    assert len(scalars) == 4 and 1 not in set(scalars["step"])  # the other parts' rows, all of them
    message = str(caught[0].message)
    _one_line(message)
    assert parts[1].name in message
    assert run.damaged_parts() == [parts[1]]
    assert parts[1].is_file()  # reported, never deleted: the user's data is theirs


@pytest.mark.parametrize("content, says", [
    (None, "no run.json"), (b"", "not valid JSON"), (b"{not json", "not valid JSON"), (b"[1, 2]", "lacks"),
    (json.dumps({"schema_version": 99, "name": "x", "created_at": 0}).encode(), "run format version 99"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),  # RecursionError in json: it hid every run
])
def test_a_bad_manifest_is_one_line_and_the_listing_goes_on(tmp_path, content, says):
    _run(tmp_path, "good")
    bad = _run(tmp_path, "bad")
    if content is None:
        (bad / schema.MANIFEST_FILE).unlink()
    else:
        (bad / schema.MANIFEST_FILE).write_bytes(content)
    with pytest.raises(DiagnosticsError) as err:
        diagnostics.open_run(bad)
    _one_line(str(err.value))
    assert says in str(err.value)
    listed = diagnostics.list_runs(tmp_path).set_index("name")
    assert listed.loc["good", "state"] == "finished"
    if content is not None:  # a folder without run.json is not a run: not listed
        assert listed.loc["bad", "state"] == "broken"
        _one_line(listed.loc["bad", "error"])


def test_an_unreadable_manifest_is_one_line_and_the_listing_goes_on(tmp_path, monkeypatch):
    """Permission denied on run.json (root reads anything, so the denial is simulated)."""
    _run(tmp_path, "good")
    bad = _run(tmp_path, "bad")
    real = Path.read_text

    def deny(path, *args, **kwargs):
        if path == bad / schema.MANIFEST_FILE:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", deny)
    with pytest.raises(DiagnosticsError) as err:
        diagnostics.open_run(bad)
    _one_line(str(err.value))
    assert "Permission denied" in str(err.value) and "chmod" in str(err.value)
    listed = diagnostics.list_runs(tmp_path).set_index("name")
    assert listed.loc["good", "state"] == "finished" and listed.loc["bad", "state"] == "broken"


def test_an_empty_run_and_a_folder_that_is_not_a_run(tmp_path):
    RunWriter(tmp_path / "empty", {"name": "empty"}, flush_every_s=3600).close()
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"\xff\xd8")
    (tmp_path / "notes.txt").write_text("hello")
    listed = diagnostics.list_runs(tmp_path)
    assert listed["name"].tolist() == ["empty"]
    run = diagnostics.open_run(tmp_path / "empty")
    assert run.scalars().empty and run.distributions("activation").empty and run.evaluations().empty
    with pytest.raises(DiagnosticsError, match="is this a run directory"):
        diagnostics.open_run(tmp_path / "photos")


def test_a_symlink_loop_in_the_runs_folder_is_skipped(tmp_path):
    _run(tmp_path, "good")
    os.symlink(tmp_path / "loop", tmp_path / "loop")  # points at itself
    os.symlink(tmp_path, tmp_path / "good" / "up")    # a cycle inside a run
    listed = diagnostics.list_runs(tmp_path)
    assert listed["name"].tolist() == ["good"]
    assert len(diagnostics.open_run(tmp_path / "good").scalars()) == 5


def test_a_zero_byte_review_database_is_taken_as_empty(tmp_path):
    path = _run(tmp_path, "r")
    (path / "review.sqlite").write_bytes(b"")
    store = TagStore(path)
    assert store.tags("val:abc").empty
    store.add_tags("val:abc", ["1"], "dark")
    assert store.tags("val:abc")["tag"].tolist() == ["dark"]


def test_a_garbage_review_database_is_reported_and_kept(tmp_path):
    path = _run(tmp_path, "r")
    (path / "review.sqlite").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(DiagnosticsError) as err:
        TagStore(path).tags("val:abc")
    _one_line(str(err.value))
    assert "review.sqlite" in str(err.value)
    assert (path / "review.sqlite").read_bytes().startswith(b"this is not sqlite")  # never overwritten


def test_the_pages_show_a_run_with_a_damaged_part_and_say_so(tmp_path, monkeypatch):
    from tests.pages._app import run_app

    path = _run(tmp_path, "r", steps=5)
    _damage(sorted((path / "scalars").glob("r*.parquet"))[2], "truncated")
    at = run_app(monkeypatch, tmp_path)
    assert not at.exception
    assert any("cannot be read and is skipped" in w.value for w in at.warning)
    assert [t.value for t in at.title] == ["Run r"]
