"""Health badges of the run picker: cached on disk per run version, equal to health()."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import diagnostics
from diagnostics import badges, health
from diagnostics.badges import BadgeBoard, HealthCounts
from diagnostics.store import RunWriter, run_version


def _hand_count(path) -> HealthCounts:
    """Problems by severity (a cause with its symptoms counts once), and info findings."""
    run = diagnostics.open_run(path)
    found, problems = run.health(), health.problems(run)
    return HealthCounts(sum(p.severity == "error" for p in problems), sum(p.severity == "warning" for p in problems),
                        sum(f.severity == "info" for f in found))


def _counting_check(monkeypatch) -> list:
    calls = []
    real = health.diagnose

    def diagnose(run):
        calls.append(str(run.path))
        return real(run)

    monkeypatch.setattr(health, "diagnose", diagnose)
    return calls


@pytest.fixture()
def runs(tmp_path, recorded_runs):
    folder = tmp_path / "runs"
    shutil.copytree(recorded_runs, folder, ignore=shutil.ignore_patterns(badges.CACHE_FILE, "*.sqlite*"))
    return folder


@pytest.mark.parametrize("name", ["cls", "reg", "review"])
def test_counts_equal_health_of_the_run_and_are_cached(runs, monkeypatch, name):
    expected = _hand_count(runs / name)
    calls = _counting_check(monkeypatch)
    assert badges.health_counts(runs / name) == expected
    assert badges.health_counts(runs / name) == expected
    assert len(calls) == 1  # the second answer came from the disk
    stored = json.loads((runs / name / badges.CACHE_FILE).read_text())
    assert [f["rule"] for f in stored["findings"]] == [f.rule for f in diagnostics.open_run(runs / name).health()]


def test_badge_text():
    assert HealthCounts(1, 2, 0).badge == "⛔1 ⚠2"
    assert HealthCounts(0, 3, 5).badge == "⚠3"
    assert HealthCounts(0, 0, 4).badge == "✓"
    assert HealthCounts(1, 0, 0).describe() == "1 problem: 1 error"
    assert HealthCounts(2, 1, 0).describe() == "3 problems: 2 errors, 1 warning"
    assert HealthCounts(0, 0, 7).describe() == "no problem"


def test_new_data_invalidates_the_cache(runs, monkeypatch):
    path = runs / "cls"
    badges.health_counts(path)
    calls = _counting_check(monkeypatch)
    before = run_version(path)
    w = RunWriter(path, json.loads((path / "run.json").read_text()), flush_every_s=3600)
    w.add_scalar(99, "loss", float("nan"))  # a non-finite loss: an error finding
    w.close()
    assert run_version(path) != before
    assert badges.cached_report(path) is None
    counts = badges.health_counts(path)
    assert len(calls) == 1 and counts == _hand_count(path) and counts.errors >= 1


def test_a_manifest_change_invalidates_the_cache(runs):
    path = runs / "reg"
    badges.health_counts(path)
    manifest = json.loads((path / "run.json").read_text())
    (path / "run.json").write_text(json.dumps({**manifest, "evaluations": []}))
    assert badges.cached_report(path) is None


def test_changed_rules_invalidate_the_cache(runs, monkeypatch):
    path = runs / "cls"
    badges.health_counts(path)
    monkeypatch.setattr(badges, "rules_fingerprint", lambda: "other rules")
    assert badges.cached_report(path) is None


def test_the_rules_fingerprint_covers_the_health_subpackage(tmp_path):
    package = Path(badges.__file__).parent
    assert (package / "health" / "registry.py").exists()
    copy = tmp_path / "diagnostics"
    shutil.copytree(package, copy, ignore=shutil.ignore_patterns("__pycache__"))
    before = badges.sources_fingerprint(copy)
    assert before == badges.sources_fingerprint(package) == badges.rules_fingerprint()
    rule_module = copy / "health" / "activations.py"
    rule_module.write_text(rule_module.read_text() + "\n# a threshold changed\n")
    edited = badges.sources_fingerprint(copy)
    assert edited != before
    (copy / "health" / "activations.py").rename(copy / "activations.py")  # same content, moved
    assert badges.sources_fingerprint(copy) != edited


def test_run_version_is_the_same_in_another_process(runs):
    path = runs / "review"
    code = f"from diagnostics.store import run_version; print(run_version({str(path)!r}))"
    out = subprocess.run([sys.executable, "-c", code],
                         capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parents[2],
                         env={**os.environ, "PYTHONHASHSEED": "123"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == run_version(path)


def test_a_read_only_run_is_computed_without_a_cache(runs, monkeypatch):
    path = runs / "cls"
    real_replace = os.replace

    def refuse(src, dst):  # as a read-only folder would (chmod does not stop root)
        if Path(dst).name == badges.CACHE_FILE:
            raise PermissionError(13, "Read-only file system", str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(badges.os, "replace", refuse)
    assert badges.health_counts(path) == _hand_count(path)
    assert not (path / badges.CACHE_FILE).exists()
    assert not [p for p in path.iterdir() if p.name.startswith(".tmp-")]  # no temporary file left behind


def test_a_damaged_cache_file_is_recomputed(runs):
    path = runs / "reg"
    (path / badges.CACHE_FILE).write_text("{half")
    assert badges.health_counts(path) == _hand_count(path)


def test_board_answers_at_once_then_computes_in_a_child_process(runs, monkeypatch):
    calls = _counting_check(monkeypatch)
    board = BadgeBoard()
    paths = [str(runs / n) for n in ("cls", "reg", "review")]
    assert [board.lookup(p) for p in paths] == [None, None, None]
    assert board.pending(paths) == paths
    board.request(paths)
    assert board.wait(timeout=240)
    assert calls == []  # computed in the child, not in this process
    assert [board.lookup(p) for p in paths] == [_hand_count(p) for p in paths]
    assert board.pending(paths) == []
    assert all((Path(p) / badges.CACHE_FILE).is_file() for p in paths)


def test_board_reports_a_broken_run_instead_of_waiting_for_it(tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "run.json").write_text("{not json")
    board = BadgeBoard()
    board.request([str(broken)])
    assert board.wait(timeout=120)
    known = board.lookup(str(broken))
    assert isinstance(known, str) and "run.json" in known
    assert board.pending([str(broken)]) == []


@pytest.mark.parametrize("name", ["cls", "reg", "review"])
def test_cached_health_equals_health_field_by_field(runs, monkeypatch, name):
    live = diagnostics.open_run(runs / name).health()
    badges.health_counts(runs / name)
    calls = _counting_check(monkeypatch)
    cached = badges.cached_health(runs / name)
    assert calls == []  # read back from the disk
    assert [f.to_dict() for f in cached] == [f.to_dict() for f in live]
    assert [type(f) for f in cached] == [type(f) for f in live]
    cached_problems = badges.cached_problems(runs / name)
    assert calls == [] and cached_problems == health.problems(diagnostics.open_run(runs / name))


def test_a_later_request_jumps_the_queue(runs):
    board = BadgeBoard()
    a, b, c = (str(runs / n) for n in ("cls", "reg", "review"))
    board.request([a, b, c])
    board.request([c])  # the user picked c meanwhile: it is checked before b
    assert board.wait(timeout=240)
    written = {p: (Path(p) / badges.CACHE_FILE).stat().st_mtime_ns for p in (a, b, c)}
    assert written[c] < written[b]


def test_the_badge_counts_problems_not_findings(runs, monkeypatch):
    # weight decay with the loss at its baseline (one problem: the loss is its symptom) and a leak of its own
    from diagnostics.health import Finding

    def f(rule, **evidence):
        return Finding(rule, "warning", None, 0, 9, f"{rule}.", "Fix it.", evidence)

    rules = (lambda run: [f("loss_vs_baseline", last_loss=2.3, baseline=2.3)],
             lambda run: [f("weight_decay_dominates")], lambda run: [f("split_leakage")])
    monkeypatch.setattr(health, "RULES", rules)
    monkeypatch.setattr(badges, "rules_fingerprint", lambda: "three fake rules")
    counts = badges.health_counts(runs / "cls")
    assert counts == HealthCounts(0, 2, 1)  # 3 warnings before, one of them a symptom (now info)
    assert (counts.badge, counts.describe()) == ("⚠2", "2 problems: 2 warnings")
    stored = badges.cached_problems(runs / "cls")
    assert [(p.cause.rule, [s.rule for s in p.symptoms]) for p in stored] == [
        ("weight_decay_dominates", ["loss_vs_baseline"]), ("split_leakage", [])]
