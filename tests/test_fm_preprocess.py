"""Preprocessing, letterbox geometry and the multi-class helpers of pipeline.fm (no model)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from pipeline.fm.multiclass import boxes_from_mask, resolve_overlaps
from pipeline.fm.preprocess import (
    CT_WINDOWS,
    boxes_to_model,
    boxes_to_original,
    letterbox_geometry,
    letterbox_image,
    letterbox_mask,
    normalise_intensity,
    to_model_coords,
    to_original_coords,
    unletterbox_logits,
    unletterbox_mask,
)
from store.errors import InvalidInput

torch.set_num_threads(1)

SHAPES = [(45, 120), (300, 97), (256, 256), (1, 7), (512, 511), (97, 1024)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("size", [256, 1024])
def test_geometry_is_sam_resize_longest_side(shape, size):
    g = letterbox_geometry(shape, size)
    scale = size / max(shape)
    assert g.resized_shape == (int(shape[0] * scale + 0.5), int(shape[1] * scale + 0.5))
    assert max(g.resized_shape) == size
    assert g.padding == (size - g.resized_shape[0], size - g.resized_shape[1])
    assert min(g.padding) == 0


@pytest.mark.parametrize("shape", SHAPES)
def test_prompt_coordinates_round_trip(shape):
    g = letterbox_geometry(shape, 256)
    rng = np.random.default_rng(0)
    points = rng.uniform(0, 1, (50, 2)) * [shape[1], shape[0]]
    back = to_original_coords(to_model_coords(points, g), g)
    np.testing.assert_allclose(back, points, atol=1e-6)
    boxes = np.concatenate([points[:25], points[25:]], axis=1)
    np.testing.assert_allclose(boxes_to_original(boxes_to_model(boxes, g), g), boxes, atol=1e-6)
    # the image's far corner lands on the resized image's far corner
    corner = to_model_coords(np.array([[shape[1], shape[0]]]), g)
    np.testing.assert_allclose(corner, [[g.resized_shape[1], g.resized_shape[0]]], atol=1e-9)


@pytest.mark.parametrize("shape", [(45, 120), (97, 200), (256, 256), (1, 7), (130, 64)])
def test_mask_letterbox_round_trip_is_exact_when_enlarging(shape):
    g = letterbox_geometry(shape, 256)
    mask = np.random.default_rng(1).random(shape) > 0.5
    boxed = letterbox_mask(mask, g)
    assert boxed.shape == (256, 256)
    assert not boxed[g.resized_shape[0]:].any() and not boxed[:, g.resized_shape[1]:].any()
    np.testing.assert_array_equal(unletterbox_mask(boxed, g), mask)
    stacked = np.stack([mask, ~mask])
    np.testing.assert_array_equal(unletterbox_mask(letterbox_mask(stacked, g), g), stacked)


@pytest.mark.parametrize("shape", [(300, 97), (512, 512), (97, 1024), (513, 200)])
def test_mask_letterbox_round_trip_when_shrinking_only_moves_edges(shape):
    # Shrinking loses detail finer than a model pixel; whole objects come back, and only
    # pixels on an object's border may change.
    g = letterbox_geometry(shape, 256)
    mask = np.zeros(shape, bool)
    rows, cols = shape
    mask[rows // 5 : rows // 2, cols // 6 : cols // 2] = True
    mask[rows * 2 // 3 : rows - 3, cols * 2 // 3 : cols - 2] = True
    back = unletterbox_mask(letterbox_mask(mask, g), g)
    assert back.shape == shape
    reach = int(np.ceil(1 / min(g.scale)))  # original pixels per model pixel
    border = ndimage.binary_dilation(mask, iterations=reach) & ~ndimage.binary_erosion(
        mask, iterations=reach
    )
    assert not (back ^ mask)[~border].any()
    assert (back & mask).sum() * 2 / (back.sum() + mask.sum()) > 0.95


def test_logits_inverse_matches_sam_postprocess():
    g = letterbox_geometry((45, 120), 256)
    logits = torch.randn(2, 1, 64, 64)
    out = unletterbox_logits(logits, g)
    up = torch.nn.functional.interpolate(logits, (256, 256), mode="bilinear", align_corners=False)
    ref = torch.nn.functional.interpolate(
        up[..., : g.resized_shape[0], : g.resized_shape[1]], (45, 120), mode="bilinear",
        align_corners=False,
    )
    torch.testing.assert_close(out, ref)


def test_letterbox_image_pads_bottom_right():
    image = np.full((45, 120, 3), 200.0, dtype=np.float32)
    g = letterbox_geometry(image.shape[:2], 256)
    boxed = letterbox_image(image, g)
    assert boxed.shape == (256, 256, 3)
    np.testing.assert_allclose(boxed[: g.resized_shape[0], : g.resized_shape[1]], 200.0, atol=1e-3)
    assert (boxed[g.resized_shape[0]:] == 0).all()


def test_ct_windows_and_default():
    assert CT_WINDOWS["brain"] == (40.0, 80.0)
    assert CT_WINDOWS["lung"] == (-600.0, 1500.0)
    hu = np.array([[-1350, -600, 150, 3000]], dtype=np.int16)
    lung = normalise_intensity(hu, "CT:lung")
    assert lung.shape == (1, 4, 3)
    np.testing.assert_allclose(lung[0, :, 0], [0, 127.5, 255, 255])
    brain = normalise_intensity(np.array([[0, 40, 80]]), "ct:brain")[0, :, 0]
    np.testing.assert_allclose(brain, [0, 127.5, 255])
    soft = normalise_intensity(hu, "CT")
    assert soft.min() == 0 and soft.max() == 255
    with pytest.raises(InvalidInput, match="unknown CT window"):
        normalise_intensity(hu, "CT:liverish")


def test_percentile_normalisation_keeps_zero_background():
    rng = np.random.default_rng(2)
    mr = np.zeros((64, 64), np.float32)
    mr[16:48, 16:48] = rng.normal(1000, 100, (32, 32))
    mr[20, 20] = 1e6  # an outlier the percentile clip removes
    out = normalise_intensity(mr, "MRI")
    assert out.shape == (64, 64, 3) and out.dtype == np.float32
    assert (out[mr == 0] == 0).all()
    assert out.max() == 255 and np.percentile(out[16:48, 16:48], 50) > 50
    np.testing.assert_array_equal(out[..., 0], out[..., 2])


def test_rgb_passthrough_and_colour_checks():
    rgb = np.random.default_rng(3).integers(0, 256, (10, 12, 3)).astype(np.uint8)
    np.testing.assert_array_equal(normalise_intensity(rgb, "RGB"), rgb.astype(np.float32))
    with pytest.raises(InvalidInput, match="RGB"):
        normalise_intensity(rgb, "MR")
    grey3 = np.repeat(rgb[..., :1], 3, axis=2)
    assert normalise_intensity(grey3, "MR").shape == (10, 12, 3)
    with pytest.raises(InvalidInput, match="2D image"):
        normalise_intensity(np.zeros((4, 4, 4, 4)), "MR")


def test_boxes_from_mask_one_per_component_with_margin():
    label = np.zeros((40, 60), np.uint8)
    label[5:10, 5:12] = 1
    label[30:39, 50:60] = 1  # touches the right and bottom edges
    label[20:25, 20:25] = 2
    label[10, 12] = 1  # diagonal neighbour: same component (8-connectivity)
    boxes = boxes_from_mask(label, 1, margin_px=3)
    assert boxes.shape == (2, 4)
    rows = sorted(boxes.tolist())
    assert rows[0] == [2, 2, 15, 13]
    assert rows[1] == [47, 27, 59, 39]
    assert boxes_from_mask(label, 2).tolist() == [[20, 20, 24, 24]]
    assert boxes_from_mask(label, 3).shape == (0, 4)
    assert boxes_from_mask(label, 1, min_pixels=40).shape == (1, 4)


def test_resolve_overlaps_by_predicted_iou():
    a = np.zeros((8, 8), bool)
    a[0:5, 0:5] = True
    b = np.zeros((8, 8), bool)
    b[3:8, 3:8] = True
    c = np.zeros((2, 8, 8), bool)
    c[0, 0, 7] = True
    c[1, 4, 4] = True
    label = resolve_overlaps({1: (a, 0.6), 2: (b, 0.9), 3: (c, np.array([0.1, 0.95]))})
    assert label.dtype == np.uint8
    assert label[0, 0] == 1 and label[7, 7] == 2 and label[0, 7] == 3
    assert label[3, 3] == 2  # overlap of 1 and 2: 2 is surer
    assert label[4, 4] == 3  # 3's second component is surer still
    assert label[7, 0] == 0
    tie = resolve_overlaps({5: (a, 0.5), 4: (a, 0.5)})
    assert tie[0, 0] == 4
    assert resolve_overlaps({}, shape=(3, 3)).shape == (3, 3)
