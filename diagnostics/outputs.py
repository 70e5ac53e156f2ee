"""The model's outputs against the labels, per split, as `Run.distributions("output")` and
`("label")` record them: a class histogram per capture (`<split>/class`, classification) or
a value histogram (`<split>/value`, regression).

    out = split_outputs(run.distributions("output"), run.distributions("label"), "train")
    out.classification, out.steps[-1]
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from diagnostics import schema


@dataclass(frozen=True)
class SplitOutputs:
    """One split's output and label rows, whether they are class counts, and the steps both hold."""

    outputs: pd.DataFrame
    labels: pd.DataFrame
    classification: bool
    steps: list[int]


def output_splits(labels: pd.DataFrame) -> list[str]:
    """The splits whose labels were recorded ("train", "val", ...), sorted."""
    return sorted({layer.split("/")[0] for layer in labels["layer"]})


def split_outputs(outputs: pd.DataFrame, labels: pd.DataFrame, split: str) -> SplitOutputs:
    """The rows of one split: its class histograms when it has any, else its value histograms."""
    classification = schema.class_layer(split) in set(labels["layer"])
    layer = schema.class_layer(split) if classification else schema.value_layer(split)
    out, lab = outputs[outputs["layer"] == layer], labels[labels["layer"] == layer]
    return SplitOutputs(out, lab, classification, sorted(set(out["step"]) & set(lab["step"])))
