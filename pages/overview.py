"""Overview: what the run is, and its loss and learning-rate curves (other runs overlaid)."""

import streamlit as st

import diagnostics
from diagnostics import figures, overview
from diagnostics.text import md
from pages import _shared

run = _shared.current_run()
m = run.manifest
status = run.status()
version = run.data_version()

st.title(f"Run {md(run.name)}")
_shared.live_refresh(run, version, status["state"])
head = overview.headline(m, status)
cols = st.columns([1, 1, 1.5, 1.5, 1])
cols[0].metric("State", head["state"])
cols[1].metric("Last step", head["last_step"])
cols[2].metric("Task", md(head["task"]))  # a metric's value is Markdown too
cols[3].metric("Model", md(head["model"]))
cols[4].metric("Parameters", head["parameters"])
for line in overview.fault_lines(status):
    st.warning(md(line), icon=":material/warning:")
if status["state"] == "stopped":
    st.warning("This run's writer stopped without closing it (the process ended or was killed): "
               "it is shown as recorded up to its last flush.")

scalars = _shared.scalars(str(run.path), version)
if scalars.empty:
    st.info("No scalars recorded yet (the loss is recorded once the first optimizer step ends).")
else:
    listed = overview.overlay_candidates(_shared.run_list(st.session_state.get("runs_dir", str(run.path.parent))),
                                         run.path)
    pick, axis, smoothing = st.columns([3, 1.2, 1.5])
    overlay = pick.multiselect("Overlay other runs", listed["name"].tolist(), key=f"overlay_{run.name}",
                               placeholder="runs of this folder to draw on the same charts",
                               help="Their loss and their scalars of the same name on this run's charts, one colour "
                                    "per run (this run first). Names are not merged: val/acc is not val/accuracy.")
    x = axis.radio("x axis", ["step", "time"], horizontal=True, key="overview_x",
                   help="time: wall-clock time since each run started")
    smooth = smoothing.slider("Smoothing", 0.0, 0.99, 0.6, 0.01,
                              help="Exponential moving average weight, as in TensorBoard: the raw loss stays drawn, "
                                   "faint, under the smoothed line")
    frames, starts = {run.name: scalars}, {run.name: float(m.get("created_at") or float("nan"))}
    for row in listed[listed["name"].isin(overlay)].itertuples():
        try:
            other = diagnostics.open_run(row.path)
            frames[row.name] = _shared.scalars(row.path, other.data_version())
            starts[row.name] = float(other.manifest.get("created_at") or float("nan"))
        except diagnostics.DiagnosticsError as exc:
            st.warning(f"Run {md(row.name)} is not drawn: {md(exc)}")
    starts = {k: v for k, v in starts.items() if v == v}
    others = overview.other_scalars(scalars)
    picked = st.multiselect("Other scalars", others, default=overview.default_scalars(scalars),
                            help="A panel each, with its own y axis: a gradient norm of 5 would flatten an "
                                 "accuracy of 0.97; the x axes move together") if others else []
    lr_names = overview.learning_rate_names(scalars)
    one_lr = lr_names == ["lr"]  # one learning rate: other runs' schedules beside it, on the same x
    # one chart of panels, not a chart each: the browser draws the charts of a page in one go,
    # so the first appears only when all are drawn (about 0.3 s a chart on two cores)
    st.plotly_chart(figures.runs_scalars_figure(frames, ["loss", *(["lr"] if one_lr else []), *picked], x=x,
                                                starts=starts, smooth=smooth),
                    width="stretch", key="overview_curves")
    note = overview.loss_note(m, ["loss", *picked])
    if note:
        st.caption(md(note))
    if lr_names and not one_lr:  # one per parameter group: this run's alone
        st.plotly_chart(figures.scalar_figure(scalars, lr_names, "learning rate"), width="stretch")


def _model_and_configuration(m: dict) -> None:
    modules = _shared.module_table(str(run.path), version)
    if not modules.empty:
        st.dataframe(modules, hide_index=True, width="stretch")
    st.json({k: m.get(k) for k in ("watch", "config", "optimizer", "loss_fn", "torch_version", "python_version",
                                   "class_names")})


# filled only when opened (it reruns the page): a table and a JSON tree drawn closed cost
# the browser about half a second of the first paint
config = st.expander("Model and configuration", key="overview_config", on_change="rerun")
with config:
    if config.open:
        _model_and_configuration(m)
