"""Error review: the worst cases with filters, per-class metrics, the confusion matrix with
drill-down, calibration or residuals, where errors concentrate, tagging and export."""

import tempfile
from pathlib import Path

import streamlit as st

from diagnostics import errors, figures, slices
from diagnostics import tags as tag_store
from diagnostics.text import md
from pages import _positions, _shared

r = _shared.review("Error review", "errors")
run, path, version, split, dataset = r.run, r.path, r.version, r.split, r.dataset
task, class_names, tags = r.task, r.class_names, r.tags
samples = tag_store.with_tag_lists(r.samples, tags)
classification = r.classification
num_classes = errors.class_count(run.manifest, samples) if classification else 0
name = r.class_label
unit = None if classification else errors.target_unit(run.manifest)
position_info = _positions.info_of(run, split, r.step)
in_unit = f" ({unit})" if unit else ""  # plain text: table columns
in_unit_md = md(in_unit)  # in Markdown: metric labels, captions

# -- headline -----------------------------------------------------------------------------
head = _shared.error_headline(path, version, split, r.step, task)
cols = st.columns(4)
cols[0].metric("Samples", f"{head['samples']:,}")
if classification:
    cols[1].metric("Accuracy", f"{head['accuracy']:.1%}")
    cols[2].metric("Wrong", f"{head['wrong']:,}")
    cols[3].metric("Calibration error (ECE)", f"{head['ece']:.3f}")
    evaluation = next((e for e in reversed(run.manifest.get("evaluations") or []) if e.get("split") == split), {})
    if evaluation.get("outputs") == "probabilities":
        st.caption("The model outputs probabilities (it ends in a softmax): confidence and calibration read them as "
                   "they are, not through a second softmax. A CrossEntropyLoss on them applies its own log_softmax "
                   "(see Health).")
else:
    cols[1].metric(f"MAE{in_unit_md}", f"{head['mae']:.3g}")
    cols[2].metric(f"RMSE{in_unit_md}", f"{head['rmse']:.3g}")
    cols[3].metric(f"Bias{in_unit_md}", f"{head['bias']:+.3g}", help="mean residual (prediction − label)")
    st.caption(md(errors.regression_loss_note(unit, run.manifest.get("loss_fn"))))

# -- filters ------------------------------------------------------------------------------
with st.expander("Filters and order of the worst cases", expanded=False):
    f1, f2, f3 = st.columns(3)
    true_class = pred_class = conf = None
    if classification:
        classes = list(range(num_classes))
        true_class = f1.multiselect("True class", classes, format_func=name, key="err_true") or None
        pred_class = f2.multiselect("Predicted class", classes, format_func=name, key="err_pred") or None
        lo, hi = f3.slider("Confidence", 0.0, 1.0, (0.0, 1.0), 0.01, key="err_conf")
        conf = (lo, hi) if (lo, hi) != (0.0, 1.0) else None
    g1, g2, g3 = st.columns(3)
    loss_label = "Loss" if classification else f"Loss{' (' + unit + ')²' if unit else ''}"
    loss_lo = g1.number_input(f"{loss_label} at least", min_value=0.0, value=None, key="err_loss_lo")
    loss_hi = g2.number_input(f"{loss_label} at most", min_value=0.0, value=None, key="err_loss_hi")
    id_text = g3.text_input("Sample id contains", key="err_id", placeholder="e.g. 123")
    h1, h2 = st.columns([2, 1])
    tag_filter = h1.multiselect("Tag", sorted(tags["tag"].unique()) if not tags.empty else [], key="err_tags") or None
    orders = errors.review_orders(task)
    order = h2.selectbox("Order", list(orders), key=f"err_order_{task}")
    # over positions a sample is rarely wholly wrong (its accuracy is a fraction): all, worst first
    only_wrong = classification and st.toggle("Only wrong predictions", value=position_info is None,
                                              key="err_only_wrong",
                                              help="samples whose prediction (over positions: the most frequent "
                                                   "predicted class) is not the label (the most frequent label)")
loss_range = None
if loss_lo is not None or loss_hi is not None:
    loss_range = (loss_lo or 0.0, float("inf") if loss_hi is None else loss_hi)
    if loss_range[0] > loss_range[1]:
        st.error(f"The loss filter from {loss_range[0]:g} to {loss_range[1]:g} is empty: it is left out. "
                 "Make 'at least' no larger than 'at most'.")
        loss_range = None
review_filter = errors.ReviewFilter(true_class=true_class, predicted_class=pred_class, confidence_range=conf,
                                    loss_range=loss_range, outcome="wrong" if only_wrong else None, tags=tag_filter,
                                    id_contains=id_text)

# an evaluation of outputs with a position axis, or several labels per sample: one more tab
over = [f"Over {_positions.UNITS[position_info['layout']]}"] if position_info else []
if classification:
    worst_tab, confusion_tab, class_tab, calib_tab, slice_tab, *more = st.tabs(
        ["Worst cases", "Confusion matrix", "Per class", "Calibration", "Where errors concentrate", *over])
else:  # no confusion, per-class or reliability views of a regression
    worst_tab, scatter_tab, calib_tab, slice_tab, *more = st.tabs(
        ["Worst cases", "Predicted vs true", "Residuals", "Where errors concentrate", *over])
    confusion_tab = class_tab = None
position_tab = more[0] if more else None


def _with_thumbnails(table):
    """The table with a thumbnail of each sample's stored input first (none stored: no column)."""
    urls = _shared.thumbnails(path, version, split, tuple(table["sample_id"]))
    if urls.notna().any():
        return table.assign(input=table["sample_id"].map(urls))[["input", *table.columns]]
    return table


with worst_tab:
    number, size = _shared.pager("err_pages", "err_table", (review_filter, order))
    sort_by, ascending = orders[order]
    page = errors.page_table(samples, task, review_filter, sort_by, ascending, number, size,
                             tag_frame=tags if tag_filter else None)
    _shared.page_controls("err_pages", page, f" ({order}). Select rows to tag them or to open one in Sample detail.")
    table = _with_thumbnails(errors.review_table(page.rows, task, class_names))
    numbers = {"loss": st.column_config.NumberColumn(
        "loss" if classification else f"loss{' (' + unit + ')²' if unit else ''}", format="%.3f",
        help="cross-entropy of the label" if classification else "squared error (prediction − label)²")}
    if not classification:
        numbers.update({c: st.column_config.NumberColumn(f"{c}{in_unit}", format="%.2f")
                        for c in ("label", "prediction")})
        numbers["residual"] = st.column_config.NumberColumn(f"residual{in_unit}", format="%+.2f",
                                                            help="prediction − label")
        numbers["abs_error"] = st.column_config.NumberColumn(f"|error|{in_unit}", format="%.2f")
    event = st.dataframe(table, hide_index=True, on_select="rerun", selection_mode="multi-row", key="err_table",
                         row_height=48 if "input" in table else None, height=520,
                         column_config={"input": st.column_config.ImageColumn("input", width="small"), **numbers,
                                        "confidence": st.column_config.ProgressColumn(min_value=0, max_value=1),
                                        "right": st.column_config.ProgressColumn(
                                            "right", min_value=0, max_value=1, format="percent",
                                            help="share of the sample's counted positions predicted right"),
                                        "worst_position_loss": st.column_config.NumberColumn(
                                            "worst position's loss", format="%.3f")})
    picked = table["sample_id"].iloc[[i for i in event.selection.rows if i < len(table)]].tolist()
    left, right = st.columns([2, 1])
    with left:
        _shared.tagging_form(run, dataset, picked, "errors")
    with right:
        if st.button("Open in Sample detail", disabled=len(picked) != 1, key="err_open",
                     help="Select exactly one row of the table to open it"):
            st.session_state["sample_id"], st.session_state["sample_split"] = picked[0], split
            st.switch_page("pages/sample.py")
        if len(picked) != 1:
            st.caption(f"Select exactly one row to open it in Sample detail ({len(picked)} selected).")
        notes = _shared.sample_notes(r.runs_dir, dataset)
        if not tags.empty or not notes.empty:
            with tempfile.TemporaryDirectory() as tmp:
                files = tag_store.export_tagged(samples, tags, notes, Path(tmp) / f"{run.name}-{split}-review")
                for f in files:
                    st.download_button(f"Export tagged cases ({f.suffix[1:].upper()})", f.read_bytes(),
                                       file_name=f.name, key=f"err_export_{f.suffix}")

if classification:
    with confusion_tab:
        matrix = _shared.confusion(path, version, split, r.step, num_classes)
        names = [name(i) for i in range(num_classes)]
        st.plotly_chart(figures.confusion_figure(matrix, names), key="err_confusion")
        c1, c2 = st.columns(2)
        # opens on the largest confusion (off the diagonal), not on class 0 and its worst
        worst_true, _ = errors.most_confused(matrix)
        t = c1.selectbox("True class", range(num_classes), format_func=name, key="cell_true", index=worst_true)
        p = c2.selectbox("Predicted class", range(num_classes), format_func=name, key="cell_pred",
                         index=errors.most_confused(matrix, t)[1])
        in_cell = errors.ReviewFilter(true_class=t, predicted_class=p)
        cell_page, cell_size = _shared.pager("err_cell_pages", "err_cell", in_cell)
        cell = errors.page_table(samples, task, in_cell, page=cell_page, page_size=cell_size)
        _shared.page_controls("err_cell_pages", cell,
                              f" labelled {md(name(t))} and predicted {md(name(p))}, highest loss first")
        cell_rows = errors.review_table(cell.rows, task, class_names)
        cell_table = _with_thumbnails(cell_rows[[c for c in ("sample_id", "label", "prediction", "right", "loss",
                                                             "confidence") if c in cell_rows]])
        st.dataframe(cell_table, hide_index=True, key="err_cell", row_height=48 if "input" in cell_table else None,
                     column_config={"input": st.column_config.ImageColumn("input", width="small"),
                                    "loss": st.column_config.NumberColumn(format="%.3f"),
                                    "confidence": st.column_config.ProgressColumn(min_value=0, max_value=1),
                                    "right": st.column_config.ProgressColumn(min_value=0, max_value=1,
                                                                             format="percent")})
    with class_tab:
        metrics = errors.class_metrics(samples, num_classes, class_names)
        st.plotly_chart(figures.class_metrics_figure(metrics), key="err_metrics")
        st.dataframe(metrics.drop(columns="class").rename(columns={"name": "class"}), hide_index=True)
    with calib_tab:
        frame, ece = errors.calibration(samples)
        st.plotly_chart(figures.reliability_figure(frame, ece), key="err_reliability")
else:
    with scatter_tab:
        st.plotly_chart(figures.prediction_figure(samples, unit), key="err_predicted_true")
        st.caption(f"One point per evaluated sample{in_unit_md}; on the dashed line y = x the prediction is exact, "
                   "above it the model overestimates. A cloud flatter than the line is regression to the mean.")
    with calib_tab:
        st.plotly_chart(figures.residual_figure(samples, unit), key="err_residuals")
        _, by_label = errors.regression_summary(samples)
        st.caption(f"Residuals by label range (equal-width bins){in_unit_md}:")
        st.dataframe(by_label.rename(columns={"mean_residual": f"mean residual{in_unit}", "mae": f"MAE{in_unit}",
                                              "label_lo": f"label from{in_unit}", "label_hi": f"label to{in_unit}"}),
                     hide_index=True, key="err_by_label")

with slice_tab:
    found = _shared.error_slices(path, version, split, r.step, task, tags,
                                 None if class_names is None else tuple(class_names))
    if found.empty:
        st.info("No slice of the data has an error rate significantly above the overall rate "
                "(single features and pairs of them, at least 20 samples, tested with a Bonferroni-corrected "
                "binomial test).")
    else:
        st.plotly_chart(figures.slices_figure(found), key="err_slices")
        for _, row in found.iterrows():
            text = slices.describe_slice(row)
            st.markdown(f"- {md(text if classification else text.replace(' wrong', ' with a large error'))}")
        if not classification:
            st.caption("For regression, an error is a |residual| in the worst quarter of the evaluated samples.")
        st.caption("Method: quantile thresholds of each input statistic, classes, tags and confidence, and pairs of "
                   "them, ranked by (error rate − overall)·√size; only slices significant after a Bonferroni "
                   "correction are listed.")

if position_tab is not None:
    with position_tab:
        _positions.error_review_section(r, position_info)
