"""Embedding map: UMAP of the evaluated samples' embeddings, coloured by correct/wrong,
class, loss or tag; a lasso or box selection lists those samples, to tag them. Until the UMAP
map is ready (computed in the background, then cached in the run), an exact PCA preview of the
same points is shown, labelled as such, with the UMAP's progress; the page then redraws itself."""

import streamlit as st

from diagnostics import embedding, figures
from diagnostics.text import md
from pages import _shared

N_EPOCHS = 200  # as separated as umap's default 500 on our checks, in half the time

r = _shared.review("Embedding map", "emb")
samples, tags = r.samples, r.tags

left, mid, right = st.columns(3)
if r.classification:
    classes = sorted(samples["label"].dropna().astype(int).unique())
    keep = left.multiselect("True class", classes, format_func=r.class_label, key="emb_classes")
    if keep:
        samples = samples[samples["label"].isin(keep)]
    if mid.toggle("Only wrong predictions", key="emb_wrong"):
        samples = samples[samples["correct"] == 0]
options = (["correct", "label", "prediction", "loss"] if r.classification else ["loss", "label", "prediction"])
tag_names = sorted(tags["tag"].unique()) if not tags.empty else []
color_by = right.selectbox("Colour by", options + [f"tag: {t}" for t in tag_names], key="emb_color")
if color_by.startswith("tag: "):
    tagged = set(tags.loc[tags["tag"] == color_by[5:], "sample_id"])
    samples = samples.assign(**{color_by: samples["sample_id"].isin(tagged)})

if samples.empty:
    st.info("No sample matches the filters.")
    st.stop()
try:
    points, status = embedding.project_or_preview(r.path, samples, n_epochs=N_EPOCHS)
except ValueError as exc:
    st.warning(f"No map: {md(exc)}")
    st.stop()


@st.fragment(run_every=1.0)
def _umap_progress(ticket: str) -> None:
    """Polls the background UMAP; reruns the page (preview → map) as soon as it is ready."""
    now = embedding.map_status(ticket)
    if now.state in ("ready", "failed"):
        st.rerun()
    else:
        st.info(f"{now.message}. Shown meanwhile: a PCA preview of the same points; the UMAP map "
                "replaces it by itself and is kept in the run for the next visit.")


preview = status.method == "pca preview"
if status.state == "failed":
    st.warning(status.message)
    if st.button("Try UMAP again", key="emb_retry"):
        embedding.project_or_preview(r.path, samples, n_epochs=N_EPOCHS, retry=True)
        st.rerun()
elif preview:
    _umap_progress(status.ticket)
dims = len(samples["embedding"].iloc[0])
waiting = "the UMAP failed" if status.state == "failed" else "UMAP on its way"
how = {"direct": " (shown as it is)", "pca": " mapped to 2-D with PCA (too few points for UMAP)",
       "umap": " mapped to 2-D with UMAP", "pca preview": f" — PCA preview ({waiting})"}[status.method]
st.caption(f"{len(samples):,} samples; embedding of {dims} dimensions{how}. Draw a lasso or box to select.")
label = {"umap": "UMAP", "pca preview": "PCA preview", "pca": "PCA", "direct": None}[status.method]
figure = figures.embedding_figure(points, samples, color_by=color_by, class_names=r.class_names, method=label)
event = st.plotly_chart(figure, on_select="rerun", selection_mode=("points", "box", "lasso"),
                        key="emb_preview" if preview else "emb_map")
picked = embedding.selection_ids(points, event.selection) if event and event.selection else []
if picked:
    chosen = samples[samples["sample_id"].isin(picked)]
    st.dataframe(chosen[["sample_id", "label", "prediction", "loss"]], hide_index=True, key="emb_picked")
_shared.tagging_form(r.run, r.dataset, picked, "embedding")
