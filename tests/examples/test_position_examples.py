"""The two position examples: what they simulate (by hand), and each recorded small end to end,
its evaluation read back per position."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import diagnostics
from diagnostics import positions
from examples import segmentation, token_tagger


def test_tagger_sentences_tag_every_character():
    for text, tags in token_tagger.make_sentences(50, seed=3):
        assert len(text) == len(tags)
        for c, t in zip(text, tags):
            assert (t == token_tagger.SPACE) == (not c.isalnum())
            if c.isdigit():
                assert t == token_tagger.NUMBER
    text, tags = next((t, g) for t, g in token_tagger.make_sentences(200, seed=0) if t.startswith("May "))
    assert tags[:3] == [token_tagger.OTHER] * 3  # "May" the verb, not a name


def test_tagger_tensors_pad_with_the_ignore_index():
    sentences = [("ab", [0, 1]), ("abc", [0, 1, 2])]
    tok = token_tagger.CharTokenizer("abc")
    x, y = token_tagger.tensors(sentences, tok, 4)
    assert x.tolist() == [[1, 2, 0, 0], [1, 2, 3, 0]]
    assert y.tolist() == [[0, 1, -100, -100], [0, 1, 2, -100]]
    assert tok.convert_ids_to_tokens([0, 3]) == ["<pad>", "c"]


def test_shapes_masks_match_what_was_drawn():
    images, masks, meta = segmentation.make_shapes(20, size=24, seed=1)
    assert images.shape == (20, 1, 24, 24) and masks.shape == (20, 24, 24)
    assert set(np.unique(masks)) <= {-100, 0, 1, 2}
    assert (masks[:, 0, :] == -100).all() and (masks[:, :, -1] == -100).all()
    inner = masks[:, 1:-1, 1:-1]
    bright = images[:, 0, 1:-1, 1:-1]
    # shapes are brighter than the background on average, discs more than squares
    for i in range(20):
        if (inner[i] == 1).any() and (inner[i] == 0).any():
            assert bright[i][inner[i] == 1].mean() > bright[i][inner[i] == 0].mean()
    assert meta["contrast"].shape == (20,) and (meta["shapes"] >= 1).all()


def test_tagger_records_a_position_per_character(tmp_path):
    torch.set_num_threads(1)
    path = token_tagger.train(tmp_path, name="tagger", n=64, epochs=1)
    run = diagnostics.open_run(path)
    info = run.position_info("val")
    assert info["layout"] == "tokens" and info["ignore_index"] == -100
    frame = run.positions("val")
    samples = run.samples("val")
    val = token_tagger.make_sentences(16, seed=1, names=token_tagger.NAMES + token_tagger.HELD_OUT_NAMES)
    assert len(frame) == sum(len(t) for t, _ in val)  # every character counted, no padding
    first = frame[frame["sample_id"] == "0"].sort_values("position")
    assert first["label"].tolist() == val[0][1]
    vocab = run.vocabulary("val")
    assert vocab is not None and "".join(vocab[int(i)] for i in
                                         run.previews("val", ["0"])["values"].iloc[0][:len(val[0][0])]) == val[0][0]
    acc = samples.set_index("sample_id")
    by_hand = (first["label"] == first["prediction"]).mean()
    assert acc.loc["0", "position_accuracy"] == pytest.approx(by_hand)
    assert acc.loc["0", "correct"] == float(by_hand == 1)


def test_segmentation_records_a_position_per_inner_pixel(tmp_path):
    torch.set_num_threads(1)
    path = segmentation.train(tmp_path, name="seg", n=32, epochs=1, size=32)
    run = diagnostics.open_run(path)
    info = run.position_info("val")
    assert info["layout"] == "pixels" and info["shape"] == [32, 32]
    frame = run.positions("val")
    assert len(frame) == 8 * 30 * 30  # 8 validation images, the border ignored
    overlap = positions.class_overlap(frame, 3, segmentation.CLASSES)
    assert overlap["true"].sum() == len(frame)
    assert run.manifest["class_names"] == segmentation.CLASSES


def test_sample_detail_of_a_segmentation_says_how_many_pixels_are_right(tmp_path, monkeypatch):
    """A sample of 900 pixels is not "background, 95% confident": Sample detail leads with the share
    of its counted pixels right, their count and its worst pixel's loss (hand count from the
    positions table)."""
    from tests.pages._app import run_app

    torch.set_num_threads(1)
    path = segmentation.train(tmp_path, name="seg", n=32, epochs=1, size=32)
    run = diagnostics.open_run(path)
    worst = run.samples("val").sort_values("loss", ascending=False).iloc[0]
    rows = run.positions("val", ids=[worst["sample_id"]])
    at = run_app(monkeypatch, tmp_path, "seg", timeout=120)
    at.switch_page("pages/sample.py").run()
    assert not at.exception, [e.value for e in at.exception]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Right"] == f"{(rows['label'] == rows['prediction']).mean():.1%}"
    assert metrics["Counted"] == f"{len(rows):,} pixels"
    assert metrics["Worst position's loss"] == f"{rows['loss'].max():.3f}"
    assert "Label" not in metrics


def test_error_review_of_a_segmentation_lists_samples_by_their_share_right(tmp_path, monkeypatch):
    """Error review on an evaluated segmentation opens without an error, and its worst-cases table
    gives each image's share of pixels right (not its commonest class), as the positions say."""
    from tests.pages._app import run_app

    torch.set_num_threads(1)
    segmentation.train(tmp_path, name="seg", n=32, epochs=1, size=32)
    at = run_app(monkeypatch, tmp_path, "seg", timeout=120)
    at.switch_page("pages/errors.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    table = at.dataframe(key="err_table").value
    assert {"right", "counted", "worst_position_loss"} <= set(table.columns) and "label" not in table
    run = diagnostics.open_run(tmp_path / "seg")
    first = run.positions("val", ids=[str(table["sample_id"].iloc[0])])
    assert table["right"].iloc[0] == pytest.approx((first["label"] == first["prediction"]).mean())
