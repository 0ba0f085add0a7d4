"""When the task model retrains: a curator's "Retrain now", or automatically once K new
validated labels arrived since the last training; never two training jobs for a project."""

from __future__ import annotations

from sqlalchemy import func
from sqlmodel import Session, select

from store import audit
from store.auth import require
from store.db import is_sqlite
from store.errors import InvalidInput, NotFound
from store.jobs import active_job, enqueue
from store.labels import VALIDATED
from store.models import Item, Job, Label, Project, Role, Split

# Settings a project may override (Project.training); the values are the defaults.
DEFAULTS: dict[str, object] = {
    "retrain_after_labels": 20,  # K; 0 turns automatic retraining off
    "promotion_margin": 0.01,  # mean paired holdout Dice a challenger must gain
    # The least holdout Dice, on the slices that hold a class, for a model to serve at all
    # (besides beating empty masks). `medloop bench promotion`, over all shared cases: FM
    # refinements of coarse masks at Dice >= 0.5 were usable (Dice >= 0.7) 54% of the time,
    # below 0.5 only 5% (per lesion case 32-96% vs 0-31%).
    "min_class_dice": 0.5,
    "synthetic_weight": 0.5,
    "architecture": "unet",
    "epochs": 30,
    "image_size": 256,
}
_TYPES = {"retrain_after_labels": int, "promotion_margin": float, "min_class_dice": float,
          "synthetic_weight": float,
          "architecture": str, "epochs": int, "image_size": int}


def training_settings(project: Project) -> dict:
    return {**DEFAULTS, **(project.training or {})}


def update_training_settings(session: Session, user_id: int, project_id: int,
                             **changes: object) -> dict:
    user = require(session, user_id, Role.curator)
    project = _project(session, project_id)
    clean = {}
    for key, value in changes.items():
        if key not in _TYPES:
            raise InvalidInput(f"unknown training setting {key!r}")
        try:
            clean[key] = _TYPES[key](value)
        except (TypeError, ValueError):
            raise InvalidInput(f"{key} must be a {_TYPES[key].__name__}") from None
    if clean.get("retrain_after_labels", 0) < 0 or clean.get("epochs", 1) < 1:
        raise InvalidInput("K must be 0 (off) or more, and epochs at least 1")
    if not 0 <= clean.get("promotion_margin", 0.0) < 1:
        raise InvalidInput("the promotion margin is a Dice difference between 0 and 1")
    if not 0 <= clean.get("min_class_dice", 0.0) <= 1:
        raise InvalidInput("the Dice floor is between 0 (off) and 1")
    if clean.get("architecture", "unet") not in ("unet", "swinunetr"):
        raise InvalidInput("the architecture is unet or swinunetr")
    if clean.get("image_size", 256) % 32 or not 64 <= clean.get("image_size", 256) <= 1024:
        raise InvalidInput("the image size is a multiple of 32 between 64 and 1024")
    project.training = {**(project.training or {}), **clean}
    session.add(project)
    audit.record(session, user.name, "project.training_settings", "project", project.id,
                 **clean)
    return training_settings(project)


def _project(session: Session, project_id: int, lock: bool = False) -> Project:
    q = select(Project).where(Project.id == project_id)
    if lock and not is_sqlite(session.get_bind()):
        q = q.with_for_update()  # serialises "one training job per project" on PostgreSQL
    project = session.exec(q).first()
    if project is None:
        raise NotFound(f"project {project_id} does not exist")
    return project


def _validated(project_id: int):
    return (select(func.count(Label.id)).join(Item, Item.id == Label.item_id)
            .where(Item.project_id == project_id, Item.split == Split.train,
                   Label.kind.in_(VALIDATED)))


def last_training(session: Session, project_id: int) -> Job | None:
    return session.exec(select(Job).where(Job.project_id == project_id, Job.kind == "train")
                        .order_by(Job.id.desc()).limit(1)).first()


def labels_since_training(session: Session, project_id: int) -> int:
    """Validated train-split labels recorded after the last training job was queued."""
    last = last_training(session, project_id)
    watermark = int((last.payload or {}).get("label_watermark", 0)) if last else 0
    return session.exec(_validated(project_id).where(Label.id > watermark)).one()


def queue_training(session: Session, project_id: int, actor: str, reason: str,
                   overrides: dict | None = None) -> Job:
    """A training job that remembers the newest label id, so automatic retraining counts
    only the labels after it. Callers check roles and the one-job-per-project rule."""
    watermark = session.exec(select(func.max(Label.id))).one() or 0
    return enqueue(session, "train", actor, project_id, reason=reason,
                   label_watermark=int(watermark), overrides=overrides)


def train_once(session: Session, project_id: int, actor: str, reason: str,
               require_labels: bool = False) -> tuple[Job, bool]:
    """(job, created): a new training job, or the one already queued or running."""
    _project(session, project_id, lock=True)
    existing = active_job(session, project_id, "train")
    if existing is not None:
        return existing, False
    if require_labels and session.exec(_validated(project_id)).one() == 0:
        raise InvalidInput("there are no validated labels in the train split yet: accept or "
                           "correct some proposals first")
    return queue_training(session, project_id, actor, reason), True


def retrain_now(session: Session, user_id: int, project_id: int) -> tuple[Job, bool]:
    """A curator's "Retrain now"."""
    user = require(session, user_id, Role.curator)
    return train_once(session, project_id, user.name, f"Retrain now by {user.name}",
                      require_labels=True)


def maybe_retrain(session: Session, project_id: int, actor: str) -> Job | None:
    """After a validated label: queue a training job once K new ones have arrived."""
    project = _project(session, project_id, lock=True)
    k = int(training_settings(project)["retrain_after_labels"])
    if k <= 0 or active_job(session, project_id, "train") is not None:
        return None
    new = labels_since_training(session, project_id)
    if new < k:
        return None
    job = queue_training(session, project_id, actor,
                            f"{new} new validated labels (K = {k})")
    audit.record(session, actor, "train.auto", "project", project_id, labels=new, k=k,
                 job=job.id)
    return job
