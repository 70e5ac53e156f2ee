"""Dashboard entry: the run picker (shared by every page) and the page router.

Served by `diagnostics dashboard RUNS`, which passes the runs folder in the
DIAGNOSTICS_RUNS environment variable.
"""

import os
import threading

import streamlit as st

import diagnostics
from diagnostics import embedding

st.set_page_config(page_title="hookscope", layout="wide")

RUNS_DIR = os.environ.get("DIAGNOSTICS_RUNS", "runs")


@st.cache_data(ttl=5, show_spinner=False)
def _list_runs(folder: str):
    return diagnostics.list_runs(folder)


@st.cache_resource(show_spinner=False)
def _warm_up_umap() -> threading.Thread:
    """UMAP's first fit compiles with numba (20-40 s once per machine, then a few seconds from
    numba's disk cache): pay it in the background at start; maps meanwhile show a PCA preview."""
    thread = threading.Thread(target=embedding.warm_up, name="umap-warm-up", daemon=True)
    thread.start()
    return thread


if os.environ.get("DIAGNOSTICS_WARM_UP") == "1":  # set by `diagnostics dashboard`
    _warm_up_umap()

@st.cache_data(ttl=60, show_spinner=False)
def _badge(path: str, state: str) -> str:
    """' · ⛔ 1 ⚠ 2': the run's error and warning findings, for the run picker."""
    if state == "broken":
        return ""
    try:
        findings = diagnostics.open_run(path).health()
    except diagnostics.DiagnosticsError:
        return ""
    errors = sum(f.severity == "error" for f in findings)
    warnings = sum(f.severity == "warning" for f in findings)
    marks = (f"⛔ {errors}" if errors else "") + (" " if errors and warnings else "") + (f"⚠ {warnings}" if warnings else "")
    return f" · {marks}" if marks else ""


runs = _list_runs(RUNS_DIR)
st.session_state["runs_dir"] = RUNS_DIR
with st.sidebar:
    st.caption(f"runs folder: `{RUNS_DIR}`")
    if runs.empty:
        st.session_state["run_path"] = None
    else:
        # options are plain labels (no format_func): a label maps back to its run's path;
        # ?run=NAME in the address opens that run (a link to a run can be shared)
        paths = {f"{row.name} · {row.state}{_badge(row.path, row.state)}": row.path for row in runs.itertuples()}
        names = {row.path: row.name for row in runs.itertuples()}
        labels = list(paths)
        wanted = st.query_params.get("run")
        current = next((p for p, n in names.items() if n == wanted), st.session_state.get("run_path"))
        at = next((i for i, label in enumerate(labels) if paths[label] == current), 0)
        chosen = paths[st.selectbox("Run", labels, index=at, key=f"run_picker_{at}")]
        st.session_state["run_path"] = chosen
        st.query_params["run"] = names[chosen]

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
])
page.run()
