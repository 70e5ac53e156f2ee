"""Plotly figure builders. Each takes frames (from a `Run`'s readers or from the analysis
modules) and returns a `go.Figure`, never a `Run`: the caller reads, the builder draws. Nothing
here knows about Streamlit, so a test (or a notebook) can call them directly; empty input gives
a figure that says why it is blank.

One module per view: `curves` (scalars over steps), `distributions` (one layer over steps, all
layers at one step), `outputs` (outputs vs labels), `errors` (error review), `embedding` (the
embedding map), `sample` (one sample), `positions` (errors over tokens, pixels and labels), `dynamics`
(the data maps), `compare` (two runs), `ensemble` (several runs as one);
`common` holds what they share. Every builder is re-exported here:

    from diagnostics import figures
    figures.quantile_bands_figure(run.distributions("activation", layers=["conv1"]))
"""

from diagnostics.figures.common import empty_figure, log_ticks
from diagnostics.figures.compare import class_delta_figure, loss_scatter_figure
from diagnostics.figures.curves import ema, runs_scalar_figure, runs_scalars_figure, scalar_figure
from diagnostics.figures.distributions import (
    histogram_heatmap_figure,
    layer_label,
    layers_at_step_figure,
    quantile_bands_figure,
    runs_histograms_figure,
    runs_quantiles_figure,
    update_ratio_figure,
)
from diagnostics.figures.dynamics import data_map_figure, residual_map_figure
from diagnostics.figures.embedding import embedding_figure
from diagnostics.figures.ensemble import ensemble_accuracy_figure, phi_heatmap_figure
from diagnostics.figures.errors import (
    class_metrics_figure,
    confusion_figure,
    prediction_figure,
    reliability_figure,
    residual_figure,
    slices_figure,
)
from diagnostics.figures.outputs import (
    class_distribution_figure,
    class_share_gap_figure,
    pooled_class_counts,
    value_bands_figure,
    value_distribution_figure,
)
from diagnostics.figures.positions import (
    label_metrics_figure,
    mask_overlay_figure,
    overlap_figure,
    position_changes_figure,
    position_confusion_figure,
    token_loss_figure,
)
from diagnostics.figures.sample import preview_figure, probability_figure, sample_history_figure

__all__ = [
    "class_delta_figure", "class_distribution_figure", "class_metrics_figure", "class_share_gap_figure",
    "confusion_figure", "data_map_figure", "ema", "embedding_figure", "empty_figure", "histogram_heatmap_figure",
    "layer_label", "layers_at_step_figure", "log_ticks", "loss_scatter_figure", "pooled_class_counts",
    "prediction_figure", "preview_figure", "probability_figure", "quantile_bands_figure", "reliability_figure",
    "residual_figure", "residual_map_figure", "runs_histograms_figure", "runs_quantiles_figure", "runs_scalar_figure",
    "runs_scalars_figure", "sample_history_figure",
    "scalar_figure", "slices_figure", "update_ratio_figure", "value_bands_figure", "value_distribution_figure",
    "ensemble_accuracy_figure", "phi_heatmap_figure",
    "label_metrics_figure", "mask_overlay_figure", "overlap_figure", "position_changes_figure",
    "position_confusion_figure", "token_loss_figure",
]
