"""The README's compatibility table stays true: every row that says "yes" names test files
that exist, and each of them mentions what the row is about."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# a word from each row (lowercase) that its test files must mention
ROW_WORDS = {
    "one process": "watch", "ddp": "distributed", "fsdp2": "fully_shard", "fsdp1": "fullyshardeddataparallel",
    "torch.compile": "compile", "amp": "gradscaler", "activation checkpointing": "checkpoint",
    "no optimizer": "optimizer", "several optimizers": "gan", "gradient accumulation": "accumulat",
    "closures": "lbfgs", "deepcopy": "deepcopy", "faults": "fault", "padded token batches": "attention_mask",
    "causal lms": "causal", "without labels": "autoencoder",
}


def _rows() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Compatibility", 1)[1].split("\n## ", 1)[0]
    return [[c.strip() for c in line.strip().strip("|").split("|")] for line in section.splitlines()
            if line.startswith("|") and not line.startswith("|---") and not line.startswith("| |")]


def test_every_yes_names_existing_tests_about_its_row():
    rows = _rows()
    assert len(rows) >= 13
    for feature, *cells, tests in rows:
        if not any(c.startswith(("yes", "partial")) for c in cells):
            continue
        files = re.findall(r"`(test_\w+\.py)", tests) + re.findall(r"`tests/hooks/(test_\w+\.py)", tests)
        assert files, f"row {feature!r} says yes but names no test file"
        word = next(w for k, w in ROW_WORDS.items() if k in feature.lower())
        for name in set(files):
            found = list(ROOT.glob(f"tests/**/{name}"))
            assert found, f"row {feature!r}: {name} does not exist"
            assert any(word in f.read_text().lower() for f in found), f"row {feature!r}: {name} never mentions {word!r}"


def test_no_placeholder_is_left():
    assert "_CELL" not in (ROOT / "README.md").read_text()
