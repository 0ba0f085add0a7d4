"""Job priorities (issue 9): short jobs a person waits for are claimed first, and a long job
on the only worker yields to one that has been waiting, then resumes from its checkpoint."""

from __future__ import annotations

import os
import threading
import time
from datetime import timedelta

import pytest
from sqlmodel import select

from loop_helpers import finished, wait_for, worker_process
from pipeline.bench.propose import pool_project, register_task_model, untrained_task_model
from pipeline.loop import context
from pipeline.loop.context import JobContext, Yielded
from store.jobs import PRIORITY, claim_next, enqueue, interrupt, queue_export
from store.models import AuditEvent, Job, JobStatus, Label, LabelKind, utcnow


def _age(store, job_id: int, seconds: float) -> None:
    with store.session(immediate=True) as s:
        job = s.get(Job, job_id)
        job.created_at = utcnow() - timedelta(seconds=seconds)
        s.add(job)


def test_claims_go_by_priority_then_age(store):
    kinds = ["train", "propose", "noop", "export", "evaluate", "export"]
    with store.session(immediate=True) as s:
        ids = [enqueue(s, kind, "test").id for kind in kinds]
        later = enqueue(s, "export", "test")
        later.not_before = utcnow() + timedelta(hours=1)  # a retry waiting: not runnable
        s.add(later)
    with store.session() as s:
        assert [s.get(Job, i).priority for i in ids] == [PRIORITY.get(k, 0) for k in kinds]
    assert PRIORITY["export"] > PRIORITY["evaluate"] > PRIORITY["propose"] == \
        PRIORITY["train"] == 0
    claimed = []
    while (job := claim_next(store, "w")) is not None:
        claimed.append(job.id)
    # export, export, evaluate, then the rest oldest first
    assert claimed == [ids[3], ids[5], ids[4], ids[0], ids[1], ids[2]]


def test_a_long_job_yields_only_to_a_higher_job_that_has_waited(store, monkeypatch):
    monkeypatch.setattr(context, "YIELD_CHECK_EVERY_S", 0.0)
    with store.session(immediate=True) as s:
        long_id = enqueue(s, "propose", "test").id
    job = claim_next(store, "w")
    ctx = JobContext(store, job, "w", threading.Event())
    saved = []
    ctx.yield_if_waiting("paused", lambda: saved.append(1))  # nothing waits
    with store.session(immediate=True) as s:
        same = enqueue(s, "train", "test").id  # the same priority: no reason to yield
        export = enqueue(s, "export", "test").id
    _age(store, same, 60)
    ctx.yield_if_waiting("paused", lambda: saved.append(1))  # the export is only just queued
    assert saved == []
    _age(store, export, context.YIELD_AFTER_S + 1)
    # a worker that runs no exports does not yield to one
    JobContext(store, job, "w", threading.Event(), kinds={"propose", "train"}) \
        .yield_if_waiting("paused")
    with pytest.raises(Yielded, match=f"yielded to export job {export}") as raised:
        ctx.yield_if_waiting("paused at 3/10 items done", lambda: saved.append(1))
    assert saved == [1] and raised.value.to_job == export
    # what the worker does with it: back to the queue, the attempt not counted
    interrupt(store, long_id, str(raised.value), yielded_to=export)
    with store.session() as s:
        row = s.get(Job, long_id)
        event = s.exec(select(AuditEvent).where(AuditEvent.action == "job.yielded")).one()
    assert row.status == JobStatus.queued and row.attempts == 0
    assert event.entity_id == long_id and event.details["to_job"] == export
    assert [claim_next(store, "w").id for _ in range(3)] == [export, same, long_id]


def test_an_export_queued_behind_a_long_propose_job_on_one_worker_runs_first(
        sqlite_store, radiomics):
    store = sqlite_store
    made = pool_project(store, 4, {"lung1": "CT"}, radiomics)
    weak = register_task_model(store, made.project_id, untrained_task_model(), "task-unet-weak")
    with store.session(immediate=True) as s:
        propose_id = enqueue(s, "propose", "test", made.project_id, model_version_id=weak).id
    with worker_process("--once", "--poll", "0.1") as worker:
        wait_for(store, propose_id, lambda j: j.message.startswith("1/"), timeout=180)
        with store.session(immediate=True) as s:
            export_id = queue_export(s, made.curator, made.project_id).id
        _age(store, export_id, 2 * context.YIELD_AFTER_S)  # the pool outlasts the wait anywhere
        export = wait_for(store, export_id, finished, timeout=120)
        with store.session() as s:
            during = s.get(Job, propose_id)
        propose = wait_for(store, propose_id, finished, timeout=300)
        out, _ = worker.communicate(timeout=60)
    assert worker.returncode == 0, out
    assert export.status == JobStatus.succeeded, export.error
    assert not finished(during)  # the export did not wait for the whole pool
    assert propose.status == JobStatus.succeeded, propose.error
    assert export.finished_at < propose.finished_at
    assert propose.attempts == 1  # yielding does not count as an attempt
    assert f"yielded to export job {export_id}" in propose.log_tail
    assert "resuming at item" in propose.log_tail
    # nothing done twice: every item refined once, none found unchanged on a second pass
    assert "4 FM-refined, 0 task-model, 0 empty, 0 unchanged" in propose.message
    with store.session() as s:
        proposals = s.exec(select(Label.item_id).where(Label.kind == LabelKind.proposal)).all()
        yielded = s.exec(select(AuditEvent).where(AuditEvent.action == "job.yielded")).all()
    assert sorted(proposals) == sorted(made.pool)
    assert [e.details["to_job"] for e in yielded] == [export_id]


def test_an_export_queued_during_training_runs_at_the_next_epoch_end(sqlite_store):
    import re

    from loop_helpers import phantom_project, queue_training

    # Enough epochs (about 0.3 s each here) that the first look at the queue, 1 s in, comes
    # well before the last one on faster cores too.
    EPOCHS = 24

    store = sqlite_store
    bench = phantom_project(store, n_train=40, n_holdout=20, n_pool=2, epochs=EPOCHS)
    train_id = queue_training(store, bench.project_id)
    with worker_process("--poll", "0.1"):
        wait_for(store, train_id, lambda j: j.status == JobStatus.running, timeout=300)
        with store.session(immediate=True) as s:
            export_id = queue_export(s, bench.curator, bench.project_id).id
        # As if it had waited past YIELD_AFTER_S already: on CI's faster cores the epochs
        # could end before a real 2 s wait did, and the test would prove nothing.
        _age(store, export_id, 2 * context.YIELD_AFTER_S)
        export = wait_for(store, export_id, finished, timeout=300)
        training = wait_for(store, train_id, finished, timeout=600)
    assert export.status == JobStatus.succeeded, export.error
    assert training.status == JobStatus.succeeded and training.attempts == 1
    assert export.finished_at < training.finished_at
    # the export did not wait for the training: it ran at an epoch end before the last one
    log, yielded = training.log_tail, f"yielded to export job {export_id}"
    assert yielded in log
    assert log.index(yielded) < log.index(f"epoch {EPOCHS}/{EPOCHS}:")
    # every epoch ran once: it resumed from its checkpoint, it did not start again
    epochs = [int(m) for m in re.findall(rf"epoch (\d+)/{EPOCHS}:", log)]
    assert epochs == list(range(1, EPOCHS + 1))


def test_the_worker_process_leaves_the_cpu_to_the_web_app(store):
    """Seen in the walk-through: while a train job ran on the 2-core machine, a box on the
    review page took twice as long. The worker lowers its own CPU priority (nice 10)."""
    mine = os.getpriority(os.PRIO_PROCESS, 0)
    with worker_process("--poll", "0.1") as worker:
        deadline = time.monotonic() + 60
        while (nice := os.getpriority(os.PRIO_PROCESS, worker.pid)) == mine \
                and worker.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)  # the interpreter starts at our priority, then lowers it
        assert worker.poll() is None, worker.stdout.read()
        assert nice == min(mine + 10, 19)
