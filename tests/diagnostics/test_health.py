"""Health rules: planted defects in tiny seeded training runs, healthy runs that stay
quiet, and each rule on hand-built inputs."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import diagnostics
import hooks
from diagnostics import health
from diagnostics.health import Finding, check, loop, registry

# ---------------------------------------------------------------------------------
# Tiny training runs


def _blobs(n=256, d=10, c=3, seed=0):
    """A learnable c-class problem: the label is the argmax of a random linear map."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    return x, (x @ torch.randn(d, c, generator=g)).argmax(1)


def _train(model, x, y, tmp_path, name, steps=20, lr=0.05, adam=False, crit=None, batch=64, val=None,
           every=1, ids=False, seed=0):
    torch.manual_seed(seed)
    crit = crit or nn.CrossEntropyLoss()
    opt = (torch.optim.Adam(model.parameters(), lr=lr) if adam
           else torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9))
    with hooks.watch(model, optimizer=opt, loss_fn=None if ids else crit, run_dir=tmp_path, name=name,
                     every=every, task=None if not ids else "classification") as run:
        for step in range(steps):
            i = (step * batch) % len(x)
            idx = torch.arange(i, min(i + batch, len(x)))
            opt.zero_grad()
            out = model(x[idx])
            loss = crit(out, y[idx])
            if ids:
                run.log_batch(out, y[idx], ids=idx, loss=loss)
            loss.backward()
            opt.step()
            if val is not None and step % 5 == 4:
                with torch.no_grad():
                    run.log_scalar("val/loss", crit(model(val[0]), val[1]))
    return diagnostics.open_run(run.path)


def _he(model):
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)
    return model


def _deep(act, n_layers=8, width=32, std=0.01, d_in=10, zero_bias=False):
    torch.manual_seed(0)
    layers, d = [], d_in
    for _ in range(n_layers):
        lin = nn.Linear(d, width)
        nn.init.normal_(lin.weight, std=std)
        if zero_bias:
            nn.init.zeros_(lin.bias)
        layers += [lin, act()]
        d = width
    return nn.Sequential(*layers, nn.Linear(width, 3))


def _by_rule(findings, rule):
    return [f for f in findings if f.rule == rule]


def _only_info(findings):
    loud = [f"{f.severity} {f.rule} {f.layer}: {f.message}" for f in findings if f.severity != "info"]
    assert not loud, loud


# ---------------------------------------------------------------------------------
# Planted defects


def test_dead_relus_from_a_negative_bias(tmp_path):
    x, y = _blobs()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 3))
    nn.init.constant_(model[0].bias, -10.0)
    findings = check(_train(model, x, y, tmp_path, "dead"))
    dead = _by_rule(findings, "dead_units")
    assert [f.layer for f in dead] == ["1"]
    assert (dead[0].step_start, dead[0].step_end) == (0, 19)
    assert dead[0].severity == "error" and dead[0].evidence["dead_frac_min"] == 1.0
    # nothing reaches the output, so the model is stuck at the class prior: a symptom of the dead units,
    # shown under them (info in the findings), not a problem of its own
    base = _by_rule(findings, "loss_vs_baseline")
    assert base and base[0].severity == "info" and "no better than" in base[0].message
    assert base[0].evidence["deferred_to"] == "dead_units"
    first = health.problems(_train(model, x, y, tmp_path, "dead_again"))[0]
    assert first.cause.rule == "dead_units" and "loss_vs_baseline" in {s.rule for s in first.symptoms}
    # a -10 bias is not an input problem
    assert not _by_rule(findings, "input_scale")
    assert findings[0].severity == "error"


def test_deep_sigmoid_small_init_vanishes(tmp_path):
    x, y = _blobs()
    findings = check(_train(_deep(nn.Sigmoid), x, y, tmp_path, "sigmoid", lr=0.1))
    van = _by_rule(findings, "vanishing_gradients")
    assert len(van) == 1 and van[0].layer == "0" and (van[0].step_start, van[0].step_end) == (0, 2)
    assert van[0].evidence["ratio_first_to_last"] < 1e-2
    # the early layers do not move at all
    slow = {f.layer for f in _by_rule(findings, "update_ratio")}
    assert {"0.weight", "2.weight"} <= slow
    assert not _by_rule(findings, "saturation")  # small weights keep sigmoids at 0.5, not at the bounds


def test_deep_tanh_small_init_shrinks_activations(tmp_path):
    x, y = _blobs()
    run = _train(_deep(nn.Tanh, n_layers=6, zero_bias=True), x, y, tmp_path, "tanh", steps=6, lr=0.1)
    drift = health.rule_activation_scale_depth(run)
    assert len(drift) == 1
    f = drift[0]
    assert f.layer == "10" and f.step_start == f.step_end == 0  # the last hidden Linear, at step 0
    assert "shrinks" in f.message and f.evidence["ratio_last_to_first"] < 1e-3
    assert _by_rule(health.rule_gradient_depth(run), "vanishing_gradients")


def test_saturated_tanh_from_a_large_init(tmp_path):
    x, y = _blobs()
    run = _train(_deep(nn.Tanh, n_layers=3, std=2.0), x, y, tmp_path, "saturated", steps=8, lr=0.01)
    sat = health.rule_saturation(run)
    assert {f.layer for f in sat} == {"1", "3", "5"}
    assert all(f.step_start == 0 and f.step_end == 7 and f.evidence["saturated_frac_mean"] >= 0.5 for f in sat)


def test_exploding_learning_rate_gives_nan(tmp_path):
    x, y = _blobs()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 3))
    findings = check(_train(model, x * 1e3, y, tmp_path, "nan", steps=8, lr=1e30))
    nonfinite = _by_rule(findings, "nonfinite")
    assert len(nonfinite) == 1 and nonfinite[0].severity == "error"
    assert nonfinite[0].step_start == 1 and nonfinite[0].layer == "2"
    assert findings[0].rule == "nonfinite"
    # ReLU(NaN) is never positive: those captures are the NaN rule's, not dead units
    assert not _by_rule(findings, "dead_units")


def test_unnormalised_inputs(tmp_path):
    torch.manual_seed(0)
    x = torch.rand(256, 1, 8, 8) * 255
    y = (x.mean((1, 2, 3)) > 127.5).long()
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 2))
    found = health.rule_input_scale(_train(model, x, y, tmp_path, "raw", steps=3, lr=0.01))
    assert len(found) == 1 and found[0].layer == "0" and found[0].step_start == 0
    assert found[0].evidence["mean"] > 100
    # the same images scaled and standardised: quiet
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 2))
    assert not health.rule_input_scale(_train(model, (x / 255 - 0.5) / 0.29, y, tmp_path, "std", steps=3))


def test_unnormalised_inputs_through_a_first_linear(tmp_path):
    torch.manual_seed(0)
    x = torch.rand(128, 20) * 255
    y = (x[:, 0] > 127).long()
    model = nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 2))
    found = health.rule_input_scale(_train(model, x, y, tmp_path, "raw_lin", steps=3, lr=1e-4))
    assert len(found) == 1 and found[0].layer == "0" and found[0].evidence["std"] > 10


def test_raw_digit_pixels_through_conv_and_batchnorm(tmp_path):
    # the demo's raw-pixel run: 0..16 pixels into Conv2d + BatchNorm; the conv's output std
    # (4.4) is under 10, so only the input RMS estimated through its weights tells
    from hooks.demo import digits_tensors, small_cnn
    x, y, _, _ = digits_tensors(0, standardise=False)
    torch.manual_seed(0)
    findings = check(_train(small_cnn(), x, y, tmp_path, "raw_digits", steps=3, lr=0.05, batch=64))
    scale = _by_rule(findings, "input_scale")
    assert len(scale) == 1 and scale[0].layer == "0" and scale[0].step_start == 0
    true_rms = float(np.sqrt(np.mean(x[:64].numpy() ** 2)))  # the first batch, by numpy
    assert scale[0].evidence["input_rms"] == pytest.approx(true_rms, rel=0.25)
    # the depth findings it causes defer to it: info, no "He init" advice
    deferred = [f for f in findings if f.rule in ("activation_scale_depth", "vanishing_gradients")]
    assert deferred and all(f.severity == "info" and "He" not in f.advice for f in deferred)
    depth_rules = ("activation_scale_depth", "vanishing_gradients", "exploding_gradients", "dead_units")
    assert not [f.rule for f in findings if f.severity != "info" and f.rule in depth_rules]
    xs, ys, _, _ = digits_tensors(0, standardise=True)
    torch.manual_seed(0)
    std_run = _train(small_cnn(), xs, ys, tmp_path, "std_digits", steps=3, lr=0.05, batch=64)
    assert not health.rule_input_scale(std_run)


def test_class_imbalance_majority_predicted(tmp_path):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(512, 10, generator=g)
    y = torch.zeros(512, dtype=torch.long)
    y[torch.rand(512, generator=g) < 0.10] = 1
    y[torch.rand(512, generator=g) < 0.05] = 2
    torch.manual_seed(0)
    run = _train(nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 3)), x, y, tmp_path, "imb",
                 steps=30, lr=0.05)
    found = health.rule_output_vs_label(run)
    assert len(found) == 1 and found[0].layer == "train/class"
    assert "1" in found[0].evidence["under_predicted"] and "0" not in found[0].evidence["under_predicted"]
    assert found[0].evidence["predicted_share"]["0"] > 0.95
    assert (found[0].step_start, found[0].step_end) == (20, 29)  # the last third of the captures


def test_tiny_training_set_overfits(tmp_path):
    x, _ = _blobs(n=32, d=20, seed=3)
    y = torch.randint(0, 3, (32,), generator=torch.Generator().manual_seed(5))  # nothing to generalise
    val = _blobs(n=256, d=20, seed=4)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 256), nn.ReLU(), nn.Linear(256, 3))
    run = _train(model, x, y, tmp_path, "overfit", steps=80, lr=0.01, adam=True, batch=32, val=val, every=10)
    found = health.rule_overfitting(run)
    assert len(found) == 1
    f = found[0]
    assert f.step_end == 80 and f.step_start < 40  # log_scalar after opt.step(): the next step
    assert f.evidence["last_val_loss"] > f.evidence["best_val_loss"] and f.evidence["gap_end"] > f.evidence["gap_start"]


def test_flipped_labels_flagged_as_label_noise(tmp_path):
    x, y = _blobs(n=200, d=10, seed=7)
    flipped = torch.arange(0, 200, 10)  # 10% of the labels moved to the next class
    y = y.clone()
    y[flipped] = (y[flipped] + 1) % 3
    torch.manual_seed(0)
    model = _he(nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 3)))
    run = _train(model, x, y, tmp_path, "noisy", steps=60, lr=0.05, batch=50, ids=True, every=20)
    found = health.rule_label_noise(run)
    assert len(found) == 1
    top = set(found[0].evidence["top_ids"])
    # 60 steps: the model is sure of the true class for 7 of the 20 flipped samples, and
    # every suspect is one of them (3.5% of the samples: above the 3% warning share)
    assert len(top) >= 5 and top <= {str(int(i)) for i in flipped}
    assert found[0].severity == "warning" and "Relabel or drop" in found[0].advice
    assert 0.02 <= found[0].evidence["share"] <= 0.3


# ---------------------------------------------------------------------------------
# Healthy runs: nothing above info


def test_healthy_mlp_with_he_init(tmp_path):
    x, y = _blobs()
    torch.manual_seed(0)
    model = _he(nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3)))
    findings = check(_train(model, x, y, tmp_path, "mlp", steps=30))
    _only_info(findings)
    assert [f.rule for f in findings] == ["loss_vs_baseline"]


def test_healthy_small_cnn(tmp_path):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(256, 1, 8, 8, generator=g)
    y = torch.randint(0, 3, (256,), generator=g)
    x[y == 1, :, :4] += 1.0
    x[y == 2, :, 4:] += 1.0
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                          nn.Flatten(), nn.Linear(4 * 8 * 8, 3))
    _only_info(check(_train(model, x, y, tmp_path, "cnn", steps=30, lr=0.02, batch=32)))


def test_healthy_regression_mlp(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(256, 5)
    y = 2 * x[:, :1] - x[:, 1:2] + 0.1 * torch.randn(256, 1)
    model = nn.Sequential(nn.Linear(5, 32), nn.Tanh(), nn.Linear(32, 1))
    findings = check(_train(model, x, y, tmp_path, "reg", steps=30, lr=1e-2, adam=True, crit=nn.MSELoss()))
    _only_info(findings)
    base = _by_rule(findings, "loss_vs_baseline")
    assert base and base[0].evidence["baseline"] == pytest.approx(float(y.var(unbiased=False)), rel=0.05)


def test_shared_fixture_runs_never_break_a_rule(recorded_runs):
    for name in ("cls", "reg", "review"):
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            findings = check(diagnostics.open_run(recorded_runs / name))
        for f in findings:
            assert f.severity in health.SEVERITIES and f.message and f.advice and f.reference
            assert f.severity in registry.for_finding(f.rule).severities, f
            json.dumps(f.to_dict())


# ---------------------------------------------------------------------------------
# Rules on hand-built inputs


class FakeRun:
    """The reader's surface the rules use, over hand-built frames."""

    def __init__(self, manifest=None, scalars=None, dists=None, ratios=None, nonfinite=None, dynamics=None):
        self.manifest = {"schema_version": 1, "name": "fake", "created_at": 0, **(manifest or {})}
        self._scalars = scalars if scalars is not None else pd.DataFrame(columns=["step", "name", "value"])
        self._dists = dists if dists is not None else pd.DataFrame(columns=["step", "layer", "kind"])
        self._ratios = ratios if ratios is not None else pd.DataFrame(columns=["step", "layer", "ratio"])
        self._nonfinite = nonfinite
        self._dynamics = dynamics if dynamics is not None else pd.DataFrame()
        self.path = "fake"

    def scalars(self, names=None):
        s = self._scalars
        return s if names is None else s[s["name"].isin(list(names))]

    def distributions(self, kind="activation", layers=None):
        d = self._dists[self._dists["kind"] == kind]
        return d if layers is None else d[d["layer"].isin(list(layers))]

    def layers(self, kind="activation"):
        return list(dict.fromkeys(self._dists.loc[self._dists["kind"] == kind, "layer"]))

    def update_ratios(self):
        return self._ratios

    def first_nonfinite(self):
        return self._nonfinite

    def sample_dynamics(self, split="train"):
        return self._dynamics


def _rows(kind, layer, steps, **cols):
    n = len(steps)
    base = {"step": list(steps), "layer": [layer] * n, "kind": [kind] * n, "rank": [0] * n, "count": [100] * n,
            "mean": [0.0] * n, "std": [1.0] * n, "nan_count": [0] * n, "inf_count": [0] * n,
            "dead_frac": [math.nan] * n, "saturated_frac": [math.nan] * n, "hist_counts": [None] * n}
    for k, v in cols.items():
        base[k] = list(v) if isinstance(v, (list, tuple, np.ndarray)) else [v] * n
    return pd.DataFrame(base)


def _scal(name, values, steps=None):
    steps = range(len(values)) if steps is None else steps
    return pd.DataFrame({"step": list(steps), "name": name, "value": list(values)})


def test_every_rule_returns_nothing_without_data():
    empty = FakeRun()
    for rule in health.RULES:
        assert rule(empty) == [], rule.__name__
    assert check(empty) == []


def test_a_failing_rule_warns_and_the_others_still_run(monkeypatch):
    def broken(run):
        raise KeyError("boom")

    monkeypatch.setattr(health, "RULES", (broken, health.rule_nonfinite))
    run = FakeRun(nonfinite={"step": 3, "scalar": "loss"})
    with pytest.warns(RuntimeWarning, match="broken"):
        found = check(run)
    assert [f.rule for f in found] == ["nonfinite"] and found[0].step_start == 3


def test_dead_units_need_three_consecutive_captures():
    dead = [0.9, 0.9, 0.1, 0.9, 0.9, 0.2, 0.6, 0.7, 0.8, 0.9]
    run = FakeRun(dists=_rows("activation", "relu", [0, 1, 2, 4, 8, 16, 32, 64, 128, 256], dead_frac=dead))
    found = health.rule_dead_units(run)
    assert len(found) == 1
    assert (found[0].step_start, found[0].step_end) == (32, 256) and found[0].evidence["captures"] == 4
    assert found[0].severity == "warning"
    short = FakeRun(dists=_rows("activation", "relu", [0, 1, 2, 3], dead_frac=[0.9, 0.9, 0.1, 0.9]))
    assert health.rule_dead_units(short) == []


def test_saturation_ignores_layers_without_the_column():
    d = pd.concat([_rows("activation", "lin", [0, 1, 2]),
                   _rows("activation", "tanh", [0, 1, 2], saturated_frac=[0.5, 0.7, 0.6])])
    found = health.rule_saturation(FakeRun(dists=d))
    assert [(f.layer, f.step_start, f.step_end) for f in found] == [("tanh", 0, 2)]


def test_gradient_depth_exploding_and_quiet():
    def run(first_std):
        return FakeRun(dists=pd.concat([_rows("gradient", "a", [0, 1, 2, 3], std=first_std),
                                        _rows("gradient", "b", [0, 1, 2, 3], std=0.1),
                                        _rows("gradient", "c", [0, 1, 2, 3], std=0.01)]))
    boom = health.rule_gradient_depth(run(5.0))
    assert [(f.rule, f.layer, f.step_start, f.step_end) for f in boom] == [("exploding_gradients", "a", 0, 2)]
    assert boom[0].evidence["ratio_first_to_last"] == pytest.approx(500)
    assert health.rule_gradient_depth(run(0.5)) == []
    assert health.rule_gradient_depth(run(1e-5))[0].rule == "vanishing_gradients"


def test_grad_norm_spike_against_running_median():
    norms = [1.0] * 20 + [15.0] + [1.0] * 10 + [2.5]
    clipped = [0.0] * 20 + [1.0] + [0.0] * 11
    run = FakeRun(scalars=pd.concat([_scal("grad_norm", norms), _scal("grad_clipped", clipped)]))
    found = health.rule_grad_norm_spikes(run)
    assert len(found) == 1 and (found[0].step_start, found[0].step_end) == (20, 20)
    assert found[0].evidence["count"] == 1 and found[0].evidence["clipped"] == 1
    assert found[0].severity == "warning"  # 15x
    # a 4x spike over a noisy series: info; the same noise without it, or a steady climb: quiet
    noise = np.exp(np.random.default_rng(0).normal(0, 0.2, 200))
    spiky = noise.copy()
    spiky[115] = 4 * np.median(noise)
    found = health.rule_grad_norm_spikes(FakeRun(scalars=_scal("grad_norm", spiky)))
    assert [(f.severity, f.step_start, f.step_end) for f in found] == [("info", 115, 115)]
    assert found[0].evidence["spikes"][0]["z"] > 3
    from diagnostics.health import evidence_figure
    fig = evidence_figure(FakeRun(scalars=_scal("grad_norm", spiky).assign(rank=0)), found[0])
    marks = [t for t in fig.data if t.name == "spike"]
    assert len(marks) == 1 and list(marks[0].x) == [115] and marks[0].y[0] == pytest.approx(spiky[115])
    assert health.rule_grad_norm_spikes(FakeRun(scalars=_scal("grad_norm", noise))) == []
    climb = np.geomspace(0.5, 5, 200) * noise  # 10x over training, as in a first epoch
    assert health.rule_grad_norm_spikes(FakeRun(scalars=_scal("grad_norm", climb))) == []
    # a spike inside the warm-up is not judged
    assert health.rule_grad_norm_spikes(FakeRun(scalars=_scal("grad_norm", [1.0] * 5 + [50.0] + [1.0] * 3))) == []


def test_activation_scale_growing_across_depth():
    manifest = {"modules": [{"name": n, "type": "Linear", "params": 10} for n in "abcd"]}
    d = pd.concat([_rows("activation", n, [0, 1], std=s) for n, s in zip("abcd", [1.0, 4.0, 20.0, 0.1])])
    found = health.rule_activation_scale_depth(FakeRun(manifest=manifest, dists=d))
    assert len(found) == 1 and found[0].layer == "c" and "grows 20x" in found[0].message  # head "d" left out


def test_update_ratio_high_low_and_skipped_parameters():
    manifest = {"parameters": [{"name": "w_hi", "shape": [4, 4]}, {"name": "w_lo", "shape": [4, 4]},
                               {"name": "w_ok", "shape": [4, 4]}, {"name": "bias", "shape": [4]},
                               {"name": "w_frozen", "shape": [4, 4], "requires_grad": False}]}
    ratios = pd.concat([pd.DataFrame({"step": [0, 1, 2], "layer": n, "ratio": r}) for n, r in
                        [("w_hi", [0.5, 0.3, 0.01]), ("w_lo", [1e-7, 1e-6, 0.0]), ("w_ok", [1e-3] * 3),
                         ("bias", [5.0] * 3), ("w_frozen", [0.0] * 3)]])
    d = pd.concat([_rows("update", n, [0, 1, 2]) for n in ["w_hi", "w_lo", "w_ok", "bias", "w_frozen"]])
    found = health.rule_update_ratio(FakeRun(manifest=manifest, ratios=ratios, dists=d))
    assert {f.layer: f.evidence["median_ratio"] for f in found} == {"w_hi": 0.3, "w_lo": 1e-7}


def test_output_vs_label_classification_names_classes():
    manifest = {"task": "classification", "class_names": ["cat", "dog", "eel"]}
    steps = list(range(9))
    d = pd.concat([_rows("label", "train/class", steps, hist_counts=[[50, 30, 20]] * 9),
                   _rows("output", "train/class", steps, hist_counts=[[80, 18, 2]] * 9)])
    found = health.rule_output_vs_label(FakeRun(manifest=manifest, dists=d))
    assert len(found) == 1
    assert found[0].evidence["under_predicted"] == ["eel"] and found[0].evidence["over_predicted"] == []
    assert (found[0].step_start, found[0].step_end) == (6, 8)
    assert "eel (2% predicted vs 20% labelled)" in found[0].message


def test_output_vs_label_judges_the_late_steps_not_the_late_captures():
    # The automatic schedule captures at powers of two: the last third of 8 captures of a
    # 90-step run would reach back to step 16, while the model still under-predicted "eel".
    manifest = {"task": "classification", "class_names": ["cat", "dog", "eel"]}
    steps = [0, 1, 2, 4, 8, 16, 32, 64]
    early, settled = [60, 38, 2], [50, 32, 18]
    d = pd.concat([_rows("label", "train/class", steps, count=64, hist_counts=[[32, 16, 16]] * 8),
                   _rows("output", "train/class", steps, hist_counts=[early] * 7 + [settled])])
    assert health.rule_output_vs_label(FakeRun(manifest=manifest, dists=d)) == []
    # Still wrong at the end: found, over the late step only.
    d = pd.concat([_rows("label", "train/class", steps, count=64, hist_counts=[[32, 16, 16]] * 8),
                   _rows("output", "train/class", steps, hist_counts=[early] * 8)])
    found = health.rule_output_vs_label(FakeRun(manifest=manifest, dists=d))
    assert found[0].evidence["under_predicted"] == ["eel"] and (found[0].step_start, found[0].step_end) == (64, 64)
    # A late capture of fewer labels than the rule needs reaches back until it has them.
    d = pd.concat([_rows("label", "train/class", steps, count=[64] * 7 + [10], hist_counts=[[32, 16, 16]] * 8),
                   _rows("output", "train/class", steps, hist_counts=[early] * 8)])
    found = health.rule_output_vs_label(FakeRun(manifest=manifest, dists=d))
    assert (found[0].step_start, found[0].step_end) == (32, 64)


def test_output_vs_label_regression_collapsed_and_shifted():
    manifest = {"task": "regression"}
    lab = _rows("label", "train/value", [0, 1, 2], mean=5.0, std=2.0)
    collapsed = FakeRun(manifest=manifest, dists=pd.concat([lab, _rows("output", "train/value", [0, 1, 2],
                                                                        mean=5.0, std=0.1)]))
    assert "std" in health.rule_output_vs_label(collapsed)[0].message
    shifted = FakeRun(manifest=manifest, dists=pd.concat([lab, _rows("output", "train/value", [0, 1, 2],
                                                                      mean=0.0, std=2.0)]))
    assert "label stds" in health.rule_output_vs_label(shifted)[0].message
    fine = FakeRun(manifest=manifest, dists=pd.concat([lab, _rows("output", "train/value", [0, 1, 2],
                                                                   mean=5.2, std=1.8)]))
    assert health.rule_output_vs_label(fine) == []


def test_loss_vs_baseline_is_the_label_entropy():
    manifest = {"task": "classification", "loss_fn": "CrossEntropyLoss"}
    d = _rows("label", "train/class", [0, 1], hist_counts=[[25, 25, 25, 25]] * 2)
    stuck = FakeRun(manifest=manifest, dists=d, scalars=_scal("loss", [1.40] * 20))
    f = health.rule_loss_vs_baseline(stuck)[0]
    assert f.severity == "warning" and f.evidence["baseline"] == pytest.approx(math.log(4))
    assert "no better than always predicting the class prior (1.39" in f.message
    learning = FakeRun(manifest=manifest, dists=d, scalars=_scal("loss", [0.2] * 20))
    assert health.rule_loss_vs_baseline(learning)[0].severity == "info"
    other_loss = FakeRun(manifest={**manifest, "loss_fn": "focal"}, dists=d, scalars=_scal("loss", [1.4] * 20))
    assert health.rule_loss_vs_baseline(other_loss) == []


def test_overfitting_needs_val_rising_while_train_falls():
    train = _scal("loss", np.linspace(2.0, 0.1, 100))
    rising = _scal("val/loss", [2.0, 1.5, 1.2, 1.1, 1.15, 1.3, 1.5, 1.8, 2.0], steps=range(10, 100, 10))
    found = health.rule_overfitting(FakeRun(scalars=pd.concat([train, rising])))
    assert len(found) == 1 and (found[0].step_start, found[0].step_end) == (40, 90)
    falling = _scal("val/loss", np.linspace(2.0, 0.5, 9), steps=range(10, 100, 10))
    assert health.rule_overfitting(FakeRun(scalars=pd.concat([train, falling]))) == []
    both_rise = _scal("loss", np.linspace(0.1, 2.0, 100))
    assert health.rule_overfitting(FakeRun(scalars=pd.concat([both_rise, rising]))) == []


def _noise_run(n_suspects, n=100, late_margin=-3.0, late_wrong=1.0):
    scores = np.r_[np.linspace(3, 1, n_suspects), -np.ones(n - n_suspects)]
    dyn = pd.DataFrame({"sample_id": [str(i) for i in range(n)], "label_error_score": scores, "aum": -scores,
                        "late_wrong_frac": np.r_[np.full(n_suspects, late_wrong), np.zeros(n - n_suspects)],
                        "late_margin": np.r_[np.full(n_suspects, late_margin), np.full(n - n_suspects, 3.0)]})
    return FakeRun(manifest={"task": "classification"}, dynamics=dyn)


def test_label_noise_share_bounds():
    assert health.rule_label_noise(_noise_run(1)) == []
    info = health.rule_label_noise(_noise_run(2))[0]
    assert info.severity == "info" and info.evidence["top_ids"][:2] == ["0", "1"] and "Review" in info.advice
    warn = health.rule_label_noise(_noise_run(6))[0]
    assert warn.severity == "warning" and "Relabel or drop" in warn.advice and warn.evidence["suspects"] == 6
    assert health.rule_label_noise(_noise_run(60)) == []  # the model has not learned yet


def test_label_noise_hard_samples_are_not_called_mislabeled():
    # still wrong late, but the classes stay close (margin -1): hard, not relabel
    hard = health.rule_label_noise(_noise_run(15, late_margin=-1.0))
    assert len(hard) == 1 and hard[0].severity == "info" and hard[0].evidence["suspects"] == 0
    assert hard[0].evidence["hard"] == 15 and "not evidence of wrong labels" in hard[0].message
    # learned late, then right (a positive late-weighted score, right in most late records)
    late_learner = health.rule_label_noise(_noise_run(15, late_margin=0.5, late_wrong=0.3))
    assert late_learner == []


def test_check_sorts_errors_first_then_by_step_and_serialises():
    manifest = {"task": "classification", "loss_fn": "CrossEntropyLoss"}
    d = pd.concat([_rows("activation", "relu", [5, 6, 7], dead_frac=0.8),
                   _rows("label", "train/class", [0, 1], hist_counts=[[50, 50]] * 2)])
    run = FakeRun(manifest=manifest, dists=d, scalars=_scal("loss", [0.7] * 20),
                  nonfinite={"step": 9, "capture_step": 9, "kind": "gradient", "layer": "relu",
                             "nan_count": np.int64(3), "inf_count": 0})
    found = check(run)
    # the loss stuck at its baseline is a symptom (info) of the dead units, which training failed with:
    # they become an error, the first by step (5-7); the NaN at 9 explains nothing that ended before it
    assert [(f.severity, f.rule) for f in found] == [
        ("error", "dead_units"), ("error", "nonfinite"), ("info", "loss_vs_baseline")]
    assert found[0].evidence["training_failed"] is True and found[2].evidence["deferred_to"] == "dead_units"
    d0 = found[1].to_dict()
    assert set(d0) == {"rule", "severity", "layer", "step_start", "step_end", "message", "advice", "evidence",
                       "reference"}
    assert json.loads(json.dumps(d0))["evidence"]["nan_count"] == 3
    assert Finding(**found[1].to_dict()) == found[1]


def test_health_does_not_import_torch():
    code = "import sys, diagnostics.health; assert not {'torch', 'hooks', 'streamlit'} & set(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_symptoms_of_a_loss_input_bug_defer_to_it():
    def finding(rule, severity="warning"):
        return health.Finding(rule=rule, severity=severity, layer=None, step_start=0, step_end=9,
                              message=f"{rule} fired.", advice="Use He init.")
    cause, vanishing = finding("softmax_before_cross_entropy"), finding("vanishing_gradients")
    dead = finding("split_leakage")  # (dead units, here before, would explain vanishing gradients too)
    out = {f.rule: f for f in health.defer_to_root_cause([vanishing, cause, dead])}
    assert out["softmax_before_cross_entropy"] == cause and out["split_leakage"] == dead  # not a symptom of it
    v = out["vanishing_gradients"]
    assert v.severity == "info" and v.evidence["deferred_to"] == "softmax_before_cross_entropy"
    assert "consequence of softmax_before_cross_entropy" in v.message and v.advice.startswith("Fix softmax")
    # no loss-input bug, or only as info: the symptoms stand as they are
    assert health.defer_to_root_cause([vanishing, dead]) == [vanishing, dead]
    quiet = finding("softmax_before_cross_entropy", "info")
    assert health.defer_to_root_cause([quiet, vanishing])[1] == vanishing


def test_a_loss_input_bug_with_which_training_failed_is_an_error():
    def finding(rule, severity="warning", **evidence):
        return health.Finding(rule=rule, severity=severity, layer=None, step_start=0, step_end=9,
                              message=f"{rule} fired.", advice="Fix it.", evidence=evidence)
    # 10 classes: the softmax's floor log(1 + 9/e) = 1.46 lies at 63% of the baseline log 10 = 2.30
    cause = finding("softmax_before_cross_entropy", loss_floor=1.46, num_classes=10)
    at_baseline = finding("loss_vs_baseline", last_loss=2.25, baseline=2.30)
    out = health.defer_to_root_cause([cause, at_baseline])
    assert out[0].severity == "error" and out[0].evidence["training_failed"] is True
    assert ("its loss 2.25 is 98% of the trivial baseline 2.3, which its floor of 1.46 does not explain"
            in out[0].message)
    assert out[1].severity == "info"
    # 1,000 classes: the floor log(1 + 999/e) = 5.91 is 86% of log 1000 = 6.91: a loss at 93% of it may be a
    # model that learned and is held up by the floor alone: a warning still
    wide = finding("softmax_before_cross_entropy", loss_floor=5.91, num_classes=1000)
    held = health.defer_to_root_cause([wide, finding("loss_vs_baseline", last_loss=6.41, baseline=6.91)])
    assert held[0] == wide
    # a bug with no floor (a regression loss on class ids): the loss near the baseline is enough
    ids = finding("regression_loss_on_class_ids")
    assert health.defer_to_root_cause([ids, at_baseline])[0].severity == "error"
    # the loss beat the baseline (info: 16% below it, the full demo's 53% baseline): the bug stays a warning
    learned = health.defer_to_root_cause([cause, finding("loss_vs_baseline", "info", last_loss=1.9, baseline=2.3)])
    assert learned[0] == cause
    # another symptom alone (vanishing gradients) says nothing of the training's outcome
    assert health.defer_to_root_cause([cause, finding("vanishing_gradients")])[0] == cause


def test_a_stuck_parameter_defers_only_when_a_gradient_too_small_could_explain_it():
    def stuck(reason, everything=False):
        return health.Finding(rule="stuck_parameters", severity="error" if everything else "warning", layer="0.bias",
                              step_start=5, step_end=130, message="stuck.", advice="Check the lr.",
                              evidence={"reason": reason, "all_parameters_stuck": everything})
    cause = health.Finding(rule="softmax_before_cross_entropy", severity="warning", layer=None, step_start=0,
                           step_end=130, message="softmax.", advice="Remove it.")
    tiny = stuck(loop.MOVES_TOO_LITTLE)
    lr_zero, no_grad = stuck("its learning rate is 0"), stuck("it never gets a gradient (not used in the forward)")
    frozen_all = stuck(loop.MOVES_TOO_LITTLE, everything=True)  # nothing moves at all: an error of its own
    out = health.defer_to_root_cause([cause, tiny, lr_zero, no_grad, frozen_all])
    assert [f.severity for f in out] == ["warning", "info", "warning", "warning", "error"]
    assert out[1].evidence["deferred_to"] == "softmax_before_cross_entropy"


@pytest.mark.slow
def test_the_demo_baseline_warns_of_its_softmax_alone(tmp_path):
    """The demo's baseline (softmax before CrossEntropyLoss), trained for 3 epochs as the
    browser test's demo is: the softmax is its one finding above info, an error, as its loss
    stays at the trivial baseline (11% val accuracy). Before, the same run also warned
    'stuck parameters' (its conv biases never moved in float32) and 'the labels look unrelated
    to the inputs', both sending the user after the wrong bug; and its softmax was a warning,
    the badge of the run with unnormalised inputs that trained best."""
    from hooks import demo

    run = diagnostics.open_run(demo.train_digits(tmp_path, "baseline", epochs=3, softmax_head=True))
    findings = health.check(run)
    assert [(f.rule, f.severity) for f in findings if f.severity != "info"] == [("softmax_before_cross_entropy",
                                                                                "error")]
    deferred = {f.rule for f in findings if f.evidence.get("deferred_to") == "softmax_before_cross_entropy"}
    assert {"stuck_parameters", "labels_unlearnable"} <= deferred


def test_every_explained_name_is_a_registered_finding_that_may_be_info():
    # a symptom is shown as info beside its cause: its rule must register that severity (the Health page's
    # table, the planted-bug suite's check); a misspelt name in explains= would silently explain nothing
    from diagnostics.health import registry
    names = {n for r in registry.RULES for n in r.names}
    for r in registry.RULES:
        for name, _ in r.explains:
            assert name in names, f"{r.name} explains unknown finding {name!r}"
            assert "info" in registry.for_finding(name).severities, name
