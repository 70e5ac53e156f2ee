"""The reading side never unpickles (issue #15): a run from someone else is data, not code.
No module of diagnostics/, pages/ or streamlit_app.py imports pickle (or dill, joblib,
cloudpickle), calls torch.load or pandas' read_pickle, or loads numpy arrays with
allow_pickle=True."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
READING = sorted([*(ROOT / "diagnostics").rglob("*.py"), *(ROOT / "pages").rglob("*.py"), ROOT / "streamlit_app.py"])
UNPICKLERS = {"pickle", "dill", "joblib", "cloudpickle", "shelve", "marshal"}


def unpickling(source: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] in UNPICKLERS]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in UNPICKLERS:
            found.append(node.module)
        elif isinstance(node, ast.Attribute) and node.attr in ("read_pickle", "load") and \
                isinstance(node.value, ast.Name) and node.value.id in ("torch", "pd", "pandas"):
            found.append(f"{node.value.id}.{node.attr}")
        elif isinstance(node, ast.keyword) and node.arg == "allow_pickle" and \
                not (isinstance(node.value, ast.Constant) and node.value.value is False):
            found.append("allow_pickle")
    return found


@pytest.mark.parametrize("path", READING, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_reading_side_never_unpickles(path):
    assert unpickling(path.read_text()) == []


def test_the_check_sees_each_way_in():
    assert unpickling("import pickle\nfrom joblib import load\ntorch.load(f)\npd.read_pickle(p)\n"
                      "np.load(f, allow_pickle=True)\n") == ["pickle", "joblib", "torch.load", "pd.read_pickle",
                                                             "allow_pickle"]
