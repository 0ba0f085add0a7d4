"""Turn a 2D medical image into what a SAM-family model expects, and map prompts and masks
between the image's own pixels and the model's square input (the letterbox) both ways."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from store.errors import InvalidInput

# CT windows as (level, width) in Hounsfield units.
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "brain": (40.0, 80.0),
    "lung": (-600.0, 1500.0),
    "abdomen": (40.0, 400.0),
    "bone": (400.0, 1800.0),
    "soft_tissue": (50.0, 350.0),
}
DEFAULT_CT_WINDOW = "soft_tissue"
PERCENTILES = (0.5, 99.5)


# --------------------------------------------------------------------------- intensities


def parse_modality(modality: str) -> tuple[str, str | None]:
    """Split "CT:lung" into ("CT", "lung"); "MRI" reads as "MR"; case-insensitive."""
    name, _, preset = (modality or "").partition(":")
    name = name.strip().upper()
    if name == "MRI":
        name = "MR"
    return name, (preset.strip().lower() or None)


def window_ct(image: np.ndarray, level: float, width: float) -> np.ndarray:
    """Clip HU to [level - width/2, level + width/2] and scale to 0..255 (float32)."""
    lo, hi = level - width / 2.0, level + width / 2.0
    out = (np.clip(image.astype(np.float32), lo, hi) - lo) / max(hi - lo, 1e-6)
    return out * 255.0


def percentile_normalise(
    image: np.ndarray, lower: float = PERCENTILES[0], upper: float = PERCENTILES[1]
) -> np.ndarray:
    """Clip to the 0.5 / 99.5 percentiles and scale to 0..255 (float32).

    As in MedSAM's MR preprocessing, the percentiles are taken over non-zero pixels and a
    zero background stays zero, so a large empty field of view does not flatten the contrast.
    """
    image = image.astype(np.float32)
    foreground = image != 0
    values = image[foreground] if foreground.any() else image.ravel()
    lo, hi = (float(v) for v in np.percentile(values, [lower, upper]))
    if hi <= lo:  # a flat image: foreground bright, background dark
        return np.where(foreground, 255.0, 0.0).astype(np.float32)
    out = np.clip((np.clip(image, lo, hi) - lo) * np.float32(255.0 / (hi - lo)), 0.0, 255.0)
    out[~foreground] = 0.0
    return out


def normalise_intensity(image: np.ndarray, modality: str) -> np.ndarray:
    """A 2D image (rows, cols) or RGB (rows, cols, 3|4) as float32 RGB in 0..255.

    `modality` is "CT" (soft-tissue window), "CT:<preset>" with a preset of `CT_WINDOWS`,
    "CT:percentile", "MR"/"MRI" and any other grey-scale modality (percentile
    normalisation), or "RGB" (8-bit colour passes through; wider ranges are scaled to 0..255).
    """
    image = np.asarray(image)
    name, preset = parse_modality(modality)
    if image.ndim == 3 and image.shape[-1] in (3, 4):
        rgb = image[..., :3].astype(np.float32)
        if name == "RGB":
            return rgb if rgb.min() >= 0 and rgb.max() <= 255 else _minmax_255(rgb)
        grey_as_rgb = np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(
            rgb[..., 0], rgb[..., 2]
        )
        if not grey_as_rgb:
            raise InvalidInput(
                f"a colour image was given with modality {modality!r}; pass modality 'RGB'"
            )
        image = image[..., 0]  # grey stored as three equal channels
    if image.ndim != 2:
        raise InvalidInput(
            f"expected a 2D image (rows, cols) or RGB (rows, cols, 3), got shape {image.shape}"
        )
    if name == "RGB":
        grey = image.astype(np.float32)
        grey = grey if grey.min() >= 0 and grey.max() <= 255 else _minmax_255(grey)
    elif name == "CT" and preset != "percentile":
        key = preset or DEFAULT_CT_WINDOW
        if key not in CT_WINDOWS:
            raise InvalidInput(
                f"unknown CT window {key!r}; use one of {', '.join(sorted(CT_WINDOWS))} "
                "or 'percentile'"
            )
        grey = window_ct(image, *CT_WINDOWS[key])
    else:
        grey = percentile_normalise(image)
    return np.repeat(grey.astype(np.float32, copy=False)[:, :, None], 3, axis=2)


def _minmax_255(x: np.ndarray) -> np.ndarray:
    lo, hi = float(x.min()), float(x.max())
    return ((x - lo) / max(hi - lo, 1e-8) * 255.0).astype(np.float32)


# --------------------------------------------------------------------------- letterbox


@dataclass(frozen=True)
class Letterbox:
    """Where an image of `original_shape` sits inside the model's square input.

    The image is resized to `resized_shape` and padded at the bottom and right up to
    `input_size` (SAM's ResizeLongestSide). MedSAM's "stretch" geometry is the special case
    resized_shape == (input_size, input_size) with no padding.
    """

    original_shape: tuple[int, int]
    input_size: int
    resized_shape: tuple[int, int]

    @property
    def scale(self) -> tuple[float, float]:
        """(rows, cols) factors from original pixels to model pixels."""
        return (
            self.resized_shape[0] / self.original_shape[0],
            self.resized_shape[1] / self.original_shape[1],
        )

    @property
    def padding(self) -> tuple[int, int]:
        """Rows added at the bottom, columns added at the right."""
        return (self.input_size - self.resized_shape[0], self.input_size - self.resized_shape[1])


def letterbox_geometry(
    original_shape: tuple[int, int], input_size: int, keep_aspect: bool = True
) -> Letterbox:
    """The letterbox for an image: longest side to `input_size`, rounding as SAM does."""
    rows, cols = int(original_shape[0]), int(original_shape[1])
    if rows < 1 or cols < 1:
        raise InvalidInput(f"cannot letterbox an empty image of shape {original_shape}")
    if not keep_aspect:
        return Letterbox((rows, cols), int(input_size), (int(input_size), int(input_size)))
    scale = input_size * 1.0 / max(rows, cols)
    new_rows, new_cols = int(rows * scale + 0.5), int(cols * scale + 0.5)
    return Letterbox((rows, cols), int(input_size), (max(new_rows, 1), max(new_cols, 1)))


def resize_image(image: np.ndarray, geometry: Letterbox) -> np.ndarray:
    """Resize (rows, cols, C) float to `geometry.resized_shape` without padding.

    Shrinking averages pixel areas (cv2's INTER_AREA, what LiteMedSAM's own inference
    uses); enlarging is bilinear.
    """
    tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    tensor = tensor.permute(2, 0, 1)[None]
    size = geometry.resized_shape
    if tuple(image.shape[:2]) == size:
        return np.asarray(image, dtype=np.float32)
    if size[0] <= image.shape[0] and size[1] <= image.shape[1]:
        out = F.interpolate(tensor, size=size, mode="area")
    else:
        out = F.interpolate(tensor, size=size, mode="bilinear", align_corners=False, antialias=True)
    return out[0].permute(1, 2, 0).numpy()


def letterbox_image(image: np.ndarray, geometry: Letterbox, fill: float = 0.0) -> np.ndarray:
    """Resize (rows, cols, C) and pad bottom/right to (input_size, input_size, C)."""
    resized = resize_image(image, geometry)
    pad_rows, pad_cols = geometry.padding
    return np.pad(resized, ((0, pad_rows), (0, pad_cols), (0, 0)), constant_values=fill)


def _nearest_index(n_out: int, n_in: int) -> np.ndarray:
    # Pixel-centre aligned nearest neighbour: exact inverse whenever the other way enlarges.
    idx = np.floor((np.arange(n_out) + 0.5) * (n_in / n_out)).astype(np.int64)
    return np.clip(idx, 0, n_in - 1)


def letterbox_mask(mask: np.ndarray, geometry: Letterbox) -> np.ndarray:
    """A mask (rows, cols) or (n, rows, cols) in model input space, nearest, zero padding."""
    mask = np.asarray(mask)
    rows = _nearest_index(geometry.resized_shape[0], geometry.original_shape[0])
    cols = _nearest_index(geometry.resized_shape[1], geometry.original_shape[1])
    resized = mask[..., rows[:, None], cols[None, :]]
    pad = [(0, 0)] * (mask.ndim - 2) + [(0, geometry.padding[0]), (0, geometry.padding[1])]
    return np.pad(resized, pad)


def unletterbox_mask(mask: np.ndarray, geometry: Letterbox) -> np.ndarray:
    """Inverse of `letterbox_mask`: crop the padding, nearest-resize to the original shape."""
    mask = np.asarray(mask)
    cropped = mask[..., : geometry.resized_shape[0], : geometry.resized_shape[1]]
    rows = _nearest_index(geometry.original_shape[0], geometry.resized_shape[0])
    cols = _nearest_index(geometry.original_shape[1], geometry.resized_shape[1])
    return cropped[..., rows[:, None], cols[None, :]]


def unletterbox_logits(logits: torch.Tensor, geometry: Letterbox) -> torch.Tensor:
    """Model logits (n, C, h, w) at any resolution to (n, C, rows, cols) original pixels.

    Exactly SAM's `postprocess_masks`: bilinear up to the input size, crop the padding,
    bilinear to the original size.
    """
    size = geometry.input_size
    if logits.shape[-2:] != (size, size):
        logits = F.interpolate(logits, (size, size), mode="bilinear", align_corners=False)
    logits = logits[..., : geometry.resized_shape[0], : geometry.resized_shape[1]]
    return F.interpolate(logits, geometry.original_shape, mode="bilinear", align_corners=False)


def to_model_coords(coords: np.ndarray, geometry: Letterbox) -> np.ndarray:
    """Points (..., 2) as x, y in original pixels to model input pixels (float64)."""
    coords = np.asarray(coords, dtype=np.float64)
    scale_rows, scale_cols = geometry.scale
    return coords * np.array([scale_cols, scale_rows])


def to_original_coords(coords: np.ndarray, geometry: Letterbox) -> np.ndarray:
    """Inverse of `to_model_coords`."""
    coords = np.asarray(coords, dtype=np.float64)
    scale_rows, scale_cols = geometry.scale
    return coords / np.array([scale_cols, scale_rows])


def boxes_to_model(boxes: np.ndarray, geometry: Letterbox) -> np.ndarray:
    """Boxes (n, 4) as x0, y0, x1, y1 in original pixels to model input pixels."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return to_model_coords(boxes.reshape(-1, 2, 2), geometry).reshape(-1, 4)


def boxes_to_original(boxes: np.ndarray, geometry: Letterbox) -> np.ndarray:
    """Inverse of `boxes_to_model`."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return to_original_coords(boxes.reshape(-1, 2, 2), geometry).reshape(-1, 4)
