"""Which validated labels train the task model, and its settings."""

from __future__ import annotations

import hashlib
import json

from pipeline.task.model import Sample, TaskModelConfig
from store.db import Store
from store.errors import InvalidInput
from store.labels import VALIDATED, heads
from store.models import Item, Project, Source, Split
from store.retraining import training_settings


def validated_items(store: Store, project_id: int) -> list[tuple[Item, str]]:
    """Train-split items whose latest review is an accept or a correction, with its mask.

    Holdout and test items are never trained on; rejected items are left out.
    """
    with store.session() as s:
        rows = heads(s, Item.project_id == project_id, Item.split == Split.train)
    return [(item, label.mask_blob) for item, label in rows
            if label is not None and label.kind in VALIDATED]


MIN_TRAINING_LABELS = 4


def config_for(project: Project, channels: int, overrides: dict | None = None) -> TaskModelConfig:
    settings = {**training_settings(project), **(overrides or {})}
    return TaskModelConfig(
        class_values=tuple(int(c["value"]) for c in project.label_classes),
        architecture=str(settings["architecture"]), in_channels=channels,
        image_size=int(settings["image_size"]), epochs=int(settings["epochs"]),
        synthetic_weight=float(settings["synthetic_weight"]),
        **{k: overrides[k] for k in ("learning_rate", "batch_size", "seed", "augment")
           if overrides and k in overrides})


def training_set_hash(pairs: list[tuple[int, str]], cfg: TaskModelConfig) -> str:
    blob = json.dumps({"pairs": sorted(pairs), "config": cfg.to_dict()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def training_set(store: Store, project: Project, overrides: dict | None = None
                 ) -> tuple[list[Sample], list[tuple[Item, str]], TaskModelConfig]:
    """The train split's validated labels as weighted samples, and the training config."""
    pairs = validated_items(store, project.id)
    if len(pairs) < MIN_TRAINING_LABELS:
        raise InvalidInput(f"{len(pairs)} validated label(s) in the train split; training needs "
                           f"at least {MIN_TRAINING_LABELS}: review more items first")
    first = store.blobs.get_array(pairs[0][0].blob)
    cfg = config_for(project, 3 if first.ndim == 3 else 1, overrides)
    samples = [Sample(store.blobs.get_array(item.blob), item.modality,
                      store.blobs.get_array(mask_blob),
                      cfg.synthetic_weight if item.source == Source.synthetic else 1.0)
               for item, mask_blob in pairs]
    return samples, pairs, cfg
