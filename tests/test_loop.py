"""The background loop end to end on the shared radiomics volumes, without the UI:
validated labels -> train -> holdout evaluation -> promotion -> refreshed proposals."""

from __future__ import annotations

import numpy as np
import pytest
from sqlmodel import select

from loop_helpers import phantom_project, queue_training, radiomics_project, validate_train
from pipeline.loop.propose import unreviewed_pool
from pipeline.loop.worker import serve
from pipeline.task.training_set import training_set
from store import labels, registry, review
from store.jobs import enqueue
from store.models import (
    AuditEvent,
    Item,
    Job,
    JobStatus,
    Label,
    LabelKind,
    ModelVersion,
    Project,
    Source,
    Split,
)


def test_a_weak_first_model_is_evaluated_but_not_promoted(store, radiomics):
    """Seen in the walk-through: the first model (a few lesion slices) scored holdout Dice
    0.019 and became champion; its proposals were worse than none. Now it stays a candidate
    saying why, nothing is re-proposed, and promotion is left to the curator."""
    project, _, _ = radiomics_project(store, radiomics, validate=None)
    with store.session() as s:
        items = s.exec(select(Item).where(Item.project_id == project.id)).all()
        holdout = [i.id for i in items if i.split == Split.holdout]
        train_ids = {i.id for i in items if i.split == Split.train}
    assert holdout and train_ids  # the split was frozen at ingest, per patient
    job_id = queue_training(store, project.id)

    serve(store, poll_s=0.05, once=True)  # runs train, then evaluate; no propose

    with store.session() as s:
        jobs = s.exec(select(Job).order_by(Job.id)).all()
        assert [(j.kind, j.status) for j in jobs] == [
            ("train", JobStatus.succeeded), ("evaluate", JobStatus.succeeded)], \
            [(j.kind, j.status, j.error) for j in jobs]
        mv = s.exec(select(ModelVersion).where(ModelVersion.family == "task")).one()
        assert registry.champion(s, project.id) is None
        assert mv.status == registry.CANDIDATE
        assert mv.name == f"task-unet-j{job_id}" and mv.training_set_hash
        assert mv.metrics["train"]["items"] == len(train_ids)
        assert mv.config["image_size"] == 64 and mv.config["class_values"] == [1]
        holdout_metrics = mv.metrics["holdout"]
        assert holdout_metrics["cases"] == len(holdout)
        assert set(holdout_metrics["by_source"]) == {"real"}
        with_lesion = holdout_metrics["cases_with"]["1"]
        assert 0 < with_lesion < len(holdout)  # the breast holdout: a few lesion slices
        cases = mv.metrics["holdout_cases"].values()
        assert holdout_metrics["dice_where_present"]["1"] == pytest.approx(
            np.mean([c["dice"]["1"] for c in cases if c["present"]["1"]]))
        assert set(mv.metrics["holdout_cases"]) == {str(i) for i in holdout}
        decision = mv.metrics["decision"]
        assert not decision["promoted"] and decision["below_bar"]
        assert decision["reason"].startswith("kept as a candidate: ")
        assert ("does not beat proposing nothing" in decision["reason"]
                or "below the floor" in decision["reason"])
        assert f"with {len(train_ids)} validated labels" in decision["reason"]  # what next
        kept = s.exec(select(AuditEvent).where(AuditEvent.action == "model.keep_candidate")
                      ).one()
        assert kept.entity_id == mv.id
        assert s.exec(select(AuditEvent).where(AuditEvent.action == "model.promote")).all() \
            == []
    with store.session() as s:
        train_job = s.get(Job, job_id)
    assert train_job.progress == 100 and "epoch 12/12" in train_job.log_tail
    # Its last word says what came of it (it used to end on "saving the model").
    assert train_job.message.startswith(f"registered task-unet-j{job_id}: ")
    assert train_job.message.endswith("holdout evaluation queued")
    assert train_job.checkpoint is not None
    assert np.isfinite(mv.metrics["train"]["losses"]).all()


def test_a_good_model_is_promoted_and_proposes_for_the_pool(store):
    bench = phantom_project(store, n_train=40, n_holdout=20, n_pool=6)
    with store.session() as s:
        last_label = s.exec(select(Label.id).order_by(Label.id.desc())).first()
    job_id = queue_training(store, bench.project_id)

    # runs train, then evaluate; the promotion queues score (the queue re-ordered by the new
    # champion, first: it takes seconds) and propose, whose end queues score again
    serve(store, poll_s=0.05, once=True)

    with store.session() as s:
        jobs = s.exec(select(Job).order_by(Job.id)).all()
        assert sorted((j.kind, j.status) for j in jobs) == sorted([
            ("train", JobStatus.succeeded), ("evaluate", JobStatus.succeeded),
            ("score", JobStatus.succeeded), ("propose", JobStatus.succeeded),
            ("score", JobStatus.succeeded)]), [(j.kind, j.status, j.error) for j in jobs]
        assert [j.kind for j in sorted(jobs, key=lambda j: j.started_at)] == \
            ["train", "evaluate", "score", "propose", "score"]
        mv = s.exec(select(ModelVersion).where(ModelVersion.family == "task")).one()
        assert registry.champion(s, bench.project_id).id == mv.id
        assert mv.name == f"task-unet-j{job_id}"
        decision = mv.metrics["decision"]
        assert decision["promoted"] and "first task model" in decision["reason"]
        assert decision["delta_vs_empty"] > 0.01
        assert mv.metrics["holdout"]["dice_where_present"]["1"] >= 0.5
        promoted = s.exec(select(AuditEvent).where(AuditEvent.action == "model.promote")).one()
        assert promoted.entity_id == mv.id
        # The pool nobody reviewed got fresh proposals, on each item's own grid.
        for item_id, truth in bench.truth.items():
            head = labels.head(s, item_id)
            assert head.kind == LabelKind.proposal and head.id > last_label
            assert head.author == mv.name or head.author.startswith("litemedsam")
            mask = store.blobs.get_array(head.mask_blob)
            assert mask.shape == truth.shape
        # Training never saw a holdout item.
        holdout = set(s.exec(select(Item.id).where(Item.split == Split.holdout)).all())
        assert holdout and str(min(holdout)) in mv.metrics["holdout_cases"]


def test_refresh_refines_task_model_masks_with_the_fm_and_spares_leased_items(
        sqlite_store, radiomics):
    store = sqlite_store
    project, clinician, _ = radiomics_project(store, radiomics, keep_lesions=2)
    validate_train(store, project.id, clinician, None, split=Split.holdout)
    pool = unreviewed_pool(store, project.id)
    assert len(pool) == 2
    with store.session() as s:
        before = {i: labels.head(s, i) for i in pool}
    # the clinician has one of them open: its screen must stay valid
    leased = review.lease_next(store, clinician, project.id)
    assert leased.id in pool
    queue_training(store, project.id, epochs=1)  # one epoch: it sees lesions everywhere
    serve(store, poll_s=0.05, once=True)
    with store.session(immediate=True) as s:  # not fit to serve: propose with it by hand
        mv = s.exec(select(ModelVersion).where(ModelVersion.family == "task")).one()
        assert mv.status == registry.CANDIDATE
        enqueue(s, "propose", "test", project.id, model_version_id=mv.id)
    serve(store, poll_s=0.05, once=True)
    with store.session() as s:
        job = s.exec(select(Job).where(Job.kind == "propose")).one()
        assert job.status == JobStatus.succeeded, job.error
        assert "1 FM-refined" in job.message
        free = next(i for i in pool if i != leased.id)
        head = labels.head(s, free)
        assert head.kind == LabelKind.proposal and head.author.startswith("litemedsam")
        assert head.predicted_iou is not None
        assert before[free] is None or head.id > before[free].id
        assert labels.head(s, leased.id) == before[leased.id]


def test_training_set_weights_synthetic_items_and_leaves_out_rejected_and_holdout(
        sqlite_store, radiomics):
    store = sqlite_store
    project, clinician, curator = radiomics_project(store, radiomics, validate=6,
                                                    settings={"synthetic_weight": 0.25})
    with store.session(immediate=True) as s:
        train = s.exec(select(Item).where(Item.split == Split.train)
                       .order_by(Item.id)).all()
        real = train[0]
        synthetic = Item(project_id=project.id, source=Source.synthetic, modality="MR",
                         blob=real.blob, shape=real.shape, dtype=real.dtype,
                         patient_pseudonym="synthetic", split=Split.train,
                         provenance={"generator": "test"})
        s.add(synthetic)
        s.flush()
        synthetic_id, rejected_id = synthetic.id, train[7].id
        gt = labels.ground_truth(s, real.id).mask_blob
    review.correct(store, clinician, synthetic_id, None, store.blobs.get_array(gt))
    review.reject(store, clinician, rejected_id, None, "ambiguous")
    validate_train(store, project.id, clinician, None, split=Split.holdout)
    with store.session() as s:
        project = s.get(Project, project.id)
    samples, pairs, cfg = training_set(store, project)
    ids = [item.id for item, _ in pairs]
    assert ids == [i.id for i in train[:6]] + [synthetic_id]
    assert [sm.weight for sm in samples] == [1.0] * 6 + [0.25]
    assert cfg.synthetic_weight == 0.25 and cfg.image_size == 64
