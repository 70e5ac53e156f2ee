"""Overview: what the run is, and its loss and learning-rate curves."""

import pandas as pd
import streamlit as st

from diagnostics import figures
from pages import _shared

run = _shared.current_run()
m = run.manifest
status = run.status()
version = run.data_version()

st.title(f"Run {run.name}")
cols = st.columns([1, 1, 1.5, 1.5, 1])
cols[0].metric("State", status["state"])
cols[1].metric("Steps", max(status["last_step"], int(m.get("steps", 0) or 0)))
cols[2].metric("Task", m.get("task") or "—")
cols[3].metric("Model", m.get("model_class") or "—")
cols[4].metric("Parameters", f"{m.get('num_parameters', 0):,}")
if status["state"] == "stopped":
    st.warning("This run's writer stopped without closing it (the process ended or was killed): "
               "it is shown as recorded up to its last flush.")

scalars = _shared.scalars(str(run.path), version)
if scalars.empty:
    st.info("No scalars recorded yet (the loss is recorded once the first optimizer step ends).")
else:
    smooth = st.slider("Smoothing", 0.0, 0.99, 0.6, 0.01, help="Exponential moving average weight, as in TensorBoard")
    left, right = st.columns(2)
    left.plotly_chart(figures.scalar_figure(scalars, ["loss"], "loss", smooth=smooth), width="stretch")
    lr_names = sorted(n for n in scalars["name"].unique() if n == "lr" or n.startswith("lr/"))
    right.plotly_chart(figures.scalar_figure(scalars, lr_names, "learning rate"), width="stretch")
    others = sorted(set(scalars["name"]) - {"loss", *lr_names})
    if others:
        # by default: the user's own scalars (evaluation metrics) first, then the gradient
        # norm; grad_clipped only once clipping engaged (NaN under DDP: unknown)
        values = {n: scalars.loc[scalars["name"] == n, "value"] for n in others}
        own = [n for n in others if n not in ("grad_norm", "grad_clipped") and values[n].notna().any()]
        tool = [n for n in ("grad_norm", "grad_clipped") if n in values and (values[n].fillna(0) != 0).any()]
        picked = st.multiselect("Other scalars", others, default=(own + tool)[:4],
                                help="One chart each: a gradient norm of 5 would flatten an accuracy of 0.97")
        columns = st.columns(2)
        for i, name in enumerate(picked):
            columns[i % 2].plotly_chart(figures.scalar_figure(scalars, [name], name), width="stretch",
                                        key=f"scalar_{name}")

with st.expander("Model and configuration"):
    modules = pd.DataFrame(m.get("modules", []))
    if not modules.empty:
        # `params` counts a module's own parameters (a container's are its children's):
        # the root read 0 next to the run's total; show both
        root = modules["name"].iloc[0]
        names = modules["name"].tolist()
        modules.insert(3, "params (with children)", [
            int(modules["params"].sum()) if n == root else
            int(sum(p for other, p in zip(names, modules["params"]) if other == n or other.startswith(n + ".")))
            for n in names])
        modules = modules.rename(columns={"params": "params (own)"})
        shapes = m.get("output_shapes") or {}
        if shapes:
            modules["output shape"] = modules["name"].map(lambda n: str(shapes[n]) if n in shapes else "")
        st.dataframe(modules, hide_index=True, width="stretch")
    st.json({k: m.get(k) for k in ("watch", "config", "optimizer", "loss_fn", "torch_version", "python_version", "class_names")})
