"""Foundation-model segmentation (LiteMedSAM, SAM, MedSAM): embed once, prompt many times."""

from pipeline.fm.base import (
    Embedding,
    FoundationModel,
    Segmentation,
    embedding_from_bytes,
    embedding_to_bytes,
)
from pipeline.fm.checkpoints import file_sha256
from pipeline.fm.device import configure_threads, select_device
from pipeline.fm.litemedsam import load_litemedsam
from pipeline.fm.loader import (
    KINDS,
    clear_cache,
    load_foundation_model,
    try_load_foundation_model,
)
from pipeline.fm.multiclass import boxes_from_mask, resolve_overlaps
from pipeline.fm.predictor import SamFamilyModel
from pipeline.fm.preprocess import CT_WINDOWS, Letterbox, letterbox_geometry, normalise_intensity
from pipeline.fm.sam import SAM_KINDS, load_sam
from pipeline.fm.weights import OFFICIAL_WEIGHTS, fetch_weights

__all__ = [
    "CT_WINDOWS",
    "KINDS",
    "OFFICIAL_WEIGHTS",
    "SAM_KINDS",
    "Embedding",
    "FoundationModel",
    "Letterbox",
    "SamFamilyModel",
    "Segmentation",
    "boxes_from_mask",
    "clear_cache",
    "configure_threads",
    "embedding_from_bytes",
    "embedding_to_bytes",
    "fetch_weights",
    "file_sha256",
    "letterbox_geometry",
    "load_foundation_model",
    "load_litemedsam",
    "load_sam",
    "normalise_intensity",
    "resolve_overlaps",
    "select_device",
    "try_load_foundation_model",
]
