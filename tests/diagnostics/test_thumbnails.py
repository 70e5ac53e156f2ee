"""Thumbnails of stored previews: valid PNGs (decoded with Pillow as the reference) whose
pixels follow the preview by hand."""

from __future__ import annotations

import base64
import io

import numpy as np
import pandas as pd
import pytest

from diagnostics.thumbnails import png_bytes, thumbnail, thumbnails

Image = pytest.importorskip("PIL.Image")


def _decode(url: str) -> np.ndarray:
    assert url.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("L"))


def test_png_bytes_round_trips_through_pillow():
    grey = np.arange(12 * 7, dtype=np.uint8).reshape(12, 7) * 3
    decoded = np.asarray(Image.open(io.BytesIO(png_bytes(grey))))
    np.testing.assert_array_equal(decoded, grey)
    with pytest.raises(ValueError, match="2-D"):
        png_bytes(np.zeros((2, 2, 3), dtype=np.uint8))


def test_image_thumbnail_is_grey_scaled_min_to_max_and_enlarged_by_whole_pixels():
    rng = np.random.default_rng(0)
    rgb = rng.uniform(-1, 3, (8, 8, 3))
    px = _decode(thumbnail("image", [8, 8, 3], rgb.reshape(-1)))
    assert px.shape == (64, 64)  # 8 × 8, each pixel 8 × 8
    grey = rgb.mean(axis=-1)
    expected = np.rint((grey - grey.min()) / (grey.max() - grey.min()) * 255)
    np.testing.assert_array_equal(px[::8, ::8], expected)
    assert (px[:8, :8] == px[0, 0]).all()
    # a constant image is mid grey, not a division by zero
    assert set(np.unique(_decode(thumbnail("image", [4, 4, 1], np.ones(16))))) == {128}


def test_signal_thumbnail_draws_the_first_channel_as_a_line():
    ramp = np.concatenate([np.linspace(0, 1, 240), -np.ones(240)])  # channel 2 must not show
    px = _decode(thumbnail("signal", [2, 240], ramp))
    assert px.shape == (32, 120)
    ink = px < 128
    assert ink.any(axis=0).all()  # every column drawn: an unbroken line
    top = ink.argmax(axis=0)
    assert top[0] >= 30 and top[-1] == 0  # rising: from the bottom-left to the top-right
    assert np.all(np.diff(top) <= 0)


def test_tokens_and_bad_shapes_get_no_thumbnail_and_the_frame_is_indexed_by_id():
    assert thumbnail("tokens", [5], np.arange(5.0)) is None
    assert thumbnail("image", [3, 3, 1], np.zeros(4)) is None
    frame = pd.DataFrame({"sample_id": ["7", "8"], "kind": ["vector", "tokens"], "shape": [[4], [2]],
                          "values": [np.arange(4.0), np.arange(2.0)]})
    urls = thumbnails(frame)
    assert list(urls.index) == ["7", "8"] and urls["8"] is None and _decode(urls["7"]).shape == (32, 4)
    assert thumbnails(frame.iloc[:0]).empty
