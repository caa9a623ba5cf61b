"""SAVE_PREDICTIONS writer: safe names and a three-panel PNG with the right overlays."""
import os

import numpy as np
from PIL import Image

from adapt.predictions import overlay, safe_name, save_prediction_png


def test_safe_name_is_safe_and_distinct():
    names = ["hot dog", "a/b", "a_b", "..", "Ärger", "", "x" * 300, "c:\\d", "a b"]
    slugs = [safe_name(n) for n in names]
    assert len(set(slugs)) == len(names)
    for s in slugs:
        assert all(ch.isalnum() or ch in "._-" for ch in s) and not s.startswith(".")
        assert len(s) <= 60 + 9
    assert safe_name("hot dog").startswith("hot_dog-") and safe_name("Ärger").startswith("Arger-")
    assert safe_name("a/b") == safe_name("a/b")


def test_overlay_blends_only_the_mask():
    image = np.full((4, 4, 3), 100, np.uint8)
    mask = np.zeros((4, 4), np.uint8)
    mask[0, 0] = 1
    out = overlay(image, mask, colour=(200, 0, 0), alpha=0.5)
    assert tuple(out[0, 0]) == (150, 50, 50) and (out[1:] == 100).all()


def _has_colour(pixels, rgb, tol=12):
    return bool((np.abs(pixels.astype(int) - np.array(rgb)).max(axis=-1) <= tol).any())


def test_side_by_side_png(tmp_path):
    image = np.full((48, 48, 3), 128, np.uint8)
    mask = np.zeros((48, 48), np.uint8)
    mask[:, :24] = 1
    prediction = np.zeros((48, 48), np.uint8)
    prediction[:, 24:] = 1
    out_dir = str(tmp_path / "predictions")
    path = save_prediction_png(out_dir, "weird/class name", 3, image, mask, prediction, 0.0,
                               repetition=1)
    assert os.path.dirname(path) == out_dir and path.endswith("_rep1_query3.png")
    assert os.listdir(out_dir) == [os.path.basename(path)]  # no temp file left behind
    with Image.open(path) as im:
        assert im.format == "PNG"
        pixels = np.asarray(im.convert("RGB"))
    assert pixels.shape[1] > 2 * pixels.shape[0]  # three panels side by side
    assert _has_colour(pixels, (64, 164, 64))    # ground truth overlay (green)
    assert _has_colour(pixels, (191, 96, 64))    # prediction overlay (orange-red)
    # Panels are left to right: the ground-truth colour appears left of the prediction colour.
    green_cols = np.where((np.abs(pixels.astype(int) - (64, 164, 64)).max(-1) <= 12).any(0))[0]
    red_cols = np.where((np.abs(pixels.astype(int) - (191, 96, 64)).max(-1) <= 12).any(0))[0]
    assert green_cols.max() < red_cols.min()
