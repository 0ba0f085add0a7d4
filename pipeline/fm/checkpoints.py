"""Read model weights from a file safely: sha256, a clear error for a missing, corrupt or
wrong-architecture checkpoint, and a strict load (no missing or unexpected keys)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from store.errors import InvalidInput, NotFound


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path: str | Path, expected: str | None, what: str) -> str:
    """The file's sha256; InvalidInput if `expected` is given and differs."""
    path = Path(path)
    if not path.is_file():
        raise NotFound(f"{what} {path} does not exist; check the path or download it again")
    actual = file_sha256(path)
    if expected and actual.lower() != expected.strip().lower():
        raise InvalidInput(
            f"{what} {path} has sha256 {actual}, expected {expected.strip().lower()}; "
            "the file is damaged or is a different checkpoint: download it again"
        )
    return actual


def read_state_dict(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """The tensors in a checkpoint file (a state dict, or one under "model"/"state_dict")."""
    path = Path(path)
    if not path.is_file():
        raise NotFound(f"{what} {path} does not exist; check the path or download it again")
    try:
        # weights_only: a checkpoint is data, never code to run.
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged or foreign file
        raise InvalidInput(
            f"{path} is not a readable PyTorch checkpoint ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); expected {what}"
        ) from exc
    for key in ("model", "state_dict"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in obj.values()
    ):
        raise InvalidInput(f"{path} holds no state dict of tensors; expected {what}")
    return dict(obj)


def load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], path: str | Path,
                what: str) -> None:
    """Load every tensor into `module`; InvalidInput listing what does not fit otherwise."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatches (e.g. {'; '.join(mismatched[:3])})")
        raise InvalidInput(
            f"{path} is not {what}: {', '.join(parts)}. Check that the model kind matches "
            "the checkpoint (MEDLOOP_FM_KIND / MEDLOOP_FM_CHECKPOINT)"
        )
    module.load_state_dict(state, strict=True)
