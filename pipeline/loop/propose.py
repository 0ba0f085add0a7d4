"""The `propose` job: fresh proposals for the unreviewed pool from the champion task model.

For each unreviewed item the task model gives a coarse mask; where it finds a structure the
FM refines it (one box per component per class); where it finds nothing, its empty mask is
the proposal ("nothing found"), so no stale proposal of an older model stays on top.
Items a clinician holds a lease on are left alone; an unchanged proposal is not re-recorded.
"""

from __future__ import annotations

import json

import numpy as np
from sqlalchemy import or_

from pipeline.fm import FoundationModel, try_load_foundation_model
from pipeline.fm.proposals import MIN_COMPONENT_PX, item_embedding, segment_classes
from pipeline.loop.context import JobContext
from pipeline.task.model import TaskModel
from store import labels, registry
from store.db import Store
from store.errors import InvalidInput
from store.models import Item, Job, LabelKind, ModelVersion, utcnow
from store.registry import ensure_model_version

BATCH = 8


def unreviewed_pool(store: Store, project_id: int) -> list[int]:
    """Items without a review decision and not leased now, in queue order."""
    now = utcnow()
    with store.session() as s:
        rows = labels.heads(s, Item.project_id == project_id,
                            or_(Item.leased_by.is_(None), Item.lease_expires_at < now),
                            order_by=(Item.priority.desc(), Item.id))
    return [item.id for item, h in rows if h is None or h.kind == LabelKind.proposal]


def _record(store: Store, item_id: int, label_map: np.ndarray, author: tuple[int, str],
            iou: float | None, prompts: str) -> bool:
    sha, _ = store.blobs.put_array(label_map.astype(np.uint8))
    with store.session(immediate=True) as s:
        item = s.get(Item, item_id)
        if item.leased_by is not None and item.lease_expires_at is not None \
                and item.lease_expires_at > utcnow():
            return False  # a clinician opened it meanwhile: leave their screen valid
        current = labels.head(s, item_id)
        if current is not None and current.kind != LabelKind.proposal:
            return False  # reviewed meanwhile
        if current is not None and current.mask_blob == sha:
            return False
        labels.record_proposal(s, item_id, sha, author[0], author[1], iou, "worker", prompts)
        return True


def refresh_proposals(store: Store, job: Job, ctx: JobContext) -> dict:
    project = ctx.project()
    with store.session() as s:
        mv_id = job.payload.get("model_version_id")
        mv = s.get(ModelVersion, mv_id) if mv_id else registry.champion(s, job.project_id)
        if mv is None or mv.blob is None:
            raise InvalidInput("there is no task model to propose with yet: train one "
                               "(Retrain now on the Training page)")
        task_author = (mv.id, mv.name)
        values = [int(c["value"]) for c in project.label_classes]
    model = TaskModel.from_bytes(store.blobs.get_bytes(mv.blob))
    fm, problem = try_load_foundation_model()
    fm_author = None
    if fm is not None:
        with store.session(immediate=True) as s:
            fmv = ensure_model_version(s, "fm", fm.version, "worker", config={
                "kind": fm.kind, "checkpoint_sha256": fm.checkpoint_sha256})
            fm_author = (fmv.id, fm.version)
    else:
        ctx.report(0, f"FM unavailable ({problem}); proposing the task model's masks as they are")
    saved = json.loads(ctx.load_checkpoint() or b"{}")
    pool = saved.get("pool") or unreviewed_pool(store, job.project_id)
    counts = saved.get("counts") or {"refined": 0, "task": 0, "empty": 0, "unchanged": 0}
    start = int(saved.get("done", 0))
    ctx.report(1, f"{len(pool) - start} unreviewed item(s) to propose for with {mv.name}")
    for at in range(start, len(pool), BATCH):
        ids = pool[at:at + BATCH]
        with store.session() as s:
            items = [s.get(Item, i) for i in ids]
        images = [store.blobs.get_array(i.blob) for i in items]
        coarse = model.predict(images, [i.modality for i in items])
        for item, mask in zip(items, coarse, strict=True):
            found = any((mask == v).sum() >= MIN_COMPONENT_PX for v in values)
            if found and fm is not None:
                label_map, iou, n = _refine(store, fm, item, mask, values)
                changed = _record(store, item.id, label_map, fm_author, iou,
                                  f"{mv.name}: {n} box(es)")
                kind = "refined"
            else:
                changed = _record(store, item.id, mask, task_author, None, mv.name)
                kind = "task" if found else "empty"
            counts[kind if changed else "unchanged"] += 1
        done = min(at + BATCH, len(pool))
        ctx.save_checkpoint(json.dumps({"pool": pool, "done": done, "counts": counts}).encode())
        ctx.report(1 + 98 * done / max(len(pool), 1), f"{done}/{len(pool)} items")
        ctx.stop_if_asked(f"worker stopping: {done}/{len(pool)} items done; queued to go on")
    ctx.report(100, f"{counts['refined']} FM-refined, {counts['task']} task-model, "
                    f"{counts['empty']} empty, {counts['unchanged']} unchanged proposals "
                    f"({len(pool)} items)")
    return counts


def _refine(store: Store, fm: FoundationModel, item: Item, coarse: np.ndarray,
            values: list[int]) -> tuple[np.ndarray, float | None, int]:
    emb = item_embedding(store, fm, item)
    return segment_classes(fm, emb, coarse, values)
