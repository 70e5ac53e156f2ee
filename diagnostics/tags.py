"""Review tags and notes: a small SQLite store inside each run directory.

Tags and notes belong to a sample of a dataset (`dataset` is a key the caller picks,
such as "digits/val"; `sample_id` is the id the run records), so a later run on the
same data shows them: `folder_tags` unions the stores of every run in a folder.

SQLite in WAL mode with a busy timeout makes the store safe for several browser tabs
(threads) and several server processes at once: every write is one transaction on a
connection of the writing thread's own, reads open a read-only connection per call, and
no sqlite3 object crosses a thread. Reading a run that has no `review.sqlite` creates
nothing (a run directory may be read-only).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
import uuid
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from diagnostics import schema
from diagnostics.exceptions import DiagnosticsError, RunFormatError, RunNotFoundError

SUGGESTED_TAGS = (
    "label noise",
    "too dark",
    "too bright",
    "occluded",
    "blurry",
    "out of distribution",
    "ambiguous",
    "artifact",
    "duplicate",
    "cropped",
    "wrong class list",
)

TAGS_FILE = "review.sqlite"
TAGS_SCHEMA_VERSION = 1
MAX_TAG_LENGTH = 64
_BUSY_TIMEOUT_S = 5.0

_SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS tags (
    dataset TEXT NOT NULL,
    sample_id TEXT NOT NULL,
    tag TEXT NOT NULL,
    created_at REAL NOT NULL,
    UNIQUE (dataset, sample_id, tag)
);
CREATE TABLE IF NOT EXISTS notes (
    dataset TEXT NOT NULL,
    sample_id TEXT NOT NULL,
    note TEXT NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (dataset, sample_id)
);
CREATE INDEX IF NOT EXISTS tags_by_tag ON tags (dataset, tag);
"""

_TAG_COLUMNS = ["sample_id", "tag", "created_at"]
_NOTE_COLUMNS = ["sample_id", "note", "updated_at"]


class TagError(DiagnosticsError, ValueError):
    """A tag, note, dataset key or sample id that cannot be stored."""


class NoteConflictError(TagError):
    """A note was not saved: the sample's note changed since the writer read it (another tab
    saved one meanwhile). `current` is what it reads now, `note` the one not saved."""

    def __init__(self, dataset: str, sample_id: str, current: str | None, note: str) -> None:
        self.dataset, self.sample_id, self.current, self.note = dataset, sample_id, current, note
        now = f"it now reads {current!r}" if current is not None else "it was deleted"
        super().__init__(f"Note of sample {sample_id} not saved: it changed in another session meanwhile ({now}); "
                         f"yours was {note!r} — save it again to replace it")


_UNCHECKED = object()  # set_note without `expected`: replace whatever is there


def _clean_tag(tag: str) -> str:
    if not isinstance(tag, str):
        raise TagError(f"a tag must be text, got {type(tag).__name__} {tag!r}")
    text = " ".join(tag.split())  # one line, single spaces: "too  dark\n" == "too dark"
    if not text:
        raise TagError("empty tag — type a word or pick one of the suggested tags")
    if len(text) > MAX_TAG_LENGTH:
        raise TagError(f"tag is {len(text)} characters long; the limit is {MAX_TAG_LENGTH} "
                       "(write longer text as a note)")
    if ";" in text:
        raise TagError(f"tag {text!r} contains ';', which separates tags in the CSV export")
    return text


def _clean_dataset(dataset: str) -> str:
    if not isinstance(dataset, str) or not dataset.strip():
        raise TagError(f"dataset must be a non-empty key such as 'digits/val', got {dataset!r}")
    return dataset.strip()


def _as_ids(sample_ids: str | int | Iterable[str | int]) -> list[str]:
    if isinstance(sample_ids, (str, int)) or not isinstance(sample_ids, Iterable):
        sample_ids = [sample_ids]
    ids = [str(s) for s in sample_ids]
    if any(not s for s in ids):
        raise TagError("empty sample id — every tagged sample needs the id the run recorded")
    return list(dict.fromkeys(ids))


def _as_tags(tags: str | Iterable[str]) -> list[str]:
    if isinstance(tags, str) or not isinstance(tags, Iterable):
        tags = [tags]
    return list(dict.fromkeys(_clean_tag(t) for t in tags))


def _times(seconds: pd.Series) -> pd.Series:
    return pd.to_datetime(seconds.astype("float64"), unit="s")


def _empty(columns: list[str]) -> pd.DataFrame:
    frame = pd.DataFrame({c: pd.Series(dtype=str) for c in columns})
    frame[columns[-1]] = pd.Series(dtype="datetime64[ns]")
    return frame


@contextlib.contextmanager
def _read_connection(db: Path) -> Iterator[sqlite3.Connection | None]:
    """A read-only connection, or None when the store does not exist or holds no schema."""
    if not db.is_file():
        yield None
        return
    uri = db.resolve().as_uri()
    con = None
    try:
        try:
            con = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=_BUSY_TIMEOUT_S)
            version = con.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.OperationalError:
            # A WAL database in a read-only directory cannot create its -shm file; nobody
            # can be writing there, so read the file as immutable.
            if con is not None:
                con.close()
            con = sqlite3.connect(f"{uri}?immutable=1", uri=True)
            version = con.execute("PRAGMA user_version").fetchone()[0]
        if version > TAGS_SCHEMA_VERSION:
            raise RunFormatError(
                f"{db} has review-store version {version}; this reader knows 1..{TAGS_SCHEMA_VERSION} "
                "— upgrade hookscope (pip install -U hookscope)"
            )
        yield con if version >= 1 else None
    except sqlite3.DatabaseError as exc:
        raise RunFormatError(f"{db} cannot be read as a review store ({exc}) — is the file damaged?") from None
    finally:
        if con is not None:
            con.close()


def _read_frame(db: Path, sql: str, params: tuple, columns: list[str]) -> pd.DataFrame:
    with _read_connection(db) as con:
        if con is None:
            return _empty(columns)
        frame = pd.DataFrame(con.execute(sql, params).fetchall(), columns=columns)
    if frame.empty:
        return _empty(columns)
    frame[columns[-1]] = _times(frame[columns[-1]])
    return frame


class TagStore:
    """Review tags and notes of one run, kept in `RUN_DIR/review.sqlite`.

    Safe to share between threads and processes; the file appears on the first write.

    Example::

        store = TagStore("runs/exp1")
        store.add_tags("digits/val", ["17", "42"], ["label noise", "ambiguous"])
        store.set_note("digits/val", "17", "a 7 written like a 1")
        store.tags("digits/val")            # sample_id, tag, created_at
        store.known_tags("digits/val")      # used tags by frequency, then SUGGESTED_TAGS
    """

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir)
        if not (self.run_dir / schema.MANIFEST_FILE).is_file():
            what = "does not exist" if not self.run_dir.exists() else f"has no {schema.MANIFEST_FILE}"
            raise RunNotFoundError(
                f"run directory {self.run_dir} {what} — review tags live inside a run "
                f"(list runs with: diagnostics dashboard {self.run_dir.parent})"
            )
        self.path = self.run_dir / TAGS_FILE
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"TagStore({str(self.run_dir)!r})"

    def _connection(self) -> sqlite3.Connection:
        """This thread's write connection, opened on first use (closing one costs a WAL
        checkpoint, so a thread keeps its own; sqlite3 objects never cross threads)."""
        cached = getattr(self._local, "writer", None)
        if cached is not None:
            pid, inode, con = cached
            # A forked child must not reuse its parent's handle, nor a writer a deleted file's.
            if pid == os.getpid() and self.path.is_file() and self.path.stat().st_ino == inode:
                return con
            self._local.writer = None
        try:
            con = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_S, isolation_level=None,
                                  check_same_thread=False)  # used by one thread; closed by whichever ends it
        except sqlite3.Error as exc:
            raise self._write_error(exc) from None
        try:
            if con.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                self._enable_wal(con)
            # In WAL mode NORMAL survives a killed process; only a power cut may lose the
            # last commits (never corrupting the file), and it spares an fsync per click.
            con.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.Error as exc:
            con.close()
            raise self._write_error(exc) from None
        self._local.writer = (os.getpid(), self.path.stat().st_ino, con)
        return con

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction: the write lock is taken up front, so concurrent
        writers queue on the busy timeout instead of failing to upgrade a read lock."""
        con = self._connection()
        try:
            con.execute("BEGIN IMMEDIATE")
            try:
                version = con.execute("PRAGMA user_version").fetchone()[0]
                if version > TAGS_SCHEMA_VERSION:
                    raise RunFormatError(
                        f"{self.path} has review-store version {version}; this writer knows "
                        f"1..{TAGS_SCHEMA_VERSION} — upgrade hookscope (pip install -U hookscope)"
                    )
                if version < TAGS_SCHEMA_VERSION:
                    for statement in _SCHEMA_SQL.split(";"):
                        if statement.strip():
                            con.execute(statement)
                    con.execute(f"PRAGMA user_version = {TAGS_SCHEMA_VERSION}")
                yield con
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            self._local.writer = None
            con.close()
            raise self._write_error(exc) from None

    def _write_error(self, exc: Exception) -> DiagnosticsError:
        hint = "" if os.access(self.run_dir, os.W_OK) else " — the run directory is read-only"
        return DiagnosticsError(f"cannot write review tags to {self.path}: {exc}{hint}")

    def close(self) -> None:
        """Close this thread's write connection (others close when their threads end)."""
        cached = getattr(self._local, "writer", None)
        self._local.writer = None
        if cached is not None and cached[0] == os.getpid():
            cached[2].close()

    @staticmethod
    def _enable_wal(con: sqlite3.Connection) -> None:
        # Switching to WAL needs a moment alone with the file; the busy handler does not
        # always cover it, so two processes creating the store at once retry here.
        deadline = time.monotonic() + _BUSY_TIMEOUT_S
        while True:
            try:
                con.execute("PRAGMA journal_mode=WAL").fetchall()
                return
            except sqlite3.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def add_tags(self, dataset: str, sample_ids: str | int | Iterable[str | int], tags: str | Iterable[str]) -> int:
        """Tag every sample with every tag (idempotent); returns how many pairs were new."""
        dataset, ids, tags = _clean_dataset(dataset), _as_ids(sample_ids), _as_tags(tags)
        if not ids or not tags:
            return 0
        now = time.time()
        with self._write() as con:
            before = con.total_changes
            con.executemany(
                "INSERT OR IGNORE INTO tags (dataset, sample_id, tag, created_at) VALUES (?, ?, ?, ?)",
                [(dataset, s, t, now) for s in ids for t in tags],
            )
            return con.total_changes - before

    def remove_tag(self, dataset: str, sample_ids: str | int | Iterable[str | int], tag: str) -> int:
        """Remove `tag` from the samples; returns how many tags were removed."""
        dataset, ids, tag = _clean_dataset(dataset), _as_ids(sample_ids), _clean_tag(tag)
        if not self.path.is_file():
            return 0
        with self._write() as con:
            before = con.total_changes
            con.executemany("DELETE FROM tags WHERE dataset = ? AND sample_id = ? AND tag = ?",
                            [(dataset, s, tag) for s in ids])
            return con.total_changes - before

    def set_note(self, dataset: str, sample_id: str | int, note: str, expected: str | None | object = _UNCHECKED,
                 ) -> None:
        """Replace the sample's note; an empty (or blank) note deletes it.

        With `expected`, the note the caller last read (None: none), the note is replaced
        only while it still reads so (or already reads `note`): a note another session saved
        meanwhile is never replaced unseen; `NoteConflictError` says what it reads now.
        """
        dataset, (sample_id,) = _clean_dataset(dataset), _as_ids([sample_id])
        note = (note or "").strip()
        if not note and not self.path.is_file():
            return
        with self._write() as con:
            if expected is not _UNCHECKED:
                row = con.execute("SELECT note FROM notes WHERE dataset = ? AND sample_id = ?",
                                  (dataset, sample_id)).fetchone()
                current = row[0] if row else None
                if current not in (expected, note or None):
                    raise NoteConflictError(dataset, sample_id, current, note)
            if note:
                con.execute(
                    "INSERT INTO notes (dataset, sample_id, note, updated_at) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (dataset, sample_id) DO UPDATE SET note = excluded.note, "
                    "updated_at = excluded.updated_at",
                    (dataset, sample_id, note, time.time()),
                )
            else:
                con.execute("DELETE FROM notes WHERE dataset = ? AND sample_id = ?", (dataset, sample_id))

    def tags(self, dataset: str, sample_ids: Iterable[str | int] | None = None) -> pd.DataFrame:
        """The dataset's tags in this run: sample_id, tag, created_at (oldest first)."""
        frame = _read_frame(self.path, "SELECT sample_id, tag, created_at FROM tags WHERE dataset = ? "
                            "ORDER BY created_at, sample_id, tag", (_clean_dataset(dataset),), _TAG_COLUMNS)
        return _only(frame, sample_ids)

    def notes(self, dataset: str, sample_ids: Iterable[str | int] | None = None) -> pd.DataFrame:
        """The dataset's notes in this run: sample_id, note, updated_at."""
        frame = _read_frame(self.path, "SELECT sample_id, note, updated_at FROM notes WHERE dataset = ? "
                            "ORDER BY sample_id", (_clean_dataset(dataset),), _NOTE_COLUMNS)
        return _only(frame, sample_ids)

    def known_tags(self, dataset: str | None = None) -> list[str]:
        """Tags for a picker: those used here (most used first), then SUGGESTED_TAGS."""
        where, params = ("WHERE dataset = ?", (_clean_dataset(dataset),)) if dataset is not None else ("", ())
        with _read_connection(self.path) as con:
            used = [] if con is None else [row[0] for row in con.execute(
                f"SELECT tag FROM tags {where} GROUP BY tag ORDER BY COUNT(*) DESC, tag", params)]
        return list(dict.fromkeys([*used, *SUGGESTED_TAGS]))


def _only(frame: pd.DataFrame, sample_ids: Iterable[str | int] | None) -> pd.DataFrame:
    if sample_ids is None:
        return frame
    return frame[frame["sample_id"].isin(_as_ids(sample_ids))].reset_index(drop=True)


def _folder_frames(runs_folder: str | os.PathLike, dataset: str, sql: str, columns: list[str]) -> pd.DataFrame:
    dataset = _clean_dataset(dataset)
    frames = []
    for db in sorted(Path(runs_folder).glob(f"*/{TAGS_FILE}")):
        try:
            frame = _read_frame(db, sql, (dataset,), columns)
        except RunFormatError as exc:
            warnings.warn(f"skipping review tags of {db.parent.name}: {exc}", stacklevel=3)
            continue
        if not frame.empty:
            frames.append(frame.assign(run=db.parent.name))
    if not frames:
        return _empty(columns).assign(run=pd.Series(dtype=str))
    return pd.concat(frames, ignore_index=True)


def folder_tags(runs_folder: str | os.PathLike, dataset: str) -> pd.DataFrame:
    """Tags of `dataset` from every run in the folder: sample_id, tag, run, created_at.

    A pair tagged in two runs appears once per run; `.drop_duplicates(["sample_id", "tag"])`
    gives the set of tags a sample carries.
    """
    frame = _folder_frames(runs_folder, dataset, "SELECT sample_id, tag, created_at FROM tags "
                           "WHERE dataset = ? ORDER BY created_at, sample_id, tag", _TAG_COLUMNS)
    return frame[["sample_id", "tag", "run", "created_at"]]


def folder_notes(runs_folder: str | os.PathLike, dataset: str) -> pd.DataFrame:
    """Notes on `dataset` from every run in the folder: sample_id, note, run, updated_at
    (oldest first, so the last row of a sample holds its newest note)."""
    frame = _folder_frames(runs_folder, dataset, "SELECT sample_id, note, updated_at FROM notes "
                           "WHERE dataset = ? ORDER BY sample_id", _NOTE_COLUMNS)
    frame = frame.sort_values(["sample_id", "updated_at"], kind="stable").reset_index(drop=True)
    return frame[["sample_id", "note", "run", "updated_at"]]


def with_tag_lists(samples: pd.DataFrame, tags: pd.DataFrame) -> pd.DataFrame:
    """`samples` with a `tags` column: the sorted tags of each sample (from `folder_tags`),
    an empty list for an untagged one.

        with_tag_lists(run.samples("val"), folder_tags("runs", dataset))["tags"]
    """
    lists = tags.groupby("sample_id")["tag"].apply(lambda t: sorted(set(t))) if not tags.empty else None
    out = samples.assign(tags=samples["sample_id"].map(lists) if lists is not None else None)
    out["tags"] = out["tags"].apply(lambda t: t if isinstance(t, list) else [])
    return out


def export_tagged(samples: pd.DataFrame, tags: pd.DataFrame, notes: pd.DataFrame,
                  path: str | os.PathLike) -> list[Path]:
    """Write the tagged or annotated samples to `path`.csv and `path`.parquet.

    Columns: sample_id, label, prediction, loss, tags (joined with "; " in the CSV, a list
    in Parquet), note. `tags` and `notes` are frames from `TagStore` or `folder_*`; a sample
    with several rows in `samples` (several evaluations) is exported with its last one
    (highest `step`); with several notes, the newest wins.

    Example::

        export_tagged(run.samples(split="val"), folder_tags("runs", "digits/val"),
                      folder_notes("runs", "digits/val"), "exports/digits-val-review")
    """
    missing = [c for c in ("sample_id", "label", "prediction", "loss") if c not in samples.columns]
    if missing:
        raise TagError(f"samples lack column(s) {', '.join(missing)} — pass a frame from Run.samples()")
    rows = samples.assign(sample_id=samples["sample_id"].astype(str), _order=range(len(samples)))
    if "step" in rows.columns:
        rows = rows.sort_values("step", kind="stable")
    rows = rows.drop_duplicates("sample_id", keep="last").sort_values("_order")

    tag_lists = (tags.assign(sample_id=tags["sample_id"].astype(str))
                 .drop_duplicates(["sample_id", "tag"]).sort_values(["sample_id", "tag"])
                 .groupby("sample_id")["tag"].agg(list))
    if "updated_at" in notes.columns:
        notes = notes.sort_values("updated_at", kind="stable")
    note_of = (notes.assign(sample_id=notes["sample_id"].astype(str))
               .loc[lambda f: f["note"].fillna("").str.strip() != ""]
               .drop_duplicates("sample_id", keep="last").set_index("sample_id")["note"])

    keep = rows["sample_id"].isin(tag_lists.index) | rows["sample_id"].isin(note_of.index)
    out = rows.loc[keep, ["sample_id", "label", "prediction", "loss"]].reset_index(drop=True)
    out["tags"] = [tag_lists.get(s, []) for s in out["sample_id"]]
    out["note"] = out["sample_id"].map(note_of)

    base = Path(path)
    if base.suffix in (".csv", ".parquet"):
        base = base.with_suffix("")
    base.parent.mkdir(parents=True, exist_ok=True)
    csv_path, parquet_path = base.with_name(base.name + ".csv"), base.with_name(base.name + ".parquet")

    tmp = csv_path.with_name(f".tmp-{uuid.uuid4().hex}-{csv_path.name}")
    out.assign(tags=["; ".join(t) for t in out["tags"]]).to_csv(tmp, index=False)
    os.replace(tmp, csv_path)

    table = pa.Table.from_pandas(out.drop(columns="tags"), preserve_index=False)
    table = table.add_column(4, "tags", pa.array(out["tags"].tolist(), pa.list_(pa.string())))
    tmp = parquet_path.with_name(f".tmp-{uuid.uuid4().hex}-{parquet_path.name}")
    pq.write_table(table, tmp)
    os.replace(tmp, parquet_path)
    return [csv_path, parquet_path]
