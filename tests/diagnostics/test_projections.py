"""2-D projections (diagnostics.projections): PCA against numpy's SVD, exact neighbours against a
hand-computed distance matrix, and numba's disk cache for umap's compiled code."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from diagnostics import projections
from diagnostics.projections import exact_knn, pca_2d

ROOT = Path(__file__).resolve().parents[2]


def svd_scores(matrix: np.ndarray) -> np.ndarray:
    """The reference: u * s of the centred matrix's SVD, first two columns (float64)."""
    centred = matrix.astype(np.float64) - matrix.astype(np.float64).mean(axis=0)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    return u[:, :2] * s[:2]


def assert_same_up_to_sign(xy: np.ndarray, reference: np.ndarray, rtol: float = 1e-4) -> None:
    scale = np.abs(reference).max()
    for j in range(2):
        sign = np.sign(xy[:, j] @ reference[:, j]) or 1.0
        np.testing.assert_allclose(xy[:, j] * sign, reference[:, j], atol=rtol * scale)


@pytest.mark.parametrize("n,d", [(500, 32), (6, 40), (3, 3)])
def test_pca_matches_numpys_svd(n, d):
    rng = np.random.default_rng(n + d)
    # anisotropic, off-centre data: the two leading components are well separated
    matrix = (rng.normal(size=(n, d)) * np.linspace(5, 0.5, d) + 100.0).astype(np.float32)
    xy = pca_2d(matrix)
    assert xy.shape == (n, 2) and xy.dtype == np.float32
    assert_same_up_to_sign(xy, svd_scores(matrix))


def test_pca_by_subspace_iteration_for_big_inputs_matches_the_svd_too(monkeypatch):
    monkeypatch.setattr(projections, "EXACT_PCA_MAX_FLOPS", 0)      # force the iterative branch
    rng = np.random.default_rng(1)
    # a decaying spectrum, as embeddings have: 8 rounds on 12 vectors converge to (0.85 ** 11) ** 17
    matrix = rng.normal(size=(400, 64)) * 0.85 ** np.arange(64)
    assert_same_up_to_sign(pca_2d(matrix), svd_scores(matrix))


def test_pca_signs_are_fixed_so_the_picture_never_flips():
    rng = np.random.default_rng(2)
    matrix = rng.normal(size=(200, 16)) * np.linspace(4, 1, 16)
    xy = pca_2d(matrix)
    largest = xy[np.abs(xy).argmax(axis=0), [0, 1]]
    assert (largest > 0).all()
    np.testing.assert_array_equal(pca_2d(-matrix), xy)              # a mirrored input: same picture


def test_pca_of_degenerate_inputs_is_zeros_not_an_error():
    assert pca_2d(np.zeros((0, 5))).shape == (0, 2)
    assert pca_2d(np.ones((1, 5))).tolist() == [[0.0, 0.0]]
    np.testing.assert_allclose(pca_2d(np.ones((20, 5))), 0.0, atol=1e-6)   # every point the same
    line = pca_2d(np.arange(10.0)[:, None])                                 # one dimension: y stays 0
    assert_same_up_to_sign(np.column_stack([line[:, 0], np.zeros(10)]),
                           np.column_stack([np.arange(10.0) - 4.5, np.zeros(10)]))
    assert (line[:, 1] == 0).all()


def test_exact_knn_matches_a_hand_computed_distance_matrix():
    rng = np.random.default_rng(3)
    matrix = rng.normal(size=(120, 9)).astype(np.float32)
    indices, distances = exact_knn(matrix, 6)
    assert indices.dtype == np.int32 and distances.dtype == np.float32 and indices.shape == (120, 6)
    full = np.sqrt(((matrix[:, None, :].astype(np.float64) - matrix[None]) ** 2).sum(-1))
    expected = np.argsort(full, axis=1, kind="stable")[:, :6]
    np.testing.assert_array_equal(indices, expected)
    assert (indices[:, 0] == np.arange(120)).all()                  # each point first, as umap expects
    np.testing.assert_allclose(distances, np.take_along_axis(full, expected, 1), atol=1e-4)


_CACHE_PROBE = """
import json, sys, numpy as np
from diagnostics import projections
x = np.random.default_rng(0).normal(size=(300, 8)).astype(np.float32)
projections.umap_2d(x, 15, 0.1, 0, 20)
from numba.core.dispatcher import Dispatcher
import umap.umap_, umap.layouts
used = {f"{m.__name__}.{k}": v.stats for m in (umap.umap_, umap.layouts) for k, v in vars(m).items()
        if isinstance(v, Dispatcher) and (v.stats.cache_hits or v.stats.cache_misses)}
print(json.dumps({k: [s.cache_path, sum(s.cache_hits.values()), sum(s.cache_misses.values())]
                  for k, s in used.items()}))
"""


def _probe(env: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", _CACHE_PROBE], cwd=ROOT, capture_output=True, text=True,
                         timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_umaps_compiled_code_is_cached_on_disk_for_the_next_process(tmp_path):
    """A second process loads umap's layout code from numba's disk cache instead of compiling it
    (without the cache, every dispatcher below would miss in every new process)."""
    pytest.importorskip("umap")
    import os

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    _probe(env)                       # fills the cache (or finds it filled)
    used = _probe(env)
    # the functions a fit compiles (those with a signature in the decorator compile at import)
    for name in ("umap.umap_.smooth_knn_dist", "umap.umap_.compute_membership_strengths",
                 "umap.layouts._nb_optimize_layout_euclidean_single_epoch"):
        assert name in used, sorted(used)
        cache_path, hits, misses = used[name]
        assert cache_path is not None, f"{name} is not cached on disk"
        assert hits > 0 and misses == 0, (name, hits, misses)


def test_umap_turns_on_numbas_disk_cache_for_its_layout_code():
    pytest.importorskip("umap")
    xy = projections.umap_2d(np.random.default_rng(4).normal(size=(200, 8)).astype(np.float32), 15, 0.1, 0, 20)
    assert xy.shape == (200, 2) and np.isfinite(xy).all()
    import umap.layouts
    import umap.umap_

    for fn in (umap.umap_.smooth_knn_dist, umap.umap_.compute_membership_strengths,
               umap.layouts._nb_optimize_layout_euclidean_single_epoch):
        assert fn.stats.cache_path is not None, fn


def test_umap_in_a_child_process_gives_the_same_map_reports_phases_and_explains_failures():
    pytest.importorskip("umap")
    x = np.random.default_rng(5).normal(size=(150, 8)).astype(np.float32)
    phases = []
    child = projections.umap_2d_in_subprocess(x, 15, 0.1, 0, 30, on_phase=phases.append)
    np.testing.assert_array_equal(child, projections.umap_2d(x, 15, 0.1, 0, 30))   # seeded: the same map
    assert phases == ["loading UMAP", "finding each point's neighbours", "laying out the map"]
    x[3, 2] = np.inf
    with pytest.raises(RuntimeError, match="UMAP process failed .*infinity"):
        projections.umap_2d_in_subprocess(x, 15, 0.1, 0, 30)
