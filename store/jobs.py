"""The job table's state changes: enqueue, claim (atomically, highest priority first),
heartbeat, checkpoint, finish, cancel, retry, yielding to a waiting job, and requeueing the
jobs of a worker that died."""

from __future__ import annotations

import os
from datetime import timedelta

from sqlalchemy import or_
from sqlmodel import Session, select

from store import audit
from store.auth import require
from store.db import Store, is_sqlite
from store.errors import Conflict, InvalidInput, NotFound
from store.models import Job, JobStatus, Role, utcnow

ACTIVE = (JobStatus.queued, JobStatus.running)
# Kinds of which a project has at most one queued or running job (`score` too when retried:
# store/scores.py queue_score keeps one queued score job per project).
SINGLE_PER_PROJECT = ("train", "propose", "score")
LOG_TAIL_CHARS = 4000
# Higher is claimed first. A person waits for an export (a curator's download) and for an
# evaluation (the promotion after Retrain now); proposing for the whole pool and training
# are long background work, and yield to these between items or epochs
# (JobContext.yield_if_waiting). A propagation (the FM following a slice a clinician just
# validated through its volume) comes next: the clinician's next slice waits for it. Ordering
# the review queue (`score`) comes before the long work: with a task model it takes seconds,
# and the cold start's embeddings are the ones propose needs anyway. Kinds not named here: 0.
PRIORITY = {"export": 20, "propagate": 15, "evaluate": 10, "score": 5, "propose": 0, "train": 0}


def _log(job: Job, line: str, as_message: bool = True) -> None:
    """Append a line to the job's log tail (its newest characters kept); by default it is
    also the job's current message."""
    job.log_tail = (job.log_tail + line + "\n")[-LOG_TAIL_CHARS:]
    if as_message:
        job.message = line


def heartbeat_timeout_s() -> float:
    """A running job whose worker has not beaten for this long is taken to be orphaned.

    Workers beat every few seconds from a separate thread, so a long training step does
    not look like a dead worker.
    """
    return float(os.environ.get("MEDLOOP_JOB_HEARTBEAT_TIMEOUT_S", "60"))


def enqueue(session: Session, kind: str, actor: str, project_id: int | None = None,
            **payload: object) -> Job:
    job = Job(kind=kind, project_id=project_id, payload=dict(payload), created_by=actor,
              priority=PRIORITY.get(kind, 0))
    session.add(job)
    session.flush()
    audit.record(session, actor, "job.enqueue", "job", job.id, kind=kind)
    return job


def claim_next(store: Store, worker: str, kinds: set[str] | None = None) -> Job | None:
    """Take the runnable job of highest priority (the oldest among equals) for this worker,
    or None; two workers never get the same.

    SQLite: BEGIN IMMEDIATE serialises claimers. PostgreSQL: FOR UPDATE SKIP LOCKED lets
    claimers pass each other's locked rows.
    """
    now = utcnow()
    with store.session(immediate=True) as s:
        requeue_orphans(s, worker, now)
        q = (select(Job).where(Job.status == JobStatus.queued,
                               or_(Job.not_before.is_(None), Job.not_before <= now))
             .order_by(Job.priority.desc(), Job.created_at, Job.id).limit(1))
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


class JobLost(Exception):
    """The job was taken from this worker (requeued as orphaned and claimed elsewhere)."""


def heartbeat(store: Store, job_id: int, progress: float | None = None,
              message: str | None = None, worker: str | None = None,
              log: bool = True) -> bool:
    """Record liveness and progress; returns False when a cancel was requested.

    The message becomes the job's current message and, with `log`, a line of its log tail
    (per-item progress is not logged: it would push the lines that matter out of the tail).
    With `worker`, raises JobLost when the job is no longer this worker's to run.
    """
    with store.session(immediate=True) as s:
        job = s.get(Job, job_id)
        if worker is not None and (job.worker != worker or job.status != JobStatus.running):
            raise JobLost(f"job {job_id} is now {job.status.value} on {job.worker}")
        job.heartbeat_at = utcnow()
        if progress is not None:
            job.progress = float(max(0.0, min(100.0, progress)))
        if message is not None and log:
            _log(job, message)
        elif message is not None:
            job.message = message
        s.add(job)
        return not job.cancel_requested


def finish(store: Store, job_id: int, status: JobStatus, error: str | None = None,
           retry_after_s: float | None = None) -> Job:
    """End a run: succeeded, cancelled, failed, or back to the queue for a later retry."""
    with store.session(immediate=True) as s:
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


def requeue_orphans(session: Session, actor: str, now=None) -> list[int]:
    """Running jobs whose worker stopped beating go back to the queue (their checkpoint
    kept, so training resumes); after max_attempts they fail instead."""
    now = now or utcnow()
    cutoff = now - timedelta(seconds=heartbeat_timeout_s())
    q = select(Job).where(Job.status == JobStatus.running, Job.heartbeat_at < cutoff)
    if not is_sqlite(session.get_bind()):
        q = q.with_for_update(skip_locked=True)
    ids = []
    for job in session.exec(q).all():
        note = f"worker {job.worker} stopped responding (no heartbeat since " \
               f"{job.heartbeat_at:%H:%M:%S} UTC)"
        if job.cancel_requested:
            job.status, job.finished_at = JobStatus.cancelled, now
        elif job.attempts >= job.max_attempts:
            job.status, job.finished_at = JobStatus.failed, now
            job.error = f"{note} on each of {job.attempts} attempts: check the worker's " \
                        "memory and logs, then Retry"
        else:
            job.status = JobStatus.queued
            note += "; requeued" + (" to resume from its checkpoint" if job.checkpoint else "")
        _log(job, note)
        session.add(job)
        audit.record(session, actor, "job.orphaned", "job", job.id, kind=job.kind,
                     worker=job.worker, status=job.status.value)
        ids.append(job.id)
    return ids


def save_checkpoint(store: Store, job_id: int, blob: str, message: str | None = None) -> None:
    """Point the job at its newest checkpoint blob (written to the blob store first)."""
    with store.session(immediate=True) as s:
        job = s.get(Job, job_id)
        job.checkpoint = blob
        job.heartbeat_at = utcnow()
        if message:
            _log(job, message)
        s.add(job)


def interrupt(store: Store, job_id: int, message: str,
              yielded_to: int | None = None) -> Job:
    """The job goes back to the queue, the attempt not counted against it: the worker is
    shutting down, or the job yields to the waiting job `yielded_to` (it resumes from its
    checkpoint once that one is claimed)."""
    with store.session(immediate=True) as s:
        job = s.get(Job, job_id)
        job.status = JobStatus.queued
        job.attempts = max(0, job.attempts - 1)
        job.heartbeat_at = utcnow()
        _log(job, message)
        s.add(job)
        if yielded_to is None:
            audit.record(s, job.worker or "worker", "job.interrupted", "job", job.id,
                         kind=job.kind)
        else:
            audit.record(s, job.worker or "worker", "job.yielded", "job", job.id,
                         kind=job.kind, to_job=yielded_to)
        return job


def waiting_above(session: Session, priority: int, waited_s: float,
                  kinds: set[str] | None = None) -> Job | None:
    """The queued, runnable job of priority above `priority` that has waited longest, if
    it has waited more than `waited_s` (runnable that long: an idle worker would have
    claimed it by then); None otherwise."""
    cutoff = utcnow() - timedelta(seconds=waited_s)
    q = (select(Job).where(Job.status == JobStatus.queued, Job.priority > priority,
                           Job.created_at <= cutoff,
                           or_(Job.not_before.is_(None), Job.not_before <= cutoff))
         .order_by(Job.priority.desc(), Job.created_at, Job.id).limit(1))
    if kinds:
        q = q.where(Job.kind.in_(sorted(kinds)))
    return session.exec(q).first()


def _get(session: Session, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound(f"job {job_id} does not exist")
    return job


def request_cancel(session: Session, job_id: int, user_id: int) -> Job:
    """A queued job is cancelled now; a running one stops at its next progress report."""
    actor = require(session, user_id, Role.curator).name
    job = _get(session, job_id)
    if job.status not in ACTIVE:
        raise Conflict(f"job {job_id} is already {job.status.value}")
    if job.status == JobStatus.queued:
        job.status, job.finished_at = JobStatus.cancelled, utcnow()
    else:
        job.cancel_requested = True
    session.add(job)
    audit.record(session, actor, "job.cancel", "job", job.id, kind=job.kind)
    return job


def retry(session: Session, job_id: int, user_id: int) -> Job:
    """A failed or cancelled job back in the queue, with fresh attempts; a training job
    keeps its checkpoint and resumes from it."""
    actor = require(session, user_id, Role.curator).name
    job = _get(session, job_id)
    if job.status not in (JobStatus.failed, JobStatus.cancelled):
        raise InvalidInput(f"job {job_id} is {job.status.value}: only failed or cancelled "
                           "jobs can be retried")
    if job.project_id is not None and job.kind in SINGLE_PER_PROJECT:
        other = active_job(session, job.project_id, job.kind)
        if other is not None:
            raise Conflict(f"{job.kind} job {other.id} is already {other.status.value} for "
                           "this project")
    job.status = JobStatus.queued
    job.attempts = 0
    job.error = None
    job.cancel_requested = False
    job.not_before = None
    job.finished_at = None
    _log(job, f"retried by {actor}", as_message=False)
    session.add(job)
    audit.record(session, actor, "job.retry", "job", job.id, kind=job.kind)
    return job


def active_job(session: Session, project_id: int, kind: str) -> Job | None:
    return session.exec(select(Job).where(Job.project_id == project_id, Job.kind == kind,
                                          Job.status.in_(ACTIVE))
                        .order_by(Job.id).limit(1)).first()


def recent(session: Session, limit: int = 100, project_id: int | None = None) -> list[Job]:
    q = select(Job).order_by(Job.id.desc()).limit(limit)
    if project_id is not None:
        q = q.where(Job.project_id == project_id)
    return list(session.exec(q).all())


def queue_refresh(session: Session, project_id: int, model_version_id: int, actor: str) -> Job:
    """Fresh proposals for the unreviewed pool from a new champion: one `propose` job, the
    queued one (if any) pointed at the newest champion."""
    queued = active_job(session, project_id, "propose")
    if queued is not None and queued.status == JobStatus.queued:
        queued.payload = {**queued.payload, "model_version_id": model_version_id}
        session.add(queued)
        return queued
    return enqueue(session, "propose", actor, project_id, model_version_id=model_version_id)


def queue_export(session: Session, user_id: int, project_id: int) -> Job:
    """A curator's request for the validated dataset as a zip (the `export` job)."""
    actor = require(session, user_id, Role.curator).name
    return enqueue(session, "export", actor, project_id)
