"""Reading a run while another process writes it (issue #15): the dashboard polls a live run;
every read in the loop succeeds, sees whole parts only, and never goes backwards."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import diagnostics

ROOT = Path(__file__).resolve().parents[2]

WRITER = textwrap.dedent("""
    import sys, time
    import numpy as np
    from diagnostics.store import RunWriter
    from diagnostics import schema
    w = RunWriter(sys.argv[1], {"name": "live", "task": "classification"}, flush_every_s=0.01)
    nf = len(schema.SUMMARY_FIELDS)
    for step in range(int(sys.argv[2])):
        w.add_scalars(step, {"loss": 1.0 / (step + 1), "acc": step / 1000})  # one call: one part
        w.add_summaries(step, ["fc1", "fc2"], ["activation", "activation"], np.ones((2, nf)))
        time.sleep(0.002)
    w.close()
""")


@pytest.mark.slow
def test_a_run_read_in_a_loop_while_another_process_writes_it(tmp_path):
    path = tmp_path / "live"
    steps = 1500
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(steps)],
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, stderr=subprocess.PIPE, text=True)
    reads, last_rows = 0, 0
    try:
        while proc.poll() is None or reads == 0:
            if not (path / "run.json").is_file():
                time.sleep(0.01)
                continue
            run = diagnostics.open_run(path)
            scalars = run.scalars()
            dists = run.distributions("activation")
            # whole parts only: each step's two scalars and two layers come in one part
            per_step = scalars.groupby("step")["name"].nunique()
            assert (per_step == 2).all(), per_step[per_step != 2]
            assert dists.groupby("step")["layer"].nunique().eq(2).all()
            assert len(scalars) >= last_rows  # never backwards, compactions included
            last_rows = len(scalars)
            assert run.status()["state"] in ("running", "finished")
            reads += 1
        assert proc.wait(timeout=60) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    final = diagnostics.open_run(path)
    assert len(final.scalars()) == 2 * steps and final.status()["state"] == "finished"
    assert reads > 20
