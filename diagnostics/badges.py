"""Health badges for the run picker, cached on disk per run version.

A run's `health()` takes one to three seconds; a picker over 20 runs that computed every
badge before drawing kept the dashboard blank for a minute. Here a run's findings and
problems (`diagnostics.health.diagnose`) are kept in `health_cache.json` inside the run
directory (written under a temporary name, then renamed: the training process of a live
run writes the same folder), keyed by the
run's content version and by the health rules' own source, so a badge is never older
than the data it describes. A run directory that cannot be written still works: its
findings are computed and kept in memory.

`BadgeBoard` answers at once with what is known, and computes the rest in a child
process at low priority (no lock contention with the page being drawn), one run after
another, the run being looked at first.

Example::

    from diagnostics import badges
    counts = badges.health_counts("runs/exp1")          # cached, or computed and cached
    counts.badge                                        # '⛔1 ⚠2' (problems), or '✓' when none
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from diagnostics.exceptions import DiagnosticsError
from diagnostics.store import open_run, run_version

CACHE_FILE = "health_cache.json"
PENDING = "…"  # the badge of a run whose health is being checked


@dataclass(frozen=True)
class HealthCounts:
    """How many problems of each severity a run's health holds (a problem is a cause with the
    symptoms it explains: `diagnostics.health.problems`), and how many findings are info."""

    errors: int
    warnings: int
    infos: int

    @property
    def badge(self) -> str:
        """'⛔1 ⚠2' (problems that are errors, warnings), or '✓' when there is none."""
        marks = [f"⛔{self.errors}" if self.errors else "", f"⚠{self.warnings}" if self.warnings else ""]
        return " ".join(m for m in marks if m) or "✓"

    def describe(self) -> str:
        """'3 problems: 1 error, 2 warnings' for the caption under the picker."""
        counted = ((self.errors, "error"), (self.warnings, "warning"))
        parts = [f"{n} {word}{'s' if n != 1 else ''}" for n, word in counted if n]
        n = self.errors + self.warnings
        return f"{n} problem{'s' if n != 1 else ''}: {', '.join(parts)}" if n else "no problem"


@lru_cache(maxsize=1)
def rules_fingerprint() -> str:
    """Changes when the health rules, or anything they read through, change: a hash of the
    package's own sources (the rules live in the `diagnostics.health` subpackage and lean on
    dynamics, store...)."""
    spec = importlib.util.find_spec("diagnostics")
    return sources_fingerprint(Path(spec.origin).parent) if spec and spec.origin else ""


def sources_fingerprint(package: Path) -> str:
    """A hash of every .py file under `package`, subpackages included, by path and content."""
    h = hashlib.sha1()
    for source in sorted(package.rglob("*.py")):
        h.update(source.relative_to(package).as_posix().encode() + b"\0" + source.read_bytes())
    return h.hexdigest()[:16]


def _key(path: str | os.PathLike) -> str:
    return f"{run_version(path)}:{rules_fingerprint()}"


def _counts(report: dict) -> HealthCounts:
    severities = [p.get("severity") for p in report["problems"]]
    infos = sum(f.get("severity") == "info" for f in report["findings"])
    return HealthCounts(severities.count("error"), severities.count("warning"), infos)


def cached_report(path: str | os.PathLike, key: str | None = None, any_version: bool = False) -> dict | None:
    """{"findings": [...], "problems": [...]} (as `to_dict()`) stored for the run's current
    version, else None (`any_version`: whatever was stored last, for a run that has changed since)."""
    try:
        stored = json.loads((Path(path) / CACHE_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(stored, dict) or not any_version and stored.get("key") != (key or _key(path)):
        return None
    found, problems = stored.get("findings"), stored.get("problems")
    return {"findings": found, "problems": problems} if isinstance(found, list) and isinstance(problems, list) \
        else None


def report(path: str | os.PathLike) -> dict:
    """The run's findings and problems as dicts: from the cache when its version matches,
    else computed (one pass of the rules) and stored (a read-only run directory is left as it is)."""
    from diagnostics import health

    key = _key(path)  # before reading: data landing meanwhile makes the next look recompute
    found = cached_report(path, key)
    if found is None:
        findings, problems = health.diagnose(open_run(path))
        found = {"findings": [f.to_dict() for f in findings], "problems": [p.to_dict() for p in problems]}
        _store(Path(path), {"key": key, **found})
    return found


def cached_health(path: str | os.PathLike) -> list:
    """`open_run(path).health()`, answered from the disk cache while the run is unchanged
    (the Health page of a run whose badge was computed opens without recomputing)."""
    from diagnostics.health import Finding

    try:
        return [Finding(**f) for f in report(path)["findings"]]
    except TypeError:  # stored by another version of Finding: compute afresh
        return open_run(path).health()


def cached_problems(path: str | os.PathLike) -> list:
    """`diagnostics.health.problems(open_run(path))`, from the same disk cache."""
    from diagnostics.health import Problem, problems

    try:
        return [Problem.from_dict(p) for p in report(path)["problems"]]
    except (TypeError, KeyError):  # stored by another version of Finding: compute afresh
        return problems(open_run(path))


def _store(run_dir: Path, content: dict) -> None:
    tmp = run_dir / f".tmp-{os.getpid()}-{threading.get_ident()}-{CACHE_FILE}"
    try:
        tmp.write_text(json.dumps(content))
        os.replace(tmp, run_dir / CACHE_FILE)
    except OSError:  # read-only or full: the cache is an optimisation only
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def health_counts(path: str | os.PathLike) -> HealthCounts:
    """The run's problems that are errors and warnings, and its info findings, cached on disk per run version."""
    return _counts(report(path))


class BadgeBoard:
    """What the run picker knows about each run's health, without waiting for it.

    `lookup` answers from memory or the disk cache (a directory listing and two small
    reads); `request` queues unknown runs for a child process that computes them at low
    priority, stores them on disk and reports each one back as it ends.
    """

    def __init__(self, command: list[str] | None = None) -> None:
        self._command = command or [sys.executable, "-m", "diagnostics.badges"]
        self._known: dict[str, tuple[str, HealthCounts | str]] = {}  # path -> (key, counts or error)
        self._queue: list[str] = []
        self._lock = threading.Lock()
        self._idle = threading.Event()
        self._idle.set()
        self._worker: threading.Thread | None = None

    def lookup(self, path: str) -> HealthCounts | str | None:
        """The run's counts for its current version; a message when its health could not be
        checked; None while unknown."""
        key = _key(path)
        with self._lock:
            known = self._known.get(path)
        if known is not None and known[0] == key:
            return known[1]
        found = cached_report(path, key)
        if found is None:
            return None
        counts = _counts(found)
        with self._lock:
            self._known[path] = (key, counts)
        return counts

    def last_known(self, path: str) -> HealthCounts | str | None:
        """The counts of an earlier version of the run (a live run that has flushed since its
        last check), or None if it was never checked."""
        with self._lock:
            known = self._known.get(path)
        if known is not None:
            return known[1]
        found = cached_report(path, any_version=True)
        return None if found is None else _counts(found)

    def pending(self, paths: list[str]) -> list[str]:
        """Those of `paths` whose counts for their current version are not known yet."""
        return [p for p in paths if self.lookup(p) is None]

    def request(self, paths: list[str]) -> None:
        """Compute the counts of `paths` in the background, in that order (first = soonest)."""
        with self._lock:
            self._queue = list(paths) + [p for p in self._queue if p not in paths]
            if self._queue and self._worker is None:
                self._idle.clear()
                self._worker = threading.Thread(target=self._work, name="health-badges", daemon=True)
                self._worker.start()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the queue is done (tests, benchmarks); False on timeout."""
        return self._idle.wait(timeout)

    def _work(self) -> None:
        child = None
        try:
            while True:
                with self._lock:
                    if not self._queue:
                        self._worker = None  # under the lock: a request from now on starts a new worker
                        self._idle.set()
                        return
                    path = self._queue.pop(0)  # one at a time: a later request can jump the queue
                if self.lookup(path) is not None:  # the disk may know it by now
                    continue
                child = self._ask(child, path)
        finally:
            if child is not None:
                child.stdin.close()
                child.wait()
            with self._lock:  # a worker that failed ends too: `wait` returns, the next request starts one
                if self._worker is threading.current_thread():
                    self._worker = None
                    self._idle.set()

    def _ask(self, child: subprocess.Popen | None, path: str) -> subprocess.Popen | None:
        """Has the child (started if need be) check one run; returns the child to reuse."""
        try:
            if child is None or child.poll() is not None:
                here = str(Path(__file__).resolve().parents[1])  # the child imports this same package
                env = {**os.environ,
                       "PYTHONPATH": os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))}
                child = subprocess.Popen(self._command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                         env=env)
            child.stdin.write(path + "\n")
            child.stdin.flush()
            line = child.stdout.readline()
        except OSError:  # no child process here (or it died mid-write): check in this thread
            self._record({"path": path, "key": _key(path), **_result(path)})
            return None
        try:
            self._record(json.loads(line))
        except (ValueError, KeyError, TypeError):  # the child died on this run
            self._record({"path": path, "key": _key(path), "error": "the health check stopped on this run"})
        return child

    def _record(self, result: dict) -> None:
        counts = HealthCounts(**result["counts"]) if result.get("counts") else str(result.get("error"))
        with self._lock:
            self._known[result["path"]] = (result["key"], counts)


@lru_cache(maxsize=1)
def shared_board() -> BadgeBoard:
    """The process's board (the dashboard's sessions share it)."""
    return BadgeBoard()


def _result(path: str) -> dict:
    try:
        return {"counts": vars(health_counts(path))}
    except DiagnosticsError as exc:
        return {"error": str(exc)}


def main() -> int:
    """The child process: reads run paths on stdin, answers each with one JSON line
    {path, key, counts | error} on stdout, until stdin closes."""
    with contextlib.suppress(AttributeError, OSError):
        os.nice(19)  # behind the page being drawn and anything else
    for line in sys.stdin:
        path = line.rstrip("\n")
        try:
            print(json.dumps({"path": path, "key": _key(path), **_result(path)}), flush=True)
        except BrokenPipeError:  # the dashboard has gone: stop quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
