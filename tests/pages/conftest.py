"""Fixtures the page tests share."""

from __future__ import annotations

import pytest
from streamlit.runtime import pages_manager


@pytest.fixture()
def served_like_the_cli(monkeypatch):
    """Every rerun runs the entry file (and its picker), as `diagnostics dashboard` serves it;
    AppTest alone would rerun the page file only, once it sees a pages/ folder."""
    real = pages_manager.PagesManager.__init__

    def init(self, *args, **kwargs):
        real(self, *args, **kwargs)
        pages_manager.PagesManager.uses_pages_directory = False

    monkeypatch.setattr(pages_manager.PagesManager, "__init__", init)
