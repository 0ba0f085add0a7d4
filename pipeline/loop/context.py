"""What a running job may do: report progress, checkpoint, stop when asked, and yield to a
waiting job of higher priority."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from store.db import Store
from store.errors import NotFound
from store.jobs import heartbeat, save_checkpoint, waiting_above
from store.models import Job, Project

# A throttled report (`tick`) writes the job row at most this often: progress the Jobs page
# shows within a second or two, and a cancel noticed as fast, for one small write a second.
REPORT_EVERY_S = 1.0
# A job of higher priority that has waited this long is not being taken by another worker
# (an idle one polls every second), so a long job yields to it.
YIELD_AFTER_S = 2.0
# How often yield_if_waiting looks at the queue (one indexed read).
YIELD_CHECK_EVERY_S = 1.0


class Cancelled(Exception):
    """A curator cancelled the job."""


class Interrupted(Exception):
    """The worker is shutting down; the job checkpointed (or has nothing to lose)."""


class Yielded(Interrupted):
    """The job checkpointed and goes back to the queue so that a waiting job of higher
    priority runs first; the attempt does not count."""

    def __init__(self, message: str, to_job: int):
        super().__init__(message)
        self.to_job = to_job


class JobContext:
    """What a handler gets besides the store and the job: progress, cancel, checkpoints."""

    def __init__(self, store: Store, job: Job, worker: str, stop: threading.Event,
                 kinds: set[str] | None = None):
        self.store, self.job, self.worker, self._stop = store, job, worker, stop
        self.kinds = kinds  # the kinds this worker runs: only those are worth yielding to
        self._reported = self._looked = time.monotonic()

    def report(self, progress: float, message: str | None = None, log: bool = True) -> None:
        """Progress (0-100) and a message (with `log`, also a log line); raises Cancelled once
        a cancel was requested."""
        self._reported = time.monotonic()
        if not heartbeat(self.store, self.job.id, progress, message, worker=self.worker,
                         log=log):
            raise Cancelled()

    def tick(self, progress: float, message: str | None = None,
             every_s: float = REPORT_EVERY_S) -> bool:
        """`report` without a log line, when `every_s` passed since the last report (call it
        as often as convenient); True when it wrote. Raises Cancelled as `report` does."""
        if time.monotonic() - self._reported < every_s:
            return False
        self.report(progress, message, log=False)
        return True

    def project(self) -> Project:
        """The job's project; NotFound (failing the job) when it names none."""
        with self.store.session() as s:
            project = s.get(Project, self.job.project_id) \
                if self.job.project_id is not None else None
        if project is None:
            raise NotFound(f"job {self.job.id} names no existing project")
        return project

    def stop_if_asked(self, message: str, checkpoint: Callable[[], object] | None = None
                      ) -> None:
        """Raises Interrupted when the worker is shutting down, after checkpoint() if given."""
        if self._stop.is_set():
            if checkpoint is not None:
                checkpoint()
            raise Interrupted(message)

    def yield_if_waiting(self, message: str, checkpoint: Callable[[], object] | None = None
                         ) -> None:
        """Raises Yielded when a queued, runnable job of higher priority that this worker
        runs has waited more than YIELD_AFTER_S, after checkpoint() if given: the worker then
        claims that job and resumes this one from its checkpoint afterwards. Call it where
        the job can resume (between items, after an epoch); it reads the queue at most every
        YIELD_CHECK_EVERY_S."""
        now = time.monotonic()
        if now - self._looked < YIELD_CHECK_EVERY_S:
            return
        self._looked = now
        with self.store.session() as s:
            other = waiting_above(s, self.job.priority, YIELD_AFTER_S, self.kinds)
            other = (other.id, other.kind) if other is not None else None
        if other is None:
            return
        if checkpoint is not None:
            checkpoint()
        raise Yielded(f"{message} (yielded to {other[1]} job {other[0]})", other[0])

    def save_checkpoint(self, data: bytes, message: str | None = None) -> str:
        sha, _ = self.store.blobs.put_bytes(data)
        save_checkpoint(self.store, self.job.id, sha, message)
        self.job.checkpoint = sha
        return sha

    def load_checkpoint(self) -> bytes | None:
        return self.store.blobs.get_bytes(self.job.checkpoint) if self.job.checkpoint else None
