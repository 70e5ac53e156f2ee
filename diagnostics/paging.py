"""Pages of long per-sample tables: filter and page on the server, so a review page sends the
browser one page of rows (and thumbnails for those rows only), however many samples a run
evaluated.

    page = page_of(table, page=2, page_size=200)
    page.rows          # rows 201-400
    page.label         # "rows 201–400 of 8,312"
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

PAGE_SIZES = (50, 100, 200, 500)
PAGE_SIZE = 200


@dataclass(frozen=True)
class Page:
    """One page of a filtered table: its `rows`, the filtered `total`, the 1-based `page`
    (clamped to the pages there are) and the `page_size` it was cut with."""

    rows: pd.DataFrame
    total: int
    page: int
    page_size: int

    @property
    def pages(self) -> int:
        """How many pages the filtered table has (1 when it is empty)."""
        return max(1, -(-self.total // self.page_size))

    @property
    def first(self) -> int:
        """1-based number of the page's first row (0 on an empty table)."""
        return (self.page - 1) * self.page_size + 1 if self.total else 0

    @property
    def last(self) -> int:
        return min(self.page * self.page_size, self.total)

    @property
    def label(self) -> str:
        """What the page shows, as a caption says it: "rows 201–400 of 8,312"."""
        if not self.total:
            return "no rows"
        return f"rows {self.first:,}–{self.last:,} of {self.total:,}"


def check_paging(page: int, page_size: int) -> tuple[int, int]:
    """`page` and `page_size` as ints, or a one-line ValueError."""
    try:
        page, page_size = int(page), int(page_size)
    except (TypeError, ValueError):
        raise ValueError(f"page={page!r}, page_size={page_size!r} — pass whole numbers, e.g. page=1, "
                         f"page_size={PAGE_SIZE}") from None
    if page_size < 1:
        raise ValueError(f"page_size={page_size} — pass a positive number of rows per page")
    return page, page_size


def page_span(total: int, page: int, page_size: int) -> tuple[int, int, int]:
    """The clamped 1-based page and the [start, stop) row positions it covers: a page past the
    end shows the last page, a page below 1 the first, so a shrinking filter never shows nothing."""
    page, page_size = check_paging(page, page_size)
    pages = max(1, -(-total // page_size))
    page = min(max(page, 1), pages)
    start = (page - 1) * page_size
    return page, start, min(start + page_size, total)


def page_of(frame: pd.DataFrame, page: int = 1, page_size: int = PAGE_SIZE) -> Page:
    """Rows of `frame`, in its order, on 1-based `page` of `page_size` rows (clamped).

        page_of(table, page=3, page_size=100).rows    # rows 201-300
    """
    page, start, stop = page_span(len(frame), page, page_size)
    return Page(frame.iloc[start:stop].reset_index(drop=True), len(frame), page, page_size)


def id_matches(ids: pd.Series, text: str | None) -> np.ndarray:
    """Which ids contain `text` (case-insensitive, surrounding spaces ignored); all with none."""
    text = (text or "").strip().lower()
    if not text:
        return np.ones(len(ids), dtype=bool)
    return ids.astype(str).str.lower().str.contains(text, regex=False).to_numpy(dtype=bool)


def search_ids(frame: pd.DataFrame, text: str | None, column: str = "sample_id") -> pd.DataFrame:
    """The rows whose `column` contains `text` (case-insensitive; every row with no text).

        search_ids(table, "12")     # ids 12, 112, 1203, ...
    """
    if not (text or "").strip():
        return frame
    return frame.loc[id_matches(frame[column], text)]
