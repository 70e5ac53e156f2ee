"""Data map: training dynamics per sample (confidence vs variability for classification,
mean |residual| vs its variability for regression), a shortlist of the samples most likely
to be mislabeled, and a grid of their inputs. A run whose model has not learned gets a
warning instead of the shortlist, one with flat probabilities a note (`dynamics.learning_check`)."""

import streamlit as st

from diagnostics import dynamics as dyn
from diagnostics import errors, figures, schema
from diagnostics.text import md
from pages import _shared

GRID_COLUMNS, GRID_ROWS = 8, 3
GRID_SEARCH = 100  # the grid shows the best-scored of this many shortlisted samples with a stored input

r = _shared.review("Data map")
path, version = r.path, r.version
d = _shared.dynamics(path, version, "train")
if d.empty:
    st.info("No training dynamics in this run. Pass sample ids when logging batches — "
            "`run.log_batch(outputs, labels, ids=batch_indices, loss=loss)` — to record every sample "
            "on every step.")
    st.stop()
found = _shared.data_map(path, version, r.run.manifest.get("task"))
regression, regions, cut = found.regression, found.regions, found.thresholds
class_names = None if regression else r.class_names
unit = errors.target_unit(r.run.manifest) if regression else None
in_unit = f" ({unit})" if unit else ""
check = dyn.regression_check(d) if regression else dyn.learning_check(d, r.run.manifest.get("num_classes"))
if check is not None and not check.learned:
    st.warning(check.summary())
    st.page_link("pages/health.py", label="Open Health", icon=":material/health_and_safety:")
elif check is not None and check.flat:
    st.info(check.summary())
cols = st.columns(4)
cols[0].metric("Samples", f"{len(d):,}")
for col, region in zip(cols[1:], dyn.REGIONS):
    col.metric(region.capitalize(), f"{found.counts[region]:,}")
if regression:
    records = found.median_records
    st.caption(f"Each point is a training sample over its training records (median {records}). x: the standard "
               f"deviation of its residual (prediction − target) over those records, y: its mean |residual|, both "
               f"in {md(unit) if unit else 'the target unit'}. Regions by shares, as in Swayamdipta et al. 2020: the "
               f"most variable third is ambiguous (residual std ≥ {cut[1]:.3g}: the prediction kept moving); of the "
               f"rest, the third "
               f"with the largest error is hard-to-learn (mean |residual| > {cut[0]:.3g}: the model settled far from "
               "the target, a wrong target or a hard input); the others are easy. The records before the model "
               "learned add to every sample's variability.")
    st.plotly_chart(figures.residual_map_figure(d, regions, cut, unit), key="datamap_scatter")
else:
    st.caption("Regions by shares, as in Swayamdipta et al. 2020: the most variable third is ambiguous; of the "
               "rest, the least confident third is hard-to-learn (a third, two ninths and four ninths of the "
               "samples). Those counts come from the split, not from the data: where a sample sits on the map, "
               "and which region its class or tag falls in, is the finding.")
    st.plotly_chart(figures.data_map_figure(d, regions, cut), key="datamap_scatter")

st.subheader("Likely target errors" if regression else "Likely label errors")
if check is not None and not check.learned:
    st.info("No target-error list: while the model does no better than the targets' mean, the largest errors are "
            "the extremes of the target range, not wrong targets (see the warning above)." if regression else
            "No label-error list: while the model is right about as often as chance, a sample's score measures "
            "the model, not its label (see the warning above). Once it learns, the samples whose label keeps "
            "losing are listed here.")
    st.stop()
shortlisted = int(dyn.suspicious(d, found).sum())
if not shortlisted and d["label_error_score"].isna().all():
    st.info("No sample has a label-error score: none has late training records with a margin (log ids with "
            "`run.log_batch(..., ids=)` through the end of training).")
    st.stop()
if not shortlisted:
    st.success(f"No likely {'target' if regression else 'label'} errors: "
               + ("no sample's late-weighted |residual| exceeds the hard-to-learn threshold." if regression else
                  "no training sample stays wrong late in training with another class confidently ahead"
                  f"; {int((dyn.label_verdict(d) == dyn.HARD).sum()):,} are hard (wrong late, classes close)."))
    st.stop()
left, right, _ = st.columns(3)
id_text = left.text_input("Sample id contains (in the shortlist)", key="datamap_id", placeholder="e.g. 123")
top_n = int(right.number_input("Shortlist: the best-scored", min_value=1, max_value=1000, value=50, step=10,
                               key="datamap_top"))
if regression:
    st.caption(f"{shortlisted:,} of {len(d):,} training samples have a score (late-weighted mean |residual|) above "
               f"the hard-to-learn threshold ({cut[0]:.3g}{in_unit}); the table lists the {min(top_n, shortlisted):,} "
               "best-scored of them.")
else:
    hard = int((dyn.label_verdict(d) == dyn.HARD).sum())
    st.caption(f"{shortlisted:,} of {len(d):,} training samples are suspected mislabeled: wrong in at least "
               f"{dyn.LATE_WRONG:.0%} of their late records with another class confidently ahead (margin below "
               f"{dyn.CONFIDENT_MARGIN:g} logits), as Health's label noise counts them; {hard:,} more are hard "
               f"(as often wrong, the classes close: not listed). The table lists the {min(top_n, shortlisted):,} "
               "best-scored suspects.")
page = dyn.suspects_page(d, found, class_names, *_shared.pager("datamap_pages", "datamap_table", (id_text, top_n)),
                         id_contains=id_text, suspicious_only=True, limit=top_n)
_shared.page_controls("datamap_pages", page, ", highest score first")
table = page.rows
thumbs = _shared.thumbnails(path, version, "train", tuple(table["sample_id"]))
if thumbs.notna().any():
    table = table.assign(input=table["sample_id"].map(thumbs))[["input", *table.columns]]
value = st.column_config.NumberColumn
event = st.dataframe(
    table, hide_index=True, on_select="rerun", selection_mode="multi-row", key="datamap_table",
    row_height=48 if "input" in table else None,
    column_config={"input": st.column_config.ImageColumn("input", width="small"),
                   "label": value(f"target{in_unit}", format="%.2f") if regression else "label",
                   "prediction": value(f"latest prediction{in_unit}", format="%.2f") if regression
                   else st.column_config.TextColumn("latest prediction"),
                   "score": value(f"score{in_unit}" if regression else "score", format="%.3f"),
                   "mean_abs_residual": value(f"mean |residual|{in_unit}", format="%.2f"),
                   "residual_std": value(f"residual std{in_unit}", format="%.2f")})
picked = table["sample_id"].iloc[[i for i in event.selection.rows if i < len(table)]].tolist()
_shared.tagging_form(r.run, schema.dataset_key("train", d["sample_id"], d["label"]), picked, "datamap")
if regression:
    st.caption(f"Score: the mean |residual| over training{in_unit}, weighted with the step so late records count "
               "most: a wrong target stays far from the prediction after the model has fitted the rest.")
else:
    st.caption("Score: the label's margin (its logit minus the largest other logit) averaged over training with "
               "weights growing with the step, negated: samples whose given label keeps losing, late in training, "
               "rank first (a late-weighted area under the margin, after Pleiss et al. 2020). On digits with 10% "
               "flipped labels its precision among the top k is 0.98 (benchmarks/label_noise.py).")

st.subheader("The suspects' inputs")
top = dyn.label_error_suspects(d, found, class_names, limit=min(top_n, GRID_SEARCH), suspicious_only=True)
thumbs = _shared.thumbnails(path, version, "train", tuple(top["sample_id"]))
if not thumbs.notna().any():
    st.info("No previews of training samples in this run, so their inputs cannot be shown: evaluate the train "
            "split too — `run.evaluate(train_loader, split=\"train\")` — to record them.")
    st.stop()
suspects = top[top["sample_id"].isin(thumbs.dropna().index)].head(GRID_COLUMNS * GRID_ROWS)
st.caption(f"The {len(suspects)} highest-scored shortlisted samples with a stored input, highest first, with the "
           "label and the latest prediction in training. Open one to see it in Sample detail.")
for start in range(0, len(suspects), GRID_COLUMNS):
    for col, row in zip(st.columns(GRID_COLUMNS), suspects.iloc[start:start + GRID_COLUMNS].itertuples()):
        with col:
            st.image(thumbs[row.sample_id], width="stretch")
            shown = (f"target {row.label:.3g} · predicted {row.prediction:.3g}" if regression
                     else f"label {md(row.label)} · predicted {md(row.prediction)}")
            st.caption(f"**{md(row.sample_id)}** · score {row.score:.2f}  \n{shown}")
            if st.button("Open", key=f"datamap_open_{row.sample_id}", width="stretch"):
                st.session_state["sample_id"], st.session_state["sample_split"] = row.sample_id, "train"
                st.switch_page("pages/sample.py")
