"""`medloop worker`: a separate process that claims jobs from the store and runs them.

Handlers register per job kind; later capabilities (propose, train, ...) add theirs.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from collections.abc import Callable

from store.db import Store
from store.errors import MedloopError
from store.jobs import claim_next, finish, heartbeat
from store.models import Job, JobStatus

log = logging.getLogger("medloop.worker")

# handler(store, job, report) where report(progress, message) -> False once cancelled
Handler = Callable[[Store, Job, Callable[[float, str], bool]], None]
HANDLERS: dict[str, Handler] = {}


class Cancelled(Exception):
    pass


def handles(kind: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        HANDLERS[kind] = fn
        return fn
    return register


def run_job(store: Store, job: Job) -> JobStatus:
    def report(progress: float, message: str) -> bool:
        if not heartbeat(store, job.id, progress, message):
            raise Cancelled()
        return True

    handler = HANDLERS.get(job.kind)
    if handler is None:
        finish(store, job.id, JobStatus.failed,
               f"this medloop has no handler for {job.kind!r} jobs: upgrade medloop")
        return JobStatus.failed
    try:
        handler(store, job, report)
    except Cancelled:
        finish(store, job.id, JobStatus.cancelled)
        return JobStatus.cancelled
    except MedloopError as exc:
        finish(store, job.id, JobStatus.failed, str(exc))
        return JobStatus.failed
    except Exception as exc:  # transient or unknown: retried with backoff
        log.exception("job %s failed", job.id)
        finish(store, job.id, JobStatus.failed, f"{type(exc).__name__}: {exc}",
               retry_after_s=min(300.0, 5.0 * 2 ** job.attempts))
        return JobStatus.failed
    finish(store, job.id, JobStatus.succeeded)
    return JobStatus.succeeded


def serve(store: Store, poll_s: float = 1.0, once: bool = False) -> None:
    """Claim and run jobs until SIGTERM/SIGINT (finishing the job in hand first)."""
    name = f"{socket.gethostname()}:{os.getpid()}"
    stop = {"now": False}

    def _stop(*_: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    log.info("worker %s started", name)
    while not stop["now"]:
        job = claim_next(store, name)
        if job is None:
            if once:
                return
            time.sleep(poll_s)
            continue
        run_job(store, job)
    log.info("worker %s stopped", name)
