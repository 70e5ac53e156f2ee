"""Error-review figure builders: the expected traces on normal input, an annotated empty
figure (never an exception) on empty input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from diagnostics.errors import calibration, class_metrics, confusion_matrix
from diagnostics.figures import errors as ef
from diagnostics.slices import COLUMNS


@pytest.fixture
def samples() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    n = 300
    label = rng.integers(0, 3, n)
    prediction = np.where(rng.uniform(size=n) < 0.7, label, rng.integers(0, 3, n))
    return pd.DataFrame({"sample_id": [f"s{i}" for i in range(n)], "label": label.astype(float),
                         "prediction": prediction.astype(float), "correct": (label == prediction).astype(float),
                         "confidence": rng.uniform(0.34, 1.0, n), "residual": rng.normal(size=n)})


def assert_empty_figure(fig: go.Figure) -> None:
    assert isinstance(fig, go.Figure)
    assert len(fig.data) == 0 and len(fig.layout.annotations) == 1
    fig.to_json()


def test_confusion_figure(samples):
    m = confusion_matrix(samples, 3)
    fig = ef.confusion_figure(m, ["CNV", "DME", "DRUSEN"])
    (heat,) = fig.data
    assert heat.type == "heatmap"
    np.testing.assert_allclose(heat.z, m / m.sum(axis=1, keepdims=True))
    np.testing.assert_array_equal(heat.text, m)
    assert list(heat.x) == ["CNV", "DME", "DRUSEN"] and list(heat.y) == ["CNV", "DME", "DRUSEN"]
    custom = np.asarray(heat.customdata)
    assert custom.shape == (3, 3, 2) and custom[2, 0].tolist() == [2, 0]
    fig.to_json()
    # a class with no samples gives a zero row, not NaN; no names means indices
    m[1] = 0
    fig = ef.confusion_figure(m, None)
    assert np.all(np.asarray(fig.data[0].z)[1] == 0) and list(fig.data[0].y) == ["0", "1", "2"]
    assert_empty_figure(ef.confusion_figure(np.zeros((0, 0)), []))


def test_reliability_figure(samples):
    table, ece = calibration(samples, bins=10)
    fig = ef.reliability_figure(table, ece)
    kinds = [(t.type, t.name) for t in fig.data]
    assert kinds == [("bar", "accuracy"), ("scatter", "perfect calibration"), ("bar", "samples")]
    np.testing.assert_allclose(np.asarray(fig.data[0].y, dtype=float), table["accuracy"], equal_nan=True)
    assert list(fig.data[1].x) == [0, 1] and list(fig.data[1].y) == [0, 1]
    assert list(fig.data[2].y) == table["count"].tolist()
    assert f"{ece:.3f}" in fig.layout.title.text
    fig.to_json()
    assert_empty_figure(ef.reliability_figure(*calibration(samples.iloc[:0])))


def test_class_metrics_figure(samples):
    metrics = class_metrics(samples, 3, ["CNV", "DME", "DRUSEN"])
    fig = ef.class_metrics_figure(metrics)
    assert [t.name for t in fig.data] == ["precision", "recall", "f1"]
    assert all(t.type == "bar" and list(t.x) == ["CNV", "DME", "DRUSEN"] for t in fig.data)
    np.testing.assert_allclose(fig.data[2].y, metrics["f1"])
    assert fig.layout.barmode == "group"
    assert_empty_figure(ef.class_metrics_figure(metrics.iloc[:0]))


def test_residual_figure(samples):
    fig = ef.residual_figure(samples)
    (points,) = fig.data
    assert points.type == "scatter" and points.mode == "markers"
    np.testing.assert_allclose(points.y, samples["residual"])
    assert list(points.customdata) == samples["sample_id"].tolist()
    (zero,) = fig.layout.shapes
    assert zero.y0 == 0 and zero.y1 == 0
    # residual computed when the column is missing; many points go to WebGL
    big = pd.DataFrame({"sample_id": [str(i) for i in range(6000)], "label": np.arange(6000.0),
                        "prediction": np.arange(6000.0) + 1})
    fig = ef.residual_figure(big)
    assert fig.data[0].type == "scattergl" and np.all(np.asarray(fig.data[0].y) == 1)
    assert_empty_figure(ef.residual_figure(samples.iloc[:0]))


def test_slices_figure():
    table = pd.DataFrame({
        "description": ["input_brightness < 0.21", "label = DME and input_snr_db >= 3"],
        "size": [96, 40], "errors": [39, 12], "error_rate": [39 / 96, 12 / 40],
        "overall_rate": [0.07, 0.07], "lift": [39 / 96 / 0.07, 0.3 / 0.07], "score": [3.2, 1.5],
        "p_value": [1e-9, 1e-3], "predicates": [[("input_brightness", "<", 0.21)],
                                                [("label", "=", 1), ("input_snr_db", ">=", 3)]]})
    fig = ef.slices_figure(table)
    (bars,) = fig.data
    assert bars.type == "bar" and bars.orientation == "h"
    # escaped for plotly, which renders a subset of HTML in tick labels and shows &lt; as <
    assert list(bars.y) == ["brightness &lt; 0.21", "label = DME and snr_db &gt;= 3"]
    np.testing.assert_allclose(bars.x, table["error_rate"])
    (overall,) = fig.layout.shapes
    assert overall.x0 == overall.x1 == 0.07
    fig.to_json()
    assert_empty_figure(ef.slices_figure(pd.DataFrame(columns=COLUMNS)))


def test_prediction_figure_has_the_identity_line_and_units():
    frame = pd.DataFrame({"sample_id": ["a", "b", "c", "d"], "label": [10.0, 20.0, 30.0, np.nan],
                          "prediction": [12.0, 19.0, 25.0, 5.0]})
    fig = ef.prediction_figure(frame, unit="breaths/min")
    points, identity = fig.data
    np.testing.assert_allclose(points.x, [10, 20, 30])  # the row without a label is left out
    np.testing.assert_allclose(points.y, [12, 19, 25])
    np.testing.assert_allclose(np.asarray(points.customdata[:, 1], dtype=float), [2, -1, -5])  # residuals
    assert list(identity.x) == list(identity.y) and identity.x[0] < 10 and identity.x[1] > 30
    assert fig.layout.xaxis.title.text == "true (breaths/min)"
    assert fig.layout.yaxis.title.text == "predicted (breaths/min)" and fig.layout.yaxis.scaleanchor == "x"
    assert fig.layout.xaxis.range == fig.layout.yaxis.range
    assert_empty_figure(ef.prediction_figure(frame.iloc[:0]))
    assert_empty_figure(ef.prediction_figure(frame.iloc[3:]))


def test_residual_figure_puts_the_unit_on_its_axes(samples):
    fig = ef.residual_figure(samples, unit="mm")
    assert fig.layout.xaxis.title.text == "label (mm)" and fig.layout.yaxis.title.text == "prediction − label (mm)"
    assert ef.residual_figure(samples).layout.xaxis.title.text == "label"
