"""`class_agreement_probe` (hooks/probes.py) against a hand-built confusion, and a run that
validates between captures (the probe's off-capture call in `log_batch`) trains bitwise as an
unwatched one."""

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import diagnostics  # noqa: E402
import hooks  # noqa: E402
from hooks.probes import class_agreement_probe  # noqa: E402


def _one_hot_scores(pred, c):
    return torch.nn.functional.one_hot(torch.tensor(pred), c).float()


def test_agreement_counts_match_a_hand_count():
    # 3 classes, 6 samples each; label 0 -> predicted 0 x5, 1 x1; label 1 -> 2 x6; label 2 -> 1 x4, 2 x2
    labels = [0] * 6 + [1] * 6 + [2] * 6
    pred = [0] * 5 + [1] + [2] * 6 + [1] * 4 + [2] * 2
    got = class_agreement_probe(_one_hot_scores(pred, 3), torch.tensor(labels), "val")
    assert got["probe/val/label_agreement"] == pytest.approx((5 + 0 + 2) / 18)
    assert got["probe/val/label_mode_agreement"] == pytest.approx((5 + 6 + 4) / 18)
    assert got["probe/val/label_mode_distinct"] == pytest.approx(3 / 3)  # modes 0, 2, 1


def test_small_batches_give_accuracy_only_and_other_shapes_nothing():
    got = class_agreement_probe(_one_hot_scores([0, 1, 2], 3), torch.tensor([0, 1, 1]))
    assert set(got) == {"probe/train/label_agreement"} and got["probe/train/label_agreement"] == pytest.approx(2 / 3)
    assert class_agreement_probe(torch.randn(4, 1), torch.randn(4)) == {}
    assert class_agreement_probe(torch.randn(4, 3, 5), torch.zeros(4, 5, dtype=torch.long)) == {}


def _train(tmp_path=None):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(256, 8, generator=g), torch.randint(0, 4, (256,), generator=g)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    crit = nn.CrossEntropyLoss()
    run = hooks.watch(model, optimizer=opt, loss_fn=crit, run_dir=tmp_path, name="agree") if tmp_path else None
    for i in range(30):
        idx = torch.arange(i * 16, i * 16 + 16) % 256
        opt.zero_grad()
        crit(model(x[idx]), y[idx]).backward()
        opt.step()
        if run is not None and i % 7 == 6:
            with torch.no_grad():
                run.log_batch(model(x[:64]), y[:64], split="val")
    if run is not None:
        run.close()
    return [p.detach().clone() for p in model.parameters()], run


def test_validation_between_captures_is_probed_and_training_is_bitwise_unchanged(tmp_path):
    plain, _ = _train()
    watched, run = _train(tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(plain, watched))
    names = set(diagnostics.open_run(run.path).scalars()["name"])
    assert {"probe/val/label_agreement", "probe/val/label_mode_agreement"} <= names


def test_target_alignment_matches_a_hand_built_shift():
    from hooks.probes import target_alignment_probe
    x = torch.arange(24).reshape(4, 6)  # distinct tokens: the next token is x[:, t + 1]
    y = torch.cat([x[:, 1:], torch.full((4, 1), -1)], 1)  # next-token targets, the last position unknown
    same = target_alignment_probe(x, y.reshape(-1))
    assert same["probe/train/target_next_same"] == pytest.approx(1.0)
    assert same["probe/train/target_next_transposed"] < 0.5
    flipped = target_alignment_probe(x, y.t().reshape(-1))  # flattened time-major
    assert flipped["probe/train/target_next_transposed"] == pytest.approx(1.0)
    assert flipped["probe/train/target_next_same"] < 0.5
    assert target_alignment_probe(torch.randn(4, 6), y) == {} and target_alignment_probe(x[:, :4], y[:, :4]) == {}


def _lm(tmp_path=None, time_major=False):
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, 12, (2000,), generator=g)
    seqs = torch.stack([data[s:s + 11] for s in range(0, 1900, 7)])
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(12, 16), nn.Linear(16, 12))
    opt, crit = torch.optim.Adam(model.parameters(), lr=1e-2), nn.CrossEntropyLoss()
    run = hooks.watch(model, optimizer=opt, loss_fn=crit, run_dir=tmp_path, name="lm", every=3) if tmp_path else None
    for i in range(20):
        x, y = seqs[i * 8:i * 8 + 8, :-1], seqs[i * 8:i * 8 + 8, 1:]
        opt.zero_grad()
        crit(model(x).reshape(-1, 12), (y.t() if time_major else y).reshape(-1)).backward()
        opt.step()
    if run is not None:
        run.close()
    return [p.detach().clone() for p in model.parameters()], run


@pytest.mark.parametrize("time_major", [False, True])
def test_a_watched_language_model_trains_bitwise_as_an_unwatched_one_and_is_probed(tmp_path, time_major):
    from diagnostics.health import invariance
    plain, _ = _lm(time_major=time_major)
    watched, run = _lm(tmp_path, time_major)
    assert all(torch.equal(a, b) for a, b in zip(plain, watched))
    found = invariance.rule_target_misaligned(diagnostics.open_run(run.path))
    assert [f.rule for f in found] == (["target_misaligned"] if time_major else [])


def test_feature_label_probe_finds_the_label_column_and_numpy_agrees():
    import numpy as np

    from hooks.probes import feature_label_probe
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 5, generator=g), torch.randint(0, 2, (64,), generator=g)
    leaked = torch.cat([x, (3 * y.float() - 1)[:, None]], 1)
    got = feature_label_probe(leaked, y)
    assert got["probe/train/feature_label_corr"] == pytest.approx(1.0)
    assert got["probe/train/feature_label_index"] == 5
    honest = feature_label_probe(x, y)["probe/train/feature_label_corr"]
    reference = max(abs(np.corrcoef(x[:, j].numpy(), y.numpy())[0, 1]) for j in range(5))
    assert honest == pytest.approx(reference, abs=1e-6) and honest < 0.5
    assert feature_label_probe(x[:, :1], y) == {} and feature_label_probe(x, y[:, None]) == {}


def _tabular(tmp_path, leak):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 6, generator=g)
    y = (x.sum(1) + torch.randn(512, generator=g) > 0).long()
    x = torch.cat([x, y[:, None].float()], 1) if leak else x
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(x.shape[1], 16), nn.ReLU(), nn.Linear(16, 2))
    opt, crit = torch.optim.Adam(model.parameters(), lr=1e-2), nn.CrossEntropyLoss()
    run = hooks.watch(model, optimizer=opt, loss_fn=crit, run_dir=tmp_path, name="tab", every=4) if tmp_path else None
    for i in range(24):
        idx = torch.arange(i * 32, i * 32 + 32) % 512
        opt.zero_grad()
        crit(model(x[idx]), y[idx]).backward()
        opt.step()
    if run is not None:
        run.close()
    return [p.detach().clone() for p in model.parameters()], run


@pytest.mark.parametrize("leak", [False, True])
def test_a_label_column_in_the_features_is_named_and_training_is_bitwise_unchanged(tmp_path, leak):
    from diagnostics.health import data
    plain, _ = _tabular(None, leak)
    watched, run = _tabular(tmp_path, leak)
    assert all(torch.equal(a, b) for a, b in zip(plain, watched))
    found = data.rule_target_leakage(diagnostics.open_run(run.path))
    assert [(f.rule, f.severity, f.evidence["feature"]) for f in found] == ([("target_leakage", "warning", 6)]
                                                                            if leak else [])
