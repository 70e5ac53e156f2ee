"""What every page does first: get the picked run, or explain why there is none."""

from __future__ import annotations

import streamlit as st

import diagnostics


def current_run() -> diagnostics.Run:
    """The run picked in the sidebar; stops the page with a friendly message otherwise."""
    path = st.session_state.get("run_path")
    runs_dir = st.session_state.get("runs_dir", "runs")
    if not path:
        st.info(
            f"No runs in `{runs_dir}` yet. Record one by adding "
            "`run = hooks.watch(model, optimizer=opt, loss_fn=criterion, run_dir=\"runs\")` to your "
            "training, or try `diagnostics demo`."
        )
        st.stop()
    try:
        return diagnostics.open_run(path)
    except diagnostics.DiagnosticsError as exc:
        st.error(f"This run cannot be shown: {exc}")
        st.stop()


@st.cache_data(show_spinner=False, max_entries=64)
def scalars(path: str, version: str):
    return diagnostics.open_run(path).scalars()


@st.cache_data(show_spinner=False, max_entries=256)
def distributions(path: str, version: str, kind: str, layers: tuple | None = None, steps: tuple | None = None):
    return diagnostics.open_run(path).distributions(kind, layers=layers, steps=steps)


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
