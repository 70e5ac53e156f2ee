"""Small PNG thumbnails of the stored input previews, as data URLs a table can show.

A preview is one row of `Run.previews(split, ids)` (`kind`, `shape`, `values`). Images
become grey thumbnails (channels averaged, as Sample detail draws them; each scaled
from its own min to max, then enlarged by whole pixels so an 8×8 digit stays crisp);
signals and vectors become a dark sparkline on white of their first channel; token lists
get none. The PNG is written with zlib alone (8-bit greyscale), so no imaging library is
needed.

    from diagnostics.thumbnails import thumbnails
    urls = thumbnails(run.previews("val", ids))      # Series: sample_id -> "data:image/png;base64,..."
"""

from __future__ import annotations

import base64
import struct
import zlib
from collections.abc import Iterable

import numpy as np
import pandas as pd

IMAGE_SIDE = 64                  # images are enlarged by whole pixels up to at least this side
SPARKLINE_SIZE = (120, 32)       # width, height in pixels
_INK, _PAPER = 40, 255


def png_bytes(grey: np.ndarray) -> bytes:
    """An 8-bit greyscale PNG of a 2-D uint8 array."""
    grey = np.ascontiguousarray(grey, dtype=np.uint8)
    if grey.ndim != 2 or grey.size == 0:
        raise ValueError(f"png_bytes needs a non-empty 2-D array, got shape {grey.shape}")
    h, w = grey.shape
    raw = b"".join(b"\x00" + grey[row].tobytes() for row in range(h))  # filter type 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)  # 8-bit, greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


def image_pixels(values: np.ndarray, side: int = IMAGE_SIDE) -> np.ndarray:
    """uint8 grey pixels of an (H, W) or (H, W, C) image: min..max to 0..255, enlarged."""
    x = np.nan_to_num(np.asarray(values, dtype=np.float64))
    grey = x.mean(axis=-1) if x.ndim == 3 else x
    lo, hi = float(grey.min()), float(grey.max())
    scaled = (grey - lo) / (hi - lo) * 255 if hi > lo else np.full(grey.shape, 128.0)
    factor = max(1, -(-side // max(grey.shape)))
    return np.kron(np.rint(scaled).astype(np.uint8), np.ones((factor, factor), dtype=np.uint8))


def sparkline_pixels(values: np.ndarray, size: tuple[int, int] = SPARKLINE_SIZE) -> np.ndarray:
    """uint8 pixels of a 1-D series drawn as a line: each column spans the series' range over
    its share of the points (joined to the previous column), so no peak is dropped."""
    width, height = size
    y = np.nan_to_num(np.asarray(values, dtype=np.float64).reshape(-1))
    lo, hi = float(y.min()), float(y.max())
    rows = (hi - y) / (hi - lo) * (height - 1) if hi > lo else np.full(y.shape, (height - 1) / 2)
    starts = np.unique(np.linspace(0, len(rows), min(width, len(rows)) + 1).astype(int)[:-1])
    top, bottom = np.minimum.reduceat(rows, starts), np.maximum.reduceat(rows, starts)
    last = rows[np.append(starts[1:], len(rows)) - 1]  # each column's last point joins the next column
    top[1:], bottom[1:] = np.minimum(top[1:], last[:-1]), np.maximum(bottom[1:], last[:-1])
    grid = np.arange(height)[:, None]
    ink = (grid >= np.floor(top)) & (grid <= np.ceil(bottom))
    return np.where(ink, _INK, _PAPER).astype(np.uint8)


def thumbnail(kind: str, shape: Iterable[int], values: np.ndarray) -> str | None:
    """A "data:image/png;base64,..." URL for one preview, None for token lists or no data."""
    values = np.asarray(values, dtype=np.float64)
    shape = [int(s) for s in shape]
    if values.size == 0 or kind == "tokens" or int(np.prod(shape)) != values.size:
        return None
    x = values.reshape(shape)
    pixels = image_pixels(x) if kind == "image" else sparkline_pixels(x.reshape(x.shape[0], -1)[0]
                                                                       if kind == "signal" and x.ndim > 1 else x)
    return "data:image/png;base64," + base64.b64encode(png_bytes(pixels)).decode("ascii")


def thumbnails(previews: pd.DataFrame) -> pd.Series:
    """Thumbnail data URLs of a `Run.previews()` frame, indexed by sample_id (as text)."""
    if previews is None or previews.empty:
        return pd.Series(dtype=object, name="thumbnail")
    urls = [thumbnail(k, s, v) for k, s, v in zip(previews["kind"], previews["shape"], previews["values"])]
    index = previews["sample_id"].astype(str).to_numpy()
    out = pd.Series(urls, index=index, dtype=object, name="thumbnail")
    return out[~out.index.duplicated(keep="last")]
