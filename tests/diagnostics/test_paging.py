"""Paging and filtering per-sample tables on the server: pages against hand counts, the
error review's filters and orders against a plain pandas reference, the Data map's pages
against `label_error_suspects`."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from diagnostics import dynamics as dyn
from diagnostics.errors import ReviewFilter, page_table, review_order, worst_cases
from diagnostics.paging import page_of, search_ids
from tests.diagnostics.test_errors import classification_frame


def test_a_page_says_which_rows_it_holds():
    table = pd.DataFrame({"sample_id": [str(i) for i in range(1000)], "x": np.arange(1000)})
    page = page_of(table, page=3, page_size=100)
    assert page.rows["x"].tolist() == list(range(200, 300))
    assert (page.total, page.pages, page.first, page.last) == (1000, 10, 201, 300)
    assert page.label == "rows 201–300 of 1,000"
    last = page_of(table, page=4, page_size=300)
    assert last.label == "rows 901–1,000 of 1,000" and len(last.rows) == 100


def test_a_page_past_the_end_shows_the_last_one_and_an_empty_table_says_so():
    table = pd.DataFrame({"x": np.arange(250)})
    assert page_of(table, page=99, page_size=100).page == 3
    assert page_of(table, page=99, page_size=100).rows["x"].tolist() == list(range(200, 250))
    assert page_of(table, page=0, page_size=100).page == 1
    empty = page_of(table.iloc[:0], page=5)
    assert (empty.total, empty.page, empty.pages, empty.label) == (0, 1, 1, "no rows")
    with pytest.raises(ValueError, match="positive number of rows"):
        page_of(table, page=1, page_size=0)
    with pytest.raises(ValueError, match="whole numbers"):
        page_of(table, page="two")


def test_id_search_is_a_case_insensitive_part_of_the_id():
    table = pd.DataFrame({"sample_id": ["Scan-12", "scan-3", "x120", "7"]})
    assert search_ids(table, " SCAN ")["sample_id"].tolist() == ["Scan-12", "scan-3"]
    assert search_ids(table, "12")["sample_id"].tolist() == ["Scan-12", "x120"]
    assert len(search_ids(table, "")) == 4 and search_ids(table, "nope").empty


def _reference(samples: pd.DataFrame, true_class, outcome, loss_range, id_text) -> pd.DataFrame:
    """The same filters and order written plainly in pandas."""
    keep = samples["label"].isin(true_class)
    keep &= samples["correct"] == (0.0 if outcome == "wrong" else 1.0)
    keep &= samples["loss"].between(*loss_range)
    keep &= samples["sample_id"].str.lower().str.contains(id_text.lower(), regex=False)
    return samples[keep].sort_values("loss", ascending=False, kind="stable")


def test_pages_of_the_error_review_cover_the_pandas_reference_in_order():
    samples = classification_frame(n=5000, k=5, seed=3)
    samples.loc[samples.index[::7], "sample_id"] = [f"S{i}" for i in range(0, 5000, 7)]
    f = ReviewFilter(true_class=[1, 2], outcome="wrong", loss_range=(0.2, 2.5), id_contains="s1")
    expected = _reference(samples, [1, 2], "wrong", (0.2, 2.5), "s1")
    assert len(expected) > 100
    pages, number = [], 1
    while True:
        page = page_table(samples, "classification", f, page=number, page_size=32)
        assert page.total == len(expected) and len(page.rows) <= 32
        pages.append(page.rows)
        if page.last == page.total:
            break
        number += 1
    assert number == -(-len(expected) // 32)
    got = pd.concat(pages, ignore_index=True)
    assert got["sample_id"].tolist() == expected["sample_id"].tolist()


def test_hand_counted_filters_and_orders():
    samples = pd.DataFrame({
        "sample_id": ["9", "10", "2", "33", "100"],
        "label": [0.0, 1.0, 1.0, 0.0, 1.0], "prediction": [1.0, 1.0, 0.0, 0.0, 0.0],
        "loss": [2.0, 0.1, 3.0, np.nan, 0.7], "correct": [0.0, 1.0, 0.0, 1.0, 0.0],
        "confidence": [0.9, 0.8, 0.4, 0.99, 0.6]})
    ids = lambda p: p.rows["sample_id"].tolist()  # noqa: E731
    assert ids(page_table(samples, "classification")) == ["2", "9", "100", "10", "33"]  # no loss: last
    wrong = page_table(samples, "classification", ReviewFilter(outcome="wrong"))
    assert (ids(wrong), wrong.total) == (["2", "9", "100"], 3)
    right = page_table(samples, "classification", ReviewFilter(outcome="right"))
    assert ids(right) == ["10", "33"]
    assert ids(page_table(samples, "classification", ReviewFilter(loss_range=(0.5, 2.0)))) == ["9", "100"]
    assert ids(page_table(samples, "classification", sort_by="sample_id", ascending=True)) == \
        ["2", "9", "10", "33", "100"]  # numeric ids in number order, not text order
    assert ids(page_table(samples, "classification", sort_by="confidence", ascending=True, page=2,
                          page_size=2)) == ["10", "9"]
    assert ids(page_table(samples, "classification", ReviewFilter(id_contains="0"), sort_by=None,
                          ascending=True)) == ["10", "100"]  # least wrong first


def test_worst_cases_is_the_unpaged_review_order():
    samples = classification_frame(n=600, seed=5)
    order = review_order(samples, "classification", ReviewFilter(predicted_class=0))
    assert worst_cases(samples, "classification", predicted_class=0)["sample_id"].tolist() == \
        samples["sample_id"].iloc[order].tolist()


def test_filters_a_review_cannot_apply_say_why():
    samples = classification_frame(n=50)
    with pytest.raises(ValueError, match="outcome='maybe'"):
        page_table(samples, "classification", ReviewFilter(outcome="maybe"))
    with pytest.raises(ValueError, match="lo <= hi"):
        page_table(samples, "classification", ReviewFilter(loss_range=(3.0, 1.0)))
    with pytest.raises(ValueError, match="not a column"):
        page_table(samples, "classification", sort_by="colour")
    regression = samples.assign(residual=samples["loss"])
    with pytest.raises(ValueError, match="need classification samples"):
        page_table(regression, "regression", ReviewFilter(outcome="wrong"))
    assert page_table(regression, "regression", ReviewFilter(loss_range=(0.5, np.inf))).total == \
        int((regression["loss"] >= 0.5).sum())


def test_data_map_pages_follow_the_suspects_order():
    rng = np.random.default_rng(0)
    n = 700
    d = pd.DataFrame({"sample_id": [str(i) for i in range(n)], "split": "train", "n_records": 5,
                      "label": rng.integers(0, 3, n).astype(float), "prediction": rng.integers(0, 3, n).astype(float),
                      "confidence": rng.uniform(size=n), "variability": rng.uniform(0, 0.5, n),
                      "correct_frac": rng.uniform(size=n), "aum": rng.normal(size=n),
                      "label_error_score": rng.normal(size=n)})
    found = dyn.data_map(d, "classification")
    top = dyn.label_error_suspects(d, found, limit=n)
    second = dyn.suspects_page(d, found, page=2, page_size=100)
    assert second.total == n and second.label == "rows 101–200 of 700"
    assert second.rows["sample_id"].tolist() == top["sample_id"].iloc[100:200].tolist()
    assert second.rows["region"].tolist() == top["region"].iloc[100:200].tolist()
    hits = dyn.suspects_page(d, found, id_contains="12", page_size=500)
    assert hits.rows["sample_id"].tolist() == [s for s in top["sample_id"] if "12" in s]
