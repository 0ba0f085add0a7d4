"""Active-learning scores in the store: queueing the `score` job, recording a job's scores
(the ItemScore rows and each item's queue priority), why an item comes next, and a
project's review-order strategy."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from sqlmodel import Session, select

from store import audit
from store.auth import require
from store.db import Store
from store.errors import InvalidInput, NotFound
from store.jobs import enqueue
from store.models import Item, ItemScore, Job, JobStatus, Project, Role

# Rows per write transaction while recording a pool's scores: each one holds the write lock
# for milliseconds, so a clinician's accept never waits behind a whole pool.
WRITE_CHUNK = 200


def queued_score_job(session: Session, project_id: int) -> Job | None:
    return session.exec(select(Job).where(Job.project_id == project_id, Job.kind == "score",
                                          Job.status == JobStatus.queued)
                        .order_by(Job.id).limit(1)).first()


def queue_score(session: Session, project_id: int, actor: str, reason: str) -> Job:
    """One `score` job for the project: the queued one if there is one (it will read the
    newest model and strategy when it runs; its payload gathers the reasons), else a new one.
    A running score job does not count: what changed since it started deserves a new run."""
    queued = queued_score_job(session, project_id)
    if queued is not None:
        reasons = list(queued.payload.get("reasons", []))
        if reason not in reasons:
            queued.payload = {**queued.payload, "reasons": reasons + [reason]}
            session.add(queued)
        return queued
    return enqueue(session, "score", actor, project_id, reasons=[reason])


def record_scores(store: Store, project_id: int, job_id: int | None,
                  model_version_id: int | None, strategy: str, item_ids: Sequence[int],
                  scores: Sequence[float], order: Sequence[int],
                  reasons: Sequence[str]) -> int:
    """Append one ItemScore per item and set each item's queue priority from `order`.

    `scores` are per item, in `item_ids` order; `order` lists indices into `item_ids`, the
    item to ask first at position 0, and `reasons` go with `order` (reasons[k] says why
    order[k] comes k-th), as pipeline/active/strategies.py `rank` returns them. The first in
    order gets the highest priority (len(order)); an item left out of `order` keeps its
    priority (its row has rank -1). Written in short transactions of WRITE_CHUNK items, so
    a clinician's accept never waits behind a whole pool. Returns the rows written.
    """
    n = len(item_ids)
    positions = [int(i) for i in order]
    if len(scores) != n:
        raise InvalidInput(f"{n} items but {len(scores)} scores")
    if len(reasons) != len(positions):
        raise InvalidInput(f"{len(positions)} ranked items but {len(reasons)} reasons")
    if len(set(positions)) != len(positions) or any(not 0 <= i < n for i in positions):
        raise InvalidInput("the order must list distinct positions of the given items")
    rank_of = {i: r for r, i in enumerate(positions)}
    written = 0
    for start in range(0, n, WRITE_CHUNK):
        with store.session(immediate=True) as s:
            for pos in range(start, min(start + WRITE_CHUNK, n)):
                item = s.get(Item, int(item_ids[pos]))
                if item is None or item.project_id != project_id:
                    continue  # deleted meanwhile (or not this project's): nothing to order
                rank = rank_of.get(pos)
                s.add(ItemScore(item_id=item.id, project_id=project_id,
                                model_version_id=model_version_id, strategy=strategy,
                                score=float(scores[pos]), rank=-1 if rank is None else rank,
                                reason="" if rank is None else str(reasons[rank]),
                                job_id=job_id))
                if rank is not None:
                    item.priority = float(len(positions) - rank)
                    s.add(item)
                written += 1
    return written


def latest_score(session: Session, item_id: int) -> ItemScore | None:
    return session.exec(select(ItemScore).where(ItemScore.item_id == item_id)
                        .order_by(ItemScore.created_at.desc(), ItemScore.id.desc())
                        .limit(1)).first()


def latest_reason(session: Session, item_id: int) -> str | None:
    """Why the queue serves this item now (its newest score's reason), or None if unscored."""
    row = latest_score(session, item_id)
    return row.reason if row is not None and row.reason else None


def set_strategy(store: Store, user_id: int, project_id: int, name: str | None,
                 known: Collection[str] | None = None) -> Project:
    """A curator picks the project's review-order strategy (None: the default) and the
    queue is re-scored with it. `known`: the strategy names the caller offers (the store
    does not import the pipeline that defines them)."""
    if name is not None and known is not None and name not in known:
        raise InvalidInput(f"unknown review-order strategy {name!r}: pick one of "
                           f"{', '.join(known)}")
    with store.session(immediate=True) as s:
        user = require(s, user_id, Role.curator)
        project = s.get(Project, project_id)
        if project is None:
            raise NotFound(f"project {project_id} does not exist")
        before = project.strategy
        project.strategy = name
        s.add(project)
        audit.record(s, user.name, "project.strategy", "project", project.id,
                     strategy=name, before=before)
        if before != name:
            queue_score(s, project.id, user.name, f"strategy set to {name or 'the default'}")
        s.flush()
        s.expunge(project)
        return project
