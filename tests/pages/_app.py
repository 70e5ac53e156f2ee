"""What the page tests share: the app opened on a runs folder through Streamlit's AppTest, and
the plotly charts it drew read back as JSON."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[2] / "streamlit_app.py")


def run_app(monkeypatch, runs_dir, run_name: str | None = None, *, timeout: float = 60) -> AppTest:
    """The app's first run on `runs_dir`, as a browser opening the address ?run=NAME (the
    Overview, or the page the app opens on); nothing asserted."""
    monkeypatch.setenv("DIAGNOSTICS_RUNS", str(runs_dir))
    at = AppTest.from_file(APP, default_timeout=timeout)
    if run_name is not None:
        at.query_params["run"] = run_name  # the address ?run=NAME opens a run
    at.run()
    return at


def assert_ok(at: AppTest, *, check_errors: bool = False) -> None:
    """No exception on the page (and, with check_errors, no st.error box either)."""
    assert not at.exception, [e.value for e in at.exception]
    if check_errors:
        assert not at.error, [e.value for e in at.error]


def open_app(monkeypatch, runs_dir, page: str | None = None, run_name: str | None = None, *,
             check_errors: bool = False, timeout: float = 60) -> AppTest:
    """`run_app`, then a switch to `page` (a path such as "pages/compare.py") if given, then
    `assert_ok`."""
    at = run_app(monkeypatch, runs_dir, run_name, timeout=timeout)
    if page is not None:
        at.switch_page(page).run()
    assert_ok(at, check_errors=check_errors)
    return at


def plotly_values(value) -> np.ndarray:
    """A trace's array as plotly's JSON holds it: a list, or typed bytes ({"dtype", "bdata"})."""
    if isinstance(value, dict) and "bdata" in value:
        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
    return np.asarray(value, dtype=float)


def plotly_charts(at: AppTest) -> list[dict]:
    """The figures of the page's plotly charts, in the order drawn."""
    return [json.loads(el.proto.spec) for el in at.get("plotly_chart")]
