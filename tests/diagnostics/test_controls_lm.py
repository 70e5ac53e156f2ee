"""Healthy language-model controls (benchmarks/controls_lm.py: nanoGPT, HF GPT-2 from a
config, pytorch/examples word_language_model) train and draw no warning; and
activation_scale_depth judges drift only along chains that normalisation and embedding
layers do not cut (a GPT's 0.02 embedding rescaled by LayerNorm is by design)."""

from __future__ import annotations

import math

import pandas as pd
import pytest

torch = pytest.importorskip("torch")

import diagnostics  # noqa: E402
from benchmarks import controls_lm  # noqa: E402
from diagnostics import health  # noqa: E402
from diagnostics.health import check  # noqa: E402
from tests.diagnostics.test_health import FakeRun, _rows  # noqa: E402

# Rules in files this part does not own that still fire on these controls (the lead fixes
# them at the merge): fit.py's output_vs_label reads a character LM's rare characters, never
# the argmax, from one capture, as a bias.


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.slow
@pytest.mark.parametrize("case", controls_lm.CONTROLS, ids=lambda c: c.name)
def test_lm_control_trains_and_stays_quiet(case, tmp_path):
    run = diagnostics.open_run(case.train(tmp_path))
    loss = run.scalars(["loss"])["value"].to_numpy()
    assert loss[-10:].mean() < 0.7 * loss[:10].mean()  # it learns: the control is healthy
    loud = [f"{f.severity} {f.rule} {f.layer}" for f in check(run) if f.severity in ("error", "warning")]
    assert not loud, loud


def _run(modules, stds, weight_stds=None, fan_in=10):
    """A run whose modules (name, type, params) have these activation stds at step 0 and,
    with `weight_stds` {name: std}, (fan_in, fan_in) weights of that std and no bias."""
    weight_stds = weight_stds or {}
    manifest = {"modules": [{"name": n, "type": t, "params": p} for n, t, p in modules],
                "parameters": [{"name": f"{n}.weight", "shape": [fan_in, fan_in]} for n in weight_stds]}
    d = pd.concat([_rows("activation", n, [0, 1], std=s) for (n, _, _), s in zip(modules, stds)]
                  + [_rows("weight", f"{n}.weight", [0, 1], std=w) for n, w in weight_stds.items()])
    return FakeRun(manifest=manifest, dists=d)


# A GPT block's leaf modules in registration order, with their stds at initialisation
# (nanoGPT, n_embd 32: embedding 0.02, LayerNorm ~1, c_attn ~0.11, c_proj at 0.02/sqrt(2·n_layer)).
_GPT = [("wte", "Embedding", 64), ("wpe", "Embedding", 16),
        ("h.0.ln_1", "LayerNorm", 2), ("h.0.attn.c_attn", "Linear", 3), ("h.0.attn.c_proj", "Linear", 2),
        ("h.0.ln_2", "LayerNorm", 2), ("h.0.mlp.c_fc", "Linear", 4), ("h.0.mlp.c_proj", "Linear", 2),
        ("ln_f", "LayerNorm", 2), ("lm_head", "Linear", 64)]
_GPT_STDS = [0.02, 0.02, 1.0, 0.11, 0.003, 1.0, 0.11, 0.006, 1.0, 0.6]


def test_gpt_embedding_rescaled_by_layernorm_is_not_drift():
    # the old rule compared wte (0.02) with ln_f (1.0): "grows 50x"
    assert health.rule_activation_scale_depth(_run(_GPT, _GPT_STDS)) == []


def test_drift_along_a_chain_after_an_embedding_still_fires_and_names_the_chain():
    modules = [("emb", "Embedding", 10)] + [(str(i), "Linear", 10) for i in range(4)] + [("head", "Linear", 10)]
    stds = [1.0, 0.5, 0.05, 0.005, 0.0005, 0.1]
    # each Linear's gain sqrt(fan_in)·w_std = 0.1: its input RMS (output / gain) is the output before it
    gain_01 = {str(i): 0.1 / math.sqrt(10) for i in range(1, 4)}
    found = health.rule_activation_scale_depth(_run(modules, stds, gain_01))
    assert len(found) == 1 and found[0].layer == "3" and found[0].severity == "warning"
    assert found[0].evidence["ratio_last_to_first"] == pytest.approx(1e-3)  # 0 -> 3, not emb -> 3
    assert "from 0 (0.5)" in found[0].message and "no normalisation or embedding between them" in found[0].message
    # without the weights no link can be seen (the layers may sit side by side): info
    assert [f.severity for f in health.rule_activation_scale_depth(_run(modules, stds))] == ["info"]


def test_attention_query_key_value_side_by_side_are_not_a_chain():
    # a post-LN BERT layer with the 0.02 init (hidden 32): query, key and value each read the
    # LayerNorm output (~1) and output ~0.11; the output dense reads the attention context.
    # The old rule read query -> key -> value -> dense as depth: "shrinks 20x".
    modules = [("emb", "Embedding", 10), ("ln", "LayerNorm", 2), ("query", "Linear", 10), ("key", "Linear", 10),
               ("value", "Linear", 10), ("dense", "Linear", 10), ("ln2", "LayerNorm", 2), ("head", "Linear", 10)]
    w = 0.02 * math.sqrt(32 / 10)  # the same gain 0.02·sqrt(32) with fan_in 10
    weights = {n: w for n in ("query", "key", "value", "dense")}
    run = _run(modules, [0.02, 1.0, 0.11, 0.11, 0.11, 0.0055, 1.0, 0.5], weights)
    assert health.rule_activation_scale_depth(run) == []


def test_layernorm_cuts_the_chain_and_two_layers_are_not_depth():
    # 1.0 -> 0.02 over Linear, Linear | LayerNorm | Linear, Linear: no chain of 3 hidden layers
    modules = [("a", "Linear", 10), ("b", "Linear", 10), ("ln", "LayerNorm", 2), ("c", "Linear", 10),
               ("d", "Linear", 10), ("head", "Linear", 10)]
    assert health.rule_activation_scale_depth(_run(modules, [1.0, 0.3, 1.0, 0.1, 0.02, 0.5])) == []
    # a deliberately down-scaled projection after one layer (3 parametrised layers in all): quiet
    pair = [("fc", "Linear", 10), ("proj", "Linear", 10), ("head", "Linear", 10)]
    assert health.rule_activation_scale_depth(_run(pair, [0.1, 0.003, 1.0])) == []


def test_the_worst_chain_is_reported():
    # a0 -> a2 grows 24x, b0 -> b2 40x (the old rule compared a0 with b2: 80x)
    modules = ([(f"a{i}", "Linear", 10) for i in range(3)] + [("ln", "LayerNorm", 2)]
               + [(f"b{i}", "Linear", 10) for i in range(3)] + [("head", "Linear", 10)])
    found = health.rule_activation_scale_depth(_run(modules, [0.5, 3.0, 12.0, 1.0, 1.0, 10.0, 40.0, 1.0]))
    assert len(found) == 1 and found[0].layer == "b2" and "grows 40x" in found[0].message
    assert math.isclose(found[0].evidence["ratio_last_to_first"], 40.0)
