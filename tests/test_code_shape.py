"""The code's shape, as the team agreed (issue #14): in hooks/, diagnostics/ and pages/, no
function over 60 lines, no class over 300, no module over 500 lines of code (comments,
docstrings and blank lines not counted), and no module reaching into another of our
modules' private names (`from diagnostics.health import _finding`, `evaluate._Worst`). A
package's private module (`pages._shared`, `hooks._fused`) is the package's own and fine."""

from __future__ import annotations

import ast
import io
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = ("hooks", "diagnostics", "pages")
MAX_FUNCTION, MAX_CLASS, MAX_MODULE = 60, 300, 500
SKIP = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER,
        tokenize.STRING}


def code_lines(source: str) -> int:
    """Lines holding code: not blank, not only a comment or a (doc)string."""
    lines: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type not in SKIP:
            lines.update(range(tok.start[0], tok.end[0] + 1))
    return len(lines)


def _imported(tree: ast.AST) -> dict[str, str]:
    """Local name -> the full dotted name it was imported as."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update({a.asname or a.name.split(".")[0]: a.name for a in node.names})
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.update({a.asname or a.name: f"{node.module}.{a.name}" for a in node.names})
    return names


def _is_our_module(dotted: str) -> bool:
    return dotted.split(".")[0] in OURS


def _is_module_file(dotted: str) -> bool:
    path = ROOT / dotted.replace(".", "/")
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file() or any(
        path.parent.glob(f"{path.name}.*.so"))


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def problems(path: Path) -> list[str]:
    source = path.read_text()
    tree = ast.parse(source)
    where = path.relative_to(ROOT)
    found = []
    if (n := code_lines(source)) > MAX_MODULE:
        found.append(f"{where}: {n} lines of code (at most {MAX_MODULE})")
    imported = _imported(tree)
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            limit = MAX_CLASS if isinstance(node, ast.ClassDef) else MAX_FUNCTION
            if (n := node.end_lineno - node.lineno + 1) > limit:
                found.append(f"{where}:{node.lineno}: {node.name} is {n} lines (at most {limit})")
        elif isinstance(node, ast.ImportFrom) and node.module and _is_our_module(node.module):
            found += [f"{where}:{node.lineno}: imports {node.module}.{a.name}, a private name" for a in node.names
                      if _private(a.name) and not _is_module_file(f"{node.module}.{a.name}")]
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and _private(node.attr):
            module = imported.get(node.value.id, "")
            if _is_our_module(module) and _is_module_file(module):
                found.append(f"{where}:{node.lineno}: uses {module}.{node.attr}, a private name")
    return found


FILES = sorted(p for folder in OURS for p in (ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_module_keeps_the_agreed_shape(path):
    assert problems(path) == []


def test_the_checker_sees_each_kind_of_problem():
    """The checks can fail: a long function, a long class, a private import, a private attribute."""
    body = "\n".join(f"    x{i} = {i}" for i in range(61))
    source = (f"from diagnostics.health import _finding\nfrom diagnostics import store\n\n"
              f"def long():\n{body}\n\nclass C:\n" + "\n".join(f"    y{i} = {i}" for i in range(301))
              + "\n\nstore._private_thing\n")
    fake = ROOT / "diagnostics" / "_shape_probe_tmp.py"
    try:
        fake.write_text(source)
        found = "\n".join(problems(fake))
    finally:
        fake.unlink()
    assert "long is 62 lines" in found and "C is 302 lines" in found
    assert "imports diagnostics.health._finding" in found and "uses diagnostics.store._private_thing" in found
    assert code_lines("# comment\n\n'''doc'''\nx = 1\n") == 1
