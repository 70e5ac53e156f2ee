"""hooks.watch on plain training loops: what it records, and that it changes nothing."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
import torch
from torch import nn

import diagnostics
import hooks
import hooks.capture as capture_module
from tests.conftest import tiny_cnn, train_tiny


def _params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("every", [1, 3])
def test_training_is_bitwise_unchanged(tmp_path, every):
    plain, _ = train_tiny(tmp_path, watch=False, steps=10)
    watched, _ = train_tiny(tmp_path, name=f"w{every}", every=every, steps=10)
    a, b = _params(plain), _params(watched)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _hook_dicts(module: nn.Module):
    return [module._forward_hooks, module._forward_pre_hooks, module._backward_hooks,
            module._backward_pre_hooks, module._forward_hooks_with_kwargs]


def test_close_removes_every_hook_and_releases_the_model(tmp_path):
    model, run = train_tiny(tmp_path, steps=4)
    for m in model.modules():
        assert all(len(d) == 0 for d in _hook_dicts(m)), m
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None  # `run` is still alive here and holds nothing of the model
    run.close()  # twice is fine


def test_hooks_are_removed_when_training_raises(tmp_path):
    model = tiny_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    crit = nn.CrossEntropyLoss()
    with pytest.raises(RuntimeError, match="boom"):
        with hooks.watch(model, optimizer=opt, loss_fn=crit, run_dir=tmp_path, name="x", every=1):
            crit(model(torch.randn(4, 1, 8, 8)), torch.tensor([0, 1, 2, 0])).backward()
            opt.step()
            raise RuntimeError("boom")
    for m in [*model.modules(), crit]:
        assert all(len(d) == 0 for d in _hook_dicts(m))
    assert len(opt._optimizer_step_pre_hooks) == 0 and len(opt._optimizer_step_post_hooks) == 0
    assert diagnostics.open_run(tmp_path / "x").status()["state"] == "failed"


def test_records_every_kind_for_every_layer_on_capture_steps(tmp_path):
    model, run = train_tiny(tmp_path, steps=10, every=3)
    r = diagnostics.open_run(run.path)
    leaves = ["0", "1", "2", "3"]
    params = [n for n, _ in model.named_parameters()]
    assert r.layers("activation") == leaves
    assert r.layers("gradient") == leaves
    assert r.layers("weight") == params
    assert r.layers("param_grad") == params
    for kind in ("activation", "gradient", "weight", "param_grad", "output", "label"):
        assert r.steps(kind) == [0, 3, 6, 9], kind
    d = r.distributions("activation")
    assert set(d.columns) >= {"step", "layer", "kind", "rank", "count", "mean", "std", "min", "max",
                              "zero_frac", "nan_count", "inf_count", "q50", "hist_counts"}
    # the ReLU's output (layer 1) on a 16×4×8×8 batch: every element counted, many zeros
    relu = d[(d.layer == "1") & (d.step == 0)].iloc[0]
    assert relu["count"] == 16 * 4 * 8 * 8
    assert 0.2 < relu["zero_frac"] < 0.8 and relu["min"] == 0.0


def test_loss_and_learning_rate_every_step_match_the_loop(tmp_path):
    torch.manual_seed(0)
    model = tiny_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    crit = nn.CrossEntropyLoss()
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 3, (16,))
    losses, lrs = [], []
    with hooks.watch(model, optimizer=opt, loss_fn=crit, run_dir=tmp_path, name="l", every=4) as run:
        for _ in range(6):
            opt.zero_grad()
            loss = crit(model(x), y)
            loss.backward()
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
            losses.append(loss.item())
    s = diagnostics.open_run(run.path).scalars()
    np.testing.assert_allclose(s[s.name == "loss"].sort_values("step")["value"], losses, rtol=1e-6)
    np.testing.assert_allclose(s[s.name == "lr"].sort_values("step")["value"], lrs)
    assert list(s[s.name == "loss"].sort_values("step")["step"]) == list(range(6))


def test_gradient_summary_matches_plain_torch(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(inplace=True), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    crit = nn.MSELoss()
    x, y = torch.randn(32, 6), torch.randn(32, 2)
    # reference: retain the first Linear's output gradient with plain torch, on a copy
    ref_model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))
    ref_model.load_state_dict(model.state_dict())
    h = ref_model[0](x)
    h.retain_grad()
    out = ref_model[2](torch.relu(h))
    crit(out, y).backward()
    expected = h.grad.double().numpy()
    with hooks.watch(model, optimizer=opt, loss_fn=crit, run_dir=tmp_path, name="g", every=1) as run:
        opt.zero_grad()
        crit(model(x), y).backward()
        opt.step()
    g = diagnostics.open_run(run.path).distributions("gradient", layers=["0"]).iloc[0]
    assert g["count"] == expected.size
    np.testing.assert_allclose([g["mean"], g["std"], g["min"], g["max"]],
                               [expected.mean(), expected.std(), expected.min(), expected.max()], rtol=1e-4, atol=1e-7)
    pg = diagnostics.open_run(run.path).distributions("param_grad", layers=["0.weight"]).iloc[0]
    np.testing.assert_allclose(pg["mean"], ref_model[0].weight.grad.double().mean().item(), rtol=1e-4, atol=1e-8)


def test_no_tensor_work_between_captures(tmp_path, monkeypatch):
    calls = []
    real = capture_module.summarize
    monkeypatch.setattr(capture_module, "summarize", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    model = tiny_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    crit = nn.CrossEntropyLoss()
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 3, (8,))
    with hooks.watch(model, optimizer=opt, loss_fn=crit, run_dir=tmp_path, name="n", every=5):
        counts = []
        for _ in range(5):
            before = len(calls)
            opt.zero_grad()
            crit(model(x), y).backward()
            opt.step()
            counts.append(len(calls) - before)
    assert counts[0] > 0 and counts[1:] == [0, 0, 0, 0]


def test_outputs_and_labels_are_class_histograms_of_the_batch(tmp_path):
    torch.manual_seed(0)
    model = tiny_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    crit = nn.CrossEntropyLoss()
    x, y = torch.randn(20, 1, 8, 8), torch.tensor([0] * 11 + [1] * 2 + [2] * 7)
    with hooks.watch(model, optimizer=opt, loss_fn=crit, run_dir=tmp_path, name="o", every=1) as run:
        opt.zero_grad()
        logits = model(x)
        crit(logits, y).backward()
        opt.step()
    r = diagnostics.open_run(run.path)
    assert r.manifest["task"] == "classification" and r.manifest["num_classes"] == 3
    lab = r.distributions("label", layers=["train/class"]).iloc[0]
    out = r.distributions("output", layers=["train/class"]).iloc[0]
    assert list(lab["hist_counts"]) == [11, 2, 7]
    assert list(out["hist_counts"]) == np.bincount(logits.argmax(1).numpy(), minlength=3).tolist()
    assert r.distributions("output", layers=["train/logits"]).iloc[0]["count"] == 60


def test_no_grad_forward_inside_the_loop_is_not_training(tmp_path):
    model = tiny_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    crit = nn.CrossEntropyLoss()
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 3, (8,))
    with hooks.watch(model, optimizer=opt, loss_fn=crit, run_dir=tmp_path, name="e", every=1) as run:
        for _ in range(2):
            with torch.no_grad():
                crit(model(torch.zeros(4, 1, 8, 8)), torch.zeros(4, dtype=torch.long))
            opt.zero_grad()
            crit(model(x), y).backward()
            opt.step()
    r = diagnostics.open_run(run.path)
    assert r.distributions("activation", layers=["0"])["count"].tolist() == [8 * 4 * 64, 8 * 4 * 64]
    assert len(r.scalars(names=["loss"])) == 2


def test_log_batch_with_a_plain_loss_function_regression(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(50, 3)
    y = 10 + x.sum(1, keepdim=True)
    with hooks.watch(model, optimizer=opt, run_dir=tmp_path, name="r", every=1) as run:
        opt.zero_grad()
        pred = model(x)
        loss = torch.nn.functional.mse_loss(pred, y)
        run.log_batch(pred, y, loss=loss)
        loss.backward()
        opt.step()
    r = diagnostics.open_run(run.path)
    assert r.manifest["task"] == "regression"
    out = r.distributions("output", layers=["train/value"]).iloc[0]
    lab = r.distributions("label", layers=["train/value"]).iloc[0]
    # outputs and labels share one span so that their histograms overlay
    assert (out["hist_min"], out["hist_max"]) == (lab["hist_min"], lab["hist_max"])
    assert out["hist_min"] == pytest.approx(min(pred.min().item(), y.min().item()))
    np.testing.assert_allclose(lab["mean"], y.double().mean().item(), rtol=1e-6)
    assert r.scalars(names=["loss"])["value"].iloc[0] == pytest.approx(loss.item())


def test_log_scalar_and_config_in_manifest(tmp_path):
    model = tiny_cnn()
    with hooks.watch(model, run_dir=tmp_path, name="s", config={"lr": 0.1}, class_names=["a", "b", "c"]) as run:
        run.log_scalar("val/acc", torch.tensor(0.75))
        run.log_scalar("val/acc", 0.8, step=7)
    r = diagnostics.open_run(run.path)
    assert r.scalars(names=["val/acc"])[["step", "value"]].values.tolist() == [[0, 0.75], [7, 0.8]]
    assert r.manifest["config"] == {"lr": 0.1} and r.manifest["class_names"] == ["a", "b", "c"]
    assert [m["name"] for m in r.manifest["modules"]] == ["Sequential", "0", "1", "2", "3"]


def test_an_existing_run_is_never_overwritten(tmp_path):
    _, first = train_tiny(tmp_path, name="same", steps=2)
    before = sorted(p.name for p in (first.path / "scalars").iterdir())
    _, second = train_tiny(tmp_path, name="same", steps=2)
    assert second.path.name == "same-2"
    assert sorted(p.name for p in (first.path / "scalars").iterdir()) == before


def test_bad_arguments_get_one_line_errors(tmp_path):
    model = tiny_cnn()
    with pytest.raises(ValueError, match="every must be a positive int"):
        hooks.watch(model, run_dir=tmp_path, every=0)
    with pytest.raises(TypeError, match="must be a torch.nn.Module"):
        hooks.watch("model", run_dir=tmp_path)
    with pytest.raises(ValueError, match="task must be"):
        hooks.watch(model, run_dir=tmp_path, task="segmentation")
    run = hooks.watch(model, run_dir=tmp_path)
    with pytest.raises(RuntimeError, match="already watched"):
        hooks.watch(model, run_dir=tmp_path)
    with pytest.warns(RuntimeWarning, match="rows but labels"):  # in the loop: skipped with a warning
        run.log_batch(torch.zeros(3, 2), torch.zeros(4))
    run.close()
    with hooks.watch(tiny_cnn(), run_dir=tmp_path, strict=True) as run, pytest.raises(ValueError, match="rows but"):
        run.log_batch(torch.zeros(3, 2), torch.zeros(4))
    hooks.watch(model, run_dir=tmp_path).close()  # watchable again once closed


@pytest.mark.parametrize("native", [True, False], ids=["native", "torch-passes"])
def test_update_ratio_grad_norm_clipping_and_unit_activity(tmp_path, monkeypatch, native):
    if not native:  # an install without the C extension: the gradient norms come from torch.dot
        monkeypatch.setattr(hooks.summarize, "_fused", None)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 16), nn.Sigmoid(), nn.Linear(16, 3))
    with torch.no_grad():
        model[0].bias[:8] = -100.0  # 8 of 32 units can never fire
        model[2].weight.mul_(50.0)  # drives the sigmoid into its bounds
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    crit = nn.CrossEntropyLoss()
    x, y = torch.randn(64, 10), torch.randint(0, 3, (64,))
    norms, before, after = [], {}, {}
    with hooks.watch(model, optimizer=opt, loss_fn=crit, run_dir=tmp_path, name="u", every=1) as run:
        for i in range(4):
            opt.zero_grad()
            out = model(x)
            crit(out, y).backward()
            norms.append(torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in model.parameters()])).item())
            if i % 2:
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1e-3)
            if i == 2:
                before = {n: p.detach().clone() for n, p in model.named_parameters()}
            opt.step()
            if i == 2:
                after = {n: p.detach().clone() for n, p in model.named_parameters()}
    r = diagnostics.open_run(run.path)
    s = r.scalars()
    np.testing.assert_allclose(s[s.name == "grad_norm"].sort_values("step")["value"], norms, rtol=1e-5)
    assert s[s.name == "grad_clipped"].sort_values("step")["value"].tolist() == [0.0, 1.0, 0.0, 1.0]
    ratios = r.update_ratios(layers=["2.weight"])
    row = ratios[ratios.step == 2].iloc[0]
    expected = ((after["2.weight"] - before["2.weight"]).norm() / before["2.weight"].norm()).item()
    assert row["ratio"] == pytest.approx(expected, rel=1e-4)
    act = r.distributions("activation")
    relu = act[(act.layer == "1") & (act.step == 0)].iloc[0]
    assert relu["dead_frac"] == pytest.approx(8 / 32)
    sig = act[(act.layer == "3") & (act.step == 0)].iloc[0]
    assert sig["saturated_frac"] > 0.5 and np.isnan(sig["dead_frac"])
    assert np.isnan(act[act.layer == "0"]["dead_frac"]).all()
    assert r.manifest["output_shapes"]["4"] == [64, 3]


@pytest.mark.parametrize("make_opt", [lambda ps: torch.optim.Adam(ps, lr=1e-3),
                                      lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9)], ids=["adam", "sgd"])
def test_update_of_a_large_tensor_is_estimated_from_a_fixed_sample(tmp_path, make_opt):
    """Above UPDATE_SAMPLE elements the update is summarised on a fixed sample of positions
    (a full copy of every weight would double the parameters' memory): its norm, hence
    the update ratio, is then an estimate; here within 3% of the exact one."""
    from hooks.capture import UPDATE_SAMPLE

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(300, 300), nn.ReLU(), nn.Linear(300, 4))
    assert model[0].weight.numel() > 20 * UPDATE_SAMPLE
    opt = make_opt(model.parameters())
    crit = nn.CrossEntropyLoss()
    x, y = torch.randn(32, 300), torch.randint(0, 4, (32,))
    exact = []
    with hooks.watch(model, optimizer=opt, loss_fn=crit, run_dir=tmp_path, name="big", every=1) as run:
        for _ in range(3):
            opt.zero_grad()
            crit(model(x), y).backward()
            before = model[0].weight.detach().clone()
            opt.step()
            exact.append(((model[0].weight.detach() - before).norm() / before.norm()).item())
    r = diagnostics.open_run(run.path)
    ratios = r.update_ratios(layers=["0.weight"]).sort_values("step")
    np.testing.assert_allclose(ratios["ratio"], exact, rtol=0.03)
    upd = r.distributions("update", layers=["0.weight"])
    assert (upd["count"] == model[0].weight.numel()).all()
    assert (upd["hist_counts"].map(sum) <= UPDATE_SAMPLE).all()


def test_default_schedule_is_auto_and_dense_at_the_start(tmp_path):
    torch.manual_seed(0)
    model = tiny_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    crit = nn.CrossEntropyLoss()
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 3, (8,))
    with hooks.watch(model, optimizer=opt, loss_fn=crit, run_dir=tmp_path, name="auto") as run:
        for _ in range(6):
            opt.zero_grad()
            crit(model(x), y).backward()
            opt.step()
    r = diagnostics.open_run(run.path)
    assert r.manifest["watch"]["every"] == "auto" and r.manifest["watch"]["budget"] == 0.03
    assert {0, 1, 2, 4} <= set(r.steps("activation"))
    assert r.manifest["schedule"]["every"] == "auto"
    with pytest.raises(ValueError, match="budget is a fraction"):
        hooks.watch(model, run_dir=tmp_path, budget=3)


def test_a_run_left_open_by_a_crash_is_marked_failed(tmp_path):
    import subprocess
    import sys

    script = (
        "import torch, hooks\n"
        f"run = hooks.watch(torch.nn.Linear(2, 2), run_dir={str(tmp_path)!r}, name='crash')\n"
        "raise RuntimeError('boom')\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "boom" in out.stderr
    assert diagnostics.open_run(tmp_path / "crash").status()["state"] == "failed"
    ok = "import torch, hooks\n" + f"run = hooks.watch(torch.nn.Linear(2, 2), run_dir={str(tmp_path)!r}, name='ok')\n"
    subprocess.run([sys.executable, "-c", ok], check=True, timeout=120)
    assert diagnostics.open_run(tmp_path / "ok").status()["state"] == "finished"


def test_the_crash_handler_is_installed_by_the_first_watch_not_by_import(tmp_path):
    import subprocess
    import sys

    script = (
        "import sys, torch\n"
        "original = sys.excepthook\n"
        "import hooks\n"
        "assert sys.excepthook is original, 'import hooks replaced sys.excepthook'\n"
        f"run = hooks.watch(torch.nn.Linear(2, 2), run_dir={str(tmp_path)!r}, name='a')\n"
        "installed = sys.excepthook\n"
        "assert installed is not original\n"
        "run.close()\n"
        f"hooks.watch(torch.nn.Linear(2, 2), run_dir={str(tmp_path)!r}, name='b').close()\n"
        "assert sys.excepthook is installed, 'a second watch() chained another handler'\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)


def test_sparse_updates_missed_by_the_sample_raise_no_false_health_finding(tmp_path):
    """An embedding table whose steps touch a few rows: the 4,096 sampled positions often
    see no change. Those captures are marked sampled and the update-ratio rule does not
    call the layer frozen on a zero it measured on a sample."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(30000, 64), nn.Flatten(), nn.Linear(64, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    crit = nn.CrossEntropyLoss()
    with hooks.watch(model, optimizer=opt, loss_fn=crit, run_dir=tmp_path, name="sparse", every=1) as run:
        for step in range(12):
            ids = torch.randint(0, 30000, (8, 1), generator=torch.Generator().manual_seed(step))
            opt.zero_grad()
            crit(model(ids), torch.randint(0, 3, (8,), generator=torch.Generator().manual_seed(100 + step))).backward()
            opt.step()
    r = diagnostics.open_run(run.path)
    ratios = r.update_ratios(layers=["0.weight"])
    assert ratios["sampled"].all() and (ratios["ratio"] == 0).any()
    assert not [f for f in r.health() if f.rule == "update_ratio" and f.layer == "0.weight" and "nothing" in f.message]


def test_sparse_embedding_gradients_are_captured_without_breaking_training(tmp_path):
    """nn.Embedding(sparse=True) gives sparse gradients: backward must not fail in the
    gradient-norm hook, the norm must be the dense gradient's, and param_grad summarises
    the stored values (the rows the batch touched, repeated ids summed); training is
    unchanged."""
    def make():
        torch.manual_seed(0)
        return nn.Sequential(nn.Embedding(50, 4, sparse=True), nn.Flatten(), nn.Linear(8, 3))

    def batch(step):
        g = torch.Generator().manual_seed(step)
        return torch.randint(0, 50, (6, 2), generator=g), torch.randint(0, 3, (6,), generator=g)

    def train(model, run=None):
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        if run is not None:
            run = hooks.watch(model, optimizer=opt, loss_fn=crit, run_dir=tmp_path, name="sparse-grad", every=1)
        norms, values = [], []
        for step in range(3):
            x, y = batch(step)
            x[0, 0] = x[0, 1] = 7  # a repeated id: two entries for one row before coalescing
            opt.zero_grad()
            crit(model(x), y).backward()
            emb = model[0].weight.grad
            dense = [emb.to_dense()] + [p.grad for p in list(model.parameters())[1:]]
            norms.append(float(torch.sqrt(sum((g.double() ** 2).sum() for g in dense))))
            values.append(emb.coalesce().values().double().numpy().copy())
            opt.step()
        if run is not None:
            run.close()
        return model, norms, values, run

    crit = nn.CrossEntropyLoss()
    plain, *_ = train(make())
    watched, norms, values, run = train(make(), run=True)
    for a, b in zip(plain.parameters(), watched.parameters()):
        assert torch.equal(a, b)
    r = diagnostics.open_run(run.path)
    s = r.scalars(names=["grad_norm"]).sort_values("step")
    np.testing.assert_allclose(s["value"], norms, rtol=1e-5)
    pg = r.distributions("param_grad", layers=["0.weight"]).sort_values("step")
    assert pg["count"].tolist() == [v.size for v in values]
    np.testing.assert_allclose(pg["mean"], [v.mean() for v in values], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(pg["std"], [v.std() for v in values], rtol=1e-4)


def test_each_step_s_loss_and_grad_norm_carry_the_time_of_their_own_step(tmp_path):
    """Losses cross to the CPU in batches of steps: each keeps its step's wall time, so a
    curve over wall-clock time has no flats and jumps at the flushes."""
    import time as _time

    import diagnostics

    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    crit = nn.CrossEntropyLoss()
    x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    with hooks.watch(model, optimizer=opt, loss_fn=crit, run_dir=tmp_path, name="t", every=1000) as run:
        for _ in range(6):
            opt.zero_grad()
            crit(model(x), y).backward()
            opt.step()
            _time.sleep(0.05)
    s = diagnostics.open_run(run.path).scalars()
    for name in ("loss", "grad_norm"):
        t = s[s["name"] == name].sort_values("step")["wall_time_s"].to_numpy()
        assert len(t) == 6
        gaps = np.diff(t)
        assert (gaps > 0.03).all(), (name, gaps)  # one sleep apart, not one flush


def test_watch_options_are_checked_once_for_watch_and_the_callbacks():
    from hooks.options import WatchOptions

    WatchOptions().validate()
    for bad, message in (({"every": 0}, "every must be"), ({"budget": 1.5}, "budget is a fraction"),
                         ({"task": "ranking"}, "task must be")):
        with pytest.raises(ValueError, match=message):
            WatchOptions(**bad).validate()
    assert WatchOptions(every=5).manifest_entry() == {"every": 5, "budget": None, "flush_every_s": 5.0}
