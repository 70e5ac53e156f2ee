"""The Embedding map page through Streamlit's AppTest: the PCA preview (labelled, with the UMAP's
progress) while UMAP runs in the background, then the UMAP map; a failed fit; class names.

The UMAP fit is replaced by a fake that waits for the test to open its gate, so each state
can be looked at; the background thread and the page's cache are the real ones.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from streamlit.testing.v1 import AppTest

from diagnostics import embedding, schema
from diagnostics.store import RunWriter
from tests.pages._app import open_app, plotly_charts, plotly_values

PAGE = "pages/embedding.py"
NAMES = ["CNV", "DME", "DRUSEN"]


def write_run(folder: Path, name: str = "emb", n_per: int = 20, dims: int = 8) -> Path:
    """A classification run with one evaluation of 3 × n_per samples in 3 planted clusters."""
    rng = np.random.default_rng(0)
    label = np.repeat(np.arange(3), n_per).astype(float)
    n = len(label)
    x = (rng.normal(scale=10, size=(3, dims))[label.astype(int)] + rng.normal(size=(n, dims))).astype(np.float32)
    prediction = np.where(np.arange(n) % 7 == 0, (label + 1) % 3, label)
    writer = RunWriter(folder / name, {"name": name, "task": "classification", "class_names": NAMES},
                       flush_every_s=3600)
    cols = {"step": np.full(n, 5), "split": ["val"] * n, "sample_id": [f"s{i:03d}" for i in range(n)],
            "rank": np.zeros(n, np.int32), "label": label, "prediction": prediction, "loss": rng.random(n),
            "confidence": np.full(n, 0.8), "label_prob": np.full(n, np.nan), "margin": np.full(n, np.nan),
            "correct": (label == prediction).astype(float), "residual": np.full(n, np.nan),
            "probs": [None] * n, "embedding": list(x)}
    writer.add_table("samples", pa.table({k: pa.array(v, schema.SAMPLES_SCHEMA.field(k).type)
                                          for k, v in cols.items()}, schema=schema.SAMPLES_SCHEMA))
    writer.update_manifest(evaluations=[{"split": "val", "step": 5, "n": n}])
    writer.close()
    return folder / name


class GatedFit:
    """Stands in for embedding._fit_umap: waits for `gate`, then x, y = 2 × the first 2 columns."""

    def __init__(self, error: Exception | None = None):
        self.gate = threading.Event()
        self.error = error
        self.calls = 0

    def __call__(self, matrix, *args, **kwargs):
        self.calls += 1
        assert self.gate.wait(timeout=30)
        if self.error is not None:
            raise self.error
        return matrix[:, :2] * 2.0


@pytest.fixture
def gated(monkeypatch):
    fit = GatedFit()
    monkeypatch.setattr(embedding, "_fit_umap", fit)
    monkeypatch.setattr(embedding, "_jobs", type(embedding._jobs)())
    yield fit
    fit.gate.set()   # never leave the background worker waiting


def open_page(monkeypatch, runs: Path) -> AppTest:
    monkeypatch.delenv("DIAGNOSTICS_WARM_UP", raising=False)
    return open_app(monkeypatch, runs, PAGE)


def chart(at: AppTest) -> dict:
    (spec,) = plotly_charts(at)
    return spec


def wait_until(condition, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_page_shows_a_labelled_pca_preview_with_progress_then_the_umap_map(monkeypatch, tmp_path, gated):
    run = write_run(tmp_path)
    at = open_page(monkeypatch, tmp_path)
    spec = chart(at)
    assert spec["layout"]["title"]["text"].startswith("PCA preview: 60 samples")
    assert sum(len(plotly_values(t["x"])) for t in spec["data"]) == 60
    assert any("PCA preview" in c.value for c in at.caption)
    (progress,) = [i.value for i in at.info]
    assert "UMAP of 60 points" in progress and "PCA preview" in progress
    assert not at.error and not at.warning

    gated.gate.set()
    wait_until(lambda: list((run / "cache").glob("umap-*.parquet")))
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    spec = chart(at)
    assert spec["layout"]["title"]["text"].startswith("UMAP: 60 samples")
    assert any("mapped to 2-D with UMAP" in c.value for c in at.caption)
    assert not at.info and gated.calls == 1
    # the map is the fit's: x = 2 × the first embedding dimension, for every point
    import diagnostics

    samples = diagnostics.open_run(run).samples("val").set_index("sample_id")
    for trace in spec["data"]:
        ids = [row[0] for row in trace["customdata"]]
        np.testing.assert_allclose(plotly_values(trace["x"]), [2 * samples.loc[i, "embedding"][0] for i in ids],
                                   rtol=1e-6)

    again = open_page(monkeypatch, tmp_path)                      # a new session: the cached map at once
    assert chart(again)["layout"]["title"]["text"].startswith("UMAP") and gated.calls == 1


def test_a_failed_umap_leaves_the_preview_and_says_why(monkeypatch, tmp_path, gated):
    gated.error = MemoryError("out of memory")
    write_run(tmp_path)
    at = open_page(monkeypatch, tmp_path)
    gated.gate.set()
    wait_until(lambda: any(e.state == "failed" for e in list(embedding._jobs.values())))
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert chart(at)["layout"]["title"]["text"].startswith("PCA preview")
    (warning,) = [w.value for w in at.warning]
    assert "MemoryError: out of memory" in warning and "PCA preview stays" in warning
    assert any("PCA preview (the UMAP failed)" in c.value for c in at.caption)  # not "on its way"
    at.run()                                                         # a rerun neither refits nor hides it
    assert [w.value for w in at.warning] == [warning] and gated.calls == 1
    gated.error = None
    at.button(key="emb_retry").click().run()
    wait_until(lambda: list((tmp_path / "emb" / "cache").glob("umap-*.parquet")))
    at.run()
    assert not at.exception and not at.warning and gated.calls == 2
    assert chart(at)["layout"]["title"]["text"].startswith("UMAP")


def test_colour_by_class_names_the_classes_in_legend_and_hover(monkeypatch, tmp_path, gated):
    write_run(tmp_path)
    at = open_page(monkeypatch, tmp_path)
    at.selectbox(key="emb_color").set_value("label").run()
    traces = chart(at)["data"]
    assert {t["name"] for t in traces} == set(NAMES)
    assert len({t["marker"]["color"] for t in traces}) == 3
    assert {row[1] for t in traces for row in t["customdata"]} == set(NAMES)   # hover: label by name
