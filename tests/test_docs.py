"""The README and the docs point at files that exist (the docs' own links and anchors are
checked by `mkdocs build --strict`, which `make test` runs)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_every_relative_link_of_the_readme_exists():
    links = [t for t in LINK.findall((ROOT / "README.md").read_text()) if "://" not in t]
    assert len(links) >= 10
    missing = [t for t in links if not (ROOT / t).exists()]
    assert not missing, f"README.md links to missing files: {missing}"


def test_every_guide_is_in_the_site_navigation():
    nav = (ROOT / "mkdocs.yml").read_text()
    guides = sorted(p.name for p in (ROOT / "docs").glob("*.md"))
    assert [g for g in guides if f": {g}" not in nav] == []
