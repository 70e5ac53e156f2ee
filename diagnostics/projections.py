"""Embedding matrices to 2-D: an exact PCA (milliseconds) and UMAP (seconds), torch-free.

`diagnostics.embedding` decides which to use, caches the results and runs UMAP in the
background; this module only computes. What makes UMAP's first fit in a process slow is
numba compiling umap's code (20-40 s), so `umap_2d`:

- turns on numba's disk cache for umap's jitted functions (umap asks for it on one of them
  only), so the compilation is paid once per machine, not once per server start. numba puts
  the cache next to umap's source when that folder is writable, else in ~/.cache/numba; set
  NUMBA_CACHE_DIR to move it;
- finds the neighbours exactly with scikit-learn up to EXACT_KNN_MAX points (brute force,
  about 1 s of CPU for 10,000 × 128), so umap's approximate search (pynndescent's nn_descent,
  a 20 s compile that numba cannot cache: it takes the metric as a function argument) is
  never compiled for those maps. Exact neighbours are also at least as good a graph.

umap is imported inside `umap_2d` only: importing it costs 2 s (13 s the first time).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

# Up to this many points the neighbours are found exactly; above, by umap's approximate search.
EXACT_KNN_MAX = 20_000
# Above this many multiply-adds (n * d * min(n, d)) the PCA uses subspace iteration.
EXACT_PCA_MAX_FLOPS = 3e9


def pca_2d(matrix: np.ndarray) -> np.ndarray:
    """Scores on the top two principal components of `matrix` (n × d), as n × 2 float32.

    Exact (an eigendecomposition of the d × d or n × n Gram matrix of the centred data) up to
    EXACT_PCA_MAX_FLOPS; above (10,000 × 2,048 and larger), 8 rounds of block power iteration on
    12 vectors: within (s13 / s2) ** 17 of exact for singular values s, enough for a preview
    whenever the spectrum decays at all. Each axis's
    sign is fixed so that its largest |score| is positive: the same data gives the same picture.
    Fewer than 2 points, or fewer than 2 dimensions, leave the missing axes at 0.

        xy = pca_2d(embeddings)   # 10,000 × 128: about 0.05 s
    """
    z = np.asarray(matrix, dtype=np.float64)
    z = z - z.mean(axis=0) if len(z) else z
    n, d = z.shape
    xy = np.zeros((n, 2))
    k = min(2, n, d)
    if n < 2 or k == 0:
        return xy.astype(np.float32)
    if n * d * min(n, d) > EXACT_PCA_MAX_FLOPS:
        xy[:, :k] = _pca_by_subspace_iteration(z, k)
    elif d <= n:
        _, vectors = np.linalg.eigh(z.T @ z)             # eigenvalues ascending
        xy[:, :k] = z @ vectors[:, ::-1][:, :k]
    else:
        values, vectors = np.linalg.eigh(z @ z.T)
        xy[:, :k] = vectors[:, ::-1][:, :k] * np.sqrt(np.clip(values[::-1][:k], 0, None))
    largest = xy[np.abs(xy).argmax(axis=0), np.arange(2)]
    xy *= np.where(largest < 0, -1.0, 1.0)
    return xy.astype(np.float32)


def umap_2d(matrix: np.ndarray, n_neighbors: int, min_dist: float, seed: int | None,
            n_epochs: int | None, force_approximation: bool = False,
            on_phase: Callable[[str], None] | None = None) -> np.ndarray:
    """UMAP of `matrix` (n × d, n ≥ 4) to n × 2 float32, euclidean.

    `seed` makes it deterministic and single-threaded (None: all cores). Neighbours are exact up
    to EXACT_KNN_MAX points unless `force_approximation`. `on_phase` hears each phase's name
    ("loading UMAP", "finding each point's neighbours", "laying out the map") for progress.

        xy = umap_2d(embeddings, 15, 0.1, 42, 200)
    """
    report = on_phase or (lambda phase: None)
    report("loading UMAP")
    umap = _import_umap()
    k = min(n_neighbors, len(matrix) - 1)
    knn = (None, None, None)
    if not force_approximation and len(matrix) <= EXACT_KNN_MAX:
        report("finding each point's neighbours")
        knn = exact_knn(matrix, k)
    report("laying out the map")
    model = umap.UMAP(n_components=2, n_neighbors=k, min_dist=min_dist, random_state=seed,
                      n_jobs=1 if seed is not None else -1, n_epochs=n_epochs, precomputed_knn=knn,
                      force_approximation_algorithm=force_approximation)
    return np.asarray(model.fit_transform(matrix), dtype=np.float32)


def umap_2d_in_subprocess(matrix: np.ndarray, n_neighbors: int, min_dist: float, seed: int | None,
                          n_epochs: int | None, force_approximation: bool = False,
                          on_phase: Callable[[str], None] | None = None) -> np.ndarray:
    """`umap_2d` in a child process (at low priority), same arguments and result.

    A dashboard fits here, not in its own process: importing umap and loading or compiling its
    numba code hold the GIL for seconds at a time, which stalls every page the server is
    drawing meanwhile (measured: the first chart of a fresh server 9 s later). Raises
    RuntimeError with the child's last error line when the fit fails.

        xy = umap_2d_in_subprocess(embeddings, 15, 0.1, 42, 200, on_phase=print)
    """
    report = on_phase or (lambda phase: None)
    with tempfile.TemporaryDirectory(prefix="hookscope-umap-") as tmp:
        folder = Path(tmp)
        np.save(folder / "in.npy", np.ascontiguousarray(matrix, dtype=np.float32))
        params = {"n_neighbors": int(n_neighbors), "min_dist": float(min_dist), "seed": seed,
                  "n_epochs": n_epochs, "force_approximation": bool(force_approximation)}
        package_root = str(Path(__file__).resolve().parents[1])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
        with open(folder / "stderr.txt", "w+") as errors:
            proc = subprocess.Popen([sys.executable, "-m", "diagnostics.projections", str(folder), json.dumps(params)],
                                    stdout=subprocess.PIPE, stderr=errors, text=True, env=env)
            for line in proc.stdout:
                if line.startswith("phase: "):
                    report(line[7:].strip())
            code = proc.wait()
            errors.seek(0)
            lines = [ln for ln in errors.read().splitlines() if ln.strip()]
        if code != 0 or not (folder / "out.npy").is_file():
            raise RuntimeError(f"the UMAP process failed (exit {code}): {lines[-1] if lines else 'no message'}")
        return np.load(folder / "out.npy")


def exact_knn(matrix: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's k nearest rows (itself included, as umap expects): indices int32, distances float32.

        indices, distances = exact_knn(embeddings, 15)   # indices[i, 0] == i unless duplicates
    """
    from sklearn.neighbors import NearestNeighbors  # a dependency of umap-learn

    dist, idx = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(matrix).kneighbors(matrix)
    return idx.astype(np.int32), dist.astype(np.float32)


def _pca_by_subspace_iteration(z: np.ndarray, k: int, width: int = 12, rounds: int = 8) -> np.ndarray:
    """Top-k principal scores of the centred z by block power iteration (seeded)."""
    q = z @ np.random.default_rng(0).normal(size=(z.shape[1], width))
    for _ in range(rounds):
        q, _ = np.linalg.qr(z @ (z.T @ q))
    u, s, _ = np.linalg.svd(q.T @ z, full_matrices=False)
    return (q @ u[:, :k]) * s[:k]


def _import_umap():
    try:
        import umap  # 2 s, 13 s the first time (numba); never at module import
    except ImportError:
        raise ImportError("embedding maps need umap-learn — pip install umap-learn") from None
    # we pass neighbours without a search index: fine, we never call transform()
    warnings.filterwarnings("ignore", message=r"precomputed_knn\[2\]", category=UserWarning)
    _cache_compiled_code()
    return umap


_cache_checked: set[str] = set()


def _cache_compiled_code() -> None:
    """numba's disk cache on for every jitted function of umap's modules not cached already."""
    from numba.core.dispatcher import Dispatcher

    for name, module in list(sys.modules.items()):
        if module is None or name in _cache_checked or not (name == "umap" or name.startswith("umap.")):
            continue
        _cache_checked.add(name)
        for value in list(vars(module).values()):
            if isinstance(value, Dispatcher) and value.stats.cache_path is None:
                try:
                    value.enable_caching()
                except RuntimeError:  # no writable cache folder at all: compile in each process
                    return


def _child(folder: str, params: str) -> int:
    """The child of `umap_2d_in_subprocess`: in.npy → out.npy, phases on stdout."""
    if hasattr(os, "nice"):
        os.nice(10)   # the server's pages come first
    warnings.simplefilter("ignore")
    matrix = np.load(Path(folder) / "in.npy")
    xy = umap_2d(matrix, **json.loads(params), on_phase=lambda phase: print(f"phase: {phase}", flush=True))
    np.save(Path(folder) / "out.npy", xy)
    return 0


if __name__ == "__main__":
    sys.exit(_child(*sys.argv[1:3]))
