"""The `propose` job: fresh proposals for the unreviewed pool from the champion task model.

For each unreviewed item the task model gives a coarse mask; where it finds a structure the
FM refines it (one box per kept component per class, bounded: `pipeline.fm.proposals`),
credited to the FM version with the task model as its prompt; where it finds nothing, the
empty mask is the proposal ("nothing found"), so no stale proposal of an older model stays
on top. Items a clinician holds a lease on are left alone; an unchanged proposal is not
re-recorded.

The job reports per item and every second or so within one, checkpoints every few seconds
(and before it stops or yields), so a cancel acts within seconds, a stopped worker loses
seconds of work, and an export queued behind it waits for one item, not the pool.
"""

from __future__ import annotations

import json
import time

import numpy as np
from sqlalchemy import or_

from pipeline.fm import FoundationModel, try_load_foundation_model
from pipeline.fm.proposals import Prompts, coarse_prompts, item_embedding, segment_classes
from pipeline.loop.context import JobContext
from pipeline.task.model import TaskModel
from store import labels, registry
from store.db import Store
from store.errors import InvalidInput
from store.models import Item, Job, LabelKind, ModelVersion, utcnow
from store.registry import ensure_model_version
from store.scores import queue_score

BATCH = 8  # items through the task model at once
# Work lost to a killed worker is at most this much (plus the item in hand); each checkpoint
# is a small blob (the pool is stored once, apart).
CHECKPOINT_EVERY_S = 2.0
# A progress line in the job's log at most this often; the message shows every item.
LOG_EVERY_S = 30.0


def unreviewed_pool(store: Store, project_id: int) -> list[int]:
    """Items without a review decision and not leased now, in queue order."""
    now = utcnow()
    with store.session() as s:
        rows = labels.heads(s, Item.project_id == project_id,
                            or_(Item.leased_by.is_(None), Item.lease_expires_at < now),
                            order_by=(Item.priority.desc(), Item.id))
    return [item.id for item, h in rows if h is None or h.kind == LabelKind.proposal]


def _record(store: Store, item_id: int, label_map: np.ndarray, author: tuple[int, str],
            iou: float | None, prompts: str, prompt_model_id: int | None = None) -> bool:
    sha, _ = store.blobs.put_array(label_map.astype(np.uint8))
    with store.session(immediate=True) as s:
        item = s.get(Item, item_id)
        if item is None:
            return False  # deleted meanwhile
        if item.leased_by is not None and item.lease_expires_at is not None \
                and item.lease_expires_at > utcnow():
            return False  # a clinician opened it meanwhile: leave their screen valid
        current = labels.head(s, item_id)
        if current is not None and current.kind != LabelKind.proposal:
            return False  # reviewed meanwhile
        if current is not None and current.mask_blob == sha:
            return False
        labels.record_proposal(s, item_id, sha, author[0], author[1], iou, "worker", prompts,
                               prompt_model_id=prompt_model_id)
        return True


class _Progress:
    """Where the job is: items done, counts, and when it last checkpointed and logged."""

    def __init__(self, ctx: JobContext, pool_blob: str, total: int, done: int, counts: dict):
        self.ctx, self.pool_blob, self.total, self.done, self.counts = \
            ctx, pool_blob, total, done, counts
        self.saved = done
        self.saved_at = self.logged_at = time.monotonic()

    def percent(self, within: float = 0.0) -> float:
        return 1 + 98 * (self.done + within) / max(self.total, 1)

    def checkpoint(self) -> None:
        if self.saved == self.done:
            return
        self.ctx.save_checkpoint(json.dumps({"pool_blob": self.pool_blob, "done": self.done,
                                             "counts": self.counts}).encode())
        self.saved, self.saved_at = self.done, time.monotonic()

    def item_done(self, kind: str | None) -> None:
        """One more item done (kind None: it is gone from the store); checkpoint, report."""
        self.done += 1
        if kind is not None:
            self.counts[kind] += 1
        now = time.monotonic()
        if now - self.saved_at >= CHECKPOINT_EVERY_S or self.done == self.total:
            self.checkpoint()
        line = f"{self.done}/{self.total} items"
        if now - self.logged_at >= LOG_EVERY_S:
            self.logged_at = now
            self.ctx.report(self.percent(), line)
        else:  # an item with the FM takes a second or more: each one shows
            self.ctx.tick(self.percent(), line)

    def pause_points(self) -> None:
        where = f"{self.done}/{self.total} items done"
        self.ctx.stop_if_asked(f"worker stopping: {where}; queued to go on", self.checkpoint)
        self.ctx.yield_if_waiting(f"paused at {where}; queued to go on", self.checkpoint)


def _pool(store: Store, ctx: JobContext, project_id: int) -> tuple[list[int], str, int, dict]:
    """(pool, its blob, items done, counts): from the checkpoint, or a fresh pool."""
    saved = json.loads(ctx.load_checkpoint() or b"{}")
    counts = saved.get("counts") or {"refined": 0, "task": 0, "empty": 0, "unchanged": 0}
    if saved.get("pool_blob"):
        pool = json.loads(store.blobs.get_bytes(saved["pool_blob"]))
        return pool, saved["pool_blob"], int(saved.get("done", 0)), counts
    pool = saved.get("pool") or unreviewed_pool(store, project_id)  # or an older checkpoint
    sha, _ = store.blobs.put_bytes(json.dumps(pool).encode())
    return pool, sha, int(saved.get("done", 0)), counts


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
    pool, pool_blob, start, counts = _pool(store, ctx, job.project_id)
    at = _Progress(ctx, pool_blob, len(pool), start, counts)
    ctx.report(at.percent(), (f"resuming at item {start + 1}/{len(pool)}" if start else
                              f"{len(pool)} unreviewed item(s) to propose for")
               + f" with {mv.name}")
    for first in range(start, len(pool), BATCH):
        with store.session() as s:
            items = [i for i in (s.get(Item, i) for i in pool[first:first + BATCH])
                     if i is not None]
        coarse = dict(zip([i.id for i in items], model.predict(
            [store.blobs.get_array(i.blob) for i in items], [i.modality for i in items]),
            strict=True)) if items else {}
        found = {i.id: i for i in items}
        for item_id in pool[first:first + BATCH]:
            item = found.get(item_id)
            at.item_done(None if item is None else _propose_one(
                store, ctx, at, fm, fm_author, task_author, item, coarse[item_id], values))
            if at.done < at.total:  # after the last item there is nothing to go on with
                at.pause_points()
    at.checkpoint()
    with store.session(immediate=True) as s:  # the fresh proposals' pool, re-ordered
        queue_score(s, job.project_id, "worker", f"proposals refreshed by job {job.id}")
    ctx.report(100, f"{counts['refined']} FM-refined, {counts['task']} task-model, "
                    f"{counts['empty']} empty, {counts['unchanged']} unchanged proposals "
                    f"({len(pool)} items)")
    return counts


def _propose_one(store: Store, ctx: JobContext, at: _Progress, fm: FoundationModel | None,
                 fm_author: tuple[int, str] | None, task_author: tuple[int, str], item: Item,
                 mask: np.ndarray, values: list[int]) -> str:
    """Propose for one item; returns what it counts as (refined, task, empty, unchanged)."""
    prompts = coarse_prompts(mask, values)
    if len(prompts.boxes) == 0:  # nothing worth a box: nothing found
        changed = _record(store, item.id, np.zeros_like(mask), task_author, None,
                          f"{task_author[1]}: nothing found")
        return "empty" if changed else "unchanged"
    if fm is None:
        changed = _record(store, item.id, mask, task_author, None, task_author[1])
        return "task" if changed else "unchanged"
    line = f"{at.done}/{at.total} items (item {item.id}: {len(prompts.boxes)} box(es))"
    ctx.tick(at.percent(), line)
    emb = item_embedding(store, fm, item)

    def between(decoded: int, total: int) -> None:
        ctx.tick(at.percent(decoded / max(total, 1)), line)

    ctx.tick(at.percent(), line)
    label_map, iou, n = segment_classes(fm, emb, mask, values, prompts=prompts,
                                        between=between)
    changed = _record(store, item.id, label_map, fm_author, iou, _prompts_text(
        task_author[1], n, prompts), prompt_model_id=task_author[0])
    return "refined" if changed else "unchanged"


def _prompts_text(task: str, n: int, prompts: Prompts) -> str:
    left_out = prompts.components - n
    return f"{task}: {n} box(es)" + (f" ({left_out} small or surplus component(s) left out)"
                                     if left_out > 0 else "")
