"""Review-queue test data: the demo projects with proposals on the brain slices."""

from __future__ import annotations

import numpy as np
from sqlmodel import select

from pipeline.demo import BRAIN_PROJECT, DemoResult, create_demo
from store import labels
from store.db import Store
from store.models import Item, Project
from store.registry import ensure_model_version

TEST_FM = "test-fm-v1"


def brain_items(store: Store) -> list[Item]:
    """The brain project's items in queue order (priority, then id)."""
    with store.session() as s:
        project = s.exec(select(Project).where(Project.name == BRAIN_PROJECT)).one()
        return list(s.exec(select(Item).where(Item.project_id == project.id)
                           .order_by(Item.priority.desc(), Item.id)).all())


def _mid_brain_first(store: Store) -> None:
    """Priorities that put the slices with most brain first (active learning's job later)."""
    with store.session(immediate=True) as s:
        project = s.exec(select(Project).where(Project.name == BRAIN_PROJECT)).one()
        items = s.exec(select(Item).where(Item.project_id == project.id)).all()
        mid = (min(i.slice_index for i in items) + max(i.slice_index for i in items)) / 2
        for item in items:
            item.priority = -abs(item.slice_index - mid)
            s.add(item)


def demo_with_proposals(store: Store, fm=None, with_fm: int = 0) -> DemoResult:
    """The demo with mid-brain slices first in the queue and a proposal on every brain
    slice: by the real FM (boxes from the ground truth) on the first `with_fm` items, which
    also caches their embeddings; on the others the ground truth with its outer ring of
    white matter removed, as "test-fm-v1"."""
    demo = create_demo(store)
    _mid_brain_first(store)
    items = brain_items(store)
    if with_fm:
        from pipeline.demo import TISSUE_CLASSES
        from pipeline.fm.proposals import propose_item

        values = [c["value"] for c in TISSUE_CLASSES]
        for item in items[:with_fm]:
            with store.session() as s:
                gt = store.blobs.get_array(labels.ground_truth(s, item.id).mask_blob)
            propose_item(store, fm, item, gt, values, "ground truth", actor="test")
    with store.session(immediate=True) as s:
        mv = ensure_model_version(s, "fm", TEST_FM, "test")
        for item in items[with_fm:]:
            gt = store.blobs.get_array(labels.ground_truth(s, item.id).mask_blob)
            proposal = gt.copy()
            ring = (gt == 2) & ~_eroded(gt == 2)
            proposal[ring] = 0
            sha, _ = store.blobs.put_array(proposal.astype(np.uint8))
            labels.record_proposal(s, item.id, sha, mv.id, TEST_FM, 0.8, "test", "test")
    return demo


def _eroded(m: np.ndarray) -> np.ndarray:
    out = m.copy()
    out[1:, :] &= m[:-1, :]
    out[:-1, :] &= m[1:, :]
    out[:, 1:] &= m[:, :-1]
    out[:, :-1] &= m[:, 1:]
    return out
