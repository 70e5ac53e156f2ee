"""The run directory: a DuckDB-backed reader, and the writer's public name.

The writer (`RunWriter`, in `diagnostics.writer`, importable from here as before)
appends atomic Parquet parts; the reader queries the live parts (`schema.live_parts`)
with DuckDB, so a page reads only the row groups it asks for.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
import warnings
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
from diagnostics.merge import merge_shard_norms, merge_shards
from diagnostics.writer import RunWriter

__all__ = ["Run", "RunWriter", "list_runs", "open_run", "run_version"]


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
        detail = exc.msg if hasattr(exc, "msg") else exc
        raise RunFormatError(f"{mf} is not valid JSON ({detail}) — the run's manifest is damaged") from None
    except RecursionError:  # JSON nested deeper than Python's parser goes: no manifest is
        raise RunFormatError(f"{mf} is nested too deeply to be a run's manifest — the file is damaged") from None
    except PermissionError:
        raise RunFormatError(f"{mf} cannot be read (Permission denied) — check the file's owner and mode "
                             f"(chmod a+r {mf})") from None
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


# Whether a part's Parquet footer reads, by (path, size, mtime): parts never change once
# written, so each is checked once per process.
_PART_OK: dict[tuple[str, int, int], bool] = {}
_WARNED: set[str] = set()


def _part_ok(path: Path) -> bool:
    """Whether the part at `path` is a readable Parquet file (FileNotFoundError: compacted away)."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _PART_OK:
        try:
            pq.read_metadata(path)
            _PART_OK[key] = True
        except (OSError, pa.ArrowException):
            _PART_OK[key] = False
    return _PART_OK[key]


def _writer_gone(status: dict) -> bool:
    """Whether a status file's writer process is known to be dead: it ran on this host and its
    PID is gone (a writer on another host is judged by its heartbeat alone)."""
    pid = status.get("pid")
    if status.get("host") != socket.gethostname() or not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, not ours to signal
        return False
    return False


class EvaluationTables:
    """The reads of the evaluation passes' tables (samples, previews, attributions, positions,
    vocabulary), a part of `Run` (which holds `manifest` and `_query`)."""

    manifest: dict

    def _query(self, table: str, where: str = "", params: Sequence = (), columns: str = "*",
               order: str = "") -> pd.DataFrame:
        raise NotImplementedError

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

    def _latest_step(self, split: str) -> int | None:
        """The step of the latest evaluation of `split` (None: none)."""
        steps = self._query("samples", "split = $split", [("split", split)], columns="max(step) AS step")
        if steps.empty or pd.isna(steps["step"].iloc[0]):
            return None
        return int(steps["step"].iloc[0])

    def positions(self, split: str = "val", ids: Iterable | None = None, step: int | None = None) -> pd.DataFrame:
        """One row per counted position of an evaluation of outputs with a position axis
        (tokens, pixels) or several labels per sample: split, step, sample_id, position (the
        flat row-major index into `position_info(split)["shape"]`; several labels: the label's
        index), label, prediction, loss, confidence (the prediction's probability). The
        latest evaluation of `split` by default (empty when it stored none), or `step`'s;
        `ids`: only these samples. Only the first `stored_samples` samples of an evaluation
        are stored (the cap, `evaluate(max_positions=...)`)."""
        if step is None:
            step = self._latest_step(split)
            if step is None:
                return self._query("positions", "false")
        where, params = _filters(split=("split", [split]), step=("step", int(step)),
                                 ids=("sample_id", None if ids is None else [str(i) for i in ids]))
        return self._query("positions", where, params, order="sample_id, position")

    def position_info(self, split: str = "val") -> dict | None:
        """How the latest evaluation of `split` stored its positions (`schema.EVAL_POSITIONS`):
        shape, layout (tokens, pixels or labels), ignore_index, stored_samples, total_samples,
        cap, shift_labels. None when its outputs had one label per sample (or no evaluation)."""
        entries = [e for e in self.manifest.get("evaluations", []) if isinstance(e, dict) and e.get("split") == split]
        info = entries[-1].get(schema.EVAL_POSITIONS) if entries else None
        return dict(info) if isinstance(info, dict) else None

    def vocabulary(self, split: str = "val") -> dict[int, str] | None:
        """The strings of the token ids `split`'s evaluations stored, when `evaluate` was given
        a tokenizer (None otherwise: pages show the ids)."""
        found = self._query("vocabulary", "split = $split", [("split", split)], columns="token_id, text",
                            order="step")
        if found.empty:
            return None
        return {int(i): str(t) for i, t in zip(found["token_id"], found["text"])}

    def previews(self, split: str, sample_ids: Iterable) -> pd.DataFrame:
        """Input previews (kind, shape, values) of some samples of `split`."""
        where, params = _filters(split=("split", [split]), ids=("sample_id", [str(i) for i in sample_ids]))
        return self._query("previews", where, params)

    def attributions(self, split: str, sample_ids: Iterable | None = None) -> pd.DataFrame:
        """Attributions (method, target, shape, values) of the worst samples, latest first."""
        ids = None if sample_ids is None else [str(i) for i in sample_ids]
        where, params = _filters(split=("split", [split]), ids=("sample_id", ids))
        return self._query("attributions", where, params, order="step DESC, sample_id, method")


class Run(EvaluationTables):
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
        """`state` (running, finished, failed, or stopped: the writer died), last step, and the
        `faults` of the recording (parts of it the training process switched off, and write
        faults: what this run lacks), one dict per fault with `part`, `error`, `rank`."""
        states, last_step, heartbeat, faults = [], -1, 0.0, []
        now = time.time()
        for f in sorted((self.path / schema.STATUS_DIR).glob("rank*.json")):
            try:
                s = json.loads(f.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            rank = f.stem.removeprefix("rank")
            faults += [{**x, "rank": rank} for x in s.get("faults", ()) if isinstance(x, dict)]
            if s.get("writer_error"):
                faults.append({"part": "writer", "error": str(s["writer_error"]), "rank": rank, "switched_off": False})
            state = s.get("state")
            beat = float(s.get("heartbeat", 0.0))
            if state == "running" and (now - beat > schema.STALE_AFTER_S or _writer_gone(s)):
                state = "stopped"  # this rank's writer died without closing
            states.append(state)
            last_step = max(last_step, int(s.get("last_step", -1)))
            heartbeat = max(heartbeat, beat)
        # one failed or dead rank decides for the run; all must finish for it to be finished
        state = next((s for s in ("failed", "stopped", "running") if s in states),
                     "finished" if states else "stopped")
        return {"state": state, "last_step": last_step, "ranks": len(states), "heartbeat": heartbeat,
                "faults": faults}

    # -- queries --------------------------------------------------------------------
    def _parts(self, table: str) -> tuple[list[str], list[Path]]:
        """The table's live parts that read, and those that do not (truncated, garbage)."""
        for _ in range(3):  # a compaction may delete a listed part while it is checked
            good, bad = [], []
            try:
                for *_, path in schema.live_parts(self.path / table):
                    (good if _part_ok(path) else bad).append(path)
                return [str(p) for p in good], bad
            except FileNotFoundError:
                continue
        return [str(p) for p in good], bad

    def damaged_parts(self) -> list[Path]:
        """Parts of this run that cannot be read (a truncated copy, a disk error): skipped by
        every query, with a warning; never deleted."""
        return sorted(p for table in schema.TABLES for p in self._parts(table)[1])

    def _query(self, table: str, where: str = "", params: Sequence = (), columns: str = "*",
               order: str = "") -> pd.DataFrame:
        files, damaged = self._parts(table)
        for path in damaged:
            if str(path) not in _WARNED:
                _WARNED.add(str(path))
                warnings.warn(f"{path.name} of run {self.path.name} is damaged and skipped (not a readable "
                              f"Parquet file) — the rest of {table} reads as usual; move the file out of "
                              f"{path.parent} to silence this", UserWarning, stacklevel=3)
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
                files = self._parts(table)[0]
            except duckdb.Error as exc:
                raise RunFormatError(f"cannot read {table} of {self.path}: {str(exc).splitlines()[0]}") from None
        raise AssertionError("unreachable")

    def scalars(self, names: Iterable[str] | None = None, rank: int | None = None) -> pd.DataFrame:
        """Scalars (loss, learning rates, logged values) as step, name, value, rank, wall_time_s.

        Sharded training (FSDP): `grad_norm` is the whole model's, made from the ranks'
        shard norms (`diagnostics.merge.merge_shard_norms`), on every rank's row."""
        names = None if names is None else list(names)
        where, params = _filters(names=("name", names), rank=("rank", rank))
        found = self._query("scalars", where, params, order="name, step, rank")
        if not self._sharded() or (names is not None and "grad_norm" not in names):
            return found
        where, params = _filters(names=("name", [schema.GRAD_NORM_SHARD]))
        norms = merge_shard_norms(self._query("scalars", where, params), self._world_size())
        if rank is not None:
            norms = norms[norms["rank"] == rank]
        if norms.empty:
            return found
        both = pd.concat([found, norms], ignore_index=True) if not found.empty else norms
        return both.sort_values(["name", "step", "rank"], ignore_index=True)

    def _sharded(self) -> bool:
        """Whether parameters were sharded across ranks (FSDP): the manifest's `sharding`."""
        return bool(self.manifest.get("sharding")) and self._world_size() > 1

    def _world_size(self) -> int:
        size = self.manifest.get("world_size", 1)
        return size if isinstance(size, int) and size > 0 else 1

    def distributions(
        self,
        kind: str = "activation",
        layers: Iterable[str] | None = None,
        steps: Iterable[int] | None = None,
        rank: int | None = None,
        shards: bool = False,
    ) -> pd.DataFrame:
        """Summaries of one kind (see DESIGN.md), optionally for some layers, steps or a rank.

        Sharded training (FSDP): weights, parameter gradients and updates are the whole
        parameter's, merged from the ranks' shards (`diagnostics.merge.merge_shards`: exact
        count, mean, std, min, max; histograms re-binned and summed, quantiles approximate
        from the merged histogram), on every rank's row; `shards=True` gives each rank's
        own shard's rows instead."""
        if kind not in schema.KINDS:
            raise ValueError(f"unknown kind {kind!r}; choose one of {', '.join(schema.KINDS)}")
        merge = not shards and kind in schema.SHARDED_KINDS and self._sharded()
        where, params = _filters(kind=("kind", [kind]), layer=("layer", layers), step=("step", steps),
                                 rank=("rank", None if merge else rank))
        found = self._query("distributions", where, params, order="layer, step, rank")
        if not merge:
            return found
        merged = merge_shards(found, self._world_size())
        return merged if rank is None else merged[merged["rank"] == rank].reset_index(drop=True)

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
