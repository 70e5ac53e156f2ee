"""Chart pieces the rules' evidence figures share, built from the run's frames. A rule's own
evidence function (next to the rule, registered with it) picks one or builds its own.

Example::

    from diagnostics.health import charts
    charts.scalar_lines(run, ["grad_norm"], "global gradient norm", log_y=True)
"""

from __future__ import annotations

import plotly.graph_objects as go

from diagnostics import figures
from diagnostics.figures import empty_figure


def fraction_over_steps(run, layer: str, column: str, threshold: float, title: str) -> go.Figure:
    """One layer's activation share column (dead_frac, saturated_frac) over the steps, with the threshold."""
    d = run.distributions("activation", layers=[layer]).sort_values("step")
    if d.empty:
        return empty_figure(f"no activations recorded for {layer}")
    fig = go.Figure(go.Scatter(x=d["step"], y=d[column], mode="lines+markers", name=column))
    fig.add_hline(y=threshold, line_dash="dash", annotation_text=f"threshold {threshold:.0%}")
    fig.update_layout(title=title, xaxis_title="step", yaxis_title=column, yaxis_range=[0, 1.05], height=300,
                      margin=dict(l=40, r=20, t=50, b=40))
    return fig


def across_layers(run, kind: str, step: int | None, title: str) -> go.Figure:
    """Every layer's summary of `kind` at `step` (the first capture when `step` was not captured)."""
    steps = run.steps(kind)
    if not steps:
        return empty_figure(f"no {kind} captures")
    at = step if step in steps else steps[0]
    return figures.layers_at_step_figure(run.distributions(kind, steps=[at]), run.layers(kind),
                                         f"{title} (step {at})")


def scalar_lines(run, names: list[str], title: str, log_y: bool = False) -> go.Figure:
    """The logged scalars `names` over the steps."""
    return figures.scalar_figure(run.scalars(names=names), names, title, log_y=log_y)


def loss_curves(run, title: str, smooth: float | None = None) -> go.Figure:
    """The training loss with every logged `.../loss` (validation) beside it."""
    s = run.scalars()
    names = ["loss"] + sorted(n for n in s["name"].unique() if n.endswith("/loss") and n != "loss")
    if smooth is None:
        return figures.scalar_figure(s, names, title)
    return figures.scalar_figure(s, names, title, smooth=smooth)


def with_line(fig: go.Figure, y: float | None, text: str) -> go.Figure:
    """`fig` with a dashed horizontal line at `y` (none when `y` is None)."""
    if y is not None:
        fig.add_hline(y=y, line_dash="dash", annotation_text=text)
    return fig


def loss_with_baseline(run, finding) -> go.Figure:
    """The training loss, with the trivial baseline when the finding's evidence has one."""
    return with_line(scalar_lines(run, ["loss"], "training loss"), (finding.evidence or {}).get("baseline"),
                     "trivial baseline")


def weight_norm(run, layer: str) -> go.Figure:
    """The norm of parameter `layer` over the captured steps."""
    d = run.distributions("weight", layers=[layer])
    if d.empty:
        return empty_figure(f"no weights recorded for {layer}")
    d = d.assign(name=f"‖{layer}‖", value=(d["count"] * (d["std"] ** 2 + d["mean"] ** 2)) ** 0.5)
    return figures.scalar_figure(d, [f"‖{layer}‖"], f"norm of {layer} over steps")


def parameter_states(run) -> go.Figure:
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
