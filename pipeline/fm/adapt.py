"""Adapt a SAM-family FM to validated labels by parameter-efficient fine-tuning: its mask
decoder alone (on fixed image embeddings), or LoRA on the encoder's attention plus the decoder.

Store-independent: give it images, label maps and cached embeddings; it returns only the
trained tensors, which `apply_adaptation` loads into a copy of the base model as a new version.

Prompts and targets follow how LiteMedSAM / MedSAM were trained: one box per connected
component of each class present in a label map (grown by `margin_px`), and as target the
pixels of that class inside the box (another component of the same class that the box
overlaps is the same class, so it is no error to segment it). The loss is MONAI's
`DiceCELoss` (Dice + binary cross-entropy on logits) on the decoder's low-resolution masks
against the letterboxed target, plus, as in MedSAM-Lite, the mean squared error between the
predicted IoU and the IoU actually reached, so the IoU that resolves overlapping classes
stays honest.
"""

from __future__ import annotations

import copy
import hashlib
import io
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss

from pipeline.fm.base import Embedding
from pipeline.fm.multiclass import boxes_from_mask
from pipeline.fm.predictor import SamFamilyModel
from pipeline.fm.preprocess import (
    Letterbox,
    boxes_to_model,
    letterbox_mask,
    unletterbox_logits,
)
from store.errors import InvalidInput

METHODS = ("decoder", "lora")
# The encoder's attention input projection: `qkv` in TinyViT (LiteMedSAM) and SAM's ViT.
LORA_TARGETS = ("qkv",)
# lora_alpha = LORA_ALPHA_PER_RANK * rank, so a saved state (which holds tensors only) says
# its own scaling through the rank of its lora_A matrices.
LORA_ALPHA_PER_RANK = 2
DECODER_PREFIX = "mask_decoder."
ENCODER_PREFIX = "image_encoder."
_ADAPTER = "default"  # peft's adapter name while training; not part of a saved state

Progress = Callable[[float, str], None]


@dataclass
class AdaptSample:
    """One validated 2D label and its image."""

    image: np.ndarray  # (rows, cols) or RGB (rows, cols, 3), raw intensities
    modality: str  # as `normalise_intensity` takes it: "MR", "CT:lung", "CT:percentile", "RGB"
    label_map: np.ndarray  # integer (rows, cols), 0 background
    embedding: Embedding | None = None  # a cached embedding of this image by this FM, if any


@dataclass
class AdaptResult:
    """The trained tensors only, and how they were obtained."""

    state: dict[str, torch.Tensor]  # mask_decoder.* (and image_encoder.*.lora_A/B.weight)
    method: str  # "decoder" | "lora"
    config: dict
    losses: list[float] = field(default_factory=list)  # mean loss per epoch
    dice_before: float = float("nan")  # mean Dice over the training box prompts, base model
    dice_after: float = float("nan")  # the same prompts, adapted model


@dataclass
class _Prepared:
    """One sample turned into model-space prompts and targets."""

    geometry: Letterbox
    features: torch.Tensor | None  # (1, C, h, w) base embedding, float32
    model_input: torch.Tensor | None  # (1, 3, S, S): only for "lora"
    sparse: torch.Tensor  # prompt encoder outputs for the boxes (fixed: it is frozen)
    dense: torch.Tensor
    target_low: torch.Tensor  # (n, 1, h, w) float 0/1, letterboxed, decoder resolution
    target: torch.Tensor  # (n, rows, cols) bool, original pixels (for Dice)


# --------------------------------------------------------------------------- public API


def finetune(
    fm: SamFamilyModel,
    samples: list[AdaptSample],
    method: str = "decoder",
    epochs: int = 5,
    lr: float = 1e-4,
    lora_rank: int = 4,
    margin_px: int = 2,
    seed: int = 0,
    progress: Progress | None = None,
) -> AdaptResult:
    """Fine-tune a copy of `fm`'s mask decoder ("decoder") or LoRA adapters on the encoder's
    attention plus the decoder ("lora") on box prompts from `samples`; `fm` is left as it was.

    "decoder" embeds each image once (or reuses `sample.embedding`), so a step costs one
    decoder pass; "lora" runs the encoder forward and backward on every step. One optimiser
    step (AdamW) per image and all its prompts; images shuffled per epoch with `seed`.
    """
    _check_method(method)
    if not samples:
        raise InvalidInput(
            "no validated labels to adapt the foundation model on: accept some first"
        )
    if epochs < 1:
        raise InvalidInput(f"epochs must be at least 1, got {epochs}")
    if method == "lora" and lora_rank < 1:
        raise InvalidInput(f"lora_rank must be at least 1, got {lora_rank}")
    report = progress or (lambda _pct, _msg: None)
    started = time.perf_counter()

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        report(0.0, f"preparing {len(samples)} labelled images")
        prepared = _prepare(fm, samples, margin_px, need_input=method == "lora")
        if not prepared:
            raise InvalidInput(
                "nothing to learn from: no label has a foreground pixel in any class; "
                "adapt on accepted labels that outline something"
            )
        decoder = copy.deepcopy(fm.sam.mask_decoder).eval()
        decoder.requires_grad_(True)
        encoder = _lora_encoder(fm, lora_rank) if method == "lora" else None
        image_pe = _image_pe(fm)

        dice_before = _mean_dice(fm, prepared, fm.sam.mask_decoder, None, image_pe)
        params = [p for p in decoder.parameters() if p.requires_grad]
        if encoder is not None:
            params += [p for p in encoder.parameters() if p.requires_grad]
        optimiser = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
        seg_loss = DiceCELoss(sigmoid=True, squared_pred=True, reduction="mean")
        order_rng = np.random.default_rng(seed)
        losses: list[float] = []
        epoch_seconds: list[float] = []
        for epoch in range(epochs):
            t0 = time.perf_counter()
            total = 0.0
            for index in order_rng.permutation(len(prepared)):
                item = prepared[index]
                low_res, iou_pred = _decode(decoder, encoder, image_pe, item)
                with torch.no_grad():
                    iou_reached = _iou(low_res > fm.sam.mask_threshold, item.target_low > 0.5)
                loss = seg_loss(low_res, item.target_low) + F.mse_loss(iou_pred, iou_reached)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                total += float(loss.detach())
            losses.append(total / len(prepared))
            epoch_seconds.append(time.perf_counter() - t0)
            report(
                95.0 * (epoch + 1) / epochs,
                f"epoch {epoch + 1}/{epochs}: loss {losses[-1]:.4f}",
            )

        dice_after = _mean_dice(fm, prepared, decoder, encoder, image_pe)

    state = {DECODER_PREFIX + k: v.detach().cpu().clone() for k, v in decoder.state_dict().items()}
    if encoder is not None:
        state.update(_lora_state(encoder))
    n_prompts = sum(int(p.target.shape[0]) for p in prepared)
    config = {
        "method": method,
        "base_version": fm.version,
        "epochs": epochs,
        "lr": lr,
        "optimizer": "AdamW(weight_decay=0.01)",
        "loss": "DiceCELoss(sigmoid, squared_pred) + MSE(predicted IoU)",
        "margin_px": margin_px,
        "seed": seed,
        "n_samples": len(prepared),
        "n_samples_skipped": len(samples) - len(prepared),
        "n_prompts": n_prompts,
        "seconds_per_epoch": [round(s, 3) for s in epoch_seconds],
        "seconds": round(time.perf_counter() - started, 3),
    }
    if method == "lora":
        config.update(
            lora_rank=lora_rank,
            lora_alpha=LORA_ALPHA_PER_RANK * lora_rank,
            lora_targets=list(LORA_TARGETS),
        )
    report(100.0, f"done: Dice {dice_before:.3f} -> {dice_after:.3f} on {n_prompts} prompts")
    return AdaptResult(
        state=state,
        method=method,
        config=config,
        losses=losses,
        dice_before=dice_before,
        dice_after=dice_after,
    )


def apply_adaptation(fm: SamFamilyModel, state: dict, method: str) -> SamFamilyModel:
    """A new model: `fm` with the adapted tensors of `finetune` loaded (LoRA merged into the
    encoder's weights); `fm` itself is unchanged.

    Its version is `fm.version` plus a hash of `state`. With "decoder" the image encoder is
    shared with `fm` (it is frozen) and `embedding_version` stays `fm.embedding_version`, so
    cached embeddings remain valid; with "lora" embeddings must be computed again.
    """
    _check_method(method)
    if not isinstance(state, dict) or not state:
        raise InvalidInput("the adaptation holds no weights: fine-tune again")
    decoder_state = {
        k[len(DECODER_PREFIX):]: v for k, v in state.items() if k.startswith(DECODER_PREFIX)
    }
    encoder_state = {
        k[len(ENCODER_PREFIX):]: v for k, v in state.items() if k.startswith(ENCODER_PREFIX)
    }
    others = sorted(k for k in state if not k.startswith((DECODER_PREFIX, ENCODER_PREFIX)))
    if others or bool(encoder_state) != (method == "lora"):
        found = (
            f"unknown keys such as {others[0]!r}" if others
            else "LoRA and decoder weights" if encoder_state else "decoder weights only"
        )
        raise InvalidInput(
            f"these weights are not a {method!r} adaptation ({found}); "
            "apply them with the method they were fine-tuned with"
        )

    # The frozen encoder is shared with the base for "decoder": no second copy in memory.
    memo = {id(fm.sam.image_encoder): fm.sam.image_encoder} if method == "decoder" else {}
    sam = copy.deepcopy(fm.sam, memo)
    try:
        sam.mask_decoder.load_state_dict(decoder_state, strict=True)
    except RuntimeError as exc:
        raise InvalidInput(
            f"the adapted decoder does not fit {fm.version}'s mask decoder ({exc}); "
            "apply it to the model it was fine-tuned from"
        ) from exc
    if method == "lora":
        sam.image_encoder = _merge_lora(sam.image_encoder, encoder_state, fm.version)

    digest = state_sha256(state)
    version = f"{fm.version}+{'dec' if method == 'decoder' else 'lora'}-{digest[:8]}"
    adapted = SamFamilyModel(
        sam,
        kind=fm.kind,
        version=version,
        keep_aspect=fm.keep_aspect,
        minmax=fm.minmax,
        device=fm.device,
        checkpoint_path=fm.checkpoint_path,
        checkpoint_sha256=fm.checkpoint_sha256,
        trained_prompts=fm.trained_prompts,
        embedding_version=fm.embedding_version if method == "decoder" else version,
    )
    adapted.base_version = fm.version
    adapted.adaptation_sha256 = digest
    return adapted


def state_to_bytes(state: dict[str, torch.Tensor]) -> bytes:
    """The adapted tensors as bytes for the blob store (`torch.save`)."""
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu().contiguous() for k, v in state.items()}, buffer)
    return buffer.getvalue()


def state_from_bytes(data: bytes) -> dict[str, torch.Tensor]:
    """Inverse of `state_to_bytes`; loads tensors only (`weights_only`), never code."""
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for a corrupt or foreign file
        raise InvalidInput(
            f"these bytes are not saved FM adaptation weights ({exc}); fine-tune again"
        ) from exc
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise InvalidInput("these bytes are not saved FM adaptation weights; fine-tune again")
    return state


def state_sha256(state: dict[str, torch.Tensor]) -> str:
    """A hash of names, dtypes, shapes and values, independent of how they were serialised."""
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- preparation


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise InvalidInput(f"unknown adaptation method {method!r}; use one of {', '.join(METHODS)}")


def _prepare(
    fm: SamFamilyModel, samples: list[AdaptSample], margin_px: int, need_input: bool
) -> list[_Prepared]:
    """Prompts and targets for every sample with foreground; samples without are skipped."""
    prepared = []
    for number, sample in enumerate(samples):
        image = np.asarray(sample.image)
        label_map = np.asarray(sample.label_map)
        if label_map.ndim != 2 or tuple(label_map.shape) != tuple(image.shape[:2]):
            raise InvalidInput(
                f"sample {number}: label map {label_map.shape} does not match image "
                f"{image.shape}; give a 2D integer label map of the image's rows and columns"
            )
        boxes, targets = [], []
        for value in np.unique(label_map):
            if value == 0:
                continue
            class_mask = label_map == value
            for x0, y0, x1, y1 in boxes_from_mask(label_map, int(value), margin_px):
                inside = np.zeros_like(class_mask)
                inside[int(y0): int(y1) + 1, int(x0): int(x1) + 1] = True
                boxes.append((x0, y0, x1, y1))
                targets.append(class_mask & inside)
        if not boxes:
            continue

        embedding = sample.embedding
        if not _usable(fm, embedding, image, sample.modality):
            embedding = fm.embed(image, sample.modality)
        geometry = embedding.geometry
        model_input = None
        if need_input:
            model_input, input_geometry = fm.model_input(image, sample.modality)
            geometry = input_geometry

        target = np.stack(targets)
        low = torch.from_numpy(letterbox_mask(target, geometry).astype(np.float32))[:, None]
        low = low.to(fm.device)
        mask_size = fm.mask_input_size
        if tuple(low.shape[-2:]) != mask_size:  # SAM: 1024 input, 256 low-res masks
            low = (F.interpolate(low, size=mask_size, mode="area") > 0.5).float()
        box_t = torch.as_tensor(
            boxes_to_model(np.asarray(boxes, dtype=np.float64), geometry),
            dtype=torch.float32, device=fm.device,
        )
        with torch.no_grad():
            sparse, dense = fm.sam.prompt_encoder(points=None, boxes=box_t, masks=None)
        features = torch.from_numpy(embedding.features.astype(np.float32))[None].to(fm.device)
        prepared.append(_Prepared(
            geometry=geometry,
            features=features,
            model_input=model_input,
            sparse=sparse,
            dense=dense,
            target_low=low,
            target=torch.from_numpy(target).to(fm.device),
        ))
    return prepared


def _usable(fm: SamFamilyModel, embedding: Embedding | None, image: np.ndarray,
            modality: str) -> bool:
    """A cached embedding is used when this FM's encoder made it from this image as given."""
    return (
        embedding is not None
        and embedding.fm_version in (fm.version, fm.embedding_version)
        and tuple(embedding.original_shape) == tuple(image.shape[:2])
        and embedding.input_size == fm.input_size
        and embedding.preprocessing in ("", modality)
    )


def _image_pe(fm: SamFamilyModel) -> torch.Tensor:
    with torch.no_grad():
        return fm.sam.prompt_encoder.get_dense_pe()


# --------------------------------------------------------------------------- LoRA


def _lora_config(rank: int, targets: list[str]):
    from peft import LoraConfig  # peft imports transformers: only pay for it when used

    return LoraConfig(
        r=rank, lora_alpha=LORA_ALPHA_PER_RANK * rank, lora_dropout=0.0,
        target_modules=targets, bias="none",
    )


def _lora_encoder(fm: SamFamilyModel, rank: int) -> torch.nn.Module:
    """A copy of the image encoder with trainable LoRA on its attention qkv; the rest frozen."""
    from peft import inject_adapter_in_model

    encoder = copy.deepcopy(fm.sam.image_encoder).eval()
    encoder.requires_grad_(False)
    try:
        inject_adapter_in_model(_lora_config(rank, list(LORA_TARGETS)), encoder, _ADAPTER)
    except ValueError as exc:
        raise InvalidInput(
            f"{fm.version}'s image encoder has no attention layer named "
            f"{' or '.join(LORA_TARGETS)} to adapt with LoRA; use method 'decoder'"
        ) from exc
    for name, param in encoder.named_parameters():
        param.requires_grad_("lora_" in name)
    return encoder.eval()


def _lora_state(encoder: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA matrices only, named as peft saves them (no adapter name)."""
    return {
        ENCODER_PREFIX + name.replace(f".{_ADAPTER}.", "."): p.detach().cpu().clone()
        for name, p in encoder.named_parameters()
        if "lora_" in name
    }


def _merge_lora(
    encoder: torch.nn.Module, lora_state: dict[str, torch.Tensor], base_version: str
) -> torch.nn.Module:
    """Rebuild the LoRA layers the state names, load them, and merge them into the weights."""
    from peft.tuners.lora import LoraModel

    a_keys = [k for k in lora_state if k.endswith(".lora_A.weight")]
    targets = sorted(k[: -len(".lora_A.weight")] for k in a_keys)
    ranks = {int(lora_state[k].shape[0]) for k in a_keys}
    if not targets or len(ranks) != 1 or len(lora_state) != 2 * len(targets):
        raise InvalidInput(
            "these LoRA weights are incomplete (each adapted layer needs lora_A and lora_B "
            "of one rank); fine-tune again"
        )
    try:
        wrapper = LoraModel(encoder, _lora_config(ranks.pop(), targets), _ADAPTER)
    except ValueError as exc:
        raise InvalidInput(
            f"the LoRA weights name layers that {base_version}'s encoder lacks ({exc}); "
            "apply them to the model they were fine-tuned from"
        ) from exc
    named = {
        k.replace(".lora_A.", f".lora_A.{_ADAPTER}.").replace(".lora_B.", f".lora_B.{_ADAPTER}."): v
        for k, v in lora_state.items()
    }
    result = encoder.load_state_dict(named, strict=False)
    wrong = [k for k in result.missing_keys if "lora_" in k] + list(result.unexpected_keys)
    if wrong:
        raise InvalidInput(
            f"the LoRA weights do not fit {base_version}'s encoder ({wrong[0]!r}); "
            "apply them to the model they were fine-tuned from"
        )
    return wrapper.merge_and_unload()


# --------------------------------------------------------------------------- metrics


def _decode(decoder, encoder, image_pe: torch.Tensor, item: _Prepared):  # noqa: ANN001, ANN202
    """One decoder pass for an image's prompts: (low-res logits, predicted IoU).

    With `encoder` (LoRA) the features are recomputed; otherwise the fixed embedding is used.
    """
    features = item.features if encoder is None else encoder(item.model_input)
    return decoder(image_embeddings=features, image_pe=image_pe,
                   sparse_prompt_embeddings=item.sparse, dense_prompt_embeddings=item.dense,
                   multimask_output=False)


def _iou(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(n, 1) IoU per prompt of boolean (n, 1, h, w) masks, as the decoder's IoU head predicts."""
    inter = (pred & target).flatten(1).sum(1).float()
    union = (pred | target).flatten(1).sum(1).float()
    return (inter / union.clamp(min=1.0))[:, None]


@torch.no_grad()
def _mean_dice(
    fm: SamFamilyModel,
    prepared: list[_Prepared],
    decoder: torch.nn.Module,
    encoder: torch.nn.Module | None,
    image_pe: torch.Tensor,
) -> float:
    """Mean Dice over all prompts, masks compared in original pixels as `segment` gives them."""
    scores = []
    for item in prepared:
        low_res, _ = _decode(decoder, encoder, image_pe, item)
        masks = unletterbox_logits(low_res, item.geometry)[:, 0] > fm.sam.mask_threshold
        inter = (masks & item.target).flatten(1).sum(1).float()
        sizes = masks.flatten(1).sum(1).float() + item.target.flatten(1).sum(1).float()
        scores.append(2.0 * inter / sizes.clamp(min=1.0))
    return float(torch.cat(scores).mean())
