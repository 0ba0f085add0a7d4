"""The Training page's review order (the project's active-learning strategy) and its
learning curve from real use (issue 10); AppTest."""

from __future__ import annotations

from sqlmodel import select

from pipeline.active import strategies
from store import registry
from store.models import AuditEvent, Job, JobStatus, Project
from store.projects import create_project
from store.users import create_user
from tests_helpers import signed_in_app


def _project(store):
    with store.session(immediate=True) as s:
        project = create_project(s, "liver", "CT",
                                 [{"name": "lesion", "value": 1, "color": "#ff0000"},
                                  {"name": "edema", "value": 2, "color": "#00ff00"}], "test")
        create_user(s, "carl", "curator", "a long password", "test")
    return project


def _evaluated(store, project_id: int, name: str, labels: int, dice: float,
               lowest: float | None) -> None:
    """A version trained on `labels` validated labels, with its holdout evaluation."""
    sha, _ = store.blobs.put_bytes(name.encode())
    with store.session(immediate=True) as s:
        mv = registry.ensure_model_version(s, "task", name, "test", project_id=project_id,
                                           blob=sha)
        mv.metrics = {"train": {"items": labels}}
        s.add(mv)
        s.flush()
        registry.record_evaluation(
            s, mv.id, "worker", {"cases": 8, "mean_dice": dice,
                                 "dice_where_present": {"1": lowest, "2": None}}, {})


def _training_page(store):
    at = signed_in_app(store, "carl", timeout=60)
    at.run().switch_page("pages/training.py").run()
    assert not at.exception, at.exception
    return at


def test_the_curator_picks_the_review_order_and_the_queue_is_rescored(sqlite_store):
    project = _project(sqlite_store)
    at = _training_page(sqlite_store)
    picker = at.selectbox(key=f"strategy-{project.id}")
    assert picker.value == strategies.DEFAULT_STRATEGY  # a new project: the default
    assert set(picker.options) == {strategies.LABELS[n] + (
        " · default" if n == strategies.DEFAULT_STRATEGY else "") for n in strategies.STRATEGIES}
    assert any("was chosen by `medloop bench al`" in c.value for c in at.caption)

    picker.select("entropy").run()
    assert not at.exception, at.exception
    assert f"review order: {strategies.LABELS['entropy']}" in at.success[0].value
    with sqlite_store.session() as s:
        assert s.get(Project, project.id).strategy == "entropy"
        jobs = s.exec(select(Job).where(Job.kind == "score")).all()
        event = s.exec(select(AuditEvent).where(AuditEvent.action == "project.strategy")).one()
    assert [(j.project_id, j.status) for j in jobs] == [(project.id, JobStatus.queued)]
    assert event.actor == "carl" and event.details == {"strategy": "entropy", "before": None}
    assert any(f"Score job #{jobs[0].id} is queued" in c.value for c in at.caption)

    # Back to the default: stored as "the default" (None), so a new default applies here too.
    at.selectbox(key=f"strategy-{project.id}").select(strategies.DEFAULT_STRATEGY).run()
    with sqlite_store.session() as s:
        assert s.get(Project, project.id).strategy is None
        assert len(s.exec(select(Job).where(Job.kind == "score")).all()) == 1  # still one


def test_the_learning_curve_has_one_point_per_evaluated_version(sqlite_store):
    project = _project(sqlite_store)
    sha, _ = sqlite_store.blobs.put_bytes(b"not evaluated")
    with sqlite_store.session(immediate=True) as s:  # trained, not evaluated: no point
        registry.ensure_model_version(s, "task", "task-unet-j0", "test",
                                      project_id=project.id, blob=sha).metrics = \
            {"train": {"items": 55}}
    at = _training_page(sqlite_store)
    assert any("the curve starts with the first holdout evaluation" in c.value
               for c in at.caption)
    _evaluated(sqlite_store, project.id, "task-unet-j1", 10, 0.41, 0.22)
    _evaluated(sqlite_store, project.id, "task-unet-j2", 25, 0.63, None)
    _evaluated(sqlite_store, project.id, "task-unet-j3", 40, 0.72, 0.58)
    at = _training_page(sqlite_store)
    charts = at.get("vega_lite_chart")
    assert len(charts) == 2  # Dice per version, and the learning curve
    spec = charts[1].proto.spec
    assert '"validated labels trained on"' in spec and '"holdout Dice"' in spec
    datasets = list(charts[1].proto.datasets)
    assert len(datasets) == 1
    import pyarrow as pa

    table = pa.ipc.open_stream(datasets[0].data.data).read_all().to_pandas()
    points = sorted(zip(table["validated labels"], table["measure"], table["Dice"],
                        strict=True))
    assert points == [(10, "lowest class Dice (slices with it)", 0.22), (10, "mean Dice", 0.41),
                      (25, "mean Dice", 0.63),
                      (40, "lowest class Dice (slices with it)", 0.58), (40, "mean Dice", 0.72)]
