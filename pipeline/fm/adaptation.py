"""Adapting the FM to a project's validated labels, as a registered FM version in the store."""

from __future__ import annotations

from collections.abc import Callable

from pipeline.fm import FoundationModel, load_foundation_model
from pipeline.fm.adapt import (
    AdaptSample,
    apply_adaptation,
    finetune,
    state_from_bytes,
    state_to_bytes,
)
from pipeline.fm.proposals import fm_modality, item_embedding
from pipeline.task.training_set import validated_items
from store.db import Store
from store.errors import InvalidInput, NotFound
from store.models import ModelVersion
from store.registry import ensure_model_version


def adapt_foundation_model(
    store: Store, fm: FoundationModel, project_id: int, method: str = "decoder",
    epochs: int = 5, actor: str = "worker",
    progress: Callable[[float, str], None] | None = None, **options,
) -> ModelVersion:
    """Fine-tune `fm` on the project's validated labels; register and return the new version."""
    pairs = validated_items(store, project_id)
    if not pairs:
        raise InvalidInput("no validated labels in the train split yet: accept or correct "
                           "some proposals first")
    samples = []
    for item, mask_blob in pairs:
        image = store.blobs.get_array(item.blob)
        samples.append(AdaptSample(image=image, modality=fm_modality(item, image),
                                   label_map=store.blobs.get_array(mask_blob),
                                   embedding=item_embedding(store, fm, item)))
    result = finetune(fm, samples, method=method, epochs=epochs, progress=progress, **options)
    adapted = apply_adaptation(fm, result.state, method)
    sha, _ = store.blobs.put_bytes(state_to_bytes(result.state))
    with store.session(immediate=True) as s:
        base = ensure_model_version(s, "fm", fm.version, actor, config={
            "kind": fm.kind, "checkpoint_sha256": fm.checkpoint_sha256})
        mv = ensure_model_version(
            s, "fm", adapted.version, actor, project_id=project_id, blob=sha,
            parent_id=base.id,
            config={"kind": fm.kind, "method": method, "base_version": fm.version,
                    "embedding_version": adapted.embedding_version, **result.config},
        )
        # The same data and settings give the same weights (fixed seeds), so the same version.
        mv.metrics = mv.metrics or {"train_dice_before": result.dice_before,
                                    "train_dice_after": result.dice_after,
                                    "losses": result.losses}
        s.add(mv)
        return mv


def load_fm_version(store: Store, model_version_id: int) -> FoundationModel:
    """The configured base FM with a registered adaptation applied."""
    with store.session() as s:
        mv = s.get(ModelVersion, model_version_id)
    if mv is None or mv.family != "fm":
        raise NotFound(f"no FM version {model_version_id}")
    base = load_foundation_model(kind=mv.config.get("kind"))
    if mv.blob is None:
        return base
    if base.version != mv.config.get("base_version"):
        raise InvalidInput(f"FM version {mv.name} adapts {mv.config.get('base_version')}, but "
                           f"the configured FM is {base.version}: configure that base again")
    return apply_adaptation(base, state_from_bytes(store.blobs.get_bytes(mv.blob)),
                            mv.config["method"])
