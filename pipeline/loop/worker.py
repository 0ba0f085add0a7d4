"""`medloop worker`: a separate process that claims jobs from the store and runs them.

Handlers register per job kind (`pipeline/loop/kinds.py`). While a job runs, a thread beats
its heartbeat, so a worker that dies (killed, out of memory, machine gone) is noticed by
the others, which requeue the job; a training job then resumes from its last checkpoint.
SIGTERM/SIGINT lets the job in hand finish or checkpoint, then the worker exits.

One worker runs one job at a time; jobs are claimed highest priority first, and a long job
(propose, train) yields between items or epochs to a job of higher priority that has been
waiting (an export a curator waits for), then resumes from its checkpoint. That, not a
second worker by default: on this 2-core machine two workers would each hold the FM and a
task model in memory and halve each other's speed, while the short job needs the worker for
seconds only.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading

from pipeline.loop.context import Cancelled, Interrupted, JobContext, Yielded
from pipeline.loop.kinds import HANDLERS, NOT_YET
from store.db import Store
from store.errors import MedloopError
from store.jobs import JobLost, claim_next, finish, heartbeat, heartbeat_timeout_s, interrupt
from store.models import Job, JobStatus

log = logging.getLogger("medloop.worker")


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
            stop: threading.Event | None = None, kinds: set[str] | None = None) -> JobStatus:
    handler = HANDLERS.get(job.kind)
    if handler is None:
        why = f"this medloop has no handler for {job.kind!r} jobs: " + (
            f"{NOT_YET[job.kind]} is not part of this version yet" if job.kind in NOT_YET
            else "upgrade medloop")
        finish(store, job.id, JobStatus.failed, why)
        return JobStatus.failed
    pulse = _Pulse(store, job.id, worker)
    pulse.start()
    ctx = JobContext(store, job, worker, stop or threading.Event(), kinds)
    try:
        handler(store, job, ctx)
    except Cancelled:
        finish(store, job.id, JobStatus.cancelled, "cancelled by a curator")
        return JobStatus.cancelled
    except Yielded as exc:
        interrupt(store, job.id, str(exc), yielded_to=exc.to_job)
        return JobStatus.queued
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
        status = run_job(store, job, name, stop, kinds)
        log.info("job %s (%s) %s", job.id, job.kind, status.value)
    log.info("worker %s stopped", name)
