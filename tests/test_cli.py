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



_FIRST_CHART = """
import sys
import pandas as pd
from diagnostics.cli import preload_analysis
preload_analysis()
from diagnostics import figures
loaded = set(sys.modules)
frame = pd.DataFrame({"step": range(10), "name": ["loss"] * 5 + ["val/acc"] * 5, "value": [float(i) for i in range(10)],
                      "rank": 0, "wall_time_s": [float(i) for i in range(10)]})
for x in ("step", "time"):
    figures.runs_scalars_figure({"a": frame, "b": frame}, ["loss", "lr", "val/acc"], x=x, smooth=0.6).to_json()
print(sorted(set(sys.modules) - loaded))
"""


def test_the_server_boot_leaves_no_import_to_the_first_chart():
    """The Overview's chart of panels, of several runs, smoothed, after the server's boot: plotly
    imports nothing more (without the boot's warm-up it imported 58 modules, 0.2-0.3 s of the
    first page's server time)."""
    out = subprocess.run([sys.executable, "-c", _FIRST_CHART], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


@pytest.mark.slow
def test_demo_trains_every_example_into_readable_runs(tmp_path):
    out = _cli("demo", "--runs-dir", str(tmp_path), "--epochs", "1", "--no-serve", timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    runs = diagnostics.list_runs(tmp_path)
    assert set(runs["name"]) == {"digits-baseline", "digits-raw-pixels", "digits-fixed", "oct-cnn", "radar-cnn"}
    # the story it prints is read off the runs: the baseline's bug found, the fix compared on the same samples
    assert "Health of digits-baseline: CrossEntropyLoss is given probabilities" in out.stdout
    c = diagnostics.compare(tmp_path / "digits-baseline", tmp_path / "digits-fixed")
    assert f"{c.summary['fixed']} samples fixed, {c.summary['broken']} broken" in out.stdout
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
    report = json.loads(out.stdout)
    findings, problems = report["findings"], report["problems"]
    assert findings[0]["rule"] == "nonfinite" and findings[0]["severity"] == "error"
    # the first problem is the NaN, and each symptom it explains is a finding shown as info that names it
    assert problems[0]["cause"]["rule"] == "nonfinite" and problems[0]["severity"] == "error"
    symptoms = {s["rule"] for p in problems for s in p["symptoms"]}
    assert {f["rule"] for f in findings if f["evidence"].get("deferred_to")} <= symptoms
    assert sum(f["severity"] != "info" for f in findings) == len(problems)  # a loud finding is a problem's cause
    text = _cli("health", str(tmp_path / "nan"))
    assert "1. [error] nonfinite" in text.stdout and "try:" in text.stdout
    assert f"{len(problems)} problem" in text.stdout.splitlines()[0]
    assert _cli("health", str(tmp_path / "missing")).returncode == 2


def test_compare_prints_the_diff_as_text_and_json(tmp_path):
    import json

    from tests.diagnostics.test_compare import LABELS, LOSS_A, LOSS_B, NAMES, PRED_A, PRED_B, write_run

    a = write_run(tmp_path, "base", LABELS, PRED_A, LOSS_A, class_names=NAMES, config={"lr": 0.1})
    b = write_run(tmp_path, "better", LABELS, PRED_B, LOSS_B, class_names=NAMES, config={"lr": 0.05})
    text = _cli("compare", str(a), str(b), "--limit", "1")
    assert text.returncode == 0, text.stderr
    assert "accuracy on the shared samples: A 58.3%, B 75.0% (+16.7 points)" in text.stdout
    assert "fixed 4, broken 2, still wrong 1, still right 5" in text.stdout
    assert "exact McNemar test, p = 0.688" in text.stdout
    lines = text.stdout.splitlines()
    fixed = lines[lines.index("top fixed (by how much the loss fell):") + 2].split()
    assert fixed == ["s9", "eel", "cat", "eel", "3.0", "0.2"]  # --limit 1: only the largest move
    assert lines[lines.index("top fixed (by how much the loss fell):") + 3] == ""
    assert any(line.split()[:3] == ["cat", "4", "50.0%"] for line in lines)  # per-class row
    assert any(line.split() == ["lr", "0.1", "0.05", "changed", "config"] for line in lines)
    out = _cli("compare", str(a), str(b), "--json", "--limit", "0")
    assert out.returncode == 0 and out.stderr == ""
    report = json.loads(out.stdout)
    assert (report["summary"]["fixed"], report["summary"]["broken"]) == (4, 2)
    assert [r["sample_id"] for r in report["broken"]] == ["s7", "s1"]
    assert [r["name"] for r in report["per_class"]] == NAMES and report["config"][0]["key"] == "lr"


def test_compare_says_what_is_wrong_in_one_line(tmp_path):
    from tests.diagnostics.test_compare import LABELS, LOSS_A, LOSS_B, PRED_A, PRED_B, write_run

    a = write_run(tmp_path, "a", LABELS, PRED_A, LOSS_A)
    b = write_run(tmp_path, "b", LABELS[1:], PRED_B[1:], LOSS_B[1:], ids=[f"s{i}" for i in range(1, 12)])
    for args, message in [((str(a), str(b), "--split", "test"), "no evaluation of split 'test'"),
                          ((str(a), str(tmp_path / "missing")), "no run.json in"),
                          ((str(a), str(tmp_path)), "no run.json in")]:
        out = _cli("compare", *args)
        assert out.returncode == 2 and message in out.stderr
        assert len(out.stderr.strip().splitlines()) == 1 and out.stdout == ""
    assert _cli("compare", str(a), str(b), "--limit", "-1").returncode == 2
    warned = _cli("compare", str(a), str(b), "--json")  # different sets: said on stderr, still compared
    assert warned.returncode == 0 and "Different evaluation sets" in warned.stderr
    assert "WARNING: Different evaluation sets" in _cli("compare", str(a), str(b)).stdout


def test_compare_of_runs_on_different_data_exits_2_with_one_line(tmp_path):
    from tests.diagnostics.test_compare import LABELS, LOSS_A, LOSS_B, PRED_A, PRED_B, write_run

    a = write_run(tmp_path, "digits", LABELS, PRED_A, LOSS_A)
    b = write_run(tmp_path, "oct", [2] * 12, PRED_B, LOSS_B)  # labels differ on the 8 ids not of class 2
    for extra in ((), ("--json",)):
        out = _cli("compare", str(a), str(b), *extra)
        assert out.returncode == 2 and out.stdout == ""
        assert out.stderr.strip().splitlines() == [
            "diagnostics: runs digits and oct share 12 ids on split 'val' but 8 carry different labels: they were "
            "evaluated on different data — compare runs evaluated on the same samples (the same ids and labels "
            "passed to run.evaluate)"]


def test_compare_reports_per_review_tag_as_text_and_json(tmp_path):
    import json

    from diagnostics.schema import dataset_key
    from diagnostics.tags import TagStore
    from tests.diagnostics.test_compare import LABELS, LOSS_A, LOSS_B, NAMES, PRED_A, PRED_B, write_run

    a = write_run(tmp_path, "base", LABELS, PRED_A, LOSS_A, class_names=NAMES)
    b = write_run(tmp_path, "better", LABELS, PRED_B, LOSS_B, class_names=NAMES)
    untagged = _cli("compare", str(a), str(b))
    assert "(none: tag samples on the Error review page of A" in untagged.stdout
    assert json.loads(_cli("compare", str(a), str(b), "--json").stdout)["per_tag"] == []
    # s2 s3 s6 fixed, s1 broken, s10 still wrong (hand count in tests/diagnostics/test_compare.py)
    TagStore(a).add_tags(dataset_key("val", [f"s{i}" for i in range(12)], LABELS), ["s1", "s2", "s3", "s6", "s10"],
                         "too dark")
    text = _cli("compare", str(a), str(b))
    assert text.returncode == 0, text.stderr
    assert "  Of the 5 samples tagged 'too dark', 3 fixed, 1 broken, 1 still wrong, 0 still right." in text.stdout
    report = json.loads(_cli("compare", str(a), str(b), "--json").stdout)
    assert report["per_tag"] == [{"tag": "too dark", "tagged": 5, "fixed": 3, "broken": 1, "still_wrong": 1,
                                  "still_right": 0, "not_in_b": 0}]


def test_the_dashboard_hides_streamlits_deploy_button(monkeypatch, tmp_path):
    """A local tool: `diagnostics dashboard` starts streamlit with the minimal toolbar (no
    "Deploy" button, no developer menu), and so does `streamlit run` from the project root."""
    from pathlib import Path

    from diagnostics import cli

    seen = {}

    def fake_exec(path, cmd, env):
        seen["cmd"] = cmd
        raise SystemExit(0)

    monkeypatch.setattr(cli.os, "execve", fake_exec)
    monkeypatch.setattr(cli.subprocess, "call", lambda cmd, env: seen.setdefault("cmd", cmd) and 0)
    try:
        cli.serve(tmp_path, port=8599)
    except SystemExit:
        pass
    cmd = seen["cmd"]
    assert cmd[cmd.index("--client.toolbarMode") + 1] == "minimal"
    config = (Path(__file__).parents[1] / ".streamlit" / "config.toml").read_text()
    assert '[client]\ntoolbarMode = "minimal"' in config


def test_make_demo_takes_a_port():
    import shutil
    import subprocess
    from pathlib import Path

    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    root = Path(__file__).parents[1]
    out = subprocess.run(["make", "-n", "-W", "setup", "demo", "PORT=8601"], cwd=root, capture_output=True, text=True)
    assert "diagnostics demo --port 8601" in out.stdout, out.stdout + out.stderr
