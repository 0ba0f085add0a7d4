"""Multi-class prompting in pure numpy: one box per connected component of a class in a
coarse label map (components too small to matter left out), and one label map from
per-class masks, overlaps going to the surer mask."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy import ndimage

# 8-connectivity: a lesion touching itself diagonally is one object, one box.
_EIGHT = np.ones((3, 3), dtype=bool)


def kept_components(
    sizes: np.ndarray, image_pixels: int, min_pixels: int = 1,
    min_fraction_of_largest: float = 0.0, min_fraction_of_image: float = 0.0,
    max_boxes: int | None = None,
) -> np.ndarray:
    """Indices (0-based) of the components worth a box, largest first.

    A component goes when it has fewer than `min_pixels`, or when it is both smaller than
    `min_fraction_of_largest` of the class's largest component and smaller than
    `min_fraction_of_image` of the image: a small lesion alone (it is the largest) or one
    not tiny against the image stays, a weak model's speckle around a big finding goes.
    At most `max_boxes` stay (None: all).
    """
    sizes = np.asarray(sizes)
    if sizes.size == 0:
        return np.zeros(0, np.int64)
    small = (sizes < min_fraction_of_largest * sizes.max()) \
        & (sizes < min_fraction_of_image * image_pixels)
    keep = np.flatnonzero((sizes >= min_pixels) & ~small)
    keep = keep[np.argsort(-sizes[keep], kind="stable")]
    return keep if max_boxes is None else keep[:max_boxes]


def component_boxes(
    label_map: np.ndarray, class_value: int, margin_px: int = 0, min_pixels: int = 1,
    min_fraction_of_largest: float = 0.0, min_fraction_of_image: float = 0.0,
    max_boxes: int | None = None,
) -> tuple[np.ndarray, int]:
    """(boxes, components found): boxes (n, 4) x0, y0, x1, y1 (inclusive pixel indices,
    float64), one per connected component of `label_map == class_value` that
    `kept_components` keeps, largest first, grown by `margin_px` and clipped to the image;
    and how many components there were before that choice."""
    label_map = np.asarray(label_map)
    if label_map.ndim != 2:
        raise ValueError(f"expected a 2D label map, got shape {label_map.shape}")
    components, count = ndimage.label(label_map == class_value, structure=_EIGHT)
    sizes = np.bincount(components.ravel(), minlength=count + 1)[1:]
    rows, cols = label_map.shape
    keep = kept_components(sizes, rows * cols, min_pixels, min_fraction_of_largest,
                           min_fraction_of_image, max_boxes)
    found = ndimage.find_objects(components)
    boxes = []
    for index in keep:
        r, c = found[index]
        boxes.append([
            max(c.start - margin_px, 0),
            max(r.start - margin_px, 0),
            min(c.stop - 1 + margin_px, cols - 1),
            min(r.stop - 1 + margin_px, rows - 1),
        ])
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4), int(count)


def boxes_from_mask(
    label_map: np.ndarray, class_value: int, margin_px: int = 0, min_pixels: int = 1,
    min_fraction_of_largest: float = 0.0, min_fraction_of_image: float = 0.0,
    max_boxes: int | None = None,
) -> np.ndarray:
    """The boxes of `component_boxes` (no pixels of the class: an empty (0, 4) array)."""
    return component_boxes(label_map, class_value, margin_px, min_pixels,
                           min_fraction_of_largest, min_fraction_of_image, max_boxes)[0]


def resolve_overlaps(
    per_class_masks: Mapping[int, tuple[np.ndarray, np.ndarray | float]],
    shape: tuple[int, int] | None = None,
) -> np.ndarray:
    """A label map from {class: (masks, predicted_iou)}.

    masks is (rows, cols) with a scalar IoU, or (n, rows, cols) with (n,) IoUs (one per
    component). A pixel claimed by several masks goes to the mask with the highest
    predicted IoU (ties: the lower class value); unclaimed pixels are 0 (background).
    """
    entries = []
    for class_value, (masks, iou) in per_class_masks.items():
        masks = np.asarray(masks, dtype=bool)
        masks = masks[None] if masks.ndim == 2 else masks
        ious = np.broadcast_to(np.asarray(iou, dtype=np.float64).reshape(-1), (masks.shape[0],))
        entries += [(-float(q), int(class_value), m) for q, m in zip(ious, masks, strict=True)]
        shape = shape or masks.shape[1:]
    if shape is None:
        raise ValueError("no masks and no shape: cannot size the label map")
    top = max((c for _, c, _ in entries), default=0)
    out = np.zeros(shape, dtype=np.uint8 if top <= 255 else np.uint16 if top <= 65535 else np.int64)
    claimed = np.zeros(shape, dtype=bool)
    for _, class_value, mask in sorted(entries, key=lambda e: (e[0], e[1])):
        take = mask & ~claimed
        out[take] = class_value
        claimed |= take
    return out
