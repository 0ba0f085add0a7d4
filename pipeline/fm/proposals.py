"""FM proposals for items: cached embeddings, prompts from a coarse or prior mask or a
clinician's box and clicks, and the resulting `proposal` label versions."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from pipeline.fm import (
    Embedding,
    FoundationModel,
    Segmentation,
    embedding_from_bytes,
    embedding_to_bytes,
    resolve_overlaps,
)
from pipeline.fm.multiclass import component_boxes
from pipeline.fm.predictor import DECODE_CHUNK
from store import embeddings, labels
from store.db import Store
from store.errors import InvalidInput, NotFound
from store.models import Item, Label, Project
from store.registry import ensure_model_version

# A coarse mask provider: the task model's prediction, a synthetic item's condition mask, or
# (benchmarks only) the ground truth. Returns a label map on the item's grid, or None.
CoarseMasks = Callable[[Item], np.ndarray | None]
BOX_MARGIN_PX = 2
# Specks below this size in a coarse mask are noise, not structures: no box (and no decoder
# pass) for them. On MNI152 tissue maps this cut boxes per slice from 11 to 8.
MIN_COMPONENT_PX = 8
# A weak task model's speckle became ~600 boxes a lung slice (110 s of decoding each), so
# the boxes per class are bounded (issue 9). Measured by `medloop bench propose --parts
# rules` on the shared radiomics slices (117; 17 lesions) and the demo's MNI152 tissue maps
# (51 slices, 2 classes, 438 structures of >= 8 px):
# - a component smaller than 5 % of its class's largest AND smaller than 0.025 % of the
#   image (65 px at 512 x 512, 16 px at 256 x 256) is speckle beside a finding: UNets
#   trained 1 and 2 epochs went from 9.9 to 2.7 and from 21.5 to 10.2 boxes a slice, keeping
#   17/17 and 16/17 of the lesions their masks touched; clean MNI152 maps kept 418 of 438
#   structures (99.97 % of their pixels). 0.05 % of the image kept 14/17 and 372/438;
#   0.01 % cut little (21.5 -> 17.5). 2 % or 10 % of the largest instead of 5 %: the same.
# - at most 16 boxes a class, largest first: speckle with no dominant finding (an untrained
#   UNet: 475 boxes a slice on average, 784 at most) is cut to 16; on the MNI152 maps it never
#   binds after the rule above (14 at most), where 8 would (397 of 438 kept).
MIN_FRACTION_OF_LARGEST = 0.05
MIN_FRACTION_OF_IMAGE = 2.5e-4
MAX_BOXES_PER_CLASS = 16


@dataclass(frozen=True)
class BoxRule:
    """Which connected components of a coarse mask get a box (see `kept_components`)."""

    min_pixels: int = MIN_COMPONENT_PX
    min_fraction_of_largest: float = MIN_FRACTION_OF_LARGEST
    min_fraction_of_image: float = MIN_FRACTION_OF_IMAGE
    max_boxes: int | None = MAX_BOXES_PER_CLASS


BOUNDED = BoxRule()
# One box per component of MIN_COMPONENT_PX or more: the rule before issue 9 (benchmarks).
UNBOUNDED = BoxRule(min_fraction_of_largest=0.0, min_fraction_of_image=0.0, max_boxes=None)


@dataclass
class Prompts:
    """The boxes for a coarse mask: all classes together, so one decoder pass takes them."""

    boxes: np.ndarray  # (n, 4) x0, y0, x1, y1
    classes: np.ndarray  # (n,) the class value each box prompts for
    components: int = 0  # components of the classes in the coarse mask, before the rule
    per_class: dict[int, int] = field(default_factory=dict)  # boxes per class value


def coarse_prompts(coarse: np.ndarray, class_values: Sequence[int], rule: BoxRule = BOUNDED,
                   margin_px: int = BOX_MARGIN_PX) -> Prompts:
    """One box per component the rule keeps, per class, largest first within a class."""
    boxes, classes, components, per_class = [], [], 0, {}
    for value in class_values:
        found, count = component_boxes(coarse, value, margin_px, rule.min_pixels,
                                       rule.min_fraction_of_largest,
                                       rule.min_fraction_of_image, rule.max_boxes)
        components += count
        if len(found):
            boxes.append(found)
            classes += [int(value)] * len(found)
            per_class[int(value)] = len(found)
    return Prompts(np.concatenate(boxes) if boxes else np.zeros((0, 4)),
                   np.asarray(classes, np.int64), components, per_class)


def fm_modality(item: Item, image: np.ndarray) -> str:
    """The FM's preprocessing for an item.

    CT uses percentile normalisation: on the shared lung1 lesion slices it gave mean Dice
    0.87 with ground-truth boxes, against 0.75 for the lung window and 0.67 for soft tissue
    (`medloop bench fm`).
    """
    if image.ndim == 3:
        return "RGB"
    return "CT:percentile" if item.modality.upper() == "CT" else item.modality.upper()


def item_embedding(store: Store, fm: FoundationModel, item: Item) -> Embedding:
    """The item's embedding for this FM: from the cache, or computed once and cached (fp16)."""
    version = fm.embedding_version  # a decoder-only adaptation keeps them
    with store.session() as s:
        blob = embeddings.find(s, item.id, version)
    if blob is not None:
        return embedding_from_bytes(store.blobs.get_bytes(blob))
    image = store.blobs.get_array(item.blob)
    emb = fm.embed(image, fm_modality(item, image))
    sha, _ = store.blobs.put_bytes(embedding_to_bytes(emb))
    with store.session(immediate=True) as s:
        embeddings.remember(s, item.id, version, sha)
    return emb


def segment_classes(
    fm: FoundationModel, emb: Embedding, coarse: np.ndarray, class_values: Sequence[int],
    margin_px: int = BOX_MARGIN_PX, rule: BoxRule = BOUNDED, prompts: Prompts | None = None,
    between: Callable[[int, int], object] | None = None,
) -> tuple[np.ndarray, float | None, int]:
    """(label map, mean predicted IoU, boxes used) from one box per kept component per class.

    A class absent from the coarse mask gets nothing: boxes are never invented. The boxes of
    all classes go through the decoder together, as many a pass as the FM decodes at once
    (its `decode_chunk`: memory stays bounded); between(done, total) runs after each pass (a
    job reports, or stops, there).
    """
    if prompts is None:
        prompts = coarse_prompts(coarse, class_values, rule, margin_px)
    n = len(prompts.boxes)
    if n == 0:
        return np.zeros(emb.original_shape, np.uint8), None, 0
    chunk = int(getattr(fm, "decode_chunk", DECODE_CHUNK))
    masks, ious = [], []
    for start in range(0, n, chunk):
        seg = fm.segment(emb, boxes=prompts.boxes[start:start + chunk])
        masks.append(seg.masks)
        ious.append(np.asarray(seg.iou, np.float64))
        if between is not None:
            between(min(start + chunk, n), n)
    all_masks, all_ious = np.concatenate(masks), np.concatenate(ious)
    per_class = {int(v): (all_masks[prompts.classes == v], all_ious[prompts.classes == v])
                 for v in np.unique(prompts.classes)}
    label_map = resolve_overlaps(per_class, shape=emb.original_shape)
    return label_map.astype(np.uint8), float(np.mean(all_ious)), n


def _record(store: Store, fm: FoundationModel, item: Item, label_map: np.ndarray,
            iou: float | None, prompts: str, actor: str) -> Label:
    sha, _ = store.blobs.put_array(label_map)
    with store.session(immediate=True) as s:
        mv = ensure_model_version(s, "fm", fm.version, actor, config={
            "kind": fm.kind, "checkpoint_sha256": fm.checkpoint_sha256})
        return labels.record_proposal(s, item.id, sha, mv.id, fm.version, iou, actor, prompts)


def propose_item(
    store: Store, fm: FoundationModel, item: Item, coarse: np.ndarray | None,
    class_values: Sequence[int], source: str, actor: str = "worker",
) -> Label | None:
    """Refine a coarse mask into a proposal label; None when it holds none of the classes."""
    if coarse is None or not np.isin(coarse, list(class_values)).any():
        return None
    if tuple(coarse.shape) != tuple(item.shape[:2]):
        raise InvalidInput(f"the {source} mask of item {item.id} has shape {coarse.shape}, "
                           f"the image {tuple(item.shape[:2])}")
    emb = item_embedding(store, fm, item)
    label_map, iou, n_boxes = segment_classes(fm, emb, coarse, class_values)
    return _record(store, fm, item, label_map, iou, f"{source}: {n_boxes} box(es)", actor)


def refine(
    store: Store, fm: FoundationModel, item: Item, box: Sequence[float],
    points: Sequence[Sequence[float]] | None = None, point_labels: Sequence[int] | None = None,
) -> Segmentation:
    """A clinician's box (x0, y0, x1, y1) and optional clicks on the cached embedding."""
    if "box" in fm.trained_prompts and box is None:
        raise InvalidInput(f"{fm.kind} needs a box first: draw a box around the structure, "
                           "then add clicks")
    emb = item_embedding(store, fm, item)
    pts = np.asarray(points, float).reshape(-1, 2) if points else None
    lbl = np.asarray(point_labels, int) if points else None
    return fm.segment(emb, boxes=np.asarray(box, float).reshape(1, 4), points=pts,
                      point_labels=lbl)


def propose_from_prompts(
    store: Store, fm: FoundationModel, item: Item, class_value: int, box: Sequence[float],
    points: Sequence[Sequence[float]] | None = None, point_labels: Sequence[int] | None = None,
    actor: str = "clinician",
) -> Label:
    """The FM's mask for a clinician's prompts, merged into the item's head, as a proposal."""
    seg = refine(store, fm, item, box, points, point_labels)
    with store.session() as s:
        current = labels.head(s, item.id)
    base = store.blobs.get_array(current.mask_blob) if current and current.mask_blob is not None \
        else np.zeros(item.shape[:2], np.uint8)
    label_map = base.copy()
    label_map[label_map == class_value] = 0
    label_map[seg.masks[0]] = class_value
    return _record(store, fm, item, label_map, float(seg.iou[0]),
                   f"clinician: box + {len(points or [])} click(s)", actor)


def prior_masks(store: Store) -> CoarseMasks:
    """Synthetic items' condition masks (provenance['condition_mask_blob']) as prompts."""
    def coarse(item: Item) -> np.ndarray | None:
        blob = (item.provenance or {}).get("condition_mask_blob")
        return store.blobs.get_array(blob) if blob else None
    return coarse


@dataclass
class BatchResult:
    proposed: int = 0
    skipped: int = 0  # no coarse mask, or none of the project's classes in it
    failed: int = 0
    seconds: float = 0.0
    errors: list[str] | None = None


def propose_batch(
    store: Store, fm: FoundationModel, item_ids: Sequence[int], coarse_for: CoarseMasks,
    source: str, actor: str = "worker",
    progress: Callable[[int, int, str], object] | None = None,
) -> BatchResult:
    """Proposals for many items; one bad item is reported and the batch goes on."""
    result = BatchResult(errors=[])
    t0 = time.perf_counter()
    classes: dict[int, list[int]] = {}
    for i, item_id in enumerate(item_ids):
        if progress:
            progress(i, len(item_ids), f"item {item_id}")
        with store.session() as s:
            item = s.get(Item, item_id)
            if item is None:
                raise NotFound(f"item {item_id} does not exist")
            if item.project_id not in classes:
                project = s.get(Project, item.project_id)
                classes[item.project_id] = [int(c["value"]) for c in project.label_classes]
        try:
            label = propose_item(store, fm, item, coarse_for(item), classes[item.project_id],
                                 source, actor)
        except (InvalidInput, NotFound) as exc:
            result.failed += 1
            result.errors.append(f"item {item_id}: {exc}")
            continue
        if label is None:
            result.skipped += 1
        else:
            result.proposed += 1
    result.seconds = time.perf_counter() - t0
    if progress:
        progress(len(item_ids), len(item_ids), "done")
    return result
