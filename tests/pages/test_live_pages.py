"""Auto-refresh of a run being written (issue #15): the toggle, and what a refresh reads.

The run here is written by a `RunWriter` of this process (so its state is `running`), with
a flush interval long enough that only the test's own `flush()` calls land data.
"""

from __future__ import annotations

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

import diagnostics
from diagnostics import badges, schema
from diagnostics.store import RunWriter
from pages import _shared
from tests.pages._app import assert_ok, open_app, plotly_charts, plotly_values

pytestmark = pytest.mark.usefixtures("served_like_the_cli")  # each rerun runs the picker too, as served
TOGGLE = "Auto-refresh every 5 s"


@pytest.fixture()
def live(tmp_path):
    writer = RunWriter(tmp_path / "live", {"name": "live", "task": "classification"}, flush_every_s=3600)
    _train(writer, range(0, 10))
    yield writer
    writer.close()


def _train(writer: RunWriter, steps) -> None:
    nf = len(schema.SUMMARY_FIELDS)
    for step in steps:
        writer.add_scalars(step, {"loss": 2.0 / (step + 1)})
        writer.add_summaries(step, ["fc"], ["activation"], np.full((1, nf), float(step)))
    writer.flush()


def _open(monkeypatch, writer: RunWriter, page: str | None = None) -> AppTest:
    return open_app(monkeypatch, writer.path.parent, page, writer.path.name, check_errors=True)


def _ok(at: AppTest) -> None:
    assert_ok(at, check_errors=True)


def _toggle(at: AppTest):
    return next((t for t in at.toggle if t.label.startswith("Auto-refresh")), None)


def _loss_steps(at: AppTest) -> list[int]:
    raw = next(t for t in plotly_charts(at)[0]["data"] if t["name"].endswith("raw"))
    return [int(v) for v in plotly_values(raw["x"])]


def _picker_label(at: AppTest) -> str:
    return at.sidebar.selectbox[0].value


def test_the_toggle_is_off_by_default_and_only_for_a_running_run(monkeypatch, live):
    at = _open(monkeypatch, live)
    toggle = _toggle(at)
    assert toggle is not None and toggle.label == TOGGLE and toggle.value is False
    live.close()
    at.run()
    _ok(at)
    assert _toggle(at) is None  # a finished run has nothing new
    assert not any("Auto-refresh stopped" in c.value for c in at.caption)  # it was never on


def test_a_refresh_reads_new_data_and_an_unchanged_run_is_not_read_again(monkeypatch, live):
    reads = []
    scalars = diagnostics.Run.scalars
    monkeypatch.setattr(diagnostics.Run, "scalars", lambda self: reads.append(1) or scalars(self))
    at = _open(monkeypatch, live)
    _toggle(at).set_value(True).run()
    _ok(at)
    assert _loss_steps(at) == list(range(10)) and len(reads) == 1
    at.run()  # a refresh with nothing new: the cached frame
    assert len(reads) == 1
    _train(live, range(10, 15))
    at.run()  # what the refresh triggers once the flush landed
    _ok(at)
    assert _loss_steps(at) == list(range(15)) and len(reads) == 2
    assert _toggle(at).value is True
    assert {m.label: m.value for m in at.metric}["Last step"] == "14"  # the last step


def test_the_picker_shows_the_run_finished_after_a_refresh(monkeypatch, live):
    at = _open(monkeypatch, live)
    _toggle(at).set_value(True).run()
    assert _picker_label(at).endswith("live · running")
    path = str(live.path)
    seen = _shared.live_fingerprint(path)
    live.close()
    assert _shared.live_fingerprint(path) != seen  # what the timer compares: the state changed
    _shared.run_list.clear()  # as the refresh does before it reruns
    at.run()
    _ok(at)
    assert _picker_label(at).endswith(" live")
    assert {m.label: m.value for m in at.metric}["State"] == "finished"
    assert _toggle(at) is None
    assert any("Auto-refresh stopped: this run is finished" in c.value for c in at.caption)


def test_the_fingerprint_changes_with_each_flush_and_only_then(live):
    path = str(live.path)
    first = _shared.live_fingerprint(path)
    assert first == _shared.live_fingerprint(path) and first[1] == "running"
    live.add_scalars(10, {"loss": 0.1})
    assert _shared.live_fingerprint(path) == first  # buffered, not on disk yet
    live.flush()
    assert _shared.live_fingerprint(path)[0] != first[0]


def test_the_choice_carries_over_to_distributions_and_health(monkeypatch, live):
    at = _open(monkeypatch, live)
    _toggle(at).set_value(True).run()
    at.switch_page("pages/distributions.py").run()
    _ok(at)
    assert _toggle(at).value is True
    _train(live, range(10, 12))
    at.run()  # a refresh: the new steps are there, the step slider follows
    _ok(at)
    steps = at.select_slider(key="dist_step_activation")
    assert steps.options[-1] == "11" and steps.value == 11  # left at the newest step, it follows
    steps.set_value(4).run()
    _train(live, range(12, 13))
    at.run()
    steps = at.select_slider(key="dist_step_activation")
    assert steps.options[-1] == "12" and steps.value == 4  # a step picked by hand stays
    at.switch_page("pages/health.py").run()
    _ok(at)
    assert _toggle(at).label == "Auto-refresh every 30 s" and _toggle(at).value is True
    _toggle(at).set_value(False).run()
    at.switch_page("pages/overview.py").run()
    assert _toggle(at).value is False


def test_a_running_runs_stale_badge_does_not_rerun_the_app_on_its_own(monkeypatch, live):
    """Its re-check waits for the next refresh: a run that keeps changing would rerun forever."""
    badges.health_counts(live.path)
    _train(live, range(10, 12))
    at = _open(monkeypatch, live)
    captions = [c.value for c in at.sidebar.caption]
    assert any("before the latest data" in c for c in captions)
    assert not any("checking the runs' health" in c for c in captions)
