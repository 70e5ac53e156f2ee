"""Data map: training dynamics per sample (confidence vs variability) and the samples most
likely to be mislabeled."""

import streamlit as st

from diagnostics import dynamics as dyn
from diagnostics import sample_figures
from diagnostics import tags as tag_store
from pages import _shared

run = _shared.current_run()
path, version = str(run.path), run.data_version()
st.title("Data map")
d = _shared.dynamics(path, version, "train")
if d.empty:
    st.info("No training dynamics in this run. Pass sample ids when logging batches — "
            "`run.log_batch(outputs, labels, ids=batch_indices, loss=loss)` — to record every sample "
            "on every step.")
    st.stop()
# the paper's split by shares (midpoint thresholds put nearly all of a short run from
# scratch in "ambiguous")
regions = dyn.data_map_regions(d, *dyn.share_thresholds(d))
counts = regions.value_counts()
cols = st.columns(4)
cols[0].metric("Samples", f"{len(d):,}")
for col, region in zip(cols[1:], ("easy", "ambiguous", "hard-to-learn")):
    col.metric(region.capitalize(), f"{int(counts.get(region, 0)):,}")
st.caption("Regions by shares, as in Swayamdipta et al. 2020: the most variable third is ambiguous; of the "
           "rest, the least confident third is hard-to-learn (a third, two ninths and four ninths of the "
           "samples). Those counts come from the split, not from the data: where a sample sits on the map, "
           "and which region its class or tag falls in, is the finding.")
st.plotly_chart(sample_figures.data_map_figure(d, regions), key="datamap_scatter")

st.subheader("Likely label errors")
class_names = run.manifest.get("class_names")
top = d.sort_values("label_error_score", ascending=False).head(100)
table = top[["sample_id"]].assign(
    label=top["label"].map(lambda v: _shared.class_label(class_names, v)),
    score=top["label_error_score"], confidence=top["confidence"], variability=top["variability"],
    aum=top["aum"], correct=top["correct_frac"], region=regions.loc[top.index],
)
event = st.dataframe(table, hide_index=True, on_select="rerun", selection_mode="multi-row", key="datamap_table")
picked = table.iloc[event.selection.rows]["sample_id"].tolist() if event.selection.rows else []
_shared.tagging_form(run, tag_store.dataset_key("train", d["sample_id"], d["label"]), picked, "datamap")
st.caption("Score: the label's margin (its logit minus the largest other logit) averaged over training with "
           "weights growing with the step, negated: samples whose given label keeps losing, late in training, rank "
           "first (a late-weighted area under the margin, after Pleiss et al. 2020). On digits with 10% flipped "
           "labels its precision among the top k is 0.98 (benchmarks/label_noise.py).")
