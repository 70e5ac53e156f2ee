"""Outputs vs labels: the model's output distribution against the label distribution,
at one step and over steps — the first check after a baseline run."""

import streamlit as st

from diagnostics import errors, figures
from diagnostics import outputs as outputs_of
from pages import _shared

run = _shared.current_run()
path, version = str(run.path), run.data_version()
st.title("Outputs vs labels")

rank = _shared.rank_picker(run, "outputs_rank")
outputs = _shared.distributions(path, version, "output", rank=rank)
labels = _shared.distributions(path, version, "label", rank=rank)
if outputs.empty or labels.empty:
    st.info("No outputs recorded yet: pass `loss_fn=` (an nn.Module loss) to `hooks.watch`, or call "
            "`run.log_batch(outputs, labels)` in your loop.")
    st.stop()

splits = outputs_of.output_splits(labels)
split = st.selectbox("Split", splits, key="outputs_split") if len(splits) > 1 else splits[0]
class_names = run.manifest.get("class_names")
chosen = outputs_of.split_outputs(outputs, labels, split)
out, lab, classification, step_list = chosen.outputs, chosen.labels, chosen.classification, chosen.steps
pooled = classification and st.toggle(
    "Pool every captured step", value=False, key="outputs_pool",
    help="One captured batch is small; pooling sums the class counts of all captures")
if pooled:
    o, l = figures.pooled_class_counts(out), figures.pooled_class_counts(lab)
    title = f"class shares, {len(step_list)} captures pooled"
else:
    step = (st.select_slider("Step", step_list, value=step_list[-1], key="outputs_step") if len(step_list) > 1
            else step_list[0])
    o = out[out["step"] == step].iloc[0]
    l = lab[lab["step"] == step].iloc[0]
    title = f"class shares at step {step}" if classification else f"values at step {step}"

left, right = st.columns(2)
if classification:
    left.plotly_chart(figures.class_distribution_figure(o, l, class_names, title), width="stretch")
    right.plotly_chart(figures.class_share_gap_figure(out, lab, class_names), width="stretch")
else:
    unit = errors.target_unit(run.manifest)  # "value (breaths/min)" when the run names its unit
    values, bands = figures.value_distribution_figure(o, l, title), figures.value_bands_figure(out, lab)
    if unit:
        values.update_xaxes(title_text=f"value ({unit})")
        bands.update_yaxes(title_text=f"value ({unit})")
    left.plotly_chart(values, width="stretch")
    right.plotly_chart(bands, width="stretch")
st.caption("Each capture step shows the training batch of that step"
           + (f" on rank {rank}." if rank is not None else "."))
