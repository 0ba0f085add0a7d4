"""The job table's state changes: enqueue, claim (atomically), heartbeat, finish."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import or_
from sqlmodel import Session, select

from store import audit
from store.db import Store, is_sqlite
from store.models import Job, JobStatus, utcnow


def enqueue(session: Session, kind: str, actor: str, project_id: int | None = None,
            **payload: object) -> Job:
    job = Job(kind=kind, project_id=project_id, payload=dict(payload), created_by=actor)
    session.add(job)
    session.flush()
    audit.record(session, actor, "job.enqueue", "job", job.id, kind=kind)
    return job


def claim_next(store: Store, worker: str, kinds: set[str] | None = None) -> Job | None:
    """Take the oldest runnable job for this worker, or None; two workers never get the same.

    SQLite: BEGIN IMMEDIATE serialises claimers. PostgreSQL: FOR UPDATE SKIP LOCKED lets
    claimers pass each other's locked rows.
    """
    now = utcnow()
    with store.session(immediate=True) as s:
        q = (select(Job).where(Job.status == JobStatus.queued,
                               or_(Job.not_before.is_(None), Job.not_before <= now))
             .order_by(Job.created_at, Job.id).limit(1))
        if kinds:
            q = q.where(Job.kind.in_(sorted(kinds)))
        if not is_sqlite(store.engine):
            q = q.with_for_update(skip_locked=True)
        job = s.exec(q).first()
        if job is None:
            return None
        job.status = JobStatus.running
        job.worker = worker
        job.attempts += 1
        job.started_at = job.heartbeat_at = now
        s.add(job)
        audit.record(s, worker, "job.claim", "job", job.id, kind=job.kind, attempt=job.attempts)
        return job


def heartbeat(store: Store, job_id: int, progress: float | None = None,
              message: str | None = None) -> bool:
    """Record liveness and progress; returns False when a cancel was requested."""
    with store.session() as s:
        job = s.get(Job, job_id)
        job.heartbeat_at = utcnow()
        if progress is not None:
            job.progress = float(max(0.0, min(100.0, progress)))
        if message is not None:
            job.message = message
            job.log_tail = (job.log_tail + message + "\n")[-4000:]
        s.add(job)
        return not job.cancel_requested


def finish(store: Store, job_id: int, status: JobStatus, error: str | None = None,
           retry_after_s: float | None = None) -> Job:
    """End a run: succeeded, cancelled, failed, or back to the queue for a later retry."""
    with store.session() as s:
        job = s.get(Job, job_id)
        job.heartbeat_at = utcnow()
        if status == JobStatus.failed and retry_after_s is not None \
                and job.attempts < job.max_attempts:
            job.status = JobStatus.queued
            job.not_before = utcnow() + timedelta(seconds=retry_after_s)
        else:
            job.status = status
            job.finished_at = utcnow()
            if status == JobStatus.succeeded:
                job.progress = 100.0
        job.error = error
        s.add(job)
        audit.record(s, job.worker or "worker", f"job.{job.status.value}", "job", job.id,
                     kind=job.kind, error=error)
        return job
