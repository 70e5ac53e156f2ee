"""One chart of the evidence behind each health finding, built from the run's frames."""

from __future__ import annotations

import plotly.graph_objects as go

from diagnostics import figures, sample_figures
from diagnostics.figures import empty_figure


def _fraction_over_steps(run, layer: str, column: str, threshold: float, title: str) -> go.Figure:
    d = run.distributions("activation", layers=[layer]).sort_values("step")
    if d.empty:
        return empty_figure(f"no activations recorded for {layer}")
    fig = go.Figure(go.Scatter(x=d["step"], y=d[column], mode="lines+markers", name=column))
    fig.add_hline(y=threshold, line_dash="dash", annotation_text=f"threshold {threshold:.0%}")
    fig.update_layout(title=title, xaxis_title="step", yaxis_title=column, yaxis_range=[0, 1.05], height=300,
                      margin=dict(l=40, r=20, t=50, b=40))
    return fig


def _across_layers(run, kind: str, step: int | None, title: str) -> go.Figure:
    steps = run.steps(kind)
    if not steps:
        return empty_figure(f"no {kind} captures")
    at = step if step in steps else steps[0]
    return figures.layers_at_step_figure(run.distributions(kind, steps=[at]), run.layers(kind),
                                         f"{title} (step {at})")


def _scalars(run, names: list[str], title: str, log_y: bool = False) -> go.Figure:
    return figures.scalar_figure(run.scalars(names=names), names, title, log_y=log_y)


def evidence_figure(run, finding) -> go.Figure:
    """The chart that shows why `finding` fired (a Finding from `diagnostics.health`)."""
    rule, layer = finding.rule, finding.layer
    if rule == "dead_units" and layer:
        return _fraction_over_steps(run, layer, "dead_frac", 0.5, f"{layer}: share of units never active")
    if rule == "saturation" and layer:
        return _fraction_over_steps(run, layer, "saturated_frac", 0.5, f"{layer}: share of values at the bounds")
    if rule in ("vanishing_gradients", "exploding_gradients", "gradient_depth"):
        return _across_layers(run, "gradient", finding.step_start, "gradient std across depth")
    if rule in ("activation_scale_depth", "input_scale"):
        return _across_layers(run, "activation", finding.step_start, "activation std across depth")
    if rule == "grad_norm_spikes":
        fig = _scalars(run, ["grad_norm"], "global gradient norm", log_y=True)
        spikes = (finding.evidence or {}).get("spikes") or []
        if spikes:
            fig.add_trace(go.Scatter(x=[s["step"] for s in spikes], y=[s["grad_norm"] for s in spikes],
                                     mode="markers", name="spike", marker=dict(size=10, symbol="x", color="red")))
        return fig
    if rule == "update_ratio" and layer:
        return figures.update_ratio_figure(run.update_ratios(layers=[layer]), layer)
    if rule == "output_vs_label":
        out, lab = run.distributions("output"), run.distributions("label")
        if not lab.empty and "train/class" in set(lab["layer"]):
            out, lab = out[out["layer"] == "train/class"], lab[lab["layer"] == "train/class"]
            return figures.class_distribution_figure(figures.pooled_class_counts(out),
                                                     figures.pooled_class_counts(lab),
                                                     run.manifest.get("class_names"), "class shares, all captures")
        out, lab = out[out["layer"] == "train/value"], lab[lab["layer"] == "train/value"]
        return figures.value_bands_figure(out, lab)
    if rule in ("loss_vs_baseline", "nonfinite"):
        fig = _scalars(run, ["loss"], "training loss")
        baseline = (finding.evidence or {}).get("baseline")
        if baseline is not None:
            fig.add_hline(y=baseline, line_dash="dash", annotation_text="trivial baseline")
        return fig
    if rule == "overfitting":
        s = run.scalars()
        names = ["loss"] + sorted(n for n in s["name"].unique() if n.endswith("/loss") and n != "loss")
        return figures.scalar_figure(s, names, "training vs validation loss", smooth=0.6)
    if rule == "label_noise":
        return sample_figures.data_map_figure(run.sample_dynamics("train"))
    return empty_figure("no chart for this finding")
