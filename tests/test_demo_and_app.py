"""The embedded demo, the worker process, and the app: AppTest and a real browser."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sqlmodel import select

from browser import ARTIFACTS, chromium_page, require_browser, sign_in, streamlit_app, wait_idle
from pipeline.demo import BRAIN_PROJECT, DICOM_PROJECT, create_demo
from store.jobs import enqueue
from store.models import AuditEvent, Item, Job, JobStatus, Label, LabelKind, Project, User
from store.users import check_password
from tests_helpers import signed_in_app

REPO = Path(__file__).resolve().parents[1]


def test_demo_is_real_data_and_runs_once(store):
    first = create_demo(store)
    assert sorted(first.created_projects) == sorted([BRAIN_PROJECT, DICOM_PROJECT])
    assert set(first.passwords) == {"clinician", "curator", "admin"}
    with store.session() as s:
        for name, pw in first.passwords.items():
            user = s.exec(select(User).where(User.name == name)).one()
            assert user.role.value == name and pw not in user.password_hash
            assert check_password(pw, user.password_hash)
        brain = s.exec(select(Project).where(Project.name == BRAIN_PROJECT)).one()
        items = s.exec(select(Item).where(Item.project_id == brain.id)).all()
        assert len(items) > 40 and all(i.shape == [233, 197] for i in items)
        gts = s.exec(select(Label).join(Item).where(Item.project_id == brain.id)).all()
        assert len(gts) == len(items) and {g.kind for g in gts} == {LabelKind.ground_truth}
        mid = store.blobs.get_array(gts[len(gts) // 2].mask_blob)
        assert set(np.unique(mid)) == {0, 1, 2}  # grey and white matter in a mid-brain slice
        dicom = s.exec(select(Item).join(Project).where(Project.name == DICOM_PROJECT)).all()
        assert sorted(i.modality for i in dicom) == ["CT", "MR"]
    again = create_demo(store)
    assert again.created_projects == [] and again.passwords == {}


def test_the_demos_first_slice_is_informative_and_empty_slices_come_last(sqlite_store):
    """Issue 10: the demo opened on the empty top slice of the head. Its queue is now ordered
    at setup (the cold start on thumbnails), and its score job is queued to refine that."""
    from store import labels, review

    create_demo(sqlite_store)
    with sqlite_store.session() as s:
        clinician = s.exec(select(User).where(User.name == "clinician")).one().id
        brain = s.exec(select(Project).where(Project.name == BRAIN_PROJECT)).one()
        queued = s.exec(select(Project.name).join(Job, Job.project_id == Project.id)
                        .where(Job.kind == "score", Job.status == JobStatus.queued)).all()
    assert sorted(queued) == sorted([BRAIN_PROJECT, DICOM_PROJECT])
    first = review.lease_next(sqlite_store, clinician, brain.id)

    def tissue(item: Item) -> float:
        with sqlite_store.session() as s:
            return float((sqlite_store.blobs.get_array(
                labels.ground_truth(s, item.id).mask_blob) > 0).mean())

    with sqlite_store.session() as s:
        items = s.exec(select(Item).where(Item.project_id == brain.id)
                       .order_by(Item.priority.desc(), Item.id)).all()
    fractions = [tissue(i) for i in items]
    assert items[0].id == first.id
    assert fractions[0] > 0.3  # grey and white matter over a third of the slice
    # the five slices with least brain (under 2 %) are the last five in the queue
    assert sorted(fractions[-5:]) == sorted(fractions)[:5] and max(fractions[-5:]) < 0.02


def test_worker_process_runs_and_fails_unknown_jobs_clearly(sqlite_store):
    with sqlite_store.session(immediate=True) as s:
        job_id = enqueue(s, "teleport", "tester").id
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "worker", "--once"],
                         capture_output=True, text=True, timeout=120, env=os.environ.copy())
    assert out.returncode == 0, out.stderr
    with sqlite_store.session() as s:
        job = s.get(Job, job_id)
    assert job.status == JobStatus.failed and "no handler for 'teleport'" in job.error


def test_dataset_page_lists_demo_projects(sqlite_store):
    create_demo(sqlite_store)
    at = signed_in_app(sqlite_store, "curator", timeout=60)
    at.run().switch_page("pages/dataset.py").run()
    assert not at.exception
    assert at.selectbox[0].options == [BRAIN_PROJECT, DICOM_PROJECT]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Items"] == metrics["Ground truth"] != "0"
    assert len(at.get("image")) == 24  # the first page of thumbnails
    at.selectbox[0].select(DICOM_PROJECT).run()
    assert {m.label: m.value for m in at.metric}["Items"] == "2"
    # One project, two modalities: the page says what its items are, not one for all.
    assert any("Modalities: " in c.value and "CT (1 items)" in c.value
               and "MR (1 items)" in c.value for c in at.caption)


@pytest.mark.browser
def test_app_in_chromium_shows_mni_slices(sqlite_store):
    require_browser()
    passwords = create_demo(sqlite_store).passwords
    with streamlit_app() as url, chromium_page(width=1400) as page:
        sign_in(page, url, "curator", passwords["curator"])
        page.get_by_role("link", name="Dataset").click()
        page.get_by_text("slice 0 · train").wait_for(timeout=60_000)
        images = page.locator("[data-testid='stImage'] img")
        images.nth(23).wait_for(timeout=60_000)
        assert images.count() == 24
        # A real picture, not a broken image: the browser decoded it.
        assert page.evaluate("(img) => img.naturalWidth", images.nth(10).element_handle()) > 0
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dataset.png"), full_page=True)
    # Signed out, a page's URL leads to the sign-in form, never to the page.
    with streamlit_app() as url, chromium_page() as page:
        page.goto(f"{url}/admin")
        page.get_by_role("button", name="Sign in").wait_for(timeout=60_000)
        assert page.get_by_text("Audit log").count() == 0


def test_a_plain_streamlit_run_does_not_watch_the_virtualenv():
    """`streamlit run app.py` by hand (without the README's flags) watched .venv's ~20,000
    files: 60-100% of a core and "Inotify queue overflowed". The repository's
    .streamlit/config.toml now says what the flags said."""
    out = subprocess.run([sys.executable, "-m", "streamlit", "config", "show"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    shown = {line.split(" = ")[0]: line.split(" = ")[1] for line in out.stdout.splitlines()
             if " = " in line and not line.startswith("#")}
    assert shown["fileWatcherType"] == '"none"'
    assert shown["toolbarMode"] == '"viewer"' and shown["showErrorDetails"] == '"none"'


@pytest.mark.browser
def test_a_curators_export_download_is_in_the_audit_log(sqlite_store):
    require_browser()
    from pipeline.loop.worker import serve
    from review_helpers import brain_items, demo_with_proposals
    from store import labels, review
    from store.jobs import queue_export

    passwords = demo_with_proposals(sqlite_store).passwords
    with sqlite_store.session() as s:
        clinician = s.exec(select(User).where(User.name == "clinician")).one().id
        curator = s.exec(select(User).where(User.name == "curator")).one().id
    for item in brain_items(sqlite_store)[:2]:
        review.lease_next(sqlite_store, clinician, item.project_id)
        with sqlite_store.session() as s:
            head = labels.head(s, item.id)
        review.accept(sqlite_store, clinician, item.id, head.id, propagate=False)
    with sqlite_store.session(immediate=True) as s:
        queue_export(s, curator, brain_items(sqlite_store)[0].project_id)
    serve(sqlite_store, poll_s=0.05, once=True, kinds={"export"})  # not the demo's score jobs
    with streamlit_app() as url, chromium_page() as page:
        sign_in(page, url, "curator", passwords["curator"])
        page.get_by_role("link", name="Dataset").click()
        wait_idle(page)  # a click during the page's run can land on a button being replaced
        page.get_by_text("Export validated labels").click()
        wait_idle(page)
        with page.expect_download(timeout=60_000) as download:
            page.get_by_role("button", name="Download").first.click()
        name = download.value.suggested_filename
        page.wait_for_timeout(1000)  # the click's callback runs on the server
    assert name.endswith(".zip")
    with sqlite_store.session() as s:
        [event] = s.exec(select(AuditEvent).where(AuditEvent.action == "export.download")).all()
    assert event.actor == "curator" and event.details["file"] == name
