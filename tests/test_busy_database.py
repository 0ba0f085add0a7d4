"""Sign-in, accept and correct while a worker writes to the job table all the time, on
SQLite and PostgreSQL: no failure and every audit event present. (Seen in the browser: with
a propose job running, 3 sign-ins in 5 failed with "database is locked" and a traceback.)
And a database held locked past the busy timeout says "busy, try again", keeping the input."""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import replace

import numpy as np
import pytest
from sqlmodel import func, select
from streamlit.testing.v1 import AppTest

from loop_helpers import wait_for, worker_process
from pipeline.ingest.importer import ingest
from store import labels, review
from store.auth import sign_in
from store.db import Store
from store.jobs import enqueue
from store.models import AuditEvent, Item, Job, JobStatus, Label, LabelKind
from store.registry import ensure_model_version
from store.settings import load_settings
from store.users import create_user
from tests_helpers import APP, make_project_simple

CLINICIANS = ("ana", "ben", "cleo")
PASSWORD = "a long password"


def _pool(store: Store, radiomics) -> int:
    """breast1's 21 slices, each with a proposal (its ground truth), and three clinicians."""
    project = make_project_simple(store)
    ingest(store, project, [radiomics / "breast1_image.nii.gz"],
           masks=[radiomics / "breast1_label.nii.gz"])
    with store.session(immediate=True) as s:
        for name in CLINICIANS:
            create_user(s, name, "clinician", PASSWORD, "test")
        mv = ensure_model_version(s, "fm", "test-fm", "test")
        for item in s.exec(select(Item).where(Item.project_id == project.id)).all():
            gt = labels.ground_truth(s, item.id)
            labels.record_proposal(s, item.id, gt.mask_blob, mv.id, "test-fm", 0.9, "test", "gt")
    return project.id


def _job_writes(store: Store, job_id: int) -> int:
    with store.session() as s:
        message = s.get(Job, job_id).message
    return int(message.rsplit(" ", 1)[-1]) if message.startswith("busy: write") else 0


@pytest.fixture
def busy_worker(store):
    """A real worker process running a job that writes its progress every few ms, at normal
    CPU priority (not the default nice 10) so that it contends for the lock all the time."""
    with store.session(immediate=True) as s:
        job_id = enqueue(s, "noop", "test", busy_s=600, report_every_s=0.002).id
    with worker_process("--poll", "0.1", env={"MEDLOOP_WORKER_NICE": "0"}):
        wait_for(store, job_id, lambda j: j.status == JobStatus.running and j.progress > 0,
                 timeout=120)
        yield job_id


def test_sign_in_accept_and_correct_never_fail_while_a_worker_writes(store, radiomics,
                                                                     busy_worker):
    project_id = _pool(store, radiomics)
    writes_before = _job_writes(store, busy_worker)
    errors: list[BaseException] = []
    done = {"sign_in": 0, "accept": 0, "correct": 0}
    lock = threading.Lock()

    def clinician(name: str) -> None:
        try:
            for _round in range(3):
                user, _ = sign_in(store, name, PASSWORD)
                for action in ("accept", "correct"):
                    item = review.lease_next(store, user.id, project_id)
                    with store.session() as s:
                        head = labels.head(s, item.id)
                    if action == "accept":
                        review.accept(store, user.id, item.id, head.id, seconds=1.0,
                                      propagate=False)
                    else:
                        mask = np.zeros(item.shape[:2], np.uint8)
                        mask[2:6, 2:6] = 1
                        review.correct(store, user.id, item.id, head.id, mask, seconds=2.0,
                                       propagate=False)
                    with lock:
                        done[action] += 1
                with lock:
                    done["sign_in"] += 1
        except BaseException as exc:  # noqa: BLE001  (collected and reported below)
            errors.append(exc)

    threads = [threading.Thread(target=clinician, args=(n,)) for n in CLINICIANS]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert errors == []
    assert done == {"sign_in": 9, "accept": 9, "correct": 9}
    # The worker kept writing the whole time: the test really ran under load.
    assert _job_writes(store, busy_worker) - writes_before > 50
    with store.session() as s:
        def count(action: str) -> int:
            return s.exec(select(func.count(AuditEvent.id))
                          .where(AuditEvent.action == action)).one()

        assert count("auth.login") == 9 and count("auth.fail") == 0
        assert count("label.accept") == 9 and count("label.correct") == 9
        validated = s.exec(select(Label).where(Label.kind.in_(
            (LabelKind.accepted, LabelKind.corrected)))).all()
        assert len(validated) == 18 and len({lab.item_id for lab in validated}) == 18
        audited = {e.entity_id for e in s.exec(select(AuditEvent).where(
            AuditEvent.action.in_(("label.accept", "label.correct")))).all()}
        assert audited == {lab.id for lab in validated}


def test_sign_in_through_the_app_while_a_worker_writes(store, radiomics, busy_worker):
    _pool(store, radiomics)
    for name in CLINICIANS:
        at = AppTest.from_file(APP, default_timeout=120).run()
        at.text_input[0].input(name)
        at.text_input[1].input(PASSWORD)
        at.button[0].click().run()
        assert not at.exception and not at.error
        assert at.session_state["user"]["name"] == name
    with store.session() as s:
        logins = s.exec(select(AuditEvent).where(AuditEvent.action == "auth.login")).all()
    assert sorted(e.actor for e in logins) == sorted(CLINICIANS)


def test_a_database_locked_too_long_says_busy_and_keeps_the_input(tmp_path, monkeypatch):
    data = tmp_path / "data"
    url = f"sqlite:///{data / 'medloop.db'}"
    monkeypatch.setenv("MEDLOOP_DATA_DIR", str(data))
    monkeypatch.setenv("MEDLOOP_DATABASE_URL", url)
    monkeypatch.setenv("MEDLOOP_SQLITE_BUSY_TIMEOUT_S", "0.5")
    store = Store(replace(load_settings(), data_dir=data, database_url=url))
    store.upgrade()
    with store.session(immediate=True) as s:
        create_user(s, "ana", "clinician", PASSWORD, "test")
    at = AppTest.from_file(APP, default_timeout=120).run()
    other = sqlite3.connect(data / "medloop.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        at.text_input[0].input("ana")
        at.text_input[1].input(PASSWORD)
        at.button[0].click().run()
        assert not at.exception
        assert "busy" in at.error[0].value and "try again" in at.error[0].value
        assert "user" not in at.session_state
        assert [t.value for t in at.text_input] == ["ana", PASSWORD]  # nothing to retype
    finally:
        other.execute("ROLLBACK")
        other.close()
    at.button[0].click().run()
    assert not at.exception and at.session_state["user"]["name"] == "ana"
    with store.session() as s:
        assert [e.action for e in s.exec(select(AuditEvent).where(
            AuditEvent.actor == "ana").order_by(AuditEvent.id)).all()] == ["auth.login"]
