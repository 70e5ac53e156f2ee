"""Health rules on the activations: dead ReLU units, saturated tanh/sigmoid units, the
activation scale drifting across depth at initialisation, and unnormalised inputs.

Each rule is registered with `@rule` (its description and evidence chart beside it); it
reads only what the run recorded and returns no finding when that is missing.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import plotly.graph_objects as go

from diagnostics.health import charts
from diagnostics.health.common import (
    NORM_TYPES,
    Finding,
    dist,
    layer_order,
    make_finding,
    module_params,
    module_types,
    runs_of_true,
)
from diagnostics.health.problems import (
    NOT_LEARNING,
    cause,
    growing,
    high_ratio,
    low_ratio,
    shrinking,
    starved,
    symptom,
)
from diagnostics.health.registry import rule

# Dead units and saturation: share of units / values, held on this many consecutive captures.
DEAD_FRAC_THRESHOLD = 0.5
SATURATED_FRAC_THRESHOLD = 0.5
MIN_CONSECUTIVE_CAPTURES = 3
# Activation std of the last parametrised layer over the first one, at the first capture.
ACTIVATION_DEPTH_RATIO = 10.0
# Hidden layers a chain needs before its drift counts as "across depth": over one pair of
# layers a scale change is often deliberate (GPT-2's residual projection c_proj initialised at
# 0.02/sqrt(2·n_layer), an attention average over positions), and it compounds only with depth
# (Glorot & Bengio 2010, §4.2: the variance changes multiplicatively per layer).
MIN_DEPTH_LAYERS = 3
# Layers whose output scale is their own parameters', not propagated from their input: an
# embedding's output is its initialisation (N(0, 0.02²) in GPT-2/nanoGPT, N(0, 1) by default).
SCALE_SOURCE_TYPES = ("Embedding", "EmbeddingBag")
# A layer reads the module before it when its estimated input RMS is within this factor of
# that module's output RMS: dropout scales by 1/sqrt(1-p) (1.4x at p=0.5), pooling and
# flattening change little, while attention's key reads the LayerNorm output (~1) beside a
# query whose output is ~0.1 with the 0.02 init (10x).
LINK_RMS_FACTOR = 3.0
# Inputs left unnormalised: first module's output (or the input itself) at the first capture.
INPUT_SCALE_THRESHOLD = 10.0
INPUT_RMS_THRESHOLD = 3.0
# Inputs far below unit scale: an estimated RMS under 0.01 (100x below standardised inputs; pixels in
# 0..1 have RMS 0.3-0.6, CartPole states ~0.05, pixels divided by 255 twice ~0.002): the first layer's
# output is mostly its bias, and its weights would have to grow ~1/RMS to read them (LeCun et al.
# 1998, §4.3). Not judged when a normalisation layer comes next (it rescales whatever the first layer
# passes on), nor on a batch under LOW_RMS_MIN_BATCH samples: from one sample (an RL policy's step)
# the bias-input cross term swamps an input this small, and the estimate says nothing.
INPUT_RMS_LOW = 0.01
LOW_RMS_MIN_BATCH = 16


def _share_chart(column: str, threshold: float, what: str):
    """Evidence of dead_units / saturation: the layer's share `column` over the steps."""

    def chart(run, finding: Finding) -> go.Figure | None:
        if not finding.layer:
            return None
        return charts.fraction_over_steps(run, finding.layer, column, threshold, f"{finding.layer}: {what}")

    return chart


def _depth_chart(run, finding: Finding) -> go.Figure:
    return charts.across_layers(run, "activation", finding.step_start, "activation std across depth")


def _sustained(run, column: str, threshold: float, rule_name: str, what: str, advice: str,
               reference: str) -> list[Finding]:
    d = dist(run, "activation")
    if d.empty or column not in d:
        return []
    findings = []
    for layer in layer_order(run, "activation", d["layer"].unique()):
        rows = d[d["layer"] == layer].sort_values("step")
        values = rows[column].to_numpy(dtype=np.float64)
        if np.isnan(values).all():
            continue
        # captures holding NaN/Inf belong to the nonfinite rule (ReLU(NaN) is never positive)
        finite = (rows["nan_count"].fillna(0) + rows["inf_count"].fillna(0)).to_numpy() == 0
        runs = [r for r in runs_of_true((np.nan_to_num(values, nan=-1.0) >= threshold) & finite)
                if r[1] - r[0] + 1 >= MIN_CONSECUTIVE_CAPTURES]
        if not runs:
            continue
        i, j = max(runs, key=lambda r: (r[1] - r[0], -r[0]))
        seg = values[i:j + 1]
        steps = rows["step"].to_numpy()
        severity = "error" if rule_name == "dead_units" and seg.min() >= 0.99 else "warning"
        findings.append(make_finding(
            rule_name, severity, layer, (steps[i], steps[j]),
            f"{layer}: {seg.mean():.0%} of {what} on average (min {seg.min():.0%}, max {seg.max():.0%}) "
            f"on {j - i + 1} consecutive captures, steps {steps[i]}-{steps[j]} (threshold {threshold:.0%}).",
            advice,
            {column + "_mean": seg.mean(), column + "_min": seg.min(), column + "_max": seg.max(),
             "captures": j - i + 1, "steps": steps[i:j + 1].tolist(), "threshold": threshold},
            reference,
        ))
    return findings


@rule("Dead ReLU units: a layer's units never positive over the batch on 3+ consecutive captures "
      "(error when all are).", severities=("warning", "error"),
      evidence=_share_chart("dead_frac", DEAD_FRAC_THRESHOLD, "share of units never active"),
      explains=("vanishing_gradients", ("update_ratio", symptom(low_ratio)),
                ("stuck_parameters", symptom(starved)), *NOT_LEARNING))
def rule_dead_units(run) -> list[Finding]:
    """ReLU-family layers whose units never fire: `dead_frac` ≥ 0.5 on ≥ 3 consecutive
    captures (error when every unit is dead). A dead unit passes no gradient, so it never
    recovers. Reference: Lu et al. 2019, "Dying ReLU and Initialization"; cs231n notes
    ("as much as 40% of your network can be dead")."""
    return _sustained(
        run, "dead_frac", DEAD_FRAC_THRESHOLD, "dead_units", "units never positive over the batch",
        "Check the initialisation (He/Kaiming for ReLU, biases at zero or small positive), lower the "
        "learning rate or warm it up, add normalisation (BatchNorm/LayerNorm) before the activation, "
        "or use LeakyReLU/GELU so that units can recover.",
        "Lu et al. 2019, Dying ReLU and Initialization (arXiv:1903.06733); cs231n, Neural Networks Part 1",
    )


@rule("Saturated tanh/sigmoid units: most values within 1% of the bounds on 3+ consecutive captures.",
      severities=("warning",),
      evidence=_share_chart("saturated_frac", SATURATED_FRAC_THRESHOLD, "share of values at the bounds"),
      explains=("vanishing_gradients", ("update_ratio", symptom(low_ratio)),
                ("stuck_parameters", symptom(starved)), *NOT_LEARNING))
def rule_saturation(run) -> list[Finding]:
    """tanh/sigmoid-family layers stuck at their bounds: `saturated_frac` ≥ 0.5 on ≥ 3
    consecutive captures. Saturated units have a near-zero derivative and stop learning.
    Reference: Glorot & Bengio 2010, "Understanding the difficulty of training deep
    feedforward neural networks" (saturation of sigmoid layers)."""
    return _sustained(
        run, "saturated_frac", SATURATED_FRAC_THRESHOLD, "saturation", "values within 1% of the bounds",
        "Use Xavier/Glorot initialisation for tanh/sigmoid, normalise the inputs and add normalisation "
        "before the activation, lower the learning rate, or switch hidden layers to ReLU/GELU "
        "(keep sigmoid only at the output, with a logits-based loss).",
        "Glorot & Bengio 2010, Understanding the difficulty of training deep feedforward neural networks",
    )


def _links(run, step0: int, rows) -> dict[str, bool | None]:
    """For each Linear/Conv layer: does it read the module recorded just before it in the
    model's order? Its input RMS (estimated from its output and weights, `_input_rms`) within
    LINK_RMS_FACTOR of that module's output RMS: True; beyond: False (it reads another tensor);
    None where the weights cannot tell (other layer types)."""
    order = layer_order(run, "activation", rows.index)
    links: dict[str, bool | None] = {}
    for before, layer in zip(order, order[1:]):
        rms = _input_rms(run, layer, step0, rows.loc[layer])
        prev = math.sqrt(_second_moment(rows.loc[before]))
        links[layer] = None if rms is None or not prev > 0 else 1 / LINK_RMS_FACTOR <= rms / prev <= LINK_RMS_FACTOR
    return links


def _chains(run, layers: list[str], links: dict) -> list[list[str]]:
    """`layers` (the parametrised ones, in the model's order) cut into chains along which a
    scale can drift: a normalisation layer's output has std ~1 by construction and an
    embedding's is its own initialisation (GPT-2 and nanoGPT draw it from N(0, 0.02²) on
    purpose), so neither is propagated from the layer before it: each starts a new chain and
    belongs to none. A layer that does not read the module before it (`links` False) starts one."""
    types = module_types(run)
    chains, current = [], []
    for layer in layers:
        if types.get(layer, "").startswith((*NORM_TYPES, *SCALE_SOURCE_TYPES)):
            chains.append(current)
            current = []
            continue
        if links.get(layer) is False:
            chains.append(current)
            current = []
        current.append(layer)
    return [c for c in [*chains, current] if len(c) >= MIN_DEPTH_LAYERS]


@rule("Activation scale drifting across depth at initialisation: along a chain of 3+ hidden layers, each "
      "reading the one before it with no normalisation or embedding between them, the last one's std over the "
      "first's beyond 10x either way (info where the weights cannot confirm the chain).",
      severities=("warning", "info"), evidence=_depth_chart,
      explains=(("vanishing_gradients", cause(shrinking)), ("saturation", cause(growing))))
def rule_activation_scale_depth(run) -> list[Finding]:
    """Activation scale drifting across depth at initialisation: at the first capture, the
    std of the last layer of a chain of ≥ 3 parametrised hidden layers over the first one's,
    below 1/10 or above 10 (the worst chain; the output head is left out, since small logits
    at initialisation are a deliberate choice). A chain ends at a normalisation layer or an
    embedding (`_chains`): a LayerNorm resets the scale, so a transformer's 0.02 embedding
    followed by ln_f at ~1 is by design, not drift. A good initialisation keeps the variance
    of activations constant along a chain. Reference: Glorot & Bengio 2010 (Xavier);
    He et al. 2015 (Kaiming); Ioffe & Szegedy 2015 (normalisation makes the scale of the
    layers before it irrelevant to the layers after it)."""
    d = dist(run, "activation")
    if d.empty:
        return []
    step0 = int(d["step"].min())
    rows = d[(d["step"] == step0) & np.isfinite(d["std"]) & np.isfinite(d["mean"])].set_index("layer")
    rows = rows[~rows.index.duplicated()]
    at = rows["std"]
    params = module_params(run)
    layers = [l for l in layer_order(run, "activation", at.index) if params.get(l, 0) > 0]
    links = _links(run, step0, rows)
    scored = [(float(at[c[-1]] / at[c[0]]), c) for c in _chains(run, layers[:-1], links) if at[c[0]] > 0]
    scored = [(r, c) for r, c in scored if math.isfinite(r) and r > 0]
    if not scored:
        return []
    ratio, chain = max(scored, key=lambda rc: abs(math.log(rc[0])))
    first, last = chain[0], chain[-1]
    if 1 / ACTIVATION_DEPTH_RATIO <= ratio <= ACTIVATION_DEPTH_RATIO:
        return []
    evidence = {"ratio_last_to_first": ratio, "std_by_layer": {l: float(at[l]) for l in chain},
                "step": step0, "threshold": ACTIVATION_DEPTH_RATIO}
    verb, factor = ("shrinks", 1 / ratio) if ratio < 1 else ("grows", ratio)
    whole = len(chain) == len(layers) - 1
    # warning only where every link of the chain is seen in the data (each layer's input is the
    # output before it); a chain of layers whose inputs cannot be estimated may be side by side
    # (attention's query, key and value) rather than one after the other: info
    unseen = [l for l in chain[1:] if links.get(l) is not True]
    evidence["unverified_links"] = unseen
    return defer_to_input_scale(run, make_finding(
        "activation_scale_depth", "info" if unseen else "warning", last, (step0, step0),
        f"At step {step0} the activation std {verb} {factor:.3g}x from {first} ({at[first]:.3g}) "
        f"to {last} ({at[last]:.3g}) across {len(chain)} layers"
        f"{'' if whole else ' with no normalisation or embedding between them'} "
        f"(threshold {ACTIVATION_DEPTH_RATIO:.0f}x).",
        "Initialise for the activation: He/Kaiming (nn.init.kaiming_normal_) for ReLU, Xavier/Glorot "
        "for tanh/sigmoid; or add normalisation (BatchNorm/LayerNorm) between layers.",
        evidence, "Glorot & Bengio 2010; He et al. 2015, Delving Deep into Rectifiers"))


def defer_to_input_scale(run, finding: Finding) -> list[Finding]:
    """A depth/initialisation finding on a run whose inputs are unnormalised: the input
    scale explains it (a BatchNorm after a first layer fed raw pixels divides its gradient
    by the pre-norm std), so it becomes info and points at the input_scale finding."""
    scale = rule_input_scale(run)
    if not scale:
        return [finding]
    return [replace(
        finding, severity="info",
        message=finding.message + f" The unnormalised inputs at {scale[0].layer} explain this (see input_scale).",
        advice="Normalise the inputs first (input_scale finding) and check again; change the initialisation "
               "or the architecture only if this persists.",
        evidence={**finding.evidence, "deferred_to": "input_scale"})]


def _second_moment(row) -> float:
    return float(row["std"]) ** 2 + float(row["mean"]) ** 2


def _input_rms(run, layer: str, step: int, out_row) -> float | None:
    """The RMS of a Linear/Conv layer's input, estimated from its output and its weights at
    the first capture: E[out²] ≈ fan_in · E[w²] · E[x²] + E[b²] (zero-mean random weights
    independent of the input, as at initialisation). None when the weights are missing."""
    params = {p.get("name"): p for p in run.manifest.get("parameters", []) or []}
    shape = (params.get(f"{layer}.weight") or {}).get("shape") or []
    if len(shape) < 2 or not module_types(run).get(layer, "").startswith(("Linear", "Conv1d", "Conv2d", "Conv3d")):
        return None
    w = dist(run, "weight")
    if w.empty:
        return None
    w = w[w["step"] == w["step"].min()].set_index("layer")
    if f"{layer}.weight" not in w.index:
        return None
    fan_in = int(np.prod(shape[1:]))
    w2 = _second_moment(w.loc[f"{layer}.weight"])
    b2 = _second_moment(w.loc[f"{layer}.bias"]) if f"{layer}.bias" in w.index else 0.0
    x2 = (_second_moment(out_row) - b2) / (fan_in * w2) if fan_in * w2 > 0 else math.nan
    if not math.isfinite(x2):
        return None
    # at or below 0: the output is all bias, the inputs add nothing measurable (RMS ~0)
    return math.sqrt(x2) if x2 > 0 else 0.0


@rule("Unnormalised inputs: the first module's input RMS (estimated from its output and weights) above 3 or "
      "below 0.01 (scaled twice), or its output std above 10.", severities=("warning",), evidence=_depth_chart,
      explains=("activation_scale_depth", "saturation", "dead_units", "exploding_gradients", "grad_norm_spikes",
                ("update_ratio", symptom(high_ratio)), *NOT_LEARNING))
def rule_input_scale(run) -> list[Finding]:
    """Inputs left unnormalised, judged at the first capture on the first leaf module:
    a parameter-free one (Flatten, Identity) shows the input itself: std or |mean| > 10;
    a Linear/Conv one: its input's RMS, estimated from its output and weights
    (E[out²] ≈ fan_in·E[w²]·E[x²] + E[b²]), above 3 — standardised inputs have RMS 1,
    raw 0..16 digits 7.7, 0..255 pixels ~150 — or its output std above 10. Inputs in
    0..1 (RMS ~0.3-0.6) are not flagged: they train well with a standard initialisation.
    Reference: LeCun et al. 1998, "Efficient BackProp" (§4.3, normalising the inputs)."""
    d = dist(run, "activation")
    if d.empty:
        return []
    step0 = int(d["step"].min())
    at = d[(d["step"] == step0)].set_index("layer")
    layers = layer_order(run, "activation", at.index)
    if not layers:
        return []
    first = layers[0]
    row = at.loc[first]
    std, mean = float(row["std"]), float(row["mean"])
    if not (math.isfinite(std) and math.isfinite(mean)):
        return []
    kind = module_types(run).get(first, "")
    if any(kind.startswith(t) for t in NORM_TYPES):
        return []
    # a parametrised layer's mean is mostly its bias (a planted -10 bias is not an input
    # problem); a parameter-free first module (Flatten, Identity, Dropout) shows the input itself
    parametrised = module_params(run).get(first, 0) > 0
    rms = _input_rms(run, first, step0, row) if parametrised else None
    high_rms = rms is not None and rms > INPUT_RMS_THRESHOLD
    normalised_next = len(layers) > 1 and any(module_types(run).get(layers[1], "").startswith(t) for t in NORM_TYPES)
    shape = (run.manifest.get("output_shapes") or {}).get(first) or []
    batch = shape[0] if len(shape) >= 2 else len(shape)  # an unbatched (features,) output: one sample
    low_rms = rms is not None and rms < INPUT_RMS_LOW and not normalised_next and batch >= LOW_RMS_MIN_BATCH
    if low_rms:
        what = (f"its inputs have an estimated RMS of {rms:.2g} ({1 / max(rms, 1e-3):.0f}x or more below "
                f"standardised inputs; threshold {INPUT_RMS_LOW:g}): its output is mostly its bias. The inputs look "
                "scaled twice (e.g. divided by 255 after ToTensor, which already scales to [0, 1])")
    elif not high_rms and std <= INPUT_SCALE_THRESHOLD and (parametrised or abs(mean) <= INPUT_SCALE_THRESHOLD):
        return []
    else:
        what = (f"its inputs have an estimated RMS of {rms:.3g} (threshold {INPUT_RMS_THRESHOLD:g}; 1 when "
                f"standardised) and it outputs std {std:.3g}" if rms is not None else
                f"it outputs values with std {std:.3g} and mean {mean:.3g} (threshold {INPUT_SCALE_THRESHOLD:g})")
        what += ". The inputs look unnormalised"
    return [make_finding(
        "input_scale", "warning", first, (step0, step0),
        f"At step {step0} the first module {first} ({kind or 'module'}): {what}.",
        ("Scale the inputs once: check each step of the preprocessing (ToTensor already maps 0..255 to [0, 1]), "
         "then standardise to zero mean and unit variance per channel (transforms.Normalize with the training "
         "set's mean and std)." if low_rms else
         "Normalise the inputs to zero mean and unit variance per channel (e.g. transforms.Normalize with the "
         "training set's mean and std, or divide pixels by 255 and standardise), or start with a "
         "normalisation layer."),
        {"std": std, "mean": mean, "input_rms": rms, "module_type": kind, "threshold": INPUT_SCALE_THRESHOLD,
         "rms_threshold": INPUT_RMS_THRESHOLD, "rms_low": INPUT_RMS_LOW, "too_small": low_rms},
        "LeCun et al. 1998, Efficient BackProp, §4.3",
    )]


# Inputs identical across the batch: every ReLU unit of a dense layer is then either on for the
# whole batch or off for it, so its share of zeros equals its share of units never on (two
# rationals k/F, compared within float rounding). With inputs that differ, a unit on for some
# samples and off for others (zero_frac > dead_frac) is all but certain over a batch of 2+.
SAME_SHARE_TOL = 1e-6
CONSTANT_MIN_CAPTURES = 2


def _constant_batch_layers(run) -> tuple[list[str], list[int]]:
    """(layers, captured steps): the dense ReLU layers (N x F outputs, N ≥ 2) that at every capture
    (≥ 2) had some units off for the whole batch and every other unit on for all of it; empty when
    any such layer had a unit on for part of the batch."""
    d = dist(run, "activation")
    if d.empty or "dead_frac" not in d or "zero_frac" not in d:
        return [], []
    shapes = run.manifest.get("output_shapes") or {}
    layers, steps = [], set()
    for layer in layer_order(run, "activation", d["layer"].unique()):
        shape = shapes.get(layer) or []
        rows = d[(d["layer"] == layer) & np.isfinite(d["dead_frac"]) & (d["nan_count"].fillna(0) == 0)]
        if len(shape) != 2 or shape[0] < 2 or len(rows) < CONSTANT_MIN_CAPTURES:
            continue
        zero, dead = rows["zero_frac"].to_numpy(float), rows["dead_frac"].to_numpy(float)
        if not (np.abs(zero - dead) <= SAME_SHARE_TOL).all():
            return [], []  # units that differ across the batch: the inputs differ
        if ((zero > 0) & (zero < 1)).all():
            layers.append(layer)
            steps.update(rows["step"].tolist())
    return layers, sorted(steps)


def _same_prediction(run, steps: list[int]) -> bool | None:
    """Whether the predicted class (or value) was the same for the whole batch at every capture
    (None: no output stream recorded)."""
    out = dist(run, "output")
    out = out[out["layer"].isin(["train/class", "train/value"]) & out["step"].isin(steps)] if not out.empty else out
    return None if out.empty else bool((out["std"].fillna(0) <= SAME_SHARE_TOL).all())


def inputs_constant(run) -> bool:
    """Whether the run's batches hold one input repeated (`constant_inputs`' evidence): a rule
    that blames the labels or the init rules this out first."""
    layers, steps = _constant_batch_layers(run)
    return bool(layers) and _same_prediction(run, steps) is not False


@rule("Inputs identical across the batch (a Dataset returning one sample, a broadcast input): every ReLU unit is on "
      "for the whole batch or off for it, and the model predicts one class for all.", severities=("error",),
      evidence=_share_chart("zero_frac", DEAD_FRAC_THRESHOLD, "share of zeros (= share of units never on)"),
      explains=("dead_units", "vanishing_gradients", ("update_ratio", symptom(low_ratio)),
                ("stuck_parameters", symptom(starved)), *NOT_LEARNING))
def rule_constant_inputs(run) -> list[Finding]:
    """The batch's inputs are all the same: in every dense ReLU layer (N x F outputs, N ≥ 2)
    at every capture (≥ 2), the share of zeros equals the share of units never on over the
    batch (within 1e-6) with some units off, so each unit is on for every sample or for none,
    and the predicted class (or value) is the same for the whole batch. A network's units
    respond to differences between inputs; with none, it can only learn the label prior, and
    `dead_units` and `labels_unlearnable` would blame the init or the labels. An error.
    Reference: Karpathy 2019, "A Recipe for Training Neural Networks" ("visualize just before
    the net": inspect the batch the model is given); PyTorch docs, torch.utils.data.Dataset
    (`__getitem__` returns the sample at the index)."""
    layers, steps = _constant_batch_layers(run)
    same = _same_prediction(run, steps) if layers else None
    if not layers or same is False:
        return []
    d = dist(run, "activation")
    first = d[(d["layer"] == layers[0]) & d["step"].isin(steps)]
    predicted = " and the predicted output was the same for the whole batch" if same else ""
    where = f"layer{'s' if len(layers) > 1 else ''} {', '.join(layers)}"
    return [make_finding(
        "constant_inputs", "error", layers[0], (steps[0], steps[-1]),
        f"The batch's inputs look identical: in {where}, at each of {len(steps)} captures (steps "
        f"{steps[0]}-{steps[-1]}), every unit was on for the whole batch or off for all of it (share of zeros "
        f"{float(first['zero_frac'].iloc[0]):.0%} = share of units never on){predicted}. A model given one input "
        "can only learn the label prior.",
        "Look at one batch before the model (x.std(0) should not be all 0): check the Dataset's __getitem__ uses "
        "its index (self.x[idx], not self.x[0]), the sampler and collate_fn, and any .expand()/repeat of the input.",
        {"layers": layers, "steps": steps, "zero_frac_first": float(first["zero_frac"].iloc[0]),
         "same_prediction": same, "tolerance": SAME_SHARE_TOL},
        "Karpathy 2019, A Recipe for Training Neural Networks; PyTorch docs: torch.utils.data.Dataset",
    )]
