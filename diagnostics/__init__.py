"""The torch-free side: read runs, analyse them, build figures, serve the dashboard.

    import diagnostics
    diagnostics.list_runs("runs")
    r = diagnostics.open_run("runs/exp1")
    r.scalars(); r.distributions(kind="gradient")
"""

from diagnostics.exceptions import DiagnosticsError, RunFormatError, RunNotFoundError
from diagnostics.store import Run, list_runs, open_run

__all__ = ["open_run", "list_runs", "Run", "DiagnosticsError", "RunNotFoundError", "RunFormatError"]
