"""The registry of job kinds: kind name -> the step that runs it. `generate` (synthesis)
registers here when that capability lands; until then such a job fails saying so."""

from __future__ import annotations

import time
from collections.abc import Callable

from pipeline.curation.export import export_dataset
from pipeline.loop.context import JobContext
from pipeline.loop.propagate import propagate
from pipeline.loop.propose import refresh_proposals
from pipeline.loop.score import score_pool
from pipeline.loop.train import run_evaluation, run_training
from store.db import Store
from store.models import Job

Handler = Callable[[Store, Job, JobContext], None]
HANDLERS: dict[str, Handler] = {}
# Job kinds the design names whose capability has not landed yet.
NOT_YET = {"generate": "diffusion synthesis"}


def handles(kind: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        HANDLERS[kind] = fn
        return fn
    return register


@handles("noop")
def noop(store: Store, job: Job, ctx: JobContext) -> None:
    """A job that does nothing (optionally sleeps): checks a worker is alive; measures the
    queue's own overhead. With `busy_s` it instead writes progress to the job row every
    `report_every_s` for that long: the write load of a busy job, for load tests."""
    busy = float(job.payload.get("busy_s", 0.0))
    if busy <= 0:
        time.sleep(float(job.payload.get("sleep_s", 0.0)))
        return
    every = float(job.payload.get("report_every_s", 0.01))
    start = time.monotonic()
    beats = 0
    while (elapsed := time.monotonic() - start) < busy:
        beats += 1
        ctx.report(100 * elapsed / busy, f"busy: write {beats}")
        time.sleep(every)


handles("train")(run_training)
handles("evaluate")(run_evaluation)
handles("propose")(refresh_proposals)
handles("export")(export_dataset)
handles("score")(score_pool)
handles("propagate")(propagate)
