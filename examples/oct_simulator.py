"""Simulated retinal OCT B-scans in four classes (CNV, DME, DRUSEN, NORMAL); numpy only.

Stands in for Kermany et al. (Cell 2018), which cannot be downloaded here. What is drawn
(see DOMAIN.md): dark vitreous on top, then the retina's bands top to bottom — nerve fibre
layer (bright), ganglion cell / inner plexiform layers, inner nuclear layer (dark), outer
plexiform layer, outer nuclear layer (dark, thick), the photoreceptor junction (thin bright
line), the RPE (brightest), the choroid below — all following the eye's curvature, with a
foveal pit where the inner layers thin out. Speckle is multiplicative (gamma distributed,
`speckle_looks` looks) on top of additive noise; brightness, contrast, tilt and signal
strength vary per scan.

Class signs, each scaled by a per-sample `severity` in [0, 1] (0: the scan is drawn
exactly as NORMAL is):

- CNV: an irregular, elevated RPE (fibrovascular detachment) over heterogeneous material
  (a quarter barely raise it: type 2, fluid-dominant), subretinal fluid (a dark pocket
  under the retina), sometimes a few intraretinal cysts;
- DME: round dark intraretinal cysts in the inner and outer nuclear layers, a thickened
  retina with a flattened pit, sometimes a little subretinal fluid;
- DRUSEN: small dome-shaped bumps of the RPE with medium-bright material beneath;
- NORMAL: smooth layers and a clean pit.

Severity is drawn mostly moderate with a tail of mild cases, and scan quality (signal
strength against a fixed noise floor) mostly good with a tail of weak scans, so the known
confusions happen: small drusen read as NORMAL, CNV and DME both show fluid, dim scans
hide every sign.

    images, labels, meta = make_oct_dataset(2000, seed=0)   # ~1 s
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

CLASSES = ("CNV", "DME", "DRUSEN", "NORMAL")
CNV, DME, DRUSEN, NORMAL = range(4)

# Reflectivity over the retina's layer coordinate s: 0 at the photoreceptor tips, 1 at
# the outer/inner retina boundary (top of the OPL), 2 at the inner limiting membrane.
_RETINA_S = np.array([0.00, 0.04, 0.08, 0.13, 0.20, 0.78, 0.86, 0.96, 1.02, 1.08, 1.28, 1.36, 1.70, 1.80, 1.90, 2.00])
_RETINA_I = np.array([0.55, 0.80, 0.80, 0.30, 0.16, 0.18, 0.50, 0.50, 0.20, 0.17, 0.20, 0.48, 0.45, 0.72, 0.78, 0.72])
_VITREOUS, _FLUID, _RPE, _CHOROID = 0.03, 0.04, 1.0, 0.42
_MAX_CYSTS, _MAX_DRUSEN = 12, 6


def _sample_severity(rng: np.random.Generator, n: int) -> np.ndarray:
    # Mostly moderate disease with a tail of mild cases (about 1 in 9 below 0.25).
    return rng.beta(2.0, 1.5, n)


def _sample_quality(rng: np.random.Generator, n: int) -> np.ndarray:
    # Mostly good scans with a tail of weak ones (about 1 in 11 below 0.45).
    return np.clip(rng.beta(4.0, 1.6, n), 0.08, 1.0)


def _bump(x: np.ndarray, centre: np.ndarray, half_width: np.ndarray) -> np.ndarray:
    """A dome sqrt(1 - u²) of height 1 over |u| < 1, u = (x - centre) / half_width."""
    u = (x - centre) / half_width
    return np.sqrt(np.clip(1.0 - u * u, 0.0, None))


def make_oct_dataset(
    n: int,
    size: int = 64,
    seed: int = 0,
    class_probs: Sequence[float] | None = None,
    severity: float | None = None,
    quality: float | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Simulate `n` B-scans of `size`×`size`; returns (images, labels, meta).

    images: float32 [n, 1, size, size] in [0, 1]; labels: int64 [n] indexing `CLASSES`
    (balanced unless `class_probs` is given); meta: per-sample arrays of length n —
    the knobs (severity, 0 for NORMAL; quality, the signal strength; brightness, contrast,
    speckle_looks, noise_sigma, tilt, curvature, fovea_x) and where the signs are
    (rpe_row and ilm_row: mean rows of the RPE top and the retina's surface;
    retina_thickness_px, rpe_elevation_px, fluid_height_px, n_drusen, n_cysts,
    cyst_area_px). `severity` / `quality` fix those knobs for every sample instead of
    drawing them. The same seed gives the same data.

    Example::

        x, y, meta = make_oct_dataset(500, seed=1, class_probs=(0, 1, 0, 0), severity=1.0)
    """
    if n < 0 or size < 16:
        raise ValueError(f"make_oct_dataset: need n >= 0 and size >= 16, got n={n}, size={size}")
    rng = np.random.default_rng(seed)
    H = W = size
    if class_probs is None:
        labels = rng.permutation(np.arange(n) % len(CLASSES)).astype(np.int64)
    else:
        p = np.asarray(class_probs, float)
        labels = rng.choice(len(CLASSES), size=n, p=p / p.sum()).astype(np.int64)
    is_cnv, is_dme, is_drusen = (labels == CNV), (labels == DME), (labels == DRUSEN)
    sick = labels != NORMAL
    sev = np.where(sick, _sample_severity(rng, n) if severity is None else float(severity), 0.0)
    q = _sample_quality(rng, n) if quality is None else np.full(n, float(quality))

    col = lambda a: a[:, None]  # noqa: E731  per-sample scalar → broadcast over columns
    x = (np.arange(W) + 0.5) / W - 0.5  # [-0.5, 0.5), fovea near 0

    # -- anatomy shared by every class -----------------------------------------------
    fovea_x = rng.uniform(-0.12, 0.12, n)
    curvature = rng.uniform(-0.10, 0.30, n)
    tilt = rng.normal(0.0, 0.10, n)
    base = rng.uniform(0.60, 0.70, n)
    outer0 = H * rng.uniform(0.12, 0.15, n)
    inner0 = H * rng.uniform(0.13, 0.17, n)
    pit_depth = rng.uniform(0.65, 0.90, n)
    pit_width = rng.uniform(0.06, 0.10, n)
    rpe_thick = H * 0.035
    macula = np.exp(-0.5 * ((x - col(fovea_x)) / 0.22) ** 2)
    pit = np.exp(-0.5 * ((x - col(fovea_x)) / col(pit_width)) ** 2)

    # DME thickens the retina around the macula and flattens the pit.
    thicken = 1.0 + 0.55 * col(sev * is_dme) * macula
    inner = col(inner0) * (1.0 - col(pit_depth * (1.0 - 0.7 * sev * is_dme)) * pit) * thicken
    outer = col(outer0) * (1.0 + 0.15 * pit) * thicken
    y_bm = H * (col(base) + col(curvature) * x**2 + col(tilt) * x)  # Bruch's membrane [n, W]

    # -- RPE elevation: drusen domes (DRUSEN) or an irregular detachment (CNV) -----------
    elevation = np.zeros((n, W))
    n_drusen = np.where(is_drusen & (sev > 0), 1 + np.round(sev * rng.uniform(2, _MAX_DRUSEN - 1, n)), 0).astype(int)
    for k in range(_MAX_DRUSEN):
        height = H * 0.1 * sev * rng.uniform(0.5, 1.0, n) * (k < n_drusen)
        half = rng.uniform(0.025, 0.055, n) * (0.6 + 0.6 * sev)
        elevation = np.maximum(elevation, col(height) * _bump(x, col(fovea_x + rng.uniform(-0.3, 0.3, n)), col(half)))
    ped_centre = fovea_x + rng.uniform(-0.1, 0.1, n)
    ped_half = rng.uniform(0.10, 0.20, n)
    ripple = 1.0 + 0.3 * np.sin(col(rng.uniform(25, 60, n)) * x + col(rng.uniform(0, 6.3, n)))
    # A quarter of CNV grows above the RPE (type 2): fluid-dominant, the RPE barely raised.
    ped_scale = np.where(rng.random(n) < 0.25, 0.25, 1.0) * rng.uniform(0.6, 1.0, n)
    ped = col(H * 0.11 * sev * is_cnv * ped_scale) * _bump(x, col(ped_centre), col(ped_half)) ** 0.7
    elevation = np.maximum(elevation, ped * ripple)
    y_rpe = y_bm - elevation  # bottom of the RPE band

    # -- subretinal fluid lifts the retina off the RPE (CNV mostly, DME sometimes) -------
    srf_height = H * sev * np.where(is_cnv, 0.10 * rng.uniform(0.4, 1.0, n) * (rng.random(n) < 0.85),
                                    np.where(is_dme, 0.045 * rng.uniform(0.3, 1.0, n) * (rng.random(n) < 0.45), 0.0))
    srf = col(srf_height) * _bump(x, col(fovea_x + rng.uniform(-0.08, 0.08, n)), col(rng.uniform(0.08, 0.2, n))) ** 0.5
    y_ret = y_rpe - rpe_thick - srf  # photoreceptor tips [n, W]

    # -- paint the layers -------------------------------------------------------------
    f32 = np.float32
    y = (np.arange(H, dtype=f32) + 0.5)[None, :, None]
    y_ret3, y_rpe3, y_bm3 = (a.astype(f32)[:, None, :] for a in (y_ret, y_rpe, y_bm))
    out3, inn3 = outer.astype(f32)[:, None, :], np.maximum(inner, 1e-3).astype(f32)[:, None, :]
    h = y_ret3 - y  # height above the photoreceptor tips, pixels
    s = np.where(h < out3, h / out3, 1.0 + (h - out3) / inn3)
    img = np.interp(s, _RETINA_S, _RETINA_I).astype(f32)
    img[s > 2.0] = _VITREOUS
    img[h < 0] = _FLUID
    rpe_depth = (y - (y_rpe3 - rpe_thick)) / rpe_thick
    band = rpe_depth > 0
    img[band] = _RPE * (1.0 - 0.15 * rpe_depth[band])
    # Beneath an elevated RPE: drusen material is medium-bright, a CNV membrane mottled.
    sub = y > y_rpe3
    img[sub] = 0.5
    phase = rng.uniform(0, 6.3, n)
    cnv_idx = np.flatnonzero(is_cnv)
    mottle = 0.38 + 0.12 * np.sin(0.9 * y + phase[cnv_idx, None, None] + 7.0 * x).astype(f32)
    img[cnv_idx] = np.where(sub[cnv_idx], mottle, img[cnv_idx])
    depth = y - y_bm3
    choroid = depth > 0
    d = depth[choroid]
    img[choroid] = _CHOROID * np.exp(-d / (0.09 * H)) * (0.8 + 0.2 * np.cos(1.3 * d))

    # -- intraretinal cysts (DME: many, CNV: a few) in the nuclear layers ---------------
    n_cysts = np.where(is_dme, np.round(sev * rng.uniform(4, _MAX_CYSTS, n)),
                       np.where(is_cnv & (rng.random(n) < 0.5), np.round(sev * rng.uniform(1, 5, n)), 0)).astype(int)
    cyst_mask = np.zeros((n, H, W), np.float32)
    cols_x = np.arange(W, dtype=np.float32)[None, None, :]
    for k in range(_MAX_CYSTS):
        cx = np.clip(fovea_x + rng.uniform(-0.25, 0.25, n), -0.48, 0.48)
        layer_s = rng.uniform(0.25, 1.25, n)  # ONL to INL
        r = H * rng.uniform(0.02, 0.05, n) * (0.6 + 0.6 * sev)
        idx = np.flatnonzero(k < n_cysts)  # draw every slot (same stream), paint only the active
        ci = np.clip(((cx[idx] + 0.5) * W).astype(int), 0, W - 1)
        o, i = outer[idx, ci], inner[idx, ci]
        cy = y_ret[idx, ci] - np.where(layer_s[idx] < 1, layer_s[idx] * o, o + (layer_s[idx] - 1) * i)
        d2 = ((cols_x - ((cx[idx] + 0.5) * W)[:, None, None]) / (1.2 * r[idx])[:, None, None]) ** 2 + (
            (y - cy[:, None, None]) / r[idx][:, None, None]) ** 2
        cyst_mask[idx] = np.maximum(cyst_mask[idx], np.clip((1.0 - d2) * 3.0, 0.0, 1.0))
    img = img * (1.0 - cyst_mask) + _FLUID * cyst_mask

    # -- the scanner: point spread, signal strength, speckle, noise -----------------------
    img[:, 1:-1] = 0.25 * img[:, :-2] + 0.5 * img[:, 1:-1] + 0.25 * img[:, 2:]
    img[:, :, 1:-1] = 0.25 * img[:, :, :-2] + 0.5 * img[:, :, 1:-1] + 0.25 * img[:, :, 2:]
    looks = rng.uniform(1.5, 4.0, n)
    speckle = rng.standard_gamma(np.repeat(looks.astype(f32), H * W), dtype=f32).reshape(n, H, W)
    speckle /= looks.astype(f32)[:, None, None]
    brightness = rng.uniform(0.0, 0.08, n)
    contrast = rng.uniform(0.8, 1.15, n)
    noise_sigma = rng.uniform(0.03, 0.06, n)
    signal = contrast * q
    img *= speckle
    img *= signal.astype(f32)[:, None, None]
    img += brightness.astype(f32)[:, None, None]
    img += noise_sigma.astype(f32)[:, None, None] * rng.standard_normal((n, H, W), dtype=f32)
    img = np.clip(img, 0.0, 1.0)[:, None]

    meta = {
        "severity": sev, "quality": q, "brightness": brightness, "contrast": contrast,
        "speckle_looks": looks, "noise_sigma": noise_sigma, "tilt": tilt, "curvature": curvature,
        "fovea_x": fovea_x,
        "rpe_row": (y_rpe - rpe_thick).mean(axis=1),
        "ilm_row": (y_ret - outer - inner).mean(axis=1),
        "retina_thickness_px": (outer + inner)[:, W // 4: 3 * W // 4].mean(axis=1),
        "rpe_elevation_px": elevation.max(axis=1),
        "fluid_height_px": srf.max(axis=1),
        "n_drusen": n_drusen, "n_cysts": n_cysts,
        "cyst_area_px": (cyst_mask > 0.5).sum(axis=(1, 2)),
    }
    return img, labels, meta
