"""Errors meant for people: each says what is wrong and what to do."""


class DiagnosticsError(Exception):
    """Base class of every error this package raises on purpose."""


class RunNotFoundError(DiagnosticsError):
    """The path holds no run (no run.json)."""


class RunFormatError(DiagnosticsError):
    """The run exists but cannot be read: broken manifest, unknown schema, bad parts."""


class ComparisonError(DiagnosticsError):
    """Two runs cannot be compared: a run has no evaluation of the split, they share no
    sample id, or their tasks differ."""
