"""Multi-class prompting in pure numpy: one box per connected component of a class in a
coarse label map, and one label map from per-class masks, overlaps going to the surer mask."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy import ndimage

# 8-connectivity: a lesion touching itself diagonally is one object, one box.
_EIGHT = np.ones((3, 3), dtype=bool)


def boxes_from_mask(
    label_map: np.ndarray, class_value: int, margin_px: int = 0, min_pixels: int = 1
) -> np.ndarray:
    """Boxes (n, 4) x0, y0, x1, y1 (inclusive pixel indices, float64), one per connected
    component of `label_map == class_value` with at least `min_pixels` pixels, grown by
    `margin_px` and clipped to the image. No pixels of the class: an empty (0, 4) array."""
    label_map = np.asarray(label_map)
    if label_map.ndim != 2:
        raise ValueError(f"expected a 2D label map, got shape {label_map.shape}")
    components, count = ndimage.label(label_map == class_value, structure=_EIGHT)
    rows, cols = label_map.shape
    boxes = []
    for index, found in enumerate(ndimage.find_objects(components), start=1):
        if found is None:
            continue
        if min_pixels > 1 and (components[found] == index).sum() < min_pixels:
            continue
        r, c = found
        boxes.append([
            max(c.start - margin_px, 0),
            max(r.start - margin_px, 0),
            min(c.stop - 1 + margin_px, cols - 1),
            min(r.stop - 1 + margin_px, rows - 1),
        ])
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4)


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
