"""Health rule for units that never differ: weights initialised to one constant.

Gradient descent cannot break a symmetry the initialisation set up: if every unit of a
layer has the same incoming weights and the layer that reads them the same outgoing ones,
every unit computes the same output and receives the same gradient, so they stay identical
for ever and the layer works as if it had one unit (Goodfellow, Bengio & Courville, *Deep
Learning*, 2016, §8.4: "the most important thing is to break symmetry"). A constant
`nn.init.constant_`/`zeros_`/`ones_` on hidden layers, or a hand-made init that forgets the
random part, does this; nothing fails, the loss falls a little and stops.

The hooks see it at the first capture: a weight of two or more dimensions whose values are
all equal (min = max), and its bias too (units that differ by their bias get different
gradients). Only a hidden layer whose reader is constant too is locked: the
readers' outgoing weights differ per unit otherwise, and the first step tells the units
apart; the last layer's rows (one per class or output) get different gradients anyway, and
an embedding's rows (one per token) too. A zero-initialised last layer is a common,
deliberate choice and draws nothing.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from diagnostics.health import charts
from diagnostics.health.common import Finding, dist, make_finding, module_types
from diagnostics.health.problems import NOT_LEARNING, same_layer
from diagnostics.health.registry import rule

# Modules whose weight rows are not units that see the same input (one row per token).
ROW_PER_INPUT = ("Embedding", "EmbeddingBag")
REFERENCE = "Goodfellow, Bengio & Courville, Deep Learning (2016), §8.4: initialisation must break symmetry"


def _matrices(run) -> list[dict]:
    """The trainable weights of two or more dimensions with several rows, in the model's
    order, but those of embeddings."""
    types = module_types(run)
    out = []
    for p in run.manifest.get("parameters", []) or []:
        shape = p.get("shape") or []
        module = p.get("name", "").rsplit(".", 1)[0]
        if len(shape) >= 2 and shape[0] > 1 and p.get("requires_grad", True) and not any(
                str(types.get(module, "")).startswith(t) for t in ROW_PER_INPUT):
            out.append(p)
    return out


def _first_rows(run) -> pd.DataFrame:
    w = dist(run, "weight")
    if w.empty:
        return w
    return w.sort_values("step").groupby("layer", as_index=False).first()


def _weight_chart(run, finding: Finding) -> go.Figure:
    return charts.across_layers(run, "weight", finding.step_start, "weights at the first capture: min and max")


@rule("Units that never differ: a hidden layer's weights all one value at initialisation, and the layer that "
      "reads it too, so every unit gets the same gradient and they stay identical.",
      severities=("warning",), evidence=_weight_chart,
      explains=(("dead_units", same_layer), ("saturation", same_layer), "stuck_parameters", "update_ratio",
                "vanishing_gradients", "activation_scale_depth", *NOT_LEARNING))
def rule_symmetric_units(run) -> list[Finding]:
    """A hidden weight (2+ dimensions, 2+ rows, not an embedding) whose values, and its bias's,
    are all equal at its first capture, read by a next weight that is constant too (warning). Reference:
    Goodfellow et al. 2016, §8.4."""
    matrices, first = _matrices(run), _first_rows(run)
    if len(matrices) < 2 or first.empty:
        return []
    rows = first.set_index("layer")

    def one_value(name: str) -> bool:
        return name in rows.index and rows.loc[name, "min"] == rows.loc[name, "max"]

    def bias_alike(weight: str) -> bool:  # units that differ by their bias get different gradients
        bias = weight.rsplit(".", 1)[0] + ".bias"
        return bias not in rows.index or one_value(bias)

    constant = [one_value(p["name"]) and rows.loc[p["name"], "count"] > 1 for p in matrices]
    locked = [(p, matrices[i + 1]) for i, p in enumerate(matrices[:-1])
              if constant[i] and constant[i + 1] and bias_alike(p["name"])]
    if not locked:
        return []
    names = [p["name"] for p, _ in locked]
    step = int(rows.loc[names[0], "step"])
    units = {p["name"]: int(p["shape"][0]) for p, _ in locked}
    value = float(rows.loc[names[0], "min"])
    return [make_finding(
        "symmetric_units", "warning", names[0].rsplit(".", 1)[0], (step, step),
        f"The units of {', '.join(n.rsplit('.', 1)[0] for n in names)} never differ: every weight of "
        f"{names[0]} is {value:.4g} at step {step}, and so are those of the layer that reads it "
        f"({locked[0][1]['name']}), so each of its {units[names[0]]} units computes the same output and gets "
        f"the same gradient; the layer trains as if it had one unit.",
        "Initialise weights randomly (keep PyTorch's default init, or nn.init.kaiming_uniform_ / xavier_uniform_); "
        "a constant init is only safe for biases, normalisation scales and the last layer.",
        {"parameters": names, "readers": [r["name"] for _, r in locked], "value": value, "units": units},
        REFERENCE)]
