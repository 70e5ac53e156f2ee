"""Two browser sessions tagging the same run at once (issue #15): each AppTest is a session of
its own (its own widgets and session state) on one server process, as two tabs are."""

from __future__ import annotations

import sqlite3

import pytest
from streamlit.testing.v1 import AppTest

import diagnostics
from diagnostics import badges
from diagnostics.tags import TagStore
from tests.diagnostics.test_compare import LABELS, LOSS_A, PRED_A, write_run
from tests.pages._app import assert_ok, run_app

pytestmark = pytest.mark.usefixtures("served_like_the_cli")


def _sample_page(monkeypatch, folder, sample_id: str) -> AppTest:
    at = run_app(monkeypatch, folder, "run")
    at.session_state["sample_id"] = sample_id
    at.switch_page("pages/sample.py").run()
    _ok(at)
    return at


def run_dataset(run) -> str:
    """The dataset key the run's evaluation carries (what the pages tag under)."""
    return diagnostics.open_run(run).evaluations()["dataset"].iloc[0]


def _ok(at: AppTest) -> None:
    assert_ok(at, check_errors=True)


def _save(at: AppTest, tags: list[str], note: str = "", refused: bool = False) -> None:
    at.multiselect(key="tags_sample").set_value(tags)
    at.text_input(key="note_sample").set_value(note)
    next(b for b in at.button if b.label == "Save").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert bool(at.error) == refused, [e.value for e in at.error]


def _shown_tags(at: AppTest) -> str:
    return next(m.value for m in at.markdown if m.value.startswith("Tags:"))


def test_two_sessions_tagging_one_sample_both_keep_their_tags(monkeypatch, tmp_path):
    run = write_run(tmp_path, "run", LABELS, PRED_A, LOSS_A)
    first, second = (_sample_page(monkeypatch, tmp_path, "s0") for _ in range(2))
    assert _shown_tags(first) == _shown_tags(second) == "Tags: none yet"
    # both forms were drawn before either saved: the second saves over a page that is out of date
    _save(first, ["blurry", "mine"], note="first look")
    _save(second, ["too dark", "mine"])
    _save(second, ["ambiguous"])
    assert _shown_tags(second) == "Tags: ambiguous, blurry, mine, too dark"
    first.run()
    assert _shown_tags(first) == "Tags: ambiguous, blurry, mine, too dark"
    dataset = run_dataset(run)
    tags = TagStore(run).tags(dataset)
    assert sorted(map(tuple, tags[["sample_id", "tag"]].to_numpy())) == [
        ("s0", t) for t in ("ambiguous", "blurry", "mine", "too dark")]
    assert TagStore(run).notes(dataset)["note"].tolist() == ["first look"]  # a save without a note keeps it
    with sqlite3.connect(run / "review.sqlite") as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_a_note_saved_meanwhile_in_another_session_is_not_replaced_unseen(monkeypatch, tmp_path):
    run = write_run(tmp_path, "run", LABELS, PRED_A, LOSS_A)
    first, second = (_sample_page(monkeypatch, tmp_path, "s0") for _ in range(2))
    _save(first, [], note="a 7 written like a 1")
    _save(second, ["blurry"], note="looks fine to me", refused=True)  # typed while the page showed no note
    notes = lambda: TagStore(run).notes(run_dataset(run))["note"].tolist()  # noqa: E731
    assert notes() == ["a 7 written like a 1"]
    shown = [e.value for e in second.error]
    assert len(shown) == 1 and "“a 7 written like a 1”" in shown[0] and "sample s0" in shown[0]
    assert second.text_input(key="note_sample").value == "looks fine to me"  # back in the box, not lost
    assert "Note: a 7 written like a 1" in [m.value for m in second.markdown]  # the page shows it now
    assert _shown_tags(second) == "Tags: blurry"  # the tag of the same save is kept
    _save(second, [], note="looks fine to me")  # seen now: saving again replaces it
    assert notes() == ["looks fine to me"]
    _save(first, [], note="a 7 written like a 1, surely", refused=True)  # first's page still showed its own note
    assert "“looks fine to me”" in first.error[0].value and notes() == ["looks fine to me"]


def test_two_sessions_tagging_different_samples_interleaved(monkeypatch, tmp_path):
    run = write_run(tmp_path, "run", LABELS, PRED_A, LOSS_A)
    sessions = {sid: _sample_page(monkeypatch, tmp_path, sid) for sid in ("s1", "s2")}
    for round_ in range(3):
        for sid, at in sessions.items():
            _save(at, [f"round {round_}"], note=f"{sid} after round {round_}")
    tags = TagStore(run).tags(run_dataset(run))
    assert sorted(map(tuple, tags[["sample_id", "tag"]].to_numpy())) == [
        (sid, f"round {r}") for sid in ("s1", "s2") for r in range(3)]
    notes = TagStore(run).notes(run_dataset(run)).set_index("sample_id")["note"].to_dict()
    assert notes == {"s1": "s1 after round 2", "s2": "s2 after round 2"}



class _BadgeArrivesOnce:
    """A badge board on which the picked run's health is unknown when the picker looks it up,
    and known a moment later, once: as when the check in the background ends mid-run."""

    def __init__(self) -> None:
        self.arrive = False

    def lookup(self, path):
        return None

    def last_known(self, path):
        return None

    def pending(self, paths):
        arrived, self.arrive = self.arrive, False
        return [] if arrived else list(paths)

    def request(self, paths):
        pass


def test_a_save_is_kept_when_a_health_badge_arrives_during_it(monkeypatch, tmp_path):
    """The picker reruns the app when badges arrive; a rerun asked for while the Save's own run
    drew the picker stopped that run before the form saw the click: nothing was written (one of
    six saves went missing so in the interleaved test above, under CPU load)."""
    board = _BadgeArrivesOnce()
    monkeypatch.setattr(badges, "shared_board", lambda: board)
    run = write_run(tmp_path, "run", LABELS, PRED_A, LOSS_A)
    at = _sample_page(monkeypatch, tmp_path, "s1")
    board.arrive = True
    _save(at, ["blurry"], note="a smudge")
    assert not board.arrive  # the picker did see the badge arrive during the save
    dataset = run_dataset(run)
    assert TagStore(run).tags(dataset)[["sample_id", "tag"]].to_numpy().tolist() == [["s1", "blurry"]]
    assert TagStore(run).notes(dataset)["note"].tolist() == ["a smudge"]
    assert _shown_tags(at) == "Tags: blurry"
