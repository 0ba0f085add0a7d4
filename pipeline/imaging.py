"""Array conventions shared by ingest, display and models: slicing volumes, display windows."""

from __future__ import annotations

import numpy as np

AXES = {"x": 0, "y": 1, "z": 2}


def cut_slice(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    """A 2D slice of a canonical (RAS+) volume, rotated so anterior/superior is up."""
    # Basic indexing gives a view; np.take copies the whole plane through a slow path.
    return np.rot90(volume[(slice(None),) * axis + (index,)])


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two masks (anything > 0 is foreground); 1.0 when both are empty. A scalar on
    two numpy arrays: MONAI's DiceMetric wants batched one-hot tensors for the same."""
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    total = int(a.sum()) + int(b.sum())
    return 2.0 * float((a & b).sum()) / total if total else 1.0


def axial_slices(volume: np.ndarray, axis: int = 2) -> np.ndarray:
    """All slices of a canonical volume along `axis`, as (slices, rows, cols), each oriented
    as cut_slice shows it (one rotation for the whole volume, not one per slice)."""
    return np.ascontiguousarray(np.moveaxis(np.rot90(volume, axes=(0, 1)), axis, 0))


def uncut_slice(slice2d: np.ndarray) -> np.ndarray:
    """Inverse of cut_slice's rotation: back to the volume's own in-plane axis order."""
    return np.rot90(slice2d, k=-1)


def slice_spacing(spacing: list[float], axis: int) -> list[float]:
    """Pixel spacing (rows, cols) of a cut_slice along axis, from the volume's voxel sizes."""
    a, b = (s for i, s in enumerate(spacing) if i != axis)
    return [float(b), float(a)]  # rot90: rows run along the second remaining axis


def to_display(
    image: np.ndarray, low: float | None = None, high: float | None = None
) -> np.ndarray:
    """uint8 for the screen: a window [low, high], or the 0.5-99.5 percentiles when not given.

    RGB images (rows, cols, 3) of uint8 pass through unchanged.
    """
    if image.ndim == 3 and image.shape[-1] in (3, 4) and image.dtype == np.uint8:
        return image[..., :3]
    img = image.astype(np.float32)
    if low is None or high is None:
        low, high = np.percentile(img, [0.5, 99.5])
    if high <= low:
        high = low + 1.0
    out = (np.clip(img, low, high) - low) / (high - low) * 255.0
    return out.astype(np.uint8)


def thumbnail(image: np.ndarray, size: int = 160) -> np.ndarray:
    """A small uint8 picture of an item for lists (percentile window, aspect kept)."""
    from PIL import Image

    pic = Image.fromarray(to_display(image))
    pic.thumbnail((size, size))
    return np.asarray(pic)
