"""The Training and Jobs pages (curators): the model registry with its champion, Retrain
now, rollback, the live job list with Cancel and Retry; AppTest and one browser check."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlmodel import select
from streamlit.testing.v1 import AppTest

from browser import ARTIFACTS, chromium_page, require_browser, sign_in, streamlit_app
from loop_helpers import validate_train
from pipeline.ingest.importer import ingest
from store import registry, retraining
from store.db import Store
from store.errors import PermissionDenied
from store.jobs import claim_next, enqueue, finish, heartbeat, request_cancel, retry
from store.models import Job, JobStatus, ModelVersion
from store.projects import create_project
from store.users import create_user
from tests_helpers import signed_in_app

REPO = Path(__file__).resolve().parents[1]
CLASSES = [{"name": "lesion", "value": 1, "color": "#ff0000"},
           {"name": "edema", "value": 2, "color": "#00ff00"}]
KEPT = ("champion kept: mean paired Dice change +0.004 is not above the margin 0.010 "
        "(3 cases better, 4 worse, 1 equal of 8)")


def make_project(store: Store, name: str, modality: str,
                 classes: list[dict] | None = None):
    with store.session(immediate=True) as s:
        return create_project(s, name, modality, classes or CLASSES[:1], "test")


def _holdout(dice: float) -> dict:
    return {"cases": 8, "mean_dice": dice, "dice": {"1": dice + 0.05, "2": dice - 0.05},
            "dice_where_present": {"1": dice - 0.1, "2": None},
            "hd95": {"1": 4.25, "2": None}, "by_source": {}}


def _version(store: Store, project_id: int, name: str, dice: float | None,
             decision: dict | None = None) -> int:
    """A task-model version with weights, train metrics and (optionally) an evaluation."""
    sha, _ = store.blobs.put_bytes(name.encode())
    with store.session(immediate=True) as s:
        champ = registry.champion(s, project_id)
        mv = registry.ensure_model_version(
            s, "task", name, "test", project_id=project_id, blob=sha,
            parent_id=champ.id if champ else None,
            config={"architecture": "unet", "epochs": 12, "image_size": 64})
        mv.metrics = {"train": {"items": 40, "synthetic_items": 10, "losses": [0.9, 0.4],
                                "seconds": 12.0, "job": None}}
        s.add(mv)
        s.flush()
        if dice is not None:
            registry.record_evaluation(s, mv.id, "worker", _holdout(dice), {}, decision)
        return mv.id


@pytest.fixture
def registry_project(sqlite_store):
    """A project with three versions: v1 retired, v2 champion, v3 a rejected challenger."""
    project = make_project(sqlite_store, "liver", "CT", CLASSES)
    with sqlite_store.session(immediate=True) as s:
        curator = create_user(s, "carl", "curator", "a long password", "test").id
        clinician = create_user(s, "clara", "clinician", "a long password", "test").id
    ids = [
        _version(sqlite_store, project.id, "task-unet-j1", 0.71,
                 {"promoted": True, "reason": "first task model for this project"}),
        _version(sqlite_store, project.id, "task-unet-j2", 0.80,
                 {"promoted": True, "reason": "beats the champion by +0.090 mean paired "
                  "Dice", "mean_delta": 0.09, "champion": "task-unet-j1"}),
        _version(sqlite_store, project.id, "task-unet-j3", 0.804,
                 {"promoted": False, "reason": KEPT, "mean_delta": 0.004,
                  "champion": "task-unet-j2"}),
    ]
    return project, curator, clinician, ids


def _app(store: Store, name: str, page: str) -> AppTest:
    at = signed_in_app(store, name, timeout=60)
    at.run().switch_page(page).run()
    assert not at.exception, at.exception
    return at


def _status(store: Store, model_version_id: int) -> str:
    with store.session() as s:
        return s.get(ModelVersion, model_version_id).status


def test_training_page_shows_champion_and_why_the_challenger_was_kept_out(
        sqlite_store, registry_project):
    project, curator, _, ids = registry_project
    at = _app(sqlite_store, "carl", "pages/training.py")
    assert [t.value for t in at.title] == ["Training"]
    assert {m.label: m.value for m in at.metric}["Champion"] == "task-unet-j2"
    assert "Champion kept" in at.warning[0].value and "task-unet-j3" in at.warning[0].value
    assert "+0.004 is not above the margin 0.010" in at.warning[0].value

    table = at.dataframe[0].value
    assert list(table["version"]) == ["task-unet-j3", "task-unet-j2", "task-unet-j1"]
    assert list(table["status"]) == ["rejected", "★ champion", "retired"]
    # Per-class Dice and HD95 under the class names, not their values.
    assert {"Dice lesion", "Dice edema", "HD95 lesion (mm)", "HD95 edema (mm)"} \
        <= set(table.columns)
    j2 = table.set_index("version").loc["task-unet-j2"]
    assert j2["Dice lesion"] == pytest.approx(0.85) and j2["HD95 lesion (mm)"] == 4.25
    assert j2["train items"] == 40 and j2["parent"] == "task-unet-j1"
    assert table.set_index("version").loc["task-unet-j3", "decision"] == KEPT
    assert len(at.get("vega_lite_chart")) == 2  # holdout Dice per version; learning curve

    # Settings: K through the form; the page says when it retrains next.
    at.number_input(key=f"setting-retrain_after_labels-{project.id}").set_value(5)
    at.button(key=f"save-settings-{project.id}").click().run()
    assert not at.exception
    assert "training settings saved" in at.success[0].value
    with sqlite_store.session() as s:
        assert retraining.training_settings(s.get(type(project), project.id))[
            "retrain_after_labels"] == 5
    assert "0 new validated labels since the last training (retrain automatically at 5)" \
        in [c.value for c in at.caption]


def test_a_version_being_evaluated_is_shown_as_such(sqlite_store, registry_project):
    project, curator, _, _ = registry_project
    _version(sqlite_store, project.id, "task-unet-j4", None)  # trained, not yet evaluated
    at = _app(sqlite_store, "carl", "pages/training.py")
    assert "task-unet-j4: waiting for its holdout evaluation" in at.info[0].value
    row = at.dataframe[0].value.iloc[0]
    assert row["version"] == "task-unet-j4"
    assert row["decision"] == "waiting for its holdout evaluation"


def test_rollback_from_the_page_makes_the_older_version_champion(sqlite_store,
                                                                 registry_project):
    project, curator, _, (v1, v2, v3) = registry_project
    at = _app(sqlite_store, "carl", "pages/training.py")
    choice = at.selectbox(key=f"promote-{project.id}")
    # The picker shows what the bar judges on, not only a mean over mostly empty slices.
    assert set(choice.options) == {
        "task-unet-j3 (rejected, Dice 0.804, lowest class Dice 0.70 on slices with it)",
        "task-unet-j1 (retired, Dice 0.710, lowest class Dice 0.61 on slices with it)"}
    choice.set_value(v1).run()
    at.button(key="make-champion").click().run()
    assert not at.exception
    assert "task-unet-j1 is now the champion (rolled back by carl)" in at.success[0].value
    assert (_status(sqlite_store, v1), _status(sqlite_store, v2), _status(sqlite_store, v3)) \
        == ("champion", "retired", "rejected")
    assert {m.label: m.value for m in at.metric}["Champion"] == "task-unet-j1"


def test_retrain_now_queues_one_training_job_however_often_clicked(sqlite_store, radiomics):
    project = make_project(sqlite_store, "breast", "MR")
    with sqlite_store.session(immediate=True) as s:
        create_user(s, "carl", "curator", "a long password", "test")
        clinician = create_user(s, "clara", "clinician", "a long password", "test").id
    ingest(sqlite_store, project, [radiomics / "breast1_image.nii.gz"],
           masks=[radiomics / "breast1_label.nii.gz"])
    assert validate_train(sqlite_store, project.id, clinician, 1)  # one corrected label

    at = _app(sqlite_store, "carl", "pages/training.py")
    assert "1 new validated labels since the last training" in at.caption[0].value
    at.button(key="retrain").click().run()
    with sqlite_store.session() as s:
        jobs = s.exec(select(Job).where(Job.kind == "train")).all()
    assert len(jobs) == 1 and jobs[0].project_id == project.id
    assert f"queued training job #{jobs[0].id}" in at.success[0].value
    assert f"Train job #{jobs[0].id} is queued" in at.info[0].value
    at.button(key="retrain").click().run()
    assert f"training job #{jobs[0].id} is already queued" in at.info[0].value
    with sqlite_store.session() as s:
        assert len(s.exec(select(Job).where(Job.kind == "train")).all()) == 1
    # Running: its progress, fed from the job row.
    assert claim_next(sqlite_store, "worker-1").id == jobs[0].id
    heartbeat(sqlite_store, jobs[0].id, 30, "epoch 4/12: loss 0.41")
    at.run()
    assert [p.value for p in at.progress] == [30]
    assert "epoch 4/12: loss 0.41" in at.progress[0].proto.text


def test_retrain_now_without_validated_labels_says_what_to_do(sqlite_store, registry_project):
    _, curator, _, _ = registry_project
    at = _app(sqlite_store, "carl", "pages/training.py")
    at.button(key="retrain").click().run()
    assert "no validated labels in the train split yet" in at.error[0].value


def test_clinicians_cannot_open_the_pages_and_the_store_refuses_them(sqlite_store,
                                                                     registry_project):
    project, curator, clinician, (v1, _, _) = registry_project
    at = signed_in_app(sqlite_store, "clara", timeout=60)
    at.run()
    for page in ("pages/training.py", "pages/jobs.py"):  # not in a clinician's navigation
        with pytest.raises(ValueError, match="Known pages: .*review.py'\\]"):
            at.switch_page(page)
    # Run as a script anyway (say, by URL) with a valid clinician session: the store's role
    # check stops it before anything is shown (the page's error details are not shown to
    # the browser: .streamlit/config.toml).
    for page in ("pages/training.py", "pages/jobs.py"):
        direct = AppTest.from_file(str(REPO / page), default_timeout=60)
        direct.session_state["user"] = {"id": clinician, "name": "clara", "role": "clinician"}
        direct.session_state["store"] = sqlite_store
        direct.session_state["check_session"] = lambda: True
        direct.run()
        assert direct.exception and "Traceback" not in direct.exception[0].value
        assert not direct.button and not direct.dataframe
    with sqlite_store.session(immediate=True) as s:
        job = enqueue(s, "train", "test", project.id)
    calls = [lambda s: retraining.retrain_now(s, clinician, project.id),
             lambda s: retraining.update_training_settings(s, clinician, project.id, epochs=3),
             lambda s: registry.set_champion(s, clinician, v1),
             lambda s: request_cancel(s, job.id, clinician)]
    for call in calls:
        with pytest.raises(PermissionDenied, match="needs the curator role"), \
                sqlite_store.session() as s:
            call(s)
    with sqlite_store.session(immediate=True) as s:
        request_cancel(s, job.id, curator)
    with pytest.raises(PermissionDenied), sqlite_store.session() as s:
        retry(s, job.id, clinician)
    assert _status(sqlite_store, v1) == "retired"


def test_jobs_page_shows_errors_and_cancels_and_retries(sqlite_store, registry_project):
    project, curator, _, _ = registry_project
    with sqlite_store.session(immediate=True) as s:
        failed_id = enqueue(s, "export", "carl", project.id).id
    assert claim_next(sqlite_store, "worker-1").id == failed_id
    finish(sqlite_store, failed_id, JobStatus.failed,
           error="the disk is full: free space under the data directory, then Retry")
    # The fixture's promotions queued the project's score job (issue 10): it ran meanwhile.
    scored = claim_next(sqlite_store, "worker-1")
    assert scored.kind == "score"
    finish(sqlite_store, scored.id, JobStatus.succeeded)
    with sqlite_store.session(immediate=True) as s:
        queued_id = enqueue(s, "train", "carl", project.id).id
        running_id = enqueue(s, "propose", "carl", project.id).id
    assert claim_next(sqlite_store, "worker-1").id == queued_id  # oldest first ...
    with sqlite_store.session(immediate=True) as s:  # ... so put it back and run the propose job
        s.get(Job, queued_id).status = JobStatus.queued
        running = s.get(Job, running_id)
        running.status, running.progress, running.message = JobStatus.running, 42.0, \
            "proposing 21 of 50"
        running.log_tail = "loading the champion\nproposing 21 of 50\n"

    at = _app(sqlite_store, "carl", "pages/jobs.py")
    assert [t.value for t in at.title] == ["Jobs"]
    assert "the disk is full" in at.error[0].value
    assert [p.value for p in at.progress] == [42]
    assert "proposing 21 of 50" in [m.value for m in at.markdown]
    assert any("loading the champion" in c.value for c in at.code)
    assert {b.key for b in at.button} == {f"cancel-{queued_id}", f"cancel-{running_id}",
                                          f"retry-{failed_id}"}

    at.button(key=f"cancel-{queued_id}").click().run()
    assert not at.exception
    assert f"job #{queued_id} is cancelled" in at.success[0].value
    at.button(key=f"retry-{failed_id}").click().run()
    assert f"job #{failed_id} is queued" in at.success[0].value
    with sqlite_store.session() as s:
        assert s.get(Job, queued_id).status == JobStatus.cancelled
        assert s.get(Job, failed_id).status == JobStatus.queued
        assert s.get(Job, failed_id).error is None
    assert f"retry-{queued_id}" in {b.key for b in at.button}  # cancelled: can be retried
    at.button(key=f"cancel-{running_id}").click().run()  # running: stops at its next report
    assert f"job #{running_id} will stop at its next progress report" in at.success[0].value
    assert at.button(key=f"cancel-{running_id}").disabled
    with sqlite_store.session() as s:
        assert s.get(Job, running_id).cancel_requested

    # Filters: one status only.
    at.multiselect[0].set_value(["running"]).run()
    assert {b.key for b in at.button} == {f"cancel-{running_id}"}


@pytest.mark.browser
def test_training_and_jobs_pages_in_chromium(sqlite_store, registry_project):
    require_browser()
    project, _, _, _ = registry_project
    with sqlite_store.session(immediate=True) as s:
        failed_id = enqueue(s, "export", "carl", project.id).id
    claim_next(sqlite_store, "worker-1")
    finish(sqlite_store, failed_id, JobStatus.failed, error="the disk is full: free space "
           "under the data directory, then Retry")
    with sqlite_store.session(immediate=True) as s:
        enqueue(s, "train", "carl", project.id)
    ARTIFACTS.mkdir(exist_ok=True)
    # Tall: Streamlit scrolls its main block itself, so a full-page shot is one viewport.
    with streamlit_app() as url, chromium_page(width=1400, height=1800) as page:
        sign_in(page, url, "carl", "a long password")
        page.get_by_role("link", name="Training").click()
        page.get_by_text("Champion kept:").wait_for(timeout=60_000)
        assert page.get_by_test_id("stMetricValue").first.inner_text() == "task-unet-j2"
        page.get_by_test_id("stVegaLiteChart").first.wait_for(timeout=30_000)
        page.screenshot(path=str(ARTIFACTS / "training.png"), full_page=True)
        page.get_by_role("link", name="Jobs").click()
        page.get_by_text("the disk is full").wait_for(timeout=60_000)
        page.screenshot(path=str(ARTIFACTS / "jobs.png"), full_page=True)


def test_a_model_below_the_bar_stays_a_candidate_and_the_page_says_why(sqlite_store):
    project = make_project(sqlite_store, "lung", "CT")
    with sqlite_store.session(immediate=True) as s:
        create_user(s, "carl", "curator", "a long password", "test")
    reason = ("kept as a candidate: it does not beat proposing nothing: mean paired holdout "
              "Dice -0.745 against empty masks (it must gain more than 0.010), so its "
              "proposals would cost clinicians more than they save; with 8 validated labels "
              "it reaches 0.02; try about twice as many (~8 more) and retrain")
    v1 = _version(sqlite_store, project.id, "task-unet-j1", 0.019,
                  {"promoted": False, "below_bar": True, "reason": reason})
    assert _status(sqlite_store, v1) == registry.CANDIDATE  # not rejected, not champion
    at = _app(sqlite_store, "carl", "pages/training.py")
    assert {m.label: m.value for m in at.metric}["Champion"] == "none yet"
    [warning] = [w.value for w in at.warning if "not good enough" in w.value]
    assert "does not beat proposing nothing" in warning and "~8 more" in warning
    assert "a curator can still make it champion" in warning
    assert "Dice floor per class" in [n.label for n in at.number_input]
