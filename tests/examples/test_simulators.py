"""The example problems: OCT and radar simulators (shapes, determinism, the signs they
promise, the classical baseline's known failures) and the two training scripts end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import diagnostics
from examples import oct_cnn, radar_cnn
from examples.oct_simulator import CLASSES, CNV, DME, DRUSEN, NORMAL, make_oct_dataset
from examples.radar_simulator import bandpass, estimate_rate_fft, make_radar_dataset


def _only(cls: int) -> tuple[float, ...]:
    return tuple(float(c == cls) for c in range(len(CLASSES)))


def _dark_fraction(images: np.ndarray, meta: dict) -> np.ndarray:
    """Share of near-black pixels inside the retina (ILM to RPE rows, central half): fluid."""
    n, _, h, w = images.shape
    rows = np.arange(h)[None, :]
    band = (rows >= meta["ilm_row"][:, None] + 2) & (rows <= meta["rpe_row"][:, None] - 1)
    dark = (images[:, 0, :, w // 4: 3 * w // 4] < 0.08) & band[:, :, None]
    return dark.sum(axis=(1, 2)) / (band.sum(axis=1) * (w // 2))


def _rpe_irregularity(images: np.ndarray, meta: dict) -> np.ndarray:
    """Std of the brightest row near the RPE across columns, around a quadratic (the eye's
    curvature and tilt): bumps (drusen) and a detachment (CNV) raise it."""
    img = images[:, 0].astype(float)
    img = (img[:, :-2] + 2 * img[:, 1:-1] + img[:, 2:]) / 4
    img = (img[:, :, :-2] + img[:, :, 1:-1] + img[:, :, 2:]) / 3
    rows = np.arange(img.shape[1])[None, :, None] + 1
    near = (rows >= meta["rpe_row"][:, None, None] - 8) & (rows <= meta["rpe_row"][:, None, None] + 6)
    brightest = np.where(near, img, -1.0).argmax(axis=1).astype(float)  # [n, columns]
    cols = np.arange(brightest.shape[1])
    fit = np.polynomial.polynomial.polyval(cols, np.polynomial.polynomial.polyfit(cols, brightest.T, 2))
    return (brightest - fit).std(axis=1)


# -- OCT ---------------------------------------------------------------------------------
def test_oct_shapes_dtypes_ranges():
    images, labels, meta = make_oct_dataset(40, seed=0)
    assert images.shape == (40, 1, 64, 64) and images.dtype == np.float32
    assert labels.shape == (40,) and labels.dtype == np.int64
    assert 0.0 <= images.min() and images.max() <= 1.0
    assert np.bincount(labels, minlength=4).tolist() == [10, 10, 10, 10]  # balanced by default
    assert all(len(v) == 40 for v in meta.values())
    assert (meta["severity"][labels == NORMAL] == 0).all() and (meta["severity"] <= 1).all()
    small, _, _ = make_oct_dataset(3, size=32, seed=0)
    assert small.shape == (3, 1, 32, 32)


def test_oct_is_deterministic_per_seed():
    a, la, ma = make_oct_dataset(16, seed=7)
    b, lb, mb = make_oct_dataset(16, seed=7)
    c, _, _ = make_oct_dataset(16, seed=8)
    assert np.array_equal(a, b) and np.array_equal(la, lb)
    assert all(np.array_equal(ma[k], mb[k]) for k in ma)
    assert not np.array_equal(a, c)


def test_oct_signs_show_where_the_metadata_says():
    n = 120
    normal, _, m_normal = make_oct_dataset(n, seed=1, class_probs=_only(NORMAL), quality=1.0)
    dme, _, m_dme = make_oct_dataset(n, seed=2, class_probs=_only(DME), severity=1.0, quality=1.0)
    cnv, _, m_cnv = make_oct_dataset(n, seed=3, class_probs=_only(CNV), severity=1.0, quality=1.0)
    drusen, _, m_drusen = make_oct_dataset(n, seed=4, class_probs=_only(DRUSEN), severity=1.0, quality=1.0)
    # DME: cysts in the nuclear layers (dark pixels inside the retina) and a thicker retina
    assert (m_dme["n_cysts"] > 0).all() and (m_normal["n_cysts"] == 0).all()
    assert _dark_fraction(dme, m_dme).mean() > 1.5 * _dark_fraction(normal, m_normal).mean()
    assert m_dme["retina_thickness_px"].mean() > 1.3 * m_normal["retina_thickness_px"].mean()
    # CNV: subretinal fluid (dark) and an elevated, irregular RPE
    assert (m_cnv["fluid_height_px"] > 0).mean() > 0.7
    assert _dark_fraction(cnv, m_cnv).mean() > 1.2 * _dark_fraction(normal, m_normal).mean()
    assert _rpe_irregularity(cnv, m_cnv).mean() > 1.5 * _rpe_irregularity(normal, m_normal).mean()
    # DRUSEN: RPE bumps, the retina above intact (no fluid)
    assert (m_drusen["rpe_elevation_px"] > 1).all() and (m_normal["rpe_elevation_px"] == 0).all()
    assert (m_drusen["fluid_height_px"] == 0).all()
    assert _rpe_irregularity(drusen, m_drusen).mean() > 1.5 * _rpe_irregularity(normal, m_normal).mean()


@pytest.mark.parametrize("cls", [CNV, DME, DRUSEN])
def test_oct_severity_zero_looks_normal(cls):
    n = 150
    normal, _, m_normal = make_oct_dataset(n, seed=10, class_probs=_only(NORMAL), quality=1.0)
    sick0, _, m0 = make_oct_dataset(n, seed=11, class_probs=_only(cls), severity=0.0, quality=1.0)
    sick1, _, m1 = make_oct_dataset(n, seed=11, class_probs=_only(cls), severity=1.0, quality=1.0)
    for feature in (_dark_fraction, _rpe_irregularity):
        ref, f0, _f1 = feature(normal, m_normal), feature(sick0, m0), feature(sick1, m1)
        se = np.sqrt(ref.var() / n + f0.var() / n)
        assert abs(f0.mean() - ref.mean()) < 4 * se, feature.__name__  # two-sample z below 4
    assert abs(normal.mean() - sick0.mean()) < 0.01
    assert m0["rpe_elevation_px"].max() == 0 and m0["n_cysts"].max() == 0 and m0["fluid_height_px"].max() == 0
    # ... while at full severity the class's own sign stands out
    sign = _dark_fraction if cls == DME else _rpe_irregularity
    assert sign(sick1, m1).mean() > sign(normal, m_normal).mean() + 6 * np.sqrt(
        sign(normal, m_normal).var() / n + sign(sick1, m1).var() / n)


def test_oct_weak_scans_are_dim():
    good, _, _ = make_oct_dataset(50, seed=5, quality=1.0)
    weak, _, _ = make_oct_dataset(50, seed=5, quality=0.2)
    assert weak.mean() < 0.6 * good.mean()
    assert weak.std(axis=(2, 3)).mean() < good.std(axis=(2, 3)).mean()


# -- radar -------------------------------------------------------------------------------
def test_radar_shapes_dtypes_ranges():
    signals, rates, meta = make_radar_dataset(24, seed=0)
    assert signals.shape == (24, 1, 600) and signals.dtype == np.float32
    assert rates.shape == (24,) and rates.dtype == np.float32
    assert np.isfinite(signals).all()
    np.testing.assert_allclose(signals.mean(axis=2), 0.0, atol=1e-4)
    np.testing.assert_allclose(signals.std(axis=2), 1.0, atol=1e-3)
    assert (rates > 4).all() and (rates <= 30.5).all()  # 8–30/min, lower where a pause was counted
    assert all(len(v) == 24 for v in meta.values())
    assert meta["motion"].dtype == bool
    short, _, _ = make_radar_dataset(2, seconds=20, fs=10, seed=0)
    assert short.shape == (2, 1, 200)


def test_radar_is_deterministic_per_seed():
    a, ra, ma = make_radar_dataset(8, seed=3)
    b, rb, mb = make_radar_dataset(8, seed=3)
    c, _, _ = make_radar_dataset(8, seed=4)
    assert np.array_equal(a, b) and np.array_equal(ra, rb)
    assert all(np.array_equal(ma[k], mb[k]) for k in ma)
    assert not np.array_equal(a, c)


def test_fft_estimate_recovers_clean_rates():
    signals, rates, meta = make_radar_dataset(200, seed=1, motion_prob=0.0, snr_db=30.0)
    clean = ~meta["pause"] & (meta["harmonic_strength"] < 0.5)
    assert clean.sum() > 100
    error = np.abs(estimate_rate_fft(signals[:, 0], fs=20.0) - rates)[clean]
    assert (error <= 2.0).all(), np.sort(error)[-5:]
    assert np.median(error) < 0.5
    assert isinstance(estimate_rate_fft(signals[0, 0], fs=20.0), float)


def test_fft_estimate_fails_more_on_motion_and_low_snr():
    kept = {}
    for label, kwargs in (("clean", dict(motion_prob=0.0, snr_db=30.0)), ("motion", dict(motion_prob=1.0, snr_db=30.0)),
                          ("low_snr", dict(motion_prob=0.0, snr_db=-3.0))):
        signals, rates, meta = make_radar_dataset(200, seed=2, **kwargs)
        ok = ~meta["pause"] & (meta["harmonic_strength"] < 0.5)
        kept[label] = (np.abs(estimate_rate_fft(signals[:, 0], fs=20.0) - rates)[ok] > 2.0).mean()
    assert kept["motion"] > kept["clean"] + 0.15
    assert kept["low_snr"] > kept["clean"] + 0.3


def test_bandpass_keeps_breathing_and_drops_drift_and_heartbeat():
    fs, t = 20.0, np.arange(600) / 20.0
    breath, drift, heart = np.sin(2 * np.pi * 0.3 * t), np.sin(2 * np.pi * 0.02 * t), np.sin(2 * np.pi * 1.5 * t)
    out = bandpass(breath + drift + heart, fs)
    inner = slice(60, -60)  # 3 s from either edge
    assert np.corrcoef(out[inner], breath[inner])[0, 1] > 0.99
    assert (out - breath)[inner].std() < 0.1


# -- training scripts end to end -------------------------------------------------------------
@pytest.mark.slow
def test_oct_script_runs_end_to_end(tmp_path):
    threads = torch.get_num_threads()
    oct_cnn.main(["--runs-dir", str(tmp_path), "--n", "64", "--epochs", "1", "--name", "oct-tiny"])
    assert torch.get_num_threads() == threads  # main() gives the thread setting back
    run = diagnostics.open_run(tmp_path / "oct-tiny")
    scalars = run.scalars()
    assert not scalars.empty and "val/acc" in set(scalars["name"])
    assert not run.distributions("activation").empty
    assert run.manifest["class_names"] == list(CLASSES)


@pytest.mark.slow
def test_radar_script_runs_end_to_end(tmp_path):
    path = radar_cnn.train(tmp_path, name="radar-tiny", n=64, epochs=1)
    run = diagnostics.open_run(path)
    scalars = run.scalars()
    assert not scalars.empty and "val/mae_bpm" in set(scalars["name"])
    assert not run.distributions("activation").empty
    assert run.manifest["task"] == "regression"
