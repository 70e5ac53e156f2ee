"""The app's first paint: the run picker shows at once, its health badges follow."""

from __future__ import annotations

import shutil
import sys

import pytest
from streamlit.testing.v1 import AppTest

import diagnostics
from diagnostics import badges, health
from diagnostics.badges import HealthCounts
from tests.pages._app import open_app, run_app

# The board's child at the priority of the test: its own `os.nice(19)` put it behind every other
# process, and on a loaded machine (the CI's two cores, shared) it got under 1% of a core: six
# runs' health took minutes (179 s of a 300 s limit once, 1.5 s of CPU in 150 s another time).
_CHILD_AT_TEST_PRIORITY = [sys.executable, "-c", "import os, sys; os.nice = lambda increment: 0; "
                           "from diagnostics.badges import main; sys.exit(main())"]


@pytest.fixture(autouse=True)
def board(monkeypatch) -> badges.BadgeBoard:
    """The dashboard's board, fresh for each test: no run of another test queued before these."""
    fresh = badges.BadgeBoard(command=_CHILD_AT_TEST_PRIORITY)
    monkeypatch.setattr(badges, "shared_board", lambda: fresh)
    return fresh


def _badges_computed(board: badges.BadgeBoard) -> None:
    """Until the board has checked every run asked of it: however long the machine takes (no
    time limit: a slow check is not a failure; a check that fails shows as '?', asserted against)."""
    assert board.wait(timeout=None)


@pytest.fixture()
def folder(tmp_path, recorded_runs):
    """Six runs: two copies of each recorded run (a copy keeps its manifest's name)."""
    runs = tmp_path / "runs"
    for copy in ("a", "b"):
        for name in ("cls", "reg", "review"):
            shutil.copytree(recorded_runs / name, runs / f"{copy}-{name}",
                            ignore=shutil.ignore_patterns(badges.CACHE_FILE, "*.sqlite*"))
    return runs


@pytest.fixture()
def health_calls(monkeypatch) -> list:
    calls = []
    real = health.diagnose  # what the badges compute (findings and problems in one pass)

    def diagnose(run):
        calls.append(str(run.path))
        return real(run)

    monkeypatch.setattr(health, "diagnose", diagnose)
    return calls


def _expected(path) -> HealthCounts:
    """Problems by severity, and info findings: the badge counts a cause with its symptoms once."""
    found, problems = health.diagnose(diagnostics.open_run(path))
    return HealthCounts(sum(p.severity == "error" for p in problems), sum(p.severity == "warning" for p in problems),
                        sum(f.severity == "info" for f in found))


def _app(monkeypatch, runs) -> AppTest:
    return open_app(monkeypatch, runs, timeout=120)


def test_first_run_does_not_wait_for_health_yet_badges_appear(monkeypatch, served_like_the_cli, folder,
                                                               health_calls, board):
    at = _app(monkeypatch, folder)
    picker = at.sidebar.selectbox[0]
    assert health_calls == []  # not one run's health() before the first paint
    assert picker.options == [f"{badges.PENDING} {n}" for n in sorted(p.name for p in folder.iterdir())]
    assert at.get("plotly_chart")  # the Overview's charts drew meanwhile
    assert any("checking health" in c.value for c in at.sidebar.caption)

    _badges_computed(board)  # in a child process
    at.run()
    assert health_calls == []
    expected = {p.name: _expected(p) for p in folder.iterdir()}
    assert at.sidebar.selectbox[0].options == [f"{expected[n].badge} {n}" for n in sorted(expected)], \
        [c.value for c in at.sidebar.caption]  # a '?' badge: the caption says why
    assert any(expected["a-cls"].describe() in c.value and "finished" in c.value for c in at.sidebar.caption)
    assert not any("checking" in c.value for c in at.sidebar.caption)


def test_the_picked_run_stays_picked_when_the_badges_arrive(monkeypatch, served_like_the_cli, folder, board):
    at = _app(monkeypatch, folder)
    picker = at.sidebar.selectbox[0]
    picker.select(picker.options[4]).run()  # b-reg
    assert at.session_state["run_path"] == str(folder / "b-reg")
    _badges_computed(board)
    at.run()
    assert at.session_state["run_path"] == str(folder / "b-reg")
    assert at.sidebar.selectbox[0].value == f"{_expected(folder / 'b-reg').badge} b-reg"
    assert at.query_params["run"] == ["b-reg"] or at.query_params["run"] == "b-reg"


def test_a_new_server_reads_the_badges_from_the_runs(monkeypatch, served_like_the_cli, folder, health_calls):
    paths = [str(p) for p in sorted(folder.iterdir())]
    for p in paths:
        badges.health_counts(p)  # as an earlier server left them
    health_calls.clear()  # the board of this test, a new server's: nothing in memory
    at = _app(monkeypatch, folder)
    assert health_calls == []
    assert badges.PENDING not in " ".join(at.sidebar.selectbox[0].options)


def test_a_copy_is_opened_by_its_folder_name(monkeypatch, folder):
    at = run_app(monkeypatch, folder, "b-review", timeout=120)  # both copies are named "review" in their manifest
    assert at.session_state["run_path"] == str(folder / "b-review")
    assert len(at.sidebar.selectbox[0].options) == 6


def test_a_broken_run_is_marked_and_explained(monkeypatch, folder):
    (folder / "a-cls" / "run.json").write_text("{not json")
    at = run_app(monkeypatch, folder, "a-cls", timeout=120)
    assert at.sidebar.selectbox[0].value == "✗ a-cls · broken"
    assert any(c.value.startswith("broken:") and "run.json" in c.value for c in at.sidebar.caption)
    assert not at.exception


def test_a_run_that_changed_shows_its_last_badge_while_rechecked(monkeypatch, served_like_the_cli, folder, board):
    import json

    from diagnostics.store import RunWriter

    for p in folder.iterdir():
        badges.health_counts(p)
    path = folder / "a-cls"
    before = _expected(path)
    w = RunWriter(path, json.loads((path / "run.json").read_text()), flush_every_s=3600)
    w.add_scalar(99, "loss", float("nan"))  # new data, and an error finding with it
    w.close()  # the board of this test, a new server's: nothing in memory
    at = run_app(monkeypatch, folder, "a-cls", timeout=120)
    assert at.sidebar.selectbox[0].value == f"{before.badge}{badges.PENDING} a-cls"  # never shown as current
    captions = [c.value for c in at.sidebar.caption]
    assert any("before the latest data" in c for c in captions)
    # finished: its re-check ends once, so the picker watches for it (a running run's would wait
    # for the next rerun: no rerun loop while it trains)
    assert any("checking the runs' health" in c for c in captions)
    _badges_computed(board)
    at.run()
    after = _expected(path)
    assert after.errors > before.errors
    assert at.sidebar.selectbox[0].value == f"{after.badge} a-cls"
    assert not any("checking the runs' health" in c.value for c in at.sidebar.caption)  # known: the watch ends


def test_the_dashboard_given_a_runs_own_folder_shows_that_run(monkeypatch, folder):
    """`diagnostics dashboard runs/b-reg` (a run, not a runs folder): the CLI serves its parent
    with it selected, and the app opens on it."""
    from diagnostics import cli

    served = {}
    monkeypatch.setattr(cli, "serve",
                        lambda runs, host, port, select=None: served.update(runs=runs, select=select) or 0)
    assert cli.main(["dashboard", str(folder / "b-reg")]) == 0
    assert served == {"runs": folder.resolve(), "select": "b-reg"}
    monkeypatch.setenv("DIAGNOSTICS_SELECT", "b-reg")
    at = _app(monkeypatch, folder)
    assert at.session_state["run_path"] == str(folder / "b-reg")
