"""Compare runs: which samples run B fixed and which it broke against run A (the run picked in
the sidebar), whether that is more than chance, per class, and what else differs."""

from pathlib import Path

import streamlit as st

import diagnostics
from diagnostics import figures, paging
from diagnostics.compare import ALPHA
from diagnostics.text import md
from pages import _positions, _shared

r = _shared.review("Compare runs")
run, runs_dir = r.run, r.runs_dir
evaluated = list(dict.fromkeys(e.get("split") for e in run.manifest.get("evaluations") or []))
if not evaluated:
    st.info(f"Run A ({md(run.name)}, picked in the sidebar) has no evaluation to compare. Add "
            "`run.evaluate(val_loader, split=\"val\")` after training to record one row per sample, or pick an "
            "evaluated run in the sidebar.")
    st.stop()
others = _shared.comparable_runs(runs_dir, str(run.path))
for name, why in others.attrs.get("skipped", {}).items():
    st.caption(f"{md(name)} is left out: {md(why)}")
if others.empty:
    st.info(f"Nothing to compare {md(run.name)} with: comparing needs a second run of the same task with an "
            f"evaluation in {md(runs_dir)}. Train the changed model with `hooks.watch(..., run_dir=...)` and call "
            "`run.evaluate(val_loader, split=\"val\")` on the same samples (same ids) as this run, then pick it "
            "here.")
    st.stop()

same_data = bool(others["same_data"].any())
if not same_data:
    st.info(f"No other run in {md(runs_dir)} was evaluated on the same data as {md(run.name)} (the same sample ids "
            "with the same labels): a comparison needs the changed model evaluated on the same samples.")
left, right = st.columns([3, 1])
# runs are told apart by folder, as in the sidebar: copies of a run share their manifest's name
names = [Path(p).name for p in others["path"]]
other_data = {n for n, same in zip(names, others["same_data"]) if not same}
name_b = left.selectbox("Run B, compared with run A (the run picked in the sidebar)", names,
                        index=0 if same_data else None, placeholder="pick a run (none on the same data)",
                        key=f"compare_b_{run.name}",
                        format_func=lambda n: f"{n} (other data)" if n in other_data else n,
                        help="Other evaluated runs of this folder: those evaluated on the same data as A (the same "
                             "ids with the same labels) first, each group most recent first.")
if name_b is None:  # nothing on the same data: no comparison until one is asked for
    st.stop()
row_b = others.iloc[names.index(name_b)]
splits = [s for s in evaluated if s in row_b["splits"]]
if not splits:
    st.info(f"{md(run.name)} and {md(name_b)} have no evaluated split in common ({md(run.name)}: "
            f"{md(', '.join(evaluated))}; {md(name_b)}: {md(', '.join(row_b['splits']))}). Evaluate both on the "
            "same split to compare them.")
    st.stop()
split = right.selectbox("Split", splits, index=splits.index("val") if "val" in splits else 0,
                        key=f"compare_split_{name_b}")
path_a, path_b = str(run.path), str(row_b["path"])
try:
    c = _shared.comparison(path_a, run.data_version(), path_b, diagnostics.open_run(path_b).data_version(), split)
except diagnostics.DiagnosticsError as exc:
    st.error(f"These runs cannot be compared: {md(exc)}")
    st.stop()
s = c.summary
classification = c.task == "classification"
st.caption(f"A = **{md(c.run_a)}** (evaluated at step {s['step_a']}), B = **{md(c.run_b)}** (step {s['step_b']}); "
           f"split {md(split)}, {c.task}.")
for note in c.warnings:
    st.warning(md(note), icon=":material/warning:")

# -- headline -----------------------------------------------------------------------------
cols = st.columns(6)
cols[0].metric("Samples in both", f"{s['shared']:,}",
               help=f"{s['only_a']} only in A, {s['only_b']} only in B: every number here covers the shared ones")
good, bad = c.outcomes
if classification:
    cols[1].metric("Accuracy A", f"{s['accuracy_a']:.1%}")
    cols[2].metric("Accuracy B", f"{s['accuracy_b']:.1%}", delta=f"{100 * s['accuracy_delta']:+.1f} points")
else:
    cols[1].metric("MAE A", f"{s['mae_a']:.4g}")
    cols[2].metric("MAE B", f"{s['mae_b']:.4g}", delta=f"{s['mae_delta']:+.3g}", delta_color="inverse")
cols[3].metric(good.capitalize(), f"{s[good]:,}", help="wrong in A, right in B" if classification else
               f"|error| fell by more than {s['tolerance']:.3g} (10% of A's median |error|)")
cols[4].metric(bad.capitalize(), f"{s[bad]:,}", help="right in A, wrong in B" if classification else
               f"|error| rose by more than {s['tolerance']:.3g}")
cols[5].metric("p-value", f"{s['p_value']:.3g}", help=f"{s['test']} of {good} against {bad}: the chance of a split "
               "at least this uneven if B were no better and no worse than A")
verdict = c.verdict()
if s["p_value"] < ALPHA:
    (st.success if s[good] > s[bad] else st.error)(md(verdict))
else:
    st.info(md(verdict))

# -- charts -------------------------------------------------------------------------------
if classification:
    chart_left, chart_right = st.columns(2)
    chart_left.plotly_chart(figures.class_delta_figure(c.per_class), key="compare_classes")
    chart_right.plotly_chart(figures.loss_scatter_figure(c.samples, c.task), key="compare_scatter")
else:
    st.plotly_chart(figures.loss_scatter_figure(c.samples, c.task), key="compare_scatter")

# -- the samples that changed -------------------------------------------------------------
_positions.compare_section(run, diagnostics.open_run(path_b), split, r.class_names)

st.subheader(f"{good.capitalize()} and {bad} samples")
table = c.changed(r.class_names)
if table.empty:
    st.info(f"No shared sample was {good} or {bad}.")
else:
    what = "loss" if classification else "abs_error"
    id_text = st.columns([1, 2])[0].text_input("Sample id contains", key="compare_id", placeholder="e.g. 123")
    page = paging.page_of(paging.search_ids(table, id_text), *_shared.pager("compare_pages", "compare_table", id_text))
    _shared.page_controls("compare_pages", page, f", {good} first, each group by how much the "
                          f"{'loss' if classification else '|error|'} moved. Select a row to open it in Sample detail.")
    number = st.column_config.NumberColumn(format="%.3f")
    numbers = [f"{what}_a", f"{what}_b"] + ([] if classification else ["label", "prediction_a", "prediction_b"])
    event = st.dataframe(page.rows, hide_index=True, on_select="rerun", selection_mode="single-row",
                         key="compare_table", column_config=dict.fromkeys(numbers, number))
    picked = page.rows["sample_id"].iloc[[i for i in event.selection.rows if i < len(page.rows)]].tolist()
    for col, (label, path, name) in zip(st.columns(2), (("A", path_a, c.run_a), ("B", path_b, c.run_b))):
        if col.button(f"Open in Sample detail, as run {label} ({md(name)}) saw it", disabled=not picked,
                      key=f"compare_open_{label}"):
            st.session_state["sample_id"], st.session_state["sample_split"] = picked[0], split
            st.session_state["run_path"] = path  # the sidebar picker follows
            st.switch_page("pages/sample.py", query_params={"run": Path(path).name})

# -- by review tag -----------------------------------------------------------------------
st.subheader("By review tag")
# the tags Error review shows for A's evaluation: A's data, from every run of the folder
per_tag = c.per_tag(_shared.sample_tags(runs_dir, c.dataset_a))
if per_tag.empty:
    st.info(f"No sample of {md(c.run_a)}'s {md(split)} evaluation is tagged yet. Tag the failures on the Error "
            f"review page (with {md(c.run_a)} picked in the sidebar: select rows, pick or type a tag such as "
            f"'too dark', Save), then come back here to see how many of each tag {md(c.run_b)} fixed and broke.")
else:
    st.markdown("\n".join(f"- {md(line)}" for line in c.tag_sentences(per_tag)))
    st.dataframe(per_tag, hide_index=True, key="compare_tags",
                 column_config={**{col: col.replace("_", " ") for col in per_tag.columns},
                                "tagged": st.column_config.NumberColumn(help="tagged samples both runs evaluated"),
                                "not_in_b": st.column_config.NumberColumn(
                                    "not in B", help=f"tagged samples {md(c.run_b)} did not evaluate")})
    st.caption(f"Tags on {md(c.run_a)}'s evaluated data from every run in the folder, as Error review shows them.")

# -- what else differs --------------------------------------------------------------------
tabs = st.tabs((["Per class"] if classification else []) + ["Configuration", "Final scalars", "Health findings"])
config_tab, scalar_tab, health_tab = tabs[-3:]
if classification:
    with tabs[0]:
        st.dataframe(c.per_class_points(), hide_index=True, key="compare_classes_table",
                     column_config={"recall_a": st.column_config.NumberColumn("recall A", format="%.1f%%"),
                                    "recall_b": st.column_config.NumberColumn("recall B", format="%.1f%%"),
                                    "delta": st.column_config.NumberColumn("B − A (points)", format="%+.1f")})
with config_tab:
    if c.config.empty:
        st.info("What the runs recorded about themselves is the same: the `config=` dict, model, optimiser, "
                "loss and seed. Settings not passed in `config=` (epochs, data, augmentation) are not compared.")
    else:
        as_text = lambda v: "—" if v is None else str(v)  # noqa: E731  (mixed types: one column of text)
        st.dataframe(c.config.assign(value_a=c.config["value_a"].map(as_text),
                                     value_b=c.config["value_b"].map(as_text)),
                     hide_index=True, key="compare_config")
with scalar_tab:
    if c.scalars.empty:
        st.info("Neither run logged a loss or val/ scalars.")
    else:
        st.dataframe(c.scalars, hide_index=True, key="compare_scalars")
        st.caption("The last value of each: the training loss and what run.evaluate (or run.log_scalar) logged "
                   "under val/.")
with health_tab:
    if c.health.empty:
        st.info("Both runs have the same health findings (by rule and layer); see the Health page for them.")
    else:
        runs = {"A": f"A ({c.run_a})", "B": f"B ({c.run_b})"}
        st.dataframe(c.health.assign(only_in=c.health["only_in"].map(runs)), hide_index=True, key="compare_health")
        st.caption("A finding only in A is one that B no longer shows; only in B, one that B brought.")
