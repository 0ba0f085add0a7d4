"""SQLModel tables: projects, volumes, items, label versions, users, audit, models, jobs."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Column, Index, UniqueConstraint, event
from sqlmodel import Field, SQLModel

from store.errors import MedloopError


def utcnow() -> datetime:
    return datetime.now(UTC)


class Source(StrEnum):
    real = "real"
    synthetic = "synthetic"


class Split(StrEnum):
    train = "train"
    holdout = "holdout"
    test = "test"


class LabelKind(StrEnum):
    proposal = "proposal"
    accepted = "accepted"
    corrected = "corrected"
    rejected = "rejected"
    ground_truth = "ground_truth"


class Role(StrEnum):
    clinician = "clinician"
    curator = "curator"
    admin = "admin"


class JobStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


def _json(nullable: bool = True, default_factory: Any = None) -> Any:
    if default_factory is not None:
        return Field(default_factory=default_factory, sa_column=Column(JSON, nullable=nullable))
    return Field(default=None, sa_column=Column(JSON, nullable=nullable))


class Project(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, unique=True)
    modality: str  # DICOM modality code: CT, MR, XR, US, SM (pathology), OT
    # [{"name": "lesion", "value": 1, "color": "#ff0000"}, ...]; 0 is always background.
    label_classes: list[dict] = _json(default_factory=list, nullable=False)
    # Task-model training settings that differ from the defaults (store/retraining.py).
    training: dict = _json(default_factory=dict, nullable=False)
    # The active-learning strategy that orders the review queue (pipeline/active/strategies.py);
    # None: the default.
    strategy: str | None = None
    created_at: datetime = Field(default_factory=utcnow)


class Volume(SQLModel, table=True):
    """The source series (NIfTI volume, DICOM series, 2D file) that items came from."""

    id: int | None = Field(default=None, primary_key=True)
    project_id: int = Field(foreign_key="project.id", index=True)
    source_format: str  # nifti | dicom | raster
    source_name: str  # file name for NIfTI / raster; a pseudonymous series key for DICOM
    modality: str
    # sha256 of the raw array (.npy), canonical orientation; also how a re-import of the same
    # series is recognised.
    blob: str = Field(index=True)
    # DICOM: the de-identified (remapped) SeriesInstanceUID; None for NIfTI and raster files.
    series_uid: str | None = Field(default=None, index=True)
    shape: list[int] = _json(nullable=False)
    dtype: str
    spacing: list[float] = _json(nullable=False)  # mm per array axis
    affine: list[list[float]] | None = _json()  # 4x4 voxel -> RAS+ mm
    axis: int | None = None  # array axis the items were cut along
    patient_pseudonym: str = Field(index=True)
    split: Split
    # De-identified DICOM header (PS3.15 basic profile applied); never the raw one.
    dicom_header: dict | None = _json()
    created_at: datetime = Field(default_factory=utcnow)


class Item(SQLModel, table=True):
    """One 2D image for review."""

    __table_args__ = (Index("ix_item_project_split", "project_id", "split"),)

    id: int | None = Field(default=None, primary_key=True)
    project_id: int = Field(foreign_key="project.id", index=True)
    volume_id: int | None = Field(default=None, foreign_key="volume.id", index=True)
    source: Source = Source.real
    modality: str
    blob: str
    shape: list[int] = _json(nullable=False)  # rows, cols[, channels]
    dtype: str
    pixel_spacing: list[float] | None = _json()  # mm per row, per column
    slice_index: int | None = None
    axis: int | None = None
    patient_pseudonym: str = Field(index=True)
    split: Split
    # For synthetic items: generator, settings, condition mask (later issues).
    provenance: dict | None = _json()
    priority: float = Field(default=0.0, index=True)
    # A reviewer's lease: nobody else is handed the item until it expires.
    leased_by: int | None = Field(default=None, foreign_key="user.id")
    lease_expires_at: datetime | None = None
    created_at: datetime = Field(default_factory=utcnow)


class User(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, unique=True)
    role: Role
    password_hash: str
    disabled: bool = False
    failed_logins: int = 0
    locked_until: datetime | None = None
    # What the app remembers for this user across sessions (the last project, ...).
    preferences: dict = _json(default_factory=dict, nullable=False)
    created_at: datetime = Field(default_factory=utcnow)


class UserSession(SQLModel, table=True):
    """A signed-in browser session, held on the server. The browser keeps only an opaque
    token; this row keeps its sha256, so a copy of the database signs nobody in."""

    id: int | None = Field(default=None, primary_key=True)
    token_sha256: str = Field(index=True, unique=True)
    user_id: int = Field(foreign_key="user.id", index=True)
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime
    last_seen_at: datetime = Field(default_factory=utcnow)
    ended_at: datetime | None = None
    # Why it ended: signed out, expired, account locked / disabled, password reset.
    end_reason: str | None = None


class ModelVersion(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    project_id: int | None = Field(default=None, foreign_key="project.id", index=True)
    family: str  # task | fm | generator
    name: str
    parent_id: int | None = Field(default=None, foreign_key="modelversion.id")
    blob: str | None = None
    config: dict = _json(default_factory=dict, nullable=False)
    training_set_hash: str | None = None
    metrics: dict | None = _json()
    status: str = "candidate"  # candidate | champion | retired | rejected
    created_at: datetime = Field(default_factory=utcnow)


class Label(SQLModel, table=True):
    """An immutable label version. A new action is a new row pointing to its parent."""

    __table_args__ = (Index("ix_label_item_kind", "item_id", "kind"),)

    id: int | None = Field(default=None, primary_key=True)
    item_id: int = Field(foreign_key="item.id", index=True)
    parent_id: int | None = Field(default=None, foreign_key="label.id")
    kind: LabelKind = Field(index=True)
    mask_blob: str | None = None  # integer label map, rows x cols; None for a rejection
    author_user_id: int | None = Field(default=None, foreign_key="user.id")
    author_model_id: int | None = Field(default=None, foreign_key="modelversion.id")
    # The model whose coarse mask prompted the author model (the task model behind an FM
    # refinement); None when the author worked alone.
    prompt_model_id: int | None = Field(default=None, foreign_key="modelversion.id")
    # A propagated proposal: the validated label version it was followed from (on a nearer
    # slice of the same volume); None for every other label.
    source_label_id: int | None = Field(default=None, foreign_key="label.id", index=True)
    author: str  # display name: a user name, a model version name, or "import"
    predicted_iou: float | None = None
    dice_vs_parent: float | None = None
    seconds_spent: float | None = None
    interactions: int | None = None
    reason: str | None = None
    created_at: datetime = Field(default_factory=utcnow)


class ItemScore(SQLModel, table=True):
    """An active-learning score of an item under one strategy and model version: why the
    queue serves it when it does. Appended per score job; the newest row per item counts."""

    __table_args__ = (Index("ix_itemscore_item_created", "item_id", "created_at"),)

    id: int | None = Field(default=None, primary_key=True)
    item_id: int = Field(foreign_key="item.id", index=True)
    project_id: int = Field(foreign_key="project.id", index=True)
    # None for the cold start (no task model yet: FM embeddings only).
    model_version_id: int | None = Field(default=None, foreign_key="modelversion.id")
    strategy: str
    score: float
    rank: int
    reason: str = ""
    job_id: int | None = Field(default=None, foreign_key="job.id")
    created_at: datetime = Field(default_factory=utcnow)


class ReviewSkip(SQLModel, table=True):
    """A reviewer passed on an item: it is not handed to that reviewer again."""

    __table_args__ = (UniqueConstraint("item_id", "user_id"),)

    id: int | None = Field(default=None, primary_key=True)
    item_id: int = Field(foreign_key="item.id", index=True)
    user_id: int = Field(foreign_key="user.id", index=True)
    at: datetime = Field(default_factory=utcnow)


class ItemEmbedding(SQLModel, table=True):
    """A cached FM image embedding (fp16 blob) of an item, valid for one encoder version."""

    __table_args__ = (UniqueConstraint("item_id", "fm_version"),)

    id: int | None = Field(default=None, primary_key=True)
    item_id: int = Field(foreign_key="item.id", index=True)
    fm_version: str = Field(index=True)
    blob: str
    created_at: datetime = Field(default_factory=utcnow)


class AuditEvent(SQLModel, table=True):
    """Append-only record of every state change; holds no PHI."""

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(default_factory=utcnow, index=True)
    actor: str
    action: str = Field(index=True)
    entity: str
    entity_id: int | None = None
    details: dict = _json(default_factory=dict, nullable=False)


class Job(SQLModel, table=True):
    __table_args__ = (Index("ix_job_status_created", "status", "created_at"),
                      Index("ix_job_status_priority", "status", "priority"))

    id: int | None = Field(default=None, primary_key=True)
    project_id: int | None = Field(default=None, foreign_key="project.id", index=True)
    kind: str  # propose | train | evaluate | score | generate | export
    status: JobStatus = JobStatus.queued
    # Higher runs first; short jobs a person waits for outrank long background work
    # (store/jobs.py PRIORITY).
    priority: int = 0
    payload: dict = _json(default_factory=dict, nullable=False)
    progress: float = 0.0
    message: str = ""
    log_tail: str = ""
    error: str | None = None
    attempts: int = 0
    max_attempts: int = 3
    not_before: datetime | None = None
    worker: str | None = None
    heartbeat_at: datetime | None = None
    cancel_requested: bool = False
    checkpoint: str | None = None  # blob sha of the handler's last checkpoint (resume point)
    created_by: str = "system"
    created_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None


class ImmutableRow(MedloopError):
    """Raised when code tries to update a label version or an audit event in place."""


@event.listens_for(Label, "before_update")
@event.listens_for(AuditEvent, "before_update")
def _refuse_update(mapper, connection, target) -> None:  # noqa: ANN001
    raise ImmutableRow(
        f"{type(target).__name__} rows are immutable: record a new version instead"
    )
