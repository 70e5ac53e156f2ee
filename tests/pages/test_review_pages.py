"""Error review and Data map through Streamlit's AppTest: regression runs, thumbnails, class
names, tagging, the suspects' grid."""

from __future__ import annotations

import base64
import io
import json

import pytest
import torch
from streamlit.testing.v1 import AppTest
from torch import nn

import hooks
from tests.conftest import tiny_cnn
from tests.pages._app import open_app, plotly_charts, plotly_values

CLASSES = ["cat", "dog", "eel"]


def _signal_regression(folder, name="signal-reg", lr=2e-2):
    """A 1-D CNN regressing a rate from a sine's frequency, with records, val and train evaluations
    (`lr=0`: its outputs stay at the targets' mean, a model that has not learned)."""
    torch.manual_seed(3)
    g = torch.Generator().manual_seed(3)
    rate = torch.rand(96, generator=g) * 20 + 5
    t = torch.linspace(0, 1, 64)
    x = torch.sin(2 * torch.pi * rate[:, None] * t / 4)[:, None, :] + 0.1 * torch.randn(96, 1, 64, generator=g)
    y = rate[:, None]
    model = nn.Sequential(nn.Conv1d(1, 8, 9, padding=4), nn.ReLU(), nn.Conv1d(8, 8, 9, padding=4), nn.ReLU(),
                          nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(8, 1))
    with torch.no_grad():
        model[-1].bias.fill_(15.0)  # the targets' mean: the model learns the rest (the data map needs a learner)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    crit = nn.SmoothL1Loss()
    with hooks.watch(model, optimizer=opt, loss_fn=crit, run_dir=folder, name=name, every=4,
                     config={"target": "breaths/min"}) as run:
        for _ in range(12):
            for i in range(16, 96, 16):
                idx = torch.arange(i, i + 16)
                opt.zero_grad()
                pred = model(x[idx])
                run.log_batch(pred, y[idx], ids=idx)
                crit(pred, y[idx]).backward()
                opt.step()
        run.evaluate([(x[:16], y[:16], torch.arange(16))], split="val", progress=False)
        run.evaluate([(x[16:], y[16:], torch.arange(16, 96))], split="train", progress=False)
    return run.path


def _image_classification(folder, name="img-cls", evaluate_train=True, softmax_first=False):
    """A 3-class CNN on 8×8 images, named classes, records every step, val (and train) evaluated.
    `softmax_first`: the demo's digits-baseline bug, softmax before the cross-entropy, with a
    small learning rate: the model never learns, every label keeps a probability near 1/3."""
    torch.manual_seed(4)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(96, 1, 8, 8, generator=g)
    y = torch.randint(0, 3, (96,), generator=g)
    x[y == 1] += 0.7
    model = nn.Sequential(tiny_cnn(), nn.Softmax(dim=1)) if softmax_first else tiny_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.01 if softmax_first else 0.2, momentum=0.9)
    with hooks.watch(model, optimizer=opt, run_dir=folder, name=name, every=5, class_names=CLASSES) as run:
        for _ in range(3):
            for i in range(0, 64, 16):
                idx = torch.arange(i, i + 16)
                opt.zero_grad()
                logits = model(x[idx])
                loss = nn.functional.cross_entropy(logits, y[idx])
                run.log_batch(logits, y[idx], ids=idx, loss=loss)
                loss.backward()
                opt.step()
        run.evaluate([(x[64:], y[64:], torch.arange(64, 96))], split="val", progress=False)
        if evaluate_train:
            run.evaluate([(x[:64], y[:64], torch.arange(64))], split="train", progress=False)
    return run.path


@pytest.fixture(scope="module")
def review_runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("review_runs")
    _signal_regression(folder)
    _image_classification(folder)
    _image_classification(folder, name="img-cls-no-train", evaluate_train=False)
    _image_classification(folder, name="img-cls-unlearned", softmax_first=True)
    return folder


def _open(monkeypatch, runs_dir, page: str, run_name: str) -> AppTest:
    return open_app(monkeypatch, runs_dir, page, run_name, check_errors=True)


def _charts(at: AppTest) -> dict[str, dict]:
    """The page's charts by title."""
    return {s["layout"]["title"]["text"]: s for s in plotly_charts(at)}


def _metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def _is_png(url: str) -> bool:
    from PIL import Image

    head, data = url.split(",", 1)
    return head == "data:image/png;base64" and Image.open(io.BytesIO(base64.b64decode(data))).size[0] > 0


def test_datamap_of_a_regression_run_draws_residual_dynamics_with_units(monkeypatch, review_runs):
    at = _open(monkeypatch, review_runs, "pages/datamap.py", "signal-reg")
    counts = _metrics(at)
    regions = [int(counts[k].replace(",", "")) for k in ("Easy", "Ambiguous", "Hard-to-learn")]
    assert sum(regions) == int(counts["Samples"]) == 80 and min(regions) > 0  # every sample in a region
    (chart,) = _charts(at).values()
    assert "breaths/min" in chart["layout"]["xaxis"]["title"]["text"]
    assert "breaths/min" in chart["layout"]["yaxis"]["title"]["text"]
    points = sum(len(plotly_values(t["x"])) for t in chart["data"])
    assert points == 80
    assert any("standard deviation of its residual" in c.value and "breaths/min" in c.value for c in at.caption)
    table = at.dataframe[0].value
    for column in ("label", "prediction", "score", "mean_abs_residual", "residual_std", "region"):
        assert table[column].notna().all(), column  # no None columns
    assert not {"confidence", "aum", "correct"} & set(table.columns)


def test_datamap_of_a_regression_model_that_has_not_learned_lists_no_target_errors(monkeypatch, tmp_path):
    """Outputs at the targets' mean: the largest errors are the extremes of the target range,
    not wrong targets (it listed a third of the correctly labelled samples)."""
    _signal_regression(tmp_path, "collapsed", lr=0.0)
    at = _open(monkeypatch, tmp_path, "pages/datamap.py", "collapsed")
    assert any("has not learned" in w.value and "targets' mean" in w.value for w in at.warning)
    assert any("No target-error list" in i.value for i in at.info)
    assert not at.dataframe  # no shortlist


def test_error_review_of_a_regression_run_shows_predicted_vs_true_and_no_classification_tabs(monkeypatch,
                                                                                             review_runs):
    at = _open(monkeypatch, review_runs, "pages/errors.py", "signal-reg")
    labels = [t.label for t in at.tabs]
    assert labels == ["Worst cases", "Predicted vs true", "Residuals", "Where errors concentrate"]
    assert not {"Confusion matrix", "Per class", "Calibration"} & set(labels)
    charts = _charts(at)
    scatter = charts["predicted vs true"]
    points, identity = scatter["data"]
    assert len(plotly_values(points["x"])) == 16
    assert list(plotly_values(identity["x"])) == list(plotly_values(identity["y"]))
    assert scatter["layout"]["xaxis"]["title"]["text"] == "true (breaths/min)"
    assert "prediction − label (breaths/min)" in charts["residuals by label"]["layout"]["yaxis"]["title"]["text"]
    assert "MAE (breaths/min)" in _metrics(at)
    note = next(c.value for c in at.caption if c.value.startswith("loss:"))
    assert "(breaths/min)²" in note and "SmoothL1Loss" in note
    table = at.dataframe[0].value
    assert _is_png(table["input"].iloc[0])  # a sparkline of the signal
    assert {"residual", "abs_error"} <= set(table.columns)


def test_error_review_tables_show_class_names_and_thumbnails(monkeypatch, review_runs):
    at = _open(monkeypatch, review_runs, "pages/errors.py", "img-cls")
    at.toggle(key="err_only_wrong").set_value(False).run()
    worst = at.dataframe(key="err_table").value
    assert set(worst["label"]) <= set(CLASSES) and set(worst["prediction"]) <= set(CLASSES)
    assert worst["input"].map(_is_png).all()
    cell = next(df.value for df in at.dataframe if df.key != "err_table" and "confidence" in df.value.columns)
    assert len(cell) > 0 and "tags" not in cell
    assert set(cell["label"]) <= set(CLASSES) and set(cell["prediction"]) <= set(CLASSES)
    per_class = next(df.value for df in at.dataframe if "precision" in df.value.columns)
    assert per_class["class"].tolist() == CLASSES


def test_open_in_sample_detail_says_why_it_is_disabled(monkeypatch, review_runs):
    at = _open(monkeypatch, review_runs, "pages/errors.py", "img-cls")
    assert at.button(key="err_open").disabled
    assert any("Select exactly one row" in c.value and "(0 selected)" in c.value for c in at.caption)


def test_datamap_tables_and_grid_show_the_training_inputs(monkeypatch, review_runs):
    at = _open(monkeypatch, review_runs, "pages/datamap.py", "img-cls")
    table = at.dataframe[0].value
    assert set(table["label"]) <= set(CLASSES) and set(table["prediction"]) <= set(CLASSES)
    assert table["input"].map(_is_png).all()
    images = at.get("image")
    assert len(images) == len(table) <= 24  # the shortlist's inputs, up to 3 rows of 8
    first = table["sample_id"].iloc[0]
    at.button(key=f"datamap_open_{first}").click().run()
    assert at.session_state["sample_id"] == first and at.session_state["sample_split"] == "train"
    assert not at.exception and [t.value for t in at.title] == ["Sample detail"]


def test_datamap_without_training_previews_says_which_call_records_them(monkeypatch, review_runs):
    at = _open(monkeypatch, review_runs, "pages/datamap.py", "img-cls-no-train")
    assert any('run.evaluate(train_loader, split="train")' in i.value for i in at.info)
    assert "input" not in at.dataframe[0].value.columns


def _select(at: AppTest, key: str, rows: list[int]) -> None:
    """Select table rows the way a click does (AppTest has no dataframe clicks)."""
    at.session_state[key] = {"selection": {"rows": rows, "columns": [], "cells": []}}
    at.run()


def test_a_saved_tag_shows_in_the_table_without_a_reload(monkeypatch, review_runs):
    at = _open(monkeypatch, review_runs, "pages/errors.py", "img-cls")
    sid = at.dataframe(key="err_table").value["sample_id"].iloc[0]
    _select(at, "err_table", [0])
    assert at.button(key="err_open").disabled is False
    at.multiselect(key="tags_errors").set_value(["blurry"])
    next(b for b in at.button if b.label == "Save").click().run()
    assert not at.exception, [e.value for e in at.exception]
    table = at.dataframe(key="err_table").value.set_index("sample_id")
    assert table.loc[sid, "tags"] == "blurry"  # in this run, not after a reload
    assert any("Saved for 1 sample" in t.value for t in at.toast)


def test_the_form_shows_the_note_a_save_would_replace(monkeypatch, review_runs):
    at = _open(monkeypatch, review_runs, "pages/errors.py", "img-cls")
    assert not any(t.value.startswith("Notes now") for t in at.text)
    _select(at, "err_table", [0])
    at.text_input(key="note_errors").input("too dark")
    next(b for b in at.button if b.label == "Save").click().run()
    sid = at.dataframe(key="err_table").value["sample_id"].iloc[0]
    _select(at, "err_table", [0])
    assert [t.value for t in at.text if t.value.startswith("Notes now")] == [f"Notes now: {sid}: too dark"]


def test_two_selected_rows_say_why_open_is_disabled(monkeypatch, review_runs):
    at = _open(monkeypatch, review_runs, "pages/errors.py", "img-cls")
    _select(at, "err_table", [0, 1])
    assert at.button(key="err_open").disabled
    assert any("Select exactly one row" in c.value and "(2 selected)" in c.value for c in at.caption)


def test_outputs_page_of_a_regression_run_names_the_unit(monkeypatch, review_runs):
    at = _open(monkeypatch, review_runs, "pages/outputs.py", "signal-reg")
    titles = [(c["layout"].get("xaxis", {}).get("title", {}).get("text"), c["layout"].get("yaxis", {}).get("title", {})
               .get("text")) for c in _charts(at).values()]
    assert ("value (breaths/min)", "share of samples") in titles
    assert any(y == "value (breaths/min)" for _, y in titles)


@pytest.fixture(scope="module")
def long_run(tmp_path_factory):
    """A 4-class linear model evaluated on 130 samples: enough for three pages of 50."""
    folder = tmp_path_factory.mktemp("long_run")
    torch.manual_seed(5)
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(130, 6, generator=g), torch.randint(0, 4, (130,), generator=g)
    model = nn.Linear(6, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    crit = nn.CrossEntropyLoss()
    with hooks.watch(model, optimizer=opt, loss_fn=crit, run_dir=folder, name="long", every=5) as run:
        for _ in range(3):
            opt.zero_grad()
            crit(model(x), y).backward()
            opt.step()
        run.evaluate([(x, y, torch.arange(130))], split="val", progress=False)
    return folder


def test_error_review_pages_and_filters_on_the_server(monkeypatch, long_run):
    import diagnostics
    from diagnostics import errors

    samples = diagnostics.open_run(long_run / "long").samples("val")
    at = _open(monkeypatch, long_run, "pages/errors.py", "long")
    at.toggle(key="err_only_wrong").set_value(False).run()
    at.selectbox(key="err_pages_size").set_value(50).run()
    assert len(at.dataframe(key="err_table").value) == 50
    assert any(c.value.startswith("Rows 1–50 of 130") for c in at.caption)
    at.number_input(key="err_pages_page").set_value(3).run()
    last = at.dataframe(key="err_table").value
    assert any(c.value.startswith("Rows 101–130 of 130") for c in at.caption)
    expected = errors.page_table(samples, "classification", page=3, page_size=50).rows
    assert last["sample_id"].tolist() == expected["sample_id"].astype(str).tolist()
    at.text_input(key="err_id").input("1").run()  # a new filter goes back to page 1
    total = int(samples["sample_id"].astype(str).str.contains("1").sum())
    assert at.number_input(key="err_pages_page").value == 1
    assert total == 49 and any(c.value.startswith("Rows 1–49 of 49") for c in at.caption)
    at.number_input(key="err_pages_page").set_value(2).run()  # one page only: stays on it
    assert any(c.value.startswith("Rows 1–49 of 49") for c in at.caption)
    at.selectbox(key="err_pages_size").set_value(100).run()
    at.text_input(key="err_id").input("").run()
    at.number_input(key="err_pages_page").set_value(2).run()
    second = at.dataframe(key="err_table").value
    assert any(c.value.startswith("Rows 101–130 of 130") for c in at.caption)
    expected = errors.page_table(samples, "classification", page=2, page_size=100).rows
    assert second["sample_id"].tolist() == expected["sample_id"].astype(str).tolist()
    # a row picked on one page is cleared in the browser too when the page changes: the browser
    # keeps a keyed table's selection unless told, and would send row 3 back for the new page
    _select(at, "err_table", [3])
    at.number_input(key="err_pages_page").set_value(1).run()
    sent = at.dataframe(key="err_table").proto.selection_state
    assert sent and json.loads(sent)["selection"]["rows"] == []
    assert any("0 selected" in c.value for c in at.caption)
    at.number_input(key="err_pages_page").set_value(2).run()
    _select(at, "err_table", [3])
    at.button(key="err_open").click().run()
    assert not at.exception and [t.value for t in at.title] == ["Sample detail"]
    assert at.session_state["sample_id"] == second["sample_id"].iloc[3]


def test_datamap_lists_a_shortlist_of_suspects_not_every_sample(monkeypatch, review_runs):
    at = _open(monkeypatch, review_runs, "pages/datamap.py", "img-cls")
    assert not at.warning  # the model learned
    table = at.dataframe(key="datamap_table").value
    assert 0 < len(table) < 64 and (table["score"] > 0).all()
    how = next(c.value for c in at.caption if "suspected mislabeled" in c.value)
    assert how.startswith(f"{len(table)} of 64 training samples") and f"lists the {len(table)} best" in how
    assert "more are hard" in how and (table["verdict"] == "suspected mislabeled").all()
    assert any(c.value.startswith(f"Rows 1–{len(table)} of {len(table)}, highest score first") for c in at.caption)
    at.number_input(key="datamap_top").set_value(2).run()
    top = at.dataframe(key="datamap_table").value
    assert top["sample_id"].tolist() == table["sample_id"].iloc[:2].tolist()
    assert any("lists the 2 best-scored suspects" in c.value for c in at.caption)
    at.number_input(key="datamap_top").set_value(50).run()
    wanted = table["sample_id"].iloc[0]
    at.text_input(key="datamap_id").input(wanted).run()
    found = at.dataframe(key="datamap_table").value
    assert wanted in found["sample_id"].tolist() and all(wanted in i for i in found["sample_id"])
    assert at.number_input(key="datamap_pages_page").value == 1 and found["input"].map(_is_png).all()


def test_datamap_of_a_model_that_never_learned_warns_and_lists_no_label_errors(monkeypatch, review_runs):
    at = _open(monkeypatch, review_runs, "pages/datamap.py", "img-cls-unlearned")
    (warning,) = at.warning
    assert "has not learned" in warning.value and "always answering the commonest class" in warning.value
    assert "1/3 = 0.333" in warning.value
    assert "Health page" in warning.value
    assert not [df for df in at.dataframe if "score" in df.value.columns]  # no label-error table
    assert not at.get("image")  # nor the suspects' grid
    assert any("No label-error list" in i.value for i in at.info)
    assert len(plotly_charts(at)) == 1  # the map itself stays, under the warning


def test_error_review_says_when_the_model_outputs_probabilities(monkeypatch, review_runs):
    """A model that ends in a softmax: its outputs are read as probabilities (no second softmax)
    and the page says so; a logits model gets no such note."""
    at = _open(monkeypatch, review_runs, "pages/errors.py", "img-cls-unlearned")
    assert any("outputs probabilities" in c.value for c in at.caption)
    at = _open(monkeypatch, review_runs, "pages/errors.py", "img-cls")
    assert not any("outputs probabilities" in c.value for c in at.caption)
