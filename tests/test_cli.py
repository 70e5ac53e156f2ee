"""The `diagnostics` command as a user types it."""

from __future__ import annotations

import subprocess
import sys

import pytest

import diagnostics


def _cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "diagnostics.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_dashboard_on_a_missing_folder_says_what_to_do(tmp_path):
    out = _cli("dashboard", str(tmp_path / "nope"))
    assert out.returncode == 2
    assert "does not exist" in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_bad_port_is_refused():
    out = _cli("dashboard", ".", "--port", "70000")
    assert out.returncode == 2 and "port must be 1..65535" in out.stderr


@pytest.mark.slow
def test_demo_trains_every_example_into_readable_runs(tmp_path):
    out = _cli("demo", "--runs-dir", str(tmp_path), "--epochs", "1", "--no-serve", timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    runs = diagnostics.list_runs(tmp_path)
    assert set(runs["name"]) == {"digits-cnn", "digits-cnn-raw-pixels", "oct-cnn", "radar-cnn"}
    assert (runs["state"] == "finished").all()
    for path in runs["path"]:
        r = diagnostics.open_run(path)
        assert not r.scalars().empty and not r.distributions("activation").empty
        assert not r.samples("val").empty  # every example evaluates for error review
