"""Ensemble: would the run picked in the sidebar and the folder's other runs on the same data,
combined, beat the best of them? Their error correlation, the majority vote, the probability
average, the oracle, and the samples only one member gets right."""

from pathlib import Path

import streamlit as st

import diagnostics
from diagnostics import figures, paging
from diagnostics.ensemble import MIN_MEMBERS, TIE_BREAK
from diagnostics.text import md
from pages import _shared

MOST_MEMBERS = 8

r = _shared.review("Ensemble")
run = r.run
evaluated = list(dict.fromkeys(e.get("split") for e in run.manifest.get("evaluations") or []))
if not r.classification:
    st.info(f"{md(run.name)} is a {r.task} run: the ensemble view combines classification runs (votes, right or "
            "wrong per sample). Compare regression runs on the Compare runs page.")
    st.stop()
if not evaluated:
    st.info(f"{md(run.name)} (picked in the sidebar) has no evaluation. Add `run.evaluate(val_loader, split=\"val\")` "
            "after training to each run you want to combine, on the same samples, or pick an evaluated run.")
    st.stop()
others = _shared.comparable_runs(r.runs_dir, r.path)
for name, why in others.attrs.get("skipped", {}).items():
    st.caption(f"{md(name)} is left out: {md(why)}")
others = others[others["same_data"]]
# members are named by folder, as in the sidebar: copies of a run share their manifest's name
paths = {run.path.name: r.path, **{Path(p).name: str(p) for p in others["path"]}}
splits_of = {run.path.name: evaluated, **{Path(p).name: list(s) for p, s in zip(others["path"], others["splits"])}}
if len(paths) < MIN_MEMBERS:
    st.info(f"Nothing to combine {md(run.name)} with: an ensemble needs at least {MIN_MEMBERS} evaluated "
            f"classification runs on the same data (the same sample ids with the same labels) in {md(r.runs_dir)}. "
            "Train another model (another seed, architecture or preprocessing) and call "
            "`run.evaluate(val_loader, split=\"val\")` on the same samples.")
    st.stop()

left, right = st.columns([3, 1])
names = list(paths)
picked = left.multiselect(
    f"Members (at most {MOST_MEMBERS})", names, default=names[:MOST_MEMBERS], max_selections=MOST_MEMBERS,
    key=f"ensemble_members_{run.path.name}",
    help="The sidebar run and the folder's other runs evaluated on the same data, most recent first.")
if len(picked) < MIN_MEMBERS:
    st.info(f"Pick at least {MIN_MEMBERS} members.")
    st.stop()
splits = [s for s in evaluated if all(s in splits_of[n] for n in picked)]
if not splits:
    st.info("The picked members have no evaluated split in common. Evaluate them all on the same split.")
    st.stop()
split = right.selectbox("Split", splits, index=splits.index("val") if "val" in splits else 0,
                        key="ensemble_split")
member_paths = tuple(paths[n] for n in picked)
try:
    e = _shared.ensemble_of(member_paths, tuple(diagnostics.open_run(p).data_version() for p in member_paths), split)
except diagnostics.DiagnosticsError as exc:
    st.error(f"These runs cannot be combined: {md(exc)}")
    st.stop()
st.caption(f"{len(e.members)} members, on the {e.shared:,} samples of split {md(split)} that all of them evaluated "
           "(each member's latest evaluation).")
for note in e.warnings:
    st.warning(md(note), icon=":material/warning:")

# -- headline -----------------------------------------------------------------------------
best, best_accuracy = e.best_member
gain = e.gain()


def against_best(way: str) -> dict:
    """The metric's delta against the best member: grey and without an arrow when it rounds to 0."""
    points = round(100 * gain[way], 1)
    if points == 0:
        return {"delta": "0.0 points", "delta_color": "off", "delta_arrow": "off"}
    return {"delta": f"{points:+.1f} points"}


cols = st.columns(4)
cols[0].metric("Best member", f"{best_accuracy:.1%}", help=md(best))
cols[0].caption(md(best))
cols[1].metric("Majority vote", f"{e.majority_accuracy:.1%}", **against_best("majority vote"),
               help=f"each member votes its prediction; {e.majority_ties} tied vote(s): {TIE_BREAK}")
if e.probability_accuracy is None:
    cols[2].metric("Probability average", "—", help=md(e.probability_note))
else:
    cols[2].metric("Probability average", f"{e.probability_accuracy:.1%}",
                   **against_best("probability average"),
                   help="the class of highest mean probability over the members")
cols[3].metric("Oracle", f"{e.oracle_accuracy:.1%}", **against_best("oracle"),
               help="a sample counts when any member gets it right: the most a combination of these predictions "
                    "can reach")
reading, outcome = e.reading(), e.outcome()
(st.success if e.best_combination()[1] > best_accuracy else st.info)(
    md(f"{reading[0].upper()}{reading[1:]}. {outcome[0].upper()}{outcome[1:]}."))

# -- charts -------------------------------------------------------------------------------
chart_left, chart_right = st.columns(2)
chart_left.plotly_chart(figures.phi_heatmap_figure(e.phi), key="ensemble_phi")
chart_right.plotly_chart(figures.ensemble_accuracy_figure(e.accuracy, e.combined()), key="ensemble_accuracy")
st.caption("Phi is the correlation of two members' wrong/right indicators over the shared samples: 1, wrong on "
           "the same samples; 0, errors unrelated; below 0, one tends to be right where the other is wrong.")
for note in e.phi_notes:
    st.caption(md(note))

# -- the samples only one member gets right -----------------------------------------------
st.subheader("Samples only one member gets right")
table = e.only_one_right_named(r.class_names)
if table.empty:
    st.info("No shared sample is right in exactly one member.")
    st.stop()
by_member = table["member"].value_counts()
st.caption(", ".join(f"{md(m)}: {int(by_member.get(m, 0))}" for m in e.members) + ". What a vote can lose: the other "
           "members outvote the one right answer. Select a row to open it in Sample detail as that member saw it.")
id_text = st.columns([1, 2])[0].text_input("Sample id contains", key="ensemble_id", placeholder="e.g. 123")
page = paging.page_of(paging.search_ids(table, id_text), *_shared.pager("ensemble_pages", "ensemble_table", id_text))
_shared.page_controls("ensemble_pages", page)
event = st.dataframe(page.rows, hide_index=True, on_select="rerun", selection_mode="single-row",
                     key="ensemble_table",
                     column_config={"confidence": st.column_config.NumberColumn(format="%.3f")})
rows = [i for i in event.selection.rows if i < len(page.rows)]
chosen = page.rows.iloc[rows] if rows else None
member = None if chosen is None else str(chosen["member"].iloc[0])
if st.button(f"Open in Sample detail, as {md(member) if member else 'its member'} saw it", disabled=chosen is None,
             key="ensemble_open"):
    path = e.paths[e.members.index(member)]
    st.session_state["sample_id"], st.session_state["sample_split"] = str(chosen["sample_id"].iloc[0]), split
    st.session_state["run_path"] = path  # the sidebar picker follows
    st.switch_page("pages/sample.py", query_params={"run": Path(path).name})
