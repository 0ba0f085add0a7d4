"""What every foundation model offers: embed an image once, then segment from prompts on
that (possibly cached) embedding; and how an embedding travels as bytes to the blob store."""

from __future__ import annotations

import io
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from pipeline.fm.preprocess import Letterbox
from store.errors import InvalidInput

EMBEDDING_FORMAT = 1


@dataclass(frozen=True)
class Embedding:
    """An image embedding (fp16, (C, h, w)) and the geometry that maps prompts onto it."""

    features: np.ndarray
    geometry: Letterbox
    fm_version: str
    preprocessing: str = ""

    @property
    def original_shape(self) -> tuple[int, int]:
        return self.geometry.original_shape

    @property
    def input_size(self) -> int:
        return self.geometry.input_size

    @property
    def scale(self) -> tuple[float, float]:
        return self.geometry.scale

    @property
    def padding(self) -> tuple[int, int]:
        return self.geometry.padding


@dataclass(frozen=True)
class Segmentation:
    """One mask per prompt, in original image pixels, with the model's own quality guess.

    `low_res_logits` (n, h, w) can be passed back to `segment(mask_logits=...)` to refine
    the same object with more clicks, as SAM's interactive loop does.
    """

    masks: np.ndarray  # bool (n, rows, cols)
    iou: np.ndarray  # float32 (n,)
    low_res_logits: np.ndarray  # float32 (n, h, w)

    def __len__(self) -> int:
        return int(self.masks.shape[0])


class FoundationModel(ABC):
    """A promptable segmentation model (LiteMedSAM, SAM, MedSAM)."""

    kind: str
    version: str  # changes whenever the weights change: cache embeddings under it
    input_size: int
    checkpoint_path: str | None = None
    checkpoint_sha256: str | None = None
    # Prompt types the weights were trained with ("box", "point", "mask"); a UI should ask
    # for these first (LiteMedSAM: a box; a click alone gives no mask).
    trained_prompts: frozenset[str] = frozenset({"box", "point", "mask"})

    @property
    def embedding_version(self) -> str:
        """The version its image embeddings are cached under: `version`, unless only the
        decoder was adapted (pipeline.fm.adapt), which keeps the base model's embeddings."""
        return getattr(self, "_embedding_version", None) or self.version

    @embedding_version.setter
    def embedding_version(self, value: str | None) -> None:
        self._embedding_version = value

    @abstractmethod
    def embed(self, image2d: np.ndarray, modality: str) -> Embedding:
        """Encode a 2D image (rows, cols) or RGB (rows, cols, 3); see `normalise_intensity`."""

    @abstractmethod
    def segment(
        self,
        embedding: Embedding,
        boxes: np.ndarray | None = None,
        points: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        prior_mask: np.ndarray | None = None,
        mask_logits: np.ndarray | None = None,
        multimask: bool = False,
    ) -> Segmentation:
        """Masks for the prompts, in the embedding's original pixel coordinates.

        boxes (n, 4) x0, y0, x1, y1 give one mask each; points (m, 2) x, y with labels
        1 (object) / 0 (background) apply to every box, or (n, m, 2) per box; prior_mask
        (rows, cols) or (n, rows, cols) is a mask in original pixels; mask_logits are a
        previous result's `low_res_logits`.
        """


def embedding_to_bytes(embedding: Embedding) -> bytes:
    """An `.npz` (fp16 features + geometry + version) for the blob store."""
    buffer = io.BytesIO()
    g = embedding.geometry
    np.savez(
        buffer,
        format=np.int64(EMBEDDING_FORMAT),
        features=np.asarray(embedding.features, dtype=np.float16),
        original_shape=np.asarray(g.original_shape, dtype=np.int64),
        input_size=np.int64(g.input_size),
        resized_shape=np.asarray(g.resized_shape, dtype=np.int64),
        fm_version=np.str_(embedding.fm_version),
        preprocessing=np.str_(embedding.preprocessing),
    )
    return buffer.getvalue()


def embedding_from_bytes(data: bytes) -> Embedding:
    """Inverse of `embedding_to_bytes`."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            if int(npz["format"]) != EMBEDDING_FORMAT:
                raise InvalidInput(
                    f"embedding format {int(npz['format'])} is not {EMBEDDING_FORMAT}; "
                    "recompute the embedding"
                )
            geometry = Letterbox(
                original_shape=tuple(int(v) for v in npz["original_shape"]),
                input_size=int(npz["input_size"]),
                resized_shape=tuple(int(v) for v in npz["resized_shape"]),
            )
            return Embedding(
                features=npz["features"].astype(np.float16, copy=False),
                geometry=geometry,
                fm_version=str(npz["fm_version"]),
                preprocessing=str(npz["preprocessing"]),
            )
    except (OSError, KeyError, ValueError) as exc:
        raise InvalidInput(
            f"these bytes are not a medloop embedding ({exc}); recompute the embedding"
        ) from exc
