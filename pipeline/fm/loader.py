"""Pick and load the configured foundation model once per process (MEDLOOP_FM_KIND,
MEDLOOP_FM_CHECKPOINT, MEDLOOP_FM_SHA256), or say why there is none."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import torch

from pipeline.fm.base import FoundationModel
from pipeline.fm.device import configure_threads, select_device
from pipeline.fm.litemedsam import KIND as LITEMEDSAM
from pipeline.fm.litemedsam import WEIGHTS_SHA256, load_litemedsam, weights_path
from pipeline.fm.sam import SAM_KINDS, load_sam
from store.errors import InvalidInput, MedloopError, NotFound

DEFAULT_KIND = LITEMEDSAM
KINDS: tuple[str, ...] = (LITEMEDSAM, *SAM_KINDS)

_cache: dict[tuple, FoundationModel] = {}
_lock = threading.Lock()


def load_foundation_model(
    kind: str | None = None,
    checkpoint: str | Path | None = None,
    expected_sha256: str | None = None,
    device: str | torch.device | None = None,
) -> FoundationModel:
    """The FM for `kind` (else MEDLOOP_FM_KIND, else LiteMedSAM), loaded once per process.

    SAM / MedSAM kinds need `checkpoint` (else MEDLOOP_FM_CHECKPOINT); `expected_sha256`
    (else MEDLOOP_FM_SHA256) is checked when given. Models are cached per kind, file,
    file size and modification time, and device: a replaced file is loaded again.
    """
    kind = (kind or os.environ.get("MEDLOOP_FM_KIND") or DEFAULT_KIND).strip().lower()
    if kind not in KINDS:
        raise InvalidInput(f"unknown FM kind {kind!r}; set MEDLOOP_FM_KIND to one of "
                           f"{', '.join(KINDS)}")
    expected_sha256 = expected_sha256 or os.environ.get("MEDLOOP_FM_SHA256") or None
    target = select_device(str(device) if device is not None else None)
    configure_threads()

    if kind == LITEMEDSAM:
        path = weights_path()
        key = (kind, str(path), WEIGHTS_SHA256, str(target))
        return _cached(key, lambda: load_litemedsam(device=target))

    checkpoint = checkpoint or os.environ.get("MEDLOOP_FM_CHECKPOINT") or None
    if checkpoint is None:
        raise NotFound(
            f"the {kind} FM needs a checkpoint: set MEDLOOP_FM_CHECKPOINT to its .pth file "
            "(`medloop weights fetch sam_vit_b` downloads SAM ViT-B)"
        )
    path = Path(checkpoint).expanduser().resolve()
    if not path.is_file():
        raise NotFound(f"a {kind} checkpoint {path} does not exist; check MEDLOOP_FM_CHECKPOINT")
    stat = path.stat()
    key = (kind, str(path), stat.st_size, stat.st_mtime_ns, expected_sha256, str(target))
    return _cached(key, lambda: load_sam(kind, path, expected_sha256, device=target))


def try_load_foundation_model(**kwargs) -> tuple[FoundationModel | None, str | None]:
    """(model, None), or (None, what to do) when no FM can be loaded: the app goes on."""
    try:
        return load_foundation_model(**kwargs), None
    except MedloopError as exc:
        return None, f"No foundation model, so no proposals: {exc}"


def clear_cache() -> None:
    """Forget loaded models (tests, or after weights change in place)."""
    with _lock:
        _cache.clear()


def _cached(key: tuple, load) -> FoundationModel:
    with _lock:
        model = _cache.get(key)
        if model is None:
            model = _cache[key] = load()
        return model
