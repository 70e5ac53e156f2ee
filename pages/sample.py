"""Sample detail: one evaluated sample's input with its attribution, its probabilities,
its history over training, and its tags and note."""

import streamlit as st

from diagnostics import figures
from diagnostics.text import html, md
from pages import _positions, _shared

r = _shared.review("Sample detail", "sample")
path, version, split, step = r.path, r.version, r.split, r.step
samples = r.samples.sort_values("loss", ascending=False)
ids = samples["sample_id"].tolist()
wanted = st.session_state.get("sample_id")
sample_id = st.selectbox("Sample (worst first)", ids, index=ids.index(wanted) if wanted in ids else 0,
                         key=f"sample_pick_{split}_{step}")
st.session_state["sample_id"] = sample_id
row = samples.set_index("sample_id").loc[sample_id]
history, records, preview, attributions = _shared.sample_detail(path, version, split, sample_id)
name = r.class_label if r.classification else (lambda v: f"{v:.4g}")  # noqa: E731

position_info = _positions.info_of(r.run, split, step)
cols = st.columns(4)
if position_info and "position_accuracy" in row:  # a sample of many positions: how many are right
    unit = {"tokens": "tokens", "pixels": "pixels", "labels": "labels"}.get(position_info.get("layout"), "positions")
    cols[0].metric("Right", f"{row['position_accuracy']:.1%}",
                   help=f"share of the sample's counted {unit} predicted right (correct only when all are)")
    cols[1].metric("Counted", f"{int(row['positions_counted']):,} {unit}",
                   help=f"{unit} whose label is not the ignore_index ({position_info.get('ignore_index')})")
    cols[2].metric("Mean loss", f"{row['loss']:.3f}")
    cols[3].metric("Worst position's loss", f"{row['worst_position_loss']:.3f}")
else:
    cols[0].metric("Label", md(name(row["label"])))  # a metric's value is Markdown too
    cols[1].metric("Prediction", md(name(row["prediction"])))
    cols[2].metric("Loss", f"{row['loss']:.3f}")
    if r.classification:
        cols[3].metric("Confidence", f"{row['confidence']:.1%}")
    else:
        cols[3].metric("Residual", f"{row['residual']:+.3g}")
evaluated = [e for e in r.run.manifest.get("evaluations", []) if e.get("split") == split]
token_view = bool(position_info) and position_info.get("layout") == "tokens" and bool(evaluated) and \
    evaluated[-1].get("input_kind") == "tokens"  # the tokens below say more than a chart of their ids

left, right = st.columns([3, 2])
with left:
    if token_view:
        st.caption("The sample's tokens, coloured by loss, are below.")
    else:
        methods = list(dict.fromkeys(attributions["method"])) if not attributions.empty else []
        method = st.radio("Overlay", ["none", *methods], horizontal=True, key="sample_overlay",
                          format_func=lambda m: m.replace("_", " "),
                          help="Attributions are computed for the worst cases of each evaluation (run.evaluate("
                               "attribute_worst=...)).")
        att = attributions[attributions["method"] == method].iloc[0] if method != "none" else None
        st.plotly_chart(figures.preview_figure(preview.iloc[0] if not preview.empty else None, att,
                                               title=f"sample {html(sample_id)}"), key="sample_preview")
        if not methods:
            st.caption("No attribution for this sample: only the worst cases of an evaluation get them.")
with right:
    if r.classification:
        st.plotly_chart(figures.probability_figure(row["probs"], row["label"], row["prediction"], r.class_names),
                        key="sample_probs")
        if position_info:
            st.caption("Probabilities: the mean over the sample's counted positions; label and prediction: the most "
                       "frequent ones.")
    inputs = {c.removeprefix("input_"): f"{row[c]:.4g}" for c in samples.columns if c.startswith("input_")}
    if inputs:
        st.caption("Input statistics: " + ", ".join(f"{md(k)} {v}" for k, v in inputs.items()))
if position_info:  # its tokens, its masks or its labels, one by one
    _positions.sample_section(r, position_info, sample_id, preview.iloc[0] if not preview.empty else None)
st.plotly_chart(figures.sample_history_figure(records, history, r.task), key="sample_history")
st.caption(f"History within split **{md(split)}**: its evaluations and, when run.log_batch(..., ids=, split="
           f"{md(repr(split))}) logged it, its per-step records. Ids name samples of one split: training records of "
           "another split with the same id are a different sample and are not shown."
           + ("" if not records.empty else f" This sample has no per-step records in split {md(split)}."))

st.subheader("Tags and note")
store = _shared.tags_of(path)
current = r.tags[r.tags["sample_id"] == str(sample_id)]
st.markdown("Tags: " + (", ".join(md(t) for t in sorted(set(current["tag"]))) if not current.empty else "none yet"))
note = store.notes(r.dataset, [sample_id])
if not note.empty:
    st.markdown(f"Note: {md(note['note'].iloc[-1])}")
_shared.tagging_form(r.run, r.dataset, [str(sample_id)], "sample")
