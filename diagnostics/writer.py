"""The run writer: appends rows to a run directory, atomically, from the training process.

Rows are buffered in memory and a background thread flushes them every few seconds as
new Parquet parts (temporary name, then rename), so a training process killed at any
moment loses at most the rows since its last flush, and a reader never sees a
half-written file. Small parts are merged in tiers (16 parts of one size make one part
of the next), sorted by `schema.SORT_KEYS` so that DuckDB reads only the row groups a
query needs. Every table is built here against `diagnostics.schema`: callers hand over
numbers (numpy arrays, lists), never Arrow tables of their own.
"""

from __future__ import annotations

import json
import math
import os
import socket
import sys
import threading
import time
import uuid
import warnings
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from diagnostics import schema

_TIER_FANOUT = 16
# A merge happens in the training process: past this many rows it would cost seconds
# and gigabytes, while DuckDB reads a few hundred parts in a fraction of a second.
_MAX_MERGED_ROWS = 250_000
_ROW_GROUP_ROWS = 4096
# Tables whose rows arrive as Arrow tables already built here (the others as tuples of numbers).
_BUILT_TABLES = ("samples", "previews", "attributions", "positions", "vocabulary")


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex}-{path.name}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _atomic_write_json(path: Path, obj: dict) -> None:
    _atomic_write_bytes(path, json.dumps(obj, indent=1, default=str).encode())


def _atomic_write_table(path: Path, table: pa.Table) -> None:
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex}-{path.name}")
    pq.write_table(table, tmp, row_group_size=_ROW_GROUP_ROWS, compression="zstd")
    os.replace(tmp, path)


class RunWriter:
    """Appends rows to a run directory from any thread; I/O happens on its own thread.

    Example::

        w = RunWriter("runs/exp1", {"name": "exp1"})
        w.add_scalar(step=0, name="loss", value=2.3)
        w.close()
    """

    def __init__(
        self,
        path: str | os.PathLike,
        manifest: dict[str, Any],
        rank: int = 0,
        flush_every_s: float = 5.0,
    ) -> None:
        self.path = Path(path)
        self.rank = rank
        self.flush_every_s = flush_every_s
        for table in schema.TABLES:
            (self.path / table).mkdir(parents=True, exist_ok=True)
        (self.path / schema.STATUS_DIR).mkdir(parents=True, exist_ok=True)
        self._manifest = {
            "schema_version": schema.SCHEMA_VERSION,
            "created_at": time.time(),
            "host": socket.gethostname(),
            **manifest,
        }
        self._lock = threading.Lock()
        self._io_lock = threading.Lock()
        self._buffers: dict[str, list] = defaultdict(list)
        self._seq = self._next_seq()
        self._last_step = -1
        self._closed = False
        self._state = "running"
        self.fault: str | None = None  # the first write that failed, in words (None: all written)
        self.dropped_rows = 0          # rows lost to write faults
        self.faults: list[dict] = []   # parts of the recording switched off (hooks/guard.py)
        if rank == 0:
            _atomic_write_json(self.path / schema.MANIFEST_FILE, self._manifest)
        self._write_status()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="diagnostics-writer", daemon=True)
        self._thread.start()

    # -- adding rows (any thread, no I/O) ------------------------------------------
    def add_scalar(self, step: int, name: str, value: float, wall_time_s: float | None = None) -> None:
        """`wall_time_s`: when the value was produced (default: now), for values handed over
        in batches after their step."""
        with self._lock:
            self._buffers["scalars"].append((step, name, float(value), time.time() if wall_time_s is None
                                             else float(wall_time_s)))
            self._last_step = max(self._last_step, step)

    def add_scalars(self, step: int, values: dict[str, float], wall_time_s: float | None = None) -> None:
        now = time.time() if wall_time_s is None else float(wall_time_s)
        with self._lock:
            self._buffers["scalars"].extend((step, k, float(v), now) for k, v in values.items())
            self._last_step = max(self._last_step, step)

    def add_summaries(
        self, step: int, layers: Sequence[str], kinds: Sequence[str], matrix: np.ndarray
    ) -> None:
        """Add one distribution row per line of `matrix` (see `schema.SUMMARY_FIELDS`)."""
        if len(layers) != len(matrix) or len(kinds) != len(matrix):
            raise ValueError("add_summaries: layers, kinds and matrix must have one entry per row")
        with self._lock:
            self._buffers["distributions"].append((step, list(layers), list(kinds), matrix))
            self._last_step = max(self._last_step, step)

    def add_records(self, step: int, split: str, sample_ids: Sequence, values: np.ndarray) -> None:
        """Per-sample records: `values` has one row per id and the columns `schema.RECORD_FIELDS`."""
        if len(sample_ids) != len(values):
            raise ValueError("add_records: one row of values per sample id")
        with self._lock:
            self._buffers["records"].append((step, split, sample_ids, values))
            self._last_step = max(self._last_step, step)

    def add_samples(self, step: int, split: str, sample_ids: Sequence, values: np.ndarray, probs: Sequence,
                    embeddings: Sequence, extra_columns: dict[str, np.ndarray] | None = None,
                    confidence: np.ndarray | None = None) -> None:
        """One evaluation's per-sample rows (table `samples`).

        Args:
            step: the training step the evaluation ran at.
            split: the evaluated split ("val", ...).
            sample_ids: one id per sample.
            values: one row per sample, columns `schema.RECORD_FIELDS`.
            probs: per sample, its probability vector (classification) or None.
            embeddings: per sample, its embedding vector.
            extra_columns: more columns by name (input statistics `input_*`, metadata
                `meta_*`): numbers are stored as float64, anything else as text.
            confidence: per sample, the probability of its prediction; default the largest
                of `probs` (position outputs pass their positions' mean).
        """
        if not len(sample_ids) == len(values) == len(probs) == len(embeddings):
            raise ValueError("add_samples: one row of values, probabilities and embedding per sample id")
        table = _samples_table(step, split, self.rank, sample_ids, values, probs, embeddings, extra_columns or {},
                               confidence)
        with self._lock:
            self._buffers["samples"].append(table)

    def add_previews(self, split: str, sample_ids: Sequence, kind: str, shape: Sequence, values: Any) -> None:
        """A small picture of each evaluated input (table `previews`).

        Args:
            split: the evaluated split.
            sample_ids: one id per sample.
            kind: image, signal, vector or tokens (see `schema.PREVIEWS_SCHEMA`).
            shape: the shape of one preview, or one shape per sample (then `values` is a
                list of arrays: token lists of several lengths).
            values: one row-major row of prod(shape) values per sample.
        """
        table = _previews_table(split, sample_ids, kind, shape, values)
        with self._lock:
            self._buffers["previews"].append(table)

    def add_attributions(self, step: int, split: str, sample_ids: Sequence, targets: Sequence[int],
                         by_method: dict[str, np.ndarray]) -> None:
        """Attributions of some evaluated samples (table `attributions`).

        Args:
            step: the training step the evaluation ran at.
            split: the evaluated split.
            sample_ids: the attributed samples' ids.
            targets: per sample, the class attributed (-1: the output itself).
            by_method: method name → array (n × the input's spatial shape).
        """
        tables = [_attributions_table(step, split, sample_ids, targets, method, arr)
                  for method, arr in by_method.items()]
        if tables:
            with self._lock:
                self._buffers["attributions"].append(pa.concat_tables(tables))

    def add_positions(self, step: int, split: str, sample_ids: Sequence, positions: np.ndarray, labels: np.ndarray,
                      predictions: np.ndarray, losses: np.ndarray, confidences: np.ndarray) -> None:
        """One evaluation's counted positions (table `positions`, `schema.POSITIONS_SCHEMA`):
        one entry per row in every argument (`sample_ids` repeats a sample's id per position)."""
        columns = {"position": (positions, np.int64), "label": (labels, np.int64),
                   "prediction": (predictions, np.int64), "loss": (losses, np.float64),
                   "confidence": (confidences, np.float64)}
        if any(len(values) != len(sample_ids) for values, _ in columns.values()):
            raise ValueError("add_positions: one sample id, position, label, prediction, loss and confidence per row")
        table = _keyed_table(schema.POSITIONS_SCHEMA, split, step, sample_id=[str(i) for i in sample_ids],
                             **{k: np.asarray(v, t) for k, (v, t) in columns.items()})
        with self._lock:
            self._buffers["positions"].append(table)

    def add_vocabulary(self, step: int, split: str, token_ids: Sequence[int], texts: Sequence[str]) -> None:
        """The strings of some token ids (table `vocabulary`), for an evaluation's pages."""
        if len(token_ids) != len(texts):
            raise ValueError("add_vocabulary: one text per token id")
        table = _keyed_table(schema.VOCABULARY_SCHEMA, split, step, token_id=np.asarray(token_ids, np.int64),
                             text=[str(t) for t in texts])
        with self._lock:
            self._buffers["vocabulary"].append(table)

    def add_table(self, table_name: str, table: pa.Table) -> None:
        """Rows already built as an Arrow table of `schema.SCHEMAS[table_name]` (samples,
        previews or attributions); `add_samples`, `add_previews` and `add_attributions`
        build them from arrays."""
        if table_name not in _BUILT_TABLES:
            raise ValueError(f"add_table: unknown table {table_name!r}")
        with self._lock:
            self._buffers[table_name].append(table)

    def update_manifest(self, **entries: Any) -> None:
        """Merge entries into run.json (rank 0 only; other ranks ignore it). A write that
        fails never raises: it is a write fault (see `flush`)."""
        if self.rank != 0:
            return
        with self._io_lock:
            self._manifest.update(entries)
        try:
            self._write_manifest()
        except Exception as exc:  # the user's training must never die of diagnostics
            self._fault(exc, 0)

    def _write_manifest(self) -> None:
        with self._io_lock:
            _atomic_write_json(self.path / schema.MANIFEST_FILE, self._manifest)

    def note_fault(self, fault: dict) -> None:
        """Record a part of the recording that failed (hooks/guard.py): in this rank's status
        file and, on rank 0, in the manifest's `faults`. Never raises."""
        with self._lock:
            self.faults.append(fault)
        self.update_manifest(faults=list(self.faults))
        try:
            with self._io_lock:  # after a flush's status, never before it
                self._write_status()
        except Exception as exc:  # noqa: BLE001 -- a write fault: warned once, recorded where it can be
            self._fault(exc, 0)

    # -- flushing -------------------------------------------------------------------
    def flush(self) -> None:
        """Write buffered rows as new parts now (also done every `flush_every_s`).

        A write that fails (a full disk, a directory made read-only) never raises: the first
        one warns once and is recorded in the manifest and the status file where they can
        still be written (`writer_error`); the rows of a failed flush are dropped, later
        flushes try again."""
        with self._lock:
            buffers, self._buffers = self._buffers, defaultdict(list)
        try:
            self._write(buffers)
        except Exception as exc:  # the user's training must never die of diagnostics
            self._fault(exc, sum(len(items) for items in buffers.values()))

    def _fault(self, exc: BaseException, rows: int) -> None:
        self.dropped_rows += rows
        if self.fault is not None:
            return
        self.fault = f"{type(exc).__name__}: {exc}"
        message = (f"hookscope could not write the run {self.path} ({self.fault}) — training goes on; "
                   "what it records meanwhile is lost until the disk takes writes again")
        try:
            warnings.warn(message, RuntimeWarning, stacklevel=3)
        except Exception:  # noqa: BLE001 -- warnings made errors: this thread must live on, the message still out
            print(message, file=sys.stderr)
        with self._io_lock:
            self._manifest["writer_error"] = self.fault
        for write in (self._write_manifest, self._write_status):
            try:
                write()
            except Exception:  # noqa: BLE001 -- the fault was reported above; this is a best effort
                pass

    def _write(self, buffers: dict[str, list]) -> None:
        with self._io_lock:
            for table_name, items in buffers.items():
                if not items:
                    continue
                table = _build_table(table_name, items, self.rank)
                seq = self._seq
                self._seq += 1
                table_dir = self.path / table_name
                _atomic_write_table(table_dir / schema.part_name(self.rank, seq, seq), table)
                self._compact(table_dir)
            self._write_status()

    def close(self, state: str = "finished") -> None:
        """Flush everything, stop the thread and mark this rank `finished` (or `failed`)."""
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        self._thread.join()
        self.flush()
        self._state = state
        try:
            self._write_status()
        except Exception as exc:  # noqa: BLE001 -- a fault at the very end: warned once, never raised
            self._fault(exc, 0)

    def _loop(self) -> None:
        while not self._closed:
            self._wake.wait(self.flush_every_s)
            if self._closed:
                return
            self.flush()  # never raises: a fault is warned about once and recorded

    def _write_status(self) -> None:
        _atomic_write_json(
            self.path / schema.STATUS_DIR / f"rank{self.rank}.json",
            {"state": self._state, "heartbeat": time.time(), "last_step": self._last_step, "pid": os.getpid(),
             "host": self._manifest["host"], **({"writer_error": self.fault} if self.fault else {}),
             **({"faults": self.faults} if self.faults else {})},
        )

    def _next_seq(self) -> int:
        last = -1
        for table in schema.TABLES:
            for rank, _, l, _ in schema.live_parts(self.path / table):
                if rank == self.rank:
                    last = max(last, l)
        return last + 1

    def _compact(self, table_dir: Path) -> None:
        """Merge the oldest 16 parts of one size tier into one part of the next tier."""
        while True:
            mine = [p for p in schema.live_parts(table_dir) if p[0] == self.rank]
            tiers: dict[int, list] = defaultdict(list)
            for part in mine:
                width = part[2] - part[1] + 1
                tiers[int(math.log(width, _TIER_FANOUT) + 1e-9)].append(part)
            groups = [sorted(parts, key=lambda p: p[1])[:_TIER_FANOUT] for _, parts in sorted(tiers.items())
                      if len(parts) >= _TIER_FANOUT]
            groups = [g for g in groups
                      if sum(pq.ParquetFile(p[3]).metadata.num_rows for p in g) <= _MAX_MERGED_ROWS]
            if not groups:
                return
            group = groups[0]
            merged = pa.concat_tables([pq.read_table(p[3]) for p in group], promote_options="permissive")
            merged = merged.sort_by([(k, "ascending") for k in schema.SORT_KEYS[table_dir.name]])
            first, last = group[0][1], max(p[2] for p in group)
            _atomic_write_table(table_dir / schema.part_name(self.rank, first, last), merged)
            for p in group:
                p[3].unlink(missing_ok=True)


def _build_table(table_name: str, items: list, rank: int) -> pa.Table:
    if table_name == "scalars":
        step, name, value, wall = zip(*items)
        return pa.table(
            {
                "step": pa.array(step, pa.int64()),
                "name": pa.array(name, pa.string()),
                "value": pa.array(value, pa.float64()),
                "rank": pa.array([rank] * len(step), pa.int32()),
                "wall_time_s": pa.array(wall, pa.float64()),
            },
            schema=schema.SCALARS_SCHEMA,
        )
    if table_name == "records":
        return pa.concat_tables([_records_table(*item, rank) for item in items])
    if table_name in _BUILT_TABLES:
        return pa.concat_tables(items, promote_options="permissive")
    return pa.concat_tables([_summary_table(*item, rank) for item in items])


def _previews_table(split: str, sample_ids: Sequence, kind: str, shape: Sequence, values: Any) -> pa.Table:
    n = len(sample_ids)
    if len(shape) and isinstance(shape[0], (list, tuple)):  # a shape per row (token lists of several lengths)
        shapes, rows = [list(s) for s in shape], [np.asarray(v, dtype=np.float32).reshape(-1) for v in values]
    else:
        shapes, rows = [list(shape)] * n, list(np.asarray(values, dtype=np.float32).reshape(n, -1))
    return pa.table({
        "split": pa.array([split] * n, pa.string()),
        "sample_id": pa.array([str(i) for i in sample_ids], pa.string()),
        "kind": pa.array([kind] * n, pa.string()),
        "shape": pa.array(shapes, pa.list_(pa.int32())),
        "values": pa.array(rows, pa.list_(pa.float32())),
    }, schema=schema.PREVIEWS_SCHEMA)


def _attributions_table(step: int, split: str, sample_ids: Sequence, targets: Sequence[int], method: str,
                        arr: np.ndarray) -> pa.Table:
    n = len(sample_ids)
    return pa.table({
        "step": pa.array([step] * n, pa.int64()),
        "split": pa.array([split] * n, pa.string()),
        "sample_id": pa.array([str(i) for i in sample_ids], pa.string()),
        "method": pa.array([method] * n, pa.string()),
        "target": pa.array(list(targets), pa.int64()),
        "shape": pa.array([list(arr.shape[1:])] * n, pa.list_(pa.int32())),
        "values": pa.array(list(arr.reshape(n, -1).astype(np.float32)), pa.list_(pa.float32())),
    }, schema=schema.ATTRIBUTIONS_SCHEMA)


def _keyed_table(table_schema: pa.Schema, split: str, step: int, **columns: Any) -> pa.Table:
    """A table of `table_schema` whose rows all have this split and step."""
    n = len(next(iter(columns.values())))
    return pa.table({"split": pa.array([split] * n, pa.string()), "step": pa.array(np.full(n, step, np.int64)),
                     **{k: pa.array(v, table_schema.field(k).type) for k, v in columns.items()}},
                    schema=table_schema)


def _records_table(step: int, split: str, sample_ids: Sequence, values: np.ndarray, rank: int) -> pa.Table:
    n = len(sample_ids)
    values = np.asarray(values, dtype=np.float64)
    ids = [str(i.item() if isinstance(i, np.generic) else i) for i in sample_ids]
    cols: dict[str, Any] = {
        "step": pa.array(np.full(n, step, np.int64)),
        "split": pa.array([split] * n, pa.string()),
        "sample_id": pa.array(ids, pa.string()),
        "rank": pa.array(np.full(n, rank, np.int32)),
    }
    for i, f in enumerate(schema.RECORD_FIELDS):
        cols[f] = pa.array(values[:, i], pa.float64())
    return pa.table(cols, schema=schema.RECORDS_SCHEMA)


def _summary_table(step: int, layers: list, kinds: list, matrix: np.ndarray, rank: int) -> pa.Table:
    n = len(layers)
    fields = schema.SUMMARY_FIELDS
    matrix = np.asarray(matrix, dtype=np.float64)
    cols: dict[str, Any] = {
        "step": pa.array(np.full(n, step, np.int64)),
        "layer": pa.array(layers, pa.string()),
        "kind": pa.array(kinds, pa.string()),
        "rank": pa.array(np.full(n, rank, np.int32)),
    }
    for i, f in enumerate(fields):
        typ = schema.DISTRIBUTIONS_SCHEMA.field(f).type
        col = matrix[:, i]
        cols[f] = pa.array(np.rint(col).astype(np.int64) if typ == pa.int64() else col, typ)
    hist = np.rint(matrix[:, len(fields):]).astype(np.int64)
    # A row's histogram may be shorter than the matrix (class histograms): trailing -1 pads.
    cols["hist_counts"] = pa.array([h[h >= 0] for h in hist], pa.list_(pa.int64()))
    return pa.table(cols, schema=schema.DISTRIBUTIONS_SCHEMA)


def _samples_table(step: int, split: str, rank: int, ids: Sequence, rows: np.ndarray, probs: Sequence,
                   embeddings: Sequence, extra_columns: dict[str, np.ndarray],
                   confidence: np.ndarray | None = None) -> pa.Table:
    n = len(ids)
    cols: dict[str, Any] = {
        "step": pa.array(np.full(n, step, np.int64)), "split": pa.array([split] * n, pa.string()),
        "sample_id": pa.array([str(i) for i in ids], pa.string()), "rank": pa.array(np.full(n, rank, np.int32)),
    }
    named = dict(zip(schema.RECORD_FIELDS, np.asarray(rows, dtype=np.float64).reshape(n, -1).T))
    cols["label"], cols["prediction"], cols["loss"] = named["label"], named["prediction"], named["loss"]
    # calibration is about the predicted class's probability; the label's is a record field
    cols["confidence"] = np.array([p.max() if p is not None and len(p) else np.nan for p in probs]) \
        if confidence is None else np.asarray(confidence, np.float64)
    cols["label_prob"], cols["margin"] = named["confidence"], named["margin"]
    cols["correct"], cols["residual"] = named["correct"], named["residual"]
    cols["probs"] = pa.array([None if p is None else p.astype(np.float32) for p in probs], pa.list_(pa.float32()))
    cols["embedding"] = pa.array([e.astype(np.float32) for e in embeddings], pa.list_(pa.float32()))
    table = pa.table({k: v if isinstance(v, pa.Array) else pa.array(v, schema.SAMPLES_SCHEMA.field(k).type)
                      for k, v in cols.items()}, schema=schema.SAMPLES_SCHEMA)
    for name, values in extra_columns.items():
        values = np.asarray(values)
        table = table.append_column(name, pa.array(values if values.dtype.kind in "UO" else values.astype(np.float64)))
    return table
