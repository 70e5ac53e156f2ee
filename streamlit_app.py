"""Dashboard entry: the run picker (shared by every page) and the page router.

Served by `diagnostics dashboard RUNS`, which passes the runs folder in the
DIAGNOSTICS_RUNS environment variable.
"""

import os

import streamlit as st

import diagnostics

st.set_page_config(page_title="hookscope", layout="wide")

RUNS_DIR = os.environ.get("DIAGNOSTICS_RUNS", "runs")


@st.cache_data(ttl=5, show_spinner=False)
def _list_runs(folder: str):
    return diagnostics.list_runs(folder)


runs = _list_runs(RUNS_DIR)
st.session_state["runs_dir"] = RUNS_DIR
with st.sidebar:
    st.caption(f"runs folder: `{RUNS_DIR}`")
    if runs.empty:
        st.session_state["run_path"] = None
    else:
        labels = {row.path: f"{row.name} · {row.state}" for row in runs.itertuples()}
        paths = list(labels)
        current = st.session_state.get("run_path")
        st.session_state["run_path"] = st.selectbox(
            "Run", paths, index=paths.index(current) if current in paths else 0,
            format_func=labels.get, key="run_picker",
        )

page = st.navigation([
    st.Page("pages/overview.py", title="Overview", icon=":material/dashboard:", default=True),
    st.Page("pages/distributions.py", title="Distributions", icon=":material/bar_chart:"),
    st.Page("pages/outputs.py", title="Outputs vs labels", icon=":material/target:"),
])
page.run()
