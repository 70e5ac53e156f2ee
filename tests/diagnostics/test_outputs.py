"""The output and label rows of one split, as the Outputs page picks them."""

from __future__ import annotations

import pandas as pd

from diagnostics.outputs import output_splits, split_outputs


def _rows(layers_steps):
    return pd.DataFrame([{"layer": layer, "step": step} for layer, step in layers_steps])


def test_a_split_with_class_counts_is_classification_and_its_common_steps_are_kept():
    outputs = _rows([("train/class", 0), ("train/class", 5), ("val/value", 5)])
    labels = _rows([("train/class", 5), ("train/class", 9), ("val/value", 5)])
    assert output_splits(labels) == ["train", "val"]
    train = split_outputs(outputs, labels, "train")
    assert train.classification and train.steps == [5]
    assert set(train.outputs["layer"]) == {"train/class"} and len(train.labels) == 2
    val = split_outputs(outputs, labels, "val")
    assert not val.classification and val.steps == [5] and set(val.outputs["layer"]) == {"val/value"}
