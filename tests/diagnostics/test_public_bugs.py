"""benchmarks/public_bugs.py (held-out bugs from public reports): the cases train and the
script's summary is well-formed. It does not assert that the rules find the bugs: the set
measures the rules as they are."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "public_bugs.py"


def _module():
    spec = importlib.util.spec_from_file_location("public_bugs_benchmark", _PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


bugs = _module()


def test_every_case_has_its_rule_among_the_accepted_names():
    names = [c.name for c in bugs.CASES]
    assert len(names) >= 10 and len(set(names)) == len(names)
    assert set(bugs.ACCEPT) == set(names)
    for case in bugs.CASES:
        assert case.rule in bugs.ACCEPT[case.name], case.name


def test_summary_counts_by_hand():
    results = [{"first_ok": True, "any_ok": True, "loud": ["warning a x"], "train_s": 1.0},
               {"first_ok": False, "any_ok": True, "loud": ["warning b y"], "train_s": 2.0},
               {"first_ok": False, "any_ok": False, "loud": [], "train_s": 0.5},
               {"first_ok": False, "any_ok": False, "loud": ["error c z"], "train_s": 0.5}]
    s = bugs.summarise(results)
    assert (s["cases"], s["first_ok"], s["any_ok"], s["no_loud"]) == (4, 1, 2, 1)
    assert s["first_rate"] == 0.25 and s["any_rate"] == 0.5 and s["total_s"] == 4.0


def test_one_case_trains_and_the_script_writes_its_table_and_json(tmp_path, capsys):
    threads = torch.get_num_threads()
    try:
        bugs.main(["--only", "zero_grad_before_step", "--json", str(tmp_path / "out.json")])
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "zero_grad_before_step" in out and "first problem names the cause: " in out
    payload = json.loads((tmp_path / "out.json").read_text())
    (r,) = payload["results"]
    assert r["case"] == "zero_grad_before_step" and r["train_s"] > 0
    causes = [p.split()[1] for p in r["problems"]]
    assert r["first_ok"] == (bool(causes) and causes[0] in r["accept"])
    assert r["any_ok"] == any(c in r["accept"] for c in causes)
    assert payload["summary"]["cases"] == 1
    assert payload["summary"]["first_ok"] == int(r["first_ok"])
