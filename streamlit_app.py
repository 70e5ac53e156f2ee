"""Dashboard entry: the run picker (shared by every page) and the page router.

Served by `diagnostics dashboard RUNS`, which passes the runs folder in the
DIAGNOSTICS_RUNS environment variable.
"""

import os
import threading
import time
from pathlib import Path

import streamlit as st

from diagnostics import badges, embedding
from diagnostics.text import md
from pages import _shared  # noqa: PLC2701 -- the router and its pages share one cached listing

st.set_page_config(page_title="hookscope", layout="wide")

RUNS_DIR = os.environ.get("DIAGNOSTICS_RUNS", "runs")
WARM_UP_AFTER_S = 5.0


@st.cache_resource(show_spinner=False)
def _warm_up_umap() -> threading.Thread:
    """UMAP's first fit compiles with numba (20-40 s once per machine, then a few seconds from
    numba's disk cache): pay it in the background once the first page has run (started at the
    server's start, its child process took a CPU from the first page: 1-2 s later on 2 cores),
    and WARM_UP_AFTER_S later: the server has run the page 0.7-0.9 s after the browser opened
    it, but the browser draws the first chart 1.5-2 s after that, on the same two cores (A/B,
    nine first opens each: median 2.47 s, at most 2.85 s, against 2.62 s and 3.22 s started at
    once). Maps meanwhile show a PCA preview; a map asked for before the warm-up starts is
    fitted at once and the warm-up then has nothing to do."""
    def after_the_first_chart() -> None:
        time.sleep(WARM_UP_AFTER_S)
        embedding.warm_up()  # returns at once if a user's map was fitted meanwhile
    thread = threading.Thread(target=after_the_first_chart, name="umap-warm-up", daemon=True)
    thread.start()
    return thread



def _badge(known, earlier) -> str:
    """A run's health in the picker: '⛔1 ⚠2', '✓', '?' if it cannot be checked; '…' while
    being checked, after the counts of its previous version if it had one ('⚠2…')."""
    if known is None:
        return badges.PENDING if earlier is None else f"{_badge(earlier, None)}{badges.PENDING}"
    return "?" if isinstance(known, str) else known.badge


def _picked_run(runs, folder_names: dict) -> str:
    """The run to show: ?run=NAME in the address (a link to a run can be shared), else the last
    pick, else the run `diagnostics dashboard RUN_FOLDER` was given (DIAGNOSTICS_SELECT)."""
    wanted = st.query_params.get("run") or (None if "run_path" in st.session_state
                                            else os.environ.get("DIAGNOSTICS_SELECT"))
    by_name = {row.name: row.path for row in runs.itertuples()}
    current = next((p for p, n in folder_names.items() if n == wanted), by_name.get(wanted))
    current = current or st.session_state.get("run_path")
    return current if current in folder_names else runs["path"].iloc[0]


def _run_picker(runs) -> list[str]:
    """Labels lead with the badge and name each run by its folder (copies of a run share
    a manifest name): '⛔1 ⚠2 exp1', with ' · running' for a run not finished; the
    state, step and findings in words go in the caption under it. Returns the runs whose
    badge is out of date, to check once the page has run; when the badges of runs never
    checked arrive, `_badges_arrived` reruns the app, and so when a run that stopped changing
    (finished, stopped) is checked again (a running run's re-checks wait for the next
    rerun: no rerun loop while it trains)."""
    board = badges.shared_board()
    folder_names = {row.path: Path(row.path).name for row in runs.itertuples()}
    current = _picked_run(runs, folder_names)
    readable = [row.path for row in runs.itertuples() if row.state != "broken"]
    known = {p: board.lookup(p) for p in readable}
    earlier = {p: board.last_known(p) for p in readable if known[p] is None}
    labels = {}
    for row in runs.itertuples():
        badge = "✗" if row.state == "broken" else _badge(known[row.path], earlier.get(row.path))
        labels[f"{badge} {folder_names[row.path]}{'' if row.state == 'finished' else ' · ' + row.state}"] = row.path
    options = list(labels)
    at = next(i for i, label in enumerate(options) if labels[label] == current)
    picked = st.selectbox("Run", options, index=at, key=f"run_picker_{at}",
                          help="⛔ errors and ⚠ warnings the Health page lists for the run; ✓ none; "
                               "… being checked")
    chosen = labels.get(picked, current)
    st.session_state["run_path"] = chosen
    st.query_params["run"] = folder_names[chosen]
    row = runs[runs["path"] == chosen].iloc[0]
    st.caption(_run_caption(row, known.get(chosen), earlier.get(chosen)))
    state = dict(zip(runs["path"], runs["state"]))
    awaited = [p for p, e in earlier.items() if e is None or state[p] != "running"]
    if awaited:
        _shared.rerun_app_when(_badges_arrived, 1.5, awaited, chosen)
    return sorted(earlier, key=lambda p: p != chosen)  # the run being looked at first


def _run_caption(row, known, earlier) -> str:
    if row.state == "broken":
        return f"broken: {md(row.error)}"
    step = f" · step {int(row.last_step)}" if row.last_step >= 0 else ""
    if known is None:
        health = ("checking health…" if earlier is None else
                  f"{_describe(earlier)} before the latest data; checking again…")
    else:
        health = _describe(known)
    return f"{row.state}{step} · {health}"


def _describe(known) -> str:
    return f"health not checked: {known}" if isinstance(known, str) else known.describe()


def _badges_arrived(pending: list[str], chosen: str) -> bool:
    """Whether to rerun the app: the picked run's badge, or all the badges, are known now."""
    left = badges.shared_board().pending(pending)
    st.caption(f"checking the runs' health: {len(pending) - len(left)} of {len(pending)} done")
    return not left or (chosen in pending and chosen not in left)


runs = _shared.run_list(RUNS_DIR)  # the same cached listing the pages read
st.session_state["runs_dir"] = RUNS_DIR
unknown_badges: list[str] = []
with st.sidebar:
    st.caption(f"runs folder: {md(RUNS_DIR)}")
    if runs.empty:
        st.session_state["run_path"] = None
    else:
        unknown_badges = _run_picker(runs)

page = st.navigation([
    st.Page("pages/overview.py", title="Overview", icon=":material/dashboard:", default=True),
    st.Page("pages/distributions.py", title="Distributions", icon=":material/bar_chart:"),
    st.Page("pages/outputs.py", title="Outputs vs labels", icon=":material/target:"),
    st.Page("pages/health.py", title="Health", icon=":material/health_and_safety:"),
    st.Page("pages/errors.py", title="Error review", icon=":material/error:"),
    st.Page("pages/embedding.py", title="Embedding map", icon=":material/bubble_chart:"),
    st.Page("pages/sample.py", title="Sample detail", icon=":material/image_search:"),
    st.Page("pages/datamap.py", title="Data map", icon=":material/scatter_plot:"),
    st.Page("pages/compare.py", title="Compare runs", icon=":material/compare_arrows:"),
    st.Page("pages/ensemble.py", title="Ensemble", icon=":material/join_inner:"),
])
try:
    page.run()
except Exception as exc:  # noqa: BLE001 -- the last line of defence: a sentence on the page, never a traceback
    _shared.page_failed(exc)
finally:  # also when the page stops early: the badges' computation starts once the page has run
    if unknown_badges:
        badges.shared_board().request(unknown_badges)
    if os.environ.get("DIAGNOSTICS_WARM_UP") == "1":  # set by `diagnostics dashboard`
        _warm_up_umap()
