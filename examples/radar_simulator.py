"""Simulated 60 GHz FMCW radar watching a breathing person, and the usual preprocessing; numpy only.

Physics relied on (see DOMAIN.md): the person's range bin, sampled over slow time (one
value per chirp frame, `fs` frames/s), is a complex number whose phase follows the chest,
phase(t) = 4π·d(t)/λ with λ = c / 60.5 GHz ≈ 4.96 mm. The chest moves 1–12 mm peak to
peak at 6–30 breaths/min — not a pure sine: period and depth drift, the waveform carries
harmonics, some windows hold a pause or a sigh — plus a 0.1–0.5 mm heartbeat at 0.8–2 Hz.
Other reflectors in the same bin add a static clutter vector; thermal noise gives an SNR
that falls with range (radar equation: received power ∝ 1/R⁴) and off-angle. Random body
motion moves the chest by centimetres within a second, faster than phase unwrapping can
follow at 20 frames/s (more than λ/4 per frame).

Preprocessing, as usually done: remove the I/Q mean (DC), phase = unwrap(atan2(Q, I)),
displacement = phase·λ/(4π), linear detrend, band-pass 0.1–0.6 Hz (FFT mask with soft
edges), normalise. The label is the counted rate: breathing cycles in the window per minute.

Error sources a reviewer should find in the metadata: `motion` (unwrapping jumps),
low `snr_db` (phase noise and cycle slips at long `range_m`), `harmonic_strength` (the
second harmonic mistaken for the rate), edge rates (few cycles per window near 8/min,
aliases of the band edges), and `heartbeat_amp_mm` large against a shallow `breath_amp_mm`.

    signals, rates, meta = make_radar_dataset(1000, seed=0)
    estimate_rate_fft(signals[:, 0], fs=20.0)   # classical baseline, breaths/min
"""

from __future__ import annotations

import numpy as np

WAVELENGTH_M = 299_792_458.0 / 60.5e9  # ≈ 4.96 mm
BAND_HZ = (0.1, 0.6)  # breathing band of the band-pass and the spectral search


def _smoothstep(u: np.ndarray) -> np.ndarray:
    u = np.clip(u, 0.0, 1.0)
    return u * u * (3.0 - 2.0 * u)


def _moving_average(x: np.ndarray, width: int) -> np.ndarray:
    """Box filter of `width` frames along the last axis, same length, edges held."""
    if width <= 1:
        return x
    padded = np.pad(x, ((0, 0), (width // 2 + 1, width - width // 2 - 1)), mode="edge")
    sums = np.cumsum(padded, axis=1)
    return (sums[:, width:] - sums[:, :-width]) / width


def _random_walk(rng: np.random.Generator, n: int, t_len: int, smooth: int) -> np.ndarray:
    """Slow zero-mean wander of unit-ish scale: a Brownian path, box-smoothed over `smooth` frames."""
    walk = _moving_average(np.cumsum(rng.standard_normal((n, t_len)), axis=1) / np.sqrt(t_len), smooth)
    return walk - walk.mean(axis=1, keepdims=True)


def _fidget(rng: np.random.Generator, n: int, t_len: int, smooth: int) -> np.ndarray:
    """Irregular movement of unit std: white noise smoothed over `smooth` frames (twice)."""
    x = _moving_average(_moving_average(rng.standard_normal((n, t_len)), smooth), smooth)
    return x / x.std(axis=1, keepdims=True)


def bandpass(x: np.ndarray, fs: float, low_hz: float = BAND_HZ[0], high_hz: float = BAND_HZ[1]) -> np.ndarray:
    """Zero-phase FFT band-pass along the last axis, with raised-cosine edges
    (0.5·low → low, high → high + 0.4 Hz) as gentle as a low-order IIR filter's; the
    signal is reflected at both ends first so the circular FFT does not wrap an edge step."""
    t_len = x.shape[-1]
    pad = t_len // 2
    padded = np.concatenate([x[..., pad:0:-1], x, x[..., -2:-pad - 2:-1]], axis=-1)
    freqs = np.fft.rfftfreq(padded.shape[-1], 1.0 / fs)
    rise = _smoothstep((freqs - 0.5 * low_hz) / (0.5 * low_hz))
    fall = 1.0 - _smoothstep((freqs - high_hz) / 0.4)
    spectrum = np.fft.rfft(padded, axis=-1) * (rise * fall)
    return np.fft.irfft(spectrum, n=padded.shape[-1], axis=-1)[..., pad:pad + t_len]


def preprocess(iq: np.ndarray, fs: float) -> np.ndarray:
    """Complex slow-time I/Q [..., T] → band-passed chest displacement in mm [..., T]."""
    centred = iq - iq.mean(axis=-1, keepdims=True)  # DC removal; distorts when the arc is short
    phase = np.unwrap(np.arctan2(centred.imag, centred.real), axis=-1)
    displacement_mm = phase * WAVELENGTH_M / (4 * np.pi) * 1e3
    t = np.arange(iq.shape[-1], dtype=float)
    slope = ((displacement_mm - displacement_mm.mean(-1, keepdims=True)) * (t - t.mean())).sum(-1, keepdims=True) / (
        (t - t.mean()) ** 2).sum()
    detrended = displacement_mm - displacement_mm.mean(-1, keepdims=True) - slope * (t - t.mean())
    return bandpass(detrended, fs)


def estimate_rate_fft(signal: np.ndarray, fs: float, band_hz: tuple[float, float] = BAND_HZ,
                      pad_factor: int = 8) -> np.ndarray | float:
    """Breaths/min from the highest spectral peak in `band_hz`: Hann window, zero padding,
    parabolic interpolation of the peak. `signal` is [T] (returns a float) or [..., T].

    Example::

        estimate_rate_fft(signals[:, 0], fs=20.0)  # one rate per sample
    """
    x = np.asarray(signal, dtype=float)
    x = x - x.mean(axis=-1, keepdims=True)
    t_len = x.shape[-1]
    n_fft = 1 << int(np.ceil(np.log2(t_len * pad_factor)))
    power = np.abs(np.fft.rfft(x * np.hanning(t_len), n=n_fft, axis=-1)) ** 2
    freqs = np.fft.rfftfreq(n_fft, 1.0 / fs)
    lo, hi = np.searchsorted(freqs, band_hz[0]), np.searchsorted(freqs, band_hz[1], side="right")
    k = lo + np.argmax(power[..., lo:hi], axis=-1)
    k = np.clip(k, 1, len(freqs) - 2)
    a, b, c = (np.log(np.take_along_axis(power, (k + d)[..., None], -1)[..., 0] + 1e-20) for d in (-1, 0, 1))
    offset = np.clip(0.5 * (a - c) / np.where(a - 2 * b + c == 0, -1e-12, a - 2 * b + c), -0.5, 0.5)
    rate = (freqs[k] + offset * (freqs[1] - freqs[0])) * 60.0
    return float(rate) if rate.ndim == 0 else rate


def make_radar_dataset(
    n: int,
    seconds: float = 30.0,
    fs: float = 20.0,
    seed: int = 0,
    rate_range_bpm: tuple[float, float] = (8.0, 30.0),
    motion_prob: float = 0.25,
    snr_db: float | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Simulate `n` windows of `seconds` at `fs` frames/s; returns (signals, rates, meta).

    signals: float32 [n, 1, T], the preprocessed displacement, zero mean and unit std per
    window; rates: float32 [n], counted breaths/min; meta: per-sample arrays (rate_set_bpm,
    breath_amp_mm, harmonic_strength, pause, sigh, heartbeat_amp_mm, heart_rate_bpm, motion,
    n_motion_events, range_m, snr_db, clutter_ratio, displacement_std_mm). Pass `snr_db`
    to fix the SNR and `motion_prob=0` for clean windows. The same seed gives the same data.

    Example::

        x, rates, meta = make_radar_dataset(200, seed=1, motion_prob=0.0, snr_db=30.0)
    """
    if n < 0 or seconds * fs < 16:
        raise ValueError(f"make_radar_dataset: need n >= 0 and at least 16 frames, got n={n}, {seconds} s at {fs} Hz")
    rng = np.random.default_rng(seed)
    t_len = int(round(seconds * fs))
    t = np.arange(t_len) / fs
    col = lambda a: np.asarray(a)[:, None]  # noqa: E731  per-sample scalar → broadcast over time

    # -- breathing: drifting rate and depth, harmonics, pauses and sighs --------------------
    rate_set = rng.uniform(*rate_range_bpm, n)
    rate_drift = rng.uniform(0.02, 0.12, n)
    freq_hz = col(rate_set / 60.0) * np.exp(col(rate_drift) * _random_walk(rng, n, t_len, int(fs)))
    pause = rng.random(n) < 0.12
    pause_start = rng.uniform(0.1, 0.8, n) * seconds
    pause_len = rng.uniform(2.0, 6.0, n)
    in_pause = col(pause) & (t >= col(pause_start)) & (t < col(pause_start + pause_len))
    freq_hz = np.where(in_pause, 0.0, freq_hz)
    cycles = np.cumsum(freq_hz, axis=1) / fs
    rates = (cycles[:, -1] / seconds * 60.0).astype(np.float32)  # counted cycles per minute
    phase = 2 * np.pi * cycles + col(rng.uniform(0, 2 * np.pi, n))
    # Most breaths are near-sinusoidal; about 1 in 8 has a plateau at end-expiration strong
    # enough that the second harmonic outweighs the fundamental.
    harmonic = np.where(rng.random(n) < 0.12, rng.uniform(0.7, 1.3, n), rng.uniform(0.0, 0.45, n))
    shape = -np.cos(phase) + col(harmonic) * np.cos(2 * phase + col(rng.uniform(0, 2 * np.pi, n)))
    shape /= col(1.0 + harmonic)
    breath_amp = np.exp(rng.uniform(np.log(1.0), np.log(12.0), n))  # mm peak to peak, log-uniform
    depth = col(breath_amp) * (1.0 + col(rng.uniform(0.05, 0.3, n)) * _random_walk(rng, n, t_len, int(2 * fs)))
    sigh = rng.random(n) < 0.12
    sigh_at = rng.uniform(0.1, 0.9, n) * seconds
    depth = depth * (1.0 + col(sigh * rng.uniform(1.0, 2.0, n)) * np.exp(-0.5 * ((t - col(sigh_at)) / 2.0) ** 2))
    chest_mm = 0.5 * depth * shape

    # -- heartbeat -----------------------------------------------------------------------
    heart_amp = rng.uniform(0.1, 0.5, n)
    heart_hz = rng.uniform(0.8, 2.0, n)
    heart_phase = 2 * np.pi * np.cumsum(col(heart_hz) * (1 + 0.03 * _random_walk(rng, n, t_len, int(fs))), 1) / fs
    chest_mm = chest_mm + 0.5 * col(heart_amp) * (np.sin(heart_phase) + 0.3 * np.sin(2 * heart_phase))

    # -- body motion: posture shifts (stay) or movements that return, with fidgeting -------
    reflect = np.ones((n, t_len))
    n_events = np.where(rng.random(n) < motion_prob, rng.integers(1, 4, n), 0)
    for k in range(3):
        active = col(k < n_events)
        start = col(rng.uniform(-1.0, seconds - 1.0, n))
        dur = col(rng.uniform(1.0, 5.0, n))
        size_mm = col(rng.choice([-1.0, 1.0], n) * rng.uniform(5.0, 40.0, n))
        u = (t - start) / dur
        stays = col(rng.random(n) < 0.5)
        move = np.where(stays, _smoothstep(u), np.sin(np.pi * np.clip(u, 0, 1)) ** 2)
        during = np.sin(np.pi * np.clip(u, 0, 1))  # 0 outside the event, 1 in its middle
        fidget_mm = col(rng.uniform(2.0, 10.0, n)) * _fidget(rng, n, t_len, int(0.3 * fs)) * during
        chest_mm = chest_mm + active * (size_mm * move + fidget_mm)
        # the chest turns while moving: its echo strength changes, and stays changed after a shift
        aspect = np.where(stays, col(rng.uniform(-0.5, 0.5, n)) * _smoothstep(u), 0.0) + 0.4 * during * _fidget(
            rng, n, t_len, int(0.5 * fs))
        reflect = reflect * np.where(active, np.clip(1.0 + aspect, 0.1, None), 1.0)

    # -- the radar: phase from displacement, clutter, noise at a range-dependent SNR -----------
    range_m = rng.uniform(0.4, 3.0, n)
    off_angle_db = rng.uniform(0.0, 10.0, n)
    snr = 28.0 - 40.0 * np.log10(range_m) - off_angle_db + rng.normal(0.0, 2.0, n) if snr_db is None \
        else np.full(n, float(snr_db))
    clutter_ratio = rng.uniform(0.0, 0.6, n)
    clutter = clutter_ratio * np.exp(1j * rng.uniform(0, 2 * np.pi, n))
    echo = reflect * np.exp(1j * (4 * np.pi * chest_mm * 1e-3 / WAVELENGTH_M + col(rng.uniform(0, 2 * np.pi, n))))
    noise_std = col(np.sqrt(0.5 * 10 ** (-snr / 10)))
    iq = echo + col(clutter) + noise_std * (rng.standard_normal((n, t_len)) + 1j * rng.standard_normal((n, t_len)))

    displacement = preprocess(iq, fs)
    spread = displacement.std(axis=1)
    signals = ((displacement - displacement.mean(1, keepdims=True)) / col(np.maximum(spread, 1e-9)))
    meta = {
        "rate_set_bpm": rate_set, "rate_drift": rate_drift, "breath_amp_mm": breath_amp,
        "harmonic_strength": harmonic, "pause": pause, "sigh": sigh,
        "heartbeat_amp_mm": heart_amp, "heart_rate_bpm": heart_hz * 60.0,
        "motion": n_events > 0, "n_motion_events": n_events,
        "range_m": range_m, "snr_db": snr, "clutter_ratio": clutter_ratio, "displacement_std_mm": spread,
    }
    return signals.astype(np.float32)[:, None], rates, meta
