"""Feature vectors for active learning: FM image embeddings pooled to one vector per image.

The FM embeds every image once for its proposals (cached in the blob store); pooling that
embedding gives the cold-start strategy a description of each image at no extra cost.
"""

from __future__ import annotations

import numpy as np

from pipeline.fm.base import Embedding
from store.errors import InvalidInput


def fm_vector(embedding: Embedding | np.ndarray) -> np.ndarray:
    """One float32 vector per image: the embedding's channels averaged, and their standard
    deviation, over the grid cells that hold the image (letterbox padding left out), then
    scaled to unit length so that k-means compares images, not contrasts.

    Accepts an `Embedding` or a bare (C, h, w) feature array (all cells then count)."""
    if isinstance(embedding, Embedding):
        feats = np.asarray(embedding.features, np.float32)
        geo = embedding.geometry
        if feats.ndim != 3:
            raise InvalidInput(f"an FM embedding has shape (C, h, w), not {feats.shape}")
        # The valid region in grid cells: the resized image's share of the input square.
        rows = max(1, int(np.ceil(feats.shape[1] * geo.resized_shape[0] / geo.input_size)))
        cols = max(1, int(np.ceil(feats.shape[2] * geo.resized_shape[1] / geo.input_size)))
        feats = feats[:, :rows, :cols]
    else:
        feats = np.asarray(embedding, np.float32)
        if feats.ndim != 3:
            raise InvalidInput(f"an FM embedding has shape (C, h, w), not {feats.shape}")
    flat = feats.reshape(feats.shape[0], -1)
    vec = np.concatenate([flat.mean(axis=1), flat.std(axis=1)])
    vec = np.nan_to_num(vec, nan=0.0, posinf=0.0, neginf=0.0)
    norm = float(np.linalg.norm(vec))
    return (vec / norm if norm > 0 else vec).astype(np.float32)


def fm_vectors(embeddings: list[Embedding | np.ndarray]) -> np.ndarray:
    """(N, D) stacked `fm_vector`s, for `Pool.embeddings`."""
    if not embeddings:
        raise InvalidInput("no embeddings to pool")
    return np.stack([fm_vector(e) for e in embeddings])
