"""The dashboard opens only runs under its runs folder (issue #15): a ?run= address naming a
path outside it, or anything not listed, shows the folder's own run instead."""

from __future__ import annotations

import pytest

from tests.diagnostics.test_compare import LABELS, LOSS_A, PRED_A, write_run
from tests.pages._app import run_app


@pytest.mark.parametrize("address", ["../secret", "/tmp/../secret", "secret", "..", "a/../../secret", "%2e%2e/secret"])
def test_a_run_address_outside_the_folder_opens_nothing_outside(monkeypatch, tmp_path, address):
    runs = tmp_path / "runs"
    write_run(runs, "a", LABELS, PRED_A, LOSS_A)
    write_run(tmp_path, "secret", LABELS, PRED_A, LOSS_A)  # beside the runs folder, not in it
    at = run_app(monkeypatch, runs, address)
    assert not at.exception
    assert [t.value for t in at.title] == ["Run a"]
    assert at.session_state["run_path"] == str(runs / "a")
