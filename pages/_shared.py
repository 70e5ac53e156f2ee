"""What every page does first (get the picked run, or explain why there is none; a review
page's evaluation, samples and tags: `review`), and the cached loaders the pages read through."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

import diagnostics
from diagnostics import badges, errors, overview, paging, schema, slices
from diagnostics import dynamics as dyn
from diagnostics import tags as tag_store
from diagnostics.text import md


def current_run() -> diagnostics.Run:
    """The run picked in the sidebar; stops the page with a friendly message otherwise."""
    path = st.session_state.get("run_path")
    runs_dir = st.session_state.get("runs_dir", "runs")
    if not path:
        st.info(
            f"No runs in {md(runs_dir)} yet. Record one by adding "
            "`run = hooks.watch(model, optimizer=opt, loss_fn=criterion, run_dir=\"runs\")` to your "
            "training, or try `diagnostics demo`."
        )
        st.stop()
    try:
        run = diagnostics.open_run(path)
    except diagnostics.DiagnosticsError as exc:
        st.error(f"This run cannot be shown: {md(exc)}")
        st.stop()
    damaged = run.damaged_parts()
    if damaged:
        st.warning(f"{len(damaged)} file{'s' if len(damaged) > 1 else ''} of this run cannot be read and "
                   f"{'are' if len(damaged) > 1 else 'is'} skipped (first: {md(damaged[0].relative_to(run.path))}); "
                   "the rest is shown as recorded. Move damaged files out of the run to silence this.")
    return run


def page_failed(exc: Exception) -> None:
    """What a page that raised shows instead of a traceback: a run deleted (or files of it
    removed) while the page read it is said so; anything else in one line, the traceback going
    to the dashboard's terminal. DIAGNOSTICS_STRICT_PAGES=1 lets the exception through (the
    test suite sets it, so that a page's bug fails its test)."""
    path = st.session_state.get("run_path")
    if path and not (Path(path) / schema.MANIFEST_FILE).is_file():
        run_list.clear()  # the picker lists it no more
        st.warning(f"The run {md(Path(path).name)} was deleted while this page read it: pick another run "
                   "in the sidebar.")
        return
    if _files_vanished(exc):
        st.warning("Files of this run were removed while this page read them: reload the page to show what "
                   f"is left ({md(exc.__class__.__name__)}: {md(str(exc).splitlines()[0][:200] if str(exc) else '')}).")
        return
    if os.environ.get("DIAGNOSTICS_STRICT_PAGES") == "1":
        raise exc
    logging.getLogger("hookscope.pages").error("a page failed", exc_info=exc)
    st.error(f"This page could not be drawn ({md(exc.__class__.__name__)}: {md(str(exc)[:300])}). The traceback "
             "is in the terminal that runs the dashboard; please report it with the run's run.json.")


def _files_vanished(exc: Exception) -> bool:
    import duckdb

    if isinstance(exc, (FileNotFoundError, diagnostics.RunNotFoundError)):
        return True
    return isinstance(exc, duckdb.IOException) and ("No files found" in str(exc) or "at least one file" in str(exc)
                                                    or "No such file" in str(exc))


REFRESH_EVERY_S = 5


def live_refresh(run: diagnostics.Run, version: str, state: str, every_s: float = REFRESH_EVERY_S) -> None:
    """The auto-refresh toggle of a page that shows a run being written (off by default).

    `version` and `state` are what the page read (`run.data_version()`, `run.status()`).
    When on, the page looks at the run every `every_s` seconds (a listing of its parts and
    its status files) and reruns the whole app only when new data landed or the state
    changed: the loaders, keyed by the data version, read again just then, and the picker
    shows the new state. A run no longer running shows no toggle: nothing new comes.
    """
    if state != "running":
        if st.session_state.get("live_refresh_kept"):
            st.caption(f"Auto-refresh stopped: this run is {state}, nothing new will arrive.")
        return
    # a widget's state ends with its page: the choice is kept apart and carried to the next page
    st.session_state["live_refresh"] = bool(st.session_state.get("live_refresh_kept", False))
    on = st.toggle(f"Auto-refresh every {every_s:g} s", key="live_refresh", on_change=_keep_live_choice,
                   help="While the run trains: redraw this page when a new flush lands (the picker's state too). "
                        "Data that did not change is not read again.")
    if on:
        rerun_app_when(_new_data, every_s, str(run.path), (version, state))


def _keep_live_choice() -> None:
    st.session_state["live_refresh_kept"] = st.session_state["live_refresh"]


def live_fingerprint(path: str) -> tuple[str, str]:
    """What a refresh compares: the run's data version and its state."""
    try:
        run = diagnostics.open_run(path)
        return run.data_version(), run.status()["state"]
    except diagnostics.DiagnosticsError as exc:  # the page, rerun, says why
        return "", f"unreadable: {exc}"


def _new_data(path: str, seen: tuple[str, str]) -> bool:
    if live_fingerprint(path) != seen:
        run_list.clear()  # the picker's state and last step, not up to 5 s old
        return True
    return False


def rerun_app_when(check: Callable[..., bool], every_s: float, *args) -> None:
    """Every `every_s` seconds, `check(*args)` in a fragment of its own; the whole app reruns
    when it returns True. Not while the full run that draws the fragment goes on (the
    fragment's first call): a rerun there would stop that run before the page below it has
    handled the click that started it, and the click would come to nothing (a Save whose tags
    were never written, when a health badge arrived as the picker drew). The next tick reruns."""
    drawing = f"fragment_drawn_by_full_run_{check.__name__}"
    st.session_state[drawing] = True
    st.fragment(_timed_check, run_every=every_s)(check, drawing, *args)


def _timed_check(check: Callable[..., bool], drawing: str, *args) -> None:
    in_full_run = st.session_state.pop(drawing, False)
    if check(*args) and not in_full_run:
        st.rerun()


@st.cache_data(show_spinner=False, max_entries=64)
def scalars(path: str, version: str):
    return diagnostics.open_run(path).scalars()


@st.cache_data(show_spinner=False, max_entries=256)
def distributions(path: str, version: str, kind: str, layers: tuple | None = None, steps: tuple | None = None,
                  rank: int | None = None):
    return diagnostics.open_run(path).distributions(kind, layers=layers, steps=steps, rank=rank)


def rank_picker(run: diagnostics.Run, key: str) -> int | None:
    """For a run recorded by several processes (DDP), which rank's stream to show; None
    for a single-process run. Each rank records its own batches: distributions of
    different ranks are not pooled."""
    world_size = int(run.manifest.get("world_size") or 1)
    if world_size <= 1:
        return None
    return st.selectbox(
        "Rank", list(range(world_size)), key=key, format_func=lambda r: f"rank {r}",
        help="Each process records its own stream. Activations, gradients w.r.t. activations and outputs "
             "come from that rank's own batch; under DDP weights, parameter gradients and updates agree "
             "across ranks.")


@st.cache_data(show_spinner=False, max_entries=64)
def layers(path: str, version: str, kind: str):
    return diagnostics.open_run(path).layers(kind)


@st.cache_data(show_spinner=False, max_entries=64)
def steps(path: str, version: str, kind: str):
    return diagnostics.open_run(path).steps(kind)


@st.cache_data(show_spinner=False, max_entries=64)
def kinds(path: str, version: str):
    return diagnostics.open_run(path).kinds()


@st.cache_data(show_spinner=False, max_entries=64)
def update_ratios(path: str, version: str, layer: str):
    return diagnostics.open_run(path).update_ratios(layers=(layer,))


def samples(path: str, version: str, split: str, step: int) -> pd.DataFrame:
    """One evaluation's samples. Held once per run version rather than by `st.cache_data`, which
    unpickles a copy on every rerun (0.3 s for 100,000 samples with embeddings); each caller
    gets a shallow copy, and pandas' copy-on-write keeps its edits off the held frame."""
    return _held_samples(path, version, split, step).copy(deep=False)


@st.cache_resource(show_spinner=False, max_entries=8)
def _held_samples(path: str, version: str, split: str, step: int) -> pd.DataFrame:
    return diagnostics.open_run(path).samples(split, step=step)


@st.cache_data(show_spinner=False, max_entries=16)
def error_slices(path: str, version: str, split: str, step: int, task: str, tags: pd.DataFrame,
                 class_names: tuple | None) -> pd.DataFrame:
    """`slices.find_slices` of one evaluation with the folder's tags (0.2 s at 100,000 samples:
    computed once per run version and set of tags, not on every rerun)."""
    tagged = tag_store.with_tag_lists(samples(path, version, split, step), tags)
    return slices.find_slices(tagged, task, features=slices.review_features(tagged, task),
                              class_names=None if class_names is None else list(class_names))


@st.cache_data(show_spinner=False, max_entries=256)
def sample_detail(path: str, version: str, split: str, sample_id: str):
    """Everything about one sample of `split`: its evaluations, its per-step records, preview,
    attributions. Records are joined within the split: ids name samples of one split only
    (val sample 36 and train sample 36 may be different samples)."""
    r = diagnostics.open_run(path)
    return (r.samples(split, step="all", sample_ids=[sample_id]), r.records(split=split, sample_ids=[sample_id]),
            r.previews(split, [sample_id]), r.attributions(split, [sample_id]))


@st.cache_data(show_spinner=False, max_entries=64)
def thumbnails(path: str, version: str, split: str, sample_ids: tuple) -> pd.Series:
    """PNG data URLs of the stored previews of some samples, by sample_id (missing: none stored)."""
    from diagnostics.thumbnails import thumbnails as make

    return make(diagnostics.open_run(path).previews(split, sample_ids))


@st.cache_data(show_spinner=False, max_entries=16)
def dynamics(path: str, version: str, split: str = "train"):
    return diagnostics.open_run(path).sample_dynamics(split)


def pager(key: str, selection_key: str, filters: object = None) -> tuple[int, int]:
    """The page number and page size of table `key`, read before the table is cut. A new filter
    goes back to page 1; any change of page, size or filter clears the table's row selection
    (`selection_key`), so a selected row always names the sample shown."""
    st.session_state.setdefault(f"{key}_size", paging.PAGE_SIZE)
    page, size = int(st.session_state.get(f"{key}_page", 1)), int(st.session_state[f"{key}_size"])
    seen = st.session_state.get(f"{key}_seen")
    if seen is not None and seen[0] != repr(filters):
        page = st.session_state[f"{key}_page"] = 1
    if seen is not None and seen != (repr(filters), page, size):
        # set, not popped: only an assigned selection reaches the browser, which otherwise
        # keeps the old row numbers and sends them back for rows of the new page
        st.session_state[selection_key] = {"selection": {"rows": [], "columns": []}}
    st.session_state[f"{key}_seen"] = (repr(filters), page, size)
    return page, size


def page_controls(key: str, page: paging.Page, what: str = "") -> None:
    """What the page shows ("rows 201–400 of 8,312"), the page size and the page number; the
    page was cut already (`pager`), with its number clamped to the pages there are."""
    st.session_state[f"{key}_page"] = page.page
    left, middle, right = st.columns([4, 1, 1], vertical_alignment="bottom")
    left.caption(f"{page.label[0].upper()}{page.label[1:]}{what}")
    middle.selectbox("Rows per page", paging.PAGE_SIZES, key=f"{key}_size")
    right.number_input(f"Page (of {page.pages:,})", min_value=1, max_value=page.pages, step=1, key=f"{key}_page")


@st.cache_resource(show_spinner=False)
def tags_of(path: str) -> tag_store.TagStore:
    return tag_store.TagStore(path)


def pick_evaluation(run: diagnostics.Run, key: str) -> tuple[str, int, str]:
    """Split and evaluation step pickers; stops the page when the run has no evaluation."""
    evals = run.evaluations()
    if evals.empty:
        st.info("No evaluation recorded in this run. Add `run.evaluate(val_loader, split=\"val\")` after "
                "training (or every few epochs) to record one row per sample for error review.")
        st.stop()
    left, right = st.columns(2)
    splits = list(dict.fromkeys(evals["split"]))
    split = left.selectbox("Split", splits, key=f"{key}_split")
    steps = sorted(evals.loc[evals["split"] == split, "step"].astype(int).unique())
    step = right.selectbox("Evaluation at step", steps, index=len(steps) - 1, key=f"{key}_step_{split}")
    row = evals[(evals["split"] == split) & (evals["step"] == step)].iloc[-1]
    return split, int(step), str(row.get("dataset", split))


def sample_tags(runs_dir: str, dataset: str) -> pd.DataFrame:
    """Tags of the evaluated data from every run in the folder (read fresh: other tabs write);
    a run whose review store cannot be read is left out, with why in one line on the page."""
    return _saying_what_was_skipped(tag_store.folder_tags, runs_dir, dataset)


def sample_notes(runs_dir: str, dataset: str) -> pd.DataFrame:
    """Notes on the evaluated data from every run in the folder, as `sample_tags` reads tags."""
    return _saying_what_was_skipped(tag_store.folder_notes, runs_dir, dataset)


def _saying_what_was_skipped(read, runs_dir: str, dataset: str) -> pd.DataFrame:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        frame = read(runs_dir, dataset)
    for warning in caught:  # "skipping review tags of RUN: why"
        st.caption(md(warning.message))
    return frame


def tagging_form(run: diagnostics.Run, dataset: str, sample_ids: list[str], key: str) -> None:
    """Tag and annotate the given samples; saved at once to the run's review store. A note
    replaces only the note this page showed: one another session saved meanwhile is kept,
    and the page says so, with the text that was not saved."""
    store = tags_of(str(run.path))
    if saved := st.session_state.pop(f"tag_saved_{key}", None):
        st.toast(saved)
    if conflict := st.session_state.pop(f"note_conflict_{key}", None):
        message, st.session_state[f"note_{key}"] = conflict  # the note not saved, back in its box
        st.error(message)  # escaped where made: _conflict_message
    # the notes as this draw shows them; a save compares with those of the draw the user typed in
    shown = st.session_state.get(f"notes_shown_{key}", {})
    now = store.notes(dataset, sample_ids).set_index("sample_id")["note"].to_dict() if sample_ids else {}
    st.session_state[f"notes_shown_{key}"] = {sid: now.get(sid) for sid in sample_ids}
    with st.form(key=f"tag_form_{key}", clear_on_submit=True):
        st.caption(f"Tag {len(sample_ids)} selected sample(s)")
        noted = [(sid, now[sid]) for sid in sample_ids if now.get(sid)]
        if noted:  # what a note would replace, in view: the save's check compares with what was seen
            more = f" (+{len(noted) - 3} more)" if len(noted) > 3 else ""
            st.text("Notes now: " + "; ".join(f"{sid}: {n}" for sid, n in noted[:3]) + more)  # text: inert
        chosen = st.multiselect("Tags", store.known_tags(dataset), accept_new_options=True, key=f"tags_{key}",
                                placeholder="pick or type a tag")
        note = st.text_input("Note (optional; replaces the sample's note)", key=f"note_{key}")
        if st.form_submit_button("Save", disabled=not sample_ids):
            try:
                if chosen:
                    store.add_tags(dataset, sample_ids, chosen)
                conflicts = _save_notes(store, dataset, sample_ids, note.strip(), shown, now)
            except diagnostics.DiagnosticsError as exc:
                st.error(md(exc))
                return
            if conflicts:
                st.session_state[f"note_conflict_{key}"] = (_conflict_message(conflicts), note.strip())
            saved = len(sample_ids) if chosen else len(sample_ids) - len(conflicts) if note.strip() else 0
            if saved:
                st.session_state[f"tag_saved_{key}"] = f"Saved for {saved} sample(s)"
            if chosen or note.strip():  # the page drew its tags before this save: run it again so they show now
                st.rerun()


def _conflict_message(conflicts: list[tag_store.NoteConflictError]) -> str:
    first = conflicts[0]
    now = f"it now reads “{md(first.current)}”" if first.current is not None else "it was deleted"
    which = f"sample {md(first.sample_id)}" + (f" and {len(conflicts) - 1} more" if len(conflicts) > 1 else "")
    return (f"Your note was not saved for {which}: another session changed it meanwhile ({now}). "
            "Yours is back in the box: Save replaces it.")


def _save_notes(store: tag_store.TagStore, dataset: str, sample_ids: list[str], note: str, shown: dict,
                now: dict) -> list[tag_store.NoteConflictError]:
    """Each sample's note, where it still reads as shown; the conflicts, not saved."""
    conflicts = []
    for sid in sample_ids if note else []:
        try:
            store.set_note(dataset, sid, note, expected=shown.get(sid, now.get(sid)))
        except tag_store.NoteConflictError as exc:
            conflicts.append(exc)
    return conflicts


@st.cache_data(show_spinner=False, max_entries=64, ttl=60)
def health(path: str, version: str):
    """The run's findings; from the run's badge cache on disk when its health was checked."""
    return badges.cached_health(path)


@st.cache_data(show_spinner=False, ttl=5)
def comparable_runs(runs_dir: str, path: str):
    from diagnostics.compare import comparable_runs as find

    return find(runs_dir, path)


@st.cache_data(show_spinner=False, ttl=5)
def runs_recording(runs_dir: str, path: str, kind: str, layer: str):
    from diagnostics.across_runs import runs_recording as find

    return find(runs_dir, path, kind, layer)


@st.cache_data(show_spinner=False, max_entries=16, ttl=60)
def comparison(path_a: str, version_a: str, path_b: str, version_b: str, split: str):
    """`diagnostics.compare` of two runs; its warnings are on the result (the page shows them)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return diagnostics.compare(path_a, path_b, split=split)


@st.cache_data(show_spinner=False, max_entries=16, ttl=60)
def ensemble_of(paths: tuple[str, ...], versions: tuple[str, ...], split: str):
    """`diagnostics.ensemble` of runs, keyed by their paths and data versions; its warnings are
    on the result (the page shows them)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return diagnostics.ensemble(list(paths), split=split)


@st.cache_data(ttl=5, show_spinner=False)
def run_list(folder: str) -> pd.DataFrame:
    return diagnostics.list_runs(folder)


@st.cache_data(show_spinner=False, max_entries=64)
def module_table(path: str, version: str) -> pd.DataFrame:
    return overview.module_table(diagnostics.open_run(path).manifest)


@st.cache_data(show_spinner=False, max_entries=32)
def error_headline(path: str, version: str, split: str, step: int, task: str) -> dict:
    return errors.error_headline(samples(path, version, split, step), task)


@st.cache_data(show_spinner=False, max_entries=32)
def confusion(path: str, version: str, split: str, step: int, num_classes: int) -> np.ndarray:
    return errors.confusion_matrix(samples(path, version, split, step), num_classes)


@st.cache_data(show_spinner=False, max_entries=16)
def data_map(path: str, version: str, task: str | None) -> dyn.DataMap:
    return dyn.data_map(dynamics(path, version, "train"), task)


@dataclass(frozen=True)
class Review:
    """What a review page starts from: the run picked in the sidebar, its task and class
    names, the runs folder and, when the page picks an evaluation, its split, step, dataset
    key, samples and the folder's tags of that dataset."""

    run: diagnostics.Run
    path: str
    version: str
    runs_dir: str
    task: str
    class_names: list[str] | None
    split: str = ""
    step: int = -1
    dataset: str = ""
    samples: pd.DataFrame | None = None
    tags: pd.DataFrame | None = None

    @property
    def classification(self) -> bool:
        return self.task == "classification"

    def class_label(self, value) -> str:
        """A class index as its name ("—" when missing)."""
        return errors.class_name(self.class_names, value)


def review(title: str, key: str | None = None) -> Review:
    """The picked run under the page's `title`; with `key`, also the split and evaluation
    pickers (stopping the page when the run has no evaluation), that evaluation's samples
    and the tags of its data from every run in the folder (read fresh: other tabs write)."""
    run = current_run()
    path, version = str(run.path), run.data_version()
    st.title(title)
    found = Review(run=run, path=path, version=version,
                   runs_dir=st.session_state.get("runs_dir", str(run.path.parent)),
                   task=run.manifest.get("task") or "classification", class_names=run.manifest.get("class_names"))
    if key is None:
        return found
    split, step, dataset = pick_evaluation(run, key)
    return replace(found, split=split, step=step, dataset=dataset, samples=samples(path, version, split, step),
                   tags=sample_tags(found.runs_dir, dataset))
