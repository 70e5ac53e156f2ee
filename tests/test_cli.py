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


def test_health_exit_code_gates_on_severity(tmp_path):
    import json

    import torch
    from torch import nn

    import hooks

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=1e30)
    crit = nn.CrossEntropyLoss()
    with hooks.watch(model, optimizer=opt, loss_fn=crit, run_dir=tmp_path, name="nan", every=1):
        for _ in range(4):
            opt.zero_grad()
            crit(model(torch.randn(16, 6) * 1e3), torch.randint(0, 3, (16,))).backward()
            opt.step()
    out = _cli("health", str(tmp_path / "nan"), "--json")
    assert out.returncode == 1  # an error-level finding: NaN
    findings = json.loads(out.stdout)
    assert findings[0]["rule"] == "nonfinite" and findings[0]["severity"] == "error"
    text = _cli("health", str(tmp_path / "nan"))
    assert "[error] nonfinite" in text.stdout and "try:" in text.stdout
    assert _cli("health", str(tmp_path / "missing")).returncode == 2
