"""The torch-free side: read runs, analyse them, build figures, serve the dashboard.

    import diagnostics
    diagnostics.list_runs("runs")
    r = diagnostics.open_run("runs/exp1")
    r.scalars(); r.distributions(kind="gradient")
    diagnostics.compare("runs/exp1", "runs/exp2").summary    # fixed, broken, p_value, ...
    diagnostics.ensemble(["runs/exp1", "runs/exp2"]).phi     # do the runs fail on the same samples?
"""

from diagnostics.compare import Comparison, compare
from diagnostics.ensemble import Ensemble, ensemble
from diagnostics.exceptions import ComparisonError, DiagnosticsError, RunFormatError, RunNotFoundError
from diagnostics.store import Run, list_runs, open_run

__all__ = ["open_run", "list_runs", "Run", "compare", "Comparison", "ensemble", "Ensemble", "DiagnosticsError",
           "RunNotFoundError", "RunFormatError", "ComparisonError"]
