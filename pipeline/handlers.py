"""The worker's job kinds. `score` (active learning) and `generate` (synthesis) register
here when those capabilities land; until then such a job fails saying so."""

from __future__ import annotations

import time

from pipeline.export import export_dataset
from pipeline.refresh import refresh_proposals
from pipeline.training import run_evaluation, run_training
from pipeline.worker import JobContext, handles
from store.db import Store
from store.models import Job


@handles("noop")
def noop(store: Store, job: Job, ctx: JobContext) -> None:
    """A job that does nothing (optionally sleeps): checks a worker is alive; measures the
    queue's own overhead."""
    time.sleep(float(job.payload.get("sleep_s", 0.0)))


handles("train")(run_training)
handles("evaluate")(run_evaluation)
handles("propose")(refresh_proposals)
handles("export")(export_dataset)
