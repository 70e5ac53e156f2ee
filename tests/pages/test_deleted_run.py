"""A run deleted, or files of it removed, while its page reads it: a sentence, never a traceback."""

from __future__ import annotations

import shutil

import pytest

import diagnostics
from tests.conftest import train_tiny
from tests.pages._app import run_app

PAGES = ["pages/overview.py", "pages/distributions.py", "pages/health.py", "pages/outputs.py", "pages/datamap.py"]


@pytest.fixture()
def folder(tmp_path):
    runs = tmp_path / "runs"
    for name in ("gone", "kept"):
        train_tiny(runs, name=name, steps=12, every=3)
    return runs


def _deleting_after_open(monkeypatch, path):
    """The run is opened (the page's first read), then its folder is deleted at once."""
    real = diagnostics.open_run

    def open_then_delete(where, *args, **kwargs):
        run = real(where, *args, **kwargs)
        shutil.rmtree(path, ignore_errors=True)
        return run

    monkeypatch.setattr(diagnostics, "open_run", open_then_delete)
    return real


@pytest.mark.parametrize("page", PAGES)
def test_a_run_deleted_while_its_page_loads_is_said_so(monkeypatch, served_like_the_cli, folder, page):
    at = run_app(monkeypatch, folder, "gone", timeout=120)
    real = _deleting_after_open(monkeypatch, folder / "gone")
    at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("was deleted while this page read it" in w.value for w in at.warning), [w.value for w in at.warning]
    monkeypatch.setattr(diagnostics, "open_run", real)
    at.run()  # the next rerun lists the runs again: the deleted one is gone, the other shown
    assert not at.exception
    assert [o.split()[-1] for o in at.sidebar.selectbox[0].options] == ["kept"]


def test_any_other_page_failure_is_one_line_not_a_traceback(monkeypatch, served_like_the_cli, folder):
    monkeypatch.setenv("DIAGNOSTICS_STRICT_PAGES", "0")
    from pages import _shared

    def broken(*args, **kwargs):
        raise ValueError("something the page did not expect")

    at = run_app(monkeypatch, folder, "kept", timeout=120)
    monkeypatch.setattr(_shared, "scalars", broken)
    at.switch_page("pages/overview.py").run()
    assert not at.exception
    assert any("could not be drawn (ValueError: something the page did not expect)" in e.value for e in at.error)
