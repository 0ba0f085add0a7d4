"""The `score` job (issue 10): it writes each unreviewed item's score and sets the queue
order the clinician is served in; it runs before any model (the cold start) and after each
promotion, proposal refresh and import; the strategy is a curator's choice."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from sqlmodel import func, select

from pipeline.active import strategies
from pipeline.ingest.importer import ingest
from pipeline.loop.score import quick_order
from pipeline.loop.worker import serve
from pipeline.task.model import TaskModel, TaskModelConfig, build_network
from store import labels, registry, review, scores
from store.errors import Conflict, InvalidInput, PermissionDenied
from store.jobs import enqueue, finish, retry
from store.models import AuditEvent, Item, ItemScore, Job, JobStatus, Project, Split
from store.projects import create_project
from store.users import create_user

SIZE = 32
SLICES = 8


def _volume(path, level: int = 200) -> None:
    """A small MR-like volume: the first two and last slice are empty (background only), the
    others hold a bright disc of growing size."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    vol = np.zeros((SIZE, SIZE, SLICES), np.int16)
    for k in range(2, SLICES - 1):
        vol[..., k] = level + 40 * ((yy - 16) ** 2 + (xx - 16) ** 2 < (2 + 2 * k) ** 2)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), path)


@pytest.fixture
def tiny(store, tmp_path, monkeypatch):
    """(project, clinician id, curator id) with the volume imported, no score job queued."""
    monkeypatch.setenv("MEDLOOP_FM_KIND", "sam_vit_b")  # no checkpoint here: no FM
    monkeypatch.setenv("MEDLOOP_FM_CHECKPOINT", "")
    with store.session(immediate=True) as s:
        project = create_project(s, "tiny", "MR",
                                 [{"name": "lesion", "value": 1, "color": "#ff0000"}], "test")
        clin = create_user(s, "clara", "clinician", "a long password", "test").id
        cur = create_user(s, "carl", "curator", "a long password", "test").id
    _volume(tmp_path / "vol.nii.gz")
    ingest(store, project, [tmp_path / "vol.nii.gz"])
    return project, clin, cur


def _score_jobs(store, project_id: int) -> list[Job]:
    with store.session() as s:
        return list(s.exec(select(Job).where(Job.project_id == project_id,
                                             Job.kind == "score").order_by(Job.id)).all())


def _champion(store, project_id: int, epochs: int = 0) -> int:
    """A real (untrained, seeded) small task model registered and promoted."""
    cfg = TaskModelConfig(class_values=(1,), image_size=SIZE, channels=(4, 8), epochs=epochs)
    sha, _ = store.blobs.put_bytes(TaskModel(build_network(cfg), cfg).to_bytes())
    with store.session(immediate=True) as s:
        mv = registry.ensure_model_version(s, "task", "task-tiny", "test",
                                           project_id=project_id, blob=sha)
        return registry.promote(s, mv, "test", "a test champion").id


def _served_order(store, clinician: int, project_id: int) -> list[int]:
    """The items lease_next hands this clinician one after another (each skipped in turn)."""
    served = []
    while (item := review.lease_next(store, clinician, project_id)) is not None:
        served.append(item.id)
        review.skip(store, clinician, item.id)
    return served


def _newest_scores(store, project_id: int) -> dict[int, ItemScore]:
    with store.session() as s:
        rows = s.exec(select(ItemScore).where(ItemScore.project_id == project_id)
                      .order_by(ItemScore.id)).all()
    return {r.item_id: r for r in rows}  # the newest per item wins


def test_with_a_champion_the_job_scores_every_unreviewed_item_and_orders_the_queue(
        store, tiny):
    project, clin, cur = tiny
    with store.session() as s:
        items = s.exec(select(Item).where(Item.project_id == project.id)
                       .order_by(Item.id)).all()
    first = items[3]
    review.correct(store, clin, first.id, None, np.zeros((SIZE, SIZE), np.uint8))
    scores.set_strategy(store, cur, project.id, "entropy", strategies.STRATEGIES)
    mv_id = _champion(store, project.id)
    assert len(_score_jobs(store, project.id)) == 1  # strategy change and promotion: one

    serve(store, poll_s=0.05, once=True)

    job = _score_jobs(store, project.id)[0]
    assert job.status == JobStatus.succeeded, job.error
    assert "ordered by entropy" in job.message
    rows = _newest_scores(store, project.id)
    unreviewed = {i.id for i in items} - {first.id}
    assert set(rows) == unreviewed  # one row per unreviewed item, none for the reviewed one
    assert all(r.model_version_id == mv_id and r.strategy == "entropy" and r.job_id == job.id
               and np.isfinite(r.score) and r.reason for r in rows.values())
    by_rank = sorted(rows.values(), key=lambda r: r.rank)
    assert [r.rank for r in by_rank] == list(range(len(unreviewed)))
    # entropy is a pure score: the queue order is the score order
    assert [r.score for r in by_rank] == sorted((r.score for r in by_rank), reverse=True)
    assert _served_order(store, clin, project.id) == [r.item_id for r in by_rank]
    with store.session() as s:
        assert scores.latest_reason(s, by_rank[0].item_id) == by_rank[0].reason
        assert scores.latest_reason(s, first.id) is None


def test_the_cold_start_orders_without_a_model_and_sends_empty_slices_last(store, tiny):
    project, clin, _ = tiny
    with store.session(immediate=True) as s:
        job_id = scores.queue_score(s, project.id, "test", "import")
        job_id = job_id.id

    serve(store, poll_s=0.05, once=True)

    with store.session() as s:
        job = s.get(Job, job_id)
        items = {i.id: i for i in s.exec(select(Item).where(Item.project_id == project.id))}
    assert job.status == JobStatus.succeeded, job.error
    assert "from thumbnails only" in job.message  # no FM here: the quick order stands
    rows = _newest_scores(store, project.id)
    assert set(rows) == set(items)
    assert all(r.model_version_id is None and r.strategy == "cold_start" for r in rows.values())
    served = _served_order(store, clin, project.id)
    empty = {i for i, item in items.items() if item.slice_index in (0, 1, SLICES - 1)}
    assert set(served[-len(empty):]) == empty  # the background-only slices come last
    assert "near-empty" in rows[served[-1]].reason


def test_the_cold_start_on_fm_embeddings(store, tiny, monkeypatch):
    """With the real FM (LiteMedSAM) the job embeds each item into the cache, then orders by
    the embeddings; a second run reuses the cached embeddings."""
    project, _, _ = tiny
    monkeypatch.setenv("MEDLOOP_FM_KIND", "litemedsam")
    with store.session(immediate=True) as s:
        job_id = scores.queue_score(s, project.id, "test", "import").id
    serve(store, poll_s=0.05, once=True)
    with store.session() as s:
        job = s.get(Job, job_id)
        n_items = s.exec(select(func.count(Item.id)).where(Item.project_id == project.id)).one()
        from store.models import ItemEmbedding
        n_cached = s.exec(select(func.count(ItemEmbedding.id))).one()
        per_job = s.exec(select(ItemScore.job_id, func.count(ItemScore.id))
                         .group_by(ItemScore.job_id)).all()
    assert job.status == JobStatus.succeeded, job.error
    assert "cold start on" in job.message and n_cached == n_items
    assert dict(per_job) == {job_id: 2 * n_items}  # the quick order, then the embedding one
    rows = _newest_scores(store, project.id)
    assert not any("thumbnails" in r.reason for r in rows.values())


def _cancel_queued_scores(store, project_id: int) -> None:
    with store.session(immediate=True) as s:
        for j in s.exec(select(Job).where(Job.project_id == project_id, Job.kind == "score",
                                          Job.status == JobStatus.queued)).all():
            j.status = JobStatus.cancelled
            s.add(j)


def test_triggers_each_queue_exactly_one_score_job(store, tiny, tmp_path):
    project, _, cur = tiny
    assert _score_jobs(store, project.id) == []  # ingest without score=True queues none
    _volume(tmp_path / "again.nii.gz")
    ingest(store, project, [tmp_path / "again.nii.gz"], again=True, score=True)
    assert [j.status for j in _score_jobs(store, project.id)] == [JobStatus.queued]
    # another trigger while that one is queued: still one queued job, both reasons kept
    _champion(store, project.id)
    jobs = _score_jobs(store, project.id)
    assert len(jobs) == 1 and len(jobs[0].payload["reasons"]) == 2

    _cancel_queued_scores(store, project.id)
    _champion(store, project.id)  # a promotion
    jobs = _score_jobs(store, project.id)
    assert [j.status for j in jobs] == [JobStatus.cancelled, JobStatus.queued]
    assert "became the champion" in jobs[1].payload["reasons"][0]
    # a retry of the cancelled one while another is queued is refused: never two queued
    with store.session(immediate=True) as s, pytest.raises(Conflict, match="already queued"):
        retry(s, jobs[0].id, cur)

    _cancel_queued_scores(store, project.id)
    with store.session(immediate=True) as s:
        propose_id = enqueue(s, "propose", "test", project.id).id
    serve(store, poll_s=0.05, once=True)  # runs propose, then the score job it queued
    with store.session() as s:
        propose = s.get(Job, propose_id)
    assert propose.status == JobStatus.succeeded, propose.error
    after = [j for j in _score_jobs(store, project.id) if j.id > propose_id]
    assert len(after) == 1 and after[0].status == JobStatus.succeeded, \
        [(j.status, j.error) for j in after]
    assert after[0].payload["reasons"] == [f"proposals refreshed by job {propose_id}"]


def test_set_strategy_is_for_curators_audited_and_checked(store, tiny):
    project, clin, cur = tiny
    with pytest.raises(PermissionDenied):
        scores.set_strategy(store, clin, project.id, "entropy", strategies.STRATEGIES)
    with pytest.raises(InvalidInput, match="unknown review-order strategy"):
        scores.set_strategy(store, cur, project.id, "telepathy", strategies.STRATEGIES)
    scores.set_strategy(store, cur, project.id, "bald", strategies.STRATEGIES)
    with store.session() as s:
        assert s.get(Project, project.id).strategy == "bald"
        event = s.exec(select(AuditEvent).where(AuditEvent.action == "project.strategy")).one()
    assert event.actor == "carl" and event.details["strategy"] == "bald"
    assert len(_score_jobs(store, project.id)) == 1  # the queue is re-ordered with it


def test_quick_order_leaves_holdout_and_reviewed_items_as_the_queue_has_them(store, tiny):
    """The score job orders what the queue serves: every unreviewed item (the holdout too,
    whose validated labels are the evaluation's references); reviewed items are left out."""
    project, clin, _ = tiny
    with store.session() as s:
        items = s.exec(select(Item).where(Item.project_id == project.id)
                       .order_by(Item.id)).all()
    review.correct(store, clin, items[4].id, None, np.zeros((SIZE, SIZE), np.uint8))
    assert quick_order(store, project.id) == len(items) - 1
    with store.session() as s:
        assert labels.head(s, items[4].id).kind == "corrected"
        split = {i.split for i in items}
    assert split <= {Split.train, Split.holdout, Split.test}
    assert items[4].id not in _newest_scores(store, project.id)


def test_record_scores_refuses_a_bad_order(store, tiny):
    project, _, _ = tiny
    with store.session() as s:
        ids = [i.id for i in s.exec(select(Item).where(Item.project_id == project.id))][:3]
    with pytest.raises(InvalidInput, match="distinct"):
        scores.record_scores(store, project.id, None, None, "random", ids, [0.1, 0.2, 0.3],
                             [0, 0, 1], ["a", "b", "c"])
    with pytest.raises(InvalidInput, match="scores"):
        scores.record_scores(store, project.id, None, None, "random", ids, [0.1], [0, 1, 2],
                             ["a", "b", "c"])


def test_a_failed_score_job_retried_by_the_worker_stays_the_one_queued(store, tiny):
    project, _, _ = tiny
    with store.session(immediate=True) as s:
        job_id = scores.queue_score(s, project.id, "test", "first").id
    with store.session(immediate=True) as s:
        s.get(Job, job_id).status = JobStatus.running
    finish(store, job_id, JobStatus.failed, "boom", retry_after_s=60)  # back to the queue
    with store.session(immediate=True) as s:
        again = scores.queue_score(s, project.id, "test", "second")
    assert again.id == job_id and len(_score_jobs(store, project.id)) == 1


def test_the_review_page_says_why_the_item_comes_now(sqlite_store):
    from pipeline.demo import BRAIN_PROJECT, create_demo
    from tests_helpers import signed_in_app

    create_demo(sqlite_store)  # its queue ordered at setup by the quick cold start
    at = signed_in_app(sqlite_store, "clinician", timeout=120)
    at.run().switch_page("pages/review.py").run()
    if at.selectbox(key="review_project").value is None:
        at.selectbox(key="review_project").select(BRAIN_PROJECT).run()
    assert not at.exception, at.exception
    [sub] = [h for h in at.subheader if h.value.startswith("Item ")]
    with sqlite_store.session() as s:
        reason = scores.latest_reason(s, int(sub.value.split()[1]))
    assert reason.startswith("typical of cluster 1 of ")
    assert f"Why now: {reason}" in [c.value for c in at.caption]


def test_medloop_ingest_queues_one_score_job_unless_told_not_to(store, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    _volume(tmp_path / "vol.nii.gz")
    _volume(tmp_path / "other.nii.gz", level=300)

    def medloop_ingest(*args: str) -> None:
        out = subprocess.run([sys.executable, "-m", "pipeline.cli", "ingest", *args,
                              "--project", "cli", "--classes", "lesion:1", "--quiet"],
                             capture_output=True, text=True, timeout=300, env=os.environ.copy(),
                             cwd=Path(__file__).resolve().parents[1])
        assert out.returncode == 0, out.stderr

    medloop_ingest(str(tmp_path / "vol.nii.gz"), "--no-score")
    with store.session() as s:
        project = s.exec(select(Project).where(Project.name == "cli")).one()
    assert _score_jobs(store, project.id) == []
    medloop_ingest(str(tmp_path / "other.nii.gz"))
    jobs = _score_jobs(store, project.id)
    assert len(jobs) == 1 and jobs[0].payload["reasons"] == [f"{SLICES} item(s) imported by cli"]
