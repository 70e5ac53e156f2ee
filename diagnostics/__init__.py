"""The torch-free side: read runs, analyse them, build figures, serve the dashboard.

    import diagnostics
    diagnostics.list_runs("runs")
    r = diagnostics.open_run("runs/exp1")
    r.scalars(); r.distributions(kind="gradient")
    diagnostics.compare("runs/exp1", "runs/exp2").summary    # fixed, broken, p_value, ...
"""

from diagnostics.compare import Comparison, compare
from diagnostics.exceptions import ComparisonError, DiagnosticsError, RunFormatError, RunNotFoundError
from diagnostics.store import Run, list_runs, open_run

__all__ = ["open_run", "list_runs", "Run", "compare", "Comparison", "DiagnosticsError", "RunNotFoundError",
           "RunFormatError", "ComparisonError"]
