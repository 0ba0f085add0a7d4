"""Background-loop test data: the shared radiomics volumes in one project, with validated
labels (the ground truth, saved as a clinician's correction) on the train split."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlmodel import select

from pipeline.ingest.importer import ingest
from store import labels, retraining, review
from store.db import Store
from store.models import Item, Job, JobStatus, Project, Split
from store.projects import create_project
from store.retraining import update_training_settings
from store.users import create_user

# Small and quick on 2 CPU cores; the benchmark uses the real defaults (256 px, 30 epochs).
FAST = {"image_size": 64, "epochs": 12, "retrain_after_labels": 0}


def radiomics_project(store: Store, data: Path, validate: int | None = None,
                      settings: dict | None = None, keep_lesions: int = 0
                      ) -> tuple[Project, int, int]:
    """(project, clinician id, curator id); the first `validate` train items (all when None)
    carry validated labels, except the `keep_lesions` train slices with the largest lesions,
    which stay in the unreviewed pool."""
    with store.session(immediate=True) as s:
        project = create_project(s, "radiomics", "MR",
                                 [{"name": "lesion", "value": 1, "color": "#ff0000"}], "test")
        clin = create_user(s, "clara", "clinician", "a long password", "test").id
        cur = create_user(s, "carl", "curator", "a long password", "test").id
    with store.session(immediate=True) as s:
        update_training_settings(s, cur, project.id, **{**FAST, **(settings or {})})
    images = sorted(data.glob("*_image.nii.gz"))
    ingest(store, project, images, masks=[p.with_name(p.name.replace("_image", "_label"))
                                          for p in images])
    validate_train(store, project.id, clin, validate, keep_lesions)
    return project, clin, cur


def phantom_project(store: Store, n_train: int = 40, n_holdout: int = 20, n_pool: int = 6,
                    size: int = 64, epochs: int = 12):
    """A project whose task is easy enough for a small, quick model to learn well (one bright
    round lesion per slice): what a promotion test needs. Returns pipeline.bench.loop.Bench
    (store, project_id, clinician, curator, pool truth)."""
    from pipeline.bench.loop import populate

    return populate(store, n_train, n_holdout, n_pool, size, epochs)


def validate_train(store: Store, project_id: int, clinician: int, n: int | None,
                   keep_lesions: int = 0, split: Split = Split.train) -> list[int]:
    with store.session() as s:
        items = s.exec(select(Item).where(Item.project_id == project_id,
                                          Item.split == split).order_by(Item.id)).all()
        todo = [(i.id, labels.head(s, i.id), labels.ground_truth(s, i.id)) for i in items]
    area = {i: int((store.blobs.get_array(gt.mask_blob) > 0).sum()) for i, _, gt in todo}
    kept = set(sorted(area, key=lambda i: -area[i])[:keep_lesions])
    done = []
    for item_id, h, gt in todo[:n]:
        if item_id in kept:
            continue
        if h is not None and h.kind != "proposal":
            continue
        # a batch of ground truth saved as corrections: no propagation jobs
        review.correct(store, clinician, item_id, h.id if h else None,
                       store.blobs.get_array(gt.mask_blob), propagate=False)
        done.append(item_id)
    return done


def queue_training(store: Store, project_id: int, **overrides) -> int:
    with store.session(immediate=True) as s:
        return retraining.queue_training(s, project_id, "test", "test",
                                         overrides=overrides or None).id


@contextmanager
def worker_process(*args: str, env: dict[str, str] | None = None
                   ) -> Iterator[subprocess.Popen]:
    """`medloop worker ARGS` as a process (this environment, plus `env`); killed if still
    alive after."""
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "worker", *args],
                            env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def wait_for(store: Store, job_id: int, test, timeout: float = 180.0) -> Job:
    """Poll the job until test(job) holds; fails with the job's state on timeout."""
    end = time.monotonic() + timeout
    while True:
        with store.session() as s:
            job = s.get(Job, job_id)
        if test(job):
            return job
        if time.monotonic() > end:
            raise AssertionError(f"job {job_id} stuck: {job.status} {job.progress:.0f}% "
                                 f"{job.message!r} {job.error!r}")
        time.sleep(0.1)


def finished(job: Job) -> bool:
    return job.status in (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled)
