"""The run directory: an append-only, atomic writer and a DuckDB-backed reader.

The writer buffers rows in memory and a background thread flushes them every few
seconds as new Parquet parts (temporary name, then rename), so a training process
killed at any moment loses at most the rows since its last flush, and a reader
never sees a half-written file. Small parts are merged in tiers (16 parts of one
size make one part of the next), sorted by kind, layer and step so that DuckDB
reads only the row groups a query needs.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import socket
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from diagnostics import schema
from diagnostics.exceptions import RunFormatError, RunNotFoundError

_TIER_FANOUT = 16
# A merge happens in the training process: past this many rows it would cost seconds
# and gigabytes, while DuckDB reads a few hundred parts in a fraction of a second.
_MAX_MERGED_ROWS = 250_000
_ROW_GROUP_ROWS = 4096


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


def _live_parts(table_dir: Path) -> list[tuple[int, int, int, Path]]:
    """Parts of a table as (rank, first, last, path), minus those compacted into another."""
    parts = []
    for p in table_dir.glob("r*.parquet"):
        m = schema.PART_RE.match(p.name)
        if m:
            parts.append((int(m["rank"]), int(m["first"]), int(m["last"]), p))
    live = []
    for rank, first, last, path in parts:
        covered = any(
            r == rank and f <= first and last <= l and (f, l) != (first, last)
            for r, f, l, _ in parts
        )
        if not covered:
            live.append((rank, first, last, path))
    return sorted(live, key=lambda x: (x[0], x[1]))


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
        self._error: BaseException | None = None
        if rank == 0:
            _atomic_write_json(self.path / schema.MANIFEST_FILE, self._manifest)
        self._write_status("running")
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

    def add_table(self, table_name: str, table: pa.Table) -> None:
        """Rows already built as an Arrow table (evaluation results: not on the hot path)."""
        if table_name not in ("samples", "previews", "attributions"):
            raise ValueError(f"add_table: unknown table {table_name!r}")
        with self._lock:
            self._buffers[table_name].append(table)

    def update_manifest(self, **entries: Any) -> None:
        """Merge entries into run.json (rank 0 only; other ranks ignore it)."""
        if self.rank != 0:
            return
        with self._io_lock:
            self._manifest.update(entries)
            _atomic_write_json(self.path / schema.MANIFEST_FILE, self._manifest)

    # -- flushing -------------------------------------------------------------------
    def flush(self) -> None:
        """Write buffered rows as new parts now (also done every `flush_every_s`)."""
        with self._lock:
            buffers, self._buffers = self._buffers, defaultdict(list)
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
            self._write_status("running")

    def close(self, state: str = "finished") -> None:
        """Flush everything, stop the thread and mark this rank `finished` (or `failed`)."""
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        self._thread.join()
        self.flush()
        self._write_status(state)

    def _loop(self) -> None:
        while not self._closed:
            self._wake.wait(self.flush_every_s)
            if self._closed:
                return
            try:
                self.flush()
            except Exception as exc:  # keep training alive; report at close
                self._error = exc

    def _write_status(self, state: str) -> None:
        _atomic_write_json(
            self.path / schema.STATUS_DIR / f"rank{self.rank}.json",
            {"state": state, "heartbeat": time.time(), "last_step": self._last_step, "pid": os.getpid()},
        )

    def _next_seq(self) -> int:
        last = -1
        for table in schema.TABLES:
            for rank, _, l, _ in _live_parts(self.path / table):
                if rank == self.rank:
                    last = max(last, l)
        return last + 1

    def _compact(self, table_dir: Path) -> None:
        """Merge the oldest 16 parts of one size tier into one part of the next tier."""
        while True:
            mine = [p for p in _live_parts(table_dir) if p[0] == self.rank]
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
    if table_name in ("samples", "previews", "attributions"):
        return pa.concat_tables(items, promote_options="permissive")
    return pa.concat_tables([_summary_table(*item, rank) for item in items])


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


# ---------------------------------------------------------------------------------
# Reading


def _read_manifest(path: Path) -> dict:
    mf = path / schema.MANIFEST_FILE
    if not mf.is_file():
        raise RunNotFoundError(
            f"no {schema.MANIFEST_FILE} in {path} — is this a run directory? "
            f"(list runs with: diagnostics dashboard {path.parent})"
        )
    try:
        manifest = json.loads(mf.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunFormatError(f"{mf} is not valid JSON ({exc.msg if hasattr(exc, 'msg') else exc}) — the run's manifest is damaged") from None
    if not isinstance(manifest, dict) or any(k not in manifest for k in schema.MANIFEST_REQUIRED):
        raise RunFormatError(
            f"{mf} lacks {', '.join(schema.MANIFEST_REQUIRED)} — not a run written by this tool"
        )
    version = manifest["schema_version"]
    if not isinstance(version, int) or version > schema.SCHEMA_VERSION or version < 1:
        raise RunFormatError(
            f"{path} has run format version {version!r}; this reader knows 1..{schema.SCHEMA_VERSION} "
            "— upgrade hookscope (pip install -U hookscope)"
        )
    return manifest


class Run:
    """A run directory opened for reading. Queries go to DuckDB over the Parquet parts.

    Example::

        r = diagnostics.open_run("runs/exp1")
        r.scalars()                     # step, name, value, rank, wall_time_s
        r.distributions("gradient", layers=["conv1"])
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.manifest = _read_manifest(self.path)

    @property
    def name(self) -> str:
        return str(self.manifest.get("name", self.path.name))

    def data_version(self) -> str:
        """Changes whenever new data lands (a key for caches of a live run's frames)."""
        names = [p.name for t in schema.TABLES for p in (self.path / t).glob("r*.parquet")]
        return f"{len(names)}:{max(names, default='')}:{hash(tuple(sorted(names)))}"

    def status(self) -> dict:
        """`state` (running, finished, failed, or stopped: the writer died) and last step."""
        states, last_step, heartbeat = [], -1, 0.0
        now = time.time()
        for f in sorted((self.path / schema.STATUS_DIR).glob("rank*.json")):
            try:
                s = json.loads(f.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            state = s.get("state")
            beat = float(s.get("heartbeat", 0.0))
            if state == "running" and now - beat > schema.STALE_AFTER_S:
                state = "stopped"  # this rank's writer died without closing
            states.append(state)
            last_step = max(last_step, int(s.get("last_step", -1)))
            heartbeat = max(heartbeat, beat)
        # one failed or dead rank decides for the run; all must finish for it to be finished
        state = next((s for s in ("failed", "stopped", "running") if s in states),
                     "finished" if states else "stopped")
        return {"state": state, "last_step": last_step, "ranks": len(states), "heartbeat": heartbeat}

    # -- queries --------------------------------------------------------------------
    def _query(self, table: str, where: str = "", params: Sequence = (), columns: str = "*",
               order: str = "") -> pd.DataFrame:
        files = [str(p[3]) for p in _live_parts(self.path / table)]
        if not files:
            return pd.DataFrame({f.name: pd.Series(dtype=_pandas_dtype(f.type)) for f in schema.SCHEMAS[table]})
        sql = f"SELECT {columns} FROM read_parquet($files, union_by_name=true)"
        if where:
            sql += f" WHERE {where}"
        if order:
            sql += f" ORDER BY {order}"
        for attempt in range(3):  # a compaction may delete a listed part between list and read
            try:
                with duckdb.connect() as con:
                    return con.execute(sql, {"files": files, **dict(params)}).df()
            except duckdb.IOException:
                if attempt == 2:
                    raise
                files = [str(p[3]) for p in _live_parts(self.path / table)]
            except duckdb.Error as exc:
                raise RunFormatError(f"cannot read {table} of {self.path}: {str(exc).splitlines()[0]}") from None
        raise AssertionError("unreachable")

    def scalars(self, names: Iterable[str] | None = None, rank: int | None = None) -> pd.DataFrame:
        """Scalars (loss, learning rates, logged values) as step, name, value, rank, wall_time_s."""
        where, params = _filters(names=("name", names), rank=("rank", rank))
        return self._query("scalars", where, params, order="name, step, rank")

    def distributions(
        self,
        kind: str = "activation",
        layers: Iterable[str] | None = None,
        steps: Iterable[int] | None = None,
        rank: int | None = None,
    ) -> pd.DataFrame:
        """Summaries of one kind (see DESIGN.md), optionally for some layers, steps or a rank."""
        if kind not in schema.KINDS:
            raise ValueError(f"unknown kind {kind!r}; choose one of {', '.join(schema.KINDS)}")
        where, params = _filters(kind=("kind", [kind]), layer=("layer", layers), step=("step", steps), rank=("rank", rank))
        return self._query("distributions", where, params, order="layer, step, rank")

    def records(self, split: str | None = None, sample_ids: Iterable | None = None,
                rank: int | None = None) -> pd.DataFrame:
        """Per-sample training records (see `schema.RECORDS_SCHEMA`), one row per sample and step."""
        ids = None if sample_ids is None else [str(i) for i in sample_ids]
        where, params = _filters(split=("split", None if split is None else [split]), ids=("sample_id", ids),
                                 rank=("rank", rank))
        return self._query("records", where, params, order="split, sample_id, step, rank")

    def first_nonfinite(self) -> dict | None:
        """Where NaN or Inf first showed: the first step whose loss or gradient norm is not
        finite, and the first captured summary (step, kind, layer) holding NaN/Inf. None
        when everything recorded is finite."""
        rows = self._query("distributions", "nan_count > 0 OR inf_count > 0",
                           columns="step, kind, layer, nan_count, inf_count", order="step")
        scal = self._query("scalars", "name IN ('loss', 'grad_norm') AND NOT isfinite(value)",
                           columns="step, name", order="step")
        if rows.empty and scal.empty:
            return None
        found: dict = {}
        if not scal.empty:
            found.update(step=int(scal["step"].iloc[0]), scalar=str(scal["name"].iloc[0]))
        if not rows.empty:
            first = rows[rows["step"] == rows["step"].min()]
            # earliest in forward order: the model's modules, then parameters
            order = {n: i for i, n in enumerate(self.layers("activation") + self.layers("weight"))}
            kind_order = {k: i for i, k in enumerate(schema.KINDS)}
            first = first.assign(o=first["layer"].map(order).fillna(1e9), k=first["kind"].map(kind_order))
            row = first.sort_values(["k", "o"]).iloc[0]
            found.update(capture_step=int(row["step"]), kind=str(row["kind"]), layer=str(row["layer"]),
                         nan_count=int(row["nan_count"]), inf_count=int(row["inf_count"]))
            found.setdefault("step", int(row["step"]))
        return found

    def evaluations(self) -> pd.DataFrame:
        """One row per evaluation pass: split, step, n, loss, accuracy or mae, dataset key."""
        return pd.DataFrame(self.manifest.get("evaluations", []))

    def samples(self, split: str = "val", step: int | str | None = None, sample_ids: Iterable | None = None,
                columns: Sequence[str] | None = None) -> pd.DataFrame:
        """One row per evaluated sample of `split`, from the latest evaluation (or `step`;
        `step="all"`: every evaluation): label, prediction, loss, confidence, margin or
        residual, probs, embedding, input_*."""
        if step == "all":
            step = None
        elif step is None:
            steps = self._query("samples", "split = $split", [("split", split)], columns="max(step) AS step")
            if steps.empty or pd.isna(steps["step"].iloc[0]):
                return self._query("samples", "false")
            step = int(steps["step"].iloc[0])
        ids = None if sample_ids is None else [str(i) for i in sample_ids]
        where, params = _filters(split=("split", [split]), step=("step", None if step is None else int(step)),
                                 ids=("sample_id", ids))
        cols = "*" if columns is None else ", ".join(f'"{c}"' for c in dict.fromkeys(["sample_id", *columns]))
        return self._query("samples", where, params, columns=cols, order="sample_id, step")

    def previews(self, split: str, sample_ids: Iterable) -> pd.DataFrame:
        """Input previews (kind, shape, values) of some samples of `split`."""
        where, params = _filters(split=("split", [split]), ids=("sample_id", [str(i) for i in sample_ids]))
        return self._query("previews", where, params)

    def attributions(self, split: str, sample_ids: Iterable | None = None) -> pd.DataFrame:
        """Attributions (method, target, shape, values) of the worst samples, latest first."""
        ids = None if sample_ids is None else [str(i) for i in sample_ids]
        where, params = _filters(split=("split", [split]), ids=("sample_id", ids))
        return self._query("attributions", where, params, order="step DESC, sample_id, method")

    def health(self) -> list:
        """The problems the run shows (dead units, vanishing gradients, NaN, ...): a list of
        `diagnostics.health.Finding` (rule, severity, layer, step_start, step_end, message,
        advice), errors first."""
        from diagnostics.health import check

        return check(self)

    def sample_dynamics(self, split: str = "train") -> pd.DataFrame:
        """Training dynamics per sample from the per-step records (`log_batch(..., ids=)`):
        confidence, variability, correct_frac, aum and label_error_score."""
        from diagnostics.dynamics import sample_dynamics

        return sample_dynamics(self.records(split=split))

    def update_ratios(self, layers: Iterable[str] | None = None) -> pd.DataFrame:
        """Per parameter and capture step: norm of the optimizer's update over the norm of
        the weight before it (`ratio`; around 1e-3 is the usual healthy range), and whether
        the update was measured on a sample of the weight's positions (`sampled`).

        Norms come from the summaries: ||x|| = sqrt(count * (std² + mean²)).
        """
        upd = self.distributions("update", layers=layers)
        wgt = self.distributions("weight", layers=layers)
        cols = ["step", "layer", "rank", "update_norm", "weight_norm", "ratio", "sampled"]
        if upd.empty or wgt.empty:
            return pd.DataFrame({c: pd.Series(dtype="str" if c == "layer" else "bool" if c == "sampled" else "float64")
                                 for c in cols})
        for d in (upd, wgt):
            d["norm"] = np.sqrt(d["count"] * (d["std"] ** 2 + d["mean"] ** 2))
        # sampled: the update was measured on fewer positions than the tensor has (the
        # capture side samples large weights), so its norm is an estimate; an update
        # touching few positions (embedding rows) can miss the sample entirely
        upd["sampled"] = upd["hist_counts"].map(lambda h: float(np.sum(h)) if h is not None else np.nan) < upd["count"]
        merged = upd[["step", "layer", "rank", "norm", "sampled"]].merge(
            wgt[["step", "layer", "rank", "norm"]], on=["step", "layer", "rank"], suffixes=("_u", "_w"))
        merged = merged.rename(columns={"norm_u": "update_norm", "norm_w": "weight_norm"})
        with np.errstate(divide="ignore", invalid="ignore"):
            merged["ratio"] = merged["update_norm"] / merged["weight_norm"]
        return merged[cols]

    def layers(self, kind: str = "activation") -> list[str]:
        """Layers that have summaries of `kind`, in the model's order where known."""
        df = self._query("distributions", "kind = $kind", {"kind": kind}.items(), columns="DISTINCT layer")
        found = set(df["layer"])
        order = [m["name"] for m in self.manifest.get("modules", [])] + [
            p["name"] for p in self.manifest.get("parameters", [])
        ]
        ordered = [n for n in dict.fromkeys(order) if n in found]
        return ordered + sorted(found - set(ordered))

    def kinds(self) -> list[str]:
        df = self._query("distributions", columns="DISTINCT kind")
        return [k for k in schema.KINDS if k in set(df["kind"])]

    def steps(self, kind: str = "activation") -> list[int]:
        df = self._query("distributions", "kind = $kind", {"kind": kind}.items(), columns="DISTINCT step")
        return sorted(int(s) for s in df["step"])


def _filters(**specs: tuple[str, Any]) -> tuple[str, list]:
    clauses, params = [], []
    for key, (column, value) in specs.items():
        if value is None:
            continue
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            clauses.append(f"{column} = ${key}")
            params.append((key, int(value)))
        else:
            values = [v.item() if isinstance(v, np.generic) else v for v in value]
            clauses.append(f"list_contains(${key}, {column})")
            params.append((key, values))
    return " AND ".join(clauses), params


def _pandas_dtype(typ: pa.DataType) -> str:
    if pa.types.is_integer(typ):
        return "int64"
    if pa.types.is_floating(typ):
        return "float64"
    if pa.types.is_string(typ):
        return "str"
    return "object"


def open_run(path: str | os.PathLike) -> Run:
    """Open a run directory for reading; raises RunNotFoundError or RunFormatError with advice."""
    return Run(path)


def run_version(path: str | os.PathLike) -> str:
    """A key for on-disk caches of what a run holds (its health badge): the same in every
    process, unlike `Run.data_version` (an in-memory cache key); changes when a part lands,
    is compacted or the manifest is rewritten (an evaluation adds to it)."""
    path = Path(path)
    digest = hashlib.sha1()
    for table in schema.TABLES:
        for part in sorted((path / table).glob("r*.parquet")):
            try:
                digest.update(f"{table}/{part.name}:{part.stat().st_size}\n".encode())
            except OSError:  # compacted away between listing and stat
                continue
    try:
        digest.update((path / schema.MANIFEST_FILE).read_bytes())
    except OSError:
        pass
    return digest.hexdigest()[:20]


def list_runs(folder: str | os.PathLike = "runs") -> pd.DataFrame:
    """One row per run directory in `folder` (broken runs included, with their error)."""
    folder = Path(folder)
    rows = []
    if folder.is_dir():
        for d in sorted(p for p in folder.iterdir() if p.is_dir() and (p / schema.MANIFEST_FILE).exists()):
            try:
                run = Run(d)
                status = run.status()
                m = run.manifest
                rows.append({
                    "name": run.name, "path": str(d), "state": status["state"],
                    "last_step": status["last_step"], "created_at": pd.to_datetime(m["created_at"], unit="s"),
                    "task": m.get("task"), "model": m.get("model_class"), "error": None,
                })
            except (RunNotFoundError, RunFormatError, OSError) as exc:
                error = str(exc) if not isinstance(exc, OSError) else (
                    f"cannot read {d / schema.MANIFEST_FILE}: {exc.strerror or exc} — check the folder's permissions")
                rows.append({"name": d.name, "path": str(d), "state": "broken", "last_step": -1,
                             "created_at": pd.NaT, "task": None, "model": None, "error": error})
    columns = ["name", "path", "state", "last_step", "created_at", "task", "model", "error"]
    return pd.DataFrame(rows, columns=columns)
