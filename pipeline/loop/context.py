"""What a running job may do: report progress, checkpoint, and stop when asked."""

from __future__ import annotations

import threading

from store.db import Store
from store.errors import NotFound
from store.jobs import heartbeat, save_checkpoint
from store.models import Job, Project


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
