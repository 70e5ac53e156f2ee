"""2-D maps of the evaluated samples' embeddings (UMAP), cached in the run directory.

`project` turns the `embedding` column of `Run.samples()` into one (x, y) point per sample:
a 2-D embedding is drawn as it is, a handful of points by PCA, anything else by UMAP. A UMAP
fit costs seconds (and, the first time on a machine, tens of seconds while numba compiles), so:

- `project_or_preview` answers at once: the UMAP map when it is ready, otherwise an exact PCA
  of the same points (milliseconds), while the UMAP is computed in a background thread;
  `map_status` says how it is going, for a page to refresh itself when the map is ready;
- its result goes to RUN/cache/umap-<key>.parquet (written atomically) and a later call, from
  any process, reads it back without importing umap; a run directory that cannot be written
  keeps the result in this process's memory instead;
- fits are serialised by one process-wide lock: two browser sessions asking for the same map
  fit it once, the second waits and then reads the result;
- numba's compilation is paid once per machine, not once per server start (see
  `diagnostics.projections`), and `warm_up()` pays it (or loads it from numba's disk cache)
  in a background thread at server start.

umap is imported by `projections.umap_2d` only: importing it costs 2 s (13 s the first time).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from diagnostics import projections

CACHE_DIR = "cache"
# Part of every cache key: bump it when the recipe (what a key's file holds) changes.
_RECIPE = 2
# Below this many points a UMAP graph means little (and under 4 it fails): use PCA.
MIN_UMAP_POINTS = 10
_POINTS_SCHEMA = pa.schema([("sample_id", pa.string()), ("x", pa.float32()), ("y", pa.float32())])

_FIT_LOCK = threading.Lock()
_warmed_up = False
# What the holder of _FIT_LOCK is doing, for progress messages.
_activity: dict[str, Any] = {"what": None, "phase": "", "since": 0.0}
# Maps that could not be written to their run directory (read-only), newest last.
_unsaved: OrderedDict[str, pd.DataFrame] = OrderedDict()
_UNSAVED_MAX = 16


def embedding_matrix(samples: pd.DataFrame) -> np.ndarray:
    """The `embedding` column as an n × d float32 matrix, in the frame's row order.

        X = embedding_matrix(run.samples(split="val"))   # (n_samples, embedding_dim)

    Raises ValueError, naming a sample, when the column is missing, a row has no embedding, or
    rows have different lengths (samples of two models or two evaluations mixed).
    """
    if "embedding" not in samples.columns:
        raise ValueError("samples have no 'embedding' column — pass a frame from Run.samples() "
                         "(it needs the embedding column, e.g. columns=[..., 'embedding'])")
    values = samples["embedding"].tolist()
    if not values:
        return np.zeros((0, 0), dtype=np.float32)
    ids = samples["sample_id"].astype(str).tolist() if "sample_id" in samples.columns \
        else [f"row {i}" for i in range(len(values))]
    rows = []
    for sid, value in zip(ids, values):
        row = None if value is None else np.asarray(value, dtype=np.float32)
        if row is None or row.ndim != 1 or row.size == 0:
            raise ValueError(f"sample {sid!r} has no embedding (got {value!r:.60}) — "
                             "every row needs a 1-D, non-empty embedding")
        rows.append(row)
    lengths = pd.Series([len(r) for r in rows])
    if lengths.nunique() > 1:
        counts = ", ".join(f"{length} for {count} rows" for length, count in lengths.value_counts().items())
        odd = lengths.ne(lengths.mode().iloc[0]).idxmax()
        raise ValueError(f"embeddings have different lengths ({counts}; sample {ids[odd]!r} has "
                         f"{lengths[odd]}) — pass the samples of one evaluation of one model")
    return np.stack(rows)


def project(run_path: str | os.PathLike | None, samples: pd.DataFrame, n_neighbors: int = 15,
            min_dist: float = 0.1, seed: int | None = 42, *, n_epochs: int | None = None) -> pd.DataFrame:
    """One 2-D point per sample: a frame `sample_id, x, y` in the order of `samples`.

    - d == 2: the embedding itself (no UMAP); d == 1: x = the embedding, y = 0.
    - fewer than MIN_UMAP_POINTS (10) samples: PCA to 2-D, not UMAP (no error).
    - otherwise UMAP (umap-learn, euclidean). `seed` makes it deterministic and single-threaded;
      seed=None runs on all cores and differs run to run. `n_epochs=None` is umap's choice (500
      up to 10,000 points, 200 above); 200 is about twice as fast and as good on clear clusters.

    A sample evaluated several times (several steps, or padded by a distributed sampler) is
    mapped once, with its latest evaluation. A UMAP result is cached in RUN/cache/ (key: split,
    step, sample ids, the embeddings themselves and the parameters); `run_path=None` or a
    read-only run keeps it in this process's memory instead. An empty frame gives an empty map.

        points = project(run.path, run.samples(split="val"))
        points = project(run.path, samples[samples["correct"] == 0])   # a filtered subset

    Raises ValueError on a bad `samples` frame (see `embedding_matrix`), on NaN or inf in the
    embeddings, and on out-of-range parameters.
    """
    job = _Job(run_path, samples, n_neighbors, min_dist, seed, n_epochs)
    if job.method != "umap":
        return job.output(job.direct())
    found = job.cached()
    return job.output(found if found is not None else _fit_and_save(job))


@dataclass(frozen=True)
class MapStatus:
    """Where a UMAP map stands, from `project_or_preview` or `map_status`.

    state: "ready", "queued", "running" or "failed". method: what `project_or_preview` returned,
    "umap", "pca" (too few points for UMAP), "direct" (a 1-D or 2-D embedding) or "pca preview"
    (UMAP not ready yet). message: one line for people (progress, or what failed and what to do).
    ticket: pass it to `map_status` to follow a map that is being computed; None when ready at once.
    """

    state: str
    method: str
    n_points: int
    elapsed_s: float = 0.0
    message: str = ""
    ticket: str | None = None


def project_or_preview(run_path: str | os.PathLike | None, samples: pd.DataFrame, n_neighbors: int = 15,
                       min_dist: float = 0.1, seed: int | None = 42, *, n_epochs: int | None = None,
                       retry: bool = False) -> tuple[pd.DataFrame, MapStatus]:
    """`project`'s points if they are ready at once, else a PCA preview while UMAP runs in the background.

    Returns (points, status) like `project`'s frame (sample_id, x, y in the order of `samples`).
    When the UMAP map is cached (or not needed: 2-D, few points) status.state is "ready" and
    the points are the map. Otherwise the points are the exact PCA of the same embeddings
    (milliseconds), status.method is "pca preview", and one background thread computes the
    UMAP and caches it as `project` would; follow it with `map_status(status.ticket)`, then
    call this again. Asking again while it runs starts nothing new; a map that failed stays
    failed (the same status, so a page's reruns do not refit it) until asked with retry=True.

        points, status = project_or_preview(run.path, samples)
        while status.state in ("queued", "running"):
            print(status.message); time.sleep(1); status = map_status(status.ticket)

    Raises ValueError on bad input, as `project` does.
    """
    job = _Job(run_path, samples, n_neighbors, min_dist, seed, n_epochs)
    if job.method != "umap":
        return job.output(job.direct()), MapStatus("ready", job.method, len(job.rows))
    found = job.cached()
    if found is not None:
        return job.output(found), MapStatus("ready", "umap", len(job.rows))
    ticket = _submit(job, retry)
    return job.output(job.frame(projections.pca_2d(job.matrix))), map_status(ticket)


def map_status(ticket: str) -> MapStatus:
    """How the background UMAP asked for by `project_or_preview` is going (see MapStatus).

        status = map_status(status.ticket)
        if status.state == "ready": points, _ = project_or_preview(run.path, samples)
    """
    with _JOBS_LOCK:
        entry = _jobs.get(ticket)
        if entry is None:
            return MapStatus("failed", "pca preview", 0, message="this map was asked for in another server "
                             "process or long ago — reload the page to compute it again", ticket=ticket)
        ahead = sum(e.state in ("queued", "running") and e.asked_at < entry.asked_at for e in _jobs.values())
    elapsed = (entry.finished_at or time.monotonic()) - entry.asked_at
    method = "umap" if entry.state == "ready" else "pca preview"
    return MapStatus(entry.state, method, entry.n_points, elapsed, _message(entry, ahead, elapsed), ticket)


def is_cached(run_path: str | os.PathLike | None, samples: pd.DataFrame, n_neighbors: int = 15,
              min_dist: float = 0.1, seed: int | None = 42, *, n_epochs: int | None = None) -> bool:
    """Whether `project` with these arguments returns at once (cached, 2-D, or too few points
    for UMAP), so a page can warn before a fit: "computing UMAP for 10,000 points (~10 s)".

        if not is_cached(run.path, samples):
            st.info(f"computing UMAP for {len(samples):,} points, the first time takes a while")
    """
    job = _Job(run_path, samples, n_neighbors, min_dist, seed, n_epochs)
    return job.method != "umap" or job.key in _unsaved or (job.path is not None and job.path.is_file())


def is_warmed_up() -> bool:
    """Whether this process has fitted a UMAP already (numba's compilation is paid)."""
    return _warmed_up


def warm_up() -> None:
    """Fit a tiny UMAP (200 × 8, seeded) through the path every map takes, so that numba's
    compilation (tens of seconds on a fresh machine, a few seconds from its disk cache later) is
    paid before a user asks for a map; meant for a background thread at server start. Safe to
    call twice or from several threads: later calls return at once. A user's fit that starts
    meanwhile waits for it (it would compile the same code).

        threading.Thread(target=warm_up, daemon=True).start()
    """
    global _warmed_up
    with _FIT_LOCK:
        if _warmed_up:
            return
        _activity.update(what="warm-up", phase="starting", since=time.monotonic())
        try:
            data = np.random.default_rng(0).normal(size=(200, 8)).astype(np.float32)
            # few epochs compile the same layout code as a real map
            _fit_umap(data, 15, 0.1, 0, n_epochs=20)
            _warmed_up = True
        finally:
            _activity.update(what=None)


def selection_ids(points: pd.DataFrame, selected: Iterable[Any] | Mapping[str, Any]) -> list[str]:
    """Sample ids of a plotly selection on an `embedding_figure`, in selection order, unique.

    `selected` is the selection itself (Streamlit's `event.selection`, a dict with "points") or
    its list of points: each carries its sample id as `customdata`, which stays right whatever
    trace the point is in. Plain integers are row positions in `points` (plotly's point indices
    match them only for a one-trace figure drawn in the order of `points`).

        event = st.plotly_chart(embedding_figure(points, samples), on_select="rerun")
        ids = selection_ids(points, event.selection)
    """
    if isinstance(selected, Mapping) or hasattr(selected, "points"):
        selected = selected["points"] if isinstance(selected, Mapping) else selected.points
    known = points["sample_id"].astype(str)
    ids: list[str] = []
    for item in selected:
        if isinstance(item, Mapping):
            custom = item.get("customdata")
            if isinstance(custom, (list, tuple)):
                custom = custom[0] if custom else None
            if custom is None:
                raise ValueError(f"selected point {dict(item)!r:.120} carries no customdata — "
                                 "pass a selection of a figure from embedding_figure")
            ids.append(str(custom))
        elif isinstance(item, (int, np.integer)) and not isinstance(item, bool):
            if not -len(known) <= int(item) < len(known):
                raise ValueError(f"point index {item} is out of range for {len(known)} points")
            ids.append(known.iloc[int(item)])
        else:
            raise ValueError(f"cannot read a selected point from {item!r:.80} — pass plotly "
                             "selection points (dicts) or row positions (ints)")
    present = set(known)
    return [i for i in dict.fromkeys(ids) if i in present]


# -- internals --------------------------------------------------------------------------------

def _fit_and_save(job: _Job) -> pd.DataFrame:
    """Fit `job`'s map under the fit lock (unless another caller cached it meanwhile) and cache it."""
    global _warmed_up
    with _FIT_LOCK:
        # Another session may have fitted the same map while this one waited for the lock.
        found = job.cached()
        if found is None:
            _activity.update(what="map", phase="starting", since=time.monotonic())
            try:
                found = job.frame(_fit_umap(job.matrix, job.n_neighbors, job.min_dist, job.seed, job.n_epochs))
            finally:
                _activity.update(what=None)
            _warmed_up = True
            job.save(found)
    return found


def _fit_umap(matrix: np.ndarray, n_neighbors: int, min_dist: float, seed: int | None,
              n_epochs: int | None, force_approximation: bool = False) -> np.ndarray:
    """UMAP of `matrix` to n × 2 float32, in a child process so that the server's pages never wait
    for umap's GIL-bound import and compilation (tests replace this one function with a fake)."""
    return projections.umap_2d_in_subprocess(matrix, n_neighbors, min_dist, seed, n_epochs, force_approximation,
                               on_phase=lambda phase: _activity.update(phase=phase))


# -- the background worker --------------------------------------------------------------------

class _Background:
    """One map asked for by `project_or_preview`: its job until it is done, and how it went."""

    def __init__(self, job: _Job) -> None:
        self.job: _Job | None = job
        self.n_points = len(job.rows)
        self.state = "queued"
        self.asked_at = time.monotonic()
        self.finished_at: float | None = None
        self.error = ""


_JOBS_LOCK = threading.Lock()
_jobs: OrderedDict[str, _Background] = OrderedDict()
_JOBS_MAX = 64
_queue: queue.Queue[_Background] = queue.Queue()
_worker: list[threading.Thread] = []


def _submit(job: _Job, retry: bool = False) -> str:
    """Queue `job` for the background worker unless it is queued or running already, or failed
    and not `retry`; its ticket."""
    ticket = f"{job.key}@{job.path}"
    with _JOBS_LOCK:
        entry = _jobs.get(ticket)
        if entry is None or entry.state == "ready" or (entry.state == "failed" and retry):
            entry = _jobs[ticket] = _Background(job)
            _jobs.move_to_end(ticket)
            _queue.put(entry)
            done = [t for t, e in _jobs.items() if e.state in ("ready", "failed")]
            for old in done[: max(0, len(_jobs) - _JOBS_MAX)]:
                del _jobs[old]
        if not _worker or not _worker[0].is_alive():
            _worker[:] = [threading.Thread(target=_work, name="umap-maps", daemon=True)]
            _worker[0].start()
    return ticket


def _work() -> None:
    while True:
        entry = _queue.get()
        entry.state = "running"
        try:
            _fit_and_save(entry.job)
            entry.state = "ready"
        except Exception as exc:  # a background thread: the page shows it, the server goes on
            entry.error, entry.state = f"{type(exc).__name__}: {exc}", "failed"
        finally:
            entry.job, entry.finished_at = None, time.monotonic()


def _message(entry: _Background, ahead: int, elapsed_s: float) -> str:
    n = f"{entry.n_points:,} points"
    if entry.state == "ready":
        return f"UMAP of {n} ready after {elapsed_s:.0f} s"
    if entry.state == "failed":
        return f"UMAP of {n} failed ({entry.error}) — the PCA preview stays"
    busy = _activity.get("what")
    if busy == "warm-up":
        since = time.monotonic() - _activity["since"]
        return (f"UMAP of {n} waits for the server's UMAP warm-up ({_activity['phase']}, {since:.0f} s so far: "
                "the first start on a machine compiles UMAP for a minute or two, later starts load it in seconds)")
    if entry.state == "queued" or busy is None:
        return f"UMAP of {n} waits for {max(ahead, 1)} other map{'s' if ahead > 1 else ''} to finish"
    compiling = "" if _warmed_up else "; the first map since the server started also loads or compiles UMAP"
    return f"Computing the UMAP of {n}: {_activity['phase']}, {elapsed_s:.0f} s so far{compiling}"


class _Job:
    """One `project` request, validated: the canonical rows (one per sample id, sorted by id),
    their matrix, the method, and the cache key and path."""

    def __init__(self, run_path, samples, n_neighbors, min_dist, seed, n_epochs):
        _check_parameters(n_neighbors, min_dist, seed, n_epochs)
        self.n_neighbors, self.min_dist = int(n_neighbors), float(min_dist)
        self.seed = None if seed is None else int(seed)
        self.n_epochs = None if n_epochs is None else int(n_epochs)
        if not isinstance(samples, pd.DataFrame) or "sample_id" not in samples.columns:
            raise ValueError("samples need a 'sample_id' column — pass a frame from Run.samples()")
        rows = samples.assign(sample_id=samples["sample_id"].astype(str), _position=np.arange(len(samples)))
        if "step" in rows.columns:
            rows = rows.sort_values("step", kind="stable")
        self.rows = rows.drop_duplicates("sample_id", keep="last").sort_values("sample_id", kind="stable")
        self.matrix = embedding_matrix(self.rows)
        n, d = self.matrix.shape
        self.method = "direct" if d <= 2 else "pca" if n < MIN_UMAP_POINTS else "umap"
        if self.method != "direct" and not np.isfinite(self.matrix).all():
            bad = ~np.isfinite(self.matrix).all(axis=1)
            raise ValueError(f"{bad.sum()} of {n} embeddings hold NaN or inf (first: sample "
                             f"{self.rows['sample_id'].iloc[int(bad.argmax())]!r}) — the model's features "
                             "overflowed; map the others: samples[samples['sample_id'] not in those]")
        self.key = self.path = None
        if self.method == "umap":
            self.key = self._key()
            if run_path is not None:
                self.path = Path(run_path) / CACHE_DIR / f"umap-{self.key}.parquet"

    def _key(self) -> str:
        def values(column: str) -> list:
            return sorted(map(str, self.rows[column].unique())) if column in self.rows.columns else []

        header = {"recipe": _RECIPE, "split": values("split"), "step": values("step"),
                  "n_neighbors": self.n_neighbors, "min_dist": self.min_dist, "seed": self.seed,
                  "n_epochs": self.n_epochs, "shape": list(self.matrix.shape)}
        digest = hashlib.blake2b(json.dumps(header, sort_keys=True).encode(), digest_size=16)
        digest.update(json.dumps(self.rows["sample_id"].tolist()).encode())
        # the values too: a sample id names a different input in another data set or run
        digest.update(np.ascontiguousarray(self.matrix).tobytes())
        return digest.hexdigest()

    def direct(self) -> pd.DataFrame:
        m = self.matrix
        if len(m) == 0:
            return self.frame(np.zeros((0, 2)))
        if self.method == "pca":
            return self.frame(projections.pca_2d(m))
        if m.shape[1] == 1:
            return self.frame(np.column_stack([m[:, 0], np.zeros(len(m))]))
        return self.frame(m)

    def frame(self, xy: np.ndarray) -> pd.DataFrame:
        xy = np.asarray(xy, dtype=np.float32).reshape(len(self.rows), 2)
        return pd.DataFrame({"sample_id": self.rows["sample_id"].to_numpy(dtype=object),
                             "x": xy[:, 0], "y": xy[:, 1]})

    def output(self, frame: pd.DataFrame) -> pd.DataFrame:
        order = np.argsort(self.rows["_position"].to_numpy(), kind="stable")
        return frame.iloc[order].reset_index(drop=True)

    def cached(self) -> pd.DataFrame | None:
        if self.key in _unsaved:
            return _unsaved.get(self.key)
        if self.path is None or not self.path.is_file():
            return None
        try:
            frame = pq.read_table(self.path, schema=_POINTS_SCHEMA).to_pandas()
        except (OSError, ValueError, pa.ArrowException):
            return None  # unreadable: fit again and replace it
        if frame["sample_id"].tolist() != self.rows["sample_id"].tolist():
            return None
        return frame

    def save(self, frame: pd.DataFrame) -> None:
        if self.path is not None:
            tmp = self.path.with_name(f".tmp-{uuid.uuid4().hex}-{self.path.name}")
            try:
                self.path.parent.mkdir(exist_ok=True)
                pq.write_table(pa.Table.from_pandas(frame, schema=_POINTS_SCHEMA, preserve_index=False), tmp)
                os.replace(tmp, self.path)
                return
            except OSError:  # a read-only run directory (someone else's, a read-only mount)
                with contextlib.suppress(OSError):
                    tmp.unlink(missing_ok=True)
        _unsaved[self.key] = frame
        while len(_unsaved) > _UNSAVED_MAX:
            _unsaved.popitem(last=False)


def _check_parameters(n_neighbors, min_dist, seed, n_epochs) -> None:
    def is_int(v) -> bool:
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    if not is_int(n_neighbors) or n_neighbors < 2:
        raise ValueError(f"n_neighbors={n_neighbors!r} — pass an int of 2 or more (15 is usual)")
    if not isinstance(min_dist, (int, float, np.floating)) or not 0 <= float(min_dist) <= 1:
        raise ValueError(f"min_dist={min_dist!r} — pass a number from 0 to 1 (0.1 is usual)")
    if seed is not None and not is_int(seed):
        raise ValueError(f"seed={seed!r} — pass an int, or None for a parallel, unseeded fit")
    if n_epochs is not None and (not is_int(n_epochs) or n_epochs < 1):
        raise ValueError(f"n_epochs={n_epochs!r} — pass a positive int, or None for umap's choice")
