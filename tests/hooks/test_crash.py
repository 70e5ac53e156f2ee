"""A training process killed at any moment leaves a run that opens (issue #15): SIGKILL at
random moments (start-up, mid-flush, during `evaluate`, during compaction), then every run
opens, shows what it recorded up to its last flush, every part is readable, and none reads
"running" once its writer is gone. SIGTERM and Ctrl-C close the run cleanly."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import diagnostics

ROOT = Path(__file__).resolve().parents[2]

# Trains until killed: a capture every step, a flush every 20 ms (compactions every 16 parts),
# an evaluation every 15 steps; prints "step N" as it goes, and "done" after closing.
TRAINER = textwrap.dedent("""
    import sys, torch, hooks
    from torch import nn
    torch.manual_seed(0)
    steps = int(sys.argv[2])
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    run = hooks.watch(model, optimizer=opt, loss_fn=nn.CrossEntropyLoss(), run_dir=sys.argv[1], name="crash",
                      every=1, flush_every_s=0.02)
    crit = nn.CrossEntropyLoss()
    for step in range(steps):
        opt.zero_grad()
        crit(model(x), y).backward()
        opt.step()
        if step % 15 == 14:
            run.evaluate([(x[i:i + 16], y[i:i + 16], list(range(i, i + 16))) for i in range(0, 64, 16)],
                         split="val", progress=False, attribute_worst=0)
        print(f"step {step}", flush=True)
    run.close()
    print("done", flush=True)
""")


def _start(folder: Path, steps: int = 100_000) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", TRAINER, str(folder), str(steps)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _every_part_reads(run_dir: Path) -> int:
    parts = [p for p in run_dir.rglob("*.parquet") if not p.name.startswith(".tmp-")]
    for part in parts:
        pq.read_table(part)  # raises on a truncated or garbage file
    return len(parts)


def _kill(proc: subprocess.Popen, delay: float, after_step: int | None) -> list[int]:
    """SIGKILL `proc` `delay` seconds after its start, or after it printed step `after_step`;
    the steps it printed."""
    out = []
    while after_step is not None and not (out and out[-1] == f"step {after_step}\n"):
        out.append(proc.stdout.readline())
        if not out[-1]:  # it ended before that step
            break
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    out.append(proc.stdout.read())  # through stdout's own buffer, which readline() may have filled
    proc.communicate(timeout=60)
    return [int(line.split()[1]) for line in "".join(out).splitlines() if line.startswith("step ")]


@pytest.mark.slow
def test_sigkill_at_twenty_random_moments_leaves_runs_that_open(tmp_path):
    """Read at once after each kill: the writer's process is gone, so the run reads "stopped"
    without waiting for its heartbeat to go stale. Half the kills fall at random times after
    the start (start-up: the torch import), half at random moments after a random step (deep
    in training however long the start-up took: 3 s here, 10-20 s on a loaded machine)."""
    rng = random.Random(15)
    moments = ([(rng.uniform(0.2, 6.0), None) for _ in range(10)]
               + [(rng.uniform(0.0, 0.3), rng.randrange(80)) for _ in range(10)])
    seen_steps = []
    for i, (delay, after_step) in enumerate(moments):
        folder = tmp_path / f"kill{i}"
        printed = _kill(_start(folder), delay, after_step)
        seen_steps.append(printed[-1] if printed else -1)
        run_dir = folder / "crash"
        if not (run_dir / "run.json").is_file():
            assert not printed, f"kill {i} after {delay:.2f} s: steps ran but no manifest was written"
            continue
        listed = diagnostics.list_runs(folder)
        assert listed["state"].tolist() == ["stopped"], (i, delay, listed.to_dict("records"))
        run = diagnostics.open_run(run_dir)
        assert run.status()["state"] == "stopped"
        _every_part_reads(run_dir)
        scalars = run.scalars()
        if not scalars.empty:  # up to its last flush: never a step the process had not reached
            assert scalars["step"].max() <= max(printed, default=-1) + 2  # the step under way, not yet printed
        run.distributions("activation")
        for row in run.evaluations().itertuples():
            samples = run.samples(row.split, step=row.step)
            assert len(samples) == 64  # an evaluation is listed only once all its samples are written
    assert max(seen_steps) > 30 and min(seen_steps) == -1  # the kills spanned start-up to training


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_sigterm_and_ctrl_c_close_the_run(tmp_path, sig):
    proc = _start(tmp_path)
    for line in proc.stdout:  # well into training
        if line.startswith("step 40"):
            break
    proc.send_signal(sig)
    proc.communicate(timeout=60)
    run = diagnostics.open_run(tmp_path / "crash")
    state = run.status()["state"]
    assert state in ("finished", "failed"), state  # closed by the process itself, not left "running"
    assert run.scalars()["step"].max() >= 40
    _every_part_reads(tmp_path / "crash")
