"""One chart of the evidence behind each health finding, built from the run's frames."""

from __future__ import annotations

import plotly.graph_objects as go

from diagnostics import figures, health_data, schema
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


def _parameter_states(run) -> go.Figure:
    """Each parameter's size, coloured by whether it trains, is frozen or is left out of the optimizer."""
    params = run.manifest.get("parameters") or []
    if not params:
        return empty_figure("no parameters in the manifest")
    fig = go.Figure()
    for state, keep in (("trains", lambda p: p.get("requires_grad") and p.get("in_optimizer") is not False),
                        ("not in the optimizer", lambda p: p.get("requires_grad") and p.get("in_optimizer") is False),
                        ("frozen (requires_grad=False)", lambda p: not p.get("requires_grad"))):
        chosen = [p for p in params if keep(p)]
        if chosen:
            fig.add_bar(x=[p["name"] for p in chosen], y=[p.get("numel", 0) for p in chosen], name=state)
    fig.update_yaxes(type="log", dtick=1, title_text="values (log)")
    fig.update_layout(title="parameters: size and state", height=320,
                      margin=dict(l=40, r=20, t=50, b=40))
    return fig


def _loop_figure(run, finding) -> go.Figure | None:
    """Evidence of the training-loop rules (diagnostics.health_loop), or None for another rule."""
    rule, layer = finding.rule, finding.layer
    if rule == "gradients_not_reset":
        return _scalars(run, ["grad_norm"], "global gradient norm (grows when gradients are never reset)")
    if rule == "lr_collapse":
        lr = run.scalars(names=[layer or "lr"])
        return _scalars(run, [layer or "lr"], "learning rate", log_y=bool(len(lr)) and bool((lr["value"] > 0).all()))
    if rule == "not_in_optimizer":
        return _parameter_states(run)
    if rule == "batchnorm_small_batch":
        return _scalars(run, ["batchnorm_batch_size"], "batch size BatchNorm normalises over")
    if rule in ("weight_decay_dominates", "stuck_parameters") and layer:
        d = run.distributions("weight", layers=[layer])
        if d.empty:
            return empty_figure(f"no weights recorded for {layer}")
        d = d.assign(name=f"‖{layer}‖", value=(d["count"] * (d["std"] ** 2 + d["mean"] ** 2)) ** 0.5)
        return figures.scalar_figure(d, [f"‖{layer}‖"], f"norm of {layer} over steps")
    if rule in ("frozen_model", "eval_in_train_mode"):
        s = run.scalars()
        names = ["loss"] + sorted(n for n in s["name"].unique() if n.endswith("/loss") and n != "loss")
        return figures.scalar_figure(s, names, "training (and validation) loss")
    return None


def _data_rule_figure(run, finding) -> go.Figure | None:
    """Charts for the data and loss rules of `diagnostics.health_data` (None: not one of them)."""
    if finding.rule == "labels_unlearnable":
        fig = _scalars(run, ["loss"], "training loss against the label entropy")
        fig.add_hline(y=(finding.evidence or {}).get("label_entropy"), line_dash="dash", annotation_text="label entropy")
        return fig
    if finding.rule in ("softmax_wrong_dim", "nll_input", "softmax_before_cross_entropy"):
        names = [f"{schema.PROBE_PREFIX}train/{f}" for f in schema.PROBE_FIELDS[:4]]
        return _scalars(run, names, "loss inputs: distance from normalised per dimension (0: normalised)", log_y=True)
    if finding.rule == "regression_loss_on_class_ids":
        return figures.value_bands_figure(run.distributions("output", layers=["train/value"]),
                                          run.distributions("label", layers=["train/value"]))
    if finding.rule == "double_sigmoid":
        out = run.distributions("output", layers=["train/logits"]).sort_values("step")
        fig = go.Figure([go.Scatter(x=out["step"], y=out[c], name=f"{c} of the loss input", mode="lines+markers")
                         for c in ("min", "max")])
        for y, text in ((0, "0"), (1, "1")):
            fig.add_hline(y=y, line_dash="dash", annotation_text=text)
        fig.update_layout(title="range of what the loss is given (logits would leave [0, 1])", xaxis_title="step")
        return fig
    if finding.rule == "unshuffled_batches" and finding.layer == "train/class":
        shares = health_data.batch_label_shares(run)
        if shares.empty:
            return empty_figure("no per-batch labels recorded")
        grid = shares.pivot(index="label", columns="step", values="share")
        fig = go.Figure(go.Heatmap(z=grid.to_numpy(), x=grid.columns, y=[str(c) for c in grid.index],
                                   colorscale="Blues", colorbar={"title": "share"}))
        fig.update_layout(title="class shares of each training batch (shuffled: every column alike)",
                          xaxis_title="step", yaxis_title="label")
        return fig
    return None


def evidence_figure(run, finding) -> go.Figure:
    """The chart that shows why `finding` fired (a Finding from `diagnostics.health`)."""
    rule, layer = finding.rule, finding.layer
    if (loop := _loop_figure(run, finding)) is not None:
        return loop
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
        return figures.data_map_figure(run.sample_dynamics("train"))
    if (fig := _data_rule_figure(run, finding)) is not None:
        return fig
    return empty_figure("no chart for this finding")
