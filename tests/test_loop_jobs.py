"""The worker's job handling with real worker processes: a worse challenger is not promoted,
SIGKILL mid-training resumes from the checkpoint, SIGTERM checkpoints and requeues, cancel
stops a running job, two workers never run the same job; and the retraining triggers."""

from __future__ import annotations

import re
import signal
import time
import zipfile
from datetime import timedelta

import nibabel as nib
import pandas as pd
import pytest
from sqlmodel import func, select

from loop_helpers import (
    finished,
    phantom_project,
    queue_training,
    radiomics_project,
    validate_train,
    wait_for,
    worker_process,
)
from pipeline.loop.worker import serve
from pipeline.task.evaluation import compare, labels_needed
from store import registry
from store.errors import Conflict, InvalidInput, PermissionDenied
from store.jobs import claim_next, enqueue, finish, request_cancel, retry
from store.models import AuditEvent, Item, Job, JobStatus, ModelVersion, Split, User, utcnow
from store.retraining import labels_since_training, retrain_now, update_training_settings


def _case(dice: dict[str, float]) -> dict:
    return {"source": "real", "dice": dice, "hd95": {k: None for k in dice},
            "mean_dice": sum(dice.values()) / len(dice)}


def test_promotion_needs_a_paired_gain_above_the_margin_and_no_class_dropping():
    champ = {1: _case({"1": 0.8, "2": 0.6}), 2: _case({"1": 0.7, "2": 0.5})}
    better = {1: _case({"1": 0.9, "2": 0.6}), 2: _case({"1": 0.8, "2": 0.55})}
    d = compare(better, champ, margin=0.01)
    assert d.promote and d.wins == 2 and d.mean_delta == pytest.approx(0.0625)
    assert not compare(better, champ, margin=0.1).promote  # gain below the margin
    # a big gain on one class does not buy a drop on another
    trade = {1: _case({"1": 1.0, "2": 0.5}), 2: _case({"1": 1.0, "2": 0.4})}
    d = compare(trade, champ, margin=0.05, names={"2": "white matter"})
    assert not d.promote and "white matter -0.100" in d.reason
    assert not compare(champ, champ, margin=0.0).promote  # equal is not better
    assert compare(better, None, margin=0.01).promote  # the first model
    assert not compare({}, None, margin=0.01).promote  # nothing to evaluate on


def _present(dice: dict[str, float], present: dict[str, bool]) -> dict:
    return {"source": "real", "dice": dice, "present": present,
            "hd95": dict.fromkeys(dice), "mean_dice": sum(dice.values()) / len(dice)}


def test_a_model_must_beat_proposing_nothing_and_reach_the_floor_on_each_class():
    # Four slices, one with a lesion: empty masks score 1 on the three empty ones.
    empty = {i: _present({"1": 1.0 if i else 0.0}, {"1": i == 0}) for i in range(4)}
    # The walk-through's first model: paints where there is nothing, misses the lesion.
    useless = {i: _present({"1": 0.02 if i == 0 else 0.0}, {"1": i == 0}) for i in range(4)}
    d = compare(useless, None, margin=0.01, names={"1": "lesion"}, empty=empty, floor=0.5)
    assert not d.promote and d.below_bar and "does not beat proposing nothing" in d.reason
    assert d.delta_vs_empty == pytest.approx(-0.745)
    # Quiet on empty slices but poor on the lesion: beats empty, still below the floor.
    timid = {i: _present({"1": 0.3 if i == 0 else 1.0}, {"1": i == 0}) for i in range(4)}
    d = compare(timid, None, margin=0.01, names={"1": "lesion"}, empty=empty, floor=0.5)
    assert not d.promote and d.below_bar
    assert "below the floor 0.50: lesion 0.300 on the 1 holdout slice(s) with it" in d.reason
    good = {i: _present({"1": 0.8 if i == 0 else 1.0}, {"1": i == 0}) for i in range(4)}
    d = compare(good, None, margin=0.01, empty=empty, floor=0.5)
    assert d.promote and not d.below_bar and "+0.200 over proposing nothing" in d.reason
    # A challenger below the bar is not promoted however it compares with the champion.
    d = compare(timid, useless, margin=0.01, empty=empty, floor=0.5)
    assert not d.promote and d.below_bar


def test_labels_needed_extrapolates_the_projects_learning_curve():
    assert "about twice as many (~8 more)" in labels_needed([(8, 0.1)], floor=0.5)
    # Dice 0.2 at 10 labels, 0.35 at 40: log-linear, 0.5 near 160 labels.
    hint = labels_needed([(10, 0.2), (40, 0.35)], floor=0.5)
    assert hint.startswith("likely about 1") and "more validated labels" in hint
    assert int(hint.split()[2]) == pytest.approx(120, abs=2)
    assert "have not raised" in labels_needed([(10, 0.3), (40, 0.3)], floor=0.5)
    assert "more than 10x" in labels_needed([(10, 0.10), (20, 0.11)], floor=0.9)


def test_challengers_that_are_not_better_leave_the_champion_in_place(sqlite_store):
    store = sqlite_store
    bench = phantom_project(store, n_train=40, n_holdout=20, n_pool=4)
    project_id = bench.project_id
    queue_training(store, project_id)
    serve(store, poll_s=0.05, once=True)
    with store.session() as s:
        champion = registry.champion(s, project_id)
    assert champion is not None
    # One epoch: not fit to serve at all. It stays a candidate (a curator may look at it).
    queue_training(store, project_id, epochs=1)
    # The champion's own recipe again: the same weights (fixed seeds), so no better.
    queue_training(store, project_id)
    serve(store, poll_s=0.05, once=True)
    with store.session() as s:
        versions = registry.versions(s, project_id)
        assert [v.status for v in versions] == [registry.CHAMPION, registry.CANDIDATE,
                                                registry.REJECTED]
        weak, challenger = versions[1], versions[2]
        assert weak.metrics["decision"]["below_bar"]
        assert weak.metrics["decision"]["reason"].startswith("kept as a candidate")
        decision = challenger.metrics["decision"]
        assert not decision["promoted"] and decision["reason"].startswith("champion kept")
        assert decision["mean_delta"] == pytest.approx(0.0, abs=1e-6)
        assert decision["champion"] == champion.name and challenger.parent_id == champion.id
        # no proposals refresh for a model that was not promoted
        assert s.exec(select(func.count(Job.id)).where(Job.kind == "propose")).one() == 1
        curator = s.get(User, bench.curator).name
    # a curator may still roll forward or back by hand; the audit says who
        curator = s.exec(select(AuditEvent.actor).where(
            AuditEvent.action == "project.training_settings")).first()
    with store.session(immediate=True) as s:
        cur = s.exec(select(User).where(User.name == curator)).one()
        registry.set_champion(s, cur.id, challenger.id)
    with store.session(immediate=True) as s:
        assert registry.champion(s, project_id).id == challenger.id
        with pytest.raises(Conflict, match="already the champion"):
            registry.set_champion(s, cur.id, challenger.id)
        registry.set_champion(s, cur.id, champion.id)
    with store.session() as s:
        assert registry.champion(s, project_id).id == champion.id
        # A promotion by hand refreshes the proposals too: one queued job, for the newest.
        queued = s.exec(select(Job).where(Job.kind == "propose",
                                          Job.status == JobStatus.queued)).all()
        assert [j.payload["model_version_id"] for j in queued] == [champion.id]
        actions = s.exec(select(AuditEvent.action).where(
            AuditEvent.action.in_(["model.promote", "model.rollback"]))
            .order_by(AuditEvent.id)).all()
    assert actions == ["model.promote", "model.promote", "model.rollback"]


def _epoch_lines(log: str, total: int) -> list[int]:
    return [int(m) for m in re.findall(rf"epoch (\d+)/{total}:", log)]


def test_sigkill_mid_training_resumes_from_checkpoint_without_duplicate_version(
        sqlite_store, radiomics, monkeypatch):
    store = sqlite_store
    monkeypatch.setenv("MEDLOOP_JOB_HEARTBEAT_TIMEOUT_S", "2")
    project, _, _ = radiomics_project(store, radiomics, settings={"epochs": 14})
    job_id = queue_training(store, project.id)
    with worker_process("--poll", "0.1") as first:
        wait_for(store, job_id, lambda j: j.checkpoint is not None)
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    killed_at = wait_for(store, job_id, lambda j: True)
    assert killed_at.status == JobStatus.running  # the row still says running: nobody knows
    done_before = _epoch_lines(killed_at.log_tail, 14)
    assert done_before and done_before[-1] < 14, "the worker finished before it was killed"
    time.sleep(2.5)  # past the heartbeat timeout
    with worker_process("--once", "--poll", "0.1") as second:
        out, _ = second.communicate(timeout=300)
    assert second.returncode == 0, out
    job = wait_for(store, job_id, finished)
    assert job.status == JobStatus.succeeded, job.error
    assert job.attempts == 2 and "requeued to resume from its checkpoint" in job.log_tail
    # every epoch ran exactly once across both workers: it resumed, it did not restart
    assert _epoch_lines(job.log_tail, 14) == list(range(1, 15))
    with store.session() as s:
        versions = s.exec(select(ModelVersion).where(ModelVersion.family == "task")).all()
        assert [v.name for v in versions] == [f"task-unet-j{job_id}"]
        assert len(versions[0].metrics["train"]["losses"]) == 14
        kinds = s.exec(select(Job.kind, Job.status).order_by(Job.id)).all()
    # (a propose job follows only if the model clears the promotion bar)
    assert kinds[:2] == [("train", JobStatus.succeeded), ("evaluate", JobStatus.succeeded)]
    assert all(status == JobStatus.succeeded for _, status in kinds)


def test_sigterm_checkpoints_and_requeues_the_training_job(sqlite_store, radiomics):
    store = sqlite_store
    project, _, _ = radiomics_project(store, radiomics, settings={"epochs": 200})
    job_id = queue_training(store, project.id)
    with worker_process("--poll", "0.1") as worker:
        wait_for(store, job_id, lambda j: j.checkpoint is not None)
        worker.send_signal(signal.SIGTERM)
        out, _ = worker.communicate(timeout=60)
    assert worker.returncode == 0, out
    with store.session() as s:
        job = s.get(Job, job_id)
    assert job.status == JobStatus.queued and job.attempts == 0
    assert "checkpointed after epoch" in job.message and job.checkpoint


def test_cancel_stops_a_running_job(sqlite_store, radiomics):
    store = sqlite_store
    project, _, curator = radiomics_project(store, radiomics, settings={"epochs": 500})
    job_id = queue_training(store, project.id)
    with worker_process("--once", "--poll", "0.1") as worker:
        wait_for(store, job_id, lambda j: j.status == JobStatus.running and j.progress > 2)
        asked = time.monotonic()
        with store.session(immediate=True) as s:
            request_cancel(s, job_id, curator)
        job = wait_for(store, job_id, finished, timeout=60)
        stopped_s = time.monotonic() - asked
        out, _ = worker.communicate(timeout=60)
    assert job.status == JobStatus.cancelled and worker.returncode == 0, out
    assert stopped_s < 30
    with store.session() as s:
        assert s.exec(select(func.count(ModelVersion.id))).one() == 0
        assert s.exec(select(AuditEvent).where(AuditEvent.action == "job.cancel")).one()
        with pytest.raises(Conflict, match="already cancelled"):
            request_cancel(s, job_id, curator)


def test_two_workers_never_run_the_same_job(store):
    with store.session(immediate=True) as s:
        ids = [enqueue(s, "noop", "test", sleep_s=0.02).id for _ in range(40)]
    with worker_process("--once", "--poll", "0.05") as one, \
            worker_process("--once", "--poll", "0.05") as two:
        workers = [one, two]
        outs = [w.communicate(timeout=180)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outs
    with store.session() as s:
        jobs = s.exec(select(Job).where(Job.id.in_(ids))).all()
        claims = s.exec(select(AuditEvent.entity_id).where(
            AuditEvent.action == "job.claim")).all()
    assert all(j.status == JobStatus.succeeded and j.attempts == 1 for j in jobs)
    assert sorted(claims) == sorted(ids)  # each job claimed exactly once


def test_orphaned_job_is_requeued_then_fails_after_its_attempts(sqlite_store, monkeypatch):
    store = sqlite_store
    monkeypatch.setenv("MEDLOOP_JOB_HEARTBEAT_TIMEOUT_S", "30")
    with store.session(immediate=True) as s:
        job_id = enqueue(s, "noop", "test").id
    for attempt in range(1, 4):
        job = claim_next(store, f"w{attempt}")
        assert job.id == job_id and job.attempts == attempt
        with store.session(immediate=True) as s:  # the worker died: its heartbeat stops
            row = s.get(Job, job_id)
            row.heartbeat_at = utcnow() - timedelta(seconds=31)
            s.add(row)
    assert claim_next(store, "w4") is None
    with store.session() as s:
        job = s.get(Job, job_id)
    assert job.status == JobStatus.failed and "stopped responding" in job.error
    assert job.log_tail.count("stopped responding") == 3


def test_retry_requeues_failed_jobs_and_only_for_curators(sqlite_store, radiomics):
    store = sqlite_store
    project, clinician, curator = radiomics_project(store, radiomics, validate=0)
    with store.session(immediate=True) as s:
        job_id = enqueue(s, "export", "test", project.id).id
    serve(store, poll_s=0.05, once=True)
    with store.session(immediate=True) as s:
        job = s.get(Job, job_id)
        assert job.status == JobStatus.failed and "no validated labels" in job.error
        with pytest.raises(PermissionDenied):
            retry(s, job_id, clinician)
        retry(s, job_id, curator)
    validate_train(store, project.id, clinician, 5)
    serve(store, poll_s=0.05, once=True)
    with store.session() as s:
        job = s.get(Job, job_id)
    assert job.status == JobStatus.succeeded and job.attempts == 1
    zip_path = store.settings.data_dir / "exports" / f"radiomics-job{job_id}.zip"
    with zipfile.ZipFile(zip_path) as zf:
        manifest = pd.read_csv(zf.open("manifest.csv"))
        assert len(manifest) == 5 and set(manifest.label_kind) == {"corrected"}
        zf.extract(manifest["mask"][0], store.settings.data_dir)
    mask = nib.load(store.settings.data_dir / manifest["mask"][0])
    assert mask.shape[2] == 1
    assert not list((store.settings.data_dir / "exports").glob("*.part"))


def test_k_new_labels_queue_one_training_job_per_project(store, radiomics):
    project, clinician, curator = radiomics_project(
        store, radiomics, validate=0, settings={"retrain_after_labels": 3})
    with store.session() as s:
        with pytest.raises(InvalidInput, match="no validated labels"):
            retrain_now(s, curator, project.id)
        with pytest.raises(PermissionDenied):
            retrain_now(s, clinician, project.id)
    validate_train(store, project.id, clinician, 2)
    with store.session() as s:
        assert s.exec(select(func.count(Job.id))).one() == 0
        assert labels_since_training(s, project.id) == 2
    validate_train(store, project.id, clinician, 8)  # the 3rd label queues; the rest wait
    with store.session() as s:
        jobs = s.exec(select(Job)).all()
        assert [(j.kind, j.status) for j in jobs] == [("train", JobStatus.queued)]
        assert "new validated labels (K = 3)" in jobs[0].payload["reason"]
        again, created = retrain_now(s, curator, project.id)
        assert again.id == jobs[0].id and not created
    job = claim_next(store, "w")
    finish(store, job.id, JobStatus.succeeded)
    with store.session() as s:
        assert labels_since_training(s, project.id) == 5  # the ones after the watermark
        # holdout reviews never count toward retraining
        holdout = s.exec(select(Item.id).where(Item.split == Split.holdout)).all()
    assert holdout
    validate_train(store, project.id, clinician, 9)  # one more train label: 6 >= 3
    with store.session(immediate=True) as s:
        queued = s.exec(select(Job).where(Job.status == JobStatus.queued)).all()
        assert len(queued) == 1 and queued[0].kind == "train"
        update_training_settings(s, curator, project.id, retrain_after_labels=0)
        with pytest.raises(InvalidInput):
            update_training_settings(s, curator, project.id, image_size=100)


def test_cli_retrain_queues_once_and_jobs_lists_it(sqlite_store, radiomics, capsys):
    from pipeline.cli import main

    project, clinician, _ = radiomics_project(sqlite_store, radiomics, validate=3)
    assert main(["retrain", "--project", "radiomics"]) == 0
    assert main(["retrain", "--project", "radiomics"]) == 0
    assert main(["retrain", "--project", "nope"]) == 2
    out = capsys.readouterr()
    assert "queued training job 1" in out.out and "already queued" in out.out
    assert "no project named 'nope'" in out.err
    with sqlite_store.session() as s:
        job = s.exec(select(Job)).one()
        assert job.payload["label_watermark"] > 0
        assert labels_since_training(s, project.id) == 0
    assert main(["jobs"]) == 0
    assert "train" in capsys.readouterr().out


def test_kinds_that_have_not_landed_fail_saying_so(sqlite_store):
    with sqlite_store.session(immediate=True) as s:
        job_id = enqueue(s, "generate", "test").id
    serve(sqlite_store, poll_s=0.05, once=True)
    with sqlite_store.session() as s:
        job = s.get(Job, job_id)
    assert job.status == JobStatus.failed and job.attempts == 1
    assert "diffusion synthesis is not part of this version yet" in job.error
