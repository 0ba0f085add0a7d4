"""Embed and segment with any `segment_anything.modeling.Sam`-shaped network (SAM, MedSAM,
LiteMedSAM): preprocessing, prompt mapping and mask postprocessing shared by all adapters."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam

from pipeline.fm.base import Embedding, FoundationModel, Segmentation
from pipeline.fm.device import select_device
from pipeline.fm.preprocess import (
    Letterbox,
    boxes_to_model,
    letterbox_geometry,
    normalise_intensity,
    resize_image,
    to_model_coords,
    unletterbox_logits,
)
from store.errors import InvalidInput

# A binary prior mask enters the decoder as logits of this magnitude (SAM's own low-res
# logits for confident pixels are of this order).
PRIOR_MASK_LOGIT = 8.0
# Prompts decoded per forward pass: bounds memory (each repeats the image embedding).
DECODE_CHUNK = 32
# On a CPU the decoder is memory-bound (it copies the 256 x 64 x 64 embedding per prompt), so
# fewer at once is faster: LiteMedSAM, 1 thread, 32 boxes on a lung slice took 178-194 ms a
# box one at a time, 172-204 in fours, 278-284 in eights, 322-332 in one pass of 32.
CPU_DECODE_CHUNK = 4


class SamFamilyModel(FoundationModel):
    """A `Sam` module plus the preprocessing its weights were trained with.

    keep_aspect: letterbox (SAM, LiteMedSAM) or stretch to a square (MedSAM).
    minmax: rescale the resized image to the full 0..255 range before the pixel
    normalisation, as LiteMedSAM's and MedSAM's own inference code do.
    """

    def __init__(
        self,
        sam: Sam,
        *,
        kind: str,
        version: str,
        keep_aspect: bool = True,
        minmax: bool = False,
        device: str | torch.device | None = None,
        checkpoint_path: str | None = None,
        checkpoint_sha256: str | None = None,
        trained_prompts: frozenset[str] = frozenset({"box", "point", "mask"}),
        embedding_version: str | None = None,
    ) -> None:
        self.device = torch.device(device) if device is not None else select_device()
        self.sam = sam.to(self.device).eval()
        self.kind = kind
        self.version = version
        self.keep_aspect = keep_aspect
        self.minmax = minmax
        self.input_size = int(sam.image_encoder.img_size)
        self.mask_input_size = tuple(int(v) for v in sam.prompt_encoder.mask_input_size)
        self.checkpoint_path = checkpoint_path
        self.checkpoint_sha256 = checkpoint_sha256
        self.trained_prompts = trained_prompts
        self._embedding_version = embedding_version
        self.decode_chunk = CPU_DECODE_CHUNK if self.device.type == "cpu" else DECODE_CHUNK

    def __repr__(self) -> str:
        return f"{type(self).__name__}(version={self.version!r}, device={self.device})"

    # ------------------------------------------------------------------ embed

    def model_input(self, image2d: np.ndarray, modality: str) -> tuple[torch.Tensor, Letterbox]:
        """The normalised, padded (1, 3, S, S) tensor the encoder sees, and its geometry."""
        rgb = normalise_intensity(image2d, modality)
        geometry = letterbox_geometry(rgb.shape[:2], self.input_size, self.keep_aspect)
        resized = resize_image(rgb, geometry)
        if self.minmax:
            lo, hi = float(resized.min()), float(resized.max())
            resized = (resized - lo) / max(hi - lo, 1e-8) * 255.0
        tensor = torch.from_numpy(np.ascontiguousarray(resized)).permute(2, 0, 1)
        # Sam.preprocess normalises pixels then zero-pads bottom/right to a square.
        return self.sam.preprocess(tensor.to(self.device))[None], geometry

    @torch.inference_mode()
    def embed(self, image2d: np.ndarray, modality: str) -> Embedding:
        x, geometry = self.model_input(image2d, modality)
        features = self.sam.image_encoder(x)[0]
        return Embedding(
            features=features.to(torch.float16).cpu().numpy(),
            geometry=geometry,
            fm_version=self.embedding_version,
            preprocessing=modality,
        )

    # ------------------------------------------------------------------ segment

    @torch.inference_mode()
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
        if embedding.fm_version not in (self.version, self.embedding_version):
            raise InvalidInput(
                f"this embedding was computed by {embedding.fm_version}, not {self.version}; "
                "embed the image again with the current model"
            )
        geometry = embedding.geometry
        n: int | None = None

        box_t = None
        if boxes is not None:
            b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
            # accept corners in any order
            b = np.concatenate([np.minimum(b[:, :2], b[:, 2:]), np.maximum(b[:, :2], b[:, 2:])], 1)
            box_t = self._tensor(boxes_to_model(b, geometry))
            n = len(b)

        point_t = label_t = None
        if points is not None:
            p = np.asarray(points, dtype=np.float64)
            p = p[None] if p.ndim == 2 else p
            if p.ndim != 3 or p.shape[-1] != 2:
                raise InvalidInput(f"points must be (m, 2) or (n, m, 2) x, y; got {p.shape}")
            labels = (
                np.ones(p.shape[:2]) if point_labels is None
                else np.asarray(point_labels, dtype=np.float64).reshape(-1, p.shape[1])
            )
            if labels.shape[0] == 1 and p.shape[0] > 1:
                labels = np.repeat(labels, p.shape[0], axis=0)
            n = self._count(n, p.shape[0], "point sets")
            point_t = self._tensor(to_model_coords(p, geometry))
            label_t = self._tensor(labels)

        dense_in = None
        if prior_mask is not None:
            dense_in = self._prior_to_logits(np.asarray(prior_mask), geometry)
        if mask_logits is not None:
            m = np.asarray(mask_logits, dtype=np.float32)
            m = m[None] if m.ndim == 2 else m
            if tuple(m.shape[-2:]) != self.mask_input_size:
                raise InvalidInput(
                    f"mask_logits must be {self.mask_input_size} (a previous result's "
                    f"low_res_logits); got {m.shape}"
                )
            dense_in = self._tensor(m)[:, None]
        if dense_in is not None:
            n = self._count(n, dense_in.shape[0], "masks")

        if n is None:
            raise InvalidInput(
                "give a box, a click or a prior mask: the foundation model never invents prompts"
            )
        rows, cols = geometry.original_shape
        if n == 0:  # e.g. boxes_from_mask found no object of this class: propose nothing
            return Segmentation(
                masks=np.zeros((0, rows, cols), bool),
                iou=np.zeros(0, np.float32),
                low_res_logits=np.zeros((0, *self.mask_input_size), np.float32),
            )
        # one box, click set or mask given for several prompts applies to each of them
        box_t, point_t, label_t, dense_in = (
            t.expand(n, *t.shape[1:]) if t is not None and t.shape[0] == 1 else t
            for t in (box_t, point_t, label_t, dense_in)
        )

        features = torch.from_numpy(embedding.features.astype(np.float32))[None].to(self.device)
        logits, iou = [], []
        for start in range(0, n, self.decode_chunk):
            part = slice(start, start + self.decode_chunk)
            sparse, dense = self.sam.prompt_encoder(
                points=None if point_t is None else (point_t[part], label_t[part]),
                boxes=None if box_t is None else box_t[part],
                masks=None if dense_in is None else dense_in[part],
            )
            low_res, quality = self.sam.mask_decoder(
                image_embeddings=features,
                image_pe=self.sam.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=multimask,
            )
            best = quality.argmax(dim=1)  # with one output per prompt this is 0
            rows = torch.arange(low_res.shape[0], device=low_res.device)
            logits.append(low_res[rows, best])
            iou.append(quality[rows, best])
        low_res = torch.cat(logits)
        masks = unletterbox_logits(low_res[:, None], geometry)[:, 0] > self.sam.mask_threshold
        return Segmentation(
            masks=masks.cpu().numpy(),
            iou=torch.cat(iou).float().cpu().numpy(),
            low_res_logits=low_res.float().cpu().numpy(),
        )

    # ------------------------------------------------------------------ helpers

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(array, dtype=np.float32), device=self.device)

    @staticmethod
    def _count(n: int | None, k: int, what: str) -> int:
        """The number of prompts once `k` more arrive; one of anything applies to all."""
        if n is None or n == 1:
            return k
        if k in (1, n):
            return n
        raise InvalidInput(f"{k} {what} do not match {n} prompts; give one per box or one for all")

    def _prior_to_logits(self, mask: np.ndarray, geometry: Letterbox) -> torch.Tensor:
        mask = mask[None] if mask.ndim == 2 else mask
        if mask.ndim != 3 or tuple(mask.shape[-2:]) != geometry.original_shape:
            raise InvalidInput(
                f"prior_mask must be {geometry.original_shape} (the image's shape) or "
                f"(n, rows, cols); got {mask.shape}"
            )
        prob = self._tensor(mask > 0)[:, None]
        size = geometry.resized_shape
        shrink = size[0] <= prob.shape[-2] and size[1] <= prob.shape[-1]
        prob = F.interpolate(prob, size=size, mode="area" if shrink else "bilinear")
        pad = geometry.padding
        prob = F.pad(prob, (0, pad[1], 0, pad[0]))
        prob = F.interpolate(prob, size=self.mask_input_size, mode="area")
        return (prob * 2.0 - 1.0) * PRIOR_MASK_LOGIT
