"""The `propagate` job (issue 10): a clinician validates a slice of a volume; the worker's
job follows its structure with the real FM to the slices around it, under the store's
rules; the queue then leads the clinician through those slices."""

from __future__ import annotations

import threading

import nibabel as nib
import numpy as np
import pytest
from sqlmodel import select

from pipeline import review_view as rv
from pipeline.bench.propagate import phantom_volume, seed_slice
from pipeline.fm import load_foundation_model
from pipeline.ingest.importer import ingest
from pipeline.loop.worker import run_job
from store import labels, propagation, review
from store.jobs import PRIORITY, claim_next, enqueue
from store.models import Item, Job, JobStatus, Label, LabelKind, ModelVersion
from store.projects import create_project
from store.users import create_user

SLICES = 7


@pytest.fixture(scope="module")
def fm():
    return load_foundation_model()


def phantom_volume_project(store, tmp_path):
    """A 7-slice 64x64 phantom volume (a lesion over the middle slices) ingested for real;
    (project id, clinician id, items by slice index, reference masks by slice index)."""
    volume = phantom_volume(slices=SLICES, size=64)
    # The phantom is (slice, row, col); a NIfTI here is cut along its last axis.
    image, mask = tmp_path / "phantom_image.nii.gz", tmp_path / "phantom_label.nii.gz"
    nib.save(nib.Nifti1Image(np.moveaxis(volume.image, 0, -1), np.eye(4)), image)
    nib.save(nib.Nifti1Image(np.moveaxis(volume.label, 0, -1), np.eye(4)), mask)
    with store.session(immediate=True) as s:
        project = create_project(s, "phantom", "MR",
                                 [{"name": "lesion", "value": 1, "color": "#ff0000"}], "test")
        clin = create_user(s, "clara", "clinician", "a long password", "test").id
        other = create_user(s, "olga", "clinician", "a long password", "test").id
    ingest(store, project, [image], masks=[mask])
    with store.session() as s:
        items = s.exec(select(Item).where(Item.project_id == project.id)).all()
        by_slice = {i.slice_index: i for i in items}
        truth = {k: store.blobs.get_array(labels.ground_truth(s, i.id).mask_blob)
                 for k, i in by_slice.items()}
    assert len(by_slice) == SLICES and all(i.volume_id is not None for i in items)
    start = seed_slice(volume)
    return project.id, clin, other, by_slice, truth, start


def _validate(store, user, item_id, mask, **kw):
    with store.session() as s:
        h = labels.head(s, item_id)
    return review.correct(store, user, item_id, h.id if h else None, mask, **kw)


def _propagate_jobs(store):
    with store.session() as s:
        return s.exec(select(Job).where(Job.kind == "propagate").order_by(Job.id)).all()


def _run_queued(store):
    """The worker's own claim and run, until no propagate job is queued."""
    statuses = []
    while (job := claim_next(store, "test-worker", kinds={"propagate"})) is not None:
        statuses.append(run_job(store, job, "test-worker", kinds={"propagate"}))
        with store.session() as s:
            done = s.get(Job, job.id)
        assert done.status == JobStatus.succeeded, (done.status, done.error)
    return statuses


def _propagated(store, item_ids):
    with store.session() as s:
        return s.exec(select(Label).where(Label.item_id.in_(item_ids),
                                          Label.source_label_id.is_not(None))
                      .order_by(Label.id)).all()


def _dice(a, b):
    a, b = a > 0, b > 0
    return 2 * (a & b).sum() / max(1, a.sum() + b.sum())


def test_a_validation_queues_a_propagation_that_proposes_the_neighbours(store, tmp_path, fm):
    project_id, clin, _, by_slice, truth, start = phantom_volume_project(store, tmp_path)
    source = _validate(store, clin, by_slice[start].id, truth[start])
    jobs = _propagate_jobs(store)
    assert [(j.payload["label_id"], j.priority) for j in jobs] == [
        (source.id, PRIORITY["propagate"])]
    assert PRIORITY["propagate"] > PRIORITY["propose"]
    # The clinician goes on at once: the queue gives them a neighbour, bare for now; the
    # page would wait for its proposal, and the job writes it although they hold it.
    nxt = review.lease_next(store, clin, project_id)
    assert abs(nxt.slice_index - start) == 1
    assert rv.head_when_ready(store, nxt, wait_s=0.2, poll_s=0.05) is None  # job queued
    with store.session() as s:  # queued, not running: the page waits the shorter time
        assert propagation.pending(s, nxt) == JobStatus.queued

    assert _run_queued(store) == [JobStatus.succeeded]
    head = rv.head_when_ready(store, nxt, wait_s=0.2, poll_s=0.05)
    assert head is not None and head.source_label_id == source.id
    with store.session() as s:
        job = s.get(Job, jobs[0].id)
        fm_version = s.exec(select(ModelVersion).where(ModelVersion.family == "fm")).one()
    assert job.progress == 100 and "proposed" in job.message
    written = _propagated(store, [i.id for i in by_slice.values()])
    slice_of = {i.id: k for k, i in by_slice.items()}
    proposed = {slice_of[lb.item_id]: lb for lb in written}
    assert {start - 1, start + 1} <= set(proposed)  # the neighbours first, always
    assert start not in proposed
    for k, lb in proposed.items():
        assert lb.kind == LabelKind.proposal and lb.source_label_id == source.id
        assert lb.author_model_id == fm_version.id and lb.author == fm.version
        got = store.blobs.get_array(lb.mask_blob)
        if k in (start - 1, start + 1):
            assert _dice(got, truth[k]) > 0.6, k
    # written nearest first: both neighbours before anything farther
    order = [slice_of[lb.item_id] for lb in written]
    assert set(order[:2]) == {start - 1, start + 1}
    line = rv.proposal_provenance(store, head)
    assert line == f"Propagated by {fm.version} from slice {start} (validated by clara)"
    with store.session() as s:
        assert not propagation.pending(s, nxt)
        assert rv.proposal_provenance(store, labels.ground_truth(s, nxt.id)) is None


def test_a_reviewed_or_leased_slice_is_never_replaced(store, tmp_path, fm):
    project_id, clin, other, by_slice, truth, start = phantom_volume_project(store, tmp_path)
    below, above = by_slice[start - 1], by_slice[start + 1]
    review.reject(store, clin, below.id, None, "ambiguous")  # a reviewed neighbour
    with store.session(immediate=True) as s:  # another clinician holds the slice above
        held = s.get(Item, above.id)
        held.leased_by = other
        held.lease_expires_at = review.utcnow() + review.LEASE
        s.add(held)
    source = _validate(store, clin, by_slice[start].id, truth[start])
    assert _run_queued(store) == [JobStatus.succeeded]
    with store.session() as s:
        assert labels.head(s, below.id).kind == LabelKind.rejected
        assert labels.head(s, above.id) is None
    written = {lb.item_id for lb in _propagated(store, [i.id for i in by_slice.values()])}
    assert below.id not in written and above.id not in written
    # the structure was followed through the held slice to the one beyond it
    assert by_slice[start + 2].id in written
    assert all(lb.source_label_id == source.id
               for lb in _propagated(store, list(written)))


def test_two_propagations_of_the_same_volume_write_no_duplicates(store, tmp_path, fm):
    project_id, clin, _, by_slice, truth, start = phantom_volume_project(store, tmp_path)
    source = _validate(store, clin, by_slice[start].id, truth[start])
    job = _propagate_jobs(store)[0]
    with store.session(immediate=True) as s:  # a second job for the same validation
        enqueue(s, "propagate", "test", project_id, label_id=source.id,
                volume_id=by_slice[start].volume_id)
    claimed = [claim_next(store, f"w{n}", kinds={"propagate"}) for n in (1, 2)]
    assert job.id in {c.id for c in claimed} and None not in claimed
    results = []
    threads = [threading.Thread(target=lambda c=c, n=n: results.append(
        run_job(store, c, f"w{n}", kinds={"propagate"}))) for n, c in enumerate(claimed, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [JobStatus.succeeded] * 2
    ids = [i.id for i in by_slice.values()]
    written = _propagated(store, ids)
    assert written
    assert len({lb.item_id for lb in written}) == len(written)  # one per slice
    with store.session(immediate=True) as s:  # and a rerun later writes nothing more
        enqueue(s, "propagate", "test", project_id, label_id=source.id,
                volume_id=by_slice[start].volume_id)
    assert _run_queued(store) == [JobStatus.succeeded]
    assert len(_propagated(store, ids)) == len(written)


def test_a_nearer_validation_re_propagates_and_the_queue_leads_through(store, tmp_path, fm):
    project_id, clin, _, by_slice, truth, start = phantom_volume_project(store, tmp_path)
    a, b = start - 1, start + 1  # two lesion slices; `start` lies between them
    first = _validate(store, clin, by_slice[a].id, truth[a])
    _run_queued(store)
    # the queue serves the validated slice's nearest propagated neighbour next
    nxt = review.lease_next(store, clin, project_id)
    assert nxt.slice_index in (a - 1, a + 1)
    with store.session() as s:
        assert labels.head(s, nxt.id).source_label_id == first.id
    review.skip(store, clin, nxt.id)
    farther = by_slice[b + 1].id
    before = _propagated(store, [farther])
    assert [lb.source_label_id for lb in before] == [first.id]  # reached, 3 slices away

    second = _validate(store, clin, by_slice[b].id, truth[b])
    _run_queued(store)
    with store.session() as s:
        h = labels.head(s, farther)
        assert h.source_label_id == second.id  # replaced: the nearer source wins
        assert h.parent_id == before[0].id
        # a slice as near to the first source as to the second keeps the first's, once
        between = [lb.source_label_id for lb in _propagated(store, [by_slice[start].id])]
        assert between == [first.id]
    # and the queue leads on from the newest validation, nearest first
    nxt = review.lease_next(store, clin, project_id)
    assert abs(nxt.slice_index - b) == 1


def test_a_slice_without_a_volume_queues_nothing_and_accept_can_opt_out(store, tmp_path, fm):
    project_id, clin, _, by_slice, truth, start = phantom_volume_project(store, tmp_path)
    _validate(store, clin, by_slice[start].id, truth[start], propagate=False)
    assert _propagate_jobs(store) == []
