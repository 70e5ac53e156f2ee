"""#23: `ignored_class` (the loss's ignore_index is a real class, which the model then never
predicts) and `objective_sign` (a logged reward that training drives down), on planted runs
against plain-torch references, with the healthy near-misses that stay quiet."""

import numpy as np
import pandas as pd
import pytest

import diagnostics
from diagnostics.health import data, invariance, loss

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import hooks  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _clusters(n=512, k=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, k, (n,), generator=g)
    return 3 * torch.randn(k, 8, generator=g)[y] + torch.randn(n, 8, generator=g), y


def _train(tmp_path, crit, steps=80):
    x, y = _clusters()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    with hooks.watch(model, optimizer=opt, loss_fn=crit, run_dir=tmp_path, name="ignored", every=5) as run:
        for i in range(steps):
            idx = torch.arange(i * 32, i * 32 + 32) % len(x)
            opt.zero_grad()
            loss = crit(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
    with torch.no_grad():
        predicted_zero = float((model(x).argmax(1) == 0).float().mean())
    return diagnostics.open_run(run.path), predicted_zero, float((y == 0).float().mean())


def test_ignore_index_on_a_real_class_is_named_with_the_class_the_model_never_predicts(tmp_path):
    run, predicted_zero, labelled_zero = _train(tmp_path, nn.CrossEntropyLoss(ignore_index=0))
    assert predicted_zero < 0.05 < labelled_zero  # plain torch: class 0 is a quarter of the labels, never predicted
    [f] = data.rule_ignored_class(run)
    assert (f.rule, f.severity, f.evidence["ignore_index"]) == ("ignored_class", "warning", 0)
    assert f.evidence["predicted_share"] < f.evidence["labelled_share"] / 3
    assert abs(f.evidence["labelled_share"] - labelled_zero) < 0.1


@pytest.mark.parametrize("ignore", [-100, 4])
def test_ignore_index_outside_the_classes_stays_quiet(tmp_path, ignore):
    run, predicted_zero, labelled_zero = _train(tmp_path, nn.CrossEntropyLoss(ignore_index=ignore))
    assert predicted_zero > labelled_zero / 3  # the class is learned
    assert data.rule_ignored_class(run) == []


class _Scalars:
    def __init__(self, frame):
        self.manifest, self._s, self.path = {"schema_version": 1, "name": "fake"}, frame, "fake"

    def scalars(self, names=None):
        return self._s if names is None else self._s[self._s["name"].isin(list(names))]


def _reward_run(values, name="episode/reward"):
    return _Scalars(pd.DataFrame({"step": np.arange(len(values)), "name": name, "value": values}))


def test_a_reward_that_training_drives_down_names_the_objectives_sign():
    rng = np.random.default_rng(0)
    falling = np.clip(0.3 - 0.002 * np.arange(150) + 0.05 * rng.standard_normal(150), 0, 1)
    [f] = invariance.rule_objective_sign(_reward_run(falling))
    first, last = falling[:37].mean(), falling[-37:].mean()  # hand count: the quarters' means
    assert f.rule == "objective_sign" and f.severity == "warning"
    assert f.evidence["first_quarter_mean"] == pytest.approx(first)
    assert f.evidence["last_quarter_mean"] == pytest.approx(last)


@pytest.mark.parametrize("kind", ["rising", "noisy_flat", "loss_named_return_in_val"])
def test_a_reward_that_rises_or_only_wanders_stays_quiet(kind):
    rng = np.random.default_rng(1)
    noise = 0.1 * rng.standard_normal(150)
    if kind == "rising":
        run = _reward_run(0.1 + 0.004 * np.arange(150) + noise)
    elif kind == "noisy_flat":
        run = _reward_run(0.5 + noise)
    else:
        run = _reward_run(1.0 - 0.006 * np.arange(150), name="val/return")
    assert invariance.rule_objective_sign(run) == []


def _poisson(tmp_path, head, log_input):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 8, generator=g)
    y = torch.poisson(torch.exp(0.8 + 0.5 * x[:, :1]), generator=g)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1), *head)
    crit = nn.PoissonNLLLoss(log_input=log_input)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    with hooks.watch(model, optimizer=opt, loss_fn=crit, run_dir=tmp_path, name="poisson", every=5,
                     task="regression") as run:
        for i in range(120):
            idx = torch.arange(i * 32, i * 32 + 32) % len(x)
            opt.zero_grad()
            crit(model(x[idx]), y[idx]).backward()
            opt.step()
    with torch.no_grad():
        out = model(x)
    return diagnostics.open_run(run.path), out, y


def test_a_rate_into_poisson_nll_with_log_input_is_named(tmp_path):
    run, out, y = _poisson(tmp_path, [nn.Softplus()], True)
    # plain torch: the Softplus outputs fit log(count), not the count: exp(output) matches the counts' mean
    assert abs(float(out.exp().mean()) - float(y.mean())) < 0.25 * float(y.mean()) < float(y.mean() - out.mean())
    assert run.manifest["loss_log_input"] is True
    [f] = loss.rule_loss_input_contract(run)
    assert (f.rule, f.severity, f.evidence["last_module"]) == ("loss_input_contract", "warning", "Softplus")


@pytest.mark.parametrize("head, log_input", [([], True), ([nn.Softplus()], False)], ids=["log_rate", "rate"])
def test_poisson_nll_used_as_documented_stays_quiet(tmp_path, head, log_input):
    run, _, _ = _poisson(tmp_path, head, log_input)
    assert run.manifest["loss_log_input"] is log_input
    assert loss.rule_loss_input_contract(run) == []


def _validated(tmp_path, relabel):
    """Train on 4 clusters; validate every 10 steps on fresh samples whose labels `relabel` maps."""
    x, y = _clusters(712, seed=0)
    x, y, xv, yv = x[:512], y[:512], x[512:], y[512:]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))
    opt, crit = torch.optim.Adam(model.parameters(), lr=1e-2), nn.CrossEntropyLoss()
    with hooks.watch(model, optimizer=opt, loss_fn=crit, run_dir=tmp_path, name="val_map") as run:
        for i in range(80):
            idx = torch.arange(i * 32, i * 32 + 32) % len(x)
            opt.zero_grad()
            crit(model(x[idx]), y[idx]).backward()
            opt.step()
            if i % 10 == 9:
                with torch.no_grad():
                    run.log_batch(model(xv), relabel(yv), split="val")
    with torch.no_grad():
        val_acc = float((model(xv).argmax(1) == relabel(yv)).float().mean())
    return diagnostics.open_run(run.path), val_acc


def test_validation_labels_numbered_differently_are_named(tmp_path):
    run, val_acc = _validated(tmp_path, lambda v: (v + 1) % 4)  # another mapping: every class shifted
    assert val_acc < 0.1  # plain torch: the model is right on training's numbering, wrong on this one
    [f] = data.rule_val_label_mismatch(run)
    assert (f.rule, f.severity, f.evidence["split"]) == ("val_label_mismatch", "warning", "val")
    assert f.evidence["agreement"] == pytest.approx(val_acc, abs=0.1)


@pytest.mark.parametrize("relabel", [lambda v: v, lambda v: torch.zeros_like(v)], ids=["same_mapping", "one_class"])
def test_validation_with_training_mapping_or_one_class_stays_quiet(tmp_path, relabel):
    run, _ = _validated(tmp_path, relabel)
    assert data.rule_val_label_mismatch(run) == []
