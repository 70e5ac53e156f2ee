"""Distributions: one layer over steps (quantile bands, histogram heatmap), the same layer
of other runs on one step axis, and all layers side by side at one step."""

import streamlit as st

import diagnostics
from diagnostics import figures, overview, schema
from diagnostics.text import html, md
from pages import _shared

run = _shared.current_run()
path, version = str(run.path), run.data_version()
st.title("Distributions")
_shared.live_refresh(run, version, run.status()["state"])

LAYER_KINDS = [k for k in schema.KINDS if k not in ("output", "label")]
available = [k for k in _shared.kinds(path, version) if k in LAYER_KINDS]
if not available:
    st.info("No layer distributions recorded yet: they are captured every `every` optimizer steps, "
            "starting at step 0.")
    st.stop()

DESCRIPTIONS = {
    "activation": "a module's output", "gradient": "the gradient w.r.t. a module's output",
    "weight": "a parameter's values", "param_grad": "a parameter's gradient",
    "update": "the optimizer's change to a parameter",
}
several = int(run.manifest.get("world_size") or 1) > 1
left, right, *rest = st.columns([1.4, 3, 0.8] if several else [1.4, 3])
kind = left.selectbox("Kind", available, format_func=lambda k: f"{k} — {DESCRIPTIONS[k]}", key="dist_kind")
layer_names = _shared.layers(path, version, kind)
types = overview.module_types(run.manifest)
layer = right.selectbox("Layer", layer_names, key=f"dist_layer_{kind}",
                        format_func=lambda n: figures.layer_label(n, types))
if several:
    with rest[0]:
        rank = _shared.rank_picker(run, "dist_rank")
else:
    rank = None

one = _shared.distributions(path, version, kind, layers=(layer,), rank=rank)
# one above the other, same margins and step range: a step lines up in both
st.plotly_chart(figures.quantile_bands_figure(one, f"{kind} of {html(layer)}: quantiles over steps"), width="stretch")
st.plotly_chart(figures.histogram_heatmap_figure(one, f"{kind} of {html(layer)}: histogram over steps"),
                width="stretch")
if len(one):
    last = one.sort_values("step").iloc[-1]
    st.caption(
        f"Last capture (step {int(last['step'])}): mean {last['mean']:.4g}, std {last['std']:.4g}, "
        f"zeros {last['zero_frac']:.1%}, NaN {int(last['nan_count'])}, Inf {int(last['inf_count'])}."
        + overview.capture_gap_note(run.manifest, run.status()["last_step"], int(last["step"]))
    )

st.subheader("Other runs, this layer")
peers = _shared.runs_recording(st.session_state.get("runs_dir", str(run.path.parent)), path, kind, layer)
if peers.empty:
    st.caption(f"No other run of this folder recorded the {kind} of {md(layer)}: runs of the same model, recorded with "
               "`hooks.watch`, show here to compare this layer across changes.")
else:
    options = peers["name"].tolist()
    # the picks carry over to other layers and kinds wherever the picked runs recorded them
    remembered = st.session_state.get("dist_compare_runs", [])
    picked = st.multiselect("Compare with other runs", options, key=f"dist_compare_{kind}_{layer}",
                            default=[n for n in remembered if n in options],
                            placeholder="pick runs to draw beside this one",
                            help="Runs of this folder that recorded the same kind for a layer of the same name, "
                                 "most recent first: drawn on one step axis, step by step.")
    st.session_state["dist_compare_runs"] = picked + [n for n in remembered if n not in options]
    frames, versions = {run.path.name: one}, {run.path.name: (path, version)}
    for row in peers.set_index("name").loc[picked].reset_index().itertuples():
        try:
            peer_version = diagnostics.open_run(row.path).data_version()
        except diagnostics.DiagnosticsError as exc:
            st.caption(f"{md(row.name)} is left out: {md(exc)}")
            continue
        same_rank = rank if rank is not None and rank < row.world_size else None
        frames[row.name] = _shared.distributions(row.path, peer_version, kind, layers=(layer,), rank=same_rank)
        versions[row.name] = (row.path, peer_version)
    if len(frames) > 1:
        st.plotly_chart(figures.runs_quantiles_figure(frames, f"{kind} of {html(layer)}: median and band, run by run"),
                        width="stretch", key="dist_runs_quantiles")
        if st.toggle("Histograms side by side", key="dist_runs_histograms",
                     help="Each run's histogram heatmap on one value grid and colour scale, axes shared."):
            st.plotly_chart(figures.runs_histograms_figure(frames, f"{kind} of {html(layer)}: histograms over steps"),
                            width="stretch", key="dist_runs_histograms_chart")
        # what the layer's change did to training: the same runs' loss and metrics, same colours
        curves = {name: _shared.scalars(*at) for name, at in versions.items()}
        names = ["loss", *overview.default_scalars(curves[run.path.name], most=2)]
        if any((c["name"] == "loss").any() for c in curves.values() if not c.empty):
            st.caption("Their loss and metrics, in the same colours (the Overview overlays any scalar):")
            st.plotly_chart(figures.runs_scalars_figure(curves, names, columns=len(names), smooth=0.6),
                            width="stretch", key="dist_runs_curves")

if kind == "update":
    ratios = _shared.update_ratios(path, version, layer)
    if rank is not None:
        ratios = ratios[ratios["rank"] == rank]
    st.plotly_chart(figures.update_ratio_figure(ratios, layer), width="stretch")

st.subheader("All layers at one step")
step_list = _shared.steps(path, version, kind)
step_key = f"dist_step_{kind}"
picked = st.session_state.get(step_key)
if picked not in step_list or picked == st.session_state.get(f"{step_key}_newest"):
    st.session_state[step_key] = step_list[-1]  # left at the newest step: a live run's new captures move it on
st.session_state[f"{step_key}_newest"] = step_list[-1]
step = st.select_slider("Step", step_list, key=step_key) if len(step_list) > 1 else step_list[0]
at_step = _shared.distributions(path, version, kind, steps=(step,), rank=rank)
st.plotly_chart(figures.layers_at_step_figure(at_step, layer_names, f"{kind}, every layer at step {step}",
                                              layer_types=types), width="stretch")
