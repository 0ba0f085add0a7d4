"""SAM and MedSAM ViT-B/L/H from a checkpoint file the user gives (1024 x 1024 input)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from segment_anything import sam_model_registry
from segment_anything.modeling import Sam

from pipeline.fm.checkpoints import load_strict, read_state_dict, verify_sha256
from pipeline.fm.predictor import SamFamilyModel
from store.errors import InvalidInput

# medloop kind -> segment_anything registry architecture
SAM_KINDS: dict[str, str] = {
    "sam_vit_b": "vit_b",
    "sam_vit_l": "vit_l",
    "sam_vit_h": "vit_h",
    "medsam_vit_b": "vit_b",
}


def build_registry_sam(kind: str) -> Sam:
    """The randomly initialised network for `kind` (weights are loaded afterwards)."""
    if kind not in SAM_KINDS:
        raise InvalidInput(f"unknown SAM kind {kind!r}; use one of {', '.join(SAM_KINDS)}")
    return sam_model_registry[SAM_KINDS[kind]](checkpoint=None)


def load_sam(
    kind: str,
    checkpoint: str | Path,
    expected_sha256: str | None = None,
    device: str | torch.device | None = None,
    builder: Callable[[], Sam] | None = None,
) -> SamFamilyModel:
    """A SAM-family FM from `checkpoint`, verified and loaded strictly.

    `builder` makes the empty network (default: the registry's for `kind`); tests pass a
    tiny one. MedSAM keeps its own preprocessing: the image stretched to 1024 x 1024 and
    scaled to 0..1 (no ImageNet mean/std), as in MedSAM's training and inference code.
    SAM letterboxes and uses ImageNet mean/std.
    """
    if builder is None and kind not in SAM_KINDS:
        raise InvalidInput(f"unknown SAM kind {kind!r}; use one of {', '.join(SAM_KINDS)}")
    path = Path(checkpoint).expanduser()
    what = f"a {kind} checkpoint"
    sha = verify_sha256(path, expected_sha256, what)
    state = read_state_dict(path, what)
    sam = builder() if builder is not None else build_registry_sam(kind)
    load_strict(sam, state, path, what)
    medsam = kind.startswith("medsam")
    if medsam:
        # pixel_mean / pixel_std are not in the state dict: set MedSAM's 0..1 scaling here.
        sam.pixel_mean.zero_()
        sam.pixel_std.fill_(255.0)
    return SamFamilyModel(
        sam,
        kind=kind,
        version=f"{kind}-{sha[:12]}",
        keep_aspect=not medsam,
        minmax=medsam,
        device=device,
        checkpoint_path=str(path.resolve()),
        checkpoint_sha256=sha,
        trained_prompts=frozenset({"box"}) if medsam else frozenset({"box", "point", "mask"}),
    )
