"""benchmarks/public_bugs_heldout.py (the second held-out set of public-report bugs): the set is
new (no case shares a name with the other two sets or the suite), three cheap cases train end to
end with the bug visible in what the hooks recorded, and the verdicts follow from the problems
and this set's accepted names. It does not assert that the rules find the bugs: the set
measures the rules as they are."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")

_ROOT = Path(__file__).resolve().parents[2]


def _module(name):
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark", _ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


heldout = _module("public_bugs_heldout")
_CHEAP = ("round_in_forward", "lambdalr_returns_lr", "gan_generator_step_detached")


def test_the_set_is_new_and_every_case_accepts_its_own_rule():
    from benchmarks import health_suite, public_bugs, public_bugs_fresh
    names = [c.name for c in heldout.CASES]
    assert len(names) == 20 and len(set(names)) == len(names)
    seen = {c.name for c in [*public_bugs.CASES, *public_bugs_fresh.CASES, *health_suite.CASES]}
    assert not seen & set(names)
    assert set(heldout.ACCEPT) == set(names)
    for case in heldout.CASES:
        assert case.rule in heldout.ACCEPT[case.name], case.name


def test_judge_reads_this_sets_accepted_names():
    case = next(c for c in heldout.CASES if c.name == "round_in_forward")
    problem = lambda rule: SimpleNamespace(severity="error", cause=SimpleNamespace(rule=rule, layer=None), message=rule)
    finding = SimpleNamespace(severity="error", rule="stuck_parameters", layer="net.0.weight")
    second = heldout.judge(case, [finding], [problem("regression_loss_on_class_ids"), problem("stuck_parameters")])
    assert (second["first_ok"], second["any_ok"]) == (False, True)
    first = heldout.judge(case, [finding], [problem("frozen_model")])  # accepted here, not the case's `rule`
    assert (first["first_ok"], first["any_ok"]) == (True, True)
    assert heldout.judge(case, [], [])["first_ok"] is False


@pytest.mark.slow
def test_three_cheap_cases_train_with_the_bug_recorded_and_are_scored(tmp_path, capsys, one_torch_thread):
    import diagnostics
    results = heldout.run_all([c for c in heldout.CASES if c.name in _CHEAP], tmp_path / "runs")
    assert sorted(r["case"] for r in results) == sorted(_CHEAP)
    for r in results:
        causes = [p.split()[1] for p in r["problems"]]
        assert r["first_ok"] == (bool(causes) and causes[0] in heldout.ACCEPT[r["case"]])
        assert r["any_ok"] == any(c in heldout.ACCEPT[r["case"]] for c in causes)
    runs = {case: diagnostics.open_run(next((tmp_path / "runs" / case).glob("*/run.json")).parent) for case in _CHEAP}
    scalars = lambda case, name: (lambda s: s[s["name"] == name]["value"].to_numpy())(runs[case].scalars([name]))
    # torch.round has a zero gradient: every recorded global gradient norm is 0
    grad = scalars("round_in_forward", "grad_norm")
    assert len(grad) == 100 and (grad == 0).all()
    # LambdaLR multiplies the base rate (1e-3) by what the lambda returns (1e-3)
    lr = scalars("lambdalr_returns_lr", "lr")
    assert len(lr) == 100 and abs(lr - 1e-6).max() < 1e-12
    s = heldout.pb.summarise(results)
    assert (s["cases"], s["first_ok"], s["any_ok"]) == (3, sum(r["first_ok"] for r in results),
                                                       sum(r["any_ok"] for r in results))


@pytest.mark.slow
def test_the_script_writes_its_table_and_json(tmp_path, capsys, one_torch_thread):
    heldout.main(["--only", "round_in_forward", "--json", str(tmp_path / "out.json")])
    assert "round_in_forward" in capsys.readouterr().out
    payload = json.loads((tmp_path / "out.json").read_text())
    (r,) = payload["results"]
    assert r["case"] == "round_in_forward" and r["train_s"] > 0
    assert payload["summary"]["cases"] == 1 and payload["summary"]["any_ok"] == int(r["any_ok"])
