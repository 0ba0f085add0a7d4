"""`medloop worker`: a separate process that claims jobs from the store and runs them.

Handlers register per job kind (`pipeline/handlers.py`). While a job runs, a thread beats
its heartbeat, so a worker that dies (killed, out of memory, machine gone) is noticed by
the others, which requeue the job; a training job then resumes from its last checkpoint.
SIGTERM/SIGINT lets the job in hand finish or checkpoint, then the worker exits.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from collections.abc import Callable

from store.db import Store
from store.errors import MedloopError, NotFound
from store.jobs import (
    JobLost,
    claim_next,
    finish,
    heartbeat,
    heartbeat_timeout_s,
    interrupt,
    save_checkpoint,
)
from store.models import Job, JobStatus, Project

log = logging.getLogger("medloop.worker")


class Cancelled(Exception):
    """A curator cancelled the job."""


class Interrupted(Exception):
    """The worker is shutting down; the job checkpointed (or has nothing to lose)."""


class JobContext:
    """What a handler gets besides the store and the job: progress, cancel, checkpoints."""

    def __init__(self, store: Store, job: Job, worker: str, stop: threading.Event):
        self.store, self.job, self.worker, self._stop = store, job, worker, stop

    def report(self, progress: float, message: str | None = None) -> None:
        """Progress (0-100) and a log line; raises Cancelled once a cancel was requested."""
        if not heartbeat(self.store, self.job.id, progress, message, worker=self.worker):
            raise Cancelled()

    def project(self) -> Project:
        """The job's project; NotFound (failing the job) when it names none."""
        with self.store.session() as s:
            project = s.get(Project, self.job.project_id) \
                if self.job.project_id is not None else None
        if project is None:
            raise NotFound(f"job {self.job.id} names no existing project")
        return project

    def stop_if_asked(self, message: str) -> None:
        if self._stop.is_set():
            raise Interrupted(message)

    def save_checkpoint(self, data: bytes, message: str | None = None) -> str:
        sha, _ = self.store.blobs.put_bytes(data)
        save_checkpoint(self.store, self.job.id, sha, message)
        self.job.checkpoint = sha
        return sha

    def load_checkpoint(self) -> bytes | None:
        return self.store.blobs.get_bytes(self.job.checkpoint) if self.job.checkpoint else None


Handler = Callable[[Store, Job, JobContext], None]
HANDLERS: dict[str, Handler] = {}
# Job kinds the design names whose capability has not landed yet.
NOT_YET = {"score": "active-learning scoring", "generate": "diffusion synthesis"}


def handles(kind: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        HANDLERS[kind] = fn
        return fn
    return register


class _Pulse(threading.Thread):
    """Beats the job's heartbeat every few seconds while the handler works."""

    def __init__(self, store: Store, job_id: int, worker: str):
        super().__init__(daemon=True, name=f"heartbeat-{job_id}")
        self.store, self.job_id, self.worker = store, job_id, worker
        self.done = threading.Event()
        self.period = max(0.5, min(10.0, heartbeat_timeout_s() / 4))

    def run(self) -> None:
        while not self.done.wait(self.period):
            try:
                heartbeat(self.store, self.job_id, worker=self.worker)
            except JobLost:
                return
            except Exception:  # a busy database: the next beat tries again
                log.warning("heartbeat for job %s failed", self.job_id, exc_info=True)


def run_job(store: Store, job: Job, worker: str = "worker",
            stop: threading.Event | None = None) -> JobStatus:
    # Handlers come with the worker; imported here so `store` stays free of pipeline code.
    import pipeline.handlers  # noqa: F401

    handler = HANDLERS.get(job.kind)
    if handler is None:
        why = f"this medloop has no handler for {job.kind!r} jobs: " + (
            f"{NOT_YET[job.kind]} is not part of this version yet" if job.kind in NOT_YET
            else "upgrade medloop")
        finish(store, job.id, JobStatus.failed, why)
        return JobStatus.failed
    pulse = _Pulse(store, job.id, worker)
    pulse.start()
    ctx = JobContext(store, job, worker, stop or threading.Event())
    try:
        handler(store, job, ctx)
    except Cancelled:
        finish(store, job.id, JobStatus.cancelled, "cancelled by a curator")
        return JobStatus.cancelled
    except Interrupted as exc:
        interrupt(store, job.id, str(exc))
        return JobStatus.queued
    except JobLost as exc:
        log.warning("%s", exc)
        return JobStatus.queued
    except MedloopError as exc:  # the input is wrong: retrying would not help
        finish(store, job.id, JobStatus.failed, str(exc))
        return JobStatus.failed
    except Exception as exc:  # transient or unknown: retried with backoff
        log.exception("job %s failed", job.id)
        finish(store, job.id, JobStatus.failed, f"{type(exc).__name__}: {exc}",
               retry_after_s=min(300.0, 5.0 * 2 ** job.attempts))
        return JobStatus.failed
    finally:
        pulse.done.set()
        pulse.join(timeout=5)
    finish(store, job.id, JobStatus.succeeded)
    return JobStatus.succeeded


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def serve(store: Store, poll_s: float = 1.0, once: bool = False,
          kinds: set[str] | None = None) -> None:
    """Claim and run jobs until SIGTERM/SIGINT (the job in hand finishes or checkpoints);
    with once=True, until the queue holds nothing runnable."""
    name = worker_name()
    stop = threading.Event()

    def _stop(*_: object) -> None:
        log.info("worker %s: stop requested; finishing or checkpointing the current job", name)
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    log.info("worker %s started", name)
    while not stop.is_set():
        job = claim_next(store, name, kinds)
        if job is None:
            if once:
                return
            stop.wait(poll_s)
            continue
        log.info("job %s (%s) claimed", job.id, job.kind)
        status = run_job(store, job, name, stop)
        log.info("job %s (%s) %s", job.id, job.kind, status.value)
    log.info("worker %s stopped", name)
