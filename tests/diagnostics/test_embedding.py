"""Embedding maps (diagnostics.embedding): pass-through, PCA fallback, UMAP, the cache in the
run directory, the fit lock, selections; and the map's figure (diagnostics.figures.embedding).

Most tests replace the UMAP fit with a fake (`fake_fit`) to test the caching and locking logic
in milliseconds; the real fits are on a few hundred points, or marked slow.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from diagnostics import embedding
from diagnostics.embedding import embedding_matrix, is_cached, project, selection_ids, warm_up
from diagnostics.figures.embedding import embedding_figure

ROOT = Path(__file__).resolve().parents[2]


def frame(embeddings, ids=None, step=3, split="val", **columns) -> pd.DataFrame:
    embeddings = [np.asarray(e, dtype=np.float32) for e in embeddings]
    ids = ids if ids is not None else [f"s{i:04d}" for i in range(len(embeddings))]
    return pd.DataFrame({"sample_id": ids, "split": split, "step": step, "embedding": embeddings, **columns})


def clusters(n_per: int, dims: int, k: int = 3, seed: int = 0, spread: float = 10.0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=spread, size=(k, dims))
    label = np.repeat(np.arange(k), n_per)
    x = centres[label] + rng.normal(size=(len(label), dims))
    return frame(x, label=label.astype(float)), label


class FakeFit:
    """Stands in for `embedding._fit_umap`: counts calls, optionally slow; x, y = first 2 columns."""

    def __init__(self, delay_s: float = 0.0):
        self.calls = 0
        self.delay_s = delay_s
        self.lock = threading.Lock()

    def __call__(self, matrix, n_neighbors, min_dist, seed, n_epochs, force_approximation=False):
        with self.lock:
            self.calls += 1
        time.sleep(self.delay_s)
        return matrix[:, :2] * 2.0


def no_fit(*args, **kwargs):
    raise AssertionError("UMAP was fitted, but the result should have come from elsewhere")


@pytest.fixture
def fake_fit(monkeypatch):
    fit = FakeFit()
    monkeypatch.setattr(embedding, "_fit_umap", fit)
    return fit


@pytest.fixture(autouse=True)
def fresh_memory(monkeypatch):
    """Each test starts with an empty in-memory store for unsaved maps."""
    monkeypatch.setattr(embedding, "_unsaved", type(embedding._unsaved)())
    monkeypatch.setattr(embedding, "_jobs", type(embedding._jobs)())


def cache_files(run: Path) -> list[Path]:
    return sorted((run / "cache").glob("umap-*.parquet")) if (run / "cache").is_dir() else []


# -- the matrix ---------------------------------------------------------------------------------

def test_embedding_matrix_stacks_rows_as_float32():
    x = np.random.default_rng(0).normal(size=(7, 5))
    m = embedding_matrix(frame(x))
    assert m.dtype == np.float32 and m.shape == (7, 5)
    np.testing.assert_array_equal(m, x.astype(np.float32))


def test_embedding_matrix_errors_name_the_problem():
    with pytest.raises(ValueError, match="no 'embedding' column"):
        embedding_matrix(pd.DataFrame({"sample_id": ["a"]}))
    mixed = frame([np.zeros(4)] * 3 + [np.zeros(3)])
    with pytest.raises(ValueError, match=r"different lengths \(4 for 3 rows, 3 for 1 rows; sample 's0003' has 3\)"):
        embedding_matrix(mixed)
    with pytest.raises(ValueError, match="sample 'b' has no embedding"):
        embedding_matrix(pd.DataFrame({"sample_id": ["a", "b"], "embedding": [np.zeros(3), None]}))
    assert embedding_matrix(frame([]).astype({"embedding": object})).shape == (0, 0)


# -- no UMAP needed -------------------------------------------------------------------------------

def test_importing_and_2d_maps_never_import_umap_torch_or_streamlit(tmp_path):
    code = f"""
import sys, numpy as np, pandas as pd
from diagnostics.embedding import project
from diagnostics.figures.embedding import embedding_figure
s = pd.DataFrame({{"sample_id": ["a", "b", "c"],
                   "embedding": [np.float32([1, 2]), np.float32([3, 4]), np.float32([5, 6])]}})
p = project({str(tmp_path)!r}, s)
embedding_figure(p, s)
heavy = [m for m in ("umap", "numba", "torch", "streamlit", "hooks") if m in sys.modules]
assert not heavy, heavy
print(p["x"].tolist())
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[1.0, 3.0, 5.0]"


def test_2d_embeddings_pass_through_unchanged_in_input_order(tmp_path, monkeypatch):
    monkeypatch.setattr(embedding, "_fit_umap", no_fit)
    x = np.random.default_rng(1).normal(size=(40, 2)).astype(np.float32)
    ids = [f"id{i}" for i in np.random.default_rng(2).permutation(40)]
    points = project(tmp_path, frame(x, ids=ids))
    assert points.columns.tolist() == ["sample_id", "x", "y"]
    assert points["sample_id"].tolist() == ids
    np.testing.assert_array_equal(points[["x", "y"]].to_numpy(), x)
    assert cache_files(tmp_path) == []
    assert is_cached(tmp_path, frame(x, ids=ids))


def test_1d_embeddings_lie_on_the_x_axis(monkeypatch):
    monkeypatch.setattr(embedding, "_fit_umap", no_fit)
    points = project(None, frame([[3.0], [1.0], [2.0]]))
    assert points["x"].tolist() == [3.0, 1.0, 2.0] and points["y"].tolist() == [0.0, 0.0, 0.0]


def test_few_points_use_pca_which_keeps_a_planar_layout(monkeypatch):
    monkeypatch.setattr(embedding, "_fit_umap", no_fit)
    rng = np.random.default_rng(3)
    plane = rng.normal(size=(6, 2))
    basis = np.linalg.qr(rng.normal(size=(7, 2)))[0].T            # 2 orthonormal rows in 7-D
    points = project(None, frame(plane @ basis + 5.0))
    xy = points[["x", "y"]].to_numpy(dtype=float)
    dist = lambda a: np.linalg.norm(a[:, None] - a[None], axis=-1)
    np.testing.assert_allclose(dist(xy), dist(plane), atol=1e-4)   # PCA of planar data: an isometry
    assert is_cached(None, frame(plane @ basis))
    single = project(None, frame([np.ones(7)]))
    assert single[["x", "y"]].to_numpy().tolist() == [[0.0, 0.0]]


def test_empty_samples_give_an_empty_map(fake_fit):
    points = project(None, frame([]).astype({"embedding": object}))
    assert points.empty and points.columns.tolist() == ["sample_id", "x", "y"]
    assert fake_fit.calls == 0


def test_a_sample_evaluated_twice_is_mapped_once_with_its_latest_embedding(fake_fit):
    early = frame([[0.0, 0.0], [1.0, 1.0]], ids=["a", "b"], step=1)
    late = frame([[9.0, 9.0]], ids=["a"], step=5)
    points = project(None, pd.concat([late, early]))
    assert sorted(points["sample_id"]) == ["a", "b"]
    assert points.set_index("sample_id").loc["a"].tolist() == [9.0, 9.0]


# -- the cache ------------------------------------------------------------------------------------

def test_umap_result_is_cached_and_read_back_without_fitting(tmp_path, monkeypatch, fake_fit):
    samples, _ = clusters(20, 8)
    assert not is_cached(tmp_path, samples)
    first = project(tmp_path, samples)
    assert fake_fit.calls == 1
    files = cache_files(tmp_path)
    assert len(files) == 1 and files[0].name.startswith("umap-")
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".tmp")]
    assert is_cached(tmp_path, samples)

    monkeypatch.setattr(embedding, "_fit_umap", no_fit)
    monkeypatch.setitem(sys.modules, "umap", None)                 # `import umap` would now fail
    again = project(tmp_path, samples)
    pd.testing.assert_frame_equal(again, first)
    shuffled = samples.sample(frac=1.0, random_state=0)            # same subset, another row order
    points = project(tmp_path, shuffled)
    assert points["sample_id"].tolist() == shuffled["sample_id"].tolist()
    pd.testing.assert_frame_equal(points.set_index("sample_id").loc[first["sample_id"]].reset_index(), first)


def test_filtered_subsets_and_parameters_get_their_own_cache_entries(tmp_path, fake_fit):
    samples, label = clusters(20, 8)
    project(tmp_path, samples)
    subset = samples[label != 1]
    assert not is_cached(tmp_path, subset)
    project(tmp_path, subset)
    project(tmp_path, samples.iloc[:-1])
    project(tmp_path, samples, n_neighbors=5)
    project(tmp_path, samples, min_dist=0.5)
    project(tmp_path, samples, seed=7)
    project(tmp_path, samples.assign(step=4))                      # a later evaluation
    project(tmp_path, samples.assign(embedding=[e + 1 for e in samples["embedding"]]))   # other values
    assert fake_fit.calls == 8 and len(cache_files(tmp_path)) == 8
    project(tmp_path, subset)
    assert fake_fit.calls == 8


def test_unreadable_cache_file_is_refitted_and_replaced(tmp_path, fake_fit):
    samples, _ = clusters(10, 8)
    first = project(tmp_path, samples)
    (path,) = cache_files(tmp_path)
    path.write_bytes(b"not parquet")
    pd.testing.assert_frame_equal(project(tmp_path, samples), first)
    assert fake_fit.calls == 2
    pd.testing.assert_frame_equal(project(tmp_path, samples), first)
    assert fake_fit.calls == 2


def test_unwritable_run_directory_still_maps_and_remembers_in_memory(tmp_path, fake_fit):
    run = tmp_path / "someone-elses-run"
    run.mkdir()
    (run / "cache").write_text("a file where the cache folder would go")   # mkdir fails, even as root
    samples, _ = clusters(10, 8)
    first = project(run, samples)
    assert fake_fit.calls == 1 and (run / "cache").is_file()
    assert is_cached(run, samples)
    pd.testing.assert_frame_equal(project(run, samples), first)
    assert fake_fit.calls == 1


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_run_directory_still_maps(tmp_path, fake_fit):
    run = tmp_path / "run"
    run.mkdir()
    run.chmod(0o555)
    try:
        samples, _ = clusters(10, 8)
        assert len(project(run, samples)) == 30
        assert not (run / "cache").exists()
    finally:
        run.chmod(0o755)


def test_no_run_path_computes_without_a_cache(tmp_path, fake_fit):
    samples, _ = clusters(10, 8)
    project(None, samples)
    project(None, samples)
    assert fake_fit.calls == 1 and list(tmp_path.iterdir()) == []


# -- two sessions at once -------------------------------------------------------------------------

@pytest.mark.parametrize("writable", [True, False])
def test_two_threads_asking_at_once_fit_once_and_agree(tmp_path, monkeypatch, writable):
    fit = FakeFit(delay_s=0.3)
    monkeypatch.setattr(embedding, "_fit_umap", fit)
    if not writable:
        (tmp_path / "cache").write_text("blocks the cache folder")
    samples, _ = clusters(30, 8)
    start = threading.Barrier(2)
    results, errors = [None, None], []

    def visit(i):
        try:
            start.wait()
            results[i] = project(tmp_path, samples)
        except Exception as exc:   # surfaced below; a thread's exception would be lost
            errors.append(exc)

    threads = [threading.Thread(target=visit, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors
    assert fit.calls == 1
    pd.testing.assert_frame_equal(results[0], results[1])


def test_warm_up_fits_once_through_the_exact_neighbour_path_every_map_takes(monkeypatch):
    calls = []
    monkeypatch.setattr(embedding, "_fit_umap", lambda m, *a, **k: calls.append((m.shape, k)) or m[:, :2])
    monkeypatch.setattr(embedding, "_warmed_up", False)
    assert not embedding.is_warmed_up()
    threads = [threading.Thread(target=warm_up) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    warm_up()
    # not the approximate search: maps up to EXACT_KNN_MAX points never compile it
    assert len(calls) == 1 and not calls[0][1].get("force_approximation")
    assert embedding.is_warmed_up()


# -- the PCA preview while UMAP runs in the background ---------------------------------------------

class GatedFit(FakeFit):
    """A fake fit that waits until the test opens its gate, to look at the page's states."""

    def __init__(self, error: Exception | None = None):
        super().__init__()
        self.gate = threading.Event()
        self.error = error
        self.attempts = 0

    def __call__(self, *args, **kwargs):
        self.attempts += 1
        assert self.gate.wait(timeout=30)
        if self.error is not None:
            raise self.error
        return super().__call__(*args, **kwargs)


def wait_for(ticket: str, timeout_s: float = 30.0):
    deadline = time.monotonic() + timeout_s
    status = embedding.map_status(ticket)
    while status.state in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(0.02)
        status = embedding.map_status(ticket)
    return status


def test_preview_is_the_exact_pca_then_the_umap_map_once_the_background_fit_is_done(tmp_path, monkeypatch):
    fit = GatedFit()
    monkeypatch.setattr(embedding, "_fit_umap", fit)
    samples, _ = clusters(20, 8)
    shuffled = samples.sample(frac=1.0, random_state=1)
    points, status = embedding.project_or_preview(tmp_path, shuffled)
    assert status.method == "pca preview" and status.state in ("queued", "running") and status.n_points == 60
    assert status.ticket and "UMAP of 60 points" in status.message
    assert points["sample_id"].tolist() == shuffled["sample_id"].tolist()
    m = np.stack(shuffled["embedding"]).astype(np.float64)
    u, s, _ = np.linalg.svd(m - m.mean(axis=0), full_matrices=False)
    reference = u[:, :2] * s[:2]
    for j, axis in enumerate("xy"):                                   # numpy's SVD, up to each axis's sign
        got = points[axis].to_numpy(dtype=float)
        np.testing.assert_allclose(got * np.sign(got @ reference[:, j]), reference[:, j], atol=1e-3)
    again, second = embedding.project_or_preview(tmp_path, samples)  # asked again while it runs
    assert second.ticket == status.ticket and second.method == "pca preview"
    assert not is_cached(tmp_path, samples)

    fit.gate.set()
    done = wait_for(status.ticket)
    assert done.state == "ready" and done.method == "umap" and fit.calls == 1
    assert "ready after" in done.message
    umap_points, ready = embedding.project_or_preview(tmp_path, shuffled)
    assert ready.state == "ready" and ready.method == "umap" and ready.ticket is None
    assert len(cache_files(tmp_path)) == 1
    monkeypatch.setattr(embedding, "_fit_umap", no_fit)              # the cache, not a second fit
    pd.testing.assert_frame_equal(umap_points, project(tmp_path, shuffled))
    np.testing.assert_array_equal(umap_points[["x", "y"]].to_numpy(), np.stack(shuffled["embedding"])[:, :2] * 2)


def test_a_failed_background_fit_says_why_and_is_retried_only_when_asked_to(tmp_path, monkeypatch):
    fit = GatedFit(error=MemoryError("10,000 points"))
    monkeypatch.setattr(embedding, "_fit_umap", fit)
    samples, _ = clusters(10, 8)
    _, status = embedding.project_or_preview(tmp_path, samples)
    fit.gate.set()
    failed = wait_for(status.ticket)
    assert failed.state == "failed" and failed.method == "pca preview"
    assert "MemoryError: 10,000 points" in failed.message and "PCA preview stays" in failed.message
    fit.error = None
    _, again = embedding.project_or_preview(tmp_path, samples)       # a page's rerun: still failed, no refit
    assert again.state == "failed" and again.message == failed.message and fit.attempts == 1
    _, retry = embedding.project_or_preview(tmp_path, samples, retry=True)
    assert wait_for(retry.ticket).state == "ready" and fit.attempts == 2


def test_progress_says_when_a_map_waits_for_the_servers_warm_up(tmp_path, monkeypatch):
    fit = GatedFit()
    monkeypatch.setattr(embedding, "_fit_umap", fit)
    monkeypatch.setattr(embedding, "_warmed_up", False)
    warming = threading.Thread(target=warm_up)
    warming.start()
    deadline = time.monotonic() + 10
    while embedding._activity.get("what") != "warm-up" and time.monotonic() < deadline:
        time.sleep(0.01)
    samples, _ = clusters(10, 8)
    _, status = embedding.project_or_preview(tmp_path, samples)
    assert "waits for the server's UMAP warm-up" in wait_for_message(status.ticket, "warm-up")
    fit.gate.set()
    warming.join(timeout=30)
    assert wait_for(status.ticket).state == "ready" and fit.calls == 2


def wait_for_message(ticket: str, word: str, timeout_s: float = 10.0) -> str:
    deadline = time.monotonic() + timeout_s
    message = embedding.map_status(ticket).message
    while word not in message and time.monotonic() < deadline:
        time.sleep(0.01)
        message = embedding.map_status(ticket).message
    return message


def test_maps_needing_no_umap_are_ready_at_once(monkeypatch):
    monkeypatch.setattr(embedding, "_fit_umap", no_fit)
    flat = frame(np.random.default_rng(8).normal(size=(30, 2)))
    points, status = embedding.project_or_preview(None, flat)
    assert (status.state, status.method, status.ticket) == ("ready", "direct", None)
    np.testing.assert_array_equal(points[["x", "y"]].to_numpy(), np.stack(flat["embedding"]))
    few = frame(np.random.default_rng(9).normal(size=(5, 6)))
    assert embedding.project_or_preview(None, few)[1].method == "pca"


# -- real UMAP ------------------------------------------------------------------------------------

def nearest_neighbour_agreement(xy: np.ndarray, label: np.ndarray) -> float:
    from sklearn.neighbors import NearestNeighbors

    nearest = NearestNeighbors(n_neighbors=2).fit(xy).kneighbors(xy, return_distance=False)[:, 1]
    return float((label[nearest] == label).mean())


def test_planted_clusters_stay_separated_in_the_umap_map(tmp_path, monkeypatch):
    pytest.importorskip("umap")
    samples, label = clusters(100, 16, k=3, seed=4)
    points = project(tmp_path, samples)
    assert len(points) == 300 and np.isfinite(points[["x", "y"]].to_numpy()).all()
    assert nearest_neighbour_agreement(points[["x", "y"]].to_numpy(), label) > 0.9
    # seeded: a second fit (another run directory, so no cache) gives the same map
    pd.testing.assert_frame_equal(project(tmp_path / "other", samples), points)
    monkeypatch.setattr(embedding, "_fit_umap", no_fit)
    pd.testing.assert_frame_equal(project(tmp_path, samples), points)


@pytest.mark.slow
def test_umap_on_thousands_of_high_dimensional_points(tmp_path):
    pytest.importorskip("umap")
    samples, label = clusters(1500, 256, k=4, seed=5, spread=3.0)
    points = project(tmp_path, samples)
    assert nearest_neighbour_agreement(points[["x", "y"]].to_numpy(), label) > 0.9
    assert is_cached(tmp_path, samples)


# -- bad input ------------------------------------------------------------------------------------

def test_bad_input_raises_clear_errors(fake_fit):
    samples, _ = clusters(10, 8)
    with pytest.raises(ValueError, match="'sample_id' column"):
        project(None, samples.drop(columns="sample_id"))
    with pytest.raises(ValueError, match="no 'embedding' column"):
        project(None, samples.drop(columns="embedding"))
    broken = samples.copy()
    broken.at[3, "embedding"] = np.full(8, np.nan, np.float32)
    with pytest.raises(ValueError, match="1 of 30 embeddings hold NaN or inf .*'s0003'"):
        project(None, broken)
    for kwargs, message in [({"n_neighbors": 1}, "n_neighbors=1"), ({"min_dist": -0.1}, "min_dist=-0.1"),
                            ({"seed": "x"}, "seed='x'"), ({"n_epochs": 0}, "n_epochs=0")]:
        with pytest.raises(ValueError, match=message):
            project(None, samples, **kwargs)
    assert fake_fit.calls == 0


# -- selections -----------------------------------------------------------------------------------

def test_selection_ids_from_indices_points_and_streamlit_selections():
    points = pd.DataFrame({"sample_id": ["a", "b", "c"], "x": [0.0, 1, 2], "y": [0.0, 1, 2]})
    assert selection_ids(points, [2, 0, 2]) == ["c", "a"]
    assert selection_ids(points, np.array([1])) == ["b"]
    selection = {"points": [{"curve_number": 1, "point_index": 0, "customdata": ["c", "1", "1", "0.2"]},
                            {"curve_number": 0, "point_index": 0, "customdata": "a"},
                            {"curve_number": 0, "point_index": 5, "customdata": ["gone"]}],
                 "point_indices": [0, 0, 5], "box": [], "lasso": []}
    assert selection_ids(points, selection) == ["c", "a"]
    assert selection_ids(points, selection["points"]) == ["c", "a"]
    assert selection_ids(points, {"points": []}) == []
    with pytest.raises(ValueError, match="out of range"):
        selection_ids(points, [3])
    with pytest.raises(ValueError, match="no customdata"):
        selection_ids(points, [{"point_index": 0}])


# -- the figure (diagnostics.figures.embedding) ---------------------------------------------------

def review_samples(n: int = 12) -> pd.DataFrame:
    rng = np.random.default_rng(6)
    label = rng.integers(0, 3, n).astype(float)
    prediction = np.where(np.arange(n) % 3 == 0, (label + 1) % 3, label)
    return frame(rng.normal(size=(n, 2)), label=label, prediction=prediction, loss=rng.random(n),
                 correct=(label == prediction).astype(float), tagged=np.arange(n) % 4 == 0)


def test_figure_draws_wrong_samples_on_top_with_ids_in_customdata():
    samples = review_samples()
    points = project(None, samples)
    fig = embedding_figure(points, samples)
    assert [t.name for t in fig.data] == ["correct", "wrong"]
    assert fig.data[-1].marker.symbol == "x"
    assert len(fig.data[1].x) == int((samples["correct"] == 0).sum())
    assert fig.layout.dragmode == "lasso"
    drawn = [row[0] for t in fig.data for row in t.customdata]
    assert sorted(drawn) == sorted(samples["sample_id"])
    hover = fig.data[0].hovertemplate
    assert all(word in hover for word in ("label", "prediction", "loss"))
    # the hover names the sample: its id as text, in a column of its own (customdata[0] stays the raw id)
    shown = int(re.search(r"<b>%\{customdata\[(\d+)\]\}</b>", hover).group(1))
    assert [row[shown] for row in fig.data[0].customdata] == [str(row[0]) for row in fig.data[0].customdata]
    wrong_row = fig.data[1].customdata[0]
    sample = samples.set_index("sample_id").loc[wrong_row[0]]
    assert wrong_row[1] == str(int(sample["label"])) and wrong_row[3] == f"{sample['loss']:.4g}"


def test_figure_colours_by_class_loss_and_tag():
    samples = review_samples()
    points = project(None, samples)
    names = ["CNV", "DME", "DRUSEN"]
    by_label = embedding_figure(points, samples, color_by="label", class_names=names)
    assert {t.name for t in by_label.data} <= set(names)
    correct_traces = [t for t in by_label.data if t.marker.symbol == "circle"]
    wrong_traces = [t for t in by_label.data if t.marker.symbol == "x"]
    assert by_label.data[: len(correct_traces)] == tuple(correct_traces)      # wrong ones drawn last
    assert sum(len(t.x) for t in wrong_traces) == int((samples["correct"] == 0).sum())
    assert any(names[int(samples["label"].iloc[0])] == row[1] for t in by_label.data for row in t.customdata)

    by_loss = embedding_figure(points, samples, color_by="loss")
    (trace,) = by_loss.data
    assert trace.marker.colorbar.title.text == "loss"
    symbols = list(trace.marker.symbol)
    assert symbols == sorted(symbols, key=lambda s: s == "x")                 # wrong last
    by_tag = embedding_figure(points, samples, color_by="tagged")
    assert {t.name for t in by_tag.data} == {"tagged", "not tagged"}
    with pytest.raises(ValueError, match="not a column"):
        embedding_figure(points, samples, color_by="nonsense")


def test_figure_of_nothing_says_so():
    fig = embedding_figure(pd.DataFrame(columns=["sample_id", "x", "y"]), review_samples())
    assert fig.data == () and "no embeddings" in fig.layout.annotations[0].text


def test_figure_uses_webgl_for_many_points():
    n = 6000
    samples = frame(np.random.default_rng(7).normal(size=(n, 2)), loss=np.linspace(0, 1, n))
    fig = embedding_figure(project(None, samples), samples, color_by="loss")
    assert fig.data[0].type == "scattergl"


def cielab(hex_colour: str) -> np.ndarray:
    """sRGB hex to CIELAB (D65), the textbook formulas: the reference for colour distances."""
    rgb = np.array([int(hex_colour.lstrip("#")[i:i + 2], 16) for i in (0, 2, 4)]) / 255.0
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]) @ linear
    scaled = xyz / np.array([0.95047, 1.0, 1.08883])  # by the D65 white point
    f = np.where(scaled > 0.008856, np.cbrt(scaled), 7.787 * scaled + 16 / 116)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def test_twelve_classes_get_twelve_distinct_colours_named_in_legend_and_hover():
    n = 240
    label = np.arange(n) % 12
    prediction = np.where(np.arange(n) % 5 == 0, (label + 1) % 12, label)
    names = [f"class-{c}" for c in "ABCDEFGHIJKL"]
    samples = frame(np.random.default_rng(10).normal(size=(n, 2)), label=label.astype(float),
                    prediction=prediction.astype(float), loss=np.ones(n), correct=(label == prediction).astype(float))
    fig = embedding_figure(project(None, samples), samples, color_by="label", class_names=names, method="UMAP")
    colour = {t.name: t.marker.color for t in fig.data}
    assert sorted(colour) == sorted(names) and len(set(colour.values())) == 12
    legend = [t.name for t in fig.data if t.showlegend]
    assert sorted(legend) == sorted(names)                              # one legend entry per class, by name
    lab = [cielab(c) for c in colour.values()] + [cielab("#7f7f7f")]   # and apart from n/a's grey
    closest = min(np.linalg.norm(a - b) for i, a in enumerate(lab) for b in lab[i + 1:])
    assert closest > 20, closest                                        # plotly's Plotly + Dark24: 14.9
    hover_names = {name for t in fig.data for row in t.customdata for name in (row[1], row[2])}
    assert hover_names == set(names)                                    # label and prediction by name
    assert fig.layout.title.text.startswith("UMAP: 240 samples")
    # a class keeps its colour when others are filtered out, and between label and prediction
    subset = samples[samples["label"] >= 6]
    by_prediction = embedding_figure(project(None, subset), subset, color_by="prediction", class_names=names)
    assert all(t.marker.color == colour[t.name] for t in by_prediction.data)
