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

# Writes at least argv[2] steps, and on until the file argv[3] exists (the reader has read
# enough: on a loaded machine reads are slower, the writer's sleeps are not); prints its steps.
WRITER = textwrap.dedent("""
    import os, sys, time
    import numpy as np
    from diagnostics.store import RunWriter
    from diagnostics import schema
    w = RunWriter(sys.argv[1], {"name": "live", "task": "classification"}, flush_every_s=0.01)
    nf = len(schema.SUMMARY_FIELDS)
    step = 0
    while step < int(sys.argv[2]) or not os.path.exists(sys.argv[3]):
        w.add_scalars(step, {"loss": 1.0 / (step + 1), "acc": step / 1000})  # one call: one part
        w.add_summaries(step, ["fc1", "fc2"], ["activation", "activation"], np.ones((2, nf)))
        time.sleep(0.002)
        step += 1
    w.close()
    print(step)
""")
MIN_READS = 21


@pytest.mark.slow
def test_a_run_read_in_a_loop_while_another_process_writes_it(tmp_path):
    path = tmp_path / "live"
    steps, enough = 1500, tmp_path / "enough-reads"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(steps), str(enough)],
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
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
            if reads >= MIN_READS:
                enough.touch()
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
    final = diagnostics.open_run(path)
    written = int(out)
    assert written >= steps and len(final.scalars()) == 2 * written and final.status()["state"] == "finished"
    assert reads >= MIN_READS
