"""Store: schema, blobs, immutability, transactions with their audit events, users, job claims."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text
from sqlmodel import SQLModel, select

from store.blobs import BlobStore
from store.errors import BlobCorrupt, Conflict, InvalidInput, NotFound
from store.jobs import claim_next, enqueue, finish
from store.models import (
    AuditEvent,
    ImmutableRow,
    Item,
    Job,
    JobStatus,
    Label,
    LabelKind,
    Project,
    User,
)
from store.projects import create_project, parse_classes
from store.users import check_password, create_user, reset_password


def test_migrations_build_exactly_the_models(store):
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    assert diff == []
    store.upgrade()  # running it again is a no-op


def test_sqlite_pragmas(sqlite_store):
    with sqlite_store.engine.connect() as c:
        assert c.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert c.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert c.execute(text("PRAGMA busy_timeout")).scalar() >= 5000


def test_blob_round_trip_dedup_and_no_temp_files(tmp_path):
    blobs = BlobStore(tmp_path)
    arr = np.arange(12, dtype=np.int16).reshape(3, 4)
    sha, created = blobs.put_array(arr)
    assert created and len(sha) == 64
    assert blobs.put_array(arr.copy()) == (sha, False)
    np.testing.assert_array_equal(blobs.get_array(sha), arr)
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == [sha]


def test_corrupt_and_missing_blobs_raise_clear_errors(tmp_path):
    blobs = BlobStore(tmp_path)
    sha, _ = blobs.put_array(np.ones((4, 4)))
    path = blobs.path(sha)
    path.write_bytes(path.read_bytes()[:-3] + b"xyz")
    with pytest.raises(BlobCorrupt, match="does not match its sha256"):
        blobs.get_array(sha)
    path.unlink()
    with pytest.raises(NotFound, match="missing"):
        blobs.get_array(sha)


def test_a_failed_transaction_leaves_neither_row_nor_audit_event(store):
    with pytest.raises(RuntimeError):
        with store.session(immediate=True) as s:
            create_project(s, "brain", "MR", parse_classes("lesion:1"), "tester")
            raise RuntimeError("power cut")
    with store.session() as s:
        assert s.exec(select(Project)).all() == []
        assert s.exec(select(AuditEvent)).all() == []
    with store.session(immediate=True) as s:
        create_project(s, "brain", "MR", parse_classes("lesion:1"), "tester")
    with store.session() as s:
        (event,) = s.exec(select(AuditEvent)).all()
        assert (event.actor, event.action, event.details["name"]) == ("tester", "project.create",
                                                                      "brain")
        with pytest.raises(Conflict):
            create_project(s, "brain", "MR", parse_classes("lesion:1"), "tester")


def test_bad_label_classes_are_refused():
    for spec in ("lesion", "lesion:0", "a:1,b:1", "lesion:x", "lesion:1:red"):
        with pytest.raises(InvalidInput):
            parse_classes(spec)


def test_labels_and_audit_events_are_immutable(store, project):
    with store.session(immediate=True) as s:
        item = Item(project_id=project.id, modality="MR", blob="0" * 64, shape=[2, 2],
                    dtype="uint8", patient_pseudonym="P-1", split="train")
        s.add(item)
        s.flush()
        s.add(Label(item_id=item.id, kind=LabelKind.proposal, mask_blob="1" * 64, author="fm"))
    with pytest.raises(ImmutableRow, match="immutable"):
        with store.session(immediate=True) as s:
            label = s.exec(select(Label)).one()
            label.kind = LabelKind.accepted
            s.add(label)
    with store.session() as s:
        assert s.exec(select(Label)).one().kind == LabelKind.proposal


def test_users_hash_passwords_and_reset(store):
    with store.session(immediate=True) as s:
        create_user(s, "ana", "clinician", "correct horse battery", "admin")
    with store.session() as s:
        user = s.exec(select(User).where(User.name == "ana")).one()
        assert "correct horse" not in user.password_hash
        assert check_password("correct horse battery", user.password_hash)
        assert not check_password("wrong password!", user.password_hash)
        with pytest.raises(Conflict):
            create_user(s, "ana", "clinician", "another long one", "admin")
        with pytest.raises(InvalidInput, match="role"):
            create_user(s, "bob", "surgeon", "another long one", "admin")
        with pytest.raises(InvalidInput, match="at least"):
            create_user(s, "bob", "clinician", "short", "admin")
    with store.session(immediate=True) as s:
        reset_password(s, "ana", "a brand new password", "admin")
    with store.session() as s:
        user = s.exec(select(User).where(User.name == "ana")).one()
        assert check_password("a brand new password", user.password_hash)
        actions = s.exec(select(AuditEvent.action).order_by(AuditEvent.id)).all()
        assert actions == ["user.create", "user.reset_password"]


def test_concurrent_claimers_never_share_a_job(store):
    with store.session(immediate=True) as s:
        for _ in range(20):
            enqueue(s, "noop", "tester")
    claimed: list[int] = []
    lock = threading.Lock()

    def claimer(name: str) -> None:
        while (job := claim_next(store, name)) is not None:
            with lock:
                claimed.append(job.id)

    threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == list(range(1, 21))
    with store.session() as s:
        assert all(j.status == JobStatus.running and j.attempts == 1
                   for j in s.exec(select(Job)).all())


def test_failed_job_is_retried_later_then_gives_up(store):
    with store.session(immediate=True) as s:
        job_id = enqueue(s, "noop", "tester").id
    for attempt in range(1, 4):
        job = claim_next(store, "w")
        assert job is not None and job.attempts == attempt
        finish(store, job.id, JobStatus.failed, "flaky", retry_after_s=0)
    with store.session() as s:
        job = s.get(Job, job_id)
        assert job.status == JobStatus.failed and job.error == "flaky"
    assert claim_next(store, "w") is None
