"""A run's name is one folder inside run_dir (issue #15): names that would write elsewhere
are refused with one line, before anything is written."""

from __future__ import annotations

import pytest
from torch import nn

import hooks


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", ".", "", "  ", "a\\b", "nul\0"])
def test_a_name_that_would_leave_run_dir_is_refused(tmp_path, name):
    runs = tmp_path / "runs"
    with pytest.raises(ValueError, match="name must be one folder name inside run_dir") as err:
        hooks.watch(nn.Linear(2, 2), run_dir=runs, name=name)
    assert "\n" not in str(err.value)
    assert not any(tmp_path.rglob("run.json"))  # nothing written, inside or beside run_dir


def test_an_ordinary_name_with_dots_and_spaces_is_fine(tmp_path):
    run = hooks.watch(nn.Linear(2, 2), run_dir=tmp_path, name="resnet v1.2 (lr 0.1)")
    run.close()
    assert (tmp_path / "resnet v1.2 (lr 0.1)" / "run.json").is_file()
